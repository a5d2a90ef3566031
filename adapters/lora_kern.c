/* lora_kern.c — register-blocked shrink / expand kernels of a LoRA delta (see lora_kern.h).
 *
 * Each ISA variant is a block function over a tile of NT rows × NJ ranks (shrink) or NT rows ×
 * four output chunks (expand) whose sizes are compile-time constants at every call site: the
 * block is always_inline and called from a switch with literal sizes, so the compiler keeps the
 * whole tile in registers. Tails (a row count, rank or width that is not a multiple of the
 * tile) use the same block with smaller constants or masked loads/stores, never a second code
 * path, so every output is computed by the same sequence of operations whatever T is.
 *
 * Not here: which rows share an adapter, DoRA, mixes (adapters/lora).
 */
#include "lora_kern.h"

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#define TGT_AVX2 __attribute__((target("avx2,fma")))
#define TGT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* Rows per tile (shrink and expand) and ranks per shrink tile. AVX2 has 16 registers, so its
 * tiles are smaller than AVX-512's 32. */
#define T512 4
#define J512 4
#define T256 2
#define J256 4

/* A switch over (nt, nj) in 1..NT × 1..NJ calling BLOCK(…, nt, nj) with literal sizes. */
#define LK_CASE(BLOCK, NT, NJ, ...)                                                                \
    case (NT)*8 + (NJ):                                                                            \
        BLOCK(__VA_ARGS__, NT, NJ);                                                                \
        break;
#define LK_ROW4(BLOCK, NT, ...)                                                                    \
    LK_CASE(BLOCK, NT, 1, __VA_ARGS__)                                                             \
    LK_CASE(BLOCK, NT, 2, __VA_ARGS__)                                                             \
    LK_CASE(BLOCK, NT, 3, __VA_ARGS__) LK_CASE(BLOCK, NT, 4, __VA_ARGS__)

/* ------------------------------------------------------------------------------------ AVX-512 */

/* 16 lanes from element i of p (f32, or bf16 bits widened: bf16 is the top half of an f32),
 * lanes outside m zero and not read. */
TGT_AVX512 INLINE __m512 ld512(const void *p, size_t i, __mmask16 m, const int BF)
{
    if (BF) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

/* tmp[a, b] = Σ_i x[a, i] · A[b, i] for a < NT, b < NJ: NT·NJ accumulators of 16 lanes, the
 * in-tail through masked loads, one horizontal sum per output at the end. */
TGT_AVX512 INLINE void shrink_blk512(const float *x, int ldx, const void *A, int in, float *tmp,
                                     int ldt, const int BF, const int NT, const int NJ)
{
    __m512 acc[T512][J512];
#pragma GCC unroll 4
    for (int a = 0; a < NT; a++)
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++)
            acc[a][b] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= in; i += 16) {
        __m512 xv[T512];
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++)
            xv[a] = _mm512_loadu_ps(x + (size_t)a * ldx + i);
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++) {
            /* 512 bytes ahead in each row (once per line): the next tile's rows start cold */
            if (!BF || (i & 31) == 0)
                _mm_prefetch((const char *)A + (BF ? 2 : 4) * ((size_t)b * in + i) + 512,
                             _MM_HINT_T0);
            __m512 av = ld512(A, (size_t)b * in + i, (__mmask16)0xffff, BF);
#pragma GCC unroll 4
            for (int a = 0; a < NT; a++)
                acc[a][b] = _mm512_fmadd_ps(xv[a], av, acc[a][b]);
        }
    }
    if (i < in) {
        __mmask16 m = (__mmask16)((1u << (in - i)) - 1u);
        __m512 xv[T512];
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++)
            xv[a] = _mm512_maskz_loadu_ps(m, x + (size_t)a * ldx + i);
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++) {
            __m512 av = ld512(A, (size_t)b * in + i, m, BF);
#pragma GCC unroll 4
            for (int a = 0; a < NT; a++)
                acc[a][b] = _mm512_fmadd_ps(xv[a], av, acc[a][b]);
        }
    }
#pragma GCC unroll 4
    for (int a = 0; a < NT; a++)
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++)
            tmp[(size_t)a * ldt + b] = _mm512_reduce_add_ps(acc[a][b]);
}

/* Bytes ahead in each of the many F32 rows read at once by shrink_row512 and expand_blk512:
 * 16 rows × 256 B already keep 4 KiB in flight. Measured step against alternate step in one
 * process against 512: one adapter at one row 0.6-0.9 % faster, 8 and 16 different adapters
 * 0.5-1 %; 1 KiB was 1-2.5 % slower, 128 B 1.5-2 % slower, none 2-5 % slower. */
#define LK_ROW_PF 256

/* One row of x against NJ (8 or 16) rows of A: a decode row's piece reads all of a rank-16 A
 * as 16 streams in one pass — one cold start instead of four 4-row tiles each starting cold
 * (measured: 18.5 → 23 GB/s F32, 11 → 15 GB/s BF16 for the 8 different adapters of a decode
 * step). Per output the same FMAs in the same order as shrink_blk512, so the sums agree bit
 * for bit whichever of the two a row goes through. */
TGT_AVX512 INLINE void shrink_row512(const float *x, const void *A, int in, float *tmp,
                                     const int BF, const int NJ)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int b = 0; b < NJ; b++)
        acc[b] = _mm512_setzero_ps();
    const size_t ahead = BF ? 512 : LK_ROW_PF; /* BF16: as before (not measured) */
    int i = 0;
    for (; i + 16 <= in; i += 16) {
        __m512 xv = _mm512_loadu_ps(x + i);
#pragma GCC unroll 16
        for (int b = 0; b < NJ; b++) {
            if (!BF || (i & 31) == 0)
                _mm_prefetch((const char *)A + (BF ? 2 : 4) * ((size_t)b * in + i) + ahead,
                             _MM_HINT_T0);
            acc[b] = _mm512_fmadd_ps(xv, ld512(A, (size_t)b * in + i, (__mmask16)0xffff, BF),
                                     acc[b]);
        }
    }
    if (i < in) {
        __mmask16 m = (__mmask16)((1u << (in - i)) - 1u);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
#pragma GCC unroll 16
        for (int b = 0; b < NJ; b++)
            acc[b] = _mm512_fmadd_ps(xv, ld512(A, (size_t)b * in + i, m, BF), acc[b]);
    }
#pragma GCC unroll 16
    for (int b = 0; b < NJ; b++)
        tmp[b] = _mm512_reduce_add_ps(acc[b]);
}

TGT_AVX512 static void shrink_avx512(const float *x, int ldx, int T, const void *A, int BF, int r,
                                     int in, float *tmp, int ldt)
{
    size_t es = BF ? 2 : 4;
    for (int t = 0; t < T; t += T512) {
        int nt = T - t < T512 ? T - t : T512;
        const float *xp = x + (size_t)t * ldx;
        float *tp = tmp + (size_t)t * ldt;
        int j = 0;
        if (nt == 1) { /* a lone row: 16 (then 8) rows of A per pass */
            for (; j + 8 <= r; j += r - j >= 16 ? 16 : 8) {
                const void *ap = (const char *)A + (size_t)j * in * es;
                if (r - j >= 16)
                    BF ? shrink_row512(xp, ap, in, tp + j, 1, 16)
                       : shrink_row512(xp, ap, in, tp + j, 0, 16);
                else
                    BF ? shrink_row512(xp, ap, in, tp + j, 1, 8)
                       : shrink_row512(xp, ap, in, tp + j, 0, 8);
            }
        }
        for (; j < r; j += J512) {
            int nj = r - j < J512 ? r - j : J512;
            const void *ap = (const char *)A + (size_t)j * in * es;
            if (BF) {
                switch (nt * 8 + nj) {
                    LK_ROW4(shrink_blk512, 1, xp, ldx, ap, in, tp + j, ldt, 1)
                    LK_ROW4(shrink_blk512, 2, xp, ldx, ap, in, tp + j, ldt, 1)
                    LK_ROW4(shrink_blk512, 3, xp, ldx, ap, in, tp + j, ldt, 1)
                    LK_ROW4(shrink_blk512, 4, xp, ldx, ap, in, tp + j, ldt, 1)
                }
            } else {
                switch (nt * 8 + nj) {
                    LK_ROW4(shrink_blk512, 1, xp, ldx, ap, in, tp + j, ldt, 0)
                    LK_ROW4(shrink_blk512, 2, xp, ldx, ap, in, tp + j, ldt, 0)
                    LK_ROW4(shrink_blk512, 3, xp, ldx, ap, in, tp + j, ldt, 0)
                    LK_ROW4(shrink_blk512, 4, xp, ldx, ap, in, tp + j, ldt, 0)
                }
            }
        }
    }
}

/* Outputs q0 .. q0+63 of NT rows: four 16-lane chunks (masked past `out`), r broadcast FMAs
 * each; then y = (accumulate ? y : 0) + k·(acc + bias). */
TGT_AVX512 INLINE void expand_blk512(const float *tmp, int ldt, const void *Bt, int r, int out,
                                     int q0, float k, const float *bias, float *y, int ldy,
                                     int accumulate, const int BF, const int NT)
{
    __mmask16 m[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        int n = out - q0 - 16 * c;
        m[c] = n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
    }
    __m512 acc[T512][4];
#pragma GCC unroll 4
    for (int a = 0; a < NT; a++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            acc[a][c] = _mm512_setzero_ps();
    for (int j = 0; j < r; j++) {
        size_t bo = (size_t)j * out + (size_t)q0;
        if (!BF) { /* see expand_blk512_bf16: the next block of this row of Bt, ahead of time */
            const char *pf = (const char *)Bt + 4 * bo + LK_ROW_PF;
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + 64, _MM_HINT_T0);
            _mm_prefetch(pf + 128, _MM_HINT_T0);
            _mm_prefetch(pf + 192, _MM_HINT_T0);
        }
        __m512 bv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            bv[c] = ld512(Bt, bo + 16 * (size_t)c, m[c], BF);
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++) {
            __m512 tv = _mm512_set1_ps(tmp[(size_t)a * ldt + j]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                acc[a][c] = _mm512_fmadd_ps(tv, bv[c], acc[a][c]);
        }
    }
    __m512 kv = _mm512_set1_ps(k);
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        if (!m[c]) continue;
        __m512 bb = bias ? _mm512_maskz_loadu_ps(m[c], bias + q0 + 16 * c) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++) {
            float *yp = y + (size_t)a * ldy + q0 + 16 * c;
            __m512 v = _mm512_mul_ps(kv, _mm512_add_ps(acc[a][c], bb));
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m[c], yp), v);
            _mm512_mask_storeu_ps(yp, m[c], v);
        }
    }
}

/* expand_blk512 for bf16 Bt without a widening shuffle: 32 bf16 loaded as 16 dwords hold output
 * q0+2i in the low and q0+2i+1 in the high half of dword i, so (w << 16) and (w & 0xffff0000)
 * are those two outputs as f32. Even and odd outputs are accumulated apart (each with the same
 * FMA chain over j as expand_blk512, so the results are bit for bit the same) and interleaved
 * back once per tile. Word-masked loads never read past `out`. */
TGT_AVX512 INLINE void expand_blk512_bf16(const float *tmp, int ldt, const uint16_t *Bt, int r,
                                          int out, int q0, float k, const float *bias, float *y,
                                          int ldy, int accumulate, const int NT)
{
    __mmask32 w[2];
    __mmask16 m[4];
#pragma GCC unroll 4
    for (int c = 0; c < 2; c++) {
        int n = out - q0 - 32 * c;
        w[c] = n >= 32  ? (__mmask32)0xffffffffu
               : n <= 0 ? (__mmask32)0
                        : (__mmask32)((1u << n) - 1u);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        int n = out - q0 - 16 * c;
        m[c] = n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
    }
    __m512 ev[T512][2], od[T512][2];
#pragma GCC unroll 4
    for (int a = 0; a < NT; a++)
#pragma GCC unroll 4
        for (int c = 0; c < 2; c++)
            ev[a][c] = od[a][c] = _mm512_setzero_ps();
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int j = 0; j < r; j++) {
        const uint16_t *bp = Bt + (size_t)j * out + q0;
        /* 16 or more rows of Bt are read a little at a time: help the prefetcher, which
         * tracks so many interleaved streams poorly (measured: 16 → 24 GB/s at one row). */
        _mm_prefetch((const char *)(bp + 256), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + 288), _MM_HINT_T0);
        __m512 be[2], bo[2];
#pragma GCC unroll 4
        for (int c = 0; c < 2; c++) {
            __m512i v = _mm512_maskz_loadu_epi16(w[c], bp + 32 * c);
            be[c] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            bo[c] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
        }
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++) {
            __m512 tv = _mm512_set1_ps(tmp[(size_t)a * ldt + j]);
#pragma GCC unroll 4
            for (int c = 0; c < 2; c++) {
                ev[a][c] = _mm512_fmadd_ps(tv, be[c], ev[a][c]);
                od[a][c] = _mm512_fmadd_ps(tv, bo[c], od[a][c]);
            }
        }
    }
    const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_idx =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    __m512 kv = _mm512_set1_ps(k);
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        if (!m[c]) continue;
        __m512 bb = bias ? _mm512_maskz_loadu_ps(m[c], bias + q0 + 16 * c) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++) {
            __m512 acc =
                _mm512_permutex2var_ps(ev[a][c / 2], c % 2 ? hi_idx : lo_idx, od[a][c / 2]);
            float *yp = y + (size_t)a * ldy + q0 + 16 * c;
            __m512 v = _mm512_mul_ps(kv, _mm512_add_ps(acc, bb));
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m[c], yp), v);
            _mm512_mask_storeu_ps(yp, m[c], v);
        }
    }
}

TGT_AVX512 static void expand_avx512(const float *tmp, int ldt, int T, const void *Bt, int BF,
                                     int r, int out, float k, const float *bias, float *y, int ldy,
                                     int accumulate)
{
    for (int t = 0; t < T; t += T512) {
        int nt = T - t < T512 ? T - t : T512;
        const float *tp = tmp + (size_t)t * ldt;
        float *yp = y + (size_t)t * ldy;
        for (int q0 = 0; q0 < out; q0 += 64) {
#define LK_E512(NT)                                                                                \
    (BF ? expand_blk512_bf16(tp, ldt, Bt, r, out, q0, k, bias, yp, ldy, accumulate, NT)            \
        : expand_blk512(tp, ldt, Bt, r, out, q0, k, bias, yp, ldy, accumulate, 0, NT))
            switch (nt) {
            case 1:
                LK_E512(1);
                break;
            case 2:
                LK_E512(2);
                break;
            case 3:
                LK_E512(3);
                break;
            default:
                LK_E512(4);
            }
#undef LK_E512
        }
    }
}

/* --------------------------------------------------------------------------------------- AVX2 */

/* Lane mask for the first n (0..8) of 8 lanes, for maskload / maskstore. */
TGT_AVX2 INLINE __m256i mask256(int n)
{
    static const int32_t ones[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    n = n < 0 ? 0 : n > 8 ? 8 : n;
    return _mm256_loadu_si256((const __m256i *)(ones + 8 - n));
}

/* 8 lanes from element i of p (f32 or bf16 bits), only the first n (<= 8) read, others zero. */
TGT_AVX2 INLINE __m256 ld256(const void *p, size_t i, int n, const int BF)
{
    if (BF) {
        const uint16_t *h = (const uint16_t *)p + i;
        __m128i v;
        if (n >= 8) {
            v = _mm_loadu_si128((const __m128i *)h);
        } else {
            uint16_t t[8] = {0};
            for (int q = 0; q < n; q++)
                t[q] = h[q];
            v = _mm_loadu_si128((const __m128i *)t);
        }
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
    }
    return n >= 8 ? _mm256_loadu_ps((const float *)p + i)
                  : _mm256_maskload_ps((const float *)p + i, mask256(n));
}

TGT_AVX2 INLINE float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

TGT_AVX2 INLINE void shrink_blk256(const float *x, int ldx, const void *A, int in, float *tmp,
                                   int ldt, const int BF, const int NT, const int NJ)
{
    __m256 acc[T256][J256];
#pragma GCC unroll 4
    for (int a = 0; a < NT; a++)
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++)
            acc[a][b] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= in; i += 8) {
        __m256 xv[T256];
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++)
            xv[a] = _mm256_loadu_ps(x + (size_t)a * ldx + i);
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++) {
            __m256 av = ld256(A, (size_t)b * in + i, 8, BF);
#pragma GCC unroll 4
            for (int a = 0; a < NT; a++)
                acc[a][b] = _mm256_fmadd_ps(xv[a], av, acc[a][b]);
        }
    }
    if (i < in) {
        __m256i m = mask256(in - i);
        __m256 xv[T256];
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++)
            xv[a] = _mm256_maskload_ps(x + (size_t)a * ldx + i, m);
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++) {
            __m256 av = ld256(A, (size_t)b * in + i, in - i, BF);
#pragma GCC unroll 4
            for (int a = 0; a < NT; a++)
                acc[a][b] = _mm256_fmadd_ps(xv[a], av, acc[a][b]);
        }
    }
#pragma GCC unroll 4
    for (int a = 0; a < NT; a++)
#pragma GCC unroll 4
        for (int b = 0; b < NJ; b++)
            tmp[(size_t)a * ldt + b] = hsum256(acc[a][b]);
}

TGT_AVX2 static void shrink_avx2(const float *x, int ldx, int T, const void *A, int BF, int r,
                                 int in, float *tmp, int ldt)
{
    size_t es = BF ? 2 : 4;
    for (int t = 0; t < T; t += T256) {
        int nt = T - t < T256 ? T - t : T256;
        const float *xp = x + (size_t)t * ldx;
        float *tp = tmp + (size_t)t * ldt;
        for (int j = 0; j < r; j += J256) {
            int nj = r - j < J256 ? r - j : J256;
            const void *ap = (const char *)A + (size_t)j * in * es;
            if (BF) {
                switch (nt * 8 + nj) {
                    LK_ROW4(shrink_blk256, 1, xp, ldx, ap, in, tp + j, ldt, 1)
                    LK_ROW4(shrink_blk256, 2, xp, ldx, ap, in, tp + j, ldt, 1)
                }
            } else {
                switch (nt * 8 + nj) {
                    LK_ROW4(shrink_blk256, 1, xp, ldx, ap, in, tp + j, ldt, 0)
                    LK_ROW4(shrink_blk256, 2, xp, ldx, ap, in, tp + j, ldt, 0)
                }
            }
        }
    }
}

/* Outputs q0 .. q0+31 of NT rows: four 8-lane chunks (masked past `out`). */
TGT_AVX2 INLINE void expand_blk256(const float *tmp, int ldt, const void *Bt, int r, int out,
                                   int q0, float k, const float *bias, float *y, int ldy,
                                   int accumulate, const int BF, const int NT)
{
    __m256i m[4];
    int live[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        live[c] = out - q0 - 8 * c;
        m[c] = mask256(live[c]);
    }
    __m256 acc[T256][4];
#pragma GCC unroll 4
    for (int a = 0; a < NT; a++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            acc[a][c] = _mm256_setzero_ps();
    for (int j = 0; j < r; j++) {
        size_t bo = (size_t)j * out + (size_t)q0;
        __m256 bv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            bv[c] = ld256(Bt, bo + 8 * (size_t)c, live[c], BF);
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++) {
            __m256 tv = _mm256_set1_ps(tmp[(size_t)a * ldt + j]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                acc[a][c] = _mm256_fmadd_ps(tv, bv[c], acc[a][c]);
        }
    }
    __m256 kv = _mm256_set1_ps(k);
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        if (live[c] <= 0) continue;
        __m256 bb = bias ? _mm256_maskload_ps(bias + q0 + 8 * c, m[c]) : _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int a = 0; a < NT; a++) {
            float *yp = y + (size_t)a * ldy + q0 + 8 * c;
            __m256 v = _mm256_mul_ps(kv, _mm256_add_ps(acc[a][c], bb));
            if (accumulate) v = _mm256_add_ps(_mm256_maskload_ps(yp, m[c]), v);
            _mm256_maskstore_ps(yp, m[c], v);
        }
    }
}

TGT_AVX2 static void expand_avx2(const float *tmp, int ldt, int T, const void *Bt, int BF, int r,
                                 int out, float k, const float *bias, float *y, int ldy,
                                 int accumulate)
{
    for (int t = 0; t < T; t += T256) {
        int nt = T - t < T256 ? T - t : T256;
        const float *tp = tmp + (size_t)t * ldt;
        float *yp = y + (size_t)t * ldy;
        for (int q0 = 0; q0 < out; q0 += 32) {
            if (BF && nt == 1)
                expand_blk256(tp, ldt, Bt, r, out, q0, k, bias, yp, ldy, accumulate, 1, 1);
            else if (BF)
                expand_blk256(tp, ldt, Bt, r, out, q0, k, bias, yp, ldy, accumulate, 1, 2);
            else if (nt == 1)
                expand_blk256(tp, ldt, Bt, r, out, q0, k, bias, yp, ldy, accumulate, 0, 1);
            else
                expand_blk256(tp, ldt, Bt, r, out, q0, k, bias, yp, ldy, accumulate, 0, 2);
        }
    }
}

/* ------------------------------------------------------------------------------------- scalar */

static inline float elem(const void *p, size_t i, int BF)
{
    if (!BF) return ((const float *)p)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void shrink_scalar(const float *x, int ldx, int T, const void *A, int BF, int r, int in,
                          float *tmp, int ldt)
{
    for (int t = 0; t < T; t++)
        for (int j = 0; j < r; j++) {
            const float *xr = x + (size_t)t * ldx;
            float s = 0;
            for (int i = 0; i < in; i++)
                s += xr[i] * elem(A, (size_t)j * in + i, BF);
            tmp[(size_t)t * ldt + j] = s;
        }
}

static void expand_scalar(const float *tmp, int ldt, int T, const void *Bt, int BF, int r, int out,
                          float k, const float *bias, float *y, int ldy, int accumulate)
{
    for (int t = 0; t < T; t++) {
        float *yr = y + (size_t)t * ldy;
        const float *tr = tmp + (size_t)t * ldt;
        for (int q = 0; q < out; q++) {
            float s = 0;
            for (int j = 0; j < r; j++)
                s += tr[j] * elem(Bt, (size_t)j * out + q, BF);
            float v = k * (s + (bias ? bias[q] : 0.0f));
            yr[q] = accumulate ? yr[q] + v : v;
        }
    }
}

/* ------------------------------------------------------------------------------------ dispatch */

static void shrink_any(const float *x, int ldx, int T, const void *A, int BF, int r, int in,
                       float *tmp, int ldt)
{
    if (T <= 0 || r <= 0) return;
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        shrink_avx512(x, ldx, T, A, BF, r, in, tmp, ldt);
        break;
    case KERN_ISA_AVX2:
        shrink_avx2(x, ldx, T, A, BF, r, in, tmp, ldt);
        break;
    default:
        shrink_scalar(x, ldx, T, A, BF, r, in, tmp, ldt);
    }
}

static void expand_any(const float *tmp, int ldt, int T, const void *Bt, int BF, int r, int out,
                       float k, const float *bias, float *y, int ldy, int accumulate)
{
    if (T <= 0 || out <= 0) return;
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        expand_avx512(tmp, ldt, T, Bt, BF, r, out, k, bias, y, ldy, accumulate);
        break;
    case KERN_ISA_AVX2:
        expand_avx2(tmp, ldt, T, Bt, BF, r, out, k, bias, y, ldy, accumulate);
        break;
    default:
        expand_scalar(tmp, ldt, T, Bt, BF, r, out, k, bias, y, ldy, accumulate);
    }
}

void lk_shrink(const float *x, int ldx, int T, const float *A, int r, int in, float *tmp, int ldt)
{
    shrink_any(x, ldx, T, A, 0, r, in, tmp, ldt);
}

void lk_shrink_bf16(const float *x, int ldx, int T, const uint16_t *A, int r, int in, float *tmp,
                    int ldt)
{
    shrink_any(x, ldx, T, A, 1, r, in, tmp, ldt);
}

void lk_expand(const float *tmp, int ldt, int T, const float *Bt, int r, int out, float k,
               const float *bias, float *y, int ldy, int accumulate)
{
    expand_any(tmp, ldt, T, Bt, 0, r, out, k, bias, y, ldy, accumulate);
}

void lk_expand_bf16(const float *tmp, int ldt, int T, const uint16_t *Bt, int r, int out, float k,
                    const float *bias, float *y, int ldy, int accumulate)
{
    expand_any(tmp, ldt, T, Bt, 1, r, out, k, bias, y, ldy, accumulate);
}
