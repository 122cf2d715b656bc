/* The top-n rule of spec 3 (nsa_bm_select_f's result, bit for bit) in one
 * pass: nsa_bm_select_f picks the n - forced blocks one at a time over all
 * visible blocks, O(n vis), ~20 us at 64k, serial in a decode step. Here the
 * best candidates are kept in a small list ordered by (score desc, j asc);
 * most blocks are rejected by one comparison with its last entry. */
#include "cpu/cpu_internal.h"

#include <string.h>

#define TOPN_MAX 64 /* picks the list holds; more goes to nsa_bm_select_f */

void nsa_cpu_select_topn(const nsa_config *c, int64_t t, const float *s, unsigned char *taken,
                         int32_t *sel)
{
    const int vis = nsa_bm_n_sel_visible(c, t);
    const int lo_local = vis - c->n_local;
    const int want = c->n - c->n_init - c->n_local; /* >= 0 (config rule) */
    if (vis <= c->n || want > TOPN_MAX) {
        nsa_bm_select_f(c, t, s, taken, sel);
        return;
    }
    float bs[TOPN_MAX];
    int bj[TOPN_MAX], cnt = 0;
    for (int j = c->n_init; want > 0 && j < lo_local; j++) {
        const float v = s[j];
        if (v != v) { /* NaN: its ordering is nsa_bm_select_f's business */
            nsa_bm_select_f(c, t, s, taken, sel);
            return;
        }
        if (cnt == want && !(v > bs[cnt - 1]))
            continue; /* not better than the last kept (ties keep the earlier j) */
        /* insert after every entry scoring >= v: equal scores stay in j order */
        int at = cnt < want ? cnt : want - 1;
        while (at > 0 && bs[at - 1] < v) {
            bs[at] = bs[at - 1];
            bj[at] = bj[at - 1];
            at--;
        }
        bs[at] = v;
        bj[at] = j;
        if (cnt < want)
            cnt++;
    }
    memset(taken, 0, (size_t)vis);
    for (int j = 0; j < vis; j++)
        if (j < c->n_init || j >= lo_local)
            taken[j] = 1;
    for (int i = 0; i < cnt; i++)
        taken[bj[i]] = 1;
    int k = 0;
    for (int j = 0; j < vis; j++)
        if (taken[j])
            sel[k++] = j;
    for (; k < c->n; k++)
        sel[k] = -1;
}
