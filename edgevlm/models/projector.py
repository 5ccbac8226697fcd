"""Pixel-shuffle projector: trade spatial tokens for channels, then map to the text width."""

from __future__ import annotations

import torch
from torch import nn

from edgevlm.config import ProjectorConfig


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, N, D] -> [B, N / s^2, D * s^2] for a square grid of N = side^2 patches.

    The channel order is the one Idefics3/SmolVLM checkpoints were trained with: first fold
    s neighbouring columns into channels, then s neighbouring rows.
    """
    b, n, d = x.shape
    side = int(round(n ** 0.5))
    x = x.reshape(b, side, side // scale, d * scale)  # [B, rows, cols/s, D*s]
    x = x.permute(0, 2, 1, 3)  # [B, cols/s, rows, D*s]
    x = x.reshape(b, side // scale, side // scale, d * scale * scale)  # [B, cols/s, rows/s, D*s*s]
    x = x.permute(0, 2, 1, 3)  # [B, rows/s, cols/s, D*s*s]
    return x.reshape(b, n // (scale * scale), d * scale * scale)


class Projector(nn.Module):
    """vision features [tiles, N, D_vision] -> image embeddings [tiles, N / s^2, D_text]."""

    def __init__(self, cfg: ProjectorConfig, vision_hidden: int, text_hidden: int):
        super().__init__()
        self.scale = cfg.scale_factor
        self.proj = nn.Linear(vision_hidden * cfg.scale_factor ** 2, text_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(x, self.scale))
