/* SwiGLU feed-forward (ffn.gluw1, gluw2): g = silu(h1 + b1) * (h2 + b2), where
 * h = x . [W1; W2]^T is the [T, 2*DFF] output of one GEMM. Global size T*DFF. */
__kernel void glu_gate(__global const float *h, __global const float *b12, __global float *g)
{
    const int gid = get_global_id(0);
    const int f = gid % DFF;
    const idx_t t = gid / DFF;
    const float a = h[t * 2 * DFF + f] + b12[f];
    const float b = h[t * 2 * DFF + DFF + f] + b12[DFF + f];
    g[gid] = silu(a) * b;
}
