/* Program builds through an on-disk binary cache. An entry is keyed by the
 * kernel source, the build options, the device name and the driver,
 * platform and device versions; it is written atomically (temporary file,
 * then rename) and checked on load, and any entry that fails to load or
 * build is rebuilt from source and replaced, never an error.
 * NSA_OPENCL_CACHE=0 turns the cache off; NSA_OPENCL_CACHE_DIR moves it
 * (default $XDG_CACHE_HOME/libnsa/opencl, else ~/.cache/libnsa/opencl). */
#define _POSIX_C_SOURCE 200809L
#include "cl_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nsa_cl_src.h"

static const char MAGIC[] = "NSACLBIN1\n";

const char *nsa_cl_source(void) { return (const char *)nsa_cl_src_bytes; }
const char *nsa_cl_source_hash(void) { return NSA_CL_SRC_HASH; }

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV0 0xcbf29ce484222325ull

static int cache_dir(char *buf, size_t len)
{
    const char *off = getenv("NSA_OPENCL_CACHE");
    if (off && strcmp(off, "0") == 0)
        return 0;
    const char *dir = getenv("NSA_OPENCL_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"),
               *home = getenv("HOME");
    int n;
    if (dir && *dir)
        n = snprintf(buf, len, "%s", dir);
    else if (xdg && *xdg)
        n = snprintf(buf, len, "%s/libnsa/opencl", xdg);
    else if (home && *home)
        n = snprintf(buf, len, "%s/.cache/libnsa/opencl", home);
    else
        return 0;
    return n > 0 && (size_t)n < len;
}

/* mkdir -p; 1 on success. */
static int make_dirs(const char *path)
{
    char tmp[1024];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp)
        return 0;
    memcpy(tmp, path, n + 1);
    for (size_t i = 1; i <= n; i++)
        if (tmp[i] == '/' || tmp[i] == '\0') {
            char c = tmp[i];
            tmp[i] = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return 0;
            tmp[i] = c;
        }
    return 1;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

/* The binary inside a cache file, if the file is whole and for key. */
static const unsigned char *parse_entry(const char *buf, size_t len, const char *key,
                                        size_t *bin_len)
{
    size_t klen = strlen(key), m = sizeof MAGIC - 1, at = m;
    uint64_t v, sum;
    if (len < m + 8 || memcmp(buf, MAGIC, m) != 0)
        return NULL;
    memcpy(&v, buf + at, 8);
    at += 8;
    if (v != klen || len - at < klen || memcmp(buf + at, key, klen) != 0)
        return NULL;
    at += klen;
    if (len - at < 8)
        return NULL;
    memcpy(&v, buf + at, 8);
    at += 8;
    if (v == 0 || len - at < 8 || v != len - at - 8)
        return NULL;
    memcpy(&sum, buf + at + v, 8);
    if (fnv1a(FNV0, buf + at, (size_t)v) != sum)
        return NULL;
    *bin_len = (size_t)v;
    return (const unsigned char *)buf + at;
}

/* Best effort: a cache that cannot be written only costs a rebuild. */
static void write_entry(nsa_context *ctx, const char *dir, const char *path, const char *key,
                        const unsigned char *bin, size_t bin_len)
{
    static const char fail[] = "opencl: cannot write the binary cache entry %s";
    if (!make_dirs(dir)) {
        nsa_log(ctx, fail, path);
        return;
    }
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        nsa_log(ctx, fail, path);
        return;
    }
    uint64_t klen = strlen(key), blen = bin_len, sum = fnv1a(FNV0, bin, bin_len);
    int ok = fwrite(MAGIC, 1, sizeof MAGIC - 1, f) == sizeof MAGIC - 1 &&
             fwrite(&klen, 8, 1, f) == 1 && fwrite(key, 1, klen, f) == klen &&
             fwrite(&blen, 8, 1, f) == 1 && fwrite(bin, 1, bin_len, f) == bin_len &&
             fwrite(&sum, 8, 1, f) == 1;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        nsa_log(ctx, fail, path);
    }
}

static nsa_status keep_log(nsa_context *ctx, nsa_cl_state *st, cl_program prog, cl_int err)
{
    size_t n = 0;
    free(st->build_log);
    st->build_log = NULL;
    if (clGetProgramBuildInfo(prog, st->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) ==
            CL_SUCCESS &&
        (st->build_log = malloc(n + 1))) {
        if (clGetProgramBuildInfo(prog, st->device, CL_PROGRAM_BUILD_LOG, n, st->build_log,
                                  NULL) != CL_SUCCESS)
            n = 0;
        st->build_log[n] = '\0';
    }
    return nsa_fail(ctx, NSA_ERR_BACKEND,
                    "OpenCL clBuildProgram failed: %s (%d); build log (%zu bytes): %.300s",
                    nsa_cl_error_name(err), (int)err, st->build_log ? strlen(st->build_log) : 0,
                    st->build_log ? st->build_log : "(none)");
}

static cl_program from_binary(nsa_cl_state *st, const unsigned char *bin, size_t len,
                              const char *options)
{
    cl_int err, bst;
    cl_program p =
        clCreateProgramWithBinary(st->context, 1, &st->device, &len, &bin, &bst, &err);
    if (err != CL_SUCCESS || bst != CL_SUCCESS) {
        if (p)
            clReleaseProgram(p);
        return NULL;
    }
    if (clBuildProgram(p, 1, &st->device, options, NULL, NULL) != CL_SUCCESS) {
        clReleaseProgram(p);
        return NULL;
    }
    return p;
}

nsa_status nsa_cl_build(nsa_context *ctx, nsa_cl_state *st, const char *src,
                        const char *options, cl_program *out)
{
    *out = NULL;
    char dir[900], key[2048];
    int use_cache = cache_dir(dir, sizeof dir);
    st->cache_event = NSA_CL_CACHE_OFF;
    st->cache_path[0] = '\0';
    snprintf(key, sizeof key,
             "libnsa-opencl-cache 1\nsource %016llx\noptions %s\ndevice %s\n"
             "driver %s\nplatform %s\ndevice-version %s\n",
             (unsigned long long)fnv1a(FNV0, src, strlen(src)), options, st->device_name,
             st->driver_version, st->platform_version, st->device_version);
    if (use_cache) {
        snprintf(st->cache_path, sizeof st->cache_path, "%s/%016llx.bin", dir,
                 (unsigned long long)fnv1a(FNV0, key, strlen(key)));
        size_t len = 0, bin_len = 0;
        char *buf = read_file(st->cache_path, &len);
        if (buf) {
            const unsigned char *bin = parse_entry(buf, len, key, &bin_len);
            cl_program p = bin ? from_binary(st, bin, bin_len, options) : NULL;
            free(buf);
            if (p) {
                st->cache_event = NSA_CL_CACHE_HIT;
                nsa_log(ctx, "opencl: program from cache %s", st->cache_path);
                *out = p;
                return NSA_OK;
            }
            st->cache_event = NSA_CL_CACHE_REBUILT;
            nsa_log(ctx, "opencl: cache entry %s unusable: rebuilding", st->cache_path);
        } else {
            st->cache_event = NSA_CL_CACHE_MISS;
        }
    }

    cl_int err;
    cl_program p = clCreateProgramWithSource(st->context, 1, &src, NULL, &err);
    if (err != CL_SUCCESS)
        return nsa_cl_fail(ctx, "clCreateProgramWithSource", err);
    err = clBuildProgram(p, 1, &st->device, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        nsa_status s = keep_log(ctx, st, p, err);
        clReleaseProgram(p);
        return s;
    }
    if (ctx->verbose) { /* compiler notes (registers, spills with -cl-nv-verbose) */
        size_t n = 0;
        char *log = NULL;
        if (clGetProgramBuildInfo(p, st->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) ==
                CL_SUCCESS &&
            n > 1 && (log = malloc(n + 1)) &&
            clGetProgramBuildInfo(p, st->device, CL_PROGRAM_BUILD_LOG, n, log, NULL) ==
                CL_SUCCESS) {
            log[n] = '\0';
            nsa_log(ctx, "opencl: build log: %s", log);
        }
        free(log);
    }
    if (use_cache) {
        size_t bin_len = 0;
        unsigned char *bin = NULL;
        if (clGetProgramInfo(p, CL_PROGRAM_BINARY_SIZES, sizeof bin_len, &bin_len, NULL) ==
                CL_SUCCESS &&
            bin_len > 0 && (bin = malloc(bin_len)) &&
            clGetProgramInfo(p, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS)
            write_entry(ctx, dir, st->cache_path, key, bin, bin_len);
        free(bin);
    }
    *out = p;
    return NSA_OK;
}
