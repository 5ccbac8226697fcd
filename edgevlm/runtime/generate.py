"""Token-id generation: greedy, sampling and beam search over a `DecodeModel`.

The generator knows token ids, not text: tokenizing the prompt, encoding the image
and detokenizing the result happen elsewhere. A model only has to implement the
three-call `DecodeModel` protocol (start / step / reorder); the ONNX runtime and the
tests' toy table model both do.

Semantics follow transformers so results can be compared token for token:
greedy is argmax with ties to the lowest id; sampling applies repetition penalty ->
temperature -> top-k -> top-p, then draws from a seeded numpy Generator; beam search
is `BeamSearchScorer` with early_stopping=False.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from edgevlm.errors import GenerationError
from edgevlm.mapping import check_keys
from edgevlm.runtime import sampling

MAX_NEW_TOKENS_CAP = 1024
MAX_BEAMS = 16
SCALE_MIN, SCALE_MAX = 1e-6, 1e6  # bounds on temperature and repetition_penalty
_INACTIVE_BEAM_SCORE = -1e9  # start score of beams 1..k-1, so step 1 expands beam 0 only


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    length_penalty: float = 1.0  # beam search only: score = sum_logprobs / len ** length_penalty
    seed: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def validate(self) -> None:
        """Raise GenerationError (one line, names the field) if any value is out of range."""

        def fail(name: str, rule: str) -> None:
            raise GenerationError(f"generation option {name}={getattr(self, name)!r} is invalid: {rule}")

        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        if not is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_CAP:
            fail("max_new_tokens", f"must be an integer in 1..{MAX_NEW_TOKENS_CAP}")
        if not is_int(self.num_beams) or not 1 <= self.num_beams <= MAX_BEAMS:
            fail("num_beams", f"must be an integer in 1..{MAX_BEAMS}")
        if not isinstance(self.do_sample, bool):
            fail("do_sample", "must be true or false")
        # scaling bounds keep float32 logits finite (1e-6 .. 1e6 is far wider than any useful value)
        if not is_num(self.temperature) or not SCALE_MIN <= self.temperature <= SCALE_MAX:
            fail("temperature", f"must be a number in {SCALE_MIN:g}..{SCALE_MAX:g}")
        if not is_int(self.top_k) or self.top_k < 0:
            fail("top_k", "must be an integer >= 0 (0 turns it off)")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            fail("top_p", "must be a number in (0, 1] (1 turns it off)")
        if not is_num(self.repetition_penalty) or not SCALE_MIN <= self.repetition_penalty <= SCALE_MAX:
            fail("repetition_penalty", f"must be a number in {SCALE_MIN:g}..{SCALE_MAX:g} (1 turns it off)")
        if not is_num(self.length_penalty) or not -10 <= self.length_penalty <= 10:  # len ** 10 stays finite
            fail("length_penalty", "must be a number in -10..10")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            fail("seed", "must be a non-negative integer or null")
        if not isinstance(self.eos_token_ids, tuple) or not all(
            is_int(t) and t >= 0 for t in self.eos_token_ids
        ):
            fail("eos_token_ids", "must be a tuple of non-negative token ids")
        if self.do_sample and self.num_beams > 1:
            raise GenerationError(
                "generation options do_sample=True and num_beams>1 cannot be combined; "
                "use num_beams=1 to sample or do_sample=False for beam search"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        """Build and validate a config; an unknown key is a GenerationError naming it."""
        d = dict(check_keys(cls, d, "generation options", GenerationError))
        if "eos_token_ids" in d:
            eos = d["eos_token_ids"]
            d["eos_token_ids"] = (eos,) if isinstance(eos, int) else tuple(eos) if isinstance(eos, list) else eos
        config = cls(**d)
        config.validate()
        return config


class DecodeModel(Protocol):
    def start(self, batch_size: int) -> np.ndarray:
        """Run the prompt once, replicate the KV cache to batch_size rows.

        Returns float32 logits (batch_size, vocab) for the last prompt position."""

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        """Feed one int64 token per row (batch,); return float32 logits (batch, vocab)."""

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: cache row i becomes old row rows[i] (rows: int64 (batch,))."""


def generate(
    model: DecodeModel,
    config: GenerationConfig,
    prompt_ids: Sequence[int] = (),
    on_token: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> list[int]:
    """Generate new token ids (eos excluded) for the prompt the model was prepared with.

    prompt_ids only feed the repetition penalty. on_token(id) is called once per
    returned token, in order: as soon as it is chosen (greedy/sampling) or at the end
    (beam search). deadline is a time.monotonic() value, checked before every model
    call; once passed, GenerationError is raised.
    """
    config.validate()
    clock = _Deadline(deadline)
    if config.num_beams == 1:
        return _greedy_or_sample(model, config, list(prompt_ids), on_token, clock)
    tokens, _ = _beam_search(model, config, list(prompt_ids), clock)
    if on_token is not None:
        for token in tokens:
            on_token(token)
    return tokens


class _Deadline:
    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.t0 = time.monotonic()

    def check(self) -> None:
        if self.deadline is None:
            return
        now = time.monotonic()
        if now > self.deadline:
            raise GenerationError(
                f"caption timed out after {now - self.t0:.1f} s; "
                "allow a longer timeout or lower max_new_tokens"
            )


def _logits(raw: np.ndarray, batch: int) -> np.ndarray:
    """Check a model's logits are (batch, vocab) and return them as float32."""
    arr = np.asarray(raw)
    if arr.ndim != 2 or arr.shape[0] != batch or arr.shape[1] == 0:
        raise GenerationError(
            f"decode model returned logits of shape {arr.shape}, expected ({batch}, vocab)"
        )
    return arr.astype(np.float32, copy=False)


def _greedy_or_sample(
    model: DecodeModel,
    config: GenerationConfig,
    history: list[int],
    on_token: Callable[[int], None] | None,
    clock: _Deadline,
) -> list[int]:
    rng = np.random.default_rng(config.seed) if config.do_sample else None
    eos = set(config.eos_token_ids)
    new: list[int] = []
    clock.check()
    logits = _logits(model.start(1), 1)  # (1, vocab)
    while True:
        scores = sampling.apply_repetition_penalty(logits, [history], config.repetition_penalty)
        if rng is None:
            token = int(np.argmax(scores[0]))  # ties -> lowest id, like torch.argmax
        else:
            scores = sampling.apply_temperature(scores, config.temperature)
            scores = sampling.apply_top_k(scores, config.top_k)
            scores = sampling.apply_top_p(scores, config.top_p)
            token = sampling.sample_token(scores[0], rng)
        if token in eos:
            break
        new.append(token)
        history.append(token)
        if on_token is not None:
            on_token(token)
        if len(new) == config.max_new_tokens:
            break
        clock.check()
        logits = _logits(model.step(np.array([token], dtype=np.int64)), 1)
    return new


class _Hypotheses:
    """Finished beams, at most num_beams of them, scored sum_logprobs / length ** penalty."""

    def __init__(self, num_beams: int, length_penalty: float):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.items: list[tuple[float, list[int]]] = []  # (normalised score, token ids)
        self.worst = 1e9

    def add(self, tokens: list[int], sum_logprobs: float, length: int) -> None:
        score = sum_logprobs / (length**self.length_penalty)
        if len(self.items) < self.num_beams or score > self.worst:
            self.items.append((score, tokens))
            if len(self.items) > self.num_beams:
                worst = min(range(len(self.items)), key=lambda i: self.items[i][0])
                del self.items[worst]  # ties: the earliest added goes, like transformers
                self.worst = min(score for score, _ in self.items)
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, length: int) -> bool:
        """No running beam can still beat the worst finished one (early_stopping=False)."""
        if len(self.items) < self.num_beams:
            return False
        return self.worst >= best_sum_logprobs / (length**self.length_penalty)

    def best(self) -> tuple[list[int], float]:
        score, tokens = sorted(self.items, key=lambda item: item[0])[-1]
        return tokens, score


def _beam_search(
    model: DecodeModel, config: GenerationConfig, prompt: list[int], clock: _Deadline
) -> tuple[list[int], float]:
    """Return (best token ids without eos, its length-normalised score)."""
    k = config.num_beams
    eos = set(config.eos_token_ids)
    n_candidates = max(2, 1 + len(eos)) * k  # enough that k non-eos candidates always remain
    finished = _Hypotheses(k, config.length_penalty)
    beam_scores = np.full(k, _INACTIVE_BEAM_SCORE, dtype=np.float32)  # (k,) sum of log-probs
    beam_scores[0] = 0.0
    beam_tokens = np.zeros((k, 0), dtype=np.int64)  # (k, generated so far)
    clock.check()
    logits = _logits(model.start(k), k)  # (k, vocab)
    vocab = logits.shape[1]
    for length in range(1, config.max_new_tokens + 1):  # length counts the token chosen now
        logprobs = sampling.log_softmax(logits)  # (k, vocab); penalty on log-probs, like HF
        histories = [prompt + row.tolist() for row in beam_tokens]
        logprobs = sampling.apply_repetition_penalty(logprobs, histories, config.repetition_penalty)
        flat = (logprobs + beam_scores[:, None]).reshape(-1)  # (k * vocab,)
        top = _top_indices(flat, min(n_candidates, flat.size))  # (n,) best first
        rows, tokens, scores = [], [], []
        for rank, index in enumerate(top):
            row, token = divmod(int(index), vocab)
            if token in eos:
                if rank < k:  # an eos outside the top k is not a finished hypothesis
                    finished.add(beam_tokens[row].tolist(), float(flat[index]), length)
            else:
                rows.append(row)
                tokens.append(token)
                scores.append(flat[index])
                if len(rows) == k:
                    break
        done = finished.is_done(float(flat[top[0]]), length)
        if not rows:  # every candidate was eos: nothing left to run
            done = True
        else:
            rows_arr = np.asarray(rows, dtype=np.int64)  # (k,)
            beam_tokens = np.concatenate(
                [beam_tokens[rows_arr], np.asarray(tokens, dtype=np.int64)[:, None]], axis=1
            )  # (k, length)
            beam_scores = np.asarray(scores, dtype=np.float32)
        if done or length == config.max_new_tokens:
            break
        clock.check()
        model.reorder(rows_arr)
        logits = _logits(model.step(beam_tokens[:, -1].copy()), k)
    if not done:  # out of tokens: running beams compete with the finished ones
        for row in range(len(beam_scores)):
            finished.add(beam_tokens[row].tolist(), float(beam_scores[row]), beam_tokens.shape[1])
    return finished.best()


def _top_indices(x: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values of x, best first, ties to the lower index."""
    threshold = np.partition(x, x.size - n)[x.size - n]  # the n-th largest value
    above = np.flatnonzero(x > threshold)
    tied = np.flatnonzero(x == threshold)[: n - above.size]
    part = np.concatenate([above, tied])  # (n,)
    return part[np.lexsort((part, -x[part]))]
