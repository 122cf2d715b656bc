/* Decode over device-resident caches (cl/decode.cl): the OpenCL backend's
 * mirror of a decode state's caches (the vtable's dcache_*), and the decode
 * attention and dense baseline over it.
 *
 * Each call first syncs what decode.c's host caches hold and the mirror
 * lacks: per sequence raw K/V rows from min(synced length, t) to t, the
 * window-ring rows of those positions and compressed rows from
 * min(synced count, n_cmp(t-1)). Taking the minimum with the committed
 * length t re-uploads row t after a step that failed past the sync. A
 * sequence whose generation changed (reset, prefill, clone) or whose last
 * upload failed is uploaded whole. The caches of all sequences share one
 * buffer per tensor with a common capacity that grows by doubling (copied
 * on the device; K and V grow together or the old pair stays).
 *
 * nsa_cl_dcache_step (vtable dcache_step) runs a decode step's q and gate
 * projections (the gate MLP's two linears and SiLU when it has a hidden
 * layer), RoPE of q (its angles in double here where the device has fp64,
 * else from the host), the gate activation, the attention and Wo here in
 * one call, so q, the gates and o stay in the mirror's buffers. With
 * dres (device-resident steps; any storage kind) it also takes the K/V
 * projections (dc_step_kv): x_t goes up once, the keys are rotated here
 * (by q's angles), the rows go into the caches from device memory
 * (nsa_dc_put_step, rounded there to the storage kind as nsa_dc_put
 * rounds uploaded rows), a compression ring per sequence (fp32 always)
 * feeds phi (cl/phi.cl's kernels) for the sequences whose step emits a
 * token, and only y_t and the selection come back; the host caches lag
 * and nsa_cl_dcache_fetch (nsa_dc_get) brings them what they lack: with
 * fp16 / bf16 storage the stored, rounded rows as floats (the ring's rows
 * exact). Failure safety of such a step: see dc_step_kv and
 * nsa_cl_dcache_step (a failure keeps every row a sequence held before
 * the step; only a sequence whose own upload failed is marked stale). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, for NSA_VERBOSE step timings */
#include "cl_run.h"
#include "cl_weights.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double dc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Most heads a work-group holds (cl/decode.cl's NSA_DC_HC). */
#define DC_HC 16
/* Work-groups of nsa_dc_partial a compute unit runs at once (an estimate:
 * 128 registers a lane at 128 lanes give 4 on an H200;
 * NSA_OPENCL_DECODE_RESIDENT overrides) and a work-group's
 * fixed cost in keys (q staging, softmax, barriers, writes), for the
 * choice of chunks below. */
#define DC_RESIDENT 4
#define DC_WG_KEYS 128

/* Keys per K tile (cl/decode.cl's NSA_DC_TK): capacities are multiples. */
#define DC_TK 64
/* Host staging of one upload batch: 16 MiB. */
#define DC_STAGE_FLOATS ((size_t)4 << 20)

typedef struct dc_seq {
    uint64_t gen;
    int64_t len, nc; /* rows synced: raw 0..len-1, compressed 0..nc-1 */
    int valid;
} dc_seq;

/* A scratch buffer that grows (contents not kept). */
typedef struct dc_buf {
    cl_mem m;
    size_t bytes;
} dc_buf;

enum { DB_Q, DB_GATES, DB_TPOS, DB_ZOUT, DB_S, DB_SEL, DB_PSTC, DB_PACCC, DB_PSTS,
       DB_PACCS, DB_OUT, DB_STAGE, DB_DESC, DB_RP, DB_COL, DB_VAL, DB_X, DB_ROPE, DB_ROPEC,
       DB_INVF, DB_Y, DB_GHID, DB_PLO,
       /* the device-resident step: K/V of the three branches, phi's input,
        * hidden layer and tokens, its src offsets, the window rows saved
        * for a failure, the fetch's staging */
       DB_K0, DB_V0 = DB_K0 + 3, DB_Z = DB_V0 + 3, DB_PHID, DB_TOKK, DB_TOKV, DB_PSRC, DB_SAVEK,
       DB_SAVEV, DB_FETCH, DB_COUNT };

/* A buffer the driver places in host memory, mapped once: the buffer,
 * its mapping, its floats. */
typedef struct dc_pin {
    cl_mem m;
    float *p;
    size_t n;
} dc_pin;
enum { DC_PIN_STEP, DC_PIN_STAGE };

typedef struct nsa_cl_dcache {
    nsa_cl_state *st;
    nsa_config cfg;
    int B, dk4, dv4, hc;
    int chunk_env[2]; /* NSA_OPENCL_DECODE_CHUNK: compressed/dense, selected */
    int resident;     /* work-groups a compute unit runs at once (chunk model) */
    int win_early;      /* NSA_OPENCL_DECODE_WINDOW=early: window with the compressed branch */
    nsa_cl_kv kv;      /* storage of the caches (the backend's at creation) */
    size_t es;         /* bytes of one stored element */
    int64_t cap, ccap; /* rows per (b, g) of the raw and compressed caches */
    int wcap;          /* rows per (b, g) of the rings: w rounded up to DC_TK */
    cl_mem kr, vr, kw, vw, kc, vc;
    dc_seq *seq;
    dc_buf buf[DB_COUNT];
    int map_rows, map_nnz; /* the mapping held in DB_RP/COL/VAL */
    /* nsa_dc_prob's plan for that mapping (dc_prob_plan): blocks a
     * work-group, most tokens and entries a work-group reads, and the
     * first token of each work-group's blocks (hplo, also in DB_PLO) */
    int prob_jpw, prob_pw, prob_ecap;
    int32_t *hplo;
    float *hstage;
    int32_t *hdesc, *htpos;
    int64_t *hpos; /* [2][B]: a step's positions and its emitted tokens' (host RoPE tables) */
    float *hrope; /* the fused step's host RoPE tables (devices without fp64): [2][B][dk] */
    size_t nstage, ndesc; /* filled */
    cl_kernel mma_k;      /* the state's nsa_dc_partial_mma if usable here, else NULL */
    int fail_at, ops;     /* test hook: the fail_at-th operation fails */
    int q_on_device;      /* fused step: q and the gates are in DB_Q, DB_GATES already */
    /* device-resident steps (the step's kernels usable): the rows are
     * written here, the host caches lag */
    int dres;
    /* RoPE angles in double on the device (cl/rope64.cl, cl_khr_fp64);
     * else the host's float table goes up with the positions */
    int rope64;
    /* the frequencies in DB_INVF (nsa_rope_inv_freq; hinv its host copy)
     * are those of (inv_rd, inv_base); inv_rd 0: none yet */
    int inv_rd;
    float inv_base;
    double *hinv;
    cl_mem kring, vring; /* compression rings [B][l][G][dk|dv], fp32 row-major */
    int psrc_ok;         /* DB_PSRC holds b l for phi's src */
    uint64_t bus[3];     /* test hook: bytes up, down, of them up the mapping */
    int in_map;          /* dc_map's writes are counted in bus[2] too */
    /* pinned host memory (dc_pinned), DC_PIN_STEP: the fused step's x and
     * y; DC_PIN_STAGE: the uploads' staging (stage points there, else at
     * the pageable hstage); pin_off: NSA_OPENCL_PINNED=0 or a pinned buffer
     * could not be made */
    dc_pin pin[2];
    int pin_off;
    float *stage;
} nsa_cl_dcache;

/* Counts one device operation; the test hook fails the chosen one. */
static nsa_status dc_op(nsa_context *ctx, nsa_cl_dcache *dc)
{
    if (dc->fail_at > 0 && ++dc->ops == dc->fail_at)
        return nsa_fail(ctx, NSA_ERR_BACKEND, "opencl: injected failure of device operation %d",
                        dc->fail_at);
    return NSA_OK;
}

static nsa_status dc_create(nsa_context *ctx, nsa_cl_dcache *dc, size_t bytes, cl_mem *out)
{
    nsa_status s = dc_op(ctx, dc);
    if (s != NSA_OK)
        return s;
    if (dc->st->max_alloc && bytes > dc->st->max_alloc)
        return nsa_fail(ctx, NSA_ERR_NOMEM,
                        "opencl decode: a buffer of %zu bytes exceeds the device's largest "
                        "allocation (%llu)",
                        bytes, (unsigned long long)dc->st->max_alloc);
    cl_int err;
    *out = clCreateBuffer(dc->st->context, CL_MEM_READ_WRITE, bytes ? bytes : 4, NULL, &err);
    return err == CL_SUCCESS ? NSA_OK : nsa_cl_fail(ctx, "clCreateBuffer", err);
}

static nsa_status dc_ensure(nsa_context *ctx, nsa_cl_dcache *dc, int which, size_t bytes)
{
    dc_buf *b = &dc->buf[which];
    if (b->m && b->bytes >= bytes)
        return NSA_OK;
    const size_t want = nsa_cl_dc_grow_bytes(b->bytes, bytes, dc->st->max_alloc);
    cl_mem m;
    nsa_status s = dc_create(ctx, dc, want, &m);
    if (s != NSA_OK)
        return s;
    if (b->m)
        clReleaseMemObject(b->m);
    b->m = m;
    b->bytes = want;
    if (which == DB_RP || which == DB_COL || which == DB_VAL || which == DB_PLO)
        dc->map_rows = -1; /* the mapping must be uploaded again */
    return NSA_OK;
}

/* The end of a transfer enqueued by call: its error, else (with
 * NSA_OPENCL_PROFILE=2, which asks the call for ev) its event into the
 * timeline as "(what bytes B)". */
static nsa_status dc_xfer_end(nsa_context *ctx, nsa_cl_dcache *dc, cl_int err, const char *call,
                              cl_event ev, const char *what, size_t bytes)
{
    if (err != CL_SUCCESS)
        return nsa_cl_fail(ctx, call, err);
    if (!ev)
        return NSA_OK;
    char label[32];
    snprintf(label, sizeof label, "(%s %zu B)", what, bytes);
    return nsa_cl_tl_keep(dc->st, ctx, ev, label, 1);
}

/* Unmaps and releases pinned buffer i (after what the queue holds). */
static void dc_unpin(nsa_cl_dcache *dc, int i)
{
    dc_pin *pn = &dc->pin[i];
    if (!pn->m)
        return;
    clEnqueueUnmapMemObject(dc->st->queue, pn->m, pn->p, 0, NULL, NULL);
    clFinish(dc->st->queue);
    clReleaseMemObject(pn->m);
    *pn = (dc_pin){NULL, NULL, 0};
}

/* bytes of host to offset off of m, through the failure hook and the bus
 * counters (dc_map's writes also as the mapping's). */
static nsa_status dc_write_at(nsa_context *ctx, nsa_cl_dcache *dc, cl_mem m, size_t off,
                              size_t bytes, const void *host, cl_bool blocking)
{
    nsa_status s = dc_op(ctx, dc);
    if (s != NSA_OK || bytes == 0)
        return s;
    dc->bus[0] += bytes;
    if (dc->in_map)
        dc->bus[2] += bytes;
    cl_event ev = NULL;
    cl_int err = clEnqueueWriteBuffer(dc->st->queue, m, blocking, off, bytes, host, 0, NULL,
                                      dc->st->profile == 2 ? &ev : NULL);
    return dc_xfer_end(ctx, dc, err, "clEnqueueWriteBuffer", ev, "write", bytes);
}

static nsa_status dc_write(nsa_context *ctx, nsa_cl_dcache *dc, cl_mem m, size_t bytes,
                           const void *host, cl_bool blocking)
{
    return dc_write_at(ctx, dc, m, 0, bytes, host, blocking);
}

static nsa_status dc_read(nsa_context *ctx, nsa_cl_dcache *dc, cl_mem m, size_t off,
                          size_t bytes, void *host)
{
    nsa_status s = dc_op(ctx, dc);
    if (s != NSA_OK || bytes == 0)
        return s;
    dc->bus[1] += bytes;
    cl_event ev = NULL;
    cl_int err = clEnqueueReadBuffer(dc->st->queue, m, CL_FALSE, off, bytes, host, 0, NULL,
                                     dc->st->profile == 2 ? &ev : NULL);
    return dc_xfer_end(ctx, dc, err, "clEnqueueReadBuffer", ev, "read", bytes);
}

/* Pinned host memory of n floats in buffer i (DC_PIN_*), whose pointer
 * transfers use (on NVIDIA a transfer from pageable memory goes through
 * the driver's own staging). NULL: pageable transfers (NSA_OPENCL_PINNED=0,
 * or no such buffer could be made). */
static float *dc_pinned(nsa_context *ctx, nsa_cl_dcache *dc, int i, size_t n)
{
    dc_pin *pn = &dc->pin[i];
    if (dc->pin_off)
        return NULL;
    if (pn->p && pn->n >= n)
        return pn->p;
    dc_unpin(dc, i);
    cl_int err;
    cl_mem m = clCreateBuffer(dc->st->context, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR,
                              sizeof(float) * n, NULL, &err);
    void *p = NULL;
    if (err == CL_SUCCESS) {
        p = clEnqueueMapBuffer(dc->st->queue, m, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0,
                               sizeof(float) * n, 0, NULL, NULL, &err);
        if (err != CL_SUCCESS)
            clReleaseMemObject(m);
    }
    if (err != CL_SUCCESS) {
        if (ctx->verbose)
            nsa_log(ctx, "opencl decode: no pinned host buffer (%s), pageable transfers",
                    nsa_cl_error_name(err));
        dc->pin_off = 1;
        return NULL;
    }
    *pn = (dc_pin){m, p, n};
    return pn->p;
}

static nsa_status dc_launch(nsa_context *ctx, nsa_cl_dcache *dc, nsa_clr_args *a,
                            const char *name, size_t global)
{
    nsa_status s = dc_op(ctx, dc);
    if (s != NSA_OK)
        return s;
    nsa_clr_bufs carrier = {dc->st, ctx, 0, {0}};
    return nsa_clr_launch(&carrier, a, name, global, (size_t)dc->st->wg);
}

/* ------------------------------------------------------------ lifetime */
void nsa_cl_dcache_free(void *p)
{
    nsa_cl_dcache *dc = p;
    if (!dc)
        return;
    dc_unpin(dc, DC_PIN_STEP);
    dc_unpin(dc, DC_PIN_STAGE);
    cl_mem *ms[] = {&dc->kr, &dc->vr, &dc->kw, &dc->vw, &dc->kc, &dc->vc, &dc->kring, &dc->vring};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        if (*ms[i])
            clReleaseMemObject(*ms[i]);
    for (int i = 0; i < DB_COUNT; i++)
        if (dc->buf[i].m)
            clReleaseMemObject(dc->buf[i].m);
    free(dc->seq);
    free(dc->hstage);
    free(dc->hdesc);
    free(dc->htpos);
    free(dc->hpos);
    free(dc->hrope);
    free(dc->hinv);
    free(dc->hplo);
    free(dc);
}

/* Local bytes of nsa_dc_partial with hc heads and chunks of ch keys. */
static size_t partial_local(const nsa_cl_dcache *dc, int hc, int ch)
{
    const size_t hcp = (size_t)(hc + 3) & ~(size_t)3;
    return 16 * hcp * (size_t)dc->dk4 + sizeof(float) * (size_t)ch * hcp +
           sizeof(int) * (size_t)ch + sizeof(float) * 2 * (size_t)dc->st->wg +
           sizeof(int) * ((size_t)dc->cfg.n + 1);
}

/* An empty decode cache of B sequences on st, where the device runs the
 * decode kernels (nsa_cl_dcache_new, and the test hook nsa_cl_dc_scores). */
static nsa_status dc_alloc(nsa_context *ctx, nsa_cl_state *st, const nsa_config *cfg, int B,
                           nsa_cl_dcache **out)
{
    *out = NULL;
    nsa_status s = nsa_cl_feature(ctx, st, st->kv, NSA_CLF_DECODE);
    if (s != NSA_OK)
        return s;
    nsa_cl_dcache *dc = calloc(1, sizeof *dc);
    if (!dc)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the opencl decode cache");
    dc->st = st;
    dc->cfg = *cfg;
    dc->B = B;
    dc->kv = st->kv;
    dc->map_rows = -1;
    *out = dc;
    return NSA_OK;
}

nsa_status nsa_cl_dcache_new(nsa_context *ctx, const nsa_config *cfg, int B, void **out)
{
    nsa_cl_state *st = ctx->be_state;
    *out = NULL;
    nsa_cl_dcache *dc;
    nsa_status s = dc_alloc(ctx, st, cfg, B, &dc);
    if (s != NSA_OK)
        return s;
    dc->dk4 = (cfg->dk + 3) / 4;
    dc->dv4 = (cfg->dv + 3) / 4;
    dc->es = st->kv == NSA_CL_KV_F32 ? 4 : 2;
    const int hpg = cfg->H / cfg->G;
    dc->hc = hpg < DC_HC ? hpg : DC_HC;
    /* NSA_OPENCL_DECODE_HEADS: fewer heads a work-group (tuning; with
     * NSA_OPENCL_OPTIONS=-DNSA_DC_HC=that many the kernel's registers
     * shrink too) */
    const char *henv = getenv("NSA_OPENCL_DECODE_HEADS");
    if (henv && atoi(henv) > 0 && atoi(henv) < dc->hc)
        dc->hc = atoi(henv);
    while (dc->hc > 1 && partial_local(dc, dc->hc, 8) > st->local_mem)
        dc->hc = (dc->hc + 1) / 2;
    const char *env = getenv("NSA_OPENCL_DECODE_CHUNK");
    if (env && sscanf(env, "%d,%d", &dc->chunk_env[0], &dc->chunk_env[1]) == 1)
        dc->chunk_env[1] = dc->chunk_env[0];
    env = getenv("NSA_OPENCL_DECODE_RESIDENT");
    dc->resident = env && atoi(env) > 0 ? atoi(env) : DC_RESIDENT;
    env = getenv("NSA_OPENCL_DECODE_WINDOW");
    dc->win_early = env && strcmp(env, "early") == 0;
    env = getenv("NSA_OPENCL_PINNED");
    dc->pin_off = env && strcmp(env, "0") == 0;
    dc->seq = calloc((size_t)B, sizeof *dc->seq);
    dc->htpos = malloc(sizeof(int32_t) * (size_t)B);
    dc->hpos = malloc(sizeof(int64_t) * 2 * (size_t)B);
    if (!dc->seq || !dc->htpos || !dc->hpos) {
        nsa_cl_dcache_free(dc);
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the opencl decode cache");
    }
    if (partial_local(dc, dc->hc, 8) > st->local_mem) {
        nsa_cl_dcache_free(dc);
        return nsa_fail(ctx, NSA_ERR_UNSUPPORTED,
                        "opencl decode: dk=%d needs more local memory than the device's %llu "
                        "bytes",
                        cfg->dk, (unsigned long long)st->local_mem);
    }
    /* the rings have their final size */
    const size_t bg = (size_t)B * cfg->G;
    dc->wcap = (cfg->w + DC_TK - 1) / DC_TK * DC_TK;
    if ((s = dc_create(ctx, dc, bg * dc->dk4 * (size_t)dc->wcap * 4 * dc->es, &dc->kw)) !=
            NSA_OK ||
        (s = dc_create(ctx, dc, bg * dc->dv4 * (size_t)dc->wcap * 4 * dc->es, &dc->vw)) !=
            NSA_OK) {
        nsa_cl_dcache_free(dc);
        return s;
    }
    /* device-resident steps: every kernel of the fused step usable; else
     * the host caches stay the source of truth. Any storage kind: the
     * step's fp32 rows are bit-identical to the host path's, and
     * nsa_dc_put_step rounds them with nsa_dc_put's ST4 (the rounding the
     * host path's upload applies), so the stored rows are the host path's;
     * the compression ring stays fp32 (phi reads the host path's rows, and
     * prefill's phi reads fp32 rows too). Without the double RoPE (no
     * fp64) the keys take the host's float angles, as q does. */
    dc->dres = !getenv("NSA_OPENCL_DECODE_HOSTKV");
    dc->rope64 = 1;
    for (int k = 0; k < NSA_CLK_COUNT; k++) {
        const nsa_cl_feat f = nsa_cl_kernel_feat(k);
        if (st->kernel[st->kv][k])
            continue;
        if (f == NSA_CLF_STEP || f == NSA_CLF_DECODE)
            dc->dres = 0;
        if (f == NSA_CLF_ROPE64)
            dc->rope64 = 0;
    }
    if (dc->dres &&
        ((s = dc_create(ctx, dc, sizeof(float) * bg * (size_t)cfg->l * cfg->dk, &dc->kring)) !=
             NSA_OK ||
         (s = dc_create(ctx, dc, sizeof(float) * bg * (size_t)cfg->l * cfg->dv, &dc->vring)) !=
             NSA_OK)) {
        nsa_cl_dcache_free(dc);
        return s;
    }
    /* the tensor-core partial kernel (cl/mma.cl): the mma's M = 16 rows
     * hold a work-group's heads */
    _Static_assert(DC_HC <= 16, "cl/mma.cl holds at most 16 heads a work-group");
    dc->mma_k = st->mma_kernel[dc->kv][NSA_CLM_DC_PARTIAL];
    if (dc->mma_k)
        nsa_log(ctx, "opencl decode: tensor-core partial kernel");
    nsa_log(ctx, "opencl: decode cache for %d sequences, %d heads a work-group", B, dc->hc);
    *out = dc;
    return NSA_OK;
}

/* -------------------------------------------------------------- growth */
/* *out: a new buffer of nrows rows of new_pitch bytes holding old's rows
 * of old_pitch bytes (old, if any, is left alone: the caller releases it);
 * nothing on failure. */
static nsa_status dc_regrow(nsa_context *ctx, nsa_cl_dcache *dc, cl_mem *out, cl_mem old,
                            size_t old_pitch, size_t new_pitch, size_t nrows)
{
    cl_mem nm;
    nsa_status s = dc_create(ctx, dc, new_pitch * nrows, &nm);
    if (s != NSA_OK)
        return s;
    if (old && old_pitch > 0) {
        const size_t zero[3] = {0, 0, 0}, region[3] = {old_pitch, nrows, 1};
        cl_int err = CL_SUCCESS;
        if ((s = dc_op(ctx, dc)) == NSA_OK)
            err = clEnqueueCopyBufferRect(dc->st->queue, old, nm, zero, zero, region, old_pitch,
                                          0, new_pitch, 0, 0, NULL, NULL);
        if (s == NSA_OK && err != CL_SUCCESS)
            s = nsa_cl_fail(ctx, "clEnqueueCopyBufferRect", err);
        if (s != NSA_OK) {
            clReleaseMemObject(nm);
            return s;
        }
    }
    *out = nm;
    return NSA_OK;
}

/* The new size of a scratch buffer of have bytes that must hold need:
 * doubled, at least 64, but not past the device's largest allocation most
 * (0: no limit) when need fits it (a request that fits must not fail). */
size_t nsa_cl_dc_grow_bytes(size_t have, size_t need, uint64_t most)
{
    size_t want = have * 2 > need ? have * 2 : need;
    if (want < 64)
        want = 64;
    if (most && want > most && need <= most)
        want = (size_t)most;
    return want;
}

/* The new row capacity of a cache of cap rows that must hold need rows:
 * doubled from DC_TK (so a multiple of DC_TK), but at most the multiple of
 * DC_TK in most rows (the largest allocation's rows, or the kernels' int
 * range), and never below need rounded up to DC_TK (which dc_create
 * refuses if it exceeds the allocation). */
int64_t nsa_cl_dc_grow_rows(int64_t cap, int64_t need, int64_t most)
{
    int64_t c = cap < DC_TK ? DC_TK : cap;
    while (c < need)
        c *= 2;
    const int64_t lim = most / DC_TK * DC_TK, floor = (need + DC_TK - 1) / DC_TK * DC_TK;
    if (c > lim)
        c = lim > floor ? lim : floor;
    return c;
}

/* grown for a cache whose rows take row_bytes across all (b, g) (K's or
 * V's: the larger). */
static int64_t grown(const nsa_cl_dcache *dc, int64_t cap, int64_t need)
{
    const size_t row_bytes = (size_t)dc->B * dc->cfg.G * 4 * dc->es *
                             (size_t)(dc->dk4 > dc->dv4 ? dc->dk4 : dc->dv4);
    int64_t most = INT32_MAX; /* the kernels take capacities as int */
    if (dc->st->max_alloc && (int64_t)(dc->st->max_alloc / row_bytes) < most)
        most = (int64_t)(dc->st->max_alloc / row_bytes);
    return nsa_cl_dc_grow_rows(cap, need, most);
}

/* Raw and compressed caches with room for need and needc rows: per (b, g)
 * a block of cap dk4 (K) or cap dv4 (V) words, copied block by block. */
static nsa_status dc_reserve(nsa_context *ctx, nsa_cl_dcache *dc, int64_t need, int64_t needc)
{
    const size_t bg = (size_t)dc->B * dc->cfg.G, w4 = 4 * dc->es;
    nsa_status s = NSA_OK;
    /* K and V grow together or not at all: the old buffers (which may hold
     * rows only the device has) stay until both copies are queued */
    for (int cmp = 0; cmp < 2; cmp++) {
        int64_t *cap = cmp ? &dc->ccap : &dc->cap;
        cl_mem *K = cmp ? &dc->kc : &dc->kr, *V = cmp ? &dc->vc : &dc->vr;
        const int64_t want = cmp ? needc : need;
        if (want <= *cap && *K)
            continue;
        const int64_t nc = grown(dc, *cap, want);
        cl_mem nk = NULL, nv = NULL;
        if ((s = dc_regrow(ctx, dc, &nk, *K, (size_t)*cap * dc->dk4 * w4,
                           (size_t)nc * dc->dk4 * w4, bg)) != NSA_OK)
            return s;
        if ((s = dc_regrow(ctx, dc, &nv, *V, (size_t)*cap * dc->dv4 * w4,
                           (size_t)nc * dc->dv4 * w4, bg)) != NSA_OK) {
            clReleaseMemObject(nk);
            return s;
        }
        if (*K)
            clReleaseMemObject(*K);
        if (*V)
            clReleaseMemObject(*V);
        *K = nk;
        *V = nv;
        *cap = nc;
    }
    return NSA_OK;
}

/* -------------------------------------------------------------- upload */
/* Sends the staged rows and scatters them into the caches. blocking: the
 * host staging is reused right after. */
static nsa_status dc_flush(nsa_context *ctx, nsa_cl_dcache *dc, cl_bool blocking)
{
    if (dc->ndesc == 0)
        return NSA_OK;
    const nsa_config *c = &dc->cfg;
    nsa_status s;
    if ((s = dc_write(ctx, dc, dc->buf[DB_STAGE].m, sizeof(float) * dc->nstage, dc->stage,
                      blocking)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_DESC].m, sizeof(int32_t) * 4 * dc->ndesc, dc->hdesc,
                      blocking)) != NSA_OK)
        return s;
    cl_kernel k = dc->st->kernel[dc->kv][NSA_CLK_DC_PUT];
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    ARG_MEM(&a, dc->buf[DB_STAGE].m);
    ARG_MEM(&a, dc->buf[DB_DESC].m);
    ARG_INT(&a, dc->ndesc);
    ARG_INT(&a, c->G);
    ARG_INT(&a, c->dk);
    ARG_INT(&a, c->dv);
    ARG_INT(&a, dc->dk4);
    ARG_INT(&a, dc->dv4);
    ARG_INT(&a, dc->cap);
    ARG_INT(&a, dc->ccap);
    ARG_INT(&a, dc->wcap);
    ARG_MEM(&a, dc->kr);
    ARG_MEM(&a, dc->vr);
    ARG_MEM(&a, dc->kw);
    ARG_MEM(&a, dc->vw);
    ARG_MEM(&a, dc->kc);
    ARG_MEM(&a, dc->vc);
    const int d4 = dc->dk4 > dc->dv4 ? dc->dk4 : dc->dv4;
    s = dc_launch(ctx, dc, &a, "nsa_dc_put", dc->ndesc * (size_t)c->G * (size_t)d4);
    dc->ndesc = 0;
    dc->nstage = 0;
    return s;
}

/* Stages the row [G][dim] of tensor kind (0/1 raw K/V, 2/3 ring, 4/5
 * compressed) for row `row` of sequence b. */
static nsa_status dc_stage(nsa_context *ctx, nsa_cl_dcache *dc, int kind, int b, int64_t row,
                           const float *src)
{
    const size_t len = (size_t)dc->cfg.G * (size_t)(kind & 1 ? dc->cfg.dv : dc->cfg.dk);
    const size_t cap = dc->buf[DB_STAGE].bytes / sizeof(float);
    const size_t dcap = dc->buf[DB_DESC].bytes / (4 * sizeof(int32_t));
    if (dc->nstage + len > cap || dc->ndesc == dcap) {
        nsa_status s = dc_flush(ctx, dc, CL_TRUE);
        if (s != NSA_OK)
            return s;
    }
    memcpy(dc->stage + dc->nstage, src, sizeof(float) * len);
    int32_t *d = dc->hdesc + 4 * dc->ndesc++;
    d[0] = kind;
    d[1] = b;
    d[2] = (int32_t)row;
    d[3] = (int32_t)dc->nstage;
    dc->nstage += len;
    return NSA_OK;
}

/* Rows of one sequence to upload: raw [r0, hi], window-ring positions
 * [w0, hi], compressed [c0, nc), the compression ring (device-resident
 * steps: ring = 1, all l slots of the host's). hi = t, or t - 1 for a
 * device-resident step (row t is computed there; the host holds 0 .. t-1
 * where the mirror is stale). */
typedef struct dc_plan {
    int64_t hi, r0, w0, c0, nc;
    int ring;
} dc_plan;

static dc_plan dc_plan_of(const nsa_cl_dcache *dc, const nsa_decode_seq *sq, uint64_t gen,
                          const dc_seq *m, int res)
{
    const nsa_config *c = &dc->cfg;
    const int64_t t = sq->t;
    dc_plan p;
    const int64_t before = t > 0 ? nsa_bm_n_cmp(c, t - 1) : 0;
    p.hi = t - res;
    p.nc = res ? before : nsa_bm_n_cmp(c, t);
    const int fresh = !m->valid || m->gen != gen;
    p.r0 = fresh ? 0 : (m->len < t ? m->len : t);
    p.c0 = fresh ? 0 : (m->nc < before ? m->nc : before);
    /* the window of t is t-w+1 .. t; a resident step's host view (t - 1)
     * needs t-w .. t-1 */
    p.w0 = t - c->w + 1 - res > p.r0 ? t - c->w + 1 - res : p.r0;
    p.ring = res && p.r0 < t;
    return p;
}

static int dc_plan_empty(const dc_plan *p) { return p->r0 > p->hi && p->c0 >= p->nc && !p->ring; }

/* The mirror up to date with the host caches the job describes (res: for
 * a device-resident step, rows up to t - 1). A sequence is marked invalid
 * only while its own upload is under way: one with nothing to send (its
 * newest rows may live only here) keeps its rows whatever fails. */
static nsa_status dc_sync(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_decode_job *job,
                          const nsa_dcache_sync *sync, int res)
{
    const nsa_config *c = &dc->cfg;
    const size_t kr = (size_t)c->G * c->dk, vr = (size_t)c->G * c->dv;
    int64_t need = 1, needc = 1;
    size_t total = 0, rows = 0;
    for (int b = 0; b < dc->B; b++) {
        const nsa_decode_seq *sq = &job->seq[b];
        const dc_plan p = dc_plan_of(dc, sq, sync->gen[b], &dc->seq[b], res);
        need = sq->t + 1 > need ? sq->t + 1 : need;
        const int64_t nct = nsa_bm_n_cmp(c, sq->t); /* room for a resident step's token */
        needc = nct > needc ? nct : needc;
        const size_t nr = (size_t)(p.hi + 1 - p.r0 > 0 ? p.hi + 1 - p.r0 : 0),
                     nw = (size_t)(p.hi + 1 - p.w0 > 0 ? p.hi + 1 - p.w0 : 0),
                     ncm = (size_t)(p.nc - p.c0);
        total += (nr + nw + ncm) * (kr + vr);
        rows += 2 * (nr + nw + ncm);
    }
    nsa_status s = dc_reserve(ctx, dc, need, needc);
    if (s != NSA_OK)
        return s;
    /* staging for the whole upload, or batches of DC_STAGE_FLOATS */
    size_t sf = total < DC_STAGE_FLOATS ? total : DC_STAGE_FLOATS;
    if (sf < kr + vr)
        sf = kr + vr;
    size_t sd = rows < sf / (kr < vr ? kr : vr) ? rows : sf / (kr < vr ? kr : vr);
    if (sd < 2)
        sd = 2;
    if (sf * sizeof(float) > dc->buf[DB_STAGE].bytes || !dc->stage) {
        if ((s = dc_ensure(ctx, dc, DB_STAGE, sf * sizeof(float))) != NSA_OK)
            return s;
        /* pinned where it can be: the batch-16 upload of 5.4 GB (the
         * first step at 64k) took 1.0-1.1 s against 1.4 s from pageable
         * staging (H200; doc/opencl.md, twelfth session) */
        float *h = dc_pinned(ctx, dc, DC_PIN_STAGE, dc->buf[DB_STAGE].bytes / sizeof(float));
        if (!h) {
            if (!(h = realloc(dc->hstage, dc->buf[DB_STAGE].bytes)))
                return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the decode upload");
            dc->hstage = h;
        }
        dc->stage = h;
    }
    if (sd * 4 * sizeof(int32_t) > dc->buf[DB_DESC].bytes || !dc->hdesc) {
        if ((s = dc_ensure(ctx, dc, DB_DESC, sd * 4 * sizeof(int32_t))) != NSA_OK)
            return s;
        int32_t *h = realloc(dc->hdesc, dc->buf[DB_DESC].bytes);
        if (!h)
            return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the decode upload");
        dc->hdesc = h;
    }
    dc->nstage = dc->ndesc = 0;
    for (int b = 0; b < dc->B && s == NSA_OK; b++) {
        const nsa_decode_seq *sq = &job->seq[b];
        const dc_plan p = dc_plan_of(dc, sq, sync->gen[b], &dc->seq[b], res);
        if (dc_plan_empty(&p))
            continue;
        dc->seq[b].valid = 0; /* until its rows are all sent */
        for (int64_t r = p.r0; r <= p.hi && s == NSA_OK; r++)
            if ((s = dc_stage(ctx, dc, 0, b, r, sq->ks + (size_t)r * kr)) == NSA_OK)
                s = dc_stage(ctx, dc, 1, b, r, sq->vs + (size_t)r * vr);
        for (int64_t r = p.w0; r <= p.hi && s == NSA_OK; r++) {
            const int64_t at = r % c->w;
            if ((s = dc_stage(ctx, dc, 2, b, at, sq->kw + (size_t)at * kr)) == NSA_OK)
                s = dc_stage(ctx, dc, 3, b, at, sq->vw + (size_t)at * vr);
        }
        for (int64_t r = p.c0; r < p.nc && s == NSA_OK; r++)
            if ((s = dc_stage(ctx, dc, 4, b, r, sq->kc + (size_t)r * kr)) == NSA_OK)
                s = dc_stage(ctx, dc, 5, b, r, sq->vc + (size_t)r * vr);
        /* the host's compression ring whole (slots of positions before
         * t - l + 1 are not read) */
        if (p.ring && s == NSA_OK &&
            (s = dc_write_at(ctx, dc, dc->kring, sizeof(float) * (size_t)b * c->l * kr,
                             sizeof(float) * c->l * kr, sq->kr, CL_TRUE)) == NSA_OK)
            s = dc_write_at(ctx, dc, dc->vring, sizeof(float) * (size_t)b * c->l * vr,
                            sizeof(float) * c->l * vr, sq->vr, CL_TRUE);
    }
    if (s == NSA_OK)
        s = dc_flush(ctx, dc, CL_FALSE);
    if (s != NSA_OK)
        return s;
    for (int b = 0; b < dc->B; b++) {
        dc_seq *m = &dc->seq[b];
        if (!m->valid || m->gen != sync->gen[b]) { /* uploaded now (or nothing to send) */
            const dc_plan p = dc_plan_of(dc, &job->seq[b], sync->gen[b], m, res);
            m->len = p.hi + 1;
            m->nc = p.nc;
        }
        m->gen = sync->gen[b];
        m->valid = 1;
    }
    return NSA_OK;
}

/* Tokens a lane of nsa_dc_prob takes P of at once (NSA_DC_PNI of
 * cl/decode.cl; a plan for more stays correct, the kernel loops). */
#define DC_PROB_PNI 2

/* nsa_dc_prob's work-groups for the mapping m: the most blocks jpw (up to
 * a work-group's lanes) such that the compressed tokens any jpw
 * consecutive blocks' entries read span at most DC_PROB_PNI tokens a lane
 * and fit local memory with the entries (one block a work-group if none
 * does); per work-group (rows jc jpw ..) its first token in DB_PLO. With
 * the paper's sizes and 128 lanes: 63 blocks, 253 tokens, 315 entries. */
static nsa_status dc_prob_plan(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_csr *m)
{
    const int rows = m->rows, lanes = dc->st->wg * DC_PROB_PNI, hpg = dc->cfg.H / dc->cfg.G;
    int jpw = dc->st->wg, pw, ecap;
    for (;;) {
        pw = 0;
        ecap = 0;
        for (int j0 = 0; j0 < rows; j0 += jpw) {
            const int j1 = j0 + jpw < rows ? j0 + jpw : rows;
            int lo = INT32_MAX, hi = -1;
            for (int32_t e = m->rowptr[j0]; e < m->rowptr[j1]; e++) {
                lo = m->col[e] < lo ? m->col[e] : lo;
                hi = m->col[e] > hi ? m->col[e] : hi;
            }
            pw = hi >= lo && hi - lo + 1 > pw ? hi - lo + 1 : pw;
            ecap = m->rowptr[j1] - m->rowptr[j0] > ecap ? m->rowptr[j1] - m->rowptr[j0] : ecap;
        }
        const size_t bytes = sizeof(float) * ((size_t)pw + 2 * (size_t)hpg) +
                             sizeof(int32_t) * 2 * (size_t)ecap;
        if (jpw == 1 || (pw <= lanes && bytes <= dc->st->local_mem))
            break;
        const int est = pw > lanes ? (int)((int64_t)jpw * lanes / pw) : jpw - 1;
        jpw = est < 1 ? 1 : est < jpw ? est : jpw - 1;
    }
    const int njc = rows > 0 ? (rows + jpw - 1) / jpw : 1;
    int32_t *plo = realloc(dc->hplo, sizeof(int32_t) * (size_t)njc);
    if (!plo)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the opencl decode prob plan");
    dc->hplo = plo;
    for (int jc = 0; jc < njc; jc++) {
        const int j0 = jc * jpw, j1 = j0 + jpw < rows ? j0 + jpw : rows;
        int lo = 0;
        if (j0 < rows && m->rowptr[j1] > m->rowptr[j0]) {
            lo = INT32_MAX;
            for (int32_t e = m->rowptr[j0]; e < m->rowptr[j1]; e++)
                lo = m->col[e] < lo ? m->col[e] : lo;
        }
        plo[jc] = lo;
    }
    dc->prob_jpw = jpw;
    dc->prob_pw = pw;
    dc->prob_ecap = ecap;
    nsa_status s;
    if ((s = dc_ensure(ctx, dc, DB_PLO, sizeof(int32_t) * (size_t)njc)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_PLO].m, sizeof(int32_t) * (size_t)njc, plo,
                      CL_FALSE)) != NSA_OK)
        return s;
    return NSA_OK;
}

/* The mapping m (and nsa_dc_prob's plan for it) on the device, unless the
 * one there has the same rows and entries. */
static nsa_status dc_map_put(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_csr *m);

/* dc_map_put with its uploads counted as the mapping's (the bus hook). */
static nsa_status dc_map(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_csr *m)
{
    dc->in_map = 1;
    const nsa_status s = dc_map_put(ctx, dc, m);
    dc->in_map = 0;
    return s;
}

static nsa_status dc_map_put(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_csr *m)
{
    nsa_status s;
    const int nnz = m->rowptr[m->rows];
    if (m->rows == dc->map_rows && nnz == dc->map_nnz)
        return NSA_OK; /* same rows, same columns: the same mapping */
    dc->map_rows = -1;
    if ((s = dc_ensure(ctx, dc, DB_RP, sizeof(int32_t) * ((size_t)m->rows + 1))) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_COL, sizeof(int32_t) * (size_t)nnz)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_VAL, sizeof(int32_t) * (size_t)nnz)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_RP].m, sizeof(int32_t) * ((size_t)m->rows + 1),
                      m->rowptr, CL_FALSE)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_COL].m, sizeof(int32_t) * (size_t)nnz, m->col,
                      CL_FALSE)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_VAL].m, sizeof(int32_t) * (size_t)nnz, m->val,
                      CL_FALSE)) != NSA_OK)
        return s;
    if ((s = dc_prob_plan(ctx, dc, m)) != NSA_OK)
        return s;
    dc->map_rows = m->rows;
    dc->map_nnz = nnz;
    return NSA_OK;
}

/* q, positions and (NSA) gates and the mapping on the device. */
static nsa_status dc_inputs(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_decode_job *job,
                            int with_gates)
{
    const nsa_config *c = &dc->cfg;
    const size_t bh = (size_t)dc->B * c->H;
    nsa_status s;
    const int up = !dc->q_on_device; /* else the fused step wrote q, gates, positions */
    for (int b = 0; up && b < dc->B; b++)
        dc->htpos[b] = (int32_t)job->seq[b].t;
    if ((s = dc_ensure(ctx, dc, DB_Q, sizeof(float) * bh * c->dk)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_TPOS, sizeof(int32_t) * dc->B)) != NSA_OK ||
        (up && (s = dc_write(ctx, dc, dc->buf[DB_Q].m, sizeof(float) * bh * c->dk, job->q,
                             CL_FALSE)) != NSA_OK) ||
        (up && (s = dc_write(ctx, dc, dc->buf[DB_TPOS].m, sizeof(int32_t) * dc->B, dc->htpos,
                             CL_FALSE)) != NSA_OK))
        return s;
    if (!with_gates)
        return NSA_OK;
    if ((s = dc_ensure(ctx, dc, DB_GATES, sizeof(float) * bh * 3)) != NSA_OK ||
        (up && (s = dc_write(ctx, dc, dc->buf[DB_GATES].m, sizeof(float) * bh * 3, job->gates,
                             CL_FALSE)) != NSA_OK))
        return s;
    return dc_map(ctx, dc, job->map);
}

/* ------------------------------------------------------------- kernels */
/* Chunk of keys per work-group for a launch over ka keys and kb keys
 * (chunked separately) per (b, g, part): the one (64 to 512 keys) with
 * the least modelled time, waves x (chunk + DC_WG_KEYS): a last wave
 * with few work-groups costs nearly a full one. Ties go to longer chunks
 * (fewer partials to combine); below 64 keys the combine of the chunks
 * costs more than the chunks save (batch 1 on an H200). NSA_OPENCL_DECODE_CHUNK=c or c,s fixes the
 * compressed (and dense) launch's chunk at c and the selected one's at s
 * (default c); chunks shrink while the local memory does not fit. */
static int dc_chunk(const nsa_cl_dcache *dc, int64_t ka, int64_t kb, int which)
{
    const int64_t parts = (dc->cfg.H / dc->cfg.G + dc->hc - 1) / dc->hc;
    const int64_t slots = (int64_t)dc->B * dc->cfg.G * parts;
    const int64_t cus = dc->st->compute_units ? dc->st->compute_units : 1;
    const int64_t res = cus * dc->resident;
    const int fixed = dc->chunk_env[which];
    int ch = 0;
    if (fixed > 0)
        ch = fixed;
    else {
        int64_t best = INT64_MAX;
        for (int c = 64; c <= 512; c += 32) {
            if (partial_local(dc, dc->hc, c) > dc->st->local_mem)
                break;
            const int64_t wgs = slots * ((ka + c - 1) / c + (kb + c - 1) / c);
            const int64_t cost = (wgs + res - 1) / res * (c + DC_WG_KEYS);
            if (cost <= best) {
                best = cost;
                ch = c;
            }
        }
        if (ch == 0)
            ch = 64;
    }
    while (ch > 8 && partial_local(dc, dc->hc, ch) > dc->st->local_mem)
        ch /= 2;
    return ch;
}

typedef struct dc_part {
    int mode, ch, nch_a, nch;
    const char *label; /* what it reads, after the kernel's name in profiles */
    int pst, pacc; /* DB_ indices of the partials */
} dc_part;

static nsa_status dc_partial(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_decode_job *job,
                             const dc_part *P, int max_nc)
{
    const nsa_config *c = &dc->cfg;
    const int hpg = c->H / c->G, parts = (hpg + dc->hc - 1) / dc->hc;
    const int hcp = (dc->hc + 3) & ~3;
    const size_t slots = (size_t)dc->B * c->G * (size_t)P->nch * hpg;
    nsa_status s;
    if ((s = dc_ensure(ctx, dc, P->pst, sizeof(float) * 2 * slots)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, P->pacc, 16 * slots * dc->dv4)) != NSA_OK)
        return s;
    const int cmp = P->mode == 0;
    cl_mem K = cmp ? dc->kc : dc->kr, V = cmp ? dc->vc : dc->vr;
    cl_mem none = dc->buf[DB_TPOS].m; /* unread placeholder */
    cl_mem sel = P->mode == 1 ? dc->buf[DB_SEL].m : none, zout = cmp ? dc->buf[DB_ZOUT].m : none;
    cl_kernel k = dc->mma_k ? dc->mma_k : dc->st->kernel[dc->kv][NSA_CLK_DC_PARTIAL];
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    ARG_INT(&a, P->mode);
    ARG_MEM(&a, dc->buf[DB_Q].m);
    ARG_MEM(&a, dc->buf[DB_TPOS].m);
    ARG_MEM(&a, K);
    ARG_MEM(&a, V);
    ARG_INT(&a, cmp ? dc->ccap : dc->cap);
    ARG_MEM(&a, dc->kw);
    ARG_MEM(&a, dc->vw);
    ARG_INT(&a, c->w);
    ARG_INT(&a, dc->wcap);
    ARG_MEM(&a, sel);
    ARG_INT(&a, c->n);
    ARG_INT(&a, c->l_sel);
    ARG_INT(&a, c->l);
    ARG_INT(&a, c->d);
    ARG_INT(&a, c->H);
    ARG_INT(&a, c->G);
    ARG_INT(&a, dc->hc);
    ARG_INT(&a, c->dk);
    ARG_INT(&a, dc->dk4);
    ARG_INT(&a, dc->dv4);
    ARG_FLT(&a, job->scale);
    ARG_INT(&a, P->ch);
    ARG_INT(&a, P->nch_a);
    ARG_INT(&a, P->nch);
    ARG_MEM(&a, zout);
    ARG_INT(&a, max_nc);
    ARG_MEM(&a, dc->buf[P->pst].m);
    ARG_MEM(&a, dc->buf[P->pacc].m);
    nsa_clr_arg(&a, 16 * (size_t)hcp * dc->dk4, NULL);
    nsa_clr_arg(&a, sizeof(float) * (size_t)P->ch * hcp, NULL);
    nsa_clr_arg(&a, sizeof(int) * (size_t)P->ch, NULL);
    nsa_clr_arg(&a, sizeof(float) * 2 * (size_t)dc->st->wg, NULL);
    nsa_clr_arg(&a, sizeof(int) * ((size_t)c->n + 1), NULL);
    const size_t wgs = (size_t)dc->B * c->G * parts * (size_t)P->nch;
    /* the profile names the kernel that ran (test_decode_mma asserts it) */
    char label[32];
    snprintf(label, sizeof label, "%s%s", dc->mma_k ? "nsa_dc_partial_mma" : "nsa_dc_partial",
             P->label);
    return dc_launch(ctx, dc, &a, label, wgs * (size_t)dc->st->wg);
}

/* The outputs from the partials of P (and, for NSA, the compressed
 * branch's of C). */
static nsa_status dc_final(nsa_context *ctx, nsa_cl_dcache *dc, const dc_part *P,
                           const dc_part *C, int branches)
{
    const nsa_config *c = &dc->cfg;
    nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DC_FINAL], 0, CL_SUCCESS};
    const dc_part *pc = C ? C : P;
    cl_mem gt = C ? dc->buf[DB_GATES].m : dc->buf[DB_TPOS].m;
    ARG_INT(&a, C == NULL);
    ARG_MEM(&a, dc->buf[P->pst].m);
    ARG_MEM(&a, dc->buf[P->pacc].m);
    ARG_INT(&a, P->nch_a);
    ARG_INT(&a, P->nch);
    ARG_MEM(&a, dc->buf[pc->pst].m);
    ARG_MEM(&a, dc->buf[pc->pacc].m);
    ARG_INT(&a, pc->nch_a);
    ARG_INT(&a, pc->nch);
    ARG_INT(&a, dc->B);
    ARG_INT(&a, c->H);
    ARG_INT(&a, c->G);
    ARG_INT(&a, c->dv);
    ARG_INT(&a, dc->dv4);
    ARG_MEM(&a, gt);
    ARG_INT(&a, branches);
    ARG_MEM(&a, dc->buf[DB_OUT].m);
    /* one lane an output float4 */
    return dc_launch(ctx, dc, &a, C ? "nsa_dc_final" : "nsa_dc_final(dense)",
                     (size_t)dc->B * c->H * dc->dv4);
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* nsa_dc_select's arguments: the positions tpos[B], the scores
 * [B][G][max_vis], the picks sel [B][G][n] (one binding for the step and
 * its test hook, nsa_cl_dc_topn). */
static nsa_clr_args select_args(cl_kernel k, const nsa_config *c, cl_mem tpos, cl_mem scores,
                                int max_vis, cl_mem sel)
{
    nsa_clr_args a = {k, 0, CL_SUCCESS};
    ARG_MEM(&a, tpos);
    ARG_INT(&a, c->G);
    ARG_INT(&a, c->l_sel);
    ARG_MEM(&a, scores);
    ARG_INT(&a, max_vis);
    ARG_INT(&a, c->n);
    ARG_INT(&a, c->n_init);
    ARG_INT(&a, c->n_local);
    ARG_MEM(&a, sel);
    return a;
}

/* nsa_dc_prob: the block scores DB_S [B G][max_vis] from the compressed
 * logits DB_ZOUT [B G][hpg][max_nc] and the statistics of chunks 0 ..
 * ncmb-1 (of nch a (b, g)) in DB_PSTC, over the mapping on the device. */
static nsa_status dc_prob(nsa_context *ctx, nsa_cl_dcache *dc, int nch, int ncmb, int max_nc,
                          int max_vis)
{
    const nsa_config *c = &dc->cfg;
    const int hpg = c->H / c->G, jpw = dc->prob_jpw, njc = (int)ceil_div(max_vis, jpw);
    const size_t bg = (size_t)dc->B * c->G;
    nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DC_PROB], 0, CL_SUCCESS};
    ARG_MEM(&a, dc->buf[DB_TPOS].m);
    ARG_MEM(&a, dc->buf[DB_PSTC].m);
    ARG_INT(&a, nch);
    ARG_INT(&a, ncmb);
    ARG_INT(&a, c->H);
    ARG_INT(&a, c->G);
    ARG_INT(&a, c->l);
    ARG_INT(&a, c->d);
    ARG_INT(&a, c->l_sel);
    ARG_MEM(&a, dc->buf[DB_ZOUT].m);
    ARG_INT(&a, max_nc);
    ARG_MEM(&a, dc->buf[DB_RP].m);
    ARG_MEM(&a, dc->buf[DB_COL].m);
    ARG_MEM(&a, dc->buf[DB_VAL].m);
    ARG_MEM(&a, dc->buf[DB_PLO].m);
    ARG_INT(&a, jpw);
    ARG_INT(&a, dc->prob_pw);
    ARG_INT(&a, njc);
    ARG_INT(&a, max_vis);
    ARG_MEM(&a, dc->buf[DB_S].m);
    const size_t pw = (size_t)(dc->prob_pw > 0 ? dc->prob_pw : 1);
    const size_t ecap = (size_t)(dc->prob_ecap > 0 ? dc->prob_ecap : 1);
    nsa_clr_arg(&a, sizeof(float) * 2 * (size_t)hpg, NULL);
    nsa_clr_arg(&a, sizeof(float) * pw, NULL);
    nsa_clr_arg(&a, sizeof(int32_t) * ecap, NULL);
    nsa_clr_arg(&a, sizeof(int32_t) * ecap, NULL);
    /* chunk statistics staged at once: all of them up to 1024 (chunk, head)
     * pairs (64 chunks of the paper's 16 heads, 8 KB) */
    const int pcap = ncmb < 1 ? 1 : ncmb * hpg <= 1024 ? ncmb : 1024 / hpg > 1 ? 1024 / hpg : 1;
    nsa_clr_arg(&a, sizeof(cl_float2) * (size_t)pcap * (size_t)hpg, NULL);
    ARG_INT(&a, pcap);
    return dc_launch(ctx, dc, &a, "nsa_dc_prob", bg * njc * (size_t)dc->st->wg);
}

/* The attention's results to the host: the selection and the outputs the
 * job asks for (reads queued, not waited for). */
static nsa_status dc_attend_reads(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_decode_job *job)
{
    const size_t bg = (size_t)dc->B * dc->cfg.G, bhd = (size_t)dc->B * dc->cfg.H * dc->cfg.dv;
    nsa_status s = dc_read(ctx, dc, dc->buf[DB_SEL].m, 0, sizeof(int32_t) * bg * dc->cfg.n,
                           job->sel_out);
    float *dst[4] = {job->out, job->out_cmp, job->out_slc, job->out_win};
    for (int i = 0; s == NSA_OK && i < 4; i++)
        if (dst[i])
            s = dc_read(ctx, dc, dc->buf[DB_OUT].m, sizeof(float) * bhd * i, sizeof(float) * bhd,
                        dst[i]);
    return s;
}

static nsa_status dc_attend_run(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_decode_job *job)
{
    const nsa_config *c = &dc->cfg;
    const int B = dc->B, G = c->G, H = c->H, hpg = H / G, n = c->n;
    const size_t bg = (size_t)B * G, bhd = (size_t)B * H * c->dv;
    int64_t max_t = 0;
    for (int b = 0; b < B; b++)
        max_t = job->seq[b].t > max_t ? job->seq[b].t : max_t;
    const int max_nc = nsa_bm_n_cmp(c, max_t), max_vis = nsa_bm_n_sel_visible(c, max_t);
    const int branches = job->out_cmp || job->out_slc || job->out_win;
    nsa_status s;
    if ((s = dc_inputs(ctx, dc, job, 1)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_ZOUT, sizeof(float) * bg * hpg * (size_t)max_nc)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_S, sizeof(float) * bg * (size_t)max_vis)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_SEL, sizeof(int32_t) * bg * n)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_OUT, sizeof(float) * bhd * (branches ? 4 : 1))) != NSA_OK)
        return s;
    /* compressed branch; with NSA_OPENCL_DECODE_WINDOW=early the window's
     * chunks after it (the window does not depend on the selection), else
     * with the selected blocks (faster on an H200: the compressed launch
     * fills 2 waves at batch 16, the window would start a third) */
    const int64_t span = max_t + 1;
    const int64_t ks = (int64_t)n * c->l_sel < span ? (int64_t)n * c->l_sel : span;
    const int64_t kw = c->w < span ? c->w : span;
    const int64_t kw_c = dc->win_early ? kw : 0;
    dc_part pc = {0, dc_chunk(dc, max_nc, kw_c, 0), 0, 0, "(cmp)", DB_PSTC,
                  DB_PACCC};
    if (kw_c)
        pc.label = "(cmp+win)";
    pc.nch_a = (int)ceil_div(max_nc, pc.ch);
    pc.nch = pc.nch_a + (int)ceil_div(kw_c, pc.ch);
    if ((s = dc_partial(ctx, dc, job, &pc, max_nc)) != NSA_OK)
        return s;
    /* block scores (through the compressed probabilities) */
    if ((s = dc_prob(ctx, dc, pc.nch, pc.nch_a, max_nc, max_vis)) != NSA_OK)
        return s;
    /* top-n (prefill's rule and code, see cl/decode.cl) */
    {
        nsa_clr_args a = select_args(dc->st->kernel[dc->kv][NSA_CLK_DC_SELECT], c,
                                     dc->buf[DB_TPOS].m, dc->buf[DB_S].m, max_vis,
                                     dc->buf[DB_SEL].m);
        if ((s = dc_launch(ctx, dc, &a, "nsa_dc_select", bg * (size_t)dc->st->wg)) != NSA_OK)
            return s;
    }
    /* selected blocks (and the window when late) */
    const int64_t kw_s = kw - kw_c;
    dc_part pw = {1, dc_chunk(dc, ks, kw_s, 1), 0, 0, "(slc)", DB_PSTS, DB_PACCS};
    if (kw_s)
        pw.label = "(slc+win)";
    pw.nch_a = (int)ceil_div(ks, pw.ch);
    pw.nch = pw.nch_a + (int)ceil_div(kw_s, pw.ch);
    if ((s = dc_partial(ctx, dc, job, &pw, max_nc)) != NSA_OK ||
        (s = dc_final(ctx, dc, &pw, &pc, branches)) != NSA_OK)
        return s;
    if (dc->q_on_device)
        return NSA_OK; /* the fused step goes on with o in DB_OUT, reads after Wo */
    if ((s = dc_attend_reads(ctx, dc, job)) != NSA_OK)
        return s;
    cl_int err = clFinish(dc->st->queue);
    return err == CL_SUCCESS ? NSA_OK : nsa_cl_fail(ctx, "clFinish", err);
}

static nsa_status dc_dense_run(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_decode_job *job)
{
    const nsa_config *c = &dc->cfg;
    int64_t max_t = 0;
    for (int b = 0; b < dc->B; b++)
        max_t = job->seq[b].t > max_t ? job->seq[b].t : max_t;
    const size_t bhd = (size_t)dc->B * c->H * c->dv;
    nsa_status s;
    if ((s = dc_inputs(ctx, dc, job, 0)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_OUT, sizeof(float) * bhd)) != NSA_OK)
        return s;
    dc_part pd = {2, dc_chunk(dc, max_t + 1, 0, 0), 0, 0, "(dense)", DB_PSTS, DB_PACCS};
    pd.nch = (int)ceil_div(max_t + 1, pd.ch);
    pd.nch_a = pd.nch;
    if ((s = dc_partial(ctx, dc, job, &pd, 1)) != NSA_OK ||
        (s = dc_final(ctx, dc, &pd, NULL, 0)) != NSA_OK ||
        (s = dc_read(ctx, dc, dc->buf[DB_OUT].m, 0, sizeof(float) * bhd, job->out)) != NSA_OK)
        return s;
    cl_int err = clFinish(dc->st->queue);
    return err == CL_SUCCESS ? NSA_OK : nsa_cl_fail(ctx, "clFinish", err);
}

/* ---------------------------------------------------------- fused step */
/* One keyed linear over device buffers: the weights' device copy, then
 * the kernel (two operations for the test hook). */
static nsa_status dc_linear(nsa_context *ctx, nsa_cl_dcache *dc, nsa_clr_bufs *W,
                            const nsa_linear_job *j, cl_mem x, cl_mem y)
{
    cl_mem w, b;
    nsa_status s = dc_op(ctx, dc);
    if (s == NSA_OK)
        s = nsa_cl_weights(W, j, &w, &b);
    if (s == NSA_OK)
        s = dc_op(ctx, dc);
    return s == NSA_OK ? nsa_cl_gemm(W, j, x, w, b, y) : s;
}

/* The n linears j[i] over x into y[i] in one launch (nsa_cl_gemm_few:
 * nsa_linear's bits, so a step's K/V rows stay prefill's); the same
 * device operations as n dc_linear calls. */
static nsa_status dc_linears(nsa_context *ctx, nsa_cl_dcache *dc, nsa_clr_bufs *W,
                             const nsa_linear_job *j, int n, cl_mem x, const cl_mem *y)
{
    const nsa_linear_job *jp[NSA_CL_FEW_JOBS];
    cl_mem w[NSA_CL_FEW_JOBS], b[NSA_CL_FEW_JOBS];
    nsa_status s = NSA_OK;
    if (n > NSA_CL_FEW_JOBS) /* nsa_cl_dcache_step admits 2 or 6 */
        return nsa_fail(ctx, NSA_ERR_ARG, "opencl decode step: %d K/V linears", n);
    for (int i = 0; i < n && s == NSA_OK; i++) {
        jp[i] = &j[i];
        if ((s = dc_op(ctx, dc)) == NSA_OK &&
            (s = nsa_cl_weights(W, &j[i], &w[i], &b[i])) == NSA_OK)
            s = dc_op(ctx, dc);
    }
    return s == NSA_OK ? nsa_cl_gemm_few(W, jp, n, x, w, b, y, "nsa_linear_few (K/V)") : s;
}

/* The gates from x (in DB_X) into DB_GATES: the first linear, for a gate
 * MLP into DB_GHID then SiLU and the second linear (spec 5), then the
 * activation; read back when the job asks for them. */
static nsa_status dc_step_gates(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj,
                                nsa_clr_bufs *W)
{
    const size_t bh = (size_t)dc->B * dc->cfg.H;
    nsa_status s;
    if (sj->gate2) {
        const size_t nh = (size_t)dc->B * (size_t)sj->gate->out;
        if ((s = dc_ensure(ctx, dc, DB_GHID, sizeof(float) * nh)) != NSA_OK ||
            (s = dc_linear(ctx, dc, W, sj->gate, dc->buf[DB_X].m, dc->buf[DB_GHID].m)) != NSA_OK)
            return s;
        nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DS_SILU], 0, CL_SUCCESS};
        ARG_MEM(&a, dc->buf[DB_GHID].m);
        ARG_INT(&a, nh);
        if ((s = dc_launch(ctx, dc, &a, "nsa_ds_silu", nh)) != NSA_OK ||
            (s = dc_linear(ctx, dc, W, sj->gate2, dc->buf[DB_GHID].m, dc->buf[DB_GATES].m)) !=
                NSA_OK)
            return s;
    } else if ((s = dc_linear(ctx, dc, W, sj->gate, dc->buf[DB_X].m, dc->buf[DB_GATES].m)) !=
               NSA_OK) {
        return s;
    }
    nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DS_GATE], 0, CL_SUCCESS};
    ARG_MEM(&a, dc->buf[DB_GATES].m);
    ARG_INT(&a, bh);
    ARG_INT(&a, sj->gate_sigmoid);
    ARG_FLT(&a, sj->gate_tau);
    if ((s = dc_launch(ctx, dc, &a, "nsa_ds_gate", bh)) != NSA_OK)
        return s;
    return sj->gates_out ? dc_read(ctx, dc, dc->buf[DB_GATES].m, 0, sizeof(float) * bh * 3,
                                   sj->gates_out)
                         : NSA_OK;
}

/* The host's angle table (nsa_rope_table: per sequence rope_dim floats,
 * the cosines then the sines) of positions pos[b] into DB_ROPE (cmp = 0)
 * or DB_ROPEC (cmp = 1), for nsa_ds_rope on a device without fp64: one
 * host buffer each, as the writes do not wait. */
static nsa_status dc_rope_tab(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj,
                              const int64_t *pos, int cmp)
{
    const size_t B = (size_t)dc->B, rd = (size_t)sj->rope_dim;
    if (!dc->hrope && !(dc->hrope = malloc(sizeof(float) * 2 * B * (size_t)dc->cfg.dk)))
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the RoPE angles");
    float *tab = dc->hrope + (size_t)cmp * B * (size_t)dc->cfg.dk;
    for (size_t b = 0; b < B; b++)
        nsa_rope_table(sj->rope_dim, sj->rope_base, &pos[b], 1, tab + b * rd);
    const int which = cmp ? DB_ROPEC : DB_ROPE;
    nsa_status s = dc_ensure(ctx, dc, which, sizeof(float) * B * rd);
    return s != NSA_OK ? s : dc_write(ctx, dc, dc->buf[which].m, sizeof(float) * B * rd, tab, CL_FALSE);
}

/* RoPE's frequencies into DB_INVF for cl/rope64.cl, once per (rope_dim,
 * base): the device forms t inv[i] from the host's pow, as the host does. */
static nsa_status dc_rope_inv(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj)
{
    const int rd = sj->rope_dim;
    if (dc->inv_rd == rd && dc->inv_base == sj->rope_base)
        return NSA_OK;
    dc->inv_rd = 0;
    free(dc->hinv);
    if (!(dc->hinv = malloc(sizeof(double) * (size_t)(rd / 2))))
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the RoPE frequencies");
    nsa_rope_inv_freq(rd, sj->rope_base, dc->hinv);
    const size_t bytes = sizeof(double) * (size_t)(rd / 2);
    nsa_status s = dc_ensure(ctx, dc, DB_INVF, bytes);
    if (s == NSA_OK)
        s = dc_write(ctx, dc, dc->buf[DB_INVF].m, bytes, dc->hinv, CL_FALSE);
    if (s == NSA_OK) {
        dc->inv_rd = rd;
        dc->inv_base = sj->rope_base;
    }
    return s;
}

/* RoPE of x [B][heads][dk] in place: at the positions in DB_TPOS (cmp =
 * 0), or each emitted compressed token at its i d (cmp = 1). The angles
 * are computed in double on the device (cl/rope64.cl: nsa_dr_rope,
 * nsa_dr_rope_cmp) where it has fp64, else taken from the host's table
 * (dc_rope_tab, uploaded for this step) by nsa_ds_rope. */
static nsa_status dc_rope(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj,
                          cl_mem x, int heads, int cmp)
{
    const nsa_config *c = &dc->cfg;
    const size_t items = (size_t)dc->B * heads * (size_t)(sj->rope_dim / 2);
    if (dc->rope64) {
        nsa_clr_args a = {dc->st->kernel[dc->kv][cmp ? NSA_CLK_DR_ROPE_CMP : NSA_CLK_DR_ROPE],
                          0, CL_SUCCESS};
        ARG_MEM(&a, x);
        ARG_MEM(&a, dc->buf[DB_TPOS].m);
        ARG_INT(&a, dc->B);
        ARG_INT(&a, heads);
        ARG_INT(&a, c->dk);
        ARG_INT(&a, sj->rope_dim);
        ARG_MEM(&a, dc->buf[DB_INVF].m);
        if (cmp) {
            ARG_INT(&a, c->l);
            ARG_INT(&a, c->d);
        }
        return dc_launch(ctx, dc, &a, cmp ? "nsa_dr_rope_cmp" : "nsa_dr_rope", items);
    }
    nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DS_ROPE], 0, CL_SUCCESS};
    ARG_MEM(&a, x);
    ARG_MEM(&a, dc->buf[cmp ? DB_ROPEC : DB_ROPE].m);
    ARG_INT(&a, dc->B);
    ARG_INT(&a, heads);
    ARG_INT(&a, c->dk);
    ARG_INT(&a, sj->rope_dim);
    return dc_launch(ctx, dc, &a, "nsa_ds_rope", items);
}

/* RoPE of the keys of the nbr branches in DB_K0 .. at the positions in
 * DB_TPOS: one nsa_dr_rope_keys launch with the double RoPE, else
 * dc_rope (the host's table) per branch. */
static nsa_status dc_rope_keys(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj,
                               int nbr)
{
    const nsa_config *c = &dc->cfg;
    nsa_status s = NSA_OK;
    if (!dc->rope64) {
        for (int i = 0; i < nbr && s == NSA_OK; i++)
            s = dc_rope(ctx, dc, sj, dc->buf[DB_K0 + i].m, c->G, 0);
        return s;
    }
    nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DR_ROPE_KEYS], 0, CL_SUCCESS};
    for (int i = 0; i < 3; i++)
        ARG_MEM(&a, dc->buf[DB_K0 + (i < nbr ? i : 0)].m);
    ARG_INT(&a, nbr);
    ARG_MEM(&a, dc->buf[DB_TPOS].m);
    ARG_INT(&a, dc->B);
    ARG_INT(&a, c->G);
    ARG_INT(&a, c->dk);
    ARG_INT(&a, sj->rope_dim);
    ARG_MEM(&a, dc->buf[DB_INVF].m);
    return dc_launch(ctx, dc, &a, "nsa_dr_rope_keys",
                     (size_t)nbr * dc->B * c->G * (size_t)(sj->rope_dim / 2));
}

/* ------------------------------------------------- device-resident step */
/* The index of the compressed token the step at t emits, or -1 (spec 7;
 * cl/decode.cl's dc_emitted): n_cmp grows by one exactly then. */
static int64_t dc_emitted(const nsa_config *c, int64_t t)
{
    const int64_t n = nsa_bm_n_cmp(c, t);
    return n > (t > 0 ? nsa_bm_n_cmp(c, t - 1) : 0) ? n - 1 : -1;
}

/* nsa_dc_put_step: src [B][G][dim] into cache dst at each sequence's row
 * of mode (0 raw row t, 1 window slot t % w, 2 its emitted compressed
 * token). counted: through the failure hook (the restore below is not). */
static nsa_status dc_put_step(nsa_context *ctx, nsa_cl_dcache *dc, cl_mem src, int isv,
                              int mode, cl_mem dst, int counted)
{
    const nsa_config *c = &dc->cfg;
    const int dim = isv ? c->dv : c->dk, dim4 = isv ? dc->dv4 : dc->dk4;
    const int cap = mode == 0 ? (int)dc->cap : mode == 1 ? dc->wcap : (int)dc->ccap;
    nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DC_PUT_STEP], 0, CL_SUCCESS};
    ARG_MEM(&a, src);
    ARG_MEM(&a, dc->buf[DB_TPOS].m);
    ARG_INT(&a, dc->B);
    ARG_INT(&a, c->G);
    ARG_INT(&a, dim);
    ARG_INT(&a, dim4);
    ARG_INT(&a, isv);
    ARG_INT(&a, mode);
    ARG_INT(&a, cap);
    ARG_INT(&a, c->w);
    ARG_INT(&a, c->l);
    ARG_INT(&a, c->d);
    ARG_MEM(&a, dst);
    const size_t items = (size_t)dc->B * c->G * dim4;
    if (counted)
        return dc_launch(ctx, dc, &a, "nsa_dc_put_step", items);
    nsa_clr_bufs carrier = {dc->st, ctx, 0, {0}};
    return nsa_clr_launch(&carrier, &a, "nsa_dc_put_step", items, (size_t)dc->st->wg);
}

/* nsa_dc_get: rows of cache src (isv: a V cache; cap rows a (b, g)) into
 * out [nrows][G][dim]: rows row0 .. of sequence b (modulo wrap when
 * > 0), or with b < 0 slot t % wrap of every sequence (nrows = B). */
static nsa_status dc_get(nsa_context *ctx, nsa_cl_dcache *dc, cl_mem src, int isv, int cap,
                         int b, int64_t row0, int nrows, int wrap, cl_mem out)
{
    const nsa_config *c = &dc->cfg;
    const int dim = isv ? c->dv : c->dk, dim4 = isv ? dc->dv4 : dc->dk4;
    cl_mem tp = dc->buf[DB_TPOS].m ? dc->buf[DB_TPOS].m : out; /* read only when b < 0 */
    nsa_clr_args a = {dc->st->kernel[dc->kv][NSA_CLK_DC_GET], 0, CL_SUCCESS};
    ARG_MEM(&a, src);
    ARG_MEM(&a, tp);
    ARG_INT(&a, b);
    ARG_INT(&a, row0);
    ARG_INT(&a, nrows);
    ARG_INT(&a, wrap);
    ARG_INT(&a, c->G);
    ARG_INT(&a, dim);
    ARG_INT(&a, dim4);
    ARG_INT(&a, isv);
    ARG_INT(&a, cap);
    ARG_MEM(&a, out);
    return dc_launch(ctx, dc, &a, "nsa_dc_get", (size_t)nrows * c->G * dim4);
}

/* nsa_dc_ring_put (src [B][n] into slot t % l of ring) or, gather = 1,
 * nsa_dc_ring_gather (ring -> phi's input z [B][l][n]). */
static nsa_status dc_ring(nsa_context *ctx, nsa_cl_dcache *dc, int gather, cl_mem src, int n,
                          cl_mem dst)
{
    const int k = gather ? NSA_CLK_DC_RING_GATHER : NSA_CLK_DC_RING_PUT;
    nsa_clr_args a = {dc->st->kernel[dc->kv][k], 0, CL_SUCCESS};
    ARG_MEM(&a, src);
    ARG_MEM(&a, dc->buf[DB_TPOS].m);
    ARG_INT(&a, dc->B);
    ARG_INT(&a, n);
    ARG_INT(&a, dc->cfg.l);
    ARG_MEM(&a, dst);
    return dc_launch(ctx, dc, &a, gather ? "nsa_dc_ring_gather" : "nsa_dc_ring_put",
                     (size_t)dc->B * n * (gather ? (size_t)dc->cfg.l : 1));
}

/* phi (cl/phi.cl, the kernels of nsa_cl_compress) of kind (0 K, 1 V) over
 * z [B][l][G][dim] (C = B tokens, src[b] = b l in DB_PSRC) into out
 * [B][G][dim]; the weights from the layer's device copies. */
static nsa_status dc_phi(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj,
                         nsa_clr_bufs *W, int kind, cl_mem out)
{
    const nsa_config *c = &dc->cfg;
    const nsa_phi *phi = kind ? sj->phi_v : sj->phi_k;
    const int G = c->G, l = c->l, dim = kind ? c->dv : c->dk, B = dc->B;
    const int hid = phi->kind == NSA_PHI_MLP ? phi->hidden : 0;
    cl_kernel *K = dc->st->kernel[NSA_CL_KV_F32];
    cl_mem z = dc->buf[DB_Z].m, srcb = dc->buf[DB_PSRC].m, none = srcb;
    cl_mem w[3] = {none, none, none}, bb[3] = {none, none, none};
    nsa_status s = NSA_OK;
    for (int i = 0; i < 3 && s == NSA_OK; i++)
        if (sj->phi_w[kind][i] && (s = dc_op(ctx, dc)) == NSA_OK)
            s = nsa_cl_weights(W, sj->phi_w[kind][i], &w[i], &bb[i]);
    if (s != NSA_OK)
        return s;
    if (hid && (s = dc_ensure(ctx, dc, DB_PHID, sizeof(float) * (size_t)B * G * hid)) != NSA_OK)
        return s;
    const nsa_cl_phi_io io = {phi,   z, phi->pe ? w[2] : none, srcb, w[0], bb[0], w[1], bb[1],
                              hid ? dc->buf[DB_PHID].m : none, out, B, G, l, dim};
    for (int i = 0; i < 2 && s == NSA_OK; i++) {
        nsa_clr_args a;
        size_t items;
        const char *name = nsa_cl_phi_args(K, &io, i, &a, &items);
        if (name)
            s = dc_launch(ctx, dc, &a, name, items);
    }
    return s;
}

/* The K/V part of a device-resident step, x in DB_X and the positions in
 * DB_TPOS: the projections (the host path's jobs: same weights, same
 * kernel), RoPE of the keys, the compression ring, raw row t, the window
 * ring (its old rows saved first: *saved counts the kinds saved), and
 * for the emitting sequences phi (+ RoPE "after") into the compressed
 * cache. What it writes: raw row t, ring slots t % w and t % l, compressed
 * token n_cmp(t) - 1 of an emitting sequence: nothing a step before t
 * committed is read by any later reader but the window slot (the host's
 * view of t - 1 holds t - w), restored on failure. With fp16 / bf16
 * storage the slot's saved copy is its stored value as fp32 (nsa_dc_get:
 * exact) and the restore rounds it again: rounding a value the storage
 * kind holds gives that value, so the slot gets its old bits back. */
static nsa_status dc_step_kv(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj,
                             nsa_clr_bufs *W, int *saved)
{
    const nsa_config *c = &dc->cfg;
    const size_t B = (size_t)dc->B;
    const int nbr = sj->nkv / 2;
    const int kr = c->G * c->dk, vr = c->G * c->dv;
    nsa_status s;
    for (int i = 0; i < nbr; i++)
        if ((s = dc_ensure(ctx, dc, DB_K0 + i, sizeof(float) * B * kr)) != NSA_OK ||
            (s = dc_ensure(ctx, dc, DB_V0 + i, sizeof(float) * B * vr)) != NSA_OK)
            return s;
    if ((s = dc_ensure(ctx, dc, DB_SAVEK, sizeof(float) * B * kr)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_SAVEV, sizeof(float) * B * vr)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_TOKK, sizeof(float) * B * kr)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_TOKV, sizeof(float) * B * vr)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_Z, sizeof(float) * B * c->l *
                                          (size_t)(kr > vr ? kr : vr))) != NSA_OK)
        return s;
    if (!dc->psrc_ok) { /* phi's src offsets b l: once */
        int32_t *src = malloc(sizeof(int32_t) * B);
        if (!src)
            return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for phi's offsets");
        for (size_t b = 0; b < B; b++)
            src[b] = (int32_t)b * c->l;
        if ((s = dc_ensure(ctx, dc, DB_PSRC, sizeof(int32_t) * B)) == NSA_OK)
            s = dc_write_at(ctx, dc, dc->buf[DB_PSRC].m, 0, sizeof(int32_t) * B, src, CL_TRUE);
        free(src);
        if (s != NSA_OK)
            return s;
        dc->psrc_ok = 1;
    }
    cl_mem kvy[6]; /* nkv is 2 or 6 (checked): K then V of each branch */
    for (int i = 0; i < 2 * nbr; i++)
        kvy[i] = dc->buf[(i % 2 ? DB_V0 : DB_K0) + i / 2].m;
    if ((s = dc_linears(ctx, dc, W, sj->kv, 2 * nbr, dc->buf[DB_X].m, kvy)) != NSA_OK)
        return s;
    const int bc = 0, bs = nbr > 1 ? 1 : 0, bw = nbr > 1 ? 2 : 0; /* NSA_BR_* */
    /* phi reads the un-rotated keys with RoPE "after", the rotated ones
     * before (the host's k_for_phi) */
    if (sj->rope_after && (s = dc_ring(ctx, dc, 0, dc->buf[DB_K0 + bc].m, kr, dc->kring)) != NSA_OK)
        return s;
    if (sj->rope_dim > 0 && (s = dc_rope_keys(ctx, dc, sj, nbr)) != NSA_OK)
        return s;
    if ((!sj->rope_after &&
         (s = dc_ring(ctx, dc, 0, dc->buf[DB_K0 + bc].m, kr, dc->kring)) != NSA_OK) ||
        (s = dc_ring(ctx, dc, 0, dc->buf[DB_V0 + bc].m, vr, dc->vring)) != NSA_OK ||
        (s = dc_put_step(ctx, dc, dc->buf[DB_K0 + bs].m, 0, 0, dc->kr, 1)) != NSA_OK ||
        (s = dc_put_step(ctx, dc, dc->buf[DB_V0 + bs].m, 1, 0, dc->vr, 1)) != NSA_OK ||
        (s = dc_get(ctx, dc, dc->kw, 0, dc->wcap, -1, 0, dc->B, c->w, dc->buf[DB_SAVEK].m)) !=
            NSA_OK)
        return s;
    *saved = 1;
    if ((s = dc_get(ctx, dc, dc->vw, 1, dc->wcap, -1, 0, dc->B, c->w, dc->buf[DB_SAVEV].m)) !=
        NSA_OK)
        return s;
    *saved = 2;
    if ((s = dc_put_step(ctx, dc, dc->buf[DB_K0 + bw].m, 0, 1, dc->kw, 1)) != NSA_OK ||
        (s = dc_put_step(ctx, dc, dc->buf[DB_V0 + bw].m, 1, 1, dc->vw, 1)) != NSA_OK)
        return s;
    /* the emitting sequences, and for the host's angles the positions of
     * their tokens (0 elsewhere: rotated, never appended) */
    int64_t *cpos = dc->hpos + B;
    int emit = 0;
    for (int b = 0; b < dc->B; b++) {
        const int64_t e = dc_emitted(c, dc->htpos[b]);
        cpos[b] = e >= 0 ? e * c->d : 0;
        emit |= e >= 0;
    }
    const int rot = sj->rope_after && sj->rope_dim > 0;
    s = emit && rot && !dc->rope64 ? dc_rope_tab(ctx, dc, sj, cpos, 1) : NSA_OK;
    if (!emit || s != NSA_OK)
        return s;
    if ((s = dc_ring(ctx, dc, 1, dc->kring, kr, dc->buf[DB_Z].m)) != NSA_OK ||
        (s = dc_phi(ctx, dc, sj, W, 0, dc->buf[DB_TOKK].m)) != NSA_OK ||
        (rot && (s = dc_rope(ctx, dc, sj, dc->buf[DB_TOKK].m, c->G, 1)) != NSA_OK) ||
        (s = dc_put_step(ctx, dc, dc->buf[DB_TOKK].m, 0, 2, dc->kc, 1)) != NSA_OK ||
        (s = dc_ring(ctx, dc, 1, dc->vring, vr, dc->buf[DB_Z].m)) != NSA_OK ||
        (s = dc_phi(ctx, dc, sj, W, 1, dc->buf[DB_TOKV].m)) != NSA_OK ||
        (s = dc_put_step(ctx, dc, dc->buf[DB_TOKV].m, 1, 2, dc->vc, 1)) != NSA_OK)
        return s;
    return NSA_OK;
}

/* x and the positions up; q and the gates from x; RoPE of q; the decode
 * attention over them; o into Wo; y (and what the job asks for) down. W
 * holds the weights uploaded without a key (none when keyed). */
static nsa_status dc_step_run(nsa_context *ctx, nsa_cl_dcache *dc, const nsa_dstep_job *sj,
                              nsa_clr_bufs *W, int *saved)
{
    const nsa_config *c = &dc->cfg;
    const size_t B = (size_t)dc->B, bh = B * c->H;
    const size_t D = (size_t)sj->q->in, Dy = (size_t)sj->wo->out;
    const double t0 = ctx->verbose ? dc_now_ms() : 0.0;
    const unsigned l0 = dc->st->launches;
    nsa_status s;
    for (int b = 0; b < dc->B; b++) { /* for RoPE and the attention (dc_inputs) */
        dc->htpos[b] = (int32_t)sj->dj->seq[b].t;
        dc->hpos[b] = sj->dj->seq[b].t;
    }
    /* the frequencies (once), or without fp64 the host's angles of t for
     * q and every key */
    s = sj->rope_dim <= 0 ? NSA_OK
        : dc->rope64      ? dc_rope_inv(ctx, dc, sj)
                          : dc_rope_tab(ctx, dc, sj, dc->hpos, 0);
    if (s != NSA_OK)
        return s;
    /* x up and y down through pinned memory where there is some */
    float *pin = dc_pinned(ctx, dc, DC_PIN_STEP, B * (D + Dy));
    if (pin)
        memcpy(pin, sj->x, sizeof(float) * B * D);
    if ((s = dc_ensure(ctx, dc, DB_X, sizeof(float) * B * D)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_Q, sizeof(float) * bh * c->dk)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_GATES, sizeof(float) * bh * 3)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_Y, sizeof(float) * B * Dy)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_TPOS, sizeof(int32_t) * B)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_X].m, sizeof(float) * B * D, pin ? pin : sj->x,
                      CL_FALSE)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_TPOS].m, sizeof(int32_t) * B, dc->htpos, CL_FALSE)) !=
            NSA_OK ||
        (sj->kv && (s = dc_step_kv(ctx, dc, sj, W, saved)) != NSA_OK) ||
        (s = dc_linear(ctx, dc, W, sj->q, dc->buf[DB_X].m, dc->buf[DB_Q].m)) != NSA_OK ||
        (s = dc_step_gates(ctx, dc, sj, W)) != NSA_OK ||
        (sj->rope_dim > 0 && (s = dc_rope(ctx, dc, sj, dc->buf[DB_Q].m, c->H, 0)) != NSA_OK))
        return s;
    dc->q_on_device = 1;
    s = dc_attend_run(ctx, dc, sj->dj);
    dc->q_on_device = 0;
    /* the selection (and outputs asked for) read after Wo: a read between
     * the attention and Wo left the device idle 67-75 us a step (batch 16,
     * H200, NSA_OPENCL_PROFILE=2's timeline; doc/opencl.md) */
    if (s != NSA_OK ||
        (s = dc_linear(ctx, dc, W, sj->wo, dc->buf[DB_OUT].m, dc->buf[DB_Y].m)) != NSA_OK ||
        (s = dc_read(ctx, dc, dc->buf[DB_Y].m, 0, sizeof(float) * B * Dy,
                     pin ? pin + B * D : sj->y)) != NSA_OK ||
        (s = dc_attend_reads(ctx, dc, sj->dj)) != NSA_OK)
        return s;
    const double t1 = ctx->verbose ? dc_now_ms() : 0.0;
    cl_int err = clFinish(dc->st->queue);
    if (err == CL_SUCCESS && pin)
        memcpy(sj->y, pin + B * D, sizeof(float) * B * Dy);
    if (ctx->verbose) /* where a step's time goes: the host's enqueueing, then the wait */
        nsa_log(ctx, "opencl decode step: %u launches, %.3f ms enqueueing, %.3f ms waiting",
                dc->st->launches - l0, t1 - t0, dc_now_ms() - t1);
    if (err != CL_SUCCESS)
        return nsa_cl_fail(ctx, "clFinish", err);
    return nsa_cl_tl_flush(dc->st, ctx, "decode step"); /* NSA_OPENCL_PROFILE=2 */
}

nsa_status nsa_cl_dcache_step(nsa_context *ctx, void *p, const nsa_dstep_job *sj,
                              const nsa_dcache_sync *sync)
{
    nsa_cl_dcache *dc = p;
    const nsa_decode_job *job = sj->dj;
    const nsa_config *c = &dc->cfg;
    if (job->B != dc->B || job->cfg->G != c->G || job->cfg->H != c->H ||
        job->cfg->dk != c->dk || job->cfg->dv != c->dv || sj->q->rows != dc->B ||
        sj->gate->rows != dc->B || sj->wo->rows != dc->B || sj->q->out != c->H * c->dk ||
        (sj->gate2 ? sj->gate2->rows != dc->B || sj->gate2->in != sj->gate->out ||
                         sj->gate2->out != c->H * 3
                   : sj->gate->out != c->H * 3) ||
        sj->wo->in != c->H * c->dv || sj->gate->in != sj->q->in || sj->rope_dim < 0 ||
        sj->rope_dim > c->dk || sj->rope_dim % 2 ||
        (sj->kv && (!dc->dres || (sj->nkv != 2 && sj->nkv != 6) || !sj->phi_k ||
                    !sj->phi_v)))
        return nsa_fail(ctx, NSA_ERR_ARG, "opencl decode step: the job does not match its cache");
    for (int i = 0; sj->kv && i < sj->nkv; i++)
        if (sj->kv[i].rows != dc->B || sj->kv[i].in != sj->q->in ||
            sj->kv[i].out != c->G * (i % 2 ? c->dv : c->dk))
            return nsa_fail(ctx, NSA_ERR_ARG,
                            "opencl decode step: K/V projection %d does not match its cache", i);
    /* NSA_OPENCL_PROFILE=2: the step's timeline starts here */
    nsa_status s = nsa_cl_tl_flush(dc->st, ctx, NULL);
    if (s == NSA_OK)
        s = nsa_cl_feature(ctx, dc->st, dc->kv, NSA_CLF_STEP);
    if (s != NSA_OK)
        return s; /* nothing done: decode.c runs the step without dcache_step */
    dc->fail_at = sync->fail_at;
    dc->ops = 0;
    nsa_clr_bufs W = {dc->st, ctx, 0, {0}};
    int saved = 0; /* window-ring kinds saved by dc_step_kv */
    s = nsa_cl_feature(ctx, dc->st, dc->kv, NSA_CLF_DECODE);
    if (s == NSA_OK)
        s = nsa_cl_kernels(ctx, dc->st, NSA_CL_KV_F32); /* the linears' program */
    if (s == NSA_OK)
        s = dc_sync(ctx, dc, job, sync, sj->kv != NULL);
    if (s == NSA_OK)
        s = dc_step_run(ctx, dc, sj, &W, &saved);
    if (s == NSA_OK && sj->kv && sync->fail_late)
        s = nsa_fail(ctx, NSA_ERR_BACKEND, "injected failure after the attention (test)");
    if (s == NSA_OK && sj->kv) {
        for (int b = 0; b < dc->B; b++) { /* the step's rows are the device's now */
            dc->seq[b].len = job->seq[b].t + 1;
            dc->seq[b].nc = nsa_bm_n_cmp(c, job->seq[b].t);
        }
    }
    if (s != NSA_OK) {
        dc->q_on_device = 0;
        if (sj->kv) {
            /* device-resident: the rows before t stay (see dc_step_kv); the
             * window slots get their old rows back (queued after whatever
             * was queued, outside the failure hook). Sequences whose upload
             * did not finish were marked by dc_sync. */
            if (saved >= 1)
                dc_put_step(ctx, dc, dc->buf[DB_SAVEK].m, 0, 1, dc->kw, 0);
            if (saved >= 2)
                dc_put_step(ctx, dc, dc->buf[DB_SAVEV].m, 1, 1, dc->vw, 0);
            clFinish(dc->st->queue);
        } else {
            clFinish(dc->st->queue);
            for (int b = 0; b < dc->B; b++)
                dc->seq[b].valid = 0;
        }
    }
    nsa_clr_bufs_free(&W);
    dc->fail_at = 0;
    return s;
}

int nsa_cl_dcache_resident(void *p) { return ((nsa_cl_dcache *)p)->dres; }

int nsa_cl_dcache_host_angles(void *p)
{
    const nsa_cl_dcache *dc = p;
    return dc->dres && !dc->rope64;
}

void nsa_cl_dcache_bus(void *p, uint64_t io[3])
{
    nsa_cl_dcache *dc = p;
    for (int i = 0; i < 3; i++) {
        io[i] = dc->bus[i];
        dc->bus[i] = 0;
    }
}

/* Rows [p0, p1) of sequence b of a cache (ring > 0: slots p % ring, at
 * most ring rows) into the host rows host + (p or p % ring) row floats,
 * through DB_FETCH in batches; the reads wait (the host rows are read
 * right after). ring_f32: the compression ring (fp32 row-major, read
 * as it is). */
static nsa_status dc_fetch_rows(nsa_context *ctx, nsa_cl_dcache *dc, cl_mem src, int isv,
                                int cap, int b, int64_t p0, int64_t p1, int ring, int ring_f32,
                                float *host)
{
    const nsa_config *c = &dc->cfg;
    const size_t row = (size_t)c->G * (isv ? c->dv : c->dk);
    const int64_t most = (int64_t)(DC_STAGE_FLOATS / row) > 0 ? (int64_t)(DC_STAGE_FLOATS / row) : 1;
    nsa_status s = NSA_OK;
    for (int64_t q0 = p0; q0 < p1 && s == NSA_OK;) {
        int64_t n = p1 - q0 < most ? p1 - q0 : most;
        const int64_t slot0 = ring > 0 ? q0 % ring : q0;
        if (ring > 0 && slot0 + n > ring)
            n = ring - slot0; /* the ring's end: the rest from slot 0 */
        float *dst = host + (size_t)slot0 * row;
        if (ring_f32) {
            s = dc_read(ctx, dc, src, sizeof(float) * ((size_t)b * c->l + (size_t)slot0) * row,
                        sizeof(float) * (size_t)n * row, dst);
        } else {
            if ((s = dc_ensure(ctx, dc, DB_FETCH, sizeof(float) * (size_t)n * row)) == NSA_OK &&
                (s = dc_get(ctx, dc, src, isv, cap, b, slot0, (int)n, 0, dc->buf[DB_FETCH].m)) ==
                    NSA_OK)
                s = dc_read(ctx, dc, dc->buf[DB_FETCH].m, 0, sizeof(float) * (size_t)n * row, dst);
        }
        if (s == NSA_OK) {
            const cl_int err = clFinish(dc->st->queue);
            if (err != CL_SUCCESS)
                s = nsa_cl_fail(ctx, "clFinish", err);
        }
        q0 += n;
    }
    return s;
}

/* What the host caches of a sequence lack, from the mirror (decode.c:
 * only for a sequence whose mirror copy is valid and current, which a
 * device-resident step guarantees for every sequence with rows the host
 * lacks). With fp16 / bf16 storage the device holds the raw, window and
 * compressed rows only rounded, so the host gets those, as floats: the
 * state's rows are the stored ones (uploading one again, after the
 * mirror went stale or into a clone, rounds it to the same bits); the
 * compression ring's rows come from the fp32 ring, exact. */
nsa_status nsa_cl_dcache_fetch(nsa_context *ctx, void *p, const nsa_dfetch *f)
{
    nsa_cl_dcache *dc = p;
    const nsa_config *c = &dc->cfg;
    if (f->b < 0 || f->b >= dc->B)
        return nsa_fail(ctx, NSA_ERR_ARG, "opencl decode fetch: sequence %d outside 0..%d", f->b,
                        dc->B - 1);
    const dc_seq *m = &dc->seq[f->b];
    if (!m->valid || m->len < f->len || m->nc < f->nc || !dc->kring)
        return nsa_fail(ctx, NSA_ERR_BACKEND,
                        "opencl decode fetch: the mirror lacks sequence %d's rows (%lld of %lld "
                        "raw, %lld of %lld compressed)",
                        f->b, (long long)m->len, (long long)f->len, (long long)m->nc,
                        (long long)f->nc);
    dc->fail_at = 0;
    nsa_status s = nsa_cl_feature(ctx, dc->st, dc->kv, NSA_CLF_DECODE);
    const int b = f->b;
    if (s == NSA_OK && f->r0 < f->len &&
        (s = dc_fetch_rows(ctx, dc, dc->kr, 0, (int)dc->cap, b, f->r0, f->len, 0, 0, f->ks)) ==
            NSA_OK)
        s = dc_fetch_rows(ctx, dc, dc->vr, 1, (int)dc->cap, b, f->r0, f->len, 0, 0, f->vs);
    /* the ring rows: one pass can't wrap twice (at most w, l positions) */
    if (s == NSA_OK && f->w0 < f->len &&
        (s = dc_fetch_rows(ctx, dc, dc->kw, 0, dc->wcap, b, f->w0, f->len, c->w, 0, f->kw)) ==
            NSA_OK)
        s = dc_fetch_rows(ctx, dc, dc->vw, 1, dc->wcap, b, f->w0, f->len, c->w, 0, f->vw);
    if (s == NSA_OK && f->l0 < f->len &&
        (s = dc_fetch_rows(ctx, dc, dc->kring, 0, 0, b, f->l0, f->len, c->l, 1, f->kr)) ==
            NSA_OK)
        s = dc_fetch_rows(ctx, dc, dc->vring, 1, 0, b, f->l0, f->len, c->l, 1, f->vr);
    if (s == NSA_OK && f->c0 < f->nc &&
        (s = dc_fetch_rows(ctx, dc, dc->kc, 0, (int)dc->ccap, b, f->c0, f->nc, 0, 0, f->kc)) ==
            NSA_OK)
        s = dc_fetch_rows(ctx, dc, dc->vc, 1, (int)dc->ccap, b, f->c0, f->nc, 0, 0, f->vc);
    if (s != NSA_OK)
        clFinish(dc->st->queue); /* no read may land later */
    return s;
}

/* Sync, then run; any failure waits for what was queued (it may read the
 * caller's memory) and marks every sequence stale. */
static nsa_status dc_call(nsa_context *ctx, void *p, const nsa_decode_job *job,
                          const nsa_dcache_sync *sync, int dense)
{
    nsa_cl_dcache *dc = p;
    if (job->B != dc->B || job->cfg->G != dc->cfg.G || job->cfg->H != dc->cfg.H ||
        job->cfg->dk != dc->cfg.dk || job->cfg->dv != dc->cfg.dv)
        return nsa_fail(ctx, NSA_ERR_ARG, "opencl decode: the job does not match its cache");
    dc->fail_at = sync->fail_at;
    dc->ops = 0;
    nsa_status s = nsa_cl_feature(ctx, dc->st, dc->kv, NSA_CLF_DECODE);
    if (s == NSA_OK)
        s = dc_sync(ctx, dc, job, sync, 0);
    if (s == NSA_OK)
        s = dense ? dc_dense_run(ctx, dc, job) : dc_attend_run(ctx, dc, job);
    if (s != NSA_OK) {
        clFinish(dc->st->queue);
        for (int b = 0; b < dc->B; b++)
            dc->seq[b].valid = 0;
    }
    dc->fail_at = 0;
    return s;
}

nsa_status nsa_cl_dcache_attend(nsa_context *ctx, void *p, const nsa_decode_job *job,
                            const nsa_dcache_sync *sync)
{
    return dc_call(ctx, p, job, sync, 0);
}

nsa_status nsa_cl_dcache_dense(nsa_context *ctx, void *p, const nsa_decode_job *job,
                           const nsa_dcache_sync *sync)
{
    return dc_call(ctx, p, job, sync, 1);
}

/* Test hook: nsa_dc_select alone over scores[B][G][max_vis] of positions
 * tpos[b] -> sel[B][G][n]. */
nsa_status nsa_cl_dc_topn(nsa_context *ctx, const nsa_config *cfg, int B, const int32_t *tpos,
                          const float *scores, int max_vis, int32_t *sel)
{
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (!st)
        return nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "the context's backend is not opencl");
    nsa_status s = nsa_cl_feature(ctx, st, st->kv, NSA_CLF_DECODE);
    if (s != NSA_OK)
        return s;
    const size_t bg = (size_t)B * cfg->G;
    nsa_clr_bufs W = {st, ctx, 0, {0}};
    cl_mem tb, sb, selb;
    TRY(nsa_clr_buf_new(&W, sizeof(int32_t) * (size_t)B, tpos, &tb));
    TRY(nsa_clr_buf_new(&W, sizeof(float) * bg * (size_t)max_vis, scores, &sb));
    TRY(nsa_clr_buf_new(&W, sizeof(int32_t) * bg * cfg->n, NULL, &selb));
    nsa_clr_args a = select_args(st->kernel[st->kv][NSA_CLK_DC_SELECT], cfg, tb, sb, max_vis, selb);
    TRY(nsa_clr_launch(&W, &a, "nsa_dc_select", bg * (size_t)st->wg, (size_t)st->wg));
    TRY(nsa_clr_download(&W, selb, sizeof(int32_t) * bg * cfg->n, sel));
done:
    nsa_clr_bufs_free(&W);
    return s;
}

/* Test hook: nsa_dc_prob alone. Logits z[B G][hpg][max_nc], statistics
 * pstat[B G][nch][hpg] (max, sum) of which chunks 0 .. ncmb-1 count,
 * positions tpos[b], the mapping map (rows >= max_vis) -> block scores
 * scores[B G][max_vis], whose entries j < n_sel_visible(tpos[b]) the
 * kernel writes (the others keep what scores held on entry). */
nsa_status nsa_cl_dc_scores(nsa_context *ctx, const nsa_config *cfg, int B, const int32_t *tpos,
                            const float *z, int max_nc, const float *pstat, int nch, int ncmb,
                            const nsa_csr *map, int max_vis, float *scores)
{
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (!st)
        return nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "the context's backend is not opencl");
    nsa_cl_dcache *dc;
    nsa_status s = dc_alloc(ctx, st, cfg, B, &dc);
    if (s != NSA_OK)
        return s;
    const size_t bg = (size_t)B * cfg->G, hpg = (size_t)(cfg->H / cfg->G);
    const size_t zb = sizeof(float) * bg * hpg * (size_t)max_nc;
    const size_t pb = sizeof(float) * 2 * bg * (size_t)nch * hpg;
    const size_t sb = sizeof(float) * bg * (size_t)max_vis;
    cl_int err;
    if ((s = dc_ensure(ctx, dc, DB_TPOS, sizeof(int32_t) * (size_t)B)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_ZOUT, zb)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_PSTC, pb)) != NSA_OK ||
        (s = dc_ensure(ctx, dc, DB_S, sb)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_TPOS].m, sizeof(int32_t) * (size_t)B, tpos,
                      CL_FALSE)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_ZOUT].m, zb, z, CL_FALSE)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_PSTC].m, pb, pstat, CL_FALSE)) != NSA_OK ||
        (s = dc_write(ctx, dc, dc->buf[DB_S].m, sb, scores, CL_FALSE)) != NSA_OK ||
        (s = dc_map(ctx, dc, map)) != NSA_OK ||
        (s = dc_prob(ctx, dc, nch, ncmb, max_nc, max_vis)) != NSA_OK ||
        (s = dc_read(ctx, dc, dc->buf[DB_S].m, 0, sb, scores)) != NSA_OK)
        goto done;
    if ((err = clFinish(st->queue)) != CL_SUCCESS)
        s = nsa_cl_fail(ctx, "clFinish", err);
done:
    clFinish(st->queue); /* no write may still read the caller's arrays */
    nsa_cl_dcache_free(dc);
    return s;
}

/* Test hook: x through nsa_dc_put_step and nsa_dc_put into a V cache of
 * one row (B = G = 1, dim = n) of storage kv, the stored bits read back
 * raw, and nsa_dc_get's floats of the first. */
nsa_status nsa_cl_dc_round(nsa_context *ctx, nsa_cl_kv kv, const float *x, int n,
                           uint16_t *step_bits, uint16_t *put_bits, float *back)
{
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    if (!st)
        return nsa_fail(ctx, NSA_ERR_UNAVAILABLE, "the context's backend is not opencl");
    if (kv == NSA_CL_KV_F32 || kv >= NSA_CL_KV_COUNT || n < 4 || n % 4)
        return nsa_fail(ctx, NSA_ERR_ARG, "nsa_cl_dc_round: kv %d, n %d (fp16/bf16, 4k)", kv, n);
    nsa_status s = nsa_cl_feature(ctx, st, kv, NSA_CLF_DECODE);
    if (s != NSA_OK)
        return s;
    const int32_t zero[4] = {0, 0, 0, 0}, desc[4] = {1, 0, 0, 0}; /* raw V, b 0, row 0 */
    const size_t hb = sizeof(uint16_t) * (size_t)n;
    nsa_clr_bufs W = {st, ctx, 0, {0}};
    cl_mem src, tpos, dstep, dput, dsc, out;
    TRY(nsa_clr_buf_new(&W, sizeof(float) * (size_t)n, x, &src));
    TRY(nsa_clr_buf_new(&W, sizeof zero, zero, &tpos));
    TRY(nsa_clr_buf_new(&W, sizeof desc, desc, &dsc));
    TRY(nsa_clr_buf_new(&W, hb, NULL, &dstep));
    TRY(nsa_clr_buf_new(&W, hb, NULL, &dput));
    TRY(nsa_clr_buf_new(&W, sizeof(float) * (size_t)n, NULL, &out));
    {
        nsa_clr_args a = {st->kernel[kv][NSA_CLK_DC_PUT_STEP], 0, CL_SUCCESS};
        ARG_MEM(&a, src);
        ARG_MEM(&a, tpos);
        ARG_INT(&a, 1);     /* B */
        ARG_INT(&a, 1);     /* G */
        ARG_INT(&a, n);     /* dim */
        ARG_INT(&a, n / 4); /* dim4 */
        ARG_INT(&a, 1);     /* isv */
        ARG_INT(&a, 0);     /* mode: raw row t = 0 */
        ARG_INT(&a, 1);     /* cap */
        ARG_INT(&a, 1);     /* w */
        ARG_INT(&a, 1);     /* l */
        ARG_INT(&a, 1);     /* d */
        ARG_MEM(&a, dstep);
        TRY(nsa_clr_launch(&W, &a, "nsa_dc_put_step", (size_t)n / 4, (size_t)st->wg));
    }
    {
        nsa_clr_args a = {st->kernel[kv][NSA_CLK_DC_PUT], 0, CL_SUCCESS};
        ARG_MEM(&a, src);
        ARG_MEM(&a, dsc);
        ARG_INT(&a, 1); /* ndesc */
        ARG_INT(&a, 1); /* G */
        ARG_INT(&a, n);
        ARG_INT(&a, n);
        ARG_INT(&a, n / 4);
        ARG_INT(&a, n / 4);
        ARG_INT(&a, 1); /* cap, ccap, wcap */
        ARG_INT(&a, 1);
        ARG_INT(&a, 1);
        for (int i = 0; i < 6; i++) /* only Vr (kind 1) is written */
            ARG_MEM(&a, dput);
        TRY(nsa_clr_launch(&W, &a, "nsa_dc_put", (size_t)n / 4, (size_t)st->wg));
    }
    {
        nsa_clr_args a = {st->kernel[kv][NSA_CLK_DC_GET], 0, CL_SUCCESS};
        ARG_MEM(&a, dstep);
        ARG_MEM(&a, tpos);
        ARG_INT(&a, 0); /* b */
        ARG_INT(&a, 0); /* row0 */
        ARG_INT(&a, 1); /* nrows */
        ARG_INT(&a, 0); /* wrap */
        ARG_INT(&a, 1); /* G */
        ARG_INT(&a, n);
        ARG_INT(&a, n / 4);
        ARG_INT(&a, 1); /* isv */
        ARG_INT(&a, 1); /* cap */
        ARG_MEM(&a, out);
        TRY(nsa_clr_launch(&W, &a, "nsa_dc_get", (size_t)n / 4, (size_t)st->wg));
    }
    TRY(nsa_clr_download(&W, dstep, hb, step_bits));
    TRY(nsa_clr_download(&W, dput, hb, put_bits));
    TRY(nsa_clr_download(&W, out, sizeof(float) * (size_t)n, back));
done:
    clFinish(st->queue);
    nsa_clr_bufs_free(&W);
    return s;
}
