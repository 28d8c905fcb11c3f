/* Per-device tuning of CLBlast's GEMM kernels for the shapes a model's
 * prefill runs (src/engine/forward.c: row-major C[T, out] = X[T, in] . W[out, in]^T),
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

/* PLDR_TUNING=0 (or off, no) in the environment: no tuning file is applied. */
int pldr_tuning_disabled(void);

/* `pldr tune --check`: opens the device, reads, checks and applies its
 * tuning file. *path and *summary (a description of what the file holds)
 * are malloc'ed; both are set on success, *path also on failure when known.
 * Ignores PLDR_TUNING. */
pldr_status pldr_tuning_check(const char *device, const char *cache_dir, char **path, char **summary);

/* ---- The engine's decode work-group shapes (src/tune/tune_decode.c) ----
 * The kernels' work-group shapes that decoding depends on (PLDR_WG's keys
 * gemv, rows, wrows, att; pf on the one-lane form; and the attpre switch) are
 * tried around the device's defaults, one key
 * at a time, each candidate timed on greedy decode steps of the model itself
 * in a process of its own (at least reps runs after a warm-up run, and at
 * least half a second of timed steps); a candidate is kept when it is at
 * least PLDR_DECODE_MARGIN faster than the best so far and decodes the same
 * tokens as the defaults, and the winner only when it still beats the
 * defaults by that margin measured again, one after the other. The choice goes to CACHE_DIR/decode-<16 hex digits>.json
 * (per device, per weight dtype, for the model's dimensions), which
 * pldr_model_load applies before $PLDR_WG. */
#define PLDR_WG_ITEMS_MAX 128
#define PLDR_DECODE_MARGIN 0.03

typedef struct pldr_tune_decode_params {
    const char *device;    /* device spec, see pldr_select_device */
    const char *cache_dir; /* NULL: pldr_default_cache_dir() */
    pldr_dtype dtype;      /* weight storage tuned for (default f32) */
    int prompt;            /* tokens of the prompt before the timed steps (default 64,
                              fewer when the context is shorter) */
    int steps;             /* greedy decode steps timed per run (default 32) */
    int reps;              /* timed runs per candidate after a warm-up, the fastest
                              counts (default 3) */
    pldr_tune_log_fn log;  /* progress (NULL: quiet) */
    void *log_user;
} pldr_tune_decode_params;

typedef struct pldr_tune_decode_candidate {
    char items[PLDR_WG_ITEMS_MAX]; /* e.g. "gemv=256,rows=8,wrows=2,att=64" */
    double tok_s;                  /* 0 when dropped */
    char note[160];                /* why it was dropped, or "" */
} pldr_tune_decode_candidate;

typedef struct pldr_tune_decode_result {
    char *path;                         /* the file written */
    char defaults[PLDR_WG_ITEMS_MAX];   /* the device's defaults, as items */
    char chosen[PLDR_WG_ITEMS_MAX];     /* the shapes stored ("" when the defaults stay) */
    double tok_s_defaults, tok_s_chosen;
    int n_candidates;                   /* the defaults first */
    pldr_tune_decode_candidate *candidates;
    double elapsed_s;
} pldr_tune_decode_result;

pldr_tune_decode_params pldr_tune_decode_default_params(void);
/* Tunes for the checkpoint in model_dir (its weights are loaded) and writes
 * the file; other dtypes' entries of a file for the same device and model
 * dimensions are kept. Forks; as pldr_tune_run, call it before this process
 * uses OpenCL. result may be NULL; else free it with
 * pldr_tune_decode_result_free. */
pldr_status pldr_tune_decode(const char *model_dir, const pldr_tune_decode_params *params,
                             pldr_tune_decode_result *result);
void pldr_tune_decode_result_free(pldr_tune_decode_result *result);

/* `--tune` of generate/bench: tunes (pldr_tune_decode) when the device has no
 * entry for the model's dimensions and params->dtype; params->device "all":
 * every device. Forks: call it before this process uses OpenCL. *tuned (may
 * be NULL) is set to 1 when it tuned. PLDR_TUNING=0: does nothing. */
pldr_status pldr_tune_decode_if_missing(const char *model_dir, const pldr_tune_decode_params *params, int *tuned);

/* CACHE_DIR/decode-<hash of the device name, driver and platform>.json. */
char *pldr_decode_tuning_path(const pldr_device_info *info, const char *cache_dir);

/* The items the device's decode tuning file holds for a model of cfg's
 * dimensions and weight dtype into items (empty when it keeps the defaults).
 * Returns 1 when found; 0 when there is no file, no entry for these
 * dimensions and dtype, PLDR_TUNING=0, or cache_dir is "". A damaged file is
 * reported as a warning on stderr and ignored (0). */
int pldr_decode_tuning_lookup(const pldr_device_info *info, const char *cache_dir, const pldr_config *cfg,
                              pldr_dtype dtype, char *items, size_t size);

/* `pldr tune --check` for the decode file: *path and *summary malloc'ed (path
 * may be NULL without a cache directory). Fails with PLDR_ERR_FORMAT on a
 * damaged file; a missing file is described in the summary. */
pldr_status pldr_decode_tuning_describe(const pldr_device_info *info, const char *cache_dir, char **path,
                                        char **summary);

#endif
