/* Plumbing shared by the OpenCL job files: the buffers of one job, kernel
 * arguments in order, launches (timed when profiling), error handling. */
#ifndef NSA_CL_RUN_H
#define NSA_CL_RUN_H

#include "cl_internal.h"

#define NSA_CLR_MAX_BUFS 32

/* Device buffers of one job, released together. */
typedef struct nsa_clr_bufs {
    nsa_cl_state *st;
    nsa_context *ctx;
    int n;
    cl_mem m[NSA_CLR_MAX_BUFS];
} nsa_clr_bufs;

/* Kernel arguments in order; the first failure is kept. */
typedef struct nsa_clr_args {
    cl_kernel k;
    cl_uint i;
    cl_int err;
} nsa_clr_args;

#define ARG_MEM(a, m) nsa_clr_arg((a), sizeof(cl_mem), &(m))
#define ARG_INT(a, v)                                                                          \
    do {                                                                                       \
        cl_int v_ = (cl_int)(v);                                                               \
        nsa_clr_arg((a), sizeof v_, &v_);                                                      \
    } while (0)
#define ARG_FLT(a, v)                                                                          \
    do {                                                                                       \
        cl_float v_ = (cl_float)(v);                                                           \
        nsa_clr_arg((a), sizeof v_, &v_);                                                      \
    } while (0)
#define ARG_LOCAL(a, floats) nsa_clr_arg((a), sizeof(float) * (size_t)(floats), NULL)

#define TRY(x)                                                                                 \
    do {                                                                                       \
        if ((s = (x)) != NSA_OK)                                                               \
            goto done;                                                                         \
    } while (0)

NSA_HIDDEN void nsa_clr_bufs_free(nsa_clr_bufs *b);
/* A buffer of bytes (at least 4), filled from host when given. */
NSA_HIDDEN nsa_status nsa_clr_buf_new(nsa_clr_bufs *b, size_t bytes, const void *host,
                                      cl_mem *out);
/* K/V upload in the storage kind (rounded to nearest even). */
NSA_HIDDEN nsa_status nsa_clr_buf_kv(nsa_clr_bufs *b, nsa_cl_kv kv, const float *x,
                                     size_t count, cl_mem *out);
NSA_HIDDEN nsa_status nsa_clr_download(nsa_clr_bufs *b, cl_mem m, size_t bytes, void *host);
NSA_HIDDEN void nsa_clr_arg(nsa_clr_args *a, size_t size, const void *v);
/* Enqueues a->k over dims dimensions (global a multiple of local); with
 * profiling on, waits and adds the kernel's time to the label name. */
NSA_HIDDEN nsa_status nsa_clr_launch_nd(nsa_clr_bufs *b, nsa_clr_args *a, const char *name,
                                        cl_uint dims, const size_t *global,
                                        const size_t *local);
/* 1-D, global rounded up to a multiple of local. */
NSA_HIDDEN nsa_status nsa_clr_launch(nsa_clr_bufs *b, nsa_clr_args *a, const char *name,
                                     size_t global, size_t local);

/* row -> sequence index for every packed row (malloc'd; NULL if out of
 * memory). */
NSA_HIDDEN int32_t *nsa_clr_row_seq(const nsa_batch *bt);

/* The device buffers of one run of phi's kernels (cl/phi.cl) over C
 * tokens: token i reads the l rows [G][dim] of x from row src[i]; pe,
 * w1, b1, w2, b2 as the nsa_phi (a 4-byte stand-in where absent); hid
 * [C][G][hidden] for an mlp; out [C][G][dim]. */
typedef struct nsa_cl_phi_io {
    const nsa_phi *phi;
    cl_mem x, pe, src, w1, b1, w2, b2, hid, out;
    int C, G, l, dim;
} nsa_cl_phi_io;

NSA_HIDDEN const char *nsa_cl_phi_args(cl_kernel *K, const nsa_cl_phi_io *io, int i,
                                       nsa_clr_args *a, size_t *items);

#endif
