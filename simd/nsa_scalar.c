/* Portable kernels: plain C with no ISA flags. The fallback on every
 * machine, and the path NSA_MAX_ISA=scalar forces so it stays tested.
 * "Vectors" of one float; register tiles of one row. */
#include "nsa_simd.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float vf;
#define VL 1

NSA_SIMD_INLINE vf vf_load(const float *p) { return *p; }
NSA_SIMD_INLINE void vf_store(float *p, vf v) { *p = v; }
NSA_SIMD_INLINE vf vf_set1(float x) { return x; }
NSA_SIMD_INLINE vf vf_add(vf a, vf b) { return a + b; }
NSA_SIMD_INLINE vf vf_sub(vf a, vf b) { return a - b; }
NSA_SIMD_INLINE vf vf_max(vf a, vf b) { return b > a ? b : a; } /* NaN in b: a */
/* u, with NaN where v is NaN */
NSA_SIMD_INLINE vf vf_nan_mark(vf u, vf v) { return v != v ? v : u; }
NSA_SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
NSA_SIMD_INLINE float vf_sum(vf v) { return v; }
NSA_SIMD_INLINE float vf_hmax(vf v) { return v; }

/* The exponential of nsa_simd.h, one element at a time. */
NSA_SIMD_INLINE vf vf_exp(float x)
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

/* ------------------------------------------------------------- gemm_nt */
#define NT_MR 1
NSA_SIMD_INLINE void nt_tile(const int MR, const int NR, int k, float alpha, const float *A,
                             size_t lda, const float *B, size_t ldb, float *C, size_t ldc)
{
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            C[(size_t)i * ldc + j] = alpha * dot(A + (size_t)i * lda, B + (size_t)j * ldb, k);
}

/* --------------------------------------------------------- gemm_nn_acc */
#define NN_MR 1
NSA_SIMD_INLINE void nn_cols(const int MR, int n, int k, const float *A, size_t lda,
                             const float *B, size_t ldb, float *C, size_t ldc)
{
    for (int i = 0; i < MR; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < k; j++) {
            const float a = A[(size_t)i * lda + j];
            const float *b = B + (size_t)j * ldb;
            for (int e = 0; e < n; e++)
                c[e] += a * b[e];
        }
    }
}

#include "nsa_simd_template.h"

const nsa_simd_kernels nsa_simd_scalar = {"scalar", gemm_nt_tiles, gemm_nn_tiles, exp_sum, vexp,
                                          vmax, softmax_step,     VL,            fma_loop};
