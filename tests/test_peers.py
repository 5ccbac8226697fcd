"""benchmarks/peers.py --smoke, as CI runs it: tiny model, every adapter, in a subprocess.

With only the dev extras installed, PyTorch and edgevlm must give positive numbers and every
other peer must be listed as skipped with a reason. A fake adapter then checks the other
promise: a peer that crashes or does not do the workload is skipped, never given a number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers.py"
OTHERS = {"ortgenai": "onnxruntime_genai", "openvino": "openvino_genai", "llamacpp": "llama_cpp",
          "optimum": "optimum.exporters.onnx"}
TITLES = {"ortgenai": "ONNX Runtime GenAI", "openvino": "OpenVINO GenAI", "llamacpp": "llama.cpp (llama-cpp-python)",
          "optimum": "Optimum ONNX + ONNX Runtime (SigLIP)"}


def _importable(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is absent
        return False


def _smoke(work: Path, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PEERS), "--smoke", "--workdir", str(work), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peers")
    done = _smoke(tmp / "work", tmp / "out")  # ~25 s on an idle 2-core machine
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done, json.loads(done.stdout.strip().splitlines()[-1])


def test_smoke_measures_torch_and_edgevlm(smoke):
    tmp, done, report = smoke
    assert json.loads((tmp / "out" / "peers_smoke.json").read_text())["rows"] == report["rows"]
    rows = {r["adapter"]: r for r in report["rows"]}
    assert {"torch", "edgevlm"} <= set(rows)
    for name in ("torch", "edgevlm"):
        row = rows[name]
        assert len(row["runs"]) == 2  # --smoke: 2 repeats, warm-up not counted
        for metric in ("prefill_ms", "decode_ms_per_token", "vision_ms_per_tile"):
            assert row["stats"][metric]["median"] > 0 and row["stats"][metric]["min"] > 0
        assert row["versions"]["python"] and row["command"]
    assert rows["torch"]["speedup_vs_torch"]["decode_ms_per_token"] == 1.0
    assert rows["edgevlm"]["speedup_vs_torch"]["decode_ms_per_token"] > 0
    w = report["workload"]
    assert (w["new_tokens"], w["repeat"], w["batch"]) == (4, 2, 1)


def test_smoke_pairs_edgevlm_with_each_peer_round_by_round(smoke):
    tmp, _, report = smoke
    rows = {r["adapter"]: r for r in report["rows"]}
    got = {(p["peer"], p["metric"]): p for p in report["paired"] if p["ours"] == rows["edgevlm"]["variant"]}
    torch = f"{rows['torch']['title']} {rows['torch']['variant']}"
    for metric in ("prefill_ms", "decode_ms_per_token", "vision_ms_per_tile"):
        ratios = sorted(t[metric] / e[metric] for e, t in zip(rows["edgevlm"]["runs"], rows["torch"]["runs"]))
        p = got[(torch, metric)]
        assert p["n"] == 2 and p["min"] == round(ratios[0], 3) and p["max"] == round(ratios[-1], 3)
        assert p["median"] == round((ratios[0] + ratios[1]) / 2, 3)
    md = (tmp / "out" / "peers_smoke.md").read_text()
    assert "round by round" in md and f"vs {torch}, vision ms/tile" in md


def test_smoke_lists_absent_peers_as_skipped(smoke):
    tmp, done, report = smoke
    measured = {r["adapter"] for r in report["rows"]}
    skipped = {s["title"]: s["reason"] for s in report["skipped"]}
    for adapter, module in OTHERS.items():
        if adapter in measured:
            continue  # installed here and it ran: nothing to skip
        assert skipped.get(TITLES[adapter]), f"{adapter} neither measured nor skipped with a reason"
        assert f"skipped: {TITLES[adapter]}" in done.stdout
        if not _importable(module):
            assert module in skipped[TITLES[adapter]]  # the reason names what is missing


def test_smoke_writes_markdown_and_plot(smoke):
    tmp, _, report = smoke
    md = (tmp / "out" / "peers_smoke.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| PyTorch eager") or ln.startswith("| edgevlm")]
    assert len(table) == 2 and all("n/a" not in ln.split("|")[3] for ln in table)
    assert "Skipped" in md and report["command"] in md
    if find_spec("matplotlib"):
        assert (tmp / "out" / "peers_smoke.png").stat().st_size > 1000


FAKE = '''
TITLE = "fake"
VARIANTS = {"full": ("ok", "crash", "short"), "smoke": ("ok", "crash", "short")}
def missing(spec): return None
def versions(): return {"fake": "1"}
def prepare(spec, variant, out): return {"command": "none"}
class Runner:
    def __init__(self, spec, variant, art):
        self.spec, self.variant, self.calls = spec, variant, 0
    def run(self):
        self.calls += 1
        if self.variant == "crash" and self.calls > self.spec["warmup"]:
            import os; os._exit(3)  # dies in the first timed run, after a good warm-up
        short = self.variant == "short"
        return {"prefill_ms": 1.0, "decode_ms_per_token": 0.5, "tokens": self.spec["new_tokens"] - short}
'''

FAKE_VISION = '''
TITLE = "fake vision"
VARIANTS = {"full": ("vision", "both"), "smoke": ("vision", "both")}
DECODES = False
def missing(spec): return None
def versions(): return {"fake": "1"}
def prepare(spec, variant, out): return {"command": "none"}
class Runner:
    def __init__(self, spec, variant, art):
        self.variant = variant
    def run(self):  # "both" claims decoder times too, which a vision-only peer never measured
        return {"vision_ms_per_tile": 2.0, **({"prefill_ms": 1.0} if self.variant == "both" else {})}
'''


def test_crashing_or_wrong_peer_is_skipped_not_measured(smoke, tmp_path):
    """Reuses the smoke run's checkpoint (--workdir); the fake adapters come in via PYTHONPATH."""
    (tmp_path / "peers_fake.py").write_text(FAKE)
    (tmp_path / "peers_fakevision.py").write_text(FAKE_VISION)
    done = _smoke(smoke[0] / "work", tmp_path / "out", "--peers", "fake,fakevision",
                  env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r["variant"], len(r["runs"])) for r in report["rows"]] == [("ok", 2), ("vision", 2)]
    vision = report["rows"][1]["stats"]
    assert vision["vision_ms_per_tile"]["median"] == 2.0 and vision["prefill_ms"] is None
    reasons = {s["variant"]: s["reason"] for s in report["skipped"]}
    assert "worker died (exit 3)" in reasons["crash"] and "repeat 1" in reasons["crash"]
    assert "generated 3 tokens, the workload forces 4" in reasons["short"]
    assert "vision-only peer must time one tile and no decoder" in reasons["both"]
