"""Knowledge distillation: a compact student learns from a teacher's token distributions.

Loss per caption token (positions where labels != IGNORE):
    alpha * CE(student, reference token) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
where _T means softmax at temperature T (Hinton et al.); the T^2 factor keeps the KL
gradient scale independent of T. Teacher and student must share the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgevlm.errors import ConfigError
from edgevlm.models.vlm import VLM
from edgevlm.train.scenes_data import IGNORE


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the cross-entropy on reference captions

    def validate(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"distill temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distill alpha must be in [0, 1], got {self.alpha}")


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
    """Callable loss for train(): runs the frozen teacher and the student on a batch."""

    def __init__(self, teacher: VLM, cfg: DistillConfig):
        cfg.validate()
        if teacher.cfg.text.vocab_size <= 0:
            raise ConfigError("teacher has no vocabulary")
        self.teacher = teacher.eval().requires_grad_(False)
        self.cfg = cfg

    def __call__(self, student: VLM, pixels, ids, labels):
        if student.cfg.text.vocab_size != self.teacher.cfg.text.vocab_size:
            raise ConfigError("teacher and student must share the tokenizer (vocab sizes differ)")
        with torch.no_grad():
            teacher_logits = self.teacher(pixels, ids)
        loss, _ = kd_loss(student(pixels, ids), teacher_logits, labels, self.cfg)
        return loss
