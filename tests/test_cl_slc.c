/* The OpenCL selected branch with several tokens a work-group
 * (nsa_slc_attn, nsa_slc_attn_mma; cl/attn.cl, cl/attn_mma.cl): a
 * work-group walks the union of its tokens' selections and applies each
 * loaded block to every token that selected it. Against the scalar
 * reference with the same selection fed in, token by token, on
 * selections built to stress that walk: blocks shared by every token,
 * disjoint ones, random ones, sequence boundaries and the batch's end
 * inside a work-group's tokens, fewer tokens at launch than compiled
 * (NSA_TQ), heads split over work-groups, blocks longer than a key tile;
 * fp16 and bf16 K/V storage. */
#define _POSIX_C_SOURCE 200809L
#include "cl_internal.h"
#include "testlib.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOL 1e-5 /* spec 9: relative L2 of every fp32 output (here per token) */
#define TQ 4     /* tokens a work-group in this suite (NSA_OPENCL_SLC_TQ) */

static nsa_context *g_ctx, *g_ref; /* g_ctx: the context under test now */
static nsa_context *g_tq[2];       /* TQ tokens, and one token (nsa_slc_attn at 1) */
static nsa_cl_kv g_kv = NSA_CL_KV_F32; /* K/V storage of the context under test */
static char g_cache_dir[256];

static nsa_context *cl_with_tq(int tq)
{
    char msg[NSA_MSG_LEN], v[8];
    nsa_context *c = NULL;
    snprintf(v, sizeof v, "%d", tq);
    setenv("NSA_OPENCL_SLC_TQ", v, 1);
    if (nsa_context_create("opencl", &c, msg, sizeof msg) != NSA_OK) {
        print_message("opencl not usable: %s\n", msg);
        c = NULL;
    }
    unsetenv("NSA_OPENCL_SLC_TQ");
    return c;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_cache_dir, sizeof g_cache_dir, "%s", "/tmp/nsa-clslc-XXXXXX");
    if (!tl_opencl_setup(g_cache_dir))
        return -1;
    char msg[NSA_MSG_LEN];
    if (nsa_context_create("ref", &g_ref, msg, sizeof msg) != NSA_OK)
        return -1;
    g_tq[0] = cl_with_tq(TQ);
    g_tq[1] = g_tq[0] ? cl_with_tq(1) : NULL;
    g_ctx = g_tq[0];
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nsa_context_free(g_tq[0]);
    nsa_context_free(g_tq[1]);
    nsa_context_free(g_ref);
    tl_opencl_teardown(g_cache_dir);
    return 0;
}

#define NEED_CTX()                                                                             \
    do {                                                                                       \
        if (!g_ctx) {                                                                          \
            print_message("skipped: opencl unavailable\n");                                    \
            skip();                                                                            \
        }                                                                                      \
    } while (0)

/* How a case's selections are made (each row strictly ascending, visible,
 * -1 padded, as selection_in must be). */
enum {
    SEL_SHARED,   /* every token of a sequence the same blocks (as far as visible) */
    SEL_DISJOINT, /* token t only blocks j with j % TQ == t % TQ: no two tokens
                     of a work-group share one */
    SEL_RANDOM,   /* random subsets of 1..n visible blocks */
    SEL_MIXED     /* block 0 and the token's own block for all, the rest random */
};

static int pick(nsa_rng *r, int lo, int hi)
{
    return lo + (int)(nsa_rng_next(r) % (uint64_t)(hi - lo + 1));
}

static void make_sel(const nsa_config *c, const int32_t *cu, int B, int kind, uint64_t seed,
                     int32_t *sel)
{
    nsa_rng r = {seed};
    unsigned char *on = malloc(4096);
    assert_non_null(on);
    for (int b = 0; b < B; b++)
        for (int64_t t = 0; t < cu[b + 1] - cu[b]; t++)
            for (int g = 0; g < c->G; g++) {
                const int vis = (int)(t / c->l_sel) + 1;
                assert_true(vis <= 4096);
                memset(on, 0, (size_t)vis);
                int cnt = 0;
                const int want = pick(&r, 1, c->n);
                for (int j = 0; j < vis && cnt < c->n; j++) {
                    int take = 0;
                    if (kind == SEL_SHARED)
                        take = j % 3 != 1; /* the same rule for every token */
                    else if (kind == SEL_DISJOINT)
                        take = j % TQ == (int)(t % TQ) && pick(&r, 0, 3) != 0;
                    else if (kind == SEL_MIXED)
                        take = j == 0 || j == vis - 1 || pick(&r, 0, 2) == 0;
                    if (take) {
                        on[j] = 1;
                        cnt++;
                    }
                }
                /* random rows (and rows left empty above): random distinct blocks */
                if (kind == SEL_RANDOM || cnt == 0)
                    for (int tries = 0; cnt < (vis < want ? vis : want) && tries < 1000;
                         tries++) {
                        const int j = pick(&r, 0, vis - 1);
                        if (!on[j]) {
                            on[j] = 1;
                            cnt++;
                        }
                    }
                int32_t *row = sel + ((size_t)(cu[b] + t) * c->G + g) * c->n;
                int k = 0;
                for (int j = 0; j < vis; j++)
                    if (on[j])
                        row[k++] = j;
                while (k < c->n)
                    row[k++] = -1;
            }
    free(on);
}

/* x as the device stores it under g_kv (fp16 or bf16) */
static float round_kv(float x)
{
    return g_kv == NSA_CL_KV_F16 ? nsa_cl_f16_to_f32(nsa_cl_f32_to_f16(x))
                                 : nsa_cl_bf16_to_f32(nsa_cl_f32_to_bf16(x));
}

/* out_slc of the device against the reference, the same selection fed to
 * both, compared token by token (all heads of a token: a block missed or
 * applied to a wrong token shows in that token's row). With half storage
 * (g_kv) the reference gets the K/V rounded as the device stores them:
 * the same arithmetic on the same values, so spec 9's 1e-5 still applies
 * to out_slc (the whole output is not compared then: the device rounds
 * the compressed tokens after phi, test_opencl's half_case). */
static void slc_case(const char *name, const nsa_config *c, const int *lens, int B, int kind,
                     uint64_t seed)
{
    tl_problem P, R;
    tl_problem_make(&P, c, lens, B, 1, seed);
    tl_problem_clone(&R, &P); /* shared K/V: kc, ks, kw one array, as vc, vs, vw */
    if (g_kv != NSA_CL_KV_F32) {
        for (size_t i = 0; i < (size_t)P.T * c->G * c->dk; i++)
            R.ks[i] = round_kv(R.ks[i]);
        for (size_t i = 0; i < (size_t)P.T * c->G * c->dv; i++)
            R.vs[i] = round_kv(R.vs[i]);
    }
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)P.T * c->G * c->n);
    assert_non_null(sel);
    make_sel(c, P.cu, B, kind, seed + 1, sel);
    tl_outputs ref, got;
    tl_outputs_alloc(&ref, &P);
    tl_outputs_alloc(&got, &P);
    tl_forward_plain(g_ref, &R, sel, &ref);
    tl_forward_plain(g_ctx, &P, sel, &got);
    const size_t w = (size_t)c->H * c->dv;
    for (int b = 0; b < B; b++)
        for (int64_t t = 0; t < P.cu[b + 1] - P.cu[b]; t++) {
            const size_t at = (size_t)(P.cu[b] + t) * w;
            const double e = tl_rel_l2(got.out_slc + at, ref.out_slc + at, w);
            if (!(e <= TOL)) /* spec 9 tolerance, per token */
                fail_msg("%s: sequence %d t=%lld (row %lld): out_slc relative L2 %.3g > %g",
                         name, b, (long long)t, (long long)(P.cu[b] + t), e, TOL);
        }
    if (g_kv == NSA_CL_KV_F32) {
        /* the whole output too, as spec 9 states it */
        assert_true(tl_rel_l2(got.out, ref.out, (size_t)P.T * w) <= TOL);
    } else {
        /* and the rounding really happened: against the unrounded
         * reference fp32 agreement would be < 1e-6 */
        tl_forward_plain(g_ref, &P, sel, &ref);
        assert_true(tl_rel_l2(got.out_slc, ref.out_slc, (size_t)P.T * w) > 1e-6);
    }
    tl_outputs_free(&ref);
    tl_outputs_free(&got);
    free(sel);
    tl_problem_free(&R);
    tl_problem_free(&P);
}

static nsa_config small_cfg(void)
{
    /* 8-key blocks, so short sequences hold many blocks; dk, dv no
     * multiples of 4 (the float4 edges) */
    return tl_config(8, 2, 18, 14, 8, 4, 8, 5, 1, 1, 16, NSA_MAPPING_OVERLAP);
}

/* The suite's contexts do serve the selected branch with TQ tokens and
 * with one (the multi-token kernels, not nsa_group_attn's mode 0). */
static void test_tokens_per_group(void **st)
{
    (void)st;
    NEED_CTX();
    for (int i = 0; i < 2; i++) {
        const nsa_cl_state *cs = nsa_cl_state_of(g_tq[i]);
        assert_non_null(cs);
        assert_int_equal(cs->slc_tq, i ? 1 : TQ);
        assert_non_null(cs->kernel[cs->kv][NSA_CLK_SLC_ATTN]);
    }
}

/* Every selection kind over a batch whose sequence boundaries and end
 * fall inside work-groups (lengths not multiples of TQ). */
static void test_union_kinds(void **st)
{
    (void)st;
    NEED_CTX();
    const nsa_config c = small_cfg();
    const int lens[] = {5, 23, 2, 41, 2}; /* 73 rows: the last work-group partial */
    static const char *const names[2][4] = {{"shared", "disjoint", "random", "mixed"},
                                            {"1: shared", "1: disjoint", "1: random",
                                             "1: mixed"}};
    for (int i = 0; i < 2; i++) {
        g_ctx = g_tq[i];
        for (int kind = 0; kind < 4; kind++)
            slc_case(names[i][kind], &c, lens, 5, kind, 500 + 7 * (uint64_t)kind);
    }
    g_ctx = g_tq[0];
}

/* Fewer tokens at launch than compiled (2, 3: partial work-groups of the
 * kernel's arrays), and the heads of a group over several work-groups. */
static void test_launch_caps(void **st)
{
    (void)st;
    NEED_CTX();
    nsa_cl_state *cs = nsa_cl_state_of(g_ctx);
    const nsa_config c = small_cfg();
    const int lens[] = {13, 30, 6};
    for (int cap = 2; cap <= 3; cap++) {
        cs->max_slc_tq = cap;
        slc_case(cap == 2 ? "tq 2 random" : "tq 3 random", &c, lens, 3, SEL_RANDOM,
                 600 + (uint64_t)cap);
        slc_case(cap == 2 ? "tq 2 mixed" : "tq 3 mixed", &c, lens, 3, SEL_MIXED,
                 610 + (uint64_t)cap);
    }
    cs->max_slc_tq = 0;
    cs->max_heads_wg = 3; /* 4 heads a group: parts of 3 + 1 */
    slc_case("heads 3+1", &c, lens, 3, SEL_MIXED, 620);
    cs->max_heads_wg = 0;
}

/* Paper-sized blocks (64 keys: two key tiles of the portable kernel on
 * CPU runtimes), a block clipped inside its second tile for some tokens
 * and not others, 16 heads a group (one full mma A operand a token). */
static void test_long_blocks(void **st)
{
    (void)st;
    NEED_CTX();
    const nsa_config c = tl_config(16, 1, 32, 32, 32, 16, 64, 4, 1, 1, 64, NSA_MAPPING_OVERLAP);
    const int lens[] = {150, 99};
    slc_case("long shared", &c, lens, 2, SEL_SHARED, 700);
    slc_case("long random", &c, lens, 2, SEL_RANDOM, 701);
    g_ctx = g_tq[1];
    slc_case("1: long random", &c, lens, 2, SEL_RANDOM, 702);
    g_ctx = g_tq[0];
}

/* fp16 and bf16 K/V storage (the tensor-core kernel skips the lo words
 * of K and V there: cl/mma_frag.cl's MMA_3KV), TQ tokens and one, small
 * and paper-sized blocks. */
static void test_half_storage(void **st)
{
    (void)st;
    NEED_CTX();
    static const nsa_cl_kv kinds[2] = {NSA_CL_KV_F16, NSA_CL_KV_BF16};
    const nsa_config c = small_cfg();
    const nsa_config cl = tl_config(16, 1, 32, 32, 32, 16, 64, 4, 1, 1, 64, NSA_MAPPING_OVERLAP);
    const int lens[] = {5, 23, 2, 41, 2}, llens[] = {150, 99};
    for (int k = 0; k < 2; k++) {
        g_kv = kinds[k];
        for (int i = 0; i < 2; i++) {
            g_ctx = g_tq[i];
            nsa_cl_state *cs = nsa_cl_state_of(g_ctx);
            cs->kv = g_kv;
            slc_case(k ? "bf16 mixed" : "fp16 mixed", &c, lens, 5, SEL_MIXED, 800 + 2 * k + i);
            slc_case(k ? "bf16 long" : "fp16 long", &cl, llens, 2, SEL_RANDOM, 810 + 2 * k + i);
            cs->kv = NSA_CL_KV_F32;
            /* where the fp32 program has the tensor-core kernel, it ran */
            assert_int_equal(nsa_cl_kernels(g_ctx, cs, NSA_CL_KV_F32), NSA_OK);
            if (cs->mma_kernel[NSA_CL_KV_F32][NSA_CLM_SLC_ATTN] &&
                !cs->mma_kernel[g_kv][NSA_CLM_SLC_ATTN])
                fail_msg("nsa_slc_attn_mma unusable with half storage: %s",
                         cs->mma_why[g_kv][NSA_CLM_SLC_ATTN]);
        }
    }
    g_kv = NSA_CL_KV_F32;
    g_ctx = g_tq[0];
}

int main(void)
{
    if (tl_skip_half_storage("opencl"))
        return 77;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens_per_group),
        cmocka_unit_test(test_union_kinds),
        cmocka_unit_test(test_launch_caps),
        cmocka_unit_test(test_long_blocks),
        cmocka_unit_test(test_half_storage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
