"""The int8 MLP kernel's weights for a split vision graph, built at load from the bundle's 4-bit
store (the same int8 values the graph's MatMulInteger would read, bit for bit) and its MLP bias
file (GRAPH.mlp.data: float32 biases end to end; each stage gives its offset and length)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgevlm.errors import BundleError
from edgevlm.runtime.mlp_kernel import PackedLinear, pack_linear, panel
from edgevlm.runtime.packed_weights import open_store, tensor_int8


def mlp_layers(where: Path, packed: dict | None, spec: dict, stages: list[dict], threads: int = 1) -> dict[int, tuple]:
    """{stage index: (fc1, fc2) PackedLinear} of every MLP stage; BundleError where a stage names
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
    jobs = [(i, fc, 4 if fc == "fc1" else panel()) for i in mlps for fc in ("fc1", "fc2")]
    # numpy lets go of the GIL in its loops: the layers unpack side by side (SmolVLM: 150 -> 90 ms)
    with ThreadPoolExecutor(max(1, min(threads, 8))) as pool:
        built = list(pool.map(lambda job: _linear(data, by_name, raw, mlps[job[0]][job[1]], job[2], biases.name), jobs))
    layers = {}
    for (i, _, _), fc1, fc2 in zip(jobs[::2], built[::2], built[1::2]):
        if fc2.k != fc1.n:
            raise BundleError(f"split vision graph: MLP stage {i} has fc1 of {fc1.n} outputs and fc2 of {fc2.k} inputs")
        layers[i] = (fc1, fc2)
    return layers


def _linear(data, by_name: dict, raw: np.ndarray, fc: dict, k_multiple: int, bias_file: str) -> PackedLinear:
    t = by_name.get(fc["weight"])
    if t is None:
        raise BundleError(f"split vision graph: MLP weight {fc['weight'][:60]!r} is not in the 4-bit store")
    start, n = fc["bias_offset"], fc["n"]
    if n != t["n"] or start % 4 or start + 4 * n > raw.size:
        raise BundleError(f"split vision graph: the bias of {fc['weight'][:60]!r} lies outside {bias_file} "
                          "or does not match its weight")
    q8, s8 = tensor_int8(data, t)
    return pack_linear(q8, s8, raw[start:start + 4 * n].view(np.float32).copy(), k_multiple)
