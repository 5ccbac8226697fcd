"""Decoder graph variants on a SmolVLM-256M-shaped decoder (random weights), same run:

    default  fp32, softmax attention, ping-pong KV buffers (the default export)
    fused    fp32, GroupQueryAttention, one shared KV buffer per layer
    int8     fused + dynamic int8 per-channel MatMuls
    int4     fused + MatMulNBits (4 bit, block 32, accuracy_level 4)

Median decode ms/token (context ~170, after warm-up) and prefill of 128 tokens, 2 threads,
ratios to `default`; a table, then one JSON line.

    python -m edgevlm.benchmarks.kernels_bench --threads 2 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgevlm.config import TextConfig, VLMConfig
from edgevlm.export.graphs import export_decoder
from edgevlm.export.quantize import quantize_graph
from edgevlm.models.vlm import VLM
from edgevlm.runtime.decoder import shares_kv_buffer
from edgevlm.runtime.kv_cache import KVCache

SMOLVLM_TEXT = TextConfig(vocab_size=49280, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                          intermediate_size=1536, max_position_embeddings=2048, rope_theta=100000.0)


def build_graphs(work: Path, variants: list[str]) -> dict[str, Path]:
    torch.manual_seed(0)
    model = VLM(VLMConfig(text=SMOLVLM_TEXT)).eval()
    paths = {}
    export_decoder(model, work / "default.onnx", attention="default")
    paths["default"] = work / "default.onnx"
    export_decoder(model, work / "fused.onnx", attention="fused")
    paths["fused"] = work / "fused.onnx"
    for prec in ("int8", "int4"):
        if prec in variants:
            quantize_graph(paths["fused"], work / f"{prec}.onnx", prec)
            paths[prec] = work / f"{prec}.onnx"
    return {v: paths[v] for v in variants}


class Runner:
    def __init__(self, path: Path, threads: int, max_len: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        cfg = SMOLVLM_TEXT
        self.cache = KVCache(cfg.num_layers, 1, cfg.num_kv_heads, max_len, cfg.head_dim,
                             shared=shares_kv_buffer(self.sess))
        self.logits = np.empty((1, cfg.vocab_size), dtype=np.float32)

    def run(self, start: int, length: int) -> float:
        """One decoder run of `length` tokens at positions start.. -> seconds."""
        embeds = np.random.default_rng(start).standard_normal((1, length, SMOLVLM_TEXT.hidden_size)).astype(np.float32)
        positions = np.arange(start, start + length, dtype=np.int64)[None]  # [1, S]
        binding = self.sess.io_binding()
        binding.bind_cpu_input("inputs_embeds", embeds)
        binding.bind_cpu_input("position_ids", positions)
        self.cache.bind(binding, 1)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        t = time.perf_counter()
        self.sess.run_with_iobinding(binding)
        elapsed = time.perf_counter() - t
        self.cache.swap()
        return elapsed


def measure(path: Path, threads: int, steps: int, context: int, prefill: int) -> dict:
    r = Runner(path, threads, max_len=context + steps + 8)
    pre = [r.run(0, prefill) for _ in range(4)][1:]  # warm-up, then 3
    r.run(0, context)  # fill the context
    for i in range(3):  # warm-up steps
        r.run(context + i, 1)
    dec = [r.run(context + 3 + i, 1) for i in range(steps)]
    return {"decode_ms": 1e3 * statistics.median(dec), "prefill_ms": 1e3 * statistics.median(pre)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--context", type=int, default=170)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--variants", default="default,fused,int8,int4")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        paths = build_graphs(Path(tmp), variants)
        print(f"built {len(paths)} graphs in {time.perf_counter() - t:.0f} s")
        load_before = os.getloadavg()[0]  # other work on the machine skews every figure: report it
        results = {v: measure(p, args.threads, args.steps, args.context, args.prefill) for v, p in paths.items()}
        load_after = os.getloadavg()[0]
    base = results.get("default")
    print(f"{'variant':8} {'decode ms/tok':>14} {'x default':>10} {'prefill ms':>11} {'x default':>10}")
    for v, r in results.items():
        if base:
            r["decode_speedup"] = base["decode_ms"] / r["decode_ms"]
            r["prefill_speedup"] = base["prefill_ms"] / r["prefill_ms"]
        print(f"{v:8} {r['decode_ms']:14.2f} {r.get('decode_speedup', 0):10.2f} {r['prefill_ms']:11.1f} "
              f"{r.get('prefill_speedup', 0):10.2f}")
    line = {"bench": "kernels", "threads": args.threads, "context": args.context, "prefill_tokens": args.prefill,
            "steps": args.steps, "ort": ort.__version__, "cpus": os.cpu_count(),
            "load_avg_1m": [round(load_before, 2), round(load_after, 2)], "results": results}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
