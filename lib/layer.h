/* The layer object (spec 6), shared by the layer forward, weights I/O and
 * decode. Internal. */
#ifndef NSA_LAYER_H
#define NSA_LAYER_H

#include "nsa_internal.h"

#define NSA_LAYER_MAX_TENSORS 32

typedef struct nsa_tensor {
    char name[24];
    int ndim;
    int64_t shape[4];
    int64_t count;
    float *data;
} nsa_tensor;

/* Branch indices of the k/v projections. */
enum { NSA_BR_CMP = 0, NSA_BR_SLC = 1, NSA_BR_WIN = 2 };

struct nsa_layer {
    nsa_context *ctx;
    nsa_layer_config cfg;
    int ntensors;
    nsa_tensor t[NSA_LAYER_MAX_TENSORS];
    /* Shortcuts into t[]; NULL where the config has no such tensor. In
     * shared-KV mode wk[0..2] all point at "wk" (and wv likewise). */
    float *wq, *wk[3], *wv[3], *wo;
    float *gw1, *gb1, *gw2, *gb2; /* gate: w1/b1 only when gate_hidden = 0 */
    nsa_phi phi_k, phi_v;          /* pointers into t[] */
    /* Weights generation: bumped by every call that hands out or writes
     * weights (nsa_layer_tensor, _tensor_at, _init_random, loading,
     * nsa_layer_weights_changed), so a backend's device copies in wc,
     * keyed by it, are never served stale. */
    uint64_t wgen;
    nsa_wcache wc;
};

/* RoPE (rotate-half, spec 6) on the first rope_dim dims of `heads` vectors
 * of length dim at x, all at position pos. */
NSA_HIDDEN void nsa_rope_apply(float *x, int heads, int dim, int rope_dim, float base,
                               double pos);
/* Projected, rotated activations of rows of x (one allocation each). */
typedef struct nsa_acts {
    float *q;            /* [R][H][dk], rotated */
    float *k[3], *v[3];  /* per branch [R][G][dk|dv]; k rotated */
    float *k_for_phi;    /* k[cmp], or the un-rotated copy for RoPE "after" */
    float *gates;        /* [R][H][3] */
    float *kv, *kraw;    /* owned storage */
    int own_gates;
} nsa_acts;

/* q, k, v of every branch and the gates for rows of x; row r is rotated at
 * position pos[r]. gates may point at caller storage (else allocated). */
NSA_HIDDEN nsa_status nsa_layer_project(nsa_layer *L, const float *x, int64_t rows,
                                        const int64_t *pos, float *gates, nsa_acts *a);
NSA_HIDDEN void nsa_acts_free(nsa_acts *a);
/* nsa_layer_project without q and the gates (a->q, a->gates NULL): the
 * K/V of a decode step whose q and gates stay on a device. */
NSA_HIDDEN nsa_status nsa_layer_project_kv(nsa_layer *L, const float *x, int64_t rows,
                                           const int64_t *pos, nsa_acts *a);
/* The keyed linears of a device-resident decode step (x, y unused), over
 * rows rows: q, the gate's first linear (into the hidden layer when
 * gate_hidden > 0), Wo, and the gate MLP's second linear (j[3], only when
 * gate_hidden > 0). */
NSA_HIDDEN void nsa_layer_step_jobs(nsa_layer *L, int64_t rows, nsa_linear_job j[4],
                                    nsa_wkey key[4]);
/* The keyed K/V linears of a device-resident decode step (x, y unused):
 * j[2 i], j[2 i + 1] = K, V of branch i (cmp, slc, win; one branch with
 * shared K/V); returns their count (2 or 6). */
NSA_HIDDEN int nsa_layer_kv_jobs(nsa_layer *L, int64_t rows, nsa_linear_job j[6],
                                 nsa_wkey key[6]);
/* phi's tensors of kind (0 K, 1 V) as keyed (W, b) pairs for a device
 * copy: out[0] (w1, b1) of an MLP phi, out[1] (w2, b2) of one with a
 * hidden layer, out[2] (pe, -) when phi has one; NULL where absent. */
NSA_HIDDEN void nsa_layer_phi_jobs(nsa_layer *L, int kind, nsa_linear_job j[3], nsa_wkey key[3],
                                   const nsa_linear_job *out[3]);
/* The operator over projected activations (o[T][H][dv]), then y = o Wo^T;
 * kc, vc (optional) receive the compressed tokens, aux the branch outputs
 * and the selection. */
NSA_HIDDEN nsa_status nsa_layer_attend(nsa_layer *L, const nsa_batch *bt, const nsa_acts *act,
                                       const nsa_layer_aux *aux, float *kc, float *vc, float *o,
                                       float *y);
/* Test hook: the n-th device upload of this layer's weights fails (n >= 1;
 * 0 = none). */
NSA_HIDDEN void nsa_layer_fail_weight_upload_after(nsa_layer *L, int n);

/* y = o Wo^T. */
NSA_HIDDEN nsa_status nsa_layer_output(nsa_layer *L, const float *o, int64_t rows, float *y);
/* The kc hook for RoPE "after" (user = the layer config). */
NSA_HIDDEN void nsa_layer_rope_after(void *user, const nsa_batch *bt, float *kc);

#endif
