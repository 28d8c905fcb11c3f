/* The JSON of pldr serve: validation of /v1/completions requests (every
 * field checked for type and range and named when wrong) and the bodies of
 * responses and stream chunks, in OpenAI's shapes. */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"

#define INVALID "invalid_request_error"
/* Nesting deeper than this is refused before jansson (which recurses) sees it. */
#define MAX_DEPTH 32
#define MAX_STOP 16
#define MAX_STOP_BYTES 256
#define MAX_LOGPROBS 20

json_t *api_string(const char *s, size_t n)
{
    json_t *v = json_stringn(s, n);
    if (v)
        return v;
    char *b = malloc(3 * n + 1);
    if (!b)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        json_t *t = len && i + len <= n && c ? json_stringn(s + i, len) : NULL;
        if (t) {
            memcpy(b + k, s + i, len);
            k += len;
            i += len;
            json_decref(t);
        } else {
            memcpy(b + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    v = json_stringn(b, k);
    free(b);
    return v;
}

json_t *api_piece_string(const pldr_tokenizer *tok, int32_t id)
{
    const char *p = pldr_token_piece(tok, id);
    if (!p)
        return json_null();
    size_t n = strlen(p), k = 0;
    char *b = malloc(n + 1);
    if (!b)
        return NULL;
    for (size_t i = 0; i < n;) {
        if (strncmp(p + i, "\xE2\x96\x81", 3) == 0) {
            b[k++] = ' ';
            i += 3;
        } else {
            b[k++] = p[i++];
        }
    }
    json_t *v = api_string(b, k);
    free(b);
    return v;
}

int api_fail(api_error *e, int status, const char *type, const char *param, const char *fmt, ...)
{
    e->status = status;
    e->type = type;
    e->code = NULL;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

json_t *api_error_json(const api_error *e)
{
    return json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", e->message, "type", e->type, "param",
                     e->param[0] ? json_string(e->param) : json_null(), "code",
                     e->code ? json_string(e->code) : json_null());
}

json_t *api_parse_body(const char *body, size_t len, api_error *e)
{
    int depth = 0, in_str = 0, esc = 0;
    for (size_t i = 0; i < len; i++) {
        const char c = body[i];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > MAX_DEPTH) {
                api_fail(e, 400, INVALID, NULL, "the JSON body is nested more than %d levels deep", MAX_DEPTH);
                return NULL;
            }
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        api_fail(e, 400, INVALID, NULL, "the body is not valid JSON: %s (at byte %d)", jerr.text, jerr.position);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        api_fail(e, 400, INVALID, NULL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

/* A field absent or null takes its default. */
static json_t *field(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

static int get_num(json_t *o, const char *k, double lo, double hi, double def, float *out, api_error *e)
{
    json_t *v = field(o, k);
    if (!v) {
        *out = (float)def;
        return 0;
    }
    if (!json_is_number(v))
        return api_fail(e, 400, INVALID, k, "'%s' must be a number in [%g, %g]", k, lo, hi);
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi)
        return api_fail(e, 400, INVALID, k, "'%s' must be a number in [%g, %g], not %g", k, lo, hi, d);
    *out = (float)d;
    return 0;
}

static int get_int(json_t *o, const char *k, long long lo, long long hi, long long def, long long *out,
                   api_error *e)
{
    json_t *v = field(o, k);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return api_fail(e, 400, INVALID, k, "'%s' must be an integer in [%lld, %lld]", k, lo, hi);
    long long d = json_integer_value(v);
    if (d < lo || d > hi)
        return api_fail(e, 400, INVALID, k, "'%s' must be an integer in [%lld, %lld], not %lld", k, lo, hi, d);
    *out = d;
    return 0;
}

static int get_bool(json_t *o, const char *k, int *out, api_error *e)
{
    json_t *v = field(o, k);
    if (!v) {
        *out = 0;
        return 0;
    }
    if (!json_is_boolean(v))
        return api_fail(e, 400, INVALID, k, "'%s' must be true or false", k);
    *out = json_is_true(v);
    return 0;
}

void api_completion_request_free(completion_request *r)
{
    for (int i = 0; i < r->n_prompts; i++) {
        if (r->prompt_ids)
            free(r->prompt_ids[i]);
        if (r->prompt_text)
            free(r->prompt_text[i]);
    }
    free(r->prompt_ids);
    free(r->n_prompt_ids);
    free(r->prompt_text);
    free(r->prompt_len);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->bias_ids);
    free(r->bias_values);
    memset(r, 0, sizeof *r);
}

static int oom(api_error *e) { return api_fail(e, 503, "server_error", NULL, "out of host memory"); }

/* One prompt from a string, or from an array of token ids. */
static int add_prompt(completion_request *r, int i, json_t *v, const api_limits *lim, api_error *e)
{
    const char *what = r->n_prompts > 1 ? "a prompt" : "the prompt";
    if (json_is_string(v)) {
        size_t n_ids = 0;
        const char *text = json_string_value(v);
        const size_t len = json_string_length(v);
        if (pldr_tokenize_prompt(lim->tok, lim->tc, lim->cfg, text, len, &r->prompt_ids[i], &n_ids) != PLDR_OK)
            return oom(e);
        if (n_ids > (size_t)lim->n_ctx) {
            e->code = "context_length_exceeded";
            api_fail(e, 400, INVALID, "prompt", "%s is %zu tokens, more than the context of %d tokens", what, n_ids,
                     lim->n_ctx);
            e->code = "context_length_exceeded";
            return -1;
        }
        r->n_prompt_ids[i] = (int)n_ids;
        if (!(r->prompt_text[i] = malloc(len + 1)))
            return oom(e);
        memcpy(r->prompt_text[i], text, len + 1);
        r->prompt_len[i] = len;
    } else {
        size_t n_ids = json_array_size(v);
        if (n_ids > (size_t)lim->n_ctx) {
            api_fail(e, 400, INVALID, "prompt", "%s is %zu tokens, more than the context of %d tokens", what, n_ids,
                     lim->n_ctx);
            e->code = "context_length_exceeded";
            return -1;
        }
        if (!(r->prompt_ids[i] = malloc((n_ids + 1) * sizeof(int32_t))))
            return oom(e);
        for (size_t k = 0; k < n_ids; k++) {
            json_t *t = json_array_get(v, k);
            json_int_t id = json_is_integer(t) ? json_integer_value(t) : -1;
            if (id < 0 || id >= lim->n_vocab)
                return api_fail(e, 400, INVALID, "prompt", "token ids in 'prompt' must be integers in [0, %d)",
                                lim->n_vocab);
            r->prompt_ids[i][k] = (int32_t)id;
        }
        r->n_prompt_ids[i] = (int)n_ids;
        if (pldr_detokenize(lim->tok, r->prompt_ids[i], n_ids, &r->prompt_text[i], &r->prompt_len[i]) != PLDR_OK)
            return oom(e);
    }
    if (r->n_prompt_ids[i] == 0)
        return api_fail(e, 400, INVALID, "prompt", "%s is empty (no tokens)", what);
    return 0;
}

static int all_of(json_t *a, int (*is)(const json_t *))
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (!is(v)) return 0;
    return 1;
}
static int is_string(const json_t *v) { return json_is_string(v); }
static int is_integer(const json_t *v) { return json_is_integer(v); }
static int is_id_array(const json_t *v) { return json_is_array(v) && all_of((json_t *)v, is_integer); }

static int parse_prompts(json_t *root, const api_limits *lim, completion_request *r, api_error *e)
{
    json_t *p = field(root, "prompt");
    if (!p)
        return api_fail(e, 400, INVALID, "prompt", "'prompt' is required");
    json_t *list = NULL; /* each element one prompt */
    if (json_is_string(p) || (json_is_array(p) && json_array_size(p) > 0 && all_of(p, is_integer))) {
        list = json_pack("[O]", p);
    } else if (json_is_array(p) && json_array_size(p) > 0 && (all_of(p, is_string) || all_of(p, is_id_array))) {
        list = json_incref(p);
    } else {
        return api_fail(e, 400, INVALID, "prompt",
                        "'prompt' must be a string, an array of strings, an array of token ids or an array of "
                        "arrays of token ids (none empty)");
    }
    if (!list)
        return oom(e);
    size_t n = json_array_size(list);
    if (n > (size_t)lim->max_seqs) {
        json_decref(list);
        return api_fail(e, 400, INVALID, "prompt", "%zu prompts are more than the %d this server takes at once", n,
                        lim->max_seqs);
    }
    r->prompt_ids = calloc(n, sizeof *r->prompt_ids);
    r->n_prompt_ids = calloc(n, sizeof *r->n_prompt_ids);
    r->prompt_text = calloc(n, sizeof *r->prompt_text);
    r->prompt_len = calloc(n, sizeof *r->prompt_len);
    if (!r->prompt_ids || !r->n_prompt_ids || !r->prompt_text || !r->prompt_len) {
        json_decref(list);
        return oom(e);
    }
    r->n_prompts = (int)n;
    for (size_t i = 0; i < n; i++)
        if (add_prompt(r, (int)i, json_array_get(list, i), lim, e) != 0) {
            json_decref(list);
            return -1;
        }
    json_decref(list);
    return 0;
}

static int parse_stop(json_t *root, completion_request *r, api_error *e)
{
    json_t *v = field(root, "stop");
    if (!v)
        return 0;
    json_t *list = json_is_string(v) ? json_pack("[O]", v) : json_is_array(v) ? json_incref(v) : NULL;
    if (!list || json_array_size(list) > MAX_STOP || !all_of(list, is_string)) {
        json_decref(list);
        return api_fail(e, 400, INVALID, "stop", "'stop' must be a string or an array of at most %d strings",
                        MAX_STOP);
    }
    size_t n = json_array_size(list);
    r->stop = calloc(n ? n : 1, sizeof *r->stop);
    if (!r->stop) {
        json_decref(list);
        return oom(e);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(list, i);
        size_t len = json_string_length(s);
        if (len == 0 || len > MAX_STOP_BYTES) {
            json_decref(list);
            return api_fail(e, 400, INVALID, "stop", "each stop string must have 1 to %d bytes", MAX_STOP_BYTES);
        }
        if (!(r->stop[r->n_stop] = strdup(json_string_value(s)))) {
            json_decref(list);
            return oom(e);
        }
        r->n_stop++;
    }
    json_decref(list);
    return 0;
}

static int parse_logit_bias(json_t *root, const api_limits *lim, completion_request *r, api_error *e)
{
    json_t *v = field(root, "logit_bias");
    if (!v)
        return 0;
    if (!json_is_object(v))
        return api_fail(e, 400, INVALID, "logit_bias", "'logit_bias' must be an object of token id: bias");
    size_t n = json_object_size(v);
    r->bias_ids = malloc((n ? n : 1) * sizeof *r->bias_ids);
    r->bias_values = malloc((n ? n : 1) * sizeof *r->bias_values);
    if (!r->bias_ids || !r->bias_values)
        return oom(e);
    const char *key;
    json_t *b;
    json_object_foreach(v, key, b)
    {
        char *end;
        long id = strtol(key, &end, 10);
        if (!*key || *end || id < 0 || id >= lim->n_vocab)
            return api_fail(e, 400, INVALID, "logit_bias", "'logit_bias' keys must be token ids in [0, %d), not '%.32s'",
                            lim->n_vocab, key);
        double d = json_is_number(b) ? json_number_value(b) : NAN;
        if (!isfinite(d) || d < -100 || d > 100)
            return api_fail(e, 400, INVALID, "logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
        r->bias_ids[r->n_bias] = (int32_t)id;
        r->bias_values[r->n_bias] = (float)d;
        r->n_bias++;
    }
    return 0;
}

int api_parse_completion(const char *body, size_t len, const api_limits *lim, completion_request *r, api_error *e)
{
    memset(r, 0, sizeof *r);
    json_t *root = api_parse_body(body, len, e);
    if (!root)
        return -1;
    long long n, max_tokens, top_k, rln, logprobs, seed;
    int rc = -1;
    if (parse_prompts(root, lim, r, e) || get_int(root, "n", 1, 16, 1, &n, e) ||
        get_int(root, "max_tokens", 0, lim->n_ctx, 16, &max_tokens, e) ||
        get_num(root, "temperature", 0, 2, 1.0, &r->temperature, e) || get_num(root, "top_p", 0, 1, 1.0, &r->top_p, e) ||
        get_num(root, "min_p", 0, 1, 0.0, &r->min_p, e) || get_int(root, "top_k", 0, lim->n_vocab, 0, &top_k, e) ||
        get_num(root, "repeat_penalty", 0, 10, 1.0, &r->repeat_penalty, e) ||
        get_int(root, "repeat_last_n", -1, lim->n_ctx, 64, &rln, e) ||
        get_num(root, "presence_penalty", -2, 2, 0.0, &r->presence_penalty, e) ||
        get_num(root, "frequency_penalty", -2, 2, 0.0, &r->frequency_penalty, e) ||
        get_int(root, "logprobs", 0, MAX_LOGPROBS, -1, &logprobs, e) ||
        get_int(root, "seed", INT64_MIN, INT64_MAX, -1, &seed, e) || get_bool(root, "echo", &r->echo, e) ||
        get_bool(root, "stream", &r->stream, e) || get_bool(root, "ignore_eos", &r->ignore_eos, e) ||
        parse_stop(root, r, e) || parse_logit_bias(root, lim, r, e))
        goto out;
    if (r->top_p <= 0) {
        api_fail(e, 400, INVALID, "top_p", "'top_p' must be in (0, 1], not 0");
        goto out;
    }
    if (r->repeat_penalty <= 0) {
        api_fail(e, 400, INVALID, "repeat_penalty", "'repeat_penalty' must be more than 0 (1 is off)");
        goto out;
    }
    json_t *so = field(root, "stream_options");
    if (so && !json_is_object(so)) {
        api_fail(e, 400, INVALID, "stream_options", "'stream_options' must be an object");
        goto out;
    }
    if (so && get_bool(so, "include_usage", &r->include_usage, e) != 0) {
        snprintf(e->param, sizeof e->param, "stream_options");
        goto out;
    }
    json_t *suffix = field(root, "suffix");
    if (suffix && !(json_is_string(suffix) && json_string_length(suffix) == 0)) {
        api_fail(e, 400, "not_supported_error", "suffix", "'suffix' (insertion) is not supported by this model");
        goto out;
    }
    json_t *best_of = field(root, "best_of");
    if (best_of && !(json_is_integer(best_of) && json_integer_value(best_of) == n)) {
        api_fail(e, 400, "not_supported_error", "best_of", "'best_of' other than 'n' is not supported");
        goto out;
    }
    json_t *model = field(root, "model");
    if (model && !json_is_string(model)) {
        api_fail(e, 400, INVALID, "model", "'model' must be a string");
        goto out;
    }
    if ((long long)r->n_prompts * n > lim->max_seqs) {
        api_fail(e, 400, INVALID, "n", "%lld choices of %d prompts are %lld sequences, more than the %d this server "
                 "takes at once", n, r->n_prompts, n * r->n_prompts, lim->max_seqs);
        goto out;
    }
    r->n = (int)n;
    r->max_tokens = (int)max_tokens;
    r->top_k = (int)top_k;
    r->repeat_last_n = (int)rln;
    r->n_logprobs = (int)logprobs;
    if (seed == -1) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec;
    } else {
        r->seed = (uint64_t)seed;
    }
    rc = 0;
out:
    json_decref(root);
    if (rc)
        api_completion_request_free(r);
    return rc;
}
