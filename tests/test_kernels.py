"""Fused decoder attention (com.microsoft.GroupQueryAttention, shared KV buffer) vs the reference."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgevlm
from edgevlm.data import scenes
from edgevlm.errors import EdgeVLMError
from edgevlm.export.graphs import decoder_io_names, export_decoder
from tests.conftest import tiny_scene_setup

ATTENTION_CHAIN = {"Softmax", "ScatterElements", "ScatterND", "Trigonometric", "Cos", "Sin"}
NORM_CHAIN = {"Pow", "ReduceMean", "Sqrt", "Reciprocal"}
GELU_CHAIN = {"Tanh", "Erf", "Pow"}


def _setup(std=0.3):
    """The conftest tiny model with head_dim 16 (GroupQueryAttention on CPU needs a multiple of 8)."""
    model, tokenizer, pre, prompt, gen, special = tiny_scene_setup()
    cfg = model.cfg.replace(text=model.cfg.text.replace(hidden_size=64))
    torch.manual_seed(0)
    model = type(model)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, std)
    return model, tokenizer, pre, prompt, gen, special


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(default bundle, fused bundle, model): the same tiny model exported both ways."""
    from edgevlm.export.to_onnx import export_bundle

    model, tokenizer, pre, prompt, gen, special = _setup()
    root = tmp_path_factory.mktemp("kernels")
    kw = dict(preprocess=pre.to_dict(), prompt=prompt.to_dict(), special_tokens=special,
              generation=gen.to_dict(), progress=False)
    export_bundle(model, tokenizer, root / "default", **kw)
    export_bundle(model, tokenizer, root / "fused", attention="fused", **kw)
    return root / "default", root / "fused", model


def _ops(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_fused_decoder_has_only_fused_attention_and_norms(bundles):
    _, fused, model = bundles
    ops = _ops(fused / "decoder.onnx")
    assert ops["GroupQueryAttention"] == model.cfg.text.num_layers
    assert not ATTENTION_CHAIN & set(ops), ops
    # every norm after a residual add is a Skip norm; only the first layer's input norm is not
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * model.cfg.text.num_layers
    assert ops["SimplifiedLayerNormalization"] == 1
    assert not NORM_CHAIN & set(ops), ops
    assert "Softmax" in _ops(bundles[0] / "decoder.onnx")  # the counter does see an unfused chain


def test_fused_vision_has_one_mha_per_layer_and_matches_reference(bundles):
    _, fused, model = bundles
    ops = _ops(fused / "vision_encoder.onnx")
    layers = model.cfg.vision.num_layers
    assert ops["MultiHeadAttention"] == layers
    assert "Softmax" not in ops, ops
    assert ops["FastGelu"] == layers and not (GELU_CHAIN | NORM_CHAIN) & set(ops), ops
    # every norm is one LayerNormalization (2 per layer + the post-norm); no Skip fusion in the
    # vision graph: ORT's CPU SkipLayerNormalization measured slower there (export/graphs.py)
    assert ops["LayerNormalization"] == 2 * layers + 1 and "SkipLayerNormalization" not in ops, ops
    sess = ort.InferenceSession(str(fused / "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    (out,) = sess.run(None, {"pixel_values": pixels.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model.vision(pixels).numpy(), atol=1e-4, rtol=0)


@torch.no_grad()
def test_fused_decoder_matches_reference_over_prefill_and_decode(bundles):
    """Batch 2: prefill 7 tokens, then 5 decode steps, logits and written cache slots <= 1e-4."""
    _, fused, model = bundles
    dec = model.decoder
    sess = ort.InferenceSession(str(fused / "decoder.onnx"), providers=["CPUExecutionProvider"])
    names, _ = decoder_io_names(dec.cfg.num_layers)
    cache = [t for kv in dec.empty_cache(2, 20) for t in kv]
    g, start = torch.Generator().manual_seed(1), 0
    for length in (7, 1, 1, 1, 1, 1):
        embeds = torch.randn(2, length, dec.cfg.hidden_size, generator=g)
        positions = torch.arange(start, start + length)[None].expand(2, -1).contiguous()
        ref = dec(embeds, positions, *cache)
        out = sess.run(None, dict(zip(names, [t.numpy() for t in (embeds, positions, *cache)])))
        start += length
        np.testing.assert_allclose(out[0], ref[0].numpy(), atol=1e-4, rtol=0)
        for o, r in zip(out[1:], ref[1:]):
            np.testing.assert_allclose(o[:, :, :start], r[:, :, :start].numpy(), atol=1e-4, rtol=0)
        cache = list(ref[1:])


def test_fused_bundle_shares_kv_buffer_and_generates_the_default_tokens(bundles):
    default, fused, _ = bundles
    a, b = edgevlm.load(default, threads=1), edgevlm.load(fused, threads=1)
    assert b.sessions["decoder"].get_modelmeta().custom_metadata_map["edgevlm.kv_cache"] == "shared"
    assert "edgevlm.kv_cache" not in a.sessions["decoder"].get_modelmeta().custom_metadata_map
    distinct = set()
    for s in scenes.split("val", 3):
        image = scenes.render(s, 32)
        want = a.run(image).token_ids
        assert b.run(image).token_ids == want
        distinct |= set(want)
        assert (b.run(image, max_new_tokens=5, eos_token_ids=(), num_beams=3).token_ids
                == a.run(image, max_new_tokens=5, eos_token_ids=(), num_beams=3).token_ids)
    assert len(distinct) >= 4


def test_fused_export_refuses_head_dim_not_multiple_of_8(tiny_cfg, tmp_path):
    from edgevlm.models.vlm import VLM

    with pytest.raises(EdgeVLMError, match="multiple of 8"):
        export_decoder(VLM(tiny_cfg), tmp_path / "d.onnx", attention="fused")


def test_fused_decode_with_shared_buffer_equals_decode_without(bundles, monkeypatch):
    """The same fused graph, run with ping-pong buffers (past and present distinct) instead of one
    shared buffer per layer, generates the same tokens."""
    import edgevlm.runtime.decoder as runtime_decoder

    _, fused, _ = bundles
    image = scenes.render(scenes.split("val", 1)[0], 32)
    shared = edgevlm.load(fused, threads=1).run(image, max_new_tokens=8, eos_token_ids=()).token_ids
    monkeypatch.setattr(runtime_decoder, "shares_kv_buffer", lambda session: False)
    assert edgevlm.load(fused, threads=1).run(image, max_new_tokens=8, eos_token_ids=()).token_ids == shared


@pytest.mark.parametrize("which", [0, 1])  # default graph (ping-pong KV sets), fused graph (shared buffer)
def test_reused_step_bindings_equal_fresh_bindings(bundles, monkeypatch, which):
    """Decode steps reuse their IOBindings (buffers updated in place); a fresh binding per step,
    the reference path, gives the same tokens, greedy and with beams (KV rows reordered)."""
    from edgevlm.runtime.decoder import OnnxDecoder

    bundle = bundles[which]
    images = [scenes.render(s, 32) for s in scenes.split("val", 2)]
    kw = [dict(max_new_tokens=8, eos_token_ids=()), dict(max_new_tokens=6, eos_token_ids=(), num_beams=3)]
    vlm = edgevlm.load(bundle, threads=1)
    reused = [vlm.run(im, **k).token_ids for im in images for k in kw]
    monkeypatch.setattr(OnnxDecoder, "REUSE_BINDINGS", False)
    fresh = [vlm.run(im, **k).token_ids for im in images for k in kw]
    assert reused == fresh and len({tuple(t) for t in reused}) > 1
