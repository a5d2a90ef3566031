/* kv.c — the paged KV cache: a pool of fixed-size blocks with a free stack, and per-sequence
 * block tables.
 *
 * The pool is one allocation made at start from the --kv-cache-mb budget; afterwards blocks only
 * move between the free stack and sequences' tables, so the hot path never allocates. This module
 * does not decide who gets blocks or who is preempted: that is the engine's scheduler.
 */
#include "kv.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

struct kv_pool {
    kv_params par;
    size_t block_floats; /* n_layers * 2 * block_tokens * kv_dim */
    int n_blocks;
    float *data;    /* (n_blocks, n_layers, 2, block_tokens, kv_dim), lr_map_huge */
    size_t mapped;  /* bytes of the mapping */
    int32_t *free_; /* stack of free block ids [n_blocks] */
    int n_free;
    int max_blocks; /* per table: ceil(max_tokens / block_tokens) */
};

int kv_pool_create(const kv_params *p, lr_error *err, kv_pool **out)
{
    *out = NULL;
    if (p->n_layers < 1 || p->kv_dim < 1 || p->block_tokens < 1 || p->max_tokens < 1)
        return lr_error_set(err, LR_EINVAL,
                            "kv cache: n_layers (%d), kv_dim (%d), block_tokens (%d) and "
                            "max_tokens (%d) must all be at least 1",
                            p->n_layers, p->kv_dim, p->block_tokens, p->max_tokens);
    size_t bf = (size_t)p->n_layers * 2 * (size_t)p->block_tokens * (size_t)p->kv_dim;
    size_t bbytes = bf * sizeof(float);
    int64_t n = p->bytes > 0 ? p->bytes / (int64_t)bbytes : 0;
    if (n < 1)
        return lr_error_set(err, LR_EINVAL,
                            "kv cache: a budget of %lld bytes holds no block; one block of %d "
                            "tokens needs %zu bytes (raise --kv-cache-mb)",
                            (long long)p->bytes, p->block_tokens, bbytes);
    if (n > INT32_MAX / 2) n = INT32_MAX / 2;
    kv_pool *kp = calloc(1, sizeof *kp);
    if (!kp) return lr_error_set(err, LR_ENOMEM, "kv cache: out of memory");
    kp->par = *p;
    kp->block_floats = bf;
    kp->n_blocks = (int)n;
    kp->max_blocks = (p->max_tokens + p->block_tokens - 1) / p->block_tokens;
    /* Fresh anonymous memory reads as zeros; not resident, pages of blocks never used are never
     * touched, so an oversized budget costs address space, not memory. */
    kp->data = lr_map_huge((size_t)n * bbytes, &kp->mapped);
    kp->free_ = malloc((size_t)n * sizeof *kp->free_);
    if (!kp->data || !kp->free_) {
        kv_pool_destroy(kp);
        return lr_error_set(err, LR_ENOMEM, "kv cache: cannot allocate %lld blocks of %zu bytes",
                            (long long)n, bbytes);
    }
    if (p->resident && lr_prefault(kp->data, kp->mapped) != 0) {
        kv_pool_destroy(kp);
        return lr_error_set(err, LR_ENOMEM,
                            "kv cache: cannot make %lld MiB resident (lower --kv-cache-mb)",
                            (long long)(((int64_t)n * (int64_t)bbytes) >> 20));
    }
    /* Lowest ids on top of the stack, so a fresh pool hands out blocks 0, 1, 2… */
    for (int i = 0; i < kp->n_blocks; i++)
        kp->free_[i] = kp->n_blocks - 1 - i;
    kp->n_free = kp->n_blocks;
    *out = kp;
    return 0;
}

void kv_pool_destroy(kv_pool *p)
{
    if (!p) return;
    lr_unmap(p->data, p->mapped);
    free(p->free_);
    free(p);
}

int kv_blocks_total(const kv_pool *p)
{
    return p->n_blocks;
}
int kv_blocks_free(const kv_pool *p)
{
    return p->n_free;
}
int kv_blocks_used(const kv_pool *p)
{
    return p->n_blocks - p->n_free;
}
int kv_block_tokens(const kv_pool *p)
{
    return p->par.block_tokens;
}
size_t kv_block_bytes(const kv_pool *p)
{
    return p->block_floats * sizeof(float);
}

int kv_blocks_for(const kv_pool *p, int n_tokens)
{
    if (n_tokens <= 0) return 0;
    return (int)(((int64_t)n_tokens + p->par.block_tokens - 1) / p->par.block_tokens);
}

int kv_seq_init(const kv_pool *p, kv_seq *s)
{
    memset(s, 0, sizeof *s);
    s->max_blocks = p->max_blocks;
    for (int t = 0; t < 2; t++) {
        s->blocks[t] = malloc((size_t)p->max_blocks * sizeof(int32_t));
        if (!s->blocks[t]) {
            kv_seq_free(s);
            return LR_ENOMEM;
        }
    }
    return 0;
}

void kv_seq_free(kv_seq *s)
{
    for (int t = 0; t < 2; t++) {
        free(s->blocks[t]);
        s->blocks[t] = NULL;
        s->n_blocks[t] = 0;
    }
}

int kv_seq_reserve(kv_pool *p, kv_seq *s, kv_table t, int n_tokens)
{
    int need = kv_blocks_for(p, n_tokens);
    if (need > s->max_blocks) return LR_ERANGE;
    int more = need - s->n_blocks[t];
    if (more <= 0) return 0;
    if (more > p->n_free) return LR_ENOMEM;
    for (int i = 0; i < more; i++)
        s->blocks[t][s->n_blocks[t]++] = p->free_[--p->n_free];
    return 0;
}

int kv_seq_capacity(const kv_pool *p, const kv_seq *s, kv_table t)
{
    return s->n_blocks[t] * p->par.block_tokens;
}

void kv_seq_release(kv_pool *p, kv_seq *s)
{
    for (int t = 0; t < 2; t++) {
        while (s->n_blocks[t] > 0) {
            LR_ASSERT(p->n_free < p->n_blocks);
            p->free_[p->n_free++] = s->blocks[t][--s->n_blocks[t]];
        }
    }
}

static float *kv_at(const kv_pool *p, const kv_seq *s, kv_table t, int layer, int pos, int which)
{
    int B = p->par.block_tokens;
    int bi = pos / B;
    LR_ASSERT(pos >= 0 && bi < s->n_blocks[t] && layer >= 0 && layer < p->par.n_layers);
    size_t blk = (size_t)s->blocks[t][bi];
    size_t off = blk * p->block_floats +
                 (((size_t)layer * 2 + (size_t)which) * (size_t)B + (size_t)(pos % B)) *
                     (size_t)p->par.kv_dim;
    return p->data + off;
}

float *kv_k(const kv_pool *p, const kv_seq *s, kv_table t, int layer, int pos)
{
    return kv_at(p, s, t, layer, pos, 0);
}

float *kv_v(const kv_pool *p, const kv_seq *s, kv_table t, int layer, int pos)
{
    return kv_at(p, s, t, layer, pos, 1);
}
