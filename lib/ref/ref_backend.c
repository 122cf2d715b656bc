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
    .decode_attend = nsa_ref_decode_attend,
    .dense_decode = nsa_ref_dense_decode,
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
/* Where one group's keys and values live: the row of position p is p, or
 * p % ring for a ring buffer (decode's window cache). */
typedef struct ref_src {
    const float *k, *v;
    size_t kstride, vstride; /* floats between consecutive rows */
    int64_t ring;
} ref_src;

static const float *src_k(const ref_src *s, int64_t p)
{
    return s->k + (size_t)(s->ring ? p % s->ring : p) * s->kstride;
}
static const float *src_v(const ref_src *s, int64_t p)
{
    return s->v + (size_t)(s->ring ? p % s->ring : p) * s->vstride;
}

/* Scratch for one (t, group) query, sized for the longest sequence. */
typedef struct ref_scratch {
    double *logit, *p, *score, *acc;
    unsigned char *work;
    int32_t *sel;
    float *ob;
    int64_t *lo, *hi; /* position spans [lo, hi) */
    int max_nc;
} ref_scratch;

static void scratch_free(ref_scratch *w)
{
    free(w->logit);
    free(w->p);
    free(w->score);
    free(w->acc);
    free(w->work);
    free(w->sel);
    free(w->ob);
    free(w->lo);
    memset(w, 0, sizeof *w);
}

static int scratch_alloc(ref_scratch *w, const nsa_config *c, int64_t max_t)
{
    const int hpg = c->H / c->G;
    memset(w, 0, sizeof *w);
    w->max_nc = nsa_bm_n_cmp(c, max_t);
    const size_t vis = (size_t)nsa_bm_n_sel_visible(c, max_t);
    w->logit = malloc(sizeof(double) * (size_t)(max_t + 2));
    w->p = malloc(sizeof(double) * ((size_t)hpg * (size_t)w->max_nc + 1));
    w->score = malloc(sizeof(double) * vis);
    w->acc = malloc(sizeof(double) * (size_t)c->dv);
    w->work = malloc(vis);
    w->sel = malloc(sizeof(int32_t) * (size_t)c->n);
    w->ob = malloc(sizeof(float) * 3 * (size_t)c->dv);
    w->lo = malloc(sizeof(int64_t) * 2 * (size_t)c->n);
    if (!w->logit || !w->p || !w->score || !w->acc || !w->work || !w->sel || !w->ob || !w->lo) {
        scratch_free(w);
        return 0;
    }
    w->hi = w->lo + c->n;
    return 1;
}

static double dot(const float *a, const float *b, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

/* o = sum_p softmax_p(scale * q.k[p]) v[p] over the positions in nspan
 * spans [lo, hi). Two passes (max, then exp-sum) in double. An empty set
 * gives the zero vector (spec 2: no visible token). */
static void attend_spans(const float *q, const ref_src *src, int dk, int dv, double scale,
                         const int64_t *lo, const int64_t *hi, int nspan, ref_scratch *w,
                         float *o)
{
    int64_t cnt = 0;
    double mx = -INFINITY;
    for (int s = 0; s < nspan; s++)
        for (int64_t p = lo[s]; p < hi[s]; p++) {
            double z = scale * dot(q, src_k(src, p), dk);
            w->logit[cnt++] = z;
            if (z > mx)
                mx = z;
        }
    for (int e = 0; e < dv; e++)
        w->acc[e] = 0.0;
    if (cnt == 0) {
        for (int e = 0; e < dv; e++)
            o[e] = 0.0f;
        return;
    }
    double sum = 0.0;
    cnt = 0;
    for (int s = 0; s < nspan; s++)
        for (int64_t p = lo[s]; p < hi[s]; p++) {
            double pr = exp(w->logit[cnt++] - mx);
            sum += pr;
            const float *v = src_v(src, p);
            for (int e = 0; e < dv; e++)
                w->acc[e] += pr * (double)v[e];
        }
    for (int e = 0; e < dv; e++)
        o[e] = (float)(w->acc[e] / sum);
}

/* p_cmp(t,h) as probabilities (spec 2; also feeds the selection scores). */
static void cmp_probs(const float *q, const ref_src *cmp, int dk, double scale, int nc,
                      double *p)
{
    double mx = -INFINITY, sum = 0.0;
    for (int i = 0; i < nc; i++) {
        p[i] = scale * dot(q, src_k(cmp, i), dk);
        if (p[i] > mx)
            mx = p[i];
    }
    for (int i = 0; i < nc; i++)
        sum += (p[i] = exp(p[i] - mx));
    for (int i = 0; i < nc; i++)
        p[i] /= sum;
}

/* Outputs of spec 2-5 for the query at position t and every head of one
 * group. q, gates and the outputs point at the group's first head (heads
 * contiguous); cmp holds the nc = n_cmp(t) visible compressed tokens. */
typedef struct ref_query {
    int64_t t;
    const float *q, *gates;
    ref_src cmp, slc, win;
    const int32_t *sel_in; /* [n] or NULL */
    int32_t *sel_out;      /* [n] or NULL */
    float *out, *out_cmp, *out_slc, *out_win;
} ref_query;

static void ref_group(const nsa_config *c, double scale, const nsa_csr *map, const ref_query *x,
                      ref_scratch *w)
{
    const int hpg = c->H / c->G, dk = c->dk, dv = c->dv, n = c->n;
    const int64_t t = x->t;
    const int nc = nsa_bm_n_cmp(c, t), vis = nsa_bm_n_sel_visible(c, t);

    /* compressed probabilities and the group score s = sum_h M p_cmp (Eq. 9-10) */
    for (int j = 0; j < vis; j++)
        w->score[j] = 0.0;
    for (int hh = 0; hh < hpg; hh++) {
        double *ph = w->p + (size_t)hh * w->max_nc;
        cmp_probs(x->q + (size_t)hh * dk, &x->cmp, dk, scale, nc, ph);
        for (int j = 0; j < vis; j++)
            for (int32_t e = map->rowptr[j]; e < map->rowptr[j + 1]; e++)
                if (map->col[e] < nc)
                    w->score[j] += map->val[e] * ph[map->col[e]];
    }
    /* selection (Eq. 11): given, or top-n */
    if (x->sel_in)
        memcpy(w->sel, x->sel_in, sizeof(int32_t) * n);
    else
        nsa_bm_select(c, t, w->score, w->work, w->sel);
    if (x->sel_out)
        memcpy(x->sel_out, w->sel, sizeof(int32_t) * n);
    /* spans of the selected tokens <= t */
    int ns = 0;
    for (int k = 0; k < n; k++) {
        if (w->sel[k] < 0)
            continue;
        int64_t lo = (int64_t)w->sel[k] * c->l_sel, hi = lo + c->l_sel;
        if (hi > t + 1)
            hi = t + 1;
        if (lo < hi) {
            w->lo[ns] = lo;
            w->hi[ns] = hi;
            ns++;
        }
    }
    const int64_t wlo = t - c->w + 1 > 0 ? t - c->w + 1 : 0, whi = t + 1;

    for (int hh = 0; hh < hpg; hh++) {
        const float *qh = x->q + (size_t)hh * dk;
        float *o_cmp = w->ob, *o_slc = w->ob + dv, *o_win = w->ob + 2 * dv;
        /* o_cmp = sum_i p_cmp[i] V_cmp[i] (Eq. 8) */
        const double *ph = w->p + (size_t)hh * w->max_nc;
        for (int e = 0; e < dv; e++) {
            double a = 0.0;
            for (int i = 0; i < nc; i++)
                a += ph[i] * (double)src_v(&x->cmp, i)[e];
            o_cmp[e] = (float)a; /* 0 when nothing is visible */
        }
        attend_spans(qh, &x->slc, dk, dv, scale, w->lo, w->hi, ns, w, o_slc);
        attend_spans(qh, &x->win, dk, dv, scale, &wlo, &whi, 1, w, o_win);
        /* gated sum (spec 5) */
        const float *gt = x->gates + (size_t)hh * 3;
        float *out = x->out + (size_t)hh * dv;
        for (int e = 0; e < dv; e++)
            out[e] = (float)((double)gt[0] * o_cmp[e] + (double)gt[1] * o_slc[e] +
                             (double)gt[2] * o_win[e]);
        if (x->out_cmp)
            memcpy(x->out_cmp + (size_t)hh * dv, o_cmp, sizeof(float) * dv);
        if (x->out_slc)
            memcpy(x->out_slc + (size_t)hh * dv, o_slc, sizeof(float) * dv);
        if (x->out_win)
            memcpy(x->out_win + (size_t)hh * dv, o_win, sizeof(float) * dv);
    }
}

static float *at(float *p, size_t off) { return p ? p + off : NULL; }

nsa_status nsa_ref_attend(nsa_context *ctx, const nsa_attn_job *job)
{
    const nsa_config *c = job->cfg;
    const nsa_batch *bt = job->batch;
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv, n = c->n;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    ref_scratch w;
    if (!scratch_alloc(&w, c, bt->max_len - 1))
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in the reference attention");
    for (int b = 0; b < bt->B; b++) {
        const int64_t base = bt->cu[b], S = bt->cu[b + 1] - base;
        for (int g = 0; g < G; g++) {
            ref_query x;
            memset(&x, 0, sizeof x);
            x.cmp = (ref_src){job->kc + (size_t)bt->cmp_off[b] * krow + (size_t)g * dk,
                              job->vc + (size_t)bt->cmp_off[b] * vrow + (size_t)g * dv,
                              krow, vrow, 0};
            x.slc = (ref_src){job->k_slc + (size_t)base * krow + (size_t)g * dk,
                              job->v_slc + (size_t)base * vrow + (size_t)g * dv, krow, vrow, 0};
            x.win = (ref_src){job->k_win + (size_t)base * krow + (size_t)g * dk,
                              job->v_win + (size_t)base * vrow + (size_t)g * dv, krow, vrow, 0};
            for (int64_t t = 0; t < S; t++) {
                const size_t row = (size_t)(base + t), h0 = row * H + (size_t)g * hpg;
                const size_t sel_at = (row * G + g) * n;
                x.t = t;
                x.q = job->q + h0 * dk;
                x.gates = job->gates + h0 * 3;
                x.sel_in = job->sel_in ? job->sel_in + sel_at : NULL;
                x.sel_out = job->sel_out ? job->sel_out + sel_at : NULL;
                x.out = job->out + h0 * dv;
                x.out_cmp = at(job->out_cmp, h0 * dv);
                x.out_slc = at(job->out_slc, h0 * dv);
                x.out_win = at(job->out_win, h0 * dv);
                ref_group(c, job->scale, job->map, &x, &w);
            }
        }
    }
    scratch_free(&w);
    return NSA_OK;
}

static int64_t decode_max_t(const nsa_decode_job *job)
{
    int64_t m = 0;
    for (int b = 0; b < job->B; b++)
        m = job->seq[b].t > m ? job->seq[b].t : m;
    return m;
}

/* One new token per sequence over the decode caches (spec 7). */
nsa_status nsa_ref_decode_attend(nsa_context *ctx, const nsa_decode_job *job)
{
    const nsa_config *c = job->cfg;
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv, n = c->n;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    ref_scratch w;
    if (!scratch_alloc(&w, c, decode_max_t(job)))
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in the reference decode");
    for (int b = 0; b < job->B; b++) {
        const nsa_decode_seq *sq = &job->seq[b];
        for (int g = 0; g < G; g++) {
            const size_t h0 = (size_t)b * H + (size_t)g * hpg;
            ref_query x;
            memset(&x, 0, sizeof x);
            x.t = sq->t;
            /* No compressed token yet (t < l): kc/vc may be NULL, and NULL + 0
             * is undefined behaviour in C (UBSan reports it). */
            x.cmp = (ref_src){sq->kc ? sq->kc + (size_t)g * dk : NULL,
                              sq->vc ? sq->vc + (size_t)g * dv : NULL, krow, vrow, 0};
            x.slc = (ref_src){sq->ks + (size_t)g * dk, sq->vs + (size_t)g * dv, krow, vrow, 0};
            x.win = (ref_src){sq->kw + (size_t)g * dk, sq->vw + (size_t)g * dv, krow, vrow,
                              c->w};
            x.q = job->q + h0 * dk;
            x.gates = job->gates + h0 * 3;
            x.sel_out = job->sel_out + ((size_t)b * G + g) * n;
            x.out = job->out + h0 * dv;
            x.out_cmp = at(job->out_cmp, h0 * dv);
            x.out_slc = at(job->out_slc, h0 * dv);
            x.out_win = at(job->out_win, h0 * dv);
            ref_group(c, job->scale, job->map, &x, &w);
        }
    }
    scratch_free(&w);
    return NSA_OK;
}

/* The dense decode baseline: each new token over all t+1 raw K/V rows. */
nsa_status nsa_ref_dense_decode(nsa_context *ctx, const nsa_decode_job *job)
{
    const nsa_config *c = job->cfg;
    const int H = c->H, G = c->G, hpg = H / G, dk = c->dk, dv = c->dv;
    const size_t krow = (size_t)G * dk, vrow = (size_t)G * dv;
    ref_scratch w;
    if (!scratch_alloc(&w, c, decode_max_t(job)))
        return nsa_fail(ctx, NSA_ERR_NOMEM, "out of memory in the reference dense decode");
    for (int b = 0; b < job->B; b++) {
        const nsa_decode_seq *sq = &job->seq[b];
        const int64_t lo = 0, hi = sq->t + 1;
        for (int h = 0; h < H; h++) {
            const int g = h / hpg;
            const ref_src src = {sq->ks + (size_t)g * dk, sq->vs + (size_t)g * dv, krow, vrow, 0};
            attend_spans(job->q + ((size_t)b * H + h) * dk, &src, dk, dv, job->scale, &lo, &hi,
                         1, &w, job->out + ((size_t)b * H + h) * dv);
        }
    }
    scratch_free(&w);
    return NSA_OK;
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
