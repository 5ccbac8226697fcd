"""Vision attention lowered onto ONNX Runtime's unmasked `com.microsoft.MultiHeadAttention`.

PyTorch keeps the reference path (edgevlm.models.vision); while `torch.onnx.export` traces a
vision attention block carrying an `MHALowering`, the heads split, scores, softmax and merge
become one contrib op (MLAS flash attention on CPU):

    query/key/value [tiles, N, D]  ->  output [tiles, N, D]      (num_heads, scale attributes)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MHALowering:
    num_heads: int
    scale: float

    def __call__(self, q, k, v):
        """q, k, v [B, N, D] (heads not yet split) -> attention output [B, N, D]."""
        (out,) = torch.onnx.ops.symbolic_multi_out(
            "com.microsoft::MultiHeadAttention", [q, k, v],
            attrs={"num_heads": self.num_heads, "scale": self.scale},
            dtypes=[q.dtype], shapes=[q.shape], version=1,
        )
        return out


def use_mha(module, enabled: bool = True) -> None:
    """Make (or stop making) every vision attention block inside `module` export as MultiHeadAttention."""
    from edgevlm.models.vision import VisionAttention

    for attn in module.modules():
        if isinstance(attn, VisionAttention):
            attn.lowering = MHALowering(attn.num_heads, attn.head_dim ** -0.5) if enabled else None
