/* The safetensors reader and writer alone: round trips, the conformance
 * files, and every kind of malformed file rejected with its message. */
#define _POSIX_C_SOURCE 200809L
#include "testlib.h"
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef NSA_SHARED_DIR
#define NSA_SHARED_DIR "../shared"
#endif

/* A private directory per test, so leftover temporary files can be seen. */
static char *make_dir(void)
{
    char *d = strdup("/tmp/nsa_st_XXXXXX");
    assert_non_null(d);
    assert_non_null(mkdtemp(d));
    return d;
}

static int dir_entries(const char *dir)
{
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(dp);
    return n;
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    assert_non_null(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void write_bytes(const char *path, const void *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    assert_true(sz >= 0);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
    fclose(fp);
    *n = (size_t)sz;
    return b;
}

/* A file with an explicit header length field, JSON text and data bytes. */
static void write_raw(const char *path, uint64_t hlen, const char *json, const void *data,
                      size_t dlen)
{
    size_t jl = strlen(json);
    unsigned char *b = malloc(8 + jl + dlen + 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + 8, json, jl);
    if (dlen)
        memcpy(b + 8 + jl, data, dlen);
    write_bytes(path, b, 8 + jl + dlen);
    free(b);
}

static void expect_fail(const char *path, nsa_status code, const char *part)
{
    nsa_st_file f;
    char msg[512] = "";
    nsa_status s = nsa_st_read(path, &f, msg, sizeof msg);
    if (s != code || !strstr(msg, part))
        fail_msg("expected %d containing \"%s\", got %d: \"%s\"", code, part, s, msg);
    /* Nothing may stay allocated or referenced after a failure. */
    assert_null(f.tensors);
    assert_null(f.buf);
    assert_int_equal(f.count, 0);
    assert_int_equal(f.meta_count, 0);
}

static void test_roundtrip(void **state)
{
    (void)state;
    char *dir = make_dir(), *path = join(dir, "a.safetensors");
    float a[2 * 3 * 5];
    tl_fill(a, 30, 11, -2.0f, 2.0f);
    int32_t ids[7] = {0, -1, 5, INT32_MAX, INT32_MIN, 42, 7};
    float scalar = 3.25f;
    nsa_st_out t[4] = {
        {"alpha", NSA_ST_F32, 3, {2, 3, 5}, a},
        {"ids", NSA_ST_I32, 1, {7}, ids},
        {"scalar", NSA_ST_F32, 0, {0}, &scalar},
        {"empty", NSA_ST_F32, 2, {0, 4}, NULL},
    };
    const char *keys[] = {"format", "note"}, *vals[] = {"test", "quotes \" and \\ ok"};
    char msg[256] = "x";
    assert_int_equal(nsa_st_write(path, t, 4, keys, vals, 2, msg, sizeof msg), NSA_OK);
    assert_string_equal(msg, "");
    /* Only the target is left: the temporary file was renamed. */
    assert_int_equal(dir_entries(dir), 1);

    size_t n;
    unsigned char *raw = slurp(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    assert_int_equal(hlen % 8, 0); /* padded, so the data starts aligned */
    assert_int_equal(n, 8 + hlen + sizeof a + sizeof ids + 4);
    assert_int_equal(raw[8], '{');
    free(raw);

    nsa_st_file f;
    assert_int_equal(nsa_st_read(path, &f, msg, sizeof msg), NSA_OK);
    assert_int_equal(f.count, 4);
    assert_int_equal(f.meta_count, 2);
    assert_string_equal(nsa_st_meta(&f, "format"), "test");
    assert_string_equal(nsa_st_meta(&f, "note"), vals[1]);
    assert_null(nsa_st_meta(&f, "absent"));
    const nsa_st_tensor *ta = nsa_st_find(&f, "alpha");
    assert_non_null(ta);
    assert_int_equal(ta->dtype, NSA_ST_F32);
    assert_string_equal(ta->dtype_name, "F32");
    assert_int_equal(ta->ndim, 3);
    assert_int_equal(ta->shape[0], 2);
    assert_int_equal(ta->shape[1], 3);
    assert_int_equal(ta->shape[2], 5);
    assert_int_equal(ta->nbytes, sizeof a);
    assert_memory_equal(ta->data, a, sizeof a);
    const nsa_st_tensor *ti = nsa_st_find(&f, "ids");
    assert_non_null(ti);
    assert_int_equal(ti->dtype, NSA_ST_I32);
    assert_memory_equal(ti->data, ids, sizeof ids);
    const nsa_st_tensor *ts = nsa_st_find(&f, "scalar");
    assert_non_null(ts);
    assert_int_equal(ts->ndim, 0);
    assert_int_equal(ts->nbytes, 4);
    assert_memory_equal(ts->data, &scalar, 4);
    const nsa_st_tensor *te = nsa_st_find(&f, "empty");
    assert_non_null(te);
    assert_int_equal(te->nbytes, 0);
    assert_null(nsa_st_find(&f, "nope"));
    nsa_st_free(&f);
    assert_null(f.tensors);

    /* Overwriting an existing file replaces it whole. */
    assert_int_equal(nsa_st_write(path, t, 1, NULL, NULL, 0, msg, sizeof msg), NSA_OK);
    assert_int_equal(nsa_st_read(path, &f, msg, sizeof msg), NSA_OK);
    assert_int_equal(f.count, 1);
    assert_int_equal(f.meta_count, 0);
    nsa_st_free(&f);

    unlink(path);
    rmdir(dir);
    free(path);
    free(dir);
}

static void test_writer_errors(void **state)
{
    (void)state;
    char *dir = make_dir(), *path = join(dir, "w.safetensors");
    float a[4] = {1, 2, 3, 4};
    char msg[256];
    nsa_st_out dup[2] = {{"x", NSA_ST_F32, 1, {4}, a}, {"x", NSA_ST_F32, 1, {4}, a}};
    assert_int_equal(nsa_st_write(path, dup, 2, NULL, NULL, 0, msg, sizeof msg), NSA_ERR_ARG);
    assert_non_null(strstr(msg, "'x' given twice"));
    nsa_st_out f64 = {"y", NSA_ST_F64, 1, {2}, a};
    assert_int_equal(nsa_st_write(path, &f64, 1, NULL, NULL, 0, msg, sizeof msg),
                     NSA_ERR_UNSUPPORTED);
    assert_non_null(strstr(msg, "'y'"));
    nsa_st_out nul = {"z", NSA_ST_F32, 1, {4}, NULL};
    assert_int_equal(nsa_st_write(path, &nul, 1, NULL, NULL, 0, msg, sizeof msg), NSA_ERR_NULL);
    nsa_st_out neg = {"n", NSA_ST_F32, 1, {-1}, a};
    assert_int_equal(nsa_st_write(path, &neg, 1, NULL, NULL, 0, msg, sizeof msg), NSA_ERR_ARG);
    nsa_st_out res = {"__metadata__", NSA_ST_F32, 1, {4}, a};
    assert_int_equal(nsa_st_write(path, &res, 1, NULL, NULL, 0, msg, sizeof msg), NSA_ERR_ARG);
    const char *k2[] = {"a", "a"}, *v2[] = {"1", "2"};
    nsa_st_out ok = {"x", NSA_ST_F32, 1, {4}, a};
    assert_int_equal(nsa_st_write(path, &ok, 1, k2, v2, 2, msg, sizeof msg), NSA_ERR_ARG);
    assert_non_null(strstr(msg, "metadata key 'a'"));
    assert_int_equal(dir_entries(dir), 0);

    /* A missing directory is an I/O error naming the path and the cause. */
    char *bad = join(dir, "missing/w.safetensors");
    assert_int_equal(nsa_st_write(bad, &ok, 1, NULL, NULL, 0, msg, sizeof msg), NSA_ERR_IO);
    assert_non_null(strstr(msg, bad));
    assert_non_null(strstr(msg, strerror(ENOENT)));
    free(bad);
    assert_int_equal(dir_entries(dir), 0);
    rmdir(dir);
    free(path);
    free(dir);
}

static int64_t meta_int(const nsa_st_file *f, const char *k)
{
    const char *v = nsa_st_meta(f, k);
    if (!v)
        fail_msg("metadata %s missing", k);
    return strtoll(v, NULL, 10);
}

static void check_shape(const nsa_st_file *f, const char *name, nsa_st_dtype dt, int ndim,
                        int64_t a, int64_t b, int64_t c)
{
    const nsa_st_tensor *t = nsa_st_find(f, name);
    if (!t)
        fail_msg("tensor %s missing", name);
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->ndim, ndim);
    const int64_t want[3] = {a, b, c};
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != want[i])
            fail_msg("%s shape[%d] = %lld, expected %lld", name, i, (long long)t->shape[i],
                     (long long)want[i]);
}

/* The conformance vectors: every tensor's shape follows from the metadata. */
static void test_conformance_files(void **state)
{
    (void)state;
    glob_t g;
    assert_int_equal(glob(NSA_SHARED_DIR "/conformance/*.safetensors", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 5);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        nsa_st_file f;
        char msg[512];
        nsa_status s = nsa_st_read(g.gl_pathv[i], &f, msg, sizeof msg);
        if (s)
            fail_msg("%s: %s", g.gl_pathv[i], msg);
        int64_t H = meta_int(&f, "H"), G = meta_int(&f, "G"), dk = meta_int(&f, "dk"),
                dv = meta_int(&f, "dv"), n = meta_int(&f, "n"), shared = meta_int(&f, "shared_kv");
        const nsa_st_tensor *q = nsa_st_find(&f, "q"), *cu = nsa_st_find(&f, "cu_seqlens");
        assert_non_null(q);
        assert_non_null(cu);
        int64_t T = q->shape[0];
        assert_int_equal(f.count, shared ? 10 : 14);
        check_shape(&f, "q", NSA_ST_F32, 3, T, H, dk);
        const char *kn[] = {"k_cmp", "k_slc", "k_win"}, *vn[] = {"v_cmp", "v_slc", "v_win"};
        for (int b = 0; b < (shared ? 1 : 3); b++) {
            check_shape(&f, kn[b], NSA_ST_F32, 3, T, G, dk);
            check_shape(&f, vn[b], NSA_ST_F32, 3, T, G, dv);
        }
        check_shape(&f, "gates", NSA_ST_F32, 3, T, H, 3);
        const char *on[] = {"out", "out_cmp", "out_slc", "out_win"};
        for (int b = 0; b < 4; b++)
            check_shape(&f, on[b], NSA_ST_F32, 3, T, H, dv);
        check_shape(&f, "selection", NSA_ST_I32, 3, T, G, n);
        assert_int_equal(cu->dtype, NSA_ST_I32);
        assert_int_equal(cu->ndim, 1);
        int32_t first, last;
        memcpy(&first, cu->data, 4);
        memcpy(&last, (const char *)cu->data + cu->nbytes - 4, 4);
        assert_int_equal(first, 0);
        assert_int_equal(last, T);
        nsa_st_free(&f);
    }
    globfree(&g);
}

typedef struct bad_case {
    const char *json;
    size_t dlen;
    const char *part;
} bad_case;

static void test_malformed(void **state)
{
    (void)state;
    char *dir = make_dir(), *path = join(dir, "bad.safetensors");
    unsigned char data[64];
    for (int i = 0; i < 64; i++)
        data[i] = (unsigned char)(i * 7 + 1);
    const bad_case cases[] = {
        {"not json", 0, "not valid JSON"},
        {"[1,2]", 0, "not a JSON object"},
        {"{\"__metadata__\":{\"a\":1}}", 0, "metadata value of 'a' is not a string"},
        {"{\"__metadata__\":[]}", 0, "__metadata__ is not a JSON object"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "duplicate"},
        {"{\"x\":5}", 0, "tensor 'x': entry is not a JSON object"},
        {"{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'x': dtype missing"},
        {"{\"x\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'x': unknown dtype 'Q7'"},
        {"{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'x': shape missing"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'x': shape[0] is not a non-negative integer"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
         "tensor 'x': shape[0]"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'x': 9 dimensions"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
         4, "tensor 'x': shape x dtype size overflows"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4,
         "tensor 'x': data_offsets must be two"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
         "tensor 'x': data_offsets [8, 4] end before they begin"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12,
         "tensor 'x': data_offsets [0, 16] run past the data section (12 bytes"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16,
         "tensor 'x': 16 data bytes, but dtype F32 and its shape need 12"},
        {"{\"x\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
         "need 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "tensors 'a' and 'b' overlap"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4,
         "tensor 'x': unknown field 'extra'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(path, strlen(cases[i].json), cases[i].json, data, cases[i].dlen);
        expect_fail(path, NSA_ERR_FORMAT, cases[i].part);
    }

    /* Valid corner cases: gaps between tensors, an empty tensor anywhere,
     * header padding, BF16 storage. */
    const char *ok = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                     "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[9,9]},"
                     "\"a\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}    ";
    write_raw(path, strlen(ok), ok, data, 16);
    nsa_st_file f;
    char msg[256];
    assert_int_equal(nsa_st_read(path, &f, msg, sizeof msg), NSA_OK);
    assert_int_equal(f.count, 3);
    const nsa_st_tensor *tb = nsa_st_find(&f, "b");
    assert_int_equal(tb->dtype, NSA_ST_BF16);
    assert_memory_equal(tb->data, data + 8, 4);
    assert_int_equal(nsa_st_find(&f, "a")->dtype, NSA_ST_I64);
    assert_memory_equal(nsa_st_find(&f, "a")->data, data, 8);
    nsa_st_free(&f);

    /* Header length fields that cannot be right. */
    const char *j = "{}";
    write_raw(path, 1000, j, NULL, 0);
    expect_fail(path, NSA_ERR_FORMAT, "header length 1000 but only 2 bytes follow it");
    write_raw(path, 100000001ull, j, NULL, 0);
    expect_fail(path, NSA_ERR_FORMAT, "header length 100000001 is larger than the");
    write_raw(path, UINT64_MAX, j, NULL, 0);
    expect_fail(path, NSA_ERR_FORMAT, "is larger than the");
    write_raw(path, 0, "", NULL, 0);
    expect_fail(path, NSA_ERR_FORMAT, "too short");
    write_bytes(path, "abc", 3);
    expect_fail(path, NSA_ERR_FORMAT, "shorter than the 8-byte header length");

    /* Missing files and directories are I/O errors with the cause. */
    char *missing = join(dir, "missing.safetensors");
    expect_fail(missing, NSA_ERR_IO, strerror(ENOENT));
    expect_fail(missing, NSA_ERR_IO, missing);
    free(missing);
    expect_fail(dir, NSA_ERR_IO, dir);
    /* A FIFO must be refused, not block the reader forever. */
    char *fifo = join(dir, "fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    expect_fail(fifo, NSA_ERR_IO, "not a regular file");
    unlink(fifo);
    free(fifo);

    unlink(path);
    rmdir(dir);
    free(path);
    free(dir);
}

/* Every cut through the length field and the header, and several through
 * the data, is rejected as malformed; only the whole file reads. */
static void test_truncation(void **state)
{
    (void)state;
    char *dir = make_dir(), *full = join(dir, "full.safetensors"),
         *cut = join(dir, "cut.safetensors");
    float a[40];
    int32_t b[6] = {1, 2, 3, 4, 5, 6};
    tl_fill(a, 40, 3, -1.0f, 1.0f);
    nsa_st_out t[2] = {{"a", NSA_ST_F32, 2, {8, 5}, a}, {"b", NSA_ST_I32, 1, {6}, b}};
    const char *k[] = {"m"}, *v[] = {"v"};
    char msg[512];
    assert_int_equal(nsa_st_write(full, t, 2, k, v, 1, msg, sizeof msg), NSA_OK);
    size_t n;
    unsigned char *raw = slurp(full, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    size_t data_cuts[] = {1, 4, 80, 159, 160, 161, 183};
    size_t ncuts = (size_t)(8 + hlen) + 1 + sizeof data_cuts / sizeof data_cuts[0];
    for (size_t c = 0; c < ncuts; c++) {
        size_t len = c <= 8 + hlen ? c : (size_t)(8 + hlen) + data_cuts[c - 9 - hlen];
        assert_true(len < n);
        write_bytes(cut, raw, len);
        nsa_st_file f;
        nsa_status s = nsa_st_read(cut, &f, msg, sizeof msg);
        if (s != NSA_ERR_FORMAT)
            fail_msg("cut at %zu of %zu: status %d (%s)", len, n, s, msg);
        assert_null(f.buf);
    }
    write_bytes(cut, raw, n);
    nsa_st_file f;
    assert_int_equal(nsa_st_read(cut, &f, msg, sizeof msg), NSA_OK);
    nsa_st_free(&f);
    free(raw);
    unlink(cut);
    unlink(full);
    rmdir(dir);
    free(cut);
    free(full);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),         cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_conformance_files), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
