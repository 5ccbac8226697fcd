"""Llama-style decoder with a preallocated, explicit KV cache.

The cache is a pair of buffers per layer, k/v: [B, KVH, T_max, hd]. The token at position p
lives in slot p, so one rule gives both causality and cache validity: a query at position p
attends to slots 0..p. `forward` is functional (buffers in, updated buffers out) so the
same code traces to ONNX, where the buffers become graph inputs/outputs.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from edgevlm.config import TextConfig
from edgevlm.kernels.attention import get_attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float):
    """position_ids [B, S] -> cos, sin [B, 1, S, hd] (frequencies repeated twice, rotate-half form)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    angles = position_ids[..., None].float() * inv_freq  # [B, S, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [B, S, hd]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x, cos, sin):
    """x [B, H, S, hd]: rotate pairs (i, i + hd/2) by the position angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class DecoderAttention(nn.Module):
    def __init__(self, cfg: TextConfig, attention: str):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)
        self.attend = get_attention(attention)
        self.lowering = None  # export only: edgevlm.kernels.gqa.use_gqa sets a GQALowering

    def forward(self, x, cos, sin, position_ids, k_cache, v_cache):
        b, s, _ = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        if self.lowering is not None and k_cache is not None and torch.onnx.is_in_onnx_export():
            # one com.microsoft.GroupQueryAttention: rotary, cache write and attention fused
            out, k, v = self.lowering(self.q_proj(x), self.k_proj(x), self.v_proj(x), position_ids, k_cache, v_cache)
            return self.o_proj(out), k, v  # out [B, S, H*hd]
        q = self.q_proj(x).view(b, s, cfg.num_heads, hd).transpose(1, 2)  # [B, H, S, hd]
        k = self.k_proj(x).view(b, s, cfg.num_kv_heads, hd).transpose(1, 2)  # [B, KVH, S, hd]
        v = self.v_proj(x).view(b, s, cfg.num_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if k_cache is not None:
            # Write the S new entries into their slots: index [B, KVH, S, hd] along T.
            slots = position_ids[:, None, :, None].expand(b, cfg.num_kv_heads, s, hd)
            k = k_cache.scatter(2, slots, k)  # [B, KVH, T, hd]
            v = v_cache.scatter(2, slots, v)
        total = k.shape[2]
        mask = torch.arange(total, device=x.device)[None, None, None, :] <= position_ids[:, None, :, None]  # [B, 1, S, T]
        out = self.attend(q, k, v, mask, hd ** -0.5)  # [B, H, S, hd]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, cfg.num_heads * hd)), k, v


class DecoderMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, attention: str):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DecoderAttention(cfg, attention)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DecoderMLP(cfg)

    def forward(self, x, cos, sin, position_ids, k_cache, v_cache):
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, position_ids, k_cache, v_cache)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Decoder(nn.Module):
    def __init__(self, cfg: TextConfig, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, attention) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def hidden_states(self, inputs_embeds, position_ids, caches=None):
        """inputs_embeds [B, S, D], position_ids [B, S] -> (final hidden [B, S, D], new caches).

        caches: None (no cache: attend causally within the S tokens) or a list of
        (k, v) buffers per layer, each [B, KVH, T, hd]; the returned list is updated.
        """
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        x, new_caches = inputs_embeds, []
        for i, layer in enumerate(self.layers):
            k_cache, v_cache = caches[i] if caches is not None else (None, None)
            x, k, v = layer(x, cos, sin, position_ids, k_cache, v_cache)
            new_caches.append((k, v))
        return self.norm(x), new_caches

    def forward(self, inputs_embeds, position_ids, *flat_cache):
        """The exported graph: last-position logits [B, V] and the updated caches, flat
        (k0, v0, k1, v1, ...). lm_head runs on the last position only."""
        caches = list(zip(flat_cache[0::2], flat_cache[1::2]))
        hidden, new_caches = self.hidden_states(inputs_embeds, position_ids, caches)
        logits = self.lm_head(hidden[:, -1, :])  # [B, V]
        return (logits, *[t for kv in new_caches for t in kv])

    def empty_cache(self, batch: int, max_len: int, dtype=torch.float32):
        """Zeroed buffers: a list of (k, v), each [B, KVH, max_len, hd]."""
        shape = (batch, self.cfg.num_kv_heads, max_len, self.cfg.head_dim)
        return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in self.layers]
