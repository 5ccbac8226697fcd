"""PyTorch-side weight quantization in the exported graphs' own formats, and each linear's error.

A weight W is [N, K] as nn.Linear stores it (N outputs, K inputs). Formats, each the exact rule
of the ONNX Runtime quantizer that export/quantize.py calls, so that a layer measured here is the
layer the bundle runs:

    int4        MatMulNBits bits=4 (MatMulNBitsQuantizer is_symmetric=True, block 32 along K,
                no zero-point input, so the kernel's implicit zero point 8 is used). Per block:
                m = its element of largest magnitude (the negative one on a tie), scale = -m / 8,
                q = clamp(roundf(w * (1 / scale) + 8), 0, 15), w' = (q - 8) * scale, all float32
                (MLAS's blockwise quantizer: reciprocal multiply, round half away from zero).
                The block's extreme lands on -8 exactly; the other sign reaches at most +7.
    int8_block  the same rule at bits=8 (half range 128, q in 0..255): MatMulNBits bits=8.
    int8        dynamic int8 per output channel (quantize_dynamic per_channel=True, QInt8,
                symmetric): scale = max|W[n, :]| / 127 (float64, stored float32),
                q = clip(round_half_even(w / scale), -127, 127), w' = q * scale.
    int4_int8   the vision tower at int4/mixed: w4 = the int4 w' with float16 block scales, then per output channel
                scale = max|w4[n, :]| / 127 (float32), q = clip(round_half_even(w4 / scale), -127, 127),
                w' = q * scale (edgevlm.runtime.packed_weights.int8_from_int4).

layer_errors runs the fp32 model and, at every nn.Linear, also computes the output with only that
layer's weight replaced by w' (same input, same bias): the error of that layer alone.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK = 32  # MatMulNBits block_size, as export/quantize.py sets it
FORMATS = ("int4", "int8_block", "int8", "int4_int8")


def _round_half_away(t: torch.Tensor) -> torch.Tensor:
    """C roundf for t >= 0. floor(t + 0.5) would be wrong where t + 0.5 rounds up in float32;
    t - floor(t) is exact, so compare the fraction instead."""
    low = torch.floor(t)
    return low + (t - low >= 0.5).to(t.dtype)


def fake_quant_blocks(weight: torch.Tensor, bits: int, block: int = BLOCK,
                      scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w' of the MatMulNBits symmetric format (bits 4 or 8): blocks of `block` along K.
    scale_dtype float16: scales rounded to float16 before use (the packed vision store)."""
    n, k = weight.shape
    w = weight.detach().to(torch.float32)
    pad = (-k) % block  # a last partial block is padded with zeros: they never change its extreme
    blocks = nn.functional.pad(w, (0, pad)).reshape(n, -1, block)  # [N, K/block, block]
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)  # [N, K/block, 1]
    extreme = torch.where(hi.abs() > lo.abs(), hi, lo)
    half = float(1 << (bits - 1))
    scale = (-extreme / half).to(scale_dtype).to(torch.float32)
    recip = torch.where(scale != 0, 1.0 / torch.where(scale != 0, scale, 1.0), 0.0)
    q = _round_half_away(blocks * recip + half).clamp(0, 2 * half - 1)
    return ((q - half) * scale).reshape(n, -1)[:, :k]


def fake_quant_channel_int8(weight: torch.Tensor) -> torch.Tensor:
    """w' of the dynamic int8 per-output-channel format."""
    w = weight.detach().to(torch.float32)
    absmax = w.abs().amax(1, keepdim=True)  # [N, 1]
    scale = (absmax.double() / 127).float()  # ORT computes the scale in float64, stores float32
    scale = torch.where(absmax > 0, scale, torch.ones_like(scale))  # an all-zero row: scale 1
    return torch.round(w / scale).clamp(-127, 127) * scale  # torch.round: half to even, as numpy


def fake_quant_int4_int8(weight: torch.Tensor) -> torch.Tensor:
    """w' of 4-bit weights run as int8 per output channel (the packed vision tower)."""
    w4 = fake_quant_blocks(weight, 4, scale_dtype=torch.float16)
    scale = w4.abs().amax(1, keepdim=True) / 127  # [N, 1] float32, as the runtime computes it
    scale = torch.where(scale != 0, scale, torch.ones_like(scale))
    return torch.round(w4 / scale).clamp(-127, 127) * scale


def fake_quant(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "int4":
        return fake_quant_blocks(weight, 4)
    if fmt == "int8_block":
        return fake_quant_blocks(weight, 8)
    if fmt == "int8":
        return fake_quant_channel_int8(weight)
    if fmt == "int4_int8":
        return fake_quant_int4_int8(weight)
    raise ValueError(f"unknown weight format {fmt!r}; one of {', '.join(FORMATS)}")


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear by its module name (a tied lm_head is listed once, under its own name)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


class _Errors:
    """Running max |y' - y|, sum (y' - y)^2 and sum y^2 of one layer in one format."""

    def __init__(self):
        self.max_abs, self.err2, self.ref2 = 0.0, 0.0, 0.0

    def add(self, ref: torch.Tensor, got: torch.Tensor) -> None:
        diff = (got - ref).double()
        self.max_abs = max(self.max_abs, float(diff.abs().max()))
        self.err2 += float((diff ** 2).sum())
        self.ref2 += float((ref.double() ** 2).sum())

    def result(self) -> dict:
        rel = (self.err2 / self.ref2) ** 0.5 if self.ref2 > 0 else (0.0 if self.err2 == 0 else float("inf"))
        return {"max_abs": self.max_abs, "rel_rms": rel}


@torch.no_grad()
def layer_errors(model: nn.Module, batches, formats: dict[str, tuple[str, ...]]) -> dict[str, dict[str, dict]]:
    """Per-layer output error of weight-only quantization.

    batches: (pixel_values [B, 3, H, W], input_ids [B, S]) pairs run through model(pixels, ids)
    (the fp32 model, unchanged). formats: {layer name: formats to measure}. Returns
    {layer: {format: {"max_abs", "rel_rms"}}}, rel_rms = rms(y' - y) / rms(y) over all batches."""
    mods = linears(model)
    missing = sorted(set(formats) - set(mods))
    if missing:
        raise ValueError(f"no nn.Linear named {', '.join(missing)}")
    stats = {name: {f: _Errors() for f in fmts} for name, fmts in formats.items()}

    def hook(name):
        def measure(module, inputs, output):
            for fmt, errors in stats[name].items():
                # w' is re-made per call rather than kept: a copy of every weight per format
                # would double a SmolVLM-size model's memory, and quantizing is cheap next to the forward
                errors.add(output, nn.functional.linear(inputs[0], fake_quant(module.weight, fmt), module.bias))
        return measure

    handles = [mods[name].register_forward_hook(hook(name)) for name in formats]
    was_training = model.training
    model.eval()
    try:
        for pixels, ids in batches:
            model(pixels, ids)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: {f: s.result() for f, s in per.items()} for name, per in stats.items()}
