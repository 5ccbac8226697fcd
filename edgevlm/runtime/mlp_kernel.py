"""Our int8 vision MLP kernel (kernels/csrc/mlp_int8.c), loaded with ctypes, and its numpy
reference.

out = residual + fc2(gelu_tanh(fc1(x))), or, from an attention's output, the whole rest of the
layer (PreNorm: o_proj, residual, LayerNorm, then the MLP), with int8 weights (the bundle's
per-channel ones) and uint8 activations quantized per row, in one call: ONNX Runtime runs the same
op by op with the [N, 3072] fp32 activation going through memory between them.

Like the attention kernel, the library is an optional extension: `available()` says why it cannot
run here, and callers then run the whole vision graph on ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import numpy as np

from edgevlm.runtime.native import load_library

_NAME = "_mlp_int8"


class MLPError(ValueError):
    """The kernel was handed tensors it cannot run, or could not run them."""


def _declare(lib: ctypes.CDLL) -> None:
    f32, i8, i32 = (ctypes.POINTER(t) for t in (ctypes.c_float, ctypes.c_int8, ctypes.c_int32))
    lib.edgevlm_mlp_int8.argtypes = ([f32, f32, f32] + [ctypes.c_int] * 4 + [i8, i32, f32, f32] * 2
                                     + [ctypes.c_int, i8, i32, f32, f32, f32, f32, ctypes.c_float, ctypes.c_int])
    lib.edgevlm_mlp_int8.restype = ctypes.c_int
    lib.edgevlm_mlp_int8_panel.restype = ctypes.c_int
    lib.edgevlm_mlp_int8_pack.argtypes = [i8] + [ctypes.c_int] * 4 + [i8, i32]
    lib.edgevlm_mlp_int8_pack.restype = None


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    return load_library(_NAME, "int8 MLP", _declare, "edgevlm_mlp_int8_supported", "this CPU lacks AVX-512 VNNI")


def available() -> tuple[bool, str]:
    """(whether the kernel runs here, why not)."""
    lib, why = _load()
    return lib is not None, why


_NUMPY_PACK = False  # tests set it to check the C packing against this numpy one


def panel() -> int:
    """The kernel's weight panel width (output channels per panel); 64 where it is not built."""
    lib, _ = _load()
    return int(lib.edgevlm_mlp_int8_panel()) if lib is not None else 64


def round_up(v: int, to: int) -> int:
    return -(-v // to) * to


def aligned_int8(size: int) -> np.ndarray:
    """A zeroed int8 array whose data starts on a 64-byte boundary (the kernel's aligned loads)."""
    raw = np.zeros(size + 64, np.int8)
    start = -raw.ctypes.data % 64
    return raw[start:start + size]


@dataclass(frozen=True)
class PackedLinear:
    """One int8 linear layer in the kernel's layout: w [Np/NR][Kp/4][NR][4] int8 (NR = panel()), and
    per output channel (zero past n) the column sums of w, the weight scales and the bias."""
    w: np.ndarray
    colsum: np.ndarray  # [Np] int32
    scale: np.ndarray  # [Np] float32
    bias: np.ndarray  # [Np] float32
    k: int
    n: int

    def int8(self) -> np.ndarray:
        """The weights back as [K, N] int8 (the reference's)."""
        np_, nr = self.colsum.size, panel()
        kp = self.w.size // np_
        return self.w.reshape(np_ // nr, kp // 4, nr, 4).transpose(1, 3, 0, 2).reshape(kp, np_)[:self.k, :self.n]


@dataclass(frozen=True)
class PreNorm:
    """What comes before the MLP when the kernel starts from an attention's output a:
    h = residual + o_proj(a), and the MLP reads LayerNorm(h) * gamma + beta (then adds h back)."""
    o_proj: PackedLinear
    gamma: np.ndarray  # [W] float32
    beta: np.ndarray  # [W] float32
    eps: float


def packed_size(k: int, n: int, k_multiple: int = 4) -> int:
    """Bytes of pack_linear's w for a [k, n] weight."""
    return round_up(k, k_multiple) * round_up(n, panel())


def pack_linear(q8: np.ndarray, scale: np.ndarray, bias: np.ndarray, k_multiple: int = 4,
                into: np.ndarray | None = None) -> PackedLinear:
    """q8 [K, N] int8 (symmetric, per output channel), scale [N], bias [N] -> PackedLinear. K is
    padded with zero rows to a multiple of k_multiple: 4 for fc1, panel() for fc2 (whose K is
    fc1's padded N). into: where to write w (int8, packed_size bytes, 64-byte aligned), else a new
    array."""
    k, n = q8.shape
    if scale.shape != (n,) or bias.shape != (n,) or q8.dtype != np.int8:
        raise MLPError(f"an int8 linear needs q8 [K, N] int8 with scale and bias [N], got {q8.shape} "
                       f"{q8.dtype}, {scale.shape}, {bias.shape}")
    nr = panel()
    kp, np_ = round_up(k, k_multiple), round_up(n, nr)
    w = aligned_int8(kp * np_) if into is None else into
    if w.size != kp * np_ or w.dtype != np.int8 or w.ctypes.data % 64:
        raise MLPError(f"pack_linear needs {kp * np_} aligned int8 bytes to write into, got {w.size} {w.dtype}")
    colsum = np.zeros(np_, np.int32)
    lib, _ = _load()
    if lib is not None and not _NUMPY_PACK:  # the same layout in C, faster than numpy's strided copy
        q8 = np.ascontiguousarray(q8)
        lib.edgevlm_mlp_int8_pack(q8.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)), k, n, kp, np_,
                                  w.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
                                  colsum.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))
    else:
        full = np.zeros((kp, np_), np.int8)
        full[:k, :n] = q8
        # [Kp, Np] -> [Kp/4, 4, Np/nr, nr] -> [Np/nr, Kp/4, nr, 4]: per panel, 4 k of a channel per word
        w.reshape(np_ // nr, kp // 4, nr, 4)[:] = full.reshape(kp // 4, 4, np_ // nr, nr).transpose(2, 0, 3, 1)
        colsum[:n] = q8.astype(np.int32).sum(axis=0)
    s, b = np.zeros(np_, np.float32), np.zeros(np_, np.float32)
    s[:n], b[:n] = scale, bias
    return PackedLinear(w, colsum, s, b, k, n)


def _check(x: np.ndarray, res: np.ndarray, fc1: PackedLinear, fc2: PackedLinear, pre: PreNorm | None):
    width = pre.o_proj.k if pre else fc1.k
    if (x.ndim < 2 or x.shape[-1] != width or fc2.k != fc1.n or res.shape != x.shape[:-1] + (fc2.n,)
            or x.dtype != np.float32 or res.dtype != np.float32):
        raise MLPError(f"MLP inputs must be float32 x [..., {width}] and residual [..., {fc2.n}] alike, got "
                       f"{x.shape} {x.dtype}, {res.shape} {res.dtype} (fc2 reads {fc2.k}, fc1 gives {fc1.n})")
    if pre and not (pre.o_proj.n == fc2.n == fc1.k and pre.gamma.shape == pre.beta.shape == (fc1.k,)
                    and pre.gamma.dtype == pre.beta.dtype == np.float32):
        raise MLPError(f"the MLP's o_proj ({pre.o_proj.k} -> {pre.o_proj.n}) and norm ({pre.gamma.shape}) "
                       f"must give its {fc1.k} inputs and its {fc2.n}-wide residual")


def mlp_int8(x: np.ndarray, res: np.ndarray, fc1: PackedLinear, fc2: PackedLinear, threads: int,
             into_res: bool = False, pre: PreNorm | None = None) -> np.ndarray:
    """residual + fc2(gelu_tanh(fc1(x))) over the last axis; with `pre`, x is an attention's
    output and the block is h = residual + o_proj(x), h + fc2(gelu_tanh(fc1(LayerNorm(h)))).
    into_res: write over res (a contiguous float32 array the caller no longer needs). Raises
    MLPError on shapes it cannot run or a failed run, RuntimeError where the kernel is not
    available (check `available()`)."""
    x, res = np.ascontiguousarray(x), np.ascontiguousarray(res)
    _check(x, res, fc1, fc2, pre)
    lib, why = _load()
    if lib is None:
        raise RuntimeError(why)
    out = res if into_res and res.flags.writeable else np.empty_like(res)
    m = int(np.prod(x.shape[:-1]))

    def p(a, t):
        return a.ctypes.data_as(ctypes.POINTER(t)) if a is not None else None

    f32, i8, i32 = ctypes.c_float, ctypes.c_int8, ctypes.c_int32
    o = pre.o_proj if pre else None
    rc = lib.edgevlm_mlp_int8(p(x, f32), p(res, f32), p(out, f32), m, fc1.k, fc1.n, fc2.n,
                              p(fc1.w, i8), p(fc1.colsum, i32), p(fc1.scale, f32), p(fc1.bias, f32),
                              p(fc2.w, i8), p(fc2.colsum, i32), p(fc2.scale, f32), p(fc2.bias, f32),
                              o.k if o else 0, p(o and o.w, i8), p(o and o.colsum, i32), p(o and o.scale, f32),
                              p(o and o.bias, f32), p(pre and pre.gamma, f32), p(pre and pre.beta, f32),
                              float(pre.eps) if pre else 0.0, int(threads))
    if rc != 0:
        raise MLPError(f"int8 MLP failed on shape {x.shape} (out of memory or unsupported size)")
    return out


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [M, K] -> (q [M, K] uint8, scale [M], zero [M]): per row, asymmetric, range holding 0."""
    lo, hi = np.minimum(x.min(axis=1), 0), np.maximum(x.max(axis=1), 0)
    scale = ((hi - lo) / np.float32(255)).astype(np.float32)
    scale[~(scale > 0)] = 1
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    q = np.clip(np.rint(x * (np.float32(1) / scale)[:, None]) + zero[:, None], 0, 255)
    return q.astype(np.uint8), scale, zero.astype(np.int64)


def gelu_tanh(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))


def _linear(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, layer: PackedLinear) -> np.ndarray:
    w = layer.int8().astype(np.int64)
    acc = q.astype(np.int64) @ w - zero[:, None] * w.sum(axis=0)
    return acc * (scale.astype(np.float64)[:, None] * layer.scale[:layer.n]) + layer.bias[:layer.n]


def layer_norm(h: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = h.mean(axis=-1, keepdims=True)
    return (h - mean) / np.sqrt(((h - mean) ** 2).mean(axis=-1, keepdims=True) + eps) * gamma + beta


def mlp_reference(x: np.ndarray, res: np.ndarray, fc1: PackedLinear, fc2: PackedLinear,
                  pre: PreNorm | None = None) -> np.ndarray:
    """The kernel's arithmetic in numpy: the same per-row quantization, exact integer products,
    exact GELU (the kernel's is a polynomial within 1e-4). The kernel's oracle."""
    _check(x, res, fc1, fc2, pre)
    rows, res = x.reshape(-1, x.shape[-1]), res.reshape(-1, fc2.n)
    if pre:
        res = (res + _linear(*quantize_rows(rows), pre.o_proj)).astype(np.float32)
        rows = layer_norm(res.astype(np.float64), pre.gamma, pre.beta, pre.eps).astype(np.float32)
    h = gelu_tanh(_linear(*quantize_rows(rows), fc1)).astype(np.float32)
    y = _linear(*quantize_rows(h), fc2)
    return (res + y).astype(np.float32).reshape(x.shape[:-1] + (fc2.n,))
