"""--quant mixed: decoder linears at 4 bit, the most sensitive ones at 8 bit, under a budget.

Sensitivity is measured in PyTorch (export/quant_report.py): the relative RMS error of each
decoder linear's output on calibration images when only its weight is int4 (the MatMulNBits
format). Most sensitive first, a layer stays at 8 bit (MatMulNBits bits=8, block 32: ONNX
Runtime 1.32's CPU kernel runs it, checked with a tiny graph) while the 8-bit layers' weights
are at most BUDGET of all decoder linear weights (counted in elements, so in fp32 bytes too;
lm_head counted); one that does not fit is passed over and smaller ones may still fit.

The chosen nn.Linear names are mapped onto the exported graph's MatMul nodes by their weights:
the exporter keeps them bit-exact (W^T as the MatMul's B), but not their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgevlm.errors import EdgeVLMError

BUDGET = 0.25
RULE = ("decoder linears ranked by the int4 relative RMS error of their output on calibration images "
        "(PyTorch, weight-only); most sensitive first, kept at 8 bit (MatMulNBits bits=8, block 32) while "
        "the 8-bit weights stay within the budget share of all decoder linear weight elements (lm_head counted)")


@dataclass
class MixedPlan:
    """The choice made in PyTorch, carried into the ONNX quantization of the decoder.
    record: what the manifest keeps (selection_record; node names are added once mapped).
    weights: {layer: W [N, K] float32} of the 8-bit layers, to find their MatMul nodes."""

    record: dict
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def choose_8bit(sensitivity: dict[str, float], elements: dict[str, int], budget: float = BUDGET) -> list[str]:
    """Names to keep at 8 bit, most sensitive first. sensitivity: {layer: int4 rel RMS};
    elements: {layer: weight elements} over all decoder linears."""
    if not 0 <= budget <= 1:
        raise EdgeVLMError(f"the 8-bit budget is a share of the decoder's linear weights, 0..1; got {budget}")
    allowed, used, kept = budget * sum(elements.values()), 0, []
    for name in sorted(sensitivity, key=lambda n: (-sensitivity[n], n)):
        if used + elements[name] <= allowed:
            kept.append(name)
            used += elements[name]
    return kept


def selection_record(sensitivity: dict[str, float], elements: dict[str, int], kept: list[str],
                     budget: float, calibration: int, int8_errors: dict[str, float]) -> dict:
    """What the manifest (validation.decoder.mixed) and the report say about the choice."""
    total = sum(elements.values())
    left = [sensitivity[n] for n in sensitivity if n not in kept]
    return {
        "rule": RULE,
        "budget": budget,
        "used": sum(elements[n] for n in kept) / total,
        "calibration_images": calibration,
        "int8_layers": [{"layer": n, "int4_rel_rms": sensitivity[n], "int8_rel_rms": int8_errors[n],
                         "weight_share": elements[n] / total, "why": f"int4 sensitivity rank {rank + 1} of "
                         f"{len(sensitivity)}, fits the budget"}
                        for rank, n in enumerate(sorted(sensitivity, key=lambda n: (-sensitivity[n], n))) if n in kept],
        "int4_layers": len(sensitivity) - len(kept),
        "largest_int4_rel_rms_left_at_4bit": max(left, default=0.0),
    }


def matmul_nodes(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> dict[str, str]:
    """{layer name: MatMul node name} for nn.Linear weights [N, K] (numpy float32) found as some
    MatMul's constant B [K, N]. Every layer must be found (else the choice could not be honoured)."""
    by_bytes: dict[bytes, list[str]] = {}
    for name, w in weights.items():
        by_bytes.setdefault(np.ascontiguousarray(w.T, dtype=np.float32).tobytes(), []).append(name)
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            b = numpy_helper.to_array(inits[node.input[1]])
            for name in by_bytes.get(np.ascontiguousarray(b, dtype=np.float32).tobytes(), []):
                found[name] = node.name
    missing = sorted(set(weights) - set(found))
    if missing:
        raise EdgeVLMError(f"--quant mixed: no MatMul in the exported decoder holds the weight of {', '.join(missing)}")
    return found


def quantize_nbits(model: onnx.ModelProto, bits: int, exclude=()) -> onnx.ModelProto:
    """Every MatMul with a constant weight, except the nodes named in `exclude` -> MatMulNBits
    (symmetric, block 32, accuracy_level 4: int8 activations on CPU)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=list(exclude), op_types_to_quantize=("MatMul",))
    quantizer.process()
    return quantizer.model.model


def quantize_mixed(model: onnx.ModelProto, keep_8bit) -> tuple[onnx.ModelProto, dict[str, str]]:
    """4 bit everywhere except the `keep_8bit` node names, which the second pass (all that the
    first left as MatMul with a constant weight) makes 8 bit. Returns the model and
    {kept node name: its MatMulNBits node's name} (the quantizer renames nodes; outputs stay)."""
    outputs = {n.name: n.output[0] for n in model.graph.node if n.op_type == "MatMul"}
    unknown = sorted(set(keep_8bit) - set(outputs))
    if unknown:
        raise EdgeVLMError(f"--quant mixed: no MatMul node named {', '.join(unknown)}")
    model = quantize_nbits(quantize_nbits(model, 4, exclude=keep_8bit), 8)
    by_output = {n.output[0]: n.name for n in model.graph.node if n.op_type == "MatMulNBits"}
    return model, {name: by_output[outputs[name]] for name in keep_8bit}
