/* nsa-bench decode's overlap probe (cpu): does a core read and compute at
 * the same time? The decode bound "bytes / read bandwidth" assumes the
 * arithmetic hides under the reads; this measures, for one decode chunk of
 * the configuration's shape (hpg heads, DCH keys of dk + dv floats, the
 * kernels lib/cpu/cpu_attend.c's dec_cmp_chunk runs), on every thread at
 * once:
 *   read: streaming the chunk's K and V from memory (the kernels' max),
 *   compute: the chunk's kernels (Q K^T, softmax, P V) on one chunk that
 *     stays in cache,
 *   both: the same kernels on chunks drawn from a buffer far beyond the
 *     caches.
 * both ~= read + compute says the core serializes the two; both ~= max says
 * it overlaps them. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "bench_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd/nsa_simd.h"

enum { OV_KEYS = 256, OV_REPS = 600 };

/* n floats, 64-byte aligned */
static float *ov_alloc(size_t n)
{
    return aligned_alloc(64, (sizeof(float) * n + 63) / 64 * 64);
}

static void ov_chunk(const nsa_simd_kernels *k, int hpg, int dk, int dv, const float *Q,
                     const float *K, const float *V, float *P, float *O)
{
    for (int j = 0; j < OV_KEYS; j += 32)
        k->gemm_nt(hpg, 32, dk, 0.07f, Q, (size_t)dk, K + (size_t)j * dk, (size_t)dk, P + j,
                   OV_KEYS);
    for (int i = 0; i < hpg; i++) {
        float *row = P + (size_t)i * OV_KEYS;
        k->exp_sum(row, OV_KEYS, k->max(row, OV_KEYS));
    }
    memset(O, 0, sizeof(float) * (size_t)hpg * dv);
    k->gemm_nn_acc(hpg, dv, OV_KEYS, P, OV_KEYS, V, (size_t)dv, O, (size_t)dv);
}

/* Medians in microseconds of a chunk's read, compute and both; returns 0,
 * or -1 when out of memory. */
int nsa_bench_overlap(const nsa_simd_kernels *k, int hpg, int dk, int dv, double us[3]);
int nsa_bench_overlap(const nsa_simd_kernels *k, int hpg, int dk, int dv, double us[3])
{
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    const size_t kf = (size_t)OV_KEYS * dk, vf = (size_t)OV_KEYS * dv;
    /* 512 MiB of chunks in all: far beyond the caches */
    const size_t nch = ((size_t)1 << 27) / (kf + vf) / (size_t)nth;
    if (nch < 2)
        return -1;
    /* 64-byte aligned rows, as the decode's (kf, vf are multiples of 16) */
    float *K = ov_alloc(kf * nch * nth), *V = ov_alloc(vf * nch * nth);
    double *t = malloc(sizeof(double) * 3 * OV_REPS * nth);
    int fail = !K || !V || !t;
    const int have = !fail; /* read in the region; fail is only written there */
#ifdef _OPENMP
#pragma omp parallel if (have)
#endif
    {
        int id = 0;
#ifdef _OPENMP
        id = omp_get_thread_num();
#endif
        float *Kt = have ? K + kf * nch * id : NULL, *Vt = have ? V + vf * nch * id : NULL;
        float *Q = ov_alloc((size_t)hpg * dk), *P = ov_alloc((size_t)hpg * OV_KEYS);
        float *O = ov_alloc((size_t)hpg * dv);
        if (Kt && Q && P && O) {
            unsigned s = 12345u + (unsigned)id;
            for (size_t i = 0; i < (size_t)hpg * dk; i++)
                Q[i] = (float)((s = s * 1103515245u + 12345u) >> 8) / 16777216.0f - 0.5f;
            for (size_t i = 0; i < kf * nch; i++)
                Kt[i] = (float)((s = s * 1103515245u + 12345u) >> 8) / 16777216.0f - 0.5f;
            for (size_t i = 0; i < vf * nch; i++)
                Vt[i] = (float)((s = s * 1103515245u + 12345u) >> 8) / 16777216.0f - 0.5f;
            double *tr = t + (size_t)3 * OV_REPS * id, *tc = tr + OV_REPS, *tb = tc + OV_REPS;
            volatile float sink = 0.0f;
            for (int r = 0; r < OV_REPS; r++) {
                /* chunks a stride apart, so no stream is warm */
                size_t c = ((size_t)r * 7) % nch;
                double t0 = bench_now();
                sink += k->max(Kt + kf * c, (int)kf) + k->max(Vt + vf * c, (int)vf);
                tr[r] = bench_now() - t0;
                t0 = bench_now();
                ov_chunk(k, hpg, dk, dv, Q, Kt, Vt, P, O);
                tc[r] = bench_now() - t0;
                c = ((size_t)r * 7 + 3) % nch;
                t0 = bench_now();
                ov_chunk(k, hpg, dk, dv, Q, Kt + kf * c, Vt + vf * c, P, O);
                tb[r] = bench_now() - t0;
            }
            (void)sink;
        } else {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            fail = 1;
        }
        free(Q);
        free(P);
        free(O);
    }
    if (!fail) {
        /* all threads' samples of each kind together */
        double *all = malloc(sizeof(double) * OV_REPS * nth);
        fail = !all;
        for (int kind = 0; kind < 3 && !fail; kind++) {
            for (int id = 0; id < nth; id++)
                memcpy(all + (size_t)OV_REPS * id, t + (size_t)3 * OV_REPS * id + (size_t)kind * OV_REPS,
                       sizeof(double) * OV_REPS);
            us[kind] = bench_median(all, OV_REPS * nth) * 1e6;
        }
        free(all);
    }
    free(K);
    free(V);
    free(t);
    return fail ? -1 : 0;
}
