/* Post-norm residual: out = LN_n(y + bias + residual), one work-group per row
 * (mha1.dense -> layer.layernorm1, ffn.gluw3 -> layer.layernorm2).
 * y and out may alias. */
__kernel __attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
void bias_residual_layernorm(__global const float *y, __global const float *bias,
                             __global const float *residual, __global const float *ln_w,
                             __global const float *ln_b, __global float *out,
                             __global int *flags, const int flag_index)
{
    __local float row[DMODEL];
    __local float2 scratch[ROW_WG];
    const int t = get_global_id(0) / ROW_WG, lid = get_local_id(0); /* a global work offset skips rows */
    const idx_t base = (idx_t)t * DMODEL;
    for (int i = lid; i < DMODEL; i += ROW_WG)
        row[i] = y[base + i] + bias[i] + residual[base + i];
    barrier(CLK_LOCAL_MEM_FENCE);
    const float stat = ln_local(row, DMODEL, ln_w, ln_b, scratch);
    for (int i = lid; i < DMODEL; i += ROW_WG)
        out[base + i] = row[i];
    if (lid == 0)
        flag_if_nonfinite(stat, flags, flag_index);
}

/* Widens (dequantizes) a weight matrix of n elements to float32 for the
 * CLBlast GEMMs of the prefill. */
__kernel void weight_to_float(__global const WT *src, __global const ST *ws, __global float *dst, const uint n)
{
    for (uint i = get_global_id(0); i < n; i += get_global_size(0))
        dst[i] = LOAD_W(src, ws, i);
}
