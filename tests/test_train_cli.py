"""edgevlm train / distill end to end on tiny presets (a few steps), through the CLI."""

import json
import subprocess
import sys

import pytest

from edgevlm.data import scenes


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgevlm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    proc = run("train", "--preset", "nano", "--steps", 4, "--batch-size", 4, "--threads", 1, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "state.json").read_text())["step"] == 4
    return out


def test_train_writes_an_exportable_checkpoint(teacher, tmp_path):
    proc = run("export", teacher, "-o", tmp_path / "bundle")
    assert proc.returncode == 0, proc.stderr
    caption = run("caption", "edgevlm/assets/samples/scene_00.png", "--model", tmp_path / "bundle", "--json")
    assert caption.returncode == 0 and "caption" in json.loads(caption.stdout)


def test_distill_from_teacher_on_labeled_and_unlabeled_data(teacher, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, scene in enumerate(scenes.split("val", 3)):
        scenes.render(scene).save(folder / f"{i}.png")
    out = tmp_path / "student"
    proc = run("distill", "--teacher", teacher, "--student", "nano", "--data", folder, "--steps", 3,
               "--batch-size", 2, "--threads", 1, "--init-from-teacher", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert len((out / "teacher_captions.jsonl").read_text().splitlines()) == 3  # sequence-level KD targets
    assert json.loads((out / "state.json").read_text())["step"] == 3
    resumed = run("distill", "--teacher", teacher, "--student", "nano", "--data", folder, "--steps", 4,
                  "--batch-size", 2, "--threads", 1, "-o", out, "--resume")
    assert resumed.returncode == 0 and "resumed from step 3" in resumed.stdout + resumed.stderr


def test_unknown_preset_is_a_one_line_error(tmp_path):
    proc = run("train", "--preset", "huge", "--steps", 1, "-o", tmp_path / "x")
    assert proc.returncode == 2 and "unknown preset" in proc.stderr and "Traceback" not in proc.stderr


def test_distill_with_feature_matching_exports_only_the_student(teacher, tmp_path):
    out, bundle = tmp_path / "student", tmp_path / "bundle"
    proc = run("distill", "--teacher", teacher, "--student", "nano", "--data", "scenes:val", "--steps", 2,
               "--batch-size", 2, "--threads", 1, "--feature-weight", 0.5, "--feature-hidden", "-o", out,
               "--export", bundle)
    assert proc.returncode == 0, proc.stderr
    assert (out / "objective.safetensors").is_file()  # the projections are checkpointed ...
    files = json.loads((bundle / "edgevlm.json").read_text())["files"]
    assert not any("objective" in name for name in files)  # ... but not exported
    caption = run("caption", "edgevlm/assets/samples/scene_00.png", "--model", bundle, "--json")
    assert caption.returncode == 0 and "caption" in json.loads(caption.stdout)


def test_device_that_is_not_there_is_a_one_line_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error path is for machines without one")
    proc = run("train", "--preset", "nano", "--steps", 1, "--batch-size", 2, "--device", "cuda", "-o", tmp_path / "r")
    assert proc.returncode != 0
    assert "sees no GPU" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train", "--preset", "nano", "--steps", 1, "--batch-size", 2, "--device", "tpu9", "-o", tmp_path / "r")
    assert proc.returncode != 0 and "device" in proc.stderr and "Traceback" not in proc.stderr


def test_device_cpu_and_auto_train(tmp_path):
    for device in ("cpu", "auto"):
        proc = run("train", "--preset", "nano", "--steps", 2, "--batch-size", 2, "--threads", 1, "--device", device,
                   "-o", tmp_path / device)
        assert proc.returncode == 0, proc.stderr
