/* Tensor-core variant of cl/linear.cl's nsa_linear_rows (built only with
 * -DNSA_MMA=1; fragment helpers and the 3xTF32 split in cl/mma_frag.cl):
 * y[rows][out] = x[rows][in] W^T + b for rows <= 16 (a decode step's q,
 * gate and Wo projections), in % 4 == 0.
 *
 * A work-group owns 16 outputs (rows of W: the mma's M = 16 rows) and
 * all rows of x (the N side: one n-tile of 8 rows, two above 8 rows,
 * rows past the batch zero). Its nw warps (get_local_size / 32, chosen by
 * the host) split k into chunks of 32 columns, chunk c to warp c % nw.
 * In a chunk at k0, lane (gq, tq) loads the float4 of W rows gq and gq +
 * 8 and of x rows gq (and gq + 8) at k0 + 4 tq and k0 + 16 + 4 tq; mma
 * step u (0 .. 3) takes component u of each, so logical k = tq is column
 * k0 + 4 tq + u and k = tq + 4 is column k0 + 16 + 4 tq + u, on the A
 * and the B side alike. A warp reads each 128-byte piece of a W row once
 * (W streams from global memory once, coalesced); x (at most 16 rows)
 * comes through the cache once per 16 outputs. Loads run LM_RING - 1
 * chunks ahead of the mma in a register ring.
 *
 * Precision: every product is 3xTF32 (a_lo b_hi + a_hi b_lo + a_hi b_hi,
 * relative error about 3 x 2^-22 a product); a chunk's 12 mma sum into a
 * fresh accumulator (the tensor cores' fp32 accumulation truncates, so
 * the chains stay short), added to the lane's sums in fp32; the warps'
 * sums are added in warp order, then the bias. Worst case per output:
 * (4 in + 16) 2^-23 (sum_k |w_k x_k| + |b|) from the exact value (3 in
 * truncated adds, the split's 3 x 2^-22 a product); relative L2 8.3e-7
 * at worst in test_linear_rows on an H200 (spec 9 asks 1e-5): fp32-level,
 * but in another order than nsa_linear's, so the host uses it only for
 * outputs that do not go into the decode caches (as nsa_linear_rows). */
#if NSA_MMA

/* Warps a work-group at most (the host's NSA_CL_LM_MAXW). */
#define LM_MAXW 8
/* Chunks in the register ring (LM_RING - 1 in flight during the mma). */
#ifndef LM_RING
#define LM_RING 3
#endif
/* L2 prefetch of the W lines LM_PF of the warp's chunks ahead (0: none). */
#ifndef LM_PF
#define LM_PF 0
#endif

/* float4 f of the row at p where ok and f < n4, else 0. */
#define LM_LD(p, ok, f, n4) ((ok) && (f) < (n4) ? (p)[f] : (float4)(0.0f))

/* The eight float4 of this warp's chunk i into ring slot s (zeros past
 * the warp's chunks): W rows gq, gq + 8 and x rows gq, gq + 8, each at
 * k0 + 4 tq and k0 + 16 + 4 tq. */
#define LM_LOAD(s, i)                                                                          \
    do {                                                                                       \
        const int ok_ = (i) < nc, f_ = ((wid + (i) * nw) << 3) + tq;                          \
        wr[s][0] = LM_LD(wa, ok_ && oka, f_, in4);                                             \
        wr[s][1] = LM_LD(wa, ok_ && oka, f_ + 4, in4);                                         \
        wr[s][2] = LM_LD(wb, ok_ && okb, f_, in4);                                             \
        wr[s][3] = LM_LD(wb, ok_ && okb, f_ + 4, in4);                                         \
        xr[s][0] = LM_LD(xa, ok_ && rxa, f_, in4);                                             \
        xr[s][1] = LM_LD(xa, ok_ && rxa, f_ + 4, in4);                                         \
        xr[s][2] = LM_LD(xb, ok_ && rxb, f_, in4);                                             \
        xr[s][3] = LM_LD(xb, ok_ && rxb, f_ + 4, in4);                                         \
    } while (0)

/* mma step of component c of slot s: a0 (row gq, k tq), a1 (row gq + 8,
 * k tq), a2 (row gq, k tq + 4), a3 (row gq + 8, k tq + 4); b0 (k tq, x
 * row gq), b1 (k tq + 4, x row gq), then x row gq + 8 for n-tile 1. */
#define LM_STEP(s, c)                                                                          \
    do {                                                                                       \
        uint ah[4], al[4], bh[2], bl[2];                                                       \
        MMA_SPLIT(wr[s][0].c, ah[0], al[0]);                                                   \
        MMA_SPLIT(wr[s][2].c, ah[1], al[1]);                                                   \
        MMA_SPLIT(wr[s][1].c, ah[2], al[2]);                                                   \
        MMA_SPLIT(wr[s][3].c, ah[3], al[3]);                                                   \
        MMA_SPLIT(xr[s][0].c, bh[0], bl[0]);                                                   \
        MMA_SPLIT(xr[s][1].c, bh[1], bl[1]);                                                   \
        MMA_3(d0, ah, al, bh, bl);                                                             \
        if (two) {                                                                             \
            MMA_SPLIT(xr[s][2].c, bh[0], bl[0]);                                               \
            MMA_SPLIT(xr[s][3].c, bh[1], bl[1]);                                               \
            MMA_3(d1, ah, al, bh, bl);                                                         \
        }                                                                                      \
    } while (0)

/* nsa_linear_rows' arguments; work-groups of 32 nw lanes (nw <= LM_MAXW),
 * one a tile of 16 outputs. Every condition around an mma is uniform over
 * the warp. */
__kernel void nsa_linear_rows_mma(__global const float *x, __global const float *W,
                                  __global const float *b, int has_b, int rows, int in, int out,
                                  __global float *y)
{
    __local float part[LM_MAXW][16][17]; /* [warp][output][row], padded */
    const int lid = get_local_id(0), lane = lid & 31, wid = lid >> 5;
    const int nw = (int)get_local_size(0) >> 5;
    const int gq = lane >> 2, tq = lane & 3;
    const int o0 = get_group_id(0) * 16, in4 = in >> 2;
    const int oka = o0 + gq < out, okb = o0 + gq + 8 < out;
    const int rxa = gq < rows, rxb = gq + 8 < rows, two = rows > 8;
    __global const float4 *wa = (__global const float4 *)(W + (size_t)(oka ? o0 + gq : 0) * in);
    __global const float4 *wb =
        (__global const float4 *)(W + (size_t)(okb ? o0 + gq + 8 : 0) * in);
    __global const float4 *xa = (__global const float4 *)(x + (size_t)(rxa ? gq : 0) * in);
    __global const float4 *xb = (__global const float4 *)(x + (size_t)(rxb ? gq + 8 : 0) * in);
    const int nch = (in + 31) >> 5;             /* chunks of 32 columns */
    const int nc = (nch - wid + nw - 1) / nw;   /* this warp's: wid, wid + nw, ... */
    float acc0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float4 wr[LM_RING][4], xr[LM_RING][4];
#pragma unroll
    for (int r = 0; r < LM_RING - 1; r++)
        LM_LOAD(r, r);
    for (int i = 0; i < nc; i += LM_RING) {
#pragma unroll
        for (int r = 0; r < LM_RING; r++) {
            LM_LOAD((r + LM_RING - 1) % LM_RING, i + r + LM_RING - 1);
#if LM_PF
            if (tq == 0 && i + r + LM_PF < nc) {
                const int fp = (wid + (i + r + LM_PF) * nw) << 3;
                if (oka)
                    MMA_L2PF(wa + fp);
                if (okb)
                    MMA_L2PF(wb + fp);
            }
#endif
            if (i + r < nc) {
                float d0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                LM_STEP(r, x);
                LM_STEP(r, y);
                LM_STEP(r, z);
                LM_STEP(r, w);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    acc0[e] += d0[e];
                    acc1[e] += d1[e];
                }
            }
        }
    }
    /* c0, c1: output gq, x rows 2 tq, 2 tq + 1; c2, c3: output gq + 8;
     * n-tile 1: x rows + 8 */
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int o = gq + (e >> 1) * 8, r = 2 * tq + (e & 1);
        part[wid][o][r] = acc0[e];
        part[wid][o][r + 8] = acc1[e];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e = lid; e < 16 * 16; e += nw * 32) {
        const int o = e & 15, r = e >> 4;
        if (r < rows && o0 + o < out) {
            float s = part[0][o][r];
            for (int v = 1; v < nw; v++)
                s += part[v][o][r];
            y[(size_t)r * out + o0 + o] = s + (has_b ? b[o0 + o] : 0.0f);
        }
    }
}

#endif
