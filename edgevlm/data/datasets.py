"""Captioning data sources: the scenes corpus, JSONL, COCO-captions JSON, an image folder.

Each reader returns a list of CaptionItem(image, captions). `image` is a path or a PIL image
(scenes are rendered lazily); `captions` is empty for unlabeled images (a teacher captions
them in sequence-level distillation). Malformed files raise a one-line ConfigError naming
the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgevlm.errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class CaptionItem:
    image: object  # Path, or a callable returning a PIL image (lazy rendering)
    captions: tuple[str, ...] = field(default_factory=tuple)


def read_jsonl(path: Path) -> list[CaptionItem]:
    """Lines of {"image": path (relative to the file), "captions": [str, ...]}."""
    items = []
    with open(path, "rb") as f:  # bytes, decoded line by line, so bad UTF-8 is reported with its line number
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # -sig: a leading BOM is harmless
            except UnicodeDecodeError:
                raise ConfigError(f"{path.name} line {number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path.name} line {number}: malformed record (not JSON: {exc})") from None
            problem = _jsonl_problem(record)
            if problem:
                raise ConfigError(f"{path.name} line {number}: malformed record ({problem})")
            items.append(CaptionItem(path.parent / record["image"], tuple(record.get("captions", []))))
    return items


def _jsonl_problem(record) -> str | None:
    """What is wrong with one JSONL record, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if "image" not in record:
        return "missing 'image'"
    captions = record.get("captions", [])
    if not isinstance(record["image"], str) or not isinstance(captions, list) or \
            not all(isinstance(c, str) for c in captions):
        return "'image' must be a string and 'captions' a list of strings"
    return None


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _shown(record) -> str:
    """A malformed record, short enough for a one-line error."""
    text = json.dumps(record, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


def read_coco(path: Path, image_dir: Path | None = None) -> list[CaptionItem]:
    """COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.

    A malformed record is a one-line error naming it (images[i] / annotations[i] and its text)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not a COCO captions file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ConfigError(f"{path.name}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    files: dict = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise ConfigError(f"{path.name}: images[{i}] needs an 'id' and a 'file_name' string: {_shown(img)}")
        if img["id"] in files:
            raise ConfigError(f"{path.name}: images[{i}] repeats id {img['id']!r}: {_shown(img)}")
        files[img["id"]] = img["file_name"]
    captions: dict = {i: [] for i in files}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), (str, int, float)) \
                or isinstance(ann.get("caption"), bool):
            raise ConfigError(f"{path.name}: annotations[{i}] needs a 'caption' string: {_shown(ann)}")
        if not _is_id(ann.get("image_id")) or ann["image_id"] not in files:
            raise ConfigError(f"{path.name}: annotations[{i}] refers to no image in 'images': {_shown(ann)}")
        captions[ann["image_id"]].append(str(ann["caption"]).strip())
    root = image_dir or path.parent
    order = sorted(files, key=lambda k: (isinstance(k, str), k))  # ids may mix ints and strings
    return [CaptionItem(root / files[i], tuple(captions[i])) for i in order]


def read_folder(path: Path) -> list[CaptionItem]:
    """Every image in a folder (recursively), unlabeled."""
    return [CaptionItem(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]


class SceneItems:
    """The first n scenes of a split as CaptionItems, rendered and captioned on access
    (a list of 200k eagerly captioned scenes would take minutes to build)."""

    def __init__(self, split: str, n: int):
        from edgevlm.data import scenes

        self._scenes = scenes
        self.items = scenes.split(split, n)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> CaptionItem:
        scene, scenes = self.items[i], self._scenes
        return CaptionItem(lambda: scenes.render(scene), tuple(scenes.captions(scene)))


def read_scenes(split: str, n: int) -> SceneItems:
    return SceneItems(split, n)


def open_dataset(spec: str, n: int = 20_000) -> list[CaptionItem]:
    """'scenes' / 'scenes:val', a .jsonl file, a COCO .json file, or an image folder."""
    if spec.startswith("scenes"):
        split = spec.partition(":")[2] or "train"
        if split not in ("train", "val", "test"):
            raise ConfigError(f"unknown scenes split {split!r} (train, val or test)")
        return read_scenes(split, n)
    path = Path(spec)
    if path.is_dir():
        items = read_folder(path)
    elif path.suffix == ".jsonl" and path.is_file():
        items = read_jsonl(path)
    elif path.suffix == ".json" and path.is_file():
        items = read_coco(path)
    else:
        raise ConfigError(f"{path.name}: data must be 'scenes[:split]', a .jsonl file, a COCO .json file or an image folder")
    if not items:
        raise ConfigError(f"{path.name}: no images found")
    return items
