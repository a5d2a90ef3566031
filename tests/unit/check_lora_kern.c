/* check_lora_kern.c — adapters/lora_kern (LoRA shrink / expand) against naive double loops.
 *
 * Every ISA the CPU has (scalar, AVX2, AVX-512, forced with kern_set_isa), every run length T
 * 1..20, every rank 1..64, widths that are not multiples of the vector size, padded row strides
 * (the padding must stay untouched) and exactly-sized buffers (so ASan sees any stray access), for
 * f32 and bf16 weights. The reference sums in double (over the widened bf16 values); the tolerance
 * is a few float roundings of the sum of |terms|.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lora_kern.h"

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rnd(size_t n)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

/* n random bf16 values (the top half of random floats in [-1, 1]) and their f32 widening. */
static uint16_t *rnd_bf16(size_t n, float **wide)
{
    uint16_t *h = malloc(sizeof(uint16_t) * (n ? n : 1));
    *wide = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        float f = frand();
        uint32_t b;
        memcpy(&b, &f, 4);
        h[i] = (uint16_t)(b >> 16);
        b = (uint32_t)h[i] << 16;
        memcpy(&(*wide)[i], &b, 4);
    }
    return h;
}

static const kern_isa isas[] = {KERN_ISA_SCALAR, KERN_ISA_AVX2, KERN_ISA_AVX512};

/* |got − want| within (n + 4) float roundings (1.2e-7 each) of Σ|terms| (n terms summed), or a floor. */
static int close_enough(double got, double want, double mag, int n)
{
    return fabs(got - want) <= 1.2e-7 * (n + 4) * mag + 1e-30;
}

static void check_shrink(int T, int r, int in, int ldx, int ldt, int bf)
{
    float *x = rnd((size_t)(T - 1) * ldx + in);
    float *A;
    uint16_t *A16 = NULL;
    if (bf)
        A16 = rnd_bf16((size_t)r * in, &A);
    else
        A = rnd((size_t)r * in);
    size_t tn = (size_t)(T - 1) * ldt + r;
    float *tmp = malloc(sizeof(float) * tn);
    for (size_t i = 0; i < tn; i++)
        tmp[i] = 777.0f;
    if (bf)
        lk_shrink_bf16(x, ldx, T, A16, r, in, tmp, ldt);
    else
        lk_shrink(x, ldx, T, A, r, in, tmp, ldt);
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < r; j++) {
            double want = 0, mag = 0;
            for (int i = 0; i < in; i++) {
                double p = (double)x[(size_t)t * ldx + i] * A[(size_t)j * in + i];
                want += p;
                mag += fabs(p);
            }
            double got = tmp[(size_t)t * ldt + j];
            ck_assert_msg(close_enough(got, want, mag, in),
                          "shrink%s %s T=%d r=%d in=%d: tmp[%d,%d] = %.9g, want %.9g",
                          bf ? "_bf16" : "", kern_isa_name(kern_get_isa()), T, r, in, t, j, got,
                          want);
        }
        for (int j = r; j < ldt && t < T - 1; j++)
            ck_assert_msg(tmp[(size_t)t * ldt + j] == 777.0f, "shrink wrote padding");
    }
    free(x);
    free(A);
    free(A16);
    free(tmp);
}

static void check_expand(int T, int r, int out, int ldt, int ldy, float k, int with_bias,
                         int accumulate, int bf)
{
    float *tmp = rnd((size_t)(T - 1) * ldt + r);
    float *Bt;
    uint16_t *Bt16 = NULL;
    if (bf)
        Bt16 = rnd_bf16((size_t)r * out, &Bt);
    else
        Bt = rnd((size_t)r * out);
    float *bias = with_bias ? rnd((size_t)out) : NULL;
    size_t yn = (size_t)(T - 1) * ldy + out;
    float *y = rnd(yn);
    float *y0 = malloc(sizeof(float) * yn);
    memcpy(y0, y, sizeof(float) * yn);
    if (bf)
        lk_expand_bf16(tmp, ldt, T, Bt16, r, out, k, bias, y, ldy, accumulate);
    else
        lk_expand(tmp, ldt, T, Bt, r, out, k, bias, y, ldy, accumulate);
    for (int t = 0; t < T; t++) {
        for (int q = 0; q < out; q++) {
            double s = 0, mag = 0;
            for (int j = 0; j < r; j++) {
                double p = (double)tmp[(size_t)t * ldt + j] * Bt[(size_t)j * out + q];
                s += p;
                mag += fabs(p);
            }
            double b = bias ? bias[q] : 0;
            double prev = accumulate ? y0[(size_t)t * ldy + q] : 0;
            double want = prev + (double)k * (s + b);
            double m = fabs(prev) + fabs(k) * (mag + fabs(b));
            double got = y[(size_t)t * ldy + q];
            ck_assert_msg(close_enough(got, want, m, r + 2),
                          "expand%s %s T=%d r=%d out=%d acc=%d bias=%d: y[%d,%d] = %.9g, "
                          "want %.9g",
                          bf ? "_bf16" : "", kern_isa_name(kern_get_isa()), T, r, out, accumulate,
                          with_bias, t, q, got, want);
        }
        for (int q = out; q < ldy && t < T - 1; q++)
            ck_assert_msg(y[(size_t)t * ldy + q] == y0[(size_t)t * ldy + q],
                          "expand wrote padding");
    }
    free(tmp);
    free(Bt);
    free(Bt16);
    free(bias);
    free(y);
    free(y0);
}

START_TEST(test_shrink_all)
{
    static const int ins[] = {1, 7, 16, 45, 96, 131};
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (int T = 1; T <= 20; T++)
            for (int r = 1; r <= 64; r++) {
                int in = ins[(T + r) % 6];
                check_shrink(T, r, in, in + (T % 3) * 5, r + (r % 2) * 3, 0);
                check_shrink(T, r, ins[(T + 2 * r) % 6], ins[(T + 2 * r) % 6] + T % 2, r, 1);
            }
        /* every width 1..40 at a few (T, r) */
        for (int in = 1; in <= 40; in++)
            check_shrink(1 + in % 6, 1 + in % 9, in, in, 9, in % 2);
    }
    kern_set_isa(kern_cpu_isa());
}
END_TEST

START_TEST(test_expand_all)
{
    static const int outs[] = {1, 13, 37, 64, 100, 129};
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        for (int T = 1; T <= 20; T++)
            for (int r = 1; r <= 64; r++) {
                int out = outs[(T * 7 + r) % 6];
                int v = (T + r) % 4;
                check_expand(T, r, out, r + (T % 2) * 2, out + (r % 3) * 7, v == 3 ? -0.75f : 1.5f,
                             v & 1, v >> 1 ? 1 : v == 0, 0);
                check_expand(T, r, outs[(T * 5 + r) % 6], r, outs[(T * 5 + r) % 6] + T % 3, 0.5f,
                             v & 1, v != 1, 1);
            }
        for (int out = 1; out <= 80; out++) {
            check_expand(1 + out % 5, 16, out, 16, out + 3, 2.0f, out % 2, 1, 0);
            check_expand(1 + out % 5, 7, out, 7, out, 0.5f, 0, 0, 0);
            check_expand(1 + out % 5, 16, out, 16, out + 1, 2.0f, out % 2, 1, 1);
        }
    }
    kern_set_isa(kern_cpu_isa());
}
END_TEST

/* A row's result must not depend on the rows around it (nor on T): the engine relies on this for
 * batch-invariant decoding. Row t of a T-row run is compared bit for bit with the same row run
 * alone (a lone row takes the 16- and 8-rank passes of A, rows in a run the 4 × 4 tiles). */
static void row_invariant(int r)
{
    int in = 77, out = 91, T = 11;
    float *x = rnd((size_t)T * in), *A = rnd((size_t)r * in), *Bt = rnd((size_t)r * out);
    float *bias = rnd(out);
    float *tmp = malloc(sizeof(float) * T * r), *one = malloc(sizeof(float) * r);
    float *y = rnd((size_t)T * out), *y1 = malloc(sizeof(float) * out);
    float *ys = malloc(sizeof(float) * T * out);
    memcpy(ys, y, sizeof(float) * T * out);
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        if (kern_set_isa(isas[k]) != isas[k]) continue;
        memcpy(y, ys, sizeof(float) * T * out);
        lk_shrink(x, in, T, A, r, in, tmp, r);
        lk_expand(tmp, r, T, Bt, r, out, 0.5f, bias, y, out, 1);
        for (int t = 0; t < T; t++) {
            lk_shrink(x + (size_t)t * in, in, 1, A, r, in, one, r);
            ck_assert_mem_eq(one, tmp + (size_t)t * r, sizeof(float) * r);
            memcpy(y1, ys + (size_t)t * out, sizeof(float) * out);
            lk_expand(one, r, 1, Bt, r, out, 0.5f, bias, y1, out, 1);
            ck_assert_mem_eq(y1, y + (size_t)t * out, sizeof(float) * out);
        }
    }
    kern_set_isa(kern_cpu_isa());
    free(x);
    free(A);
    free(Bt);
    free(bias);
    free(tmp);
    free(one);
    free(y);
    free(y1);
    free(ys);
}

START_TEST(test_row_invariant)
{
    static const int ranks[] = {13, 16, 24, 40};
    for (size_t i = 0; i < sizeof ranks / sizeof ranks[0]; i++)
        row_invariant(ranks[i]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lora_kern");
    TCase *tc = tcase_create("shrink");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_shrink_all);
    suite_add_tcase(s, tc);
    tc = tcase_create("expand");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_expand_all);
    suite_add_tcase(s, tc);
    tc = tcase_create("invariance");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_row_invariant);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
