/* The public entry for choosing an OpenCL device, present in every build:
 * without OpenCL it says so instead of failing to link. */
#include "nsa_internal.h"

#ifdef NSA_WITH_OPENCL
NSA_HIDDEN nsa_status nsa_cl_context_create(const char *device, nsa_context **out, char *msg,
                                            size_t msg_len);
#endif

nsa_status nsa_context_create_opencl(const char *device, nsa_context **out, char *msg,
                                     size_t msg_len)
{
    if (!out)
        return nsa_fail_buf(msg, msg_len, NSA_ERR_NULL, "out is NULL");
    *out = NULL;
#ifdef NSA_WITH_OPENCL
    return nsa_cl_context_create(device, out, msg, msg_len);
#else
    (void)device;
    return nsa_fail_buf(msg, msg_len, NSA_ERR_UNAVAILABLE,
                        "libnsa was built without OpenCL (configure found no ICD loader, "
                        "or --disable-opencl)");
#endif
}
