/* Matrix-vector products of the decode path (one token): memory-bound, so
 * each weight is read once, with neighbouring work-items reading neighbouring
 * addresses. A work-group computes GEMV_ROWS outputs with LANES work-items
 * each (on a CPU, LANES = 1: a work-item walks a whole row), then reduces in
 * local memory.
 *
 * Three variants, by what happens to the input row x before the product:
 *   gemv          x as it is;
 *   gemv_ln       LN(x): the LayerNorm of the previous step is done here, on
 *                 load, instead of in a launch of its own; work-group 0 stores
 *                 the normalised row in x_norm (the residual of a later step);
 *   gemv_attn     x is combined from the partial results of the split decode
 *                 attention (kernels/attention.cl).
 * and by what happens to the output:
 *   y[r] = W[r] . x + b[r] (+ residual[r])
 *   glu:  y[r] = silu(W[r] . x + b[r]) * (W[r+n_out] . x + b[r+n_out])
 * xs is local memory of k_dim floats. */
#define LANES (GEMV_WG / GEMV_ROWS)

/* The product of the rows of this work-group with xs, and the output. */
inline void gemv_rows(__global const WT *w, __global const float *bias, const int k_dim, const int n_out,
                      __local const float *xs, __global const float *residual, const int has_residual,
                      const int glu, __global float *y, __local float *red, __local float *red2)
{
    const int lid = get_local_id(0);
    const int row = get_group_id(0) * GEMV_ROWS + lid / LANES;
    const int lane = lid % LANES;
    float acc = 0.0f, acc2 = 0.0f;
    if (row < n_out) {
        __global const WT *wr = w + (long)row * k_dim;
        __global const WT *wr2 = w + (long)(row + n_out) * k_dim;
        const int k4 = k_dim & ~3;
        int k = lane * 4;
        if (glu) {
#pragma unroll 4
            for (; k < k4; k += LANES * 4) {
                const float4 xv = vload4(0, xs + k);
                acc += dot(LOAD_W4(wr, k), xv);
                acc2 += dot(LOAD_W4(wr2, k), xv);
            }
        } else {
            /* two independent chains keep more loads in flight */
            float accb = 0.0f;
#pragma unroll 4
            for (; k + LANES * 4 < k4; k += LANES * 8) {
                acc += dot(LOAD_W4(wr, k), vload4(0, xs + k));
                accb += dot(LOAD_W4(wr, k + LANES * 4), vload4(0, xs + k + LANES * 4));
            }
            for (; k < k4; k += LANES * 4)
                acc += dot(LOAD_W4(wr, k), vload4(0, xs + k));
            acc += accb;
        }
        for (k = k4 + lane; k < k_dim; k += LANES) {
            acc += LOAD_W(wr, k) * xs[k];
            if (glu)
                acc2 += LOAD_W(wr2, k) * xs[k];
        }
    }
#if GEMV_ROWS < GEMV_WG
    red[lid] = acc;
    red2[lid] = acc2;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = LANES / 2; s > 0; s >>= 1) {
        if (lane < s) {
            red[lid] += red[lid + s];
            red2[lid] += red2[lid + s];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    acc = red[lid];
    acc2 = red2[lid];
#endif
    if (lane == 0 && row < n_out) {
        const float v = acc + bias[row];
        if (glu)
            y[row] = silu(v) * (acc2 + bias[row + n_out]);
        else
            y[row] = has_residual ? v + residual[row] : v;
    }
}

__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv(__global const WT *w, __global const float *bias, const int k_dim, const int n_out,
          __global const float *x, __global const float *residual, const int has_residual, const int glu,
          __global float *y, __local float *xs)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    for (int i = get_local_id(0); i < k_dim; i += GEMV_WG)
        xs[i] = x[i];
    barrier(CLK_LOCAL_MEM_FENCE);
    gemv_rows(w, bias, k_dim, n_out, xs, residual, has_residual, glu, y, red, red2);
}

__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_ln(__global const WT *w, __global const float *bias, const int k_dim, const int n_out,
             __global const float *x, __global const float *ln_w, __global const float *ln_b,
             __global float *x_norm, __global const float *residual, const int has_residual, const int glu,
             __global float *y, __local float *xs, __global int *flags, const int flag_index)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    const int lid = get_local_id(0);
    for (int i = lid; i < k_dim; i += GEMV_WG)
        xs[i] = x[i];
    barrier(CLK_LOCAL_MEM_FENCE);
    const float stat = ln_local(xs, k_dim, ln_w, ln_b, red);
    if (get_group_id(0) == 0) {
        for (int i = lid; i < k_dim; i += GEMV_WG)
            x_norm[i] = xs[i];
        if (lid == 0)
            flag_if_nonfinite(stat, flags, flag_index);
    }
    gemv_rows(w, bias, k_dim, n_out, xs, residual, has_residual, glu, y, red, red2);
}

/* The attention output projection: x[h*DK+j] combines the n_split partial
 * results (max m, sum l, acc[DK]) of head h as sum_s e^(m_s-M) acc_s[j] /
 * sum_s e^(m_s-M) l_s, M = max_s m_s: the last step of the split softmax. */
__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_attn(__global const WT *w, __global const float *bias, __global const float *part,
               const int n_split, __global const float *residual, __global float *y, __local float *xs)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    for (int i = get_local_id(0); i < DMODEL; i += GEMV_WG) {
        const int h = i / DK, j = i % DK;
        __global const float *ph = part + (long)h * n_split * (DK + 2);
        float mx = -INFINITY;
        for (int s = 0; s < n_split; s++)
            mx = fmax(mx, ph[s * (DK + 2)]);
        float num = 0.0f, den = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float e = exp(ph[s * (DK + 2)] - mx);
            den += e * ph[s * (DK + 2) + 1];
            num += e * ph[s * (DK + 2) + 2 + j];
        }
        xs[i] = num / den;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    gemv_rows(w, bias, DMODEL, DMODEL, xs, residual, 1, 0, y, red, red2);
}
