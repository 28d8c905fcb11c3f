/* Shared definitions of every pldr kernel.
 *
 * The host passes the model's dimensions as -D defines (DMODEL, DK, HEADS,
 * FA, LN_EPS, ...), the work-group sizes it chose for the device, and
 * WEIGHT_HALF=1 when the large matrices are stored as IEEE half. Half storage
 * goes through vload_half, which needs no cl_khr_fp16: arithmetic stays f32. */

#if WEIGHT_HALF
#define WT half
#define LOAD_W(p, i) vload_half((i), (p))
#define LOAD_W4(p, i) vload_half4(0, (p) + (i))
#define LOAD_W16(p, i) vload_half16(0, (p) + (i))
#else
#define WT float
#define LOAD_W(p, i) ((p)[i])
#define LOAD_W4(p, i) vload4(0, (p) + (i))
#define LOAD_W16(p, i) vload16(0, (p) + (i))
#endif

/* Bits set in the context's flag words when a kernel meets a non-finite value. */
#define FLAG_NONFINITE 1

inline float silu(float x) { return x / (1.0f + exp(-x)); }

/* The sum of a float16's lanes (the CPU kernels' 16-wide accumulators). */
inline float hsum16(const float16 v)
{
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    return (b.x + b.y) + (b.z + b.w);
}

/* Sum over the work-group of one value per work-item; scratch holds
 * get_local_size(0) floats, a power of two. Every work-item must call it. */
inline float wg_sum(float v, __local float *scratch)
{
    const int lid = get_local_id(0);
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = get_local_size(0) / 2; s > 0; s >>= 1) {
        if (lid < s)
            scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float wg_max(float v, __local float *scratch)
{
    const int lid = get_local_id(0);
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = get_local_size(0) / 2; s > 0; s >>= 1) {
        if (lid < s)
            scratch[lid] = fmax(scratch[lid], scratch[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* Sum over the work-group of two values per work-item, in two steps (16
 * partial sums, then every work-item adds those) so that it costs three
 * barriers whatever the work-group size; scratch holds get_local_size(0)
 * float2, a power of two >= 16, or any size <= 16. */
inline float2 wg_sum2(float2 v, __local float2 *scratch)
{
    const int lid = get_local_id(0), wg = get_local_size(0);
    const int parts = wg < 16 ? wg : 16;
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid < parts) {
        float2 p = 0.0f;
        for (int i = lid; i < wg; i += parts)
            p += scratch[i];
        scratch[lid] = p;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float2 t = 0.0f;
    for (int i = 0; i < parts; i++)
        t += scratch[i];
    barrier(CLK_LOCAL_MEM_FENCE);
    return t;
}

/* LayerNorm of a row of n values held in local memory, in place:
 * y = (x - mean) / sqrt(var + eps) * w + b, variance without Bessel's
 * correction as in torch.nn.LayerNorm. One pass over the row: the sums are
 * taken of x - x[0], which keeps var = E[(x-x0)^2] - E[x-x0]^2 free of the
 * cancellation a large mean would cause. Returns mean + var so that callers
 * can detect a non-finite row. */
inline float ln_local(__local float *x, const int n, __global const float *w, __global const float *b,
                      __local float2 *scratch)
{
    const int lid = get_local_id(0), wg = get_local_size(0);
    const float x0 = x[0];
    float2 s = 0.0f;
    for (int i = lid; i < n; i += wg) {
        const float t = x[i] - x0;
        s += (float2)(t, t * t);
    }
    s = wg_sum2(s, scratch);
    const float m1 = s.x / n;
    const float mean = x0 + m1;
    const float var = fmax(s.y / n - m1 * m1, 0.0f);
    const float rstd = rsqrt(var + LN_EPS);
    for (int i = lid; i < n; i += wg)
        x[i] = (x[i] - mean) * rstd * w[i] + b[i];
    barrier(CLK_LOCAL_MEM_FENCE);
    return mean + var;
}

/* The best (largest value, lowest index among equals) of the pairs in
 * v[i], ix[i] over the work-group, left in v[0], ix[0]; the work-group size is
 * a power of two. Every work-item must call it after writing its pair. */
inline void wg_argmax(__local float *v, __local int *ix)
{
    const int lid = get_local_id(0);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = get_local_size(0) / 2; s > 0; s >>= 1) {
        if (lid < s && (v[lid + s] > v[lid] || (v[lid + s] == v[lid] && ix[lid + s] < ix[lid]))) {
            v[lid] = v[lid + s];
            ix[lid] = ix[lid + s];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

inline void flag_if_nonfinite(float v, __global int *flags, int index)
{
    if (!isfinite(v))
        atomic_or(flags + index, FLAG_NONFINITE);
}
