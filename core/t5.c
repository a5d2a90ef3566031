/* t5.c — the T5 / Flan-T5 encoder-decoder forward pass over a batch (SPEC-HF section C).
 *
 * Encoder block:  h += SelfAttn(RMS0(h)) [bidirectional bias];  h += FF(RMS1(h)).
 * Decoder block:  h += SelfAttn(RMS0(h)) [causal, unidirectional bias];
 *                 h += CrossAttn(RMS1(h), enc_out);  h += FF(RMS2(h)).
 * Attention has no 1/sqrt(d_kv) scaling; the relative bias comes from block 0's table of each
 * stack and is shared by every block; cross-attention has no bias. FF is wo(act(wi(x))) or
 * wo(act(wi_0(x)) ⊙ wi_1(x)). The tied head scales the decoder output by d_model^-0.5.
 *
 * Like forward.c, one matmul per linear runs over all rows of the batch, then the LoRA hook per
 * run of rows sharing an adapter; the K/V of the decoder and the cross-attention K/V of each
 * sequence live in its KV blocks. This module schedules nothing: that is core/engine.
 */
#include "t5.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { T5_ATT_ENC = 0, T5_ATT_DEC = 1, T5_ATT_CROSS = 2 };

struct t5_ctx {
    fwd_params par;
    const lr_model *m;
    int H, I, nH, dkv, inner, V, Le, Ld, maxpos;
    int nth;
    float *h;        // (T, H) residual stream
    float *x;        // (T, H) block output before the residual add
    float *xn;       // (T, H) normed block input; after a stack: its final-normed output
    float *q;        // (T, inner)
    float *k;        // (T, inner) encoder self-attention keys (the decoder's go to the KV pool)
    float *v;        // (T, inner)
    float *att;      // (T, inner) attention output, heads concatenated
    float *g;        // (T, I) wi_0, then act(wi_0)·wi_1 (gated) — or act(wi) (relu)
    float *u;        // (T, I) wi_1 / wi
    float *scores;   // (nth, maxpos) attention scores per thread
    float *panel;    // matmul panel scratch
    float *dscratch; // (T, delta->scratch_per_token) LoRA scratch
    float *gath;     // (max_logit_rows, H) rows gathered for the lm_head
    int *seg0;       // (T) first row of the encoder row's sequence in the batch
    int *seglen;     // (T) that sequence's encoder length
    int *enc_bucket; // (2*maxpos - 1) bidirectional bucket of rp, index rp + maxpos - 1
    int *dec_bucket; // (maxpos) unidirectional bucket of rp = -n, index n
    /* Task context of the attention kernels. */
    int mode, layer;
    const t5_batch *batch;
};

int t5_rel_bucket(int rp, int bidirectional, int num_buckets, int max_distance)
{
    int base = 0, n, nb = num_buckets;
    if (bidirectional) {
        nb /= 2;
        if (rp > 0) base = nb;
        n = rp < 0 ? -rp : rp;
    } else {
        n = rp < 0 ? -rp : 0; /* future keys → bucket 0 (masked anyway) */
    }
    int max_exact = nb / 2;
    if (n < max_exact) return base + n;
    if (max_exact < 1) return base + (nb > 0 ? nb - 1 : 0);
    // HF: max_exact + long( log(float(n)/max_exact) / math.log(MD/max_exact) · (nb − max_exact) ),
    // in fp32 with the Python double denominator rounded to fp32, truncated toward 0.
    float den = (float)log((double)max_distance / (double)max_exact);
    float r = logf((float)n / (float)max_exact) / den * (float)(nb - max_exact);
    int v;
    if (!(r == r) || r >= (float)nb)
        v = nb - 1; /* hostile configs (max_distance <= max_exact): clamp like min() */
    else
        v = max_exact + (int)r;
    if (v > nb - 1) v = nb - 1;
    if (v < 0) v = 0;
    return base + v;
}

static void *t5_alloc(size_t n, size_t size, int *fail)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) *fail = 1;
    return p;
}

int t5_create(const fwd_params *p, lr_error *err, t5_ctx **out)
{
    *out = NULL;
    const lr_model *m = p->model;
    const lr_config *cf = &m->cfg;
    if (cf->arch != LR_ARCH_T5)
        return lr_error_set(err, LR_EUNSUPPORTED, "t5: the model is not a T5 model");
    if (p->max_tokens < 1 || p->max_logit_rows < 1)
        return lr_error_set(err, LR_EINVAL,
                            "t5: max_tokens (%d) and max_logit_rows (%d) must be at least 1",
                            p->max_tokens, p->max_logit_rows);
    if (cf->n_heads < 1 || cf->head_dim < 1 || cf->hidden < 1 || cf->inter < 1 || cf->vocab < 1 ||
        cf->n_layers < 1 || cf->n_dec_layers < 1 || cf->max_pos < 1 || cf->rel_buckets < 1 ||
        !m->dec_layers || !m->enc_rel_bias || !m->dec_rel_bias)
        return lr_error_set(err, LR_EINVAL,
                            "t5: unusable model shape (heads %d, d_kv %d, d_model %d, d_ff %d, "
                            "vocab %d, layers %d+%d, context %d, buckets %d)",
                            cf->n_heads, cf->head_dim, cf->hidden, cf->inter, cf->vocab,
                            cf->n_layers, cf->n_dec_layers, cf->max_pos, cf->rel_buckets);
    t5_ctx *c = calloc(1, sizeof *c);
    if (!c) return lr_error_set(err, LR_ENOMEM, "t5: out of memory");
    c->par = *p;
    c->m = m;
    c->H = cf->hidden;
    c->I = cf->inter;
    c->nH = cf->n_heads;
    c->dkv = cf->head_dim;
    c->inner = c->nH * c->dkv;
    c->V = cf->vocab;
    c->Le = cf->n_layers;
    c->Ld = cf->n_dec_layers;
    c->maxpos = cf->max_pos;
    c->nth = kern_pool_threads(p->pool);
    size_t T = (size_t)p->max_tokens, F = sizeof(float);
    int fail = 0;
    c->h = t5_alloc(T * c->H, F, &fail);
    c->x = t5_alloc(T * c->H, F, &fail);
    c->xn = t5_alloc(T * c->H, F, &fail);
    c->q = t5_alloc(T * c->inner, F, &fail);
    c->k = t5_alloc(T * c->inner, F, &fail);
    c->v = t5_alloc(T * c->inner, F, &fail);
    c->att = t5_alloc(T * c->inner, F, &fail);
    c->g = t5_alloc(T * c->I, F, &fail);
    c->u = t5_alloc(T * c->I, F, &fail);
    c->scores = t5_alloc((size_t)c->nth * (size_t)c->maxpos, F, &fail);
    int64_t maxin = c->H > c->I ? c->H : c->I;
    if (c->inner > maxin) maxin = c->inner;
    c->panel = t5_alloc(kern_matmul_scratch_floats(maxin), F, &fail);
    int spt = p->delta ? p->delta->scratch_per_token : 0;
    c->dscratch = t5_alloc(T * (size_t)(spt > 0 ? spt : 0), F, &fail);
    c->gath = t5_alloc((size_t)p->max_logit_rows * c->H, F, &fail);
    c->seg0 = t5_alloc(T, sizeof(int), &fail);
    c->seglen = t5_alloc(T, sizeof(int), &fail);
    c->enc_bucket = t5_alloc(2 * (size_t)c->maxpos, sizeof(int), &fail);
    c->dec_bucket = t5_alloc((size_t)c->maxpos, sizeof(int), &fail);
    if (fail) {
        t5_destroy(c);
        return lr_error_set(err, LR_ENOMEM, "t5: cannot allocate activation buffers for %d tokens",
                            p->max_tokens);
    }
    // Buckets depend only on the distance: tabulate them once for every distance in the context.
    for (int rp = -(c->maxpos - 1); rp <= c->maxpos - 1; rp++)
        c->enc_bucket[rp + c->maxpos - 1] = t5_rel_bucket(rp, 1, cf->rel_buckets, cf->rel_max_dist);
    for (int n = 0; n < c->maxpos; n++)
        c->dec_bucket[n] = t5_rel_bucket(-n, 0, cf->rel_buckets, cf->rel_max_dist);
    *out = c;
    return 0;
}

void t5_destroy(t5_ctx *c)
{
    if (!c) return;
    void *bufs[] = {c->h,      c->x,    c->xn,       c->q,          c->k,
                    c->v,      c->att,  c->g,        c->u,          c->scores,
                    c->panel,  c->dscratch, c->gath, c->seg0,       c->seglen,
                    c->enc_bucket, c->dec_bucket};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(c);
}

/* Rows 0..n-1 of one stack, with their adapters (NULL array: no adapters). */
typedef struct t5_rows {
    int n;
    const void *const *adapter;
} t5_rows;

/* The LoRA hook: for each maximal run of rows sharing a non-NULL adapter that has (layer, mod),
 * add the adapter's delta to y in place. */
static void t5_hook(t5_ctx *c, const t5_rows *r, int layer, lr_module mod, const float *x, int ldx,
                    float *y, int ldy)
{
    const eng_delta_ops *d = c->par.delta;
    if (!d || !r->adapter) return;
    int t = 0;
    while (t < r->n) {
        const void *a = r->adapter[t];
        int t1 = t + 1;
        while (t1 < r->n && r->adapter[t1] == a)
            t1++;
        if (a && d->has_module(a, layer, mod))
            d->apply(a, layer, mod, x, ldx, y, ldy, NULL, t, t1, c->dscratch);
        t = t1;
    }
}

/* y[n, W.rows] = x·Wᵀ (+ LoRA delta). T5 linears have no bias. */
static void t5_linear(t5_ctx *c, const t5_rows *r, int layer, lr_module mod, const lr_mat *W,
                      const float *x, int ldx, float *y, int ldy)
{
    kern_matmul(c->par.pool, y, ldy, x, ldx, r->n, W, c->panel);
    t5_hook(c, r, layer, mod, x, ldx, y, ldy);
}

/* Attention for (row, head) items split across threads, per c->mode:
 *   ENC:   row t of a sequence whose encoder rows are seg0..seg0+len-1 in this batch, query
 *          position i: s_j = q·k_j + bias_enc[h, bucket(j − i)] for j < len (keys from c->k);
 *   DEC:   decoder row at position p: s_j = q·k_j + bias_dec[h, bucket(j − p)] for j <= p
 *          (keys from the sequence's KV_SELF table);
 *   CROSS: s_j = q·k_j for j < enc_len (keys from the KV_CROSS table).
 * a = softmax(s) in fp32; out_h = Σ_j a_j · v_j. No 1/sqrt(d_kv) scaling (T5). */
static void t5_attn_task(void *ctx, int ith, int nth)
{
    t5_ctx *c = ctx;
    const t5_batch *b = c->batch;
    const lr_model *m = c->m;
    const kv_pool *kvp = c->par.kv;
    int l = c->layer, nH = c->nH, dkv = c->dkv;
    int n = c->mode == T5_ATT_ENC ? b->n_enc : b->n_dec;
    float *sc = c->scores + (size_t)ith * (size_t)c->maxpos;
    int64_t items = (int64_t)n * nH;
    for (int64_t it = ith; it < items; it += nth) {
        int t = (int)(it / nH), h = (int)(it % nH);
        const float *q = c->q + (size_t)t * c->inner + (size_t)h * dkv;
        float *o = c->att + (size_t)t * c->inner + (size_t)h * dkv;
        memset(o, 0, sizeof(float) * (size_t)dkv);
        if (c->mode == T5_ATT_ENC) {
            int s0 = c->seg0[t], len = c->seglen[t], i = b->enc_pos[t];
            const int *bk = c->enc_bucket + (c->maxpos - 1) - i; /* bk[j] = bucket(j − i) */
            for (int j = 0; j < len; j++)
                sc[j] = kern_dot_f32(q, c->k + (size_t)(s0 + j) * c->inner + (size_t)h * dkv, dkv) +
                        m->enc_rel_bias[(size_t)bk[j] * nH + h];
            kern_softmax(sc, len);
            for (int j = 0; j < len; j++)
                kern_axpy(o, sc[j], c->v + (size_t)(s0 + j) * c->inner + (size_t)h * dkv, dkv);
        } else {
            const kv_seq *s = b->dec_kv[t];
            kv_table tb = c->mode == T5_ATT_DEC ? KV_SELF : KV_CROSS;
            int p = b->dec_pos[t];
            int len = c->mode == T5_ATT_DEC ? p + 1 : b->dec_enc_len[t];
            for (int j = 0; j < len; j++) {
                sc[j] = kern_dot_f32(q, kv_k(kvp, s, tb, l, j) + (size_t)h * dkv, dkv);
                if (c->mode == T5_ATT_DEC)
                    sc[j] += m->dec_rel_bias[(size_t)c->dec_bucket[p - j] * nH + h];
            }
            kern_softmax(sc, len);
            for (int j = 0; j < len; j++)
                kern_axpy(o, sc[j], kv_v(kvp, s, tb, l, j) + (size_t)h * dkv, dkv);
        }
    }
}

static void t5_attend(t5_ctx *c, int mode, int layer)
{
    c->mode = mode;
    c->layer = layer;
    kern_pool_run(c->par.pool, t5_attn_task, c);
}

/* x = FF(xn): wo(act(wi(xn))) or wo(act(wi_0(xn)) ⊙ wi_1(xn)); LoRA layer number `ll`. */
static void t5_ff(t5_ctx *c, const t5_rows *r, int ll, const lr_layer *L)
{
    const lr_config *cf = &c->m->cfg;
    int n = r->n, H = c->H, I = c->I;
    if (cf->gated_ff) {
        t5_linear(c, r, ll, LR_MOD_GATE, &L->gate, c->xn, H, c->g, I);
        t5_linear(c, r, ll, LR_MOD_UP, &L->up, c->xn, H, c->u, I);
        kern_act_mul(c->g, c->u, (int64_t)n * I, cf->act);
    } else {
        t5_linear(c, r, ll, LR_MOD_UP, &L->up, c->xn, H, c->g, I);
        kern_act_mul(c->g, NULL, (int64_t)n * I, cf->act);
    }
    t5_linear(c, r, ll, LR_MOD_DOWN, &L->down, c->g, I, c->x, H);
}

static void t5_embed(t5_ctx *c, int n, const int32_t *ids)
{
    for (int t = 0; t < n; t++)
        kern_mat_row(&c->m->embed, ids[t], c->h + (size_t)t * c->H);
}

/* Check the batch; fill seg0/seglen of the encoder rows. */
static int t5_check(t5_ctx *c, const t5_batch *b, lr_error *err)
{
    const kv_pool *kvp = c->par.kv;
    int T = c->par.max_tokens;
    if (b->n_enc < 0 || b->n_enc > T || b->n_dec < 0 || b->n_dec > T ||
        b->n_enc + b->n_dec < 1)
        return lr_error_set(err, LR_EINVAL,
                            "t5: batch of %d encoder and %d decoder rows (each 0..%d, not both 0)",
                            b->n_enc, b->n_dec, T);
    for (int t = 0; t < b->n_enc; t++) {
        int id = b->enc_ids[t], p = b->enc_pos[t];
        if (id < 0 || id >= c->V)
            return lr_error_set(err, LR_EINVAL,
                                "t5: encoder row %d has token id %d outside [0, %d)", t, id, c->V);
        int cont = t > 0 && b->enc_kv[t - 1] == b->enc_kv[t] && p == b->enc_pos[t - 1] + 1;
        if (!(p == 0 || cont) || p >= c->maxpos ||
            p >= kv_seq_capacity(kvp, b->enc_kv[t], KV_CROSS))
            return lr_error_set(err, LR_EINVAL,
                                "t5: encoder row %d at position %d does not continue its "
                                "sequence's prompt from 0, or lies outside its cross-attention "
                                "table (%d) or the context (%d)",
                                t, p, kv_seq_capacity(kvp, b->enc_kv[t], KV_CROSS), c->maxpos);
        c->seg0[t] = t - p;
    }
    for (int t = b->n_enc - 1; t >= 0; t--)
        c->seglen[t] = (t + 1 < b->n_enc && c->seg0[t + 1] == c->seg0[t]) ? c->seglen[t + 1]
                                                                           : b->enc_pos[t] + 1;
    for (int t = 0; t < b->n_dec; t++) {
        int id = b->dec_ids[t], p = b->dec_pos[t], ne = b->dec_enc_len[t];
        if (id < 0 || id >= c->V)
            return lr_error_set(err, LR_EINVAL,
                                "t5: decoder row %d has token id %d outside [0, %d)", t, id, c->V);
        if (p < 0 || p >= c->maxpos || p >= kv_seq_capacity(kvp, b->dec_kv[t], KV_SELF))
            return lr_error_set(err, LR_EINVAL,
                                "t5: decoder row %d has position %d outside its KV table (%d) or "
                                "the context (%d)",
                                t, p, kv_seq_capacity(kvp, b->dec_kv[t], KV_SELF), c->maxpos);
        if (ne < 1 || ne > c->maxpos || ne > kv_seq_capacity(kvp, b->dec_kv[t], KV_CROSS))
            return lr_error_set(err, LR_EINVAL,
                                "t5: decoder row %d has encoder length %d outside 1..%d (its "
                                "cross-attention table holds %d)",
                                t, ne, c->maxpos, kv_seq_capacity(kvp, b->dec_kv[t], KV_CROSS));
    }
    return 0;
}

int t5_forward(t5_ctx *c, const t5_batch *b, lr_error *err)
{
    const lr_model *m = c->m;
    const lr_config *cf = &m->cfg;
    int H = c->H, inner = c->inner;
    int rc = t5_check(c, b, err);
    if (rc) return rc;
    c->batch = b;
    kv_pool *kvp = c->par.kv;

    // ---- Encoder: every new sequence's prompt, then its cross-attention K/V per decoder block.
    if (b->n_enc > 0) {
        t5_rows r = {b->n_enc, b->enc_adapter};
        int n = r.n;
        t5_embed(c, n, b->enc_ids);
        for (int l = 0; l < c->Le; l++) {
            const lr_layer *L = &m->layers[l];
            kern_rmsnorm(c->xn, c->h, L->attn_norm, n, H, cf->norm_eps);
            t5_linear(c, &r, l, LR_MOD_Q, &L->q, c->xn, H, c->q, inner);
            t5_linear(c, &r, l, LR_MOD_K, &L->k, c->xn, H, c->k, inner);
            t5_linear(c, &r, l, LR_MOD_V, &L->v, c->xn, H, c->v, inner);
            t5_attend(c, T5_ATT_ENC, l);
            t5_linear(c, &r, l, LR_MOD_O, &L->o, c->att, inner, c->x, H);
            kern_add(c->h, c->x, (int64_t)n * H);
            kern_rmsnorm(c->xn, c->h, L->mlp_norm, n, H, cf->norm_eps);
            t5_ff(c, &r, l, L);
            kern_add(c->h, c->x, (int64_t)n * H);
        }
        kern_rmsnorm(c->xn, c->h, m->enc_final_norm, n, H, cf->norm_eps); // enc_out (n, H)
        for (int l = 0; l < c->Ld; l++) {
            const lr_layer *D = &m->dec_layers[l];
            int ll = c->Le + l;
            t5_linear(c, &r, ll, LR_MOD_XK, &D->xk, c->xn, H, c->k, inner);
            t5_linear(c, &r, ll, LR_MOD_XV, &D->xv, c->xn, H, c->v, inner);
            for (int t = 0; t < n; t++) {
                memcpy(kv_k(kvp, b->enc_kv[t], KV_CROSS, l, b->enc_pos[t]),
                       c->k + (size_t)t * inner, sizeof(float) * (size_t)inner);
                memcpy(kv_v(kvp, b->enc_kv[t], KV_CROSS, l, b->enc_pos[t]),
                       c->v + (size_t)t * inner, sizeof(float) * (size_t)inner);
            }
        }
    }

    // ---- Decoder rows.
    if (b->n_dec > 0) {
        t5_rows r = {b->n_dec, b->dec_adapter};
        int n = r.n;
        t5_embed(c, n, b->dec_ids);
        for (int l = 0; l < c->Ld; l++) {
            const lr_layer *D = &m->dec_layers[l];
            int ll = c->Le + l;
            kern_rmsnorm(c->xn, c->h, D->attn_norm, n, H, cf->norm_eps);
            t5_linear(c, &r, ll, LR_MOD_Q, &D->q, c->xn, H, c->q, inner);
            t5_linear(c, &r, ll, LR_MOD_K, &D->k, c->xn, H, c->k, inner);
            t5_linear(c, &r, ll, LR_MOD_V, &D->v, c->xn, H, c->v, inner);
            for (int t = 0; t < n; t++) {
                memcpy(kv_k(kvp, b->dec_kv[t], KV_SELF, l, b->dec_pos[t]),
                       c->k + (size_t)t * inner, sizeof(float) * (size_t)inner);
                memcpy(kv_v(kvp, b->dec_kv[t], KV_SELF, l, b->dec_pos[t]),
                       c->v + (size_t)t * inner, sizeof(float) * (size_t)inner);
            }
            t5_attend(c, T5_ATT_DEC, l);
            t5_linear(c, &r, ll, LR_MOD_O, &D->o, c->att, inner, c->x, H);
            kern_add(c->h, c->x, (int64_t)n * H);
            kern_rmsnorm(c->xn, c->h, D->xattn_norm, n, H, cf->norm_eps);
            t5_linear(c, &r, ll, LR_MOD_XQ, &D->xq, c->xn, H, c->q, inner);
            t5_attend(c, T5_ATT_CROSS, l);
            t5_linear(c, &r, ll, LR_MOD_XO, &D->xo, c->att, inner, c->x, H);
            kern_add(c->h, c->x, (int64_t)n * H);
            kern_rmsnorm(c->xn, c->h, D->mlp_norm, n, H, cf->norm_eps);
            t5_ff(c, &r, ll, D);
            kern_add(c->h, c->x, (int64_t)n * H);
        }
        kern_rmsnorm(c->xn, c->h, m->final_norm, n, H, cf->norm_eps);
        if (cf->tie_embed) {
            // transformers v4: with a tied head the decoder output is scaled by d_model^-0.5
            // (fp32 tensor times a Python float) before the lm_head.
            float sc = (float)pow((double)H, -0.5);
            for (int64_t i = 0; i < (int64_t)n * H; i++)
                c->xn[i] *= sc;
        }
    }
    return 0;
}

void t5_logits(t5_ctx *c, const int32_t *rows, int n, float *logits)
{
    LR_ASSERT(n >= 0 && n <= c->par.max_logit_rows);
    if (n == 0) return;
    for (int i = 0; i < n; i++)
        memcpy(c->gath + (size_t)i * c->H, c->xn + (size_t)rows[i] * c->H,
               sizeof(float) * (size_t)c->H);
    kern_matmul(c->par.pool, logits, c->V, c->gath, c->H, n, &c->m->lm_head, c->panel);
}
