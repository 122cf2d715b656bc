/* y[rows][out] = x[rows][in] W^T + b, W [out][in] (torch.nn.Linear): the
 * layer's projections. Square tiles of NSA_GEMM_TS through local memory;
 * one work-item per output element, work-groups of NSA_GEMM_TS^2. */
#ifndef NSA_GEMM_TS
#define NSA_GEMM_TS 16
#endif

__kernel void nsa_linear(__global const float *x, __global const float *W,
                         __global const float *b, int has_b, int rows, int in, int out,
                         __global float *y)
{
    __local float xs[NSA_GEMM_TS][NSA_GEMM_TS + 1], ws[NSA_GEMM_TS][NSA_GEMM_TS + 1];
    const int lc = get_local_id(0), lr = get_local_id(1);
    const int o = get_group_id(0) * NSA_GEMM_TS + lc; /* output column */
    const int r = get_group_id(1) * NSA_GEMM_TS + lr; /* row */
    const int wo = get_group_id(0) * NSA_GEMM_TS + lr; /* W row this lane loads */
    float acc = 0.0f;
    for (int k0 = 0; k0 < in; k0 += NSA_GEMM_TS) {
        const int k = k0 + lc;
        xs[lr][lc] = r < rows && k < in ? x[(size_t)r * in + k] : 0.0f;
        ws[lr][lc] = wo < out && k < in ? W[(size_t)wo * in + k] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < NSA_GEMM_TS; kk++)
            acc += xs[lr][kk] * ws[lc][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (r < rows && o < out)
        y[(size_t)r * out + o] = acc + (has_b ? b[o] : 0.0f);
}
