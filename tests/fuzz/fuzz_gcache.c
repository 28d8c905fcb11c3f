/* libFuzzer target: reading a G-cache file (pldr_gcache_read: a safetensors
 * file with G_LM and optionally A and A_LM) from arbitrary bytes, through a
 * memfd opened again by path. A file that reads must give positive dims and
 * finite values in every tensor present, every element readable. */
#define _GNU_SOURCE /* memfd_create */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pldr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* gcache_file.c also installs G-caches in contexts: never called here */
pldr_status pldr_context_get_gcache(pldr_context *ctx, float *out)
{
    (void)ctx, (void)out;
    abort();
}
pldr_status pldr_context_set_external_g(pldr_context *ctx, const float *a, const float *a_lm, const float *g_lm)
{
    (void)ctx, (void)a, (void)a_lm, (void)g_lm;
    abort();
}
const pldr_config *pldr_model_config(const pldr_model *m)
{
    (void)m;
    abort();
}

static int mem_fd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (mem_fd < 0 && (mem_fd = memfd_create("gcache.safetensors", MFD_CLOEXEC)) < 0)
        abort();
    if (ftruncate(mem_fd, 0) != 0 || (size && pwrite(mem_fd, data, size, 0) != (ssize_t)size))
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", mem_fd);
    pldr_gcache g;
    if (pldr_gcache_read(path, &g) != PLDR_OK)
        return 0;
    if (g.n_layers <= 0 || g.n_heads <= 0 || g.head_dim <= 0 || !g.g_lm)
        abort();
    const size_t n = (size_t)g.n_layers * (size_t)g.n_heads * (size_t)g.head_dim * (size_t)g.head_dim;
    const float *arrays[3] = {g.a, g.a_lm, g.g_lm};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; arrays[k] && i < n; i++)
            if (!isfinite(arrays[k][i]))
                abort();
    pldr_gcache_free(&g);
    return 0;
}
