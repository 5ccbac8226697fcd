"""Run a vision graph that the export cut at its attention nodes (export/vision_split.py): the
parts on ONNX Runtime, the attention between them on our bf16 kernel (attention_kernel.py).

It answers the InferenceSession calls the pipeline makes (run, get_inputs, get_outputs), so it
stands in for the whole-graph session. Each intermediate is dropped once no later stage reads it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgevlm.errors import BundleError

Attend = Callable[[np.ndarray, np.ndarray, np.ndarray, int, float], np.ndarray]


def check_split_spec(spec, graph_file: str, listed) -> tuple[list[str], list[dict]]:
    """The manifest's graphs.vision_encoder.split entry, checked; returns (part files, attention nodes)."""
    bad = BundleError(f"{graph_file}: its split entry in edgevlm.json is malformed")
    if not isinstance(spec, dict) or not isinstance(spec.get("parts"), list) or not isinstance(spec.get("attention"), list):
        raise bad
    parts, attention = spec["parts"], spec["attention"]
    if len(parts) != len(attention) + 1 or not attention:
        raise bad
    for name in parts:
        if not isinstance(name, str) or name not in listed or "/" in name or "\\" in name:
            raise BundleError(f"{graph_file}: split part {str(name)[:60]!r} is not a checksummed file of the bundle")
    for node in attention:
        if (not isinstance(node, dict) or not all(isinstance(node.get(x), str) for x in ("q", "k", "v", "out"))
                or type(node.get("num_heads")) is not int or not 0 < node["num_heads"] <= 4096
                or type(node.get("scale")) not in (int, float) or not 0 < node["scale"] < 1e6):
            raise bad
    return parts, attention


class SplitVision:
    """sessions: one InferenceSession per part, in order; attention: the manifest's nodes;
    attend(q, k, v, num_heads, scale) -> out, all [B, N, H*hd]."""

    def __init__(self, sessions: list, attention: list[dict], attend: Attend):
        self.parts, self.attention, self.attend = sessions, attention, attend
        self._inputs = [[i.name for i in s.get_inputs()] for s in sessions]
        self._outputs = [[o.name for o in s.get_outputs()] for s in sessions]
        # keep[i]: the names some stage after part i (its attention, later parts) still reads
        self._keep = []
        for i in range(len(sessions)):
            later = {x for ins in self._inputs[i + 1:] for x in ins}
            later.update(n for node in attention[i:] for n in (node["q"], node["k"], node["v"]))
            self._keep.append(later)
        first_outputs = {x for outs in self._outputs for x in outs} | {n["out"] for n in attention}
        missing = [x for ins in self._inputs for x in ins if x not in first_outputs]
        self._graph_inputs = list({i.name: i for s in sessions for i in s.get_inputs() if i.name in missing}.values())
        for i, node in enumerate(attention):  # every attention input comes from the part before it
            if not all(node[x] in self._outputs[i] for x in ("q", "k", "v")):
                raise BundleError(f"split vision graph: attention {i} reads a tensor part {i} does not produce")

    def get_inputs(self):
        return self._graph_inputs

    def get_outputs(self):
        return self.parts[-1].get_outputs()

    def run(self, output_names, feed: dict) -> list[np.ndarray]:
        values = dict(feed)
        for i, session in enumerate(self.parts):
            outs = session.run(self._outputs[i], {x: values[x] for x in self._inputs[i]})
            values.update(zip(self._outputs[i], outs))
            if i == len(self.attention):
                break
            node = self.attention[i]
            values[node["out"]] = self.attend(values[node["q"]], values[node["k"]], values[node["v"]],
                                              node["num_heads"], node["scale"])
            values = {k: v for k, v in values.items() if k in self._keep[i] or k == node["out"]}
        final = {o.name for o in self.get_outputs()}
        names = output_names or [o.name for o in self.get_outputs()]
        return [values[n] for n in names if n in final]
