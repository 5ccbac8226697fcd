"""Feature matching for distillation: the student's features, mapped to the teacher's width by
a learned linear projection, should equal the teacher's (MSE; FitNets-style hints).

Matched features:
    image   the projector's output (image embeddings) [B, T_img, D]: the student must see what
            the teacher sees, not only say what it says
    hidden  (optional) the decoder's final hidden states [B, S, D] at the caption positions

The projections exist only to train the student: they are saved with the checkpoint (a separate
safetensors file, so the model's own file stays exactly what the loaders and export expect)
and never exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgevlm.models.vlm import VLM


class FeatureProjection(nn.Module):
    """Learned student-width -> teacher-width maps, one per matched feature."""

    def __init__(self, student_width: int, teacher_width: int, hidden: bool = False):
        super().__init__()
        self.image = nn.Linear(student_width, teacher_width, bias=False)
        self.hidden = nn.Linear(student_width, teacher_width, bias=False) if hidden else None


def feature_mse(student: torch.Tensor, teacher: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """student [..., Ds], teacher [..., Dt] -> mean squared error of proj(student) against teacher."""
    return F.mse_loss(proj(student), teacher.detach())


def features(model: VLM, pixels, ids):
    """VLM.forward, keeping what it computes on the way: (image_embeds [B, T_img, D],
    final hidden states [B, S, D], logits [B, S, V])."""
    image_embeds = model.encode_images(pixels)
    embeds = model.merge(ids, image_embeds)
    positions = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)  # [B, S]
    hidden, _ = model.decoder.hidden_states(embeds, positions)
    return image_embeds, hidden, model.decoder.lm_head(hidden)


def feature_loss(student_feats, teacher_feats, valid, proj: FeatureProjection) -> torch.Tensor:
    """(image_embeds, hidden) of each side; valid [B, S] marks the caption positions."""
    loss = feature_mse(student_feats[0], teacher_feats[0], proj.image)
    if proj.hidden is not None:
        loss = loss + feature_mse(student_feats[1][valid], teacher_feats[1][valid], proj.hidden)  # [N, D]
    return loss
