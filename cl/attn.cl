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

/* The same scores with one work-group of NSA_WG lanes per (row, group),
 * bit for bit: every score is the same float operations in the same order
 * as nsa_cmp_scores's (a = sum over the entries of val * exp(z - m) in
 * entry order, then s += a * (1 / sum) head by head), but each exp(z - m)
 * is formed once (nsa_cmp_scores: about 1.25 times, l/d - 1 of every
 * l'/d tokens twice), the logits are loaded coalesced, 1 / sum once per
 * head and no lane idles past the visible blocks. The visible blocks go
 * in tiles of bt (host: the tokens the mapping rows of a tile reach,
 * halo included, number at most NSA_CSS x NSA_WG, lowest first and
 * highest last in the CSR); the group's heads in batches of NSA_CSH: the
 * lanes along the tile's tokens form exp(z - m) of the batch into local
 * memory (one pad word every 32, so that lanes a block apart, l'/d
 * tokens, read distinct banks), then a lane per block walks its mapping
 * entries once for the whole batch. */
#ifndef NSA_CSH
#define NSA_CSH 8
#endif
#ifndef NSA_CSS
#define NSA_CSS 4
#endif
#define NSA_CS_ES (NSA_CSS * NSA_WG + NSA_CSS * NSA_WG / 32)

__kernel void nsa_cmp_scores_wg(__global const float *zs, __global const float *stats,
                                __global const int *row_seq, __global const int *cu,
                                __global const int *rowptr, __global const int *col,
                                __global const int *val, int H, int G, int l, int d, int lsel,
                                int row0, int rows, int max_nc, int max_vis, int bt,
                                __global float *scores)
{
    __local float ex[NSA_CSH * NSA_CS_ES], linv[NSA_CSH];
    const int slot = get_group_id(0), lid = get_local_id(0), hpg = H / G;
    if (slot >= rows * G)
        return; /* uniform: the whole work-group */
    const int row = row0 + slot / G, t = row - cu[row_seq[row]];
    const int nc = t + 1 >= l ? (t + 1 - l) / d + 1 : 0, vis = t / lsel + 1;
    __global float *out = scores + (size_t)slot * max_vis;
    if (nc == 0) { /* as nsa_cmp_scores: exactly 0, the sums not divided by */
        for (int j = lid; j < vis; j += NSA_WG)
            out[j] = 0.0f;
        return;
    }
    __global const float *zr = zs + (size_t)slot * hpg * max_nc;
    __global const float *sr = stats + (size_t)slot * hpg * 2;
    for (int jt = 0; jt < vis; jt += bt) {
        const int jn = min(bt, vis - jt), e0 = rowptr[jt], e1 = rowptr[jt + jn];
        /* the tile's tokens lo .. lo + nt - 1 (those below nc only) */
        const int lo = e1 > e0 ? col[e0] : 0;
        const int nt = e1 > e0 ? min(col[e1 - 1] + 1, nc) - lo : 0;
        const int j = jt + lid, k0 = lid < jn ? rowptr[j] : 0, k1 = lid < jn ? rowptr[j + 1] : 0;
        float s = 0.0f;
        for (int h0 = 0; h0 < hpg; h0 += NSA_CSH) {
            const int nb = min(NSA_CSH, hpg - h0);
            barrier(CLK_LOCAL_MEM_FENCE); /* the last batch's reads are done */
            if (lid < nb)
                linv[lid] = 1.0f / sr[2 * (h0 + lid) + 1];
            float m[NSA_CSH];
            for (int h = 0; h < NSA_CSH; h++)
                m[h] = h < nb ? sr[2 * (h0 + h)] : 0.0f;
            for (int i = lid; i < nt; i += NSA_WG) {
                float zv[NSA_CSH]; /* the batch's loads first: several in flight */
                for (int h = 0; h < NSA_CSH; h++)
                    if (h < nb)
                        zv[h] = zr[(size_t)(h0 + h) * max_nc + lo + i];
                const int p = i + (i >> 5);
                for (int h = 0; h < NSA_CSH; h++)
                    if (h < nb)
                        ex[h * NSA_CS_ES + p] = exp(zv[h] - m[h]);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            float a[NSA_CSH];
            for (int h = 0; h < NSA_CSH; h++)
                a[h] = 0.0f;
            for (int k = k0; k < k1; k++)
                if (col[k] < nc) {
                    const float v = (float)val[k];
                    const int c = col[k] - lo, p = c + (c >> 5);
                    for (int h = 0; h < NSA_CSH; h++)
                        a[h] += v * ex[h * NSA_CS_ES + p];
                }
            for (int h = 0; h < NSA_CSH; h++)
                if (h < nb)
                    s += a[h] * linv[h];
        }
        if (lid < jn)
            out[j] = s;
    }
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

/* The top-n of one (row, group): scores s[0 .. vis-1], n indices to out.
 * Called by the whole work-group (nsa_topn here, nsa_dc_select in
 * cl/decode.cl, so prefill and decode share one rule); the local arrays
 * are the caller's (only a kernel may declare them): lmax, scan[0..1]
 * NSA_WG each, ck, cj, pick NSA_TOPN_CAP each, one word each for thr, ns,
 * ne, base. */
static void topn_group(__global const float *s, int vis, int n, int n_init, int n_local,
                       __global int *out, __local uint *lmax, __local uint *ck,
                       __local int *cj, __local int *pick, __local int (*scan)[NSA_WG],
                       __local uint *thr, __local int *ns, __local int *ne,
                       __local int *base)
{
    const int lid = get_local_id(0);
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
        *thr = 0u;
        *ns = 0;
        *ne = 0;
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
            atomic_max(thr, mx);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    /* thr = 0 only when fewer than m lanes hold candidates (m > NSA_WG):
     * every candidate is then above it */
    const uint th = *thr;
    for (int j = n_init + lid; j < lo_loc; j += NSA_WG) {
        const uint kj = topn_key(s[j]);
        if (kj > th) {
            const int at = atomic_inc(ns);
            if (at < NSA_TOPN_CAP) {
                ck[at] = kj;
                cj[at] = j;
            }
        } else if (kj == th) {
            atomic_inc(ne);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int cs = *ns, eq = *ne;
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
            *base = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int j = n_init + lid; j < lo_loc; j += NSA_WG)
            if (topn_key(s[j]) == th)
                pick[got + atomic_inc(base)] = j;
    } else if (got < m) {
        /* the m - got keys equal to thr of smallest j: a scan per chunk of
         * NSA_WG blocks in j order */
        if (lid == 0)
            *base = 0;
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
            const int b = *base, before = b + scan[cur][lid] - f;
            if (f && before < m - got)
                pick[got + before] = j;
            barrier(CLK_LOCAL_MEM_FENCE);
            if (lid == 0)
                *base = b + scan[cur][NSA_WG - 1];
            barrier(CLK_LOCAL_MEM_FENCE);
            if (*base >= m - got)
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

__kernel void nsa_topn(__global const float *scores, __global const int *row_seq,
                       __global const int *cu, int G, int lsel, int n, int n_init, int n_local,
                       int row0, int rows, int max_vis, __global int *sel)
{
    __local uint lmax[NSA_WG], ck[NSA_TOPN_CAP];
    __local int cj[NSA_TOPN_CAP], pick[NSA_TOPN_CAP], scan[2][NSA_WG];
    __local uint thr;
    __local int ns, ne, base;
    const int gid = get_group_id(0);
    if (gid >= rows * G)
        return; /* uniform: the whole work-group */
    const int row = row0 + gid / G, g = gid % G;
    const int t = row - cu[row_seq[row]];
    topn_group(scores + (size_t)gid * max_vis, t / lsel + 1, n, n_init, n_local,
               sel + ((size_t)row * G + g) * n, lmax, ck, cj, pick, scan, &thr, &ns, &ne,
               &base);
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

/* One lane's register tile of logits, s[i][j] = q(head hl + i nhl) .
 * k(key k0 + j NSA_SK), from the queries at qb and the key tile kv (dk4
 * float4 a row, strides qst and kst); 0 where the lane's keys start at or
 * past lim. Uses the caller's kg, k0, hl, nhl, qst, kst, kv and dk4: the
 * one body of nsa_group_attn and nsa_slc_attn, a macro so that both
 * compile exactly as written out. */
#define GA_LOGIT_TILE(s, lim, qb)                                                              \
    float s[NSA_RH][NSA_RK];                                                                   \
    for (int i = 0; i < NSA_RH; i++)                                                           \
        for (int j = 0; j < NSA_RK; j++)                                                       \
            s[i][j] = 0.0f;                                                                    \
    if (kg * NSA_SK * NSA_RK < lim) {                                                          \
        __local const float4 *qr = qb + hl * qst, *kr = kv + k0 * kst;                         \
        for (int e4 = 0; e4 < dk4; e4++) {                                                     \
            float4 qv[NSA_RH], kk[NSA_RK];                                                     \
            for (int i = 0; i < NSA_RH; i++)                                                   \
                qv[i] = qr[i * nhl * qst + e4];                                                \
            for (int j = 0; j < NSA_RK; j++)                                                   \
                kk[j] = kr[j * NSA_SK * kst + e4];                                             \
            for (int i = 0; i < NSA_RH; i++)                                                   \
                for (int j = 0; j < NSA_RK; j++) {                                             \
                    float a = s[i][j];                                                         \
                    a = mad(qv[i].x, kk[j].x, a);                                              \
                    a = mad(qv[i].y, kk[j].y, a);                                              \
                    a = mad(qv[i].z, kk[j].z, a);                                              \
                    a = mad(qv[i].w, kk[j].w, a);                                              \
                    s[i][j] = a;                                                               \
                }                                                                              \
        }                                                                                      \
    }

/* Group-centric attention: one work-group per (row, group) holds the queries
 * of all heads of the group and streams tiles of `tile` keys (a multiple of
 * NSA_SK * NSA_RK, at most NSA_TILE) through local memory once for all of
 * them, with an online softmax per head.
 * mode 0: the tokens p <= t of the selected blocks sel[row][g][0..n-1]
 * (spec 3); mode 1: positions max(0, t-w+1) .. t (spec 4; w >= t+1 gives
 * dense causal attention); mode 2: the compressed tokens 0 .. n_cmp(t)-1 of
 * the row's sequence (spec 2), rows row0 + group / G. With want_z, mode 2
 * also keeps each head's logits in zs and its (max, sum) in stats, per
 * (row, group) slot of the chunk, for nsa_cmp_scores. When the queries of
 * all H/G heads do not fit local memory, hc < H/G heads share a work-group
 * and the group's heads take ceil((H/G) / hc) work-groups.
 * Local memory (float4 units; dk4 = ceil(dk/4), dv4 = ceil(dv/4)):
 *   qs  nhp x (dk4 + 1)        queries, zero padded (odd float4 stride)
 *   kv  tile x max(dk4 + 1, dv4) the key tile, then the value tile
 *   ps  nhp x (tile/4 + 1)     logits, then probabilities
 *   red 2 nhp NSA_NP + 2 nhp floats: partial maxima, running partial sums,
 *       the running max before and after the tile */
__kernel void nsa_group_attn(__global const float *q, __global const kv_t *K,
                             __global const kv_t *V, __global const int *row_seq,
                             __global const int *cu, __global const int *cmp_off,
                             __global const int *sel, int n, int lsel, int mode, int w, int l,
                             int d, int row0, int H, int G, int hc, int dk, int dv, float scale,
                             __global float *out, int want_z, int max_nc, __global float *zs,
                             __global float *stats, int tile, __local float4 *qs,
                             __local float4 *kv, __local float4 *ps4, __local float *red)
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
        if (hh < nh && e4 < dk4)
            v = nsa_ld4(q + (hbase + hh) * dk + e4 * 4, dk - e4 * 4);
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
                GA_LOGIT_TILE(s, cnt, qs);
                for (int i = 0; i < NSA_RH; i++) {
                    const int hh = hl + i * nhl;
                    if (hh >= nh)
                        continue;
                    for (int j = 0; j < NSA_RK; j++) {
                        const int k = k0 + j * NSA_SK;
                        float z = -INFINITY;
                        if (k < cnt) {
                            z = s[i][j] * scale;
                            if (want_z)
                                zs[((size_t)slot * hpg + h0 + hh) * max_nc + p0 + k] = z;
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
    barrier(CLK_LOCAL_MEM_FENCE);
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

/* Tokens a work-group of the selected branch serves (nsa_slc_attn,
 * nsa_slc_attn_mma; per-device table, lib/opencl/cl_device.c). */
#ifndef NSA_TQ
#define NSA_TQ 1
#endif

/* The next block of the union of the selections of a work-group's tq
 * tokens (spec 3): each token u has a cursor cur[u] into its row sel_u
 * (-1 pads skipped); a block is named by its first key row in K/V,
 * start_u = kb_u + blk lsel (kb_u: the sequence's first row), so tokens of
 * different sequences never share one. Returns the smallest start at the
 * cursors (-1: none left); *act gets the tokens whose cursor names it
 * (their cursors step past it) and hi[u] the end of each one's rows,
 * clipped to its own position. Every lane computes the same. */
static int slc_union_next(__global const int *sel, const int *row, const int *kb, int tq,
                          int n, int G, int g, int lsel, int *cur, int *act, int *hi)
{
    int best = -1;
    for (int u = 0; u < tq; u++) {
        __global const int *su = sel + ((size_t)row[u] * G + g) * n;
        while (cur[u] < n && su[cur[u]] < 0)
            cur[u]++;
        if (cur[u] < n) {
            const int st = kb[u] + su[cur[u]] * lsel;
            if (best < 0 || st < best)
                best = st;
        }
    }
    *act = 0;
    for (int u = 0; u < tq && best >= 0; u++) {
        __global const int *su = sel + ((size_t)row[u] * G + g) * n;
        if (cur[u] < n && kb[u] + su[cur[u]] * lsel == best) {
            *act |= 1 << u;
            cur[u]++;
            hi[u] = min(best + lsel, row[u] + 1);
        }
    }
    return best;
}

/* The selected branch (spec 3) for NSA_TQ consecutive rows (tokens) of one
 * KV group a work-group, rows row0 + tile * NSA_TQ + u, u < tq (<= NSA_TQ;
 * the chunk's last tile may hold fewer): the blocks of the union of their
 * selections are visited in ascending order (slc_union_next), each key
 * tile and value tile loaded into local memory once and applied to every
 * token that selected the block, a token's logits masked past its own
 * position. Each token keeps its own online softmax per head and sees its
 * own blocks in the order of its selection, as in nsa_group_attn's mode 0
 * (whose phases, tiling and -D defines this repeats per token). Tokens
 * may belong to different sequences (keys are addressed by global row).
 * Local memory: qs tq x nhp x qst float4, kv as nsa_group_attn's, ps
 * tq x nhp x tp4 float4, red tq times nsa_group_attn's. */
__kernel void nsa_slc_attn(__global const float *q, __global const kv_t *K,
                           __global const kv_t *V, __global const int *row_seq,
                           __global const int *cu, __global const int *sel, int n, int lsel,
                           int row0, int rows, int tq, int H, int G, int hc, int dk, int dv,
                           float scale, __global float *out, int tile, __local float4 *qs,
                           __local float4 *kv, __local float4 *ps4, __local float *red)
{
    const int lid = get_local_id(0), hpg = H / G, parts = (hpg + hc - 1) / hc;
    const int slot = get_group_id(0) / parts, h0 = get_group_id(0) % parts * hc;
    const int nh = min(hc, hpg - h0); /* heads h0 .. h0+nh-1 of the group */
    const int g = slot % G, r0 = row0 + slot / G * tq;
    const int nt = min(tq, row0 + rows - r0); /* tokens of this work-group */
    const int dk4 = (dk + 3) / 4, dv4 = (dv + 3) / 4, qst = dk4 + 1;
    const int kst = qst > dv4 ? qst : dv4, tp4 = tile / 4 + 1;
    const int nhl = (nh + NSA_RH - 1) / NSA_RH, nho = (nh + NSA_RHO - 1) / NSA_RHO;
    const int nhp = max(nhl * NSA_RH, nho * NSA_RHO);
    __local float *ps = (__local float *)ps4;
    __local float *redm = red, *lsp = red + nt * nhp * NSA_NP,
                  *mo = red + 2 * nt * nhp * NSA_NP, *mn = mo + nt * nhp;
    int row[NSA_TQ], kb[NSA_TQ], cur[NSA_TQ], hi[NSA_TQ];
    for (int u = 0; u < NSA_TQ; u++) {
        row[u] = r0 + min(u, nt - 1);
        kb[u] = cu[row_seq[row[u]]];
        cur[u] = 0;
        hi[u] = 0;
    }
    for (int i = lid; i < nt * nhp * qst; i += NSA_WG) {
        const int u = i / (nhp * qst), hh = i / qst % nhp, e4 = i % qst;
        float4 v = (float4)(0.0f);
        if (hh < nh && e4 < dk4)
            v = nsa_ld4(q + (((size_t)row[u] * H + (size_t)g * hpg + h0 + hh) * dk + e4 * 4),
                        dk - e4 * 4);
        qs[i] = v;
    }
    for (int i = lid; i < nt * nhp * tp4; i += NSA_WG)
        ps4[i] = (float4)(0.0f);
    for (int i = lid; i < nt * nhp * NSA_NP; i += NSA_WG)
        lsp[i] = 0.0f;
    for (int i = lid; i < nt * nhp; i += NSA_WG) {
        mo[i] = -INFINITY;
        mn[i] = -INFINITY;
    }
    const int npv = NSA_PE * nho * ((dv4 + NSA_PE * NSA_RE - 1) / (NSA_PE * NSA_RE));
    float4 acc[NSA_TQ][NSA_PVI][NSA_RHO][NSA_RE];
    for (int u = 0; u < NSA_TQ; u++)
        for (int it = 0; it < NSA_PVI; it++)
            for (int i = 0; i < NSA_RHO; i++)
                for (int x = 0; x < NSA_RE; x++)
                    acc[u][it][i][x] = (float4)(0.0f);
    barrier(CLK_LOCAL_MEM_FENCE);
    const int nsi = nhl * NSA_SK * (tile / (NSA_SK * NSA_RK)); /* logit items a token */
    for (;;) {
        int act;
        const int lo = slc_union_next(sel, row, kb, nt, n, G, g, lsel, cur, &act, hi);
        if (lo < 0)
            break; /* uniform: every lane walks the same union */
        int hmax = lo;
        for (int u = 0; u < nt; u++)
            if (act >> u & 1)
                hmax = max(hmax, hi[u]);
        for (int p0 = lo; p0 < hmax; p0 += tile) {
            const int cnt = min(tile, hmax - p0);
            /* the key tile, once for every token (rows past cnt unused) */
            for (int i = lid; i < cnt * dk4; i += NSA_WG) {
                const int k = i / dk4, e4 = i % dk4;
                const size_t at = ((size_t)(p0 + k) * G + g) * dk + e4 * 4;
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
            /* logits of each token that selected the block, masked past
             * its own rows */
            for (int u = 0; u < nt; u++) {
                if (!(act >> u & 1))
                    continue; /* uniform */
                const int cn = clamp(hi[u] - p0, 0, cnt);
                __local const float4 *qu = qs + u * nhp * qst;
                __local float *pu = ps + u * nhp * tp4 * 4;
                for (int it = lid; it < nsi; it += NSA_WG) {
                    const int kl = it % NSA_SK, r = it / NSA_SK, hl = r % nhl, kg = r / nhl;
                    const int k0 = kg * NSA_SK * NSA_RK + kl;
                    GA_LOGIT_TILE(s, cn, qu);
                    for (int i = 0; i < NSA_RH; i++) {
                        const int hh = hl + i * nhl;
                        if (hh >= nh)
                            continue;
                        for (int j = 0; j < NSA_RK; j++) {
                            const int k = k0 + j * NSA_SK;
                            pu[hh * tp4 * 4 + k] = k < cn ? s[i][j] * scale : -INFINITY;
                        }
                    }
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* softmax per (token, head) row, NSA_NP lanes a row: partial
             * maxima (items stepped from 0, as in nsa_group_attn) */
            for (int it0 = 0; it0 < nt * nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, u = it / (nh * NSA_NP), hh = it / NSA_NP % nh,
                          pt = it % NSA_NP;
                if (it >= nt * nh * NSA_NP)
                    break;
                if (!(act >> u & 1))
                    continue;
                const int rr = u * nhp + hh;
                __local const float *pr = ps + rr * tp4 * 4;
                float mx = -INFINITY;
                for (int k = pt; k < cnt; k += NSA_NP)
                    mx = fmax(mx, pr[k]);
                redm[rr * NSA_NP + pt] = mx;
                if (pt == 0)
                    mo[rr] = mn[rr]; /* the max before this tile */
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int it0 = 0; it0 < nt * nh * NSA_NP; it0 += NSA_WG) {
                const int it = it0 + lid, u = it / (nh * NSA_NP), hh = it / NSA_NP % nh,
                          pt = it % NSA_NP;
                if (it >= nt * nh * NSA_NP)
                    break;
                if (!(act >> u & 1))
                    continue;
                const int rr = u * nhp + hh;
                __local float *pr = ps + rr * tp4 * 4;
                const float m0 = mo[rr];
                float mt = m0;
                for (int x = 0; x < NSA_NP; x++)
                    mt = fmax(mt, redm[rr * NSA_NP + x]);
                float sum = 0.0f;
                for (int k = pt; k < tile; k += NSA_NP) {
                    /* masked keys hold -inf: probability 0 */
                    const float p = mt == -INFINITY ? 0.0f : exp(pr[k] - mt);
                    pr[k] = p;
                    sum += p;
                }
                const float alpha = mt == -INFINITY ? 1.0f : exp(m0 - mt);
                lsp[rr * NSA_NP + pt] = lsp[rr * NSA_NP + pt] * alpha + sum;
                if (pt == 0)
                    mn[rr] = mt;
            }
            /* the value tile, once for every token */
            for (int i = lid; i < tile * dv4; i += NSA_WG) {
                const int k = i / dv4, e4 = i % dv4;
                float4 v = (float4)(0.0f);
                if (k < cnt) {
                    const size_t at = ((size_t)(p0 + k) * G + g) * dv + e4 * 4;
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
            /* P V of each token that selected the block */
            const int c4 = (cnt + 3) / 4;
            for (int u = 0; u < NSA_TQ; u++) {
                if (u >= nt || !(act >> u & 1))
                    continue; /* uniform */
                __local const float4 *pu = ps4 + u * nhp * tp4;
                __local const float *mou = mo + u * nhp, *mnu = mn + u * nhp;
                for (int ix = 0; ix < NSA_PVI; ix++) {
                    const int it = lid + ix * NSA_WG;
                    const int el = it % NSA_PE, r = it / NSA_PE, hl = r % nho,
                              e0 = r / nho * NSA_PE * NSA_RE + el;
                    if (it >= npv)
                        continue;
                    int ec[NSA_RE];
                    for (int x = 0; x < NSA_RE; x++)
                        ec[x] = min(e0 + x * NSA_PE, dv4 - 1);
                    float4 a[NSA_RHO][NSA_RE];
                    for (int i = 0; i < NSA_RHO; i++) {
                        const int hh = hl + i * nho;
                        const float m1 = mnu[hh];
                        const float al = m1 == -INFINITY ? 1.0f : exp(mou[hh] - m1);
                        for (int x = 0; x < NSA_RE; x++)
                            a[i][x] = acc[u][ix][i][x] * al;
                    }
                    for (int k4 = 0; k4 < c4; k4++) {
                        float4 p[NSA_RHO];
                        for (int i = 0; i < NSA_RHO; i++)
                            p[i] = pu[(hl + i * nho) * tp4 + k4];
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
                            acc[u][ix][i][x] = a[i][x];
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    }
    /* totals per (token, head): the running partial sums */
    for (int it = lid; it < nt * nh; it += NSA_WG) {
        const int rr = it / nh * nhp + it % nh;
        float sum = 0.0f;
        for (int x = 0; x < NSA_NP; x++)
            sum += lsp[rr * NSA_NP + x];
        mo[rr] = sum;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int u = 0; u < NSA_TQ; u++) {
        if (u >= nt)
            break;
        const size_t hbase = (size_t)row[u] * H + (size_t)g * hpg + h0;
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
                    const float sum = mo[u * nhp + hh];
                    const float4 o = sum > 0.0f ? acc[u][ix][i][x] / sum : (float4)(0.0f);
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
}

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
