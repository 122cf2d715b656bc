/* AVX-512 kernels (16 floats a vector, opmask tails). Built alone with
 * -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma in its own convenience
 * library; only called after cpu_dispatch.c has seen AVX-512 F/VL/BW/DQ and
 * OS support for the opmask and ZMM state. Register tiles use the 32 ZMM
 * registers: 4x4 dot products in gemm_nt (reduced together by one
 * transpose-add tree), 6 rows x 4 vectors in gemm_nn_acc. The drivers
 * around them are nsa_simd_template.h's. */
#include "nsa_simd.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

typedef __m512 vf;
#define VL 16

NSA_SIMD_INLINE vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
NSA_SIMD_INLINE void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
NSA_SIMD_INLINE vf vf_set1(float x) { return _mm512_set1_ps(x); }
NSA_SIMD_INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
NSA_SIMD_INLINE vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
NSA_SIMD_INLINE vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); } /* NaN: b */
/* u, with NaN where v is NaN */
NSA_SIMD_INLINE vf vf_nan_mark(vf u, vf v)
{
    return _mm512_mask_mov_ps(u, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
}
NSA_SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
NSA_SIMD_INLINE float vf_sum(vf v) { return _mm512_reduce_add_ps(v); }
/* _mm512_reduce_max_ps drops or keeps NaN depending on the compiler */
NSA_SIMD_INLINE float vf_hmax(vf v)
{
    return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) ? NAN : _mm512_reduce_max_ps(v);
}

/* Lanes < r on (0 <= r <= 16). */
NSA_SIMD_INLINE __mmask16 tail_mask(int r) { return (__mmask16)((1u << r) - 1u); }

/* ------------------------------------------------------------- gemm_nt */
/* Sums of 16 vectors: lane 4q + e of the result is the sum of the lanes of
 * v[4e + q]. Each vector's lanes are added in the same order wherever it
 * sits in v (a row's scores do not depend on its neighbours in the tile):
 * halves, then quarters, then pairs, then the last two. */
NSA_SIMD_INLINE __m512 reduce16(const __m512 v[16])
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
NSA_SIMD_INLINE void nt_tile(const int MR, const int NR, int k, float alpha, const float *A,
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

/* B in panels of NT_NB rows: 24 KiB at k = 192. */
#define NT_MR 4
#define NT_NB 32

/* --------------------------------------------------------- gemm_nn_acc */
/* C[MR rows][NV vectors] += A[MR][k] B[k][16 NV]; the last vector is
 * masked by mk (all ones when full). MR <= 6, NV <= 4. */
NSA_SIMD_INLINE void nn_tile(const int MR, const int NV, int k, const float *A, size_t lda,
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

/* The n columns of MR rows: 64 at a time, then what is left (1-63) as 1-4
 * vectors, the last one masked. */
NSA_SIMD_INLINE void nn_cols(const int MR, int n, int k, const float *a, size_t lda,
                             const float *B, size_t ldb, float *cc, size_t ldc)
{
    int c = 0;
    for (; c + 64 <= n; c += 64)
        nn_tile(MR, 4, k, a, lda, B + c, ldb, cc + c, ldc, 0xFFFF);
    const int left = n - c;
    const __mmask16 mk = tail_mask(left - (left - 1) / 16 * 16);
    if (left > 48)
        nn_tile(MR, 4, k, a, lda, B + c, ldb, cc + c, ldc, mk);
    else if (left > 32)
        nn_tile(MR, 3, k, a, lda, B + c, ldb, cc + c, ldc, mk);
    else if (left > 16)
        nn_tile(MR, 2, k, a, lda, B + c, ldb, cc + c, ldc, mk);
    else if (left > 0)
        nn_tile(MR, 1, k, a, lda, B + c, ldb, cc + c, ldc, mk);
}

/* B in panels of NN_KB rows: 32 KiB at n = 128. */
#define NN_MR 6
#define NN_KB 64

/* ---------------------------------------------------------- exp, tails */
/* The exponential of nsa_simd.h, 16 lanes. NaN propagates; x < NSA_EXP_LO
 * (including -inf) gives 0. */
NSA_SIMD_INLINE vf vf_exp(vf x)
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

NSA_SIMD_INLINE vf vf_load_part(const float *p, int r, float fill)
{
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(r), p);
}
NSA_SIMD_INLINE void vf_store_part(float *p, int r, vf v)
{
    _mm512_mask_storeu_ps(p, tail_mask(r), v);
}
NSA_SIMD_INLINE vf vf_keep_part(vf v, int r) { return _mm512_maskz_mov_ps(tail_mask(r), v); }

#include "nsa_simd_template.h"

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
        gemm_nt_panels(mb, n, k, alpha, a, la, B, ldb, C + (size_t)i * ldc, ldc);
    }
}

const nsa_simd_kernels nsa_simd_avx512 = {"avx512", gemm_nt, gemm_nn_panels, exp_sum, vexp,
                                          vmax, softmax_step,     VL,      fma_loop};
