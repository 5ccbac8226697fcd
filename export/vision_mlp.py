"""Find the vision tower's MLPs in a dynamically quantized graph, for the int8 MLP kernel
(kernels/csrc/mlp_int8.c) to run in place of their nodes (export/vision_split.py cuts there).

One MLP, as `quantize_dynamic` writes it (each linear six nodes), ending in the residual add:

    x -> DynamicQuantizeLinear -> MatMulInteger(W1 int8) -> Cast -> Mul(scales) -> Add(b1)  (+ the
         scales' Mul) -> FastGelu -> the same six nodes with W2, b2 -> Add(residual) -> out

Where the MLP's input is LayerNorm(h), h = residual + o_proj(attention) and those nodes come
right before it, they join the stage too (the kernel's PreNorm), from the MultiHeadAttention on.

Only weights the bundle packs at 4 bit (edgevlm.runtime.packed_weights) qualify: the runtime
rebuilds their int8 values from the store, bit for bit, so nothing is shipped twice. The biases
and norm weights go to a small data file of their own (the parts no longer hold them).
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper


def _linear(y: str, nodes: list, producer: dict, inits: dict, packed: set[str]):
    """The six nodes of a dynamically quantized linear giving `y`: (node ids, x, the int8 weight's
    name (as packed_weights lists it), bias initializer name), or None where `y` is not made that way.
    producer: {tensor: id of the node that writes it}."""
    def node(name, op):
        i = producer.get(name)
        return (i, nodes[i]) if i is not None and nodes[i].op_type == op else (None, None)

    add_i, add = node(y, "Add")
    if add is None:
        return None
    bias = [x for x in add.input if x in inits]
    if len(bias) != 1 or len(inits[bias[0]].dims) != 1:
        return None
    mul_i, mul = node([x for x in add.input if x != bias[0]][0], "Mul")
    if mul is None:
        return None
    for a, b in (mul.input, mul.input[::-1]):
        cast_i, cast = node(a, "Cast")
        scales_i, scales = node(b, "Mul")
        if cast is not None and scales is not None:
            break
    else:
        return None
    mmi_i, mmi = node(cast.input[0], "MatMulInteger")
    if mmi is None or len(mmi.input) != 4:
        return None
    xq, w, xz, wz = mmi.input
    dql_i, dql = node(xq, "DynamicQuantizeLinear")
    if (dql is None or list(dql.output) != [xq, scales.input[0], xz] and list(dql.output) != [xq, scales.input[1], xz]
            or w not in packed or wz not in inits
            or numpy_helper.to_array(inits[wz]).any()):
        return None
    return [dql_i, scales_i, mmi_i, cast_i, mul_i, add_i], dql.input[0], w, bias[0]


def find_mlps(graph: onnx.GraphProto, packed: set[str]) -> list[tuple[int, int, dict]]:
    """[(first node, last node, stage)] of every MLP in `graph` whose nodes are contiguous and
    whose intermediates nothing else reads; stage = {"kind": "mlp", "x", "residual", "out",
    "fc1": {"weight", "bias"}, "fc2": {...}} (bias: the initializer's name, replaced by an
    offset when the biases are written)."""
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    readers: dict[str, int] = {}
    for i, n in enumerate(graph.node):
        for x in n.output:
            producer[x] = i
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    inits = {t.name: t for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    found = []
    for i, gelu in enumerate(nodes):
        if (gelu.domain, gelu.op_type) != ("com.microsoft", "FastGelu") or len(gelu.input) != 1:
            continue
        fc1 = _linear(gelu.input[0], nodes, producer, inits, packed)
        ends = [j for j, n in enumerate(nodes) if n.op_type == "DynamicQuantizeLinear"
                and n.input[0] == gelu.output[0]]
        if fc1 is None or readers.get(gelu.output[0]) != 1 or len(ends) != 1:
            continue
        adds = [j for j, n in enumerate(nodes) if n.op_type == "Add" and j > ends[0]]
        fc2 = last = None
        for j in adds:  # the residual add reads fc2's output
            for y in nodes[j].input:
                fc2 = _linear(y, nodes, producer, inits, packed)
                if fc2 is not None and fc2[1] == gelu.output[0]:
                    last = j
                    break
            if last is not None:
                break
        if last is None:
            continue
        final = nodes[last]
        y2 = [x for x in final.input if producer.get(x) == fc2[0][-1]][0]
        residual = [x for x in final.input if x != y2]
        chain = sorted(fc1[0] + [i] + fc2[0] + [last])
        inside = {x for j in chain[:-1] for x in nodes[j].output}
        if (len(residual) != 1 or chain != list(range(chain[0], chain[-1] + 1)) or inside & outputs
                or any(readers.get(x, 0) > sum(x in nodes[j].input for j in chain) for x in inside)):
            continue
        stage = {"kind": "mlp", "x": fc1[1], "residual": residual[0], "out": final.output[0],
                 "fc1": {"weight": fc1[2], "bias": fc1[3]}, "fc2": {"weight": fc2[2], "bias": fc2[3]}}
        first = _pre_norm(stage, chain[0], nodes, producer, readers, inits, packed)
        found.append((first if first is not None else chain[0], chain[-1], stage))
    return found


def _pre_norm(stage: dict, start: int, nodes: list, producer: dict, readers: dict, inits: dict,
              packed: set[str]) -> int | None:
    """Where the MLP's input is LayerNorm(h), h = its residual = r + o_proj(attention), and those
    nodes and the MultiHeadAttention come right before it and feed nothing else: fold them into
    the stage ("attention": {"out"}, whose node export/vision_split.py describes in full; "o_proj",
    "norm"; the residual becomes r) and return the attention's node id; else None and the stage is
    left alone."""
    ln_i = producer.get(stage["x"])
    if ln_i is None or ln_i != start - 1 or readers.get(stage["x"]) != 1:
        return None
    ln = nodes[ln_i]
    attrs = {a.name: helper.get_attribute_value(a) for a in ln.attribute}
    if (ln.op_type != "LayerNormalization" or len(ln.input) != 3 or ln.input[0] != stage["residual"]
            or not all(x in inits for x in ln.input[1:]) or attrs.get("axis", -1) != -1 or len(ln.output) != 1):
        return None
    add_i = producer.get(ln.input[0])
    if add_i != ln_i - 1 or nodes[add_i].op_type != "Add" or readers.get(ln.input[0]) != 2:
        return None
    for y, r in (nodes[add_i].input, nodes[add_i].input[::-1]):
        o = _linear(y, nodes, producer, inits, packed)
        if o is not None:
            break
    else:
        return None
    mha_i = producer.get(o[1])
    if (mha_i is None or (nodes[mha_i].domain, nodes[mha_i].op_type) != ("com.microsoft", "MultiHeadAttention")
            or sorted(o[0]) != list(range(mha_i + 1, add_i)) or readers.get(o[1]) != 1):
        return None
    if any(readers.get(x, 0) != 1 for i in o[0] for x in nodes[i].output if x != y):
        return None
    stage.pop("x")
    stage.update(residual=r, attention={"out": o[1]}, o_proj={"weight": o[2], "bias": o[3]},
                 norm={"gamma": ln.input[1], "beta": ln.input[2], "epsilon": float(attrs.get("epsilon", 1e-5))})
    return mha_i
