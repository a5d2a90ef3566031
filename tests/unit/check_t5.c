/* check_t5.c — the T5 encoder-decoder pass (core/t5) and its scheduling in the engine.
 *
 * Independent references only: the relative-position buckets against the tables SPEC-HF C.3
 * gives (verified there with torch); the forward pass against a naive double-precision T5
 * written here from SPEC-HF C.4 (the encoder and the whole decoder sequence recomputed for every
 * token, no cache, no batching); batching and preemption against the same requests run one at a
 * time. The model is built in memory (F32 and BF16 weights, gated-gelu/untied and relu/tied,
 * d_kv·heads != d_model). LoRA hook coverage: a recording delta sees every module of every
 * encoder and decoder block with the engine's layer numbering.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "t5.h"

/* ---- relative position buckets vs SPEC C.3's verified tables ------------------------------- */

START_TEST(test_buckets_spec)
{
    int bad = 0;
    /* Encoder (bidirectional), n = −rp: 0..7 → n; 8–11 → 8; 12–15 → 9; 16–22 → 10; 23–31 → 11;
     * 32–45 → 12; 46–63 → 13; 64–90 → 14; ≥91 → 15; rp > 0: the same + 16. */
    static const int enc_lo[] = {8, 12, 16, 23, 32, 46, 64, 91, 100000};
    for (int n = 0; n < 3000; n++) {
        int want = n;
        if (n >= 8)
            for (int k = 0; k < 8; k++)
                if (n >= enc_lo[k] && n < enc_lo[k + 1]) want = 8 + k;
        if (t5_rel_bucket(-n, 1, 32, 128) != want) bad = bad ? bad : -n - 100000;
        if (n > 0 && t5_rel_bucket(n, 1, 32, 128) != want + 16) bad = bad ? bad : n;
    }
    /* Decoder (unidirectional), n = −rp: 0..15 → n; then the listed ranges → 16..31. */
    static const int dec_lo[] = {16, 19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113,
                                 100000};
    for (int n = 0; n < 3000; n++) {
        int want = n;
        if (n >= 16)
            for (int k = 0; k < 16; k++)
                if (n >= dec_lo[k] && n < dec_lo[k + 1]) want = 16 + k;
        if (t5_rel_bucket(-n, 0, 32, 128) != want) bad = bad ? bad : 200000 + n;
    }
    for (int rp = 1; rp < 50; rp++) /* future keys: bucket 0 (masked anyway) */
        if (t5_rel_bucket(rp, 0, 32, 128) != 0) bad = bad ? bad : 300000 + rp;
    /* One assertion (Check records a mark per assertion); bad names the first wrong case:
     * encoder rp < 0 as rp − 100000, rp > 0 as rp, decoder n as 200000 + n, future as 300000 + rp. */
    ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(test_buckets_hostile)
{
    /* Degenerate configs must give a bucket inside the table, never crash or overflow. */
    int nbs[] = {1, 2, 3, 4, 5, 32, 1000};
    int mds[] = {1, 2, 3, 128, 1 << 30}, bad = 0;
    for (size_t a = 0; a < sizeof nbs / sizeof nbs[0]; a++)
        for (size_t b = 0; b < sizeof mds / sizeof mds[0]; b++)
            for (int rp = -5000; rp <= 5000; rp += 7)
                for (int bi = 0; bi < 2; bi++) {
                    int v = t5_rel_bucket(rp, bi, nbs[a], mds[b]);
                    bad += v < 0 || v >= (nbs[a] > 1 ? nbs[a] : 1);
                }
    ck_assert_int_eq(bad, 0); /* one assertion: Check records a mark per assertion */
}
END_TEST

/* ---- a tiny T5 in memory --------------------------------------------------------------------- */

enum { V = 29, H = 12, DKV = 5, NH = 3, INNER = NH * DKV, I = 20, LE = 2, LD = 2, NB = 8,
       MD = 12, CTX = 64 };

typedef struct tmodel {
    lr_model m;
    lr_layer enc[LE], dec[LD];
    void *bufs[256];
    int nb;
    int bf16;
} tmodel;

static uint32_t rng = 1;
static float frand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

/* A [rows, cols] matrix; BF16 by truncation (values read back exactly by the reference). */
static lr_mat tmat(tmodel *tm, int rows, int cols, float gain)
{
    size_t n = (size_t)rows * cols;
    void *d = malloc(n * (tm->bf16 ? 2 : 4));
    for (size_t i = 0; i < n; i++) {
        float f = frand() * gain;
        if (tm->bf16) {
            uint32_t b;
            memcpy(&b, &f, 4);
            ((uint16_t *)d)[i] = (uint16_t)(b >> 16);
        } else {
            ((float *)d)[i] = f;
        }
    }
    tm->bufs[tm->nb++] = d;
    return (lr_mat){tm->bf16 ? LR_DT_BF16 : LR_DT_F32, d, rows, cols, 0};
}

static float *tvec(tmodel *tm, int n, float base, float gain)
{
    float *v = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++)
        v[i] = base + gain * frand();
    tm->bufs[tm->nb++] = v;
    return v;
}

static void tattn(tmodel *tm, lr_mat *q, lr_mat *k, lr_mat *v, lr_mat *o)
{
    *q = tmat(tm, INNER, H, 0.5f);
    *k = tmat(tm, INNER, H, 1.0f);
    *v = tmat(tm, INNER, H, 1.0f);
    *o = tmat(tm, H, INNER, 1.0f);
}

static void tff(tmodel *tm, lr_layer *l, int gated)
{
    if (gated) l->gate = tmat(tm, I, H, 1.0f);
    l->up = tmat(tm, I, H, 1.0f);
    l->down = tmat(tm, H, I, 1.0f);
}

/* variant 0: gated-gelu (gelu_new), untied, F32; 1: relu, tied (scaled head), BF16. */
static tmodel *tmodel_new(int variant, uint32_t seed)
{
    rng = seed;
    tmodel *tm = calloc(1, sizeof *tm);
    tm->bf16 = variant == 1;
    int gated = variant == 0;
    lr_config *c = &tm->m.cfg;
    c->arch = LR_ARCH_T5;
    c->vocab = V;
    c->hidden = H;
    c->inter = I;
    c->n_layers = LE;
    c->n_dec_layers = LD;
    c->n_heads = NH;
    c->n_kv_heads = NH;
    c->head_dim = DKV;
    c->norm_eps = 1e-6f;
    c->act = gated ? LR_ACT_GELU_TANH : LR_ACT_RELU;
    c->gated_ff = gated;
    c->max_pos = CTX;
    c->tie_embed = !gated;
    c->rel_buckets = NB;
    c->rel_max_dist = MD;
    c->bos_id = -1;
    c->pad_id = 0;
    c->n_eos = 1;
    c->eos_ids[0] = 1;
    c->decoder_start_id = 0;
    tm->m.embed = tmat(tm, V, H, 2.0f);
    tm->m.lm_head = gated ? tmat(tm, V, H, 2.0f) : tm->m.embed;
    float *eb = tvec(tm, NB * NH, 0, 2.0f), *db = tvec(tm, NB * NH, 0, 2.0f);
    tm->m.enc_rel_bias = eb;
    tm->m.dec_rel_bias = db;
    for (int l = 0; l < LE; l++) {
        lr_layer *L = &tm->enc[l];
        L->attn_norm = tvec(tm, H, 1.0f, 0.2f);
        L->mlp_norm = tvec(tm, H, 1.0f, 0.2f);
        tattn(tm, &L->q, &L->k, &L->v, &L->o);
        tff(tm, L, gated);
    }
    for (int l = 0; l < LD; l++) {
        lr_layer *L = &tm->dec[l];
        L->attn_norm = tvec(tm, H, 1.0f, 0.2f);
        L->xattn_norm = tvec(tm, H, 1.0f, 0.2f);
        L->mlp_norm = tvec(tm, H, 1.0f, 0.2f);
        tattn(tm, &L->q, &L->k, &L->v, &L->o);
        tattn(tm, &L->xq, &L->xk, &L->xv, &L->xo);
        tff(tm, L, gated);
    }
    tm->m.enc_final_norm = tvec(tm, H, 1.0f, 0.2f);
    tm->m.final_norm = tvec(tm, H, 1.0f, 0.2f);
    tm->m.layers = tm->enc;
    tm->m.dec_layers = tm->dec;
    return tm;
}

static void tmodel_free(tmodel *tm)
{
    for (int i = 0; i < tm->nb; i++)
        free(tm->bufs[i]);
    free(tm);
}

/* ---- the naive double-precision reference (SPEC C.4) ------------------------------------------ */

static double wat(const lr_mat *W, int r, int c)
{
    size_t i = (size_t)r * W->cols + c;
    if (W->dtype == LR_DT_F32) return ((const float *)W->data)[i];
    uint32_t b = (uint32_t)((const uint16_t *)W->data)[i] << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* y[t, :] = x[t, :]·Wᵀ */
static void rlin(const lr_mat *W, const double *x, int T, double *y)
{
    for (int t = 0; t < T; t++)
        for (int o = 0; o < W->rows; o++) {
            double s = 0;
            for (int i = 0; i < W->cols; i++)
                s += x[(size_t)t * W->cols + i] * wat(W, o, i);
            y[(size_t)t * W->rows + o] = s;
        }
}

static void rnorm(const double *x, const float *w, int T, double *y)
{
    for (int t = 0; t < T; t++) {
        double ms = 0;
        for (int j = 0; j < H; j++)
            ms += x[t * H + j] * x[t * H + j];
        ms = 1.0 / sqrt(ms / H + 1e-6);
        for (int j = 0; j < H; j++)
            y[t * H + j] = w[j] * x[t * H + j] * ms;
    }
}

/* The bucket the way SPEC C.3 writes it, in double (identical for these small distances). */
static int rbucket(int rp, int bidi)
{
    int nb = NB, base = 0, n;
    if (bidi) {
        nb /= 2;
        base = rp > 0 ? nb : 0;
        n = abs(rp);
    } else {
        n = rp < 0 ? -rp : 0;
    }
    int me = nb / 2;
    if (n < me) return base + n;
    int v = me + (int)(log((double)n / me) / log((double)MD / me) * (nb - me));
    return base + (v < nb - 1 ? v : nb - 1);
}

/* out[Tq, H] = Attn(x → q, src → k, v) (+ bias kind: 0 none, 1 encoder, 2 decoder causal). */
static void rattn(const lr_mat *Wq, const lr_mat *Wk, const lr_mat *Wv, const lr_mat *Wo,
                  const double *x, int Tq, const double *src, int Tk, const float *bias, int kind,
                  double *out)
{
    double *q = malloc(sizeof(double) * Tq * INNER), *k = malloc(sizeof(double) * Tk * INNER);
    double *v = malloc(sizeof(double) * Tk * INNER), *a = calloc((size_t)Tq * INNER, 8);
    double *s = malloc(sizeof(double) * Tk);
    rlin(Wq, x, Tq, q);
    rlin(Wk, src, Tk, k);
    rlin(Wv, src, Tk, v);
    for (int h = 0; h < NH; h++)
        for (int i = 0; i < Tq; i++) {
            int nk = kind == 2 ? i + 1 : Tk;
            double mx = -1e300, sum = 0;
            for (int j = 0; j < nk; j++) {
                double d = 0;
                for (int e = 0; e < DKV; e++)
                    d += q[i * INNER + h * DKV + e] * k[j * INNER + h * DKV + e];
                if (kind) d += bias[rbucket(j - i, kind == 1) * NH + h];
                s[j] = d;
                if (d > mx) mx = d;
            }
            for (int j = 0; j < nk; j++)
                sum += (s[j] = exp(s[j] - mx));
            for (int j = 0; j < nk; j++)
                for (int e = 0; e < DKV; e++)
                    a[i * INNER + h * DKV + e] += s[j] / sum * v[j * INNER + h * DKV + e];
        }
    rlin(Wo, a, Tq, out);
    free(q);
    free(k);
    free(v);
    free(a);
    free(s);
}

static void rff(const lr_config *c, const lr_layer *L, const double *x, int T, double *out)
{
    double *g = malloc(sizeof(double) * T * I), *u = malloc(sizeof(double) * T * I);
    rlin(&L->up, x, T, u);
    if (c->gated_ff) rlin(&L->gate, x, T, g);
    for (int i = 0; i < T * I; i++) {
        double z = c->gated_ff ? g[i] : u[i];
        double a = c->gated_ff ? 0.5 * z * (1 + tanh(sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)))
                               : (z > 0 ? z : 0);
        g[i] = c->gated_ff ? a * u[i] : a;
    }
    rlin(&L->down, g, T, out);
    free(g);
    free(u);
}

/* Log-softmax of the decoder's last position's logits for encoder input enc, decoder input dec. */
static void ref_logprobs(const tmodel *tm, const int32_t *enc, int ne, const int32_t *dec, int nd,
                         double *lp)
{
    const lr_model *m = &tm->m;
    double *h = malloc(sizeof(double) * (ne > nd ? ne : nd) * H);
    double *x = malloc(sizeof(double) * (ne > nd ? ne : nd) * H);
    double *y = malloc(sizeof(double) * (ne > nd ? ne : nd) * H);
    double *eo = malloc(sizeof(double) * ne * H);
    for (int t = 0; t < ne; t++)
        for (int j = 0; j < H; j++)
            h[t * H + j] = wat(&m->embed, enc[t], j);
    for (int l = 0; l < LE; l++) {
        const lr_layer *L = &m->layers[l];
        rnorm(h, L->attn_norm, ne, x);
        rattn(&L->q, &L->k, &L->v, &L->o, x, ne, x, ne, m->enc_rel_bias, 1, y);
        for (int i = 0; i < ne * H; i++)
            h[i] += y[i];
        rnorm(h, L->mlp_norm, ne, x);
        rff(&m->cfg, L, x, ne, y);
        for (int i = 0; i < ne * H; i++)
            h[i] += y[i];
    }
    rnorm(h, m->enc_final_norm, ne, eo);
    for (int t = 0; t < nd; t++)
        for (int j = 0; j < H; j++)
            h[t * H + j] = wat(&m->embed, dec[t], j);
    for (int l = 0; l < LD; l++) {
        const lr_layer *L = &m->dec_layers[l];
        rnorm(h, L->attn_norm, nd, x);
        rattn(&L->q, &L->k, &L->v, &L->o, x, nd, x, nd, m->dec_rel_bias, 2, y);
        for (int i = 0; i < nd * H; i++)
            h[i] += y[i];
        rnorm(h, L->xattn_norm, nd, x);
        rattn(&L->xq, &L->xk, &L->xv, &L->xo, x, nd, eo, ne, NULL, 0, y);
        for (int i = 0; i < nd * H; i++)
            h[i] += y[i];
        rnorm(h, L->mlp_norm, nd, x);
        rff(&m->cfg, L, x, nd, y);
        for (int i = 0; i < nd * H; i++)
            h[i] += y[i];
    }
    rnorm(h, m->final_norm, nd, x);
    double *last = x + (size_t)(nd - 1) * H, mx = -1e300, sum = 0;
    for (int vv = 0; vv < V; vv++) {
        double d = 0;
        for (int j = 0; j < H; j++)
            d += last[j] * wat(&m->lm_head, vv, j);
        if (m->cfg.tie_embed) d *= 1.0 / sqrt((double)H);
        lp[vv] = d;
        if (d > mx) mx = d;
    }
    for (int vv = 0; vv < V; vv++)
        sum += exp(lp[vv] - mx);
    for (int vv = 0; vv < V; vv++)
        lp[vv] = lp[vv] - mx - log(sum);
    free(h);
    free(x);
    free(y);
    free(eo);
}

/* ---- driving the engine ---------------------------------------------------------------------- */

enum { MAXTOK = 24, MAXREQ = 12 };

typedef struct req {
    int32_t tok[MAXTOK];
    float lp[MAXTOK];
    int n, done;
    eng_finish fin;
} req;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static int on_event(void *user, const eng_event *ev)
{
    req *r = user;
    if (ev->token >= 0 && r->n < MAXTOK) {
        r->tok[r->n] = ev->token;
        r->lp[r->n++] = ev->logprob;
    }
    if (ev->finish != ENG_FINISH_NONE) {
        pthread_mutex_lock(&mu);
        r->done = 1;
        r->fin = ev->finish;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    return 0;
}

static void wait_req(req *r)
{
    pthread_mutex_lock(&mu);
    while (!r->done)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static eng_params params_for(const lr_model *m)
{
    eng_params p;
    memset(&p, 0, sizeof p);
    p.model = m;
    p.threads = 2;
    p.max_batch_tokens = 64;
    p.max_seqs = 16;
    p.kv_cache_bytes = 1 << 20;
    p.kv_block_tokens = 4;
    return p;
}

static eng_request_params greedy(const int32_t *prompt, int n, int max_tokens, req *r,
                                 const void *adapter)
{
    eng_request_params q;
    memset(&q, 0, sizeof q);
    q.prompt = prompt;
    q.n_prompt = n;
    q.max_tokens = max_tokens;
    q.ignore_eos = 1;
    q.sampling.top_p = 1.0f;
    q.sampling.repetition_penalty = 1.0f;
    q.adapter = adapter;
    q.cb = on_event;
    q.user = r;
    return q;
}

/* Run n requests (all at once if batch, else one after another). */
static void run_reqs(const eng_params *p, int32_t prompts[][40], const int *lens, int n, int max_tok,
                     int batch, const void *const *adapters, req *out)
{
    eng_engine *e;
    lr_error err;
    ck_assert_msg(eng_create(p, &err, &e) == 0, "%s", err.msg);
    memset(out, 0, sizeof(req) * n);
    for (int i = 0; i < n; i++) {
        eng_request_params q =
            greedy(prompts[i], lens[i], max_tok, &out[i], adapters ? adapters[i] : NULL);
        ck_assert_msg(eng_submit(e, &q, &err, NULL) == 0, "%s", err.msg);
        if (!batch) wait_req(&out[i]);
    }
    for (int i = 0; i < n; i++)
        wait_req(&out[i]);
    eng_destroy(e);
}

static int32_t P[MAXREQ][40];
static int PL[MAXREQ];

static void make_prompts(int n)
{
    for (int i = 0; i < n; i++) {
        PL[i] = 1 + (i * 7) % 37;
        for (int t = 0; t < PL[i]; t++)
            P[i][t] = 2 + (int32_t)((i * 31 + t * 17 + t * t) % (V - 2));
    }
}

START_TEST(test_forward_reference)
{
    tmodel *tm = tmodel_new(_i, 77 + _i);
    eng_params p = params_for(&tm->m);
    make_prompts(4);
    req out[4];
    int max_tok = 20; /* > 2·max_exact of the decoder: log buckets too */
    run_reqs(&p, P, PL, 4, max_tok, 1, NULL, out);
    double lp[V];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(out[i].n, max_tok);
        ck_assert_int_eq(out[i].fin, ENG_FINISH_LENGTH);
        int32_t dec[MAXTOK + 1] = {0};
        for (int k = 0; k < max_tok; k++) {
            ref_logprobs(tm, P[i], PL[i], dec, k + 1, lp);
            int best = 0;
            for (int vv = 1; vv < V; vv++)
                if (lp[vv] > lp[best]) best = vv;
            ck_assert_msg(out[i].tok[k] == best, "variant %d prompt %d step %d: token %d, ref %d",
                          _i, i, k, out[i].tok[k], best);
            ck_assert_msg(fabs(out[i].lp[k] - lp[best]) < 1e-4,
                          "variant %d prompt %d step %d: logprob %.7f, ref %.7f", _i, i, k,
                          out[i].lp[k], lp[best]);
            dec[k + 1] = out[i].tok[k];
        }
    }
    tmodel_free(tm);
}
END_TEST

START_TEST(test_batch_and_preempt)
{
    tmodel *tm = tmodel_new(0, 5);
    eng_params p = params_for(&tm->m);
    make_prompts(MAXREQ);
    req one[MAXREQ], many[MAXREQ], tight[MAXREQ];
    run_reqs(&p, P, PL, MAXREQ, 16, 0, NULL, one);
    run_reqs(&p, P, PL, MAXREQ, 16, 1, NULL, many);
    /* A pool of 24 blocks of 4 positions: 12 sequences of up to 37 + 17 positions cannot all
     * stay resident, so some are preempted and recomputed (encoder included). */
    eng_params tp = p;
    tp.kv_cache_bytes = (int64_t)24 * LD * 2 * 4 * INNER * (int64_t)sizeof(float);
    tp.max_batch_tokens = 40;
    run_reqs(&tp, P, PL, MAXREQ, 16, 1, NULL, tight);
    for (int i = 0; i < MAXREQ; i++) {
        ck_assert_int_eq(many[i].n, 16);
        ck_assert_int_eq(tight[i].n, 16);
        for (int k = 0; k < 16; k++) {
            ck_assert_int_eq(one[i].tok[k], many[i].tok[k]);
            ck_assert_int_eq(one[i].tok[k], tight[i].tok[k]);
            ck_assert(fabsf(one[i].lp[k] - many[i].lp[k]) < 1e-4f);
            ck_assert(fabsf(one[i].lp[k] - tight[i].lp[k]) < 1e-4f);
        }
    }
    tmodel_free(tm);
}
END_TEST

/* ---- LoRA hook coverage ---------------------------------------------------------------------- */

static int seen[LE + LD][LR_MOD_COUNT];
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;

static int rec_has(const void *a, int layer, lr_module mod)
{
    (void)a;
    return layer >= 0 && layer < LE + LD && mod >= 0 && mod < LR_MOD_COUNT;
}

static void rec_apply(const void *a, int layer, lr_module mod, const float *x, int ldx, float *y,
                      int ldy, const float *bias, int t0, int t1, float *scratch)
{
    (void)x, (void)ldx, (void)y, (void)ldy, (void)bias, (void)scratch;
    ck_assert_ptr_eq(a, (const void *)&seen);
    ck_assert_int_lt(t0, t1);
    pthread_mutex_lock(&seen_mu);
    seen[layer][mod]++;
    pthread_mutex_unlock(&seen_mu);
}

START_TEST(test_lora_layers)
{
    for (int v = 0; v < 2; v++) {
        tmodel *tm = tmodel_new(v, 9);
        eng_delta_ops ops = {rec_has, rec_apply, NULL, 8, NULL};
        eng_params p = params_for(&tm->m);
        p.delta = &ops;
        memset(seen, 0, sizeof seen);
        make_prompts(2);
        const void *ads[2] = {&seen, NULL};
        req out[2];
        run_reqs(&p, P, PL, 2, 3, 1, ads, out);
        for (int l = 0; l < LE + LD; l++)
            for (int mod = 0; mod < LR_MOD_COUNT; mod++) {
                int dec = l >= LE, x = mod >= LR_MOD_XQ;
                int expect = (!x || dec) && (mod != LR_MOD_GATE || v == 0);
                ck_assert_msg(!!seen[l][mod] == expect, "variant %d layer %d module %d: %d calls",
                              v, l, mod, seen[l][mod]);
            }
        tmodel_free(tm);
    }
}
END_TEST

/* ---- refusals -------------------------------------------------------------------------------- */

START_TEST(test_validation)
{
    tmodel *tm = tmodel_new(0, 3);
    eng_params p = params_for(&tm->m);
    p.max_batch_tokens = 16;
    eng_engine *e;
    lr_error err;
    ck_assert(eng_create(&p, &err, &e) == 0);
    int32_t prompt[32] = {5, 6, 7};
    req r;
    memset(&r, 0, sizeof r);
    eng_request_params q = greedy(prompt, 3, 4, &r, NULL);
    q.prompt_logprobs = 1;
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "encoder-decoder"));
    q = greedy(prompt, 16, 4, &r, NULL); /* 16 encoder rows + 1 decoder row > 16 */
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "max-batch-tokens"));
    prompt[1] = V;
    q = greedy(prompt, 3, 4, &r, NULL);
    ck_assert_int_eq(eng_submit(e, &q, &err, NULL), LR_EINVAL);
    eng_destroy(e);

    /* t5_forward itself refuses malformed batches without touching anything. */
    kern_pool *pool;
    kv_pool *kv;
    ck_assert(kern_pool_create(1, &err, &pool) == 0);
    kv_params kp = {LD, INNER, 4, 1 << 18, CTX, 0};
    ck_assert(kv_pool_create(&kp, &err, &kv) == 0);
    fwd_params fp = {&tm->m, pool, kv, 8, 4, NULL};
    t5_ctx *c;
    ck_assert(t5_create(&fp, &err, &c) == 0);
    kv_seq s;
    ck_assert(kv_seq_init(kv, &s) == 0);
    ck_assert(kv_seq_reserve(kv, &s, KV_CROSS, 3) == 0);
    ck_assert(kv_seq_reserve(kv, &s, KV_SELF, 2) == 0);
    kv_seq *sk[6] = {&s, &s, &s, &s, &s, &s};
    int32_t ids[6] = {5, 6, 7, 8, 9, 10}, pos_bad[6] = {0, 2, 3, 4, 5, 6};
    int32_t pos_ok[6] = {0, 1, 2, 3, 4, 5};
    int32_t dpos[2] = {0, 1}, dlen[2] = {3, 3}, dlen_bad[2] = {3, 9};
    t5_batch b = {3, ids, pos_bad, sk, NULL, 0, ids, dpos, sk, NULL, dlen};
    ck_assert_int_eq(t5_forward(c, &b, &err), LR_EINVAL); /* encoder rows skip a position */
    b.enc_pos = pos_ok;
    b.n_enc = 5; /* past the cross-attention table (one block of 4) */
    ck_assert_int_eq(t5_forward(c, &b, &err), LR_EINVAL);
    b.n_enc = 3;
    b.n_dec = 2;
    b.dec_enc_len = dlen_bad;
    ck_assert_int_eq(t5_forward(c, &b, &err), LR_EINVAL);
    b.dec_enc_len = dlen;
    ck_assert_int_eq(t5_forward(c, &b, &err), 0);
    b.n_enc = 0;
    b.n_dec = 0;
    ck_assert_int_eq(t5_forward(c, &b, &err), LR_EINVAL); /* empty */
    fp.model = NULL;
    kv_seq_release(kv, &s);
    kv_seq_free(&s);
    t5_destroy(c);
    kv_pool_destroy(kv);
    kern_pool_destroy(pool);
    tmodel_free(tm);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("t5");
    TCase *tc = tcase_create("buckets");
    tcase_add_test(tc, test_buckets_spec);
    tcase_add_test(tc, test_buckets_hostile);
    suite_add_tcase(s, tc);
    tc = tcase_create("forward");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_forward_reference, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("batching");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_batch_and_preempt);
    suite_add_tcase(s, tc);
    tc = tcase_create("lora");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_lora_layers);
    suite_add_tcase(s, tc);
    tc = tcase_create("validation");
    tcase_add_test(tc, test_validation);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
