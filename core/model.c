/* model.c — load a HuggingFace model folder: config.json, generation_config.json, weights.
 *
 * This module turns a folder into the plain-data lr_model the forward pass reads: it parses the
 * config with HuggingFace's per-class defaults (SPEC-HF.md B.1, C.1), computes the RoPE inverse
 * frequencies in fp32 exactly as transformers does (B.4), and binds every expected weight
 * (B.2, C.2) to a view into the mmapped safetensors, checking presence, dtype and exact shape.
 * F32/F16/BF16 matrices stay in their own dtype — in the mapping, or, when the CPU's matmul
 * wants it (AVX-512), copied bit for bit into the kernels' packed tile layout in one huge-page
 * region (pack_weights; LR_PACK=0 in the environment keeps the mapping); 1-D tensors (norms, biases) and
 * the T5 relative-bias tables are copied to owned f32 buffers so the kernels can read them
 * directly and aligned. It does no arithmetic on weights besides those conversions, and never
 * logs: every problem is returned as an lr_error naming the file, the field or tensor, and what
 * was expected.
 */
#include "model.h"

#include <errno.h>
#include <immintrin.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "safetensors.h"
#include "util.h"

/* ---------------------------------------------------------------------------------------- */
/* Half and bfloat16 conversion                                                               */

/* binary16 → binary32, bit by bit: sign | exponent rebias (15 → 127) | mantissa << 13.
 * Subnormal halves (exp 0) are normalised by shifting the mantissa up; inf stays inf; NaN keeps
 * its payload and is made quiet, which is what the F16C instruction does too. */
static uint32_t f16_bits_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0);
    if (exp != 0) return sign | ((exp + 112u) << 23) | (man << 13);
    if (man == 0) return sign;
    /* Subnormal: value = man · 2^-24. Shift until the implicit bit (0x400) appears. */
    exp = 113; /* 127 - 15 + 1 */
    while (!(man & 0x400u)) {
        man <<= 1;
        exp--;
    }
    return sign | (exp << 23) | ((man & 0x3ffu) << 13);
}

void lr_f16_to_f32_scalar(const uint16_t *src, float *dst, int64_t n)
{
    const unsigned char *s = (const unsigned char *)src; /* src may be unaligned (mmap) */
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        uint32_t b = f16_bits_to_f32_bits(h);
        memcpy(&dst[i], &b, 4);
    }
}

__attribute__((target("avx,f16c"))) static void f16_to_f32_f16c(const uint16_t *src, float *dst,
                                                                int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)((const char *)src + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    if (i < n)
        lr_f16_to_f32_scalar((const uint16_t *)(const void *)((const char *)src + 2 * i), dst + i,
                             n - i);
}

int lr_f16c_available(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
    }
    return cached;
}

void lr_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
    if (lr_f16c_available())
        f16_to_f32_f16c(src, dst, n);
    else
        lr_f16_to_f32_scalar(src, dst, n);
}

void lr_bf16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        uint32_t b = (uint32_t)h << 16; /* bf16 is the high half of an f32 */
        memcpy(&dst[i], &b, 4);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* config.json                                                                                */

#define CFG "config.json"
#define GEN "generation_config.json"

/* A field is "absent" if missing or null: HF treats both as "use the default". */
static json_t *field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

/* Integer field in [lo, hi]; absent → def. */
static int get_int(json_t *o, const char *file, const char *key, int def, int lo, int hi, int *out,
                   lr_error *err)
{
    json_t *v = field(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return lr_error_set(err, LR_EFORMAT, "%s: \"%s\" must be an integer", file, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return lr_error_set(err, LR_ERANGE, "%s: \"%s\" is %lld; it must be in [%d, %d]", file, key,
                            (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

/* Number field (integer or real), finite, in [lo, hi]; absent → def. */
static int get_num(json_t *o, const char *file, const char *key, double def, double lo, double hi,
                   double *out, lr_error *err)
{
    json_t *v = field(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return lr_error_set(err, LR_EFORMAT, "%s: \"%s\" must be a number", file, key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return lr_error_set(err, LR_ERANGE, "%s: \"%s\" is %g; it must be in [%g, %g]", file, key,
                            x, lo, hi);
    *out = x;
    return 0;
}

static int get_bool(json_t *o, const char *file, const char *key, int def, int *out, lr_error *err)
{
    json_t *v = field(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return lr_error_set(err, LR_EFORMAT, "%s: \"%s\" must be true or false", file, key);
    *out = json_is_true(v);
    return 0;
}

/* A special token id: from generation_config.json if set there, else config.json, else def.
 * -1 means none. */
static int get_token_id(json_t *cfg, json_t *gen, const char *key, int def, int *out, lr_error *err)
{
    if (gen && field(gen, key)) return get_int(gen, GEN, key, def, -1, INT32_MAX, out, err);
    /* In config.json an explicit null means "none", unlike a missing key (class default). */
    json_t *v = json_object_get(cfg, key);
    if (v && json_is_null(v)) {
        *out = -1;
        return 0;
    }
    return get_int(cfg, CFG, key, def, -1, INT32_MAX, out, err);
}

/* eos_token_id: an int or a list of ints (generation_config.json first). */
static int get_eos(json_t *cfg, json_t *gen, int def, lr_config *c, lr_error *err)
{
    const char *file = GEN;
    json_t *v = gen ? field(gen, "eos_token_id") : NULL;
    if (!v) {
        file = CFG;
        v = json_object_get(cfg, "eos_token_id");
        if (!v) { /* absent: the class default; explicit null: none */
            c->n_eos = def >= 0;
            c->eos_ids[0] = def;
            return 0;
        }
    }
    c->n_eos = 0;
    if (json_is_null(v)) return 0;
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0 || x > INT32_MAX)
            return lr_error_set(err, LR_ERANGE, "%s: \"eos_token_id\" %lld is not a token id", file,
                                (long long)x);
        c->eos_ids[c->n_eos++] = (int)x;
        return 0;
    }
    if (!json_is_array(v))
        return lr_error_set(err, LR_EFORMAT,
                            "%s: \"eos_token_id\" must be an integer or a list of integers", file);
    if (json_array_size(v) > LR_MAX_EOS)
        return lr_error_set(err, LR_ERANGE,
                            "%s: \"eos_token_id\" lists %zu ids; at most %d are "
                            "supported",
                            file, json_array_size(v), LR_MAX_EOS);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return lr_error_set(err, LR_EFORMAT, "%s: \"eos_token_id\"[%zu] is not a token id",
                                file, i);
        c->eos_ids[c->n_eos++] = (int)json_integer_value(e);
    }
    return 0;
}

static int parse_act(const char *file, const char *key, const char *s, lr_act *out, lr_error *err)
{
    if (!strcmp(s, "silu") || !strcmp(s, "swish"))
        *out = LR_ACT_SILU;
    else if (!strcmp(s, "gelu"))
        *out = LR_ACT_GELU;
    else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh"))
        *out = LR_ACT_GELU_TANH;
    else if (!strcmp(s, "relu"))
        *out = LR_ACT_RELU;
    else
        return lr_error_set(err, LR_EUNSUPPORTED,
                            "%s: \"%s\" \"%.60s\" is not supported (supported: silu, gelu, "
                            "gelu_new, gelu_pytorch_tanh, relu)",
                            file, key, s);
    return 0;
}

/* RoPE settings: rope_theta + rope_scaling (v4, "type" or "rope_type") or rope_parameters (v5,
 * which also carries rope_theta). */
static int parse_rope(json_t *cfg, lr_config *c, lr_error *err)
{
    double theta = 10000.0;
    int rc = get_num(cfg, CFG, "rope_theta", 10000.0, 1e-30, 1e30, &theta, err);
    if (rc) return rc;
    const char *where = "rope_scaling";
    json_t *rs = field(cfg, "rope_parameters");
    if (rs) {
        where = "rope_parameters";
        if (!json_is_object(rs))
            return lr_error_set(err, LR_EFORMAT, "%s: \"rope_parameters\" must be an object", CFG);
        if ((rc = get_num(rs, CFG, "rope_theta", theta, 1e-30, 1e30, &theta, err))) return rc;
    } else {
        rs = field(cfg, "rope_scaling");
        if (rs && !json_is_object(rs))
            return lr_error_set(err, LR_EFORMAT, "%s: \"rope_scaling\" must be an object or null",
                                CFG);
    }
    c->rope_theta = (float)theta;
    c->rope_type = LR_ROPE_DEFAULT;
    c->rope_factor = 1.0f;
    double prf = 1.0;
    if ((rc = get_num(cfg, CFG, "partial_rotary_factor", 1.0, 0.0, 1.0, &prf, err))) return rc;
    if (rs && (rc = get_num(rs, CFG, "partial_rotary_factor", prf, 0.0, 1.0, &prf, err))) return rc;
    if (prf != 1.0)
        return lr_error_set(err, LR_EUNSUPPORTED,
                            "%s: \"partial_rotary_factor\" %g is not supported (only 1.0)", CFG,
                            prf);
    if (!rs) return 0;
    json_t *jt = field(rs, "rope_type");
    if (!jt) jt = field(rs, "type");
    if (!json_is_string(jt))
        return lr_error_set(err, LR_EFORMAT, "%s: \"%s\" has no string \"rope_type\" or \"type\"",
                            CFG, where);
    const char *type = json_string_value(jt);
    if (!strcmp(type, "default")) return 0;
    double f, lo, hi;
    if (!strcmp(type, "linear")) {
        if (!field(rs, "factor"))
            return lr_error_set(err, LR_EFORMAT, "%s: %s type linear needs \"factor\"", CFG, where);
        if ((rc = get_num(rs, CFG, "factor", 1.0, 1e-6, 1e9, &f, err))) return rc;
        c->rope_type = LR_ROPE_LINEAR;
        c->rope_factor = (float)f;
        return 0;
    }
    if (!strcmp(type, "llama3")) {
        const char *need[] = {"factor", "low_freq_factor", "high_freq_factor",
                              "original_max_position_embeddings"};
        for (int i = 0; i < 4; i++)
            if (!field(rs, need[i]))
                return lr_error_set(err, LR_EFORMAT, "%s: %s type llama3 needs \"%s\"", CFG, where,
                                    need[i]);
        int omax;
        if ((rc = get_num(rs, CFG, "factor", 1.0, 1e-6, 1e9, &f, err)) ||
            (rc = get_num(rs, CFG, "low_freq_factor", 1.0, 1e-6, 1e9, &lo, err)) ||
            (rc = get_num(rs, CFG, "high_freq_factor", 1.0, 1e-6, 1e9, &hi, err)) ||
            (rc =
                 get_int(rs, CFG, "original_max_position_embeddings", 0, 1, INT32_MAX, &omax, err)))
            return rc;
        if (!(hi > lo))
            return lr_error_set(err, LR_ERANGE,
                                "%s: %s high_freq_factor %g must exceed low_freq_factor %g", CFG,
                                where, hi, lo);
        c->rope_type = LR_ROPE_LLAMA3;
        c->rope_factor = (float)f;
        c->rope_low_freq = (float)lo;
        c->rope_high_freq = (float)hi;
        c->rope_orig_max_pos = omax;
        return 0;
    }
    return lr_error_set(err, LR_EUNSUPPORTED,
                        "%s: %s type \"%.40s\" is not supported (supported: default, linear, "
                        "llama3)",
                        CFG, where, type);
}

/* Sliding window per layer. Mistral: sliding_window (default 4096, null = none) on every layer.
 * Qwen2: only if use_sliding_window, on layers >= max_window_layers. An explicit "layer_types"
 * list (newer transformers) decides per layer instead. */
static int parse_window(json_t *cfg, lr_config *c, lr_error *err)
{
    c->window_layer = calloc((size_t)c->n_layers, 1);
    if (!c->window_layer) return lr_error_set(err, LR_ENOMEM, "out of memory");
    int rc, sw = 0, use = 1, mwl = 0;
    if (c->arch == LR_ARCH_MISTRAL) {
        if (!json_object_get(cfg, "sliding_window"))
            sw = 4096;
        else if ((rc = get_int(cfg, CFG, "sliding_window", 0, 1, INT32_MAX, &sw, err)))
            return rc;
    } else if (c->arch == LR_ARCH_QWEN2) {
        if ((rc = get_bool(cfg, CFG, "use_sliding_window", 0, &use, err)) ||
            (rc = get_int(cfg, CFG, "max_window_layers", 28, 0, INT32_MAX, &mwl, err)))
            return rc;
        if (use) {
            if (!json_object_get(cfg, "sliding_window"))
                sw = 4096;
            else if ((rc = get_int(cfg, CFG, "sliding_window", 0, 1, INT32_MAX, &sw, err)))
                return rc;
        }
    } else {
        return 0; /* Llama and T5 have no sliding window */
    }
    c->sliding_window = sw;
    if (!sw) return 0;
    json_t *lt = field(cfg, "layer_types");
    if (lt) {
        if (!json_is_array(lt) || json_array_size(lt) != (size_t)c->n_layers)
            return lr_error_set(err, LR_EFORMAT,
                                "%s: \"layer_types\" must be a list of %d strings (one per layer)",
                                CFG, c->n_layers);
        for (int i = 0; i < c->n_layers; i++) {
            const char *s = json_string_value(json_array_get(lt, (size_t)i));
            if (s && !strcmp(s, "sliding_attention"))
                c->window_layer[i] = 1;
            else if (!s || strcmp(s, "full_attention"))
                return lr_error_set(err, LR_EFORMAT,
                                    "%s: \"layer_types\"[%d] must be \"full_attention\" or "
                                    "\"sliding_attention\"",
                                    CFG, i);
        }
        return 0;
    }
    for (int i = 0; i < c->n_layers; i++)
        c->window_layer[i] = c->arch == LR_ARCH_MISTRAL || i >= mwl;
    return 0;
}

static int parse_arch(json_t *cfg, lr_arch *out, lr_error *err)
{
    static const struct {
        const char *cls, *type;
        lr_arch arch;
    } known[] = {
        {"LlamaForCausalLM", "llama", LR_ARCH_LLAMA},
        {"MistralForCausalLM", "mistral", LR_ARCH_MISTRAL},
        {"Qwen2ForCausalLM", "qwen2", LR_ARCH_QWEN2},
        {"T5ForConditionalGeneration", "t5", LR_ARCH_T5},
        {"T5WithLMHeadModel", NULL, LR_ARCH_T5}, /* the pre-v3 name of the same class */
    };
    const int nk = (int)(sizeof known / sizeof known[0]);
    json_t *a = field(cfg, "architectures");
    if (a) {
        if (!json_is_array(a) || json_array_size(a) == 0 || !json_is_string(json_array_get(a, 0)))
            return lr_error_set(err, LR_EFORMAT,
                                "%s: \"architectures\" must be a non-empty list of strings", CFG);
        const char *name = json_string_value(json_array_get(a, 0));
        for (int i = 0; i < nk; i++)
            if (!strcmp(name, known[i].cls)) {
                *out = known[i].arch;
                return 0;
            }
        return lr_error_set(err, LR_EUNSUPPORTED,
                            "%s: architecture \"%.80s\" is not supported (supported: "
                            "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                            "T5ForConditionalGeneration)",
                            CFG, name);
    }
    const char *mt = json_string_value(field(cfg, "model_type"));
    if (!mt)
        return lr_error_set(err, LR_EFORMAT,
                            "%s: neither \"architectures\" nor \"model_type\" is given", CFG);
    for (int i = 0; i < nk; i++)
        if (known[i].type && !strcmp(mt, known[i].type)) {
            *out = known[i].arch;
            return 0;
        }
    return lr_error_set(err, LR_EUNSUPPORTED, "%s: model_type \"%.80s\" is not supported", CFG, mt);
}

/* Limits that keep every size product far from overflow and refuse absurd configs early. */
#define MAX_DIM (1 << 20)
#define MAX_VOCAB (1 << 24)
#define MAX_LAYERS 4096
#define MAX_HEADS 4096

static int parse_llama_family(json_t *cfg, lr_config *c, lr_error *err)
{
    /* HF class defaults (configuration_llama/mistral/qwen2.py). */
    int d_vocab = 32000, d_inter = 11008, d_kv = -1, d_max = 2048;
    if (c->arch == LR_ARCH_MISTRAL) {
        d_inter = 14336;
        d_kv = 8;
        d_max = 4096 * 32;
    } else if (c->arch == LR_ARCH_QWEN2) {
        d_vocab = 151936;
        d_inter = 22016;
        d_kv = 32;
        d_max = 32768;
    }
    int rc;
    if ((rc = get_int(cfg, CFG, "vocab_size", d_vocab, 1, MAX_VOCAB, &c->vocab, err)) ||
        (rc = get_int(cfg, CFG, "hidden_size", 4096, 1, MAX_DIM, &c->hidden, err)) ||
        (rc = get_int(cfg, CFG, "intermediate_size", d_inter, 1, MAX_DIM, &c->inter, err)) ||
        (rc = get_int(cfg, CFG, "num_hidden_layers", 32, 1, MAX_LAYERS, &c->n_layers, err)) ||
        (rc = get_int(cfg, CFG, "num_attention_heads", 32, 1, MAX_HEADS, &c->n_heads, err)) ||
        (rc = get_int(cfg, CFG, "max_position_embeddings", d_max, 1, INT32_MAX, &c->max_pos, err)))
        return rc;
    /* num_key_value_heads: explicit null → n_heads; absent → the class default (None for Llama,
     * i.e. n_heads; 8 for Mistral; 32 for Qwen2), as the Python constructors do. */
    json_t *kv = json_object_get(cfg, "num_key_value_heads");
    int def_kv = (kv || d_kv < 0) ? c->n_heads : d_kv;
    if ((rc = get_int(cfg, CFG, "num_key_value_heads", def_kv, 1, MAX_HEADS, &c->n_kv_heads, err)))
        return rc;
    if (c->n_heads % c->n_kv_heads)
        return lr_error_set(
            err, LR_EINVAL,
            "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", CFG,
            c->n_heads, c->n_kv_heads);
    if ((rc = get_int(cfg, CFG, "head_dim", c->hidden / c->n_heads, 1, 1 << 16, &c->head_dim, err)))
        return rc;
    if (c->head_dim < 2 || c->head_dim % 2)
        return lr_error_set(err, LR_EINVAL, "%s: head_dim %d must be even and at least 2 for RoPE",
                            CFG, c->head_dim);
    double eps;
    if ((rc = get_num(cfg, CFG, "rms_norm_eps", 1e-6, 0.0, 1.0, &eps, err))) return rc;
    c->norm_eps = (float)eps;
    const char *act = "silu";
    json_t *ja = field(cfg, "hidden_act");
    if (ja && !(act = json_string_value(ja)))
        return lr_error_set(err, LR_EFORMAT, "%s: \"hidden_act\" must be a string", CFG);
    if ((rc = parse_act(CFG, "hidden_act", act, &c->act, err))) return rc;
    if ((rc = get_bool(cfg, CFG, "tie_word_embeddings", 0, &c->tie_embed, err))) return rc;
    if (c->arch == LR_ARCH_LLAMA) {
        if ((rc = get_bool(cfg, CFG, "attention_bias", 0, &c->attn_bias, err)) ||
            (rc = get_bool(cfg, CFG, "mlp_bias", 0, &c->mlp_bias, err)))
            return rc;
    } else {
        /* Qwen2Attention hard-codes q/k/v biases; Mistral and Qwen2 have none elsewhere. */
        c->attn_bias = c->arch == LR_ARCH_QWEN2;
        c->mlp_bias = 0;
    }
    if ((rc = parse_rope(cfg, c, err))) return rc;
    return parse_window(cfg, c, err);
}

static int parse_t5(json_t *cfg, lr_config *c, lr_error *err)
{
    int rc;
    if ((rc = get_int(cfg, CFG, "vocab_size", 32128, 1, MAX_VOCAB, &c->vocab, err)) ||
        (rc = get_int(cfg, CFG, "d_model", 512, 1, MAX_DIM, &c->hidden, err)) ||
        (rc = get_int(cfg, CFG, "d_kv", 64, 1, 1 << 16, &c->head_dim, err)) ||
        (rc = get_int(cfg, CFG, "d_ff", 2048, 1, MAX_DIM, &c->inter, err)) ||
        (rc = get_int(cfg, CFG, "num_layers", 6, 1, MAX_LAYERS, &c->n_layers, err)) ||
        (rc = get_int(cfg, CFG, "num_decoder_layers", c->n_layers, 1, MAX_LAYERS, &c->n_dec_layers,
                      err)) ||
        (rc = get_int(cfg, CFG, "num_heads", 8, 1, MAX_HEADS, &c->n_heads, err)) ||
        (rc = get_int(cfg, CFG, "relative_attention_num_buckets", 32, 2, 1 << 16, &c->rel_buckets,
                      err)) ||
        (rc = get_int(cfg, CFG, "relative_attention_max_distance", 128, 1, INT32_MAX,
                      &c->rel_max_dist, err)) ||
        (rc = get_int(cfg, CFG, "n_positions", 512, 1, INT32_MAX, &c->max_pos, err)) ||
        (rc = get_bool(cfg, CFG, "tie_word_embeddings", 1, &c->tie_embed, err)))
        return rc;
    c->n_kv_heads = c->n_heads;
    double eps;
    if ((rc = get_num(cfg, CFG, "layer_norm_epsilon", 1e-6, 0.0, 1.0, &eps, err))) return rc;
    c->norm_eps = (float)eps;
    /* feed_forward_proj: "ACT" or "gated-ACT"; "gated-gelu" means gelu_new (configuration_t5). */
    const char *ff = "relu";
    json_t *jf = field(cfg, "feed_forward_proj");
    if (jf && !(ff = json_string_value(jf)))
        return lr_error_set(err, LR_EFORMAT, "%s: \"feed_forward_proj\" must be a string", CFG);
    const char *dash = strchr(ff, '-');
    const char *act = ff;
    if (dash) {
        if (strncmp(ff, "gated-", 6) != 0 || strchr(dash + 1, '-'))
            return lr_error_set(err, LR_EFORMAT,
                                "%s: \"feed_forward_proj\" \"%.40s\" is not ACT or gated-ACT", CFG,
                                ff);
        c->gated_ff = 1;
        act = dash + 1;
    }
    if (!strcmp(ff, "gated-gelu")) act = "gelu_new";
    if ((rc = parse_act(CFG, "feed_forward_proj", act, &c->act, err))) return rc;
    c->rope_theta = 0.0f; /* T5 has no RoPE: relative position buckets instead */
    c->rope_type = LR_ROPE_DEFAULT;
    c->rope_factor = 1.0f;
    c->window_layer = calloc((size_t)c->n_layers, 1);
    if (!c->window_layer) return lr_error_set(err, LR_ENOMEM, "out of memory");
    return 0;
}

static json_t *load_json_text(const char *text, const char *file, lr_error *err)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        lr_error_set(err, LR_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", file, je.text,
                     je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        lr_error_set(err, LR_EFORMAT, "%s: not a JSON object", file);
        return NULL;
    }
    return j;
}

int lr_config_parse(const char *config_json, const char *gen_config_json, lr_config *cfg,
                    lr_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    json_t *gen = NULL, *c = load_json_text(config_json, CFG, err);
    if (!c) return err ? err->code : LR_EFORMAT;
    int rc = 0;
    if (gen_config_json && !(gen = load_json_text(gen_config_json, GEN, err))) {
        rc = err ? err->code : LR_EFORMAT;
        goto out;
    }
    if ((rc = parse_arch(c, &cfg->arch, err))) goto out;
    rc = cfg->arch == LR_ARCH_T5 ? parse_t5(c, cfg, err) : parse_llama_family(c, cfg, err);
    if (rc) goto out;
    /* Special ids with the class defaults: Llama/Mistral bos 1 eos 2; Qwen2 none; T5 pad 0,
     * eos 1, decoder start 0. */
    int is_t5 = cfg->arch == LR_ARCH_T5, is_qwen = cfg->arch == LR_ARCH_QWEN2;
    int d_bos = (is_t5 || is_qwen) ? -1 : 1, d_eos = is_t5 ? 1 : is_qwen ? -1 : 2;
    int d_pad = is_t5 ? 0 : -1;
    if ((rc = get_token_id(c, gen, "bos_token_id", d_bos, &cfg->bos_id, err)) ||
        (rc = get_token_id(c, gen, "pad_token_id", d_pad, &cfg->pad_id, err)) ||
        (rc = get_token_id(c, gen, "decoder_start_token_id", is_t5 ? cfg->pad_id : -1,
                           &cfg->decoder_start_id, err)) ||
        (rc = get_eos(c, gen, d_eos, cfg, err)))
        goto out;
out:
    json_decref(c);
    json_decref(gen);
    if (rc) lr_config_clear(cfg);
    return rc;
}

void lr_config_clear(lr_config *cfg)
{
    if (!cfg) return;
    free(cfg->window_layer);
    memset(cfg, 0, sizeof *cfg);
}

/* ---------------------------------------------------------------------------------------- */
/* RoPE                                                                                       */

/* inv[k] = 1 / theta^(2k/d) in fp32 (exponent formed in fp32, powf of the fp32 theta), then
 *   linear: inv[k] / factor
 *   llama3: wavelen = 2π/inv; keep inv if wavelen < Lo/hi, inv/f if wavelen > Lo/lo, else blend
 *           s = (Lo/wavelen − lo)/(hi − lo); inv' = (1−s)·inv/f + s·inv.
 * Every operation is a single fp32 operation in the order torch evaluates it; constants that are
 * Python doubles in HF (2π, hi − lo, Lo/lo, Lo/hi) are formed in double and rounded once. A
 * Python scalar divided by a tensor is reciprocal(tensor) · scalar in torch (Tensor.__rtruediv__),
 * two roundings, so "2π / inv" and "Lo / wavelen" are computed that way here too. */
void lr_rope_inv_freq(const lr_config *cfg, float *inv)
{
    int d = cfg->head_dim, half = d / 2;
    float theta = cfg->rope_theta;
    for (int k = 0; k < half; k++) {
        float e = (float)(2 * k) / (float)d;
        inv[k] = 1.0f / powf(theta, e);
    }
    if (cfg->rope_type == LR_ROPE_LINEAR) {
        for (int k = 0; k < half; k++)
            inv[k] = inv[k] / cfg->rope_factor;
    } else if (cfg->rope_type == LR_ROPE_LLAMA3) {
        double lo = cfg->rope_low_freq, hi = cfg->rope_high_freq, lo_ctx = cfg->rope_orig_max_pos;
        float f = cfg->rope_factor;
        float low_wave = (float)(lo_ctx / lo), high_wave = (float)(lo_ctx / hi);
        float two_pi = (float)(2.0 * M_PI), span = (float)(hi - lo);
        float lo_f = (float)lo, ctx_f = (float)lo_ctx;
        for (int k = 0; k < half; k++) {
            float wave = (1.0f / inv[k]) * two_pi;
            if (wave < high_wave) continue;
            if (wave > low_wave) {
                inv[k] = inv[k] / f;
                continue;
            }
            float s = ((1.0f / wave) * ctx_f - lo_f) / span;
            inv[k] = (1.0f - s) * inv[k] / f + s * inv[k];
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Weights                                                                                    */

typedef struct {
    st_set *set;
    void **bufs; /* owned f32 copies of 1-D tensors */
    int nbufs, capbufs;
    void *pack; /* the packed weight matrices (pack_weights), one mapping of pack_len bytes */
    size_t pack_len;
} model_priv;

typedef struct {
    lr_model *m;
    model_priv *p;
    lr_error *err;
} loader;

static const st_tensor *need(loader *L, const char *name, int required, int ndim,
                             const int64_t *shape, int *rc)
{
    *rc = 0;
    const st_tensor *t = st_set_find(L->p->set, name);
    char want[96], got[160];
    st_shape_str(shape, ndim, want, sizeof want);
    if (!t) {
        if (required)
            *rc = lr_error_set(L->err, LR_EFORMAT, "%s: missing tensor '%s' (expected %s)",
                               L->m->dir, name, want);
        return NULL;
    }
    if (!st_tensor_is_float(t)) {
        *rc = lr_error_set(L->err, LR_EUNSUPPORTED,
                           "%s: tensor '%s' has dtype %s; lorad needs F32, F16 or BF16", t->file,
                           name, st_dtype_name(t->dtype));
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        *rc = lr_error_set(L->err, LR_EFORMAT,
                           "%s: tensor '%s' has shape %s but config.json implies %s", t->file, name,
                           st_shape_str(t->shape, t->ndim, got, sizeof got), want);
        return NULL;
    }
    return t;
}

static lr_dtype to_lr_dtype(st_dtype d)
{
    return d == ST_F16 ? LR_DT_F16 : d == ST_BF16 ? LR_DT_BF16 : LR_DT_F32;
}

/* Bind a [rows, cols] matrix in place. Absent and not required → {.data = NULL}. */
static int get_mat(loader *L, const char *name, int required, int64_t rows, int64_t cols,
                   lr_mat *out)
{
    int64_t shape[2] = {rows, cols};
    int rc;
    const st_tensor *t = need(L, name, required, 2, shape, &rc);
    memset(out, 0, sizeof *out);
    if (!t) return rc;
    out->dtype = to_lr_dtype(t->dtype);
    out->data = t->data;
    out->rows = rows;
    out->cols = cols;
    L->m->weight_bytes += (int64_t)t->nbytes;
    return 0;
}

/* Copy a tensor of the given shape to an owned f32 buffer. Absent and not required → NULL. */
static int get_f32(loader *L, const char *name, int required, int ndim, const int64_t *shape,
                   const float **out)
{
    int rc;
    const st_tensor *t = need(L, name, required, ndim, shape, &rc);
    *out = NULL;
    if (!t) return rc;
    model_priv *p = L->p;
    if (p->nbufs == p->capbufs) {
        int cap = p->capbufs ? 2 * p->capbufs : 64;
        void **nb = realloc(p->bufs, (size_t)cap * sizeof *nb);
        if (!nb) return lr_error_set(L->err, LR_ENOMEM, "out of memory");
        p->bufs = nb;
        p->capbufs = cap;
    }
    float *buf = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *buf);
    if (!buf) return lr_error_set(L->err, LR_ENOMEM, "out of memory for tensor '%s'", name);
    p->bufs[p->nbufs++] = buf;
    if (t->dtype == ST_F32)
        memcpy(buf, t->data, t->nbytes);
    else if (t->dtype == ST_F16)
        lr_f16_to_f32(t->data, buf, t->numel);
    else
        lr_bf16_to_f32(t->data, buf, t->numel);
    *out = buf;
    return 0;
}

static int get_vec(loader *L, const char *name, int required, int64_t n, const float **out)
{
    return get_f32(L, name, required, 1, &n, out);
}

static int load_llama(loader *L)
{
    lr_model *m = L->m;
    const lr_config *c = &m->cfg;
    int64_t H = c->hidden, I = c->inter, V = c->vocab, hd = c->head_dim;
    int64_t qd = (int64_t)c->n_heads * hd, kvd = (int64_t)c->n_kv_heads * hd;
    int rc;
    if ((rc = get_mat(L, "model.embed_tokens.weight", 1, V, H, &m->embed)) ||
        (rc = get_vec(L, "model.norm.weight", 1, H, &m->final_norm)))
        return rc;
    if (c->tie_embed)
        m->lm_head = m->embed;
    else if ((rc = get_mat(L, "lm_head.weight", 1, V, H, &m->lm_head)))
        return rc;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return lr_error_set(L->err, LR_ENOMEM, "out of memory");
    int qkv_b = c->attn_bias, o_b = c->attn_bias && c->arch != LR_ARCH_QWEN2, mb = c->mlp_bias;
    for (int i = 0; i < c->n_layers; i++) {
        lr_layer *l = &m->layers[i];
        char n[128];
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%d.%s", i, suffix), n)
        if ((rc = get_vec(L, NAME("input_layernorm.weight"), 1, H, &l->attn_norm)) ||
            (rc = get_vec(L, NAME("post_attention_layernorm.weight"), 1, H, &l->mlp_norm)) ||
            (rc = get_mat(L, NAME("self_attn.q_proj.weight"), 1, qd, H, &l->q)) ||
            (rc = get_mat(L, NAME("self_attn.k_proj.weight"), 1, kvd, H, &l->k)) ||
            (rc = get_mat(L, NAME("self_attn.v_proj.weight"), 1, kvd, H, &l->v)) ||
            (rc = get_mat(L, NAME("self_attn.o_proj.weight"), 1, H, qd, &l->o)) ||
            (rc = get_mat(L, NAME("mlp.gate_proj.weight"), 1, I, H, &l->gate)) ||
            (rc = get_mat(L, NAME("mlp.up_proj.weight"), 1, I, H, &l->up)) ||
            (rc = get_mat(L, NAME("mlp.down_proj.weight"), 1, H, I, &l->down)))
            return rc;
        if (qkv_b && ((rc = get_vec(L, NAME("self_attn.q_proj.bias"), 1, qd, &l->bq)) ||
                      (rc = get_vec(L, NAME("self_attn.k_proj.bias"), 1, kvd, &l->bk)) ||
                      (rc = get_vec(L, NAME("self_attn.v_proj.bias"), 1, kvd, &l->bv))))
            return rc;
        if (o_b && (rc = get_vec(L, NAME("self_attn.o_proj.bias"), 1, H, &l->bo))) return rc;
        if (mb && ((rc = get_vec(L, NAME("mlp.gate_proj.bias"), 1, I, &l->bgate)) ||
                   (rc = get_vec(L, NAME("mlp.up_proj.bias"), 1, I, &l->bup)) ||
                   (rc = get_vec(L, NAME("mlp.down_proj.bias"), 1, H, &l->bdown))))
            return rc;
#undef NAME
    }
    return 0;
}

/* One T5 block's attention: PREFIX.{q,k,v,o}.weight. */
static int t5_attn(loader *L, const char *prefix, lr_mat *q, lr_mat *k, lr_mat *v, lr_mat *o)
{
    const lr_config *c = &L->m->cfg;
    int64_t H = c->hidden, inner = (int64_t)c->n_heads * c->head_dim;
    char n[160];
    int rc;
    snprintf(n, sizeof n, "%s.q.weight", prefix);
    if ((rc = get_mat(L, n, 1, inner, H, q))) return rc;
    snprintf(n, sizeof n, "%s.k.weight", prefix);
    if ((rc = get_mat(L, n, 1, inner, H, k))) return rc;
    snprintf(n, sizeof n, "%s.v.weight", prefix);
    if ((rc = get_mat(L, n, 1, inner, H, v))) return rc;
    snprintf(n, sizeof n, "%s.o.weight", prefix);
    return get_mat(L, n, 1, H, inner, o);
}

/* One T5 feed-forward: PREFIX.DenseReluDense.{wi | wi_0, wi_1}, wo. */
static int t5_ff(loader *L, const char *prefix, lr_layer *l)
{
    const lr_config *c = &L->m->cfg;
    int64_t H = c->hidden, I = c->inter;
    char n[160];
    int rc;
    if (c->gated_ff) {
        snprintf(n, sizeof n, "%s.DenseReluDense.wi_0.weight", prefix);
        if ((rc = get_mat(L, n, 1, I, H, &l->gate))) return rc;
        snprintf(n, sizeof n, "%s.DenseReluDense.wi_1.weight", prefix);
    } else {
        snprintf(n, sizeof n, "%s.DenseReluDense.wi.weight", prefix);
    }
    if ((rc = get_mat(L, n, 1, I, H, &l->up))) return rc;
    snprintf(n, sizeof n, "%s.DenseReluDense.wo.weight", prefix);
    return get_mat(L, n, 1, H, I, &l->down);
}

static int load_t5(loader *L)
{
    lr_model *m = L->m;
    const lr_config *c = &m->cfg;
    int64_t H = c->hidden, V = c->vocab;
    int64_t rel[2] = {c->rel_buckets, c->n_heads};
    int rc;
    /* shared.weight, or one of its aliases when a writer dropped the shared copy. */
    const char *emb = "shared.weight";
    if (!st_set_find(L->p->set, emb) && st_set_find(L->p->set, "encoder.embed_tokens.weight"))
        emb = "encoder.embed_tokens.weight";
    else if (!st_set_find(L->p->set, emb) && st_set_find(L->p->set, "decoder.embed_tokens.weight"))
        emb = "decoder.embed_tokens.weight";
    if ((rc = get_mat(L, emb, 1, V, H, &m->embed))) return rc;
    if (c->tie_embed)
        m->lm_head = m->embed;
    else if ((rc = get_mat(L, "lm_head.weight", 1, V, H, &m->lm_head)))
        return rc;
    if ((rc = get_vec(L, "encoder.final_layer_norm.weight", 1, H, &m->enc_final_norm)) ||
        (rc = get_vec(L, "decoder.final_layer_norm.weight", 1, H, &m->final_norm)) ||
        (rc = get_f32(L, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 1,
                      2, rel, &m->enc_rel_bias)) ||
        (rc = get_f32(L, "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 1,
                      2, rel, &m->dec_rel_bias)))
        return rc;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->dec_layers = calloc((size_t)c->n_dec_layers, sizeof *m->dec_layers);
    if (!m->layers || !m->dec_layers) return lr_error_set(L->err, LR_ENOMEM, "out of memory");
    char p[128], n[160];
    for (int i = 0; i < c->n_layers; i++) {
        lr_layer *l = &m->layers[i];
        snprintf(n, sizeof n, "encoder.block.%d.layer.0.layer_norm.weight", i);
        if ((rc = get_vec(L, n, 1, H, &l->attn_norm))) return rc;
        snprintf(n, sizeof n, "encoder.block.%d.layer.1.layer_norm.weight", i);
        if ((rc = get_vec(L, n, 1, H, &l->mlp_norm))) return rc;
        snprintf(p, sizeof p, "encoder.block.%d.layer.0.SelfAttention", i);
        if ((rc = t5_attn(L, p, &l->q, &l->k, &l->v, &l->o))) return rc;
        snprintf(p, sizeof p, "encoder.block.%d.layer.1", i);
        if ((rc = t5_ff(L, p, l))) return rc;
    }
    for (int i = 0; i < c->n_dec_layers; i++) {
        lr_layer *l = &m->dec_layers[i];
        snprintf(n, sizeof n, "decoder.block.%d.layer.0.layer_norm.weight", i);
        if ((rc = get_vec(L, n, 1, H, &l->attn_norm))) return rc;
        snprintf(n, sizeof n, "decoder.block.%d.layer.1.layer_norm.weight", i);
        if ((rc = get_vec(L, n, 1, H, &l->xattn_norm))) return rc;
        snprintf(n, sizeof n, "decoder.block.%d.layer.2.layer_norm.weight", i);
        if ((rc = get_vec(L, n, 1, H, &l->mlp_norm))) return rc;
        snprintf(p, sizeof p, "decoder.block.%d.layer.0.SelfAttention", i);
        if ((rc = t5_attn(L, p, &l->q, &l->k, &l->v, &l->o))) return rc;
        snprintf(p, sizeof p, "decoder.block.%d.layer.1.EncDecAttention", i);
        if ((rc = t5_attn(L, p, &l->xq, &l->xk, &l->xv, &l->xo))) return rc;
        snprintf(p, sizeof p, "decoder.block.%d.layer.2", i);
        if ((rc = t5_ff(L, p, l))) return rc;
    }
    return 0;
}

#define MAX_CONFIG_BYTES (16u << 20)

/* Read dir/name into a new NUL-terminated string; a NUL inside is a format error. */
static int read_text(const char *dir, const char *name, char **out, lr_error *err)
{
    *out = NULL;
    char path[4096];
    int k = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (k < 0 || (size_t)k >= sizeof path)
        return lr_error_set(err, LR_EINVAL, "%s: path too long", dir);
    size_t len;
    int rc = lr_read_file(path, NULL, MAX_CONFIG_BYTES, out, &len, err);
    if (rc) return rc;
    if (strlen(*out) != len) {
        free(*out);
        *out = NULL;
        return lr_error_set(err, LR_EFORMAT, "%s: contains a NUL byte", path);
    }
    return 0;
}

/* Every weight matrix the matmul reads (embed only through lm_head when tied: the gather
 * reads rows of the packed layout then). Returns the count; mats NULL just counts. */
static int matmul_mats(lr_model *m, lr_mat **mats)
{
    int n = 0;
#define ADD(M)                                                                                   \
    do {                                                                                         \
        if ((M)->data) {                                                                         \
            if (mats) mats[n] = (M);                                                             \
            n++;                                                                                 \
        }                                                                                        \
    } while (0)
    for (int pass = 0; pass < 2; pass++) {
        lr_layer *ls = pass ? m->dec_layers : m->layers;
        int nl = pass ? (ls ? m->cfg.n_dec_layers : 0) : m->cfg.n_layers;
        for (int l = 0; l < nl; l++) {
            lr_layer *L = &ls[l];
            lr_mat *all[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down,
                             &L->xq, &L->xk, &L->xv, &L->xo};
            for (size_t i = 0; i < sizeof all / sizeof *all; i++)
                ADD(all[i]);
        }
    }
    ADD(&m->lm_head);
#undef ADD
    return n;
}

/* Drop the whole pages inside [p, p + n) from this process (a private read-only file mapping:
 * the page cache keeps them, the process's resident set no longer counts them). */
static void drop_pages(const void *p, size_t n)
{
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, b = ((uintptr_t)p + n) & ~(uintptr_t)4095;
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Matrices claimed one at a time by the packing threads: mats[i] is packed to dst[i]. */
typedef struct pack_job {
    lr_mat **mats;
    char **dst;
    int n;
    int next;
} pack_job;

static void *pack_main(void *arg)
{
    pack_job *j = arg;
    int i;
    while ((i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->n) {
        lr_mat *w = j->mats[i], packed;
        kern_mat_pack(w, j->dst[i], &packed);
        drop_pages(w->data, (size_t)w->rows * (size_t)w->cols * (w->dtype == LR_DT_F32 ? 4 : 2));
        *w = packed;
    }
    return NULL;
}

/* Copy every matmul weight into the kernels' packed layout (kernels.h), in one 2 MiB-aligned
 * anonymous region advised for huge pages: W then streams as one contiguous run per tile of
 * 48 rows, and the TLB covers it. The mapped originals are dropped from the resident set. A
 * tied lm_head is packed once and the embedding view follows it. One thread per core packs
 * (the copy is bound by page faults on the new region and by the scattered reads: a 500 MB F32
 * model took 0.9 s on one thread). Without the memory for a copy the model keeps the mapped
 * row-major views (the kernels read both): returns 0 either way, or LR_ENOMEM for the lists. */
static int pack_weights(lr_model *m, model_priv *p, lr_error *err)
{
    int n = matmul_mats(m, NULL);
    lr_mat **mats = calloc((size_t)n + 1, sizeof *mats);
    char **dst = calloc((size_t)n + 1, sizeof *dst);
    if (!mats || !dst) {
        free(mats);
        free(dst);
        return lr_error_set(err, LR_ENOMEM, "out of memory");
    }
    matmul_mats(m, mats);
    int tied = m->lm_head.data && m->lm_head.data == m->embed.data;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (kern_pack_bytes(mats[i]) + 63) & ~(size_t)63;
    size_t mapped;
    char *at = lr_map_huge(total, &mapped);
    if (!at) { /* no room for a copy: serve from the mapped row-major views */
        free(mats);
        free(dst);
        return 0;
    }
    p->pack = at;
    p->pack_len = mapped;
    for (int i = 0; i < n; i++) {
        dst[i] = at;
        at += (kern_pack_bytes(mats[i]) + 63) & ~(size_t)63;
    }
    pack_job job = {mats, dst, n, 0};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nth = cores < 1 ? 1 : cores > 16 ? 16 : (int)cores, started = 0;
    pthread_t th[16];
    for (int t = 1; t < nth && t < n; t++)
        if (pthread_create(&th[started], NULL, pack_main, &job) == 0) started++;
    pack_main(&job); /* this thread packs too, and alone if no thread could start */
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    if (tied) m->embed = m->lm_head;
    free(mats);
    free(dst);
    return 0;
}

int lr_model_load(const char *dir, lr_error *err, lr_model **out)
{
    *out = NULL;
    char *cfg_text = NULL, *gen_text = NULL;
    lr_model *m = calloc(1, sizeof *m);
    model_priv *p = calloc(1, sizeof *p);
    int rc = 0;
    if (!m || !p || !(m->dir = strdup(dir))) {
        free(p);
        rc = lr_error_set(err, LR_ENOMEM, "out of memory");
        goto fail;
    }
    m->priv = p;
    if ((rc = read_text(dir, CFG, &cfg_text, err))) goto fail;
    rc = read_text(dir, GEN, &gen_text, err);
    if (rc == LR_ENOTFOUND) { /* generation_config.json is optional */
        lr_error_clear(err);
        rc = 0;
    }
    if (rc) goto fail;
    if ((rc = lr_config_parse(cfg_text, gen_text, &m->cfg, err))) {
        lr_error_prefix(err, "%s/", dir);
        goto fail;
    }
    if ((rc = st_set_open_dir(dir, err, &p->set))) goto fail;
    loader L = {m, p, err};
    if ((rc = m->cfg.arch == LR_ARCH_T5 ? load_t5(&L) : load_llama(&L))) goto fail;
    const char *pk = getenv("LR_PACK");
    if (kern_pack_wanted() && !(pk && strcmp(pk, "0") == 0) && (rc = pack_weights(m, p, err)))
        goto fail;
    if (m->cfg.arch != LR_ARCH_T5) {
        m->rope_inv_freq = malloc((size_t)(m->cfg.head_dim / 2) * sizeof(float));
        if (!m->rope_inv_freq) {
            rc = lr_error_set(err, LR_ENOMEM, "out of memory");
            goto fail;
        }
        lr_rope_inv_freq(&m->cfg, m->rope_inv_freq);
    }
    free(cfg_text);
    free(gen_text);
    *out = m;
    return 0;
fail:
    free(cfg_text);
    free(gen_text);
    lr_model_free(m);
    return rc;
}

void lr_model_free(lr_model *m)
{
    if (!m) return;
    model_priv *p = m->priv;
    if (p) {
        for (int i = 0; i < p->nbufs; i++)
            free(p->bufs[i]);
        free(p->bufs);
        lr_unmap(p->pack, p->pack_len);
        st_set_close(p->set);
        free(p);
    }
    free(m->layers);
    free(m->dec_layers);
    free(m->rope_inv_freq);
    free(m->dir);
    lr_config_clear(&m->cfg);
    free(m);
}
