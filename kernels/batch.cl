/* Decode of B sequences at once (one new token each): the rows of a step
 * belong to different sequences, each with its own position, its own region
 * of the K/V caches and its own G-cache. seq[3 * r .. 3 * r + 2] describes row
 * r: its sequence, its position, and the first cache row of its sequence
 * (sequence * rows per sequence). Nothing here hands data from one
 * work-group to another: every launch's outputs are read by the next launch.
 * The products of a step are batched GEMVs (batch_gemv below, or the GEMMs of
 * src/engine/gemm.c): each weight is read once for all B rows. */

/* One float4 of row `row` (its scales at srow: kernels/common.cl) of a
 * weight matrix, at vector index i: the only place the batched products read
 * weights. */
inline float4 batch_w4(__global const WT *row, __global const ST *srow, const int i)
{
    return LOAD_ROW4(row, srow, i);
}

/* Element k of the same row (the tail of a row whose length is not a
 * multiple of 4). */
inline float batch_w1(__global const WT *row, __global const ST *srow, const int k)
{
    return LOAD_W(row, srow, k);
}

/* C[M, N] = A[M, K] . W[N, K]^T for few rows M (the decode of M sequences):
 * a work-group computes GEMV_ROWS rows of W with LANES work-items each; each
 * work-item holds BATCH_TILE accumulators, one per row of A, so that the
 * weights it loads serve every row of the tile from registers. Rows of A are
 * read from global memory (a few KiB, cached); the K % 4 last columns of a
 * row one at a time. Same arguments as gemm_cpu. */
#define BATCH_TILE 8
__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void batch_gemv(__global const float *a, const int a_off, const int lda, __global const WT *w, __global const ST *ws,
                const int ldw, __global float *c, const int c_off, const int ldc, const int M, const int N, const int K)
{
    __local float red[GEMV_WG];
    const int lid = get_local_id(0);
    const int n = get_group_id(0) * GEMV_ROWS + lid / LANES, lane = lid % LANES;
    const int live = n < N;
    const idx_t wo = (idx_t)(live ? n : 0) * ldw;
    __global const WT *wr = WPTR(w, wo);
    __global const ST *sr = SPTR(ws, wo);
    const int kv = K / 4;
    for (int m0 = 0; m0 < M; m0 += BATCH_TILE) {
        float acc[BATCH_TILE];
#pragma unroll
        for (int i = 0; i < BATCH_TILE; i++)
            acc[i] = 0.0f;
        if (live)
            for (int k = lane; k < kv; k += LANES) {
                const float4 wv = batch_w4(wr, sr, k);
#pragma unroll
                for (int i = 0; i < BATCH_TILE; i++)
                    if (m0 + i < M)
                        acc[i] += dot(wv, vload4(k, a + a_off + (idx_t)(m0 + i) * lda));
            }
        if (live)
            for (int k = 4 * kv + lane; k < K; k += LANES) {
                const float wk = batch_w1(wr, sr, k);
#pragma unroll
                for (int i = 0; i < BATCH_TILE; i++)
                    if (m0 + i < M)
                        acc[i] += wk * a[a_off + (idx_t)(m0 + i) * lda + k];
            }
        for (int i = 0; i < BATCH_TILE && m0 + i < M; i++) {
#if LANES > 1
            red[lid] = acc[i];
            barrier(CLK_LOCAL_MEM_FENCE);
            if (lane == 0) {
                float s = 0.0f;
                for (int j = 0; j < LANES; j++)
                    s += red[lid + j];
                acc[i] = s;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
#endif
            if (lane == 0 && live)
                c[c_off + (idx_t)(m0 + i) * ldc + n] = acc[i];
        }
    }
}

/* RoPE of q and k with each row's position, the Q/K/V bias, and the write of
 * k and v into the row's sequence region of the caches. Global size:
 * B * HEADS * DK/2. */
__kernel void batch_qkv_rope(__global const float *qkv, __global const float *bias, __global const float2 *rope,
                             __global float *q_out, __global float *k_cache, __global float *v_cache,
                             __global const int *seq)
{
    const int gid = get_global_id(0);
    const int i = gid % (DK / 2);
    const int h = (gid / (DK / 2)) % HEADS;
    const int t = gid / (DK / 2 * HEADS);
    const int pos = seq[3 * t + 1], base = seq[3 * t + 2];
    const int2 p = rope_pair(i);
    const float2 cs = rope[(idx_t)pos * (DK / 2) + i];
    rope_qkv_pair(qkv, bias, cs, t, h, p, q_out, k_cache, v_cache, (idx_t)(base + pos) * DMODEL + h * DK);
}

/* Attention of row t (one work-group per (row, head)): q @ G_LM of the row's
 * sequence (g + sequence * g_stride floats), scaled, then the keys 0 .. pos
 * of its sequence's cache region. */
__kernel __attribute__((reqd_work_group_size(ATT_WG, 1, 1)))
void batch_attention(__global const float *q, __global const float *g, const int g_stride, const float scale,
                     __global const float *k_cache, __global const float *v_cache, __global const int *seq,
                     __global float *out)
{
    __local float qs[DK], qg[DK], p[ATT_WG], scratch[ATT_WG];
    __local float4 red[ATT_WG];
    const int wg = get_group_id(0), lid = get_local_id(0);
    const int t = wg / HEADS, h = wg % HEADS;
    const int s = seq[3 * t], pos = seq[3 * t + 1], base = seq[3 * t + 2];
    const idx_t row = (idx_t)t * DMODEL + h * DK;
    for (int i = lid; i < DK; i += ATT_WG)
        qs[i] = q[row + i];
    barrier(CLK_LOCAL_MEM_FENCE);
    __global const float *gh = g + (idx_t)s * g_stride + h * DK * DK;
    for (int j = lid; j < DK; j += ATT_WG) {
        float a = 0.0f;
        for (int i = 0; i < DK; i++)
            a += qs[i] * gh[i * DK + j];
        qg[j] = a * scale;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const idx_t kb = (idx_t)base * DMODEL;
    attend_row(qg, k_cache + kb, v_cache + kb, h, pos + 1, out + row, p, scratch, red);
}

#if !WG_FORMS
/* batch_attention on CPU devices: one work-item per (row, head), with no
 * barrier (apply_g_cpu and attend_cpu, kernels/attention.cl). Global size
 * B * HEADS, work-groups of 1. */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void batch_attention_cpu(__global const float *q, __global const float *g, const int g_stride, const float scale,
                         __global const float *k_cache, __global const float *v_cache, __global const int *seq,
                         __global float *out)
{
    const int wg = get_global_id(0);
    const int t = wg / HEADS, h = wg % HEADS;
    const int s = seq[3 * t], pos = seq[3 * t + 1], base = seq[3 * t + 2];
    const idx_t row = (idx_t)t * DMODEL + h * DK;
    float qv[AC_DP], qg[AC_DP];
    for (int i = 0; i < DK; i++)
        qv[i] = q[row + i];
    apply_g_cpu(qv, g + (idx_t)s * g_stride + h * DK * DK, scale, qg);
    const idx_t kb = (idx_t)base * DMODEL;
    attend_cpu(qg, k_cache + kb, v_cache + kb, h, pos + 1, out + row);
}
#endif

/* Greedy decoding of B rows: out[r] is the index of the largest logit of row
 * r (the lowest among equals); one work-group per row. */
__kernel __attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
void batch_argmax(__global const float *logits, const int n, __global int *out, const int out_off,
                  __global int *flags, const int flag_index)
{
    __local float best_v[ROW_WG];
    __local int best_i[ROW_WG];
    const int r = get_group_id(0);
    row_argmax(logits + (idx_t)r * n, n, flags, flag_index, best_v, best_i, out + out_off + r);
}
