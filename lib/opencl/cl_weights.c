/* Device copies of a layer's weights, kept between calls so that a decode
 * step or a layer forward does not upload every weight matrix again. The
 * copies live in the layer (nsa_wcache, freed with it); a slot is served
 * only while its generation, host pointers and sizes equal the job's, and
 * the layer bumps its generation whenever weights may have been written. */
#include "cl_weights.h"

#include <stdlib.h>
#include <string.h>

typedef struct wslot {
    cl_mem w, b;
    size_t wbytes, bbytes;
    const float *wh, *bh; /* the host tensors copied */
    uint64_t gen;
    int valid;
} wslot;

typedef struct cl_wcache {
    nsa_cl_state *st; /* the context whose device holds the copies */
    wslot slot[NSA_WSLOT_COUNT];
} cl_wcache;

static void slot_clear(wslot *s)
{
    if (s->w)
        clReleaseMemObject(s->w);
    if (s->b)
        clReleaseMemObject(s->b);
    memset(s, 0, sizeof *s);
}

static void wcache_release(void *data)
{
    cl_wcache *c = data;
    if (!c)
        return;
    for (int i = 0; i < NSA_WSLOT_COUNT; i++)
        slot_clear(&c->slot[i]);
    free(c);
}

/* Puts host bytes into *m: rewritten in place when the size is unchanged,
 * else a new buffer. Blocking, so the caller may write the host copy as
 * soon as the call returns. */
static nsa_status put(nsa_clr_bufs *B, cl_mem *m, size_t *have, size_t bytes,
                      const void *host)
{
    nsa_cl_state *st = B->st;
    cl_int err;
    if (*m && *have == bytes) {
        if (!host)
            return NSA_OK; /* the placeholder of a missing bias */
        err = clEnqueueWriteBuffer(st->queue, *m, CL_TRUE, 0, bytes, host, 0, NULL, NULL);
        return err == CL_SUCCESS ? NSA_OK : nsa_cl_fail(B->ctx, "clEnqueueWriteBuffer", err);
    }
    if (*m)
        clReleaseMemObject(*m);
    *m = NULL;
    *have = 0;
    *m = clCreateBuffer(st->context,
                        host ? CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR : CL_MEM_READ_ONLY,
                        bytes, (void *)(uintptr_t)host, &err);
    if (err != CL_SUCCESS) {
        *m = NULL;
        return nsa_cl_fail(B->ctx, "clCreateBuffer (layer weights)", err);
    }
    *have = bytes;
    return NSA_OK;
}

nsa_status nsa_cl_weights(nsa_clr_bufs *B, const nsa_linear_job *j, cl_mem *w, cl_mem *b)
{
    const size_t wbytes = sizeof(float) * (size_t)j->out * (size_t)j->in;
    const size_t bbytes = j->b ? sizeof(float) * (size_t)j->out : 4;
    const nsa_wkey *k = j->key;
    nsa_wcache *wc = k ? k->cache : NULL;
    if (!wc || k->slot < 0 || k->slot >= NSA_WSLOT_COUNT ||
        (wc->release && wc->release != wcache_release)) {
        /* no key (or a cache another backend filled): per-call upload */
        nsa_status s = nsa_clr_buf_new(B, wbytes, j->w, w);
        return s == NSA_OK ? nsa_clr_buf_new(B, bbytes, j->b, b) : s;
    }
    cl_wcache *c = wc->data;
    if (c && c->st != B->st) {
        /* copies on another device: start over */
        wcache_release(c);
        wc->data = c = NULL;
    }
    if (!c) {
        if (!(c = calloc(1, sizeof *c)))
            return nsa_fail(B->ctx, NSA_ERR_NOMEM, "out of memory for the weight cache");
        c->st = B->st;
        wc->data = c;
        wc->release = wcache_release;
    }
    wslot *sl = &c->slot[k->slot];
    if (sl->valid && sl->gen == k->gen && sl->wh == j->w && sl->bh == j->b &&
        sl->wbytes == wbytes && sl->bbytes == bbytes) {
        *w = sl->w;
        *b = sl->b;
        return NSA_OK;
    }
    sl->valid = 0; /* until both copies are complete */
    nsa_status s = NSA_OK;
    if (wc->fail_after > 0 && --wc->fail_after == 0)
        s = nsa_fail(B->ctx, NSA_ERR_BACKEND,
                     "OpenCL clCreateBuffer (layer weights) failed: "
                     "CL_MEM_OBJECT_ALLOCATION_FAILURE (injected, test)");
    if (s == NSA_OK)
        s = put(B, &sl->w, &sl->wbytes, wbytes, j->w);
    if (s == NSA_OK)
        s = put(B, &sl->b, &sl->bbytes, bbytes, j->b);
    if (s != NSA_OK) {
        slot_clear(sl);
        return s;
    }
    sl->wh = j->w;
    sl->bh = j->b;
    sl->gen = k->gen;
    sl->valid = 1;
    *w = sl->w;
    *b = sl->b;
    return NSA_OK;
}

int nsa_cl_rows_fit(const nsa_linear_job *j)
{
    const nsa_wkey *k = j->key;
    /* not for K/V: their rows go into the decode caches and must equal
     * prefill's bit for bit, which nsa_linear's fixed order gives */
    return k && k->cache && k->cache->release == wcache_release && j->rows >= 1 &&
           j->rows <= NSA_CL_LIN_RMAX && j->in % 4 == 0 &&
           !(k->slot >= NSA_WSLOT_K0 && k->slot < NSA_WSLOT_GATE1);
}
