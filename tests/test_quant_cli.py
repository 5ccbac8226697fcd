"""`edgevlm quantize`: the per-layer report of the shipped checkpoint, its JSON, one-line errors."""

import json
import subprocess
import sys

from tests.test_golden import CHECKPOINT


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgevlm.cli", "quantize", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr


def test_quantize_prints_the_table_and_writes_json(tmp_path):
    proc = run(CHECKPOINT, "--quant", "mixed", "--calib", 2, "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["quant"] == "mixed" and report["calibration_images"] == 2
    for row in report["layers"]:  # every linear is a table line with its format
        assert any(line.startswith(row["layer"]) and row["format"] in line for line in proc.stdout.splitlines())
    assert "decoder.lm_head" in proc.stdout and "kept at 8 bit" in proc.stdout
    assert report["mixed"]["used"] <= report["mixed"]["budget"] == 0.25
    assert not list(tmp_path.glob("*.onnx"))  # a report, no bundle


def test_quantize_refuses_bad_input_in_one_line(tmp_path):
    assert_one_line_error(run(tmp_path / "missing", "--quant", "int4"), "not found")
    assert_one_line_error(run(CHECKPOINT, "--quant", "int3"), "--quant")
    assert_one_line_error(run(CHECKPOINT, "--calib", 0), "--calib")
