/* libFuzzer target: the decode tuning file (pldr_decode_tuning_lookup of
 * src/formats/tuning_decode.c, the JSON `pldr tune --stage decode` writes
 * and every model load reads) from arbitrary bytes. The file is written where the lookup looks for the fixed
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
#include "formats/tuning_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
