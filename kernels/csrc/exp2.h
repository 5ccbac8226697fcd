/* 2^x on 16 floats, for both kernels' softmax / GELU: x = n + f with n = floor(x), f in [0, 1),
 * 2^f by a degree-3 polynomial (max relative error 7.6e-5, fitted for these kernels: the attention
 * rounds the probabilities to bf16, a step of 3.9e-3; the GELU output is quantized to 8 bit), and
 * 2^n by scalef. The caller clamps x to the range it needs. */
#ifndef EDGEVLM_EXP2_H
#define EDGEVLM_EXP2_H

#include <immintrin.h>

__attribute__((target("avx512f,fma"))) static inline __m512 exp2_core(__m512 x) {
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(7.8030035e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.2607303e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9582373e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.9992681e-1f));
    return _mm512_scalef_ps(p, n);
}

#endif
