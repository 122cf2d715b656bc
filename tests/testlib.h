/* Shared test helpers: seeded random data, poisoned buffers, comparisons. */
#ifndef NSA_TESTLIB_H
#define NSA_TESTLIB_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "nsa.h"
#include "nsa_internal.h"

/* Fills n floats uniform in [lo, hi) from a seeded generator. */
void tl_fill(float *x, size_t n, uint64_t seed, float lo, float hi);
/* Allocates n floats filled with a NaN pattern, so unwritten outputs fail. */
float *tl_poisoned(size_t n);
int32_t *tl_poisoned_i32(size_t n);
/* ||a - b|| / ||b|| in double; returns INFINITY if any element is NaN. */
double tl_rel_l2(const float *a, const float *b, size_t n);
/* Number of NaN/Inf elements. */
size_t tl_count_nonfinite(const float *a, size_t n);

/* A complete random operator problem for a config and batch. */
typedef struct tl_problem {
    nsa_config cfg;
    int B;
    int64_t T;
    int32_t *cu;
    int shared_kv;
    float *q, *kc, *vc, *ks, *vs, *kw, *vw, *gates;
} tl_problem;

void tl_problem_make(tl_problem *p, const nsa_config *cfg, const int *lens, int B,
                     int shared_kv, uint64_t seed);
void tl_problem_free(tl_problem *p);
/* Fills args from the problem (outputs left NULL). */
nsa_op_args tl_problem_args(const tl_problem *p);

#endif
