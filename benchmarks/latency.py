"""Per-stage caption latency of a bundle: medians (and min-max) of repeated runs.

Warm-up runs are not counted; the thread count is pinned; generation is forced to
exactly `new_tokens` tokens (EOS ignored) so every run does the same work.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

STAGES = ("preprocess", "vision_encode", "embed", "prefill", "decode_per_token", "generate", "total")


def summarize(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def bench_bundle(bundle=None, image=None, threads: int = 2, repeat: int = 10, warmup: int = 2,
                 new_tokens: int = 16, split: bool | None = None) -> dict:
    import edgevlm

    t = time.perf_counter()
    vlm = edgevlm.load(bundle, threads=threads)
    load_ms = (time.perf_counter() - t) * 1000
    if image is None:
        image = sorted((Path(edgevlm.__file__).parent / "assets" / "samples").glob("*.png"))[0]
    runs = []
    for i in range(warmup + repeat):
        result = vlm.run(image, split=split, max_new_tokens=new_tokens, eos_token_ids=())
        if i >= warmup:
            runs.append(result.timings_ms)
    stages = {name: summarize([r[name] for r in runs]) for name in STAGES}
    decode_ms = stages["decode_per_token"]["median"]
    size = sum(p.stat().st_size for p in vlm.bundle.path.iterdir() if p.is_file())
    return {
        "bundle": vlm.bundle.path.name,
        "architecture": vlm.bundle.manifest["architecture"],
        "precision": sorted({g["precision"] for g in vlm.bundle.manifest["graphs"].values()}),
        "threads": threads,
        "repeat": repeat,
        "warmup": warmup,
        "new_tokens": new_tokens,
        "tiles": result.tiles,
        "prompt_tokens": result.prompt_tokens,
        "load_ms": round(load_ms, 1),
        "bundle_mb": round(size / 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stages_ms": stages,
        "decode_tokens_per_s": round(1000 / decode_ms, 1) if decode_ms else None,
        "prefill_tokens_per_s": round(result.prompt_tokens / stages["prefill"]["median"] * 1000, 1),
    }
