"""`edgevlm train` and `edgevlm distill` (need the `train` extra: torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgevlm.errors import ConfigError, EdgeVLMError


def _torch_side():
    try:
        import torch  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as exc:
        raise EdgeVLMError(f"training needs the train extra ({exc.name} is missing): pip install 'edgevlm[train]'") from None


def _student_config(spec: str, vocab: int, image_token_id: int, tile: int):
    from edgevlm.config import VLMConfig
    from edgevlm.train.presets import names, preset

    if spec in names():
        return preset(spec, vocab, image_token_id, image_size=tile)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"student {spec!r} is neither a preset ({', '.join(names())}) nor a config file")
    try:
        return VLMConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path.name}: malformed config ({exc})") from None


def _caption_unlabeled(items, teacher, prompter, pre, gen, out: Path):
    """Sequence-level KD: the teacher captions every unlabeled image once (cached in OUT)."""
    import torch
    from tqdm import tqdm

    from edgevlm.data.datasets import CaptionItem
    from edgevlm.image import preprocess
    from edgevlm.train.scenes_data import item_image

    if not isinstance(items, list):  # the scenes corpus (lazy) is fully labeled
        return items
    cache_path = out / "teacher_captions.jsonl"
    cache = {}
    if cache_path.exists():
        cache = _read_cache(cache_path)
    todo = [i for i, item in enumerate(items) if not item.captions]
    if not todo:
        return items
    out.mkdir(parents=True, exist_ok=True)
    with open(cache_path, "a", encoding="utf-8") as f:
        for i in tqdm(todo, desc="teacher captions", unit="img"):
            key = str(items[i].image)
            if key not in cache:
                pixels, rows, cols = preprocess(item_image(items[i]), pre)
                ids = torch.tensor([prompter.encode(None, rows, cols)])
                tokens = teacher.greedy(torch.from_numpy(pixels), ids, gen.max_new_tokens, gen.eos_token_ids)
                cache[key] = prompter.decode(tokens)
                f.write(json.dumps({"key": key, "caption": cache[key]}) + "\n")
                f.flush()
            items[i] = CaptionItem(items[i].image, (cache[key],))
    return items


def _read_cache(path: Path) -> dict:
    """teacher_captions.jsonl -> {image key: caption}; a damaged line is a one-line error naming it."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):  # a run killed mid-write: drop the partial last line before appending more
        text = text[:text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    cache = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            cache[str(record["key"])] = str(record["caption"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path.name} line {number}: malformed record ({exc}); delete the file to "
                              "caption the images again") from None
    return cache


def _common(func):
    for option in reversed([
        click.option("--data", default="scenes", show_default=True,
                     help="'scenes[:split]', a .jsonl file, a COCO .json file, or an image folder."),
        click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Checkpoint directory."),
        click.option("--steps", default=3000, show_default=True, help="Length of the run (and of its lr schedule)."),
        click.option("--stop-at", type=int, help="Pause after this step (checkpointed); --resume continues it exactly."),
        click.option("--batch-size", default=48, show_default=True),
        click.option("--lr", default=2e-3, show_default=True),
        click.option("--seed", default=0, show_default=True),
        click.option("--threads", default=2, show_default=True),
        click.option("--device", default="cpu", show_default=True,
                     help="cpu, cuda, cuda:N or auto (a GPU when torch sees one)."),
        click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out."),
        click.option("--export", "export_dir", type=click.Path(path_type=Path), help="Export a bundle here when done."),
    ]):
        func = option(func)
    return func


def _run(model, items, setup, out, steps, batch_size, lr, seed, threads, resume, export_dir, objective=None,
         stop_at=None, device="cpu"):
    import torch

    from edgevlm.models.loaders.native import write_export_info
    from edgevlm.prompt import Prompter
    from edgevlm.train.scenes_data import CaptionBatches
    from edgevlm.train.train import TrainConfig, caption_loss, train

    tokenizer, prompt, pre, gen, special = setup
    torch.set_num_threads(threads)
    write_export_info(out, tokenizer, prompt, pre, gen, special)
    batches = CaptionBatches(items, Prompter(tokenizer, prompt), pre, gen.eos_token_ids[0], special["pad"], batch_size)
    if stop_at is not None and stop_at < 1:
        raise ConfigError(f"--stop-at must be >= 1, got {stop_at}")
    train(model, batches, TrainConfig(steps=steps, lr=lr, seed=seed, stop_at=stop_at, device=device), out, resume=resume,
          objective=objective or caption_loss)
    if export_dir:
        from edgevlm.export.to_onnx import export_bundle

        export_bundle(model, tokenizer, export_dir, preprocess=pre.to_dict(), prompt=prompt.to_dict(),
                      special_tokens=special, generation=gen.to_dict(), overwrite=True)
        click.echo(f"bundle written to {export_dir}")


@click.command("train")
@click.option("--preset", "preset_name", default="default", show_default=True, help="Model size: nano, micro, default, teacher.")
@_common
def train_command(preset_name, data, out, steps, stop_at, batch_size, lr, seed, threads, device, resume, export_dir):
    """Train a captioning model from scratch (scenes vocabulary and preprocessing).

    \b
    Example:
      edgevlm train --preset micro --data scenes --steps 2000 -o runs/micro --export micro_bundle/
    """
    _torch_side()
    import dataclasses

    import torch

    from edgevlm.data.datasets import open_dataset
    from edgevlm.models.vlm import VLM
    from edgevlm.train.default_model import default_setup, special_tokens
    from edgevlm.train.presets import preset

    _, tokenizer, prompt, pre, gen = default_setup()
    cfg = preset(preset_name, tokenizer.get_vocab_size(), tokenizer.token_to_id("<image>"), image_size=pre.tile_size)
    torch.manual_seed(seed)
    model = VLM(cfg)
    click.echo(f"{preset_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    items = open_dataset(data)
    prompt = dataclasses.replace(prompt, image_seq_len=cfg.image_seq_len)
    _run(model, items, (tokenizer, prompt, pre, gen, special_tokens(tokenizer)), out, steps, batch_size, lr, seed,
         threads, resume, export_dir, stop_at=stop_at, device=device)


@click.command("distill")
@click.option("--teacher", required=True, type=click.Path(path_type=Path), help="Teacher checkpoint directory.")
@click.option("--student", default="micro", show_default=True, help="Student preset (nano, micro, ...) or config JSON.")
@click.option("--temperature", default=2.0, show_default=True, help="KD softmax temperature.")
@click.option("--alpha", default=0.5, show_default=True, help="Weight of the reference-caption CE (1 - alpha on KL).")
@click.option("--init-from-teacher", is_flag=True, help="Copy matching teacher layers (even spread) into the student.")
@click.option("--feature-weight", default=0.0, show_default=True,
              help="Weight of the feature-matching MSE (student image embeddings, through a learned projection, "
                   "vs the teacher's); 0 = off.")
@click.option("--feature-hidden", is_flag=True, help="With --feature-weight: also match the final hidden states.")
@_common
def distill_command(teacher, student, temperature, alpha, init_from_teacher, feature_weight, feature_hidden, data, out,
                    steps, stop_at, batch_size, lr, seed, threads, device, resume, export_dir):
    """Distil a teacher into a compact student (token-level KL + caption CE).

    Unlabeled images (an image folder, or JSONL records without captions) are first
    captioned by the teacher (sequence-level distillation). --feature-weight adds feature
    matching; its projections are saved in OUT/objective.safetensors and never exported.

    \b
    Example:
      edgevlm distill --teacher runs/teacher --student micro --data scenes -o runs/student --export student_bundle/
      edgevlm distill --teacher runs/teacher --student nano --feature-weight 0.5 -o runs/nano
    """
    _torch_side()
    import torch

    from edgevlm.data.datasets import open_dataset
    from edgevlm.models.registry import load_checkpoint
    from edgevlm.models.vlm import VLM
    from edgevlm.prompt import Prompter
    from edgevlm.train.distill import DistillConfig, DistillObjective, init_from_teacher as copy_layers

    ckpt = load_checkpoint(teacher)
    cfg = _student_config(student, ckpt.model.cfg.text.vocab_size, ckpt.model.cfg.image_token_id,
                          ckpt.preprocess.tile_size)
    if cfg.image_seq_len != ckpt.prompt.image_seq_len:
        raise ConfigError(f"student gives {cfg.image_seq_len} image tokens per tile, the teacher's prompt expects "
                          f"{ckpt.prompt.image_seq_len}; choose a student with the same patch grid / scale factor")
    torch.manual_seed(seed)
    model = VLM(cfg)
    if init_from_teacher:
        click.echo(f"initialised {len(copy_layers(model, ckpt.model))} tensors from the teacher")
    click.echo(f"student: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; teacher: "
               f"{sum(p.numel() for p in ckpt.model.parameters()) / 1e6:.2f} M")
    items = _caption_unlabeled(open_dataset(data), ckpt.model, Prompter(ckpt.tokenizer, ckpt.prompt),
                               ckpt.preprocess, ckpt.generation, out)
    if feature_hidden and not feature_weight:
        raise ConfigError("--feature-hidden needs --feature-weight > 0")
    dc = DistillConfig(temperature=temperature, alpha=alpha, feature_weight=feature_weight, feature_hidden=feature_hidden)
    objective = DistillObjective(ckpt.model, dc, student_cfg=cfg)
    _run(model, items, (ckpt.tokenizer, ckpt.prompt, ckpt.preprocess, ckpt.generation, ckpt.special_tokens),
         out, steps, batch_size, lr, seed, threads, resume, export_dir, objective=objective, stop_at=stop_at,
         device=device)
