/* Tensor-core variant of cl/decode.cl's nsa_dc_partial (fragment helpers
 * and the precision argument in cl/mma_frag.cl). Built only with
 * -DNSA_MMA=1.
 *
 * The 16 heads of a group are the M = 16 rows of the mma (rows past the
 * work-group's heads are 0). In the logits, k = tq stands for component x
 * (then z) and k = tq + 4 for y (then w) of the float4 plane p0 + tq; in
 * P V, lane gq loads the float4 column c4 of V and mma tile u takes its
 * component u, so tile u's column n is V's column 4 (c4 of lane n) + u. */
#if NSA_MMA

/* Key groups of 8 a warp scores at once (each A fragment serves them). */
#ifndef MMA_NG
#define MMA_NG 4
#endif
/* Ring slots of K plane steps (MMA_KR - 1 steps in flight ahead) and of
 * value steps of 8 keys in P V. */
#ifndef MMA_KR
#define MMA_KR 2
#endif
#ifndef MMA_VR
#define MMA_VR 4
#endif

/* Software prefetch into L2 (prefetch.global.L2) of the keys NSA_DC_PF
 * plane steps ahead (across passes; 0: none): more bytes in flight than
 * the register ring holds, without registers. One lane of 8 (gq = 0) asks
 * for the 128-byte line its 8 lanes will load. On the H200 (doc/opencl.md,
 * "Eighth session") 2 steps took the compressed partial from 0.1315 to
 * 0.1293 ms and the selected + window one from 0.0645 to 0.0619 ms; 4 and
 * 8 steps, and prefetching values, gained less or lost. */
#ifndef NSA_DC_PF
#define NSA_DC_PF 2
#endif
#define DC_L2PF(base, i4) MMA_L2PF((__global const kv_t *)(base) + (size_t)(i4) * 4)

/* The float4 of plane step st (planes 4 st .. 4 st + 3, this lane's
 * 4 st + tq) of the key this lane loads in each group, into dst[]. */
#define MMA_KLOAD(dst, st)                                                                     \
    do {                                                                                       \
        const int e4_ = (st) * 4 + tq;                                                         \
        _Pragma("unroll") for (int u = 0; u < MMA_NG; u++) dst[u] =                            \
            kok[u] && e4_ < dk4 ? LD4(Kx, kb[u] + (size_t)e4_ * NSA_DC_TK) : (float4)(0.0f);   \
    } while (0)

/* The value float4 of column c4 of keys 8 st + tq and 8 st + tq + 4
 * into a and b (0 past the chunk's keys or dv). */
#define MMA_VLOAD(a, b, st)                                                                    \
    do {                                                                                       \
        const int ka_ = (st) * 8 + tq, kb_ = ka_ + 4;                                          \
        a = cok && ka_ < cnt ? LD4(Vx, (vrow + rows[ka_]) * dv4 + c4) : (float4)(0.0f);         \
        b = cok && kb_ < cnt ? LD4(Vx, (vrow + rows[kb_]) * dv4 + c4) : (float4)(0.0f);         \
    } while (0)

/* Same arguments, local memory and outputs as nsa_dc_partial (NSA_WG a
 * multiple of 32, at most 16 heads a work-group). Logits: each warp takes
 * passes of 8 MMA_NG keys, one lane loading one float4 of a key per
 * group and plane step. P V: each warp takes 32 columns of dv (8 float4)
 * over all the chunk's keys, 8 keys an mma step. */
__kernel void nsa_dc_partial_mma(DC_PARTIAL_PARAMS)
{
    __local float *zl = (__local float *)zl4;
    const int hpg = H / G, lid = get_local_id(0);
    const dc_keys ck = DC_CHUNK_KEYS();
    const int cnt = ck.cnt, base = ck.base, branch = ck.branch, capx = ck.cap;
    const int bg = ck.bg, h0 = ck.h0, nh = ck.nh, hcp = ck.hcp;
    const size_t slot = ck.slot;
    __global const kv_t *Kx = ck.K, *Vx = ck.V;
    const int lane = lid & 31, wid = lid >> 5, nw = NSA_WG / 32;
    const int gq = lane >> 2, tq = lane & 3;
    const int ra = gq < hcp, rb = gq + 8 < hcp; /* rows of A this lane holds */
    const int nst = (dk4 + 3) / 4; /* plane steps of the logits */
    /* logits: every condition around an mma is uniform over the warp */
    for (int k0 = wid * 8 * MMA_NG; k0 < cnt; k0 += nw * 8 * MMA_NG) {
        float acc[MMA_NG][4];
        size_t kb[MMA_NG]; /* KAT of plane 0 of the key this lane loads */
        int kok[MMA_NG];
#pragma unroll
        for (int u = 0; u < MMA_NG; u++) {
            const int k = k0 + u * 8 + gq;
            kok[u] = k < cnt;
            const int row = kok[u] ? rows[k] : 0;
            kb[u] = ((size_t)bg * capx + (row & ~(NSA_DC_TK - 1))) * dk4 + (row & (NSA_DC_TK - 1));
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[u][i] = 0.0f;
        }
        /* plane steps (4 float4 planes each) in a ring of MMA_KR slots:
         * the loads of MMA_KR - 1 steps ahead are in flight during the mma
         * of this one (the loop is unrolled by the ring, so every slot
         * index is a constant) */
        float4 kv[MMA_KR][MMA_NG];
#pragma unroll
        for (int r = 0; r < MMA_KR - 1; r++)
            MMA_KLOAD(kv[r], r);
        for (int p = 0; p < nst; p += MMA_KR) {
#pragma unroll
            for (int r = 0; r < MMA_KR; r++) {
                MMA_KLOAD(kv[(r + MMA_KR - 1) % MMA_KR], p + r + MMA_KR - 1);
#if NSA_DC_PF
                if (gq == 0) {
                    /* step s of this pass, or of the warp's next pass */
                    const int s = p + r + NSA_DC_PF, nx = s >= nst;
                    const int e4p = (nx ? s - nst : s) * 4 + tq;
#pragma unroll
                    for (int u = 0; u < MMA_NG; u++) {
                        const int k = k0 + (nx ? nw * 8 * MMA_NG : 0) + u * 8;
                        if (k < cnt && e4p < dk4) {
                            const int row = rows[k];
                            DC_L2PF(Kx, ((size_t)bg * capx + (row & ~(NSA_DC_TK - 1))) * dk4 +
                                           (row & (NSA_DC_TK - 1)) + (size_t)e4p * NSA_DC_TK);
                        }
                    }
                }
#endif
                if (p + r < nst) {
                    const int e4 = (p + r) * 4 + tq;
                    const float4 qa = e4 < dk4 && ra ? qs[gq * dk4 + e4] : (float4)(0.0f);
                    const float4 qb =
                        e4 < dk4 && rb ? qs[(gq + 8) * dk4 + e4] : (float4)(0.0f);
                    uint ah[4], al[4], bh[2], bl[2];
                    /* k step 1: components x (k = tq) and y (k = tq + 4) */
                    MMA_SPLIT(qa.x, ah[0], al[0]);
                    MMA_SPLIT(qb.x, ah[1], al[1]);
                    MMA_SPLIT(qa.y, ah[2], al[2]);
                    MMA_SPLIT(qb.y, ah[3], al[3]);
#pragma unroll
                    for (int u = 0; u < MMA_NG; u++) {
                        MMA_SPLIT_KV(kv[r][u].x, bh[0], bl[0]);
                        MMA_SPLIT_KV(kv[r][u].y, bh[1], bl[1]);
                        MMA_3KV(acc[u], ah, al, bh, bl);
                    }
                    /* k step 2: components z and w */
                    MMA_SPLIT(qa.z, ah[0], al[0]);
                    MMA_SPLIT(qb.z, ah[1], al[1]);
                    MMA_SPLIT(qa.w, ah[2], al[2]);
                    MMA_SPLIT(qb.w, ah[3], al[3]);
#pragma unroll
                    for (int u = 0; u < MMA_NG; u++) {
                        MMA_SPLIT_KV(kv[r][u].z, bh[0], bl[0]);
                        MMA_SPLIT_KV(kv[r][u].w, bh[1], bl[1]);
                        MMA_3KV(acc[u], ah, al, bh, bl);
                    }
                }
            }
        }
        /* c0, c1: head gq, keys 2 tq, 2 tq + 1 of group u; c2, c3: head gq + 8 */
#pragma unroll
        for (int u = 0; u < MMA_NG; u++) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int k = k0 + u * 8 + 2 * tq + (i & 1), hh = gq + (i >> 1) * 8;
                if (k < cnt && hh < hcp) {
                    const float z = hh < nh ? acc[u][i] * scale : -INFINITY;
                    zl[k * hcp + hh] = z;
                    if (mode == 0 && branch == 0 && hh < nh)
                        zout[((size_t)bg * hpg + h0 + hh) * max_nc + base + k] = z;
                }
            }
        }
    }
    const size_t vrow = (size_t)bg * capx;
    dc_chunk_softmax(zl, red, cnt, hcp, nh, pstat + slot);
    /* P V: warp wid takes the float4 columns 8 cg .. 8 cg + 7 */
    for (int cg = wid; cg * 8 < dv4; cg += nw) {
        const int c4 = cg * 8 + gq, cok = c4 < dv4;
        float acc[4][4];
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[u][i] = 0.0f;
        /* steps of 8 keys: k0 + tq (k = tq) and k0 + tq + 4 (k = tq + 4), in
         * a ring of MMA_VR slots as the logits' planes */
        const int nst = (cnt + 7) / 8;
        float4 va[MMA_VR], vb[MMA_VR];
#pragma unroll
        for (int r = 0; r < MMA_VR - 1; r++)
            MMA_VLOAD(va[r], vb[r], r);
        for (int p = 0; p < nst; p += MMA_VR) {
#pragma unroll
            for (int r = 0; r < MMA_VR; r++) {
                MMA_VLOAD(va[(r + MMA_VR - 1) % MMA_VR], vb[(r + MMA_VR - 1) % MMA_VR],
                          p + r + MMA_VR - 1);
                if (p + r < nst) {
                    const int ka = (p + r) * 8 + tq, kb = ka + 4;
                    const float p0 = ka < cnt && ra ? zl[ka * hcp + gq] : 0.0f;
                    const float p1 = ka < cnt && rb ? zl[ka * hcp + gq + 8] : 0.0f;
                    const float p2 = kb < cnt && ra ? zl[kb * hcp + gq] : 0.0f;
                    const float p3 = kb < cnt && rb ? zl[kb * hcp + gq + 8] : 0.0f;
                    uint ah[4], al[4], bh[2], bl[2];
                    MMA_SPLIT_A(p0, p1, p2, p3, ah, al);
                    MMA_PV4(acc, ah, al, bh, bl, va[r], vb[r]);
                }
            }
        }
        /* tile u's c0, c1: head gq, float4 columns 8 cg + 2 tq (+1),
         * component u; c2, c3 the same for head gq + 8 */
        const int o4 = cg * 8 + 2 * tq;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int hx = gq + (i >> 1) * 8, cx = o4 + (i & 1);
            if (hx < nh && cx < dv4)
                pacc[(slot + hx) * dv4 + cx] =
                    (float4)(acc[0][i], acc[1][i], acc[2][i], acc[3][i]);
        }
    }
}

#endif
