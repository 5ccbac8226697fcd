"""Quantized embedding table: Gather -> com.microsoft.GatherBlockQuantized (4 bit, block 32).

The table [V, D] is quantized per row in blocks of 32 along the hidden axis with the same
symmetric rule as MatMulNBits (export/quant_torch.py, "int4"): scale = -m / 8 for the block's
element m of largest magnitude, q = clamp(roundf(w / scale + 8), 0, 15). GatherBlockQuantized
takes it as uint8 data with two values per byte (low nibble = even column, attribute bits=4)
and, given no zero-point input, dequantizes (q - 8) * scale: the same w' as MatMulNBits.
Checked on ONNX Runtime 1.32's CPU kernel with a tiny graph (test_quant_embed.py).

Why it matters: SmolVLM's table is 49152 x 576, 113 MB in fp32; 4 bit + float32 scales is 17 MB.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgevlm.errors import EdgeVLMError
from edgevlm.kernels.onnx_graph import use_ms_domain

BLOCK = 32


def quantize_blocks(table: np.ndarray, bits: int = 4, block: int = BLOCK, scale_dtype=np.float32):
    """table [R, K] float32 -> (q uint8 [R, K] in 0..2^bits-1, scales float32 [R, ceil(K/block)]).
    scale_dtype float16: each scale is rounded to float16 before q is chosen with it (the packed
    vision store keeps its scales at float16); the scales returned are still float32 values."""
    rows, k = table.shape
    pad = (-k) % block  # zeros pad a last partial block; they never change its extreme
    blocks = np.pad(table.astype(np.float32), ((0, 0), (0, pad))).reshape(rows, -1, block)  # [R, K/block, block]
    lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
    half = np.float32(1 << (bits - 1))
    scale = (-extreme / half).astype(np.float32).astype(scale_dtype).astype(np.float32)  # [R, K/block, 1]
    with np.errstate(divide="ignore"):
        recip = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    t = blocks * recip + half  # float32, as MLAS: reciprocal multiply, then add the zero point
    low = np.floor(t)
    q = np.clip(low + (t - low >= 0.5), 0, 2 * half - 1)  # roundf (half away from zero) for t >= 0
    return q.reshape(rows, -1)[:, :k].astype(np.uint8), scale[..., 0]


def dequantize_blocks(q: np.ndarray, scales: np.ndarray, bits: int = 4, block: int = BLOCK) -> np.ndarray:
    """(q [R, K], scales [R, ceil(K/block)]) -> w' [R, K] float32."""
    half = np.float32(1 << (bits - 1))
    per_column = np.repeat(scales, block, axis=1)[:, :q.shape[1]]  # [R, K]
    return (q.astype(np.float32) - half) * per_column


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """q [R, K] (values 0..15, K even) -> [R, K/2] uint8, column 2j in the low nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def quantize_embeddings(model: onnx.ModelProto, block: int = BLOCK) -> int:
    """Rewrite each Gather(table, ids) with a constant 2-D float table (gather axis 0) as
    GatherBlockQuantized, 4 bit. Returns how many. Meant for embed_tokens.onnx only: a Gather of
    a constant table elsewhere (a rotary cache) must not lose precision."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done = 0
    for node in graph.node:
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if node.op_type != "Gather" or node.input[0] not in inits or axis != 0:
            continue
        table = numpy_helper.to_array(inits[node.input[0]])  # [V, D]
        if table.ndim != 2 or table.dtype != np.float32 or table.shape[1] % 2:
            raise EdgeVLMError(f"cannot quantize embedding table {node.input[0]} {table.shape} {table.dtype}: "
                               "need a float32 [vocab, hidden] table with an even hidden size")
        q, scales = quantize_blocks(table, 4, block)
        name = node.input[0]
        graph.initializer.extend([numpy_helper.from_array(pack_nibbles(q), name + ".q4"),  # [V, D/2]
                                  numpy_helper.from_array(scales, name + ".scales")])  # [V, D/block]
        new = helper.make_node("GatherBlockQuantized", [name + ".q4", node.input[1], name + ".scales"],
                               list(node.output), name=node.name, domain="com.microsoft",
                               gather_axis=0, quantize_axis=1, block_size=block, bits=4)
        node.CopyFrom(new)
        if not any(name in n.input for n in graph.node):
            graph.initializer.remove(inits[name])
        done += 1
    if done:
        use_ms_domain(model)
    return done
