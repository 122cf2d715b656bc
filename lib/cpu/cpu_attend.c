/* The cpu backend's attention (spec 2-5) and its dense baseline.
 *
 * Work is split into items (sequence, query tile of TI positions, group;
 * the dense baseline's tiles have TQ), spread over OpenMP threads
 * largest-first. Inside an item the query rows
 * of all heads of the group go through every key block together
 * (group-centric loading, as the paper's kernel): one load of a key/value
 * tile serves hpg heads (and, for the window and the dense baseline, TQ
 * positions; for the selected branch, every position of the item that
 * selected the block). Softmax is online (flash-style) over key tiles of BK rows, so
 * scratch stays in L1/L2 whatever the sequence length; only the compressed
 * branch keeps whole rows, because its probabilities feed the selection. */
#include "cpu/cpu_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TQ 16  /* query positions a window or dense tile */
/* Query positions an NSA item: neighbouring positions pick mostly the same
 * blocks (at 8k, 32 positions select 64 distinct blocks, 16 select 60), so
 * the selected branch reads each block from memory for about twice as
 * many positions as with TQ; a multiple of TQ (the window runs the item's
 * tiles in turn). */
#define TI 32
#define BK 128 /* keys a tile: S[TQ*hpg][BK] stays within L2 */
#define CTQ 4  /* positions sharing a pass over the compressed keys */

/* Key rows [lo, hi) of one span, relative to the sequence. */
typedef struct span {
    int64_t lo, hi;
} span;

static void prefetch_rows(const float *p, size_t ld, int64_t rows, int len)
{
#if defined(__GNUC__)
    for (int64_t r = 0; r < rows; r++)
        for (int e = 0; e < len; e += 16) /* one 64-byte line */
            __builtin_prefetch(p + (size_t)r * ld + e, 0, 2);
#else
    (void)p, (void)ld, (void)rows, (void)len;
#endif
}

/* The same into L1 (decode's compressed chunks: measured ~10% faster than
 * into L2 on cold caches). */
static void prefetch_rows_l1(const float *p, size_t ld, int64_t rows, int len)
{
#if defined(__GNUC__)
    for (int64_t r = 0; r < rows; r++)
        for (int e = 0; e < len; e += 16)
            __builtin_prefetch(p + (size_t)r * ld + e, 0, 3);
#else
    (void)p, (void)ld, (void)rows, (void)len;
#endif
}

/* Online softmax of m query rows Q (row stride ldq) over the key rows of
 * spans, continuing the running state (mrow, lrow, unnormalized O[m][dv])
 * that flash_init started; row r only sees keys in [rlo[r], rhi[r]) when
 * rlo is given (causal and window bounds of a query tile). S needs m*BK
 * floats. flash_finish normalizes O; decode keeps the state instead, as a
 * partial result that merge_parts combines with others. */
static void flash_init(int m, int dv, float *mrow, float *lrow, float *O)
{
    for (int i = 0; i < m; i++) {
        mrow[i] = -INFINITY;
        lrow[i] = 0.0f;
    }
    memset(O, 0, sizeof(float) * (size_t)m * dv);
}

static void flash_finish(int m, int dv, const float *lrow, float *O)
{
    for (int i = 0; i < m; i++) {
        const float inv = lrow[i] > 0.0f ? 1.0f / lrow[i] : 0.0f;
        float *o = O + (size_t)i * dv;
        for (int e = 0; e < dv; e++)
            o[e] *= inv;
    }
}

static void flash_spans(const nsa_simd_kernels *k, int m, int dk, int dv, float scale,
                        const float *Q, size_t ldq, const float *K, size_t ldk, const float *V,
                        size_t ldv, const span *sp, int nsp, const int64_t *rlo,
                        const int64_t *rhi, float *S, float *mrow, float *lrow, float *O)
{
    for (int s = 0; s < nsp; s++)
        for (int64_t r0 = sp[s].lo; r0 < sp[s].hi; r0 += BK) {
            const int nk = (int)(sp[s].hi - r0 < BK ? sp[s].hi - r0 : BK);
            /* Selected blocks lie anywhere in the sequence: ask for the
             * next tile while this one computes. */
            int64_t n0 = r0 + BK, n1;
            int ns = s;
            if (n0 >= sp[s].hi && ++ns < nsp)
                n0 = sp[ns].lo;
            if (ns < nsp) {
                n1 = n0 + BK < sp[ns].hi ? n0 + BK : sp[ns].hi;
                prefetch_rows(K + (size_t)n0 * ldk, ldk, n1 - n0, dk);
                prefetch_rows(V + (size_t)n0 * ldv, ldv, n1 - n0, dv);
            }
            k->gemm_nt(m, nk, dk, scale, Q, ldq, K + (size_t)r0 * ldk, ldk, S, BK);
            if (rlo)
                for (int i = 0; i < m; i++) {
                    float *row = S + (size_t)i * BK;
                    if (r0 < rlo[i] || r0 + nk > rhi[i])
                        for (int j = 0; j < nk; j++)
                            if (r0 + j < rlo[i] || r0 + j >= rhi[i])
                                row[j] = -INFINITY;
                }
            k->softmax_step(S, BK, m, nk, mrow, lrow, O, (size_t)dv, dv);
            k->gemm_nn_acc(m, dv, nk, S, BK, V + (size_t)r0 * ldv, ldv, O, (size_t)dv);
        }
}

/* The whole online softmax: O[m][dv] gets the normalized output. */
static void flash(const nsa_simd_kernels *k, int m, int dk, int dv, float scale,
                  const float *Q, size_t ldq, const float *K, size_t ldk, const float *V,
                  size_t ldv, const span *sp, int nsp, const int64_t *rlo, const int64_t *rhi,
                  float *S, float *mrow, float *lrow, float *O)
{
    flash_init(m, dv, mrow, lrow, O);
    flash_spans(k, m, dk, dv, scale, Q, ldq, K, ldk, V, ldv, sp, nsp, rlo, rhi, S, mrow, lrow,
                O);
    flash_finish(m, dv, lrow, O);
}

/* Per-thread scratch, sized for the longest sequence: prefill's for TI
 * positions x hpg heads (key-tile scores for TQ); decode's (dec_*) for hpg rows, without the query
 * copy, compressed rows, the positions' selections, o_cmp, the softmax
 * state and row bounds, with fac. */
typedef struct scratch {
    float *qt;    /* [TI*hpg][dk] the item's query rows, gathered */
    float *s;     /* [TQ*hpg*BK] scores of a key tile */
    float *pc;    /* [CTQ*hpg][ldp] compressed-branch probabilities */
    float *ps;    /* [max_nc] p_cmp summed over the group's heads */
    float *score; /* [max_vis] selection scores */
    unsigned char *work;
    int32_t *selt; /* [TI][n] the selections of an item's positions */
    span *sp;     /* [n] (decode: [2n], a chunk's cut of them after the spans) */
    float *ocmp, *oslc, *owin; /* [TI*hpg][dv] */
    float *mrow, *lrow;        /* [TI*hpg] */
    int64_t *rlo, *rhi;        /* [TI*hpg] */
    float *fac;                /* decode: [ncmp*hpg + 1] merge factors of A */
    void *mem;                 /* prefill: the one allocation */
} scratch;

/* The part of bytes bytes at *used from base (NULL when base is, or for an
 * empty part), then *used past it to the next 64-byte boundary. */
static void *carve(char *base, size_t *used, size_t bytes)
{
    void *p = base && bytes ? base + *used : NULL;
    *used += (bytes + 63) / 64 * 64;
    return p;
}

/* The one sizing of a thread's scratch: lays w out from base (64-byte
 * aligned; NULL: sizes only) and returns its bytes, a multiple of 64.
 * dec_ncmp < 0: prefill's scratch; else decode's, whose compressed branch
 * has dec_ncmp chunk slots. 64-byte aligned parts: with dk a multiple of
 * 16 every query row loads whole cache lines (the avx512 gemm_nt copies
 * misaligned rows). */
static size_t scratch_layout(scratch *w, const nsa_config *c, int max_nc, int max_vis,
                             int dec_ncmp, char *base)
{
    const int dec = dec_ncmp >= 0;
    const size_t hpg = (size_t)(c->H / c->G), mt = dec ? hpg : TI * hpg, f = sizeof(float);
    const size_t ldp = (size_t)(max_nc > 0 ? max_nc : 1);
    const size_t vis = (size_t)(max_vis > 0 ? max_vis : 1);
    const size_t dk = (size_t)c->dk, dv = (size_t)c->dv, n = (size_t)c->n;
    size_t used = 0;
    memset(w, 0, sizeof *w);
    w->qt = carve(base, &used, dec ? 0 : mt * dk * f);
    w->s = carve(base, &used, (dec ? hpg : TQ * hpg) * BK * f);
    w->pc = carve(base, &used, dec ? 0 : CTQ * hpg * ldp * f);
    w->ps = carve(base, &used, ldp * f);
    w->score = carve(base, &used, vis * f);
    w->work = carve(base, &used, vis);
    w->selt = carve(base, &used, dec ? 0 : TI * n * sizeof(int32_t));
    w->sp = carve(base, &used, (dec ? 2 : 1) * n * sizeof(span));
    w->ocmp = carve(base, &used, dec ? 0 : mt * dv * f);
    w->oslc = carve(base, &used, mt * dv * f);
    w->owin = carve(base, &used, mt * dv * f);
    w->mrow = carve(base, &used, dec ? 0 : mt * f);
    w->lrow = carve(base, &used, dec ? 0 : mt * f);
    w->rlo = carve(base, &used, dec ? 0 : mt * sizeof(int64_t));
    w->rhi = carve(base, &used, dec ? 0 : mt * sizeof(int64_t));
    w->fac = carve(base, &used, dec ? ((size_t)dec_ncmp * hpg + 1) * f : 0);
    return used;
}

static void scratch_free(scratch *w)
{
    free(w->mem);
    memset(w, 0, sizeof *w);
}

/* Prefill's scratch in one allocation; 0 when out of memory. */
static int scratch_alloc(scratch *w, const nsa_config *c, int max_nc, int max_vis)
{
    char *mem = aligned_alloc(64, scratch_layout(w, c, max_nc, max_vis, -1, NULL));
    if (!mem)
        return 0;
    scratch_layout(w, c, max_nc, max_vis, -1, mem);
    w->mem = mem;
    return 1;
}

/* Items are (sequence, tile of tq positions, group); tile_off[b] counts
 * the tiles before sequence b. */
typedef struct items {
    int B, G, tq;
    int64_t *tile_off;
    int64_t n;
} items;

static int items_make(items *it, const nsa_batch *bt, int G, int tq)
{
    it->B = bt->B;
    it->G = G;
    it->tq = tq;
    it->tile_off = malloc(sizeof(int64_t) * ((size_t)bt->B + 1));
    if (!it->tile_off)
        return 0;
    it->tile_off[0] = 0;
    for (int b = 0; b < bt->B; b++)
        it->tile_off[b + 1] = it->tile_off[b] + (bt->cu[b + 1] - bt->cu[b] + tq - 1) / tq;
    it->n = it->tile_off[bt->B] * G;
    return 1;
}

/* Item index -> sequence, first position, group. Items run last-first, so
 * the long tails of long sequences start early (balance). */
static void item_at(const items *it, int64_t idx, int *b, int64_t *t0, int *g)
{
    idx = it->n - 1 - idx;
    *g = (int)(idx % it->G);
    const int64_t tile = idx / it->G;
    int lo = 0, hi = it->B - 1;
    while (lo < hi) { /* last b with tile_off[b] <= tile */
        const int mid = (lo + hi + 1) / 2;
        if (it->tile_off[mid] <= tile)
            lo = mid;
        else
            hi = mid - 1;
    }
    *b = lo;
    *t0 = (tile - it->tile_off[lo]) * it->tq;
}

/* Gathers the query rows of positions [t0, t0+nt) and heads of group g. */
static void gather_q(const nsa_config *c, const float *q, int64_t row0, int nt, int g,
                     float *qt)
{
    const int hpg = c->H / c->G;
    for (int u = 0; u < nt; u++)
        memcpy(qt + (size_t)u * hpg * c->dk, q + ((size_t)(row0 + u) * c->H + (size_t)g * hpg) * c->dk,
               sizeof(float) * (size_t)hpg * c->dk);
}

/* Compressed branch for positions t0+u0 .. t0+u1-1 at once: their rows
 * are contiguous in qt, and each row is cut at its own n_cmp, so one pass over the
 * compressed keys serves (u1-u0)*hpg rows. Leaves the probabilities in
 * w->pc (row stride ldp) for the selection. */
static void cmp_tile(const nsa_simd_kernels *k, const nsa_attn_job *job, int b, int64_t t0,
                     int u0, int u1, int g, int ldp, scratch *w)
{
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const int hpg = c->H / c->G, dk = c->dk, dv = c->dv, G = c->G;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    const int rows = (u1 - u0) * hpg;
    const int nc_hi = nsa_bm_n_cmp(c, t0 + u1 - 1);
    const float *kc = job->kc + (size_t)bt->cmp_off[b] * krow + (size_t)g * dk;
    const float *vc = job->vc + (size_t)bt->cmp_off[b] * vrow + (size_t)g * dv;
    float *ocmp = w->ocmp + (size_t)u0 * hpg * dv;
    memset(ocmp, 0, sizeof(float) * (size_t)rows * dv);
    if (nc_hi == 0)
        return;
    k->gemm_nt(rows, nc_hi, dk, job->scale, w->qt + (size_t)u0 * hpg * dk, (size_t)dk, kc, krow,
               w->pc, (size_t)ldp);
    for (int r = 0; r < rows; r++) {
        const int nc = nsa_bm_n_cmp(c, t0 + u0 + r / hpg);
        float *p = w->pc + (size_t)r * ldp;
        if (nc > 0) {
            const float inv = 1.0f / k->exp_sum(p, nc, k->max(p, nc));
            for (int j = 0; j < nc; j++)
                p[j] *= inv;
        }
        for (int j = nc; j < nc_hi; j++) /* not visible to this row */
            p[j] = 0.0f;
    }
    k->gemm_nn_acc(rows, dv, nc_hi, w->pc, (size_t)ldp, vc, vrow, ocmp, (size_t)dv);
}

/* s = M ps (M is linear), then top-n, into sel[0..n); w->ps holds the
 * sum over the group's heads of p_cmp. */
static void score_select(const nsa_config *c, const nsa_csr *M, int64_t t, scratch *w,
                         int32_t *sel)
{
    const int nc = nsa_bm_n_cmp(c, t), vis = nsa_bm_n_sel_visible(c, t);
    for (int j = 0; j < vis; j++) {
        float acc = 0.0f;
        for (int32_t e = M->rowptr[j]; e < M->rowptr[j + 1]; e++)
            if (M->col[e] < nc)
                acc += (float)M->val[e] * w->ps[M->col[e]];
        w->score[j] = acc;
    }
    nsa_bm_select_f(c, t, w->score, w->work, sel);
}

/* s = M (sum over the group's heads of p_cmp), then top-n, into sel;
 * prob holds hpg rows of stride ldp. */
static void select_top(const nsa_config *c, const nsa_csr *M, int64_t t, int hpg, int ldp,
                       const float *prob, scratch *w, int32_t *sel)
{
    const int nc = nsa_bm_n_cmp(c, t);
    memset(w->ps, 0, sizeof(float) * (size_t)(nc > 0 ? nc : 1));
    for (int i = 0; i < hpg; i++) {
        const float *p = prob + (size_t)i * ldp;
        for (int j = 0; j < nc; j++)
            w->ps[j] += p[j];
    }
    score_select(c, M, t, w, sel);
}

/* Importance (spec 3, Eq. 9-10) and top-n for position t from its group's
 * probability rows prob (stride ldp), or the given selection, into
 * sel[0..n) (and selection_out). */
static void select_blocks(const nsa_attn_job *job, int b, int64_t t, int g, int ldp,
                          const float *prob, scratch *w, int32_t *sel)
{
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const int hpg = c->H / c->G;
    const size_t sel_at = ((size_t)(bt->cu[b] + t) * c->G + g) * c->n;
    if (job->sel_in)
        memcpy(sel, job->sel_in + sel_at, sizeof(int32_t) * c->n);
    else
        select_top(c, job->map, t, hpg, ldp, prob, w, sel);
    if (job->sel_out)
        memcpy(job->sel_out + sel_at, sel, sizeof(int32_t) * c->n);
}

/* The rows of the selected blocks sel[0..n) clipped to <= t, adjacent
 * blocks merged into one span; returns the number of spans (<= n). */
static int sel_spans(const nsa_config *c, int64_t t, const int32_t *sel, span *sp)
{
    int nsp = 0;
    for (int u = 0; u < c->n; u++) {
        if (sel[u] < 0)
            continue;
        const int64_t lo = (int64_t)sel[u] * c->l_sel;
        int64_t hi = lo + c->l_sel;
        if (hi > t + 1)
            hi = t + 1;
        if (lo >= hi)
            continue;
        if (nsp > 0 && sp[nsp - 1].hi == lo)
            sp[nsp - 1].hi = hi;
        else
            sp[nsp++] = (span){lo, hi};
    }
    return nsp;
}

/* The smallest block at the heads of the nt selections sel[u][0..n) from
 * their cursors cur[u] (-1 pads skipped, cursors moved past them), a head
 * equal to skip read past; -1 when none is left. */
static int32_t union_head(const int32_t *sel, int n, int nt, int *cur, int32_t skip)
{
    int32_t best = -1;
    for (int u = 0; u < nt; u++) {
        const int32_t *su = sel + (size_t)u * n;
        while (cur[u] < n && su[cur[u]] < 0)
            cur[u]++;
        int e = cur[u];
        if (skip >= 0 && e < n && su[e] == skip)
            e++;
        while (e < n && su[e] < 0)
            e++;
        if (e < n && (best < 0 || su[e] < best))
            best = su[e];
    }
    return best;
}

/* Selected branch for the item's positions t0 .. t0+nt-1, over their
 * selections w->selt[u][0..n), block-major: the blocks are visited in
 * ascending order of the union of the selections, and each block is
 * applied to every position that selected it while its rows are hot, so a
 * block shared by several positions (block 0, the local blocks, common
 * picks) is read from memory once an item; the next block of the union is
 * prefetched meanwhile. Each position still sees its own blocks in the
 * order of its selection (ascending), one online-softmax step a block. */
static void selected_item(const nsa_simd_kernels *k, const nsa_attn_job *job, int b, int64_t t0,
                          int nt, int g, scratch *w)
{
    const nsa_config *c = job->cfg;
    const int hpg = c->H / c->G, dk = c->dk, dv = c->dv, n = c->n;
    const size_t krow = (size_t)c->G * dk, vrow = (size_t)c->G * dv;
    const int64_t base = job->batch->cu[b], tmax = t0 + nt - 1;
    const float *K = job->k_slc + (size_t)base * krow + (size_t)g * dk;
    const float *V = job->v_slc + (size_t)base * vrow + (size_t)g * dv;
    int cur[TI]; /* next entry of each position's selection */
    for (int u = 0; u < nt; u++) {
        cur[u] = 0;
        flash_init(hpg, dv, w->mrow + (size_t)u * hpg, w->lrow + (size_t)u * hpg,
                   w->oslc + (size_t)u * hpg * dv);
    }
    for (;;) {
        /* the smallest block at the heads of the selections, then the next
         * one of the union (to prefetch) */
        const int32_t blk = union_head(w->selt, n, nt, cur, -1);
        if (blk < 0)
            break;
        const int32_t nxt = union_head(w->selt, n, nt, cur, blk);
        /* the next block's rows [plo, phi), clipped to the item's last
         * position (rows past it may lie past the end of the sequence's
         * K/V), asked for in as many parts as there are positions using
         * this block, one before each of their steps (a whole block at
         * once, 1280 lines, measured a little slower: it competes with the
         * step's own loads) */
        int64_t plo = 0, phi = 0;
        int users = 0, done = 0;
        if (nxt >= 0) {
            plo = (int64_t)nxt * c->l_sel;
            phi = plo + c->l_sel < tmax + 1 ? plo + c->l_sel : tmax + 1;
            for (int u = 0; u < nt; u++)
                users += cur[u] < n && w->selt[(size_t)u * n + cur[u]] == blk;
        }
        int64_t pat = plo;
        for (int u = 0; u < nt; u++) {
            if (cur[u] >= n || w->selt[(size_t)u * n + cur[u]] != blk)
                continue;
            cur[u]++;
            if (pat < phi) {
                const int64_t to = plo + (phi - plo) * ++done / users;
                prefetch_rows(K + (size_t)pat * krow, krow, to - pat, dk);
                prefetch_rows(V + (size_t)pat * vrow, vrow, to - pat, dv);
                pat = to;
            }
            const int64_t t = t0 + u, lo = (int64_t)blk * c->l_sel;
            const span sp = {lo, lo + c->l_sel < t + 1 ? lo + c->l_sel : t + 1};
            if (sp.lo < sp.hi)
                flash_spans(k, hpg, dk, dv, job->scale, w->qt + (size_t)u * hpg * dk, (size_t)dk,
                            K, krow, V, vrow, &sp, 1, NULL, NULL, w->s,
                            w->mrow + (size_t)u * hpg, w->lrow + (size_t)u * hpg,
                            w->oslc + (size_t)u * hpg * dv);
        }
    }
    for (int u = 0; u < nt; u++)
        flash_finish(hpg, dv, w->lrow + (size_t)u * hpg, w->oslc + (size_t)u * hpg * dv);
}

static void run_item(const nsa_simd_kernels *k, const nsa_attn_job *job, int b, int64_t t0,
                     int g, int branches, int max_nc, scratch *w)
{
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    const int64_t base = bt->cu[b], S = bt->cu[b + 1] - base;
    const int nt = (int)(S - t0 < TI ? S - t0 : TI);
    const int ldp = max_nc > 0 ? max_nc : 1;
    gather_q(c, job->q, base + t0, nt, g, w->qt);

    if (branches & NSA_CPU_WIN) {
        /* a tile of TQ positions at once: keys max(0, t1-w+1) .. t1+nq-1,
         * each row limited to its own window */
        for (int u = 0; u < nt; u++)
            for (int i = 0; i < hpg; i++) {
                const int64_t t = t0 + u;
                w->rlo[u * hpg + i] = t - c->w + 1 > 0 ? t - c->w + 1 : 0;
                w->rhi[u * hpg + i] = t + 1;
            }
        for (int v = 0; v < nt; v += TQ) {
            const int nq = nt - v < TQ ? nt - v : TQ;
            const int64_t t1 = t0 + v;
            const size_t r = (size_t)v * hpg;
            span sp = {t1 - c->w + 1 > 0 ? t1 - c->w + 1 : 0, t1 + nq};
            flash(k, nq * hpg, dk, dv, job->scale, w->qt + r * dk, (size_t)dk,
                  job->k_win + (size_t)base * krow + (size_t)g * dk, krow,
                  job->v_win + (size_t)base * vrow + (size_t)g * dv, vrow, &sp, 1, w->rlo + r,
                  w->rhi + r, w->s, w->mrow + r, w->lrow + r, w->owin + r * dv);
        }
    }
    for (int u0 = 0; u0 < nt; u0 += CTQ) {
        const int u1 = u0 + CTQ < nt ? u0 + CTQ : nt;
        if (branches & NSA_CPU_CMP)
            cmp_tile(k, job, b, t0, u0, u1, g, ldp, w);
        for (int u = u0; u < u1; u++) {
            const int64_t t = t0 + u;
            int32_t *su = w->selt + (size_t)u * c->n;
            if (branches & NSA_CPU_CMP) {
                select_blocks(job, b, t, g, ldp, w->pc + (size_t)(u - u0) * hpg * ldp, w, su);
            } else if (branches & NSA_CPU_SLC) {
                memcpy(su, job->sel_in + ((size_t)(base + t) * G + g) * c->n,
                       sizeof(int32_t) * c->n);
            }
        }
    }
    if (branches & NSA_CPU_SLC)
        selected_item(k, job, b, t0, nt, g, w);
    /* outputs: the group's heads are contiguous in [T][H][dv] */
    for (int u = 0; u < nt; u++) {
        const size_t at = ((size_t)(base + t0 + u) * H + (size_t)g * hpg) * dv;
        const size_t len = (size_t)hpg * dv, src = (size_t)u * len;
        if (job->out_cmp && (branches & NSA_CPU_CMP))
            memcpy(job->out_cmp + at, w->ocmp + src, sizeof(float) * len);
        if (job->out_slc && (branches & NSA_CPU_SLC))
            memcpy(job->out_slc + at, w->oslc + src, sizeof(float) * len);
        if (job->out_win && (branches & NSA_CPU_WIN))
            memcpy(job->out_win + at, w->owin + src, sizeof(float) * len);
        if (branches != NSA_CPU_ALL)
            continue;
        const float *gt = job->gates + ((size_t)(base + t0 + u) * H + (size_t)g * hpg) * 3;
        for (int i = 0; i < hpg; i++) {
            const float g0 = gt[3 * i], g1 = gt[3 * i + 1], g2 = gt[3 * i + 2];
            const float *a = w->ocmp + src + (size_t)i * dv, *s = w->oslc + src + (size_t)i * dv,
                        *v = w->owin + src + (size_t)i * dv;
            float *o = job->out + at + (size_t)i * dv;
            for (int e = 0; e < dv; e++)
                o[e] = g0 * a[e] + g1 * s[e] + g2 * v[e];
        }
    }
}

/* Runs fn(i) for every i < n over the OpenMP threads, each thread with its
 * own scratch sized for max_nc / max_vis; 0 if some thread's scratch could
 * not be allocated (its items are then skipped). */
typedef void (*item_fn)(int64_t i, scratch *w, const void *arg);

static int parallel_items(const nsa_config *c, int max_nc, int max_vis, int64_t n, item_fn fn,
                          const void *arg)
{
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel if (n > 1)
#endif
    {
        scratch w;
        const int ok = scratch_alloc(&w, c, max_nc, max_vis);
        if (!ok) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t i = 0; i < n; i++)
            if (ok)
                fn(i, &w, arg);
        if (ok)
            scratch_free(&w);
    }
    return !failed;
}

typedef struct attend_arg {
    const nsa_simd_kernels *k;
    const nsa_attn_job *job;
    const items *it;
    int branches, max_nc;
} attend_arg;

static void attend_item(int64_t i, scratch *w, const void *arg)
{
    const attend_arg *a = arg;
    int b, g;
    int64_t t0;
    item_at(a->it, i, &b, &t0, &g);
    run_item(a->k, a->job, b, t0, g, a->branches, a->max_nc, w);
}

nsa_status nsa_cpu_attend_part(nsa_context *ctx, const nsa_attn_job *job, int branches)
{
    const nsa_config *c = job->cfg;
    const nsa_simd_kernels *k = ((const nsa_cpu_state *)ctx->be_state)->k;
    if ((branches & NSA_CPU_SLC) && !(branches & NSA_CPU_CMP) && !job->sel_in)
        return nsa_fail(ctx, NSA_ERR_ARG, "the selected branch alone needs a selection_in");
    const int64_t maxlen = job->batch->max_len;
    const int max_nc = nsa_bm_n_cmp(c, maxlen - 1);
    const int max_vis = nsa_bm_n_sel_visible(c, maxlen - 1);
    items it;
    if (!items_make(&it, job->batch, c->G, TI))
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in the cpu attention");
    const attend_arg arg = {k, job, &it, branches, max_nc};
    const int ok = parallel_items(c, max_nc, max_vis, it.n, attend_item, &arg);
    free(it.tile_off);
    if (!ok)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the cpu attention scratch");
    return NSA_OK;
}

nsa_status nsa_cpu_attend(nsa_context *ctx, const nsa_attn_job *job)
{
    return nsa_cpu_attend_part(ctx, job, NSA_CPU_ALL);
}

/* ------------------------------------------------------ dense baseline */
typedef struct dense_arg {
    const nsa_simd_kernels *k;
    const nsa_config *c;
    const nsa_batch *bt;
    const items *it;
    const float *q, *kk, *v;
    float *out;
} dense_arg;

/* One (sequence, query tile, group) item of the dense causal baseline:
 * flash attention of its TQ x hpg rows over keys [0, t]. */
static void dense_item(int64_t i, scratch *w, const void *arg)
{
    const dense_arg *a = arg;
    const nsa_config *c = a->c;
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    int b, g;
    int64_t t0;
    item_at(a->it, i, &b, &t0, &g);
    const int64_t base = a->bt->cu[b], S = a->bt->cu[b + 1] - base;
    const int nt = (int)(S - t0 < TQ ? S - t0 : TQ);
    gather_q(c, a->q, base + t0, nt, g, w->qt);
    for (int u = 0; u < nt; u++)
        for (int r = 0; r < hpg; r++) {
            w->rlo[u * hpg + r] = 0;
            w->rhi[u * hpg + r] = t0 + u + 1;
        }
    span sp = {0, t0 + nt};
    flash(a->k, nt * hpg, dk, dv, nsa_config_scale(c), w->qt, (size_t)dk,
          a->kk + (size_t)base * krow + (size_t)g * dk, krow,
          a->v + (size_t)base * vrow + (size_t)g * dv, vrow, &sp, 1, w->rlo, w->rhi, w->s,
          w->mrow, w->lrow, w->ocmp);
    for (int u = 0; u < nt; u++)
        memcpy(a->out + ((size_t)(base + t0 + u) * H + (size_t)g * hpg) * dv,
               w->ocmp + (size_t)u * hpg * dv, sizeof(float) * (size_t)hpg * dv);
}

nsa_status nsa_cpu_dense_attention(nsa_context *ctx, const nsa_config *c,
                                   const nsa_batch *bt, const float *q, const float *kk,
                                   const float *v, float *out)
{
    items it;
    if (!items_make(&it, bt, c->G, TQ))
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in the dense attention");
    const dense_arg arg = {((const nsa_cpu_state *)ctx->be_state)->k, c, bt, &it, q, kk, v, out};
    /* the scratch of the NSA items serves: no compressed keys, no selection */
    const int ok = parallel_items(c, 0, 1, it.n, dense_item, &arg);
    free(it.tile_off);
    if (!ok)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the dense attention scratch");
    return NSA_OK;
}

/* ---------------------------------------------------------------- decode */
/* One new token per (sequence, group) item over its caches (spec 7), split
 * flash-decoding style so that even a single item spreads over the threads.
 * Every branch's keys are cut into chunks of DCH keys, the cut fixed by
 * positions alone (never by the thread count or the batch); each chunk
 * gives a partial softmax per head (its max m, sum l and unnormalized
 * output), and the partials of a branch are merged in chunk order. So the
 * result is the same whatever the thread count and whichever thread ran
 * which chunk. Four loops over the threads:
 *   A (item, compressed chunk): scores, exp(s - m) into the item's
 *     probability rows, l and P V;
 *   B item: merge A's partials into o_cmp, scale the rows to the exact
 *     p_cmp of spec 2 (they feed the selection), score and select (spec 3);
 *     and, in the same loop, (item, window chunk): partial softmax over
 *     the chunk (the window needs no selection);
 *   C (item, selected chunk): partial softmax over the chunk;
 *   D item: merge the selected and window partials into o_slc and o_win,
 *     gates (spec 5).
 * The dense baseline is C and D over all t+1 raw keys. */
#define DCH 256 /* keys a chunk: 2 key tiles; 6 chunks (1024 + 512 keys)
                   share the selected and window branches at the defaults */

typedef struct dplan {
    const nsa_simd_kernels *k;
    const nsa_decode_job *job;
    float *q;       /* job->q copied 64-byte aligned: the kernels' rows then
                       load whole cache lines (avx512 gemm_nt copies A
                       otherwise, at every call) */
    int dense, hpg, nitem;
    int ncmp;       /* chunk slots an item in A */
    int nslc, nwin; /* chunk slots an item: selected (C; dense: all keys), window (B) */
    size_t ldp;     /* row stride of the probability rows */
    size_t pstride; /* floats a partial: m[hpg], l[hpg], o[hpg][dv] */
    float *prob;    /* [nitem][hpg][ldp] */
    float *ocmp;    /* [nitem][hpg][dv] */
    float *pa;      /* [nitem][ncmp] partials of A */
    float *pc;      /* [nitem][nslc + nwin] partials of C, then of B's window chunks */
} dplan;

static int ceil_div(int64_t a, int64_t b) { return (int)((a + b - 1) / b); }

/* Combines the partials c < nch (stride floats apart) into o[hpg][dv]:
 * o = sum_c f_c o_c with f_c = e_c / L, e_c = exp(m_c - M), M = max_c m_c,
 * L = sum_c e_c l_c; each e_c is computed once, in one pass in the order of
 * c that sums L and e_c o_c (the kernels' gemm_nn_acc, one head at a time),
 * then o is divided by L. A chunk with m_c = -inf saw no key and weighs
 * nothing (e_c = 0, its o_c is zeros); no key at all gives zeros. fac
 * (optional) gets f_c, [nch][hpg]. */
static void merge_parts(const nsa_simd_kernels *k, int hpg, int dv, const float *parts,
                        size_t stride, int nch, float *o, float *fac)
{
    enum { FB = 64 }; /* factors a kernel call */
    float ei[FB];
    for (int i = 0; i < hpg; i++) {
        float M = -INFINITY, L = 0.0f;
        for (int c = 0; c < nch; c++) {
            const float m = parts[(size_t)c * stride + i];
            M = m > M ? m : M;
        }
        float *oi = o + (size_t)i * dv;
        memset(oi, 0, sizeof(float) * (size_t)dv);
        for (int c0 = 0; c0 < nch; c0 += FB) {
            const int nb = nch - c0 < FB ? nch - c0 : FB;
            for (int c = 0; c < nb; c++) {
                const float *pt = parts + (size_t)(c0 + c) * stride;
                float e = 0.0f;
                if (pt[i] != -INFINITY) {
                    e = expf(pt[i] - M);
                    L += e * pt[hpg + i];
                }
                ei[c] = e;
                if (fac)
                    fac[(size_t)(c0 + c) * hpg + i] = e;
            }
            k->gemm_nn_acc(1, dv, nb, ei, FB, parts + (size_t)c0 * stride + 2 * (size_t)hpg +
                                                    (size_t)i * dv,
                           stride, oi, (size_t)dv);
        }
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        for (int x = 0; x < dv; x++)
            oi[x] *= inv;
        if (fac)
            for (int c = 0; c < nch; c++)
                fac[(size_t)c * hpg + i] *= inv;
    }
}

/* A: compressed keys [ch*DCH, +DCH) of item it. */
static void dec_cmp_chunk(const dplan *p, int it, int ch)
{
    const nsa_decode_job *job = p->job;
    const nsa_config *c = job->cfg;
    const int G = c->G, hpg = p->hpg, dk = c->dk, dv = c->dv, b = it / G, g = it % G;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    const nsa_decode_seq *sq = &job->seq[b];
    const int nc = nsa_bm_n_cmp(c, sq->t), j0 = ch * DCH;
    if (j0 >= nc) /* a slot past this item's keys: B does not read it */
        return;
    const int nk = nc - j0 < DCH ? nc - j0 : DCH;
    float *part = p->pa + ((size_t)it * p->ncmp + ch) * p->pstride;
    float *P = p->prob + (size_t)it * hpg * p->ldp + j0;
    const float *K = sq->kc + (size_t)j0 * krow + (size_t)g * dk;
    const float *V = sq->vc + (size_t)j0 * vrow + (size_t)g * dv;
    const float *qh = p->q + ((size_t)b * c->H + (size_t)g * hpg) * dk;
    /* The rows are cold at every step: the values are asked for at once
     * (used after the scores), the keys a tile of KT ahead. */
    enum { KT = 32 };
    prefetch_rows_l1(V, vrow, nk, dv);
    prefetch_rows_l1(K, krow, nk < KT ? nk : KT, dk);
    for (int j = 0; j < nk; j += KT) {
        const int nt = nk - j < KT ? nk - j : KT, j1 = j + KT;
        if (j1 < nk)
            prefetch_rows_l1(K + (size_t)j1 * krow, krow, nk - j1 < KT ? nk - j1 : KT, dk);
        p->k->gemm_nt(hpg, nt, dk, job->scale, qh, (size_t)dk, K + (size_t)j * krow, krow,
                      P + j, p->ldp);
    }
    for (int i = 0; i < hpg; i++) {
        float *row = P + (size_t)i * p->ldp;
        const float mx = p->k->max(row, nk);
        part[i] = mx;
        if (mx == -INFINITY) {
            memset(row, 0, sizeof(float) * (size_t)nk);
            part[hpg + i] = 0.0f;
        } else {
            part[hpg + i] = p->k->exp_sum(row, nk, mx);
        }
    }
    float *o = part + 2 * (size_t)hpg;
    memset(o, 0, sizeof(float) * (size_t)hpg * dv);
    p->k->gemm_nn_acc(hpg, dv, nk, P, p->ldp, V, vrow, o, (size_t)dv);
}

/* B: o_cmp and the selection of item it (w->fac: ncmp*hpg floats). The
 * rows hold exp(s - m_c) per chunk c: p_cmp = f_c exp(s - m_c) with merge's
 * factors f_c, summed over the heads straight into ps (spec 3, Eq. 10). */
static void dec_select(const dplan *p, int it, scratch *w)
{
    float *fac = w->fac;
    const nsa_decode_job *job = p->job;
    const nsa_config *c = job->cfg;
    const int hpg = p->hpg;
    const int64_t t = job->seq[it / c->G].t;
    const int nc = nsa_bm_n_cmp(c, t), nch = ceil_div(nc, DCH);
    const float *prob = p->prob + (size_t)it * hpg * p->ldp;
    /* without a compressed block (nch = 0) A had no chunks and pa may be NULL,
     * where even a zero offset is undefined */
    const float *pa = nch > 0 ? p->pa + (size_t)it * p->ncmp * p->pstride : NULL;
    merge_parts(p->k, hpg, c->dv, pa, p->pstride, nch, p->ocmp + (size_t)it * hpg * c->dv, fac);
    for (int ch = 0; ch < nch; ch++) {
        /* ps[j] = sum_i f_i row_i[j], in the order of i */
        const int j0 = ch * DCH, nk = nc - j0 < DCH ? nc - j0 : DCH;
        float *ps = w->ps + j0;
        memset(ps, 0, sizeof(float) * (size_t)nk);
        p->k->gemm_nn_acc(1, nk, hpg, fac + (size_t)ch * hpg, (size_t)hpg, prob + j0, p->ldp, ps,
                          (size_t)nk);
    }
    score_select(c, job->map, t, w, job->sel_out + (size_t)it * c->n);
}

/* The part [a, a+len) of the concatenation of spans sp[0..nsp) into out;
 * returns the number of pieces. */
static int cut_spans(const span *sp, int nsp, int64_t a, int64_t len, span *out)
{
    int m = 0;
    int64_t at = 0; /* offset of sp[s] in the concatenation */
    for (int s = 0; s < nsp && len > 0; s++) {
        const int64_t n = sp[s].hi - sp[s].lo;
        if (a < at + n) {
            const int64_t lo = sp[s].lo + (a > at ? a - at : 0);
            const int64_t take = sp[s].hi - lo < len ? sp[s].hi - lo : len;
            out[m++] = (span){lo, lo + take};
            a += take;
            len -= take;
        }
        at += n;
    }
    return m;
}

/* C: chunk slot ch of item it (dense: keys [ch*DCH, +DCH) of 0..t; NSA:
 * slots < nslc cut the selected rows, the others the window positions). */
static void dec_attn_chunk(const dplan *p, int it, int ch, scratch *w)
{
    const nsa_decode_job *job = p->job;
    const nsa_config *c = job->cfg;
    const int G = c->G, hpg = p->hpg, dk = c->dk, dv = c->dv, b = it / G, g = it % G;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    const nsa_decode_seq *sq = &job->seq[b];
    const int64_t t = sq->t;
    float *part = p->pc + ((size_t)it * (p->nslc + p->nwin) + ch) * p->pstride;
    float *m = part, *l = part + hpg, *o = part + 2 * (size_t)hpg;
    flash_init(hpg, dv, m, l, o);
    const float *K, *V;
    span piece[2];
    int np;
    if (p->dense || ch < p->nslc) {
        K = sq->ks;
        V = sq->vs;
        if (p->dense) {
            const span all = {0, t + 1};
            np = cut_spans(&all, 1, (int64_t)ch * DCH, DCH, piece);
        } else {
            const int nsp = sel_spans(c, t, job->sel_out + (size_t)it * c->n, w->sp);
            np = cut_spans(w->sp, nsp, (int64_t)ch * DCH, DCH, w->sp + nsp);
            memmove(w->sp, w->sp + nsp, sizeof(span) * (size_t)np);
        }
    } else {
        /* window positions lo..t, position p at ring row p % w */
        K = sq->kw;
        V = sq->vw;
        const int64_t lo = t - c->w + 1 > 0 ? t - c->w + 1 : 0;
        const int64_t p0 = lo + (int64_t)(ch - p->nslc) * DCH;
        const int64_t p1 = p0 + DCH < t + 1 ? p0 + DCH : t + 1;
        np = 0;
        if (p0 < p1) {
            const int64_t a = p0 % c->w, n = p1 - p0;
            if (a + n <= c->w) {
                piece[np++] = (span){a, a + n};
            } else {
                piece[np++] = (span){a, c->w};
                piece[np++] = (span){0, a + n - c->w};
            }
        }
    }
    const span *sp = (!p->dense && ch < p->nslc) ? w->sp : piece;
    flash_spans(p->k, hpg, dk, dv, job->scale, p->q + ((size_t)b * c->H + (size_t)g * hpg) * dk,
                (size_t)dk, K + (size_t)g * dk, krow, V + (size_t)g * dv, vrow, sp, np, NULL, NULL,
                w->s, m, l, o);
}

/* D: merge C's partials of item it; gates and outputs. */
static void dec_finish(const dplan *p, int it, scratch *w)
{
    const nsa_decode_job *job = p->job;
    const nsa_config *c = job->cfg;
    const int H = c->H, G = c->G, hpg = p->hpg, dv = c->dv, b = it / G, g = it % G;
    const size_t at = ((size_t)b * H + (size_t)g * hpg) * dv, len = (size_t)hpg * dv;
    const float *parts = p->pc + (size_t)it * (p->nslc + p->nwin) * p->pstride;
    if (p->dense) {
        merge_parts(p->k, hpg, dv, parts, p->pstride, p->nslc, job->out + at, NULL);
        return;
    }
    const float *ocmp = p->ocmp + (size_t)it * len;
    merge_parts(p->k, hpg, dv, parts, p->pstride, p->nslc, w->oslc, NULL);
    merge_parts(p->k, hpg, dv, parts + (size_t)p->nslc * p->pstride, p->pstride, p->nwin, w->owin,
                NULL);
    if (job->out_cmp)
        memcpy(job->out_cmp + at, ocmp, sizeof(float) * len);
    if (job->out_slc)
        memcpy(job->out_slc + at, w->oslc, sizeof(float) * len);
    if (job->out_win)
        memcpy(job->out_win + at, w->owin, sizeof(float) * len);
    const float *gt = job->gates + ((size_t)b * H + (size_t)g * hpg) * 3;
    for (int i = 0; i < hpg; i++) {
        const float g0 = gt[3 * i], g1 = gt[3 * i + 1], g2 = gt[3 * i + 2];
        const float *oc = ocmp + (size_t)i * dv, *os = w->oslc + (size_t)i * dv,
                    *ow = w->owin + (size_t)i * dv;
        float *o = job->out + at + (size_t)i * dv;
        for (int x = 0; x < dv; x++)
            o[x] = g0 * oc[x] + g1 * os[x] + g2 * ow[x];
    }
}

/* Lays out p's shared arrays from base (64-byte aligned; NULL: sizes
 * only) and returns their bytes: prob, ocmp, pa, pc and the copy of q. */
static size_t dplan_layout(dplan *p, char *base)
{
    const nsa_config *c = p->job->cfg;
    const size_t rows = (size_t)p->nitem * p->hpg, f = sizeof(float);
    size_t used = 0;
    p->prob = carve(base, &used, p->dense ? 0 : rows * p->ldp * f);
    p->ocmp = carve(base, &used, p->dense ? 0 : rows * c->dv * f);
    p->pa = carve(base, &used, (size_t)p->nitem * p->ncmp * p->pstride * f);
    p->pc = carve(base, &used, (size_t)p->nitem * (size_t)(p->nslc + p->nwin) * p->pstride * f);
    p->q = carve(base, &used, (size_t)p->job->B * c->H * c->dk * f);
    return used;
}

static nsa_status decode_run(nsa_context *ctx, const nsa_decode_job *job, int dense)
{
    const nsa_config *c = job->cfg;
    nsa_cpu_state *st = ctx->be_state;
    int64_t max_t = 0;
    for (int b = 0; b < job->B; b++)
        if (job->seq[b].t > max_t)
            max_t = job->seq[b].t;
    const int max_nc = nsa_bm_n_cmp(c, max_t), max_vis = nsa_bm_n_sel_visible(c, max_t);
    const int64_t slc_keys = (int64_t)c->n * c->l_sel; /* at most, whatever is selected */
    dplan p;
    memset(&p, 0, sizeof p);
    p.k = st->k;
    p.job = job;
    p.dense = dense;
    p.hpg = c->H / c->G;
    p.nitem = job->B * c->G;
    p.ncmp = dense ? 0 : ceil_div(max_nc, DCH);
    p.nslc = ceil_div(dense || slc_keys > max_t + 1 ? max_t + 1 : slc_keys, DCH);
    p.nwin = dense ? 0 : ceil_div(c->w < max_t + 1 ? c->w : max_t + 1, DCH);
    p.ldp = (size_t)(max_nc > 0 ? max_nc : 1);
    p.pstride = (size_t)p.hpg * (2 + (size_t)c->dv);
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    /* one block, 64-byte aligned: p's shared arrays, then a scratch per
     * thread */
    scratch sized;
    const size_t shared = dplan_layout(&p, NULL);
    const size_t thread_bytes = scratch_layout(&sized, c, max_nc, max_vis, p.ncmp, NULL);
    const size_t bytes = 63 + shared + (size_t)nth * thread_bytes;
    if (st->ws_size < bytes) {
        free(st->ws);
        st->ws_size = 0;
        st->ws = malloc(bytes);
        if (!st->ws)
            return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the cpu decode workspace");
        st->ws_size = bytes;
    }
    char *const base = (char *)(((uintptr_t)st->ws + 63) / 64 * 64);
    dplan_layout(&p, base);
    memcpy(p.q, job->q, sizeof(float) * (size_t)job->B * c->H * c->dk);
    char *const thread_base = base + shared;
    /* A: compressed chunks; B: the selections, with the window chunks
     * (which need no selection) filling the threads B leaves idle; C: the
     * selected chunks (dense: all); D: merges and gates. */
    const int nu_a = p.nitem * p.ncmp, nu_b = p.nitem * (1 + p.nwin), nu_c = p.nitem * p.nslc;
#ifdef _OPENMP
#pragma omp parallel if (nu_a + nu_b + nu_c > 1)
#endif
    {
        int id = 0;
#ifdef _OPENMP
        id = omp_get_thread_num();
#endif
        scratch w;
        scratch_layout(&w, c, max_nc, max_vis, p.ncmp, thread_base + (size_t)id * thread_bytes);
        if (!dense) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int u = 0; u < nu_a; u++)
                dec_cmp_chunk(&p, u / p.ncmp, u % p.ncmp);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int u = 0; u < nu_b; u++) {
                if (u < p.nitem) {
                    dec_select(&p, u, &w);
                } else {
                    const int v = u - p.nitem;
                    dec_attn_chunk(&p, v / p.nwin, p.nslc + v % p.nwin, &w);
                }
            }
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int u = 0; u < nu_c; u++)
            dec_attn_chunk(&p, u / p.nslc, u % p.nslc, &w);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int it = 0; it < p.nitem; it++)
            dec_finish(&p, it, &w);
    }
    return NSA_OK;
}

nsa_status nsa_cpu_decode_attend(nsa_context *ctx, const nsa_decode_job *job)
{
    return decode_run(ctx, job, 0);
}

nsa_status nsa_cpu_dense_decode(nsa_context *ctx, const nsa_decode_job *job)
{
    return decode_run(ctx, job, 1);
}
