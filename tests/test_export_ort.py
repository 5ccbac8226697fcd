"""`edgevlm export --format ort`: ORT-format graphs + required_operators.config, checksummed in the
manifest, loaded with model_format="ort" / --model-format ort, and refused when absent or corrupt."""

import json
import shutil
import subprocess
import sys

import pytest

import edgevlm
from edgevlm.bundle import GRAPHS, open_bundle, sha256_file
from edgevlm.data import scenes
from edgevlm.errors import BundleError, ConfigError

from .conftest import tiny_scene_setup


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory):
    from edgevlm.export.to_onnx import export_bundle

    model, tokenizer, pre, prompt, gen, special = tiny_scene_setup()
    out = tmp_path_factory.mktemp("ort_bundles") / "tiny_ort"
    export_bundle(model, tokenizer, out, preprocess=pre.to_dict(), prompt=prompt.to_dict(), special_tokens=special,
                  generation=gen.to_dict(), progress=False, model_format="ort")
    return out


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgevlm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr


def test_export_writes_ort_graphs_and_ops_config(ort_bundle):
    manifest = json.loads((ort_bundle / "edgevlm.json").read_text())
    assert manifest["ort_graphs"] == {g: f"{g}.ort" for g in GRAPHS}
    assert manifest["required_operators"] == "required_operators.config"
    for name in [f"{g}.ort" for g in GRAPHS] + [f"{g}.onnx" for g in GRAPHS] + ["required_operators.config"]:
        assert (ort_bundle / name).is_file()
        assert manifest["files"][name] == sha256_file(ort_bundle / name)
    config = (ort_bundle / "required_operators.config").read_text()
    entries = [line for line in config.splitlines() if line and not line.startswith("#")]
    assert any(line.startswith("ai.onnx;") and "MatMul" in line for line in entries), config
    assert str(ort_bundle) not in config  # graphs named by file name, not the export machine's path
    assert open_bundle(ort_bundle).manifest == manifest  # the verifier accepts (and checks) the new files


def test_ort_greedy_tokens_equal_onnx(ort_bundle):
    onnx_vlm = edgevlm.load(ort_bundle, threads=1)
    ort_vlm = edgevlm.load(ort_bundle, threads=1, model_format="ort")
    assert ort_vlm.bundle.graph_path("decoder", "ort").name == "decoder.ort"
    for scene in scenes.split("val", 3):
        image = scenes.render(scene, 32)
        assert ort_vlm.run(image).token_ids == onnx_vlm.run(image).token_ids


def test_ort_on_plain_bundle_is_one_line_error(tiny_bundle, tmp_path):
    path = tiny_bundle[0]
    with pytest.raises(BundleError, match="no ORT-format graphs"):
        edgevlm.load(path, threads=1, model_format="ort")
    with pytest.raises(ConfigError, match="model format"):
        edgevlm.load(path, threads=1, model_format="tflite")
    image = tmp_path / "s.png"
    scenes.render(scenes.split("val", 1)[0], 32).save(image)
    _one_line_error(_cli("caption", image, "--model", path, "--threads", 1, "--model-format", "ort"),
                    "no ORT-format graphs")


def test_corrupt_ort_file_refused(ort_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    data = bytearray((copy / "decoder.ort").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "decoder.ort").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.ort is corrupt"):
        edgevlm.load(copy, threads=1, model_format="ort")
    _one_line_error(_cli("bench", copy, "--model-format", "ort", "--threads", 1, "--repeat", 1, "--warmup", 0,
                         "--new-tokens", 2, "--image-size", 32), "decoder.ort is corrupt")


def test_ort_graph_name_outside_bundle_refused(ort_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    manifest = json.loads((copy / "edgevlm.json").read_text())
    manifest["ort_graphs"]["decoder"] = "../decoder.ort"
    (copy / "edgevlm.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        edgevlm.load(copy, threads=1, model_format="ort")


def test_bench_with_ort(ort_bundle):
    proc = _cli("bench", ort_bundle, "--model-format", "ort", "--threads", 1, "--repeat", 1, "--warmup", 0,
                "--new-tokens", 2, "--image-size", 32)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["results"][0]["model_format"] == "ort"


def test_graph_mismatch_names_the_ort_file_that_was_loaded(ort_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    manifest = json.loads((copy / "edgevlm.json").read_text())
    manifest["config"]["text"]["num_layers"] += 1  # the config now asks for one more KV pair than the graph has
    (copy / "edgevlm.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"decoder\.ort does not match edgevlm\.json"):
        edgevlm.load(copy, threads=1, model_format="ort")
    with pytest.raises(BundleError, match=r"decoder\.onnx does not match edgevlm\.json"):
        edgevlm.load(copy, threads=1)
