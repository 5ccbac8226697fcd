"""Cut the vision graph at its attention nodes, so the runtime can run our bf16 attention kernel
(kernels/csrc/attention_bf16.c) between ONNX Runtime runs of the parts.

Why not a custom op: ONNX Runtime's C headers, which a custom-op library must build against, are
not available on this machine class (not in the pip wheels, not in Debian 12). Each cut costs one
session run (~0.1 ms); the kernel saves ~3.8 ms a layer at SigLIP's shape.

    vision_encoder.onnx (nodes ... MHA_0 ... MHA_1 ... MHA_L-1 ...)
      -> vision_encoder.part00.onnx   nodes before MHA_0         -> q0, k0, v0 (+ the residual)
         vision_encoder.part01.onnx   nodes between MHA_0, MHA_1 (attn0, residual) -> q1, k1, v1, ...
         ...
         vision_encoder.partLL.onnx   nodes after MHA_L-1        -> image_embeds

The parts keep the graph's external-data references (no weight is stored twice); small inline
tensors go to the part that uses them. The manifest lists the parts and, between them, each
attention node's q/k/v/output names, heads and scale (graphs.vision_encoder.split).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edgevlm.errors import EdgeVLMError

MHA = ("com.microsoft", "MultiHeadAttention")
HEAD_DIMS = (32, 64)  # the kernel's head sizes
CUT_TOLERANCE = 1e-3  # relative RMS, parts (ONNX Runtime attention between them) against the whole graph


def part_name(graph_file: str, i: int) -> str:
    return graph_file.replace(".onnx", f".part{i:02d}.onnx")


def _attention_spec(node: onnx.NodeProto, width: int | None) -> dict:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if len(node.input) != 3 or not all(node.input) or len(node.output) != 1 or set(attrs) - {"num_heads", "scale"}:
        raise EdgeVLMError(f"vision attention {node.name} is not an unmasked q/k/v MultiHeadAttention")
    heads = int(attrs["num_heads"])
    scale = float(attrs.get("scale", (width // heads) ** -0.5 if width else 0.0))
    return {"q": node.input[0], "k": node.input[1], "v": node.input[2], "out": node.output[0],
            "num_heads": heads, "scale": scale}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value onnx's shape inference knows; contrib ops' outputs it does not
    know are float activations in this graph (checked when ONNX Runtime loads the parts)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if v.type.tensor_type.elem_type:
            known[v.name] = v.type.tensor_type.elem_type
    for t in model.graph.initializer:
        known[t.name] = t.data_type
    return known


def split_graph(path: Path, width: int) -> dict:
    """Write the parts of `path` beside it and return the manifest entry
    {"parts": [file, ...], "attention": [{q, k, v, out, num_heads, scale}, ...]}: part i runs,
    then attention i, then part i+1. width: the attention's hidden size (heads * head_dim)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # weights stay where they are
    graph = model.graph
    cuts = [i for i, n in enumerate(graph.node) if (n.domain, n.op_type) == MHA]
    attention = [_attention_spec(graph.node[i], width) for i in cuts]
    if not cuts or any(width % a["num_heads"] or width // a["num_heads"] not in HEAD_DIMS for a in attention):
        raise EdgeVLMError(f"{path.name}: no MultiHeadAttention with heads of {' or '.join(map(str, HEAD_DIMS))} "
                           "to cut at")
    bounds = [-1] + cuts + [len(graph.node)]
    segments = [list(graph.node[a + 1:b]) for a, b in zip(bounds, bounds[1:])]
    types = _types(model)
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input}
    graph_outputs = {v.name: v for v in graph.output}
    # what each later stage reads: the parts after it, the attention nodes after it, the graph outputs
    later_needs: list[set[str]] = []
    for s in range(len(segments)):
        need = set(graph_outputs)
        for seg in segments[s + 1:]:
            need.update(x for n in seg for x in n.input)
        for spec in attention[s:]:
            need.update((spec["q"], spec["k"], spec["v"]))
        later_needs.append(need)
    files = []
    for s, nodes in enumerate(segments):
        produced = {x for n in nodes for x in n.output if x}
        consumed = [x for n in nodes for x in n.input if x]
        ins = list(dict.fromkeys(x for x in consumed if x not in produced and x not in inits))
        outs = [x for x in dict.fromkeys(x for n in nodes for x in n.output if x) if x in later_needs[s]]
        if not outs:
            raise EdgeVLMError(f"{path.name}: part {s} of the split vision graph computes nothing used later")

        def value(name):
            if name in graph_inputs or name in graph_outputs:  # keep their declared shapes
                return graph_inputs.get(name) or graph_outputs[name]
            return helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None)

        used_inits = [inits[x] for x in dict.fromkeys(consumed) if x in inits]
        part = helper.make_graph(nodes, f"{graph.name}_part{s}", [value(x) for x in ins],
                                 [value(x) for x in outs], used_inits)
        part_model = helper.make_model(part, opset_imports=model.opset_import, ir_version=model.ir_version)
        name = part_name(path.name, s)
        onnx.save(part_model, str(path.parent / name))
        files.append(name)
    return {"parts": files, "attention": attention}


def _session(source, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # no spin-waiting after a run: a spinning worker would hold a core the kernel (or the next
    # part) needs when they alternate
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def ort_attention(threads: int = 0):
    """attend(q, k, v, num_heads, scale) on ONNX Runtime's own MultiHeadAttention, one node: the
    whole graph's arithmetic exactly, so parts + this must equal the whole graph bit for bit (with
    dynamic int8 quantization after attention, any other fp32 attention can move a rounding)."""
    sessions = {}

    def attend(q, k, v, num_heads, scale, q_free=False):
        key = (num_heads, scale)
        if key not in sessions:
            io = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", "N", "W"]) for x in "qkvo"]
            node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain=MHA[0],
                                    num_heads=num_heads, scale=scale)
            model = helper.make_model(helper.make_graph([node], "mha", io[:3], io[3:]),
                                      opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MHA[0], 1)])
            sessions[key] = _session(model.SerializeToString(), threads)
        return sessions[key].run(None, {"q": q, "k": k, "v": v})[0]

    return attend


def check_split(graph: Path, spec: dict, tile_size: int, threads: int = 0) -> dict:
    """Run the parts against the whole graph on one random tile: with ONNX Runtime's attention
    between them they must agree exactly (the cut itself changes nothing); with the bf16 kernel,
    where this CPU has it, the error is measured. Returns the manifest's validation entry."""
    import numpy as np

    from edgevlm.runtime.attention_kernel import attention_bf16, available
    from edgevlm.runtime.vision_split import SplitVision

    def session(p):
        return _session(str(p), threads)

    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, tile_size, tile_size)).astype(np.float32)
    (whole,) = session(graph).run(None, {"pixel_values": pixels})
    parts = [session(graph.parent / p) for p in spec["parts"]]
    (cut,) = SplitVision(parts, spec["attention"], ort_attention(threads)).run(None, {"pixel_values": pixels})
    def rel_rms(x):
        return float(np.sqrt(((x - whole) ** 2).mean() / max(float((whole ** 2).mean()), 1e-30)))

    # Not bit for bit: ONNX Runtime fuses a little differently inside the parts than across the
    # whole graph, and in a dynamically quantized graph a last-bit difference can move an
    # activation's int8 rounding. So the bound is relative, and far below quantization's own
    # error (rel. RMS 0.03-0.2 against fp32).
    entry = {"parts": len(parts), "cut_rel_rms": rel_rms(cut), "cut_max_abs_diff": float(np.abs(cut - whole).max()),
             "tolerance": CUT_TOLERANCE}
    if not entry["cut_rel_rms"] <= CUT_TOLERANCE:
        raise EdgeVLMError(f"{graph.name} cut at its attention nodes disagrees with the whole graph: "
                           f"relative RMS {entry['cut_rel_rms']:.2e} > {CUT_TOLERANCE:g}")
    ok, why = available()
    if ok:
        (fast,) = SplitVision(parts, spec["attention"],
                              lambda q, k, v, h, s, free: attention_bf16(q, k, v, h, s, threads or 1)).run(
            None, {"pixel_values": pixels})
        entry["bf16_attention_rel_rms"] = rel_rms(fast)
    else:
        entry["bf16_attention_rel_rms"] = None
        entry["bf16_unchecked"] = why
    return entry
