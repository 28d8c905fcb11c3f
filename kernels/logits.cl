/* The final layer's bias on GEMM output rows, with the non-finite check of the
 * logits. Global size: number of elements. */
__kernel void add_bias_rows(__global float *y, __global const float *bias, const int n_cols,
                            __global int *flags, const int flag_index)
{
    const int gid = get_global_id(0);
    const float v = y[gid] + bias[gid % n_cols];
    y[gid] = v;
    flag_if_nonfinite(v, flags, flag_index);
}

/* One work-group's argmax of row[0 .. n): the index of the largest value (the
 * lowest among equals) written by work-item 0 to *out; a non-finite value
 * raises FLAG_NONFINITE in flags[flag_index]. best_v and best_i hold ROW_WG. */
inline void row_argmax(__global const float *row, const int n, __global int *flags, const int flag_index,
                       __local float *best_v, __local int *best_i, __global int *out)
{
    const int lid = get_local_id(0);
    float bv = -INFINITY;
    int bi = n;
    int bad = 0;
    for (int i = lid; i < n; i += ROW_WG) {
        const float v = row[i];
        bad |= !isfinite(v);
        if (v > bv || (v == bv && i < bi)) {
            bv = v;
            bi = i;
        }
    }
    if (bad)
        atomic_or(flags + flag_index, FLAG_NONFINITE);
    best_v[lid] = bv;
    best_i[lid] = bi;
    wg_argmax(best_v, best_i);
    if (lid == 0)
        *out = best_i[0] < n ? best_i[0] : 0;
}

/* Greedy decoding on the device: the index of the largest logit (the lowest
 * index among equals), one work-group of ROW_WG, written to flags[out_index]
 * so that one read returns it with the non-finite flags. */
__kernel __attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
void argmax(__global const float *logits, const int n, __global int *flags, const int flag_index,
            const int out_index)
{
    __local float best_v[ROW_WG];
    __local int best_i[ROW_WG];
    row_argmax(logits, n, flags, flag_index, best_v, best_i, flags + out_index);
}
