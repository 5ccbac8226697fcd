"""edgevlm's bf16 vision attention kernel against ONNX Runtime's fp32 MultiHeadAttention, in
alternation in one process (the same inputs, threads and machine state), at the vision towers'
shapes: median ms per call, the ratio, and the kernel's error against float64 attention.

    python -m edgevlm.benchmarks.attention_bench --threads 2 --repeat 30
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edgevlm.benchmarks.alternate import alternate
from edgevlm.export.vision_split import ort_attention
from edgevlm.runtime.attention_kernel import attention_bf16, attention_reference, available

# (label, tokens, heads, head size)
SHAPES = [("SigLIP-base 512 px (SmolVLM-256M/500M)", 1024, 12, 64),
          ("SigLIP-base 384 px", 576, 12, 64),
          ("default model (96 px, patch 8)", 144, 4, 32)]


def bench(threads: int, repeat: int) -> list[dict]:
    ok, why = available()
    if not ok:
        raise SystemExit(f"the bf16 kernel cannot run here: {why}")
    reference = ort_attention(threads)
    rows = []
    for label, n, heads, hd in SHAPES:
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((1, n, heads * hd)).astype(np.float32) for _ in range(3))
        scale = hd ** -0.5
        runs = {"onnxruntime": lambda: reference(q, k, v, heads, scale),
                "bf16 kernel": lambda: attention_bf16(q, k, v, heads, scale, threads)}
        med = alternate(runs, repeat)
        want = attention_reference(q, k, v, heads, scale)
        got = attention_bf16(q, k, v, heads, scale, threads)
        flops = 4 * n * n * heads * hd  # two products, multiply-adds counted as 2
        rows.append({"shape": label, "tokens": n, "heads": heads, "head_dim": hd,
                     "onnxruntime_ms": round(med["onnxruntime"], 3), "bf16_ms": round(med["bf16 kernel"], 3),
                     "speedup": round(med["onnxruntime"] / med["bf16 kernel"], 3),
                     "bf16_gflops": round(flops / med["bf16 kernel"] / 1e6, 1),
                     "rel_rms_vs_float64": float(np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()))})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    rows = bench(args.threads, args.repeat)
    print(f"{'shape':42s} {'ORT MHA ms':>11s} {'bf16 ms':>9s} {'x':>6s} {'GFLOP/s':>8s} {'rel.RMS':>8s}")
    for r in rows:
        print(f"{r['shape']:42s} {r['onnxruntime_ms']:11.2f} {r['bf16_ms']:9.2f} {r['speedup']:6.2f} "
              f"{r['bf16_gflops']:8.0f} {r['rel_rms_vs_float64']:8.4f}")
    print(json.dumps({"benchmark": "attention", "threads": args.threads, "repeat": args.repeat, "rows": rows}))


if __name__ == "__main__":
    main()
