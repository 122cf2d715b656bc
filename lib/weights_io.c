/* Layer weights in safetensors: the configuration as string metadata, every
 * tensor as F32 under its doc/weights.md name. Loading trusts nothing in the
 * file: each key, tensor, dtype and shape is checked against the config. */
#include "layer.h"
#include "safetensors.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define W_FORMAT "libnsa-layer"
#define W_VERSION "1"
#define W_NKEYS 27

/* ------------------------------------------------------------- saving */

typedef struct meta_out {
    const char *keys[W_NKEYS];
    const char *vals[W_NKEYS];
    char buf[W_NKEYS][40];
    int n;
} meta_out;

static void put(meta_out *m, const char *key, const char *fmt, ...) NSA_PRINTF(3, 4);
static void put(meta_out *m, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->buf[m->n], sizeof m->buf[m->n], fmt, ap);
    va_end(ap);
    m->keys[m->n] = key;
    m->vals[m->n] = m->buf[m->n];
    m->n++;
}

/* %.9g: enough digits for any float to read back to the same value. */
static void fill_meta(meta_out *m, const nsa_layer_config *c)
{
    const nsa_config *a = &c->attn;
    m->n = 0;
    put(m, "format", "%s", W_FORMAT);
    put(m, "format_version", "%s", W_VERSION);
    put(m, "H", "%d", a->H);
    put(m, "G", "%d", a->G);
    put(m, "dk", "%d", a->dk);
    put(m, "dv", "%d", a->dv);
    put(m, "l", "%d", a->l);
    put(m, "d", "%d", a->d);
    put(m, "l_sel", "%d", a->l_sel);
    put(m, "n", "%d", a->n);
    put(m, "n_init", "%d", a->n_init);
    put(m, "n_local", "%d", a->n_local);
    put(m, "w", "%d", a->w);
    put(m, "scale", "%.9g", (double)a->scale);
    put(m, "mapping", "%s", a->mapping == NSA_MAPPING_PAPER ? "paper" : "overlap");
    put(m, "D", "%d", c->D);
    put(m, "shared_kv", "%d", c->shared_kv);
    put(m, "phi", "%s", c->phi == NSA_PHI_MLP ? "mlp" : "avg");
    put(m, "phi_hidden", "%d", c->phi_hidden);
    put(m, "phi_pe", "%d", c->phi_pe);
    put(m, "rope_dim", "%d", c->rope_dim);
    put(m, "rope_base", "%.9g", (double)c->rope_base);
    put(m, "rope_cmp", "%s", c->rope_cmp == NSA_ROPE_AFTER ? "after" : "before");
    put(m, "gate_hidden", "%d", c->gate_hidden);
    put(m, "gate_act", "%s", c->gate_act == NSA_GATE_SIGMOID ? "sigmoid" : "softmax");
    put(m, "gate_tau", "%.9g", (double)c->gate_tau);
}

nsa_status nsa_layer_save(nsa_layer *L, const char *path)
{
    if (!L)
        return NSA_ERR_NULL;
    if (!path)
        return nsa_fail(L->ctx, NSA_ERR_NULL, "nsa_layer_save: path is NULL");
    meta_out m;
    fill_meta(&m, &L->cfg);
    nsa_st_out t[NSA_LAYER_MAX_TENSORS];
    for (int i = 0; i < L->ntensors; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].name = L->t[i].name;
        t[i].dtype = NSA_ST_F32;
        t[i].ndim = L->t[i].ndim;
        for (int k = 0; k < L->t[i].ndim; k++)
            t[i].shape[k] = L->t[i].shape[k];
        t[i].data = L->t[i].data;
    }
    char msg[NSA_MSG_LEN];
    nsa_status s = nsa_st_write(path, t, L->ntensors, m.keys, m.vals, m.n, msg, sizeof msg);
    if (s)
        return nsa_fail(L->ctx, s, "%s", msg);
    return NSA_OK;
}

/* ------------------------------------------------------------ loading */

typedef struct loader {
    nsa_context *ctx;
    const char *path;
    const nsa_st_file *f;
} loader;

static const char *need(const loader *ld, const char *key, nsa_status *s)
{
    const char *v = nsa_st_meta(ld->f, key);
    if (!v && *s == NSA_OK)
        *s = nsa_fail(ld->ctx, NSA_ERR_FORMAT, "weights '%s': metadata key '%s' is missing",
                      ld->path, key);
    return v;
}

/* A decimal int, the whole string, no spaces or signs beyond one '-'. */
static void get_int(const loader *ld, const char *key, int *out, nsa_status *s)
{
    const char *v = need(ld, key, s);
    if (!v || *s)
        return;
    char *end = NULL;
    long x = 0;
    int ok = *v == '-' || (*v >= '0' && *v <= '9');
    if (ok) {
        errno = 0;
        x = strtol(v, &end, 10);
        ok = !*end && !errno && x >= INT_MIN && x <= INT_MAX;
    }
    if (!ok) {
        *s = nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                      "weights '%s': metadata '%s' = '%.40s' is not an integer", ld->path, key,
                      v);
        return;
    }
    *out = (int)x;
}

static void get_float(const loader *ld, const char *key, float *out, nsa_status *s)
{
    const char *v = need(ld, key, s);
    if (!v || *s)
        return;
    char *end = NULL;
    float x = 0.0f;
    /* strtof alone would also take spaces, "inf", "nan" and hex words. */
    int ok = *v == '-' || *v == '.' || (*v >= '0' && *v <= '9');
    if (ok) {
        errno = 0;
        x = strtof(v, &end);
        ok = !*end && !errno && isfinite(x);
    }
    if (!ok) {
        *s = nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                      "weights '%s': metadata '%s' = '%.40s' is not a finite number", ld->path,
                      key, v);
        return;
    }
    *out = x;
}

/* One of two words; returns its index. */
static void get_word(const loader *ld, const char *key, const char *w0, const char *w1,
                     int *out, nsa_status *s)
{
    const char *v = need(ld, key, s);
    if (!v || *s)
        return;
    if (!strcmp(v, w0))
        *out = 0;
    else if (!strcmp(v, w1))
        *out = 1;
    else
        *s = nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                      "weights '%s': metadata '%s' = '%.40s' is not '%s' or '%s'", ld->path,
                      key, v, w0, w1);
}

static nsa_status parse_config(const loader *ld, nsa_layer_config *c)
{
    nsa_status s = NSA_OK;
    const char *fmt = need(ld, "format", &s);
    if (fmt && strcmp(fmt, W_FORMAT))
        return nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                        "weights '%s': metadata 'format' = '%.40s', expected '" W_FORMAT "'",
                        ld->path, fmt);
    const char *ver = need(ld, "format_version", &s);
    if (ver && strcmp(ver, W_VERSION))
        return nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                        "weights '%s': format_version '%.40s' is not supported (this library "
                        "reads version " W_VERSION ")",
                        ld->path, ver);
    memset(c, 0, sizeof *c);
    nsa_config *a = &c->attn;
    int mapping = 0, phi = 0, rope_cmp = 0, gate_act = 0;
    get_int(ld, "H", &a->H, &s);
    get_int(ld, "G", &a->G, &s);
    get_int(ld, "dk", &a->dk, &s);
    get_int(ld, "dv", &a->dv, &s);
    get_int(ld, "l", &a->l, &s);
    get_int(ld, "d", &a->d, &s);
    get_int(ld, "l_sel", &a->l_sel, &s);
    get_int(ld, "n", &a->n, &s);
    get_int(ld, "n_init", &a->n_init, &s);
    get_int(ld, "n_local", &a->n_local, &s);
    get_int(ld, "w", &a->w, &s);
    get_float(ld, "scale", &a->scale, &s);
    get_word(ld, "mapping", "overlap", "paper", &mapping, &s);
    get_int(ld, "D", &c->D, &s);
    get_int(ld, "shared_kv", &c->shared_kv, &s);
    get_word(ld, "phi", "avg", "mlp", &phi, &s);
    get_int(ld, "phi_hidden", &c->phi_hidden, &s);
    get_int(ld, "phi_pe", &c->phi_pe, &s);
    get_int(ld, "rope_dim", &c->rope_dim, &s);
    get_float(ld, "rope_base", &c->rope_base, &s);
    get_word(ld, "rope_cmp", "before", "after", &rope_cmp, &s);
    get_int(ld, "gate_hidden", &c->gate_hidden, &s);
    get_word(ld, "gate_act", "softmax", "sigmoid", &gate_act, &s);
    get_float(ld, "gate_tau", &c->gate_tau, &s);
    if (s)
        return s;
    a->mapping = mapping ? NSA_MAPPING_PAPER : NSA_MAPPING_OVERLAP;
    c->phi = phi ? NSA_PHI_MLP : NSA_PHI_AVG;
    c->rope_cmp = rope_cmp ? NSA_ROPE_AFTER : NSA_ROPE_BEFORE;
    c->gate_act = gate_act ? NSA_GATE_SIGMOID : NSA_GATE_SOFTMAX;
    char msg[NSA_MSG_LEN];
    /* A well-formed file with an impossible configuration is still a bad
     * file; the message carries the rule. */
    if (nsa_layer_config_validate(c, msg, sizeof msg))
        return nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                        "weights '%s': the configuration in the metadata is invalid: %s",
                        ld->path, msg);
    return NSA_OK;
}

static void shape_text(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* Every layer tensor present as F32 with exactly its shape, and nothing
 * else in the file. */
static nsa_status fill_tensors(const loader *ld, nsa_layer *L)
{
    char want[96], got[96];
    for (int i = 0; i < L->ntensors; i++) {
        const nsa_tensor *lt = &L->t[i];
        const nsa_st_tensor *ft = nsa_st_find(ld->f, lt->name);
        shape_text(want, sizeof want, lt->ndim, lt->shape);
        if (!ft)
            return nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                            "weights '%s': tensor '%s' is missing (the config needs %s)",
                            ld->path, lt->name, want);
        if (ft->dtype != NSA_ST_F32)
            return nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                            "weights '%s': tensor '%s': dtype %s, expected F32", ld->path,
                            lt->name, ft->dtype_name);
        int same = ft->ndim == lt->ndim;
        for (int k = 0; same && k < lt->ndim; k++)
            same = ft->shape[k] == lt->shape[k];
        if (!same) {
            shape_text(got, sizeof got, ft->ndim, ft->shape);
            return nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                            "weights '%s': tensor '%s': shape %s but the config needs %s",
                            ld->path, lt->name, got, want);
        }
        /* The reader matched nbytes to the shape, and the shapes agree. */
        memcpy(lt->data, ft->data, ft->nbytes);
    }
    L->wgen++; /* written: device copies (if any) are history */
    for (int i = 0; i < ld->f->count; i++) {
        const char *name = ld->f->tensors[i].name;
        int known = 0;
        for (int k = 0; k < L->ntensors && !known; k++)
            known = !strcmp(L->t[k].name, name);
        if (!known)
            return nsa_fail(ld->ctx, NSA_ERR_FORMAT,
                            "weights '%s': tensor '%.64s' is not part of a layer with this "
                            "configuration (see doc/weights.md)",
                            ld->path, name);
    }
    return NSA_OK;
}

nsa_status nsa_layer_load(nsa_context *ctx, const char *path, nsa_layer **out)
{
    if (out)
        *out = NULL;
    if (!ctx)
        return NSA_ERR_NULL;
    if (!path || !out)
        return nsa_fail(ctx, NSA_ERR_NULL, "nsa_layer_load: path and out are required");
    nsa_st_file f;
    char msg[NSA_MSG_LEN];
    nsa_status s = nsa_st_read(path, &f, msg, sizeof msg);
    if (s) {
        /* I/O messages already name the path. */
        if (s == NSA_ERR_IO)
            return nsa_fail(ctx, s, "%s", msg);
        return nsa_fail(ctx, s, "weights '%s': %s", path, msg);
    }
    loader ld = {ctx, path, &f};
    nsa_layer_config cfg;
    nsa_layer *L = NULL;
    s = parse_config(&ld, &cfg);
    if (s == NSA_OK)
        s = nsa_layer_create(ctx, &cfg, &L);
    if (s == NSA_OK)
        s = fill_tensors(&ld, L);
    nsa_st_free(&f);
    if (s) {
        nsa_layer_free(L);
        return s;
    }
    *out = L;
    return NSA_OK;
}
