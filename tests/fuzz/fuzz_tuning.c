/* libFuzzer target: the decode tuning file (pldr_decode_tuning_lookup, the
 * JSON `pldr tune --stage decode` writes and every model load reads) from
 * arbitrary bytes. The file is written where the lookup looks for the fixed
 * device below; seeds match that device and model, so that the dtype
 * entries are reached. What the lookup returns must be a short list of
 * known key=value items in range (the engine range-checks them once more
 * against the device, src/model/model.c). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "runtime/ocl.h"
#include "tune/child.h"
#include "tune/tune.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* tune_decode.c also runs the tuning itself: none of that is called here */
#define NEVER abort()
pldr_status pldr_child_run(pldr_child_fn fn, void *ctx, void *reply, size_t size, double timeout_s, char *died,
                           size_t died_size)
{
    (void)fn, (void)ctx, (void)reply, (void)size, (void)timeout_s, (void)died, (void)died_size;
    NEVER;
}
pldr_status pldr_child_run_ok(pldr_child_fn fn, void *ctx, void *reply, size_t size, double timeout_s,
                              const char *what)
{
    (void)fn, (void)ctx, (void)reply, (void)size, (void)timeout_s, (void)what;
    NEVER;
}
pldr_status pldr_config_load(const char *path, pldr_config *c) { (void)path, (void)c; NEVER; }
pldr_context_params pldr_context_default_params(void) { NEVER; }
void pldr_context_free(pldr_context *c) { (void)c; NEVER; }
pldr_status pldr_context_new(pldr_model *m, const pldr_context_params *p, pldr_context **c)
{
    (void)m, (void)p, (void)c;
    NEVER;
}
void pldr_context_reset(pldr_context *c) { (void)c; NEVER; }
char *pldr_default_cache_dir(void) { NEVER; }
pldr_status pldr_eval_greedy(pldr_context *c, const int32_t *ids, int n, int32_t *next)
{
    (void)c, (void)ids, (void)n, (void)next;
    NEVER;
}
pldr_status pldr_list_devices(pldr_device_info **d, int *n) { (void)d, (void)n; NEVER; }
pldr_model_params pldr_model_default_params(void) { NEVER; }
void pldr_model_free(pldr_model *m) { (void)m; NEVER; }
pldr_status pldr_model_load(const char *dir, const pldr_model_params *p, pldr_model **m)
{
    (void)dir, (void)p, (void)m;
    NEVER;
}
pldr_status pldr_select_device(const char *spec, pldr_device_info *out) { (void)spec, (void)out; NEVER; }
int pldr_tuning_disabled(void) { return 0; }

static char dir[64];
static char *path;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pldr_device_info info;
    static pldr_config cfg;
    if (!path) {
        snprintf(dir, sizeof dir, "/tmp/pldr-fuzz-tuning.%ld", (long)getpid());
        if (pldr_mkdir_p(dir) != PLDR_OK)
            abort();
        strcpy(info.name, "fuzz device");
        strcpy(info.driver_version, "1.0");
        strcpy(info.platform_version, "OpenCL 1.2 fuzz");
        cfg.n_layers = 4, cfg.d_model = 192, cfg.n_heads = 3, cfg.head_dim = 64, cfg.d_ff = 512;
        cfg.vocab_size = 4096;
        path = pldr_decode_tuning_path(&info, dir);
        if (!path)
            abort();
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    char items[PLDR_WG_ITEMS_MAX];
    /* the warnings on a damaged file would flood the log */
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    int found = pldr_decode_tuning_lookup(&info, dir, &cfg, PLDR_DTYPE_F32, items, sizeof items);
    fclose(stderr);
    stderr = saved;
    if (!found)
        return 0;
    if (strlen(items) >= sizeof items)
        abort();
    static const char *const keys[] = {"gemv", "rows", "wrows", "att", "pf", "attpre"};
    for (const char *p = items; *p;) {
        const size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        if (!eq)
            abort();
        int known = 0;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            known |= (size_t)(eq - p) == strlen(keys[i]) && strncmp(p, keys[i], (size_t)(eq - p)) == 0;
        char *end;
        long v = strtol(eq + 1, &end, 10);
        if (!known || end != p + len || v < 0 || v > 65536)
            abort();
        p += len + (p[len] == ',');
    }
    return 0;
}
