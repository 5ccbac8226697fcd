"""The int8 layer kernel's weights for a split vision graph, built at load from the bundle's 4-bit
store (the same int8 values the graph's MatMulInteger would read, bit for bit) and its MLP data
file (GRAPH.mlp.data: float32 biases and norm weights end to end; each stage gives the offsets and
lengths)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgevlm.errors import BundleError
from edgevlm.runtime.mlp_kernel import (PackedLinear, PreNorm, aligned_int8, pack_linear, packed_size, panel,
                                        round_up)
from edgevlm.runtime.packed_weights import open_store, tensor_int8


def mlp_layers(where: Path, packed: dict | None, spec: dict, stages: list[dict], threads: int = 1) -> dict[int, tuple]:
    """{stage index: (fc1, fc2, PreNorm or None)} of every MLP stage; BundleError where a stage names
    a weight the store lacks, a bias outside the file, or sizes that do not chain."""
    mlps = {i: s for i, s in enumerate(stages) if s["kind"] == "mlp"}
    if not mlps:
        return {}
    if packed is None:
        raise BundleError("split vision graph: MLP stages need the graph's 4-bit weight store (packed_weights)")
    data, tensors = open_store(Path(where) / packed["file"], packed)
    by_name = {t["name"]: t for t in tensors}
    biases = Path(where) / spec["weights"]
    try:
        raw = np.fromfile(biases, dtype=np.uint8)
    except OSError as exc:
        raise BundleError(f"cannot read {biases.name} ({exc.strerror or type(exc).__name__})") from None
    jobs = [(i, fc, panel() if fc == "fc2" else 4) for i in mlps for fc in ("fc1", "fc2", "o_proj") if fc in mlps[i]]
    for i, fc, _ in jobs:
        if mlps[i][fc]["weight"] not in by_name:
            raise BundleError(f"split vision graph: MLP weight {mlps[i][fc]['weight'][:60]!r} is not in the 4-bit store")
    # All packed weights in one block (SmolVLM: 64 MB): an allocation that large is always its own
    # mapping, given back whole when the model goes; weight by weight they came from the heap,
    # where a second load in the same process (edgevlm bench) left them fragmented: peak RSS +30 MB.
    sizes = [packed_size(by_name[mlps[i][fc]["weight"]]["k"], by_name[mlps[i][fc]["weight"]]["n"], m)
             for i, fc, m in jobs]
    starts = np.cumsum([0] + [round_up(s, 64) for s in sizes])  # each slot 64-byte aligned
    block = aligned_int8(int(starts[-1]))
    slots = [block[int(a):int(a) + s] for a, s in zip(starts, sizes)]
    # numpy lets go of the GIL in its loops: the layers unpack side by side (SmolVLM: 150 -> 90 ms)
    with ThreadPoolExecutor(max(1, min(threads, 8))) as pool:
        built = list(pool.map(lambda js: _linear(data, by_name, raw, mlps[js[0][0]][js[0][1]], js[0][2], biases.name,
                                                 js[1]), zip(jobs, slots)))
    linears = {(i, fc): layer for (i, fc, _), layer in zip(jobs, built)}
    layers = {}
    for i, stage in mlps.items():
        fc1, fc2 = linears[i, "fc1"], linears[i, "fc2"]
        pre = _pre_norm(raw, stage, linears.get((i, "o_proj")), biases.name) if "norm" in stage else None
        if fc2.k != fc1.n or (pre is not None and not pre.o_proj.n == fc2.n == fc1.k == pre.gamma.size):
            raise BundleError(f"split vision graph: the linears of MLP stage {i} do not chain "
                              f"(fc1 {fc1.k} -> {fc1.n}, fc2 {fc2.k} -> {fc2.n})")
        layers[i] = (fc1, fc2, pre)
    return layers


def _floats(raw: np.ndarray, start: int, n: int, what: str, bias_file: str) -> np.ndarray:
    if start % 4 or start + 4 * n > raw.size:
        raise BundleError(f"split vision graph: the {what} lies outside {bias_file} or does not match its weight")
    return raw[start:start + 4 * n].view(np.float32).copy()


def _pre_norm(raw: np.ndarray, stage: dict, o_proj: PackedLinear, bias_file: str) -> PreNorm:
    norm = stage["norm"]
    return PreNorm(o_proj, _floats(raw, norm["gamma_offset"], norm["n"], "norm's gamma", bias_file),
                   _floats(raw, norm["beta_offset"], norm["n"], "norm's beta", bias_file), float(norm["epsilon"]))


def _linear(data, by_name: dict, raw: np.ndarray, fc: dict, k_multiple: int, bias_file: str,
            into: np.ndarray) -> PackedLinear:
    t = by_name[fc["weight"]]
    if fc["n"] != t["n"]:
        raise BundleError(f"split vision graph: the bias of {fc['weight'][:60]!r} lies outside {bias_file} "
                          "or does not match its weight")
    bias = _floats(raw, fc["bias_offset"], fc["n"], f"bias of {fc['weight'][:60]!r}", bias_file)
    q8, s8 = tensor_int8(data, t)
    return pack_linear(q8, s8, bias, k_multiple, into)
