/* kernels.h — the numeric kernels of the forward pass and the thread pool that runs them.
 *
 * Every kernel opens with the maths it computes. Work is split across the pool's threads by
 * (ith, nth): thread ith of nth takes its own slice of rows, so all kernels look alike (ggml
 * style). The caller thread is worker 0; kern_pool_run returns when every slice is done.
 *
 * Instruction-set dispatch is decided once at kern_pool_create (or forced with kern_set_isa for
 * tests): AVX-512, AVX2+FMA+F16C, or portable scalar C, so one binary runs on any x86-64.
 * Nothing here allocates after creation.
 */
#ifndef LR_KERNELS_H
#define LR_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

typedef struct kern_pool kern_pool;

typedef enum { KERN_ISA_SCALAR = 0, KERN_ISA_AVX2 = 1, KERN_ISA_AVX512 = 2 } kern_isa;

/* A slice of work: thread ith of nth. */
typedef void (*kern_task)(void *ctx, int ith, int nth);

/* Create a pool of n threads (n <= 0: all online cores; the caller counts as one, so n-1 are
 * started) and set OpenBLAS to one thread (kern_matmul splits its sgemm calls over the pool).
 * Returns 0 or LR_ENOMEM / LR_EINTERNAL. */
int kern_pool_create(int n, lr_error *err, kern_pool **out);
/* Join the threads and free. kern_pool_destroy(NULL) does nothing. */
void kern_pool_destroy(kern_pool *p);
int kern_pool_threads(const kern_pool *p);
/* Run fn(ctx, ith, nth) for ith = 0..nth-1 (ith 0 on the calling thread) and wait for all. */
void kern_pool_run(kern_pool *p, kern_task fn, void *ctx);

/* Run fn(ctx, c, nchunks) once for every chunk c = 0..nchunks-1, chunks claimed dynamically by
 * whichever thread (the caller included) is free, and wait for all. For tasks whose slices do not
 * depend on which thread runs them (fn must not use c as a thread index, e.g. for per-thread
 * scratch). Load-balances, and does not stall when a worker is descheduled on a busy machine. */
void kern_pool_run_chunks(kern_pool *p, kern_task fn, void *ctx, int nchunks);

/* The best ISA this CPU supports; and the ISA kernels use now (process-wide). kern_set_isa
 * clamps to what the CPU supports and returns the ISA actually selected. */
kern_isa kern_cpu_isa(void);
kern_isa kern_get_isa(void);
kern_isa kern_set_isa(kern_isa isa);
const char *kern_isa_name(kern_isa isa);

/* ---- element conversion ---- */
/* dst[i] = f32(src[i]) for IEEE binary16 (incl. subnormals, inf, NaN) / bfloat16 (bits << 16). */
void kern_f16_to_f32(const void *src, float *dst, int64_t n);
void kern_bf16_to_f32(const void *src, float *dst, int64_t n);
/* Row r of W (any dtype) as f32 into dst[W->cols]. */
void kern_mat_row(const lr_mat *W, int64_t r, float *dst);

/* ---- packed weights ----
 * kern_mat_pack copies W (row-major) into the layout the AVX-512 matmul streams best: tiles of
 * KERN_PACK_ROWS rows, each tile k-major — F32 / F16: [k][48 rows]; BF16: [k / 2][48 rows][2]
 * (columns padded to even) — rows padded with zeros to whole tiles. Values are copied bit for
 * bit; the packed view (out: same dtype, rows, cols, packed = 1, data = dst) works with every
 * function here (other ISAs fall back to plain loops). dst: kern_pack_bytes(W) bytes, 64-byte
 * aligned. kern_pack_wanted: 1 when the current ISA's matmul reads packed weights. */
#define KERN_PACK_ROWS 48
int kern_pack_wanted(void);
size_t kern_pack_bytes(const lr_mat *W);
void kern_mat_pack(const lr_mat *W, void *dst, lr_mat *out);

/* ---- dot products ---- */
/* Σ_i a[i]·b[i] with f32 accumulation; b in f32 / f16 / bf16 (b may be unaligned). */
float kern_dot_f32(const float *a, const float *b, int64_t n);
float kern_dot_f16(const float *a, const void *b, int64_t n);
float kern_dot_bf16(const float *a, const void *b, int64_t n);

/* ---- matmul ----
 * y[t, o] = Σ_i x[t, i] · W[o, i]   for t < T, o < W->rows, i < W->cols   (y = x·Wᵀ)
 * AVX-512: W is read in its own dtype (BF16/F16 widened in registers, never converted to
 * memory). A packed W (kern_mat_pack, what the loader makes) goes through the packed kernel —
 * one running sum over k per output, the activation a broadcast operand; a row-major W through
 * the register-tiled dot-product kernel (lane sums reduced per tile). For T <= 16 each thread
 * streams one slice of W's tiles and steals from the others' ends; for T > 16 blocks of
 * activation rows × weight rows are claimed by the pool's threads. Either kernel gives every
 * (row, output) pair the same operations whatever T, so a row's result is bitwise independent
 * of the other rows of the batch for every T (batch-invariant); the two kernels differ from
 * each other in the last bits.
 * AVX2 / scalar: for T <= KERN_DIRECT_T a direct kernel reads W once in its own dtype,
 * activation rows four at a time (batch-invariant for those T); otherwise single-threaded
 * cblas_sgemm calls on chunks of W's rows spread over the pool (F16/BF16: panels of
 * KERN_PANEL_ROWS rows converted to f32 in `scratch`), whose per-row results depend on T in the
 * last bits.
 * scratch: kern_matmul_scratch_floats(W->cols) floats, required for a row-major F16/BF16 W
 * (the AVX-512 BF16 dot-product path permutes the activations into it), NULL allowed for F32
 * and packed W. x, y must not overlap. */
#define KERN_DIRECT_T 8
#define KERN_PANEL_ROWS 256
size_t kern_matmul_scratch_floats(int64_t cols);
void kern_matmul(kern_pool *p, float *y, int ldy, const float *x, int ldx, int T, const lr_mat *W,
                 float *scratch);
/* Small independent work run in the same dispatch of the pool as a matmul — a LoRA delta into
 * its own buffer: fn(ctx, i, n) for i < n. For T <= 16 the first thread starts on W's tiles and
 * the others on this work, then on their slices of tiles (kernels.c, mt_task); for prefill it
 * is claimed before the tiles. (Prefetching the adapters' matrices spread over the tiles, so the
 * delta's reads would overlap the GEMM, measured 5-10 % slower at 8 and 16 streams: the
 * extra prefetches competed with W's own stream.) */
typedef struct kern_extra {
    kern_task fn;
    void *ctx;
    int n;
} kern_extra;
/* kern_matmul plus ex (NULL or n = 0: kern_matmul). fn must not touch y or the rows of x. */
void kern_matmul_ex(kern_pool *p, float *y, int ldy, const float *x, int ldx, int T,
                    const lr_mat *W, float *scratch, const kern_extra *ex);
/* y[i] = x·W[i]ᵀ for i < n (n <= KERN_GROUP_MAX) matrices of the same cols that read the same
 * x — q, k and v; gate and up — plus ex, in ONE dispatch of the pool when T <= 16 and every W
 * is packed (AVX-512): the threads' slices run over all the matrices' tiles, so the group pays
 * one start and one end of a dispatch instead of n, and ex's pieces for every matrix balance
 * against all of their tiles. Otherwise one kern_matmul_ex (ex with W[0]) then kern_matmul
 * each. Results are those of kern_matmul. */
#define KERN_GROUP_MAX 3
void kern_matmul_group(kern_pool *p, int n, const lr_mat *const *W, float *const *y,
                       const int *ldy, const float *x, int ldx, int T, float *scratch,
                       const kern_extra *ex);

/* ---- row-wise operations ---- */
/* out[t, j] = w[j] · x[t, j] / sqrt(mean_j(x[t, j]²) + eps)   (RMSNorm, fp32 statistics). */
void kern_rmsnorm(float *out, const float *x, const float *w, int T, int n, float eps);
/* y[t, j] += b[j]. */
void kern_add_bias(float *y, int ldy, const float *b, int T, int n);
/* g[t, j] = act(g[t, j]) · u[t, j], act = SiLU z/(1+e^-z) (or GELU variants). */
void kern_act_mul(float *g, const float *u, int64_t n, lr_act act);
/* y[i] += x[i]. */
void kern_add(float *y, const float *x, int64_t n);
/* y[i] += a · x[i] (fused multiply-add in the vector variants; the attention's value sum). */
void kern_axpy(float *y, float a, const float *x, int64_t n);
/* In-place RoPE, HF rotate_half layout, on n_heads head vectors of size hd at v (stride hd):
 * for k < hd/2: v'[k] = v[k]·cos[k] − v[k+hd/2]·sin[k]; v'[k+hd/2] = v[k+hd/2]·cos[k] +
 * v[k]·sin[k]. */
void kern_rope(float *v, int n_heads, int hd, const float *cos, const float *sin);
/* x[i] = exp(x[i] − max) / Σ exp(…), fp32, in place. Returns nothing; n >= 1. */
void kern_softmax(float *x, int n);

/* ---- vector maths (core/kern_rows.c) ----
 * y[i] = e^x[i] in fp32: the vector variants are within 2 ulp of expf over the normal range,
 * give +0 for x <= −104 (and −inf), +inf above 88.73; y may equal x. */
void kern_exp(float *y, const float *x, int64_t n);

#endif
