/* phi (spec 2) on the device: avg, linear, mlp (cl/phi.cl). */
#include "cl_run.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Launch i of phi's kernels over io (0: nsa_phi_avg, or nsa_phi_lin for a
 * linear or the mlp's first layer; 1: the mlp's nsa_phi_out): its
 * arguments into *a, its work-items into *items and its name returned;
 * NULL when phi has no launch i. Shared by prefill (nsa_cl_compress) and
 * the decode mirror's device-resident steps, so both run phi with the
 * same kernels and arguments. */
const char *nsa_cl_phi_args(cl_kernel *K, const nsa_cl_phi_io *io, int i, nsa_clr_args *a,
                            size_t *items)
{
    const nsa_phi *phi = io->phi;
    const int hid = phi->kind == NSA_PHI_MLP ? phi->hidden : 0;
    const int avg = phi->kind == NSA_PHI_AVG, N = hid ? hid : io->dim;
    const size_t rows = (size_t)io->C * io->G;
    if (i == 1) {
        if (!hid)
            return NULL;
        *a = (nsa_clr_args){K[NSA_CLK_PHI_OUT], 0, CL_SUCCESS};
        ARG_MEM(a, io->hid);
        ARG_INT(a, io->C);
        ARG_INT(a, io->G);
        ARG_INT(a, hid);
        ARG_INT(a, io->dim);
        ARG_MEM(a, io->w2);
        ARG_MEM(a, io->b2);
        ARG_INT(a, phi->b2 != NULL);
        ARG_MEM(a, io->out);
        *items = rows * io->dim;
        return "nsa_phi_out";
    }
    if (i != 0)
        return NULL;
    *a = (nsa_clr_args){K[avg ? NSA_CLK_PHI_AVG : NSA_CLK_PHI_LIN], 0, CL_SUCCESS};
    ARG_MEM(a, io->x);
    ARG_MEM(a, io->pe);
    ARG_INT(a, phi->pe != NULL);
    ARG_MEM(a, io->src);
    ARG_INT(a, io->C);
    ARG_INT(a, io->G);
    ARG_INT(a, io->l);
    ARG_INT(a, io->dim);
    if (avg) {
        ARG_MEM(a, io->out);
        *items = rows * io->dim;
        return "nsa_phi_avg";
    }
    ARG_MEM(a, io->w1);
    ARG_MEM(a, io->b1);
    ARG_INT(a, phi->b1 != NULL);
    ARG_INT(a, N);
    ARG_INT(a, hid > 0);
    const cl_mem dst = hid ? io->hid : io->out;
    ARG_MEM(a, dst);
    *items = rows * N;
    return "nsa_phi_lin";
}

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
    nsa_cl_phi_io io = {phi, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        (int)C, G, l, dim};
    TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)bt->T * G * dim, job->x, &io.x));
    TRY(nsa_clr_buf_new(&B, phi->pe ? sizeof(float) * (size_t)G * L : 4, phi->pe, &io.pe));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)C, src, &io.src));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)C * G * dim, NULL, &io.out));
    if (phi->kind != NSA_PHI_AVG) {
        const int N = hid ? hid : dim;
        TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)G * N * L, phi->w1, &io.w1));
        TRY(nsa_clr_buf_new(&B, phi->b1 ? sizeof(float) * (size_t)G * N : 4, phi->b1, &io.b1));
    }
    if (hid) {
        TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)C * G * hid, NULL, &io.hid));
        TRY(nsa_clr_buf_new(&B, sizeof(float) * (size_t)G * dim * hid, phi->w2, &io.w2));
        TRY(nsa_clr_buf_new(&B, phi->b2 ? sizeof(float) * (size_t)G * dim : 4, phi->b2, &io.b2));
    }
    for (int i = 0; i < 2; i++) {
        nsa_clr_args a;
        size_t items;
        const char *name = nsa_cl_phi_args(st->kernel[NSA_CL_KV_F32], &io, i, &a, &items);
        if (name)
            TRY(nsa_clr_launch(&B, &a, name, items, wg));
    }
    TRY(nsa_clr_download(&B, io.out, sizeof(float) * (size_t)C * G * dim, job->out));
done:
    nsa_clr_bufs_free(&B);
    free(src);
    return s;
}
