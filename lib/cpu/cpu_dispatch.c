/* Which kernel set the cpu backend may use: what was built in, what the
 * processor and the operating system support, and the NSA_MAX_ISA cap. */
#include "cpu/cpu_internal.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/* AVX2 and FMA in the processor, and YMM state saved by the OS (OSXSAVE,
 * then XCR0 bits 1 and 2): without the last, the first AVX instruction
 * faults even on a processor that has it. */
static int x86_avx2_fma(char *why, size_t len)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) {
        snprintf(why, len, "cpuid leaf 1 unavailable");
        return 0;
    }
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!avx || !osxsave) {
        snprintf(why, len, "no AVX or no OSXSAVE");
        return 0;
    }
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 6u) != 6u) {
        snprintf(why, len, "the OS does not save YMM state (XCR0=%#x)", xlo);
        return 0;
    }
    if (__get_cpuid_max(0, NULL) < 7) {
        snprintf(why, len, "cpuid leaf 7 unavailable");
        return 0;
    }
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1;
    if (!avx2 || !fma) {
        snprintf(why, len, "processor lacks %s", !avx2 ? "AVX2" : "FMA");
        return 0;
    }
    return 1;
}
#endif

nsa_isa nsa_cpu_detect(char *why, size_t len)
{
    char buf[128] = "";
    nsa_isa best = NSA_ISA_SCALAR;
#if defined(NSA_HAVE_AVX2) && (defined(__x86_64__) || defined(__i386__))
    if (x86_avx2_fma(buf, sizeof buf))
        best = NSA_ISA_AVX2;
#elif defined(NSA_HAVE_NEON) && defined(__aarch64__)
    best = NSA_ISA_NEON; /* baseline on aarch64 */
#else
    snprintf(buf, sizeof buf, "no SIMD kernels built for this target");
#endif
    if (why && len) {
        if (best == NSA_ISA_SCALAR)
            snprintf(why, len, "kernels: scalar (%s)", buf);
        else
            snprintf(why, len, "kernels: %s", nsa_cpu_isa_name(best));
    }
    return best;
}

int nsa_cpu_isa_parse(const char *name)
{
    if (!name)
        return -1;
    if (strcmp(name, "scalar") == 0)
        return NSA_ISA_SCALAR;
    if (strcmp(name, "avx2") == 0)
        return NSA_ISA_AVX2;
    if (strcmp(name, "neon") == 0)
        return NSA_ISA_NEON;
    return -1;
}

const char *nsa_cpu_isa_name(nsa_isa isa)
{
    switch (isa) {
    case NSA_ISA_AVX2: return "avx2";
    case NSA_ISA_NEON: return "neon";
    default: return "scalar";
    }
}

const nsa_simd_kernels *nsa_cpu_kernels(nsa_isa isa)
{
    nsa_isa best = nsa_cpu_detect(NULL, 0);
    if (isa == NSA_ISA_SCALAR)
        return &nsa_simd_scalar;
#ifdef NSA_HAVE_AVX2
    if (isa == NSA_ISA_AVX2 && best == NSA_ISA_AVX2)
        return &nsa_simd_avx2;
#endif
#ifdef NSA_HAVE_NEON
    if (isa == NSA_ISA_NEON && best == NSA_ISA_NEON)
        return &nsa_simd_neon;
#endif
    (void)best;
    return NULL;
}

const nsa_simd_kernels *nsa_cpu_kernels_capped(nsa_isa best, nsa_isa cap)
{
    /* Both families order scalar below their one SIMD set, so the cap
     * either is the best set, or scalar, or of the other family. */
    if (cap == best)
        return nsa_cpu_kernels(best);
    return &nsa_simd_scalar;
}
