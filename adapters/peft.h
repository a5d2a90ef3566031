/* peft.h — load a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) against a
 * loaded base model (prefix peft_).
 *
 * peft_load() follows SPEC-HF.md section D: keys with or without "base_model.model.", the
 * adapter name stripped if a writer left it in, target_modules as a list or a regex (PCRE2 with
 * Python fullmatch semantics), exclude_modules, rank_pattern / alpha_pattern (first key P whose
 * `(.*\.)?(P)$` matches from the start wins), use_rslora, layers_to_transform + layers_pattern,
 * F32/F16/BF16 tensors, lora_bias, DoRA magnitudes (the per-output-row factor m/‖W0 + s·B·A‖ is
 * computed here from the base weights, in double), and embedding LoRA. What lorad does not
 * support (modules_to_save, bias other than "none", fan_in_fan_out, other peft types, T5 until
 * the engine runs it) is refused with a message naming the field.
 *
 * Everything is validated against the base before any float is converted: each targeted module
 * exists, r equals lora_A.shape[0], A is [r, in] and B is [out, r] of that module; a mismatch is
 * LR_EINCOMPAT (HTTP 422) naming the module, the expected and the actual shape. Hostile
 * safetensors files are rejected by core/safetensors (LR_EFORMAT naming the file).
 *
 * The result is plain data owned by the peft_adapter: per (layer, module) an f32 A [r, in] and
 * Bt [r, out] (lora_B transposed) — or, from a BF16 file, the same two as BF16 (A16, Bt16) —,
 * the scaling s, optional B bias and DoRA factor. adapters/lora applies it. The tensors live in
 * the file's bytes read into huge-page memory wherever they can (adapters/peft_store).
 */
#ifndef LR_PEFT_H
#define LR_PEFT_H

#include <stdint.h>

#include "err.h"
#include "model.h"

/* One LoRA-wrapped linear module. */
typedef struct peft_module {
    int r;          /* rank */
    int in, out;    /* in_features, out_features of the base linear */
    double alpha;   /* lora_alpha after alpha_pattern */
    float s;        /* scaling: alpha / r, or alpha / sqrt(r) with rsLoRA */
    float *A;       /* (r, in)  lora_A.weight */
    float *B;       /* (out, r) lora_B.weight, or NULL when only Bt is held (peft_load) */
    float *Bt;      /* (r, out) lora_B transposed, or NULL: the expand step reads r contiguous
                     * rows of it. peft_load fills Bt and leaves B NULL (one copy of B, in the
                     * layout the kernels want); a module built by hand may hold either. */
    uint16_t *A16;  /* (r, in) A as bfloat16 bits, or NULL; and Bt16 (r, out) likewise. peft_load */
    uint16_t *Bt16; /* keeps a BF16 file's A and B so (then A and Bt are NULL): half the memory
                     * and bandwidth, widened exactly in registers (not for DoRA modules) */
    float *bias_b;  /* (out) lora_B.bias, or NULL */
    float *dora;    /* (out) DoRA factor m / ‖W0 + s·B·A‖ per output row, or NULL */
    float *mag;     /* (out) DoRA magnitude m (kept to recompute the factor for another scale) */
} peft_module;

/* Embedding LoRA on model.embed_tokens: out[id] += s · B · A[:, id]. */
typedef struct peft_embed {
    int r, vocab, hidden;
    double alpha;
    float s;
    float *At; /* (vocab, r) lora_embedding_A transposed, so a token's column is contiguous */
    float *B;  /* (hidden, r) lora_embedding_B */
    float *dora; /* (hidden) DoRA factor m / ‖(E + s·(B·A)ᵀ)[:, d]‖₂ per embedding dim, or NULL */
    float *mag; /* (hidden) DoRA magnitude m */
} peft_embed;

typedef struct peft_adapter {
    char *dir;          /* the folder (owned) */
    int n_layers;       /* of the base model */
    peft_module **mods; /* [n_layers * LR_MOD_COUNT]; NULL where not wrapped */
    peft_embed *embed;  /* NULL if the embedding is not wrapped */
    int r, max_rank;    /* config r; largest per-module rank */
    double alpha;       /* config lora_alpha */
    int use_rslora, use_dora;
    char targets[256]; /* target_modules as written ("q_proj,v_proj" or the regex) */
    int n_modules;     /* wrapped linear modules */
    int64_t bytes;     /* bytes of converted tensors held */
    void *store;       /* peft_load's bulk storage the arrays above live in (private; NULL when the
                        * adapter was built by hand, whose arrays are then each malloc'd) */
} peft_adapter;

typedef struct peft_params {
    int max_rank;           /* refuse ranks above this (0 = no limit) */
    int64_t max_file_bytes; /* refuse a larger adapter_model.safetensors (0 = 4 GiB) */
} peft_params;

/* Load DIR/adapter_config.json and DIR/adapter_model.safetensors for base model m (borrowed; the
 * adapter does not keep it). p may be NULL. On success *out is a new adapter (peft_free).
 * Errors: LR_ENOTFOUND (a file is missing: the message names it), LR_EFORMAT (malformed JSON or
 * safetensors, a missing lora_B next to a lora_A…), LR_EUNSUPPORTED (a field we do not support,
 * named), LR_EINCOMPAT (does not fit the base: module, expected and actual shape), LR_ERANGE (rank
 * above max_rank), LR_ENOMEM. */
int peft_load(const char *dir, const lr_model *m, const peft_params *p, lr_error *err,
              peft_adapter **out);
void peft_free(peft_adapter *a);

/* The module for (layer, mod), or NULL. */
const peft_module *peft_module_at(const peft_adapter *a, int layer, lr_module mod);

/* DoRA factor for module (layer, mod) of m at scaling s: f[o] = mag[o] / ‖W0[o] + s·B[o]·A‖₂,
 * computed in double from the base weights (any dtype). f has md->out floats. */
void peft_dora_factor(const lr_model *m, int layer, lr_module mod, const peft_module *md, double s,
                      float *f);

/* DoRA factor of an embedding LoRA at scaling s (SPEC D.5): f[d] = mag[d] / n_d with
 * n_d = ‖(E + s·(B·A)ᵀ)[:, d]‖₂ over the vocabulary, in double from m's embedding (any dtype). */
void peft_dora_embed_factor(const lr_model *m, const peft_embed *e, double s, float *f);

/* Module name as PEFT sees it inside the base ("model.layers.3.mlp.up_proj") into buf. */
char *peft_module_name(const lr_model *m, int layer, lr_module mod, char *buf, size_t size);

#endif
