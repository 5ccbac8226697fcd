"""A small, resumable training loop for native edgevlm models (CPU friendly).

Checkpoints are safetensors (weights) + JSON (config, step, optimiser-free state): a run
interrupted at any point resumes from its last checkpoint with --resume.

Resuming reproduces the uninterrupted run bit for bit (same weights and optimiser state, on
the same machine and thread count): batches are a pure function of the step, the lr schedule
of (step, steps), the optimiser state and the torch RNG state are checkpointed. A run that
should pause half-way uses `stop_at`; resuming with a different `steps` changes the schedule,
and so the result (the resume says so).
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
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from edgevlm.config import VLMConfig
from edgevlm.errors import CheckpointError, ConfigError
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
    stop_at: int | None = None  # pause (checkpointing) after this step; the lr schedule still spans `steps`
    device: str = "cpu"  # "cuda" where a GPU is lent; checkpoints load on any device

# Trainable parts of an objective (distillation's feature projections): checkpointed beside the
# model, in their own file so model.safetensors stays what the loaders and export expect.
OBJECTIVE_FILE = "objective.safetensors"
RNG_FILE = "rng.pt"  # torch's CPU RNG state: nothing draws from it in the loop today, but resume must not depend on that


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (a GPU when one is visible) -> torch.device, with a
    one-line error for a device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this torch sees no GPU (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported: use cpu, cuda, cuda:N or auto")
    return device


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def caption_loss(model: VLM, pixels, ids, labels):
    logits = model(pixels, ids)  # [B, S, V]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def save_checkpoint(model: VLM, optimizer, step: int, out: Path, extra: torch.nn.Module | None = None,
                    schedule_steps: int | None = None) -> None:
    """Every file is written to a .tmp name and then renamed; state.json goes last, so the step it
    names always has complete files. extra: the objective's trainable module (or None)."""
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / "model.safetensors.tmp"))
    torch.save(optimizer.state_dict(), out / "optimizer.pt.tmp")
    torch.save(torch.get_rng_state(), out / f"{RNG_FILE}.tmp")
    if extra is not None:
        save_model(extra, str(out / f"{OBJECTIVE_FILE}.tmp"))
        os.replace(out / f"{OBJECTIVE_FILE}.tmp", out / OBJECTIVE_FILE)
    else:  # a stale file from an earlier run in this directory would be mistaken for this run's
        (out / OBJECTIVE_FILE).unlink(missing_ok=True)
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    os.replace(out / "optimizer.pt.tmp", out / "optimizer.pt")
    os.replace(out / f"{RNG_FILE}.tmp", out / RNG_FILE)
    state = {"step": step, "config": model.cfg.to_dict()}
    if schedule_steps is not None:
        state["schedule_steps"] = schedule_steps
    (out / "state.json.tmp").write_text(json.dumps(state))
    os.replace(out / "state.json.tmp", out / "state.json")


def _restore(out: Path, model: VLM, optimizer=None, extra: torch.nn.Module | None = None) -> None:
    """Weights from safetensors; optimiser state with weights_only=True (never unpickle code)."""
    has_extra = (out / OBJECTIVE_FILE).is_file()
    if optimizer is not None and has_extra != (extra is not None):
        raise CheckpointError(f"{out.name}: the checkpoint was made {'with' if has_extra else 'without'} feature "
                              "matching; resume with the options the run was started with")
    try:
        load_model(model, str(out / "model.safetensors"))
        if extra is not None:
            load_model(extra, str(out / OBJECTIVE_FILE))
        if optimizer is not None:
            # map to CPU first: a GPU run's optimiser state resumes on a CPU machine too; load_state_dict
            # then moves each state tensor to its parameter's device
            optimizer.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True, map_location="cpu"))
    except (RuntimeError, ValueError, SafetensorError) as exc:  # shapes / names / groups differ from this run's
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{out.name}: cannot resume, the checkpoint does not match this model ({first})") from None


def load_checkpoint(out: Path, optimizer=None):
    """-> (model, step)."""
    state = json.loads((out / "state.json").read_text())
    model = VLM(VLMConfig.from_dict(state["config"]))
    _restore(out, model, optimizer)
    return model, state["step"]


def train(model: VLM, batches, tc: TrainConfig, out: Path, resume: bool = False, log=print,
          objective=caption_loss) -> VLM:
    """objective(model, pixels, ids, labels) -> scalar loss (caption CE, or a DistillObjective).
    Trains on tc.device; returns the model on the CPU."""
    torch.manual_seed(tc.seed)
    device = resolve_device(tc.device)
    model.to(device)
    if hasattr(objective, "to"):  # the distillation teacher follows the student
        objective.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = getattr(objective, "trainable", None)  # e.g. distillation's feature projections
    if extra is not None:
        extra.to(device)
    params = list(model.parameters())
    if extra is not None:  # appended after the model's groups, so the model's optimiser state keeps its layout
        groups.append({"params": list(extra.parameters()), "weight_decay": tc.weight_decay})
        params += list(extra.parameters())
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.98))
    start = 0
    if resume and (out / "state.json").exists():
        _restore(out, model, optimizer, extra)
        state = json.loads((out / "state.json").read_text())
        start = state["step"]
        if (out / RNG_FILE).is_file():
            torch.set_rng_state(torch.load(out / RNG_FILE, weights_only=True))
        log(f"resumed from step {start}")
        if state.get("schedule_steps", tc.steps) != tc.steps:
            log(f"note: the lr schedule now spans {tc.steps} steps, not {state['schedule_steps']}: the result will "
                f"differ from an uninterrupted run (use stop_at / --stop-at to pause a run)")
    end = tc.steps if tc.stop_at is None else max(0, min(tc.steps, tc.stop_at))
    model.train()
    bar = tqdm(range(start, end), initial=start, total=tc.steps, desc="train", unit="step")
    t0, ema = time.time(), None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        pixels, ids, labels = (t.to(device, non_blocking=True) for t in batches.batch(step))
        loss = objective(model, pixels, ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", ex_s=f"{(step + 1 - start) * pixels.shape[0] / (time.time() - t0):.0f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == end:
            save_checkpoint(model, optimizer, step + 1, out, extra, schedule_steps=tc.steps)
    model.eval()
    return model.to("cpu")  # export and evaluation run on the CPU
