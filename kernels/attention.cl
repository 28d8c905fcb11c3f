/* Power law graph attention, inductive branch:
 *   s = (q @ G_LM) . k^T / sqrt(DK) + causal mask;  att = softmax(s) . v
 * With G_LM = identity this is scaled dot-product attention. The caches hold
 * K (after RoPE) and V as [n_ctx, DMODEL] rows. */

#define ATT_DIMS ((DK + ATT_WG - 1) / ATT_WG)

/* P.V of a tile of keys as float4 columns: where DK % 4 == 0 and the
 * work-group splits evenly into DK / 4 columns and ATT_KG key groups,
 * work-item lid takes column lid % (DK / 4) of the keys lid / (DK / 4),
 * + ATT_KG, ... (vector loads, all issued together: a fixed trip count, rows
 * clamped to the last valid one, p = 0 past the tile's keys), and the key
 * groups' sums meet in local memory at the end. Otherwise a work-item owns
 * output dims lid, lid + ATT_WG, ... and walks every key. */
#if DK % 4 == 0 && ATT_WG % (DK / 4) == 0
#define ATT_PV4 1
#define ATT_KG (ATT_WG / (DK / 4))
inline float4 pv_tile(__local const float *p, __global const float *v_cache, const int t0, const int last_row,
                      const int h)
{
    const int c4 = get_local_id(0) % (DK / 4), kg = get_local_id(0) / (DK / 4);
    __global const float *vc = v_cache + h * DK + 4 * c4;
    float4 a = 0.0f;
#pragma unroll
    for (int i = 0; i < ATT_WG / ATT_KG; i++) {
        const int kk = kg + i * ATT_KG;
        a += p[kk] * vload4(0, vc + (idx_t)min(t0 + kk, last_row) * DMODEL);
    }
    return a;
}

/* The key groups' sums of every column: work-items lid < DK / 4 return the
 * total of column lid (red: ATT_WG float4 of local memory). */
inline float4 pv_reduce(float4 a, __local float4 *red)
{
    const int lid = get_local_id(0);
    red[lid] = a;
    barrier(CLK_LOCAL_MEM_FENCE);
    float4 t = 0.0f;
    if (lid < DK / 4)
        for (int g = 0; g < ATT_KG; g++)
            t += red[g * (DK / 4) + lid];
    return t;
}
#else
#define ATT_PV4 0
#endif

/* (attention_prefill, and kernels/batch.cl in every form)
 * One query row qg (already multiplied by G_LM and the scale, in local memory)
 * of head h over keys 0 .. n_keys-1: an online softmax over tiles of ATT_WG
 * keys, so the context length is not limited by local memory. Work-item lid
 * scores key t0+lid of each tile; P.V as described at pv_tile. red holds
 * ATT_WG float4. */
inline void attend_row(__local const float *qg, __global const float *k_cache,
                       __global const float *v_cache, const int h, const int n_keys,
                       __global float *out, __local float *p, __local float *scratch, __local float4 *red)
{
    const int lid = get_local_id(0);
#if ATT_PV4
    float4 acc4 = 0.0f;
#else
    float acc[ATT_DIMS];
    for (int m = 0; m < ATT_DIMS; m++)
        acc[m] = 0.0f;
#endif
    float run_max = -INFINITY, run_sum = 0.0f;
    for (int t0 = 0; t0 < n_keys; t0 += ATT_WG) {
        const int n = min(ATT_WG, n_keys - t0);
        float s = -INFINITY;
        if (lid < n) {
            __global const float *kr = k_cache + (idx_t)(t0 + lid) * DMODEL + h * DK;
            s = 0.0f;
            for (int i = 0; i < DK; i++)
                s += qg[i] * kr[i];
        }
        const float new_max = fmax(run_max, wg_max(s, scratch));
        const float corr = exp(run_max - new_max);
        const float e = lid < n ? exp(s - new_max) : 0.0f;
        p[lid] = e;
        run_sum = run_sum * corr + e;
        barrier(CLK_LOCAL_MEM_FENCE);
#if ATT_PV4
        acc4 = acc4 * corr + pv_tile(p, v_cache, t0, n_keys - 1, h);
#else
        for (int m = 0; m < ATT_DIMS; m++) {
            const int j = lid + m * ATT_WG;
            if (j < DK) {
                __global const float *vc = v_cache + (idx_t)t0 * DMODEL + h * DK + j;
                float a = acc[m] * corr;
                for (int kk = 0; kk < n; kk++)
                    a += p[kk] * vc[(idx_t)kk * DMODEL];
                acc[m] = a;
            }
        }
#endif
        run_max = new_max;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float total = wg_sum(run_sum, scratch);
#if ATT_PV4
    const float4 t = pv_reduce(acc4, red);
    if (lid < DK / 4)
        vstore4(t / total, lid, out);
#else
    for (int m = 0; m < ATT_DIMS; m++) {
        const int j = lid + m * ATT_WG;
        if (j < DK)
            out[j] = acc[m] / total;
    }
#endif
}

/* Prefill: qg[t][h*DK+j] = scale * sum_i q[t][h*DK+i] * G[h][i][j].
 * Global size T*DMODEL. */
__kernel void apply_g(__global const float *q, __global const float *g, const float scale,
                      __global float *qg)
{
    const int gid = get_global_id(0);
    const int j = gid % DK, h = (gid / DK) % HEADS;
    const idx_t row = (idx_t)(gid / DMODEL) * DMODEL + h * DK;
    __global const float *gh = g + h * DK * DK + j;
    float s = 0.0f;
    for (int i = 0; i < DK; i++)
        s += q[row + i] * gh[i * DK];
    qg[gid] = s * scale;
}

#if WG_FORMS
/* Prefill: one work-group per (token, head); token t sits at position pos0+t
 * and attends to keys 0 .. pos0+t. The work-group's index comes from the
 * global id, so that a global work offset skips tokens. */
__kernel __attribute__((reqd_work_group_size(ATT_WG, 1, 1)))
void attention_prefill(__global const float *qg, __global const float *k_cache,
                       __global const float *v_cache, const int pos0, __global float *out)
{
    __local float qs[DK], p[ATT_WG], scratch[ATT_WG];
    __local float4 red[ATT_WG];
    const int wg = get_global_id(0) / ATT_WG;
    const int t = wg / HEADS, h = wg % HEADS;
    const idx_t row = (idx_t)t * DMODEL + h * DK;
    for (int i = get_local_id(0); i < DK; i += ATT_WG)
        qs[i] = qg[row + i];
    barrier(CLK_LOCAL_MEM_FENCE);
    attend_row(qs, k_cache, v_cache, h, pos0 + t + 1, out + row, p, scratch, red);
}
#endif

/* Decode of one token at position pos: RoPE of q and k, the cache write of k
 * and v, q @ G_LM and the attention, in one launch. The keys are split over
 * work-groups so that a short sequence still fills the device: work-group
 * (h, s) attends to keys [s*ATT_WG, min((s+1)*ATT_WG, pos+1)) of head h.
 * With one work-group per head (n_split == 1) it writes the attention output
 * att[h*DK .. h*DK+DK) itself; with several, each writes its partial softmax
 * (max, sum, acc[DK]) to part[h][s] and attention_combine, the next launch,
 * combines them. The partial results cross work-groups through that kernel
 * boundary: OpenCL 1.2 orders one work-group's global stores before another's
 * loads only between commands of an in-order queue, not through a fence and
 * an atomic counter inside one launch. The work-group whose keys include pos
 * writes k and v there. qkv is the projection output with its bias. */
__kernel __attribute__((reqd_work_group_size(ATT_WG, 1, 1)))
void attention_decode(__global char *act, const int qkv_off, const int rope_off, __global float *k_cache,
                      __global float *v_cache, __global const float *g, const int pos, const float scale,
                      const int n_split, const int part_off, const int att_off)
{
    /* q, k, v, the partial results and the output are in the
     * decode-step buffer (see kernels/gemv.cl) */
    __global const float *qkv = (__global const float *)(act + qkv_off);
    __global const float2 *rope = (__global const float2 *)(act + rope_off);
    __global float *part = (__global float *)(act + part_off);
    __local float q[DK], qg[DK], p[ATT_WG], scratch[ATT_WG];
    __local float4 red[ATT_WG];
    const int h = get_group_id(0) / n_split, sp = get_group_id(0) % n_split, lid = get_local_id(0);
    const int off = h * DK;
    const int t0 = sp * ATT_WG, n = min(ATT_WG, pos + 1 - t0);
    const int writer = sp == n_split - 1;
    const idx_t ko = (idx_t)pos * DMODEL + off;
#if ATT_PRELOAD && DK <= 64 && DK % 4 == 0 && ATT_WG >= DK
    /* loads that do not depend on q start first: this work-item's column of
     * G_LM and its key row (the writer's last key is written below) */
    float gcol[DK];
    float4 krow[DK / 4];
    if (lid < DK)
        for (int i = 0; i < DK; i++)
            gcol[i] = g[h * DK * DK + i * DK + lid];
    const int pre_key = lid < n && t0 + lid < pos;
    __global const float *kp = k_cache + (idx_t)(t0 + lid) * DMODEL + off;
    for (int i = 0; i < DK / 4; i++)
        krow[i] = pre_key ? vload4(i, kp) : (float4)0.0f;
#endif
    for (int i = lid; i < DK / 2; i += ATT_WG) {
        const int2 pr = rope_pair(i);
        const float2 cs = rope[(idx_t)pos * (DK / 2) + i];
        const float q0 = qkv[off + pr.x], q1 = qkv[off + pr.y];
        q[pr.x] = q0 * cs.x - q1 * cs.y;
        q[pr.y] = q1 * cs.x + q0 * cs.y;
        if (writer) {
            const float k0 = qkv[DMODEL + off + pr.x], k1 = qkv[DMODEL + off + pr.y];
            k_cache[ko + pr.x] = k0 * cs.x - k1 * cs.y;
            k_cache[ko + pr.y] = k1 * cs.x + k0 * cs.y;
            v_cache[ko + pr.x] = qkv[2 * DMODEL + off + pr.x];
            v_cache[ko + pr.y] = qkv[2 * DMODEL + off + pr.y];
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
#if ATT_PRELOAD && DK <= 64 && DK % 4 == 0 && ATT_WG >= DK
    if (lid < DK) {
        float sq = 0.0f;
        for (int i = 0; i < DK; i++)
            sq += q[i] * gcol[i];
        qg[lid] = sq * scale;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float s = -INFINITY;
    if (lid < n) {
        float4 a = 0.0f;
        if (pre_key) {
            for (int i = 0; i < DK / 4; i++)
                a += krow[i] * vload4(i, qg);
        } else { /* the key written by this work-group above */
            for (int i = 0; i < DK / 4; i++)
                a += vload4(i, kp) * vload4(i, qg);
        }
        s = a.x + a.y + a.z + a.w;
    }
#else
    __global const float *gh = g + h * DK * DK;
    for (int j = lid; j < DK; j += ATT_WG) {
        float sq = 0.0f;
#pragma unroll 16
        for (int i = 0; i < DK; i++)
            sq += q[i] * gh[i * DK + j];
        qg[j] = sq * scale;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float s = -INFINITY;
    if (lid < n) {
        __global const float *kr = k_cache + (idx_t)(t0 + lid) * DMODEL + off;
        float4 a = 0.0f;
        for (int i = 0; i < DK / 4; i++)
            a += vload4(i, kr) * vload4(i, qg);
        s = a.x + a.y + a.z + a.w;
        for (int i = DK / 4 * 4; i < DK; i++)
            s += kr[i] * qg[i];
    }
#endif
    const float mx = wg_max(s, scratch);
    const float e = lid < n ? exp(s - mx) : 0.0f;
    p[lid] = e;
    const float sum = wg_sum(e, scratch);
    /* one split: the output itself (what attention_combine would compute,
     * exp(0) = 1); several: this split's (max, sum, acc) */
    const int alone = n_split == 1;
    __global float *out = alone ? (__global float *)(act + att_off) + off
                                : part + ((idx_t)h * n_split + sp) * (DK + 2) + 2;
#if ATT_PV4
    const float4 pv = pv_reduce(pv_tile(p, v_cache, t0, pos, h), red);
    if (lid < DK / 4)
        vstore4(alone ? pv / sum : pv, lid, out);
#else
    for (int j = lid; j < DK; j += ATT_WG) {
        __global const float *vc = v_cache + off + j;
        float a = 0.0f;
        /* a fixed trip count lets the loads of the tile be issued together;
         * keys past the last one have p = 0 and read a valid row */
#pragma unroll 16
        for (int kk = 0; kk < ATT_WG; kk++)
            a += p[kk] * vc[(idx_t)min(t0 + kk, pos) * DMODEL];
        out[j] = alone ? a / sum : a;
    }
#endif
    if (lid == 0 && !alone) {
        out[-2] = mx;
        out[-1] = sum;
    }
}

/* The split attention's combination, one work-group of ATT_WG per head h
 * over the n_split partial results of attention_decode:
 *   att[j] = sum_s e^(m_s-M) acc_s[j] / sum_s e^(m_s-M) l_s,  M = max_s m_s. */
__kernel __attribute__((reqd_work_group_size(ATT_WG, 1, 1)))
void attention_combine(__global char *act, const int n_split, const int part_off, const int att_off)
{
    const int h = get_group_id(0);
    __global const float *ph = (__global const float *)(act + part_off) + (idx_t)h * n_split * (DK + 2);
    __global float *att = (__global float *)(act + att_off) + h * DK;
    for (int j = get_local_id(0); j < DK; j += ATT_WG) {
        float m = -INFINITY;
        for (int s2 = 0; s2 < n_split; s2++)
            m = fmax(m, ph[s2 * (DK + 2)]);
        float num = 0.0f, den = 0.0f;
        for (int s2 = 0; s2 < n_split; s2++) {
            const float e2 = exp(ph[s2 * (DK + 2)] - m);
            den += e2 * ph[s2 * (DK + 2) + 1];
            num += e2 * ph[s2 * (DK + 2) + 2 + j];
        }
        att[j] = num / den;
    }
}

#if !WG_FORMS
/* Attention of one (row, head) on CPU devices, one work-item over all its
 * keys, 16 keys at a time (an online softmax), the dot products and the P.V
 * sums as 16-wide vectors where DK allows, with no barrier: q is the row's
 * query already multiplied by G_LM and the scale (AC_DP values, zero past DK),
 * k_cache and v_cache the sequence's first cache row, out the row's DK
 * outputs. */
#define AC_DP ((DK + 15) / 16 * 16)
inline void attend_cpu(const float *q, __global const float *k_cache, __global const float *v_cache,
                       const int h, const int n_keys, __global float *out)
{
    float acc[AC_DP];
#pragma unroll
    for (int i = 0; i < AC_DP; i++)
        acc[i] = 0.0f;
    float run_max = -INFINITY, run_sum = 0.0f;
    for (int t0 = 0; t0 < n_keys; t0 += 16) {
        const int n = min(16, n_keys - t0);
        float s[16], mx = -INFINITY;
        for (int kk = 0; kk < n; kk++) {
            __global const float *kr = k_cache + (idx_t)(t0 + kk) * DMODEL + h * DK;
#if DK % 16 == 0
            float16 d = 0.0f;
#pragma unroll
            for (int i = 0; i < DK; i += 16)
                d = fma(vload16(0, kr + i), vload16(0, q + i), d);
            s[kk] = hsum16(d);
#else
            float d = 0.0f;
#pragma unroll
            for (int i = 0; i < DK; i++)
                d += kr[i] * q[i];
            s[kk] = d;
#endif
            mx = fmax(mx, s[kk]);
        }
        const float new_max = fmax(run_max, mx);
        const float corr = exp(run_max - new_max);
        run_sum *= corr;
#if DK % 16 == 0
#pragma unroll
        for (int i = 0; i < DK; i += 16)
            vstore16(vload16(0, acc + i) * corr, 0, acc + i);
        for (int kk = 0; kk < n; kk++) {
            const float p = exp(s[kk] - new_max);
            run_sum += p;
            __global const float *vr = v_cache + (idx_t)(t0 + kk) * DMODEL + h * DK;
#pragma unroll
            for (int i = 0; i < DK; i += 16)
                vstore16(fma((float16)p, vload16(0, vr + i), vload16(0, acc + i)), 0, acc + i);
        }
#else
#pragma unroll
        for (int i = 0; i < DK; i++)
            acc[i] *= corr;
        for (int kk = 0; kk < n; kk++) {
            const float p = exp(s[kk] - new_max);
            run_sum += p;
            __global const float *vr = v_cache + (idx_t)(t0 + kk) * DMODEL + h * DK;
#pragma unroll
            for (int i = 0; i < DK; i++)
                acc[i] += p * vr[i];
        }
#endif
        run_max = new_max;
    }
#pragma unroll
    for (int i = 0; i < DK; i++)
        out[i] = acc[i] / run_sum;
}

/* The query of head h times G_LM and the scale (G_LM rows as 16-wide
 * vectors), into qg (AC_DP values, zero past DK). */
inline void apply_g_cpu(const float *q, __global const float *gh, const float scale, float *qg)
{
#pragma unroll
    for (int j = 0; j < AC_DP; j++)
        qg[j] = 0.0f;
    for (int i = 0; i < DK; i++) {
        const float qi = q[i];
        __global const float *gr = gh + i * DK;
#if DK % 16 == 0
#pragma unroll
        for (int j = 0; j < DK; j += 16)
            vstore16(fma((float16)qi, vload16(0, gr + j), vload16(0, qg + j)), 0, qg + j);
#else
        for (int j = 0; j < DK; j++)
            qg[j] += qi * gr[j];
#endif
    }
#pragma unroll
    for (int j = 0; j < DK; j++)
        qg[j] *= scale;
}

/* attention_decode on CPU devices: one work-item per head (global size
 * HEADS, work-groups of 1) rotates its part of q and k, writes its k and v to
 * the caches' row pos, and attends over all pos + 1 keys (attend_cpu): the
 * row it wrote is read back by the same work-item, so no barrier and no split
 * over work-groups. Arguments as attention_decode's, without the split. */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void attention_decode_cpu(__global char *act, const int qkv_off, const int rope_off, __global float *k_cache,
                          __global float *v_cache, __global const float *g, const int pos, const float scale,
                          const int att_off)
{
    __global const float *qkv = (__global const float *)(act + qkv_off);
    __global const float2 *rope = (__global const float2 *)(act + rope_off);
    const int h = get_global_id(0), off = h * DK;
    const idx_t ko = (idx_t)pos * DMODEL + off;
    float q[AC_DP], qg[AC_DP];
    for (int i = 0; i < DK / 2; i++) {
        const int2 pr = rope_pair(i);
        const float2 cs = rope[(idx_t)pos * (DK / 2) + i];
        const float q0 = qkv[off + pr.x], q1 = qkv[off + pr.y];
        q[pr.x] = q0 * cs.x - q1 * cs.y;
        q[pr.y] = q1 * cs.x + q0 * cs.y;
        const float k0 = qkv[DMODEL + off + pr.x], k1 = qkv[DMODEL + off + pr.y];
        k_cache[ko + pr.x] = k0 * cs.x - k1 * cs.y;
        k_cache[ko + pr.y] = k1 * cs.x + k0 * cs.y;
        v_cache[ko + pr.x] = qkv[2 * DMODEL + off + pr.x];
        v_cache[ko + pr.y] = qkv[2 * DMODEL + off + pr.y];
    }
    apply_g_cpu(q, g + h * DK * DK, scale, qg);
    attend_cpu(qg, k_cache, v_cache, h, pos + 1, (__global float *)(act + att_off) + off);
}

/* Prefill attention on CPU devices: a work-group is one work-item taking one
 * (token, head) (attend_cpu). Its index comes from the global id (a global
 * work offset skips tokens). */
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void attention_prefill_cpu(__global const float *qg, __global const float *k_cache,
                           __global const float *v_cache, const int pos0, __global float *out)
{
    const int wg = get_global_id(0);
    const int t = wg / HEADS, h = wg % HEADS;
    const idx_t row = (idx_t)t * DMODEL + h * DK;
    float q[AC_DP];
#pragma unroll
    for (int i = 0; i < AC_DP; i++)
        q[i] = i < DK ? qg[row + i] : 0.0f;
    attend_cpu(q, k_cache, v_cache, h, pos0 + t + 1, out + row);
}
#endif
