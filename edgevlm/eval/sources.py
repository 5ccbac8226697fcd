"""What `edgevlm eval` can score: a bundle, or a training checkpoint exported on the fly.

A checkpoint (model.safetensors + export.json, what `edgevlm train` / `distill` write) is exported
to a temporary bundle and run by the same ONNX runtime as a shipped bundle, so its numbers are
comparable with a bundle's and no second (PyTorch) captioning path has to be kept in step.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from edgevlm.errors import EdgeVLMError


def is_checkpoint(path) -> bool:
    return path is not None and (Path(path) / "model.safetensors").is_file() and (Path(path) / "export.json").is_file()


def _export_to_temp(path: Path, stack: ExitStack) -> Path:
    try:
        from edgevlm.export.to_onnx import export_bundle
        from edgevlm.models.registry import load_checkpoint
    except ImportError as exc:
        raise EdgeVLMError(f"{path.name} is a training checkpoint; evaluating one needs the export extra "
                           f"({exc.name} is missing): pip install 'edgevlm[export]', or export it first") from None
    ckpt = load_checkpoint(path)
    out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgevlm-eval-"))) / "bundle"
    export_bundle(ckpt.model, ckpt.tokenizer, out, preprocess=ckpt.preprocess.to_dict(), prompt=ckpt.prompt.to_dict(),
                  special_tokens=ckpt.special_tokens, generation=ckpt.generation.to_dict(), progress=False)
    return out


def open_model(path, threads: int, stack: ExitStack):
    """-> (runtime VLM, a short description of what was loaded). Temporary files live as long as `stack`."""
    import edgevlm

    if is_checkpoint(path):
        bundle = _export_to_temp(Path(path), stack)
        return edgevlm.load(bundle, threads=threads), f"{Path(path).name} (checkpoint, exported to a temporary bundle)"
    vlm = edgevlm.load(path, threads=threads)
    return vlm, f"{vlm.path.name} (bundle)"
