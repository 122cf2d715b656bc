/* Test helpers that need the OpenCL backend's internals (cl_internal.h);
 * for the suites built with -I lib/opencl only. */
#ifndef NSA_CL_TESTLIB_H
#define NSA_CL_TESTLIB_H

#include "cl_internal.h"

#include <stdlib.h>
#include <string.h>

/* Why the context has no tensor-core program, NULL if it must have one:
 * cl_backend.c's mma_init rule restated from the device's own properties,
 * so that a failed build or an unusable tensor-core kernel on a capable
 * device fails a test instead of skipping it. */
static inline const char *tl_mma_unsupported(const nsa_cl_state *st)
{
    const char *env = getenv("NSA_OPENCL_MMA");
    if (env && strcmp(env, "0") == 0)
        return "NSA_OPENCL_MMA=0";
    if (!strstr(st->vendor, "NVIDIA"))
        return "not an NVIDIA device";
    if (st->wg % 32 != 0 || st->wg > 256)
        return "work-group not 32 .. 256 lanes in warps";
    cl_uint major = 0;
    if (clGetDeviceInfo(st->device, CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV, sizeof major, &major,
                        NULL) != CL_SUCCESS ||
        major < 8)
        return "compute capability below 8.0";
    return NULL;
}

#endif
