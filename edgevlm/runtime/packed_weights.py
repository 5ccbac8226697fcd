"""Weights shipped at 4 bit and run as int8: a bundle graph's packed weights, unpacked at load.

Why: the vision tower is compute-bound, and ONNX Runtime's int8 GEMM (DynamicQuantizeMatMul, VNNI)
runs a SmolVLM tile in ~0.28 s where its 4-bit MatMulNBits kernel takes 0.48-0.63 s. Its weights
are half the int4 bundle, though (86 M of them: 95 MB at int8). So the bundle stores them in the
4-bit block format (the decoder's: block 32 along K, symmetric, scale -m/8, zero point 8, but the
scales rounded to float16 before the 4-bit values are chosen: 0.5625 byte per weight) and the
runtime makes the int8 weights from them:

    w' = (q4 - 8) * scale[block]            [N, K], the 4-bit weight (float32)
    s8 = max_k |w'[n, k]| / 127             [N], per output channel (1 where a row is all zero)
    q8 = clip(rint(w' / s8), -127, 127)     int8, stored [K, N] as MatMulInteger's B

Re-quantizing w' per channel adds at most half an int8 step (|w'| max / 254) to the 4-bit error.
The export computes the graph's int8 weights and scales with this same function, so what the
runtime builds is bit-identical to the graph the export validated (tests/test_packed_weights.py).

The graph names the int8 weights as external data in a file the bundle does not ship
(`expands_to`); at load that file is written to a private temporary directory beside a copy of
the graph, ONNX Runtime maps it, and the directory is removed once the session exists. Measured at
the SmolVLM shape: peak RSS 172 MB for the vision session this way against 292 MB when the same
bytes are handed over in memory (ONNX Runtime copies them).

Manifest, per packed graph: graphs.NAME.packed_weights =
    {"file": store, "expands_to": data file name, "block": 32,
     "tensors": [{"name", "k", "n", "q4_offset", "scales_offset", "offset"}, ...]}
with q4 [N, K/2] uint8 (column 2j in the low nibble) and scales [N, ceil(K/32)] float16 in `file`,
and q8 [K, N] at `offset` in `expands_to`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgevlm.errors import BundleError

BLOCK = 32
KEYS = ("name", "k", "n", "q4_offset", "scales_offset", "offset")


def unpack_nibbles(q4: np.ndarray, k: int) -> np.ndarray:
    """[N, ceil(K/2)] uint8 -> [N, K] uint8 values 0..15 (column 2j from the low nibble)."""
    out = np.empty((q4.shape[0], q4.shape[1] * 2), np.uint8)
    out[:, 0::2] = q4 & 0x0F
    out[:, 1::2] = q4 >> 4
    return out[:, :k]


ROWS = 128  # output channels unpacked at a time: a chunk's float32 copy stays in cache (~4x faster)


def int8_from_int4(q4: np.ndarray, scales: np.ndarray, k: int, block: int = BLOCK):
    """(q4 [N, K/2] uint8, scales [N, ceil(K/block)] float32) -> (q8 [K, N] int8, s8 [N] float32).
    Each output channel depends on its own row only, so rows are done ROWS at a time."""
    n = scales.shape[0]
    q8, s8 = np.empty((k, n), np.int8), np.empty(n, np.float32)
    for r in range(0, n, ROWS):
        rows_q8, s8[r:r + ROWS] = _int8_rows(q4[r:r + ROWS], scales[r:r + ROWS], k, block)
        q8[:, r:r + ROWS] = rows_q8.T
    return q8, s8


def _int8_rows(q4: np.ndarray, scales: np.ndarray, k: int, block: int):
    """int8_from_int4 for a few rows: -> (q8 [rows, K] int8, s8 [rows] float32)."""
    n, blocks = scales.shape
    q = unpack_nibbles(q4, k).astype(np.float32)
    q -= np.float32(8)
    if blocks * block != k:  # a last partial block: pad [rows, K] -> [rows, blocks * block] with zeros
        q = np.pad(q, ((0, 0), (0, blocks * block - k)))
    # non-finite scales (a store damaged past its checksum, loaded with verify off) give garbage
    # weights, not numpy warnings on stderr
    with np.errstate(invalid="ignore", over="ignore"):
        w = q.reshape(n, blocks, block)  # [rows, K/block, block]
        w *= scales.astype(np.float32)[:, :, None]
        w = w.reshape(n, -1)[:, :k]  # [rows, K] float32: the 4-bit weights
        s8 = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)  # [rows]
        s8[s8 == 0] = np.float32(1)
        w /= s8[:, None]
        np.rint(w, out=w)
        np.clip(w, -127, 127, out=w)
        return w.astype(np.int8), s8


MAX_K = 1 << 16  # inputs per weight; real towers stay far below (SmolVLM's largest is 12288)


def _entries(spec: dict, store_size: int) -> list[dict]:
    """The manifest's tensor list, checked: integers in range, each tensor's 4-bit values and
    scales inside the store, in order and not overlapping any other's (so the expanded file is at
    most twice the store), and the int8 tensors laid end to end (no gap, no overlap)."""
    tensors, block = spec.get("tensors"), spec.get("block")
    if block != BLOCK or not isinstance(tensors, list) or not tensors:
        raise BundleError(f"packed weights of {spec.get('file')!r} have an unsupported layout (block {block!r})")
    offset = store_end = 0
    for t in tensors:
        if not isinstance(t, dict) or set(t) != set(KEYS) or not isinstance(t["name"], str) or any(
                type(t[key]) is not int or t[key] < 0 for key in KEYS[1:]) or not (
                1 <= t["k"] <= MAX_K and t["n"] >= 1):
            raise BundleError(f"packed weights of {spec.get('file')!r}: malformed entry {str(t)[:80]}")
        k, n = t["k"], t["n"]
        q4_end = t["q4_offset"] + n * ((k + 1) // 2)
        scales_end = t["scales_offset"] + 2 * n * -(-k // block)
        if (t["offset"] != offset or t["q4_offset"] < store_end or t["scales_offset"] < q4_end
                or scales_end > store_size or t["scales_offset"] % 2):
            raise BundleError(f"packed weights of {spec.get('file')!r}: tensor {t['name'][:60]!r} lies outside "
                              "the file, overlaps another or is out of order")
        offset, store_end = offset + k * n, scales_end
    return tensors


def tensor_int8(data: np.ndarray, t: dict) -> tuple[np.ndarray, np.ndarray]:
    """One checked tensor entry's (q8 [K, N] int8, s8 [N] float32) from the store's bytes."""
    k, n = t["k"], t["n"]
    q4 = np.asarray(data[t["q4_offset"]:t["q4_offset"] + n * ((k + 1) // 2)]).reshape(n, -1)
    raw = np.asarray(data[t["scales_offset"]:t["scales_offset"] + 2 * n * -(-k // BLOCK)])
    return int8_from_int4(q4, raw.view(np.float16).reshape(n, -1), k)


def open_store(store: Path, spec: dict) -> tuple[np.ndarray, list[dict]]:
    """(the store's bytes, mapped; its checked tensor entries)."""
    try:
        size = store.stat().st_size
        data = np.memmap(store, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {store.name} ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    return data, _entries(spec, size)


def expand(store: Path, spec: dict, out: Path) -> int:
    """Write the int8 file of `spec` (a manifest packed_weights entry) from `store` to `out`.
    One tensor at a time, ROWS output channels at a time. Returns its size."""
    data, tensors = open_store(store, spec)
    with open(out, "wb") as f:
        for t in tensors:
            q8, _ = tensor_int8(data, t)
            f.write(memoryview(q8).cast("B"))
        written = f.tell()
    del data
    return written


@contextlib.contextmanager
def unpacked_graph(bundle_dir: Path, graph_file: str, spec: dict, also=()):
    """Yield the path of a copy of `graph_file` whose external int8 file has been expanded beside
    it, in a private temporary directory that is removed afterwards (the session, once created,
    keeps what it needs; on Linux a mapped file may be unlinked, elsewhere a directory that cannot
    be removed yet is left to the system's temp cleaning). also: other bundle files copied beside
    it (the parts of a split graph and the data file they share)."""
    store = Path(bundle_dir) / spec["file"]
    target = spec.get("expands_to")
    if (not isinstance(target, str) or os.path.basename(target) != target
            or target in ("", ".", "..", graph_file)):
        raise BundleError(f"packed weights of {graph_file}: bad expanded file name {str(target)[:60]!r}")
    try:
        work = Path(tempfile.mkdtemp(prefix="edgevlm-unpack-"))
    except OSError as exc:
        raise BundleError(f"cannot unpack {graph_file}'s 4-bit weights: no temporary directory "
                          f"({exc.strerror or type(exc).__name__}); "
                          "set TMPDIR to a writable directory") from None
    try:
        try:
            for name in (graph_file, *also):
                shutil.copyfile(Path(bundle_dir) / name, work / name)
            expand(store, spec, work / target)
        except OSError as exc:
            raise BundleError(f"cannot unpack {graph_file}'s 4-bit weights into {work} "
                              f"({exc.strerror or type(exc).__name__}); "
                              "set TMPDIR to a directory with space") from None
        yield work / graph_file
    finally:
        shutil.rmtree(work, ignore_errors=True)
