"""edgevlm's int8 vision-layer kernel (o_proj + residual + LayerNorm + MLP + residual, after the
attention) against the same layer on ONNX Runtime as `quantize_dynamic` writes it (dynamic int8
MatMulInteger chains, FastGelu, LayerNormalization), in alternation in one process, at the vision
towers' shapes: median ms per call, the ratio, TOP/s, and both errors against fp32.

    python -m edgevlm.benchmarks.mlp_bench --threads 2 --repeat 30
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edgevlm.benchmarks.alternate import alternate
from edgevlm.runtime.mlp_kernel import PreNorm, available, gelu_tanh, layer_norm, mlp_int8, pack_linear, panel

# (label, tokens, width, MLP hidden size)
SHAPES = [("SigLIP-base 512 px (SmolVLM-256M/500M)", 1024, 768, 3072),
          ("SigLIP-base 384 px", 576, 768, 3072),
          ("default model (96 px, patch 8)", 144, 128, 512)]
EPS = 1e-6


def _linear(rng, k, n):
    """A random linear quantized per output channel, as quantize_dynamic does: (q8, scale, bias, w')."""
    w = rng.normal(0, k ** -0.5, (k, n)).astype(np.float32)
    s = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    q = np.clip(np.rint(w / s), -127, 127).astype(np.int8)
    return q, s, rng.normal(0, 0.1, n).astype(np.float32), q * s


def _ort_layer(layers, gamma, beta, threads):
    """The layer as ONNX Runtime runs a dynamically quantized vision graph: inputs a (attention out)
    and r (residual), output out."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(np.zeros((), np.int8), "zero"),
                        numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")]

    def linear(x, name, y):
        q, s, b, _ = layers[name]
        inits.extend(numpy_helper.from_array(t, f"{name}_{n}") for t, n in ((q, "q"), (s, "s"), (b, "b")))
        nodes.extend([
            helper.make_node("DynamicQuantizeLinear", [x], [f"{x}_q", f"{x}_s", f"{x}_z"]),
            helper.make_node("Mul", [f"{x}_s", f"{name}_s"], [f"{x}_ss"]),
            helper.make_node("MatMulInteger", [f"{x}_q", f"{name}_q", f"{x}_z", "zero"], [f"{x}_i"]),
            helper.make_node("Cast", [f"{x}_i"], [f"{x}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{x}_f", f"{x}_ss"], [f"{x}_m"]),
            helper.make_node("Add", [f"{x}_m", f"{name}_b"], [y])])

    linear("a", "o", "o_out")
    nodes += [helper.make_node("Add", ["r", "o_out"], ["h"]),
              helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["x"], epsilon=EPS, axis=-1)]
    linear("x", "fc1", "f")
    nodes.append(helper.make_node("FastGelu", ["f"], ["g"], domain="com.microsoft"))
    linear("g", "fc2", "y")
    nodes.append(helper.make_node("Add", ["h", "y"], ["out"]))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "r", "out")]
    model = helper.make_model(helper.make_graph(nodes, "layer", io[:2], io[2:], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.force_spinning_stop", "1")  # as the runtime's sessions
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bench(threads: int, repeat: int) -> list[dict]:
    ok, why = available()
    if not ok:
        raise SystemExit(f"the int8 MLP kernel cannot run here: {why}")
    rows = []
    for label, n, width, hidden in SHAPES:
        rng = np.random.default_rng(0)
        layers = {"o": _linear(rng, width, width), "fc1": _linear(rng, width, hidden), "fc2": _linear(rng, hidden, width)}
        gamma, beta = rng.normal(1, 0.1, width).astype(np.float32), rng.normal(0, 0.1, width).astype(np.float32)
        a, r = (rng.normal(0, 1, (1, n, width)).astype(np.float32) for _ in range(2))
        pre = PreNorm(pack_linear(*layers["o"][:3]), gamma, beta, EPS)
        fc1, fc2 = pack_linear(*layers["fc1"][:3]), pack_linear(*layers["fc2"][:3], panel())
        session = _ort_layer(layers, gamma, beta, threads)
        runs = {"onnxruntime": lambda: session.run(None, {"a": a, "r": r})[0],
                "int8 kernel": lambda: mlp_int8(a, r, fc1, fc2, threads, pre=pre)}
        med = alternate(runs, repeat)
        h = r + a @ layers["o"][3] + layers["o"][2]
        fp32 = h + gelu_tanh(layer_norm(h, gamma, beta, EPS) @ layers["fc1"][3] + layers["fc1"][2]) @ layers["fc2"][3] \
            + layers["fc2"][2]

        def err(x):
            return float(np.sqrt(((x - fp32) ** 2).mean() / ((fp32 - r) ** 2).mean()))

        ops = 2 * n * width * (width + 2 * hidden)  # three GEMMs, multiply-adds counted as 2
        rows.append({"shape": label, "tokens": n, "width": width, "hidden": hidden,
                     "onnxruntime_ms": round(med["onnxruntime"], 3), "kernel_ms": round(med["int8 kernel"], 3),
                     "speedup": round(med["onnxruntime"] / med["int8 kernel"], 3),
                     "kernel_tops": round(ops / med["int8 kernel"] / 1e9, 3),
                     "onnxruntime_rel_rms_vs_fp32": err(runs["onnxruntime"]()),
                     "kernel_rel_rms_vs_fp32": err(runs["int8 kernel"]())})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    rows = bench(args.threads, args.repeat)
    print(f"{'shape':42s} {'ORT ms':>8s} {'kernel ms':>10s} {'x':>6s} {'TOP/s':>6s} {'err ORT':>8s} {'err ours':>8s}")
    for r in rows:
        print(f"{r['shape']:42s} {r['onnxruntime_ms']:8.2f} {r['kernel_ms']:10.2f} {r['speedup']:6.2f} "
              f"{r['kernel_tops']:6.2f} {r['onnxruntime_rel_rms_vs_fp32']:8.4f} {r['kernel_rel_rms_vs_fp32']:8.4f}")
    print(json.dumps({"benchmark": "vision layer (o_proj + norm + MLP)", "threads": args.threads,
                      "repeat": args.repeat, "rows": rows}))


if __name__ == "__main__":
    main()
