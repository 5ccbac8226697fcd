"""The CLI through real subprocesses: outputs, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from edgevlm.data import scenes


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgevlm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, scene in enumerate(scenes.split("val", 2)):
        paths.append(d / f"s{i}.png")
        scenes.render(scene, 32).save(paths[-1])
    (d / "corrupt.png").write_bytes(paths[0].read_bytes()[:60])
    return paths, d / "corrupt.png"


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr


def test_caption_prints_one_line(tiny_bundle, images):
    proc = run("caption", images[0][0], "--model", tiny_bundle[0], "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1  # one caption line (a random model may produce an empty one)


def test_json_and_stream_agree_with_plain(tiny_bundle, images):
    plain = run("caption", images[0][0], "--model", tiny_bundle[0]).stdout.strip()
    record = json.loads(run("caption", images[0][0], "--model", tiny_bundle[0], "--json").stdout)
    assert record["caption"] == plain and record["tiles"] == 1 and record["timings_ms"]["total"] > 0
    assert run("caption", images[0][0], "--model", tiny_bundle[0], "--stream").stdout.strip() == plain


def test_batch_with_a_corrupt_image_goes_on_and_exits_2(tiny_bundle, images):
    good, corrupt = images
    proc = run("caption", good[0], corrupt, good[1], "--model", tiny_bundle[0], "--json")
    assert proc.returncode == 2
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [("error" in r) for r in records] == [False, True, False]
    assert "corrupt.png" in records[1]["error"]


def test_missing_image(tiny_bundle, tmp_path):
    assert_one_line_error(run("caption", tmp_path / "nope.png", "--model", tiny_bundle[0]), "nope.png")


def test_not_a_bundle(images, tmp_path):
    assert_one_line_error(run("caption", images[0][0], "--model", tmp_path), "not an edgevlm bundle")


def test_unknown_bundle_version(tiny_bundle, images, tmp_path):
    import shutil
    path = tmp_path / "b"
    shutil.copytree(tiny_bundle[0], path)
    manifest = json.loads((path / "edgevlm.json").read_text())
    manifest["format_version"] = 7
    (path / "edgevlm.json").write_text(json.dumps(manifest))
    assert_one_line_error(run("caption", images[0][0], "--model", path), "version 7")


@pytest.mark.parametrize("option,value", [("--num-beams", 0), ("--max-new-tokens", 5000), ("--top-p", 2.0)])
def test_bad_generation_options(tiny_bundle, images, option, value):
    assert_one_line_error(run("caption", images[0][0], "--model", tiny_bundle[0], option, value), option[2:].replace("-", "_"))


def test_info(tiny_bundle):
    proc = run("info", tiny_bundle[0])
    assert proc.returncode == 0 and "edgevlm-bundle v1" in proc.stdout
    assert json.loads(run("info", tiny_bundle[0], "--json").stdout)["architecture"] == "edgevlm"


def test_export_of_unsupported_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert_one_line_error(run("export", tmp_path, "-o", tmp_path / "out"), "supported:")


def test_bench_ends_with_one_json_line(tiny_bundle, images):
    proc = run("bench", tiny_bundle[0], "--image", images[0][0], "--repeat", 2, "--warmup", 1, "--new-tokens", 4,
               "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = report["results"][0]["stages_ms"]
    assert stages["decode_per_token"]["median"] > 0 and report["device"]["cores"] >= 1


@pytest.mark.parametrize("command", ["caption", "export", "info", "bench", "eval"])
def test_every_help_has_an_example(command):
    proc = run(command, "--help")
    assert proc.returncode == 0 and "Example" in proc.stdout


def test_runtime_never_imports_torch(tiny_bundle, images):
    code = (
        "import sys\n"
        "from edgevlm.cli import main\n"
        f"main(['caption', {str(images[0][0])!r}, '--model', {str(tiny_bundle[0])!r}, '--json'], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('NO_TORCH_OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NO_TORCH_OK" in proc.stdout and '"caption"' in proc.stdout
