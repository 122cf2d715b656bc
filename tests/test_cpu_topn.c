/* The cpu backend's one-pass top-n (nsa_cpu_select_topn) against the
 * repeated-argmax rule of lib/blockmath.c (nsa_bm_select_f): the same
 * selection, bit for bit, on random scores with many exact ties (scores
 * drawn from a few values), -inf, and a NaN (which goes to the original),
 * over lengths where the forced blocks and the padding change. */
#include "testlib.h"

#include "cpu/cpu_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void check(const nsa_config *c, int64_t t, const float *s)
{
    unsigned char work[4096];
    int32_t want[64], got[64];
    memset(got, 0x5a, sizeof got); /* poison: every entry must be written */
    nsa_bm_select_f(c, t, s, work, want);
    nsa_cpu_select_topn(c, t, s, work, got);
    assert_memory_equal(got, want, sizeof(int32_t) * (size_t)c->n);
}

static void test_random_with_ties(void **state)
{
    (void)state;
    static const int ns[][3] = {{16, 1, 2}, {12, 1, 2}, {5, 0, 0}, {4, 2, 2}, {64, 3, 5}};
    float s[4096];
    int cases = 0;
    for (size_t v = 0; v < sizeof ns / sizeof *ns; v++) {
        nsa_config c = tl_config(16, 1, 8, 8, 32, 16, 64, ns[v][0], ns[v][1], ns[v][2], 512,
                                 NSA_MAPPING_OVERLAP);
        for (int64_t t = 0; t < 4096 * 64; t = t * 3 / 2 + 37) {
            const int vis = nsa_bm_n_sel_visible(&c, t);
            if (vis > 4096)
                break;
            for (int levels = 2; levels <= 1000; levels *= 10) {
                tl_fill(s, (size_t)vis, (uint64_t)(t * 7 + levels), 0.0f, 1.0f);
                for (int j = 0; j < vis; j++) /* few distinct values: many ties */
                    s[j] = floorf(s[j] * (float)levels) / (float)levels;
                if (vis > 3)
                    s[vis / 3] = -INFINITY;
                check(&c, t, s);
                cases++;
            }
            if (vis > 5) { /* a NaN score: the original rule decides */
                s[vis / 2] = NAN;
                check(&c, t, s);
            }
        }
    }
    print_message("top-n: %d cases equal\n", cases);
    assert_true(cases > 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_with_ties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
