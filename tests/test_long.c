/* Long-context tests (make check-long): needle in a haystack at S = 65536
 * with the paper's l, d, l', n, w.
 *
 * The layer is made a pass-through around the operator: x = [key | value]
 * (D = 32), wq = wk = [I 0], wv = [0 I], wo = [I; 0], no RoPE, gates fixed
 * on the selected branch; so the decode step at t = S-1 is the operator's
 * query at S-1 over raw keys and values (decode = prefill is proved in
 * test_decode). Keys and values are random unit vectors; the needle at
 * position p has key NEEDLE * u and its own random value, the last query is
 * QUERY * u (its own value is random too, so only the needle can make the
 * output point at the needle's value). Margin: with
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

/* w[out][in] with ones at (i, i + in_off) (or (i + out_off, i) for wo). */
static void set_pass(nsa_layer *L, const char *name, int rows, int cols, int roff, int coff)
{
    float *w;
    int64_t cnt;
    assert_int_equal(nsa_layer_tensor(L, name, &w, &cnt), NSA_OK);
    assert_int_equal(cnt, rows * cols);
    memset(w, 0, sizeof(float) * (size_t)cnt);
    for (int i = 0; i < DIM; i++)
        w[(size_t)(i + roff) * cols + i + coff] = 1.0f;
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
    c.D = 2 * DIM;
    c.rope_dim = 0;
    c.shared_kv = 1;
    nsa_layer *L;
    assert_int_equal(nsa_layer_create(ctx, &c, &L), NSA_OK);
    set_pass(L, "wq", DIM, 2 * DIM, 0, 0);
    set_pass(L, "wk", DIM, 2 * DIM, 0, 0);
    set_pass(L, "wv", DIM, 2 * DIM, 0, DIM);
    set_pass(L, "wo", 2 * DIM, DIM, 0, 0);
    float *gw, *gb;
    assert_int_equal(nsa_layer_tensor(L, "gate.w", &gw, NULL), NSA_OK);
    assert_int_equal(nsa_layer_tensor(L, "gate.b", &gb, NULL), NSA_OK);
    memset(gw, 0, sizeof(float) * 3 * 2 * DIM);
    gb[0] = 0.0f;
    gb[1] = 20.0f; /* softmax gates ~ (0, 1, 0) */
    gb[2] = 0.0f;

    nsa_decode_state *st;
    assert_int_equal(nsa_decode_create(L, 1, S, &st), NSA_OK);
    const size_t D = 2 * DIM;
    float *x = malloc(sizeof(float) * (size_t)S * D);
    assert_non_null(x);
    int hits = 0;
    for (int k = 0; k < NPOS; k++) {
        /* positions spread evenly from 0 to S-2, plus one inside the last block */
        int64_t p = k < NPOS - 1 ? (int64_t)k * (S - 2) / (NPOS - 2) : S - 40;
        if (k == NPOS - 2)
            p = S - 2;
        nsa_rng r = {0xC0FFEEull + (uint64_t)k};
        for (int64_t t = 0; t < S; t++) {
            unit(x + (size_t)t * D, &r);       /* key */
            unit(x + (size_t)t * D + DIM, &r); /* value */
        }
        float u[DIM], vn[DIM];
        unit(u, &r);
        for (int i = 0; i < DIM; i++) {
            x[(size_t)p * D + i] = NEEDLE * u[i];
            x[(size_t)(S - 1) * D + i] = QUERY * u[i];
            vn[i] = x[(size_t)p * D + DIM + i];
        }
        assert_int_equal(nsa_decode_reset(st, -1), NSA_OK);
        assert_int_equal(nsa_decode_prefill(st, 0, x, S - 1, NULL), NSA_OK);
        float y[2 * DIM], o_slc[DIM];
        int32_t sel[16];
        nsa_layer_aux aux;
        memset(&aux, 0, sizeof aux);
        aux.out_slc = o_slc;
        aux.selection = sel;
        assert_int_equal(nsa_decode_step(L, st, x + (size_t)(S - 1) * D, y, &aux), NSA_OK);
        const int32_t want = (int32_t)(p / c.attn.l_sel);
        int found = 0;
        for (int i = 0; i < c.attn.n; i++)
            found |= sel[i] == want;
        double dot = 0, n1 = 0, n2 = 0;
        for (int i = 0; i < DIM; i++) {
            dot += (double)o_slc[i] * vn[i];
            n1 += (double)o_slc[i] * o_slc[i];
            n2 += (double)vn[i] * vn[i];
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
