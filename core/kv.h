/* kv.h — the paged KV cache: one pool of fixed-size blocks, handed to sequences as they grow.
 *
 * A block holds the keys and values of kv_block_tokens consecutive positions of one sequence for
 * every layer:  block = [n_layers][2 (K, V)][block_tokens][kv_dim] floats. A sequence owns a block
 * table (block ids in position order), so position p lives in block table[p / B] at slot p % B.
 * A second table per sequence is reserved for encoder-decoder models (T5 cross-attention K/V of
 * the encoder output), allocated from the same pool.
 *
 * Not thread-safe: the engine thread is the only user.
 */
#ifndef LR_KV_H
#define LR_KV_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct kv_pool kv_pool;

typedef struct kv_params {
    int n_layers;     /* layers whose K/V a block holds */
    int kv_dim;       /* n_kv_heads * head_dim */
    int block_tokens; /* positions per block (>= 1) */
    int64_t bytes;    /* pool budget; the pool holds floor(bytes / block_bytes) blocks */
    int max_tokens;   /* longest sequence (context length): sizes each block table */
    int resident;     /* 1: fault the whole pool in at creation (LR_ENOMEM if the memory cannot
                       * be had); 0: pages become resident as blocks are first written */
} kv_params;

/* Which of a sequence's tables: its own (self-attention) positions, or the cross-attention K/V
 * of an encoder output (T5). */
typedef enum { KV_SELF = 0, KV_CROSS = 1 } kv_table;

/* A sequence's view of the pool. Plain data embedded in the engine's sequence; initialise with
 * kv_seq_init (allocates the tables once, outside the hot path), release with kv_seq_free. */
typedef struct kv_seq {
    int32_t *blocks[2]; /* [max_blocks] block ids per table */
    int n_blocks[2];
    int max_blocks;
} kv_seq;

/* Create a pool: one mapping on 2 MiB boundaries advised for transparent huge pages (decode
 * attention reads every block of a sequence for each layer: with 4 KiB pages a 1000-token
 * context touched ~400 pages per layer, and the TLB misses made attention 1.5x slower), made
 * resident up front when p->resident (first writes into fresh pages otherwise fault during
 * decode: 0.25 ms per token on this VM). Errors: LR_EINVAL (bad params, or a budget smaller
 * than one block: the message gives the block size), LR_ENOMEM. */
int kv_pool_create(const kv_params *p, lr_error *err, kv_pool **out);
void kv_pool_destroy(kv_pool *p);

int kv_blocks_total(const kv_pool *p);
int kv_blocks_free(const kv_pool *p);
int kv_blocks_used(const kv_pool *p);
int kv_block_tokens(const kv_pool *p);
size_t kv_block_bytes(const kv_pool *p);
/* Blocks needed to hold n positions. */
int kv_blocks_for(const kv_pool *p, int n_tokens);

/* Allocate the block tables of s (LR_ENOMEM). */
int kv_seq_init(const kv_pool *p, kv_seq *s);
/* Release the tables (after kv_seq_release). NULL tables allowed. */
void kv_seq_free(kv_seq *s);
/* Make table `t` of s hold at least n_tokens positions, taking blocks from the pool. All or
 * nothing: returns 0, or LR_ENOMEM with nothing taken when the pool has too few free blocks,
 * or LR_ERANGE when n_tokens exceeds the table's capacity (max_tokens). */
int kv_seq_reserve(kv_pool *p, kv_seq *s, kv_table t, int n_tokens);
/* Positions table t of s can hold without taking more blocks. */
int kv_seq_capacity(const kv_pool *p, const kv_seq *s, kv_table t);
/* Return every block of s (both tables) to the pool. */
void kv_seq_release(kv_pool *p, kv_seq *s);

/* The kv_dim floats of K (or V) of position pos in table t of s for layer l. pos must be below
 * the table's capacity. */
float *kv_k(const kv_pool *p, const kv_seq *s, kv_table t, int layer, int pos);
float *kv_v(const kv_pool *p, const kv_seq *s, kv_table t, int layer, int pos);

#endif
