/* kern_simd.h — private vector maths shared by the row kernels (kern_rows.c) and the attention
 * kernel (kern_attn.c): e^x on 16 (AVX-512) or 8 (AVX2) floats. Not a public header.
 *
 * e^x = 2^n · e^r with n = round(x·log2 e) and r = x − n·ln 2 (ln 2 split in two so n·C1 is
 * exact), |r| <= ln2/2; e^r = 1 + r + r²·P(r) with Cephes' degree-5 minimax P (about 1 ulp).
 * x is clamped to [−104, 89] first: below −103.97 e^x rounds to +0 in binary32 (smallest
 * subnormal 2^−149), above 88.73 it overflows to +inf, and the clamp keeps n in [−150, 128].
 * −inf therefore gives +0 and +inf gives +inf; NaN stays NaN (the clamps keep a NaN operand).
 * 2^n is applied in one correctly rounded step (scalef) on AVX-512, and as 2^(n/2)·2^(n−n/2) on
 * AVX2, each factor a normal power of two, so subnormal results round once as well.
 */
#ifndef LR_KERN_SIMD_H
#define LR_KERN_SIMD_H

#include <immintrin.h>

#define KS_TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KS_TGT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define KS_INLINE static inline __attribute__((always_inline))

#define KS_EXP_LO -104.0f
#define KS_EXP_HI 89.0f
#define KS_LOG2E 1.44269504088896341f
#define KS_LN2_HI 0.693359375f
#define KS_LN2_LO -2.12194440e-4f
#define KS_P0 1.9875691500e-4f
#define KS_P1 1.3981999507e-3f
#define KS_P2 8.3334519073e-3f
#define KS_P3 4.1665795894e-2f
#define KS_P4 1.6666665459e-1f
#define KS_P5 5.0000001201e-1f

KS_INLINE KS_TGT_AVX512 __m512 ks_exp16(__m512 x)
{
    /* max/min return their second operand when either is NaN: x goes second to keep a NaN. */
    x = _mm512_min_ps(_mm512_set1_ps(KS_EXP_HI), _mm512_max_ps(_mm512_set1_ps(KS_EXP_LO), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(KS_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KS_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KS_LN2_LO), r);
    __m512 p = _mm512_set1_ps(KS_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KS_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KS_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KS_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KS_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KS_P5));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

KS_INLINE KS_TGT_AVX2 __m256 ks_exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_set1_ps(KS_EXP_HI), _mm256_max_ps(_mm256_set1_ps(KS_EXP_LO), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(KS_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KS_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KS_LN2_LO), r);
    __m256 p = _mm256_set1_ps(KS_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KS_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KS_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KS_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KS_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KS_P5));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* n in [−150, 128] (a NaN converts to INT_MIN and p is NaN anyway): split it so both
     * factors are normal powers of two, (e + 127) << 23. */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i e1 = _mm256_srai_epi32(ni, 1), e2 = _mm256_sub_epi32(ni, e1);
    __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

#endif
