/* check_sampler.c — core/sampler against a naive double-precision reference written here.
 *
 * The reference (ref_dist) applies the penalties, temperature, top_k, top_p and min_p with a full
 * sort in double and returns the final distribution. smp_sample is then checked by sampling:
 * a token outside the reference support must never appear (exact boundary check), and the
 * histogram must pass a chi-square test at a fixed seed with a bound a wrong transform fails by
 * orders of magnitude. The generator spec (splitmix64 → xoshiro256**, one 53-bit double per call)
 * is checked against an independent implementation of the published algorithm.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"

/* ---- helpers -------------------------------------------------------------------------------- */

/* For loops that check thousands of values: Check's ck_assert records a mark point (a write to
 * the parent process) on every call, which would dominate the run time. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                    \
    } while (0)

static smp_params plain(double T)
{
    smp_params p = {.temperature = (float)T,
                    .top_p = 1,
                    .top_k = 0,
                    .min_p = 0,
                    .repetition_penalty = 1,
                    .presence_penalty = 0,
                    .frequency_penalty = 0,
                    .seed = 1234};
    return p;
}

/* Test-data generator (not the sampler's): xorshift64*. */
static uint64_t trng_state = 88172645463325252ull;
static uint64_t trng(void)
{
    trng_state ^= trng_state >> 12;
    trng_state ^= trng_state << 25;
    trng_state ^= trng_state >> 27;
    return trng_state * 2685821657736338717ull;
}
static double trng_unif(void)
{
    return (double)(trng() >> 11) * 0x1.0p-53;
}
static double trng_gauss(void)
{
    double u1 = trng_unif(), u2 = trng_unif();
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

/* A sequence with its context: prompt ids and generated ids (accepted in order). */
typedef struct ctx {
    const int32_t *prompt;
    int n_prompt;
    const int32_t *gen;
    int n_gen;
} ctx;

static smp_seq *make_seq(const smp_params *p, int V, const ctx *c)
{
    smp_seq *s = NULL;
    ck_assert_int_eq(smp_seq_create(p, V, &s), 0);
    ck_assert_ptr_nonnull(s);
    if (c) {
        smp_seq_add_prompt(s, c->prompt, c->n_prompt);
        for (int i = 0; i < c->n_gen; i++)
            smp_seq_accept(s, c->gen[i]);
    }
    return s;
}

static float *make_scratch(int V)
{
    float *sc = malloc(smp_scratch_floats(V) * sizeof(float));
    ck_assert_ptr_nonnull(sc);
    return sc;
}

/* counts[V] of n draws from one sequence (no accept between draws, so the state is fixed). */
static void draw_counts(const float *logits, int V, const smp_params *p, const ctx *c, int n,
                        long *counts)
{
    smp_seq *s = make_seq(p, V, c);
    float *sc = make_scratch(V);
    memset(counts, 0, sizeof(long) * (size_t)V);
    for (int i = 0; i < n; i++) {
        int32_t id = smp_sample(s, logits, sc);
        REQUIRE(id >= 0 && id < V, "smp_sample returned %d, vocab %d", id, V);
        counts[id]++;
    }
    free(sc);
    smp_seq_destroy(s);
}

/* ---- the reference --------------------------------------------------------------------------- */

/* Penalised logits in double, NaN → −inf. */
static void ref_penalise(const float *logits, int V, const smp_params *p, const ctx *c, double *out)
{
    for (int i = 0; i < V; i++)
        out[i] = isnan(logits[i]) ? -INFINITY : (double)logits[i];
    if (!c) return;
    char *seen = calloc((size_t)V, 1);
    long *cnt = calloc((size_t)V, sizeof(long));
    for (int i = 0; i < c->n_prompt; i++)
        if (c->prompt[i] >= 0 && c->prompt[i] < V) seen[c->prompt[i]] = 1;
    for (int i = 0; i < c->n_gen; i++)
        if (c->gen[i] >= 0 && c->gen[i] < V) {
            seen[c->gen[i]] = 1;
            cnt[c->gen[i]]++;
        }
    for (int i = 0; i < V; i++) {
        if (seen[i] && isfinite(out[i]))
            out[i] = out[i] < 0 ? out[i] * p->repetition_penalty : out[i] / p->repetition_penalty;
        if (cnt[i] && isfinite(out[i]))
            out[i] -= cnt[i] * (double)p->frequency_penalty + p->presence_penalty;
    }
    free(seen);
    free(cnt);
}

static const double *sort_z;
static int cmp_desc(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_z[i] > sort_z[j]) return -1;
    if (sort_z[i] < sort_z[j]) return 1;
    return i < j ? -1 : (i > j);
}

/* The final distribution prob[V]. Returns the smallest relative margin of any filter boundary (how
 * close the input sits to a top_k / top_p / min_p decision), so callers can skip inputs where
 * float-vs-double rounding could legitimately flip the decision. */
static double ref_dist(const float *logits, int V, const smp_params *p, const ctx *c, double *prob)
{
    double *z = malloc(sizeof(double) * (size_t)V), *w = malloc(sizeof(double) * (size_t)V);
    int *ord = malloc(sizeof(int) * (size_t)V);
    ref_penalise(logits, V, p, c, z);
    double m = -INFINITY;
    int best = 0;
    for (int i = 0; i < V; i++)
        if (z[i] > m) {
            m = z[i];
            best = i;
        }
    for (int i = 0; i < V; i++)
        prob[i] = 0;
    double margin = INFINITY;
    if (p->temperature == 0 || m == -INFINITY) {
        prob[best] = 1;
        goto out;
    }
    for (int i = 0; i < V; i++) {
        if (m == INFINITY)
            z[i] = z[i] == INFINITY ? 0 : -INFINITY;
        else
            z[i] = (z[i] - m) / p->temperature;
        ord[i] = i;
    }
    sort_z = z;
    qsort(ord, (size_t)V, sizeof(int), cmp_desc);
    int K = V;
    if (p->top_k > 0 && p->top_k < V) {
        double vk = z[ord[p->top_k - 1]];
        K = p->top_k;
        while (K < V && z[ord[K]] == vk)
            K++;
        if (K < V && z[ord[K]] > -INFINITY)
            margin = fmin(margin, (vk - z[ord[K]]) / (fabs(vk) + 1));
    }
    double Z = 0;
    for (int j = 0; j < K; j++) {
        w[j] = exp(z[ord[j]]);
        Z += w[j];
    }
    if (p->top_p < 1) {
        double cum = 0;
        int L = K;
        for (int j = 0; j < K; j++) {
            cum += w[j];
            margin = fmin(margin, fabs(cum / Z - p->top_p));
            if (cum >= p->top_p * Z) {
                L = j + 1;
                break;
            }
        }
        K = L;
    }
    if (p->min_p > 0) {
        int L = K;
        for (int j = 0; j < K; j++) {
            margin = fmin(margin, fabs(w[j] / w[0] - p->min_p));
            if (w[j] < p->min_p * w[0]) {
                L = j;
                break;
            }
        }
        K = L;
    }
    double S = 0;
    for (int j = 0; j < K; j++)
        S += w[j];
    for (int j = 0; j < K; j++)
        prob[ord[j]] = w[j] / S;
out:
    free(z);
    free(w);
    free(ord);
    return margin;
}

/* Wilson–Hilferty approximation of the chi-square quantile for df degrees of freedom at the upper
 * tail whose standard-normal quantile is zq. */
static double chi2_crit(int df, double zq)
{
    double a = 2.0 / (9.0 * df);
    double t = 1 - a + zq * sqrt(a);
    return df * t * t * t;
}

/* Compare counts (n draws) with prob: a token with probability 0 must never appear; then Pearson's
 * chi-square with bins of expected count < 5 merged. Fails the test when it exceeds the bound at
 * upper-tail normal quantile zq (3.719 ≈ α 1e-4). Returns the statistic. */
static double check_counts(const long *counts, const double *prob, int V, long n, double zq,
                           const char *what)
{
    double chi2 = 0, mexp = 0, mobs = 0;
    int bins = 0;
    for (int i = 0; i < V; i++) {
        if (prob[i] == 0) {
            REQUIRE(counts[i] == 0,
                    "%s: id %d has reference probability 0 but was drawn %ld "
                    "times",
                    what, i, counts[i]);
            continue;
        }
        double ex = prob[i] * (double)n;
        if (ex < 5) {
            mexp += ex;
            mobs += (double)counts[i];
            continue;
        }
        chi2 += (counts[i] - ex) * (counts[i] - ex) / ex;
        bins++;
    }
    if (mexp > 0) {
        chi2 += (mobs - mexp) * (mobs - mexp) / mexp;
        bins++;
    }
    if (bins >= 2) {
        double crit = chi2_crit(bins - 1, zq);
        ck_assert_msg(chi2 < crit, "%s: chi-square %.2f >= %.2f (df %d)", what, chi2, crit,
                      bins - 1);
    }
    return chi2;
}

/* Sample n times and check against the reference, at α ≈ 1e-4. */
static void check_against_ref(const float *logits, int V, const smp_params *p, const ctx *c, long n,
                              const char *what)
{
    double *prob = malloc(sizeof(double) * (size_t)V);
    long *counts = malloc(sizeof(long) * (size_t)V);
    ref_dist(logits, V, p, c, prob);
    draw_counts(logits, V, p, c, (int)n, counts);
    check_counts(counts, prob, V, n, 3.719, what);
    free(prob);
    free(counts);
}

static const float L8[8] = {1.0f, 2.5f, -0.5f, 0.3f, 2.0f, -1.5f, 0.9f, 1.7f};

/* ---- rng ------------------------------------------------------------------------------------ */

/* Independent splitmix64 / xoshiro256** from the published description. */
static uint64_t ref_sm(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t ref_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}
static uint64_t ref_xo(uint64_t s[4])
{
    const uint64_t r = ref_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ref_rotl(s[3], 45);
    return r;
}

START_TEST(test_rng_spec)
{
    /* splitmix64 known first output for seed 0 (from the reference implementation's tests). */
    uint64_t x = 0;
    ck_assert_uint_eq(ref_sm(&x), 0xe220a8397b1dcdafull);

    /* Two tokens with probabilities q, 1−q: with one uniform u per call, id 0 is drawn iff
     * u < q (ids walked in order). This pins the seeding, one draw per call and 53-bit u. */
    const float lg[2] = {0.0f, -0.4f};
    const double q = 1 / (1 + exp(-0.4));
    for (uint64_t seed = 0; seed < 5; seed++) {
        smp_params p = plain(1);
        p.seed = seed * 0x1234567ull;
        smp_seq *s = make_seq(&p, 2, NULL);
        float *sc = make_scratch(2);
        uint64_t st[4], sm = p.seed;
        for (int i = 0; i < 4; i++)
            st[i] = ref_sm(&sm);
        for (int i = 0; i < 2000; i++) {
            double u = (double)(ref_xo(st) >> 11) * 0x1.0p-53;
            int32_t id = smp_sample(s, lg, sc);
            if (fabs(u - q) < 1e-6) continue;
            REQUIRE(id == (u < q ? 0 : 1), "seed %llu draw %d: u=%.9f q=%.9f got id %d",
                    (unsigned long long)p.seed, i, u, q, id);
        }
        free(sc);
        smp_seq_destroy(s);
    }
}
END_TEST

START_TEST(test_rng_one_draw_filtered)
{
    /* The filtered paths may walk their kept tokens in any order, but with two tokens left the
     * choice must still be a threshold on the call's single u: id 0 iff u < q for every draw, or
     * id 0 iff u ≥ 1 − q for every draw. A path that drew twice, or skipped, would match neither.
     */
    const float lg[3] = {0.0f, -0.4f, -INFINITY};
    const double q = 1 / (1 + exp(-0.4));
    smp_params ps[4] = {plain(1), plain(1), plain(1), plain(1)};
    ps[0].top_k = 2;
    ps[1].top_p = 0.999f;
    ps[2].min_p = 0.01f;
    ps[3].top_k = 2, ps[3].top_p = 0.999f, ps[3].min_p = 0.01f;
    for (int c = 0; c < 4; c++) {
        ps[c].seed = 777 + (uint64_t)c;
        smp_seq *s = make_seq(&ps[c], 3, NULL);
        float *sc = make_scratch(3);
        uint64_t st[4], sm = ps[c].seed;
        for (int i = 0; i < 4; i++)
            st[i] = ref_sm(&sm);
        int match_lo = 0, match_hi = 0, used = 0;
        for (int i = 0; i < 2000; i++) {
            double u = (double)(ref_xo(st) >> 11) * 0x1.0p-53;
            int32_t id = smp_sample(s, lg, sc);
            if (fabs(u - q) < 1e-6 || fabs(u - (1 - q)) < 1e-6) continue;
            used++;
            match_lo += id == (u < q ? 0 : 1);
            match_hi += id == (u >= 1 - q ? 0 : 1);
        }
        ck_assert_msg(match_lo == used || match_hi == used, "case %d: %d/%d/%d", c, match_lo,
                      match_hi, used);
        free(sc);
        smp_seq_destroy(s);
    }
}
END_TEST

START_TEST(test_determinism)
{
    enum { V = 1000, N = 300 };
    float *lg = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++)
        lg[i] = (float)(0.3 * trng_gauss());
    smp_params p = plain(1);
    p.top_p = 0.9f;
    p.top_k = 500;
    float *sc = make_scratch(V);
    int32_t a[N], b[N], c[N];
    /* Same seed → same sequence, even when another sequence is sampled in between (same scratch).
     */
    smp_seq *s1 = make_seq(&p, V, NULL);
    for (int i = 0; i < N; i++)
        a[i] = smp_sample(s1, lg, sc);
    smp_seq_destroy(s1);
    smp_params p2 = p;
    p2.seed = 99;
    s1 = make_seq(&p, V, NULL);
    smp_seq *s2 = make_seq(&p2, V, NULL);
    for (int i = 0; i < N; i++) {
        c[i] = smp_sample(s2, lg, sc);
        b[i] = smp_sample(s1, lg, sc);
    }
    ck_assert_mem_eq(a, b, sizeof a);
    /* Different seeds differ (300 draws over ~450 plausible tokens: equal by chance is absurd). */
    int same = 0;
    for (int i = 0; i < N; i++)
        same += a[i] == c[i];
    ck_assert_int_lt(same, N / 4);
    smp_seq_destroy(s1);
    smp_seq_destroy(s2);
    free(sc);
    free(lg);
}
END_TEST

/* ---- greedy --------------------------------------------------------------------------------- */

static int32_t sample_once(const float *lg, int V, const smp_params *p, const ctx *c)
{
    smp_seq *s = make_seq(p, V, c);
    float *sc = make_scratch(V);
    int32_t id = smp_sample(s, lg, sc);
    free(sc);
    smp_seq_destroy(s);
    return id;
}

START_TEST(test_greedy_ties)
{
    smp_params g = plain(0);
    const float t1[10] = {0, 1, 2, 5, 1, 0, 3, 5, 5, -1};
    ck_assert_int_eq(sample_once(t1, 10, &g, NULL), 3);
    const float t2[2] = {-0.0f, 0.0f};
    ck_assert_int_eq(sample_once(t2, 2, &g, NULL), 0);
    const float t3[4] = {NAN, 1, NAN, 1};
    ck_assert_int_eq(sample_once(t3, 4, &g, NULL), 1);
    const float t4[5] = {1, INFINITY, 3, INFINITY, NAN};
    ck_assert_int_eq(sample_once(t4, 5, &g, NULL), 1);
    const float t5[3] = {NAN, NAN, NAN};
    ck_assert_int_eq(sample_once(t5, 3, &g, NULL), 0);
    const float t6[4] = {NAN, -INFINITY, -INFINITY, NAN};
    ck_assert_int_eq(sample_once(t6, 4, &g, NULL), 1);
    /* A tiny top_p is greedy, ties included (lower id first in the order); k = 1 is greedy
     * without ties, and with ties keeps exactly the tied maxima (HF / vLLM keep ties). */
    const float t7[6] = {0, 1, 2, 4, 1, 3.9f};
    int seen[10] = {0};
    for (uint64_t seed = 0; seed < 60; seed++) {
        smp_params p = plain(1.3);
        p.seed = seed;
        p.top_k = 1;
        ck_assert_int_eq(sample_once(t7, 6, &p, NULL), 3);
        int32_t id = sample_once(t1, 10, &p, NULL);
        ck_assert(id == 3 || id == 7 || id == 8);
        seen[id]++;
        p.top_k = 0;
        p.top_p = 1e-6f;
        ck_assert_int_eq(sample_once(t1, 10, &p, NULL), 3);
        ck_assert_int_eq(sample_once(t7, 6, &p, NULL), 3);
    }
    ck_assert(seen[3] > 5 && seen[7] > 5 && seen[8] > 5);
}
END_TEST

START_TEST(test_greedy_penalised_random)
{
    /* Random logits, contexts and penalties: greedy must pick the reference argmax. */
    enum { V = 300 };
    float lg[V];
    double pen[V];
    int32_t prompt[40], gen[40];
    int checked = 0;
    for (int it = 0; it < 400; it++) {
        for (int i = 0; i < V; i++)
            lg[i] = (float)(2 * trng_gauss());
        int np = (int)(trng() % 40), ng = (int)(trng() % 40);
        /* Bias the context toward the top of the distribution so penalties matter. */
        for (int i = 0; i < np; i++)
            prompt[i] = (int32_t)(trng() % 2 ? trng() % V : trng() % 10);
        for (int i = 0; i < ng; i++)
            gen[i] = (int32_t)(trng() % 2 ? trng() % V : trng() % 10);
        for (int i = 0; i < 10; i++)
            lg[i] += 4;
        smp_params p = plain(0);
        p.repetition_penalty = (float)(0.5 + 1.5 * trng_unif());
        p.presence_penalty = (float)(4 * trng_unif() - 2);
        p.frequency_penalty = (float)(4 * trng_unif() - 2);
        ctx c = {prompt, np, gen, ng};
        ref_penalise(lg, V, &p, &c, pen);
        int b = 0;
        for (int i = 1; i < V; i++)
            if (pen[i] > pen[b]) b = i;
        double second = -INFINITY;
        for (int i = 0; i < V; i++)
            if (i != b && pen[i] > second) second = pen[i];
        if (pen[b] - second < 1e-4) continue;
        ck_assert_int_eq(sample_once(lg, V, &p, &c), b);
        checked++;
    }
    ck_assert_int_gt(checked, 350);
}
END_TEST

/* ---- penalties ------------------------------------------------------------------------------ */

START_TEST(test_penalty_rules)
{
    smp_params g = plain(0);
    /* HF repetition rule: negative scores are multiplied, positive ones divided. */
    g.repetition_penalty = 1.5f;
    const int32_t t0 = 0;
    ctx pr = {&t0, 1, NULL, 0};
    const float neg[2] = {-1.0f, -1.2f}; /* −1·1.5 = −1.5 < −1.2 */
    ck_assert_int_eq(sample_once(neg, 2, &g, &pr), 1);
    const float pos[2] = {2.0f, 1.5f}; /* 2/1.5 = 1.33 < 1.5 */
    ck_assert_int_eq(sample_once(pos, 2, &g, &pr), 1);
    const float big[2] = {2.0f, 1.2f}; /* 1.33 > 1.2 */
    ck_assert_int_eq(sample_once(big, 2, &g, &pr), 0);

    /* Presence / frequency count generated tokens only, never the prompt. */
    smp_params q = plain(0);
    q.presence_penalty = 5;
    const float lg[3] = {0.0f, 1.0f, 0.5f};
    ctx prompt_only = {(const int32_t[]){1, 1, 1}, 3, NULL, 0};
    ck_assert_int_eq(sample_once(lg, 3, &q, &prompt_only), 1);
    ctx generated = {NULL, 0, (const int32_t[]){1}, 1};
    ck_assert_int_eq(sample_once(lg, 3, &q, &generated), 2);
    /* Frequency scales with the count: 1 − 3·0.2 = 0.4 < 0.5, while 1 − 2·0.2 = 0.6 > 0.5. */
    smp_params f = plain(0);
    f.frequency_penalty = 0.2f;
    ctx three = {NULL, 0, (const int32_t[]){1, 1, 1}, 3};
    ctx two = {NULL, 0, (const int32_t[]){1, 1}, 2};
    ck_assert_int_eq(sample_once(lg, 3, &f, &three), 2);
    ck_assert_int_eq(sample_once(lg, 3, &f, &two), 1);

    /* Hostile ids are ignored, not a crash. */
    smp_params h = plain(0);
    h.repetition_penalty = 2;
    h.frequency_penalty = 1;
    ctx bad = {(const int32_t[]){-1, 3, 1 << 30, INT32_MIN}, 4, (const int32_t[]){-5, 3, 99}, 3};
    ck_assert_int_eq(sample_once(lg, 3, &h, &bad), 1);
}
END_TEST

START_TEST(test_penalty_distribution)
{
    smp_params p = plain(1);
    p.repetition_penalty = 1.3f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.4f;
    ctx c = {(const int32_t[]){1, 2, 5}, 3, (const int32_t[]){4, 4, 2, 7}, 4};
    check_against_ref(L8, 8, &p, &c, 40000, "penalties T=1");
    p.temperature = 0.6f;
    p.repetition_penalty = 0.7f; /* < 1 favours repeats */
    check_against_ref(L8, 8, &p, &c, 40000, "penalties T=0.6 rep 0.7");
}
END_TEST

/* ---- temperature and the plain distribution -------------------------------------------------- */

START_TEST(test_temperature)
{
    const double temps[] = {1.0, 0.7, 2.5, 0.2};
    for (size_t t = 0; t < sizeof temps / sizeof temps[0]; t++) {
        smp_params p = plain(temps[t]);
        p.seed = 7 + t;
        char what[64];
        snprintf(what, sizeof what, "temperature %.1f", temps[t]);
        check_against_ref(L8, 8, &p, NULL, 40000, what);
    }
    /* top_p = 1, min_p = 0, top_k ≥ vocab are all "off": the same sequence as plain sampling. */
    smp_params a = plain(1), b = plain(1);
    b.top_k = 8;
    smp_params c = plain(1);
    c.top_k = 1000;
    float *sc = make_scratch(8);
    smp_seq *sa = make_seq(&a, 8, NULL), *sb = make_seq(&b, 8, NULL), *scq = make_seq(&c, 8, NULL);
    for (int i = 0; i < 500; i++) {
        int32_t x = smp_sample(sa, L8, sc);
        REQUIRE(smp_sample(sb, L8, sc) == x, "top_k = vocab differs from off at draw %d", i);
        REQUIRE(smp_sample(scq, L8, sc) == x, "top_k > vocab differs from off at draw %d", i);
    }
    smp_seq_destroy(sa);
    smp_seq_destroy(sb);
    smp_seq_destroy(scq);
    free(sc);
    /* A very small temperature must not overflow into NaN: it is (nearly) greedy. */
    smp_params tiny = plain(1e-30);
    for (uint64_t seed = 0; seed < 20; seed++) {
        tiny.seed = seed;
        ck_assert_int_eq(sample_once(L8, 8, &tiny, NULL), 1);
    }
}
END_TEST

/* ---- top_k / top_p / min_p ------------------------------------------------------------------- */

START_TEST(test_top_k)
{
    smp_params p = plain(1);
    p.top_k = 3;
    check_against_ref(L8, 8, &p, NULL, 40000, "top_k 3");
    p.top_k = 7;
    p.temperature = 1.7f;
    check_against_ref(L8, 8, &p, NULL, 40000, "top_k 7");
    /* Ties at the k-th value are all kept (HF / vLLM: drop only scores < the k-th). */
    const float tie[6] = {3, 2, 2, 2, 1, 0};
    p = plain(1);
    p.top_k = 2;
    double prob[6];
    ref_dist(tie, 6, &p, NULL, prob);
    ck_assert(prob[3] > 0 && prob[4] == 0);
    check_against_ref(tie, 6, &p, NULL, 40000, "top_k ties");
}
END_TEST

START_TEST(test_top_p)
{
    smp_params p = plain(1);
    p.top_p = 0.6f;
    check_against_ref(L8, 8, &p, NULL, 40000, "top_p 0.6");
    p.top_p = 0.95f;
    p.temperature = 0.8f;
    check_against_ref(L8, 8, &p, NULL, 40000, "top_p 0.95");
    p = plain(1);
    p.top_p = 1;
    check_against_ref(L8, 8, &p, NULL, 40000, "top_p 1");
    /* Ties ordered by lower id: ids 1, 2, 3 tie; a mass needing two of them keeps 1 and 2. */
    const float tie[6] = {0, 2, 2, 2, -1, -1};
    double w2 = exp(2), Z = exp(0) + 3 * w2 + 2 * exp(-1);
    p = plain(1);
    p.top_p = (float)(1.5 * w2 / Z);
    double prob[6];
    ref_dist(tie, 6, &p, NULL, prob);
    ck_assert(prob[1] > 0 && prob[2] > 0 && prob[3] == 0);
    check_against_ref(tie, 6, &p, NULL, 40000, "top_p ties");
}
END_TEST

START_TEST(test_min_p)
{
    smp_params p = plain(1);
    p.min_p = 0.2f;
    check_against_ref(L8, 8, &p, NULL, 40000, "min_p 0.2");
    p.temperature = 0.5f;
    check_against_ref(L8, 8, &p, NULL, 40000, "min_p 0.2 T 0.5");
    /* min_p removing all but one. */
    const float one[5] = {0, 5, 0.1f, 4, -2};
    p = plain(1);
    p.min_p = 0.5f; /* e^{−1} = 0.37 < 0.5 */
    for (uint64_t seed = 0; seed < 100; seed++) {
        p.seed = seed;
        ck_assert_int_eq(sample_once(one, 5, &p, NULL), 1);
    }
    /* All three filters together, on top_k's set. */
    p = plain(0.9);
    p.top_k = 6;
    p.top_p = 0.8f;
    p.min_p = 0.1f;
    check_against_ref(L8, 8, &p, NULL, 40000, "top_k+top_p+min_p");
}
END_TEST

START_TEST(test_top_p_boundaries)
{
    /* 100 distinct logits, slowly decaying, ids shuffled: for each L, a top_p whose mass falls
     * halfway into the L-th best token must keep exactly the L best — every one of them drawn,
     * nothing else. More than 16 candidates, so the mass-steered selection really partitions. */
    enum { V = 100, N = 1500 };
    float lg[V];
    int perm[V];
    for (int i = 0; i < V; i++)
        perm[i] = i;
    for (int i = V - 1; i > 0; i--) {
        int j = (int)(trng() % (unsigned)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    double w[V], Z = 0;
    for (int r = 0; r < V; r++) {
        lg[perm[r]] = (float)(-0.02 * r);
        w[r] = exp((double)lg[perm[r]]);
        Z += w[r];
    }
    long counts[V];
    double cum = 0;
    for (int L = 1; L <= 70; L++) {
        /* mass of the L−1 best < p·Z < mass of the L best */
        smp_params p = plain(1);
        p.top_p = (float)((cum + 0.5 * w[L - 1]) / Z);
        cum += w[L - 1];
        p.seed = (uint64_t)L;
        draw_counts(lg, V, &p, NULL, N, counts);
        for (int r = 0; r < V; r++)
            REQUIRE((counts[perm[r]] > 0) == (r < L), "L %d: rank %d (id %d) drawn %ld times", L, r,
                    perm[r], counts[perm[r]]);
    }
}
END_TEST

START_TEST(test_top_k_large)
{
    /* k above the heap limit takes the quickselect path: nearly flat rows so every kept token is
     * drawn (a token wrongly kept or dropped shows), with ties straddling the k-th value, over
     * several shuffles and k. */
    enum { V = 2000 };
    const int ks[4] = {1025, 1100, 1500, 1990};
    float *lg = malloc(sizeof(float) * V);
    int *perm = malloc(sizeof(int) * V);
    double *prob = malloc(sizeof(double) * V);
    long *counts = malloc(sizeof(long) * V);
    for (int c = 0; c < 4; c++) {
        const int K = ks[c], N = 16 * ks[c], ties = c + 1;
        for (int i = 0; i < V; i++)
            perm[i] = i;
        for (int i = V - 1; i > 0; i--) {
            int j = (int)(trng() % (unsigned)(i + 1)), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (int r = 0; r < V; r++)
            lg[perm[r]] = (float)(-1e-4 * r);
        for (int r = K - ties; r <= K + ties && r < V; r++) /* ties around the K-th (rank K−1) */
            lg[perm[r]] = lg[perm[K - 1]];
        smp_params p = plain(1);
        p.top_k = K;
        p.seed = 31 + (uint64_t)c;
        ref_dist(lg, V, &p, NULL, prob);
        draw_counts(lg, V, &p, NULL, N, counts);
        char what[64];
        snprintf(what, sizeof what, "top_k %d of %d", K, V);
        check_counts(counts, prob, V, N, 3.719, what);
        for (int r = 0; r < V; r++)
            REQUIRE((counts[perm[r]] > 0) == (r <= K + ties), "%s: rank %d (id %d) drawn %ld times",
                    what, r, perm[r], counts[perm[r]]);
    }
    free(lg);
    free(perm);
    free(prob);
    free(counts);
}
END_TEST

START_TEST(test_random_instances)
{
    /* Many random small problems with random parameters: support exact, histogram plausible. */
    enum { VMAX = 120, N = 2000 };
    float lg[VMAX];
    double prob[VMAX];
    long counts[VMAX];
    int32_t prompt[8], gen[8];
    int done = 0;
    for (int it = 0; it < 300; it++) {
        int V = 1 + (int)(trng() % (it % 4 == 3 ? VMAX : 40));
        double scale = 0.5 + 3 * trng_unif();
        for (int i = 0; i < V; i++)
            lg[i] = (float)(scale * trng_gauss());
        if (trng() % 5 == 0) /* some exact ties */
            for (int i = 1; i < V; i += 3)
                lg[i] = lg[0];
        smp_params p = plain(0.3 + 1.5 * trng_unif());
        p.seed = trng();
        if (trng() % 2) p.top_k = 1 + (int)(trng() % (unsigned)(V + 2));
        if (trng() % 2) p.top_p = (float)(0.05 + 0.95 * trng_unif());
        if (trng() % 2) p.min_p = (float)(0.3 * trng_unif());
        ctx c = {prompt, 0, gen, 0};
        if (trng() % 2) {
            p.repetition_penalty = (float)(0.7 + trng_unif());
            p.presence_penalty = (float)(trng_unif() - 0.5);
            p.frequency_penalty = (float)(trng_unif() - 0.5);
            c.n_prompt = (int)(trng() % 8);
            c.n_gen = (int)(trng() % 8);
            for (int i = 0; i < 8; i++) {
                prompt[i] = (int32_t)(trng() % (unsigned)V);
                gen[i] = (int32_t)(trng() % (unsigned)V);
            }
        }
        if (ref_dist(lg, V, &p, &c, prob) < 1e-4)
            continue; /* too close to a filter boundary for float vs double */
        draw_counts(lg, V, &p, &c, N, counts);
        char what[96];
        snprintf(what, sizeof what, "instance %d (V %d k %d p %.3f min_p %.3f T %.2f)", it, V,
                 p.top_k, (double)p.top_p, (double)p.min_p, (double)p.temperature);
        /* α ≈ 1e-6 per instance: 300 instances must not fail a correct sampler by chance. */
        check_counts(counts, prob, V, N, 4.753, what);
        for (int i = 0; i < V; i++)
            if (prob[i] > 0.02)
                REQUIRE(counts[i] > 0, "%s: id %d (p %.3f) never drawn", what, i, prob[i]);
        done++;
    }
    ck_assert_int_gt(done, 250);
}
END_TEST

/* Large vocabularies: the partial-selection paths (select, growing sorted prefix). */
START_TEST(test_large_vocab)
{
    enum { V = 152000, N = 1200, NF = 800 };
    float *lg = malloc(sizeof(float) * V);
    double *prob = malloc(sizeof(double) * V);
    long *counts = malloc(sizeof(long) * V);
    /* 1) 30 strong tokens scattered over the ids, the rest a low noisy floor. */
    for (int i = 0; i < V; i++)
        lg[i] = (float)(0.5 * trng_gauss());
    for (int j = 0; j < 30; j++)
        lg[(int)(trng() % V)] = (float)(14 + 0.4 * j);
    smp_params p = plain(1);
    p.top_p = 0.9f;
    ck_assert(ref_dist(lg, V, &p, NULL, prob) > 1e-5);
    draw_counts(lg, V, &p, NULL, N, counts);
    check_counts(counts, prob, V, N, 3.719, "V 152000 top_p 0.9 peaked");
    p.top_p = 1;
    p.top_k = 20;
    p.min_p = 0.05f;
    ref_dist(lg, V, &p, NULL, prob);
    draw_counts(lg, V, &p, NULL, N, counts);
    check_counts(counts, prob, V, N, 3.719, "V 152000 top_k 20 min_p 0.05");
    /* 2) A flat distribution: top_p 0.5 keeps ~70k tokens (many rounds of the growing prefix). */
    for (int i = 0; i < V; i++)
        lg[i] = (float)(0.3 * trng_gauss());
    p = plain(1);
    p.top_p = 0.5f;
    p.seed = 5;
    ref_dist(lg, V, &p, NULL, prob);
    draw_counts(lg, V, &p, NULL, NF, counts);
    check_counts(counts, prob, V, NF, 3.719, "V 152000 top_p 0.5 flat");
    /* 3) top_k 5000 of the same flat row (large quickselect) with min_p. */
    p = plain(0.7);
    p.top_k = 5000;
    p.min_p = 0.45f;
    ref_dist(lg, V, &p, NULL, prob);
    draw_counts(lg, V, &p, NULL, NF, counts);
    check_counts(counts, prob, V, NF, 3.719, "V 152000 top_k 5000 min_p");
    free(lg);
    free(prob);
    free(counts);
}
END_TEST

/* ---- NaN and infinities ---------------------------------------------------------------------- */

START_TEST(test_nan_inf)
{
    /* NaN logits are never chosen, whatever the filters; the rest follows the reference (which
     * treats NaN as −inf). */
    float lg[10];
    memcpy(lg, L8, sizeof L8);
    lg[8] = NAN;
    lg[9] = NAN;
    lg[1] = NAN; /* the would-be maximum */
    smp_params ps[4] = {plain(1), plain(1), plain(1), plain(1)};
    ps[1].top_k = 3;
    ps[2].top_p = 0.7f;
    ps[3].min_p = 0.3f;
    for (int i = 0; i < 4; i++)
        check_against_ref(lg, 10, &ps[i], NULL, 20000, "NaN logits");
    /* Only one non-NaN token. */
    const float one[4] = {NAN, NAN, -3, NAN};
    for (int i = 0; i < 4; i++)
        for (uint64_t seed = 0; seed < 20; seed++) {
            ps[i].seed = seed;
            ck_assert_int_eq(sample_once(one, 4, &ps[i], NULL), 2);
        }
    /* +inf tokens share all the mass equally. */
    const float inf[6] = {1, INFINITY, 3, -INFINITY, INFINITY, NAN};
    for (int i = 0; i < 4; i++) {
        long counts[6];
        draw_counts(inf, 6, &ps[i], NULL, 20000, counts);
        ck_assert_int_eq(counts[0] + counts[2] + counts[3] + counts[5], 0);
        ck_assert(labs(counts[1] - 10000) < 400); /* 4.5 sigma; top_k 3 keeps both */
    }
    /* Everything −inf or NaN: the lowest non-NaN id, even when sampling. */
    const float none[4] = {NAN, -INFINITY, NAN, -INFINITY};
    ck_assert_int_eq(sample_once(none, 4, &ps[0], NULL), 1);
    /* Huge finite logits do not overflow the exponentials. */
    const float huge[3] = {3e38f, 2.9e38f, -3e38f};
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(sample_once(huge, 3, &ps[i], NULL), 0);
}
END_TEST

/* ---- logprobs -------------------------------------------------------------------------------- */

/* Reference log-softmax in long double, NaN → −inf. */
static void ref_logprobs(const float *lg, int V, double *out)
{
    long double m = -INFINITY, s = 0;
    int ninf = 0;
    for (int i = 0; i < V; i++)
        if (!isnan(lg[i]) && lg[i] > m) m = lg[i];
    for (int i = 0; i < V; i++)
        ninf += lg[i] == INFINITY;
    for (int i = 0; i < V; i++)
        if (!isnan(lg[i]) && isfinite(m)) s += expl((long double)lg[i] - m);
    for (int i = 0; i < V; i++) {
        if (isnan(lg[i]) || m == -INFINITY)
            out[i] = -INFINITY;
        else if (m == INFINITY)
            out[i] = lg[i] == INFINITY ? -log((double)ninf) : -INFINITY;
        else
            out[i] = (double)((long double)lg[i] - m - logl(s));
    }
}

static void check_lp_case(const float *lg, int V, int n_top)
{
    double *ref = malloc(sizeof(double) * (size_t)V);
    int *ord = malloc(sizeof(int) * (size_t)V);
    int32_t ids[64];
    float tops[64];
    ref_logprobs(lg, V, ref);
    for (int id = 0; id < V; id += 1 + V / 50) {
        float lp = smp_logprobs(lg, V, id, 0, NULL, NULL);
        if (isinf((float)ref[id])) /* includes −6e38, below the float range */
            ck_assert_msg(lp == (float)ref[id], "id %d: got %g want %g", id, (double)lp, ref[id]);
        else
            ck_assert_msg(fabs(lp - ref[id]) <= 1e-6 * (1 + fabs(ref[id])),
                          "id %d: got %.9g want %.9g", id, (double)lp, ref[id]);
    }
    /* The top list: reference order is value descending, lower id first, on float values. */
    double *rf = malloc(sizeof(double) * (size_t)V);
    for (int i = 0; i < V; i++) {
        rf[i] = (float)ref[i];
        ord[i] = i;
    }
    sort_z = rf;
    qsort(ord, (size_t)V, sizeof(int), cmp_desc);
    smp_logprobs(lg, V, 0, n_top, ids, tops);
    int n = n_top < V ? n_top : V;
    for (int j = 0; j < n; j++) {
        ck_assert_msg(ids[j] == ord[j], "top %d: id %d want %d", j, ids[j], ord[j]);
        ck_assert((double)tops[j] == rf[ord[j]] ||
                  fabs(tops[j] - rf[ord[j]]) <= 1e-6 * (1 + fabs(rf[ord[j]])));
    }
    free(rf);
    free(ord);
    free(ref);
}

START_TEST(test_logprobs)
{
    enum { V = 32000 };
    float *lg = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++)
        lg[i] = (float)(3 * trng_gauss());
    check_lp_case(lg, V, 20);
    /* −inf entries and ties. */
    for (int i = 0; i < V; i += 7)
        lg[i] = -INFINITY;
    for (int i = 5; i < V; i += 1000)
        lg[i] = 12.5f;
    check_lp_case(lg, V, 20);
    /* Huge logits: no overflow, exact differences. */
    const float huge[5] = {3e38f, 3e38f, -3e38f, FLT_MAX, 0};
    check_lp_case(huge, 5, 5);
    ck_assert(fabsf(smp_logprobs(huge, 5, 3, 0, NULL, NULL)) < 1e-6f);
    ck_assert(smp_logprobs(huge, 5, 4, 0, NULL, NULL) < -1e38f);
    /* NaN, +inf, all −inf; n_top larger than the vocabulary; ids out of range. */
    const float odd[6] = {NAN, 1, INFINITY, 2, INFINITY, -INFINITY};
    check_lp_case(odd, 6, 20);
    ck_assert(fabsf(smp_logprobs(odd, 6, 2, 0, NULL, NULL) + logf(2)) < 1e-6f);
    const float dead[3] = {-INFINITY, NAN, -INFINITY};
    check_lp_case(dead, 3, 3);
    ck_assert(smp_logprobs(odd, 6, 6, 0, NULL, NULL) == -INFINITY);
    ck_assert(smp_logprobs(odd, 6, -1, 0, NULL, NULL) == -INFINITY);
    /* The probabilities sum to 1. */
    for (int i = 0; i < V; i++)
        lg[i] = (float)(5 * trng_gauss());
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp(smp_logprobs(lg, 1000, i % 1000, 0, NULL, NULL)) * (i < 1000);
    ck_assert(fabs(sum - 1) < 1e-5);
    free(lg);
}
END_TEST

/* ---- parameters ----------------------------------------------------------------------------- */

START_TEST(test_params)
{
    lr_error e;
    smp_params ok = plain(0.7);
    ck_assert_int_eq(smp_params_check(&ok, &e), 0);
    struct {
        smp_params p;
        const char *field;
    } bad[9];
    for (int i = 0; i < 9; i++)
        bad[i].p = ok;
    bad[0].p.temperature = -1, bad[0].field = "temperature";
    bad[1].p.temperature = NAN, bad[1].field = "temperature";
    bad[2].p.top_p = 0, bad[2].field = "top_p";
    bad[3].p.top_p = 1.5f, bad[3].field = "top_p";
    bad[4].p.top_k = -2, bad[4].field = "top_k";
    bad[5].p.min_p = 1, bad[5].field = "min_p";
    bad[6].p.repetition_penalty = 0, bad[6].field = "repetition_penalty";
    bad[7].p.presence_penalty = INFINITY, bad[7].field = "presence_penalty";
    bad[8].p.frequency_penalty = NAN, bad[8].field = "frequency_penalty";
    for (int i = 0; i < 9; i++) {
        lr_error_clear(&e);
        ck_assert_int_eq(smp_params_check(&bad[i].p, &e), LR_EINVAL);
        ck_assert_msg(strstr(e.msg, bad[i].field), "message '%s' does not name %s", e.msg,
                      bad[i].field);
        smp_seq *s = (smp_seq *)&e; /* must stay untouched on error */
        ck_assert_int_eq(smp_seq_create(&bad[i].p, 10, &s), LR_EINVAL);
        ck_assert_ptr_eq(s, (smp_seq *)&e);
    }
    smp_seq *s = NULL;
    ck_assert_int_eq(smp_seq_create(&ok, 0, &s), LR_EINVAL);
    ck_assert_ptr_null(s);
    smp_seq_destroy(NULL);
    ck_assert_uint_ge(smp_scratch_floats(152000), 4 * 152000);
}
END_TEST

static Suite *sampler_suite(void)
{
    Suite *s = suite_create("sampler");
    struct {
        const char *name;
        const TTest *t;
    } cases[] = {
        {"rng", test_rng_spec},
        {"rng_filtered", test_rng_one_draw_filtered},
        {"determinism", test_determinism},
        {"greedy", test_greedy_ties},
        {"greedy_penalised", test_greedy_penalised_random},
        {"penalty_rules", test_penalty_rules},
        {"penalty_distribution", test_penalty_distribution},
        {"temperature", test_temperature},
        {"top_k", test_top_k},
        {"top_p", test_top_p},
        {"min_p", test_min_p},
        {"top_p_boundaries", test_top_p_boundaries},
        {"top_k_large", test_top_k_large},
        {"random_instances", test_random_instances},
        {"large_vocab", test_large_vocab},
        {"nan_inf", test_nan_inf},
        {"logprobs", test_logprobs},
        {"params", test_params},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 240);
        tcase_add_test(tc, cases[i].t);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sampler_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
