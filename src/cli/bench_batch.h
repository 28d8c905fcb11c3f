/* pldr bench -b (src/cli/bench_batch.c). */
#ifndef PLDR_CLI_BENCH_BATCH_H
#define PLDR_CLI_BENCH_BATCH_H

#include "pldr.h"

typedef struct bench_batch_args {
    const char *model_dir, *model_name, *gcache, *format, *plot; /* format md, json, csv or svg (to plot) */
    const pldr_device_info *devs;
    int n_dev;
    const long *b, *pp, *tg;
    int n_b, n_pp, n_tg;
    const int *caches, *dtypes;
    int n_caches, n_dtypes;
    long reps, seed;
} bench_batch_args;

int bench_batch_run(const bench_batch_args *a);

#endif
