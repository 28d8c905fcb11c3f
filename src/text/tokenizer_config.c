/* tokenizer_config.json, as transformers writes it beside a checkpoint: the
 * settings that change what a prompt encodes to (add_bos_token,
 * add_eos_token), padding_side, and the special tokens. The engine encodes
 * prompts without BOS and EOS and never pads; the released PLDR-LLMs agree.
 * What disagrees with the model's config.json or tokenizer.model comes back
 * as warnings for the caller to show. */
#include "config.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pldr.h"
#include "common/util.h"

#define TOKENIZER_CONFIG_MAX_BYTES (16u << 20)

static void warn(pldr_tokenizer_config *tc, const char *fmt, ...)
{
    size_t used = strlen(tc->warnings);
    if (used + 2 >= sizeof tc->warnings)
        return;
    if (used)
        tc->warnings[used++] = '\n';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tc->warnings + used, sizeof tc->warnings - used, fmt, ap);
    va_end(ap);
}

/* A special token: a string, or an AddedToken object {"content": ...}. */
static void read_token(json_t *root, const char *key, char *out, size_t size)
{
    json_t *v = json_object_get(root, key);
    if (v && json_is_object(v))
        v = json_object_get(v, "content");
    if (v && json_is_string(v))
        snprintf(out, size, "%s", json_string_value(v));
}

static int read_flag(const char *path, json_t *root, const char *key, int *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: key \"%s\" must be true or false", path, key), -1;
    *out = json_is_true(v);
    return 0;
}

/* The special token `name` must be the piece of config.json's id for it. */
static void check_special(pldr_tokenizer_config *tc, const pldr_tokenizer *tok, const char *key, const char *name,
                          int id, const char *id_key)
{
    if (!name[0] || !tok)
        return;
    const char *piece = pldr_token_piece(tok, id);
    if (!piece || strcmp(piece, name) != 0)
        warn(tc, "tokenizer_config.json: %s is \"%s\" but config.json's %s %d is the piece \"%s\"", key, name, id_key,
             id, piece ? piece : "(none)");
}

pldr_status pldr_tokenizer_config_load(const char *dir, const pldr_tokenizer *tok, const pldr_config *cfg,
                                       pldr_tokenizer_config *tc)
{
    if (!dir || !tc)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_tokenizer_config_load: NULL argument");
    memset(tc, 0, sizeof *tc);
    char *path = pldr_path_join(dir, "tokenizer_config.json");
    if (!path)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        free(path);
        return PLDR_OK; /* absent: the engine's defaults */
    }
    fclose(probe);
    unsigned char *text = NULL;
    size_t len = 0;
    pldr_status st = pldr_read_file(path, TOKENIZER_CONFIG_MAX_BYTES, &text, &len);
    json_t *root = NULL;
    if (st == PLDR_OK) {
        json_error_t err;
        root = json_loadb((const char *)text, len, 0, &err);
        if (!root || !json_is_object(root))
            st = pldr_fail(PLDR_ERR_FORMAT, "%s: not a JSON object%s%s", path, root ? "" : ": ", root ? "" : err.text);
    }
    if (st == PLDR_OK && (read_flag(path, root, "add_bos_token", &tc->add_bos_token) ||
                          read_flag(path, root, "add_eos_token", &tc->add_eos_token)))
        st = PLDR_ERR_FORMAT;
    if (st == PLDR_OK) {
        tc->present = 1;
        json_t *side = json_object_get(root, "padding_side");
        if (side && json_is_string(side))
            snprintf(tc->padding_side, sizeof tc->padding_side, "%s", json_string_value(side));
        read_token(root, "bos_token", tc->bos_token, sizeof tc->bos_token);
        read_token(root, "eos_token", tc->eos_token, sizeof tc->eos_token);
        read_token(root, "pad_token", tc->pad_token, sizeof tc->pad_token);
        read_token(root, "unk_token", tc->unk_token, sizeof tc->unk_token);
        if (tc->add_bos_token)
            warn(tc, "tokenizer_config.json: add_bos_token is true: prompts start with BOS (id %d), unlike the "
                     "released PLDR-LLMs",
                 cfg ? cfg->bos_token_id : 2);
        if (tc->add_eos_token)
            warn(tc, "tokenizer_config.json: add_eos_token is true: prompts end with EOS (id %d)",
                 cfg ? cfg->eos_token_id : 3);
        if (tc->padding_side[0] && strcmp(tc->padding_side, "right") != 0 && strcmp(tc->padding_side, "left") != 0)
            warn(tc, "tokenizer_config.json: padding_side \"%s\" is neither right nor left", tc->padding_side);
        if (cfg) {
            check_special(tc, tok, "bos_token", tc->bos_token, cfg->bos_token_id, "bos_token_id");
            check_special(tc, tok, "eos_token", tc->eos_token, cfg->eos_token_id, "eos_token_id");
            check_special(tc, tok, "pad_token", tc->pad_token, cfg->pad_token_id, "pad_token_id");
        }
    }
    json_decref(root);
    free(text);
    free(path);
    if (st != PLDR_OK)
        memset(tc, 0, sizeof *tc);
    return st;
}

pldr_status pldr_tokenize_prompt(const pldr_tokenizer *tok, const pldr_tokenizer_config *tc, const pldr_config *cfg,
                                 const char *text, size_t len, int32_t **ids, size_t *n_ids)
{
    pldr_status st = pldr_tokenize(tok, text, len, ids, n_ids);
    if (st != PLDR_OK || !tc || !cfg || (!tc->add_bos_token && !tc->add_eos_token))
        return st;
    int32_t *out = malloc((*n_ids + 2) * sizeof *out);
    if (!out) {
        free(*ids);
        *ids = NULL;
        *n_ids = 0;
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory encoding text");
    }
    size_t n = 0;
    if (tc->add_bos_token)
        out[n++] = cfg->bos_token_id;
    memcpy(out + n, *ids, *n_ids * sizeof *out);
    n += *n_ids;
    if (tc->add_eos_token)
        out[n++] = cfg->eos_token_id;
    free(*ids);
    *ids = out;
    *n_ids = n;
    return PLDR_OK;
}
