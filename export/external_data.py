"""Large graphs keep their weights in a data file beside them, and graphs share identical weights.

Why: ONNX Runtime maps external data from the file and lets it go once a kernel has pre-packed the
weight, whereas a graph with its weights inside the protobuf is held as parsed bytes and as tensors
during load. Measured on the SmolVLM-256M vision tower (int8, 98 MB, 2 threads): peak RSS after
load 254 -> 167 MB, resident after runs 302 -> 221 MB, same speed.

Sharing: a tied model's int4 embedding table (GatherBlockQuantized) and its int4 lm_head
(MatMulNBits) hold the same bytes: the same 4-bit rule and block 32 (export/quant_embed.py), and
MatMulNBits' [vocab, K/32, 16] weight is the table's [vocab, K/2] packing. So embed_tokens points
at the decoder's copy instead of shipping its own (17 MB at SmolVLM's shape). Only byte-identical
tensors are shared, found by comparing the bytes, so nothing changes numerically.

    decoder.onnx + decoder.onnx.data       embed_tokens.onnx -> (its table) in decoder.onnx.data
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import onnx
from onnx import external_data_helper as ext

# a graph whose initializers take at least this many bytes gets a data file
EXTERNAL_MIN_BYTES = 16 << 20
# tensors smaller than this stay inside the protobuf (shapes, scalars, norms' weights)
TENSOR_MIN_BYTES = 1024


def data_file(graph_file: str) -> str:
    return graph_file + ".data"


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def refer(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make `tensor` read its bytes from `location` (a data file beside the graph) instead of
    holding them."""
    ext.set_external_data(tensor, location=location, offset=offset, length=length)  # needs raw_data
    tensor.ClearField("raw_data")


def save_graph(model: onnx.ModelProto, path: Path, shared: dict[str, tuple[str, int, int]] | None = None,
               min_bytes: int = EXTERNAL_MIN_BYTES) -> tuple[list[str], dict[str, tuple[str, int, int]]]:
    """Write `model` (weights in memory) to `path`. Each initializer whose bytes are in `shared`
    ({sha256: (data file, offset, length)} of graphs already written) points there instead of being
    stored again; then, if what is left takes at least min_bytes, the large tensors go to PATH.data.
    Returns (the data files the graph now reads, for the manifest; the same kind of map for the
    tensors it wrote to its own data file)."""
    path = Path(path)
    shared = shared or {}
    digests = {t.name: hashlib.sha256(t.raw_data).hexdigest()
               for t in model.graph.initializer if len(t.raw_data) >= TENSOR_MIN_BYTES}
    used = set()
    for t in model.graph.initializer:
        hit = shared.get(digests.get(t.name))
        if hit:
            refer(t, *hit)
            used.add(hit[0])
    own = data_file(path.name)
    if os.path.exists(path.parent / own):
        os.remove(path.parent / own)  # onnx appends to an existing data file
    large = [t for t in model.graph.initializer
             if not ext.uses_external_data(t) and len(t.raw_data) >= TENSOR_MIN_BYTES]
    stored = {}
    if large and initializer_bytes(model) >= min_bytes:
        for t in large:
            ext.set_external_data(t, location=own)
        ext.write_external_data_tensors(model, str(path.parent))  # sets each tensor's offset and length
        for t in large:
            info = ext.ExternalDataInfo(t)
            stored.setdefault(digests[t.name], (own, info.offset, info.length))
        used.add(own)
    onnx.save(model, str(path))
    if own in used:  # onnx creates data files owner-only; give it the graph's permissions
        shutil.copymode(path, path.parent / own)
    return sorted(used), stored


def externalize_bundle(work: Path, graphs, min_bytes: int = EXTERNAL_MIN_BYTES, always=()) -> list[str]:
    """Rewrite each GRAPH.onnx in `work` (in the given order: the decoder before embed_tokens, so
    the table finds the lm_head's bytes) with external data and sharing. Returns every data file.
    always: graphs that get a data file whatever their size (a vision graph cut into parts: the
    parts then point at its weights instead of holding copies). A tensor that is already external
    (the packed vision graph's int8 weights) stays where it is."""
    files, shared = set(), {}
    for name in graphs:
        path = work / f"{name}.onnx"
        used, stored = save_graph(onnx.load(str(path), load_external_data=False), path, shared,
                                  0 if name in always else min_bytes)
        files.update(used)
        for digest, where in stored.items():
            shared.setdefault(digest, where)
    return sorted(files)
