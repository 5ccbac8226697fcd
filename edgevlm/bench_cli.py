"""`edgevlm bench`: per-stage latency table, ending with one JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _cell(s: dict) -> str:
    return f"{s['median']:>10.2f} [{s['min']:.2f}-{s['max']:.2f}]".rjust(28)


def _print_roofline(r: dict) -> None:
    peaks, stages = r["roofline"]["peaks"], r["roofline"]["stages"]
    int8 = f"{peaks['int8_gops']['median']:.1f} GOP/s" if peaks["int8_gops"] else f"skipped ({peaks['int8_skipped']})"
    click.echo(f"roofline threads={r['threads']}: fp32 GEMM {peaks['fp32_gflops']['median']:.1f} GFLOP/s, "
               f"int8 GEMM {int8}, memory read {peaks['read_gb_s']['median']:.1f} GB/s")
    for name, s in stages.items():
        share = "n/a" if s["fraction"] is None else f"{s['fraction']:.1%}"
        click.echo(f"  {name:18s} {share:>8s} of its {s['limit']} limit (ideal {s['ideal_ms']} ms)")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--image", type=click.Path(path_type=Path), help="Image to caption (default: a shipped sample).")
@click.option("--image-size", type=int, help="Caption a synthetic N x N image instead (decoded from PNG every run).")
@click.option("--prompt-tokens", type=int,
              help="Pad the prompt to about N text tokens besides the image tokens (default: the template's own).")
@click.option("--threads", default="2", show_default=True, help="Thread counts, comma separated (a sweep): 1,2,4.")
@click.option("--repeat", default=10, show_default=True, help="Timed runs per setting (the median is reported).")
@click.option("--warmup", default=2, show_default=True, help="Untimed runs first.")
@click.option("--new-tokens", default=16, show_default=True, help="Tokens generated per run (EOS ignored; >= 2).")
@click.option("--split/--no-split", default=None, help="Override the bundle's image splitting.")
@click.option("--model-format", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="ort: time the bundle's ORT-format graphs (a bundle exported with --format ort).")
@click.option("--vision-attention", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: a quantized bundle's vision attention on edgevlm's bf16 kernel (and, at int4/mixed, "
                   "the rest of each layer on its int8 kernel) where the CPU has AVX-512 BF16 and VNNI, else "
                   "the whole tower on ONNX Runtime; bf16: the kernels or an error; fp32: ONNX Runtime.")
@click.option("--roofline", is_flag=True,
              help="Also measure GEMM peaks and memory bandwidth here and give each stage as a fraction of its limit.")
@click.option("--roofline-quick", is_flag=True, help="--roofline on smaller buffers (well under a second; for tests).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="Write a PNG: stage breakdown and thread sweep (needs pip install 'edgevlm[bench]').")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results to this file.")
def bench(bundle, image, image_size, prompt_tokens, threads, repeat, warmup, new_tokens, split, model_format,
          vision_attention, roofline,
          roofline_quick, plot_path, json_path):
    """Time every stage of captioning: preprocess, vision encode, prefill, TTFT, decode.

    \b
    Example:
      edgevlm bench --threads 1,2 --repeat 10
      edgevlm bench my_bundle/ --image photo.jpg --new-tokens 64 --json bench.json
      edgevlm bench --image-size 384 --prompt-tokens 64 --roofline --plot bench.png
    """
    from edgevlm.benchmarks.device import device_info
    from edgevlm.benchmarks.latency import RATES, STAGES, bench_bundle, check_options
    from edgevlm.errors import ConfigError

    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        raise ConfigError(f"--threads takes comma-separated integers, got {threads!r}") from None
    if image is not None and image_size is not None:
        raise ConfigError("give --image or --image-size, not both")
    for c in counts:  # every bad value fails here, before a bundle is loaded
        check_options(repeat, warmup, new_tokens, image_size, prompt_tokens, c)
    if plot_path:
        from edgevlm.benchmarks.plot import require_matplotlib

        require_matplotlib()
    mode = "quick" if roofline_quick else "full" if roofline else None
    results = [bench_bundle(bundle, image, c, repeat, warmup, new_tokens, split, image_size, prompt_tokens,
                            model_format=model_format, vision_attention=vision_attention) for c in counts]
    if mode:  # after every timed setting: the roofline's 256 MB read buffer must not count in their peak RSS
        import edgevlm
        from edgevlm.benchmarks.roofline import roofline as place

        for c, r in zip(counts, results):
            r["roofline"] = place(edgevlm.load(bundle, threads=c, model_format=model_format,
                                               vision_attention=vision_attention), r,
                                  quick=mode == "quick")
    click.echo(f"{'stage (ms)':24s}" + "".join(f"{f'{c} thread(s)':>28s}" for c in counts))
    for stage in STAGES:
        click.echo(f"{stage:24s}" + "".join(_cell(r["stages_ms"][stage]) for r in results))
    for rate in RATES:
        click.echo(f"{rate:24s}" + "".join(_cell(r[rate]) for r in results))
    click.echo(f"{'load':24s}" + "".join(_cell(r["load_ms"]) for r in results))
    first = results[0]
    click.echo(f"{first['image']}, {first['tiles']} tile(s), {first['prompt_tokens']} prompt tokens "
               f"({first['image_tokens']} image + {first['text_tokens']} text), {new_tokens} new tokens "
               f"(decode at context {first['decode_context']['first']}-{first['decode_context']['last']}); "
               f"median [min-max] of {repeat} after {warmup} warm-up")
    click.echo(f"vision attention: {first['vision_attention']}")
    click.echo(f"bundle {first['bundle_mb']} MB, peak RSS {max(r['peak_rss_mb'] for r in results)} MB")
    for r in results:
        if "roofline" in r:
            _print_roofline(r)
    report = {"device": device_info(), "results": results}
    if plot_path:
        from edgevlm.benchmarks.plot import plot

        plot(results, plot_path)
        click.echo(f"plot written to {plot_path.name}")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    click.echo(json.dumps(report))
