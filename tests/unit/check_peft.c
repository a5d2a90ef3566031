/* check_peft.c — the PEFT folder loader against SPEC-HF.md D, on adapters written by this test.
 *
 * A tiny Llama-shaped base (2 layers, H=8, I=12, 2 heads of 4, 1 KV head, V=16) is built in
 * memory; each case writes adapter_config.json and adapter_model.safetensors (a small writer
 * below, independent of core/safetensors) into a temp folder and loads it. Expected values come
 * from the written arrays and from naive double-precision formulas (DoRA norms, rsLoRA scaling),
 * never from the loader itself.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "peft.h"

enum { L = 2, H = 8, I = 12, NH = 2, HD = 4, NKV = 1, V = 16, KVD = NKV * HD };

/* ---------------------------------------------------------------------------- the tiny base */

static float wbuf[L][7][I * I];
static uint16_t q_bf16[H * H]; /* layer 1's q stored as BF16 */
static float embed_w[V * H];
static lr_layer layers[L];
static lr_model model;

static float frand(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / (float)(1u << 24)) * 2.0f - 1.0f;
}

static void build_model(void)
{
    static const int rows[7] = {H, KVD, KVD, H, I, I, H}, cols[7] = {H, H, H, H, H, H, I};
    uint32_t seed = 7;
    memset(&model, 0, sizeof model);
    model.cfg.arch = LR_ARCH_LLAMA;
    model.cfg.vocab = V;
    model.cfg.hidden = H;
    model.cfg.inter = I;
    model.cfg.n_layers = L;
    model.cfg.n_heads = NH;
    model.cfg.n_kv_heads = NKV;
    model.cfg.head_dim = HD;
    for (int l = 0; l < L; l++) {
        lr_mat *m[7] = {&layers[l].q,    &layers[l].k,  &layers[l].v,   &layers[l].o,
                        &layers[l].gate, &layers[l].up, &layers[l].down};
        for (int j = 0; j < 7; j++) {
            for (int i = 0; i < rows[j] * cols[j]; i++)
                wbuf[l][j][i] = frand(&seed);
            *m[j] = (lr_mat){LR_DT_F32, wbuf[l][j], rows[j], cols[j], 0};
        }
    }
    /* layer 1 q in BF16: the DoRA norm must read it through the base's dtype */
    for (int i = 0; i < H * H; i++) {
        uint32_t b;
        memcpy(&b, &wbuf[1][0][i], 4);
        q_bf16[i] = (uint16_t)(b >> 16);
        b &= 0xffff0000u;
        memcpy(&wbuf[1][0][i], &b, 4); /* keep the exact value for the naive check */
    }
    layers[1].q = (lr_mat){LR_DT_BF16, q_bf16, H, H, 0};
    for (int i = 0; i < V * H; i++)
        embed_w[i] = frand(&seed);
    model.embed = (lr_mat){LR_DT_F32, embed_w, V, H, 0};
    model.lm_head = model.embed;
    model.layers = layers;
}

static const char *mname[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                               "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                               "mlp.down_proj"};
static const int mrows[7] = {H, KVD, KVD, H, I, I, H}, mcols[7] = {H, H, H, H, H, H, I};

/* ------------------------------------------------------------------ a tiny safetensors writer */

typedef struct wt {
    char name[200];
    const char *dtype; /* "F32", "F16", "BF16", "I32" */
    int ndim;
    int64_t shape[2];
    float *vals; /* numel values (converted to dtype on write) */
} wt;

static int n_wt;
static wt wts[64];
static uint32_t vseed = 99;

static float *add_t(const char *name, const char *dtype, int ndim, int64_t d0, int64_t d1)
{
    wt *t = &wts[n_wt++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    int64_t n = ndim == 1 ? d0 : d0 * d1;
    t->vals = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        float f = frand(&vseed);
        /* values exactly representable in f16 and bf16: multiples of 1/64 in [-1, 1] */
        t->vals[i] = roundf(f * 64.0f) / 64.0f;
    }
    return t->vals;
}

static int64_t numel(const wt *t)
{
    return t->ndim == 1 ? t->shape[0] : t->shape[0] * t->shape[1];
}

static uint16_t to_half(float f)
{
    /* exact for the multiples of 1/64 used here (normal range) */
    if (f == 0) return 0;
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = (b >> 16) & 0x8000u;
    int e = (int)((b >> 23) & 0xff) - 127 + 15;
    uint32_t man = (b >> 13) & 0x3ffu;
    return (uint16_t)(sign | ((uint32_t)e << 10) | man);
}

static void write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

static void write_st(const char *dir)
{
    char hdr[16384];
    size_t off = 0, pos = 0;
    pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n_wt; i++) {
        wt *t = &wts[i];
        size_t es = !strcmp(t->dtype, "F32") || !strcmp(t->dtype, "I32") ? 4 : 2;
        size_t nb = es * (size_t)numel(t);
        if (t->ndim == 1)
            pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos,
                                    ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":"
                                    "[%zu,%zu]}",
                                    t->name, t->dtype, (long long)t->shape[0], off, off + nb);
        else
            pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos,
                                    ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],"
                                    "\"data_offsets\":[%zu,%zu]}",
                                    t->name, t->dtype, (long long)t->shape[0],
                                    (long long)t->shape[1], off, off + nb);
        off += nb;
    }
    pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos, "}");
    while (pos % 8)
        hdr[pos++] = ' ';
    size_t total = 8 + pos + off;
    unsigned char *buf = calloc(1, total);
    uint64_t hl = pos;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, hdr, pos);
    unsigned char *d = buf + 8 + pos;
    for (int i = 0; i < n_wt; i++) {
        wt *t = &wts[i];
        for (int64_t j = 0; j < numel(t); j++) {
            float f = t->vals[j];
            if (!strcmp(t->dtype, "F32") || !strcmp(t->dtype, "I32")) {
                memcpy(d, &f, 4);
                d += 4;
            } else {
                uint16_t h;
                if (!strcmp(t->dtype, "F16")) {
                    h = to_half(f);
                } else {
                    uint32_t b;
                    memcpy(&b, &f, 4);
                    h = (uint16_t)(b >> 16);
                }
                memcpy(d, &h, 2);
                d += 2;
            }
        }
    }
    char path[600];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    write_file(path, buf, total);
    free(buf);
}

static char tmpdir[256];

static void reset(void)
{
    for (int i = 0; i < n_wt; i++)
        free(wts[i].vals);
    n_wt = 0;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/check_peft_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void cleanup_dir(void)
{
    char p[600];
    snprintf(p, sizeof p, "%s/adapter_config.json", tmpdir);
    unlink(p);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", tmpdir);
    unlink(p);
    rmdir(tmpdir);
    for (int i = 0; i < n_wt; i++)
        free(wts[i].vals);
    n_wt = 0;
}

static void write_cfg(const char *json)
{
    char p[600];
    snprintf(p, sizeof p, "%s/adapter_config.json", tmpdir);
    write_file(p, json, strlen(json));
}

/* Add lora_A/B for module j of layer l with rank r. */
static void add_lora(const char *prefix, int l, int j, int r, const char *dtype, float **A,
                     float **B)
{
    char n[200];
    snprintf(n, sizeof n, "%smodel.layers.%d.%s.lora_A.weight", prefix, l, mname[j]);
    float *a = add_t(n, dtype, 2, r, mcols[j]);
    snprintf(n, sizeof n, "%smodel.layers.%d.%s.lora_B.weight", prefix, l, mname[j]);
    float *b = add_t(n, dtype, 2, mrows[j], r);
    if (A) *A = a;
    if (B) *B = b;
}

static int load(peft_adapter **out, lr_error *e)
{
    write_st(tmpdir);
    lr_error_clear(e);
    return peft_load(tmpdir, &model, NULL, e, out);
}

static void expect_fail(int code, const char *needle1, const char *needle2)
{
    peft_adapter *a = NULL;
    lr_error e;
    int rc = load(&a, &e);
    ck_assert_msg(rc == code, "rc %d (want %d): %s", rc, code, e.msg);
    ck_assert_ptr_null(a);
    if (needle1) ck_assert_msg(strstr(e.msg, needle1), "message '%s' lacks '%s'", e.msg, needle1);
    if (needle2) ck_assert_msg(strstr(e.msg, needle2), "message '%s' lacks '%s'", e.msg, needle2);
    cleanup_dir();
}

static void setup(void)
{
    build_model();
    reset();
}

/* --------------------------------------------------------------------------------- the tests */

START_TEST(test_basic_prefix_and_values)
{
    /* q,v of both layers; prefixed keys; adapter name left in one key */
    write_cfg("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\","
              "\"v_proj\"],\"bias\":\"none\",\"modules_to_save\":null}");
    float *A0, *B0, *A1, *B1;
    add_lora("base_model.model.", 0, 0, 4, "F32", &A0, &B0);
    add_lora("base_model.model.", 0, 2, 4, "F32", NULL, NULL);
    add_lora("", 1, 0, 4, "F32", &A1, &B1); /* no prefix */
    /* adapter name kept: ".lora_A.default.weight" */
    float *A2 = add_t("base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight",
                      "F32", 2, 4, H);
    add_t("base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight", "F32", 2, KVD,
          4);
    peft_adapter *a;
    lr_error e;
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(a->n_modules, 4);
    ck_assert_int_eq(a->max_rank, 4);
    const peft_module *q0 = peft_module_at(a, 0, LR_MOD_Q);
    ck_assert_ptr_nonnull(q0);
    ck_assert_int_eq(q0->r, 4);
    ck_assert_int_eq(q0->in, H);
    ck_assert_int_eq(q0->out, H);
    ck_assert_float_eq(q0->s, 2.0f);
    for (int i = 0; i < 4 * H; i++)
        ck_assert_float_eq(q0->A[i], A0[i]);
    /* B is held transposed: Bt[j, o] = B[o, j] */
    ck_assert_ptr_nonnull(q0->Bt);
    for (int o = 0; o < H; o++)
        for (int j = 0; j < 4; j++)
            ck_assert_float_eq(q0->Bt[j * H + o], B0[o * 4 + j]);
    ck_assert_float_eq(peft_module_at(a, 1, LR_MOD_Q)->A[5], A1[5]);
    ck_assert_float_eq(peft_module_at(a, 1, LR_MOD_V)->A[7], A2[7]);
    ck_assert_ptr_null(peft_module_at(a, 0, LR_MOD_K));
    ck_assert_ptr_null(peft_module_at(a, 0, LR_MOD_DOWN));
    /* q: A 4×8 + B 8×4; v: A 4×8 + B 4×4; two layers; f32 */
    ck_assert_int_eq(a->bytes, (int64_t)4 * 2 * ((4 * H + H * 4) + (4 * H + KVD * 4)));
    peft_free(a);
    cleanup_dir();
}
END_TEST

static float bf16_value(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

START_TEST(test_dtypes)
{
    write_cfg("{\"r\":2,\"lora_alpha\":2,\"target_modules\":[\"gate_proj\",\"down_proj\"]}");
    float *A, *B, *A2, *B2;
    add_lora("base_model.model.", 0, 4, 2, "F16", &A, &B);
    add_lora("base_model.model.", 0, 6, 2, "BF16", &A2, &B2);
    peft_adapter *a;
    lr_error e;
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    const peft_module *g = peft_module_at(a, 0, LR_MOD_GATE),
                      *d = peft_module_at(a, 0, LR_MOD_DOWN);
    for (int i = 0; i < 2 * H; i++)
        ck_assert_float_eq(g->A[i], A[i]);
    for (int o = 0; o < I; o++)
        for (int j = 0; j < 2; j++)
            ck_assert_float_eq(g->Bt[j * I + o], B[o * 2 + j]);
    /* F16 is widened to f32; BF16 is kept as stored (A16, and B transposed in Bt16) */
    ck_assert_ptr_null(g->A16);
    ck_assert_ptr_null(d->A);
    ck_assert_ptr_null(d->Bt);
    ck_assert_ptr_nonnull(d->A16);
    ck_assert_ptr_nonnull(d->Bt16);
    for (int i = 0; i < 2 * I; i++)
        ck_assert_float_eq(bf16_value(d->A16[i]), A2[i]);
    for (int o = 0; o < H; o++)
        for (int j = 0; j < 2; j++)
            ck_assert_float_eq(bf16_value(d->Bt16[j * H + o]), B2[o * 2 + j]);
    /* gate: f32 A 2×I... counted at 4 bytes, down: bf16 at 2 */
    ck_assert_int_eq(a->bytes, (int64_t)4 * (2 * H + I * 2) + 2 * (2 * I + H * 2));
    peft_free(a);
    cleanup_dir();
}
END_TEST

START_TEST(test_patterns_rslora)
{
    /* rank_pattern: "q_proj" matches every q_proj; "layers.1.mlp.up_proj" only layer 1's up;
     * "proj" must NOT match "…q_proj" ((.*\.)?(P)$ needs a dot or the whole name).
     * alpha_pattern order: the first matching key wins. */
    write_cfg("{\"r\":4,\"lora_alpha\":8,\"use_rslora\":true,\"target_modules\":[\"q_proj\","
              "\"up_proj\",\"o_proj\"],\"rank_pattern\":{\"proj\":7,\"q_proj\":2,"
              "\"layers.1.mlp.up_proj\":1},\"alpha_pattern\":{\"model.layers.0.self_attn.q_proj\":"
              "3,\"q_proj\":5.5}}");
    add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
    add_lora("base_model.model.", 1, 0, 2, "F32", NULL, NULL);
    add_lora("base_model.model.", 0, 5, 4, "F32", NULL, NULL);
    add_lora("base_model.model.", 1, 5, 1, "F32", NULL, NULL);
    add_lora("base_model.model.", 0, 3, 4, "F32", NULL, NULL);
    add_lora("base_model.model.", 1, 3, 4, "F32", NULL, NULL);
    peft_adapter *a;
    lr_error e;
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(peft_module_at(a, 0, LR_MOD_Q)->r, 2);
    ck_assert_int_eq(peft_module_at(a, 1, LR_MOD_UP)->r, 1);
    ck_assert_int_eq(peft_module_at(a, 0, LR_MOD_UP)->r, 4);
    ck_assert_float_eq_tol(peft_module_at(a, 0, LR_MOD_Q)->s, (float)(3.0 / sqrt(2.0)), 1e-7);
    ck_assert_float_eq_tol(peft_module_at(a, 1, LR_MOD_Q)->s, (float)(5.5 / sqrt(2.0)), 1e-7);
    ck_assert_float_eq_tol(peft_module_at(a, 1, LR_MOD_UP)->s, 8.0f, 1e-7);
    ck_assert_float_eq_tol(peft_module_at(a, 0, LR_MOD_O)->s, 4.0f, 1e-7);
    peft_free(a);
    cleanup_dir();
}
END_TEST

START_TEST(test_regex_and_layers)
{
    /* regex target: fullmatch, so only layer 0's k_proj and every up_proj */
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":\"model\\\\.layers\\\\.0\\\\.self_attn"
              "\\\\.k_proj|.*up_proj\"}");
    for (int l = 0; l < L; l++) {
        add_lora("base_model.model.", l, 1, 2, "F32", NULL, NULL); /* layer 1's k: ignored */
        add_lora("base_model.model.", l, 5, 2, "F32", NULL, NULL);
    }
    peft_adapter *a;
    lr_error e;
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_ptr_nonnull(peft_module_at(a, 0, LR_MOD_K));
    ck_assert_ptr_null(peft_module_at(a, 1, LR_MOD_K));
    ck_assert_ptr_nonnull(peft_module_at(a, 1, LR_MOD_UP));
    ck_assert_int_eq(a->n_modules, 3);
    peft_free(a);
    cleanup_dir();

    /* a regex that is only a suffix matches nothing under fullmatch */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":\"q_proj\"}");
    add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
    expect_fail(LR_EINCOMPAT, "q_proj", "matches no module");

    /* layers_to_transform + layers_pattern: only layer 1 */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\",\"v_proj\"],"
              "\"layers_to_transform\":[1],\"layers_pattern\":\"layers\"}");
    for (int l = 0; l < L; l++) {
        add_lora("base_model.model.", l, 0, 2, "F32", NULL, NULL);
        add_lora("base_model.model.", l, 2, 2, "F32", NULL, NULL);
    }
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_ptr_null(peft_module_at(a, 0, LR_MOD_Q));
    ck_assert_ptr_nonnull(peft_module_at(a, 1, LR_MOD_Q));
    ck_assert_int_eq(a->n_modules, 2);
    peft_free(a);
    cleanup_dir();

    /* an int layers_to_transform with no pattern (first numbered segment) */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\"],"
              "\"layers_to_transform\":0}");
    for (int l = 0; l < L; l++)
        add_lora("base_model.model.", l, 0, 2, "F32", NULL, NULL);
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_ptr_nonnull(peft_module_at(a, 0, LR_MOD_Q));
    ck_assert_ptr_null(peft_module_at(a, 1, LR_MOD_Q));
    peft_free(a);
    cleanup_dir();

    /* exclude_modules wins over targets */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\"],"
              "\"exclude_modules\":[\"layers.0.self_attn.q_proj\"]}");
    for (int l = 0; l < L; l++)
        add_lora("base_model.model.", l, 0, 2, "F32", NULL, NULL);
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_ptr_null(peft_module_at(a, 0, LR_MOD_Q));
    ck_assert_ptr_nonnull(peft_module_at(a, 1, LR_MOD_Q));
    peft_free(a);
    cleanup_dir();
}
END_TEST

START_TEST(test_dora_and_bias)
{
    /* DoRA on layer 1 q (a BF16 base weight) and layer 0 down, with lora_bias */
    write_cfg("{\"r\":2,\"lora_alpha\":3,\"use_dora\":true,\"lora_bias\":true,"
              "\"target_modules\":[\"q_proj\",\"down_proj\"],\"layers_to_transform\":[1]}");
    float *A, *B;
    add_lora("base_model.model.", 1, 0, 2, "F32", &A, &B);
    float *bb =
        add_t("base_model.model.model.layers.1.self_attn.q_proj.lora_B.bias", "F32", 1, H, 0);
    float *mag = add_t("base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector",
                       "F32", 1, H, 0);
    float *A2, *B2;
    add_lora("base_model.model.", 1, 6, 2, "F32", &A2, &B2);
    float *mag2 = add_t("base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector",
                        "F32", 1, H, 0);
    peft_adapter *a;
    lr_error e;
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    const peft_module *q = peft_module_at(a, 1, LR_MOD_Q);
    ck_assert_ptr_nonnull(q->dora);
    ck_assert_ptr_nonnull(q->bias_b);
    for (int o = 0; o < H; o++)
        ck_assert_float_eq(q->bias_b[o], bb[o]);
    double s = 1.5;
    for (int o = 0; o < H; o++) {
        double n2 = 0;
        for (int i = 0; i < H; i++) {
            double w = wbuf[1][0][o * H + i];
            for (int j = 0; j < 2; j++)
                w += s * (double)B[o * 2 + j] * (double)A[j * H + i];
            n2 += w * w;
        }
        ck_assert_double_eq_tol(q->dora[o], mag[o] / sqrt(n2), 1e-6 * fabs(mag[o] / sqrt(n2)));
    }
    const peft_module *d = peft_module_at(a, 1, LR_MOD_DOWN);
    for (int o = 0; o < H; o++) {
        double n2 = 0;
        for (int i = 0; i < I; i++) {
            double w = wbuf[1][6][o * I + i];
            for (int j = 0; j < 2; j++)
                w += s * (double)B2[o * 2 + j] * (double)A2[j * I + i];
            n2 += w * w;
        }
        ck_assert_double_eq_tol(d->dora[o], mag2[o] / sqrt(n2), 1e-6 * fabs(mag2[o] / sqrt(n2)));
    }
    peft_free(a);
    cleanup_dir();

    /* DoRA without its magnitude vector */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":3,\"use_dora\":true,\"target_modules\":[\"q_proj\"]}");
    add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
    add_lora("base_model.model.", 1, 0, 2, "F32", NULL, NULL);
    expect_fail(LR_EFORMAT, "lora_magnitude_vector", "model.layers.0.self_attn.q_proj");
}
END_TEST

START_TEST(test_embedding)
{
    write_cfg("{\"r\":3,\"lora_alpha\":6,\"target_modules\":[\"embed_tokens\",\"q_proj\"]}");
    float *EA = add_t("base_model.model.model.embed_tokens.lora_embedding_A", "F32", 2, 3, V);
    float *EB = add_t("base_model.model.model.embed_tokens.lora_embedding_B", "F32", 2, H, 3);
    add_t("base_model.model.model.embed_tokens.base_layer.weight", "F32", 2, V, H);
    add_lora("base_model.model.", 0, 0, 3, "F32", NULL, NULL);
    peft_adapter *a;
    lr_error e;
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_ptr_nonnull(a->embed);
    ck_assert_int_eq(a->embed->r, 3);
    ck_assert_float_eq(a->embed->s, 2.0f);
    for (int v = 0; v < V; v++)
        for (int j = 0; j < 3; j++)
            ck_assert_float_eq(a->embed->At[v * 3 + j], EA[j * V + v]);
    ck_assert_float_eq(a->embed->B[5], EB[5]);
    peft_free(a);
    cleanup_dir();

    /* a base_layer copy of another shape (resized vocab) is incompatible */
    reset();
    write_cfg("{\"r\":3,\"lora_alpha\":6,\"target_modules\":[\"embed_tokens\"]}");
    add_t("base_model.model.model.embed_tokens.lora_embedding_A", "F32", 2, 3, V);
    add_t("base_model.model.model.embed_tokens.lora_embedding_B", "F32", 2, H, 3);
    add_t("base_model.model.model.embed_tokens.base_layer.weight", "F32", 2, V + 2, H);
    expect_fail(LR_EINCOMPAT, "[18, 8]", "[16, 8]");

    /* DoRA on the embedding: factor m / ‖(E + s·(B·A)ᵀ)[:, d]‖ over the vocabulary */
    reset();
    write_cfg("{\"r\":3,\"lora_alpha\":6,\"use_dora\":true,\"target_modules\":[\"embed_tokens\"]}");
    float *DA = add_t("base_model.model.model.embed_tokens.lora_embedding_A", "F32", 2, 3, V);
    float *DB = add_t("base_model.model.model.embed_tokens.lora_embedding_B", "F32", 2, H, 3);
    float *mag = add_t("base_model.model.model.embed_tokens.lora_magnitude_vector", "F32", 1, H, 0);
    ck_assert_msg(load(&a, &e) == 0, "%s", e.msg);
    ck_assert_ptr_nonnull(a->embed->dora);
    for (int d = 0; d < H; d++) {
        double n2 = 0;
        for (int v = 0; v < V; v++) {
            double x = embed_w[v * H + d];
            for (int j = 0; j < 3; j++)
                x += 2.0 * (double)DB[d * 3 + j] * DA[j * V + v];
            n2 += x * x;
        }
        double want = mag[d] / sqrt(n2);
        ck_assert_double_eq_tol(a->embed->dora[d], want, 1e-6 * fabs(want));
    }
    peft_free(a);
    cleanup_dir();

    /* DoRA on the embedding without its magnitude vector */
    reset();
    write_cfg("{\"r\":3,\"lora_alpha\":6,\"use_dora\":true,\"target_modules\":[\"embed_tokens\"]}");
    add_t("base_model.model.model.embed_tokens.lora_embedding_A", "F32", 2, 3, V);
    add_t("base_model.model.model.embed_tokens.lora_embedding_B", "F32", 2, H, 3);
    expect_fail(LR_EFORMAT, "lora_magnitude_vector", "embed_tokens");
}
END_TEST

START_TEST(test_refusals)
{
    static const char *cases[][3] = {
        {"{\"r\":2,\"target_modules\":[\"q_proj\"],\"modules_to_save\":[\"lm_head\"]}",
         "modules_to_save", NULL},
        {"{\"r\":2,\"target_modules\":[\"q_proj\"],\"bias\":\"all\"}", "bias", "all"},
        {"{\"r\":2,\"target_modules\":[\"q_proj\"],\"fan_in_fan_out\":true}", "fan_in_fan_out",
         NULL},
        {"{\"peft_type\":\"IA3\",\"target_modules\":[\"q_proj\"]}", "peft_type", "IA3"},
        {"{\"r\":2,\"target_modules\":[\"q_proj\",\"lm_head\"]}", "lm_head", NULL},
        {"{\"r\":2,\"target_modules\":[\"q_proj\"],\"trainable_token_indices\":[1,2]}",
         "trainable_token_indices", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        reset();
        write_cfg(cases[i][0]);
        add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
        expect_fail(LR_EUNSUPPORTED, cases[i][1], cases[i][2]);
    }
    /* a modules_to_save tensor without the config field */
    reset();
    write_cfg("{\"r\":2,\"target_modules\":[\"q_proj\"]}");
    add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
    add_t("base_model.model.lm_head.weight", "F32", 2, V, H);
    expect_fail(LR_EUNSUPPORTED, "lm_head.weight", NULL);
}
END_TEST

START_TEST(test_incompatible)
{
    /* A has the wrong in_features */
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"k_proj\"]}");
    add_t("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", "F32", 2, 2, H + 1);
    add_t("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", "F32", 2, KVD, 2);
    expect_fail(LR_EINCOMPAT, "model.layers.0.self_attn.k_proj lora_A has shape [2, 9]",
                "expected [2, 8]");
    /* B has the wrong out_features */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"k_proj\"]}");
    add_t("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", "F32", 2, 2, H);
    add_t("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", "F32", 2, H, 2);
    expect_fail(LR_EINCOMPAT, "lora_B has shape [8, 2]", "expected [4, 2]");
    /* config r disagrees with the tensors */
    reset();
    write_cfg("{\"r\":4,\"lora_alpha\":4,\"target_modules\":[\"q_proj\"]}");
    add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
    expect_fail(LR_EINCOMPAT, "r=4", "[2, 8]");
    /* a module the base does not have */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\"]}");
    add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
    add_t("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", "F32", 2, 2, H);
    expect_fail(LR_EINCOMPAT, "model.layers.7.self_attn.q_proj", "does not have");
    /* a target name that names nothing in the base */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\",\"c_attn\"]}");
    add_lora("base_model.model.", 0, 0, 2, "F32", NULL, NULL);
    expect_fail(LR_EINCOMPAT, "c_attn", NULL);
    /* lora_A without lora_B */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\"]}");
    add_t("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", "F32", 2, 2, H);
    expect_fail(LR_EFORMAT, "model.layers.1.self_attn.q_proj", "lora_B");
    /* integer tensors */
    reset();
    write_cfg("{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\"]}");
    add_t("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", "I32", 2, 2, H);
    add_t("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight", "F32", 2, H, 2);
    expect_fail(LR_EFORMAT, "I32", "lora_A");
    /* rank above the limit */
    reset();
    write_cfg("{\"r\":4,\"lora_alpha\":4,\"target_modules\":[\"q_proj\"]}");
    add_lora("base_model.model.", 0, 0, 4, "F32", NULL, NULL);
    write_st(tmpdir);
    peft_params pp = {.max_rank = 2};
    peft_adapter *a = NULL;
    lr_error e;
    ck_assert_int_eq(peft_load(tmpdir, &model, &pp, &e, &a), LR_ERANGE);
    ck_assert_ptr_nonnull(strstr(e.msg, "rank 4"));
    cleanup_dir();
}
END_TEST

START_TEST(test_bad_files)
{
    peft_adapter *a = NULL;
    lr_error e;
    /* missing config */
    ck_assert_int_eq(peft_load(tmpdir, &model, NULL, &e, &a), LR_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(e.msg, "adapter_config.json"));
    /* missing weights */
    write_cfg("{\"r\":2,\"target_modules\":[\"q_proj\"]}");
    ck_assert_int_eq(peft_load(tmpdir, &model, NULL, &e, &a), LR_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(e.msg, "adapter_model.safetensors"));
    /* truncated weights */
    char p[600];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", tmpdir);
    write_file(p, "\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":", 13);
    ck_assert_int_eq(peft_load(tmpdir, &model, NULL, &e, &a), LR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(e.msg, "adapter_model.safetensors"));
    /* malformed config JSON, wrong types */
    static const char *bad[] = {"{\"r\":",
                                "[1,2]",
                                "{\"r\":\"eight\"}",
                                "{\"r\":0}",
                                "{\"target_modules\":5}",
                                "{\"target_modules\":\"(unclosed\"}",
                                "{\"rank_pattern\":{\"q\":\"x\"}}",
                                "{\"use_dora\":\"yes\"}",
                                "{\"layers_to_transform\":[\"a\"]}",
                                "{\"r\":2,\"r\":3}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_cfg(bad[i]);
        int rc = peft_load(tmpdir, &model, NULL, &e, &a);
        ck_assert_msg(rc == LR_EFORMAT, "config %s: rc %d (%s)", bad[i], rc, e.msg);
        ck_assert_ptr_nonnull(strstr(e.msg, "adapter_config.json"));
        ck_assert_ptr_null(a);
    }
    unlink(p);
    cleanup_dir();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("peft");
    struct {
        const char *name;
        const TTest *t;
    } cases[] = {
        {"basic", test_basic_prefix_and_values},
        {"dtypes", test_dtypes},
        {"patterns", test_patterns_rslora},
        {"targeting", test_regex_and_layers},
        {"dora", test_dora_and_bias},
        {"embedding", test_embedding},
        {"refusals", test_refusals},
        {"incompatible", test_incompatible},
        {"bad_files", test_bad_files},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, NULL);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, cases[i].t);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
