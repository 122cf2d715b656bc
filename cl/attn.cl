/* Attention kernels (spec 2-5). Rows are packed tokens; row_seq[row] is the
 * row's sequence and cu[] the sequence offsets, so t = row - cu[seq]. */

/* Group scores (spec 3, Eq. 9-10). M is translation invariant (both
 * mappings): M[j][i] = mw[i - (mr j + moff)] for 0 <= i - (mr j + moff) <
 * mspan (the host checks its CSR against this). nsa_group_attn (mode 2)
 * left, per head and block j, one partial sum per key tile tau that meets
 * the block's columns, pb[j][tau % nt] = sum_i M[j][i] exp(z[i] - m_tau)
 * over the tile's columns, against the running max m_tau after tile tau
 * (kept in tm), and the final softmax statistics (max, sum); so
 * p_slc[j] = sum_tau pb[j][.] exp(m_tau - max) / sum, and no logit leaves
 * the kernel. The sum of tile tau is in slot tau % nt (a block meets at
 * most nt consecutive tiles). Scores of the heads hs .. hs+hpg-1 of the
 * scratch. */
/* a / b rounded down (b > 0) */
static int floor_div(int a, int b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

static float group_score(__global const float *pb, __global const float *tm,
                         __global const float *stats, int mr, int moff, int mspan, int nblk,
                         size_t hs, int hpg, int j, int nc, int max_vis, int ntile, int nt,
                         int tile)
{
    const int c0 = mr * j + moff, f = max(c0, 0), e = min(c0 + mspan - 1, nc - 1);
    float s = 0.0f;
    /* no compressed token of block j yet: the score is exactly 0 */
    if (j >= nblk || f > e)
        return s;
    const int t0 = f / tile, t1 = e / tile;
    for (int hh = 0; hh < hpg; hh++) {
        const size_t at = hs + hh;
        __global const float *pr = pb + (at * max_vis + j) * nt;
        const float m = stats[2 * at];
        float a = 0.0f;
        for (int tau = t0; tau <= t1; tau++)
            a += pr[tau % nt] * exp(tm[at * ntile + tau] - m);
        s += a / stats[2 * at + 1];
    }
    return s;
}

/* The scores when the heads of a group are split over work-groups: one
 * work-item per (row, group, block j) of the chunk. */
__kernel void nsa_cmp_scores(__global const float *pb, __global const float *tm,
                             __global const float *stats, __global const int *row_seq,
                             __global const int *cu, int mr, int moff, int mspan, int nblk,
                             int H, int G, int l, int d, int lsel, int row0, int rows,
                             int max_vis, int ntile, int nt, int tile, __global float *scores)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)rows * G * max_vis)
        return;
    const int j = (int)(gid % max_vis), slot = (int)(gid / max_vis), hpg = H / G;
    const int row = row0 + slot / G, t = row - cu[row_seq[row]];
    const int nc = t + 1 >= l ? (t + 1 - l) / d + 1 : 0;
    if (j > t / lsel)
        return; /* not visible: never read by top-n */
    scores[gid] = group_score(pb, tm, stats, mr, moff, mspan, nblk, (size_t)slot * hpg, hpg, j,
                              nc, max_vis, ntile, nt, tile);
}

/* Work-group top-n (spec 3, Eq. 11): one work-group of NSA_WG lanes per
 * (row, group). Picks go to the largest scores, ties to the smaller j, as
 * an order on (key, j) with key an order-preserving integer image of the
 * score (+0 and -0 equal; NaN a valid lowest key). The m-th largest of
 * the lanes' maxima, thr, is at most the m-th largest score, so the picks
 * are among the keys >= thr; keys > thr lie in at most m-1 lanes, at most
 * (m-1) * ceil(vis / NSA_WG) of them, ranked exactly in local memory; the
 * rest of the m picks are the keys == thr of smallest j (a scan in j
 * order). Rows whose candidates do not fit the local list (m > NSA_WG,
 * very long rows) run the serial rule, topn_serial. */
#define NSA_TOPN_CAP (4 * NSA_WG)

static uint topn_key(float x)
{
    if (isnan(x))
        return 1u; /* below every number; 0 = no candidate */
    const uint u = x == 0.0f ? 0u : as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* forced blocks (spec 3): 0 .. n_init-1 and the n_local last visible */
static int topn_forced(int j, int vis, int n_init, int n_local)
{
    return j < n_init || j >= vis - n_local;
}

/* The rule one pick at a time: the k-th pick is the best block after the
 * previous pick in the order (key descending, j ascending). */
static void topn_serial(__global const float *s, int vis, int n, int n_init, int n_local,
                        __global int *out)
{
    int k = 0;
    for (int j = 0; j < vis; j++)
        if (topn_forced(j, vis, n_init, n_local))
            out[k++] = j;
    uint last_k = 0;
    int last_j = -1;
    while (k < n) {
        int best = -1;
        uint bk = 0;
        for (int j = 0; j < vis; j++) {
            if (topn_forced(j, vis, n_init, n_local))
                continue;
            const uint kj = topn_key(s[j]);
            if (last_j >= 0 && !(kj < last_k || (kj == last_k && j > last_j)))
                continue;
            if (best < 0 || kj > bk) {
                best = j;
                bk = kj;
            }
        }
        if (best < 0)
            break;
        out[k++] = best;
        last_k = bk;
        last_j = best;
    }
    for (int a = 1; a < k; a++) { /* ascending */
        const int v = out[a];
        int b = a - 1;
        while (b >= 0 && out[b] > v) {
            out[b + 1] = out[b];
            b--;
        }
        out[b + 1] = v;
    }
}

__kernel void nsa_topn(__global const float *scores, __global const int *row_seq,
                       __global const int *cu, int G, int lsel, int n, int n_init, int n_local,
                       int row0, int rows, int max_vis, __global int *sel)
{
    __local uint lmax[NSA_WG], ck[NSA_TOPN_CAP];
    __local int cj[NSA_TOPN_CAP], pick[NSA_TOPN_CAP], scan[2][NSA_WG];
    __local uint thr;
    __local int ns, ne, base;
    const int lid = get_local_id(0), gid = get_group_id(0);
    if (gid >= rows * G)
        return; /* uniform: the whole work-group */
    const int row = row0 + gid / G, g = gid % G;
    const int t = row - cu[row_seq[row]], vis = t / lsel + 1;
    __global const float *s = scores + (size_t)gid * max_vis;
    __global int *out = sel + ((size_t)row * G + g) * n;
    if (vis <= n) { /* every visible block, then -1 */
        for (int k = lid; k < n; k += NSA_WG)
            out[k] = k < vis ? k : -1;
        return;
    }
    /* vis > n >= n_init + n_local: the forced blocks are 0 .. n_init-1 and
     * lo_loc .. vis-1, m picks between them, n entries and no padding */
    const int lo_loc = max(n_init, vis - n_local), m = n - n_init - (vis - lo_loc);
    if (m <= 0) {
        for (int k = lid; k < n; k += NSA_WG)
            out[k] = k < n_init ? k : lo_loc + k - n_init;
        return;
    }
    if (lid == 0) {
        thr = 0u;
        ns = 0;
        ne = 0;
    }
    uint mx = 0u; /* the lane's largest candidate key */
    for (int j = n_init + lid; j < lo_loc; j += NSA_WG)
        mx = max(mx, topn_key(s[j]));
    lmax[lid] = mx;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (mx > 0u) {
        int ge = 0;
        for (int i = 0; i < NSA_WG; i++)
            ge += lmax[i] >= mx;
        if (ge >= m)
            atomic_max(&thr, mx);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    /* thr = 0 only when fewer than m lanes hold candidates (m > NSA_WG):
     * every candidate is then above it */
    const uint th = thr;
    for (int j = n_init + lid; j < lo_loc; j += NSA_WG) {
        const uint kj = topn_key(s[j]);
        if (kj > th) {
            const int at = atomic_inc(&ns);
            if (at < NSA_TOPN_CAP) {
                ck[at] = kj;
                cj[at] = j;
            }
        } else if (kj == th) {
            atomic_inc(&ne);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int cs = ns, eq = ne;
    if (cs > NSA_TOPN_CAP || m > NSA_TOPN_CAP) {
        if (lid == 0)
            topn_serial(s, vis, n, n_init, n_local, out);
        return;
    }
    /* rank of each key above thr among them; the first m are picks */
    for (int c = lid; c < cs; c += NSA_WG) {
        const uint kc = ck[c];
        const int jc = cj[c];
        int r = 0;
        for (int x = 0; x < cs; x++)
            r += ck[x] > kc || (ck[x] == kc && cj[x] < jc);
        if (r < m)
            pick[r] = jc;
    }
    const int got = min(cs, m);
    if (got < m && eq == m - got) {
        /* every key equal to thr is a pick (the usual case: one) */
        if (lid == 0)
            base = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int j = n_init + lid; j < lo_loc; j += NSA_WG)
            if (topn_key(s[j]) == th)
                pick[got + atomic_inc(&base)] = j;
    } else if (got < m) {
        /* the m - got keys equal to thr of smallest j: a scan per chunk of
         * NSA_WG blocks in j order */
        if (lid == 0)
            base = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int j0 = n_init; j0 < lo_loc; j0 += NSA_WG) {
            const int j = j0 + lid;
            const int f = j < lo_loc && topn_key(s[j]) == th;
            int cur = 0;
            scan[0][lid] = f;
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int off = 1; off < NSA_WG; off *= 2) {
                const int v = scan[cur][lid] + (lid >= off ? scan[cur][lid - off] : 0);
                scan[1 - cur][lid] = v;
                cur = 1 - cur;
                barrier(CLK_LOCAL_MEM_FENCE);
            }
            const int b = base, before = b + scan[cur][lid] - f;
            if (f && before < m - got)
                pick[got + before] = j;
            barrier(CLK_LOCAL_MEM_FENCE);
            if (lid == 0)
                base = b + scan[cur][NSA_WG - 1];
            barrier(CLK_LOCAL_MEM_FENCE);
            if (base >= m - got)
                break;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    /* the m picks ascending between the forced blocks (written only here:
     * topn_serial alone writes the rows it takes) */
    for (int k = lid; k < n_init; k += NSA_WG)
        out[k] = k;
    for (int k = lid; k < vis - lo_loc; k += NSA_WG)
        out[n_init + m + k] = lo_loc + k;
    for (int c = lid; c < m; c += NSA_WG) {
        const int p = pick[c];
        int r = 0;
        for (int x = 0; x < m; x++)
            r += pick[x] < p;
        out[n_init + r] = p;
    }
}

/* Register tiling of nsa_group_attn (per-device -D defines, see
 * lib/opencl/cl_device.c). Logits: a lane computes NSA_RH heads x NSA_RK
 * keys, NSA_SK lanes side by side on keys, so a warp-sized run of lanes
 * reads few q rows and few k rows (broadcasts, no bank conflicts with the
 * padded strides). Softmax: NSA_NP lanes per head row. P V: a lane owns
 * NSA_RHO heads x NSA_RE float4 columns of dv outputs, NSA_PE lanes side
 * by side on dv,
 * and at most NSA_PVI such items (its accumulators stay in registers). */
#ifndef NSA_SK
#define NSA_SK 8
#endif
#ifndef NSA_RK
#define NSA_RK 4
#endif
#ifndef NSA_RH
#define NSA_RH 2
#endif
#ifndef NSA_RHO
#define NSA_RHO 4
#endif
#ifndef NSA_PE
#define NSA_PE 8
#endif
#ifndef NSA_RE
#define NSA_RE 1
#endif
#ifndef NSA_NP
#define NSA_NP 8
#endif
#ifndef NSA_PVI
#define NSA_PVI 2
#endif

/* Gated output (spec 5): out = g_cmp o_cmp + g_slc o_slc + g_win o_win. */
__kernel void nsa_gate(__global const float *gates, __global const float *oc,
                       __global const float *os, __global const float *ow, int dv, ulong total,
                       __global float *out)
{
    const size_t i = get_global_id(0);
    if (i >= total)
        return;
    __global const float *gt = gates + (i / dv) * 3;
    out[i] = gt[0] * oc[i] + gt[1] * os[i] + gt[2] * ow[i];
}
