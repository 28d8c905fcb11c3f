/* Matrix-vector products of the decode path (one token): memory-bound, so
 * each weight is read once, as aligned vectors (rows are padded to k_pitch, a
 * multiple of 4 elements, with zeros), neighbouring work-items reading
 * neighbouring addresses. A work-group computes GEMV_ROWS outputs with LANES
 * work-items each (on a CPU, LANES = 1: a work-item walks a whole row), then
 * reduces in local memory.
 *
 * Variants, by what happens to the input row x before the product:
 *   gemv          x as it is (gemv_wide: the same for long rows on GPUs);
 *   gemv_ln       LN(x): the LayerNorm of the previous step is done here, on
 *                 load, instead of in a launch of its own, and the normalised
 *                 row is stored in x_norm (the residual of a later step);
 *   gemv_embed    LN of the token's embedding row;
 * and by what happens to the output:
 *   y[r] = W[r] . x + b[r] (+ residual[r])
 *   glu:  y[r] = silu(W[r] . x + b[r]) * (W[r+n_out] . x + b[r+n_out])
 * gemv_ln can also start greedy decoding: the best row of each work-group
 * (argmax_part), reduced by argmax_parts. xs is local memory of k_pitch floats.
 *
 * The vectors of a decode step (x, its normalised copy, y, the flags, the
 * argmax partials, the token ids) live in one buffer, act, at
 * the byte offsets given (*_off): a launch costs some drivers' hosts ~0.4 us
 * per buffer argument (NVIDIA's), so kernels take as few as they can.
 *
 * Where a row has several lanes (GPUs), gemv_ln and gemv_embed fold the
 * LayerNorm into the product instead (ln_fold_rows): no pass over x before
 * the weights are used. */
#define LANES (GEMV_WG / GEMV_ROWS)
#define AT(type, off) ((__global type *)(act + (off)))

/* Vector i (elements 4i .. 4i+3) of a row whose quants start at row and
 * scales at srow (WPTR, SPTR). */
#if WEIGHT_TYPE == 0
#define LOAD_ROW4(row, srow, i) (((__global const float4 *)(row))[i])
#else
#define LOAD_ROW4(row, srow, i) LOAD_W4((row), (srow), 4 * (i))
#endif

/* A hint to bring the cache line at p in ahead of its use: on CPUs
 * (CPU_PREFETCH, set by the host) clang's builtin where the compiler has it
 * (PoCL: quantized rows are read too densely for a core's out-of-order
 * window to keep enough misses in flight); elsewhere OpenCL's prefetch, a
 * no-op for most (oclgrind cannot run clang's). */
#if CPU_PREFETCH && defined(__has_builtin)
#if __has_builtin(__builtin_prefetch)
#define PREFETCH(p) __builtin_prefetch(p)
#endif
#endif
#ifndef PREFETCH
#define PREFETCH(p) prefetch((p), 1)
#endif
/* bytes ahead of the quants being read (rows are contiguous, so this runs
 * into the next rows, which the next work-items read) */
#define PF_AHEAD 1024
#define Q_SHIFT (WEIGHT_TYPE == 4 ? 4 : 5) /* log2 of a block's bytes */

#if WEIGHT_QUANT
/* The unscaled products of block b of a quantized row with x0, x1 (the
 * block's 32 values of x), lane by lane; for Q4_0 without the offset 8 (the
 * caller subtracts 8 times the block's sum of x once per block instead of
 * once per weight). The quants widen to 32 bits in one step (Q4_0: both
 * nibbles of a byte from the same word): on CPUs the conversions, not the
 * bytes, are what a quantized product costs. */
inline float16 q_block_dot(__global const WT *wr, const int b, const float16 x0, const float16 x1)
{
#if WEIGHT_TYPE == 3
    return convert_float16(vload16(2 * b, wr)) * x0 + convert_float16(vload16(2 * b + 1, wr)) * x1;
#else
    const uint16 q = convert_uint16(vload16(b, wr)); /* weights j (low nibbles) and j + 16 (high) */
    return convert_float16(q & 15u) * x0 + convert_float16(q >> 4) * x1;
#endif
}
#endif

#if LANES == 1
/* On CPUs (a work-item per row; the work-items of a group run one after
 * another on one core) x is prepared by one work-item in vector loops: spread
 * over the group it was a scalar loop per work-item and a barrier per step,
 * and every group repeats it, so on short (quantized) rows it cost as much
 * as the product. */

/* The sum of x over each block of 32 (xs, kv vectors of 4), into xb: Q4_0's
 * offset per block (q_block_dot). Nothing to do for the other types. */
#if WEIGHT_TYPE == 4
#define XB_BLOCKS ((DFF > DMODEL ? DFF : DMODEL) / 32 + 1)
#define XB_DECL __local float xb[XB_BLOCKS]
inline void block_sums(__local const float *xs, const int kv, __local float *xb)
{
    if (get_local_id(0) == 0)
        for (int b = 0; b < kv >> 3; b++)
            xb[b] = hsum16(vload16(2 * b, xs) + vload16(2 * b + 1, xs));
    barrier(CLK_LOCAL_MEM_FENCE);
}
#endif

/* x into local memory, zero beyond k_dim. */
inline void load_x(__local float *xs, __global const float *x, const int k_dim, const int k_pitch)
{
    if (get_local_id(0) == 0) {
        int i = 0;
        for (; i + 16 <= k_dim; i += 16)
            vstore16(vload16(0, x + i), 0, xs + i);
        for (; i < k_pitch; i++)
            xs[i] = i < k_dim ? x[i] : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* LayerNorm of the n values in xs, in place (ln_local's arithmetic: sums of
 * x - x[0] and their squares); work-group 0 also stores the normalised row in
 * x_norm and raises flags[flag_index] if it is not finite. */
inline void ln_keep(__local float *xs, const int n, __global const float *ln_w, __global const float *ln_b,
                    __global float *x_norm, __global int *flags, const int flag_index, __local float2 *scratch)
{
    if (get_local_id(0) == 0) {
        const float x0 = xs[0];
        float16 s1 = 0.0f, s2 = 0.0f;
        int i = 0;
        for (; i + 16 <= n; i += 16) {
            const float16 t = vload16(0, xs + i) - x0;
            s1 += t;
            s2 += t * t;
        }
        float r1 = hsum16(s1), r2 = hsum16(s2);
        for (; i < n; i++) {
            const float t = xs[i] - x0;
            r1 += t;
            r2 += t * t;
        }
        const float m1 = r1 / n, mean = x0 + m1;
        const float var = fmax(r2 / n - m1 * m1, 0.0f), rstd = rsqrt(var + LN_EPS);
        const int keep = get_group_id(0) == 0;
        for (i = 0; i + 16 <= n; i += 16) {
            const float16 v = (vload16(0, xs + i) - mean) * rstd * vload16(0, ln_w + i) + vload16(0, ln_b + i);
            vstore16(v, 0, xs + i);
            if (keep)
                vstore16(v, 0, x_norm + i);
        }
        for (; i < n; i++) {
            xs[i] = (xs[i] - mean) * rstd * ln_w[i] + ln_b[i];
            if (keep)
                x_norm[i] = xs[i];
        }
        if (keep)
            flag_if_nonfinite(mean + var, flags, flag_index);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}

/* The embedding row at base times scale into xs, zero beyond DMODEL. */
inline void load_emb(__local float *xs, __global const WT *emb, __global const ST *es, const idx_t base,
                     const float scale, const int k_pitch)
{
    if (get_local_id(0) == 0) {
        int i = 0;
        for (; i + 16 <= DMODEL; i += 16)
            vstore16(LOAD_W16(emb, es, base + i) * scale, 0, xs + i);
        for (; i < k_pitch; i++)
            xs[i] = i < DMODEL ? LOAD_W(emb, es, base + i) * scale : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}
#else
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
#endif
#ifndef XB_DECL
#define XB_DECL __local float *xb = 0
#define block_sums(xs, kv, xb) ((void)0)
#endif

/* The weights do not depend on x: each work-item starts loading the first
 * GEMV_PF vectors of its rows into registers before x is ready, so that the
 * memory latency overlaps the loading (and normalising) of x. */
/* On CPUs (LANES == 1) quantized rows load nothing early: the work-items
 * of a group run one after another, so the early loads were a strided pass
 * over the first line of every row, each a cache miss the core waited for (a
 * fifth of a quantized product's time under PoCL); their row walks prefetch
 * instead. Float rows keep it (measured: 2-core PoCL f32 decode 10% slower
 * without). */
#if LANES == 1 && WEIGHT_QUANT
#define PF_VECS 0
#else
#define PF_VECS GEMV_PF
#endif
inline void prefetch_w(__global const WT *wr, __global const WT *wr2, __global const ST *sr,
                       __global const ST *sr2, const int lane, const int kv, const int live, const int glu,
                       float4 *wa, float4 *wb)
{
#pragma unroll
    for (int v = 0; v < PF_VECS; v++) {
        const int k = lane + v * LANES;
        wa[v] = live && k < kv ? LOAD_ROW4(wr, sr, k) : (float4)0.0f;
        wb[v] = live && glu && k < kv ? LOAD_ROW4(wr2, sr2, k) : (float4)0.0f;
    }
}

/* What a row adds at the end, loaded at the start so that its latency hides
 * behind the product: (b[row], b[row + n_out] for glu, residual[row]). */
inline float3 row_early(__global const float *bias, __global const float *residual, const int has_residual,
                        const int glu, const int n_out)
{
    const int row = get_group_id(0) * GEMV_ROWS + get_local_id(0) / LANES;
    if (row >= n_out)
        return (float3)0.0f;
    return (float3)(bias[row], glu ? bias[row + n_out] : 0.0f, has_residual ? residual[row] : 0.0f);
}

/* The rest of the product of this work-group's rows with xs, the reduction
 * over lanes, and the output (early: row_early). Returns W[row] . x + b[row]
 * (before the residual) in lane 0 of each row, -INFINITY elsewhere. */
inline float gemv_finish(__global const WT *wr, __global const WT *wr2, __global const ST *sr,
                         __global const ST *sr2, const float4 *wa, const float4 *wb,
                         const float3 early, const int kv, const int n_out, __local const float *xs,
                         const int has_residual, const int glu, __global float *y, __local float *red,
                         __local float *red2, __local float *xb)
{
    const int lid = get_local_id(0);
    const int row = get_group_id(0) * GEMV_ROWS + lid / LANES;
    const int lane = lid % LANES;
    float acc = 0.0f, acc2 = 0.0f;
    block_sums(xs, kv, xb);
#pragma unroll
    for (int v = 0; v < PF_VECS; v++) {
        const int k = lane + v * LANES;
        const float4 xv = k < kv ? vload4(k, xs) : (float4)0.0f;
        acc += dot(wa[v], xv);
        acc2 += dot(wb[v], xv);
    }
    if (row < n_out) {
#if LANES == 1 && WEIGHT_QUANT
        /* a work-item walks its whole row of quantized blocks (nothing was
         * loaded early: PF_VECS is 0), block by block 32 quants against 32
         * values of x with one multiply by the block's scale (the rows are
         * whole blocks: kv is a multiple of 8) */
        const int nb = kv >> 3;
        float16 a16 = 0.0f, b16 = 0.0f;
        /* Q4_0: sum d_b * xb[b] per row, times -8 at the end */
        float c = 0.0f, c2 = 0.0f;
        if (glu) {
            for (int b = 0; b < nb; b++) {
                const float16 x0 = vload16(2 * b, xs), x1 = vload16(2 * b + 1, xs);
                PREFETCH(wr + (b << Q_SHIFT) + PF_AHEAD);
                PREFETCH(wr2 + (b << Q_SHIFT) + PF_AHEAD);
                PREFETCH(sr + b + PF_AHEAD / 4);
                PREFETCH(sr2 + b + PF_AHEAD / 4);
                const float d = WSCALE_B(sr, b), d2 = WSCALE_B(sr2, b);
                a16 += q_block_dot(wr, b, x0, x1) * d;
                b16 += q_block_dot(wr2, b, x0, x1) * d2;
#if WEIGHT_TYPE == 4
                c += d * xb[b];
                c2 += d2 * xb[b];
#endif
            }
            acc2 += hsum16(b16) - 8.0f * c2;
        } else {
            /* two blocks a step into two accumulators (a16 and b16, c and
             * c2): one chain of multiply-adds a block would bound the loop by
             * its latency */
            int b = 0;
            for (; b + 1 < nb; b += 2) {
                PREFETCH(wr + (b << Q_SHIFT) + PF_AHEAD);
                PREFETCH(sr + b + PF_AHEAD / 4);
                const float d = WSCALE_B(sr, b), e = WSCALE_B(sr, b + 1);
                a16 += q_block_dot(wr, b, vload16(2 * b, xs), vload16(2 * b + 1, xs)) * d;
                b16 += q_block_dot(wr, b + 1, vload16(2 * b + 2, xs), vload16(2 * b + 3, xs)) * e;
#if WEIGHT_TYPE == 4
                c += d * xb[b];
                c2 += e * xb[b + 1];
#endif
            }
            if (b < nb) {
                const float d = WSCALE_B(sr, b);
                a16 += q_block_dot(wr, b, vload16(2 * b, xs), vload16(2 * b + 1, xs)) * d;
#if WEIGHT_TYPE == 4
                c += d * xb[b];
#endif
            }
            a16 += b16;
            c += c2;
        }
        acc += hsum16(a16) - 8.0f * c;
#elif LANES == 1
        /* a work-item walks its whole row: vector accumulators, one
         * horizontal sum at the end */
        float4 a4 = 0.0f, b4 = 0.0f;
        if (glu) {
            /* two independent chains per row */
            float4 c4 = 0.0f, d4 = 0.0f;
            int k = PF_VECS;
            for (; k + 1 < kv; k += 2) {
                const float4 xv = vload4(k, xs), xw = vload4(k + 1, xs);
                a4 += LOAD_ROW4(wr, sr, k) * xv;
                b4 += LOAD_ROW4(wr2, sr2, k) * xv;
                c4 += LOAD_ROW4(wr, sr, k + 1) * xw;
                d4 += LOAD_ROW4(wr2, sr2, k + 1) * xw;
            }
            if (k < kv) {
                const float4 xv = vload4(k, xs);
                a4 += LOAD_ROW4(wr, sr, k) * xv;
                b4 += LOAD_ROW4(wr2, sr2, k) * xv;
            }
            a4 += c4;
            b4 += d4;
        } else {
            /* four independent chains */
            float4 c4 = 0.0f, d4 = 0.0f, e4 = 0.0f;
            int k = PF_VECS;
            for (; k + 3 < kv; k += 4) {
                a4 += LOAD_ROW4(wr, sr, k) * vload4(k, xs);
                c4 += LOAD_ROW4(wr, sr, k + 1) * vload4(k + 1, xs);
                d4 += LOAD_ROW4(wr, sr, k + 2) * vload4(k + 2, xs);
                e4 += LOAD_ROW4(wr, sr, k + 3) * vload4(k + 3, xs);
            }
            for (; k < kv; k++)
                a4 += LOAD_ROW4(wr, sr, k) * vload4(k, xs);
            a4 += (c4 + d4) + e4;
        }
        acc += a4.x + a4.y + a4.z + a4.w;
        acc2 += b4.x + b4.y + b4.z + b4.w;
#else
        if (glu) {
#pragma unroll 4
            for (int k = lane + PF_VECS * LANES; k < kv; k += LANES) {
                const float4 xv = vload4(k, xs);
                acc += dot(LOAD_ROW4(wr, sr, k), xv);
                acc2 += dot(LOAD_ROW4(wr2, sr2, k), xv);
            }
        } else {
#pragma unroll 8
            for (int k = lane + PF_VECS * LANES; k < kv; k += LANES)
                acc += dot(LOAD_ROW4(wr, sr, k), vload4(k, xs));
        }
#endif
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
        v = acc + early.x;
        if (glu)
            y[row] = silu(v) * (acc2 + early.y);
        else
            y[row] = has_residual ? v + early.z : v;
    }
    return v;
}

/* This work-item's rows: the pointers, and whether the row exists. */
#define GEMV_SETUP(w, ws, k_pitch, n_out)                                                          \
    const int row = get_group_id(0) * GEMV_ROWS + get_local_id(0) / LANES;                         \
    const int lane = get_local_id(0) % LANES;                                                      \
    const int live = row < (n_out);                                                                \
    const idx_t wo_ = (idx_t)(live ? row : 0) * (k_pitch);                                         \
    const idx_t wo2_ = (idx_t)(live ? row + (n_out) : 0) * (k_pitch);                              \
    __global const WT *wr = WPTR(w, wo_), *wr2 = WPTR(w, wo2_);                                    \
    __global const ST *sr = SPTR(ws, wo_), *sr2 = SPTR(ws, wo2_);                                \
    float4 wa[GEMV_PF], wb[GEMV_PF]

/* Greedy decoding, first half: every work-group of the final GEMV writes the
 * best (value, index) of its rows to part[2g], part[2g+1] (the lowest index
 * among equal values); argmax_parts, the next launch, reduces those. v is the
 * value of this work-item's row in its lane 0 (gemv_finish, ln_fold_rows);
 * lane 0s put their rows in red[0 .. GEMV_ROWS), and work-item 0 scans those.
 *
 * The partial results cross work-groups through a kernel boundary, not
 * through an atomic counter and a "last work-group" inside this launch:
 * OpenCL 1.2 orders plain global stores of one work-group before loads of
 * another only across commands of an in-order queue (a fence orders one
 * work-item's own accesses, and some vendors implement it at work-group
 * scope), and the flags' counter would need resetting by a store that races
 * with the increments. */
inline void argmax_part(const float v, const int n_out, __global float *part, __global int *flags,
                        const int flag_index, __local float *red)
{
    const int lid = get_local_id(0);
    const int grp = lid / LANES;
    const int row = get_group_id(0) * GEMV_ROWS + grp;
    if (lid % LANES == 0) {
        red[grp] = row < n_out ? v : -INFINITY;
        if (row < n_out && !isfinite(v))
            atomic_or(flags + flag_index, FLAG_NONFINITE);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
        float bv = red[0];
        int bi = 0;
        for (int i = 1; i < GEMV_ROWS; i++)
            if (red[i] > bv) { /* strict: the lowest index among equals */
                bv = red[i];
                bi = i;
            }
        const int best = get_group_id(0) * GEMV_ROWS + bi;
        part[2 * get_group_id(0)] = bv;
        part[2 * get_group_id(0) + 1] = as_float(best < n_out ? best : n_out);
    }
}

/* Greedy decoding, second half: the best of the n_parts (value, index) pairs
 * argmax_part left in the decode-step buffer at part_off, the lowest index
 * among equal values, written to flags[out_index] (0 when no value compares,
 * as with NaN everywhere). One work-group of GEMV_WG. */
__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void argmax_parts(__global char *act, const int part_off, const int n_parts, const int n_out, const int flags_off,
                  const int out_index)
{
    __local float red[GEMV_WG];
    __local int red_i[GEMV_WG];
    __global const float *part = AT(const float, part_off);
    const int lid = get_local_id(0);
    float bv = -INFINITY;
    int bi = n_out;
    for (int g = lid; g < n_parts; g += GEMV_WG) {
        const float pv = part[2 * g];
        const int pi = as_int(part[2 * g + 1]);
        if (pv > bv || (pv == bv && pi < bi)) {
            bv = pv;
            bi = pi;
        }
    }
    red[lid] = bv;
    red_i[lid] = bi;
    wg_argmax(red, red_i);
    if (lid == 0)
        AT(int, flags_off)[out_index] = red_i[0] < n_out ? red_i[0] : 0;
}

/* ---- LayerNorm folded into the product (LANES > 1) ----
 * With LN(x) = (x - mean) * rstd * gamma + beta and any shift x0,
 *   W . LN(x) + b = rstd * (sum_k W_k gamma_k (x_k - x0) - (mean - x0) * s) + c,
 * where s = sum_k W_k gamma_k and c = b + sum_k W_k beta_k are constants of the
 * model (ln_fold_consts, at load). The lanes of a row take the sums of
 * t = x - x0 and t^2 while they multiply, so the statistics arrive with the
 * product's own reduction instead of a LayerNorm pass before it, and the
 * weights start loading before anything else. x0 = x[0], as in ln_local. */
#define DP4 ((DMODEL + 3) / 4)

/* t = x - x0 for elements 4k .. 4k+3 of the LN input (x, or the embedding
 * row at base times scale when from_emb), zero beyond DMODEL. */
inline float4 ln_t4(__global const float *x, __global const WT *emb, __global const ST *es, const idx_t base,
                    const float scale,
                    const int from_emb, const float x0, const int k)
{
#if DMODEL % 4 == 0
    const float4 v = from_emb ? LOAD_W4(emb, es, base + 4 * k) * scale : vload4(k, x);
    return v - x0;
#else
    float t[4];
    for (int j = 0; j < 4; j++) {
        const int i = 4 * k + j;
        t[j] = i < DMODEL ? (from_emb ? LOAD_W(emb, es, base + i) * scale : x[i]) - x0 : 0.0f;
    }
    return (float4)(t[0], t[1], t[2], t[3]);
#endif
}

inline float4 ln_g4(__global const float *ln_w, const int k)
{
#if DMODEL % 4 == 0
    return vload4(k, ln_w);
#else
    float g[4];
    for (int j = 0; j < 4; j++)
        g[j] = 4 * k + j < DMODEL ? ln_w[4 * k + j] : 0.0f;
    return (float4)(g[0], g[1], g[2], g[3]);
#endif
}

/* y[r] = W[r] . LN(x) + b[r] for this work-group's rows; with glu,
 * y[r] = silu(that) * (the same for row r + n_out), the two products of an
 * output row being done by two lane groups (so a work-group has GEMV_ROWS / 2
 * output rows, GEMV_ROWS >= 2: see choose_work_groups). Each work-group also
 * stores its share of LN(x) in x_norm (a later residual); work-group 0 flags
 * a non-finite row. t = x - x0 and t * gamma are staged in local memory once
 * per work-group (ts, tg: DP4 vectors each) while the first weights of every
 * lane are already on their way. Returns y[r] before any gate in lane 0 of
 * each live row, -INFINITY elsewhere. */
#define FOLD_NIT ((DP4 + LANES - 1) / LANES)
#define FOLD_PF (FOLD_NIT < 8 ? FOLD_NIT : 8)
inline float ln_fold_rows(__global const WT *w, __global const ST *ws, __global const float *sc, const int k_pitch,
                          const int n_out, __global const float *x, __global const WT *emb,
                          __global const ST *es, const idx_t base, const float scale,
                          const int from_emb, __global const float *ln_w, __global const float *ln_b,
                          __global float *x_norm, const int glu, __global float *y, __global int *flags,
                          const int flag_index, __local float4 *red, __local float *stat, __local float4 *ts,
                          __local float4 *tg)
{
    const int lid = get_local_id(0);
    const int grp = lid / LANES, lane = lid % LANES;
    const int half_rows = GEMV_ROWS / 2;
    const int row = glu ? get_group_id(0) * half_rows + grp % half_rows : get_group_id(0) * GEMV_ROWS + grp;
    const int wrow = glu && grp >= half_rows ? row + n_out : row; /* the row of W (and of sc) */
    const int live = row < n_out;
    const idx_t wo = (idx_t)(live ? wrow : 0) * k_pitch;
    __global const WT *wr = WPTR(w, wo);
    __global const ST *sr = SPTR(ws, wo);
    /* the row's constants, loaded now and used at the end */
    const float s_row = live ? sc[wrow] : 0.0f, c_row = live ? sc[(glu ? 2 * n_out : n_out) + wrow] : 0.0f;
    float4 wv[FOLD_PF];
#pragma unroll
    for (int i = 0; i < FOLD_PF; i++) {
        const int k = lane + i * LANES;
        wv[i] = DP4 % LANES == 0 || k < DP4 ? LOAD_ROW4(wr, sr, k) : (float4)0.0f;
    }
    const float x0 = from_emb ? LOAD_W(emb, es, base) * scale : x[0];
    for (int k = lid; k < DP4; k += GEMV_WG) {
        const float4 t = ln_t4(x, emb, es, base, scale, from_emb, x0, k);
        ts[k] = t;
        tg[k] = t * ln_g4(ln_w, k);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float4 acc = 0.0f; /* W.tg, sum t, sum t^2 */
#pragma unroll
    for (int i = 0; i < FOLD_NIT; i++) {
        const int k = lane + i * LANES;
        if (DP4 % LANES == 0 || k < DP4) {
            const float4 t = ts[k];
            acc.x += dot(i < FOLD_PF ? wv[i < FOLD_PF ? i : 0] : LOAD_ROW4(wr, sr, k), tg[k]);
            acc.y += t.x + t.y + t.z + t.w;
            acc.z += dot(t, t);
        }
    }
    /* the lanes of a row: groups summed by FOLD_STEP work-items, then by one */
    red[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
#define FOLD_STEP (LANES >= 8 ? LANES / 8 : 1)
    if (lane % FOLD_STEP == 0) {
        float4 a = 0.0f;
        for (int i = 0; i < FOLD_STEP; i++)
            a += red[lid + i];
        red[lid] = a;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float v = -INFINITY;
    if (lane == 0) {
        acc = 0.0f;
        for (int i = 0; i < LANES; i += FOLD_STEP)
            acc += red[lid + i];
        const float m1 = acc.y / DMODEL;
        const float var = fmax(acc.z / DMODEL - m1 * m1, 0.0f);
        const float rstd = rsqrt(var + LN_EPS);
        if (lid == 0) {
            stat[0] = x0 + m1;
            stat[1] = rstd;
            stat[2] = x0 + m1 + var;
        }
        if (live)
            v = rstd * (acc.x - m1 * s_row) + c_row;
        if (glu && grp >= half_rows)
            stat[3 + grp - half_rows] = v;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane == 0 && live && !(glu && grp >= half_rows))
        y[row] = glu ? silu(v) * stat[3 + grp] : v;
    /* this work-group's share of LN(x): every work-group has the same
     * statistics (same sums in the same order), so the shares agree */
    const int share = (DMODEL + get_num_groups(0) - 1) / get_num_groups(0);
    const int i = get_group_id(0) * share + lid;
    if (lid < share && i < DMODEL) {
        const float xi = from_emb ? LOAD_W(emb, es, base + i) * scale : x[i];
        x_norm[i] = (xi - stat[0]) * stat[1] * ln_w[i] + ln_b[i];
    }
    if (get_group_id(0) == 0 && lid == 0)
        flag_if_nonfinite(stat[2], flags, flag_index);
    return v;
}

/* The per-row data of a product that reads a LayerNorm's output, once at
 * load, in one buffer so that a launch binds it once (see AT above): for the
 * n_rows rows of W, sc = [s, c, b, gamma, beta] with s[r] = sum_k W[r,k]
 * gamma_k and c[r] = b[r] + sum_k W[r,k] beta_k (ln_fold_rows), b the bias,
 * and gamma, beta (DMODEL each) the LayerNorm's weights. */
__kernel void ln_fold_consts(__global const WT *w, __global const ST *ws, __global const float *bias,
                             const int k_pitch, const int n_rows,
                             __global const float *ln_w, __global const float *ln_b, __global float *sc)
{
    const int r = get_global_id(0);
    for (int i = r; i < DMODEL; i += get_global_size(0)) {
        sc[3 * n_rows + i] = ln_w[i];
        sc[3 * n_rows + DMODEL + i] = ln_b[i];
    }
    if (r >= n_rows)
        return;
    float s = 0.0f, c = 0.0f;
    for (int k = 0; k < DMODEL; k++) {
        const float wv = LOAD_W(w, ws, (idx_t)r * k_pitch + k);
        s += wv * ln_w[k];
        c += wv * ln_b[k];
    }
    sc[r] = s;
    sc[n_rows + r] = bias[r] + c;
    sc[2 * n_rows + r] = bias[r];
}

/* The bias and the LayerNorm's weights in sc (ln_fold_consts) for nt rows of W. */
#define SC_PARTS(sc, nt)                                                                           \
    __global const float *bias = (sc) + 2 * (nt), *ln_w = (sc) + 3 * (nt), *ln_b = ln_w + DMODEL

__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv(__global const WT *w, __global const ST *ws, __global const float *bias, const int k_dim, const int k_pitch, const int n_out,
          __global char *act, const int x_off, const int res_off, const int has_residual, const int glu,
          const int y_off, __local float *xs)
{
    __local float red[GEMV_WG], red2[GEMV_WG];
    XB_DECL;
    GEMV_SETUP(w, ws, k_pitch, n_out);
    prefetch_w(wr, wr2, sr, sr2, lane, k_pitch / 4, live, glu, wa, wb);
    const float3 early = row_early(bias, AT(const float, res_off), has_residual, glu, n_out);
    load_x(xs, AT(const float, x_off), k_dim, k_pitch);
    gemv_finish(wr, wr2, sr, sr2, wa, wb, early, k_pitch / 4, n_out, xs, has_residual, glu, AT(float, y_off), red, red2, xb);
}

/* A product without a LayerNorm on a multi-lane layout (the attention and
 * FFN output projections): y[r] = W[r] . x + b[r] (+ residual[r]) with GEMV_WROWS rows
 * per work-group, so more lanes share a row and each walks fewer vectors; x
 * is read from global memory (it stays in cache), so nothing waits for a
 * barrier before the weights stream. */
#define WLANES (GEMV_WG / GEMV_WROWS)
__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_wide(__global const WT *w, __global const ST *ws, __global const float *bias, const int k_dim,
               const int k_pitch,
               const int n_out, __global char *act, const int x_off, const int res_off, const int has_residual,
               const int y_off)
{
    __local float red[GEMV_WG];
    const int lid = get_local_id(0);
    const int row = get_group_id(0) * GEMV_WROWS + lid / WLANES, lane = lid % WLANES;
    const int live = row < n_out;
    const idx_t wo = (idx_t)(live ? row : 0) * k_pitch;
    __global const WT *wr = WPTR(w, wo);
    __global const ST *sr = SPTR(ws, wo);
    __global const float *x = AT(const float, x_off);
    const float b = live ? bias[row] : 0.0f;
    const float res = live && has_residual ? AT(const float, res_off)[row] : 0.0f;
    const int kv = k_pitch / 4, full = k_dim / 4;
    float4 acc = 0.0f;
#pragma unroll 4
    for (int k = lane; k < full; k += WLANES)
        acc += LOAD_ROW4(wr, sr, k) * vload4(k, x);
    /* the last, partial vector (the row padding is zero, x past k_dim is not read) */
    if (full < kv && lane == full % WLANES)
        for (int i = 4 * full; i < k_dim; i++)
            acc.x += LOAD_W(wr, sr, i) * x[i];
    red[lid] = acc.x + acc.y + acc.z + acc.w;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int st = WLANES / 2; st > 0; st >>= 1) {
        if (lane < st)
            red[lid] += red[lid + st];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lane == 0 && live)
        AT(float, y_off)[row] = red[lid] + b + res;
}

__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_ln(__global const WT *w, __global const ST *ws, __global const float *sc, const int k_dim, const int k_pitch, const int n_out,
             __global char *act, const int x_off, const int xn_off, const int glu, const int y_off,
             __local float *xs, const int flags_off, const int flag_index, const int argmax, const int part_off,
             const int logits_flag)
{
    SC_PARTS(sc, glu ? 2 * n_out : n_out);
    __local float red[GEMV_WG];
    __global const float *x = AT(const float, x_off);
    __global float *x_norm = AT(float, xn_off), *y = AT(float, y_off);
    __global int *flags = AT(int, flags_off);
#if LANES > 1
    __local float4 red4[GEMV_WG], ts[DP4], tg[DP4];
    __local float stat[3 + GEMV_ROWS / 2];
    const float v = ln_fold_rows(w, ws, sc, k_pitch, n_out, x, w, ws, 0, 1.0f, 0, ln_w, ln_b, x_norm,
                                 glu, y, flags, flag_index, red4, stat, ts, tg);
#else
    __local float red2[GEMV_WG];
    __local float2 scratch[GEMV_WG];
    XB_DECL;
    GEMV_SETUP(w, ws, k_pitch, n_out);
    prefetch_w(wr, wr2, sr, sr2, lane, k_pitch / 4, live, glu, wa, wb);
    const float3 early = row_early(bias, bias, 0, glu, n_out);
    load_x(xs, x, k_dim, k_pitch);
    ln_keep(xs, k_dim, ln_w, ln_b, x_norm, flags, flag_index, scratch);
    const float v = gemv_finish(wr, wr2, sr, sr2, wa, wb, early, k_pitch / 4, n_out, xs, 0, glu, y, red, red2, xb);
#endif
    if (argmax)
        argmax_part(v, n_out, AT(float, part_off), flags, logits_flag, red);
}

/* The first projection of a decode step with the token embedding fused in:
 * x = LN_d(Emb[id] * scale) (decoder.embedding, decoder.layernorm1) is stored
 * in x_norm (the residual of the attention output), and y = W . x + b. One
 * launch instead of two. */
__kernel __attribute__((reqd_work_group_size(GEMV_WG, 1, 1)))
void gemv_embed(__global const WT *w, __global const ST *ws, __global const float *sc, const int k_pitch,
                const int n_out, __global const WT *emb, __global const ST *es, __global char *act, const int id_off, const float scale, const int xn_off,
                const int y_off, __local float *xs, const int flags_off, const int flag_index)
{
    SC_PARTS(sc, n_out);
    const idx_t base = (idx_t)*AT(const int, id_off) * EMB_PITCH;
    __global float *x_norm = AT(float, xn_off), *y = AT(float, y_off);
    __global int *flags = AT(int, flags_off);
#if LANES > 1
    __local float4 red4[GEMV_WG], ts[DP4], tg[DP4];
    __local float stat[3 + GEMV_ROWS / 2];
    ln_fold_rows(w, ws, sc, k_pitch, n_out, x_norm, emb, es, base, scale, 1, ln_w, ln_b, x_norm, 0, y, flags, flag_index,
                 red4, stat, ts, tg);
#else
    __local float red[GEMV_WG], red2[GEMV_WG];
    __local float2 scratch[GEMV_WG];
    XB_DECL;
    GEMV_SETUP(w, ws, k_pitch, n_out);
    prefetch_w(wr, wr2, sr, sr2, lane, k_pitch / 4, live, 0, wa, wb);
    load_emb(xs, emb, es, base, scale, k_pitch);
    ln_keep(xs, DMODEL, ln_w, ln_b, x_norm, flags, flag_index, scratch);
    gemv_finish(wr, wr2, sr, sr2, wa, wb, row_early(bias, bias, 0, 0, n_out), k_pitch / 4, n_out, xs, 0, 0, y, red, red2, xb);
#endif
}
