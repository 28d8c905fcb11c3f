/* What the tuners (src/tune/tune.c, src/tune/tune_decode.c) and the model
 * load share besides their public calls (pldr.h, "Tuning"): the readers of
 * the stored tuning files. */
#ifndef PLDR_TUNE_H
#define PLDR_TUNE_H

#include <stddef.h>
#include <stdint.h>

#include "pldr.h"

struct pldr_ocl;

#define PLDR_DECODE_MARGIN 0.03

/* Reads and checks the device's tuning file and hands its parameters to
 * CLBlast (CLBlastOverrideParameters). cache_dir: NULL for the default, ""
 * for none. *n_sets (may be NULL) gets the number of kernel parameter sets
 * applied: 0 when there is no file or it keeps the defaults. A damaged, or
 * invalid for this device, file fails with PLDR_ERR_FORMAT and nothing
 * applied; PLDR_TUNING=0 in the environment skips the file. */
pldr_status pldr_tuning_load(struct pldr_ocl *ocl, const char *cache_dir, int *n_sets);

/* The startup hook (pldr_model_load, after the device is opened): as
 * pldr_tuning_load, but a damaged or unusable file is only reported as a
 * warning (pldr_log_set) and ignored. Always returns PLDR_OK. */
pldr_status pldr_tuning_apply(struct pldr_ocl *ocl, const char *cache_dir);

/* PLDR_TUNING=0 (or off, no) in the environment: no tuning file is applied. */
int pldr_tuning_disabled(void);

/* The items the device's decode tuning file holds for a model of cfg's
 * dimensions and weight dtype into items (empty when it keeps the defaults).
 * Returns 1 when found; 0 when there is no file, no entry for these
 * dimensions and dtype, PLDR_TUNING=0, or cache_dir is "". A damaged file is
 * reported as a warning (pldr_log_set) and ignored (0). */
int pldr_decode_tuning_lookup(const pldr_device_info *info, const char *cache_dir, const pldr_config *cfg,
                              pldr_dtype dtype, char *items, size_t size);

#endif
