/* The "opencl" backend: device state, and the compress and attend jobs run
 * as kernels from cl/ (upload, run, download: the operator API works on
 * host memory). Environment: NSA_OPENCL_DEVICE picks the device (see
 * nsa_cl_pick_device), NSA_OPENCL_KV=fp32|fp16|bf16 the K/V storage. */
#include "cl_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static const char *const kernel_names[NSA_CLK_COUNT] = {
    "nsa_phi_avg", "nsa_phi_lin", "nsa_phi_out", "nsa_cmp_scores",
    "nsa_topn",    "nsa_group_attn", "nsa_gate",  "nsa_linear"};

/* Tile of nsa_linear (cl/linear.cl's default NSA_GEMM_TS). */
#define GEMM_TS 16

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
    }
    if (st->queue)
        clReleaseCommandQueue(st->queue);
    if (st->context)
        clReleaseContext(st->context);
    free(st->build_log);
    free(st);
}

nsa_status nsa_cl_kernels(nsa_context *ctx, nsa_cl_state *st, nsa_cl_kv kv)
{
    if (st->program[kv])
        return NSA_OK;
    char opts[256];
    nsa_cl_options(st, kv, opts, sizeof opts);
    cl_program prog;
    nsa_status s = nsa_cl_build(ctx, st, nsa_cl_source(), opts, &prog);
    if (s != NSA_OK)
        return s;
    cl_kernel ks[NSA_CLK_COUNT] = {0};
    for (int k = 0; k < NSA_CLK_COUNT; k++) {
        cl_int err;
        ks[k] = clCreateKernel(prog, kernel_names[k], &err);
        size_t most = 0;
        if (err == CL_SUCCESS)
            err = clGetKernelWorkGroupInfo(ks[k], st->device, CL_KERNEL_WORK_GROUP_SIZE,
                                           sizeof most, &most, NULL);
        const size_t need = k == NSA_CLK_LINEAR ? GEMM_TS * GEMM_TS : (size_t)st->wg;
        if (err == CL_SUCCESS && most < need) {
            s = nsa_fail(ctx, NSA_ERR_UNSUPPORTED,
                         "OpenCL kernel %s allows work-groups of %zu, libnsa needs %zu on %s",
                         kernel_names[k], most, need, st->device_name);
        } else if (err != CL_SUCCESS) {
            s = nsa_cl_fail(ctx, "clCreateKernel", err);
        }
        if (s != NSA_OK) {
            for (int j = 0; j <= k; j++)
                if (ks[j])
                    clReleaseKernel(ks[j]);
            clReleaseProgram(prog);
            return s;
        }
    }
    st->program[kv] = prog;
    memcpy(st->kernel[kv], ks, sizeof ks);
    nsa_log(ctx, "opencl: kernels ready (%s, source %s)", opts, nsa_cl_source_hash());
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
    char why[300];
    if (s == NSA_OK &&
        !nsa_cl_pick_device(spec, &st->platform, &st->device, why, sizeof why))
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
    clGetDeviceInfo(st->device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof st->local_mem,
                    &st->local_mem, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof st->max_wg,
                    &st->max_wg, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof st->global_mem,
                    &st->global_mem, NULL);
    clGetDeviceInfo(st->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof st->max_alloc,
                    &st->max_alloc, NULL);
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
    st->profile = prof && *prof && strcmp(prof, "0") != 0;
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
    nsa_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return nsa_fail_buf(msg, msg_len, NSA_ERR_NOMEM, "out of memory for the context");
    ctx->be = &nsa_backend_opencl;
    ctx->verbose = nsa_env_verbose();
    nsa_status s = cl_init_on(ctx, &ctx->be_state, device);
    if (s != NSA_OK) {
        nsa_fail_buf(msg, msg_len, s, "backend 'opencl' failed to start: %s", ctx->msg);
        free(ctx);
        return s;
    }
    nsa_log(ctx, "using backend 'opencl'");
    if (msg && msg_len)
        msg[0] = '\0';
    *out = ctx;
    return NSA_OK;
}

nsa_cl_state *nsa_cl_state_of(nsa_context *ctx)
{
    return ctx && ctx->be == &nsa_backend_opencl ? ctx->be_state : NULL;
}

/* ------------------------------------------------------------ plumbing */
#define MAX_BUFS 32

/* Device buffers of one job, released together. */
typedef struct bufs {
    nsa_cl_state *st;
    nsa_context *ctx;
    int n;
    cl_mem m[MAX_BUFS];
} bufs;

static void bufs_free(bufs *b)
{
    for (int i = 0; i < b->n; i++)
        clReleaseMemObject(b->m[i]);
    b->n = 0;
}

/* A buffer of bytes (at least 4), filled from host when given. */
static nsa_status buf_new(bufs *b, size_t bytes, const void *host, cl_mem *out)
{
    cl_int err;
    if (b->n == MAX_BUFS)
        return nsa_fail(b->ctx, NSA_ERR_BACKEND, "opencl: too many buffers in one job");
    if (bytes == 0)
        host = NULL; /* an empty tensor: nothing to copy, not even 4 bytes */
    *out = clCreateBuffer(b->st->context,
                          host ? CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR : CL_MEM_READ_WRITE,
                          bytes ? bytes : 4, (void *)(uintptr_t)host, &err);
    if (err != CL_SUCCESS)
        return nsa_cl_fail(b->ctx, "clCreateBuffer", err);
    b->m[b->n++] = *out;
    return NSA_OK;
}

/* K/V upload in the storage kind (rounded to nearest even). */
static nsa_status buf_kv(bufs *b, nsa_cl_kv kv, const float *x, size_t count, cl_mem *out)
{
    if (kv == NSA_CL_KV_F32)
        return buf_new(b, count * sizeof(float), x, out);
    uint16_t *h = malloc(sizeof(uint16_t) * (count ? count : 1));
    if (!h)
        return nsa_fail(b->ctx, NSA_ERR_NOMEM, "out of memory converting K/V");
    for (size_t i = 0; i < count; i++)
        h[i] = kv == NSA_CL_KV_F16 ? nsa_cl_f32_to_f16(x[i]) : nsa_cl_f32_to_bf16(x[i]);
    nsa_status s = buf_new(b, count * sizeof(uint16_t), h, out);
    free(h);
    return s;
}

static nsa_status download(bufs *b, cl_mem m, size_t bytes, void *host)
{
    if (!bytes)
        return NSA_OK;
    cl_int err = clEnqueueReadBuffer(b->st->queue, m, CL_TRUE, 0, bytes, host, 0, NULL, NULL);
    return err == CL_SUCCESS ? NSA_OK : nsa_cl_fail(b->ctx, "clEnqueueReadBuffer", err);
}

/* Kernel arguments in order; the first failure is kept. */
typedef struct args {
    cl_kernel k;
    cl_uint i;
    cl_int err;
} args;

static void arg(args *a, size_t size, const void *v)
{
    if (a->err == CL_SUCCESS)
        a->err = clSetKernelArg(a->k, a->i, size, v);
    a->i++;
}
#define ARG_MEM(a, m) arg((a), sizeof(cl_mem), &(m))
#define ARG_INT(a, v) \
    do { \
        cl_int v_ = (cl_int)(v); \
        arg((a), sizeof v_, &v_); \
    } while (0)
#define ARG_FLT(a, v) \
    do { \
        cl_float v_ = (cl_float)(v); \
        arg((a), sizeof v_, &v_); \
    } while (0)
#define ARG_LOCAL(a, floats) arg((a), sizeof(float) * (size_t)(floats), NULL)

/* Enqueues a->k over dims dimensions (global already a multiple of local). */
static nsa_status launch_nd(bufs *b, args *a, const char *name, cl_uint dims,
                           const size_t *global, const size_t *local)
{
    if (a->err != CL_SUCCESS)
        return nsa_fail(b->ctx, NSA_ERR_BACKEND,
                        "OpenCL clSetKernelArg failed for %s argument %u: %s (%d)", name,
                        a->i - 1, nsa_cl_error_name(a->err), (int)a->err);
    for (cl_uint d = 0; d < dims; d++)
        if (global[d] == 0)
            return NSA_OK;
    nsa_cl_state *st = b->st;
    cl_event ev = NULL;
    cl_int err = clEnqueueNDRangeKernel(st->queue, a->k, dims, NULL, global, local, 0, NULL,
                                        st->profile ? &ev : NULL);
    if (err != CL_SUCCESS)
        return nsa_fail(b->ctx, NSA_ERR_BACKEND,
                        "OpenCL clEnqueueNDRangeKernel failed for %s: %s (%d)", name,
                        nsa_cl_error_name(err), (int)err);
    if (ev) {
        /* profiling: wait, and add the kernel's device time to its label */
        cl_ulong t0 = 0, t1 = 0;
        err = clWaitForEvents(1, &ev);
        if (err == CL_SUCCESS)
            err = clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof t0, &t0, NULL);
        if (err == CL_SUCCESS)
            err = clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL);
        clReleaseEvent(ev);
        if (err != CL_SUCCESS)
            return nsa_cl_fail(b->ctx, "clGetEventProfilingInfo", err);
        int i = 0;
        while (i < st->n_prof && strcmp(st->prof[i].label, name) != 0)
            i++;
        if (i < NSA_CL_PROF_MAX) {
            if (i == st->n_prof) {
                snprintf(st->prof[i].label, sizeof st->prof[i].label, "%s", name);
                st->prof[i].ns = 0;
                st->prof[i].calls = 0;
                st->n_prof++;
            }
            st->prof[i].ns += (double)(t1 - t0);
            st->prof[i].calls++;
        }
    }
    return NSA_OK;
}

static nsa_status launch(bufs *b, args *a, const char *name, size_t global, size_t local)
{
    global = (global + local - 1) / local * local;
    return launch_nd(b, a, name, 1, &global, &local);
}

#define TRY(x) \
    do { \
        if ((s = (x)) != NSA_OK) \
            goto done; \
    } while (0)

/* --------------------------------------------------------------- phi */
static nsa_status cl_compress(nsa_context *ctx, const nsa_cmp_job *job)
{
    nsa_cl_state *st = ctx->be_state;
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const nsa_phi *phi = job->phi;
    const int G = c->G, l = c->l, dim = job->dim;
    const int64_t C = bt->cmp_off[bt->B];
    if (C == 0)
        return NSA_OK;
    const size_t L = (size_t)l * dim, wg = (size_t)st->wg;
    const int hid = phi->kind == NSA_PHI_MLP ? phi->hidden : 0;
    int32_t *src = malloc(sizeof(int32_t) * (size_t)C);
    if (!src)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl phi");
    for (int b = 0; b < bt->B; b++)
        for (int64_t i = 0; i < bt->cmp_off[b + 1] - bt->cmp_off[b]; i++)
            src[bt->cmp_off[b] + i] = (int32_t)(bt->cu[b] + i * c->d);
    bufs B = {st, ctx, 0, {0}};
    nsa_status s = NSA_OK;
    cl_mem x, pe, srcb, out, w1, b1, w2, b2, h = NULL, dst;
    cl_kernel *K = st->kernel[NSA_CL_KV_F32];
    TRY(buf_new(&B, sizeof(float) * (size_t)bt->T * G * dim, job->x, &x));
    TRY(buf_new(&B, phi->pe ? sizeof(float) * (size_t)G * L : 4, phi->pe, &pe));
    TRY(buf_new(&B, sizeof(int32_t) * (size_t)C, src, &srcb));
    TRY(buf_new(&B, sizeof(float) * (size_t)C * G * dim, NULL, &out));
    if (phi->kind == NSA_PHI_AVG) {
        args a = {K[NSA_CLK_PHI_AVG], 0, CL_SUCCESS};
        ARG_MEM(&a, x);
        ARG_MEM(&a, pe);
        ARG_INT(&a, phi->pe != NULL);
        ARG_MEM(&a, srcb);
        ARG_INT(&a, C);
        ARG_INT(&a, G);
        ARG_INT(&a, l);
        ARG_INT(&a, dim);
        ARG_MEM(&a, out);
        TRY(launch(&B, &a, "nsa_phi_avg", (size_t)C * G * dim, wg));
    } else {
        const int N = hid ? hid : dim;
        TRY(buf_new(&B, sizeof(float) * (size_t)G * N * L, phi->w1, &w1));
        TRY(buf_new(&B, phi->b1 ? sizeof(float) * (size_t)G * N : 4, phi->b1, &b1));
        if (hid)
            TRY(buf_new(&B, sizeof(float) * (size_t)C * G * hid, NULL, &h));
        args a = {K[NSA_CLK_PHI_LIN], 0, CL_SUCCESS};
        ARG_MEM(&a, x);
        ARG_MEM(&a, pe);
        ARG_INT(&a, phi->pe != NULL);
        ARG_MEM(&a, srcb);
        ARG_INT(&a, C);
        ARG_INT(&a, G);
        ARG_INT(&a, l);
        ARG_INT(&a, dim);
        ARG_MEM(&a, w1);
        ARG_MEM(&a, b1);
        ARG_INT(&a, phi->b1 != NULL);
        ARG_INT(&a, N);
        ARG_INT(&a, hid > 0);
        dst = hid ? h : out;
        ARG_MEM(&a, dst);
        TRY(launch(&B, &a, "nsa_phi_lin", (size_t)C * G * N, wg));
        if (hid) {
            TRY(buf_new(&B, sizeof(float) * (size_t)G * dim * hid, phi->w2, &w2));
            TRY(buf_new(&B, phi->b2 ? sizeof(float) * (size_t)G * dim : 4, phi->b2, &b2));
            args o = {K[NSA_CLK_PHI_OUT], 0, CL_SUCCESS};
            ARG_MEM(&o, h);
            ARG_INT(&o, C);
            ARG_INT(&o, G);
            ARG_INT(&o, hid);
            ARG_INT(&o, dim);
            ARG_MEM(&o, w2);
            ARG_MEM(&o, b2);
            ARG_INT(&o, phi->b2 != NULL);
            ARG_MEM(&o, out);
            TRY(launch(&B, &o, "nsa_phi_out", (size_t)C * G * dim, wg));
        }
    }
    TRY(download(&B, out, sizeof(float) * (size_t)C * G * dim, job->out));
done:
    bufs_free(&B);
    free(src);
    return s;
}

/* ---------------------------------------------------------- attention */
/* Local floats of nsa_group_attn with hc heads per work-group. */
static size_t group_attn_local(const nsa_cl_state *st, const nsa_config *c, int hc,
                               size_t f[6])
{
    const size_t h = (size_t)hc, T = (size_t)st->tile, dkp = (size_t)(c->dk | 1);
    f[0] = h * dkp; /* rows padded to an odd stride (see the kernel) */
    f[1] = h * c->dv;
    f[2] = T * dkp;
    f[3] = T * c->dv;
    f[4] = h * T;
    f[5] = 3 * h;
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5];
}

/* Heads per work-group: all of the group's if they fit local memory, else
 * halves; 0 if not even one head fits. */
static int heads_per_wg(const nsa_cl_state *st, const nsa_config *c, size_t f[6])
{
    int hc = c->H / c->G;
    if (st->max_heads_wg > 0 && hc > st->max_heads_wg)
        hc = st->max_heads_wg;
    while (group_attn_local(st, c, hc, f) * sizeof(float) > st->local_mem) {
        if (hc == 1)
            return 0;
        hc = (hc + 1) / 2;
    }
    return hc;
}

/* One launch of nsa_group_attn over rows row0 .. row0 + rows - 1. */
typedef struct ga_launch {
    int mode, w, row0, rows;
    cl_mem q, K, V, row_seq, cu, cmp_off, sel, out;
    int want_z, max_nc;
    cl_mem zs, stats; /* mode 2 with want_z */
} ga_launch;

static nsa_status group_attn(bufs *B, cl_kernel k, const nsa_config *c, float scale,
                             const ga_launch *L)
{
    size_t f[6];
    const int hc = heads_per_wg(B->st, c, f);
    if (!hc)
        return nsa_fail(B->ctx, NSA_ERR_UNSUPPORTED,
                        "opencl: attention with dk=%d, dv=%d needs more local memory for "
                        "one head and a tile of %d keys than the device's %llu bytes",
                        c->dk, c->dv, B->st->tile, (unsigned long long)B->st->local_mem);
    const int parts = (c->H / c->G + hc - 1) / hc;
    args a = {k, 0, CL_SUCCESS};
    ARG_MEM(&a, L->q);
    ARG_MEM(&a, L->K);
    ARG_MEM(&a, L->V);
    ARG_MEM(&a, L->row_seq);
    ARG_MEM(&a, L->cu);
    ARG_MEM(&a, L->cmp_off);
    ARG_MEM(&a, L->sel);
    ARG_INT(&a, c->n);
    ARG_INT(&a, c->l_sel);
    ARG_INT(&a, L->mode);
    ARG_INT(&a, L->w);
    ARG_INT(&a, c->l);
    ARG_INT(&a, c->d);
    ARG_INT(&a, L->row0);
    ARG_INT(&a, c->H);
    ARG_INT(&a, c->G);
    ARG_INT(&a, hc);
    ARG_INT(&a, c->dk);
    ARG_INT(&a, c->dv);
    ARG_FLT(&a, scale);
    ARG_MEM(&a, L->out);
    ARG_INT(&a, L->want_z);
    ARG_INT(&a, L->max_nc);
    ARG_MEM(&a, L->zs);
    ARG_MEM(&a, L->stats);
    for (int i = 0; i < 6; i++)
        ARG_LOCAL(&a, f[i]);
    static const char *const label[3] = {"nsa_group_attn(slc)", "nsa_group_attn(win)",
                                         "nsa_group_attn(cmp)"};
    return launch(B, &a, label[L->mode], (size_t)L->rows * c->G * parts * B->st->wg,
                  B->st->wg);
}

/* row -> sequence index, for every packed row. */
static int32_t *row_seq_of(const nsa_batch *bt)
{
    int32_t *rs = malloc(sizeof(int32_t) * (size_t)bt->T);
    if (rs)
        for (int b = 0; b < bt->B; b++)
            for (int32_t r = bt->cu[b]; r < bt->cu[b + 1]; r++)
                rs[r] = b;
    return rs;
}

/* Scratch budget of one chunk of the compressed branch (logits and scores
 * of the rows in flight), which keeps memory linear in T: 1/16 of the
 * device's memory, within [64 MiB, 1 GiB] and the largest allocation. */
static size_t chunk_budget(const nsa_cl_state *st)
{
    size_t b = (size_t)(st->global_mem / 16);
    if (b > ((size_t)1 << 30))
        b = (size_t)1 << 30;
    if (b < ((size_t)64 << 20))
        b = (size_t)64 << 20;
    if (st->max_alloc && b > st->max_alloc)
        b = (size_t)st->max_alloc;
    return b;
}

static nsa_status cl_attend(nsa_context *ctx, const nsa_attn_job *job)
{
    nsa_cl_state *st = ctx->be_state;
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const int H = c->H, G = c->G, dk = c->dk, dv = c->dv, n = c->n;
    const int64_t T = bt->T, C = bt->cmp_off[bt->B];
    const int max_nc = nsa_bm_n_cmp(c, bt->max_len - 1);
    const int max_vis = nsa_bm_n_sel_visible(c, bt->max_len - 1);
    const size_t wg = (size_t)st->wg;
    const nsa_cl_kv kv = st->kv;
    nsa_status s = nsa_cl_kernels(ctx, st, kv);
    if (s != NSA_OK)
        return s;
    cl_kernel *K = st->kernel[kv];
    int32_t *rs = row_seq_of(bt), *cmp_off = malloc(sizeof(int32_t) * ((size_t)bt->B + 1));
    bufs B = {st, ctx, 0, {0}};
    if (!rs || !cmp_off) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl attend");
        goto done;
    }
    for (int b = 0; b <= bt->B; b++)
        cmp_off[b] = (int32_t)bt->cmp_off[b];

    cl_mem q, kc, vc, ks, vs, kw, vw, gates, rsb, cub, cob, rp, col, val;
    cl_mem oc, os, ow, out, sel;
    const size_t tg = (size_t)T * G, th = (size_t)T * H;
    TRY(buf_new(&B, sizeof(float) * th * dk, job->q, &q));
    TRY(buf_kv(&B, kv, job->kc, (size_t)C * G * dk, &kc));
    TRY(buf_kv(&B, kv, job->vc, (size_t)C * G * dv, &vc));
    TRY(buf_kv(&B, kv, job->k_slc, tg * dk, &ks));
    TRY(buf_kv(&B, kv, job->v_slc, tg * dv, &vs));
    /* shared KV: one upload serves both branches */
    if (job->k_win == job->k_slc)
        kw = ks;
    else
        TRY(buf_kv(&B, kv, job->k_win, tg * dk, &kw));
    if (job->v_win == job->v_slc)
        vw = vs;
    else
        TRY(buf_kv(&B, kv, job->v_win, tg * dv, &vw));
    TRY(buf_new(&B, sizeof(float) * th * 3, job->gates, &gates));
    TRY(buf_new(&B, sizeof(int32_t) * (size_t)T, rs, &rsb));
    TRY(buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), bt->cu, &cub));
    TRY(buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), cmp_off, &cob));
    const nsa_csr *m = job->map;
    TRY(buf_new(&B, sizeof(int32_t) * ((size_t)m->rows + 1), m->rowptr, &rp));
    TRY(buf_new(&B, sizeof(int32_t) * (size_t)m->rowptr[m->rows], m->col, &col));
    TRY(buf_new(&B, sizeof(int32_t) * (size_t)m->rowptr[m->rows], m->val, &val));
    TRY(buf_new(&B, sizeof(float) * th * dv, NULL, &oc));
    TRY(buf_new(&B, sizeof(float) * th * dv, NULL, &os));
    TRY(buf_new(&B, sizeof(float) * th * dv, NULL, &ow));
    TRY(buf_new(&B, sizeof(float) * th * dv, NULL, &out));
    TRY(buf_new(&B, sizeof(int32_t) * tg * n, job->sel_in, &sel));

    /* compressed branch and (without sel_in) scores and top-n, in chunks
     * of rows: logits and statistics of the rows in flight only */
    const int hpg = H / G;
    const size_t per_row = sizeof(float) * (size_t)G *
                           ((size_t)hpg * (size_t)max_nc + 2 * (size_t)hpg + (size_t)max_vis);
    int64_t chunk = (int64_t)(chunk_budget(st) / per_row);
    if (chunk < 1)
        chunk = 1;
    if (st->max_chunk_rows > 0 && chunk > st->max_chunk_rows)
        chunk = st->max_chunk_rows;
    if (chunk > T)
        chunk = T;
    const int want = job->sel_in == NULL;
    cl_mem zs, stats, scores;
    TRY(buf_new(&B, want ? sizeof(float) * (size_t)chunk * G * hpg * (size_t)max_nc : 4, NULL,
                &zs));
    TRY(buf_new(&B, want ? sizeof(float) * (size_t)chunk * G * hpg * 2 : 4, NULL, &stats));
    TRY(buf_new(&B, want ? sizeof(float) * (size_t)chunk * G * (size_t)max_vis : 4, NULL,
                &scores));
    ga_launch L = {2, 0, 0, 0, q, kc, vc, rsb, cub, cob, sel, oc, want, max_nc, zs, stats};
    for (int64_t r0 = 0; r0 < T; r0 += chunk) {
        const int rows = (int)(T - r0 < chunk ? T - r0 : chunk);
        L.row0 = (int)r0;
        L.rows = rows;
        TRY(group_attn(&B, K[NSA_CLK_GROUP_ATTN], c, job->scale, &L));
        if (!want)
            continue;
        args a = {K[NSA_CLK_CMP_SCORES], 0, CL_SUCCESS};
        ARG_MEM(&a, zs);
        ARG_MEM(&a, stats);
        ARG_MEM(&a, rsb);
        ARG_MEM(&a, cub);
        ARG_MEM(&a, rp);
        ARG_MEM(&a, col);
        ARG_MEM(&a, val);
        ARG_INT(&a, H);
        ARG_INT(&a, G);
        ARG_INT(&a, c->l);
        ARG_INT(&a, c->d);
        ARG_INT(&a, c->l_sel);
        ARG_INT(&a, r0);
        ARG_INT(&a, rows);
        ARG_INT(&a, max_nc);
        ARG_INT(&a, max_vis);
        ARG_MEM(&a, scores);
        TRY(launch(&B, &a, "nsa_cmp_scores", (size_t)rows * G * max_vis, wg));
        args t = {K[NSA_CLK_TOPN], 0, CL_SUCCESS};
        ARG_MEM(&t, scores);
        ARG_MEM(&t, rsb);
        ARG_MEM(&t, cub);
        ARG_INT(&t, G);
        ARG_INT(&t, c->l_sel);
        ARG_INT(&t, n);
        ARG_INT(&t, c->n_init);
        ARG_INT(&t, c->n_local);
        ARG_INT(&t, r0);
        ARG_INT(&t, rows);
        ARG_INT(&t, max_vis);
        ARG_MEM(&t, sel);
        TRY(launch(&B, &t, "nsa_topn", (size_t)rows * G, wg));
    }
    /* selected branch (group-centric over the selected blocks), window */
    ga_launch S = {0, 0, 0, (int)T, q, ks, vs, rsb, cub, cob, sel, os, 0, 0, zs, stats};
    TRY(group_attn(&B, K[NSA_CLK_GROUP_ATTN], c, job->scale, &S));
    ga_launch W = {1, c->w, 0, (int)T, q, kw, vw, rsb, cub, cob, sel, ow, 0, 0, zs, stats};
    TRY(group_attn(&B, K[NSA_CLK_GROUP_ATTN], c, job->scale, &W));
    {
        args a = {K[NSA_CLK_GATE], 0, CL_SUCCESS};
        cl_ulong total = (cl_ulong)th * dv;
        ARG_MEM(&a, gates);
        ARG_MEM(&a, oc);
        ARG_MEM(&a, os);
        ARG_MEM(&a, ow);
        ARG_INT(&a, dv);
        arg(&a, sizeof total, &total);
        ARG_MEM(&a, out);
        TRY(launch(&B, &a, "nsa_gate", (size_t)total, wg));
    }
    TRY(download(&B, out, sizeof(float) * th * dv, job->out));
    if (job->out_cmp)
        TRY(download(&B, oc, sizeof(float) * th * dv, job->out_cmp));
    if (job->out_slc)
        TRY(download(&B, os, sizeof(float) * th * dv, job->out_slc));
    if (job->out_win)
        TRY(download(&B, ow, sizeof(float) * th * dv, job->out_win));
    if (job->sel_out)
        TRY(download(&B, sel, sizeof(int32_t) * tg * n, job->sel_out));
done:
    bufs_free(&B);
    free(rs);
    free(cmp_off);
    return s;
}

/* ------------------------------------------------------------- linear */
static nsa_status cl_linear(nsa_context *ctx, const nsa_linear_job *j)
{
    nsa_cl_state *st = ctx->be_state;
    if (j->rows > INT_MAX || j->rows == 0)
        return j->rows == 0 ? NSA_OK
                            : nsa_fail(ctx, NSA_ERR_RANGE, "opencl: %lld rows are too many",
                                       (long long)j->rows);
    bufs B = {st, ctx, 0, {0}};
    nsa_status s = NSA_OK;
    cl_mem x, w, b, y;
    const size_t rows = (size_t)j->rows;
    TRY(buf_new(&B, sizeof(float) * rows * j->in, j->x, &x));
    TRY(buf_new(&B, sizeof(float) * (size_t)j->out * j->in, j->w, &w));
    TRY(buf_new(&B, j->b ? sizeof(float) * (size_t)j->out : 4, j->b, &b));
    TRY(buf_new(&B, sizeof(float) * rows * j->out, NULL, &y));
    args a = {st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR], 0, CL_SUCCESS};
    ARG_MEM(&a, x);
    ARG_MEM(&a, w);
    ARG_MEM(&a, b);
    ARG_INT(&a, j->b != NULL);
    ARG_INT(&a, rows);
    ARG_INT(&a, j->in);
    ARG_INT(&a, j->out);
    ARG_MEM(&a, y);
    {
        const size_t local[2] = {GEMM_TS, GEMM_TS};
        const size_t global[2] = {((size_t)j->out + GEMM_TS - 1) / GEMM_TS * GEMM_TS,
                                  (rows + GEMM_TS - 1) / GEMM_TS * GEMM_TS};
        TRY(launch_nd(&B, &a, "nsa_linear", 2, global, local));
    }
    TRY(download(&B, y, sizeof(float) * rows * j->out, j->y));
done:
    bufs_free(&B);
    return s;
}

/* Top-n alone over caller-given group scores[T][G][max_vis] (a test hook:
 * ties and forced blocks checked against nsa_bm_select_f). */
nsa_status nsa_cl_topn(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *bt,
                       const float *scores, int max_vis, int32_t *sel)
{
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (!st)
        return nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "the context's backend is not opencl");
    nsa_status s = nsa_cl_kernels(ctx, st, st->kv);
    if (s != NSA_OK)
        return s;
    const size_t tg = (size_t)bt->T * cfg->G;
    int32_t *rs = row_seq_of(bt);
    bufs B = {st, ctx, 0, {0}};
    cl_mem sb, rsb, cub, selb;
    if (!rs) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl top-n");
        goto done;
    }
    TRY(buf_new(&B, sizeof(float) * tg * (size_t)max_vis, scores, &sb));
    TRY(buf_new(&B, sizeof(int32_t) * (size_t)bt->T, rs, &rsb));
    TRY(buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), bt->cu, &cub));
    TRY(buf_new(&B, sizeof(int32_t) * tg * cfg->n, NULL, &selb));
    args t = {st->kernel[st->kv][NSA_CLK_TOPN], 0, CL_SUCCESS};
    ARG_MEM(&t, sb);
    ARG_MEM(&t, rsb);
    ARG_MEM(&t, cub);
    ARG_INT(&t, cfg->G);
    ARG_INT(&t, cfg->l_sel);
    ARG_INT(&t, cfg->n);
    ARG_INT(&t, cfg->n_init);
    ARG_INT(&t, cfg->n_local);
    ARG_INT(&t, 0);
    ARG_INT(&t, bt->T);
    ARG_INT(&t, max_vis);
    ARG_MEM(&t, selb);
    TRY(launch(&B, &t, "nsa_topn", tg, (size_t)st->wg));
    TRY(download(&B, selb, sizeof(int32_t) * tg * cfg->n, sel));
done:
    bufs_free(&B);
    free(rs);
    return s;
}

/* The dense causal baseline: the group kernel in window mode with w = the
 * longest sequence, so every position 0..t is read. */
nsa_status nsa_cl_dense(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *bt,
                        const float *q, const float *k, const float *v, float *out)
{
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (!st)
        return nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "the context's backend is not opencl");
    nsa_status s = nsa_cl_kernels(ctx, st, st->kv);
    if (s != NSA_OK)
        return s;
    const size_t th = (size_t)bt->T * cfg->H, tg = (size_t)bt->T * cfg->G;
    int32_t *rs = row_seq_of(bt);
    bufs B = {st, ctx, 0, {0}};
    cl_mem qb, kb, vb, rsb, cub, ob, dummy;
    if (!rs) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl dense");
        goto done;
    }
    TRY(buf_new(&B, sizeof(float) * th * cfg->dk, q, &qb));
    TRY(buf_kv(&B, st->kv, k, tg * cfg->dk, &kb));
    TRY(buf_kv(&B, st->kv, v, tg * cfg->dv, &vb));
    TRY(buf_new(&B, sizeof(int32_t) * (size_t)bt->T, rs, &rsb));
    TRY(buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), bt->cu, &cub));
    TRY(buf_new(&B, sizeof(float) * th * cfg->dv, NULL, &ob));
    TRY(buf_new(&B, 4, NULL, &dummy));
    ga_launch L = {1,  bt->max_len, 0,     (int)bt->T, qb, kb,   vb,   rsb,
                   cub, dummy,      dummy, ob,         0,  0,  dummy, dummy};
    TRY(group_attn(&B, st->kernel[st->kv][NSA_CLK_GROUP_ATTN], cfg, nsa_config_scale(cfg), &L));
    TRY(download(&B, ob, sizeof(float) * th * cfg->dv, out));
done:
    bufs_free(&B);
    free(rs);
    return s;
}

const nsa_backend_ops nsa_backend_opencl = {
    .name = "opencl",
    .description = "OpenCL kernels (GPU; CPU runtimes such as PoCL on request)",
    .probe = cl_probe,
    .init = cl_init,
    .fini = cl_fini,
    .compress = cl_compress,
    .attend = cl_attend,
    .linear = cl_linear,
};
