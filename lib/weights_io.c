/* placeholder: replaced by the weights I/O work */
#include "nsa_internal.h"
