/* check_model.c — config parsing, RoPE tables, dtype conversion and model loading.
 *
 * References are independent of model.c: HF class defaults and SPEC-HF.md B.4 test vectors are
 * written out by hand, f16/bf16 are checked against an ldexp-based decoding of the bit fields
 * over all 65536 inputs, and model folders are written by a tiny safetensors writer below that
 * shares no code with core/safetensors.c. If LORAD_MODELS is set, every generated model folder
 * in it (tests/gen/gen_model.py --all) is loaded too.
 */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "model.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static uint32_t fbits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static float bitsf(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* Distance in units in the last place between two finite floats of the same sign. */
static int64_t ulps(float a, float b)
{
    int64_t x = (int32_t)fbits(a), y = (int32_t)fbits(b);
    return x > y ? x - y : y - x;
}

static lr_config parse_ok(const char *cfg, const char *gen)
{
    lr_config c;
    lr_error e;
    lr_error_clear(&e);
    int rc = lr_config_parse(cfg, gen, &c, &e);
    ck_assert_msg(rc == 0, "parse failed: %s", e.msg);
    return c;
}

static void parse_fail(const char *cfg, const char *gen, int code, const char *needle)
{
    lr_config c;
    lr_error e;
    lr_error_clear(&e);
    int rc = lr_config_parse(cfg, gen, &c, &e);
    ck_assert_msg(rc == code, "expected %d got %d (%s)", code, rc, e.msg);
    ck_assert_msg(strstr(e.msg, needle) != NULL, "message '%s' lacks '%s'", e.msg, needle);
    ck_assert_ptr_null(c.window_layer);
}

/* ---- dtype conversion ------------------------------------------------------------------- */

/* Reference binary16 decoding from the definition: (-1)^s · 2^(e-15) · (1 + m/1024), or
 * 2^-14 · m/1024 for e = 0; e = 31 is inf (m = 0) or NaN. */
static void f16_ref_check(uint16_t h, float got)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    if (e == 31 && m != 0) {
        ck_assert_msg(isnan(got), "0x%04x: not NaN", h);
        ck_assert_int_eq(!!signbit(got), s);
        /* payload preserved, quiet bit set (what the F16C instruction produces) */
        ck_assert_uint_eq(fbits(got) & 0x7fffffu, 0x400000u | ((uint32_t)m << 13));
        return;
    }
    double v = e == 31 ? INFINITY : e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    float want = (float)(s ? -v : v); /* exact: every half is a float */
    ck_assert_msg(fbits(got) == fbits(want), "0x%04x: got %08x want %08x", h, fbits(got),
                  fbits(want));
}

START_TEST(test_f16_all)
{
    uint16_t *src = malloc(65536 * 2 + 2);
    float *a = malloc(65536 * 4), *b = malloc(65536 * 4);
    for (int i = 0; i < 65536; i++)
        src[i] = (uint16_t)i;
    lr_f16_to_f32(src, a, 65536);
    lr_f16_to_f32_scalar(src, b, 65536);
    for (int i = 0; i < 65536; i++) {
        f16_ref_check((uint16_t)i, a[i]);
        f16_ref_check((uint16_t)i, b[i]);
    }
    /* Unaligned source and lengths that leave a tail for the vector path. */
    unsigned char *raw = malloc(2 * 40 + 1);
    for (int i = 0; i < 40; i++) {
        uint16_t h = (uint16_t)(i * 1663 + 5);
        memcpy(raw + 1 + 2 * i, &h, 2);
    }
    for (int n = 0; n <= 37; n += 37 / 4 + 1) {
        float out[40];
        lr_f16_to_f32((const uint16_t *)(const void *)(raw + 1), out, n);
        for (int i = 0; i < n; i++)
            f16_ref_check((uint16_t)(i * 1663 + 5), out[i]);
    }
    printf("f16: F16C path %s\n", lr_f16c_available() ? "in use" : "unavailable");
    free(raw);
    free(src);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_bf16_all)
{
    uint16_t *src = malloc(65536 * 2);
    float *a = malloc(65536 * 4);
    for (int i = 0; i < 65536; i++)
        src[i] = (uint16_t)i;
    lr_bf16_to_f32(src, a, 65536);
    for (int i = 0; i < 65536; i++) {
        int s = i >> 15, e = (i >> 7) & 255, m = i & 127;
        if (e == 255 && m) { /* NaN: bits pass through unchanged */
            ck_assert(isnan(a[i]));
            ck_assert_uint_eq(fbits(a[i]), (uint32_t)i << 16);
            continue;
        }
        double v = e == 255 ? INFINITY : e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
        float want = (float)(s ? -v : v);
        ck_assert_msg(fbits(a[i]) == fbits(want), "0x%04x", i);
    }
    free(src);
    free(a);
}
END_TEST

/* ---- config.json ------------------------------------------------------------------------ */

START_TEST(test_llama_defaults)
{
    lr_config c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"]}", NULL);
    ck_assert_int_eq(c.arch, LR_ARCH_LLAMA);
    ck_assert_int_eq(c.vocab, 32000);
    ck_assert_int_eq(c.hidden, 4096);
    ck_assert_int_eq(c.inter, 11008);
    ck_assert_int_eq(c.n_layers, 32);
    ck_assert_int_eq(c.n_heads, 32);
    ck_assert_int_eq(c.n_kv_heads, 32);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert(c.norm_eps == 1e-6f);
    ck_assert_int_eq(c.act, LR_ACT_SILU);
    ck_assert_int_eq(c.max_pos, 2048);
    ck_assert_int_eq(c.tie_embed, 0);
    ck_assert_int_eq(c.attn_bias, 0);
    ck_assert_int_eq(c.mlp_bias, 0);
    ck_assert(c.rope_theta == 10000.0f);
    ck_assert_int_eq(c.rope_type, LR_ROPE_DEFAULT);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_ptr_nonnull(c.window_layer);
    for (int i = 0; i < 32; i++)
        ck_assert_int_eq(c.window_layer[i], 0);
    ck_assert_int_eq(c.bos_id, 1);
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_ids[0], 2);
    ck_assert_int_eq(c.pad_id, -1);
    lr_config_clear(&c);
    ck_assert_ptr_null(c.window_layer);
    lr_config_clear(NULL);
}
END_TEST

START_TEST(test_llama_real)
{
    /* TinyLlama-1.1B-Chat-v1.0's config.json, verbatim fields. */
    const char *tiny =
        "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"bos_token_id\":1,"
        "\"eos_token_id\":2,\"hidden_act\":\"silu\",\"hidden_size\":2048,\"initializer_range\":"
        "0.02,\"intermediate_size\":5632,\"max_position_embeddings\":2048,\"model_type\":\"llama\","
        "\"num_attention_heads\":32,\"num_hidden_layers\":22,\"num_key_value_heads\":4,"
        "\"pretraining_tp\":1,\"rms_norm_eps\":1e-05,\"rope_scaling\":null,\"rope_theta\":10000.0,"
        "\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\",\"transformers_version\":"
        "\"4.35.0\",\"use_cache\":true,\"vocab_size\":32000}";
    lr_config c = parse_ok(tiny, NULL);
    ck_assert_int_eq(c.hidden, 2048);
    ck_assert_int_eq(c.inter, 5632);
    ck_assert_int_eq(c.n_layers, 22);
    ck_assert_int_eq(c.n_kv_heads, 4);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert(c.norm_eps == 1e-5f);
    lr_config_clear(&c);
    /* Llama-3.1-8B-Instruct: llama3 rope, eos list in generation_config.json overrides. */
    const char *l31 =
        "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"bos_token_id\":"
        "128000,\"eos_token_id\":[128001,128008,128009],\"hidden_act\":\"silu\",\"hidden_size\":"
        "4096,\"intermediate_size\":14336,\"max_position_embeddings\":131072,\"mlp_bias\":false,"
        "\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
        "\"rms_norm_eps\":1e-05,\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,"
        "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,\"rope_type\":"
        "\"llama3\"},\"rope_theta\":500000.0,\"tie_word_embeddings\":false,\"vocab_size\":128256}";
    c = parse_ok(l31, "{\"bos_token_id\":128000,\"do_sample\":true,\"eos_token_id\":[128001,"
                      "128008,128009],\"temperature\":0.6,\"top_p\":0.9}");
    ck_assert_int_eq(c.rope_type, LR_ROPE_LLAMA3);
    ck_assert(c.rope_factor == 8.0f && c.rope_low_freq == 1.0f && c.rope_high_freq == 4.0f);
    ck_assert_int_eq(c.rope_orig_max_pos, 8192);
    ck_assert(c.rope_theta == 500000.0f);
    ck_assert_int_eq(c.n_eos, 3);
    ck_assert_int_eq(c.eos_ids[2], 128009);
    ck_assert_int_eq(c.bos_id, 128000);
    ck_assert_int_eq(c.max_pos, 131072);
    lr_config_clear(&c);
    /* generation_config.json wins over config.json; without it config.json is used. */
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"eos_token_id\":7}",
                 "{\"eos_token_id\":[9,10]}");
    ck_assert_int_eq(c.n_eos, 2);
    ck_assert_int_eq(c.eos_ids[0], 9);
    lr_config_clear(&c);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"eos_token_id\":7}", "{}");
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_ids[0], 7);
    lr_config_clear(&c);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"eos_token_id\":null,"
                 "\"bos_token_id\":null,\"attention_bias\":true,\"mlp_bias\":true,"
                 "\"hidden_act\":\"gelu_pytorch_tanh\",\"tie_word_embeddings\":true,"
                 "\"hidden_size\":5120,\"num_attention_heads\":32,\"head_dim\":128}",
                 NULL);
    ck_assert_int_eq(c.n_eos, 0);
    ck_assert_int_eq(c.bos_id, -1);
    ck_assert_int_eq(c.attn_bias, 1);
    ck_assert_int_eq(c.mlp_bias, 1);
    ck_assert_int_eq(c.act, LR_ACT_GELU_TANH);
    ck_assert_int_eq(c.tie_embed, 1);
    ck_assert_int_eq(c.head_dim, 128); /* head_dim != hidden / heads (160) */
    lr_config_clear(&c);
    /* model_type alone identifies the class when architectures is missing. */
    c = parse_ok("{\"model_type\":\"llama\",\"head_dim\":null,\"num_key_value_heads\":null}", NULL);
    ck_assert_int_eq(c.arch, LR_ARCH_LLAMA);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.n_kv_heads, 32);
    lr_config_clear(&c);
}
END_TEST

START_TEST(test_mistral)
{
    lr_config c =
        parse_ok("{\"architectures\":[\"MistralForCausalLM\"],\"num_hidden_layers\":3}", NULL);
    ck_assert_int_eq(c.arch, LR_ARCH_MISTRAL);
    ck_assert_int_eq(c.n_kv_heads, 8); /* MistralConfig default */
    ck_assert_int_eq(c.inter, 14336);
    ck_assert_int_eq(c.max_pos, 131072);
    ck_assert_int_eq(c.sliding_window, 4096);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(c.window_layer[i], 1);
    ck_assert_int_eq(c.attn_bias, 0);
    lr_config_clear(&c);
    c = parse_ok("{\"architectures\":[\"MistralForCausalLM\"],\"sliding_window\":null,"
                 "\"num_key_value_heads\":null,\"num_hidden_layers\":2}",
                 NULL);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_int_eq(c.window_layer[0], 0);
    ck_assert_int_eq(c.n_kv_heads, 32);
    lr_config_clear(&c);
    c = parse_ok("{\"architectures\":[\"MistralForCausalLM\"],\"sliding_window\":6,"
                 "\"num_hidden_layers\":2,\"attention_bias\":true,\"mlp_bias\":true}",
                 NULL);
    ck_assert_int_eq(c.sliding_window, 6);
    ck_assert_int_eq(c.window_layer[1], 1);
    ck_assert_int_eq(c.attn_bias, 0); /* MistralAttention has no biases whatever the file says */
    ck_assert_int_eq(c.mlp_bias, 0);
    lr_config_clear(&c);
    parse_fail("{\"architectures\":[\"MistralForCausalLM\"],\"sliding_window\":0}", NULL, LR_ERANGE,
               "\"sliding_window\" is 0");
}
END_TEST

START_TEST(test_qwen2)
{
    /* Qwen2.5-0.5B-Instruct: biases implied, sliding window off, tied. */
    const char *q = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"bos_token_id\":151643,"
                    "\"eos_token_id\":151645,\"hidden_size\":896,\"intermediate_size\":4864,"
                    "\"max_position_embeddings\":32768,\"max_window_layers\":21,"
                    "\"num_attention_heads\":14,\"num_hidden_layers\":24,\"num_key_value_heads\":2,"
                    "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,\"sliding_window\":32768,"
                    "\"tie_word_embeddings\":true,\"use_sliding_window\":false,"
                    "\"vocab_size\":151936}";
    lr_config c = parse_ok(q, "{\"eos_token_id\":[151645,151643],\"pad_token_id\":151643}");
    ck_assert_int_eq(c.arch, LR_ARCH_QWEN2);
    ck_assert_int_eq(c.attn_bias, 1);
    ck_assert_int_eq(c.mlp_bias, 0);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert_int_eq(c.sliding_window, 0);
    for (int i = 0; i < 24; i++)
        ck_assert_int_eq(c.window_layer[i], 0);
    ck_assert_int_eq(c.tie_embed, 1);
    ck_assert(c.rope_theta == 1e6f);
    ck_assert_int_eq(c.n_eos, 2);
    ck_assert_int_eq(c.eos_ids[1], 151643);
    ck_assert_int_eq(c.pad_id, 151643);
    lr_config_clear(&c);
    /* Defaults: Qwen2Config has no bos/eos; kv heads default 32 when absent. */
    c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"],\"num_hidden_layers\":2}", NULL);
    ck_assert_int_eq(c.bos_id, -1);
    ck_assert_int_eq(c.n_eos, 0);
    ck_assert_int_eq(c.vocab, 151936);
    ck_assert_int_eq(c.n_kv_heads, 32);
    lr_config_clear(&c);
    /* use_sliding_window: layers >= max_window_layers only. */
    c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"],\"num_hidden_layers\":4,"
                 "\"use_sliding_window\":true,\"sliding_window\":8,\"max_window_layers\":2}",
                 NULL);
    ck_assert_int_eq(c.sliding_window, 8);
    ck_assert_int_eq(c.window_layer[0], 0);
    ck_assert_int_eq(c.window_layer[1], 0);
    ck_assert_int_eq(c.window_layer[2], 1);
    ck_assert_int_eq(c.window_layer[3], 1);
    lr_config_clear(&c);
    /* An explicit layer_types list decides. */
    c = parse_ok("{\"architectures\":[\"Qwen2ForCausalLM\"],\"num_hidden_layers\":3,"
                 "\"use_sliding_window\":true,\"sliding_window\":8,\"max_window_layers\":0,"
                 "\"layer_types\":[\"sliding_attention\",\"full_attention\","
                 "\"sliding_attention\"]}",
                 NULL);
    ck_assert_int_eq(c.window_layer[0], 1);
    ck_assert_int_eq(c.window_layer[1], 0);
    ck_assert_int_eq(c.window_layer[2], 1);
    lr_config_clear(&c);
    parse_fail("{\"architectures\":[\"Qwen2ForCausalLM\"],\"num_hidden_layers\":2,"
               "\"use_sliding_window\":true,\"layer_types\":[\"full_attention\"]}",
               NULL, LR_EFORMAT, "\"layer_types\" must be a list of 2 strings");
}
END_TEST

START_TEST(test_rope_config)
{
    lr_config c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],"
                           "\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}}",
                           NULL);
    ck_assert_int_eq(c.rope_type, LR_ROPE_LINEAR);
    ck_assert(c.rope_factor == 4.0f);
    lr_config_clear(&c);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],"
                 "\"rope_scaling\":{\"rope_type\":\"default\"}}",
                 NULL);
    ck_assert_int_eq(c.rope_type, LR_ROPE_DEFAULT);
    lr_config_clear(&c);
    /* transformers v5: rope_parameters carries rope_theta too. */
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"rope_parameters\":{\"rope_type\":"
                 "\"llama3\",\"rope_theta\":500000.0,\"factor\":32.0,\"low_freq_factor\":1.0,"
                 "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}",
                 NULL);
    ck_assert_int_eq(c.rope_type, LR_ROPE_LLAMA3);
    ck_assert(c.rope_theta == 500000.0f);
    ck_assert(c.rope_factor == 32.0f);
    lr_config_clear(&c);
    c = parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"rope_parameters\":{\"rope_type\":"
                 "\"default\",\"rope_theta\":1000000.0}}",
                 NULL);
    ck_assert(c.rope_theta == 1e6f);
    lr_config_clear(&c);
    const char *unsup[] = {"dynamic", "yarn", "longrope", "su"};
    for (int i = 0; i < 4; i++) {
        char buf[256];
        snprintf(buf, sizeof buf,
                 "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"type\":\"%s\","
                 "\"factor\":2.0}}",
                 unsup[i]);
        char needle[64];
        snprintf(needle, sizeof needle, "type \"%s\" is not supported", unsup[i]);
        parse_fail(buf, NULL, LR_EUNSUPPORTED, needle);
    }
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"type\":\"linear\"}}",
               NULL, LR_EFORMAT, "linear needs \"factor\"");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"rope_type\":"
               "\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0}}",
               NULL, LR_EFORMAT, "needs \"original_max_position_embeddings\"");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"factor\":2}}", NULL,
               LR_EFORMAT, "no string \"rope_type\" or \"type\"");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":\"linear\"}", NULL,
               LR_EFORMAT, "\"rope_scaling\" must be an object or null");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"partial_rotary_factor\":0.5}", NULL,
               LR_EUNSUPPORTED, "partial_rotary_factor");
}
END_TEST

START_TEST(test_t5_config)
{
    /* t5-small */
    const char *t5 = "{\"architectures\":[\"T5ForConditionalGeneration\"],\"d_ff\":2048,"
                     "\"d_kv\":64,\"d_model\":512,\"decoder_start_token_id\":0,\"dropout_rate\":"
                     "0.1,\"eos_token_id\":1,\"feed_forward_proj\":\"relu\",\"layer_norm_epsilon\":"
                     "1e-06,\"model_type\":\"t5\",\"n_positions\":512,\"num_heads\":8,"
                     "\"num_layers\":6,\"pad_token_id\":0,\"relative_attention_num_buckets\":32,"
                     "\"vocab_size\":32128}";
    lr_config c = parse_ok(t5, NULL);
    ck_assert_int_eq(c.arch, LR_ARCH_T5);
    ck_assert_int_eq(c.hidden, 512);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert_int_eq(c.inter, 2048);
    ck_assert_int_eq(c.n_layers, 6);
    ck_assert_int_eq(c.n_dec_layers, 6);
    ck_assert_int_eq(c.n_heads, 8);
    ck_assert_int_eq(c.n_kv_heads, 8);
    ck_assert_int_eq(c.rel_buckets, 32);
    ck_assert_int_eq(c.rel_max_dist, 128);
    ck_assert_int_eq(c.gated_ff, 0);
    ck_assert_int_eq(c.act, LR_ACT_RELU);
    ck_assert_int_eq(c.tie_embed, 1);
    ck_assert_int_eq(c.pad_id, 0);
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_ids[0], 1);
    ck_assert_int_eq(c.decoder_start_id, 0);
    ck_assert_int_eq(c.bos_id, -1);
    ck_assert_int_eq(c.max_pos, 512);
    ck_assert(c.norm_eps == 1e-6f);
    lr_config_clear(&c);
    /* flan-t5-small: gated-gelu means gelu_new; untied; separate decoder depth. */
    c = parse_ok("{\"architectures\":[\"T5ForConditionalGeneration\"],\"d_ff\":1024,\"d_kv\":64,"
                 "\"d_model\":512,\"feed_forward_proj\":\"gated-gelu\",\"num_decoder_layers\":8,"
                 "\"num_heads\":6,\"num_layers\":8,\"tie_word_embeddings\":false,"
                 "\"relative_attention_max_distance\":128}",
                 NULL);
    ck_assert_int_eq(c.gated_ff, 1);
    ck_assert_int_eq(c.act, LR_ACT_GELU_TANH);
    ck_assert_int_eq(c.tie_embed, 0);
    ck_assert_int_eq(c.n_dec_layers, 8);
    lr_config_clear(&c);
    c = parse_ok("{\"architectures\":[\"T5ForConditionalGeneration\"],\"feed_forward_proj\":"
                 "\"gated-silu\",\"num_layers\":2,\"num_decoder_layers\":3}",
                 NULL);
    ck_assert_int_eq(c.gated_ff, 1);
    ck_assert_int_eq(c.act, LR_ACT_SILU);
    ck_assert_int_eq(c.n_dec_layers, 3);
    ck_assert_int_eq(c.vocab, 32128);
    lr_config_clear(&c);
    parse_fail("{\"architectures\":[\"T5ForConditionalGeneration\"],\"feed_forward_proj\":"
               "\"gated-gelu-x\"}",
               NULL, LR_EFORMAT, "is not ACT or gated-ACT");
    parse_fail("{\"architectures\":[\"T5ForConditionalGeneration\"],\"feed_forward_proj\":"
               "\"mish\"}",
               NULL, LR_EUNSUPPORTED, "\"mish\" is not supported");
}
END_TEST

START_TEST(test_config_errors)
{
    parse_fail("{\"architectures\":[\"GPT2LMHeadModel\"]}", NULL, LR_EUNSUPPORTED,
               "config.json: architecture \"GPT2LMHeadModel\" is not supported");
    parse_fail("{\"model_type\":\"gpt2\"}", NULL, LR_EUNSUPPORTED, "model_type \"gpt2\"");
    parse_fail("{}", NULL, LR_EFORMAT, "neither \"architectures\" nor \"model_type\"");
    parse_fail("{\"architectures\":[]}", NULL, LR_EFORMAT, "non-empty list");
    parse_fail("{\"architectures\":", NULL, LR_EFORMAT, "config.json: not valid JSON");
    parse_fail("[1]", NULL, LR_EFORMAT, "config.json: not a JSON object");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"]}", "{", LR_EFORMAT,
               "generation_config.json: not valid JSON");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"a\":1,\"a\":2}", NULL, LR_EFORMAT,
               "duplicate");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"4096\"}", NULL,
               LR_EFORMAT, "\"hidden_size\" must be an integer");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64.5}", NULL, LR_EFORMAT,
               "\"hidden_size\" must be an integer");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":-1}", NULL,
               LR_ERANGE, "\"num_hidden_layers\" is -1");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":99999999999}", NULL,
               LR_ERANGE, "\"vocab_size\"");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"num_attention_heads\":6,"
               "\"num_key_value_heads\":4}",
               NULL, LR_EINVAL, "not a multiple of num_key_value_heads 4");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":8,"
               "\"num_attention_heads\":16}",
               NULL, LR_EINVAL, "head_dim 0 must be even");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"head_dim\":7}", NULL, LR_EINVAL,
               "head_dim 7");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_act\":\"mish\"}", NULL,
               LR_EUNSUPPORTED, "\"hidden_act\" \"mish\" is not supported");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"tie_word_embeddings\":1}", NULL,
               LR_EFORMAT, "\"tie_word_embeddings\" must be true or false");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"rms_norm_eps\":-1}", NULL, LR_ERANGE,
               "\"rms_norm_eps\"");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"]}",
               "{\"eos_token_id\":[1,2,3,4,5,6,7,8,9]}", LR_ERANGE,
               "generation_config.json: \"eos_token_id\" lists 9 ids");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"eos_token_id\":[1,\"x\"]}", NULL,
               LR_EFORMAT, "config.json: \"eos_token_id\"[1] is not a token id");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"eos_token_id\":\"2\"}", NULL,
               LR_EFORMAT, "\"eos_token_id\" must be an integer or a list");
    parse_fail("{\"architectures\":[\"LlamaForCausalLM\"]}", "{\"bos_token_id\":-5}", LR_ERANGE,
               "generation_config.json: \"bos_token_id\" is -5");
}
END_TEST

/* ---- RoPE ------------------------------------------------------------------------------- */

static void rope_cfg(lr_config *c, float theta, int hd)
{
    memset(c, 0, sizeof *c);
    c->rope_theta = theta;
    c->head_dim = hd;
    c->rope_type = LR_ROPE_DEFAULT;
    c->rope_factor = 1.0f;
}

START_TEST(test_rope_vectors)
{
    /* SPEC-HF.md B.4 (verified with torch): at most 1 ulp apart. */
    lr_config c;
    float inv[64], base[64];
    rope_cfg(&c, 500000.0f, 128);
    lr_rope_inv_freq(&c, inv);
    ck_assert(inv[0] == 1.0f);
    ck_assert_int_le(ulps(inv[1], 8.146172166e-01f), 1);
    ck_assert_int_le(ulps(inv[20], 1.656044088e-02f), 1);
    ck_assert_int_le(ulps(inv[30], 2.131119603e-03f), 1);
    ck_assert_int_le(ulps(inv[63], 2.455140702e-06f), 1);
    memcpy(base, inv, sizeof base);
    rope_cfg(&c, 10000.0f, 64);
    lr_rope_inv_freq(&c, inv);
    ck_assert_int_le(ulps(inv[1], 7.498942018e-01f), 1);
    ck_assert_int_le(ulps(inv[31], 1.333521504e-04f), 1);
    /* Every entry against a double-precision evaluation of theta^(-2k/d): within 2 ulp. */
    for (int k = 0; k < 32; k++)
        ck_assert_int_le(ulps(inv[k], (float)(1.0 / pow(10000.0, 2.0 * k / 64.0))), 2);

    /* llama3 (theta 5e5, hd 128, f 8, lo 1, hi 4, Lo 8192). */
    rope_cfg(&c, 500000.0f, 128);
    c.rope_type = LR_ROPE_LLAMA3;
    c.rope_factor = 8.0f;
    c.rope_low_freq = 1.0f;
    c.rope_high_freq = 4.0f;
    c.rope_orig_max_pos = 8192;
    lr_rope_inv_freq(&c, inv);
    for (int k = 0; k <= 20; k++)
        ck_assert_msg(inv[k] == base[k], "k=%d changed", k);
    ck_assert_int_le(ulps(inv[30], 1.371893683e-03f), 1);
    ck_assert_int_le(ulps(inv[40], 3.428102355e-05f), 1);
    ck_assert_int_le(ulps(inv[63], 3.068925878e-07f), 1);
    ck_assert(fabs(base[30] / inv[30] - 1.553415) < 1e-5);
    ck_assert(base[63] / inv[63] > 7.9999 && base[63] / inv[63] < 8.0001);

    /* linear: the default table divided by the factor in fp32. */
    rope_cfg(&c, 500000.0f, 128);
    c.rope_type = LR_ROPE_LINEAR;
    c.rope_factor = 4.0f;
    lr_rope_inv_freq(&c, inv);
    for (int k = 0; k < 64; k++)
        ck_assert(inv[k] == base[k] / 4.0f);
}
END_TEST

/* ---- model folders written here ---------------------------------------------------------- */

/* Deterministic weight values, exactly representable in f32, f16 and bf16: (h % 17 − 8) / 8. */
static float wval(const char *name, int64_t i)
{
    uint32_t h = 2166136261u;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return (float)((int)((h + (uint32_t)i * 7u) % 17u) - 8) / 8.0f;
}

/* f32 → f16 bits for the normal/zero values above (no rounding needed: 4 significant bits). */
static uint16_t to_f16(float f)
{
    uint32_t b = fbits(f);
    if ((b & 0x7fffffffu) == 0) return (uint16_t)(b >> 16);
    uint32_t s = (b >> 16) & 0x8000u, e = (b >> 23) & 0xff, m = b & 0x7fffff;
    return (uint16_t)(s | ((e - 112) << 10) | (m >> 13));
}

enum { W_F32, W_F16, W_BF16, W_I32 };
static const char *WNAMES[] = {"F32", "F16", "BF16", "I32"};
static const int WSIZE[] = {4, 2, 2, 4};

typedef struct {
    char name[96];
    int dt, ndim;
    int64_t shape[2];
} wdesc;

typedef struct {
    wdesc t[512];
    int n;
} wlist;

static void wadd(wlist *l, int dt, int64_t r, int64_t c, const char *fmt, int i)
{
    wdesc *d = &l->t[l->n++];
    snprintf(d->name, sizeof d->name, fmt, i);
    d->dt = dt;
    d->ndim = c ? 2 : 1;
    d->shape[0] = r;
    d->shape[1] = c;
}

static int64_t wnumel(const wdesc *d)
{
    return d->ndim == 2 ? d->shape[0] * d->shape[1] : d->shape[0];
}

/* Write tensors [from, to) of l as one safetensors file (header unpadded, odd length allowed). */
static void write_st(const char *path, const wlist *l, int from, int to)
{
    char *hdr = malloc(1 << 16);
    size_t hl = 0, off = 0;
    hl += (size_t)sprintf(hdr + hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = from; i < to; i++) {
        const wdesc *d = &l->t[i];
        size_t nb = (size_t)wnumel(d) * (size_t)WSIZE[d->dt];
        if (d->ndim == 2)
            hl += (size_t)sprintf(hdr + hl,
                                  ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  d->name, WNAMES[d->dt], (long long)d->shape[0],
                                  (long long)d->shape[1], off, off + nb);
        else
            hl += (size_t)sprintf(hdr + hl,
                                  ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  d->name, WNAMES[d->dt], (long long)d->shape[0], off, off + nb);
        off += nb;
    }
    hl += (size_t)sprintf(hdr + hl, "}");
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    fwrite(len8, 1, 8, fp);
    fwrite(hdr, 1, hl, fp);
    for (int i = from; i < to; i++) {
        const wdesc *d = &l->t[i];
        for (int64_t j = 0; j < wnumel(d); j++) {
            float v = wval(d->name, j);
            if (d->dt == W_F32) {
                fwrite(&v, 4, 1, fp);
            } else if (d->dt == W_I32) {
                int32_t x = (int32_t)(v * 8);
                fwrite(&x, 4, 1, fp);
            } else {
                uint16_t h = d->dt == W_F16 ? to_f16(v) : (uint16_t)(fbits(v) >> 16);
                fwrite(&h, 2, 1, fp);
            }
        }
    }
    fclose(fp);
    free(hdr);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    fclose(fp);
}

/* Small Llama-family shapes. */
enum { V = 16, H = 8, I = 12, NL = 2, NH = 2, NKV = 1 };

typedef struct {
    const char *arch; /* "LlamaForCausalLM", ... */
    int dt;           /* dtype of the matrices; 1-D tensors are F32 unless norm_dt set */
    int norm_dt;
    int tie, attn_bias, mlp_bias;
    int head_dim;          /* 0 = H / NH, not written */
    int shards;            /* 1 = model.safetensors */
    const char *omit;      /* a tensor name to leave out */
    const char *bad_shape; /* a tensor to write with a wrong shape */
    const char *bad_dtype; /* a tensor to write as I32 */
} spec;

static char g_dir[64];

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void dir_setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/check_model_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void dir_teardown(void)
{
    rm_dir(g_dir);
}

/* Build the tensor list the way HF names them, then apply the spec's defects. */
static wlist *llama_list(const spec *s, int64_t *matrix_bytes)
{
    wlist *l = calloc(1, sizeof *l);
    int hd = s->head_dim ? s->head_dim : H / NH;
    int qwen = strstr(s->arch, "Qwen2") != NULL;
    int nd = s->norm_dt;
    wadd(l, s->dt, V, H, "model.embed_tokens.weight", 0);
    for (int i = 0; i < NL; i++) {
        wadd(l, nd, H, 0, "model.layers.%d.input_layernorm.weight", i);
        wadd(l, nd, H, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        wadd(l, s->dt, NH * hd, H, "model.layers.%d.self_attn.q_proj.weight", i);
        wadd(l, s->dt, NKV * hd, H, "model.layers.%d.self_attn.k_proj.weight", i);
        wadd(l, s->dt, NKV * hd, H, "model.layers.%d.self_attn.v_proj.weight", i);
        wadd(l, s->dt, H, NH * hd, "model.layers.%d.self_attn.o_proj.weight", i);
        wadd(l, s->dt, I, H, "model.layers.%d.mlp.gate_proj.weight", i);
        wadd(l, s->dt, I, H, "model.layers.%d.mlp.up_proj.weight", i);
        wadd(l, s->dt, H, I, "model.layers.%d.mlp.down_proj.weight", i);
        if (s->attn_bias || qwen) {
            wadd(l, nd, NH * hd, 0, "model.layers.%d.self_attn.q_proj.bias", i);
            wadd(l, nd, NKV * hd, 0, "model.layers.%d.self_attn.k_proj.bias", i);
            wadd(l, nd, NKV * hd, 0, "model.layers.%d.self_attn.v_proj.bias", i);
        }
        if (s->attn_bias && !qwen) wadd(l, nd, H, 0, "model.layers.%d.self_attn.o_proj.bias", i);
        if (s->mlp_bias) {
            wadd(l, nd, I, 0, "model.layers.%d.mlp.gate_proj.bias", i);
            wadd(l, nd, I, 0, "model.layers.%d.mlp.up_proj.bias", i);
            wadd(l, nd, H, 0, "model.layers.%d.mlp.down_proj.bias", i);
        }
        /* Stray buffers and unknown extras are ignored by the loader. */
        wadd(l, W_F32, hd / 2, 0, "model.layers.%d.self_attn.rotary_emb.inv_freq", i);
    }
    wadd(l, nd, H, 0, "model.norm.weight", 0);
    if (!s->tie) wadd(l, s->dt, V, H, "lm_head.weight", 0);
    wadd(l, W_I32, 3, 0, "some.unknown.extra", 0);
    *matrix_bytes = 0;
    for (int i = 0; i < l->n; i++)
        if (l->t[i].ndim == 2) *matrix_bytes += wnumel(&l->t[i]) * WSIZE[l->t[i].dt];
    for (int i = 0; i < l->n; i++) {
        wdesc *d = &l->t[i];
        if (s->omit && !strcmp(d->name, s->omit)) *d = l->t[--l->n];
        if (s->bad_shape && !strcmp(d->name, s->bad_shape)) d->shape[0] += 1;
        if (s->bad_dtype && !strcmp(d->name, s->bad_dtype)) d->dt = W_I32;
    }
    return l;
}

static void write_model(const spec *s, int64_t *matrix_bytes)
{
    char cfg[1024];
    char hdbuf[32] = "";
    if (s->head_dim) snprintf(hdbuf, sizeof hdbuf, ",\"head_dim\":%d", s->head_dim);
    snprintf(cfg, sizeof cfg,
             "{\"architectures\":[\"%s\"],\"vocab_size\":%d,\"hidden_size\":%d,"
             "\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_heads\":%d,"
             "\"num_key_value_heads\":%d,\"tie_word_embeddings\":%s,\"attention_bias\":%s,"
             "\"mlp_bias\":%s,\"rope_theta\":10000.0,\"sliding_window\":null%s}",
             s->arch, V, H, I, NL, NH, NKV, s->tie ? "true" : "false",
             s->attn_bias ? "true" : "false", s->mlp_bias ? "true" : "false", hdbuf);
    write_text(g_dir, "config.json", cfg);
    write_text(g_dir, "generation_config.json", "{\"eos_token_id\":[3,4],\"bos_token_id\":5}");
    wlist *l = llama_list(s, matrix_bytes);
    char path[512];
    if (s->shards <= 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", g_dir);
        write_st(path, l, 0, l->n);
    } else {
        char *idx = malloc(1 << 16);
        size_t il = (size_t)sprintf(idx, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
        int per = (l->n + s->shards - 1) / s->shards;
        for (int k = 0; k < s->shards; k++) {
            int from = k * per, to = from + per < l->n ? from + per : l->n;
            char shard[96];
            snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", k + 1, s->shards);
            snprintf(path, sizeof path, "%s/%s", g_dir, shard);
            write_st(path, l, from, to);
            for (int i = from; i < to; i++)
                il +=
                    (size_t)sprintf(idx + il, "%s\"%s\":\"%s\"", i ? "," : "", l->t[i].name, shard);
        }
        sprintf(idx + il, "}}");
        write_text(g_dir, "model.safetensors.index.json", idx);
        free(idx);
    }
    free(l);
}

/* Expected f32 value of element j of `name` as the loader must present it. */
static void check_vec(const float *v, const char *name, int64_t n)
{
    ck_assert_ptr_nonnull(v);
    for (int64_t j = 0; j < n; j++)
        ck_assert_msg(v[j] == wval(name, j), "%s[%lld]", name, (long long)j);
}

/* Check a matrix view: dtype, shape and its raw contents decode to the written values. */
static void check_mat(const lr_mat *m, const char *name, lr_dtype dt, int64_t r, int64_t c)
{
    ck_assert_ptr_nonnull(m->data);
    ck_assert_int_eq(m->dtype, dt);
    ck_assert_int_eq(m->rows, r);
    ck_assert_int_eq(m->cols, c);
    /* AVX-512: the loader packs every matmul weight (kernels.h); read it back through the
     * kernels' row accessor, which must give the written values bit for bit. */
    if (m->packed) {
        float *row = malloc(sizeof(float) * (size_t)c);
        for (int64_t i = 0; i < r; i += 3) {
            kern_mat_row(m, i, row);
            for (int64_t k = 0; k < c; k++) {
                float want = wval(name, i * c + k);
                if (dt == LR_DT_F16) {
                    uint16_t h = to_f16(want);
                    kern_f16_to_f32(&h, &want, 1);
                }
                ck_assert_msg(row[k] == want, "%s[%lld] (packed)", name, (long long)(i * c + k));
            }
        }
        free(row);
        return;
    }
    const unsigned char *p = m->data;
    for (int64_t j = 0; j < r * c; j += 5) {
        float got;
        if (dt == LR_DT_F32) {
            memcpy(&got, p + 4 * j, 4);
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * j, 2);
            got = dt == LR_DT_F16 ? 0 : bitsf((uint32_t)h << 16);
            if (dt == LR_DT_F16)
                ck_assert_uint_eq(h, to_f16(wval(name, j)));
            else
                ck_assert(got == wval(name, j));
            continue;
        }
        ck_assert_msg(got == wval(name, j), "%s[%lld]", name, (long long)j);
    }
}

static lr_model *load_ok(void)
{
    lr_model *m = NULL;
    lr_error e;
    lr_error_clear(&e);
    int rc = lr_model_load(g_dir, &e, &m);
    ck_assert_msg(rc == 0, "load failed: %s", e.msg);
    return m;
}

static void load_fail(int code, const char *needle)
{
    lr_model *m = (lr_model *)1;
    lr_error e;
    lr_error_clear(&e);
    int rc = lr_model_load(g_dir, &e, &m);
    ck_assert_msg(rc == code, "expected %d got %d (%s)", code, rc, e.msg);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(e.msg, needle) != NULL, "message '%s' lacks '%s'", e.msg, needle);
}

static void check_llama_model(const lr_model *m, const spec *s, int64_t matrix_bytes)
{
    lr_dtype dt = s->dt == W_F16 ? LR_DT_F16 : s->dt == W_BF16 ? LR_DT_BF16 : LR_DT_F32;
    int hd = s->head_dim ? s->head_dim : H / NH;
    ck_assert_int_eq(m->cfg.vocab, V);
    ck_assert_int_eq(m->cfg.head_dim, hd);
    ck_assert_int_eq(m->cfg.n_eos, 2);
    ck_assert_int_eq(m->cfg.bos_id, 5);
    check_mat(&m->embed, "model.embed_tokens.weight", dt, V, H);
    if (s->tie) {
        ck_assert_ptr_eq(m->lm_head.data, m->embed.data);
        const char *pk = getenv("LR_PACK"); /* LR_PACK=0 keeps the mapped row-major views */
        ck_assert_int_eq(m->layers[0].q.packed, kern_pack_wanted() && !(pk && !strcmp(pk, "0")));
        ck_assert_int_eq(m->lm_head.rows, V);
    } else {
        check_mat(&m->lm_head, "lm_head.weight", dt, V, H);
    }
    check_vec(m->final_norm, "model.norm.weight", H);
    char n[128];
    for (int i = 0; i < NL; i++) {
        const lr_layer *l = &m->layers[i];
#define N(fmt) (snprintf(n, sizeof n, fmt, i), n)
        check_vec(l->attn_norm, N("model.layers.%d.input_layernorm.weight"), H);
        check_vec(l->mlp_norm, N("model.layers.%d.post_attention_layernorm.weight"), H);
        check_mat(&l->q, N("model.layers.%d.self_attn.q_proj.weight"), dt, NH * hd, H);
        check_mat(&l->k, N("model.layers.%d.self_attn.k_proj.weight"), dt, NKV * hd, H);
        check_mat(&l->v, N("model.layers.%d.self_attn.v_proj.weight"), dt, NKV * hd, H);
        check_mat(&l->o, N("model.layers.%d.self_attn.o_proj.weight"), dt, H, NH * hd);
        check_mat(&l->gate, N("model.layers.%d.mlp.gate_proj.weight"), dt, I, H);
        check_mat(&l->up, N("model.layers.%d.mlp.up_proj.weight"), dt, I, H);
        check_mat(&l->down, N("model.layers.%d.mlp.down_proj.weight"), dt, H, I);
        int qwen = strstr(s->arch, "Qwen2") != NULL;
        if (s->attn_bias || qwen) {
            check_vec(l->bq, N("model.layers.%d.self_attn.q_proj.bias"), NH * hd);
            check_vec(l->bk, N("model.layers.%d.self_attn.k_proj.bias"), NKV * hd);
            check_vec(l->bv, N("model.layers.%d.self_attn.v_proj.bias"), NKV * hd);
        } else {
            ck_assert_ptr_null(l->bq);
        }
        if (s->attn_bias && !qwen)
            check_vec(l->bo, N("model.layers.%d.self_attn.o_proj.bias"), H);
        else
            ck_assert_ptr_null(l->bo);
        if (s->mlp_bias) {
            check_vec(l->bgate, N("model.layers.%d.mlp.gate_proj.bias"), I);
            check_vec(l->bup, N("model.layers.%d.mlp.up_proj.bias"), I);
            check_vec(l->bdown, N("model.layers.%d.mlp.down_proj.bias"), H);
        } else {
            ck_assert_ptr_null(l->bgate);
        }
#undef N
    }
    /* weight_bytes: every matrix as stored, the tied head not counted twice. */
    ck_assert_int_eq(m->weight_bytes, matrix_bytes);
    ck_assert_ptr_nonnull(m->rope_inv_freq);
    ck_assert(m->rope_inv_freq[0] == 1.0f);
    ck_assert_ptr_null(m->dec_layers);
}

static void roundtrip(const spec *s)
{
    int64_t mb;
    write_model(s, &mb);
    lr_model *m = load_ok();
    check_llama_model(m, s, mb);
    lr_model_free(m);
}

START_TEST(test_load_f32)
{
    spec s = {.arch = "LlamaForCausalLM", .dt = W_F32, .norm_dt = W_F32};
    roundtrip(&s);
    lr_model_free(NULL);
}
END_TEST

START_TEST(test_load_f16_tied)
{
    spec s = {.arch = "LlamaForCausalLM", .dt = W_F16, .norm_dt = W_F16, .tie = 1};
    roundtrip(&s);
}
END_TEST

START_TEST(test_load_bf16_biases)
{
    spec s = {.arch = "LlamaForCausalLM",
              .dt = W_BF16,
              .norm_dt = W_BF16,
              .attn_bias = 1,
              .mlp_bias = 1,
              .head_dim = 6};
    roundtrip(&s);
}
END_TEST

START_TEST(test_load_qwen2)
{
    spec s = {.arch = "Qwen2ForCausalLM", .dt = W_F32, .norm_dt = W_BF16, .tie = 1};
    roundtrip(&s);
}
END_TEST

START_TEST(test_load_mistral_sharded)
{
    spec s = {.arch = "MistralForCausalLM", .dt = W_BF16, .norm_dt = W_F32, .shards = 3};
    roundtrip(&s);
}
END_TEST

START_TEST(test_load_errors)
{
    spec s = {.arch = "LlamaForCausalLM", .dt = W_F32, .norm_dt = W_F32};
    int64_t mb;
    load_fail(LR_ENOTFOUND, "config.json");
    write_text(g_dir, "config.json", "{\"architectures\":[\"LlamaForCausalLM\"]}");
    load_fail(LR_ENOTFOUND, "no model.safetensors");
    s.omit = "model.layers.1.mlp.up_proj.weight";
    write_model(&s, &mb);
    load_fail(LR_EFORMAT, "missing tensor 'model.layers.1.mlp.up_proj.weight' (expected [12, 8])");
    s.omit = "lm_head.weight";
    write_model(&s, &mb);
    load_fail(LR_EFORMAT, "missing tensor 'lm_head.weight'");
    s.omit = NULL;
    s.bad_shape = "model.layers.0.self_attn.k_proj.weight";
    write_model(&s, &mb);
    load_fail(LR_EFORMAT, "model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has "
                          "shape [5, 8] but config.json implies [4, 8]");
    s.bad_shape = "model.norm.weight";
    write_model(&s, &mb);
    load_fail(LR_EFORMAT, "has shape [9] but config.json implies [8]");
    s.bad_shape = NULL;
    s.bad_dtype = "model.layers.0.input_layernorm.weight";
    write_model(&s, &mb);
    load_fail(LR_EUNSUPPORTED, "has dtype I32; lorad needs F32, F16 or BF16");
    /* Qwen2 without its q bias. */
    spec q = {.arch = "Qwen2ForCausalLM",
              .dt = W_F32,
              .norm_dt = W_F32,
              .omit = "model.layers.0.self_attn.q_proj.bias"};
    write_model(&q, &mb);
    load_fail(LR_EFORMAT, "missing tensor 'model.layers.0.self_attn.q_proj.bias'");
    /* Config errors carry the folder and file name. */
    write_text(g_dir, "config.json", "{\"architectures\":[\"BertModel\"]}");
    load_fail(LR_EUNSUPPORTED, "/config.json: architecture \"BertModel\" is not supported");
    write_text(g_dir, "config.json", "{\"architectures\":[\"LlamaForCausalLM\"]}");
    write_text(g_dir, "generation_config.json", "not json");
    load_fail(LR_EFORMAT, "generation_config.json: not valid JSON");
    /* A hostile weights file. */
    spec ok = {.arch = "LlamaForCausalLM", .dt = W_F32, .norm_dt = W_F32};
    write_model(&ok, &mb);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", g_dir);
    ck_assert_int_eq(truncate(path, 100), 0);
    load_fail(LR_EFORMAT, "model.safetensors: ");
}
END_TEST

/* ---- T5 --------------------------------------------------------------------------------- */

enum { TV = 20, TD = 8, TKV = 3, TH = 2, TFF = 10, TENC = 2, TDEC = 3, TB = 32 };

static void write_t5(int gated, int tie, const char *embed_name, int64_t *matrix_bytes)
{
    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\":[\"T5ForConditionalGeneration\"],\"vocab_size\":%d,\"d_model\":%d,"
             "\"d_kv\":%d,\"num_heads\":%d,\"d_ff\":%d,\"num_layers\":%d,\"num_decoder_layers\":%d,"
             "\"feed_forward_proj\":\"%s\",\"tie_word_embeddings\":%s}",
             TV, TD, TKV, TH, TFF, TENC, TDEC, gated ? "gated-gelu" : "relu",
             tie ? "true" : "false");
    write_text(g_dir, "config.json", cfg);
    wlist *l = calloc(1, sizeof *l);
    int in = TH * TKV;
    wadd(l, W_F32, TV, TD, embed_name, 0);
    for (int s = 0; s < 2; s++) {
        const char *st = s ? "decoder" : "encoder";
        int nl = s ? TDEC : TENC;
        char f[160];
        snprintf(f, sizeof f, "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 st);
        wadd(l, W_F32, TB, TH, f, 0);
        for (int i = 0; i < nl; i++) {
            const char *att[2] = {"layer.0.SelfAttention", "layer.1.EncDecAttention"};
            for (int a = 0; a < 1 + s; a++) {
                const char *qkvo[4] = {"q", "k", "v", "o"};
                for (int k = 0; k < 4; k++) {
                    snprintf(f, sizeof f, "%s.block.%%d.%s.%s.weight", st, att[a], qkvo[k]);
                    wadd(l, W_BF16, k == 3 ? TD : in, k == 3 ? in : TD, f, i);
                }
            }
            for (int k = 0; k < 2 + s; k++) {
                snprintf(f, sizeof f, "%s.block.%%d.layer.%d.layer_norm.weight", st, k);
                wadd(l, W_F16, TD, 0, f, i);
            }
            int ff = 1 + s;
            if (gated) {
                snprintf(f, sizeof f, "%s.block.%%d.layer.%d.DenseReluDense.wi_0.weight", st, ff);
                wadd(l, W_F32, TFF, TD, f, i);
                snprintf(f, sizeof f, "%s.block.%%d.layer.%d.DenseReluDense.wi_1.weight", st, ff);
                wadd(l, W_F32, TFF, TD, f, i);
            } else {
                snprintf(f, sizeof f, "%s.block.%%d.layer.%d.DenseReluDense.wi.weight", st, ff);
                wadd(l, W_F32, TFF, TD, f, i);
            }
            snprintf(f, sizeof f, "%s.block.%%d.layer.%d.DenseReluDense.wo.weight", st, ff);
            wadd(l, W_F32, TD, TFF, f, i);
        }
        snprintf(f, sizeof f, "%s.final_layer_norm.weight", st);
        wadd(l, W_F32, TD, 0, f, 0);
    }
    if (!tie) wadd(l, W_F32, TV, TD, "lm_head.weight", 0);
    *matrix_bytes = 0;
    for (int i = 0; i < l->n; i++)
        if (l->t[i].ndim == 2 && !strstr(l->t[i].name, "relative_attention_bias"))
            *matrix_bytes += wnumel(&l->t[i]) * WSIZE[l->t[i].dt];
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", g_dir);
    write_st(path, l, 0, l->n);
    free(l);
}

START_TEST(test_load_t5)
{
    int64_t mb;
    write_t5(1, 0, "shared.weight", &mb);
    lr_model *m = load_ok();
    ck_assert_int_eq(m->cfg.arch, LR_ARCH_T5);
    check_mat(&m->embed, "shared.weight", LR_DT_F32, TV, TD);
    check_mat(&m->lm_head, "lm_head.weight", LR_DT_F32, TV, TD);
    check_vec(m->enc_final_norm, "encoder.final_layer_norm.weight", TD);
    check_vec(m->final_norm, "decoder.final_layer_norm.weight", TD);
    check_vec(m->enc_rel_bias,
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", TB * TH);
    check_vec(m->dec_rel_bias,
              "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", TB * TH);
    ck_assert_ptr_null(m->rope_inv_freq);
    char n[160];
    int in = TH * TKV;
    const lr_layer *e1 = &m->layers[1];
    check_mat(&e1->q, "encoder.block.1.layer.0.SelfAttention.q.weight", LR_DT_BF16, in, TD);
    check_mat(&e1->o, "encoder.block.1.layer.0.SelfAttention.o.weight", LR_DT_BF16, TD, in);
    check_vec(e1->attn_norm, "encoder.block.1.layer.0.layer_norm.weight", TD);
    check_vec(e1->mlp_norm, "encoder.block.1.layer.1.layer_norm.weight", TD);
    check_mat(&e1->gate, "encoder.block.1.layer.1.DenseReluDense.wi_0.weight", LR_DT_F32, TFF, TD);
    check_mat(&e1->up, "encoder.block.1.layer.1.DenseReluDense.wi_1.weight", LR_DT_F32, TFF, TD);
    check_mat(&e1->down, "encoder.block.1.layer.1.DenseReluDense.wo.weight", LR_DT_F32, TD, TFF);
    ck_assert_ptr_null(e1->xq.data);
    for (int i = 0; i < TDEC; i++) {
        const lr_layer *d = &m->dec_layers[i];
        snprintf(n, sizeof n, "decoder.block.%d.layer.1.EncDecAttention.v.weight", i);
        check_mat(&d->xv, n, LR_DT_BF16, in, TD);
        snprintf(n, sizeof n, "decoder.block.%d.layer.0.SelfAttention.k.weight", i);
        check_mat(&d->k, n, LR_DT_BF16, in, TD);
        snprintf(n, sizeof n, "decoder.block.%d.layer.1.layer_norm.weight", i);
        check_vec(d->xattn_norm, n, TD);
        snprintf(n, sizeof n, "decoder.block.%d.layer.2.layer_norm.weight", i);
        check_vec(d->mlp_norm, n, TD);
        snprintf(n, sizeof n, "decoder.block.%d.layer.2.DenseReluDense.wo.weight", i);
        check_mat(&d->down, n, LR_DT_F32, TD, TFF);
    }
    ck_assert_int_eq(m->weight_bytes, mb);
    lr_model_free(m);

    /* relu FF, tied, and only the encoder.embed_tokens alias present. */
    write_t5(0, 1, "encoder.embed_tokens.weight", &mb);
    m = load_ok();
    check_mat(&m->embed, "encoder.embed_tokens.weight", LR_DT_F32, TV, TD);
    ck_assert_ptr_eq(m->lm_head.data, m->embed.data);
    check_mat(&m->layers[0].up, "encoder.block.0.layer.1.DenseReluDense.wi.weight", LR_DT_F32, TFF,
              TD);
    ck_assert_ptr_null(m->layers[0].gate.data);
    ck_assert_int_eq(m->weight_bytes, mb);
    lr_model_free(m);

    /* Gated config over relu weights: the missing tensor is named. */
    write_t5(0, 1, "shared.weight", &mb);
    write_text(g_dir, "config.json",
               "{\"architectures\":[\"T5ForConditionalGeneration\"],\"vocab_size\":20,"
               "\"d_model\":8,\"d_kv\":3,\"num_heads\":2,\"d_ff\":10,\"num_layers\":2,"
               "\"num_decoder_layers\":3,\"feed_forward_proj\":\"gated-gelu\"}");
    load_fail(LR_EFORMAT, "missing tensor 'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'");
}
END_TEST

/* ---- generated models (tests/gen/gen_model.py --all) ------------------------------------ */

START_TEST(test_generated_models)
{
    const char *root = getenv("LORAD_MODELS");
    if (!root || !*root) {
        printf("LORAD_MODELS not set: generated models not loaded\n");
        return;
    }
    DIR *d = opendir(root);
    ck_assert_msg(d != NULL, "LORAD_MODELS=%s cannot be opened", root);
    struct dirent *e;
    int loaded = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strstr(e->d_name, ".tmp-gen")) continue;
        char dir[1024], cfgp[1100];
        snprintf(dir, sizeof dir, "%s/%s", root, e->d_name);
        snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
        if (access(cfgp, F_OK) != 0) continue;
        lr_model *m = NULL;
        lr_error err;
        lr_error_clear(&err);
        int rc = lr_model_load(dir, &err, &m);
        ck_assert_msg(rc == 0, "%s: %s", e->d_name, err.msg);
        const lr_config *c = &m->cfg;
        ck_assert_int_eq(m->embed.rows, c->vocab);
        ck_assert_int_eq(m->lm_head.cols, c->hidden);
        ck_assert_ptr_nonnull(m->layers[c->n_layers - 1].down.data);
        ck_assert_int_gt(m->weight_bytes, 0);
        ck_assert_int_ge(c->n_eos, 1);
        if (c->arch == LR_ARCH_QWEN2) ck_assert_ptr_nonnull(m->layers[0].bq);
        printf("loaded %-16s arch %d L=%d H=%d dtype %d weights %lld bytes\n", e->d_name, c->arch,
               c->n_layers, c->hidden, m->embed.dtype, (long long)m->weight_bytes);
        lr_model_free(m);
        loaded++;
    }
    closedir(d);
    ck_assert_int_gt(loaded, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("convert");
    tcase_add_test(tc, test_f16_all);
    tcase_add_test(tc, test_bf16_all);
    suite_add_tcase(s, tc);
    tc = tcase_create("config");
    tcase_add_test(tc, test_llama_defaults);
    tcase_add_test(tc, test_llama_real);
    tcase_add_test(tc, test_mistral);
    tcase_add_test(tc, test_qwen2);
    tcase_add_test(tc, test_rope_config);
    tcase_add_test(tc, test_t5_config);
    tcase_add_test(tc, test_config_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("rope");
    tcase_add_test(tc, test_rope_vectors);
    suite_add_tcase(s, tc);
    tc = tcase_create("load");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_add_test(tc, test_load_f32);
    tcase_add_test(tc, test_load_f16_tied);
    tcase_add_test(tc, test_load_bf16_biases);
    tcase_add_test(tc, test_load_qwen2);
    tcase_add_test(tc, test_load_mistral_sharded);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_load_t5);
    suite_add_tcase(s, tc);
    tc = tcase_create("generated");
    tcase_add_test(tc, test_generated_models);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
