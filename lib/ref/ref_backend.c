/* The scalar reference backend: plain C, literal to NSA_SPEC.md, float32 in
 * and out, every sum in double. It is the ground truth the other backends
 * answer to, so it favours being checkable line by line over speed. */
#include "nsa_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int ref_probe(char *why, size_t len)
{
    snprintf(why, len, "scalar C, always available");
    return 1;
}

const nsa_backend_ops nsa_backend_ref = {
    .name = "ref",
    .description = "scalar reference (plain C, double accumulation)",
    .probe = ref_probe,
    .compress = nsa_ref_compress,
    .attend = nsa_ref_attend,
    .linear = nsa_ref_linear,
};

static double silu(double x) { return x / (1.0 + exp(-x)); }

/* ------------------------------------------------------------ phi (spec 2) */
nsa_status nsa_ref_compress(nsa_context *ctx, const nsa_cmp_job *job)
{
    const nsa_config *c = job->cfg;
    const nsa_phi *phi = job->phi;
    const int G = c->G, l = c->l, dim = job->dim;
    const size_t L = (size_t)l * (size_t)dim;
    const int hid = phi->kind == NSA_PHI_MLP ? phi->hidden : 0;
    double *z = malloc(sizeof(double) * (L + (size_t)hid + 1));
    if (!z)
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in phi");
    double *h = z + L;

    for (int b = 0; b < job->batch->B; b++) {
        const int64_t base = job->batch->cu[b];
        const int64_t nc = job->batch->cmp_off[b + 1] - job->batch->cmp_off[b];
        for (int64_t i = 0; i < nc; i++) {
            float *dst_row = job->out + (size_t)(job->batch->cmp_off[b] + i) * G * dim;
            for (int g = 0; g < G; g++) {
                float *dst = dst_row + (size_t)g * dim;
                /* z = concat_j (x_{i*d+j} + pe[g][j]) */
                for (int j = 0; j < l; j++) {
                    const float *x = job->x + ((size_t)(base + i * c->d + j) * G + g) * dim;
                    const float *pe = phi->pe ? phi->pe + ((size_t)g * l + j) * dim : NULL;
                    for (int e = 0; e < dim; e++)
                        z[(size_t)j * dim + e] = (double)x[e] + (pe ? (double)pe[e] : 0.0);
                }
                if (phi->kind == NSA_PHI_AVG) {
                    for (int e = 0; e < dim; e++) {
                        double acc = 0.0;
                        for (int j = 0; j < l; j++)
                            acc += z[(size_t)j * dim + e];
                        dst[e] = (float)(acc / l);
                    }
                } else if (hid == 0) {
                    /* phi = W z + b, W [dim][L] per group */
                    const float *W = phi->w1 + (size_t)g * dim * L;
                    for (int e = 0; e < dim; e++) {
                        double acc = phi->b1 ? phi->b1[(size_t)g * dim + e] : 0.0;
                        for (size_t k = 0; k < L; k++)
                            acc += (double)W[(size_t)e * L + k] * z[k];
                        dst[e] = (float)acc;
                    }
                } else {
                    /* h = SiLU(W1 z + b1); phi = W2 h + b2 */
                    const float *W1 = phi->w1 + (size_t)g * hid * L;
                    const float *W2 = phi->w2 + (size_t)g * dim * hid;
                    for (int u = 0; u < hid; u++) {
                        double acc = phi->b1 ? phi->b1[(size_t)g * hid + u] : 0.0;
                        for (size_t k = 0; k < L; k++)
                            acc += (double)W1[(size_t)u * L + k] * z[k];
                        h[u] = silu(acc);
                    }
                    for (int e = 0; e < dim; e++) {
                        double acc = phi->b2 ? phi->b2[(size_t)g * dim + e] : 0.0;
                        for (int u = 0; u < hid; u++)
                            acc += (double)W2[(size_t)e * hid + u] * h[u];
                        dst[e] = (float)acc;
                    }
                }
            }
        }
    }
    free(z);
    return NSA_OK;
}

/* ------------------------------------------------------------- attention */
/* A set of key rows given as half-open row ranges [lo, hi). */
typedef struct span_set {
    int n;
    int64_t *lo, *hi; /* room for cfg->n spans */
} span_set;

static double dot(const float *a, const float *b, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

/* o = sum_p softmax_p(scale * q.K[p]) V[p] over the rows in spans; K rows
 * are at K + row * kstride. Two passes (max, then exp-sum) in double.
 * An empty set gives the zero vector (spec 2: no visible token). */
static void attend_rows(const float *q, const float *K, size_t kstride, const float *V,
                        size_t vstride, int dk, int dv, double scale, const span_set *sp,
                        double *logit, double *acc, float *o)
{
    int64_t cnt = 0;
    double mx = -INFINITY;
    for (int s = 0; s < sp->n; s++)
        for (int64_t r = sp->lo[s]; r < sp->hi[s]; r++) {
            double z = scale * dot(q, K + (size_t)r * kstride, dk);
            logit[cnt++] = z;
            if (z > mx)
                mx = z;
        }
    for (int e = 0; e < dv; e++)
        acc[e] = 0.0;
    if (cnt == 0) {
        for (int e = 0; e < dv; e++)
            o[e] = 0.0f;
        return;
    }
    double sum = 0.0;
    cnt = 0;
    for (int s = 0; s < sp->n; s++)
        for (int64_t r = sp->lo[s]; r < sp->hi[s]; r++) {
            double p = exp(logit[cnt++] - mx);
            sum += p;
            const float *v = V + (size_t)r * vstride;
            for (int e = 0; e < dv; e++)
                acc[e] += p * (double)v[e];
        }
    for (int e = 0; e < dv; e++)
        o[e] = (float)(acc[e] / sum);
}

/* p_cmp(t,h) as probabilities (needed for the selection scores). */
static void cmp_probs(const float *q, const float *K, size_t kstride, int dk, double scale,
                      int nc, double *p)
{
    double mx = -INFINITY, sum = 0.0;
    for (int i = 0; i < nc; i++) {
        p[i] = scale * dot(q, K + (size_t)i * kstride, dk);
        if (p[i] > mx)
            mx = p[i];
    }
    for (int i = 0; i < nc; i++)
        sum += (p[i] = exp(p[i] - mx));
    for (int i = 0; i < nc; i++)
        p[i] /= sum;
}

nsa_status nsa_ref_attend(nsa_context *ctx, const nsa_attn_job *job)
{
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv, n = c->n;
    const double scale = job->scale;
    const int64_t maxlen = bt->max_len;
    const int max_nc = nsa_bm_n_cmp(c, maxlen - 1);
    const int max_vis = nsa_bm_n_sel_visible(c, maxlen - 1);
    const int64_t max_keys = maxlen; /* any branch reads at most t+1 keys */

    double *logit = malloc(sizeof(double) * (size_t)(max_keys + 1));
    double *p = malloc(sizeof(double) * ((size_t)hpg * (size_t)max_nc + 1));
    double *score = malloc(sizeof(double) * (size_t)max_vis);
    double *acc = malloc(sizeof(double) * (size_t)dv);
    unsigned char *work = malloc((size_t)max_vis);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)n);
    float *ob = malloc(sizeof(float) * 3 * (size_t)dv);
    int64_t *spans = malloc(sizeof(int64_t) * 2 * (size_t)n);
    span_set spset = {0, spans, spans ? spans + n : NULL}, *sp = &spset;
    nsa_status st = NSA_OK;
    if (!logit || !p || !score || !acc || !work || !sel || !ob || !spans) {
        st = nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in the reference attention");
        goto done;
    }
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    for (int b = 0; b < bt->B; b++) {
        const int64_t base = bt->cu[b], S = bt->cu[b + 1] - base;
        const float *kc_seq = job->kc + (size_t)bt->cmp_off[b] * krow;
        const float *vc_seq = job->vc + (size_t)bt->cmp_off[b] * vrow;
        for (int64_t t = 0; t < S; t++) {
            const int64_t row = base + t;
            const int nc = nsa_bm_n_cmp(c, t), vis = nsa_bm_n_sel_visible(c, t);
            for (int g = 0; g < G; g++) {
                /* compressed branch and the group score s = sum_h M p_cmp */
                for (int j = 0; j < vis; j++)
                    score[j] = 0.0;
                for (int hh = 0; hh < hpg; hh++) {
                    const int h = g * hpg + hh;
                    const float *qh = job->q + ((size_t)row * H + h) * dk;
                    double *ph = p + (size_t)hh * max_nc;
                    cmp_probs(qh, kc_seq + (size_t)g * dk, krow, dk, scale, nc, ph);
                    for (int j = 0; j < vis; j++)
                        for (int32_t e = job->map->rowptr[j]; e < job->map->rowptr[j + 1]; e++)
                            if (job->map->col[e] < nc)
                                score[j] += job->map->val[e] * ph[job->map->col[e]];
                }
                /* selection: given, or top-n */
                const size_t sel_at = ((size_t)row * G + g) * n;
                if (job->sel_in)
                    memcpy(sel, job->sel_in + sel_at, sizeof(int32_t) * n);
                else
                    nsa_bm_select(c, t, score, work, sel);
                if (job->sel_out)
                    memcpy(job->sel_out + sel_at, sel, sizeof(int32_t) * n);

                for (int hh = 0; hh < hpg; hh++) {
                    const int h = g * hpg + hh;
                    const size_t oat = ((size_t)row * H + h) * dv;
                    const float *qh = job->q + ((size_t)row * H + h) * dk;
                    float *o_cmp = ob, *o_slc = ob + dv, *o_win = ob + 2 * dv;
                    /* o_cmp = sum_i p_cmp[i] V_cmp[i] (p already computed) */
                    const double *ph = p + (size_t)hh * max_nc;
                    for (int e = 0; e < dv; e++) {
                        double a = 0.0;
                        for (int i = 0; i < nc; i++)
                            a += ph[i] * (double)vc_seq[(size_t)i * vrow + (size_t)g * dv + e];
                        o_cmp[e] = nc ? (float)a : 0.0f;
                    }
                    /* selected branch: tokens of the selected blocks, <= t */
                    sp->n = 0;
                    for (int k = 0; k < n; k++) {
                        if (sel[k] < 0)
                            continue;
                        int64_t lo = (int64_t)sel[k] * c->l_sel, hi = lo + c->l_sel;
                        if (hi > t + 1)
                            hi = t + 1;
                        if (lo < hi) {
                            sp->lo[sp->n] = base + lo;
                            sp->hi[sp->n] = base + hi;
                            sp->n++;
                        }
                    }
                    attend_rows(qh, job->k_slc + (size_t)g * dk, krow, job->v_slc + (size_t)g * dv,
                                vrow, dk, dv, scale, sp, logit, acc, o_slc);
                    /* sliding window: max(0, t-w+1) .. t */
                    sp->n = 1;
                    sp->lo[0] = base + (t - c->w + 1 > 0 ? t - c->w + 1 : 0);
                    sp->hi[0] = base + t + 1;
                    attend_rows(qh, job->k_win + (size_t)g * dk, krow, job->v_win + (size_t)g * dv,
                                vrow, dk, dv, scale, sp, logit, acc, o_win);
                    /* gated sum */
                    const float *gt = job->gates + ((size_t)row * H + h) * 3;
                    for (int e = 0; e < dv; e++)
                        job->out[oat + e] =
                            (float)((double)gt[0] * o_cmp[e] + (double)gt[1] * o_slc[e] +
                                    (double)gt[2] * o_win[e]);
                    if (job->out_cmp)
                        memcpy(job->out_cmp + oat, o_cmp, sizeof(float) * dv);
                    if (job->out_slc)
                        memcpy(job->out_slc + oat, o_slc, sizeof(float) * dv);
                    if (job->out_win)
                        memcpy(job->out_win + oat, o_win, sizeof(float) * dv);
                }
            }
        }
    }
done:
    free(logit);
    free(p);
    free(score);
    free(acc);
    free(work);
    free(sel);
    free(ob);
    free(spans);
    return st;
}

/* ------------------------------------------------------------- linear */
nsa_status nsa_ref_linear(nsa_context *ctx, const nsa_linear_job *j)
{
    (void)ctx;
    for (int64_t r = 0; r < j->rows; r++) {
        const float *x = j->x + (size_t)r * j->in;
        for (int o = 0; o < j->out; o++) {
            double acc = j->b ? (double)j->b[o] : 0.0;
            acc += dot(x, j->w + (size_t)o * j->in, j->in);
            j->y[(size_t)r * j->out + o] = (float)acc;
        }
    }
    return NSA_OK;
}
