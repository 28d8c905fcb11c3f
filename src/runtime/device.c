/* OpenCL platforms and devices: listing, selection by spec, and opening. */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ocl.h"
#include "common/env.h"
#include "common/util.h"

const char *pldr_cl_error_name(cl_int err)
{
    switch (err) {
#define E(x) case x: return #x;
        E(CL_SUCCESS) E(CL_DEVICE_NOT_FOUND) E(CL_DEVICE_NOT_AVAILABLE) E(CL_COMPILER_NOT_AVAILABLE)
        E(CL_MEM_OBJECT_ALLOCATION_FAILURE) E(CL_OUT_OF_RESOURCES) E(CL_OUT_OF_HOST_MEMORY)
        E(CL_PROFILING_INFO_NOT_AVAILABLE) E(CL_MEM_COPY_OVERLAP) E(CL_IMAGE_FORMAT_MISMATCH)
        E(CL_IMAGE_FORMAT_NOT_SUPPORTED) E(CL_BUILD_PROGRAM_FAILURE) E(CL_MAP_FAILURE)
        E(CL_MISALIGNED_SUB_BUFFER_OFFSET) E(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
        E(CL_COMPILE_PROGRAM_FAILURE) E(CL_LINKER_NOT_AVAILABLE) E(CL_LINK_PROGRAM_FAILURE)
        E(CL_DEVICE_PARTITION_FAILED) E(CL_KERNEL_ARG_INFO_NOT_AVAILABLE) E(CL_INVALID_VALUE)
        E(CL_INVALID_DEVICE_TYPE) E(CL_INVALID_PLATFORM) E(CL_INVALID_DEVICE) E(CL_INVALID_CONTEXT)
        E(CL_INVALID_QUEUE_PROPERTIES) E(CL_INVALID_COMMAND_QUEUE) E(CL_INVALID_HOST_PTR)
        E(CL_INVALID_MEM_OBJECT) E(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR) E(CL_INVALID_IMAGE_SIZE)
        E(CL_INVALID_SAMPLER) E(CL_INVALID_BINARY) E(CL_INVALID_BUILD_OPTIONS) E(CL_INVALID_PROGRAM)
        E(CL_INVALID_PROGRAM_EXECUTABLE) E(CL_INVALID_KERNEL_NAME) E(CL_INVALID_KERNEL_DEFINITION)
        E(CL_INVALID_KERNEL) E(CL_INVALID_ARG_INDEX) E(CL_INVALID_ARG_VALUE) E(CL_INVALID_ARG_SIZE)
        E(CL_INVALID_KERNEL_ARGS) E(CL_INVALID_WORK_DIMENSION) E(CL_INVALID_WORK_GROUP_SIZE)
        E(CL_INVALID_WORK_ITEM_SIZE) E(CL_INVALID_GLOBAL_OFFSET) E(CL_INVALID_EVENT_WAIT_LIST)
        E(CL_INVALID_EVENT) E(CL_INVALID_OPERATION) E(CL_INVALID_GL_OBJECT) E(CL_INVALID_BUFFER_SIZE)
        E(CL_INVALID_MIP_LEVEL) E(CL_INVALID_GLOBAL_WORK_SIZE) E(CL_INVALID_PROPERTY)
        E(CL_INVALID_IMAGE_DESCRIPTOR) E(CL_INVALID_COMPILER_OPTIONS) E(CL_INVALID_LINKER_OPTIONS)
        E(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef E
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "unknown OpenCL error";
    }
}

pldr_status pldr_cl_fail(const pldr_ocl *ocl, cl_int err, const char *what)
{
    pldr_status st = PLDR_ERR_OPENCL;
    const char *hint = "";
    if (err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_RESOURCES ||
        err == CL_INVALID_BUFFER_SIZE) {
        st = PLDR_ERR_DEVICE_MEMORY;
        hint = " (try a smaller --ctx, or --dtype f16)";
    }
    return pldr_fail(st, "%s: %s (%d) on %s%s", what, pldr_cl_error_name(err), (int)err,
                     ocl && ocl->info.name[0] ? ocl->info.name : "the OpenCL device", hint);
}

static void get_str(cl_device_id d, cl_device_info what, char *buf, size_t n)
{
    buf[0] = '\0';
    if (clGetDeviceInfo(d, what, n, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[n - 1] = '\0';
}

static void fill_info(cl_platform_id p, cl_device_id d, pldr_device_info *info)
{
    clGetPlatformInfo(p, CL_PLATFORM_NAME, sizeof info->platform, info->platform, NULL);
    clGetPlatformInfo(p, CL_PLATFORM_VERSION, sizeof info->platform_version, info->platform_version, NULL);
    info->platform[sizeof info->platform - 1] = '\0';
    info->platform_version[sizeof info->platform_version - 1] = '\0';
    get_str(d, CL_DEVICE_NAME, info->name, sizeof info->name);
    get_str(d, CL_DEVICE_VENDOR, info->vendor, sizeof info->vendor);
    get_str(d, CL_DRIVER_VERSION, info->driver_version, sizeof info->driver_version);
    get_str(d, CL_DEVICE_OPENCL_C_VERSION, info->opencl_c_version, sizeof info->opencl_c_version);
    cl_device_type type = 0;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    snprintf(info->type, sizeof info->type, "%s",
             (type & CL_DEVICE_TYPE_GPU) ? "GPU"
             : (type & CL_DEVICE_TYPE_CPU) ? "CPU"
             : (type & CL_DEVICE_TYPE_ACCELERATOR) ? "ACCELERATOR" : "OTHER");
    cl_uint cu = 0;
    cl_ulong gmem = 0, maxalloc = 0, lmem = 0;
    size_t wg = 0;
    cl_bool unified = CL_FALSE;
    cl_uint base_align_bits = 0;
    clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
    clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof gmem, &gmem, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof maxalloc, &maxalloc, NULL);
    clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof lmem, &lmem, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    clGetDeviceInfo(d, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof base_align_bits, &base_align_bits, NULL);
    info->compute_units = cu;
    info->global_mem_bytes = gmem;
    info->max_alloc_bytes = maxalloc;
    info->local_mem_bytes = lmem;
    info->max_work_group_size = wg;
    info->unified_memory = unified == CL_TRUE;
    info->mem_base_align = base_align_bits / 8;
    char profile[32] = "";
    get_str(d, CL_DEVICE_PROFILE, profile, sizeof profile);
    info->int64 = strcmp(profile, "FULL_PROFILE") == 0;
    size_t n = 0;
    info->fp16 = info->fp64 = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &n) == CL_SUCCESS && n > 0) {
        char *ext = malloc(n + 1);
        if (ext && clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, n, ext, NULL) == CL_SUCCESS) {
            ext[n] = '\0';
            info->fp16 = strstr(ext, "cl_khr_fp16") != NULL;
            info->fp64 = strstr(ext, "cl_khr_fp64") != NULL;
            info->int64 |= strstr(ext, "cles_khr_int64") != NULL;
        }
        free(ext);
    }
}

/* Enumerates every (platform, device) pair; ids may be NULL. */
static pldr_status enumerate(pldr_device_info **infos, cl_platform_id **plats, cl_device_id **devs, int *count)
{
    *count = 0;
    *infos = NULL;
    if (plats)
        *plats = NULL;
    if (devs)
        *devs = NULL;
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &np);
    if (err == -1001 || np == 0)
        return pldr_fail(PLDR_ERR_NO_DEVICE, "no OpenCL platform found: install an OpenCL driver "
                                             "(e.g. Debian's pocl-opencl-icd for the CPU)");
    if (err != CL_SUCCESS)
        return pldr_cl_fail(NULL, err, "clGetPlatformIDs");
    cl_platform_id *pl = calloc(np, sizeof *pl);
    if (!pl)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    clGetPlatformIDs(np, pl, NULL);
    int cap = 0, n = 0;
    pldr_device_info *out = NULL;
    cl_platform_id *op = NULL;
    cl_device_id *od = NULL;
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        if (clGetDeviceIDs(pl[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || nd == 0)
            continue;
        cl_device_id *ds = calloc(nd, sizeof *ds);
        if (!ds)
            continue;
        clGetDeviceIDs(pl[p], CL_DEVICE_TYPE_ALL, nd, ds, NULL);
        for (cl_uint i = 0; i < nd; i++) {
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                pldr_device_info *ni = realloc(out, (size_t)cap * sizeof *ni);
                cl_platform_id *np2 = realloc(op, (size_t)cap * sizeof *np2);
                if (np2)
                    op = np2;
                cl_device_id *nd2 = realloc(od, (size_t)cap * sizeof *nd2);
                if (nd2)
                    od = nd2;
                if (!ni || !np2 || !nd2) {
                    free(ni ? ni : out);
                    free(op);
                    free(od);
                    free(ds);
                    free(pl);
                    return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
                }
                out = ni;
            }
            memset(&out[n], 0, sizeof out[n]);
            fill_info(pl[p], ds[i], &out[n]);
            out[n].index = n;
            out[n].platform_index = (int)p;
            out[n].device_index = (int)i;
            op[n] = pl[p];
            od[n] = ds[i];
            n++;
        }
        free(ds);
    }
    free(pl);
    if (n == 0) {
        free(out);
        free(op);
        free(od);
        return pldr_fail(PLDR_ERR_NO_DEVICE, "OpenCL platforms found, but no device");
    }
    *infos = out;
    *count = n;
    if (plats)
        *plats = op;
    else
        free(op);
    if (devs)
        *devs = od;
    else
        free(od);
    return PLDR_OK;
}

pldr_status pldr_list_devices(pldr_device_info **devices, int *count)
{
    return enumerate(devices, NULL, NULL, count);
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return 1;
    return n == 0;
}

static int parse_uint(const char *s, const char *end, long *out)
{
    if (s == end)
        return 0;
    long v = 0;
    for (const char *p = s; p < end; p++) {
        if (!isdigit((unsigned char)*p) || v > 1000000)
            return 0;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 1;
}

/* Index of the device a spec selects, or -1 with an error listing the devices. */
static int resolve(const char *spec, const pldr_device_info *infos, int n)
{
    if (!spec || !*spec)
        spec = pldr_env_device();
    if (!spec || !*spec) {
        for (int i = 0; i < n; i++)
            if (strcmp(infos[i].type, "GPU") == 0)
                return i;
        return 0;
    }
    const char *colon = strchr(spec, ':');
    long a, b;
    if (colon && parse_uint(spec, colon, &a) && parse_uint(colon + 1, spec + strlen(spec), &b)) {
        for (int i = 0; i < n; i++)
            if (infos[i].platform_index == a && infos[i].device_index == b)
                return i;
    } else if (!colon && parse_uint(spec, spec + strlen(spec), &a)) {
        if (a < n)
            return (int)a;
    } else if (strcasecmp(spec, "cpu") == 0 || strcasecmp(spec, "gpu") == 0 || strcasecmp(spec, "accelerator") == 0) {
        for (int i = 0; i < n; i++) /* a device type: the first device of that type */
            if (strcasecmp(infos[i].type, spec) == 0)
                return i;
    } else {
        for (int i = 0; i < n; i++) {
            char both[600];
            snprintf(both, sizeof both, "%s %s %s %s", infos[i].platform, infos[i].platform_version,
                     infos[i].vendor, infos[i].name);
            if (contains_nocase(both, spec))
                return i;
        }
    }
    char list[2048];
    size_t o = 0;
    for (int i = 0; i < n && o < sizeof list; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "\n  %d (%d:%d) %s: %s [%s]", i,
                              infos[i].platform_index, infos[i].device_index, infos[i].platform,
                              infos[i].name, infos[i].type);
    pldr_fail(PLDR_ERR_NO_DEVICE, "no OpenCL device matches '%s'; devices:%s", spec, list);
    return -1;
}

pldr_status pldr_select_device(const char *spec, pldr_device_info *out)
{
    pldr_device_info *infos;
    int n;
    pldr_status st = enumerate(&infos, NULL, NULL, &n);
    if (st != PLDR_OK)
        return st;
    int i = resolve(spec, infos, n);
    if (i >= 0)
        *out = infos[i];
    free(infos);
    return i >= 0 ? PLDR_OK : PLDR_ERR_NO_DEVICE;
}

pldr_status pldr_ocl_open(const char *spec, pldr_ocl *ocl)
{
    memset(ocl, 0, sizeof *ocl);
    pldr_device_info *infos;
    cl_platform_id *plats;
    cl_device_id *devs;
    int n;
    pldr_status st = enumerate(&infos, &plats, &devs, &n);
    if (st != PLDR_OK)
        return st;
    int i = resolve(spec, infos, n);
    if (i < 0) {
        free(infos);
        free(plats);
        free(devs);
        return PLDR_ERR_NO_DEVICE;
    }
    ocl->platform = plats[i];
    ocl->device = devs[i];
    ocl->info = infos[i];
    free(infos);
    free(plats);
    free(devs);
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)ocl->platform, 0};
    cl_int err;
    ocl->context = clCreateContext(props, 1, &ocl->device, NULL, NULL, &err);
    if (!ocl->context)
        return pldr_cl_fail(ocl, err, "creating an OpenCL context");
    ocl->queue = clCreateCommandQueue(ocl->context, ocl->device, 0, &err);
    if (!ocl->queue) {
        st = pldr_cl_fail(ocl, err, "creating a command queue");
        clReleaseContext(ocl->context);
        ocl->context = NULL;
        return st;
    }
    return PLDR_OK;
}

void pldr_ocl_close(pldr_ocl *ocl)
{
    if (ocl->queue) {
        clFinish(ocl->queue);
        clReleaseCommandQueue(ocl->queue);
    }
    if (ocl->context)
        clReleaseContext(ocl->context);
    ocl->queue = NULL;
    ocl->context = NULL;
}
