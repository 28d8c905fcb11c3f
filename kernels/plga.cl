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

/* The metric learner (mha1.layernorm1 and mha1.reslayerAs), one work-group per
 * row of A. w12[u] holds gluw1 (FA rows) then gluw2 (FA rows) of GLU u =
 * r*NUM_DENSE + k, each row DK long; w3[u] is [DK, FA]. Rows of A are
 * independent through all of it, so a row never leaves local memory. */
__kernel __attribute__((reqd_work_group_size(ML_WG, 1, 1)))
void metric_learner(__global const float *a0, __global float *a_out,
                    __global const float *ln0_w, __global const float *ln0_b,
                    __global const float *w12, __global const float *b12,
                    __global const float *w3, __global const float *b3,
                    __global const float *lna_w, __global const float *lna_b)
{
    __local float a[DK], cur[DK], hid[FA], scratch[ML_WG];
    const int row = get_group_id(0), lid = get_local_id(0);
    for (int i = lid; i < DK; i += ML_WG)
        a[i] = a0[(long)row * DK + i];
    barrier(CLK_LOCAL_MEM_FENCE);
    ln_local(a, DK, ln0_w, ln0_b, scratch);
    for (int r = 0; r < NUM_RES; r++) {
        for (int i = lid; i < DK; i += ML_WG)
            cur[i] = a[i];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < NUM_DENSE; k++) {
            const int u = r * NUM_DENSE + k;
            __global const float *g1 = w12 + (long)u * 2 * FA * DK;
            __global const float *g2 = g1 + (long)FA * DK;
            for (int f = lid; f < FA; f += ML_WG) {
                float h1 = b12[u * 2 * FA + f], h2 = b12[u * 2 * FA + FA + f];
                for (int i = 0; i < DK; i++) {
                    h1 += g1[f * DK + i] * cur[i];
                    h2 += g2[f * DK + i] * cur[i];
                }
                hid[f] = silu(h1) * h2;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            __global const float *g3 = w3 + (long)u * DK * FA;
            for (int j = lid; j < DK; j += ML_WG) {
                float o = b3[u * DK + j];
                for (int f = 0; f < FA; f++)
                    o += g3[j * FA + f] * hid[f];
                cur[j] = o;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        for (int i = lid; i < DK; i += ML_WG)
            a[i] += cur[i];
        barrier(CLK_LOCAL_MEM_FENCE);
        ln_local(a, DK, lna_w + r * DK, lna_b + r * DK, scratch);
    }
    for (int i = lid; i < DK; i += ML_WG)
        a_out[(long)row * DK + i] = a[i];
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
