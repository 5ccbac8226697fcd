"""Batch captioning that loses nothing: input expansion, the JSONL results file, --out/--resume,
and a batch killed at random points and resumed until done."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from edgevlm.batch import ResultsFile, expand_inputs, parse_records, run_batch
from edgevlm.data import scenes
from edgevlm.errors import EdgeVLMError, ImageError

KILL_CYCLES = 5
N_IMAGES = 30


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "edgevlm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def run_cli(*args, timeout=120):
    proc = cli(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """N_IMAGES tiny scene PNGs, one of them corrupt, plus a non-image file that is ignored."""
    d = tmp_path_factory.mktemp("batch_imgs")
    for i, scene in enumerate(scenes.split("val", N_IMAGES - 1)):
        scenes.render(scene, 32).save(d / f"img_{i:02d}.png")
    (d / "img_99_corrupt.png").write_bytes((d / "img_00.png").read_bytes()[:70])
    (d / "notes.txt").write_text("not an image")
    return d


def read_records(path):
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file must end with a complete line"
    return [json.loads(line) for line in lines[:-1]]


def assert_complete(path, image_dir):
    records = read_records(path)
    images = [r["image"] for r in records]
    assert len(images) == len(set(images)), "an image was recorded twice"
    assert sorted(os.path.basename(i) for i in images) == sorted(p.name for p in image_dir.glob("*.png"))
    for r in records:
        assert ("caption" in r) != ("error" in r)
        assert ("error" in r) == r["image"].endswith("corrupt.png")
    return records


# --------------------------------------------------------------------------- inputs


def test_expand_directories_globs_and_files(image_dir, tmp_path):
    pngs = sorted(str(p) for p in image_dir.glob("*.png"))
    assert expand_inputs([image_dir]) == pngs  # sorted, image suffixes only
    assert expand_inputs([str(image_dir / "img_0*.png")]) == [p for p in pngs if "img_0" in p]
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    (sub / "x.JPG").write_bytes(b"")
    assert expand_inputs([str(tmp_path / "**" / "*.JPG")]) == [str(sub / "x.JPG")]
    # duplicates collapse, order of first appearance, a missing plain file is kept (its error comes later)
    one = pngs[3]
    assert expand_inputs([one, image_dir, one.replace("/img_", "/./img_"), "nope.png"]) == \
        [one] + [p for p in pngs if p != one] + ["nope.png"]


def test_expand_errors_are_one_line(tmp_path):
    with pytest.raises(EdgeVLMError, match="no files match 'z\\*.png'"):
        expand_inputs(["z*.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeVLMError, match="no image files in this directory") as info:
        expand_inputs([tmp_path / "empty"])
    assert str(tmp_path) not in str(info.value)  # an absolute path is shown by its last component only


# --------------------------------------------------------------------------- results file


def test_parse_records_cuts_a_torn_last_line_only():
    good = b'{"image": "a.png", "caption": "x"}\n{"image": "b.png", "error": "e"}\n'
    assert parse_records(good, "r.jsonl") == ([{"image": "a.png", "caption": "x"}, {"image": "b.png", "error": "e"}],
                                              len(good))
    assert parse_records(good + b'{"image": "c.p', "r.jsonl")[1] == len(good)
    assert parse_records(b'{"ima', "r.jsonl") == ([], 0)
    for bad in (b"garbage\n", b'{"caption": "no image key"}\n', b"[1]\n", b"\xff\xfe\n"):
        with pytest.raises(EdgeVLMError, match="line 2 is not an edgevlm record"):
            parse_records(good[:35] + bad + good[35:], "r.jsonl")


def test_results_file_refuses_reuse_and_a_second_writer(tmp_path):
    out = tmp_path / "r.jsonl"
    with ResultsFile(out) as results:
        results.write({"image": "a.png", "caption": "x"})
        with pytest.raises(EdgeVLMError, match="being written by another edgevlm process"):
            ResultsFile(out, resume=True)
    with pytest.raises(EdgeVLMError, match="already exists; add --resume"):
        ResultsFile(out)
    with ResultsFile(out, resume=True) as results:
        assert results.done == {"a.png"}


def test_resume_truncates_a_torn_line_and_redoes_that_image(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"image": "a.png", "caption": "x"}\n{"image": "b.png", "capt')
    with ResultsFile(out, resume=True) as results:
        assert results.done == {"a.png"}
        summary = run_batch(["a.png", "b.png", "c.png"], results, lambda p: {"caption": p.upper()}, progress=False)
    assert (summary.skipped, summary.captioned, summary.failed) == (1, 2, 0)
    assert [r["image"] for r in read_records(out)] == ["a.png", "b.png", "c.png"]


def test_bad_images_are_recorded_and_the_batch_goes_on(tmp_path):
    def caption_one(image):
        if image.startswith("bad"):
            raise ImageError(f"{image}: corrupt or truncated image")
        return {"caption": "ok"}

    with ResultsFile(tmp_path / "r.jsonl") as results:
        summary = run_batch(["a", "bad1", "b", "bad2"], results, caption_one, progress=False)
    assert (summary.captioned, summary.failed) == (2, 2)
    assert [("error" in r) for r in read_records(tmp_path / "r.jsonl")] == [False, True, False, True]


def test_an_interrupt_leaves_only_complete_records(tmp_path):
    def caption_one(image):
        if image == "c":
            raise KeyboardInterrupt
        return {"caption": image}

    with ResultsFile(tmp_path / "r.jsonl") as results, pytest.raises(KeyboardInterrupt):
        run_batch(["a", "b", "c", "d"], results, caption_one, progress=False)
    assert [r["image"] for r in read_records(tmp_path / "r.jsonl")] == ["a", "b"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_stops_the_batch_with_one_line(tmp_path):
    with ResultsFile(tmp_path / "r.jsonl") as results:
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, results.fd)  # every write now fails with ENOSPC
        os.close(full)
        with pytest.raises(EdgeVLMError, match="^cannot write to r.jsonl: No space left on device$"):
            run_batch(["a.png"], results, lambda p: {"caption": "x"}, progress=False)


# --------------------------------------------------------------------------- the CLI


def test_cli_out_and_resume(tiny_bundle, image_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    code, stdout, stderr = run_cli("caption", image_dir, "--model", tiny_bundle[0], "--threads", 1, "--out", out)
    assert code == 2 and stdout == ""  # one image failed; records go to the file only
    assert stderr.strip().splitlines()[-1] == f"{N_IMAGES - 1} captioned, 1 failed, 0 already done: r.jsonl"
    first = assert_complete(out, image_dir)
    code, _, stderr = run_cli("caption", image_dir, "--model", tiny_bundle[0], "--out", out)
    assert code == 2
    assert stderr.strip() == "error: r.jsonl already exists; add --resume to continue it or choose another --out file"
    code, _, stderr = run_cli("caption", image_dir, "--model", tiny_bundle[0], "--out", out, "--resume")
    assert code == 0 and f"0 captioned, 0 failed, {N_IMAGES} already done" in stderr
    assert read_records(out) == first


@pytest.mark.parametrize("args,message", [
    (["--resume"], "--resume needs --out"),
    (["--out", "r.jsonl", "--stream"], "cannot be combined with --out"),
    (["--timeout", "-1"], "--timeout must be a positive number"),
])
def test_cli_option_errors(image_dir, args, message):
    code, _, stderr = run_cli("caption", image_dir, *args)
    assert code == 2 and stderr.strip().splitlines() == [stderr.strip()] and message in stderr


def test_cli_timeout_is_a_clean_one_line_error(tiny_bundle, image_dir):
    code, stdout, stderr = run_cli("caption", image_dir / "img_00.png", "--model", tiny_bundle[0], "--timeout", 1e-6)
    assert code == 2 and stdout == ""
    assert stderr.strip().startswith("error: caption timed out after") and "\n" not in stderr.strip()


def test_ctrl_c_leaves_a_valid_file(tiny_bundle, image_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    proc = cli("caption", image_dir, "--model", tiny_bundle[0], "--threads", 1, "--out", out, "--num-beams", 4,
               "--max-new-tokens", 40)
    _wait_for_records(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 130:  # (the batch may have finished first on a fast machine)
        assert "Traceback" not in stderr
        assert "interrupted; the finished records are in r.jsonl (add --resume to continue)" in stderr
    records = read_records(out)
    assert len({r["image"] for r in records}) == len(records) >= 3


def _wait_for_records(proc, out, target, timeout=60.0):
    """Poll until `out` holds at least `target` newlines or the process has ended."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= target:
            return
        time.sleep(0.002)


def test_kill_at_random_points_and_resume(tiny_bundle, image_dir, tmp_path):
    """SIGKILL the batch KILL_CYCLES times at random points, resume each time: in the end the file
    has exactly one valid record per image, none torn, none duplicated."""
    rng = random.Random(7)
    out = tmp_path / "r.jsonl"
    args = ("caption", image_dir, "--model", tiny_bundle[0], "--threads", 1, "--out", out, "--resume",
            "--num-beams", 4, "--max-new-tokens", 40)
    progress, kills = [], 0
    while kills < KILL_CYCLES:
        done = out.read_bytes().count(b"\n") if out.exists() else 0
        proc = cli(*args)
        _wait_for_records(proc, out, done + rng.randint(1, 5))
        time.sleep(rng.uniform(0, 0.01))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=60)
        data = out.read_bytes() if out.exists() else b""
        records = read_records(out) if data.endswith(b"\n") else None  # a torn tail is allowed here
        progress.append(len(records) if records is not None else "torn")
        if records is not None and len(records) == N_IMAGES:
            out.unlink()  # finished before the kill landed: start over so every cycle kills a running batch
    proc = cli(*args)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr  # the corrupt image's error record
    assert_complete(out, image_dir)
    assert kills == KILL_CYCLES, progress


def test_batch_path_imports_neither_torch_nor_onnx(tiny_bundle, image_dir, tmp_path):
    code = (
        "import sys\n"
        "from edgevlm.cli import main\n"
        "try:\n"
        f"    main(['caption', {str(image_dir)!r}, '--model', {str(tiny_bundle[0])!r}, '--out', "
        f"{str(tmp_path / 'r.jsonl')!r}], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'torch or onnx was imported'\n"
        "print('CLEAN')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "CLEAN" in proc.stdout, proc.stderr
    assert len(read_records(tmp_path / "r.jsonl")) == N_IMAGES
