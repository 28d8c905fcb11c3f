/* G-cache files: the per-layer [A, A_LM, G_LM] of a context as a
 * safetensors file, so that a G_LM inferred once (or taken from another
 * model, as in the paper's ablations) can replace the metric learner.
 *
 * Read: G_LM (required), A and A_LM (optional), each [L, H, dk, dk] or
 * [L, 1, H, dk, dk] (the layout of the HF port's past_G_values slices), in
 * F32, F16 or BF16, through the hardened reader of safetensors.c. Other
 * tensors in the file are ignored.
 * Written: F32 [L, H, dk, dk], keys sorted, offsets contiguous from 0,
 * the header padded with spaces to a multiple of 8 bytes. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/safetensors.h"
#include "common/util.h"

static const char *const TENSOR_NAMES[3] = {"A", "A_LM", "G_LM"};

/* The [L, H, dk] of a tensor in either accepted layout; 0 if neither. */
static int gcache_dims(const st_tensor *t, int dims[3])
{
    int64_t s[4];
    if (t->ndim == 4) {
        memcpy(s, t->shape, sizeof s);
    } else if (t->ndim == 5 && t->shape[1] == 1) {
        s[0] = t->shape[0];
        memcpy(s + 1, t->shape + 2, 3 * sizeof *s);
    } else {
        return 0;
    }
    for (int i = 0; i < 4; i++)
        if (s[i] <= 0 || s[i] > (1 << 20))
            return 0;
    if (s[2] != s[3])
        return 0;
    dims[0] = (int)s[0];
    dims[1] = (int)s[1];
    dims[2] = (int)s[2];
    return 1;
}

static void shape_string(const st_tensor *t, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

static size_t gcache_elems(const pldr_gcache *g)
{
    return (size_t)g->n_layers * (size_t)g->n_heads * (size_t)g->head_dim * (size_t)g->head_dim;
}

void pldr_gcache_free(pldr_gcache *g)
{
    if (!g)
        return;
    free(g->a);
    free(g->a_lm);
    free(g->g_lm);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------ read */

static pldr_status read_tensor(const st_tensor *t, const char *path, float **out)
{
    if (!(*out = malloc(t->n_elements * sizeof **out)))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory for %s", path, t->name);
    pldr_status st = st_to_f32(t, *out);
    return st == PLDR_OK ? PLDR_OK : pldr_fail_prefix(st, "%s: %s", path, t->name);
}

/* A G_LM with inf or NaN would only surface as non-finite activations
 * later; say where it is instead. */
static pldr_status check_finite(const pldr_gcache *g, const char *path)
{
    const size_t hdd = (size_t)g->head_dim * (size_t)g->head_dim, n = gcache_elems(g);
    const float *arrays[3] = {g->a, g->a_lm, g->g_lm};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; arrays[k] && i < n; i++)
            if (!isfinite(arrays[k][i]))
                return pldr_fail(PLDR_ERR_FORMAT, "%s: %s has a non-finite value in layer %zu, head %zu", path,
                                 TENSOR_NAMES[k], i / hdd / (size_t)g->n_heads, i / hdd % (size_t)g->n_heads);
    return PLDR_OK;
}

static pldr_status read_all(const st_archive *ar, const char *path, pldr_gcache *g)
{
    const st_tensor *t[3];
    char shape[128];
    for (int i = 0; i < 3; i++)
        t[i] = st_find(ar, TENSOR_NAMES[i]);
    if (!t[2])
        return pldr_fail(PLDR_ERR_FORMAT, "%s: no tensor G_LM (a G-cache file holds G_LM and optionally A and A_LM, "
                                          "each [L, H, dk, dk])", path);
    int dims[3], other[3];
    if (!gcache_dims(t[2], dims)) {
        shape_string(t[2], shape, sizeof shape);
        return pldr_fail(PLDR_ERR_FORMAT, "%s: G_LM has shape %s; expected [L, H, dk, dk] or [L, 1, H, dk, dk]", path,
                         shape);
    }
    for (int i = 0; i < 2; i++)
        if (t[i] && (!gcache_dims(t[i], other) || memcmp(dims, other, sizeof dims) != 0)) {
            shape_string(t[i], shape, sizeof shape);
            return pldr_fail(PLDR_ERR_FORMAT, "%s: %s has shape %s; expected [%d, %d, %d, %d] as G_LM", path,
                             TENSOR_NAMES[i], shape, dims[0], dims[1], dims[2], dims[2]);
        }
    g->n_layers = dims[0];
    g->n_heads = dims[1];
    g->head_dim = dims[2];
    float **dst[3] = {&g->a, &g->a_lm, &g->g_lm};
    for (int i = 0; i < 3; i++)
        if (t[i]) {
            pldr_status st = read_tensor(t[i], path, dst[i]);
            if (st != PLDR_OK)
                return st;
        }
    return check_finite(g, path);
}

pldr_status pldr_gcache_read(const char *path, pldr_gcache *g)
{
    pldr_clear_error();
    memset(g, 0, sizeof *g);
    st_archive ar;
    memset(&ar, 0, sizeof ar);
    pldr_status st = st_open_file(path, &ar);
    if (st == PLDR_OK)
        st = read_all(&ar, path, g);
    st_close(&ar); /* also on failure: st_open_file may leave its files array allocated */
    if (st != PLDR_OK)
        pldr_gcache_free(g);
    return st;
}

/* ------------------------------------------------------------ write */

/* The JSON header: the present tensors in name order with contiguous
 * offsets, then __metadata__ (sorted keys keep that order). */
static char *header_json(const pldr_gcache *g, size_t bytes, uint64_t fingerprint, int n_tokens)
{
    const float *arrays[3] = {g->a, g->a_lm, g->g_lm};
    json_t *root = json_object();
    json_int_t off = 0;
    for (int i = 0; i < 3 && root; i++) {
        if (!arrays[i])
            continue;
        json_t *e = json_pack("{s:s, s:[I, I, I, I], s:[I, I]}", "dtype", "F32", "shape", (json_int_t)g->n_layers,
                              (json_int_t)g->n_heads, (json_int_t)g->head_dim, (json_int_t)g->head_dim,
                              "data_offsets", off, off + (json_int_t)bytes);
        if (!e || json_object_set_new(root, TENSOR_NAMES[i], e) != 0) {
            json_decref(root);
            root = NULL;
        }
        off += (json_int_t)bytes;
    }
    char fp[17], nt[16];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)fingerprint);
    snprintf(nt, sizeof nt, "%d", n_tokens);
    json_t *meta = json_pack("{s:s, s:s, s:s}", "format", "pldr-gcache", "layout", "[L, H, dk, dk]",
                             "pldr_model_fingerprint", fp);
    if (meta && n_tokens >= 0 && json_object_set_new(meta, "prompt_tokens", json_string(nt)) != 0) {
        json_decref(meta);
        meta = NULL;
    }
    if (!root || !meta) {
        json_decref(root);
        json_decref(meta);
        return NULL;
    }
    if (json_object_set_new(root, "__metadata__", meta) != 0) { /* meta is released by the call */
        json_decref(root);
        return NULL;
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    return s;
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

pldr_status pldr_gcache_write(const char *path, const pldr_gcache *g, uint64_t fingerprint, int n_tokens)
{
    pldr_clear_error();
    if (!g || !g->g_lm || g->n_layers <= 0 || g->n_heads <= 0 || g->head_dim <= 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "%s: no G_LM to write", path);
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) /* the data are written as host floats */
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: G-cache files need a little-endian host", path);
    const size_t bytes = gcache_elems(g) * sizeof(float);
    char *json = header_json(g, bytes, fingerprint, n_tokens);
    if (!json)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot build the header", path);
    const size_t hlen = strlen(json), padded = (hlen + 7) & ~(size_t)7;
    const float *arrays[3] = {g->a, g->a_lm, g->g_lm};
    size_t total = 8 + padded;
    for (int i = 0; i < 3; i++)
        total += arrays[i] ? bytes : 0;
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(json);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory for %zu bytes", path, total);
    }
    put_u64le(buf, padded);
    memcpy(buf + 8, json, hlen);
    memset(buf + 8 + hlen, ' ', padded - hlen);
    size_t o = 8 + padded;
    for (int i = 0; i < 3; i++)
        if (arrays[i]) {
            memcpy(buf + o, arrays[i], bytes);
            o += bytes;
        }
    free(json);
    pldr_status st = pldr_write_file_atomic(path, buf, total);
    free(buf);
    return st;
}

/* ------------------------------------------------------------ contexts */

pldr_status pldr_gcache_from_context(pldr_context *ctx, const pldr_model *model, pldr_gcache *g)
{
    pldr_clear_error();
    memset(g, 0, sizeof *g);
    const pldr_config *cf = pldr_model_config(model);
    g->n_layers = cf->n_layers;
    g->n_heads = cf->n_heads;
    g->head_dim = cf->head_dim;
    const size_t hdd = (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim, n = gcache_elems(g);
    float *all = malloc(3 * n * sizeof *all);
    g->a = malloc(n * sizeof *g->a);
    g->a_lm = malloc(n * sizeof *g->a_lm);
    g->g_lm = malloc(n * sizeof *g->g_lm);
    pldr_status st = all && g->a && g->a_lm && g->g_lm ? pldr_context_get_gcache(ctx, all)
                                                        : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the G-cache");
    /* [L, 3, H, dk, dk] -> three [L, H, dk, dk] */
    float *dst[3] = {g->a, g->a_lm, g->g_lm};
    for (int l = 0; st == PLDR_OK && l < cf->n_layers; l++)
        for (int i = 0; i < 3; i++)
            memcpy(dst[i] + (size_t)l * hdd, all + ((size_t)l * 3 + (size_t)i) * hdd, hdd * sizeof *all);
    free(all);
    if (st != PLDR_OK)
        pldr_gcache_free(g);
    return st;
}

pldr_status pldr_context_load_gcache(pldr_context *ctx, const pldr_model *model, const char *path)
{
    pldr_gcache g;
    pldr_status st = pldr_gcache_read(path, &g);
    if (st != PLDR_OK)
        return st;
    const pldr_config *cf = pldr_model_config(model);
    if (g.n_layers != cf->n_layers || g.n_heads != cf->n_heads || g.head_dim != cf->head_dim)
        st = pldr_fail(PLDR_ERR_MISMATCH,
                       "%s: G_LM is [%d, %d, %d, %d] (L, H, dk, dk); this model needs [%d, %d, %d, %d] "
                       "(or [%d, 1, %d, %d, %d])",
                       path, g.n_layers, g.n_heads, g.head_dim, g.head_dim, cf->n_layers, cf->n_heads, cf->head_dim,
                       cf->head_dim, cf->n_layers, cf->n_heads, cf->head_dim, cf->head_dim);
    else if ((st = pldr_context_set_external_g(ctx, g.a, g.a_lm, g.g_lm)) != PLDR_OK)
        st = pldr_fail_prefix(st, "%s", path);
    pldr_gcache_free(&g);
    return st;
}
