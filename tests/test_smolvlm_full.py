"""A full-size SmolVLM-256M-shaped random checkpoint: load -> export -> ONNX parity with transformers.

SigLIP-B/16 @ 512 (12 layers, 768 wide, 12 heads, MLP 3072), scale factor 4 -> 64 tokens per tile,
SmolLM2-135M text (576 wide, 30 layers, 9 heads / 3 KV heads, MLP 1536, vocab 49280, RoPE theta
1e5), tied embeddings, bf16 weights in two shards. Single tile (--no-split) to keep it short.
Slow (minutes on 2 cores); run with `pytest -m slow tests/test_smolvlm_full.py -s` to see timings.
"""

import dataclasses
import time

import numpy as np
import pytest
import torch

import edgevlm
from edgevlm.models.registry import load_checkpoint
from tests.smolvlm_fixtures import build_checkpoint, random_photo, reference_inputs

pytestmark = pytest.mark.slow
PROMPT = "Can you describe this image?"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgevlm.export.to_onnx import export_bundle

    root = tmp_path_factory.mktemp("smolvlm256m")
    times = {}
    t = time.perf_counter()
    ckpt = build_checkpoint(root / "checkpoint", "smolvlm-256m")
    times["build_reference_s"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = load_checkpoint(ckpt.path)
    times["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    export_bundle(loaded.model, loaded.tokenizer, root / "bundle", preprocess=loaded.preprocess.to_dict(),
                  prompt=loaded.prompt.to_dict(), special_tokens=loaded.special_tokens,
                  generation=loaded.generation.to_dict(), progress=False)
    times["export_s"] = time.perf_counter() - t
    del loaded
    print("\nSmolVLM-256M-shaped timings: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return ckpt, root / "bundle"


def test_shape_is_smolvlm_256m(exported):
    ckpt, bundle = exported
    cfg = edgevlm.load(bundle, threads=2).config
    vision = (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.num_layers, cfg.vision.hidden_size)
    assert vision == (512, 16, 12, 768) and cfg.vision.num_heads == 12 and cfg.vision.intermediate_size == 3072
    assert (cfg.text.hidden_size, cfg.text.num_layers, cfg.text.num_heads, cfg.text.num_kv_heads) == (576, 30, 9, 3)
    assert cfg.image_seq_len == 64 and cfg.text.vocab_size == 49280 and cfg.text.tie_word_embeddings
    assert cfg.text.intermediate_size == 1536 and cfg.text.rope_theta == 100000.0
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    assert 200e6 < n_params < 260e6


def test_single_tile_logits_and_greedy_match_transformers(exported):
    ckpt, bundle = exported
    vlm = edgevlm.load(bundle, threads=2)
    image = random_photo(640, 480, seed=5)
    ref = reference_inputs(ckpt, image, PROMPT, split=False)
    t = time.perf_counter()
    with torch.no_grad():
        out = ckpt.model.generate(**ref, do_sample=False, max_new_tokens=8, eos_token_id=None, pad_token_id=0,
                                  output_logits=True, return_dict_in_generate=True)
    expected_tokens = out.sequences[0, ref["input_ids"].shape[1]:].tolist()
    torch_s = time.perf_counter() - t
    t = time.perf_counter()
    result = vlm.run(image, PROMPT, split=False, max_new_tokens=8, eos_token_ids=())
    onnx_s = time.perf_counter() - t
    print(f"\n8 tokens, 1 tile: transformers {torch_s:.1f} s, edgevlm runtime {onnx_s:.1f} s")
    assert result.tiles == 1 and result.prompt_tokens == ref["input_ids"].shape[1]
    assert result.token_ids == expected_tokens
    # first-token logits through the three graphs vs transformers
    from edgevlm.image import preprocess
    from edgevlm.runtime.decoder import OnnxDecoder

    pixels, rows, cols = preprocess(image, dataclasses.replace(vlm.preprocess_config, do_split=False))
    assert np.abs(pixels - ref["pixel_values"][0].numpy()).max() <= 1e-6
    ids = vlm.prompter.encode(PROMPT, rows, cols)
    assert ids == ref["input_ids"][0].tolist()
    (image_embeds,) = vlm.sessions["vision_encoder"].run(None, {"pixel_values": pixels})
    decoder = OnnxDecoder(vlm.sessions, vlm.config.text, vlm.embed_prompt(np.asarray(ids), image_embeds), len(ids) + 1)
    logits = decoder.start(1)[0]
    assert np.abs(logits - out.logits[0][0].numpy()).max() <= 1e-3
