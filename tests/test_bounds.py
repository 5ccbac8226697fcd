"""Bounded work: max_new_tokens and image tiles have hard caps, checked before any work; a prompt
longer than the context is refused before any graph runs; a timeout is a clean error."""

from pathlib import Path

import pytest
from PIL import Image

import edgevlm
from edgevlm.errors import ConfigError, GenerationError
from edgevlm.image import MAX_TILES_LIMIT, PreprocessConfig, num_tiles_bound, preprocess
from edgevlm.runtime.generate import MAX_NEW_TOKENS_CAP

SAMPLE = Path(__file__).resolve().parents[1] / "edgevlm" / "assets" / "samples" / "scene_00.png"


class _Untouchable:
    """Stands in for a graph session: any run means work started that should not have."""

    def run(self, *args, **kwargs):
        raise AssertionError("a graph ran")

    def io_binding(self):
        raise AssertionError("a graph ran")


@pytest.fixture
def vlm(tiny_bundle):
    return edgevlm.load(tiny_bundle[0], threads=1)


def _no_graph_may_run(vlm, monkeypatch):
    monkeypatch.setattr(vlm, "sessions", {name: _Untouchable() for name in vlm.sessions})


def test_max_new_tokens_cap_is_checked_before_the_image_is_read(vlm):
    with pytest.raises(GenerationError, match=f"max_new_tokens=.*1..{MAX_NEW_TOKENS_CAP}"):
        vlm.run("does-not-exist.png", max_new_tokens=MAX_NEW_TOKENS_CAP + 1)  # not an ImageError: checked first
    with pytest.raises(GenerationError, match="max_new_tokens"):
        vlm.run("does-not-exist.png", max_new_tokens=0)


def test_prompt_past_the_context_is_refused_before_any_graph_runs(vlm, monkeypatch):
    context = vlm.config.text.max_position_embeddings
    prompt_tokens = vlm.run(SAMPLE, max_new_tokens=1).prompt_tokens
    _no_graph_may_run(vlm, monkeypatch)
    with pytest.raises(GenerationError, match=f"exceeds the model's context of {context} tokens"):
        vlm.run(SAMPLE, max_new_tokens=context - prompt_tokens + 1)


def test_max_tiles_has_a_default_and_a_hard_cap():
    assert PreprocessConfig().max_tiles <= MAX_TILES_LIMIT
    with pytest.raises(ConfigError, match=f"at most {MAX_TILES_LIMIT}"):
        PreprocessConfig(max_tiles=MAX_TILES_LIMIT + 1)
    with pytest.raises(ConfigError, match="more than max_tiles"):  # a split that could exceed the cap is refused
        PreprocessConfig(tile_size=32, longest_edge=512, do_split=True, max_tiles=16)


@pytest.mark.parametrize("size", [(4000, 10), (10, 4000), (3000, 3000), (33, 32), (1, 1)])
def test_no_image_gives_more_tiles_than_the_bound(size):
    cfg = PreprocessConfig(tile_size=32, longest_edge=128, do_split=True, max_tiles=16)
    pixels, rows, cols = preprocess(Image.new("RGB", size), cfg)
    assert pixels.shape[0] <= num_tiles_bound(cfg) <= cfg.max_tiles + 1
    assert rows * cols <= cfg.max_tiles


def test_a_bundle_asking_for_too_many_tokens_is_refused_at_load(tiny_bundle, tmp_path):
    import json
    import shutil

    path = tmp_path / "b"
    shutil.copytree(tiny_bundle[0], path)
    manifest = json.loads((path / "edgevlm.json").read_text())
    manifest["generation"]["max_new_tokens"] = 10**6
    (path / "edgevlm.json").write_text(json.dumps(manifest))
    with pytest.raises(GenerationError, match="max_new_tokens"):
        edgevlm.load(path)


def test_timeout_is_a_generation_error(vlm):
    with pytest.raises(GenerationError, match="timed out"):
        vlm.run(SAMPLE, timeout=1e-9)
    assert vlm.run(SAMPLE, timeout=60).token_ids == vlm.run(SAMPLE).token_ids  # a generous one changes nothing

