/* nsa-cl-bench: device time of the NSA operator's kernels on the "opencl"
 * backend against the dense causal flash baseline (the same device, the
 * same q/k/v), plus wall time of a whole nsa_attention_forward (uploads and
 * downloads included). Kernel times come from OpenCL profiling events.
 *
 *   nsa-cl-bench [-T tokens[,tokens...]] [-H heads] [-G groups] [-dk n]
 *                [-dv n] [-r reps] [-D device] [-kv fp32|fp16|bf16] [-check]
 *
 * Defaults: the paper's configuration (spec 1), T = 8192, 3 repetitions,
 * NSA_OPENCL_DEVICE (else the first GPU). Shared K/V for all branches (what
 * the baseline reads too). -check compares one run per T with the
 * reference, selection fed from it (slow for large T: the reference is
 * scalar). A summary table ends the output. */
#define _POSIX_C_SOURCE 200809L
#include "cl_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_T 16

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static float *rnd(size_t n, uint64_t seed)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    nsa_rng r = {seed};
    if (p)
        for (size_t i = 0; i < n; i++)
            p[i] = nsa_rng_uniform(&r);
    return p;
}

static double prof_sum(const nsa_cl_state *st, const char *prefix)
{
    double ns = 0;
    for (int i = 0; i < st->n_prof; i++)
        if (!prefix || strncmp(st->prof[i].label, prefix, strlen(prefix)) == 0)
            ns += st->prof[i].ns;
    return ns;
}

typedef struct result {
    int64_t T;
    double nsa_ms, dense_ms, wall_ms, err;
} result;

/* One sequence of T tokens: NSA kernels, wall time, dense baseline. */
static int run_one(nsa_context *ctx, const nsa_config *c, int64_t T, int reps, int check,
                   result *res)
{
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    const size_t th = (size_t)T * c->H, tg = (size_t)T * c->G;
    float *q = rnd(th * c->dk, 1), *k = rnd(tg * c->dk, 2), *v = rnd(tg * c->dv, 3),
          *gates = rnd(th * 3, 4), *out = malloc(sizeof(float) * th * c->dv);
    int rc = 1;
    nsa_batch b = {0};
    if (!q || !k || !v || !gates || !out) {
        fprintf(stderr, "nsa-cl-bench: out of memory at T=%lld\n", (long long)T);
        goto done;
    }
    nsa_op_args a;
    memset(&a, 0, sizeof a);
    a.T = T;
    a.q = q;
    a.k_cmp = a.k_slc = a.k_win = k;
    a.v_cmp = a.v_slc = a.v_win = v;
    a.gates = gates;
    a.out = out;
    res->T = T;
    res->err = -1;
    /* one warm-up run (first launches may compile per work-group size) */
    if (nsa_attention_forward(ctx, c, &a) != NSA_OK)
        goto fail;
    nsa_cl_tl_flush(st, NULL, NULL);
    st->n_prof = 0;
    res->wall_ms = 1e300;
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        if (nsa_attention_forward(ctx, c, &a) != NSA_OK)
            goto fail;
        double dt = now_ms() - t0;
        res->wall_ms = dt < res->wall_ms ? dt : res->wall_ms;
    }
    nsa_cl_tl_flush(st, NULL, NULL); /* NSA_OPENCL_PROFILE=2: launches not yet read */
    printf("T=%lld: nsa forward, device time per run (mean of %d):\n", (long long)T, reps);
    for (int i = 0; i < st->n_prof; i++)
        printf("  %-22s %10.3f ms\n", st->prof[i].label, st->prof[i].ns / 1e6 / reps);
    res->nsa_ms = (prof_sum(st, NULL) - prof_sum(st, "nsa_phi")) / 1e6 / reps;
    printf("  %-22s %10.3f ms (phi excluded)\n", "attention kernels", res->nsa_ms);
    printf("  %-22s %10.3f ms (best of %d, with transfers)\n", "wall", res->wall_ms, reps);

    if (nsa_batch_init(ctx, c, T, NULL, 1, &b) != NSA_OK)
        goto fail;
    for (int r = 0; r < reps + 1; r++) {
        if (r == 1) {
            nsa_cl_tl_flush(st, NULL, NULL);
            st->n_prof = 0; /* the first run warms up */
        }
        if (nsa_cl_dense(ctx, c, &b, q, k, v, out) != NSA_OK)
            goto fail;
    }
    nsa_cl_tl_flush(st, NULL, NULL);
    res->dense_ms = prof_sum(st, NULL) / 1e6 / reps;
    printf("  %-22s %10.3f ms (dense causal baseline)\n", "dense", res->dense_ms);

    if (check) {
        nsa_context *ref;
        char msg[NSA_MSG_LEN];
        float *want = malloc(sizeof(float) * th * c->dv);
        int32_t *sel = malloc(sizeof(int32_t) * tg * c->n);
        if (!want || !sel || nsa_context_create("ref", &ref, msg, sizeof msg) != NSA_OK) {
            free(want);
            free(sel);
            goto fail;
        }
        /* the reference's selection fed to both, as spec 9 asks */
        a.out = want;
        a.selection_out = sel;
        nsa_status s = nsa_attention_forward(ref, c, &a);
        a.out = out;
        a.selection_out = NULL;
        a.selection_in = sel;
        if (s == NSA_OK)
            s = nsa_attention_forward(ctx, c, &a);
        nsa_context_free(ref);
        if (s == NSA_OK) {
            double num = 0, den = 0;
            for (size_t i = 0; i < th * c->dv; i++) {
                double d = (double)out[i] - want[i];
                num += d * d;
                den += (double)want[i] * want[i];
            }
            res->err = sqrt(num / den);
            printf("  check vs ref: relative L2 %.3g\n", res->err);
        }
        free(want);
        free(sel);
        if (s != NSA_OK)
            goto fail;
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "nsa-cl-bench: T=%lld: %s\n", (long long)T, nsa_context_last_error(ctx));
done:
    nsa_batch_free(&b);
    free(q);
    free(k);
    free(v);
    free(gates);
    free(out);
    return rc;
}

int main(int argc, char **argv)
{
    nsa_config c = nsa_config_default();
    int64_t Ts[MAX_T] = {8192};
    int nT = 1, reps = 3, check = 0;
    const char *dev = NULL, *kv = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-check")) {
            check = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "nsa-cl-bench: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-T")) {
            nT = 0;
            for (const char *p = v; *p && nT < MAX_T;
                 p = strchr(p, ',') ? strchr(p, ',') + 1 : "")
                Ts[nT++] = atol(p);
        } else if (!strcmp(a, "-H"))
            c.H = atoi(v);
        else if (!strcmp(a, "-G"))
            c.G = atoi(v);
        else if (!strcmp(a, "-dk"))
            c.dk = atoi(v);
        else if (!strcmp(a, "-dv"))
            c.dv = atoi(v);
        else if (!strcmp(a, "-r"))
            reps = atoi(v);
        else if (!strcmp(a, "-D"))
            dev = v;
        else if (!strcmp(a, "-kv"))
            kv = v;
        else {
            fprintf(stderr, "nsa-cl-bench: unknown option %s\n", a);
            return 2;
        }
    }
    setenv("NSA_OPENCL_PROFILE", "1", 1);
    if (kv)
        setenv("NSA_OPENCL_KV", kv, 1);
    char msg[NSA_MSG_LEN];
    nsa_status s = nsa_config_validate(&c, msg, sizeof msg);
    int bad_t = nT < 1;
    for (int i = 0; i < nT; i++)
        bad_t |= Ts[i] < 1;
    if (s != NSA_OK || bad_t || reps < 1) {
        fprintf(stderr, "nsa-cl-bench: bad configuration: %s\n", s ? msg : "T, reps >= 1");
        return 2;
    }
    nsa_context *ctx;
    double t0 = now_ms();
    if ((s = nsa_context_create_opencl(dev, &ctx, msg, sizeof msg)) != NSA_OK) {
        fprintf(stderr, "nsa-cl-bench: %s\n", msg);
        return 1;
    }
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    printf("device: %s / %s (driver %s)\n", st->platform_name, st->device_name,
           st->driver_version);
    printf("setup: %.0f ms (program cache: %s), kv %s\n", now_ms() - t0,
           st->cache_event == NSA_CL_CACHE_HIT ? "hit" : "miss/off", kv ? kv : "fp32");
    printf(
        "tune (NSA_OPENCL_TUNE=wg,tile,pvi,rh,rk,sk,rho,re,pe): %d,%d,%d,%d,%d,%d,%d,%d,%d\n",
        st->wg, st->tile, st->pvi, st->rh, st->rk, st->sk, st->rho, st->re, st->pe);
    printf("config: H=%d G=%d dk=%d dv=%d l=%d d=%d l'=%d n=%d n_init=%d n_local=%d w=%d\n",
           c.H, c.G, c.dk, c.dv, c.l, c.d, c.l_sel, c.n, c.n_init, c.n_local, c.w);
    result res[MAX_T];
    int rc = 0, done = 0;
    for (int i = 0; i < nT && rc == 0; i++, done++)
        rc = run_one(ctx, &c, Ts[i], reps, check, &res[i]);
    printf("\n%8s %14s %14s %9s %12s%s\n", "T", "nsa_kernels_ms", "dense_ms", "speedup",
           "nsa_wall_ms", check ? "   rel_l2" : "");
    for (int i = 0; i < done - (rc != 0); i++) {
        printf("%8lld %14.3f %14.3f %8.2fx %12.1f", (long long)res[i].T, res[i].nsa_ms,
               res[i].dense_ms, res[i].dense_ms / res[i].nsa_ms, res[i].wall_ms);
        if (check)
            printf("   %.2g", res[i].err);
        printf("\n");
        if (check && !kv && !(res[i].err <= 1e-5))
            rc = 1; /* spec 9, fp32 storage only */
    }
    nsa_context_free(ctx);
    return rc;
}
