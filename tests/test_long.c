/* Long-context tests (make check-long): needle in a haystack at S = 65536
 * with the paper's l, d, l', n, w.
 *
 * The layer is made the identity around the operator (wq = wk = wv = wo =
 * I, no RoPE, gates fixed on the selected branch), so the decode step at
 * t = S-1 is the operator's query at S-1 over raw keys x (decode = prefill
 * is proved in test_decode). Keys are random unit vectors; the needle at
 * position p is NEEDLE * u and the last query is QUERY * u. Margin: with
 * scale = 1/sqrt(16), the needle's logit is 0.25 * 8 * 16 = 32 while the
 * others have standard deviation 0.25 * 8 / 4 = 0.5, so dense attention over
 * all 65536 keys puts weight >= 1 - 65536 e^(1.5 - 32) ~ 1 - 4e-9 on the
 * needle: dense attention retrieves it. NSA must select the block holding
 * p from compressed scores alone, for 64 positions p spread over the
 * context, first and last blocks included; a single miss fails. */
#include "testlib.h"
#include "layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { S = 65536, DIM = 16, NPOS = 64 };
#define NEEDLE 16.0f
#define QUERY 8.0f

static void unit(float *v, nsa_rng *r)
{
    double n2 = 0;
    for (int i = 0; i < DIM; i++) {
        v[i] = nsa_rng_uniform(r);
        n2 += (double)v[i] * v[i];
    }
    for (int i = 0; i < DIM; i++)
        v[i] = (float)(v[i] / sqrt(n2));
}

static void set_identity(nsa_layer *L, const char *name)
{
    float *w;
    int64_t cnt;
    assert_int_equal(nsa_layer_tensor(L, name, &w, &cnt), NSA_OK);
    assert_int_equal(cnt, DIM * DIM);
    memset(w, 0, sizeof(float) * DIM * DIM);
    for (int i = 0; i < DIM; i++)
        w[i * DIM + i] = 1.0f;
}

static void test_needle_64k(void **state)
{
    (void)state;
    nsa_context *ctx;
    const char *be = getenv("NSA_TEST_BACKEND");
    assert_int_equal(nsa_context_create(be ? be : "ref", &ctx, NULL, 0), NSA_OK);
    nsa_layer_config c = nsa_layer_config_default(); /* l=32 d=16 l'=64 n=16 w=512 */
    c.attn.H = 1;
    c.attn.G = 1;
    c.attn.dk = DIM;
    c.attn.dv = DIM;
    c.D = DIM;
    c.rope_dim = 0;
    c.shared_kv = 1;
    nsa_layer *L;
    assert_int_equal(nsa_layer_create(ctx, &c, &L), NSA_OK);
    set_identity(L, "wq");
    set_identity(L, "wk");
    set_identity(L, "wv");
    set_identity(L, "wo");
    float *gw, *gb;
    assert_int_equal(nsa_layer_tensor(L, "gate.w", &gw, NULL), NSA_OK);
    assert_int_equal(nsa_layer_tensor(L, "gate.b", &gb, NULL), NSA_OK);
    memset(gw, 0, sizeof(float) * 3 * DIM);
    gb[0] = 0.0f;
    gb[1] = 20.0f; /* softmax gates ~ (0, 1, 0) */
    gb[2] = 0.0f;

    nsa_decode_state *st;
    assert_int_equal(nsa_decode_create(L, 1, S, &st), NSA_OK);
    float *x = malloc(sizeof(float) * (size_t)S * DIM);
    assert_non_null(x);
    int hits = 0;
    for (int k = 0; k < NPOS; k++) {
        /* positions spread evenly from 0 to S-2, plus one inside the last block */
        int64_t p = k < NPOS - 1 ? (int64_t)k * (S - 2) / (NPOS - 2) : S - 40;
        if (k == NPOS - 2)
            p = S - 2;
        nsa_rng r = {0xC0FFEEull + (uint64_t)k};
        for (int64_t t = 0; t < S; t++)
            unit(x + (size_t)t * DIM, &r);
        float u[DIM];
        unit(u, &r);
        for (int i = 0; i < DIM; i++) {
            x[(size_t)p * DIM + i] = NEEDLE * u[i];
            x[(size_t)(S - 1) * DIM + i] = QUERY * u[i];
        }
        assert_int_equal(nsa_decode_reset(st, -1), NSA_OK);
        assert_int_equal(nsa_decode_prefill(st, 0, x, S - 1, NULL), NSA_OK);
        float y[DIM], o_slc[DIM];
        int32_t sel[16];
        nsa_layer_aux aux;
        memset(&aux, 0, sizeof aux);
        aux.out_slc = o_slc;
        aux.selection = sel;
        assert_int_equal(nsa_decode_step(L, st, x + (size_t)(S - 1) * DIM, y, &aux), NSA_OK);
        const int32_t want = (int32_t)(p / c.attn.l_sel);
        int found = 0;
        for (int i = 0; i < c.attn.n; i++)
            found |= sel[i] == want;
        double dot = 0, n1 = 0, n2 = 0;
        for (int i = 0; i < DIM; i++) {
            dot += (double)o_slc[i] * u[i];
            n1 += (double)o_slc[i] * o_slc[i];
            n2 += (double)u[i] * u[i];
        }
        const double cosv = dot / sqrt(n1 * n2);
        if (found && cosv > 0.99)
            hits++;
        else
            print_message("miss: p=%lld block %d selected=%d cosine=%.4f\n", (long long)p,
                          want, found, cosv);
        nsa_decode_counters cnt;
        assert_int_equal(nsa_decode_get_counters(st, 0, 0, &cnt), NSA_OK);
        assert_int_equal(cnt.cmp + cnt.slc + cnt.win, 5631);
    }
    print_message("needle at S=%d: %d/%d positions retrieved (block selected, cosine > 0.99)\n",
                  S, hits, NPOS);
    assert_int_equal(hits, NPOS);
    free(x);
    nsa_decode_free(st);
    nsa_layer_free(L);
    nsa_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_needle_64k)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
