/* sampler.h — choosing the next token from a row of logits, and log-probabilities.
 *
 * One smp_seq per running sequence holds its random generator (xoshiro256** seeded through
 * splitmix64 from smp_params.seed) and, when a penalty is on, its token counts. smp_sample applies,
 * in this order (the order of HF generate and vLLM's V0 sampler):
 *   1. repetition_penalty over prompt + generated tokens (HF): score < 0 ? score·p : score/p;
 *   2. frequency / presence penalty over generated tokens (OpenAI):
 *      logit −= count·frequency + (count > 0)·presence;
 *   3. temperature 0 → greedy argmax (lowest id on ties). Otherwise logits / temperature, then
 *      top_k (the k largest, plus any token tied with the k-th, as HF and vLLM do), top_p (the
 *      smallest prefix of the descending order — ties by lower id — whose mass ≥ p, at least one
 *      token), min_p (drop p < min_p·p_max), then one draw from the renormalised distribution.
 * Exactly one uniform double is drawn per smp_sample call (greedy included), so a request's output
 * depends only on its seed and its inputs, never on batching or timing.
 *
 * NaN logits count as −inf: they are never chosen while any other token is possible. +inf logits
 * share the whole probability mass equally.
 */
#ifndef LR_SAMPLER_H
#define LR_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h" /* smp_params */
#include "err.h"

typedef struct smp_seq smp_seq; /* per-sequence sampler state (rng, penalty counts) */

/* Check sampling parameters; on error fill *err (may be NULL) with a message naming the field and
 * value and return LR_EINVAL. Ranges: temperature finite ≥ 0; top_p in (0, 1]; top_k ≥ 0;
 * min_p in [0, 1); repetition_penalty finite > 0; presence/frequency penalties finite. */
int smp_params_check(const smp_params *p, lr_error *err);

/* Create the state of one sequence over a vocabulary of `vocab` ids (≥ 1). Parameters are copied.
 * When a penalty is on, a count array of `vocab` uint32 is allocated here (calloc: pages of ids
 * never seen are never written, so they cost no resident memory). Returns 0, LR_EINVAL (bad
 * parameters, see smp_params_check) or LR_ENOMEM; *out is set only on success. */
int smp_seq_create(const smp_params *p, int vocab, smp_seq **out);
/* Free; smp_seq_destroy(NULL) does nothing. */
void smp_seq_destroy(smp_seq *s);

/* Record prompt ids as context for the repetition penalty (not for presence/frequency). Ids outside
 * [0, vocab) are ignored. Cheap no-op when no penalty is on. */
void smp_seq_add_prompt(smp_seq *s, const int32_t *ids, int n);
/* Record a generated token (repetition, presence and frequency penalties). Ids outside [0, vocab)
 * are ignored. */
void smp_seq_accept(smp_seq *s, int32_t id);

/* Choose the next id from raw logits[vocab] (not modified). scratch: smp_scratch_floats(vocab)
 * floats, allocated once by the caller and reusable by every sequence of the same vocab on one
 * thread. Allocates nothing. Deterministic given the seed and the sequence of calls. If no token
 * has a finite or +inf logit, returns the lowest id whose logit is not NaN (0 if all are NaN). */
int32_t smp_sample(smp_seq *s, const float *logits, float *scratch);
/* Floats of scratch smp_sample needs for this vocab. */
size_t smp_scratch_floats(int vocab);

/* log-softmax of raw logits (double accumulation): returns the logprob of `id`; fills the n_top
 * best (descending, ties → lower id) into top_ids / top_lp (n_top is clamped to vocab; the arrays
 * may be NULL when n_top is 0). NaN logits count as −inf; if no logit is finite or +inf every
 * logprob is −inf. Allocates nothing. */
float smp_logprobs(const float *logits, int vocab, int32_t id, int n_top, int32_t *top_ids,
                   float *top_lp);

#endif
