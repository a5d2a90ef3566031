/* check_lora.c — the unmerged LoRA hooks against naive double loops.
 *
 * Adapters are built by hand (plain peft_adapter data) over a tiny in-memory base (2 layers,
 * H=8, I=12); each case fills y with the base output x·W0ᵀ + b computed naively, runs
 * lora_apply on a run of rows inside a larger batch with padded strides, and compares with the
 * SPEC D.3 / D.5 formulas evaluated in double: plain LoRA, lora_bias, DoRA (bias kept out), a
 * weighted mix holding plain and DoRA members (DoRA factor recomputed at the member's scale), and
 * the embedding hook. Rows outside the run and stride padding must stay untouched.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"

enum { L = 2, H = 8, I = 12, V = 16 };

static float W0[L][I * I]; /* q of each layer: [H, H]; gate: [I, H] in W1 */
static float W1[L][I * H];
static float E[V * H];
static lr_layer layers[L];
static lr_model model;
static uint32_t seed = 1;

static float frand(void)
{
    seed = seed * 1664525u + 1013904223u;
    return ((float)(seed >> 8) / (float)(1u << 24)) * 2.0f - 1.0f;
}

static void setup(void)
{
    memset(&model, 0, sizeof model);
    model.cfg.arch = LR_ARCH_LLAMA;
    model.cfg.vocab = V;
    model.cfg.hidden = H;
    model.cfg.inter = I;
    model.cfg.n_layers = L;
    model.cfg.n_heads = 2;
    model.cfg.n_kv_heads = 2;
    model.cfg.head_dim = 4;
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < H * H; i++)
            W0[l][i] = frand();
        for (int i = 0; i < I * H; i++)
            W1[l][i] = frand();
        layers[l].q = (lr_mat){LR_DT_F32, W0[l], H, H, 0};
        layers[l].gate = (lr_mat){LR_DT_F32, W1[l], I, H, 0};
    }
    model.layers = layers;
    for (int i = 0; i < V * H; i++)
        E[i] = frand();
    model.embed = (lr_mat){LR_DT_F32, E, V, H, 0};
}

static float *rnd(int n)
{
    float *p = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

static peft_adapter *new_adapter(void)
{
    peft_adapter *a = calloc(1, sizeof *a);
    a->n_layers = L;
    a->mods = calloc(L * LR_MOD_COUNT, sizeof *a->mods);
    return a;
}

static peft_module *add_mod(peft_adapter *a, int layer, lr_module mod, int in, int out, int r,
                            float s)
{
    peft_module *md = calloc(1, sizeof *md);
    md->r = r;
    md->in = in;
    md->out = out;
    md->s = s;
    md->A = rnd(r * in);
    md->B = rnd(out * r);
    /* lora.c reads B transposed (as peft_load holds it); the reference reads B. */
    md->Bt = malloc(sizeof(float) * (size_t)(out * r));
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++)
            md->Bt[j * out + o] = md->B[o * r + j];
    a->mods[layer * LR_MOD_COUNT + mod] = md;
    if (r > a->max_rank) a->max_rank = r;
    a->n_modules++;
    return md;
}

/* (B·A·x)[o] in double */
static double bax(const peft_module *md, const float *x, int o)
{
    double acc = 0;
    for (int j = 0; j < md->r; j++) {
        double t = 0;
        for (int i = 0; i < md->in; i++)
            t += (double)md->A[j * md->in + i] * x[i];
        acc += (double)md->B[o * md->r + j] * t;
    }
    return acc;
}

static double wx(const float *W, int in, const float *x, int o)
{
    double acc = 0;
    for (int i = 0; i < in; i++)
        acc += (double)W[o * in + i] * x[i];
    return acc;
}

#define NROWS 40 /* > LORA_KERN_T: the longest runs take the sgemm path */
#define LDX (I + 3)
#define LDY (I + 5)

typedef double (*expect_fn)(int o, const float *x, double base, double b, void *ctx);

/* Run lora_apply for rows t0..t1-1 of a NROWS batch on (layer, mod) with weight W [out, in] and
 * bias b, and compare every element with expect(). */
static void run_case(const lora_set *set, int layer, lr_module mod, const float *W, int in, int out,
                     const float *bias, int t0, int t1, expect_fn expect, void *ctx)
{
    float *x = rnd(NROWS * LDX);
    float *y = malloc(sizeof(float) * NROWS * LDY);
    double *base = malloc(sizeof(double) * NROWS * LDY);
    for (int t = 0; t < NROWS; t++)
        for (int o = 0; o < LDY; o++) {
            base[t * LDY + o] = o < out ? wx(W, in, x + t * LDX, o) : 0;
            y[t * LDY + o] = o < out ? (float)(base[t * LDY + o] + (bias ? bias[o] : 0)) : 42.0f;
        }
    float *y0 = malloc(sizeof(float) * NROWS * LDY);
    memcpy(y0, y, sizeof(float) * NROWS * LDY);
    eng_delta_ops ops;
    lora_ops(&model, 8, &ops);
    float *scratch = malloc(sizeof(float) * (size_t)NROWS * (size_t)ops.scratch_per_token);
    lora_apply(set, layer, mod, x, LDX, y, LDY, bias, t0, t1, scratch);
    for (int t = 0; t < NROWS; t++)
        for (int o = 0; o < LDY; o++) {
            float got = y[t * LDY + o];
            if (t < t0 || t >= t1 || o >= out) {
                ck_assert_msg(got == y0[t * LDY + o], "row %d col %d changed outside the run", t,
                              o);
                continue;
            }
            double want = expect(o, x + t * LDX, base[t * LDY + o], bias ? bias[o] : 0, ctx);
            ck_assert_msg(fabs(got - want) <= 1e-5 * (1 + fabs(want)),
                          "row %d col %d: got %.8g want %.8g (T=%d)", t, o, got, want, t1 - t0);
        }
    free(x);
    free(y);
    free(y0);
    free(base);
    free(scratch);
}

typedef struct mix_ctx {
    int n;
    const peft_module *md[4];
    double k[4];        /* effective scaling per member */
    const double *f[4]; /* DoRA factor per member or NULL */
} mix_ctx;

/* SPEC D.3/D.5 with several active adapters: y = b + base + Σ contributions, where a DoRA
 * member contributes (f − 1)·base + f·k·(B·A·x + b_B) and a plain one k·(B·A·x + b_B). */
static double expect_mix(int o, const float *x, double base, double b, void *vctx)
{
    mix_ctx *c = vctx;
    double y = b + base;
    for (int i = 0; i < c->n; i++) {
        double d = bax(c->md[i], x, o) + (c->md[i]->bias_b ? c->md[i]->bias_b[o] : 0);
        if (c->f[i])
            y += (c->f[i][o] - 1) * base + c->f[i][o] * c->k[i] * d;
        else
            y += c->k[i] * d;
    }
    return y;
}

START_TEST(test_plain)
{
    peft_adapter *a = new_adapter();
    peft_module *md = add_mod(a, 1, LR_MOD_GATE, H, I, 3, 0.75f);
    const peft_adapter *list[1] = {a};
    lora_set *set;
    lr_error e;
    ck_assert_int_eq(lora_set_create(&model, list, NULL, 1, &e, &set), 0);
    ck_assert(lora_has_module(set, 1, LR_MOD_GATE));
    ck_assert(!lora_has_module(set, 0, LR_MOD_GATE));
    ck_assert(!lora_has_module(set, 1, LR_MOD_Q));
    ck_assert(!lora_has_module(set, 5, LR_MOD_Q));
    mix_ctx c = {1, {md}, {0.75}, {NULL}};
    float bias[I];
    for (int i = 0; i < I; i++)
        bias[i] = frand();
    /* decode-sized runs take the lora_kern path, longer runs sgemm */
    int runs[][2] = {{0, 1}, {3, 5}, {2, 5}, {1, 10}, {5, 37}, {0, NROWS}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        run_case(set, 1, LR_MOD_GATE, W1[1], H, I, NULL, runs[i][0], runs[i][1], expect_mix, &c);
        run_case(set, 1, LR_MOD_GATE, W1[1], H, I, bias, runs[i][0], runs[i][1], expect_mix, &c);
    }
    /* a module holding only B (built by hand without Bt) takes sgemm at every length */
    free(md->Bt);
    md->Bt = NULL;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++)
        run_case(set, 1, LR_MOD_GATE, W1[1], H, I, bias, runs[i][0], runs[i][1], expect_mix, &c);
    md->Bt = malloc(sizeof(float) * I * 3);
    for (int o = 0; o < I; o++)
        for (int j = 0; j < 3; j++)
            md->Bt[j * I + o] = md->B[o * 3 + j];
    /* lora_bias */
    md->bias_b = rnd(I);
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++)
        run_case(set, 1, LR_MOD_GATE, W1[1], H, I, bias, runs[i][0], runs[i][1], expect_mix, &c);
    lora_set_destroy(set);
    peft_free(a);
}
END_TEST

/* Round to bfloat16 (truncation: any bf16 value will do) and return its bits. */
static uint16_t to_bf16(float *f)
{
    uint32_t b;
    memcpy(&b, f, 4);
    uint16_t h = (uint16_t)(b >> 16);
    b = (uint32_t)h << 16;
    memcpy(f, &b, 4);
    return h;
}

/* A module held as BF16 (as peft_load keeps a BF16 file's A and B): lora.c must use A16 / Bt16
 * at every run length; the reference reads the same values widened in A / B. */
START_TEST(test_bf16)
{
    peft_adapter *a = new_adapter();
    int r = 5;
    peft_module *md = add_mod(a, 1, LR_MOD_GATE, H, I, r, 0.5f);
    md->A16 = malloc(sizeof(uint16_t) * r * H);
    md->Bt16 = malloc(sizeof(uint16_t) * r * I);
    for (int i = 0; i < r * H; i++)
        md->A16[i] = to_bf16(&md->A[i]);
    for (int o = 0; o < I; o++)
        for (int j = 0; j < r; j++)
            md->Bt16[j * I + o] = to_bf16(&md->B[o * r + j]);
    /* poison the f32 copies lora.c must not read */
    for (int i = 0; i < r * I; i++)
        md->Bt[i] = 1e30f;
    md->bias_b = rnd(I);
    const peft_adapter *list[1] = {a};
    lora_set *set;
    lr_error e;
    ck_assert_int_eq(lora_set_create(&model, list, NULL, 1, &e, &set), 0);
    mix_ctx c = {1, {md}, {0.5}, {NULL}};
    int runs[][2] = {{0, 1}, {3, 7}, {1, 10}, {2, 39}, {0, NROWS}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++)
        run_case(set, 1, LR_MOD_GATE, W1[1], H, I, NULL, runs[i][0], runs[i][1], expect_mix, &c);
    lora_set_destroy(set);
    peft_free(a);
}
END_TEST

START_TEST(test_dora)
{
    peft_adapter *a = new_adapter();
    peft_module *md = add_mod(a, 0, LR_MOD_Q, H, H, 4, 1.25f);
    md->dora = malloc(sizeof(float) * H);
    double f[H];
    for (int o = 0; o < H; o++)
        f[o] = md->dora[o] = 0.5f + (float)o / 8.0f;
    const peft_adapter *list[1] = {a};
    lora_set *set;
    lr_error e;
    ck_assert_int_eq(lora_set_create(&model, list, NULL, 1, &e, &set), 0);
    mix_ctx c = {1, {md}, {1.25}, {f}};
    float bias[H];
    for (int i = 0; i < H; i++)
        bias[i] = frand();
    int runs[][2] = {{4, 5}, {0, 2}, {2, 9}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        run_case(set, 0, LR_MOD_Q, W0[0], H, H, bias, runs[i][0], runs[i][1], expect_mix, &c);
        run_case(set, 0, LR_MOD_Q, W0[0], H, H, NULL, runs[i][0], runs[i][1], expect_mix, &c);
    }
    md->bias_b = rnd(H);
    run_case(set, 0, LR_MOD_Q, W0[0], H, H, bias, 1, 8, expect_mix, &c);
    lora_set_destroy(set);
    peft_free(a);
}
END_TEST

START_TEST(test_mix)
{
    /* three adapters on layer 0 q: plain ×0.7, DoRA ×1, DoRA ×0.5 (factor recomputed) */
    peft_adapter *a1 = new_adapter(), *a2 = new_adapter(), *a3 = new_adapter();
    peft_module *m1 = add_mod(a1, 0, LR_MOD_Q, H, H, 2, 2.0f);
    add_mod(a1, 1, LR_MOD_GATE, H, I, 5, 1.0f);
    peft_module *m2 = add_mod(a2, 0, LR_MOD_Q, H, H, 3, 0.5f);
    peft_module *m3 = add_mod(a3, 0, LR_MOD_Q, H, H, 4, 1.5f);
    double f2[H], f3[H];
    m2->dora = malloc(sizeof(float) * H);
    m3->dora = malloc(sizeof(float) * H);
    m3->mag = malloc(sizeof(float) * H);
    for (int o = 0; o < H; o++) {
        f2[o] = m2->dora[o] = 1.0f + (float)o / 16.0f;
        m3->dora[o] = 99.0f; /* the loader's factor at scale 1: must NOT be used at scale 0.5 */
        m3->mag[o] = 0.8f + (float)o / 10.0f;
        double n2 = 0;
        for (int i = 0; i < H; i++) {
            double w = W0[0][o * H + i];
            for (int j = 0; j < 4; j++)
                w += 0.75 * (double)m3->B[o * 4 + j] * m3->A[j * H + i];
            n2 += w * w;
        }
        f3[o] = m3->mag[o] / sqrt(n2);
    }
    const peft_adapter *list[3] = {a1, a2, a3};
    float scales[3] = {0.7f, 1.0f, 0.5f};
    lora_set *set;
    lr_error e;
    ck_assert_int_eq(lora_set_create(&model, list, scales, 3, &e, &set), 0);
    ck_assert_int_eq(lora_set_max_rank(set), 5);
    ck_assert(lora_has_module(set, 1, LR_MOD_GATE));
    mix_ctx c = {3, {m1, m2, m3}, {2.0 * 0.7f, 0.5, 0.75}, {NULL, f2, f3}};
    float bias[H];
    for (int i = 0; i < H; i++)
        bias[i] = frand();
    int runs[][2] = {{4, 5}, {0, 2}, {2, 11}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++)
        run_case(set, 0, LR_MOD_Q, W0[0], H, H, bias, runs[i][0], runs[i][1], expect_mix, &c);
    /* the gate module has only a1's contribution */
    mix_ctx cg = {1, {a1->mods[1 * LR_MOD_COUNT + LR_MOD_GATE]}, {0.7f}, {NULL}};
    run_case(set, 1, LR_MOD_GATE, W1[1], H, I, NULL, 3, 12, expect_mix, &cg);
    lora_set_destroy(set);
    /* bad scales and empty mixes */
    float bad[1] = {NAN};
    ck_assert_int_eq(lora_set_create(&model, list, bad, 1, &e, &set), LR_EINVAL);
    ck_assert_int_eq(lora_set_create(&model, list, NULL, 0, &e, &set), LR_EINVAL);
    peft_free(a1);
    peft_free(a2);
    peft_free(a3);
}
END_TEST

START_TEST(test_embed)
{
    peft_adapter *a = new_adapter(), *b = new_adapter();
    peft_embed *ea = calloc(1, sizeof *ea), *eb = calloc(1, sizeof *eb);
    *ea = (peft_embed){3, V, H, 6, 2.0f, rnd(V * 3), rnd(H * 3), NULL, NULL};
    *eb = (peft_embed){2, V, H, 1, 0.5f, rnd(V * 2), rnd(H * 2), NULL, NULL};
    a->embed = ea;
    b->embed = eb;
    a->max_rank = 3;
    b->max_rank = 2;
    const peft_adapter *list[2] = {a, b};
    float scales[2] = {1.0f, 3.0f};
    lora_set *set;
    lr_error e;
    ck_assert_int_eq(lora_set_create(&model, list, scales, 2, &e, &set), 0);
    ck_assert(!lora_has_module(set, 0, LR_MOD_Q));
    for (int id = 0; id < V; id++) {
        float row[H];
        double want[H];
        for (int h = 0; h < H; h++)
            want[h] = row[h] = frand();
        lora_embed(set, id, row);
        const peft_embed *es[2] = {ea, eb};
        for (int k = 0; k < 2; k++)
            for (int h = 0; h < H; h++) {
                double acc = 0;
                for (int j = 0; j < es[k]->r; j++) /* B[h, j] · A[j, id] with At = Aᵀ */
                    acc += (double)es[k]->B[h * es[k]->r + j] * es[k]->At[id * es[k]->r + j];
                want[h] += scales[k] * es[k]->s * acc;
            }
        for (int h = 0; h < H; h++)
            ck_assert_double_eq_tol(row[h], want[h], 1e-5 * (1 + fabs(want[h])));
    }
    /* out-of-range ids are ignored, never read out of bounds */
    float row[H] = {0};
    lora_embed(set, V, row);
    lora_embed(set, -1, row);
    for (int h = 0; h < H; h++)
        ck_assert_float_eq(row[h], 0.0f);
    lora_set_destroy(set);
    peft_free(a);
    peft_free(b);
}
END_TEST

START_TEST(test_embed_dora)
{
    /* SPEC D.5 embedding: out = E[id] + Σ members; a DoRA member adds (f − 1)·E[id] + f·k·δ. */
    peft_adapter *a = new_adapter(), *b = new_adapter();
    peft_embed *ea = calloc(1, sizeof *ea), *eb = calloc(1, sizeof *eb);
    *ea = (peft_embed){3, V, H, 6, 2.0f, rnd(V * 3), rnd(H * 3), NULL, NULL};
    *eb = (peft_embed){2, V, H, 1, 0.5f, rnd(V * 2), rnd(H * 2), NULL, NULL};
    ea->dora = malloc(sizeof(float) * H);
    ea->mag = malloc(sizeof(float) * H);
    for (int h = 0; h < H; h++) {
        ea->dora[h] = 0.6f + (float)h / 10.0f;
        ea->mag[h] = 1.0f + (float)h / 7.0f;
    }
    a->embed = ea;
    b->embed = eb;
    a->max_rank = 3;
    b->max_rank = 2;
    for (int variant = 0; variant < 3; variant++) {
        /* 0: the DoRA adapter alone; 1: DoRA + plain ×3; 2: DoRA ×0.5 (factor from mag) + plain */
        const peft_adapter *list[2] = {a, b};
        float scales[2] = {variant == 2 ? 0.5f : 1.0f, 3.0f};
        int n = variant == 0 ? 1 : 2;
        double f[H];
        for (int h = 0; h < H; h++) {
            f[h] = ea->dora[h];
            if (variant == 2) {
                double n2 = 0;
                for (int v = 0; v < V; v++) {
                    double x = E[v * H + h];
                    for (int j = 0; j < 3; j++)
                        x += 1.0 * (double)ea->B[h * 3 + j] * ea->At[v * 3 + j];
                    n2 += x * x;
                }
                f[h] = ea->mag[h] / sqrt(n2);
            }
        }
        lora_set *set;
        lr_error e;
        ck_assert_int_eq(lora_set_create(&model, list, scales, n, &e, &set), 0);
        for (int id = 0; id < V; id++) {
            float row[H];
            double want[H];
            for (int h = 0; h < H; h++) {
                row[h] = E[id * H + h];
                double da = 0, db = 0;
                for (int j = 0; j < 3; j++)
                    da += (double)ea->B[h * 3 + j] * ea->At[id * 3 + j];
                for (int j = 0; j < 2; j++)
                    db += (double)eb->B[h * 2 + j] * eb->At[id * 2 + j];
                double base = E[id * H + h];
                want[h] = base + (f[h] - 1) * base + f[h] * scales[0] * 2.0 * da;
                if (n == 2) want[h] += scales[1] * 0.5 * db;
            }
            lora_embed(set, id, row);
            for (int h = 0; h < H; h++)
                ck_assert_msg(fabs(row[h] - want[h]) <= 1e-5 * (1 + fabs(want[h])),
                              "variant %d id %d dim %d: %g vs %g", variant, id, h, row[h], want[h]);
        }
        lora_set_destroy(set);
    }
    peft_free(a);
    peft_free(b);
}
END_TEST

START_TEST(test_ops)
{
    eng_delta_ops ops;
    lora_ops(&model, 16, &ops);
    ck_assert_ptr_nonnull(ops.apply);
    ck_assert_ptr_nonnull(ops.has_module);
    ck_assert_ptr_nonnull(ops.embed);
    ck_assert_int_eq(ops.scratch_per_token, 16 + 2 * I);
    lora_set_destroy(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lora");
    struct {
        const char *name;
        const TTest *t;
    } cases[] = {{"plain", test_plain}, {"bf16", test_bf16},   {"dora", test_dora},
                 {"mix", test_mix},     {"embed", test_embed}, {"embed_dora", test_embed_dora},
                 {"ops", test_ops}};
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
