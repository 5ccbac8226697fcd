"""Training batches from the synthetic scenes corpus, prepared exactly as the runtime does.

Pixels go through edgevlm.image.preprocess (the runtime's own code); prompts through
edgevlm.prompt.Prompter. Targets are the canonical caption followed by <|endoftext|>.
"""

from __future__ import annotations

import numpy as np
import torch

from edgevlm.data import scenes
from edgevlm.image import PreprocessConfig, preprocess
from edgevlm.prompt import Prompter

IGNORE = -100  # label value that cross-entropy skips


def encode_example(scene, prompter: Prompter, pre: PreprocessConfig, eos_id: int):
    pixels, rows, cols = preprocess(scenes.render(scene, pre.tile_size), pre)  # [1, 3, H, W]
    prompt_ids = prompter.encode(None, rows, cols)
    caption_ids = prompter.tokenizer.encode(scenes.captions(scene)[0], add_special_tokens=False).ids + [eos_id]
    return pixels[0], prompt_ids, caption_ids


class SceneBatches:
    """Deterministic, endless batches over split(name): example i is scene i of the split."""

    def __init__(self, prompter: Prompter, pre: PreprocessConfig, eos_id: int, pad_id: int,
                 batch_size: int, split: str = "train", pool: int = 200_000):
        self.prompter, self.pre = prompter, pre
        self.eos_id, self.pad_id = eos_id, pad_id
        self.batch_size = batch_size
        self.scenes = scenes.split(split, pool)

    def batch(self, step: int):
        """Batch number `step`: (pixels [B, 3, H, W], input_ids [B, S], labels [B, S])."""
        start = (step * self.batch_size) % len(self.scenes)
        examples = [encode_example(self.scenes[(start + j) % len(self.scenes)], self.prompter, self.pre, self.eos_id)
                    for j in range(self.batch_size)]
        length = max(len(p) + len(c) for _, p, c in examples)
        ids = np.full((self.batch_size, length), self.pad_id, dtype=np.int64)
        labels = np.full((self.batch_size, length), IGNORE, dtype=np.int64)
        for row, (_, prompt, caption) in enumerate(examples):
            seq = prompt + caption
            ids[row, :len(seq)] = seq
            # labels[t] is the token at t+1: predict each caption token (and eos) from its prefix
            labels[row, len(prompt) - 1:len(seq) - 1] = caption
        pixels = np.stack([px for px, _, _ in examples])
        return torch.from_numpy(pixels), torch.from_numpy(ids), torch.from_numpy(labels)
