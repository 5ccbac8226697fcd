"""Logits processors and samplers for token generation (numpy only).

Each processor takes scores of shape (batch, vocab) and returns a new array of the
same shape; none of them modify their input. The semantics follow transformers'
`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`
and `TopPLogitsWarper` (min_tokens_to_keep=1), so a seeded run here and there
filter the same candidate set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgevlm.errors import GenerationError


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; -inf entries get probability 0."""
    x = np.asarray(scores, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, keeping the input's float dtype (float32 for model logits)."""
    x = np.asarray(scores)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def apply_repetition_penalty(
    scores: np.ndarray, histories: Sequence[Sequence[int]], penalty: float
) -> np.ndarray:
    """For every token already in row r's history: score > 0 -> score / p, else score * p.

    histories[r] holds row r's prompt + generated ids; repeated ids count once.
    """
    out = np.array(scores, copy=True)
    if penalty == 1.0:
        return out
    vocab = out.shape[-1]
    for row, ids in enumerate(histories):
        ids = np.unique(np.asarray(ids, dtype=np.int64))  # (n_unique,)
        if ids.size == 0:
            continue
        if ids[0] < 0 or ids[-1] >= vocab:
            raise GenerationError(
                f"token id {int(ids[0] if ids[0] < 0 else ids[-1])} is outside the "
                f"vocabulary (0..{vocab - 1}); check the prompt ids and the model"
            )
        picked = out[row, ids]
        out[row, ids] = np.where(picked < 0, picked * penalty, picked / penalty)
    return out


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Divide the scores by the temperature (1.0 returns a copy)."""
    return np.asarray(scores) / np.asarray(temperature, dtype=np.asarray(scores).dtype)


def apply_top_k(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Keep the top_k highest scores per row (ties with the k-th are kept); 0 = off."""
    out = np.array(scores, copy=True)
    vocab = out.shape[-1]
    if top_k <= 0 or top_k >= vocab:
        return out
    kth = np.partition(out, vocab - top_k, axis=-1)[:, vocab - top_k : vocab - top_k + 1]  # (batch, 1)
    out[out < kth] = -np.inf
    return out


def apply_top_p(scores: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus filter: drop the low tail whose cumulative probability is <= 1 - top_p.

    As in transformers, the single most likely token is always kept.
    """
    out = np.array(scores, copy=True)
    if top_p >= 1.0:
        return out
    order = np.argsort(out, axis=-1, kind="stable")  # (batch, vocab), ascending
    sorted_scores = np.take_along_axis(out, order, axis=-1)
    cumulative = np.cumsum(softmax(sorted_scores), axis=-1)  # (batch, vocab)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted[:, -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    out[remove] = -np.inf
    return out


def sample_token(scores: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token id from softmax(scores) for a single row (vocab,) by inverse CDF."""
    cdf = np.cumsum(softmax(scores[None, :])[0])  # (vocab,)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), cdf.size - 1))
