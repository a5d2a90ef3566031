/* lora.h — applying LoRA adapters unmerged inside the engine's linear layers (prefix lora_).
 *
 * The engine sees one opaque pointer per request: a lora_set, i.e. one or more loaded PEFT
 * adapters each with a scale (a single adapter is a set of one with scale 1; the API's
 * `"adapters": [{"id", "scale"}, …]` mix is a set of several). Requests that share a set pointer
 * share a run of rows, so the registry keeps one set per loaded adapter for all its requests.
 *
 * lora_ops() fills the eng_delta_ops the engine calls after each base GEMM:
 *   tmp = X·Aᵀ (T×r, "shrink"), Y += s·tmp·Bᵀ (T×out, "expand")   — sgemm for prefill runs,
 * the register-blocked kernels of adapters/lora_kern for decode-sized runs; DoRA rescales per
 * SPEC D.5 with the bias kept out; the embedding hook adds s·B·A[:, id]. With a mix scale k,
 * every s of that member becomes k·s, including inside the DoRA weight norm (recomputed at
 * lora_set_create).
 */
#ifndef LR_LORA_H
#define LR_LORA_H

#include "engine.h"
#include "peft.h"

typedef struct lora_set lora_set;

/* Build a set of n >= 1 adapters (borrowed: they must outlive the set) with their scales
 * (NULL = all 1). m is the base the adapters were loaded for (used for DoRA norms at scales
 * other than 1). Errors: LR_EINVAL (n < 1, a non-finite scale), LR_ENOMEM. */
int lora_set_create(const lr_model *m, const peft_adapter *const *ads, const float *scales, int n,
                    lr_error *err, lora_set **out);
void lora_set_destroy(lora_set *s);
/* Largest rank over the set's members. */
int lora_set_max_rank(const lora_set *s);

/* Fill ops for model m with adapters of rank <= max_rank (scratch_per_token is sized from it and
 * the model's widest linear). Sets passed to the engine must respect max_rank. */
void lora_ops(const lr_model *m, int max_rank, eng_delta_ops *ops);

/* The hooks themselves, exposed for tests (same as ops->apply / ops->embed). */
void lora_apply(const void *set, int layer, lr_module mod, const float *x, int ldx, float *y,
                int ldy, const float *bias, int t0, int t1, float *scratch);
void lora_embed(const void *set, int32_t id, float *out_row);
int lora_has_module(const void *set, int layer, lr_module mod);
/* 1 when a member's module at (layer, mod) is DoRA: its apply needs the base output in y. */
int lora_needs_base(const void *set, int layer, lr_module mod);

#endif
