/* The small pieces of a decode step that stays on the device (the fused
 * step of cl_decode.c): RoPE of the projected q, the gate MLP's SiLU and
 * the gate activation, all in place, between the projections and the
 * decode attention. (RoPE with the angles computed here in double:
 * cl/rope64.cl.) */

/* q[B][H][dk]: the first rope_dim dims of each head rotated (rotate-half,
 * spec 6) by the angles of its sequence's position: tab[B][rope_dim], the
 * cosines of the rope_dim/2 angles then their sines (computed on the host
 * in double, as the host RoPE does: the fallback of cl/rope64.cl's
 * nsa_dr_rope on devices without fp64). One work-item a (b, h, i < half). */
__kernel void nsa_ds_rope(__global float *q, __global const float *tab, int B, int H, int dk,
                          int rope_dim)
{
    const int nh = rope_dim / 2;
    const int i = get_global_id(0);
    if (i >= B * H * nh)
        return;
    const int k = i % nh, bh = i / nh, b = bh / H;
    __global float *v = q + (size_t)bh * dk;
    const float cs = tab[(size_t)b * rope_dim + k], sn = tab[(size_t)b * rope_dim + nh + k];
    const float a = v[k], c = v[k + nh];
    v[k] = a * cs - c * sn;
    v[k + nh] = c * cs + a * sn;
}

/* h[n] -> SiLU(h) = h / (1 + exp(-h)), in place: the hidden layer of the
 * gate MLP between its two linears (spec 5). One work-item an element. */
__kernel void nsa_ds_silu(__global float *h, int n)
{
    const int i = get_global_id(0);
    if (i >= n)
        return;
    const float v = h[i];
    h[i] = v / (1.0f + exp(-v));
}

/* g[rows][3] gate logits -> gates: sigmoid each, or softmax over the three
 * with temperature tau (spec 6). One work-item a row (b, h). */
__kernel void nsa_ds_gate(__global float *g, int rows, int sigmoid, float tau)
{
    const int r = get_global_id(0);
    if (r >= rows)
        return;
    __global float *z = g + (size_t)r * 3;
    const float z0 = z[0], z1 = z[1], z2 = z[2];
    if (sigmoid) {
        z[0] = 1.0f / (1.0f + exp(-z0));
        z[1] = 1.0f / (1.0f + exp(-z1));
        z[2] = 1.0f / (1.0f + exp(-z2));
        return;
    }
    const float m = fmax(fmax(z0, z1), z2);
    const float e0 = exp((z0 - m) / tau), e1 = exp((z1 - m) / tau), e2 = exp((z2 - m) / tau);
    const float sum = e0 + e1 + e2;
    z[0] = e0 / sum;
    z[1] = e1 / sum;
    z[2] = e2 / sum;
}
