/* kern_attn.c — the attention kernel (kern_attn.h): scores, online softmax and value sum of a
 * block of query rows of one sequence over its paged K/V, for one KV head.
 *
 * Per chunk of KERN_ATTN_CHUNK key positions: a register tile computes the transposed scores
 * s[j][r] (keys broadcast against a vector of query rows, so no horizontal sums), masks apply
 * causality and the sliding window as vertical compares, the online softmax updates each row's
 * running max and sum with the vector e^x of kern_simd.h, and a second register tile adds
 * Σ_j p[j][r]·v_j into the output rows. The query heads sharing the KV head (GQA) are rows of
 * the same job, so every key and value is read once per job, not once per head.
 *
 * One body (kern_attn_impl.h) is compiled three times: AVX-512 (16 lanes), AVX2+FMA (8 lanes)
 * and plain C (1 lane), selected by kern_get_isa(). This module knows nothing of layers, the KV
 * cache object or the thread pool: core/forward splits the work and hands it block pointers.
 */
#include "kern_attn.h"

#include <math.h>
#include <string.h>

#include "err.h"
#include "kern_simd.h"
#include "kernels.h"

/* Key and value rows of positions c0 .. c0+nk−1: walks the cache blocks (no division per key). */
static inline void ka_rows(const kern_attn_job *a, int c0, int nk, const float **kp,
                           const float **vp)
{
    int bi = c0 / a->block, in = c0 % a->block;
    for (int j = 0; j < nk; j++) {
        size_t off = (size_t)in * (size_t)a->ld;
        kp[j] = a->k_blocks[bi] + off;
        vp[j] = a->v_blocks[bi] + off;
        if (++in == a->block) in = 0, bi++;
    }
}

/* ---- AVX-512: 16 lanes; score tile 8 keys × 2 vectors, value tile 4 rows × 4 vectors ---- */
#define KA_SFX avx512
#define KA_TGT KS_TGT_AVX512
#define VW 16
#define vf __m512
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_STORE(p, x) _mm512_storeu_ps((p), (x))
#define V_SET1(x) _mm512_set1_ps(x)
#define V_ZERO _mm512_setzero_ps()
#define V_ADD(a, b) _mm512_add_ps((a), (b))
#define V_SUB(a, b) _mm512_sub_ps((a), (b))
#define V_MUL(a, b) _mm512_mul_ps((a), (b))
#define V_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define V_MAX(a, b) _mm512_max_ps((a), (b))
#define V_EXP(x) ks_exp16(x)
#define V_NINF_IF_GT(s, a, b)                                                                     \
    _mm512_mask_mov_ps((s), _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ), _mm512_set1_ps(-INFINITY))
#define V_ZERO_IF_NINF(m)                                                                         \
    _mm512_mask_mov_ps((m), _mm512_cmp_ps_mask((m), _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ),       \
                       _mm512_setzero_ps())
#define KA_NKEY 8
#define KA_NV 2
#define KA_RG 4
#define KA_DV 4
#include "kern_attn_impl.h"

/* Lane k of the result = Σ of the 16 lanes of v[k]: four rounds of pairwise shuffles and adds
 * (45 operations for 16 dot products, instead of 16 separate horizontal sums). */
KS_INLINE KS_TGT_AVX512 __m512 ka_hsum16x16(const __m512 *v)
{
    __m512 a[8], b[4];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] */
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: its sums of v[4i .. 4i+3] */
        __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
        b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88),
                              _mm512_shuffle_f32x4(b[0], b[1], 0xDD));
    __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x88),
                              _mm512_shuffle_f32x4(b[2], b[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, 0x88), _mm512_shuffle_f32x4(c0, c1, 0xDD));
}

/* Scores of 16 keys for one query row held in nv vectors: 16 dot products, then folded. */
KS_INLINE KS_TGT_AVX512 __m512 ka_dot16(const __m512 *qv, const float *const *kp, const int nv)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) {
        __m512 t = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kp[k]));
#pragma GCC unroll 8
        for (int v = 1; v < nv; v++)
            t = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kp[k] + 16 * v), t);
        acc[k] = t;
    }
    return ka_hsum16x16(acc);
}

/* Decode (at most KA_DEC_ROWS rows, hd a multiple of 16 up to 128): the transposed tile would
 * fill one vector of 16 row lanes with only 3 rows (SmolLM's one position × 3 heads). Here the
 * keys are the lanes instead: per row, 16 dot products along the head dimension (the query row
 * held in registers), folded by ka_hsum16x16 into one vector of 16 scores, then the online
 * softmax on those vectors with one horizontal max and sum per chunk. The value sum is the
 * general path's tile reading s[r][j]. Scores are summed in another order than in the general
 * path, so a row computed here and in a larger block agree to rounding, not bit for bit. */
#define KA_DEC_ROWS 8
static KS_TGT_AVX512 void ka_decode_avx512(const kern_attn_job *a, float *scratch)
{
    const int rep = a->rep, hd = a->hd, R = a->nq * rep, nv = hd / 16;
    float *s = scratch; // (R, KERN_ATTN_CHUNK) e^(s − m) of the chunk, row-major
    float mrow[KA_DEC_ROWS], lrow[KA_DEC_ROWS], al[KA_DEC_ROWS];
    float *o[KA_DEC_ROWS];
    for (int r = 0; r < R; r++) {
        o[r] = a->out + (size_t)(r / rep) * (size_t)a->ldo + (size_t)(r % rep) * (size_t)hd;
        memset(o[r], 0, sizeof(float) * (size_t)hd);
        mrow[r] = -INFINITY;
        lrow[r] = 0.0f;
    }
    const int hi = a->key_hi > 0 ? a->key_hi : a->pos0 + a->nq;
    int lo = a->window > 0 ? a->pos0 - a->window + 1 : 0;
    if (lo < 0) lo = 0;
    if (a->key_lo > lo) lo = a->key_lo;
    const __m512 hiv = _mm512_set1_ps((float)hi);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int c0 = lo / KERN_ATTN_CHUNK * KERN_ATTN_CHUNK; c0 < hi; c0 += KERN_ATTN_CHUNK) {
        const int nk = hi - c0 < KERN_ATTN_CHUNK ? hi - c0 : KERN_ATTN_CHUNK;
        const float *kp[KERN_ATTN_CHUNK], *vp[KERN_ATTN_CHUNK];
        ka_rows(a, c0, nk, kp, vp);
        for (int j = nk; j < KERN_ATTN_CHUNK; j++)
            kp[j] = kp[0]; /* padding keys: computed, then masked (lane index >= nk) */
        const int nb = (nk + 15) / 16;
        for (int r = 0; r < R; r++) {
            const float *qr =
                a->q + (size_t)(r / rep) * (size_t)a->ldq + (size_t)(r % rep) * (size_t)hd;
            __m512 qv[8];
            for (int v = 0; v < nv; v++)
                qv[v] = _mm512_mul_ps(_mm512_loadu_ps(qr + 16 * v), _mm512_set1_ps(a->scale));
            const int p = a->pos0 + r / rep;
            const __m512 pv = _mm512_set1_ps((float)p);
            /* the row's first key: its window's, or the part's (key_lo) if later */
            const int wlo = a->window > 0 ? p - a->window + 1 : -1;
            const __m512 lov = _mm512_set1_ps((float)(wlo > a->key_lo ? wlo : a->key_lo));
            __m512 sv[KERN_ATTN_CHUNK / 16];
            __m512 mx = ninf;
            for (int b = 0; b < nb; b++) {
                /* One unrolled tile per head size: the 16 dot products stay in registers. */
                __m512 x;
                switch (nv) {
                case 2:
                    x = ka_dot16(qv, kp + 16 * b, 2);
                    break;
                case 4:
                    x = ka_dot16(qv, kp + 16 * b, 4);
                    break;
                case 8:
                    x = ka_dot16(qv, kp + 16 * b, 8);
                    break;
                default:
                    x = ka_dot16(qv, kp + 16 * b, nv);
                }
                __m512 jv = _mm512_add_ps(_mm512_set1_ps((float)(c0 + 16 * b)), iota);
                /* Masked: after the row's position (this also covers padding keys, which lie
                 * past hi − 1 >= p), or before its window. */
                __mmask16 bad = _mm512_cmp_ps_mask(jv, pv, _CMP_GT_OQ) |
                                _mm512_cmp_ps_mask(jv, lov, _CMP_LT_OQ) |
                                _mm512_cmp_ps_mask(jv, hiv, _CMP_GE_OQ);
                x = _mm512_mask_mov_ps(x, bad, ninf);
                sv[b] = x;
                mx = _mm512_max_ps(mx, x);
            }
            float m = _mm512_reduce_max_ps(mx);
            float mnew = m > mrow[r] ? m : mrow[r];
            float mu = mnew == -INFINITY ? 0.0f : mnew;
            __m512 muv = _mm512_set1_ps(mu), sum = _mm512_setzero_ps();
            for (int b = 0; b < nb; b++) {
                __m512 e = ks_exp16(_mm512_sub_ps(sv[b], muv));
                _mm512_storeu_ps(s + (size_t)r * KERN_ATTN_CHUNK + 16 * b, e);
                sum = _mm512_add_ps(sum, e);
            }
            float alpha = _mm512_cvtss_f32(ks_exp16(_mm512_set1_ps(mrow[r] - mu)));
            lrow[r] = lrow[r] * alpha + _mm512_reduce_add_ps(sum);
            mrow[r] = mnew;
            al[r] = alpha;
        }
        for (int r0 = 0; r0 < R; r0 += 4)
            ka_vsum_n_avx512(o + r0, al + r0, s, 1, KERN_ATTN_CHUNK, r0, vp, nk, hd,
                             R - r0 < 4 ? R - r0 : 4);
    }
    for (int r = 0; r < R; r++) {
        if (a->ml) { /* a part: the caller combines */
            a->ml[2 * r] = mrow[r];
            a->ml[2 * r + 1] = lrow[r];
            continue;
        }
        float inv = 1.0f / lrow[r];
        for (int d = 0; d < hd; d++)
            o[r][d] *= inv;
    }
}

#include "kern_attn_undef.h"

/* ---- AVX2 + FMA: 8 lanes, 16 registers; score tile 4 keys × 2 vectors, value tile 2 rows × 4
 * vectors ---- */
#define KA_SFX avx2
#define KA_TGT KS_TGT_AVX2
#define VW 8
#define vf __m256
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_STORE(p, x) _mm256_storeu_ps((p), (x))
#define V_SET1(x) _mm256_set1_ps(x)
#define V_ZERO _mm256_setzero_ps()
#define V_ADD(a, b) _mm256_add_ps((a), (b))
#define V_SUB(a, b) _mm256_sub_ps((a), (b))
#define V_MUL(a, b) _mm256_mul_ps((a), (b))
#define V_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define V_MAX(a, b) _mm256_max_ps((a), (b))
#define V_EXP(x) ks_exp8(x)
#define V_NINF_IF_GT(s, a, b)                                                                     \
    _mm256_blendv_ps((s), _mm256_set1_ps(-INFINITY), _mm256_cmp_ps((a), (b), _CMP_GT_OQ))
#define V_ZERO_IF_NINF(m)                                                                         \
    _mm256_blendv_ps((m), _mm256_setzero_ps(),                                                    \
                     _mm256_cmp_ps((m), _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ))
#define KA_NKEY 4
#define KA_NV 2
#define KA_RG 2
#define KA_DV 4
#include "kern_attn_impl.h"
#include "kern_attn_undef.h"

/* ---- portable C: 1 lane (no fused multiply-add, which is a slow library call without FMA
 * hardware) ---- */
#define KA_SFX scalar
#define KA_TGT
#define VW 1
#define vf float
#define V_LOAD(p) (*(p))
#define V_STORE(p, x) (*(p) = (x))
#define V_SET1(x) (x)
#define V_ZERO 0.0f
#define V_ADD(a, b) ((a) + (b))
#define V_SUB(a, b) ((a) - (b))
#define V_MUL(a, b) ((a) * (b))
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_MAX(a, b) ((b) > (a) ? (b) : (a))
#define V_EXP(x) expf(x)
#define V_NINF_IF_GT(s, a, b) ((a) > (b) ? -INFINITY : (s))
#define V_ZERO_IF_NINF(m) ((m) == -INFINITY ? 0.0f : (m))
#define KA_NKEY 4
#define KA_NV 2
#define KA_RG 4
#define KA_DV 4
#include "kern_attn_impl.h"

size_t kern_attn_scratch_floats(int nq, int rep, int hd)
{
    /* Rows padded to the widest vector (16 lanes) whatever the ISA, so kern_set_isa may change
     * between sizing and running. */
    size_t rp = ((size_t)nq * (size_t)rep + 15) / 16 * 16;
    return rp * ((size_t)hd + KERN_ATTN_CHUNK + 5);
}

int kern_attn_splittable(int nq, int rep, int hd)
{
    return kern_get_isa() == KERN_ISA_AVX512 && nq * rep <= KA_DEC_ROWS && hd % 16 == 0 &&
           hd <= 128;
}

void kern_attn(const kern_attn_job *job, float *scratch)
{
    LR_ASSERT((!job->ml && !job->key_lo && !job->key_hi) ||
              kern_attn_splittable(job->nq, job->rep, job->hd));
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        if (kern_attn_splittable(job->nq, job->rep, job->hd))
            ka_decode_avx512(job, scratch);
        else
            ka_run_avx512(job, scratch);
        return;
    case KERN_ISA_AVX2:
        ka_run_avx2(job, scratch);
        return;
    default:
        ka_run_scalar(job, scratch);
    }
}
