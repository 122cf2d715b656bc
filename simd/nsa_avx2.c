/* AVX2 + FMA kernels (8 floats a vector). Built alone with -mavx2 -mfma in
 * its own convenience library; only called after cpu_dispatch.c has seen
 * AVX2, FMA and OS support for the YMM state. Register tiles are sized for
 * the 16 YMM registers: 3x4 dot products in gemm_nt, 6 rows x 2 vectors in
 * gemm_nn_acc. */
#include "nsa_simd.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))

/* Lanes < r on, for the tail of a row whose length is not a multiple of 8. */
INLINE __m256i tail_mask(int r)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), idx);
}

/* ------------------------------------------------------------- gemm_nt */
/* An MR x NR block of dot products; MR <= 3, NR <= 4 are constants after
 * inlining, so acc stays in registers. */
INLINE void nt_tile(const int MR, const int NR, int k, float alpha, const float *A,
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

static void gemm_nt_panel(int m, int n, int k, float alpha, const float *A, size_t lda,
                          const float *B, size_t ldb, float *C, size_t ldc)
{
    int i = 0;
    for (; i + 3 <= m; i += 3) {
        const float *a = A + (size_t)i * lda;
        float *c = C + (size_t)i * ldc;
        NT_ROWS(3);
    }
    const float *a = A + (size_t)i * lda;
    float *c = C + (size_t)i * ldc;
    if (m - i == 2)
        NT_ROWS(2);
    else if (m - i == 1)
        NT_ROWS(1);
}

/* B in panels of NB rows (24 KiB at k = 192), so each panel stays in L1
 * while every row tile of A passes over it. */
#define NB 32
static void gemm_nt(int m, int n, int k, float alpha, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc)
{
    for (int j = 0; j < n; j += NB)
        gemm_nt_panel(m, n - j < NB ? n - j : NB, k, alpha, A, lda, B + (size_t)j * ldb, ldb,
                      C + j, ldc);
}

/* --------------------------------------------------------- gemm_nn_acc */
/* C[MR rows][NV vectors] += A[MR][k] B[k][8 NV]; the last vector may be
 * partial (mask). MR <= 6, NV <= 2. */
INLINE void nn_tile(const int MR, const int NV, int k, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc, int masked, __m256i mk)
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

#define NN_COLS(MR)                                                                        \
    do {                                                                                   \
        int c = 0;                                                                         \
        for (; c + 16 <= n; c += 16)                                                       \
            nn_tile(MR, 2, k, a, lda, B + c, ldb, cc + c, ldc, 0, full);                   \
        if (c + 8 <= n) {                                                                  \
            nn_tile(MR, 1, k, a, lda, B + c, ldb, cc + c, ldc, 0, full);                   \
            c += 8;                                                                        \
        }                                                                                  \
        if (c < n)                                                                         \
            nn_tile(MR, 1, k, a, lda, B + c, ldb, cc + c, ldc, 1, tail_mask(n - c));       \
    } while (0)

static void gemm_nn_panel(int m, int n, int k, const float *A, size_t lda, const float *B,
                          size_t ldb, float *C, size_t ldc)
{
    const __m256i full = _mm256_set1_epi32(-1);
    int i = 0;
    for (; i + 6 <= m; i += 6) {
        const float *a = A + (size_t)i * lda;
        float *cc = C + (size_t)i * ldc;
        NN_COLS(6);
    }
    const float *a = A + (size_t)i * lda;
    float *cc = C + (size_t)i * ldc;
    switch (m - i) {
    case 5: NN_COLS(5); break;
    case 4: NN_COLS(4); break;
    case 3: NN_COLS(3); break;
    case 2: NN_COLS(2); break;
    case 1: NN_COLS(1); break;
    default: break;
    }
}

/* B in panels of KB rows (32 KiB at n = 128) that stay in L1 while every
 * row tile passes over them; C accumulates across panels. */
#define KB 64
static void gemm_nn_acc(int m, int n, int k, const float *A, size_t lda, const float *B,
                        size_t ldb, float *C, size_t ldc)
{
    for (int j = 0; j < k; j += KB)
        gemm_nn_panel(m, n, k - j < KB ? k - j : KB, A + j, lda, B + (size_t)j * ldb, ldb, C,
                      ldc);
}

/* ------------------------------------------------------------------ exp */
/* The exponential of nsa_simd.h, 8 lanes. NaN propagates; x < NSA_EXP_LO
 * (including -inf) gives 0. */
INLINE __m256 exp8(__m256 x)
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

static float exp_sum(float *x, int n, float sub)
{
    const __m256 vs = _mm256_set1_ps(sub);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 y = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(x + i, y);
        acc = _mm256_add_ps(acc, y);
    }
    if (i < n) {
        const __m256i mk = tail_mask(n - i);
        __m256 y = exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, mk), vs));
        y = _mm256_and_ps(y, _mm256_castsi256_ps(mk)); /* off lanes add nothing */
        _mm256_maskstore_ps(x + i, mk, y);
        acc = _mm256_add_ps(acc, y);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static void vexp(const float *x, float *y, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        const __m256i mk = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, mk, exp8(_mm256_maskload_ps(x + i, mk)));
    }
}

static float vmax(const float *x, int n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    float tmp[8], r = -INFINITY;
    _mm256_storeu_ps(tmp, m);
    for (int e = 0; e < 8; e++)
        r = tmp[e] > r ? tmp[e] : r;
    for (; i < n; i++)
        r = x[i] > r ? x[i] : r;
    return r;
}

/* 12 chains: FMA latency 4 x 2 ports needs at least 8 in flight. */
static float fma_loop(long n)
{
    __m256 a[NSA_FMA_CHAINS];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < NSA_FMA_CHAINS; c++)
        a[c] = _mm256_set1_ps(1.0f + 0.01f * c);
    for (long i = 0; i < n; i++)
#pragma GCC unroll 12
        for (int c = 0; c < NSA_FMA_CHAINS; c++)
            a[c] = _mm256_fmadd_ps(a[c], x, y);
    __m256 s = a[0];
    for (int c = 1; c < NSA_FMA_CHAINS; c++)
        s = _mm256_add_ps(s, a[c]);
    return _mm256_cvtss_f32(s);
}

const nsa_simd_kernels nsa_simd_avx2 = {"avx2", gemm_nt, gemm_nn_acc, exp_sum, vexp,
                                        vmax,   8,       fma_loop};
