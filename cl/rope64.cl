/* RoPE of the fused decode step's q (and of a device-resident step's keys)
 * in double, bit for bit the host RoPE (lib/layer.c): the angle t inv[i]
 * with the host's inv[i] = base^(-2i/rope_dim) (uploaded once: pow
 * differs between libraries), cos and sin by cl/sincos64.cl (the host's
 * own source), the rotation in double rounded once, no contraction.
 * Float angles would be off by up to 4e-3 rad at position 65536. Only
 * where the device has cl_khr_fp64; elsewhere these kernels do not exist
 * (optional: the host's float table and cl/step.cl's nsa_ds_rope). */
#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable

/* The pair (v[k], v[k + nh]) rotated by the angle th in double and
 * rounded once, as the host's rope_pair. */
inline void nsa_dr_rot(__global float *v, int k, int nh, double th)
{
#pragma OPENCL FP_CONTRACT OFF
    double cs, sn;
    nsa_sincos64(th, &cs, &sn);
    const double a = v[k], c = v[k + nh];
    v[k] = (float)(a * cs - c * sn);
    v[k + nh] = (float)(c * cs + a * sn);
}

/* q[B][H][dk]: the first rope_dim dims of each head rotated (rotate-half,
 * spec 6) at its sequence's position tpos[b]. One work-item a (b, h, i <
 * rope_dim/2). Also the device-resident step's keys ([B][G][dk]: H = G). */
__kernel void nsa_dr_rope(__global float *q, __global const int *tpos, int B, int H, int dk,
                          int rope_dim, __global const double *inv)
{
    const int nh = rope_dim / 2;
    const int i = get_global_id(0);
    if (i >= B * H * nh)
        return;
    const int k = i % nh, bh = i / nh, b = bh / H;
    nsa_dr_rot(q + (size_t)bh * dk, k, nh, (double)tpos[b] * inv[k]);
}

/* nsa_dr_rope over the keys [B][G][dk] of nb (1 .. 3) branches in one
 * launch (a device-resident step's k0, k1, k2): the same rotation. */
__kernel void nsa_dr_rope_keys(__global float *k0, __global float *k1, __global float *k2,
                               int nb, __global const int *tpos, int B, int G, int dk,
                               int rope_dim, __global const double *inv)
{
    const int nh = rope_dim / 2, per = B * G * nh;
    const int i = get_global_id(0);
    if (i >= nb * per)
        return;
    const int br = i / per, j = i % per;
    const int k = j % nh, bg = j / nh;
    __global float *v = br == 0 ? k0 : br == 1 ? k1 : k2;
    nsa_dr_rot(v + (size_t)bg * dk, k, nh, (double)tpos[bg / G] * inv[k]);
}

/* RoPE "after" of the device-resident step: the compressed token kc[B][G][dk]
 * of each sequence whose step at t = tpos[b] emits one, rotated at its
 * position i d (i = (t + 1 - l) / d its index), as lib/decode.c's host
 * step does. One work-item a (b, g, i < rope_dim/2). */
__kernel void nsa_dr_rope_cmp(__global float *kc, __global const int *tpos, int B, int G, int dk,
                              int rope_dim, __global const double *inv, int l, int d)
{
    const int nh = rope_dim / 2;
    const int i = get_global_id(0);
    if (i >= B * G * nh)
        return;
    const int k = i % nh, bg = i / nh, e = dc_emitted(tpos[bg / G], l, d);
    if (e < 0)
        return;
    nsa_dr_rot(kc + (size_t)bg * dk, k, nh, (double)(e * d) * inv[k]);
}

/* The angles nsa_dr_rope uses, for tests: tab[r][rope_dim], the cosines
 * of the rope_dim/2 angles at pos[r], then their sines. One work-item a
 * (r, i). */
__kernel void nsa_dr_angles(__global const int *pos, int rows, int rope_dim,
                            __global const double *inv, __global double *tab)
{
    const int nh = rope_dim / 2;
    const int i = get_global_id(0);
    if (i >= rows * nh)
        return;
    const int k = i % nh, r = i / nh;
    double cs, sn;
    nsa_sincos64((double)pos[r] * inv[k], &cs, &sn);
    tab[(size_t)r * rope_dim + k] = cs;
    tab[(size_t)r * rope_dim + nh + k] = sn;
}
#endif
