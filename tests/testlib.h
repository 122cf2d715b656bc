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

/* The paper defaults with every size and the mapping given. */
nsa_config tl_config(int H, int G, int dk, int dv, int l, int d, int l_sel, int n, int n_init,
                     int n_local, int w, nsa_mapping m);
/* A small layer (D=16, H=4, G=2, dk=8, dv=6, l=8 d=4 l'=16 n=3 w=12,
 * rope over all dk): fast enough for every backend and every test. */
nsa_layer_config tl_layer_config_small(void);
/* Fills n floats uniform in [lo, hi) from a seeded generator. */
void tl_fill(float *x, size_t n, uint64_t seed, float lo, float hi);
/* Allocates n floats filled with a NaN pattern, so unwritten outputs fail. */
float *tl_poisoned(size_t n);
int32_t *tl_poisoned_i32(size_t n);
/* ||a - b|| / ||b|| in double; returns INFINITY if any element is NaN. */
double tl_rel_l2(const float *a, const float *b, size_t n);
/* Number of NaN/Inf elements. */
size_t tl_count_nonfinite(const float *a, size_t n);
/* x rounded to nearest even as K/V storage kind kv holds it (0 fp32: x;
 * 1 fp16; 2 bf16), as a float: the tests' own oracle (scaled rint in
 * double), independent of the library's conversions. NaN stays NaN. */
float tl_round_kv(int kv, float x);
/* The storage kind NSA_OPENCL_KV names for the opencl backend (1 fp16,
 * 2 bf16; 0 for fp32, unset, or another backend). */
int tl_kv_of(const char *backend);

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

/* ------------------------------------------------ operator test helpers */
/* n_cmp(t) of spec 2 written again from the spec, independently of
 * lib/blockmath.c, so a test that uses it can catch an error there. */
int tl_spec_n_cmp(const nsa_config *cfg, int64_t t);

/* The cpu backend's kernel sets usable here, each once, in rank order
 * (scalar, avx2, avx512; scalar, neon), into names[TL_KERNEL_SETS]: a set's
 * name, which as a cap (nsa_cpu_set_max_isa, NSA_MAX_ISA) gives exactly that
 * set. A cap that maps to a set already listed is skipped; a set of this
 * processor's family not usable here gets a SKIP line saying why (once a
 * run). Returns the count, at least 1 (scalar). */
#define TL_KERNEL_SETS 4
int tl_kernel_sets(const char **names);

/* Random phi weights for one of K or V (kind 0 avg, 1 mlp with `hidden`
 * units or one linear layer at 0; pe: a positional term), from seed. */
typedef struct tl_phi {
    nsa_phi phi;
    float *pe, *w1, *b1, *w2, *b2;
} tl_phi;
void tl_phi_make(tl_phi *p, const nsa_config *c, int dim, int kind, int hidden, int pe,
                 uint64_t seed);
void tl_phi_free(tl_phi *p);

/* An integer from the environment, dflt when unset or empty. */
long tl_env_long(const char *name, long dflt);

/* Whether valgrind's preload library is in LD_PRELOAD (it runs the suites
 * ~40x slower: there few cases check memory use, native runs the numbers). */
int tl_under_valgrind(void);

/* The OpenCL suites' setup: the default device (a GPU) if the backend
 * finds one, else any device (PoCL in CI), unless NSA_OPENCL_DEVICE is set;
 * and a private program cache made from tmpl ("/tmp/name-XXXXXX", rewritten
 * in place) as NSA_OPENCL_CACHE_DIR, so a suite never writes into the
 * user's cache. 0 if the directory cannot be made. */
int tl_opencl_setup(char *tmpl);
/* Removes that private cache directory and the entries in it. */
void tl_opencl_teardown(const char *dir);

/* The backend under test: $NSA_TEST_BACKEND, default "ref", so the same
 * test binaries later cross-check other backends. */
const char *tl_backend_name(void);
/* 1, with a line saying why, when backend is "opencl" and the run asks
 * for half K/V storage (NSA_OPENCL_KV=fp16 or bf16): a suite that holds
 * the backend to the fp32 contract (spec 9: 1e-5) then exits 77
 * (automake's skip) instead of failing by design. Half storage has its
 * own tests with tolerances from the rounding (test_opencl's test_kv_*,
 * test_cl_slc's test_half_storage, test_decode (storage-aware) and its
 * test_resident_half, test_decode_mma). */
int tl_skip_half_storage(const char *backend);
/* A context on tl_backend_name(); fails the test if it cannot be made. */
nsa_context *tl_context(void);

/* A deep copy (shared_kv problems stay shared: one k/v pair). */
void tl_problem_clone(tl_problem *dst, const tl_problem *src);

/* Every output of one forward call, poisoned before the call so any
 * element the backend forgets to write shows up as NaN / a bad index. */
typedef struct tl_outputs {
    int64_t T, C; /* rows of out*, rows of the compressed tokens */
    int H, G, n, dk, dv;
    float *out, *out_cmp, *out_slc, *out_win;
    int32_t *sel;
    float *kc, *vc; /* [C][G][dk], [C][G][dv] */
} tl_outputs;

void tl_outputs_alloc(tl_outputs *o, const tl_problem *p);
void tl_outputs_free(tl_outputs *o);
/* Points the output members of a at o's buffers. */
void tl_outputs_attach(tl_outputs *o, nsa_op_args *a);
/* Re-poisons o (for a second call into the same buffers). */
void tl_outputs_poison(tl_outputs *o);
/* Runs a (outputs attached here) on ctx, asserts NSA_OK, and asserts that
 * every output element was written (finite floats, indices in -1..). */
void tl_forward(nsa_context *ctx, const tl_problem *p, nsa_op_args *a, tl_outputs *o);
/* The common case: tl_problem_args(p) plus optional selection_in. */
void tl_forward_plain(nsa_context *ctx, const tl_problem *p, const int32_t *sel_in,
                      tl_outputs *o);

/* Bytewise equality of float rows [r0, r1) of width w. */
int tl_rows_identical(const float *a, const float *b, int64_t r0, int64_t r1, size_t w);
int tl_rows_identical_i32(const int32_t *a, const int32_t *b, int64_t r0, int64_t r1,
                          size_t w);

#endif
