/* The OpenCL runtime: one device, its context and in-order queue, and the
 * program built from the embedded (or on-disk) .cl sources. */
#ifndef PLDR_OCL_H
#define PLDR_OCL_H

#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>

#include "pldr.h"

typedef struct pldr_ocl {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    pldr_device_info info;
    int build_log; /* pldr_ocl_build hands the compiler's warnings to the log callback */
} pldr_ocl;

const char *pldr_cl_error_name(cl_int err);
/* Records "what: CL_ERROR_NAME (code) on DEVICE" and returns a status that
 * tells allocation failures from other OpenCL errors. */
pldr_status pldr_cl_fail(const pldr_ocl *ocl, cl_int err, const char *what);

/* Opens the device a spec selects (see pldr_select_device). */
pldr_status pldr_ocl_open(const char *spec, pldr_ocl *ocl);
void pldr_ocl_close(pldr_ocl *ocl);

/* Builds the kernels with the given -D options. Sources are the embedded
 * ones, or the files of kernel_dir when set (not ""). Binaries
 * are cached in cache_dir (NULL: default location; "": no cache).
 * *compiled (may be NULL): 1 when compiled from source, 0 when read from the
 * cache. */
pldr_status pldr_ocl_build(pldr_ocl *ocl, const char *options, const char *kernel_dir,
                           const char *cache_dir, pldr_progress_fn progress, void *progress_user,
                           cl_program *program, int *compiled);

#endif
