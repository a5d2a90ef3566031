/* kern_rows.c — the row-wise kernels of the forward pass: RMSNorm, bias, residual add, axpy,
 * activations, RoPE and softmax (declared in kernels.h with the matmul they surround).
 *
 * Split from kernels.c so the matmul and the element-wise/attention work can be tuned apart.
 * Every kernel has a naive double-precision twin in tests/unit/check_kernels.c; the vector
 * variants use __attribute__((target)) and are picked by kern_get_isa() at run time.
 */
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TGT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

void kern_rmsnorm(float *out, const float *x, const float *w, int T, int n, float eps)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * (size_t)n;
        float *o = out + (size_t)t * (size_t)n;
        /* The statistic is accumulated in double: it is cheap and lands closer to the float64
         * reference than HF's own fp32 reduction, whose summation order we cannot copy. */
        double ss = 0;
        for (int j = 0; j < n; j++)
            ss += (double)xr[j] * xr[j];
        float inv = 1.0f / sqrtf((float)(ss / n) + eps);
        for (int j = 0; j < n; j++)
            o[j] = w[j] * (xr[j] * inv);
    }
}

void kern_add_bias(float *y, int ldy, const float *b, int T, int n)
{
    for (int t = 0; t < T; t++) {
        float *r = y + (size_t)t * (size_t)ldy;
        for (int j = 0; j < n; j++)
            r[j] += b[j];
    }
}

void kern_add(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
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

static float act_apply(float z, lr_act act)
{
    switch (act) {
    case LR_ACT_SILU:
        return z / (1.0f + expf(-z));
    case LR_ACT_GELU:
        return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f));
    case LR_ACT_GELU_TANH:
        return 0.5f * z * (1.0f + tanhf(0.79788456080286536f * (z + 0.044715f * z * z * z)));
    case LR_ACT_RELU:
        return z > 0 ? z : 0;
    }
    return z;
}

void kern_act_mul(float *g, const float *u, int64_t n, lr_act act)
{
    if (u) {
        for (int64_t i = 0; i < n; i++)
            g[i] = act_apply(g[i], act) * u[i];
    } else {
        for (int64_t i = 0; i < n; i++)
            g[i] = act_apply(g[i], act);
    }
}

void kern_rope(float *v, int n_heads, int hd, const float *cos, const float *sin)
{
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

void kern_softmax(float *x, int n)
{
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
