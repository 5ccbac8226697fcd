"""Knowledge distillation: a compact student learns from a teacher's token distributions.

Loss per caption token (positions where labels != IGNORE):
    alpha * CE(student, reference token) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
where _T means softmax at temperature T (Hinton et al.); the T^2 factor keeps the KL
gradient scale independent of T. Teacher and student must share the tokenizer.

With feature_weight > 0, feature_weight * MSE(projected student features, teacher features) is
added (edgevlm.train.feature_match): image embeddings, and with feature_hidden the final hidden
states too. The projections are trained with the student and exposed as `trainable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F

from edgevlm.errors import ConfigError
from edgevlm.config import VLMConfig
from edgevlm.models.vlm import VLM
from edgevlm.train.feature_match import FeatureProjection, feature_loss, features
from edgevlm.train.scenes_data import IGNORE


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the cross-entropy on reference captions
    feature_weight: float = 0.0  # weight of the feature-matching MSE (0 = off)
    feature_hidden: bool = False  # also match the final hidden states, not only the image embeddings

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"distill temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distill alpha must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.feature_weight) and self.feature_weight >= 0):
            raise ConfigError(f"distill feature weight must be >= 0, got {self.feature_weight}")


def kd_loss(student_logits, teacher_logits, labels, cfg: DistillConfig):
    """student/teacher logits [B, S, V], labels [B, S] -> (loss, {"ce": .., "kl": ..})."""
    valid = labels != IGNORE  # [B, S]
    s = student_logits[valid]  # [N, V]
    t = teacher_logits[valid].detach()
    ce = F.cross_entropy(s, labels[valid])
    tau = cfg.temperature
    log_s = F.log_softmax(s / tau, dim=-1)
    log_t = F.log_softmax(t / tau, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean() * tau * tau
    loss = cfg.alpha * ce + (1 - cfg.alpha) * kl
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}


def _spread(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer for each student layer, evenly spread, first and last kept."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


@torch.no_grad()
def init_from_teacher(student: VLM, teacher: VLM) -> list[str]:
    """Copy every teacher tensor whose shape matches (layer subset by even spread, plus
    embeddings, norms, patch/position embeddings). Returns the names copied."""
    copied = []
    t_params = dict(teacher.named_parameters())
    maps = {
        "vision.encoder.layers.": _spread(student.cfg.vision.num_layers, teacher.cfg.vision.num_layers),
        "decoder.layers.": _spread(student.cfg.text.num_layers, teacher.cfg.text.num_layers),
    }
    for name, param in student.named_parameters():
        source = name
        for prefix, spread in maps.items():
            if name.startswith(prefix):
                index, rest = name[len(prefix):].split(".", 1)
                source = f"{prefix}{spread[int(index)]}.{rest}"
        if source in t_params and t_params[source].shape == param.shape:
            param.copy_(t_params[source])
            copied.append(name)
    return copied


class DistillObjective:
    """Callable loss for train(): runs the frozen teacher and the student on a batch.

    `trainable` is None, or the feature projections (when feature_weight > 0; they need the
    student's config): train() optimises and checkpoints them along with the student.
    `last` holds the parts of the latest loss, for logging and tests."""

    def __init__(self, teacher: VLM, cfg: DistillConfig, student_cfg: VLMConfig | None = None):
        cfg.validate()
        if teacher.cfg.text.vocab_size <= 0:
            raise ConfigError("teacher has no vocabulary")
        self.teacher = teacher.eval().requires_grad_(False)
        self.cfg = cfg
        self.trainable: FeatureProjection | None = None
        self.last: dict[str, float] = {}
        if cfg.feature_weight > 0:
            if student_cfg is None:
                raise ConfigError("feature matching needs the student's config (its width)")
            if student_cfg.image_seq_len != teacher.cfg.image_seq_len:
                raise ConfigError("feature matching needs as many image tokens per tile in the student as in the teacher")
            self.trainable = FeatureProjection(student_cfg.text.hidden_size, teacher.cfg.text.hidden_size,
                                               hidden=cfg.feature_hidden)

    def to(self, device) -> "DistillObjective":
        self.teacher.to(device)
        return self

    def __call__(self, student: VLM, pixels, ids, labels):
        if student.cfg.text.vocab_size != self.teacher.cfg.text.vocab_size:
            raise ConfigError("teacher and student must share the tokenizer (vocab sizes differ)")
        if self.trainable is None:  # the original path, unchanged: logits only
            with torch.no_grad():
                teacher_logits = self.teacher(pixels, ids)
            loss, self.last = kd_loss(student(pixels, ids), teacher_logits, labels, self.cfg)
            return loss
        with torch.no_grad():
            teacher_feats = features(self.teacher, pixels, ids)
        student_feats = features(student, pixels, ids)
        loss, self.last = kd_loss(student_feats[2], teacher_feats[2], labels, self.cfg)
        matched = feature_loss(student_feats, teacher_feats, labels != IGNORE, self.trainable)
        self.last["feature"] = float(matched.detach())
        return loss + self.cfg.feature_weight * matched
