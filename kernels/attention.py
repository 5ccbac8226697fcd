"""Attention for the PyTorch side: one fast path, one reference path, same contract.

Contract (both paths):
    q    [B, H,   S, hd]   queries of the S new tokens
    k, v [B, KVH, T, hd]   keys/values of every cache slot (T >= S); H % KVH == 0
    mask [B, 1,   S, T]    bool, True where a query may attend to a slot (None: no mask)
    out  [B, H,   S, hd]

The reference path spells the maths out (repeat KV heads, softmax of scaled scores); the
fast path is torch's fused scaled_dot_product_attention. tests/test_attention.py checks they
agree. ONNX lowerings onto ONNX Runtime's fused contrib ops belong here too (issue 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, KVH, T, hd] -> [B, KVH * n_rep, T, hd], each KV head serving n_rep query heads."""
    if n_rep == 1:
        return x
    b, kvh, t, hd = x.shape
    return x[:, :, None, :, :].expand(b, kvh, n_rep, t, hd).reshape(b, kvh * n_rep, t, hd)


def reference_attention(q, k, v, mask, scale: float) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, S, T]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)


def sdpa_attention(q, k, v, mask, scale: float) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


ATTENTION = {"sdpa": sdpa_attention, "reference": reference_attention}


def get_attention(name: str):
    try:
        return ATTENTION[name]
    except KeyError:
        raise ValueError(f"unknown attention implementation {name!r}; known: {', '.join(ATTENTION)}") from None
