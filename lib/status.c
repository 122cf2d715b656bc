/* Status strings, failure messages and the optional verbose log. */
#include "nsa_internal.h"

#include <stdlib.h>
#include <string.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

const char *nsa_version_string(void) { return PACKAGE_VERSION; }

const char *nsa_strerror(nsa_status s)
{
    switch (s) {
    case NSA_OK: return "success";
    case NSA_ERR_NULL: return "a required pointer is NULL";
    case NSA_ERR_ZERO_SIZE: return "a size or count must be positive";
    case NSA_ERR_DIVISIBILITY: return "d must divide l and l'";
    case NSA_ERR_GQA: return "G must divide H";
    case NSA_ERR_FORCED: return "n must be >= n_init + n_local";
    case NSA_ERR_WINDOW: return "w must be >= 1";
    case NSA_ERR_SEQLENS: return "cu_seqlens must start at 0, increase strictly and end at T";
    case NSA_ERR_SCALE: return "scale must be finite and >= 0";
    case NSA_ERR_ENUM: return "unknown enum value";
    case NSA_ERR_SELECTION: return "invalid caller-given selection";
    case NSA_ERR_ARG: return "invalid argument";
    case NSA_ERR_NOMEM: return "out of memory";
    case NSA_ERR_UNAVAILABLE: return "backend unknown or unavailable";
    case NSA_ERR_UNSUPPORTED: return "operation not supported by the backend";
    case NSA_ERR_IO: return "I/O error";
    case NSA_ERR_FORMAT: return "malformed file";
    case NSA_ERR_CAPACITY: return "capacity limit reached";
    case NSA_ERR_BACKEND: return "device runtime error";
    case NSA_ERR_RANGE: return "size overflow";
    }
    return "unknown status";
}

static void vformat(char *buf, size_t len, const char *fmt, va_list ap)
{
    if (!buf || len == 0)
        return;
    vsnprintf(buf, len, fmt, ap);
}

nsa_status nsa_fail(nsa_context *ctx, nsa_status s, const char *fmt, ...)
{
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vformat(ctx->msg, sizeof ctx->msg, fmt, ap);
        va_end(ap);
        nsa_log(ctx, "error %d: %s", (int)s, ctx->msg);
    }
    return s;
}

nsa_status nsa_fail_buf(char *buf, size_t len, nsa_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vformat(buf, len, fmt, ap);
    va_end(ap);
    return s;
}

int nsa_env_verbose(void)
{
    const char *v = getenv("NSA_VERBOSE");
    return v && *v && strcmp(v, "0") != 0;
}

void nsa_log(const nsa_context *ctx, const char *fmt, ...)
{
    if (ctx ? !ctx->verbose : !nsa_env_verbose())
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("libnsa: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int nsa_mul_ok(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

uint64_t nsa_rng_next(nsa_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float nsa_rng_uniform(nsa_rng *r)
{
    /* 24 bits map exactly onto float, so every platform gets the same bits. */
    uint32_t v = (uint32_t)(nsa_rng_next(r) >> 40);
    return (float)v * (2.0f / 16777216.0f) - 1.0f;
}
