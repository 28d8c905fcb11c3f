/* Expected tensors of a checkpoint and their check against the archive.
 *
 * The walk is a callback rather than a list: the config's caps allow
 * configurations whose metric learner alone has hundreds of millions of
 * tensors, and a check against a real archive stops at the first missing one
 * without ever materialising the list. */
#include "config.h"

#include "formats/checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* ------------------------------------------------------------------ */
/* Enumeration                                                         */

typedef struct walker {
    pldr_tensor_visit_fn visit;
    void *user;
    pldr_tensor_spec spec; /* layer, unit and glu are kept between emits */
} walker;

static pldr_status emit(walker *w, const char *prefix, const char *leaf, int ndim, const int64_t *shape)
{
    int n = snprintf(w->spec.name, sizeof w->spec.name, "%s%s", prefix, leaf);
    if (n < 0 || (size_t)n >= sizeof w->spec.name)
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "tensor name %s%s is too long", prefix, leaf);
    w->spec.ndim = ndim;
    memcpy(w->spec.shape, shape, (size_t)ndim * sizeof *shape);
    return w->visit(&w->spec, w->user);
}

/* prefix.weight [out, in] and prefix.bias [out] (PyTorch layout). */
static pldr_status emit_linear(walker *w, const char *prefix, int64_t out, int64_t in)
{
    pldr_status st = emit(w, prefix, ".weight", 2, (int64_t[]){out, in});
    return st != PLDR_OK ? st : emit(w, prefix, ".bias", 1, (int64_t[]){out});
}

static pldr_status emit_layernorm(walker *w, const char *prefix, int64_t n)
{
    pldr_status st = emit(w, prefix, ".weight", 1, (int64_t[]){n});
    return st != PLDR_OK ? st : emit(w, prefix, ".bias", 1, (int64_t[]){n});
}

/* GLU n -> m -> n: gluw1 and gluw2 map n to m, gluw3 maps back. */
static pldr_status emit_glu(walker *w, const char *prefix, int64_t n, int64_t m)
{
    char p[PLDR_TENSOR_NAME_MAX];
    static const char *const parts[] = {".gluw1", ".gluw2", ".gluw3"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", prefix, parts[i]);
        pldr_status st = i < 2 ? emit_linear(w, p, m, n) : emit_linear(w, p, n, m);
        if (st != PLDR_OK)
            return st;
    }
    return PLDR_OK;
}

static pldr_status emit_attention(walker *w, const char *layer, int64_t d)
{
    static const char *const parts[] = {"wq", "wk", "wv", "dense"};
    char p[PLDR_TENSOR_NAME_MAX];
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s.mha1.%s", layer, parts[i]);
        pldr_status st = emit_linear(w, p, d, d);
        if (st != PLDR_OK)
            return st;
    }
    return PLDR_OK;
}

/* The deductive branch: LN of A, R residual units of D GLUs, and the PLGA
 * parameters. Only checkpoints with a learned G have it. */
static pldr_status emit_metric_learner(walker *w, const pldr_config *c, const char *layer)
{
    char p[PLDR_TENSOR_NAME_MAX];
    int64_t dk = c->head_dim;
    snprintf(p, sizeof p, "%s.mha1.layernorm1", layer);
    pldr_status st = emit_layernorm(w, p, dk);
    for (int j = 0; st == PLDR_OK && j < c->n_reslayer_a; j++) {
        w->spec.unit = j;
        for (int k = 0; st == PLDR_OK && k < c->n_dense_a; k++) {
            w->spec.glu = k;
            snprintf(p, sizeof p, "%s.mha1.reslayerAs.%d.denseAs.%d", layer, j, k);
            st = emit_glu(w, p, dk, c->a_dff);
        }
        w->spec.glu = -1;
        snprintf(p, sizeof p, "%s.mha1.reslayerAs.%d.layernormA", layer, j);
        if (st == PLDR_OK)
            st = emit_layernorm(w, p, dk);
    }
    w->spec.unit = -1;
    static const char *const plga[] = {".Wlst", ".blst", ".pwlst", ".alst", ".balst"};
    snprintf(p, sizeof p, "%s.mha1.plgatt_layer", layer);
    for (int i = 0; st == PLDR_OK && i < 5; i++)
        st = emit(w, p, plga[i], 3, (int64_t[]){c->n_heads, dk, dk});
    return st;
}

static pldr_status emit_layer(walker *w, const pldr_config *c, int i)
{
    char layer[32], p[PLDR_TENSOR_NAME_MAX]; /* "decoder.dec_layers." + an int fits 32 */
    snprintf(layer, sizeof layer, "decoder.dec_layers.%d", i);
    w->spec.layer = i;
    pldr_status st = emit_attention(w, layer, c->d_model);
    if (st == PLDR_OK && c->g_type == PLDR_G_LEARNED)
        st = emit_metric_learner(w, c, layer);
    snprintf(p, sizeof p, "%s.ffn", layer);
    if (st == PLDR_OK)
        st = emit_glu(w, p, c->d_model, c->d_ff);
    for (int k = 1; st == PLDR_OK && k <= 2; k++) {
        snprintf(p, sizeof p, "%s.layernorm%d", layer, k);
        st = emit_layernorm(w, p, c->d_model);
    }
    w->spec.layer = -1;
    return st;
}

/* The class's head after the decoder (none for PldrllmModel). */
static pldr_status emit_head(walker *w, const pldr_config *c)
{
    const int64_t d = c->d_model, n = c->n_outputs;
    switch (c->arch) {
    case PLDR_ARCH_CAUSAL_LM: return emit_linear(w, "final_layer", n, d);
    case PLDR_ARCH_TOKEN_CLASSIFICATION: return emit_linear(w, "score", n, d);
    case PLDR_ARCH_SEQUENCE_CLASSIFICATION: return emit(w, "score", ".weight", 2, (int64_t[]){n, d});
    case PLDR_ARCH_QUESTION_ANSWERING: return emit_linear(w, "qa_outputs", n, d);
    default: return PLDR_OK;
    }
}

pldr_status pldr_checkpoint_foreach(const pldr_config *cfg, pldr_tensor_visit_fn visit, void *user)
{
    walker w = {.visit = visit, .user = user};
    w.spec.layer = w.spec.unit = w.spec.glu = -1;
    int64_t v = cfg->vocab_size, d = cfg->d_model;
    pldr_status st = emit(&w, "decoder.embedding", ".weight", 2, (int64_t[]){v, d});
    if (st == PLDR_OK)
        st = emit_layernorm(&w, "decoder.layernorm1", d);
    for (int i = 0; st == PLDR_OK && i < cfg->n_layers; i++)
        st = emit_layer(&w, cfg, i);
    if (st == PLDR_OK)
        st = emit_head(&w, cfg);
    if (st == PLDR_OK && cfg->g_type != PLDR_G_LEARNED)
        st = emit(&w, "decoder.past_G_values", "", 6,
                  (int64_t[]){cfg->n_layers, 3, 1, cfg->n_heads, cfg->head_dim, cfg->head_dim});
    return st;
}

/* ------------------------------------------------------------------ */
/* Check                                                               */

typedef struct checker {
    const st_archive *ar;
    const char *dir;
    unsigned char *used; /* per archive tensor: expected by the config */
    size_t n_used;
} checker;

/* The file holding t; archives built by st_parse alone may have no file table. */
static const char *file_of(const st_archive *ar, const st_tensor *t)
{
    return t->file >= 0 && t->file < ar->n_files ? ar->files[t->file].path : "(archive)";
}

static void format_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < size)
        snprintf(buf + o, size - o, "]");
}

static int same_shape(const st_tensor *t, const pldr_tensor_spec *s)
{
    if (t->ndim != s->ndim)
        return 0;
    for (int i = 0; i < s->ndim; i++)
        if (t->shape[i] != s->shape[i])
            return 0;
    return 1;
}

static pldr_status check_tensor(const pldr_tensor_spec *spec, void *user)
{
    checker *c = user;
    char want[160], got[160];
    format_shape(want, sizeof want, spec->ndim, spec->shape);
    const st_tensor *t = st_find(c->ar, spec->name);
    if (!t)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor %s %s is missing (config.json implies it)", c->dir,
                         spec->name, want);
    const char *file = file_of(c->ar, t);
    if (!same_shape(t, spec)) {
        format_shape(got, sizeof got, t->ndim, t->shape);
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor %s has shape %s but config.json implies %s", file,
                         spec->name, got, want);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return pldr_fail(PLDR_ERR_UNSUPPORTED,
                         "%s: tensor %s has dtype %s; only F32, F16 and BF16 are supported", file,
                         spec->name, st_dtype_name(t->dtype));
    size_t index = (size_t)(t - c->ar->tensors);
    if (!c->used[index]) {
        c->used[index] = 1;
        c->n_used++;
    }
    return PLDR_OK;
}

static const char *g_type_name(pldr_g_type g)
{
    switch (g) {
    case PLDR_G_IDENTITY: return "\"identity\"";
    case PLDR_G_RANDOM: return "\"random\"";
    case PLDR_G_EXTERNAL: return "\"external\"";
    default: return "null";
    }
}

pldr_status pldr_checkpoint_check(const pldr_config *cfg, const st_archive *ar, const char *dir)
{
    if (!cfg || !ar || !dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_checkpoint_check: NULL argument");
    checker c = {.ar = ar, .dir = dir, .used = calloc(ar->n_tensors ? ar->n_tensors : 1, 1)};
    if (!c.used)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory", dir);
    pldr_status st = pldr_checkpoint_foreach(cfg, check_tensor, &c);
    /* every expected tensor matched a distinct one, so any left over is extra */
    for (size_t i = 0; st == PLDR_OK && c.n_used < ar->n_tensors && i < ar->n_tensors; i++) {
        const st_tensor *t = &ar->tensors[i];
        /* the Hugging Face port saves a per-layer flag beside a predefined G;
         * the engine has no use for it */
        if (cfg->g_type != PLDR_G_LEARNED && strcmp(t->name, "decoder.past_G_values_status") == 0 &&
            t->ndim == 1 && t->shape[0] == cfg->n_layers)
            continue;
        if (!c.used[i])
            st = pldr_fail(PLDR_ERR_FORMAT,
                           "%s: unexpected tensor %s: a model with this config.json (%s, custom_G_type %s) "
                           "does not use it",
                           file_of(ar, &ar->tensors[i]), ar->tensors[i].name, pldr_arch_name(cfg->arch),
                           g_type_name(cfg->g_type));
    }
    free(c.used);
    return st;
}

pldr_status pldr_checkpoint_names(const pldr_config *cfg, st_archive *ar)
{
    if (!cfg || !ar)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_checkpoint_names: NULL argument");
    if (cfg->arch != PLDR_ARCH_MODEL || st_find(ar, "decoder.embedding.weight") || !st_find(ar, "embedding.weight"))
        return PLDR_OK;
    /* the same prefix on every name keeps the archive sorted */
    for (size_t i = 0; i < ar->n_tensors; i++) {
        size_t n = strlen(ar->tensors[i].name);
        char *name = malloc(n + sizeof "decoder.");
        if (!name)
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
        memcpy(name, "decoder.", sizeof "decoder." - 1);
        memcpy(name + sizeof "decoder." - 1, ar->tensors[i].name, n + 1);
        free(ar->tensors[i].name);
        ar->tensors[i].name = name;
    }
    return PLDR_OK;
}
