/* The kernel sets of the cpu backend, each usable one on its own, against
 * double-precision loops: the vectorized exp within its stated bound
 * (NSA_EXP_MAX_REL_ERR, simd/nsa_simd.h), and the GEMM kernels on sizes
 * that hit every register-tile remainder. */
#include "testlib.h"

#include "cpu/cpu_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const nsa_simd_kernels *sets[NSA_ISA_COUNT];
static int nsets;

/* Every set usable here, in rank order (scalar, avx2, avx512 / neon); a
 * set this machine or build lacks is skipped with a message saying why. */
static int setup(void **state)
{
    (void)state;
    const char *names[TL_KERNEL_SETS];
    nsets = tl_kernel_sets(names);
    for (int i = 0; i < nsets; i++)
        sets[i] = nsa_cpu_kernels((nsa_isa)nsa_cpu_isa_parse(names[i]));
    return 0;
}

static void test_exp_error(void **state)
{
    (void)state;
    /* a dense sweep of [NSA_EXP_LO, NSA_EXP_HI], plus a fine one near 0
     * where softmax exponents live, at a length with a vector tail */
    const int n = 2000003;
    float *x = malloc(sizeof(float) * n), *y = tl_poisoned(n);
    assert_non_null(x);
    for (int i = 0; i < n; i++) {
        const double u = (double)i / (n - 1);
        x[i] = i % 2 ? (float)(NSA_EXP_LO + u * (NSA_EXP_HI - NSA_EXP_LO)) : (float)(-8.0 * u);
    }
    for (int s = 0; s < nsets; s++) {
        sets[s]->exp(x, y, n);
        double worst = 0.0;
        int at = 0;
        for (int i = 0; i < n; i++) {
            const double want = exp((double)x[i]);
            const double e = fabs((double)y[i] - want) / want;
            if (!(e <= worst)) {
                worst = e;
                at = i;
            }
        }
        print_message("exp[%s]: max rel error %.3g at x=%.9g (bound %.1e)\n", sets[s]->isa,
                      worst, x[at], NSA_EXP_MAX_REL_ERR);
        if (!(worst <= NSA_EXP_MAX_REL_ERR))
            fail_msg("exp[%s]: rel error %.3g at x=%.9g > %.1e", sets[s]->isa, worst, x[at],
                     NSA_EXP_MAX_REL_ERR);
        /* below the range: flushed to 0; NaN stays NaN */
        const float odd[5] = {-INFINITY, -200.0f, -88.0f, NAN, 0.0f};
        float oy[5];
        sets[s]->exp(odd, oy, 5);
        assert_true(oy[0] == 0.0f && oy[1] == 0.0f && oy[2] == 0.0f);
        assert_true(isnan(oy[3]));
        assert_true(fabsf(oy[4] - 1.0f) <= 2e-7f);
    }
    free(x);
    free(y);
}

static void test_exp_sum_and_max(void **state)
{
    (void)state;
    for (int s = 0; s < nsets; s++)
        for (int n = 1; n <= 37; n += 3) {
            float x[40], y[40];
            tl_fill(x, (size_t)n, 77 + (uint64_t)n, -20.0f, 5.0f);
            memcpy(y, x, sizeof x);
            double mx = -INFINITY, want = 0.0;
            for (int i = 0; i < n; i++)
                mx = x[i] > mx ? x[i] : mx;
            assert_true(sets[s]->max(x, n) == (float)mx);
            /* the kernel subtracts in float: compare with that argument */
            double arg[40];
            for (int i = 0; i < n; i++)
                want += exp(arg[i] = (double)(x[i] - (float)mx));
            const float got = sets[s]->exp_sum(y, n, (float)mx);
            /* n terms each within the exp bound, plus float summation */
            assert_true(fabs(got - want) <= (NSA_EXP_MAX_REL_ERR + n * 1.2e-7) * want);
            for (int i = 0; i < n; i++)
                assert_true(fabs(y[i] - exp(arg[i])) <= NSA_EXP_MAX_REL_ERR * exp(arg[i]));
        }
}

/* max with a NaN anywhere (a full vector, the tail, first, last) is NaN on
 * every set: the decode zeroed a row whose max came out -inf when a set
 * dropped NaN, where ref's softmax stays NaN (test_decode's
 * test_mirror_topn on the scalar and avx2 sets). */
static void test_max_nan(void **state)
{
    (void)state;
    for (int s = 0; s < nsets; s++)
        for (int n = 1; n <= 37; n += 3)
            for (int at = 0; at < n; at += (n > 4 ? n / 4 : 1)) {
                float x[40];
                tl_fill(x, (size_t)n, 91 + (uint64_t)n, -20.0f, 5.0f);
                x[at] = NAN;
                if (!isnan(sets[s]->max(x, n)))
                    fail_msg("max[%s] n=%d NaN at %d: %g", sets[s]->isa, n, at,
                             sets[s]->max(x, n));
                for (int i = 0; i < n; i++) /* all NaN but -inf elsewhere */
                    x[i] = i == at ? NAN : -INFINITY;
                if (!isnan(sets[s]->max(x, n)))
                    fail_msg("max[%s] n=%d NaN at %d among -inf: %g", sets[s]->isa, n, at,
                             sets[s]->max(x, n));
            }
}

/* Relative error bound of a float dot product of length k with inputs in
 * [-1, 1]: k ulps of the sum of |terms| (a loose, always-valid bound). */
static void test_gemm(void **state)
{
    (void)state;
    /* m past 16 and k past 256 reach avx512's row blocks and the path
     * without the aligned copy of A */
    static const int ms[] = {1, 2, 3, 4, 5, 6, 7, 13, 16, 21};
    /* n past 64 and 128 reaches the 4-vector column tiles of avx512; 49-63
     * columns past a multiple of 64 need 4 vectors with the last masked
     * (57, 118 and 127 once lost their last 16) */
    static const int ns[] = {1, 3, 4, 5, 8, 9, 17, 24, 33, 47, 49, 57, 64, 100, 118, 127, 128};
    static const int ks[] = {1, 7, 8, 9, 16, 31, 64, 192, 300};
    const size_t lda = 320, ldb = 330, ldc = 135;
    /* A 64-byte aligned with lda a multiple of 16 floats, and A shifted by
     * 3 floats: kernels may treat the two differently */
    float *Abuf = aligned_alloc(64, sizeof(float) * (21 * lda + 16));
    float *B = malloc(sizeof(float) * 300 * ldb);
    float *C = malloc(sizeof(float) * 21 * ldc), *C0 = malloc(sizeof(float) * 21 * ldc);
    assert_non_null(Abuf);
    tl_fill(Abuf, 21 * lda + 16, 1, -1.0f, 1.0f);
    tl_fill(B, 300 * ldb, 2, -1.0f, 1.0f);
    tl_fill(C0, 21 * ldc, 3, -1.0f, 1.0f);
    for (int shift = 0; shift <= 3; shift += 3) {
        const float *A = Abuf + shift;
        for (int s = 0; s < nsets; s++)
            for (size_t mi = 0; mi < sizeof ms / sizeof *ms; mi++)
                for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
                    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
                        const int m = ms[mi], n = ns[ni], k = ks[ki];
                        /* gemm_nt: C = 0.5 A B^T; untouched columns keep their value */
                        memcpy(C, C0, sizeof(float) * 21 * ldc);
                        sets[s]->gemm_nt(m, n, k, 0.5f, A, lda, B, ldb, C, ldc);
                        for (int i = 0; i < m; i++) {
                            for (int j = 0; j < n; j++) {
                                double w = 0.0, a = 0.0;
                                for (int c = 0; c < k; c++) {
                                    w += (double)A[i * lda + c] * B[j * ldb + c];
                                    a += fabs((double)A[i * lda + c] * B[j * ldb + c]);
                                }
                                const double got = C[i * ldc + j];
                                if (fabs(got - 0.5 * w) > 0.5 * a * k * 1.2e-7 + 1e-30)
                                    fail_msg("gemm_nt[%s] m=%d n=%d k=%d shift %d (%d,%d): %.9g vs "
                                             "%.9g",
                                             sets[s]->isa, m, n, k, shift, i, j, got, 0.5 * w);
                            }
                            for (int j = n; j < (int)ldc; j++)
                                assert_true(C[i * ldc + j] == C0[i * ldc + j]);
                        }
                        for (int i = m; i < 21; i++) /* rows past m untouched */
                            assert_memory_equal(C + i * ldc, C0 + i * ldc, sizeof(float) * ldc);
                        /* gemm_nn_acc: C += A[m][k] B[k][n] (n as the column count) */
                        memcpy(C, C0, sizeof(float) * 21 * ldc);
                        sets[s]->gemm_nn_acc(m, n, k, A, lda, B, ldb, C, ldc);
                        for (int i = 0; i < m; i++) {
                            for (int c = 0; c < n; c++) {
                                double w = C0[i * ldc + c], a = fabs(w);
                                for (int j = 0; j < k; j++) {
                                    w += (double)A[i * lda + j] * B[j * ldb + c];
                                    a += fabs((double)A[i * lda + j] * B[j * ldb + c]);
                                }
                                if (fabs(C[i * ldc + c] - w) > a * (k + 1) * 1.2e-7 + 1e-30)
                                    fail_msg("gemm_nn_acc[%s] m=%d n=%d k=%d shift %d (%d,%d): "
                                             "%.9g vs %.9g",
                                             sets[s]->isa, m, n, k, shift, i, c, C[i * ldc + c],
                                             w);
                            }
                            for (int c = n; c < (int)ldc; c++)
                                assert_true(C[i * ldc + c] == C0[i * ldc + c]);
                        }
                    }
    }
    free(Abuf);
    free(B);
    free(C);
    free(C0);
}

/* The cap: scalar always reachable; an unknown name rejected; the API
 * refuses a context of another backend. */
static void test_isa_cap(void **state)
{
    (void)state;
    nsa_context *ctx, *ref;
    char msg[256];
    assert_int_equal(nsa_context_create("cpu", &ctx, msg, sizeof msg), NSA_OK);
    assert_int_equal(nsa_cpu_set_max_isa(ctx, "scalar"), NSA_OK);
    assert_string_equal(nsa_cpu_isa(ctx), "scalar");
    assert_int_equal(nsa_cpu_set_max_isa(ctx, "native"), NSA_OK);
    assert_string_equal(nsa_cpu_isa(ctx), sets[nsets - 1]->isa);
    /* caps order scalar < avx2 < avx512: each gives the highest usable set
     * not above it */
    static const char *caps[3] = {"avx2", "avx512", "neon"};
    for (int c = 0; c < 3; c++) {
        assert_int_equal(nsa_cpu_set_max_isa(ctx, caps[c]), NSA_OK);
        const char *want = "scalar";
        for (int s = 0; s < nsets; s++) {
            const int x86 = strcmp(caps[c], "neon") != 0;
            const char *n = sets[s]->isa;
            const int below = strcmp(n, caps[c]) == 0 ||
                              (x86 && strcmp(caps[c], "avx512") == 0 && strcmp(n, "avx2") == 0);
            if (below)
                want = n;
        }
        assert_string_equal(nsa_cpu_isa(ctx), want);
    }
    assert_int_equal(nsa_cpu_set_max_isa(ctx, "sse9"), NSA_ERR_ARG);
    assert_non_null(strstr(nsa_context_last_error(ctx), "sse9"));
    assert_int_equal(nsa_context_create("ref", &ref, msg, sizeof msg), NSA_OK);
    assert_int_equal(nsa_cpu_set_max_isa(ref, "scalar"), NSA_ERR_UNSUPPORTED);
    assert_string_equal(nsa_cpu_isa(ref), "");
    nsa_context_free(ref);
    nsa_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_error),
        cmocka_unit_test(test_exp_sum_and_max),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_max_nan),
        cmocka_unit_test(test_isa_cap),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
