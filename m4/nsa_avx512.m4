# NSA_CHECK_AVX512
# Whether $CC builds the AVX-512 kernels (simd/nsa_avx512.c): F, VL, BW, DQ
# and FMA intrinsics, opmask loads and stores, 128-bit masked stores (VL)
# and the reductions, with those flags only (NSA_CHECK_ISA). Sets
# nsa_have_avx512 and NSA_AVX512_CFLAGS; adds -DNSA_HAVE_AVX512 to
# NSA_CPU_DEFS and "avx512" to nsa_cpu_kernels on success, else warns that
# the cpu backend stops at AVX2.
AC_DEFUN([NSA_CHECK_AVX512], [
  NSA_CHECK_ISA([avx512], [-mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma],
    [[#include <immintrin.h>]],
    [[float m[16] = {0};
      __m512 a = _mm512_set1_ps(1.5f);
      a = _mm512_fmadd_ps(a, a, _mm512_maskz_loadu_ps((__mmask16)0x7fff, m));
      __m512 s = _mm512_shuffle_f32x4(a, a, 0x44);
      _mm_mask_storeu_ps(m, (__mmask8)3, _mm512_extractf32x4_ps(s, 1));
      __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(s), _mm512_set1_epi32(127));
      __mmask16 k = _mm512_cmp_ps_mask(a, _mm512_castsi512_ps(i), _CMP_LT_OQ);
      volatile float r = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(k, a)) + m[1];
      (void)r;]], [NSA_AVX512_CFLAGS])
  AS_IF([test "x$nsa_have_avx512" = "xyes"],
    [NSA_CPU_DEFS="$NSA_CPU_DEFS -DNSA_HAVE_AVX512"; nsa_cpu_kernels="$nsa_cpu_kernels avx512"],
    [AC_MSG_WARN([$CC does not build AVX-512 (F, VL, BW, DQ) intrinsics with
  -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma: the cpu backend's best
  kernels are AVX2+FMA (no AVX-512 set is built).])])
])
