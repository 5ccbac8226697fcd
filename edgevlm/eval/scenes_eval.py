"""Quality of a captioner on the synthetic scenes corpus (held-out test split by default).

Reports BLEU-1..4 and CIDEr-D against every paraphrase of each scene, exact match of the
mentioned (count, size, colour, shape) set, and, on single-object scenes, how often the
object's colour and shape are both named correctly.
"""

from __future__ import annotations

from typing import Callable

from tqdm import tqdm

from edgevlm.data import scenes
from edgevlm.eval.metrics import caption_scores


def evaluate_scenes(caption_fn: Callable, n: int = 500, split: str = "test", progress: bool = True) -> dict:
    """caption_fn(PIL image) -> caption text."""
    test = scenes.split(split, n)
    candidates, references = {}, {}
    exact, single_total, single_ok = 0, 0, 0
    for i, scene in enumerate(tqdm(test, desc=f"eval {split}", unit="scene", disable=not progress)):
        text = caption_fn(scenes.render(scene))
        candidates[i], references[i] = text, scenes.captions(scene)
        mentioned = scenes.mentioned_set(text)
        exact += mentioned == scenes.scene_set(scene)
        if len(scene.objects) == 1:
            single_total += 1
            obj = scene.objects[0]
            single_ok += any(colour == obj.colour and shape == obj.shape for _, _, colour, shape in mentioned) \
                and len(mentioned) == 1
    result = {name: round(value, 4) for name, value in caption_scores(candidates, references).items()}
    result.update({
        "exact_match": round(exact / len(test), 4),
        "single_object_colour_shape": round(single_ok / max(1, single_total), 4),
        "single_object_scenes": single_total,
        "scenes": len(test),
        "split": split,
    })
    return result
