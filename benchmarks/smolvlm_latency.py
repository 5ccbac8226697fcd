"""SmolVLM-256M-shaped model: edgevlm export + torch-free runtime vs transformers eager PyTorch.

Builds a random SmolVLM-256M-shaped checkpoint with transformers (tests/smolvlm_fixtures.py,
so run it from a source checkout with the dev extra), times `edgevlm export` (load + export,
fp32 bundle), then captions one image single-tile and with the reference split, forcing
`--new-tokens` tokens (EOS ignored), in two child processes so each one's peak RSS is its own:
    edgevlm       edgevlm.load(bundle, threads=T).run(...)  (never imports torch)
    transformers  processor.apply_chat_template + model.generate(do_sample=False), fp32,
                  torch.set_num_threads(T), default (sdpa) attention, no torch.compile
Prints a table (medians, min-max) and ends with one JSON line.

    python benchmarks/smolvlm_latency.py                    # repeat 5, 64 new tokens, 2 threads
    python benchmarks/smolvlm_latency.py --repeat 1 --export-repeat 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Can you describe this image?"
MODES = {"single tile": False, "default split": True}


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux keeps ru_maxrss across fork + exec (a worker would report
    its parent's peak), so read the high-water mark of this process's own memory, VmHWM."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _stats(values):
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _image(path: str):
    """The benchmark image, decoded once, outside the timed loops (PIL only: no torch here)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


# --------------------------------------------------------------------------- child processes


def _worker_edgevlm(args) -> dict:
    import edgevlm

    vlm = edgevlm.load(args.bundle, threads=args.threads)
    image, out = _image(args.image), {}
    for mode, split in MODES.items():
        runs = []
        for i in range(args.warmup + args.repeat):
            t = time.perf_counter()
            result = vlm.run(image, PROMPT, split=split, max_new_tokens=args.new_tokens, eos_token_ids=())
            if i >= args.warmup:
                runs.append({"s": time.perf_counter() - t, **result.timings_ms})
        assert len(result.token_ids) == args.new_tokens
        stages = ("vision_encode", "prefill", "decode_per_token")
        out[mode] = {"latency_s": _stats([r["s"] for r in runs]), "tiles": result.tiles,
                     "prompt_tokens": result.prompt_tokens, "peak_rss_mb_so_far": _peak_rss_mb(),
                     "stages_ms": {k: _stats([r[k] for r in runs]) for k in stages}}
    out["torch_imported"] = "torch" in sys.modules
    return out


def _worker_transformers(args) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, Idefics3Processor

    torch.set_num_threads(args.threads)
    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    processor = Idefics3Processor.from_pretrained(args.checkpoint)
    image, out = _image(args.image), {}
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}]
    for mode, split in MODES.items():
        runs = []
        for i in range(args.warmup + args.repeat):
            t = time.perf_counter()
            inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt",
                                                   processor_kwargs={"do_image_splitting": split})
            with torch.inference_mode():
                tokens = model.generate(**inputs, do_sample=False, max_new_tokens=args.new_tokens,
                                        eos_token_id=None, pad_token_id=0)
            if i >= args.warmup:
                runs.append(time.perf_counter() - t)
        assert tokens.shape[1] - inputs["input_ids"].shape[1] == args.new_tokens
        out[mode] = {"latency_s": _stats(runs), "tiles": int(inputs["pixel_values"].shape[1]),
                     "prompt_tokens": int(inputs["input_ids"].shape[1]), "peak_rss_mb_so_far": _peak_rss_mb()}
    return out


def _run_worker(kind: str, args, **paths) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--threads", str(args.threads), "--repeat", str(args.repeat),
           "--warmup", str(args.warmup), "--new-tokens", str(args.new_tokens), "--image", args.image]
    for key, value in paths.items():
        cmd += [f"--{key}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def _export(checkpoint: Path, out: Path) -> dict:
    from edgevlm.export.to_onnx import export_bundle
    from edgevlm.models.registry import load_checkpoint

    t = time.perf_counter()
    loaded = load_checkpoint(checkpoint)
    load_s = time.perf_counter() - t
    export_bundle(loaded.model, loaded.tokenizer, out, preprocess=loaded.preprocess.to_dict(),
                  prompt=loaded.prompt.to_dict(), special_tokens=loaded.special_tokens,
                  generation=loaded.generation.to_dict(), overwrite=True, progress=False)
    return {"load_s": load_s, "total_s": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="timed captions per mode (median reported)")
    p.add_argument("--export-repeat", type=int, default=None,
                   help="timed exports (default: --repeat; 0: reuse the bundle already in --workdir)")
    p.add_argument("--warmup", type=int, default=1, help="untimed captions first, per mode")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per caption (EOS ignored)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", default="640x480", help="random photo size WxH (640x480: 3x4 tiles + global)")
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help="where the checkpoint and bundle go (default: a temp dir)")
    p.add_argument("--worker", choices=["edgevlm", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = (_worker_edgevlm if args.worker == "edgevlm" else _worker_transformers)(args)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return

    import torch

    sys.path.insert(0, str(ROOT))
    from edgevlm.benchmarks.device import device_info
    from tests.smolvlm_fixtures import build_checkpoint, random_photo

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="smolvlm_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    args.image = str(work / f"photo_{width}x{height}.png")
    random_photo(width, height, seed=0).save(args.image)
    checkpoint, bundle = work / "checkpoint", work / "bundle"
    if not (checkpoint / "config.json").is_file():
        print(f"building a random SmolVLM-256M-shaped checkpoint in {checkpoint} ...", file=sys.stderr)
        ref = build_checkpoint(checkpoint, "smolvlm-256m")
        del ref
    n_exports = args.repeat if args.export_repeat is None else args.export_repeat
    if n_exports == 0 and not (bundle / "edgevlm.json").is_file():
        raise SystemExit(f"--export-repeat 0 needs an exported bundle in {bundle}")
    exports = [_export(checkpoint, bundle) for _ in range(n_exports)]
    bundle_mb = sum(f.stat().st_size for f in bundle.iterdir() if f.is_file()) / 1e6
    ours = _run_worker("edgevlm", args, bundle=bundle)
    theirs = _run_worker("transformers", args, checkpoint=checkpoint)

    print(f"\nSmolVLM-256M-shaped random model, fp32, {args.threads} threads, {args.new_tokens} new tokens forced, "
          f"image {args.image_size}, median of {args.repeat} after {args.warmup} warm-up")
    export_s = _stats([e["total_s"] for e in exports]) if exports else None
    if export_s:
        print(f"export (load + export + validate): {export_s['median']:.1f} s "
              f"[{export_s['min']:.1f}-{export_s['max']:.1f}] over {len(exports)} run(s); bundle {bundle_mb:.0f} MB")
    else:
        print(f"export: not timed (reused the bundle in {bundle}); bundle {bundle_mb:.0f} MB")
    header = f"{'caption latency (s)':24s}{'tiles':>6s}{'prompt':>8s}"
    print(header + f"{'edgevlm':>22s}{'transformers':>22s}{'speed-up':>10s}")
    for mode in MODES:
        a, b = ours[mode]["latency_s"], theirs[mode]["latency_s"]
        cells = "".join(f"{x['median']:>9.2f} [{x['min']:.2f}-{x['max']:.2f}]".rjust(22) for x in (a, b))
        print(f"{mode:24s}{ours[mode]['tiles']:>6d}{ours[mode]['prompt_tokens']:>8d}{cells}"
              f"{b['median'] / a['median']:>9.2f}x")
    for mode in MODES:
        print(f"{'peak RSS (MB), ' + mode:38s}{ours[mode]['peak_rss_mb_so_far']:>22.0f}"
              f"{theirs[mode]['peak_rss_mb_so_far']:>22.0f}")
    for mode in MODES:
        st = {k: v["median"] for k, v in ours[mode]["stages_ms"].items()}
        print(f"edgevlm {mode}: vision {st['vision_encode']:.0f} ms, prefill {st['prefill']:.0f} ms, "
              f"decode {st['decode_per_token']:.1f} ms/token (torch imported: {ours['torch_imported']})")
    print(json.dumps({"benchmark": "smolvlm_256m_latency", "device": device_info(), "threads": args.threads,
                      "new_tokens": args.new_tokens, "repeat": args.repeat, "image": args.image_size,
                      "export_s": export_s,
                      "export_load_s": _stats([e["load_s"] for e in exports]) if exports else None,
                      "bundle_mb": round(bundle_mb, 1), "edgevlm": ours, "transformers": theirs}))


if __name__ == "__main__":
    main()
