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
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image, captions = record["image"], record.get("captions", [])
                if not isinstance(image, str) or not isinstance(captions, list) or \
                        not all(isinstance(c, str) for c in captions):
                    raise TypeError("'image' must be a string and 'captions' a list of strings")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{path.name} line {number}: malformed record ({exc})") from None
            items.append(CaptionItem(path.parent / image, tuple(captions)))
    return items


def read_coco(path: Path, image_dir: Path | None = None) -> list[CaptionItem]:
    """COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {img["id"]: img["file_name"] for img in data["images"]}
        captions: dict = {i: [] for i in files}
        for ann in data["annotations"]:
            captions[ann["image_id"]].append(str(ann["caption"]).strip())
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path.name}: not a COCO captions file ({type(exc).__name__}: {exc})") from None
    root = image_dir or path.parent
    return [CaptionItem(root / files[i], tuple(captions[i])) for i in sorted(files)]


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
