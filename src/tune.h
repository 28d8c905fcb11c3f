/* Per-device tuning of CLBlast's GEMM kernels for the shapes a model's
 * prefill runs (src/forward.c: row-major C[T, out] = X[T, in] . W[out, in]^T),
 * stored as JSON in the cache directory and applied when a device is opened.
 *
 * The search measures, for the model's GEMM shapes, CLBlast's defaults and
 * then explicit parameter sets of three kernel families: the indirect GEMM
 * kernel "Xgemm" with GEMMK=0 and with GEMMK=1, and the direct kernel
 * "XgemmDirect". The winner combines the best indirect and the best direct
 * set with the switch-over size (GemmRoutine XGEMM_MIN_INDIRECT_SIZE) that
 * minimises the total time over the shapes, each weighted by how many times
 * a forward calls it. The file records the times before and after. */
#ifndef PLDR_TUNE_H
#define PLDR_TUNE_H

#include <stddef.h>
#include <stdint.h>

#include "pldr.h"

struct pldr_ocl;

typedef enum pldr_tune_shapes {
    PLDR_TUNE_PREFILL = 0, /* the per-layer GEMMs of prefills of 16, 64 and 512 tokens */
    PLDR_TUNE_ALL = 1      /* also the final layer in 64-row chunks (all-rows logits) */
} pldr_tune_shapes;

/* One line of progress (no trailing newline). */
typedef void (*pldr_tune_log_fn)(const char *line, void *user);

typedef struct pldr_tune_params {
    const char *device;    /* device spec, see pldr_select_device */
    const char *cache_dir; /* directory of the tuning file (NULL: pldr_default_cache_dir()) */
    double budget_s;       /* wall-clock budget of the search, default 600 s; the
                              defaults are always measured */
    pldr_tune_shapes shapes;
    int max_candidates;    /* explicit parameter sets to try at most (< 0, the default: no limit) */
    uint64_t seed;         /* of the search; the same seed tries the same sets */
    pldr_tune_log_fn log;  /* progress (NULL: quiet) */
    void *log_user;
} pldr_tune_params;

typedef struct pldr_tune_shape {
    size_t m, n, k;
    double weight;    /* calls per forward, summed over the prompt lengths */
    char what[48];    /* e.g. "qkv T=512" */
    double before_s;  /* seconds per call with CLBlast's defaults */
    double after_s;   /* with the stored parameters (= before_s when none) */
    int direct_after; /* the stored threshold sends this shape to XgemmDirect */
} pldr_tune_shape;

typedef struct pldr_tune_result {
    char *path;             /* the tuning file written */
    int n_shapes;
    pldr_tune_shape *shapes;
    double total_before_s;  /* sum of weight x seconds */
    double total_after_s;
    int tuned;              /* 0: CLBlast's defaults were best; the file says so */
    int n_candidates;       /* parameter sets measured (defaults included) */
    double elapsed_s;
} pldr_tune_result;

pldr_tune_params pldr_tune_default_params(void);

/* Tunes for the model in model_dir (only its config.json is read) on the
 * device of params->device and writes the tuning file. result may be NULL;
 * otherwise free it with pldr_tune_result_free. Every measurement runs in a
 * child process of its own (on a CPU device CLBlast's kernels run in the
 * process's memory, and a faulty parameter set can corrupt, crash or hang
 * it), so this process neither uses OpenCL nor changes CLBlast's state; as
 * it forks, call it before this process uses OpenCL. */
pldr_status pldr_tune_run(const char *model_dir, const pldr_tune_params *params, pldr_tune_result *result);
void pldr_tune_result_free(pldr_tune_result *result);

/* `--tune` of generate/bench: when the device has no readable, valid tuning
 * file made for the GEMM shapes of model_dir (d_model, d_ff, vocab_size),
 * tunes for model_dir with pldr_tune_run (params NULL: defaults;
 * device, when not NULL, overrides params->device; "all": every device). Call it before this
 * process uses OpenCL (it forks), i.e. before loading the model, which then
 * applies the file. *tuned (may be NULL) is set to 1 when it tuned, 0 when a
 * file was already there or PLDR_TUNING=0. */
pldr_status pldr_tune_if_missing(const char *model_dir, const char *device, const pldr_tune_params *params,
                                 int *tuned);

/* The tuning file of a device: CACHE_DIR/tune-<16 hex digits>.json, keyed by
 * a hash of the device name, driver version, platform version and CLBlast
 * version. cache_dir NULL: the default cache directory. malloc'ed; NULL when
 * there is no cache directory or memory. */
char *pldr_tuning_path(const pldr_device_info *info, const char *cache_dir);

/* Reads and checks the device's tuning file and hands its parameters to
 * CLBlast (CLBlastOverrideParameters). cache_dir: NULL for the default, ""
 * for none. *n_sets (may be NULL) gets the number of kernel parameter sets
 * applied: 0 when there is no file or it keeps the defaults. A damaged, or
 * invalid for this device, file fails with PLDR_ERR_FORMAT and nothing
 * applied; PLDR_TUNING=0 in the environment skips the file. */
pldr_status pldr_tuning_load(struct pldr_ocl *ocl, const char *cache_dir, int *n_sets);

/* The startup hook (pldr_model_load, after the device is opened): as
 * pldr_tuning_load, but a damaged or unusable file is only reported as a
 * warning on stderr and ignored. Always returns PLDR_OK. */
pldr_status pldr_tuning_apply(struct pldr_ocl *ocl, const char *cache_dir);

/* `pldr tune --check`: opens the device, reads, checks and applies its
 * tuning file. *path and *summary (a description of what the file holds)
 * are malloc'ed; both are set on success, *path also on failure when known.
 * Ignores PLDR_TUNING. */
pldr_status pldr_tuning_check(const char *device, const char *cache_dir, char **path, char **summary);

#endif
