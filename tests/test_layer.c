/* The layer (spec 6): causality, varlen = alone, RoPE placement, phi mlp
 * set to averaging = phi avg, config rules. */
#include "testlib.h"
#include "layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static nsa_layer *make(nsa_context *ctx, const nsa_layer_config *c, uint64_t seed)
{
    nsa_layer *L = NULL;
    assert_int_equal(nsa_layer_create(ctx, c, &L), NSA_OK);
    assert_int_equal(nsa_layer_init_random(L, seed), NSA_OK);
    return L;
}

static void test_causal_and_varlen(void **state)
{
    (void)state;
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("ref", &ctx, NULL, 0), NSA_OK);
    for (int variant = 0; variant < 4; variant++) {
        nsa_layer_config c = tl_layer_config_small();
        c.shared_kv = variant & 1;
        if (variant & 2) {
            c.phi = NSA_PHI_MLP;
            c.phi_hidden = 5;
            c.phi_pe = 1;
            c.rope_cmp = NSA_ROPE_AFTER;
            c.gate_hidden = 7;
            c.gate_act = NSA_GATE_SIGMOID;
        }
        nsa_layer *L = make(ctx, &c, 100 + variant);
        const int lens[3] = {70, 1, 45};
        const int32_t cu[4] = {0, 70, 71, 116};
        const size_t T = 116, D = (size_t)c.D;
        float *x = malloc(sizeof(float) * T * D);
        tl_fill(x, T * D, 7 + variant, -1, 1);
        float *y = tl_poisoned(T * D);
        assert_int_equal(nsa_layer_forward(L, x, (int64_t)T, cu, 3, y, NULL), NSA_OK);
        assert_int_equal(tl_count_nonfinite(y, T * D), 0);
        /* each sequence alone gives bit-identical rows */
        for (int b = 0; b < 3; b++) {
            float *yb = tl_poisoned((size_t)lens[b] * D);
            assert_int_equal(nsa_layer_forward(L, x + (size_t)cu[b] * D, lens[b], NULL, 1, yb,
                                               NULL),
                             NSA_OK);
            assert_memory_equal(yb, y + (size_t)cu[b] * D, sizeof(float) * lens[b] * D);
            free(yb);
        }
        /* changing x after position t of sequence 0 leaves rows <= t alone,
         * and the other sequences entirely */
        const int t = 37;
        float *x2 = malloc(sizeof(float) * T * D);
        memcpy(x2, x, sizeof(float) * T * D);
        tl_fill(x2 + (size_t)(t + 1) * D, (size_t)(70 - t - 1) * D, 999, -3, 3);
        float *y2 = tl_poisoned(T * D);
        assert_int_equal(nsa_layer_forward(L, x2, (int64_t)T, cu, 3, y2, NULL), NSA_OK);
        assert_memory_equal(y2, y, sizeof(float) * (size_t)(t + 1) * D);
        assert_memory_equal(y2 + 70 * D, y + 70 * D, sizeof(float) * 46 * D);
        assert_memory_not_equal(y2 + (size_t)(t + 1) * D, y + (size_t)(t + 1) * D,
                                sizeof(float) * D);
        free(x);
        free(x2);
        free(y);
        free(y2);
        nsa_layer_free(L);
    }
    nsa_context_free(ctx);
}

/* phi mlp (hidden 0) holding exact averaging weights equals phi avg. */
static void test_phi_mlp_average(void **state)
{
    (void)state;
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("ref", &ctx, NULL, 0), NSA_OK);
    nsa_layer_config ca = tl_layer_config_small(), cm = tl_layer_config_small();
    cm.phi = NSA_PHI_MLP;
    cm.phi_hidden = 0;
    nsa_layer *A = make(ctx, &ca, 5), *M = make(ctx, &cm, 5);
    /* same projections: copy every tensor A has into M */
    for (int i = 0; i < nsa_layer_tensor_count(A); i++) {
        const char *nm;
        float *src, *dst;
        int64_t cnt;
        assert_int_equal(nsa_layer_tensor_at(A, i, &nm, &src, NULL, NULL), NSA_OK);
        assert_int_equal(nsa_layer_tensor(M, nm, &dst, &cnt), NSA_OK);
        memcpy(dst, src, sizeof(float) * (size_t)cnt);
    }
    for (int kv = 0; kv < 2; kv++) {
        float *w;
        int64_t cnt;
        assert_int_equal(nsa_layer_tensor(M, kv ? "phi_v.w" : "phi_k.w", &w, &cnt), NSA_OK);
        const int dim = kv ? cm.attn.dv : cm.attn.dk, l = cm.attn.l, G = cm.attn.G;
        memset(w, 0, sizeof(float) * (size_t)cnt);
        for (int g = 0; g < G; g++)
            for (int e = 0; e < dim; e++)
                for (int j = 0; j < l; j++)
                    w[((size_t)g * dim + e) * l * dim + (size_t)j * dim + e] = 1.0f / l;
        float *b;
        assert_int_equal(nsa_layer_tensor(M, kv ? "phi_v.b" : "phi_k.b", &b, &cnt), NSA_OK);
        memset(b, 0, sizeof(float) * (size_t)cnt);
    }
    const size_t T = 90, D = (size_t)ca.D;
    float *x = malloc(sizeof(float) * T * D), *ya = tl_poisoned(T * D), *ym = tl_poisoned(T * D);
    tl_fill(x, T * D, 3, -1, 1);
    assert_int_equal(nsa_layer_forward(A, x, (int64_t)T, NULL, 1, ya, NULL), NSA_OK);
    assert_int_equal(nsa_layer_forward(M, x, (int64_t)T, NULL, 1, ym, NULL), NSA_OK);
    /* both sum the same l terms in double; only 1/l rounding differs: 1e-6 */
    assert_true(tl_rel_l2(ym, ya, T * D) <= 1e-6);
    free(x);
    free(ya);
    free(ym);
    nsa_layer_free(A);
    nsa_layer_free(M);
    nsa_context_free(ctx);
}

static void test_rope(void **state)
{
    (void)state;
    /* RoPE keeps norms and makes q.k depend on the position difference only */
    float a[8], b[8], a2[8], b2[8];
    tl_fill(a, 8, 1, -1, 1);
    tl_fill(b, 8, 2, -1, 1);
    memcpy(a2, a, sizeof a);
    memcpy(b2, b, sizeof b);
    nsa_rope_apply(a, 1, 8, 8, 10000.0f, 5);
    nsa_rope_apply(b, 1, 8, 8, 10000.0f, 2);
    nsa_rope_apply(a2, 1, 8, 8, 10000.0f, 13);
    nsa_rope_apply(b2, 1, 8, 8, 10000.0f, 10);
    double d1 = 0, d2 = 0;
    for (int i = 0; i < 8; i++) {
        d1 += (double)a[i] * b[i];
        d2 += (double)a2[i] * b2[i];
    }
    assert_float_equal(d1, d2, 1e-5);
    /* position 0 is the identity; pairing is rotate-half: dims i and i+4 */
    float c[8], c0[8];
    tl_fill(c, 8, 3, -1, 1);
    memcpy(c0, c, sizeof c);
    nsa_rope_apply(c, 1, 8, 8, 10000.0f, 0);
    assert_memory_equal(c, c0, sizeof c);
    nsa_rope_apply(c, 1, 8, 8, 10000.0f, 1); /* dim 0 pair rotates by 1 rad */
    assert_float_equal(c[0], c0[0] * cos(1.0) - c0[4] * sin(1.0), 1e-6);
    assert_float_equal(c[4], c0[4] * cos(1.0) + c0[0] * sin(1.0), 1e-6);
}

/* RoPE's own cos and sin (cl/sincos64.cl, shared with the OpenCL kernels so
 * both sides get the same bits) against libm's: within 1e-15 absolute
 * (measured 1.1e-16 over 2e7 angles; the reduction's parts keep k pi/2
 * exact for |theta| < 3.3e9) on RoPE's angles t base^(-2i/64) for t up to
 * 2^31 - 1, on [0, 8) finely, near multiples of pi/4 (quadrant and
 * polynomial edges) and on negative angles; sin^2 + cos^2 = 1 within 4e-16.
 * A coefficient off by one unit in its 9th digit fails it. */
static void test_rope_sincos(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    double worst = 0.0;
    for (int n = 0; n < 400000; n++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double th;
        switch (n % 5) {
        case 0: th = (double)(x >> 33); break; /* integer positions up to 2^31 */
        case 1: th = (double)(x >> 33) * pow(10000.0, -2.0 * (double)(x % 32) / 64.0); break;
        case 2: th = (double)(x >> 11) * 0x1p-53 * 8.0; break;
        case 3: th = (double)(x % 4096) * 0.78539816339744830962 + ((double)(x >> 40) - 8388608.0) * 1e-13; break;
        default: th = -(double)(x >> 33) * 1e-3; break;
        }
        double c, sn;
        nsa_rope_sincos(th, &c, &sn);
        const double e = fmax(fabs(c - cos(th)), fabs(sn - sin(th)));
        if (!(e <= 1e-15))
            fail_msg("theta %.17g: cos %.17g (libm %.17g), sin %.17g (libm %.17g)", th, c,
                     cos(th), sn, sin(th));
        assert_true(fabs(c * c + sn * sn - 1.0) <= 4e-16);
        worst = e > worst ? e : worst;
    }
    print_message("RoPE sincos: worst |cos, sin - libm's| %.3g\n", worst);
}

static void test_config_rules(void **state)
{
    (void)state;
    char msg[256];
    nsa_layer_config c = tl_layer_config_small();
    c.rope_dim = 7;
    assert_int_equal(nsa_layer_config_validate(&c, msg, sizeof msg), NSA_ERR_ARG);
    assert_non_null(strstr(msg, "rope_dim=7"));
    c = tl_layer_config_small();
    c.gate_tau = 0;
    assert_int_equal(nsa_layer_config_validate(&c, msg, sizeof msg), NSA_ERR_ARG);
    c = tl_layer_config_small();
    c.D = 0;
    assert_int_equal(nsa_layer_config_validate(&c, msg, sizeof msg), NSA_ERR_ZERO_SIZE);
    c = tl_layer_config_small();
    c.attn.G = 3;
    assert_int_equal(nsa_layer_config_validate(&c, msg, sizeof msg), NSA_ERR_GQA);
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("ref", &ctx, NULL, 0), NSA_OK);
    nsa_layer *L = (nsa_layer *)0x1;
    assert_int_equal(nsa_layer_create(ctx, &c, &L), NSA_ERR_GQA);
    assert_null(L);
    assert_non_null(strstr(nsa_context_last_error(ctx), "G=3 must divide H=4"));
    nsa_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_causal_and_varlen),
        cmocka_unit_test(test_phi_mlp_average),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_sincos),
        cmocka_unit_test(test_config_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
