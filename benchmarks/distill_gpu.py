"""Issue 5's experiment, training half, sized for a short GPU lease (or any device).

    python benchmarks/distill_gpu.py --device cuda --budget 420 --out OUT

Trains on one device, same data for all:
  teacher     preset `teacher` from scratch (cross-entropy on reference captions)
  scratch     student preset from scratch, S steps
  distilled_* the same student distilled from the teacher, S steps each, one per setting in
              --variants (the setting is picked later on the VAL split, never on test)
Step counts come from a timing calibration on this device so the whole run fits --budget
seconds: the teacher gets --teacher-share of it, the students the rest (equal steps each).
Writes to OUT: each model's weights (model.safetensors; the teacher's in fp16 shards when
--teacher-fp16, so the files fit a small transfer limit), and run.json (configs, steps, wall
times, per-step times, final losses, device, versions).

Evaluation is not done here: `benchmarks/distill_experiment.py --from-run OUT` turns the
weights into checkpoints and bundles on the CPU, picks the variant on val, and scores on test.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model

from edgevlm.models.vlm import VLM
from edgevlm.prompt import Prompter
from edgevlm.train.cached_batches import CachedBatches
from edgevlm.train.default_model import default_setup
from edgevlm.train.distill import DistillConfig, DistillObjective
from edgevlm.train.presets import preset
from edgevlm.train.scenes_data import SceneBatches
from edgevlm.train.train import TrainConfig, caption_loss, resolve_device, train

# name -> DistillConfig kwargs. "kd": Hinton's soft targets; "kd_feat": mostly KL, plus matching
# the teacher's image embeddings and final hidden states (FitNets-style hints)
VARIANTS = {
    "kd": dict(temperature=2.0, alpha=0.5),
    "kd_feat": dict(temperature=1.0, alpha=0.2, feature_weight=0.5, feature_hidden=True),
}


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget", type=float, default=420, help="seconds of training, all models together")
    ap.add_argument("--teacher-share", type=float, default=0.4)
    ap.add_argument("--teacher", default="teacher", help="teacher preset")
    ap.add_argument("--student", default="default", help="student preset")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--pool", type=int, default=200_000, help="train-split scenes")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--teacher-lr", type=float, default=1e-3)
    ap.add_argument("--student-lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=8, help="processes that encode the data once")
    ap.add_argument("--max-steps", type=int, default=40_000)
    ap.add_argument("--teacher-fp16", action="store_true", help="write the teacher's weights as fp16 shards")
    ap.add_argument("--shard-mb", type=float, default=15.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/distill_gpu_work"),
                    help="train()'s own checkpoints (kept out of OUT, which holds only the final weights)")
    return ap.parse_args(argv)


def _step_time(model: VLM, objective, batches, device, steps: int = 25, warmup: int = 8) -> float:
    """Seconds per optimisation step (forward, backward, AdamW) on a throwaway copy."""
    model = copy.deepcopy(model).to(device).train()
    if hasattr(objective, "to"):
        objective.to(device)
    params = list(model.parameters()) + (list(objective.trainable.to(device).parameters())
                                         if getattr(objective, "trainable", None) is not None else [])
    opt = torch.optim.AdamW(params, lr=1e-4)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = objective(model, *batches.batch(i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()  # waits for the device
    return (time.perf_counter() - t0) / steps


def _shards(model: VLM, out: Path, stem: str, fp16: bool, shard_mb: float) -> list[str]:
    if not fp16:
        save_model(model, str(out / f"{stem}.safetensors"))
        return [f"{stem}.safetensors"]
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:  # a tied weight (lm_head = embed_tokens) is stored once, as save_model does
            continue
        seen.add(v.data_ptr())
        state[k] = v.detach().to("cpu", torch.float16).contiguous()
    files, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * 2
        if current and size + nbytes > shard_mb * 1e6:
            files.append(current)
            current, size = {}, 0
        current[name], size = tensor, size + nbytes
    files.append(current)
    names = []
    for i, shard in enumerate(files):
        names.append(f"{stem}-fp16-{i}.safetensors")
        save_file(shard, str(out / names[-1]))
    return names


def _fp16_drift(model: VLM, batches, device) -> float:
    """Max |logit| change from rounding the weights to fp16 (what the shards lose)."""
    model = model.to(device).eval()
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
        pixels, ids, _ = batches.batch(0)
        drift = (model(pixels, ids) - rounded(pixels, ids)).abs().max().item()
    model.to("cpu")
    return drift


def main(argv=None) -> None:
    args = _args(argv)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work
    t_start = time.time()
    _, tokenizer, prompt, pre, gen = default_setup()
    vocab, image_id = tokenizer.get_vocab_size(), tokenizer.token_to_id("<image>")
    source = SceneBatches(Prompter(tokenizer, prompt), pre, gen.eos_token_ids[0], tokenizer.token_to_id("<pad>"),
                          batch_size=args.batch_size, pool=args.pool)
    batches = CachedBatches(source, device=device, workers=args.workers)
    data_s = time.time() - t_start
    print(f"data: {len(batches)} examples encoded in {data_s:.0f} s", flush=True)

    torch.manual_seed(0)
    teacher = VLM(preset(args.teacher, vocab, image_id, image_size=pre.tile_size))
    student_cfg = preset(args.student, vocab, image_id, image_size=pre.tile_size)
    torch.manual_seed(1)
    student0 = VLM(student_cfg)  # every student starts from these same weights
    variants = [v for v in args.variants.split(",") if v]
    timing = {"teacher": _step_time(teacher, caption_loss, batches, device),
              "scratch": _step_time(student0, caption_loss, batches, device)}
    for v in variants:  # on a copy: DistillObjective freezes the teacher it is given
        timing[f"distilled_{v}"] = _step_time(student0, DistillObjective(copy.deepcopy(teacher),
                                                                         DistillConfig(**VARIANTS[v]), student_cfg),
                                              batches, device)
    print("seconds per step: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in timing.items()), flush=True)
    teacher_steps = min(args.max_steps, int(args.budget * args.teacher_share / timing["teacher"]) // 100 * 100)
    student_total = sum(v for k, v in timing.items() if k != "teacher")
    student_steps = min(args.max_steps, int(args.budget * (1 - args.teacher_share) / student_total) // 100 * 100)
    if teacher_steps < 100 or student_steps < 100:
        raise SystemExit(f"budget too small: {teacher_steps} teacher / {student_steps} student steps")
    print(f"steps: teacher {teacher_steps}, each student {student_steps} (batch {args.batch_size})", flush=True)

    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    run = {"argv": " ".join(sys.argv[1:]), "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "torch": torch.__version__, "python": platform.python_version(), "pool": len(batches),
           "batch_size": args.batch_size, "data_s": round(data_s, 1),
           "step_ms_calibration": {k: round(v * 1e3, 2) for k, v in timing.items()},
           "teacher_preset": args.teacher, "student_preset": args.student, "variants": {v: VARIANTS[v] for v in variants},
           "teacher_config": teacher.cfg.to_dict(), "student_config": student_cfg.to_dict(),
           "params": {"teacher": n_params(teacher), "student": n_params(student0)}, "models": {}}

    def fit(name, model, objective, steps, lr):
        t0 = time.time()
        model = train(model, batches, TrainConfig(steps=steps, lr=lr, device=str(device), checkpoint_every=10**9),
                      work / name, objective=objective)
        wall = time.time() - t0
        losses = getattr(objective, "last", None)
        print(f"{name}: {steps} steps in {wall:.0f} s", flush=True)
        run["models"][name] = {"steps": steps, "lr": lr, "train_s": round(wall, 1), "last_loss_parts": losses or None}
        return model

    teacher = fit("teacher", teacher, caption_loss, teacher_steps, args.teacher_lr)
    run["teacher_fp16_max_logit_drift"] = _fp16_drift(teacher, batches, device) if args.teacher_fp16 else None
    run["models"]["teacher"]["files"] = _shards(teacher, args.out, "teacher", args.teacher_fp16, args.shard_mb)
    (args.out / "run.json").write_text(json.dumps(run, indent=2))  # what exists so far survives a cut-off
    jobs = [("scratch", caption_loss)] + [
        (f"distilled_{v}", DistillObjective(teacher, DistillConfig(**VARIANTS[v]), student_cfg)) for v in variants]
    for name, objective in jobs:
        model = fit(name, copy.deepcopy(student0), objective, student_steps, args.student_lr)
        run["models"][name]["files"] = _shards(model, args.out, name, False, args.shard_mb)
        (args.out / "run.json").write_text(json.dumps(run, indent=2))
    run["total_s"] = round(time.time() - t_start, 1)
    (args.out / "run.json").write_text(json.dumps(run, indent=2))
    print(json.dumps({"total_s": run["total_s"], "steps": {k: v["steps"] for k, v in run["models"].items()}}))


if __name__ == "__main__":
    main()
