/* fuzz_peft.c — libFuzzer target: PEFT adapter folders (adapter_config.json +
 * adapter_model.safetensors) loaded by peft_load() against a tiny in-memory Llama base.
 *
 * Input: adapter_config.json text, optionally followed by a NUL byte and the bytes of
 * adapter_model.safetensors. Without a NUL the target writes a fixed valid safetensors file
 * (rank-2 LoRA on q_proj and v_proj of both layers, DoRA magnitudes, an embedding LoRA) so the
 * fuzzer spends its time on the config; with one, both files come from the input. The files go
 * into a private temporary folder made for each input. For an accepted adapter the target
 * checks what adapters/lora relies on: ranks within max_rank, every wrapped module's A/B
 * present with the base's shape, finite scaling.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "peft.h"

void fuzz_peft_init(void);
int fuzz_peft_one(const uint8_t *data, size_t size);

enum { L = 2, H = 8, I = 12, NH = 2, HD = 4, NKV = 1, V = 16, KVD = NKV * HD, MAX_RANK = 16 };

static float wbuf[L][7][I * I];
static uint16_t q_bf16[H * H];
static float embed_w[V * H];
static lr_layer layers[L];
static lr_model model;
static char dir[64], cfg_path[128], st_path[128];
static uint8_t *fixed_st;
static size_t fixed_len;

static const int rows[7] = {H, KVD, KVD, H, I, I, H}, cols[7] = {H, H, H, H, H, H, I};

static float frand(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / (float)(1u << 24)) * 2.0f - 1.0f;
}

static void build_model(void)
{
    uint32_t seed = 7;
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
    for (int i = 0; i < H * H; i++)
        q_bf16[i] = (uint16_t)(0x3f00u + (unsigned)(i % 64)); /* bf16 around 0.5 */
    layers[1].q = (lr_mat){LR_DT_BF16, q_bf16, H, H, 0};
    for (int i = 0; i < V * H; i++)
        embed_w[i] = frand(&seed);
    model.embed = (lr_mat){LR_DT_F32, embed_w, V, H, 0};
    model.lm_head = model.embed;
    model.layers = layers;
}

/* The fixed adapter_model.safetensors: F32 tensors, values 0.25. */
static void build_fixed_st(void)
{
    static const char *mod[2] = {"self_attn.q_proj", "self_attn.v_proj"};
    static const int mrow[2] = {H, KVD};
    char hdr[8192];
    size_t pos = 0, off = 0;
    pos += (size_t)snprintf(hdr, sizeof hdr, "{\"__metadata__\":{\"format\":\"pt\"}");
#define T(name, d0, d1)                                                                            \
    do {                                                                                           \
        size_t nb = 4u * (size_t)(d0) * (size_t)(d1);                                              \
        pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos,                                       \
                                ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],"                    \
                                "\"data_offsets\":[%zu,%zu]}",                                     \
                                name, (int)(d0), (int)(d1), off, off + nb);                        \
        off += nb;                                                                                 \
    } while (0)
    char n[160];
    for (int l = 0; l < L; l++)
        for (int j = 0; j < 2; j++) {
            snprintf(n, sizeof n, "base_model.model.model.layers.%d.%s.lora_A.weight", l, mod[j]);
            T(n, 2, H);
            snprintf(n, sizeof n, "base_model.model.model.layers.%d.%s.lora_B.weight", l, mod[j]);
            T(n, mrow[j], 2);
            snprintf(n, sizeof n, "base_model.model.model.layers.%d.%s.lora_magnitude_vector", l,
                     mod[j]);
            pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos,
                                    ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],"
                                    "\"data_offsets\":[%zu,%zu]}",
                                    n, mrow[j], off, off + 4u * (size_t)mrow[j]);
            off += 4u * (size_t)mrow[j];
        }
    T("base_model.model.model.embed_tokens.lora_embedding_A", 2, V);
    T("base_model.model.model.embed_tokens.lora_embedding_B", H, 2);
#undef T
    pos += (size_t)snprintf(hdr + pos, sizeof hdr - pos, "}");
    while (pos % 8)
        hdr[pos++] = ' ';
    fixed_len = 8 + pos + off;
    fixed_st = malloc(fixed_len);
    uint64_t hl = pos;
    memcpy(fixed_st, &hl, 8);
    memcpy(fixed_st + 8, hdr, pos);
    float q = 0.25f;
    for (size_t i = 0; i < off / 4; i++)
        memcpy(fixed_st + 8 + pos + 4 * i, &q, 4);
}

void fuzz_peft_init(void)
{
    build_model();
    build_fixed_st();
}

static void put(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (n && fwrite(p, 1, n, f) != n)
        abort();
    fclose(f);
}

int fuzz_peft_one(const uint8_t *data, size_t size)
{
    /* A fresh folder per input, removed before returning: nothing is left behind even when the
     * process ends without running atexit handlers (libFuzzer, Check's fork mode). */
    snprintf(dir, sizeof dir, "/tmp/fuzz_peft_XXXXXX");
    if (!mkdtemp(dir))
        abort();
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", dir);
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", dir);
    const uint8_t *nul = memchr(data, 0, size);
    size_t clen = nul ? (size_t)(nul - data) : size;
    put(cfg_path, data, clen);
    if (nul)
        put(st_path, nul + 1, size - clen - 1);
    else
        put(st_path, fixed_st, fixed_len);
    peft_params p = {.max_rank = MAX_RANK};
    lr_error err;
    memset(&err, 0, sizeof err);
    peft_adapter *a = NULL;
    if (peft_load(dir, &model, &p, &err, &a) == 0) {
        if (a->max_rank < 0 || a->max_rank > MAX_RANK || a->n_layers != L)
            abort();
        for (int l = 0; l < L; l++)
            for (int j = 0; j < LR_MOD_COUNT; j++) {
                const peft_module *md = peft_module_at(a, l, (lr_module)j);
                if (!md)
                    continue;
                if (j >= 7 || md->r <= 0 || md->r > MAX_RANK || md->in != cols[j] ||
                    md->out != rows[j] || (!md->A && !md->A16) || (!md->Bt && !md->Bt16) ||
                    !isfinite(md->s))
                    abort();
                size_t na = (size_t)md->r * md->in;
                volatile float s = md->A ? md->A[na - 1] : md->A16[na - 1];
                s += md->Bt ? md->Bt[md->r * md->out - 1] : md->Bt16[md->r * md->out - 1];
                if (md->bias_b)
                    s += md->bias_b[md->out - 1];
                if (md->dora)
                    s += md->dora[md->out - 1];
                (void)s;
            }
        if (a->embed) {
            const peft_embed *e = a->embed;
            if (e->r <= 0 || e->r > MAX_RANK || e->vocab != V || e->hidden != H || !e->At || !e->B)
                abort();
            volatile float s = e->At[e->vocab * e->r - 1] + e->B[e->hidden * e->r - 1];
            (void)s;
        }
        peft_free(a);
    } else if (err.msg[0] == 0) {
        abort();
    } else if (getenv("FUZZ_VERBOSE")) {
        fprintf(stderr, "refused: %s\n", err.msg);
    }
    unlink(cfg_path);
    unlink(st_path);
    rmdir(dir);
    return 0;
}

/* The libFuzzer entry points (tests/fuzz/run.sh builds with -DLR_LIBFUZZER); check_regress calls
 * fuzz_peft_one directly. */
#ifdef LR_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_peft_one(data, size);
}
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_peft_init();
    return 0;
}
#endif
