"""Turn the weights written by benchmarks/distill_gpu.py into edgevlm checkpoints.

A GPU lease returns only final weights and run.json (small transfer limit): here each model
becomes a checkpoint directory (model.safetensors in fp32, state.json, tokenizer and export
info from the scenes setup) that `edgevlm export` / `eval` / `distill` accept. The teacher's
fp16 shards are merged and widened to fp32; run.json records the logit drift that rounding
caused, measured on the GPU before the transfer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from edgevlm.models.loaders.native import write_export_info
from edgevlm.train.default_model import default_setup, special_tokens


def import_run(run_dir: Path, work: Path) -> tuple[dict[str, Path], dict]:
    """-> ({model name: checkpoint dir}, run.json). Models run.json lists without files are skipped."""
    run = json.loads((run_dir / "run.json").read_text())
    _, tokenizer, prompt, pre, gen = default_setup()
    found = {}
    for name, info in run["models"].items():
        if not info.get("files"):
            continue
        state = {}
        for file in info["files"]:
            state.update({k: v.float() for k, v in load_file(str(run_dir / file)).items()})
        ckpt = work / f"{name}"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_file(state, str(ckpt / "model.safetensors"))
        config = run["teacher_config" if name == "teacher" else "student_config"]
        (ckpt / "state.json").write_text(json.dumps({"step": info["steps"], "config": config}))
        image_seq_len = _image_seq_len(config)
        write_export_info(ckpt, tokenizer, dataclasses.replace(prompt, image_seq_len=image_seq_len), pre, gen,
                          special_tokens(tokenizer))
        found[name] = ckpt
    return found, run


def _image_seq_len(config: dict) -> int:
    from edgevlm.config import VLMConfig

    return VLMConfig.from_dict(config).image_seq_len
