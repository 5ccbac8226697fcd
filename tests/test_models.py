import torch

from edgevlm.config import VLMConfig
from edgevlm.kernels.attention import reference_attention, sdpa_attention
from edgevlm.models.vlm import VLM, CachedSession
from edgevlm.models.projector import pixel_shuffle


def _model(cfg, attention="sdpa", seed=0):
    torch.manual_seed(seed)
    return VLM(cfg, attention).eval()


def _inputs(cfg, seq_text=5):
    n_img = cfg.image_seq_len
    ids = [5, 6] + [cfg.image_token_id] * n_img + list(range(7, 7 + seq_text))
    pixels = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    return pixels, torch.tensor([ids])


def test_attention_reference_matches_sdpa():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 5, 8)
    k, v = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    mask = torch.rand(2, 1, 5, 9) > 0.3
    mask[..., 0] = True
    for m in (mask, None):
        torch.testing.assert_close(sdpa_attention(q, k, v, m, 0.3), reference_attention(q, k, v, m, 0.3), atol=1e-5, rtol=0)


def test_cached_decoding_equals_full_forward(tiny_cfg):
    model = _model(tiny_cfg)
    pixels, ids = _inputs(tiny_cfg)
    with torch.no_grad():
        full = model(pixels, ids)[0]  # [S, V]
        split = ids.shape[1] - 3
        session = CachedSession(model, max_len=ids.shape[1] + 4)
        embeds = model.merge(ids, model.encode_images(pixels))
        step_logits = [session.prefill(embeds[:, :split])[0]]
        for t in range(split, ids.shape[1]):
            step_logits.append(session.step(ids[:, t:t + 1])[0])
    torch.testing.assert_close(torch.stack(step_logits[:-1]), full[split - 1:-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(step_logits[-1], full[-1], atol=1e-5, rtol=0)


def test_reference_and_sdpa_models_agree(tiny_cfg):
    pixels, ids = _inputs(tiny_cfg)
    a, b = _model(tiny_cfg, "sdpa"), _model(tiny_cfg, "reference")
    with torch.no_grad():
        torch.testing.assert_close(a(pixels, ids), b(pixels, ids), atol=1e-5, rtol=0)


def test_pixel_shuffle_moves_neighbours_into_channels():
    # 4x4 grid, D=1, values = patch index: each output token holds a 2x2 neighbourhood.
    x = torch.arange(16.0).view(1, 16, 1)
    out = pixel_shuffle(x, 2)  # [1, 4, 4]
    assert out.shape == (1, 4, 4)
    assert sorted(out[0, 0].tolist()) == [0, 1, 4, 5]
    assert sorted(out[0, 3].tolist()) == [10, 11, 14, 15]


def test_config_round_trip(tiny_cfg):
    assert VLMConfig.from_dict(tiny_cfg.to_dict()) == tiny_cfg
    import json
    assert VLMConfig.from_dict(json.loads(json.dumps(tiny_cfg.to_dict()))) == tiny_cfg


def test_config_rejects_unknown_and_bad_values(tiny_cfg):
    import pytest
    from edgevlm.errors import ConfigError
    d = tiny_cfg.to_dict()
    d["text"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        VLMConfig.from_dict(d)
    d = tiny_cfg.to_dict()
    d["text"]["num_kv_heads"] = 3
    with pytest.raises(ConfigError):
        VLMConfig.from_dict(d)
