/* kernels.c — numeric kernels (matmul, dot products, conversions, RMSNorm, RoPE, softmax,
 * activations) and the small pthread pool that splits them across cores.
 *
 * This module knows tensors only as raw pointers and lr_mat views; it knows nothing of layers,
 * sequences or the KV cache (that is core/forward). Correctness comes first: every kernel has a
 * naive double-precision twin in tests/unit/check_kernels.c. The vector variants are compiled
 * with __attribute__((target)) so the file builds with the project's generic flags and picks
 * the best variant at run time.
 */
#include "kernels.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* Thread pool                                                                                 */
/* ------------------------------------------------------------------------------------------ */

struct kern_worker {
    kern_pool *pool;
    int ith;
};

struct kern_pool {
    int n;                    /* threads including the caller */
    pthread_t *th;            /* [n-1] */
    struct kern_worker *args; /* [n-1] */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen; /* bumped for every run; workers run once per value (atomic reads) */
    int remaining;     /* workers still busy with the current generation (kern_pool_run) */
    int stop;
    kern_task fn;
    void *ctx;
    /* kern_pool_run_chunks: chunks are claimed through `claim` = (generation << 32) | next
     * chunk, by compare-and-swap, so a worker that wakes up late (after its generation ended)
     * can never claim — nor touch the context of — a later run. done_chunks counts finished
     * chunks; the caller returns when it reaches nchunks, without waiting for idle workers. */
    int chunked;
    int nchunks;
    uint64_t claim;
    int done_chunks;
};

/* Spin iterations (about 30 µs) a worker polls for the next run before it sleeps: a decode step
 * starts hundreds of short runs back to back, and a futex wake-up per run costs more than the
 * run's share of work. */
#define KERN_SPIN 4000

/* Claim and run chunks of generation gen until none is left; returns the number run. */
static int kern_chunks_work(kern_pool *p, uint32_t gen, kern_task fn, void *ctx, int nchunks)
{
    int ran = 0;
    for (;;) {
        uint64_t v = __atomic_load_n(&p->claim, __ATOMIC_ACQUIRE);
        if ((uint32_t)(v >> 32) != gen || (int)(uint32_t)v >= nchunks) break;
        if (!__atomic_compare_exchange_n(&p->claim, &v, v + 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        fn(ctx, (int)(uint32_t)v, nchunks);
        ran++;
        if (__atomic_add_fetch(&p->done_chunks, 1, __ATOMIC_ACQ_REL) == nchunks) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return ran;
}

static void *kern_worker_main(void *arg)
{
    struct kern_worker *w = arg;
    kern_pool *p = w->pool;
    unsigned long seen = 0;
    for (;;) {
        for (int i = 0; i < KERN_SPIN; i++) {
            if (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) != seen ||
                __atomic_load_n(&p->stop, __ATOMIC_RELAXED))
                break;
            _mm_pause();
        }
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        seen = p->gen;
        kern_task fn = p->fn;
        void *ctx = p->ctx;
        int chunked = p->chunked, nchunks = p->nchunks;
        pthread_mutex_unlock(&p->mu);
        if (chunked) {
            kern_chunks_work(p, (uint32_t)seen, fn, ctx, nchunks);
            continue;
        }
        fn(ctx, w->ith, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->remaining == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

int kern_pool_create(int n, lr_error *err, kern_pool **out)
{
    *out = NULL;
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    if (n > 256) n = 256;
    kern_pool *p = calloc(1, sizeof *p);
    if (!p) return lr_error_set(err, LR_ENOMEM, "out of memory creating the compute thread pool");
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    if (n > 1) {
        p->th = calloc((size_t)n - 1, sizeof *p->th);
        p->args = calloc((size_t)n - 1, sizeof *p->args);
        if (!p->th || !p->args) {
            kern_pool_destroy(p);
            return lr_error_set(err, LR_ENOMEM, "out of memory creating the compute thread pool");
        }
        for (int i = 0; i < n - 1; i++) {
            p->args[i] = (struct kern_worker){p, i + 1};
            if (pthread_create(&p->th[i], NULL, kern_worker_main, &p->args[i]) != 0) {
                p->n = i + 1; /* join only the threads that exist */
                kern_pool_destroy(p);
                return lr_error_set(err, LR_EINTERNAL, "cannot start compute thread %d of %d",
                                    i + 2, n);
            }
        }
    }
    /* OpenBLAS runs single-threaded inside our chunks (kern_matmul); its own threads would
     * spin against ours for the same cores. */
    openblas_set_num_threads(1);
    kern_get_isa(); /* decide the ISA now, not inside the first forward */
    *out = p;
    return 0;
}

void kern_pool_destroy(kern_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; p->th && i < p->n - 1; i++)
        pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p->args);
    free(p);
}

int kern_pool_threads(const kern_pool *p)
{
    return p ? p->n : 1;
}

void kern_pool_run(kern_pool *p, kern_task fn, void *ctx)
{
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->chunked = 0;
    p->remaining = p->n - 1;
    __atomic_store_n(&p->gen, p->gen + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    pthread_mutex_lock(&p->mu);
    while (p->remaining > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void kern_pool_run_chunks(kern_pool *p, kern_task fn, void *ctx, int nchunks)
{
    if (nchunks <= 0) return;
    if (!p || p->n == 1 || nchunks == 1) {
        for (int c = 0; c < nchunks; c++)
            fn(ctx, c, nchunks);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->chunked = 1;
    p->nchunks = nchunks;
    unsigned long gen = p->gen + 1;
    __atomic_store_n(&p->done_chunks, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->claim, (uint64_t)(uint32_t)gen << 32, __ATOMIC_RELEASE);
    __atomic_store_n(&p->gen, gen, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    /* The caller works too, and takes every chunk itself if the workers are slow to wake (on a
     * busy machine a worker may not run for a whole time slice). */
    kern_chunks_work(p, (uint32_t)gen, fn, ctx, nchunks);
    for (int i = 0; i < KERN_SPIN; i++) {
        if (__atomic_load_n(&p->done_chunks, __ATOMIC_ACQUIRE) == nchunks) return;
        _mm_pause();
    }
    pthread_mutex_lock(&p->mu);
    while (__atomic_load_n(&p->done_chunks, __ATOMIC_ACQUIRE) < nchunks)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* Rows [*r0, *r1) of n for thread ith of nth: contiguous, balanced slices. */
static void kern_slice(int64_t n, int ith, int nth, int64_t *r0, int64_t *r1)
{
    *r0 = n * ith / nth;
    *r1 = n * (ith + 1) / nth;
}

/* ------------------------------------------------------------------------------------------ */
/* ISA dispatch                                                                                */
/* ------------------------------------------------------------------------------------------ */

static int g_isa = -1; /* -1: not decided yet */

kern_isa kern_cpu_isa(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return KERN_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return KERN_ISA_AVX2;
    return KERN_ISA_SCALAR;
}

kern_isa kern_get_isa(void)
{
    int isa = __atomic_load_n(&g_isa, __ATOMIC_RELAXED);
    if (isa < 0) {
        isa = (int)kern_cpu_isa();
        __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
    }
    return (kern_isa)isa;
}

kern_isa kern_set_isa(kern_isa isa)
{
    kern_isa cpu = kern_cpu_isa();
    if (isa > cpu) isa = cpu;
    __atomic_store_n(&g_isa, (int)isa, __ATOMIC_RELAXED);
    return isa;
}

const char *kern_isa_name(kern_isa isa)
{
    switch (isa) {
    case KERN_ISA_AVX512:
        return "avx512";
    case KERN_ISA_AVX2:
        return "avx2";
    default:
        return "scalar";
    }
}

#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TGT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

/* ------------------------------------------------------------------------------------------ */
/* Conversions                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* IEEE binary16 → binary32: sign, 5-bit exponent (bias 15), 10-bit mantissa. Subnormals are
 * renormalised; exponent 31 is inf/NaN (NaN payload kept in the top mantissa bits). */
static float f16_scalar(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: value = man · 2^-24 */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float bf16_scalar(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t load_u16(const void *p, int64_t i)
{
    uint16_t v;
    memcpy(&v, (const char *)p + 2 * i, 2);
    return v;
}

TGT_AVX512 static void f16_to_f32_avx512(const void *src, float *dst, int64_t n)
{
    const char *s = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i,
                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + 2 * i))));
    for (; i < n; i++)
        dst[i] = f16_scalar(load_u16(src, i));
}

TGT_AVX2 static void f16_to_f32_avx2(const void *src, float *dst, int64_t n)
{
    const char *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))));
    for (; i < n; i++)
        dst[i] = f16_scalar(load_u16(src, i));
}

TGT_AVX512 static void bf16_to_f32_avx512(const void *src, float *dst, int64_t n)
{
    const char *s = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + 2 * i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
    for (; i < n; i++)
        dst[i] = bf16_scalar(load_u16(src, i));
}

TGT_AVX2 static void bf16_to_f32_avx2(const void *src, float *dst, int64_t n)
{
    const char *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + 2 * i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++)
        dst[i] = bf16_scalar(load_u16(src, i));
}

void kern_f16_to_f32(const void *src, float *dst, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        f16_to_f32_avx512(src, dst, n);
        return;
    case KERN_ISA_AVX2:
        f16_to_f32_avx2(src, dst, n);
        return;
    default:
        for (int64_t i = 0; i < n; i++)
            dst[i] = f16_scalar(load_u16(src, i));
    }
}

void kern_bf16_to_f32(const void *src, float *dst, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        bf16_to_f32_avx512(src, dst, n);
        return;
    case KERN_ISA_AVX2:
        bf16_to_f32_avx2(src, dst, n);
        return;
    default:
        for (int64_t i = 0; i < n; i++)
            dst[i] = bf16_scalar(load_u16(src, i));
    }
}

/* ---- packed layout (kern_mat_pack): tiles of KERN_PACK_ROWS rows, k-major ---- */

static int64_t pk_cols_stored(const lr_mat *W)
{
    return W->dtype == LR_DT_BF16 ? (W->cols + 1) / 2 * 2 : W->cols;
}

/* Element index of W[r][k] in the packed buffer (in elements of W's dtype). */
static size_t pk_index(const lr_mat *W, int64_t r, int64_t k)
{
    size_t tile = (size_t)(r / KERN_PACK_ROWS), i = (size_t)(r % KERN_PACK_ROWS);
    size_t base = tile * (size_t)pk_cols_stored(W) * KERN_PACK_ROWS;
    if (W->dtype == LR_DT_BF16) return base + (size_t)(k / 2) * 2 * KERN_PACK_ROWS + 2 * i + (size_t)(k & 1);
    return base + (size_t)k * KERN_PACK_ROWS + i;
}

static float pk_value(const lr_mat *W, int64_t r, int64_t k)
{
    size_t i = pk_index(W, r, k);
    if (W->dtype == LR_DT_F32) return ((const float *)W->data)[i];
    uint16_t h = ((const uint16_t *)W->data)[i];
    return W->dtype == LR_DT_F16 ? f16_scalar(h) : bf16_scalar(h);
}

int kern_pack_wanted(void)
{
    return kern_get_isa() == KERN_ISA_AVX512;
}

size_t kern_pack_bytes(const lr_mat *W)
{
    size_t tiles = (size_t)((W->rows + KERN_PACK_ROWS - 1) / KERN_PACK_ROWS);
    size_t es = W->dtype == LR_DT_F32 ? 4 : 2;
    return tiles * KERN_PACK_ROWS * (size_t)pk_cols_stored(W) * es;
}

void kern_mat_pack(const lr_mat *W, void *dst, lr_mat *out)
{
    LR_ASSERT(!W->packed);
    *out = *W;
    out->data = dst;
    out->packed = 1;
    memset(dst, 0, kern_pack_bytes(W)); /* padding rows and the odd BF16 column are zeros */
    for (int64_t r = 0; r < W->rows; r++)
        for (int64_t k = 0; k < W->cols; k++) {
            size_t from = (size_t)r * (size_t)W->cols + (size_t)k, to = pk_index(out, r, k);
            if (W->dtype == LR_DT_F32)
                memcpy((float *)dst + to, (const float *)W->data + from, 4);
            else
                ((uint16_t *)dst)[to] = load_u16(W->data, (int64_t)from);
        }
}

void kern_mat_row(const lr_mat *W, int64_t r, float *dst)
{
    if (W->packed) {
        for (int64_t k = 0; k < W->cols; k++)
            dst[k] = pk_value(W, r, k);
        return;
    }
    const char *row = (const char *)W->data;
    switch (W->dtype) {
    case LR_DT_F32:
        memcpy(dst, row + (size_t)r * (size_t)W->cols * 4, (size_t)W->cols * 4);
        return;
    case LR_DT_F16:
        kern_f16_to_f32(row + (size_t)r * (size_t)W->cols * 2, dst, W->cols);
        return;
    case LR_DT_BF16:
        kern_bf16_to_f32(row + (size_t)r * (size_t)W->cols * 2, dst, W->cols);
        return;
    }
    LR_ASSERT(!"unknown lr_dtype");
}

/* ------------------------------------------------------------------------------------------ */
/* Dot products                                                                                */
/* ------------------------------------------------------------------------------------------ */

TGT_AVX512 static float dot_f32_avx512(const float *a, const float *b, int64_t n)
{
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

TGT_AVX2 static float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

TGT_AVX2 static float dot_f32_avx2(const float *a, const float *b, int64_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

TGT_AVX512 static float dot_f16_avx512(const float *a, const void *b, int64_t n)
{
    const char *s = b;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + 2 * i)));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), w, acc);
    }
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++)
        r += a[i] * f16_scalar(load_u16(b, i));
    return r;
}

TGT_AVX2 static float dot_f16_avx2(const float *a, const void *b, int64_t n)
{
    const char *s = b;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), w, acc);
    }
    float r = hsum256(acc);
    for (; i < n; i++)
        r += a[i] * f16_scalar(load_u16(b, i));
    return r;
}

TGT_AVX512 static float dot_bf16_avx512(const float *a, const void *b, int64_t n)
{
    const char *s = b;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + 2 * i)));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                              acc);
    }
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++)
        r += a[i] * bf16_scalar(load_u16(b, i));
    return r;
}

TGT_AVX2 static float dot_bf16_avx2(const float *a, const void *b, int64_t n)
{
    const char *s = b;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + 2 * i)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)),
                              acc);
    }
    float r = hsum256(acc);
    for (; i < n; i++)
        r += a[i] * bf16_scalar(load_u16(b, i));
    return r;
}

float kern_dot_f32(const float *a, const float *b, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        return dot_f32_avx512(a, b, n);
    case KERN_ISA_AVX2:
        return dot_f32_avx2(a, b, n);
    default: {
        float s = 0;
        for (int64_t i = 0; i < n; i++)
            s += a[i] * b[i];
        return s;
    }
    }
}

float kern_dot_f16(const float *a, const void *b, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        return dot_f16_avx512(a, b, n);
    case KERN_ISA_AVX2:
        return dot_f16_avx2(a, b, n);
    default: {
        float s = 0;
        for (int64_t i = 0; i < n; i++)
            s += a[i] * f16_scalar(load_u16(b, i));
        return s;
    }
    }
}

float kern_dot_bf16(const float *a, const void *b, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        return dot_bf16_avx512(a, b, n);
    case KERN_ISA_AVX2:
        return dot_bf16_avx2(a, b, n);
    default: {
        float s = 0;
        for (int64_t i = 0; i < n; i++)
            s += a[i] * bf16_scalar(load_u16(b, i));
        return s;
    }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Matmul                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct mm_job {
    float *y;
    int ldy;
    const float *x;
    int ldx;
    int T;
    const lr_mat *W;
    float *panel;   /* panel conversion target [nr, cols] */
    int64_t r0, nr; /* panel rows of W */
    int64_t chunk;  /* rows of W per chunk (sgemm path) */
} mm_job;

/* Four dot products of one weight row w (dtype dt, n values) with up to four activation rows:
 *   out[r] = Σ_i x_r[i] · w[i]   for r < 4, x_r = x + r·ldx.
 * The weight vector is loaded once and used four times, so a group of four rows costs about
 * what one row costs (the weights stream from memory; the activations sit in cache). Each row
 * has its own accumulator and the same summation order whatever group it is in, so a row's
 * result does not depend on the other rows of the batch. */
static inline float w_scalar(const void *w, lr_dtype dt, int64_t i)
{
    if (dt == LR_DT_F32) {
        float f;
        memcpy(&f, (const char *)w + 4 * i, 4);
        return f;
    }
    return dt == LR_DT_F16 ? f16_scalar(load_u16(w, i)) : bf16_scalar(load_u16(w, i));
}

TGT_AVX2 static inline __m256 w8_avx2(const void *w, lr_dtype dt, int64_t i)
{
    const char *c = w;
    if (dt == LR_DT_F32) return _mm256_loadu_ps((const float *)(c + 4 * i));
    __m128i h = _mm_loadu_si128((const __m128i *)(c + 2 * i));
    if (dt == LR_DT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

TGT_AVX2 static void dot4_avx2(const float *x, int ldx, const void *w, lr_dtype dt, int64_t n,
                               float *out)
{
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * (size_t)ldx, *x3 = x + 3 * (size_t)ldx;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv = w8_avx2(w, dt, i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), wv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i), wv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + i), wv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + i), wv, a3);
    }
    float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
    for (; i < n; i++) {
        float wi = w_scalar(w, dt, i);
        s0 += x0[i] * wi, s1 += x1[i] * wi, s2 += x2[i] * wi, s3 += x3[i] * wi;
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

static void dot4_scalar(const float *x, int ldx, const void *w, lr_dtype dt, int64_t n, float *out)
{
    float s[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n; i++) {
        float wi = w_scalar(w, dt, i);
        for (int r = 0; r < 4; r++)
            s[r] += x[(size_t)r * (size_t)ldx + (size_t)i] * wi;
    }
    memcpy(out, s, sizeof s);
}

/* One row alone, with exactly the arithmetic of one lane of dot4 (one accumulator, the same
 * order), so a row's result is the same whether it ran in a group of four or alone. */
TGT_AVX2 static float dot1_avx2(const float *x, const void *w, lr_dtype dt, int64_t n)
{
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), w8_avx2(w, dt, i), a);
    float s = hsum256(a);
    for (; i < n; i++)
        s += x[i] * w_scalar(w, dt, i);
    return s;
}

static float dot1_scalar(const float *x, const void *w, lr_dtype dt, int64_t n)
{
    float s = 0;
    for (int64_t i = 0; i < n; i++)
        s += x[i] * w_scalar(w, dt, i);
    return s;
}

/* Direct kernel: thread ith computes y[:, o] for its slice of W's rows, reading each W row once
 * (in its own dtype) for all T activation rows, four at a time. Used for small T, where packing or
 * converting W for sgemm would cost more than the products. */
static void mm_direct_task(void *ctx, int ith, int nth)
{
    const mm_job *j = ctx;
    const lr_mat *W = j->W;
    int64_t o0, o1;
    kern_slice(W->rows, ith, nth, &o0, &o1);
    size_t esz = W->dtype == LR_DT_F32 ? 4 : 2;
    kern_isa isa = kern_get_isa();
    for (int64_t o = o0; o < o1; o++) {
        const void *row = (const char *)W->data + (size_t)o * (size_t)W->cols * esz;
        for (int t = 0; t < j->T; t += 4) {
            int nr = j->T - t < 4 ? j->T - t : 4;
            const float *x = j->x + (size_t)t * (size_t)j->ldx;
            float out[4];
            if (nr < 4) {
                for (int r = 0; r < nr; r++) {
                    const float *xr = x + (size_t)r * (size_t)j->ldx;
                    float v;
                    if (isa == KERN_ISA_AVX2)
                        v = dot1_avx2(xr, row, W->dtype, W->cols);
                    else
                        v = dot1_scalar(xr, row, W->dtype, W->cols);
                    j->y[(size_t)(t + r) * (size_t)j->ldy + (size_t)o] = v;
                }
                continue;
            }
            if (isa == KERN_ISA_AVX2)
                dot4_avx2(x, j->ldx, row, W->dtype, W->cols, out);
            else
                dot4_scalar(x, j->ldx, row, W->dtype, W->cols, out);
            for (int r = 0; r < 4; r++)
                j->y[(size_t)(t + r) * (size_t)j->ldy + (size_t)o] = out[r];
        }
    }
}

/* sgemm path, one chunk of W's rows [a, b) of the panel rows [r0, r0 + nr): convert them to f32
 * in the panel (F16/BF16; F32 is used in place) and multiply with a single-threaded sgemm:
 *   y[:, r0+a .. r0+b) = x · W[r0+a .. r0+b)ᵀ.
 * The threads are ours, not OpenBLAS's (set to one thread at pool creation): chunks go to
 * whichever thread is free, and no second set of spinning threads competes for the cores. */
static void mm_sgemm_task(void *ctx, int c, int nc)
{
    const mm_job *j = ctx;
    const lr_mat *W = j->W;
    int64_t a = (int64_t)c * j->chunk, b = a + j->chunk;
    if (b > j->nr) b = j->nr;
    if (a >= b) return;
    const float *w;
    if (W->dtype == LR_DT_F32) {
        w = (const float *)W->data + (size_t)(j->r0 + a) * (size_t)W->cols;
    } else {
        float *pn = j->panel + (size_t)a * (size_t)W->cols;
        for (int64_t r = a; r < b; r++)
            kern_mat_row(W, j->r0 + r, pn + (size_t)(r - a) * (size_t)W->cols);
        w = pn;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->T, (int)(b - a), (int)W->cols, 1.0f,
                j->x, j->ldx, w, (int)W->cols, 0.0f, j->y + j->r0 + a, j->ldy);
}

/* Chunks for a run over `rows` rows of W: about 8 per thread so a late or slow thread is
 * absorbed by the others, but at least 16 rows each so a claim stays cheap. */
static int mm_chunks(const kern_pool *p, int64_t rows)
{
    int64_t c = 8 * (int64_t)kern_pool_threads(p);
    if (c > rows / 16) c = rows / 16;
    return c < 1 ? 1 : (int)c;
}

/* ---- AVX-512: one register-tiled kernel for every T ----
 * A tile is MR activation rows × NR weight rows (MR·NR ≤ 16 accumulators, one zmm each):
 *   acc[i][j] += x_i[k..k+16) ⊙ w_j[k..k+16)   for k in steps of 16 (F32, F16), and
 *   acc[i][j] += x_i^even ⊙ w_j^even;  acc[i][j] += x_i^odd ⊙ w_j^odd   per 32 values (BF16),
 * then the 16 accumulators are summed across lanes together (red16). BF16 weights are widened
 * in registers without a shuffle: a dword of two bf16 holds value 2l in its low half and 2l+1 in
 * its high half, so (dword << 16) and (dword & 0xffff0000) are the f32 of the even and the odd
 * values; the activations are permuted to match once per call (bf16_permute_x). The K tail is
 * read with masked loads (zeros), so every (row, output) pair gets the same sequence of
 * operations whatever tile, group or thread computed it: results are bitwise independent of T
 * and of the batch's other rows. W is read in its own dtype, never packed or converted to
 * memory. */

#define MT_TB 128 /* activation rows per chunk when T is large (a block stays in L2) */
#define MT_NB 64  /* weight rows per chunk when T is large */

/* out[i] = Σ_lanes v[i] for i < 16, by one pairing tree shared by all 16 vectors: lanes l and
 * l+8, then l and l+4, l+2, l+1 (every vector is summed in the same order, whichever slot it
 * occupies, so a result does not depend on its neighbours). The total of v[i] ends in lane
 * 4·(i mod 4) + i/4. */
TGT_AVX512 static inline __attribute__((always_inline)) void red16(const __m512 *v, float *out)
{
    __m512 s[8], u[4], w[2];
#pragma GCC unroll 16
    for (int p = 0; p < 8; p++)
        s[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
#pragma GCC unroll 16
    for (int q = 0; q < 4; q++)
        u[q] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * q], s[2 * q + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * q], s[2 * q + 1], 0xDD));
#pragma GCC unroll 16
    for (int r = 0; r < 2; r++)
        w[r] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * r], u[2 * r + 1], 0x44),
                             _mm512_shuffle_ps(u[2 * r], u[2 * r + 1], 0xEE));
    __m512 z = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88),
                             _mm512_shuffle_ps(w[0], w[1], 0xDD));
    float lanes[16];
    _mm512_storeu_ps(lanes, z);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        out[i] = lanes[4 * (i & 3) + (i >> 2)];
}

/* One tile: out[i·NR + j] = Σ_k x_i[k]·w_j[k] for i < MR, j < NR, k < K. x rows are f32 (BF16:
 * permuted, padded with zeros to a multiple of 32); w rows in dtype dt. MR, NR and dt are
 * constants at every call site, so the loops unroll and the accumulators live in registers. */
TGT_AVX512 static inline __attribute__((always_inline)) void
mt_tile(const float *const *xr, const char *const *wr, lr_dtype dt, int64_t K, int MR, int NR,
        ptrdiff_t pf, float *out)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int a = 0; a < 16; a++)
        acc[a] = _mm512_setzero_ps();
    int64_t k = 0;
    if (dt == LR_DT_BF16) {
        const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
        for (; k < K; k += 32) {
            __mmask32 m = K - k >= 32 ? 0xffffffffu : (__mmask32)((1u << (K - k)) - 1);
            __m512 xe[4], xo[4];
        #pragma GCC unroll 16
            for (int i = 0; i < MR; i++) {
                xe[i] = _mm512_loadu_ps(xr[i] + k);
                xo[i] = _mm512_loadu_ps(xr[i] + k + 16);
            }
        #pragma GCC unroll 16
            for (int j = 0; j < NR; j++) {
                if (pf) _mm_prefetch(wr[j] + 2 * k + pf, _MM_HINT_T0);
                __m512i wv = _mm512_maskz_loadu_epi16(m, wr[j] + 2 * k);
                __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16));
                __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(wv, hi));
            #pragma GCC unroll 16
                for (int i = 0; i < MR; i++) {
                    acc[i * NR + j] = _mm512_fmadd_ps(xe[i], we, acc[i * NR + j]);
                    acc[i * NR + j] = _mm512_fmadd_ps(xo[i], wo, acc[i * NR + j]);
                }
            }
        }
    } else {
        for (; k < K; k += 16) {
            __mmask16 m = K - k >= 16 ? 0xffff : (__mmask16)((1u << (K - k)) - 1);
            __m512 xv[4];
        #pragma GCC unroll 16
            for (int i = 0; i < MR; i++)
                xv[i] = _mm512_maskz_loadu_ps(m, xr[i] + k);
        #pragma GCC unroll 16
            for (int j = 0; j < NR; j++) {
                if (pf) _mm_prefetch(wr[j] + (dt == LR_DT_F32 ? 4 : 2) * k + pf, _MM_HINT_T0);
                __m512 wv = dt == LR_DT_F32
                                ? _mm512_maskz_loadu_ps(m, (const float *)wr[j] + k)
                                : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, wr[j] + 2 * k));
            #pragma GCC unroll 16
                for (int i = 0; i < MR; i++)
                    acc[i * NR + j] = _mm512_fmadd_ps(xv[i], wv, acc[i * NR + j]);
            }
        }
    }
    red16(acc, out);
}

/* The tile shapes: MR activation rows × NR weight rows. T < 4 uses one group of T rows with
 * more weight rows per tile (1×16, 2×8, 3×5: more independent loads in flight); otherwise 4×4
 * tiles and a last group of T mod 4 rows (MR 1..3 × 4). */
#define MT_TILE_FN(DT, MR, NR)                                                                   \
    TGT_AVX512 static void mt_##DT##_##MR##x##NR(const float *const *xr, const char *const *wr, \
                                                 int64_t K, ptrdiff_t pf, float *out)          \
    {                                                                                          \
        mt_tile(xr, wr, LR_DT_##DT, K, MR, NR, pf, out);                                       \
    }
#define MT_TILE_SET(DT)                                                                          \
    MT_TILE_FN(DT, 1, 16) MT_TILE_FN(DT, 2, 8) MT_TILE_FN(DT, 3, 5) MT_TILE_FN(DT, 1, 4)         \
    MT_TILE_FN(DT, 2, 4) MT_TILE_FN(DT, 3, 4) MT_TILE_FN(DT, 4, 4)
MT_TILE_SET(F32)
MT_TILE_SET(F16)
MT_TILE_SET(BF16)

typedef void (*mt_fn)(const float *const *xr, const char *const *wr, int64_t K, ptrdiff_t pf,
                      float *out);

/* The tile function for mr rows (1..4) of a call whose groups are g rows (g = T when T < 4,
 * else 4), and its NR. */
static mt_fn mt_pick(lr_dtype dt, int g, int mr, int *nr)
{
#define MT_ROW(DT)                                                                               \
    {mt_##DT##_1x16, mt_##DT##_2x8, mt_##DT##_3x5, mt_##DT##_1x4, mt_##DT##_2x4, mt_##DT##_3x4, \
     mt_##DT##_4x4}
    static const mt_fn tab[3][7] = {MT_ROW(F32), MT_ROW(F16), MT_ROW(BF16)};
#undef MT_ROW
    int d = dt == LR_DT_F32 ? 0 : dt == LR_DT_F16 ? 1 : 2;
    if (g < 4) {
        static const int nrs[3] = {16, 8, 5};
        *nr = nrs[mr - 1];
        return tab[d][mr - 1];
    }
    *nr = 4;
    return tab[d][3 + mr - 1];
}

/* ---- AVX-512, packed weights: the kernel of kern_mat_pack'ed matrices ----
 * W is stored in tiles of PK_ROWS = 48 rows, each k-major (the 48 values of column k, or of the
 * column pair k, k+1 for BF16, side by side), so a tile is one contiguous stream and the kernel
 * needs no horizontal sums: for a group of up to PK_MR activation rows,
 *   acc[t][v] += x_t[k] · W[48·tile + 16·v .. +16][k]   for k = 0, 1, 2 … in order (v < 3),
 * the activation a broadcast operand of the FMA. Each output is one running sum over k in
 * order, the same sequence of FMAs whatever the group, tile, thread or T: bitwise
 * batch-invariant. Per k the loop does 3 W loads for 3·MR FMAs (vs. the dot-product tiles'
 * loads of both operands plus a lane reduction per tile). */
#define PK_ROWS KERN_PACK_ROWS
#define PK_MR 8 /* activation rows per group: 24 accumulators + 6 W registers */

/* Bytes of one packed tile of W (K columns). */
static size_t pk_tile_bytes(lr_dtype dt, int64_t K)
{
    if (dt == LR_DT_F32) return (size_t)K * PK_ROWS * 4;
    if (dt == LR_DT_F16) return (size_t)K * PK_ROWS * 2;
    return (size_t)((K + 1) / 2 * 2) * PK_ROWS * 2;
}

/* acc[t·3 + v] += x_t[k] · w[v] for t < MR, v < 3: one column k of a tile. */
TGT_AVX512 static inline __attribute__((always_inline)) void
pk_col(__m512 *acc, const float *const *xr, int64_t k, const __m512 *w, int MR)
{
#pragma GCC unroll 8
    for (int t = 0; t < MR; t++) {
        __m512 xb = _mm512_set1_ps(xr[t][k]);
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++)
            acc[3 * t + v] = _mm512_fmadd_ps(xb, w[v], acc[3 * t + v]);
    }
}

/* acc[t·3 + v] over one tile for MR activation rows xr[t]; pf: bytes ahead to prefetch
 * (0: none). out[t][48] gets the sums. */
TGT_AVX512 static inline __attribute__((always_inline)) void
pk_tile(const float *const *xr, const char *w, lr_dtype dt, int64_t K, int MR, ptrdiff_t pf,
        float *out)
{
    __m512 acc[3 * PK_MR];
#pragma GCC unroll 24
    for (int a = 0; a < 3 * MR; a++)
        acc[a] = _mm512_setzero_ps();
    if (dt == LR_DT_BF16) {
        const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
        int64_t k = 0;
        for (; k + 2 <= K; k += 2, w += 192) {
            if (pf) {
                _mm_prefetch(w + pf, _MM_HINT_T0);
                _mm_prefetch(w + pf + 64, _MM_HINT_T0);
                _mm_prefetch(w + pf + 128, _MM_HINT_T0);
            }
            __m512 we[3], wo[3];
#pragma GCC unroll 3
            for (int v = 0; v < 3; v++) {
                __m512i wv = _mm512_loadu_si512(w + 64 * v);
                we[v] = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16));
                wo[v] = _mm512_castsi512_ps(_mm512_and_si512(wv, hi));
            }
            pk_col(acc, xr, k, we, MR);
            pk_col(acc, xr, k + 1, wo, MR);
        }
        if (k < K) { /* odd K: the last column, its pair partner is padding */
            __m512 we[3];
#pragma GCC unroll 3
            for (int v = 0; v < 3; v++)
                we[v] = _mm512_castsi512_ps(
                    _mm512_slli_epi32(_mm512_loadu_si512(w + 64 * v), 16));
            pk_col(acc, xr, k, we, MR);
        }
    } else {
        const size_t step = dt == LR_DT_F32 ? 192 : 96;
        for (int64_t k = 0; k < K; k++, w += step) {
            if (pf) {
                _mm_prefetch(w + pf, _MM_HINT_T0);
                if (dt == LR_DT_F32) {
                    _mm_prefetch(w + pf + 64, _MM_HINT_T0);
                    _mm_prefetch(w + pf + 128, _MM_HINT_T0);
                } else if (k & 1) {
                    _mm_prefetch(w + pf + 64, _MM_HINT_T0);
                }
            }
            __m512 wv[3];
#pragma GCC unroll 3
            for (int v = 0; v < 3; v++)
                wv[v] = dt == LR_DT_F32
                            ? _mm512_loadu_ps((const float *)w + 16 * v)
                            : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 32 * v)));
            pk_col(acc, xr, k, wv, MR);
        }
    }
#pragma GCC unroll 24
    for (int a = 0; a < 3 * MR; a++)
        _mm512_storeu_ps(out + 16 * a, acc[a]);
}

#define PK_FN(DT, MR)                                                                           \
    TGT_AVX512 static void pk_##DT##_##MR(const float *const *xr, const char *w, int64_t K,    \
                                          ptrdiff_t pf, float *out)                            \
    {                                                                                          \
        pk_tile(xr, w, LR_DT_##DT, K, MR, pf, out);                                            \
    }
#define PK_SET(DT)                                                                               \
    PK_FN(DT, 1) PK_FN(DT, 2) PK_FN(DT, 3) PK_FN(DT, 4) PK_FN(DT, 5) PK_FN(DT, 6) PK_FN(DT, 7)  \
        PK_FN(DT, 8)
PK_SET(F32)
PK_SET(F16)
PK_SET(BF16)

typedef void (*pk_fn)(const float *const *xr, const char *w, int64_t K, ptrdiff_t pf,
                      float *out);

static pk_fn pk_pick(lr_dtype dt, int mr)
{
#define PK_ROW(DT)                                                                               \
    {pk_##DT##_1, pk_##DT##_2, pk_##DT##_3, pk_##DT##_4, pk_##DT##_5, pk_##DT##_6, pk_##DT##_7, \
     pk_##DT##_8}
    static const pk_fn tab[3][PK_MR] = {PK_ROW(F32), PK_ROW(F16), PK_ROW(BF16)};
#undef PK_ROW
    return tab[dt == LR_DT_F32 ? 0 : dt == LR_DT_F16 ? 1 : 2][mr - 1];
}

typedef struct mt_job {
    float *y;
    int ldy;
    const float *x; /* activations (BF16: permuted, row stride ldx = K rounded up to 32) */
    int ldx;
    int T;
    const lr_mat *W;
    int g;          /* rows per group: T when T < 4, else 4 */
    int tb, nb;     /* chunk = tb activation rows × nb weight rows */
    int n_nb;       /* weight-row blocks */
    kern_extra ex;       /* kern_matmul_ex's work (ex.n = 0: none); see mt_task for the order */
    struct mt_slice *sl; /* T <= 16: one contiguous slice of tiles per thread (else NULL) */
    int n_sl;
    int64_t n_tiles;     /* T <= 16: tiles of nr weight rows */
    /* kern_matmul_group (packed, T <= 16): n_g matrices; tiles [g_tile0[i], g_tile0[i+1]) of
     * the slices' index space are g_W[i]'s, written to g_y[i] (row stride g_ldy[i]). */
    int n_g;
    const lr_mat *g_W[KERN_GROUP_MAX];
    float *g_y[KERN_GROUP_MAX];
    int g_ldy[KERN_GROUP_MAX];
    int64_t g_tile0[KERN_GROUP_MAX + 1];
} mt_job;

/* A thread's slice of a decode matmul: tiles [front, back) still to do, packed as
 * front | back << 32 in one word so the owner (taking from the front) and a thread that has
 * finished its own slice (taking from the back) claim tiles by compare-and-swap. One cache line
 * each, so owners do not share a line. */
typedef struct mt_slice {
    _Alignas(64) uint64_t fb;
} mt_slice;

#define MT_MAX_SLICES 64

/* One tile of a chunk: activation rows [t, t + mr) × weight rows [o, o + nr) (fewer at the
 * block's end: the unused slots repeat the last real row and their sums are dropped). pf: prefetch
 * the next tile's rows while streaming this one (0: W is in cache already). */
static void mt_one(const mt_job *j, int64_t o, int64_t o1, int t, int t1, int nr, size_t rowb,
                   int pf)
{
    /* pf: 1 prefetch the tile after this one, -1 the one before, 0 none */
    const lr_mat *W = j->W;
    const char *wr[16];
    int nreal = o1 - o < nr ? (int)(o1 - o) : nr;
    for (int q = 0; q < nr; q++)
        wr[q] = (const char *)W->data + (size_t)(o + (q < nreal ? q : nreal - 1)) * rowb;
    int mr = t1 - t < j->g ? t1 - t : j->g, tnr;
    mt_fn fn = mt_pick(W->dtype, j->g, mr, &tnr);
    const float *xr[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < mr; i++)
        xr[i] = j->x + (size_t)(t + i) * (size_t)j->ldx;
    float out[16];
    fn(xr, wr, W->cols, (ptrdiff_t)pf * (ptrdiff_t)((size_t)nr * rowb), out);
    for (int i = 0; i < mr; i++)
        for (int q = 0; q < nreal; q++)
            j->y[(size_t)(t + i) * (size_t)j->ldy + (size_t)(o + q)] = out[i * tnr + q];
}

/* Chunk c: activation rows [t0, t1) × weight rows [o0, o1). The first pass over the weight rows
 * streams them from memory and prefetches ahead; later passes find them in cache. */
/* Claim one tile of slice s: from the front (the owner, streaming forward) or the back (a
 * thread whose own slice is done). Returns the tile or -1 when the slice is empty. */
static int64_t mt_claim(mt_slice *s, int back)
{
    uint64_t v = __atomic_load_n(&s->fb, __ATOMIC_ACQUIRE);
    for (;;) {
        uint32_t f = (uint32_t)v, b = (uint32_t)(v >> 32);
        if (f >= b) return -1;
        uint64_t nv = back ? ((uint64_t)(b - 1) << 32) | f : v + 1;
        if (__atomic_compare_exchange_n(&s->fb, &v, nv, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return back ? (int64_t)b - 1 : (int64_t)f;
    }
}

/* How far ahead the first group's pass over a packed tile prefetches W: a few KiB, so the
 * lines arrive just before the FMAs want them, the prefetch running on into the next tile at
 * the end (tiles are stored back to back). Measured against prefetching the next tile's
 * matching line (a tile, 110-295 KB, ahead): 30 layers' matmuls at T = 8 in 11.4-12.9 ms vs
 * 13.4-14.4, T = 16 17.1-18.5 vs 19.0-19.6, T = 1 unchanged — the lines fetched a tile ahead
 * had left L1 again before use, and the L1 misses they held limited the loads in flight.
 * 4 KiB rather than 2 for BF16 tiles and for runs of 8 or more rows, measured step against
 * alternate step in one process (30 layers, SmolLM-135M shape, 2 threads): 8 rows F32 3.5 %
 * faster, BF16 4-5 %; 16 rows 1.6-2.5 %; one BF16 row 1-2 %; but one F32 row 2-3 % slower
 * (8 KiB: 3-4 % slower there). Rows 2-7 keep 2 KiB for F32 (not measured). */
static int pk_pf_ahead(const lr_mat *W, int rows)
{
    return W->dtype == LR_DT_BF16 || rows >= 8 ? 4096 : 2048;
}

/* Packed W: activation rows [t0, t1) × tile `tile` (48 rows), in groups of PK_MR; pf: the first
 * group prefetches pk_pf_ahead bytes ahead (0: none, W is in cache already); -1 (a thread
 * stealing tiles from the back of a slice) also fetches the start of the tile before this one,
 * the next it will take, which the forward prefetch never reaches. */
static void pk_rows(const mt_job *j, const lr_mat *W, float *y, int ldy, int64_t tile, int t0,
                    int t1, int pf)
{
    size_t tb = pk_tile_bytes(W->dtype, W->cols);
    const char *w = (const char *)W->data + (size_t)tile * tb;
    int ahead = pk_pf_ahead(W, t1 - t0);
    if (pf < 0 && tile > 0)
        for (int b = 0; b < ahead; b += 64)
            _mm_prefetch(w - tb + b, _MM_HINT_T0);
    int64_t o = tile * PK_ROWS, n = W->rows - o < PK_ROWS ? W->rows - o : PK_ROWS;
    float out[PK_MR * PK_ROWS];
    for (int t = t0; t < t1; t += PK_MR) {
        int mr = t1 - t < PK_MR ? t1 - t : PK_MR;
        const float *xr[PK_MR];
        for (int i = 0; i < mr; i++)
            xr[i] = j->x + (size_t)(t + i) * (size_t)j->ldx;
        pk_pick(W->dtype, mr)(xr, w, W->cols, t == t0 && pf ? ahead : 0, out);
        for (int i = 0; i < mr; i++)
            memcpy(y + (size_t)(t + i) * (size_t)ldy + (size_t)o, out + i * PK_ROWS,
                   sizeof(float) * (size_t)n);
    }
}

/* All activation rows × weight rows [o, o + nr) of tile `tile`; pf as in mt_one. */
static void mt_tile_rows(const mt_job *j, int64_t tile, int nr, size_t rowb, int pf)
{
    if (j->n_g) {
        int i = 0;
        while (tile >= j->g_tile0[i + 1])
            i++;
        pk_rows(j, j->g_W[i], j->g_y[i], j->g_ldy[i], tile - j->g_tile0[i], 0, j->T, pf);
        return;
    }
    if (j->W->packed) {
        pk_rows(j, j->W, j->y, j->ldy, tile, 0, j->T, pf);
        return;
    }
    int64_t o = tile * nr, o1 = o + nr;
    if (o1 > j->W->rows) o1 = j->W->rows;
    for (int t = 0; t < j->T; t += j->g)
        mt_one(j, o, o1, t, j->T, nr, rowb, t == 0 ? pf : 0);
}

/* Decode (T <= 16): chunk c is slice c. Its tiles are contiguous rows of W, so one thread
 * streams them front to back with its prefetch running ahead across the whole slice (measured:
 * slicing each matmul 8 ways per thread instead cost 25-40 % of decode, a prefetch-less start
 * per chunk). A thread done with its slice then takes the other slices' last tiles, so a
 * thread that is slow to wake or is preempted delays the matmul by little. */
static void mt_slice_task(const mt_job *j, int c, int nr, size_t rowb)
{
    int64_t tile;
    while ((tile = mt_claim(&j->sl[c], 0)) >= 0)
        mt_tile_rows(j, tile, nr, rowb, 1);
    for (int d = 1; d < j->n_sl; d++) {
        mt_slice *s = &j->sl[(c + d) % j->n_sl];
        while ((tile = mt_claim(s, 1)) >= 0)
            mt_tile_rows(j, tile, nr, rowb, -1);
    }
}

/* Chunk c. Decode (slices): chunk 0 is slice 0, chunks 1..ex.n are ex's, then slices 1.. — so
 * the first thread streams W while the next one runs the extra work (adapter matrices: memory
 * bound, where the T = 8-16 tiles are bound by the FMAs), then takes its slice and steals; a
 * lone piece no longer waits for the tiles and then runs with the other thread idle (measured:
 * one adapter 95.6-97.3 % of base vs 90.5-95.2 %, 16 different adapters 618-622 vs 552-619
 * tok/s, same session). Prefill: ex's chunks come first, then the tile blocks. */
static void mt_task(void *ctx, int c, int nc)
{
    (void)nc;
    const mt_job *j = ctx;
    int e = j->sl ? (c == 0 ? -1 : c - 1) : c;
    if (e >= 0 && e < j->ex.n) {
        j->ex.fn(j->ex.ctx, e, j->ex.n);
        return;
    }
    if (!j->sl || c > 0) c -= j->ex.n;
    const lr_mat *W = j->W;
    size_t rowb = (size_t)W->cols * (W->dtype == LR_DT_F32 ? 4 : 2);
    int nr = PK_ROWS;
    if (!W->packed) mt_pick(W->dtype, j->g, j->g, &nr);
    if (j->sl) {
        mt_slice_task(j, c, nr, rowb);
        return;
    }
    int64_t o0 = (int64_t)(c % j->n_nb) * j->nb, o1 = o0 + j->nb;
    int t0 = (c / j->n_nb) * j->tb, t1 = t0 + j->tb;
    if (o1 > W->rows) o1 = W->rows;
    if (t1 > j->T) t1 = j->T;
    if (W->packed) { /* a tile (≤ 48 · K values) stays in L2 while the groups pass */
        for (int64_t o = o0; o < o1; o += PK_ROWS)
            pk_rows(j, W, j->y, j->ldy, o / PK_ROWS, t0, t1, 1);
        return;
    }
    /* a tile's weight rows stay in L1 while every group of activation rows passes */
    for (int64_t o = o0; o < o1; o += nr)
        for (int t = t0; t < t1; t += j->g)
            mt_one(j, o, o1, t, t1, nr, rowb, t == t0);
}

/* BF16 activations, permuted per block of 32 values: evens first, then odds, zero padded. */
typedef struct mt_perm {
    float *dst;
    int ldd;
    const float *x;
    int ldx;
    int64_t K;
    int T;
} mt_perm;

static void mt_perm_task(void *ctx, int c, int nc)
{
    const mt_perm *p = ctx;
    int t0 = (int)((int64_t)p->T * c / nc), t1 = (int)((int64_t)p->T * (c + 1) / nc);
    for (int t = t0; t < t1; t++) {
        const float *s = p->x + (size_t)t * (size_t)p->ldx;
        float *d = p->dst + (size_t)t * (size_t)p->ldd;
        for (int64_t b = 0; b < p->ldd; b += 32)
            for (int l = 0; l < 16; l++) {
                d[b + l] = b + 2 * l < p->K ? s[b + 2 * l] : 0.0f;
                d[b + 16 + l] = b + 2 * l + 1 < p->K ? s[b + 2 * l + 1] : 0.0f;
            }
    }
}

/* y[t0..t0+T) = x·Wᵀ with the tiled kernel; x already in the layout W's dtype wants. */
/* Decode: every activation row in every tile; n_tiles tiles in one slice per thread. */
static void mt_run_slices(kern_pool *p, mt_job *j, int64_t n_tiles)
{
    mt_slice sl[MT_MAX_SLICES];
    int n_sl = kern_pool_threads(p);
    if (n_sl > MT_MAX_SLICES) n_sl = MT_MAX_SLICES;
    if (n_sl > n_tiles) n_sl = (int)n_tiles;
    for (int s = 0; s < n_sl; s++) {
        uint64_t f = (uint64_t)(n_tiles * s / n_sl), b = (uint64_t)(n_tiles * (s + 1) / n_sl);
        __atomic_store_n(&sl[s].fb, f | b << 32, __ATOMIC_RELAXED);
    }
    j->sl = sl;
    j->n_sl = n_sl;
    j->n_tiles = n_tiles;
    kern_pool_run_chunks(p, mt_task, j, n_sl + j->ex.n);
}

static void mt_run(kern_pool *p, float *y, int ldy, const float *x, int ldx, int T,
                   const lr_mat *W, const kern_extra *ex)
{
    static const kern_extra none = {0};
    mt_job j = {y, ldy, x, ldx, T, W, T < 4 ? T : 4, 0, 0, 0, ex ? *ex : none, NULL, 0, 0, 0,
                {NULL}, {NULL}, {0}, {0}};
    int nr = PK_ROWS;
    if (!W->packed) mt_pick(W->dtype, j.g, j.g, &nr);
    if (T <= 16) {
        mt_run_slices(p, &j, (W->rows + nr - 1) / nr);
        return;
    }
    /* prefill: chunks of MT_TB activation rows × MT_NB weight rows */
    j.tb = MT_TB;
    int n_tb = (T + MT_TB - 1) / MT_TB;
    j.nb = (MT_NB + nr - 1) / nr * nr;
    j.n_nb = (int)((W->rows + j.nb - 1) / j.nb);
    kern_pool_run_chunks(p, mt_task, &j, j.ex.n + n_tb * j.n_nb);
}

static void mt_matmul(kern_pool *p, float *y, int ldy, const float *x, int ldx, int T,
                      const lr_mat *W, float *scratch, const kern_extra *ex)
{
    if (W->dtype != LR_DT_BF16 || W->packed) {
        mt_run(p, y, ldy, x, ldx, T, W, ex);
        return;
    }
    LR_ASSERT(scratch != NULL);
    int ldd = (int)((W->cols + 31) / 32 * 32);
    int blk = (int)(kern_matmul_scratch_floats(W->cols) / (size_t)ldd);
    LR_ASSERT(blk >= 1);
    for (int t0 = 0; t0 < T; t0 += blk) {
        int n = T - t0 < blk ? T - t0 : blk;
        mt_perm pm = {scratch, ldd, x + (size_t)t0 * (size_t)ldx, ldx, W->cols, n};
        int nc = n < 2 * kern_pool_threads(p) ? n : 2 * kern_pool_threads(p);
        kern_pool_run_chunks(p, mt_perm_task, &pm, nc);
        mt_run(p, y + (size_t)t0 * (size_t)ldy, ldy, scratch, ldd, n, W, t0 == 0 ? ex : NULL);
    }
}

size_t kern_matmul_scratch_floats(int64_t cols)
{
    return (size_t)KERN_PANEL_ROWS * (size_t)cols;
}

/* A packed W on an ISA below AVX-512 (kern_set_isa after the model was packed): plain loops,
 * each output one running sum over k in order like the AVX-512 kernel. */
static void pk_scalar_task(void *ctx, int c, int nc)
{
    const mm_job *j = ctx;
    int64_t o0, o1;
    kern_slice(j->W->rows, c, nc, &o0, &o1);
    for (int t = 0; t < j->T; t++)
        for (int64_t o = o0; o < o1; o++) {
            const float *x = j->x + (size_t)t * (size_t)j->ldx;
            float acc = 0;
            for (int64_t k = 0; k < j->W->cols; k++)
                acc = fmaf(x[k], pk_value(j->W, o, k), acc);
            j->y[(size_t)t * (size_t)j->ldy + (size_t)o] = acc;
        }
}

void kern_matmul(kern_pool *p, float *y, int ldy, const float *x, int ldx, int T, const lr_mat *W,
                 float *scratch)
{
    if (T <= 0 || W->rows == 0) return;
    if (kern_get_isa() == KERN_ISA_AVX512) {
        mt_matmul(p, y, ldy, x, ldx, T, W, scratch, NULL);
        return;
    }
    if (W->packed) {
        mm_job pj = {y, ldy, x, ldx, T, W, scratch, 0, 0, 0};
        kern_pool_run_chunks(p, pk_scalar_task, &pj, mm_chunks(p, W->rows));
        return;
    }
    mm_job j = {y, ldy, x, ldx, T, W, scratch, 0, 0, 0};
    if (T <= KERN_DIRECT_T) {
        /* Few rows (decode): one pass over W with dot products. sgemm would first pack all of W
         * (measured: 82% of a decode step in sgemm_incopy), costing more than the products. */
        kern_pool_run_chunks(p, mm_direct_task, &j, mm_chunks(p, W->rows));
        return;
    }
    /* Chunks of at least 64 rows of W: each sgemm call packs x again, which costs about what
     * 1/(2·rows) of its products cost. F32 runs over all of W at once; F16/BF16 a panel of
     * KERN_PANEL_ROWS rows at a time (the scratch holds one converted panel). */
    int64_t span = W->dtype == LR_DT_F32 ? W->rows : KERN_PANEL_ROWS;
    LR_ASSERT(W->dtype == LR_DT_F32 || scratch != NULL);
    for (int64_t r0 = 0; r0 < W->rows; r0 += span) {
        j.r0 = r0;
        j.nr = W->rows - r0 < span ? W->rows - r0 : span;
        int nc = 4 * kern_pool_threads(p);
        if (nc > j.nr / 64) nc = (int)(j.nr / 64);
        if (nc < 1) nc = 1;
        j.chunk = (j.nr + nc - 1) / nc;
        kern_pool_run_chunks(p, mm_sgemm_task, &j, (int)((j.nr + j.chunk - 1) / j.chunk));
    }
}

void kern_matmul_ex(kern_pool *p, float *y, int ldy, const float *x, int ldx, int T,
                    const lr_mat *W, float *scratch, const kern_extra *ex)
{
    if (ex && ex->n > 0 && T > 0 && W->rows > 0 && kern_get_isa() == KERN_ISA_AVX512) {
        mt_matmul(p, y, ldy, x, ldx, T, W, scratch, ex);
        return;
    }
    kern_matmul(p, y, ldy, x, ldx, T, W, scratch);
    if (ex) kern_pool_run_chunks(p, ex->fn, ex->ctx, ex->n);
}

void kern_matmul_group(kern_pool *p, int n, const lr_mat *const *W, float *const *y,
                       const int *ldy, const float *x, int ldx, int T, float *scratch,
                       const kern_extra *ex)
{
    LR_ASSERT(n >= 1 && n <= KERN_GROUP_MAX);
    int one = n == 1 || T > 16 || T <= 0 || kern_get_isa() != KERN_ISA_AVX512;
    for (int i = 0; i < n && !one; i++)
        one = !W[i]->packed || W[i]->rows == 0 || W[i]->cols != W[0]->cols;
    if (one) {
        kern_matmul_ex(p, y[0], ldy[0], x, ldx, T, W[0], scratch, ex);
        for (int i = 1; i < n; i++)
            kern_matmul(p, y[i], ldy[i], x, ldx, T, W[i], scratch);
        return;
    }
    static const kern_extra none = {0};
    mt_job j = {y[0], ldy[0], x, ldx, T, W[0], 0, 0, 0, 0, ex ? *ex : none, NULL, 0, 0, n,
                {NULL}, {NULL}, {0}, {0}};
    for (int i = 0; i < n; i++) {
        j.g_W[i] = W[i];
        j.g_y[i] = y[i];
        j.g_ldy[i] = ldy[i];
        j.g_tile0[i + 1] = j.g_tile0[i] + (W[i]->rows + PK_ROWS - 1) / PK_ROWS;
    }
    mt_run_slices(p, &j, j.g_tile0[n]);
}
