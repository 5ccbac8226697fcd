"""Synthetic captioning corpus: random shape scenes, their renderer and fixed splits.

The corpus trains the embedded default model from scratch on a laptop CPU, so scenes are
deliberately easy: 1-4 flat-coloured shapes on a muted background, placed so that
shapes never overlap and a two-object relation ("to the left of") is never borderline.
Captions and their parser live in `scene_text`; they are re-exported here.

    scene = split("train", 1)[0]
    render(scene).save("scene.png"); print(captions(scene)[0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from edgevlm.data.scene_text import (  # noqa: F401  (re-exported public API)
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SIZES,
    captions,
    mentioned_set,
    scene_set,
)

IMAGE_SIZE = 96  # default render size; object coordinates are in this canvas's pixels

# Saturated, mutually distant colours; backgrounds are muted mid-tones (_muted_tone), so
# every object colour stays at least ~80 RGB units away from every background pixel.
RGB = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 220, 40),
    "purple": (150, 60, 190),
    "orange": (250, 140, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
HALF_EXTENT = {"small": 7, "large": 14}  # half the object's bounding box, in px

NUM_OBJECTS_P = (0.40, 0.30, 0.15, 0.15)  # P(1), P(2), P(3), P(4) objects
# Counts > 1 come from repeated objects. Without ALL_SAME_P a count of four (all four
# objects alike) would be ~0.3% of scenes, too rare for a tiny model to learn "four".
ALL_SAME_P = 0.25  # chance that a multi-object scene is one repeated object
REPEAT_P = 0.2  # otherwise, chance that an object copies an earlier one
GAP = 2  # min px between bounding boxes
MIN_RELATION_PX = 20  # a stated relation's axis separates the centres by >= this ...
RELATION_RATIO = 2.0  # ... and by >= this times the other axis' separation
NOISE_SIGMA = 12.0
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then box-filtered (antialias)

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SEED_NAMESPACE = 0x5CE7E5  # keeps split seeds apart from other users of default_rng


@dataclass(frozen=True)
class SceneObject:
    """One shape; (x, y) is its centre in pixels of an IMAGE_SIZE canvas."""

    shape: str
    colour: str
    size: str
    x: int
    y: int

    def __post_init__(self):
        for value, allowed in ((self.shape, SHAPES), (self.colour, COLOURS), (self.size, SIZES)):
            if value not in allowed:
                raise ValueError(f"unknown scene attribute {value!r}; expected one of {allowed}")


@dataclass(frozen=True)
class Scene:
    """Objects on a background. gradient: bg_rgb (top) to bg_rgb2 (bottom);
    noise: bg_rgb plus Gaussian noise drawn from noise_seed."""

    objects: tuple[SceneObject, ...]
    background: str
    bg_rgb: tuple[int, int, int]
    bg_rgb2: tuple[int, int, int] | None = None
    noise_seed: int = 0

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {BACKGROUNDS}")
        if self.background == "gradient" and self.bg_rgb2 is None:
            raise ValueError("a gradient background needs bg_rgb2")


# ---------------------------------------------------------------------------- sampling


def _muted_tone(rng: np.random.Generator) -> tuple[int, int, int]:
    # Mid grey (far from white/black) with a slight tint (far from saturated colours).
    level = int(rng.integers(105, 160))
    return tuple(int(level + t) for t in rng.integers(-12, 13, size=3))


def _boxes_apart(a: SceneObject, b: SceneObject) -> bool:
    reach = HALF_EXTENT[a.size] + HALF_EXTENT[b.size] + GAP
    return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def _relation_clear(a: SceneObject, b: SceneObject) -> bool:
    major, minor = sorted((abs(a.x - b.x), abs(a.y - b.y)), reverse=True)
    return major >= MIN_RELATION_PX and major >= RELATION_RATIO * minor


def _sample_attributes(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    attrs: list[tuple[str, str, str]] = []
    all_same = n > 1 and rng.random() < ALL_SAME_P
    for _ in range(n):
        if attrs and all_same:
            attrs.append(attrs[0])
        elif attrs and rng.random() < REPEAT_P:
            attrs.append(attrs[int(rng.integers(len(attrs)))])
        else:
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = COLOURS[rng.integers(len(COLOURS))]
            attrs.append((shape, colour, SIZES[rng.integers(len(SIZES))]))
    return attrs


def _place(rng: np.random.Generator, attrs: list[tuple[str, str, str]]) -> tuple[SceneObject, ...]:
    """Rejection-sample centres: inside the canvas, boxes apart, relation unambiguous."""
    needs_relation = len(attrs) == 2 and attrs[0] != attrs[1]  # captions state a relation
    for _ in range(1000):
        objects: list[SceneObject] = []
        for shape, colour, size in attrs:
            h = HALF_EXTENT[size]
            for _ in range(100):
                x, y = (int(v) for v in rng.integers(h + 1, IMAGE_SIZE - h - 1, size=2))
                obj = SceneObject(shape, colour, size, x, y)
                if all(_boxes_apart(obj, o) for o in objects):
                    objects.append(obj)
                    break
            else:
                break  # no room left for this object: restart the whole layout
        if len(objects) == len(attrs) and (not needs_relation or _relation_clear(*objects)):
            return tuple(objects)
    raise RuntimeError(f"could not place {len(attrs)} objects on a {IMAGE_SIZE}px canvas")


def random_scene(rng: np.random.Generator, num_objects: int | None = None) -> Scene:
    """A random scene with `num_objects` (default: 1-4 by NUM_OBJECTS_P) objects."""
    if num_objects is None:
        num_objects = int(rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P)) + 1
    if not 1 <= num_objects <= len(NUM_OBJECTS_P):
        raise ValueError(f"num_objects must be 1..{len(NUM_OBJECTS_P)}, got {num_objects}")
    objects = _place(rng, _sample_attributes(rng, num_objects))
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg_rgb = _muted_tone(rng)
    bg_rgb2 = _muted_tone(rng) if background == "gradient" else None
    noise_seed = int(rng.integers(2**31)) if background == "noise" else 0
    return Scene(objects, background, bg_rgb, bg_rgb2, noise_seed)


def split(name: str, n: int) -> list[Scene]:
    """The first n scenes of split `name` ("train", "val" or "test"); deterministic.

    Scene i is drawn from its own generator seeded by (namespace, split, i), so splits
    never share seeds and a longer split extends a shorter one.
    """
    if name not in _SPLIT_IDS:
        raise ValueError(f"unknown split {name!r}; expected one of {tuple(_SPLIT_IDS)}")
    sid = _SPLIT_IDS[name]
    return [random_scene(np.random.default_rng([_SEED_NAMESPACE, sid, i])) for i in range(n)]


# --------------------------------------------------------------------------- rendering


def _background(scene: Scene, size: int) -> np.ndarray:
    """(size, size, 3) uint8 background."""
    top = np.asarray(scene.bg_rgb, dtype=np.float32)
    if scene.background == "gradient":
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]  # (size, 1, 1)
        img = top + t * (np.asarray(scene.bg_rgb2, dtype=np.float32) - top)  # (size, 1, 3)
        img = np.broadcast_to(img, (size, size, 3))
    else:
        img = np.broadcast_to(top, (size, size, 3))
    if scene.background == "noise":
        noise_rng = np.random.default_rng(scene.noise_seed)
        img = img + noise_rng.normal(0.0, NOISE_SIGMA, size=(size, size, 3)).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _star(cx: float, cy: float, h: float) -> list[tuple[float, float]]:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5  # first point straight up
    radii = np.where(np.arange(10) % 2 == 0, h, 0.45 * h)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, h: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "square":
        s = 0.9 * h  # a full-box square looks much heavier than the other shapes
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, h), fill=fill)
    elif shape == "cross":
        arm = h / 3
        draw.rectangle([cx - h, cy - arm, cx + h, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - h, cx + arm, cy + h], fill=fill)
    elif shape == "diamond":
        w = 0.8 * h  # narrower than tall, so it does not read as a rotated square
        draw.polygon([(cx, cy - h), (cx + w, cy), (cx, cy + h), (cx - w, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene as an RGB image of image_size x image_size; deterministic."""
    big = image_size * SUPERSAMPLE
    scale = big / IMAGE_SIZE  # scene px -> supersampled px
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for obj in scene.objects:
        # +0.5: an object's centre is the centre of pixel (x, y), not its corner.
        cx, cy = (obj.x + 0.5) * scale, (obj.y + 0.5) * scale
        _draw_shape(draw, obj.shape, cx, cy, HALF_EXTENT[obj.size] * scale, RGB[obj.colour] + (255,))
    # Box-filtering the RGBA layer (Pillow premultiplies alpha) gives clean antialiased
    # edges; compositing afterwards keeps the background noise off the shapes.
    layer = layer.resize((image_size, image_size), Image.Resampling.BOX)
    image = Image.fromarray(_background(scene, image_size), "RGB").convert("RGBA")
    return Image.alpha_composite(image, layer).convert("RGB")
