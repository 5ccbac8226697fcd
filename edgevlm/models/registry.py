"""Architecture registry: checkpoint formats register a loader; no if/elif chains.

A loader answers two questions: "is this directory mine?" (detect) and "load it"
(load -> LoadedCheckpoint). `load_checkpoint` asks each registered loader in turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer

from edgevlm.errors import CheckpointError
from edgevlm.image import PreprocessConfig
from edgevlm.prompt import PromptConfig
from edgevlm.runtime.generate import GenerationConfig


@dataclass
class LoadedCheckpoint:
    model: object  # edgevlm.models.vlm.VLM
    tokenizer: Tokenizer
    prompt: PromptConfig
    preprocess: PreprocessConfig
    generation: GenerationConfig
    special_tokens: dict


@dataclass(frozen=True)
class Loader:
    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], LoadedCheckpoint]


LOADERS: dict[str, Loader] = {}


def register(loader: Loader) -> Loader:
    LOADERS[loader.name] = loader
    return loader


def _ensure_builtin_loaders() -> None:
    # Importing the loader modules registers them; done here, explicitly, so registration
    # never depends on what the caller happened to import first.
    from edgevlm.models.loaders import native, smolvlm  # noqa: F401


def supported() -> list[str]:
    _ensure_builtin_loaders()
    return [f"{l.name} ({l.description})" for l in LOADERS.values()]


def load_checkpoint(path) -> LoadedCheckpoint:
    _ensure_builtin_loaders()
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path.name}: checkpoint directory not found")
    for loader in LOADERS.values():
        if loader.detect(path):
            return loader.load(path)
    raise CheckpointError(f"{path.name}: unsupported or unrecognised checkpoint; supported: {'; '.join(supported())}")
