import json

import pytest

from edgevlm.data.datasets import open_dataset, read_coco, read_jsonl
from edgevlm.errors import ConfigError


def test_jsonl_reader(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"image": "a.png", "captions": ["a red circle"]}\n\n{"image": "b.png"}\n')
    items = read_jsonl(f)
    assert [i.image.name for i in items] == ["a.png", "b.png"]
    assert items[0].captions == ("a red circle",) and items[1].captions == ()


@pytest.mark.parametrize("line", ['{"image": 3}', "not json", '{"captions": []}', '{"image": "a", "captions": "x"}'])
def test_jsonl_malformed_line_is_named(tmp_path, line):
    f = tmp_path / "d.jsonl"
    f.write_text('{"image": "a.png", "captions": []}\n' + line + "\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_jsonl(f)


def test_coco_reader(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"images": [{"id": 2, "file_name": "x.jpg"}, {"id": 1, "file_name": "y.jpg"}],
                             "annotations": [{"image_id": 2, "caption": " A cat "}, {"image_id": 2, "caption": "cat"}]}))
    items = read_coco(f)
    assert [i.image.name for i in items] == ["y.jpg", "x.jpg"] and items[1].captions == ("A cat", "cat")
    f.write_text(json.dumps({"images": []}))
    with pytest.raises(ConfigError, match="not a COCO"):
        read_coco(f)


def test_folder_and_scenes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [i.image.name for i in open_dataset(str(tmp_path))] == ["a.png"]
    scenes = open_dataset("scenes:val", n=3)
    assert len(scenes) == 3 and scenes[0].image().size == (96, 96) and scenes[0].captions
    with pytest.raises(ConfigError):
        open_dataset("scenes:bogus")
    with pytest.raises(ConfigError):
        open_dataset(str(tmp_path / "missing.csv"))
