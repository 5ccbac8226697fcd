"""The bf16 vision attention kernel (kernels/csrc/attention_bf16.c) against its float64 reference."""

import numpy as np
import pytest

from edgevlm.runtime.attention_kernel import AttentionError, attention_bf16, attention_reference, available
from tests.conftest import cpu_has


def cpu_has_bf16() -> bool:
    return cpu_has("avx512_bf16", "avx512bw")


# On a CPU with AVX-512 BF16 the kernel must be built and load: a missing library fails here, it is
# not skipped. Elsewhere the runtime uses ONNX Runtime's attention and these tests have nothing to run.
needs_kernel = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU lacks AVX-512 BF16")


def _qkv(b, n, heads, seed=0, q_scale=1.5, hd=64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, n, heads * hd)).astype(np.float32) * q_scale
    k = rng.standard_normal((b, n, heads * hd)).astype(np.float32) * 1.5
    v = rng.standard_normal((b, n, heads * hd)).astype(np.float32)
    return q, k, v


def _rel_rms(got, want):
    return float(np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()))


@needs_kernel
def test_kernel_is_built_and_runs_here():
    assert available() == (True, "ok")


@needs_kernel
@pytest.mark.parametrize("b,n,heads,threads,hd", [
    (1, 1024, 12, 2, 64),  # SigLIP's shape at 512 px
    (2, 37, 3, 2, 64),  # rows not a multiple of 4, keys not a multiple of 64: padding and masking
    (3, 1, 1, 1, 64),  # one token: softmax of one score
    (1, 65, 2, 3, 64),  # one key past a block
    (2, 200, 4, 8, 64),  # more threads than work items
    (1, 144, 4, 2, 32),  # the default model's shape (heads of 32)
    (2, 33, 1, 1, 32),
])
def test_kernel_matches_float64_attention(b, n, heads, threads, hd):
    q, k, v = _qkv(b, n, heads, hd=hd)
    got = attention_bf16(q, k, v, heads, hd ** -0.5, threads)
    want = attention_reference(q, k, v, heads, hd ** -0.5)
    # bf16 rounding of q, k, v and the probabilities (8-bit mantissa): ~0.5% relative RMS
    assert _rel_rms(got, want) < 0.01
    assert np.abs(got - want).max() < 0.05


@needs_kernel
def test_kernel_is_stable_on_large_scores_and_exact_on_constant_values():
    q, k, v = _qkv(1, 130, 2, q_scale=60.0)  # scores in the thousands: online softmax must not overflow
    got = attention_bf16(q, k, v, 2, 0.125, 2)
    assert np.isfinite(got).all()
    # bf16 q and k put a relative 2^-9 on each score: at scores in the thousands that is several
    # units of logit, so near-ties flip; the result stays close, not bf16-tight
    assert _rel_rms(got, attention_reference(q, k, v, 2, 0.125)) < 0.05
    v[:] = 0.75  # bf16-exact: any convex combination of equal rows is that row
    np.testing.assert_allclose(attention_bf16(q, k, v, 2, 0.125, 2), 0.75, rtol=1e-2)


@needs_kernel
def test_kernel_refuses_bad_shapes():
    q, k, v = _qkv(1, 8, 2)
    with pytest.raises(AttentionError, match="attention inputs"):
        attention_bf16(q, k[:, :4], v, 2, 0.125, 1)
    with pytest.raises(AttentionError, match="attention inputs"):
        attention_bf16(q, k, v, 8, 0.125, 1)  # heads of 16: not a size the kernel has


def test_reference_is_softmax_attention():
    """The oracle itself, against a per-head loop."""
    q, k, v = _qkv(1, 5, 2)
    got = attention_reference(q, k, v, 2, 0.125)
    for h in range(2):
        cols = slice(64 * h, 64 * h + 64)
        s = q[0][:, cols].astype(np.float64) @ k[0][:, cols].T.astype(np.float64) * 0.125
        p = np.exp(s - s.max(1, keepdims=True))
        want = (p / p.sum(1, keepdims=True)) @ v[0][:, cols]
        np.testing.assert_allclose(got[0][:, cols], want, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_attention_benchmark_runs(capsys):
    """benchmarks/attention_bench.py (the kernel against ONNX Runtime's MultiHeadAttention)."""
    import json

    from edgevlm.benchmarks.attention_bench import main

    main(["--threads", "1", "--repeat", "1"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["head_dim"] for r in report["rows"]] == [64, 64, 32]
    assert all(r["bf16_ms"] > 0 and r["rel_rms_vs_float64"] < 0.01 for r in report["rows"])
