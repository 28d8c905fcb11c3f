/* Reverses each work-group's block through local memory. With BARRIER 0 the
 * barrier between the local stores and the loads of other work-items' values
 * is missing: a data race that tests/parity/test_oclgrind.py expects the simulator
 * to report (the pass must be able to fail). */
__kernel void local_copy(__global const int *in, __global int *out)
{
    __local int tile[16];
    const int l = get_local_id(0), n = get_local_size(0);
    tile[l] = in[get_global_id(0)];
#if BARRIER
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    out[get_global_id(0)] = tile[n - 1 - l];
}

/* The hand-off the engine no longer uses: every work-group stores a partial
 * result, fences, and counts itself done with an atomic; the last one reads
 * the others' partials. OpenCL 1.2 does not order those plain stores before
 * the last work-group's loads. */
__kernel void last_group_sum(__global const int *in, __global int *part, __global int *count, __global int *out)
{
    __local int last;
    if (get_local_id(0) == 0) {
        part[get_group_id(0)] = in[get_global_id(0)];
        mem_fence(CLK_GLOBAL_MEM_FENCE);
        last = atomic_inc(count) == (int)get_num_groups(0) - 1;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (last && get_local_id(0) == 0) {
        int s = 0;
        for (int g = 0; g < (int)get_num_groups(0); g++)
            s += part[g];
        *out = s;
    }
}
