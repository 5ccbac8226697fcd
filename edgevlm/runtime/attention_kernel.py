"""Our bf16 attention kernel (kernels/csrc/attention_bf16.c), loaded with ctypes, and its fp32
reference.

The vision tower's attention is unmasked softmax(q k^T * scale) v over N tokens and H heads of 32
or 64.
ONNX Runtime's CPU MultiHeadAttention runs it in fp32; the kernel runs the two products in
bfloat16 with fp32 accumulation (AVX-512 BF16) and the softmax in fp32. Measured at SigLIP's
shape (1024 tokens, 12 heads, 2 threads): 8.7-9.0 -> 4.6-4.8 ms a layer; relative RMS error to
float64 attention 0.33% (benchmarks/attention_bench.py).

The library is built by setup.py as an optional extension: where it is missing (no compiler at
install time) or the CPU lacks AVX-512 BF16, `available()` says why and callers use ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from edgevlm.runtime.native import load_library

HEAD_DIMS = (32, 64)  # the head sizes the kernel is built for
_NAME = "_attention_bf16"


class AttentionError(ValueError):
    """The kernel was handed tensors it cannot run (a corrupt split graph) or could not run them."""


def _declare(lib: ctypes.CDLL) -> None:
    f32 = ctypes.POINTER(ctypes.c_float)
    lib.edgevlm_attention_bf16.argtypes = [f32, f32, f32, f32] + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int]
    lib.edgevlm_attention_bf16.restype = ctypes.c_int


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    return load_library(_NAME, "bf16 attention", _declare, "edgevlm_attention_bf16_supported",
                        "this CPU lacks AVX-512 BF16")


def available() -> tuple[bool, str]:
    """(whether the kernel runs here, why not)."""
    lib, why = _load()
    return lib is not None, why


def attention_bf16(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int, scale: float,
                   threads: int, into_q: bool = False) -> np.ndarray:
    """q, k, v float32 [B, N, H*hd] -> [B, N, H*hd], hd in HEAD_DIMS. Raises AttentionError on
    shapes the kernel cannot run or a failed run, RuntimeError where it is not available here
    (check `available()` first). into_q: write the result over q (a contiguous float32 array the
    caller no longer needs): each head's q is packed before its output is written."""
    q, k, v = (np.ascontiguousarray(x, dtype=np.float32) for x in (q, k, v))
    if (q.ndim != 3 or k.shape != q.shape or v.shape != q.shape or num_heads <= 0 or q.shape[2] % num_heads
            or q.shape[2] // num_heads not in HEAD_DIMS):
        raise AttentionError(f"attention inputs must be [B, N, {num_heads} heads * 32 or 64] alike, got "
                             f"{q.shape}, {k.shape}, {v.shape}")
    lib, why = _load()
    if lib is None:
        raise RuntimeError(why)
    out = q if into_q and q.flags.writeable else np.empty_like(q)
    ptr = ctypes.POINTER(ctypes.c_float)
    rc = lib.edgevlm_attention_bf16(*(x.ctypes.data_as(ptr) for x in (q, k, v, out)), q.shape[0], q.shape[1],
                                    num_heads, q.shape[2] // num_heads, float(scale), int(threads))
    if rc != 0:
        raise AttentionError(f"bf16 attention failed on shape {q.shape} (out of memory or unsupported size)")
    return out


def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int, scale: float) -> np.ndarray:
    """The same attention in float64 numpy, heads split: the kernel's oracle."""
    b, n, width = q.shape
    hd = width // num_heads

    def heads(x):  # [B, N, H*hd] -> [B, H, N, hd]
        return x.astype(np.float64).reshape(b, n, num_heads, hd).transpose(0, 2, 1, 3)

    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) * scale  # [B, H, N, N]
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return (p @ heads(v)).transpose(0, 2, 1, 3).reshape(b, n, width).astype(np.float32)
