/* Decode internals visible to the tests. */
#ifndef NSA_DECODE_H
#define NSA_DECODE_H

#include "nsa_internal.h"

/* Test hook: the n-th allocation the state makes from now on fails
 * (n >= 1; 0 turns it off). Lets tests prove that a failed growth leaves
 * the state as it was. */
NSA_HIDDEN void nsa_decode_fail_alloc_after(nsa_decode_state *st, int n);

/* The caches of sequence b as a decode-job row for its last token (t =
 * length - 1); for benchmarks and tests. NSA_ERR_ARG if b is empty. */
NSA_HIDDEN nsa_status nsa_decode_view(const nsa_decode_state *st, int b, nsa_decode_seq *out);

/* 1 if the state has a device mirror of its caches (the backend's
 * dcache_new succeeded). */
NSA_HIDDEN int nsa_decode_has_mirror(const nsa_decode_state *st);
/* Steps of this state that ran on the device past the K/V projections
 * (the backend's dcache_step). */
NSA_HIDDEN int64_t nsa_decode_fused_steps(const nsa_decode_state *st);

/* Test hook: the n-th device operation of the next mirror call fails
 * (n >= 1; the call's failure marks the mirror stale). */
NSA_HIDDEN void nsa_decode_fail_mirror_after(nsa_decode_state *st, int n);

/* Sequence dst (empty) gets a copy of sequence src's caches: a batch of
 * long prompts prefilled once (benchmarks). */
NSA_HIDDEN nsa_status nsa_decode_clone_seq(nsa_decode_state *st, int dst, int src);

/* Test hook: the next step fails right after a successful attention, as a
 * failing output projection would (the mirror has synced the new rows). */
NSA_HIDDEN void nsa_decode_fail_after_attend(nsa_decode_state *st);

/* The decode attention (dense: the dense baseline) of the last token of
 * every sequence (t = length - 1; none may be empty) over the state's
 * caches, with the caller's q [B][H][dk] and gates [B][H][3] (unused when
 * dense), through the device mirror when there is one; o [B][H][dv], sel
 * [B][G][n] (untouched when dense). For benchmarks and tests. */
NSA_HIDDEN nsa_status nsa_decode_attend_cached(nsa_decode_state *st, const float *q,
                                               const float *gates, float *o, int32_t *sel,
                                               int dense);

/* Device-resident steps (the mirror holds the rows, the host caches lag;
 * dcache_resident): 1 if this state's next step runs that way. */
NSA_HIDDEN int nsa_decode_resident(const nsa_decode_state *st);
/* Raw rows sequence b's host arrays hold (the rest only on the device). */
NSA_HIDDEN int64_t nsa_decode_host_len(const nsa_decode_state *st, int b);
/* 1 if this state's device-resident steps rotate the keys by the host's
 * float angle table (opencl on a device without fp64): its rows and
 * emitted tokens then agree with prefill's within spec 9, not bit for bit
 * (dcache_host_angles); 0 otherwise. */
NSA_HIDDEN int nsa_decode_host_angles(const nsa_decode_state *st);
/* Test hook: bytes the mirror moved up (io[0]) and down (io[1]) since the
 * last call, io[2] of the up ones the attention's mapping; zeros without
 * a mirror or the backend's counter. */
NSA_HIDDEN void nsa_decode_bus(nsa_decode_state *st, uint64_t io[3]);
/* Test hook: the steps from now on take the host's way, as after the
 * device step said NSA_ERR_UNSUPPORTED. */
NSA_HIDDEN void nsa_decode_host_steps(nsa_decode_state *st);
/* Test hook: NaN into every host row a fetch must write before it is
 * read (raw rows and compressed tokens past what the host holds, the ring
 * slots of positions it lacks), so a missed fetch shows. */
NSA_HIDDEN void nsa_decode_poison_host(nsa_decode_state *st);
/* Test hook: the host caches store every raw, window and compressed row
 * as round(kv, x) (the compression ring as computed) from now on, right
 * where they are written (prefill, a host step before its attention): a
 * reference for a device that stores K/V rounded (opencl's fp16 / bf16).
 * Prefill's own outputs are not affected (they come before the rows are
 * stored). NULL: as computed. */
NSA_HIDDEN void nsa_decode_round_rows(nsa_decode_state *st, float (*round)(int kv, float x),
                                      int kv);

#endif
