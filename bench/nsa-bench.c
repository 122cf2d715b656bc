/* nsa-bench: speed of NSA against dense attention in one backend.
 *
 *   nsa-bench prefill --backend NAME [--config PRESET] [--lens 4096,8192,...]
 *                     [--runs N] [--dense-runs N] [--ref-len S] [--json]
 *   nsa-bench decode ...   (bench/bench_decode.c)
 *
 * prefill: for each length S, one sequence: the NSA operator forward
 * (phi avg + all branches), the selected branch alone (fed the forward's own
 * selection), and a flash-style dense causal attention over the same q and
 * the selected-branch k/v, all in the same backend. Reports medians of the
 * runs, GFLOP/s (2 flops per multiply-add of q.k and p.v), GB/s of K/V
 * rows read (each key row read once per query group), tokens read per
 * query and group (spec 7's counters, summed over positions) and ratios.
 * Before that, a peak FMA rate and a read bandwidth measured on the spot
 * with the same thread count. --ref-len S times the reference backend at
 * one (short) length to give the speedup over it.
 *
 * The dense baseline exists for the "cpu" and "opencl" backends, the peak
 * loops for "cpu". On "opencl" the wall times include each call's host
 * transfers (the operator API is host memory); with NSA_OPENCL_PROFILE=1
 * each length also gets the device time of the kernels, NSA (phi excluded,
 * as bench/nsa-cl-bench counts) against the dense baseline's, and their
 * ratio: the prefill target compares those. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "cpu/cpu_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#ifdef NSA_BENCH_OPENCL
#include "cl_internal.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif


static int threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static float *rnd(size_t n, uint64_t seed)
{
    float *p = malloc(sizeof(float) * n);
    if (!p) {
        fprintf(stderr, "nsa-bench: out of memory (%zu floats)\n", n);
        exit(1);
    }
    nsa_rng r = {seed};
    for (size_t i = 0; i < n; i++)
        p[i] = nsa_rng_uniform(&r);
    return p;
}

/* ------------------------------------------------------------- peaks */
static double peak_gflops(const nsa_simd_kernels *k)
{
    const long n = 50000000L; /* ~0.1 s a thread with AVX2 */
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        volatile float sink = 0.0f;
        const double t0 = bench_now();
#ifdef _OPENMP
#pragma omp parallel
#endif
        {
            float v = k->fma_loop(n);
            if (v == 12345.0f)
                sink = v;
        }
        const double dt = bench_now() - t0;
        (void)sink;
        const double fl = 2.0 * NSA_FMA_CHAINS * k->lanes * (double)n * threads();
        if (fl / dt > best)
            best = fl / dt;
    }
    return best / 1e9;
}

/* Read bandwidth: the kernels' vector max over 512 MiB, all threads, best
 * of 3 (also printed by nsa-bench decode). */
double nsa_bench_read_gbs(const nsa_simd_kernels *k);
double nsa_bench_read_gbs(const nsa_simd_kernels *k)
{
    const size_t n = (size_t)1 << 27; /* 512 MiB: far beyond the caches */
    float *a = rnd(n, 99);
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        volatile float sink = 0.0f;
        const double t0 = bench_now();
#ifdef _OPENMP
#pragma omp parallel
#endif
        {
            int nt = 1, id = 0;
#ifdef _OPENMP
            nt = omp_get_num_threads();
            id = omp_get_thread_num();
#endif
            const size_t per = n / (size_t)nt, chunk = (size_t)1 << 20;
            float m = -INFINITY;
            for (size_t o = per * id; o < per * (id + 1); o += chunk) {
                const float x = k->max(a + o, (int)(per * (id + 1) - o < chunk ? per * (id + 1) - o : chunk));
                m = x > m ? x : m;
            }
            if (m == 12345.0f)
                sink = m;
        }
        const double dt = bench_now() - t0;
        (void)sink;
        if (4.0 * n / dt > best)
            best = 4.0 * n / dt;
    }
    free(a);
    return best / 1e9;
}

/* ----------------------------------------------------------- presets */
static int preset(const char *name, nsa_config *c)
{
    *c = nsa_config_default();
    if (strcmp(name, "paper") == 0)
        return 1; /* H=64 G=4: dense is slow on two cores beyond 16k */
    if (strcmp(name, "group") == 0) { /* one GQA group of the paper */
        c->H = 16;
        c->G = 1;
        return 1;
    }
    if (strcmp(name, "small") == 0) { /* 4 heads of one group */
        c->H = 4;
        c->G = 1;
        return 1;
    }
    return 0;
}

/* ----------------------------------------------------------- prefill */
typedef struct result {
    int S;
    double t_nsa, t_slc, t_dense, t_ref;
    double k_nsa, k_dense; /* device ms of the kernels (opencl, profiling), else -1 */
    double fl_nsa, fl_slc, fl_dense;
    double tok_cmp, tok_slc, tok_win, tok_dense;
    double bytes_nsa, bytes_slc, bytes_dense;
} result;

static void fail(nsa_context *ctx, nsa_status s, const char *what)
{
    fprintf(stderr, "nsa-bench: %s: %s (%s)\n", what, nsa_strerror(s),
            ctx ? nsa_context_last_error(ctx) : "");
    exit(1);
}

/* opencl with NSA_OPENCL_PROFILE=1: the device ms of the kernels since the
 * last call (nsa_phi excluded when no_phi), and the profile reset; else -1. */
static double kernel_ms(nsa_context *ctx, int no_phi)
{
#ifdef NSA_BENCH_OPENCL
    nsa_cl_state *st = nsa_cl_state_of(ctx); /* NULL unless ctx runs opencl */
    if (st && st->profile) {
        nsa_cl_tl_flush(st, NULL, NULL); /* NSA_OPENCL_PROFILE=2: launches not yet read */
        double ns = 0.0;
        for (int i = 0; i < st->n_prof; i++)
            if (!no_phi || strncmp(st->prof[i].label, "nsa_phi", 7) != 0)
                ns += st->prof[i].ns;
        st->n_prof = 0;
        return ns / 1e6;
    }
#else
    (void)ctx;
    (void)no_phi;
#endif
    return -1.0;
}

static void bench_len(nsa_context *ctx, const nsa_config *c, int S, int runs, int dense_runs,
                      result *r)
{
    const size_t T = (size_t)S, H = (size_t)c->H, G = (size_t)c->G;
    float *q = rnd(T * H * c->dk, 1), *kc = rnd(T * G * c->dk, 2), *vc = rnd(T * G * c->dv, 3);
    float *ks = rnd(T * G * c->dk, 4), *vs = rnd(T * G * c->dv, 5);
    float *kw = rnd(T * G * c->dk, 6), *vw = rnd(T * G * c->dv, 7);
    float *gates = rnd(T * H * 3, 8);
    float *out = malloc(sizeof(float) * T * H * c->dv);
    int32_t *sel = malloc(sizeof(int32_t) * T * G * c->n);
    if (!out || !sel)
        fail(NULL, NSA_ERR_NOMEM, "buffers");
    nsa_op_args a;
    memset(&a, 0, sizeof a);
    a.T = S;
    a.B = 1;
    a.q = q;
    a.k_cmp = kc;
    a.v_cmp = vc;
    a.k_slc = ks;
    a.v_slc = vs;
    a.k_win = kw;
    a.v_win = vw;
    a.gates = gates;
    a.out = out;
    a.selection_out = sel;
    double ts[64], kt[64];
    memset(r, 0, sizeof *r);
    r->S = S;
    r->k_nsa = r->k_dense = -1.0;
    for (int i = 0; i < runs; i++) {
        kernel_ms(ctx, 1);
        const double t0 = bench_now();
        nsa_status s = nsa_attention_forward(ctx, c, &a);
        ts[i] = bench_now() - t0;
        kt[i] = kernel_ms(ctx, 1);
        if (s != NSA_OK)
            fail(ctx, s, "forward");
    }
    r->t_nsa = bench_median(ts, runs);
    r->k_nsa = kt[0] < 0 ? -1.0 : bench_median(kt, runs);

    /* tokens read (spec 7 counters) and work, per query position and group */
    const double hpg = (double)(c->H / c->G), dkv = c->dk + c->dv;
    for (int64_t t = 0; t < S; t++)
        for (int g = 0; g < c->G; g++) {
            const int32_t *row = sel + ((size_t)t * G + g) * c->n;
            double slc = 0.0;
            for (int u = 0; u < c->n; u++)
                if (row[u] >= 0) {
                    const int64_t lo = (int64_t)row[u] * c->l_sel, hi = lo + c->l_sel;
                    slc += (double)((hi < t + 1 ? hi : t + 1) - lo);
                }
            r->tok_cmp += nsa_bm_n_cmp(c, t);
            r->tok_slc += slc;
            r->tok_win += (double)(t + 1 < c->w ? t + 1 : c->w);
            r->tok_dense += (double)(t + 1);
        }
    r->fl_nsa = 2.0 * hpg * dkv * (r->tok_cmp + r->tok_slc + r->tok_win);
    r->fl_slc = 2.0 * hpg * dkv * r->tok_slc;
    r->fl_dense = 2.0 * hpg * dkv * r->tok_dense;
    r->bytes_nsa = 4.0 * dkv * (r->tok_cmp + r->tok_slc + r->tok_win);
    r->bytes_slc = 4.0 * dkv * r->tok_slc;
    r->bytes_dense = 4.0 * dkv * r->tok_dense;

#ifdef NSA_BENCH_OPENCL
    if (strcmp(nsa_context_backend(ctx), "opencl") == 0 && dense_runs > 0) {
        /* the dense causal baseline of the OpenCL backend (nsa-cl-bench's):
         * the same q and the selected branch's k, v; one warm-up run */
        nsa_batch bt;
        nsa_status s = nsa_batch_init(ctx, c, S, NULL, 1, &bt);
        if (s != NSA_OK || (s = nsa_cl_dense(ctx, c, &bt, q, ks, vs, out)) != NSA_OK)
            fail(ctx, s, "dense");
        for (int i = 0; i < dense_runs; i++) {
            kernel_ms(ctx, 0);
            const double t0 = bench_now();
            if ((s = nsa_cl_dense(ctx, c, &bt, q, ks, vs, out)) != NSA_OK)
                fail(ctx, s, "dense");
            ts[i] = bench_now() - t0;
            kt[i] = kernel_ms(ctx, 0);
        }
        r->t_dense = bench_median(ts, dense_runs);
        r->k_dense = kt[0] < 0 ? -1.0 : bench_median(kt, dense_runs);
        nsa_batch_free(&bt);
    }
#endif
    if (strcmp(nsa_context_backend(ctx), "cpu") == 0) {
        /* the selected branch alone, on the forward's own selection */
        nsa_batch bt;
        nsa_csr map = {0};
        nsa_status s = nsa_batch_init(ctx, c, S, NULL, 1, &bt);
        if (s != NSA_OK)
            fail(ctx, s, "batch");
        const int64_t C = bt.cmp_off[1];
        float *kcc = malloc(sizeof(float) * (size_t)(C + 1) * G * c->dk);
        float *vcc = malloc(sizeof(float) * (size_t)(C + 1) * G * c->dv);
        if (!kcc || !vcc || nsa_bm_map_build(c, nsa_bm_n_sel_visible(c, S - 1),
                                             nsa_bm_n_cmp(c, S - 1), &map) != NSA_OK)
            fail(ctx, NSA_ERR_NOMEM, "selected-branch setup");
        const nsa_phi avg = {NSA_PHI_AVG, 0, NULL, NULL, NULL, NULL, NULL};
        nsa_cmp_job ck = {c, &bt, kc, c->dk, &avg, kcc}, cv = {c, &bt, vc, c->dv, &avg, vcc};
        if ((s = nsa_run_compress(ctx, &ck)) != NSA_OK || (s = nsa_run_compress(ctx, &cv)) != NSA_OK)
            fail(ctx, s, "compress");
        nsa_attn_job job;
        memset(&job, 0, sizeof job);
        job.cfg = c;
        job.scale = nsa_config_scale(c);
        job.batch = &bt;
        job.map = &map;
        job.q = q;
        job.kc = kcc;
        job.vc = vcc;
        job.k_slc = ks;
        job.v_slc = vs;
        job.k_win = kw;
        job.v_win = vw;
        job.gates = gates;
        job.sel_in = sel;
        job.out = out;
        job.out_slc = out;
        for (int i = 0; i < runs; i++) {
            const double t0 = bench_now();
            if ((s = nsa_cpu_attend_part(ctx, &job, NSA_CPU_SLC)) != NSA_OK)
                fail(ctx, s, "selected branch");
            ts[i] = bench_now() - t0;
        }
        r->t_slc = bench_median(ts, runs);
        for (int i = 0; i < dense_runs; i++) {
            const double t0 = bench_now();
            if ((s = nsa_cpu_dense_attention(ctx, c, &bt, q, ks, vs, out)) != NSA_OK)
                fail(ctx, s, "dense");
            ts[i] = bench_now() - t0;
        }
        r->t_dense = dense_runs ? bench_median(ts, dense_runs) : 0.0;
        nsa_bm_map_free(&map);
        free(kcc);
        free(vcc);
        nsa_batch_free(&bt);
    }
    free(q);
    free(kc);
    free(vc);
    free(ks);
    free(vs);
    free(kw);
    free(vw);
    free(gates);
    free(out);
    free(sel);
}

/* One reference forward at length S, for the speedup over "ref". */
static double time_forward(const char *backend, const nsa_config *c, int S)
{
    nsa_context *ctx;
    char msg[256];
    nsa_status s = nsa_context_create(backend, &ctx, msg, sizeof msg);
    if (s != NSA_OK) {
        fprintf(stderr, "nsa-bench: %s\n", msg);
        exit(1);
    }
    result r;
    bench_len(ctx, c, S, 1, 0, &r);
    nsa_context_free(ctx);
    return r.t_nsa;
}

int nsa_bench_decode(int argc, char **argv); /* bench/bench_decode.c */

static void usage(void)
{
    fprintf(stderr, "usage: nsa-bench prefill --backend NAME [--config paper|group|small]\n"
                    "                 [--lens S1,S2,...] [--runs N] [--dense-runs N]\n"
                    "                 [--ref-len S] [--json]\n"
                    "       nsa-bench decode [--backend NAME] ... (nsa-bench decode --help)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "decode") == 0)
        return nsa_bench_decode(argc, argv);
    if (argc < 2 || strcmp(argv[1], "prefill") != 0)
        usage();
    const char *backend = "auto", *cfgname = "group", *lens_s = "4096,8192,16384,32768,65536";
    int runs = 3, dense_runs = 3, json = 0, ref_len = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (i + 1 < argc && strcmp(argv[i], "--backend") == 0)
            backend = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--config") == 0)
            cfgname = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--lens") == 0)
            lens_s = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--runs") == 0)
            runs = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--dense-runs") == 0)
            dense_runs = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--ref-len") == 0)
            ref_len = atoi(argv[++i]);
        else
            usage();
    }
    if (runs < 1 || runs > 64 || dense_runs < 0 || dense_runs > 64)
        usage();
    nsa_config c;
    if (!preset(cfgname, &c)) {
        fprintf(stderr, "nsa-bench: unknown --config '%s' (paper, group, small)\n", cfgname);
        return 2;
    }
    nsa_context *ctx;
    char msg[256];
    if (nsa_context_create(backend, &ctx, msg, sizeof msg) != NSA_OK) {
        fprintf(stderr, "nsa-bench: %s\n", msg);
        return 1;
    }
    const int is_cpu = strcmp(nsa_context_backend(ctx), "cpu") == 0;
    const int is_cl = strcmp(nsa_context_backend(ctx), "opencl") == 0;
    double peak = 0.0, bw = 0.0;
    if (is_cpu) {
        const nsa_simd_kernels *k = ((const nsa_cpu_state *)ctx->be_state)->k;
        peak = peak_gflops(k);
        bw = nsa_bench_read_gbs(k);
    }
    if (json)
        printf("{\"mode\":\"prefill\",\"backend\":\"%s\",\"isa\":\"%s\",\"config\":\"%s\","
               "\"H\":%d,\"G\":%d,\"dk\":%d,\"dv\":%d,\"l\":%d,\"d\":%d,\"l_sel\":%d,\"n\":%d,"
               "\"w\":%d,\"threads\":%d,\"runs\":%d,\"dense_runs\":%d,"
               "\"peak_fma_gflops\":%.2f,\"read_gbs\":%.2f,\"lengths\":[",
               nsa_context_backend(ctx), nsa_cpu_isa(ctx), cfgname, c.H, c.G, c.dk, c.dv, c.l,
               c.d, c.l_sel, c.n, c.w, threads(), runs, dense_runs, peak, bw);
    else
        printf("nsa-bench prefill: backend %s (%s), config %s (H=%d G=%d dk=%d dv=%d l=%d d=%d "
               "l'=%d n=%d w=%d), %d threads, medians of %d runs (dense %d)\n"
               "measured peak: FMA %.1f GFLOP/s, read %.1f GB/s\n"
               "%6s %9s %8s %9s %8s %9s %8s %7s %7s %8s %8s %7s %7s\n",
               nsa_context_backend(ctx), nsa_cpu_isa(ctx), cfgname, c.H, c.G, c.dk, c.dv, c.l,
               c.d, c.l_sel, c.n, c.w, threads(), runs, dense_runs, peak, bw, "S", "nsa_s",
               "GFLOP/s", "slc_s", "GFLOP/s", "dense_s", "GFLOP/s", "speedup", "slc%pk",
               "tok_nsa", "tok_dns", "tokx", "GB/s");
    int first = 1;
    for (const char *p = lens_s; *p;) {
        const int S = atoi(p);
        if (S < 1)
            usage();
        result r;
        bench_len(ctx, &c, S, runs, is_cpu || is_cl ? dense_runs : 0, &r);
        const double kx = r.k_nsa > 0 && r.k_dense > 0 ? r.k_dense / r.k_nsa : 0.0;
        const double per = (double)S * c.G; /* tokens per query position and group */
        const double g_nsa = r.fl_nsa / r.t_nsa / 1e9;
        const double g_slc = r.t_slc > 0 ? r.fl_slc / r.t_slc / 1e9 : 0.0;
        const double g_dense = r.t_dense > 0 ? r.fl_dense / r.t_dense / 1e9 : 0.0;
        const double speed = r.t_dense > 0 ? r.t_dense / r.t_nsa : 0.0;
        const double tok_nsa = (r.tok_cmp + r.tok_slc + r.tok_win) / per;
        if (json)
            printf("%s{\"S\":%d,\"nsa_s\":%.6f,\"nsa_gflops\":%.2f,\"nsa_gbs\":%.2f,"
                   "\"slc_s\":%.6f,\"slc_gflops\":%.2f,\"slc_pct_peak\":%.1f,"
                   "\"dense_s\":%.6f,\"dense_gflops\":%.2f,\"dense_gbs\":%.2f,"
                   "\"speedup_vs_dense\":%.3f,\"tokens_per_query\":{\"cmp\":%.1f,\"slc\":%.1f,"
                   "\"win\":%.1f,\"nsa\":%.1f,\"dense\":%.1f},\"token_ratio\":%.3f,"
                   "\"nsa_kernel_ms\":%.3f,\"dense_kernel_ms\":%.3f,\"kernel_speedup\":%.3f}",
                   first ? "" : ",", S, r.t_nsa, g_nsa, r.bytes_nsa * c.G / r.t_nsa / 1e9,
                   r.t_slc, g_slc, peak > 0 ? 100.0 * g_slc / peak : 0.0, r.t_dense, g_dense,
                   r.t_dense > 0 ? r.bytes_dense * c.G / r.t_dense / 1e9 : 0.0, speed,
                   r.tok_cmp / per, r.tok_slc / per, r.tok_win / per, tok_nsa,
                   r.tok_dense / per, r.tok_dense / per / tok_nsa, r.k_nsa, r.k_dense, kx);
        else
            printf("%6d %9.4f %8.1f %9.4f %8.1f %9.3f %8.1f %7.2f %6.1f%% %8.1f %8.1f %7.2f "
                   "%7.1f\n",
                   S, r.t_nsa, g_nsa, r.t_slc, g_slc, r.t_dense, g_dense, speed,
                   peak > 0 ? 100.0 * g_slc / peak : 0.0, tok_nsa, r.tok_dense / per,
                   r.tok_dense / per / tok_nsa, r.bytes_nsa * c.G / r.t_nsa / 1e9);
        if (!json && is_cl) {
            if (kx > 0)
                printf("       device kernels: nsa %.3f ms (phi excluded), dense %.3f ms, "
                       "speedup %.2fx\n",
                       r.k_nsa, r.k_dense, kx);
            else
                printf("       (wall times include the host transfers; NSA_OPENCL_PROFILE=1 "
                       "adds the kernels' device times)\n");
        }
        fflush(stdout);
        first = 0;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    if (ref_len > 0) {
        const double tb = time_forward(nsa_context_backend(ctx), &c, ref_len);
        const double tr = time_forward("ref", &c, ref_len);
        if (json)
            printf("],\"ref\":{\"S\":%d,\"backend_s\":%.6f,\"ref_s\":%.6f,\"speedup\":%.2f}}\n",
                   ref_len, tb, tr, tr / tb);
        else
            printf("operator forward at S=%d: %s %.4f s, ref %.4f s, speedup %.1fx\n", ref_len,
                   nsa_context_backend(ctx), tb, tr, tr / tb);
    } else if (json) {
        printf("]}\n");
    }
    nsa_context_free(ctx);
    return 0;
}
