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

#endif
