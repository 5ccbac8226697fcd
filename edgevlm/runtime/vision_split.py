"""Run a vision graph that the export cut at its attention nodes (export/vision_split.py): the
parts on ONNX Runtime, the attention between them on our bf16 kernel (attention_kernel.py).

It answers the InferenceSession calls the pipeline makes (run, get_inputs, get_outputs), so it
stands in for the whole-graph session. Each intermediate is dropped once no later stage reads it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgevlm.errors import BundleError
from edgevlm.runtime import attention_kernel, mlp_kernel

# attend(q, k, v, num_heads, scale, q_free) -> out, all float32 [B, N, H*hd]; q_free: no later
# stage reads q, so the result may overwrite it
Attend = Callable[[np.ndarray, np.ndarray, np.ndarray, int, float, bool], np.ndarray]
# mlp(stage index, x, residual, residual_free) -> residual + MLP(x), float32 [B, N, W]; for a stage
# that starts from its layer's attention, x is the attention's output (see mlp_kernel.PreNorm)
MLP = Callable[[int, np.ndarray, np.ndarray, bool], np.ndarray]


def stage_inputs(stage: dict) -> tuple[str, ...]:
    """An attention's q, k, v; an MLP's x and residual, or, where it starts from its layer's
    attention, that attention's q, k, v and the residual."""
    if stage["kind"] == "attention":
        return stage["q"], stage["k"], stage["v"]
    if "attention" in stage:
        return stage["attention"]["q"], stage["attention"]["k"], stage["attention"]["v"], stage["residual"]
    return stage["x"], stage["residual"]


def missing_kernels(spec) -> list[str]:
    """Why the kernels a split entry needs cannot run here (empty where they all can): the bf16
    attention always, the int8 layer kernel where there are MLP stages. `spec` may be unchecked."""
    stages = spec.get("stages") if isinstance(spec, dict) else None
    needed = [attention_kernel]
    if isinstance(stages, list) and any(isinstance(s, dict) and s.get("kind") == "mlp" for s in stages):
        needed.append(mlp_kernel)
    return [why for ok, why in (kernel.available() for kernel in needed) if not ok]


def _good_attention(node) -> bool:
    return (isinstance(node, dict) and all(isinstance(node.get(x), str) for x in ("q", "k", "v", "out"))
            and type(node.get("num_heads")) is int and 0 < node["num_heads"] <= 4096
            and type(node.get("scale")) in (int, float) and 0 < node["scale"] < 1e6)


def _good_offsets(entry, keys) -> bool:
    return isinstance(entry, dict) and all(type(entry.get(key)) is int and 0 <= entry[key] < 1 << 40 for key in keys)


def _good_stage(node) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("kind") == "attention":
        return _good_attention(node)
    if node.get("kind") != "mlp":
        return False
    linears = ("fc1", "fc2", "o_proj") if "attention" in node else ("fc1", "fc2")
    if not (all(isinstance(node.get(x), str) for x in ("residual", "out"))
            and all(_good_offsets(node.get(fc), ("bias_offset", "n")) and isinstance(node[fc].get("weight"), str)
                    for fc in linears)):
        return False
    if "attention" not in node:
        return isinstance(node.get("x"), str)
    norm = node.get("norm")
    return (_good_attention(node["attention"]) and _good_offsets(norm, ("gamma_offset", "beta_offset", "n"))
            and type(norm.get("epsilon")) in (int, float) and 0 <= norm["epsilon"] < 1)


def check_split_spec(spec, graph_file: str, listed) -> tuple[list[str], list[dict]]:
    """The manifest's graphs.vision_encoder.split entry, checked; returns (part files, stages).
    A bundle from before MLP stages lists its attention nodes under "attention" (no "kind")."""
    bad = BundleError(f"{graph_file}: its split entry in edgevlm.json is malformed")
    if not isinstance(spec, dict) or not isinstance(spec.get("parts"), list):
        raise bad
    stages = spec.get("stages")
    if stages is None and isinstance(spec.get("attention"), list):
        stages = [dict(node, kind="attention") if isinstance(node, dict) else node for node in spec["attention"]]
    parts = spec["parts"]
    if not isinstance(stages, list) or len(parts) != len(stages) + 1 or not stages:
        raise bad
    for name in parts + ([spec["weights"]] if "weights" in spec else []):
        if not isinstance(name, str) or name not in listed or "/" in name or "\\" in name:
            raise BundleError(f"{graph_file}: split part {str(name)[:60]!r} is not a checksummed file of the bundle")
    if not all(_good_stage(node) for node in stages):
        raise bad
    if any(node["kind"] == "mlp" for node in stages) and "weights" not in spec:
        raise bad
    return parts, stages


class SplitVision:
    """sessions: one InferenceSession per part, in order; stages: the manifest's stages (attention
    nodes and MLPs), attend / mlp: see Attend, MLP. A part input that no stage produces shows up in
    get_inputs(), where check_graphs refuses it against the manifest's config."""

    def __init__(self, sessions: list, stages: list[dict], attend: Attend, mlp: MLP | None = None):
        self.parts, self.stages, self.attend, self.mlp = sessions, stages, attend, mlp
        if mlp is None and any(s["kind"] == "mlp" for s in stages):
            raise BundleError("split vision graph: it has MLP stages and no MLP kernel was given")
        self._shapes: list[dict] = [{} for _ in sessions]
        self._inputs = [[i.name for i in s.get_inputs()] for s in sessions]
        self._outputs = [[o.name for o in s.get_outputs()] for s in sessions]
        # _keep_after[i]: what a later part, a later stage or the caller reads (stage i's own
        # inputs excluded: its first may then be overwritten); _keep[i]: that plus stage i's
        # inputs, everything that must survive part i
        final = {o.name for o in sessions[-1].get_outputs()}
        self._keep_after = [{x for ins in self._inputs[i + 1:] for x in ins} | final
                            | {n for node in stages[i + 1:] for n in stage_inputs(node)}
                            for i in range(len(stages))]
        self._keep = [after | set(stage_inputs(node)) for after, node in zip(self._keep_after, stages)]
        produced = {x for outs in self._outputs for x in outs} | {n["out"] for n in stages}
        missing = [x for ins in self._inputs for x in ins if x not in produced]
        self._graph_inputs = list({i.name: i for s in sessions for i in s.get_inputs() if i.name in missing}.values())
        self.mlp_stages = sum(s["kind"] == "mlp" for s in stages)
        for i, node in enumerate(stages):  # q, k, v (or x) from the part right before; a residual from before
            ins = stage_inputs(node)
            direct = ins if node["kind"] == "attention" else ins[:-1]
            earlier = {x for outs in self._outputs[:i + 1] for x in outs} | {n["out"] for n in stages[:i]}
            if not all(x in self._outputs[i] for x in direct) or ins[-1] not in earlier:
                raise BundleError(f"split vision graph: stage {i} reads a tensor part {i} does not produce")

    def get_inputs(self):
        return self._graph_inputs

    def get_outputs(self):
        return self.parts[-1].get_outputs()

    def run(self, output_names, feed: dict) -> list[np.ndarray]:
        values = dict(feed)
        for i, session in enumerate(self.parts):
            values.update(zip(self._outputs[i], self._run_part(i, values)))
            if i == len(self.stages):
                break
            node = self.stages[i]
            values = {k: v for k, v in values.items() if k in self._keep[i]}
            ins = [values[x] for x in stage_inputs(node)]
            free = stage_inputs(node)[-1 if node["kind"] == "mlp" else 0] not in self._keep_after[i]
            if node["kind"] == "attention":
                values[node["out"]] = self.attend(*ins, node["num_heads"], node["scale"], free)
                continue
            if "attention" in node:  # the layer's attention, then the MLP kernel from its output
                a = node["attention"]
                ins = [self.attend(*ins[:3], a["num_heads"], a["scale"], a["q"] not in self._keep_after[i]), ins[3]]
            values[node["out"]] = self.mlp(i, *ins, free)
        final = {o.name for o in self.get_outputs()}
        names = output_names or [o.name for o in self.get_outputs()]
        return [values[n] for n in names if n in final]

    def _run_part(self, i: int, values: dict) -> list[np.ndarray]:
        """Part i's outputs in numpy buffers of our own. session.run's arrays would keep their
        ONNX Runtime arena blocks while later parts run, and the arena would grow around them:
        peak RSS 402 -> 388 MB at SmolVLM's shape. The output shapes are learned on the first run
        at each input shape (one per tile count)."""
        from edgevlm.runtime.sessions import run_bound  # (sessions imports this module)

        session, names = self.parts[i], self._outputs[i]
        feed = {x: np.ascontiguousarray(values[x]) for x in self._inputs[i]}
        key = tuple(feed[x].shape for x in self._inputs[i])
        shapes = self._shapes[i].get(key)
        if shapes is None:
            outs = [np.array(o) for o in session.run(names, feed)]  # copies: the arena's blocks go back
            self._shapes[i][key] = [(o.shape, o.dtype) for o in outs]
            return outs
        binding = session.io_binding()
        for x, a in feed.items():
            binding.bind_cpu_input(x, a)
        outs = [np.empty(shape, dtype) for shape, dtype in shapes]
        for name, o in zip(names, outs):
            binding.bind_output(name, "cpu", 0, o.dtype, list(o.shape), o.ctypes.data)
        run_bound(session, binding)
        return outs


