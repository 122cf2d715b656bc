/* Block-index math (spec 2-3) against hand-computed values. */
#include "testlib.h"

#include <stdlib.h>
#include <string.h>

static nsa_config cfg3(int l, int d, int ls, nsa_mapping m)
{
    nsa_config c = nsa_config_default();
    c.l = l;
    c.d = d;
    c.l_sel = ls;
    c.mapping = m;
    return c;
}

/* Dense row j of M as a string "i:w i:w ...". */
static void row_str(const nsa_csr *m, int j, char *buf, size_t len)
{
    size_t u = 0;
    buf[0] = '\0';
    for (int32_t e = m->rowptr[j]; e < m->rowptr[j + 1]; e++)
        u += (size_t)snprintf(buf + u, len - u, "%s%d:%d", u ? " " : "", m->col[e], m->val[e]);
}

static void expect_rows(const nsa_config *c, int rows, int cols, const char *const *want)
{
    nsa_csr m;
    assert_int_equal(nsa_bm_map_build(c, rows, cols, &m), NSA_OK);
    char buf[256];
    for (int j = 0; j < rows; j++) {
        row_str(&m, j, buf, sizeof buf);
        if (strcmp(buf, want[j]))
            fail_msg("l=%d d=%d l'=%d mapping=%d row %d: got '%s' want '%s'", c->l, c->d,
                     c->l_sel, c->mapping, j, buf, want[j]);
    }
    nsa_bm_map_free(&m);
}

static void test_map_overlap_32_16_64(void **s)
{
    (void)s;
    /* weights 1,2,2,2,1 on p_cmp[4j-1 .. 4j+3] */
    nsa_config c = cfg3(32, 16, 64, NSA_MAPPING_OVERLAP);
    const char *want[] = {"0:2 1:2 2:2 3:1", "3:1 4:2 5:2 6:2 7:1", "7:1 8:2 9:2 10:2 11:1",
                          "11:1 12:2"};
    expect_rows(&c, 4, 13, want);
}

static void test_map_paper_32_16_64(void **s)
{
    (void)s;
    /* Eq. 9 as printed: 1,2,2,2,1 on p_cmp[4j-4 .. 4j] */
    nsa_config c = cfg3(32, 16, 64, NSA_MAPPING_PAPER);
    const char *want[] = {"0:1", "0:1 1:2 2:2 3:2 4:1", "4:1 5:2 6:2 7:2 8:1",
                          "8:1 9:2 10:2 11:2 12:1"};
    expect_rows(&c, 4, 13, want);
}

static void test_map_overlap_16_8_32(void **s)
{
    (void)s;
    /* block j = [32j, 32j+32); compression block i = [8i, 8i+16):
     * i = 4j-1 overlaps 8 -> 1; 4j..4j+2 -> 2; 4j+3 -> 1 */
    nsa_config c = cfg3(16, 8, 32, NSA_MAPPING_OVERLAP);
    const char *want[] = {"0:2 1:2 2:2 3:1", "3:1 4:2 5:2 6:2 7:1", "7:1 8:2 9:2"};
    expect_rows(&c, 3, 10, want);
}

static void test_map_paper_16_8_32(void **s)
{
    (void)s;
    nsa_config c = cfg3(16, 8, 32, NSA_MAPPING_PAPER);
    const char *want[] = {"0:1", "0:1 1:2 2:2 3:2 4:1", "4:1 5:2 6:2 7:2 8:1"};
    expect_rows(&c, 3, 10, want);
}

static void test_map_identity(void **s)
{
    (void)s;
    for (int m = 0; m < 2; m++) {
        nsa_config c = cfg3(8, 8, 8, (nsa_mapping)m);
        const char *want[] = {"0:1", "1:1", "2:1", "3:1", "4:1"};
        expect_rows(&c, 5, 5, want);
    }
}

static void test_n_cmp_edges(void **s)
{
    (void)s;
    nsa_config c = cfg3(32, 16, 64, NSA_MAPPING_OVERLAP);
    assert_int_equal(nsa_n_cmp(&c, 0), 0);
    assert_int_equal(nsa_n_cmp(&c, 30), 0);  /* t+1 = l-1 */
    assert_int_equal(nsa_n_cmp(&c, 31), 1);  /* first block complete */
    assert_int_equal(nsa_n_cmp(&c, 46), 1);
    assert_int_equal(nsa_n_cmp(&c, 47), 2);  /* l + d - 1 */
    assert_int_equal(nsa_n_cmp(&c, 65535), 4095);
    assert_int_equal(nsa_cmp_tokens(&c, 0), 0);
    assert_int_equal(nsa_cmp_tokens(&c, 32), 1);
    nsa_config one = cfg3(1, 1, 1, NSA_MAPPING_OVERLAP);
    assert_int_equal(nsa_n_cmp(&one, 0), 1);
    assert_int_equal(nsa_n_cmp(&one, 9), 10);
    /* block i visible iff i*d + l - 1 <= t, checked by brute force */
    nsa_config c2 = cfg3(16, 8, 32, NSA_MAPPING_OVERLAP);
    for (int t = 0; t < 300; t++) {
        int cnt = 0;
        for (int i = 0; i < 300; i++)
            cnt += i * c2.d + c2.l - 1 <= t;
        assert_int_equal(nsa_n_cmp(&c2, t), cnt);
    }
}

static void test_forced_and_select(void **s)
{
    (void)s;
    nsa_config c = cfg3(32, 16, 64, NSA_MAPPING_OVERLAP);
    c.n = 4;
    int32_t f[8];
    /* t=0: block 0 is both initial and local */
    assert_int_equal(nsa_bm_forced(&c, 0, f), 1);
    assert_int_equal(f[0], 0);
    /* t=64*5+3: blocks 0, 4, 5 */
    assert_int_equal(nsa_bm_forced(&c, 323, f), 3);
    assert_int_equal(f[0], 0);
    assert_int_equal(f[1], 4);
    assert_int_equal(f[2], 5);

    /* fewer visible than n: all of them, padded */
    double sc[16] = {0};
    unsigned char work[16];
    int32_t sel[4];
    nsa_bm_select(&c, 130, sc, work, sel);
    assert_int_equal(sel[0], 0);
    assert_int_equal(sel[1], 1);
    assert_int_equal(sel[2], 2);
    assert_int_equal(sel[3], -1);
    /* 10 visible, forced 0, 8, 9; one free slot: the largest score */
    double s2[10] = {0, .1, .5, .2, .5, .1, .0, .3, .9, .9};
    nsa_bm_select(&c, 9 * 64 + 1, s2, work, sel);
    int32_t want[4] = {0, 2, 8, 9}; /* tie 2 vs 4 goes to the smaller j */
    assert_memory_equal(sel, want, sizeof want);
    /* all-equal scores: the smallest free j */
    double s3[10] = {0};
    nsa_bm_select(&c, 9 * 64, s3, work, sel);
    int32_t want3[4] = {0, 1, 8, 9};
    assert_memory_equal(sel, want3, sizeof want3);
    /* forced blocks are kept even when their scores are the lowest */
    double s4[10] = {-5, 1, 2, 3, 4, 5, 6, 7, -5, -5};
    nsa_bm_select(&c, 9 * 64 + 63, s4, work, sel);
    int32_t want4[4] = {0, 7, 8, 9};
    assert_memory_equal(sel, want4, sizeof want4);
    float s4f[10] = {-5, 1, 2, 3, 4, 5, 6, 7, -5, -5};
    nsa_bm_select_f(&c, 9 * 64 + 63, s4f, work, sel);
    assert_memory_equal(sel, want4, sizeof want4);
}

static void test_selection_valid(void **s)
{
    (void)s;
    nsa_config c = cfg3(32, 16, 64, NSA_MAPPING_OVERLAP);
    c.n = 3;
    int32_t ok[3] = {0, 2, -1}, dup[3] = {0, 0, 2}, gap[3] = {0, -1, 2}, far[3] = {0, 3, -1};
    assert_true(nsa_bm_selection_valid(&c, 130, ok));
    assert_false(nsa_bm_selection_valid(&c, 130, dup));
    assert_false(nsa_bm_selection_valid(&c, 130, gap));
    assert_false(nsa_bm_selection_valid(&c, 130, far));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_overlap_32_16_64), cmocka_unit_test(test_map_paper_32_16_64),
        cmocka_unit_test(test_map_overlap_16_8_32),  cmocka_unit_test(test_map_paper_16_8_32),
        cmocka_unit_test(test_map_identity),         cmocka_unit_test(test_n_cmp_edges),
        cmocka_unit_test(test_forced_and_select),    cmocka_unit_test(test_selection_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
