/* The part of a kernel set that does not depend on the instruction set,
 * written once: the GEMM drivers that cut a product into register tiles
 * (and optionally cache panels), and the elementwise loops of exp_sum, exp,
 * max and fma_loop. Each kernel file (nsa_scalar.c, nsa_avx2.c,
 * nsa_avx512.c, nsa_neon.c) defines its vector primitives and register
 * tiles, includes this header once, then lists its table; so the drivers
 * are compiled with that file's own ISA flags, in its own convenience
 * library, and inline its tiles as the constants MR, NR allow.
 *
 * What the including file defines first:
 *   vf, VL                  a vector of VL floats
 *   vf_load(p), vf_store(p, v), vf_set1(x), vf_add(a, b), vf_sub(a, b),
 *   vf_max(a, b), vf_fma(a, b, c) = a*b + c
 *   vf_exp(v)               the exponential of nsa_simd.h, lane by lane
 *   vf_nan_mark(u, v)       u, but NaN in the lanes where v is NaN
 *   vf_sum(v), vf_hmax(v)   the sum / the largest of the lanes (NaN if a
 *                           lane is NaN)
 *   for VL > 1, the first r lanes (0 < r < VL) of a tail:
 *     vf_load_part(p, r, fill)  p[0..r), fill in the other lanes
 *     vf_store_part(p, r, v)    writes p[0..r) only
 *     vf_keep_part(v, r)        the other lanes made 0
 *   NT_MR, nt_tile(MR, NR, k, alpha, A, lda, B, ldb, C, ldc)
 *                           gemm_nt on an MR x NR block, MR <= NT_MR <= 4,
 *                           NR <= 4
 *   NN_MR, nn_cols(MR, n, k, A, lda, B, ldb, C, ldc)
 *                           gemm_nn_acc on MR rows and all n columns,
 *                           MR <= NN_MR <= 6
 *   NT_NB, NN_KB (optional) cache panels: with NT_NB, gemm_nt_panels takes B
 *                           in panels of NT_NB rows; with NN_KB,
 *                           gemm_nn_panels takes B in panels of NN_KB rows
 * and gets gemm_nt_tiles, gemm_nn_tiles (and the _panels ones), exp_sum,
 * vexp, vmax, softmax_step and fma_loop, the functions of its table. */
#ifndef NSA_SIMD_TEMPLATE_H
#define NSA_SIMD_TEMPLATE_H

#include <math.h>

#if NT_MR < 1 || NT_MR > 4 || NN_MR < 1 || NN_MR > 6
#error "the row tiles of the kernel set are out of the template's range"
#endif

/* ------------------------------------------------------------- gemm_nt */
/* The n columns of MR rows: tiles of 4 columns, then 3, 2 or 1. */
NSA_SIMD_INLINE void nt_rows(const int MR, int n, int k, float alpha, const float *a, size_t lda,
                             const float *B, size_t ldb, float *c, size_t ldc)
{
    int j = 0;
    for (; j + 4 <= n; j += 4)
        nt_tile(MR, 4, k, alpha, a, lda, B + (size_t)j * ldb, ldb, c + j, ldc);
    const float *b = B + (size_t)j * ldb;
    switch (n - j) {
    case 3: nt_tile(MR, 3, k, alpha, a, lda, b, ldb, c + j, ldc); break;
    case 2: nt_tile(MR, 2, k, alpha, a, lda, b, ldb, c + j, ldc); break;
    case 1: nt_tile(MR, 1, k, alpha, a, lda, b, ldb, c + j, ldc); break;
    default: break;
    }
}

/* Rows in tiles of NT_MR, then the 1 .. NT_MR-1 left. */
static void gemm_nt_tiles(int m, int n, int k, float alpha, const float *A, size_t lda,
                          const float *B, size_t ldb, float *C, size_t ldc)
{
    int i = 0;
    for (; i + NT_MR <= m; i += NT_MR)
        nt_rows(NT_MR, n, k, alpha, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc);
#if NT_MR > 1
    const float *a = A + (size_t)i * lda;
    float *c = C + (size_t)i * ldc;
    switch (m - i) {
#if NT_MR > 3
    case 3: nt_rows(3, n, k, alpha, a, lda, B, ldb, c, ldc); break;
#endif
#if NT_MR > 2
    case 2: nt_rows(2, n, k, alpha, a, lda, B, ldb, c, ldc); break;
#endif
    case 1: nt_rows(1, n, k, alpha, a, lda, B, ldb, c, ldc); break;
    default: break;
    }
#endif
}

#ifdef NT_NB
/* B in panels of NT_NB rows, each of which stays in L1 while every row
 * tile of A passes over it. */
static void gemm_nt_panels(int m, int n, int k, float alpha, const float *A, size_t lda,
                           const float *B, size_t ldb, float *C, size_t ldc)
{
    for (int j = 0; j < n; j += NT_NB)
        gemm_nt_tiles(m, n - j < NT_NB ? n - j : NT_NB, k, alpha, A, lda, B + (size_t)j * ldb,
                      ldb, C + j, ldc);
}
#endif

/* --------------------------------------------------------- gemm_nn_acc */
/* Rows in tiles of NN_MR, then the 1 .. NN_MR-1 left. */
static void gemm_nn_tiles(int m, int n, int k, const float *A, size_t lda, const float *B,
                          size_t ldb, float *C, size_t ldc)
{
    int i = 0;
    for (; i + NN_MR <= m; i += NN_MR)
        nn_cols(NN_MR, n, k, A + (size_t)i * lda, lda, B, ldb, C + (size_t)i * ldc, ldc);
#if NN_MR > 1
    const float *a = A + (size_t)i * lda;
    float *c = C + (size_t)i * ldc;
    switch (m - i) {
#if NN_MR > 5
    case 5: nn_cols(5, n, k, a, lda, B, ldb, c, ldc); break;
#endif
#if NN_MR > 4
    case 4: nn_cols(4, n, k, a, lda, B, ldb, c, ldc); break;
#endif
#if NN_MR > 3
    case 3: nn_cols(3, n, k, a, lda, B, ldb, c, ldc); break;
#endif
#if NN_MR > 2
    case 2: nn_cols(2, n, k, a, lda, B, ldb, c, ldc); break;
#endif
    case 1: nn_cols(1, n, k, a, lda, B, ldb, c, ldc); break;
    default: break;
    }
#endif
}

#ifdef NN_KB
/* B in panels of NN_KB rows that stay in L1 while every row tile passes
 * over them; C accumulates across panels (in the same order of j as
 * without them). */
static void gemm_nn_panels(int m, int n, int k, const float *A, size_t lda, const float *B,
                           size_t ldb, float *C, size_t ldc)
{
    for (int j = 0; j < k; j += NN_KB)
        gemm_nn_tiles(m, n, k - j < NN_KB ? k - j : NN_KB, A + j, lda, B + (size_t)j * ldb, ldb,
                      C, ldc);
}
#endif

/* ---------------------------------------------------------- elementwise */
/* The loops are written as inline functions (the _in ones) so that
 * softmax_step gets them inlined; the table's entries wrap them. */
NSA_SIMD_INLINE float exp_sum_in(float *x, int n, float sub)
{
    const vf vs = vf_set1(sub);
    vf acc = vf_set1(0.0f);
    int i = 0;
    for (; i + VL <= n; i += VL) {
        const vf y = vf_exp(vf_sub(vf_load(x + i), vs));
        vf_store(x + i, y);
        acc = vf_add(acc, y);
    }
#if VL > 1
    if (i < n) {
        const int r = n - i;
        /* lanes past n add nothing, whatever sub is */
        const vf y = vf_keep_part(vf_exp(vf_sub(vf_load_part(x + i, r, 0.0f), vs)), r);
        vf_store_part(x + i, r, y);
        acc = vf_add(acc, y);
    }
#endif
    return vf_sum(acc);
}

NSA_SIMD_INLINE void vexp_in(const float *x, float *y, int n)
{
    int i = 0;
    for (; i + VL <= n; i += VL)
        vf_store(y + i, vf_exp(vf_load(x + i)));
#if VL > 1
    if (i < n)
        vf_store_part(y + i, n - i, vf_exp(vf_load_part(x + i, n - i, 0.0f)));
#endif
}

/* NaN anywhere in x gives NaN, on every set: vf_max may drop it, so the
 * NaNs are marked in u, a chain of its own beside the max's (the loop's
 * speed is the max's latency); m + u is then m or NaN in each lane. */
NSA_SIMD_INLINE float vmax_in(const float *x, int n)
{
    vf m = vf_set1(-INFINITY), u = vf_set1(0.0f);
    int i = 0;
    for (; i + VL <= n; i += VL) {
        const vf v = vf_load(x + i);
        m = vf_max(m, v);
        u = vf_nan_mark(u, v);
    }
#if VL > 1
    if (i < n) {
        const vf v = vf_load_part(x + i, n - i, -INFINITY);
        m = vf_max(m, v);
        u = vf_nan_mark(u, v);
    }
#endif
    return vf_hmax(vf_add(m, u));
}

static float exp_sum(float *x, int n, float sub) { return exp_sum_in(x, n, sub); }
static void vexp(const float *x, float *y, int n) { vexp_in(x, y, n); }
static float vmax(const float *x, int n) { return vmax_in(x, n); }

/* One online-softmax step of m rows (flash attention), written once here
 * so that it runs inside the kernel set: row i of S (stride lds) holds n
 * new scores; with M = max(mrow[i], max of the row), the row becomes
 * exp(s - M), lrow[i] = lrow[i] c + its sum, mrow[i] = M, and O's row i
 * (dv floats, stride ldo) is scaled by c = exp(mrow[i] - M) when that is
 * not 1. A row whose M is -inf (no visible key yet) becomes zeros and
 * keeps its state. Rows go by groups of SM_R: first their maxima, then
 * their factors c with one vector exp (exactly 1 where the max did not
 * move), then their exponentials; one call a key tile instead of two
 * indirect calls, a scalar expf and a scalar scaling loop a row. */
#define SM_R 16
static void softmax_step(float *S, size_t lds, int m, int n, float *mrow, float *lrow, float *O,
                         size_t ldo, int dv)
{
    float mnew[SM_R], corr[SM_R];
    for (int i0 = 0; i0 < m; i0 += SM_R) {
        const int r = m - i0 < SM_R ? m - i0 : SM_R;
        for (int i = 0; i < r; i++) {
            const float mx = vmax_in(S + (size_t)(i0 + i) * lds, n), mo = mrow[i0 + i];
            mnew[i] = mx > mo ? mx : mo;
            /* -inf - (-inf) would be NaN; such a row is skipped below */
            corr[i] = mnew[i] == -INFINITY ? 0.0f : mo - mnew[i];
        }
        vexp_in(corr, corr, r); /* exp(-inf) = 0: the first visible keys */
        for (int i = 0; i < r; i++) {
            float *row = S + (size_t)(i0 + i) * lds;
            if (mnew[i] == -INFINITY) {
                for (int j = 0; j < n; j++)
                    row[j] = 0.0f;
                continue;
            }
            const float sum = exp_sum_in(row, n, mnew[i]);
            lrow[i0 + i] = lrow[i0 + i] * corr[i] + sum;
            mrow[i0 + i] = mnew[i];
            if (corr[i] != 1.0f) {
                /* o * c: an FMA with 0 rounds once, as the product does */
                float *o = O + (size_t)(i0 + i) * ldo;
                const vf vc = vf_set1(corr[i]), z = vf_set1(0.0f);
                int e = 0;
                for (; e + VL <= dv; e += VL)
                    vf_store(o + e, vf_fma(vf_load(o + e), vc, z));
                for (; e < dv; e++)
                    o[e] *= corr[i];
            }
        }
    }
}

/* NSA_FMA_CHAINS independent chains: FMA latency 4 x 2 ports needs at
 * least 8 in flight. */
static float fma_loop(long n)
{
    vf a[NSA_FMA_CHAINS];
    const vf x = vf_set1(0.999999f), y = vf_set1(1e-7f);
    for (int c = 0; c < NSA_FMA_CHAINS; c++)
        a[c] = vf_set1(1.0f + 0.01f * c);
    for (long i = 0; i < n; i++)
#pragma GCC unroll 12
        for (int c = 0; c < NSA_FMA_CHAINS; c++)
            a[c] = vf_fma(a[c], x, y);
    vf s = a[0];
    for (int c = 1; c < NSA_FMA_CHAINS; c++)
        s = vf_add(s, a[c]);
    return vf_sum(s);
}

#endif
