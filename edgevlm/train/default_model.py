"""Train the embedded default model from scratch on the scenes corpus and export it.

    python -m edgevlm.train.default_model --steps 13000 --out runs/default
    (then the bundle is written to edgevlm/assets/default and the sample images refreshed)

The default model describes synthetic shape scenes (see edgevlm.data.scenes), not photos.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from edgevlm.config import ProjectorConfig, TextConfig, VisionConfig, VLMConfig
from edgevlm.data import scenes
from edgevlm.data.scene_tokenizer import build_scene_tokenizer
from edgevlm.image import PreprocessConfig
from edgevlm.prompt import PromptConfig, Prompter
from edgevlm.runtime.generate import GenerationConfig

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MAX_CAPTION_TOKENS = 32


# Vision front ends for the default model (tile px, patch px, pixel-shuffle scale).
# "p8" (shipped): 96 px tiles, 8 px patches, 36 image tokens. Colours, sizes and counts are
#       learned in a few hundred steps; shapes only after ~2,500 steps (a shape-only probe
#       of this encoder stayed at chance for 400 steps of 32 images).
# "p4" (experimental): tiles downscaled to 64 px with 4 px patches (256 patches, 16 image
#       tokens); the same probe reached 47% in 200 steps. Not trained to the end yet.
ARCHS = {"p8": (96, 8, 2), "p4": (64, 4, 4)}


def default_setup(arch: str = "p8"):
    """(model config, tokenizer, prompt config, preprocessing, generation defaults)."""
    tile, patch, scale = ARCHS[arch]
    tokenizer = build_scene_tokenizer()
    pre = PreprocessConfig(tile_size=tile, longest_edge=tile, do_split=False)
    vision = VisionConfig(image_size=tile, patch_size=patch, hidden_size=128, num_layers=3,
                          num_heads=4, intermediate_size=512)
    cfg = VLMConfig(vision=vision, projector=ProjectorConfig(scale_factor=scale), text=TextConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=192, num_layers=4,
                                                   num_heads=6, num_kv_heads=2, intermediate_size=512,
                                                   max_position_embeddings=128),
                    image_token_id=tokenizer.token_to_id("<image>"))
    prompt = PromptConfig(template="{image}<|caption|>", image_seq_len=cfg.image_seq_len)
    eos = tokenizer.token_to_id("<|endoftext|>")
    gen = GenerationConfig(max_new_tokens=MAX_CAPTION_TOKENS, eos_token_ids=(eos,))
    return cfg, tokenizer, prompt, pre, gen


def special_tokens(tokenizer) -> dict:
    return {"eos": [tokenizer.token_to_id("<|endoftext|>")], "pad": tokenizer.token_to_id("<pad>"),
            "image": tokenizer.token_to_id("<image>")}


def write_samples(out: Path, count: int = 8) -> list[Path]:
    """Sample images: the first scenes of the test split (never trained on)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(scenes.split("test", count)):
        path = out / f"scene_{i:02d}.png"
        scenes.render(scene).save(path)
        paths.append(path)
    return paths


@click.command()
@click.option("--steps", default=13000, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", "run_dir", default="runs/default", show_default=True, type=click.Path(path_type=Path))
@click.option("--bundle", default=str(ASSETS / "default"), show_default=True, type=click.Path(path_type=Path))
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@click.option("--arch", default="p8", show_default=True, type=click.Choice(sorted(ARCHS)))
def main(steps, batch_size, lr, threads, run_dir, bundle, resume, arch):
    """Train the default model from scratch, then export it as the embedded bundle."""
    from edgevlm.export.to_onnx import export_bundle
    from edgevlm.models.vlm import VLM
    from edgevlm.train.scenes_data import SceneBatches
    from edgevlm.train.train import TrainConfig, train

    torch.set_num_threads(threads)
    cfg, tokenizer, prompt, pre, gen = default_setup(arch)
    torch.manual_seed(0)
    model = VLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"default model: {n_params / 1e6:.2f} M parameters, {cfg.image_seq_len} image tokens")
    batches = SceneBatches(Prompter(tokenizer, prompt), pre, eos_id=gen.eos_token_ids[0],
                           pad_id=tokenizer.token_to_id("<pad>"), batch_size=batch_size)
    from edgevlm.models.loaders.native import write_export_info
    write_export_info(run_dir, tokenizer, prompt, pre, gen, special_tokens(tokenizer))
    t0 = time.time()
    train(model, batches, TrainConfig(steps=steps, lr=lr), run_dir, resume=resume)
    print(f"training wall time: {time.time() - t0:.0f} s ({threads} threads)")
    export_bundle(model, tokenizer, bundle, preprocess=pre.to_dict(), prompt=prompt.to_dict(),
                  special_tokens=special_tokens(tokenizer), generation=gen.to_dict(), overwrite=True)
    write_samples(ASSETS / "samples")
    print(f"bundle written to {bundle}")


if __name__ == "__main__":
    main()
