/* The operator (spec 2-5) against an oracle written here from the spec's
 * text alone, in double, sharing no code with the library (not even its
 * block math), on random valid configurations on and off the grid:
 * l' = d, l' < l, l = d < l', both mappings, n_init and n_local from 0 to 3,
 * n = n_init + n_local, tiny and odd head dims, w = 1 or past the sequence,
 * one-token sequences, shared or independent KV, avg and mlp phi. The
 * cross-check suites compare backends with the reference, so an error in
 * code they share (lib/blockmath.c) would pass there; it fails here.
 *
 * Backend: NSA_TEST_BACKEND (default ref). NSA_ORACLE_CASES sets the count
 * of random cases (default 12), NSA_ORACLE_SEED the first case's number
 * minus one (default 0). */
#include "testlib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL_L2_MAX 1e-5 /* spec 9: relative L2 error of every output */
#define TIE_REL 1e-5    /* spec 9: swapped blocks' scores differ by less */

enum { MAXB = 4 };

typedef struct ocase {
    nsa_config c;
    int B, lens[MAXB];
    int shared_kv, phi_kind, phi_hidden, phi_pe;
    uint64_t seed;
} ocase;


static uint64_t pick(nsa_rng *r, uint64_t n) { return nsa_rng_next(r) % n; }

static void make_case(ocase *k, uint64_t seed)
{
    static const int lds[13][3] = {{32, 16, 64}, {16, 8, 32}, {64, 64, 64}, {32, 32, 64},
                                   {32, 32, 32}, {16, 16, 16}, {32, 16, 16}, {64, 16, 32},
                                   {8, 8, 64},   {16, 4, 8},   {48, 16, 32}, {24, 8, 40},
                                   {4, 2, 6}};
    static const int dims[6] = {1, 3, 8, 17, 32, 64}, ws[5] = {1, 2, 9, 40, 5000};
    nsa_rng r = {seed * 0x9E3779B97F4A7C15ull + 17};
    memset(k, 0, sizeof *k);
    nsa_config c = nsa_config_default();
    const int *ld = lds[pick(&r, 13)];
    c.l = ld[0];
    c.d = ld[1];
    c.l_sel = ld[2];
    c.G = 1 + (int)pick(&r, 3);
    c.H = c.G * (1 + (int)pick(&r, 4));
    c.dk = dims[pick(&r, 6)];
    c.dv = dims[pick(&r, 6)];
    c.w = ws[pick(&r, 5)];
    c.n_init = (int)pick(&r, 4);
    c.n_local = (int)pick(&r, 4);
    c.n = c.n_init + c.n_local + (int)pick(&r, 3);
    if (c.n < 1)
        c.n = 1;
    c.mapping = pick(&r, 2) ? NSA_MAPPING_PAPER : NSA_MAPPING_OVERLAP;
    if (pick(&r, 4) == 0)
        c.scale = 0.3f;
    k->c = c;
    k->B = 1 + (int)pick(&r, MAXB);
    for (int b = 0; b < k->B; b++) {
        const int kind = (int)pick(&r, 4);
        k->lens[b] = kind == 0 ? 1 : 1 + (int)pick(&r, (uint64_t)c.l_sel * (c.n + 3) + c.l);
    }
    k->shared_kv = (int)pick(&r, 2);
    k->phi_kind = (int)pick(&r, 2);
    k->phi_hidden = k->phi_kind && pick(&r, 2) ? 1 + (int)pick(&r, 9) : 0;
    k->phi_pe = (int)pick(&r, 2);
    k->seed = seed * 1000 + 3;
}


/* ------------------------------------------------------------- oracle */
/* Spec 2: phi of the l rows x[0..l-1] (row stride G*dim, group g). */
static void o_phi(const ocase *k, const tl_phi *p, int dim, const float *x, int g, double *out)
{
    const int l = k->c.l, G = k->c.G;
    double *z = malloc(sizeof(double) * (size_t)l * dim);
    for (int j = 0; j < l; j++)
        for (int e = 0; e < dim; e++)
            z[(size_t)j * dim + e] = (double)x[((size_t)j * G + g) * dim + e] +
                                     (p->pe ? p->pe[((size_t)g * l + j) * dim + e] : 0.0);
    if (!k->phi_kind) {
        for (int e = 0; e < dim; e++) {
            double s = 0.0;
            for (int j = 0; j < l; j++)
                s += z[(size_t)j * dim + e];
            out[e] = s / l;
        }
    } else {
        const size_t L = (size_t)l * dim;
        const int h1 = k->phi_hidden ? k->phi_hidden : dim;
        double *h = malloc(sizeof(double) * h1);
        for (int o = 0; o < h1; o++) {
            double s = p->b1[(size_t)g * h1 + o];
            for (size_t i = 0; i < L; i++)
                s += (double)p->w1[((size_t)g * h1 + o) * L + i] * z[i];
            h[o] = k->phi_hidden ? s / (1.0 + exp(-s)) : s; /* SiLU between the two */
        }
        if (!k->phi_hidden)
            memcpy(out, h, sizeof(double) * dim);
        else
            for (int e = 0; e < dim; e++) {
                double s = p->b2[(size_t)g * dim + e];
                for (int o = 0; o < h1; o++)
                    s += (double)p->w2[((size_t)g * dim + e) * h1 + o] * h[o];
                out[e] = s;
            }
        free(h);
    }
    free(z);
}

/* Spec 3: M[j][i] for either mapping. */
static int o_map(const nsa_config *c, int j, int i)
{
    if (c->mapping == NSA_MAPPING_OVERLAP) {
        const long a0 = (long)i * c->d, a1 = a0 + c->l, b0 = (long)j * c->l_sel,
                   b1 = b0 + c->l_sel;
        const long lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
        return hi > lo ? (int)((hi - lo) / c->d) : 0;
    }
    int cnt = 0;
    for (int m = 0; m < c->l_sel / c->d; m++)
        for (int n = 0; n < c->l / c->d; n++)
            cnt += i == (c->l_sel / c->d) * j - m - n;
    return cnt;
}

/* softmax attention of q over key rows idx[0..m-1] of one sequence */
static void o_attend(const ocase *k, const float *q, const float *K, const float *V, int g,
                     const long *idx, long m, double *out)
{
    const nsa_config *c = &k->c;
    const double scale = c->scale > 0.0f ? c->scale : 1.0 / sqrt((double)c->dk);
    for (int e = 0; e < c->dv; e++)
        out[e] = 0.0;
    if (m == 0)
        return;
    double *s = malloc(sizeof(double) * m), mx = -INFINITY, sum = 0.0;
    for (long u = 0; u < m; u++) {
        double d = 0.0;
        for (int e = 0; e < c->dk; e++)
            d += (double)q[e] * K[((size_t)idx[u] * c->G + g) * c->dk + e];
        s[u] = d * scale;
        mx = s[u] > mx ? s[u] : mx;
    }
    for (long u = 0; u < m; u++)
        sum += s[u] = exp(s[u] - mx);
    for (long u = 0; u < m; u++)
        for (int e = 0; e < c->dv; e++)
            out[e] += s[u] / sum * V[((size_t)idx[u] * c->G + g) * c->dv + e];
    free(s);
}

typedef struct oracle {
    double *out, *cmp, *slc, *win, *kc, *vc; /* like the operator's outputs */
    double *score;                           /* [T][G][max visible] s(t,g)[j] */
    int32_t *sel;                            /* [T][G][n] */
    int maxvis;
} oracle;

static void o_run(const ocase *k, const tl_problem *p, const tl_phi *pk, const tl_phi *pv,
                  const int32_t *sel_in, oracle *o)
{
    const nsa_config *c = &k->c;
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv, n = c->n;
    const size_t T = (size_t)p->T;
    int maxlen = 0;
    for (int b = 0; b < k->B; b++)
        maxlen = k->lens[b] > maxlen ? k->lens[b] : maxlen;
    o->maxvis = (maxlen - 1) / c->l_sel + 1;
    o->out = calloc(T * H * dv, sizeof(double));
    o->cmp = calloc(T * H * dv, sizeof(double));
    o->slc = calloc(T * H * dv, sizeof(double));
    o->win = calloc(T * H * dv, sizeof(double));
    o->score = calloc(T * G * o->maxvis, sizeof(double));
    o->sel = malloc(sizeof(int32_t) * T * G * n);
    const int64_t C = nsa_op_cmp_count(c, p->cu, p->B, p->T);
    o->kc = calloc((size_t)(C ? C : 1) * G * dk, sizeof(double));
    o->vc = calloc((size_t)(C ? C : 1) * G * dv, sizeof(double));
    long *idx = malloc(sizeof(long) * (2 * (size_t)maxlen + 2)); /* selected + window */
    double *pc = malloc(sizeof(double) * (maxlen + 1));
    int64_t coff = 0;
    for (int b = 0; b < k->B; b++) {
        const long S = k->lens[b], r0 = p->cu[b];
        const long nc_all = S >= c->l ? (S - c->l) / c->d + 1 : 0; /* spec 2 */
        double *KC = o->kc + (size_t)coff * G * dk, *VC = o->vc + (size_t)coff * G * dv;
        for (long i = 0; i < nc_all; i++)
            for (int g = 0; g < G; g++) {
                o_phi(k, pk, dk, p->kc + ((size_t)(r0 + i * c->d) * G) * dk, g,
                      KC + ((size_t)i * G + g) * dk);
                o_phi(k, pv, dv, p->vc + ((size_t)(r0 + i * c->d) * G) * dv, g,
                      VC + ((size_t)i * G + g) * dv);
            }
        for (long t = 0; t < S; t++) {
            const size_t row = (size_t)(r0 + t);
            const long nc = t + 1 >= c->l ? (t + 1 - c->l) / c->d + 1 : 0;
            const int vis = (int)(t / c->l_sel) + 1;
            for (int g = 0; g < G; g++) {
                double *s = o->score + (row * G + g) * o->maxvis;
                /* compressed branch and the group's block scores (Eq. 7-10) */
                for (int h = g * hpg; h < (g + 1) * hpg; h++) {
                    const float *q = p->q + (row * H + h) * dk;
                    const double scale = c->scale > 0.0f ? c->scale : 1.0 / sqrt((double)dk);
                    double mx = -INFINITY, sum = 0.0;
                    for (long i = 0; i < nc; i++) {
                        double d = 0.0;
                        for (int e = 0; e < dk; e++)
                            d += (double)q[e] * KC[((size_t)i * G + g) * dk + e];
                        pc[i] = d * scale;
                        mx = pc[i] > mx ? pc[i] : mx;
                    }
                    for (long i = 0; i < nc; i++)
                        sum += pc[i] = exp(pc[i] - mx);
                    double *oc = o->cmp + (row * H + h) * dv;
                    for (long i = 0; i < nc; i++) {
                        pc[i] /= sum;
                        for (int e = 0; e < dv; e++)
                            oc[e] += pc[i] * VC[((size_t)i * G + g) * dv + e];
                    }
                    for (int j = 0; j < vis; j++)
                        for (long i = 0; i < nc; i++)
                            s[j] += o_map(c, j, (int)i) * pc[i];
                }
                /* selection (Eq. 11) */
                int32_t *sel = o->sel + (row * G + g) * n;
                if (sel_in) {
                    memcpy(sel, sel_in + (row * G + g) * n, sizeof(int32_t) * n);
                } else {
                    char *chosen = calloc(vis, 1);
                    int m = 0;
                    if (vis <= n) {
                        for (int j = 0; j < vis; j++)
                            chosen[j] = 1;
                        m = vis;
                    } else {
                        for (int j = 0; j < c->n_init && j < vis; j++)
                            m += !chosen[j], chosen[j] = 1;
                        for (int j = vis - 1; j >= 0 && j > vis - 1 - c->n_local; j--)
                            m += !chosen[j], chosen[j] = 1;
                        while (m < n) {
                            int best = -1;
                            for (int j = 0; j < vis; j++)
                                if (!chosen[j] && (best < 0 || s[j] > s[best]))
                                    best = j; /* strict: ties keep the smaller j */
                            chosen[best] = 1;
                            m++;
                        }
                    }
                    int u = 0;
                    for (int j = 0; j < vis; j++)
                        if (chosen[j])
                            sel[u++] = j;
                    while (u < n)
                        sel[u++] = -1;
                    free(chosen);
                }
                /* selected and sliding branches, gated output (spec 3-5) */
                long m = 0;
                for (int u = 0; u < n; u++)
                    if (sel[u] >= 0)
                        for (long q = (long)sel[u] * c->l_sel;
                             q < (long)(sel[u] + 1) * c->l_sel && q <= t; q++)
                            idx[m++] = q;
                long mw = 0;
                for (long q = t - c->w + 1 > 0 ? t - c->w + 1 : 0; q <= t; q++)
                    idx[m + mw++] = q;
                const float *Ks = p->ks + (size_t)r0 * G * dk, *Vs = p->vs + (size_t)r0 * G * dv;
                const float *Kw = p->kw + (size_t)r0 * G * dk, *Vw = p->vw + (size_t)r0 * G * dv;
                for (int h = g * hpg; h < (g + 1) * hpg; h++) {
                    const float *q = p->q + (row * H + h) * dk;
                    o_attend(k, q, Ks, Vs, g, idx, m, o->slc + (row * H + h) * dv);
                    o_attend(k, q, Kw, Vw, g, idx + m, mw, o->win + (row * H + h) * dv);
                    const float *gt = p->gates + (row * H + h) * 3;
                    for (int e = 0; e < dv; e++) {
                        const size_t at = (row * H + h) * dv + e;
                        o->out[at] = gt[0] * o->cmp[at] + gt[1] * o->slc[at] + gt[2] * o->win[at];
                    }
                }
            }
        }
        coff += nc_all;
    }
    free(idx);
    free(pc);
}

static void o_free(oracle *o)
{
    free(o->out);
    free(o->cmp);
    free(o->slc);
    free(o->win);
    free(o->kc);
    free(o->vc);
    free(o->score);
    free(o->sel);
}

static double rel_l2_d(const float *got, const double *want, size_t n)
{
    double e = 0.0, r = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]))
            return INFINITY;
        e += (got[i] - want[i]) * (got[i] - want[i]);
        r += want[i] * want[i];
    }
    return r > 0.0 ? sqrt(e / r) : sqrt(e);
}

static void expect_close(const char *label, const char *what, const float *got,
                         const double *want, size_t n)
{
    if (n == 0)
        return;
    const double e = rel_l2_d(got, want, n);
    /* spec 9: relative L2 <= 1e-5 (an all-zero reference: absolute) */
    if (!(e <= REL_L2_MAX))
        fail_msg("%s: %s rel L2 %.3g > %.0e against the spec oracle", label, what, e,
                 REL_L2_MAX);
}

static void run_case(const ocase *k, const char *label)
{
    const nsa_config *c = &k->c;
    tl_problem p;
    tl_problem_make(&p, c, k->lens, k->B, k->shared_kv, k->seed);
    tl_phi pk, pv;
    tl_phi_make(&pk, c, c->dk, k->phi_kind, k->phi_hidden, k->phi_pe, k->seed + 10);
    tl_phi_make(&pv, c, c->dv, k->phi_kind, k->phi_hidden, k->phi_pe, k->seed + 20);
    oracle o;
    o_run(k, &p, &pk, &pv, NULL, &o);
    nsa_context *ctx = tl_context();
    const int64_t C = nsa_op_cmp_count(c, p.cu, p.B, p.T);
    const size_t T = (size_t)p.T, ov = T * c->H * c->dv;
    float *out = tl_poisoned(ov), *oc = tl_poisoned(ov), *os = tl_poisoned(ov),
          *ow = tl_poisoned(ov);
    float *kc = tl_poisoned((size_t)(C ? C : 1) * c->G * c->dk);
    float *vc = tl_poisoned((size_t)(C ? C : 1) * c->G * c->dv);
    int32_t *sel = tl_poisoned_i32(T * c->G * c->n);
    nsa_op_args a = tl_problem_args(&p);
    a.phi_k = &pk.phi;
    a.phi_v = &pv.phi;
    a.out = out;
    a.out_cmp = oc;
    a.out_slc = os;
    a.out_win = ow;
    a.selection_out = sel;
    a.k_cmp_out = kc;
    a.v_cmp_out = vc;
    if (nsa_attention_forward(ctx, c, &a) != NSA_OK)
        fail_msg("%s: forward: %s", label, nsa_context_last_error(ctx));
    expect_close(label, "k_cmp_out", kc, o.kc, (size_t)C * c->G * c->dk);
    expect_close(label, "v_cmp_out", vc, o.vc, (size_t)C * c->G * c->dv);
    expect_close(label, "out_cmp", oc, o.cmp, ov);
    /* selection: the oracle's, except blocks whose scores tie within 1e-5 */
    int differ = 0;
    for (size_t r = 0; r < T * c->G; r++) {
        const int32_t *gs = sel + r * c->n, *ws = o.sel + r * c->n;
        if (!memcmp(gs, ws, sizeof(int32_t) * c->n))
            continue;
        const double *s = o.score + r * o.maxvis;
        for (int u = 0; u < c->n; u++) {
            int in = 0;
            for (int v = 0; v < c->n; v++)
                in |= gs[u] == ws[v];
            if (in)
                continue;
            if (gs[u] < 0 || gs[u] >= o.maxvis)
                fail_msg("%s: row %zu (token, group) selection[%d] = %d, oracle has %d", label,
                         r, u, gs[u], ws[u]);
            for (int v = 0; v < c->n; v++) {
                int in2 = 0;
                for (int x = 0; x < c->n; x++)
                    in2 |= ws[v] == gs[x];
                if (in2 || ws[v] < 0)
                    continue;
                const double d = fabs(s[gs[u]] - s[ws[v]]);
                if (d > TIE_REL * fmax(fabs(s[gs[u]]), fabs(s[ws[v]])))
                    fail_msg("%s: row %zu (token, group) selects block %d (score %.9g), the "
                             "spec block %d (score %.9g)",
                             label, r, gs[u], s[gs[u]], ws[v], s[ws[v]]);
            }
        }
        differ++;
    }
    /* outputs after the selection, on the oracle's blocks (spec 9) */
    oracle o2;
    o_run(k, &p, &pk, &pv, o.sel, &o2);
    for (size_t i = 0; i < ov; i++)
        out[i] = os[i] = ow[i] = NAN;
    a.selection_in = o.sel;
    if (nsa_attention_forward(ctx, c, &a) != NSA_OK)
        fail_msg("%s: forward with selection_in: %s", label, nsa_context_last_error(ctx));
    expect_close(label, "out_slc", os, o2.slc, ov);
    expect_close(label, "out_win", ow, o2.win, ov);
    expect_close(label, "out", out, o2.out, ov);
    if (differ)
        print_message("%s: %d near-tie selection rows (allowed by spec 9)\n", label, differ);
    o_free(&o);
    o_free(&o2);
    free(out);
    free(oc);
    free(os);
    free(ow);
    free(kc);
    free(vc);
    free(sel);
    tl_phi_free(&pk);
    tl_phi_free(&pv);
    tl_problem_free(&p);
    nsa_context_free(ctx);
}

static void test_random_against_spec(void **state)
{
    (void)state;
    const long n = tl_env_long("NSA_ORACLE_CASES", tl_under_valgrind() ? 2 : 12);
    const long first = tl_env_long("NSA_ORACLE_SEED", 0);
    for (long i = first; i < first + n; i++) {
        ocase k;
        make_case(&k, (uint64_t)i + 1);
        const nsa_config *c = &k.c;
        char label[320];
        snprintf(label, sizeof label,
                 "oracle case %ld: l=%d d=%d l'=%d G=%d H=%d dk=%d dv=%d w=%d n=%d(%d+%d) "
                 "map=%d scale=%g B=%d lens=%d,%d,%d,%d shared=%d phi=%d/%d pe=%d",
                 i + 1, c->l, c->d, c->l_sel, c->G, c->H, c->dk, c->dv, c->w, c->n, c->n_init,
                 c->n_local, c->mapping, (double)c->scale, k.B, k.lens[0],
                 k.B > 1 ? k.lens[1] : 0, k.B > 2 ? k.lens[2] : 0, k.B > 3 ? k.lens[3] : 0,
                 k.shared_kv, k.phi_kind, k.phi_hidden, k.phi_pe);
        run_case(&k, label);
    }
}

int main(void)
{
    if (tl_skip_half_storage(tl_backend_name()))
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_against_spec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
