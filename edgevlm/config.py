"""Model configuration: small, frozen, nested dataclasses with a JSON round-trip.

No hidden globals and no environment switches: everything a model needs to be rebuilt
is in a VLMConfig, and a bundle's edgevlm.json carries it whole.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from edgevlm.errors import ConfigError
from edgevlm.mapping import check_keys


def _from_dict(cls, data):
    """Build a (nested) dataclass from a dict, rejecting unknown keys by name."""
    check_keys(cls, data, cls.__name__)
    kwargs = {}
    for name, value in data.items():
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None:
            value = _from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a missing required field
        raise ConfigError(f"{cls.__name__}: {exc}") from None
    obj.validate()
    return obj


_SCALAR_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str}
_MAY_BE_ZERO = {"image_token_id"}  # every other int field is a size or a count
_INT_LIMIT = 1 << 24  # no size of a model this runtime can run comes near
_INT_LIMITS = {"num_layers": 1024}  # a loop builds / binds each layer: keep a typo from taking hours


class _Config:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return _from_dict(cls, data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Types as declared (an int field takes no bool or float), finite floats, and sizes >= 1
        (a hostile or hand-edited config must not reach a division, a shape or an allocation)."""
        for f in fields(self):
            value = getattr(self, f.name)
            expected = _SCALAR_TYPES.get(f.type)
            if expected is None:  # a nested config, validated on its own
                continue
            if not isinstance(value, expected) or (f.type != "bool" and isinstance(value, bool)):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be of type {f.type}, got {value!r}")
            if f.type == "float" and not math.isfinite(value):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be finite, got {value}")
            if f.type == "int":
                low, high = (0 if f.name in _MAY_BE_ZERO else 1), _INT_LIMITS.get(f.name, _INT_LIMIT)
                if not low <= value <= high:
                    raise ConfigError(f"{type(self).__name__}.{f.name} must be in {low}..{high}, got {value}")


@dataclass(frozen=True)
class VisionConfig(_Config):
    """SigLIP-style encoder: patch conv, learned positions, pre-LN blocks, GELU-tanh MLP."""

    image_size: int = 96
    patch_size: int = 8
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 512
    layer_norm_eps: float = 1e-6

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    def validate(self) -> None:
        super().validate()
        if self.image_size % self.patch_size:
            raise ConfigError("vision.image_size must be a multiple of vision.patch_size")
        if self.hidden_size % self.num_heads:
            raise ConfigError("vision.hidden_size must be a multiple of vision.num_heads")


@dataclass(frozen=True)
class ProjectorConfig(_Config):
    """Pixel shuffle (space-to-depth by scale_factor) followed by one linear layer."""

    scale_factor: int = 2


@dataclass(frozen=True)
class TextConfig(_Config):
    """Llama-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU."""

    vocab_size: int = 128
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        super().validate()
        if self.hidden_size % self.num_heads:
            raise ConfigError("text.hidden_size must be a multiple of text.num_heads")
        if self.num_kv_heads == 0 or self.num_heads % self.num_kv_heads:
            raise ConfigError("text.num_heads must be a multiple of text.num_kv_heads")
        if self.head_dim % 2:
            raise ConfigError("text head_dim must be even (rotary embeddings)")


@dataclass(frozen=True)
class VLMConfig(_Config):
    """A whole vision-language model: vision tower → projector → decoder."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 2
    architecture: str = "edgevlm"

    @property
    def image_seq_len(self) -> int:
        """Image tokens per tile after the pixel shuffle."""
        return (self.vision.patches_per_side // self.projector.scale_factor) ** 2

    def validate(self) -> None:
        super().validate()
        if self.vision.patches_per_side % self.projector.scale_factor:
            raise ConfigError("patches per side must be a multiple of projector.scale_factor")
        if self.image_token_id >= self.text.vocab_size:
            raise ConfigError("image_token_id must be < text.vocab_size")


_NESTED = {
    ("VLMConfig", "vision"): VisionConfig,
    ("VLMConfig", "projector"): ProjectorConfig,
    ("VLMConfig", "text"): TextConfig,
}
