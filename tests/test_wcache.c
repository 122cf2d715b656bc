/* Device-resident weights: a backend may keep device copies of a layer's
 * weights between calls (opencl does, keyed by the layer's weights
 * generation). Every forward and decode step must use the weights the
 * layer holds now: after writing through a pointer kept from earlier (then
 * nsa_layer_weights_changed), after writing through a freshly asked-for
 * pointer, after nsa_layer_init_random and for a loaded layer. The backend
 * under test ($NSA_TEST_BACKEND) is compared with ref doing the same
 * (spec 9: relative L2 <= 1e-5). On a backend that caches, a failed weight
 * upload is an error with the outputs unwritten and the decode state
 * unchanged, and unchanged weights are not uploaded again. */
#define _POSIX_C_SOURCE 200809L /* mkstemp */
#include "testlib.h"
#include "decode.h"
#include "layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static nsa_layer_config cfg_of(int variant)
{
    nsa_layer_config c = tl_layer_config_small();
    if (variant == 1) {
        /* the other weight slots: gate MLP with biases, shared K/V */
        c.gate_hidden = 5;
        c.shared_kv = 1;
    }
    return c;
}

/* The layer on the backend under test (L) and its twin on ref (R). */
typedef struct pair {
    nsa_layer_config c;
    nsa_context *ctx, *rctx;
    nsa_layer *L, *R;
} pair;

static void pair_make(pair *p, int variant, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->c = cfg_of(variant);
    p->ctx = tl_context();
    assert_int_equal(nsa_context_create("ref", &p->rctx, NULL, 0), NSA_OK);
    assert_int_equal(nsa_layer_create(p->ctx, &p->c, &p->L), NSA_OK);
    assert_int_equal(nsa_layer_create(p->rctx, &p->c, &p->R), NSA_OK);
    assert_int_equal(nsa_layer_init_random(p->L, seed), NSA_OK);
    assert_int_equal(nsa_layer_init_random(p->R, seed), NSA_OK);
}

static void pair_free(pair *p)
{
    nsa_layer_free(p->L);
    nsa_layer_free(p->R);
    nsa_context_free(p->ctx);
    nsa_context_free(p->rctx);
}

/* Adds seeded noise (about the weights' own size) to every tensor of both
 * layers through the given pointers (kept from earlier). */
static void perturb(float **lw, float **rw, const int64_t *count, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        float *noise = malloc(sizeof(float) * (size_t)count[i]);
        assert_non_null(noise);
        tl_fill(noise, (size_t)count[i], seed + (uint64_t)i, -0.3f, 0.3f);
        for (int64_t e = 0; e < count[i]; e++) {
            lw[i][e] += noise[e];
            rw[i][e] += noise[e];
        }
        free(noise);
    }
}

/* Pointers to every tensor of both layers, asked for now. */
static int pointers(pair *p, float **lw, float **rw, int64_t *count)
{
    const int n = nsa_layer_tensor_count(p->L);
    assert_true(n > 0 && n <= NSA_LAYER_MAX_TENSORS);
    for (int i = 0; i < n; i++) {
        int64_t shape[4];
        int nd;
        assert_int_equal(nsa_layer_tensor_at(p->L, i, NULL, &lw[i], &nd, shape), NSA_OK);
        assert_int_equal(nsa_layer_tensor_at(p->R, i, NULL, &rw[i], NULL, NULL), NSA_OK);
        count[i] = 1;
        for (int k = 0; k < nd; k++)
            count[i] *= shape[k];
    }
    return n;
}

/* Forward of both layers over x; returns the relative L2 of L against R. */
static double forward_pair(pair *p, const float *x, int64_t T, float *y, float *yr)
{
    const size_t n = (size_t)T * p->c.D;
    for (size_t i = 0; i < n; i++)
        y[i] = NAN; /* poisoned: an unwritten element fails the comparison */
    assert_int_equal(nsa_layer_forward(p->L, x, T, NULL, 1, y, NULL), NSA_OK);
    assert_int_equal(nsa_layer_forward(p->R, x, T, NULL, 1, yr, NULL), NSA_OK);
    return tl_rel_l2(y, yr, n);
}

static int all_nan(const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isnan(y[i]))
            return 0;
    return 1;
}

/* Forward: new weights through kept pointers + nsa_layer_weights_changed,
 * through fresh pointers, and by nsa_layer_init_random. */
static void test_forward_new_weights(void **state)
{
    (void)state;
    for (int v = 0; v < 2; v++) {
        pair p;
        pair_make(&p, v, 40 + v);
        enum { T = 37 };
        const size_t n = (size_t)T * p.c.D;
        float *x = malloc(sizeof(float) * n), *y = tl_poisoned(n), *yr = tl_poisoned(n);
        float *yold = malloc(sizeof(float) * n);
        tl_fill(x, n, 7 + v, -1, 1);
        float *lw[NSA_LAYER_MAX_TENSORS], *rw[NSA_LAYER_MAX_TENSORS];
        int64_t count[NSA_LAYER_MAX_TENSORS];
        const int nt = pointers(&p, lw, rw, count); /* kept for later */

        /* spec 9: relative L2 <= 1e-5 */
        assert_true(forward_pair(&p, x, T, y, yr) <= 1e-5);
        memcpy(yold, yr, sizeof(float) * n);
        /* the same weights again: served from the device copy if any */
        assert_true(forward_pair(&p, x, T, y, yr) <= 1e-5);

        /* 1. written through pointers kept from before the forwards */
        perturb(lw, rw, count, nt, 100 + v);
        assert_int_equal(nsa_layer_weights_changed(p.L), NSA_OK);
        assert_true(tl_rel_l2(yr, yold, n) < 1e-7); /* ref not rerun yet */
        double e = forward_pair(&p, x, T, y, yr);
        /* the new weights matter, so stale copies would show */
        assert_true(tl_rel_l2(yr, yold, n) > 1e-2);
        if (!(e <= 1e-5)) /* spec 9 */
            fail_msg("variant %d: forward after nsa_layer_weights_changed: rel err %g", v, e);

        /* 2. one tensor at a time through a freshly asked-for pointer (by
         * name, by index), written before the next forward: no call needed */
        static const char *const names[] = {"wq", "wo", "wk_slc", "wv_win", "wk", "wv",
                                            "gate.w", "gate.b", "gate.w2", "gate.b2"};
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            float *a, *b;
            int64_t cnt;
            if (nsa_layer_tensor(p.R, names[k], &b, &cnt) != NSA_OK)
                continue; /* not in this variant */
            if (k % 2 == 0) {
                assert_int_equal(nsa_layer_tensor(p.L, names[k], &a, NULL), NSA_OK);
            } else {
                /* the same through the index */
                const char *nm = "";
                int i = 0;
                while (nsa_layer_tensor_at(p.L, i, &nm, NULL, NULL, NULL) == NSA_OK &&
                       strcmp(nm, names[k]) != 0)
                    i++;
                assert_int_equal(nsa_layer_tensor_at(p.L, i, &nm, &a, NULL, NULL), NSA_OK);
                assert_string_equal(nm, names[k]);
            }
            memcpy(yold, yr, sizeof(float) * n);
            for (int64_t i = 0; i < cnt; i++)
                a[i] = b[i] = b[i] * -0.75f + 0.05f;
            e = forward_pair(&p, x, T, y, yr);
            assert_true(tl_rel_l2(yr, yold, n) > 1e-4);
            if (!(e <= 1e-5)) /* spec 9 */
                fail_msg("variant %d: forward after writing '%s': rel err %g", v, names[k], e);
        }

        /* 3. nsa_layer_init_random with another seed */
        memcpy(yold, yr, sizeof(float) * n);
        assert_int_equal(nsa_layer_init_random(p.L, 77), NSA_OK);
        assert_int_equal(nsa_layer_init_random(p.R, 77), NSA_OK);
        e = forward_pair(&p, x, T, y, yr);
        assert_true(tl_rel_l2(yr, yold, n) > 1e-2);
        assert_true(e <= 1e-5); /* spec 9 */
        free(x);
        free(y);
        free(yr);
        free(yold);
        pair_free(&p);
    }
}

/* One decode step on both; returns the relative L2 of L's y against R's. */
static double step_pair(pair *p, nsa_decode_state *sl, nsa_decode_state *sr, int B,
                        const float *x, float *y, float *yr)
{
    const size_t n = (size_t)B * p->c.D;
    for (size_t i = 0; i < n; i++)
        y[i] = NAN;
    assert_int_equal(nsa_decode_step(p->L, sl, x, y, NULL), NSA_OK);
    assert_int_equal(nsa_decode_step(p->R, sr, x, yr, NULL), NSA_OK);
    return tl_rel_l2(y, yr, n);
}

/* Decode: weights changed between steps (kept pointers + the call, then
 * nsa_layer_init_random); every step equals ref with the weights of the
 * moment. */
static void test_decode_new_weights(void **state)
{
    (void)state;
    for (int v = 0; v < 2; v++) {
        pair p;
        pair_make(&p, v, 50 + v);
        enum { B = 2, P = 40, STEPS = 12 };
        const size_t D = (size_t)p.c.D;
        float *lw[NSA_LAYER_MAX_TENSORS], *rw[NSA_LAYER_MAX_TENSORS];
        int64_t count[NSA_LAYER_MAX_TENSORS];
        const int nt = pointers(&p, lw, rw, count);
        float *x = malloc(sizeof(float) * (P + STEPS) * B * D);
        tl_fill(x, (size_t)(P + STEPS) * B * D, 60 + v, -1, 1);
        nsa_decode_state *sl, *sr;
        assert_int_equal(nsa_decode_create(p.L, B, 0, &sl), NSA_OK);
        assert_int_equal(nsa_decode_create(p.R, B, 0, &sr), NSA_OK);
        for (int b = 0; b < B; b++) {
            assert_int_equal(nsa_decode_prefill(sl, b, x + (size_t)b * P * D, P - 9 * b, NULL),
                             NSA_OK);
            assert_int_equal(nsa_decode_prefill(sr, b, x + (size_t)b * P * D, P - 9 * b, NULL),
                             NSA_OK);
        }
        float *y = tl_poisoned(B * D), *yr = tl_poisoned(B * D), *ys = tl_poisoned(B * D);
        const float *xs = x + (size_t)B * P * D;
        for (int s = 0; s < STEPS; s++) {
            if (s == 4) {
                perturb(lw, rw, count, nt, 300 + v);
                assert_int_equal(nsa_layer_weights_changed(p.L), NSA_OK);
            } else if (s == 8) {
                assert_int_equal(nsa_layer_init_random(p.L, 91), NSA_OK);
                assert_int_equal(nsa_layer_init_random(p.R, 91), NSA_OK);
            }
            const double e = step_pair(&p, sl, sr, B, xs + (size_t)s * B * D, y, yr);
            if (s == 4 || s == 8) {
                /* the change matters: the step with the old weights differs */
                assert_true(tl_rel_l2(yr, ys, B * D) > 1e-3);
            }
            memcpy(ys, yr, sizeof(float) * B * D);
            if (!(e <= 1e-5)) /* spec 9 */
                fail_msg("variant %d step %d: rel err %g", v, s, e);
        }
        nsa_decode_free(sl);
        nsa_decode_free(sr);
        free(x);
        free(y);
        free(yr);
        free(ys);
        pair_free(&p);
    }
}

/* A loaded layer (the backend's layer freed and replaced) computes with the
 * loaded weights. */
static void test_load(void **state)
{
    (void)state;
    pair p;
    pair_make(&p, 0, 70);
    enum { T = 29 };
    const size_t n = (size_t)T * p.c.D;
    float *x = malloc(sizeof(float) * n), *y = tl_poisoned(n), *yr = tl_poisoned(n);
    tl_fill(x, n, 71, -1, 1);
    assert_true(forward_pair(&p, x, T, y, yr) <= 1e-5); /* spec 9 */
    char path[] = "/tmp/nsa_wcache_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (int round = 0; round < 2; round++) {
        /* ref gets other weights, saved; the backend's layer is replaced by
         * the loaded one */
        assert_int_equal(nsa_layer_init_random(p.R, 72 + round), NSA_OK);
        assert_int_equal(nsa_layer_save(p.R, path), NSA_OK);
        nsa_layer_free(p.L);
        p.L = NULL;
        assert_int_equal(nsa_layer_load(p.ctx, path, &p.L), NSA_OK);
        const double e = forward_pair(&p, x, T, y, yr);
        if (!(e <= 1e-5)) /* spec 9 */
            fail_msg("round %d: forward of the loaded layer: rel err %g", round, e);
    }
    unlink(path);
    free(x);
    free(y);
    free(yr);
    pair_free(&p);
}

/* A backend that keeps device copies: unchanged weights are not uploaded
 * again; a failed upload (each one in turn) is an error that writes no
 * output and leaves the decode state as it was; the next call succeeds and
 * equals ref. */
static void test_upload_failure(void **state)
{
    (void)state;
    for (int v = 0; v < 2; v++) {
        pair p;
        pair_make(&p, v, 80 + v);
        enum { B = 2, T = 21, P = 30 };
        const size_t D = (size_t)p.c.D, n = (size_t)T * D;
        float *x = malloc(sizeof(float) * n), *y = tl_poisoned(n), *yr = tl_poisoned(n);
        tl_fill(x, n, 81, -1, 1);
        assert_true(forward_pair(&p, x, T, y, yr) <= 1e-5); /* spec 9 */
        if (!p.L->wc.release) {
            print_message("backend '%s' keeps no device weights: nothing to fail\n",
                          nsa_context_backend(p.ctx));
            free(x);
            free(y);
            free(yr);
            pair_free(&p);
            return;
        }
        /* unchanged weights: the forward uploads none, so an injected
         * upload failure is never reached */
        nsa_layer_fail_weight_upload_after(p.L, 1);
        assert_true(forward_pair(&p, x, T, y, yr) <= 1e-5); /* spec 9 */
        nsa_layer_fail_weight_upload_after(p.L, 0);

        /* forward: the k-th upload after a change fails */
        const int uploads = v == 0 ? 9 : 6; /* q, k, v (x3 or x1), gate (1 or 2), o */
        for (int k = 1; k <= uploads; k++) {
            assert_int_equal(nsa_layer_weights_changed(p.L), NSA_OK);
            nsa_layer_fail_weight_upload_after(p.L, k);
            for (size_t i = 0; i < n; i++)
                y[i] = NAN;
            assert_int_equal(nsa_layer_forward(p.L, x, T, NULL, 1, y, NULL), NSA_ERR_BACKEND);
            assert_non_null(strstr(nsa_context_last_error(p.ctx), "layer weights"));
            assert_true(all_nan(y, n)); /* no output written */
            assert_true(forward_pair(&p, x, T, y, yr) <= 1e-5); /* spec 9 */
        }
        /* and that was every upload: one more is never reached */
        assert_int_equal(nsa_layer_weights_changed(p.L), NSA_OK);
        nsa_layer_fail_weight_upload_after(p.L, uploads + 1);
        assert_true(forward_pair(&p, x, T, y, yr) <= 1e-5); /* spec 9 */
        nsa_layer_fail_weight_upload_after(p.L, 0);

        /* decode: the same, the state unchanged by the failed step */
        nsa_decode_state *sl, *sr;
        assert_int_equal(nsa_decode_create(p.L, B, 0, &sl), NSA_OK);
        assert_int_equal(nsa_decode_create(p.R, B, 0, &sr), NSA_OK);
        float *xp = malloc(sizeof(float) * P * D);
        tl_fill(xp, (size_t)P * D, 82, -1, 1);
        for (int b = 0; b < B; b++) {
            assert_int_equal(nsa_decode_prefill(sl, b, xp, P - 5 * b, NULL), NSA_OK);
            assert_int_equal(nsa_decode_prefill(sr, b, xp, P - 5 * b, NULL), NSA_OK);
        }
        float *yt = tl_poisoned(B * D), *ytr = tl_poisoned(B * D);
        for (int k = 1; k <= uploads; k++) {
            assert_int_equal(nsa_layer_weights_changed(p.L), NSA_OK);
            nsa_layer_fail_weight_upload_after(p.L, k);
            for (size_t i = 0; i < B * D; i++)
                yt[i] = NAN;
            const float *xt = x + (size_t)k * B * D; /* k * B + B <= T rows */
            assert_int_equal(nsa_decode_step(p.L, sl, xt, yt, NULL), NSA_ERR_BACKEND);
            assert_true(all_nan(yt, B * D));
            for (int b = 0; b < B; b++)
                assert_int_equal(nsa_decode_length(sl, b), nsa_decode_length(sr, b));
            const double e = step_pair(&p, sl, sr, B, xt, yt, ytr);
            if (!(e <= 1e-5)) /* spec 9 */
                fail_msg("variant %d: step after upload failure %d: rel err %g", v, k, e);
        }
        /* on a backend with the device step (both variants: the gate MLP's
         * two linears too): q, the gate and Wo were uploaded (and failed) there */
        if (p.ctx->be->dcache_step && nsa_decode_has_mirror(sl))
            assert_true(nsa_decode_fused_steps(sl) >= uploads);
        nsa_decode_free(sl);
        nsa_decode_free(sr);
        free(xp);
        free(yt);
        free(ytr);
        free(x);
        free(y);
        free(yr);
        pair_free(&p);
    }
}

/* Keyed linears straight through the backend against the reference, over
 * the shapes that pick different device kernels: few rows (a decode step)
 * and many, in a multiple of 4 or not, outputs not a multiple of the
 * work-group's, with and without bias, slots whose rows feed the caches
 * (K) and others (Q, gate, O); then the same keys again (device copies). */
static void test_keyed_linear(void **state)
{
    (void)state;
    nsa_context *ctx = tl_context();
    static const int shapes[][3] = {{1, 16, 7},  {3, 12, 33},  {16, 64, 130}, {17, 20, 9},
                                    {5, 18, 11}, {16, 256, 5}, {2, 1024, 67}, {40, 36, 70}};
    static const int slots[] = {NSA_WSLOT_Q, NSA_WSLOT_K0 + 1, NSA_WSLOT_GATE1, NSA_WSLOT_O};
    for (int pass = 0; pass < 2; pass++) {
        nsa_wcache wc = {NULL, NULL, 0};
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            const int rows = shapes[c][0], in = shapes[c][1], out = shapes[c][2];
            float *x = malloc(sizeof(float) * rows * in), *w = malloc(sizeof(float) * out * in);
            float *b = malloc(sizeof(float) * out), *want = malloc(sizeof(float) * rows * out);
            float *y = tl_poisoned((size_t)rows * out);
            tl_fill(x, (size_t)rows * in, 900 + c, -1, 1);
            tl_fill(w, (size_t)out * in, 910 + c, -1, 1);
            tl_fill(b, (size_t)out, 920 + c, -1, 1);
            const nsa_wkey key = {&wc, slots[c % 4], 1 + c};
            for (int again = 0; again < 2; again++) {
                nsa_linear_job j = {x, rows, in, out, w, c % 2 ? b : NULL, want, NULL};
                assert_int_equal(nsa_ref_linear(ctx, &j), NSA_OK);
                j.y = y;
                j.key = &key;
                for (size_t i = 0; i < (size_t)rows * out; i++)
                    y[i] = NAN;
                assert_int_equal(nsa_run_linear(ctx, &j), NSA_OK);
                const double e = tl_rel_l2(y, want, (size_t)rows * out);
                if (!(e <= 1e-5)) /* spec 9 */
                    fail_msg("rows %d in %d out %d slot %d: rel err %g", rows, in, out,
                             key.slot, e);
            }
            free(x);
            free(w);
            free(b);
            free(want);
            free(y);
        }
        if (wc.release)
            wc.release(wc.data);
    }
    nsa_context_free(ctx);
}

int main(void)
{
    if (tl_skip_half_storage(tl_backend_name()))
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_new_weights),
        cmocka_unit_test(test_decode_new_weights),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_upload_failure),
        cmocka_unit_test(test_keyed_linear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
