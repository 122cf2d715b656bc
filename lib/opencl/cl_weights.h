/* Device-resident layer weights for nsa_linear (cl_weights.c). */
#ifndef NSA_CL_WEIGHTS_H
#define NSA_CL_WEIGHTS_H

#include "cl_run.h"

/* Device buffers holding j's W and b (b: a 4-byte placeholder when NULL).
 * With j->key, from the layer's cache (uploaded there when the slot is
 * empty or its generation is not the key's); without, uploaded into bufs
 * (released with the job). On failure the slot is emptied and the error
 * returned: a later call uploads again, nothing stale is ever used. */
NSA_HIDDEN nsa_status nsa_cl_weights(nsa_clr_bufs *bufs, const nsa_linear_job *j, cl_mem *w,
                                     cl_mem *b);

/* nsa_linear_rows (cl/linear.cl): rows up to NSA_CL_LIN_RMAX, work-groups of
 * NSA_CL_LIN_WG lanes, NSA_CL_LIN_OUTS outputs each. */
#define NSA_CL_LIN_RMAX 16
#define NSA_CL_LIN_WG 256
#define NSA_CL_LIN_OUTS 4

/* nsa_linear_rows_mma (cl/linear_mma.cl, the tensor-core program): rows up
 * to NSA_CL_LIN_RMAX, NSA_CL_LM_OUTS outputs a work-group of 1 ..
 * NSA_CL_LM_MAXW warps (its LM_MAXW). */
#define NSA_CL_LM_OUTS 16
#define NSA_CL_LM_MAXW 8

/* 1 if j may take those kernels: a keyed job of 1 .. NSA_CL_LIN_RMAX rows,
 * in % 4 == 0, whose output does not go into the decode caches (q, gates,
 * Wo: they sum in another order than nsa_linear), kept with the layer's
 * weights; 0: the tiled nsa_linear. */
NSA_HIDDEN int nsa_cl_rows_fit(const nsa_linear_job *j);

/* y = x W^T + b for j's shape, x and y already on the device (w, b from
 * nsa_cl_weights): where nsa_cl_rows_fit, nsa_linear_rows_mma if the
 * device has it, else nsa_linear_rows if usable; else nsa_linear. */
NSA_HIDDEN nsa_status nsa_cl_gemm(nsa_clr_bufs *bufs, const nsa_linear_job *j, cl_mem x,
                                  cl_mem w, cl_mem b, cl_mem y);

/* nsa_linear_few (cl/linear.cl): NSA_CL_FEW_WG lanes a work-group,
 * NSA_CL_FEW_OUTS outputs of one job and NSA_CL_FEW_RMAX rows each, up to
 * NSA_CL_FEW_JOBS jobs a launch. */
#define NSA_CL_FEW_WG 64
#define NSA_CL_FEW_OUTS 16
#define NSA_CL_FEW_RMAX 16
#define NSA_CL_FEW_JOBS 6

/* The n linears j[i] (same rows and in) over x into y[i], weights w[i],
 * b[i] (from nsa_cl_weights), in one launch of nsa_linear_few: every
 * output equals nsa_linear's bit for bit. Where the device lacks that
 * kernel or the jobs do not fit it, each by nsa_cl_gemm. label: the
 * launch's name in profiles. */
NSA_HIDDEN nsa_status nsa_cl_gemm_few(nsa_clr_bufs *bufs, const nsa_linear_job *const *j, int n,
                                      cl_mem x, const cl_mem *w, const cl_mem *b,
                                      const cl_mem *y, const char *label);

/* n linears over one x (vtable linear_many): x uploaded once, one wait. */
NSA_HIDDEN nsa_status nsa_cl_linear_many(nsa_context *ctx, const nsa_linear_job *jobs, int n);

#endif
