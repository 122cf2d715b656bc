/* cos and sin in double for RoPE, one source for the host (lib/layer.c
 * includes this file) and the device (cl/rope64.cl). libm's and OpenCL's
 * cos and sin may differ in the last bits of a double, and then a key
 * rotated on the device could differ from prefill's host rotation in its
 * last float bit. Here every step is one IEEE double operation written
 * out (no contraction into fma; rint and floor are exact), so both sides
 * get the same bits by construction.
 *
 * Method: theta = k pi/2 + r with k = rint(theta 2/pi); pi/2 in three
 * parts (21 significant bits, 21 bits, a double), so k P1 and k P2 are
 * exact for |k| < 2^31 (|theta| < 3.3e9; RoPE angles are t base^(-2i/d)
 * <= t < 2^31); then Taylor polynomials in Horner form on |r| <= pi/4 (a
 * hair more) to degree 17 (sin) and 18 (cos), whose truncation is below
 * 2e-19. Against glibc: within 1e-15 (test_layer's test_rope_sincos). */
#if defined(__OPENCL_C_VERSION__)
#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#define NSA_HAVE_SINCOS64 1
#endif
#else
#define NSA_HAVE_SINCOS64 1
#endif

#ifdef NSA_HAVE_SINCOS64
static void nsa_sincos64(double th, double *cs, double *sn)
{
#if defined(__OPENCL_C_VERSION__)
#pragma OPENCL FP_CONTRACT OFF
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
    const double k = rint(th * 0x1.45f306dc9c883p-1); /* 2/pi */
    const double r = ((th - k * 0x1.921fb00000000p+0) - k * 0x1.5110b00000000p-22) -
                     k * 0x1.18469898cc517p-44;
    const double z = r * r;
    /* (-1)^n / (2n+1)! and (-1)^n / (2n)!, rounded to double */
    const double s = r + r * z *
                             (-0x1.5555555555555p-3 +
                              z * (0x1.1111111111111p-7 +
                                   z * (-0x1.a01a01a01a01ap-13 +
                                        z * (0x1.71de3a556c734p-19 +
                                             z * (-0x1.ae64567f544e4p-26 +
                                                  z * (0x1.6124613a86d09p-33 +
                                                       z * (-0x1.ae7f3e733b81fp-41 +
                                                            z * 0x1.952c77030ad4ap-49)))))));
    const double c =
        1.0 + z * (-0x1.0000000000000p-1 +
                   z * (0x1.5555555555555p-5 +
                        z * (-0x1.6c16c16c16c17p-10 +
                             z * (0x1.a01a01a01a01ap-16 +
                                  z * (-0x1.27e4fb7789f5cp-22 +
                                       z * (0x1.1eed8eff8d898p-29 +
                                            z * (-0x1.93974a8c07c9dp-37 +
                                                 z * (0x1.ae7f3e733b81fp-45 +
                                                      z * -0x1.6827863b97d97p-53))))))));
    /* quadrant k mod 4, in double (exact for |k| < 2^53) */
    const int q = (int)(k - 4.0 * floor(k * 0.25));
    *cs = q == 0 ? c : q == 1 ? -s : q == 2 ? -c : s;
    *sn = q == 0 ? s : q == 1 ? c : q == 2 ? -s : -c;
}
#endif
