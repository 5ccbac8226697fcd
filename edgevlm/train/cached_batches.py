"""CaptionBatches, encoded once: the fast data path for GPU training.

CaptionBatches renders and preprocesses every image again at every step (about 1 ms an image
on one core), which starves a GPU that takes a few ms per step. CachedBatches encodes each
example once, in worker processes, keeps every pixel tensor in one [N, 3, H, W] tensor (on the
training device when it fits) and the token ids padded to the longest example, and then serves
batch(step) by indexing. The batches are exactly CaptionBatches.batch(step) (a test checks it):
same items, same order, same padding (trimmed to the batch's longest sequence).
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch
from tqdm import tqdm

from edgevlm.train.scenes_data import IGNORE, CaptionBatches

_SOURCE: CaptionBatches | None = None  # the parent's batches, inherited by forked workers


def _encode_range(bounds):
    lo, hi = bounds
    pixels, tokens = [], []
    for i in range(lo, hi):
        px, prompt, caption = _SOURCE.encode(_SOURCE.items[i])
        pixels.append(px)
        tokens.append((prompt, caption))
    return lo, np.stack(pixels), tokens  # pixels [hi-lo, 3, H, W]


class CachedBatches:
    def __init__(self, source: CaptionBatches, device: str | torch.device = "cpu", workers: int = 1,
                 chunk: int = 1000):
        global _SOURCE
        self.batch_size = source.batch_size
        n = len(source.items)
        ranges = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
        self.pixels = None
        prompts, captions = [None] * n, [None] * n
        _SOURCE = source
        try:
            # fork: the workers inherit `source` (its lazily rendered items hold lambdas that cannot be pickled)
            pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
            results = pool.imap_unordered(_encode_range, ranges) if pool else map(_encode_range, ranges)
            for lo, px, tokens in tqdm(results, total=len(ranges), desc="encode data", unit="chunk"):
                if self.pixels is None:
                    self.pixels = torch.empty((n, *px.shape[1:]), dtype=torch.float32, device=device)
                self.pixels[lo:lo + len(px)] = torch.from_numpy(px).to(device)
                for j, (prompt, caption) in enumerate(tokens):
                    prompts[lo + j], captions[lo + j] = prompt, caption
        finally:
            _SOURCE = None
            if workers > 1:
                pool.close()
                pool.join()
        # ids / labels exactly as CaptionBatches.batch builds them, padded to the longest example
        longest = max(len(p) + len(c) for p, c in zip(prompts, captions))
        ids = np.full((n, longest), source.pad_id, dtype=np.int64)
        labels = np.full((n, longest), IGNORE, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for i, (prompt, caption) in enumerate(zip(prompts, captions)):
            seq = prompt + caption
            ids[i, :len(seq)] = seq
            labels[i, len(prompt) - 1:len(seq) - 1] = caption  # labels[t] is the token at t+1
            lengths[i] = len(seq)
        self.ids = torch.from_numpy(ids).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.lengths = lengths
        self._source_indices = source.indices

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, step: int):
        """(pixels [B, 3, H, W], input_ids [B, S], labels [B, S]) on the cache's device."""
        rows = self._source_indices(step)
        length = int(self.lengths[rows].max())
        index = torch.tensor(rows, device=self.pixels.device)
        return self.pixels[index], self.ids[index, :length], self.labels[index, :length]
