"""Feature-matching distillation: the loss, its projections, and a tiny run through train()."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from edgevlm.errors import ConfigError
from edgevlm.models.vlm import VLM
from edgevlm.train.distill import DistillConfig, DistillObjective
from edgevlm.train.feature_match import FeatureProjection, feature_loss, feature_mse, features
from edgevlm.train.scenes_data import IGNORE
from edgevlm.train.train import OBJECTIVE_FILE, TrainConfig, train
from tests.test_distill import _cfg


def _identity(width):
    proj = nn.Linear(width, width, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(width))
    return proj


def _batch(n=4):
    torch.manual_seed(1)
    pixels = torch.randn(n, 3, 32, 32)
    ids = torch.cat([torch.full((n, 1), 3), torch.full((n, 4), 2), torch.randint(6, 40, (n, 6))], dim=1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, 5:-1] = ids[:, 6:]
    return pixels, ids, labels


@torch.no_grad()
def test_feature_mse_is_zero_for_matching_features_through_an_identity():
    x = torch.randn(2, 4, 8)
    assert float(feature_mse(x, x.clone(), _identity(8))) == 0.0
    y = x + 0.5
    assert float(feature_mse(x, y, _identity(8))) == pytest.approx(0.25)  # every element off by 0.5
    hidden = torch.randn(2, 5, 8)
    valid = torch.tensor([[True, True, False, False, False], [False, True, True, True, False]])
    proj = FeatureProjection(8, 8, hidden=True)
    proj.image, proj.hidden = _identity(8), _identity(8)
    assert float(feature_loss((x, hidden), (x, hidden), valid, proj)) == 0.0
    off = hidden.clone()
    off[~valid] += 3.0  # differences outside the caption positions do not count
    assert float(feature_loss((x, hidden), (x, off), valid, proj)) == 0.0
    assert float(feature_loss((x, hidden), (x, hidden + 1.0), valid, proj)) == pytest.approx(1.0)


def test_features_agree_with_the_forward_pass():
    torch.manual_seed(0)
    model = VLM(_cfg(1)).eval()
    pixels, ids, _ = _batch(2)
    image_embeds, hidden, logits = features(model, pixels, ids)
    torch.testing.assert_close(logits, model(pixels, ids))
    assert image_embeds.shape == (2, 4, 48) and hidden.shape == (2, ids.shape[1], 48)


def test_feature_options_are_validated():
    teacher = VLM(_cfg(2))
    with pytest.raises(ConfigError, match="feature weight"):
        DistillObjective(teacher, DistillConfig(feature_weight=-1.0))
    with pytest.raises(ConfigError, match="student's config"):
        DistillObjective(teacher, DistillConfig(feature_weight=1.0))
    assert DistillObjective(teacher, DistillConfig()).trainable is None  # off by default


class _Fixed:
    """The same batch at every step: the loss can only fall by learning it."""

    def __init__(self):
        self.data = _batch()

    def batch(self, step):
        return self.data


class _Recording(DistillObjective):
    def __call__(self, student, pixels, ids, labels):
        loss = super().__call__(student, pixels, ids, labels)
        self.history.append(dict(self.last, total=float(loss.detach())))
        return loss


def test_a_tiny_distill_run_with_feature_matching_learns(tmp_path):
    torch.manual_seed(0)
    teacher, student = VLM(_cfg(2)), VLM(_cfg(1, hidden=32))  # student narrower: the projection maps 32 -> 48
    objective = _Recording(teacher, DistillConfig(alpha=0.0, feature_weight=1.0, feature_hidden=True),
                           student_cfg=student.cfg)
    objective.history = []
    before = objective.trainable.image.weight.detach().clone()
    train(student, _Fixed(), TrainConfig(steps=25, lr=3e-3, warmup=2, checkpoint_every=100), tmp_path,
          log=lambda *_: None, objective=objective)
    first, last = objective.history[0], objective.history[-1]
    assert last["total"] < 0.7 * first["total"] and last["feature"] < first["feature"]
    assert not torch.equal(objective.trainable.image.weight, before)  # the projection is trained too
    assert all(p.grad is None for p in teacher.parameters())
    saved = load_file(str(tmp_path / OBJECTIVE_FILE))
    assert set(saved) == {"image.weight", "hidden.weight"} and saved["image.weight"].shape == (48, 32)
    assert not any(k.startswith(("image.", "hidden.")) for k in load_file(str(tmp_path / "model.safetensors")))
