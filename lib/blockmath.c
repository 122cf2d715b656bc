/* Block-index math of spec 2-3, shared by every backend's host code:
 * visible compressed tokens, visible selection blocks, the mapping M (CSR),
 * forced blocks and the top-n rule. No backend re-derives any of it. */
#include "nsa_internal.h"

#include <stdlib.h>
#include <string.h>

int nsa_bm_n_cmp(const nsa_config *c, int64_t t)
{
    /* Block i is visible once complete: i*d + l - 1 <= t. */
    if (t + 1 < c->l)
        return 0;
    return (int)((t + 1 - c->l) / c->d + 1);
}

int nsa_bm_n_sel_visible(const nsa_config *c, int64_t t)
{
    return (int)(t / c->l_sel + 1);
}

/* Weight of compression block i in selection block j. */
static int map_weight(const nsa_config *c, int64_t j, int64_t i)
{
    if (c->mapping == NSA_MAPPING_OVERLAP) {
        int64_t a0 = i * c->d, a1 = a0 + c->l;
        int64_t b0 = j * c->l_sel, b1 = b0 + c->l_sel;
        int64_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
        return hi > lo ? (int)((hi - lo) / c->d) : 0;
    }
    /* Eq. 9 as printed: pairs (m, n) with i = (l'/d) j - m - n. */
    int64_t ms = c->l_sel / c->d, ns = c->l / c->d, k = ms * j - i;
    int cnt = 0;
    for (int64_t m = 0; m < ms; m++) {
        int64_t nn = k - m;
        if (nn >= 0 && nn < ns)
            cnt++;
    }
    return cnt;
}

/* Columns that can be nonzero in row j, as a half-open range. */
static void map_range(const nsa_config *c, int64_t j, int64_t *lo, int64_t *hi)
{
    int64_t r = c->l_sel / c->d, q = c->l / c->d;
    if (c->mapping == NSA_MAPPING_OVERLAP) {
        *lo = r * j - q + 1; /* i*d + l > j*l' */
        *hi = r * (j + 1);   /* i*d < (j+1)*l' */
    } else {
        *lo = r * j - (r - 1) - (q - 1);
        *hi = r * j + 1;
    }
}

nsa_status nsa_bm_map_build(const nsa_config *c, int rows, int max_cols, nsa_csr *m)
{
    memset(m, 0, sizeof *m);
    if (rows < 0)
        rows = 0;
    int64_t span = c->l_sel / c->d + c->l / c->d;
    size_t cap = (size_t)rows * (size_t)span + 1;
    m->rowptr = malloc(sizeof(int32_t) * ((size_t)rows + 1));
    m->col = malloc(sizeof(int32_t) * cap);
    m->val = malloc(sizeof(int32_t) * cap);
    if (!m->rowptr || !m->col || !m->val) {
        nsa_bm_map_free(m);
        return NSA_ERR_NOMEM;
    }
    m->rows = rows;
    int32_t nnz = 0;
    for (int j = 0; j < rows; j++) {
        m->rowptr[j] = nnz;
        int64_t lo, hi;
        map_range(c, j, &lo, &hi);
        for (int64_t i = lo < 0 ? 0 : lo; i < hi && i < max_cols; i++) {
            int wgt = map_weight(c, j, i);
            if (wgt) {
                m->col[nnz] = (int32_t)i;
                m->val[nnz] = wgt;
                nnz++;
            }
        }
    }
    m->rowptr[rows] = nnz;
    return NSA_OK;
}

void nsa_bm_map_free(nsa_csr *m)
{
    free(m->rowptr);
    free(m->col);
    free(m->val);
    memset(m, 0, sizeof *m);
}

int nsa_bm_forced(const nsa_config *c, int64_t t, int32_t *forced)
{
    int vis = nsa_bm_n_sel_visible(c, t), cnt = 0;
    for (int j = 0; j < c->n_init && j < vis; j++)
        forced[cnt++] = j;
    /* local blocks: floor(t/l'), floor(t/l')-1, ... ; skip ones already in */
    int lo = vis - c->n_local;
    if (lo < 0)
        lo = 0;
    for (int j = lo; j < vis; j++)
        if (j >= c->n_init)
            forced[cnt++] = j;
    return cnt;
}

int nsa_bm_selection_valid(const nsa_config *c, int64_t t, const int32_t *sel)
{
    int vis = nsa_bm_n_sel_visible(c, t), prev = -1, pad = 0;
    for (int k = 0; k < c->n; k++) {
        int32_t j = sel[k];
        if (j == -1) {
            pad = 1;
            continue;
        }
        if (pad || j < 0 || j >= vis || j <= prev)
            return 0;
        prev = j;
    }
    return 1;
}

/* Order-preserving unsigned images of the scores, so the rule compares
 * integers: +0 and -0 are equal (as they compare); NaN, which spec 3 leaves
 * unordered, is the lowest score (below -inf), ties among NaNs going to the
 * smaller j like any other tie. */
static uint32_t key_f(float x)
{
    if (x != x)
        return 0;
    uint32_t u = 0;
    if (x != 0.0f)
        memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static uint64_t key_d(double x)
{
    if (x != x)
        return 0;
    uint64_t u = 0;
    if (x != 0.0)
        memcpy(&u, &x, sizeof u);
    return (u & 0x8000000000000000u) ? ~u : (u | 0x8000000000000000u);
}

#define TOPN_LIST 64 /* picks one pass over the scores collects */

/* Shared body of the top-n rule (spec 3); KEY(j) is block j's key (type KT).
 * The picks are the first n - forced non-forced blocks in the order (key
 * descending, j ascending). One pass over the scores keeps the best up to
 * TOPN_LIST blocks that come after the previous pass's last pick in a short
 * list in that order; most blocks are rejected by one comparison with its
 * last entry, so a pass costs about one read of the scores (an argmax per
 * pick costs n of them: ~20 us at 64k, serial in a decode step). More than
 * TOPN_LIST picks take further passes. */
#define SELECT_BODY(KT, KEY)                                                     \
    const int vis = nsa_bm_n_sel_visible(c, t);                                  \
    int k = 0;                                                                   \
    if (vis <= c->n) {                                                           \
        for (int j = 0; j < vis; j++)                                            \
            sel[k++] = j;                                                        \
    } else {                                                                     \
        /* vis > n >= n_init + n_local: the forced ranges are disjoint and   \
         * leave more than want candidates between them */                   \
        const int lo_local = vis - c->n_local;                                   \
        int want = c->n - c->n_init - c->n_local;                                \
        memset(taken, 0, (size_t)vis);                                           \
        for (int j = 0; j < vis; j++)                                            \
            taken[j] = j < c->n_init || j >= lo_local;                           \
        KT last_k = (KT)-1; /* before every key: nothing picked yet */           \
        int last_j = -1;                                                         \
        while (want > 0) {                                                       \
            const int m = want < TOPN_LIST ? want : TOPN_LIST;                   \
            KT bk[TOPN_LIST];                                                    \
            int bj[TOPN_LIST], cnt = 0;                                          \
            for (int j = c->n_init; j < lo_local; j++) {                         \
                const KT kj = KEY(j);                                            \
                if (cnt == m && !(kj > bk[m - 1]))                               \
                    continue; /* ties keep the earlier j */                      \
                if (kj > last_k || (kj == last_k && j <= last_j))                \
                    continue; /* picked by an earlier pass */                    \
                /* after every entry >= kj: equal keys stay in j order */        \
                int at = cnt < m ? cnt : m - 1;                                  \
                while (at > 0 && bk[at - 1] < kj) {                              \
                    bk[at] = bk[at - 1];                                         \
                    bj[at] = bj[at - 1];                                         \
                    at--;                                                        \
                }                                                                \
                bk[at] = kj;                                                     \
                bj[at] = j;                                                      \
                if (cnt < m)                                                     \
                    cnt++;                                                       \
            }                                                                    \
            if (cnt == 0)                                                        \
                break; /* unreachable: more candidates than picks */             \
            for (int i = 0; i < cnt; i++)                                        \
                taken[bj[i]] = 1;                                                \
            last_k = bk[cnt - 1];                                                \
            last_j = bj[cnt - 1];                                                \
            want -= cnt;                                                         \
        }                                                                        \
        for (int j = 0; j < vis; j++)                                            \
            if (taken[j])                                                        \
                sel[k++] = j;                                                    \
    }                                                                            \
    for (; k < c->n; k++)                                                        \
        sel[k] = -1;

void nsa_bm_select(const nsa_config *c, int64_t t, const double *s, unsigned char *taken,
                   int32_t *sel)
{
#define K_D(j) key_d(s[j])
    SELECT_BODY(uint64_t, K_D)
#undef K_D
}

void nsa_bm_select_f(const nsa_config *c, int64_t t, const float *s, unsigned char *taken,
                     int32_t *sel)
{
#define K_F(j) key_f(s[j])
    SELECT_BODY(uint32_t, K_F)
#undef K_F
}
