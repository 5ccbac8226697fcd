"""Malformed JSONL / COCO data: readers name the line or record; train / distill / eval exit 2 with one line."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgevlm.cli import main
from edgevlm.data.datasets import read_coco, read_jsonl
from edgevlm.errors import ConfigError
from tests.test_distill_resume import teacher_checkpoint  # noqa: F401  (fixture)

GOOD = b'{"image": "a.png", "captions": ["a red circle"]}\n'
BAD_JSONL = [  # (third line, what the error says)
    (b"{not json", "not JSON"),
    (b'["a.png"]', "expected a JSON object, got list"),
    (b'{"captions": ["x"]}', "missing 'image'"),
    (b'{"image": "a.png", "captions": [1]}', "list of strings"),
    (b'{"image": "caf\xe9.png"}', "not UTF-8"),
]


@pytest.mark.parametrize("line,reason", BAD_JSONL)
def test_jsonl_errors_name_the_line(tmp_path, line, reason):
    f = tmp_path / "d.jsonl"
    f.write_bytes(GOOD + b"\n" + line + b"\n" + GOOD)
    with pytest.raises(ConfigError, match=f"d.jsonl line 3: .*{reason}") as err:
        read_jsonl(f)
    assert "\n" not in str(err.value)


def test_jsonl_with_a_byte_order_mark_is_read(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + GOOD)
    assert read_jsonl(f)[0].captions == ("a red circle",)


def _coco(images=None, annotations=None):
    return {"images": images if images is not None else [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "annotations": annotations if annotations is not None else [{"image_id": 1, "caption": "a cat"}]}


BAD_COCO = [  # (file content, what the error says)
    (b"{", "not a COCO captions file"),
    (b'{"images": [], "annotations": {}}', "needs 'images' and 'annotations' lists"),
    (json.dumps(_coco(images=[{"id": 1, "file_name": "a.png"}, {"id": 2}])).encode(), r'images\[1\] .*\{"id": 2\}'),
    (json.dumps(_coco(images=[{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}])).encode(), r"images\[1\] repeats id 1"),
    (json.dumps(_coco(annotations=[{"image_id": 1, "caption": "x"}, {"image_id": 1}])).encode(), r"annotations\[1\] needs a 'caption'"),
    (json.dumps(_coco(annotations=[{"image_id": 7, "caption": "x"}])).encode(), r'annotations\[0\] refers to no image.*"image_id": 7'),
    (b'{"images": [{"id": 1, "file_name": "caf\xe9"}], "annotations": []}', "not a COCO captions file"),
]


@pytest.mark.parametrize("content,reason", BAD_COCO)
def test_coco_errors_name_the_record(tmp_path, content, reason):
    f = tmp_path / "c.json"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as err:
        read_coco(f)
    assert "\n" not in str(err.value) and str(err.value).startswith("c.json: ")


def test_coco_ids_may_mix_ints_and_strings(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(_coco(images=[{"id": "z", "file_name": "z.png"}, {"id": 10, "file_name": "t.png"},
                                          {"id": 2, "file_name": "b.png"}],
                                  annotations=[{"image_id": "z", "caption": "a star"}])))
    assert [i.image.name for i in read_coco(f)] == ["b.png", "t.png", "z.png"]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(GOOD + b'{"image": 3}\n')
    (tmp_path / "bad.json").write_text(json.dumps(_coco(annotations=[{"image_id": 9, "caption": "x"}])))
    return tmp_path


def _one_line_error(result, expected):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


@pytest.mark.parametrize("name,expected", [("bad.jsonl", "bad.jsonl line 2"), ("bad.json", "annotations[0]")])
def test_train_distill_and_eval_refuse_malformed_data(bad_files, teacher_checkpoint, name, expected):  # noqa: F811
    data, out = str(bad_files / name), str(bad_files / "out")
    runner = CliRunner()
    common = ["--data", data, "--steps", "1", "--batch-size", "1", "--threads", "1", "-o", out]
    _one_line_error(runner.invoke(main, ["train", "--preset", "nano", *common]), expected)
    _one_line_error(runner.invoke(main, ["distill", "--teacher", str(teacher_checkpoint), "--student", "nano",
                                         *common]), expected)
    # eval checks the data before it opens (or exports) the model: no model is needed to see the error
    _one_line_error(runner.invoke(main, ["eval", str(bad_files / "no_such_bundle"), "--data", data]), expected)


def test_a_real_process_prints_no_traceback(bad_files):
    proc = subprocess.run([sys.executable, "-m", "edgevlm.cli", "train", "--preset", "nano", "--steps", "1",
                           "--data", str(bad_files / "bad.jsonl"), "-o", str(bad_files / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: bad.jsonl line 2: malformed record " \
        "('image' must be a string and 'captions' a list of strings)"
