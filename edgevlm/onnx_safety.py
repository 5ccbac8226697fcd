"""Check an ONNX file's external-data references before ONNX Runtime opens it.

An ONNX tensor may keep its bytes in another file: `external_data` entries give a `location`
(path relative to the model), an `offset` and a `length`. A hostile model can point them at
`../../secret`, `/etc/passwd`, a symlink out of the bundle, or past the end of a file
(CVE-2022-25882, CVE-2024-27318). `check_external_data` refuses all of these with a one-line
BundleError; recent ONNX Runtime versions check some of it too, this is the layer we own.

The runtime does not depend on the `onnx` package, so this module reads the protobuf wire
format itself. It only descends into the fields through which a TensorProto can be reached
(`_SCHEMA`; tests/test_fuzz_bundle.py checks it against onnx's own descriptors) and skips
everything else by its length, so a multi-GB model costs a walk over its node list, not a copy.
Wire data that protobuf itself would reject (truncated fields, field number 0, varints over
10 bytes, unbalanced groups, nesting deeper than protobuf's limit) is refused here as a
malformed file.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from edgevlm.errors import BundleError

# message -> {field number: message type held there}, only the fields that can lead to a TensorProto
# (onnx.proto3: ModelProto.graph=7, training_info=20, functions=25; GraphProto.node=1,
# initializer=5, sparse_initializer=15; NodeProto.attribute=5; FunctionProto.node=7,
# attribute_proto=11; AttributeProto.t=5, g=6, tensors=10, graphs=11, sparse_tensor=22,
# sparse_tensors=23; SparseTensorProto.values=1, indices=2; TrainingInfoProto.initialization=1,
# algorithm=2).
_SCHEMA = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "AttributeProto": {5: "TensorProto", 6: "GraphProto", 10: "TensorProto", 11: "GraphProto",
                       22: "SparseTensorProto", 23: "SparseTensorProto"},
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_LOCATION_EXTERNAL = 1
_ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"  # ORT reads such "external data" from a raw memory address
_MAX_DEPTH = 100  # protobuf's default recursion limit


class _Malformed(Exception):
    def __init__(self, pos: int, what: str):
        super().__init__(f"{what} at byte {pos}")


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _Malformed(start, "truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed(start, "varint longer than 10 bytes")


def _skip_group(buf, pos: int, end: int, number: int, depth: int) -> int:
    """Position after the end-group tag that closes group `number` (its start tag is just read)."""
    if depth > _MAX_DEPTH:
        raise _Malformed(pos, "groups nested too deeply")
    while True:
        key, pos = _varint(buf, pos, end)
        inner, wire = key >> 3, key & 7
        if inner == 0:
            raise _Malformed(pos, "field number 0")
        if wire == 4:
            if inner != number:
                raise _Malformed(pos, "mismatched end-group")
            return pos
        if wire == 0:
            pos = _varint(buf, pos, end)[1]
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            pos += size
        elif wire == 3:
            pos = _skip_group(buf, pos, end, inner, depth + 1)
        else:
            raise _Malformed(pos, f"unexpected wire type {wire}")
        if pos > end:
            raise _Malformed(end, "group runs past the end of its message")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value) of one message in buf[start:end].
    value: an int for varints, a (start, end) span for length-delimited fields, None otherwise."""
    pos = start
    while pos < end:
        key = buf[pos]
        if key < 0x80:  # fast path: one-byte key (field numbers up to 15)
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(pos, "field number 0")
        value = None
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size = buf[pos] if pos < end else 0x80
            if size < 0x80:
                pos += 1
            else:
                size, pos = _varint(buf, pos, end)
            value = (pos, pos + size)
            pos += size
        elif wire == 3:  # a (deprecated) group: ONNX defines none, protobuf keeps it as an unknown field
            pos = _skip_group(buf, pos, end, number, 1)
        else:  # 4: an end-group without its start; 6, 7: invalid
            raise _Malformed(pos, f"unexpected wire type {wire}")
        if pos > end:
            raise _Malformed(end, "field runs past the end of its message")
        yield number, wire, value


def _tensor_refs(buf, start: int, end: int) -> tuple[str, bool, list[tuple[bytes, bytes]]]:
    """(name, data_location says EXTERNAL, external_data entries) of one TensorProto."""
    name, external, entries = "", False, []
    for number, wire, value in _fields(buf, start, end):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _LOCATION_EXTERNAL  # last one wins, as in protobuf
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = val = b""
            for n, w, v in _fields(buf, value[0], value[1]):
                if w == 2 and n in (1, 2):
                    text = bytes(buf[v[0]:v[1]])
                    key, val = (text, val) if n == 1 else (key, text)
            entries.append((key, val))
    return name, external, entries


def external_references(buf) -> list[tuple[str, bool, list[tuple[bytes, bytes]]]]:
    """Every TensorProto in a serialized ModelProto that has external-data entries or is marked
    EXTERNAL: [(tensor name, marked EXTERNAL, [(key, value), ...])]. Raises _Malformed."""
    found = []
    stack = [("ModelProto", 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _Malformed(start, "messages nested too deeply")
        if kind == "TensorProto":
            name, external, entries = _tensor_refs(buf, start, end)
            if external or entries:
                found.append((name, external, entries))
            continue
        children = _SCHEMA[kind]
        for number, wire, value in _fields(buf, start, end):
            child = children.get(number)
            if child is not None and wire == 2:  # another wire type on a known field: an unknown field
                stack.append((child, value[0], value[1], depth + 1))
    return found


def check_external_data(model_path, root, allowed: set[str] | None = None) -> int:
    """Refuse (BundleError) an ONNX file whose external data is not a regular file inside `root`
    (and, when `allowed` is given, one of those names relative to root), or whose offset/length
    run past that file's end. Returns the number of external tensors found."""
    model_path, root = Path(model_path), Path(root).resolve()
    label = model_path.name
    try:
        with open(model_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise BundleError(f"cannot load {label}: not a valid ONNX file (it is empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                refs = external_references(buf)
    except _Malformed as exc:
        raise BundleError(f"cannot load {label}: not a valid ONNX file (malformed protobuf: {exc})") from None
    except OSError as exc:
        raise BundleError(f"cannot load {label}: {exc.strerror or type(exc).__name__}") from None
    sizes: dict[Path, int] = {}
    for name, external, entries in refs:
        _check_tensor(label, model_path.parent, root, allowed, name, external, entries, sizes)
    return len(refs)


def _check_tensor(label, base: Path, root: Path, allowed, name: str, external: bool, entries, sizes) -> None:
    where = f"{label}: tensor {name[:60]!r}"
    values: dict[bytes, list[bytes]] = {}
    for key, value in entries:
        values.setdefault(key, []).append(value)
    locations = values.get(b"location", [])
    if not locations:
        raise BundleError(f"{where} is marked as external data but names no location")
    numbers = {}
    for key in (b"offset", b"length"):
        for raw in values.get(key, []):
            if not raw.isdigit() or len(raw) > 19:
                raise BundleError(f"{where} has an invalid external-data {key.decode()} {raw[:20]!r}")
            numbers[key] = max(numbers.get(key, 0), int(raw))
    for raw in locations:
        path = _resolve(where, base, root, allowed, raw)
        if path not in sizes:
            sizes[path] = path.stat().st_size
        offset, length = numbers.get(b"offset", 0), numbers.get(b"length", 0)
        if offset + length > sizes[path]:
            raise BundleError(f"{where} reads bytes {offset}..{offset + length} of {path.name}, "
                              f"which has only {sizes[path]} bytes")


def _resolve(where: str, base: Path, root: Path, allowed, raw: bytes) -> Path:
    """The real path of one external-data location, if it is a regular file inside root."""
    try:
        location = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{where} has an external-data location that is not UTF-8") from None
    shown = repr(location[:80])
    parts = location.replace("\\", "/").split("/")
    if location == _ORT_MEMORY_TAG:
        raise BundleError(f"{where} uses ONNX Runtime's in-memory address tag as its location; refusing to load it")
    if location.startswith(("/", "\\")) or ":" in location:
        raise BundleError(f"{where} keeps its data at an absolute path; refusing to load it")
    if not location or "\0" in location or ".." in parts:
        raise BundleError(f"{where} keeps its data at {shown}, outside the bundle directory; refusing to load it")
    path = base / location
    try:
        resolved = path.resolve()
        escapes = path.is_symlink() or root not in resolved.parents
        regular = not escapes and resolved.is_file()
    except OSError as exc:  # a name too long, a loop of links, ...
        raise BundleError(f"{where} has an unusable external-data location {shown} ({exc.strerror})") from None
    if escapes:
        raise BundleError(f"{where} keeps its data at {shown}, which leads outside the bundle directory")
    if not regular:
        raise BundleError(f"{where} keeps its data in {shown}, which is missing or not a regular file")
    if allowed is not None and resolved.relative_to(root).as_posix() not in allowed:
        raise BundleError(f"{where} keeps its data in {shown}, which edgevlm.json does not list "
                          f"(so its checksum is not verified)")
    return resolved


__all__ = ["check_external_data", "external_references"]
