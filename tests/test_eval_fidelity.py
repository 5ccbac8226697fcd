"""Fidelity metrics (token agreement, KL) and `edgevlm eval --reference` on tiny bundles."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgevlm
from edgevlm.cli import main
from edgevlm.data import scenes
from edgevlm.errors import ConfigError
from edgevlm.eval.fidelity import check_compatible, compare, fidelity, forced_logits, greedy_logits
from tests.conftest import tiny_scene_setup


@pytest.fixture(scope="module")
def images():
    return [scenes.render(scene, 32) for scene in scenes.split("val", 3)]


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """The tiny model with every matrix nudged, saved as a training checkpoint: same tokenizer,
    different distributions (`edgevlm eval` exports it to a temporary bundle)."""
    from edgevlm.models.loaders.native import write_export_info
    from edgevlm.train.train import save_checkpoint

    model, tokenizer, pre, prompt, gen, special = tiny_scene_setup()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path_factory.mktemp("ckpt") / "other"
    write_export_info(out, tokenizer, prompt, pre, gen, special)
    save_checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1), 0, out)
    return out


def test_compare_matches_hand_computation():
    ref = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    cand = np.array([[0.0, 0.0, 1.0], [3.0, 0.0, 0.0]])  # argmax: disagree, agree
    agree, kl = compare(ref, cand)
    assert agree == 1

    def softmax(x):
        e = [math.exp(v) for v in x]
        return [v / sum(e) for v in e]

    expected = sum(sum(p * math.log(p / q) for p, q in zip(softmax(r), softmax(c))) for r, c in zip(ref, cand))
    assert kl == pytest.approx(expected, abs=1e-12)


def test_teacher_forcing_reproduces_greedy_decoding(tiny_bundle, images):
    vlm = edgevlm.load(tiny_bundle[0], threads=1)
    tokens, logits = greedy_logits(vlm, images[0])
    assert logits.shape == (len(tokens), vlm.config.text.vocab_size)
    assert np.array_equal(forced_logits(vlm, images[0], tokens), logits)
    # the same greedy tokens the runtime's generator picks (eos, if chosen, is not returned by it)
    run = vlm.run(images[0], repetition_penalty=1.0, num_beams=1).token_ids
    assert tokens[:len(run)] == run and len(tokens) - len(run) in (0, 1)


def test_a_bundle_agrees_with_itself(tiny_bundle, images):
    vlm = edgevlm.load(tiny_bundle[0], threads=1)
    result = fidelity(vlm, vlm, images, progress=False)
    assert result["token_agreement"] == 1.0
    assert result["kl_ref_cand"] < 1e-6
    assert result["fidelity_positions"] >= len(images)


def test_eval_cli_scores_a_checkpoint_against_a_reference(tiny_bundle, other_checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["eval", str(other_checkpoint), "--reference", str(tiny_bundle[0]),
                                       "--scenes", "3", "--split", "val", "--threads", "1",
                                       "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "model: other (checkpoint, exported to a temporary bundle)" in result.stdout
    assert "reference: tiny (bundle)" in result.stdout
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record == json.loads((tmp_path / "m.json").read_text())
    assert record["kl_ref_cand"] > 1e-3 and 0.0 <= record["token_agreement"] <= 1.0
    assert {"BLEU-4", "CIDEr-D", "exact_match", "fidelity_positions", "model", "reference"} <= set(record)


def test_models_with_different_tokenizers_are_refused():
    def fake(vocab):
        tokenizer = SimpleNamespace(get_vocab=lambda: vocab)
        return SimpleNamespace(config=SimpleNamespace(text=SimpleNamespace(vocab_size=len(vocab))),
                               prompter=SimpleNamespace(tokenizer=tokenizer))

    check_compatible(fake({"a": 0, "b": 1}), fake({"a": 0, "b": 1}))
    with pytest.raises(ConfigError, match="different tokenizers"):
        check_compatible(fake({"a": 0, "b": 1}), fake({"a": 1, "b": 0}))
