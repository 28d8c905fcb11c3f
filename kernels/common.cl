/* Shared definitions of every pldr kernel.
 *
 * The host passes the model's dimensions as -D defines (DMODEL, DK, HEADS,
 * FA, LN_EPS, ...), the work-group sizes it chose for the device, and
 * WEIGHT_TYPE, the storage of the large matrices (pldr_dtype): 0 float32,
 * 1 IEEE half, 2 bfloat16 (the upper half of a float32), 3 Q8_0, 4 Q4_0.
 * Arithmetic stays f32 for all of them; half goes through vload_half, which
 * needs no cl_khr_fp16.
 *
 * Q8_0 and Q4_0 (llama.cpp's blocks) split every row into blocks of 32
 * weights with one scale d each (half, or float with SCALE_F32): Q8_0 holds x = d * q for a signed byte
 * q; Q4_0 x = d * (q - 8) for a 4-bit q, two per byte (byte j of a block
 * holds weights j, low nibble, and j + 16, high nibble). Quants and scales
 * are two arrays ("structure of arrays", so that neighbouring work-items read
 * neighbouring bytes): the weight at element offset i of a matrix whose rows
 * are padded to a multiple of 32 elements is at quants[i] (Q4_0: the nibble
 * of i in block i / 32) with scale ws[i / 32]. Every kernel that reads a
 * matrix takes its scales as ws (any buffer where the type has none).
 *
 * WPTR(w, i) and SPTR(ws, i) move both pointers to element offset i (a
 * multiple of 32 for the quantized types); LOAD_W(w, ws, i) reads element i,
 * LOAD_W4 and LOAD_W16 elements i .. i+3 and i .. i+15 (i a multiple of 4,
 * resp. 16). */
#define WEIGHT_QUANT (WEIGHT_TYPE >= 3)

/* Index arithmetic (element and byte offsets into buffers): 64-bit where the
 * device has 64-bit integers (the full profile requires them; the embedded
 * profile only with cles_khr_int64), else 32-bit, and then the host refuses
 * every buffer over INT_MAX bytes (src/model/model.c, pldr_buffer), so that
 * no offset into one exceeds INT_MAX. Kernel arguments are 32-bit. */
#if INDEX64
typedef long idx_t;
#else
typedef int idx_t;
#endif
#if WEIGHT_TYPE == 0
#define WT float
#elif WEIGHT_TYPE == 1
#define WT half
#elif WEIGHT_TYPE == 2
#define WT ushort
#elif WEIGHT_TYPE == 3
#define WT char
#else
#define WT uchar
#endif

#if WEIGHT_TYPE == 4
#define WPTR(w, i) ((w) + ((i) >> 1))
#else
#define WPTR(w, i) ((w) + (i))
#endif
/* The scales (ST): half, or float where SCALE_F32 is set (CPUs, whose
 * compilers convert half in software: a dozen scalar instructions a block);
 * WSCALE_B(s, b) reads block b's scale, WSCALE(s, i) element i's. */
#if SCALE_F32
#define ST float
#define WSCALE_B(s, b) ((s)[b])
#else
#define ST half
#define WSCALE_B(s, b) vload_half((b), (s))
#endif
#if WEIGHT_QUANT
#define SPTR(s, i) ((s) + ((i) >> 5))
#define WSCALE(s, i) WSCALE_B((s), (i) >> 5)
#else
#define SPTR(s, i) (s)
#endif

#if WEIGHT_TYPE == 0
#define LOAD_W(p, s, i) ((p)[i])
#define LOAD_W4(p, s, i) vload4(0, (p) + (i))
#define LOAD_W16(p, s, i) vload16(0, (p) + (i))
#elif WEIGHT_TYPE == 1
#define LOAD_W(p, s, i) vload_half((i), (p))
#define LOAD_W4(p, s, i) vload_half4(0, (p) + (i))
#define LOAD_W16(p, s, i) vload_half16(0, (p) + (i))
#elif WEIGHT_TYPE == 2
#define LOAD_W(p, s, i) as_float((uint)(p)[i] << 16)
#define LOAD_W4(p, s, i) as_float4(convert_uint4(vload4(0, (p) + (i))) << 16)
#define LOAD_W16(p, s, i) as_float16(convert_uint16(vload16(0, (p) + (i))) << 16)
#elif WEIGHT_TYPE == 3
#define LOAD_W(p, s, i) ((float)(p)[i] * WSCALE(s, i))
#define LOAD_W4(p, s, i) (convert_float4(vload4(0, (p) + (i))) * WSCALE(s, i))
#define LOAD_W16(p, s, i) (convert_float16(vload16(0, (p) + (i))) * WSCALE(s, i))
#else
/* the byte of element i (block i / 32, position i % 16) and its nibble */
#define Q4_BYTE(i) ((((i) >> 5) << 4) + ((i) & 15))
#define Q4_SHIFT(i) ((uchar)(((i) >> 2) & 4))
#define LOAD_W(p, s, i) ((float)((int)(((p)[Q4_BYTE(i)] >> Q4_SHIFT(i)) & 15) - 8) * WSCALE(s, i))
#define LOAD_W4(p, s, i)                                                                           \
    ((convert_float4((vload4(0, (p) + Q4_BYTE(i)) >> Q4_SHIFT(i)) & (uchar)15) - 8.0f) * WSCALE(s, i))
#define LOAD_W16(p, s, i)                                                                          \
    ((convert_float16((vload16(0, (p) + Q4_BYTE(i)) >> Q4_SHIFT(i)) & (uchar)15) - 8.0f) * WSCALE(s, i))
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
