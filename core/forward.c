/* forward.c — the decoder-only transformer forward pass over a batch of tokens (SPEC-HF B.3–B.5).
 *
 * For every layer: RMSNorm → q/k/v (one matmul each over all rows, + bias, + LoRA hook) → RoPE →
 * K/V appended to each row's sequence blocks → causal (optionally sliding-window) GQA attention
 * of every row over its own sequence → o_proj → residual → RMSNorm → gate/up → SiLU(gate)⊙up →
 * down → residual. Then the final norm. Logits are computed separately, only for the rows the
 * engine samples from. This module schedules nothing and samples nothing: that is core/engine.
 */
#include "forward.h"

#include "kern_attn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fwd_ctx {
    fwd_params par;
    const lr_model *m;
    int H, I, nH, nKV, hd, qd, kvd, V;
    int nth;
    /* Activations, all for max_tokens rows (T). */
    float *h;        // (T, H) residual stream
    float *x;        // (T, H) output of o_proj / down_proj before the residual add
    float *xn;       // (T, H) normed input of a block; after the last layer: final hidden state
    float *q;        // (T, nH*hd)
    float *k;        // (T, nKV*hd)
    float *v;        // (T, nKV*hd)
    float *att;      // (T, nH*hd) attention output (heads concatenated)
    float *g;        // (T, I) gate, then act(gate)*up
    float *u;        // (T, I) up
    float *cos;      // (T, hd/2) RoPE tables of this batch's positions
    float *sin;      // (T, hd/2)
    /* Attention (fwd_attn_task): per thread slot, the kernel's scratch and the K/V block bases
     * of the job's sequence; the jobs of the batch, (first row, query rows, KV head) each. */
    float *attn_scr;           // (nth, attn_scr_floats)
    size_t attn_scr_floats;
    const float **attn_blk;    // (nth, 2, attn_max_blocks) key then value block bases
    int attn_max_blocks;
    int *attn_busy;            // (nth) slot taken
    int *job_t0, *job_nq, *job_kvh; // (max_jobs) each job's rows and KV head
    int *job_k0, *job_k1, *job_part; // key range of a part (split decode row), its part or -1
    int max_jobs;
    float *attn_part;  // (max_parts, rep, hd) a part's unnormalised output
    float *attn_ml;    // (max_parts, rep, 2) its running max and sum per row
    int max_parts, n_parts;
    int *grp_job0, *grp_n; // (max_parts) split rows: first part's job and part count
    int n_grps;
    float *panel;    // matmul panel scratch (KERN_PANEL_ROWS, max in-dim)
    float *dscratch; // (T, delta->scratch_per_token) LoRA scratch
    float *dy;       // KERN_GROUP_MAX × (T, widest linear output): LoRA deltas computed alongside
    size_t dy_stride; // the GEMM, one region per matrix of a group
    float *gath;     // (max_logit_rows, H) rows gathered for the lm_head
    int layer;       // layer being attended (task context)
    const fwd_batch *batch;
    /* LoRA hook pieces of the current linear: rows [p_t0[i], p_t1[i]) share adapter p_ad[i]. */
    int *p_t0, *p_t1;   // (KERN_GROUP_MAX · T)
    const void **p_ad;  // (KERN_GROUP_MAX · T)
    int *p_g;           // (KERN_GROUP_MAX · T) fwd_linears: the piece's matrix in the group
    lr_module g_mod[KERN_GROUP_MAX]; // fwd_linears: the group's modules and delta buffers
    float *g_dy[KERN_GROUP_MAX];
    int g_ldy[KERN_GROUP_MAX];
    int n_pieces;
    lr_module h_mod;    // hook task context: module, input and output of the linear
    const float *h_x, *h_bias;
    float *h_y;
    int h_ldx, h_ldy;
};

/* Query positions per attention job: 16 positions × 3 query heads per KV head (SmolLM) are 48
 * rows, three AVX-512 vectors, whose transposed queries and scores of one key chunk stay in L1. */
#define FWD_ATTN_QB 16
/* A decode row whose context holds at least 2·FWD_ATTN_SPLIT_KEYS keys is attended in parts of
 * at least FWD_ATTN_SPLIT_KEYS keys (at most FWD_ATTN_SPLITS), one job each, combined after
 * (split decoding): one sequence's 3 KV-head jobs no longer leave one of 2 threads idle for a
 * third of the time, and each part streams its own keys. The parts depend only on the row's
 * position, never on the batch, so a row's result is the same alone or batched. */
#define FWD_ATTN_SPLIT_KEYS 512
#define FWD_ATTN_SPLITS 8
/* Batches of at least this many rows split RoPE and the K/V copy across the pool. */
#define FWD_ROPE_PAR_ROWS 32

static void *fwd_alloc(size_t n_floats, int *fail)
{
    if (n_floats == 0) n_floats = 1;
    void *p = calloc(n_floats, sizeof(float));
    if (!p) *fail = 1;
    return p;
}

int fwd_create(const fwd_params *p, lr_error *err, fwd_ctx **out)
{
    *out = NULL;
    const lr_model *m = p->model;
    const lr_config *cf = &m->cfg;
    if (cf->arch == LR_ARCH_T5)
        return lr_error_set(err, LR_EUNSUPPORTED,
                            "the forward pass does not run T5 (encoder-decoder) models yet");
    if (p->max_tokens < 1 || p->max_logit_rows < 1)
        return lr_error_set(err, LR_EINVAL,
                            "forward: max_tokens (%d) and max_logit_rows (%d) "
                            "must be at least 1",
                            p->max_tokens, p->max_logit_rows);
    if (cf->n_heads < 1 || cf->n_kv_heads < 1 || cf->n_heads % cf->n_kv_heads != 0 ||
        cf->head_dim < 2 || cf->head_dim % 2 != 0 || cf->hidden < 1 || cf->inter < 1 ||
        cf->vocab < 1 || cf->n_layers < 1 || cf->max_pos < 1)
        return lr_error_set(err, LR_EINVAL,
                            "forward: unusable model shape (heads %d, kv heads %d, head_dim %d, "
                            "hidden %d, intermediate %d, vocab %d, layers %d, context %d)",
                            cf->n_heads, cf->n_kv_heads, cf->head_dim, cf->hidden, cf->inter,
                            cf->vocab, cf->n_layers, cf->max_pos);
    fwd_ctx *c = calloc(1, sizeof *c);
    if (!c) return lr_error_set(err, LR_ENOMEM, "forward: out of memory");
    c->par = *p;
    c->m = m;
    c->H = cf->hidden;
    c->I = cf->inter;
    c->nH = cf->n_heads;
    c->nKV = cf->n_kv_heads;
    c->hd = cf->head_dim;
    c->qd = c->nH * c->hd;
    c->kvd = c->nKV * c->hd;
    c->V = cf->vocab;
    c->nth = kern_pool_threads(p->pool);
    size_t T = (size_t)p->max_tokens;
    int fail = 0;
    c->h = fwd_alloc(T * c->H, &fail);
    c->x = fwd_alloc(T * c->H, &fail);
    c->xn = fwd_alloc(T * c->H, &fail);
    c->q = fwd_alloc(T * c->qd, &fail);
    c->k = fwd_alloc(T * c->kvd, &fail);
    c->v = fwd_alloc(T * c->kvd, &fail);
    c->att = fwd_alloc(T * c->qd, &fail);
    c->g = fwd_alloc(T * c->I, &fail);
    c->u = fwd_alloc(T * c->I, &fail);
    c->cos = fwd_alloc(T * (c->hd / 2), &fail);
    c->sin = fwd_alloc(T * (c->hd / 2), &fail);
    c->attn_scr_floats = kern_attn_scratch_floats(FWD_ATTN_QB, c->nH / c->nKV, c->hd);
    c->attn_scr = fwd_alloc((size_t)c->nth * c->attn_scr_floats, &fail);
    c->attn_max_blocks = cf->max_pos / (p->kv ? kv_block_tokens(p->kv) : 1) + 1;
    c->attn_blk = calloc((size_t)c->nth * 2 * (size_t)c->attn_max_blocks, sizeof(float *));
    c->attn_busy = calloc((size_t)c->nth, sizeof(int));
    /* decode rows (at most one per sequence: max_logit_rows of them) may become parts */
    c->max_parts = p->max_logit_rows * c->nKV * FWD_ATTN_SPLITS;
    c->max_jobs = (int)T * c->nKV + c->max_parts;
    int rp = c->nH / c->nKV;
    c->job_t0 = calloc((size_t)c->max_jobs, sizeof(int));
    c->job_nq = calloc((size_t)c->max_jobs, sizeof(int));
    c->job_kvh = calloc((size_t)c->max_jobs, sizeof(int));
    c->job_k0 = calloc((size_t)c->max_jobs, sizeof(int));
    c->job_k1 = calloc((size_t)c->max_jobs, sizeof(int));
    c->job_part = calloc((size_t)c->max_jobs, sizeof(int));
    c->grp_job0 = calloc((size_t)c->max_parts, sizeof(int));
    c->grp_n = calloc((size_t)c->max_parts, sizeof(int));
    c->attn_part = fwd_alloc((size_t)c->max_parts * rp * c->hd, &fail);
    c->attn_ml = fwd_alloc((size_t)c->max_parts * rp * 2, &fail);
    if (!c->attn_blk || !c->attn_busy || !c->job_t0 || !c->job_nq || !c->job_kvh ||
        !c->job_k0 || !c->job_k1 || !c->job_part || !c->grp_job0 || !c->grp_n)
        fail = 1;
    int64_t maxin = c->H > c->I ? c->H : c->I;
    if (c->qd > maxin) maxin = c->qd;
    c->panel = fwd_alloc(kern_matmul_scratch_floats(maxin), &fail);
    int spt = p->delta ? p->delta->scratch_per_token : 0;
    /* one scratch per matrix of a group: a group's pieces for the same rows run at once */
    c->dscratch = fwd_alloc(KERN_GROUP_MAX * T * (size_t)(spt > 0 ? spt : 0), &fail);
    if (p->delta) {
        int64_t outmax = maxin > c->kvd ? maxin : c->kvd; /* H, I, qd, kvd */
        c->dy = fwd_alloc(KERN_GROUP_MAX * T * (size_t)outmax, &fail);
        c->dy_stride = T * (size_t)outmax;
    }
    c->gath = fwd_alloc((size_t)p->max_logit_rows * c->H, &fail);
    c->p_t0 = calloc(KERN_GROUP_MAX * T, sizeof(int));
    c->p_t1 = calloc(KERN_GROUP_MAX * T, sizeof(int));
    c->p_ad = calloc(KERN_GROUP_MAX * T, sizeof(void *));
    c->p_g = calloc(KERN_GROUP_MAX * T, sizeof(int));
    if (!c->p_t0 || !c->p_t1 || !c->p_ad || !c->p_g) fail = 1;
    if (fail) {
        fwd_destroy(c);
        return lr_error_set(err, LR_ENOMEM,
                            "forward: cannot allocate activation buffers for %d tokens",
                            p->max_tokens);
    }
    *out = c;
    return 0;
}

void fwd_destroy(fwd_ctx *c)
{
    if (!c) return;
    float *bufs[] = {c->h,     c->x,     c->xn,        c->q,     c->k,     c->v,
                     c->att,   c->g,     c->u,         c->cos,   c->sin,   c->attn_scr,
                     c->panel, c->dscratch, c->gath,   c->dy,    c->attn_part, c->attn_ml};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(c->p_t0);
    free(c->p_t1);
    free(c->p_ad);
    free(c->p_g);
    free(c->attn_blk);
    free(c->attn_busy);
    free(c->job_t0);
    free(c->job_nq);
    free(c->job_kvh);
    free(c->job_k0);
    free(c->job_k1);
    free(c->job_part);
    free(c->grp_job0);
    free(c->grp_n);
    free(c);
}

/* Pieces of the hook run on the pool, each with its own rows of y and of the scratch. */
static void fwd_hook_task(void *ctx, int i, int n)
{
    fwd_ctx *c = ctx;
    const eng_delta_ops *d = c->par.delta;
    int t0 = c->p_t0[i], t1 = c->p_t1[i];
    d->apply(c->p_ad[i], c->layer, c->h_mod, c->h_x, c->h_ldx, c->h_y, c->h_ldy, c->h_bias, t0,
             t1, c->dscratch + (size_t)t0 * (size_t)d->scratch_per_token);
}

/* The LoRA hook's pieces (p_t0/p_t1/p_ad; returns how many): for every maximal run of rows
 * sharing a non-NULL adapter that has this module, the adapter's delta is added to y (rows
 * t0..t1-1, see fwd_linear). The engine sorts a batch by
 * adapter, so a run is every row of one adapter. A run is kept together as far as the threads
 * allow, because the adapter's A and B are then read once for all its rows (the delta kernels
 * work on several rows at once); it is cut only so that every thread gets about its share of
 * rows: with R rows under adapters and nth threads, a run of n rows becomes ceil(n / ceil(R /
 * nth)) pieces of near-equal size. So 8 decode rows on one adapter are two pieces of 4 on two
 * threads, 8 rows on 8 adapters eight pieces of 1, and a 512-row prefill run two sgemm halves.
 * The delta of a row depends only on that row, so the cut changes no result. All pieces of the
 * linear, whatever mix of adapters, are claimed dynamically by the pool's threads. */
static int fwd_hook_plan(fwd_ctx *c, const fwd_batch *b, int layer, lr_module mod, int base)
{
    int *p_t0 = c->p_t0 + base, *p_t1 = c->p_t1 + base;
    const void **p_ad = c->p_ad + base;
    const eng_delta_ops *d = c->par.delta;
    if (!d || !b->adapter) return 0;
    // First the runs (into the piece arrays), then cut them in place from the last one.
    int t = 0, nr = 0, rows = 0;
    while (t < b->n) {
        const void *a = b->adapter[t];
        int t1 = t + 1;
        while (t1 < b->n && b->adapter[t1] == a)
            t1++;
        if (a && d->has_module(a, layer, mod)) {
            p_t0[nr] = t;
            p_t1[nr] = t1;
            p_ad[nr++] = a;
            rows += t1 - t;
        }
        t = t1;
    }
    if (nr == 0) return 0;
    int share = (rows + c->nth - 1) / c->nth;
    int np = 0;
    for (int i = 0; i < nr; i++)
        np += (p_t1[i] - p_t0[i] + share - 1) / share;
    // Pieces never outnumber rows, so the arrays (max_tokens) hold them; writing from the end
    // backwards never overwrites a run not yet cut.
    int w = np;
    for (int i = nr - 1; i >= 0; i--) {
        int t0 = p_t0[i], n = p_t1[i] - t0;
        const void *a = p_ad[i];
        int k = (n + share - 1) / share;
        for (int j = k - 1; j >= 0; j--) {
            w--;
            p_t0[w] = t0 + (int)((int64_t)n * j / k);
            p_t1[w] = t0 + (int)((int64_t)n * (j + 1) / k);
            p_ad[w] = a;
        }
    }
    return np;
}

/* y[n, W.rows] = x·Wᵀ (+ bias), then the LoRA pieces in place, after the GEMM: the path for
 * deltas that need the base output (DoRA rescales it). */
static void fwd_linear_inplace(fwd_ctx *c, const fwd_batch *b, int layer, lr_module mod,
                               const lr_mat *W, const float *bias, const float *x, int ldx,
                               float *y, int ldy)
{
    int np = fwd_hook_plan(c, b, layer, mod, 0);
    kern_matmul(c->par.pool, y, ldy, x, ldx, b->n, W, c->panel);
    if (bias) kern_add_bias(y, ldy, bias, b->n, (int)W->rows);
    if (np == 0) return;
    c->layer = layer;
    c->h_mod = mod;
    c->h_x = x;
    c->h_ldx = ldx;
    c->h_y = y;
    c->h_ldy = ldy;
    c->h_bias = bias;
    kern_pool_run_chunks(c->par.pool, fwd_hook_task, c, np);
}

/* A piece of a group (fwd_linears): its rows of its matrix's delta buffer are zeroed, then get
 * the delta alone. Each matrix of the group has its own scratch, as the group's pieces for the
 * same rows run at the same time. */
static void fwd_group_task(void *ctx, int i, int n)
{
    fwd_ctx *c = ctx;
    const eng_delta_ops *d = c->par.delta;
    int g = c->p_g[i], t0 = c->p_t0[i], t1 = c->p_t1[i];
    float *dy = c->g_dy[g];
    int ldy = c->g_ldy[g];
    memset(dy + (size_t)t0 * (size_t)ldy, 0, sizeof(float) * (size_t)(t1 - t0) * (size_t)ldy);
    size_t spt = (size_t)d->scratch_per_token, T = (size_t)c->par.max_tokens;
    d->apply(c->p_ad[i], c->layer, c->g_mod[g], c->h_x, c->h_ldx, dy, ldy, NULL, t0, t1,
             c->dscratch + ((size_t)g * T + (size_t)t0) * spt);
}

/* y[g] = x·W[g]ᵀ (+ bias[g]) (+ LoRA delta) for the n linears of one input — q, k, v; gate,
 * up; or one alone — as one kern_matmul_group: one dispatch for their GEMMs and every LoRA
 * piece of each, the pieces into per-matrix delta buffers added to y afterwards (a thread that
 * finishes the pieces takes GEMM tiles, so a single decode row's delta does not leave the other
 * thread waiting). A DoRA piece needs the base output first: then each runs in place
 * (fwd_linear_inplace). */
static void fwd_linears(fwd_ctx *c, const fwd_batch *b, int layer, int n, const lr_module *mods,
                        const lr_mat *const *W, const float *const *bias, const float *x,
                        int ldx, float *const *y, const int *ldy)
{
    const eng_delta_ops *d = c->par.delta;
    int np = 0, after = 0;
    for (int g = 0; g < n; g++) {
        int k = fwd_hook_plan(c, b, layer, mods[g], np);
        for (int i = np; i < np + k; i++) {
            c->p_g[i] = g;
            after |= !d->needs_base || d->needs_base(c->p_ad[i], layer, mods[g]);
        }
        np += k;
    }
    if (after) {
        for (int g = 0; g < n; g++)
            fwd_linear_inplace(c, b, layer, mods[g], W[g], bias[g], x, ldx, y[g], ldy[g]);
        return;
    }
    c->layer = layer;
    c->h_x = x;
    c->h_ldx = ldx;
    kern_extra ex = {fwd_group_task, c, np};
    for (int g = 0; g < n && np > 0; g++) { /* dy exists only with delta ops */
        c->g_mod[g] = mods[g];
        c->g_dy[g] = c->dy + (size_t)g * c->dy_stride;
        c->g_ldy[g] = (int)W[g]->rows;
    }
    kern_matmul_group(c->par.pool, n, W, y, ldy, x, ldx, b->n, c->panel, np ? &ex : NULL);
    for (int g = 0; g < n; g++)
        if (bias[g]) kern_add_bias(y[g], ldy[g], bias[g], b->n, (int)W[g]->rows);
    for (int i = 0; i < np; i++) {
        int g = c->p_g[i];
        for (int t = c->p_t0[i]; t < c->p_t1[i]; t++)
            kern_add(y[g] + (size_t)t * (size_t)ldy[g], c->g_dy[g] + (size_t)t * (size_t)c->g_ldy[g],
                     W[g]->rows);
    }
}

static void fwd_linear(fwd_ctx *c, const fwd_batch *b, int layer, lr_module mod, const lr_mat *W,
                       const float *bias, const float *x, int ldx, float *y, int ldy)
{
    fwd_linears(c, b, layer, 1, &mod, &W, &bias, x, ldx, &y, &ldy);
}

/* Attention, one job per (run of consecutive rows of one sequence, up to FWD_ATTN_QB of them;
 * KV head): for row t at position p, query head h reads KV head h / (nH / nKV) of its own
 * sequence at positions lo..p, where lo = 0 or, on a sliding-window layer of width W,
 * max(0, p − W + 1):
 *   s_j = (q · k_j) · hd^-0.5;  a = softmax(s);  out_h = Σ_j a_j · v_j   (kern_attn).
 * Jobs are claimed dynamically by the pool's threads; a job takes a free scratch slot (at most
 * nth jobs run at once, so one is always free). */
static void fwd_attn_task(void *ctx, int job, int n_jobs)
{
    fwd_ctx *c = ctx;
    const fwd_batch *b = c->batch;
    const lr_config *cf = &c->m->cfg;
    const kv_pool *kvp = c->par.kv;
    int l = c->layer, rep = c->nH / c->nKV;
    int slot = 0;
    while (__atomic_exchange_n(&c->attn_busy[slot], 1, __ATOMIC_ACQUIRE))
        slot = (slot + 1) % c->nth;
    int t0 = c->job_t0[job], nq = c->job_nq[job], kvh = c->job_kvh[job];
    const kv_seq *s = b->kv[t0];
    int pos0 = b->pos[t0], B = kv_block_tokens(kvp);
    const float **kb = c->attn_blk + (size_t)slot * 2 * (size_t)c->attn_max_blocks;
    const float **vb = kb + c->attn_max_blocks;
    int nb = (pos0 + nq - 1) / B + 1;
    for (int i = 0; i < nb; i++) {
        kb[i] = kv_k(kvp, s, KV_SELF, l, i * B) + (size_t)kvh * c->hd;
        vb[i] = kv_v(kvp, s, KV_SELF, l, i * B) + (size_t)kvh * c->hd;
    }
    size_t off = (size_t)t0 * c->qd + (size_t)kvh * rep * c->hd;
    int part = c->job_part[job];
    kern_attn_job j = {
        .q = c->q + off,
        .ldq = c->qd,
        .out = c->att + off,
        .ldo = c->qd,
        .nq = nq,
        .rep = rep,
        .hd = c->hd,
        .pos0 = pos0,
        .window = (cf->sliding_window > 0 && cf->window_layer && cf->window_layer[l])
                      ? cf->sliding_window
                      : 0,
        .scale = 1.0f / sqrtf((float)c->hd),
        .k_blocks = kb,
        .v_blocks = vb,
        .block = B,
        .ld = c->kvd,
    };
    if (part >= 0) { /* one part of a split decode row (fwd_attn_jobs) */
        j.out = c->attn_part + (size_t)part * rep * c->hd;
        j.ldo = rep * c->hd;
        j.key_lo = c->job_k0[job];
        j.key_hi = c->job_k1[job];
        j.ml = c->attn_ml + (size_t)part * rep * 2;
    }
    kern_attn(&j, c->attn_scr + (size_t)slot * c->attn_scr_floats);
    __atomic_store_n(&c->attn_busy[slot], 0, __ATOMIC_RELEASE);
}

/* Split the batch into attention jobs: maximal runs of rows of one sequence at consecutive
 * positions, cut into blocks of FWD_ATTN_QB rows, times the KV heads. Blocks are listed last
 * first, so the longest jobs of a prefill (the last rows see the most keys) are claimed first
 * and the short ones fill in at the end. A lone row with a long context becomes parts (see
 * FWD_ATTN_SPLIT_KEYS), each a job, listed before the rest; fwd_attn_combine joins them.
 * Returns the number of jobs. */
static int fwd_attn_jobs(fwd_ctx *c, const fwd_batch *b)
{
    int nj = 0, rep = c->nH / c->nKV;
    c->n_parts = 0;
    c->n_grps = 0;
    for (int t = 0; t < b->n;) { /* split decode rows first: they are the long jobs */
        int t1 = t + 1;
        while (t1 < b->n && b->kv[t1] == b->kv[t] && b->pos[t1] == b->pos[t] + (t1 - t))
            t1++;
        int keys = b->pos[t1 - 1] + 1, S = keys / FWD_ATTN_SPLIT_KEYS;
        if (S > FWD_ATTN_SPLITS) S = FWD_ATTN_SPLITS;
        if (t1 - t == 1 && S >= 2 && c->n_parts + S * c->nKV <= c->max_parts &&
            kern_attn_splittable(1, rep, c->hd)) {
            int size = (keys + S - 1) / S;
            size = (size + KERN_ATTN_CHUNK - 1) / KERN_ATTN_CHUNK * KERN_ATTN_CHUNK;
            for (int h = 0; h < c->nKV; h++) {
                c->grp_job0[c->n_grps] = nj;
                c->grp_n[c->n_grps++] = S;
                for (int q = 0; q < S; q++) {
                    c->job_t0[nj] = t;
                    c->job_nq[nj] = 1;
                    c->job_kvh[nj] = h;
                    c->job_k0[nj] = q * size;
                    c->job_k1[nj] = (q + 1) * size < keys ? (q + 1) * size : keys;
                    c->job_part[nj++] = c->n_parts++;
                }
            }
        }
        t = t1;
    }
    for (int t = 0, gi = 0; t < b->n;) {
        int t1 = t + 1;
        while (t1 < b->n && b->kv[t1] == b->kv[t] && b->pos[t1] == b->pos[t] + (t1 - t))
            t1++;
        /* split above? (the groups are in run order, nKV per split run) */
        int done = gi < c->n_grps && c->job_t0[c->grp_job0[gi]] == t;
        if (done) gi += c->nKV;
        for (int e = t1; e > t && !done; e -= FWD_ATTN_QB) {
            int s0 = e - FWD_ATTN_QB > t ? e - FWD_ATTN_QB : t;
            for (int h = 0; h < c->nKV; h++) {
                c->job_t0[nj] = s0;
                c->job_nq[nj] = e - s0;
                c->job_kvh[nj] = h;
                c->job_part[nj++] = -1;
            }
        }
        t = t1;
    }
    return nj;
}

/* Join the parts of each split decode row: per query head, with M the largest part maximum,
 * out = Σ_q e^(m_q − M)·o_q / Σ_q e^(m_q − M)·l_q, parts in key order. */
static void fwd_attn_combine(fwd_ctx *c)
{
    int rep = c->nH / c->nKV, hd = c->hd;
    for (int g = 0; g < c->n_grps; g++) {
        int j0 = c->grp_job0[g], S = c->grp_n[g];
        int t = c->job_t0[j0], kvh = c->job_kvh[j0];
        for (int r = 0; r < rep; r++) {
            float M = -INFINITY;
            for (int q = 0; q < S; q++) {
                float m = c->attn_ml[((size_t)c->job_part[j0 + q] * rep + r) * 2];
                if (m > M) M = m;
            }
            float *out = c->att + (size_t)t * c->qd + ((size_t)kvh * rep + r) * hd;
            memset(out, 0, sizeof(float) * (size_t)hd);
            float den = 0.0f;
            for (int q = 0; q < S; q++) {
                int pi = c->job_part[j0 + q];
                const float *ml = c->attn_ml + ((size_t)pi * rep + r) * 2;
                if (ml[0] == -INFINITY) continue; /* a part with no key in the window */
                float w = expf(ml[0] - M);
                den += w * ml[1];
                kern_axpy(out, w, c->attn_part + ((size_t)pi * rep + r) * hd, hd);
            }
            float inv = 1.0f / den;
            for (int d = 0; d < hd; d++)
                out[d] *= inv;
        }
    }
}

/* RoPE on q and k of rows [t0, t1), and the post-RoPE keys and the values of those rows into their
 * sequences' blocks (rows are independent: split across threads when the batch is large). */
static void fwd_rope_rows(fwd_ctx *c, int t0, int t1)
{
    const fwd_batch *b = c->batch;
    int half = c->hd / 2, l = c->layer;
    for (int t = t0; t < t1; t++) {
        const float *cs = c->cos + (size_t)t * half, *sn = c->sin + (size_t)t * half;
        kern_rope(c->q + (size_t)t * c->qd, c->nH, c->hd, cs, sn);
        kern_rope(c->k + (size_t)t * c->kvd, c->nKV, c->hd, cs, sn);
        memcpy(kv_k(c->par.kv, b->kv[t], KV_SELF, l, b->pos[t]), c->k + (size_t)t * c->kvd,
               sizeof(float) * (size_t)c->kvd);
        memcpy(kv_v(c->par.kv, b->kv[t], KV_SELF, l, b->pos[t]), c->v + (size_t)t * c->kvd,
               sizeof(float) * (size_t)c->kvd);
    }
}

static void fwd_rope_task(void *ctx, int ith, int nth)
{
    fwd_ctx *c = ctx;
    int n = c->batch->n;
    fwd_rope_rows(c, (int)((int64_t)n * ith / nth), (int)((int64_t)n * (ith + 1) / nth));
}

int fwd_forward(fwd_ctx *c, const fwd_batch *b, lr_error *err)
{
    const lr_model *m = c->m;
    const lr_config *cf = &m->cfg;
    int n = b->n, H = c->H, half = c->hd / 2;
    if (n < 1 || n > c->par.max_tokens)
        return lr_error_set(err, LR_EINVAL, "forward: batch of %d rows (1..%d allowed)", n,
                            c->par.max_tokens);
    for (int t = 0; t < n; t++) {
        if (b->ids[t] < 0 || b->ids[t] >= c->V)
            return lr_error_set(err, LR_EINVAL, "forward: row %d has token id %d outside [0, %d)",
                                t, b->ids[t], c->V);
        if (b->pos[t] < 0 || b->pos[t] >= cf->max_pos ||
            b->pos[t] >= kv_seq_capacity(c->par.kv, b->kv[t], KV_SELF))
            return lr_error_set(err, LR_EINVAL,
                                "forward: row %d has position %d outside its KV table (%d) or "
                                "the context (%d)",
                                t, b->pos[t], kv_seq_capacity(c->par.kv, b->kv[t], KV_SELF),
                                cf->max_pos);
    }
    c->batch = b;
    int n_jobs = fwd_attn_jobs(c, b);

    // Embedding gather (+ embedding LoRA) into the residual stream h (n, H).
    for (int t = 0; t < n; t++) {
        float *row = c->h + (size_t)t * H;
        kern_mat_row(&m->embed, b->ids[t], row);
        if (b->adapter && b->adapter[t] && c->par.delta && c->par.delta->embed)
            c->par.delta->embed(b->adapter[t], b->ids[t], row);
    }
    // RoPE tables for this batch: angle = float(pos) · inv_freq[k], cos/sin in fp32.
    for (int t = 0; t < n; t++) {
        for (int k = 0; k < half; k++) {
            float ang = (float)b->pos[t] * m->rope_inv_freq[k];
            c->cos[(size_t)t * half + k] = cosf(ang);
            c->sin[(size_t)t * half + k] = sinf(ang);
        }
    }

    for (int l = 0; l < cf->n_layers; l++) {
        const lr_layer *L = &m->layers[l];
        // Attention block.
        kern_rmsnorm(c->xn, c->h, L->attn_norm, n, H, cf->norm_eps);
        {
            const lr_module mods[3] = {LR_MOD_Q, LR_MOD_K, LR_MOD_V};
            const lr_mat *W[3] = {&L->q, &L->k, &L->v};
            const float *bias[3] = {L->bq, L->bk, L->bv};
            float *y[3] = {c->q, c->k, c->v};
            const int ldy[3] = {c->qd, c->kvd, c->kvd};
            fwd_linears(c, b, l, 3, mods, W, bias, c->xn, H, y, ldy);
        }
        // RoPE, then post-RoPE keys and the values to the rows' sequence blocks.
        c->layer = l;
        if (n >= FWD_ROPE_PAR_ROWS)
            kern_pool_run(c->par.pool, fwd_rope_task, c);
        else
            fwd_rope_rows(c, 0, n);
        kern_pool_run_chunks(c->par.pool, fwd_attn_task, c, n_jobs);
        fwd_attn_combine(c);
        fwd_linear(c, b, l, LR_MOD_O, &L->o, L->bo, c->att, c->qd, c->x, H);
        kern_add(c->h, c->x, (int64_t)n * H);
        // MLP block.
        kern_rmsnorm(c->xn, c->h, L->mlp_norm, n, H, cf->norm_eps);
        {
            const lr_module mods[2] = {LR_MOD_GATE, LR_MOD_UP};
            const lr_mat *W[2] = {&L->gate, &L->up};
            const float *bias[2] = {L->bgate, L->bup};
            float *y[2] = {c->g, c->u};
            const int ldy[2] = {c->I, c->I};
            fwd_linears(c, b, l, 2, mods, W, bias, c->xn, H, y, ldy);
        }
        kern_act_mul(c->g, c->u, (int64_t)n * c->I, cf->act);
        fwd_linear(c, b, l, LR_MOD_DOWN, &L->down, L->bdown, c->g, c->I, c->x, H);
        kern_add(c->h, c->x, (int64_t)n * H);
    }
    kern_rmsnorm(c->xn, c->h, m->final_norm, n, H, cf->norm_eps);
    return 0;
}

const float *fwd_hidden(const fwd_ctx *c, int r)
{
    return c->xn + (size_t)r * c->H;
}

void fwd_logits(fwd_ctx *c, const int32_t *rows, int n, float *logits)
{
    LR_ASSERT(n >= 0 && n <= c->par.max_logit_rows);
    if (n == 0) return;
    // Gather the rows first, so the lm_head (the biggest matrix) is read once for all of them.
    for (int i = 0; i < n; i++)
        memcpy(c->gath + (size_t)i * c->H, c->xn + (size_t)rows[i] * c->H,
               sizeof(float) * (size_t)c->H);
    kern_matmul(c->par.pool, logits, c->V, c->gath, c->H, n, &c->m->lm_head, c->panel);
}
