/* The attention operator's host path (spec 2-5): validate everything, then
 * phi on the backend, then attention on the backend. Shared by all
 * backends; nothing is allocated before the inputs are checked. */
#include "nsa_internal.h"

#include <stdlib.h>
#include <string.h>

nsa_status nsa_batch_init(nsa_context *ctx, const nsa_config *cfg, int64_t T,
                          const int32_t *cu, int B, nsa_batch *b)
{
    memset(b, 0, sizeof *b);
    if (T < 1)
        return nsa_fail(ctx, NSA_ERR_ZERO_SIZE, "T=%lld must be >= 1", (long long)T);
    if (T > INT32_MAX)
        return nsa_fail(ctx, NSA_ERR_RANGE, "T=%lld must fit in int32 (cu_seqlens)",
                        (long long)T);
    if (cu) {
        if (B < 1)
            return nsa_fail(ctx, NSA_ERR_ZERO_SIZE, "B=%d must be >= 1", B);
        if (cu[0] != 0)
            return nsa_fail(ctx, NSA_ERR_SEQLENS, "cu_seqlens[0]=%d must be 0", (int)cu[0]);
        for (int i = 0; i < B; i++)
            if (cu[i + 1] <= cu[i])
                return nsa_fail(ctx, NSA_ERR_SEQLENS,
                                "cu_seqlens must increase strictly: cu_seqlens[%d]=%d <= "
                                "cu_seqlens[%d]=%d",
                                i + 1, (int)cu[i + 1], i, (int)cu[i]);
        if (cu[B] != T)
            return nsa_fail(ctx, NSA_ERR_SEQLENS, "cu_seqlens[B=%d]=%d must equal T=%lld", B,
                            (int)cu[B], (long long)T);
    } else {
        if (B != 1 && B != 0)
            return nsa_fail(ctx, NSA_ERR_ARG, "B=%d needs cu_seqlens (NULL means B=1)", B);
        B = 1;
        b->cu_owned = malloc(2 * sizeof(int32_t));
        if (!b->cu_owned)
            return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory");
        b->cu_owned[0] = 0;
        b->cu_owned[1] = (int32_t)T;
        cu = b->cu_owned;
    }
    b->cmp_off = malloc(sizeof(int64_t) * ((size_t)B + 1));
    if (!b->cmp_off) {
        free(b->cu_owned);
        b->cu_owned = NULL;
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory");
    }
    b->B = B;
    b->T = T;
    b->cu = cu;
    b->cmp_off[0] = 0;
    for (int i = 0; i < B; i++) {
        int len = cu[i + 1] - cu[i];
        if (len > b->max_len)
            b->max_len = len;
        b->cmp_off[i + 1] = b->cmp_off[i] + nsa_cmp_tokens(cfg, len);
    }
    return NSA_OK;
}

void nsa_batch_free(nsa_batch *b)
{
    free(b->cu_owned);
    free(b->cmp_off);
    memset(b, 0, sizeof *b);
}

int64_t nsa_op_cmp_count(const nsa_config *cfg, const int32_t *cu, int B, int64_t T)
{
    if (!cfg)
        return 0;
    if (!cu)
        return nsa_cmp_tokens(cfg, T);
    int64_t c = 0;
    for (int i = 0; i < B; i++)
        c += nsa_cmp_tokens(cfg, cu[i + 1] - cu[i]);
    return c;
}

nsa_status nsa_phi_check(nsa_context *ctx, const nsa_phi *phi, const char *which)
{
    if (phi->kind == NSA_PHI_AVG)
        return NSA_OK;
    if (phi->kind != NSA_PHI_MLP)
        return nsa_fail(ctx, NSA_ERR_ENUM, "%s: kind=%d must be NSA_PHI_AVG or NSA_PHI_MLP",
                        which, (int)phi->kind);
    if (phi->hidden < 0)
        return nsa_fail(ctx, NSA_ERR_ZERO_SIZE, "%s: hidden=%d must be >= 0", which,
                        phi->hidden);
    if (!phi->w1)
        return nsa_fail(ctx, NSA_ERR_NULL, "%s: mlp phi needs w1", which);
    if (phi->hidden > 0 && !phi->w2)
        return nsa_fail(ctx, NSA_ERR_NULL, "%s: mlp phi with hidden=%d needs w2", which,
                        phi->hidden);
    return NSA_OK;
}

static nsa_status check_args(nsa_context *ctx, const nsa_config *cfg, const nsa_op_args *a)
{
    char msg[NSA_MSG_LEN];
    nsa_status s = nsa_config_validate(cfg, msg, sizeof msg);
    if (s != NSA_OK)
        return nsa_fail(ctx, s, "%s", msg);
    const struct {
        const char *name;
        const void *p;
    } req[] = {{"q", a->q},         {"k_cmp", a->k_cmp}, {"v_cmp", a->v_cmp},
               {"k_slc", a->k_slc}, {"v_slc", a->v_slc}, {"k_win", a->k_win},
               {"v_win", a->v_win}, {"gates", a->gates}, {"out", a->out}};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (!req[i].p)
            return nsa_fail(ctx, NSA_ERR_NULL, "args->%s must not be NULL", req[i].name);
    if (a->phi_k && (s = nsa_phi_check(ctx, a->phi_k, "phi_k")) != NSA_OK)
        return s;
    if (a->phi_v && (s = nsa_phi_check(ctx, a->phi_v, "phi_v")) != NSA_OK)
        return s;
    return NSA_OK;
}

static nsa_status check_selection(nsa_context *ctx, const nsa_config *cfg,
                                  const nsa_batch *b, const int32_t *sel)
{
    for (int i = 0; i < b->B; i++)
        for (int64_t t = 0; t < b->cu[i + 1] - b->cu[i]; t++) {
            const int32_t *row = sel + ((size_t)(b->cu[i] + t) * (size_t)cfg->G) * cfg->n;
            for (int g = 0; g < cfg->G; g++)
                if (!nsa_bm_selection_valid(cfg, t, row + (size_t)g * cfg->n))
                    return nsa_fail(ctx, NSA_ERR_SELECTION,
                                    "selection_in at sequence %d, t=%lld, group %d: entries "
                                    "must be visible blocks (0..%d), strictly ascending, "
                                    "padded with -1 at the end",
                                    i, (long long)t, g, nsa_bm_n_sel_visible(cfg, t) - 1);
        }
    return NSA_OK;
}

nsa_status nsa_attention_forward(nsa_context *ctx, const nsa_config *cfg,
                                 const nsa_op_args *a)
{
    if (!ctx)
        return NSA_ERR_NULL;
    if (!cfg || !a)
        return nsa_fail(ctx, NSA_ERR_NULL, "cfg and args must not be NULL");
    nsa_status s = check_args(ctx, cfg, a);
    if (s != NSA_OK)
        return s;
    nsa_batch batch;
    if ((s = nsa_batch_init(ctx, cfg, a->T, a->cu_seqlens, a->B, &batch)) != NSA_OK)
        return s;
    if (a->selection_in && (s = check_selection(ctx, cfg, &batch, a->selection_in)) != NSA_OK) {
        nsa_batch_free(&batch);
        return s;
    }

    s = nsa_op_core(ctx, cfg, &batch, a, NULL, NULL);
    nsa_batch_free(&batch);
    return s;
}

nsa_status nsa_op_core(nsa_context *ctx, const nsa_config *cfg, const nsa_batch *bt,
                       const nsa_op_args *a, nsa_kc_hook hook, void *user)
{
    nsa_status s;
    const nsa_phi avg = {NSA_PHI_AVG, 0, NULL, NULL, NULL, NULL, NULL};
    int64_t C = bt->cmp_off[bt->B];
    float *kc = a->k_cmp_out, *vc = a->v_cmp_out, *kc_own = NULL, *vc_own = NULL;
    nsa_csr map = {0};
    size_t rows = (size_t)(C > 0 ? C : 1) * (size_t)cfg->G;
    if (!kc)
        kc = kc_own = malloc(sizeof(float) * rows * (size_t)cfg->dk);
    if (!vc)
        vc = vc_own = malloc(sizeof(float) * rows * (size_t)cfg->dv);
    if (!kc || !vc) {
        s = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory for %lld compressed tokens",
                     (long long)C);
        goto done;
    }
    int max_vis = nsa_bm_n_sel_visible(cfg, bt->max_len - 1);
    if ((s = nsa_bm_map_build(cfg, max_vis, (int)nsa_cmp_tokens(cfg, bt->max_len),
                              &map)) != NSA_OK) {
        nsa_fail(ctx, s, "out of memory for the mapping");
        goto done;
    }
    nsa_cmp_job ck = {cfg, bt, a->k_cmp, cfg->dk, a->phi_k ? a->phi_k : &avg, kc};
    nsa_cmp_job cv = {cfg, bt, a->v_cmp, cfg->dv, a->phi_v ? a->phi_v : &avg, vc};
    if ((s = nsa_run_compress(ctx, &ck)) != NSA_OK || (s = nsa_run_compress(ctx, &cv)) != NSA_OK)
        goto done;
    if (hook)
        hook(user, bt, kc);
    nsa_attn_job job = {cfg,      nsa_config_scale(cfg), bt,   &map,       a->q,
                        kc,       vc,                    a->k_slc, a->v_slc,   a->k_win,
                        a->v_win, a->gates,              a->selection_in, a->out, a->out_cmp,
                        a->out_slc, a->out_win,          a->selection_out};
    s = nsa_run_attend(ctx, &job);
done:
    nsa_bm_map_free(&map);
    free(kc_own);
    free(vc_own);
    return s;
}
