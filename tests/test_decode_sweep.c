/* Decode (spec 7) on random layer configurations: the configuration grid of
 * test_crosscheck (block shapes, GQA, head dims, w, n, KV modes, phi kinds)
 * plus the layer's options (RoPE width and placement, gate kinds), several
 * sequences of different prompt lengths (0, shorter than l, past n blocks)
 * stepped together. Per step, on the backend under test (NSA_TEST_BACKEND,
 * default ref) and on the reference: decode output = the reference's
 * prefill output at that position, the counters = their definitions from
 * the step's selection; at the end the emitted compressed tokens = the
 * backend's prefill's, bit for bit.
 *
 * NSA_DECODE_SWEEP_CASES sets the count of cases, NSA_DECODE_SWEEP_SEED the
 * first case's number minus one (default 0): runs with different offsets
 * cover disjoint case sets; NSA_DECODE_SWEEP_WIDE=1 draws off the grid. */
#include "testlib.h"
#include "decode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL_L2_MAX 1e-5 /* spec 9 (and spec 7: decode = prefill within it) */

enum { MAXB = 3 };

typedef struct dcase {
    nsa_layer_config c;
    int B, S[MAXB]; /* final length of each sequence */
    int steps;      /* steps after the prompts (prompt = S - steps) */
    int max_len;    /* 0 or the longest S */
    int prefill_y;  /* 1: the prompt's prefill computes its outputs */
    uint64_t seed;
} dcase;

static uint64_t pick(nsa_rng *r, uint64_t n) { return nsa_rng_next(r) % n; }

/* Reference work of a case in multiply-adds: prefill + decode of every
 * token (attention and projections), to keep make check short. */
static double cost(const dcase *k)
{
    const nsa_config *a = &k->c.attn;
    double w = 0.0;
    for (int b = 0; b < k->B; b++) {
        const double S = k->S[b];
        const double keys = S / (2.0 * a->d) + fmin((double)a->n * a->l_sel, S / 2) +
                            fmin((double)a->w, S / 2);
        w += 2.0 * S * a->H * keys * (a->dk + a->dv);
        w += 2.0 * S * k->c.D * ((double)a->H * (a->dk + a->dv) + 3.0 * a->G * (a->dk + a->dv));
    }
    return w;
}

/* wide = 1 (NSA_DECODE_SWEEP_WIDE=1): configurations off the grid,
 * valid by spec 1 and 10: l' = d or l' < l, l = d < l', tiny and odd head
 * dims, n = n_init + n_local, n_local = 0, H = 64 with G = 1, w longer
 * than every sequence, a scale given. */
static void make_case(dcase *k, uint64_t seed, int wide)
{
    static const int lds[12][3] = {{32, 16, 64}, {16, 8, 32}, {64, 64, 64}, {32, 32, 64},
                                   {32, 32, 32}, {16, 16, 16}, {32, 16, 16}, {64, 16, 32},
                                   {8, 8, 64},   {16, 4, 8},   {48, 16, 32}, {24, 8, 40}};
    static const int Gs[4] = {1, 2, 4, 3}, hpgs[5] = {1, 4, 16, 2, 64};
    static const int dims[8] = {32, 64, 128, 192, 2, 8, 20, 130};
    static const int ws[5] = {1, 17, 64, 200, 5000};
    nsa_rng r = {seed * 0x9E3779B97F4A7C15ull + 3 + (uint64_t)wide};
    memset(k, 0, sizeof *k);
    nsa_layer_config c = nsa_layer_config_default();
    const int *ld = lds[pick(&r, wide ? 12 : 4)];
    c.attn.l = ld[0];
    c.attn.d = ld[1];
    c.attn.l_sel = ld[2];
    const int hpg = hpgs[pick(&r, wide ? 5 : 3)];
    c.attn.G = hpg == 64 ? 1 : Gs[pick(&r, wide ? 4 : 3)];
    c.attn.H = c.attn.G * hpg;
    c.attn.dk = dims[pick(&r, wide ? 8 : 4)];
    c.attn.dv = dims[pick(&r, wide ? 8 : 4)];
    c.attn.w = ws[pick(&r, wide ? 5 : 4)];
    c.attn.n_init = (int)pick(&r, wide ? 4 : 2);
    c.attn.n_local = wide ? (int)pick(&r, 4) : 1 + (int)pick(&r, 2);
    c.attn.n = c.attn.n_init + c.attn.n_local + (int)pick(&r, wide ? 3 : 5);
    if (c.attn.n < 1)
        c.attn.n = 1;
    c.attn.mapping = pick(&r, 4) == 0 ? NSA_MAPPING_PAPER : NSA_MAPPING_OVERLAP;
    if (wide && pick(&r, 4) == 0)
        c.attn.scale = 0.3f;
    c.D = 16 + 8 * (int)pick(&r, 3);
    c.shared_kv = (int)pick(&r, 2);
    c.phi = pick(&r, 2) ? NSA_PHI_MLP : NSA_PHI_AVG;
    c.phi_hidden = c.phi == NSA_PHI_MLP && pick(&r, 2) ? 16 : 0;
    c.phi_pe = (int)pick(&r, 2);
    const int rd = (int)pick(&r, 3); /* all of dk, part of it, none */
    c.rope_dim = rd == 0 ? c.attn.dk : rd == 1 ? 2 * (1 + (int)pick(&r, (uint64_t)c.attn.dk / 2)) : 0;
    c.rope_cmp = pick(&r, 2) ? NSA_ROPE_AFTER : NSA_ROPE_BEFORE;
    c.gate_act = pick(&r, 2) ? NSA_GATE_SIGMOID : NSA_GATE_SOFTMAX;
    c.gate_hidden = pick(&r, 2) ? 8 : 0;
    c.gate_tau = pick(&r, 2) ? 1.0f : 0.5f;
    k->c = c;
    k->B = 1 + (int)pick(&r, MAXB);
    /* final lengths around the point where the visible blocks reach n,
     * one in four shorter than l (no compressed token at all) */
    for (int b = 0; b < k->B; b++) {
        if (pick(&r, 4) == 0)
            k->S[b] = 1 + (int)pick(&r, (uint64_t)c.attn.l);
        else {
            const int blocks = c.attn.n - 2 + (int)pick(&r, 5);
            k->S[b] = 1 + (blocks > 0 ? blocks : 0) * c.attn.l_sel + (int)pick(&r, (uint64_t)c.attn.l_sel);
        }
    }
    /* halve long sequences until the reference stays quick */
    while (cost(k) > 2e8)
        for (int b = 0; b < k->B; b++)
            k->S[b] = k->S[b] > 1 ? k->S[b] / 2 + 1 : 1;
    int smin = k->S[0], smax = k->S[0];
    for (int b = 1; b < k->B; b++) {
        smin = k->S[b] < smin ? k->S[b] : smin;
        smax = k->S[b] > smax ? k->S[b] : smax;
    }
    /* every step appends to every sequence: at most the shortest's length,
     * often all of it (a prompt of 0) */
    k->steps = pick(&r, 3) == 0 ? smin : 1 + (int)pick(&r, (uint64_t)smin);
    k->max_len = pick(&r, 2) ? smax : 0;
    k->prefill_y = (int)pick(&r, 2);
    k->seed = seed * 1000 + 11;
}

/* The tokens read by a step at t (spec 7's slc counter) from its selection. */
static int64_t slc_tokens(const nsa_config *a, const int32_t *sel, int64_t t)
{
    int64_t s = 0;
    for (int k = 0; k < a->n; k++) {
        if (sel[k] < 0)
            continue;
        const int64_t lo = (int64_t)sel[k] * a->l_sel, hi = lo + a->l_sel - 1;
        s += (hi < t ? hi : t) - lo + 1;
    }
    return s;
}

static void expect_close(const char *label, const char *what, const float *got, const float *want,
                         size_t n)
{
    const double e = tl_rel_l2(got, want, n); /* INFINITY on any NaN */
    /* spec 9: relative L2 <= 1e-5; spec 7: decode = prefill within it */
    if (!(e <= REL_L2_MAX))
        fail_msg("%s: %s rel L2 %.3g > %.0e (spec 7, 9)", label, what, e, REL_L2_MAX);
}

static void run_case(const dcase *k, const char *label)
{
    const nsa_layer_config *c = &k->c;
    const nsa_config *a = &c->attn;
    const size_t D = (size_t)c->D;
    nsa_context *ctx = tl_context(), *rctx;
    assert_int_equal(nsa_context_create("ref", &rctx, NULL, 0), NSA_OK);
    const int same = strcmp(nsa_context_backend(ctx), "ref") == 0;
    nsa_layer *L, *R;
    char msg[256];
    if (nsa_layer_config_validate(c, msg, sizeof msg) != NSA_OK)
        fail_msg("%s: invalid config: %s", label, msg);
    assert_int_equal(nsa_layer_create(ctx, c, &L), NSA_OK);
    assert_int_equal(nsa_layer_create(rctx, c, &R), NSA_OK);
    assert_int_equal(nsa_layer_init_random(L, k->seed), NSA_OK);
    assert_int_equal(nsa_layer_init_random(R, k->seed), NSA_OK);

    /* the reference prefill of every whole sequence: ground truth */
    float *x[MAXB], *yref[MAXB];
    for (int b = 0; b < k->B; b++) {
        x[b] = malloc(sizeof(float) * k->S[b] * D);
        tl_fill(x[b], (size_t)k->S[b] * D, k->seed + b, -1, 1);
        yref[b] = tl_poisoned((size_t)k->S[b] * D);
        if (nsa_layer_forward(R, x[b], k->S[b], NULL, 1, yref[b], NULL) != NSA_OK)
            fail_msg("%s: ref forward: %s", label, nsa_context_last_error(rctx));
    }
    nsa_decode_state *sl, *sr;
    if (nsa_decode_create(L, k->B, k->max_len, &sl) != NSA_OK)
        fail_msg("%s: decode_create: %s", label, nsa_context_last_error(ctx));
    assert_int_equal(nsa_decode_create(R, k->B, k->max_len, &sr), NSA_OK);
    for (int b = 0; b < k->B; b++) {
        const int P = k->S[b] - k->steps;
        if (P == 0)
            continue;
        float *yp = k->prefill_y ? tl_poisoned((size_t)P * D) : NULL;
        if (nsa_decode_prefill(sl, b, x[b], P, yp) != NSA_OK)
            fail_msg("%s: decode_prefill: %s", label, nsa_context_last_error(ctx));
        assert_int_equal(nsa_decode_prefill(sr, b, x[b], P, NULL), NSA_OK);
        if (yp) {
            char what[64];
            snprintf(what, sizeof what, "prompt prefill of seq %d (%d tokens)", b, P);
            expect_close(label, what, yp, yref[b], (size_t)P * D);
            free(yp);
        }
    }
    float *xt = malloc(sizeof(float) * k->B * D);
    float *yl = tl_poisoned(k->B * D), *yr = tl_poisoned(k->B * D);
    int32_t *sel = tl_poisoned_i32((size_t)k->B * a->G * a->n);
    nsa_layer_aux aux;
    memset(&aux, 0, sizeof aux);
    aux.selection = sel;
    for (int s = 0; s < k->steps; s++) {
        for (int b = 0; b < k->B; b++)
            memcpy(xt + b * D, x[b] + (size_t)(k->S[b] - k->steps + s) * D, sizeof(float) * D);
        for (size_t i = 0; i < k->B * D; i++)
            yl[i] = yr[i] = NAN;
        if (nsa_decode_step(L, sl, xt, yl, &aux) != NSA_OK)
            fail_msg("%s: step %d: %s", label, s, nsa_context_last_error(ctx));
        if (!same && nsa_decode_step(R, sr, xt, yr, NULL) != NSA_OK)
            fail_msg("%s: ref step %d: %s", label, s, nsa_context_last_error(rctx));
        for (int b = 0; b < k->B; b++) {
            const int64_t t = k->S[b] - k->steps + s;
            char what[96];
            snprintf(what, sizeof what, "seq %d t=%lld decode vs ref prefill", b, (long long)t);
            expect_close(label, what, yl + b * D, yref[b] + (size_t)t * D, D);
            if (!same) {
                snprintf(what, sizeof what, "seq %d t=%lld ref decode vs ref prefill", b,
                         (long long)t);
                expect_close(label, what, yr + b * D, yref[b] + (size_t)t * D, D);
            }
            for (int g = 0; g < a->G; g++) {
                nsa_decode_counters q;
                assert_int_equal(nsa_decode_get_counters(sl, b, g, &q), NSA_OK);
                const int32_t *row = sel + ((size_t)b * a->G + g) * a->n;
                const int64_t cmp = tl_spec_n_cmp(a, t), win = t + 1 < a->w ? t + 1 : a->w;
                const int64_t slc = slc_tokens(a, row, t);
                if (q.t != t || q.cmp != cmp || q.slc != slc || q.win != win ||
                    q.dense != t + 1 || q.bytes != (cmp + slc + win) * (a->dk + a->dv) * 4)
                    fail_msg("%s: seq %d g %d t=%lld counters t=%lld cmp=%lld slc=%lld "
                             "win=%lld, want cmp=%lld slc=%lld win=%lld (spec 7)",
                             label, b, g, (long long)t, (long long)q.t, (long long)q.cmp,
                             (long long)q.slc, (long long)q.win, (long long)cmp,
                             (long long)slc, (long long)win);
                /* spec 3: min(n, visible) blocks, ascending, -1 padded */
                const int vis = (int)(t / a->l_sel) + 1, want = vis < a->n ? vis : a->n;
                for (int j = 0; j < a->n; j++) {
                    const int ok = j < want ? row[j] >= 0 && row[j] < vis &&
                                                  (j == 0 || row[j] > row[j - 1])
                                            : row[j] == -1;
                    if (!ok)
                        fail_msg("%s: seq %d g %d t=%lld selection[%d]=%d (visible %d)", label,
                                 b, g, (long long)t, j, row[j], vis);
                }
            }
        }
    }
    /* emitted compressed tokens = the backend's prefill's, bit for bit */
    for (int b = 0; b < k->B; b++) {
        const int64_t C = nsa_cmp_tokens(a, k->S[b]);
        float *kc = tl_poisoned((size_t)(C ? C : 1) * a->G * a->dk);
        float *vc = tl_poisoned((size_t)(C ? C : 1) * a->G * a->dv);
        float *y = tl_poisoned((size_t)k->S[b] * D);
        nsa_layer_aux ax;
        memset(&ax, 0, sizeof ax);
        ax.k_cmp = kc;
        ax.v_cmp = vc;
        if (nsa_layer_forward(L, x[b], k->S[b], NULL, 1, y, &ax) != NSA_OK)
            fail_msg("%s: forward: %s", label, nsa_context_last_error(ctx));
        expect_close(label, "backend prefill vs ref prefill", y, yref[b], (size_t)k->S[b] * D);
        const float *dk_, *dv_;
        int64_t cnt;
        assert_int_equal(nsa_decode_compressed(sl, b, &dk_, &dv_, &cnt), NSA_OK);
        if (cnt != C)
            fail_msg("%s: seq %d: %lld compressed tokens, want %lld", label, b, (long long)cnt,
                     (long long)C);
        if (C) {
            /* keys rotated by the host's float angles (a device without
             * fp64) agree with prefill's within spec 9 only */
            if (nsa_decode_host_angles(sl))
                expect_close(label, "decode's compressed keys vs prefill's (host angles)", dk_,
                             kc, (size_t)C * a->G * a->dk);
            else
                assert_memory_equal(dk_, kc, sizeof(float) * (size_t)C * a->G * a->dk);
            assert_memory_equal(dv_, vc, sizeof(float) * (size_t)C * a->G * a->dv);
        }
        assert_int_equal(nsa_decode_length(sl, b), k->S[b]);
        free(kc);
        free(vc);
        free(y);
    }
    for (int b = 0; b < k->B; b++) {
        free(x[b]);
        free(yref[b]);
    }
    free(xt);
    free(yl);
    free(yr);
    free(sel);
    nsa_decode_free(sl);
    nsa_decode_free(sr);
    nsa_layer_free(L);
    nsa_layer_free(R);
    nsa_context_free(ctx);
    nsa_context_free(rctx);
}

static void test_random_decode(void **state)
{
    (void)state;
    const long n = tl_env_long("NSA_DECODE_SWEEP_CASES", tl_under_valgrind() ? 2 : 6);
    const long first = tl_env_long("NSA_DECODE_SWEEP_SEED", 0);
    const int wide = tl_env_long("NSA_DECODE_SWEEP_WIDE", 0) == 1;
    for (long i = first; i < first + n; i++) {
        dcase k;
        make_case(&k, (uint64_t)i + 1, wide);
        const nsa_config *a = &k.c.attn;
        char label[400];
        snprintf(label, sizeof label,
                 "decode case %ld: l=%d d=%d l'=%d G=%d H=%d dk=%d dv=%d w=%d n=%d(%d+%d) "
                 "map=%d D=%d shared=%d phi=%d/%d pe=%d rope=%d/%d gate=%d/%d tau=%g B=%d "
                 "S=%d,%d,%d steps=%d max_len=%d scale=%g%s",
                 i + 1, a->l, a->d, a->l_sel, a->G, a->H, a->dk, a->dv, a->w, a->n, a->n_init,
                 a->n_local, a->mapping, k.c.D, k.c.shared_kv, k.c.phi, k.c.phi_hidden,
                 k.c.phi_pe, k.c.rope_dim, k.c.rope_cmp, k.c.gate_act, k.c.gate_hidden,
                 (double)k.c.gate_tau, k.B, k.S[0], k.B > 1 ? k.S[1] : 0,
                 k.B > 2 ? k.S[2] : 0, k.steps, k.max_len, (double)a->scale,
                 wide ? " (wide)" : "");
        run_case(&k, label);
    }
}

int main(void)
{
    if (tl_skip_half_storage(tl_backend_name()))
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
