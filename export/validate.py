"""Check each exported graph against the PyTorch module it came from.

Runs ONNX Runtime and PyTorch on the same random inputs (shapes other than those used to
trace, so a dimension wrongly frozen at export shows up) and returns the max abs
difference per graph. Export fails when a graph is outside its tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgevlm.errors import EdgeVLMError
from edgevlm.export.graphs import decoder_io_names
from edgevlm.models.vlm import VLM

FP32_TOLERANCE = 1e-4
# Vision features are not logits: their magnitude grows with the projector width (a 4x
# pixel shuffle concatenates 16 patch vectors), and fp32 summation-order error grows with
# it. Their tolerance is FP32_TOLERANCE times max(1, largest |reference value|).
SCALED_GRAPHS = ("vision_encoder",)


class ExportValidationError(EdgeVLMError):
    """An exported graph disagrees with PyTorch beyond its tolerance."""


def _max_diff(onnx_outputs, torch_outputs) -> tuple[float, float]:
    """(max |onnx - torch|, max |torch|) over all outputs."""
    refs = [t.detach().numpy() for t in torch_outputs]
    diff = max(float(np.abs(o - r).max()) for o, r in zip(onnx_outputs, refs))
    return diff, max(float(np.abs(r).max()) for r in refs)


def tolerance_for(name: str, tolerance: float, ref_scale: float) -> float:
    """The allowed max abs difference for graph `name` (see SCALED_GRAPHS)."""
    return tolerance * max(1.0, ref_scale) if name in SCALED_GRAPHS else tolerance


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def validate_vision(model: VLM, path: Path, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    n = model.cfg.vision.image_size
    pixels = torch.rand(3, 3, n, n, generator=g) * 2 - 1
    out = _session(path).run(None, {"pixel_values": pixels.numpy()})
    return _max_diff(out, [model.vision(pixels)])


@torch.no_grad()
def validate_embed(model: VLM, path: Path, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.text.vocab_size, (2, 7), generator=g)
    out = _session(path).run(None, {"input_ids": ids.numpy()})
    return _max_diff(out, [model.decoder.embed_tokens(ids)])


@torch.no_grad()
def validate_decoder(model: VLM, path: Path, seed: int = 0, valid_slots_only: bool = False) -> tuple[float, float]:
    """Prefill 5 tokens into a 12-slot cache, then decode steps; compare logits and caches.

    valid_slots_only: compare the caches at written slots (0..last position) only - a fused
    GroupQueryAttention graph leaves the other slots of a fresh present buffer unspecified."""
    g = torch.Generator().manual_seed(seed)
    dec = model.decoder
    ins, _ = decoder_io_names(dec.cfg.num_layers)
    sess = _session(path)
    cache = [t for kv in dec.empty_cache(1, 12) for t in kv]
    worst, scale, start = 0.0, 0.0, 0
    for length in (5, 1, 1) if valid_slots_only else (5, 1):
        embeds = torch.randn(1, length, dec.cfg.hidden_size, generator=g)
        positions = torch.arange(start, start + length)[None]
        ref = dec(embeds, positions, *cache)
        out = sess.run(None, dict(zip(ins, [t.numpy() for t in (embeds, positions, *cache)])))
        n = start + length if valid_slots_only else None  # slots compared: [0, n)
        diff, ref_scale = _max_diff([out[0]] + [o[:, :, :n] for o in out[1:]],
                                    [ref[0]] + [r[:, :, :n] for r in ref[1:]])
        worst, scale = max(worst, diff), max(scale, ref_scale)
        cache, start = list(ref[1:]), start + length
    return worst, scale


VALIDATORS = {
    "vision_encoder": validate_vision,
    "embed_tokens": validate_embed,
    "decoder": validate_decoder,
}
