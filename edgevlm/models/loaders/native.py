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

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model
from tokenizers import Tokenizer

from edgevlm.config import VLMConfig
from edgevlm.errors import CheckpointError, EdgeVLMError
from edgevlm.image import PreprocessConfig
from edgevlm.models.loaders.hf_files import read_json
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


_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
                       "int64": "I64", "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def check_tensors(path: Path, cfg: VLMConfig) -> None:
    """Hold the safetensors header against the model `cfg` describes, before anything is allocated.

    The model is built on the meta device (shapes, no memory) and every tensor name, dtype and shape
    must match the file (a tied weight may be stored once). So a state.json that does not describe
    its weights fails here, and a hostile one cannot make us allocate a model the file does not hold.
    """
    import torch

    from edgevlm.models.vlm import VLM

    with torch.device("meta"):
        skeleton = VLM(cfg)
    expected = skeleton.state_dict()
    aliases: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    alias_of = {name: names for names in aliases.values() for name in names}
    with safe_open(str(path), framework="numpy") as f:
        stored = {name: (f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape())) for name in f.keys()}
    where = f"{path.parent.name}: {path.name}"
    unexpected = sorted(set(stored) - set(expected))
    missing = sorted(n for n in expected if n not in stored and not any(a in stored for a in alias_of.get(n, [])))
    if unexpected or missing:
        names = [f"unexpected {n}" for n in unexpected[:3]] + [f"missing {n}" for n in missing[:3]]
        raise CheckpointError(f"{where} does not match its config: {', '.join(names)}"
                              f"{' ...' if len(unexpected) + len(missing) > 6 else ''}")
    for name, (dtype, shape) in stored.items():
        want_dtype = _SAFETENSORS_DTYPES.get(str(expected[name].dtype).removeprefix("torch."), "?")
        want_shape = list(expected[name].shape)
        if (dtype, shape) != (want_dtype, want_shape):
            raise CheckpointError(f"{where}: tensor {name} is {dtype} {shape}, but the config needs "
                                  f"{want_dtype} {want_shape}")


def _detect(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "model.safetensors").is_file()


def _load(path: Path) -> LoadedCheckpoint:
    from edgevlm.models.vlm import VLM

    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path.name}: native checkpoint is missing {', '.join(missing)}")
    state, info = read_json(path / "state.json"), read_json(path / "export.json")
    try:
        cfg = VLMConfig.from_dict(state.get("config"))
        check_tensors(path / "model.safetensors", cfg)  # before the model is allocated
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
