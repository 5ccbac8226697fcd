"""Prompt building: template, image placeholder expansion, tokenization (`tokenizers` only).

Image placeholders follow the Idefics3/SmolVLM rules so one code path serves our own
models and real checkpoints:
    single tile:  <fake><global-img><image>*N<fake>
    rows x cols:  for each row: (<fake><row_r_col_c><image>*N) per column, then "\\n";
                  then "\\n<fake><global-img><image>*N<fake>"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer

from edgevlm.errors import BundleError, ConfigError
from edgevlm.mapping import check_keys


@dataclass(frozen=True)
class PromptConfig:
    template: str = "{image}<|caption|>"  # "{image}" is required; "{prompt}" is optional
    default_prompt: str = ""
    image_token: str = "<image>"
    fake_image_token: str = "<fake_token_around_image>"
    global_image_token: str = "<global-img>"
    image_seq_len: int = 36  # image tokens per tile
    add_special_tokens: bool = False  # let the tokenizer add e.g. a BOS token

    def __post_init__(self):
        for name in ("template", "default_prompt", "image_token", "fake_image_token", "global_image_token"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"prompt config {name} must be a string, got {getattr(self, name)!r}")
        if "{image}" not in self.template or not self.image_token:
            raise ConfigError("prompt config template must contain {image} and image_token must not be empty")
        seq = self.image_seq_len
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= 1 << 16:
            raise ConfigError(f"prompt config image_seq_len must be an integer in 1..65536, got {self.image_seq_len!r}")
        if not isinstance(self.add_special_tokens, bool):
            raise ConfigError(f"prompt config add_special_tokens must be true or false, "
                              f"got {self.add_special_tokens!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PromptConfig":
        return cls(**check_keys(cls, data, "prompt config"))

    @property
    def takes_prompt(self) -> bool:
        return "{prompt}" in self.template


def expand_image(cfg: PromptConfig, rows: int, cols: int) -> str:
    """The placeholder text for one image split into rows x cols tiles (0, 0: single tile)."""
    tile = cfg.image_token * cfg.image_seq_len
    global_view = f"{cfg.fake_image_token}{cfg.global_image_token}{tile}{cfg.fake_image_token}"
    if rows == 0 and cols == 0:
        return global_view
    text = ""
    for r in range(rows):
        for c in range(cols):
            text += f"{cfg.fake_image_token}<row_{r + 1}_col_{c + 1}>{tile}"
        text += "\n"
    return text + "\n" + global_view


class Prompter:
    """Turns (prompt text, image tiling) into token ids and generated ids back into text."""

    def __init__(self, tokenizer: Tokenizer, cfg: PromptConfig):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.image_token_id = tokenizer.token_to_id(cfg.image_token)
        if self.image_token_id is None:
            raise BundleError(f"tokenizer has no image token {cfg.image_token!r}")

    @classmethod
    def from_file(cls, path: Path, cfg: PromptConfig) -> "Prompter":
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise BundleError(f"malformed tokenizer file {Path(path).name}: {str(exc).splitlines()[0][:120]}") from None
        return cls(tokenizer, cfg)

    def text(self, prompt: str | None, rows: int = 0, cols: int = 0) -> str:
        if prompt and not self.cfg.takes_prompt:
            raise ConfigError("this model takes no text prompt (it only captions); drop --prompt")
        prompt = prompt if prompt else self.cfg.default_prompt
        return self.cfg.template.replace("{image}", expand_image(self.cfg, rows, cols)).replace("{prompt}", prompt)

    def encode(self, prompt: str | None, rows: int = 0, cols: int = 0) -> list[int]:
        return self.tokenizer.encode(self.text(prompt, rows, cols), add_special_tokens=self.cfg.add_special_tokens).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def token_text(self, token_id: int) -> str:
        """Text of one token for streaming (special tokens print as nothing)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=True)
