/* Which kernel set the cpu backend may use: what was built in, what the
 * processor and the operating system support, and the NSA_MAX_ISA cap. */
#include "cpu/cpu_internal.h"

#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) &&                                           \
    (defined(NSA_HAVE_AVX2) || defined(NSA_HAVE_AVX512))
#include <cpuid.h>

/* XCR0's low word: which register states the OS saves (only after
 * cpuid has shown OSXSAVE). */
static unsigned xcr0_low(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    return lo;
}

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
    const unsigned xlo = xcr0_low();
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

#ifdef NSA_HAVE_AVX512
/* AVX-512 F, DQ, BW and VL in the processor (cpuid leaf 7, EBX bits 16,
 * 17, 30, 31), and the OS saving the opmask, upper ZMM0-15 and ZMM16-31
 * state (XCR0 bits 5, 6, 7) besides SSE and YMM (bits 1, 2). Called after
 * x86_avx2_fma, which checked OSXSAVE and leaf 7. */
static int x86_avx512(char *why, size_t len)
{
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    static const struct {
        int bit;
        const char *name;
    } need[4] = {{16, "AVX512F"}, {17, "AVX512DQ"}, {30, "AVX512BW"}, {31, "AVX512VL"}};
    for (int i = 0; i < 4; i++)
        if (!((b >> need[i].bit) & 1u)) {
            snprintf(why, len, "processor lacks %s", need[i].name);
            return 0;
        }
    const unsigned xlo = xcr0_low();
    if ((xlo & 0xe6u) != 0xe6u) {
        snprintf(why, len, "the OS does not save opmask/ZMM state (XCR0=%#x)", xlo);
        return 0;
    }
    return 1;
}
#endif
#endif

/* Bit isa set for each kernel set built in and usable here; why gets what
 * keeps the best set of this target's family from being used, if anything. */
static unsigned usable_sets(char *why, size_t len)
{
    unsigned u = 1u << NSA_ISA_SCALAR;
    why[0] = '\0';
#if defined(__x86_64__) || defined(__i386__)
#if defined(NSA_HAVE_AVX2) || defined(NSA_HAVE_AVX512)
    if (x86_avx2_fma(why, len)) {
#ifdef NSA_HAVE_AVX2
        u |= 1u << NSA_ISA_AVX2;
#endif
#ifdef NSA_HAVE_AVX512
        if (x86_avx512(why, len))
            u |= 1u << NSA_ISA_AVX512;
        else /* keep why: the processor or OS lacks it */
            return u;
#else
        snprintf(why, len, "AVX-512 kernels not built");
#endif
    }
#else
    snprintf(why, len, "no SIMD kernels built for this target");
#endif
#elif defined(NSA_HAVE_NEON) && defined(__aarch64__)
    (void)len; /* nothing keeps NEON from being used */
    u |= 1u << NSA_ISA_NEON; /* baseline on aarch64 */
#else
    snprintf(why, len, "no SIMD kernels built for this target");
#endif
    return u;
}

/* Within a family, a set's rank (scalar 0 < avx2 1 < avx512 2; neon 1). */
static int isa_rank(nsa_isa isa)
{
    return isa == NSA_ISA_AVX512 ? 2 : isa == NSA_ISA_SCALAR ? 0 : 1;
}

static int isa_x86(nsa_isa isa) { return isa == NSA_ISA_AVX2 || isa == NSA_ISA_AVX512; }

nsa_isa nsa_cpu_detect(char *why, size_t len)
{
    char buf[128];
    const unsigned u = usable_sets(buf, sizeof buf);
    nsa_isa best = NSA_ISA_SCALAR;
    for (int i = 0; i < NSA_ISA_COUNT; i++)
        if ((u >> i & 1u) && isa_rank((nsa_isa)i) > isa_rank(best))
            best = (nsa_isa)i;
    if (why && len) {
        if (buf[0])
            snprintf(why, len, "kernels: %s (%s)", nsa_cpu_isa_name(best), buf);
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
    if (strcmp(name, "avx512") == 0)
        return NSA_ISA_AVX512;
    if (strcmp(name, "neon") == 0)
        return NSA_ISA_NEON;
    return -1;
}

const char *nsa_cpu_isa_name(nsa_isa isa)
{
    switch (isa) {
    case NSA_ISA_AVX2: return "avx2";
    case NSA_ISA_AVX512: return "avx512";
    case NSA_ISA_NEON: return "neon";
    default: return "scalar";
    }
}

const nsa_simd_kernels *nsa_cpu_kernels(nsa_isa isa)
{
    char buf[128];
    if ((int)isa < 0 || (int)isa >= NSA_ISA_COUNT || !(usable_sets(buf, sizeof buf) >> isa & 1u))
        return NULL;
    switch (isa) {
#ifdef NSA_HAVE_AVX2
    case NSA_ISA_AVX2: return &nsa_simd_avx2;
#endif
#ifdef NSA_HAVE_AVX512
    case NSA_ISA_AVX512: return &nsa_simd_avx512;
#endif
#ifdef NSA_HAVE_NEON
    case NSA_ISA_NEON: return &nsa_simd_neon;
#endif
    case NSA_ISA_SCALAR: return &nsa_simd_scalar;
    default: return NULL;
    }
}

const nsa_simd_kernels *nsa_cpu_kernels_capped(nsa_isa best, nsa_isa cap)
{
    /* a cap of the other family leaves the portable set */
    if (cap != NSA_ISA_SCALAR && best != NSA_ISA_SCALAR && isa_x86(cap) != isa_x86(best))
        return &nsa_simd_scalar;
    const int top = isa_rank(cap) < isa_rank(best) ? isa_rank(cap) : isa_rank(best);
    const nsa_simd_kernels *k = &nsa_simd_scalar;
    int got = 0;
    for (int i = 0; i < NSA_ISA_COUNT; i++) {
        const int r = isa_rank((nsa_isa)i);
        if (r > got && r <= top && (isa_x86((nsa_isa)i) == isa_x86(best)) &&
            nsa_cpu_kernels((nsa_isa)i)) {
            k = nsa_cpu_kernels((nsa_isa)i);
            got = r;
        }
    }
    return k;
}
