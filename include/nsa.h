/* libnsa: Native Sparse Attention (Yuan et al. 2025, arXiv 2502.11089) for C.
 *
 * The one public header. The mathematical contract is NSA_SPEC.md; section
 * numbers below ("spec 3") refer to it. Tensors are dense, row-major,
 * token-major float32: q[T][H][dk], k_*[T][G][dk], v_*[T][G][dv],
 * gates[T][H][3] (cmp, slc, win), out[T][H][dv]. A batch of sequences is
 * packed along T and described by cu_seqlens[B+1] (int32 offsets).
 *
 * Every function returns an nsa_status (0 = success, negative = error). The
 * library never aborts, exits or prints; the reason for the last failure on a
 * context is in nsa_context_last_error(). Set NSA_VERBOSE=1 to log backend
 * choices to stderr. */
#ifndef NSA_H
#define NSA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define NSA_API
#elif defined(__GNUC__)
#define NSA_API __attribute__((visibility("default")))
#else
#define NSA_API
#endif

#define NSA_VERSION_MAJOR 0
#define NSA_VERSION_MINOR 1
#define NSA_VERSION_PATCH 0

/* ---------------------------------------------------------------- status */
typedef enum nsa_status {
    NSA_OK = 0,
    NSA_ERR_NULL = -1,          /* a required pointer is NULL */
    NSA_ERR_ZERO_SIZE = -2,     /* a size or count is zero or negative */
    NSA_ERR_DIVISIBILITY = -3,  /* d must divide l and l' */
    NSA_ERR_GQA = -4,           /* H % G != 0 */
    NSA_ERR_FORCED = -5,        /* n < n_init + n_local */
    NSA_ERR_WINDOW = -6,        /* w < 1 */
    NSA_ERR_SEQLENS = -7,       /* cu_seqlens not 0, strictly increasing, T */
    NSA_ERR_SCALE = -8,         /* scale not finite or not positive */
    NSA_ERR_ENUM = -9,          /* an enum field has an unknown value */
    NSA_ERR_SELECTION = -10,    /* a caller-given selection is invalid */
    NSA_ERR_ARG = -11,          /* another invalid argument */
    NSA_ERR_NOMEM = -12,        /* allocation failed */
    NSA_ERR_UNAVAILABLE = -13,  /* backend unknown or not available here */
    NSA_ERR_UNSUPPORTED = -14,  /* the backend lacks this operation */
    NSA_ERR_IO = -15,           /* file could not be opened/read/written */
    NSA_ERR_FORMAT = -16,       /* file contents malformed */
    NSA_ERR_CAPACITY = -17,     /* decode: a sequence would pass its limit */
    NSA_ERR_BACKEND = -18,      /* the device runtime failed (OpenCL ...) */
    NSA_ERR_RANGE = -19         /* a size would overflow */
} nsa_status;

/* A short fixed description of a status code ("d must divide l and l'"). */
NSA_API const char *nsa_strerror(nsa_status s);
NSA_API const char *nsa_version_string(void);

/* ------------------------------------------------------- configuration */
typedef enum nsa_mapping {
    NSA_MAPPING_OVERLAP = 0, /* spec 3, default: token overlap / d */
    NSA_MAPPING_PAPER = 1    /* spec 3: Eq. 9 as printed */
} nsa_mapping;

/* Attention-operator hyperparameters (spec 1). */
typedef struct nsa_config {
    int H, G;       /* query heads, key/value heads (groups) */
    int dk, dv;     /* head dims of q/k and of v */
    int l, d;       /* compression block length and stride */
    int l_sel;      /* selection block length l' */
    int n;          /* selected blocks per (query, group), forced included */
    int n_init;     /* forced initial blocks */
    int n_local;    /* forced local blocks (the one holding t and before) */
    int w;          /* sliding window */
    float scale;    /* softmax scale; 0 means 1/sqrt(dk) */
    nsa_mapping mapping;
} nsa_config;

/* The paper defaults (spec 1): H=64 G=4 dk=192 dv=128 l=32 d=16 l'=64 n=16
 * n_init=1 n_local=2 w=512 scale=0 (1/sqrt(dk)), overlap mapping. */
NSA_API nsa_config nsa_config_default(void);

/* Checks every rule of spec 10. On failure writes a message naming the
 * violated rule into msg (if msg != NULL) and returns its code. */
NSA_API nsa_status nsa_config_validate(const nsa_config *cfg, char *msg,
                                       size_t msg_len);

/* The effective softmax scale (cfg->scale, or 1/sqrt(dk) when 0). */
NSA_API float nsa_config_scale(const nsa_config *cfg);

/* Compressed tokens visible to the query at position t (spec 2). */
NSA_API int nsa_n_cmp(const nsa_config *cfg, int64_t t);

/* Compressed tokens of a sequence of length S: nsa_n_cmp(cfg, S - 1). */
NSA_API int64_t nsa_cmp_tokens(const nsa_config *cfg, int64_t S);

/* ------------------------------------------------------ context/backends */
/* A context: a backend, its state and workspaces, the last error message.
 * It runs one call at a time: calls on one context, and on the layers and
 * decode states made on it, must not overlap, so a program that computes
 * on several threads gives each thread its own context (the library keeps
 * no other mutable state). */
typedef struct nsa_context nsa_context;

typedef struct nsa_backend_info {
    const char *name;        /* "ref", "cpu", "opencl", ... */
    const char *description;
    int available;           /* 1 if it can run here */
    char reason[160];        /* why not, or what it found */
} nsa_backend_info;

/* Registered backends, best first; "ref" is last. */
NSA_API int nsa_backend_count(void);
NSA_API nsa_status nsa_backend_get_info(int index, nsa_backend_info *info);

/* backend: a registered name, "auto" (the first that is available and
 * starts; the environment variable NSA_BACKEND overrides it), or NULL
 * (= "auto"). On failure *out is
 * NULL; msg (optional) receives the reason. */
NSA_API nsa_status nsa_context_create(const char *backend, nsa_context **out,
                                      char *msg, size_t msg_len);
NSA_API void nsa_context_free(nsa_context *ctx);
NSA_API const char *nsa_context_backend(const nsa_context *ctx);
/* The message of the last failure on ctx ("" if none). */
NSA_API const char *nsa_context_last_error(const nsa_context *ctx);

/* ------------------------------------------------- cpu backend: ISA cap */
/* Caps the instruction set of the "cpu" backend's kernels on ctx, so one
 * machine can run every kernel path: "scalar", "avx2", "avx512" or "neon"
 * (x86 orders scalar < avx2 < avx512: the highest set usable here not above
 * the cap runs; a cap of another processor family gives "scalar"); NULL or
 * "native" lifts the cap. The environment variable
 * NSA_MAX_ISA sets the cap when a context is created. Returns
 * NSA_ERR_UNSUPPORTED when ctx's backend is not "cpu", NSA_ERR_ARG for an
 * unknown name. */
NSA_API nsa_status nsa_cpu_set_max_isa(nsa_context *ctx, const char *isa);
/* The instruction set the "cpu" backend's kernels use on ctx ("scalar",
 * "avx2", "avx512", "neon"; "" when ctx's backend is not "cpu"). */
NSA_API const char *nsa_cpu_isa(const nsa_context *ctx);

/* A context on the "opencl" backend and a chosen device: an index into the
 * list of all OpenCL devices of all platforms (the order of `clinfo -l`),
 * "*" for the first device of any type, or a case-insensitive substring of
 * "platform name / device name". NULL or "" means the environment variable
 * NSA_OPENCL_DEVICE (same syntax), else the first GPU or accelerator (CPU
 * runtimes such as PoCL only when named). NSA_ERR_UNAVAILABLE, with the
 * reason in msg, when libnsa was built without OpenCL or no device matches. */
NSA_API nsa_status nsa_context_create_opencl(const char *device, nsa_context **out,
                                             char *msg, size_t msg_len);

/* ---------------------------------------------------------- operator (2-5) */
typedef enum nsa_phi_kind {
    NSA_PHI_AVG = 0, /* mean of (x_j + pe[g][j]) */
    NSA_PHI_MLP = 1  /* W2 SiLU(W1 z + b1) + b2, or W z + b when hidden = 0 */
} nsa_phi_kind;

/* Weights of one compression function phi (spec 2), for K or for V. With
 * dim = dk (for K) or dv (for V) and L = l * dim:
 *   pe  [G][l][dim]      optional (NULL = zeros)
 *   hidden > 0: w1 [G][hidden][L], b1 [G][hidden], w2 [G][dim][hidden],
 *               b2 [G][dim]
 *   hidden = 0: w1 [G][dim][L], b1 [G][dim]; w2, b2 unused
 * Biases may be NULL (zeros). A model that ties weights across groups
 * repeats them. */
typedef struct nsa_phi {
    nsa_phi_kind kind;
    int hidden;
    const float *pe;
    const float *w1, *b1, *w2, *b2;
} nsa_phi;

/* Inputs and outputs of the attention operator. Pass the same k/v pointers
 * for the three branches for shared-KV mode. Optional pointers may be NULL. */
typedef struct nsa_op_args {
    int64_t T;                  /* total tokens */
    int B;                      /* sequences */
    const int32_t *cu_seqlens;  /* [B+1]; NULL means one sequence of T */
    const float *q;             /* [T][H][dk] */
    const float *k_cmp, *v_cmp; /* [T][G][dk], [T][G][dv] */
    const float *k_slc, *v_slc;
    const float *k_win, *v_win;
    const float *gates;         /* [T][H][3] */
    const nsa_phi *phi_k;       /* NULL: avg without pe */
    const nsa_phi *phi_v;
    const int32_t *selection_in; /* optional [T][G][n]: use instead of top-n */
    float *out;                 /* [T][H][dv] */
    float *out_cmp, *out_slc, *out_win; /* optional [T][H][dv] each */
    int32_t *selection_out;     /* optional [T][G][n], ascending, -1 padded */
    float *k_cmp_out;           /* optional [C][G][dk], C = nsa_op_cmp_count */
    float *v_cmp_out;           /* optional [C][G][dv] */
} nsa_op_args;

/* Total compressed tokens of a batch: sum over sequences of nsa_cmp_tokens;
 * the rows of k_cmp_out / v_cmp_out, sequence after sequence. */
NSA_API int64_t nsa_op_cmp_count(const nsa_config *cfg, const int32_t *cu_seqlens,
                                 int B, int64_t T);

NSA_API nsa_status nsa_attention_forward(nsa_context *ctx, const nsa_config *cfg,
                                         const nsa_op_args *args);

/* ---------------------------------------------------------------- layer (6) */
typedef enum nsa_gate_act {
    NSA_GATE_SOFTMAX = 0, /* softmax over the 3 branches, temperature tau */
    NSA_GATE_SIGMOID = 1  /* three independent sigmoids (the paper) */
} nsa_gate_act;

typedef enum nsa_rope_cmp {
    NSA_ROPE_BEFORE = 0, /* phi runs on rotated keys (default) */
    NSA_ROPE_AFTER = 1   /* phi on raw keys; compressed key i rotated at i*d */
} nsa_rope_cmp;

typedef struct nsa_layer_config {
    nsa_config attn;
    int D;               /* model (hidden) size */
    int shared_kv;       /* 1: one k/v projection read by all branches */
    nsa_phi_kind phi;    /* phi for K and V */
    int phi_hidden;      /* mlp hidden size (0 = linear) */
    int phi_pe;          /* 1: learnable intra-block position embedding */
    int rope_dim;        /* rotated dims per head (even, <= dk); 0 = none */
    float rope_base;     /* 10000 */
    nsa_rope_cmp rope_cmp;
    int gate_hidden;     /* gate MLP hidden size (0 = one linear layer) */
    nsa_gate_act gate_act;
    float gate_tau;      /* softmax temperature (> 0) */
} nsa_layer_config;

/* attn = nsa_config_default(), D = 1024, independent KV, avg phi without pe,
 * rope_dim = dk, base 10000, RoPE before phi, gate_hidden = 0, softmax
 * gates with tau = 1. */
NSA_API nsa_layer_config nsa_layer_config_default(void);
NSA_API nsa_status nsa_layer_config_validate(const nsa_layer_config *cfg,
                                             char *msg, size_t msg_len);

typedef struct nsa_layer nsa_layer;

/* Creates a layer whose weights are zero; a layer keeps ctx (which must
 * outlive it) for its computations and error messages. */
NSA_API nsa_status nsa_layer_create(nsa_context *ctx, const nsa_layer_config *cfg,
                                    nsa_layer **out);
NSA_API void nsa_layer_free(nsa_layer *layer);
NSA_API const nsa_layer_config *nsa_layer_get_config(const nsa_layer *layer);

/* Deterministic initialization: projections uniform in +-1/sqrt(fan_in),
 * the same on every machine for a given seed; phi mlp starts as averaging
 * plus small noise; pe starts at zero; gate biases at zero. */
NSA_API nsa_status nsa_layer_init_random(nsa_layer *layer, uint64_t seed);

/* Tensors by name (names and shapes: doc/weights.md). Returns a pointer into
 * the layer (writable), its element count and, optionally, its shape. */
NSA_API int nsa_layer_tensor_count(const nsa_layer *layer);
NSA_API nsa_status nsa_layer_tensor_at(nsa_layer *layer, int index,
                                       const char **name, float **data,
                                       int *ndim, int64_t shape[4]);
NSA_API nsa_status nsa_layer_tensor(nsa_layer *layer, const char *name,
                                    float **data, int64_t *count);
/* A backend may keep device copies of the weights between calls (opencl
 * does). Asking for a tensor's data (nsa_layer_tensor, _tensor_at with data
 * != NULL), nsa_layer_init_random and nsa_layer_load mark them stale; after
 * writing weights through a pointer obtained before the layer's last
 * forward or decode step, call this before the next one, or that call may
 * use the old weights. */
NSA_API nsa_status nsa_layer_weights_changed(nsa_layer *layer);

/* safetensors (8-byte little-endian header length, JSON header, raw
 * little-endian F32 tensors); the configuration goes in __metadata__. */
NSA_API nsa_status nsa_layer_save(nsa_layer *layer, const char *path);
NSA_API nsa_status nsa_layer_load(nsa_context *ctx, const char *path,
                                  nsa_layer **out);

/* Optional outputs of a layer forward; any pointer may be NULL. */
typedef struct nsa_layer_aux {
    float *gates;           /* [T][H][3] after the activation */
    int32_t *selection;     /* [T][G][n] */
    float *out_cmp, *out_slc, *out_win; /* [T][H][dv] */
    float *k_cmp, *v_cmp;   /* [C][G][dk|dv] compressed tokens (after RoPE) */
} nsa_layer_aux;

/* y[T][D] = layer(x[T][D]) over the batch described by cu_seqlens
 * (NULL = one sequence). */
NSA_API nsa_status nsa_layer_forward(nsa_layer *layer, const float *x, int64_t T,
                                     const int32_t *cu_seqlens, int B, float *y,
                                     const nsa_layer_aux *aux);

/* ---------------------------------------------------------------- decode (7) */
/* Caches of one layer for a batch of B sequences: per sequence and group all
 * raw selection K/V, a ring of the last w window K/V, a ring of the last l
 * raw compression K/V and the emitted compressed tokens. The raw and the
 * compressed caches grow by doubling (amortized O(1) per token; the history
 * is copied only when the capacity doubles). */
typedef struct nsa_decode_state nsa_decode_state;

/* What one decode step read, per sequence and group, in tokens (the unit of
 * the paper's Table 4) and bytes of K and V. */
typedef struct nsa_decode_counters {
    int64_t t;     /* position of the token of that step */
    int64_t cmp;   /* compressed tokens read: n_cmp(t) */
    int64_t slc;   /* tokens of the selected blocks that are <= t */
    int64_t win;   /* min(w, t + 1) */
    int64_t dense; /* t + 1: what full attention reads */
    int64_t bytes; /* (cmp + slc + win) * (dk + dv) * sizeof(float) */
} nsa_decode_counters;

/* max_len: the longest a sequence may grow (a step past it fails with
 * NSA_ERR_CAPACITY); 0 = bounded by memory only. The state keeps the layer,
 * which must outlive it. */
NSA_API nsa_status nsa_decode_create(nsa_layer *layer, int B, int64_t max_len,
                                     nsa_decode_state **out);
NSA_API void nsa_decode_free(nsa_decode_state *st);
/* Empties sequence b (b = -1: all); capacity is kept. */
NSA_API nsa_status nsa_decode_reset(nsa_decode_state *st, int b);

/* Fills every cache of the empty sequence b from a prompt x[S][D]. y
 * ([S][D], optional) receives the prompt's layer outputs; with y = NULL no
 * attention is computed (caches only, as serving systems do). */
NSA_API nsa_status nsa_decode_prefill(nsa_decode_state *st, int b, const float *x, int64_t S,
                                      float *y);

/* Appends one token to every sequence: x_t[B][D] -> y_t[B][D]. aux rows
 * are per sequence ([B][H][3], [B][G][n], [B][H][dv]; k_cmp/v_cmp unused).
 * On any error the state is left exactly as it was. */
NSA_API nsa_status nsa_decode_step(nsa_layer *layer, nsa_decode_state *st, const float *x_t,
                                   float *y_t, const nsa_layer_aux *aux);

NSA_API int64_t nsa_decode_length(const nsa_decode_state *st, int b);
/* Bytes the state holds in host memory (caches and bookkeeping). */
NSA_API size_t nsa_decode_memory(const nsa_decode_state *st);
/* Counters of the last step of sequence b, group g. */
NSA_API nsa_status nsa_decode_get_counters(const nsa_decode_state *st, int b, int g,
                                           nsa_decode_counters *out);
/* The emitted compressed tokens of sequence b: [count][G][dk] and [count][G][dv]
 * (on a backend whose steps keep the caches on a device they are downloaded
 * first; the pointers hold until the next step, prefill, reset or clone). */
NSA_API nsa_status nsa_decode_compressed(const nsa_decode_state *st, int b, const float **kc,
                                         const float **vc, int64_t *count);

#ifdef __cplusplus
}
#endif
#endif /* NSA_H */
