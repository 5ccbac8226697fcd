"""How close each bench stage comes to what this machine allows (a roofline check).

Measured here, in the same process as the bench: fp32 and int8 GEMM throughput (ONNX Runtime
MatMul / MatMulInteger at the bench's thread count) and memory read bandwidth. Each stage is
then put as `ideal_ms / measured_ms`, where ideal_ms is its work at the limiting rate:
    vision_encode, prefill (compute-bound, M in the hundreds): FLOPs / GEMM peak at the
                                                               graph's precision
    decode_per_token (memory-bound, M = 1): bytes read per token / read bandwidth
1.0 would be at the limit; above 1.0 means the limit was not the binding one (e.g. decoder
weights small enough to stay in cache, so DRAM bandwidth is not what bounds decode).
"""

from __future__ import annotations

import time

import numpy as np

from edgevlm.benchmarks.latency import summarize

# int8 and int4 graphs compute in int8 (dynamic int8 MatMul; MatMulNBits with accuracy_level 4)
PEAK_FOR_PRECISION = {"fp32": "fp32", "fp16": "fp32", "int8": "int8", "int4": "int8", "mixed": "int8"}


def _gemm_session(n: int, int8: bool, threads: int):
    """An [n, n] x [n, n] ORT graph with the weight as an initializer (as in a bundle), or None
    without the onnx package: it is in the export extra and the runtime must not need it."""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    if int8:
        w = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        x_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        w = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("x", x_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the runtime supports (>= 1.20)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _rate(work: float, fn, repeat: int) -> dict:
    """work / seconds per call, in units of 1e9 per second: median and min-max of `repeat` calls."""
    fn()  # warm-up: first runs pay for allocation and thread-pool start
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        rates.append(work / (time.perf_counter() - t) / 1e9)
    return summarize(rates)


def _gemm_peak(int8: bool, sizes: tuple[int, ...], threads: int, repeat: int):
    """-> (rate summary, n, method) of the fastest square size (small ones run from cache, large
    ones amortise thread start-up: which wins depends on the machine), or None for int8 without onnx."""
    best = None
    for n in sizes:
        session = _gemm_session(n, int8, threads)
        rng = np.random.default_rng(1)
        x = rng.integers(0, 256, (n, n), dtype=np.uint8) if int8 else rng.standard_normal((n, n), dtype=np.float32)
        if session is not None:
            fn, method = (lambda: session.run(None, {"x": x})), "onnxruntime"
        elif int8:  # numpy has no int8 GEMM that stands for what ORT's kernels do
            return None
        else:  # numpy's BLAS picks its own thread count, so the report names the method
            w = x.T.copy()
            fn, method = (lambda: x @ w), "numpy"
        rate = _rate(2 * n**3, fn, repeat)
        if best is None or rate["median"] > best[0]["median"]:
            best = (rate, n, method)
    return best


def measure(threads: int, quick: bool = False) -> dict:
    """Peak rates of this machine: GEMM in GFLOP/s (int8: GOP/s), read bandwidth in GB/s; each
    the median (min-max) of the repeats."""
    sizes, repeat = ((256,), 3) if quick else ((256, 1024), 5)
    out = {"threads": threads}
    out["fp32_gflops"], out["fp32_gemm_n"], out["gemm_method"] = _gemm_peak(False, sizes, threads, repeat)
    int8 = _gemm_peak(True, sizes, threads, repeat)
    if int8 is None:
        out["int8_gops"], out["int8_skipped"] = None, "the onnx package is missing (pip install 'edgevlm[export]')"
    else:
        out["int8_gops"], out["int8_gemm_n"], _ = int8
    # each pass reads the whole buffer once; 256 MB is far beyond any last-level cache (quick:
    # 64 MB, still past the LLC of most edge CPUs). Read by `threads` threads at once, as decode
    # reads its weights: one core alone cannot draw the memory system's full bandwidth (a
    # single-threaded read measured 16 GB/s here, below what 2-thread decode achieved)
    from concurrent.futures import ThreadPoolExecutor

    buf = np.ones((64 if quick else 256) * 2**20 // 8, dtype=np.float64)
    chunks = np.array_split(buf, max(1, threads))  # contiguous; numpy releases the GIL inside np.sum
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        out["read_gb_s"] = _rate(buf.nbytes, lambda: sum(pool.map(np.sum, chunks)), repeat)
    out["read_threads"] = threads
    return out


def vision_flops(cfg) -> int:
    """FLOPs of one vision_encoder tile (2 per multiply-add): patch conv, transformer layers
    (q, k, v, o, fc1, fc2 plus QK^T and AV), and the pixel-shuffle projector to text width."""
    v = cfg.vision
    t = (v.image_size // v.patch_size) ** 2  # tokens per tile
    d, i = v.hidden_size, v.intermediate_size
    patch = 2 * t * 3 * v.patch_size**2 * d
    layer = 2 * t * (4 * d * d + 2 * d * i) + 4 * t * t * d
    projector = 2 * t * d * cfg.text.hidden_size  # (t / s^2) rows of width d * s^2
    return patch + v.num_layers * layer + projector


def prefill_flops(text, seq: int) -> int:
    """FLOPs of prefilling `seq` tokens: q, k, v, o, gate, up, down per layer, full (not causal-
    halved) attention, lm_head on the last position only (as the exported decoder does)."""
    d, q = text.hidden_size, text.num_heads * text.head_dim
    kv = text.num_kv_heads * text.head_dim
    layer = 2 * seq * (2 * d * q + 2 * d * kv + 3 * d * text.intermediate_size) + 4 * seq * seq * q
    return text.num_layers * layer + 2 * d * text.vocab_size


def decode_bytes(weight_bytes: int, text, context: float) -> float:
    """Bytes read for one token: every decoder weight once, plus K and V (fp32) for `context` positions."""
    kv = 2 * text.num_layers * text.num_kv_heads * text.head_dim * 4 * context
    return weight_bytes + kv


def fraction(work: float, rate_per_s: float | None, measured_ms: float) -> dict:
    """work at rate_per_s takes ideal_ms; the stage reached ideal_ms / measured_ms of its limit."""
    if not rate_per_s or not measured_ms:
        return {"ideal_ms": None, "fraction": None}
    ideal_ms = work / rate_per_s * 1000
    return {"ideal_ms": round(ideal_ms, 4), "fraction": round(ideal_ms / measured_ms, 4)}


def decoder_weight_bytes(bundle) -> int:
    """decoder.onnx plus its external data (bundle files named decoder*): the weights, to within
    the graph's few KB of protobuf. File size needs no onnx package and works for int4 too."""
    return sum(p.stat().st_size for p in bundle.path.iterdir() if p.is_file() and p.name.startswith("decoder"))


def stage_fractions(result: dict, peaks: dict, cfg, precision: dict, weight_bytes: int) -> dict:
    """Each timed stage of one bench result (latency.bench_bundle) against its limit."""
    stages = result["stages_ms"]

    def gemm_rate(graph: str) -> tuple[str, float | None]:
        kind = PEAK_FOR_PRECISION.get(precision[graph], "fp32")
        gops = peaks["fp32_gflops"] if kind == "fp32" else peaks["int8_gops"]
        return kind, gops["median"] * 1e9 if gops else None

    out = {}
    kind, rate = gemm_rate("vision_encoder")
    work = vision_flops(cfg) * result["tiles"]
    out["vision_encode"] = {"limit": f"{kind} GEMM", "work_flops": work,
                            **fraction(work, rate, stages["vision_encode"]["median"])}
    kind, rate = gemm_rate("decoder")
    work = prefill_flops(cfg.text, result["prompt_tokens"])
    out["prefill"] = {"limit": f"{kind} GEMM", "work_flops": work, **fraction(work, rate, stages["prefill"]["median"])}
    depth = result["decode_context"]
    work = decode_bytes(weight_bytes, cfg.text, (depth["first"] + depth["last"]) / 2)
    out["decode_per_token"] = {"limit": "memory read bandwidth", "work_bytes": int(work),
                               **fraction(work, peaks["read_gb_s"]["median"] * 1e9, stages["decode_per_token"]["median"])}
    return out


def roofline(vlm, result: dict, quick: bool = False) -> dict:
    """Measure this machine at the result's thread count and place the result's stages on it."""
    peaks = measure(result["threads"], quick)
    precision = {name: g["precision"] for name, g in vlm.bundle.manifest["graphs"].items()}
    return {"peaks": peaks, "stages": stage_fractions(result, peaks, vlm.config, precision, decoder_weight_bytes(vlm.bundle))}

