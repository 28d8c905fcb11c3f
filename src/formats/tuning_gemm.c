/* The GEMM tuning file (see tuning_file.h): CLBlast's parameter sets that
 * `pldr tune` chose for a device, read, checked against the device and
 * CLBlast's rules, and handed to CLBlast when a model is loaded. */
#include "config.h"

#include <clblast_c.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/tuning_file.h"
#include "common/env.h"
#include "common/util.h"

#define TUNE_MAX_BYTES (4u << 20)

const char *const pldr_xgemm_names[XP_COUNT] = {"GEMMK", "KREG", "KWG", "KWI", "MDIMA", "MDIMC",
                                                  "MWG", "NDIMB", "NDIMC", "NWG", "SA", "SB",
                                                  "STRM", "STRN", "VWM", "VWN"};
const char *const pldr_direct_names[DP_COUNT] = {"KWID", "MDIMAD", "MDIMCD", "NDIMBD", "NDIMCD",
                                                   "PADA", "PADB", "VWMD", "VWND", "WGD"};
const char *const pldr_gemm_threshold_name = "XGEMM_MIN_INDIRECT_SIZE";

void pldr_gemm_limits_get(const pldr_ocl *o, pldr_gemm_limits *lim)
{
    lim->local_mem = o->info.local_mem_bytes;
    lim->max_wg = o->info.max_work_group_size;
    lim->max_item0 = lim->max_item1 = lim->max_wg;
    size_t items[3] = {0, 0, 0};
    cl_uint dims = 0;
    if (clGetDeviceInfo(o->device, CL_DEVICE_MAX_WORK_ITEM_DIMENSIONS, sizeof dims, &dims, NULL) == CL_SUCCESS &&
        dims >= 2 && dims <= 3 &&
        clGetDeviceInfo(o->device, CL_DEVICE_MAX_WORK_ITEM_SIZES, dims * sizeof(size_t), items, NULL) == CL_SUCCESS) {
        lim->max_item0 = items[0];
        lim->max_item1 = items[1];
    }
}

static int multiple(size_t a, size_t b) { return b != 0 && a % b == 0; }
static int vector_width(size_t v) { return v == 1 || v == 2 || v == 4 || v == 8 || v == 16; }
static int flag(size_t v) { return v <= 1; }

/* NULL when an Xgemm set is valid for the device, else the broken rule. The
 * rules are those of CLBlast's kernels and tuner: integer tiles per thread
 * and per loader, the KWG loop unrolled by KWI, the local memory and the
 * work-group size of the device. */
const char *pldr_xgemm_invalid(const size_t *v, const pldr_gemm_limits *lim)
{
    static const int positive[] = {XP_KREG, XP_KWG, XP_KWI, XP_MDIMA, XP_MDIMC, XP_MWG, XP_NDIMB, XP_NDIMC, XP_NWG};
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
        if (v[positive[i]] < 1 || v[positive[i]] > 4096)
            return "a tile size outside [1, 4096]";
    if (v[XP_GEMMK] > 1)
        return "GEMMK is neither 0 nor 1";
    if (!flag(v[XP_SA]) || !flag(v[XP_SB]) || !flag(v[XP_STRM]) || !flag(v[XP_STRN]))
        return "SA, SB, STRM and STRN must be 0 or 1";
    if (!vector_width(v[XP_VWM]) || !vector_width(v[XP_VWN]))
        return "VWM and VWN must be 1, 2, 4, 8 or 16";
    if (!multiple(v[XP_KWG], v[XP_KWI]))
        return "KWG must be a multiple of KWI";
    if (!multiple(v[XP_MWG], v[XP_MDIMC] * v[XP_VWM]) || !multiple(v[XP_MWG], v[XP_MDIMA] * v[XP_VWM]))
        return "MWG must be a multiple of MDIMC*VWM and MDIMA*VWM";
    if (!multiple(v[XP_NWG], v[XP_NDIMC] * v[XP_VWN]) || !multiple(v[XP_NWG], v[XP_NDIMB] * v[XP_VWN]))
        return "NWG must be a multiple of NDIMC*VWN and NDIMB*VWN";
    if (v[XP_GEMMK] == 0) {
        size_t threads = v[XP_MDIMC] * v[XP_NDIMC];
        if (!multiple(threads, v[XP_MDIMA]) || !multiple(threads, v[XP_NDIMB]))
            return "MDIMC*NDIMC must be a multiple of MDIMA and NDIMB";
        if (!multiple(v[XP_KWG], threads / v[XP_MDIMA]) || !multiple(v[XP_KWG], threads / v[XP_NDIMB]))
            return "KWG must be a multiple of KDIMA and KDIMB";
        if (v[XP_KREG] != 1)
            return "KREG must be 1 with GEMMK 0";
    } else {
        if (v[XP_KWG] != 1 || v[XP_KWI] != 1 || v[XP_SA] || v[XP_SB] || v[XP_STRM] || v[XP_STRN])
            return "GEMMK 1 needs KWG=KWI=1 and SA=SB=STRM=STRN=0";
        if (v[XP_MDIMA] != v[XP_MDIMC] || v[XP_NDIMB] != v[XP_NDIMC])
            return "GEMMK 1 needs MDIMA=MDIMC and NDIMB=NDIMC";
        if (!multiple(v[XP_KREG], v[XP_VWN]))
            return "KREG must be a multiple of VWN";
        if (!PLDR_GEMMK1_UNEQUAL_TILES && v[XP_MWG] != v[XP_NWG])
            return "GEMMK 1 needs MWG=NWG before CLBlast 1.6.3";
    }
    uint64_t local = 4 * ((uint64_t)v[XP_SA] * v[XP_KWG] * v[XP_MWG] + (uint64_t)v[XP_SB] * v[XP_KWG] * v[XP_NWG]);
    if (local > lim->local_mem)
        return "more local memory than the device has";
    if (v[XP_MDIMC] * v[XP_NDIMC] > lim->max_wg || v[XP_MDIMC] > lim->max_item0 || v[XP_NDIMC] > lim->max_item1)
        return "a work-group larger than the device allows";
    return NULL;
}

const char *pldr_xgemm_direct_invalid(const size_t *v, const pldr_gemm_limits *lim)
{
    static const int positive[] = {DP_KWID, DP_MDIMAD, DP_MDIMCD, DP_NDIMBD, DP_NDIMCD, DP_WGD};
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
        if (v[positive[i]] < 1 || v[positive[i]] > 4096)
            return "a tile size outside [1, 4096]";
    if (!flag(v[DP_PADA]) || !flag(v[DP_PADB]))
        return "PADA and PADB must be 0 or 1";
    if (!vector_width(v[DP_VWMD]) || !vector_width(v[DP_VWND]))
        return "VWMD and VWND must be 1, 2, 4, 8 or 16";
    const size_t wgd = v[DP_WGD], threads = v[DP_MDIMCD] * v[DP_NDIMCD];
    if (!multiple(wgd, v[DP_KWID]))
        return "WGD must be a multiple of KWID";
    if (!multiple(wgd, v[DP_MDIMCD] * v[DP_VWMD]) || !multiple(wgd, v[DP_MDIMAD] * v[DP_VWMD]))
        return "WGD must be a multiple of MDIMCD*VWMD and MDIMAD*VWMD";
    if (!multiple(wgd, v[DP_NDIMCD] * v[DP_VWND]) || !multiple(wgd, v[DP_NDIMBD] * v[DP_VWND]))
        return "WGD must be a multiple of NDIMCD*VWND and NDIMBD*VWND";
    if (!multiple(threads, v[DP_MDIMAD]) || !multiple(threads, v[DP_NDIMBD]) ||
        !multiple(wgd, threads / v[DP_MDIMAD]) || !multiple(wgd, threads / v[DP_NDIMBD]))
        return "WGD must be a multiple of KDIMAD and KDIMBD";
    uint64_t local = 4 * ((uint64_t)wgd * (wgd + v[DP_PADA]) + (uint64_t)wgd * (wgd + v[DP_PADB]));
    if (local > lim->local_mem)
        return "more local memory than the device has";
    if (threads > lim->max_wg || v[DP_MDIMCD] > lim->max_item0 || v[DP_NDIMCD] > lim->max_item1)
        return "a work-group larger than the device allows";
    return NULL;
}

CLBlastStatusCode pldr_clblast_override(const pldr_ocl *o, const char *kernel, int n, const char *const *names,
                                         const size_t *values)
{
    const char *nm[XP_COUNT];
    size_t val[XP_COUNT];
    for (int i = 0; i < n; i++) {
        nm[i] = names[i];
        val[i] = values[i];
    }
    return CLBlastOverrideParameters(o->device, kernel, CLBlastPrecisionSingle, (size_t)n, nm, val);
}

/* ------------------------------------------------------------ key and path */

static uint64_t device_key(const pldr_device_info *info)
{
    const char *parts[] = {info->name, info->driver_version, info->platform_version,
                           "clblast " PLDR_CLBLAST_VERSION_STRING};
    uint64_t h = PLDR_FNV_INIT;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        h = pldr_fnv1a(h, parts[i], strlen(parts[i]) + 1);
    return h;
}

char *pldr_tuning_path(const pldr_device_info *info, const char *cache_dir)
{
    if (!info)
        return NULL;
    char *dir = cache_dir ? pldr_strdup(cache_dir) : pldr_default_cache_dir();
    if (!dir)
        return NULL;
    char name[48];
    snprintf(name, sizeof name, "tune-%016llx.json", (unsigned long long)device_key(info));
    char *path = pldr_path_join(dir, name);
    free(dir);
    return path;
}

/* ------------------------------------------------------------ reading */


static pldr_status bad(const char *path, const char *what)
{
    return pldr_fail(PLDR_ERR_FORMAT, "%s: %s", path, what);
}

/* Reads the object obj of exactly the n given names into values. */
static pldr_status read_set(const char *path, const char *kernel, json_t *obj, int n, const char *const *names,
                            size_t *values)
{
    char msg[160];
    if (!json_is_object(obj)) {
        snprintf(msg, sizeof msg, "parameters of %s are not an object", kernel);
        return bad(path, msg);
    }
    if (json_object_size(obj) != (size_t)n) {
        snprintf(msg, sizeof msg, "%s has %zu parameters, expected %d", kernel, json_object_size(obj), n);
        return bad(path, msg);
    }
    for (int i = 0; i < n; i++) {
        json_t *v = json_object_get(obj, names[i]);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (json_int_t)PLDR_GEMM_ALL_DIRECT) {
            snprintf(msg, sizeof msg, "%s.%s is missing or not an integer in range", kernel, names[i]);
            return bad(path, msg);
        }
        values[i] = (size_t)json_integer_value(v);
    }
    return PLDR_OK;
}

static int same_string(json_t *obj, const char *key, const char *want)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) && strcmp(json_string_value(v), want) == 0;
}

static pldr_status parse_tuning(const char *path, const unsigned char *text, size_t len, const pldr_ocl *o,
                                pldr_gemm_tuning *t)
{
    memset(t, 0, sizeof *t);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", path, jerr.line, jerr.text);
    pldr_status st = PLDR_OK;
    json_t *dev = json_object_get(root, "device"), *params = json_object_get(root, "parameters");
    json_t *ver = json_object_get(root, "version");
    if (!json_is_object(root) || !same_string(root, "format", PLDR_GEMM_TUNING_FORMAT))
        st = bad(path, "not a pldr tuning file");
    else if (!json_is_integer(ver) || json_integer_value(ver) != PLDR_GEMM_TUNING_VERSION)
        st = bad(path, "unsupported version");
    else if (!json_is_object(dev) || !same_string(dev, "name", o->info.name) ||
             !same_string(dev, "driver_version", o->info.driver_version) ||
             !same_string(dev, "platform_version", o->info.platform_version))
        st = bad(path, "made for another device or driver");
    else if (!same_string(root, "clblast", PLDR_CLBLAST_VERSION_STRING))
        st = bad(path, "made for another CLBlast version");
    else if (!json_is_object(params))
        st = bad(path, "no parameters object");
    const char *key;
    json_t *val;
    if (st == PLDR_OK) {
        json_object_foreach(params, key, val) {
            if (strcmp(key, "Xgemm") == 0) {
                st = read_set(path, key, val, XP_COUNT, pldr_xgemm_names, t->x);
                t->has_x = 1;
            } else if (strcmp(key, "XgemmDirect") == 0) {
                st = read_set(path, key, val, DP_COUNT, pldr_direct_names, t->d);
                t->has_d = 1;
            } else if (strcmp(key, "GemmRoutine") == 0) {
                st = read_set(path, key, val, 1, &pldr_gemm_threshold_name, &t->thr);
                t->has_thr = 1;
            } else {
                st = bad(path, "unknown kernel in parameters");
            }
            if (st != PLDR_OK)
                break;
        }
    }
    json_decref(root);
    if (st != PLDR_OK)
        return st;
    pldr_gemm_limits lim;
    pldr_gemm_limits_get(o, &lim);
    const char *why;
    if (t->has_x && (why = pldr_xgemm_invalid(t->x, &lim)) != NULL)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: invalid Xgemm parameters (%s)", path, why);
    if (t->has_d && (why = pldr_xgemm_direct_invalid(t->d, &lim)) != NULL)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: invalid XgemmDirect parameters (%s)", path, why);
    return PLDR_OK;
}

pldr_status pldr_gemm_tuning_read(const pldr_ocl *o, const char *cache_dir, pldr_gemm_tuning *t, int *found, char **path_out)
{
    *found = 0;
    if (path_out)
        *path_out = NULL;
    memset(t, 0, sizeof *t);
    if (cache_dir && !*cache_dir)
        return PLDR_OK;
    char *path = pldr_tuning_path(&o->info, cache_dir);
    if (!path)
        return PLDR_OK; /* no cache directory: nothing to read */
    struct stat sb;
    if (stat(path, &sb) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        free(path);
        return PLDR_OK;
    }
    unsigned char *text = NULL;
    size_t len = 0;
    pldr_status st = pldr_read_file(path, TUNE_MAX_BYTES, &text, &len);
    if (st == PLDR_OK)
        st = parse_tuning(path, text, len, o, t);
    free(text);
    if (st == PLDR_OK)
        *found = 1;
    if (path_out)
        *path_out = path;
    else
        free(path);
    return st;
}

pldr_status pldr_gemm_tuning_set(const pldr_ocl *o, const pldr_gemm_tuning *t, int *n_sets)
{
    /* the threshold last: a failure before it leaves each kernel with a
     * complete, valid set (its own or CLBlast's) */
    struct {
        int has;
        const char *kernel;
        int n;
        const char *const *names;
        const size_t *v;
    } sets[] = {{t->has_x, "Xgemm", XP_COUNT, pldr_xgemm_names, t->x},
                {t->has_d, "XgemmDirect", DP_COUNT, pldr_direct_names, t->d},
                {t->has_thr, "GemmRoutine", 1, &pldr_gemm_threshold_name, &t->thr}};
    int n = 0;
    pldr_status st = PLDR_OK;
    for (size_t i = 0; i < sizeof sets / sizeof sets[0] && st == PLDR_OK; i++) {
        if (!sets[i].has)
            continue;
        CLBlastStatusCode s = pldr_clblast_override(o, sets[i].kernel, sets[i].n, sets[i].names, sets[i].v);
        if (s != CLBlastSuccess)
            st = pldr_fail(PLDR_ERR_FORMAT, "CLBlastOverrideParameters(%s) failed with status %d", sets[i].kernel,
                           (int)s);
        else
            n++;
    }
    if (n_sets)
        *n_sets = n;
    return st;
}

pldr_status pldr_tuning_load(struct pldr_ocl *ocl, const char *cache_dir, int *n_sets)
{
    if (n_sets)
        *n_sets = 0;
    if (!ocl)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_tuning_load: NULL device");
    pldr_gemm_tuning t;
    int found;
    char *path = NULL;
    pldr_status st = pldr_gemm_tuning_read(ocl, cache_dir, &t, &found, &path);
    if (st == PLDR_OK && found) {
        st = pldr_gemm_tuning_set(ocl, &t, n_sets);
        if (st != PLDR_OK)
            pldr_fail_prefix(st, "%s", path);
    }
    free(path);
    return st;
}

pldr_status pldr_tuning_apply(struct pldr_ocl *ocl, const char *cache_dir)
{
    pldr_status st = pldr_tuning_load(ocl, cache_dir, NULL);
    if (st != PLDR_OK) {
        pldr_log(PLDR_LOG_WARN, "ignoring the GEMM tuning file: %s (run 'pldr tune' to rewrite it)",
                pldr_last_error());
        pldr_clear_error();
    }
    return PLDR_OK;
}
