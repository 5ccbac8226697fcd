"""Resume reproduces the uninterrupted run bit for bit: N steps in one go == N/2, then --resume to N."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from edgevlm.cli import main
from edgevlm.models.vlm import VLM
from edgevlm.train.distill import DistillConfig, DistillObjective
from edgevlm.train.train import OBJECTIVE_FILE, RNG_FILE, TrainConfig, train
from tests.test_distill import _cfg
from tests.test_distill_features import _batch


def assert_identical_checkpoints(a, b):
    for name in ("model.safetensors", OBJECTIVE_FILE):
        if (a / name).exists() or (b / name).exists():
            x, y = load_file(str(a / name)), load_file(str(b / name))
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    x, y = (torch.load(p / "optimizer.pt", weights_only=True) for p in (a, b))
    assert x["param_groups"] == y["param_groups"] and x["state"].keys() == y["state"].keys()
    for i in x["state"]:
        assert x["state"][i].keys() == y["state"][i].keys()
        assert all(torch.equal(x["state"][i][k], y["state"][i][k]) for k in x["state"][i]), (i, list(x["state"][i]))
    assert torch.equal(*(torch.load(p / RNG_FILE, weights_only=True) for p in (a, b)))


class _Steps:
    """A different batch at every step, a pure function of the step (like CaptionBatches)."""

    def batch(self, step):
        torch.manual_seed(100 + step)
        return _batch(2)


def _distill_run(out, **tc):
    torch.manual_seed(0)
    teacher, student = VLM(_cfg(2)), VLM(_cfg(1, hidden=32))
    objective = DistillObjective(teacher, DistillConfig(feature_weight=0.5, feature_hidden=True), student.cfg)
    train(student, _Steps(), TrainConfig(steps=6, warmup=2, **tc), out, resume=True, log=lambda *_: None,
          objective=objective)


def test_train_loop_resume_is_bit_identical(tmp_path):
    _distill_run(tmp_path / "once")
    _distill_run(tmp_path / "halves", stop_at=3)
    assert not torch.equal(*(load_file(str(p / "model.safetensors"))["vision.encoder.post_layernorm.weight"]
                             for p in (tmp_path / "once", tmp_path / "halves")))  # the pause really paused
    _distill_run(tmp_path / "halves")
    assert_identical_checkpoints(tmp_path / "once", tmp_path / "halves")


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """The tiny scene model saved as a native checkpoint (no training needed to be a teacher)."""
    from edgevlm.models.loaders.native import write_export_info
    from edgevlm.train.train import save_checkpoint
    from tests.conftest import tiny_scene_setup

    model, tokenizer, pre, prompt, gen, special = tiny_scene_setup()
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    write_export_info(out, tokenizer, prompt, pre, gen, special)
    save_checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1), 0, out)
    return out


def _distill_cli(teacher, out, *extra):
    args = ["distill", "--teacher", str(teacher), "--student", "nano", "--data", "scenes:val", "--steps", "4",
            "--batch-size", "2", "--threads", "1", "--feature-weight", "0.5", "-o", str(out), *map(str, extra)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_distill_cli_stop_at_then_resume_is_bit_identical(teacher_checkpoint, tmp_path):
    _distill_cli(teacher_checkpoint, tmp_path / "once")
    _distill_cli(teacher_checkpoint, tmp_path / "halves", "--stop-at", 2)
    assert json.loads((tmp_path / "halves" / "state.json").read_text())["step"] == 2
    assert "resumed from step 2" in _distill_cli(teacher_checkpoint, tmp_path / "halves", "--resume")
    assert_identical_checkpoints(tmp_path / "once", tmp_path / "halves")


def test_resuming_with_another_schedule_or_objective_says_so(teacher_checkpoint, tmp_path):
    _distill_cli(teacher_checkpoint, tmp_path / "run", "--steps", 2)
    note = _distill_cli(teacher_checkpoint, tmp_path / "run", "--steps", 3, "--resume")
    assert "lr schedule now spans 3 steps, not 2" in note
    result = CliRunner().invoke(main, ["distill", "--teacher", str(teacher_checkpoint), "--student", "nano",
                                       "--data", "scenes:val", "--steps", "4", "--batch-size", "2", "--threads", "1",
                                       "-o", str(tmp_path / "run"), "--resume"])  # without --feature-weight
    assert result.exit_code == 2 and "made with feature matching" in result.stderr
    assert "Traceback" not in result.output
