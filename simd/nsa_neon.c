/* NEON kernels for aarch64 (4 floats a vector; NEON is baseline there, so
 * no flags). 32 vector registers allow 4x4 dot-product tiles in gemm_nt
 * and 4 rows x 4 vectors in gemm_nn_acc. Tails run as scalar code. */
#include "nsa_simd.h"

#include <arm_neon.h>
#include <math.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------- gemm_nt */
INLINE void nt_tile(const int MR, const int NR, int k, float alpha, const float *A,
                    size_t lda, const float *B, size_t ldb, float *C, size_t ldc)
{
    float32x4_t acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            acc[i][j] = vdupq_n_f32(0.0f);
    int c = 0;
    for (; c + 4 <= k; c += 4) {
        float32x4_t a[4];
        for (int i = 0; i < MR; i++)
            a[i] = vld1q_f32(A + (size_t)i * lda + c);
        for (int j = 0; j < NR; j++) {
            const float32x4_t b = vld1q_f32(B + (size_t)j * ldb + c);
            for (int i = 0; i < MR; i++)
                acc[i][j] = vfmaq_f32(acc[i][j], a[i], b);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float s = vaddvq_f32(acc[i][j]);
            for (int e = c; e < k; e++)
                s += A[(size_t)i * lda + e] * B[(size_t)j * ldb + e];
            C[(size_t)i * ldc + j] = alpha * s;
        }
}

#define NT_ROWS(MR)                                                                        \
    do {                                                                                   \
        int j = 0;                                                                         \
        for (; j + 4 <= n; j += 4)                                                         \
            nt_tile(MR, 4, k, alpha, a, lda, B + (size_t)j * ldb, ldb, c + j, ldc);        \
        switch (n - j) {                                                                   \
        case 3: nt_tile(MR, 3, k, alpha, a, lda, B + (size_t)j * ldb, ldb, c + j, ldc); break; \
        case 2: nt_tile(MR, 2, k, alpha, a, lda, B + (size_t)j * ldb, ldb, c + j, ldc); break; \
        case 1: nt_tile(MR, 1, k, alpha, a, lda, B + (size_t)j * ldb, ldb, c + j, ldc); break; \
        default: break;                                                                    \
        }                                                                                  \
    } while (0)

static void gemm_nt(int m, int n, int k, float alpha, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc)
{
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a = A + (size_t)i * lda;
        float *c = C + (size_t)i * ldc;
        NT_ROWS(4);
    }
    const float *a = A + (size_t)i * lda;
    float *c = C + (size_t)i * ldc;
    switch (m - i) {
    case 3: NT_ROWS(3); break;
    case 2: NT_ROWS(2); break;
    case 1: NT_ROWS(1); break;
    default: break;
    }
}

/* --------------------------------------------------------- gemm_nn_acc */
INLINE void nn_tile(const int MR, const int NV, int k, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc)
{
    float32x4_t acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = vld1q_f32(C + (size_t)i * ldc + 4 * v);
    for (int j = 0; j < k; j++) {
        float32x4_t b[4];
        for (int v = 0; v < NV; v++)
            b[v] = vld1q_f32(B + (size_t)j * ldb + 4 * v);
        for (int i = 0; i < MR; i++) {
            const float32x4_t a = vdupq_n_f32(A[(size_t)i * lda + j]);
            for (int v = 0; v < NV; v++)
                acc[i][v] = vfmaq_f32(acc[i][v], a, b[v]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            vst1q_f32(C + (size_t)i * ldc + 4 * v, acc[i][v]);
}

static void nn_rows(const int MR, int n, int k, const float *a, size_t lda, const float *B,
                    size_t ldb, float *cc, size_t ldc)
{
    int c = 0;
    for (; c + 16 <= n; c += 16)
        switch (MR) {
        case 4: nn_tile(4, 4, k, a, lda, B + c, ldb, cc + c, ldc); break;
        case 3: nn_tile(3, 4, k, a, lda, B + c, ldb, cc + c, ldc); break;
        case 2: nn_tile(2, 4, k, a, lda, B + c, ldb, cc + c, ldc); break;
        default: nn_tile(1, 4, k, a, lda, B + c, ldb, cc + c, ldc); break;
        }
    for (; c + 4 <= n; c += 4)
        switch (MR) {
        case 4: nn_tile(4, 1, k, a, lda, B + c, ldb, cc + c, ldc); break;
        case 3: nn_tile(3, 1, k, a, lda, B + c, ldb, cc + c, ldc); break;
        case 2: nn_tile(2, 1, k, a, lda, B + c, ldb, cc + c, ldc); break;
        default: nn_tile(1, 1, k, a, lda, B + c, ldb, cc + c, ldc); break;
        }
    for (; c < n; c++)
        for (int i = 0; i < MR; i++) {
            float s = cc[(size_t)i * ldc + c];
            for (int j = 0; j < k; j++)
                s += a[(size_t)i * lda + j] * B[(size_t)j * ldb + c];
            cc[(size_t)i * ldc + c] = s;
        }
}

static void gemm_nn_acc(int m, int n, int k, const float *A, size_t lda, const float *B,
                        size_t ldb, float *C, size_t ldc)
{
    int i = 0;
    for (; i + 4 <= m; i += 4)
        nn_rows(4, n, k, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc);
    if (i < m)
        nn_rows(m - i, n, k, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc);
}

/* ------------------------------------------------------------------ exp */
INLINE float32x4_t exp4(float32x4_t x)
{
    const uint32x4_t tiny = vcltq_f32(x, vdupq_n_f32(NSA_EXP_LO));
    const uint32x4_t isnan = vmvnq_u32(vceqq_f32(x, x));
    x = vminq_f32(x, vdupq_n_f32(NSA_EXP_HI));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(NSA_EXP_LOG2E)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(NSA_EXP_LN2_HI));
    r = vfmsq_f32(r, n, vdupq_n_f32(NSA_EXP_LN2_LO));
    float32x4_t p = vdupq_n_f32(NSA_EXP_C7);
    p = vfmaq_f32(vdupq_n_f32(NSA_EXP_C6), p, r);
    p = vfmaq_f32(vdupq_n_f32(NSA_EXP_C5), p, r);
    p = vfmaq_f32(vdupq_n_f32(NSA_EXP_C4), p, r);
    p = vfmaq_f32(vdupq_n_f32(NSA_EXP_C3), p, r);
    p = vfmaq_f32(vdupq_n_f32(NSA_EXP_C2), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
    y = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), tiny));
    return vbslq_f32(isnan, x, y); /* vminq already made NaN lanes NaN */
}

static float exp_scalar(float x)
{
    float in[4] = {x, 0.0f, 0.0f, 0.0f}, out[4];
    vst1q_f32(out, exp4(vld1q_f32(in)));
    return out[0];
}

static float exp_sum(float *x, int n, float sub)
{
    const float32x4_t vs = vdupq_n_f32(sub);
    float32x4_t acc = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t y = exp4(vsubq_f32(vld1q_f32(x + i), vs));
        vst1q_f32(x + i, y);
        acc = vaddq_f32(acc, y);
    }
    float s = vaddvq_f32(acc);
    for (; i < n; i++)
        s += (x[i] = exp_scalar(x[i] - sub));
    return s;
}

static void vexp(const float *x, float *y, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, exp4(vld1q_f32(x + i)));
    for (; i < n; i++)
        y[i] = exp_scalar(x[i]);
}

static float vmax(const float *x, int n)
{
    float32x4_t m = vdupq_n_f32(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4)
        m = vmaxq_f32(m, vld1q_f32(x + i));
    float r = vmaxvq_f32(m);
    for (; i < n; i++)
        r = x[i] > r ? x[i] : r;
    return r;
}

static float fma_loop(long n)
{
    float32x4_t a[NSA_FMA_CHAINS];
    const float32x4_t x = vdupq_n_f32(0.999999f), y = vdupq_n_f32(1e-7f);
    for (int c = 0; c < NSA_FMA_CHAINS; c++)
        a[c] = vdupq_n_f32(1.0f + 0.01f * c);
    for (long i = 0; i < n; i++)
        for (int c = 0; c < NSA_FMA_CHAINS; c++)
            a[c] = vfmaq_f32(y, a[c], x);
    float32x4_t s = a[0];
    for (int c = 1; c < NSA_FMA_CHAINS; c++)
        s = vaddq_f32(s, a[c]);
    return vaddvq_f32(s);
}

const nsa_simd_kernels nsa_simd_neon = {"neon", gemm_nt, gemm_nn_acc, exp_sum, vexp,
                                        vmax,   4,       fma_loop};
