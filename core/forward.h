/* forward.h — the decoder-only forward pass (Llama / Mistral / Qwen2) over one batch of tokens.
 *
 * A batch is n tokens, each with its position, its sequence's KV block table and its adapter.
 * fwd_forward runs every layer over all n tokens at once (one matmul per linear for the whole
 * batch, then the LoRA hook per run of rows sharing an adapter), appends each token's K/V to its
 * sequence's blocks, attends each token to its own sequence, and leaves the final-normed hidden
 * state of every row in the context. fwd_logits then turns chosen rows into logits with one
 * lm_head matmul. Buffers are sized at fwd_create; the forward allocates nothing.
 *
 * Rows of one sequence must appear in increasing position order within a batch, and the KV
 * tables must already hold capacity for every position in the batch (the engine reserves).
 */
#ifndef LR_FORWARD_H
#define LR_FORWARD_H

#include <stdint.h>

#include "engine.h"
#include "err.h"
#include "kernels.h"
#include "kv.h"
#include "model.h"

typedef struct fwd_ctx fwd_ctx;

typedef struct fwd_params {
    const lr_model *model;      /* borrowed */
    kern_pool *pool;            /* borrowed */
    kv_pool *kv;                /* borrowed */
    int max_tokens;             /* rows per batch at most */
    int max_logit_rows;         /* rows per fwd_logits call at most */
    const eng_delta_ops *delta; /* borrowed, may be NULL */
} fwd_params;

typedef struct fwd_batch {
    int n;                      /* rows, 1..max_tokens */
    const int32_t *ids;         /* [n] token ids */
    const int32_t *pos;         /* [n] absolute positions */
    kv_seq *const *kv;          /* [n] the row's sequence */
    const void *const *adapter; /* [n] adapter per row (NULL = base); the array may be NULL */
} fwd_batch;

/* Create a context: all activation buffers for max_tokens rows. Errors: LR_EUNSUPPORTED (T5 or
 * another architecture the decoder-only pass does not run), LR_EINVAL, LR_ENOMEM. */
int fwd_create(const fwd_params *p, lr_error *err, fwd_ctx **out);
void fwd_destroy(fwd_ctx *c);

/* Run the batch. Returns 0, or LR_EINVAL (with err) for a row whose id or position is out of
 * range or whose KV table lacks room — nothing is computed then. */
int fwd_forward(fwd_ctx *c, const fwd_batch *b, lr_error *err);

/* logits[i, :] (vocab floats each) = final_hidden[rows[i]] · lm_headᵀ for i < n, n <=
 * max_logit_rows, rows index the last fwd_forward batch. */
void fwd_logits(fwd_ctx *c, const int32_t *rows, int n, float *logits);

/* The final-normed hidden state of row r of the last batch (hidden floats). */
const float *fwd_hidden(const fwd_ctx *c, int r);

#endif
