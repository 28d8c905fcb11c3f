/* Building the kernels: sources embedded at build time (or read from a
 * directory), compiled for the device with the model's dimensions as -D
 * defines, and cached as program binaries keyed by a hash of everything that
 * can change the result. A damaged or stale cache entry is ignored, and so
 * is any entry the driver does not take: the kernels are then compiled from
 * source and the entry rewritten. An entry is trusted only when this user
 * owns it, nobody else can write it, its length matches the file and a
 * 64-bit hash of its key and whole binary matches. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "runtime/kernels_embedded.h"
#include "runtime/ocl.h"
#include "common/env.h"
#include "common/util.h"

#define CACHE_MAGIC "PLDRBIN2"
#define CACHE_HEADER 40 /* magic 8, key 8, crc32 4, pad 4, binary length 8, hash 8 */

/* Concatenates the kernel sources in their fixed order. */
static pldr_status load_sources(const char *kernel_dir, char **out)
{
    size_t total = 1;
    char **texts = NULL;
    size_t n = 0;
    while (pldr_embedded_kernels[n].name)
        n++;
    pldr_status st = PLDR_OK;
    *out = NULL;
    if (kernel_dir) {
        texts = calloc(n, sizeof *texts);
        if (!texts)
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
        for (size_t i = 0; i < n && st == PLDR_OK; i++) {
            char *path = pldr_path_join(kernel_dir, pldr_embedded_kernels[i].name);
            unsigned char *data = NULL;
            size_t len;
            st = path ? pldr_read_file(path, 16u << 20, &data, &len)
                      : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
            texts[i] = (char *)data;
            free(path);
        }
    }
    for (size_t i = 0; i < n && st == PLDR_OK; i++)
        total += strlen(texts ? texts[i] : pldr_embedded_kernels[i].source) + 1;
    char *src = st == PLDR_OK ? malloc(total) : NULL;
    if (st == PLDR_OK && !src)
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    if (src) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            const char *t = texts ? texts[i] : pldr_embedded_kernels[i].source;
            size_t l = strlen(t);
            memcpy(src + o, t, l);
            o += l;
            src[o++] = '\n';
        }
        src[o] = '\0';
    }
    if (texts)
        for (size_t i = 0; i < n; i++)
            free(texts[i]);
    free(texts);
    *out = src;
    return st;
}

static uint64_t cache_key(const pldr_ocl *ocl, const char *src, const char *options)
{
    uint64_t h = PLDR_FNV_INIT;
    const char *parts[] = {src, options, ocl->info.name, ocl->info.driver_version, ocl->info.platform,
                           ocl->info.platform_version, PLDR_VERSION_STRING};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        h = pldr_fnv1a(h, parts[i], strlen(parts[i]) + 1);
    return h;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The hash that binds an entry's binary to its key (FNV-1a over both). */
static uint64_t entry_hash(uint64_t key, const unsigned char *bin, size_t len)
{
    unsigned char k[8];
    put_u64(k, key);
    return pldr_fnv1a(pldr_fnv1a(PLDR_FNV_INIT, k, 8), bin, len);
}

static cl_program try_cached(pldr_ocl *ocl, const char *path, uint64_t key, const char *options)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_uid != geteuid() || (sb.st_mode & 022))
        return NULL; /* missing, or not a file only this user can have written */
    unsigned char *data;
    size_t len;
    if (pldr_read_file(path, 512u << 20, &data, &len) != PLDR_OK) {
        pldr_clear_error();
        return NULL;
    }
    cl_program prog = NULL;
    if (len > CACHE_HEADER && memcmp(data, CACHE_MAGIC, 8) == 0 && get_u64(data + 8) == key &&
        get_u64(data + 24) == len - CACHE_HEADER) {
        uint32_t crc = (uint32_t)data[16] | (uint32_t)data[17] << 8 | (uint32_t)data[18] << 16 |
                       (uint32_t)data[19] << 24;
        const unsigned char *bin = data + CACHE_HEADER;
        size_t bin_len = len - CACHE_HEADER;
        if (crc32(0L, bin, (uInt)bin_len) == crc && entry_hash(key, bin, bin_len) == get_u64(data + 32)) {
            cl_int err, bin_status;
            prog = clCreateProgramWithBinary(ocl->context, 1, &ocl->device, &bin_len, &bin, &bin_status, &err);
            /* any failure from here on is a cache miss: compile from source */
            if (prog && (err != CL_SUCCESS || bin_status != CL_SUCCESS ||
                         clBuildProgram(prog, 1, &ocl->device, options, NULL, NULL) != CL_SUCCESS)) {
                clReleaseProgram(prog);
                prog = NULL;
            }
        }
    }
    free(data);
    pldr_clear_error();
    return prog;
}

/* Says once per process why compiled kernels cannot be kept. */
static void warn_cache_dir(const char *dir, const char *why)
{
    static _Atomic int warned;
    if (warned++)
        return;
    pldr_log(PLDR_LOG_WARN, "%s: %s; the kernels will be compiled at every start (set XDG_CACHE_HOME to a "
                    "writable directory)", dir, why);
}

/* Whether dir can hold cache entries; warns when not. */
static int cache_dir_usable(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        warn_cache_dir(dir, "the kernel cache path is a file, not a directory: remove or rename it");
        return 0;
    }
    if (pldr_mkdir_p(dir) != PLDR_OK) {
        char why[512];
        snprintf(why, sizeof why, "cannot create the kernel cache directory (%s)", pldr_last_error());
        pldr_clear_error();
        warn_cache_dir(dir, why);
        return 0;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        char why[256];
        snprintf(why, sizeof why, "the kernel cache directory cannot be written (%s)", strerror(errno));
        warn_cache_dir(dir, why);
        return 0;
    }
    return 1;
}

static void store_cached(pldr_ocl *ocl, cl_program prog, const char *dir, const char *path, uint64_t key)
{
    size_t bin_len = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof bin_len, &bin_len, NULL) != CL_SUCCESS ||
        bin_len == 0)
        return;
    if (!cache_dir_usable(dir))
        return;
    /* the temporary files of writers that were killed */
    pldr_remove_stale_temps(dir);
    unsigned char *buf = malloc(CACHE_HEADER + bin_len);
    if (!buf)
        return;
    unsigned char *bin = buf + CACHE_HEADER;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS) {
        memset(buf, 0, CACHE_HEADER);
        memcpy(buf, CACHE_MAGIC, 8);
        put_u64(buf + 8, key);
        uint32_t crc = (uint32_t)crc32(0L, bin, (uInt)bin_len);
        for (int i = 0; i < 4; i++)
            buf[16 + i] = (unsigned char)(crc >> (8 * i));
        put_u64(buf + 24, bin_len);
        put_u64(buf + 32, entry_hash(key, bin, bin_len));
        /* whatever sits at the entry's name (a FIFO, a link, a damaged entry)
         * is ours to replace: rename does not follow it */
        struct stat sb;
        if (lstat(path, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode))
            unlink(path);
        pldr_write_file_atomic(path, buf, CACHE_HEADER + bin_len);
    }
    free(buf);
    pldr_clear_error(); /* the cache is an optimisation: failing to write it is not an error */
}

pldr_status pldr_ocl_build(pldr_ocl *ocl, const char *options, const char *kernel_dir,
                           const char *cache_dir, pldr_progress_fn progress, void *progress_user,
                           cl_program *program, int *compiled)
{
    *program = NULL;
    if (compiled)
        *compiled = 0;
    if (kernel_dir && !*kernel_dir)
        kernel_dir = NULL;
    char *src = NULL;
    pldr_status st = load_sources(kernel_dir, &src);
    if (st != PLDR_OK)
        return st;
    uint64_t key = cache_key(ocl, src, options);
    char *dir = cache_dir ? (*cache_dir ? pldr_strdup(cache_dir) : NULL) : pldr_default_cache_dir();
    char *path = NULL;
    if (dir) {
        char name[40];
        snprintf(name, sizeof name, "%016llx.bin", (unsigned long long)key);
        path = pldr_path_join(dir, name);
    }
    cl_program prog = path ? try_cached(ocl, path, key, options) : NULL;
    if (!prog) {
        if (compiled)
            *compiled = 1;
        if (progress)
            progress("compiling kernels", 0, 1, progress_user);
        cl_int err;
        const char *s = src;
        prog = clCreateProgramWithSource(ocl->context, 1, &s, NULL, &err);
        if (!prog) {
            st = pldr_cl_fail(ocl, err, "clCreateProgramWithSource");
        } else if ((err = clBuildProgram(prog, 1, &ocl->device, options, NULL, NULL)) != CL_SUCCESS) {
            size_t log_len = 0;
            clGetProgramBuildInfo(prog, ocl->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &log_len);
            char *log = malloc(log_len + 1);
            if (log) {
                log[0] = '\0';
                clGetProgramBuildInfo(prog, ocl->device, CL_PROGRAM_BUILD_LOG, log_len, log, NULL);
                log[log_len] = '\0';
            }
            st = pldr_fail(PLDR_ERR_KERNEL_BUILD, "building the kernels for %s (%s) failed: %s\nbuild options: %s\nbuild log:\n%.3000s",
                           ocl->info.name, ocl->info.platform, pldr_cl_error_name(err), options,
                           log ? log : "(no log)");
            free(log);
            clReleaseProgram(prog);
            prog = NULL;
        } else {
            /* build_log (PLDR_BUILD_LOG=1): show the compiler's warnings (kernel development) */
            if (ocl->build_log) {
                size_t log_len = 0;
                clGetProgramBuildInfo(prog, ocl->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &log_len);
                char *log = malloc(log_len + 1);
                if (log && clGetProgramBuildInfo(prog, ocl->device, CL_PROGRAM_BUILD_LOG, log_len, log, NULL) ==
                               CL_SUCCESS) {
                    log[log_len] = '\0';
                    pldr_log(PLDR_LOG_INFO, "pldr: build log for %s:\n%s\n", ocl->info.name, log);
                }
                free(log);
            }
            if (path)
                store_cached(ocl, prog, dir, path, key);
        }
        if (progress && prog)
            progress("compiling kernels", 1, 1, progress_user);
    }
    free(path);
    free(dir);
    free(src);
    *program = prog;
    return prog ? PLDR_OK : st;
}
