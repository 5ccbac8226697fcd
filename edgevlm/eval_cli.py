"""`edgevlm eval`: caption quality of a bundle (or checkpoint), and its fidelity to a reference."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import click


def _first(items, n: int) -> list:
    return [items[i] for i in range(min(n, len(items)))]  # SceneItems is lazy and has no slicing


@click.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--reference", type=click.Path(path_type=Path),
              help="Reference bundle or checkpoint (e.g. the teacher): adds greedy-token agreement and KL(ref || model).")
@click.option("--data", help="Score on a .jsonl / COCO .json file or an image folder instead of the scenes corpus.")
@click.option("--scenes", "n", default=500, show_default=True, help="Number of held-out scenes (or --data images) to use.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]))
@click.option("--threads", default=0, help="ONNX Runtime threads (0 = all cores).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the metrics to this file.")
def eval_command(bundle, reference, data, n, split, threads, json_path):
    """Score a bundle on the synthetic scenes corpus: BLEU, CIDEr-D, exact match.

    BUNDLE may also be a training checkpoint directory (it is exported to a temporary
    bundle first). With --reference, the reference captions every image greedily and the
    model is teacher-forced on those tokens: token_agreement is the fraction of positions
    whose greedy token agrees, kl_ref_cand the mean per-token KL(reference || model) in nats.

    \b
    Example:
      edgevlm eval --scenes 500
      edgevlm eval my_bundle/ --split val --json metrics.json
      edgevlm eval student_bundle/ --reference runs/teacher --scenes 200
      edgevlm eval runs/student --data captions.jsonl
    """
    from edgevlm.data import scenes
    from edgevlm.errors import ConfigError
    from edgevlm.eval.sources import open_model

    if n < 1:
        raise ConfigError("--scenes must be >= 1")
    items = None
    if data is not None:  # read (and check) the data before the slow part: loading or exporting models
        from edgevlm.data.datasets import open_dataset

        items = _first(open_dataset(data), n)
    with ExitStack() as stack:
        vlm, described = open_model(bundle, threads, stack)
        click.echo(f"model: {described}")
        ref = None
        if reference is not None:
            ref, ref_described = open_model(reference, threads, stack)
            click.echo(f"reference: {ref_described}")
        if items is None:
            from edgevlm.eval.scenes_eval import evaluate_scenes

            result = evaluate_scenes(vlm.caption, n=n, split=split)
            images = [scenes.render(scene) for scene in scenes.split(split, n)] if ref else []
        else:
            from edgevlm.eval.dataset_eval import evaluate_items, item_source

            labeled = any(item.captions for item in items)  # a folder is unlabeled: fidelity only
            result = evaluate_items(vlm.caption, items) if labeled or ref is None else {}
            images = [item_source(item) for item in items] if ref else []
        result["model"] = described
        if ref is not None:
            from edgevlm.eval.fidelity import fidelity

            result.update(fidelity(vlm, ref, images))
            result["reference"] = ref_described
    for key, value in result.items():
        click.echo(f"{key:28s} {value}")
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result))
