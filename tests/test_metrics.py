"""Caption metrics agree with coco-caption (pycocoevalcap, a dev-only oracle) to 1e-6."""

import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from edgevlm.eval.metrics import bleu, caption_scores, cider_d, cider_d_per_item

ATOL = 1e-6

# Six items, 1-5 references each: an exact match, a one-word candidate, a candidate longer
# than all its references, a repeated word (clipping), no overlap at all.
HAND_CANDIDATES = {
    "exact": "a dog runs on the grass",
    "short": "cat",
    "long": "a man riding a red bicycle down a busy city street at night in the rain",
    "repeat": "the the the cat sat on the mat",
    "five_refs": "two people walking on a beach",
    "no_overlap": "purple elephants dancing",
}
HAND_REFERENCES = {
    "exact": ["a dog runs on the grass", "a brown dog running on grass"],
    "short": ["a cat sitting on a sofa", "a small cat", "cat on a couch"],
    "long": ["a man rides a bike", "a person on a bicycle", "man riding bike on street"],
    "repeat": ["the cat sat on the mat", "a cat is sitting on a mat", "a cat on the mat", "cat"],
    "five_refs": [
        "two people walk along the beach",
        "a couple walking on the sand",
        "two persons on a beach",
        "people walking by the sea",
        "two people walking on a beach at sunset",
    ],
    "no_overlap": ["a kitchen with a stove"],
}

VOCAB = (
    "a the dog cat man woman child ball grass street car red blue green big small "
    "on in with at runs sits holds plays near park table two three water"
).split()


def random_corpus(n_items: int, seed: int) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Seeded captions over a 30-word vocabulary, 1-5 references per item.

    Each item has a base sentence; references and candidate are noisy copies of it (words
    swapped, dropped, added), so that 3- and 4-grams match too. Every 20th candidate is empty.
    """
    rng = random.Random(seed)

    def noisy(base: list[str]) -> str:
        words = [rng.choice(VOCAB) if rng.random() < 0.25 else w for w in base]
        words = [w for w in words if rng.random() > 0.1]
        words += [rng.choice(VOCAB) for _ in range(rng.choice([0, 0, 1, 3]))]
        return " ".join(words)

    candidates, references = {}, {}
    for i in range(n_items):
        base = [rng.choice(VOCAB) for _ in range(rng.randint(1, 14))]
        references[i] = [noisy(base) or base[0] for _ in range(rng.randint(1, 5))]
        candidates[i] = "" if i % 20 == 7 else noisy(base)
    return candidates, references


def oracle_scores(candidates, references) -> dict[str, float]:
    gts = {k: list(refs) for k, refs in references.items()}
    res = {k: [candidates[k]] for k in references}
    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_item = Cider().compute_score(gts, res)
    scores = {f"BLEU-{k + 1}": b for k, b in enumerate(bleus)}
    scores["CIDEr-D"] = float(cider)
    scores["per_item"] = dict(zip(gts.keys(), map(float, per_item)))
    return scores


@pytest.mark.parametrize(
    "corpus",
    [(HAND_CANDIDATES, HAND_REFERENCES), random_corpus(200, seed=0)],
    ids=["hand6", "random200"],
)
def test_matches_pycocoevalcap(corpus):
    candidates, references = corpus
    expected = oracle_scores(candidates, references)
    got = caption_scores(candidates, references)
    assert list(got) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"]
    for name, value in got.items():
        assert value == pytest.approx(expected[name], abs=ATOL), name
    per_item = cider_d_per_item(candidates, references)
    for key, value in per_item.items():
        assert value == pytest.approx(expected["per_item"][key], abs=ATOL), key


def test_lower_bleu_order_matches_pycocoevalcap():
    candidates, references = random_corpus(50, seed=1)
    gts = {k: refs for k, refs in references.items()}
    res = {k: [c] for k, c in candidates.items()}
    expected, _ = Bleu(2).compute_score(gts, res, verbose=0)
    assert bleu(candidates, references, n=2) == pytest.approx(expected, abs=ATOL)


def test_fixtures_cover_both_brevity_branches():
    def lengths(candidates, references):
        cand = sum(len(c.split()) for c in candidates.values())
        closest = sum(
            min((abs(len(r.split()) - len(candidates[k].split())), len(r.split())) for r in refs)[1]
            for k, refs in references.items()
        )
        return cand, closest

    cand, ref = lengths(HAND_CANDIDATES, HAND_REFERENCES)
    assert cand > ref  # no brevity penalty
    cand, ref = lengths(*random_corpus(200, seed=0))
    assert cand < ref  # brevity penalty applies


def test_hand_items_behave_as_designed():
    # The exact match scores the most CIDEr-D, the no-overlap item scores zero.
    per_item = cider_d_per_item(HAND_CANDIDATES, HAND_REFERENCES)
    assert max(per_item, key=per_item.get) == "exact"
    assert per_item["no_overlap"] == 0.0


def test_perfect_corpus():
    references = {i: [caption] for i, caption in enumerate(HAND_CANDIDATES.values())}
    candidates = {i: refs[0] for i, refs in references.items()}
    scores = bleu(candidates, references)
    assert scores[3] == pytest.approx(1.0, abs=1e-9)
    assert all(s == pytest.approx(1.0, abs=1e-9) for s in scores)
    # Every item has a single reference equal to its candidate: cosine 1 for each n-gram order
    # that has any weight; CIDEr-D is 10 per item where all four orders exist.
    assert cider_d({0: "a b c d", 1: "e f g h"}, {0: ["a b c d"], 1: ["e f g h"]}) == pytest.approx(10.0)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="at least one item"):
        caption_scores({}, {})
    with pytest.raises(ValueError, match="at least one item"):
        cider_d({}, {})


def test_key_mismatch_raises():
    with pytest.raises(ValueError, match="same keys.*only in candidates: \\['b'\\]"):
        bleu({"a": "x", "b": "y"}, {"a": ["x"]})
    with pytest.raises(ValueError, match="same keys"):
        cider_d({"a": "x"}, {"a": ["x"], "c": ["z"]})


def test_bad_references_raise():
    with pytest.raises(ValueError, match="non-empty list"):
        bleu({"a": "x"}, {"a": []})
    with pytest.raises(ValueError, match="non-empty list"):
        bleu({"a": "x"}, {"a": "x"})
