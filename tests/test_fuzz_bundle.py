"""Hostile bundles and checkpoints (external-data attacks: tests/test_external_data.py): mutated
bundles / checkpoints (bit flips, truncation, protobuf size fields,
safetensors header size and offsets, edited JSON) only ever end in success or a one-line typed
error, in a subprocess that must not die, reading nothing outside the bundle directory.

CI runs BUNDLE_CASES + CHECKPOINT_CASES mutants; `pytest -m long tests/test_fuzz_bundle.py`
runs LONG_BUNDLE_CASES + LONG_CHECKPOINT_CASES more.
"""

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz_bundle_worker import BEGIN_MARKER, END_MARKER

BUNDLE_CASES, CHECKPOINT_CASES = 1000, 400
LONG_BUNDLE_CASES, LONG_CHECKPOINT_CASES = 20_000, 5_000
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "edgevlm" / "assets" / "samples" / "scene_00.png"


def _long_run(request) -> None:
    if "long" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long fuzz run: select it with -m long")


# --------------------------------------------------------------------------- the schema and the walker


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


PACKED_CASES = 600


@pytest.fixture(scope="module")
def packed_bundle(tmp_path_factory):
    """The tiny model at int4: weights in data files, the table shared with the lm_head and the
    vision weights in the 4-bit store the runtime unpacks (random weights: past the quality gate)."""
    from edgevlm.export.to_onnx import export_bundle
    from tests.conftest import tiny_scene_setup

    model, tokenizer, pre, prompt, gen, special = tiny_scene_setup()
    out = tmp_path_factory.mktemp("bundles") / "packed"
    export_bundle(model, tokenizer, out, preprocess=pre.to_dict(), prompt=prompt.to_dict(), special_tokens=special,
                  generation=gen.to_dict(), progress=False, quant="int4",
                  external_min_bytes=0, quant_gate=False)
    return out


def test_fuzz_packed_bundles(packed_bundle, tmp_path):
    manifest = json.loads((packed_bundle / "edgevlm.json").read_text())
    assert "packed_weights" in manifest["graphs"]["vision_encoder"] and "decoder.onnx.data" in manifest["files"]
    summary = run_worker("bundle", packed_bundle, tmp_path / "work", PACKED_CASES, seed=3, trace=_strace_works())
    _print_summary("packed bundle fuzz", summary)
    outcomes = summary["outcomes"]
    for kind in ("checksum_mismatch", "onnx_bit_flips", "manifest_values"):
        assert outcomes.get(f"{kind}:typed_error", 0) > 0, (kind, outcomes)


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
