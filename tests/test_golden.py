"""The embedded default model's greedy captions of the shipped samples are fixed, and the
ONNX runtime path and the PyTorch checkpoint path both produce exactly them."""

import json
from pathlib import Path

import pytest
import torch

import edgevlm
from edgevlm.image import load_image, preprocess
from edgevlm.models.registry import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "edgevlm" / "assets" / "samples").glob("*.png"))
GOLDEN = json.loads((Path(__file__).parent / "golden" / "default_captions.json").read_text())
CHECKPOINT = ROOT / "edgevlm" / "assets" / "default_checkpoint"


def test_every_sample_has_a_golden_caption():
    assert 5 <= len(SAMPLES) <= 10
    assert sorted(GOLDEN) == [p.name for p in SAMPLES]


@pytest.fixture(scope="module")
def runtime():
    return edgevlm.load(threads=2)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_onnx_runtime_golden(runtime, sample):
    result = runtime.run(sample)
    assert result.text == GOLDEN[sample.name]["caption"]
    assert result.token_ids == GOLDEN[sample.name]["token_ids"]


@pytest.fixture(scope="module")
def checkpoint():
    return load_checkpoint(CHECKPOINT)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_pytorch_checkpoint_golden(runtime, checkpoint, sample):
    pixels, rows, cols = preprocess(load_image(sample), checkpoint.preprocess)
    ids = torch.tensor([runtime.prompter.encode(None, rows, cols)])
    tokens = checkpoint.model.greedy(torch.from_numpy(pixels), ids, checkpoint.generation.max_new_tokens,
                                     eos_token_ids=checkpoint.generation.eos_token_ids)
    assert tokens == GOLDEN[sample.name]["token_ids"]
    assert runtime.prompter.decode(tokens) == GOLDEN[sample.name]["caption"]
