"""Tests for edgevlm.runtime.generate and edgevlm.runtime.sampling, on a toy table model."""

import itertools
import time

import numpy as np
import pytest

from edgevlm.errors import GenerationError
from edgevlm.runtime import sampling
from edgevlm.runtime.generate import (
    MAX_NEW_TOKENS_CAP,
    GenerationConfig,
    _beam_search,
    _Deadline,
    generate,
)

VOCAB, EOS = 5, 4


class ToyModel:
    """A second-order table model: logits(row) = A[last token] + B[token before it].

    Its "KV cache" is the per-row token history, so a wrong reorder() changes the
    logits it returns. Every call is recorded in self.calls.
    """

    def __init__(self, vocab=VOCAB, seed=0, scale=2.0):
        rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.a = (rng.standard_normal((vocab + 1, vocab)) * scale).astype(np.float32)  # (vocab+1, vocab)
        self.b = (rng.standard_normal((vocab + 1, vocab)) * scale).astype(np.float32)  # (vocab+1, vocab)
        self.rows = []  # rows[r] = tokens fed to row r so far
        self.calls = []

    def logits_for(self, history):
        prev = history[-1] if history else self.vocab  # index `vocab` plays BOS
        prev2 = history[-2] if len(history) >= 2 else self.vocab
        return self.a[prev] + self.b[prev2]

    def start(self, batch_size):
        self.calls.append(("start", batch_size))
        self.rows = [[] for _ in range(batch_size)]
        return np.stack([self.logits_for(r) for r in self.rows])

    def step(self, token_ids):
        assert token_ids.dtype == np.int64 and token_ids.shape == (len(self.rows),)
        self.calls.append(("step", token_ids.tolist()))
        for row, token in zip(self.rows, token_ids.tolist()):
            row.append(token)
        return np.stack([self.logits_for(r) for r in self.rows])

    def reorder(self, rows):
        self.calls.append(("reorder", rows.tolist()))
        self.rows = [list(self.rows[i]) for i in rows]

    def count(self, name):
        return sum(1 for call in self.calls if call[0] == name)


class NoReorderModel(ToyModel):
    def reorder(self, rows):
        self.calls.append(("reorder", rows.tolist()))


class SlowModel(ToyModel):
    def step(self, token_ids):
        time.sleep(0.02)
        return super().step(token_ids)


def reference_greedy(model, max_new, eos=()):
    """Hand-written argmax loop over the toy model's own logits function."""
    history = []
    for _ in range(max_new):
        token = int(np.argmax(model.logits_for(history)))
        if token in eos:
            break
        history.append(token)
    return history


def sequence_score(model, seq, length_penalty):
    total = 0.0
    for i, token in enumerate(seq):
        total += sampling.log_softmax(model.logits_for(list(seq[:i])).astype(np.float64)[None])[0, token]
    return total / len(seq) ** length_penalty


def brute_force_best(model, max_len, length_penalty):
    """Best-scoring finished sequence: ends in EOS, or reaches max_len without it."""
    best = None
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(model.vocab), repeat=n):
            if EOS in seq[:-1] or (seq[-1] != EOS and n < max_len):
                continue
            score = sequence_score(model, seq, length_penalty)
            if best is None or score > best[0]:
                best = (score, list(seq))
    return best


def with_eos(tokens, max_len):
    return tokens + [EOS] if len(tokens) < max_len else tokens


# ---- greedy ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_greedy_matches_argmax_loop(seed):
    model = ToyModel(seed=seed)
    out = generate(model, GenerationConfig(max_new_tokens=12))
    assert out == reference_greedy(model, 12)
    assert len(out) == 12
    assert model.count("start") == 1 and model.count("step") == 11  # no step after the last token


def test_greedy_ties_go_to_lowest_id():
    model = ToyModel()
    model.a[:] = 0.0
    model.b[:] = 0.0
    model.a[:, [1, 3]] = 1.0
    assert generate(model, GenerationConfig(max_new_tokens=3)) == [1, 1, 1]


def test_stops_at_eos_excluded_and_no_step_after():
    for seed in range(20):
        model = ToyModel(seed=seed)
        free = generate(ToyModel(seed=seed), GenerationConfig(max_new_tokens=8))
        if EOS in free:
            break
    cut = free.index(EOS)
    out = generate(model, GenerationConfig(max_new_tokens=8, eos_token_ids=(EOS,)))
    assert out == free[:cut]
    assert model.count("start") == 1 and model.count("step") == cut


def test_on_token_receives_returned_tokens_in_order():
    seen = []
    out = generate(ToyModel(seed=2), GenerationConfig(max_new_tokens=6), on_token=seen.append)
    assert seen == out
    seen = []
    cfg = GenerationConfig(max_new_tokens=4, num_beams=3, eos_token_ids=(EOS,))
    out = generate(ToyModel(seed=4), cfg, on_token=seen.append)
    assert seen == out and out


# ---- beam search ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_one_beam_equals_greedy(seed):
    for eos in ((), (EOS,)):
        greedy = generate(ToyModel(seed=seed), GenerationConfig(max_new_tokens=6, eos_token_ids=eos))
        beam = generate(ToyModel(seed=seed), GenerationConfig(max_new_tokens=6, num_beams=1, eos_token_ids=eos))
        assert beam == greedy


@pytest.mark.parametrize("seed", [4, 39])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_finds_brute_force_optimum_and_beats_greedy(seed, length_penalty):
    max_len = 4
    model = ToyModel(seed=seed)
    best_score, best_seq = brute_force_best(model, max_len, length_penalty)
    cfg = GenerationConfig(max_new_tokens=max_len, num_beams=4, eos_token_ids=(EOS,), length_penalty=length_penalty)
    beam = generate(ToyModel(seed=seed), cfg)
    assert with_eos(beam, max_len) == best_seq
    greedy = generate(ToyModel(seed=seed), GenerationConfig(max_new_tokens=max_len, eos_token_ids=(EOS,)))
    assert sequence_score(model, with_eos(greedy, max_len), length_penalty) < best_score - 1e-3


@pytest.mark.parametrize("seed", range(8))
def test_beam_score_is_the_true_score_of_its_tokens(seed):
    # The generator's running sums must match the model's real per-row histories:
    # that only holds if reorder() is called with the right rows before each step.
    cfg = GenerationConfig(max_new_tokens=4, num_beams=4, eos_token_ids=(EOS,))
    model = ToyModel(seed=seed)
    tokens, score = _beam_search(model, cfg, [], _Deadline(None))
    assert score == pytest.approx(sequence_score(model, with_eos(tokens, 4), 1.0), abs=1e-4)
    assert with_eos(tokens, 4) == brute_force_best(model, 4, 1.0)[1]
    kinds = [c[0] for c in model.calls]
    assert kinds[0] == "start" and model.calls[0][1] == 4
    for i, kind in enumerate(kinds):  # every step is directly preceded by a reorder
        if kind == "step":
            assert kinds[i - 1] == "reorder" and len(model.calls[i - 1][1]) == 4


def test_wrong_reorder_is_detected():
    # Mutation check of the test above: a model that ignores reorder() gives
    # running scores that no longer match its logits, and a different result.
    cfg = GenerationConfig(max_new_tokens=6, num_beams=4)
    broken = 0
    for seed in range(10):
        tokens, score = _beam_search(NoReorderModel(seed=seed), cfg, [], _Deadline(None))
        good_tokens, good_score = _beam_search(ToyModel(seed=seed), cfg, [], _Deadline(None))
        true_score = sequence_score(ToyModel(seed=seed), tokens, 1.0)
        broken += tokens != good_tokens or abs(score - true_score) > 1e-4
    assert broken >= 1


def test_first_reorder_keeps_beam_zero():
    # Step 1 expands only beam 0 (the others start at -1e9, as in transformers).
    model = ToyModel(seed=0)
    generate(model, GenerationConfig(max_new_tokens=3, num_beams=4))
    assert [c for c in model.calls if c[0] == "reorder"][0] == ("reorder", [0, 0, 0, 0])


def test_beam_stops_at_max_new_tokens():
    model = ToyModel(seed=1)
    out = generate(model, GenerationConfig(max_new_tokens=5, num_beams=3))
    assert len(out) == 5 and model.count("step") == 4


# ---- sampling -------------------------------------------------------------------------


def sample_cfg(**kw):
    return GenerationConfig(max_new_tokens=20, do_sample=True, **kw)


def test_sampling_is_seeded():
    runs = [generate(ToyModel(seed=0, scale=0.5), sample_cfg(seed=s)) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("kw", [{"temperature": 1e-4}, {"top_k": 1}, {"top_p": 1e-6}])
def test_degenerate_sampling_equals_greedy(kw):
    greedy = generate(ToyModel(seed=3), GenerationConfig(max_new_tokens=20))
    for seed in range(3):
        assert generate(ToyModel(seed=3), sample_cfg(seed=seed, **kw)) == greedy


def test_sampling_frequencies_match_softmax():
    model = ToyModel(seed=5, scale=0.7)
    expected = sampling.softmax(model.logits_for([])[None])[0]
    cfg = GenerationConfig(max_new_tokens=1, do_sample=True)
    rng = np.random.default_rng(0)
    draws = [sampling.sample_token(model.logits_for([]), rng) for _ in range(10_000)]
    freq = np.bincount(draws, minlength=VOCAB) / len(draws)
    np.testing.assert_allclose(freq, expected, atol=0.02)
    # the public path draws from the same distribution
    draws = [generate(model, GenerationConfig.from_dict({**cfg.to_dict(), "seed": s}))[0] for s in range(2_000)]
    freq = np.bincount(draws, minlength=VOCAB) / len(draws)
    np.testing.assert_allclose(freq, expected, atol=0.04)


def test_repetition_penalty_hf_formula():
    logits = np.array([[2.0, -1.0, 0.5, -3.0, 0.0]], dtype=np.float32)
    out = sampling.apply_repetition_penalty(logits, [[0, 1, 1, 4]], 2.0)
    np.testing.assert_allclose(out, [[1.0, -2.0, 0.5, -3.0, 0.0]])
    np.testing.assert_array_equal(logits, [[2.0, -1.0, 0.5, -3.0, 0.0]])  # input untouched


def test_repetition_penalty_in_generate_uses_prompt_ids():
    model = ToyModel()
    model.a[:] = np.array([3.0, 2.0, -1.0, -2.0, -5.0], dtype=np.float32)
    model.b[:] = 0.0
    cfg = GenerationConfig(max_new_tokens=2, repetition_penalty=2.0)
    assert generate(model, GenerationConfig(max_new_tokens=2)) == [0, 0]
    assert generate(model, cfg) == [0, 1]  # 3/2 < 2 once 0 was generated
    assert generate(model, cfg, prompt_ids=[0]) == [1, 0]  # 0 penalised by the prompt; then 1 is too (2/2 < 3/2)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        generate(model, cfg, prompt_ids=[99])


def test_top_k_and_top_p_filters():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = np.log(probs)
    kept = np.isfinite(sampling.apply_top_p(logits, 0.75))  # drops the tail 0.05 + 0.15 <= 0.25
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = np.isfinite(sampling.apply_top_k(logits, 3))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])
    assert np.isfinite(sampling.apply_top_k(logits, 0)).all()


# ---- config and deadline --------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": MAX_NEW_TOKENS_CAP + 1}, "max_new_tokens"),
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 17}, "num_beams"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"do_sample": True, "num_beams": 2}, "do_sample"),
        ({"eos_token_ids": (-1,)}, "eos_token_ids"),
    ],
)
def test_validate_rejects(kw, field):
    cfg = GenerationConfig(**kw)
    with pytest.raises(GenerationError, match=field) as info:
        cfg.validate()
    assert "\n" not in str(info.value)
    with pytest.raises(GenerationError):
        generate(ToyModel(), cfg)


def test_config_dict_round_trip_and_unknown_key():
    cfg = GenerationConfig(num_beams=3, eos_token_ids=(4, 2), length_penalty=0.5)
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GenerationError, match="beam_count"):
        GenerationConfig.from_dict({"beam_count": 3})


def test_deadline_raises():
    with pytest.raises(GenerationError, match="timed out after"):
        generate(ToyModel(), GenerationConfig(), deadline=time.monotonic() - 1.0)
    model = SlowModel()
    with pytest.raises(GenerationError, match="caption timed out after"):
        generate(model, GenerationConfig(max_new_tokens=100), deadline=time.monotonic() + 0.1)
    assert 2 <= model.count("step") < 20
    assert generate(ToyModel(), GenerationConfig(max_new_tokens=3), deadline=time.monotonic() + 60) != []
