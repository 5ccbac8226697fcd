"""ONNX Runtime weight quantization of exported graphs, and its measured error.

    fp32   nothing changes
    int8   vision_encoder and decoder MatMul weights -> dynamic int8, per output channel
           (MatMulInteger / DynamicQuantizeMatMul; activations quantized per run)
    int4   decoder MatMul weights -> MatMulNBits (4 bit, block 32, symmetric, accuracy_level 4:
           int8 activations on CPU); vision_encoder shipped in the same 4-bit format but run as
           dynamic int8 (compute-bound: int8 measures faster; export/quant_vision4.py);
           embed_tokens -> GatherBlockQuantized, 4 bit, block 32 (export/quant_embed.py)
    mixed  as int4, but the decoder linears most sensitive to int4 (measured in PyTorch on
           calibration images) are MatMulNBits 8 bit, under a budget (export/quant_mixed.py)

The PyTorch side (export/quant_torch.py) reproduces each of these weight formats exactly, so a
layer's measured error is the error of the layer the bundle runs. lm_head, exported as
Gemm(x, W, transB=1), is first rewritten as MatMul(x, W^T) (gemm_to_matmul) so it is quantized
with the other linears: at decode its weight is the single largest read (vocab x hidden).

A quantized graph is checked against the fp32 graph it came from (itself checked against
PyTorch to 1e-4 first) under a tolerance per precision, recorded in the manifest
(export/quant_check.py: inputs, measures, TOLERANCE and EMBED_TOLERANCE).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgevlm.errors import EdgeVLMError
from edgevlm.export.quant_check import (EMBED_TOLERANCE, TOLERANCE, compare, tolerance,  # noqa: F401 (public API)
                                        within)

QUANT = ("fp32", "int8", "int4", "mixed")
# precision of each graph for a --quant choice
PRECISION = {
    "fp32": {"vision_encoder": "fp32", "embed_tokens": "fp32", "decoder": "fp32"},
    "int8": {"vision_encoder": "int8", "embed_tokens": "fp32", "decoder": "int8"},
    "int4": {"vision_encoder": "int4", "embed_tokens": "int4", "decoder": "int4"},
    "mixed": {"vision_encoder": "int4", "embed_tokens": "int4", "decoder": "mixed"},
}


def is_packed(graph: str, precision: str) -> bool:
    """Does this graph at this precision ship its weights at 4 bit and run them as int8
    (export/quant_vision4.py)?"""
    return graph == "vision_encoder" and precision == "int4"


def precisions(quant: str) -> dict[str, str]:
    if quant not in PRECISION:
        raise EdgeVLMError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT)}")
    return PRECISION[quant]


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite each Gemm(A, W) with a constant W, no C, alpha 1 and transA 0 as MatMul(A, W'),
    W' = W^T when transB (a new initializer; W is dropped once unused). Returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) != 2 or node.input[1] not in inits
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0)):
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])  # [N, K] (transB) or [K, N]
        name = node.input[1] + ".matmul"
        graph.initializer.append(numpy_helper.from_array(
            weight.T.copy() if attrs.get("transB", 0) else weight, name))  # [K, N]
        old = node.input[1]
        node.op_type, node.input[1] = "MatMul", name
        del node.attribute[:]
        if not any(old in n.input for n in graph.node):
            graph.initializer.remove(inits[old])
        done += 1
    return done


def graph_kind(path: Path) -> str:
    """Bundle graph name from a file name as the export and benchmarks write them
    (decoder.onnx, embed_tokens.fp32.onnx); anything else is treated as a decoder-like graph."""
    stem = Path(path).name.split(".")[0]
    return stem if stem in ("vision_encoder", "embed_tokens", "decoder") else "decoder"


def quantize_graph(src: Path, dst: Path, precision: str, graph: str | None = None, keep_8bit=None) -> dict:
    """Write `src` quantized to `precision` ("int8" | "int4" | "mixed") as `dst`.

    graph: which bundle graph it is (default: from the file name): embed_tokens is quantized as a
    table (4 bit), the others by their MatMuls. keep_8bit (mixed only): {layer: W [N, K]} of the
    nn.Linear weights to keep at 8 bit. Returns {layer: its MatMulNBits node} of those (else empty);
    for the vision_encoder at int4, the manifest's packed_weights entry (export/quant_vision4.py)."""
    from edgevlm.export.quant_embed import quantize_embeddings
    from edgevlm.export.quant_mixed import matmul_nodes, quantize_mixed, quantize_nbits

    graph = graph or graph_kind(src)
    model = onnx.load(str(src))
    if graph == "embed_tokens":
        if precision != "int4" or not quantize_embeddings(model):
            raise EdgeVLMError(f"embed_tokens is quantized to int4 (a 4-bit table) only, not {precision!r}")
        onnx.save(model, str(dst))
        return {}
    gemm_to_matmul(model)
    nodes = {}
    if is_packed(graph, precision):
        from edgevlm.export.quant_vision4 import quantize_vision_int4

        return quantize_vision_int4(model, dst)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(model, str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
        return nodes
    if precision == "int4":
        model = quantize_nbits(model, 4)
    elif precision == "mixed":
        if keep_8bit is None:
            raise EdgeVLMError("mixed precision needs the layers to keep at 8 bit, measured in PyTorch: "
                               "use edgevlm export --quant mixed")
        nodes = matmul_nodes(model, keep_8bit)  # {layer: MatMul node}
        model, renamed = quantize_mixed(model, set(nodes.values()))
        nodes = {layer: renamed[node] for layer, node in nodes.items()}
    else:
        raise EdgeVLMError(f"cannot quantize a graph to {precision!r}")
    onnx.save(model, str(dst))
    return nodes


def quantize_bundle_graphs(work: Path, precision: dict, mixed=None,
                           gate: bool = True) -> tuple[dict[str, dict], dict[str, dict]]:
    """Quantize, in place, each non-fp32 graph of the bundle being written in `work`, check it
    against its fp32 graph and return (what each graph's manifest validation entry gains, the
    packed_weights entry of each packed graph). The first: {"quantized_vs_fp32": report +
    tolerance} and, for a mixed decoder, "mixed" (the 8-bit layers, their nodes and why).
    mixed: an export.quant_mixed.MixedPlan, needed for "mixed".
    gate=False: a graph outside its tolerance is kept, with "gate": "off" beside its measured error
    (for random-weight models that only time speed: untrained layers compound rounding error)."""
    from edgevlm.export.validate import ExportValidationError

    out, packed = {}, {}
    for name, prec in precision.items():
        if prec == "fp32":
            continue
        path, fp32_path = work / f"{name}.onnx", work / f"{name}.fp32.onnx"
        path.rename(fp32_path)
        try:
            nodes = quantize_graph(fp32_path, path, prec, graph=name,
                                   keep_8bit=mixed.weights if mixed is not None else None)
            report = compare(fp32_path, path, name)
        finally:
            fp32_path.unlink()
        if gate and not within(report, prec, name):
            raise ExportValidationError(f"{name} quantized to {prec} is outside its tolerance "
                                        f"{tolerance(name, prec)}: {report}")
        out[name] = {"quantized_vs_fp32": {**report, "tolerance": tolerance(name, prec),
                                           **({} if gate else {"gate": "off"})}}
        if is_packed(name, prec):
            packed[name] = nodes
        if prec == "mixed":
            record = dict(mixed.record)
            record["int8_layers"] = [{**r, "node": nodes[r["layer"]]} for r in record["int8_layers"]]
            out[name]["mixed"] = record
    return out, packed
