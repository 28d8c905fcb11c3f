/* The decode tuning file (see tuning_file.h): the work-group shapes that
 * `pldr tune --stage decode` chose for a device, per weight dtype and for a
 * model's dimensions, as PLDR_WG items that pldr_model_load applies. */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/tuning_file.h"
#include "common/env.h"
#include "common/util.h"

#define DECODE_MAX_BYTES (1u << 20)

/* The keys a decode tuning file may set (PLDR_WG's names, src/model/model.c);
 * attpre is a switch (0 or 1). */
static const char *const tuned_keys[] = {"gemv", "rows", "wrows", "att", "pf", "attpre"};

char *pldr_decode_tuning_path(const pldr_device_info *info, const char *cache_dir)
{
    if (!info || (cache_dir && !*cache_dir))
        return NULL;
    const char *parts[] = {info->name, info->driver_version, info->platform_version};
    uint64_t h = PLDR_FNV_INIT;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        h = pldr_fnv1a(h, parts[i], strlen(parts[i]) + 1);
    char *dir = cache_dir ? pldr_strdup(cache_dir) : pldr_default_cache_dir();
    if (!dir)
        return NULL;
    char name[48];
    snprintf(name, sizeof name, "decode-%016llx.json", (unsigned long long)h);
    char *path = pldr_path_join(dir, name);
    free(dir);
    return path;
}

/* Whether items is a list of key=value over tuned_keys with values in
 * [1, 65536], or 0 and 1 for attpre ("" is valid: the defaults). */
static int valid_items(const char *items)
{
    for (const char *p = items; *p;) {
        const size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        if (!eq)
            return 0;
        int known = 0;
        for (size_t i = 0; i < sizeof tuned_keys / sizeof tuned_keys[0]; i++)
            known |= (size_t)(eq - p) == strlen(tuned_keys[i]) && strncmp(p, tuned_keys[i], (size_t)(eq - p)) == 0;
        const int is_switch = eq - p == 6 && strncmp(p, "attpre", 6) == 0;
        char *end;
        const long v = strtol(eq + 1, &end, 10);
        if (!known || end == eq + 1 || end != p + len || v < (is_switch ? 0 : 1) || v > (is_switch ? 1 : 65536))
            return 0;
        p += len + (p[len] == ',');
    }
    return 1;
}

static int same_string(json_t *obj, const char *key, const char *want)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) && strcmp(json_string_value(v), want) == 0;
}

json_t *pldr_decode_tuning_dims(const pldr_config *c)
{
    return json_pack("{s:i, s:i, s:i, s:i, s:i, s:i}", "n_layers", c->n_layers, "d_model", c->d_model, "n_heads",
                     c->n_heads, "head_dim", c->head_dim, "d_ff", c->d_ff, "vocab_size", c->vocab_size);
}

pldr_status pldr_decode_tuning_read(const char *path, const pldr_device_info *info, json_t **root)
{
    *root = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0 && (errno == ENOENT || errno == ENOTDIR))
        return PLDR_OK;
    unsigned char *text = NULL;
    size_t len = 0;
    pldr_status st = pldr_read_file(path, DECODE_MAX_BYTES, &text, &len);
    if (st != PLDR_OK)
        return st;
    json_error_t jerr;
    json_t *r = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!r)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", path, jerr.line, jerr.text);
    json_t *dev = json_object_get(r, "device"), *ver = json_object_get(r, "version");
    const char *why = NULL;
    if (!json_is_object(r) || !same_string(r, "format", PLDR_DECODE_TUNING_FORMAT))
        why = "not a pldr decode tuning file";
    else if (!json_is_integer(ver) || json_integer_value(ver) != PLDR_DECODE_TUNING_VERSION)
        why = "unsupported version";
    else if (!json_is_object(dev) || !same_string(dev, "name", info->name) ||
             !same_string(dev, "driver_version", info->driver_version) ||
             !same_string(dev, "platform_version", info->platform_version))
        why = "made for another device or driver";
    else if (!json_is_object(json_object_get(r, "model")) || !json_is_object(json_object_get(r, "dtypes")))
        why = "no model or dtypes object";
    if (why) {
        json_decref(r);
        return pldr_fail(PLDR_ERR_FORMAT, "%s: %s", path, why);
    }
    const char *key;
    json_t *val;
    json_object_foreach(json_object_get(r, "dtypes"), key, val) {
        json_t *wg = json_object_get(val, "work_groups");
        if ((strcmp(key, "f32") != 0 && strcmp(key, "f16") != 0) || !json_is_object(val) || !json_is_string(wg) ||
            !valid_items(json_string_value(wg)) || strlen(json_string_value(wg)) >= PLDR_WG_ITEMS_MAX) {
            /* the message first: key belongs to r */
            st = pldr_fail(PLDR_ERR_FORMAT, "%s: dtype entry '%.16s' is not {\"work_groups\": \"KEY=N,...\"} "
                                            "over gemv, rows, wrows, att, pf and attpre", path, key);
            json_decref(r);
            return st;
        }
    }
    *root = r;
    return PLDR_OK;
}

int pldr_decode_tuning_lookup(const pldr_device_info *info, const char *cache_dir, const pldr_config *cfg,
                              pldr_dtype dtype, char *items, size_t size)
{
    if (size)
        items[0] = '\0';
    if (cache_dir && !*cache_dir)
        return 0;
    char *path = pldr_decode_tuning_path(info, cache_dir);
    if (!path)
        return 0;
    json_t *root = NULL;
    pldr_status st = pldr_decode_tuning_read(path, info, &root);
    free(path);
    if (st != PLDR_OK) {
        pldr_log(PLDR_LOG_WARN, "ignoring the decode tuning file: %s (run 'pldr tune --stage decode' to "
                        "rewrite it)", pldr_last_error());
        pldr_clear_error();
        return 0;
    }
    int found = 0;
    json_t *dims = pldr_decode_tuning_dims(cfg);
    if (root && dims && json_equal(json_object_get(root, "model"), dims)) {
        json_t *e = json_object_get(json_object_get(root, "dtypes"), pldr_dtype_name(dtype));
        const char *wg = e ? json_string_value(json_object_get(e, "work_groups")) : NULL;
        if (wg && strlen(wg) < size) {
            memcpy(items, wg, strlen(wg) + 1);
            found = 1;
        }
    }
    json_decref(dims);
    json_decref(root);
    return found;
}
