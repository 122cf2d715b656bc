/* The layer's projections on the device (cl/linear.cl); the weights come
 * from the layer's device-resident copy when the job carries a key. */
#include "cl_weights.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Warps of nsa_linear_rows_mma's work-groups for j: K split over more
 * warps (1 .. NSA_CL_LM_MAXW, doubling) until the launch has about 16
 * warps a compute unit (bytes in flight: a decode step's Wo has only 128
 * tiles of 16 outputs) while each warp keeps at least 4 chunks of 32
 * columns; NSA_OPENCL_LM_WARPS (st->lm_warps) overrides. */
static int lm_warps(const nsa_cl_state *st, const nsa_linear_job *j)
{
    if (st->lm_warps)
        return st->lm_warps;
    const size_t tiles = ((size_t)j->out + NSA_CL_LM_OUTS - 1) / NSA_CL_LM_OUTS;
    const size_t chunks = ((size_t)j->in + 31) / 32;
    const size_t want = 16 * (size_t)(st->compute_units ? st->compute_units : 1);
    int nw = 1;
    while (nw < NSA_CL_LM_MAXW && tiles * (size_t)nw < want && chunks >= 8 * (size_t)nw)
        nw *= 2;
    return nw;
}

/* nsa_linear_rows (mma = 0) or nsa_linear_rows_mma (1, nw warps a
 * work-group; 0: lm_warps) over j's shape. */
static nsa_status rows_launch(nsa_clr_bufs *B, const nsa_linear_job *j, int mma, int nw,
                              cl_mem x, cl_mem w, cl_mem b, cl_mem y)
{
    nsa_cl_state *st = B->st;
    nsa_clr_args a = {mma ? st->mma_kernel[st->kv][NSA_CLM_LINEAR_ROWS]
                          : st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR_ROWS],
                      0, CL_SUCCESS};
    ARG_MEM(&a, x);
    ARG_MEM(&a, w);
    ARG_MEM(&a, b);
    ARG_INT(&a, j->b != NULL);
    ARG_INT(&a, j->rows);
    ARG_INT(&a, j->in);
    ARG_INT(&a, j->out);
    ARG_MEM(&a, y);
    if (!mma)
        return nsa_clr_launch(B, &a, "nsa_linear_rows",
                              ((size_t)j->out + NSA_CL_LIN_OUTS - 1) / NSA_CL_LIN_OUTS *
                                  NSA_CL_LIN_WG,
                              NSA_CL_LIN_WG);
    const size_t lanes = 32 * (size_t)(nw ? nw : lm_warps(st, j));
    return nsa_clr_launch(B, &a, "nsa_linear_rows_mma",
                          ((size_t)j->out + NSA_CL_LM_OUTS - 1) / NSA_CL_LM_OUTS * lanes, lanes);
}

/* y = x W^T + b for x and y already on the device (w, b from
 * nsa_cl_weights). */
nsa_status nsa_cl_gemm(nsa_clr_bufs *B, const nsa_linear_job *j, cl_mem x, cl_mem w, cl_mem b,
                       cl_mem y)
{
    nsa_cl_state *st = B->st;
    if (nsa_cl_rows_fit(j)) {
        if (st->mma_kernel[st->kv][NSA_CLM_LINEAR_ROWS])
            return rows_launch(B, j, 1, 0, x, w, b, y);
        if (st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR_ROWS]) /* optional too */
            return rows_launch(B, j, 0, 0, x, w, b, y);
    }
    nsa_clr_args a = {st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR], 0, CL_SUCCESS};
    const size_t rows = (size_t)j->rows;
    ARG_MEM(&a, x);
    ARG_MEM(&a, w);
    ARG_MEM(&a, b);
    ARG_INT(&a, j->b != NULL);
    ARG_INT(&a, rows);
    ARG_INT(&a, j->in);
    ARG_INT(&a, j->out);
    ARG_MEM(&a, y);
    const size_t local[2] = {NSA_CL_GEMM_TS, NSA_CL_GEMM_TS};
    const size_t global[2] = {
        ((size_t)j->out + NSA_CL_GEMM_TS - 1) / NSA_CL_GEMM_TS * NSA_CL_GEMM_TS,
        (rows + NSA_CL_GEMM_TS - 1) / NSA_CL_GEMM_TS * NSA_CL_GEMM_TS};
    return nsa_clr_launch_nd(B, &a, "nsa_linear", 2, global, local);
}

nsa_status nsa_cl_linear_rows(nsa_context *ctx, const nsa_linear_job *j, int mma, int nw)
{
    nsa_cl_state *st;
    nsa_status s = nsa_cl_hook_state(ctx, &st);
    if (s != NSA_OK)
        return s;
    const cl_kernel k = mma ? st->mma_kernel[st->kv][NSA_CLM_LINEAR_ROWS]
                            : st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR_ROWS];
    if (!k)
        return nsa_fail(ctx, NSA_ERR_UNSUPPORTED, "opencl: %s unusable here: %s",
                        mma ? "nsa_linear_rows_mma" : "nsa_linear_rows",
                        mma ? st->mma_why[st->kv][NSA_CLM_LINEAR_ROWS]
                            : st->kernel_why[NSA_CL_KV_F32][NSA_CLK_LINEAR_ROWS]);
    if (j->rows < 1 || j->rows > NSA_CL_LIN_RMAX || j->in < 1 || j->in % 4 != 0 || j->out < 1 ||
        nw < 0 || nw > NSA_CL_LM_MAXW || (nw & (nw - 1)) != 0)
        return nsa_fail(ctx, NSA_ERR_ARG,
                        "opencl: the few-row kernels take 1 .. %d rows, in %% 4 == 0 and "
                        "0 or 1, 2, 4, 8 warps",
                        NSA_CL_LIN_RMAX);
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    const size_t rows = (size_t)j->rows;
    nsa_linear_job plain = *j;
    plain.key = NULL; /* weights uploaded for this call */
    cl_mem x, w, b, y;
    TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * j->in, j->x, &x));
    TRY(nsa_cl_weights(&B, &plain, &w, &b));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * j->out, NULL, &y));
    TRY(rows_launch(&B, j, mma, nw, x, w, b, y));
    TRY(nsa_clr_download(&B, y, sizeof(float) * rows * j->out, j->y));
done:
    nsa_clr_bufs_free(&B);
    return s;
}

nsa_status nsa_cl_gemm_few(nsa_clr_bufs *B, const nsa_linear_job *const *j, int n, cl_mem x,
                           const cl_mem *w, const cl_mem *b, const cl_mem *y, const char *label)
{
    cl_kernel k = B->st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR_FEW];
    int fits = k && n >= 1 && n <= NSA_CL_FEW_JOBS && j[0]->rows <= INT_MAX;
    size_t tiles = 0;
    for (int i = 0; fits && i < n; i++) {
        fits = j[i]->rows == j[0]->rows && j[i]->in == j[0]->in;
        tiles += ((size_t)j[i]->out + NSA_CL_FEW_OUTS - 1) / NSA_CL_FEW_OUTS;
    }
    if (!fits || tiles * NSA_CL_FEW_WG > INT_MAX) {
        nsa_status s = NSA_OK;
        for (int i = 0; i < n && s == NSA_OK; i++)
            s = nsa_cl_gemm(B, j[i], x, w[i], b[i], y[i]);
        return s;
    }
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    int has_b = 0;
    for (int i = 0; i < n; i++)
        has_b |= (j[i]->b != NULL) << i;
    ARG_MEM(&a, x);
    ARG_INT(&a, j[0]->rows);
    ARG_INT(&a, j[0]->in);
    ARG_INT(&a, n);
    ARG_INT(&a, has_b);
    for (int i = 0; i < NSA_CL_FEW_JOBS; i++) { /* the unused slots repeat job 0 */
        const int u = i < n ? i : 0;
        ARG_MEM(&a, w[u]);
        ARG_MEM(&a, b[u]);
        ARG_MEM(&a, y[u]);
        ARG_INT(&a, j[u]->out);
    }
    const size_t rows = (size_t)j[0]->rows;
    const size_t local[2] = {NSA_CL_FEW_WG, 1};
    const size_t global[2] = {tiles * NSA_CL_FEW_WG,
                              (rows + NSA_CL_FEW_RMAX - 1) / NSA_CL_FEW_RMAX};
    return nsa_clr_launch_nd(B, &a, label, 2, global, local);
}

nsa_status nsa_cl_linear(nsa_context *ctx, const nsa_linear_job *j)
{
    nsa_cl_state *st = ctx->be_state;
    if (j->rows > INT_MAX || j->rows == 0)
        return j->rows == 0 ? NSA_OK
                            : nsa_fail(ctx, NSA_ERR_RANGE, "opencl: %lld rows are too many",
                                       (long long)j->rows);
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    nsa_status s = NSA_OK;
    cl_mem x, w, b, y;
    const size_t rows = (size_t)j->rows;
    TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * j->in, j->x, &x));
    TRY(nsa_cl_weights(&B, j, &w, &b)); /* the layer's device copy when keyed */
    TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * j->out, NULL, &y));
    TRY(nsa_cl_gemm(&B, j, x, w, b, y));
    TRY(nsa_clr_download(&B, y, sizeof(float) * rows * j->out, j->y));
done:
    nsa_clr_bufs_free(&B);
    return s;
}

nsa_status nsa_cl_linear_few(nsa_context *ctx, const nsa_linear_job *jobs, int n)
{
    nsa_cl_state *st;
    nsa_status s = nsa_cl_hook_state(ctx, &st);
    if (s != NSA_OK)
        return s;
    if (!st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR_FEW] || n < 1 || n > NSA_CL_FEW_JOBS)
        return nsa_fail(ctx, NSA_ERR_UNSUPPORTED, "opencl: nsa_linear_few cannot run %d jobs here",
                        n);
    for (int i = 0; i < n; i++)
        if (jobs[i].rows != jobs[0].rows || jobs[i].in != jobs[0].in || jobs[i].x != jobs[0].x ||
            jobs[i].rows < 1 || jobs[i].rows > INT_MAX)
            return nsa_fail(ctx, NSA_ERR_ARG, "opencl: nsa_linear_few's jobs share x, rows, in");
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    const size_t rows = (size_t)jobs[0].rows;
    const nsa_linear_job *jp[NSA_CL_FEW_JOBS];
    cl_mem x, w[NSA_CL_FEW_JOBS], b[NSA_CL_FEW_JOBS], y[NSA_CL_FEW_JOBS];
    TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * jobs[0].in, jobs[0].x, &x));
    for (int i = 0; i < n; i++) {
        jp[i] = &jobs[i];
        TRY(nsa_cl_weights(&B, &jobs[i], &w[i], &b[i]));
        TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * jobs[i].out, NULL, &y[i]));
    }
    TRY(nsa_cl_gemm_few(&B, jp, n, x, w, b, y, "nsa_linear_few"));
    for (int i = 0; i < n; i++)
        TRY(nsa_clr_download(&B, y[i], sizeof(float) * rows * jobs[i].out, jobs[i].y));
done:
    nsa_clr_bufs_free(&B);
    return s;
}

/* Linears over one x: x goes up once, the outputs come down with one wait
 * (the reads are queued behind the kernels; the last one blocks). */
nsa_status nsa_cl_linear_many(nsa_context *ctx, const nsa_linear_job *jobs, int n)
{
    nsa_cl_state *st = ctx->be_state;
    enum { MOST = 8 }; /* x + 3 buffers a job within NSA_CLR_MAX_BUFS */
    int same = n >= 1 && n <= MOST;
    for (int i = 1; same && i < n; i++)
        same = jobs[i].x == jobs[0].x && jobs[i].rows == jobs[0].rows &&
               jobs[i].in == jobs[0].in;
    if (!same || jobs[0].rows > INT_MAX || jobs[0].rows == 0) {
        nsa_status s = NSA_OK;
        for (int i = 0; i < n && s == NSA_OK; i++)
            s = nsa_cl_linear(ctx, &jobs[i]);
        return s;
    }
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    nsa_status s = NSA_OK;
    const size_t rows = (size_t)jobs[0].rows;
    cl_mem x, y[MOST];
    int queued = 0; /* reads in flight: waited for before returning */
    TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * jobs[0].in, jobs[0].x, &x));
    for (int i = 0; i < n; i++) {
        cl_mem w, b;
        TRY(nsa_cl_weights(&B, &jobs[i], &w, &b));
        TRY(nsa_clr_buf_new(&B, sizeof(float) * rows * jobs[i].out, NULL, &y[i]));
        TRY(nsa_cl_gemm(&B, &jobs[i], x, w, b, y[i]));
    }
    for (int i = 0; i < n; i++) {
        cl_int err = clEnqueueReadBuffer(st->queue, y[i], i == n - 1 ? CL_TRUE : CL_FALSE, 0,
                                         sizeof(float) * rows * jobs[i].out, jobs[i].y, 0,
                                         NULL, NULL);
        if (err != CL_SUCCESS) {
            s = nsa_cl_fail(ctx, "clEnqueueReadBuffer", err);
            goto done;
        }
        queued = i < n - 1;
    }
done:
    if (queued)
        clFinish(st->queue); /* no read may land in the caller's memory later */
    nsa_clr_bufs_free(&B);
    return s;
}

/* Top-n alone over caller-given group scores[T][G][max_vis] (a test hook:
 * ties and forced blocks checked against nsa_bm_select_f). */
