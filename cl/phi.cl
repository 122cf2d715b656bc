/* phi (spec 2): compressed token c of group g from the l rows starting at
 * src[c]. z = concat_j (x_j + pe[g][j]) is never materialized. */

/* avg: out[c][g][e] = mean_j (x[src+j][g][e] + pe[g][j][e]) */
__kernel void nsa_phi_avg(__global const float *x, __global const float *pe, int has_pe,
                          __global const int *src, int C, int G, int l, int dim,
                          __global float *out)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)C * G * dim)
        return;
    const int e = (int)(gid % dim);
    const size_t cg = gid / dim;
    const int g = (int)(cg % G);
    const size_t s0 = (size_t)src[cg / G];
    float acc = 0.0f;
    for (int j = 0; j < l; j++) {
        float v = x[((s0 + j) * G + g) * dim + e];
        if (has_pe)
            v += pe[((size_t)g * l + j) * dim + e];
        acc += v;
    }
    out[gid] = acc / (float)l;
}

/* out[c][g][o] = act(b[g][o] + W[g][o] . z), W is [G][N][l*dim]; act 1 = SiLU. */
__kernel void nsa_phi_lin(__global const float *x, __global const float *pe, int has_pe,
                          __global const int *src, int C, int G, int l, int dim,
                          __global const float *W, __global const float *b, int has_b, int N,
                          int act, __global float *out)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)C * G * N)
        return;
    const int o = (int)(gid % N);
    const size_t cg = gid / N;
    const int g = (int)(cg % G);
    const size_t s0 = (size_t)src[cg / G];
    const size_t L = (size_t)l * dim;
    __global const float *w = W + ((size_t)g * N + o) * L;
    float acc = has_b ? b[(size_t)g * N + o] : 0.0f;
    for (int j = 0; j < l; j++) {
        __global const float *xr = x + ((s0 + j) * G + g) * dim;
        __global const float *pr = pe + ((size_t)g * l + j) * dim;
        __global const float *wr = w + (size_t)j * dim;
        for (int e = 0; e < dim; e++)
            acc += wr[e] * (has_pe ? xr[e] + pr[e] : xr[e]);
    }
    out[gid] = act ? acc / (1.0f + exp(-acc)) : acc;
}

/* Second layer of the mlp: out[c][g][e] = b2[g][e] + W2[g][e] . h[c][g]. */
__kernel void nsa_phi_out(__global const float *h, int C, int G, int hid, int dim,
                          __global const float *W2, __global const float *b2, int has_b,
                          __global float *out)
{
    const size_t gid = get_global_id(0);
    if (gid >= (size_t)C * G * dim)
        return;
    const int e = (int)(gid % dim);
    const size_t cg = gid / dim;
    const int g = (int)(cg % G);
    __global const float *hr = h + cg * hid;
    __global const float *w = W2 + ((size_t)g * dim + e) * hid;
    float acc = has_b ? b2[(size_t)g * dim + e] : 0.0f;
    for (int u = 0; u < hid; u++)
        acc += w[u] * hr[u];
    out[gid] = acc;
}
