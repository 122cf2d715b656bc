/* The nsa_run_* dispatch of lib/registry.c, on nsa_run_linear_many (the
 * projections of a layer): a backend's own linear_many runs the jobs as one
 * call; without one, each job runs through nsa_run_linear with the same
 * results, and the verbose log says so once per context (except on "ref",
 * whose loop it is). */
#define _POSIX_C_SOURCE 200809L /* dup, dup2, fileno */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { ROWS = 5, IN = 12, OUT0 = 7, OUT1 = 9 };

typedef struct jobs {
    float x[ROWS * IN], w0[OUT0 * IN], w1[OUT1 * IN], b1[OUT1];
    float *y0, *y1;
    nsa_linear_job j[2];
} jobs;

static void jobs_make(jobs *s, uint64_t seed)
{
    tl_fill(s->x, ROWS * IN, seed, -1.0f, 1.0f);
    tl_fill(s->w0, OUT0 * IN, seed + 1, -1.0f, 1.0f);
    tl_fill(s->w1, OUT1 * IN, seed + 2, -1.0f, 1.0f);
    tl_fill(s->b1, OUT1, seed + 3, -1.0f, 1.0f);
    s->y0 = tl_poisoned(ROWS * OUT0);
    s->y1 = tl_poisoned(ROWS * OUT1);
    s->j[0] = (nsa_linear_job){s->x, ROWS, IN, OUT0, s->w0, NULL, s->y0, NULL};
    s->j[1] = (nsa_linear_job){s->x, ROWS, IN, OUT1, s->w1, s->b1, s->y1, NULL};
}

static void jobs_free(jobs *s)
{
    free(s->y0);
    free(s->y1);
}

/* nsa_run_linear_many on ctx, verbose, with what it wrote to stderr in
 * log[len]. */
static nsa_status run_logged(nsa_context *ctx, const nsa_linear_job *j, int n, char *log,
                             size_t len)
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    const int saved = dup(fileno(stderr));
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), fileno(stderr)) >= 0);
    const int verbose = ctx->verbose;
    ctx->verbose = 1;
    const nsa_status s = nsa_run_linear_many(ctx, j, n);
    ctx->verbose = verbose;
    fflush(stderr);
    dup2(saved, fileno(stderr));
    close(saved);
    rewind(tmp);
    const size_t got = fread(log, 1, len - 1, tmp);
    log[got] = '\0';
    fclose(tmp);
    return s;
}

/* Without linear_many: each job as nsa_run_linear computes it, said in the
 * log on a backend other than "ref". */
static void test_fallback(void **state)
{
    (void)state;
    static const char *const names[] = {"cpu", "ref"};
    for (size_t b = 0; b < sizeof names / sizeof *names; b++) {
        nsa_context *ctx;
        assert_int_equal(nsa_context_create(names[b], &ctx, NULL, 0), NSA_OK);
        assert_null(ctx->be->linear_many); /* the case under test */
        jobs many, one;
        jobs_make(&many, 7);
        jobs_make(&one, 7);
        char log[1024];
        assert_int_equal(run_logged(ctx, many.j, 2, log, sizeof log), NSA_OK);
        for (int i = 0; i < 2; i++)
            assert_int_equal(nsa_run_linear(ctx, &one.j[i]), NSA_OK);
        assert_memory_equal(many.y0, one.y0, sizeof(float) * ROWS * OUT0);
        assert_memory_equal(many.y1, one.y1, sizeof(float) * ROWS * OUT1);
        assert_int_equal(tl_count_nonfinite(many.y0, ROWS * OUT0), 0);
        assert_int_equal(tl_count_nonfinite(many.y1, ROWS * OUT1), 0);
        char want[128];
        snprintf(want, sizeof want, "libnsa: backend '%s' has no linear_many", names[b]);
        if (strcmp(names[b], "ref") == 0)
            assert_null(strstr(log, "has no"));
        else if (!strstr(log, want))
            fail_msg("%s: log lacks \"%s\": \"%s\"", names[b], want, log);
        jobs_free(&many);
        jobs_free(&one);
        nsa_context_free(ctx);
    }
}

/* The fallback is said once per context, not on every call (a layer runs
 * its projections through linear_many on each forward and decode step):
 * a second call on the same context still computes every output but logs
 * no fallback; another context says it again. */
static void test_fallback_logged_once(void **state)
{
    (void)state;
    nsa_context *ctx[2];
    for (int c = 0; c < 2; c++)
        assert_int_equal(nsa_context_create("cpu", &ctx[c], NULL, 0), NSA_OK);
    assert_null(ctx[0]->be->linear_many); /* the case under test */
    const char *want = "libnsa: backend 'cpu' has no linear_many";
    char log[1024];
    for (int call = 0; call < 3; call++) {
        nsa_context *on = ctx[call < 2 ? 0 : 1];
        jobs s;
        jobs_make(&s, 21 + (uint64_t)call);
        assert_int_equal(run_logged(on, s.j, 2, log, sizeof log), NSA_OK);
        assert_int_equal(tl_count_nonfinite(s.y0, ROWS * OUT0), 0);
        assert_int_equal(tl_count_nonfinite(s.y1, ROWS * OUT1), 0);
        if (call == 1 && strstr(log, "has no"))
            fail_msg("second call on one context logged again: \"%s\"", log);
        if (call != 1 && !strstr(log, want))
            fail_msg("call %d (%s context) lacks \"%s\": \"%s\"", call,
                     call ? "another" : "a new", want, log);
        jobs_free(&s);
    }
    for (int c = 0; c < 2; c++)
        nsa_context_free(ctx[c]);
}

/* A backend's linear_many gets all the jobs in one call, and nothing is
 * logged. */
static int many_calls, many_n;
static nsa_status count_many(nsa_context *ctx, const nsa_linear_job *j, int n)
{
    (void)ctx;
    (void)j;
    many_calls++;
    many_n = n;
    return NSA_OK;
}

static void test_backend_own(void **state)
{
    (void)state;
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("cpu", &ctx, NULL, 0), NSA_OK);
    nsa_backend_ops ops = *ctx->be;
    ops.linear_many = count_many;
    const nsa_backend_ops *real = ctx->be;
    ctx->be = &ops;
    jobs s;
    jobs_make(&s, 11);
    char log[1024];
    assert_int_equal(run_logged(ctx, s.j, 2, log, sizeof log), NSA_OK);
    ctx->be = real;
    assert_int_equal(many_calls, 1);
    assert_int_equal(many_n, 2);
    assert_string_equal(log, "");
    jobs_free(&s);
    nsa_context_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_fallback_logged_once),
        cmocka_unit_test(test_backend_own),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
