/* check_engine.c — the forward pass and the scheduler, on tiny hand-built models.
 *
 * The forward pass is checked against a naive double-precision re-implementation of SPEC-HF B
 * written here (full recompute per sequence, no KV cache, no batching), including GQA, a
 * head_dim different from hidden/heads, q/k/v biases, a sliding window, half-precision weights and
 * a fake dense LoRA (eng_delta_ops) whose effect is computed the naive way (W + s·B·A). Scheduler
 * behaviours (batching, chunked prefill, preemption, cancel, limits, queue, seeds) are checked by
 * their observable events.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

/* ---- a tiny model ---------------------------------------------------------------------- */

enum {
    V = 37,
    H = 16,
    I = 24,
    NL = 2,
    NH = 4,
    NKV = 2,
    HD = 6,
    QD = NH * HD,
    KVD = NKV * HD,
    CTX = 64
};

typedef struct tmat {
    lr_mat m;
    double *ref; /* exact values as the engine sees them (after half rounding) */
} tmat;

typedef struct tmodel {
    lr_model m;
    lr_layer layers[NL];
    uint8_t window[NL];
    float inv[HD / 2];
    tmat embed, head, q[NL], k[NL], v[NL], o[NL], gate[NL], up[NL], down[NL];
    float *vecs[64];
    int n_vecs;
} tmodel;

static uint32_t rng = 1;
static float frand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

static void tmat_make(tmat *t, int rows, int cols, lr_dtype dt, float gain)
{
    t->ref = malloc(sizeof(double) * rows * cols);
    void *data = malloc((dt == LR_DT_F32 ? 4 : 2) * (size_t)rows * cols);
    for (int i = 0; i < rows * cols; i++) {
        float f = frand() * gain;
        uint32_t b;
        memcpy(&b, &f, 4);
        if (dt == LR_DT_F32) {
            ((float *)data)[i] = f;
            t->ref[i] = f;
        } else if (dt == LR_DT_BF16) {
            uint16_t h = (uint16_t)(b >> 16); /* truncation: exact bf16 value */
            ((uint16_t *)data)[i] = h;
            uint32_t back = (uint32_t)h << 16;
            float g;
            memcpy(&g, &back, 4);
            t->ref[i] = g;
        } else { /* f16 by truncation of the mantissa; |f| < 2 so normal or zero */
            uint32_t s = (b >> 16) & 0x8000;
            int e = (int)((b >> 23) & 255) - 127 + 15;
            uint32_t m = (b >> 13) & 1023;
            uint16_t h = e <= 0 ? (uint16_t)s : (uint16_t)(s | ((uint32_t)e << 10) | m);
            ((uint16_t *)data)[i] = h;
            t->ref[i] = e <= 0 ? 0.0 : ldexp(1024 + m, e - 25) * (s ? -1 : 1);
        }
    }
    t->m = (lr_mat){dt, data, rows, cols, 0};
}

static float *tvec(tmodel *tm, int n, float base, float gain)
{
    float *v = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++)
        v[i] = base + gain * frand();
    tm->vecs[tm->n_vecs++] = v;
    return v;
}

typedef struct mopts {
    lr_dtype dt;
    int bias, window, tie;
} mopts;

static tmodel *tmodel_new(mopts o, uint32_t seed)
{
    rng = seed;
    tmodel *tm = calloc(1, sizeof *tm);
    lr_config *c = &tm->m.cfg;
    c->arch = o.window ? LR_ARCH_MISTRAL : LR_ARCH_LLAMA;
    c->vocab = V;
    c->hidden = H;
    c->inter = I;
    c->n_layers = NL;
    c->n_heads = NH;
    c->n_kv_heads = NKV;
    c->head_dim = HD;
    c->norm_eps = 1e-5f;
    c->act = LR_ACT_SILU;
    c->max_pos = CTX;
    c->rope_theta = 10000.0f;
    c->sliding_window = o.window ? 5 : 0;
    tm->window[1] = o.window ? 1 : 0; /* only layer 1 slides: both paths are exercised */
    c->window_layer = tm->window;
    c->bos_id = -1;
    c->pad_id = -1;
    c->n_eos = 1;
    c->eos_ids[0] = 2;
    for (int k = 0; k < HD / 2; k++)
        tm->inv[k] = 1.0f / powf(10000.0f, (float)(2 * k) / (float)HD);
    tm->m.rope_inv_freq = tm->inv;
    tmat_make(&tm->embed, V, H, o.dt, 1.0f);
    tm->m.embed = tm->embed.m;
    if (o.tie) {
        tm->head = tm->embed;
        tm->head.ref = NULL; /* shared: freed once */
        tm->m.lm_head = tm->embed.m;
    } else {
        tmat_make(&tm->head, V, H, o.dt, 0.5f);
        tm->m.lm_head = tm->head.m;
    }
    for (int l = 0; l < NL; l++) {
        lr_layer *L = &tm->layers[l];
        L->attn_norm = tvec(tm, H, 1.0f, 0.2f);
        L->mlp_norm = tvec(tm, H, 1.0f, 0.2f);
        tmat_make(&tm->q[l], QD, H, o.dt, 0.6f);
        tmat_make(&tm->k[l], KVD, H, o.dt, 0.6f);
        tmat_make(&tm->v[l], KVD, H, o.dt, 0.6f);
        tmat_make(&tm->o[l], H, QD, o.dt, 0.4f);
        tmat_make(&tm->gate[l], I, H, o.dt, 0.5f);
        tmat_make(&tm->up[l], I, H, o.dt, 0.5f);
        tmat_make(&tm->down[l], H, I, o.dt, 0.4f);
        L->q = tm->q[l].m;
        L->k = tm->k[l].m;
        L->v = tm->v[l].m;
        L->o = tm->o[l].m;
        L->gate = tm->gate[l].m;
        L->up = tm->up[l].m;
        L->down = tm->down[l].m;
        if (o.bias) {
            L->bq = tvec(tm, QD, 0, 0.3f);
            L->bk = tvec(tm, KVD, 0, 0.3f);
            L->bv = tvec(tm, KVD, 0, 0.3f);
        }
    }
    tm->m.layers = tm->layers;
    tm->m.final_norm = tvec(tm, H, 1.0f, 0.2f);
    return tm;
}

static void tmat_free(tmat *t)
{
    if (t->ref) {
        free(t->ref);
        free((void *)t->m.data);
    }
}

static void tmodel_free(tmodel *tm)
{
    tmat_free(&tm->embed);
    tmat_free(&tm->head);
    for (int l = 0; l < NL; l++) {
        tmat *ms[] = {&tm->q[l],    &tm->k[l],  &tm->v[l],   &tm->o[l],
                      &tm->gate[l], &tm->up[l], &tm->down[l]};
        for (int i = 0; i < 7; i++)
            tmat_free(ms[i]);
    }
    for (int i = 0; i < tm->n_vecs; i++)
        free(tm->vecs[i]);
    free(tm);
}

/* ---- a fake dense LoRA adapter ----------------------------------------------------------- */

enum { R = 3 };
typedef struct fake_ad {
    int has[NL][LR_MOD_COUNT];
    float *A[NL][LR_MOD_COUNT]; /* [R, in] */
    float *B[NL][LR_MOD_COUNT]; /* [out, R] */
    float scale;
    float *E; /* [V, H] embedding delta, or NULL */
} fake_ad;

static int mod_in(lr_module m)
{
    return m == LR_MOD_O ? QD : m == LR_MOD_DOWN ? I : H;
}
static int mod_out(lr_module m)
{
    switch (m) {
    case LR_MOD_Q:
        return QD;
    case LR_MOD_K:
    case LR_MOD_V:
        return KVD;
    case LR_MOD_GATE:
    case LR_MOD_UP:
        return I;
    default:
        return H;
    }
}

static fake_ad *fake_new(const lr_module *mods, int n, float scale, int embed, uint32_t seed)
{
    rng = seed;
    fake_ad *a = calloc(1, sizeof *a);
    a->scale = scale;
    for (int l = 0; l < NL; l++)
        for (int i = 0; i < n; i++) {
            lr_module m = mods[i];
            a->has[l][m] = 1;
            a->A[l][m] = malloc(sizeof(float) * R * mod_in(m));
            a->B[l][m] = malloc(sizeof(float) * R * mod_out(m));
            for (int j = 0; j < R * mod_in(m); j++)
                a->A[l][m][j] = frand() * 0.5f;
            for (int j = 0; j < R * mod_out(m); j++)
                a->B[l][m][j] = frand() * 0.5f;
        }
    if (embed) {
        a->E = malloc(sizeof(float) * V * H);
        for (int j = 0; j < V * H; j++)
            a->E[j] = frand() * 0.5f;
    }
    return a;
}

static void fake_free(fake_ad *a)
{
    for (int l = 0; l < NL; l++)
        for (int m = 0; m < LR_MOD_COUNT; m++) {
            free(a->A[l][m]);
            free(a->B[l][m]);
        }
    free(a->E);
    free(a);
}

static int fake_has(const void *ad, int layer, lr_module mod)
{
    const fake_ad *a = ad;
    return a->has[layer][mod];
}

static void fake_apply(const void *ad, int layer, lr_module mod, const float *x, int ldx, float *y,
                       int ldy, const float *bias, int t0, int t1, float *scratch)
{
    const fake_ad *a = ad;
    int in = mod_in(mod), out = mod_out(mod);
    for (int t = t0; t < t1; t++) {
        float *tmp = scratch + (size_t)(t - t0) * R; /* uses exactly the promised scratch */
        for (int r = 0; r < R; r++) {
            float s = 0;
            for (int i = 0; i < in; i++)
                s += a->A[layer][mod][r * in + i] * x[(size_t)t * ldx + i];
            tmp[r] = s;
        }
        for (int o = 0; o < out; o++) {
            float s = 0;
            for (int r = 0; r < R; r++)
                s += a->B[layer][mod][o * R + r] * tmp[r];
            y[(size_t)t * ldy + o] += a->scale * s;
        }
    }
}

static void fake_embed(const void *ad, int32_t id, float *row)
{
    const fake_ad *a = ad;
    if (a->E)
        for (int j = 0; j < H; j++)
            row[j] += a->E[id * H + j];
}

static const eng_delta_ops fake_ops = {fake_has, fake_apply, fake_embed, R, NULL};

/* ---- the naive double reference (SPEC-HF B.3-B.5) ----------------------------------------- */

static void ref_linear(const tmat *W, const float *b, const fake_ad *ad, int l, lr_module mod,
                       const double *x, int n, double *y)
{
    int out = (int)W->m.rows, in = (int)W->m.cols;
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int i = 0; i < in; i++) {
                double w = W->ref[o * in + i];
                if (ad && ad->has[l][mod])
                    for (int r = 0; r < R; r++)
                        w += (double)ad->scale * ad->B[l][mod][o * R + r] *
                             ad->A[l][mod][r * in + i];
                s += w * x[t * in + i];
            }
            y[t * out + o] = s;
        }
}

static void ref_norm(const double *x, const float *w, int n, double *y)
{
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int j = 0; j < H; j++)
            ss += x[t * H + j] * x[t * H + j];
        double inv = 1.0 / sqrt(ss / H + 1e-5);
        for (int j = 0; j < H; j++)
            y[t * H + j] = w[j] * x[t * H + j] * inv;
    }
}

static void ref_rope(double *v, int nh, int pos, const float *inv)
{
    for (int h = 0; h < nh; h++)
        for (int k = 0; k < HD / 2; k++) {
            double ang = pos * (double)inv[k];
            double a = v[h * HD + k], b = v[h * HD + k + HD / 2];
            v[h * HD + k] = a * cos(ang) - b * sin(ang);
            v[h * HD + k + HD / 2] = b * cos(ang) + a * sin(ang);
        }
}

/* Log-softmax rows of all positions: lp[n][V]. */
static void ref_forward(const tmodel *tm, const fake_ad *ad, const int32_t *tok, int n, double *lp)
{
    double *h = calloc((size_t)n * H, sizeof(double)), *x = calloc((size_t)n * H, sizeof(double));
    double *q = calloc((size_t)n * QD, sizeof(double)),
           *k = calloc((size_t)n * KVD, sizeof(double));
    double *v = calloc((size_t)n * KVD, sizeof(double)),
           *att = calloc((size_t)n * QD, sizeof(double));
    double *g = calloc((size_t)n * I, sizeof(double)), *u = calloc((size_t)n * I, sizeof(double));
    double *y = calloc((size_t)n * H, sizeof(double)), *sc = calloc((size_t)n, sizeof(double));
    const lr_config *c = &tm->m.cfg;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < H; j++)
            h[t * H + j] =
                tm->embed.ref[tok[t] * H + j] + (ad && ad->E ? ad->E[tok[t] * H + j] : 0);
    for (int l = 0; l < NL; l++) {
        const lr_layer *L = &tm->layers[l];
        ref_norm(h, L->attn_norm, n, x);
        ref_linear(&tm->q[l], L->bq, ad, l, LR_MOD_Q, x, n, q);
        ref_linear(&tm->k[l], L->bk, ad, l, LR_MOD_K, x, n, k);
        ref_linear(&tm->v[l], L->bv, ad, l, LR_MOD_V, x, n, v);
        for (int t = 0; t < n; t++) {
            ref_rope(q + t * QD, NH, t, tm->inv);
            ref_rope(k + t * KVD, NKV, t, tm->inv);
        }
        int W = c->sliding_window && c->window_layer[l] ? c->sliding_window : 0;
        for (int t = 0; t < n; t++)
            for (int hh = 0; hh < NH; hh++) {
                int kv = hh / (NH / NKV);
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    if (W && j <= t - W) {
                        sc[j] = -INFINITY;
                        continue;
                    }
                    double s = 0;
                    for (int d = 0; d < HD; d++)
                        s += q[t * QD + hh * HD + d] * k[j * KVD + kv * HD + d];
                    sc[j] = s / sqrt((double)HD);
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = 0; j <= t; j++)
                    sum += sc[j] = exp(sc[j] - mx);
                for (int d = 0; d < HD; d++) {
                    double s = 0;
                    for (int j = 0; j <= t; j++)
                        s += sc[j] / sum * v[j * KVD + kv * HD + d];
                    att[t * QD + hh * HD + d] = s;
                }
            }
        ref_linear(&tm->o[l], L->bo, ad, l, LR_MOD_O, att, n, y);
        for (int i = 0; i < n * H; i++)
            h[i] += y[i];
        ref_norm(h, L->mlp_norm, n, x);
        ref_linear(&tm->gate[l], NULL, ad, l, LR_MOD_GATE, x, n, g);
        ref_linear(&tm->up[l], NULL, ad, l, LR_MOD_UP, x, n, u);
        for (int i = 0; i < n * I; i++)
            g[i] = g[i] / (1 + exp(-g[i])) * u[i];
        ref_linear(&tm->down[l], NULL, ad, l, LR_MOD_DOWN, g, n, y);
        for (int i = 0; i < n * H; i++)
            h[i] += y[i];
    }
    ref_norm(h, tm->m.final_norm, n, x);
    const double *hw = tm->head.ref ? tm->head.ref : tm->embed.ref;
    for (int t = 0; t < n; t++) {
        double mx = -INFINITY, sum = 0;
        for (int o = 0; o < V; o++) {
            double s = 0;
            for (int j = 0; j < H; j++)
                s += hw[o * H + j] * x[t * H + j];
            lp[t * V + o] = s;
            mx = s > mx ? s : mx;
        }
        for (int o = 0; o < V; o++)
            sum += exp(lp[t * V + o] - mx);
        for (int o = 0; o < V; o++)
            lp[t * V + o] -= mx + log(sum);
    }
    free(h), free(x), free(q), free(k), free(v), free(att), free(g), free(u), free(y), free(sc);
}

/* ---- event recording --------------------------------------------------------------------- */

enum { MAXEV = 80 };
typedef struct rec {
    int n_gen, n_pl, n_final;
    int32_t tok[MAXEV];
    float lp[MAXEV];
    int32_t top[MAXEV][3];
    int32_t ptok[MAXEV];
    float plp[MAXEV];
    eng_finish finish;
    int last_n_generated;
    char error[256];
    int stop_at;     /* callback returns 1 at this generated count (0 = never) */
    int cancel_at;   /* calls eng_cancel at this generated count */
    int block_first; /* first event waits until released */
    uint64_t id;
    eng_engine *eng;
} rec;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static int g_finished, g_entered, g_release;

static int on_event(void *user, const eng_event *ev)
{
    rec *r = user;
    if (r->block_first) {
        pthread_mutex_lock(&g_mu);
        g_entered = 1;
        pthread_cond_broadcast(&g_cv);
        while (!g_release)
            pthread_cond_wait(&g_cv, &g_mu);
        pthread_mutex_unlock(&g_mu);
        r->block_first = 0;
    }
    int ret = 0;
    if (ev->token >= 0 && ev->n_generated == 0) {
        ck_assert_int_lt(r->n_pl, MAXEV);
        r->ptok[r->n_pl] = ev->token;
        r->plp[r->n_pl++] = ev->logprob;
    } else if (ev->token >= 0) {
        ck_assert_int_lt(r->n_gen, MAXEV);
        ck_assert_int_eq(ev->n_generated, r->n_gen + 1);
        r->tok[r->n_gen] = ev->token;
        r->lp[r->n_gen] = ev->logprob;
        for (int i = 0; i < ev->n_top && i < 3; i++)
            r->top[r->n_gen][i] = ev->top_ids[i];
        r->n_gen++;
        if (r->cancel_at && r->n_gen == r->cancel_at) {
            while (!__atomic_load_n(&r->id, __ATOMIC_ACQUIRE))
                sched_yield(); /* the submitter has not stored the id yet */
            eng_cancel(r->eng, r->id);
        }
        if (r->stop_at && r->n_gen == r->stop_at) ret = 1;
    }
    r->last_n_generated = ev->n_generated;
    if (ev->finish != ENG_FINISH_NONE || ret) {
        r->finish = ret ? ENG_FINISH_STOP : ev->finish;
        if (ev->error) snprintf(r->error, sizeof r->error, "%s", ev->error);
        pthread_mutex_lock(&g_mu);
        r->n_final++;
        g_finished++;
        pthread_cond_broadcast(&g_cv);
        pthread_mutex_unlock(&g_mu);
    }
    return ret;
}

static void wait_finished(int n)
{
    pthread_mutex_lock(&g_mu);
    while (g_finished < n)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
}

/* The final event comes before the engine retires the sequence (same step): poll the stats until
 * nothing runs any more (bounded: 10 s). */
static void wait_idle(eng_engine *e, eng_stats *st)
{
    for (int i = 0; i < 10000; i++) {
        eng_get_stats(e, st);
        if (st->running == 0 && st->waiting == 0) return;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    ck_abort_msg("the engine did not become idle");
}

static eng_params base_params(const tmodel *tm)
{
    eng_params p;
    memset(&p, 0, sizeof p);
    p.model = &tm->m;
    p.threads = 2;
    p.max_batch_tokens = 64;
    p.max_seqs = 8;
    p.max_queue = 64;
    p.kv_cache_mb = 1;
    p.kv_block_tokens = 4;
    return p;
}

static eng_request_params greedy_req(const int32_t *prompt, int n, int max_tokens, rec *r)
{
    eng_request_params q;
    memset(&q, 0, sizeof q);
    q.prompt = prompt;
    q.n_prompt = n;
    q.sampling.top_p = 1;
    q.sampling.repetition_penalty = 1;
    q.max_tokens = max_tokens;
    q.ignore_eos = 1;
    q.top_logprobs = 3;
    q.cb = on_event;
    q.user = r;
    return q;
}

static void submit_ok(eng_engine *e, const eng_request_params *q)
{
    lr_error err;
    uint64_t id;
    rec *r = q->user;
    r->eng = e; /* before submit: the first events may come before eng_submit returns */
    int rc = eng_submit(e, q, &err, &id);
    ck_assert_msg(rc == 0, "submit: %s", err.msg);
    __atomic_store_n(&r->id, id, __ATOMIC_RELEASE);
}

static void make_prompt(int32_t *p, int n, int salt)
{
    for (int i = 0; i < n; i++)
        p[i] = (int32_t)((i * 7 + salt * 13 + 3) % V);
}

/* Engine output of one request vs the reference: prompt logprobs, greedy tokens (unless the
 * reference's top two are within 1e-4, a near tie), their logprobs and the top-3 ids. */
static void check_against_ref(const tmodel *tm, const fake_ad *ad, const int32_t *prompt, int np,
                              const rec *r)
{
    int n = np + r->n_gen;
    int32_t *all = malloc(sizeof(int32_t) * n);
    memcpy(all, prompt, sizeof(int32_t) * np);
    memcpy(all + np, r->tok, sizeof(int32_t) * r->n_gen);
    double *lp = malloc(sizeof(double) * n * V);
    ref_forward(tm, ad, all, n, lp);
    for (int i = 0; i < r->n_pl; i++) {
        ck_assert_int_eq(r->ptok[i], prompt[i + 1]);
        ck_assert_msg(fabs(r->plp[i] - lp[i * V + prompt[i + 1]]) < 1e-4,
                      "prompt logprob %d: %g vs ref %g", i + 1, r->plp[i],
                      lp[i * V + prompt[i + 1]]);
    }
    for (int k = 0; k < r->n_gen; k++) {
        const double *row = lp + (size_t)(np - 1 + k) * V;
        int best = 0, second = -1;
        for (int o = 1; o < V; o++) {
            if (row[o] > row[best]) {
                second = best;
                best = o;
            } else if (second < 0 || row[o] > row[second]) {
                second = o;
            }
        }
        if (row[best] - row[second] > 1e-4) {
            ck_assert_msg(r->tok[k] == best, "step %d: token %d, reference argmax %d", k, r->tok[k],
                          best);
            ck_assert_int_eq(r->top[k][0], best);
        }
        ck_assert_msg(fabs(r->lp[k] - row[r->tok[k]]) < 1e-4, "step %d: logprob %g vs ref %g", k,
                      r->lp[k], row[r->tok[k]]);
    }
    free(all);
    free(lp);
}

static void reset_counters(void)
{
    g_finished = 0;
    g_entered = 0;
    g_release = 0;
}

/* ---- tests ------------------------------------------------------------------------------- */

static const mopts variants[] = {
    {LR_DT_F32, 0, 0, 0},  /* plain */
    {LR_DT_BF16, 1, 1, 0}, /* bf16 weights, q/k/v bias, sliding window on layer 1 */
    {LR_DT_F16, 0, 0, 1},  /* f16 weights, tied lm_head */
};

START_TEST(test_forward_reference)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[_i], 100 + (uint32_t)_i);
    eng_params p = base_params(tm);
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &e), 0);
    int32_t prompt[9];
    make_prompt(prompt, 9, 1);
    static rec r;
    memset(&r, 0, sizeof r);
    eng_request_params q = greedy_req(prompt, 9, 14, &r);
    q.prompt_logprobs = 1;
    submit_ok(e, &q);
    wait_finished(1);
    ck_assert_int_eq(r.n_pl, 8);
    ck_assert_int_eq(r.n_gen, 14);
    ck_assert_int_eq(r.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(r.n_final, 1);
    check_against_ref(tm, NULL, prompt, 9, &r);
    eng_destroy(e);
    tmodel_free(tm);
}
END_TEST

/* Run n requests one after another, or all at once, with engine params p. */
static void run_set(const eng_params *p, int32_t prompts[][24], const int *lens, int n, int max_tok,
                    int together, rec *recs, eng_stats *st)
{
    reset_counters();
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(p, &err, &e), 0);
    for (int i = 0; i < n; i++) {
        memset(&recs[i], 0, sizeof recs[i]);
        eng_request_params q = greedy_req(prompts[i], lens[i], max_tok, &recs[i]);
        q.prompt_logprobs = 1;
        submit_ok(e, &q);
        if (!together) wait_finished(i + 1);
    }
    wait_finished(n);
    if (st) wait_idle(e, st);
    eng_destroy(e);
}

START_TEST(test_batch_chunk_preempt)
{
    tmodel *tm = tmodel_new(variants[1], 7);
    enum { N = 6 };
    int32_t prompts[N][24];
    int lens[N] = {1, 15, 4, 9, 12, 2};
    for (int i = 0; i < N; i++)
        make_prompt(prompts[i], lens[i], i);
    static rec solo[N], batch[N], chunk[N], pre[N];
    eng_params p = base_params(tm);
    run_set(&p, prompts, lens, N, 7, 0, solo, NULL);
    eng_stats st;
    run_set(&p, prompts, lens, N, 7, 1, batch, &st);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    eng_params pc = p;
    pc.max_batch_tokens = 5; /* prompts of 9-15 tokens are prefilled over several steps */
    pc.max_seqs = 5;
    run_set(&pc, prompts, lens, N, 7, 1, chunk, NULL);
    eng_params pp = p;
    pp.kv_cache_bytes = 8 * 4 * (NL * 2 * KVD * 4); /* 8 blocks of 4 tokens: 32 positions */
    run_set(&pp, prompts, lens, N, 7, 1, pre, &st);
    ck_assert_msg(st.preemptions > 0, "the small pool should have forced preemption");
    ck_assert_int_eq(st.kv_blocks_total, 8);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    rec *sets[] = {batch, chunk, pre};
    for (int i = 0; i < N; i++) {
        check_against_ref(tm, NULL, prompts[i], lens[i], &solo[i]);
        for (int s = 0; s < 3; s++) {
            rec *o = &sets[s][i];
            ck_assert_int_eq(o->n_final, 1);
            ck_assert_int_eq(o->n_gen, solo[i].n_gen);
            ck_assert_int_eq(o->n_pl, lens[i] - 1); /* no prompt event twice after preemption */
            for (int k = 0; k < o->n_gen; k++) {
                ck_assert_msg(o->tok[k] == solo[i].tok[k], "set %d req %d step %d", s, i, k);
                ck_assert(fabsf(o->lp[k] - solo[i].lp[k]) < 1e-5f);
            }
            for (int k = 0; k < o->n_pl; k++)
                ck_assert(fabsf(o->plp[k] - solo[i].plp[k]) < 1e-5f);
        }
    }
    tmodel_free(tm);
}
END_TEST

START_TEST(test_lora_hook)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[0], 11);
    lr_module m1[] = {LR_MOD_Q, LR_MOD_V, LR_MOD_DOWN};
    lr_module m2[] = {LR_MOD_K, LR_MOD_O, LR_MOD_GATE, LR_MOD_UP};
    fake_ad *a1 = fake_new(m1, 3, 2.0f, 0, 21), *a2 = fake_new(m2, 4, 0.5f, 1, 22);
    eng_params p = base_params(tm);
    p.delta = &fake_ops;
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &e), 0);
    enum { N = 5 };
    int32_t prompts[N][10];
    const fake_ad *ads[N] = {a1, NULL, a2, a1, a2};
    static rec r[N];
    for (int i = 0; i < N; i++) {
        make_prompt(prompts[i], 10, i + 3);
        memset(&r[i], 0, sizeof r[i]);
    }
    /* Held while submitting: all five start in the same pass (and nothing runs while held). */
    eng_hold(e, 1);
    for (int i = 0; i < N; i++) {
        eng_request_params q = greedy_req(prompts[i], 10, 6, &r[i]);
        q.prompt_logprobs = 1;
        q.adapter = ads[i];
        submit_ok(e, &q);
    }
    usleep(20000);
    eng_stats st;
    eng_get_stats(e, &st);
    ck_assert_uint_eq(st.steps, 0);
    ck_assert_int_eq(st.waiting, N);
    eng_hold(e, 0);
    wait_finished(N);
    wait_idle(e, &st);
    ck_assert_uint_ge(st.mixed_adapter_steps, 1);
    ck_assert_uint_eq(st.max_adapters_in_step, 2);
    eng_destroy(e);
    for (int i = 0; i < N; i++)
        check_against_ref(tm, ads[i], prompts[i], 10, &r[i]);
    /* The adapters really change the output (else the test above proves nothing). */
    double *lp0 = malloc(sizeof(double) * 10 * V), *lp1 = malloc(sizeof(double) * 10 * V);
    ref_forward(tm, NULL, prompts[0], 10, lp0);
    ref_forward(tm, a1, prompts[0], 10, lp1);
    ck_assert(fabs(lp0[9 * V] - lp1[9 * V]) > 1e-3);
    free(lp0);
    free(lp1);
    fake_free(a1);
    fake_free(a2);
    tmodel_free(tm);
}
END_TEST

START_TEST(test_limits)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[0], 5);
    eng_params p = base_params(tm);
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &e), 0);
    int32_t prompt[CTX];
    make_prompt(prompt, CTX, 2);
    static rec a, b, c, d;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&c, 0, sizeof c);
    memset(&d, 0, sizeof d);
    /* max_tokens: exactly 5 tokens, LENGTH on the fifth. */
    eng_request_params q = greedy_req(prompt, 4, 5, &a);
    submit_ok(e, &q);
    /* Context end: 60 prompt tokens + 4 = 64 = the context. */
    q = greedy_req(prompt, 60, 10, &b);
    submit_ok(e, &q);
    /* A prompt as long as the context is refused. */
    q = greedy_req(prompt, CTX, 1, &c);
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "context"));
    wait_finished(2);
    ck_assert_int_eq(a.n_gen, 5);
    ck_assert_int_eq(a.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(a.n_final, 1);
    ck_assert_int_eq(b.n_gen, 4);
    ck_assert_int_eq(b.finish, ENG_FINISH_LENGTH);
    /* EOS: make the first greedy token of `a` an eos id; without ignore_eos it stops there. */
    tm->m.cfg.eos_ids[0] = a.tok[2];
    q = greedy_req(prompt, 4, 5, &d);
    q.ignore_eos = 0;
    submit_ok(e, &q);
    wait_finished(3);
    int first = 0;
    while (a.tok[first] != a.tok[2])
        first++;
    ck_assert_int_eq(d.n_gen, first + 1);
    ck_assert_int_eq(d.tok[first], a.tok[2]);
    ck_assert_int_eq(d.finish, ENG_FINISH_EOS);
    /* Callback stop: no event after the one that returned 1. */
    memset(&c, 0, sizeof c);
    c.stop_at = 2;
    q = greedy_req(prompt, 4, 9, &c);
    submit_ok(e, &q);
    wait_finished(4);
    eng_stats st;
    wait_idle(e, &st);
    ck_assert_int_eq(st.running, 0);
    ck_assert_int_eq(c.n_gen, 2);
    ck_assert_int_eq(c.n_final, 1);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    eng_destroy(e);
    tmodel_free(tm);
}
END_TEST

START_TEST(test_cancel_and_shutdown)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[0], 9);
    eng_params p = base_params(tm);
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &e), 0);
    int32_t prompt[8];
    make_prompt(prompt, 8, 4);
    static rec a, b, c;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&c, 0, sizeof c);
    a.cancel_at = 3; /* cancels itself from inside its callback */
    eng_request_params q = greedy_req(prompt, 8, 50, &a);
    submit_ok(e, &q);
    wait_finished(1);
    ck_assert_int_eq(a.finish, ENG_FINISH_ABORT);
    ck_assert_int_eq(a.n_gen, 3);
    ck_assert_int_eq(a.n_final, 1);
    eng_cancel(e, 999999); /* unknown: ignored */
    eng_cancel(e, a.id);   /* finished: ignored */
    /* Shutdown with requests in flight: each gets exactly one ABORT. */
    q = greedy_req(prompt, 8, 50, &b);
    submit_ok(e, &q);
    q = greedy_req(prompt, 5, 50, &c);
    submit_ok(e, &q);
    eng_drain(e);
    q = greedy_req(prompt, 5, 50, &a);
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_ESHUTDOWN);
    eng_destroy(e);
    ck_assert_int_eq(b.n_final, 1);
    ck_assert_int_eq(c.n_final, 1);
    ck_assert(b.finish == ENG_FINISH_ABORT || b.finish == ENG_FINISH_LENGTH);
    ck_assert(b.n_gen < 50 || b.finish == ENG_FINISH_LENGTH);
    tmodel_free(tm);
}
END_TEST

START_TEST(test_queue_full)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[0], 13);
    eng_params p = base_params(tm);
    p.max_seqs = 1;
    p.max_queue = 2;
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &e), 0);
    int32_t prompt[4];
    make_prompt(prompt, 4, 1);
    static rec r[4];
    memset(r, 0, sizeof r);
    r[0].block_first = 1; /* holds the engine thread inside its first event */
    eng_request_params q = greedy_req(prompt, 4, 2, &r[0]);
    submit_ok(e, &q);
    pthread_mutex_lock(&g_mu);
    while (!g_entered)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
    for (int i = 1; i < 3; i++) {
        q = greedy_req(prompt, 4, 2, &r[i]);
        submit_ok(e, &q);
    }
    q = greedy_req(prompt, 4, 2, &r[3]);
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EBUSY);
    ck_assert_int_eq(err.http, 429);
    eng_stats st;
    eng_get_stats(e, &st);
    ck_assert_int_eq(st.waiting, 2);
    pthread_mutex_lock(&g_mu);
    g_release = 1;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    wait_finished(3);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(r[i].n_gen, 2);
        ck_assert_int_eq(r[i].tok[0], r[0].tok[0]); /* greedy: same prompt, same output */
        ck_assert_int_eq(r[i].tok[1], r[0].tok[1]);
    }
    eng_destroy(e);
    tmodel_free(tm);
}
END_TEST

START_TEST(test_seeds)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[0], 17);
    eng_params p = base_params(tm);
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &e), 0);
    int32_t prompt[3] = {5, 6, 7};
    static rec r[3];
    memset(r, 0, sizeof r);
    const uint64_t seeds[3] = {42, 42, 43};
    for (int i = 0; i < 3; i++) {
        eng_request_params q = greedy_req(prompt, 3, 30, &r[i]);
        q.sampling.temperature = 1.5f;
        q.sampling.seed = seeds[i];
        submit_ok(e, &q);
    }
    wait_finished(3);
    ck_assert_int_eq(memcmp(r[0].tok, r[1].tok, sizeof(int32_t) * 30), 0);
    ck_assert_int_ne(memcmp(r[0].tok, r[2].tok, sizeof(int32_t) * 30), 0);
    eng_destroy(e);
    tmodel_free(tm);
}
END_TEST

START_TEST(test_validation)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[0], 19);
    eng_params p = base_params(tm);
    p.kv_cache_bytes = 2 * 4 * (NL * 2 * KVD * 4); /* 2 blocks: 8 positions */
    eng_engine *e;
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &e), 0);
    static rec r;
    memset(&r, 0, sizeof r);
    int32_t prompt[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    eng_request_params q = greedy_req(prompt, 3, 2, &r);
    q.n_prompt = 0;
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    q = greedy_req(prompt, 3, 0, &r);
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "max_tokens"));
    q = greedy_req(prompt, 3, 2, &r);
    q.top_logprobs = ENG_MAX_TOP_LOGPROBS + 1;
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    int32_t bad[2] = {3, V};
    q = greedy_req(bad, 2, 2, &r);
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "vocabulary"));
    q = greedy_req(prompt, 3, 2, &r);
    q.sampling.temperature = -1;
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    /* A prompt longer than the whole KV pool can never run: ERROR with a sentence. */
    q = greedy_req(prompt, 12, 2, &r);
    submit_ok(e, &q);
    wait_finished(1);
    ck_assert_int_eq(r.finish, ENG_FINISH_ERROR);
    ck_assert_int_eq(r.n_gen, 0);
    ck_assert_ptr_nonnull(strstr(r.error, "KV cache"));
    /* A generation that fills the pool stops with LENGTH at the pool's end. */
    memset(&r, 0, sizeof r);
    q = greedy_req(prompt, 5, 20, &r);
    submit_ok(e, &q);
    wait_finished(2);
    ck_assert_int_eq(r.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(r.n_gen, 3);
    eng_destroy(e);
    /* A model marked T5 without its decoder weights is refused (core/t5 runs real T5 models;
     * tests/unit/check_t5.c). */
    tm->m.cfg.arch = LR_ARCH_T5;
    ck_assert_int_eq(eng_create(&p, &err, &e), LR_EINVAL);
    ck_assert_ptr_null(e);
    tmodel_free(tm);
    eng_destroy(NULL);
}
END_TEST

/* Several threads submit and cancel at once; every request gets exactly one final event and the
 * pool ends empty. (Run under TSan by hand; ASan in CI.) */
enum { SUBMITTERS = 4, PER_THREAD = 15 };
static rec stress_recs[SUBMITTERS][PER_THREAD];
static eng_engine *stress_eng;

static void *stress_main(void *arg)
{
    int t = (int)(intptr_t)arg;
    int32_t prompt[20];
    make_prompt(prompt, 20, t);
    for (int i = 0; i < PER_THREAD; i++) {
        rec *r = &stress_recs[t][i];
        memset(r, 0, sizeof *r);
        eng_request_params q = greedy_req(prompt, 1 + (i * 7 + t) % 20, 1 + i % 9, r);
        q.prompt_logprobs = i % 2;
        submit_ok(stress_eng, &q);
        if (i % 3 == 0) eng_cancel(stress_eng, r->id);
    }
    return NULL;
}

START_TEST(test_concurrent_submit_cancel)
{
    reset_counters();
    tmodel *tm = tmodel_new(variants[0], 23);
    eng_params p = base_params(tm);
    p.max_queue = SUBMITTERS * PER_THREAD;
    p.kv_cache_bytes = 12 * 4 * (NL * 2 * KVD * 4); /* tight: preemption under load */
    lr_error err;
    ck_assert_int_eq(eng_create(&p, &err, &stress_eng), 0);
    pthread_t th[SUBMITTERS];
    for (int t = 0; t < SUBMITTERS; t++)
        pthread_create(&th[t], NULL, stress_main, (void *)(intptr_t)t);
    for (int t = 0; t < SUBMITTERS; t++)
        pthread_join(th[t], NULL);
    wait_finished(SUBMITTERS * PER_THREAD);
    eng_stats st;
    wait_idle(stress_eng, &st);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    for (int t = 0; t < SUBMITTERS; t++)
        for (int i = 0; i < PER_THREAD; i++) {
            rec *r = &stress_recs[t][i];
            ck_assert_int_eq(r->n_final, 1);
            if (r->finish != ENG_FINISH_ABORT) {
                ck_assert_int_eq(r->finish, ENG_FINISH_LENGTH);
                ck_assert_int_eq(r->n_gen, 1 + i % 9);
            }
        }
    eng_destroy(stress_eng);
    tmodel_free(tm);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("engine");
    TCase *tc;
    tc = tcase_create("forward");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_forward_reference, 0, 3);
    tcase_add_test(tc, test_lora_hook);
    suite_add_tcase(s, tc);
    tc = tcase_create("scheduler");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_batch_chunk_preempt);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_cancel_and_shutdown);
    tcase_add_test(tc, test_queue_full);
    tcase_add_test(tc, test_seeds);
    tcase_add_test(tc, test_validation);
    tcase_add_test(tc, test_concurrent_submit_cancel);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
