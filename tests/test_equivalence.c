/* Equivalences that pin each branch to plain attention (spec 2-4) and each
 * phi form to another (spec 2), against a dense causal attention written
 * here in double:
 *   sliding branch with w >= S            == dense causal (k_win, v_win)
 *   selected branch, n covering all blocks == dense causal (k_slc, v_slc)
 *   compressed branch, l = d = 1, avg phi  == dense causal (k_cmp, v_cmp)
 *   phi mlp hidden = 0 with W = [I/l ... I/l]          == phi avg
 *   phi mlp hidden = 2 dim, SiLU(a) - SiLU(-a) = a      == phi avg
 *   phi avg with pe constant over j shifts K_cmp by it (and mean_j pe in
 *   general)
 * and two bit-exact ones: a varlen batch equals each sequence run alone;
 * shared-KV pointers equal independent copies of the same data.
 * Tolerance where arithmetic differs: relative L2 <= 1e-6 (both sides
 * accumulate in double; only the float32 rounding of outputs remains). */
#include "testlib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EQ_TOL 1e-6

/* The overlap mapping throughout. */
static nsa_config mk(int H, int G, int dk, int dv, int l, int d, int ls, int n, int ni,
                     int nl, int w)
{
    return tl_config(H, G, dk, dv, l, d, ls, n, ni, nl, w, NSA_MAPPING_OVERLAP);
}

/* Dense causal attention of every query over its sequence's positions
 * max(0, t-w+1)..t of K [T][G][dk], V [T][G][dv] (w = 0: all of 0..t);
 * out [T][H][dv] in double. */
static double *dense_banded(const tl_problem *p, const float *K, const float *V, int64_t w)
{
    const nsa_config *c = &p->cfg;
    const int hpg = c->H / c->G;
    const double scale = nsa_config_scale(c);
    double *out = calloc((size_t)p->T * c->H * c->dv, sizeof(double));
    double *z = malloc(sizeof(double) * (size_t)p->T);
    assert_true(out && z);
    for (int b = 0; b < p->B; b++)
        for (int64_t t = 0; t < p->cu[b + 1] - p->cu[b]; t++)
            for (int h = 0; h < c->H; h++) {
                const int g = h / hpg;
                const int64_t r0 = p->cu[b];
                const float *q = p->q + ((size_t)(r0 + t) * c->H + h) * c->dk;
                double mx = -INFINITY, sum = 0.0;
                const int64_t s0 = (w > 0 && t - w + 1 > 0) ? t - w + 1 : 0;
                for (int64_t s = s0; s <= t; s++) {
                    const float *k = K + ((size_t)(r0 + s) * c->G + g) * c->dk;
                    double a = 0.0;
                    for (int e = 0; e < c->dk; e++)
                        a += (double)q[e] * k[e];
                    z[s] = scale * a;
                    mx = fmax(mx, z[s]);
                }
                double *o = out + ((size_t)(r0 + t) * c->H + h) * c->dv;
                for (int64_t s = s0; s <= t; s++) {
                    double a = exp(z[s] - mx);
                    sum += a;
                    const float *v = V + ((size_t)(r0 + s) * c->G + g) * c->dv;
                    for (int e = 0; e < c->dv; e++)
                        o[e] += a * v[e];
                }
                for (int e = 0; e < c->dv; e++)
                    o[e] /= sum;
            }
    free(z);
    return out;
}

static double *dense_causal(const tl_problem *p, const float *K, const float *V)
{
    return dense_banded(p, K, V, 0);
}

static double rel_l2_d(const float *got, const double *want, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]))
            return INFINITY;
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return den > 0.0 ? sqrt(num / den) : (num == 0.0 ? 0.0 : INFINITY);
}

static void expect_close(const char *what, double err, double tol)
{
    print_message("%-55s rel L2 %.3g (tol %g)\n", what, err, tol);
    if (!(err <= tol))
        fail_msg("%s: relative L2 error %g > %g", what, err, tol);
}

static const int LENS[3] = {1, 37, 100};

static void test_sliding_full_window_is_dense(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    const int ws[2] = {100, 1000}; /* w = longest S, and w > S */
    for (int k = 0; k < 2; k++) {
        nsa_config c = mk(4, 2, 16, 8, 8, 4, 16, 3, 1, 1, ws[k]);
        tl_problem p;
        tl_problem_make(&p, &c, LENS, 3, 0, 10 + (uint64_t)k);
        tl_outputs o;
        tl_outputs_alloc(&o, &p);
        tl_forward_plain(ctx, &p, NULL, &o);
        double *d = dense_causal(&p, p.kw, p.vw);
        expect_close("out_win, w >= S vs dense", rel_l2_d(o.out_win, d, (size_t)p.T * 4 * 8),
                     EQ_TOL);
        free(d);
        tl_outputs_free(&o);
        tl_problem_free(&p);
    }
    nsa_context_free(ctx);
}

/* w < S: the sliding branch is banded causal attention (spec 4). */
static void test_sliding_window_is_banded(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    const int ws[3] = {1, 5, 16};
    for (int k = 0; k < 3; k++) {
        nsa_config c = mk(4, 2, 16, 8, 8, 4, 16, 3, 1, 1, ws[k]);
        tl_problem p;
        tl_problem_make(&p, &c, LENS, 3, 0, 15 + (uint64_t)k);
        tl_outputs o;
        tl_outputs_alloc(&o, &p);
        tl_forward_plain(ctx, &p, NULL, &o);
        double *d = dense_banded(&p, p.kw, p.vw, ws[k]);
        expect_close("out_win vs banded dense", rel_l2_d(o.out_win, d, (size_t)p.T * 4 * 8),
                     EQ_TOL);
        free(d);
        tl_outputs_free(&o);
        tl_problem_free(&p);
    }
    nsa_context_free(ctx);
}

static void test_selected_all_blocks_is_dense(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    /* S = 100, l' = 16: 7 blocks; n = 7 selects all of them. Both mappings. */
    for (int m = 0; m < 2; m++) {
        nsa_config c = mk(4, 2, 16, 8, 8, 4, 16, 7, 1, 2, 5);
        c.mapping = m ? NSA_MAPPING_PAPER : NSA_MAPPING_OVERLAP;
        tl_problem p;
        tl_problem_make(&p, &c, LENS, 3, 0, 20 + (uint64_t)m);
        tl_outputs o;
        tl_outputs_alloc(&o, &p);
        tl_forward_plain(ctx, &p, NULL, &o);
        double *d = dense_causal(&p, p.ks, p.vs);
        expect_close("out_slc, n covering all blocks vs dense",
                     rel_l2_d(o.out_slc, d, (size_t)p.T * 4 * 8), EQ_TOL);
        free(d);
        tl_outputs_free(&o);
        tl_problem_free(&p);
    }
    nsa_context_free(ctx);
}

/* l = d = 1: compressed token i is k[i] itself (mean of one token),
 * n_cmp(t) = t + 1, so the compressed branch is dense causal attention.
 * l' only has to be a multiple of d = 1. */
static void test_compressed_l1_is_dense(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    const int ls[2] = {1, 4};
    for (int k = 0; k < 2; k++) {
        nsa_config c = mk(4, 2, 16, 8, 1, 1, ls[k], 3, 1, 1, 7);
        tl_problem p;
        tl_problem_make(&p, &c, LENS, 3, 0, 30 + (uint64_t)k);
        tl_outputs o;
        tl_outputs_alloc(&o, &p);
        assert_int_equal(o.C, p.T);
        tl_forward_plain(ctx, &p, NULL, &o);
        /* the mean of one float is that float, exactly */
        assert_memory_equal(o.kc, p.kc, sizeof(float) * (size_t)p.T * 2 * 16);
        assert_memory_equal(o.vc, p.vc, sizeof(float) * (size_t)p.T * 2 * 8);
        double *d = dense_causal(&p, p.kc, p.vc);
        expect_close("out_cmp, l = d = 1 vs dense", rel_l2_d(o.out_cmp, d, (size_t)p.T * 4 * 8),
                     EQ_TOL);
        free(d);
        tl_outputs_free(&o);
        tl_problem_free(&p);
    }
    nsa_context_free(ctx);
}

/* ---------------------------------------------------------------- phi */
/* Runs p with phi_k / phi_v (NULL: avg) and an optional selection. */
static void run_phi(nsa_context *ctx, const tl_problem *p, const nsa_phi *pk, const nsa_phi *pv,
                    const int32_t *sel_in, tl_outputs *o)
{
    nsa_op_args a = tl_problem_args(p);
    a.phi_k = pk;
    a.phi_v = pv;
    a.selection_in = sel_in;
    tl_outputs_alloc(o, p);
    tl_forward(ctx, p, &a, o);
}

/* Compares every output of two runs whose compressed tokens agree up to
 * rounding; b was fed a's selection, so the comparison is not at the
 * mercy of a near tie. */
static void expect_runs_close(const char *what, const tl_outputs *a, const tl_outputs *b)
{
    char buf[160];
    size_t no = (size_t)a->T * a->H * a->dv;
    const float *fa[] = {a->out, a->out_cmp, a->out_slc, a->out_win};
    const float *fb[] = {b->out, b->out_cmp, b->out_slc, b->out_win};
    const char *names[] = {"out", "out_cmp", "out_slc", "out_win"};
    for (int k = 0; k < 4; k++) {
        snprintf(buf, sizeof buf, "%s: %s", what, names[k]);
        expect_close(buf, tl_rel_l2(fb[k], fa[k], no), EQ_TOL);
    }
    snprintf(buf, sizeof buf, "%s: k_cmp_out", what);
    expect_close(buf, tl_rel_l2(b->kc, a->kc, (size_t)a->C * a->G * a->dk), EQ_TOL);
    snprintf(buf, sizeof buf, "%s: v_cmp_out", what);
    expect_close(buf, tl_rel_l2(b->vc, a->vc, (size_t)a->C * a->G * a->dv), EQ_TOL);
}

/* W [G][dim][l*dim] with W[e][j*dim + e] = 1/l: the mean as a linear map. */
static float *avg_linear(const nsa_config *c, int dim)
{
    size_t L = (size_t)c->l * dim;
    float *w = calloc((size_t)c->G * dim * L, sizeof(float));
    assert_non_null(w);
    for (int g = 0; g < c->G; g++)
        for (int e = 0; e < dim; e++)
            for (int j = 0; j < c->l; j++)
                w[((size_t)g * dim + e) * L + (size_t)j * dim + e] = 1.0f / (float)c->l;
    return w;
}

/* hidden = 2 dim: h = SiLU(+mean), SiLU(-mean); phi = h_+ - h_-, which is
 * the mean exactly, since SiLU(a) - SiLU(-a) = a (sigmoid(a) + sigmoid(-a)
 * = 1). W1 [G][2dim][l*dim], W2 [G][dim][2dim]. */
static void avg_silu_pair(const nsa_config *c, int dim, float **w1, float **w2)
{
    size_t L = (size_t)c->l * dim, hid = 2 * (size_t)dim;
    *w1 = calloc((size_t)c->G * hid * L, sizeof(float));
    *w2 = calloc((size_t)c->G * dim * hid, sizeof(float));
    assert_true(*w1 && *w2);
    for (int g = 0; g < c->G; g++)
        for (int e = 0; e < dim; e++) {
            for (int j = 0; j < c->l; j++) {
                (*w1)[((size_t)g * hid + e) * L + (size_t)j * dim + e] = 1.0f / (float)c->l;
                (*w1)[((size_t)g * hid + dim + e) * L + (size_t)j * dim + e] =
                    -1.0f / (float)c->l;
            }
            (*w2)[((size_t)g * dim + e) * hid + e] = 1.0f;
            (*w2)[((size_t)g * dim + e) * hid + dim + e] = -1.0f;
        }
}

static nsa_config phi_cfg(void) { return mk(4, 2, 8, 6, 4, 2, 8, 3, 1, 1, 5); }

static void test_phi_linear_and_mlp_as_avg(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    nsa_config c = phi_cfg();
    const int lens[2] = {23, 90};
    tl_problem p;
    tl_problem_make(&p, &c, lens, 2, 0, 40);
    tl_outputs avg, lin, mlp;
    run_phi(ctx, &p, NULL, NULL, NULL, &avg);

    float *wk = avg_linear(&c, c.dk), *wv = avg_linear(&c, c.dv);
    nsa_phi lk = {NSA_PHI_MLP, 0, NULL, wk, NULL, NULL, NULL};
    nsa_phi lv = {NSA_PHI_MLP, 0, NULL, wv, NULL, NULL, NULL};
    run_phi(ctx, &p, &lk, &lv, avg.sel, &lin);
    expect_runs_close("mlp hidden=0, W = [I/l ... I/l] vs avg", &avg, &lin);

    float *k1, *k2, *v1, *v2;
    avg_silu_pair(&c, c.dk, &k1, &k2);
    avg_silu_pair(&c, c.dv, &v1, &v2);
    nsa_phi mk_ = {NSA_PHI_MLP, 2 * c.dk, NULL, k1, NULL, k2, NULL};
    nsa_phi mv_ = {NSA_PHI_MLP, 2 * c.dv, NULL, v1, NULL, v2, NULL};
    run_phi(ctx, &p, &mk_, &mv_, avg.sel, &mlp);
    expect_runs_close("mlp hidden=2dim, SiLU(a)-SiLU(-a) vs avg", &avg, &mlp);

    free(wk);
    free(wv);
    free(k1);
    free(k2);
    free(v1);
    free(v2);
    tl_outputs_free(&avg);
    tl_outputs_free(&lin);
    tl_outputs_free(&mlp);
    tl_problem_free(&p);
    nsa_context_free(ctx);
}

/* pe[g][j][e] (optional, spec 2) is added to each token before phi. */
static void test_phi_pe_shift(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    nsa_config c = phi_cfg();
    const int lens[2] = {23, 90};
    tl_problem p;
    tl_problem_make(&p, &c, lens, 2, 0, 50);
    const size_t nk = (size_t)c.G * c.l * c.dk, nv = (size_t)c.G * c.l * c.dv;
    float *pek = malloc(sizeof(float) * nk), *pev = malloc(sizeof(float) * nv);
    assert_true(pek && pev);
    tl_outputs base;
    run_phi(ctx, &p, NULL, NULL, NULL, &base);

    for (int varying = 0; varying < 2; varying++) {
        /* constant over j (varying = 0): K_cmp shifts by exactly c[g][e];
         * in general by mean_j pe[g][j][e] */
        tl_fill(pek, nk, 60 + (uint64_t)varying, -0.5f, 0.5f);
        tl_fill(pev, nv, 70 + (uint64_t)varying, -0.5f, 0.5f);
        if (!varying)
            for (int g = 0; g < c.G; g++)
                for (int j = 1; j < c.l; j++) {
                    memcpy(pek + ((size_t)g * c.l + j) * c.dk, pek + (size_t)g * c.l * c.dk,
                           sizeof(float) * c.dk);
                    memcpy(pev + ((size_t)g * c.l + j) * c.dv, pev + (size_t)g * c.l * c.dv,
                           sizeof(float) * c.dv);
                }
        nsa_phi ak = {NSA_PHI_AVG, 0, pek, NULL, NULL, NULL, NULL};
        nsa_phi av = {NSA_PHI_AVG, 0, pev, NULL, NULL, NULL, NULL};
        tl_outputs o;
        run_phi(ctx, &p, &ak, &av, NULL, &o);
        const float *pes[2] = {pek, pev};
        const float *got[2] = {o.kc, o.vc}, *ref[2] = {base.kc, base.vc};
        const int dims[2] = {c.dk, c.dv};
        for (int kv = 0; kv < 2; kv++) {
            const int dim = dims[kv];
            size_t n = (size_t)o.C * c.G * dim;
            double *want = malloc(sizeof(double) * n);
            assert_non_null(want);
            for (int64_t i = 0; i < o.C; i++)
                for (int g = 0; g < c.G; g++)
                    for (int e = 0; e < dim; e++) {
                        double m = 0.0;
                        for (int j = 0; j < c.l; j++)
                            m += pes[kv][((size_t)g * c.l + j) * dim + e];
                        size_t at = ((size_t)i * c.G + g) * dim + e;
                        want[at] = ref[kv][at] + m / c.l;
                    }
            expect_close(kv ? "avg + pe: V_cmp shift" : "avg + pe: K_cmp shift",
                         rel_l2_d(got[kv], want, n), EQ_TOL);
            free(want);
        }

        /* the same pe through the linear averaging map: identical phi */
        float *wk = avg_linear(&c, c.dk), *wv = avg_linear(&c, c.dv);
        nsa_phi lk = {NSA_PHI_MLP, 0, pek, wk, NULL, NULL, NULL};
        nsa_phi lv = {NSA_PHI_MLP, 0, pev, wv, NULL, NULL, NULL};
        tl_outputs lo;
        run_phi(ctx, &p, &lk, &lv, o.sel, &lo);
        expect_runs_close("mlp hidden=0 averaging + pe vs avg + pe", &o, &lo);

        /* and a pe constant over j equals the inputs shifted by it */
        if (!varying) {
            tl_problem sh;
            tl_problem_clone(&sh, &p);
            for (int64_t r = 0; r < p.T; r++)
                for (int g = 0; g < c.G; g++) {
                    for (int e = 0; e < c.dk; e++)
                        sh.kc[((size_t)r * c.G + g) * c.dk + e] += pek[(size_t)g * c.l * c.dk + e];
                    for (int e = 0; e < c.dv; e++)
                        sh.vc[((size_t)r * c.G + g) * c.dv + e] += pev[(size_t)g * c.l * c.dv + e];
                }
            tl_outputs so;
            run_phi(ctx, &sh, NULL, NULL, o.sel, &so);
            expect_runs_close("avg + constant pe vs shifted k_cmp/v_cmp", &o, &so);
            tl_outputs_free(&so);
            tl_problem_free(&sh);
        }
        free(wk);
        free(wv);
        tl_outputs_free(&lo);
        tl_outputs_free(&o);
    }
    free(pek);
    free(pev);
    tl_outputs_free(&base);
    tl_problem_free(&p);
    nsa_context_free(ctx);
}

/* Weight layouts (spec 2, nsa.h): each group g picks token j0(g) of the
 * block, plus pe[g][j0] and a bias, through the linear map (hidden = 0:
 * W [G][dim][l*dim], b [G][dim]) and through the SiLU pair (hidden = 2 dim:
 * W1 [G][2dim][l*dim], W2 [G][dim][2dim], b2 [G][dim]). A transposed or
 * mis-strided layout picks another token and fails. */
static void test_phi_mlp_layout(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    nsa_config c = mk(4, 2, 8, 6, 4, 2, 8, 3, 1, 1, 5);
    const int lens[2] = {23, 40};
    tl_problem p;
    tl_problem_make(&p, &c, lens, 2, 0, 55);
    const int dims[2] = {c.dk, c.dv};
    const float *xs[2] = {p.kc, p.vc};
    float *w[2], *b[2], *pe[2], *w1[2], *w2[2];
    for (int kv = 0; kv < 2; kv++) {
        int dim = dims[kv];
        size_t L = (size_t)c.l * dim, hid = 2 * (size_t)dim;
        w[kv] = calloc((size_t)c.G * dim * L, sizeof(float));
        w1[kv] = calloc((size_t)c.G * hid * L, sizeof(float));
        w2[kv] = calloc((size_t)c.G * dim * hid, sizeof(float));
        b[kv] = malloc(sizeof(float) * (size_t)c.G * dim);
        pe[kv] = malloc(sizeof(float) * (size_t)c.G * L);
        assert_true(w[kv] && w1[kv] && w2[kv] && b[kv] && pe[kv]);
        tl_fill(b[kv], (size_t)c.G * dim, 100 + (uint64_t)kv, -1.0f, 1.0f);
        tl_fill(pe[kv], (size_t)c.G * L, 110 + (uint64_t)kv, -1.0f, 1.0f);
        for (int g = 0; g < c.G; g++) {
            int j0 = (2 * g + 1) % c.l;
            for (int e = 0; e < dim; e++) {
                size_t col = (size_t)j0 * dim + e;
                w[kv][((size_t)g * dim + e) * L + col] = 1.0f;
                w1[kv][((size_t)g * hid + e) * L + col] = 1.0f;
                w1[kv][((size_t)g * hid + dim + e) * L + col] = -1.0f;
                w2[kv][((size_t)g * dim + e) * hid + e] = 1.0f;
                w2[kv][((size_t)g * dim + e) * hid + dim + e] = -1.0f;
            }
        }
    }
    for (int form = 0; form < 2; form++) {
        nsa_phi ph[2];
        for (int kv = 0; kv < 2; kv++) {
            nsa_phi lin = {NSA_PHI_MLP, 0, pe[kv], w[kv], b[kv], NULL, NULL};
            nsa_phi mlp = {NSA_PHI_MLP, 2 * dims[kv], pe[kv], w1[kv], NULL, w2[kv], b[kv]};
            ph[kv] = form ? mlp : lin;
        }
        tl_outputs o;
        run_phi(ctx, &p, &ph[0], &ph[1], NULL, &o);
        const float *got[2] = {o.kc, o.vc};
        for (int kv = 0; kv < 2; kv++) {
            int dim = dims[kv];
            size_t n = (size_t)o.C * c.G * dim;
            double *want = malloc(sizeof(double) * n);
            assert_non_null(want);
            int64_t ci = 0;
            for (int s = 0; s < p.B; s++)
                for (int64_t i = 0; i < tl_spec_n_cmp(&c, lens[s] - 1); i++, ci++)
                    for (int g = 0; g < c.G; g++) {
                        int j0 = (2 * g + 1) % c.l;
                        size_t src = ((size_t)(p.cu[s] + i * c.d + j0) * c.G + g) * dim;
                        for (int e = 0; e < dim; e++)
                            want[((size_t)ci * c.G + g) * dim + e] =
                                (double)xs[kv][src + e] +
                                pe[kv][((size_t)g * c.l + j0) * dim + e] + b[kv][g * dim + e];
                    }
            assert_int_equal(ci, o.C);
            expect_close(form ? (kv ? "mlp layout, V" : "mlp layout, K")
                              : (kv ? "linear layout, V" : "linear layout, K"),
                         rel_l2_d(got[kv], want, n), EQ_TOL);
            free(want);
        }
        tl_outputs_free(&o);
    }
    for (int kv = 0; kv < 2; kv++) {
        free(w[kv]);
        free(w1[kv]);
        free(w2[kv]);
        free(b[kv]);
        free(pe[kv]);
    }
    tl_problem_free(&p);
    nsa_context_free(ctx);
}

/* ------------------------------------------------------- bit-exact ones */
/* Sequence b of p as a problem of its own (fresh copies). */
static void slice(tl_problem *d, const tl_problem *s, int b)
{
    const nsa_config *c = &s->cfg;
    int len = s->cu[b + 1] - s->cu[b];
    tl_problem_make(d, c, &len, 1, s->shared_kv, 1); /* shapes; data replaced */
    size_t r0 = (size_t)s->cu[b], n = (size_t)len, H = (size_t)c->H, G = (size_t)c->G;
    memcpy(d->q, s->q + r0 * H * c->dk, sizeof(float) * n * H * c->dk);
    memcpy(d->kc, s->kc + r0 * G * c->dk, sizeof(float) * n * G * c->dk);
    memcpy(d->vc, s->vc + r0 * G * c->dv, sizeof(float) * n * G * c->dv);
    if (!s->shared_kv) {
        memcpy(d->ks, s->ks + r0 * G * c->dk, sizeof(float) * n * G * c->dk);
        memcpy(d->vs, s->vs + r0 * G * c->dv, sizeof(float) * n * G * c->dv);
        memcpy(d->kw, s->kw + r0 * G * c->dk, sizeof(float) * n * G * c->dk);
        memcpy(d->vw, s->vw + r0 * G * c->dv, sizeof(float) * n * G * c->dv);
    }
    memcpy(d->gates, s->gates + r0 * H * 3, sizeof(float) * n * H * 3);
}

static void test_varlen_equals_alone(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    for (int m = 0; m < 2; m++) {
        nsa_config c = mk(4, 2, 16, 8, 8, 4, 16, 3, 1, 1, 9);
        c.mapping = m ? NSA_MAPPING_PAPER : NSA_MAPPING_OVERLAP;
        const int lens[5] = {1, 17, 64, 100, 7};
        tl_problem p;
        tl_problem_make(&p, &c, lens, 5, m, 80 + (uint64_t)m);
        tl_outputs all;
        tl_outputs_alloc(&all, &p);
        tl_forward_plain(ctx, &p, NULL, &all);
        int64_t coff = 0;
        for (int b = 0; b < 5; b++) {
            tl_problem s;
            slice(&s, &p, b);
            tl_outputs one;
            tl_outputs_alloc(&one, &s);
            tl_forward_plain(ctx, &s, NULL, &one);
            size_t r0 = (size_t)p.cu[b], n = (size_t)lens[b];
            size_t wo = (size_t)c.H * c.dv;
            assert_memory_equal(one.out, all.out + r0 * wo, sizeof(float) * n * wo);
            assert_memory_equal(one.out_cmp, all.out_cmp + r0 * wo, sizeof(float) * n * wo);
            assert_memory_equal(one.out_slc, all.out_slc + r0 * wo, sizeof(float) * n * wo);
            assert_memory_equal(one.out_win, all.out_win + r0 * wo, sizeof(float) * n * wo);
            assert_memory_equal(one.sel, all.sel + r0 * c.G * c.n,
                                sizeof(int32_t) * n * c.G * c.n);
            assert_memory_equal(one.kc, all.kc + (size_t)coff * c.G * c.dk,
                                sizeof(float) * (size_t)one.C * c.G * c.dk);
            assert_memory_equal(one.vc, all.vc + (size_t)coff * c.G * c.dv,
                                sizeof(float) * (size_t)one.C * c.G * c.dv);
            coff += one.C;
            tl_outputs_free(&one);
            tl_problem_free(&s);
        }
        assert_int_equal(coff, all.C);
        tl_outputs_free(&all);
        tl_problem_free(&p);
    }
    nsa_context_free(ctx);
}

static void test_shared_kv_equals_copies(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    nsa_config c = mk(6, 3, 8, 12, 8, 4, 16, 3, 1, 1, 9);
    const int lens[2] = {70, 45};
    tl_problem sh, ind;
    tl_problem_make(&sh, &c, lens, 2, 1, 90);
    assert_ptr_equal(sh.ks, sh.kc);
    tl_problem_make(&ind, &c, lens, 2, 0, 91);
    size_t nk = (size_t)sh.T * c.G * c.dk, nv = (size_t)sh.T * c.G * c.dv;
    memcpy(ind.q, sh.q, sizeof(float) * (size_t)sh.T * c.H * c.dk);
    memcpy(ind.gates, sh.gates, sizeof(float) * (size_t)sh.T * c.H * 3);
    float *kd[3] = {ind.kc, ind.ks, ind.kw}, *vd[3] = {ind.vc, ind.vs, ind.vw};
    for (int k = 0; k < 3; k++) {
        memcpy(kd[k], sh.kc, sizeof(float) * nk);
        memcpy(vd[k], sh.vc, sizeof(float) * nv);
    }
    tl_outputs a, b;
    tl_outputs_alloc(&a, &sh);
    tl_outputs_alloc(&b, &ind);
    tl_forward_plain(ctx, &sh, NULL, &a);
    tl_forward_plain(ctx, &ind, NULL, &b);
    size_t no = (size_t)sh.T * c.H * c.dv;
    assert_memory_equal(a.out, b.out, sizeof(float) * no);
    assert_memory_equal(a.out_cmp, b.out_cmp, sizeof(float) * no);
    assert_memory_equal(a.out_slc, b.out_slc, sizeof(float) * no);
    assert_memory_equal(a.out_win, b.out_win, sizeof(float) * no);
    assert_memory_equal(a.sel, b.sel, sizeof(int32_t) * (size_t)sh.T * c.G * c.n);
    assert_memory_equal(a.kc, b.kc, sizeof(float) * (size_t)a.C * c.G * c.dk);
    tl_outputs_free(&a);
    tl_outputs_free(&b);
    tl_problem_free(&sh);
    tl_problem_free(&ind);
    nsa_context_free(ctx);
}

int main(void)
{
    if (tl_skip_half_storage(tl_backend_name()))
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sliding_full_window_is_dense),
        cmocka_unit_test(test_sliding_window_is_banded),
        cmocka_unit_test(test_selected_all_blocks_is_dense),
        cmocka_unit_test(test_compressed_l1_is_dense),
        cmocka_unit_test(test_phi_linear_and_mlp_as_avg),
        cmocka_unit_test(test_phi_pe_shift),
        cmocka_unit_test(test_phi_mlp_layout),
        cmocka_unit_test(test_varlen_equals_alone),
        cmocka_unit_test(test_shared_kv_equals_copies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
