"""`edgevlm bench`: per-stage latency table, ending with one JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--image", type=click.Path(path_type=Path), help="Image to caption (default: a shipped sample).")
@click.option("--threads", default="2", show_default=True, help="Thread counts, comma separated (a sweep): 1,2,4.")
@click.option("--repeat", default=10, show_default=True, help="Timed runs per setting (the median is reported).")
@click.option("--warmup", default=2, show_default=True, help="Untimed runs first.")
@click.option("--new-tokens", default=16, show_default=True, help="Tokens generated per run (EOS ignored).")
@click.option("--split/--no-split", default=None, help="Override the bundle's image splitting.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results to this file.")
def bench(bundle, image, threads, repeat, warmup, new_tokens, split, json_path):
    """Time every stage of captioning: preprocess, vision encode, prefill, decode.

    \b
    Example:
      edgevlm bench --threads 1,2 --repeat 10
      edgevlm bench my_bundle/ --image photo.jpg --new-tokens 64 --json bench.json
    """
    from edgevlm.benchmarks.device import device_info
    from edgevlm.benchmarks.latency import STAGES, bench_bundle
    from edgevlm.errors import ConfigError

    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        raise ConfigError(f"--threads takes comma-separated integers, got {threads!r}") from None
    if repeat < 1 or warmup < 0 or new_tokens < 1 or any(c < 1 for c in counts):
        raise ConfigError("--repeat, --new-tokens and --threads must be >= 1, --warmup >= 0")
    results = [bench_bundle(bundle, image, c, repeat, warmup, new_tokens, split) for c in counts]
    click.echo(f"{'stage (ms)':18s}" + "".join(f"{f'{c} thread(s)':>28s}" for c in counts))
    for stage in STAGES:
        cells = "".join(f"{r['stages_ms'][stage]['median']:>10.2f} [{r['stages_ms'][stage]['min']:.2f}-{r['stages_ms'][stage]['max']:.2f}]".rjust(28)
                        for r in results)
        click.echo(f"{stage:18s}{cells}")
    for r in results:
        click.echo(f"threads={r['threads']}: decode {r['decode_tokens_per_s']} tok/s, prefill {r['prefill_tokens_per_s']} tok/s, "
                   f"load {r['load_ms']} ms, peak RSS {r['peak_rss_mb']} MB, bundle {r['bundle_mb']} MB "
                   f"(median of {r['repeat']} after {r['warmup']} warm-up)")
    report = {"device": device_info(), "results": results}
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    click.echo(json.dumps(report))
