/* Spec 10: every configuration rule is rejected with its code and a message
 * naming the rule; spec 1: the defaults are the paper's. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "testlib.h"

#include <stdlib.h>
#include <string.h>

static void test_defaults(void **state)
{
    (void)state;
    nsa_config c = nsa_config_default();
    assert_int_equal(c.H, 64);
    assert_int_equal(c.G, 4);
    assert_int_equal(c.dk, 192);
    assert_int_equal(c.dv, 128);
    assert_int_equal(c.l, 32);
    assert_int_equal(c.d, 16);
    assert_int_equal(c.l_sel, 64);
    assert_int_equal(c.n, 16);
    assert_int_equal(c.n_init, 1);
    assert_int_equal(c.n_local, 2);
    assert_int_equal(c.w, 512);
    assert_int_equal(c.mapping, NSA_MAPPING_OVERLAP);
    assert_float_equal(nsa_config_scale(&c), 1.0 / 13.856406460551018, 1e-7);
    char msg[256] = "x";
    assert_int_equal(nsa_config_validate(&c, msg, sizeof msg), NSA_OK);
    assert_string_equal(msg, "");
}

typedef struct rule_case {
    const char *field;
    int value;
    nsa_status code;
    const char *msg_part;
} rule_case;

static void set_field(nsa_config *c, const char *f, int v)
{
    if (!strcmp(f, "H")) c->H = v;
    else if (!strcmp(f, "G")) c->G = v;
    else if (!strcmp(f, "dk")) c->dk = v;
    else if (!strcmp(f, "dv")) c->dv = v;
    else if (!strcmp(f, "l")) c->l = v;
    else if (!strcmp(f, "d")) c->d = v;
    else if (!strcmp(f, "l_sel")) c->l_sel = v;
    else if (!strcmp(f, "n")) c->n = v;
    else if (!strcmp(f, "n_init")) c->n_init = v;
    else if (!strcmp(f, "n_local")) c->n_local = v;
    else if (!strcmp(f, "w")) c->w = v;
    else if (!strcmp(f, "mapping")) c->mapping = (nsa_mapping)v;
    else fail_msg("unknown field %s", f);
}

static void test_each_rule(void **state)
{
    (void)state;
    const rule_case cases[] = {
        {"H", 0, NSA_ERR_ZERO_SIZE, "H=0 must be >= 1"},
        {"G", 0, NSA_ERR_ZERO_SIZE, "G=0 must be >= 1"},
        {"dk", 0, NSA_ERR_ZERO_SIZE, "dk=0 must be >= 1"},
        {"dv", -3, NSA_ERR_ZERO_SIZE, "dv=-3 must be >= 1"},
        {"l", 0, NSA_ERR_ZERO_SIZE, "l=0 must be >= 1"},
        {"d", 0, NSA_ERR_ZERO_SIZE, "d=0 must be >= 1"},
        {"l_sel", 0, NSA_ERR_ZERO_SIZE, "l'=0 must be >= 1"},
        {"n", 0, NSA_ERR_ZERO_SIZE, "n=0 must be >= 1"},
        {"n_init", -1, NSA_ERR_ZERO_SIZE, "n_init=-1 must be >= 0"},
        {"n_local", -1, NSA_ERR_ZERO_SIZE, "n_local=-1 must be >= 0"},
        {"w", 0, NSA_ERR_WINDOW, "w=0 must be >= 1"},
        {"G", 3, NSA_ERR_GQA, "G=3 must divide H=64"},
        {"d", 24, NSA_ERR_DIVISIBILITY, "d=24 must divide l=32"},
        {"l_sel", 40, NSA_ERR_DIVISIBILITY, "d=16 must divide l'=40"},
        {"n", 2, NSA_ERR_FORCED, "n=2 must be >= n_init + n_local = 1 + 2"},
        {"mapping", 7, NSA_ERR_ENUM, "mapping=7"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nsa_config c = nsa_config_default();
        set_field(&c, cases[i].field, cases[i].value);
        char msg[256] = "";
        nsa_status s = nsa_config_validate(&c, msg, sizeof msg);
        if (s != cases[i].code || !strstr(msg, cases[i].msg_part))
            fail_msg("%s=%d: got %d '%s', want %d '%s'", cases[i].field, cases[i].value,
                     (int)s, msg, (int)cases[i].code, cases[i].msg_part);
        assert_true(strlen(nsa_strerror(s)) > 0);
    }
    nsa_config c = nsa_config_default();
    c.scale = -1.0f;
    char msg[256];
    assert_int_equal(nsa_config_validate(&c, msg, sizeof msg), NSA_ERR_SCALE);
    assert_non_null(strstr(msg, "scale"));
    assert_int_equal(nsa_config_validate(NULL, msg, sizeof msg), NSA_ERR_NULL);
}

/* Bad inputs to the operator fail before any work, output untouched. */
static void test_operator_rejects(void **state)
{
    (void)state;
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("ref", &ctx, NULL, 0), NSA_OK);
    nsa_config c = nsa_config_default();
    c.H = 2; c.G = 1; c.dk = 4; c.dv = 4; c.l = 4; c.d = 2; c.l_sel = 4; c.n = 3; c.w = 4;
    int lens[2] = {5, 7};
    tl_problem p;
    tl_problem_make(&p, &c, lens, 2, 0, 11);
    nsa_op_args a = tl_problem_args(&p);
    float *out = tl_poisoned((size_t)p.T * c.H * c.dv);
    a.out = out;
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_OK);
    assert_int_equal(tl_count_nonfinite(out, (size_t)p.T * c.H * c.dv), 0);

    int32_t bad_cu[3] = {0, 7, 7};
    a.cu_seqlens = bad_cu;
    a.out = tl_poisoned((size_t)p.T * c.H * c.dv);
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_ERR_SEQLENS);
    assert_non_null(strstr(nsa_context_last_error(ctx), "increase strictly"));
    assert_int_equal(tl_count_nonfinite(a.out, (size_t)p.T * c.H * c.dv),
                     (size_t)p.T * c.H * c.dv);
    free(a.out);
    int32_t bad_end[3] = {0, 5, 11};
    a.cu_seqlens = bad_end;
    a.out = out;
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_ERR_SEQLENS);
    assert_non_null(strstr(nsa_context_last_error(ctx), "must equal T=12"));
    int32_t bad_start[3] = {1, 5, 12};
    a.cu_seqlens = bad_start;
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_ERR_SEQLENS);
    a.cu_seqlens = p.cu;
    a.k_win = NULL;
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_ERR_NULL);
    assert_non_null(strstr(nsa_context_last_error(ctx), "k_win"));
    a.k_win = p.kw;
    nsa_config bad = c;
    bad.d = 3;
    assert_int_equal(nsa_attention_forward(ctx, &bad, &a), NSA_ERR_DIVISIBILITY);
    assert_non_null(strstr(nsa_context_last_error(ctx), "d=3 must divide l=4"));
    a.T = 0;
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_ERR_ZERO_SIZE);
    a.T = p.T;
    /* a caller-given selection with an invisible block */
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)p.T * c.G * c.n);
    for (size_t i = 0; i < (size_t)p.T * c.G * c.n; i++)
        sel[i] = -1;
    sel[0] = 1; /* t=0 sees only block 0 */
    a.selection_in = sel;
    assert_int_equal(nsa_attention_forward(ctx, &c, &a), NSA_ERR_SELECTION);
    free(sel);
    free(out);
    tl_problem_free(&p);
    nsa_context_free(ctx);
}

static void test_backends(void **state)
{
    (void)state;
    int n = nsa_backend_count();
    assert_true(n >= 1);
    nsa_backend_info info;
    assert_int_equal(nsa_backend_get_info(n - 1, &info), NSA_OK);
    assert_string_equal(info.name, "ref");
    assert_int_equal(info.available, 1);
    assert_int_equal(nsa_backend_get_info(n, &info), NSA_ERR_ARG);
    nsa_context *ctx = (nsa_context *)0x1;
    char msg[256];
    assert_int_equal(nsa_context_create("nope", &ctx, msg, sizeof msg), NSA_ERR_UNAVAILABLE);
    assert_null(ctx);
    assert_non_null(strstr(msg, "unknown backend 'nope'"));
    assert_non_null(strstr(msg, "ref"));
    setenv("NSA_BACKEND", "ref", 1);
    assert_int_equal(nsa_context_create("auto", &ctx, msg, sizeof msg), NSA_OK);
    assert_string_equal(nsa_context_backend(ctx), "ref");
    nsa_context_free(ctx);
    setenv("NSA_BACKEND", "nope", 1);
    assert_int_equal(nsa_context_create(NULL, &ctx, msg, sizeof msg), NSA_ERR_UNAVAILABLE);
    unsetenv("NSA_BACKEND");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_each_rule),
        cmocka_unit_test(test_operator_rejects),
        cmocka_unit_test(test_backends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
