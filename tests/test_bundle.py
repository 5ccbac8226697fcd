"""Bundle verification: every way a bundle can be wrong gives a one-line BundleError."""

import json
import shutil

import pytest

from edgevlm.bundle import FORMAT_VERSION, open_bundle
from edgevlm.errors import BundleError


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(tiny_bundle[0], path)
    return path


def _edit_manifest(path, change):
    manifest = json.loads((path / "edgevlm.json").read_text())
    change(manifest)
    (path / "edgevlm.json").write_text(json.dumps(manifest))


def _expect(path, pattern):
    with pytest.raises(BundleError, match=pattern) as info:
        open_bundle(path)
    assert "\n" not in str(info.value)
    assert "/tmp" not in str(info.value)


def test_valid_bundle_opens(bundle_copy):
    assert open_bundle(bundle_copy).manifest["format_version"] == FORMAT_VERSION


def test_missing_directory_and_missing_manifest(tmp_path):
    _expect(tmp_path / "nope", "not a bundle directory")
    _expect(tmp_path, "no edgevlm.json")


def test_unknown_format_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    _expect(bundle_copy, "version 99 is not supported")


def test_unknown_format_name(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format="something-else"))
    _expect(bundle_copy, "unknown format")


def test_malformed_manifest(bundle_copy):
    (bundle_copy / "edgevlm.json").write_text("{not json")
    _expect(bundle_copy, "malformed")
    (bundle_copy / "edgevlm.json").write_text("[1, 2]")
    _expect(bundle_copy, "malformed")


def test_missing_key(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.pop("prompt"))
    _expect(bundle_copy, "missing key")


def test_sha256_mismatch(bundle_copy):
    data = bytearray((bundle_copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "decoder.onnx").write_bytes(bytes(data))
    _expect(bundle_copy, "decoder.onnx is corrupt")


def test_missing_graph_file(bundle_copy):
    (bundle_copy / "vision_encoder.onnx").unlink()
    _expect(bundle_copy, "vision_encoder.onnx is missing")


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/../../x"])
def test_unsafe_file_names(bundle_copy, name):
    _edit_manifest(bundle_copy, lambda m: m["files"].update({name: "0" * 64}))
    _expect(bundle_copy, "unsafe file name")


def test_symlink_out_of_bundle(bundle_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(bundle_copy / "decoder.onnx", outside)
    (bundle_copy / "decoder.onnx").unlink()
    (bundle_copy / "decoder.onnx").symlink_to(outside)
    _expect(bundle_copy, "outside the bundle")


def test_malformed_tokenizer_is_a_bundle_error(bundle_copy):
    import edgevlm
    from edgevlm.bundle import sha256_file

    (bundle_copy / "tokenizer.json").write_text("{broken")
    _edit_manifest(bundle_copy, lambda m: m["files"].update({"tokenizer.json": sha256_file(bundle_copy / "tokenizer.json")}))
    with pytest.raises(BundleError, match="malformed tokenizer"):
        edgevlm.load(bundle_copy)


def test_truncated_onnx_with_matching_checksum_is_a_bundle_error(bundle_copy):
    import edgevlm
    from edgevlm.bundle import sha256_file

    path = bundle_copy / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    _edit_manifest(bundle_copy, lambda m: m["files"].update({"decoder.onnx": sha256_file(path)}))
    with pytest.raises(BundleError, match="cannot load decoder.onnx"):
        edgevlm.load(bundle_copy)
