"""Synthetic scene corpus: splits, captions <-> parser, tokenizer, renderer."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from edgevlm.data import scene_text
from edgevlm.data.scene_tokenizer import SPECIAL_TOKENS, build_scene_tokenizer, vocabulary
from edgevlm.data.scenes import (
    BACKGROUNDS,
    COLOURS,
    HALF_EXTENT,
    IMAGE_SIZE,
    RGB,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    captions,
    mentioned_set,
    random_scene,
    render,
    scene_set,
    split,
)


@pytest.fixture(scope="module")
def train():
    return split("train", 2000)


@pytest.fixture(scope="module")
def random_scenes():
    rng = np.random.default_rng(1234)
    return [random_scene(rng) for _ in range(300)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_scene_tokenizer()


def test_splits_are_deterministic_and_prefix_stable():
    assert split("val", 50) == split("val", 50)
    assert split("test", 100)[:10] == split("test", 10)
    a, b = split("test", 5), split("test", 5)
    for sa, sb in zip(a, b):
        assert render(sa).tobytes() == render(sb).tobytes()
    with pytest.raises(ValueError, match="unknown split"):
        split("dev", 1)


def test_splits_are_disjoint(train):
    test = split("test", 500)
    val = split("val", 500)
    assert not set(train) & set(test)
    assert not set(train) & set(val)
    assert not set(val) & set(test)


def test_every_caption_parses_back_to_the_scene(random_scenes):
    for scene in random_scenes:
        expected = scene_set(scene)
        caps = captions(scene)
        assert len(caps) >= 3
        assert caps[0].endswith(f"on a {scene.background} background")
        for cap in caps:
            assert cap == " ".join(cap.split()) and cap == cap.lower()
            assert mentioned_set(cap) == expected, (cap, expected)


def test_canonical_caption_is_independent_of_object_order(random_scenes):
    for scene in random_scenes:
        flipped = dataclasses.replace(scene, objects=scene.objects[::-1])
        assert captions(flipped)[0] == captions(scene)[0]


def test_parser_ignores_malformed_phrases():
    cap = "a small pink circle and two large red stars and a red circle and a large red star"
    assert mentioned_set(cap) == {(3, "large", "red", "star")}
    assert mentioned_set("") == frozenset()
    assert mentioned_set("four small blue crosses and a small blue cross") == {(4, "small", "blue", "cross")}


def test_relation_matches_geometry():
    left = SceneObject("circle", "red", "small", 20, 50)
    right = SceneObject("square", "blue", "large", 70, 55)
    scene = Scene((right, left), "flat", (128, 128, 128))
    caps = captions(scene)
    assert caps[0] == "a small red circle to the left of a large blue square on a flat background"
    assert "a large blue square to the right of a small red circle on a flat background" in caps
    top = SceneObject("star", "green", "small", 40, 15)
    scene = Scene((left, top), "noise", (128, 128, 128), noise_seed=3)
    assert captions(scene)[0] == "a small green star above a small red circle on a noise background"


def test_grouping_and_counts():
    objs = tuple(SceneObject("circle", "red", "small", 15 + 22 * i, 20) for i in range(3))
    extra = SceneObject("cross", "white", "large", 50, 70)
    scene = Scene(objs + (extra,), "gradient", (120, 120, 120), (150, 140, 130))
    caps = captions(scene)
    assert caps[0] == "three small red circles and a large white cross on a gradient background"
    assert caps[1].startswith("there are three")
    assert captions(Scene(objs[:2], "flat", (128, 128, 128)))[0] == "two small red circles on a flat background"


def test_tokenizer_covers_and_round_trips_captions(random_scenes, tokenizer):
    vocab = tokenizer.get_vocab()
    for i, tok in enumerate(SPECIAL_TOKENS):
        assert vocab[tok] == i
    assert set(vocabulary()) <= set(vocab)
    unk = vocab["<unk>"]
    for scene in random_scenes:
        for cap in captions(scene):
            ids = tokenizer.encode(cap).ids
            assert unk not in ids and len(ids) == len(cap.split())
            assert tokenizer.decode(ids, skip_special_tokens=True) == cap


def test_tokenizer_keeps_special_tokens_whole(tokenizer):
    enc = tokenizer.encode("<fake_token_around_image><global-img><image><image>")
    assert enc.ids == [3, 4, 2, 2]
    ids = tokenizer.encode("<|caption|>a small red circle on a flat background<|endoftext|>").ids
    assert ids[0] == 5 and ids[-1] == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a small red circle on a flat background"


def test_distribution_covers_everything(train):
    groups = [g for s in train for g in scene_set(s)]
    assert {g[0] for g in groups} == {1, 2, 3, 4}
    assert {g[1] for g in groups} == set(SIZES)
    assert {g[2] for g in groups} == set(COLOURS)
    assert {g[3] for g in groups} == set(SHAPES)
    assert {s.background for s in train} == set(BACKGROUNDS)
    n_objects = Counter(len(s.objects) for s in train)
    for n, p in zip((1, 2, 3, 4), (0.40, 0.30, 0.15, 0.15)):
        assert abs(n_objects[n] / len(train) - p) < 0.05


def test_objects_inside_apart_and_relations_clear(train):
    for scene in train:
        objs = scene.objects
        for o in objs:
            h = HALF_EXTENT[o.size]
            assert h <= o.x < IMAGE_SIZE - h and h <= o.y < IMAGE_SIZE - h
        for i, a in enumerate(objs):
            for b in objs[i + 1 :]:
                reach = HALF_EXTENT[a.size] + HALF_EXTENT[b.size]
                assert abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach
        if len(objs) == 2 and len(scene_set(scene)) == 2:
            d = sorted((abs(objs[0].x - objs[1].x), abs(objs[0].y - objs[1].y)))
            assert d[1] >= 20 and d[1] >= 2 * d[0]


def test_backgrounds_contrast_with_every_colour(train):
    for scene in train[:500]:
        for bg in (scene.bg_rgb, scene.bg_rgb2 or scene.bg_rgb):
            dist = min(np.linalg.norm(np.subtract(bg, rgb)) for rgb in RGB.values())
            assert dist > 70, (bg, dist)


def test_render_puts_object_colour_at_centre(random_scenes):
    for scene in random_scenes[:100]:
        image = render(scene)
        assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
        pixels = np.asarray(image).astype(int)
        for o in scene.objects:
            if o.shape in ("circle", "square", "diamond"):
                assert np.abs(pixels[o.y, o.x] - RGB[o.colour]).max() <= 4, o


def test_render_other_sizes():
    scene = split("train", 1)[0]
    assert render(scene, 64).size == (64, 64)
    assert render(scene, 128).size == (128, 128)


def test_invalid_attributes_raise():
    with pytest.raises(ValueError, match="unknown scene attribute"):
        SceneObject("blob", "red", "small", 10, 10)
    with pytest.raises(ValueError, match="unknown background"):
        Scene((), "stripes", (128, 128, 128))
    with pytest.raises(ValueError, match="num_objects"):
        random_scene(np.random.default_rng(0), num_objects=5)


def test_vocabulary_is_derived_from_the_grammar():
    words = set(vocabulary())
    assert {"circles", "crosses", "left", "right", "above", "below", "there", "image", "are"} <= words
    assert len(words) == len(scene_text.caption_words())
