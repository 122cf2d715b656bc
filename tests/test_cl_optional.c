/* The OpenCL backend's optional kernels (nsa_cl_feat): a device that cannot
 * run a decode kernel (nsa_dc_*), a device-step kernel (nsa_ds_*), the
 * step's RoPE in double (nsa_dr_*: no fp64) or nsa_linear_rows still runs prefill and decode, with results within spec
 * 9 of the reference, through the host path of what needs the kernel; one
 * that cannot run a core kernel makes the backend unavailable, naming it.
 * NSA_OPENCL_UNUSABLE (a test hook of lib/opencl/cl_backend.c) marks the
 * kernels unusable as a device would. PoCL in CI (NSA_OPENCL_DEVICE="*"
 * when no GPU is present). */
#define _POSIX_C_SOURCE 200809L
#include "cl_internal.h"
#include "decode.h"
#include "testlib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOL 1e-5 /* spec 9: relative L2 of every fp32 output */

static char g_cache_dir[256];
static int g_have_cl; /* a plain opencl context can be made here */

static int setup(void **state)
{
    (void)state;
    snprintf(g_cache_dir, sizeof g_cache_dir, "%s", "/tmp/nsa-cloptional-XXXXXX");
    if (!tl_opencl_setup(g_cache_dir)) /* device choice and a private cache */
        return -1;
    unsetenv("NSA_OPENCL_UNUSABLE");
    nsa_context *c = NULL;
    char msg[NSA_MSG_LEN];
    g_have_cl = nsa_context_create("opencl", &c, msg, sizeof msg) == NSA_OK;
    if (!g_have_cl)
        print_message("opencl not usable: %s\n", msg);
    nsa_context_free(c);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tl_opencl_teardown(g_cache_dir);
    return 0;
}

#define NEED_CL()                                                                              \
    do {                                                                                       \
        if (!g_have_cl) {                                                                      \
            print_message("skipped: no usable opencl device\n");                              \
            skip();                                                                            \
        }                                                                                      \
    } while (0)

/* An opencl context whose kernels in the list (NULL: none) count as
 * unusable; NULL if it cannot be made (msg says why). */
static nsa_context *cl_with(const char *unusable, nsa_status *st, char *msg, size_t len)
{
    nsa_context *c = NULL;
    if (unusable)
        setenv("NSA_OPENCL_UNUSABLE", unusable, 1);
    *st = nsa_context_create("opencl", &c, msg, len);
    unsetenv("NSA_OPENCL_UNUSABLE");
    return c;
}

static nsa_context *cl_ok(const char *unusable)
{
    nsa_status s;
    char msg[NSA_MSG_LEN];
    nsa_context *c = cl_with(unusable, &s, msg, sizeof msg);
    if (s != NSA_OK)
        fail_msg("opencl with %s unusable: %s", unusable ? unusable : "nothing", msg);
    return c;
}

static void within(const float *a, const float *b, size_t n, const char *what)
{
    const double e = tl_rel_l2(a, b, n);
    /* spec 9: relative L2 <= 1e-5 */
    if (!(e <= TOL))
        fail_msg("%s: relative L2 %g against ref", what, e);
}

/* What a run of check_layer saw of the decode state. */
typedef struct seen {
    int mirror;
    int64_t fused;
    int resident; /* the steps were device-resident (nsa_decode_resident) */
} seen;

/* Prefill (the operator and a layer forward over two sequences) and
 * decode (prompt, then steps of two sequences) on ctx against ref, every
 * output within spec 9, the selections equal. */
static seen check_layer(nsa_context *ctx, uint64_t seed)
{
    nsa_context *ref;
    assert_int_equal(nsa_context_create("ref", &ref, NULL, 0), NSA_OK);
    /* the operator */
    {
        const nsa_config cfg = tl_config(4, 2, 16, 8, 8, 4, 16, 3, 1, 1, 24, NSA_MAPPING_OVERLAP);
        const int lens[2] = {90, 37};
        tl_problem p;
        tl_problem_make(&p, &cfg, lens, 2, 0, seed);
        tl_outputs a, r;
        tl_outputs_alloc(&a, &p);
        tl_outputs_alloc(&r, &p);
        tl_forward_plain(ctx, &p, NULL, &a);
        tl_forward_plain(ref, &p, NULL, &r);
        const size_t thd = (size_t)p.T * cfg.H * cfg.dv;
        within(a.out, r.out, thd, "operator out");
        within(a.out_cmp, r.out_cmp, thd, "operator out_cmp");
        within(a.out_slc, r.out_slc, thd, "operator out_slc");
        within(a.out_win, r.out_win, thd, "operator out_win");
        assert_memory_equal(a.sel, r.sel, sizeof(int32_t) * (size_t)p.T * cfg.G * cfg.n);
        tl_outputs_free(&a);
        tl_outputs_free(&r);
        tl_problem_free(&p);
    }
    const nsa_layer_config c = tl_layer_config_small();
    const size_t D = (size_t)c.D;
    nsa_layer *L, *R;
    assert_int_equal(nsa_layer_create(ctx, &c, &L), NSA_OK);
    assert_int_equal(nsa_layer_create(ref, &c, &R), NSA_OK);
    assert_int_equal(nsa_layer_init_random(L, seed), NSA_OK);
    assert_int_equal(nsa_layer_init_random(R, seed), NSA_OK);
    /* a layer forward */
    {
        const int32_t cu[3] = {0, 53, 80};
        const size_t T = 80;
        float *x = malloc(sizeof(float) * T * D), *y = tl_poisoned(T * D),
              *ry = tl_poisoned(T * D);
        tl_fill(x, T * D, seed + 1, -1, 1);
        assert_int_equal(nsa_layer_forward(L, x, (int64_t)T, cu, 2, y, NULL), NSA_OK);
        assert_int_equal(nsa_layer_forward(R, x, (int64_t)T, cu, 2, ry, NULL), NSA_OK);
        within(y, ry, T * D, "layer forward");
        free(x);
        free(y);
        free(ry);
    }
    /* decode: prompts of 37 and 20 tokens, then 9 steps (compressed
     * tokens emitted on the way, the window ring wraps) */
    enum { B = 2, STEPS = 9 };
    const int S[B] = {37, 20};
    nsa_decode_state *sl, *sr;
    assert_int_equal(nsa_decode_create(L, B, 0, &sl), NSA_OK);
    assert_int_equal(nsa_decode_create(R, B, 0, &sr), NSA_OK);
    for (int b = 0; b < B; b++) {
        float *x = malloc(sizeof(float) * (size_t)S[b] * D), *y = tl_poisoned(S[b] * D),
              *ry = tl_poisoned(S[b] * D);
        tl_fill(x, (size_t)S[b] * D, seed + 10 + (uint64_t)b, -1, 1);
        assert_int_equal(nsa_decode_prefill(sl, b, x, S[b], y), NSA_OK);
        assert_int_equal(nsa_decode_prefill(sr, b, x, S[b], ry), NSA_OK);
        within(y, ry, (size_t)S[b] * D, "decode prefill");
        free(x);
        free(y);
        free(ry);
    }
    const size_t bh3 = (size_t)B * c.attn.H * 3, ns = (size_t)B * c.attn.G * c.attn.n;
    float *x = malloc(sizeof(float) * B * D);
    for (int s = 0; s < STEPS; s++) {
        float *y = tl_poisoned(B * D), *ry = tl_poisoned(B * D);
        float *g = tl_poisoned(bh3), *rg = tl_poisoned(bh3);
        int32_t *sel = tl_poisoned_i32(ns), *rsel = tl_poisoned_i32(ns);
        nsa_layer_aux a, r;
        memset(&a, 0, sizeof a);
        memset(&r, 0, sizeof r);
        a.gates = g;
        a.selection = sel;
        r.gates = rg;
        r.selection = rsel;
        tl_fill(x, B * D, seed + 100 + (uint64_t)s, -1, 1);
        assert_int_equal(nsa_decode_step(L, sl, x, y, &a), NSA_OK);
        assert_int_equal(nsa_decode_step(R, sr, x, ry, &r), NSA_OK);
        within(y, ry, B * D, "decode step y");
        within(g, rg, bh3, "decode step gates");
        assert_memory_equal(sel, rsel, sizeof(int32_t) * ns);
        free(y);
        free(ry);
        free(g);
        free(rg);
        free(sel);
        free(rsel);
    }
    for (int b = 0; b < B; b++)
        assert_int_equal(nsa_decode_length(sl, b), S[b] + STEPS);
    seen v = {nsa_decode_has_mirror(sl), nsa_decode_fused_steps(sl), nsa_decode_resident(sl)};
    free(x);
    nsa_decode_free(sl);
    nsa_decode_free(sr);
    nsa_layer_free(L);
    nsa_layer_free(R);
    nsa_context_free(ref);
    return v;
}

/* The kernel is NULL in every built program, why kept. */
static void assert_dropped(nsa_context *ctx, int k)
{
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    assert_non_null(st);
    int built = 0;
    for (int kv = 0; kv < NSA_CL_KV_COUNT; kv++)
        if (st->program[kv]) {
            built++;
            assert_null(st->kernel[kv][k]);
            assert_non_null(strstr(st->kernel_why[kv][k], "NSA_OPENCL_UNUSABLE"));
            for (int j = 0; j < NSA_CLK_COUNT; j++)
                if (nsa_cl_kernel_feat(j) == NSA_CLF_CORE)
                    assert_non_null(st->kernel[kv][j]);
        }
    assert_true(built >= 1);
}

/* Control: with every kernel usable the mirror and the fused step run
 * (so the tests below can tell their fallbacks from the normal path). */
static void test_all_usable(void **s)
{
    (void)s;
    NEED_CL();
    nsa_context *ctx = cl_ok(NULL);
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    /* (a device that cannot run them itself takes the fallbacks here too) */
    const int dec = nsa_cl_feature(ctx, st, st->kv, NSA_CLF_DECODE) == NSA_OK;
    const int step = dec && nsa_cl_feature(ctx, st, st->kv, NSA_CLF_STEP) == NSA_OK;
    if (!step)
        print_message("note: the device itself cannot run the %s kernels\n",
                      dec ? "device-step" : "decode");
    const seen v = check_layer(ctx, 11);
    assert_int_equal(v.mirror, dec);
    assert_int_equal(v.fused, step ? 9 : 0);
    nsa_context_free(ctx);
}

static void test_decode_kernels_unusable(void **s)
{
    (void)s;
    NEED_CL();
    nsa_context *ctx = cl_ok("nsa_dc_partial");
    assert_dropped(ctx, NSA_CLK_DC_PARTIAL);
    /* the mirror says unsupported, naming the kernel */
    const nsa_config cfg = tl_layer_config_small().attn;
    int dummy;
    void *dc = &dummy; /* must become NULL */
    assert_int_equal(ctx->be->dcache_new(ctx, &cfg, 2, &dc), NSA_ERR_UNSUPPORTED);
    assert_null(dc);
    assert_non_null(strstr(nsa_context_last_error(ctx), "nsa_dc_partial"));
    /* prefill and decode on the host caches, results as ref's */
    const seen v = check_layer(ctx, 12);
    assert_false(v.mirror);
    assert_int_equal(v.fused, 0);
    nsa_context_free(ctx);
}

static void test_step_kernels_unusable(void **s)
{
    (void)s;
    NEED_CL();
    nsa_context *ctx = cl_ok("nsa_ds_gate");
    assert_dropped(ctx, NSA_CLK_DS_GATE);
    /* the mirror stays, the steps run q, gates and Wo on their own */
    const seen v = check_layer(ctx, 13);
    assert_true(v.mirror);
    assert_int_equal(v.fused, 0);
    nsa_context_free(ctx);
}

/* Calls of the profiled kernel label on ctx (NSA_OPENCL_PROFILE=1). */
static long calls_of(nsa_context *ctx, const char *label)
{
    const nsa_cl_state *st = nsa_cl_state_of(ctx);
    for (int i = 0; i < st->n_prof; i++)
        if (strcmp(st->prof[i].label, label) == 0)
            return st->prof[i].calls;
    return 0;
}

static void test_rows_kernel_unusable(void **s)
{
    (void)s;
    NEED_CL();
    setenv("NSA_OPENCL_PROFILE", "1", 1);
    /* its tensor-core variant too (cl/linear_mma.cl: optional on its own) */
    nsa_context *plain = cl_ok(NULL), *ctx = cl_ok("nsa_linear_rows,nsa_linear_rows_mma");
    unsetenv("NSA_OPENCL_PROFILE");
    assert_dropped(ctx, NSA_CLK_LINEAR_ROWS);
    const nsa_cl_state *cs = nsa_cl_state_of(ctx);
    assert_null(cs->mma_kernel[cs->kv][NSA_CLM_LINEAR_ROWS]);
    check_layer(ctx, 14);
    assert_int_equal(calls_of(ctx, "nsa_linear_rows") + calls_of(ctx, "nsa_linear_rows_mma"), 0);
    assert_true(calls_of(ctx, "nsa_linear") > 0);
    /* where the device runs one, the same work uses it: the tensor-core
     * kernel where there is one */
    const nsa_cl_state *ps = nsa_cl_state_of(plain);
    const int mma = ps->mma_kernel[ps->kv][NSA_CLM_LINEAR_ROWS] != NULL;
    if (mma || ps->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR_ROWS]) {
        check_layer(plain, 14);
        assert_true(calls_of(plain, mma ? "nsa_linear_rows_mma" : "nsa_linear_rows") > 0);
        assert_int_equal(calls_of(plain, mma ? "nsa_linear_rows" : "nsa_linear_rows_mma"), 0);
    }
    nsa_context_free(plain);
    nsa_context_free(ctx);
}

/* NSA_OPENCL_PROFILE=2 (the timeline: launches timed without waiting for
 * each): the same work as with 1 gives the same outputs (check_layer) and
 * the same launches under the same labels, every one timed; the fused
 * steps read their own timeline at their end, and nothing stays pending
 * after a flush. */
static void test_profile_timeline(void **s)
{
    (void)s;
    NEED_CL();
    setenv("NSA_OPENCL_PROFILE", "1", 1);
    nsa_context *one = cl_ok(NULL);
    setenv("NSA_OPENCL_PROFILE", "2", 1);
    nsa_context *two = cl_ok(NULL);
    unsetenv("NSA_OPENCL_PROFILE");
    nsa_cl_state *s1 = nsa_cl_state_of(one), *s2 = nsa_cl_state_of(two);
    assert_int_equal(s1->profile, 1);
    assert_int_equal(s2->profile, 2);
    const seen v1 = check_layer(one, 16), v2 = check_layer(two, 16);
    assert_int_equal(v1.fused, v2.fused);
    assert_true(s2->n_tl <= NSA_CL_TL_MAX);
    assert_int_equal(nsa_cl_tl_flush(s2, two, NULL), NSA_OK);
    assert_int_equal(s2->n_tl, 0);
    assert_int_equal(s1->n_tl, 0); /* mode 1 keeps nothing */
    assert_int_equal(s2->n_prof, s1->n_prof);
    for (int i = 0; i < s1->n_prof; i++) {
        assert_int_equal(calls_of(two, s1->prof[i].label), s1->prof[i].calls);
        assert_true(s2->prof[i].ns > 0.0);
    }
    /* an operator call's launches stay kept until a flush reads them */
    {
        const nsa_config cfg = tl_config(4, 2, 16, 8, 8, 4, 16, 3, 1, 1, 24, NSA_MAPPING_OVERLAP);
        const int lens[1] = {40};
        tl_problem p;
        tl_problem_make(&p, &cfg, lens, 1, 0, 17);
        tl_outputs a;
        tl_outputs_alloc(&a, &p);
        long before = 0, after = 0;
        double ns_before = 0.0, ns_after = 0.0, ns_read = 0.0;
        for (int i = 0; i < s2->n_prof; i++) {
            before += s2->prof[i].calls;
            ns_before += s2->prof[i].ns;
        }
        tl_forward_plain(two, &p, NULL, &a);
        const int kept = s2->n_tl;
        assert_true(kept > 0);
        char labels[NSA_CL_TL_MAX][32];
        for (int i = 0; i < kept; i++) {
            memcpy(labels[i], s2->tl[i].label, sizeof labels[i]);
            s2->tl[i].t0 = s2->tl[i].t1 = 0; /* poisoned: the flush sets them */
        }
        assert_int_equal(nsa_cl_tl_flush(s2, two, "test"), NSA_OK);
        assert_int_equal(s2->n_tl, 0);
        for (int i = 0; i < s2->n_prof; i++) {
            after += s2->prof[i].calls;
            ns_after += s2->prof[i].ns;
        }
        assert_int_equal(after - before, kept);
        /* what it read stays for the benches' spans: the same launches in
         * enqueue order (an in-order queue starts them in that order), the
         * times the profile got */
        assert_int_equal(s2->n_tl_read, kept);
        for (int i = 0; i < kept; i++) {
            assert_string_equal(s2->tl[i].label, labels[i]);
            assert_true(s2->tl[i].t0 > 0 && s2->tl[i].t1 >= s2->tl[i].t0);
            assert_true(i == 0 || s2->tl[i].t0 >= s2->tl[i - 1].t0);
            ns_read += (double)(s2->tl[i].t1 - s2->tl[i].t0);
        }
        assert_true(fabs(ns_after - ns_before - ns_read) <= 1e-6 * ns_read);
        assert_int_equal(nsa_cl_tl_flush(s2, two, NULL), NSA_OK);
        assert_int_equal(s2->n_tl_read, 0); /* nothing kept: nothing read */
        tl_outputs_free(&a);
        tl_problem_free(&p);
    }
    nsa_context_free(one);
    nsa_context_free(two);
}

/* The fused step's x and y through pinned host memory (the default) and
 * through the caller's pageable memory (NSA_OPENCL_PINNED=0) give the same
 * bits: the same device work, only the transfers' host side differs. Both
 * against the reference too (spec 9), so an unwritten y fails. */
static void test_pinned_steps(void **s)
{
    (void)s;
    NEED_CL();
    nsa_context *ctx = cl_ok(NULL), *ref;
    assert_int_equal(nsa_context_create("ref", &ref, NULL, 0), NSA_OK);
    const nsa_layer_config c = tl_layer_config_small();
    const size_t D = (size_t)c.D;
    nsa_layer *L, *R;
    assert_int_equal(nsa_layer_create(ctx, &c, &L), NSA_OK);
    assert_int_equal(nsa_layer_create(ref, &c, &R), NSA_OK);
    assert_int_equal(nsa_layer_init_random(L, 41), NSA_OK);
    assert_int_equal(nsa_layer_init_random(R, 41), NSA_OK);
    enum { B = 2, STEPS = 6, P = 29 };
    nsa_decode_state *st[3]; /* pinned, pageable, reference */
    setenv("NSA_OPENCL_PINNED", "0", 1);
    assert_int_equal(nsa_decode_create(L, B, 0, &st[1]), NSA_OK);
    unsetenv("NSA_OPENCL_PINNED");
    assert_int_equal(nsa_decode_create(L, B, 0, &st[0]), NSA_OK);
    assert_int_equal(nsa_decode_create(R, B, 0, &st[2]), NSA_OK);
    float *x = malloc(sizeof(float) * P * D);
    for (int b = 0; b < B; b++) {
        tl_fill(x, P * D, 42 + (uint64_t)b, -1, 1);
        for (int i = 0; i < 3; i++)
            assert_int_equal(nsa_decode_prefill(st[i], b, x, P - 7 * b, NULL), NSA_OK);
    }
    for (int k = 0; k < STEPS; k++) {
        float *y[3];
        tl_fill(x, B * D, 50 + (uint64_t)k, -1, 1);
        for (int i = 0; i < 3; i++) {
            y[i] = tl_poisoned(B * D);
            assert_int_equal(nsa_decode_step(i < 2 ? L : R, st[i], x, y[i], NULL), NSA_OK);
        }
        assert_memory_equal(y[0], y[1], sizeof(float) * B * D);
        within(y[0], y[2], B * D, "pinned step y");
        for (int i = 0; i < 3; i++)
            free(y[i]);
    }
    assert_true(nsa_decode_fused_steps(st[0]) && nsa_decode_fused_steps(st[1]));
    for (int i = 0; i < 3; i++)
        nsa_decode_free(st[i]);
    free(x);
    nsa_layer_free(L);
    nsa_layer_free(R);
    nsa_context_free(ctx);
    nsa_context_free(ref);
}

/* A device without fp64 (nsa_dr_rope unusable; cl/rope64.cl): the fused
 * step still runs, rotating q by the host's angles (nsa_ds_rope), and with
 * fp32 storage its steps stay device-resident, the keys of every branch
 * rotated by the same angles; where the device has the kernel the same
 * steps use it and never nsa_ds_rope. */
static void test_rope64_unusable(void **s)
{
    (void)s;
    NEED_CL();
    setenv("NSA_OPENCL_PROFILE", "1", 1);
    nsa_context *plain = cl_ok(NULL), *ctx = cl_ok("nsa_dr_rope");
    unsetenv("NSA_OPENCL_PROFILE");
    assert_dropped(ctx, NSA_CLK_DR_ROPE);
    nsa_cl_state *st = nsa_cl_state_of(ctx);
    const int step = nsa_cl_feature(ctx, st, st->kv, NSA_CLF_DECODE) == NSA_OK &&
                     nsa_cl_feature(ctx, st, st->kv, NSA_CLF_STEP) == NSA_OK;
    /* launches a step: q, and on device-resident steps (fp32 storage) the
     * K projection of each branch; tl_layer_config_small rotates before
     * phi, so no compressed token is rotated */
    const nsa_layer_config lc = tl_layer_config_small();
    assert_int_equal(lc.rope_cmp, NSA_ROPE_BEFORE);
    const long per =
        1 + (st->kv == NSA_CL_KV_F32 && lc.rope_dim > 0 ? (lc.shared_kv ? 1 : 3) : 0);
    const seen v = check_layer(ctx, 15);
    assert_int_equal(v.fused, step ? 9 : 0);
    assert_int_equal(v.resident, step && st->kv == NSA_CL_KV_F32);
    assert_int_equal(calls_of(ctx, "nsa_dr_rope"), 0);
    assert_int_equal(calls_of(ctx, "nsa_ds_rope"), step ? 9 * per : 0);
    if (step && nsa_cl_state_of(plain)->kernel[NSA_CL_KV_F32][NSA_CLK_DR_ROPE]) {
        const seen p = check_layer(plain, 15);
        assert_int_equal(p.fused, 9);
        assert_int_equal(p.resident, v.resident);
        /* q by nsa_dr_rope, the keys of every branch in one nsa_dr_rope_keys */
        assert_int_equal(calls_of(plain, "nsa_dr_rope"), 9);
        assert_int_equal(calls_of(plain, "nsa_dr_rope_keys"), per > 1 ? 9 : 0);
        assert_int_equal(calls_of(plain, "nsa_ds_rope"), 0);
    }
    nsa_context_free(plain);
    nsa_context_free(ctx);
}

static void test_core_kernel_unusable(void **s)
{
    (void)s;
    NEED_CL();
    const char *core[] = {"nsa_gate", "nsa_dc_put,nsa_group_attn", "nsa_linear"};
    for (size_t i = 0; i < sizeof core / sizeof core[0]; i++) {
        nsa_status st;
        char msg[NSA_MSG_LEN];
        nsa_context *c = cl_with(core[i], &st, msg, sizeof msg);
        assert_int_equal(st, NSA_ERR_UNAVAILABLE);
        assert_null(c);
        const char *name = strrchr(core[i], ',') ? strrchr(core[i], ',') + 1 : core[i];
        char want[64];
        snprintf(want, sizeof want, "kernel %s unusable", name);
        if (!strstr(msg, want) || !strstr(msg, "NSA_OPENCL_UNUSABLE"))
            fail_msg("%s: message '%s' does not name it", core[i], msg);
        /* the API entry point says the same */
        setenv("NSA_OPENCL_UNUSABLE", core[i], 1);
        assert_int_equal(nsa_context_create_opencl(NULL, &c, msg, sizeof msg),
                         NSA_ERR_UNAVAILABLE);
        assert_null(c);
        assert_non_null(strstr(msg, want));
        /* "auto" moves on to the next backend that starts (issue 5) */
        char *env = getenv("NSA_BACKEND") ? strdup(getenv("NSA_BACKEND")) : NULL;
        unsetenv("NSA_BACKEND");
        assert_int_equal(nsa_context_create("auto", &c, msg, sizeof msg), NSA_OK);
        if (env) {
            setenv("NSA_BACKEND", env, 1);
            free(env);
        }
        unsetenv("NSA_OPENCL_UNUSABLE");
        assert_non_null(c);
        assert_string_not_equal(nsa_context_backend(c), "opencl");
        nsa_context_free(c);
    }
    /* names match whole ("nsa_linear_row" names neither nsa_linear nor
     * nsa_linear_rows); an optional kernel alone leaves the backend up */
    nsa_context *c = cl_ok("nsa_linear_row,nsa_dc_prob");
    const nsa_cl_state *cs = nsa_cl_state_of(c);
    assert_non_null(cs->kernel[NSA_CL_KV_F32][NSA_CLK_LINEAR]);
    assert_null(strstr(cs->kernel_why[NSA_CL_KV_F32][NSA_CLK_LINEAR_ROWS], "NSA_OPENCL"));
    assert_null(cs->kernel[NSA_CL_KV_F32][NSA_CLK_DC_PROB]);
    nsa_context_free(c);
}

int main(void)
{
    if (tl_skip_half_storage("opencl"))
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_usable),
        cmocka_unit_test(test_decode_kernels_unusable),
        cmocka_unit_test(test_step_kernels_unusable),
        cmocka_unit_test(test_rows_kernel_unusable),
        cmocka_unit_test(test_rope64_unusable),
        cmocka_unit_test(test_profile_timeline),
        cmocka_unit_test(test_pinned_steps),
        cmocka_unit_test(test_core_kernel_unusable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
