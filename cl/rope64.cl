/* RoPE of the fused decode step's q with the angles computed on the device
 * in double, as the host RoPE computes them (lib/layer.c): float angles
 * are off by up to 4e-3 rad at position 65536. Only where the device has
 * cl_khr_fp64; elsewhere these kernels do not exist (optional: the host
 * computes the angles and cl/step.cl's nsa_ds_rope applies them). */
#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable

/* Angle i < rope_dim/2 at position pos: pos base^(-2i/rope_dim), the
 * host's formula and operation order (rope_theta in lib/layer.c). */
inline double nsa_dr_theta(int pos, float base, int i, int rope_dim)
{
    return (double)pos * pow((double)base, -2.0 * i / (double)rope_dim);
}

/* The pair (v[k], v[k + nh]) rotated by the angle th in double and
 * rounded once, as the host's rope_pair. */
inline void nsa_dr_rot(__global float *v, int k, int nh, double th)
{
#pragma OPENCL FP_CONTRACT OFF
    const double cs = cos(th), sn = sin(th);
    const double a = v[k], c = v[k + nh];
    v[k] = (float)(a * cs - c * sn);
    v[k + nh] = (float)(c * cs + a * sn);
}

/* q[B][H][dk]: the first rope_dim dims of each head rotated (rotate-half,
 * spec 6) at its sequence's position tpos[b], in double and rounded once,
 * as the host's rope_pair. One work-item a (b, h, i < rope_dim/2). Also
 * the device-resident step's keys ([B][G][dk]: H = G). */
__kernel void nsa_dr_rope(__global float *q, __global const int *tpos, int B, int H, int dk,
                          int rope_dim, float base)
{
    const int nh = rope_dim / 2;
    const int i = get_global_id(0);
    if (i >= B * H * nh)
        return;
    const int k = i % nh, bh = i / nh, b = bh / H;
    nsa_dr_rot(q + (size_t)bh * dk, k, nh, nsa_dr_theta(tpos[b], base, k, rope_dim));
}

/* RoPE "after" of the device-resident step: the compressed token kc[B][G][dk]
 * of each sequence whose step at t = tpos[b] emits one, rotated at its
 * position i d (i = (t + 1 - l) / d its index), as lib/decode.c's host
 * step does. One work-item a (b, g, i < rope_dim/2). */
__kernel void nsa_dr_rope_cmp(__global float *kc, __global const int *tpos, int B, int G, int dk,
                              int rope_dim, float base, int l, int d)
{
    const int nh = rope_dim / 2;
    const int i = get_global_id(0);
    if (i >= B * G * nh)
        return;
    const int k = i % nh, bg = i / nh, e = dc_emitted(tpos[bg / G], l, d);
    if (e < 0)
        return;
    nsa_dr_rot(kc + (size_t)bg * dk, k, nh, nsa_dr_theta(e * d, base, k, rope_dim));
}

/* The angles nsa_dr_rope uses, for tests: tab[r][rope_dim], the cosines
 * of the rope_dim/2 angles at pos[r], then their sines. One work-item a
 * (r, i). */
__kernel void nsa_dr_angles(__global const int *pos, int rows, int rope_dim, float base,
                            __global double *tab)
{
    const int nh = rope_dim / 2;
    const int i = get_global_id(0);
    if (i >= rows * nh)
        return;
    const int k = i % nh, r = i / nh;
    const double th = nsa_dr_theta(pos[r], base, k, rope_dim);
    tab[(size_t)r * rope_dim + k] = cos(th);
    tab[(size_t)r * rope_dim + nh + k] = sin(th);
}
#endif
