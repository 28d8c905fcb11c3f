/* The JSON of pldr serve's endpoints: validation of completion requests and
 * the bodies of responses and stream chunks (OpenAI's /v1/completions). */
#ifndef PLDR_SERVER_API_H
#define PLDR_SERVER_API_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "pldr.h"

/* An error answer: HTTP status and OpenAI's {"error": {...}} fields. */
typedef struct api_error {
    int status;
    const char *type; /* invalid_request_error, authentication_error, ... */
    const char *code; /* NULL or a short code (context_length_exceeded) */
    char param[64];   /* the offending field, "" if none */
    char message[512];
} api_error;

/* Fills e and returns -1. */
int api_fail(api_error *e, int status, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* {"error": {"message", "type", "param", "code"}} */
json_t *api_error_json(const api_error *e);

/* What validation needs to know of the served model. */
typedef struct api_limits {
    const pldr_tokenizer *tok;
    const pldr_tokenizer_config *tc; /* BOS and EOS around prompts */
    const pldr_config *cfg;
    int n_ctx, n_vocab;
    int max_seqs; /* prompts x n at most */
} api_limits;

typedef struct completion_request {
    int n_prompts;
    int32_t **prompt_ids; /* [n_prompts][n_prompt_ids[i]] */
    int *n_prompt_ids;
    char **prompt_text; /* for echo: the prompt as text (decoded ids for id prompts) */
    size_t *prompt_len;
    int n; /* choices per prompt */
    int max_tokens;
    float temperature, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty;
    int top_k, repeat_last_n, ignore_eos;
    int n_logprobs; /* -1: none */
    uint64_t seed;
    char **stop;
    int n_stop;
    int32_t *bias_ids;
    float *bias_values;
    int n_bias;
    int echo, stream, include_usage;
} completion_request;

/* A JSON string of bytes that should be UTF-8; what is not becomes U+FFFD. */
json_t *api_string(const char *s, size_t n);
/* A token's piece with SentencePiece's word-boundary mark as a space. */
json_t *api_piece_string(const pldr_tokenizer *tok, int32_t id);

/* Validates a /v1/completions body and tokenizes its prompts. Returns 0, or
 * -1 with e filled (400 naming the field, context_length_exceeded with the
 * numbers). */
int api_parse_completion(const char *body, size_t len, const api_limits *lim, completion_request *r, api_error *e);
void api_completion_request_free(completion_request *r);

/* Parses a JSON object body with the nesting depth bounded first (jansson
 * recurses per level). Returns NULL with e filled. */
json_t *api_parse_body(const char *body, size_t len, api_error *e);

#endif
