/* check_attn.c — the attention kernel (kern_attn) and the vector row kernels of kern_rows.c
 * (e^x, softmax, activations, RMSNorm, RoPE) against naive double-precision loops, on every ISA
 * variant the CPU supports (scalar, AVX2, AVX-512). */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kern_attn.h"
#include "kernels.h"

static const kern_isa isas[] = {KERN_ISA_SCALAR, KERN_ISA_AVX2, KERN_ISA_AVX512};
#define N_ISAS 3

static uint32_t rng_state = 777;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

/* Error of y against the exact value r in units in the last place of r (binary32); below the
 * normal range one ulp is the subnormal spacing 2^-149. */
static double ulp_err(float y, double r)
{
    if (isinf(r) || r > FLT_MAX) return isinf(y) && y > 0 ? 0 : 1e9;
    double a = fabs(r);
    int e;
    frexp(a < FLT_MIN ? FLT_MIN : a, &e);
    double ulp = ldexp(1.0, e - 24);
    return fabs((double)y - r) / ulp;
}

/* ---- e^x ---- */

START_TEST(test_exp_range)
{
    enum { N = 1 << 20 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    /* A dense grid over [-110, 95] (past both ends of the finite range), odd length so the
     * vector tails run too. */
    for (int i = 0; i < N; i++)
        x[i] = -110.0f + 205.0f * (float)i / (float)N;
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        kern_exp(y, x, N - 3);
        double worst = 0, worst_f = 0;
        int at = 0;
        for (int i = 0; i < N - 3; i++) {
            double r = exp((double)x[i]);
            double e = ulp_err(y[i], r);
            if (e > worst) worst = e, at = i;
            double ef = ulp_err(y[i], (double)expf(x[i]));
            if (ef > worst_f) worst_f = ef;
        }
        ck_assert_msg(worst <= 2.0, "isa %s: e^%.9g = %.9g, exact %.9g: %.2f ulp",
                      kern_isa_name(isas[k]), x[at], y[at], exp((double)x[at]), worst);
        ck_assert_msg(worst_f <= 2.0, "isa %s: %.2f ulp from expf", kern_isa_name(isas[k]),
                      worst_f);
        /* Also every float in [-2, 2] spaced 2^-12 apart: the range softmax and SiLU live in. */
        for (int i = 0; i < 16384; i++)
            x[i] = -2.0f + (float)i / 4096.0f;
        kern_exp(y, x, 16384);
        for (int i = 0; i < 16384; i++)
            ck_assert_msg(ulp_err(y[i], exp((double)x[i])) <= 2.0, "isa %s: e^%.9g = %.9g",
                          kern_isa_name(isas[k]), x[i], y[i]);
        for (int i = 0; i < N; i++)
            x[i] = -110.0f + 205.0f * (float)i / (float)N;
    }
    kern_set_isa(kern_cpu_isa());
    free(x);
    free(y);
}
END_TEST

START_TEST(test_exp_special)
{
    const float in[] = {-INFINITY, -1e30f, -200.0f, -104.0f, -103.9f, -103.0f, -87.5f, -87.3f,
                        -0.0f,     0.0f,   1e-30f,  -1e-30f, 1.0f,    88.72f,  88.73f,  89.5f,
                        1e30f,     INFINITY, NAN};
    enum { N = sizeof in / sizeof in[0] };
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        float y[N];
        kern_exp(y, in, N);
        for (int i = 0; i < N; i++) {
            double r = exp((double)in[i]);
            if (isnan(in[i])) {
                ck_assert_msg(isnan(y[i]), "isa %s: e^NaN = %g", kern_isa_name(isas[k]), y[i]);
                continue;
            }
            ck_assert_msg(ulp_err(y[i], r) <= 2.0, "isa %s: e^%.9g = %.9g, exact %.9g",
                          kern_isa_name(isas[k]), in[i], y[i], r);
            ck_assert_msg(!signbit(y[i]), "isa %s: e^%g negative", kern_isa_name(isas[k]), in[i]);
        }
        ck_assert_msg(y[0] == 0.0f && y[1] == 0.0f && y[2] == 0.0f, "isa %s: e^-inf not 0",
                      kern_isa_name(isas[k]));
        ck_assert_msg(y[8] == 1.0f && y[9] == 1.0f, "isa %s: e^0 = %.9g", kern_isa_name(isas[k]),
                      y[9]);
        ck_assert_msg(isinf(y[15]) && isinf(y[17]), "isa %s: e^89.5 finite",
                      kern_isa_name(isas[k]));
    }
    kern_set_isa(kern_cpu_isa());
}
END_TEST

/* ---- softmax, activations, RMSNorm, RoPE ---- */

START_TEST(test_softmax)
{
    const int ns[] = {1, 2, 15, 16, 17, 33, 100, 1000};
    float x[1000], x0[1000];
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
            int n = ns[t];
            for (int i = 0; i < n; i++)
                x0[i] = x[i] = frand() * 40 + (i % 7 == 3 ? -INFINITY : 0);
            x0[n / 2] = x[n / 2] = 3.0f; /* at least one finite entry */
            double mx = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++)
                mx = x0[i] > mx ? x0[i] : mx;
            for (int i = 0; i < n; i++)
                sum += exp((double)x0[i] - mx);
            kern_softmax(x, n);
            for (int i = 0; i < n; i++) {
                double r = exp((double)x0[i] - mx) / sum;
                /* x − max is rounded to float first: an absolute error of |x − max|·2^-24 in
                 * the exponent, i.e. that much relative error in p. */
                double tol = r == 0 ? 0 : r * (1e-6 + 6e-8 * fabs((double)x0[i] - mx)) + 1e-37;
                ck_assert_msg(fabs(x[i] - r) <= tol, "isa %s n %d: p[%d] = %.9g, "
                              "expected %.9g", kern_isa_name(isas[k]), n, i, x[i], r);
            }
        }
    }
    kern_set_isa(kern_cpu_isa());
}
END_TEST

static double ref_act(double q, lr_act a)
{
    switch (a) {
    case LR_ACT_SILU:
        return q / (1 + exp(-q));
    case LR_ACT_GELU:
        return 0.5 * q * (1 + erf(q / sqrt(2.0)));
    case LR_ACT_GELU_TANH:
        /* 0.5·q·(1 + tanh(u)) written as q·σ(2u): the same function, but 1 + tanh(u) cancels
         * to 0 in double for u < −19 while the true value is still far from binary32's
         * underflow. */
        return q / (1 + exp(-2 * sqrt(2 / M_PI) * (q + 0.044715 * q * q * q)));
    case LR_ACT_RELU:
        return q > 0 ? q : 0;
    }
    return q;
}

START_TEST(test_act)
{
    enum { N = 203 };
    float z[N], u[N], g[N];
    for (int i = 0; i < N; i++) {
        z[i] = frand() * 12;
        u[i] = frand() * 2;
    }
    z[0] = -100, z[1] = 100, z[2] = -30, z[3] = 0, z[4] = -0.0f, z[5] = 1e-20f, z[N - 1] = -88;
    const lr_act acts[] = {LR_ACT_SILU, LR_ACT_GELU, LR_ACT_GELU_TANH, LR_ACT_RELU};
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (int a = 0; a < 4; a++) {
            for (int with_u = 0; with_u < 2; with_u++) {
                memcpy(g, z, sizeof g);
                kern_act_mul(g, with_u ? u : NULL, N, acts[a]);
                for (int i = 0; i < N; i++) {
                    double r = ref_act(z[i], acts[a]) * (with_u ? u[i] : 1.0);
                    /* Relative for the sigmoid forms z·σ(a), whose fp32 argument a carries an
                     * absolute error of a few ulp of |a| (relative error in e^a); erf's
                     * 1 + erf(x) cancels for x << 0, so exact GELU has an absolute bound. */
                    double q = z[i];
                    double arg = acts[a] == LR_ACT_GELU_TANH
                                     ? 1.6 * fabs(q + 0.044715 * q * q * q)
                                     : fabs(q);
                    double tol = acts[a] == LR_ACT_GELU ? 1e-6
                                                        : (4e-7 + 1.8e-7 * arg) * fabs(r) + 1e-38;
                    ck_assert_msg(fabs(g[i] - r) <= tol && !isnan(g[i]),
                                  "isa %s act %d u %d: f(%.9g) = %.9g, expected %.9g",
                                  kern_isa_name(isas[k]), a, with_u, z[i], g[i], r);
                }
            }
        }
    }
    kern_set_isa(kern_cpu_isa());
}
END_TEST

START_TEST(test_rmsnorm_isa)
{
    const int ns[] = {1, 7, 15, 16, 17, 37, 576};
    enum { T = 3 };
    float *x = malloc(sizeof(float) * T * 576), *w = malloc(sizeof(float) * 576);
    float *out = malloc(sizeof(float) * T * 576);
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
            int n = ns[c];
            for (int i = 0; i < T * n; i++)
                x[i] = frand() * (i % 5 == 0 ? 300 : 3);
            for (int i = 0; i < n; i++)
                w[i] = frand();
            kern_rmsnorm(out, x, w, T, n, 1e-6f);
            for (int t = 0; t < T; t++) {
                double ss = 0;
                for (int j = 0; j < n; j++)
                    ss += (double)x[t * n + j] * x[t * n + j];
                double inv = 1.0 / sqrt(ss / n + 1e-6);
                for (int j = 0; j < n; j++) {
                    double r = w[j] * x[t * n + j] * inv;
                    ck_assert_msg(fabs(out[t * n + j] - r) <= 5e-7 * fabs(r) + 1e-30,
                                  "isa %s n %d: out[%d,%d] = %.9g, expected %.9g",
                                  kern_isa_name(isas[k]), n, t, j, out[t * n + j], r);
                }
            }
        }
    }
    kern_set_isa(kern_cpu_isa());
    free(x);
    free(w);
    free(out);
}
END_TEST

START_TEST(test_rope_isa)
{
    const int hds[] = {2, 6, 34, 64, 128};
    enum { NH = 3 };
    float v[NH * 128], v0[NH * 128], c[64], s[64];
    double ang[64];
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
            int hd = hds[hi];
            for (int i = 0; i < NH * hd; i++)
                v0[i] = v[i] = frand();
            for (int j = 0; j < hd / 2; j++) {
                ang[j] = 37.0 * pow(10000.0, -2.0 * j / hd);
                c[j] = (float)cos(ang[j]);
                s[j] = (float)sin(ang[j]);
            }
            kern_rope(v, NH, hd, c, s);
            for (int h = 0; h < NH; h++)
                for (int d = 0; d < hd; d++) {
                    int j = d % (hd / 2);
                    double rot = d < hd / 2 ? -v0[h * hd + d + hd / 2] : v0[h * hd + d - hd / 2];
                    double r = v0[h * hd + d] * cos(ang[j]) + rot * sin(ang[j]);
                    ck_assert_msg(fabs(v[h * hd + d] - r) < 1e-6, "isa %s hd %d: h %d d %d",
                                  kern_isa_name(isas[k]), hd, h, d);
                }
        }
    }
    kern_set_isa(kern_cpu_isa());
}
END_TEST

/* ---- attention ---- */

/* A paged cache of n_pos positions, n_kv heads of hd, blocks of `block` positions stored out of
 * order (block i at slot perm(i)) so a kernel that assumed one contiguous array would fail. */
typedef struct {
    int n_pos, n_kv, hd, block, n_blocks;
    float *k, *v; /* (n_blocks, block, n_kv * hd) each */
    const float **kb, **vb;
} cache;

static void cache_make(cache *c, int n_pos, int n_kv, int hd, int block, int kvh, float kscale)
{
    c->n_pos = n_pos, c->n_kv = n_kv, c->hd = hd, c->block = block;
    c->n_blocks = (n_pos + block - 1) / block;
    size_t per = (size_t)block * n_kv * hd;
    c->k = malloc(sizeof(float) * per * c->n_blocks);
    c->v = malloc(sizeof(float) * per * c->n_blocks);
    for (size_t i = 0; i < per * c->n_blocks; i++) {
        c->k[i] = frand() * kscale;
        c->v[i] = frand();
    }
    c->kb = malloc(sizeof(float *) * c->n_blocks);
    c->vb = malloc(sizeof(float *) * c->n_blocks);
    for (int i = 0; i < c->n_blocks; i++) {
        int slot = (i * 7 + 3) % c->n_blocks;
        if (c->n_blocks % 7 == 0) slot = c->n_blocks - 1 - i;
        c->kb[i] = c->k + per * slot + (size_t)kvh * hd;
        c->vb[i] = c->v + per * slot + (size_t)kvh * hd;
    }
}

static void cache_free(cache *c)
{
    free(c->k);
    free(c->v);
    free(c->kb);
    free(c->vb);
}

static const float *cache_at(const cache *c, const float *const *b, int pos)
{
    return b[pos / c->block] + (size_t)(pos % c->block) * c->n_kv * c->hd;
}

/* A job of nq query rows (stride ldq) at pos0, rep heads per KV head, over cache c (its head
 * size, blocks and stride); out and ldo are the caller's. */
static kern_attn_job job_on(const cache *c, const float *q, int ldq, int nq, int rep, int pos0,
                            int window)
{
    kern_attn_job j = {.q = q,
                       .ldq = ldq,
                       .nq = nq,
                       .rep = rep,
                       .hd = c->hd,
                       .pos0 = pos0,
                       .window = window,
                       .scale = 1.0f / sqrtf((float)c->hd),
                       .k_blocks = c->kb,
                       .v_blocks = c->vb,
                       .block = c->block,
                       .ld = c->n_kv * c->hd};
    return j;
}

/* Naive double attention of query row i, head g of job j into r[hd]. Returns the largest
 * Σ_x |q_x·k_x|·scale over the keys: fp32 scores carry an error of a few ulp of that, which
 * becomes relative error in the softmax weights. */
static double ref_attn(const kern_attn_job *j, const cache *c, int i, int g, double *r)
{
    double sabs = 0;
    int p = j->pos0 + i;
    int lo = j->window > 0 ? p - j->window + 1 : 0;
    if (lo < 0) lo = 0;
    const float *q = j->q + (size_t)i * j->ldq + (size_t)g * j->hd;
    double *s = malloc(sizeof(double) * (p + 1));
    double mx = -INFINITY, sum = 0;
    for (int t = lo; t <= p; t++) {
        const float *k = cache_at(c, j->k_blocks, t);
        double d = 0;
        double da = 0;
        for (int x = 0; x < j->hd; x++) {
            d += (double)q[x] * k[x];
            da += fabs((double)q[x] * k[x]);
        }
        s[t] = d * j->scale;
        if (da * j->scale > sabs) sabs = da * j->scale;
        if (s[t] > mx) mx = s[t];
    }
    for (int t = lo; t <= p; t++)
        sum += s[t] = exp(s[t] - mx);
    for (int x = 0; x < j->hd; x++)
        r[x] = 0;
    for (int t = lo; t <= p; t++) {
        const float *v = cache_at(c, j->v_blocks, t);
        for (int x = 0; x < j->hd; x++)
            r[x] += s[t] / sum * v[x];
    }
    free(s);
    return sabs;
}

/* One case: nq query rows at pos0 (plus the earlier context), rep heads per KV head, head dim
 * hd, window, cache block; queries scaled by qscale (large values make the softmax peaky and
 * the online rescaling matter). Checks every ISA against the double reference, and that running
 * the rows one at a time (decode) gives the same bits as the block (prefill). */
static void attn_case(int nq, int pos0, int rep, int hd, int window, int block, float qscale)
{
    int n_kv = 2, kvh = 1, nh = n_kv * rep;
    int ldq = nh * hd + 3, ldo = nh * hd + 5;
    cache c;
    cache_make(&c, pos0 + nq, n_kv, hd, block, kvh, 1.0f);
    float *q = malloc(sizeof(float) * (size_t)nq * ldq);
    float *out = malloc(sizeof(float) * (size_t)nq * ldo);
    float *out1 = malloc(sizeof(float) * (size_t)nq * ldo);
    for (int i = 0; i < nq * ldq; i++)
        q[i] = frand() * qscale;
    float *scr = malloc(sizeof(float) * kern_attn_scratch_floats(nq, rep, hd));
    double *r = malloc(sizeof(double) * hd);
    kern_attn_job j = job_on(&c, q + (size_t)kvh * rep * hd, ldq, nq, rep, pos0, window);
    j.out = out + (size_t)kvh * rep * hd;
    j.ldo = ldo;
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (int i = 0; i < nq * ldo; i++)
            out[i] = out1[i] = 12345.0f; /* the kernel must overwrite, not accumulate */
        j.out = out + (size_t)kvh * rep * hd;
        kern_attn(&j, scr);
        for (int i = 0; i < nq; i++)
            for (int g = 0; g < rep; g++) {
                double sabs = ref_attn(&j, &c, i, g, r);
                double tol = 2e-6 + 4 * 6e-8 * sabs;
                const float *o = j.out + (size_t)i * ldo + (size_t)g * hd;
                for (int x = 0; x < hd; x++)
                    ck_assert_msg(fabs(o[x] - r[x]) <= tol * (1 + fabs(r[x])),
                                  "isa %s nq %d pos0 %d rep %d hd %d window %d block %d: row %d "
                                  "head %d [%d] = %.9g, expected %.9g",
                                  kern_isa_name(isas[k]), nq, pos0, rep, hd, window, block, i, g,
                                  x, o[x], r[x]);
            }
        /* Other heads' columns and the row padding are untouched. */
        for (int i = 0; i < nq; i++) {
            for (int x = 0; x < kvh * rep * hd; x++)
                ck_assert(out[(size_t)i * ldo + x] == 12345.0f);
            for (int x = nh * hd; x < ldo; x++)
                ck_assert(out[(size_t)i * ldo + x] == 12345.0f);
        }
        /* Row by row, as decode would run them: right, and the same bits as in the block
         * unless the row alone takes AVX-512's decode path (few rows, hd % 16 == 0). */
        int dec_path = isas[k] == KERN_ISA_AVX512 && rep <= 8 && hd % 16 == 0 && hd <= 128;
        for (int i = 0; i < nq; i++) {
            kern_attn_job j1 = j;
            j1.q = j.q + (size_t)i * ldq;
            j1.out = out1 + (size_t)kvh * rep * hd + (size_t)i * ldo;
            j1.nq = 1;
            j1.pos0 = pos0 + i;
            kern_attn(&j1, scr);
            for (int g = 0; g < rep; g++) {
                double sabs = ref_attn(&j, &c, i, g, r);
                double tol = 2e-6 + 4 * 6e-8 * sabs;
                const float *o = j1.out + (size_t)g * hd;
                for (int x = 0; x < hd; x++)
                    ck_assert_msg(fabs(o[x] - r[x]) <= tol * (1 + fabs(r[x])),
                                  "isa %s nq %d pos0 %d rep %d hd %d window %d: row %d alone, "
                                  "head %d [%d] = %.9g, expected %.9g",
                                  kern_isa_name(isas[k]), nq, pos0, rep, hd, window, i, g, x,
                                  o[x], r[x]);
            }
            if (!dec_path || nq * rep <= 8)
                ck_assert_msg(
                    memcmp(j1.out, j.out + (size_t)i * ldo, sizeof(float) * rep * hd) == 0,
                    "isa %s nq %d pos0 %d rep %d hd %d window %d: row %d alone differs "
                    "from the block",
                    kern_isa_name(isas[k]), nq, pos0, rep, hd, window, i);
        }
    }
    kern_set_isa(kern_cpu_isa());
    free(q);
    free(out);
    free(out1);
    free(scr);
    free(r);
    cache_free(&c);
}

START_TEST(test_attn_shapes)
{
    /* nq, pos0, rep, hd, window, block */
    static const int cases[][6] = {
        {1, 0, 1, 64, 0, 16},   {1, 0, 3, 64, 0, 16},    {16, 0, 3, 64, 0, 16},
        {16, 48, 3, 64, 0, 16}, {5, 130, 3, 64, 0, 16},  {33, 70, 3, 64, 0, 16},
        {16, 0, 1, 128, 0, 16}, {7, 9, 4, 32, 0, 5},     {9, 200, 7, 6, 0, 3},
        {3, 1, 2, 2, 0, 1},     {17, 60, 5, 18, 0, 16},  {4, 63, 1, 80, 0, 64},
        {16, 100, 3, 64, 7, 16},{16, 100, 3, 64, 64, 16},{16, 100, 3, 64, 100, 16},
        {20, 5, 3, 64, 1, 16},  {12, 127, 2, 48, 65, 7}, {1, 300, 3, 64, 50, 16},
        {11, 64, 1, 1, 0, 16},  {16, 500, 3, 64, 0, 16}, {2, 64, 9, 64, 0, 16},
        /* few rows: AVX-512's decode path (keys in lanes) */
        {1, 200, 8, 128, 0, 16},{2, 77, 4, 16, 0, 3},    {1, 63, 2, 32, 10, 16},
        {1, 64, 3, 64, 0, 16},  {1, 65, 3, 64, 0, 16},   {1, 129, 1, 48, 17, 16},
        {1, 2, 8, 64, 1, 16},   {3, 250, 2, 96, 100, 7},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int *k = cases[i];
        attn_case(k[0], k[1], k[2], k[3], k[4], k[5], 2.0f);
    }
}
END_TEST

/* Scores of hundreds: e^(s − max) underflows for most keys, and a later chunk's max exceeds an
 * earlier one by far (the online rescaling takes a factor of ~0 exactly). */
START_TEST(test_attn_peaky)
{
    attn_case(16, 140, 3, 64, 0, 16, 60.0f);
    attn_case(5, 70, 2, 16, 30, 4, 200.0f);
    attn_case(1, 1000, 3, 64, 0, 16, 100.0f);
}
END_TEST

/* Split decoding: a decode row's keys in parts [bounds[q], bounds[q + 1]), each part one job
 * with key_lo / key_hi / ml, joined here in double (out = Σ e^(m_q − M)·o_q / Σ e^(m_q − M)·l_q)
 * and compared with the reference over all keys. A part wholly outside the window must come back
 * empty: m = −inf, l = 0, out 0. Only where kern_attn_splittable says so (AVX-512). */
static void attn_parts_case(int pos0, int rep, int hd, int window, int block, const int *bounds,
                            int n_parts, float qscale)
{
    int n_kv = 2, kvh = 0, nh = n_kv * rep;
    cache c;
    cache_make(&c, pos0 + 1, n_kv, hd, block, kvh, 1.0f);
    float *q = malloc(sizeof(float) * (size_t)nh * hd);
    for (int i = 0; i < nh * hd; i++)
        q[i] = frand() * qscale;
    float *part = malloc(sizeof(float) * (size_t)n_parts * rep * hd);
    float *ml = malloc(sizeof(float) * (size_t)n_parts * rep * 2);
    float *scr = malloc(sizeof(float) * kern_attn_scratch_floats(1, rep, hd));
    double *r = malloc(sizeof(double) * hd), *acc = malloc(sizeof(double) * hd);
    kern_attn_job j = job_on(&c, q, nh * hd, 1, rep, pos0, window);
    j.ldo = rep * hd;
    for (int k = 0; k < N_ISAS; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        if (!kern_attn_splittable(1, rep, hd)) {
            ck_assert(isas[k] != KERN_ISA_AVX512 || rep > 8 || hd % 16 != 0 || hd > 128);
            continue;
        }
        for (int p = 0; p < n_parts; p++) {
            kern_attn_job jp = j;
            jp.out = part + (size_t)p * rep * hd;
            jp.key_lo = bounds[p];
            jp.key_hi = bounds[p + 1];
            jp.ml = ml + (size_t)p * rep * 2;
            for (int i = 0; i < rep * hd; i++)
                jp.out[i] = 12345.0f;
            kern_attn(&jp, scr);
            int lo = window > 0 ? pos0 - window + 1 : 0;
            if (bounds[p + 1] <= lo) /* no key of this part is in the window */
                for (int g = 0; g < rep; g++) {
                    ck_assert(isinf(jp.ml[2 * g]) && jp.ml[2 * g] < 0 && jp.ml[2 * g + 1] == 0);
                    for (int x = 0; x < hd; x++)
                        ck_assert(jp.out[(size_t)g * hd + x] == 0.0f);
                }
        }
        for (int g = 0; g < rep; g++) {
            double M = -INFINITY, den = 0;
            for (int p = 0; p < n_parts; p++)
                if (ml[(p * rep + g) * 2] > M) M = ml[(p * rep + g) * 2];
            for (int x = 0; x < hd; x++)
                acc[x] = 0;
            for (int p = 0; p < n_parts; p++) {
                double m = ml[(p * rep + g) * 2];
                if (isinf(m)) continue;
                double w = exp(m - M);
                den += w * ml[(p * rep + g) * 2 + 1];
                for (int x = 0; x < hd; x++)
                    acc[x] += w * part[((size_t)p * rep + g) * hd + x];
            }
            double sabs = ref_attn(&j, &c, 0, g, r);
            double tol = 2e-6 + 4 * 6e-8 * sabs;
            for (int x = 0; x < hd; x++)
                ck_assert_msg(fabs(acc[x] / den - r[x]) <= tol * (1 + fabs(r[x])),
                              "parts: pos0 %d rep %d hd %d window %d head %d [%d] = %.9g, "
                              "expected %.9g",
                              pos0, rep, hd, window, g, x, acc[x] / den, r[x]);
        }
    }
    kern_set_isa(kern_cpu_isa());
    free(q);
    free(part);
    free(ml);
    free(scr);
    free(r);
    free(acc);
    cache_free(&c);
}

START_TEST(test_attn_parts)
{
    static const int b3[] = {0, 576, 1152, 1701};
    attn_parts_case(1700, 3, 64, 0, 16, b3, 3, 2.0f);
    attn_parts_case(1700, 3, 64, 0, 16, b3, 3, 80.0f); /* peaky: one part holds the max */
    static const int b2[] = {0, 512, 1030};
    attn_parts_case(1029, 4, 32, 0, 5, b2, 2, 2.0f);
    attn_parts_case(1029, 1, 128, 300, 16, b2, 2, 2.0f); /* part 0 wholly before the window */
    attn_parts_case(1029, 8, 16, 600, 16, b2, 2, 2.0f);  /* the window starts inside part 0 */
    static const int b1[] = {0, 3, 64, 65, 130}; /* odd bounds, a one-key part */
    attn_parts_case(129, 2, 48, 0, 7, b1, 4, 2.0f);
}
END_TEST

/* The scratch size covers the largest job it was sized for, for every ISA: run with the buffer
 * exactly that size (ASan catches an overrun). */
START_TEST(test_attn_scratch_size)
{
    for (int nq = 1; nq <= 20; nq += 3)
        for (int rep = 1; rep <= 5; rep += 2)
            attn_case(nq, 3, rep, 10, 0, 4, 1.0f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("attn");
    TCase *tc;
    tc = tcase_create("exp");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_exp_range);
    tcase_add_test(tc, test_exp_special);
    suite_add_tcase(s, tc);
    tc = tcase_create("rowwise");
    tcase_add_test(tc, test_softmax);
    tcase_add_test(tc, test_act);
    tcase_add_test(tc, test_rmsnorm_isa);
    tcase_add_test(tc, test_rope_isa);
    suite_add_tcase(s, tc);
    tc = tcase_create("attention");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_attn_shapes);
    tcase_add_test(tc, test_attn_peaky);
    tcase_add_test(tc, test_attn_parts);
    tcase_add_test(tc, test_attn_scratch_size);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
