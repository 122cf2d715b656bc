/* Attention kernels (spec 2-5). Rows are packed tokens; row_seq[row] is the
 * row's sequence and cu[] the sequence offsets, so t = row - cu[seq]. */

/* Group scores (spec 3, Eq. 9-10) of the chunk's rows, one work-item per
 * (row, group, block j): s[j] = sum_h sum_i M[j][i] p_cmp(t,h)[i], with
 * p_cmp rebuilt from the logits z and the softmax statistics (max, sum)
 * that nsa_group_attn left for the compressed branch. */
__kernel void nsa_cmp_scores(__global const float *zs, __global const float *stats,
                             __global const int *row_seq, __global const int *cu,
                             __global const int *rowptr, __global const int *col,
                             __global const int *val, int H, int G, int l, int d, int lsel,
                             int row0, int rows, int max_nc, int max_vis,
                             __global float *scores)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)rows * G * max_vis)
        return;
    const int j = (int)(gid % max_vis), slot = (int)(gid / max_vis), hpg = H / G;
    const int row = row0 + slot / G, t = row - cu[row_seq[row]];
    const int nc = t + 1 >= l ? (t + 1 - l) / d + 1 : 0;
    if (j > t / lsel)
        return; /* not visible: never read by top-n */
    float s = 0.0f;
    /* no compressed token yet: every score is exactly 0 (and the softmax
     * sums are 0, so they must not be divided by) */
    for (int hh = 0; hh < hpg && nc > 0; hh++) {
        const size_t at = (size_t)slot * hpg + hh;
        __global const float *z = zs + at * max_nc;
        const float m = stats[2 * at], inv = 1.0f / stats[2 * at + 1];
        float a = 0.0f;
        for (int k = rowptr[j]; k < rowptr[j + 1]; k++)
            if (col[k] < nc)
                a += (float)val[k] * exp(z[col[k]] - m);
        s += a * inv;
    }
    scores[gid] = s;
}

/* Top-n (spec 3, Eq. 11), one work-item per (row, group) of the chunk:
 * forced blocks, then picks in the order (score descending, j ascending),
 * written sorted ascending and padded with -1. The k-th pick is the best
 * block after the previous pick in that order, so no per-block flags. */
__kernel void nsa_topn(__global const float *scores, __global const int *row_seq,
                       __global const int *cu, int G, int lsel, int n, int n_init,
                       int n_local, int row0, int rows, int max_vis, __global int *sel)
{
    const int gid = get_global_id(0);
    if (gid >= rows * G)
        return;
    const int row = row0 + gid / G, g = gid % G;
    const int t = row - cu[row_seq[row]], vis = t / lsel + 1;
    __global const float *s = scores + (size_t)gid * max_vis;
    __global int *out = sel + ((size_t)row * G + g) * n;
    int k = 0;
    if (vis <= n) {
        for (int j = 0; j < vis; j++)
            out[k++] = j;
    } else {
        for (int j = 0; j < vis; j++)
            if (j < n_init || j >= vis - n_local)
                out[k++] = j;
        float last_s = 0.0f;
        int last_j = -1;
        while (k < n) {
            int best = -1;
            float bs = 0.0f;
            for (int j = 0; j < vis; j++) {
                if (j < n_init || j >= vis - n_local)
                    continue;
                const float sj = s[j];
                if (last_j >= 0 && !(sj < last_s || (sj == last_s && j > last_j)))
                    continue;
                if (best < 0 || sj > bs) {
                    best = j;
                    bs = sj;
                }
            }
            if (best < 0)
                break;
            out[k++] = best;
            last_s = bs;
            last_j = best;
        }
        /* insertion sort of the k picks */
        for (int a = 1; a < k; a++) {
            const int v = out[a];
            int b = a - 1;
            while (b >= 0 && out[b] > v) {
                out[b + 1] = out[b];
                b--;
            }
            out[b + 1] = v;
        }
    }
    for (; k < n; k++)
        out[k] = -1;
}

/* Group-centric attention: one work-group per (row, group) holds the queries
 * of all heads of the group and streams tiles of NSA_TILE keys through local
 * memory once for all of them, with an online softmax per head.
 * mode 0: the tokens p <= t of the selected blocks sel[row][g][0..n-1]
 * (spec 3); mode 1: positions max(0, t-w+1) .. t (spec 4; w >= t+1 gives
 * dense causal attention); mode 2: the compressed tokens 0 .. n_cmp(t)-1 of
 * the row's sequence (spec 2), rows row0 + group / G. With want_z, mode 2
 * also keeps each head's logits in zs and its (max, sum) in stats, per
 * (row, group) slot of the chunk, for nsa_cmp_scores. When the queries of
 * all H/G heads do not fit local memory, hc < H/G heads share a work-group
 * and the group's heads take ceil((H/G) / hc) work-groups. */
__kernel void nsa_group_attn(__global const float *q, __global const kv_t *K,
                             __global const kv_t *V, __global const int *row_seq,
                             __global const int *cu, __global const int *cmp_off,
                             __global const int *sel, int n, int lsel, int mode, int w, int l,
                             int d, int row0, int H, int G, int hc, int dk, int dv,
                             float scale,
                             __global float *out, int want_z, int max_nc, __global float *zs,
                             __global float *stats, __local float *qs, __local float *acc,
                             __local float *ks, __local float *vs, __local float *ps,
                             __local float *st)
{
    const int lid = get_local_id(0), hpg = H / G, parts = (hpg + hc - 1) / hc;
    const int slot = get_group_id(0) / parts, h0 = get_group_id(0) % parts * hc;
    const int nh = min(hc, hpg - h0); /* heads h0 .. h0+nh-1 of the group */
    const int row = row0 + slot / G, g = slot % G;
    const int seq = row_seq[row], t = row - cu[seq];
    /* first key row of the sequence in K and V */
    const int base = mode == 2 ? cmp_off[seq] : cu[seq];
    const size_t hbase = (size_t)row * H + (size_t)g * hpg + h0; /* first head row */
    /* local rows of q and k padded to an odd stride: the lanes of a logit
     * step read different keys at the same e, in different banks */
    const int dkp = dk | 1;
    __local float *m = st, *lsum = st + hc, *alpha = st + 2 * hc;
    for (int i = lid; i < nh * dk; i += NSA_WG)
        qs[i / dk * dkp + i % dk] = q[hbase * dk + i];
    for (int i = lid; i < nh * dv; i += NSA_WG)
        acc[i] = 0.0f;
    for (int i = lid; i < nh; i += NSA_WG) {
        m[i] = -INFINITY;
        lsum[i] = 0.0f;
    }
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
        for (int p0 = lo; p0 < hi; p0 += NSA_TILE) {
            const int cnt = min(NSA_TILE, hi - p0);
            for (int i = lid; i < cnt * dk; i += NSA_WG) {
                const int k = i / dk, e = i % dk;
                ks[k * dkp + e] = LDKV(K, ((size_t)(base + p0 + k) * G + g) * dk + e);
            }
            for (int i = lid; i < cnt * dv; i += NSA_WG) {
                const int k = i / dv, e = i % dv;
                vs[i] = LDKV(V, ((size_t)(base + p0 + k) * G + g) * dv + e);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int i = lid; i < nh * NSA_TILE; i += NSA_WG) {
                const int hh = i / NSA_TILE, k = i % NSA_TILE;
                float z = -INFINITY;
                if (k < cnt) {
                    z = 0.0f;
                    for (int e = 0; e < dk; e++)
                        z += qs[hh * dkp + e] * ks[k * dkp + e];
                    z *= scale;
                    if (want_z)
                        zs[((size_t)slot * hpg + h0 + hh) * max_nc + p0 + k] = z;
                }
                ps[i] = z;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int hh = lid; hh < nh; hh += NSA_WG) {
                __local float *pr = ps + hh * NSA_TILE;
                float mt = m[hh];
                for (int k = 0; k < cnt; k++)
                    mt = fmax(mt, pr[k]);
                float sum = 0.0f;
                for (int k = 0; k < cnt; k++) {
                    pr[k] = exp(pr[k] - mt);
                    sum += pr[k];
                }
                alpha[hh] = exp(m[hh] - mt); /* 0 on the first tile */
                lsum[hh] = lsum[hh] * alpha[hh] + sum;
                m[hh] = mt;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int i = lid; i < nh * dv; i += NSA_WG) {
                const int hh = i / dv, e = i % dv;
                __local const float *pr = ps + hh * NSA_TILE;
                float a = acc[i] * alpha[hh];
                for (int k = 0; k < cnt; k++)
                    a += pr[k] * vs[k * dv + e];
                acc[i] = a;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    }
    if (want_z)
        for (int hh = lid; hh < nh; hh += NSA_WG) {
            stats[2 * ((size_t)slot * hpg + h0 + hh)] = m[hh];
            stats[2 * ((size_t)slot * hpg + h0 + hh) + 1] = lsum[hh];
        }
    for (int i = lid; i < nh * dv; i += NSA_WG) {
        const int hh = i / dv;
        out[hbase * dv + i] =
            lsum[hh] > 0.0f ? acc[i] / lsum[hh] : 0.0f;
    }
}

/* Gated output (spec 5): out = g_cmp o_cmp + g_slc o_slc + g_win o_win. */
__kernel void nsa_gate(__global const float *gates, __global const float *oc,
                       __global const float *os, __global const float *ow, int dv,
                       ulong total, __global float *out)
{
    const size_t i = get_global_id(0);
    if (i >= total)
        return;
    __global const float *gt = gates + (i / dv) * 3;
    out[i] = gt[0] * oc[i] + gt[1] * os[i] + gt[2] * ow[i];
}
