"""Caption metrics: corpus BLEU-1..4 and CIDEr-D, numerically equal to coco-caption.

Implemented from the papers, with the conventions of the coco-caption toolkit
(pycocoevalcap) so that our numbers can be compared with published ones:

BLEU (Papineni et al., 2002), corpus level:
  * candidate n-gram counts are clipped to the max count over that item's references;
    clipped matches and candidate n-gram totals are summed over the whole corpus;
  * effective reference length per item is the "closest" reference length
    (ties go to the shorter reference), summed over the corpus;
  * BLEU-k = (prod_{i<=k} (match_i + 1e-15) / (total_i + 1e-9)) ** (1/k), times the brevity
    penalty exp(1 - r/c) when c < r, with c/r computed as (c + 1e-15) / (r + 1e-9).

CIDEr-D (Vedantam et al., 2015):
  * each caption is four tf-idf vectors (n = 1..4), tf = raw n-gram count,
    idf = log(N_items) - log(max(1, df)), df = number of items whose references hold the n-gram;
  * per reference: cosine of the tf-idf vectors with the candidate's weights clipped to the
    reference's, times a Gaussian length penalty exp(-delta^2 / (2 * 6^2));
  * item score = 10 * mean over n of the mean over references; corpus score = mean over items.
  * As in coco-caption, the "length" in the penalty counts bigrams (= tokens - 1), not tokens.

Inputs are lowercase, space-separated captions: tokens are `str.split()`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

NGram = tuple[str, ...]

# coco-caption's constants: _TINY keeps a zero-match precision at (about) zero,
# _SMALL avoids division by zero when an n-gram order has no candidate n-grams.
_TINY = 1e-15
_SMALL = 1e-9
CIDER_N = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0


def ngram_counts(tokens: Sequence[str], n: int) -> Counter[NGram]:
    """Counts of every n-gram of order 1..n in `tokens`."""
    counts: Counter[NGram] = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def _check_inputs(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> list[Hashable]:
    """Validate the two dicts and return the item keys in candidate order."""
    if not candidates:
        raise ValueError("caption metrics need at least one item: `candidates` is empty")
    if candidates.keys() != references.keys():
        only_c = ", ".join(sorted(map(repr, candidates.keys() - references.keys()))[:5])
        only_r = ", ".join(sorted(map(repr, references.keys() - candidates.keys()))[:5])
        raise ValueError(
            "candidates and references must have the same keys; "
            f"only in candidates: [{only_c}], only in references: [{only_r}]"
        )
    for key, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings, got {refs!r}")
        if not isinstance(candidates[key], str):
            raise ValueError(f"candidates[{key!r}] must be a string, got {type(candidates[key]).__name__}")
    return list(candidates.keys())


# ----------------------------------------------------------------------------- BLEU


def bleu(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4
) -> list[float]:
    """Corpus BLEU-1..BLEU-n (coco-caption conventions). Returns a list of n floats in [0, 1]."""
    if n < 1:
        raise ValueError(f"bleu order n must be >= 1, got {n}")
    keys = _check_inputs(candidates, references)
    matches = [0] * n  # (n,) clipped n-gram matches, summed over items
    totals = [0] * n  # (n,) candidate n-grams, summed over items
    cand_len = 0
    ref_len = 0
    for key in keys:
        tokens = candidates[key].split()
        ref_tokens = [r.split() for r in references[key]]
        max_ref: Counter[NGram] = Counter()
        for ref in ref_tokens:
            max_ref |= ngram_counts(ref, n)  # elementwise max over references
        for gram, count in ngram_counts(tokens, n).items():
            matches[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(1, n + 1):
            totals[k - 1] += max(0, len(tokens) - k + 1)
        c = len(tokens)
        cand_len += c
        ref_len += min((abs(len(r) - c), len(r)) for r in ref_tokens)[1]  # "closest"

    ratio = (cand_len + _TINY) / (ref_len + _SMALL)
    brevity = math.exp(1.0 - 1.0 / ratio) if ratio < 1.0 else 1.0
    scores = []
    precision_product = 1.0  # product of the precisions of orders 1..k
    for k in range(n):
        precision_product *= (matches[k] + _TINY) / (totals[k] + _SMALL)
        scores.append(precision_product ** (1.0 / (k + 1)) * brevity)
    return scores


# ----------------------------------------------------------------------------- CIDEr-D


class _TfIdf:
    """A caption as CIDER_N tf-idf vectors, with their L2 norms and its penalty length."""

    def __init__(self, tokens: Sequence[str], idf: dict[NGram, float], default_idf: float):
        self.vec: list[dict[NGram, float]] = [{} for _ in range(CIDER_N)]  # (n,) ngram -> weight
        norm_sq = [0.0] * CIDER_N
        for gram, tf in ngram_counts(tokens, CIDER_N).items():
            weight = tf * idf.get(gram, default_idf)
            self.vec[len(gram) - 1][gram] = weight
            norm_sq[len(gram) - 1] += weight * weight
        self.norm = [math.sqrt(s) for s in norm_sq]  # (n,)
        # coco-caption counts bigrams here, i.e. tokens - 1; kept so the numbers match.
        self.length = max(0, len(tokens) - 1)


def _cider_similarity(cand: _TfIdf, ref: _TfIdf) -> float:
    """Sum over n of the clipped, length-penalised cosine between candidate and one reference."""
    delta = float(cand.length - ref.length)
    penalty = math.exp(-(delta * delta) / (2.0 * CIDER_SIGMA**2))
    total = 0.0
    for k in range(CIDER_N):
        ref_vec = ref.vec[k]
        dot = sum(min(w, ref_vec.get(g, 0.0)) * ref_vec.get(g, 0.0) for g, w in cand.vec[k].items())
        if cand.norm[k] != 0.0 and ref.norm[k] != 0.0:
            dot /= cand.norm[k] * ref.norm[k]
        total += dot * penalty
    return total


def cider_d_per_item(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[Hashable, float]:
    """CIDEr-D of every item; idf is computed over the references of the whole corpus."""
    keys = _check_inputs(candidates, references)
    ref_tokens = {key: [r.split() for r in references[key]] for key in keys}

    doc_freq: Counter[NGram] = Counter()
    for key in keys:
        grams: set[NGram] = set()
        for ref in ref_tokens[key]:
            grams.update(ngram_counts(ref, CIDER_N))
        doc_freq.update(grams)
    log_n_items = math.log(len(keys))
    idf = {gram: log_n_items - math.log(max(1.0, df)) for gram, df in doc_freq.items()}

    scores = {}
    for key in keys:
        cand = _TfIdf(candidates[key].split(), idf, log_n_items)
        sims = [_cider_similarity(cand, _TfIdf(r, idf, log_n_items)) for r in ref_tokens[key]]
        scores[key] = CIDER_SCALE * sum(sims) / (CIDER_N * len(sims))
    return scores


def cider_d(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> float:
    """Corpus CIDEr-D: the mean of the per-item scores (0 for no overlap, ~10 max per item)."""
    per_item = cider_d_per_item(candidates, references)
    return sum(per_item.values()) / len(per_item)


def caption_scores(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[str, float]:
    """All caption metrics: {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"}."""
    scores = {f"BLEU-{k + 1}": b for k, b in enumerate(bleu(candidates, references, n=4))}
    scores["CIDEr-D"] = cider_d(candidates, references)
    return scores
