/* The "cpu" backend: its registry entry, context state (the kernel set in
 * use), the ISA cap, phi and the linear layers. The attention itself is in
 * cpu_attend.c. */
#include "cpu/cpu_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef NSA_HAVE_OPENBLAS
#include <cblas.h>
#endif

static int cpu_probe(char *why, size_t len)
{
    char found[128];
    nsa_cpu_detect(found, sizeof found);
    snprintf(why, len, "%s, %s, %s", found,
#ifdef _OPENMP
             "OpenMP",
#else
             "one thread (built without OpenMP)",
#endif
#ifdef NSA_HAVE_OPENBLAS
             "own GEMM (OpenBLAS with NSA_CPU_BLAS=openblas)"
#else
             "own GEMM (built without OpenBLAS)"
#endif
    );
    return 1;
}

static nsa_status cpu_init(nsa_context *ctx, void **state)
{
    nsa_cpu_state *st = calloc(1, sizeof *st);
    if (!st)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the cpu backend");
    st->best = nsa_cpu_detect(NULL, 0);
    st->k = nsa_cpu_kernels(st->best);
    const char *cap = getenv("NSA_MAX_ISA");
    if (cap && *cap && strcmp(cap, "native") != 0) {
        int isa = nsa_cpu_isa_parse(cap);
        if (isa < 0) {
            free(st);
            return nsa_fail(ctx, NSA_ERR_ARG,
                            "NSA_MAX_ISA='%s' must be scalar, avx2, avx512, neon or native", cap);
        }
        st->k = nsa_cpu_kernels_capped(st->best, (nsa_isa)isa);
    }
    /* The default GEMM gives each row the same bits whatever the batch
     * (decode's compressed tokens equal prefill's exactly); OpenBLAS is
     * faster on big batches but its rounding depends on the row count. */
    const char *blas = getenv("NSA_CPU_BLAS");
    if (blas && *blas && strcmp(blas, "own") != 0) {
        if (strcmp(blas, "openblas") != 0) {
            free(st);
            return nsa_fail(ctx, NSA_ERR_ARG, "NSA_CPU_BLAS='%s' must be own or openblas", blas);
        }
#ifdef NSA_HAVE_OPENBLAS
        st->blas = 1;
#else
        free(st);
        return nsa_fail(ctx, NSA_ERR_UNAVAILABLE,
                        "NSA_CPU_BLAS=openblas, but libnsa was built without OpenBLAS");
#endif
    }
    nsa_log(ctx, "cpu: kernels '%s' (best here: '%s'), linear on %s", st->k->isa,
            nsa_cpu_isa_name(st->best), st->blas ? "OpenBLAS" : "own GEMM");
    *state = st;
    return NSA_OK;
}

static void cpu_fini(void *state)
{
    nsa_cpu_state *st = state;
    if (st)
        free(st->ws);
    free(st);
}

const nsa_backend_ops nsa_backend_cpu = {
    .name = "cpu",
    .description = "CPU: SIMD kernels (AVX-512 / AVX2+FMA / NEON / scalar), OpenMP, OpenBLAS",
    .probe = cpu_probe,
    .init = cpu_init,
    .fini = cpu_fini,
    .compress = nsa_cpu_compress,
    .attend = nsa_cpu_attend,
    .linear = nsa_cpu_linear,
    .decode_attend = nsa_cpu_decode_attend,
    .dense_decode = nsa_cpu_dense_decode,
};

nsa_status nsa_cpu_set_max_isa(nsa_context *ctx, const char *isa)
{
    if (!ctx)
        return NSA_ERR_NULL;
    if (ctx->be != &nsa_backend_cpu)
        return nsa_fail(ctx, NSA_ERR_UNSUPPORTED,
                        "nsa_cpu_set_max_isa: the context's backend is '%s', not 'cpu'",
                        ctx->be->name);
    nsa_cpu_state *st = ctx->be_state;
    if (!isa || strcmp(isa, "native") == 0) {
        st->k = nsa_cpu_kernels(st->best);
        return NSA_OK;
    }
    int i = nsa_cpu_isa_parse(isa);
    if (i < 0)
        return nsa_fail(ctx, NSA_ERR_ARG, "isa '%s' must be scalar, avx2, avx512, neon or native", isa);
    st->k = nsa_cpu_kernels_capped(st->best, (nsa_isa)i);
    return NSA_OK;
}

const char *nsa_cpu_isa(const nsa_context *ctx)
{
    if (!ctx || ctx->be != &nsa_backend_cpu)
        return "";
    return ((const nsa_cpu_state *)ctx->be_state)->k->isa;
}

/* ------------------------------------------------------------- GEMM */
/* The kernels' GEMM over OpenMP threads. Each element's sum runs in the
 * same order whatever M is, so a row's result does not depend on which
 * other rows come with it (decode emits compressed tokens one at a time
 * and must match prefill bit for bit). */
static void own_gemm_nt(const nsa_simd_kernels *k, int64_t M, int N, int K, const float *A,
                        size_t lda, const float *B, size_t ldb, const float *bias, float *C,
                        size_t ldc)
{
    const int64_t RB = 48; /* rows a task (16 row tiles): B streams once per task */
    const int64_t tasks = (M + RB - 1) / RB;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1)
#endif
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t r0 = t * RB;
        const int m = (int)(M - r0 < RB ? M - r0 : RB);
        float *c = C + (size_t)r0 * ldc;
        k->gemm_nt(m, N, K, 1.0f, A + (size_t)r0 * lda, lda, B, ldb, c, ldc);
        if (bias)
            for (int r = 0; r < m; r++)
                for (int e = 0; e < N; e++)
                    c[(size_t)r * ldc + e] += bias[e];
    }
}

void nsa_cpu_gemm_nt(const nsa_simd_kernels *k, int blas, int64_t M, int N, int K,
                     const float *A, size_t lda, const float *B, size_t ldb, const float *bias,
                     float *C, size_t ldc)
{
#ifdef NSA_HAVE_OPENBLAS
    if (!blas) {
        own_gemm_nt(k, M, N, K, A, lda, B, ldb, bias, C, ldc);
        return;
    }
    /* cblas takes int sizes: go in slices of rows. */
    const int64_t step = 1 << 20;
    for (int64_t r0 = 0; r0 < M; r0 += step) {
        const int m = (int)(M - r0 < step ? M - r0 : step);
        float *c = C + (size_t)r0 * ldc;
        if (bias)
            for (int r = 0; r < m; r++)
                memcpy(c + (size_t)r * ldc, bias, sizeof(float) * (size_t)N);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, N, K, 1.0f,
                    A + (size_t)r0 * lda, (int)lda, B, (int)ldb, bias ? 1.0f : 0.0f, c,
                    (int)ldc);
    }
#else
    (void)blas;
    own_gemm_nt(k, M, N, K, A, lda, B, ldb, bias, C, ldc);
#endif
}

static const nsa_simd_kernels *kernels_of(const nsa_context *ctx)
{
    return ((const nsa_cpu_state *)ctx->be_state)->k;
}

nsa_status nsa_cpu_linear(nsa_context *ctx, const nsa_linear_job *j)
{
    const nsa_cpu_state *st = ctx->be_state;
    nsa_cpu_gemm_nt(st->k, st->blas, j->rows, j->out, j->in, j->x, (size_t)j->in, j->w,
                    (size_t)j->in, j->b, j->y, (size_t)j->out);
    return NSA_OK;
}

/* ------------------------------------------------------------ phi (spec 2) */
/* avg: mean over the block of x + pe, each compressed token on its own. */
static void phi_avg(const nsa_cmp_job *job, int b)
{
    const nsa_config *c = job->cfg;
    const int G = c->G, l = c->l, dim = job->dim;
    const int64_t base = job->batch->cu[b], off = job->batch->cmp_off[b];
    const int64_t nc = job->batch->cmp_off[b + 1] - off;
    const float inv_l = 1.0f / (float)l;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t i = 0; i < nc; i++)
        for (int g = 0; g < G; g++) {
            float *dst = job->out + ((size_t)(off + i) * G + g) * dim;
            for (int e = 0; e < dim; e++)
                dst[e] = 0.0f;
            for (int j = 0; j < l; j++) {
                const float *x = job->x + ((size_t)(base + i * c->d + j) * G + g) * dim;
                for (int e = 0; e < dim; e++)
                    dst[e] += x[e];
                if (job->phi->pe) {
                    const float *pe = job->phi->pe + ((size_t)g * l + j) * dim;
                    for (int e = 0; e < dim; e++)
                        dst[e] += pe[e];
                }
            }
            for (int e = 0; e < dim; e++)
                dst[e] *= inv_l;
        }
}

/* mlp: gather z for a slice of compressed tokens of one group, then one or
 * two GEMMs (W1, SiLU, W2) straight into the output rows. The kernels' own
 * GEMM, not OpenBLAS: a compressed token must come out the same bits
 * whether phi sees it alone (decode) or with many (prefill). */
#define PHI_ROWS 256

static nsa_status phi_mlp(nsa_context *ctx, const nsa_cmp_job *job, int b)
{
    const nsa_config *c = job->cfg;
    const nsa_phi *phi = job->phi;
    const int G = c->G, l = c->l, dim = job->dim, hid = phi->hidden;
    const size_t L = (size_t)l * (size_t)dim;
    const int64_t base = job->batch->cu[b], off = job->batch->cmp_off[b];
    const int64_t nc = job->batch->cmp_off[b + 1] - off;
    const size_t ldo = (size_t)G * dim;
    float *z = malloc(sizeof(float) * PHI_ROWS * L);
    float *h = hid ? malloc(sizeof(float) * PHI_ROWS * (size_t)hid) : NULL;
    if (!z || (hid && !h)) {
        free(z);
        free(h);
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in the cpu phi");
    }
    const nsa_simd_kernels *k = kernels_of(ctx);
    for (int g = 0; g < G; g++)
        for (int64_t i0 = 0; i0 < nc; i0 += PHI_ROWS) {
            const int rows = (int)(nc - i0 < PHI_ROWS ? nc - i0 : PHI_ROWS);
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < l; j++) {
                    const float *x =
                        job->x + ((size_t)(base + (i0 + r) * c->d + j) * G + g) * dim;
                    float *zz = z + (size_t)r * L + (size_t)j * dim;
                    const float *pe = phi->pe ? phi->pe + ((size_t)g * l + j) * dim : NULL;
                    for (int e = 0; e < dim; e++)
                        zz[e] = x[e] + (pe ? pe[e] : 0.0f);
                }
            float *dst = job->out + (size_t)(off + i0) * ldo + (size_t)g * dim;
            if (hid == 0) {
                own_gemm_nt(k, rows, dim, (int)L, z, L, phi->w1 + (size_t)g * dim * L, L,
                            phi->b1 ? phi->b1 + (size_t)g * dim : NULL, dst, ldo);
                continue;
            }
            own_gemm_nt(k, rows, hid, (int)L, z, L, phi->w1 + (size_t)g * hid * L, L,
                        phi->b1 ? phi->b1 + (size_t)g * hid : NULL, h, (size_t)hid);
            for (size_t e = 0; e < (size_t)rows * hid; e++)
                h[e] = h[e] / (1.0f + expf(-h[e]));
            own_gemm_nt(k, rows, dim, hid, h, (size_t)hid, phi->w2 + (size_t)g * dim * hid,
                        (size_t)hid, phi->b2 ? phi->b2 + (size_t)g * dim : NULL, dst, ldo);
        }
    free(z);
    free(h);
    return NSA_OK;
}

nsa_status nsa_cpu_compress(nsa_context *ctx, const nsa_cmp_job *job)
{
    for (int b = 0; b < job->batch->B; b++) {
        if (job->phi->kind == NSA_PHI_AVG) {
            phi_avg(job, b);
        } else {
            nsa_status s = phi_mlp(ctx, job, b);
            if (s != NSA_OK)
                return s;
        }
    }
    return NSA_OK;
}
