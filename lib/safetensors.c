/* The safetensors container: reading with every offset and size checked,
 * and atomic writing of F32/I32 tensors with string metadata. */
#define _POSIX_C_SOURCE 200809L

#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is rejected before any allocation (the limit
 * of the reference implementation), so a corrupt length cannot exhaust
 * memory. */
#define ST_MAX_HEADER 100000000ull

typedef struct dtype_desc {
    const char *name;
    size_t size;
    nsa_st_dtype code;
} dtype_desc;

static const dtype_desc dtypes[] = {
    {"F32", 4, NSA_ST_F32},        {"I32", 4, NSA_ST_I32},
    {"F64", 8, NSA_ST_F64},        {"I64", 8, NSA_ST_I64},
    {"F16", 2, NSA_ST_F16},        {"BF16", 2, NSA_ST_BF16},
    {"BOOL", 1, NSA_ST_OTHER},     {"U8", 1, NSA_ST_OTHER},
    {"I8", 1, NSA_ST_OTHER},       {"U16", 2, NSA_ST_OTHER},
    {"I16", 2, NSA_ST_OTHER},      {"U32", 4, NSA_ST_OTHER},
    {"U64", 8, NSA_ST_OTHER},      {"F8_E4M3", 1, NSA_ST_OTHER},
    {"F8_E5M2", 1, NSA_ST_OTHER},
};

static const dtype_desc *dtype_by_name(const char *s)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(dtypes[i].name, s))
            return &dtypes[i];
    return NULL;
}

static int host_is_le(void)
{
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* Reverses each elem-byte element in place (big-endian hosts only). */
static void swap_elems(unsigned char *p, size_t nbytes, size_t elem)
{
    for (size_t i = 0; elem > 1 && i + elem <= nbytes; i += elem)
        for (size_t a = 0, b = elem - 1; a < b; a++, b--) {
            unsigned char t = p[i + a];
            p[i + a] = p[i + b];
            p[i + b] = t;
        }
}

static char *dupstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void nsa_st_free(nsa_st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->count; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->meta_count; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

const nsa_st_tensor *nsa_st_find(const nsa_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    for (int i = 0; i < f->count; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

const char *nsa_st_meta(const nsa_st_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (int i = 0; i < f->meta_count; i++)
        if (!strcmp(f->meta_keys[i], key))
            return f->meta_vals[i];
    return NULL;
}

/* ------------------------------------------------------------- reading */

/* Reads exactly n bytes; 0 on success, 1 on a short file, -1 on an error. */
static int read_exact(FILE *fp, void *dst, size_t n)
{
    if (n == 0)
        return 0;
    size_t got = fread(dst, 1, n, fp);
    if (got == n)
        return 0;
    return ferror(fp) ? -1 : 1;
}

/* A JSON integer in [0, INT64_MAX]; 0 if it is not one. */
static int json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

typedef struct span {
    uint64_t begin, end;
    int index;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static nsa_status parse_metadata(json_t *meta, nsa_st_file *f, char *msg, size_t len)
{
    if (!json_is_object(meta))
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: __metadata__ is not a JSON object");
    size_t n = json_object_size(meta);
    if (n == 0)
        return NSA_OK;
    f->meta_keys = calloc(n, sizeof *f->meta_keys);
    f->meta_vals = calloc(n, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals)
        return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val))
            return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                                "safetensors: metadata value of '%s' is not a string", key);
        char *k = dupstr(key), *v = dupstr(json_string_value(val));
        if (!k || !v) {
            free(k);
            free(v);
            return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
        }
        f->meta_keys[f->meta_count] = k;
        f->meta_vals[f->meta_count] = v;
        f->meta_count++;
    }
    return NSA_OK;
}

/* One tensor entry: dtype, shape and offsets, checked against data_len. */
static nsa_status parse_tensor(const char *name, json_t *e, uint64_t data_len,
                               nsa_st_tensor *t, span *sp, char *msg, size_t len)
{
    if (!json_is_object(e))
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': entry is not a JSON object", name);
    const char *key;
    json_t *val;
    json_object_foreach(e, key, val) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                                "safetensors: tensor '%s': unknown field '%s'", name, key);
    }
    json_t *jd = json_object_get(e, "dtype");
    json_t *js = json_object_get(e, "shape");
    json_t *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd))
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': dtype missing or not a string", name);
    const dtype_desc *dd = dtype_by_name(json_string_value(jd));
    if (!dd)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': unknown dtype '%.15s'", name,
                            json_string_value(jd));
    t->dtype = dd->code;
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dd->name);

    if (!json_is_array(js))
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': shape missing or not an array", name);
    size_t nd = json_array_size(js);
    if (nd > NSA_ST_MAX_DIMS)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': %zu dimensions, at most %d supported",
                            name, nd, NSA_ST_MAX_DIMS);
    /* The element count times the dtype size, overflow-checked; a scalar
     * (shape []) has one element. */
    size_t expect = dd->size;
    int overflow = 0;
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        uint64_t dim;
        if (!json_u64(json_array_get(js, i), &dim))
            return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                                "safetensors: tensor '%s': shape[%zu] is not a non-negative "
                                "integer",
                                name, i);
        t->shape[i] = (int64_t)dim;
        if (dim > SIZE_MAX || !nsa_mul_ok(expect, (size_t)dim, &expect))
            overflow = 1;
    }
    if (overflow)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': shape x dtype size overflows", name);

    uint64_t b, en;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_u64(json_array_get(jo, 0), &b) ||
        !json_u64(json_array_get(jo, 1), &en))
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': data_offsets must be two non-negative "
                            "integers",
                            name);
    if (en < b)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': data_offsets [%llu, %llu] end before "
                            "they begin",
                            name, (unsigned long long)b, (unsigned long long)en);
    if (en > data_len)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': data_offsets [%llu, %llu] run past the "
                            "data section (%llu bytes; file truncated?)",
                            name, (unsigned long long)b, (unsigned long long)en,
                            (unsigned long long)data_len);
    if (en - b != (uint64_t)expect)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: tensor '%s': %llu data bytes, but dtype %s and its "
                            "shape need %zu",
                            name, (unsigned long long)(en - b), dd->name, expect);
    t->nbytes = expect;
    sp->begin = b;
    sp->end = en;
    return NSA_OK;
}

static nsa_status parse_header(json_t *root, uint64_t data_len, nsa_st_file *f, span **spans,
                               char *msg, size_t len)
{
    if (!json_is_object(root))
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: the header is not a JSON object");
    size_t n = json_object_size(root);
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta) {
        nsa_status s = parse_metadata(meta, f, msg, len);
        if (s)
            return s;
        n--;
    }
    if (n == 0)
        return NSA_OK;
    if (n > INT32_MAX)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT, "safetensors: too many tensors");
    f->tensors = calloc(n, sizeof *f->tensors);
    *spans = calloc(n, sizeof **spans);
    if (!f->tensors || !*spans)
        return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__"))
            continue;
        nsa_st_tensor *t = &f->tensors[f->count];
        t->name = dupstr(key);
        if (!t->name)
            return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
        f->count++; /* owns t->name from here on */
        (*spans)[f->count - 1].index = f->count - 1;
        nsa_status s = parse_tensor(key, val, data_len, t, &(*spans)[f->count - 1], msg, len);
        if (s)
            return s;
    }
    return NSA_OK;
}

/* No two non-empty tensors may share a byte; empty tensors occupy none. */
static nsa_status check_overlap(const nsa_st_file *f, span *sp, char *msg, size_t len)
{
    qsort(sp, (size_t)f->count, sizeof *sp, span_cmp);
    int last = -1;
    for (int i = 0; i < f->count; i++) {
        if (sp[i].begin == sp[i].end)
            continue;
        if (last >= 0 && sp[i].begin < sp[last].end)
            return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                                "safetensors: tensors '%s' and '%s' overlap (data_offsets "
                                "[%llu, %llu] and [%llu, %llu])",
                                f->tensors[sp[last].index].name, f->tensors[sp[i].index].name,
                                (unsigned long long)sp[last].begin,
                                (unsigned long long)sp[last].end,
                                (unsigned long long)sp[i].begin, (unsigned long long)sp[i].end);
        last = i;
    }
    return NSA_OK;
}

/* The data section, then each tensor's pointer into it (in host byte
 * order: swapped on big-endian hosts). */
static nsa_status read_data(FILE *fp, const char *path, uint64_t data_len, nsa_st_file *f,
                            const span *sp, char *msg, size_t len)
{
    if (data_len > SIZE_MAX - 1)
        return nsa_fail_buf(msg, len, NSA_ERR_RANGE, "safetensors: '%s' is too large", path);
    f->buf_len = (size_t)data_len;
    /* One spare byte keeps malloc(0) out of the picture. */
    f->buf = malloc(f->buf_len + 1);
    if (!f->buf)
        return nsa_fail_buf(msg, len, NSA_ERR_NOMEM,
                            "safetensors: out of memory for %zu data bytes", f->buf_len);
    int r = read_exact(fp, f->buf, f->buf_len);
    if (r < 0)
        return nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot read '%s': %s", path,
                            strerror(errno));
    if (r > 0)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: '%s' shrank while being read", path);
    for (int i = 0; i < f->count; i++) {
        nsa_st_tensor *t = &f->tensors[sp[i].index];
        t->data = f->buf + sp[i].begin;
        if (!host_is_le()) {
            const dtype_desc *dd = dtype_by_name(t->dtype_name);
            swap_elems(f->buf + sp[i].begin, t->nbytes, dd ? dd->size : 1);
        }
    }
    return NSA_OK;
}

static nsa_status read_file(FILE *fp, const char *path, nsa_st_file *f, char *msg, size_t len)
{
    struct stat st;
    if (fstat(fileno(fp), &st) != 0)
        return nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot stat '%s': %s", path,
                            strerror(errno));
    if (!S_ISREG(st.st_mode))
        return nsa_fail_buf(msg, len, NSA_ERR_IO, "'%s' is not a regular file", path);
    uint64_t fsize = (uint64_t)st.st_size;

    unsigned char lenbuf[8];
    int r = read_exact(fp, lenbuf, 8);
    if (r < 0)
        return nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot read '%s': %s", path,
                            strerror(errno));
    if (r > 0 || fsize < 8)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: '%s' is %llu bytes, shorter than the 8-byte header "
                            "length",
                            path, (unsigned long long)fsize);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lenbuf[i];
    if (hlen > ST_MAX_HEADER)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: header length %llu is larger than the %llu-byte "
                            "limit",
                            (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > fsize - 8)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: header length %llu but only %llu bytes follow it "
                            "(file truncated?)",
                            (unsigned long long)hlen, (unsigned long long)(fsize - 8));
    if (hlen < 2)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: header length %llu is too short for a JSON object",
                            (unsigned long long)hlen);

    char *hdr = malloc((size_t)hlen);
    if (!hdr)
        return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
    r = read_exact(fp, hdr, (size_t)hlen);
    if (r != 0) {
        free(hdr);
        return r < 0 ? nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot read '%s': %s", path,
                                    strerror(errno))
                     : nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                                    "safetensors: '%s' ends inside the header", path);
    }
    json_error_t jerr;
    /* Duplicate keys would make a tensor name ambiguous. */
    json_t *root = json_loadb(hdr, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    free(hdr);
    if (!root)
        return nsa_fail_buf(msg, len, NSA_ERR_FORMAT,
                            "safetensors: header is not valid JSON (%s, at byte %d)", jerr.text,
                            jerr.position);

    uint64_t data_len = fsize - 8 - hlen;
    span *spans = NULL;
    nsa_status s = parse_header(root, data_len, f, &spans, msg, len);
    json_decref(root);
    if (s == NSA_OK)
        s = check_overlap(f, spans, msg, len);
    if (s == NSA_OK)
        s = read_data(fp, path, data_len, f, spans, msg, len);
    free(spans);
    return s;
}

nsa_status nsa_st_read(const char *path, nsa_st_file *f, char *msg, size_t len)
{
    if (f)
        memset(f, 0, sizeof *f);
    if (!path || !f)
        return nsa_fail_buf(msg, len, NSA_ERR_NULL, "nsa_st_read: path and f are required");
    /* Checked before opening too: opening a FIFO for reading would block. */
    struct stat st;
    if (stat(path, &st) != 0)
        return nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot open '%s': %s", path,
                            strerror(errno));
    if (!S_ISREG(st.st_mode))
        return nsa_fail_buf(msg, len, NSA_ERR_IO, "'%s' is not a regular file", path);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot open '%s': %s", path,
                            strerror(errno));
    nsa_status s = read_file(fp, path, f, msg, len);
    fclose(fp);
    if (s) {
        nsa_st_free(f);
        return s;
    }
    if (msg && len)
        msg[0] = '\0';
    return NSA_OK;
}

/* ------------------------------------------------------------- writing */

/* Checks the caller's tensors and metadata, and computes each size. */
static nsa_status check_out(const nsa_st_out *t, int n, const char *const *keys,
                            const char *const *vals, int nmeta, size_t *sizes, char *msg,
                            size_t len)
{
    for (int i = 0; i < n; i++) {
        if (!t[i].name)
            return nsa_fail_buf(msg, len, NSA_ERR_NULL, "safetensors: tensor %d has no name", i);
        if (!strcmp(t[i].name, "__metadata__"))
            return nsa_fail_buf(msg, len, NSA_ERR_ARG,
                                "safetensors: '__metadata__' is reserved, not a tensor name");
        for (int j = 0; j < i; j++)
            if (!strcmp(t[i].name, t[j].name))
                return nsa_fail_buf(msg, len, NSA_ERR_ARG,
                                    "safetensors: tensor '%s' given twice", t[i].name);
        if (t[i].dtype != NSA_ST_F32 && t[i].dtype != NSA_ST_I32)
            return nsa_fail_buf(msg, len, NSA_ERR_UNSUPPORTED,
                                "safetensors: tensor '%s': the writer supports F32 and I32 only",
                                t[i].name);
        if (t[i].ndim < 0 || t[i].ndim > NSA_ST_MAX_DIMS)
            return nsa_fail_buf(msg, len, NSA_ERR_ARG,
                                "safetensors: tensor '%s': ndim %d not in [0, %d]", t[i].name,
                                t[i].ndim, NSA_ST_MAX_DIMS);
        size_t bytes = 4;
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] < 0)
                return nsa_fail_buf(msg, len, NSA_ERR_ARG,
                                    "safetensors: tensor '%s': negative shape[%d]", t[i].name,
                                    d);
            if ((uint64_t)t[i].shape[d] > SIZE_MAX ||
                !nsa_mul_ok(bytes, (size_t)t[i].shape[d], &bytes))
                return nsa_fail_buf(msg, len, NSA_ERR_RANGE,
                                    "safetensors: tensor '%s': size overflows", t[i].name);
        }
        if (bytes && !t[i].data)
            return nsa_fail_buf(msg, len, NSA_ERR_NULL, "safetensors: tensor '%s': data is NULL",
                                t[i].name);
        sizes[i] = bytes;
    }
    for (int i = 0; i < nmeta; i++) {
        if (!keys || !vals || !keys[i] || !vals[i])
            return nsa_fail_buf(msg, len, NSA_ERR_NULL, "safetensors: metadata entry %d is NULL",
                                i);
        for (int j = 0; j < i; j++)
            if (!strcmp(keys[i], keys[j]))
                return nsa_fail_buf(msg, len, NSA_ERR_ARG,
                                    "safetensors: metadata key '%s' given twice", keys[i]);
    }
    return NSA_OK;
}

/* The JSON header, space-padded to a multiple of 8 bytes so that the data
 * section (and so every 4-byte tensor) starts 8-byte aligned. */
static nsa_status build_header(const nsa_st_out *t, int n, const size_t *sizes,
                               const char *const *keys, const char *const *vals, int nmeta,
                               char **out, size_t *out_len, char *msg, size_t len)
{
    int bad = 0;
    json_t *root = json_object();
    bad |= !root;
    if (!bad && nmeta > 0) {
        json_t *m = json_object();
        bad |= !m || json_object_set_new(root, "__metadata__", m) != 0;
        for (int i = 0; !bad && i < nmeta; i++)
            bad |= json_object_set_new(m, keys[i], json_string(vals[i])) != 0;
    }
    uint64_t off = 0;
    for (int i = 0; !bad && i < n; i++) {
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        bad |= !e || !shape || !offs;
        if (bad) {
            json_decref(e);
            json_decref(shape);
            json_decref(offs);
            break;
        }
        for (int d = 0; d < t[i].ndim; d++)
            bad |= json_array_append_new(shape, json_integer((json_int_t)t[i].shape[d])) != 0;
        bad |= json_array_append_new(offs, json_integer((json_int_t)off)) != 0;
        off += sizes[i];
        bad |= json_array_append_new(offs, json_integer((json_int_t)off)) != 0;
        bad |= json_object_set_new(e, "dtype",
                                   json_string(t[i].dtype == NSA_ST_F32 ? "F32" : "I32")) != 0;
        bad |= json_object_set_new(e, "shape", shape) != 0;
        bad |= json_object_set_new(e, "data_offsets", offs) != 0;
        bad |= json_object_set_new(root, t[i].name, e) != 0;
    }
    char *text = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(root);
    if (!text)
        return nsa_fail_buf(msg, len, bad ? NSA_ERR_ARG : NSA_ERR_NOMEM,
                            "safetensors: cannot encode the header (a name or value that is "
                            "not UTF-8, or out of memory)");
    size_t tl = strlen(text), padded = (tl + 7) / 8 * 8;
    char *h = malloc(padded);
    if (!h) {
        free(text);
        return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
    }
    memcpy(h, text, tl);
    memset(h + tl, ' ', padded - tl);
    free(text);
    *out = h;
    *out_len = padded;
    return NSA_OK;
}

/* Writes 4-byte elements little-endian, through a bounce buffer on
 * big-endian hosts. */
static int write_le4(FILE *fp, const void *data, size_t nbytes)
{
    if (host_is_le())
        return fwrite(data, 1, nbytes, fp) == nbytes;
    unsigned char tmp[4096];
    const unsigned char *p = data;
    for (size_t done = 0; done < nbytes;) {
        size_t k = nbytes - done < sizeof tmp ? nbytes - done : sizeof tmp;
        memcpy(tmp, p + done, k);
        swap_elems(tmp, k, 4);
        if (fwrite(tmp, 1, k, fp) != k)
            return 0;
        done += k;
    }
    return 1;
}

nsa_status nsa_st_write(const char *path, const nsa_st_out *t, int n, const char *const *keys,
                        const char *const *vals, int nmeta, char *msg, size_t len)
{
    if (!path || (n > 0 && !t))
        return nsa_fail_buf(msg, len, NSA_ERR_NULL, "nsa_st_write: path and tensors are required");
    if (n < 0 || nmeta < 0)
        return nsa_fail_buf(msg, len, NSA_ERR_ARG, "nsa_st_write: negative count");
    size_t *sizes = calloc((size_t)n + 1, sizeof *sizes);
    if (!sizes)
        return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
    char *hdr = NULL;
    size_t hlen = 0;
    nsa_status s = check_out(t, n, keys, vals, nmeta, sizes, msg, len);
    if (s == NSA_OK)
        s = build_header(t, n, sizes, keys, vals, nmeta, &hdr, &hlen, msg, len);
    if (s) {
        free(sizes);
        return s;
    }

    /* A temporary file next to the target, renamed over it at the end, so
     * a reader never sees a half-written file. */
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    if (!tmp) {
        free(sizes);
        free(hdr);
        return nsa_fail_buf(msg, len, NSA_ERR_NOMEM, "safetensors: out of memory");
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp.XXXXXX", 12);
    int fd = mkstemp(tmp);
    FILE *fp = NULL;
    if (fd < 0) {
        s = nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot create a temporary file for '%s': %s",
                         path, strerror(errno));
        goto done;
    }
    /* mkstemp makes the file private; weights are ordinary data. */
    (void)fchmod(fd, 0644);
    fp = fdopen(fd, "wb");
    if (!fp) {
        s = nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot write '%s': %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(hdr, 1, hlen, fp) == hlen;
    for (int i = 0; ok && i < n; i++)
        ok = write_le4(fp, t[i].data, sizes[i]);
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int err = errno;
    if (fclose(fp) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        s = nsa_fail_buf(msg, len, NSA_ERR_IO, "cannot write '%s': %s", path, strerror(err));
    } else if (msg && len) {
        msg[0] = '\0';
    }
done:
    free(tmp);
    free(hdr);
    free(sizes);
    return s;
}
