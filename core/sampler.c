/* sampler.c — next-token choice (penalties, temperature, top_k / top_p / min_p, one random draw)
 * and log-softmax for logprobs.
 *
 * This module sees one row of logits at a time and the per-sequence state it keeps itself: a
 * random generator and, when a penalty is on, how often each id occurred. It knows nothing of
 * batches, text or stop conditions; the engine calls it once per sequence per step.
 *
 * Cost per call is a few linear passes over the vocabulary plus, only when a filter needs an order,
 * a partial selection: tokens are packed into 64-bit keys (order-preserving bits of the scaled
 * logit, then the complemented id) so "value descending, lower id first" is plain unsigned
 * comparison with no ties. The top-k set is found by quickselect and the top-p prefix by a
 * quickselect steered by probability mass, so no call sorts anything: the tokens kept are drawn
 * from in whatever order the selection left them (the draw needs a distribution, not an order).
 * Nothing here allocates after smp_seq_create.
 */
#include "sampler.h"

#include "kernels.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* counts[id]: bit 31 = id occurred in the prompt or the output (repetition penalty);
 * bits 0..30 = times id was generated (presence / frequency), saturating. */
#define CTX_BIT 0x80000000u
#define GEN_MASK 0x7fffffffu
/* top_k up to this uses a heap during one scan (fits in L1); above it, quickselect. */
#define HEAP_K_MAX 1024

struct smp_seq {
    smp_params p;
    int vocab;
    uint64_t rng[4];  /* xoshiro256** state */
    uint32_t *counts; /* (vocab), NULL when every penalty is off */
};

/* ---- random numbers: xoshiro256** seeded through splitmix64 (Blackman & Vigna) --------------- */

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* A uniform double in [0, 1): the top 53 bits of one generator output. */
static double rng_uniform(smp_seq *s)
{
    return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

/* ---- parameters and per-sequence state ------------------------------------------------------ */

int smp_params_check(const smp_params *p, lr_error *err)
{
    if (!p) return lr_error_set(err, LR_EINVAL, "sampling parameters are missing");
    if (!isfinite(p->temperature) || p->temperature < 0)
        return lr_error_set(err, LR_EINVAL,
                            "sampling: temperature must be a finite number >= 0, got %g",
                            (double)p->temperature);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return lr_error_set(err, LR_EINVAL, "sampling: top_p must be in (0, 1], got %g",
                            (double)p->top_p);
    if (p->top_k < 0)
        return lr_error_set(err, LR_EINVAL, "sampling: top_k must be >= 0 (0 = off), got %d",
                            p->top_k);
    if (!(p->min_p >= 0 && p->min_p < 1))
        return lr_error_set(err, LR_EINVAL, "sampling: min_p must be in [0, 1), got %g",
                            (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || p->repetition_penalty <= 0)
        return lr_error_set(err, LR_EINVAL,
                            "sampling: repetition_penalty must be a finite number > 0, got %g",
                            (double)p->repetition_penalty);
    if (!isfinite(p->presence_penalty))
        return lr_error_set(err, LR_EINVAL, "sampling: presence_penalty must be finite, got %g",
                            (double)p->presence_penalty);
    if (!isfinite(p->frequency_penalty))
        return lr_error_set(err, LR_EINVAL, "sampling: frequency_penalty must be finite, got %g",
                            (double)p->frequency_penalty);
    return 0;
}

int smp_seq_create(const smp_params *p, int vocab, smp_seq **out)
{
    if (!out || vocab < 1 || smp_params_check(p, NULL) != 0) return LR_EINVAL;
    smp_seq *s = calloc(1, sizeof *s);
    if (!s) return LR_ENOMEM;
    s->p = *p;
    s->vocab = vocab;
    uint64_t sm = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64_next(&sm);
    if (p->repetition_penalty != 1.0f || p->presence_penalty != 0 || p->frequency_penalty != 0) {
        s->counts = calloc((size_t)vocab, sizeof *s->counts);
        if (!s->counts) {
            free(s);
            return LR_ENOMEM;
        }
    }
    *out = s;
    return 0;
}

void smp_seq_destroy(smp_seq *s)
{
    if (!s) return;
    free(s->counts);
    free(s);
}

void smp_seq_add_prompt(smp_seq *s, const int32_t *ids, int n)
{
    if (!s || !s->counts || !ids) return;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < s->vocab) s->counts[ids[i]] |= CTX_BIT;
}

void smp_seq_accept(smp_seq *s, int32_t id)
{
    if (!s || !s->counts || id < 0 || id >= s->vocab) return;
    uint32_t c = s->counts[id];
    if ((c & GEN_MASK) != GEN_MASK) c++;
    s->counts[id] = c | CTX_BIT;
}

/* ---- ordering keys --------------------------------------------------------------------------- */

/* Key of (v, id) such that a larger key means a larger v, or the same v and a lower id. v is never
 * NaN and never -0 here. IEEE floats order like sign-magnitude integers: flipping the sign bit of
 * non-negatives and every bit of negatives makes them order like unsigned integers. */
static inline uint64_t key_of(float v, int32_t id)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((uint64_t)b << 32) | (uint32_t) ~(uint32_t)id;
}

static inline int32_t key_id(uint64_t k)
{
    return (int32_t) ~(uint32_t)(k & 0xffffffffu);
}

static inline void swap64(uint64_t *a, uint64_t *b)
{
    uint64_t t = *a;
    *a = *b;
    *b = t;
}

static void insertion_sort_desc(uint64_t *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint64_t v = a[i];
        size_t j = i;
        while (j > 0 && a[j - 1] < v) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

/* Heapsort, descending (a min-heap whose minimum moves to the end): the O(n log n) fallback. */
static void sift_down_min(uint64_t *a, size_t n, size_t i)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && a[c + 1] < a[c]) c++;
        if (a[i] <= a[c]) return;
        swap64(&a[i], &a[c]);
        i = c;
    }
}

static void sift_up_min(uint64_t *a, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (a[parent] <= a[i]) return;
        swap64(&a[parent], &a[i]);
        i = parent;
    }
}

static void heap_sort_desc(uint64_t *a, size_t n)
{
    if (n < 2) return;
    for (size_t i = n / 2; i-- > 0;)
        sift_down_min(a, n, i);
    for (size_t end = n - 1; end > 0; end--) {
        swap64(&a[0], &a[end]);
        sift_down_min(a, end, 0);
    }
}

/* Median of a[lo], a[mid], a[hi-1] moved to a[hi-1]; returns its value. */
static uint64_t pivot_to_end(uint64_t *a, size_t lo, size_t hi)
{
    size_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (a[mid] < a[lo]) swap64(&a[mid], &a[lo]);
    if (a[last] < a[lo]) swap64(&a[last], &a[lo]);
    if (a[last] < a[mid]) swap64(&a[last], &a[mid]);
    /* now a[lo] <= a[mid] <= a[last]: the median is a[mid] */
    swap64(&a[mid], &a[last]);
    return a[last];
}

/* Partition a[lo, hi) around the median-of-three: larger keys first. Returns the pivot's final
 * position p: a[lo, p) > a[p] > a[p+1, hi) (keys are distinct). */
static size_t partition_desc(uint64_t *a, size_t lo, size_t hi)
{
    uint64_t pv = pivot_to_end(a, lo, hi);
    size_t store = lo;
    for (size_t i = lo; i + 1 < hi; i++)
        if (a[i] > pv) swap64(&a[i], &a[store++]);
    swap64(&a[store], &a[hi - 1]);
    return store;
}

static int depth_limit(size_t n)
{
    int d = 0;
    while (n > 1) {
        n >>= 1;
        d++;
    }
    return 2 * d + 4;
}

/* Reorder a[0, n) so a[0, c) holds the c largest keys (in no particular order), 0 < c < n.
 * Quickselect, expected O(n); heapsort of the remaining range if the pivots keep being bad. */
static void select_top(uint64_t *a, size_t n, size_t c)
{
    size_t lo = 0, hi = n;
    int depth = depth_limit(n);
    while (hi - lo > 16) {
        if (depth-- <= 0) {
            heap_sort_desc(a + lo, hi - lo);
            return;
        }
        size_t p = partition_desc(a, lo, hi);
        if (p == c || p + 1 == c) return;
        if (c < p)
            hi = p;
        else
            lo = p + 1;
    }
    insertion_sort_desc(a + lo, hi - lo);
}

/* top_p without a sort: the smallest L such that the L largest keys of a[0, n) carry mass
 * (e[id]) ≥ need, with those L moved to a[0, L) (in no particular order). A quickselect that
 * steers by mass instead of by count: after each partition, the boundary lies in the upper part
 * if its mass (plus everything already known to be above) reaches `need`, else below the pivot.
 * Expected O(n). Returns n if even the whole set falls short (rounding). */
static size_t select_mass(uint64_t *a, size_t n, const float *e, double need)
{
    size_t lo = 0, hi = n;
    double acc = 0; /* mass of a[0, lo), all larger than anything in [lo, hi) */
    int depth = depth_limit(n);
    while (hi - lo > 16) {
        if (depth-- <= 0) {
            heap_sort_desc(a + lo, hi - lo);
            break;
        }
        size_t p = partition_desc(a, lo, hi);
        double up = 0;
        for (size_t j = lo; j < p; j++)
            up += e[key_id(a[j])];
        if (acc + up >= need) {
            hi = p;
            continue;
        }
        acc += up + e[key_id(a[p])];
        if (acc >= need) return p + 1;
        lo = p + 1;
    }
    if (hi - lo <= 16) insertion_sort_desc(a + lo, hi - lo);
    for (size_t j = lo; j < hi; j++) {
        acc += e[key_id(a[j])];
        if (acc >= need) return j + 1;
    }
    return hi;
}

/* ---- sampling -------------------------------------------------------------------------------- */

size_t smp_scratch_floats(int vocab)
{
    /* z (vocab floats), e (vocab floats), keys (vocab uint64) + 2 floats to align the keys */
    return 4 * (size_t)(vocab > 0 ? vocab : 0) + 2;
}

/* The penalties of one id whose counts word c is non-zero, in float as HF and vLLM do. */
static inline float penalise(const smp_params *p, float v, uint32_t c)
{
    if (p->repetition_penalty != 1.0f)
        v = v < 0 ? v * p->repetition_penalty : v / p->repetition_penalty;
    uint32_t g = c & GEN_MASK;
    if (g) {
        v -= (float)g * p->frequency_penalty;
        v -= p->presence_penalty;
    }
    return v;
}

/* Draw from the masses e[id] of the ids keyed in key[0, n) (any order): the first id whose running
 * sum exceeds u·Z. Zero-mass ids are never chosen; rounding at the very end falls back to the last
 * id with mass. */
static int32_t draw_keys(const uint64_t *key, size_t n, const float *e, double u)
{
    double z = 0;
    for (size_t j = 0; j < n; j++)
        z += e[key_id(key[j])];
    double target = u * z, acc = 0;
    int32_t last = key_id(key[0]);
    for (size_t j = 0; j < n; j++) {
        int32_t id = key_id(key[j]);
        if (e[id] > 0) {
            acc += e[id];
            last = id;
            if (target < acc) return id;
        }
    }
    return last;
}

int32_t smp_sample(smp_seq *s, const float *logits, float *scratch)
{
    LR_ASSERT(s && logits && scratch);
    const smp_params *p = &s->p;
    const int V = s->vocab;
    float *z = scratch;     // (V) penalised logits, then (z - max) / temperature
    float *e = scratch + V; // (V) exp(z)
    uint64_t *key = (uint64_t *)(((uintptr_t)(scratch + 2 * (size_t)V) + 7) & ~(uintptr_t)7);
    // key: (V) ordering keys of the candidate tokens

    /* Exactly one draw per call, whatever path follows, so the n-th token of a request always
     * consumes the n-th number of its generator. */
    const double u = rng_uniform(s);

    /* Pass 1: penalties, NaN → −inf, −0 → +0; argmax with the lowest id on ties. best stays −1
     * only if every logit is NaN. */
    int32_t best = -1;
    float m = -INFINITY;
    for (int i = 0; i < V; i++) {
        float v = logits[i];
        if (isnan(v)) {
            z[i] = -INFINITY;
            continue;
        }
        if (s->counts && s->counts[i]) {
            v = penalise(p, v, s->counts[i]);
            if (isnan(v)) /* +inf minus a penalty that overflowed to +inf */
                v = -INFINITY;
        }
        v += 0.0f;
        z[i] = v;
        if (best < 0 || v > m) {
            best = i;
            m = v;
        }
    }
    if (best < 0) return 0;
    if (p->temperature == 0 || m == -INFINITY) return best;

    /* Pass 2: scale so the maximum is 0: z = (z − m) / T ≤ 0. If some logits are +inf they share
     * all the mass: they become 0 and everything else −inf. */
    const float T = p->temperature;
    if (m == INFINITY) {
        for (int i = 0; i < V; i++)
            z[i] = z[i] == INFINITY ? 0.0f : -INFINITY;
    } else {
        for (int i = 0; i < V; i++)
            z[i] = (z[i] - m) / T;
    }

    const int top_k = p->top_k > 0 && p->top_k < V ? p->top_k : 0;
    const double top_p = p->top_p;
    const double min_p = p->min_p;
    size_t n = 0; /* candidates keyed in key[0, n) */
    double zsum;  /* their total mass (top_k) or the whole vocabulary's (no top_k) */

    if (top_k > 0 && top_k <= HEAP_K_MAX) {
        /* Small k: one scan keeping a min-heap of the k best keys. Ids rise during the scan, so a
         * later token must be strictly larger than the heap minimum to get in. */
        size_t h = 0, k = (size_t)top_k;
        float hmin = -INFINITY;
        for (int i = 0; i < V; i++) {
            if (!(z[i] > -INFINITY)) continue;
            if (h < k) {
                key[h] = key_of(z[i], i);
                sift_up_min(key, h++);
                hmin = z[key_id(key[0])];
            } else if (z[i] > hmin) {
                key[0] = key_of(z[i], i);
                sift_down_min(key, k, 0);
                hmin = z[key_id(key[0])];
            }
        }
        n = h;
        if (h == k) {
            /* Ties with the k-th value stay (HF and vLLM drop only scores below the k-th); the
             * ones not in the heap have higher ids than the heap's k-th. */
            for (int i = key_id(key[0]) + 1; i < V; i++)
                if (z[i] == hmin) key[n++] = key_of(z[i], i);
        }
    }
    if (top_k > HEAP_K_MAX) {
        /* Large k: gather every token with mass and quickselect, then add the ties as above. */
        for (int i = 0; i < V; i++)
            if (z[i] > -INFINITY) key[n++] = key_of(z[i], i);
        if (n > (size_t)top_k) {
            size_t k = (size_t)top_k;
            select_top(key, n, k);
            uint64_t kth = key[0];
            for (size_t j = 1; j < k; j++)
                if (key[j] < kth) kth = key[j];
            const float vk = z[key_id(kth)];
            for (size_t j = k; j < n; j++)
                if (z[key_id(key[j])] == vk) swap64(&key[j], &key[k++]);
            n = k;
        }
    }
    if (top_k > 0) {
        zsum = 0;
        for (size_t j = 0; j < n; j++) {
            int32_t id = key_id(key[j]);
            e[id] = expf(z[id]);
            zsum += e[id];
        }
    } else {
        /* Four partial sums: a single double accumulator would make this loop wait on the
         * latency of every add. */
        double part[4] = {0, 0, 0, 0};
        int i = 0;
        for (; i + 4 <= V; i += 4)
            for (int r = 0; r < 4; r++) {
                e[i + r] = expf(z[i + r]);
                part[r] += e[i + r];
            }
        for (; i < V; i++) {
            e[i] = expf(z[i]);
            part[0] += e[i];
        }
        zsum = (part[0] + part[1]) + (part[2] + part[3]);
        if (top_p >= 1 && min_p <= 0) {
            /* Plain sampling: walk the ids in order, nothing to select; skip whole blocks of 8
             * while the running sum stays at or below u·Z. */
            double target = u * zsum, acc = 0;
            int j = 0;
            for (; j + 8 <= V; j += 8) {
                double b = ((double)e[j] + e[j + 1]) + ((double)e[j + 2] + e[j + 3]) +
                           (((double)e[j + 4] + e[j + 5]) + ((double)e[j + 6] + e[j + 7]));
                if (acc + b > target) break;
                acc += b;
            }
            for (; j < V; j++) {
                acc += e[j];
                if (target < acc) return j; /* e[j] > 0 here: acc just grew past target */
            }
            /* Rounding (block sums vs. one by one): the last id with mass is the right end. */
            for (int t = V - 1; t >= 0; t--)
                if (e[t] > 0) return t;
            return best;
        }
        /* Candidates. min_p keeps e ≥ min_p (the maximum has e = 1). For top_p, the tokens with
         * e < c, c = (1 − p)·Z/V, carry less than V·c = (1 − p)·Z together, so those with e ≥ c
         * hold at least p·Z and the top-p prefix lies among them: only they need selecting. */
        double cut = min_p;
        if (top_p < 1 && (1 - top_p) * zsum / V > cut) cut = (1 - top_p) * zsum / V;
        for (int i = 0; i < V; i++)
            if (e[i] > 0 && e[i] >= cut) key[n++] = key_of(z[i], i);
    }
    if (n == 0) /* cannot happen (the maximum has e = 1) but never draw from nothing */
        return best;

    /* top_p over the (top-k renormalised) distribution, then min_p relative to the maximum. */
    if (top_p < 1) n = select_mass(key, n, e, top_p * zsum);
    if (min_p > 0 && top_k > 0) {
        size_t m2 = 0;
        for (size_t j = 0; j < n; j++)
            if (e[key_id(key[j])] >= min_p) key[m2++] = key[j];
        n = m2 ? m2 : 1; /* the maximum (e = 1 ≥ min_p) always survives; belt and braces */
    }
    return draw_keys(key, n, e, u);
}

/* ---- logprobs -------------------------------------------------------------------------------- */

float smp_logprobs(const float *logits, int vocab, int32_t id, int n_top, int32_t *top_ids,
                   float *top_lp)
{
    LR_ASSERT(logits && vocab >= 1);
    if (n_top > vocab) n_top = vocab;
    if (n_top < 0) n_top = 0;
    LR_ASSERT(n_top == 0 || (top_ids && top_lp));

    /* log p_i = x_i − (m + log Σ_j exp(x_j − m)), m = max x: no exp overflows and the largest term
     * is exactly 1. Sums in double. */
    double m = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > m) /* false for NaN */
            m = logits[i];
    double lse, n_inf = 0;
    if (m == INFINITY) {
        for (int i = 0; i < vocab; i++)
            n_inf += logits[i] == INFINITY;
        lse = 0; /* handled below: +inf tokens get −log(n_inf), the rest −inf */
    } else if (m == -INFINITY) {
        lse = INFINITY; /* no finite logit: every logprob is −inf */
    } else {
        /* e^(x − m) in fp32 through the vector kern_exp, a block at a time, summed in double:
         * every term is within 2 ulp of its exact value, so lse is off by ~1e-7 at most, and
         * a whole vocabulary costs a few µs instead of a double exp() per token (this runs on
         * the engine thread for every sampled row). NaN terms count as 0. */
        enum { LP_BLK = 256 };
        float t[LP_BLK];
        const float mf = (float)m;
        double part[4] = {0, 0, 0, 0};
        for (int i0 = 0; i0 < vocab; i0 += LP_BLK) {
            int nb = vocab - i0 < LP_BLK ? vocab - i0 : LP_BLK;
            for (int k = 0; k < nb; k++)
                t[k] = isnan(logits[i0 + k]) ? -INFINITY : logits[i0 + k] - mf;
            kern_exp(t, t, nb);
            int k = 0;
            for (; k + 4 <= nb; k += 4)
                for (int r = 0; r < 4; r++)
                    part[r] += t[k + r];
            for (; k < nb; k++)
                part[0] += t[k];
        }
        lse = m + log((part[0] + part[1]) + (part[2] + part[3]));
    }

#define LP_OF(x)                                                                                   \
    (isnan(x)          ? -INFINITY                                                                 \
     : m == INFINITY   ? ((x) == INFINITY ? -log(n_inf) : -INFINITY)                               \
     : lse == INFINITY ? -INFINITY                                                                 \
                       : (double)(x)-lse)

    /* Top n_top by insertion into a short sorted list; scanning ids upward, an equal value never
     * displaces an earlier (lower) id. */
    int cnt = 0;
    for (int i = 0; i < vocab && n_top > 0; i++) {
        /* Compared as the floats the caller sees, so equal values keep the lower id first. */
        float lp = (float)(LP_OF(logits[i]));
        if (cnt == n_top && !(lp > top_lp[cnt - 1])) continue;
        int j = cnt < n_top ? cnt++ : cnt - 1;
        while (j > 0 && lp > top_lp[j - 1]) {
            top_lp[j] = top_lp[j - 1];
            top_ids[j] = top_ids[j - 1];
            j--;
        }
        top_lp[j] = lp;
        top_ids[j] = i;
    }
    if (id < 0 || id >= vocab) return -INFINITY;
    return (float)LP_OF(logits[id]);
#undef LP_OF
}
