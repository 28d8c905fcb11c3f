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

pldr_status pldr_config_parse(const char *json, size_t len, const char *label, pldr_config *config)
{
    if (!json || !label || !config)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_config_parse: NULL argument");
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
        st = read_config(&(cfg_reader){label, root}, &c);
    json_decref(root);
    if (st == PLDR_OK)
        *config = c;
    return st;
}

pldr_status pldr_config_load(const char *path, pldr_config *config)
{
    if (!path || !config)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_config_load: NULL argument");
    unsigned char *text = NULL;
    size_t len = 0;
    pldr_status st = pldr_read_file(path, CONFIG_MAX_BYTES, &text, &len);
    if (st != PLDR_OK)
        return st;
    st = pldr_config_parse((const char *)text, len, path, config);
    free(text);
    return st;
}
