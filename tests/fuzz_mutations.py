"""Byte and JSON mutators shared by the bundle and checkpoint fuzzers, and the file
bookkeeping (write a mutant, put the pristine file back) both fuzzers use.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

ODD_VALUES = [None, True, False, 0, -1, 1, 2, 3, 7, 2**31, 2**63, -(2**63), 1e308, float("nan"), 0.5, "", "x",
              "../../outside/secret.bin", [], [1, 2], {}, {"a": 1}]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_bits(data: bytes, rng: random.Random, max_flips: int = 8) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, max_flips)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def mutate_json(value, rng: random.Random):
    """Replace, delete or retype one randomly chosen node of a JSON document."""
    containers = []

    def walk(node):
        if isinstance(node, dict):
            for key in node:
                containers.append((node, key))
                walk(node[key])
        elif isinstance(node, list):
            for i in range(len(node)):
                containers.append((node, i))
                walk(node[i])

    walk(value)
    if not containers:
        return rng.choice(ODD_VALUES)
    parent, key = rng.choice(containers)
    action = rng.random()
    if action < 0.25 and isinstance(parent, dict):
        del parent[key]
    elif action < 0.4 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = parent[key] * rng.choice([-1, 0, 2, 1000, 10**9]) + rng.choice([0, 1, -1])
    else:
        parent[key] = rng.choice(ODD_VALUES)
    return value


def message_spans(data: bytes) -> list[tuple[int, int]]:
    """(position, byte count) of the length varint of every length-delimited field reachable
    through the ONNX schema (TensorProto fields included): the protobuf size fields to rewrite."""
    from edgevlm.onnx_safety import _SCHEMA, _varint

    spans, stack = [], [("ModelProto", 0, len(data))]
    while stack:
        kind, pos, end = stack.pop()
        while pos < end:
            key, pos = _varint(data, pos, end)
            number, wire = key >> 3, key & 7
            if wire == 0:
                pos = _varint(data, pos, end)[1]
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                size, body = _varint(data, pos, end)
                spans.append((pos, body - pos))
                child = _SCHEMA.get(kind, {}).get(number)
                if child is not None:
                    stack.append((child, body, body + size))
                pos = body + size
    return spans


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rewrite_size_field(data: bytes, rng: random.Random, spans) -> bytes:
    pos, width = rng.choice(spans)
    old = _read_varint(data, pos)
    new = rng.choice([0, 1, old - 1, old + 1, old * 2, old + 1000, 2**31 - 1, 2**32 + 5, 2**62, len(data)])
    return data[:pos] + encode_varint(max(new, 0)) + data[pos + width:]


def _read_varint(data, pos):
    from edgevlm.onnx_safety import _varint

    return _varint(data, pos, len(data))[0]


# --------------------------------------------------------------------------- bundles


class FileFuzzer:
    """A directory of pristine files (self.root, self.pristine) that mutants overwrite; restore()
    puts every touched file back and removes files the mutant added."""

    root: Path
    pristine: dict[str, bytes]
    dirty: set[str]

    def put(self, name: str, data: bytes) -> None:
        (self.root / name).write_bytes(data)
        self.dirty.add(name)

    def restore(self) -> None:
        for name in self.dirty:
            if name in self.pristine:
                (self.root / name).write_bytes(self.pristine[name])
            else:
                (self.root / name).unlink()
        self.dirty = set()
