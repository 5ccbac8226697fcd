"""`edgevlm eval`: caption quality of a bundle on the held-out scenes split."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--scenes", "n", default=500, show_default=True, help="Number of held-out scenes to caption.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]))
@click.option("--threads", default=0, help="ONNX Runtime threads (0 = all cores).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the metrics to this file.")
def eval_command(bundle, n, split, threads, json_path):
    """Score a bundle on the synthetic scenes corpus: BLEU, CIDEr-D, exact match.

    \b
    Example:
      edgevlm eval --scenes 500
      edgevlm eval my_bundle/ --split val --json metrics.json
    """
    import edgevlm
    from edgevlm.errors import ConfigError
    from edgevlm.eval.scenes_eval import evaluate_scenes

    if n < 1:
        raise ConfigError("--scenes must be >= 1")
    vlm = edgevlm.load(bundle, threads=threads)
    result = evaluate_scenes(vlm.caption, n=n, split=split)
    for key, value in result.items():
        click.echo(f"{key:28s} {value}")
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result))
