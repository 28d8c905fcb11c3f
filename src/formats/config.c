/* config.json: the model's hyperparameters (keys in shared/docs/pldr-llm.md).
 *
 * Every size is range-checked here, with caps far above any released model,
 * so that later products such as V x d or L x H x dk x dk cannot overflow a
 * 64-bit size. Values outside what the engine implements (another activation,
 * layers without biases, tied embeddings) are rejected as unsupported rather
 * than silently run wrong. Unknown keys are ignored; a known key with the
 * wrong JSON type is an error. Optional keys given as null take their default. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "formats/config_parse.h"
#include "pldr.h"
#include "common/util.h"

/* config.json is a few hundred bytes; this only bounds a wrong file. */
#define CONFIG_MAX_BYTES (16u << 20)

typedef struct cfg_reader {
    const char *path;
    json_t *root;
    pldr_config_extra *extra; /* filled as it is read; never NULL here */
} cfg_reader;

/* The value of key, or NULL when it is absent (or null and optional). */
static pldr_status get_value(const cfg_reader *r, const char *key, int required, json_t **out)
{
    json_t *v = json_object_get(r->root, key);
    if (v && json_is_null(v) && !required)
        v = NULL;
    if (!v && required)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: missing required key \"%s\"", r->path, key);
    *out = v;
    return PLDR_OK;
}

static pldr_status get_integer(const cfg_reader *r, const char *key, int required, json_int_t *out,
                               int *present)
{
    json_t *v = NULL;
    pldr_status st = get_value(r, key, required, &v);
    if (st != PLDR_OK)
        return st;
    *present = v != NULL;
    if (!v)
        return PLDR_OK;
    if (!json_is_integer(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" must be an integer", r->path, key);
    *out = json_integer_value(v);
    return PLDR_OK;
}

/* A dimension: at least 1, at most the engine's cap. */
static pldr_status read_size(const cfg_reader *r, const char *key, int required, int cap, int *out)
{
    json_int_t v = 0;
    int present = 0;
    pldr_status st = get_integer(r, key, required, &v, &present);
    if (st != PLDR_OK || !present)
        return st;
    if (v < 1)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" is %lld; it must be positive", r->path, key,
                         (long long)v);
    if (v > cap)
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: key \"%s\" is %lld, above this engine's limit of %d",
                         r->path, key, (long long)v, cap);
    *out = (int)v;
    return PLDR_OK;
}

/* A token id: in [0, vocab_size). *out holds the default, which must be in
 * range too when the key is absent (a vocabulary of fewer than 4 pieces). */
static pldr_status read_token_id(const cfg_reader *r, const char *key, int vocab, int *out)
{
    json_int_t v = 0;
    int present = 0;
    pldr_status st = get_integer(r, key, 0, &v, &present);
    if (st != PLDR_OK)
        return st;
    if (!present) {
        if (*out < 0 || *out >= vocab)
            return pldr_fail(PLDR_ERR_FORMAT,
                             "%s: key \"%s\" is absent and its default %d is outside the vocabulary [0, %d)",
                             r->path, key, *out, vocab);
        return PLDR_OK;
    }
    if (v < 0 || v >= vocab)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" is %lld, outside the vocabulary [0, %d)",
                         r->path, key, (long long)v, vocab);
    *out = (int)v;
    return PLDR_OK;
}

static pldr_status read_bool(const cfg_reader *r, const char *key, int *out)
{
    json_t *v = NULL;
    pldr_status st = get_value(r, key, 0, &v);
    if (st != PLDR_OK || !v)
        return st;
    if (!json_is_boolean(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" must be true or false", r->path, key);
    *out = json_is_true(v);
    return PLDR_OK;
}

/* A positive finite number; JSON integers are accepted ("rope_theta": 10000). */
static pldr_status read_positive(const cfg_reader *r, const char *key, int required, double *out)
{
    json_t *v = NULL;
    pldr_status st = get_value(r, key, required, &v);
    if (st != PLDR_OK || !v)
        return st;
    if (!json_is_number(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" must be a number", r->path, key);
    double d = json_number_value(v);
    if (!(d > 0) || !isfinite(d))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" is %g; it must be positive and finite",
                         r->path, key, d);
    *out = d;
    return PLDR_OK;
}

/* The string value of key, or NULL when absent. */
static pldr_status read_string(const cfg_reader *r, const char *key, const char **out)
{
    json_t *v = NULL;
    pldr_status st = get_value(r, key, 0, &v);
    *out = NULL;
    if (st != PLDR_OK || !v)
        return st;
    if (!json_is_string(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" must be a string", r->path, key);
    *out = json_string_value(v);
    return PLDR_OK;
}

static pldr_status read_sizes(const cfg_reader *r, pldr_config *c)
{
    static const struct {
        const char *key;
        size_t offset;
        int cap;
    } sizes[] = {
        {"num_hidden_layers", offsetof(pldr_config, n_layers), 1024},
        {"hidden_size", offsetof(pldr_config, d_model), 65536},
        {"num_attention_heads", offsetof(pldr_config, n_heads), 1024},
        {"intermediate_size", offsetof(pldr_config, d_ff), 1 << 20},
        {"num_reslayerA", offsetof(pldr_config, n_reslayer_a), 1024},
        {"num_denseA", offsetof(pldr_config, n_dense_a), 64},
        {"A_dff", offsetof(pldr_config, a_dff), 65536},
        {"vocab_size", offsetof(pldr_config, vocab_size), 1 << 22},
        {"max_position_embeddings", offsetof(pldr_config, max_position), 1 << 20},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int *field = (int *)((char *)c + sizes[i].offset);
        pldr_status st = read_size(r, sizes[i].key, 1, sizes[i].cap, field);
        if (st != PLDR_OK)
            return st;
    }
    return PLDR_OK;
}

/* head_dim is optional (default d / H); d = H x dk and RoPE needs an even dk. */
static pldr_status read_head_dim(const cfg_reader *r, pldr_config *c)
{
    c->head_dim = 0;
    pldr_status st = read_size(r, "head_dim", 0, 1024, &c->head_dim);
    if (st != PLDR_OK)
        return st;
    if (c->head_dim == 0) {
        if (c->d_model % c->n_heads != 0)
            return pldr_fail(PLDR_ERR_FORMAT,
                             "%s: key \"hidden_size\" (%d) is not a multiple of \"num_attention_heads\" "
                             "(%d) and \"head_dim\" is absent",
                             r->path, c->d_model, c->n_heads);
        c->head_dim = c->d_model / c->n_heads;
        if (c->head_dim > 1024)
            return pldr_fail(PLDR_ERR_UNSUPPORTED,
                             "%s: key \"head_dim\" (hidden_size / num_attention_heads) is %d, above this "
                             "engine's limit of 1024",
                             r->path, c->head_dim);
    }
    if (c->head_dim % 2 != 0)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"head_dim\" is %d; it must be even (RoPE rotates pairs)",
                         r->path, c->head_dim);
    if ((long long)c->n_heads * c->head_dim != c->d_model)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: key \"hidden_size\" is %d but num_attention_heads x head_dim is %d x %d",
                         r->path, c->d_model, c->n_heads, c->head_dim);
    return PLDR_OK;
}

static pldr_status read_g_type(const cfg_reader *r, pldr_config *c)
{
    const char *s;
    pldr_status st = read_string(r, "custom_G_type", &s);
    if (st != PLDR_OK)
        return st;
    if (!s)
        c->g_type = PLDR_G_LEARNED;
    else if (strcmp(s, "identity") == 0)
        c->g_type = PLDR_G_IDENTITY;
    else if (strcmp(s, "random") == 0)
        c->g_type = PLDR_G_RANDOM;
    else if (strcmp(s, "external") == 0)
        c->g_type = PLDR_G_EXTERNAL;
    else
        return pldr_fail(PLDR_ERR_UNSUPPORTED,
                         "%s: key \"custom_G_type\" is \"%s\"; expected null, \"identity\", \"random\" "
                         "or \"external\"",
                         r->path, s);
    return PLDR_OK;
}

/* A string key that, when present, must have exactly one value. */
static pldr_status require_string(const cfg_reader *r, const char *key, const char *expected)
{
    const char *s;
    pldr_status st = read_string(r, key, &s);
    if (st != PLDR_OK || !s || strcmp(s, expected) == 0)
        return st;
    return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: key \"%s\" is \"%s\"; this engine supports only \"%s\"",
                     r->path, key, s, expected);
}

/* A boolean key that, when present, must have the one value the engine implements. */
static pldr_status require_bool(const cfg_reader *r, const char *key, int expected, int *out, const char *why)
{
    int v = expected;
    pldr_status st = read_bool(r, key, &v);
    if (st != PLDR_OK)
        return st;
    if (v != expected)
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: key \"%s\" is %s; %s", r->path, key,
                         v ? "true" : "false", why);
    if (out)
        *out = v;
    return PLDR_OK;
}

static pldr_status read_behaviour(const cfg_reader *r, pldr_config *c)
{
    static const char *const biases = "this engine supports only layers with biases";
    pldr_status st = require_string(r, "model_type", "pldrllm");
    if (st == PLDR_OK)
        st = require_string(r, "hidden_act", "silu");
    if (st == PLDR_OK)
        st = require_bool(r, "attention_bias", 1, &c->attention_bias, biases);
    if (st == PLDR_OK)
        st = require_bool(r, "glu_bias", 1, &c->glu_bias, biases);
    if (st == PLDR_OK)
        st = require_bool(r, "final_bias", 1, &c->final_bias, biases);
    if (st == PLDR_OK)
        st = require_bool(r, "tie_word_embeddings", 0, NULL,
                          "this engine supports only a separate final_layer");
    if (st == PLDR_OK)
        st = read_bool(r, "reference_rope", &c->reference_rope);
    if (st == PLDR_OK)
        st = read_g_type(r, c);
    return st;
}

/* ------------------------------------------------------------------ */
/* Model class and labels                                              */

static const struct {
    const char *name;
    pldr_arch arch;
} arch_names[] = {
    {"PldrllmForCausalLM", PLDR_ARCH_CAUSAL_LM},
    {"PldrllmModel", PLDR_ARCH_MODEL},
    {"PldrllmForTokenClassification", PLDR_ARCH_TOKEN_CLASSIFICATION},
    {"PldrllmForSequenceClassification", PLDR_ARCH_SEQUENCE_CLASSIFICATION},
    {"PldrllmForQuestionAnswering", PLDR_ARCH_QUESTION_ANSWERING},
};

const char *pldr_arch_name(pldr_arch arch)
{
    for (size_t i = 0; i < sizeof arch_names / sizeof arch_names[0]; i++)
        if (arch_names[i].arch == arch)
            return arch_names[i].name;
    return "unknown";
}

/* architectures[0] names the class; transformers' pipelines read the same entry. */
static pldr_status read_arch(const cfg_reader *r, pldr_config *c)
{
    json_t *v = NULL;
    pldr_status st = get_value(r, "architectures", 0, &v);
    if (st != PLDR_OK || !v)
        return st;
    if (!json_is_array(v) || json_array_size(v) == 0 || !json_is_string(json_array_get(v, 0)))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"architectures\" must be a list of class names", r->path);
    const char *name = json_string_value(json_array_get(v, 0));
    for (size_t i = 0; i < sizeof arch_names / sizeof arch_names[0]; i++)
        if (strcmp(name, arch_names[i].name) == 0) {
            c->arch = arch_names[i].arch;
            return PLDR_OK;
        }
    return pldr_fail(PLDR_ERR_UNSUPPORTED,
                     "%s: \"architectures\" names %s; this engine runs PldrllmForCausalLM, PldrllmModel, "
                     "PldrllmForTokenClassification, PldrllmForSequenceClassification and "
                     "PldrllmForQuestionAnswering",
                     r->path, name);
}

/* A label id as id2label writes it: a decimal string. */
static int parse_label_id(const char *s, int n)
{
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= 0 && v < n ? (int)v : -1;
}

static pldr_status set_label(const cfg_reader *r, char **labels, int id, const char *name, const char *key)
{
    if (labels[id])
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" gives label id %d twice", r->path, key, id);
    if (!(labels[id] = pldr_strdup(name)))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    return PLDR_OK;
}

/* id2label {"0": "O", ...} names the labels; label2id {"O": 0, ...} when it
 * is absent; transformers' default of two labels LABEL_0, LABEL_1 when both
 * are. num_labels, when written, must agree. */
static pldr_status read_labels(const cfg_reader *r, pldr_config *c)
{
    json_t *id2label = NULL, *label2id = NULL;
    json_int_t given = 0;
    int has_given = 0;
    pldr_status st = get_value(r, "id2label", 0, &id2label);
    if (st == PLDR_OK)
        st = get_value(r, "label2id", 0, &label2id);
    if (st == PLDR_OK)
        st = get_integer(r, "num_labels", 0, &given, &has_given);
    if (st != PLDR_OK)
        return st;
    if ((id2label && !json_is_object(id2label)) || (label2id && !json_is_object(label2id)))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" must be an object", r->path,
                         id2label && !json_is_object(id2label) ? "id2label" : "label2id");
    json_t *src = id2label ? id2label : label2id;
    const char *key_name = id2label ? "id2label" : "label2id";
    size_t n = src ? json_object_size(src) : 2;
    if (n < 1 || n > 65536)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" holds %zu labels; expected 1 to 65536", r->path,
                         key_name, n);
    if (has_given && given != (json_int_t)n)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"num_labels\" is %lld but \"%s\" holds %zu labels", r->path,
                         (long long)given, src ? key_name : "the default of two labels", n);
    char **labels = calloc(n + 1, sizeof *labels); /* NULL-terminated */
    if (!labels)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    r->extra->labels = labels;
    r->extra->n_labels = n;
    c->num_labels = (int)n;
    const char *key;
    json_t *val;
    if (!src) {
        for (size_t i = 0; i < n && st == PLDR_OK; i++) {
            char name[32];
            snprintf(name, sizeof name, "LABEL_%zu", i);
            st = set_label(r, labels, (int)i, name, "id2label");
        }
        return st;
    }
    json_object_foreach(src, key, val) {
        int id;
        const char *name;
        if (id2label) {
            id = parse_label_id(key, (int)n);
            name = json_is_string(val) ? json_string_value(val) : NULL;
        } else {
            id = json_is_integer(val) && json_integer_value(val) >= 0 && json_integer_value(val) < (json_int_t)n
                     ? (int)json_integer_value(val)
                     : -1;
            name = key;
        }
        if (id < 0 || !name)
            return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\": entry \"%s\" is not a label id in [0, %zu) with a name",
                             r->path, key_name, key, n);
        if ((st = set_label(r, labels, id, name, key_name)) != PLDR_OK)
            return st;
    }
    return PLDR_OK;
}

/* transformers 4.56 and later write "dtype", earlier ones "torch_dtype";
 * informative only (the loader takes each tensor's own dtype). */
static pldr_status read_dtype(const cfg_reader *r, pldr_config *c)
{
    const char *s = NULL;
    pldr_status st = read_string(r, "dtype", &s);
    if (st == PLDR_OK && !s)
        st = read_string(r, "torch_dtype", &s);
    if (st != PLDR_OK || !s)
        return st;
    static const char *const known[] = {"float32", "float16", "bfloat16", "float64", "auto"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(s, known[i]) == 0) {
            snprintf(c->dtype, sizeof c->dtype, "%s", s);
            return PLDR_OK;
        }
    return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: the checkpoint's dtype \"%s\" is not float32, float16 or bfloat16",
                     r->path, s);
}

/* ------------------------------------------------------------------ */
/* rope_scaling                                                        */

/* A number in rope_scaling; absent (or null) leaves *out. */
static pldr_status rope_number(const cfg_reader *r, json_t *rs, const char *key, int required, double *out)
{
    json_t *v = json_object_get(rs, key);
    if (v && json_is_null(v))
        v = NULL;
    if (!v) {
        if (required)
            return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling needs \"%s\"", r->path, key);
        return PLDR_OK;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling's \"%s\" must be a number", r->path, key);
    *out = json_number_value(v);
    return PLDR_OK;
}

static pldr_status rope_positive(const cfg_reader *r, json_t *rs, const char *key, int required, double *out)
{
    double v = *out;
    json_t *j = json_object_get(rs, key);
    pldr_status st = rope_number(r, rs, key, required, &v);
    if (st == PLDR_OK && j && !json_is_null(j) && !(v > 0))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling's \"%s\" is %g; it must be positive", r->path, key, v);
    if (st == PLDR_OK)
        *out = v;
    return st;
}

static pldr_status rope_factor_list(const cfg_reader *r, json_t *rs, const char *key, int half, double **out)
{
    json_t *v = json_object_get(rs, key);
    if (!v || !json_is_array(v) || json_array_size(v) != (size_t)half)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling's \"%s\" must be a list of %d numbers (head_dim / 2)",
                         r->path, key, half);
    double *f = malloc((size_t)half * sizeof *f);
    if (!f)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    for (int i = 0; i < half; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_number(e) || !(json_number_value(e) > 0) || !isfinite(json_number_value(e))) {
            free(f);
            return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling's \"%s\"[%d] must be a positive number", r->path,
                             key, i);
        }
        f[i] = json_number_value(e);
    }
    *out = f;
    return PLDR_OK;
}

/* mscale of YaRN: 0.1 * m * ln(scale) + 1 above a scale of 1. */
static double yarn_mscale(double scale, double m)
{
    return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

static pldr_status read_yarn(const cfg_reader *r, json_t *rs, pldr_config *c)
{
    double att = 0, mscale = 0, mscale_all = 0, orig = 0;
    pldr_status st = rope_positive(r, rs, "factor", 1, &c->rope_factor);
    if (st == PLDR_OK)
        st = rope_positive(r, rs, "attention_factor", 0, &att);
    if (st == PLDR_OK)
        st = rope_number(r, rs, "mscale", 0, &mscale);
    if (st == PLDR_OK)
        st = rope_number(r, rs, "mscale_all_dim", 0, &mscale_all);
    if (st == PLDR_OK)
        st = rope_positive(r, rs, "original_max_position_embeddings", 0, &orig);
    if (st != PLDR_OK)
        return st;
    json_t *t = json_object_get(rs, "truncate");
    if (t && !json_is_boolean(t) && !json_is_null(t))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling's \"truncate\" must be true or false", r->path);
    r->extra->truncate = !t || !json_is_false(t);
    /* transformers takes `beta or default`: 0 is the default too */
    r->extra->beta_fast = 32;
    r->extra->beta_slow = 1;
    if ((st = rope_number(r, rs, "beta_fast", 0, &r->extra->beta_fast)) != PLDR_OK ||
        (st = rope_number(r, rs, "beta_slow", 0, &r->extra->beta_slow)) != PLDR_OK)
        return st;
    if (r->extra->beta_fast == 0)
        r->extra->beta_fast = 32;
    if (r->extra->beta_slow == 0)
        r->extra->beta_slow = 1;
    if (!(r->extra->beta_fast > 0) || !(r->extra->beta_slow > 0))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling's beta_fast and beta_slow must be positive", r->path);
    if (orig > 0) {
        /* as transformers: the context ratio replaces "factor" */
        c->rope_original_max_position = (int)orig;
        c->rope_factor = (double)c->max_position / orig;
    }
    if (att > 0)
        c->rope_attention_factor = att;
    else if (mscale != 0 && mscale_all != 0)
        c->rope_attention_factor = yarn_mscale(c->rope_factor, mscale) / yarn_mscale(c->rope_factor, mscale_all);
    else
        c->rope_attention_factor = yarn_mscale(c->rope_factor, 1.0);
    return PLDR_OK;
}

static pldr_status read_llama3(const cfg_reader *r, json_t *rs, pldr_config *c)
{
    double lo = 0, hi = 0, orig = 0;
    pldr_status st = rope_positive(r, rs, "factor", 1, &c->rope_factor);
    if (st == PLDR_OK)
        st = rope_positive(r, rs, "low_freq_factor", 1, &lo);
    if (st == PLDR_OK)
        st = rope_positive(r, rs, "high_freq_factor", 1, &hi);
    if (st == PLDR_OK)
        st = rope_positive(r, rs, "original_max_position_embeddings", 1, &orig);
    if (st == PLDR_OK && !(hi > lo))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling's high_freq_factor (%g) must exceed low_freq_factor (%g)",
                         r->path, hi, lo);
    c->rope_original_max_position = (int)orig;
    r->extra->low_freq_factor = lo;
    r->extra->high_freq_factor = hi;
    return st;
}

static pldr_status read_longrope(const cfg_reader *r, json_t *rs, pldr_config *c)
{
    const int half = c->head_dim / 2;
    double factor = 0, att = 0;
    json_int_t orig = 0;
    int has_orig = 0;
    pldr_status st = rope_factor_list(r, rs, "short_factor", half, &r->extra->short_factor);
    if (st == PLDR_OK)
        st = rope_factor_list(r, rs, "long_factor", half, &r->extra->long_factor);
    if (st == PLDR_OK)
        st = rope_positive(r, rs, "factor", 0, &factor);
    if (st == PLDR_OK)
        st = rope_positive(r, rs, "attention_factor", 0, &att);
    /* longrope reads the pre-scaling context from the config's top level */
    if (st == PLDR_OK)
        st = get_integer(r, "original_max_position_embeddings", 0, &orig, &has_orig);
    if (st != PLDR_OK)
        return st;
    if (has_orig && (orig < 1 || orig > c->max_position))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"original_max_position_embeddings\" is %lld; expected 1 to %d",
                         r->path, (long long)orig, c->max_position);
    if (has_orig) {
        c->rope_original_max_position = (int)orig;
        factor = (double)c->max_position / (double)orig;
    }
    if (factor == 0 && att == 0)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: longrope needs \"factor\", \"attention_factor\" or the key "
                         "\"original_max_position_embeddings\"",
                         r->path);
    c->rope_factor = factor > 0 ? factor : 1.0;
    int orig_ctx = has_orig ? (int)orig : c->max_position;
    if (att > 0)
        c->rope_attention_factor = att;
    else
        c->rope_attention_factor = factor <= 1 ? 1.0 : sqrt(1 + log(factor) / log((double)orig_ctx));
    return PLDR_OK;
}

static const struct {
    const char *name;
    pldr_rope_type type;
} rope_types[] = {
    {"default", PLDR_ROPE_DEFAULT}, {"linear", PLDR_ROPE_LINEAR}, {"dynamic", PLDR_ROPE_DYNAMIC},
    {"yarn", PLDR_ROPE_YARN},       {"llama3", PLDR_ROPE_LLAMA3}, {"longrope", PLDR_ROPE_LONGROPE},
};

/* rope_scaling {"rope_type" (or the older "type"): ..., parameters}. The
 * frequencies follow transformers' modeling_rope_utils; they apply to the
 * rotate-half RoPE (reference_rope false), the only one that reads them. */
static pldr_status read_rope_scaling(const cfg_reader *r, pldr_config *c)
{
    c->rope_type = PLDR_ROPE_DEFAULT;
    c->rope_factor = c->rope_attention_factor = 1.0;
    json_t *rs = NULL;
    pldr_status st = get_value(r, "rope_scaling", 0, &rs);
    if (st != PLDR_OK)
        return st;
    if (!rs) {
        /* transformers 5 writes the same object as "rope_parameters", with
         * rope_theta inside it; read it rather than ignore a scaling there */
        if ((st = get_value(r, "rope_parameters", 0, &rs)) != PLDR_OK || !rs)
            return st;
        if (!json_is_object(rs))
            return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"rope_parameters\" must be an object or null", r->path);
        json_t *theta = json_object_get(rs, "rope_theta");
        if (theta && !json_is_null(theta)) {
            if (!json_is_number(theta) || !(json_number_value(theta) > 1.0))
                return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_parameters' \"rope_theta\" must be a number above 1",
                                 r->path);
            c->rope_theta = json_number_value(theta);
        }
    }
    if (!json_is_object(rs))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"rope_scaling\" must be an object or null", r->path);
    json_t *t = json_object_get(rs, "rope_type");
    if (!t || json_is_null(t))
        t = json_object_get(rs, "type");
    if (!t || !json_is_string(t))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: rope_scaling needs a \"rope_type\" string", r->path);
    const char *name = json_string_value(t);
    size_t i = 0;
    while (i < sizeof rope_types / sizeof rope_types[0] && strcmp(name, rope_types[i].name) != 0)
        i++;
    if (i == sizeof rope_types / sizeof rope_types[0])
        return pldr_fail(PLDR_ERR_UNSUPPORTED,
                         "%s: rope_scaling type \"%s\" is not implemented (this engine has default, linear, dynamic, "
                         "yarn, llama3 and longrope)",
                         r->path, name);
    c->rope_type = rope_types[i].type;
    if (c->rope_type == PLDR_ROPE_DEFAULT)
        return PLDR_OK;
    if (c->reference_rope)
        return pldr_fail(PLDR_ERR_UNSUPPORTED,
                         "%s: rope_scaling type \"%s\" with reference_rope true: scaling applies to the rotate-half "
                         "RoPE (reference_rope false) only",
                         r->path, name);
    json_t *prf = json_object_get(r->root, "partial_rotary_factor");
    if (prf && !json_is_null(prf) && !(json_is_number(prf) && json_number_value(prf) == 1.0))
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: key \"partial_rotary_factor\" other than 1 is not supported",
                         r->path);
    switch (c->rope_type) {
    case PLDR_ROPE_LINEAR:
    case PLDR_ROPE_DYNAMIC:
        return rope_positive(r, rs, "factor", 1, &c->rope_factor);
    case PLDR_ROPE_YARN: return read_yarn(r, rs, c);
    case PLDR_ROPE_LLAMA3: return read_llama3(r, rs, c);
    case PLDR_ROPE_LONGROPE: return read_longrope(r, rs, c);
    default: return PLDR_OK;
    }
}

/* Each HF rope type's inverse frequencies, from the default
 * theta^(-2i/dk). Computed in double (transformers uses float32). */
pldr_status pldr_rope_inv_freq(const pldr_config *c, const pldr_config_extra *x, int n_ctx, double *inv)
{
    const int half = c->head_dim / 2, dim = c->head_dim;
    double base = c->rope_theta;
    if (c->rope_type == PLDR_ROPE_DYNAMIC) {
        /* the NTK base at the current length; a context never exceeds
         * max_position_embeddings here, where the base is unchanged */
        double seq = n_ctx > c->max_position ? n_ctx : c->max_position;
        base *= pow(c->rope_factor * seq / c->max_position - (c->rope_factor - 1), (double)dim / (dim - 2));
    }
    for (int i = 0; i < half; i++)
        inv[i] = pow(base, -2.0 * i / dim); /* as the engine always computed it: tables stay bit-identical */
    switch (c->rope_type) {
    case PLDR_ROPE_LINEAR:
        for (int i = 0; i < half; i++)
            inv[i] /= c->rope_factor;
        break;
    case PLDR_ROPE_YARN: {
        const double orig = c->rope_original_max_position ? c->rope_original_max_position : c->max_position;
        const double two_pi = 6.283185307179586;
        if (!x)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "yarn frequencies need the config's parameters");
        const double beta_fast = x->beta_fast, beta_slow = x->beta_slow;
        const int truncate = x->truncate;
        double lo = dim * log(orig / (beta_fast * two_pi)) / (2 * log(base));
        double hi = dim * log(orig / (beta_slow * two_pi)) / (2 * log(base));
        if (truncate) {
            lo = floor(lo);
            hi = ceil(hi);
        }
        if (lo < 0)
            lo = 0;
        if (hi > dim - 1)
            hi = dim - 1;
        if (lo == hi)
            hi += 0.001;
        for (int i = 0; i < half; i++) {
            double ramp = (i - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double extra = 1 - ramp; /* weight of the unscaled frequency */
            inv[i] = inv[i] / c->rope_factor * (1 - extra) + inv[i] * extra;
        }
        break;
    }
    case PLDR_ROPE_LLAMA3: {
        if (!x)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "llama3 frequencies need the config's parameters");
        const double orig = c->rope_original_max_position, lo_f = x->low_freq_factor, hi_f = x->high_freq_factor;
        const double lo_wl = orig / lo_f, hi_wl = orig / hi_f;
        for (int i = 0; i < half; i++) {
            double wl = 2 * M_PI / inv[i];
            if (wl > lo_wl)
                inv[i] /= c->rope_factor;
            else if (wl >= hi_wl) {
                double smooth = (orig / wl - lo_f) / (hi_f - lo_f);
                inv[i] = (1 - smooth) * inv[i] / c->rope_factor + smooth * inv[i];
            }
        }
        break;
    }
    case PLDR_ROPE_LONGROPE: {
        const int orig = c->rope_original_max_position ? c->rope_original_max_position : c->max_position;
        if (n_ctx > orig)
            return pldr_fail(PLDR_ERR_UNSUPPORTED,
                             "a context of %d tokens with longrope: beyond original_max_position_embeddings (%d) "
                             "transformers switches the whole sequence to the long factors; use a context of at "
                             "most %d",
                             n_ctx, orig, orig);
        if (!x || !x->short_factor)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "longrope frequencies need the config's short_factor");
        for (int i = 0; i < half; i++)
            inv[i] /= x->short_factor[i];
        break;
    }
    default: break;
    }
    return PLDR_OK;
}

static pldr_status read_config(const cfg_reader *r, pldr_config *c)
{
    pldr_status st = read_sizes(r, c);
    if (st == PLDR_OK)
        st = read_head_dim(r, c);
    if (st == PLDR_OK)
        st = read_positive(r, "layer_norm_eps", 1, &c->layer_norm_eps);
    if (st == PLDR_OK)
        st = read_positive(r, "rope_theta", 1, &c->rope_theta);
    if (st == PLDR_OK)
        st = read_behaviour(r, c);
    if (st == PLDR_OK)
        st = read_token_id(r, "bos_token_id", c->vocab_size, &c->bos_token_id);
    if (st == PLDR_OK)
        st = read_token_id(r, "eos_token_id", c->vocab_size, &c->eos_token_id);
    if (st == PLDR_OK)
        st = read_token_id(r, "pad_token_id", c->vocab_size, &c->pad_token_id);
    if (st == PLDR_OK)
        st = read_arch(r, c);
    if (st == PLDR_OK && (c->arch == PLDR_ARCH_TOKEN_CLASSIFICATION || c->arch == PLDR_ARCH_SEQUENCE_CLASSIFICATION))
        st = read_labels(r, c);
    if (st == PLDR_OK)
        st = read_dtype(r, c);
    if (st == PLDR_OK)
        st = read_rope_scaling(r, c);
    if (st == PLDR_OK) {
        switch (c->arch) {
        case PLDR_ARCH_CAUSAL_LM: c->n_outputs = c->vocab_size; break;
        case PLDR_ARCH_MODEL: c->n_outputs = c->d_model; break;
        case PLDR_ARCH_QUESTION_ANSWERING: c->n_outputs = 2; break;
        default: c->n_outputs = c->num_labels; break;
        }
    }
    return st;
}

/* Defaults of the optional keys: the values of every released checkpoint. */
static void set_defaults(pldr_config *c)
{
    memset(c, 0, sizeof *c);
    c->reference_rope = 1;
    c->g_type = PLDR_G_LEARNED;
    c->attention_bias = c->glu_bias = c->final_bias = 1;
    c->bos_token_id = 2;
    c->eos_token_id = 3;
    c->pad_token_id = 0;
}

void pldr_config_extra_free(pldr_config_extra *x)
{
    if (!x)
        return;
    if (x->labels) {
        /* every entry: a read that failed half-way leaves NULL gaps before set ones */
        for (size_t i = 0; i < x->n_labels; i++)
            free(x->labels[i]);
        free(x->labels);
    }
    free(x->short_factor);
    free(x->long_factor);
    memset(x, 0, sizeof *x);
}

pldr_status pldr_config_parse_extra(const char *json, size_t len, const char *label, pldr_config *config,
                                    pldr_config_extra *extra)
{
    if (!json || !label || !config)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_config_parse: NULL argument");
    pldr_config_extra x;
    memset(&x, 0, sizeof x);
    if (extra)
        memset(extra, 0, sizeof *extra);
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", label, err.text,
                         err.line, err.column);
    pldr_config c;
    set_defaults(&c);
    pldr_status st;
    if (!json_is_object(root))
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: not a JSON object", label);
    else
        st = read_config(&(cfg_reader){label, root, &x}, &c);
    json_decref(root);
    if (st == PLDR_OK)
        *config = c;
    if (st == PLDR_OK && extra)
        *extra = x;
    else
        pldr_config_extra_free(&x);
    return st;
}

pldr_status pldr_config_parse(const char *json, size_t len, const char *label, pldr_config *config)
{
    return pldr_config_parse_extra(json, len, label, config, NULL);
}

pldr_status pldr_config_load_extra(const char *path, pldr_config *config, pldr_config_extra *extra)
{
    if (!path || !config)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_config_load: NULL argument");
    unsigned char *text = NULL;
    size_t len = 0;
    pldr_status st = pldr_read_file(path, CONFIG_MAX_BYTES, &text, &len);
    if (st != PLDR_OK)
        return st;
    st = pldr_config_parse_extra((const char *)text, len, path, config, extra);
    free(text);
    return st;
}

pldr_status pldr_config_load(const char *path, pldr_config *config)
{
    return pldr_config_load_extra(path, config, NULL);
}
