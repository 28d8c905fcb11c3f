/* The stored tuning files that pldr_model_load reads and applies: CLBlast's
 * GEMM parameters (src/formats/tuning_gemm.c) and the engine's decode
 * work-group shapes (src/formats/tuning_decode.c), written by the tuners of
 * src/tune/ (pldr.h, "Tuning"). Readers and the file formats only: this
 * depends on the runtime (the device, CLBlast) and common helpers, never on
 * the model, the engine or the tuners. */
#ifndef PLDR_TUNING_FILE_H
#define PLDR_TUNING_FILE_H

#include <clblast_c.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/ocl.h"
#include "pldr.h"

/* ---- CLBlast's GEMM parameters: CACHE_DIR/tune-<hash>.json ---- */
#define PLDR_GEMM_TUNING_FORMAT "pldr-clblast-tuning"
#define PLDR_GEMM_TUNING_VERSION 1
/* XGEMM_MIN_INDIRECT_SIZE that sends every GEMM to the direct kernel:
 * CLBlast compares m*n*k with its cube in 64 bits. */
#define PLDR_GEMM_ALL_DIRECT 1000000u
/* CLBlast before 1.6.3 computes wrong results with GEMMK=1 when MWG != NWG
 * (CLBlast issues #340 and #542, fixed by pull request #543). */
#define PLDR_GEMMK1_UNEQUAL_TILES \
    (CLBLAST_VERSION_MAJOR * 10000 + CLBLAST_VERSION_MINOR * 100 + CLBLAST_VERSION_PATCH >= 10603)
#define PLDR_CLBLAST_STR2(x) #x
#define PLDR_CLBLAST_STR(x) PLDR_CLBLAST_STR2(x)
#define PLDR_CLBLAST_VERSION_STRING                                                                        \
    PLDR_CLBLAST_STR(CLBLAST_VERSION_MAJOR) "." PLDR_CLBLAST_STR(CLBLAST_VERSION_MINOR) "." PLDR_CLBLAST_STR( \
        CLBLAST_VERSION_PATCH)

/* The parameters of CLBlast's kernels Xgemm and XgemmDirect, in the order of
 * pldr_xgemm_names and pldr_direct_names; GemmRoutine has one,
 * pldr_gemm_threshold_name. */
enum { XP_GEMMK, XP_KREG, XP_KWG, XP_KWI, XP_MDIMA, XP_MDIMC, XP_MWG, XP_NDIMB, XP_NDIMC, XP_NWG,
       XP_SA, XP_SB, XP_STRM, XP_STRN, XP_VWM, XP_VWN, XP_COUNT };
enum { DP_KWID, DP_MDIMAD, DP_MDIMCD, DP_NDIMBD, DP_NDIMCD, DP_PADA, DP_PADB, DP_VWMD, DP_VWND, DP_WGD,
       DP_COUNT };
extern const char *const pldr_xgemm_names[XP_COUNT];
extern const char *const pldr_direct_names[DP_COUNT];
extern const char *const pldr_gemm_threshold_name;

/* The device's limits a parameter set must respect. */
typedef struct pldr_gemm_limits {
    uint64_t local_mem;
    size_t max_wg, max_item0, max_item1;
} pldr_gemm_limits;
void pldr_gemm_limits_get(const pldr_ocl *o, pldr_gemm_limits *lim);
/* NULL when an Xgemm (XgemmDirect) set is valid for the device, else the
 * broken rule. */
const char *pldr_xgemm_invalid(const size_t *v, const pldr_gemm_limits *lim);
const char *pldr_xgemm_direct_invalid(const size_t *v, const pldr_gemm_limits *lim);
/* CLBlastOverrideParameters for the device, single precision. */
CLBlastStatusCode pldr_clblast_override(const pldr_ocl *o, const char *kernel, int n, const char *const *names,
                                        const size_t *values);

/* The parameters a tuning file holds, checked. */
typedef struct pldr_gemm_tuning {
    int has_x, has_d, has_thr;
    size_t x[XP_COUNT], d[DP_COUNT], thr;
} pldr_gemm_tuning;
/* Reads the device's file into *t; *found = 0 when there is none (or
 * cache_dir is ""). *path_out (may be NULL) gets the file's name. */
pldr_status pldr_gemm_tuning_read(const pldr_ocl *o, const char *cache_dir, pldr_gemm_tuning *t, int *found,
                                  char **path_out);
/* Hands t's sets to CLBlast; *n_sets (may be NULL) gets how many. */
pldr_status pldr_gemm_tuning_set(const pldr_ocl *o, const pldr_gemm_tuning *t, int *n_sets);

/* Reads and checks the device's tuning file and hands its parameters to
 * CLBlast (CLBlastOverrideParameters). cache_dir: NULL for the default, ""
 * for none. *n_sets (may be NULL) gets the number of kernel parameter sets
 * applied: 0 when there is no file or it keeps the defaults. A damaged, or
 * invalid for this device, file fails with PLDR_ERR_FORMAT and nothing
 * applied. (PLDR_TUNING=0 is pldr_model_params.tuning: the load does not
 * call this then.) */
pldr_status pldr_tuning_load(pldr_ocl *ocl, const char *cache_dir, int *n_sets);

/* The startup hook (pldr_model_load, after the device is opened): as
 * pldr_tuning_load, but a damaged or unusable file is only reported as a
 * warning (pldr_log_set) and ignored. Always returns PLDR_OK. */
pldr_status pldr_tuning_apply(pldr_ocl *ocl, const char *cache_dir);

/* ---- The decode work-group shapes: CACHE_DIR/decode-<hash>.json ---- */
#define PLDR_DECODE_TUNING_FORMAT "pldr-decode-tuning"
#define PLDR_DECODE_TUNING_VERSION 1

/* The model dimensions an entry is made for, as the file stores them. */
json_t *pldr_decode_tuning_dims(const pldr_config *cfg);
/* Reads and checks the file at path: *root is NULL when there is none. */
pldr_status pldr_decode_tuning_read(const char *path, const pldr_device_info *info, json_t **root);

/* The items the device's decode tuning file holds for a model of cfg's
 * dimensions and weight dtype into items (empty when it keeps the defaults).
 * Returns 1 when found; 0 when there is no file, no entry for these
 * dimensions and dtype, or cache_dir is "". A damaged file is
 * reported as a warning (pldr_log_set) and ignored (0). */
int pldr_decode_tuning_lookup(const pldr_device_info *info, const char *cache_dir, const pldr_config *cfg,
                              pldr_dtype dtype, char *items, size_t size);

#endif
