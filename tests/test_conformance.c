/* The conformance vectors (NSA_SHARED_DIR/conformance, README there): each
 * case was computed by a float64 model of NSA_SPEC.md independent of
 * libnsa. The backend under test (NSA_TEST_BACKEND, default "ref") must
 * reproduce out, out_cmp, out_slc, out_win within relative L2 1e-5 (spec 9)
 * and the selection exactly. The configuration comes from the header's
 * __metadata__, parsed strictly: a malformed or unknown entry fails the
 * case instead of silently running something else. */
#include "testlib.h"
#include "safetensors.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CONF_DIR NSA_SHARED_DIR "/conformance"
#define CONF_TOL 1e-5 /* spec 9: relative L2 per output */

/* ------------------------------------------------------------ metadata */
/* A decimal integer in [lo, hi], nothing else (no sign, space, exponent). */
static int parse_int(const char *s, int lo, int hi, int *out)
{
    if (!s || !*s || strlen(s) > 9)
        return 0;
    long v = 0;
    for (const char *c = s; *c; c++) {
        if (*c < '0' || *c > '9')
            return 0;
        v = v * 10 + (*c - '0');
    }
    if (v < lo || v > hi)
        return 0;
    *out = (int)v;
    return 1;
}

/* A finite positive number, the whole string consumed. */
static int parse_scale(const char *s, float *out)
{
    if (!s || !*s || *s == ' ')
        return 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (*end || !isfinite(v) || !(v > 0.0))
        return 0;
    *out = (float)v;
    return 1;
}

typedef struct conf_meta {
    nsa_config cfg;
    int shared_kv;
} conf_meta;

/* Metadata keys the vectors carry; any other key is an error. */
static const char *const KNOWN_KEYS[] = {"H", "G",     "dk",    "dv",      "l",
                                         "d", "l_sel", "n",     "n_init",  "n_local",
                                         "w", "scale", "phi",   "mapping", "shared_kv",
                                         "generator"};

static int parse_meta(const nsa_st_file *f, conf_meta *m, char *why, size_t wl)
{
    memset(m, 0, sizeof *m);
    m->cfg = nsa_config_default();
    for (int i = 0; i < f->meta_count; i++) {
        int known = 0;
        for (size_t k = 0; k < sizeof KNOWN_KEYS / sizeof KNOWN_KEYS[0]; k++)
            known |= strcmp(f->meta_keys[i], KNOWN_KEYS[k]) == 0;
        if (!known) {
            snprintf(why, wl, "unknown metadata key '%s'", f->meta_keys[i]);
            return 0;
        }
    }
    struct {
        const char *key;
        int *dst;
        int lo;
    } ints[] = {{"H", &m->cfg.H, 1},         {"G", &m->cfg.G, 1},
                {"dk", &m->cfg.dk, 1},       {"dv", &m->cfg.dv, 1},
                {"l", &m->cfg.l, 1},         {"d", &m->cfg.d, 1},
                {"l_sel", &m->cfg.l_sel, 1}, {"n", &m->cfg.n, 1},
                {"n_init", &m->cfg.n_init, 0}, {"n_local", &m->cfg.n_local, 0},
                {"w", &m->cfg.w, 1}};
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        const char *v = nsa_st_meta(f, ints[k].key);
        if (!parse_int(v, ints[k].lo, 1 << 24, ints[k].dst)) {
            snprintf(why, wl, "metadata %s = '%s': want a decimal integer >= %d", ints[k].key,
                     v ? v : "(missing)", ints[k].lo);
            return 0;
        }
    }
    const char *v = nsa_st_meta(f, "scale");
    if (!parse_scale(v, &m->cfg.scale)) {
        snprintf(why, wl, "metadata scale = '%s': want a finite number > 0", v ? v : "(missing)");
        return 0;
    }
    /* The vectors use avg phi without pe (README); any other phi would need
     * weights the files do not carry. */
    v = nsa_st_meta(f, "phi");
    if (!v || strcmp(v, "avg")) {
        snprintf(why, wl, "metadata phi = '%s': only 'avg' is defined", v ? v : "(missing)");
        return 0;
    }
    v = nsa_st_meta(f, "mapping");
    if (v && !strcmp(v, "overlap"))
        m->cfg.mapping = NSA_MAPPING_OVERLAP;
    else if (v && !strcmp(v, "paper"))
        m->cfg.mapping = NSA_MAPPING_PAPER;
    else {
        snprintf(why, wl, "metadata mapping = '%s': want 'overlap' or 'paper'",
                 v ? v : "(missing)");
        return 0;
    }
    v = nsa_st_meta(f, "shared_kv");
    if (!v || (strcmp(v, "0") && strcmp(v, "1"))) {
        snprintf(why, wl, "metadata shared_kv = '%s': want '0' or '1'", v ? v : "(missing)");
        return 0;
    }
    m->shared_kv = v[0] == '1';
    char msg[256];
    if (nsa_config_validate(&m->cfg, msg, sizeof msg) != NSA_OK) {
        snprintf(why, wl, "metadata config invalid: %s", msg);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------- tensors */
/* Little-endian bytes to host values, whatever the host's byte order. */
static uint32_t le32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* The tensor `name` with exactly the given dtype and shape, copied out
 * (aligned, host order); NULL and a reason if anything differs. */
static void *take(const nsa_st_file *f, const char *name, nsa_st_dtype dt, int ndim,
                  const int64_t *shape, char *why, size_t wl)
{
    const nsa_st_tensor *t = nsa_st_find(f, name);
    if (!t) {
        snprintf(why, wl, "tensor '%s' missing", name);
        return NULL;
    }
    int ok = t->dtype == dt && t->ndim == ndim;
    size_t cnt = 1;
    for (int i = 0; ok && i < ndim; i++) {
        ok = t->shape[i] == shape[i];
        cnt *= (size_t)shape[i];
    }
    if (!ok || t->nbytes != 4 * cnt) {
        snprintf(why, wl, "tensor '%s': dtype %s or shape differs from the metadata", name,
                 t->dtype_name);
        return NULL;
    }
    void *out = malloc(4 * (cnt ? cnt : 1));
    assert_non_null(out);
    const unsigned char *b = t->data;
    for (size_t i = 0; i < cnt; i++) {
        uint32_t u = le32(b + 4 * i);
        if (dt == NSA_ST_F32) {
            float v;
            memcpy(&v, &u, 4);
            ((float *)out)[i] = v;
        } else {
            int32_t v;
            memcpy(&v, &u, 4);
            ((int32_t *)out)[i] = v;
        }
    }
    return out;
}

typedef struct conf_case {
    conf_meta meta;
    tl_problem p; /* inputs, freed with tl_problem_free */
    float *out, *out_cmp, *out_slc, *out_win;
    int32_t *sel;
} conf_case;

static int load_case(const char *path, conf_case *cc, char *why, size_t wl)
{
    memset(cc, 0, sizeof *cc);
    nsa_st_file f;
    char msg[256];
    if (nsa_st_read(path, &f, msg, sizeof msg) != NSA_OK) {
        snprintf(why, wl, "read failed: %s", msg);
        return 0;
    }
    int ok = parse_meta(&f, &cc->meta, why, wl);
    const nsa_config *c = &cc->meta.cfg;
    const nsa_st_tensor *tq = nsa_st_find(&f, "q"), *tcu = nsa_st_find(&f, "cu_seqlens");
    if (ok && (!tq || tq->ndim != 3 || !tcu || tcu->ndim != 1 || tcu->shape[0] < 2)) {
        snprintf(why, wl, "q [T][H][dk] or cu_seqlens [B+1] missing or malformed");
        ok = 0;
    }
    /* every tensor in the file must be one this test reads */
    static const char *const names[] = {"q",     "k_cmp",   "v_cmp",   "k_slc",   "v_slc",
                                        "k_win", "v_win",   "gates",   "cu_seqlens", "out",
                                        "out_cmp", "out_slc", "out_win", "selection"};
    for (int i = 0; ok && i < f.count; i++) {
        int known = 0;
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
            known |= !strcmp(f.tensors[i].name, names[k]);
        /* shared KV files store only k_cmp / v_cmp (README) */
        const char *tn = f.tensors[i].name;
        int branch_kv = !strcmp(tn, "k_slc") || !strcmp(tn, "v_slc") || !strcmp(tn, "k_win") ||
                        !strcmp(tn, "v_win");
        if (!known || (cc->meta.shared_kv && branch_kv)) {
            snprintf(why, wl, "unexpected tensor '%s'", f.tensors[i].name);
            ok = 0;
        }
    }
    if (ok) {
        const int64_t T = tq->shape[0], B = tcu->shape[0] - 1;
        const int64_t sq[3] = {T, c->H, c->dk}, sk[3] = {T, c->G, c->dk},
                      sv[3] = {T, c->G, c->dv}, so[3] = {T, c->H, c->dv},
                      sg[3] = {T, c->H, 3}, ss[3] = {T, c->G, c->n}, sc[1] = {B + 1};
        tl_problem *p = &cc->p;
        p->cfg = *c;
        p->B = (int)B;
        p->T = T;
        p->shared_kv = cc->meta.shared_kv;
        void **slots[] = {(void **)&p->q,       (void **)&p->kc,      (void **)&p->vc,
                          (void **)&p->gates,   (void **)&p->cu,      (void **)&cc->out,
                          (void **)&cc->out_cmp, (void **)&cc->out_slc, (void **)&cc->out_win,
                          (void **)&cc->sel};
        const char *sn[] = {"q",   "k_cmp",   "v_cmp",   "gates",   "cu_seqlens",
                            "out", "out_cmp", "out_slc", "out_win", "selection"};
        const int64_t *shp[] = {sq, sk, sv, sg, sc, so, so, so, so, ss};
        const int nd[] = {3, 3, 3, 3, 1, 3, 3, 3, 3, 3};
        const nsa_st_dtype dts[] = {NSA_ST_F32, NSA_ST_F32, NSA_ST_F32, NSA_ST_F32, NSA_ST_I32,
                                    NSA_ST_F32, NSA_ST_F32, NSA_ST_F32, NSA_ST_F32, NSA_ST_I32};
        for (int k = 0; ok && k < 10; k++)
            ok = (*slots[k] = take(&f, sn[k], dts[k], nd[k], shp[k], why, wl)) != NULL;
        if (ok && p->shared_kv) {
            p->ks = p->kw = p->kc;
            p->vs = p->vw = p->vc;
        } else if (ok) {
            ok = (p->ks = take(&f, "k_slc", NSA_ST_F32, 3, sk, why, wl)) &&
                 (p->vs = take(&f, "v_slc", NSA_ST_F32, 3, sv, why, wl)) &&
                 (p->kw = take(&f, "k_win", NSA_ST_F32, 3, sk, why, wl)) &&
                 (p->vw = take(&f, "v_win", NSA_ST_F32, 3, sv, why, wl));
        }
        if (ok && (p->cu[0] != 0 || p->cu[B] != T)) {
            snprintf(why, wl, "cu_seqlens must run from 0 to T=%lld", (long long)T);
            ok = 0;
        }
    }
    nsa_st_free(&f);
    return ok;
}

static void free_case(conf_case *cc)
{
    /* tl_problem_free frees what is set; ks.. may be NULL after a failure */
    if (!cc->p.shared_kv) {
        free(cc->p.ks);
        free(cc->p.vs);
        free(cc->p.kw);
        free(cc->p.vw);
        cc->p.ks = cc->p.vs = cc->p.kw = cc->p.vw = NULL;
        cc->p.shared_kv = 1; /* already freed */
    }
    tl_problem_free(&cc->p);
    free(cc->out);
    free(cc->out_cmp);
    free(cc->out_slc);
    free(cc->out_win);
    free(cc->sel);
}

/* ------------------------------------------------------------- running */
static void check_outputs(const char *name, const char *pass, const conf_case *cc,
                          const tl_outputs *o, int check_sel)
{
    size_t no = (size_t)cc->p.T * cc->meta.cfg.H * cc->meta.cfg.dv;
    const float *got[] = {o->out, o->out_cmp, o->out_slc, o->out_win};
    const float *want[] = {cc->out, cc->out_cmp, cc->out_slc, cc->out_win};
    const char *on[] = {"out", "out_cmp", "out_slc", "out_win"};
    for (int k = 0; k < 4; k++) {
        double e = tl_rel_l2(got[k], want[k], no);
        print_message("  %-28s %-8s %-8s rel L2 %.3g (tol %g)\n", name, pass, on[k], e,
                      CONF_TOL);
        if (!(e <= CONF_TOL)) /* spec 9 */
            fail_msg("%s (%s): %s relative L2 %g > %g", name, pass, on[k], e, CONF_TOL);
    }
    if (!check_sel)
        return;
    const nsa_config *c = &cc->meta.cfg;
    for (int64_t r = 0; r < cc->p.T; r++)
        for (int g = 0; g < c->G; g++)
            for (int k = 0; k < c->n; k++) {
                size_t at = ((size_t)r * c->G + g) * c->n + k;
                if (o->sel[at] != cc->sel[at])
                    fail_msg("%s: selection at row %lld group %d entry %d is %d, want %d",
                             name, (long long)r, g, k, o->sel[at], cc->sel[at]);
            }
}

static void run_case(nsa_context *ctx, const char *file)
{
    char path[1024], why[512];
    snprintf(path, sizeof path, "%s/%s", CONF_DIR, file);
    conf_case cc;
    if (!load_case(path, &cc, why, sizeof why)) {
        free_case(&cc);
        fail_msg("%s: %s", file, why);
    }
    tl_outputs o;
    tl_outputs_alloc(&o, &cc.p);
    tl_forward_plain(ctx, &cc.p, NULL, &o);
    check_outputs(file, "top-n", &cc, &o, 1);
    /* again with the vector's own selection: the outputs must not depend
     * on the backend's top-n (spec 9's rule for comparisons) */
    tl_outputs_poison(&o);
    tl_forward_plain(ctx, &cc.p, cc.sel, &o);
    check_outputs(file, "sel_in", &cc, &o, 1);
    tl_outputs_free(&o);
    free_case(&cc);
}

static int is_case(const char *n)
{
    size_t len = strlen(n), sl = strlen(".safetensors");
    return len > sl && !strcmp(n + len - sl, ".safetensors");
}

static void test_all_vectors(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    DIR *dir = opendir(CONF_DIR);
    if (!dir)
        fail_msg("cannot open %s", CONF_DIR);
    static const char *const expected[] = {"basic_unequal_dims", "varlen_edges",
                                           "paper_mapping", "identity_shared_kv",
                                           "paper_defaults_small_heads"};
    int seen[5] = {0}, cases = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (!is_case(e->d_name))
            continue;
        for (int k = 0; k < 5; k++)
            if (!strncmp(e->d_name, expected[k], strlen(expected[k])) &&
                e->d_name[strlen(expected[k])] == '.')
                seen[k] = 1;
        run_case(ctx, e->d_name);
        cases++;
    }
    closedir(dir);
    for (int k = 0; k < 5; k++)
        if (!seen[k])
            fail_msg("conformance case %s.safetensors missing from %s", expected[k], CONF_DIR);
    print_message("  %d conformance cases on backend '%s'\n", cases, tl_backend_name());
    nsa_context_free(ctx);
}

/* The strict metadata parser refuses what a lenient one would guess at. */
static void test_metadata_strict(void **state)
{
    (void)state;
    int v;
    float s;
    assert_true(parse_int("16", 1, 100, &v) && v == 16);
    assert_true(parse_int("0", 0, 100, &v) && v == 0);
    const char *bad_int[] = {"", " 16", "16 ", "+16", "-1", "1e1", "16.0", "0x10", "abc",
                             "1234567890"};
    for (size_t i = 0; i < sizeof bad_int / sizeof bad_int[0]; i++)
        assert_false(parse_int(bad_int[i], 0, 1 << 24, &v));
    assert_false(parse_int("0", 1, 100, &v));
    assert_true(parse_scale("0.25", &s) && s == 0.25f);
    const char *bad_scale[] = {"", "0", "-0.25", "0.25x", "nan", "inf", " 0.25"};
    for (size_t i = 0; i < sizeof bad_scale / sizeof bad_scale[0]; i++)
        assert_false(parse_scale(bad_scale[i], &s));

    /* a whole header: valid, then one entry broken at a time */
    char *keys[16], *vals[16];
    const char *good[][2] = {{"H", "4"},      {"G", "2"},        {"dk", "8"},
                             {"dv", "8"},     {"l", "8"},        {"d", "4"},
                             {"l_sel", "16"}, {"n", "3"},        {"n_init", "1"},
                             {"n_local", "1"}, {"w", "5"},       {"scale", "0.25"},
                             {"phi", "avg"},  {"mapping", "paper"}, {"shared_kv", "1"}};
    const int ng = 15;
    nsa_st_file f;
    memset(&f, 0, sizeof f);
    f.meta_keys = keys;
    f.meta_vals = vals;
    f.meta_count = ng;
    for (int i = 0; i < ng; i++) {
        keys[i] = (char *)good[i][0];
        vals[i] = (char *)good[i][1];
    }
    conf_meta m;
    char why[256];
    assert_true(parse_meta(&f, &m, why, sizeof why));
    assert_int_equal(m.cfg.mapping, NSA_MAPPING_PAPER);
    assert_int_equal(m.shared_kv, 1);
    assert_int_equal(m.cfg.l_sel, 16);
    const struct {
        int at;
        const char *val;
    } broken[] = {{12, "mlp"}, {13, "Overlap"}, {14, "yes"}, {11, "-1"}, {0, "4.0"}, {8, ""},
                  {5, "3"} /* d does not divide l */};
    for (size_t b = 0; b < sizeof broken / sizeof broken[0]; b++) {
        vals[broken[b].at] = (char *)broken[b].val;
        assert_false(parse_meta(&f, &m, why, sizeof why));
        vals[broken[b].at] = (char *)good[broken[b].at][1];
    }
    keys[15] = "phi_pe";
    vals[15] = "1";
    f.meta_count = 16;
    assert_false(parse_meta(&f, &m, why, sizeof why));
    assert_non_null(strstr(why, "phi_pe"));
    f.meta_count = ng - 1; /* shared_kv missing */
    assert_false(parse_meta(&f, &m, why, sizeof why));
}

int main(void)
{
    if (tl_skip_half_storage(tl_backend_name()))
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metadata_strict),
        cmocka_unit_test(test_all_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
