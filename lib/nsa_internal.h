/* Private declarations shared by the core, the backends and the tests.
 * Nothing here is exported from the shared library (hidden visibility). */
#ifndef NSA_INTERNAL_H
#define NSA_INTERNAL_H

#include "nsa.h"

#include <stdarg.h>
#include <stdio.h>

#if defined(__GNUC__)
#define NSA_HIDDEN __attribute__((visibility("hidden")))
#define NSA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define NSA_HIDDEN
#define NSA_PRINTF(a, b)
#endif

#define NSA_MSG_LEN 512

/* ------------------------------------------------------------- context */
struct nsa_backend_ops;

struct nsa_context {
    const struct nsa_backend_ops *be;
    void *be_state;
    int verbose;
    unsigned fallback_logged; /* nsa_run_* pieces whose fallback was logged (registry.c) */
    char msg[NSA_MSG_LEN];
};

/* Records a formatted message on ctx (if not NULL) and returns s. */
NSA_HIDDEN nsa_status nsa_fail(nsa_context *ctx, nsa_status s, const char *fmt, ...)
    NSA_PRINTF(3, 4);
/* Writes a formatted message into buf (if not NULL) and returns s. */
NSA_HIDDEN nsa_status nsa_fail_buf(char *buf, size_t len, nsa_status s, const char *fmt,
                                   ...) NSA_PRINTF(4, 5);
/* Logs to stderr when NSA_VERBOSE is set (the library's only output). */
NSA_HIDDEN void nsa_log(const nsa_context *ctx, const char *fmt, ...) NSA_PRINTF(2, 3);
NSA_HIDDEN int nsa_env_verbose(void);

/* -------------------------------------------------------- block math */
/* The mapping M of spec 3 (selection block j x compression block i) as CSR
 * over rows 0..rows-1; columns are compression-block indices (>= 0). */
typedef struct nsa_csr {
    int rows;
    int32_t *rowptr; /* [rows+1] */
    int32_t *col;    /* [nnz] */
    int32_t *val;    /* [nnz], small positive integers */
} nsa_csr;

NSA_HIDDEN int nsa_bm_n_cmp(const nsa_config *cfg, int64_t t);
/* Selection blocks visible to t: floor(t/l') + 1. */
NSA_HIDDEN int nsa_bm_n_sel_visible(const nsa_config *cfg, int64_t t);
/* Builds M for selection blocks 0..rows-1; columns limited to i < max_cols. */
NSA_HIDDEN nsa_status nsa_bm_map_build(const nsa_config *cfg, int rows, int max_cols,
                                       nsa_csr *m);
NSA_HIDDEN void nsa_bm_map_free(nsa_csr *m);
/* Forced blocks for t (spec 3), ascending, deduplicated, all visible.
 * forced must hold n_init + n_local entries; returns the count. */
NSA_HIDDEN int nsa_bm_forced(const nsa_config *cfg, int64_t t, int32_t *forced);
/* Top-n selection for t from group scores s[0..visible-1] (spec 3): forced
 * blocks, then the largest s, ties to the smaller j (+0 = -0; NaN below
 * every number); writes n indices sorted ascending, padded with -1. work
 * needs n_sel_visible(t) bytes. */
NSA_HIDDEN void nsa_bm_select(const nsa_config *cfg, int64_t t, const double *s,
                              unsigned char *work, int32_t *sel);
/* Same, float scores (backends that score in float32). */
NSA_HIDDEN void nsa_bm_select_f(const nsa_config *cfg, int64_t t, const float *s,
                                unsigned char *work, int32_t *sel);
/* Checks a caller-given selection row for t: each entry -1 or a visible
 * block, strictly ascending, -1 only as trailing padding. */
NSA_HIDDEN int nsa_bm_selection_valid(const nsa_config *cfg, int64_t t,
                                      const int32_t *sel);

/* ----------------------------------------------------------- batches */
/* Validates cu_seqlens (or the implicit single sequence) against T and
 * fills *cu_out with a usable array (allocated if cu_seqlens was NULL;
 * free with nsa_batch_free). cmp_off[B+1] gets compressed-token offsets. */
typedef struct nsa_batch {
    int B;
    int64_t T;
    const int32_t *cu;
    int32_t *cu_owned;
    int64_t *cmp_off;
    int max_len;
} nsa_batch;

NSA_HIDDEN nsa_status nsa_batch_init(nsa_context *ctx, const nsa_config *cfg, int64_t T,
                                     const int32_t *cu_seqlens, int B, nsa_batch *b);
NSA_HIDDEN void nsa_batch_free(nsa_batch *b);

/* --------------------------------------------------------- backend jobs */
/* phi over one tensor kind (K or V): x[T][G][dim] -> out[C][G][dim]. */
typedef struct nsa_cmp_job {
    const nsa_config *cfg;
    const nsa_batch *batch;
    const float *x;
    int dim;
    const nsa_phi *phi; /* never NULL here: avg is spelled out */
    float *out;
} nsa_cmp_job;

/* The attention of spec 2-5 given the compressed tokens. */
typedef struct nsa_attn_job {
    const nsa_config *cfg;
    float scale;
    const nsa_batch *batch;
    const nsa_csr *map; /* rows cover the longest sequence */
    const float *q;
    const float *kc, *vc; /* [C][G][dk], [C][G][dv] */
    const float *k_slc, *v_slc, *k_win, *v_win;
    const float *gates;
    const int32_t *sel_in;
    float *out, *out_cmp, *out_slc, *out_win;
    int32_t *sel_out;
} nsa_attn_job;

/* A backend's device copies of one layer's weights, owned by the layer
 * (freed with it through release; no global state). data and release are
 * the backend's; fail_after is a test hook: the n-th weight upload into
 * this cache fails (n >= 1; 0 = none). */
typedef struct nsa_wcache {
    void *data;
    void (*release)(void *data);
    int fail_after;
} nsa_wcache;

/* Slots of a layer's weight cache: one per (W, b) pair a linear reads. */
enum { NSA_WSLOT_Q, NSA_WSLOT_K0, NSA_WSLOT_V0 = NSA_WSLOT_K0 + 3, NSA_WSLOT_GATE1 = NSA_WSLOT_V0 + 3,
       NSA_WSLOT_GATE2, NSA_WSLOT_O,
       /* phi's tensors as (W, b) pairs for a device-resident decode step:
        * per kind (K, V) the first layer (w1, b1), the second (w2, b2) and
        * the position embedding (pe, none) */
       NSA_WSLOT_PHI, NSA_WSLOT_COUNT = NSA_WSLOT_PHI + 6 };

/* Lets a backend keep a device copy of a linear's W and b: the copy in
 * cache's slot is valid only while it was made at generation gen (the
 * layer bumps its generation whenever its weights may have changed), so a
 * backend never serves a stale copy. */
typedef struct nsa_wkey {
    nsa_wcache *cache;
    int slot;     /* NSA_WSLOT_* */
    uint64_t gen; /* the layer's weights generation */
} nsa_wkey;

/* y[rows][out] = x[rows][in] W^T + b; W is [out][in] (torch.nn.Linear). */
typedef struct nsa_linear_job {
    const float *x;
    int64_t rows;
    int in, out;
    const float *w, *b; /* b may be NULL */
    float *y;
    const nsa_wkey *key; /* NULL: W and b are plain host data (backends may ignore it) */
} nsa_linear_job;

/* Decode (spec 7): one new token per sequence, attending over its caches. */
typedef struct nsa_decode_seq {
    int64_t t;            /* position of the new token (its cache holds 0..t) */
    const float *kc, *vc; /* emitted compressed tokens [n_cmp(t)][G][dk|dv] */
    const float *ks, *vs; /* raw selection K/V [t+1][G][dk|dv] */
    const float *kw, *vw; /* window ring [w][G][dk|dv]: position p at row p % w */
    const float *kr, *vr; /* compression ring [l][G][dk|dv] (phi's input): p at row p % l */
} nsa_decode_seq;

typedef struct nsa_decode_job {
    const nsa_config *cfg;
    float scale;
    const nsa_csr *map; /* rows cover the longest sequence */
    int B;
    const nsa_decode_seq *seq; /* [B] */
    const float *q;            /* [B][H][dk] */
    const float *gates;        /* [B][H][3] */
    float *out;                /* [B][H][dv] */
    float *out_cmp, *out_slc, *out_win; /* optional [B][H][dv] */
    int32_t *sel_out;          /* [B][G][n], always given (counters need it) */
} nsa_decode_job;

/* What decode.c tells a device mirror of its caches at each call: per
 * sequence a generation number, bumped on reset and prefill, so the mirror
 * knows when its copy of a sequence is stale and must be uploaded whole. */
typedef struct nsa_dcache_sync {
    const uint64_t *gen; /* [B] */
    int fail_at; /* tests: the fail_at-th device operation of the call fails (0 = none) */
    int fail_late; /* tests: a device-resident step fails after its last operation */
} nsa_dcache_sync;

/* One decode step past the K/V projections, on a backend that keeps it on
 * the device (vtable dcache_step): x_t goes up, q = x Wq^T and the gates
 * (spec 5: the first linear x Wg1^T + bg1, with a gate MLP SiLU and the
 * second linear, then the activation) are computed there, q rotated there
 * (the angles at t = dj->seq[b].t), the decode attention (dj, whose q,
 * gates and out are unused) reads them there, and its output goes into Wo
 * there: only y (and dj's selection, the branch outputs and gates_out when
 * asked) comes back. The linears are keyed (device-resident weights);
 * their x and y are unused. */
typedef struct nsa_dstep_job {
    const nsa_decode_job *dj;
    const float *x;                      /* [B][D] */
    const nsa_linear_job *q, *gate, *wo; /* q: D -> H dk; gate: D -> H 3 (D -> hidden with
                                            gate2); wo: H dv -> D */
    const nsa_linear_job *gate2;         /* the gate MLP's second linear: hidden -> H 3, or NULL */
    int rope_dim;
    float rope_base;    /* angle i at t: t rope_base^(-2i/rope_dim), in double (nsa_rope_table) */
    int gate_sigmoid;   /* 1: sigmoid; 0: softmax with gate_tau */
    float gate_tau;
    float *gates_out;   /* optional [B][H][3] */
    float *y;           /* [B][D] */
    /* Device-resident step (only when the mirror's dcache_resident said
     * yes; else NULL / 0): the K/V projections of x (kv[2 i], kv[2 i + 1]
     * = K, V of branch i, nkv = 2 or 6: shared K/V or cmp, slc, win), their
     * keys rotated at t (rope_dim), the rows written into the mirror (raw
     * row t, window ring slot t % w, compression ring slot t % l), and for
     * the sequences whose step emits a compressed token phi over the ring
     * (phi_k, phi_v and their weights phi_w[kind][3]: (w1, b1), (w2, b2),
     * (pe, -) as keyed jobs, NULL where the phi has none), rotated at its
     * position when rope_after (phi then reads un-rotated keys), appended
     * to the compressed cache. dj->seq[b] then describes the host caches,
     * which hold rows 0 .. t-1 only where the mirror's copy of b is stale
     * (decode.c fetches before anything else may invalidate it). */
    const nsa_linear_job *kv;
    int nkv;
    int rope_after;
    const nsa_phi *phi_k, *phi_v;
    const nsa_linear_job *phi_w[2][3];
} nsa_dstep_job;

/* What a sequence's host caches lack, for dcache_fetch: raw rows
 * [r0, len), window-ring positions [w0, len), compression-ring positions
 * [l0, len), compressed tokens [c0, nc), each into the host arrays at the
 * rows decode.c keeps them (ks row p, kw row p % w, kr row p % l, kc row
 * i). */
typedef struct nsa_dfetch {
    int b;
    int64_t len, r0, w0, l0, nc, c0;
    float *ks, *vs, *kw, *vw, *kr, *vr, *kc, *vc;
} nsa_dfetch;

/* RoPE's frequencies inv[i] = base^(-2i/rope_dim), i < rope_dim/2: the
 * angle i at t is t inv[i] (what the OpenCL kernels upload once). */
NSA_HIDDEN void nsa_rope_inv_freq(int rope_dim, float base, double *inv);
/* RoPE's cos and sin of an angle (cl/sincos64.cl: the same bits on the
 * host and an OpenCL device with fp64). */
NSA_HIDDEN void nsa_rope_sincos(double theta, double *cs, double *sn);
/* The angles of the host RoPE (spec 6) at pos[r] as floats:
 * tab[r][rope_dim], the cosines of the rope_dim/2 angles then their sines
 * (computed in double as nsa_rope_apply does, then rounded; lib/layer.c). */
NSA_HIDDEN void nsa_rope_table(int rope_dim, float base, const int64_t *pos, int64_t rows,
                               float *tab);

/* One entry of the backend registry. NULL members fall back to the
 * reference implementation (logged when NSA_VERBOSE is set). */
typedef struct nsa_backend_ops {
    const char *name;
    const char *description;
    /* 1 if usable here; otherwise 0 and why. */
    int (*probe)(char *why, size_t why_len);
    nsa_status (*init)(nsa_context *ctx, void **state);
    void (*fini)(void *state);
    nsa_status (*compress)(nsa_context *ctx, const nsa_cmp_job *job);
    nsa_status (*attend)(nsa_context *ctx, const nsa_attn_job *job);
    nsa_status (*linear)(nsa_context *ctx, const nsa_linear_job *job);
    nsa_status (*decode_attend)(nsa_context *ctx, const nsa_decode_job *job);
    /* Dense causal attention of each new token over all its raw selection
     * K/V (seq[b].ks/vs, t+1 rows) into job->out: the decode baseline. */
    nsa_status (*dense_decode)(nsa_context *ctx, const nsa_decode_job *job);
    /* Optional device mirror of a decode state's caches. Each call first
     * uploads what the host caches hold and the mirror lacks (job->seq[b]
     * describes the host caches), then runs as decode_attend /
     * dense_decode over the device copy. A failure marks the copy stale
     * (decode.c first fetches any row only the mirror holds: see
     * dcache_resident). */
    nsa_status (*dcache_new)(nsa_context *ctx, const nsa_config *cfg, int B, void **dc);
    void (*dcache_free)(void *dc);
    nsa_status (*dcache_attend)(nsa_context *ctx, void *dc, const nsa_decode_job *job,
                                const nsa_dcache_sync *sync);
    nsa_status (*dcache_dense)(nsa_context *ctx, void *dc, const nsa_decode_job *job,
                               const nsa_dcache_sync *sync);
    /* Optional: n linears over one x (same x, rows and in), as the
     * projections of a layer: a device backend uploads x once and waits
     * once. NULL: one linear job each. */
    nsa_status (*linear_many)(nsa_context *ctx, const nsa_linear_job *jobs, int n);
    /* Optional, with dcache_*: the rest of a decode step on the device (see
     * nsa_dstep_job), syncing the mirror first as dcache_attend does. */
    nsa_status (*dcache_step)(nsa_context *ctx, void *dc, const nsa_dstep_job *job,
                              const nsa_dcache_sync *sync);
    /* Optional, with dcache_step: 1 if this mirror runs device-resident
     * steps (nsa_dstep_job's kv ...): then the mirror holds rows the host
     * caches lack until dcache_fetch brings them down, as the mirror
     * stores them (a mirror storing K/V rounded gives the rounded values;
     * uploading such a row again must store the same value). */
    int (*dcache_resident)(void *dc);
    nsa_status (*dcache_fetch)(nsa_context *ctx, void *dc, const nsa_dfetch *f);
    /* Test hook (optional): bytes the mirror's calls moved to and from the
     * device since the last call of this hook (io[0] up, io[1] down; io[2]
     * of them up: the attention's mapping, re-sent when the longest
     * sequence's block counts change), then zeroed. */
    void (*dcache_bus)(void *dc, uint64_t io[3]);
    /* Optional, with dcache_resident: 1 if this mirror's device-resident
     * steps rotate the keys by the host's float angle table (a device
     * without fp64): the keys then agree with the host RoPE within spec 9,
     * not bit for bit (decode's emitted tokens equal prefill's only within
     * it); 0 or absent: bit for bit. */
    int (*dcache_host_angles)(void *dc);
} nsa_backend_ops;

NSA_HIDDEN const nsa_backend_ops *nsa_registry_find(const char *name);
extern NSA_HIDDEN const nsa_backend_ops nsa_backend_ref;

/* Reference kernels, also used as the fallback for missing pieces. */
NSA_HIDDEN nsa_status nsa_ref_compress(nsa_context *ctx, const nsa_cmp_job *job);
NSA_HIDDEN nsa_status nsa_ref_attend(nsa_context *ctx, const nsa_attn_job *job);
NSA_HIDDEN nsa_status nsa_ref_linear(nsa_context *ctx, const nsa_linear_job *job);
NSA_HIDDEN nsa_status nsa_ref_decode_attend(nsa_context *ctx, const nsa_decode_job *job);
NSA_HIDDEN nsa_status nsa_ref_dense_decode(nsa_context *ctx, const nsa_decode_job *job);

/* Dispatch helpers: the context's backend, or the reference. */
NSA_HIDDEN nsa_status nsa_run_compress(nsa_context *ctx, const nsa_cmp_job *job);
NSA_HIDDEN nsa_status nsa_run_attend(nsa_context *ctx, const nsa_attn_job *job);
NSA_HIDDEN nsa_status nsa_run_linear(nsa_context *ctx, const nsa_linear_job *job);
/* n linears over one x: the backend's linear_many, else nsa_run_linear on
 * each in turn (stopping at the first failure). */
/* Context creation's one path (registry.c): a context on backend be,
 * started by init_on(ctx, state, arg) (a backend's own entry point, e.g.
 * the OpenCL device choice) or, when NULL, by be->init; the log line and
 * msg as nsa_context_create's. */
typedef nsa_status (*nsa_init_on_fn)(nsa_context *ctx, void **state, const char *arg);
NSA_HIDDEN nsa_status nsa_context_start(const nsa_backend_ops *be, nsa_init_on_fn init_on,
                                        const char *arg, nsa_context **out, char *msg,
                                        size_t msg_len);
NSA_HIDDEN nsa_status nsa_run_linear_many(nsa_context *ctx, const nsa_linear_job *jobs, int n);
NSA_HIDDEN nsa_status nsa_run_decode_attend(nsa_context *ctx, const nsa_decode_job *job);
NSA_HIDDEN nsa_status nsa_run_dense_decode(nsa_context *ctx, const nsa_decode_job *job);

/* Runs phi then attention for checked arguments over a checked batch (the
 * operator's core, shared with the layer). hook, if set, sees the
 * compressed keys before attention (the layer's RoPE "after"). */
typedef void (*nsa_kc_hook)(void *user, const nsa_batch *b, float *kc);
NSA_HIDDEN nsa_status nsa_op_core(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *b,
                                  const nsa_op_args *a, nsa_kc_hook hook, void *user);

/* Validates an nsa_phi for dimension dim. */
NSA_HIDDEN nsa_status nsa_phi_check(nsa_context *ctx, const nsa_phi *phi, const char *which);

/* -------------------------------------------------------------- misc */
/* splitmix64: the deterministic generator behind nsa_layer_init_random. */
typedef struct nsa_rng {
    uint64_t s;
} nsa_rng;
NSA_HIDDEN uint64_t nsa_rng_next(nsa_rng *r);
/* Uniform in [-1, 1), exactly reproducible (24 random bits). */
NSA_HIDDEN float nsa_rng_uniform(nsa_rng *r);

/* Overflow-checked a*b*c element counts. */
NSA_HIDDEN int nsa_mul_ok(size_t a, size_t b, size_t *out);

#endif
