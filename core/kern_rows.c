/* kern_rows.c — the row-wise kernels of the forward pass: RMSNorm, bias, residual add, axpy,
 * activations, RoPE, softmax and a vector e^x (declared in kernels.h with the matmul they
 * surround).
 *
 * Split from kernels.c so the matmul and the element-wise/attention work can be tuned apart.
 * Every kernel has a naive double-precision twin in tests/unit/check_kernels.c or
 * tests/unit/check_attn.c; the vector variants use __attribute__((target)) and are picked by
 * kern_get_isa() at run time. Vector e^x (kern_simd.h) is within a couple of ulp of expf, so the
 * activations and softmax move by a few ulp against the scalar path, never more. Tails shorter
 * than a vector run through the scalar code of the same kernel, with the same operation order.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#include "kern_simd.h"

#define TGT_AVX2 KS_TGT_AVX2
#define TGT_AVX512 KS_TGT_AVX512

/* ---- RMSNorm ---- */

/* The statistic is accumulated in double: it is cheap and lands closer to the float64 reference
 * than HF's own fp32 reduction, whose summation order we cannot copy. The vector variants widen
 * 8 floats at a time and accumulate the squares in two double vectors; x² of a float is exact in
 * double, so only the order of the additions differs from the scalar loop. */
static void rmsnorm_scale(float *o, const float *xr, const float *w, int n, double ss, float eps)
{
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int j = 0; j < n; j++)
        o[j] = w[j] * (xr[j] * inv);
}

TGT_AVX512 static void rmsnorm_avx512(float *out, const float *x, const float *w, int T, int n,
                                      float eps)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * (size_t)n;
        float *o = out + (size_t)t * (size_t)n;
        __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
        int j = 0;
        for (; j + 16 <= n; j += 16) {
            __m512 v = _mm512_loadu_ps(xr + j);
            __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
            a0 = _mm512_fmadd_pd(lo, lo, a0);
            a1 = _mm512_fmadd_pd(hi, hi, a1);
        }
        double ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
        for (; j < n; j++)
            ss += (double)xr[j] * xr[j];
        float inv = 1.0f / sqrtf((float)(ss / n) + eps);
        __m512 iv = _mm512_set1_ps(inv);
        for (j = 0; j + 16 <= n; j += 16)
            _mm512_storeu_ps(o + j, _mm512_mul_ps(_mm512_loadu_ps(w + j),
                                                  _mm512_mul_ps(_mm512_loadu_ps(xr + j), iv)));
        for (; j < n; j++)
            o[j] = w[j] * (xr[j] * inv);
    }
}

TGT_AVX2 static void rmsnorm_avx2(float *out, const float *x, const float *w, int T, int n,
                                  float eps)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * (size_t)n;
        float *o = out + (size_t)t * (size_t)n;
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        int j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256 v = _mm256_loadu_ps(xr + j);
            __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
            a0 = _mm256_fmadd_pd(lo, lo, a0);
            a1 = _mm256_fmadd_pd(hi, hi, a1);
        }
        double lanes[4];
        _mm256_storeu_pd(lanes, _mm256_add_pd(a0, a1));
        double ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        for (; j < n; j++)
            ss += (double)xr[j] * xr[j];
        float inv = 1.0f / sqrtf((float)(ss / n) + eps);
        __m256 iv = _mm256_set1_ps(inv);
        for (j = 0; j + 8 <= n; j += 8)
            _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(w + j),
                                                  _mm256_mul_ps(_mm256_loadu_ps(xr + j), iv)));
        for (; j < n; j++)
            o[j] = w[j] * (xr[j] * inv);
    }
}

void kern_rmsnorm(float *out, const float *x, const float *w, int T, int n, float eps)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        rmsnorm_avx512(out, x, w, T, n, eps);
        return;
    case KERN_ISA_AVX2:
        rmsnorm_avx2(out, x, w, T, n, eps);
        return;
    default:
        break;
    }
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * (size_t)n;
        double ss = 0;
        for (int j = 0; j < n; j++)
            ss += (double)xr[j] * xr[j];
        rmsnorm_scale(out + (size_t)t * (size_t)n, xr, w, n, ss, eps);
    }
}

/* ---- bias, residual add, axpy ---- */

TGT_AVX512 static void add_avx512(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] += x[i];
}

TGT_AVX2 static void add_avx2(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] += x[i];
}

void kern_add(float *y, const float *x, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        add_avx512(y, x, n);
        return;
    case KERN_ISA_AVX2:
        add_avx2(y, x, n);
        return;
    default:
        for (int64_t i = 0; i < n; i++)
            y[i] += x[i];
    }
}

void kern_add_bias(float *y, int ldy, const float *b, int T, int n)
{
    for (int t = 0; t < T; t++)
        kern_add(y + (size_t)t * (size_t)ldy, b, n);
}

TGT_AVX512 static void axpy_avx512(float *y, float a, const float *x, int64_t n)
{
    __m512 av = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

TGT_AVX2 static void axpy_avx2(float *y, float a, const float *x, int64_t n)
{
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

void kern_axpy(float *y, float a, const float *x, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        axpy_avx512(y, a, x, n);
        return;
    case KERN_ISA_AVX2:
        axpy_avx2(y, a, x, n);
        return;
    default:
        for (int64_t i = 0; i < n; i++)
            y[i] += a * x[i];
    }
}

/* ---- e^x ---- */

TGT_AVX512 static void exp_avx512(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, ks_exp16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, ks_exp16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

TGT_AVX2 static void exp_avx2(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, ks_exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float buf[8] = {0};
        memcpy(buf, x + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(buf, ks_exp8(_mm256_loadu_ps(buf)));
        memcpy(y + i, buf, sizeof(float) * (size_t)(n - i));
    }
}

void kern_exp(float *y, const float *x, int64_t n)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        exp_avx512(y, x, n);
        return;
    case KERN_ISA_AVX2:
        exp_avx2(y, x, n);
        return;
    default:
        for (int64_t i = 0; i < n; i++)
            y[i] = expf(x[i]);
    }
}

/* ---- activations ---- */

static float act_apply(float z, lr_act act)
{
    switch (act) {
    case LR_ACT_SILU:
        return z / (1.0f + expf(-z));
    case LR_ACT_GELU:
        return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f));
    case LR_ACT_GELU_TANH:
        /* 0.5·z·(1 + tanh(u)) = z·σ(2u) = z / (1 + e^(−2u)): no cancellation near u = 0. */
        return z / (1.0f + expf(-1.59576912160573072f * (z + 0.044715f * z * z * z)));
    case LR_ACT_RELU:
        return z > 0 ? z : 0;
    }
    return z;
}

static void act_mul_scalar(float *g, const float *u, int64_t n, lr_act act)
{
    if (u) {
        for (int64_t i = 0; i < n; i++)
            g[i] = act_apply(g[i], act) * u[i];
    } else {
        for (int64_t i = 0; i < n; i++)
            g[i] = act_apply(g[i], act);
    }
}

/* SiLU and tanh-GELU are both z·σ(a·z′) = z / (1 + e^(−a·z′)), z′ = z (SiLU) or
 * z + 0.044715·z³ with a = 2·sqrt(2/π) (tanh-GELU); e^(−…) overflowing to +inf gives −0 like the
 * scalar expression. Exact GELU (erf) stays scalar. */
TGT_AVX512 static void act_mul_avx512(float *g, const float *u, int64_t n, lr_act act)
{
    int64_t i = 0;
    const __m512 one = _mm512_set1_ps(1.0f), c3 = _mm512_set1_ps(0.044715f);
    const __m512 na = _mm512_set1_ps(act == LR_ACT_SILU ? -1.0f : -1.59576912160573072f);
    for (; i + 16 <= n; i += 16) {
        __m512 z = _mm512_loadu_ps(g + i), zz = z;
        if (act == LR_ACT_GELU_TANH) zz = _mm512_fmadd_ps(_mm512_mul_ps(c3, z), _mm512_mul_ps(z, z), z);
        __m512 y = _mm512_div_ps(z, _mm512_add_ps(one, ks_exp16(_mm512_mul_ps(na, zz))));
        if (u) y = _mm512_mul_ps(y, _mm512_loadu_ps(u + i));
        _mm512_storeu_ps(g + i, y);
    }
    act_mul_scalar(g + i, u ? u + i : NULL, n - i, act);
}

TGT_AVX2 static void act_mul_avx2(float *g, const float *u, int64_t n, lr_act act)
{
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), c3 = _mm256_set1_ps(0.044715f);
    const __m256 na = _mm256_set1_ps(act == LR_ACT_SILU ? -1.0f : -1.59576912160573072f);
    for (; i + 8 <= n; i += 8) {
        __m256 z = _mm256_loadu_ps(g + i), zz = z;
        if (act == LR_ACT_GELU_TANH) zz = _mm256_fmadd_ps(_mm256_mul_ps(c3, z), _mm256_mul_ps(z, z), z);
        __m256 y = _mm256_div_ps(z, _mm256_add_ps(one, ks_exp8(_mm256_mul_ps(na, zz))));
        if (u) y = _mm256_mul_ps(y, _mm256_loadu_ps(u + i));
        _mm256_storeu_ps(g + i, y);
    }
    act_mul_scalar(g + i, u ? u + i : NULL, n - i, act);
}

void kern_act_mul(float *g, const float *u, int64_t n, lr_act act)
{
    kern_isa isa = kern_get_isa();
    if (act == LR_ACT_SILU || act == LR_ACT_GELU_TANH) {
        if (isa == KERN_ISA_AVX512) {
            act_mul_avx512(g, u, n, act);
            return;
        }
        if (isa == KERN_ISA_AVX2) {
            act_mul_avx2(g, u, n, act);
            return;
        }
    }
    act_mul_scalar(g, u, n, act);
}

/* ---- RoPE ---- */

/* The vector variants keep the scalar order of operations (two products, then the difference or
 * sum), so every ISA gives the same bits. */
TGT_AVX512 static void rope_avx512(float *v, int n_heads, int hd, const float *cos,
                                   const float *sin)
{
    int half = hd / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * (size_t)hd;
        int k = 0;
        for (; k + 16 <= half; k += 16) {
            __m512 a = _mm512_loadu_ps(x + k), b = _mm512_loadu_ps(x + k + half);
            __m512 c = _mm512_loadu_ps(cos + k), s = _mm512_loadu_ps(sin + k);
            _mm512_storeu_ps(x + k, _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
            _mm512_storeu_ps(x + k + half, _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s)));
        }
        for (; k < half; k++) {
            float a = x[k], b = x[k + half];
            x[k] = a * cos[k] - b * sin[k];
            x[k + half] = b * cos[k] + a * sin[k];
        }
    }
}

TGT_AVX2 static void rope_avx2(float *v, int n_heads, int hd, const float *cos, const float *sin)
{
    int half = hd / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * (size_t)hd;
        int k = 0;
        for (; k + 8 <= half; k += 8) {
            __m256 a = _mm256_loadu_ps(x + k), b = _mm256_loadu_ps(x + k + half);
            __m256 c = _mm256_loadu_ps(cos + k), s = _mm256_loadu_ps(sin + k);
            _mm256_storeu_ps(x + k, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(x + k + half, _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s)));
        }
        for (; k < half; k++) {
            float a = x[k], b = x[k + half];
            x[k] = a * cos[k] - b * sin[k];
            x[k + half] = b * cos[k] + a * sin[k];
        }
    }
}

void kern_rope(float *v, int n_heads, int hd, const float *cos, const float *sin)
{
    switch (kern_get_isa()) {
    case KERN_ISA_AVX512:
        rope_avx512(v, n_heads, hd, cos, sin);
        return;
    case KERN_ISA_AVX2:
        rope_avx2(v, n_heads, hd, cos, sin);
        return;
    default:
        break;
    }
    int half = hd / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * (size_t)hd;
        for (int k = 0; k < half; k++) {
            float a = x[k], b = x[k + half];
            x[k] = a * cos[k] - b * sin[k];
            x[k + half] = b * cos[k] + a * sin[k];
        }
    }
}

/* ---- softmax ---- */

/* Three passes: max, e^(x − max) with the sum (per-lane float partial sums, added in double at
 * the end), scale by 1/sum. */
TGT_AVX512 static void softmax_avx512(float *x, int n)
{
    int i = 0;
    __m512 mv = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16)
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
    float mx = _mm512_reduce_max_ps(mv);
    for (; i < n; i++)
        if (x[i] > mx) mx = x[i];
    __m512 m = _mm512_set1_ps(mx), sv = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = ks_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        sv = _mm512_add_ps(sv, e);
    }
    double sum = _mm512_reduce_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(sv))) +
                 _mm512_reduce_add_pd(_mm512_cvtps_pd(
                     _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sv), 1))));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        __m512 e = ks_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), m));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(x + i, k, e);
        sum += _mm512_reduce_add_ps(e);
    }
    __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
    }
}

TGT_AVX2 static void softmax_avx2(float *x, int n)
{
    int i = 0;
    float mx = x[0];
    if (n >= 8) {
        __m256 mv = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8)
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
        float lanes[8];
        _mm256_storeu_ps(lanes, mv);
        for (int k = 0; k < 8; k++)
            if (lanes[k] > mx) mx = lanes[k];
    }
    for (; i < n; i++)
        if (x[i] > mx) mx = x[i];
    __m256 m = _mm256_set1_ps(mx), sv = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = ks_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        sv = _mm256_add_ps(sv, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, sv);
    double sum = 0;
    for (int k = 0; k < 8; k++)
        sum += lanes[k];
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++)
        x[i] *= (float)(1.0 / sum);
}

void kern_softmax(float *x, int n)
{
    if (kern_get_isa() == KERN_ISA_AVX512) {
        softmax_avx512(x, n);
        return;
    }
    if (kern_get_isa() == KERN_ISA_AVX2) {
        softmax_avx2(x, n);
        return;
    }
    float mx = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}
