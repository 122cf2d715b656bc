/* Tensor-core fragment helpers shared by cl/mma.cl (the decode partial
 * kernel) and cl/attn_mma.cl (the group attention kernel): mma.sync
 * m16n8k8 tf32 through inline PTX, for NVIDIA devices of compute
 * capability 8.0 and later. Built only with -DNSA_MMA=1 (the backend
 * state's second program, lib/opencl/cl_backend.c); other compilers never
 * see the asm.
 *
 * Precision stays fp32-level through the 3xTF32 split: x = hi + lo with
 * hi = tf32(x), lo = tf32(x - hi), and a b ~= a_lo b_hi + a_hi b_lo +
 * a_hi b_hi with fp32 accumulation (the a_lo b_lo term, ~2^-22 relative,
 * is dropped).
 *
 * Fragments (PTX ISA, m16n8k8 .tf32): lane = 4 gq + tq. A (16 x 8, row):
 * a0 (gq, tq), a1 (gq + 8, tq), a2 (gq, tq + 4), a3 (gq + 8, tq + 4); B
 * (8 x 8, col): b0 (tq, gq), b1 (tq + 4, gq); C (16 x 8): c0 (gq, 2 tq),
 * c1 (gq, 2 tq + 1), c2 (gq + 8, 2 tq), c3 (gq + 8, 2 tq + 1). The k index
 * of a product is a free choice as long as A and B agree, so a lane may
 * load whole float4 and spread their components over k. */
#if NSA_MMA

static uint mma_tf32(float x)
{
    uint r;
    __asm__("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

/* d += a b for one m16n8k8 tile */
#define MMA_1(d, a0, a1, a2, a3, b0, b1)                                                       \
    __asm__("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "   \
        "{%8,%9}, {%0,%1,%2,%3};"                                                              \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                       \
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))

/* hi and lo words of x. MMA_RNDI=1 rounds with integer operations
 * (ties away from zero) instead of cvt.rna (an experiment: the same
 * precision, other instructions). */
#if MMA_RNDI
#define MMA_RNDU(u) (((u) + 0x1000u) & 0xffffe000u)
#define MMA_SPLIT(x, hi, lo)                                                                   \
    do {                                                                                       \
        const float x_ = (x);                                                                  \
        hi = MMA_RNDU(as_uint(x_));                                                            \
        lo = MMA_RNDU(as_uint(x_ - as_float(hi)));                                             \
    } while (0)
#else
#define MMA_SPLIT(x, hi, lo)                                                                   \
    do {                                                                                       \
        hi = mma_tf32(x);                                                                      \
        lo = mma_tf32((x) - as_float(hi));                                                     \
    } while (0)
#endif

/* d += a b in 3xTF32 from a (ah, al)[4] and b (bh, bl)[2], small terms
 * first */
#define MMA_3(d, ah, al, bh, bl)                                                               \
    do {                                                                                       \
        MMA_1(d, al[0], al[1], al[2], al[3], bh[0], bh[1]);                                    \
        MMA_1(d, ah[0], ah[1], ah[2], ah[3], bl[0], bl[1]);                                    \
        MMA_1(d, ah[0], ah[1], ah[2], ah[3], bh[0], bh[1]);                                    \
    } while (0)

#endif
