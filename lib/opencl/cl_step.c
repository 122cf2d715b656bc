/* Test hooks of the fused decode step's RoPE kernels (cl/rope64.cl): the
 * angles the device computes in double, and the rotation with them, each
 * alone over caller data, so tests can hold them against the host's
 * double computation at any position. */
#include "cl_run.h"

#include <stdlib.h>

/* RoPE's frequencies (nsa_rope_inv_freq) in a new buffer of W. */
static nsa_status inv_buf(nsa_clr_bufs *W, int rope_dim, float base, cl_mem *out)
{
    const size_t bytes = sizeof(double) * (size_t)(rope_dim / 2 > 0 ? rope_dim / 2 : 1);
    double *inv = malloc(bytes);
    if (!inv)
        return nsa_fail(W->ctx, NSA_ERR_NOMEM, "out of memory for the RoPE frequencies");
    nsa_rope_inv_freq(rope_dim, base, inv);
    nsa_status s = nsa_clr_buf_new(W, bytes, inv, out);
    free(inv);
    return s;
}

/* The kernel k of the state's storage kind, or NSA_ERR_UNSUPPORTED. */
static nsa_status rope64_kernel(nsa_context *ctx, nsa_cl_state **st, int k, cl_kernel *out)
{
    nsa_status s = nsa_cl_hook_state(ctx, st);
    if (s != NSA_OK)
        return s;
    *out = (*st)->kernel[(*st)->kv][k];
    return *out ? NSA_OK
                : nsa_fail(ctx, NSA_ERR_UNSUPPORTED, "opencl: RoPE in double unusable on %s: %s",
                           (*st)->device_name, (*st)->kernel_why[(*st)->kv][k]);
}

nsa_status nsa_cl_dr_angles(nsa_context *ctx, const int32_t *pos, int rows, int rope_dim,
                            float base, double *tab)
{
    nsa_cl_state *st;
    cl_kernel k;
    nsa_status s = rope64_kernel(ctx, &st, NSA_CLK_DR_ANGLES, &k);
    if (s != NSA_OK)
        return s;
    nsa_clr_bufs W = {st, ctx, 0, {0}};
    cl_mem pb, tb, ib;
    TRY(nsa_clr_buf_new(&W, sizeof(int32_t) * (size_t)rows, pos, &pb));
    TRY(inv_buf(&W, rope_dim, base, &ib));
    TRY(nsa_clr_buf_new(&W, sizeof(double) * (size_t)rows * rope_dim, NULL, &tb));
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    ARG_MEM(&a, pb);
    ARG_INT(&a, rows);
    ARG_INT(&a, rope_dim);
    ARG_MEM(&a, ib);
    ARG_MEM(&a, tb);
    TRY(nsa_clr_launch(&W, &a, "nsa_dr_angles", (size_t)rows * (rope_dim / 2), (size_t)st->wg));
    TRY(nsa_clr_download(&W, tb, sizeof(double) * (size_t)rows * rope_dim, tab));
done:
    nsa_clr_bufs_free(&W);
    return s;
}

nsa_status nsa_cl_dr_rope(nsa_context *ctx, float *q, const int32_t *tpos, int B, int H, int dk,
                          int rope_dim, float base)
{
    nsa_cl_state *st;
    cl_kernel k;
    nsa_status s = rope64_kernel(ctx, &st, NSA_CLK_DR_ROPE, &k);
    if (s != NSA_OK)
        return s;
    const size_t nq = (size_t)B * H * dk;
    nsa_clr_bufs W = {st, ctx, 0, {0}};
    cl_mem qb, pb, ib;
    TRY(nsa_clr_buf_new(&W, sizeof(float) * nq, q, &qb));
    TRY(nsa_clr_buf_new(&W, sizeof(int32_t) * (size_t)B, tpos, &pb));
    TRY(inv_buf(&W, rope_dim, base, &ib));
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    ARG_MEM(&a, qb);
    ARG_MEM(&a, pb);
    ARG_INT(&a, B);
    ARG_INT(&a, H);
    ARG_INT(&a, dk);
    ARG_INT(&a, rope_dim);
    ARG_MEM(&a, ib);
    TRY(nsa_clr_launch(&W, &a, "nsa_dr_rope", (size_t)B * H * (rope_dim / 2), (size_t)st->wg));
    TRY(nsa_clr_download(&W, qb, sizeof(float) * nq, q));
done:
    nsa_clr_bufs_free(&W);
    return s;
}
