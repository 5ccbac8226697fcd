"""ONNX graph pass: residual Add + norm -> one Skip(Simplified)LayerNormalization.

A pre-norm block adds its branch to the residual stream and normalises the sum for the next
branch:  h = Add(x, branch);  n = Norm(h);  ... later Add(h, next_branch).
ONNX Runtime's SkipLayerNormalization / SkipSimplifiedLayerNormalization (com.microsoft)
read x and branch once and write both n (output 0) and h (output 3), saving a full pass
over the activation per norm. Only same-shape adds are fused (neither operand an
initializer or Constant: those broadcast, e.g. a bias or a position table).
"""

from __future__ import annotations

import onnx

# norm op -> (skip op, inputs of the norm after X, in the skip op's order)
SKIP_OF = {
    "LayerNormalization": "SkipLayerNormalization",  # (X, gamma, beta) -> (X, skip, gamma, beta)
    "SimplifiedLayerNormalization": "SkipSimplifiedLayerNormalization",  # (X, gamma) -> (X, skip, gamma)
}


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def fuse_skip_norms(model: onnx.ModelProto) -> int:
    """Rewrite every matching Add -> norm pair in place. Returns how many were fused."""
    graph = model.graph
    static = {t.name for t in graph.initializer}
    static |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    fused_adds, replace = set(), {}
    for norm in graph.node:
        if norm.op_type not in SKIP_OF or _attr(norm, "axis", -1) != -1 or len(norm.output) != 1:
            continue
        add = producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or add.output[0] in outputs or add.name in fused_adds:
            continue
        if any(i in static for i in add.input):
            continue
        total = add.output[0]
        skip = onnx.helper.make_node(
            SKIP_OF[norm.op_type], [add.input[0], add.input[1], *norm.input[1:]],
            [norm.output[0], "", "", f"{total}.skip_sum"], name=f"{norm.output[0]}.skip_norm",
            domain="com.microsoft", epsilon=float(_attr(norm, "epsilon", 1e-5)))
        replace[id(norm)] = skip
        fused_adds.add(add.name)
        for other in graph.node:  # the residual stream now reads the fused node's sum output
            for k, name in enumerate(other.input):
                if name == total and other is not norm:
                    other.input[k] = f"{total}.skip_sum"
    kept = [replace.get(id(n), n) for n in graph.node if n.name not in fused_adds or n.op_type != "Add"]
    del graph.node[:]
    graph.node.extend(kept)
    return len(replace)
