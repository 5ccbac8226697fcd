"""SiLU as one fused op: x * Sigmoid(x) -> com.microsoft.QuickGelu(x, alpha=1.0) (graph pass).

QuickGelu computes x * sigmoid(alpha * x); with alpha = 1 that is exactly SiLU, the gate
activation of SwiGLU MLPs (Llama, SmolLM2). One kernel instead of two, and the sigmoid's
output tensor is never written out: a small gain per layer that matters at decode, where
every op's fixed cost counts.
"""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import helper

from edgevlm.kernels.onnx_graph import use_ms_domain


def fuse_silu(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each Mul(x, Sigmoid(x)) whose Sigmoid output has no other reader.
    Returns how many."""
    graph = model.graph
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    fused, drop = 0, set()
    for node in graph.node:
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        a, b = node.input
        for x, s in ((a, b), (b, a)):
            sig = producer.get(s)
            if (sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == x and len(readers[s]) == 1
                    and s not in outputs):
                node.op_type, node.domain = "QuickGelu", "com.microsoft"
                del node.input[:]
                node.input.append(x)
                node.attribute.append(helper.make_attribute("alpha", 1.0))
                drop.add(sig.output[0])
                fused += 1
                break
    if drop:
        keep = [n for n in graph.node if not (n.op_type == "Sigmoid" and n.output[0] in drop)]
        del graph.node[:]
        graph.node.extend(keep)
        use_ms_domain(model)
    return fused
