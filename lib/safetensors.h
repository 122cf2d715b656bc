/* Internal safetensors reader/writer: 8-byte little-endian header length,
 * a JSON header (parsed with jansson), then raw little-endian tensor data.
 * Used by the weights I/O and by the conformance tests. */
#ifndef NSA_SAFETENSORS_H
#define NSA_SAFETENSORS_H

#include "nsa_internal.h"

typedef enum nsa_st_dtype {
    NSA_ST_F32 = 0,
    NSA_ST_I32,
    NSA_ST_F64,
    NSA_ST_I64,
    NSA_ST_F16,
    NSA_ST_BF16,
    NSA_ST_OTHER
} nsa_st_dtype;

#define NSA_ST_MAX_DIMS 8

typedef struct nsa_st_tensor {
    char *name;
    nsa_st_dtype dtype;
    char dtype_name[16];
    int ndim;
    int64_t shape[NSA_ST_MAX_DIMS];
    const void *data; /* into the file's buffer, nbytes long */
    size_t nbytes;
} nsa_st_tensor;

typedef struct nsa_st_file {
    nsa_st_tensor *tensors;
    int count;
    char **meta_keys, **meta_vals; /* __metadata__ (string values) */
    int meta_count;
    unsigned char *buf; /* the data section */
    size_t buf_len;
} nsa_st_file;

/* Reads and checks a whole file (offsets in range and non-overlapping,
 * sizes matching dtype x shape). On failure nothing stays allocated and
 * msg says what was wrong. */
NSA_HIDDEN nsa_status nsa_st_read(const char *path, nsa_st_file *f, char *msg, size_t len);
NSA_HIDDEN void nsa_st_free(nsa_st_file *f);
NSA_HIDDEN const nsa_st_tensor *nsa_st_find(const nsa_st_file *f, const char *name);
NSA_HIDDEN const char *nsa_st_meta(const nsa_st_file *f, const char *key);

typedef struct nsa_st_out {
    const char *name;
    nsa_st_dtype dtype; /* F32 or I32 */
    int ndim;
    int64_t shape[NSA_ST_MAX_DIMS];
    const void *data;
} nsa_st_out;

/* Writes tensors and string metadata (keys[i] = vals[i]) atomically
 * (temporary file, then rename). */
NSA_HIDDEN nsa_status nsa_st_write(const char *path, const nsa_st_out *t, int n,
                                   const char *const *keys, const char *const *vals,
                                   int nmeta, char *msg, size_t len);

#endif
