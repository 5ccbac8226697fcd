"""The whole vision-language model in PyTorch: vision tower -> projector -> decoder.

Three parts map one-to-one onto the three exported graphs:
    encode_images   pixel_values [tiles, 3, H, W] -> image_embeds [tiles, T_img, D]  (vision_encoder.onnx)
    decoder.embed_tokens  input_ids [B, S] -> inputs_embeds [B, S, D]                 (embed_tokens.onnx)
    decoder         inputs_embeds + positions + KV buffers -> last logits + KV        (decoder.onnx)
"""

from __future__ import annotations

import torch
from torch import nn

from edgevlm.config import VLMConfig
from edgevlm.models.decoder import Decoder
from edgevlm.models.projector import Projector
from edgevlm.models.vision import VisionEncoder


def _init_weights(module: nn.Module) -> None:
    """Small-normal init (std 0.02, GPT-2 style). Matters for tied embeddings: with
    nn.Embedding's default N(0, 1) the initial logits are ~sqrt(D) and training starts badly."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class VisionTower(nn.Module):
    """Vision encoder + projector as one module: the vision_encoder graph."""

    def __init__(self, cfg: VLMConfig, attention: str = "sdpa"):
        super().__init__()
        self.encoder = VisionEncoder(cfg.vision, attention)
        self.projector = Projector(cfg.projector, cfg.vision.hidden_size, cfg.text.hidden_size)

    def forward(self, pixel_values):
        return self.projector(self.encoder(pixel_values))


class VLM(nn.Module):
    def __init__(self, cfg: VLMConfig, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTower(cfg, attention)
        self.decoder = Decoder(cfg.text, attention)
        self.apply(_init_weights)

    def encode_images(self, pixel_values):
        return self.vision(pixel_values)

    def merge(self, input_ids, image_embeds):
        """Token embeddings [B, S, D] with the image-token slots replaced, in order, by the
        rows of image_embeds [tiles, T_img, D] (tile-major)."""
        embeds = self.decoder.embed_tokens(input_ids)
        slots = input_ids == self.cfg.image_token_id  # [B, S]
        flat = image_embeds.reshape(-1, image_embeds.shape[-1]).to(embeds.dtype)  # [tiles*T_img, D]
        if int(slots.sum()) != flat.shape[0]:
            raise ValueError(f"prompt has {int(slots.sum())} image tokens but the images give {flat.shape[0]} embeddings")
        embeds = embeds.clone()
        embeds[slots] = flat
        return embeds

    def forward(self, pixel_values, input_ids):
        """Training / reference forward: all-position logits [B, S, V], no cache."""
        embeds = self.merge(input_ids, self.encode_images(pixel_values))
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        hidden, _ = self.decoder.hidden_states(embeds, positions)
        return self.decoder.lm_head(hidden)

    @torch.no_grad()
    def greedy(self, pixel_values, input_ids, max_new_tokens: int, eos_token_ids=()):
        """Reference greedy decoding with the static cache: prefill once, then one step
        per token. input_ids [1, S]. Returns the new token ids (eos excluded)."""
        session = CachedSession(self, max_len=input_ids.shape[1] + max_new_tokens)
        logits = session.prefill(self.merge(input_ids, self.encode_images(pixel_values)))
        out = []
        for _ in range(max_new_tokens):
            token = int(logits[0].argmax())
            if token in eos_token_ids:
                break
            out.append(token)
            logits = session.step(torch.tensor([[token]]))
        return out


class CachedSession:
    """Explicit prefill()/step() over a preallocated KV cache (batch 1)."""

    def __init__(self, model: VLM, max_len: int):
        self.model = model
        self.cache = model.decoder.empty_cache(1, max_len)
        self.pos = 0

    def _run(self, embeds):
        s = embeds.shape[1]
        positions = torch.arange(self.pos, self.pos + s)[None]  # [1, S]
        flat = [t for kv in self.cache for t in kv]
        logits, *new = self.model.decoder(embeds, positions, *flat)
        self.cache = list(zip(new[0::2], new[1::2]))
        self.pos += s
        return logits  # [1, V]

    def prefill(self, inputs_embeds):
        return self._run(inputs_embeds)

    def step(self, token_ids):
        return self._run(self.model.decoder.embed_tokens(token_ids))
