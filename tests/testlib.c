#include "testlib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tl_fill(float *x, size_t n, uint64_t seed, float lo, float hi)
{
    nsa_rng r = {seed};
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * 0.5f * (nsa_rng_uniform(&r) + 1.0f);
}

float *tl_poisoned(size_t n)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

int32_t *tl_poisoned_i32(size_t n)
{
    int32_t *p = malloc(sizeof(int32_t) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = INT32_MIN + 7;
    return p;
}

double tl_rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (den == 0.0)
        return num == 0.0 ? 0.0 : INFINITY;
    return sqrt(num / den);
}

size_t tl_count_nonfinite(const float *a, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += !isfinite(a[i]);
    return c;
}

static float *rnd(size_t n, uint64_t seed)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    tl_fill(p, n, seed, -1.0f, 1.0f);
    return p;
}

void tl_problem_make(tl_problem *p, const nsa_config *cfg, const int *lens, int B,
                     int shared_kv, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->cfg = *cfg;
    p->B = B;
    p->shared_kv = shared_kv;
    p->cu = malloc(sizeof(int32_t) * ((size_t)B + 1));
    assert_non_null(p->cu);
    p->cu[0] = 0;
    for (int i = 0; i < B; i++)
        p->cu[i + 1] = p->cu[i] + lens[i];
    p->T = p->cu[B];
    size_t T = (size_t)p->T, H = (size_t)cfg->H, G = (size_t)cfg->G;
    p->q = rnd(T * H * cfg->dk, seed + 1);
    p->kc = rnd(T * G * cfg->dk, seed + 2);
    p->vc = rnd(T * G * cfg->dv, seed + 3);
    if (shared_kv) {
        p->ks = p->kw = p->kc;
        p->vs = p->vw = p->vc;
    } else {
        p->ks = rnd(T * G * cfg->dk, seed + 4);
        p->vs = rnd(T * G * cfg->dv, seed + 5);
        p->kw = rnd(T * G * cfg->dk, seed + 6);
        p->vw = rnd(T * G * cfg->dv, seed + 7);
    }
    p->gates = malloc(sizeof(float) * T * H * 3);
    assert_non_null(p->gates);
    tl_fill(p->gates, T * H * 3, seed + 8, 0.0f, 1.0f);
}

void tl_problem_free(tl_problem *p)
{
    free(p->cu);
    free(p->q);
    free(p->kc);
    free(p->vc);
    if (!p->shared_kv) {
        free(p->ks);
        free(p->vs);
        free(p->kw);
        free(p->vw);
    }
    free(p->gates);
    memset(p, 0, sizeof *p);
}

nsa_op_args tl_problem_args(const tl_problem *p)
{
    nsa_op_args a;
    memset(&a, 0, sizeof a);
    a.T = p->T;
    a.B = p->B;
    a.cu_seqlens = p->cu;
    a.q = p->q;
    a.k_cmp = p->kc;
    a.v_cmp = p->vc;
    a.k_slc = p->ks;
    a.v_slc = p->vs;
    a.k_win = p->kw;
    a.v_win = p->vw;
    a.gates = p->gates;
    return a;
}
