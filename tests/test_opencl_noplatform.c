/* With no OpenCL platform (the ICD loader pointed at an empty vendor
 * directory), "opencl" is registered but unavailable, says why, and "auto"
 * moves on. A separate program: the loader reads its environment once. */
#define _POSIX_C_SOURCE 200809L
#include "testlib.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CL_TARGET_OPENCL_VERSION 120
#ifdef __APPLE__
#include <OpenCL/cl.h>
#else
#include <CL/cl.h>
#endif

static void test_no_platform(void **s)
{
    (void)s;
    /* A loader that ignores OCL_ICD_VENDORS (some vendor-supplied
     * libOpenCL builds do) still shows its platforms: the precondition of
     * this test cannot be made, so say so rather than pass or fail. */
    cl_uint np = 0;
    if (clGetPlatformIDs(0, NULL, &np) == CL_SUCCESS && np > 0) {
        print_message("the OpenCL loader ignores OCL_ICD_VENDORS (%u platform(s) visible): "
                      "cannot hide the platforms, skipping\n", np);
        skip();
    }
    int found = 0;
    for (int i = 0; i < nsa_backend_count(); i++) {
        nsa_backend_info info;
        assert_int_equal(nsa_backend_get_info(i, &info), NSA_OK);
        if (strcmp(info.name, "opencl"))
            continue;
        found = 1;
        assert_false(info.available);
        assert_non_null(strstr(info.reason, "no OpenCL platform"));
    }
    assert_true(found);
    nsa_context *c = NULL;
    char msg[NSA_MSG_LEN];
    assert_int_equal(nsa_context_create("opencl", &c, msg, sizeof msg), NSA_ERR_UNAVAILABLE);
    assert_null(c);
    assert_non_null(strstr(msg, "no OpenCL platform"));
    assert_int_equal(nsa_context_create_opencl("0", &c, msg, sizeof msg), NSA_ERR_UNAVAILABLE);
    assert_non_null(strstr(msg, "no OpenCL platform"));
    assert_int_equal(nsa_context_create("auto", &c, msg, sizeof msg), NSA_OK);
    assert_string_not_equal(nsa_context_backend(c), "opencl");
    nsa_context_free(c);
}

int main(void)
{
    /* ocl-icd and the Khronos loader both honour OCL_ICD_VENDORS */
    char dir[] = "/tmp/nsa-noicd-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    setenv("OCL_ICD_VENDORS", dir, 1);
    setenv("NSA_OPENCL_DEVICE", "*", 1); /* any device would do: there is none */
    unsetenv("NSA_BACKEND");
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_platform)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(dir);
    return rc;
}
