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

#include "kern_simd.h"
#include "kernels.h"

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
#undef KA_SFX
#undef KA_TGT
#undef VW
#undef vf
#undef V_LOAD
#undef V_STORE
#undef V_SET1
#undef V_ZERO
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_FMA
#undef V_MAX
#undef V_EXP
#undef V_NINF_IF_GT
#undef V_ZERO_IF_NINF
#undef KA_NKEY
#undef KA_NV
#undef KA_RG
#undef KA_DV

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
#undef KA_SFX
#undef KA_TGT
#undef VW
#undef vf
#undef V_LOAD
#undef V_STORE
#undef V_SET1
#undef V_ZERO
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_FMA
#undef V_MAX
#undef V_EXP
#undef V_NINF_IF_GT
#undef V_ZERO_IF_NINF
#undef KA_NKEY
#undef KA_NV
#undef KA_RG
#undef KA_DV

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

void kern_attn(const kern_attn_job *job, float *scratch)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        ka_run_avx512(job, scratch);
        return;
    case KERN_ISA_AVX2:
        ka_run_avx2(job, scratch);
        return;
    default:
        ka_run_scalar(job, scratch);
    }
}
