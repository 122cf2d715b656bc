/* NEON kernels for aarch64 (4 floats a vector; NEON is baseline there, so
 * no flags). 32 vector registers allow 4x4 dot-product tiles in gemm_nt
 * and 4 rows x 4 vectors in gemm_nn_acc. Tails run as scalar code in the
 * GEMMs, through a 4-float buffer elsewhere. The drivers around the tiles
 * are nsa_simd_template.h's. */
#include "nsa_simd.h"

#include <arm_neon.h>
#include <math.h>
#include <stdint.h>

typedef float32x4_t vf;
#define VL 4

NSA_SIMD_INLINE vf vf_load(const float *p) { return vld1q_f32(p); }
NSA_SIMD_INLINE void vf_store(float *p, vf v) { vst1q_f32(p, v); }
NSA_SIMD_INLINE vf vf_set1(float x) { return vdupq_n_f32(x); }
NSA_SIMD_INLINE vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
NSA_SIMD_INLINE vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
NSA_SIMD_INLINE vf vf_max(vf a, vf b) { return vmaxq_f32(a, b); } /* NaN if either is */
/* u, with NaN (all bits set) where v is NaN */
NSA_SIMD_INLINE vf vf_nan_mark(vf u, vf v)
{
    return vreinterpretq_f32_u32(
        vorrq_u32(vreinterpretq_u32_f32(u), vmvnq_u32(vceqq_f32(v, v))));
}
NSA_SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
NSA_SIMD_INLINE float vf_sum(vf v) { return vaddvq_f32(v); }
NSA_SIMD_INLINE float vf_hmax(vf v) { return vmaxvq_f32(v); } /* NaN if a lane is */

/* ------------------------------------------------------------- gemm_nt */
#define NT_MR 4
NSA_SIMD_INLINE void nt_tile(const int MR, const int NR, int k, float alpha, const float *A,
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

/* --------------------------------------------------------- gemm_nn_acc */
NSA_SIMD_INLINE void nn_tile(const int MR, const int NV, int k, const float *A, size_t lda,
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

/* The n columns of MR rows: 4 vectors at a time, then 1, then scalar. */
#define NN_MR 4
NSA_SIMD_INLINE void nn_cols(const int MR, int n, int k, const float *a, size_t lda,
                             const float *B, size_t ldb, float *cc, size_t ldc)
{
    int c = 0;
    for (; c + 16 <= n; c += 16)
        nn_tile(MR, 4, k, a, lda, B + c, ldb, cc + c, ldc);
    for (; c + 4 <= n; c += 4)
        nn_tile(MR, 1, k, a, lda, B + c, ldb, cc + c, ldc);
    for (; c < n; c++)
        for (int i = 0; i < MR; i++) {
            float s = cc[(size_t)i * ldc + c];
            for (int j = 0; j < k; j++)
                s += a[(size_t)i * lda + j] * B[(size_t)j * ldb + c];
            cc[(size_t)i * ldc + c] = s;
        }
}

/* ---------------------------------------------------------- exp, tails */
NSA_SIMD_INLINE vf vf_exp(vf x)
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

/* NEON has no masked loads and stores: a tail goes through a buffer. */
NSA_SIMD_INLINE vf vf_load_part(const float *p, int r, float fill)
{
    float t[4] = {fill, fill, fill, fill};
    for (int e = 0; e < r; e++)
        t[e] = p[e];
    return vld1q_f32(t);
}
NSA_SIMD_INLINE void vf_store_part(float *p, int r, vf v)
{
    float t[4];
    vst1q_f32(t, v);
    for (int e = 0; e < r; e++)
        p[e] = t[e];
}
NSA_SIMD_INLINE vf vf_keep_part(vf v, int r)
{
    const int32_t lane[4] = {0, 1, 2, 3};
    const uint32x4_t on = vcltq_s32(vld1q_s32(lane), vdupq_n_s32(r));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), on));
}

#include "nsa_simd_template.h"

const nsa_simd_kernels nsa_simd_neon = {"neon", gemm_nt_tiles, gemm_nn_tiles, exp_sum, vexp,
                                        vmax, softmax_step,   VL,            fma_loop};
