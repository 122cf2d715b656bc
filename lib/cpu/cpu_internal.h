/* Private to the "cpu" backend (lib/cpu) and to the tests and bench that
 * reach its pieces directly. */
#ifndef NSA_CPU_INTERNAL_H
#define NSA_CPU_INTERNAL_H

#include "nsa_internal.h"
#include "simd/nsa_simd.h"

/* Instruction sets, ordered within a family (scalar < avx2 < avx512,
 * scalar < neon; the values are names, nsa_cpu_kernels_capped orders them). */
typedef enum nsa_isa {
    NSA_ISA_SCALAR = 0,
    NSA_ISA_AVX2 = 1,
    NSA_ISA_NEON = 2,
    NSA_ISA_AVX512 = 3,
    NSA_ISA_COUNT = 4
} nsa_isa;

typedef struct nsa_cpu_state {
    nsa_isa best;                /* the best set this build and processor allow */
    const nsa_simd_kernels *k;   /* the set in use: best, lowered by the cap */
    int blas;                    /* 1: linear maps on OpenBLAS (NSA_CPU_BLAS=openblas) */
    /* Decode's workspace, grown on demand and kept between calls: fresh
     * pages on every step cost ~0.1 ms at 64k (the heap is trimmed after
     * each free). A context runs one call at a time. */
    void *ws;
    size_t ws_size;
} nsa_cpu_state;

/* The best kernel set usable here: built in, and the processor and OS have
 * it (cpuid + XGETBV on x86; NEON is baseline on aarch64). why (optional)
 * gets a description of what was found. */
NSA_HIDDEN nsa_isa nsa_cpu_detect(char *why, size_t why_len);
/* "scalar", "avx2", "avx512", "neon" -> isa; -1 for an unknown name. */
NSA_HIDDEN int nsa_cpu_isa_parse(const char *name);
NSA_HIDDEN const char *nsa_cpu_isa_name(nsa_isa isa);
/* The kernels for isa, or NULL when not built in or not usable here. */
NSA_HIDDEN const nsa_simd_kernels *nsa_cpu_kernels(nsa_isa isa);
/* The set to use when the best is best and the cap is cap: the highest
 * usable set not above cap in best's family (avx512 best, avx2 cap: avx2;
 * avx2 best, avx512 cap: avx2); a cap of another family, e.g. neon on x86,
 * gives scalar. */
NSA_HIDDEN const nsa_simd_kernels *nsa_cpu_kernels_capped(nsa_isa best, nsa_isa cap);

/* C[M][N] (row stride ldc) = A[M][K] B[N][K]^T + bias[N] (bias may be
 * NULL): with blas, OpenBLAS (never called inside an OpenMP region, so it
 * may use its own threads); else the kernels spread over OpenMP threads,
 * each row's result independent of M. */
NSA_HIDDEN void nsa_cpu_gemm_nt(const nsa_simd_kernels *k, int blas, int64_t M, int N, int K,
                                const float *A, size_t lda, const float *B, size_t ldb,
                                const float *bias, float *C, size_t ldc);

/* Which branches nsa_cpu_attend_part computes (the bench times them apart). */
enum { NSA_CPU_CMP = 1, NSA_CPU_SLC = 2, NSA_CPU_WIN = 4, NSA_CPU_ALL = 7 };

NSA_HIDDEN nsa_status nsa_cpu_compress(nsa_context *ctx, const nsa_cmp_job *job);
NSA_HIDDEN nsa_status nsa_cpu_attend(nsa_context *ctx, const nsa_attn_job *job);
NSA_HIDDEN nsa_status nsa_cpu_linear(nsa_context *ctx, const nsa_linear_job *job);
/* Decode (spec 7) and its dense baseline, one item per (sequence, group). */
NSA_HIDDEN nsa_status nsa_cpu_decode_attend(nsa_context *ctx, const nsa_decode_job *job);
NSA_HIDDEN nsa_status nsa_cpu_dense_decode(nsa_context *ctx, const nsa_decode_job *job);
/* attend restricted to some branches: with NSA_CPU_SLC but not NSA_CPU_CMP
 * the selection must come from job->sel_in; out (the gated sum) is written
 * only when all three are computed. */
NSA_HIDDEN nsa_status nsa_cpu_attend_part(nsa_context *ctx, const nsa_attn_job *job,
                                          int branches);
/* Dense causal attention out[T][H][dv] over the batch, flash-style (online
 * softmax over key tiles, the same kernels and threading as NSA): the
 * baseline nsa-bench compares against. */
NSA_HIDDEN nsa_status nsa_cpu_dense_attention(nsa_context *ctx, const nsa_config *cfg,
                                              const nsa_batch *batch, const float *q,
                                              const float *k, const float *v, float *out);

#endif
