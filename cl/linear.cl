/* y[rows][out] = x[rows][in] W^T + b, W [out][in] (torch.nn.Linear): the
 * layer's projections. Tiles of NSA_GEMM_TS rows x NSA_GEMM_TS outputs,
 * one work-item per output element, work-groups of NSA_GEMM_TS^2; x and W
 * come through local memory NSA_GEMM_KD columns at a time (loaded as rows
 * of KD floats, so a warp reads consecutive words, and few barriers per
 * output). Each output is one sum in ascending k, whatever rows is: a
 * decode step's K/V rows equal prefill's bit for bit. */
#ifndef NSA_GEMM_TS
#define NSA_GEMM_TS 16
#endif
#ifndef NSA_GEMM_KD
#define NSA_GEMM_KD 64
#endif

__kernel void nsa_linear(__global const float *x, __global const float *W,
                         __global const float *b, int has_b, int rows, int in, int out,
                         __global float *y)
{
    __local float xs[NSA_GEMM_TS][NSA_GEMM_KD + 1], ws[NSA_GEMM_TS][NSA_GEMM_KD + 1];
    const int lc = get_local_id(0), lr = get_local_id(1);
    const int lid = lr * NSA_GEMM_TS + lc;
    const int o0 = get_group_id(0) * NSA_GEMM_TS, r0 = get_group_id(1) * NSA_GEMM_TS;
    const int o = o0 + lc; /* output column */
    const int r = r0 + lr; /* row */
    float acc = 0.0f;
    for (int k0 = 0; k0 < in; k0 += NSA_GEMM_KD) {
        for (int e = lid; e < NSA_GEMM_TS * NSA_GEMM_KD; e += NSA_GEMM_TS * NSA_GEMM_TS) {
            const int i = e / NSA_GEMM_KD, kk = e % NSA_GEMM_KD, k = k0 + kk;
            xs[i][kk] = r0 + i < rows && k < in ? x[(size_t)(r0 + i) * in + k] : 0.0f;
            ws[i][kk] = o0 + i < out && k < in ? W[(size_t)(o0 + i) * in + k] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < NSA_GEMM_KD; kk++)
            acc += xs[lr][kk] * ws[lc][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (r < rows && o < out)
        y[(size_t)r * out + o] = acc + (has_b ? b[o] : 0.0f);
}

/* The same for few rows (a decode step: rows = batch <= NSA_LIN_RMAX), where
 * the tiles above would leave most lanes idle and read W in 64-byte pieces:
 * a work-group of 4 teams of 64 lanes, one output (row of W) a team; the
 * lanes of a team stream the row as float4 (1 KB a pass, coalesced) and
 * keep one sum per x row, then one lane per (team, x row) adds the 64
 * partial sums. W is read once at full width; x (rows x in) comes through
 * the cache. Needs in % 4 == 0 (float4 alignment). The sums run in
 * another order than nsa_linear's, so the host uses it only for outputs
 * that do not go into the decode caches (q, gates, o). */
#define NSA_LIN_RMAX 16
#define NSA_LIN_TEAM 64
#define NSA_LIN_TEAMS 4

__kernel void nsa_linear_rows(__global const float *x, __global const float *W,
                              __global const float *b, int has_b, int rows, int in, int out,
                              __global float *y)
{
    __local float part[NSA_LIN_TEAMS][NSA_LIN_RMAX][NSA_LIN_TEAM + 1];
    const int lid = get_local_id(0);
    const int team = lid / NSA_LIN_TEAM, lane = lid % NSA_LIN_TEAM;
    const int o = get_group_id(0) * NSA_LIN_TEAMS + team;
    const int in4 = in / 4;
    float acc[NSA_LIN_RMAX];
    for (int r = 0; r < NSA_LIN_RMAX; r++)
        acc[r] = 0.0f;
    if (o < out) {
        __global const float4 *w4 = (__global const float4 *)(W + (size_t)o * in);
        for (int k = lane; k < in4; k += NSA_LIN_TEAM) {
            const float4 w = w4[k];
#pragma unroll
            for (int r = 0; r < NSA_LIN_RMAX; r++)
                if (r < rows) {
                    const float4 v = ((__global const float4 *)(x + (size_t)r * in))[k];
                    acc[r] += w.x * v.x + w.y * v.y + w.z * v.z + w.w * v.w;
                }
        }
    }
    for (int r = 0; r < NSA_LIN_RMAX; r++)
        part[team][r][lane] = acc[r];
    barrier(CLK_LOCAL_MEM_FENCE);
    /* lanes 0 .. TEAMS * RMAX - 1: one (team, row) sum each */
    if (lid < NSA_LIN_TEAMS * NSA_LIN_RMAX) {
        const int t = lid / NSA_LIN_RMAX, r = lid % NSA_LIN_RMAX;
        const int oo = get_group_id(0) * NSA_LIN_TEAMS + t;
        if (r < rows && oo < out) {
            float s = 0.0f;
            for (int i = 0; i < NSA_LIN_TEAM; i++)
                s += part[t][r][i];
            y[(size_t)r * out + oo] = s + (has_b ? b[oo] : 0.0f);
        }
    }
}
