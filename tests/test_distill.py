import math

import pytest
import torch

from edgevlm.config import TextConfig, VisionConfig, VLMConfig
from edgevlm.errors import ConfigError
from edgevlm.models.vlm import VLM
from edgevlm.train.distill import DistillConfig, DistillObjective, init_from_teacher, kd_loss
from edgevlm.train.scenes_data import IGNORE


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # [1, 2, 3]
    teacher = torch.tensor([[[0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[1, IGNORE]])  # only position 0 counts
    loss, parts = kd_loss(student, teacher, labels, DistillConfig(temperature=2.0, alpha=0.25))
    s = [1.0, 0.0, -1.0]
    ce = -(s[1] - math.log(sum(math.exp(x) for x in s)))
    ps = [math.exp(x / 2) / sum(math.exp(y / 2) for y in s) for x in s]
    t = [0.0, 2.0, 0.0]
    pt = [math.exp(x / 2) / sum(math.exp(y / 2) for y in t) for x in t]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps)) * 4
    assert parts["ce"] == pytest.approx(ce, abs=1e-6)
    assert parts["kl"] == pytest.approx(kl, abs=1e-6)
    assert float(loss) == pytest.approx(0.25 * ce + 0.75 * kl, abs=1e-6)


def test_kd_loss_averages_over_valid_positions_of_every_row():
    """Two rows, one valid position each, T = 1: CE and KL are means over the two positions."""
    student = torch.tensor([[[2.0, 0.0], [9.0, 9.0]], [[0.0, 0.0], [0.0, 1.0]]])  # [2, 2, 2]
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [3.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE], [IGNORE, 1]])  # row 0 position 0, row 1 position 1

    def log_softmax(x):
        z = math.log(sum(math.exp(v) for v in x))
        return [v - z for v in x]

    ce = (-log_softmax([2.0, 0.0])[0] - log_softmax([0.0, 1.0])[1]) / 2
    kl = 0.0
    for s, t in (([2.0, 0.0], [0.0, 0.0]), ([0.0, 1.0], [3.0, 0.0])):
        ls, lt = log_softmax(s), log_softmax(t)
        kl += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt)) / 2
    for alpha in (0.0, 0.5, 1.0):
        loss, parts = kd_loss(student, teacher, labels, DistillConfig(temperature=1.0, alpha=alpha))
        assert parts["ce"] == pytest.approx(ce, abs=1e-6) and parts["kl"] == pytest.approx(kl, abs=1e-6)
        assert float(loss) == pytest.approx(alpha * ce + (1 - alpha) * kl, abs=1e-6)


def test_kl_is_zero_when_student_equals_teacher():
    logits = torch.randn(2, 4, 7)
    labels = torch.randint(0, 7, (2, 4))
    _, parts = kd_loss(logits, logits.clone(), labels, DistillConfig())
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)


def test_bad_distill_config():
    with pytest.raises(ConfigError):
        DistillConfig(temperature=0).validate()
    with pytest.raises(ConfigError):
        DistillConfig(alpha=1.5).validate()


def _cfg(layers, hidden=48):
    return VLMConfig(vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=layers, num_heads=2,
                                         intermediate_size=64),
                     text=TextConfig(vocab_size=40, hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                                     intermediate_size=96, max_position_embeddings=64))


def test_init_from_teacher_copies_spread_layers():
    torch.manual_seed(0)
    teacher, student = VLM(_cfg(4)), VLM(_cfg(2))
    copied = init_from_teacher(student, teacher)
    assert "decoder.layers.1.mlp.up_proj.weight" in copied
    torch.testing.assert_close(student.decoder.layers[1].mlp.up_proj.weight, teacher.decoder.layers[3].mlp.up_proj.weight)
    torch.testing.assert_close(student.decoder.layers[0].self_attn.q_proj.weight, teacher.decoder.layers[0].self_attn.q_proj.weight)
    narrow = VLM(_cfg(2, hidden=32))
    assert "decoder.layers.0.mlp.up_proj.weight" not in init_from_teacher(narrow, teacher)  # shapes differ


def test_distillation_reduces_the_objective():
    torch.manual_seed(0)
    teacher, student = VLM(_cfg(2)), VLM(_cfg(1))
    pixels = torch.randn(4, 3, 32, 32)
    ids = torch.cat([torch.full((4, 1), 3), torch.full((4, 4), 2), torch.randint(6, 40, (4, 6))], dim=1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, 5:-1] = ids[:, 6:]
    objective = DistillObjective(teacher, DistillConfig(alpha=0.0))
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = objective(student, pixels, ids, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in teacher.parameters())
