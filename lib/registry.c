/* The backend registry (the library's only global state: a constant array)
 * and contexts. Backends are listed best first; "ref" is always last, and
 * "auto" takes the first that probes and starts. */
#include "nsa_internal.h"

#include <stdlib.h>
#include <string.h>

#ifdef NSA_WITH_CPU
extern NSA_HIDDEN const nsa_backend_ops nsa_backend_cpu;
#endif
#ifdef NSA_WITH_OPENCL
extern NSA_HIDDEN const nsa_backend_ops nsa_backend_opencl;
#endif

static const nsa_backend_ops *const registry[] = {
#ifdef NSA_WITH_OPENCL
    &nsa_backend_opencl,
#endif
#ifdef NSA_WITH_CPU
    &nsa_backend_cpu,
#endif
    &nsa_backend_ref,
};
#define N_BACKENDS ((int)(sizeof registry / sizeof registry[0]))

int nsa_backend_count(void) { return N_BACKENDS; }

static int probe(const nsa_backend_ops *be, char *why, size_t len)
{
    if (why && len)
        why[0] = '\0';
    return be->probe ? be->probe(why, len) : 1;
}

nsa_status nsa_backend_get_info(int index, nsa_backend_info *info)
{
    if (!info)
        return NSA_ERR_NULL;
    if (index < 0 || index >= N_BACKENDS)
        return NSA_ERR_ARG;
    const nsa_backend_ops *be = registry[index];
    info->name = be->name;
    info->description = be->description;
    info->available = probe(be, info->reason, sizeof info->reason);
    return NSA_OK;
}

const nsa_backend_ops *nsa_registry_find(const char *name)
{
    for (int i = 0; i < N_BACKENDS; i++)
        if (strcmp(registry[i]->name, name) == 0)
            return registry[i];
    return NULL;
}

static void list_names(char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < N_BACKENDS && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
                                 registry[i]->name);
}

/* A context on backend be, started by init_on(ctx, state, arg) or, when
 * that is NULL, by be->init; on failure msg says why. */
nsa_status nsa_context_start(const nsa_backend_ops *be, nsa_init_on_fn init_on, const char *arg,
                             nsa_context **out, char *msg, size_t msg_len)
{
    nsa_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return nsa_fail_buf(msg, msg_len, NSA_ERR_NOMEM, "out of memory for the context");
    ctx->be = be;
    ctx->verbose = nsa_env_verbose();
    nsa_status s = NSA_OK;
    if (init_on)
        s = init_on(ctx, &ctx->be_state, arg);
    else if (be->init)
        s = be->init(ctx, &ctx->be_state);
    if (s != NSA_OK) {
        nsa_fail_buf(msg, msg_len, s, "backend '%s' failed to start: %s", be->name, ctx->msg);
        free(ctx);
        return s;
    }
    nsa_log(ctx, "using backend '%s'", be->name);
    if (msg && msg_len)
        msg[0] = '\0';
    *out = ctx;
    return NSA_OK;
}

nsa_status nsa_context_create(const char *backend, nsa_context **out, char *msg,
                              size_t msg_len)
{
    if (!out)
        return nsa_fail_buf(msg, msg_len, NSA_ERR_NULL, "out is NULL");
    *out = NULL;
    int verbose = nsa_env_verbose();
    const char *env = getenv("NSA_BACKEND");
    const char *want = backend ? backend : "auto";
    if (strcmp(want, "auto") == 0 && env && *env)
        want = env; /* the environment overrides "auto" only */

    if (strcmp(want, "auto") != 0) {
        const nsa_backend_ops *be = nsa_registry_find(want);
        char why[160];
        if (!be) {
            char names[256];
            list_names(names, sizeof names);
            return nsa_fail_buf(msg, msg_len, NSA_ERR_UNAVAILABLE,
                                "unknown backend '%s' (registered: %s)", want, names);
        }
        if (!probe(be, why, sizeof why))
            return nsa_fail_buf(msg, msg_len, NSA_ERR_UNAVAILABLE,
                                "backend '%s' is not available here: %s", want, why);
        return nsa_context_start(be, NULL, NULL, out, msg, msg_len);
    }
    /* auto: the first backend that probes and starts; one that probes but
     * fails to start (e.g. an OpenCL device that cannot run a core kernel)
     * is skipped like one that does not probe. "ref" always starts. */
    nsa_status s = NSA_ERR_UNAVAILABLE;
    for (int i = 0; i < N_BACKENDS; i++) {
        char why[160];
        if (!probe(registry[i], why, sizeof why)) {
            if (verbose)
                fprintf(stderr, "libnsa: auto: skipping '%s': %s\n", registry[i]->name, why);
            continue;
        }
        s = nsa_context_start(registry[i], NULL, NULL, out, msg, msg_len);
        if (s == NSA_OK || s == NSA_ERR_NOMEM)
            return s;
        if (verbose)
            fprintf(stderr, "libnsa: auto: skipping '%s': %s\n", registry[i]->name,
                    msg && msg_len ? msg : "failed to start");
    }
    return s;
}

void nsa_context_free(nsa_context *ctx)
{
    if (!ctx)
        return;
    if (ctx->be->fini)
        ctx->be->fini(ctx->be_state);
    free(ctx);
}

const char *nsa_context_backend(const nsa_context *ctx) { return ctx ? ctx->be->name : ""; }

const char *nsa_context_last_error(const nsa_context *ctx) { return ctx ? ctx->msg : ""; }

/* Pieces a backend leaves NULL run on the reference (linear_many: one
 * linear job each). The log says so once per context and piece, not on
 * every call: a layer runs its projections on each forward and each decode
 * step. "ref" falls back to nothing, so it says nothing. */
enum {
    FB_COMPRESS = 1u << 0,
    FB_ATTEND = 1u << 1,
    FB_LINEAR = 1u << 2,
    FB_LINEAR_MANY = 1u << 3,
    FB_DECODE_ATTEND = 1u << 4,
    FB_DENSE_DECODE = 1u << 5,
};

static void log_fallback(nsa_context *ctx, unsigned piece, const char *what, const char *instead)
{
    if (ctx->be == &nsa_backend_ref || !ctx->verbose || (ctx->fallback_logged & piece))
        return;
    ctx->fallback_logged |= piece;
    nsa_log(ctx, "backend '%s' has no %s: %s", ctx->be->name, what, instead);
}

nsa_status nsa_run_compress(nsa_context *ctx, const nsa_cmp_job *job)
{
    if (ctx->be->compress)
        return ctx->be->compress(ctx, job);
    log_fallback(ctx, FB_COMPRESS, "compress", "using ref");
    return nsa_ref_compress(ctx, job);
}

nsa_status nsa_run_attend(nsa_context *ctx, const nsa_attn_job *job)
{
    if (ctx->be->attend)
        return ctx->be->attend(ctx, job);
    log_fallback(ctx, FB_ATTEND, "attend", "using ref");
    return nsa_ref_attend(ctx, job);
}

nsa_status nsa_run_linear(nsa_context *ctx, const nsa_linear_job *job)
{
    if (ctx->be->linear)
        return ctx->be->linear(ctx, job);
    log_fallback(ctx, FB_LINEAR, "linear", "using ref");
    return nsa_ref_linear(ctx, job);
}

nsa_status nsa_run_linear_many(nsa_context *ctx, const nsa_linear_job *jobs, int n)
{
    if (ctx->be->linear_many)
        return ctx->be->linear_many(ctx, jobs, n);
    log_fallback(ctx, FB_LINEAR_MANY, "linear_many", "one linear job each");
    nsa_status s = NSA_OK;
    for (int i = 0; i < n && s == NSA_OK; i++)
        s = nsa_run_linear(ctx, &jobs[i]);
    return s;
}

nsa_status nsa_run_decode_attend(nsa_context *ctx, const nsa_decode_job *job)
{
    if (ctx->be->decode_attend)
        return ctx->be->decode_attend(ctx, job);
    log_fallback(ctx, FB_DECODE_ATTEND, "decode_attend", "using ref");
    return nsa_ref_decode_attend(ctx, job);
}

nsa_status nsa_run_dense_decode(nsa_context *ctx, const nsa_decode_job *job)
{
    if (ctx->be->dense_decode)
        return ctx->be->dense_decode(ctx, job);
    log_fallback(ctx, FB_DENSE_DECODE, "dense_decode", "using ref");
    return nsa_ref_dense_decode(ctx, job);
}
