/* Power law graph attention, deductive branch (mha1 of each decoder layer).
 *
 *   A0   = q^T q per head, summed over every position   [HEADS, DK, DK]
 *   A    = metric learner: LN_dk(A0), then NUM_RES times
 *          A = LN_dk(GLU_D(...GLU_1(A)) + A)            (rows are independent)
 *   A_LM = iSwiGLU(W @ A + b) + 1e-9,  iSwiGLU(x) = x * silu(x)
 *   A_P  = A_LM ^ pw                                      (elementwise)
 *   G_LM = a @ A_P + ba                                   (@: per-head matmul)
 */

#if WG_FORMS
/* A0[h][i][j] = sum_t q[t][h*DK+i] * q[t][h*DK+j]. Global size HEADS*DK*DK. */
__kernel void metric_tensor(__global const float *q, const int T, __global float *a0)
{
    const int gid = get_global_id(0);
    const int j = gid % DK, i = (gid / DK) % DK, h = gid / (DK * DK);
    float s = 0.0f;
    for (int t = 0; t < T; t++) {
        const idx_t r = (idx_t)t * DMODEL + h * DK;
        s += q[r + i] * q[r + j];
    }
    a0[gid] = s;
}
#endif

#if !WG_FORMS
/* The same on CPU devices: a work-item per row i of a head's A, the row
 * summed over t as 16-wide vectors where DK allows. Global size HEADS*DK. */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void metric_tensor_cpu(__global const float *q, const int T, __global float *a0)
{
    const int gid = get_global_id(0);
    const int i = gid % DK, h = gid / DK;
    float s[(DK + 15) / 16 * 16];
#pragma unroll
    for (int j = 0; j < DK; j++)
        s[j] = 0.0f;
    for (int t = 0; t < T; t++) {
        __global const float *r = q + (idx_t)t * DMODEL + h * DK;
        const float x = r[i];
#if DK % 16 == 0
#pragma unroll
        for (int j = 0; j < DK; j += 16)
            vstore16(mad((float16)x, vload16(0, r + j), vload16(0, s + j)), 0, s + j);
#else
#pragma unroll
        for (int j = 0; j < DK; j++)
            s[j] += x * r[j];
#endif
    }
#pragma unroll
    for (int j = 0; j < DK; j++)
        a0[(idx_t)gid * DK + j] = s[j];
}
#endif

/* Work-item shapes of the metric learner, chosen by the host:
 * ML_RG    groups of rows in the gluw1/gluw2 phase, 1 <= ML_RG <= ML_ROWS;
 * ML_KS    splits of the DK inputs in that phase, 1 <= ML_KS: a work-item
 *          takes one hidden unit f for the ML_RPG rows of its group over
 *          ML_KL inputs, holding the weights of ML_KC inputs in registers
 *          at a time; the splits' partial sums meet in local memory;
 * ML_S     slices of the hidden units in the gluw3 phase, 1 <= ML_S <= FA:
 *          a work-item takes one output j of every row over ML_FL hidden
 *          units; the slices' partial sums meet in local memory;
 * ML_LNP   work-items per row taking a LayerNorm's partial sums.
 * Rows of hidden units are padded to ML_FAP (a multiple of 4, zeros) so that
 * they are read four at a time. */
#define ML_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ML_MAX(a, b) ((a) > (b) ? (a) : (b))
#define ML_RPG ((ML_ROWS + ML_RG - 1) / ML_RG)
#define ML_KL (((DK + ML_KS - 1) / ML_KS + 3) / 4 * 4)
#define ML_FAP ((FA + 3) / 4 * 4)
#define ML_FL (((ML_FAP + ML_S - 1) / ML_S + 3) / 4 * 4)
#define ML_LNP ML_MIN(8, DK)
/* local scratch shared by the two phases' partial sums */
#define ML_P1 (ML_KS > 1 ? ML_KS * ML_ROWS * 2 * FA : 1)
#define ML_P2 (ML_S > 1 ? ML_S * ML_ROWS * DK : 1)
#define ML_SCRATCH ML_MAX(ML_P1, ML_P2)

#if WG_FORMS
/* LayerNorm of ML_ROWS rows of DK values in local memory: ML_LNP work-items
 * per row take partial sums, then every work-item applying it combines them
 * (three barriers, two passes for the variance). */
inline void ln_rows(__local float (*x)[DK], __global const float *w, __global const float *b,
                    __local float (*ps)[ML_LNP], __local float (*pq)[ML_LNP])
{
    const int lid = get_local_id(0);
    for (int e = lid; e < ML_ROWS * ML_LNP; e += ML_WG) {
        const int r = e / ML_LNP, s = e % ML_LNP;
        float v = 0.0f;
        for (int i = s; i < DK; i += ML_LNP)
            v += x[r][i];
        ps[r][s] = v;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e = lid; e < ML_ROWS * ML_LNP; e += ML_WG) {
        const int r = e / ML_LNP, s = e % ML_LNP;
        float mu = 0.0f;
        for (int t = 0; t < ML_LNP; t++)
            mu += ps[r][t];
        mu /= DK;
        float v = 0.0f;
        for (int i = s; i < DK; i += ML_LNP)
            v += (x[r][i] - mu) * (x[r][i] - mu);
        pq[r][s] = v;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
        const int r = e / DK, i = e % DK;
        float mu = 0.0f, var = 0.0f;
        for (int t = 0; t < ML_LNP; t++) {
            mu += ps[r][t];
            var += pq[r][t];
        }
        mu /= DK;
        x[r][i] = (x[r][i] - mu) * rsqrt(var / DK + LN_EPS) * w[i] + b[i];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* The gluw1/gluw2 sums of hidden unit f over inputs [i0, i0 + ML_KL) for the
 * rows q0 .. q0 + ML_RPG - 1 (clamped; the caller drops rows past the end). */
inline void ml_gates(__local float (*src)[DK], __global const float *g12, const int f, const int i0,
                     const int q0, float *hg, float *hu)
{
    for (int q = 0; q < ML_RPG; q++)
        hg[q] = hu[q] = 0.0f;
    for (int c0 = i0; c0 < ML_MIN(i0 + ML_KL, DK); c0 += ML_KC) {
        float wg[ML_KC], wu[ML_KC];
#pragma unroll
        for (int t = 0; t < ML_KC; t++) {
            const int i = ML_MIN(c0 + t, DK - 1);
            wg[t] = g12[i * 2 * FA + f];
            wu[t] = g12[i * 2 * FA + FA + f];
        }
#pragma unroll
        for (int q = 0; q < ML_RPG; q++) {
            __local const float *x = src[ML_MIN(q0 + q, ML_ROWS - 1)];
#if DK % 4 == 0 && ML_KC % 4 == 0
#pragma unroll
            for (int t = 0; t < ML_KC; t += 4) {
                if (c0 + t < ML_MIN(i0 + ML_KL, DK)) {
                    const float4 v = vload4(0, x + c0 + t);
                    hg[q] += wg[t] * v.x + wg[t + 1] * v.y + wg[t + 2] * v.z + wg[t + 3] * v.w;
                    hu[q] += wu[t] * v.x + wu[t + 1] * v.y + wu[t + 2] * v.z + wu[t + 3] * v.w;
                }
            }
#else
#pragma unroll
            for (int t = 0; t < ML_KC; t++) {
                if (c0 + t < ML_MIN(i0 + ML_KL, DK)) {
                    hg[q] += wg[t] * x[c0 + t];
                    hu[q] += wu[t] * x[c0 + t];
                }
            }
#endif
        }
    }
}

/* The metric learner (mha1.layernorm1 and mha1.reslayerAs). Rows of A are
 * independent through all of it, so each work-group keeps ML_ROWS rows in
 * local memory from start to end, and every weight it reads serves several
 * rows. The weights of GLU u = r*NUM_DENSE + k are stored transposed:
 * w12[u] is [DK, 2*FA] (gluw1 columns, then gluw2), w3[u] is [FA, DK], so
 * work-items computing neighbouring outputs read neighbouring weights.
 * A GLU takes two to four barriers: the gate sums (and their total over the
 * input splits), the gluw3 slices' sums (and their total). */
__kernel __attribute__((reqd_work_group_size(ML_WG, 1, 1)))
void metric_learner(__global const float *a0, __global float *a_out, const int n_rows,
                    __global const float *ln0_w, __global const float *ln0_b,
                    __global const float *w12, __global const float *b12,
                    __global const float *w3, __global const float *b3,
                    __global const float *lna_w, __global const float *lna_b)
{
    __local float a[ML_ROWS][DK], cur[ML_ROWS][DK], hid[ML_ROWS][ML_FAP];
    __local float ps[ML_ROWS][ML_LNP], pq[ML_ROWS][ML_LNP], scratch[ML_SCRATCH];
    const int row0 = get_group_id(0) * ML_ROWS, lid = get_local_id(0);
    for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
        const int r = e / DK, i = e % DK;
        a[r][i] = row0 + r < n_rows ? a0[(idx_t)(row0 + r) * DK + i] : 0.0f;
    }
#if ML_FAP > FA
    /* the padding of the hidden units, read by the gluw3 phase's float4 loads */
    for (int e = lid; e < ML_ROWS * (ML_FAP - FA); e += ML_WG)
        hid[e / (ML_FAP - FA)][FA + e % (ML_FAP - FA)] = 0.0f;
#endif
    barrier(CLK_LOCAL_MEM_FENCE);
    ln_rows(a, ln0_w, ln0_b, ps, pq);
    for (int r = 0; r < NUM_RES; r++) {
        for (int k = 0; k < NUM_DENSE; k++) {
            const int u = r * NUM_DENSE + k;
            __local float (*src)[DK] = k == 0 ? a : cur;
            __global const float *g12 = w12 + (idx_t)u * 2 * FA * DK, *bb = b12 + u * 2 * FA;
            /* hidden unit f: silu(gluw1) * gluw2, by row group and input split */
            for (int e = lid; e < FA * ML_RG * ML_KS; e += ML_WG) {
                const int f = e % FA, q0 = (e / FA) % ML_RG * ML_RPG, ks = e / (FA * ML_RG);
                float hg[ML_RPG], hu[ML_RPG];
                ml_gates(src, g12, f, ks * ML_KL, q0, hg, hu);
                for (int q = 0; q < ML_RPG; q++) {
                    if (q0 + q < ML_ROWS) {
#if ML_KS > 1
                        __local float *p = scratch + (ks * ML_ROWS + q0 + q) * 2 * FA;
                        p[f] = hg[q];
                        p[FA + f] = hu[q];
#else
                        hid[q0 + q][f] = silu(hg[q] + bb[f]) * (hu[q] + bb[FA + f]);
#endif
                    }
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#if ML_KS > 1
            for (int e = lid; e < ML_ROWS * FA; e += ML_WG) {
                const int q = e / FA, f = e % FA;
                float g = bb[f], v = bb[FA + f];
                for (int ks = 0; ks < ML_KS; ks++) {
                    g += scratch[(ks * ML_ROWS + q) * 2 * FA + f];
                    v += scratch[(ks * ML_ROWS + q) * 2 * FA + FA + f];
                }
                hid[q][f] = silu(g) * v;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#endif
            /* gluw3: output j of every row over slice s of the hidden units */
            __global const float *g3 = w3 + (idx_t)u * DK * FA;
            __local float (*dst)[DK] = k == NUM_DENSE - 1 ? a : cur;
            for (int e = lid; e < DK * ML_S; e += ML_WG) {
                const int j = e % DK, s = e / DK, f0 = s * ML_FL;
                float o[ML_ROWS];
                for (int q = 0; q < ML_ROWS; q++)
                    o[q] = 0.0f;
#pragma unroll
                for (int t = 0; t < ML_FL; t += 4) {
                    const int f = f0 + t;
                    if (f < FA) {
                        const float4 w = (float4)(g3[f * DK + j], f + 1 < FA ? g3[(f + 1) * DK + j] : 0.0f,
                                                  f + 2 < FA ? g3[(f + 2) * DK + j] : 0.0f,
                                                  f + 3 < FA ? g3[(f + 3) * DK + j] : 0.0f);
                        for (int q = 0; q < ML_ROWS; q++)
                            o[q] += dot(w, vload4(0, &hid[q][f]));
                    }
                }
#if ML_S > 1
                for (int q = 0; q < ML_ROWS; q++)
                    scratch[(s * ML_ROWS + q) * DK + j] = o[q];
#else
                for (int q = 0; q < ML_ROWS; q++)
                    dst[q][j] = (k == NUM_DENSE - 1 ? dst[q][j] : 0.0f) + o[q] + b3[u * DK + j];
#endif
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#if ML_S > 1
            for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
                const int q = e / DK, j = e % DK;
                float o = b3[u * DK + j];
                for (int s = 0; s < ML_S; s++)
                    o += scratch[(s * ML_ROWS + q) * DK + j];
                dst[q][j] = (k == NUM_DENSE - 1 ? dst[q][j] : 0.0f) + o;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#endif
        }
        ln_rows(a, lna_w + r * DK, lna_b + r * DK, ps, pq);
    }
    for (int e = lid; e < ML_ROWS * DK; e += ML_WG) {
        const int r = e / DK, i = e % DK;
        if (row0 + r < n_rows)
            a_out[(idx_t)(row0 + r) * DK + i] = a[r][i];
    }
}
#endif

/* A_LM and A_P from A. plga holds Wlst, blst, pwlst, alst, balst, each
 * [HEADS, DK, DK]. Global size HEADS*DK*DK. */
#define PLGA_SIZE (HEADS * DK * DK)
#if WG_FORMS
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
#endif

#if !WG_FORMS
/* The metric learner on CPU devices: a work-group is one work-item taking
 * LC_ROWS rows of A through the whole learner with no barrier, its rows and
 * hidden units in private memory, the products as 16-wide vectors along the
 * contiguous dimension of the transposed weights (gluw1/gluw2 columns, gluw3
 * outputs) with the rows' values broadcast, so each weight vector read
 * serves LC_ROWS rows. A vector may run past the last column of a row into
 * the next one or into the 16 floats of padding after each weight buffer
 * (src/model/model.c); those lanes are dropped. */
/* LC_ROWS comes from the host (src/model/model.h, PLDR_LEARNER_CPU_ROWS) */
#define LC_FP ((FA + 15) / 16 * 16)
#define LC_DP ((DK + 15) / 16 * 16)

inline void lc_layernorm(float *x, __global const float *w, __global const float *b)
{
    float mu = 0.0f;
    for (int i = 0; i < DK; i++)
        mu += x[i];
    mu /= DK;
    float var = 0.0f;
    for (int i = 0; i < DK; i++)
        var += (x[i] - mu) * (x[i] - mu);
    const float rs = rsqrt(var / DK + LN_EPS);
    for (int i = 0; i < DK; i++)
        x[i] = (x[i] - mu) * rs * w[i] + b[i];
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void metric_learner_cpu(__global const float *a0, __global float *a_out, const int n_rows,
                        __global const float *ln0_w, __global const float *ln0_b,
                        __global const float *w12, __global const float *b12,
                        __global const float *w3, __global const float *b3,
                        __global const float *lna_w, __global const float *lna_b)
{
    float a[LC_ROWS][LC_DP], cur[LC_ROWS][LC_DP], hid[LC_ROWS][LC_FP];
    const int row0 = get_group_id(0) * LC_ROWS;
    for (int r = 0; r < LC_ROWS; r++) {
        for (int i = 0; i < DK; i++)
            a[r][i] = row0 + r < n_rows ? a0[(idx_t)(row0 + r) * DK + i] : 0.0f;
        lc_layernorm(a[r], ln0_w, ln0_b);
    }
    for (int res = 0; res < NUM_RES; res++) {
        for (int k = 0; k < NUM_DENSE; k++) {
            const int u = res * NUM_DENSE + k;
            __global const float *g12 = w12 + (idx_t)u * 2 * FA * DK, *bb = b12 + u * 2 * FA;
            /* hidden units f0 .. f0+15: silu(gluw1) * gluw2 */
            for (int f0 = 0; f0 < FA; f0 += 16) {
                float16 hg[LC_ROWS], hu[LC_ROWS];
#pragma unroll
                for (int r = 0; r < LC_ROWS; r++)
                    hg[r] = hu[r] = 0.0f;
                for (int i = 0; i < DK; i++) {
                    const float16 wg = vload16(0, g12 + i * 2 * FA + f0);
                    const float16 wu = vload16(0, g12 + i * 2 * FA + FA + f0);
#pragma unroll
                    for (int r = 0; r < LC_ROWS; r++) {
                        const float x = k == 0 ? a[r][i] : cur[r][i];
                        hg[r] = fma((float16)x, wg, hg[r]);
                        hu[r] = fma((float16)x, wu, hu[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < LC_ROWS; r++) {
                    float g[16], v[16];
                    vstore16(hg[r], 0, g);
                    vstore16(hu[r], 0, v);
                    for (int t = 0; t < 16 && f0 + t < FA; t++)
                        hid[r][f0 + t] = silu(g[t] + bb[f0 + t]) * (v[t] + bb[FA + f0 + t]);
                }
            }
            /* gluw3: outputs j0 .. j0+15 */
            __global const float *g3 = w3 + (idx_t)u * DK * FA;
            for (int j0 = 0; j0 < DK; j0 += 16) {
                float16 o[LC_ROWS];
#pragma unroll
                for (int r = 0; r < LC_ROWS; r++)
                    o[r] = 0.0f;
                for (int f = 0; f < FA; f++) {
                    const float16 w = vload16(0, g3 + f * DK + j0);
#pragma unroll
                    for (int r = 0; r < LC_ROWS; r++)
                        o[r] = fma((float16)hid[r][f], w, o[r]);
                }
#pragma unroll
                for (int r = 0; r < LC_ROWS; r++) {
                    float y[16];
                    vstore16(o[r], 0, y);
                    for (int t = 0; t < 16 && j0 + t < DK; t++) {
                        const float val = y[t] + b3[u * DK + j0 + t];
                        if (k == NUM_DENSE - 1)
                            a[r][j0 + t] += val;
                        else
                            cur[r][j0 + t] = val;
                    }
                }
            }
        }
        for (int r = 0; r < LC_ROWS; r++)
            lc_layernorm(a[r], lna_w + res * DK, lna_b + res * DK);
    }
    for (int r = 0; r < LC_ROWS; r++)
        if (row0 + r < n_rows)
            for (int i = 0; i < DK; i++)
                a_out[(idx_t)(row0 + r) * DK + i] = a[r][i];
}

/* plga_potential and plga_energy on CPU devices: a work-item per row i of a
 * head, the row's DK outputs as 16-wide vectors where DK allows (the power
 * and the exponentials vectorised too). Global size HEADS*DK. */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void plga_potential_cpu(__global const float *a, __global const float *plga, __global float *a_lm,
                        __global float *a_p)
{
    const int gid = get_global_id(0);
    const int h = gid / DK;
    const idx_t row = (idx_t)gid * DK;
    __global const float *w = plga + row, *ah = a + (idx_t)h * DK * DK;
#if DK % 16 == 0
#pragma unroll
    for (int j = 0; j < DK; j += 16) {
        float16 z = vload16(0, plga + PLGA_SIZE + row + j);
        for (int k = 0; k < DK; k++)
            z = mad((float16)w[k], vload16(0, ah + k * DK + j), z);
        const float16 lm = z * (z / (1.0f + exp(-z))) + 1e-9f;
        vstore16(lm, 0, a_lm + row + j);
        vstore16(pow(lm, vload16(0, plga + 2 * PLGA_SIZE + row + j)), 0, a_p + row + j);
    }
#else
#pragma unroll
    for (int j = 0; j < DK; j++) {
        float z = plga[PLGA_SIZE + row + j];
        for (int k = 0; k < DK; k++)
            z += w[k] * ah[k * DK + j];
        const float lm = z * silu(z) + 1e-9f;
        a_lm[row + j] = lm;
        a_p[row + j] = pow(lm, plga[2 * PLGA_SIZE + row + j]);
    }
#endif
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void plga_energy_cpu(__global const float *a_p, __global const float *plga, __global float *g,
                     __global int *flags, const int flag_index)
{
    const int gid = get_global_id(0);
    const int h = gid / DK;
    const idx_t row = (idx_t)gid * DK;
    __global const float *al = plga + 3 * PLGA_SIZE + row, *ph = a_p + (idx_t)h * DK * DK;
    int finite = 1;
#if DK % 16 == 0
#pragma unroll
    for (int j = 0; j < DK; j += 16) {
        float16 s = vload16(0, plga + 4 * PLGA_SIZE + row + j);
        for (int k = 0; k < DK; k++)
            s = mad((float16)al[k], vload16(0, ph + k * DK + j), s);
        vstore16(s, 0, g + row + j);
        finite &= all(isfinite(s));
    }
#else
#pragma unroll
    for (int j = 0; j < DK; j++) {
        float s = plga[4 * PLGA_SIZE + row + j];
        for (int k = 0; k < DK; k++)
            s += al[k] * ph[k * DK + j];
        g[row + j] = s;
        finite &= isfinite(s);
    }
#endif
    if (!finite)
        atomic_or(flags + flag_index, FLAG_NONFINITE);
}
#endif
