/* Layer weights I/O: save -> load gives the same config, bit-identical
 * tensors and a bit-identical forward; every malformed file is rejected
 * with its code and a message naming the problem, without a crash. */
#define _POSIX_C_SOURCE 200809L
#include "testlib.h"
#include "layer.h"
#include "safetensors.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef NSA_SHARED_DIR
#define NSA_SHARED_DIR "../shared"
#endif

/* The variants the brief asks for: shared/independent KV, avg and mlp phi
 * (hidden 0 and > 0), pe, both gate activations and gate MLP shapes, and
 * the non-default enums and floats, so each metadata key matters. */
static nsa_layer_config variant(int v)
{
    nsa_layer_config c = tl_layer_config_small();
    switch (v) {
    case 0: /* defaults: independent KV, avg, softmax, linear gate */
        break;
    case 1:
        c.shared_kv = 1;
        c.phi = NSA_PHI_MLP;
        c.phi_hidden = 0;
        c.phi_pe = 1;
        c.gate_act = NSA_GATE_SIGMOID;
        c.gate_hidden = 5;
        break;
    case 2:
        c.phi = NSA_PHI_MLP;
        c.phi_hidden = 7;
        c.phi_pe = 1;
        c.gate_tau = 0.71234567f; /* needs all 9 digits to round-trip */
        c.rope_cmp = NSA_ROPE_AFTER;
        c.attn.mapping = NSA_MAPPING_PAPER;
        c.attn.scale = 0.31234567f;
        break;
    case 3:
        c.shared_kv = 1;
        c.phi_pe = 1;
        c.gate_act = NSA_GATE_SIGMOID;
        c.gate_hidden = 3;
        c.rope_dim = 4;
        c.rope_base = 501.234567f;
        c.attn.dv = 8;
        break;
    default:
        fail_msg("no variant %d", v);
    }
    return c;
}

/* Seeded weights with every tensor non-zero (init leaves pe and gate
 * biases at zero, which would hide a tensor that is never written). */
static nsa_layer *make(nsa_context *ctx, const nsa_layer_config *c, uint64_t seed)
{
    nsa_layer *L = NULL;
    assert_int_equal(nsa_layer_create(ctx, c, &L), NSA_OK);
    assert_int_equal(nsa_layer_init_random(L, seed), NSA_OK);
    for (int i = 0; i < nsa_layer_tensor_count(L); i++) {
        float *d;
        int nd;
        int64_t sh[4];
        assert_int_equal(nsa_layer_tensor_at(L, i, NULL, &d, &nd, sh), NSA_OK);
        int64_t n = 1;
        for (int k = 0; k < nd; k++)
            n *= sh[k];
        float *noise = malloc(sizeof(float) * (size_t)n);
        assert_non_null(noise);
        tl_fill(noise, (size_t)n, seed * 97 + (uint64_t)i, -0.05f, 0.05f);
        for (int64_t j = 0; j < n; j++)
            d[j] += noise[j];
        free(noise);
    }
    return L;
}

static char *temp_path(void)
{
    char *p = strdup("/tmp/nsa_weights_XXXXXX");
    assert_non_null(p);
    int fd = mkstemp(p);
    assert_true(fd >= 0);
    close(fd);
    return p;
}

static void forward(nsa_layer *L, const float *x, int64_t T, const int32_t *cu, int B,
                    float *y)
{
    assert_int_equal(nsa_layer_forward(L, x, T, cu, B, y, NULL), NSA_OK);
}

static void test_roundtrip(void **state)
{
    (void)state;
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("ref", &ctx, NULL, 0), NSA_OK);
    const int64_t T = 41;
    const int32_t cu[3] = {0, 23, 41};
    for (int v = 0; v < 4; v++) {
        const nsa_layer_config c = variant(v);
        nsa_layer *A = make(ctx, &c, 100 + (uint64_t)v), *B = NULL;
        char *path = temp_path();
        assert_int_equal(nsa_layer_save(A, path), NSA_OK);
        assert_int_equal(nsa_layer_load(ctx, path, &B), NSA_OK);
        assert_non_null(B);
        assert_ptr_not_equal(A, B);

        /* Every field of the config survives, floats exactly. */
        const nsa_layer_config *cb = nsa_layer_get_config(B);
        assert_memory_equal(&cb->attn, &c.attn, sizeof c.attn);
        assert_int_equal(cb->D, c.D);
        assert_int_equal(cb->shared_kv, c.shared_kv);
        assert_int_equal(cb->phi, c.phi);
        assert_int_equal(cb->phi_hidden, c.phi_hidden);
        assert_int_equal(cb->phi_pe, c.phi_pe);
        assert_int_equal(cb->rope_dim, c.rope_dim);
        assert_true(cb->rope_base == c.rope_base);
        assert_int_equal(cb->rope_cmp, c.rope_cmp);
        assert_int_equal(cb->gate_hidden, c.gate_hidden);
        assert_int_equal(cb->gate_act, c.gate_act);
        if (cb->gate_tau != c.gate_tau)
            fail_msg("variant %d: gate_tau %.9g read back as %.9g", v, (double)c.gate_tau,
                     (double)cb->gate_tau);

        /* Every tensor, bit for bit. */
        assert_int_equal(nsa_layer_tensor_count(B), nsa_layer_tensor_count(A));
        for (int i = 0; i < nsa_layer_tensor_count(A); i++) {
            const char *na, *nb;
            float *da, *db;
            int nda, ndb;
            int64_t sa[4], sb[4];
            assert_int_equal(nsa_layer_tensor_at(A, i, &na, &da, &nda, sa), NSA_OK);
            assert_int_equal(nsa_layer_tensor_at(B, i, &nb, &db, &ndb, sb), NSA_OK);
            assert_string_equal(na, nb);
            assert_int_equal(nda, ndb);
            int64_t n = 1;
            for (int k = 0; k < nda; k++) {
                assert_int_equal(sa[k], sb[k]);
                n *= sa[k];
            }
            assert_memory_equal(da, db, sizeof(float) * (size_t)n);
        }

        /* The forward of both layers on the same seeded x, bit for bit:
         * loading is exact, so no tolerance applies. */
        const int D = c.D;
        float *x = malloc(sizeof(float) * (size_t)(T * D));
        assert_non_null(x);
        tl_fill(x, (size_t)(T * D), 7 + (uint64_t)v, -1.0f, 1.0f);
        float *ya = tl_poisoned((size_t)(T * D)), *yb = tl_poisoned((size_t)(T * D));
        forward(A, x, T, cu, 2, ya);
        forward(B, x, T, cu, 2, yb);
        assert_int_equal(tl_count_nonfinite(ya, (size_t)(T * D)), 0);
        assert_memory_equal(ya, yb, sizeof(float) * (size_t)(T * D));

        /* The comparison can fail: other weights give another output. */
        nsa_layer *Other = make(ctx, &c, 999);
        forward(Other, x, T, cu, 2, yb);
        assert_true(memcmp(ya, yb, sizeof(float) * (size_t)(T * D)) != 0);
        nsa_layer_free(Other);

        free(x);
        free(ya);
        free(yb);
        nsa_layer_free(A);
        nsa_layer_free(B);
        unlink(path);
        free(path);
    }
    nsa_context_free(ctx);
}

/* ---------------------------------------------------- malformed files */

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    assert_true(sz > 0);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
    fclose(fp);
    *n = (size_t)sz;
    return b;
}

static void write_bytes(const char *path, const void *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static uint64_t header_len(const unsigned char *b)
{
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | b[i];
    return h;
}

/* Copies src to dst with the first `from` in the JSON header replaced by
 * `to` (the length field follows; data offsets are unchanged). */
static void rewrite(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n;
    unsigned char *b = slurp(src, &n);
    size_t hl = (size_t)header_len(b);
    char *hdr = malloc(hl + 1);
    assert_non_null(hdr);
    memcpy(hdr, b + 8, hl);
    hdr[hl] = '\0';
    char *at = strstr(hdr, from);
    if (!at)
        fail_msg("'%s' not in the header %s", from, hdr);
    size_t fl = strlen(from), tl = strlen(to), nl = hl - fl + tl;
    unsigned char *o = malloc(8 + nl + (n - 8 - hl));
    assert_non_null(o);
    for (int i = 0; i < 8; i++)
        o[i] = (unsigned char)((uint64_t)nl >> (8 * i));
    size_t pre = (size_t)(at - hdr);
    memcpy(o + 8, hdr, pre);
    memcpy(o + 8 + pre, to, tl);
    memcpy(o + 8 + pre + tl, at + fl, hl - pre - fl);
    memcpy(o + 8 + nl, b + 8 + hl, n - 8 - hl);
    write_bytes(dst, o, 8 + nl + (n - 8 - hl));
    free(o);
    free(hdr);
    free(b);
}

static void expect_load_fail(nsa_context *ctx, const char *path, nsa_status code,
                             const char *part)
{
    nsa_layer *L = (nsa_layer *)ctx; /* must be reset to NULL */
    nsa_status s = nsa_layer_load(ctx, path, &L);
    const char *msg = nsa_context_last_error(ctx);
    if (s != code || !strstr(msg, part))
        fail_msg("%s: expected %d containing \"%s\", got %d: \"%s\"", path, code, part, s, msg);
    assert_null(L);
}

typedef struct edit_case {
    const char *from, *to, *part;
} edit_case;

static void test_bad_files(void **state)
{
    (void)state;
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("ref", &ctx, NULL, 0), NSA_OK);
    /* variant 1: shared KV, mlp phi without hidden, pe, gate MLP */
    nsa_layer_config c = variant(1);
    nsa_layer *A = make(ctx, &c, 5);
    char *good = temp_path(), *bad = temp_path();
    assert_int_equal(nsa_layer_save(A, good), NSA_OK);

    /* wq is [H*dk][D] = [32][16]: F16 [32,32] has the same byte count. */
    const edit_case edits[] = {
        {"\"wq\":{\"dtype\":\"F32\",\"shape\":[32,16]", "\"wq\":{\"dtype\":\"F16\",\"shape\":[32,32]",
         "tensor 'wq': dtype F16, expected F32"},
        {"\"wq\":{\"dtype\":\"F32\",\"shape\":[32,16]", "\"wq\":{\"dtype\":\"F32\",\"shape\":[16,32]",
         "tensor 'wq': shape [16,32] but the config needs [32,16]"},
        {"\"wq\":{\"dtype\":\"F32\",\"shape\":[32,16]",
         "\"wq\":{\"dtype\":\"F32\",\"shape\":[32,16,1]",
         "tensor 'wq': shape [32,16,1] but the config needs [32,16]"},
        {"\"wq\":{\"dtype\":\"F32\",\"shape\":[32,16]", "\"wq\":{\"dtype\":\"I32\",\"shape\":[32,16]",
         "tensor 'wq': dtype I32, expected F32"},
        {"\"wo\":", "\"wO\":", "tensor 'wo' is missing (the config needs [16,24])"},
        {"\"phi_v.pe\":", "\"phi_v.pf\":", "tensor 'phi_v.pe' is missing (the config needs [2,8,6])"},
        {"\"dk\":\"8\"", "\"dK\":\"8\"", "metadata key 'dk' is missing"},
        {"\"H\":\"4\"", "\"H\":\"4x\"", "metadata 'H' = '4x' is not an integer"},
        {"\"H\":\"4\"", "\"H\":\" 4\"", "metadata 'H' = ' 4' is not an integer"},
        {"\"H\":\"4\"", "\"H\":\"\"", "metadata 'H' = '' is not an integer"},
        {"\"H\":\"4\"", "\"H\":\"99999999999\"", "metadata 'H' = '99999999999' is not an integer"},
        {"\"mapping\":\"overlap\"", "\"mapping\":\"diagonal\"",
         "metadata 'mapping' = 'diagonal' is not 'overlap' or 'paper'"},
        {"\"phi\":\"mlp\"", "\"phi\":\"MLP\"", "metadata 'phi' = 'MLP' is not 'avg' or 'mlp'"},
        {"\"gate_act\":\"sigmoid\"", "\"gate_act\":\"relu\"", "metadata 'gate_act' = 'relu'"},
        {"\"rope_cmp\":\"before\"", "\"rope_cmp\":\"\"", "metadata 'rope_cmp' = ''"},
        {"\"gate_tau\":\"1\"", "\"gate_tau\":\"nan\"", "metadata 'gate_tau' = 'nan' is not a finite"},
        {"\"rope_base\":\"10000\"", "\"rope_base\":\"1e99\"", "metadata 'rope_base' = '1e99'"},
        {"\"scale\":\"0\"", "\"scale\":\"0.5 \"", "metadata 'scale' = '0.5 ' is not a finite"},
        {"\"format\":\"libnsa-layer\"", "\"format\":\"other\"",
         "metadata 'format' = 'other', expected 'libnsa-layer'"},
        {"\"format_version\":\"1\"", "\"format_version\":\"2\"",
         "format_version '2' is not supported"},
        {"\"format\":\"libnsa-layer\"", "\"formats\":\"libnsa-layer\"",
         "metadata key 'format' is missing"},
        {"\"d\":\"4\"", "\"d\":\"3\"", "configuration in the metadata is invalid: "},
        {"\"shared_kv\":\"1\"", "\"shared_kv\":\"2\"", "invalid: shared_kv=2 must be 0 or 1"},
        {"\"gate_hidden\":\"5\"", "\"gate_hidden\":\"6\"", "tensor 'gate.w1': shape [5,16] but the config needs [6,16]"},
        {"\"phi_hidden\":\"0\"", "\"phi_hidden\":\"4\"", "tensor 'phi_k.w1' is missing"},
        {"\"shared_kv\":\"1\"", "\"shared_kv\":\"0\"", "tensor 'wk_cmp' is missing"},
        {"\"phi_pe\":\"1\"", "\"phi_pe\":\"0\"", "tensor 'phi_k.pe' is not part of a layer"},
        {"\"phi\":\"mlp\"", "\"phi\":1", "metadata value of 'phi' is not a string"},
        {"{", "[", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        rewrite(good, bad, edits[i].from, edits[i].to);
        expect_load_fail(ctx, bad, NSA_ERR_FORMAT, edits[i].part);
    }
    /* Format messages name the file. */
    expect_load_fail(ctx, bad, NSA_ERR_FORMAT, bad);

    /* A tensor the layer does not have: an extra one, and the independent
     * KV name in a shared-KV file. */
    nsa_st_file f;
    char msg[512];
    assert_int_equal(nsa_st_read(good, &f, msg, sizeof msg), NSA_OK);
    const char *extra[] = {"bogus", "wk_cmp"};
    for (int e = 0; e < 2; e++) {
        nsa_st_out t[NSA_LAYER_MAX_TENSORS + 1];
        for (int i = 0; i < f.count; i++) {
            memset(&t[i], 0, sizeof t[i]);
            t[i].name = f.tensors[i].name;
            t[i].dtype = NSA_ST_F32;
            t[i].ndim = f.tensors[i].ndim;
            memcpy(t[i].shape, f.tensors[i].shape, sizeof t[i].shape);
            t[i].data = f.tensors[i].data;
        }
        t[f.count] = t[0];
        t[f.count].name = extra[e];
        assert_int_equal(nsa_st_write(bad, t, f.count + 1, (const char *const *)f.meta_keys,
                                      (const char *const *)f.meta_vals, f.meta_count, msg,
                                      sizeof msg),
                         NSA_OK);
        char part[96];
        snprintf(part, sizeof part, "tensor '%s' is not part of a layer", extra[e]);
        expect_load_fail(ctx, bad, NSA_ERR_FORMAT, part);
    }
    nsa_st_free(&f);

    /* Every cut through the length field and header, and some through the
     * data: a malformed file, never a crash or a half-built layer. */
    size_t n;
    unsigned char *raw = slurp(good, &n);
    size_t hl = (size_t)header_len(raw);
    for (size_t cut = 0; cut < n; cut += cut < 8 + hl ? 1 : (n - 8 - hl) / 7 + 1) {
        write_bytes(bad, raw, cut);
        expect_load_fail(ctx, bad, NSA_ERR_FORMAT, "weights '");
    }
    write_bytes(bad, raw, n - 1);
    expect_load_fail(ctx, bad, NSA_ERR_FORMAT, "file truncated?");

    /* A length field larger than the file, and one beyond any sane header. */
    unsigned char *big = malloc(n);
    assert_non_null(big);
    memcpy(big, raw, n);
    big[5] = 1; /* 2^40 + hl */
    write_bytes(bad, big, n);
    expect_load_fail(ctx, bad, NSA_ERR_FORMAT, "is larger than the 100000000-byte limit");
    memcpy(big, raw, n);
    uint64_t over = (uint64_t)n; /* fits the limit, exceeds the file */
    for (int i = 0; i < 8; i++)
        big[i] = (unsigned char)(over >> (8 * i));
    write_bytes(bad, big, n);
    expect_load_fail(ctx, bad, NSA_ERR_FORMAT, "bytes follow it");
    free(big);
    free(raw);

    /* The unmodified file still loads (the edits above did not touch it). */
    nsa_layer *B = NULL;
    assert_int_equal(nsa_layer_load(ctx, good, &B), NSA_OK);
    nsa_layer_free(B);

    nsa_layer_free(A);
    unlink(good);
    unlink(bad);
    free(good);
    free(bad);
    nsa_context_free(ctx);
}

static void test_paths_and_args(void **state)
{
    (void)state;
    nsa_context *ctx;
    assert_int_equal(nsa_context_create("ref", &ctx, NULL, 0), NSA_OK);
    nsa_layer_config c = variant(0);
    nsa_layer *A = make(ctx, &c, 1), *B = (nsa_layer *)ctx;

    char *p = temp_path();
    unlink(p); /* a name that surely does not exist */
    expect_load_fail(ctx, p, NSA_ERR_IO, strerror(ENOENT));
    expect_load_fail(ctx, p, NSA_ERR_IO, p);
    expect_load_fail(ctx, "/tmp", NSA_ERR_IO, "not a regular file");

    char dirless[600];
    snprintf(dirless, sizeof dirless, "%s.missing-dir/w.safetensors", p);
    assert_int_equal(nsa_layer_save(A, dirless), NSA_ERR_IO);
    assert_non_null(strstr(nsa_context_last_error(ctx), dirless));
    assert_non_null(strstr(nsa_context_last_error(ctx), strerror(ENOENT)));

    assert_int_equal(nsa_layer_save(NULL, p), NSA_ERR_NULL);
    assert_int_equal(nsa_layer_save(A, NULL), NSA_ERR_NULL);
    assert_int_equal(nsa_layer_load(NULL, p, &B), NSA_ERR_NULL);
    assert_null(B);
    assert_int_equal(nsa_layer_load(ctx, NULL, &B), NSA_ERR_NULL);
    assert_int_equal(nsa_layer_load(ctx, p, NULL), NSA_ERR_NULL);

    /* A safetensors file that is not a layer (a conformance vector). */
    expect_load_fail(ctx, NSA_SHARED_DIR "/conformance/identity_shared_kv.safetensors",
                     NSA_ERR_FORMAT, "metadata key 'format' is missing");

    /* Saving over an existing file replaces it. */
    assert_int_equal(nsa_layer_save(A, p), NSA_OK);
    nsa_layer_config c2 = variant(2);
    nsa_layer *A2 = make(ctx, &c2, 2);
    assert_int_equal(nsa_layer_save(A2, p), NSA_OK);
    assert_int_equal(nsa_layer_load(ctx, p, &B), NSA_OK);
    assert_int_equal(nsa_layer_get_config(B)->phi_hidden, 7);
    nsa_layer_free(B);
    nsa_layer_free(A2);

    nsa_layer_free(A);
    unlink(p);
    free(p);
    nsa_context_free(ctx);
}

/* The reader on the conformance vectors: the tensor count and every
 * operator tensor's shape follow from the metadata H, G, dk, dv. */
static void test_conformance_reader(void **state)
{
    (void)state;
    const char *cases[] = {"basic_unequal_dims", "identity_shared_kv",
                           "paper_defaults_small_heads", "paper_mapping", "varlen_edges"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[512], msg[512];
        snprintf(path, sizeof path, "%s/conformance/%s.safetensors", NSA_SHARED_DIR, cases[i]);
        nsa_st_file f;
        if (nsa_st_read(path, &f, msg, sizeof msg))
            fail_msg("%s", msg);
        const int64_t H = atoll(nsa_st_meta(&f, "H")), G = atoll(nsa_st_meta(&f, "G")),
                      dk = atoll(nsa_st_meta(&f, "dk")), dv = atoll(nsa_st_meta(&f, "dv"));
        const int shared = atoi(nsa_st_meta(&f, "shared_kv"));
        assert_true(H > 0 && G > 0 && dk > 0 && dv > 0);
        assert_int_equal(f.count, shared ? 10 : 14);
        for (int k = 0; k < f.count; k++) {
            const nsa_st_tensor *t = &f.tensors[k];
            const char *nm = t->name;
            if (!strcmp(nm, "cu_seqlens"))
                continue;
            assert_int_equal(t->ndim, 3);
            int64_t mid = nm[0] == 'k' || nm[0] == 'v' || !strcmp(nm, "selection") ? G : H;
            int64_t last = nm[0] == 'q' || nm[0] == 'k' ? dk
                           : !strcmp(nm, "gates")       ? 3
                           : !strcmp(nm, "selection")   ? atoll(nsa_st_meta(&f, "n"))
                                                        : dv;
            if (t->shape[1] != mid || t->shape[2] != last)
                fail_msg("%s: %s shape [%lld,%lld,%lld]", cases[i], nm, (long long)t->shape[0],
                         (long long)t->shape[1], (long long)t->shape[2]);
        }
        nsa_st_free(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_paths_and_args),
        cmocka_unit_test(test_conformance_reader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
