/* nsa_group_attn (modes 0, 1: the selected and sliding branches and the
 * dense baseline) and nsa_group_attn_cmp (mode 2, with the block sums and
 * scores of the selection): make packs this file twice (lib/opencl/
 * local.am), the second time with NSA_GA_CMP = 1, so the first kernel
 * carries none of the compressed branch's code and registers. */
#ifndef NSA_GA_CMP
#define NSA_GA_CMP 0
#else
#undef NSA_GA_CMP
#define NSA_GA_CMP 1
#endif

/* Group-centric attention: one work-group per (row, group) holds the queries
 * of all heads of the group and streams tiles of `tile` keys (a multiple of
 * NSA_SK * NSA_RK, at most NSA_TILE) through local memory once for all of
 * them, with an online softmax per head.
 * mode 0: the tokens p <= t of the selected blocks sel[row][g][0..n-1]
 * (spec 3); mode 1: positions max(0, t-w+1) .. t (spec 4; w >= t+1 gives
 * dense causal attention); mode 2: the compressed tokens 0 .. n_cmp(t)-1 of
 * the row's sequence (spec 2), rows row0 + group / G. With want_z, mode 2
 * also keeps, per (row, group) slot of the chunk and head, the block sums
 * of the probabilities through M (translation invariant: weights mw at
 * columns mr j + moff + 0 .. mspan-1 of block j, see nsa_cmp_scores), one
 * per key tile (nt slots a block) in pb, the running max after each key
 * tile in tm and the final (max, sum) in stats; no logit goes to global
 * memory. want_z = 2 (hc = H/G: the group's heads all in the work-group)
 * also writes the group scores themselves, as nsa_cmp_scores would. When
 * the queries of all H/G heads do not fit local memory, hc < H/G heads
 * share a work-group and the group's heads take ceil((H/G) / hc)
 * work-groups.
 * Local memory (float4 units; dk4 = ceil(dk/4), dv4 = ceil(dv/4)):
 *   qs  nhp x (dk4 + 1)        queries, zero padded (odd float4 stride)
 *   kv  tile x max(dk4 + 1, dv4) the key tile, then the value tile
 *   ps  nhp x (tile/4 + 1)     logits, then probabilities
 *   red 2 nhp NSA_NP + 2 nhp floats: partial maxima, running partial sums,
 *       the running max before and after the tile */
#if NSA_GA_CMP
__kernel void nsa_group_attn_cmp(__global const float *q, __global const kv_t *K,
                   __global const kv_t *V, __global const int *row_seq,
                   __global const int *cu, __global const int *cmp_off,
                   __global const int *sel, int n, int lsel, int mode, int w, int l, int d,
                   int row0, int H, int G, int hc, int dk, int dv, float scale,
                   __global float *out, int want_z, __constant int *mw, int mr, int moff,
                   int mspan, int nblk, int max_vis, int ntile, int nt,
                   __global float *pb, __global float *tm, __global float *stats,
                   __global float *scores, int tile, __local float4 *qs,
                   __local float4 *kv, __local float4 *ps4, __local float *red)
#else
__kernel void nsa_group_attn(__global const float *q, __global const kv_t *K,
                   __global const kv_t *V, __global const int *row_seq,
                   __global const int *cu, __global const int *cmp_off,
                   __global const int *sel, int n, int lsel, int mode, int w, int l, int d,
                   int row0, int H, int G, int hc, int dk, int dv, float scale,
                   __global float *out, int want_z, __constant int *mw, int mr, int moff,
                   int mspan, int nblk, int max_vis, int ntile, int nt,
                   __global float *pb, __global float *tm, __global float *stats,
                   __global float *scores, int tile, __local float4 *qs,
                   __local float4 *kv, __local float4 *ps4, __local float *red)
#endif
{
    const int lid = get_local_id(0), hpg = H / G, parts = (hpg + hc - 1) / hc;
    const int slot = get_group_id(0) / parts, h0 = get_group_id(0) % parts * hc;
    const int nh = min(hc, hpg - h0); /* heads h0 .. h0+nh-1 of the group */
    const int row = row0 + slot / G, g = slot % G;
    const int seq = row_seq[row], t = row - cu[seq];
    /* first key row of the sequence in K and V */
    const int base = mode == 2 ? cmp_off[seq] : cu[seq];
    const size_t hbase = (size_t)row * H + (size_t)g * hpg + h0; /* first head row */
    const int dk4 = (dk + 3) / 4, dv4 = (dv + 3) / 4, qst = dk4 + 1;
    const int kst = qst > dv4 ? qst : dv4, tp4 = tile / 4 + 1;
    /* heads padded to whole register tiles of both phases */
    const int nhl = (nh + NSA_RH - 1) / NSA_RH, nho = (nh + NSA_RHO - 1) / NSA_RHO;
    const int nhp = max(nhl * NSA_RH, nho * NSA_RHO);
    __local float *ps = (__local float *)ps4;
    __local float *redm = red, *lsp = red + nhp * NSA_NP, *mo = red + 2 * nhp * NSA_NP,
                  *mn = mo + nhp;
    for (int i = lid; i < nhp * qst; i += NSA_WG) {
        const int hh = i / qst, e4 = i % qst;
        float4 v = (float4)(0.0f);
        if (hh < nh && e4 < dk4) {
            __global const float *src = q + (hbase + hh) * dk + e4 * 4;
            if (e4 * 4 + 4 <= dk) {
                v = (float4)(src[0], src[1], src[2], src[3]);
            } else {
                v.x = src[0];
                if (e4 * 4 + 1 < dk)
                    v.y = src[1];
                if (e4 * 4 + 2 < dk)
                    v.z = src[2];
            }
        }
        qs[i] = v;
    }
    for (int i = lid; i < nhp * tp4; i += NSA_WG)
        ps4[i] = (float4)(0.0f);
    for (int i = lid; i < nhp * NSA_NP; i += NSA_WG)
        lsp[i] = 0.0f;
    for (int i = lid; i < nhp; i += NSA_WG) {
        mo[i] = -INFINITY;
        mn[i] = -INFINITY;
    }
    /* P V items of this lane: (el, hl, eg) -> columns
     * e4 = eg NSA_PE NSA_RE + el + x NSA_PE (x < NSA_RE),
     * heads hl + i nho (interleaved: neighbouring lanes read neighbouring
     * probability rows) */
    const int npv = NSA_PE * nho * ((dv4 + NSA_PE * NSA_RE - 1) / (NSA_PE * NSA_RE));
    float4 acc[NSA_PVI][NSA_RHO][NSA_RE];
    for (int it = 0; it < NSA_PVI; it++)
        for (int i = 0; i < NSA_RHO; i++)
            for (int x = 0; x < NSA_RE; x++)
                acc[it][i][x] = (float4)(0.0f);
    barrier(CLK_LOCAL_MEM_FENCE);
    const int nspan = mode == 0 ? n : 1;
    const int nsi = nhl * NSA_SK * (tile / (NSA_SK * NSA_RK)); /* logit items */
#if NSA_GA_CMP
    /* mode 2 with want_z: the blocks that can be visible; block-sum items
     * (block, head) as lanes (jl + x jstep, hl) when the heads fit the
     * lanes, else a strided loop over items; the key tile's index */
    const int jlim = min(nblk, t / lsel + 1);
    const int jstep = NSA_WG / nh, jl = lid / nh, hl = lid % nh;
    int tau = -1;
#endif
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
        for (int p0 = lo; p0 < hi; p0 += tile) {
            const int cnt = min(tile, hi - p0);
            /* the key tile (rows past cnt are never used: masked) */
            for (int i = lid; i < cnt * dk4; i += NSA_WG) {
                const int k = i / dk4, e4 = i % dk4;
                const size_t at = ((size_t)(base + p0 + k) * G + g) * dk + e4 * 4;
                float4 v = (float4)(0.0f);
#if NSA_KV == 0
                if ((dk & 3) == 0)
                    v = vload4(0, K + at);
                else
#endif
                {
                    v.x = LDKV(K, at);
                    if (e4 * 4 + 1 < dk)
                        v.y = LDKV(K, at + 1);
                    if (e4 * 4 + 2 < dk)
                        v.z = LDKV(K, at + 2);
                    if (e4 * 4 + 3 < dk)
                        v.w = LDKV(K, at + 3);
                }
                kv[k * kst + e4] = v;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* logits: item (kl, hl, kg) -> keys kg SK RK + kl + j SK,
             * heads hl + i nhl */
            for (int it = lid; it < nsi; it += NSA_WG) {
                const int kl = it % NSA_SK, r = it / NSA_SK, hl = r % nhl, kg = r / nhl;
                const int k0 = kg * NSA_SK * NSA_RK + kl;
                float s[NSA_RH][NSA_RK];
                for (int i = 0; i < NSA_RH; i++)
                    for (int j = 0; j < NSA_RK; j++)
                        s[i][j] = 0.0f;
                if (kg * NSA_SK * NSA_RK < cnt) {
                    __local const float4 *qr = qs + hl * qst, *kr = kv + k0 * kst;
                    for (int e4 = 0; e4 < dk4; e4++) {
                        float4 qv[NSA_RH], kk[NSA_RK];
                        for (int i = 0; i < NSA_RH; i++)
                            qv[i] = qr[i * nhl * qst + e4];
                        for (int j = 0; j < NSA_RK; j++)
                            kk[j] = kr[j * NSA_SK * kst + e4];
                        for (int i = 0; i < NSA_RH; i++)
                            for (int j = 0; j < NSA_RK; j++) {
                                float a = s[i][j];
                                a = mad(qv[i].x, kk[j].x, a);
                                a = mad(qv[i].y, kk[j].y, a);
                                a = mad(qv[i].z, kk[j].z, a);
                                a = mad(qv[i].w, kk[j].w, a);
                                s[i][j] = a;
                            }
                    }
                }
                for (int i = 0; i < NSA_RH; i++) {
                    const int hh = hl + i * nhl;
                    if (hh >= nh)
                        continue;
                    for (int j = 0; j < NSA_RK; j++) {
                        const int k = k0 + j * NSA_SK;
                        float z = -INFINITY;
                        if (k < cnt) {
                            z = s[i][j] * scale;
                        }
                        ps[hh * tp4 * 4 + k] = z;
                    }
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* softmax, NSA_NP lanes per head row: partial maxima (these two
             * loops step from 0 and test the lane's item inside: PoCL 3.1
             * ran the lid-strided form past its bound here) */
            for (int it0 = 0; it0 < nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, hh = it / NSA_NP, pt = it % NSA_NP;
                if (it >= nh * NSA_NP)
                    break;
                __local const float *pr = ps + hh * tp4 * 4;
                float mx = -INFINITY;
                for (int k = pt; k < cnt; k += NSA_NP)
                    mx = fmax(mx, pr[k]);
                redm[it] = mx;
                if (pt == 0)
                    mo[hh] = mn[hh]; /* the max before this tile */
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* probabilities and running partial sums; the value tile
             * replaces the key tile (no lane reads keys any more) */
            for (int it0 = 0; it0 < nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, hh = it / NSA_NP, pt = it % NSA_NP;
                if (it >= nh * NSA_NP)
                    break;
                __local float *pr = ps + hh * tp4 * 4;
                const float m0 = mo[hh];
                float mt = m0;
                for (int x = 0; x < NSA_NP; x++)
                    mt = fmax(mt, redm[hh * NSA_NP + x]);
                float sum = 0.0f;
                for (int k = pt; k < tile; k += NSA_NP) {
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
            for (int i = lid; i < tile * dv4; i += NSA_WG) {
                const int k = i / dv4, e4 = i % dv4;
                float4 v = (float4)(0.0f);
                if (k < cnt) {
                    const size_t at = ((size_t)(base + p0 + k) * G + g) * dv + e4 * 4;
#if NSA_KV == 0
                    if ((dv & 3) == 0)
                        v = vload4(0, V + at);
                    else
#endif
                    {
                        v.x = LDKV(V, at);
                        if (e4 * 4 + 1 < dv)
                            v.y = LDKV(V, at + 1);
                        if (e4 * 4 + 2 < dv)
                            v.z = LDKV(V, at + 2);
                        if (e4 * 4 + 3 < dv)
                            v.w = LDKV(V, at + 3);
                    }
                }
                kv[k * kst + e4] = v; /* rows past cnt: 0 (their p is 0) */
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* P V into the lane's registers */
            const int c4 = (cnt + 3) / 4;
            for (int ix = 0; ix < NSA_PVI; ix++) {
                const int it = lid + ix * NSA_WG;
                const int el = it % NSA_PE, r = it / NSA_PE, hl = r % nho,
                          e0 = r / nho * NSA_PE * NSA_RE + el;
                if (it >= npv)
                    continue;
                int ec[NSA_RE]; /* columns past dv4 read a valid one, unused */
                for (int x = 0; x < NSA_RE; x++)
                    ec[x] = min(e0 + x * NSA_PE, dv4 - 1);
                float4 a[NSA_RHO][NSA_RE];
                for (int i = 0; i < NSA_RHO; i++) {
                    const int hh = hl + i * nho;
                    const float m1 = mn[hh];
                    const float al = m1 == -INFINITY ? 1.0f : exp(mo[hh] - m1);
                    for (int x = 0; x < NSA_RE; x++)
                        a[i][x] = acc[ix][i][x] * al;
                }
                for (int k4 = 0; k4 < c4; k4++) {
                    float4 p[NSA_RHO];
                    for (int i = 0; i < NSA_RHO; i++)
                        p[i] = ps4[(hl + i * nho) * tp4 + k4];
                    for (int x = 0; x < NSA_RE; x++) {
                        __local const float4 *vr = kv + 4 * k4 * kst + ec[x];
                        const float4 v0 = vr[0], v1 = vr[kst], v2 = vr[2 * kst],
                                     v3 = vr[3 * kst];
                        for (int i = 0; i < NSA_RHO; i++) {
                            a[i][x] = mad((float4)(p[i].x), v0, a[i][x]);
                            a[i][x] = mad((float4)(p[i].y), v1, a[i][x]);
                            a[i][x] = mad((float4)(p[i].z), v2, a[i][x]);
                            a[i][x] = mad((float4)(p[i].w), v3, a[i][x]);
                        }
                    }
                }
                for (int i = 0; i < NSA_RHO; i++)
                    for (int x = 0; x < NSA_RE; x++)
                        acc[ix][i][x] = a[i][x];
            }
#if NSA_GA_CMP
            if (want_z) {
                /* blocks jb .. j1-1 have columns in this tile: their
                 * partial sums against this tile's running max, in slot
                 * tau % nt of the block (the nt or fewer tiles a block
                 * meets are consecutive); stores only, no carry between
                 * tiles, so no load waits here */
                const int pe = p0 + cnt, ts = ++tau % nt;
                const int jb = max(0, -floor_div(moff + mspan - 1 - p0, mr));
                const int j1 = min(jlim, floor_div(pe - 1 - moff, mr) + 1);
                for (int it = jstep > 0 ? (jl < jstep ? jb + jl : j1) : jb * nh + lid;
                     it < (jstep > 0 ? j1 : j1 * nh); it += jstep > 0 ? jstep : NSA_WG) {
                    const int j = jstep > 0 ? it : it / nh, hh = jstep > 0 ? hl : it % nh;
                    const int c0 = mr * j + moff;
                    __local const float *pr = ps + hh * tp4 * 4;
                    const int k0 = max(p0, c0) - c0, k1 = min(pe, c0 + mspan) - c0;
                    float a = 0.0f;
                    for (int k = k0; k < k1; k++)
                        a += (float)mw[k] * pr[c0 + k - p0];
                    pb[(((size_t)slot * hpg + h0 + hh) * max_vis + j) * nt + ts] = a;
                }
                for (int hh = lid; hh < nh; hh += NSA_WG)
                    tm[((size_t)slot * hpg + h0 + hh) * ntile + tau] = mn[hh];
            }
#endif
            barrier(CLK_LOCAL_MEM_FENCE);
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
#if NSA_GA_CMP
    /* (global: the block sums and statistics of other lanes, below) */
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
    if (want_z == 2) /* all heads of the group here: their group scores */
        for (int j = lid; j < t / lsel + 1; j += NSA_WG)
            scores[(size_t)slot * max_vis + j] =
                group_score(pb, tm, stats, mr, moff, mspan, nblk, (size_t)slot * hpg, hpg, j,
                            t + 1 >= l ? (t + 1 - l) / d + 1 : 0, max_vis, ntile, nt, tile);
#else
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    for (int ix = 0; ix < NSA_PVI; ix++) {
        const int it = lid + ix * NSA_WG;
        const int el = it % NSA_PE, r = it / NSA_PE, hl = r % nho,
                  e0 = r / nho * NSA_PE * NSA_RE + el;
        if (it >= npv)
            continue;
        for (int i = 0; i < NSA_RHO; i++)
            for (int x = 0; x < NSA_RE; x++) {
                const int hh = hl + i * nho, e4 = e0 + x * NSA_PE;
                if (hh >= nh || e4 >= dv4)
                    continue;
                const float sum = mo[hh];
                const float4 o = sum > 0.0f ? acc[ix][i][x] / sum : (float4)(0.0f);
                __global float *dst = out + (hbase + hh) * dv + e4 * 4;
                dst[0] = o.x;
                if (e4 * 4 + 1 < dv)
                    dst[1] = o.y;
                if (e4 * 4 + 2 < dv)
                    dst[2] = o.z;
                if (e4 * 4 + 3 < dv)
                    dst[3] = o.w;
            }
    }
}

