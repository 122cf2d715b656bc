/* placeholder: replaced by the layer work */
#include "nsa_internal.h"
