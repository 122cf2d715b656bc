/* Tensor-core variant of cl/attn.cl's nsa_group_attn: the same arguments,
 * modes and outputs, with Q K^T and P V as mma.sync m16n8k8 in 3xTF32
 * (cl/mma_frag.cl). Built only with -DNSA_MMA=1; the host
 * (lib/opencl/cl_attend.c) launches it where the backend state holds it
 * and the shape fits: at most 16 heads a work-group (the M = 16 rows of
 * the mma; rows past them are 0), NSA_WG 32 .. 256 lanes, dv at most
 * 32 MMA_PVC float columns a warp. The `tile` argument is unused: tiles
 * are MMA_TK keys.
 *
 * Per key tile (MMA_TK = 64 keys, one selection block at l' = 64):
 * 1. Logits: warp wid takes the key groups of 8 wid, wid + nw, ...; each
 *    lane loads a float4 plane of its key straight from global memory (no
 *    local copy: a key is read by one warp only), the queries come
 *    pre-split (hi, lo) from local memory. In a plane step of 16
 *    dimensions k = tq stands for component x (then z) and k = tq + 4 for
 *    y (then w) of the float4 plane 4 st + tq, for Q and K alike.
 * 2. Softmax per head row as nsa_group_attn (NSA_NP lanes a row, running
 *    max and partial sums in local memory), probabilities in ps.
 * 3. P V: warp wid takes the float4 columns 8 cg .. 8 cg + 7 (cg = wid,
 *    wid + nw, ...) over the tile's keys, 8 keys an mma step; lane gq
 *    loads the float4 column 8 cg + gq of V for keys tq and tq + 4 and
 *    mma tile u takes its component u (as cl/mma.cl), so the
 *    accumulators of tile u hold V's columns 4 (8 cg + n) + u.
 * Local memory: qh, ql 16 x qst uint4 (qst = 4 ceil(dk4 / 4), plus 4 when
 * that is a multiple of 8: the 8 lanes of a quarter warp hit distinct
 * banks); ps 16 x MMA_PST floats; red as nsa_group_attn's for 16 heads. */
#if NSA_MMA

#define MMA_TK 64
#define MMA_PST (MMA_TK + 4) /* ps row stride: the A reads of a warp on 32 banks */
#ifndef MMA_PVC
#define MMA_PVC 1 /* column groups of 8 float4 a warp accumulates */
#endif
#ifndef MMA_KD
#define MMA_KD 4 /* plane steps of keys loaded at once */
#endif
#ifndef MMA_VD
#define MMA_VD 4 /* value steps of 8 keys loaded at once */
#endif
#define MMA_NW (NSA_WG / 32)
#define MMA_AG (MMA_TK / 8 / MMA_NW) /* key groups of 8 a warp scores a tile */

/* The float4 of K or V at element at (a multiple of 4 when n, the row
 * length, is), left >= 1 elements of the row remaining. */
static float4 am_ld4(__global const kv_t *p, size_t at, int left, int n)
{
    if ((n & 3) == 0)
        return LD4(p, at / 4);
    float4 v = (float4)(0.0f);
    v.x = LDKV(p, at);
    if (left > 1)
        v.y = LDKV(p, at + 1);
    if (left > 2)
        v.z = LDKV(p, at + 2);
    if (left > 3)
        v.w = LDKV(p, at + 3);
    return v;
}

/* Plane step st of this lane's key in each of its key groups into dst[]
 * (0 past dk or the tile's keys). */
#define AM_KLOAD(dst, st)                                                                      \
    do {                                                                                       \
        const int e4_ = (st) * 4 + tq;                                                         \
        _Pragma("unroll") for (int u = 0; u < MMA_AG; u++) dst[u] =                            \
            kok[u] && e4_ < dk4 ? am_ld4(K, kr[u] + (size_t)e4_ * 4, dk - e4_ * 4, dk)          \
                                : (float4)(0.0f);                                              \
    } while (0)

/* Value float4 column c4 of keys ka and kb of the tile into a and b. */
#define AM_VLOAD(a, b, ka, kb)                                                                 \
    do {                                                                                       \
        a = cok && (ka) < cnt                                                                  \
                ? am_ld4(V, ((size_t)(base + p0 + (ka)) * G + g) * dv + c4 * 4, dv - c4 * 4, dv) \
                : (float4)(0.0f);                                                              \
        b = cok && (kb) < cnt                                                                  \
                ? am_ld4(V, ((size_t)(base + p0 + (kb)) * G + g) * dv + c4 * 4, dv - c4 * 4, dv) \
                : (float4)(0.0f);                                                              \
    } while (0)

__kernel void nsa_group_attn_mma(__global const float *q, __global const kv_t *K,
                                 __global const kv_t *V, __global const int *row_seq,
                                 __global const int *cu, __global const int *cmp_off,
                                 __global const int *sel, int n, int lsel, int mode, int w,
                                 int l, int d, int row0, int H, int G, int hc, int dk, int dv,
                                 float scale, __global float *out, int want_z, int max_nc,
                                 __global float *zs, __global float *stats, int tile,
                                 __local uint4 *qh, __local uint4 *ql, __local float *ps,
                                 __local float *red)
{
    const int lid = get_local_id(0), hpg = H / G, parts = (hpg + hc - 1) / hc;
    const int slot = get_group_id(0) / parts, h0 = get_group_id(0) % parts * hc;
    const int nh = min(hc, hpg - h0); /* heads h0 .. h0+nh-1 of the group */
    const int row = row0 + slot / G, g = slot % G;
    const int seq = row_seq[row], t = row - cu[seq];
    const int base = mode == 2 ? cmp_off[seq] : cu[seq];
    const size_t hbase = (size_t)row * H + (size_t)g * hpg + h0;
    const int dk4 = (dk + 3) / 4, dv4 = (dv + 3) / 4, nst = (dk4 + 3) / 4;
    const int qst = nst * 4 + ((nst & 1) ? 0 : 4);
    __local float *redm = red, *lsp = red + 16 * NSA_NP, *mo = red + 32 * NSA_NP, *mn = mo + 16;
    (void)tile;
    for (int i = lid; i < 16 * qst; i += NSA_WG) {
        const int hh = i / qst, e4 = i % qst;
        float4 v = (float4)(0.0f);
        if (hh < nh && e4 < dk4)
            v = nsa_ld4(q + (hbase + hh) * dk + e4 * 4, dk - e4 * 4);
        uint4 hi, lo;
        MMA_SPLIT(v.x, hi.x, lo.x);
        MMA_SPLIT(v.y, hi.y, lo.y);
        MMA_SPLIT(v.z, hi.z, lo.z);
        MMA_SPLIT(v.w, hi.w, lo.w);
        qh[i] = hi;
        ql[i] = lo;
    }
    for (int i = lid; i < 16 * MMA_PST; i += NSA_WG)
        ps[i] = 0.0f; /* rows past nh stay 0: probability 0 in P V */
    for (int i = lid; i < 16 * NSA_NP; i += NSA_WG)
        lsp[i] = 0.0f;
    for (int i = lid; i < 16; i += NSA_WG) {
        mo[i] = -INFINITY;
        mn[i] = -INFINITY;
    }
    const int lane = lid & 31, wid = lid >> 5, gq = lane >> 2, tq = lane & 3;
    float acc[MMA_PVC][4][4];
#pragma unroll
    for (int x = 0; x < MMA_PVC; x++)
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[x][u][i] = 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
    const int nspan = mode == 0 ? n : 1;
    for (int sp = 0; sp < nspan; sp++) {
        int lo, hi;
        if (mode == 0) {
            const int blk = sel[((size_t)row * G + g) * n + sp];
            if (blk < 0)
                continue; /* uniform: every lane reads the same entry */
            lo = blk * lsel;
            hi = min(lo + lsel, t + 1);
        } else if (mode == 1) {
            lo = max(0, t - w + 1);
            hi = t + 1;
        } else {
            lo = 0;
            hi = t + 1 >= l ? (t + 1 - l) / d + 1 : 0;
        }
        for (int p0 = lo; p0 < hi; p0 += MMA_TK) {
            const int cnt = min(MMA_TK, hi - p0);
            /* 1. logits; every condition around an mma is uniform over the warp */
            {
                float s[MMA_AG][4];
                size_t kr[MMA_AG]; /* first element of the key this lane loads */
                int kok[MMA_AG];
#pragma unroll
                for (int u = 0; u < MMA_AG; u++) {
                    const int k = (wid + u * MMA_NW) * 8 + gq;
                    kok[u] = k < cnt;
                    kr[u] = ((size_t)(base + p0 + (kok[u] ? k : 0)) * G + g) * dk;
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        s[u][i] = 0.0f;
                }
                /* MMA_KD plane steps of keys load at once; each plane step
                 * sums into a fresh accumulator (short mma chains), added
                 * to s in fp32 */
                for (int st0 = 0; st0 < nst; st0 += MMA_KD) {
                    float4 kb[MMA_KD][MMA_AG];
#pragma unroll
                    for (int j = 0; j < MMA_KD; j++)
                        AM_KLOAD(kb[j], st0 + j);
#pragma unroll
                    for (int j = 0; j < MMA_KD; j++) {
                        if (st0 + j >= nst)
                            break;
                        const int e4 = (st0 + j) * 4 + tq;
                        const uint4 qah = qh[gq * qst + e4], qal = ql[gq * qst + e4];
                        const uint4 qbh = qh[(gq + 8) * qst + e4], qbl = ql[(gq + 8) * qst + e4];
                        uint ah[4], al[4], ah2[4], al2[4], bh[2], bl[2];
                        ah[0] = qah.x, ah[1] = qbh.x, ah[2] = qah.y, ah[3] = qbh.y;
                        al[0] = qal.x, al[1] = qbl.x, al[2] = qal.y, al[3] = qbl.y;
                        ah2[0] = qah.z, ah2[1] = qbh.z, ah2[2] = qah.w, ah2[3] = qbh.w;
                        al2[0] = qal.z, al2[1] = qbl.z, al2[2] = qal.w, al2[3] = qbl.w;
#pragma unroll
                        for (int u = 0; u < MMA_AG; u++)
                            if ((wid + u * MMA_NW) * 8 < cnt) {
                                float dd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                                MMA_SPLIT_KV(kb[j][u].x, bh[0], bl[0]);
                                MMA_SPLIT_KV(kb[j][u].y, bh[1], bl[1]);
                                MMA_3KV(dd, ah, al, bh, bl);
                                MMA_SPLIT_KV(kb[j][u].z, bh[0], bl[0]);
                                MMA_SPLIT_KV(kb[j][u].w, bh[1], bl[1]);
                                MMA_3KV(dd, ah2, al2, bh, bl);
#pragma unroll
                                for (int i = 0; i < 4; i++)
                                    s[u][i] += dd[i];
                            }
                    }
                }
                /* c0, c1: head gq, keys 2 tq, 2 tq + 1 of the group; c2, c3: head gq + 8 */
#pragma unroll
                for (int u = 0; u < MMA_AG; u++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int k = (wid + u * MMA_NW) * 8 + 2 * tq + (i & 1);
                        const int hh = gq + (i >> 1) * 8;
                        if (hh < nh) {
                            float z = -INFINITY;
                            if (k < cnt) {
                                z = s[u][i] * scale;
                                if (want_z)
                                    zs[((size_t)slot * hpg + h0 + hh) * max_nc + p0 + k] = z;
                            }
                            ps[hh * MMA_PST + k] = z;
                        }
                    }
            }
            /* the first MMA_VD value steps of column group wid load now:
             * in flight through the softmax's barriers */
            float4 va[MMA_VD], vb[MMA_VD];
            {
                const int c4 = wid * 8 + gq, cok = c4 < dv4;
#pragma unroll
                for (int j = 0; j < MMA_VD; j++)
                    AM_VLOAD(va[j], vb[j], j * 8 + tq, j * 8 + tq + 4);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* 2. softmax as nsa_group_attn: partial maxima */
            for (int it0 = 0; it0 < nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, hh = it / NSA_NP, pt = it % NSA_NP;
                if (it >= nh * NSA_NP)
                    break;
                __local const float *pr = ps + hh * MMA_PST;
                float mx = -INFINITY;
                for (int k = pt; k < cnt; k += NSA_NP)
                    mx = fmax(mx, pr[k]);
                redm[it] = mx;
                if (pt == 0)
                    mo[hh] = mn[hh]; /* the max before this tile */
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* probabilities and running partial sums */
            for (int it0 = 0; it0 < nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, hh = it / NSA_NP, pt = it % NSA_NP;
                if (it >= nh * NSA_NP)
                    break;
                __local float *pr = ps + hh * MMA_PST;
                const float m0 = mo[hh];
                float mt = m0;
                for (int x = 0; x < NSA_NP; x++)
                    mt = fmax(mt, redm[hh * NSA_NP + x]);
                float sum = 0.0f;
                for (int k = pt; k < MMA_TK; k += NSA_NP) {
                    /* keys past cnt hold -inf: probability 0 */
                    const float p = mt == -INFINITY ? 0.0f : exp(pr[k] - mt);
                    pr[k] = p;
                    sum += p;
                }
                const float alpha = mt == -INFINITY ? 1.0f : exp(m0 - mt);
                lsp[it] = lsp[it] * alpha + sum;
                if (pt == 0)
                    mn[hh] = mt;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* 3. P V: rescale the lane's rows gq, gq + 8 by the running max
             * (rows past nh: -inf both, factor 1), then MMA_VD steps of 8
             * keys at a time into a fresh accumulator added in fp32 */
            {
                const float ma = mn[gq], mb = mn[gq + 8];
                const float fa = ma == -INFINITY ? 1.0f : exp(mo[gq] - ma);
                const float fb = mb == -INFINITY ? 1.0f : exp(mo[gq + 8] - mb);
                const int nks = (cnt + 7) / 8;
#pragma unroll
                for (int x = 0; x < MMA_PVC; x++) {
                    const int cg = wid + x * MMA_NW, c4 = cg * 8 + gq, cok = c4 < dv4;
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        acc[x][u][0] *= fa;
                        acc[x][u][1] *= fa;
                        acc[x][u][2] *= fb;
                        acc[x][u][3] *= fb;
                    }
                    if (cg * 8 >= dv4)
                        continue; /* uniform over the warp */
                    for (int st0 = 0; st0 < nks; st0 += MMA_VD) {
                        if (x > 0 || st0 > 0) {
#pragma unroll
                            for (int j = 0; j < MMA_VD; j++)
                                AM_VLOAD(va[j], vb[j], (st0 + j) * 8 + tq, (st0 + j) * 8 + tq + 4);
                        }
                        float dd[4][4];
#pragma unroll
                        for (int u = 0; u < 4; u++)
#pragma unroll
                            for (int i = 0; i < 4; i++)
                                dd[u][i] = 0.0f;
#pragma unroll
                        for (int j = 0; j < MMA_VD; j++) {
                            if (st0 + j >= nks)
                                break;
                            const int ka = (st0 + j) * 8 + tq, kb = ka + 4;
                            const float p0a = ps[gq * MMA_PST + ka], p1a = ps[(gq + 8) * MMA_PST + ka];
                            const float p0b = ps[gq * MMA_PST + kb], p1b = ps[(gq + 8) * MMA_PST + kb];
                            uint ah[4], al[4], bh[2], bl[2];
                            MMA_SPLIT_A(p0a, p1a, p0b, p1b, ah, al);
                            MMA_PV4(dd, ah, al, bh, bl, va[j], vb[j]);
                        }
#pragma unroll
                        for (int u = 0; u < 4; u++)
#pragma unroll
                            for (int i = 0; i < 4; i++)
                                acc[x][u][i] += dd[u][i];
                    }
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE); /* ps and mo are rewritten next tile */
        }
    }
    /* totals: the running partial sums of each head, the last running max */
    for (int it = lid; it < nh; it += NSA_WG) {
        float sum = 0.0f;
        for (int x = 0; x < NSA_NP; x++)
            sum += lsp[it * NSA_NP + x];
        mo[it] = sum;
        if (want_z) {
            stats[2 * ((size_t)slot * hpg + h0 + it)] = mn[it];
            stats[2 * ((size_t)slot * hpg + h0 + it) + 1] = sum;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    /* tile u's c0, c1: head gq, float4 columns 8 cg + 2 tq (+1), component
     * u; c2, c3 the same for head gq + 8 */
#pragma unroll
    for (int x = 0; x < MMA_PVC; x++) {
        const int o4 = (wid + x * MMA_NW) * 8 + 2 * tq;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int hx = gq + (i >> 1) * 8, cx = o4 + (i & 1);
            if (hx >= nh || cx >= dv4)
                continue;
            const float sum = mo[hx];
            const float4 o = sum > 0.0f ? (float4)(acc[x][0][i], acc[x][1][i], acc[x][2][i],
                                                   acc[x][3][i]) /
                                              sum
                                        : (float4)(0.0f);
            __global float *dst = out + (hbase + hx) * dv + cx * 4;
            dst[0] = o.x;
            if (cx * 4 + 1 < dv)
                dst[1] = o.y;
            if (cx * 4 + 2 < dv)
                dst[2] = o.z;
            if (cx * 4 + 3 < dv)
                dst[3] = o.w;
        }
    }
}

/* The selected branch (spec 3) for ntq consecutive rows (tokens) of one
 * KV group a work-group (cl/attn.cl's nsa_slc_attn with
 * nsa_group_attn_mma's phases): the blocks of the union of the tokens'
 * selections in ascending order (slc_union_next), each 64-key tile's key
 * and value fragments loaded into registers once and multiplied with the
 * query / probability fragments of every token that selected the block
 * (one m16n8k8 A operand of 16 heads a token), a token's logits masked
 * past its own position; per token its own online softmax per head, its
 * blocks in the order of its selection. The queries are kept raw (not
 * pre-split) to fit NSA_TQ tokens in local memory. The `tile` argument and
 * the second local buffer are unused.
 * Local memory: qf ntq x 16 x qst float4; ps ntq x 16 x MMA_PST floats;
 * red ntq times nsa_group_attn_mma's. */
#ifndef MMA_PF
/* plane steps of the next tile's keys loaded during P V (up to MMA_KD;
 * 0: none, the default: 4 cost 39 registers and ran slower on an H200,
 * doc/opencl.md) */
#define MMA_PF 0
#endif
#define MMA_SQ (NSA_TQ == 1) /* queries pre-split (as nsa_group_attn_mma) */

__kernel void nsa_slc_attn_mma(__global const float *q, __global const kv_t *K,
                               __global const kv_t *V, __global const int *row_seq,
                               __global const int *cu, __global const int *sel, int n, int lsel,
                               int row0, int rows, int ntq, int H, int G, int hc, int dk, int dv,
                               float scale, __global float *out, int tile, __local float4 *qf,
                               __local uint4 *ql, __local float *ps, __local float *red)
{
    const int lid = get_local_id(0), hpg = H / G, parts = (hpg + hc - 1) / hc;
    const int slot = get_group_id(0) / parts, h0 = get_group_id(0) % parts * hc;
    const int nh = min(hc, hpg - h0);
    const int g = slot % G, r0 = row0 + slot / G * ntq;
    const int nt = min(ntq, row0 + rows - r0);
    const int base = 0; /* keys by global row (AM_VLOAD) */
    const int dk4 = (dk + 3) / 4, dv4 = (dv + 3) / 4, nst = (dk4 + 3) / 4;
    const int qst = nst * 4 + ((nst & 1) ? 0 : 4);
    __local float *redm = red, *lsp = red + nt * 16 * NSA_NP, *mo = red + 2 * nt * 16 * NSA_NP,
                  *mn = mo + nt * 16;
    (void)tile;
    int row[NSA_TQ], kb[NSA_TQ], cur[NSA_TQ], hi[NSA_TQ];
#pragma unroll
    for (int u = 0; u < NSA_TQ; u++) {
        row[u] = r0 + min(u, nt - 1);
        kb[u] = cu[row_seq[row[u]]];
        cur[u] = 0;
        hi[u] = 0;
    }
    for (int i = lid; i < nt * 16 * qst; i += NSA_WG) {
        const int u = i / (16 * qst), hh = i / qst % 16, e4 = i % qst;
        float4 v = (float4)(0.0f);
        if (hh < nh && e4 < dk4)
            v = nsa_ld4(q + (((size_t)row[u] * H + (size_t)g * hpg + h0 + hh) * dk + e4 * 4),
                        dk - e4 * 4);
#if MMA_SQ
        uint4 vh, vl; /* hi words in qf's place, lo words in ql */
        MMA_SPLIT(v.x, vh.x, vl.x);
        MMA_SPLIT(v.y, vh.y, vl.y);
        MMA_SPLIT(v.z, vh.z, vl.z);
        MMA_SPLIT(v.w, vh.w, vl.w);
        qf[i] = as_float4(vh);
        ql[i] = vl;
#else
        qf[i] = v;
#endif
    }
    for (int i = lid; i < nt * 16 * MMA_PST; i += NSA_WG)
        ps[i] = 0.0f; /* rows past nh stay 0: probability 0 in P V */
    for (int i = lid; i < nt * 16 * NSA_NP; i += NSA_WG)
        lsp[i] = 0.0f;
    for (int i = lid; i < nt * 16; i += NSA_WG) {
        mo[i] = -INFINITY;
        mn[i] = -INFINITY;
    }
    const int lane = lid & 31, wid = lid >> 5, gq = lane >> 2, tq = lane & 3;
    float acc[NSA_TQ][MMA_PVC][4][4];
#pragma unroll
    for (int w = 0; w < NSA_TQ; w++)
#pragma unroll
        for (int x = 0; x < MMA_PVC; x++)
#pragma unroll
            for (int u = 0; u < 4; u++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    acc[w][x][u][i] = 0.0f;
    /* the first MMA_PF plane steps of the next tile's keys, loaded during
     * this tile's P V (pre: they are there) */
    float4 kn[MMA_PF > 0 ? MMA_PF : 1][MMA_AG];
    int pre = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (;;) {
        int act;
        const int lo = slc_union_next(sel, row, kb, nt, n, G, g, lsel, cur, &act, hi);
        if (lo < 0)
            break; /* uniform: every lane walks the same union */
        int hmax = lo;
#pragma unroll
        for (int w = 0; w < NSA_TQ; w++)
            if (w < nt && (act >> w & 1))
                hmax = max(hmax, hi[w]);
        for (int p0 = lo; p0 < hmax; p0 += MMA_TK) {
            const int cnt = min(MMA_TK, hmax - p0);
            /* 1. logits: each plane step of keys loaded and split once, then
             * multiplied with every active token's queries */
            {
                float s[NSA_TQ][MMA_AG][4];
                size_t kr[MMA_AG];
                int kok[MMA_AG];
#pragma unroll
                for (int u = 0; u < MMA_AG; u++) {
                    const int k = (wid + u * MMA_NW) * 8 + gq;
                    kok[u] = k < cnt;
                    kr[u] = ((size_t)(p0 + (kok[u] ? k : 0)) * G + g) * dk;
                }
#pragma unroll
                for (int w = 0; w < NSA_TQ; w++)
#pragma unroll
                    for (int u = 0; u < MMA_AG; u++)
#pragma unroll
                        for (int i = 0; i < 4; i++)
                            s[w][u][i] = 0.0f;
                for (int st0 = 0; st0 < nst; st0 += MMA_KD) {
                    float4 kq[MMA_KD][MMA_AG];
#pragma unroll
                    for (int j = 0; j < MMA_KD; j++) {
                        if (j < MMA_PF && st0 == 0 && pre) {
#pragma unroll
                            for (int u = 0; u < MMA_AG; u++)
                                kq[j][u] = kn[j < MMA_PF ? j : 0][u];
                        } else {
                            AM_KLOAD(kq[j], st0 + j);
                        }
                    }
#pragma unroll
                    for (int j = 0; j < MMA_KD; j++) {
                        if (st0 + j >= nst)
                            break;
                        const int e4 = (st0 + j) * 4 + tq;
                        uint kh[MMA_AG][4], kl[MMA_AG][4];
#pragma unroll
                        for (int u = 0; u < MMA_AG; u++) {
                            MMA_SPLIT_KV(kq[j][u].x, kh[u][0], kl[u][0]);
                            MMA_SPLIT_KV(kq[j][u].y, kh[u][1], kl[u][1]);
                            MMA_SPLIT_KV(kq[j][u].z, kh[u][2], kl[u][2]);
                            MMA_SPLIT_KV(kq[j][u].w, kh[u][3], kl[u][3]);
                        }
#pragma unroll
                        for (int w = 0; w < NSA_TQ; w++) {
                            if (w >= nt || !(act >> w & 1))
                                continue; /* uniform */
                            uint ah[4], al[4], ah2[4], al2[4];
#if MMA_SQ
                            const uint4 qah = as_uint4(qf[gq * qst + e4]), qal = ql[gq * qst + e4];
                            const uint4 qbh = as_uint4(qf[(gq + 8) * qst + e4]),
                                        qbl = ql[(gq + 8) * qst + e4];
                            ah[0] = qah.x, ah[1] = qbh.x, ah[2] = qah.y, ah[3] = qbh.y;
                            al[0] = qal.x, al[1] = qbl.x, al[2] = qal.y, al[3] = qbl.y;
                            ah2[0] = qah.z, ah2[1] = qbh.z, ah2[2] = qah.w, ah2[3] = qbh.w;
                            al2[0] = qal.z, al2[1] = qbl.z, al2[2] = qal.w, al2[3] = qbl.w;
#else
                            const float4 qa = qf[(w * 16 + gq) * qst + e4];
                            const float4 qb = qf[(w * 16 + gq + 8) * qst + e4];
                            MMA_SPLIT(qa.x, ah[0], al[0]);
                            MMA_SPLIT(qb.x, ah[1], al[1]);
                            MMA_SPLIT(qa.y, ah[2], al[2]);
                            MMA_SPLIT(qb.y, ah[3], al[3]);
                            MMA_SPLIT(qa.z, ah2[0], al2[0]);
                            MMA_SPLIT(qb.z, ah2[1], al2[1]);
                            MMA_SPLIT(qa.w, ah2[2], al2[2]);
                            MMA_SPLIT(qb.w, ah2[3], al2[3]);
#endif
#pragma unroll
                            for (int u = 0; u < MMA_AG; u++)
                                if ((wid + u * MMA_NW) * 8 < cnt) {
                                    float dd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                                    uint bh[2], bl[2];
                                    bh[0] = kh[u][0], bh[1] = kh[u][1];
                                    bl[0] = kl[u][0], bl[1] = kl[u][1];
                                    MMA_3KV(dd, ah, al, bh, bl);
                                    bh[0] = kh[u][2], bh[1] = kh[u][3];
                                    bl[0] = kl[u][2], bl[1] = kl[u][3];
                                    MMA_3KV(dd, ah2, al2, bh, bl);
#pragma unroll
                                    for (int i = 0; i < 4; i++)
                                        s[w][u][i] += dd[i];
                                }
                        }
                    }
                }
                /* c0, c1: head gq, keys 2 tq, 2 tq + 1 of the group; c2, c3:
                 * head gq + 8; masked past each token's own rows */
#pragma unroll
                for (int w = 0; w < NSA_TQ; w++) {
                    if (w >= nt || !(act >> w & 1))
                        continue;
                    const int cn = clamp(hi[w] - p0, 0, cnt);
#pragma unroll
                    for (int u = 0; u < MMA_AG; u++)
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const int k = (wid + u * MMA_NW) * 8 + 2 * tq + (i & 1);
                            const int hh = gq + (i >> 1) * 8;
                            if (hh < nh)
                                ps[(w * 16 + hh) * MMA_PST + k] =
                                    k < cn ? s[w][u][i] * scale : -INFINITY;
                        }
                }
            }
            /* the first MMA_VD value steps of column group wid load now:
             * in flight through the softmax's barriers */
            float4 va[MMA_VD], vb[MMA_VD];
            {
                const int c4 = wid * 8 + gq, cok = c4 < dv4;
#pragma unroll
                for (int j = 0; j < MMA_VD; j++)
                    AM_VLOAD(va[j], vb[j], j * 8 + tq, j * 8 + tq + 4);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* 2. softmax per (token, head) row: partial maxima */
            for (int it0 = 0; it0 < nt * nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, w = it / (nh * NSA_NP), hh = it / NSA_NP % nh,
                          pt = it % NSA_NP;
                if (it >= nt * nh * NSA_NP)
                    break;
                if (!(act >> w & 1))
                    continue;
                const int rr = w * 16 + hh;
                __local const float *pr = ps + rr * MMA_PST;
                float mx = -INFINITY;
                for (int k = pt; k < cnt; k += NSA_NP)
                    mx = fmax(mx, pr[k]);
                redm[rr * NSA_NP + pt] = mx;
                if (pt == 0)
                    mo[rr] = mn[rr]; /* the max before this tile */
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int it0 = 0; it0 < nt * nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, w = it / (nh * NSA_NP), hh = it / NSA_NP % nh,
                          pt = it % NSA_NP;
                if (it >= nt * nh * NSA_NP)
                    break;
                if (!(act >> w & 1))
                    continue;
                const int rr = w * 16 + hh;
                __local float *pr = ps + rr * MMA_PST;
                const float m0 = mo[rr];
                float mt = m0;
                for (int x = 0; x < NSA_NP; x++)
                    mt = fmax(mt, redm[rr * NSA_NP + x]);
                float sum = 0.0f;
                for (int k = pt; k < MMA_TK; k += NSA_NP) {
                    const float p = mt == -INFINITY ? 0.0f : exp(pr[k] - mt);
                    pr[k] = p;
                    sum += p;
                }
                const float alpha = mt == -INFINITY ? 1.0f : exp(m0 - mt);
                lsp[rr * NSA_NP + pt] = lsp[rr * NSA_NP + pt] * alpha + sum;
                if (pt == 0)
                    mn[rr] = mt;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#if MMA_PF > 0
            /* the next tile (the rest of this block, else the union's next
             * block, walked on a copy of the cursors): its first key plane
             * steps in flight through P V */
            {
                int nlo = p0 + MMA_TK, nhm = hmax;
                if (nlo >= hmax) {
                    int c2[NSA_TQ], h2[NSA_TQ], a2;
#pragma unroll
                    for (int w = 0; w < NSA_TQ; w++) {
                        c2[w] = cur[w];
                        h2[w] = 0;
                    }
                    nlo = slc_union_next(sel, row, kb, nt, n, G, g, lsel, c2, &a2, h2);
                    nhm = nlo;
#pragma unroll
                    for (int w = 0; w < NSA_TQ; w++)
                        if (w < nt && (a2 >> w & 1))
                            nhm = max(nhm, h2[w]);
                }
                pre = nlo >= 0 && nlo < nhm;
                if (pre) {
                    const int ncnt = min(MMA_TK, nhm - nlo);
#pragma unroll
                    for (int u = 0; u < MMA_AG; u++) {
                        const int k = (wid + u * MMA_NW) * 8 + gq;
                        const size_t at = ((size_t)(nlo + (k < ncnt ? k : 0)) * G + g) * dk;
#pragma unroll
                        for (int j = 0; j < MMA_PF; j++) {
                            const int e4_ = j * 4 + tq;
                            kn[j][u] = k < ncnt && e4_ < dk4
                                           ? am_ld4(K, at + (size_t)e4_ * 4, dk - e4_ * 4, dk)
                                           : (float4)(0.0f);
                        }
                    }
                }
            }
#endif
            /* 3. P V: each value step loaded and split once, multiplied with
             * every active token's probabilities */
            {
                float fa[NSA_TQ], fb[NSA_TQ];
#pragma unroll
                for (int w = 0; w < NSA_TQ; w++) {
                    fa[w] = 1.0f;
                    fb[w] = 1.0f;
                    if (w < nt && (act >> w & 1)) {
                        const float ma = mn[w * 16 + gq], mb = mn[w * 16 + gq + 8];
                        fa[w] = ma == -INFINITY ? 1.0f : exp(mo[w * 16 + gq] - ma);
                        fb[w] = mb == -INFINITY ? 1.0f : exp(mo[w * 16 + gq + 8] - mb);
                    }
                }
                const int nks = (cnt + 7) / 8;
#pragma unroll
                for (int x = 0; x < MMA_PVC; x++) {
                    const int cg = wid + x * MMA_NW, c4 = cg * 8 + gq, cok = c4 < dv4;
#pragma unroll
                    for (int w = 0; w < NSA_TQ; w++)
#pragma unroll
                        for (int u = 0; u < 4; u++) {
                            acc[w][x][u][0] *= fa[w];
                            acc[w][x][u][1] *= fa[w];
                            acc[w][x][u][2] *= fb[w];
                            acc[w][x][u][3] *= fb[w];
                        }
                    if (cg * 8 >= dv4)
                        continue; /* uniform over the warp */
                    for (int st0 = 0; st0 < nks; st0 += MMA_VD) {
                        if (x > 0 || st0 > 0) {
#pragma unroll
                            for (int j = 0; j < MMA_VD; j++)
                                AM_VLOAD(va[j], vb[j], (st0 + j) * 8 + tq, (st0 + j) * 8 + tq + 4);
                        }
                        float dd[NSA_TQ][4][4];
#pragma unroll
                        for (int w = 0; w < NSA_TQ; w++)
#pragma unroll
                            for (int u = 0; u < 4; u++)
#pragma unroll
                                for (int i = 0; i < 4; i++)
                                    dd[w][u][i] = 0.0f;
#pragma unroll
                        for (int j = 0; j < MMA_VD; j++) {
                            if (st0 + j >= nks)
                                break;
                            const int ka = (st0 + j) * 8 + tq, kb4 = ka + 4;
                            uint vh[4][2], vl[4][2];
                            MMA_SPLIT_KV(va[j].x, vh[0][0], vl[0][0]);
                            MMA_SPLIT_KV(vb[j].x, vh[0][1], vl[0][1]);
                            MMA_SPLIT_KV(va[j].y, vh[1][0], vl[1][0]);
                            MMA_SPLIT_KV(vb[j].y, vh[1][1], vl[1][1]);
                            MMA_SPLIT_KV(va[j].z, vh[2][0], vl[2][0]);
                            MMA_SPLIT_KV(vb[j].z, vh[2][1], vl[2][1]);
                            MMA_SPLIT_KV(va[j].w, vh[3][0], vl[3][0]);
                            MMA_SPLIT_KV(vb[j].w, vh[3][1], vl[3][1]);
#pragma unroll
                            for (int w = 0; w < NSA_TQ; w++) {
                                if (w >= nt || !(act >> w & 1))
                                    continue; /* uniform */
                                __local const float *pw = ps + w * 16 * MMA_PST;
                                const float p0a = pw[gq * MMA_PST + ka],
                                            p1a = pw[(gq + 8) * MMA_PST + ka];
                                const float p0b = pw[gq * MMA_PST + kb4],
                                            p1b = pw[(gq + 8) * MMA_PST + kb4];
                                uint ah[4], al[4];
                                MMA_SPLIT(p0a, ah[0], al[0]);
                                MMA_SPLIT(p1a, ah[1], al[1]);
                                MMA_SPLIT(p0b, ah[2], al[2]);
                                MMA_SPLIT(p1b, ah[3], al[3]);
#pragma unroll
                                for (int u = 0; u < 4; u++)
                                    MMA_3KV(dd[w][u], ah, al, vh[u], vl[u]);
                            }
                        }
#pragma unroll
                        for (int w = 0; w < NSA_TQ; w++)
#pragma unroll
                            for (int u = 0; u < 4; u++)
#pragma unroll
                                for (int i = 0; i < 4; i++)
                                    acc[w][x][u][i] += dd[w][u][i];
                    }
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE); /* ps and mo are rewritten next tile */
        }
    }
    /* totals per (token, head): the running partial sums */
    for (int it = lid; it < nt * nh; it += NSA_WG) {
        const int rr = it / nh * 16 + it % nh;
        float sum = 0.0f;
        for (int x = 0; x < NSA_NP; x++)
            sum += lsp[rr * NSA_NP + x];
        mo[rr] = sum;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
#pragma unroll
    for (int w = 0; w < NSA_TQ; w++) {
        if (w >= nt)
            break;
        const size_t hbase = (size_t)row[w] * H + (size_t)g * hpg + h0;
#pragma unroll
        for (int x = 0; x < MMA_PVC; x++) {
            const int o4 = (wid + x * MMA_NW) * 8 + 2 * tq;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int hx = gq + (i >> 1) * 8, cx = o4 + (i & 1);
                if (hx >= nh || cx >= dv4)
                    continue;
                const float sum = mo[w * 16 + hx];
                const float4 o =
                    sum > 0.0f ? (float4)(acc[w][x][0][i], acc[w][x][1][i], acc[w][x][2][i],
                                          acc[w][x][3][i]) /
                                     sum
                               : (float4)(0.0f);
                __global float *dst = out + (hbase + hx) * dv + cx * 4;
                dst[0] = o.x;
                if (cx * 4 + 1 < dv)
                    dst[1] = o.y;
                if (cx * 4 + 2 < dv)
                    dst[2] = o.z;
                if (cx * 4 + 3 < dv)
                    dst[3] = o.w;
            }
        }
    }
}

#endif
