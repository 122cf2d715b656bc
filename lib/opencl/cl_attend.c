/* The attention operator on the device (spec 2-5, cl/attn.cl): compressed
 * branch with scores, top-n, selected and sliding branches, gates; plus the
 * dense causal baseline and the top-n test hook. */
#include "cl_run.h"

#include <stdlib.h>

/* Local bytes of nsa_group_attn's four buffers with hc heads per
 * work-group and a key tile of `tile` (the layout in cl/attn.cl). */
static size_t group_attn_local(const nsa_cl_state *st, const nsa_config *c, int hc, int tile,
                               size_t f[4])
{
    const size_t nhl = (size_t)(hc + st->rh - 1) / st->rh;
    const size_t nho = (size_t)(hc + st->rho - 1) / st->rho;
    const size_t nhp = nhl * st->rh > nho * st->rho ? nhl * st->rh : nho * st->rho;
    const size_t qst = (size_t)(c->dk + 3) / 4 + 1, dv4 = (size_t)(c->dv + 3) / 4;
    f[0] = 16 * nhp * qst;
    f[1] = 16 * (size_t)tile * (qst > dv4 ? qst : dv4);
    f[2] = 16 * nhp * ((size_t)tile / 4 + 1);
    f[3] = sizeof(float) * (2 * nhp * NSA_CL_NP + 2 * nhp);
    return f[0] + f[1] + f[2] + f[3];
}

/* Heads per work-group and key tile: all of the group's heads if they fit
 * local memory and the lanes' P V registers, with the largest tile that
 * fits; else halves of the heads. 0 if not even one head fits. With tq
 * tokens a work-group (nsa_slc_attn) the queries, probabilities and
 * reductions are tq times those of one (f[0], f[2], f[3]). */
static int heads_per_wg_tq(const nsa_cl_state *st, const nsa_config *c, int tq, int *tile,
                           size_t f[4])
{
    int hc = c->H / c->G;
    if (st->max_heads_wg > 0 && hc > st->max_heads_wg)
        hc = st->max_heads_wg;
    const int dv4 = (c->dv + 3) / 4, cols = st->pe * st->re;
    const int min_tile = st->sk * st->rk > NSA_CL_NP ? st->sk * st->rk : NSA_CL_NP;
    for (;;) {
        const int nho = (hc + st->rho - 1) / st->rho;
        const long npv = (long)st->pe * nho * ((dv4 + cols - 1) / cols);
        if (npv <= (long)st->wg * st->pvi)
            for (int t = st->tile; t >= min_tile; t /= 2) {
                group_attn_local(st, c, hc, t, f);
                f[0] *= (size_t)tq;
                f[2] *= (size_t)tq;
                f[3] *= (size_t)tq;
                if (f[0] + f[1] + f[2] + f[3] <= st->local_mem) {
                    *tile = t;
                    return hc;
                }
            }
        if (hc == 1)
            return 0;
        hc = (hc + 1) / 2;
    }
}

static int heads_per_wg(const nsa_cl_state *st, const nsa_config *c, int *tile, size_t f[4])
{
    return heads_per_wg_tq(st, c, 1, tile, f);
}

/* Heads per work-group of nsa_group_attn_mma (cl/attn_mma.cl) and its
 * four local buffers, if the state holds it and the shape fits: at most
 * 16 heads (fewer under the tests' cap; more take several work-groups),
 * dv within the warps' accumulators, local memory. 0 if not. */
static int heads_per_wg_mma(const nsa_cl_state *st, const nsa_config *c, size_t f[4])
{
    int hc = c->H / c->G;
    if (hc > 16)
        hc = 16;
    if (st->max_heads_wg > 0 && hc > st->max_heads_wg)
        hc = st->max_heads_wg;
    const int nw = st->wg / 32, dv4 = (c->dv + 3) / 4, nst = ((c->dk + 3) / 4 + 3) / 4;
    if (!st->mma_kernel[st->kv][NSA_CLM_GROUP_ATTN] || dv4 > 8 * nw * NSA_CL_MMA_PVC)
        return 0;
    const size_t qst = (size_t)nst * 4 + (nst & 1 ? 0 : 4);
    f[0] = f[1] = 16 * 16 * qst;
    f[2] = sizeof(float) * 16 * NSA_CL_MMA_PST;
    f[3] = sizeof(float) * (2 * 16 * NSA_CL_NP + 2 * 16);
    return f[0] + f[1] + f[2] + f[3] <= st->local_mem ? hc : 0;
}

/* Local bytes of nsa_slc_attn_mma with tq tokens (cl/attn_mma.cl): raw
 * queries 16 x qst float4 (pre-split hi and lo words, twice that, when
 * compiled for one token), probabilities 16 x NSA_CL_MMA_PST floats and
 * the reductions of 16 rows, each per token; heads and dv as
 * heads_per_wg_mma's. 0 if not. */
static int heads_per_wg_slc_mma(const nsa_cl_state *st, const nsa_config *c, int tq,
                                size_t f[4])
{
    size_t g[4];
    const int hc = heads_per_wg_mma(st, c, g);
    if (!hc || !st->mma_kernel[st->kv][NSA_CLM_SLC_ATTN])
        return 0;
    const int nst = ((c->dk + 3) / 4 + 3) / 4;
    const size_t qst = (size_t)nst * 4 + (nst & 1 ? 0 : 4);
    f[0] = (size_t)tq * 16 * 16 * qst;
    f[1] = st->slc_tq <= 1 ? f[0] : 4; /* lo words of pre-split queries (NSA_TQ 1) */
    f[2] = (size_t)tq * sizeof(float) * 16 * NSA_CL_MMA_PST;
    f[3] = (size_t)tq * sizeof(float) * (2 * 16 * NSA_CL_NP + 2 * 16);
    return f[0] + f[1] + f[2] + f[3] <= st->local_mem ? hc : 0;
}

/* One launch of nsa_group_attn over rows row0 .. row0 + rows - 1. */
typedef struct ga_launch {
    int mode, w, row0, rows;
    cl_mem q, K, V, row_seq, cu, cmp_off, sel, out;
    int want_z, max_nc;
    cl_mem zs, stats; /* mode 2 with want_z */
} ga_launch;

static nsa_status group_attn(nsa_clr_bufs *B, const nsa_config *c, float scale,
                             const ga_launch *L)
{
    size_t f[4];
    int tile = NSA_CL_MMA_TK;
    /* the tensor-core kernel where it is built and fits, else the portable one */
    cl_kernel k = B->st->mma_kernel[B->st->kv][NSA_CLM_GROUP_ATTN];
    int hc = heads_per_wg_mma(B->st, c, f);
    if (!hc) {
        k = B->st->kernel[B->st->kv][NSA_CLK_GROUP_ATTN];
        hc = heads_per_wg(B->st, c, &tile, f);
    }
    if (!hc)
        return nsa_fail(B->ctx, NSA_ERR_UNSUPPORTED,
                        "opencl: attention with dk=%d, dv=%d needs more local memory for "
                        "one head and a tile of %d keys than the device's %llu bytes, or "
                        "more than %d x %d output items",
                        c->dk, c->dv, B->st->sk * B->st->rk,
                        (unsigned long long)B->st->local_mem, B->st->wg, B->st->pvi);
    const int parts = (c->H / c->G + hc - 1) / hc;
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    ARG_MEM(&a, L->q);
    ARG_MEM(&a, L->K);
    ARG_MEM(&a, L->V);
    ARG_MEM(&a, L->row_seq);
    ARG_MEM(&a, L->cu);
    ARG_MEM(&a, L->cmp_off);
    ARG_MEM(&a, L->sel);
    ARG_INT(&a, c->n);
    ARG_INT(&a, c->l_sel);
    ARG_INT(&a, L->mode);
    ARG_INT(&a, L->w);
    ARG_INT(&a, c->l);
    ARG_INT(&a, c->d);
    ARG_INT(&a, L->row0);
    ARG_INT(&a, c->H);
    ARG_INT(&a, c->G);
    ARG_INT(&a, hc);
    ARG_INT(&a, c->dk);
    ARG_INT(&a, c->dv);
    ARG_FLT(&a, scale);
    ARG_MEM(&a, L->out);
    ARG_INT(&a, L->want_z);
    ARG_INT(&a, L->max_nc);
    ARG_MEM(&a, L->zs);
    ARG_MEM(&a, L->stats);
    ARG_INT(&a, tile);
    for (int i = 0; i < 4; i++)
        nsa_clr_arg(&a, f[i], NULL);
    static const char *const label[3] = {"nsa_group_attn(slc)", "nsa_group_attn(win)",
                                         "nsa_group_attn(cmp)"};
    return nsa_clr_launch(B, &a, label[L->mode], (size_t)L->rows * c->G * parts * B->st->wg,
                          B->st->wg);
}

/* The selected branch (ga_launch mode 0) with tq >= 1 tokens a work-group
 * (nsa_slc_attn or nsa_slc_attn_mma: each block of the union of their
 * selections loaded once for all of them; the tensor-core one can also
 * load the next tile's first keys during P V, MMA_PF), where the table asks for it
 * (st->slc_tq > 0) and local memory holds it with the heads and key tile
 * of one token: the largest such tq <= st->slc_tq, else group_attn. Only
 * this branch: the contiguous modes (window, compressed, dense) share keys
 * across tokens trivially, and tiling them so would speed up the dense
 * baseline by the same factor (doc/opencl.md). */
static nsa_status slc_attn(nsa_clr_bufs *B, const nsa_config *c, float scale,
                           const ga_launch *L)
{
    const nsa_cl_state *st = B->st;
    int tq = st->slc_tq, tile = NSA_CL_MMA_TK, hc = 0;
    if (st->max_slc_tq > 0 && tq > st->max_slc_tq)
        tq = st->max_slc_tq;
    size_t f[4];
    cl_kernel k = st->mma_kernel[st->kv][NSA_CLM_SLC_ATTN];
    if (heads_per_wg_mma(st, c, f)) {
        /* the tensor-core path: the single-token kernel is the tq = 1 one */
        for (; tq >= 1 && !(hc = heads_per_wg_slc_mma(st, c, tq, f)); tq--)
            ;
    } else {
        int t1 = 0;
        const int h1 = heads_per_wg(st, c, &t1, f);
        k = st->kernel[st->kv][NSA_CLK_SLC_ATTN];
        for (; tq >= 1; tq--)
            if ((hc = heads_per_wg_tq(st, c, tq, &tile, f)) == h1 && tile == t1)
                break;
    }
    if (tq < 1 || !k)
        return group_attn(B, c, scale, L);
    const int parts = (c->H / c->G + hc - 1) / hc;
    const int tiles = (L->rows + tq - 1) / tq;
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    ARG_MEM(&a, L->q);
    ARG_MEM(&a, L->K);
    ARG_MEM(&a, L->V);
    ARG_MEM(&a, L->row_seq);
    ARG_MEM(&a, L->cu);
    ARG_MEM(&a, L->sel);
    ARG_INT(&a, c->n);
    ARG_INT(&a, c->l_sel);
    ARG_INT(&a, L->row0);
    ARG_INT(&a, L->rows);
    ARG_INT(&a, tq);
    ARG_INT(&a, c->H);
    ARG_INT(&a, c->G);
    ARG_INT(&a, hc);
    ARG_INT(&a, c->dk);
    ARG_INT(&a, c->dv);
    ARG_FLT(&a, scale);
    ARG_MEM(&a, L->out);
    ARG_INT(&a, tile);
    for (int i = 0; i < 4; i++)
        nsa_clr_arg(&a, f[i], NULL);
    return nsa_clr_launch(B, &a, "nsa_group_attn(slc)",
                          (size_t)tiles * c->G * parts * st->wg, st->wg);
}

/* Blocks a tile of nsa_cmp_scores_wg for the mapping m (max_vis rows), or
 * 0 where it cannot take m (nsa_cmp_scores runs): the tokens that the
 * rows of a tile reach, r bt + q - 1 with r = l'/d and q = l/d in both
 * mappings, must fit its NSA_CL_CS_SPAN x wg, at most wg blocks (a lane
 * each). The kernel takes a tile's lowest token from its first entry and
 * the highest from its last (of any first rows of it: the tile's last is
 * cut at the row's visible blocks), which is checked here on m itself:
 * columns ascending in each row, no row starting below the tile's first
 * entry, rows' last entries ascending. */
static int cmp_tile(const nsa_cl_state *st, const nsa_config *c, const nsa_csr *m,
                    int max_vis)
{
    const long span = (long)NSA_CL_CS_SPAN * st->wg, r = c->l_sel / c->d, q = c->l / c->d;
    const size_t local = sizeof(float) * NSA_CL_CS_HEADS * (size_t)(span + span / 32 + 1);
    long bt = (span - q + 1) / r;
    if (bt > st->wg)
        bt = st->wg;
    if (bt < 1 || local > st->local_mem || m->rows < max_vis)
        return 0;
    for (int jt = 0; jt < max_vis; jt += (int)bt) {
        const int jn = max_vis - jt < bt ? max_vis - jt : (int)bt;
        const int32_t e0 = m->rowptr[jt], e1 = m->rowptr[jt + jn];
        int32_t last = -1;
        for (int j = jt; j < jt + jn; j++)
            for (int32_t k = m->rowptr[j]; k < m->rowptr[j + 1]; k++) {
                if (m->col[k] < m->col[e0] || (k > m->rowptr[j] && m->col[k] <= m->col[k - 1]))
                    return 0;
                if (k == m->rowptr[j + 1] - 1) {
                    if (m->col[k] < last)
                        return 0;
                    last = m->col[k];
                }
            }
        if (e1 > e0 && (long)m->col[e1 - 1] + 1 - m->col[e0] > span)
            return 0;
    }
    return (int)bt;
}

/* Buffers of the group scores (spec 3, Eq. 9-10) of rows row0 .. row0 +
 * rows - 1 (a chunk of nsa_group_attn's compressed branch). */
typedef struct cs_launch {
    cl_mem zs, stats, row_seq, cu, rowptr, col, val, scores;
    int row0, rows, max_nc, max_vis;
} cs_launch;

/* nsa_cmp_scores_wg with bt blocks a tile (cmp_tile), or nsa_cmp_scores
 * with bt = 0: the same scores bit for bit. */
static nsa_status cmp_scores(nsa_clr_bufs *B, const nsa_config *c, int bt, const cs_launch *L)
{
    const size_t wg = (size_t)B->st->wg;
    cl_kernel *K = B->st->kernel[B->st->kv];
    nsa_clr_args a = {K[bt > 0 ? NSA_CLK_CMP_SCORES_WG : NSA_CLK_CMP_SCORES], 0, CL_SUCCESS};
    ARG_MEM(&a, L->zs);
    ARG_MEM(&a, L->stats);
    ARG_MEM(&a, L->row_seq);
    ARG_MEM(&a, L->cu);
    ARG_MEM(&a, L->rowptr);
    ARG_MEM(&a, L->col);
    ARG_MEM(&a, L->val);
    ARG_INT(&a, c->H);
    ARG_INT(&a, c->G);
    ARG_INT(&a, c->l);
    ARG_INT(&a, c->d);
    ARG_INT(&a, c->l_sel);
    ARG_INT(&a, L->row0);
    ARG_INT(&a, L->rows);
    ARG_INT(&a, L->max_nc);
    ARG_INT(&a, L->max_vis);
    if (bt > 0)
        ARG_INT(&a, bt);
    ARG_MEM(&a, L->scores);
    /* one label: the bench's "scores" row, whichever kernel */
    return nsa_clr_launch(B, &a, "nsa_cmp_scores",
                          (size_t)L->rows * c->G * (bt > 0 ? wg : (size_t)L->max_vis), wg);
}

/* Scratch budget of one chunk of the compressed branch (logits and scores
 * of the rows in flight), which keeps memory linear in T: 1/8 of the
 * device's memory, at least 64 MiB, at most the largest allocation;
 * NSA_OPENCL_CHUNK_MB replaces the first two rules. Every chunk ends its
 * launches in a partial wave, so fewer chunks cost less: at T = 65536 in the
 * paper configuration on the H200, 1 GiB chunks (the old cap: 64 chunks)
 * took 416.9 ms of kernels, 16 GiB chunks (4) 406.2 ms (doc/opencl.md). */
static size_t chunk_budget(const nsa_cl_state *st)
{
    size_t b = st->chunk_bytes;
    if (!b) {
        b = (size_t)(st->global_mem / 8);
        if (b < ((size_t)64 << 20))
            b = (size_t)64 << 20;
    }
    if (st->max_alloc && b > st->max_alloc)
        b = (size_t)st->max_alloc;
    return b;
}

nsa_status nsa_cl_attend(nsa_context *ctx, const nsa_attn_job *job)
{
    nsa_cl_state *st = ctx->be_state;
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const int H = c->H, G = c->G, dk = c->dk, dv = c->dv, n = c->n;
    const int64_t T = bt->T, C = bt->cmp_off[bt->B];
    const int max_nc = nsa_bm_n_cmp(c, bt->max_len - 1);
    const int max_vis = nsa_bm_n_sel_visible(c, bt->max_len - 1);
    const size_t wg = (size_t)st->wg;
    const nsa_cl_kv kv = st->kv;
    nsa_status s = nsa_cl_kernels(ctx, st, kv);
    if (s != NSA_OK)
        return s;
    cl_kernel *K = st->kernel[kv];
    int32_t *rs = nsa_clr_row_seq(bt), *cmp_off = malloc(sizeof(int32_t) * ((size_t)bt->B + 1));
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    if (!rs || !cmp_off) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl attend");
        goto done;
    }
    for (int b = 0; b <= bt->B; b++)
        cmp_off[b] = (int32_t)bt->cmp_off[b];

    cl_mem q, kc, vc, ks, vs, kw, vw, gates, rsb, cub, cob, rp, col, val;
    cl_mem oc, os, ow, out, sel;
    const size_t tg = (size_t)T * G, th = (size_t)T * H;
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * dk, job->q, &q));
    TRY(nsa_clr_buf_kv(&B, kv, job->kc, (size_t)C * G * dk, &kc));
    TRY(nsa_clr_buf_kv(&B, kv, job->vc, (size_t)C * G * dv, &vc));
    TRY(nsa_clr_buf_kv(&B, kv, job->k_slc, tg * dk, &ks));
    TRY(nsa_clr_buf_kv(&B, kv, job->v_slc, tg * dv, &vs));
    /* shared KV: one upload serves both branches */
    if (job->k_win == job->k_slc)
        kw = ks;
    else
        TRY(nsa_clr_buf_kv(&B, kv, job->k_win, tg * dk, &kw));
    if (job->v_win == job->v_slc)
        vw = vs;
    else
        TRY(nsa_clr_buf_kv(&B, kv, job->v_win, tg * dv, &vw));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * 3, job->gates, &gates));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)T, rs, &rsb));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), bt->cu, &cub));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), cmp_off, &cob));
    const nsa_csr *m = job->map;
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * ((size_t)m->rows + 1), m->rowptr, &rp));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)m->rowptr[m->rows], m->col, &col));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)m->rowptr[m->rows], m->val, &val));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * dv, NULL, &oc));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * dv, NULL, &os));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * dv, NULL, &ow));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * dv, NULL, &out));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * tg * n, job->sel_in, &sel));

    /* compressed branch and (without sel_in) scores and top-n, in chunks
     * of rows: logits and statistics of the rows in flight only */
    const int hpg = H / G;
    const size_t per_row = sizeof(float) * (size_t)G *
                           ((size_t)hpg * (size_t)max_nc + 2 * (size_t)hpg + (size_t)max_vis);
    int64_t chunk = (int64_t)(chunk_budget(st) / per_row);
    if (chunk < 1)
        chunk = 1;
    if (st->max_chunk_rows > 0 && chunk > st->max_chunk_rows)
        chunk = st->max_chunk_rows;
    if (chunk > T)
        chunk = T;
    const int want = job->sel_in == NULL, tile = want ? cmp_tile(st, c, m, max_vis) : 0;
    cl_mem zs, stats, scores;
    TRY(nsa_clr_buf_new(&B, want ? sizeof(float) * (size_t)chunk * G * hpg * (size_t)max_nc : 4,
                        NULL, &zs));
    TRY(nsa_clr_buf_new(&B, want ? sizeof(float) * (size_t)chunk * G * hpg * 2 : 4, NULL,
                        &stats));
    TRY(nsa_clr_buf_new(&B, want ? sizeof(float) * (size_t)chunk * G * (size_t)max_vis : 4,
                        NULL, &scores));
    ga_launch L = {.mode = 2, .w = 0, .row0 = 0, .rows = 0, .q = q, .K = kc, .V = vc,
                   .row_seq = rsb, .cu = cub, .cmp_off = cob, .sel = sel, .out = oc,
                   .want_z = want, .max_nc = max_nc, .zs = zs, .stats = stats};
    for (int64_t r0 = 0; r0 < T; r0 += chunk) {
        const int rows = (int)(T - r0 < chunk ? T - r0 : chunk);
        L.row0 = (int)r0;
        L.rows = rows;
        TRY(group_attn(&B, c, job->scale, &L));
        if (!want)
            continue;
        const cs_launch cs = {zs, stats, rsb, cub, rp, col, val, scores,
                              (int)r0, rows, max_nc, max_vis};
        TRY(cmp_scores(&B, c, tile, &cs));
        nsa_clr_args t = {K[NSA_CLK_TOPN], 0, CL_SUCCESS};
        ARG_MEM(&t, scores);
        ARG_MEM(&t, rsb);
        ARG_MEM(&t, cub);
        ARG_INT(&t, G);
        ARG_INT(&t, c->l_sel);
        ARG_INT(&t, n);
        ARG_INT(&t, c->n_init);
        ARG_INT(&t, c->n_local);
        ARG_INT(&t, r0);
        ARG_INT(&t, rows);
        ARG_INT(&t, max_vis);
        ARG_MEM(&t, sel);
        TRY(nsa_clr_launch(&B, &t, "nsa_topn", (size_t)rows * G * wg, wg));
    }
    /* selected branch (group-centric over the selected blocks), window */
    ga_launch S = {.mode = 0, .w = 0, .row0 = 0, .rows = (int)T, .q = q, .K = ks, .V = vs,
                   .row_seq = rsb, .cu = cub, .cmp_off = cob, .sel = sel, .out = os,
                   .want_z = 0, .max_nc = 0, .zs = zs, .stats = stats};
    TRY(slc_attn(&B, c, job->scale, &S));
    ga_launch W = {.mode = 1, .w = c->w, .row0 = 0, .rows = (int)T, .q = q, .K = kw, .V = vw,
                   .row_seq = rsb, .cu = cub, .cmp_off = cob, .sel = sel, .out = ow,
                   .want_z = 0, .max_nc = 0, .zs = zs, .stats = stats};
    TRY(group_attn(&B, c, job->scale, &W));
    {
        nsa_clr_args a = {K[NSA_CLK_GATE], 0, CL_SUCCESS};
        cl_ulong total = (cl_ulong)th * dv;
        ARG_MEM(&a, gates);
        ARG_MEM(&a, oc);
        ARG_MEM(&a, os);
        ARG_MEM(&a, ow);
        ARG_INT(&a, dv);
        nsa_clr_arg(&a, sizeof total, &total);
        ARG_MEM(&a, out);
        TRY(nsa_clr_launch(&B, &a, "nsa_gate", (size_t)total, wg));
    }
    TRY(nsa_clr_download(&B, out, sizeof(float) * th * dv, job->out));
    if (job->out_cmp)
        TRY(nsa_clr_download(&B, oc, sizeof(float) * th * dv, job->out_cmp));
    if (job->out_slc)
        TRY(nsa_clr_download(&B, os, sizeof(float) * th * dv, job->out_slc));
    if (job->out_win)
        TRY(nsa_clr_download(&B, ow, sizeof(float) * th * dv, job->out_win));
    if (job->sel_out)
        TRY(nsa_clr_download(&B, sel, sizeof(int32_t) * tg * n, job->sel_out));
done:
    nsa_clr_bufs_free(&B);
    free(rs);
    free(cmp_off);
    return s;
}

nsa_status nsa_cl_topn(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *bt,
                       const float *scores, int max_vis, int32_t *sel)
{
    nsa_cl_state *st;
    nsa_status s = nsa_cl_hook_state(ctx, &st);
    if (s != NSA_OK)
        return s;
    const size_t tg = (size_t)bt->T * cfg->G;
    int32_t *rs = nsa_clr_row_seq(bt);
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    cl_mem sb, rsb, cub, selb;
    if (!rs) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl top-n");
        goto done;
    }
    TRY(nsa_clr_buf_new(&B, sizeof(float) * tg * (size_t)max_vis, scores, &sb));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)bt->T, rs, &rsb));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), bt->cu, &cub));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * tg * cfg->n, NULL, &selb));
    nsa_clr_args t = {st->kernel[st->kv][NSA_CLK_TOPN], 0, CL_SUCCESS};
    ARG_MEM(&t, sb);
    ARG_MEM(&t, rsb);
    ARG_MEM(&t, cub);
    ARG_INT(&t, cfg->G);
    ARG_INT(&t, cfg->l_sel);
    ARG_INT(&t, cfg->n);
    ARG_INT(&t, cfg->n_init);
    ARG_INT(&t, cfg->n_local);
    ARG_INT(&t, 0);
    ARG_INT(&t, bt->T);
    ARG_INT(&t, max_vis);
    ARG_MEM(&t, selb);
    TRY(nsa_clr_launch(&B, &t, "nsa_topn", tg * (size_t)st->wg, (size_t)st->wg));
    TRY(nsa_clr_download(&B, selb, sizeof(int32_t) * tg * cfg->n, sel));
done:
    nsa_clr_bufs_free(&B);
    free(rs);
    return s;
}

nsa_status nsa_cl_cmp_scores(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *bt,
                             int row0, int rows, const float *z, int max_nc,
                             const float *stats, const nsa_csr *map, int max_vis, int kernel,
                             float *scores)
{
    nsa_cl_state *st;
    nsa_status s = nsa_cl_hook_state(ctx, &st);
    if (s != NSA_OK)
        return s;
    const int tile = kernel == 1 ? 0 : cmp_tile(st, cfg, map, max_vis);
    if (kernel == 2 && !tile)
        return nsa_fail(ctx, NSA_ERR_UNSUPPORTED,
                        "opencl: nsa_cmp_scores_wg cannot take l=%d d=%d l'=%d on %d lanes",
                        cfg->l, cfg->d, cfg->l_sel, st->wg);
    const size_t slots = (size_t)rows * cfg->G, hpg = (size_t)(cfg->H / cfg->G);
    const size_t nnz = (size_t)map->rowptr[map->rows];
    int32_t *rs = nsa_clr_row_seq(bt);
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    cs_launch L = {.row0 = row0, .rows = rows, .max_nc = max_nc, .max_vis = max_vis};
    if (!rs) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl scores");
        goto done;
    }
    TRY(nsa_clr_buf_new(&B, sizeof(float) * slots * hpg * (size_t)max_nc, z, &L.zs));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * slots * hpg * 2, stats, &L.stats));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)bt->T, rs, &L.row_seq));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), bt->cu, &L.cu));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * ((size_t)map->rows + 1), map->rowptr,
                        &L.rowptr));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * nnz, map->col, &L.col));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * nnz, map->val, &L.val));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * slots * (size_t)max_vis, scores, &L.scores));
    TRY(cmp_scores(&B, cfg, tile, &L));
    TRY(nsa_clr_download(&B, L.scores, sizeof(float) * slots * (size_t)max_vis, scores));
done:
    nsa_clr_bufs_free(&B);
    free(rs);
    return s;
}

/* The dense causal baseline: the group kernel in window mode with w = the
 * longest sequence, so every position 0..t is read. */
nsa_status nsa_cl_dense(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *bt,
                        const float *q, const float *k, const float *v, float *out)
{
    nsa_cl_state *st;
    nsa_status s = nsa_cl_hook_state(ctx, &st);
    if (s != NSA_OK)
        return s;
    const size_t th = (size_t)bt->T * cfg->H, tg = (size_t)bt->T * cfg->G;
    int32_t *rs = nsa_clr_row_seq(bt);
    nsa_clr_bufs B = {st, ctx, 0, {0}};
    cl_mem qb, kb, vb, rsb, cub, ob, dummy;
    if (!rs) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in opencl dense");
        goto done;
    }
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * cfg->dk, q, &qb));
    TRY(nsa_clr_buf_kv(&B, st->kv, k, tg * cfg->dk, &kb));
    TRY(nsa_clr_buf_kv(&B, st->kv, v, tg * cfg->dv, &vb));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * (size_t)bt->T, rs, &rsb));
    TRY(nsa_clr_buf_new(&B, sizeof(int32_t) * ((size_t)bt->B + 1), bt->cu, &cub));
    TRY(nsa_clr_buf_new(&B, sizeof(float) * th * cfg->dv, NULL, &ob));
    TRY(nsa_clr_buf_new(&B, 4, NULL, &dummy));
    ga_launch L = {.mode = 1, .w = bt->max_len, .row0 = 0, .rows = (int)bt->T, .q = qb,
                   .K = kb, .V = vb, .row_seq = rsb, .cu = cub, .cmp_off = dummy,
                   .sel = dummy, .out = ob, .want_z = 0, .max_nc = 0, .zs = dummy,
                   .stats = dummy};
    TRY(group_attn(&B, cfg, nsa_config_scale(cfg), &L));
    TRY(nsa_clr_download(&B, ob, sizeof(float) * th * cfg->dv, out));
done:
    nsa_clr_bufs_free(&B);
    free(rs);
    return s;
}
