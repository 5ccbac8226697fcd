"""SigLIP-style vision encoder: patch conv, learned position embeddings, pre-LN blocks."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from edgevlm.config import VisionConfig
from edgevlm.kernels.attention import get_attention


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, attention: str):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attend = get_attention(attention)
        self.lowering = None  # export only: edgevlm.kernels.mha.use_mha sets an MHALowering

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        if self.lowering is not None and torch.onnx.is_in_onnx_export():
            # one com.microsoft.MultiHeadAttention: [B, N, D] in and out
            return self.out_proj(self.lowering(self.q_proj(x), self.k_proj(x), self.v_proj(x)))

        def heads(t):  # [B, N, D] -> [B, H, N, hd]
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        out = self.attend(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                          None, self.head_dim ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))  # [B, N, D]


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.lowering = None  # export only: edgevlm.kernels.fast_gelu.use_fast_gelu sets one

    def forward(self, x):
        if self.lowering is not None and torch.onnx.is_in_onnx_export():
            return self.fc2(self.lowering(self.fc1, x))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, attention: str):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg, attention)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    """pixel_values [tiles, 3, H, W] -> patch features [tiles, N_patches, D_vision]."""

    def __init__(self, cfg: VisionConfig, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(cfg.patches_per_side ** 2, cfg.hidden_size))
        nn.init.normal_(self.position_embedding, std=0.02)
        self.layers = nn.ModuleList(VisionBlock(cfg, attention) for _ in range(cfg.num_layers))
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values)  # [tiles, D, H/p, W/p]
        x = x.flatten(2).transpose(1, 2)  # [tiles, N, D], patches row-major
        x = x + self.position_embedding
        for layer in self.layers:
            x = layer(x)
        return self.post_layernorm(x)
