/* Decode internals visible to the tests. */
#ifndef NSA_DECODE_H
#define NSA_DECODE_H

#include "nsa_internal.h"

/* Test hook: the n-th allocation the state makes from now on fails
 * (n >= 1; 0 turns it off). Lets tests prove that a failed growth leaves
 * the state as it was. */
NSA_HIDDEN void nsa_decode_fail_alloc_after(nsa_decode_state *st, int n);

#endif
