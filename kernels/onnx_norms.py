"""ONNX graph pass: the exporter's spelled-out RMSNorm -> one `SimplifiedLayerNormalization`.

edgevlm.models.decoder.RMSNorm exports as

    Pow(x, 2) -> ReduceMean(last axis, keepdims) -> Add(eps) -> Sqrt -> Reciprocal
      -> Mul(x, .) -> Mul(., weight)

(five elementwise kernels per norm, 61 norms in a 30-layer decoder). ONNX Runtime's
SimplifiedLayerNormalization (onnx domain, contrib kernel; fp32 statistics) computes the same
in one pass. Applied to `--attention fused` decoders; the export validation (1e-4 against
PyTorch) checks the rewritten graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgevlm.kernels.onnx_graph import drop_unused_initializers



def fuse_rms_norm(model: onnx.ModelProto) -> int:
    """Rewrite every matching chain in place. Returns how many norms were fused."""
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only(name, op):  # the single consumer of `name`, if it is an `op` and `name` is internal
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op and name not in outputs else None

    nodes = list(graph.node)
    replace, dead = {}, set()  # output name of a chain's last Mul -> the fused node; outputs of removed nodes
    for pow_ in nodes:
        if pow_.op_type != "Pow" or not np.array_equal(consts.get(pow_.input[1]), np.array(2.0, np.float32)):
            continue
        x = pow_.input[0]
        mean = only(pow_.output[0], "ReduceMean")
        add = mean and only(mean.output[0], "Add")
        sqrt = add and only(add.output[0], "Sqrt")
        recip = sqrt and only(sqrt.output[0], "Reciprocal")
        scale = recip and only(recip.output[0], "Mul")
        if not scale or x not in scale.input:
            continue
        axes = consts.get(mean.input[1]) if len(mean.input) > 1 else None
        keep = {a.name: a.i for a in mean.attribute}.get("keepdims", 1)
        eps = consts.get(add.input[1] if add.input[0] == mean.output[0] else add.input[0])
        weight_mul = only(scale.output[0], "Mul")
        if axes is None or list(axes.reshape(-1)) != [-1] or not keep or eps is None or eps.size != 1 or not weight_mul:
            continue
        weight = weight_mul.input[1] if weight_mul.input[0] == scale.output[0] else weight_mul.input[0]
        if weight not in consts or consts[weight].ndim != 1:
            continue
        out = weight_mul.output[0]
        norm = onnx.helper.make_node("SimplifiedLayerNormalization", [x, weight], [out], name=f"{out}.rms_norm",
                                     axis=-1, epsilon=float(eps.reshape(-1)[0]), stash_type=1)
        replace[weight_mul.output[0]] = norm
        dead.update(n.output[0] for n in (pow_, mean, add, sqrt, recip, scale))
    kept = [replace.get(n.output[0], n) for n in nodes if n.output[0] not in dead]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)  # the chains' exponent, axes and eps
    return len(replace)
