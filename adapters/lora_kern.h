/* lora_kern.h — the two small products of a LoRA delta for a run of decode rows (prefix lk_).
 *
 * A rank-r adapter on a linear [out, in] adds, per row x of the run, k·(x·Aᵀ)·Bᵀ. With r of 8 to
 * 64 and a handful of rows these are far too small for sgemm (its packing costs more than the
 * products) and far too thin for a dot product per output (a call and a horizontal sum for every
 * one of r multiplications). Instead:
 *   shrink — several rows of x against several rows of A at once, one horizontal sum per
 *            (row, rank) at the end, so A is streamed once for up to four rows;
 *   expand — B is kept transposed (Bt [r, out]) so every output chunk is r fused multiply-adds
 *            of contiguous vectors held in registers, again for up to four rows at once.
 * AVX-512, AVX2+FMA and scalar variants, chosen at every call from kern_get_isa() (so tests can
 * force one with kern_set_isa). For a given ISA a row's result depends only on that row: the
 * same operations in the same order whatever T is and wherever the row sits in the run.
 * Nothing here allocates; x, A, Bt and y may be unaligned; tmp/y must not overlap the inputs.
 */
#ifndef LR_LORA_KERN_H
#define LR_LORA_KERN_H

#include <stdint.h>

/* shrink: tmp[t·ldt + j] = Σ_i x[t·ldx + i] · A[j·in + i]   for t < T, j < r   (tmp = X·Aᵀ).
 * A is [r, in] row-major. */
void lk_shrink(const float *x, int ldx, int T, const float *A, int r, int in, float *tmp, int ldt);

/* expand: y[t·ldy + q] = (accumulate ? y[t·ldy + q] : 0)
 *                        + k · (Σ_j tmp[t·ldt + j] · Bt[j·out + q] + (bias ? bias[q] : 0))
 * for t < T, q < out. Bt is [r, out] row-major (lora_B transposed). */
void lk_expand(const float *tmp, int ldt, int T, const float *Bt, int r, int out, float k,
               const float *bias, float *y, int ldy, int accumulate);

/* The same with A / Bt held as bfloat16 bits (an f32's top 16 bits), widened exactly in
 * registers: a BF16 adapter file is used as stored, at half the memory and bandwidth. The
 * result equals lk_shrink / lk_expand on the widened values. */
void lk_shrink_bf16(const float *x, int ldx, int T, const uint16_t *A, int r, int in, float *tmp,
                    int ldt);
void lk_expand_bf16(const float *tmp, int ldt, int T, const uint16_t *Bt, int r, int out, float k,
                    const float *bias, float *y, int ldy, int accumulate);

#endif
