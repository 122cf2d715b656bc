/* AVX-512 kernels (16 floats a vector, opmask tails). Built alone with
 * -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma in its own convenience
 * library; only called after cpu_dispatch.c has seen AVX-512 F/VL/BW/DQ and
 * OS support for the opmask and ZMM state. Register tiles use the 32 ZMM
 * registers: 4x4 dot products in gemm_nt (reduced together by one
 * transpose-add tree), 6 rows x 4 vectors in gemm_nn_acc. */
#include "nsa_simd.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))

/* Lanes < r on (0 <= r <= 16). */
INLINE __mmask16 tail_mask(int r) { return (__mmask16)((1u << r) - 1u); }

/* ------------------------------------------------------------- gemm_nt */
/* Sums of 16 vectors: lane 4q + e of the result is the sum of the lanes of
 * v[4e + q]. Each vector's lanes are added in the same order wherever it
 * sits in v (a row's scores do not depend on its neighbours in the tile):
 * halves, then quarters, then pairs, then the last two. */
INLINE __m512 reduce16(const __m512 v[16])
{
    __m512 t[8], u[4], w[2];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++)
        t[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++)
        u[p] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * p], t[2 * p + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * p], t[2 * p + 1], 0xDD));
#pragma GCC unroll 2
    for (int p = 0; p < 2; p++)
        w[p] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* An MR x NR block of dot products, MR, NR <= 4 constants after inlining. */
INLINE void nt_tile(const int MR, const int NR, int k, float alpha, const float *A,
                    size_t lda, const float *B, size_t ldb, float *C, size_t ldc)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 16 <= k; c += 16) {
        __m512 a[4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
            a[i] = _mm512_loadu_ps(A + (size_t)i * lda + c);
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
            const __m512 b = _mm512_loadu_ps(B + (size_t)j * ldb + c);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++)
                acc[i][j] = _mm512_fmadd_ps(a[i], b, acc[i][j]);
        }
    }
    if (c < k) {
        const __mmask16 mk = tail_mask(k - c);
        __m512 a[4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
            a[i] = _mm512_maskz_loadu_ps(mk, A + (size_t)i * lda + c);
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
            const __m512 b = _mm512_maskz_loadu_ps(mk, B + (size_t)j * ldb + c);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++)
                acc[i][j] = _mm512_fmadd_ps(a[i], b, acc[i][j]);
        }
    }
    __m512 v[16];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            v[4 * j + i] = (i < MR && j < NR) ? acc[i][j] : _mm512_setzero_ps();
    const __m512 s = _mm512_mul_ps(reduce16(v), _mm512_set1_ps(alpha));
    /* row i's NR sums are the 128-bit lane i of s */
    const __mmask8 mj = (__mmask8)((1u << NR) - 1u);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        const __m128 r = i == 0   ? _mm512_castps512_ps128(s)
                         : i == 1 ? _mm512_extractf32x4_ps(s, 1)
                         : i == 2 ? _mm512_extractf32x4_ps(s, 2)
                                  : _mm512_extractf32x4_ps(s, 3);
        if (NR == 4)
            _mm_storeu_ps(C + (size_t)i * ldc, r);
        else
            _mm_mask_storeu_ps(C + (size_t)i * ldc, mj, r);
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

/* B in panels of NB rows (24 KiB at k = 192), so each panel stays in L1
 * while every row tile of A passes over it. */
#define NB 32
/* A in blocks of MB rows; a block of rows of at most KA floats that is not
 * 64-byte aligned is copied to an aligned buffer first: a 64-byte load
 * that straddles two cache lines costs two, and the tile loop loads as
 * often as it multiplies. The copy changes nothing in what is summed, or
 * in which order. */
#define MB 16
#define KA 256
static void gemm_nt(int m, int n, int k, float alpha, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc)
{
    _Alignas(64) float abuf[MB * KA];
    const size_t kp = (size_t)(k + 15) / 16 * 16;
    const int copy = k <= KA && (((uintptr_t)A & 63u) != 0 || (lda & 15u) != 0);
    for (int i = 0; i < m; i += MB) {
        const int mb = m - i < MB ? m - i : MB;
        const float *a = A + (size_t)i * lda;
        size_t la = lda;
        if (copy) {
            const __mmask16 mk = tail_mask(k & 15);
            for (int r = 0; r < mb; r++) {
                const float *s = a + (size_t)r * lda;
                float *d = abuf + (size_t)r * kp;
                int c = 0;
                for (; c + 16 <= k; c += 16)
                    _mm512_store_ps(d + c, _mm512_loadu_ps(s + c));
                if (c < k)
                    _mm512_store_ps(d + c, _mm512_maskz_loadu_ps(mk, s + c));
            }
            a = abuf;
            la = kp;
        }
        for (int j = 0; j < n; j += NB)
            gemm_nt_panel(mb, n - j < NB ? n - j : NB, k, alpha, a, la, B + (size_t)j * ldb,
                          ldb, C + (size_t)i * ldc + j, ldc);
    }
}

/* --------------------------------------------------------- gemm_nn_acc */
/* C[MR rows][NV vectors] += A[MR][k] B[k][16 NV]; the last vector is
 * masked by mk (all ones when full). MR <= 6, NV <= 4. */
INLINE void nn_tile(const int MR, const int NV, int k, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc, __mmask16 mk)
{
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[i][v] = v == NV - 1 ? _mm512_maskz_loadu_ps(mk, C + (size_t)i * ldc + 16 * v)
                                    : _mm512_loadu_ps(C + (size_t)i * ldc + 16 * v);
    for (int j = 0; j < k; j++) {
        __m512 b[4];
        const float *brow = B + (size_t)j * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(mk, brow + 16 * v)
                               : _mm512_loadu_ps(brow + 16 * v);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m512 a = _mm512_set1_ps(A[(size_t)i * lda + j]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            if (v == NV - 1)
                _mm512_mask_storeu_ps(C + (size_t)i * ldc + 16 * v, mk, acc[i][v]);
            else
                _mm512_storeu_ps(C + (size_t)i * ldc + 16 * v, acc[i][v]);
        }
}

/* The columns of MR rows: 64 at a time, then what is left (1-63) as 1-4
 * vectors, the last one masked. */
#define NN_COLS(MR)                                                                        \
    do {                                                                                   \
        int c = 0;                                                                         \
        for (; c + 64 <= n; c += 64)                                                       \
            nn_tile(MR, 4, k, a, lda, B + c, ldb, cc + c, ldc, 0xFFFF);                    \
        const int left = n - c;                                                            \
        const __mmask16 mk = tail_mask(left - (left - 1) / 16 * 16);                      \
        if (left > 48)                                                                     \
            nn_tile(MR, 4, k, a, lda, B + c, ldb, cc + c, ldc, mk);                        \
        else if (left > 32)                                                                \
            nn_tile(MR, 3, k, a, lda, B + c, ldb, cc + c, ldc, mk);                        \
        else if (left > 16)                                                                \
            nn_tile(MR, 2, k, a, lda, B + c, ldb, cc + c, ldc, mk);                        \
        else if (left > 0)                                                                 \
            nn_tile(MR, 1, k, a, lda, B + c, ldb, cc + c, ldc, mk);                        \
    } while (0)

static void gemm_nn_panel(int m, int n, int k, const float *A, size_t lda, const float *B,
                          size_t ldb, float *C, size_t ldc)
{
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
/* The exponential of nsa_simd.h, 16 lanes. NaN propagates; x < NSA_EXP_LO
 * (including -inf) gives 0. */
INLINE __m512 exp16(__m512 x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(NSA_EXP_LO), _CMP_NLT_UQ);
    x = _mm512_min_ps(_mm512_set1_ps(NSA_EXP_HI), x); /* NaN in x stays NaN */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(NSA_EXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(NSA_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(NSA_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(NSA_EXP_C7);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(NSA_EXP_C6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(NSA_EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(NSA_EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(NSA_EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(NSA_EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(keep, p, _mm512_castsi512_ps(e));
}

static float exp_sum(float *x, int n, float sub)
{
    const __m512 vs = _mm512_set1_ps(sub);
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 y = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs));
        _mm512_storeu_ps(x + i, y);
        acc = _mm512_add_ps(acc, y);
    }
    if (i < n) {
        const __mmask16 mk = tail_mask(n - i);
        const __m512 y = _mm512_maskz_mov_ps(mk, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), vs)));
        _mm512_mask_storeu_ps(x + i, mk, y);
        acc = _mm512_add_ps(acc, y); /* off lanes add 0 */
    }
    return _mm512_reduce_add_ps(acc);
}

static void vexp(const float *x, float *y, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, exp16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 mk = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, mk, exp16(_mm512_maskz_loadu_ps(mk, x + i)));
    }
}

static float vmax(const float *x, int n)
{
    __m512 m = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    if (i < n)
        m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i),
                                                  x + i));
    return _mm512_reduce_max_ps(m);
}

/* 12 chains: FMA latency 4 x 2 ports needs at least 8 in flight. */
static float fma_loop(long n)
{
    __m512 a[NSA_FMA_CHAINS];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < NSA_FMA_CHAINS; c++)
        a[c] = _mm512_set1_ps(1.0f + 0.01f * c);
    for (long i = 0; i < n; i++)
#pragma GCC unroll 12
        for (int c = 0; c < NSA_FMA_CHAINS; c++)
            a[c] = _mm512_fmadd_ps(a[c], x, y);
    __m512 s = a[0];
    for (int c = 1; c < NSA_FMA_CHAINS; c++)
        s = _mm512_add_ps(s, a[c]);
    return _mm512_cvtss_f32(s);
}

const nsa_simd_kernels nsa_simd_avx512 = {"avx512", gemm_nt, gemm_nn_acc, exp_sum, vexp,
                                          vmax,     16,      fma_loop};
