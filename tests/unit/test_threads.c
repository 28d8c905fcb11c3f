/* The threading contract of pldr.h: two contexts of one model, used by two
 * threads at the same time, each generate the greedy text that one context
 * generates alone. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pldr.h"
#include "tap.h"

#define ROUNDS 3

typedef struct job {
    pldr_context *ctx;
    const pldr_tokenizer *tok;
    const char *prompt;
    char text[ROUNDS][2048];
    pldr_status st;
} job;

typedef struct sink {
    char *buf;
    size_t len;
} sink;

static int collect(const pldr_token_event *ev, void *user)
{
    sink *s = user;
    if (s->len + ev->text_len < 2047) {
        memcpy(s->buf + s->len, ev->text, ev->text_len);
        s->len += ev->text_len;
        s->buf[s->len] = '\0';
    }
    return 0;
}

static pldr_status generate(pldr_context *ctx, const pldr_tokenizer *tok, const char *prompt, char *out)
{
    pldr_generate_params p = pldr_generate_default_params();
    p.max_tokens = 24;
    sink s = {out, 0};
    out[0] = '\0';
    pldr_context_reset(ctx);
    return pldr_generate(ctx, tok, prompt, strlen(prompt), &p, collect, &s, NULL);
}

static void *run(void *arg)
{
    job *j = arg;
    for (int r = 0; r < ROUNDS && j->st == PLDR_OK; r++)
        j->st = generate(j->ctx, j->tok, j->prompt, j->text[r]);
    return NULL;
}

int main(void)
{
    const char *dir = getenv("PLDR_MODEL");
    if (!dir)
        dir = "models/pldr-tiny-pydocs";
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    pldr_model_params mp = pldr_model_default_params();
    pldr_context_params cp = pldr_context_default_params();
    pldr_model *m = NULL;
    pldr_tokenizer *tok = NULL;
    pldr_context *ctx[2] = {NULL, NULL};
    if (pldr_model_load(dir, &mp, &m) != PLDR_OK || pldr_tokenizer_load(path, &tok) != PLDR_OK ||
        pldr_context_new(m, &cp, &ctx[0]) != PLDR_OK || pldr_context_new(m, &cp, &ctx[1]) != PLDR_OK) {
        tap_ok(0, "load the model and two contexts: %s", pldr_last_error());
        return tap_done();
    }
    static job jobs[2];
    const char *prompts[2] = {"To open a file in Python, use", "The with statement"};
    char alone[2][2048];
    for (int i = 0; i < 2; i++) {
        pldr_status st = generate(ctx[0], tok, prompts[i], alone[i]);
        tap_ok(st == PLDR_OK && alone[i][0], "one context alone: \"%s\" ->%s", prompts[i], alone[i]);
        jobs[i].ctx = ctx[i];
        jobs[i].tok = tok;
        jobs[i].prompt = prompts[i];
        jobs[i].st = PLDR_OK;
    }
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, run, &jobs[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        int same = jobs[i].st == PLDR_OK;
        for (int r = 0; r < ROUNDS && same; r++)
            same = strcmp(jobs[i].text[r], alone[i]) == 0;
        tap_ok(same, "context %d in its own thread, %d rounds beside the other: the same text", i, ROUNDS);
        if (!same)
            tap_diag("status %s; got \"%s\"", pldr_status_string(jobs[i].st), jobs[i].text[0]);
    }
    pldr_context_free(ctx[0]);
    pldr_context_free(ctx[1]);
    pldr_tokenizer_free(tok);
    pldr_model_free(m);
    return tap_done();
}
