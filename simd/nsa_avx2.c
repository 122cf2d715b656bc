/* AVX2 + FMA kernels (8 floats a vector). Built alone with -mavx2 -mfma in
 * its own convenience library; only called after cpu_dispatch.c has seen
 * AVX2, FMA and OS support for the YMM state. Register tiles are sized for
 * the 16 YMM registers: 3x4 dot products in gemm_nt, 6 rows x 2 vectors in
 * gemm_nn_acc. The drivers around them are nsa_simd_template.h's. */
#include "nsa_simd.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

typedef __m256 vf;
#define VL 8

NSA_SIMD_INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
NSA_SIMD_INLINE void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
NSA_SIMD_INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
NSA_SIMD_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
NSA_SIMD_INLINE vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
NSA_SIMD_INLINE vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); } /* NaN: b */
/* u, with NaN (all bits set) where v is NaN */
NSA_SIMD_INLINE vf vf_nan_mark(vf u, vf v)
{
    return _mm256_or_ps(u, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}
NSA_SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }

/* Lanes < r on, for the tail of a row whose length is not a multiple of 8. */
NSA_SIMD_INLINE __m256i tail_mask(int r)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), idx);
}

/* ------------------------------------------------------------- gemm_nt */
/* An MR x NR block of dot products; MR <= 3, NR <= 4 are constants after
 * inlining, so acc stays in registers. */
NSA_SIMD_INLINE void nt_tile(const int MR, const int NR, int k, float alpha, const float *A,
                             size_t lda, const float *B, size_t ldb, float *C, size_t ldc)
{
    __m256 acc[3][4];
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= k; c += 8) {
        __m256 a[3];
#pragma GCC unroll 3
        for (int i = 0; i < MR; i++)
            a[i] = _mm256_loadu_ps(A + (size_t)i * lda + c);
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
            const __m256 b = _mm256_loadu_ps(B + (size_t)j * ldb + c);
#pragma GCC unroll 3
            for (int i = 0; i < MR; i++)
                acc[i][j] = _mm256_fmadd_ps(a[i], b, acc[i][j]);
        }
    }
    if (c < k) {
        const __m256i mk = tail_mask(k - c);
        __m256 a[3];
#pragma GCC unroll 3
        for (int i = 0; i < MR; i++)
            a[i] = _mm256_maskload_ps(A + (size_t)i * lda + c, mk);
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
            const __m256 b = _mm256_maskload_ps(B + (size_t)j * ldb + c, mk);
#pragma GCC unroll 3
            for (int i = 0; i < MR; i++)
                acc[i][j] = _mm256_fmadd_ps(a[i], b, acc[i][j]);
        }
    }
    const __m128 va = _mm_set1_ps(alpha);
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++) {
        /* Three horizontal adds fold four accumulators into 4 sums. */
        const __m256 z = _mm256_setzero_ps();
        const __m256 h01 = _mm256_hadd_ps(acc[i][0], NR > 1 ? acc[i][1] : z);
        const __m256 h23 = _mm256_hadd_ps(NR > 2 ? acc[i][2] : z, NR > 3 ? acc[i][3] : z);
        const __m256 h = _mm256_hadd_ps(h01, h23);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        s = _mm_mul_ps(s, va);
        float *dst = C + (size_t)i * ldc;
        if (NR == 4) {
            _mm_storeu_ps(dst, s);
        } else {
            float tmp[4];
            _mm_storeu_ps(tmp, s);
            for (int j = 0; j < NR; j++)
                dst[j] = tmp[j];
        }
    }
}

/* B in panels of NT_NB rows: 24 KiB at k = 192. */
#define NT_MR 3
#define NT_NB 32

/* --------------------------------------------------------- gemm_nn_acc */
/* C[MR rows][NV vectors] += A[MR][k] B[k][8 NV]; the last vector may be
 * partial (mask). MR <= 6, NV <= 2. */
NSA_SIMD_INLINE void nn_tile(const int MR, const int NV, int k, const float *A, size_t lda,
                             const float *B, size_t ldb, float *C, size_t ldc, int masked,
                             __m256i mk)
{
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            acc[i][v] = (masked && v == NV - 1)
                            ? _mm256_maskload_ps(C + (size_t)i * ldc + 8 * v, mk)
                            : _mm256_loadu_ps(C + (size_t)i * ldc + 8 * v);
    for (int j = 0; j < k; j++) {
        __m256 b[2];
        const float *brow = B + (size_t)j * ldb;
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            b[v] = (masked && v == NV - 1) ? _mm256_maskload_ps(brow + 8 * v, mk)
                                           : _mm256_loadu_ps(brow + 8 * v);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m256 a = _mm256_broadcast_ss(A + (size_t)i * lda + j);
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm256_fmadd_ps(a, b[v], acc[i][v]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
            if (masked && v == NV - 1)
                _mm256_maskstore_ps(C + (size_t)i * ldc + 8 * v, mk, acc[i][v]);
            else
                _mm256_storeu_ps(C + (size_t)i * ldc + 8 * v, acc[i][v]);
        }
}

/* The n columns of MR rows: 2 vectors at a time, then 1, then a masked
 * one. */
NSA_SIMD_INLINE void nn_cols(const int MR, int n, int k, const float *a, size_t lda,
                             const float *B, size_t ldb, float *cc, size_t ldc)
{
    const __m256i full = _mm256_set1_epi32(-1);
    int c = 0;
    for (; c + 16 <= n; c += 16)
        nn_tile(MR, 2, k, a, lda, B + c, ldb, cc + c, ldc, 0, full);
    if (c + 8 <= n) {
        nn_tile(MR, 1, k, a, lda, B + c, ldb, cc + c, ldc, 0, full);
        c += 8;
    }
    if (c < n)
        nn_tile(MR, 1, k, a, lda, B + c, ldb, cc + c, ldc, 1, tail_mask(n - c));
}

/* B in panels of NN_KB rows: 32 KiB at n = 128. */
#define NN_MR 6
#define NN_KB 64

/* ---------------------------------------------------- exp, tails, sums */
/* The exponential of nsa_simd.h, 8 lanes. NaN propagates; x < NSA_EXP_LO
 * (including -inf) gives 0. */
NSA_SIMD_INLINE vf vf_exp(vf x)
{
    const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(NSA_EXP_LO), _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_set1_ps(NSA_EXP_HI), x); /* NaN in x stays NaN */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(NSA_EXP_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(NSA_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(NSA_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(NSA_EXP_C7);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(NSA_EXP_C6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(NSA_EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(NSA_EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(NSA_EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(NSA_EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

NSA_SIMD_INLINE vf vf_load_part(const float *p, int r, float fill)
{
    const __m256i mk = tail_mask(r);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, mk),
                            _mm256_castsi256_ps(mk));
}
NSA_SIMD_INLINE void vf_store_part(float *p, int r, vf v)
{
    _mm256_maskstore_ps(p, tail_mask(r), v);
}
NSA_SIMD_INLINE vf vf_keep_part(vf v, int r)
{
    return _mm256_and_ps(v, _mm256_castsi256_ps(tail_mask(r)));
}

NSA_SIMD_INLINE float vf_sum(vf v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

NSA_SIMD_INLINE float vf_hmax(vf v)
{
    float tmp[8], r = -INFINITY;
    _mm256_storeu_ps(tmp, v);
    for (int e = 0; e < 8; e++)
        r = tmp[e] > r || tmp[e] != tmp[e] ? tmp[e] : r;
    return r;
}

#include "nsa_simd_template.h"

const nsa_simd_kernels nsa_simd_avx2 = {"avx2", gemm_nt_panels, gemm_nn_panels, exp_sum, vexp,
                                        vmax, softmax_step,   VL,             fma_loop};
