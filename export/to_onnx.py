"""Native PyTorch model -> validated ONNX bundle directory.

The bundle is built in a temporary sibling directory and renamed into place at the end,
so an interrupted export never leaves a half-written bundle under the requested name.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer
from tqdm import tqdm

from edgevlm.bundle import GRAPHS
from edgevlm.errors import EdgeVLMError
from edgevlm.export.graphs import EXPORTERS
from edgevlm.export.manifest import write_manifest
from edgevlm.export.validate import FP32_TOLERANCE, VALIDATORS, ExportValidationError
from edgevlm.models.vlm import VLM


def export_bundle(model: VLM, tokenizer: Tokenizer, out: Path, *, preprocess: dict, prompt: dict,
                  special_tokens: dict, generation: dict, overwrite: bool = False,
                  tolerance: float = FP32_TOLERANCE, progress: bool = True) -> dict:
    """Export, validate against PyTorch, and write the manifest. Returns the manifest."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgeVLMError(f"output directory {out.name} already exists; choose another or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        validation = {}
        steps = tqdm(GRAPHS, desc="export", unit="graph", disable=not progress)
        for name in steps:
            steps.set_postfix_str(name)
            path = work / f"{name}.onnx"
            EXPORTERS[name](model, path)
            validation[name] = VALIDATORS[name](model, path)
        bad = {k: v for k, v in validation.items() if not v <= tolerance}
        if bad:
            worst = ", ".join(f"{k} {v:.2e}" for k, v in bad.items())
            raise ExportValidationError(f"exported graphs disagree with PyTorch beyond {tolerance:g}: {worst}")
        tokenizer.save(str(work / "tokenizer.json"))
        manifest = write_manifest(
            work, architecture=model.cfg.architecture, config=model.cfg.to_dict(), preprocess=preprocess,
            prompt=prompt, special_tokens=special_tokens, generation=generation,
            validation={k: {"max_abs_diff": v, "tolerance": tolerance} for k, v in validation.items()},
        )
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
