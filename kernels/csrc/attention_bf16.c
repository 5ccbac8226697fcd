/* Unmasked multi-head attention in bfloat16 with fp32 accumulation (AVX-512 BF16).
 *
 * Why: the vision tower's attention is ~40% of a tile on CPU and ONNX Runtime runs it in fp32.
 * vdpbf16ps does two multiply-adds per fp32 lane, so the two score/value products run at up to
 * twice the fp32 rate. Softmax runs online (flash style) in fp32, one 64-key block at a time.
 *
 * Layouts (B batch items of N tokens, H heads of D = 32 or 64):
 *   q, k, v, out   fp32 [B, N, H*D]       (the projections' natural layout, heads not split)
 *   per head, packed once per call:
 *     qb  bf16 [Np, D]                    q * scale * log2(e), rows padded to a multiple of 4
 *     kp  bf16 [Nk/16][D/2][16][2]        16 keys per group; each 32-bit word = a pair (d, d+1)
 *     vp  bf16 [Nk/2][D][2]               each 32-bit word = a pair of keys (j, j+1) for one d
 *   Nk = N rounded up to 64; padded keys get a score of -inf.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp2.h"
#include "workers.h"

#define DMAX 64 /* head sizes 32 and 64 */
#define KB 64 /* keys per softmax block */
#define RB 4  /* query rows per micro tile */

typedef uint16_t bf16;

/* Only the kernel is compiled for AVX-512: the entry point must run (and refuse) on any x86-64. */
#define KERNEL __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

/* 2^x for x <= 0 (exp2.h; x below -127, -inf included, gives 2^-127: nothing beside a real term). */
static inline KERNEL __m512 exp2_neg(__m512 x) { return exp2_core(_mm512_max_ps(x, _mm512_set1_ps(-127.0f))); }

/* The maxima of four vectors at once: lanes 4r..4r+3 of the result all hold max(a_r). */
static inline KERNEL __m512 max4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    /* 128-bit lanes: x01 = [max(a0.L0,a0.L2), max(a0.L1,a0.L3), same of a1], x23 likewise */
    __m512 x01 = _mm512_max_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
    __m512 x23 = _mm512_max_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
    /* 128-bit lane r: the four partial maxima of row r */
    __m512 x = _mm512_max_ps(_mm512_shuffle_f32x4(x01, x23, 0x88), _mm512_shuffle_f32x4(x01, x23, 0xDD));
    x = _mm512_max_ps(x, _mm512_permute_ps(x, 0x4E));
    return _mm512_max_ps(x, _mm512_permute_ps(x, 0xB1));
}

typedef struct {
    const float *q, *k, *v;
    float *out;
    int n, heads, d, items; /* head size d; work item w = (batch w / heads, head w % heads) */
    int *next;              /* shared: the next item nobody has taken yet */
    float scale;
    int failed; /* set when the work buffers cannot be allocated */
} job_t;

/* 16 floats to 16 bf16, rounded to nearest even. */
static inline KERNEL __m256i cvt16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

static inline KERNEL void prefetch_row(const float *p, int len) {
    for (int c = 0; c < len; c += 16) _mm_prefetch((const char *)(p + c), _MM_HINT_T0);
}

static KERNEL void pack_head(const job_t *j, size_t base, int h, int np, int nk, bf16 *qb, uint32_t *kp,
                             uint32_t *vp) {
    const int n = j->n, D = j->d, ld = j->heads * D;
    const __m512 qs = _mm512_set1_ps(j->scale * 1.4426950408889634f); /* fold log2(e): softmax via exp2 */
    /* word d of a v pair: low half key t, high half key t + 1 (bf16 lanes 2d and 2d+1) */
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                        37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    memset(qb + (size_t)n * D, 0, sizeof(bf16) * (size_t)(np - n) * D);
    memset(kp + (size_t)n / 16 * 16 * D / 2, 0, sizeof(uint32_t) * (size_t)(nk - n / 16 * 16) * D / 2);
    memset(vp + (size_t)(n / 2) * D, 0, sizeof(uint32_t) * (size_t)(nk / 2 - n / 2) * D);
    /* the rows of one head are ld floats apart (a page or more at SigLIP's width), beyond what the
     * hardware prefetcher follows: ask for each row PF rows ahead */
    enum { PF = 8 };
    for (int i = 0; i < n; i++) {
        const float *src = j->q + base + (size_t)i * ld + h * D;
        if (i + PF < n) prefetch_row(src + (size_t)PF * ld, D);
        for (int c = 0; c < D; c += 16)
            _mm256_storeu_si256((__m256i *)(qb + (size_t)i * D + c), cvt16(_mm512_mul_ps(_mm512_loadu_ps(src + c), qs)));
    }
    uint32_t words[DMAX / 2] __attribute__((aligned(64))); /* one key row as (d, d+1) pairs */
    for (int t = 0; t < n; t++) {
        const float *src = j->k + base + (size_t)t * ld + h * D;
        if (t + PF < n) prefetch_row(src + (size_t)PF * ld, D);
        for (int c = 0; c < D; c += 16) _mm256_store_si256((__m256i *)(words + c / 2), cvt16(_mm512_loadu_ps(src + c)));
        uint32_t *dst = kp + (size_t)(t / 16) * (D / 2) * 16 + (t % 16);
        for (int dp = 0; dp < D / 2; dp++) dst[dp * 16] = words[dp];
    }
    for (int t = 0; t < n; t += 2) { /* [D] of key t and key t + 1 -> [D] pairs */
        const float *a = j->v + base + (size_t)t * ld + h * D;
        const float *b = t + 1 < n ? a + ld : NULL;
        if (t + PF + 1 < n) prefetch_row(a + (size_t)PF * ld, D), prefetch_row(a + (size_t)(PF + 1) * ld, D);
        uint32_t *dst = vp + (size_t)(t / 2) * D;
        for (int c = 0; c < D; c += 32) {
            __m512i va = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + c + 16), _mm512_loadu_ps(a + c));
            __m512i vb = b ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(b + c + 16), _mm512_loadu_ps(b + c))
                           : _mm512_setzero_si512();
            _mm512_storeu_si512(dst + c, _mm512_permutex2var_epi16(va, lo, vb));
            _mm512_storeu_si512(dst + c + 16, _mm512_permutex2var_epi16(va, hi, vb));
        }
    }
}

/* RB query rows of one head against all keys. Always inlined into one copy per head size, so D
 * is a constant there and the loops over its 16-wide vectors unroll. */
static inline __attribute__((always_inline)) KERNEL void rows_tile(const bf16 *qb, const uint32_t *kp,
                                                                   const uint32_t *vp, int n, int nk,
                                                                   float *o /* [RB][D] */, const int D) {
    _Static_assert(RB == 4, "max4 reduces four rows");
    __m512 acc_o[RB][4], lsum[RB]; /* output and softmax denominators, per lane until the end */
    __m512 m = _mm512_set1_ps(-INFINITY); /* running row maxima, row r in lanes 4r..4r+3 */
    for (int r = 0; r < RB; r++) {
        lsum[r] = _mm512_setzero_ps();
        for (int c = 0; c < D / 16; c++) acc_o[r][c] = _mm512_setzero_ps();
    }
    const uint32_t *qw = (const uint32_t *)qb; /* [RB][D/2] pairs */
    uint32_t pbuf[RB][KB / 2] __attribute__((aligned(64)));
    for (int k0 = 0; k0 < nk; k0 += KB) {
        __m512 s[RB][4];
        for (int r = 0; r < RB; r++)
            for (int c = 0; c < 4; c++) s[r][c] = _mm512_setzero_ps();
        const uint32_t *kg = kp + (size_t)(k0 / 16) * (D / 2) * 16;
        for (int dp = 0; dp < D / 2; dp++) {
            __m512bh b0 = (__m512bh)_mm512_loadu_si512(kg + dp * 16);
            __m512bh b1 = (__m512bh)_mm512_loadu_si512(kg + (D / 2) * 16 + dp * 16);
            __m512bh b2 = (__m512bh)_mm512_loadu_si512(kg + 2 * (D / 2) * 16 + dp * 16);
            __m512bh b3 = (__m512bh)_mm512_loadu_si512(kg + 3 * (D / 2) * 16 + dp * 16);
            for (int r = 0; r < RB; r++) {
                __m512bh a = (__m512bh)_mm512_set1_epi32((int)qw[r * (D / 2) + dp]);
                s[r][0] = _mm512_dpbf16_ps(s[r][0], a, b0);
                s[r][1] = _mm512_dpbf16_ps(s[r][1], a, b1);
                s[r][2] = _mm512_dpbf16_ps(s[r][2], a, b2);
                s[r][3] = _mm512_dpbf16_ps(s[r][3], a, b3);
            }
        }
        if (k0 + KB > n) { /* mask the padded keys */
            for (int c = 0; c < 4; c++) {
                int first = k0 + 16 * c;
                int valid = n - first;
                __mmask16 keep = valid >= 16 ? 0xFFFF : (valid <= 0 ? 0 : (__mmask16)((1u << valid) - 1));
                for (int r = 0; r < RB; r++)
                    s[r][c] = _mm512_mask_blend_ps(keep, _mm512_set1_ps(-INFINITY), s[r][c]);
            }
        }
        __m512 bm[RB];
        for (int r = 0; r < RB; r++)
            bm[r] = _mm512_max_ps(_mm512_max_ps(s[r][0], s[r][1]), _mm512_max_ps(s[r][2], s[r][3]));
        /* every block has a real key (blocks start below n), so the new maxima are finite */
        const __m512 mn = _mm512_max_ps(m, max4(bm[0], bm[1], bm[2], bm[3]));
        const __m512 alpha = exp2_neg(_mm512_sub_ps(m, mn)); /* rescales what came before; ~2^-127 at first, when there is nothing */
        m = mn;
        for (int r = 0; r < RB; r++) {
            const __m512i lane = _mm512_set1_epi32(4 * r);
            const __m512 vm = _mm512_permutexvar_ps(lane, mn), va = _mm512_permutexvar_ps(lane, alpha);
            __m512 p0 = exp2_neg(_mm512_sub_ps(s[r][0], vm));
            __m512 p1 = exp2_neg(_mm512_sub_ps(s[r][1], vm));
            __m512 p2 = exp2_neg(_mm512_sub_ps(s[r][2], vm));
            __m512 p3 = exp2_neg(_mm512_sub_ps(s[r][3], vm));
            lsum[r] = _mm512_fmadd_ps(lsum[r], va, _mm512_add_ps(_mm512_add_ps(p0, p1), _mm512_add_ps(p2, p3)));
            _mm512_store_si512(pbuf[r], (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
            _mm512_store_si512(pbuf[r] + 16, (__m512i)_mm512_cvtne2ps_pbh(p3, p2));
            for (int c = 0; c < D / 16; c++) acc_o[r][c] = _mm512_mul_ps(acc_o[r][c], va);
        }
        const uint32_t *vb = vp + (size_t)(k0 / 2) * D;
        for (int jp = 0; jp < KB / 2; jp++) {
            __m512bh b[DMAX / 16];
            for (int c = 0; c < D / 16; c++) b[c] = (__m512bh)_mm512_loadu_si512(vb + jp * D + 16 * c);
            for (int r = 0; r < RB; r++) {
                __m512bh a = (__m512bh)_mm512_set1_epi32((int)pbuf[r][jp]);
                for (int c = 0; c < D / 16; c++) acc_o[r][c] = _mm512_dpbf16_ps(acc_o[r][c], a, b[c]);
            }
        }
    }
    for (int r = 0; r < RB; r++) {
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(lsum[r]));
        for (int c = 0; c < D / 16; c++) _mm512_storeu_ps(o + r * D + 16 * c, _mm512_mul_ps(acc_o[r][c], inv));
    }
}

static KERNEL void rows_tile_64(const bf16 *qb, const uint32_t *kp, const uint32_t *vp, int n, int nk, float *o) {
    rows_tile(qb, kp, vp, n, nk, o, 64);
}

static KERNEL void rows_tile_32(const bf16 *qb, const uint32_t *kp, const uint32_t *vp, int n, int nk, float *o) {
    rows_tile(qb, kp, vp, n, nk, o, 32);
}

static KERNEL void *run_heads(void *arg) {
    job_t *j = (job_t *)arg;
    const int n = j->n, D = j->d, ld = j->heads * D;
    const int np = (n + RB - 1) / RB * RB, nk = (n + KB - 1) / KB * KB;
    bf16 *qb = aligned_alloc(64, sizeof(bf16) * (size_t)np * D);
    uint32_t *kp = aligned_alloc(64, sizeof(uint32_t) * (size_t)nk * D / 2);
    uint32_t *vp = aligned_alloc(64, sizeof(uint32_t) * (size_t)nk * D / 2);
    float o[RB * DMAX] __attribute__((aligned(64)));
    if (!qb || !kp || !vp) {
        j->failed = 1;
        free(qb), free(kp), free(vp);
        return NULL;
    }
    /* Items are taken one at a time, not split up front: a thread that loses its core for a while
     * (another runtime's pool still spin-waiting after its run) leaves its share to the others. */
    for (int w; (w = __atomic_fetch_add(j->next, 1, __ATOMIC_RELAXED)) < j->items;) {
        const int h = w % j->heads;
        const size_t base = (size_t)(w / j->heads) * n * ld; /* batch offset into [B, N, H*D] */
        pack_head(j, base, h, np, nk, qb, kp, vp);
        for (int i0 = 0; i0 < n; i0 += RB) {
            if (D == 64)
                rows_tile_64(qb + (size_t)i0 * D, kp, vp, n, nk, o);
            else
                rows_tile_32(qb + (size_t)i0 * D, kp, vp, n, nk, o);
            for (int r = 0; r < RB && i0 + r < n; r++)
                memcpy(j->out + base + (size_t)(i0 + r) * ld + h * D, o + r * D, sizeof(float) * D);
        }
    }
    free(qb);
    free(kp);
    free(vp);
    return NULL;
}

/* 1 when this CPU runs the kernel (AVX-512 F/BW/VL/DQ and BF16). */
int edgevlm_attention_bf16_supported(void) { return has_avx512_core() && __builtin_cpu_supports("avx512bf16"); }

static void *job_of(int t, void *jobs) { return (job_t *)jobs + t; }

/* q, k, v, out: fp32 [batch, n, heads * head_dim], row-major. Returns 0 on success, -1 when the
 * head size is not 32 or 64, a size is out of range, a buffer cannot be had, or the CPU lacks the ISA. */
int edgevlm_attention_bf16(const float *q, const float *k, const float *v, float *out, int batch,
                           int n, int heads, int head_dim, float scale, int threads) {
    if ((head_dim != 64 && head_dim != 32) || n <= 0 || heads <= 0 || batch <= 0 || n > (1 << 20) ||
        (long)batch * heads > (1 << 24))
        return -1;
    if (!edgevlm_attention_bf16_supported()) return -1;
    const int items = batch * heads;
    threads = worker_count(threads, items);
    job_t jobs[MAX_WORKERS];
    int next = 0;
    for (int t = 0; t < threads; t++)
        jobs[t] = (job_t){q, k, v, out, n, heads, head_dim, items, &next, scale, 0};
    run_workers(threads, run_heads, job_of, jobs);
    int failed = 0;
    for (int t = 0; t < threads; t++) failed |= jobs[t].failed;
    return failed ? -1 : 0;
}
