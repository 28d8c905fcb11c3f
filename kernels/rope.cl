/* Rotary position embedding, with the Q/K/V bias fused in.
 *
 * reference_rope (REFERENCE_ROPE=1) rotates interleaved pairs (x[2i], x[2i+1]);
 * otherwise the "rotate half" pairs (x[i], x[i + DK/2]). The angle of pair i at
 * position p is p * theta^(-2i/DK); rope[p][i] holds (cos, sin), computed on
 * the host in double precision. */
inline int2 rope_pair(const int i)
{
#if REFERENCE_ROPE
    return (int2)(2 * i, 2 * i + 1);
#else
    return (int2)(i, i + DK / 2);
#endif
}

/* Pair p of head h of projection row t (q | k | v, bias added): q rotated
 * into q_out's row t, k rotated and v as it is into the caches' row at ko
 * (an offset in floats). Prefill and batched decode share it. */
inline void rope_qkv_pair(__global const float *qkv, __global const float *bias, const float2 cs, const int t,
                          const int h, const int2 p, __global float *q_out, __global float *k_cache,
                          __global float *v_cache, const idx_t ko)
{
    const idx_t in = (idx_t)t * 3 * DMODEL + h * DK;
    const int off = h * DK;
    const float q0 = qkv[in + p.x] + bias[off + p.x], q1 = qkv[in + p.y] + bias[off + p.y];
    const float k0 = qkv[in + DMODEL + p.x] + bias[DMODEL + off + p.x];
    const float k1 = qkv[in + DMODEL + p.y] + bias[DMODEL + off + p.y];
    const idx_t qo = (idx_t)t * DMODEL + off;
    q_out[qo + p.x] = q0 * cs.x - q1 * cs.y;
    q_out[qo + p.y] = q1 * cs.x + q0 * cs.y;
    k_cache[ko + p.x] = k0 * cs.x - k1 * cs.y;
    k_cache[ko + p.y] = k1 * cs.x + k0 * cs.y;
    v_cache[ko + p.x] = qkv[in + 2 * DMODEL + p.x] + bias[2 * DMODEL + off + p.x];
    v_cache[ko + p.y] = qkv[in + 2 * DMODEL + p.y] + bias[2 * DMODEL + off + p.y];
}

/* Prefill: qkv is the raw [T, 3*DMODEL] projection output (q | k | v per row).
 * Writes rotated q to q_out [T, DMODEL] and rotated k and v to the caches at
 * positions pos0 .. pos0+T-1. Global size: T * HEADS * DK/2. */
__kernel void qkv_rope(__global const float *qkv, __global const float *bias, __global const float2 *rope,
                       __global float *q_out, __global float *k_cache, __global float *v_cache, const int pos0)
{
    const int gid = get_global_id(0);
    const int i = gid % (DK / 2);
    const int h = (gid / (DK / 2)) % HEADS;
    const int t = gid / (DK / 2 * HEADS);
    const int2 p = rope_pair(i);
    const float2 cs = rope[(idx_t)(pos0 + t) * (DK / 2) + i];
    rope_qkv_pair(qkv, bias, cs, t, h, p, q_out, k_cache, v_cache, (idx_t)(pos0 + t) * DMODEL + h * DK);
}
