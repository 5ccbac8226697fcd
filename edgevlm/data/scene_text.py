"""The caption language of the synthetic scene corpus: word lists, captions, parser.

Captions are lowercase words separated by single spaces with no punctuation, so a
word-level tokenizer covers every caption exactly. The grammar is small and fixed:

    caption  := template(desc, background)
    desc     := np | np relation np | np ("and" np)*
    np       := count size colour shape          e.g. "two large blue squares"

Functions here only read `.objects`, `.background` and object attributes, so this module
does not import `scenes` (which imports it).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgevlm.data.scenes import Scene, SceneObject

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES = ("small", "large")
BACKGROUNDS = ("flat", "gradient", "noise")

PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
}
COUNT_WORDS = ("a", "two", "three", "four")  # index + 1 is the count
MAX_COUNT = len(COUNT_WORDS)

# Relation of the first noun phrase to the second. Canonical captions only use the
# first of each pair (the left / upper object is named first), paraphrases the second.
RELATIONS = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}

# captions()[0] always uses TEMPLATES[0]; "{be}" is "is" or "are" by the first count.
TEMPLATES = (
    "{desc} on a {bg} background",
    "there {be} {desc} on a {bg} background",
    "an image of {desc} on a {bg} background",
)

Group = tuple[int, str, str, str]  # (count, size, colour, shape)

_SHAPE_OF_WORD = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_COUNT_OF_WORD = {w: i + 1 for i, w in enumerate(COUNT_WORDS)}


def caption_words() -> set[str]:
    """Every word any caption can contain, derived from the lists and templates."""
    words = set(COUNT_WORDS) | set(SIZES) | set(COLOURS) | set(BACKGROUNDS)
    words |= set(SHAPES) | set(PLURALS.values()) | {"and", "is", "are"}
    for phrase in RELATIONS.values():
        words |= set(phrase.split())
    for template in TEMPLATES:
        filled = template.replace("{desc}", "").replace("{bg}", "").replace("{be}", "")
        words |= set(filled.split())
    return words


def _attr_key(size: str, colour: str, shape: str) -> tuple[int, int, int]:
    return SIZES.index(size), COLOURS.index(colour), SHAPES.index(shape)


def scene_set(scene: Scene) -> frozenset[Group]:
    """{(count, size, colour, shape)}: the scene's objects grouped by attributes."""
    counts = Counter((o.size, o.colour, o.shape) for o in scene.objects)
    return frozenset((n, size, colour, shape) for (size, colour, shape), n in counts.items())


def _ordered_groups(scene: Scene) -> list[Group]:
    # Largest group first, then a fixed attribute order, so a caption is a function of
    # the image content alone (not of the order objects were sampled in).
    return sorted(scene_set(scene), key=lambda g: (-g[0], _attr_key(*g[1:])))


def noun_phrase(count: int, size: str, colour: str, shape: str) -> str:
    """ "a small red circle" / "three large blue squares"."""
    noun = shape if count == 1 else PLURALS[shape]
    return f"{COUNT_WORDS[count - 1]} {size} {colour} {noun}"


def relation(first: SceneObject, second: SceneObject) -> str:
    """Key of RELATIONS for `first` relative to `second`, by the larger axis difference."""
    dx, dy = first.x - second.x, first.y - second.y
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"  # image y grows downwards


def _descriptions(scene: Scene) -> list[str]:
    """Scene descriptions without the background; the first one is canonical."""
    groups = _ordered_groups(scene)
    if len(scene.objects) == 2 and len(groups) == 2:
        a, b = scene.objects
        if relation(a, b) in ("right", "below"):
            a, b = b, a  # canonical order: the left / upper object first
        np_a = noun_phrase(1, a.size, a.colour, a.shape)
        np_b = noun_phrase(1, b.size, b.colour, b.shape)
        forward = relation(a, b)
        backward = {"left": "right", "above": "below"}[forward]
        return [
            f"{np_a} {RELATIONS[forward]} {np_b}",
            f"{np_b} {RELATIONS[backward]} {np_a}",
        ]
    phrases = [noun_phrase(*g) for g in groups]
    descs = [" and ".join(phrases)]
    if len(phrases) > 1:
        descs.append(" and ".join(reversed(phrases)))
    return descs


def captions(scene: Scene) -> list[str]:
    """Paraphrases of the scene; captions(scene)[0] is the canonical training target."""
    out = []
    for d, desc in enumerate(_descriptions(scene)):
        # Alternative descriptions only with the plain template, to keep the list short.
        for template in TEMPLATES if d == 0 else TEMPLATES[:1]:
            be = "is" if desc.startswith("a ") else "are"
            out.append(template.format(desc=desc, bg=scene.background, be=be))
    return out


def mentioned_set(caption: str) -> frozenset[Group]:
    """Parse a caption back to {(count, size, colour, shape)}; malformed parts are ignored.

    A noun phrase is exactly `count size colour shape` (singular or plural noun
    accepted either way); repeated mentions of the same object kind add up, capped at
    MAX_COUNT so a rambling model cannot produce counts no scene has.
    """
    words = caption.lower().split()
    counts: Counter[tuple[str, str, str]] = Counter()
    for i in range(len(words) - 3):
        count = _COUNT_OF_WORD.get(words[i])
        size, colour, noun = words[i + 1 : i + 4]
        if count and size in SIZES and colour in COLOURS and noun in _SHAPE_OF_WORD:
            counts[(size, colour, _SHAPE_OF_WORD[noun])] += count
    return frozenset((min(n, MAX_COUNT), *key) for key, n in counts.items())
