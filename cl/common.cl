/* Shared pieces of the libnsa OpenCL kernels. The host passes
 * NSA_KV (0 fp32, 1 fp16, 2 bf16: how K/V are stored), NSA_WG (the
 * work-group size, a power of two) and NSA_TILE (keys per tile in the
 * group attention) as -D defines. All arithmetic is fp32. */
#ifndef NSA_KV
#define NSA_KV 0
#endif
#ifndef NSA_WG
#define NSA_WG 64
#endif
#ifndef NSA_TILE
#define NSA_TILE 16
#endif

#if NSA_KV == 0
typedef float kv_t;
#define LDKV(p, i) ((p)[i])
#elif NSA_KV == 1
/* vload_half is core OpenCL C: fp16 storage needs no cl_khr_fp16. */
typedef half kv_t;
#define LDKV(p, i) vload_half((i), (p))
#else
/* bf16: the upper 16 bits of an fp32. */
typedef ushort kv_t;
#define LDKV(p, i) as_float(((uint)(p)[i]) << 16)
#endif

/* p[0..3] as a float4, the lanes at or past left (>= 1 floats of the row
 * remain) zero: a row's last float4 when its length is no multiple of 4. */
inline float4 nsa_ld4(__global const float *p, int left)
{
    if (left >= 4)
        return vload4(0, p);
    float4 v = (float4)(0.0f);
    v.x = p[0];
    if (left > 1)
        v.y = p[1];
    if (left > 2)
        v.z = p[2];
    return v;
}
