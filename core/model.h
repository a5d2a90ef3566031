/* model.h — a HuggingFace model folder loaded for inference: config + weights.
 *
 * lr_model_load() reads config.json, generation_config.json and the safetensors weights
 * (single file or sharded via model.safetensors.index.json) of a LlamaForCausalLM /
 * MistralForCausalLM / Qwen2ForCausalLM folder (T5ForConditionalGeneration: see lr_t5_*; filled in
 * by the T5 work). The struct below is plain data read by the forward pass; it owns its mmaps and
 * any converted buffers, released by lr_model_free().
 *
 * Weight matrices are lr_mat views in HF layout [out, in] (row-major, nn.Linear convention).
 * F32 tensors point straight into the mmap. F16/BF16 matrices are kept in their dtype (the
 * kernels read them directly); 1-D tensors (norm weights, biases) are always converted to f32.
 */
#ifndef LR_MODEL_H
#define LR_MODEL_H

#include <stdint.h>

#include "err.h"

typedef enum { LR_DT_F32 = 0, LR_DT_F16 = 1, LR_DT_BF16 = 2 } lr_dtype;

/* A 2-D weight view [rows, cols], rows = out_features, cols = in_features. Row-major (HF
 * layout) unless packed: then data is in the kernels' tile layout (kernels.h, kern_mat_pack),
 * read only through kernels.h. data may be unaligned (mmap offsets) — kernels must not assume
 * alignment of a row-major view. */
typedef struct lr_mat {
    lr_dtype dtype;
    const void *data;
    int64_t rows, cols;
    int packed;
} lr_mat;

typedef enum {
    LR_ARCH_LLAMA = 0, /* LlamaForCausalLM: Llama 2/3, TinyLlama, SmolLM */
    LR_ARCH_MISTRAL,   /* MistralForCausalLM */
    LR_ARCH_QWEN2,     /* Qwen2ForCausalLM */
    LR_ARCH_T5,        /* T5ForConditionalGeneration (encoder-decoder) */
} lr_arch;

typedef enum { LR_ACT_SILU = 0, LR_ACT_GELU, LR_ACT_GELU_TANH, LR_ACT_RELU } lr_act;

typedef enum {
    LR_ROPE_DEFAULT = 0,
    LR_ROPE_LINEAR,
    LR_ROPE_LLAMA3,
    LR_ROPE_DYNAMIC, /* parsed; refused at load until implemented */
} lr_rope_type;

/* The linear modules LoRA can target. Llama family uses Q..DOWN. T5 maps q,k,v,o of
 * SelfAttention to Q,K,V,O, EncDecAttention to XQ..XO, wi → UP (relu FF), wi_0 → GATE, wi_1 → UP,
 * wo → DOWN. */
typedef enum {
    LR_MOD_Q = 0,
    LR_MOD_K,
    LR_MOD_V,
    LR_MOD_O,
    LR_MOD_GATE,
    LR_MOD_UP,
    LR_MOD_DOWN,
    LR_MOD_XQ,
    LR_MOD_XK,
    LR_MOD_XV,
    LR_MOD_XO,
    LR_MOD_COUNT
} lr_module;

#define LR_MAX_EOS 8

typedef struct lr_config {
    lr_arch arch;
    int vocab;        /* vocab_size */
    int hidden;       /* hidden_size (T5: d_model) */
    int inter;        /* intermediate_size (T5: d_ff) */
    int n_layers;     /* num_hidden_layers (T5: encoder num_layers) */
    int n_heads;      /* num_attention_heads */
    int n_kv_heads;   /* num_key_value_heads (absent → n_heads; T5: n_heads) */
    int head_dim;     /* head_dim (absent → hidden / n_heads; T5: d_kv) */
    float norm_eps;   /* rms_norm_eps (T5: layer_norm_epsilon) */
    lr_act act;       /* hidden_act */
    int max_pos;      /* max_position_embeddings (context length); T5: n_positions or 512 */
    int tie_embed;    /* tie_word_embeddings */
    int attn_bias;    /* q/k/v (+o for Llama attention_bias) biases present */
    int mlp_bias;     /* mlp_bias */
    /* RoPE */
    float rope_theta;
    lr_rope_type rope_type;
    float rope_factor, rope_low_freq, rope_high_freq; /* linear / llama3 */
    int rope_orig_max_pos;                             /* llama3 original_max_position_embeddings */
    /* Sliding window: 0 = none. window_layer[i] != 0 iff layer i uses it. */
    int sliding_window;
    uint8_t *window_layer; /* [n_layers] */
    /* Special ids (-1 = none): eos may be a list (generation_config.json, else config.json). */
    int bos_id, pad_id;
    int n_eos;
    int eos_ids[LR_MAX_EOS];
    /* T5 only */
    int n_dec_layers;       /* num_decoder_layers */
    int rel_buckets;        /* relative_attention_num_buckets */
    int rel_max_dist;       /* relative_attention_max_distance */
    int gated_ff;           /* feed_forward_proj "gated-*" */
    int decoder_start_id;   /* decoder_start_token_id */
} lr_config;

/* One transformer block. Absent tensors are NULL / {.data = NULL}. */
typedef struct lr_layer {
    const float *attn_norm; /* [hidden] input_layernorm (T5: layer.0.layer_norm) */
    const float *mlp_norm;  /* [hidden] post_attention_layernorm (T5: FF layer_norm) */
    lr_mat q, k, v, o;      /* [nH*hd, H], [nKV*hd, H], [nKV*hd, H], [H, nH*hd] */
    const float *bq, *bk, *bv, *bo;
    lr_mat gate, up, down;  /* [I, H], [I, H], [H, I] */
    const float *bgate, *bup, *bdown;
    /* T5 decoder cross-attention (EncDecAttention) and its norm (layer.1.layer_norm). */
    const float *xattn_norm;
    lr_mat xq, xk, xv, xo;
} lr_layer;

typedef struct lr_model {
    lr_config cfg;
    char *dir;            /* the model folder (owned) */
    lr_mat embed;         /* [V, H] model.embed_tokens.weight (T5: shared.weight) */
    lr_mat lm_head;       /* [V, H]; equals embed when tied */
    const float *final_norm;  /* [H] model.norm.weight (T5: decoder.final_layer_norm) */
    lr_layer *layers;     /* [n_layers] (T5: encoder blocks) */
    /* RoPE inverse frequencies [head_dim/2], fp32 exactly as HF computes them (SPEC B.4). */
    float *rope_inv_freq;
    /* T5 only */
    lr_layer *dec_layers;          /* [n_dec_layers] */
    const float *enc_final_norm;   /* [H] encoder.final_layer_norm */
    const float *enc_rel_bias;     /* [rel_buckets, n_heads] encoder block 0 */
    const float *dec_rel_bias;     /* [rel_buckets, n_heads] decoder block 0 */
    int64_t weight_bytes;          /* bytes of all weight matrices as stored (for the bench) */
    void *priv;                    /* loader-owned state (mmaps, converted buffers) */
} lr_model;

/* Load the model folder `dir`. On success *out is a new model (free with lr_model_free).
 * On error returns a negative lr_err and fills err with a message naming the file and the
 * problem (unknown architecture, missing tensor "model.layers.3.mlp.up_proj.weight", shape
 * mismatch with expected and actual, hostile safetensors…). Never crashes on bad files. */
int lr_model_load(const char *dir, lr_error *err, lr_model **out);
/* Release everything. lr_model_free(NULL) does nothing. */
void lr_model_free(lr_model *m);

/* Parse config.json text (+ optional generation_config.json text, may be NULL) into cfg.
 * Exposed for tests. cfg->window_layer is malloc'd (freed by lr_config_clear). */
int lr_config_parse(const char *config_json, const char *gen_config_json, lr_config *cfg,
                    lr_error *err);
void lr_config_clear(lr_config *cfg);

/* Fill inv_freq[0 .. head_dim/2) for cfg's RoPE settings, in fp32 as HF does (SPEC B.4). */
void lr_rope_inv_freq(const lr_config *cfg, float *inv_freq);

/* Convert n half/bfloat16 values to f32 (IEEE binary16 incl. subnormals/inf/NaN; bf16 << 16). */
void lr_f16_to_f32(const uint16_t *src, float *dst, int64_t n);
void lr_bf16_to_f32(const uint16_t *src, float *dst, int64_t n);
/* Added for tests (additive): the portable bit-level path lr_f16_to_f32 falls back to, and
 * whether lr_f16_to_f32 uses the F16C instructions on this CPU. Both paths give identical bits
 * (NaNs come out quiet with their payload, as F16C does). */
void lr_f16_to_f32_scalar(const uint16_t *src, float *dst, int64_t n);
int lr_f16c_available(void);

#endif
