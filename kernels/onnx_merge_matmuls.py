"""Merge sibling linears that read the same activation into one wider matmul (graph pass).

A decoder layer reads its normed hidden state three times for q, k and v, and the MLP's input
twice for gate and up. At decode (one token) each of those matmuls is a small, memory-bound
kernel whose fixed cost (dispatch, threading, quantizing the same activation again) is a large
share of its time; one matmul over the concatenated weights reads the same bytes once per call
instead of three or two. After the merge:

    q, k, v -> GroupQueryAttention   becomes   qkv -> GroupQueryAttention(packed QKV, key/value empty)
    gate, up -> ...                  becomes   gate_up -> Split -> the same consumers

Supported: MatMul with a constant [K, N] weight (weights concatenated along N) and MatMulNBits
(rows of B, scales and zero points concatenated along N; merged only when K, bits, block_size
and accuracy_level agree, so a mixed graph keeps its 8-bit linears apart from 4-bit ones).
Each column's arithmetic is unchanged (MatMulNBits quantizes the activation per K block,
whatever N is), so the merged graph computes the same values as the separate matmuls; a test
holds it to the unmerged graph.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgevlm.kernels.onnx_graph import drop_unused_initializers

_NBITS_KEYS = ("K", "bits", "block_size", "accuracy_level")


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _signature(node, inits) -> tuple | None:
    """What must agree for two sibling nodes to merge (None: this node is not mergeable)."""
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in inits:
        weight = inits[node.input[1]]
        return ("MatMul", weight.data_type, weight.dims[0]) if len(weight.dims) == 2 else None
    if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
        # inputs: A, B, scales[, zero_points[, g_idx[, bias]]]: no g_idx / bias, all constant
        if len(node.input) > 4 or not all(name in inits for name in node.input[1:] if name):
            return None
        attrs = _attrs(node)
        has_zp = len(node.input) == 4 and bool(node.input[3])
        return ("MatMulNBits", has_zp, *(attrs.get(k) for k in _NBITS_KEYS))
    return None


def _n_of(node, inits) -> int:
    if node.op_type == "MatMul":
        return inits[node.input[1]].dims[1]
    return _attrs(node)["N"]


def _concat_rows(arrays: list[np.ndarray], ns: list[int]) -> np.ndarray:
    """Concatenate per-output-column data (N leading, possibly flattened) along N."""
    parts = [a.reshape(n, -1) for a, n in zip(arrays, ns)]
    merged = np.concatenate(parts, axis=0)
    return merged.reshape(sum(ns), *arrays[0].shape[1:]) if arrays[0].ndim > 1 else merged.reshape(-1)


def merge_sibling_matmuls(model: onnx.ModelProto) -> dict[str, str]:
    """Merge, in place, each group of mergeable matmuls that share their activation input.
    Returns {old node name: merged node name} for every node merged away."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    groups = defaultdict(list)
    for node in graph.node:
        sig = _signature(node, inits)
        if sig is not None:
            groups[(node.input[0], sig)].append(node)
    renamed = {}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}
    replace = {}  # first output of a group's first node -> the nodes that take the group's place
    drop = set()  # first output of every other node merged away
    for (_, sig), nodes in groups.items():
        if len(nodes) < 2:
            continue
        ns = [_n_of(n, inits) for n in nodes]
        first = nodes[0]
        merged_name = "+".join(n.name or n.output[0] for n in nodes)
        out_name = "_".join(n.output[0] for n in nodes) + ".merged"
        if sig[0] == "MatMul":
            weight = np.concatenate([numpy_helper.to_array(inits[n.input[1]]) for n in nodes], axis=1)  # [K, sum N]
            graph.initializer.append(numpy_helper.from_array(weight, out_name + ".weight"))
            new = [helper.make_node("MatMul", [first.input[0], out_name + ".weight"], [out_name], name=merged_name)]
        else:
            inputs = [first.input[0]]
            for slot, suffix in ((1, ".B"), (2, ".scales"), (3, ".zero_points")):
                if slot >= len(first.input) or not first.input[slot]:
                    continue
                data = _concat_rows([numpy_helper.to_array(inits[n.input[slot]]) for n in nodes], ns)
                graph.initializer.append(numpy_helper.from_array(data, out_name + suffix))
                inputs.append(out_name + suffix)
            attrs = {k: _attrs(first)[k] for k in _NBITS_KEYS}
            new = [helper.make_node("MatMulNBits", inputs, [out_name], name=merged_name, domain="com.microsoft",
                                    N=sum(ns), **attrs)]
        outputs = [n.output[0] for n in nodes]
        gqa = _packed_attention(outputs, consumers, graph_outputs)
        if gqa is not None:  # q, k, v feed one GroupQueryAttention as query, key, value: pack them
            gqa.input[0], gqa.input[1], gqa.input[2] = out_name, "", ""
        else:  # [.., sum N] -> the original outputs [.., N_i], for their unchanged consumers
            sizes = numpy_helper.from_array(np.array(ns, dtype=np.int64), out_name + ".split")
            graph.initializer.append(sizes)
            new.append(helper.make_node("Split", [out_name, sizes.name], outputs, name=merged_name + ".split",
                                        axis=-1))
        replace[first.output[0]] = new
        drop.update(n.output[0] for n in nodes[1:])
        for n in nodes:
            renamed[n.name] = merged_name
    if replace:
        # the merged node sits where the group's first node was: its input is produced before it,
        # and every reader of the old outputs came after that first node
        order = []
        for node in graph.node:
            if node.output[0] in replace:
                order.extend(replace[node.output[0]])
            elif node.output[0] not in drop:
                order.append(node)
        order = [onnx.NodeProto.FromString(n.SerializeToString()) for n in order]
        del graph.node[:]
        graph.node.extend(order)
        drop_unused_initializers(graph)
    return renamed


def _packed_attention(outputs: list[str], consumers, graph_outputs):
    """The GroupQueryAttention node that reads exactly these three outputs as query, key,
    value (and nothing else reads them), else None."""
    if len(outputs) != 3 or graph_outputs & set(outputs):
        return None
    readers = {id(n): n for name in outputs for n in consumers[name]}
    if len(readers) != 1:
        return None
    node = next(iter(readers.values()))
    if node.op_type != "GroupQueryAttention" or list(node.input[:3]) != outputs:
        return None
    return node
