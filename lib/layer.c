/* The NSA layer (spec 6): weights, deterministic initialization, and the
 * prefill forward x -> projections -> RoPE -> phi -> operator -> Wo. */
#include "layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* RoPE's cos and sin: the source the OpenCL kernels compile too (bit-identical
 * angles on both sides) */
#include "../cl/sincos64.cl"

nsa_layer_config nsa_layer_config_default(void)
{
    nsa_layer_config c;
    memset(&c, 0, sizeof c);
    c.attn = nsa_config_default();
    c.D = 1024;
    c.shared_kv = 0;
    c.phi = NSA_PHI_AVG;
    c.phi_hidden = 0;
    c.phi_pe = 0;
    c.rope_dim = c.attn.dk;
    c.rope_base = 10000.0f;
    c.rope_cmp = NSA_ROPE_BEFORE;
    c.gate_hidden = 0;
    c.gate_act = NSA_GATE_SOFTMAX;
    c.gate_tau = 1.0f;
    return c;
}

nsa_status nsa_layer_config_validate(const nsa_layer_config *c, char *msg, size_t len)
{
    if (!c)
        return nsa_fail_buf(msg, len, NSA_ERR_NULL, "layer config is NULL");
    nsa_status s = nsa_config_validate(&c->attn, msg, len);
    if (s != NSA_OK)
        return s;
    if (c->D < 1)
        return nsa_fail_buf(msg, len, NSA_ERR_ZERO_SIZE, "D=%d must be >= 1", c->D);
    if (c->shared_kv != 0 && c->shared_kv != 1)
        return nsa_fail_buf(msg, len, NSA_ERR_ENUM, "shared_kv=%d must be 0 or 1", c->shared_kv);
    if (c->phi != NSA_PHI_AVG && c->phi != NSA_PHI_MLP)
        return nsa_fail_buf(msg, len, NSA_ERR_ENUM, "phi=%d must be NSA_PHI_AVG or NSA_PHI_MLP",
                            (int)c->phi);
    if (c->phi_hidden < 0)
        return nsa_fail_buf(msg, len, NSA_ERR_ZERO_SIZE, "phi_hidden=%d must be >= 0",
                            c->phi_hidden);
    if (c->phi_pe != 0 && c->phi_pe != 1)
        return nsa_fail_buf(msg, len, NSA_ERR_ENUM, "phi_pe=%d must be 0 or 1", c->phi_pe);
    if (c->rope_dim < 0 || c->rope_dim > c->attn.dk || c->rope_dim % 2)
        return nsa_fail_buf(msg, len, NSA_ERR_ARG,
                            "rope_dim=%d must be even and within 0..dk=%d", c->rope_dim,
                            c->attn.dk);
    if (!(c->rope_base > 0.0f) || isinf(c->rope_base))
        return nsa_fail_buf(msg, len, NSA_ERR_ARG, "rope_base=%g must be finite and > 0",
                            (double)c->rope_base);
    if (c->rope_cmp != NSA_ROPE_BEFORE && c->rope_cmp != NSA_ROPE_AFTER)
        return nsa_fail_buf(msg, len, NSA_ERR_ENUM,
                            "rope_cmp=%d must be NSA_ROPE_BEFORE or NSA_ROPE_AFTER",
                            (int)c->rope_cmp);
    if (c->gate_hidden < 0)
        return nsa_fail_buf(msg, len, NSA_ERR_ZERO_SIZE, "gate_hidden=%d must be >= 0",
                            c->gate_hidden);
    if (c->gate_act != NSA_GATE_SOFTMAX && c->gate_act != NSA_GATE_SIGMOID)
        return nsa_fail_buf(msg, len, NSA_ERR_ENUM,
                            "gate_act=%d must be NSA_GATE_SOFTMAX or NSA_GATE_SIGMOID",
                            (int)c->gate_act);
    if (!(c->gate_tau > 0.0f) || isinf(c->gate_tau))
        return nsa_fail_buf(msg, len, NSA_ERR_ARG, "gate_tau=%g must be finite and > 0",
                            (double)c->gate_tau);
    if (msg && len)
        msg[0] = '\0';
    return NSA_OK;
}

/* ------------------------------------------------------- tensor table */
static float *add(nsa_layer *L, const char *name, int ndim, int64_t a, int64_t b, int64_t c)
{
    nsa_tensor *t = &L->t[L->ntensors];
    int64_t dims[3] = {a, b, c}, count = 1;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = dims[i];
        count *= dims[i];
    }
    t->count = count;
    t->data = calloc((size_t)count, sizeof(float));
    if (!t->data)
        return NULL;
    L->ntensors++;
    return t->data;
}

/* Declares every tensor the config needs, in the file order of doc/weights.md. */
static int build_table(nsa_layer *L)
{
    const nsa_layer_config *c = &L->cfg;
    const int64_t D = c->D, H = c->attn.H, G = c->attn.G, dk = c->attn.dk, dv = c->attn.dv;
    int ok = 1;
    ok &= (L->wq = add(L, "wq", 2, H * dk, D, 0)) != NULL;
    if (c->shared_kv) {
        ok &= (L->wk[0] = add(L, "wk", 2, G * dk, D, 0)) != NULL;
        ok &= (L->wv[0] = add(L, "wv", 2, G * dv, D, 0)) != NULL;
        L->wk[1] = L->wk[2] = L->wk[0];
        L->wv[1] = L->wv[2] = L->wv[0];
    } else {
        static const char *const kn[3] = {"wk_cmp", "wk_slc", "wk_win"};
        static const char *const vn[3] = {"wv_cmp", "wv_slc", "wv_win"};
        for (int b = 0; b < 3 && ok; b++) {
            ok &= (L->wk[b] = add(L, kn[b], 2, G * dk, D, 0)) != NULL;
            ok &= (L->wv[b] = add(L, vn[b], 2, G * dv, D, 0)) != NULL;
        }
    }
    ok &= ok && (L->wo = add(L, "wo", 2, D, H * dv, 0)) != NULL;
    if (c->gate_hidden > 0) {
        ok &= ok && (L->gw1 = add(L, "gate.w1", 2, c->gate_hidden, D, 0)) != NULL;
        ok &= ok && (L->gb1 = add(L, "gate.b1", 1, c->gate_hidden, 0, 0)) != NULL;
        ok &= ok && (L->gw2 = add(L, "gate.w2", 2, H * 3, c->gate_hidden, 0)) != NULL;
        ok &= ok && (L->gb2 = add(L, "gate.b2", 1, H * 3, 0, 0)) != NULL;
    } else {
        ok &= ok && (L->gw1 = add(L, "gate.w", 2, H * 3, D, 0)) != NULL;
        ok &= ok && (L->gb1 = add(L, "gate.b", 1, H * 3, 0, 0)) != NULL;
    }
    for (int kv = 0; kv < 2 && ok; kv++) {
        nsa_phi *phi = kv ? &L->phi_v : &L->phi_k;
        const int64_t dim = kv ? dv : dk, Lz = c->attn.l * dim, hid = c->phi_hidden;
        char nm[24];
        const char *pre = kv ? "phi_v" : "phi_k";
        phi->kind = c->phi;
        phi->hidden = c->phi == NSA_PHI_MLP ? c->phi_hidden : 0;
        if (c->phi == NSA_PHI_MLP && hid > 0) {
            snprintf(nm, sizeof nm, "%s.w1", pre);
            ok &= (phi->w1 = add(L, nm, 3, G, hid, Lz)) != NULL;
            snprintf(nm, sizeof nm, "%s.b1", pre);
            ok &= ok && (phi->b1 = add(L, nm, 2, G, hid, 0)) != NULL;
            snprintf(nm, sizeof nm, "%s.w2", pre);
            ok &= ok && (phi->w2 = add(L, nm, 3, G, dim, hid)) != NULL;
            snprintf(nm, sizeof nm, "%s.b2", pre);
            ok &= ok && (phi->b2 = add(L, nm, 2, G, dim, 0)) != NULL;
        } else if (c->phi == NSA_PHI_MLP) {
            snprintf(nm, sizeof nm, "%s.w", pre);
            ok &= (phi->w1 = add(L, nm, 3, G, dim, Lz)) != NULL;
            snprintf(nm, sizeof nm, "%s.b", pre);
            ok &= ok && (phi->b1 = add(L, nm, 2, G, dim, 0)) != NULL;
        }
        if (ok && c->phi_pe) {
            snprintf(nm, sizeof nm, "%s.pe", pre);
            ok &= (phi->pe = add(L, nm, 3, G, c->attn.l, dim)) != NULL;
        }
    }
    return ok;
}

nsa_status nsa_layer_create(nsa_context *ctx, const nsa_layer_config *cfg, nsa_layer **out)
{
    if (!out)
        return nsa_fail(ctx, NSA_ERR_NULL, "out is NULL");
    *out = NULL;
    if (!ctx)
        return NSA_ERR_NULL;
    char msg[NSA_MSG_LEN];
    nsa_status s = nsa_layer_config_validate(cfg, msg, sizeof msg);
    if (s != NSA_OK)
        return nsa_fail(ctx, s, "%s", msg);
    /* Every tensor must be addressable: element counts within int64 and size_t. */
    const double D = cfg->D, H = cfg->attn.H, dk = cfg->attn.dk, dv = cfg->attn.dv;
    const double big = (H * (dk > dv ? dk : dv) + 3.0 * H + cfg->gate_hidden) * D +
                       (double)cfg->attn.G * cfg->attn.l * (dk > dv ? dk : dv) *
                           (cfg->phi_hidden + (dk > dv ? dk : dv));
    if (big > 1e12)
        return nsa_fail(ctx, NSA_ERR_RANGE, "layer of about %.3g weights is too large", big);
    nsa_layer *L = calloc(1, sizeof *L);
    if (!L)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the layer");
    L->ctx = ctx;
    L->cfg = *cfg;
    if (!build_table(L)) {
        nsa_layer_free(L);
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the layer's weights");
    }
    *out = L;
    return NSA_OK;
}

void nsa_layer_free(nsa_layer *L)
{
    if (!L)
        return;
    if (L->wc.release)
        L->wc.release(L->wc.data);
    for (int i = 0; i < L->ntensors; i++)
        free(L->t[i].data);
    free(L);
}

nsa_status nsa_layer_weights_changed(nsa_layer *L)
{
    if (!L)
        return NSA_ERR_NULL;
    L->wgen++;
    return NSA_OK;
}

void nsa_layer_fail_weight_upload_after(nsa_layer *L, int n)
{
    if (L)
        L->wc.fail_after = n;
}

const nsa_layer_config *nsa_layer_get_config(const nsa_layer *L) { return L ? &L->cfg : NULL; }

int nsa_layer_tensor_count(const nsa_layer *L) { return L ? L->ntensors : 0; }

nsa_status nsa_layer_tensor_at(nsa_layer *L, int i, const char **name, float **data, int *ndim,
                               int64_t shape[4])
{
    if (!L)
        return NSA_ERR_NULL;
    if (i < 0 || i >= L->ntensors)
        return nsa_fail(L->ctx, NSA_ERR_ARG, "tensor index %d outside 0..%d", i,
                        L->ntensors - 1);
    const nsa_tensor *t = &L->t[i];
    if (name)
        *name = t->name;
    if (data) {
        *data = t->data;
        L->wgen++; /* writable from now on: device copies are history */
    }
    if (ndim)
        *ndim = t->ndim;
    if (shape)
        for (int k = 0; k < 4; k++)
            shape[k] = k < t->ndim ? t->shape[k] : 0;
    return NSA_OK;
}

nsa_status nsa_layer_tensor(nsa_layer *L, const char *name, float **data, int64_t *count)
{
    if (!L)
        return NSA_ERR_NULL;
    if (!name)
        return nsa_fail(L->ctx, NSA_ERR_NULL, "tensor name is NULL");
    for (int i = 0; i < L->ntensors; i++)
        if (strcmp(L->t[i].name, name) == 0) {
            if (data) {
                *data = L->t[i].data;
                L->wgen++; /* writable from now on: device copies are history */
            }
            if (count)
                *count = L->t[i].count;
            return NSA_OK;
        }
    return nsa_fail(L->ctx, NSA_ERR_ARG, "this layer has no tensor '%s' (see doc/weights.md)",
                    name);
}

/* -------------------------------------------------------- initialization */
static void fill_uniform(nsa_rng *r, float *x, int64_t n, double bound)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(bound * nsa_rng_uniform(r));
}

nsa_status nsa_layer_init_random(nsa_layer *L, uint64_t seed)
{
    if (!L)
        return NSA_ERR_NULL;
    const nsa_layer_config *c = &L->cfg;
    L->wgen++;
    for (int i = 0; i < L->ntensors; i++) {
        nsa_tensor *t = &L->t[i];
        /* one stream per tensor, so adding a tensor never shifts the others */
        nsa_rng r = {seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(i + 1))};
        for (const char *p = t->name; *p; p++)
            r.s = r.s * 131 + (unsigned char)*p;
        const int64_t fan_in = t->shape[t->ndim - 1];
        if (strstr(t->name, ".pe") || !strcmp(t->name, "gate.b") ||
            !strcmp(t->name, "gate.b2")) {
            memset(t->data, 0, sizeof(float) * (size_t)t->count);
        } else if ((!strcmp(t->name, "phi_k.w") || !strcmp(t->name, "phi_v.w"))) {
            /* linear phi starts as averaging over the block, plus small noise */
            const int64_t G = t->shape[0], dim = t->shape[1], Lz = t->shape[2];
            fill_uniform(&r, t->data, t->count, 0.01 / sqrt((double)Lz));
            for (int64_t g = 0; g < G; g++)
                for (int64_t e = 0; e < dim; e++)
                    for (int j = 0; j < c->attn.l; j++)
                        t->data[(g * dim + e) * Lz + j * dim + e] += 1.0f / (float)c->attn.l;
        } else {
            fill_uniform(&r, t->data, t->count, 1.0 / sqrt((double)fan_in));
        }
    }
    return NSA_OK;
}

/* -------------------------------------------------------------- pieces */
/* The frequency of angle i < rope_dim/2: base^(-2i/rope_dim). */
static double rope_inv(int rope_dim, float base, int i)
{
    return pow((double)base, -2.0 * i / (double)rope_dim);
}

void nsa_rope_inv_freq(int rope_dim, float base, double *inv)
{
    for (int i = 0; i < rope_dim / 2; i++)
        inv[i] = rope_inv(rope_dim, base, i);
}

/* Angle i < rope_dim/2 of RoPE at position pos. The OpenCL kernels take
 * the frequencies from nsa_rope_inv_freq and form the same product. */
static double rope_theta(int rope_dim, float base, double pos, int i)
{
    return pos * rope_inv(rope_dim, base, i);
}

void nsa_rope_sincos(double theta, double *cs, double *sn) { nsa_sincos64(theta, cs, sn); }

/* The angles of nsa_rope_apply at position pos: cs[i], sn[i], i < rope_dim/2. */
static void rope_angles(int rope_dim, float base, double pos, double *cs, double *sn)
{
    for (int i = 0; i < rope_dim / 2; i++)
        nsa_sincos64(rope_theta(rope_dim, base, pos, i), &cs[i], &sn[i]);
}

/* The rotation of the pair (v[i], v[i + half]) by the angle (cs, sn): the
 * one arithmetic of nsa_rope_apply and rope_rotate, so both give the same
 * bits. */
static void rope_pair(float *v, int i, int half, double cs, double sn)
{
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* cl/rope64.cl's nsa_dr_rot does the same */
#endif
    const double a = v[i], b = v[i + half];
    v[i] = (float)(a * cs - b * sn);
    v[i + half] = (float)(b * cs + a * sn);
}

/* nsa_rope_apply with the angles given. */
static void rope_rotate(float *x, int heads, int dim, int rope_dim, const double *cs,
                        const double *sn)
{
    const int half = rope_dim / 2;
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < half; i++)
            rope_pair(x + (size_t)h * dim, i, half, cs[i], sn[i]);
}

void nsa_rope_apply(float *x, int heads, int dim, int rope_dim, float base, double pos)
{
    const int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        double cs, sn;
        nsa_sincos64(rope_theta(rope_dim, base, pos, i), &cs, &sn);
        for (int h = 0; h < heads; h++)
            rope_pair(x + (size_t)h * dim, i, half, cs, sn);
    }
}

/* One projection of the layer; slot names its (W, b) pair so that a backend
 * may keep a device copy until the weights generation changes. */
static nsa_status linear(nsa_layer *L, int slot, const float *x, int64_t rows, int in,
                         int outn, const float *w, const float *b, float *y)
{
    const nsa_wkey key = {&L->wc, slot, L->wgen};
    nsa_linear_job j = {x, rows, in, outn, w, b, y, &key};
    return nsa_run_linear(L->ctx, &j);
}

/* The first gate linear (of x) as a job: into g, or the hidden layer h. */
static void gate_job(nsa_layer *L, const float *x, int64_t rows, float *g, float *h,
                     nsa_wkey *key, nsa_linear_job *j)
{
    const nsa_layer_config *c = &L->cfg;
    *key = (nsa_wkey){&L->wc, NSA_WSLOT_GATE1, L->wgen};
    const int hid = c->gate_hidden;
    *j = (nsa_linear_job){x, rows, c->D, hid > 0 ? hid : c->attn.H * 3, L->gw1, L->gb1,
                          hid > 0 ? h : g, key};
}

/* The rest of the gates once the first linear is done: the MLP's second
 * layer when there is one, then the activation. */
static nsa_status gates_finish(nsa_layer *L, int64_t rows, float *h, float *g)
{
    const nsa_layer_config *c = &L->cfg;
    if (c->gate_hidden > 0) {
        for (size_t i = 0; i < (size_t)rows * (size_t)c->gate_hidden; i++)
            h[i] = (float)((double)h[i] / (1.0 + exp(-(double)h[i]))); /* SiLU */
        nsa_status s = linear(L, NSA_WSLOT_GATE2, h, rows, c->gate_hidden, c->attn.H * 3,
                              L->gw2, L->gb2, g);
        if (s != NSA_OK)
            return s;
    }
    for (size_t r = 0; r < (size_t)rows * (size_t)c->attn.H; r++) {
        float *z = g + r * 3;
        if (c->gate_act == NSA_GATE_SIGMOID) {
            for (int k = 0; k < 3; k++)
                z[k] = (float)(1.0 / (1.0 + exp(-(double)z[k])));
        } else {
            const double tau = c->gate_tau;
            double m = z[0] > z[1] ? z[0] : z[1];
            m = m > z[2] ? m : z[2];
            double e[3], sum = 0.0;
            for (int k = 0; k < 3; k++)
                sum += (e[k] = exp(((double)z[k] - m) / tau));
            for (int k = 0; k < 3; k++)
                z[k] = (float)(e[k] / sum);
        }
    }
    return NSA_OK;
}

/* RoPE "after": compressed key i of a sequence is rotated at position i*d. */
void nsa_layer_rope_after(void *user, const nsa_batch *bt, float *kc)
{
    const nsa_layer_config *c = user;
    if (c->rope_dim == 0)
        return;
    const int G = c->attn.G, dk = c->attn.dk;
    for (int b = 0; b < bt->B; b++)
        for (int64_t i = 0; i < bt->cmp_off[b + 1] - bt->cmp_off[b]; i++)
            nsa_rope_apply(kc + (size_t)(bt->cmp_off[b] + i) * G * dk, G, dk, c->rope_dim,
                           c->rope_base, (double)(i * c->attn.d));
}

void nsa_acts_free(nsa_acts *a)
{
    free(a->q);
    free(a->kv);
    free(a->kraw);
    if (a->own_gates)
        free(a->gates);
    memset(a, 0, sizeof *a);
}

/* nsa_layer_project; with_qg = 0 leaves q and the gates out (NULL). */
static nsa_status project(nsa_layer *L, const float *x, int64_t rows, const int64_t *pos,
                          float *gates, nsa_acts *a, int with_qg)
{
    const nsa_layer_config *c = &L->cfg;
    const nsa_config *ac = &c->attn;
    nsa_context *ctx = L->ctx;
    const size_t R = (size_t)rows, H = (size_t)ac->H, G = (size_t)ac->G;
    const size_t nk = R * G * (size_t)ac->dk, nv = R * G * (size_t)ac->dv;
    const int nbr = c->shared_kv ? 1 : 3;
    memset(a, 0, sizeof *a);
    a->q = with_qg ? malloc(sizeof(float) * R * H * (size_t)ac->dk) : NULL;
    a->kv = malloc(sizeof(float) * (nk + nv) * (size_t)nbr);
    a->kraw = c->rope_cmp == NSA_ROPE_AFTER ? malloc(sizeof(float) * nk) : NULL;
    a->own_gates = with_qg && gates == NULL;
    a->gates = !with_qg ? NULL : gates ? gates : malloc(sizeof(float) * R * H * 3);
    if ((with_qg && (!a->q || !a->gates)) || !a->kv ||
        (c->rope_cmp == NSA_ROPE_AFTER && !a->kraw)) {
        nsa_acts_free(a);
        return nsa_fail(ctx, NSA_ERR_NOMEM,
                        "out of memory for the layer's activations (%lld rows)",
                        (long long)rows);
    }
    for (int b = 0; b < 3; b++) {
        int bb = c->shared_kv ? 0 : b;
        a->k[b] = a->kv + (size_t)bb * (nk + nv);
        a->v[b] = a->k[b] + nk;
    }
    /* every linear of x in one batch (x crosses to a device once) */
    const int need_h = with_qg && c->gate_hidden > 0;
    float *h = need_h ? malloc(sizeof(float) * R * (size_t)c->gate_hidden) : NULL;
    if (need_h && !h) {
        nsa_acts_free(a);
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the gate MLP");
    }
    nsa_wkey key[8];
    nsa_linear_job j[8];
    int nj = 0;
    if (with_qg) {
        key[nj] = (nsa_wkey){&L->wc, NSA_WSLOT_Q, L->wgen};
        j[nj] = (nsa_linear_job){x, rows, c->D, (int)(H * ac->dk), L->wq, NULL, a->q, &key[nj]};
        nj++;
    }
    const int nkv = nsa_layer_kv_jobs(L, rows, j + nj, key + nj);
    for (int i = 0; i < nkv; i++, nj++) {
        j[nj].x = x;
        j[nj].y = i % 2 ? a->v[i / 2] : a->k[i / 2];
    }
    if (with_qg) {
        gate_job(L, x, rows, a->gates, h, &key[nj], &j[nj]);
        nj++;
    }
    nsa_status s = nsa_run_linear_many(ctx, j, nj);
    if (s == NSA_OK && with_qg)
        s = gates_finish(L, rows, h, a->gates);
    free(h);
    if (s != NSA_OK) {
        nsa_acts_free(a);
        return s;
    }
    if (a->kraw)
        memcpy(a->kraw, a->k[NSA_BR_CMP], sizeof(float) * nk); /* phi sees un-rotated keys */
    if (c->rope_dim > 0) {
        /* one table of angles a row for q and every k (as nsa_rope_apply) */
        double *cs = malloc(sizeof(double) * (size_t)c->rope_dim);
        if (!cs) {
            nsa_acts_free(a);
            return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for RoPE");
        }
        double *sn = cs + c->rope_dim / 2;
        for (size_t r = 0; r < R; r++) {
            rope_angles(c->rope_dim, c->rope_base, (double)pos[r], cs, sn);
            if (with_qg)
                rope_rotate(a->q + r * H * ac->dk, (int)H, ac->dk, c->rope_dim, cs, sn);
            for (int b = 0; b < nbr; b++)
                rope_rotate(a->k[b] + r * G * ac->dk, (int)G, ac->dk, c->rope_dim, cs, sn);
        }
        free(cs);
    }
    a->k_for_phi = a->kraw ? a->kraw : a->k[NSA_BR_CMP];
    return NSA_OK;
}

nsa_status nsa_layer_project(nsa_layer *L, const float *x, int64_t rows, const int64_t *pos,
                             float *gates, nsa_acts *a)
{
    return project(L, x, rows, pos, gates, a, 1);
}

nsa_status nsa_layer_project_kv(nsa_layer *L, const float *x, int64_t rows, const int64_t *pos,
                                nsa_acts *a)
{
    return project(L, x, rows, pos, NULL, a, 0);
}

void nsa_rope_table(int rope_dim, float base, const int64_t *pos, int64_t rows, float *tab)
{
    const int half = rope_dim / 2;
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < half; i++) {
            double cs, sn;
            nsa_sincos64(rope_theta(rope_dim, base, (double)pos[r], i), &cs, &sn);
            tab[r * rope_dim + i] = (float)cs;
            tab[r * rope_dim + half + i] = (float)sn;
        }
}

void nsa_layer_step_jobs(nsa_layer *L, int64_t rows, nsa_linear_job j[4], nsa_wkey key[4])
{
    const nsa_layer_config *c = &L->cfg;
    const nsa_config *ac = &c->attn;
    const int hid = c->gate_hidden;
    key[0] = (nsa_wkey){&L->wc, NSA_WSLOT_Q, L->wgen};
    j[0] = (nsa_linear_job){NULL, rows, c->D, ac->H * ac->dk, L->wq, NULL, NULL, &key[0]};
    key[1] = (nsa_wkey){&L->wc, NSA_WSLOT_GATE1, L->wgen};
    j[1] = (nsa_linear_job){NULL, rows, c->D, hid > 0 ? hid : ac->H * 3, L->gw1, L->gb1, NULL,
                            &key[1]};
    key[2] = (nsa_wkey){&L->wc, NSA_WSLOT_O, L->wgen};
    j[2] = (nsa_linear_job){NULL, rows, ac->H * ac->dv, c->D, L->wo, NULL, NULL, &key[2]};
    key[3] = (nsa_wkey){&L->wc, NSA_WSLOT_GATE2, L->wgen};
    j[3] = (nsa_linear_job){NULL, rows, hid, ac->H * 3, L->gw2, L->gb2, NULL, &key[3]};
}

int nsa_layer_kv_jobs(nsa_layer *L, int64_t rows, nsa_linear_job j[6], nsa_wkey key[6])
{
    const nsa_layer_config *c = &L->cfg;
    const nsa_config *ac = &c->attn;
    const int nbr = c->shared_kv ? 1 : 3;
    for (int b = 0; b < nbr; b++) {
        /* project()'s K/V jobs too, so a device-resident step reads the
         * same weights through the same kernel and its rows equal the
         * host path's */
        key[2 * b] = (nsa_wkey){&L->wc, NSA_WSLOT_K0 + b, L->wgen};
        j[2 * b] = (nsa_linear_job){NULL, rows, c->D, ac->G * ac->dk, L->wk[b], NULL, NULL,
                                    &key[2 * b]};
        key[2 * b + 1] = (nsa_wkey){&L->wc, NSA_WSLOT_V0 + b, L->wgen};
        j[2 * b + 1] = (nsa_linear_job){NULL, rows, c->D, ac->G * ac->dv, L->wv[b], NULL, NULL,
                                        &key[2 * b + 1]};
    }
    return 2 * nbr;
}

void nsa_layer_phi_jobs(nsa_layer *L, int kind, nsa_linear_job j[3], nsa_wkey key[3],
                        const nsa_linear_job *out[3])
{
    const nsa_config *ac = &L->cfg.attn;
    const nsa_phi *phi = kind ? &L->phi_v : &L->phi_k;
    const int dim = kind ? ac->dv : ac->dk, G = ac->G, l = ac->l;
    const int hid = phi->kind == NSA_PHI_MLP ? phi->hidden : 0;
    const int N = hid ? hid : dim;
    for (int i = 0; i < 3; i++) {
        key[i] = (nsa_wkey){&L->wc, NSA_WSLOT_PHI + 3 * kind + i, L->wgen};
        out[i] = NULL;
    }
    /* W as [out][in] of the linear job: w1 [G][N][l dim], w2 [G][dim][hid],
     * pe [G][l][dim] (sizes only matter for the device copy) */
    if (phi->kind == NSA_PHI_MLP) {
        j[0] = (nsa_linear_job){NULL, 1, l * dim, G * N, phi->w1, phi->b1, NULL, &key[0]};
        out[0] = &j[0];
        if (hid) {
            j[1] = (nsa_linear_job){NULL, 1, hid, G * dim, phi->w2, phi->b2, NULL, &key[1]};
            out[1] = &j[1];
        }
    }
    if (phi->pe) {
        j[2] = (nsa_linear_job){NULL, 1, dim, G * l, phi->pe, NULL, NULL, &key[2]};
        out[2] = &j[2];
    }
}

nsa_status nsa_layer_output(nsa_layer *L, const float *o, int64_t rows, float *y)
{
    const nsa_layer_config *c = &L->cfg;
    return linear(L, NSA_WSLOT_O, o, rows, c->attn.H * c->attn.dv, c->D, L->wo, NULL, y);
}

nsa_status nsa_layer_attend(nsa_layer *L, const nsa_batch *bt, const nsa_acts *act,
                            const nsa_layer_aux *aux, float *kc, float *vc, float *o, float *y)
{
    nsa_op_args a;
    memset(&a, 0, sizeof a);
    a.T = bt->T;
    a.B = bt->B;
    a.cu_seqlens = bt->cu;
    a.q = act->q;
    a.k_cmp = act->k_for_phi;
    a.v_cmp = act->v[NSA_BR_CMP];
    a.k_slc = act->k[NSA_BR_SLC];
    a.v_slc = act->v[NSA_BR_SLC];
    a.k_win = act->k[NSA_BR_WIN];
    a.v_win = act->v[NSA_BR_WIN];
    a.gates = act->gates;
    a.phi_k = &L->phi_k;
    a.phi_v = &L->phi_v;
    a.out = o;
    a.k_cmp_out = kc;
    a.v_cmp_out = vc;
    if (aux) {
        a.out_cmp = aux->out_cmp;
        a.out_slc = aux->out_slc;
        a.out_win = aux->out_win;
        a.selection_out = aux->selection;
    }
    nsa_status s = nsa_op_core(L->ctx, &L->cfg.attn, bt, &a,
                               act->kraw ? nsa_layer_rope_after : NULL, (void *)&L->cfg);
    return s == NSA_OK ? nsa_layer_output(L, o, bt->T, y) : s;
}

nsa_status nsa_layer_forward(nsa_layer *L, const float *x, int64_t T, const int32_t *cu,
                             int B, float *y, const nsa_layer_aux *aux)
{
    if (!L)
        return NSA_ERR_NULL;
    nsa_context *ctx = L->ctx;
    if (!x || !y)
        return nsa_fail(ctx, NSA_ERR_NULL, "x and y must not be NULL");
    const nsa_layer_config *c = &L->cfg;
    const nsa_config *ac = &c->attn;
    nsa_batch bt;
    nsa_status s = nsa_batch_init(ctx, ac, T, cu, B, &bt);
    if (s != NSA_OK)
        return s;
    nsa_acts act;
    memset(&act, 0, sizeof act);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)T);
    float *o = malloc(sizeof(float) * (size_t)T * ac->H * ac->dv);
    if (!pos || !o) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for the layer (T=%lld)", (long long)T);
        goto done;
    }
    for (int b = 0; b < bt.B; b++)
        for (int64_t t = bt.cu[b]; t < bt.cu[b + 1]; t++)
            pos[t] = t - bt.cu[b];
    if ((s = nsa_layer_project(L, x, T, pos, aux ? aux->gates : NULL, &act)) != NSA_OK)
        goto done;
    s = nsa_layer_attend(L, &bt, &act, aux, aux ? aux->k_cmp : NULL, aux ? aux->v_cmp : NULL, o,
                         y);
done:
    nsa_acts_free(&act);
    free(pos);
    free(o);
    nsa_batch_free(&bt);
    return s;
}
