"""Fuzzing the image loader: mutated PNG / JPEG / GIF / WebP / BMP / TIFF files (hypothesis in
process, plus a seeded run in a subprocess so that a native crash would be caught and counted)
and decompression bombs. Every outcome must be an RGB image or a one-line ImageError.

CI: HYPOTHESIS_EXAMPLES + SUBPROCESS_CASES mutants and every bomb in fuzz_image_worker.bomb_files();
`pytest -m long tests/test_fuzz_image.py` runs LONG_CASES more.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_image_worker import apply_edits, check_one, seed_files

HYPOTHESIS_EXAMPLES = 1000
SUBPROCESS_CASES = 20_000
LONG_CASES = 500_000
ROOT = Path(__file__).resolve().parents[1]
SEEDS = seed_files()
NAMES = sorted(SEEDS)
DONORS = [SEEDS[n] for n in NAMES]


def worker(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz_image_worker", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"image worker died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_seed_file_loads():
    assert {name: check_one(data) for name, data in SEEDS.items()} == {name: "ok" for name in NAMES}


edits = st.lists(st.tuples(st.integers(0, 6), st.floats(0, 1), st.integers(0, 2**32 - 1),
                           st.binary(min_size=1, max_size=16)), min_size=1, max_size=4)


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), edits=edits)
def test_mutated_images_load_or_raise_image_error(name, edits):
    assert check_one(apply_edits(SEEDS[name], edits, DONORS)) in ("ok", "image_error")


def _print(summary):
    ok = sum(v for k, v in summary["outcomes"].items() if k.endswith(":ok"))
    print(f"\nimage fuzz: {summary['cases']} mutants in a subprocess: {ok} loaded, "
          f"{summary['cases'] - ok - summary['uncaught_count']} ImageError, {summary['uncaught_count']} uncaught")


def test_mutants_in_a_subprocess(tmp_path):
    summary = worker("mutants", "--cases", SUBPROCESS_CASES, "--seed", 1, "--progress", tmp_path / "progress")
    _print(summary)
    assert summary["uncaught_count"] == 0, summary["uncaught"]
    assert sum(summary["outcomes"].values()) == SUBPROCESS_CASES
    for name in NAMES:  # every seed format was mutated into both outcomes
        assert summary["outcomes"].get(f"{name}:image_error", 0) > 0, name


def test_decompression_bombs_are_refused_cheaply(tmp_path):
    report = worker("bombs", tmp_path / "bombs")
    print(f"\nbombs: {len(report['bombs'])} files, peak RSS growth {report['peak_rss_growth_mb']} MB")
    for name, result in report["bombs"].items():
        print(f"  {name}: {result['bytes']} bytes, {result['seconds'] * 1000:.1f} ms: {result['outcome']}")
        assert result["outcome"] != "LOADED", name
        reasons = ("too large", "over the limit of 40000000", "MAX_TEXT_CHUNK")
        assert any(reason in result["outcome"] for reason in reasons), result
        assert result["seconds"] < 1.0, (name, result)
    assert report["peak_rss_growth_mb"] < 64


def test_a_bomb_on_the_command_line_is_one_line(tiny_bundle, tmp_path):
    from tests.fuzz_image_worker import bomb_files

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_files()["png_real_49mp"])
    proc = subprocess.run([sys.executable, "-m", "edgevlm.cli", "caption", str(path), "--model", str(tiny_bundle[0])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: bomb.png: image is 7000x7000 = 49000000 pixels, over the limit of 40000000"


@pytest.mark.long
def test_mutants_long(request, tmp_path):
    if "long" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long fuzz run: select it with -m long")
    summary = worker("mutants", "--cases", LONG_CASES, "--seed", 2, "--progress", tmp_path / "progress", timeout=7200)
    _print(summary)
    assert summary["uncaught_count"] == 0, summary["uncaught"]
