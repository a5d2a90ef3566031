/* lora.c — LoRA deltas applied unmerged, per run of batch rows (the CPU form of Punica's SGMV).
 *
 * For a run of T rows sharing a lora_set and one linear module, each member adapter adds
 *   Y += k·s · (X·Aᵀ)·Bᵀ  (+ k·s·b_B with lora_bias)
 * where k is the member's mix scale. DoRA (SPEC D.5) instead makes the output
 *   Y = b + f ⊙ (X·W0ᵀ + k·s·B·A·X)
 * with f the precomputed per-row factor; X·W0ᵀ is Y minus the bias when the adapter is alone,
 * or a snapshot taken before any member touched Y when a mix holds a DoRA member.
 * The two products run in adapters/lora_kern (decode-sized runs, and BF16 weights at any length)
 * or sgemm (long runs of f32 weights); both read B transposed (Bt), as peft_load holds it.
 *
 * Not here: loading (adapters/peft), which adapter a request uses (adapters/registry).
 */
#include "lora.h"

#include "lora_kern.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Runs of at most this many rows use the register-blocked kernels of lora_kern (decode steps
 * and small batches): below this sgemm's setup and packing cost more than the products (rank 16:
 * a row is a few thousand FMAs). Longer runs (prefill) use sgemm. */
#define LORA_KERN_T 32

typedef struct lora_member {
    const peft_adapter *a;
    float scale;
    float **dora; /* [n_layers * LR_MOD_COUNT] factors at this scale, or NULL (use the module's) */
    float *edora; /* embedding DoRA factor at this scale, or NULL (use the embedding's) */
} lora_member;

struct lora_set {
    int n;
    lora_member *mem;
    int n_layers;
    int rmax, outmax;
    int any_dora;
    uint8_t *has; /* [n_layers * LR_MOD_COUNT] */
    float *ebase; /* (hidden) the embedding row before any member, for mixes with embedding DoRA */
    int ehidden;
};

static int model_outmax(const lr_model *m)
{
    const lr_config *c = &m->cfg;
    int o = c->hidden;
    if (c->inter > o) o = c->inter;
    if (c->n_heads * c->head_dim > o) o = c->n_heads * c->head_dim;
    if (c->n_kv_heads * c->head_dim > o) o = c->n_kv_heads * c->head_dim;
    return o;
}

void lora_set_destroy(lora_set *s)
{
    if (!s) return;
    for (int i = 0; i < s->n && s->mem; i++) {
        free(s->mem[i].edora);
        if (s->mem[i].dora) {
            for (int j = 0; j < s->n_layers * LR_MOD_COUNT; j++)
                free(s->mem[i].dora[j]);
            free(s->mem[i].dora);
        }
    }
    free(s->mem);
    free(s->has);
    free(s->ebase);
    free(s);
}

int lora_set_max_rank(const lora_set *s)
{
    return s->rmax;
}

int lora_set_create(const lr_model *m, const peft_adapter *const *ads, const float *scales, int n,
                    lr_error *err, lora_set **out)
{
    *out = NULL;
    if (n < 1) return lr_error_set(err, LR_EINVAL, "an adapter mix needs at least one adapter");
    for (int i = 0; i < n; i++)
        if (scales && !isfinite(scales[i]))
            return lr_error_set(err, LR_EINVAL, "adapter mix: scale %d is not a finite number", i);
    lora_set *s = calloc(1, sizeof *s);
    if (!s) return lr_error_set(err, LR_ENOMEM, "adapter mix: out of memory");
    /* T5: LoRA layers are the encoder blocks, then the decoder blocks (engine.h). */
    int L = m->cfg.n_layers + (m->cfg.arch == LR_ARCH_T5 ? m->cfg.n_dec_layers : 0);
    int nm = L * LR_MOD_COUNT;
    s->n = n;
    s->n_layers = L;
    s->outmax = model_outmax(m);
    s->mem = calloc((size_t)n, sizeof *s->mem);
    s->has = calloc((size_t)nm, 1);
    if (!s->mem || !s->has) goto nomem;
    for (int i = 0; i < n; i++) {
        lora_member *me = &s->mem[i];
        me->a = ads[i];
        me->scale = scales ? scales[i] : 1.0f;
        LR_ASSERT(me->a->n_layers == L);
        if (me->a->max_rank > s->rmax) s->rmax = me->a->max_rank;
        const peft_embed *em = me->a->embed;
        if (em && em->dora) {
            /* a mix needs the row before any member; another scale needs another norm */
            if (n > 1 && !s->ebase) {
                if (!(s->ebase = malloc(sizeof(float) * (size_t)em->hidden))) goto nomem;
                s->ehidden = em->hidden;
            }
            if (me->scale != 1.0f) {
                if (!(me->edora = malloc(sizeof(float) * (size_t)em->hidden))) goto nomem;
                peft_dora_embed_factor(m, em, (double)em->s * me->scale, me->edora);
            }
        }
        for (int j = 0; j < nm; j++) {
            const peft_module *md = me->a->mods[j];
            if (!md) continue;
            s->has[j] = 1;
            if (!md->dora) continue;
            s->any_dora = 1;
            if (me->scale == 1.0f) continue;
            /* The weight norm of DoRA uses the member's effective scaling k·s. */
            if (!me->dora && !(me->dora = calloc((size_t)nm, sizeof *me->dora))) goto nomem;
            if (!(me->dora[j] = malloc(sizeof(float) * (size_t)md->out))) goto nomem;
            peft_dora_factor(m, j / LR_MOD_COUNT, (lr_module)(j % LR_MOD_COUNT), md,
                             (double)md->s * me->scale, me->dora[j]);
        }
    }
    *out = s;
    return 0;
nomem:
    lora_set_destroy(s);
    return lr_error_set(err, LR_ENOMEM, "adapter mix: out of memory");
}

void lora_ops(const lr_model *m, int max_rank, eng_delta_ops *ops)
{
    memset(ops, 0, sizeof *ops);
    ops->has_module = lora_has_module;
    ops->apply = lora_apply;
    ops->embed = lora_embed;
    ops->needs_base = lora_needs_base;
    // Scratch per row: tmp (r), the member's delta (out) and the base snapshot (out).
    ops->scratch_per_token = max_rank + 2 * model_outmax(m);
}

int lora_needs_base(const void *set, int layer, lr_module mod)
{
    const lora_set *s = set;
    if (!s->any_dora || layer < 0 || layer >= s->n_layers || mod < 0 || mod >= LR_MOD_COUNT)
        return 0;
    for (int i = 0; i < s->n; i++) {
        const peft_module *md = s->mem[i].a->mods[layer * LR_MOD_COUNT + mod];
        if (md && md->dora) return 1;
    }
    return 0;
}

int lora_has_module(const void *set, int layer, lr_module mod)
{
    const lora_set *s = set;
    if (layer < 0 || layer >= s->n_layers || mod < 0 || mod >= LR_MOD_COUNT) return 0;
    return s->has[layer * LR_MOD_COUNT + mod];
}

/* tmp (T, r) = X (T, in) · Aᵀ. */
static void shrink(const peft_module *md, const float *x, int ldx, int T, float *tmp)
{
    if (md->A16) { /* bf16 weights: our kernels at every T (sgemm wants f32) */
        lk_shrink_bf16(x, ldx, T, md->A16, md->r, md->in, tmp, md->r);
    } else if (T <= LORA_KERN_T) {
        lk_shrink(x, ldx, T, md->A, md->r, md->in, tmp, md->r);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, md->r, md->in, 1.0f, x, ldx, md->A,
                    md->in, 0.0f, tmp, md->r);
    }
}

/* out (T, out) = (accumulate ? out : 0) + k · (tmp (T, r) · Bᵀ + b_B). Loaded modules hold Bt
 * (B transposed, [r, out]); a module built by hand may hold only B. */
static void expand(const peft_module *md, const float *tmp, int T, float k, float *o, int ldo,
                   int accumulate)
{
    if (md->Bt16) {
        lk_expand_bf16(tmp, md->r, T, md->Bt16, md->r, md->out, k, md->bias_b, o, ldo, accumulate);
        return;
    }
    if (md->Bt && T <= LORA_KERN_T) {
        lk_expand(tmp, md->r, T, md->Bt, md->r, md->out, k, md->bias_b, o, ldo, accumulate);
        return;
    }
    float beta = accumulate ? 1.0f : 0.0f;
    if (md->Bt)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, md->out, md->r, k, tmp, md->r,
                    md->Bt, md->out, beta, o, ldo);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, md->out, md->r, k, tmp, md->r,
                    md->B, md->r, beta, o, ldo);
    if (md->bias_b)
        for (int t = 0; t < T; t++)
            for (int q = 0; q < md->out; q++)
                o[(size_t)t * ldo + q] += k * md->bias_b[q];
}

void lora_apply(const void *set, int layer, lr_module mod, const float *x, int ldx, float *y,
                int ldy, const float *bias, int t0, int t1, float *scratch)
{
    const lora_set *s = set;
    int slot = layer * LR_MOD_COUNT + mod;
    int T = t1 - t0;
    if (T <= 0 || !lora_has_module(s, layer, mod)) return;
    x += (size_t)t0 * ldx;
    y += (size_t)t0 * ldy;
    // Scratch layout: tmp (T, rmax) | delta (T, outmax) | base snapshot (T, outmax).
    float *tmp = scratch;
    float *delta = tmp + (size_t)T * s->rmax;
    float *base = delta + (size_t)T * s->outmax;
    int snap = 0;
    if (s->n > 1 && s->any_dora) {
        for (int i = 0; i < s->n && !snap; i++) {
            const peft_module *md = s->mem[i].a->mods[slot];
            snap = md && md->dora;
        }
    }
    int out_w = 0;
    for (int i = 0; i < s->n; i++)
        if (s->mem[i].a->mods[slot]) out_w = s->mem[i].a->mods[slot]->out;
    if (snap) {
        // base = Y − bias, before any member changes Y.
        for (int t = 0; t < T; t++)
            for (int q = 0; q < out_w; q++)
                base[(size_t)t * out_w + q] = y[(size_t)t * ldy + q] - (bias ? bias[q] : 0.0f);
    }
    for (int i = 0; i < s->n; i++) {
        const lora_member *me = &s->mem[i];
        const peft_module *md = me->a->mods[slot];
        if (!md) continue;
        float k = md->s * me->scale;
        shrink(md, x, ldx, T, tmp);
        const float *f = md->dora ? (me->dora ? me->dora[slot] : md->dora) : NULL;
        if (!f) {
            expand(md, tmp, T, k, y, ldy, 1);
        } else if (!snap) {
            // Y = b + f ⊙ ((Y − b) + k·B·A·X)
            for (int t = 0; t < T && bias; t++)
                for (int q = 0; q < md->out; q++)
                    y[(size_t)t * ldy + q] -= bias[q];
            expand(md, tmp, T, k, y, ldy, 1);
            for (int t = 0; t < T; t++)
                for (int q = 0; q < md->out; q++)
                    y[(size_t)t * ldy + q] =
                        f[q] * y[(size_t)t * ldy + q] + (bias ? bias[q] : 0.0f);
        } else {
            // Y += (f − 1) ⊙ base + f ⊙ (k·B·A·X)
            expand(md, tmp, T, k, delta, md->out, 0);
            for (int t = 0; t < T; t++)
                for (int q = 0; q < md->out; q++)
                    y[(size_t)t * ldy + q] += (f[q] - 1.0f) * base[(size_t)t * md->out + q] +
                                              f[q] * delta[(size_t)t * md->out + q];
        }
    }
}

void lora_embed(const void *set, int32_t id, float *out_row)
{
    const lora_set *s = set;
    /* DoRA (SPEC D.5): out += (f − 1) ⊙ E[id] + f ⊙ k·s·B·A[:, id], E[id] being the row before
     * any member (out_row itself when the adapter is alone). Engine thread only: ebase is the
     * set's own buffer. */
    const float *base = out_row;
    if (s->ebase) {
        memcpy(s->ebase, out_row, sizeof(float) * (size_t)s->ehidden);
        base = s->ebase;
    }
    for (int i = 0; i < s->n; i++) {
        const peft_embed *e = s->mem[i].a->embed;
        if (!e || id < 0 || id >= e->vocab) continue;
        // delta = k·s · B (H, r) · A[:, id] (r)
        float k = e->s * s->mem[i].scale;
        const float *a = e->At + (size_t)id * e->r;
        const float *f = e->dora ? (s->mem[i].edora ? s->mem[i].edora : e->dora) : NULL;
        for (int h = 0; h < e->hidden; h++) {
            const float *b = e->B + (size_t)h * e->r;
            float acc = 0;
            for (int j = 0; j < e->r; j++)
                acc += b[j] * a[j];
            if (f)
                out_row[h] += (f[h] - 1.0f) * base[h] + f[h] * (k * acc);
            else
                out_row[h] += k * acc;
        }
    }
}
