"""Vision MLP activation lowered onto ONNX Runtime's `com.microsoft.FastGelu`.

torch exports GELU-tanh at opset 18 as eight elementwise nodes (Pow, Mul, Add, Tanh, ...),
each a full pass over the [tiles, N, intermediate] activation - the largest tensor in the
encoder. While `torch.onnx.export` traces a VisionMLP carrying a `FastGeluLowering`, fc1's
bias add and the activation become one FastGelu(x @ W1^T, b1) kernel (same tanh formula).
"""

from __future__ import annotations

import torch


class FastGeluLowering:
    def __call__(self, fc1: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] -> gelu_tanh(x @ W^T + b) [B, N, I]."""
        h = torch.matmul(x, fc1.weight.t())  # [B, N, I], bias left to the fused kernel
        inputs = [h] if fc1.bias is None else [h, fc1.bias]
        return torch.onnx.ops.symbolic("com.microsoft::FastGelu", inputs, dtype=h.dtype, shape=h.shape, version=1)


def use_fast_gelu(module, enabled: bool = True) -> None:
    """Make (or stop making) every vision MLP inside `module` export its activation as FastGelu."""
    from edgevlm.models.vision import VisionMLP

    for mlp in module.modules():
        if isinstance(mlp, VisionMLP):
            mlp.lowering = FastGeluLowering() if enabled else None
