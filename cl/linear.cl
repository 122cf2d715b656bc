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

/* nsa_linear's outputs, bit for bit, for few rows and up to NSA_FEW_JOBS
 * linears over one x (a decode step's K/V projections: one launch). Each
 * output is the same chain as there: acc += x * w over ascending k,
 * through the zero terms up to the next multiple of NSA_GEMM_KD (they can
 * turn a -0 sum into +0), then + bias; what differs is how W streams in: a
 * work-group takes NSA_FEW_OUTS outputs of one job (many work-groups even
 * for a few hundred outputs), its tiles of NSA_FEW_KD columns come in as
 * whole rows (float4 where in % 4 == 0), and the next tile is loaded into
 * registers while the current one is summed from local memory. A
 * work-item keeps the chains of one output for NSA_FEW_RMAX / NSA_FEW_RG
 * rows (x from local memory, shared by the work-group's outputs); rows
 * beyond NSA_FEW_RMAX take more work-groups (dimension 1). */
#define NSA_FEW_OUTS 16
#define NSA_FEW_RG 4
#define NSA_FEW_WG (NSA_FEW_OUTS * NSA_FEW_RG)
#define NSA_FEW_RMAX 16
#define NSA_FEW_KD 128
#define NSA_FEW_LD (NSA_FEW_KD + 4) /* local row stride: no bank conflicts */
#define NSA_FEW_JOBS 6
/* float4s of one tile (W or x) a work-item loads */
#define NSA_FEW_V4 (NSA_FEW_OUTS * NSA_FEW_KD / 4 / NSA_FEW_WG)

/* tile [NSA_FEW_OUTS or NSA_FEW_RMAX rows][NSA_FEW_KD] of m (nr rows of in
 * floats) at row r0, column k0, into v; zero outside */
static void nsa_few_load(__global const float *m, int r0, int nr, int in, int k0, int lid,
                         float4 *v)
{
    for (int i = 0; i < NSA_FEW_V4; i++) {
        const int e = lid + i * NSA_FEW_WG;
        const int r = r0 + e / (NSA_FEW_KD / 4), k = k0 + e % (NSA_FEW_KD / 4) * 4;
        float4 t = (float4)(0.0f);
        if (r < nr) {
            __global const float *p = m + (size_t)r * in + k;
            if ((in & 3) == 0) {
                if (k < in)
                    t = vload4(0, p);
            } else {
                t.x = k < in ? p[0] : 0.0f;
                t.y = k + 1 < in ? p[1] : 0.0f;
                t.z = k + 2 < in ? p[2] : 0.0f;
                t.w = k + 3 < in ? p[3] : 0.0f;
            }
        }
        v[i] = t;
    }
}

static void nsa_few_store(__local float *s, int lid, const float4 *v)
{
    for (int i = 0; i < NSA_FEW_V4; i++) {
        const int e = lid + i * NSA_FEW_WG;
        vstore4(v[i], 0, s + e / (NSA_FEW_KD / 4) * NSA_FEW_LD + e % (NSA_FEW_KD / 4) * 4);
    }
}

__kernel void nsa_linear_few(__global const float *x, int rows, int in, int njobs, int has_b,
                             __global const float *w0, __global const float *b0,
                             __global float *y0, int out0, __global const float *w1,
                             __global const float *b1, __global float *y1, int out1,
                             __global const float *w2, __global const float *b2,
                             __global float *y2, int out2, __global const float *w3,
                             __global const float *b3, __global float *y3, int out3,
                             __global const float *w4, __global const float *b4,
                             __global float *y4, int out4, __global const float *w5,
                             __global const float *b5, __global float *y5, int out5)
{
    __local float ws[NSA_FEW_OUTS * NSA_FEW_LD], xs[NSA_FEW_RMAX * NSA_FEW_LD];
    const int lid = get_local_id(0);
    const int lo = lid % NSA_FEW_OUTS, rg = lid / NSA_FEW_OUTS;
    const int r0 = get_group_id(1) * NSA_FEW_RMAX;
    /* this work-group's job, and its tile of outputs there */
    int j = 0, t = get_group_id(0), out = out0;
    while (j + 1 < njobs && t >= (out + NSA_FEW_OUTS - 1) / NSA_FEW_OUTS) {
        t -= (out + NSA_FEW_OUTS - 1) / NSA_FEW_OUTS;
        j++;
        out = j == 1 ? out1 : j == 2 ? out2 : j == 3 ? out3 : j == 4 ? out4 : out5;
    }
    __global const float *W =
        j == 0 ? w0 : j == 1 ? w1 : j == 2 ? w2 : j == 3 ? w3 : j == 4 ? w4 : w5;
    __global const float *b =
        j == 0 ? b0 : j == 1 ? b1 : j == 2 ? b2 : j == 3 ? b3 : j == 4 ? b4 : b5;
    __global float *y = j == 0 ? y0 : j == 1 ? y1 : j == 2 ? y2 : j == 3 ? y3 : j == 4 ? y4 : y5;
    const int o0 = t * NSA_FEW_OUTS, nr = rows - r0;
    /* nsa_linear's chain runs to in rounded up to its k tile */
    const int kend = (in + NSA_GEMM_KD - 1) / NSA_GEMM_KD * NSA_GEMM_KD;
    float acc[NSA_FEW_RMAX / NSA_FEW_RG];
    for (int i = 0; i < NSA_FEW_RMAX / NSA_FEW_RG; i++)
        acc[i] = 0.0f;
    float4 wv[NSA_FEW_V4], xv[NSA_FEW_V4];
    nsa_few_load(W, o0, out, in, 0, lid, wv);
    nsa_few_load(x, r0, rows, in, 0, lid, xv);
    for (int k0 = 0; k0 < kend; k0 += NSA_FEW_KD) {
        barrier(CLK_LOCAL_MEM_FENCE);
        nsa_few_store(ws, lid, wv);
        nsa_few_store(xs, lid, xv);
        barrier(CLK_LOCAL_MEM_FENCE);
        if (k0 + NSA_FEW_KD < kend) { /* the next tile in flight while this one is summed */
            nsa_few_load(W, o0, out, in, k0 + NSA_FEW_KD, lid, wv);
            nsa_few_load(x, r0, rows, in, k0 + NSA_FEW_KD, lid, xv);
        }
        const int kn = min(NSA_FEW_KD, kend - k0); /* a multiple of NSA_GEMM_KD: of 4 */
        for (int kk = 0; kk < kn; kk += 4) {
            const float4 w = vload4(0, ws + lo * NSA_FEW_LD + kk);
#pragma unroll
            for (int i = 0; i < NSA_FEW_RMAX / NSA_FEW_RG; i++) {
                if (rg + i * NSA_FEW_RG >= nr)
                    break; /* rows past the batch: not stored */
                const float4 v = vload4(0, xs + (rg + i * NSA_FEW_RG) * NSA_FEW_LD + kk);
                acc[i] += v.x * w.x;
                acc[i] += v.y * w.y;
                acc[i] += v.z * w.z;
                acc[i] += v.w * w.w;
            }
        }
    }
    const int o = o0 + lo;
    for (int i = 0; i < NSA_FEW_RMAX / NSA_FEW_RG; i++) {
        const int r = r0 + rg + i * NSA_FEW_RG;
        if (r < rows && o < out)
            y[(size_t)r * out + o] = acc[i] + ((has_b >> j & 1) ? b[o] : 0.0f);
    }
}
