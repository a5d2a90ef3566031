/* check_kernels.c — every kernel against a naive double-precision loop, on every ISA variant the
 * CPU supports (scalar, AVX2, AVX-512), with 1 and several threads. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"

/* Independent binary16 decoding: value = (-1)^s · 2^(e-15) · (1 + m/1024), subnormal
 * 2^-14 · m/1024. */
static double ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0)
        v = ldexp(m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static double ref_bf16(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static uint32_t rng_state = 12345;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

/* f32 → binary16 bits by round-to-nearest via the reference (search is fine for tests). */
static uint16_t to_f16(float x)
{
    /* Use the hardware-independent route: scale into the normal range and truncate, which is
     * enough to produce valid, varied half values for matmul tests. */
    uint32_t b;
    memcpy(&b, &x, 4);
    uint32_t s = (b >> 16) & 0x8000;
    int e = (int)((b >> 23) & 255) - 127 + 15;
    uint32_t m = (b >> 13) & 1023;
    if (e <= 0) return (uint16_t)s;
    if (e >= 31) return (uint16_t)(s | 0x7bff);
    return (uint16_t)(s | ((uint32_t)e << 10) | m);
}

static const kern_isa isas[] = {KERN_ISA_SCALAR, KERN_ISA_AVX2, KERN_ISA_AVX512};

START_TEST(test_f16_all_values)
{
    static uint16_t src[65536];
    static float dst[65536];
    for (int i = 0; i < 65536; i++)
        src[i] = (uint16_t)i;
    for (int k = 0; k < 3; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        kern_f16_to_f32(src + 1, dst + 1, 65535); /* odd start: unaligned source */
        dst[0] = 0;
        /* Count mismatches first: one ck_assert per value would cost a pipe write each. */
        int bad = -1;
        for (int i = 1; i < 65536 && bad < 0; i++) {
            double r = ref_f16((uint16_t)i);
            int ok =
                isnan(r) ? isnan(dst[i]) : (double)dst[i] == r && !signbit(dst[i]) == !signbit(r);
            if (!ok) bad = i;
        }
        ck_assert_msg(bad < 0, "isa %s: f16 0x%04x → %g, expected %g", kern_isa_name(isas[k]), bad,
                      bad < 0 ? 0.0 : dst[bad], bad < 0 ? 0.0 : ref_f16((uint16_t)bad));
        kern_bf16_to_f32(src + 1, dst + 1, 65535);
        for (int i = 1; i < 65536 && bad < 0; i++) {
            double r = ref_bf16((uint16_t)i);
            int ok = isnan(r) ? isnan(dst[i]) : (double)dst[i] == r;
            if (!ok) bad = i;
        }
        ck_assert_msg(bad < 0, "isa %s: bf16 0x%04x wrong", kern_isa_name(isas[k]), bad);
    }
    ck_assert_double_eq(ref_f16(0x3c00), 1.0);
    ck_assert_double_eq(ref_f16(0x7bff), 65504.0);
    kern_set_isa(kern_cpu_isa());
}
END_TEST

/* y = x·Wᵀ against a double loop over the decoded weights, for all dtypes, ISAs, thread
 * counts and T on both sides of the direct/panel switch; rows > one panel, cols not a multiple
 * of any vector width. */
START_TEST(test_matmul)
{
    enum { ROWS = 300, COLS = 70, TMAX = 200 };
    float *wf = malloc(sizeof(float) * ROWS * COLS);
    uint16_t *wh = malloc(2 * ROWS * COLS + 2);
    uint16_t *wb = malloc(2 * ROWS * COLS + 2);
    float *x = malloc(sizeof(float) * TMAX * (COLS + 3));
    float *y = malloc(sizeof(float) * TMAX * (ROWS + 5));
    float *scratch = malloc(sizeof(float) * kern_matmul_scratch_floats(COLS));
    for (int i = 0; i < ROWS * COLS; i++) {
        wf[i] = frand();
        wh[i + 1] = to_f16(frand());
        wb[i] = (uint16_t)(0x3f80 + (frand() > 0 ? 0 : 0x8000) + ((int)(fabsf(frand()) * 127)));
    }
    for (int i = 0; i < TMAX * (COLS + 3); i++)
        x[i] = frand();
    const int Ts[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 140, 200};
    const int threads[] = {1, 3};
    for (int th = 0; th < 2; th++) {
        kern_pool *pool;
        ck_assert_int_eq(kern_pool_create(threads[th], NULL, &pool), 0);
        for (int k = 0; k < 3; k++) {
            if (kern_set_isa(isas[k]) != isas[k]) continue;
            for (int dt = 0; dt < 6; dt++) {
                lr_mat W = {(lr_dtype)(dt % 3),
                            dt % 3 == 0   ? (const void *)wf
                            : dt % 3 == 1 ? (const void *)(wh + 1)
                                          : (const void *)wb,
                            ROWS, COLS, 0};
                void *pbuf = NULL;
                if (dt >= 3) { /* the same matrix packed (kern_mat_pack) */
                    pbuf = aligned_alloc(64, (kern_pack_bytes(&W) + 63) / 64 * 64);
                    lr_mat P;
                    kern_mat_pack(&W, pbuf, &P);
                    float r0[COLS], r1[COLS];
                    for (int o = 0; o < ROWS; o += 7) {
                        kern_mat_row(&W, o, r0);
                        kern_mat_row(&P, o, r1);
                        ck_assert_msg(memcmp(r0, r1, sizeof r0) == 0, "packed row %d differs", o);
                    }
                    W = P;
                }
                for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                    int T = Ts[ti];
                    memset(y, 0, sizeof(float) * TMAX * (ROWS + 5));
                    kern_matmul(pool, y, ROWS + 5, x, COLS + 3, T, &W, scratch);
                    for (int t = 0; t < T; t++)
                        for (int o = 0; o < ROWS; o++) {
                            double s = 0, a = 0;
                            for (int i = 0; i < COLS; i++) {
                                double w = dt % 3 == 0   ? wf[o * COLS + i]
                                           : dt % 3 == 1 ? ref_f16(wh[1 + o * COLS + i])
                                                         : ref_bf16(wb[o * COLS + i]);
                                s += (double)x[t * (COLS + 3) + i] * w;
                                a += fabs((double)x[t * (COLS + 3) + i] * w);
                            }
                            double got = y[t * (ROWS + 5) + o];
                            if (fabs(got - s) <= 1e-5 * (a + 1e-30)) continue;
                            ck_assert_msg(0,
                                          "dtype %d%s isa %s threads %d T %d: y[%d,%d] = %.9g, "
                                          "expected %.9g",
                                          dt % 3, dt >= 3 ? " packed" : "", kern_isa_name(isas[k]),
                                          threads[th], T, t, o, got, s);
                        }
                }
                free(pbuf);
            }
        }
        kern_pool_destroy(pool);
    }
    kern_set_isa(kern_cpu_isa());
    free(wf);
    free(wh);
    free(wb);
    free(x);
    free(y);
    free(scratch);
}
END_TEST

/* Every row gets exactly the result it gets alone, so decode steps do not depend on which other
 * sequences share the batch: for T <= KERN_DIRECT_T on every ISA, for every T with AVX-512 (its
 * tiled kernel gives each (row, output) pair the same operations whatever the tile). */
START_TEST(test_direct_batch_invariant)
{
    enum { ROWS = 37, COLS = 53, TMAX = 40 };
    float *wf = malloc(sizeof(float) * ROWS * COLS), *x = malloc(sizeof(float) * TMAX * COLS);
    uint16_t *wh = malloc(2 * ROWS * COLS);
    float *scratch = malloc(sizeof(float) * kern_matmul_scratch_floats(COLS));
    float y[TMAX * ROWS], y1[ROWS];
    for (int i = 0; i < ROWS * COLS; i++) {
        wf[i] = frand();
        wh[i] = to_f16(frand());
    }
    for (int i = 0; i < TMAX * COLS; i++)
        x[i] = frand();
    kern_pool *pool;
    ck_assert_int_eq(kern_pool_create(2, NULL, &pool), 0);
    for (int k = 0; k < 3; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (int dt = 0; dt < 6; dt++) {
            lr_mat W = {(lr_dtype)(dt % 3), dt % 3 == 0 ? (const void *)wf : (const void *)wh, ROWS,
                        COLS, 0};
            void *pbuf = NULL;
            if (dt >= 3) { /* packed: every ISA, every T (one running sum per output) */
                pbuf = aligned_alloc(64, (kern_pack_bytes(&W) + 63) / 64 * 64);
                lr_mat P;
                kern_mat_pack(&W, pbuf, &P);
                W = P;
            }
            int tmax = isas[k] == KERN_ISA_AVX512 || dt >= 3 ? TMAX : KERN_DIRECT_T;
            for (int T = 1; T <= tmax; T++) {
                kern_matmul(pool, y, ROWS, x, COLS, T, &W, scratch);
                for (int t = 0; t < T; t++) {
                    kern_matmul(pool, y1, ROWS, x + t * COLS, COLS, 1, &W, scratch);
                    ck_assert_msg(memcmp(y1, y + t * ROWS, sizeof y1) == 0,
                                  "isa %s dtype %d: row %d of a %d-row call differs from alone",
                                  kern_isa_name(isas[k]), dt, t, T);
                }
            }
            free(pbuf);
        }
    }
    kern_set_isa(kern_cpu_isa());
    kern_pool_destroy(pool);
    free(wf);
    free(wh);
    free(x);
    free(scratch);
}
END_TEST

START_TEST(test_dot)
{
    float a[131], b[131];
    uint16_t h[131], bh[131];
    for (int i = 0; i < 131; i++) {
        a[i] = frand();
        b[i] = frand();
        h[i] = to_f16(frand());
        float f = frand();
        uint32_t bits;
        memcpy(&bits, &f, 4);
        bh[i] = (uint16_t)(bits >> 16);
    }
    for (int k = 0; k < 3; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (int n = 0; n <= 131; n += 7) {
            double s = 0, sh = 0, sb = 0, sa = 0;
            for (int i = 0; i < n; i++) {
                s += (double)a[i] * b[i];
                sh += (double)a[i] * ref_f16(h[i]);
                sb += (double)a[i] * ref_bf16(bh[i]);
                sa += fabs((double)a[i] * b[i]) + fabs((double)a[i] * ref_f16(h[i])) +
                      fabs((double)a[i] * ref_bf16(bh[i]));
            }
            ck_assert(fabs(kern_dot_f32(a, b, n) - s) <= 1e-6 * (sa + 1e-30));
            ck_assert(fabs(kern_dot_f16(a, h, n) - sh) <= 1e-6 * (sa + 1e-30));
            ck_assert(fabs(kern_dot_bf16(a, bh, n) - sb) <= 1e-6 * (sa + 1e-30));
        }
    }
    kern_set_isa(kern_cpu_isa());
    /* y += b per row with a row stride, and y += x. */
    float y[3 * 5], bias[4] = {1, -2, 0.5f, 4}, x[15];
    for (int i = 0; i < 15; i++)
        y[i] = x[i] = (float)i;
    kern_add_bias(y, 5, bias, 3, 4);
    for (int t = 0; t < 3; t++)
        for (int j = 0; j < 5; j++)
            ck_assert(y[t * 5 + j] == (float)(t * 5 + j) + (j < 4 ? bias[j] : 0));
    kern_add(y, x, 15);
    for (int t = 0; t < 3; t++)
        for (int j = 0; j < 5; j++)
            ck_assert(y[t * 5 + j] == 2 * (float)(t * 5 + j) + (j < 4 ? bias[j] : 0));
    /* y += a·x in every ISA, lengths around the vector widths, against double. */
    for (int k = 0; k < 3; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (int n = 0; n <= 70; n += 1 + n / 8) {
            float yy[71], xx[71];
            double ref[71];
            for (int i = 0; i < n; i++) {
                yy[i] = frand(), xx[i] = frand();
                ref[i] = (double)yy[i] + 0.37 * (double)xx[i];
            }
            kern_axpy(yy, 0.37f, xx, n);
            for (int i = 0; i < n; i++)
                ck_assert_msg(fabs(yy[i] - ref[i]) <= 1e-6 * (fabs(ref[i]) + 1),
                              "isa %s n %d: axpy[%d] = %g, expected %g", kern_isa_name(isas[k]),
                              n, i, yy[i], ref[i]);
        }
    }
    kern_set_isa(kern_cpu_isa());
}
END_TEST

START_TEST(test_rmsnorm)
{
    enum { T = 3, N = 37 };
    float x[T * N], w[N], out[T * N];
    for (int i = 0; i < T * N; i++)
        x[i] = frand() * 3;
    for (int i = 0; i < N; i++)
        w[i] = frand();
    kern_rmsnorm(out, x, w, T, N, 1e-5f);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int j = 0; j < N; j++)
            ss += (double)x[t * N + j] * x[t * N + j];
        double inv = 1.0 / sqrt(ss / N + 1e-5);
        for (int j = 0; j < N; j++) {
            double r = w[j] * x[t * N + j] * inv;
            ck_assert_msg(fabs(out[t * N + j] - r) <= 1e-6 * (1 + fabs(r)), "rmsnorm %d %d", t, j);
        }
    }
}
END_TEST

START_TEST(test_rope)
{
    enum { NH = 3, HD = 8 };
    float v[NH * HD], v0[NH * HD], c[HD / 2], s[HD / 2];
    for (int i = 0; i < NH * HD; i++)
        v0[i] = v[i] = frand();
    double ang[HD / 2];
    for (int k = 0; k < HD / 2; k++) {
        ang[k] = 5.0 * pow(10000.0, -2.0 * k / HD);
        c[k] = (float)cos(ang[k]);
        s[k] = (float)sin(ang[k]);
    }
    kern_rope(v, NH, HD, c, s);
    /* rotate_half: out = v ⊙ [cos, cos] + [-v2, v1] ⊙ [sin, sin]. */
    for (int h = 0; h < NH; h++)
        for (int d = 0; d < HD; d++) {
            int k = d % (HD / 2);
            double rot = d < HD / 2 ? -v0[h * HD + d + HD / 2] : v0[h * HD + d - HD / 2];
            double r = v0[h * HD + d] * cos(ang[k]) + rot * sin(ang[k]);
            ck_assert_msg(fabs(v[h * HD + d] - r) < 1e-6, "rope h %d d %d", h, d);
        }
}
END_TEST

START_TEST(test_softmax_act)
{
    float x[50];
    double e[50], sum = 0;
    for (int i = 0; i < 50; i++)
        x[i] = frand() * 20;
    double mx = -1e300;
    for (int i = 0; i < 50; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < 50; i++)
        sum += e[i] = exp(x[i] - mx);
    kern_softmax(x, 50);
    for (int i = 0; i < 50; i++)
        ck_assert(fabs(x[i] - e[i] / sum) < 1e-6);
    float z[4] = {-3.5f, -0.1f, 0.7f, 4.2f}, u[4] = {1.5f, -2, 0.25f, 3};
    const lr_act acts[] = {LR_ACT_SILU, LR_ACT_GELU, LR_ACT_GELU_TANH, LR_ACT_RELU};
    for (int a = 0; a < 4; a++) {
        float g[4];
        memcpy(g, z, sizeof g);
        kern_act_mul(g, u, 4, acts[a]);
        for (int i = 0; i < 4; i++) {
            double q = z[i], r;
            if (a == 0)
                r = q / (1 + exp(-q));
            else if (a == 1)
                r = 0.5 * q * (1 + erf(q / sqrt(2.0)));
            else if (a == 2)
                r = 0.5 * q * (1 + tanh(sqrt(2 / M_PI) * (q + 0.044715 * q * q * q)));
            else
                r = q > 0 ? q : 0;
            ck_assert_msg(fabs(g[i] - r * u[i]) < 1e-5, "act %d at %g", a, q);
        }
    }
}
END_TEST

struct cover {
    int hits[64];
    int nth_seen;
};
static void cover_task(void *ctx, int ith, int nth)
{
    struct cover *c = ctx;
    __atomic_add_fetch(&c->hits[ith], 1, __ATOMIC_RELAXED);
    __atomic_store_n(&c->nth_seen, nth, __ATOMIC_RELAXED);
}

START_TEST(test_pool)
{
    kern_pool *p;
    ck_assert_int_eq(kern_pool_create(4, NULL, &p), 0);
    ck_assert_int_eq(kern_pool_threads(p), 4);
    struct cover c;
    memset(&c, 0, sizeof c);
    for (int r = 0; r < 1000; r++)
        kern_pool_run(p, cover_task, &c);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(c.hits[i], 1000);
    ck_assert_int_eq(c.hits[4], 0);
    ck_assert_int_eq(c.nth_seen, 4);
    kern_pool_destroy(p);
    kern_pool_destroy(NULL);
}
END_TEST

/* Chunked runs: every chunk exactly once per run whatever thread takes it, runs of different
 * sizes back to back (a late worker must not claim a chunk of a later run), mixed with plain
 * runs, and chunks that sleep now and then so workers fall behind. */
struct chunks {
    int hits[256];
    int nth_bad;
    int n;
};
static void chunk_task(void *ctx, int c, int nc)
{
    struct chunks *k = ctx;
    if (nc != k->n || c < 0 || c >= nc) __atomic_store_n(&k->nth_bad, 1, __ATOMIC_RELAXED);
    else __atomic_add_fetch(&k->hits[c], 1, __ATOMIC_RELAXED);
    if (c % 7 == 3 && nc % 5 == 0) usleep(50);
}

START_TEST(test_pool_chunks)
{
    int threads[] = {1, 2, 4};
    for (int ti = 0; ti < 3; ti++) {
        kern_pool *p;
        ck_assert_int_eq(kern_pool_create(threads[ti], NULL, &p), 0);
        for (int r = 0; r < 400; r++) {
            struct chunks k;
            memset(&k, 0, sizeof k);
            k.n = 1 + (r * 37) % 200;
            kern_pool_run_chunks(p, chunk_task, &k, k.n);
            ck_assert_int_eq(k.nth_bad, 0);
            for (int c = 0; c < 256; c++)
                ck_assert_msg(k.hits[c] == (c < k.n), "threads %d run %d chunk %d of %d: %d hits",
                              threads[ti], r, c, k.n, k.hits[c]);
            if (r % 10 == 0) {
                struct cover cv;
                memset(&cv, 0, sizeof cv);
                kern_pool_run(p, cover_task, &cv);
                for (int i = 0; i < threads[ti]; i++)
                    ck_assert_int_eq(cv.hits[i], 1);
            }
        }
        kern_pool_run_chunks(p, chunk_task, NULL, 0); /* nothing to do: fn never called */
        kern_pool_destroy(p);
    }
    /* No pool: the caller runs every chunk. */
    struct chunks k;
    memset(&k, 0, sizeof k);
    k.n = 9;
    kern_pool_run_chunks(NULL, chunk_task, &k, 9);
    for (int c = 0; c < 9; c++)
        ck_assert_int_eq(k.hits[c], 1);
}
END_TEST

/* kern_matmul_ex: y is bitwise kern_matmul's whatever the extra work, threads or T, and every
 * extra chunk runs exactly once. */
static void extra_task(void *ctx, int c, int nc)
{
    struct chunks *k = ctx;
    chunk_task(ctx, c, nc);
    if (c == 0 && k->n > 1) usleep(200); /* one slow piece: the other threads steal tiles */
}

START_TEST(test_matmul_ex)
{
    enum { ROWS = 1000, COLS = 96, TMAX = 40 };
    float *wf = malloc(sizeof(float) * ROWS * COLS), *x = malloc(sizeof(float) * TMAX * COLS);
    uint16_t *wb = malloc(2 * ROWS * COLS);
    float *y = malloc(sizeof(float) * TMAX * ROWS), *y1 = malloc(sizeof(float) * TMAX * ROWS);
    float *scratch = malloc(sizeof(float) * kern_matmul_scratch_floats(COLS));
    for (int i = 0; i < ROWS * COLS; i++) {
        wf[i] = frand();
        wb[i] = (uint16_t)(0x3f80 + (frand() > 0 ? 0 : 0x8000) + ((int)(fabsf(frand()) * 127)));
    }
    for (int i = 0; i < TMAX * COLS; i++)
        x[i] = frand();
    const int Ts[] = {1, 3, 8, 16, 17, 40};
    const int threads[] = {1, 2, 4};
    for (int th = 0; th < 3; th++) {
        kern_pool *pool;
        ck_assert_int_eq(kern_pool_create(threads[th], NULL, &pool), 0);
        for (int dt = 0; dt < 6; dt += 2) {
            lr_mat W = {(lr_dtype)(dt % 3), dt % 3 == 0 ? (const void *)wf : (const void *)wb, ROWS,
                        COLS, 0};
            void *pbuf = NULL;
            if (dt >= 3) {
                pbuf = aligned_alloc(64, (kern_pack_bytes(&W) + 63) / 64 * 64);
                lr_mat P;
                kern_mat_pack(&W, pbuf, &P);
                W = P;
            }
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                int T = Ts[ti];
                kern_matmul(pool, y1, ROWS, x, COLS, T, &W, scratch);
                for (int n = 0; n <= 9; n += 3) {
                    struct chunks k;
                    memset(&k, 0, sizeof k);
                    k.n = n;
                    kern_extra ex = {extra_task, &k, n};
                    memset(y, 0, sizeof(float) * TMAX * ROWS);
                    kern_matmul_ex(pool, y, ROWS, x, COLS, T, &W, scratch, &ex);
                    ck_assert_msg(memcmp(y, y1, sizeof(float) * (size_t)T * ROWS) == 0,
                                  "threads %d dtype %d T %d extra %d: y differs from kern_matmul",
                                  threads[th], dt, T, n);
                    ck_assert_int_eq(k.nth_bad, 0);
                    for (int c = 0; c < 256; c++)
                        ck_assert_msg(k.hits[c] == (c < n), "T %d: extra chunk %d ran %d times",
                                      T, c, k.hits[c]);
                }
            }
            free(pbuf);
        }
        kern_pool_destroy(pool);
    }
    free(wf);
    free(wb);
    free(x);
    free(y);
    free(y1);
    free(scratch);
}
END_TEST

/* kern_matmul_group: each matrix's y is bitwise its own kern_matmul's — packed or not (the
 * fallback), every T, thread count — and every extra chunk runs exactly once. */
START_TEST(test_matmul_group)
{
    enum { COLS = 80, TMAX = 20 };
    const int rows[3] = {150, 48, 97};
    float *w[3], *pw[3], *y[3], *y1[3];
    float *x = malloc(sizeof(float) * TMAX * COLS);
    for (int i = 0; i < TMAX * COLS; i++)
        x[i] = frand();
    lr_mat W[3], P[3];
    for (int g = 0; g < 3; g++) {
        w[g] = malloc(sizeof(float) * (size_t)rows[g] * COLS);
        for (int i = 0; i < rows[g] * COLS; i++)
            w[g][i] = frand();
        W[g] = (lr_mat){LR_DT_F32, w[g], rows[g], COLS, 0};
        pw[g] = aligned_alloc(64, (kern_pack_bytes(&W[g]) + 63) / 64 * 64);
        kern_mat_pack(&W[g], pw[g], &P[g]);
        y[g] = malloc(sizeof(float) * TMAX * (size_t)(rows[g] + 3));
        y1[g] = malloc(sizeof(float) * TMAX * (size_t)(rows[g] + 3));
    }
    const int threads[] = {1, 2, 3};
    const int Ts[] = {1, 2, 7, 8, 9, 16, 17, 20};
    for (int th = 0; th < 3; th++) {
        kern_pool *pool;
        ck_assert_int_eq(kern_pool_create(threads[th], NULL, &pool), 0);
        for (int packed = 0; packed < 2; packed++)
            for (int n = 1; n <= 3; n++)
                for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                    int T = Ts[ti], ldy[3];
                    const lr_mat *Wg[3];
                    for (int g = 0; g < n; g++) {
                        Wg[g] = packed ? &P[g] : &W[g];
                        ldy[g] = rows[g] + 3;
                        kern_matmul(pool, y1[g], ldy[g], x, COLS, T, Wg[g], NULL);
                        memset(y[g], 0, sizeof(float) * TMAX * (size_t)ldy[g]);
                    }
                    struct chunks k;
                    memset(&k, 0, sizeof k);
                    k.n = 2 * n;
                    kern_extra ex = {extra_task, &k, k.n};
                    kern_matmul_group(pool, n, Wg, y, ldy, x, COLS, T, NULL, &ex);
                    for (int g = 0; g < n; g++)
                        for (int t = 0; t < T; t++)
                            ck_assert_msg(memcmp(y[g] + t * ldy[g], y1[g] + t * ldy[g],
                                                 sizeof(float) * (size_t)rows[g]) == 0,
                                          "threads %d packed %d n %d T %d: matrix %d row %d",
                                          threads[th], packed, n, T, g, t);
                    ck_assert_int_eq(k.nth_bad, 0);
                    for (int c = 0; c < 256; c++)
                        ck_assert_int_eq(k.hits[c], c < k.n);
                }
        kern_pool_destroy(pool);
    }
    for (int g = 0; g < 3; g++) {
        free(w[g]);
        free(pw[g]);
        free(y[g]);
        free(y1[g]);
    }
    free(x);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc;
    tc = tcase_create("convert");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_f16_all_values);
    suite_add_tcase(s, tc);
    tc = tcase_create("matmul");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_matmul);
    tcase_add_test(tc, test_dot);
    tcase_add_test(tc, test_direct_batch_invariant);
    suite_add_tcase(s, tc);
    tc = tcase_create("rowwise");
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_softmax_act);
    suite_add_tcase(s, tc);
    tc = tcase_create("pool");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_pool);
    tcase_add_test(tc, test_pool_chunks);
    tcase_add_test(tc, test_matmul_ex);
    tcase_add_test(tc, test_matmul_group);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
