/* phi (spec 2) on the device: avg, linear, mlp (cl/phi.cl). */
#include "cl_run.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

nsa_status nsa_cl_compress(nsa_context *ctx, const nsa_cmp_job *job)
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
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    nsa_status s = NSA_OK;
    cl_mem x, pe, srcb, out, w1, b1, w2, b2, h = NULL, dst;
    cl_kernel *K = st->kernel[NSA_CL_KV_F32];
    TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)bt->T * G * dim, job->x, &x));
    TRY(nsa_clr_buf_new(&B, phi->pe ? sizeof(float) * (size_t)G * L : 4, phi->pe, &pe));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)C, src, &srcb));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)C * G * dim, NULL, &out));
    if (phi->kind == NSA_PHI_AVG) {
        nsa_clr_args a = {K[NSA_CLK_PHI_AVG], 0, CL_SUCCESS};
        ARG_MEM(&a, x);
        ARG_MEM(&a, pe);
        ARG_INT(&a, phi->pe != NULL);
        ARG_MEM(&a, srcb);
        ARG_INT(&a, C);
        ARG_INT(&a, G);
        ARG_INT(&a, l);
        ARG_INT(&a, dim);
        ARG_MEM(&a, out);
        TRY(nsa_clr_launch(&B, &a, "nsa_phi_avg", (size_t)C * G * dim, wg));
    } else {
        const int N = hid ? hid : dim;
        TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)G * N * L, phi->w1, &w1));
        TRY(nsa_clr_buf_new(&B, phi->b1 ? sizeof(float) * (size_t)G * N : 4, phi->b1, &b1));
        if (hid)
            TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)C * G * hid, NULL, &h));
        nsa_clr_args a = {K[NSA_CLK_PHI_LIN], 0, CL_SUCCESS};
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
        TRY(nsa_clr_launch(&B, &a, "nsa_phi_lin", (size_t)C * G * N, wg));
        if (hid) {
            TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)G * dim * hid, phi->w2, &w2));
            TRY(nsa_clr_buf_new(&B, phi->b2 ? sizeof(float) * (size_t)G * dim : 4, phi->b2,
                                &b2));
            nsa_clr_args o = {K[NSA_CLK_PHI_OUT], 0, CL_SUCCESS};
            ARG_MEM(&o, h);
            ARG_INT(&o, C);
            ARG_INT(&o, G);
            ARG_INT(&o, hid);
            ARG_INT(&o, dim);
            ARG_MEM(&o, w2);
            ARG_MEM(&o, b2);
            ARG_INT(&o, phi->b2 != NULL);
            ARG_MEM(&o, out);
            TRY(nsa_clr_launch(&B, &o, "nsa_phi_out", (size_t)C * G * dim, wg));
        }
    }
    TRY(nsa_clr_download(&B, out, sizeof(float) * (size_t)C * G * dim, job->out));
done:
    nsa_clr_bufs_free(&B);
    free(src);
    return s;
}
