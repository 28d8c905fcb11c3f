/* pldr devices: every OpenCL platform and device the ICD loader sees. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_devices(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: pldr devices\n\n"
                   "Lists every OpenCL platform and device: index (and platform:device), platform,\n"
                   "name, type, compute units, global memory, max allocation, OpenCL C version,\n"
                   "fp16/fp64 support, and whether the device shares the host's memory (unified:\n"
                   "there float32 weights are read in place from the checkpoint's mapping where\n"
                   "their alignment allows, see PLDR_ZERO_COPY). Select one with --device SPEC or\n"
                   "PLDR_DEVICE=SPEC, where SPEC is an index, platform:device, or a case-insensitive\n"
                   "name substring.\n");
            return EXIT_OK;
        }
        return cli_usage_error("devices", "unknown option '%s'", argv[i]);
    }
    pldr_device_info *devs;
    int n;
    pldr_status st = pldr_list_devices(&devs, &n);
    if (st != PLDR_OK)
        return cli_report(st);
    pldr_device_info def;
    int def_index = -1;
    if (pldr_select_device(NULL, &def) == PLDR_OK)
        def_index = def.index;
    int cw = 8; /* the whole OpenCL C version, however long */
    for (int i = 0; i < n; i++)
        if ((int)strlen(devs[i].opencl_c_version) > cw)
            cw = (int)strlen(devs[i].opencl_c_version);
    printf("%-5s %-5s %-28s %-36s %-5s %4s %10s %10s %-*s %4s %4s %7s\n", "index", "p:d", "platform", "name",
           "type", "CUs", "memory", "max alloc", cw, "OpenCL C", "fp16", "fp64", "unified");
    for (int i = 0; i < n; i++) {
        const pldr_device_info *d = &devs[i];
        char pd[16];
        snprintf(pd, sizeof pd, "%d:%d", d->platform_index, d->device_index);
        printf("%-5d %-5s %-28.28s %-36.36s %-5s %4u %8.1fGi %8.1fGi %-*s %4s %4s %7s%s\n", d->index, pd,
               d->platform, d->name, d->type, d->compute_units, d->global_mem_bytes / 1073741824.0,
               d->max_alloc_bytes / 1073741824.0, cw, d->opencl_c_version, d->fp16 ? "yes" : "no",
               d->fp64 ? "yes" : "no", d->unified_memory ? "yes" : "no", d->index == def_index ? "  (default)" : "");
    }
    free(devs);
    return EXIT_OK;
}
