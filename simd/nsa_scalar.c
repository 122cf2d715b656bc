/* Portable kernels: plain C with no ISA flags. The fallback on every
 * machine, and the path NSA_MAX_ISA=scalar forces so it stays tested. */
#include "nsa_simd.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static float dot(const float *a, const float *b, int k)
{
    /* Four partial sums: shorter dependency chains, same float semantics
     * on every compiler (no reassociation flags needed). */
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int c = 0;
    for (; c + 4 <= k; c += 4) {
        s0 += a[c] * b[c];
        s1 += a[c + 1] * b[c + 1];
        s2 += a[c + 2] * b[c + 2];
        s3 += a[c + 3] * b[c + 3];
    }
    for (; c < k; c++)
        s0 += a[c] * b[c];
    return (s0 + s1) + (s2 + s3);
}

static void gemm_nt(int m, int n, int k, float alpha, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            C[(size_t)i * ldc + j] = alpha * dot(A + (size_t)i * lda, B + (size_t)j * ldb, k);
}

static void gemm_nn_acc(int m, int n, int k, const float *A, size_t lda, const float *B,
                        size_t ldb, float *C, size_t ldc)
{
    for (int i = 0; i < m; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < k; j++) {
            const float a = A[(size_t)i * lda + j];
            const float *b = B + (size_t)j * ldb;
            for (int e = 0; e < n; e++)
                c[e] += a * b[e];
        }
    }
}

/* The exponential of nsa_simd.h, one element at a time. */
static float exp1(float x)
{
    if (x != x)
        return x;
    if (x < NSA_EXP_LO)
        return 0.0f;
    if (x > NSA_EXP_HI)
        x = NSA_EXP_HI;
    const float n = floorf(x * NSA_EXP_LOG2E + 0.5f);
    float r = x - n * NSA_EXP_LN2_HI;
    r = r - n * NSA_EXP_LN2_LO;
    float p = NSA_EXP_C7;
    p = p * r + NSA_EXP_C6;
    p = p * r + NSA_EXP_C5;
    p = p * r + NSA_EXP_C4;
    p = p * r + NSA_EXP_C3;
    p = p * r + NSA_EXP_C2;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static float exp_sum(float *x, int n, float sub)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += (x[i] = exp1(x[i] - sub));
    return s;
}

static void vexp(const float *x, float *y, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = exp1(x[i]);
}

static float vmax(const float *x, int n)
{
    float m = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > m)
            m = x[i];
    return m;
}

static float fma_loop(long n)
{
    float a[NSA_FMA_CHAINS];
    for (int c = 0; c < NSA_FMA_CHAINS; c++)
        a[c] = 1.0f + 0.01f * c;
    for (long i = 0; i < n; i++)
        for (int c = 0; c < NSA_FMA_CHAINS; c++)
            a[c] = a[c] * 0.999999f + 1e-7f;
    float s = 0.0f;
    for (int c = 0; c < NSA_FMA_CHAINS; c++)
        s += a[c];
    return s;
}

const nsa_simd_kernels nsa_simd_scalar = {"scalar", gemm_nt, gemm_nn_acc, exp_sum, vexp,
                                          vmax,     1,       fma_loop};
