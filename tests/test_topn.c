/* The top-n rule of spec 3 as lib/blockmath.c computes it for every backend
 * (nsa_bm_select_f, and nsa_bm_select for the reference's double scores)
 * against the rule written out literally here: the forced blocks, then the
 * other visible blocks sorted by score (largest first, ties to the smaller
 * j, NaN below every number), the first n - forced of them; all blocks when
 * no more than n are visible; ascending, padded with -1.
 * Inputs: scores from a few values (many exact ties), -inf and +inf, zeros
 * of both signs, ascending and descending runs, one NaN (also on the first
 * candidate block), many NaNs, all NaN; n from the forced count to 150 (more
 * picks than one pass of the library collects); lengths from one block up,
 * past n. */
#include "testlib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VIS 4096
#define MAX_N 150

typedef struct cand {
    double s;
    int j;
} cand;

/* The order of the picks: larger score first (+0 and -0 are equal, as
 * they compare), NaN after every number, equal scores by smaller j. */
static int cand_order(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    const int an = isnan(a->s), bn = isnan(b->s);
    if (an != bn)
        return an ? 1 : -1;
    if (!an && a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return a->j < b->j ? -1 : 1;
}

static int ascending(const void *pa, const void *pb)
{
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

/* Spec 3 word for word, slowly. */
static void spec_select(const nsa_config *c, int64_t t, const double *s, int32_t *sel)
{
    const int last = (int)(t / c->l_sel); /* visible: j <= floor(t / l') */
    static cand cd[MAX_VIS];
    int k = 0, nc = 0;
    for (int j = 0; j <= last; j++) {
        const int forced = j < c->n_init || j > last - c->n_local;
        if (last + 1 <= c->n || forced)
            sel[k++] = j; /* all selected when no more than n are visible */
        else
            cd[nc++] = (cand){s[j], j};
    }
    qsort(cd, (size_t)nc, sizeof *cd, cand_order);
    for (int i = 0; k < c->n && i < nc; i++)
        sel[k++] = cd[i].j;
    qsort(sel, (size_t)k, sizeof *sel, ascending);
    for (; k < c->n; k++)
        sel[k] = -1;
}

static void check(const nsa_config *c, int64_t t, const float *s)
{
    static double sd[MAX_VIS];
    static unsigned char work[MAX_VIS];
    int32_t want[MAX_N], got[MAX_N];
    const int vis = nsa_bm_n_sel_visible(c, t);
    for (int j = 0; j < vis; j++)
        sd[j] = s[j];
    spec_select(c, t, sd, want);
    memset(got, 0x5a, sizeof got); /* poison: every entry must be written */
    nsa_bm_select_f(c, t, s, work, got);
    assert_memory_equal(got, want, sizeof(int32_t) * (size_t)c->n);
    memset(got, 0x5a, sizeof got);
    nsa_bm_select(c, t, sd, work, got);
    assert_memory_equal(got, want, sizeof(int32_t) * (size_t)c->n);
}

/* Scores of one kind; returns 0 for a kind that does not apply to vis. */
static int fill(int kind, float *s, int vis, int n_init, uint64_t seed)
{
    switch (kind) {
    case 0: case 1: case 2: { /* 2, 20 or 200 levels: many ties; -inf, +inf */
        const float levels = kind == 0 ? 2.0f : kind == 1 ? 20.0f : 200.0f;
        tl_fill(s, (size_t)vis, seed, 0.0f, 1.0f);
        for (int j = 0; j < vis; j++)
            s[j] = floorf(s[j] * levels) / levels;
        if (vis > 3)
            s[vis / 3] = -INFINITY;
        if (vis > 5)
            s[vis / 5] = INFINITY;
        return 1;
    }
    case 3: /* distinct */
        tl_fill(s, (size_t)vis, seed, -1.0f, 1.0f);
        return 1;
    case 4: /* zeros of both signs, a few numbers either side */
        tl_fill(s, (size_t)vis, seed, -1.0f, 1.0f);
        for (int j = 0; j < vis; j++)
            if (j % 5)
                s[j] = j % 2 ? 0.0f : -0.0f;
        return 1;
    case 5: case 6: /* ascending, descending (with repeats) */
        for (int j = 0; j < vis; j++)
            s[j] = (float)((kind == 5 ? j : vis - j) / 3);
        return 1;
    case 7: case 8: /* one NaN in ties: mid-row; on the first candidate */
        if (vis <= n_init + 1)
            return 0;
        fill(1, s, vis, n_init, seed);
        s[kind == 7 ? vis / 2 : n_init] = NAN;
        return 1;
    case 9: /* many NaNs */
        fill(0, s, vis, n_init, seed);
        for (int j = 0; j < vis; j += 3)
            s[j] = NAN;
        return 1;
    case 10: /* all NaN */
        for (int j = 0; j < vis; j++)
            s[j] = NAN;
        return 1;
    default:
        return 0;
    }
}

static void test_against_spec(void **state)
{
    (void)state;
    /* n, n_init, n_local: small n; no forced block; n = forced count; 64
     * and 65 picks (one pass and one more); 150 (three passes) */
    static const int ns[][3] = {{16, 1, 2}, {12, 1, 2}, {5, 0, 0},   {4, 2, 2},
                                {66, 1, 1}, {67, 1, 1}, {150, 1, 2}, {64, 3, 5}};
    static float s[MAX_VIS];
    int cases = 0, nan_cases = 0;
    for (size_t v = 0; v < sizeof ns / sizeof *ns; v++) {
        nsa_config c = tl_config(16, 1, 8, 8, 32, 16, 64, ns[v][0], ns[v][1], ns[v][2], 512,
                                 NSA_MAPPING_OVERLAP);
        for (int64_t t = 0;; t = t * 3 / 2 + 37) {
            const int vis = nsa_bm_n_sel_visible(&c, t);
            if (vis > MAX_VIS)
                break;
            for (int kind = 0; kind <= 10; kind++) {
                if (!fill(kind, s, vis, c.n_init, (uint64_t)(t * 11 + kind + 100 * (int64_t)v)))
                    continue;
                check(&c, t, s);
                cases++;
                nan_cases += kind >= 7;
            }
        }
    }
    print_message("top-n: %d cases equal to the literal rule (%d with NaN)\n", cases,
                  nan_cases);
    assert_true(cases > 1000);
    assert_true(nan_cases > 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_spec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
