/* The cpu backend's split decode (lib/cpu/cpu_attend.c): each branch's keys
 * of one (sequence, group) item are cut into chunks of 256 keys whose
 * partial softmaxes are merged. Caches long enough for several chunks in
 * every branch (compressed, selected, window across the ring's wrap, dense)
 * are decoded on 1, 2, 3 and 5 threads, for one item (B = 1, G = 1: the
 * case the split exists for) and for several items of unequal lengths. Each
 * result must match the reference (spec 9) and be bit-identical across the
 * thread counts (the chunking depends on positions only). */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "testlib.h"

#include "cpu/cpu_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Random caches of B sequences at positions t[b]: the decode job's inputs
 * (no layer: both backends read the same arrays). */
typedef struct caches {
    nsa_config cfg;
    int B;
    nsa_decode_seq seq[3];
    float *buf[6 * 3];
    float *q, *gates;
    nsa_csr map;
} caches;

static float *rnd(size_t n, uint64_t seed, float amp)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    tl_fill(p, n, seed, -amp, amp);
    return p;
}

static void caches_make(caches *x, const nsa_config *c, const int64_t *t, int B, uint64_t seed)
{
    memset(x, 0, sizeof *x);
    x->cfg = *c;
    x->B = B;
    const size_t kr = (size_t)c->G * c->dk, vr = (size_t)c->G * c->dv;
    int64_t max_t = 0;
    for (int b = 0; b < B; b++) {
        const size_t nc = (size_t)nsa_bm_n_cmp(c, t[b]), S = (size_t)t[b] + 1;
        float **f = x->buf + 6 * b;
        f[0] = rnd(nc * kr, seed + 10 * b, 1.0f);
        f[1] = rnd(nc * vr, seed + 10 * b + 1, 1.0f);
        f[2] = rnd(S * kr, seed + 10 * b + 2, 1.0f);
        f[3] = rnd(S * vr, seed + 10 * b + 3, 1.0f);
        f[4] = rnd((size_t)c->w * kr, seed + 10 * b + 4, 1.0f);
        f[5] = rnd((size_t)c->w * vr, seed + 10 * b + 5, 1.0f);
        x->seq[b] = (nsa_decode_seq){t[b], f[0], f[1], f[2], f[3], f[4], f[5], NULL, NULL};
        max_t = t[b] > max_t ? t[b] : max_t;
    }
    /* large queries: peaked softmaxes, so chunks weigh very differently */
    x->q = rnd((size_t)B * c->H * c->dk, seed + 100, 3.0f);
    x->gates = rnd((size_t)B * c->H * 3, seed + 101, 1.0f);
    assert_int_equal(nsa_bm_map_build(c, nsa_bm_n_sel_visible(c, max_t), nsa_bm_n_cmp(c, max_t),
                                      &x->map),
                     NSA_OK);
}

static void caches_free(caches *x)
{
    for (int i = 0; i < 6 * x->B; i++)
        free(x->buf[i]);
    free(x->q);
    free(x->gates);
    nsa_bm_map_free(&x->map);
}

/* Outputs of one decode call, poisoned before it. */
typedef struct outs {
    float *o[4]; /* out, out_cmp, out_slc, out_win: [B][H][dv] */
    int32_t *sel;
} outs;

static void run(nsa_context *ctx, const caches *x, int dense, outs *r)
{
    const nsa_config *c = &x->cfg;
    const size_t n = (size_t)x->B * c->H * c->dv;
    for (int i = 0; i < 4; i++)
        r->o[i] = tl_poisoned(n);
    r->sel = tl_poisoned_i32((size_t)x->B * c->G * c->n);
    nsa_decode_job job = {c,        nsa_config_scale(c), &x->map,  x->B,     x->seq, x->q,
                          x->gates, r->o[0],             r->o[1],  r->o[2],  r->o[3], r->sel};
    if (dense) {
        job.out_cmp = job.out_slc = job.out_win = NULL;
        assert_int_equal(nsa_run_dense_decode(ctx, &job), NSA_OK);
    } else {
        assert_int_equal(nsa_run_decode_attend(ctx, &job), NSA_OK);
    }
}

static void outs_free(outs *r)
{
    for (int i = 0; i < 4; i++)
        free(r->o[i]);
    free(r->sel);
}

static int get_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void set_threads(int n)
{
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* Decodes x on the cpu backend (kernel set capped at isa, NULL: the best)
 * with several thread counts against the reference. */
static void check(const caches *x, const char *isa)
{
    const nsa_config *c = &x->cfg;
    if (isa)
        setenv("NSA_MAX_ISA", isa, 1);
    else
        unsetenv("NSA_MAX_ISA");
    nsa_context *cpu, *ref;
    assert_int_equal(nsa_context_create("cpu", &cpu, NULL, 0), NSA_OK);
    assert_int_equal(nsa_context_create("ref", &ref, NULL, 0), NSA_OK);
    unsetenv("NSA_MAX_ISA");
    const size_t n = (size_t)x->B * c->H * c->dv, ns = (size_t)x->B * c->G * c->n;
    const int saved = get_threads();
    static const char *name[4] = {"out", "out_cmp", "out_slc", "out_win"};
    for (int dense = 0; dense < 2; dense++) {
        outs want, first;
        memset(&first, 0, sizeof first); /* set by the first thread count */
        run(ref, x, dense, &want);
        const int threads[] = {1, 2, 3, 5};
        for (size_t k = 0; k < sizeof threads / sizeof threads[0]; k++) {
            outs got;
            set_threads(threads[k]);
            run(cpu, x, dense, &got);
            for (int i = 0; i < (dense ? 1 : 4); i++) {
                const double e = tl_rel_l2(got.o[i], want.o[i], n);
                /* spec 9: relative L2 <= 1e-5 against the reference */
                if (!(e <= 1e-5))
                    fail_msg("%s %s, %d threads, isa %s: %s rel err %g", dense ? "dense" : "nsa",
                             x->B > 1 ? "batch" : "one item", threads[k], isa ? isa : "best",
                             name[i], e);
                if (k > 0) /* the chunking and merge order ignore the thread count */
                    assert_memory_equal(got.o[i], first.o[i], sizeof(float) * n);
            }
            if (!dense) /* random scores: no near-tie here, so no exception (spec 9) */
                assert_memory_equal(got.sel, want.sel, sizeof(int32_t) * ns);
            if (k == 0)
                first = got;
            else
                outs_free(&got);
        }
        outs_free(&first);
        outs_free(&want);
    }
    set_threads(saved);
    nsa_context_free(cpu);
    nsa_context_free(ref);
}

/* l=16 d=8 l'=32 n=12 w=300: at t = 6000 the compressed branch has 749
 * keys (3 chunks), the selected 384 (2), the window 300 (2, its ring rows
 * wrapping at 300), dense 6001 (24). Odd dk, dv reach the kernels' tails. */
static nsa_config cfg_split(int H, int G)
{
    return tl_config(H, G, 20, 12, 16, 8, 32, 12, 1, 2, 300, NSA_MAPPING_OVERLAP);
}

static void test_one_item(void **state)
{
    (void)state;
    const nsa_config c = cfg_split(8, 1);
    const int64_t t[1] = {6000};
    caches x;
    caches_make(&x, &c, t, 1, 41);
    const char *sets[TL_KERNEL_SETS]; /* every usable set */
    const int nsets = tl_kernel_sets(sets);
    for (int i = 0; i < nsets; i++)
        check(&x, sets[i]);
    caches_free(&x);
}

/* Several items of unequal lengths (one shorter than a chunk): each item's
 * chunks are its own, and slots past an item's keys stay out of its merge. */
static void test_batch(void **state)
{
    (void)state;
    const nsa_config c = cfg_split(4, 2);
    const int64_t t[3] = {6000, 200, 2700};
    caches x;
    caches_make(&x, &c, t, 3, 77);
    check(&x, NULL);
    caches_free(&x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_item),
        cmocka_unit_test(test_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
