"""Named model sizes for `edgevlm train` / `edgevlm distill` on the scenes vocabulary."""

from __future__ import annotations

from edgevlm.config import TextConfig, VisionConfig, VLMConfig
from edgevlm.errors import ConfigError

# (vision hidden, vision layers, vision heads, text hidden, text layers, text heads, kv heads, mlp multiplier)
_SIZES = {
    "nano": (64, 2, 2, 96, 2, 3, 1, 2),
    "micro": (96, 2, 3, 128, 3, 4, 2, 3),
    "default": (128, 3, 4, 192, 4, 6, 2, None),
    "teacher": (256, 6, 8, 384, 6, 6, 2, 4),
}


def preset(name: str, vocab_size: int, image_token_id: int, image_size: int = 96, patch_size: int = 8) -> VLMConfig:
    if name not in _SIZES:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(_SIZES)}")
    vh, vl, vheads, th, tl, theads, kv, mult = _SIZES[name]
    vision = VisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vh, num_layers=vl,
                          num_heads=vheads, intermediate_size=512 if mult is None else vh * mult)
    text = TextConfig(vocab_size=vocab_size, hidden_size=th, num_layers=tl, num_heads=theads, num_kv_heads=kv,
                      intermediate_size=512 if mult is None else th * mult, max_position_embeddings=128)
    return VLMConfig(vision=vision, text=text, image_token_id=image_token_id)


def names() -> list[str]:
    return list(_SIZES)
