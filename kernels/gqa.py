"""Decoder attention lowered onto ONNX Runtime's `com.microsoft.GroupQueryAttention`.

In PyTorch the model keeps its reference path (rotary, scatter into the cache, masked
attention: edgevlm.models.decoder). While `torch.onnx.export` traces a module whose
attention carries a `GQALowering`, the whole block - rotary, cache write, causal attention
over the valid slots - becomes one contrib op:

    query [B, S, H*hd], key/value [B, S, KVH*hd]   (before rotary; do_rotary=1)
    past_key/past_value [B, KVH, T_max, hd]         (the cache; present_* has the same shape)
    seqlens_k [B] int32 = last position of the row (total length - 1)
    total_sequence_length [] int32
    cos_cache/sin_cache [max_pos, hd/2]             (initializers, rotate-half layout)
    -> output [B, S, H*hd], present_key/present_value [B, KVH, T_max, hd]

Because present has the past's shape, the graph keeps the default decoder's interface, and a
runtime may bind one buffer per layer as both past and present (ORT then writes only the new
tokens in place). Positions are those of the runtime's contract: every row of a batch holds
the same positions, and a run's positions follow on from the tokens already in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgevlm.config import TextConfig


@dataclass(frozen=True)
class GQALowering:
    num_heads: int
    kv_heads: int
    scale: float
    cos_cache: torch.Tensor  # [max_pos, hd/2]
    sin_cache: torch.Tensor  # [max_pos, hd/2]

    @classmethod
    def for_config(cls, cfg: TextConfig) -> "GQALowering":
        hd = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))  # [hd/2]
        angles = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)[:, None] * inv_freq  # [P, hd/2]
        return cls(cfg.num_heads, cfg.num_kv_heads, hd ** -0.5, angles.cos(), angles.sin())

    def __call__(self, q, k, v, position_ids, k_cache, v_cache):
        """q [B, S, H*hd], k/v [B, S, KVH*hd] (no rotary yet), caches [B, KVH, T, hd]
        -> attention output [B, S, H*hd], updated caches [B, KVH, T, hd]."""
        seqlens_k = position_ids[:, -1].to(torch.int32)  # [B]
        total = (position_ids.max() + 1).to(torch.int32)  # []
        out, k_new, v_new = torch.onnx.ops.symbolic_multi_out(
            "com.microsoft::GroupQueryAttention",
            [q, k, v, k_cache, v_cache, seqlens_k, total, self.cos_cache, self.sin_cache],
            attrs={"num_heads": self.num_heads, "kv_num_heads": self.kv_heads, "scale": self.scale,
                   "do_rotary": 1, "rotary_interleaved": 0},
            dtypes=[q.dtype, k_cache.dtype, v_cache.dtype],
            shapes=[q.shape, k_cache.shape, v_cache.shape],
            version=1,
        )
        return out, k_new, v_new


def use_gqa(decoder, enabled: bool = True) -> None:
    """Make (or stop making) every attention block of `decoder` export as GroupQueryAttention.
    PyTorch execution is unchanged either way."""
    lowering = GQALowering.for_config(decoder.cfg) if enabled else None
    for layer in decoder.layers:
        layer.self_attn.lowering = lowering
