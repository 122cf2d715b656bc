/* nsa-bench decode: per-step latency and what a step reads, NSA vs dense.
 *
 *   nsa-bench decode [--backend NAME] [--config small|group|paper] [--lens 8192,...]
 *                    [--batch B] [--steps N] [--warmup W] [--json]
 *
 * For each length S: a layer and B sequences whose caches are filled with
 * S-1 random tokens (one prefill without outputs, copied to the other
 * sequences), then the first decode step (at t = S-1; it uploads the caches
 * to a device mirror), W warm-up steps and N decode steps, each timed; the
 * step column is the median of the N. W defaults to 16 on opencl, 0
 * elsewhere: on an H200 (doc/opencl.md, twelfth session) the ~10 steps
 * after the batch-16 cache upload (5.4 GB at 64k) wait up to 1 ms before
 * the device starts them, later ones ~8 us; the first step and the warm-up
 * median are printed apart. Then N dense decode passes (each new token over
 * all its t+1 raw K/V) and
 * N passes of the NSA decode attention alone (no projections) over the same
 * caches and queries, both through the backend's device mirror of the
 * caches when it has one (opencl: only q, gates and the outputs cross the
 * bus), else over the host caches. Reports the median time of each, the
 * tokens and K/V bytes a step reads per sequence and group (spec 7's
 * counters, from the state), the ratios, and the read rate: K/V bytes of
 * all sequences and groups / time. With the opencl backend and
 * NSA_OPENCL_PROFILE=1 it also reports the device time of the attention
 * kernels (profiling events, the uploads' scatter kernel excluded) and the
 * rate over that time. On the reference backend the times say little; the
 * token counts are what matter there. On the cpu backend the read
 * bandwidth is measured before the first length and after the last
 * (nsa-bench prefill's measure), and each row gets bound = NSA MB of all
 * sequences and groups / the first figure and attn / bound; the overlap
 * probe (bench/bench_overlap.c) times one decode chunk's reads, arithmetic
 * and both on every thread, and bd2 = bound + the attention's FLOPs at the
 * probe's compute rate is the bound for cores that do one at a time. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "cpu/cpu_internal.h"
#include "decode.h"
#include "layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench_util.h"
#ifdef NSA_BENCH_OPENCL
#include "cl_internal.h"
#endif

/* Device time per kernel label, summed over the timed passes. */
typedef struct kprof {
    int n;
    char label[12][32];
    double ns[12];
} kprof;

#ifdef NSA_BENCH_OPENCL
/* A decode attention kernel's label (not the cache writes) */
static int attn_kernel(const char *label)
{
    return strncmp(label, "nsa_dc_", 7) == 0 && strcmp(label, "nsa_dc_put") != 0;
}
#endif

/* Device time (ms) of the decode attention kernels since the last call
 * (opencl with NSA_OPENCL_PROFILE=1 or 2; kp, if given, gets each kernel's
 * share), else -1. span, if given, gets the time from the first of those
 * launches' start to the last one's end in the last call's launches
 * (NSA_OPENCL_PROFILE=2: the launches ran unhindered; else -1). */
static double kernel_ms(nsa_context *ctx, kprof *kp, double *span)
{
    if (span)
        *span = -1.0;
#ifdef NSA_BENCH_OPENCL
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (st && st->profile) {
        nsa_cl_tl_flush(st, NULL, NULL); /* NSA_OPENCL_PROFILE=2: launches not yet read */
        if (span && st->profile == 2 && st->n_tl_read > 0) {
            /* the attention kernels' launches only: a call's timeline also
             * holds its cache write, and q's upload runs between the two */
            cl_ulong t0 = 0, t1 = 0;
            for (int i = 0; i < st->n_tl_read; i++)
                if (attn_kernel(st->tl[i].label)) {
                    t0 = t0 == 0 || st->tl[i].t0 < t0 ? st->tl[i].t0 : t0;
                    t1 = st->tl[i].t1 > t1 ? st->tl[i].t1 : t1;
                }
            *span = t1 > t0 ? (double)(t1 - t0) / 1e6 : -1.0;
        }
        double ns = 0.0;
        for (int i = 0; i < st->n_prof; i++)
            if (attn_kernel(st->prof[i].label)) {
                ns += st->prof[i].ns;
                int j = 0;
                while (kp && j < kp->n && strcmp(kp->label[j], st->prof[i].label) != 0)
                    j++;
                if (kp && j == kp->n && j < 12) {
                    snprintf(kp->label[j], sizeof kp->label[j], "%s", st->prof[i].label);
                    kp->ns[j] = 0.0;
                    kp->n++;
                }
                if (kp && j < kp->n)
                    kp->ns[j] += st->prof[i].ns;
            }
        st->n_prof = 0;
        return ns / 1e6;
    }
#else
    (void)ctx;
    (void)kp;
#endif
    return -1.0;
}

/* With NSA_OPENCL_PROFILE=1 (opencl): the device time of every kernel
 * label since the last reset, per step, to stderr, largest first (where a
 * whole decode step's time goes: projections, RoPE, cache writes, phi,
 * the attention); then resets the profile. */
static void step_profile(nsa_context *ctx, int steps)
{
#ifdef NSA_BENCH_OPENCL
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (!st || !st->profile || steps < 1)
        return;
    nsa_cl_tl_flush(st, NULL, NULL);
    double total = 0.0;
    int done[NSA_CL_PROF_MAX] = {0};
    for (int i = 0; i < st->n_prof; i++)
        total += st->prof[i].ns;
    fprintf(stderr, "# step kernels (device ms a step, calls a step): total %.4f\n",
            total / 1e6 / steps);
    for (int k = 0; k < st->n_prof; k++) {
        int m = -1;
        for (int i = 0; i < st->n_prof; i++)
            if (!done[i] && (m < 0 || st->prof[i].ns > st->prof[m].ns))
                m = i;
        done[m] = 1;
        fprintf(stderr, "#   %-34s %9.4f %6.1f\n", st->prof[m].label,
                st->prof[m].ns / 1e6 / steps, (double)st->prof[m].calls / steps);
    }
    st->n_prof = 0;
#else
    (void)ctx;
    (void)steps;
#endif
}

/* The device's copy rate (GB/s, bytes read + written) for a 1 GiB
 * clEnqueueCopyBuffer, median of 5 (opencl), else -1: the reference of the
 * decode read rate. */
static double copy_gbs(nsa_context *ctx)
{
#ifdef NSA_BENCH_OPENCL
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (!st)
        return -1.0;
    const size_t bytes = (size_t)1 << 30;
    cl_int e1, e2;
    cl_mem a = clCreateBuffer(st->context, CL_MEM_READ_WRITE, bytes, NULL, &e1);
    cl_mem b = clCreateBuffer(st->context, CL_MEM_READ_WRITE, bytes, NULL, &e2);
    double t[6], r = -1.0;
    if (e1 == CL_SUCCESS && e2 == CL_SUCCESS) {
        int ok = 1;
        for (int i = 0; i < 6 && ok; i++) {
            const double t0 = bench_now();
            ok = clEnqueueCopyBuffer(st->queue, a, b, 0, 0, bytes, 0, NULL, NULL) ==
                     CL_SUCCESS &&
                 clFinish(st->queue) == CL_SUCCESS;
            t[i] = bench_now() - t0;
        }
        if (ok)
            r = 2.0 * (double)bytes / bench_median(t + 1, 5) * 1e-9; /* the first warms up */
    }
    if (e1 == CL_SUCCESS)
        clReleaseMemObject(a);
    if (e2 == CL_SUCCESS)
        clReleaseMemObject(b);
    return r;
#else
    (void)ctx;
    return -1.0;
#endif
}

int nsa_bench_decode(int argc, char **argv);
double nsa_bench_read_gbs(const nsa_simd_kernels *k); /* bench/nsa-bench.c */
int nsa_bench_overlap(const nsa_simd_kernels *k, int hpg, int dk, int dv,
                      double us[3]); /* bench/bench_overlap.c */


static int preset(const char *name, nsa_layer_config *c)
{
    *c = nsa_layer_config_default(); /* paper l, d, l', n, w */
    if (!strcmp(name, "paper"))
        c->D = 2048;
    else if (!strcmp(name, "group")) { /* one GQA group of the paper */
        c->attn.H = 16;
        c->attn.G = 1;
        c->D = 1024;
    }
    else if (!strcmp(name, "small")) {
        c->attn.H = 4;
        c->attn.G = 1;
        c->attn.dk = 32;
        c->attn.dv = 32;
        c->D = 128;
    } else
        return 0;
    c->rope_dim = c->attn.dk;
    return 1;
}

int nsa_bench_decode(int argc, char **argv)
{
    const char *backend = "auto", *config = "small", *lens_arg = "8192,16384,32768,65536";
    int B = 1, steps = 5, json = 0, warmup = -1; /* -1: the backend's default */
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (i + 1 < argc && !strcmp(argv[i], "--backend"))
            backend = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--config"))
            config = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--lens"))
            lens_arg = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--batch"))
            B = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--steps"))
            steps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--warmup"))
            warmup = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: nsa-bench decode [--backend NAME] [--config small|group|paper] "
                            "[--lens 8192,16384,...] [--batch B] [--steps N] [--warmup W] "
                            "[--json]\n");
            return 2;
        }
    }
    nsa_layer_config c;
    if (!preset(config, &c) || B < 1 || steps < 1) {
        fprintf(stderr, "nsa-bench decode: unknown config '%s' or bad --batch/--steps\n",
                config);
        return 2;
    }
    char msg[NSA_MSG_LEN];
    nsa_context *ctx;
    if (nsa_context_create(backend, &ctx, msg, sizeof msg) != NSA_OK) {
        fprintf(stderr, "nsa-bench decode: %s\n", msg);
        return 1;
    }
    nsa_layer *L;
    if (nsa_layer_create(ctx, &c, &L) != NSA_OK || nsa_layer_init_random(L, 1) != NSA_OK) {
        fprintf(stderr, "nsa-bench decode: %s\n", nsa_context_last_error(ctx));
        return 1;
    }
    const nsa_config *a = &c.attn;
    const size_t D = (size_t)c.D;
    const int is_cpu = strcmp(nsa_context_backend(ctx), "cpu") == 0;
    if (warmup < 0)
        warmup = strcmp(nsa_context_backend(ctx), "opencl") == 0 ? 16 : 0;
    const nsa_simd_kernels *kern = is_cpu ? ((const nsa_cpu_state *)ctx->be_state)->k : NULL;
    const double bw = is_cpu ? nsa_bench_read_gbs(kern) : 0.0;
    if (!json && is_cpu)
        printf("measured read bandwidth (before): %.1f GB/s\n", bw);
    /* the overlap probe (bench/bench_overlap.c): per thread, one decode
     * chunk's read, compute and both; the compute rate it gives turns the
     * step's FLOPs into time for the no-overlap bound */
    double ov[3] = {0.0, 0.0, 0.0}, rate = 0.0;
    const int hpg = c.attn.H / c.attn.G;
    if (is_cpu && nsa_bench_overlap(kern, hpg, c.attn.dk, c.attn.dv, ov) == 0 && ov[1] > 0) {
        int nth = 1;
#ifdef _OPENMP
        nth = omp_get_max_threads();
#endif
        const double chunk_flops = 2.0 * hpg * 256.0 * (c.attn.dk + c.attn.dv);
        rate = nth * chunk_flops / (ov[1] * 1e-6); /* FLOP/s, all threads */
        if (!json)
            printf("overlap probe, one decode chunk (%d heads, 256 keys) a thread, all threads "
                   "at once, medians: read %.1f us, compute %.1f us (%.1f GFLOP/s in all), "
                   "both %.1f us (read + compute %.1f us)\n",
                   hpg, ov[0], ov[1], rate * 1e-9, ov[2], ov[0] + ov[1]);
    }
    if (!json) {
        const double cp = copy_gbs(ctx);
        if (cp > 0)
            printf("device copy rate (1 GiB clEnqueueCopyBuffer, read + write): %.1f GB/s\n", cp);
    }
    if (!json)
        printf("nsa-bench decode: backend %s, config %s (H=%d G=%d dk=%d dv=%d D=%d l=%d d=%d "
               "l'=%d n=%d w=%d), batch %d, median of %d steps after %d warm-up steps\n"
               "%8s %11s %9s %11s %7s | %6s %6s %6s %7s %8s %7s | %10s %10s | %8s %8s | %9s %9s %8s %8s | %8s %7s | %8s %7s\n",
               nsa_context_backend(ctx), config, a->H, a->G, a->dk, a->dv, c.D, a->l, a->d,
               a->l_sel, a->n, a->w, B, steps, warmup, "S", "step ms", "attn ms", "dense ms", "speedup", "cmp",
               "slc", "win", "total", "dense", "ratio", "nsa MB", "dense MB", "attn GB/s",
               "dns GB/s", "attn k ms", "dns k ms", "k GB/s", "dk GB/s", "bound ms",
               "attn/bd", "bd2 ms", "attn/bd2");
    int rc = 0;
    for (const char *p = lens_arg; *p && rc == 0;) {
        const long S = strtol(p, (char **)&p, 10);
        if (*p == ',')
            p++;
        if (S < 2) {
            fprintf(stderr, "nsa-bench decode: lengths must be >= 2\n");
            rc = 2;
            break;
        }
        nsa_decode_state *st;
        float *x = malloc(sizeof(float) * (size_t)S * D);
        float *xt = malloc(sizeof(float) * (size_t)B * D), *yt = malloc(sizeof(float) * B * D);
        float *q = malloc(sizeof(float) * (size_t)B * a->H * a->dk);
        float *o = malloc(sizeof(float) * (size_t)B * a->H * a->dv);
        double *tn = malloc(sizeof(double) * (size_t)steps);
        double *td = malloc(sizeof(double) * (size_t)steps);
        double *ta = malloc(sizeof(double) * (size_t)steps);
        double *ka = malloc(sizeof(double) * (size_t)steps);
        double *kd = malloc(sizeof(double) * (size_t)steps);
        double *sa = malloc(sizeof(double) * (size_t)steps);
        double *sd = malloc(sizeof(double) * (size_t)steps);
        float *gates = malloc(sizeof(float) * (size_t)B * a->H * 3);
        int32_t *sel = malloc(sizeof(int32_t) * (size_t)B * a->G * a->n);
        if (!x || !xt || !yt || !q || !o || !tn || !td || !ta || !ka || !kd || !sa || !sd || !gates ||
            !sel ||
            nsa_decode_create(L, B, 0, &st) != NSA_OK) {
            fprintf(stderr, "nsa-bench decode: out of memory at S=%ld\n", S);
            return 1;
        }
        nsa_rng r = {(uint64_t)S};
        for (size_t i = 0; i < (size_t)S * D; i++)
            x[i] = nsa_rng_uniform(&r);
        if (nsa_decode_prefill(st, 0, x, S - 1, NULL) != NSA_OK)
            rc = 1;
        for (int b = 1; b < B && rc == 0; b++)
            if (nsa_decode_clone_seq(st, b, 0) != NSA_OK)
                rc = 1;
        nsa_decode_counters k0 = {0};
        double t_first = 0.0, t_warm = 0.0, *tw = malloc(sizeof(double) * (size_t)(warmup > 0 ? warmup : 1));
        if (!tw)
            rc = 1;
        /* the first step (uploads the caches), the warm-up steps, then the
         * timed steps; the kernels' profile covers the timed ones only */
        for (int s = -1 - warmup; s < steps && rc == 0; s++) {
            for (int b = 0; b < B; b++)
                memcpy(xt + (size_t)b * D, x + (size_t)(S - 1) * D, sizeof(float) * D);
            const double t0 = bench_now();
            if (nsa_decode_step(L, st, xt, yt, NULL) != NSA_OK)
                rc = 1;
            const double t = bench_now() - t0;
            if (s == -1 - warmup) {
                t_first = t;
                nsa_decode_get_counters(st, 0, 0, &k0);
            } else if (s < 0)
                tw[s + warmup] = t;
            else
                tn[s] = t;
            if (s == -1)
                kernel_ms(ctx, NULL, NULL); /* the profile from here */
        }
        if (rc == 0 && warmup > 0)
            t_warm = bench_median(tw, warmup);
        free(tw);
        step_profile(ctx, steps);
        for (size_t i = 0; i < (size_t)B * a->H * a->dk; i++)
            q[i] = nsa_rng_uniform(&r);
        for (size_t i = 0; i < (size_t)B * a->H * 3; i++)
            gates[i] = 1.0f / 3.0f;
        /* K/V bytes the attention at t = length - 1 reads: the counters of
         * the last step, which ran at that t; dense reads all t+1 tokens */
        double nsa_bytes = 0.0, dense_bytes_all = 0.0, nsa_flops = 0.0;
        for (int b = 0; b < B && rc == 0; b++)
            for (int g = 0; g < a->G; g++) {
                nsa_decode_counters k;
                if (nsa_decode_get_counters(st, b, g, &k) != NSA_OK)
                    rc = 1;
                nsa_bytes += (double)k.bytes;
                nsa_flops += 2.0 * hpg * (double)(k.cmp + k.slc + k.win) * (a->dk + a->dv);
                dense_bytes_all += (double)k.dense * (a->dk + a->dv) * 4.0;
            }
        /* one untimed pass each: device buffers of the attention */
        if (rc == 0 && (nsa_decode_attend_cached(st, q, gates, o, sel, 1) != NSA_OK ||
                        nsa_decode_attend_cached(st, q, gates, o, sel, 0) != NSA_OK))
            rc = 1;
        kernel_ms(ctx, NULL, NULL);
        kprof kp = {0};
        for (int s = 0; s < steps && rc == 0; s++) {
            double t0 = bench_now();
            if (nsa_decode_attend_cached(st, q, gates, o, sel, 1) != NSA_OK)
                rc = 1;
            td[s] = bench_now() - t0;
            kd[s] = kernel_ms(ctx, &kp, &sd[s]);
            t0 = bench_now();
            if (rc == 0 && nsa_decode_attend_cached(st, q, gates, o, sel, 0) != NSA_OK)
                rc = 1;
            ta[s] = bench_now() - t0;
            ka[s] = kernel_ms(ctx, &kp, &sa[s]);
        }
        if (rc) {
            fprintf(stderr, "nsa-bench decode: %s\n", nsa_context_last_error(ctx));
        } else {
            const double mn = bench_median(tn, steps) * 1e3, md = bench_median(td, steps) * 1e3;
            const double ma = bench_median(ta, steps) * 1e3;
            const double mka = bench_median(ka, steps), mkd = bench_median(kd, steps);
            /* GB/s = bytes / (ms 1e-3) / 1e9 */
            const double ga = nsa_bytes / ma * 1e-6, gd = dense_bytes_all / md * 1e-6;
            const double gka = mka > 0 ? nsa_bytes / mka * 1e-6 : -1.0;
            const double gkd = mkd > 0 ? dense_bytes_all / mkd * 1e-6 : -1.0;
            const int64_t tot = k0.cmp + k0.slc + k0.win;
            const double dense_bytes = (double)k0.dense * (a->dk + a->dv) * 4.0;
            /* time to read the NSA bytes at the measured bandwidth */
            /* all sequences' and groups' bytes, as attn's time covers them */
            const double bound = bw > 0 ? nsa_bytes / (bw * 1e9) * 1e3 : 0.0;
            /* the same if a core cannot compute while it reads (the probe's
             * "both" near "read + compute"): the reads, then the FLOPs at
             * the probe's compute rate */
            const double bound_ser = bw > 0 && rate > 0 ? bound + nsa_flops / rate * 1e3 : 0.0;
            if (json)
                printf("{\"mode\":\"decode\",\"backend\":\"%s\",\"config\":\"%s\",\"S\":%ld,"
                       "\"batch\":%d,\"steps\":%d,\"warmup\":%d,\"first_step_ms\":%.4f,\"nsa_ms\":%.4f,\"nsa_attn_ms\":%.4f,\"dense_ms\":%.4f,"
                       "\"cmp\":%lld,\"slc\":%lld,\"win\":%lld,\"nsa_tokens\":%lld,"
                       "\"dense_tokens\":%lld,\"nsa_bytes\":%lld,\"dense_bytes\":%.0f,"
                       "\"attn_bytes_all\":%.0f,\"dense_bytes_all\":%.0f,\"attn_gbs\":%.2f,"
                       "\"dense_gbs\":%.2f,\"attn_kernel_ms\":%.4f,\"dense_kernel_ms\":%.4f,"
                       "\"attn_kernel_gbs\":%.2f,\"dense_kernel_gbs\":%.2f,\"read_gbs\":%.2f,\"bound_ms\":%.4f,"
                       "\"attn_gflop\":%.6f,\"probe_read_us\":%.2f,\"probe_compute_us\":%.2f,"
                       "\"probe_both_us\":%.2f,\"bound_serial_ms\":%.4f}\n",
                       nsa_context_backend(ctx), config, S, B, steps, warmup, t_first * 1e3, mn, ma, md,
                       (long long)k0.cmp, (long long)k0.slc, (long long)k0.win,
                       (long long)tot, (long long)k0.dense, (long long)k0.bytes, dense_bytes,
                       nsa_bytes, dense_bytes_all, ga, gd, mka, mkd, gka, gkd, bw, bound,
                       nsa_flops * 1e-9, ov[0], ov[1], ov[2], bound_ser);
            else
                printf("%8ld %11.3f %9.3f %11.3f %6.2fx | %6lld %6lld %6lld %7lld %8lld %6.2fx | "
                       "%10.3f %10.3f | %8.1f %8.1f | %9.4f %9.4f %8.1f %8.1f | %8.3f %6.2fx | "
                       "%8.3f %6.2fx\n",
                       S, mn, ma, md, md / ma, (long long)k0.cmp, (long long)k0.slc,
                       (long long)k0.win, (long long)tot, (long long)k0.dense,
                       (double)k0.dense / (double)tot, k0.bytes / 1e6, dense_bytes / 1e6, ga, gd,
                       mka, mkd, gka, gkd, bound, bound > 0 ? ma / bound : 0.0, bound_ser,
                       bound_ser > 0 ? ma / bound_ser : 0.0);
            if (!json)
                printf("         steps: the first (uploads the caches) %.3f ms, %d warm-up "
                       "steps median %.3f ms\n",
                       t_first * 1e3, warmup, t_warm * 1e3);
            if (!json && kp.n > 0) {
                printf("         kernels, mean ms:");
                for (int i = 0; i < kp.n; i++)
                    printf(" %s %.4f", kp.label[i] + 7, kp.ns[i] / 1e6 / steps);
                printf("\n");
            }
            const double msa = bench_median(sa, steps), msd = bench_median(sd, steps);
            if (!json && msa > 0 && msd > 0)
                printf("         span (first attention kernel's start to the last one's end, NSA_OPENCL_PROFILE=2), "
                       "median ms: NSA %.4f (%.1f GB/s), dense %.4f (%.1f GB/s)\n",
                       msa, nsa_bytes / msa * 1e-6, msd, dense_bytes_all / msd * 1e-6);
            fflush(stdout);
        }
        nsa_decode_free(st);
        free(x);
        free(xt);
        free(yt);
        free(q);
        free(o);
        free(tn);
        free(td);
        free(ta);
        free(ka);
        free(kd);
        free(sa);
        free(sd);
        free(gates);
        free(sel);
    }
    if (!json && rc == 0 && is_cpu)
        printf("measured read bandwidth (after): %.1f GB/s\n", nsa_bench_read_gbs(kern));
    if (!json && rc == 0)
        printf("step: a whole nsa_decode_step (projections, caches, attention, Wo); attn: the "
               "NSA decode attention alone;\ndense: dense decode attention alone; speedup = "
               "dense / attn. Tokens and MB are per sequence and group for\nthe step at "
               "t = S-1 (K and V bytes read); dense reads S tokens.\nGB/s: K/V bytes of all sequences "
               "and groups (fp32) / the wall time of attn and dense;\nk ms, k GB/s: device time of "
               "the attention kernels (NSA_OPENCL_PROFILE=1 or 2, opencl; -1 otherwise);\nbound: the NSA K/V bytes of all sequences and groups at the read bandwidth measured before (cpu);\n"
               "attn/bd = attn / bound; bd2: bound plus the attention's FLOPs at the overlap probe's compute rate\n"
               "(the time if a core cannot read and compute at once), attn/bd2 = attn / bd2.\n");
    nsa_layer_free(L);
    nsa_context_free(ctx);
    return rc;
}
