"""Export the three graphs of a native edgevlm model to ONNX (torch.export based exporter).

    vision_encoder.onnx  pixel_values [tiles, 3, H, W] -> image_embeds [tiles, T_img, D]
    embed_tokens.onnx    input_ids [B, S] -> inputs_embeds [B, S, D]
    decoder.onnx         inputs_embeds [B, S, D], position_ids [B, S],
                         past.{i}.k / past.{i}.v [B, KVH, T, hd]
                         -> logits [B, V] (last position), present.{i}.k / present.{i}.v [B, KVH, T, hd]

attention="fused" (opt-in) lowers the vision attention onto com.microsoft.MultiHeadAttention
(edgevlm.kernels.mha) and the decoder's onto com.microsoft.GroupQueryAttention
(edgevlm.kernels.gqa), its RMSNorms onto SimplifiedLayerNormalization (edgevlm.kernels.onnx_norms),
all with the same interface, and marks decoder.onnx so the runtime binds one KV
buffer per layer as both past and present.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from edgevlm.errors import EdgeVLMError
from edgevlm.kernels.gqa import use_gqa
from edgevlm.kernels.mha import use_mha
from edgevlm.kernels.fast_gelu import use_fast_gelu
from edgevlm.kernels.onnx_merge_matmuls import merge_sibling_matmuls
from edgevlm.kernels.onnx_norms import fuse_rms_norm
from edgevlm.kernels.onnx_silu import fuse_silu
from edgevlm.kernels.onnx_skip_norms import fuse_skip_norms
from edgevlm.models.vlm import VLM

OPSET = 18
ATTENTION = ("default", "fused")
KV_CACHE_KEY = "edgevlm.kv_cache"  # read by edgevlm.runtime.decoder.shares_kv_buffer


def decoder_io_names(num_layers: int):
    past = [f"past.{i}.{kv}" for i in range(num_layers) for kv in "kv"]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in "kv"]
    return ["inputs_embeds", "position_ids", *past], ["logits", *present]


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes):
    # The exporter prints progress and warns about optional torchvision ops; keep the user's
    # terminal for our own progress bar and surface real failures as exceptions.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=OPSET, external_data=False,
            verbose=False,
        )


def export_vision(model: VLM, path: Path, attention: str = "default") -> None:
    """attention="fused": every vision attention block as com.microsoft.MultiHeadAttention."""
    cfg = model.cfg.vision
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    tiles = torch.export.Dim("tiles", min=1, max=64)
    if attention == "default":
        _export(model.vision, (pixels,), path, ["pixel_values"], ["image_embeds"], {"pixel_values": {0: tiles}})
        return
    use_mha(model.vision)
    use_fast_gelu(model.vision)
    try:
        _export(model.vision, (pixels,), path, ["pixel_values"], ["image_embeds"], {"pixel_values": {0: tiles}})
    finally:
        use_mha(model.vision, enabled=False)
        use_fast_gelu(model.vision, enabled=False)
    # The vision norms stay LayerNormalization after a plain Add: ONNX Runtime's CPU
    # SkipLayerNormalization measured slower at this shape (SmolVLM-256M, 1024 x 768 per tile,
    # int8, 2 threads, in-process A/B: 347 -> 305 ms per tile without it; fp32 584 -> 548 ms).
    # The decoder keeps SkipSimplifiedLayerNormalization (no difference measured there).


def export_embed(model: VLM, path: Path) -> None:
    ids = torch.zeros(1, 4, dtype=torch.int64)
    b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
    _export(model.decoder.embed_tokens, (ids,), path, ["input_ids"], ["inputs_embeds"], {"input": {0: b, 1: s}})


def _finish_fused_decoder(path: Path) -> None:
    """RMSNorms -> SimplifiedLayerNormalization, SiLU -> QuickGelu, and mark the graph's KV buffers
    as shareable."""
    proto = onnx.load(str(path))
    fuse_rms_norm(proto)
    fuse_skip_norms(proto)
    fuse_silu(proto)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, KV_CACHE_KEY: "shared"})
    onnx.save(proto, str(path))


def merge_decoder_linears(path: Path) -> dict[str, str]:
    """q/k/v and gate/up matmuls of a fused decoder -> one matmul each (after quantization, so a
    mixed graph's 8-bit and 4-bit linears stay apart). Returns {old node: merged node}."""
    proto = onnx.load(str(path))
    renamed = merge_sibling_matmuls(proto)
    onnx.save(proto, str(path))
    return renamed


def export_decoder(model: VLM, path: Path, attention: str = "default") -> None:
    dec = model.decoder
    if attention not in ATTENTION:
        raise EdgeVLMError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION)}")
    if attention == "fused" and dec.cfg.head_dim % 8:
        raise EdgeVLMError(f"--attention fused needs a text head_dim that is a multiple of 8 "
                           f"(GroupQueryAttention on CPU); this model has {dec.cfg.head_dim}")
    b_n, s_n, t_n = 2, 3, 8  # example sizes, all different so no dimension gets specialised
    embeds = torch.randn(b_n, s_n, dec.cfg.hidden_size)
    positions = torch.arange(s_n)[None].expand(b_n, -1).contiguous()
    cache = [t for kv in dec.empty_cache(b_n, t_n) for t in kv]
    b, s, t = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("max_len")
    shapes = {"inputs_embeds": {0: b, 1: s}, "position_ids": {0: b, 1: s},
              "flat_cache": tuple({0: b, 2: t} for _ in cache)}
    ins, outs = decoder_io_names(dec.cfg.num_layers)
    if attention == "default":
        _export(dec, (embeds, positions, *cache), path, ins, outs, shapes)
        return
    use_gqa(dec)
    try:
        _export(dec, (embeds, positions, *cache), path, ins, outs, shapes)
    finally:
        use_gqa(dec, enabled=False)
    _finish_fused_decoder(path)


EXPORTERS = {
    "vision_encoder": export_vision,
    "embed_tokens": export_embed,
    "decoder": export_decoder,
}
