/* The vision tower's layer after its attention, in int8 with int32 accumulation (AVX-512 VNNI),
 * all in one call:
 *   out = residual + fc2(gelu_tanh(fc1(x)))                                 (an MLP alone), or
 *   h = residual + o_proj(a), out = h + fc2(gelu_tanh(fc1(LayerNorm(h))))  (from the attention's a)
 *
 * Why: ONNX Runtime runs it op by op (DynamicQuantizeMatMul, Add, LayerNormalization,
 * DynamicQuantizeMatMul, FastGelu, DynamicQuantizeLinear, DynamicQuantizeMatMul, Add), and between
 * them the [N, 3072] fp32 activation makes three round trips through memory (12.6 MB each at
 * SigLIP's shape). Here a block of rows goes through all of it while it sits in L2.
 *
 * Quantization: weights int8, symmetric, one scale per output channel (the bundle's own); the
 * activations (the input, the norm's output, the GELU output) uint8, asymmetric, one scale and
 * zero point per row (finer than ONNX Runtime's one per tensor, and what lets a row block be
 * finished alone).
 *   y[i, j] = sa[i] * sw[j] * (sum_k qa[i, k] * qw[k, j] - za[i] * colsum_w[j]) + bias[j]
 *
 * Layouts (NR = the panel width, edgevlm_mlp_int8_panel()):
 *   x [M, K1], residual and out [M, N2]     fp32 row-major (out may be the residual itself)
 *   w packed [Np/NR][Kp/4][NR][4] int8      NR output channels per panel; each 32-bit word holds
 *                                           4 consecutive k of one channel (vpdpbusd's operand)
 *   colsum [Np] int32, scale [Np], bias [Np] fp32, zero past the real N
 *   fc1 and o_proj: Kp = K rounded up to 4, Np = N rounded up to NR; fc2: Kp = fc1's Np,
 *   Np = N2 rounded up to NR.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp2.h"
#include "workers.h"

#ifndef MR
#define MR 8 /* rows per micro tile */
#endif
#ifndef NV
#define NV 2 /* 16-channel vectors per micro tile */
#endif
#define NR (16 * NV) /* output channels per micro tile and weight panel */
#ifndef MB
#define MB 48 /* rows per work item: its fc1 output (48 x 3072 fp32, 590 KB) stays in L2 */
#endif

#define KERNEL __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))

typedef struct {
    const int8_t *w;
    const int32_t *colsum;
    const float *scale, *bias;
    int k, n, kp, np; /* real and padded sizes */
} layer_t;

typedef struct {
    const float *x, *res;
    float *out;
    int m;
    layer_t fc1, fc2;
    /* optional: x is the attention's output, and the MLP's input is LN(res + o_proj(x)) */
    int pre;
    layer_t o;
    const float *gamma, *beta;
    float eps;
    int items, *next, failed;
} job_t;

/* acc[r][c] = sum over k of a[r][k] * w[k][c], r < MR, c < NR, k < kp (a multiple of 4). The
 * accumulators are named variables: as an array, GCC keeps them on the stack. */
#if NV == 2
#define ZERO(r) __m512i c##r##0 = z, c##r##1 = z;
#define ROW(r)                                                                \
    av = _mm512_set1_epi32(*(const int32_t *)(a + (size_t)(r) * lda + k));      \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, av, b0), c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, b1);
#define STORE(r) _mm512_store_si512(acc + NR * (r), c##r##0), _mm512_store_si512(acc + NR * (r) + 16, c##r##1);
#define LOADB const __m512i b0 = _mm512_load_si512(w), b1 = _mm512_load_si512(w + 64);
#else
#define ZERO(r) __m512i c##r##0 = z, c##r##1 = z, c##r##2 = z, c##r##3 = z;
#define ROW(r)                                                                                   \
    av = _mm512_set1_epi32(*(const int32_t *)(a + (size_t)(r) * lda + k));                         \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, av, b0), c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, b1); \
    c##r##2 = _mm512_dpbusd_epi32(c##r##2, av, b2), c##r##3 = _mm512_dpbusd_epi32(c##r##3, av, b3);
#define STORE(r)                                                                                  \
    _mm512_store_si512(acc + NR * (r), c##r##0), _mm512_store_si512(acc + NR * (r) + 16, c##r##1); \
    _mm512_store_si512(acc + NR * (r) + 32, c##r##2), _mm512_store_si512(acc + NR * (r) + 48, c##r##3);
#define LOADB const __m512i b0 = _mm512_load_si512(w), b1 = _mm512_load_si512(w + 64), \
    b2 = _mm512_load_si512(w + 128), b3 = _mm512_load_si512(w + 192);
#endif
#if MR == 8
#define EACH(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
#elif MR == 6
#define EACH(F) F(0) F(1) F(2) F(3) F(4) F(5)
#else
#define EACH(F) F(0) F(1) F(2) F(3)
#endif
static inline KERNEL void micro(const uint8_t *a, int lda, const int8_t *w, int kp, int32_t *acc) {
    const __m512i z = _mm512_setzero_si512();
    EACH(ZERO)
    for (int k = 0; k < kp; k += 4, w += NR * 4) {
        LOADB
        __m512i av;
        EACH(ROW)
    }
    EACH(STORE)
}

/* 2^x, x clamped to [-126, 126] (exp2.h). */
static inline KERNEL __m512 exp2_poly(__m512 x) {
    return exp2_core(_mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-126.0f)), _mm512_set1_ps(126.0f)));
}

/* gelu_tanh(v) = 0.5 v (1 + tanh(u)) = v / (1 + e^(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3) */
static inline KERNEL __m512 gelu_tanh(__m512 v) {
    const float c0 = 0.7978845608028654f, c1 = 0.044715f * 0.7978845608028654f;
    __m512 v2 = _mm512_mul_ps(v, v);
    __m512 u = _mm512_mul_ps(v, _mm512_fmadd_ps(v2, _mm512_set1_ps(c1), _mm512_set1_ps(c0)));
    __m512 t = exp2_poly(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f * 1.4426950408889634f)));
    return _mm512_mul_ps(v, _mm512_rcp14_ps(_mm512_add_ps(t, _mm512_set1_ps(1.0f))));
}

/* One row of n floats to uint8 with its own scale and zero point (the range always holds 0, as
 * ONNX's DynamicQuantizeLinear: zero stays exact). Columns n..kp of q are set to 0. */
static KERNEL void quantize_row(const float *x, int n, int kp, uint8_t *q, float *scale, int *zero) {
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 v = _mm512_loadu_ps(x + j);
        lo = _mm512_min_ps(lo, v), hi = _mm512_max_ps(hi, v);
    }
    const __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
    if (tail) {
        __m512 v = _mm512_maskz_loadu_ps(tail, x + j);
        lo = _mm512_min_ps(lo, v), hi = _mm512_max_ps(hi, v);
    }
    float mn = _mm512_reduce_min_ps(lo), mx = _mm512_reduce_max_ps(hi);
    float s = (mx - mn) / 255.0f;
    if (!(s > 0.0f)) s = 1.0f; /* an all-zero row (or NaN: garbage in, garbage out, no crash) */
    float zf = __builtin_nearbyintf(-mn / s);
    int z = zf < 0 ? 0 : zf > 255 ? 255 : (int)zf;
    *scale = s, *zero = z;
    const __m512 inv = _mm512_set1_ps(1.0f / s);
    const __m512i zv = _mm512_set1_epi32(z), zero_i = _mm512_setzero_si512();
    for (j = 0; j + 16 <= n; j += 16) {
        __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + j), inv)), zv);
        _mm_storeu_si128((__m128i *)(q + j), _mm512_cvtusepi32_epi8(_mm512_max_epi32(qi, zero_i)));
    }
    if (tail) {
        __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + j), inv)), zv);
        _mm512_mask_cvtusepi32_storeu_epi8(q + j, tail, _mm512_max_epi32(qi, zero_i));
        j += 16;
    }
    if (n < kp) memset(q + n, 0, (size_t)(kp - n));
}

/* The real-valued product of one micro tile, vector c of row r: (acc - za * colsum) * sa * sw + bias */
static inline KERNEL __m512 dequant(const int32_t *acc, const layer_t *l, int j, float sa, int za) {
    __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(acc), _mm512_mullo_epi32(_mm512_set1_epi32(za),
                                                                             _mm512_loadu_si512(l->colsum + j))));
    return _mm512_fmadd_ps(f, _mm512_mul_ps(_mm512_set1_ps(sa), _mm512_loadu_ps(l->scale + j)),
                           _mm512_loadu_ps(l->bias + j));
}

/* One row of n floats: (h - mean) / sqrt(var + eps) * gamma + beta, the statistics in fp32 over
 * the row (two passes, as ONNX's LayerNormalization defines them). */
static KERNEL void layer_norm_row(const float *h, int n, const float *g, const float *bt, float eps, float *x) {
    __m512 s = _mm512_setzero_ps();
    int j = 0;
    const __mmask16 tail = (__mmask16)((1u << (n % 16)) - 1);
    for (; j + 16 <= n; j += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(h + j));
    if (tail) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail, h + j));
    const float mean = _mm512_reduce_add_ps(s) / (float)n;
    const __m512 mv = _mm512_set1_ps(mean);
    __m512 v = _mm512_setzero_ps();
    for (j = 0; j + 16 <= n; j += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(h + j), mv);
        v = _mm512_fmadd_ps(d, d, v);
    }
    if (tail) {
        __m512 d = _mm512_maskz_sub_ps(tail, _mm512_maskz_loadu_ps(tail, h + j), mv);
        v = _mm512_fmadd_ps(d, d, v);
    }
    const __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(v) / (float)n + eps));
    for (j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? 0xFFFF : tail;
        __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, h + j), mv), rstd);
        _mm512_mask_storeu_ps(x + j, m, _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, g + j), _mm512_maskz_loadu_ps(m, bt + j)));
    }
}

/* rows x l for one row block (tiles of MR rows, `rows` real), quantized rows q [tiles*MR][l->kp]
 * with their scales and zero points. gelu: dst[i][c] = gelu(y) for every padded column (dst's
 * row length l->np); else dst[i][c] = res[i][c] + y for real rows and columns only. */
static KERNEL void gemm_rows(const uint8_t *q, const layer_t *l, int tiles, int rows, const float *sa, const int *za,
                             int gelu, const float *res, int ldr, float *dst, int ldd) {
    int32_t acc[MR * NR] __attribute__((aligned(64)));
    /* each weight panel is reused by every tile of the block */
    for (int p = 0; p < l->np; p += NR) {
        const int8_t *w = l->w + (size_t)p * l->kp;
        for (int t = 0; t < tiles; t++) {
            micro(q + (size_t)t * MR * l->kp, l->kp, w, l->kp, acc);
            for (int r = 0; r < MR && (gelu || t * MR + r < rows); r++) {
                const int i = t * MR + r;
                for (int c = 0; c < NV; c++) {
                    const int col = p + 16 * c;
                    __m512 y = dequant(acc + r * NR + 16 * c, l, col, sa[i], za[i]);
                    if (gelu) {
                        _mm512_storeu_ps(dst + (size_t)i * ldd + col, gelu_tanh(y));
                        continue;
                    }
                    if (col >= l->n) break;
                    const __mmask16 m = l->n - col >= 16 ? 0xFFFF : (__mmask16)((1u << (l->n - col)) - 1);
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, res + (size_t)i * ldr + col));
                    _mm512_mask_storeu_ps(dst + (size_t)i * ldd + col, m, y);
                }
            }
        }
    }
}

typedef struct {
    uint8_t *qa, *qh, *qo; /* [MB][fc1.kp], [MB][fc2.kp], [MB][o.kp] */
    float *h;              /* [MB][fc1.np]: GELU(fc1) */
    float *hres, *xln;     /* [MB][fc2.n], [MB][fc1.k]: res + o_proj(x) and its LayerNorm */
} buffers_t;

/* Quantize rows r < rows of src (row length n, stride ld) into q [tiles*MR][kp]; padding rows zero. */
static KERNEL void quantize_block(const float *src, int ld, int n, int kp, int rows, int tiles, uint8_t *q, float *s,
                                  int *z) {
    for (int r = 0; r < tiles * MR; r++) {
        if (r < rows) {
            quantize_row(src + (size_t)r * ld, n, kp, q + (size_t)r * kp, &s[r], &z[r]);
        } else { /* padding rows of the last tile: computed, never written out */
            memset(q + (size_t)r * kp, 0, (size_t)kp);
            s[r] = 0.0f, z[r] = 0;
        }
    }
}

static KERNEL void row_block(const job_t *j, int r0, const buffers_t *b) {
    const layer_t *f1 = &j->fc1, *f2 = &j->fc2;
    const int rows = j->m - r0 < MB ? j->m - r0 : MB, tiles = (rows + MR - 1) / MR;
    float sa[MB], sh[MB];
    int za[MB], zh[MB];
    const float *x = j->x + (size_t)r0 * (j->pre ? j->o.k : f1->k), *res = j->res + (size_t)r0 * f2->n;
    if (j->pre) { /* res + o_proj(attention) -> hres, its LayerNorm -> the MLP's input */
        quantize_block(x, j->o.k, j->o.k, j->o.kp, rows, tiles, b->qo, sa, za);
        gemm_rows(b->qo, &j->o, tiles, rows, sa, za, 0, res, f2->n, b->hres, f2->n);
        for (int r = 0; r < rows; r++)
            layer_norm_row(b->hres + (size_t)r * f2->n, f1->k, j->gamma, j->beta, j->eps, b->xln + (size_t)r * f1->k);
        x = b->xln, res = b->hres;
    }
    quantize_block(x, f1->k, f1->k, f1->kp, rows, tiles, b->qa, sa, za);
    gemm_rows(b->qa, f1, tiles, rows, sa, za, 1, NULL, 0, b->h, f1->np); /* fc1 + GELU */
    quantize_block(b->h, f1->np, f1->n, f2->kp, tiles * MR, tiles, b->qh, sh, zh);
    gemm_rows(b->qh, f2, tiles, rows, sh, zh, 0, res, f2->n, j->out + (size_t)r0 * f2->n, f2->n); /* fc2 + residual */
}

static void *run_blocks(void *arg) {
    job_t *j = (job_t *)arg;
    buffers_t b;
    b.qa = aligned_alloc(64, (size_t)MB * j->fc1.kp + 64);
    b.qh = aligned_alloc(64, (size_t)MB * j->fc2.kp + 64);
    b.h = aligned_alloc(64, sizeof(float) * (size_t)MB * j->fc1.np);
    b.qo = j->pre ? aligned_alloc(64, (size_t)MB * j->o.kp + 64) : NULL;
    b.hres = j->pre ? aligned_alloc(64, sizeof(float) * (size_t)MB * j->fc2.n + 64) : NULL;
    b.xln = j->pre ? aligned_alloc(64, sizeof(float) * (size_t)MB * j->fc1.k + 64) : NULL;
    if (!b.qa || !b.qh || !b.h || (j->pre && (!b.qo || !b.hres || !b.xln))) {
        j->failed = 1;
    } else {
        /* blocks taken one at a time: a thread that loses its core leaves its share to the others */
        for (int w; (w = __atomic_fetch_add(j->next, 1, __ATOMIC_RELAXED)) < j->items;) row_block(j, w * MB, &b);
    }
    free(b.qa), free(b.qh), free(b.h), free(b.qo), free(b.hres), free(b.xln);
    return NULL;
}

/* 1 when this CPU runs the kernel (AVX-512 F/BW/VL/DQ and VNNI). */
int edgevlm_mlp_int8_supported(void) { return has_avx512_core() && __builtin_cpu_supports("avx512vnni"); }

/* q8 [k, n] int8 row-major -> w [np/NR][kp/4][NR][4] (zero past k and n) and colsum [np]
 * (the column sums of q8, zero past n). The layout the kernel reads; done once per weight at load. */
void edgevlm_mlp_int8_pack(const int8_t *q8, int k, int n, int kp, int np, int8_t *w, int32_t *colsum) {
    for (int p = 0; p < np; p += NR)
        for (int k4 = 0; k4 < kp; k4 += 4)
            for (int c = 0; c < NR; c++)
                for (int t = 0; t < 4; t++, w++)
                    *w = (k4 + t < k && p + c < n) ? q8[(size_t)(k4 + t) * n + p + c] : 0;
    memset(colsum, 0, sizeof(int32_t) * (size_t)np);
    for (int r = 0; r < k; r++)
        for (int c = 0; c < n; c++) colsum[c] += q8[(size_t)r * n + c];
}

/* The weight panel's width: pack_linear's layout must use the same. */
int edgevlm_mlp_int8_panel(void) { return NR; }

static int padded(int v, int to) { return (v + to - 1) / to * to; }

static void *job_of(int t, void *jobs) { return (job_t *)jobs + t; }

/* x [m, k1], res and out [m, n2] fp32 (out may equal res); w1/w2 packed as above with their
 * colsum/scale/bias; k1 real inputs, n1 hidden channels, n2 outputs:
 *   out = res + fc2(gelu(fc1(x)))
 * With wo (not NULL): x [m, ko] is an attention's output, o_proj = wo (ko -> n2) and
 *   h = res + o_proj(x),  out = h + fc2(gelu(fc1(LayerNorm(h) * gamma + beta)))    (k1 == n2)
 * The weight pointers must be 64-byte aligned. Returns 0, or -1 on sizes out of range, no memory or
 * a CPU without the ISA. */
int edgevlm_mlp_int8(const float *x, const float *res, float *out, int m, int k1, int n1, int n2, const int8_t *w1,
                     const int32_t *cs1, const float *s1, const float *b1, const int8_t *w2, const int32_t *cs2,
                     const float *s2, const float *b2, int ko, const int8_t *wo, const int32_t *cso, const float *so,
                     const float *bo, const float *gamma, const float *beta, float eps, int threads) {
    if (m <= 0 || k1 <= 0 || n1 <= 0 || n2 <= 0 || k1 > (1 << 16) || n1 > (1 << 16) || n2 > (1 << 16) ||
        m > (1 << 24) || ((uintptr_t)w1 | (uintptr_t)w2 | (uintptr_t)wo) % 64 ||
        (wo && (k1 != n2 || ko <= 0 || ko > (1 << 16) || !(eps >= 0.0f))))
        return -1;
    if (!edgevlm_mlp_int8_supported()) return -1;
    const int items = (m + MB - 1) / MB;
    threads = worker_count(threads, items);
    int next = 0;
    job_t jobs[MAX_WORKERS];
    const layer_t fc1 = {w1, cs1, s1, b1, k1, n1, padded(k1, 4), padded(n1, NR)};
    const layer_t fc2 = {w2, cs2, s2, b2, n1, n2, padded(n1, NR), padded(n2, NR)};
    const layer_t o = {wo, cso, so, bo, ko, n2, padded(ko > 0 ? ko : 1, 4), padded(n2, NR)};
    for (int t = 0; t < threads; t++)
        jobs[t] = (job_t){x, res, out, m, fc1, fc2, wo != NULL, o, gamma, beta, eps, items, &next, 0};
    run_workers(threads, run_blocks, job_of, jobs);
    int failed = 0;
    for (int t = 0; t < threads; t++) failed |= jobs[t].failed;
    return failed ? -1 : 0;
}
