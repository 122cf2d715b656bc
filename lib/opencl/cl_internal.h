/* Private to the OpenCL backend (lib/opencl/): its per-context state and
 * the runtime helpers shared by the host files and the tests. */
#ifndef NSA_CL_INTERNAL_H
#define NSA_CL_INTERNAL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifdef __APPLE__
#include <OpenCL/opencl.h>
#else
#include <CL/cl.h>
#endif

#include "nsa_internal.h"

/* cl_nv_device_attribute_query (cl_ext.h may lack it): the tensor-core
 * program's rule (cl_backend.c) and the tests that restate it. */
#ifndef CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV
#define CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV 0x4000
#endif

/* How K/V live on the device (the host API is fp32; values are rounded
 * to nearest even on upload). */
typedef enum nsa_cl_kv {
    NSA_CL_KV_F32 = 0,
    NSA_CL_KV_F16 = 1,
    NSA_CL_KV_BF16 = 2,
    NSA_CL_KV_COUNT
} nsa_cl_kv;

enum {
    NSA_CLK_PHI_AVG,
    NSA_CLK_PHI_LIN,
    NSA_CLK_PHI_OUT,
    NSA_CLK_CMP_SCORES,
    NSA_CLK_TOPN,
    NSA_CLK_GROUP_ATTN,
    NSA_CLK_GATE,
    NSA_CLK_LINEAR,
    NSA_CLK_LINEAR_ROWS,
    NSA_CLK_DC_PARTIAL,
    NSA_CLK_DC_PROB,
    NSA_CLK_DC_SELECT,
    NSA_CLK_DC_FINAL,
    NSA_CLK_DC_PUT,
    NSA_CLK_DS_ROPE,
    NSA_CLK_DS_GATE,
    NSA_CLK_SLC_ATTN,
    NSA_CLK_DS_SILU,
    NSA_CLK_DR_ROPE,
    NSA_CLK_DR_ANGLES,
    NSA_CLK_CMP_SCORES_WG,
    NSA_CLK_DC_PUT_STEP,
    NSA_CLK_DC_GET,
    NSA_CLK_DC_RING_PUT,
    NSA_CLK_DC_RING_GATHER,
    NSA_CLK_DR_ROPE_CMP,
    NSA_CLK_LINEAR_FEW,
    NSA_CLK_DR_ROPE_KEYS,
    NSA_CLK_COUNT
};

/* What a kernel serves, from its name. Core kernels (prefill: phi,
 * attention, nsa_linear) are mandatory: one that cannot run on the device
 * makes the backend unavailable. The others are optional: an unusable one
 * is NULL in nsa_cl_state.kernel, why is kept and logged, and what needs it
 * reports NSA_ERR_UNSUPPORTED (its callers then take the host path). */
typedef enum nsa_cl_feat {
    NSA_CLF_CORE,
    NSA_CLF_DECODE, /* nsa_dc_*: the decode cache mirror (vtable dcache_*) */
    NSA_CLF_STEP,   /* nsa_ds_*: the fused decode step (vtable dcache_step) */
    NSA_CLF_ROWS,   /* nsa_linear_rows: few-row linears (else nsa_linear) */
    NSA_CLF_ROPE64  /* nsa_dr_*: the step's RoPE angles in double (cl_khr_fp64) */
} nsa_cl_feat;

/* Kernels of the tensor-core program (cl/mma_frag.cl, built with
 * -DNSA_MMA=1 where the device allows: NVIDIA, compute capability >= 8.0,
 * NSA_OPENCL_MMA not 0). Optional: NULL means the portable kernel runs. */
enum {
    NSA_CLM_DC_PARTIAL,
    NSA_CLM_GROUP_ATTN,
    NSA_CLM_SLC_ATTN,
    NSA_CLM_LINEAR_ROWS, /* nsa_linear_rows_mma (cl/linear_mma.cl) */
    NSA_CLM_COUNT
};

/* What the binary cache did on the last program build. */
typedef enum nsa_cl_cache_event {
    NSA_CL_CACHE_OFF = 0,    /* disabled (NSA_OPENCL_CACHE=0) or no cache dir */
    NSA_CL_CACHE_HIT = 1,    /* loaded a cached binary */
    NSA_CL_CACHE_MISS = 2,   /* built from source, entry written */
    NSA_CL_CACHE_REBUILT = 3 /* entry unusable (corrupt, stale): rebuilt */
} nsa_cl_cache_event;

/* Device time per kernel label (NSA_OPENCL_PROFILE=1 or 2; for benchmarks). */
#define NSA_CL_PROF_MAX 24 /* operator, phi, linear and decode labels */
typedef struct nsa_cl_prof {
    char label[32];
    double ns;
    long calls;
} nsa_cl_prof;

/* NSA_OPENCL_PROFILE=2: launches not yet read (their events are kept, not
 * waited for, so the queue runs as without profiling); nsa_cl_tl_flush
 * reads them. */
#define NSA_CL_TL_MAX 64
typedef struct nsa_cl_tl {
    cl_event ev;
    char label[32];
    int xfer;        /* a transfer (decode caches' reads and writes), not a kernel */
    cl_ulong t0, t1; /* start and end (ns), set when read */
} nsa_cl_tl;

typedef struct nsa_cl_state {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    char device_name[256], platform_name[256], vendor[256];
    char platform_version[256], driver_version[256], device_version[256];
    cl_device_type type;
    cl_ulong local_mem, global_mem, max_alloc;
    size_t max_wg;
    cl_uint compute_units; /* CL_DEVICE_MAX_COMPUTE_UNITS (decode's chunk model) */
    int wg, tile; /* from the per-device table, as -D defines */
    /* register tiles of nsa_group_attn (cl/attn.cl), table or
     * NSA_OPENCL_TUNE, as -D defines: logits rh heads x rk keys a lane, sk
     * lanes along keys (the key tile is a multiple of sk rk); P V rho heads
     * x re float4 columns a lane, pe lanes along dv, pvi such items a lane */
    int pvi, rh, rk, sk, rho, re, pe;
    /* tokens a work-group of the selected branch serves (nsa_slc_attn,
     * nsa_slc_attn_mma), table or NSA_OPENCL_SLC_TQ, as -DNSA_TQ; 0: the
     * single-token nsa_group_attn(_mma) */
    int slc_tq;
    int max_slc_tq; /* tests: cap on those tokens at launch (0 = none) */
    nsa_cl_kv kv;       /* storage of K/V for attend */
    int max_chunk_rows; /* tests: cap on rows per chunk (0 = none) */
    size_t chunk_bytes; /* NSA_OPENCL_CHUNK_MB: compressed-branch scratch a chunk (0 = default) */
    int max_heads_wg;   /* tests: cap on heads per work-group (0 = none) */
    /* NSA_OPENCL_LM_WARPS (1, 2, 4, 8): warps of nsa_linear_rows_mma's
     * work-groups (tuning; 0 = by shape, cl_linear.c) */
    int lm_warps;
    cl_program program[NSA_CL_KV_COUNT];
    cl_kernel kernel[NSA_CL_KV_COUNT][NSA_CLK_COUNT]; /* NULL: optional, unusable */
    char kernel_why[NSA_CL_KV_COUNT][NSA_CLK_COUNT][160]; /* why NULL ("" if not) */
    /* the tensor-core program of each storage kind (built with the
     * program of st->kv at init: tests switch st->kv, so each kind keeps
     * its own), its kernels (NULL: unusable, portable kernels run) and
     * why not */
    cl_program mma_program[NSA_CL_KV_COUNT];
    cl_kernel mma_kernel[NSA_CL_KV_COUNT][NSA_CLM_COUNT];
    char mma_why[NSA_CL_KV_COUNT][NSA_CLM_COUNT][160];
    /* mma_init ran for the kind: the first nsa_cl_kernels call for it
     * while it is the storage in use (the main program may have been
     * built earlier, for another kind's caller) */
    int mma_tried[NSA_CL_KV_COUNT];
    nsa_cl_cache_event cache_event;
    char cache_path[1024]; /* the entry of the last build ("" if none) */
    char *build_log;       /* of the last failed build, NULL if none */
    /* NSA_OPENCL_PROFILE: 0 off; 1 every launch waited for and timed;
     * 2 timed without waiting (the timeline, nsa_cl_tl_flush) */
    int profile;
    unsigned launches;     /* kernels enqueued (NSA_VERBOSE's decode step log) */
    int n_prof;
    nsa_cl_prof prof[NSA_CL_PROF_MAX];
    int n_tl;
    nsa_cl_tl tl[NSA_CL_TL_MAX];
    /* launches the last nsa_cl_tl_flush read: tl[0 .. n_tl_read) keep their
     * labels and times until the next launch (benches take spans of them) */
    int n_tl_read;
} nsa_cl_state;

extern NSA_HIDDEN const nsa_backend_ops nsa_backend_opencl;

/* NSA_OPENCL_PROFILE=2: waits for the kept launches and adds their device
 * times to prof; with ctx verbose (NSA_VERBOSE=1) and what given, logs
 * their timeline as what's (each launch's start from the first one's, its
 * duration, the idle time before it: where a decode step's device time
 * goes between its kernels). ctx (may be NULL) gets the error. */
NSA_HIDDEN nsa_status nsa_cl_tl_flush(nsa_cl_state *st, nsa_context *ctx, const char *what);
/* NSA_OPENCL_PROFILE=2: keeps ev (a launch, or with xfer a transfer) for
 * the next flush (flushing first if the timeline is full; ev released on
 * failure). */
NSA_HIDDEN nsa_status nsa_cl_tl_keep(nsa_cl_state *st, nsa_context *ctx, cl_event ev,
                                     const char *label, int xfer);

/* Lanes per head row in nsa_group_attn's softmax (NSA_NP). */
#define NSA_CL_NP 8

/* nsa_group_attn_mma (cl/attn_mma.cl): keys a tile, the row stride of
 * its probabilities, float4 column groups of 8 a warp holds (MMA_TK,
 * MMA_PST, MMA_PVC there). */
#define NSA_CL_MMA_TK 64
#define NSA_CL_MMA_PST (NSA_CL_MMA_TK + 4)
#define NSA_CL_MMA_PVC 1

/* nsa_cmp_scores_wg (cl/attn.cl): heads a batch (NSA_CSH) and tokens a
 * tile in units of the work-group's lanes (NSA_CSS). */
#define NSA_CL_CS_HEADS 8
#define NSA_CL_CS_SPAN 4

/* Tile of nsa_linear (cl/linear.cl's default NSA_GEMM_TS). */
#define NSA_CL_GEMM_TS 16

/* The jobs of the vtable. */
NSA_HIDDEN nsa_status nsa_cl_compress(nsa_context *ctx, const nsa_cmp_job *job);
NSA_HIDDEN nsa_status nsa_cl_attend(nsa_context *ctx, const nsa_attn_job *job);
NSA_HIDDEN nsa_status nsa_cl_linear(nsa_context *ctx, const nsa_linear_job *job);
/* The decode cache mirror (cl_decode.c). */
NSA_HIDDEN nsa_status nsa_cl_dcache_new(nsa_context *ctx, const nsa_config *cfg, int B,
                                        void **dc);
NSA_HIDDEN void nsa_cl_dcache_free(void *dc);
NSA_HIDDEN nsa_status nsa_cl_dcache_attend(nsa_context *ctx, void *dc,
                                           const nsa_decode_job *job,
                                           const nsa_dcache_sync *sync);
NSA_HIDDEN nsa_status nsa_cl_dcache_dense(nsa_context *ctx, void *dc, const nsa_decode_job *job,
                                          const nsa_dcache_sync *sync);
NSA_HIDDEN nsa_status nsa_cl_dcache_step(nsa_context *ctx, void *dc, const nsa_dstep_job *job,
                                         const nsa_dcache_sync *sync);
NSA_HIDDEN int nsa_cl_dcache_resident(void *dc);
NSA_HIDDEN nsa_status nsa_cl_dcache_fetch(nsa_context *ctx, void *dc, const nsa_dfetch *f);
NSA_HIDDEN void nsa_cl_dcache_bus(void *dc, uint64_t io[3]);
NSA_HIDDEN int nsa_cl_dcache_host_angles(void *dc);

/* Records "OpenCL <call> failed: <NAME> (<code>)" on ctx. */
NSA_HIDDEN nsa_status nsa_cl_fail(nsa_context *ctx, const char *call, cl_int err);
NSA_HIDDEN const char *nsa_cl_error_name(cl_int err);

/* Picks the device named by spec (NSA_OPENCL_DEVICE syntax; NULL = first
 * GPU or accelerator). On failure writes why and returns 0. */
NSA_HIDDEN int nsa_cl_pick_device(const char *spec, cl_platform_id *plat, cl_device_id *dev,
                                  char *why, size_t why_len);

/* Builds src with options for st's device, through the binary cache.
 * A failed compile keeps the log in st->build_log. */
NSA_HIDDEN nsa_status nsa_cl_build(nsa_context *ctx, nsa_cl_state *st, const char *src,
                                   const char *options, cl_program *out);

/* Fills st->wg and st->tile from the per-device table. */
NSA_HIDDEN void nsa_cl_tune(nsa_cl_state *st);
/* The compile options of storage kind kv for st's device. */
NSA_HIDDEN void nsa_cl_options(const nsa_cl_state *st, nsa_cl_kv kv, char *buf, size_t len);

/* The program and kernels of storage kind kv, built on first use: every
 * core kernel (else NSA_ERR_UNAVAILABLE naming it and why), the usable
 * optional ones. NSA_OPENCL_UNUSABLE=name,name... (a test hook) marks
 * those kernels unusable. */
NSA_HIDDEN nsa_status nsa_cl_kernels(nsa_context *ctx, nsa_cl_state *st, nsa_cl_kv kv);
/* Kernel k's feature. */
NSA_HIDDEN nsa_cl_feat nsa_cl_kernel_feat(int k);
/* NSA_OK when program kv is built and every kernel of feature f usable;
 * else NSA_ERR_UNSUPPORTED naming the first unusable one and why (or the
 * build's error). */
NSA_HIDDEN nsa_status nsa_cl_feature(nsa_context *ctx, nsa_cl_state *st, nsa_cl_kv kv,
                                     nsa_cl_feat f);

/* The embedded kernel source and its hash (generated from cl/). */
NSA_HIDDEN const char *nsa_cl_source(void);
NSA_HIDDEN const char *nsa_cl_source_hash(void);

/* nsa_context_create_opencl when OpenCL is built in. */
NSA_HIDDEN nsa_status nsa_cl_context_create(const char *device, nsa_context **out, char *msg,
                                            size_t msg_len);

/* Test and bench hooks. */
NSA_HIDDEN nsa_cl_state *nsa_cl_state_of(nsa_context *ctx);
/* The hooks' start: the context's opencl state (NSA_ERR_UNAVAILABLE on
 * another backend) with the kernels of its storage kind built. */
NSA_HIDDEN nsa_status nsa_cl_hook_state(nsa_context *ctx, nsa_cl_state **st);
/* Dense causal attention over one group-shaped problem (the baseline):
 * q[T][H][dk], k[T][G][dk], v[T][G][dv] -> out[T][H][dv], per sequence. */
NSA_HIDDEN nsa_status nsa_cl_dense(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *b,
                                   const float *q, const float *k, const float *v, float *out);

/* nsa_linear_few alone over n (1 .. 6) linears of one x (same x, rows,
 * in; weights uploaded per call): NSA_ERR_UNSUPPORTED where the device
 * lacks the kernel (cl_linear.c). */
NSA_HIDDEN nsa_status nsa_cl_linear_few(nsa_context *ctx, const nsa_linear_job *jobs, int n);

/* nsa_linear_rows (mma = 0) or nsa_linear_rows_mma (mma = 1, nw warps a
 * work-group: 1, 2, 4 or 8; 0 as a decode step chooses) alone over j (1 ..
 * 16 rows, in % 4 == 0; weights uploaded per call): NSA_ERR_UNSUPPORTED
 * where the device lacks the kernel (cl_linear.c). */
NSA_HIDDEN nsa_status nsa_cl_linear_rows(nsa_context *ctx, const nsa_linear_job *j, int mma,
                                         int nw);

/* The top-n kernel alone over scores[T][G][max_vis] -> sel[T][G][n]. */
NSA_HIDDEN nsa_status nsa_cl_topn(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *b,
                                  const float *scores, int max_vis, int32_t *sel);

/* The prefill group scores alone over rows row0 .. row0 + rows - 1 of
 * the batch: logits z[rows][G][H/G][max_nc], statistics
 * stats[rows][G][H/G][2] (max, sum), the mapping map (max_vis rows) ->
 * scores[rows][G][max_vis], entries past each row's visible blocks kept
 * as given. kernel: 0 as nsa_cl_attend chooses, 1 nsa_cmp_scores (a
 * work-item per block), 2 nsa_cmp_scores_wg (NSA_ERR_UNSUPPORTED where
 * its tiles cannot take the mapping). */
NSA_HIDDEN nsa_status nsa_cl_cmp_scores(nsa_context *ctx, const nsa_config *cfg,
                                        const nsa_batch *b, int row0, int rows, const float *z,
                                        int max_nc, const float *stats, const nsa_csr *map,
                                        int max_vis, int kernel, float *scores);

/* The decode top-n kernel alone over scores[B][G][max_vis] at positions
 * tpos[b] -> sel[B][G][n] (cl_decode.c). */
NSA_HIDDEN nsa_status nsa_cl_dc_topn(nsa_context *ctx, const nsa_config *cfg, int B,
                                     const int32_t *tpos, const float *scores, int max_vis,
                                     int32_t *sel);

/* The decode block scores kernel (nsa_dc_prob) alone: logits
 * z[B][G][H/G][max_nc], chunk statistics pstat[B][G][nch][H/G][2] (chunks
 * 0 .. ncmb-1 count), the mapping map -> scores[B][G][max_vis], entries
 * past each sequence's visible blocks kept as given (cl_decode.c). */
NSA_HIDDEN nsa_status nsa_cl_dc_scores(nsa_context *ctx, const nsa_config *cfg, int B,
                                       const int32_t *tpos, const float *z, int max_nc,
                                       const float *pstat, int nch, int ncmb,
                                       const nsa_csr *map, int max_vis, float *scores);

/* The decode mirror's storage conversions alone (cl_decode.c), for n
 * floats x (n a multiple of 4) as one V row of storage kind kv (fp16 or
 * bf16): the stored bits nsa_dc_put_step writes (step_bits) and
 * nsa_dc_put writes (put_bits), and nsa_dc_get's floats of the former
 * (back). */
NSA_HIDDEN nsa_status nsa_cl_dc_round(nsa_context *ctx, nsa_cl_kv kv, const float *x, int n,
                                      uint16_t *step_bits, uint16_t *put_bits, float *back);

/* The fused decode step's RoPE kernels alone (cl_step.c; cl/rope64.cl):
 * the angles at pos[r] in double, tab[r][rope_dim] (cosines then sines),
 * and q[B][H][dk] rotated in place at tpos[b]. NSA_ERR_UNSUPPORTED where
 * the device lacks them (no cl_khr_fp64). */
NSA_HIDDEN nsa_status nsa_cl_dr_angles(nsa_context *ctx, const int32_t *pos, int rows,
                                       int rope_dim, float base, double *tab);
NSA_HIDDEN nsa_status nsa_cl_dr_rope(nsa_context *ctx, float *q, const int32_t *tpos, int B,
                                     int H, int dk, int rope_dim, float base);

/* Growth of the decode mirror's buffers, capped at the device's largest
 * allocation (cl_decode.c; exposed for tests). */
NSA_HIDDEN size_t nsa_cl_dc_grow_bytes(size_t have, size_t need, uint64_t most);
NSA_HIDDEN int64_t nsa_cl_dc_grow_rows(int64_t cap, int64_t need, int64_t most);

/* fp32 -> fp16 / bf16 bits, round to nearest even (also used by tests). */
NSA_HIDDEN uint16_t nsa_cl_f32_to_f16(float f);
NSA_HIDDEN uint16_t nsa_cl_f32_to_bf16(float f);
NSA_HIDDEN float nsa_cl_f16_to_f32(uint16_t h);
NSA_HIDDEN float nsa_cl_bf16_to_f32(uint16_t h);

#endif
