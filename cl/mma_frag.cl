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

/* A hint: the 128-byte line at global address p into L2 (no register
 * written, nothing waits for it). */
#define MMA_L2PF(p) __asm__ volatile("prefetch.global.L2 [%0];" ::"l"((ulong)(p)))

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

/* The b words of a stored K or V value and d += a b for them. fp32
 * storage: the split and 3xTF32 above. fp16 or bf16 storage (NSA_KV 1, 2):
 * every value loaded is exact in tf32 (10 and 7 mantissa bits, tf32 keeps
 * 10 and fp32's exponent range, so fp16 subnormals are normal here), so
 * hi = its own bits (cvt.rna would return them unchanged) and lo = 0: the
 * a_hi b_lo product adds exact zeros and is skipped, 2 mma instead of 3
 * with the same sums in the same order (doc/opencl.md). */
#if NSA_KV == 0
#define MMA_SPLIT_KV(x, hi, lo) MMA_SPLIT(x, hi, lo)
#define MMA_3KV(d, ah, al, bh, bl) MMA_3(d, ah, al, bh, bl)
#else
#define MMA_SPLIT_KV(x, hi, lo)                                                                \
    do {                                                                                       \
        hi = as_uint(x);                                                                       \
        lo = 0u;                                                                               \
    } while (0)
#define MMA_3KV(d, ah, al, bh, bl)                                                             \
    do {                                                                                       \
        MMA_1(d, al[0], al[1], al[2], al[3], bh[0], bh[1]);                                    \
        MMA_1(d, ah[0], ah[1], ah[2], ah[3], bh[0], bh[1]);                                    \
    } while (0)
#endif

/* The four a words (ah, al) of p0 .. p3, one P fragment of P V. */
#define MMA_SPLIT_A(p0, p1, p2, p3, ah, al)                                                    \
    do {                                                                                       \
        MMA_SPLIT(p0, ah[0], al[0]);                                                           \
        MMA_SPLIT(p1, ah[1], al[1]);                                                           \
        MMA_SPLIT(p2, ah[2], al[2]);                                                           \
        MMA_SPLIT(p3, ah[3], al[3]);                                                           \
    } while (0)

/* d[0..3] += P (ah, al) times the four float4 lanes of the value rows
 * va, vb (8 keys, 4 columns each), the b words split into bh, bl
 * (MMA_SPLIT_KV). */
#define MMA_PV4(d, ah, al, bh, bl, va, vb)                                                     \
    do {                                                                                       \
        MMA_SPLIT_KV(va.x, bh[0], bl[0]);                                                      \
        MMA_SPLIT_KV(vb.x, bh[1], bl[1]);                                                      \
        MMA_3KV(d[0], ah, al, bh, bl);                                                         \
        MMA_SPLIT_KV(va.y, bh[0], bl[0]);                                                      \
        MMA_SPLIT_KV(vb.y, bh[1], bl[1]);                                                      \
        MMA_3KV(d[1], ah, al, bh, bl);                                                         \
        MMA_SPLIT_KV(va.z, bh[0], bl[0]);                                                      \
        MMA_SPLIT_KV(vb.z, bh[1], bl[1]);                                                      \
        MMA_3KV(d[2], ah, al, bh, bl);                                                         \
        MMA_SPLIT_KV(va.w, bh[0], bl[0]);                                                      \
        MMA_SPLIT_KV(vb.w, bh[1], bl[1]);                                                      \
        MMA_3KV(d[3], ah, al, bh, bl);                                                         \
    } while (0)

#endif
