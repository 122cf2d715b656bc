/* The CPU backend's kernel table: the few dense primitives every attention
 * branch, phi and the linear layers are built from, one instance per
 * instruction set. Each instance lives in its own file (and libtool
 * convenience library with its own flags), which holds what is specific to
 * its instruction set and includes nsa_simd_template.h for the rest; the
 * host code in lib/cpu picks one at context creation from what the
 * processor has and the NSA_MAX_ISA cap. */
#ifndef NSA_SIMD_H
#define NSA_SIMD_H

#include <stddef.h>

#if defined(__GNUC__)
#define NSA_SIMD_HIDDEN __attribute__((visibility("hidden")))
/* Register tiles and vector primitives: inlined wherever their constant
 * tile sizes are known, so their accumulators stay in registers. */
#define NSA_SIMD_INLINE static inline __attribute__((always_inline))
#else
#define NSA_SIMD_HIDDEN
#define NSA_SIMD_INLINE static inline
#endif

typedef struct nsa_simd_kernels {
    const char *isa; /* "scalar", "avx2", "avx512", "neon" */
    /* C[i*ldc + j] = alpha * sum_c A[i*lda + c] * B[j*ldb + c], i < m, j < n.
     * Q K^T for attention scores, x W^T for linear layers. */
    void (*gemm_nt)(int m, int n, int k, float alpha, const float *A, size_t lda,
                    const float *B, size_t ldb, float *C, size_t ldc);
    /* C[i*ldc + c] += sum_j A[i*lda + j] * B[j*ldb + c], i < m, c < n, j < k.
     * P V for attention outputs. */
    void (*gemm_nn_acc)(int m, int n, int k, const float *A, size_t lda, const float *B,
                        size_t ldb, float *C, size_t ldc);
    /* x[i] = exp(x[i] - sub) in place; returns the sum of the new x. */
    float (*exp_sum)(float *x, int n, float sub);
    /* y[i] = exp(x[i]) (the same approximation as exp_sum; tested alone). */
    void (*exp)(const float *x, float *y, int n);
    /* max_i x[i] (-INFINITY for n = 0); NaN if some x[i] is NaN, on every
     * set (a softmax over a row with NaN scores stays NaN, as in ref). */
    float (*max)(const float *x, int n);
    /* One online-softmax step over a key tile: m rows of n scores in S
     * (stride lds) become exp(s - M) with M the new running max of the
     * row; mrow, lrow (running max and sum) are updated and O's rows (dv
     * floats, stride ldo) rescaled. Rows with no visible key yet (M =
     * -inf) become zeros. The same results as max, then exp_sum, then the
     * scaling by expf(old max - M), row by row. */
    void (*softmax_step)(float *S, size_t lds, int m, int n, float *mrow, float *lrow, float *O,
                         size_t ldo, int dv);
    /* For nsa-bench's peak figure: n rounds of NSA_FMA_CHAINS independent
     * vector multiply-adds of `lanes` floats (2 flops each per lane);
     * returns a value that depends on all of them. */
    int lanes;
    float (*fma_loop)(long n);
} nsa_simd_kernels;

#define NSA_FMA_CHAINS 12

extern NSA_SIMD_HIDDEN const nsa_simd_kernels nsa_simd_scalar;
#ifdef NSA_HAVE_AVX2
extern NSA_SIMD_HIDDEN const nsa_simd_kernels nsa_simd_avx2;
#endif
#ifdef NSA_HAVE_AVX512
extern NSA_SIMD_HIDDEN const nsa_simd_kernels nsa_simd_avx512;
#endif
#ifdef NSA_HAVE_NEON
extern NSA_SIMD_HIDDEN const nsa_simd_kernels nsa_simd_neon;
#endif

/* The exponential used by every kernel set, derived here rather than taken
 * from a math library so all ISAs share one error bound:
 *   exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n ln2 (ln2 split in a
 *   hi part exact in float and a lo part), |r| <= ln2/2;
 *   exp(r) ~ Taylor polynomial of degree 7, whose truncation error is
 *   |r|^8/8! < 5.3e-9 relative on that interval.
 * With float rounding the maximum relative error is stated (and tested by
 * tests/test_simd) as NSA_EXP_MAX_REL_ERR over [NSA_EXP_LO, NSA_EXP_HI].
 * Inputs below NSA_EXP_LO give 0 (results there would be subnormal; softmax
 * loses nothing by flushing them), inputs above NSA_EXP_HI are clamped. */
#define NSA_EXP_LO (-87.0f)
#define NSA_EXP_HI (88.0f)
#define NSA_EXP_MAX_REL_ERR 2e-7 /* measured: 1.0e-7 scalar, 7.7e-8 avx2 */
#define NSA_EXP_LOG2E 1.44269504088896341f
#define NSA_EXP_LN2_HI 0.693145751953125f /* 16 significant bits: n*hi is exact */
#define NSA_EXP_LN2_LO 1.4286068202862268e-6f /* ln2 - hi */
#define NSA_EXP_C2 (1.0f / 2.0f)
#define NSA_EXP_C3 (1.0f / 6.0f)
#define NSA_EXP_C4 (1.0f / 24.0f)
#define NSA_EXP_C5 (1.0f / 120.0f)
#define NSA_EXP_C6 (1.0f / 720.0f)
#define NSA_EXP_C7 (1.0f / 5040.0f)

#endif
