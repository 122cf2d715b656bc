/* The "opencl" backend: its registry entry, device state (init, fini), and
 * the kernels of each storage kind. The jobs run as kernels from cl/
 * (upload, run, download: the operator API works on host memory): phi in
 * cl_phi.c, attention in cl_attend.c, linear in cl_linear.c, decode over
 * device-resident caches in cl_decode.c. Environment:
 * NSA_OPENCL_DEVICE picks the device (see nsa_cl_pick_device),
 * NSA_OPENCL_KV=fp32|fp16|bf16 the K/V storage, NSA_OPENCL_LM_WARPS the
 * warps of nsa_linear_rows_mma (tuning), NSA_OPENCL_PROFILE=1 times
 * every kernel, NSA_OPENCL_UNUSABLE=name,... marks kernels unusable (tests:
 * the optional-kernel rule, see nsa_cl_feat). */
#include "cl_internal.h"
#include "cl_weights.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static const char *const kernel_names[NSA_CLK_COUNT] = {
    "nsa_phi_avg", "nsa_phi_lin",    "nsa_phi_out", "nsa_cmp_scores",
    "nsa_topn",    "nsa_group_attn", "nsa_gate",    "nsa_linear",
    "nsa_linear_rows",
    "nsa_dc_partial", "nsa_dc_prob", "nsa_dc_select", "nsa_dc_final", "nsa_dc_put",
    "nsa_ds_rope",    "nsa_ds_gate",
    "nsa_slc_attn",   "nsa_ds_silu", "nsa_dr_rope", "nsa_dr_angles",
    "nsa_cmp_scores_wg",
    "nsa_dc_put_step", "nsa_dc_get", "nsa_dc_ring_put", "nsa_dc_ring_gather", "nsa_dr_rope_cmp",
    "nsa_linear_few", "nsa_dr_rope_keys"};

static int cl_probe(char *why, size_t len)
{
    cl_platform_id p;
    cl_device_id d;
    return nsa_cl_pick_device(getenv("NSA_OPENCL_DEVICE"), &p, &d, why, len);
}

static void cl_fini(void *state)
{
    nsa_cl_state *st = state;
    if (!st)
        return;
    for (int kv = 0; kv < NSA_CL_KV_COUNT; kv++) {
        for (int k = 0; k < NSA_CLK_COUNT; k++)
            if (st->kernel[kv][k])
                clReleaseKernel(st->kernel[kv][k]);
        if (st->program[kv])
            clReleaseProgram(st->program[kv]);
        for (int k = 0; k < NSA_CLM_COUNT; k++)
            if (st->mma_kernel[kv][k])
                clReleaseKernel(st->mma_kernel[kv][k]);
        if (st->mma_program[kv])
            clReleaseProgram(st->mma_program[kv]);
    }
    nsa_cl_tl_flush(st, NULL, NULL); /* releases the timeline's events */
    if (st->queue)
        clReleaseCommandQueue(st->queue);
    if (st->context)
        clReleaseContext(st->context);
    free(st->build_log);
    free(st);
}

/* By name, so that a new decode kernel is optional without a second list. */
nsa_cl_feat nsa_cl_kernel_feat(int k)
{
    const char *n = kernel_names[k];
    if (strncmp(n, "nsa_dc_", 7) == 0)
        return NSA_CLF_DECODE;
    if (strncmp(n, "nsa_ds_", 7) == 0)
        return NSA_CLF_STEP;
    if (strcmp(n, "nsa_linear_rows") == 0 || strcmp(n, "nsa_linear_few") == 0)
        return NSA_CLF_ROWS;
    if (strncmp(n, "nsa_dr_", 7) == 0)
        return NSA_CLF_ROPE64;
    return NSA_CLF_CORE;
}

/* Each feature, and what runs without it (logged). */
static const char *const feat_what[] = {"the backend", "the decode cache mirror",
                                        "the fused decode step", "few-row linears",
                                        "RoPE angles in double on the device"};
static const char *const feat_instead[] = {"", "decode attends over the host caches",
                                           "q, gates and Wo run as separate jobs",
                                           "nsa_linear runs them",
                                           "the host computes them for the fused step"};
_Static_assert(sizeof feat_what / sizeof feat_what[0] == NSA_CLF_ROPE64 + 1 &&
                   sizeof feat_instead / sizeof feat_instead[0] == NSA_CLF_ROPE64 + 1,
               "one entry per nsa_cl_feat");

/* 1 if name is an item of the comma-separated list. */
static int listed(const char *list, const char *name)
{
    const size_t n = strlen(name);
    while (list && *list) {
        const char *end = strchr(list, ',');
        const size_t len = end ? (size_t)(end - list) : strlen(list);
        if (len == n && strncmp(list, name, n) == 0)
            return 1;
        list = end ? end + 1 : NULL;
    }
    return 0;
}

/* Kernel name of prog in *out if it can run here with work-groups of
 * need lanes; else NULL and why. */
static void make_kernel(nsa_cl_state *st, cl_program prog, const char *name, size_t need,
                        cl_kernel *out, char *why, size_t len)
{
    *out = NULL;
    why[0] = '\0';
    if (listed(getenv("NSA_OPENCL_UNUSABLE"), name)) {
        snprintf(why, len, "listed in NSA_OPENCL_UNUSABLE");
        return;
    }
    cl_int err;
    cl_kernel kr = clCreateKernel(prog, name, &err);
    if (err != CL_SUCCESS) {
        snprintf(why, len, "clCreateKernel failed: %s (%d)", nsa_cl_error_name(err), (int)err);
        return;
    }
    size_t most = 0;
    err = clGetKernelWorkGroupInfo(kr, st->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof most,
                                   &most, NULL);
    if (err != CL_SUCCESS)
        snprintf(why, len, "clGetKernelWorkGroupInfo failed: %s (%d)", nsa_cl_error_name(err),
                 (int)err);
    else if (most < need)
        snprintf(why, len, "allows work-groups of %zu, libnsa needs %zu", most, need);
    else
        *out = kr;
    if (!*out)
        clReleaseKernel(kr);
}


static const char *const mma_names[NSA_CLM_COUNT] = {
    "nsa_dc_partial_mma", "nsa_group_attn_mma", "nsa_slc_attn_mma", "nsa_linear_rows_mma"};

/* The tensor-core program (cl/mma_frag.cl) of storage kv where the
 * device is NVIDIA of compute capability >= 8.0 with work-groups of 32 ..
 * 256 lanes and NSA_OPENCL_MMA is not 0: the source built again with
 * -DNSA_MMA=1 (through the binary cache). Its kernels are optional: a
 * failed build or an unusable kernel leaves the portable kernel in use
 * (why kept in st->mma_why and logged), never an error. */
static void mma_init(nsa_context *ctx, nsa_cl_state *st, nsa_cl_kv kv)
{
    const char *env = getenv("NSA_OPENCL_MMA"), *why = NULL;
    cl_uint major = 0;
    if (env && strcmp(env, "0") == 0)
        why = "NSA_OPENCL_MMA=0";
    else if (!strstr(st->vendor, "NVIDIA"))
        why = "not an NVIDIA device";
    else if (st->wg % 32 != 0 || st->wg > 256)
        why = "work-group not 32 .. 256 lanes in warps";
    else if (clGetDeviceInfo(st->device, CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV, sizeof major,
                             &major, NULL) != CL_SUCCESS ||
             major < 8)
        why = "compute capability below 8.0";
    for (int k = 0; why && k < NSA_CLM_COUNT; k++)
        snprintf(st->mma_why[kv][k], sizeof st->mma_why[kv][k], "%s", why);
    if (why) {
        nsa_log(ctx, "opencl: no tensor-core kernels (%s): portable kernels", why);
        return;
    }
    char opts[600];
    nsa_cl_options(st, kv, opts, sizeof opts - 16);
    strcat(opts, " -DNSA_MMA=1");
    /* nsa_cl_build records its cache event, entry and any build log on the
     * state, a failure on ctx: keep the main program's and the caller's */
    const nsa_cl_cache_event ev = st->cache_event;
    char *log = st->build_log, path[sizeof st->cache_path], msg[sizeof ctx->msg];
    memcpy(path, st->cache_path, sizeof path);
    memcpy(msg, ctx->msg, sizeof msg);
    st->build_log = NULL;
    cl_program prog = NULL;
    nsa_status s = nsa_cl_build(ctx, st, nsa_cl_source(), opts, &prog);
    if (s != NSA_OK) {
        nsa_log(ctx, "opencl: tensor-core program not built (portable kernels): %s", ctx->msg);
        for (int k = 0; k < NSA_CLM_COUNT; k++)
            snprintf(st->mma_why[kv][k], sizeof st->mma_why[kv][k],
                     "the -DNSA_MMA=1 build failed");
    }
    free(st->build_log);
    st->build_log = log;
    st->cache_event = ev;
    memcpy(st->cache_path, path, sizeof path);
    memcpy(ctx->msg, msg, sizeof msg);
    if (s != NSA_OK)
        return;
    int any = 0;
    for (int k = 0; k < NSA_CLM_COUNT; k++) {
        const size_t need = k == NSA_CLM_LINEAR_ROWS ? 32 * NSA_CL_LM_MAXW : (size_t)st->wg;
        make_kernel(st, prog, mma_names[k], need, &st->mma_kernel[kv][k], st->mma_why[kv][k],
                    sizeof st->mma_why[kv][k]);
        if (st->mma_kernel[kv][k])
            any = 1;
        else
            nsa_log(ctx, "opencl: tensor-core kernel %s unusable (%s): portable kernel",
                    mma_names[k], st->mma_why[kv][k]);
    }
    if (!any) {
        clReleaseProgram(prog);
        return;
    }
    st->mma_program[kv] = prog;
    nsa_log(ctx, "opencl: tensor-core kernels (compute capability %u)", major);
}

/* The main program of storage kind kv and its kernels into st. */
static nsa_status build_kernels(nsa_context *ctx, nsa_cl_state *st, nsa_cl_kv kv)
{
    char opts[512];
    nsa_cl_options(st, kv, opts, sizeof opts);
    cl_program prog;
    nsa_status s = nsa_cl_build(ctx, st, nsa_cl_source(), opts, &prog);
    if (s != NSA_OK)
        return s;
    cl_kernel ks[NSA_CLK_COUNT] = {0};
    for (int k = 0; k < NSA_CLK_COUNT; k++) {
        char *why = st->kernel_why[kv][k];
        const size_t need = k == NSA_CLK_LINEAR        ? NSA_CL_GEMM_TS * NSA_CL_GEMM_TS
                            : k == NSA_CLK_LINEAR_ROWS ? NSA_CL_LIN_WG
                            : k == NSA_CLK_LINEAR_FEW  ? NSA_CL_FEW_WG
                                                       : (size_t)st->wg;
        make_kernel(st, prog, kernel_names[k], need, &ks[k], why, sizeof st->kernel_why[kv][k]);
        if (ks[k])
            continue;
        const nsa_cl_feat f = nsa_cl_kernel_feat(k);
        if (f != NSA_CLF_CORE) {
            nsa_log(ctx, "opencl: optional kernel %s unusable on %s (%s): without %s, %s",
                    kernel_names[k], st->device_name, why, feat_what[f], feat_instead[f]);
            continue;
        }
        s = nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "OpenCL kernel %s unusable on %s: %s",
                     kernel_names[k], st->device_name, why);
        for (int j = 0; j < k; j++)
            if (ks[j])
                clReleaseKernel(ks[j]);
        clReleaseProgram(prog);
        return s;
    }
    st->program[kv] = prog;
    memcpy(st->kernel[kv], ks, sizeof ks);
    nsa_log(ctx, "opencl: kernels ready (%s, source %s)", opts, nsa_cl_source_hash());
    return NSA_OK;
}

nsa_status nsa_cl_kernels(nsa_context *ctx, nsa_cl_state *st, nsa_cl_kv kv)
{
    nsa_status s = st->program[kv] ? NSA_OK : build_kernels(ctx, st, kv);
    if (s == NSA_OK && kv == st->kv && !st->mma_tried[kv]) {
        st->mma_tried[kv] = 1;
        mma_init(ctx, st, kv);
    }
    return s;
}

nsa_status nsa_cl_feature(nsa_context *ctx, nsa_cl_state *st, nsa_cl_kv kv, nsa_cl_feat f)
{
    nsa_status s = nsa_cl_kernels(ctx, st, kv);
    for (int k = 0; s == NSA_OK && k < NSA_CLK_COUNT; k++)
        if (nsa_cl_kernel_feat(k) == f && !st->kernel[kv][k])
            s = nsa_fail(ctx, NSA_ERR_UNSUPPORTED, "opencl: %s needs kernel %s, unusable on %s: %s",
                         feat_what[f], kernel_names[k], st->device_name, st->kernel_why[kv][k]);
    return s;
}

/* NSA_OPENCL_CHUNK_MB: the compressed branch's scratch a chunk of rows, in
 * MiB (tuning; the default is cl_attend.c's chunk_budget) */
static nsa_status parse_chunk_mb(nsa_context *ctx, const char *v, size_t *bytes)
{
    *bytes = 0;
    if (!v || !*v)
        return NSA_OK;
    char *end;
    const long mb = strtol(v, &end, 10);
    if (*end || mb < 1 || mb > (1L << 20))
        return nsa_fail(ctx, NSA_ERR_ARG,
                        "NSA_OPENCL_CHUNK_MB=%s must be a whole number of MiB in 1..1048576", v);
    *bytes = (size_t)mb << 20;
    return NSA_OK;
}

/* NSA_OPENCL_LM_WARPS: warps of nsa_linear_rows_mma's work-groups
 * (tuning; unset: by shape, cl_linear.c) */
static nsa_status parse_lm_warps(nsa_context *ctx, const char *v, int *nw)
{
    *nw = 0;
    if (!v || !*v)
        return NSA_OK;
    if (strcmp(v, "1") && strcmp(v, "2") && strcmp(v, "4") && strcmp(v, "8"))
        return nsa_fail(ctx, NSA_ERR_ARG, "NSA_OPENCL_LM_WARPS=%s must be 1, 2, 4 or 8", v);
    *nw = atoi(v);
    return NSA_OK;
}

static nsa_status parse_kv(nsa_context *ctx, const char *v, nsa_cl_kv *kv)
{
    if (!v || !*v || strcmp(v, "fp32") == 0)
        *kv = NSA_CL_KV_F32;
    else if (strcmp(v, "fp16") == 0)
        *kv = NSA_CL_KV_F16;
    else if (strcmp(v, "bf16") == 0)
        *kv = NSA_CL_KV_BF16;
    else
        return nsa_fail(ctx, NSA_ERR_ENUM, "NSA_OPENCL_KV=%s must be fp32, fp16 or bf16", v);
    return NSA_OK;
}

/* The device named by spec (NULL or "" = NSA_OPENCL_DEVICE). */
static nsa_status cl_init_on(nsa_context *ctx, void **state, const char *spec)
{
    *state = NULL;
    if (!spec || !*spec)
        spec = getenv("NSA_OPENCL_DEVICE");
    nsa_cl_state *st = calloc(1, sizeof *st);
    if (!st)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the OpenCL state");
    nsa_status s = parse_kv(ctx, getenv("NSA_OPENCL_KV"), &st->kv);
    if (s == NSA_OK)
        s = parse_chunk_mb(ctx, getenv("NSA_OPENCL_CHUNK_MB"), &st->chunk_bytes);
    if (s == NSA_OK)
        s = parse_lm_warps(ctx, getenv("NSA_OPENCL_LM_WARPS"), &st->lm_warps);
    char why[300];
    if (s == NSA_OK && !nsa_cl_pick_device(spec, &st->platform, &st->device, why, sizeof why))
        s = nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "%s", why);
    if (s != NSA_OK) {
        cl_fini(st);
        return s;
    }
    clGetPlatformInfo(st->platform, CL_PLATFORM_NAME, sizeof st->platform_name,
                      st->platform_name, NULL);
    clGetPlatformInfo(st->platform, CL_PLATFORM_VERSION, sizeof st->platform_version,
                      st->platform_version, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_NAME, sizeof st->device_name, st->device_name, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_VENDOR, sizeof st->vendor, st->vendor, NULL);
    clGetDeviceInfo(st->device, CL_DRIVER_VERSION, sizeof st->driver_version,
                    st->driver_version, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_VERSION, sizeof st->device_version,
                    st->device_version, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_TYPE, sizeof st->type, &st->type, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof st->local_mem, &st->local_mem,
                    NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof st->max_wg, &st->max_wg,
                    NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof st->global_mem,
                    &st->global_mem, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof st->max_alloc,
                    &st->max_alloc, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof st->compute_units,
                    &st->compute_units, NULL);
    nsa_cl_tune(st);

    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)st->platform,
                                     0};
    st->context = clCreateContext(props, 1, &st->device, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        cl_fini(st);
        return nsa_cl_fail(ctx, "clCreateContext", err);
    }
    const char *prof = getenv("NSA_OPENCL_PROFILE");
    st->profile = !prof || !*prof || strcmp(prof, "0") == 0 ? 0 : strcmp(prof, "2") == 0 ? 2 : 1;
    st->queue = clCreateCommandQueue(st->context, st->device,
                                     st->profile ? CL_QUEUE_PROFILING_ENABLE : 0, &err);
    if (err != CL_SUCCESS) {
        cl_fini(st);
        return nsa_cl_fail(ctx, "clCreateCommandQueue", err);
    }
    nsa_log(ctx, "opencl: %s / %s (%s), local memory %llu, work-group %d, tile %d",
            st->platform_name, st->device_name, st->driver_version,
            (unsigned long long)st->local_mem, st->wg, st->tile);
    /* phi always uses the fp32 program; the chosen storage is built now too
     * so that a broken compiler shows at context creation */
    if ((s = nsa_cl_kernels(ctx, st, NSA_CL_KV_F32)) != NSA_OK ||
        (s = nsa_cl_kernels(ctx, st, st->kv)) != NSA_OK) {
        /* the state (and its build log) is gone with the context: keep the
         * message, which quotes the log's start */
        cl_fini(st);
        return s;
    }
    *state = st;
    return NSA_OK;
}

static nsa_status cl_init(nsa_context *ctx, void **state)
{
    return cl_init_on(ctx, state, NULL);
}

nsa_status nsa_cl_context_create(const char *device, nsa_context **out, char *msg,
                                 size_t msg_len)
{
    return nsa_context_start(&nsa_backend_opencl, cl_init_on, device, out, msg, msg_len);
}

nsa_cl_state *nsa_cl_state_of(nsa_context *ctx)
{
    return ctx && ctx->be == &nsa_backend_opencl ? ctx->be_state : NULL;
}

nsa_status nsa_cl_hook_state(nsa_context *ctx, nsa_cl_state **st)
{
    *st = nsa_cl_state_of(ctx);
    if (!*st)
        return nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "the context's backend is not opencl");
    return nsa_cl_kernels(ctx, *st, (*st)->kv);
}

const nsa_backend_ops nsa_backend_opencl = {
    .name = "opencl",
    .description = "OpenCL kernels (GPU; CPU runtimes such as PoCL on request)",
    .probe = cl_probe,
    .init = cl_init,
    .fini = cl_fini,
    .compress = nsa_cl_compress,
    .attend = nsa_cl_attend,
    .linear = nsa_cl_linear,
    .dcache_new = nsa_cl_dcache_new,
    .dcache_free = nsa_cl_dcache_free,
    .dcache_attend = nsa_cl_dcache_attend,
    .dcache_dense = nsa_cl_dcache_dense,
    .dcache_step = nsa_cl_dcache_step,
    .dcache_resident = nsa_cl_dcache_resident,
    .dcache_fetch = nsa_cl_dcache_fetch,
    .dcache_bus = nsa_cl_dcache_bus,
    .dcache_host_angles = nsa_cl_dcache_host_angles,
    .linear_many = nsa_cl_linear_many,
};
