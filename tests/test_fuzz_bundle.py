"""Hostile bundles and checkpoints: ONNX external-data attacks are refused before ONNX Runtime
sees the model, and mutated bundles / checkpoints (bit flips, truncation, protobuf size fields,
safetensors header size and offsets, edited JSON) only ever end in success or a one-line typed
error, in a subprocess that must not die, reading nothing outside the bundle directory.

CI runs BUNDLE_CASES + CHECKPOINT_CASES mutants; `pytest -m long tests/test_fuzz_bundle.py`
runs LONG_BUNDLE_CASES + LONG_CHECKPOINT_CASES more.
"""

import json
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevlm.errors import BundleError
from edgevlm.onnx_safety import _SCHEMA, _Malformed, check_external_data, external_references
from tests.fuzz_bundle_worker import BEGIN_MARKER, END_MARKER, flip_bits, message_spans, rewrite_size_field

BUNDLE_CASES, CHECKPOINT_CASES = 1000, 400
LONG_BUNDLE_CASES, LONG_CHECKPOINT_CASES = 20_000, 5_000
DIFFERENTIAL_CASES = 1500
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "edgevlm" / "assets" / "samples" / "scene_00.png"


def _long_run(request) -> None:
    if "long" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long fuzz run: select it with -m long")


# --------------------------------------------------------------------------- the schema and the walker


def _tensor_paths() -> dict:
    """From onnx's own descriptors: message -> {field number: message type} for every field
    through which a TensorProto can be reached (what onnx_safety._SCHEMA must list)."""
    from onnx import onnx_pb

    messages = {}
    todo = [onnx_pb.ModelProto.DESCRIPTOR]
    while todo:
        desc = todo.pop()
        if desc.name in messages:
            continue
        messages[desc.name] = {f.number: f.message_type for f in desc.fields if f.message_type is not None}
        todo.extend(messages[desc.name].values())
    reaches = {"TensorProto"}
    changed = True
    while changed:
        changed = False
        for name, children in messages.items():
            if name not in reaches and any(c.name in reaches for c in children.values()):
                reaches.add(name)
                changed = True
    return {name: {n: c.name for n, c in children.items() if c.name in reaches}
            for name, children in messages.items() if name in reaches and name != "TensorProto"}


def test_schema_covers_every_path_to_a_tensor():
    assert _SCHEMA == _tensor_paths()


def _external(name, location, **entries):
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **entries}.items():
        e = t.external_data.add()
        e.key, e.value = key, str(value)
    return t


def hiding_places_model() -> onnx.ModelProto:
    """A model with an external tensor in every place a TensorProto can sit (not runnable)."""
    sub = helper.make_graph([], "sub", [], [], [_external("in_subgraph", "sub.bin")])
    sparse = helper.make_sparse_tensor(_external("sparse_values", "sv.bin"),
                                       numpy_helper.from_array(np.array([0], dtype=np.int64), "idx"), [4])
    attr_sparse = helper.make_sparse_tensor(_external("attr_sparse", "as.bin"),
                                            numpy_helper.from_array(np.array([1], dtype=np.int64), "idx2"), [4])
    nodes = [
        helper.make_node("Constant", [], ["c"], value=_external("constant_value", "const.bin")),
        helper.make_node("If", ["cond"], ["y"], then_branch=sub, else_branch=helper.make_graph([], "e", [], [])),
        helper.make_node("Custom", [], ["z"], domain="x", tensors=[_external("attr_list", "list.bin")],
                         graphs=[helper.make_graph([], "g2", [], [], [_external("in_graph_list", "gl.bin")])],
                         sparse_tensor=attr_sparse),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_external("initializer", "init.bin", offset=0, length=16)], sparse_initializer=[sparse])
    func = helper.make_function("f", "fn", [], ["o"], [helper.make_node(
        "Constant", [], ["o"], value=_external("in_function", "fn.bin"))], [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("f", 1)],
                              functions=[func])
    model.functions[0].attribute_proto.append(helper.make_attribute("default", _external("fn_default", "fd.bin")))
    training = model.training_info.add()
    training.initialization.CopyFrom(helper.make_graph([], "init", [], [], [_external("training_init", "ti.bin")]))
    return model


def _oracle_entries(model: onnx.ModelProto) -> Counter:
    """Every external_data (key, value) in a parsed model, found by a generic walk over all fields."""
    from google.protobuf.message import Message

    found = Counter()

    def walk(msg):
        if isinstance(msg, TensorProto):
            raw = [(e.key, e.value) for e in msg.external_data]  # str, or bytes when not UTF-8 (proto2)
            found.update(tuple(v if isinstance(v, bytes) else v.encode() for v in kv) for kv in raw)
        for desc, value in msg.ListFields():
            if desc.message_type is None:
                continue
            for item in ([value] if isinstance(value, Message) else value):  # one message or a repeated field
                walk(item)

    walk(model)
    return found


def _walker_entries(data: bytes) -> Counter:
    return Counter(entry for _, _, entries in external_references(data) for entry in entries)


def test_walker_finds_every_hiding_place():
    data = hiding_places_model().SerializeToString()
    names = sorted(name for name, _, _ in external_references(data))
    assert names == sorted(["initializer", "sparse_values", "constant_value", "in_subgraph", "attr_list",
                            "in_graph_list", "attr_sparse", "in_function", "fn_default", "training_init"])
    assert _walker_entries(data) == _oracle_entries(onnx.ModelProto.FromString(data))


def test_walker_agrees_with_protobuf_on_mutants():
    """Differential: on every mutant protobuf parses, the walker finds the same external-data
    entries; the walker never refuses bytes that protobuf accepts."""
    rng = random.Random(11)
    data = hiding_places_model().SerializeToString()
    spans = message_spans(data)
    parsed = 0
    for _ in range(DIFFERENTIAL_CASES):
        choice = rng.random()
        mutant = (flip_bits(data, rng, 2) if choice < 0.6 else rewrite_size_field(data, rng, spans) if choice < 0.8
                  else data[:rng.randrange(len(data))])
        try:
            model = onnx.ModelProto.FromString(mutant)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: nothing to compare
            continue
        parsed += 1
        try:
            entries = _walker_entries(mutant)
        except _Malformed as exc:
            pytest.fail(f"walker refused bytes protobuf accepts: {exc}")
        assert entries == _oracle_entries(model)
    assert parsed >= DIFFERENTIAL_CASES // 10
    print(f"\nwalker vs protobuf: {DIFFERENTIAL_CASES} mutants, {parsed} parsed by protobuf, all agree")


def test_real_graphs_have_no_external_data(tiny_bundle):
    for name in ("vision_encoder", "embed_tokens", "decoder"):
        assert check_external_data(tiny_bundle[0] / f"{name}.onnx", tiny_bundle[0]) == 0


# --------------------------------------------------------------------------- attacks, one by one


def _bundle_with_external(tiny_bundle, tmp_path, location, offset=0, length=None, listed=True, data_file="w.bin"):
    """A copy of the tiny bundle whose decoder keeps one weight in external data."""
    from edgevlm.bundle import sha256_file

    path = tmp_path / "b"
    shutil.copytree(tiny_bundle[0], path)
    model = onnx.load(str(path / "decoder.onnx"))
    tensor = next(t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.raw_data) >= 64)
    raw = tensor.raw_data
    (path / data_file).write_bytes(b"\0" * offset + raw)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    length = len(raw) if length is None else length
    for key, value in {"location": location, "offset": offset, "length": length}.items():
        e = tensor.external_data.add()
        e.key, e.value = key, str(value)
    onnx.save(model, str(path / "decoder.onnx"))
    manifest = json.loads((path / "edgevlm.json").read_text())
    manifest["files"]["decoder.onnx"] = sha256_file(path / "decoder.onnx")
    if listed:
        manifest["files"][data_file] = sha256_file(path / data_file)
    (path / "edgevlm.json").write_text(json.dumps(manifest))
    return path


def test_valid_external_data_loads_and_captions_identically(tiny_bundle, tmp_path):
    import edgevlm

    path = _bundle_with_external(tiny_bundle, tmp_path, "w.bin", offset=24)
    assert edgevlm.load(path, threads=1).run(SAMPLE).token_ids == \
        edgevlm.load(tiny_bundle[0], threads=1).run(SAMPLE).token_ids


@pytest.mark.parametrize("location,kwargs,message", [
    ("../outside.bin", {}, "outside the bundle directory"),
    ("sub/../../outside.bin", {}, "outside the bundle directory"),
    ("ABSOLUTE", {}, "an absolute path"),
    ("link.bin", {}, "leads outside the bundle directory"),
    ("w.bin", {"listed": False}, "does not list"),
    ("nope.bin", {}, "missing or not a regular file"),
    ("w.bin", {"offset": 8, "length": 10**6}, "which has only"),
    ("w.bin", {"length": -1}, "invalid external-data length"),
    ("*/_ORT_MEM_ADDR_/*", {}, "in-memory address tag"),
])
def test_external_data_attacks_are_refused_before_onnx_runtime(tiny_bundle, tmp_path, monkeypatch, location,
                                                               kwargs, message):
    import onnxruntime

    import edgevlm

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * (1 << 16))
    if location == "ABSOLUTE":
        location = str(outside)
    path = _bundle_with_external(tiny_bundle, tmp_path, location, **kwargs)
    (path / "link.bin").symlink_to(outside)

    given, real = [], onnxruntime.InferenceSession

    def recording(model, *args, **kwargs):
        given.append(Path(model).name)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    with pytest.raises(BundleError, match=re.escape(message)) as info:
        edgevlm.load(path)
    assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value)
    assert "decoder.onnx" not in given  # refused before ONNX Runtime was given the hostile graph


# --------------------------------------------------------------------------- mutation fuzzing in a subprocess


# --seccomp-bpf: only the traced calls stop the process (plain strace slows every syscall ~10x)
STRACE = ["strace", "-f", "-qq", "--seccomp-bpf", "-s", "4096", "-e", "trace=open,openat,openat2"]


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run(STRACE + ["-o", "/dev/null", "true"], capture_output=True).returncode == 0


def _opened_paths(trace: Path, cwd: Path) -> list[Path]:
    """Paths the traced process opened between the worker's BEGIN and END markers."""
    pattern = re.compile(r'open(?:at2?)?\((?:AT_FDCWD|\d+), "((?:[^"\\]|\\.)*)"|open\("((?:[^"\\]|\\.)*)"')
    paths, inside = [], False
    for line in trace.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if not match:
            continue
        name = match.group(1) or match.group(2)
        if name == BEGIN_MARKER:
            inside = True
        elif name == END_MARKER:
            inside = False
        elif inside:
            paths.append(cwd / name)
    return paths


def test_the_strace_check_sees_an_escape(tmp_path):
    """The check below must be able to fail: a traced process that opens an outside file is caught."""
    if not _strace_works():
        pytest.skip("strace is not available here")
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.bin"
    secret.write_bytes(b"x")
    (tmp_path / "link.bin").symlink_to(secret)
    code = ("import sys\n"
            "for p in sys.argv[1:]:\n"
            "    try: open(p).close()\n"
            "    except OSError: pass\n")
    subprocess.run(STRACE + ["-o", str(tmp_path / "trace"), sys.executable, "-c", code, BEGIN_MARKER,
                             "link.bin", "../" + tmp_path.name + "/outside/secret.bin", END_MARKER, str(secret)],
                   cwd=tmp_path, check=True, timeout=60)
    opened = [p.resolve() for p in _opened_paths(tmp_path / "trace", tmp_path)]
    assert opened == [secret.resolve(), secret.resolve()]  # both escapes seen; the open after END is not counted


def run_worker(target: str, src: Path, work: Path, cases: int, seed: int, trace: bool = False) -> dict:
    work.mkdir()
    cmd = [sys.executable, "-m", "tests.fuzz_bundle_worker", target, str(src), str(work), "--cases", str(cases),
           "--seed", str(seed), "--image", str(SAMPLE)]
    if trace:
        cmd = STRACE + ["-o", str(work / "trace")] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    last = (work / "progress").read_text().splitlines()[-1:] if (work / "progress").exists() else []
    assert proc.returncode == 0, f"worker died (rc {proc.returncode}) in case {last}: {proc.stderr[-2000:]}"
    assert proc.stderr == "", proc.stderr[-2000:]  # no warnings, no onnxruntime log lines, no stray prints
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.stdout.count("\n") == 1, proc.stdout[:2000]
    assert summary["untyped_count"] == 0, summary["untyped"]
    assert summary["broken_promises_count"] == 0, summary["broken_promises"]
    assert sum(summary["outcomes"].values()) == cases
    if trace:
        outside = (work / "outside").resolve()
        opened = _opened_paths(work / "trace", ROOT)
        assert opened, "strace saw no file opened between the markers"
        escaped = [str(p) for p in opened if outside == Path(p).resolve() or outside in Path(p).resolve().parents]
        assert not escaped, escaped[:10]
    return summary


def _print_summary(name, summary):
    kinds = Counter()
    for key, count in summary["outcomes"].items():
        kinds[key.split(":")[0] + ":" + key.split(":")[1]] += count
    print(f"\n{name}: {summary['cases']} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))


def test_fuzz_bundles(tiny_bundle, tmp_path):
    summary = run_worker("bundle", tiny_bundle[0], tmp_path / "work", BUNDLE_CASES, seed=1, trace=_strace_works())
    _print_summary("bundle fuzz", summary)
    outcomes = summary["outcomes"]
    for kind in ("onnx_bit_flips", "onnx_truncation", "onnx_size_fields", "onnx_external_data", "manifest_values"):
        assert outcomes.get(f"{kind}:typed_error", 0) > 0, (kind, outcomes)  # every mutator reaches a check


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from safetensors.torch import save_model

    from edgevlm.models.loaders.native import write_export_info
    from tests.conftest import tiny_scene_setup

    model, tokenizer, pre, prompt, gen, special = tiny_scene_setup()
    out = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    out.mkdir()
    save_model(model, str(out / "model.safetensors"))
    (out / "state.json").write_text(json.dumps({"step": 0, "config": model.cfg.to_dict()}))
    write_export_info(out, tokenizer, prompt, pre, gen, special)
    return out


def test_fuzz_checkpoints(tiny_checkpoint, tmp_path):
    summary = run_worker("checkpoint", tiny_checkpoint, tmp_path / "work", CHECKPOINT_CASES, seed=1)
    _print_summary("checkpoint fuzz", summary)
    for kind in ("header_size_field", "header_offsets", "header_values", "truncation"):
        assert summary["outcomes"].get(f"{kind}:typed_error", 0) > 0, (kind, summary["outcomes"])


def test_checkpoint_dtype_is_checked_against_the_config(tiny_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    from edgevlm.errors import CheckpointError
    from edgevlm.models.registry import load_checkpoint

    path = tmp_path / "c"
    shutil.copytree(tiny_checkpoint, path)
    tensors = load_file(str(path / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].astype(np.float16)  # right name and shape, wrong dtype
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor {re.escape(name)} is F16 .* but the config needs F32"):
        load_checkpoint(path)


def test_a_config_claiming_a_huge_model_fails_before_allocating_it(tiny_checkpoint, tmp_path):
    """state.json says 16M-token vocabulary (a 6 GB embedding); the weights file says otherwise.
    The header check on the meta device refuses it at once, without allocating the model."""
    import time

    from edgevlm.errors import CheckpointError
    from edgevlm.models.registry import load_checkpoint

    path = tmp_path / "c"
    shutil.copytree(tiny_checkpoint, path)
    state = json.loads((path / "state.json").read_text())
    state["config"]["text"]["vocab_size"] = 1 << 24
    (path / "state.json").write_text(json.dumps(state))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="embed_tokens.weight is F32 .* but the config needs F32 \\[16777216, "):
        load_checkpoint(path)
    assert time.perf_counter() - start < 10


@pytest.mark.long
def test_fuzz_bundles_long(request, tiny_bundle, tmp_path):
    _long_run(request)
    summary = run_worker("bundle", tiny_bundle[0], tmp_path / "work", LONG_BUNDLE_CASES, seed=2,
                         trace=_strace_works())
    _print_summary("bundle fuzz (long)", summary)


@pytest.mark.long
def test_fuzz_checkpoints_long(request, tiny_checkpoint, tmp_path):
    _long_run(request)
    summary = run_worker("checkpoint", tiny_checkpoint, tmp_path / "work", LONG_CHECKPOINT_CASES, seed=2)
    _print_summary("checkpoint fuzz (long)", summary)
