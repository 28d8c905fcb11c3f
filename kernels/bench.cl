/* Device memory bandwidth probes for pldr bench: a plain copy, every element
 * read once and written once, and a read of every element (one sum per
 * work-item is written, so that the reads are not optimised away). */
__kernel void copy_float4(__global const float4 *src, __global float4 *dst, const long n)
{
    for (long i = get_global_id(0); i < n; i += get_global_size(0))
        dst[i] = src[i];
}

__kernel void read_float4(__global const float4 *src, __global float *sums, const long n)
{
    float4 acc = (float4)(0.0f);
    for (long i = get_global_id(0); i < n; i += get_global_size(0))
        acc += src[i];
    sums[get_global_id(0)] = acc.x + acc.y + acc.z + acc.w;
}
