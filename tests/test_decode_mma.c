/* The tensor-core decode partial kernel (cl/mma.cl's nsa_dc_partial_mma)
 * where the device has tensor cores for it (NVIDIA, compute capability >=
 * 8.0, work-groups of whole warps): it must be the kernel that runs, every
 * partial launch of the decode step, the attention and the dense baseline
 * over the mirror (the profile names the kernel of each launch), and its
 * results must equal the portable kernel's (NSA_OPENCL_MMA=0) within spec
 * 9, with the same selections; with fp16 and bf16 K/V storage too (the
 * kernel skips the lo words of K and V there). A capable device whose tensor-core build or
 * kernel is unusable fails here (the library itself falls back silently);
 * other devices (PoCL in CI) skip, saying so. */
#define _POSIX_C_SOURCE 200809L /* setenv, mkdtemp */
#include "cl_testlib.h"
#include "decode.h"
#include "testlib.h"

#include <stdlib.h>
#include <string.h>

#define TOL 1e-5 /* spec 9: relative L2 of every fp32 output */


static char g_cache_dir[256];
static int g_skipped; /* reported to automake as a skip (77), not a pass */

static int setup(void **state)
{
    (void)state;
    snprintf(g_cache_dir, sizeof g_cache_dir, "%s", "/tmp/nsa-decmma-XXXXXX");
    if (!tl_opencl_setup(g_cache_dir)) /* device choice and a private cache */
        return -1;
    /* profiled queues: the kernel of every launch is recorded by name */
    setenv("NSA_OPENCL_PROFILE", "1", 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tl_opencl_teardown(g_cache_dir);
    return 0;
}

/* An opencl context with (mma = 1) or without (NSA_OPENCL_MMA=0) the
 * tensor-core program, K/V stored as kv (NSA_OPENCL_KV; NULL: as the
 * environment says, fp32 by default); NULL if none can be made here. The
 * caller's NSA_OPENCL_KV is restored, so every NULL-kv context of a run
 * gets the same storage. */
static nsa_context *cl_ctx(int mma, const char *kv)
{
    if (mma)
        unsetenv("NSA_OPENCL_MMA");
    else
        setenv("NSA_OPENCL_MMA", "0", 1);
    const char *env = getenv("NSA_OPENCL_KV");
    char old[16] = "";
    const int had = env && strlen(env) < sizeof old;
    if (had)
        strcpy(old, env);
    if (kv)
        setenv("NSA_OPENCL_KV", kv, 1);
    nsa_context *c = NULL;
    char msg[NSA_MSG_LEN];
    if (nsa_context_create("opencl", &c, msg, sizeof msg) != NSA_OK) {
        print_message("opencl not usable: %s\n", msg);
        c = NULL;
    }
    unsetenv("NSA_OPENCL_MMA");
    if (kv) {
        if (had)
            setenv("NSA_OPENCL_KV", old, 1);
        else
            unsetenv("NSA_OPENCL_KV");
    }
    return c;
}

/* Calls of the profiled partial launches whose label starts with prefix
 * (then "(": the kernel's name exactly). */
static long partial_calls(const nsa_cl_state *st, const char *prefix)
{
    const size_t n = strlen(prefix);
    long calls = 0;
    for (int i = 0; i < st->n_prof; i++)
        if (strncmp(st->prof[i].label, prefix, n) == 0 && st->prof[i].label[n] == '(')
            calls += st->prof[i].calls;
    return calls;
}

static nsa_layer_config layer_cfg(int H, int G, int dk, int dv, int n)
{
    nsa_layer_config c = nsa_layer_config_default();
    c.attn.H = H;
    c.attn.G = G;
    c.attn.dk = dk;
    c.attn.dv = dv;
    c.attn.l = 16;
    c.attn.d = 8;
    c.attn.l_sel = 16;
    c.attn.n = n;
    c.attn.w = 40;
    c.D = 24;
    c.rope_dim = dk;
    return c;
}

/* One side: a layer and a decode state of B sequences on ctx. */
typedef struct side {
    nsa_layer *L;
    nsa_decode_state *st;
} side;

static void side_make(side *s, nsa_context *ctx, const nsa_layer_config *c, int B,
                      const int *prompt, uint64_t seed)
{
    assert_int_equal(nsa_layer_create(ctx, c, &s->L), NSA_OK);
    assert_int_equal(nsa_layer_init_random(s->L, seed), NSA_OK);
    assert_int_equal(nsa_decode_create(s->L, B, 0, &s->st), NSA_OK);
    assert_true(nsa_decode_has_mirror(s->st));
    for (int b = 0; b < B; b++) {
        float *x = malloc(sizeof(float) * (size_t)prompt[b] * c->D);
        tl_fill(x, (size_t)prompt[b] * c->D, seed * 7 + (uint64_t)b, -1, 1);
        assert_int_equal(nsa_decode_prefill(s->st, b, x, prompt[b], NULL), NSA_OK);
        free(x);
    }
}

static void side_free(side *s)
{
    nsa_decode_free(s->st);
    nsa_layer_free(s->L);
}

/* Relative L2 between the decode attention of sides a and b over their
 * mirrors (dense = 1: the dense baseline), the same q and gates on both;
 * the outputs poisoned first, so an unwritten element shows. sa, sb get
 * the selections (untouched when dense). */
static double attend_l2(side *a, side *b, const float *q, const float *g, size_t bhd,
                        int32_t *sa, int32_t *sb, int dense)
{
    float *oa = tl_poisoned(bhd), *ob = tl_poisoned(bhd);
    assert_int_equal(nsa_decode_attend_cached(a->st, q, g, oa, sa, dense), NSA_OK);
    assert_int_equal(nsa_decode_attend_cached(b->st, q, g, ob, sb, dense), NSA_OK);
    const double e = tl_rel_l2(oa, ob, bhd);
    free(oa);
    free(ob);
    return e;
}

/* The same layer, prompts and inputs on the tensor-core context m and the
 * portable one p: decode steps (the device step), then the attention and
 * the dense baseline over the mirrors with the same q and gates. Returns
 * the worst relative L2 seen. chunk: NSA_OPENCL_DECODE_CHUNK (several
 * chunks a branch: the merge of the fused final), window: "early" or
 * NULL. */
static double compare(nsa_context *m, nsa_context *p, int H, int G, int dk, int dv, int n,
                      const char *chunk, const char *window)
{
    nsa_cl_state *sm = nsa_cl_state_of(m), *sp = nsa_cl_state_of(p);
    const nsa_layer_config c = layer_cfg(H, G, dk, dv, n);
    enum { B = 3, STEPS = 6 };
    const int prompt[B] = {700, 333, 1};
    if (chunk)
        setenv("NSA_OPENCL_DECODE_CHUNK", chunk, 1);
    if (window)
        setenv("NSA_OPENCL_DECODE_WINDOW", window, 1);
    side a, b;
    side_make(&a, m, &c, B, prompt, 5 + (uint64_t)H);
    side_make(&b, p, &c, B, prompt, 5 + (uint64_t)H);
    unsetenv("NSA_OPENCL_DECODE_CHUNK");
    unsetenv("NSA_OPENCL_DECODE_WINDOW");
    sm->n_prof = sp->n_prof = 0; /* from here: the decode's launches alone */
    const size_t D = (size_t)c.D, bhd = (size_t)B * H * dv, ns = (size_t)B * G * n;
    float *x = malloc(sizeof(float) * B * D), *ya = tl_poisoned(B * D), *yb = tl_poisoned(B * D);
    int32_t *sa = tl_poisoned_i32(ns), *sb = tl_poisoned_i32(ns);
    double worst = 0.0;
    const int64_t fa = nsa_decode_fused_steps(a.st), fb = nsa_decode_fused_steps(b.st);
    for (int s = 0; s < STEPS; s++) {
        tl_fill(x, B * D, 100 + (uint64_t)s, -1, 1);
        nsa_layer_aux aux;
        memset(&aux, 0, sizeof aux);
        aux.selection = sa;
        assert_int_equal(nsa_decode_step(a.L, a.st, x, ya, &aux), NSA_OK);
        aux.selection = sb;
        assert_int_equal(nsa_decode_step(b.L, b.st, x, yb, &aux), NSA_OK);
        const double e = tl_rel_l2(ya, yb, B * D);
        worst = e > worst ? e : worst;
        /* spec 9: relative L2 <= 1e-5 */
        if (!(e <= TOL))
            fail_msg("step %d: tensor-core vs portable relative L2 %g", s, e);
        assert_memory_equal(sa, sb, sizeof(int32_t) * ns);
    }
    /* both ran the step on the device (the partial kernels under test) */
    assert_int_equal(nsa_decode_fused_steps(a.st) - fa, STEPS);
    assert_int_equal(nsa_decode_fused_steps(b.st) - fb, STEPS);
    float *q = malloc(sizeof(float) * B * H * dk), *g = malloc(sizeof(float) * B * H * 3);
    tl_fill(q, (size_t)B * H * dk, 200, -1, 1);
    tl_fill(g, (size_t)B * H * 3, 201, 0, 1);
    double e = attend_l2(&a, &b, q, g, bhd, sa, sb, 0);
    worst = e > worst ? e : worst;
    assert_true(e <= TOL); /* spec 9 */
    assert_memory_equal(sa, sb, sizeof(int32_t) * ns);
    e = attend_l2(&a, &b, q, g, bhd, sa, sb, 1);
    worst = e > worst ? e : worst;
    assert_true(e <= TOL); /* spec 9 */
    /* the kernels that ran: each launch of the tensor-core side on
     * nsa_dc_partial_mma (compressed, selected + window, dense: 2 a step
     * and attention, 1 the dense), none on the portable kernel; the
     * portable side the other way round */
    const long want = 2 * (STEPS + 1) + 1;
    if (partial_calls(sm, "nsa_dc_partial_mma") != want ||
        partial_calls(sm, "nsa_dc_partial") != 0)
        fail_msg("tensor-core context: %ld launches of nsa_dc_partial_mma (want %ld), %ld of "
                 "nsa_dc_partial (want 0)",
                 partial_calls(sm, "nsa_dc_partial_mma"), want,
                 partial_calls(sm, "nsa_dc_partial"));
    assert_int_equal(partial_calls(sp, "nsa_dc_partial"), want);
    assert_int_equal(partial_calls(sp, "nsa_dc_partial_mma"), 0);
    free(x);
    free(ya);
    free(yb);
    free(sa);
    free(sb);
    free(q);
    free(g);
    side_free(&a);
    side_free(&b);
    return worst;
}

static void test_mma_partial_active_and_equal(void **state)
{
    (void)state;
    nsa_context *m = cl_ctx(1, NULL);
    if (!m) {
        print_message("skipped: no usable opencl device\n");
        g_skipped = 1;
        skip();
    }
    nsa_cl_state *sm = nsa_cl_state_of(m);
    const char *why = tl_mma_unsupported(sm);
    if (why) {
        print_message("skipped: no tensor-core decode kernel on %s (%s)\n", sm->device_name, why);
        nsa_context_free(m);
        g_skipped = 1;
        skip();
    }
    /* a capable device: the kernel must exist (the library would fall
     * back to the portable one without a word) */
    if (!sm->mma_kernel[sm->kv][NSA_CLM_DC_PARTIAL])
        fail_msg("%s supports tensor cores but nsa_dc_partial_mma is unusable: %s",
                 sm->device_name, sm->mma_why[sm->kv][NSA_CLM_DC_PARTIAL]);
    nsa_context *p = cl_ctx(0, NULL);
    assert_non_null(p);
    assert_null(nsa_cl_state_of(p)->mma_kernel[nsa_cl_state_of(p)->kv][NSA_CLM_DC_PARTIAL]);
    double w = compare(m, p, 32, 2, 192, 128, 6, NULL, NULL); /* the paper's head shape */
    print_message("paper head shape: worst relative L2 %.3g\n", w);
    w = compare(m, p, 32, 2, 192, 128, 6, "64", NULL); /* several chunks a branch */
    print_message("paper head shape, chunks of 64: worst relative L2 %.3g\n", w);
    w = compare(m, p, 10, 2, 20, 12, 5, "48,40", "early"); /* 5 heads, padded dk, dv */
    print_message("5 heads a group, dk 20, dv 12, window early: worst relative L2 %.3g\n", w);
    w = compare(m, p, 40, 2, 8, 4, 6, NULL, NULL); /* 20 heads: two work-groups a group */
    print_message("20 heads a group: worst relative L2 %.3g\n", w);
    nsa_context_free(m);
    nsa_context_free(p);
}

/* The dense decode attention over the mirrors of half (K/V stored as
 * fp16 or bf16, tensor-core kernel) and f (fp32 storage, portable
 * kernel), the same layer, prompts and q on both: the caches hold the
 * same fp32 keys and values, rounded on upload on the half side only.
 * Bound as test_opencl's half_case against the fp32 reference (the
 * portable fp32 kernel is held to the reference by test_decode): each
 * stored value moves by at most u relative (2^-11 fp16, 2^-8 bf16), the
 * output by about (1 + 2 * 2) u, so 50u bounds the relative L2 with
 * margin, yet a wrong kernel (errors O(1)) fails. Returns that L2. */
static double storage_bound(nsa_context *half, nsa_context *f, double u)
{
    const int H = 32, G = 2, dk = 192, dv = 128; /* the paper's head shape */
    const nsa_layer_config c = layer_cfg(H, G, dk, dv, 6);
    enum { B = 3 };
    const int prompt[B] = {700, 333, 1};
    side a, b;
    side_make(&a, half, &c, B, prompt, 77);
    side_make(&b, f, &c, B, prompt, 77);
    const size_t bhd = (size_t)B * H * dv;
    float *q = malloc(sizeof(float) * B * H * dk), *g = malloc(sizeof(float) * B * H * 3);
    tl_fill(q, (size_t)B * H * dk, 300, -1, 1);
    tl_fill(g, (size_t)B * H * 3, 301, 0, 1);
    int32_t sel[B * G * 6]; /* untouched when dense */
    const double e = attend_l2(&a, &b, q, g, bhd, sel, sel, 1);
    if (!(e <= 50 * u))
        fail_msg("half storage vs fp32: relative L2 %g above 50u = %g", e, 50 * u);
    /* and the rounding really happened: fp32 agreement would be < 1e-6 */
    assert_true(e > 1e-6);
    free(q);
    free(g);
    side_free(&a);
    side_free(&b);
    return e;
}

/* fp16 and bf16 K/V storage (NSA_OPENCL_KV): the tensor-core kernel skips
 * the lo words of K and V there (cl/mma_frag.cl's MMA_3KV; the stored
 * values are exact in tf32), so it must still equal the portable kernel
 * on the same stored values within spec 9 (the same arithmetic on the
 * same values), and the half storage must stay within its rounding bound
 * of fp32 storage. */
static void test_mma_partial_half_storage(void **state)
{
    (void)state;
    static const char *const name[2] = {"fp16", "bf16"};
    static const nsa_cl_kv kind[2] = {NSA_CL_KV_F16, NSA_CL_KV_BF16};
    static const double u[2] = {0x1p-11, 0x1p-8};
    nsa_context *f = cl_ctx(0, "fp32"); /* the fp32 side, whatever the run's NSA_OPENCL_KV */
    if (!f) {
        print_message("skipped: no usable opencl device\n");
        g_skipped = 1;
        skip();
    }
    const char *why = tl_mma_unsupported(nsa_cl_state_of(f));
    if (why) {
        print_message("skipped: no tensor-core decode kernel on %s (%s)\n",
                      nsa_cl_state_of(f)->device_name, why);
        nsa_context_free(f);
        g_skipped = 1;
        skip();
    }
    for (int i = 0; i < 2; i++) {
        nsa_context *m = cl_ctx(1, name[i]), *p = cl_ctx(0, name[i]);
        assert_non_null(m);
        assert_non_null(p);
        nsa_cl_state *sm = nsa_cl_state_of(m);
        assert_int_equal(sm->kv, kind[i]);
        assert_int_equal(nsa_cl_state_of(p)->kv, kind[i]);
        if (!sm->mma_kernel[kind[i]][NSA_CLM_DC_PARTIAL])
            fail_msg("%s: nsa_dc_partial_mma unusable with %s storage: %s", sm->device_name,
                     name[i], sm->mma_why[kind[i]][NSA_CLM_DC_PARTIAL]);
        double w = compare(m, p, 32, 2, 192, 128, 6, NULL, NULL);
        print_message("%s, paper head shape: worst relative L2 %.3g\n", name[i], w);
        w = compare(m, p, 10, 2, 20, 12, 5, "48,40", "early");
        print_message("%s, 5 heads, dk 20, dv 12, window early: worst relative L2 %.3g\n",
                      name[i], w);
        w = storage_bound(m, f, u[i]);
        print_message("%s vs fp32 storage, dense: relative L2 %.3g (bound %.3g)\n", name[i], w,
                      50 * u[i]);
        nsa_context_free(m);
        nsa_context_free(p);
    }
    nsa_context_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mma_partial_active_and_equal),
        cmocka_unit_test(test_mma_partial_half_storage),
    };
    const int rc = cmocka_run_group_tests(tests, setup, teardown);
    return rc == 0 && g_skipped ? 77 : rc;
}
