"""edgevlm's own checkpoints: what `edgevlm.train` writes.

    checkpoint/
      state.json          {"step": N, "config": VLMConfig}
      model.safetensors   weights (never pickle)
      tokenizer.json      the `tokenizers` tokenizer
      export.json         prompt, preprocess, generation defaults, special tokens
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model
from tokenizers import Tokenizer

from edgevlm.config import VLMConfig
from edgevlm.errors import CheckpointError, EdgeVLMError
from edgevlm.image import PreprocessConfig
from edgevlm.models.registry import Loader, LoadedCheckpoint, register
from edgevlm.prompt import PromptConfig
from edgevlm.runtime.generate import GenerationConfig

FILES = ("state.json", "model.safetensors", "tokenizer.json", "export.json")


def write_export_info(out: Path, tokenizer: Tokenizer, prompt: PromptConfig, preprocess: PreprocessConfig,
                      generation: GenerationConfig, special_tokens: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    info = {"prompt": prompt.to_dict(), "preprocess": preprocess.to_dict(), "generation": generation.to_dict(),
            "special_tokens": special_tokens}
    (out / "export.json").write_text(json.dumps(info, indent=2))


def _detect(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "model.safetensors").is_file()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} is malformed: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is malformed: expected a JSON object")
    return data


def _load(path: Path) -> LoadedCheckpoint:
    from edgevlm.models.vlm import VLM

    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path.name}: native checkpoint is missing {', '.join(missing)}")
    state, info = _read_json(path / "state.json"), _read_json(path / "export.json")
    try:
        cfg = VLMConfig.from_dict(state.get("config"))
        model = VLM(cfg)
        load_model(model, str(path / "model.safetensors"), strict=True)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        return LoadedCheckpoint(
            model=model.eval(), tokenizer=tokenizer,
            prompt=PromptConfig.from_dict(info["prompt"]),
            preprocess=PreprocessConfig.from_dict(info["preprocess"]),
            generation=GenerationConfig.from_dict(info["generation"]),
            special_tokens=info["special_tokens"],
        )
    except EdgeVLMError:
        raise
    except (SafetensorError, RuntimeError, KeyError, TypeError, ValueError, OSError) as exc:
        # load_model reports missing/unexpected/mis-shaped tensors as RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path.name}: checkpoint does not match its config: {first[:200]}") from None
    except Exception as exc:  # tokenizers raises bare Exception on malformed JSON
        raise CheckpointError(f"{path.name}: cannot read checkpoint: {str(exc).splitlines()[0][:200]}") from None


NATIVE = register(Loader("edgevlm", "checkpoints written by edgevlm train / distill", _detect, _load))
