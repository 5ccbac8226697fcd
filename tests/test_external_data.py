"""ONNX external data in a bundle: every place a protobuf can hide a tensor reference is found by
our walker (checked against protobuf itself, also on mutants), and hostile references (paths out
of the bundle, symlinks, unlisted or missing files, out-of-range offsets, ORT's memory-address
tag) are refused before ONNX Runtime is given the graph.
"""

import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevlm.errors import BundleError
from edgevlm.onnx_safety import _SCHEMA, _Malformed, check_external_data, external_references
from tests.fuzz_mutations import flip_bits, message_spans, rewrite_size_field

DIFFERENTIAL_CASES = 1500
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "edgevlm" / "assets" / "samples" / "scene_00.png"


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
