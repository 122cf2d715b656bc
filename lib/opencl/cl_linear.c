/* The layer's projections on the device (cl/linear.cl); the weights come
 * from the layer's device-resident copy when the job carries a key. */
#include "cl_weights.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

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
    nsa_clr_args a = {st->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR], 0, CL_SUCCESS};
    ARG_MEM(&a, x);
    ARG_MEM(&a, w);
    ARG_MEM(&a, b);
    ARG_INT(&a, j->b != NULL);
    ARG_INT(&a, rows);
    ARG_INT(&a, j->in);
    ARG_INT(&a, j->out);
    ARG_MEM(&a, y);
    {
        const size_t local[2] = {NSA_CL_GEMM_TS, NSA_CL_GEMM_TS};
        const size_t global[2] = {
            ((size_t)j->out + NSA_CL_GEMM_TS - 1) / NSA_CL_GEMM_TS * NSA_CL_GEMM_TS,
            (rows + NSA_CL_GEMM_TS - 1) / NSA_CL_GEMM_TS * NSA_CL_GEMM_TS};
        TRY(nsa_clr_launch_nd(&B, &a, "nsa_linear", 2, global, local));
    }
    TRY(nsa_clr_download(&B, y, sizeof(float) * rows * j->out, j->y));
done:
    nsa_clr_bufs_free(&B);
    return s;
}

/* Top-n alone over caller-given group scores[T][G][max_vis] (a test hook:
 * ties and forced blocks checked against nsa_bm_select_f). */
