/* Device choice (NSA_OPENCL_DEVICE) and the per-device tuning table whose
 * entries reach the kernels as -D defines. */
#include "cl_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PLATFORMS 16
#define MAX_DEVICES 64

static int has_substr_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] &&
               tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return 1;
    }
    return n == 0;
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

/* spec: NULL or "" = the first GPU or accelerator (CPU devices are skipped
 * so that "auto" does not pick a CPU OpenCL runtime over the native CPU
 * backends); "*" = the first device of any type; all digits = that index in
 * the list of all devices of all platforms (clinfo -l order); anything else =
 * the first device whose "platform / device" name contains it (any case). */
int nsa_cl_pick_device(const char *spec, cl_platform_id *plat, cl_device_id *dev, char *why,
                       size_t why_len)
{
    cl_platform_id plats[MAX_PLATFORMS];
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(MAX_PLATFORMS, plats, &np);
    if (err != CL_SUCCESS || np == 0) {
        snprintf(why, why_len, "no OpenCL platform found (clGetPlatformIDs: %s)",
                 err != CL_SUCCESS ? nsa_cl_error_name(err) : "0 platforms");
        return 0;
    }
    if (np > MAX_PLATFORMS)
        np = MAX_PLATFORMS;
    const int want_index = spec && all_digits(spec);
    const long index = want_index ? strtol(spec, NULL, 10) : -1;
    const int any = spec && strcmp(spec, "*") == 0;
    const int by_name = spec && *spec && !want_index && !any;
    int seen = 0, cpus = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_device_id devs[MAX_DEVICES];
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd) != CL_SUCCESS)
            continue;
        if (nd > MAX_DEVICES)
            nd = MAX_DEVICES;
        char pname[256] = "", dname[256] = "", full[520];
        clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, sizeof pname, pname, NULL);
        for (cl_uint i = 0; i < nd; i++, seen++) {
            cl_device_type type = 0;
            clGetDeviceInfo(devs[i], CL_DEVICE_TYPE, sizeof type, &type, NULL);
            clGetDeviceInfo(devs[i], CL_DEVICE_NAME, sizeof dname, dname, NULL);
            snprintf(full, sizeof full, "%s / %s", pname, dname);
            int ok;
            if (want_index)
                ok = seen == index;
            else if (by_name)
                ok = has_substr_ci(full, spec);
            else if (any)
                ok = 1;
            else
                ok = (type & (CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_ACCELERATOR)) != 0;
            cpus += (type & CL_DEVICE_TYPE_CPU) != 0;
            if (ok) {
                *plat = plats[p];
                *dev = devs[i];
                snprintf(why, why_len, "%s", full);
                return 1;
            }
        }
    }
    if (seen == 0)
        snprintf(why, why_len, "OpenCL platforms found but no devices");
    else if (want_index)
        snprintf(why, why_len, "NSA_OPENCL_DEVICE=%s: no such device (%d found)", spec, seen);
    else if (by_name)
        snprintf(why, why_len, "NSA_OPENCL_DEVICE=%s: no device name contains it", spec);
    else
        snprintf(why, why_len,
                 "only CPU OpenCL devices (%d); set NSA_OPENCL_DEVICE ('*', an index or "
                 "a name) to use one",
                 cpus);
    return 0;
}

/* Work-group size, largest key tile and register tiles of the group
 * attention per device class (fields of nsa_cl_state); the first matching
 * row wins. NVIDIA: 128 lanes cover the paper's 16 heads x 64 keys (one
 * selection block) in 4 x 2 logit tiles (16 lanes along keys) and 16 heads
 * x 128 dv in 4 x 4 output tiles: the fastest of the variants measured
 * on an H200 (doc/opencl.md).
 * The host halves the tile (dk = 192) or the heads when local memory is
 * short. tq: tokens a work-group of the selected branch; 0 on NVIDIA, where
 * the multi-token kernels ran slower on the benchmark's data (little block
 * sharing between neighbouring tokens, doc/opencl.md); 4 on CPU runtimes,
 * so that CI runs them. */
typedef struct tune {
    const char *vendor; /* substring of CL_DEVICE_VENDOR, NULL = any */
    cl_device_type type;
    cl_ulong min_local;
    int wg, tile, pvi, rh, rk, sk, rho, re, pe;
    int tq; /* tokens a work-group of the selected branch (-DNSA_TQ; 0: the
               single-token nsa_group_attn(_mma)) */
} tune;
static const tune tune_table[] = {
    {"NVIDIA", CL_DEVICE_TYPE_GPU, 49152, 128, 64, 2, 4, 2, 16, 4, 1, 8, 0},
    {"Advanced Micro Devices", CL_DEVICE_TYPE_GPU, 65536, 256, 64, 1, 2, 4, 8, 4, 1, 8, 0},
    {"AMD", CL_DEVICE_TYPE_GPU, 65536, 256, 64, 1, 2, 4, 8, 4, 1, 8, 0},
    {"Intel", CL_DEVICE_TYPE_GPU, 65536, 128, 64, 2, 2, 4, 8, 4, 1, 8, 0},
    {NULL, CL_DEVICE_TYPE_GPU, 32768, 64, 32, 4, 2, 4, 8, 4, 1, 8, 0},
    {NULL, CL_DEVICE_TYPE_CPU, 0, 64, 32, 4, 2, 4, 8, 4, 1, 8, 4},
    {NULL, CL_DEVICE_TYPE_ALL, 0, 64, 32, 4, 2, 4, 8, 4, 1, 8, 0},
};

void nsa_cl_options(const nsa_cl_state *st, nsa_cl_kv kv, char *buf, size_t len)
{
    snprintf(buf, len,
             "-cl-std=CL1.2 -DNSA_KV=%d -DNSA_WG=%d -DNSA_TILE=%d -DNSA_PVI=%d -DNSA_RH=%d "
             "-DNSA_RK=%d -DNSA_SK=%d -DNSA_RHO=%d -DNSA_RE=%d -DNSA_PE=%d -DNSA_NP=%d -DNSA_TQ=%d "
             "-DNSA_CSH=%d -DNSA_CSS=%d",
             (int)kv, st->wg, st->tile, st->pvi, st->rh, st->rk, st->sk, st->rho, st->re,
             st->pe, NSA_CL_NP, st->slc_tq > 1 ? st->slc_tq : 1, NSA_CL_CS_HEADS,
             NSA_CL_CS_SPAN);
    /* extra compiler options, e.g. -cl-nv-verbose (logged with NSA_VERBOSE) */
    const char *extra = getenv("NSA_OPENCL_OPTIONS");
    const size_t used = strlen(buf);
    if (extra && *extra && used + 1 < len)
        snprintf(buf + used, len - used, " %s", extra);
}

static void tune_set(nsa_cl_state *st, const tune *t)
{
    st->wg = t->wg;
    st->tile = t->tile;
    st->pvi = t->pvi;
    st->rh = t->rh;
    st->rk = t->rk;
    st->sk = t->sk;
    st->rho = t->rho;
    st->re = t->re;
    st->pe = t->pe;
    if (t->tq >= 0) /* NSA_OPENCL_TUNE (-1) keeps the table's */
        st->slc_tq = t->tq;
}

static int pow2(int v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

/* NSA_OPENCL_TUNE="wg,tile,pvi,rh,rk,sk,rho,re,pe" replaces the table's row
 * (for tuning with nsa-cl-bench); ignored unless every value is a power of
 * two up to 256 and the tile a multiple of sk rk and of NSA_CL_NP. */
static void tune_env(nsa_cl_state *st)
{
    const char *e = getenv("NSA_OPENCL_TUNE");
    int v[9];
    if (!e || sscanf(e, "%d,%d,%d,%d,%d,%d,%d,%d,%d", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                     &v[6], &v[7], &v[8]) != 9)
        return;
    for (int i = 0; i < 9; i++)
        if (!pow2(v[i]) || v[i] > 256)
            return;
    if (v[1] % (v[4] * v[5]) || v[1] % NSA_CL_NP)
        return;
    const tune t = {NULL, 0, 0, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], -1};
    tune_set(st, &t);
}

void nsa_cl_tune(nsa_cl_state *st)
{
    tune_set(st, &tune_table[sizeof tune_table / sizeof tune_table[0] - 1]);
    for (size_t i = 0; i < sizeof tune_table / sizeof tune_table[0]; i++) {
        const tune *t = &tune_table[i];
        if (t->vendor && !has_substr_ci(st->vendor, t->vendor))
            continue;
        if (!(st->type & t->type) || st->local_mem < t->min_local)
            continue;
        tune_set(st, t);
        break;
    }
    tune_env(st);
    /* NSA_OPENCL_SLC_TQ=0..8 replaces the table's tokens a work-group of
     * the selected branch (for tuning with nsa-cl-bench and for tests) */
    const char *e = getenv("NSA_OPENCL_SLC_TQ");
    if (e && *e >= '0' && *e <= '9' && atoi(e) <= 8)
        st->slc_tq = atoi(e);
    /* the reductions need a power of two the device can launch; fewer
     * lanes take more P V items each */
    while ((size_t)st->wg > st->max_wg && st->wg > 1) {
        st->wg /= 2;
        st->pvi *= 2;
    }
}
