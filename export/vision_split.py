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
from onnx import TensorProto, helper, numpy_helper

from edgevlm.errors import EdgeVLMError
from edgevlm.export.vision_mlp import find_mlps
from edgevlm.runtime.vision_split import stage_inputs

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


def split_graph(path: Path, width: int, packed: set[str] = frozenset()) -> dict:
    """Write the parts of `path` beside it and return the manifest entry
    {"parts": [file, ...], "stages": [stage, ...]}: part i runs, then stage i, then part i+1.
    A stage is an attention node {"kind": "attention", q, k, v, out, num_heads, scale} or, where
    its weights are among `packed` (4-bit packed names), an MLP (export/vision_mlp.py) whose
    biases go to GRAPH.mlp.data (then listed as "weights"). width: the attention's hidden size."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # weights stay where they are
    graph = model.graph
    heads = {i: _attention_spec(n, width) for i, n in enumerate(graph.node) if (n.domain, n.op_type) == MHA}
    if not heads or any(width % a["num_heads"] or width // a["num_heads"] not in HEAD_DIMS for a in heads.values()):
        raise EdgeVLMError(f"{path.name}: no MultiHeadAttention with heads of {' or '.join(map(str, HEAD_DIMS))} "
                           "to cut at")
    mlps = find_mlps(graph, set(packed))
    for first, _, stage in mlps:  # an MLP stage that starts from its layer's attention (node `first`) runs it too
        if "attention" in stage:
            stage["attention"] = heads[first]
    inside = {first for first, _, _ in mlps}
    # (first node, last node, stage), in graph order
    cuts = sorted([(i, i, dict(kind="attention", **a)) for i, a in heads.items() if i not in inside] + mlps,
                  key=lambda c: c[0])
    stages = [c[2] for c in cuts]
    bounds = [(-1, -1)] + [(a, b) for a, b, _ in cuts] + [(len(graph.node), len(graph.node))]
    segments = [list(graph.node[prev[1] + 1:nxt[0]]) for prev, nxt in zip(bounds, bounds[1:])]
    types = _types(model)
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input}
    graph_outputs = {v.name: v for v in graph.output}
    # what each later stage reads: the parts after it, the stages after it, the graph outputs
    later_needs: list[set[str]] = []
    for s in range(len(segments)):
        need = set(graph_outputs)
        for seg in segments[s + 1:]:
            need.update(x for n in seg for x in n.input)
        for spec in stages[s:]:
            need.update(stage_inputs(spec))
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
    entry = {"parts": files, "stages": stages}
    if any(st["kind"] == "mlp" for st in stages):
        entry["weights"] = _write_biases(path, inits, stages)
    return entry


def _write_biases(path: Path, inits: dict, stages: list[dict]) -> str:
    """Write the MLP stages' biases and norm weights (float32, end to end) to GRAPH.mlp.data and
    put each one's offset and length in its stage in place of the initializer's name. Returns the
    file name."""
    import numpy as np

    name = path.name.replace(".onnx", ".mlp.data")
    offset = 0
    with open(path.parent / name, "wb") as f:
        def put(tensor_name: str) -> tuple[int, int]:
            nonlocal offset
            values = numpy_helper.to_array(inits[tensor_name], base_dir=str(path.parent)).astype(np.float32)
            f.write(values.tobytes())
            offset += values.nbytes
            return offset - values.nbytes, int(values.size)

        for stage in stages:
            for fc in (stage.get("o_proj"), stage.get("fc1"), stage.get("fc2")):
                if fc is not None:
                    fc["bias_offset"], fc["n"] = put(fc.pop("bias"))
            if "norm" in stage:
                norm = stage["norm"]
                norm["gamma_offset"], norm["n"] = put(norm.pop("gamma"))
                norm["beta_offset"], _ = put(norm.pop("beta"))
    return name


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


def ort_mlps(graph: Path, packed: set[str], stages: list[dict], threads: int = 0):
    """mlp(i, x, residual, free) on ONNX Runtime: each MLP stage's own nodes from the whole graph,
    run as a graph of their own (the cut check's reference: the whole graph's arithmetic)."""
    model = onnx.load(str(graph), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    sessions = {}
    for first, last, stage in find_mlps(model.graph, packed):
        x_in = stage["attention"]["out"] if "attention" in stage else stage["x"]
        first += "attention" in stage  # the attention itself runs on ORT's MultiHeadAttention
        nodes = list(model.graph.node[first:last + 1])
        used = dict.fromkeys(x for n in nodes for x in n.input if x in inits)
        tensors = [numpy_helper.from_array(numpy_helper.to_array(inits[x], base_dir=str(graph.parent)), x) for x in used]
        io = [helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in (x_in, stage["residual"], stage["out"])]
        mini = helper.make_model(helper.make_graph(nodes, "mlp", io[:2], io[2:], tensors),
                                 opset_imports=model.opset_import, ir_version=model.ir_version)
        sessions[stage["out"]] = (io[0].name, _session(mini.SerializeToString(), threads))

    def mlp(i, x, res, free):
        stage = stages[i]
        name, session = sessions[stage["out"]]
        return session.run(None, {name: x, stage["residual"]: res})[0]

    return mlp


def check_split(graph: Path, spec: dict, tile_size: int, threads: int = 0, packed: dict | None = None) -> dict:
    """Run the parts against the whole graph on one random tile: with ONNX Runtime's attention
    and MLP nodes between them they must agree (the cut itself changes nothing); with our kernels,
    where this CPU has them, the error is measured. packed: the graph's packed_weights entry (the
    MLP kernel's weights). Returns the manifest's validation entry."""
    import numpy as np

    from edgevlm.runtime import attention_kernel, mlp_kernel
    from edgevlm.runtime.mlp_weights import mlp_layers
    from edgevlm.runtime.vision_split import SplitVision, missing_kernels

    def session(p):
        return _session(str(p), threads)

    stages = spec["stages"]
    # the weights the stages use: finding the MLPs again with these gives the same stages
    names = {s[fc]["weight"] for s in stages for fc in ("fc1", "fc2", "o_proj") if fc in s}
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, tile_size, tile_size)).astype(np.float32)
    (whole,) = session(graph).run(None, {"pixel_values": pixels})
    parts = [session(graph.parent / p) for p in spec["parts"]]
    (cut,) = SplitVision(parts, stages, ort_attention(threads), ort_mlps(graph, names, stages, threads)).run(
        None, {"pixel_values": pixels})

    def rel_rms(x):
        return float(np.sqrt(((x - whole) ** 2).mean() / max(float((whole ** 2).mean()), 1e-30)))

    # Not bit for bit: ONNX Runtime fuses a little differently inside the parts than across the
    # whole graph, and in a dynamically quantized graph a last-bit difference can move an
    # activation's int8 rounding. So the bound is relative, and far below quantization's own
    # error (rel. RMS 0.03-0.2 against fp32).
    entry = {"parts": len(parts), "mlp_stages": sum(s["kind"] == "mlp" for s in stages),
             "cut_rel_rms": rel_rms(cut), "cut_max_abs_diff": float(np.abs(cut - whole).max()),
             "tolerance": CUT_TOLERANCE}
    if not entry["cut_rel_rms"] <= CUT_TOLERANCE:
        raise EdgeVLMError(f"{graph.name} cut at its attention and MLP nodes disagrees with the whole graph: "
                           f"relative RMS {entry['cut_rel_rms']:.2e} > {CUT_TOLERANCE:g}")
    why = missing_kernels(spec)
    if not why:
        layers = mlp_layers(graph.parent, packed, spec, stages)

        def attend(q, k, v, h, s, free):
            return attention_kernel.attention_bf16(q, k, v, h, s, threads or 1)

        def mlp(i, x, res, free):
            fc1, fc2, pre = layers[i]
            return mlp_kernel.mlp_int8(x, res, fc1, fc2, threads or 1, pre=pre)

        (fast,) = SplitVision(parts, stages, attend, mlp).run(None, {"pixel_values": pixels})
        entry["kernels_rel_rms"] = rel_rms(fast)
    else:
        entry["kernels_rel_rms"] = None
        entry["kernels_unchecked"] = "; ".join(why)
    return entry
