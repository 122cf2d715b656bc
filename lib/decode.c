/* Decode (spec 7): per-sequence caches and one-token steps of a layer.
 *
 * Every step runs in three phases so that a failure leaves the state as it
 * was: (1) check arguments; (2) compute the new token's projections and,
 * when due, its compressed token into temporaries, then reserve capacity
 * (growth copies into new buffers and swaps only when every allocation
 * succeeded); (3) write the caches (saving the ring rows it overwrites),
 * attend, project out, and only then bump the lengths. A failure in (3)
 * (a backend error) restores the saved ring rows; grown capacity stays.
 *
 * A backend with a device mirror of the caches (vtable dcache_*) gets one
 * per state, told per sequence a generation number (bumped on reset,
 * prefill and as a clone's destination) so that it re-uploads a sequence
 * whose history changed. A backend that also offers dcache_step runs the
 * rest of the step there (the gate MLP and the RoPE angles included): q,
 * the gates and the attention output stay on the device, and y comes
 * back. Two ways:
 * - device-resident (the mirror's dcache_resident says yes: opencl with
 *   any storage kind, step_resident): x_t goes up once, the
 *   K/V projections, the keys' RoPE, phi of an emitted token and the
 *   cache writes happen on the device, and only y_t and the selection
 *   come back. The mirror then holds the newest rows; the host arrays
 *   lag (seq_cache.hlen, hnc) and fetch_seq (vtable dcache_fetch) brings
 *   them up to date wherever they are read: a host step, clone, view,
 *   nsa_decode_compressed, the cached attention. Where the mirror stores
 *   K/V rounded (opencl's fp16 / bf16) the fetched raw, window and
 *   compressed rows are the stored, rounded values (the compression ring
 *   stays exact); rows written here (prefill, host steps) stay as
 *   computed, and the mirror rounds them on upload to the same bits;
 * - otherwise the host caches stay the source of truth: the K/V
 *   projections come to the host, which writes its caches (and runs phi),
 *   and the mirror is synced from them at each call.
 * A backend whose mirror cannot do a job here (its kernels unusable on
 * the device) says NSA_ERR_UNSUPPORTED: no mirror (dcache_new), or the
 * step again the host's way without dcache_step, for good (the failed try
 * changed nothing; the host's way fetches first). */
#include "decode.h"
#include "layer.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct seq_cache {
    int64_t len, cap; /* tokens held; capacity of ks/vs */
    float *ks, *vs;   /* raw selection K/V [cap][G][dk|dv] */
    float *kw, *vw;   /* window ring [w][G][..]: position p at row p % w */
    float *kr, *vr;   /* compression ring [l][G][..]: the keys phi reads */
    int64_t nc, ccap; /* emitted compressed tokens; capacity */
    float *kc, *vc;   /* [ccap][G][..] */
    /* what the host arrays hold (device-resident steps: the mirror holds
     * the rest): raw rows 0 .. hlen-1, the rings' rows of positions up to
     * hlen-1, compressed tokens 0 .. hnc-1; else hlen = len, hnc = nc */
    int64_t hlen, hnc;
} seq_cache;

struct nsa_decode_state {
    nsa_layer *L;
    int B;
    int64_t max_len;
    seq_cache *seq;
    nsa_decode_counters *cnt; /* [B][G], of the last step */
    int fail_after;           /* test hook, see decode.h */
    const nsa_backend_ops *be; /* owner of dc */
    void *dc;                 /* device mirror of the caches, or NULL */
    uint64_t *gen;            /* [B] generation of each sequence's history */
    int dc_fail;              /* test hook, see decode.h */
    int fail_late;            /* test hook, see decode.h */
    int64_t fused_steps;      /* steps run by the backend's dcache_step */
    int no_step;              /* dcache_step said NSA_ERR_UNSUPPORTED */
    int res;                  /* the mirror runs device-resident steps (dcache_resident) */
    float (*round)(int, float); /* test hook: stored rows rounded (nsa_decode_round_rows) */
    int round_kv;
};

void nsa_decode_round_rows(nsa_decode_state *st, float (*round)(int kv, float x), int kv)
{
    if (st) {
        st->round = round;
        st->round_kv = kv;
    }
}

/* rows rows of row floats at p as the round hook stores them */
static void round_rows(const nsa_decode_state *st, float *p, int64_t rows, size_t row)
{
    for (size_t i = 0; st->round && p && i < (size_t)rows * row; i++)
        p[i] = st->round(st->round_kv, p[i]);
}

void nsa_decode_fail_alloc_after(nsa_decode_state *st, int n)
{
    if (st)
        st->fail_after = n;
}

static void *st_alloc(nsa_decode_state *st, size_t bytes)
{
    if (st->fail_after > 0 && --st->fail_after == 0)
        return NULL;
    return malloc(bytes ? bytes : 1);
}

static const nsa_config *acfg(const nsa_decode_state *st) { return &st->L->cfg.attn; }
static size_t krow(const nsa_decode_state *st) { return (size_t)acfg(st)->G * acfg(st)->dk; }
static size_t vrow(const nsa_decode_state *st) { return (size_t)acfg(st)->G * acfg(st)->dv; }

static void seq_free(seq_cache *s)
{
    free(s->ks);
    free(s->vs);
    free(s->kw);
    free(s->vw);
    free(s->kr);
    free(s->vr);
    free(s->kc);
    free(s->vc);
}

void nsa_decode_free(nsa_decode_state *st)
{
    if (!st)
        return;
    for (int b = 0; st->seq && b < st->B; b++)
        seq_free(&st->seq[b]);
    if (st->dc)
        st->be->dcache_free(st->dc);
    free(st->seq);
    free(st->cnt);
    free(st->gen);
    free(st);
}

nsa_status nsa_decode_create(nsa_layer *L, int B, int64_t max_len, nsa_decode_state **out)
{
    if (!out || !L)
        return L ? nsa_fail(L->ctx, NSA_ERR_NULL, "out is NULL") : NSA_ERR_NULL;
    *out = NULL;
    if (B < 1)
        return nsa_fail(L->ctx, NSA_ERR_ZERO_SIZE, "B=%d must be >= 1", B);
    if (max_len < 0)
        return nsa_fail(L->ctx, NSA_ERR_ARG, "max_len=%lld must be >= 0 (0 = no limit)",
                        (long long)max_len);
    nsa_decode_state *st = calloc(1, sizeof *st);
    if (!st)
        return nsa_fail(L->ctx, NSA_ERR_NOMEM, "out of memory for the decode state");
    st->L = L;
    st->B = B;
    st->max_len = max_len;
    st->seq = calloc((size_t)B, sizeof *st->seq);
    st->cnt = calloc((size_t)B * (size_t)L->cfg.attn.G, sizeof *st->cnt);
    st->gen = calloc((size_t)B, sizeof *st->gen);
    int ok = st->seq && st->cnt && st->gen;
    const nsa_config *c = &L->cfg.attn;
    for (int b = 0; ok && b < B; b++) {
        seq_cache *s = &st->seq[b];
        s->kw = malloc(sizeof(float) * (size_t)c->w * krow(st));
        s->vw = malloc(sizeof(float) * (size_t)c->w * vrow(st));
        s->kr = malloc(sizeof(float) * (size_t)c->l * krow(st));
        s->vr = malloc(sizeof(float) * (size_t)c->l * vrow(st));
        ok = s->kw && s->vw && s->kr && s->vr;
    }
    if (!ok) {
        nsa_decode_free(st);
        return nsa_fail(L->ctx, NSA_ERR_NOMEM, "out of memory for %d decode caches", B);
    }
    st->be = L->ctx->be;
    if (st->be->dcache_new && st->be->dcache_new(L->ctx, c, B, &st->dc) != NSA_OK) {
        /* not fatal: steps attend over the host caches */
        st->dc = NULL;
        nsa_log(L->ctx, "decode: no device cache on '%s' (%s): using the host caches",
                st->be->name, L->ctx->msg);
    }
    st->res = st->dc && st->be->dcache_step && st->be->dcache_resident &&
              st->be->dcache_fetch && st->be->dcache_resident(st->dc);
    *out = st;
    return NSA_OK;
}

nsa_status nsa_decode_reset(nsa_decode_state *st, int b)
{
    if (!st)
        return NSA_ERR_NULL;
    if (b < -1 || b >= st->B)
        return nsa_fail(st->L->ctx, NSA_ERR_ARG, "sequence %d outside 0..%d (or -1 = all)", b,
                        st->B - 1);
    const int G = acfg(st)->G;
    for (int i = (b < 0 ? 0 : b); i < (b < 0 ? st->B : b + 1); i++) {
        st->seq[i].len = 0;
        st->seq[i].nc = 0;
        st->seq[i].hlen = 0;
        st->seq[i].hnc = 0;
        st->gen[i]++;
        memset(st->cnt + (size_t)i * G, 0, sizeof *st->cnt * (size_t)G);
    }
    return NSA_OK;
}

int64_t nsa_decode_length(const nsa_decode_state *st, int b)
{
    return (st && b >= 0 && b < st->B) ? st->seq[b].len : -1;
}

size_t nsa_decode_memory(const nsa_decode_state *st)
{
    if (!st)
        return 0;
    const nsa_config *c = acfg(st);
    size_t bytes = sizeof *st + sizeof(seq_cache) * (size_t)st->B +
                   sizeof(nsa_decode_counters) * (size_t)st->B * (size_t)c->G;
    for (int b = 0; b < st->B; b++) {
        const seq_cache *s = &st->seq[b];
        bytes += sizeof(float) * (krow(st) + vrow(st)) *
                 ((size_t)s->cap + (size_t)s->ccap + (size_t)c->w + (size_t)c->l);
    }
    return bytes;
}

nsa_status nsa_decode_get_counters(const nsa_decode_state *st, int b, int g,
                                   nsa_decode_counters *out)
{
    if (!st || !out)
        return NSA_ERR_NULL;
    if (b < 0 || b >= st->B || g < 0 || g >= acfg(st)->G)
        return nsa_fail(st->L->ctx, NSA_ERR_ARG, "(sequence %d, group %d) outside %d x %d", b,
                        g, st->B, acfg(st)->G);
    *out = st->cnt[(size_t)b * acfg(st)->G + g];
    return NSA_OK;
}

static nsa_status reserve(nsa_decode_state *st, const int64_t *need_tok,
                          const int64_t *need_cmp);

/* The host caches of sequence b brought up to date from the mirror
 * (device-resident steps leave them behind): raw rows from hlen, the
 * ring rows of the positions the host's readers need (window: len-w ..
 * len-1, the view of the last token; compression ring: len-l+1 .. len-1,
 * the next step's phi), compressed tokens from hnc. Room first (a failure
 * leaves the state as it was: the capacity may have grown); a failed
 * download leaves hlen, hnc as they were (rows past them are free to
 * hold anything, so a partial download is harmless). */
static nsa_status fetch_seq(nsa_decode_state *st, int b)
{
    seq_cache *q = &st->seq[b];
    if (q->hlen >= q->len && q->hnc >= q->nc)
        return NSA_OK;
    if (!st->dc || !st->be->dcache_fetch)
        return nsa_fail(st->L->ctx, NSA_ERR_BACKEND,
                        "decode: sequence %d's newest rows are on a device without a fetch", b);
    int64_t *need = calloc(2 * (size_t)st->B, sizeof(int64_t));
    if (!need)
        return nsa_fail(st->L->ctx, NSA_ERR_NOMEM, "out of memory");
    need[b] = q->len;
    need[st->B + b] = q->nc;
    nsa_status s = reserve(st, need, need + st->B);
    free(need);
    if (s != NSA_OK)
        return s;
    const nsa_config *c = acfg(st);
    const int64_t w0 = q->len - c->w, l0 = q->len - c->l + 1;
    const nsa_dfetch f = {b,     q->len, q->hlen, w0 > q->hlen ? w0 : q->hlen,
                          l0 > q->hlen ? l0 : q->hlen, q->nc, q->hnc, q->ks, q->vs,
                          q->kw, q->vw, q->kr, q->vr, q->kc, q->vc};
    s = st->be->dcache_fetch(st->L->ctx, st->dc, &f);
    if (s == NSA_OK) {
        q->hlen = q->len;
        q->hnc = q->nc;
    }
    return s;
}

static nsa_status fetch_all(nsa_decode_state *st)
{
    nsa_status s = NSA_OK;
    for (int b = 0; b < st->B && s == NSA_OK; b++)
        s = fetch_seq(st, b);
    return s;
}

/* The readers of the host caches below take a const state: the host
 * arrays are a lagging copy of the mirror's rows, and bringing them up to
 * date (fetch_seq) changes nothing a caller can observe but those arrays'
 * contents past what they held (lengths, counters and the rows' values as
 * the API defines them stay), so it goes through the state's own
 * non-const storage (every state is made by nsa_decode_create, on the
 * heap). Not thread-safe with another call on the same state, as no call
 * on a state is. */
static nsa_status fetch_const(const nsa_decode_state *st, int b)
{
    return fetch_seq((nsa_decode_state *)(uintptr_t)st, b);
}

nsa_status nsa_decode_compressed(const nsa_decode_state *st, int b, const float **kc,
                                 const float **vc, int64_t *count)
{
    if (!st)
        return NSA_ERR_NULL;
    if (b < 0 || b >= st->B)
        return nsa_fail(st->L->ctx, NSA_ERR_ARG, "sequence %d outside 0..%d", b, st->B - 1);
    nsa_status s = fetch_const(st, b);
    if (s != NSA_OK)
        return s;
    if (kc)
        *kc = st->seq[b].kc;
    if (vc)
        *vc = st->seq[b].vc;
    if (count)
        *count = st->seq[b].nc;
    return NSA_OK;
}

nsa_status nsa_decode_view(const nsa_decode_state *st, int b, nsa_decode_seq *out)
{
    if (!st || !out)
        return NSA_ERR_NULL;
    if (b < 0 || b >= st->B || st->seq[b].len == 0)
        return nsa_fail(st->L->ctx, NSA_ERR_ARG, "sequence %d is out of range or empty", b);
    nsa_status f = fetch_const(st, b);
    if (f != NSA_OK)
        return f;
    const seq_cache *s = &st->seq[b];
    *out = (nsa_decode_seq){s->len - 1, s->kc, s->vc, s->ks, s->vs, s->kw, s->vw, s->kr, s->vr};
    return NSA_OK;
}

/* ------------------------------------------------------------- growth */
/* New buffers for the sequences that need more room, swapped in only when
 * all of them were allocated. */
typedef struct growth {
    float *ks, *vs, *kc, *vc;
    int64_t cap, ccap;
} growth;

static int64_t grown(int64_t cap, int64_t need)
{
    int64_t c = cap < 16 ? 16 : cap;
    while (c < need)
        c *= 2;
    return c;
}

static nsa_status reserve(nsa_decode_state *st, const int64_t *need_tok,
                          const int64_t *need_cmp)
{
    growth *gr = calloc((size_t)st->B, sizeof *gr);
    if (!gr)
        return nsa_fail(st->L->ctx, NSA_ERR_NOMEM, "out of memory growing the caches");
    int ok = 1;
    for (int b = 0; ok && b < st->B; b++) {
        const seq_cache *s = &st->seq[b];
        if (need_tok[b] > s->cap) {
            gr[b].cap = grown(s->cap, need_tok[b]);
            gr[b].ks = st_alloc(st, sizeof(float) * (size_t)gr[b].cap * krow(st));
            gr[b].vs = st_alloc(st, sizeof(float) * (size_t)gr[b].cap * vrow(st));
            ok = gr[b].ks && gr[b].vs;
        }
        if (ok && need_cmp[b] > s->ccap) {
            gr[b].ccap = grown(s->ccap, need_cmp[b]);
            gr[b].kc = st_alloc(st, sizeof(float) * (size_t)gr[b].ccap * krow(st));
            gr[b].vc = st_alloc(st, sizeof(float) * (size_t)gr[b].ccap * vrow(st));
            ok = gr[b].kc && gr[b].vc;
        }
    }
    for (int b = 0; b < st->B; b++) {
        seq_cache *s = &st->seq[b];
        if (!ok) {
            free(gr[b].ks);
            free(gr[b].vs);
            free(gr[b].kc);
            free(gr[b].vc);
            continue;
        }
        if (gr[b].ks) {
            /* what the host arrays hold (hlen <= len: device-resident steps) */
            memcpy(gr[b].ks, s->ks ? s->ks : gr[b].ks, sizeof(float) * (size_t)s->hlen * krow(st));
            memcpy(gr[b].vs, s->vs ? s->vs : gr[b].vs, sizeof(float) * (size_t)s->hlen * vrow(st));
            free(s->ks);
            free(s->vs);
            s->ks = gr[b].ks;
            s->vs = gr[b].vs;
            s->cap = gr[b].cap;
        }
        if (gr[b].kc) {
            memcpy(gr[b].kc, s->kc ? s->kc : gr[b].kc, sizeof(float) * (size_t)s->hnc * krow(st));
            memcpy(gr[b].vc, s->vc ? s->vc : gr[b].vc, sizeof(float) * (size_t)s->hnc * vrow(st));
            free(s->kc);
            free(s->vc);
            s->kc = gr[b].kc;
            s->vc = gr[b].vc;
            s->ccap = gr[b].ccap;
        }
    }
    free(gr);
    return ok ? NSA_OK
              : nsa_fail(st->L->ctx, NSA_ERR_NOMEM,
                         "out of memory growing the decode caches (state unchanged)");
}

/* ------------------------------------------------------------- prefill */
static nsa_status check_capacity(const nsa_decode_state *st, int b, int64_t need)
{
    if (st->max_len > 0 && need > st->max_len)
        return nsa_fail(st->L->ctx, NSA_ERR_CAPACITY,
                        "sequence %d would hold %lld tokens, past max_len=%lld", b,
                        (long long)need, (long long)st->max_len);
    if (need > INT32_MAX)
        return nsa_fail(st->L->ctx, NSA_ERR_RANGE, "sequence %d would pass 2^31-1 tokens", b);
    return NSA_OK;
}

nsa_status nsa_decode_prefill(nsa_decode_state *st, int b, const float *x, int64_t S, float *y)
{
    if (!st)
        return NSA_ERR_NULL;
    nsa_layer *L = st->L;
    nsa_context *ctx = L->ctx;
    const nsa_config *c = acfg(st);
    if (!x)
        return nsa_fail(ctx, NSA_ERR_NULL, "x must not be NULL");
    if (b < 0 || b >= st->B)
        return nsa_fail(ctx, NSA_ERR_ARG, "sequence %d outside 0..%d", b, st->B - 1);
    if (S < 1)
        return nsa_fail(ctx, NSA_ERR_ZERO_SIZE, "S=%lld must be >= 1", (long long)S);
    if (st->seq[b].len != 0)
        return nsa_fail(ctx, NSA_ERR_ARG,
                        "prefill needs an empty sequence: %d holds %lld tokens (reset it)", b,
                        (long long)st->seq[b].len);
    nsa_status s = check_capacity(st, b, S);
    if (s != NSA_OK)
        return s;
    st->gen[b]++; /* whatever happens next, the mirror's copy is history */
    int64_t *need = calloc(2 * (size_t)st->B, sizeof(int64_t));
    if (!need)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory");
    const int64_t C = nsa_cmp_tokens(c, S);
    need[b] = S;
    need[st->B + b] = C;
    s = reserve(st, need, need + st->B);
    free(need);
    if (s != NSA_OK)
        return s;

    seq_cache *sq = &st->seq[b];
    int32_t cu[2] = {0, (int32_t)S};
    int64_t cmp_off[2] = {0, C};
    nsa_batch bt = {1, S, cu, NULL, cmp_off, (int)S};
    nsa_acts act;
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)S);
    float *o = y ? malloc(sizeof(float) * (size_t)S * c->H * c->dv) : NULL;
    if (!pos || (y && !o)) {
        free(pos);
        free(o);
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for a prompt of %lld tokens",
                        (long long)S);
    }
    for (int64_t t = 0; t < S; t++)
        pos[t] = t;
    s = nsa_layer_project(L, x, S, pos, NULL, &act);
    free(pos);
    if (s != NSA_OK) {
        free(o);
        return s;
    }
    nsa_kc_hook hook = act.kraw ? nsa_layer_rope_after : NULL;
    if (y) {
        /* the prompt's outputs; phi writes straight into the cache */
        s = nsa_layer_attend(L, &bt, &act, NULL, sq->kc, sq->vc, o, y);
    } else if (C > 0) {
        /* caches only: phi, no attention */
        nsa_cmp_job ck = {c, &bt, act.k_for_phi, c->dk, &L->phi_k, sq->kc};
        nsa_cmp_job cv = {c, &bt, act.v[NSA_BR_CMP], c->dv, &L->phi_v, sq->vc};
        s = nsa_run_compress(ctx, &ck);
        if (s == NSA_OK)
            s = nsa_run_compress(ctx, &cv);
        if (s == NSA_OK && hook)
            hook((void *)&L->cfg, &bt, sq->kc);
    }
    if (s == NSA_OK) {
        const size_t kr = krow(st), vr = vrow(st);
        memcpy(sq->ks, act.k[NSA_BR_SLC], sizeof(float) * (size_t)S * kr);
        memcpy(sq->vs, act.v[NSA_BR_SLC], sizeof(float) * (size_t)S * vr);
        for (int64_t p = S > c->w ? S - c->w : 0; p < S; p++) {
            memcpy(sq->kw + (size_t)(p % c->w) * kr, act.k[NSA_BR_WIN] + (size_t)p * kr,
                   sizeof(float) * kr);
            memcpy(sq->vw + (size_t)(p % c->w) * vr, act.v[NSA_BR_WIN] + (size_t)p * vr,
                   sizeof(float) * vr);
        }
        for (int64_t p = S > c->l ? S - c->l : 0; p < S; p++) {
            memcpy(sq->kr + (size_t)(p % c->l) * kr, act.k_for_phi + (size_t)p * kr,
                   sizeof(float) * kr);
            memcpy(sq->vr + (size_t)(p % c->l) * vr, act.v[NSA_BR_CMP] + (size_t)p * vr,
                   sizeof(float) * vr);
        }
        if (st->round) { /* test hook: rows as a rounding device stores them */
            const int64_t nw = S < c->w ? S : c->w;
            round_rows(st, sq->ks, S, kr);
            round_rows(st, sq->vs, S, vr);
            round_rows(st, sq->kc, C, kr);
            round_rows(st, sq->vc, C, vr);
            for (int64_t p = S - nw; p < S; p++) {
                round_rows(st, sq->kw + (size_t)(p % c->w) * kr, 1, kr);
                round_rows(st, sq->vw + (size_t)(p % c->w) * vr, 1, vr);
            }
        }
        sq->len = S;
        sq->nc = C;
        sq->hlen = S;
        sq->hnc = C;
    }
    nsa_acts_free(&act);
    free(o);
    return s;
}

/* -------------------------------------------------------------- mirror */
/* The decode attention (or the dense baseline) of a job over the caches:
 * through the device mirror when there is one. */
static nsa_status attend_job(nsa_decode_state *st, const nsa_decode_job *job, int dense)
{
    nsa_context *ctx = st->L->ctx;
    if (!st->dc || (dense && !st->be->dcache_dense))
        return dense ? nsa_run_dense_decode(ctx, job) : nsa_run_decode_attend(ctx, job);
    nsa_dcache_sync sync = {st->gen, st->dc_fail, 0};
    st->dc_fail = 0;
    return dense ? st->be->dcache_dense(ctx, st->dc, job, &sync)
                 : st->be->dcache_attend(ctx, st->dc, job, &sync);
}

int nsa_decode_has_mirror(const nsa_decode_state *st) { return st && st->dc; }

int64_t nsa_decode_fused_steps(const nsa_decode_state *st) { return st ? st->fused_steps : 0; }

/* The step's q, gates and o stay on the device (vtable dcache_step): a
 * mirror and a backend that offers it. */
static int fused(const nsa_decode_state *st)
{
    return st->dc && st->be->dcache_step && !st->no_step;
}

int nsa_decode_resident(const nsa_decode_state *st) { return st && st->res && fused(st); }

int64_t nsa_decode_host_len(const nsa_decode_state *st, int b)
{
    return (st && b >= 0 && b < st->B) ? st->seq[b].hlen : -1;
}

int nsa_decode_host_angles(const nsa_decode_state *st)
{
    return nsa_decode_resident(st) && st->be->dcache_host_angles &&
           st->be->dcache_host_angles(st->dc);
}

void nsa_decode_bus(nsa_decode_state *st, uint64_t io[3])
{
    io[0] = io[1] = io[2] = 0;
    if (st && st->dc && st->be->dcache_bus)
        st->be->dcache_bus(st->dc, io);
}

void nsa_decode_host_steps(nsa_decode_state *st)
{
    if (st)
        st->no_step = 1;
}

static void nan_rows(float *p, int64_t from, int64_t to, size_t row)
{
    for (int64_t r = from; p && r < to; r++)
        for (size_t i = 0; i < row; i++)
            p[(size_t)r * row + i] = NAN;
}

void nsa_decode_poison_host(nsa_decode_state *st)
{
    if (!st)
        return;
    const nsa_config *c = acfg(st);
    const size_t kr = krow(st), vr = vrow(st);
    for (int b = 0; b < st->B; b++) {
        seq_cache *q = &st->seq[b];
        if (q->hlen >= q->len && q->hnc >= q->nc)
            continue;
        nan_rows(q->ks, q->hlen, q->cap, kr);
        nan_rows(q->vs, q->hlen, q->cap, vr);
        nan_rows(q->kc, q->hnc, q->ccap, kr);
        nan_rows(q->vc, q->hnc, q->ccap, vr);
        for (int64_t p = q->hlen; p < q->len; p++) {
            nan_rows(q->kw, p % c->w, p % c->w + 1, kr);
            nan_rows(q->vw, p % c->w, p % c->w + 1, vr);
            nan_rows(q->kr, p % c->l, p % c->l + 1, kr);
            nan_rows(q->vr, p % c->l, p % c->l + 1, vr);
        }
    }
}

void nsa_decode_fail_mirror_after(nsa_decode_state *st, int n)
{
    if (st)
        st->dc_fail = n;
}

void nsa_decode_fail_after_attend(nsa_decode_state *st)
{
    if (st)
        st->fail_late = 1;
}

nsa_status nsa_decode_attend_cached(nsa_decode_state *st, const float *q, const float *gates,
                                    float *o, int32_t *sel, int dense)
{
    if (!st || !q || !o || !sel || (!dense && !gates))
        return NSA_ERR_NULL;
    const nsa_config *c = acfg(st);
    nsa_decode_seq *sd = malloc(sizeof *sd * (size_t)st->B);
    if (!sd)
        return nsa_fail(st->L->ctx, NSA_ERR_NOMEM, "out of memory");
    nsa_status s = NSA_OK;
    int64_t max_t = 0;
    for (int b = 0; b < st->B && s == NSA_OK; b++)
        if ((s = nsa_decode_view(st, b, &sd[b])) == NSA_OK && sd[b].t > max_t)
            max_t = sd[b].t;
    nsa_csr map = {0};
    if (s == NSA_OK)
        s = nsa_bm_map_build(c, nsa_bm_n_sel_visible(c, max_t), nsa_bm_n_cmp(c, max_t), &map);
    if (s == NSA_OK) {
        nsa_decode_job job = {c, nsa_config_scale(c), &map, st->B, sd, q, gates, o,
                              NULL, NULL, NULL, sel};
        s = attend_job(st, &job, dense);
    }
    nsa_bm_map_free(&map);
    free(sd);
    return s;
}

nsa_status nsa_decode_clone_seq(nsa_decode_state *st, int dst, int src)
{
    if (!st)
        return NSA_ERR_NULL;
    if (dst < 0 || dst >= st->B || src < 0 || src >= st->B || dst == src ||
        st->seq[dst].len != 0 || st->seq[src].len == 0)
        return nsa_fail(st->L->ctx, NSA_ERR_ARG,
                        "clone needs two sequences, the destination empty, the source not "
                        "(%d <- %d)",
                        dst, src);
    nsa_status s = fetch_seq(st, src); /* the copy is made on the host */
    if (s != NSA_OK)
        return s;
    int64_t *need = calloc(2 * (size_t)st->B, sizeof(int64_t));
    if (!need)
        return nsa_fail(st->L->ctx, NSA_ERR_NOMEM, "out of memory");
    const seq_cache *a = &st->seq[src];
    need[dst] = a->len;
    need[st->B + dst] = a->nc;
    s = reserve(st, need, need + st->B);
    free(need);
    if (s != NSA_OK)
        return s;
    const nsa_config *c = acfg(st);
    const size_t kr = krow(st), vr = vrow(st);
    seq_cache *d = &st->seq[dst];
    memcpy(d->ks, a->ks, sizeof(float) * (size_t)a->len * kr);
    memcpy(d->vs, a->vs, sizeof(float) * (size_t)a->len * vr);
    if (a->nc > 0) {
        memcpy(d->kc, a->kc, sizeof(float) * (size_t)a->nc * kr);
        memcpy(d->vc, a->vc, sizeof(float) * (size_t)a->nc * vr);
    }
    memcpy(d->kw, a->kw, sizeof(float) * (size_t)c->w * kr);
    memcpy(d->vw, a->vw, sizeof(float) * (size_t)c->w * vr);
    memcpy(d->kr, a->kr, sizeof(float) * (size_t)c->l * kr);
    memcpy(d->vr, a->vr, sizeof(float) * (size_t)c->l * vr);
    d->len = d->hlen = a->len;
    d->nc = d->hnc = a->nc;
    st->gen[dst]++;
    return NSA_OK;
}

/* ---------------------------------------------------------------- step */
static int emits(const nsa_config *c, int64_t t)
{
    return t + 1 >= c->l && (t + 1 - c->l) % c->d == 0;
}

/* A step's commit: lengths, and what this step read (host: the host
 * arrays hold the new rows too). */
static void commit(nsa_decode_state *st, const int32_t *sel, const nsa_layer_aux *aux, int host)
{
    const nsa_config *c = acfg(st);
    const int B = st->B, G = c->G, n = c->n;
    for (int b = 0; b < B; b++) {
        seq_cache *sq = &st->seq[b];
        const int64_t t = sq->len;
        sq->nc += emits(c, t);
        sq->len = t + 1;
        if (host) {
            sq->hlen = sq->len;
            sq->hnc = sq->nc;
        }
        for (int g = 0; g < G; g++) {
            nsa_decode_counters *k = &st->cnt[(size_t)b * G + g];
            const int32_t *sg = sel + ((size_t)b * G + g) * n;
            k->t = t;
            k->cmp = nsa_bm_n_cmp(c, t);
            k->slc = 0;
            for (int i = 0; i < n; i++)
                if (sg[i] >= 0) {
                    int64_t lo = (int64_t)sg[i] * c->l_sel, hi = lo + c->l_sel;
                    k->slc += (hi > t + 1 ? t + 1 : hi) - lo;
                }
            k->win = t + 1 < c->w ? t + 1 : c->w;
            k->dense = t + 1;
            k->bytes = (k->cmp + k->slc + k->win) * (int64_t)(c->dk + c->dv) *
                       (int64_t)sizeof(float);
        }
        if (aux && aux->selection)
            memcpy(aux->selection + (size_t)b * G * n, sel + (size_t)b * G * n,
                   sizeof(int32_t) * (size_t)G * n);
    }
}

/* dcache_step's job for the attention job `job`: q, the gates (with a
 * gate MLP both linears) and Wo as keyed linears in lj, key; the
 * device-resident parts (kv ...) empty. */
static nsa_dstep_job dstep_job(nsa_layer *L, const nsa_decode_job *job, const float *x, float *y,
                               const nsa_layer_aux *aux, nsa_linear_job lj[4], nsa_wkey key[4])
{
    nsa_layer_step_jobs(L, job->B, lj, key);
    return (nsa_dstep_job){job, x, &lj[0], &lj[1], &lj[2],
                           L->cfg.gate_hidden > 0 ? &lj[3] : NULL, L->cfg.rope_dim,
                           L->cfg.rope_base, L->cfg.gate_act == NSA_GATE_SIGMOID,
                           L->cfg.gate_tau, aux ? aux->gates : NULL, y, NULL, 0, 0, NULL, NULL,
                           {{NULL}}};
}

/* dcache_step (fail_late: the mirror's late-failure test hook) and its
 * bookkeeping: a step done is counted; NSA_ERR_UNSUPPORTED (nothing done)
 * sends this step, which nsa_decode_step tries again, and every later one
 * the host's way (`instead`, logged), the operation hook kept for the
 * second try. */
static nsa_status run_dstep(nsa_decode_state *st, const nsa_dstep_job *sj, int fail_late,
                            const char *instead)
{
    nsa_context *ctx = st->L->ctx;
    const nsa_dcache_sync sync = {st->gen, st->dc_fail, fail_late};
    st->dc_fail = 0;
    const nsa_status s = st->be->dcache_step(ctx, st->dc, sj, &sync);
    if (s == NSA_OK)
        st->fused_steps++;
    if (s == NSA_ERR_UNSUPPORTED) {
        st->no_step = 1;
        st->dc_fail = sync.fail_at;
        nsa_log(ctx, "decode: no device step on '%s' (%s): %s", st->be->name, ctx->msg, instead);
    }
    return s;
}

/* The whole step on the device (dcache_step with the mirror holding the
 * rows: only x goes up, y and the selection come down). Failure safety:
 * nothing on the host is written before the call succeeds; the call
 * writes on the device only raw row t and compressed token nc (past the
 * committed lengths), ring slots t % w and t % l (positions t-w and t-l:
 * no later step reads them, the window of step t being t-w+1 .. t and
 * phi's input t-l+1 .. t; the window slot, which the host's view of t-1
 * reads, is put back by the mirror on failure), and keeps the rows of a
 * sequence it did not upload valid whatever fails, so a failed step
 * leaves every row the state holds where it was, and lengths and counters
 * are not bumped. */
static nsa_status step_resident(nsa_layer *L, nsa_decode_state *st, const float *x, float *y,
                                const nsa_layer_aux *aux)
{
    nsa_context *ctx = L->ctx;
    const nsa_config *c = acfg(st);
    const int B = st->B, G = c->G, n = c->n;
    int64_t max_t = 0;
    for (int b = 0; b < B; b++)
        max_t = st->seq[b].len > max_t ? st->seq[b].len : max_t;
    /* the mapping for positions up to map_t = 2^k - 1 >= max_t: the mirror
     * keeps the one it holds while its rows and entries match, so it goes
     * up when max_t passes a power of two, not whenever a block or token
     * appears (the kernels skip blocks and tokens past each sequence's) */
    int64_t map_t = 63;
    while (map_t < max_t)
        map_t = 2 * map_t + 1;
    int32_t *sel = st_alloc(st, sizeof(int32_t) * (size_t)B * G * n);
    nsa_decode_seq *sd = st_alloc(st, sizeof *sd * (size_t)B);
    nsa_csr map = {0};
    nsa_status s = NSA_OK;
    if (!sel || !sd)
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for a decode step (state unchanged)");
    if (s == NSA_OK &&
        (s = nsa_bm_map_build(c, nsa_bm_n_sel_visible(c, map_t), nsa_bm_n_cmp(c, map_t),
                              &map)) != NSA_OK)
        nsa_fail(ctx, s, "out of memory for the mapping (state unchanged)");
    if (s == NSA_OK) {
        for (int b = 0; b < B; b++) {
            /* the host caches: the mirror reads them only for a sequence
             * whose copy there is stale, and then they hold rows 0 .. t-1 */
            const seq_cache *sq = &st->seq[b];
            sd[b] = (nsa_decode_seq){sq->len, sq->kc, sq->vc, sq->ks, sq->vs,
                                     sq->kw,  sq->vw, sq->kr, sq->vr};
        }
        nsa_decode_job job = {c,    nsa_config_scale(c),      &map, B, sd, NULL, NULL, NULL,
                              aux ? aux->out_cmp : NULL, aux ? aux->out_slc : NULL,
                              aux ? aux->out_win : NULL, sel};
        nsa_linear_job lj[4], kj[6], pj[2][3];
        nsa_wkey key[4], kkey[6], pkey[2][3];
        nsa_dstep_job sj = dstep_job(L, &job, x, y, aux, lj, key);
        sj.nkv = nsa_layer_kv_jobs(L, B, kj, kkey);
        sj.kv = kj;
        sj.rope_after = L->cfg.rope_cmp == NSA_ROPE_AFTER;
        sj.phi_k = &L->phi_k;
        sj.phi_v = &L->phi_v;
        for (int kind = 0; kind < 2; kind++)
            nsa_layer_phi_jobs(L, kind, pj[kind], pkey[kind], sj.phi_w[kind]);
        /* the injected late failure happens in the mirror, after its
         * last operation (its rows then written, the step not committed) */
        const int late = st->fail_late;
        st->fail_late = 0;
        s = run_dstep(st, &sj, late, "the host's way");
        if (s == NSA_ERR_UNSUPPORTED)
            st->fail_late = late; /* for the second try */
    }
    if (s == NSA_OK)
        commit(st, sel, aux, 0);
    nsa_bm_map_free(&map);
    free(sel);
    free(sd);
    return s;
}

static nsa_status step_once(nsa_layer *L, nsa_decode_state *st, const float *x, float *y,
                            const nsa_layer_aux *aux)
{
    if (!L || !st)
        return NSA_ERR_NULL;
    nsa_context *ctx = L->ctx;
    if (st->L != L)
        return nsa_fail(ctx, NSA_ERR_ARG, "the decode state belongs to another layer");
    if (!x || !y)
        return nsa_fail(ctx, NSA_ERR_NULL, "x_t and y_t must not be NULL");
    const nsa_config *c = acfg(st);
    const int B = st->B, G = c->G, H = c->H, n = c->n;
    const size_t kr = krow(st), vr = vrow(st);
    nsa_status s = NSA_OK;
    for (int b = 0; b < B && s == NSA_OK; b++)
        s = check_capacity(st, b, st->seq[b].len + 1);
    if (s != NSA_OK)
        return s;
    if (fused(st) && st->res)
        return step_resident(L, st, x, y, aux);
    /* the host's way over caches that device-resident steps left behind
     * (after the device step said NSA_ERR_UNSUPPORTED) */
    if ((s = fetch_all(st)) != NSA_OK)
        return s;

    /* phase 1: what each sequence needs */
    int64_t *need = malloc(sizeof(int64_t) * 3 * (size_t)B);
    if (!need)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory");
    int64_t max_t = 0;
    for (int b = 0; b < B; b++) {
        const int64_t t = st->seq[b].len;
        need[b] = t + 1;
        need[B + b] = st->seq[b].nc + emits(c, t);
        need[2 * B + b] = t;
        if (t > max_t)
            max_t = t;
    }
    /* phase 2: temporaries (all allocated before anything is written) */
    nsa_acts act;
    memset(&act, 0, sizeof act);
    nsa_csr map = {0};
    const int dev = fused(st);
    int late = 0; /* fail_late kept for the second try (see nsa_decode_step) */
    /* o only when it comes to the host (the fused step keeps it on the device) */
    float *o = dev ? NULL : st_alloc(st, sizeof(float) * (size_t)B * H * c->dv);
    int32_t *sel = st_alloc(st, sizeof(int32_t) * (size_t)B * G * n);
    nsa_decode_seq *sd = st_alloc(st, sizeof *sd * (size_t)B);
    /* per sequence: the new compressed token, then the saved ring rows */
    const size_t per = 2 * (kr + vr) + (kr + vr);
    float *tmp = st_alloc(st, sizeof(float) * (size_t)B * per);
    float *zk = st_alloc(st, sizeof(float) * (size_t)c->l * (kr + vr));
    if (s == NSA_OK && ((!dev && !o) || !sel || !sd || !tmp || !zk))
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for a decode step (state unchanged)");
    if (s == NSA_OK &&
        (s = nsa_bm_map_build(c, nsa_bm_n_sel_visible(c, max_t), nsa_bm_n_cmp(c, max_t),
                              &map)) != NSA_OK)
        nsa_fail(ctx, s, "out of memory for the mapping (state unchanged)");
    if (s == NSA_OK)
        s = dev ? nsa_layer_project_kv(L, x, B, need + 2 * B, &act)
                : nsa_layer_project(L, x, B, need + 2 * B, aux ? aux->gates : NULL, &act);

    /* compressed token due at t: phi over the ring's last l-1 rows + the new row */
    for (int b = 0; b < B && s == NSA_OK; b++) {
        const seq_cache *sq = &st->seq[b];
        const int64_t t = sq->len;
        if (!emits(c, t))
            continue;
        float *zv = zk + (size_t)c->l * kr;
        for (int j = 0; j < c->l; j++) {
            const int64_t p = t - c->l + 1 + j;
            const float *ksrc = p == t ? act.k_for_phi + (size_t)b * kr : sq->kr + (size_t)(p % c->l) * kr;
            const float *vsrc = p == t ? act.v[NSA_BR_CMP] + (size_t)b * vr : sq->vr + (size_t)(p % c->l) * vr;
            memcpy(zk + (size_t)j * kr, ksrc, sizeof(float) * kr);
            memcpy(zv + (size_t)j * vr, vsrc, sizeof(float) * vr);
        }
        int32_t cu[2] = {0, c->l};
        int64_t off[2] = {0, 1};
        nsa_batch one = {1, c->l, cu, NULL, off, c->l};
        float *nk = tmp + (size_t)b * per, *nv = nk + kr;
        nsa_cmp_job ck = {c, &one, zk, c->dk, &L->phi_k, nk};
        nsa_cmp_job cv = {c, &one, zv, c->dv, &L->phi_v, nv};
        if ((s = nsa_run_compress(ctx, &ck)) == NSA_OK)
            s = nsa_run_compress(ctx, &cv);
        if (s == NSA_OK && act.kraw && L->cfg.rope_dim > 0)
            nsa_rope_apply(nk, G, c->dk, L->cfg.rope_dim, L->cfg.rope_base,
                           (double)(sq->nc * c->d));
    }

    /* room for one more token (and compressed token) everywhere; last of
     * the allocations, so a failure before it leaves even the capacity */
    if (s == NSA_OK)
        s = reserve(st, need, need + B);

    /* phase 3: write (saving the ring rows overwritten), attend, project */
    if (s == NSA_OK) {
        for (int b = 0; b < B; b++) {
            seq_cache *sq = &st->seq[b];
            const int64_t t = sq->len;
            float *save = tmp + (size_t)b * per + kr + vr;
            float *kwr = sq->kw + (size_t)(t % c->w) * kr, *vwr = sq->vw + (size_t)(t % c->w) * vr;
            float *krr = sq->kr + (size_t)(t % c->l) * kr, *vrr = sq->vr + (size_t)(t % c->l) * vr;
            memcpy(save, kwr, sizeof(float) * kr);
            memcpy(save + kr, vwr, sizeof(float) * vr);
            memcpy(save + kr + vr, krr, sizeof(float) * kr);
            memcpy(save + 2 * kr + vr, vrr, sizeof(float) * vr);
            memcpy(sq->ks + (size_t)t * kr, act.k[NSA_BR_SLC] + (size_t)b * kr, sizeof(float) * kr);
            memcpy(sq->vs + (size_t)t * vr, act.v[NSA_BR_SLC] + (size_t)b * vr, sizeof(float) * vr);
            memcpy(kwr, act.k[NSA_BR_WIN] + (size_t)b * kr, sizeof(float) * kr);
            memcpy(vwr, act.v[NSA_BR_WIN] + (size_t)b * vr, sizeof(float) * vr);
            memcpy(krr, act.k_for_phi + (size_t)b * kr, sizeof(float) * kr);
            memcpy(vrr, act.v[NSA_BR_CMP] + (size_t)b * vr, sizeof(float) * vr);
            if (emits(c, t)) {
                memcpy(sq->kc + (size_t)sq->nc * kr, tmp + (size_t)b * per, sizeof(float) * kr);
                memcpy(sq->vc + (size_t)sq->nc * vr, tmp + (size_t)b * per + kr,
                       sizeof(float) * vr);
                round_rows(st, sq->kc + (size_t)sq->nc * kr, 1, kr);
                round_rows(st, sq->vc + (size_t)sq->nc * vr, 1, vr);
            }
            /* test hook: the new rows as a rounding device stores them */
            round_rows(st, sq->ks + (size_t)t * kr, 1, kr);
            round_rows(st, sq->vs + (size_t)t * vr, 1, vr);
            round_rows(st, kwr, 1, kr);
            round_rows(st, vwr, 1, vr);
            sd[b] = (nsa_decode_seq){t,      sq->kc, sq->vc, sq->ks, sq->vs,
                                     sq->kw, sq->vw, sq->kr, sq->vr};
        }
        nsa_decode_job job = {c,   nsa_config_scale(c), &map, B,
                              sd,  act.q,               act.gates, dev ? NULL : o,
                              aux ? aux->out_cmp : NULL, aux ? aux->out_slc : NULL,
                              aux ? aux->out_win : NULL, sel};
        if (dev) {
            /* q, gates, o on the device: projections, attention and Wo in
             * one call; y (and what aux asks for) comes back */
            nsa_linear_job lj[4];
            nsa_wkey key[4];
            const nsa_dstep_job sj = dstep_job(L, &job, x, y, aux, lj, key);
            s = run_dstep(st, &sj, 0, "q, gates and Wo on their own");
            if (s == NSA_ERR_UNSUPPORTED)
                late = st->fail_late; /* test hook: for the second try */
        } else {
            s = attend_job(st, &job, 0);
        }
        if (s == NSA_OK && st->fail_late)
            s = nsa_fail(ctx, NSA_ERR_BACKEND, "injected failure after the attention (test)");
        st->fail_late = late;
        if (s == NSA_OK && !dev)
            s = nsa_layer_output(L, o, B, y);
        if (s != NSA_OK) {
            /* undo: only the ring rows hold something the state still needs */
            for (int b = 0; b < B; b++) {
                seq_cache *sq = &st->seq[b];
                const int64_t t = sq->len;
                const float *save = tmp + (size_t)b * per + kr + vr;
                memcpy(sq->kw + (size_t)(t % c->w) * kr, save, sizeof(float) * kr);
                memcpy(sq->vw + (size_t)(t % c->w) * vr, save + kr, sizeof(float) * vr);
                memcpy(sq->kr + (size_t)(t % c->l) * kr, save + kr + vr, sizeof(float) * kr);
                memcpy(sq->vr + (size_t)(t % c->l) * vr, save + 2 * kr + vr, sizeof(float) * vr);
            }
        }
    }
    if (s == NSA_OK)
        commit(st, sel, aux, 1);
    nsa_acts_free(&act);
    nsa_bm_map_free(&map);
    free(need);
    free(o);
    free(sel);
    free(sd);
    free(tmp);
    free(zk);
    return s;
}

nsa_status nsa_decode_step(nsa_layer *L, nsa_decode_state *st, const float *x, float *y,
                           const nsa_layer_aux *aux)
{
    const int no_step = !st || st->no_step;
    nsa_status s = step_once(L, st, x, y, aux);
    /* the fused step was unsupported and undone: the same step without it */
    if (s == NSA_ERR_UNSUPPORTED && !no_step && st->no_step)
        s = step_once(L, st, x, y, aux);
    return s;
}
