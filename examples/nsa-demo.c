/* placeholder: replaced by the demo work */
#include <stdio.h>
#include "nsa.h"
int main(void) { printf("libnsa %s\n", nsa_version_string()); return 0; }
