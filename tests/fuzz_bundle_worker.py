"""Fuzz worker (run in a subprocess by tests/test_fuzz_bundle.py): mutate a valid bundle or
checkpoint many times and try to load (and caption with) each mutant.

    python -m tests.fuzz_bundle_worker bundle SRC WORK --cases N --seed S --image IMG
    python -m tests.fuzz_bundle_worker checkpoint SRC WORK --cases N --seed S
    ... --only K    replays case K of that run (the mutants before it are made, not tried)

Every case must end in success or an EdgeVLMError with a one-line message; anything else is
recorded as UNTYPED. Before each case its number goes to WORK/progress (so the parent can name a
case that killed the process). The last stdout line is a JSON summary. WORK/outside/ holds files
that the mutants point at and that must never be opened; the parent checks that with strace.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import sys
import traceback
from collections import Counter
from pathlib import Path

from edgevlm.errors import EdgeVLMError
from tests.fuzz_mutations import (FileFuzzer, sha256_of, flip_bits, message_spans, mutate_json, rewrite_size_field,
                                  truncate)

BEGIN_MARKER = "/nonexistent-edgevlm-fuzz-begin"  # an open() of these shows up in strace's log
END_MARKER = "/nonexistent-edgevlm-fuzz-end"


def _movable_weights(model) -> list:
    """The float weights inside the protobuf that onnx_external_data may move out: weights, as
    exporters externalize them (ORT cannot constant-fold shape inputs kept outside)."""
    import onnx

    return [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data) >= 64]


class BundleFuzzer(FileFuzzer):
    GRAPHS = ("vision_encoder.onnx", "embed_tokens.onnx", "decoder.onnx")

    def __init__(self, src: Path, work: Path, image: str):
        self.root = work / "bundle"
        shutil.copytree(src, self.root)
        outside = work / "outside"
        outside.mkdir()
        (outside / "secret.bin").write_bytes(os.urandom(1 << 16))
        (self.root / "escape.bin").symlink_to(outside / "secret.bin")  # a link out, never listed
        self.secret = outside / "secret.bin"
        self.image = image
        self.pristine = {p.name: p.read_bytes() for p in self.root.iterdir() if p.is_file() and not p.is_symlink()}
        self.manifest = json.loads(self.pristine["edgevlm.json"])
        self.dirty: set[str] = set()
        self.spans = {g: message_spans(self.pristine[g]) for g in self.GRAPHS}
        self.external_targets = [g for g in self.GRAPHS if self._can_move_a_weight(g)]
        self.kinds = {
            "checksum_mismatch": (1, self.checksum_mismatch),
            "onnx_bit_flips": (4, self.onnx_bit_flips),
            "onnx_truncation": (2, self.onnx_truncation),
            "onnx_size_fields": (4, self.onnx_size_fields),
            "onnx_external_data": (5, self.onnx_external_data),
            "manifest_values": (5, self.manifest_values),
            "generation_values": (3, self.generation_values),
            "manifest_bytes": (2, self.manifest_bytes),
            "tokenizer": (2, self.tokenizer),
        }

    def write(self, name: str, data: bytes, manifest: dict | None = None, listed: bool = True) -> None:
        """Write a mutated file and (as an attacker controlling the whole bundle would) its checksum."""
        self.put(name, data)
        manifest = json.loads(json.dumps(manifest or self.manifest))
        if listed:
            manifest["files"][name] = sha256_of(self.root / name)
        self.put("edgevlm.json", json.dumps(manifest).encode())

    def _can_move_a_weight(self, graph_file: str) -> bool:
        """A graph onnx_external_data can rewrite: one with a float weight inside the protobuf, and
        not a packed graph (edgevlm.runtime.packed_weights), which may read only its expanded file."""
        import onnx

        if self.manifest["graphs"][graph_file.split(".")[0]].get("packed_weights"):
            return False
        return bool(_movable_weights(onnx.ModelProto.FromString(self.pristine[graph_file])))

    def checksum_mismatch(self, rng):
        name = rng.choice(sorted(self.manifest["files"]))
        self.put(name, flip_bits(self.pristine[name], rng, 1))
        return "reject"

    def onnx_bit_flips(self, rng):
        name = rng.choice(self.GRAPHS)
        self.write(name, flip_bits(self.pristine[name], rng))

    def onnx_truncation(self, rng):
        name = rng.choice(self.GRAPHS)
        self.write(name, truncate(self.pristine[name], rng))

    def onnx_size_fields(self, rng):
        name = rng.choice(self.GRAPHS)
        self.write(name, rewrite_size_field(self.pristine[name], rng, self.spans[name]))

    def onnx_external_data(self, rng):
        """Move one initializer's bytes to a side file and point at it, rightly or wrongly."""
        import onnx

        name = rng.choice(self.external_targets)
        model = onnx.ModelProto.FromString(self.pristine[name])
        tensor = rng.choice(_movable_weights(model))
        raw = tensor.raw_data
        data = os.urandom(rng.randrange(64)) + raw
        offset, length = len(data) - len(raw), len(raw)
        self.put("weights.bin", data + os.urandom(rng.randrange(64)))
        location, listed, safe = "weights.bin", True, True
        variant = rng.choice(["valid", "valid", "dotdot", "absolute", "symlink", "missing", "unlisted",
                              "offset_past_end", "length_past_end", "bad_number", "ort_memory_tag", "nul_byte",
                              "no_location", "dir", "deep_dotdot"])
        file_size = (self.root / "weights.bin").stat().st_size
        if variant == "dotdot":
            location, safe = "../outside/secret.bin", False
        elif variant == "deep_dotdot":
            location, safe = "sub/../../outside/secret.bin", False
        elif variant == "absolute":
            location, safe = str(self.secret), False
        elif variant == "symlink":
            location, safe = "escape.bin", False
        elif variant == "missing":
            location, safe = "nope.bin", False
        elif variant == "unlisted":
            listed, safe = False, False
        elif variant == "offset_past_end":
            offset, safe = file_size - length + rng.randint(1, 1 << 40), False
        elif variant == "length_past_end":
            length, safe = file_size - offset + rng.randint(1, 1 << 40), False
        elif variant == "bad_number":
            offset, safe = rng.choice(["-1", "1e3", " 5", "0x10", "99999999999999999999999"]), False
        elif variant == "ort_memory_tag":
            location, safe = "*/_ORT_MEM_ADDR_/*", False
        elif variant == "nul_byte":
            location, safe = "weights.bin\0../outside/secret.bin", False
        elif variant == "dir":
            location, safe = ".", False
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entries = {"location": location, "offset": str(offset), "length": str(length)}
        if variant == "no_location":
            del entries["location"]
            safe = False
        for key, value in entries.items():
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        manifest = json.loads(json.dumps(self.manifest))
        if listed:
            manifest["files"]["weights.bin"] = sha256_of(self.root / "weights.bin")
        self.write(name, model.SerializeToString(), manifest)
        return "external_ok" if safe else "reject_before_ort"

    def manifest_values(self, rng):
        manifest = mutate_json(json.loads(json.dumps(self.manifest)), rng)
        self.put("edgevlm.json", json.dumps(manifest).encode())

    def generation_values(self, rng):
        """Generation defaults pushed to their edges (and past them): these drive the sampler and beams."""
        manifest = json.loads(json.dumps(self.manifest))
        edges = {"num_beams": [1, 2, 16, 17], "do_sample": [True, False], "max_new_tokens": [1, 3, 56, 57, 1024],
                 "temperature": [1e-6, 1e-3, 1e6, 1e7, 0], "top_k": [0, 1, 50, 10**9], "top_p": [1e-9, 0.5, 1.0],
                 "repetition_penalty": [1e-6, 0.5, 2.0, 1e6, 1e300], "length_penalty": [-10, -1, 0, 10, 11, 1e300],
                 "seed": [0, 2**63, 2**70], "eos_token_ids": [[], [0], [10**9]]}
        for key in rng.sample(sorted(edges), rng.randint(1, 4)):
            manifest["generation"][key] = rng.choice(edges[key])
        self.put("edgevlm.json", json.dumps(manifest).encode())

    def manifest_bytes(self, rng):
        data = self.pristine["edgevlm.json"]
        self.put("edgevlm.json", flip_bits(data, rng) if rng.random() < 0.6 else truncate(data, rng))

    def tokenizer(self, rng):
        data = self.pristine["tokenizer.json"]
        choice = rng.random()
        if choice < 0.4:
            data = json.dumps(mutate_json(json.loads(data), rng)).encode()
        elif choice < 0.7:
            data = flip_bits(data, rng)
        else:
            data = truncate(data, rng)
        self.write("tokenizer.json", data)

    def attempt(self):
        from edgevlm.bundle import open_bundle
        from edgevlm.runtime.pipeline import VLM
        from edgevlm.runtime.sessions import RuntimeOptions

        stage = "open_bundle"
        bundle = open_bundle(self.root)
        stage = "load"
        vlm = VLM(bundle, RuntimeOptions(threads=1))
        stage = "caption"
        vlm.run(self.image, max_new_tokens=3)
        return stage


# --------------------------------------------------------------------------- checkpoints


class CheckpointFuzzer(FileFuzzer):
    def __init__(self, src: Path, work: Path):
        self.root = work / "checkpoint"
        shutil.copytree(src, self.root)
        self.pristine = {p.name: p.read_bytes() for p in self.root.iterdir()}
        st = self.pristine["model.safetensors"]
        (size,) = struct.unpack("<Q", st[:8])
        self.header, self.body = json.loads(st[8:8 + size]), st[8 + size:]
        self.dirty: set[str] = set()
        self.kinds = {
            "header_size_field": (3, self.header_size_field),
            "header_offsets": (4, self.header_offsets),
            "header_values": (3, self.header_values),
            "tensor_bit_flips": (1, self.tensor_bit_flips),
            "truncation": (2, self.truncation),
            "state_json": (2, self.state_json),
            "export_json": (1, self.export_json),
        }

    def _write_st(self, header: dict, size: int | None = None, body: bytes | None = None) -> None:
        raw = json.dumps(header).encode()
        size = len(raw) if size is None else size
        self.put("model.safetensors", struct.pack("<Q", size) + raw + (self.body if body is None else body))

    def header_size_field(self, rng):
        raw_len = len(json.dumps(self.header).encode())
        size = rng.choice([0, 1, 7, raw_len - 1, raw_len + 1, raw_len + 8, len(self.body) + raw_len, 2**31, 2**63,
                           2**64 - 1, 100_000_001])
        self._write_st(self.header, size=size)
        return "reject"

    def header_offsets(self, rng):
        header = json.loads(json.dumps(self.header))
        name = rng.choice([k for k in header if k != "__metadata__"])
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice([
            [end, begin], [begin, end + 4], [begin - 4, end - 4], [begin + 4, end + 4], [0, end - begin],
            [begin, begin], [-1, end], [begin, 2**64 + 1], [len(self.body), len(self.body) + end - begin],
            [begin, end, 0], "0-4", None])
        self._write_st(header)

    def header_values(self, rng):
        header = json.loads(json.dumps(self.header))
        name = rng.choice([k for k in header if k != "__metadata__"])
        action = rng.randrange(6)
        if action == 0:
            header[name]["dtype"] = rng.choice(["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4", "", 7])
        elif action == 1:
            shape = header[name]["shape"]
            header[name]["shape"] = rng.choice([shape[::-1], shape + [1], shape[:-1], [0], [-1], [2**40, 2**40], "x"])
        elif action == 2:
            del header[name]
        elif action == 3:
            header[name + ".extra"] = dict(header[name])
        elif action == 4:
            header = mutate_json(header, rng)
        else:
            header["__metadata__"] = rng.choice([{"format": "pt"}, {"a": 1}, [1], "x", None])
        self._write_st(header)

    def tensor_bit_flips(self, rng):
        st = self.pristine["model.safetensors"]
        self.put("model.safetensors", flip_bits(st, rng))

    def truncation(self, rng):
        name = rng.choice(["model.safetensors", "model.safetensors", "state.json", "tokenizer.json"])
        self.put(name, truncate(self.pristine[name], rng))

    def state_json(self, rng):
        self.put("state.json", json.dumps(mutate_json(json.loads(self.pristine["state.json"]), rng)).encode())

    def export_json(self, rng):
        self.put("export.json", json.dumps(mutate_json(json.loads(self.pristine["export.json"]), rng)).encode())

    def attempt(self):
        from edgevlm.models.registry import load_checkpoint

        load_checkpoint(self.root)
        return "load"


# --------------------------------------------------------------------------- driver


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", choices=["bundle", "checkpoint"])
    parser.add_argument("src", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", default="")
    parser.add_argument("--only", type=int, help="replay one case: make every mutant, try only this one")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    if args.target == "bundle":
        fuzzer = BundleFuzzer(args.src, args.work, args.image)
    else:
        fuzzer = CheckpointFuzzer(args.src, args.work)
    names = list(fuzzer.kinds)
    weights = [fuzzer.kinds[n][0] for n in names]
    outcomes, untyped, broken_promises = Counter(), [], []
    progress = open(args.work / "progress", "w")
    work_text = str(args.work.resolve())
    try:
        open(BEGIN_MARKER)
    except OSError:
        pass
    for case in range(args.cases):
        kind = rng.choices(names, weights)[0]
        progress.write(f"{case} {kind}\n")
        progress.flush()
        expect = fuzzer.kinds[kind][1](rng)
        if args.only is not None and case != args.only:
            fuzzer.restore()
            continue
        message = ""
        try:
            stage = fuzzer.attempt()
            outcome = "ok"
        except EdgeVLMError as exc:
            stage, outcome = "", "typed_error"
            message = str(exc)
            if "\n" in message or work_text in message:
                untyped.append({"case": case, "kind": kind, "error": f"message not one clean line: {message!r}"})
            if expect == "reject_before_ort" and not _raised_in(exc, "onnx_safety", "bundle"):
                broken_promises.append({"case": case, "kind": kind, "error": message})
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            stage, outcome = "", "UNTYPED"
            tb = traceback.extract_tb(exc.__traceback__)
            untyped.append({"case": case, "kind": kind, "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                            "where": f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}"})
        if expect in ("reject", "reject_before_ort") and outcome == "ok":
            broken_promises.append({"case": case, "kind": kind, "error": "a mutant that must be refused loaded"})
        if expect == "external_ok" and outcome != "ok":
            broken_promises.append({"case": case, "kind": kind,
                                    "error": f"valid external data failed: {outcome} {message}"})
        outcomes[f"{kind}:{outcome}{':' + stage if stage else ''}"] += 1
        fuzzer.restore()
    try:
        open(END_MARKER)
    except OSError:
        pass
    print(json.dumps({"cases": args.cases, "outcomes": dict(sorted(outcomes.items())), "untyped": untyped[:20],
                      "untyped_count": len(untyped), "broken_promises": broken_promises[:20],
                      "broken_promises_count": len(broken_promises)}))


def _raised_in(exc: BaseException, *modules: str) -> bool:
    """Was exc raised by code in one of these edgevlm modules (i.e. before ONNX Runtime)?"""
    last = traceback.extract_tb(exc.__traceback__)[-1].filename
    return any(last.endswith(f"{m}.py") for m in modules)


if __name__ == "__main__":
    sys.exit(main())
