/* Matrix-vector products of the decode path (one token): memory-bound, so
 * each weight is read once, with neighbouring work-items reading neighbouring
 * addresses. A work-group computes GEMV_ROWS outputs with LANES work-items
 * each, then reduces in local memory.
 *
 *   y[r] = W[r] . xin + b[r] (+ residual[r])                 glu == 0
 *   y[r] = silu(W[r] . xin + b[r]) * (W[r+n_out] . xin + b[r+n_out])   glu == 1
 *
 * xin is x, or LN(x) when ln_in is set: the LayerNorm of the previous step is
 * done here, on load, instead of in a launch of its own; work-group 0 stores
 * the normalised row in x_norm (the residual of a later step). xs is local
 * memory of k_dim floats. */
#define LANES (GEMV_WG / GEMV_ROWS)

__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv(__global const WT *w, __global const float *bias, const int k_dim, const int n_out,
          __global const float *x, const int ln_in, __global const float *ln_w,
          __global const float *ln_b, __global float *x_norm,
          __global const float *residual, const int has_residual, const int glu,
          __global float *y, __local float *xs, __global int *flags, const int flag_index)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    const int lid = get_local_id(0);
    for (int i = lid; i < k_dim; i += GEMV_WG)
        xs[i] = x[i];
    barrier(CLK_LOCAL_MEM_FENCE);
    const float stat = ln_local_if(xs, k_dim, ln_w, ln_b, red, ln_in);
    if (ln_in && get_group_id(0) == 0) {
        for (int i = lid; i < k_dim; i += GEMV_WG)
            x_norm[i] = xs[i];
        if (lid == 0)
            flag_if_nonfinite(stat, flags, flag_index);
    }
    const int row = get_group_id(0) * GEMV_ROWS + lid / LANES;
    const int lane = lid % LANES;
    float acc = 0.0f, acc2 = 0.0f;
    if (row < n_out) {
        __global const WT *wr = w + (long)row * k_dim;
        __global const WT *wr2 = w + (long)(row + n_out) * k_dim;
        const int k4 = k_dim & ~3;
        for (int k = lane * 4; k < k4; k += LANES * 4) {
            const float4 xv = vload4(0, xs + k);
            acc += dot(LOAD_W4(wr, k), xv);
            if (glu)
                acc2 += dot(LOAD_W4(wr2, k), xv);
        }
        for (int k = k4 + lane; k < k_dim; k += LANES) {
            acc += LOAD_W(wr, k) * xs[k];
            if (glu)
                acc2 += LOAD_W(wr2, k) * xs[k];
        }
    }
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
    if (lane == 0 && row < n_out) {
        const float v = red[lid] + bias[row];
        if (glu)
            y[row] = silu(v) * (red2[lid] + bias[row + n_out]);
        else
            y[row] = has_residual ? v + residual[row] : v;
    }
}
