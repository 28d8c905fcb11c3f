/* Power law graph attention, deductive branch (mha1 of each decoder layer).
 *
 *   A0   = q^T q per head, summed over every position   [HEADS, DK, DK]
 *   A    = metric learner: LN_dk(A0), then NUM_RES times
 *          A = LN_dk(GLU_D(...GLU_1(A)) + A)            (rows are independent)
 *   A_LM = iSwiGLU(W @ A + b) + 1e-9,  iSwiGLU(x) = x * silu(x)
 *   A_P  = A_LM ^ pw                                      (elementwise)
 *   G_LM = a @ A_P + ba                                   (@: per-head matmul)
 */

/* A0[h][i][j] = sum_t q[t][h*DK+i] * q[t][h*DK+j]. Global size HEADS*DK*DK. */
__kernel void metric_tensor(__global const float *q, const int T, __global float *a0)
{
    const int gid = get_global_id(0);
    const int j = gid % DK, i = (gid / DK) % DK, h = gid / (DK * DK);
    float s = 0.0f;
    for (int t = 0; t < T; t++) {
        const long r = (long)t * DMODEL + h * DK;
        s += q[r + i] * q[r + j];
    }
    a0[gid] = s;
}

/* LayerNorm of ML_ROWS rows of DK values in local memory, one work-item per
 * row computing the statistics (rows are short), all of them applying it. */
inline void ln_rows(__local float (*x)[DK], __global const float *w, __global const float *b,
                    __local float *mean, __local float *rstd)
{
    const int lid = get_local_id(0);
    if (lid < ML_ROWS) {
        float s = 0.0f;
        for (int i = 0; i < DK; i++)
            s += x[lid][i];
        const float mu = s / DK;
        float s2 = 0.0f;
        for (int i = 0; i < DK; i++)
            s2 += (x[lid][i] - mu) * (x[lid][i] - mu);
        mean[lid] = mu;
        rstd[lid] = rsqrt(s2 / DK + LN_EPS);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
        const int r = e / DK, i = e % DK;
        x[r][i] = (x[r][i] - mean[r]) * rstd[r] * w[i] + b[i];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* The metric learner (mha1.layernorm1 and mha1.reslayerAs). Rows of A are
 * independent through all of it, so each work-group keeps ML_ROWS rows in
 * local memory from start to end, and every weight it reads serves all of
 * them. The weights of GLU u = r*NUM_DENSE + k are stored transposed:
 * w12[u] is [DK, 2*FA] (gluw1 columns, then gluw2), w3[u] is [FA, DK], so
 * work-items computing neighbouring outputs read neighbouring weights. */
__kernel __attribute__((reqd_work_group_size(ML_WG, 1, 1)))
void metric_learner(__global const float *a0, __global float *a_out, const int n_rows,
                    __global const float *ln0_w, __global const float *ln0_b,
                    __global const float *w12, __global const float *b12,
                    __global const float *w3, __global const float *b3,
                    __global const float *lna_w, __global const float *lna_b)
{
    __local float a[ML_ROWS][DK], cur[ML_ROWS][DK], hid[ML_ROWS][2 * FA], mean[ML_ROWS], rstd[ML_ROWS];
    const int row0 = get_group_id(0) * ML_ROWS, lid = get_local_id(0);
    for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
        const int r = e / DK, i = e % DK;
        a[r][i] = row0 + r < n_rows ? a0[(long)(row0 + r) * DK + i] : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    ln_rows(a, ln0_w, ln0_b, mean, rstd);
    for (int r = 0; r < NUM_RES; r++) {
        for (int e = lid; e < ML_ROWS * DK; e += ML_WG)
            cur[e / DK][e % DK] = a[e / DK][e % DK];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < NUM_DENSE; k++) {
            const int u = r * NUM_DENSE + k;
            /* gluw1 and gluw2 outputs: column c of [W1; W2]^T for every row */
            __global const float *g12 = w12 + (long)u * 2 * FA * DK;
            for (int c = lid; c < 2 * FA; c += ML_WG) {
                float h[ML_ROWS];
                const float bias = b12[u * 2 * FA + c];
                for (int q = 0; q < ML_ROWS; q++)
                    h[q] = bias;
#if DK % 4 == 0
                /* four inputs at a time: one vector read of local memory per row */
#pragma unroll 4
                for (int i = 0; i < DK; i += 4) {
                    const float4 w = (float4)(g12[i * 2 * FA + c], g12[(i + 1) * 2 * FA + c],
                                              g12[(i + 2) * 2 * FA + c], g12[(i + 3) * 2 * FA + c]);
                    for (int q = 0; q < ML_ROWS; q++)
                        h[q] += dot(w, vload4(0, &cur[q][i]));
                }
#else
#pragma unroll 8
                for (int i = 0; i < DK; i++) {
                    const float w = g12[i * 2 * FA + c];
                    for (int q = 0; q < ML_ROWS; q++)
                        h[q] += w * cur[q][i];
                }
#endif
                for (int q = 0; q < ML_ROWS; q++)
                    hid[q][c] = h[q];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int e = lid; e < ML_ROWS * FA; e += ML_WG) {
                const int q = e / FA, f = e % FA;
                hid[q][f] = silu(hid[q][f]) * hid[q][FA + f];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* gluw3: output j of row q */
            __global const float *g3 = w3 + (long)u * DK * FA;
            for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
                const int q = e / DK, j = e % DK;
                float o = b3[u * DK + j];
#if FA % 2 == 0
                /* pairs of hidden units: one vector read of local memory per pair */
#pragma unroll 8
                for (int f = 0; f < FA; f += 2)
                    o += dot((float2)(g3[f * DK + j], g3[(f + 1) * DK + j]), vload2(0, &hid[q][f]));
#else
#pragma unroll 8
                for (int f = 0; f < FA; f++)
                    o += g3[f * DK + j] * hid[q][f];
#endif
                cur[q][j] = o;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        for (int e = lid; e < ML_ROWS * DK; e += ML_WG)
            a[e / DK][e % DK] += cur[e / DK][e % DK];
        barrier(CLK_LOCAL_MEM_FENCE);
        ln_rows(a, lna_w + r * DK, lna_b + r * DK, mean, rstd);
    }
    for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
        const int r = e / DK, i = e % DK;
        if (row0 + r < n_rows)
            a_out[(long)(row0 + r) * DK + i] = a[r][i];
    }
}

/* A_LM and A_P from A. plga holds Wlst, blst, pwlst, alst, balst, each
 * [HEADS, DK, DK]. Global size HEADS*DK*DK. */
#define PLGA_SIZE (HEADS * DK * DK)
__kernel void plga_potential(__global const float *a, __global const float *plga,
                             __global float *a_lm, __global float *a_p)
{
    const int gid = get_global_id(0);
    const int j = gid % DK, i = (gid / DK) % DK, h = gid / (DK * DK);
    __global const float *w = plga + h * DK * DK + i * DK;
    __global const float *ah = a + h * DK * DK;
    float z = plga[PLGA_SIZE + gid];
    for (int k = 0; k < DK; k++)
        z += w[k] * ah[k * DK + j];
    const float lm = z * silu(z) + 1e-9f;
    a_lm[gid] = lm;
    a_p[gid] = pow(lm, plga[2 * PLGA_SIZE + gid]);
}

/* G_LM = a @ A_P + ba. A non-finite G_LM (the power overflowing) sets the
 * layer's flag. Global size HEADS*DK*DK. */
__kernel void plga_energy(__global const float *a_p, __global const float *plga, __global float *g,
                          __global int *flags, const int flag_index)
{
    const int gid = get_global_id(0);
    const int j = gid % DK, i = (gid / DK) % DK, h = gid / (DK * DK);
    __global const float *al = plga + 3 * PLGA_SIZE + h * DK * DK + i * DK;
    __global const float *ph = a_p + h * DK * DK;
    float s = plga[4 * PLGA_SIZE + gid];
    for (int k = 0; k < DK; k++)
        s += al[k] * ph[k * DK + j];
    g[gid] = s;
    flag_if_nonfinite(s, flags, flag_index);
}
