"""Caption quality on a captioning dataset (JSONL / COCO JSON / image folder), not only scenes.

BLEU-1..4 and CIDEr-D against each image's reference captions; unlabeled images (a folder, or
JSONL records without captions) have nothing to score against and are only used for fidelity.
"""

from __future__ import annotations

from typing import Callable

from tqdm import tqdm

from edgevlm.errors import ConfigError
from edgevlm.eval.metrics import caption_scores


def item_source(item):
    """A CaptionItem's image as something the runtime can load (a path, or a rendered PIL image)."""
    return item.image() if callable(item.image) else item.image


def evaluate_items(caption_fn: Callable, items, progress: bool = True) -> dict:
    """caption_fn(image source) -> text; items: CaptionItems (only labeled ones are scored)."""
    labeled = [item for item in items if item.captions]
    if not labeled:
        raise ConfigError("the data has no reference captions to score against (use --reference for fidelity only)")
    candidates, references = {}, {}
    for i, item in enumerate(tqdm(labeled, desc="eval", unit="img", disable=not progress)):
        candidates[i], references[i] = caption_fn(item_source(item)), list(item.captions)
    result = {name: round(value, 4) for name, value in caption_scores(candidates, references).items()}
    result["images"] = len(labeled)
    return result
