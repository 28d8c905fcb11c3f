/* Matrix-vector products of the decode path (one token): memory-bound, so
 * each weight is read once, as aligned vectors (rows are padded to k_pitch, a
 * multiple of 4 elements, with zeros), neighbouring work-items reading
 * neighbouring addresses. A work-group computes GEMV_ROWS outputs with LANES
 * work-items each (on a CPU, LANES = 1: a work-item walks a whole row), then
 * reduces in local memory.
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
 * gemv_ln can also finish greedy decoding: the argmax of y over all rows (see
 * argmax_merge). xs is local memory of k_pitch floats. */
#define LANES (GEMV_WG / GEMV_ROWS)

#if WEIGHT_HALF
#define LOAD_ROW4(row, i) vload_half4((i), (row))
#else
#define LOAD_ROW4(row, i) (((__global const float4 *)(row))[i])
#endif

/* x into local memory, zero beyond k_dim. */
inline void load_x(__local float *xs, __global const float *x, const int k_dim, const int k_pitch)
{
    for (int i = get_local_id(0); i < k_pitch; i += GEMV_WG)
        xs[i] = i < k_dim ? x[i] : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* LayerNorm of the n values in xs, in place; work-group 0 also stores the
 * normalised row in x_norm and raises flags[flag_index] if it is not finite. */
inline void ln_keep(__local float *xs, const int n, __global const float *ln_w, __global const float *ln_b,
                    __global float *x_norm, __global int *flags, const int flag_index, __local float2 *scratch)
{
    const float stat = ln_local(xs, n, ln_w, ln_b, scratch);
    if (get_group_id(0) == 0) {
        for (int i = get_local_id(0); i < n; i += GEMV_WG)
            x_norm[i] = xs[i];
        if (get_local_id(0) == 0)
            flag_if_nonfinite(stat, flags, flag_index);
    }
}

/* The weights do not depend on x: each work-item starts loading the first
 * GEMV_PF vectors of its rows into registers before x is ready, so that the
 * memory latency overlaps the loading (and normalising) of x. */
inline void prefetch_w(__global const WT *wr, __global const WT *wr2, const int lane, const int kv, const int live,
                       const int glu, float4 *wa, float4 *wb)
{
#pragma unroll
    for (int v = 0; v < GEMV_PF; v++) {
        const int k = lane + v * LANES;
        wa[v] = live && k < kv ? LOAD_ROW4(wr, k) : (float4)0.0f;
        wb[v] = live && glu && k < kv ? LOAD_ROW4(wr2, k) : (float4)0.0f;
    }
}

/* The rest of the product of this work-group's rows with xs, the reduction
 * over lanes, and the output. Returns W[row] . x + b[row] (before the
 * residual) in lane 0 of each row, -INFINITY elsewhere. */
inline float gemv_finish(__global const WT *wr, __global const WT *wr2, const float4 *wa, const float4 *wb,
                         __global const float *bias, const int kv, const int n_out, __local const float *xs,
                         __global const float *residual, const int has_residual, const int glu,
                         __global float *y, __local float *red, __local float *red2)
{
    const int lid = get_local_id(0);
    const int row = get_group_id(0) * GEMV_ROWS + lid / LANES;
    const int lane = lid % LANES;
    float acc = 0.0f, acc2 = 0.0f;
#pragma unroll
    for (int v = 0; v < GEMV_PF; v++) {
        const int k = lane + v * LANES;
        const float4 xv = k < kv ? vload4(k, xs) : (float4)0.0f;
        acc += dot(wa[v], xv);
        acc2 += dot(wb[v], xv);
    }
    if (row < n_out) {
        if (glu) {
#pragma unroll 4
            for (int k = lane + GEMV_PF * LANES; k < kv; k += LANES) {
                const float4 xv = vload4(k, xs);
                acc += dot(LOAD_ROW4(wr, k), xv);
                acc2 += dot(LOAD_ROW4(wr2, k), xv);
            }
        } else {
#pragma unroll 8
            for (int k = lane + GEMV_PF * LANES; k < kv; k += LANES)
                acc += dot(LOAD_ROW4(wr, k), vload4(k, xs));
        }
    }
#if GEMV_ROWS < GEMV_WG
    /* the lanes of a row: groups of 8 summed by 8 work-items, then by one
     * (two barriers instead of log2(LANES)) */
    red[lid] = acc;
    red2[lid] = acc2;
    barrier(CLK_LOCAL_MEM_FENCE);
#define RED_STEP (LANES >= 8 ? LANES / 8 : 1)
    if (lane % RED_STEP == 0) {
        float a = 0.0f, b = 0.0f;
        for (int i = 0; i < RED_STEP; i++) {
            a += red[lid + i];
            b += red2[lid + i];
        }
        red[lid] = a;
        red2[lid] = b;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane == 0) {
        acc = 0.0f;
        acc2 = 0.0f;
        for (int i = 0; i < LANES; i += RED_STEP) {
            acc += red[lid + i];
            acc2 += red2[lid + i];
        }
    }
#endif
    float v = -INFINITY;
    if (lane == 0 && row < n_out) {
        v = acc + bias[row];
        if (glu)
            y[row] = silu(v) * (acc2 + bias[row + n_out]);
        else
            y[row] = has_residual ? v + residual[row] : v;
    }
    return v;
}

/* This work-item's rows: the pointers, and whether the row exists. */
#define GEMV_SETUP(w, k_pitch, n_out)                                                              \
    const int row = get_group_id(0) * GEMV_ROWS + get_local_id(0) / LANES;                         \
    const int lane = get_local_id(0) % LANES;                                                      \
    const int live = row < (n_out);                                                                \
    __global const WT *wr = (w) + (long)(live ? row : 0) * (k_pitch);                              \
    __global const WT *wr2 = (w) + (long)(live ? row + (n_out) : 0) * (k_pitch);                   \
    float4 wa[GEMV_PF], wb[GEMV_PF]

/* Greedy decoding fused into the final GEMV: every work-group writes the best
 * (value, index) of its rows to part, and the last work-group to finish
 * (counted with an atomic) reduces them and writes the index to
 * flags[out_index]; the lowest index wins among equal values. */
inline void argmax_merge(const float v, const int n_out, __global float *part, __global int *flags,
                         const int out_index, const int counter_index, const int flag_index,
                         __local float *red, __local int *red_i, __local int *last)
{
    const int lid = get_local_id(0);
    const int row = get_group_id(0) * GEMV_ROWS + lid / LANES;
    const int lane = lid % LANES;
    red[lid] = lane == 0 && row < n_out ? v : -INFINITY;
    red_i[lid] = lane == 0 && row < n_out ? row : n_out;
    if (lane == 0 && row < n_out && !isfinite(v))
        atomic_or(flags + flag_index, FLAG_NONFINITE);
    wg_argmax(red, red_i);
    if (lid == 0) {
        part[2 * get_group_id(0)] = red[0];
        part[2 * get_group_id(0) + 1] = as_float(red_i[0]);
        mem_fence(CLK_GLOBAL_MEM_FENCE);
        *last = atomic_inc(flags + counter_index) == (int)get_num_groups(0) - 1;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (!*last)
        return;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    float bv = -INFINITY;
    int bi = n_out;
    for (int g = lid; g < (int)get_num_groups(0); g += GEMV_WG) {
        const float pv = ((volatile __global float *)part)[2 * g];
        const int pi = as_int(((volatile __global float *)part)[2 * g + 1]);
        if (pv > bv || (pv == bv && pi < bi)) {
            bv = pv;
            bi = pi;
        }
    }
    red[lid] = bv;
    red_i[lid] = bi;
    wg_argmax(red, red_i);
    if (lid == 0) {
        flags[out_index] = red_i[0] < n_out ? red_i[0] : 0;
        flags[counter_index] = 0;
    }
}

__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv(__global const WT *w, __global const float *bias, const int k_dim, const int k_pitch, const int n_out,
          __global const float *x, __global const float *residual, const int has_residual, const int glu,
          __global float *y, __local float *xs)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    GEMV_SETUP(w, k_pitch, n_out);
    prefetch_w(wr, wr2, lane, k_pitch / 4, live, glu, wa, wb);
    load_x(xs, x, k_dim, k_pitch);
    gemv_finish(wr, wr2, wa, wb, bias, k_pitch / 4, n_out, xs, residual, has_residual, glu, y, red, red2);
}

__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_ln(__global const WT *w, __global const float *bias, const int k_dim, const int k_pitch,
             const int n_out, __global const float *x, __global const float *ln_w, __global const float *ln_b,
             __global float *x_norm, __global const float *residual, const int has_residual, const int glu,
             __global float *y, __local float *xs, __global int *flags, const int flag_index,
             const int argmax, __global float *argmax_part, const int out_index, const int counter_index,
             const int logits_flag)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    __local float2 scratch[GEMV_WG];
    __local int red_i[GEMV_WG], last;
    GEMV_SETUP(w, k_pitch, n_out);
    prefetch_w(wr, wr2, lane, k_pitch / 4, live, glu, wa, wb);
    load_x(xs, x, k_dim, k_pitch);
    ln_keep(xs, k_dim, ln_w, ln_b, x_norm, flags, flag_index, scratch);
    const float v = gemv_finish(wr, wr2, wa, wb, bias, k_pitch / 4, n_out, xs, residual, has_residual, glu, y,
                                red, red2);
    if (argmax)
        argmax_merge(v, n_out, argmax_part, flags, out_index, counter_index, logits_flag, red, red_i, &last);
}

/* The attention output projection: x[h*DK+j] combines the n_split partial
 * results (max m, sum l, acc[DK]) of head h as sum_s e^(m_s-M) acc_s[j] /
 * sum_s e^(m_s-M) l_s, M = max_s m_s: the last step of the split softmax. */
__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_attn(__global const WT *w, __global const float *bias, const int k_pitch, __global const float *part,
               const int n_split, __global const float *residual, __global float *y, __local float *xs)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    GEMV_SETUP(w, k_pitch, DMODEL);
    prefetch_w(wr, wr2, lane, k_pitch / 4, live, 0, wa, wb);
    for (int i = get_local_id(0); i < k_pitch; i += GEMV_WG) {
        float val = 0.0f;
        if (i < DMODEL) {
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
            val = num / den;
        }
        xs[i] = val;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    gemv_finish(wr, wr2, wa, wb, bias, k_pitch / 4, DMODEL, xs, residual, 1, 0, y, red, red2);
}

/* The first projection of a decode step with the token embedding fused in:
 * x = LN_d(Emb[id] * scale) (decoder.embedding, decoder.layernorm1) is built
 * in local memory, work-group 0 stores it in x_norm (the residual of the
 * attention output), and y = W . x + b. One launch instead of two. */
__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_embed(__global const WT *w, __global const float *bias, const int k_pitch, const int n_out,
                __global const WT *emb, __global const int *ids, const int ids_offset, const float scale,
                __global const float *ln_w, __global const float *ln_b, __global float *x_norm,
                __global float *y, __local float *xs, __global int *flags, const int flag_index)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    __local float2 scratch[GEMV_WG];
    const int lid = get_local_id(0);
    GEMV_SETUP(w, k_pitch, n_out);
    prefetch_w(wr, wr2, lane, k_pitch / 4, live, 0, wa, wb);
    const long base = (long)ids[ids_offset] * DMODEL;
    for (int i = lid; i < k_pitch; i += GEMV_WG)
        xs[i] = i < DMODEL ? LOAD_W(emb, base + i) * scale : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
    ln_keep(xs, DMODEL, ln_w, ln_b, x_norm, flags, flag_index, scratch);
    gemv_finish(wr, wr2, wa, wb, bias, k_pitch / 4, n_out, xs, bias, 0, 0, y, red, red2);
}
