"""Training batches from caption datasets, prepared exactly as the runtime does.

Pixels go through edgevlm.image.preprocess (the runtime's own code); prompts through
edgevlm.prompt.Prompter. Targets are a reference caption followed by <|endoftext|>.
"""

from __future__ import annotations

import numpy as np
import torch

from edgevlm.data.datasets import CaptionItem, read_scenes
from edgevlm.errors import ConfigError
from edgevlm.image import PreprocessConfig, load_image, preprocess
from edgevlm.prompt import Prompter

IGNORE = -100  # label value that cross-entropy skips


def item_image(item: CaptionItem):
    return item.image() if callable(item.image) else load_image(item.image)


class CaptionBatches:
    """Deterministic, endless batches: batch `step` holds items step*B .. step*B+B-1 (mod N),
    each with its first caption as the target."""

    def __init__(self, items: list[CaptionItem], prompter: Prompter, pre: PreprocessConfig, eos_id: int,
                 pad_id: int, batch_size: int):
        self.items, self.prompter, self.pre = items, prompter, pre
        self.eos_id, self.pad_id = eos_id, pad_id
        self.batch_size = batch_size

    def encode(self, item: CaptionItem):
        if not item.captions:
            raise ConfigError("a training image has no caption; caption unlabeled images with a teacher first")
        pixels, rows, cols = preprocess(item_image(item), self.pre)  # [tiles, 3, H, W]
        if pixels.shape[0] != 1:
            raise ConfigError("training uses single-tile images; set do_split=False in the preprocessing")
        prompt_ids = self.prompter.encode(None, rows, cols)
        caption_ids = self.prompter.tokenizer.encode(item.captions[0], add_special_tokens=False).ids + [self.eos_id]
        return pixels[0], prompt_ids, caption_ids

    def indices(self, step: int) -> list[int]:
        """The items of batch `step`: step*B .. step*B+B-1, wrapping round the dataset."""
        start = (step * self.batch_size) % len(self.items)
        return [(start + j) % len(self.items) for j in range(self.batch_size)]

    def batch(self, step: int):
        """Batch number `step`: (pixels [B, 3, H, W], input_ids [B, S], labels [B, S])."""
        examples = [self.encode(self.items[i]) for i in self.indices(step)]
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


class SceneBatches(CaptionBatches):
    """Batches over the first `pool` scenes of a split of the synthetic corpus."""

    def __init__(self, prompter: Prompter, pre: PreprocessConfig, eos_id: int, pad_id: int,
                 batch_size: int, split: str = "train", pool: int = 200_000):
        super().__init__(read_scenes(split, pool), prompter, pre, eos_id, pad_id, batch_size)
