"""A small, resumable training loop for native edgevlm models (CPU friendly).

Checkpoints are safetensors (weights) + JSON (config, step, optimiser-free state): a run
interrupted at any point resumes from its last checkpoint with --resume.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from edgevlm.config import VLMConfig
from edgevlm.models.vlm import VLM
from edgevlm.train.scenes_data import IGNORE


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def caption_loss(model: VLM, pixels, ids, labels):
    logits = model(pixels, ids)  # [B, S, V]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def save_checkpoint(model: VLM, optimizer, step: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / "model.safetensors.tmp"))
    torch.save(optimizer.state_dict(), out / "optimizer.pt.tmp")
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    os.replace(out / "optimizer.pt.tmp", out / "optimizer.pt")
    (out / "state.json").write_text(json.dumps({"step": step, "config": model.cfg.to_dict()}))


def _restore(out: Path, model: VLM, optimizer=None) -> None:
    """Weights from safetensors; optimiser state with weights_only=True (never unpickle code)."""
    load_model(model, str(out / "model.safetensors"))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))


def load_checkpoint(out: Path, optimizer=None):
    """-> (model, step)."""
    state = json.loads((out / "state.json").read_text())
    model = VLM(VLMConfig.from_dict(state["config"]))
    _restore(out, model, optimizer)
    return model, state["step"]


def train(model: VLM, batches, tc: TrainConfig, out: Path, resume: bool = False, log=print,
          objective=caption_loss) -> VLM:
    """objective(model, pixels, ids, labels) -> scalar loss (caption CE, or a DistillObjective)."""
    torch.manual_seed(tc.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.98))
    start = 0
    if resume and (out / "state.json").exists():
        _restore(out, model, optimizer)
        start = json.loads((out / "state.json").read_text())["step"]
        log(f"resumed from step {start}")
    model.train()
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="train", unit="step")
    t0, ema = time.time(), None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        pixels, ids, labels = batches.batch(step)
        loss = objective(model, pixels, ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", ex_s=f"{(step + 1 - start) * pixels.shape[0] / (time.time() - t0):.0f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
            save_checkpoint(model, optimizer, step + 1, out)
    model.eval()
    return model
