/* Decode-step kernels over device-resident caches (spec 7; host code in
 * lib/opencl/cl_decode.c). One new token per sequence b; the caches of
 * (b, g) live at bg = b G + g of each tensor:
 *   K caches transposed in tiles of NSA_DC_TK keys (KAT below): a tile
 *     holds dk4 float4 planes of its keys, so the lanes of a work-group
 *     reading one plane for consecutive keys read consecutive 16-byte words
 *     (coalesced, no local staging), and a selection block's keys are one
 *     contiguous piece (few pages to translate);
 *   V caches row-major: V[(bg cap + row) dv4 + e4] (lanes along dv).
 * dk4 = ceil(dk/4), dv4 = ceil(dv/4); padding columns hold 0. Elements are
 * kv_t (NSA_KV); all arithmetic is fp32.
 *
 * Flash-decoding: nsa_dc_partial splits each (b, g)'s keys into chunks
 * across work-groups and leaves per chunk and head the softmax statistics
 * (max, sum) and the unnormalised P V; nsa_dc_prob scores the selection
 * blocks through the compressed probabilities summed over the group's
 * heads, nsa_dc_select picks the top n (prefill's rule and code,
 * cl/attn.cl's topn_group); nsa_dc_final combines the chunks
 * of each branch and applies the gates. No kernel returns before a barrier
 * that other work-items still reach (PoCL 3.1 corrupted memory). */

#ifndef NSA_DC_KPT
#define NSA_DC_KPT 2 /* keys a lane scores at once (query reuse) */
#endif
#ifndef NSA_DC_HC
#define NSA_DC_HC 16 /* most heads of a group a work-group holds */
#endif
#ifndef NSA_DC_KU
#define NSA_DC_KU 4 /* float4 of a key a lane loads at once */
#endif
#ifndef NSA_DC_VR
#define NSA_DC_VR 8 /* value rows a lane loads at once */
#endif
#ifndef NSA_DC_PIPE
#define NSA_DC_PIPE 1 /* load the next K float4 / V rows before the FMAs */
#endif
/* Keys per K tile, a power of two; capacities are multiples of it (the
 * host's DC_TK). */
#define NSA_DC_TK 64

/* float4 index of column e4 of row `row` of (b, g) = bg in a K cache of cap
 * rows per (b, g). */
#define KAT(bg, cap, row, e4, dk4)                                                             \
    ((((size_t)(bg) * (cap) + ((row) & ~(NSA_DC_TK - 1))) * (dk4)) +                         \
     (size_t)(e4) * NSA_DC_TK + ((row) & (NSA_DC_TK - 1)))

/* The float4 i of K or V (aligned: 16 bytes at fp32, 8 at fp16/bf16, as
 * every float4 index here is). Half storage loads the 8 bytes as one ushort4:
 * vload_half4 and vload4 may assume only 2-byte alignment, and NVIDIA's
 * compiler split them into four 2-byte loads. */
#if NSA_KV == 0
#define LD4(p, i) (((__global const float4 *)(p))[i])
#elif NSA_KV == 1
static float4 ld4_f16(__global const half *p, size_t i)
{
    ushort4 u = ((__global const ushort4 *)p)[i];
    return vload_half4(0, (const __private half *)&u);
}
#define LD4(p, i) ld4_f16((p), (i))
#else
#define LD4(p, i) as_float4(convert_uint4(((__global const ushort4 *)(p))[i]) << 16)
#endif

/* Compressed tokens visible at t (spec 2). */
static int dc_ncmp(int t, int l, int d) { return t + 1 >= l ? (t + 1 - l) / d + 1 : 0; }
/* The index of the compressed token a step at t emits, or -1 (none). */
static int dc_emitted(int t, int l, int d)
{
    return t + 1 >= l && (t + 1 - l) % d == 0 ? (t + 1 - l) / d : -1;
}

/* The logits s[j][hh] of keys rk[0 .. JN-1] (-1: none) for the heads of
 * qs: NSA_DC_KU float4 of each key in flight; with NSA_DC_PIPE the next
 * NSA_DC_KU are loaded before the FMAs of the current ones (latency
 * hidden behind 16 heads x 4 FMAs a float4). Out-of-range columns load
 * as 0 and are skipped (q may hold NaN). */
/* a.b + s as four FMAs (dot() then an add costs a fifth instruction) */
#define DC_DOT(a, b, s)                                                                        \
    fma((a).w, (b).w, fma((a).z, (b).z, fma((a).y, (b).y, fma((a).x, (b).x, (s)))))
#define DC_KLOAD(kk, JN, e0)                                                                   \
    _Pragma("unroll") for (int u = 0; u < NSA_DC_KU; u++) {                                    \
        _Pragma("unroll") for (int j = 0; j < (JN); j++) {                                     \
            kk[u][j] = rk[j] >= 0 && (e0) + u < dk4                                            \
                           ? LD4(Kx, KAT(bg, capx, rk[j], (e0) + u, dk4))                      \
                           : (float4)(0.0f);                                                   \
        }                                                                                      \
    }
#define DC_KFMA(kk, JN, e0)                                                                    \
    _Pragma("unroll") for (int u = 0; u < NSA_DC_KU; u++) {                                    \
        if ((e0) + u < dk4) {                                                                  \
            _Pragma("unroll") for (int hh = 0; hh < NSA_DC_HC; hh++) {                         \
                if (hh < nh) {                                                                 \
                    const float4 qv = qs[hh * dk4 + (e0) + u];                                 \
                    _Pragma("unroll") for (int j = 0; j < (JN); j++) s[j][hh] =                \
                        DC_DOT(qv, kk[u][j], s[j][hh]);                                        \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }
#if NSA_DC_PIPE
#define DC_LOGITS(JN)                                                                          \
    do {                                                                                       \
        float4 kk[NSA_DC_KU][JN], kn[NSA_DC_KU][JN];                                           \
        DC_KLOAD(kk, JN, 0)                                                                    \
        for (int e0 = 0; e0 < dk4; e0 += NSA_DC_KU) {                                          \
            DC_KLOAD(kn, JN, e0 + NSA_DC_KU)                                                   \
            DC_KFMA(kk, JN, e0)                                                                \
            _Pragma("unroll") for (int u = 0; u < NSA_DC_KU; u++) {                            \
                _Pragma("unroll") for (int j = 0; j < (JN); j++) { kk[u][j] = kn[u][j]; }      \
            }                                                                                  \
        }                                                                                      \
    } while (0)
#else
#define DC_LOGITS(JN)                                                                          \
    do {                                                                                       \
        float4 kk[NSA_DC_KU][JN];                                                              \
        for (int e0 = 0; e0 < dk4; e0 += NSA_DC_KU) {                                          \
            DC_KLOAD(kk, JN, e0)                                                               \
            DC_KFMA(kk, JN, e0)                                                                \
        }                                                                                      \
    } while (0)
#endif

/* The arguments of nsa_dc_partial and cl/mma.cl's nsa_dc_partial_mma: one
 * list, bound once by the host (cl_decode.c's dc_partial). */
#define DC_PARTIAL_PARAMS                                                                      \
    int mode, __global const float *q, __global const int *tpos, __global const kv_t *K,       \
        __global const kv_t *V, int cap, __global const kv_t *Kw, __global const kv_t *Vw,     \
        int w, int wcap, __global const int *sel, int n, int lsel, int l, int d, int H, int G, \
        int hc, int dk, int dk4, int dv4, float scale, int CH, int nch_a, int nch,             \
        __global float *zout, int max_nc, __global float2 *pstat, __global float4 *pacc,       \
        __local float4 *qs, __local float4 *zl4, __local int *rows, __local float *red,        \
        __local int *spans

/* A partial work-group's place and the keys of its chunk (see
 * nsa_dc_partial). */
typedef struct dc_keys {
    __global const kv_t *K, *V; /* the chunk's caches */
    int cap;                    /* their rows per (b, g) */
    int cnt, base;              /* keys base .. base + cnt - 1 of its branch */
    int branch;                 /* 0 compressed or dense, 1 selected, 2 window */
    int bg, h0, nh, hcp;        /* (b, g) and the heads h0 .. h0 + nh - 1 */
    size_t slot;                /* its first head's partials in pstat/pacc */
} dc_keys;

/* The chunk's keys and where they live, with the queries of the
 * work-group's heads staged in qs (rows past nh 0) and the keys' rows in
 * rows. All lanes call it; it ends with a barrier. */
static dc_keys dc_chunk_keys(int mode, __global const float *q, __global const int *tpos,
                             __global const kv_t *K, __global const kv_t *V, int cap,
                             __global const kv_t *Kw, __global const kv_t *Vw, int w, int wcap,
                             __global const int *sel, int n, int lsel, int l, int d, int H,
                             int G, int hc, int dk, int dk4, int CH, int nch_a, int nch,
                             __local float4 *qs, __local int *rows, __local int *spans)
{
    const int lid = get_local_id(0), hpg = H / G, parts = (hpg + hc - 1) / hc;
    const int c = get_group_id(0) % nch, r = get_group_id(0) / nch;
    const int part = r % parts, bg = r / parts, b = bg / G, g = bg % G, h0 = part * hc;
    const int t = tpos[b];
    dc_keys ck = {K, V, cap, 0, c * CH, 0, bg, h0, min(hc, hpg - h0), (hc + 3) & ~3,
                  ((size_t)bg * nch + c) * hpg + h0};
    if (c >= nch_a) {
        ck.branch = 2; /* window ring */
        ck.base = (c - nch_a) * CH;
        ck.cnt = clamp(min(w, t + 1) - ck.base, 0, CH);
        ck.K = Kw;
        ck.V = Vw;
        ck.cap = wcap;
    } else if (mode == 1) {
        ck.branch = 1; /* selected blocks: spans in the order of sel */
        if (lid == 0) {
            int acc = 0;
            for (int k = 0; k < n; k++) {
                spans[k] = acc;
                const int blk = sel[(size_t)bg * n + k];
                if (blk >= 0)
                    acc += max(0, min(blk * lsel + lsel, t + 1) - blk * lsel);
            }
            spans[n] = acc;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        ck.cnt = clamp(spans[n] - ck.base, 0, CH);
    } else {
        ck.cnt = clamp((mode == 0 ? dc_ncmp(t, l, d) : t + 1) - ck.base, 0, CH);
    }
    __global const float *qh = q + ((size_t)b * H + g * hpg + h0) * dk;
    for (int i = lid; i < ck.hcp * dk4; i += NSA_WG) {
        const int hh = i / dk4, e4 = i % dk4;
        qs[i] = hh < ck.nh ? nsa_ld4(qh + (size_t)hh * dk + e4 * 4, dk - e4 * 4)
                           : (float4)(0.0f);
    }
    for (int k = lid; k < ck.cnt; k += NSA_WG) {
        const int i = ck.base + k;
        int row = i;
        if (ck.branch == 1) {
            int s = 0;
            /* the entry whose span holds i (spans are ascending; -1 and
             * empty entries are skipped since their successor starts at i
             * or before) */
            while (s + 1 < n && spans[s + 1] <= i)
                s++;
            row = sel[(size_t)bg * n + s] * lsel + (i - spans[s]);
        } else if (ck.branch == 2) {
            row = (t - min(w, t + 1) + 1 + i) % w;
        }
        rows[k] = row;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    return ck;
}
#define DC_CHUNK_KEYS()                                                                        \
    dc_chunk_keys(mode, q, tpos, K, V, cap, Kw, Vw, w, wcap, sel, n, lsel, l, d, H, G, hc, dk, \
                  dk4, CH, nch_a, nch, qs, rows, spans)

/* Softmax statistics per head over a chunk's logits zl (key-major, hcp a
 * key; written by every lane before the call): npl lanes a head find the
 * max, turn zl into exp(z - max) and sum them; (max, sum) of heads < nh go
 * to pst[hh]. All lanes call it; zl is ready for P V on return. red holds
 * 2 NSA_WG floats. */
static void dc_chunk_softmax(__local float *zl, __local float *red, int cnt, int hcp, int nh,
                             __global float2 *pst)
{
    const int lid = get_local_id(0), npl = NSA_WG / hcp, hh = lid % hcp, sl = lid / hcp;
    const int act = sl < npl;
    barrier(CLK_LOCAL_MEM_FENCE);
    float m = -INFINITY;
    if (act)
        for (int k = sl; k < cnt; k += npl)
            m = fmax(m, zl[k * hcp + hh]);
    red[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    m = -INFINITY;
    for (int x = 0; x < npl; x++)
        m = fmax(m, red[x * hcp + hh]);
    float sum = 0.0f;
    if (act)
        for (int k = sl; k < cnt; k += npl) {
            const float p = m == -INFINITY ? 0.0f : exp(zl[k * hcp + hh] - m);
            zl[k * hcp + hh] = p;
            sum += p;
        }
    red[NSA_WG + lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (sl == 0 && hh < nh) {
        float tot = 0.0f;
        for (int x = 0; x < npl; x++)
            tot += red[NSA_WG + x * hcp + hh];
        pst[hh] = (float2)(m, tot);
    }
}

/* Partial attention of one chunk of keys for the heads h0 .. h0+nh-1 of
 * group g. Chunks c < nch_a: mode 0 the compressed tokens 0 .. n_cmp(t)-1
 * of K/V (the logits also go to zout for the scores), mode 1 the tokens
 * <= t of the selected blocks (in the order of sel), mode 2 (the dense
 * baseline) the raw positions 0 .. t; chunks c >= nch_a (modes 0 and 1)
 * the window positions max(0, t-w+1) .. t of the ring Kw/Vw.
 * Work-group id: (bg parts + part) nch + chunk. Local memory: qs hcp dk4
 * float4, zl CH hcp floats (logits, then probabilities, key-major), rows
 * CH ints, red 2 WG floats, spans n+1 ints. */
__kernel void nsa_dc_partial(DC_PARTIAL_PARAMS)
{
    __local float *zl = (__local float *)zl4;
    const int hpg = H / G, lid = get_local_id(0);
    const dc_keys ck = DC_CHUNK_KEYS();
    const int cnt = ck.cnt, base = ck.base, branch = ck.branch, capx = ck.cap;
    const int bg = ck.bg, h0 = ck.h0, nh = ck.nh, hcp = ck.hcp;
    const size_t slot = ck.slot;
    __global const kv_t *Kx = ck.K, *Vx = ck.V;
    /* logits: a lane scores NSA_DC_KPT keys for all heads, the key's
     * float4 read straight from its plane (coalesced across lanes) */
    /* every loop over a register array below has constant bounds and
     * conditions inside (no break), so that it unrolls: NVIDIA's compiler
     * otherwise puts the arrays in stack memory */
    for (int k0 = 0; k0 < cnt; k0 += NSA_WG * NSA_DC_KPT) {
        float s[NSA_DC_KPT][NSA_DC_HC];
        int rk[NSA_DC_KPT];
#pragma unroll
        for (int j = 0; j < NSA_DC_KPT; j++) {
            const int k = k0 + lid + j * NSA_WG;
            rk[j] = k < cnt ? rows[k] : -1;
#pragma unroll
            for (int hh = 0; hh < NSA_DC_HC; hh++)
                s[j][hh] = 0.0f;
        }
        /* a pass with at most WG keys left scores one key a lane (no FMAs
         * on empty slots); lanes past the keys skip */
        if (k0 + NSA_WG < cnt)
            DC_LOGITS(NSA_DC_KPT);
        else if (rk[0] >= 0)
            DC_LOGITS(1);
#pragma unroll
        for (int j = 0; j < NSA_DC_KPT; j++) {
            const int k = k0 + lid + j * NSA_WG;
            if (k < cnt) {
#pragma unroll
                for (int hh = 0; hh < NSA_DC_HC; hh++) {
                    if (hh < hcp) {
                        const float z = hh < nh ? s[j][hh] * scale : -INFINITY;
                        zl[k * hcp + hh] = z;
                        if (mode == 0 && branch == 0 && hh < nh)
                            zout[((size_t)bg * hpg + h0 + hh) * max_nc + base + k] = z;
                    }
                }
            }
        }
    }
    dc_chunk_softmax(zl, red, cnt, hcp, nh, pstat + slot);
    /* P V: a lane owns 4 heads x one float4 column; consecutive lanes
     * read consecutive columns of a value row */
    const size_t vrow = (size_t)bg * capx;
    __local const float4 *p4 = zl4;
    const int hq4 = hcp / 4;
    for (int it = lid; it < hq4 * dv4; it += NSA_WG) {
        const int hq = it / dv4, e4 = it % dv4;
        float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
        /* NSA_DC_VR value rows in flight; with NSA_DC_PIPE the next ones
         * load during the FMAs of these */
        float4 v[NSA_DC_VR];
#if NSA_DC_PIPE
#pragma unroll
        for (int u = 0; u < NSA_DC_VR; u++)
            v[u] = u < cnt ? LD4(Vx, (vrow + rows[u]) * dv4 + e4) : (float4)(0.0f);
#endif
        for (int k0 = 0; k0 < cnt; k0 += NSA_DC_VR) {
#if NSA_DC_PIPE
            float4 vn[NSA_DC_VR];
#pragma unroll
            for (int u = 0; u < NSA_DC_VR; u++) {
                const int k = k0 + NSA_DC_VR + u;
                vn[u] = k < cnt ? LD4(Vx, (vrow + rows[k]) * dv4 + e4) : (float4)(0.0f);
            }
#else
#pragma unroll
            for (int u = 0; u < NSA_DC_VR; u++)
                v[u] = k0 + u < cnt ? LD4(Vx, (vrow + rows[k0 + u]) * dv4 + e4) : (float4)(0.0f);
#endif
#pragma unroll
            for (int u = 0; u < NSA_DC_VR; u++) {
                if (k0 + u < cnt) {
                    const float4 p = p4[(k0 + u) * hq4 + hq];
                    a0 = mad((float4)(p.x), v[u], a0);
                    a1 = mad((float4)(p.y), v[u], a1);
                    a2 = mad((float4)(p.z), v[u], a2);
                    a3 = mad((float4)(p.w), v[u], a3);
                }
            }
#if NSA_DC_PIPE
#pragma unroll
            for (int u = 0; u < NSA_DC_VR; u++)
                v[u] = vn[u];
#endif
        }
        const int hb = hq * 4;
        __global float4 *dst = pacc + (slot + hb) * dv4 + e4;
        if (hb < nh)
            dst[0] = a0;
        if (hb + 1 < nh)
            dst[dv4] = a1;
        if (hb + 2 < nh)
            dst[2 * dv4] = a2;
        if (hb + 3 < nh)
            dst[3 * dv4] = a3;
    }
}

/* Softmax state of chunks c0 .. c1-1 of one head (max, sum; o / sum in
 * *o, 0 when no key was visible), one pass with a running max over the
 * chunks in order. Every chunk's partials are written (0 and -inf when it
 * had no key); they are loaded DC_CB chunks at a time before their
 * combine, so a lane waits for memory once per DC_CB chunks, not per
 * chunk (a loop the compiler does not unroll issues each load only when
 * its iteration starts). */
#ifndef DC_CB
#define DC_CB 4
#endif
static float4 dc_combine(__global const float2 *pstat, __global const float4 *pacc,
                         size_t at, size_t stride, int c0, int c1, int dv4, int e4)
{
    float m = -INFINITY, sum = 0.0f;
    float4 acc = (float4)(0.0f);
    for (int cb = c0; cb < c1; cb += DC_CB) {
        float2 st[DC_CB];
        float4 pa[DC_CB];
#pragma unroll
        for (int u = 0; u < DC_CB; u++) {
            const size_t i = at + (size_t)(cb + u) * stride;
            st[u] = cb + u < c1 ? pstat[i] : (float2)(0.0f);
            pa[u] = cb + u < c1 ? pacc[i * dv4 + e4] : (float4)(0.0f);
        }
#pragma unroll
        for (int u = 0; u < DC_CB; u++) {
            const float mn = fmax(m, st[u].x);
            if (cb + u < c1 && mn != -INFINITY) {
                const float a = exp(m - mn), b = exp(st[u].x - mn);
                sum = sum * a + st[u].y * b;
                acc = mad((float4)(b), pa[u], acc * a);
                m = mn;
            }
        }
    }
    return m == -INFINITY ? (float4)(0.0f) : acc / sum;
}

static void dc_store(__global float *dst, float4 v, int e4, int dv)
{
    dst[0] = v.x;
    if (e4 * 4 + 1 < dv)
        dst[1] = v.y;
    if (e4 * 4 + 2 < dv)
        dst[2] = v.z;
    if (e4 * 4 + 3 < dv)
        dst[3] = v.w;
}

/* Compressed tokens a lane of nsa_dc_prob takes P of at once (their
 * logits in flight together) and heads a load batch (NSA_DC_PH). */
#ifndef NSA_DC_PNI
#define NSA_DC_PNI 2
#endif
#ifndef NSA_DC_PH
#define NSA_DC_PH 16
#endif

/* Block scores of (b, g) (spec 3, Eq. 9-10): sbuf[j] = sum over the
 * mapping's entries e of row j of val[e] P[col[e]], with P[i] = sum over
 * the group's heads of p_cmp(t, h)[i] (spec 2), for the blocks j <
 * n_sel_visible(t). Work-group id bg njc + jc holds blocks jc jpw ..
 * jc jpw + jpw - 1 (jpw <= NSA_WG), whose entries read the compressed
 * tokens plo[jc] .. plo[jc] + pw - 1 at most (the host's plan from the
 * mapping, cl_decode.c's dc_prob_plan). It combines the softmax
 * statistics of the compressed chunks 0 .. ncmb-1 (of nch per (b, g)) of
 * the group's heads (local mst: max, then 1 / sum; through local pst,
 * pcap chunks at a time), stages its blocks'
 * mapping entries (ecol, eval), computes P of its tokens into local pl
 * (one lane a token, NSA_DC_PNI tokens a lane, the logits of zout read
 * coalesced along the tokens and issued before the statistics' loads),
 * then a lane a block sums its entries from local memory. The sums are
 * the reference's, operation for operation: P heads ascending, then the
 * row's entries in the mapping's order (entries of tokens >= n_cmp(t)
 * skipped). */
__kernel void nsa_dc_prob(__global const int *tpos, __global const float2 *pstat, int nch,
                          int ncmb, int H, int G, int l, int d, int lsel,
                          __global const float *zout, int max_nc, __global const int *rowptr,
                          __global const int *col, __global const int *val,
                          __global const int *plo, int jpw, int pw, int njc, int max_vis,
                          __global float *sbuf, __local float *mst, __local float *pl,
                          __local int *ecol, __local int *eval, __local float2 *pst, int pcap)
{
    const int lid = get_local_id(0), bg = get_group_id(0) / njc, jc = get_group_id(0) % njc;
    const int hpg = H / G, i0 = plo[jc], j0 = jc * jpw, j1 = min(j0 + jpw, max_vis);
    __global const float *z = zout + (size_t)bg * hpg * max_nc;
    /* the first NSA_DC_PH heads' logits of the lane's first tokens; tokens
     * past n_cmp(t) load too (within the buffer) and are not used */
    float zz[NSA_DC_PNI][NSA_DC_PH];
#pragma unroll
    for (int k = 0; k < NSA_DC_PNI; k++) {
        const int kk = lid + k * NSA_WG, i = i0 + kk;
#pragma unroll
        for (int u = 0; u < NSA_DC_PH; u++)
            zz[k][u] = kk < pw && i < max_nc && u < hpg ? z[(size_t)u * max_nc + i] : 0.0f;
    }
    const int j = j0 + lid, mine = lid < jpw && j < j1;
    const int e0 = rowptr[j0], ne = rowptr[j1] - e0;
    const int r0 = mine ? rowptr[j] - e0 : 0, r1 = mine ? rowptr[j + 1] - e0 : 0;
    for (int e = lid; e < ne; e += NSA_WG) {
        ecol[e] = col[e0 + e];
        eval[e] = val[e0 + e];
    }
    const int t = tpos[bg / G], nc = dc_ncmp(t, l, d), vis = t / lsel + 1;
    /* the statistics, pcap chunks at a time: all lanes load them (one
     * wait for memory, coalesced), then a lane a head combines them in
     * chunk order (running max and sum in mst between passes) */
    __global const float2 *pb = pstat + (size_t)bg * nch * hpg;
    for (int c0 = 0; c0 < ncmb; c0 += pcap) {
        const int cn = min(pcap, ncmb - c0);
        if (c0 > 0)
            barrier(CLK_LOCAL_MEM_FENCE); /* the last pass's statistics read */
        for (int x = lid; x < cn * hpg; x += NSA_WG)
            pst[x] = pb[(size_t)c0 * hpg + x];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int hh = lid; hh < hpg; hh += NSA_WG) {
            float m = c0 > 0 ? mst[hh] : -INFINITY, sum = c0 > 0 ? mst[hpg + hh] : 0.0f;
            for (int c = 0; c < cn; c++) {
                const float2 st = pst[c * hpg + hh];
                const float mn = fmax(m, st.x);
                if (mn != -INFINITY) {
                    sum = sum * exp(m - mn) + st.y * exp(st.x - mn);
                    m = mn;
                }
            }
            mst[hh] = m;
            mst[hpg + hh] = sum;
        }
    }
    for (int hh = lid; hh < hpg; hh += NSA_WG) {
        if (ncmb <= 0)
            mst[hh] = -INFINITY;
        const float sum = ncmb > 0 ? mst[hpg + hh] : 0.0f;
        mst[hpg + hh] = sum > 0.0f ? 1.0f / sum : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k0 = 0; k0 < pw; k0 += NSA_WG * NSA_DC_PNI) {
#pragma unroll
        for (int k = 0; k < NSA_DC_PNI; k++) {
            const int kk = k0 + lid + k * NSA_WG, i = i0 + kk;
            float p = 0.0f;
            for (int h0 = 0; h0 < hpg; h0 += NSA_DC_PH) {
                if (k0 > 0 || h0 > 0) {
#pragma unroll
                    for (int u = 0; u < NSA_DC_PH; u++)
                        zz[k][u] = kk < pw && i < max_nc && h0 + u < hpg
                                       ? z[(size_t)(h0 + u) * max_nc + i]
                                       : 0.0f;
                }
#pragma unroll
                for (int u = 0; u < NSA_DC_PH; u++)
                    if (h0 + u < hpg)
                        p += exp(zz[k][u] - mst[h0 + u]) * mst[hpg + h0 + u];
            }
            if (kk < pw)
                pl[kk] = i < nc ? p : 0.0f;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (!mine || j >= vis)
        return; /* no barrier follows */
    float a = 0.0f;
    for (int e = r0; e < r1; e++) {
        const int i = ecol[e];
        if (i >= nc)
            continue;
        a += (float)eval[e] * pl[i - i0];
    }
    sbuf[(size_t)bg * max_vis + j] = a;
}

/* The selection of (b, g), one work-group each, from the block scores of
 * nsa_dc_prob (sbuf): cl/attn.cl's topn_group, the rule of prefill's
 * nsa_topn (spec 3; NaN scores rank lowest, as there). */
__kernel void nsa_dc_select(__global const int *tpos, int G, int lsel,
                            __global const float *sbuf, int max_vis, int n, int n_init,
                            int n_local, __global int *sel)
{
    __local uint lmax[NSA_WG], ck[NSA_TOPN_CAP];
    __local int cj[NSA_TOPN_CAP], pick[NSA_TOPN_CAP], scan[2][NSA_WG];
    __local uint thr;
    __local int ns, ne, base;
    const int bg = get_group_id(0), t = tpos[bg / G];
    topn_group(sbuf + (size_t)bg * max_vis, t / lsel + 1, n, n_init, n_local,
               sel + (size_t)bg * n, lmax, ck, cj, pick, scan, &thr, &ns, &ne, &base);
}

/* One lane per output (b, h, float4 column) = item. NSA (dense == 0): the
 * compressed chunks 0 .. nch_ac-1 of pst_c/pacc_c (nch_c a (b, g)), the
 * selected chunks 0 .. nch_a-1 of pstat/pacc and the window chunks
 * (nch_ac .. nch_c-1 of pst_c if any, else nch_a .. nch-1 of pstat)
 * combined, then out = g_cmp o_cmp + g_slc o_slc + g_win o_win (spec 5);
 * with branches, o_cmp, o_slc, o_win also go to out + {1, 2, 3} B H dv.
 * dense: out = the combine of all chunks of pstat/pacc. */
__kernel void nsa_dc_final(int dense, __global const float2 *pstat,
                           __global const float4 *pacc, int nch_a, int nch,
                           __global const float2 *pst_c, __global const float4 *pacc_c,
                           int nch_ac, int nch_c, int B, int H, int G, int dv, int dv4,
                           __global const float *gates, int branches, __global float *out)
{
    const size_t item = get_global_id(0);
    if (item >= (size_t)B * H * dv4)
        return;
    const int e4 = item % dv4, bh = item / dv4, h = bh % H, b = bh / H, hpg = H / G;
    const int g = h / hpg, hh = h % hpg;
    const size_t bg = (size_t)b * G + g, at = bg * nch * hpg + hh;
    const size_t atc = bg * nch_c * hpg + hh, o = (size_t)bh * dv + e4 * 4;
    if (dense) {
        dc_store(out + o, dc_combine(pstat, pacc, at, hpg, 0, nch, dv4, e4), e4, dv);
        return;
    }
    const float4 oc = dc_combine(pst_c, pacc_c, atc, hpg, 0, nch_ac, dv4, e4);
    const float4 os = dc_combine(pstat, pacc, at, hpg, 0, nch_a, dv4, e4);
    /* the window's chunks follow the compressed or the selected ones */
    const float4 ow = nch_ac < nch_c ? dc_combine(pst_c, pacc_c, atc, hpg, nch_ac, nch_c, dv4, e4)
                                     : dc_combine(pstat, pacc, at, hpg, nch_a, nch, dv4, e4);
    __global const float *gt = gates + (size_t)bh * 3;
    dc_store(out + o, gt[0] * oc + gt[1] * os + gt[2] * ow, e4, dv);
    if (branches) {
        const size_t plane = (size_t)B * H * dv;
        dc_store(out + plane + o, oc, e4, dv);
        dc_store(out + 2 * plane + o, os, e4, dv);
        dc_store(out + 3 * plane + o, ow, e4, dv);
    }
}

#if NSA_KV == 1
#define ST4(v, p, i) vstore_half4_rte((v), (i), (p))
#elif NSA_KV == 2
/* fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN */
static ushort dc_bf16(float f)
{
    const uint u = as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (ushort)((u >> 16) | 0x40u);
    return (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#define ST4(v, p, i)                                                                           \
    vstore4((ushort4)(dc_bf16((v).x), dc_bf16((v).y), dc_bf16((v).z), dc_bf16((v).w)), (i), (p))
#else
#define ST4(v, p, i) (((__global float4 *)(p))[i] = (v))
#endif

/* Scatter of uploaded rows into the caches: desc[r] = (kind, b, row,
 * offset of the row [G][dim] in stage); kinds 0/1 raw K/V, 2/3 window
 * ring K/V, 4/5 compressed K/V. One work-item per (r, g, float4 column). */
__kernel void nsa_dc_put(__global const float *stage, __global const int4 *desc, int ndesc,
                         int G, int dk, int dv, int dk4, int dv4, int cap, int ccap, int wcap,
                         __global kv_t *Kr, __global kv_t *Vr, __global kv_t *Kw,
                         __global kv_t *Vw, __global kv_t *Kc, __global kv_t *Vc)
{
    const int d4 = max(dk4, dv4);
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)ndesc * G * d4)
        return;
    const int e4 = gid % d4, g = (gid / d4) % G, r = gid / ((size_t)d4 * G);
    const int4 ds = desc[r];
    const int kind = ds.x, isv = kind & 1, dim = isv ? dv : dk, dim4 = isv ? dv4 : dk4;
    if (e4 >= dim4)
        return;
    const float4 v = nsa_ld4(stage + ds.w + (size_t)g * dim + e4 * 4, dim - e4 * 4);
    const int cp = kind < 2 ? cap : kind < 4 ? wcap : ccap;
    __global kv_t *dst = kind == 0 ? Kr : kind == 1 ? Vr : kind == 2 ? Kw : kind == 3 ? Vw
                       : kind == 4 ? Kc : Vc;
    const size_t bg = (size_t)ds.y * G + g;
    const size_t at = isv ? (bg * cp + ds.z) * dv4 + e4 : KAT(bg, cp, ds.z, e4, dk4);
    ST4(v, dst, at);
}

/* Device-resident step (dcache_step with the mirror holding the rows): a
 * new row straight from device memory, src[B][G][dim] (a projection's or
 * phi's output), at each sequence's position t = tpos[b]: mode 0 raw row t
 * (cap rows a (b, g)), 1 window-ring slot t % w (cap = wcap), 2 the
 * compressed token (t + 1 - l) / d of the sequences whose step emits one
 * (cap = ccap; the others untouched). The layout of nsa_dc_put. One
 * work-item per (b, g, float4 column). */
__kernel void nsa_dc_put_step(__global const float *src, __global const int *tpos, int B, int G,
                              int dim, int dim4, int isv, int mode, int cap, int w, int l, int d,
                              __global kv_t *dst)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)B * G * dim4)
        return;
    const int e4 = gid % dim4, bg = gid / dim4, t = tpos[bg / G];
    const int row = mode == 0 ? t : mode == 1 ? t % w : dc_emitted(t, l, d);
    if (row < 0)
        return; /* mode 2: this sequence emits nothing */
    const float4 v = nsa_ld4(src + (size_t)bg * dim + e4 * 4, dim - e4 * 4);
    const size_t at = isv ? ((size_t)bg * cap + row) * dim4 + e4 : KAT(bg, cap, row, e4, dim4);
    ST4(v, dst, at);
}

/* Rows of a cache back to fp32 out[nrows][G][dim] (the host's layout):
 * with b >= 0 (dcache_fetch) row i is row row0 + i of sequence b, or with
 * wrap > 0 the ring slot (row0 + i) % wrap; with b < 0 (nrows = B) row i
 * is slot tpos[i] % wrap of sequence i (the window rows a device-resident
 * step replaces, saved for its failure). One work-item per (i, g, float4
 * column). */
__kernel void nsa_dc_get(__global const kv_t *src, __global const int *tpos, int b, int row0,
                         int nrows, int wrap, int G, int dim, int dim4, int isv, int cap,
                         __global float *out)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)nrows * G * dim4)
        return;
    const int e4 = gid % dim4, g = (gid / dim4) % G, i = gid / ((size_t)dim4 * G);
    const int sb = b >= 0 ? b : i;
    const int p = b >= 0 ? row0 + i : tpos[i];
    const int row = wrap > 0 ? p % wrap : p;
    const size_t bg = (size_t)sb * G + g;
    const float4 v = LD4(src, isv ? (bg * cap + row) * dim4 + e4 : KAT(bg, cap, row, e4, dim4));
    __global float *o = out + ((size_t)i * G + g) * dim + e4 * 4;
    const int left = dim - e4 * 4;
    o[0] = v.x;
    if (left > 1)
        o[1] = v.y;
    if (left > 2)
        o[2] = v.z;
    if (left > 3)
        o[3] = v.w;
}

/* The compression ring of the device-resident step: ring[B][l][n] (n =
 * G dim floats a row, fp32, the host's kr / vr layout), the row of position
 * t = tpos[b] at slot t % l from src[B][n]. One work-item a float. */
__kernel void nsa_dc_ring_put(__global const float *src, __global const int *tpos, int B, int n,
                              int l, __global float *ring)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)B * n)
        return;
    const int b = gid / n, e = gid % n;
    ring[((size_t)b * l + tpos[b] % l) * n + e] = src[gid];
}

/* phi's input for each sequence: z[B][l][n] = the ring's rows of positions
 * t - l + 1 .. t in order (t = tpos[b]; rows of positions < 0 are what the
 * slot holds, unused: phi's output is stored only where the step emits).
 * One work-item a float. */
__kernel void nsa_dc_ring_gather(__global const float *ring, __global const int *tpos, int B,
                                 int n, int l, __global float *z)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)B * l * n)
        return;
    const int e = gid % n, j = (gid / n) % l, b = gid / ((size_t)n * l);
    const int p = tpos[b] - l + 1 + j, slot = ((p % l) + l) % l;
    z[gid] = ring[((size_t)b * l + slot) * n + e];
}
