/* The cost of a chain of kernels on an OpenCL GPU, without the host in the
 * way: what a decode step made of back-to-back kernels cannot go below.
 *
 * Every measurement enqueues a batch of launches of one kernel behind a user
 * event, releases the event and times the batch to clFinish, so the host's
 * enqueue cost is paid before the clock starts. Printed per launch:
 *   - an empty kernel (one work-group, and 132 x 256 work-items), and the same
 *     launches enqueued without the gate (the host's enqueue rate included);
 *   - a kernel that only reads N bytes (float4 loads, 4 or 8 in flight per
 *     work-item, W work-groups of 256), each launch reading a different
 *     window of a 512 MiB buffer so that the L2 cache does not serve it, for
 *     the byte counts of the 110M model's decode products (1, 3.2, 8.6, 9.6,
 *     17.1, 38.5 and 114.7 MB);
 *   - per set of five reads of a decode layer's sizes (9.6, 1, 3.2, 17.1 and
 *     8.6 MB): five launches of that kernel, against one launch whose
 *     work-groups take tickets from an atomic counter and play the five
 *     phases in order, each phase's work-groups issuing their first loads
 *     and then waiting until the previous phase's have all finished (safe
 *     without co-residency: a ticket is taken by a running work-group, so
 *     every lower ticket is running or done), and against the same launch
 *     without the waits.
 *
 * Build and run (needs the OpenCL headers and ICD loader):
 *   cc -O2 -o kernel-floor bench/kernel-floor.c -lOpenCL && ./kernel-floor [DEVICE-INDEX]
 * DEVICE-INDEX counts the GPUs of all platforms (default 0). */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        cl_int err_ = (x);                                                                         \
        if (err_ != CL_SUCCESS) {                                                                  \
            fprintf(stderr, "kernel-floor: %s failed (%d), line %d\n", #x, err_, __LINE__);      \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static const char *source =
    "__kernel void empty(__global float *a) { if (get_global_id(0) == 1u << 30) a[0] = 1.0f; }\n"
    "__kernel void read4(__global const float4 *w, const int n4, __global float *out, const long off) {\n"
    "    const int gs = get_global_size(0); int i = get_global_id(0); float4 acc = 0.0f; w += off;\n"
    "    for (; i + 3 * gs < n4; i += 4 * gs) acc += (w[i] + w[i + gs]) + (w[i + 2 * gs] + w[i + 3 * gs]);\n"
    "    for (; i < n4; i += gs) acc += w[i];\n"
    "    const float s = acc.x + acc.y + acc.z + acc.w; if (s == 12345.0f) out[0] = s; }\n"
    "__kernel void read8(__global const float4 *w, const int n4, __global float *out, const long off) {\n"
    "    const int gs = get_global_size(0); int i = get_global_id(0); float4 acc = 0.0f; w += off;\n"
    "    for (; i + 7 * gs < n4; i += 8 * gs)\n"
    "        acc += ((w[i] + w[i + gs]) + (w[i + 2 * gs] + w[i + 3 * gs]))\n"
    "             + ((w[i + 4 * gs] + w[i + 5 * gs]) + (w[i + 6 * gs] + w[i + 7 * gs]));\n"
    "    for (; i < n4; i += gs) acc += w[i];\n"
    "    const float s = acc.x + acc.y + acc.z + acc.w; if (s == 12345.0f) out[0] = s; }\n"
    "__kernel void phases(__global const float4 *w, __global int *ctr, __global float *out, const int n4a,\n"
    "                     const int n4b, const int n4c, const int n4d, const int n4e, const int per_phase,\n"
    "                     const long off, const int wait, const int cbase) {\n"
    "    __local int ticket;\n"
    "    const int lid = get_local_id(0);\n"
    "    ctr += cbase;\n"
    "    if (lid == 0) ticket = atomic_inc(ctr);\n"
    "    barrier(CLK_LOCAL_MEM_FENCE);\n"
    "    const int ph = ticket / per_phase, g = ticket % per_phase;\n"
    "    const int n4s[5] = {n4a, n4b, n4c, n4d, n4e};\n"
    "    long base = off;\n"
    "    for (int k = 0; k < ph; k++) base += n4s[k];\n"
    "    const int n4 = n4s[ph], gs = per_phase * 256;\n"
    "    int i = g * 256 + lid;\n"
    "    w += base;\n"
    "    float4 a0 = i < n4 ? w[i] : 0.0f, a1 = i + gs < n4 ? w[i + gs] : 0.0f;\n"
    "    float4 a2 = i + 2 * gs < n4 ? w[i + 2 * gs] : 0.0f, a3 = i + 3 * gs < n4 ? w[i + 3 * gs] : 0.0f;\n"
    "    if (wait && ph > 0) {\n"
    "        if (lid == 0)\n"
    "            while (atomic_add(ctr + ph, 0) < per_phase)\n"
    "                ;\n"
    "        barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);\n"
    "    }\n"
    "    float4 acc = (a0 + a1) + (a2 + a3);\n"
    "    for (i += 4 * gs; i < n4; i += gs) acc += w[i];\n"
    "    const float s = acc.x + acc.y + acc.z + acc.w; if (s == 12345.0f) out[0] = s;\n"
    "    mem_fence(CLK_GLOBAL_MEM_FENCE);\n"
    "    barrier(CLK_GLOBAL_MEM_FENCE);\n"
    "    if (lid == 0) atomic_inc(ctr + ph + 1);\n"
    "}\n";

static cl_context ctx;
static cl_command_queue queue;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Microseconds per launch of reps launches held behind a user event; with
 * n4 > 0, launch r reads window r of the buffer (argument 3, in float4). */
static double gated(cl_kernel k, size_t global, size_t local, int reps, long n4, long total4)
{
    cl_int err;
    cl_event gate = clCreateUserEvent(ctx, &err);
    CHECK(err);
    CHECK(clFinish(queue));
    const long windows = n4 > 0 && total4 / n4 > 0 ? total4 / n4 : 1;
    for (int r = 0; r < reps; r++) {
        if (n4 > 0) {
            const cl_long off = (r % windows) * n4;
            CHECK(clSetKernelArg(k, 3, sizeof off, &off));
        }
        CHECK(clEnqueueNDRangeKernel(queue, k, 1, NULL, &global, &local, r == 0, r == 0 ? &gate : NULL, NULL));
    }
    CHECK(clFlush(queue));
    const double t = now();
    CHECK(clSetUserEventStatus(gate, CL_COMPLETE));
    CHECK(clFinish(queue));
    const double us = (now() - t) / reps * 1e6;
    clReleaseEvent(gate);
    return us;
}

static double free_running(cl_kernel k, size_t global, size_t local, int reps)
{
    CHECK(clFinish(queue));
    const double t = now();
    for (int r = 0; r < reps; r++)
        CHECK(clEnqueueNDRangeKernel(queue, k, 1, NULL, &global, &local, 0, NULL, NULL));
    CHECK(clFinish(queue));
    return (now() - t) / reps * 1e6;
}

int main(int argc, char **argv)
{
    const int want = argc > 1 ? atoi(argv[1]) : 0;
    cl_platform_id platforms[16];
    cl_uint n_platforms = 0;
    CHECK(clGetPlatformIDs(16, platforms, &n_platforms));
    cl_device_id device = NULL;
    int seen = 0;
    for (cl_uint p = 0; p < n_platforms && !device; p++) {
        cl_device_id devs[16];
        cl_uint n = 0;
        if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_GPU, 16, devs, &n) != CL_SUCCESS)
            continue;
        for (cl_uint i = 0; i < n && !device; i++, seen++)
            if (seen == want)
                device = devs[i];
    }
    if (!device) {
        fprintf(stderr, "kernel-floor: no GPU number %d (%d found)\n", want, seen);
        return 1;
    }
    char name[256] = "";
    clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof name, name, NULL);
    printf("device: %s\n", name);
    cl_int err;
    ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    CHECK(err);
    queue = clCreateCommandQueue(ctx, device, 0, &err);
    CHECK(err);
    cl_program prog = clCreateProgramWithSource(ctx, 1, &source, NULL, &err);
    CHECK(err);
    CHECK(clBuildProgram(prog, 1, &device, "", NULL, NULL));
    const size_t big = (size_t)512 << 20;
    cl_mem w = clCreateBuffer(ctx, CL_MEM_READ_WRITE, big, NULL, &err);
    CHECK(err);
    cl_mem out = clCreateBuffer(ctx, CL_MEM_READ_WRITE, 4096, NULL, &err);
    CHECK(err);
    const float half = 0.5f, zero = 0.0f;
    CHECK(clEnqueueFillBuffer(queue, w, &half, sizeof half, 0, big, 0, NULL, NULL));
    CHECK(clEnqueueFillBuffer(queue, out, &zero, sizeof zero, 0, 4096, 0, NULL, NULL));
    cl_kernel empty = clCreateKernel(prog, "empty", &err);
    CHECK(err);
    CHECK(clSetKernelArg(empty, 0, sizeof out, &out));
    cl_kernel readk[2];
    const char *names[2] = {"read4", "read8"};
    for (int i = 0; i < 2; i++) {
        readk[i] = clCreateKernel(prog, names[i], &err);
        CHECK(err);
        CHECK(clSetKernelArg(readk[i], 0, sizeof w, &w));
        CHECK(clSetKernelArg(readk[i], 2, sizeof out, &out));
    }
    const int reps = 400;
    for (int round = 0; round < 2; round++)
        printf("empty kernel: gated %.2f us (1 work-group), %.2f us (132 x 256); not gated %.2f us\n",
               gated(empty, 256, 256, reps, 0, 0), gated(empty, 33792, 256, reps, 0, 0),
               free_running(empty, 33792, 256, reps));
    const double mb[] = {1.0, 3.2, 8.6, 9.6, 17.1, 38.5, 114.7};
    const int groups[] = {132, 264, 528, 1056, 2112};
    for (size_t m = 0; m < sizeof mb / sizeof mb[0]; m++) {
        const int n4 = (int)(mb[m] * 1e6 / 16);
        const double bytes = (double)n4 * 16;
        for (int i = 0; i < 2; i++) {
            CHECK(clSetKernelArg(readk[i], 1, sizeof n4, &n4));
            printf("read %6.1f MB, %s:", mb[m], names[i]);
            for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
                const double us = gated(readk[i], (size_t)groups[g] * 256, 256, mb[m] > 30 ? 50 : reps, n4,
                                        (long)(big / 16));
                printf("  %d wg %.2f us (%.0f GB/s)", groups[g], us, bytes / us * 1e-3);
            }
            printf("\n");
        }
    }
    /* a decode layer's five reads: five launches, or one launch of ticketed phases */
    const double layer_mb[5] = {9.6, 1.0, 3.2, 17.1, 8.6};
    int layer_n4[5];
    long set4 = 0;
    for (int k = 0; k < 5; k++) {
        layer_n4[k] = (int)(layer_mb[k] * 1e6 / 16);
        set4 += layer_n4[k];
    }
    const long sets = (long)(big / 16) / set4;
    const int set_reps = 200;
    cl_mem counters = clCreateBuffer(ctx, CL_MEM_READ_WRITE, (size_t)set_reps * 8 * sizeof(cl_int), NULL, &err);
    CHECK(err);
    cl_kernel phases = clCreateKernel(prog, "phases", &err);
    CHECK(err);
    CHECK(clSetKernelArg(phases, 0, sizeof w, &w));
    CHECK(clSetKernelArg(phases, 1, sizeof counters, &counters));
    CHECK(clSetKernelArg(phases, 2, sizeof out, &out));
    for (int k = 0; k < 5; k++)
        CHECK(clSetKernelArg(phases, 3 + k, sizeof(int), &layer_n4[k]));
    const int per_phase_sizes[3] = {264, 528, 1056};
    for (int round = 0; round < 2; round++)
        for (int ps = 0; ps < 3; ps++) {
            const int per_phase = per_phase_sizes[ps];
            const size_t local = 256, one = (size_t)per_phase * 256, all = 5 * one;
            /* five launches per set */
            cl_event gate = clCreateUserEvent(ctx, &err);
            CHECK(err);
            CHECK(clFinish(queue));
            for (int r = 0; r < set_reps; r++) {
                cl_long off = (r % sets) * set4;
                for (int k = 0; k < 5; k++) {
                    CHECK(clSetKernelArg(readk[0], 1, sizeof(int), &layer_n4[k]));
                    CHECK(clSetKernelArg(readk[0], 3, sizeof off, &off));
                    CHECK(clEnqueueNDRangeKernel(queue, readk[0], 1, NULL, &one, &local, r == 0 && k == 0,
                                                 r == 0 && k == 0 ? &gate : NULL, NULL));
                    off += layer_n4[k];
                }
            }
            CHECK(clFlush(queue));
            double t = now();
            CHECK(clSetUserEventStatus(gate, CL_COMPLETE));
            CHECK(clFinish(queue));
            const double five = (now() - t) / set_reps * 1e6;
            clReleaseEvent(gate);
            double one_launch[2];
            for (int wait = 0; wait < 2; wait++) {
                const cl_int zero_i = 0;
                CHECK(clEnqueueFillBuffer(queue, counters, &zero_i, sizeof zero_i, 0,
                                          (size_t)set_reps * 8 * sizeof(cl_int), 0, NULL, NULL));
                CHECK(clFinish(queue));
                gate = clCreateUserEvent(ctx, &err);
                CHECK(err);
                for (int r = 0; r < set_reps; r++) {
                    const cl_long off = (r % sets) * set4;
                    const int cbase = r * 8;
                    CHECK(clSetKernelArg(phases, 8, sizeof(int), &per_phase));
                    CHECK(clSetKernelArg(phases, 9, sizeof off, &off));
                    CHECK(clSetKernelArg(phases, 10, sizeof(int), &wait));
                    CHECK(clSetKernelArg(phases, 11, sizeof(int), &cbase));
                    CHECK(clEnqueueNDRangeKernel(queue, phases, 1, NULL, &all, &local, r == 0, r == 0 ? &gate : NULL,
                                                 NULL));
                }
                CHECK(clFlush(queue));
                t = now();
                CHECK(clSetUserEventStatus(gate, CL_COMPLETE));
                CHECK(clFinish(queue));
                one_launch[wait] = (now() - t) / set_reps * 1e6;
                clReleaseEvent(gate);
            }
            printf("a layer's reads (39.5 MB), %d work-groups each: 5 launches %.1f us; 1 launch, 5 ticketed "
                   "phases in order %.1f us; the same without waiting %.1f us\n",
                   per_phase, five, one_launch[1], one_launch[0]);
        }
    return 0;
}
