"""No pickle payload ever runs: weights are read from safetensors, or with
torch.load(weights_only=True). Each test plants files whose unpickling would create a marker
file, shows (in a throwaway subprocess) that the payload is live, and checks that edgevlm's
loaders refuse them and the marker never appears."""

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgevlm.errors import BundleError, CheckpointError

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls exec(), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a pickle payload ran"


def _raw_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": _Payload(marker)}, protocol=2))  # torch.load's default protocol
    return path


def _torch_pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state": _Payload(marker)}, path)  # the zip format torch.load reads
    return path


def test_the_payloads_are_live(tmp_path):
    """Positive control: unpickled without protection, both files do create the marker."""
    for make in (_raw_pickle, _torch_pickle):
        marker = tmp_path / f"live_{make.__name__}"
        path = make(tmp_path / f"{make.__name__}.bin", marker)
        code = ("import pickle, sys, zipfile\n"
                "p = sys.argv[1]\n"
                "if zipfile.is_zipfile(p):\n"
                "    import torch; torch.load(p, weights_only=False)\n"
                "else:\n"
                "    pickle.loads(open(p, 'rb').read())\n")
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120)
        assert marker.exists(), make.__name__


@pytest.mark.parametrize("make", [_raw_pickle, _torch_pickle])
def test_torch_load_weights_only_refuses_the_payload(tmp_path, marker, make):
    import torch

    path = make(tmp_path / "optimizer.pt", marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_training_resume_reads_optimizer_state_with_weights_only(tmp_path, marker):
    from safetensors.torch import save_model

    from edgevlm.models.vlm import VLM
    from edgevlm.train.train import load_checkpoint
    from tests.conftest import tiny_config

    import torch

    model = VLM(tiny_config())
    save_model(model, str(tmp_path / "model.safetensors"))
    (tmp_path / "state.json").write_text(json.dumps({"step": 3, "config": model.cfg.to_dict()}))
    _torch_pickle(tmp_path / "optimizer.pt", marker)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path, optimizer=torch.optim.AdamW(model.parameters()))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt"])
def test_a_pickle_checkpoint_is_not_a_supported_checkpoint(tmp_path, marker, name):
    from edgevlm.models.registry import load_checkpoint

    _torch_pickle(tmp_path / name, marker)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="unsupported or unrecognised checkpoint"):
        load_checkpoint(tmp_path)


def test_a_pickle_named_model_safetensors_is_refused(tmp_path, marker):
    from edgevlm.models.registry import load_checkpoint
    from tests.conftest import tiny_config

    (tmp_path / "state.json").write_text(json.dumps({"step": 0, "config": tiny_config().to_dict()}))
    for name in ("tokenizer.json", "export.json"):
        (tmp_path / name).write_text("{}")
    _torch_pickle(tmp_path / "model.safetensors", marker)
    with pytest.raises(CheckpointError, match="checkpoint does not match its config"):
        load_checkpoint(tmp_path)


def test_a_pickle_in_place_of_a_graph_is_refused(tiny_bundle, tmp_path, marker):
    import edgevlm
    from edgevlm.bundle import sha256_file

    path = tmp_path / "b"
    shutil.copytree(tiny_bundle[0], path)
    _raw_pickle(path / "decoder.onnx", marker)
    manifest = json.loads((path / "edgevlm.json").read_text())
    manifest["files"]["decoder.onnx"] = sha256_file(path / "decoder.onnx")
    (path / "edgevlm.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="decoder.onnx"):
        edgevlm.load(path)


# Unpickling entry points that must not appear in edgevlm's own code.
_UNSAFE = [
    (re.compile(r"\bpickle\.(loads?|Unpickler)\b"), "pickle.load"),
    (re.compile(r"\b(cloudpickle|dill|joblib)\b"), "a pickle library"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"weights_only\s*=\s*False"), "torch.load(weights_only=False)"),
]


def test_no_unsafe_deserialization_in_the_package():
    offenders, calls = [], 0
    for folder in ("edgevlm", "export", "kernels", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for pattern, what in _UNSAFE:
                offenders += [f"{path.relative_to(ROOT)}: {what}" for _ in pattern.finditer(text)]
            # every torch.load call says weights_only=True
            for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
                calls += 1
                if "weights_only=True" not in call.group(0):
                    offenders.append(f"{path.relative_to(ROOT)}: {call.group(0)}")
    assert offenders == []
    assert calls >= 1  # the scan does see the torch.load calls there are (training resume)
