/* Plumbing of the OpenCL jobs (see cl_run.h). */
#include "cl_run.h"

#include <stdlib.h>
#include <string.h>

void nsa_clr_bufs_free(nsa_clr_bufs *b)
{
    for (int i = 0; i < b->n; i++)
        clReleaseMemObject(b->m[i]);
    b->n = 0;
}

/* A buffer of bytes (at least 4), filled from host when given. */
nsa_status nsa_clr_buf_new(nsa_clr_bufs *b, size_t bytes, const void *host, cl_mem *out)
{
    cl_int err;
    if (b->n == NSA_CLR_MAX_BUFS)
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
nsa_status nsa_clr_buf_kv(nsa_clr_bufs *b, nsa_cl_kv kv, const float *x, size_t count,
                          cl_mem *out)
{
    if (kv == NSA_CL_KV_F32)
        return nsa_clr_buf_new(b, count * sizeof(float), x, out);
    uint16_t *h = malloc(sizeof(uint16_t) * (count ? count : 1));
    if (!h)
        return nsa_fail(b->ctx, NSA_ERR_NOMEM, "out of memory converting K/V");
    for (size_t i = 0; i < count; i++)
        h[i] = kv == NSA_CL_KV_F16 ? nsa_cl_f32_to_f16(x[i]) : nsa_cl_f32_to_bf16(x[i]);
    nsa_status s = nsa_clr_buf_new(b, count * sizeof(uint16_t), h, out);
    free(h);
    return s;
}

nsa_status nsa_clr_download(nsa_clr_bufs *b, cl_mem m, size_t bytes, void *host)
{
    if (!bytes)
        return NSA_OK;
    cl_int err = clEnqueueReadBuffer(b->st->queue, m, CL_TRUE, 0, bytes, host, 0, NULL, NULL);
    return err == CL_SUCCESS ? NSA_OK : nsa_cl_fail(b->ctx, "clEnqueueReadBuffer", err);
}

void nsa_clr_arg(nsa_clr_args *a, size_t size, const void *v)
{
    if (a->err == CL_SUCCESS)
        a->err = clSetKernelArg(a->k, a->i, size, v);
    a->i++;
}


/* Adds a launch's device time (start t0, end t1, ns) to its label. */
static void prof_add(nsa_cl_state *st, const char *name, cl_ulong t0, cl_ulong t1)
{
    int i = 0;
    while (i < st->n_prof && strcmp(st->prof[i].label, name) != 0)
        i++;
    if (i == NSA_CL_PROF_MAX)
        return;
    if (i == st->n_prof) {
        snprintf(st->prof[i].label, sizeof st->prof[i].label, "%s", name);
        st->prof[i].ns = 0;
        st->prof[i].calls = 0;
        st->n_prof++;
    }
    st->prof[i].ns += (double)(t1 - t0);
    st->prof[i].calls++;
}

/* Enqueues a->k over dims dimensions (global already a multiple of local). */
nsa_status nsa_clr_launch_nd(nsa_clr_bufs *b, nsa_clr_args *a, const char *name, cl_uint dims,
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
    st->launches++;
    if (ev && st->profile == 2) {
        return nsa_cl_tl_keep(st, b->ctx, ev, name, 0);
    } else if (ev) {
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
        prof_add(st, name, t0, t1);
    }
    return NSA_OK;
}

nsa_status nsa_cl_tl_keep(nsa_cl_state *st, nsa_context *ctx, cl_event ev, const char *label,
                          int xfer)
{
    if (st->n_tl == NSA_CL_TL_MAX) {
        const nsa_status s = nsa_cl_tl_flush(st, ctx, NULL);
        if (s != NSA_OK) {
            clReleaseEvent(ev);
            return s;
        }
    }
    nsa_cl_tl *e = &st->tl[st->n_tl++];
    e->ev = ev;
    e->xfer = xfer;
    snprintf(e->label, sizeof e->label, "%s", label);
    return NSA_OK;
}

nsa_status nsa_cl_tl_flush(nsa_cl_state *st, nsa_context *ctx, const char *what)
{
    const int n = st->n_tl;
    st->n_tl = 0;
    st->n_tl_read = 0;
    if (n == 0)
        return NSA_OK;
    cl_ulong t[NSA_CL_TL_MAX][2] = {{0, 0}}, qd[NSA_CL_TL_MAX] = {0}, sb[NSA_CL_TL_MAX] = {0};
    cl_int err = CL_SUCCESS;
    const char *call = "";
    for (int i = 0; i < n; i++) {
        if (err == CL_SUCCESS) {
            call = "clWaitForEvents";
            err = clWaitForEvents(1, &st->tl[i].ev);
        }
        if (err == CL_SUCCESS) {
            call = "clGetEventProfilingInfo";
            err = clGetEventProfilingInfo(st->tl[i].ev, CL_PROFILING_COMMAND_QUEUED,
                                          sizeof qd[i], &qd[i], NULL);
        }
        if (err == CL_SUCCESS)
            err = clGetEventProfilingInfo(st->tl[i].ev, CL_PROFILING_COMMAND_SUBMIT,
                                          sizeof sb[i], &sb[i], NULL);
        if (err == CL_SUCCESS)
            err = clGetEventProfilingInfo(st->tl[i].ev, CL_PROFILING_COMMAND_START,
                                          sizeof t[i][0], &t[i][0], NULL);
        if (err == CL_SUCCESS)
            err = clGetEventProfilingInfo(st->tl[i].ev, CL_PROFILING_COMMAND_END,
                                          sizeof t[i][1], &t[i][1], NULL);
        clReleaseEvent(st->tl[i].ev);
    }
    if (err != CL_SUCCESS)
        return ctx ? nsa_cl_fail(ctx, call, err) : NSA_ERR_BACKEND;
    double busy = 0.0;
    cl_ulong last = t[0][1];
    for (int i = 0; i < n; i++) {
        st->tl[i].t0 = t[i][0];
        st->tl[i].t1 = t[i][1];
        last = t[i][1] > last ? t[i][1] : last;
        if (st->tl[i].xfer)
            continue; /* transfers: in the timeline, not the kernels' profile */
        prof_add(st, st->tl[i].label, t[i][0], t[i][1]);
        busy += (double)(t[i][1] - t[i][0]);
    }
    const double span = (double)(last - t[0][0]);
    st->n_tl_read = n;
    if (ctx && ctx->verbose && what) {
        nsa_log(ctx, "opencl timeline (%s): %d commands, %.1f us from the first start to the "
                     "last end, %.1f us in kernels, %.1f us in transfers or idle",
                what, n, span / 1e3, busy / 1e3, (span - busy) / 1e3);
        /* queued -> start: how long the host's enqueue was ahead of the
         * device (near 0: the device waited for the host); queued ->
         * submitted: how long the driver held the command before passing
         * it to the device */
        for (int i = 0; i < n; i++)
            nsa_log(ctx, "  +%8.1f us %-36s %8.1f us, idle before %6.1f us, queued %7.1f us "
                         "before its start, submitted %7.1f us after queued",
                    (double)(t[i][0] - t[0][0]) / 1e3, st->tl[i].label,
                    (double)(t[i][1] - t[i][0]) / 1e3,
                    i ? ((double)t[i][0] - (double)t[i - 1][1]) / 1e3 : 0.0,
                    ((double)t[i][0] - (double)qd[i]) / 1e3,
                    ((double)sb[i] - (double)qd[i]) / 1e3);
    }
    return NSA_OK;
}

nsa_status nsa_clr_launch(nsa_clr_bufs *b, nsa_clr_args *a, const char *name, size_t global,
                          size_t local)
{
    global = (global + local - 1) / local * local;
    return nsa_clr_launch_nd(b, a, name, 1, &global, &local);
}

int32_t *nsa_clr_row_seq(const nsa_batch *bt)
{
    int32_t *rs = malloc(sizeof(int32_t) * (size_t)bt->T);
    if (rs)
        for (int b = 0; b < bt->B; b++)
            for (int32_t r = bt->cu[b]; r < bt->cu[b + 1]; r++)
                rs[r] = b;
    return rs;
}
