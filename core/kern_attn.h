/* kern_attn.h — causal (optionally sliding-window) grouped-query attention of a block of query
 * rows of one sequence over that sequence's keys and values, for one KV head.
 *
 * A job is nq consecutive query positions pos0 .. pos0+nq−1 of one sequence and the rep query
 * heads that share one KV head (GQA; rep = 1 for plain multi-head attention). Query row i, head g
 * (i < nq, g < rep) is the hd floats at q + i·ldq + g·hd; its output goes to out + i·ldo + g·hd.
 * For the row at position p, with lo = 0, or max(0, p − window + 1) when window > 0:
 *   s_j = (q · k_j) · scale  for lo <= j <= p;   a = softmax(s);   out = Σ_j a_j · v_j.
 * Keys and values are read in place from a paged cache: position j's head vector is at
 * k_blocks[j / block] + (j % block) · ld (v_blocks likewise), so a block of positions is
 * contiguous with stride ld. Every block holding a position in [0, pos0 + nq) must be given.
 *
 * The kernel works in chunks of KERN_ATTN_CHUNK key positions aligned to absolute positions,
 * with an online softmax (running max and sum per row), so its scratch does not grow with the
 * context. The result of a row does not depend on which other rows share its job, as long as
 * the job takes the same path: the chunks it sees are the same, and chunks that are wholly
 * masked for it leave its state bit-for-bit unchanged. The one other path is AVX-512's decode
 * path for jobs of at most 8 rows (nq·rep <= 8, hd a multiple of 16 up to 128), which sums the
 * scores in another order: a row computed there and inside a larger block agree to rounding
 * (relative 1e-6), not bit for bit. It allocates nothing and is thread-safe (each job needs its
 * own scratch).
 */
#ifndef LR_KERN_ATTN_H
#define LR_KERN_ATTN_H

#include <stddef.h>

/* Key positions per chunk of the online softmax. */
#define KERN_ATTN_CHUNK 64

typedef struct kern_attn_job {
    const float *q;               /* query row i head g at q + i·ldq + g·hd */
    int ldq;                      /* floats between query rows */
    float *out;                   /* output row i head g at out + i·ldo + g·hd */
    int ldo;                      /* floats between output rows */
    int nq;                       /* query positions (>= 1) */
    int rep;                      /* query heads per KV head (>= 1) */
    int hd;                       /* head dimension (>= 1) */
    int pos0;                     /* position of query row 0 (>= 0) */
    int window;                   /* 0: causal only; > 0: sliding window of that many keys */
    float scale;                  /* score scale, usually hd^-0.5 */
    const float *const *k_blocks; /* [(pos0 + nq − 1) / block + 1] key block bases */
    const float *const *v_blocks; /* value block bases, same layout */
    int block;                    /* positions per cache block (>= 1) */
    int ld;                       /* floats between consecutive positions in a block */
    /* A part of the keys only (split decoding; kern_attn_splittable must say yes): keys
     * [key_lo, key_hi) — key_hi 0 means pos0 + nq —, on top of causality and the window; and
     * with ml set, out gets the unnormalised Σ_j e^(s_j − m)·v_j of each row r (= i·rep + g)
     * and ml[2r], ml[2r + 1] its running max m and sum l, for the caller to combine the parts
     * (a part with no key leaves m = −inf, l = 0, out 0). */
    int key_lo, key_hi;
    float *ml;
} kern_attn_job;

/* Whether kern_attn honours key_lo, key_hi and ml for jobs of this shape with the ISA
 * kern_get_isa() selects (AVX-512's decode path: nq·rep <= 8, hd a multiple of 16 up to 128). */
int kern_attn_splittable(int nq, int rep, int hd);

/* Floats of scratch kern_attn needs for jobs of up to nq query positions. */
size_t kern_attn_scratch_floats(int nq, int rep, int hd);

/* Run one job with the ISA kern_get_isa() selects. scratch: kern_attn_scratch_floats(nq, rep,
 * hd) floats, not shared with a concurrent job. out must not overlap q or the cache. */
void kern_attn(const kern_attn_job *job, float *scratch);

#endif
