"""4-bit vision weights run as int8 (packed_weights), external data and shared weights in bundles."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import edgevlm
from edgevlm.bundle import sha256_file
from edgevlm.errors import BundleError
from edgevlm.export.quant_embed import pack_nibbles, quantize_blocks
from edgevlm.export.quant_torch import fake_quant_int4_int8
from edgevlm.export.quant_vision4 import quantize_vision_int4
from edgevlm.runtime.packed_weights import expand, int8_from_int4, unpack_nibbles
from tests.test_golden import CHECKPOINT, SAMPLES


def _weight(n=48, k=96, seed=0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)  # [N, K]
    w[3] = 0.0  # an all-zero output channel: scale 1, not a division by zero
    w[5, 7] = 40.0  # one outlier block
    return w


def test_unpack_inverts_pack():
    q = np.random.default_rng(1).integers(0, 16, (5, 64)).astype(np.uint8)
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(q), 64), q)


def test_runtime_int8_equals_the_pytorch_quantizer_format():
    """The runtime's int8 weights are exactly the w' the PyTorch-side report measures (int4_int8)."""
    w = _weight()
    q4, scales = quantize_blocks(w, 4, scale_dtype=np.float16)
    q8, s8 = int8_from_int4(pack_nibbles(q4), scales.astype(np.float16), w.shape[1])  # [K, N], [N]
    ref = fake_quant_int4_int8(torch.from_numpy(w)).numpy()  # [N, K]
    np.testing.assert_array_equal(q8.T.astype(np.float32) * s8[:, None], ref)
    assert s8[3] == 1.0 and not q8[:, 3].any()
    # each channel's largest weight lands on +-127, and the result stays within one int4 step of w
    assert (np.abs(q8).max(axis=0)[np.arange(48) != 3] == 127).all()
    # (a whole step where the block's other sign clamps at +7; half an int8 step on top)
    step = np.repeat(np.abs(scales), 32, axis=1)  # |scale| = block max / 8
    assert (np.abs(ref - w) <= step + np.abs(ref).max(1, keepdims=True) / 254 + 1e-6).all()


def _matmul_model(ws):
    """x [B, K0] -> MatMul chain with weights ws[i] [K_i, N_i] (fp32)."""
    nodes, inits, x = [], [], "x"
    for i, w in enumerate(ws):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, ws[0].shape[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, ws[-1].shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_expanded_file_is_the_graph_the_export_validated(tmp_path):
    import onnxruntime as ort

    ws = [_weight(96, 64, 2).T.copy(), _weight(32, 96, 3).T.copy()]  # [K, N]: 64 -> 96 -> 32
    spec = quantize_vision_int4(_matmul_model(ws), tmp_path / "v.onnx")
    assert [t["k"] for t in spec["tensors"]] == [64, 96] and spec["expands_to"] == "v.int8.data"
    expand(tmp_path / spec["file"], spec, tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == (tmp_path / spec["expands_to"]).read_bytes()
    # the int8 graph computes x @ w' with w' the 4-bit-then-int8 weights (activations quantized per run)
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    (got,) = ort.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    want = x
    for w in ws:
        want = want @ fake_quant_int4_int8(torch.from_numpy(w.T.copy())).numpy().T
    assert np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()) < 0.02
    # the store is 4 bit: half a byte per weight plus a float16 scale per 32
    assert (tmp_path / spec["file"]).stat().st_size == sum(w.size // 2 + w.size // 32 * 2 for w in ws)


@pytest.fixture(scope="module")
def int4_bundles(tmp_path_factory):
    """The default checkpoint at int4, fused: once with every graph's weights in data files (and the
    tied table shared), once with the graphs self-contained."""
    from edgevlm.export.to_onnx import export_bundle
    from edgevlm.models.registry import load_checkpoint

    ckpt = load_checkpoint(CHECKPOINT)
    out = {}
    for name, min_bytes in (("external", 0), ("inline", 1 << 40)):
        out[name] = tmp_path_factory.mktemp("int4") / name
        export_bundle(ckpt.model, ckpt.tokenizer, out[name], preprocess=ckpt.preprocess.to_dict(),
                      prompt=ckpt.prompt.to_dict(), special_tokens=ckpt.special_tokens,
                      generation=ckpt.generation.to_dict(), progress=False, attention="fused", quant="int4",
                      external_min_bytes=min_bytes)
    return out


def test_external_data_and_shared_table_caption_identically(int4_bundles):
    ext, inline = int4_bundles["external"], int4_bundles["inline"]
    manifest = json.loads((ext / "edgevlm.json").read_text())
    assert {"decoder.onnx.data", "vision_encoder.q4.data"} <= set(manifest["files"])
    embed = onnx.load(str(ext / "embed_tokens.onnx"), load_external_data=False)
    locations = {e.value for t in embed.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"decoder.onnx.data"}  # the table is the lm_head's bytes, not a copy
    assert not (ext / "embed_tokens.onnx.data").exists()
    assert all(oct(p.stat().st_mode)[-3:] == oct((ext / "decoder.onnx").stat().st_mode)[-3:] for p in ext.iterdir())
    a, b = edgevlm.load(ext, threads=1), edgevlm.load(inline, threads=1)
    for sample in SAMPLES[:4]:
        assert a.run(sample).token_ids == b.run(sample).token_ids


def _mutated(bundle, tmp_path, change, entry="packed_weights"):
    """A copy of `bundle` whose manifest went through change(graphs.vision_encoder[entry], manifest, path)."""
    path = tmp_path / "b"
    shutil.copytree(bundle, path)
    manifest = json.loads((path / "edgevlm.json").read_text())
    change(manifest["graphs"]["vision_encoder"][entry], manifest, path)
    (path / "edgevlm.json").write_text(json.dumps(manifest))
    return path


def _unlist(spec, manifest, path):
    del manifest["files"][spec["file"]]


def _graph_in_subdir(spec, manifest, path):
    (path / "sub").mkdir()
    shutil.copyfile(path / "vision_encoder.onnx", path / "sub" / "vision_encoder.onnx")
    manifest["graphs"]["vision_encoder"]["file"] = "sub/vision_encoder.onnx"
    manifest["files"]["sub/vision_encoder.onnx"] = sha256_file(path / "sub" / "vision_encoder.onnx")


def _ship_int8(spec, manifest, path):  # an int8 file placed in the bundle is never read
    (path / spec["expands_to"]).write_bytes(b"\0" * 10)
    manifest["files"][spec["expands_to"]] = sha256_file(path / spec["expands_to"])


@pytest.mark.parametrize("change,message", [
    (lambda s, m, p: s.update(block=64), "unsupported layout"),
    (lambda s, m, p: s["tensors"][1].update(offset=3), "out of order"),
    (lambda s, m, p: s["tensors"][0].update(q4_offset=10**9), "outside the file"),
    (lambda s, m, p: s["tensors"][0].update(k=-1), "malformed entry"),
    (lambda s, m, p: s["tensors"][0].pop("n"), "malformed entry"),
    (lambda s, m, p: s.update(tensors=[]), "unsupported layout"),
    (lambda s, m, p: s.update(expands_to="../x.data"), "bad expanded file name"),
    (lambda s, m, p: s.update(expands_to="vision_encoder.onnx"), "bad expanded file name"),
    (_unlist, "not a checksummed file"),
    (lambda s, m, p: s.update(file=[1, 2]), "not a checksummed file"),
    (lambda s, m, p: s["tensors"][1].update(q4_offset=0), "overlaps another"),  # would re-read tensor 0
    (lambda s, m, p: s["tensors"][0].update(k=1 << 17), "malformed entry"),  # one row's float copy: GBs
    (_graph_in_subdir, "top level"),
])
def test_malformed_packed_weights_are_refused_in_one_line(int4_bundles, tmp_path, change, message):
    path = _mutated(int4_bundles["inline"], tmp_path, change)
    with pytest.raises(BundleError, match=message) as info:
        edgevlm.load(path, threads=1)
    assert "\n" not in str(info.value)


def test_a_shipped_int8_file_is_ignored(int4_bundles, tmp_path):
    path = _mutated(int4_bundles["inline"], tmp_path, _ship_int8)
    assert edgevlm.load(path, threads=1).run(SAMPLES[0]).token_ids == \
        edgevlm.load(int4_bundles["inline"], threads=1).run(SAMPLES[0]).token_ids


def test_unpacking_leaves_no_temporary_files(int4_bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    edgevlm.load(int4_bundles["inline"], threads=1).run(SAMPLES[0])
    assert list(tmp_path.iterdir()) == []


def test_unwritable_temporary_directory_is_one_line(int4_bundles, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(BundleError, match="TMPDIR") as info:
        edgevlm.load(int4_bundles["inline"], threads=1)
    assert "\n" not in str(info.value)


def test_non_finite_scales_give_weights_not_warnings():
    """A damaged store (only reachable with verify off) must not print numpy warnings."""
    import warnings

    q4 = np.full((3, 16), 0x9A, np.uint8)
    scales = np.array([[np.inf], [np.nan], [0.5]], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q8, s8 = int8_from_int4(q4, scales, 32)
    assert q8.shape == (32, 3) and q8.dtype == np.int8 and s8[2] > 0
