"""The int8 vision MLP kernel (kernels/csrc/mlp_int8.c) against its numpy reference and fp32."""

import numpy as np
import pytest

from edgevlm.runtime.mlp_kernel import (MLPError, available, gelu_tanh, mlp_int8, mlp_reference, pack_linear,
                                        panel)
from tests.conftest import cpu_has
from tests.test_attention_kernel import _rel_rms


# On a CPU with AVX-512 VNNI the kernel must be built and load: a missing library fails here.
needs_kernel = pytest.mark.skipif(not cpu_has("avx512_vnni", "avx512bw"), reason="this CPU lacks AVX-512 VNNI")


def _layer(rng, k, n, std=0.03):
    w = rng.normal(0, std, (k, n)).astype(np.float32)
    s = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    q = np.clip(np.rint(w / s), -127, 127).astype(np.int8)
    return q, s, rng.normal(0, 0.1, n).astype(np.float32)


def _mlp(k, hidden, n=None, seed=0):
    rng = np.random.default_rng(seed)
    (q1, s1, b1), (q2, s2, b2) = _layer(rng, k, hidden), _layer(rng, hidden, n or k)
    return pack_linear(q1, s1, b1), pack_linear(q2, s2, b2, panel()), (q1 * s1, b1, q2 * s2, b2)


@needs_kernel
def test_kernel_is_built_and_runs_here():
    assert available() == (True, "ok")


@needs_kernel
@pytest.mark.parametrize("shape,k,hidden,n,threads", [
    ((1, 1024), 768, 3072, None, 2),  # SigLIP-base's MLP at 512 px
    ((2, 37), 64, 256, None, 2),  # rows not a multiple of the micro tile or the row block
    ((1, 1), 20, 40, 12, 1),  # one row; K not a multiple of 4, N not a multiple of the panel
    ((3, 50), 36, 100, 36, 8),  # more threads than row blocks
    ((1, 144), 128, 512, None, 2),  # the default model's shape
])
def test_kernel_matches_its_reference_and_float(shape, k, hidden, n, threads):
    fc1, fc2, (w1, b1, w2, b2) = _mlp(k, hidden, n)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, shape + (k,)).astype(np.float32)
    res = rng.normal(0, 1, shape + (n or k,)).astype(np.float32)
    got = mlp_int8(x, res, fc1, fc2, threads)
    want = mlp_reference(x, res, fc1, fc2)
    # the same quantization; the GELU polynomial (1e-4) can move an activation's 8-bit rounding
    assert _rel_rms(got - res, want - res) < 2e-3
    fp32 = res + (gelu_tanh(x @ w1 + b1) @ w2 + b2)
    # per-row 8-bit activations against fp32 (ONNX Runtime's per-tensor ones measure ~1.5%)
    assert _rel_rms(got - res, fp32 - res) < 0.03


@needs_kernel
def test_kernel_writes_over_the_residual_when_asked():
    fc1, fc2, _ = _mlp(64, 128)
    rng = np.random.default_rng(2)
    x, res = (rng.normal(0, 1, (1, 10, 64)).astype(np.float32) for _ in range(2))
    want = mlp_int8(x, res.copy(), fc1, fc2, 2)
    out = mlp_int8(x, res, fc1, fc2, 2, into_res=True)
    assert out is res and np.array_equal(out, want)


@needs_kernel
def test_zero_and_constant_rows_are_exact_enough():
    fc1, fc2, (w1, b1, w2, b2) = _mlp(32, 64)
    x = np.zeros((1, 3, 32), np.float32)
    x[0, 1] = 2.5  # a constant row: its range holds 0, so it is still representable
    res = np.zeros((1, 3, 32), np.float32)
    got = mlp_int8(x, res, fc1, fc2, 1)
    fp32 = gelu_tanh(x @ w1 + b1) @ w2 + b2
    assert np.allclose(got, fp32, atol=0.02 * np.abs(fp32).max())


def test_bad_shapes_are_refused_in_one_line():
    fc1, fc2, _ = _mlp(32, 64)
    x = np.zeros((1, 3, 32), np.float32)
    for bad in [(np.zeros((1, 3, 31), np.float32), np.zeros((1, 3, 32), np.float32)),
                (x, np.zeros((1, 4, 32), np.float32)),
                (x.astype(np.float64), np.zeros((1, 3, 32), np.float32))]:
        with pytest.raises(MLPError, match="MLP inputs must be"):
            mlp_int8(*bad, fc1, fc2, 1)
    with pytest.raises(MLPError, match="int8 linear"):
        pack_linear(np.zeros((4, 4), np.float32), np.ones(4, np.float32), np.zeros(4, np.float32))


@needs_kernel
def test_c_packing_equals_numpy_packing(monkeypatch):
    from edgevlm.runtime import mlp_kernel

    rng = np.random.default_rng(5)
    for k, n, multiple in ((768, 3072, 4), (37, 70, 4), (100, 12, panel())):
        q, s, b = _layer(rng, k, n)
        fast = pack_linear(q, s, b, multiple)
        monkeypatch.setattr(mlp_kernel, "_NUMPY_PACK", True)
        slow = pack_linear(q, s, b, multiple)
        monkeypatch.setattr(mlp_kernel, "_NUMPY_PACK", False)
        assert np.array_equal(fast.w, slow.w) and np.array_equal(fast.colsum, slow.colsum)
        assert np.array_equal(fast.int8(), q)


def _pre(k, width, seed=3):
    from edgevlm.runtime.mlp_kernel import PreNorm

    rng = np.random.default_rng(seed)
    q, s, b = _layer(rng, k, width)
    gamma, beta = rng.normal(1, 0.2, width).astype(np.float32), rng.normal(0, 0.1, width).astype(np.float32)
    return PreNorm(pack_linear(q, s, b), gamma, beta, 1e-6), (q * s, b, gamma, beta)


@needs_kernel
@pytest.mark.parametrize("shape,k,width,hidden,threads", [
    ((1, 1024), 768, 768, 3072, 2),  # SigLIP-base's layer after attention
    ((2, 37), 64, 72, 144, 3),  # attention width != hidden width; rows off the block sizes
    ((1, 1), 8, 20, 40, 1),
])
def test_kernel_from_the_attention_output_matches_reference_and_float(shape, k, width, hidden, threads):
    """o_proj + residual + LayerNorm before the MLP (the kernel's `pre`), against its reference and fp32."""
    from edgevlm.runtime.mlp_kernel import layer_norm

    pre, (wo, bo, gamma, beta) = _pre(k, width)
    fc1, fc2, (w1, b1, w2, b2) = _mlp(width, hidden)
    rng = np.random.default_rng(4)
    a = rng.normal(0, 1, shape + (k,)).astype(np.float32)
    res = rng.normal(0, 1, shape + (width,)).astype(np.float32)
    got = mlp_int8(a, res, fc1, fc2, threads, pre=pre)
    want = mlp_reference(a, res, fc1, fc2, pre=pre)
    assert _rel_rms(got - res, want - res) < 2e-3
    h = res + a @ wo + bo
    fp32 = h + gelu_tanh(layer_norm(h, gamma, beta, 1e-6) @ w1 + b1) @ w2 + b2
    assert _rel_rms(got - res, fp32 - res) < 0.03
    assert np.array_equal(mlp_int8(a, res.copy(), fc1, fc2, threads, pre=pre), got)  # deterministic


def test_pre_norm_of_the_wrong_width_is_refused():
    pre, _ = _pre(16, 24)
    fc1, fc2, _ = _mlp(32, 64)
    with pytest.raises(MLPError, match="o_proj"):
        mlp_int8(np.zeros((1, 2, 16), np.float32), np.zeros((1, 2, 32), np.float32), fc1, fc2, 1, pre=pre)


@needs_kernel
def test_mlp_benchmark_runs(capsys):
    """benchmarks/mlp_bench.py (the layer kernel against ONNX Runtime's dynamic int8 layer)."""
    import json

    from edgevlm.benchmarks.mlp_bench import main

    main(["--threads", "1", "--repeat", "1"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["width"] for r in report["rows"]] == [768, 768, 128]
    # per-row activations: no worse against fp32 than ONNX Runtime's per-tensor ones
    assert all(0 < r["kernel_rel_rms_vs_fp32"] <= r["onnxruntime_rel_rms_vs_fp32"] < 0.05 for r in report["rows"])
