/* Device memory bandwidth probe for pldr bench: a plain copy, every element
 * read once and written once. */
__kernel void copy_float4(__global const float4 *src, __global float4 *dst, const uint n)
{
    for (uint i = get_global_id(0); i < n; i += get_global_size(0))
        dst[i] = src[i];
}
