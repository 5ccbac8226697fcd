"""Small graph-editing steps shared by the fusion and quantization passes."""

from __future__ import annotations

import onnx
from onnx import helper


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads and no graph output names (what a pass left behind)."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def use_ms_domain(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft opset (ONNX Runtime's contrib ops) once, if it is not already."""
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
