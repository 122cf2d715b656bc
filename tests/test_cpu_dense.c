/* The cpu backend's dense causal prefill (nsa_cpu_dense_attention, the
 * baseline nsa-bench prefill measures NSA against) against a literal
 * double-precision softmax(q k^T * scale) v over keys 0..t of the token's
 * own sequence, under every kernel set usable here: varlen batches (a
 * sequence of one token, lengths off the query tile), GQA (several heads a
 * group, one group and several), dk != dv. Outputs are poisoned first.
 * Also nsa-bench's other internal path: the selected branch alone
 * (nsa_cpu_attend_part with NSA_CPU_SLC on a given selection) must give
 * the forward's o_slc bit for bit. */
#include "testlib.h"

#include "cpu/cpu_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void naive(const nsa_config *c, const int32_t *cu, int B, const float *q, const float *k,
                  const float *v, float *out)
{
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv;
    const double scale = nsa_config_scale(c);
    double *p = malloc(sizeof(double) * (size_t)cu[B]);
    assert_non_null(p);
    for (int b = 0; b < B; b++)
        for (int64_t t = cu[b]; t < cu[b + 1]; t++)
            for (int h = 0; h < H; h++) {
                const int g = h / hpg;
                const float *qr = q + ((size_t)t * H + h) * dk;
                double mx = -INFINITY, sum = 0.0;
                for (int64_t j = cu[b]; j <= t; j++) {
                    const float *kr = k + ((size_t)j * G + g) * dk;
                    double s = 0.0;
                    for (int e = 0; e < dk; e++)
                        s += (double)qr[e] * kr[e];
                    p[j] = s * scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int64_t j = cu[b]; j <= t; j++)
                    sum += (p[j] = exp(p[j] - mx));
                for (int e = 0; e < dv; e++) {
                    double o = 0.0;
                    for (int64_t j = cu[b]; j <= t; j++)
                        o += p[j] * v[((size_t)j * G + g) * dv + e];
                    out[((size_t)t * H + h) * dv + e] = (float)(o / sum);
                }
            }
    free(p);
}

static void run_case(nsa_context *ctx, int H, int G, int dk, int dv, const int *lens, int B,
                     uint64_t seed)
{
    const nsa_config c = tl_config(H, G, dk, dv, 32, 16, 64, 16, 1, 2, 512, NSA_MAPPING_OVERLAP);
    int32_t cu[8] = {0};
    for (int b = 0; b < B; b++)
        cu[b + 1] = cu[b] + lens[b];
    const int64_t T = cu[B];
    nsa_batch bt;
    assert_int_equal(nsa_batch_init(ctx, &c, T, cu, B, &bt), NSA_OK);
    float *q = malloc(sizeof(float) * (size_t)T * H * dk);
    float *k = malloc(sizeof(float) * (size_t)T * G * dk);
    float *v = malloc(sizeof(float) * (size_t)T * G * dv);
    float *want = malloc(sizeof(float) * (size_t)T * H * dv);
    float *got = tl_poisoned((size_t)T * H * dv);
    assert_true(q && k && v && want);
    tl_fill(q, (size_t)T * H * dk, seed, -1.0f, 1.0f);
    tl_fill(k, (size_t)T * G * dk, seed + 1, -1.0f, 1.0f);
    tl_fill(v, (size_t)T * G * dv, seed + 2, -1.0f, 1.0f);
    naive(&c, cu, B, q, k, v, want);
    assert_int_equal(nsa_cpu_dense_attention(ctx, &c, &bt, q, k, v, got), NSA_OK);
    assert_int_equal(tl_count_nonfinite(got, (size_t)T * H * dv), 0);
    const double err = tl_rel_l2(got, want, (size_t)T * H * dv);
    printf("# %s H=%d G=%d dk=%d dv=%d T=%lld: relative L2 %.3g\n", nsa_cpu_isa(ctx), H, G, dk,
           dv, (long long)T, err);
    assert_true(err <= 1e-5); /* spec 9: relative L2 <= 1e-5 against the literal formula */
    free(q);
    free(k);
    free(v);
    free(want);
    free(got);
    nsa_batch_free(&bt);
}

static void test_dense_every_isa(void **state)
{
    (void)state;
    static const int varlen[] = {1, 37, 130}, one[] = {300};
    const char *sets[TL_KERNEL_SETS];
    const int nsets = tl_kernel_sets(sets);
    for (int i = 0; i < nsets; i++) {
        nsa_context *ctx = NULL;
        char msg[256];
        assert_int_equal(nsa_context_create("cpu", &ctx, msg, sizeof msg), NSA_OK);
        assert_int_equal(nsa_cpu_set_max_isa(ctx, sets[i]), NSA_OK);
        assert_string_equal(nsa_cpu_isa(ctx), sets[i]); /* the set's name caps to it */
        run_case(ctx, 4, 2, 32, 16, varlen, 3, 11 + (uint64_t)i);
        run_case(ctx, 16, 1, 64, 48, one, 1, 23 + (uint64_t)i);
        run_case(ctx, 3, 3, 8, 24, varlen, 3, 37 + (uint64_t)i);
        nsa_context_free(ctx);
    }
    assert_true(nsets >= 1);
}

/* The selected branch alone on the forward's own selection (the slc column
 * of nsa-bench prefill) against the forward's o_slc: the same code on the
 * same blocks, so the same bits. Varlen, so items end at sequence ends. */
static void test_selected_alone(void **state)
{
    (void)state;
    static const int lens[] = {1, 77, 300, 130};
    nsa_config c = tl_config(8, 2, 32, 24, 16, 8, 16, 5, 1, 2, 48, NSA_MAPPING_OVERLAP);
    tl_problem p;
    tl_problem_make(&p, &c, lens, 4, 0, 4242);
    nsa_context *ctx = NULL;
    assert_int_equal(nsa_context_create("cpu", &ctx, NULL, 0), NSA_OK);
    tl_outputs o;
    tl_outputs_alloc(&o, &p);
    nsa_op_args a = tl_problem_args(&p);
    tl_outputs_attach(&o, &a);
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_OK);

    nsa_batch bt;
    nsa_csr map = {0};
    assert_int_equal(nsa_batch_init(ctx, &c, p.T, p.cu, p.B, &bt), NSA_OK);
    assert_int_equal(nsa_bm_map_build(&c, nsa_bm_n_sel_visible(&c, bt.max_len - 1),
                                      nsa_bm_n_cmp(&c, bt.max_len - 1), &map),
                     NSA_OK);
    const size_t rows = (size_t)p.T * c.H * c.dv;
    float *slc = tl_poisoned(rows);
    nsa_attn_job job;
    memset(&job, 0, sizeof job);
    job.cfg = &c;
    job.scale = nsa_config_scale(&c);
    job.batch = &bt;
    job.map = &map;
    job.q = p.q;
    job.kc = o.kc;
    job.vc = o.vc;
    job.k_slc = p.ks;
    job.v_slc = p.vs;
    job.k_win = p.kw;
    job.v_win = p.vw;
    job.gates = p.gates;
    job.sel_in = o.sel;
    job.out_slc = slc;
    assert_int_equal(nsa_cpu_attend_part(ctx, &job, NSA_CPU_SLC), NSA_OK);
    /* the same computation: identical bits (poison would show) */
    assert_memory_equal(slc, o.out_slc, sizeof(float) * rows);
    /* a selected branch with no selection to read is refused */
    job.sel_in = NULL;
    assert_int_equal(nsa_cpu_attend_part(ctx, &job, NSA_CPU_SLC), NSA_ERR_ARG);
    free(slc);
    nsa_bm_map_free(&map);
    nsa_batch_free(&bt);
    tl_outputs_free(&o);
    tl_problem_free(&p);
    nsa_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_every_isa),
        cmocka_unit_test(test_selected_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
