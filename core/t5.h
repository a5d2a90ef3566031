/* t5.h — the T5 / Flan-T5 encoder-decoder forward pass over one batch (prefix t5_).
 *
 * One call runs two kinds of rows at once (SPEC-HF section C):
 *   - encoder rows: the whole prompt of every sequence that starts this step, all its positions
 *     in order and contiguous. They go through the encoder stack (bidirectional relative bias),
 *     and the final-normed encoder output is projected once per decoder block to the
 *     cross-attention K/V, which are written to the sequence's KV_CROSS table;
 *   - decoder rows: decoder positions of any sequence (the new ones' position 0 included, since
 *     the encoder runs first). Their self-attention K/V go to the KV_SELF table; they attend
 *     causally with the unidirectional bias, then to their sequence's KV_CROSS entries.
 * The KV pool is laid out for the decoder: n_dec_layers layers of n_heads·d_kv floats.
 * LoRA goes through the same eng_delta_ops hook as the decoder-only pass, with layer numbers
 * encoder blocks 0..Le-1, decoder blocks Le..Le+Ld-1. Buffers are sized at t5_create; the forward
 * allocates nothing.
 */
#ifndef LR_T5_H
#define LR_T5_H

#include <stdint.h>

#include "forward.h"

typedef struct t5_ctx t5_ctx;

typedef struct t5_batch {
    /* Encoder rows: each sequence's prompt complete (pos 0..n-1, contiguous). n may be 0. */
    int n_enc;
    const int32_t *enc_ids;
    const int32_t *enc_pos;
    kv_seq *const *enc_kv;          /* the sequence (its KV_CROSS table gets the cross K/V) */
    const void *const *enc_adapter; /* may be NULL */
    /* Decoder rows: any positions of any sequences (rows of one sequence in increasing order);
     * n may be 0. */
    int n_dec;
    const int32_t *dec_ids;
    const int32_t *dec_pos;
    kv_seq *const *dec_kv;
    const void *const *dec_adapter; /* may be NULL */
    const int32_t *dec_enc_len;     /* [n_dec] the encoder length of the row's sequence */
} t5_batch;

/* Create a context for p->model (must be T5): buffers for p->max_tokens rows of each kind.
 * Errors: LR_EUNSUPPORTED (not T5), LR_EINVAL (shapes), LR_ENOMEM. */
int t5_create(const fwd_params *p, lr_error *err, t5_ctx **out);
void t5_destroy(t5_ctx *c);

/* Run a batch. Returns 0, or LR_EINVAL with err naming the row (bad id, position outside the
 * context or the row's KV table, encoder rows of a sequence not contiguous from 0, a decoder row
 * whose encoder length exceeds its KV_CROSS table) — nothing is computed then. */
int t5_forward(t5_ctx *c, const t5_batch *b, lr_error *err);

/* logits[i, :] for decoder rows rows[i] of the last batch (n <= max_logit_rows): the decoder's
 * final-normed state, times d_model^-0.5 when the head is tied (v4 semantics), · lm_headᵀ. */
void t5_logits(t5_ctx *c, const int32_t *rows, int n, float *logits);

/* The relative position bucket of SPEC C.3 for rp = key position − query position. */
int t5_rel_bucket(int rp, int bidirectional, int num_buckets, int max_distance);

#endif
