/* Drives the generation API for tests/cli/test_generate.py.
 *
 *   gen_tool sample N LOGITS PARAMS
 *       N draws from one row of logits ("1.5,0.2,..."), each by a fresh
 *       pldr_gen seeded with the draw's index; PARAMS is "key=value,..."
 *       (temp, top_k, top_p, min_p, rep, rep_n, pres, freq, hist=a:b:c,
 *       bias=id:value:id:value). Prints the count of each id, one a line.
 *   gen_tool detok TOKENIZER SEED N
 *       N random ids through pldr_gen_accept (no end-of-sequence token):
 *       prints "same" when the texts of the events joined are
 *       pldr_detokenize of the ids, else both texts.
 *   gen_tool cancel MODEL_DIR PROMPT K
 *       greedy pldr_generate whose callback cancels at the K-th token;
 *       prints the finish reason, the count, and the text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pldr.h"

static int fail(const char *what)
{
    fprintf(stderr, "gen_tool: %s: %s\n", what, pldr_last_error());
    return 1;
}

static int parse_floats(const char *s, float *out, int max)
{
    int n = 0;
    char *end;
    while (*s && n < max) {
        out[n++] = strtof(s, &end);
        if (end == s)
            return -1;
        s = *end ? end + 1 : end;
    }
    return n;
}

static int sample(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    const long n = atol(argv[2]);
    float logits[4096];
    const int V = parse_floats(argv[3], logits, 4096);
    pldr_generate_params p = pldr_generate_default_params();
    int32_t hist[256], bias_ids[64];
    float bias_v[64], tmp[512];
    int n_hist = 0, n_bias = 0;
    char *params = strdup(argv[4]);
    for (char *kv = strtok(params, ","); kv; kv = strtok(NULL, ",")) {
        char *eq = strchr(kv, '=');
        if (!eq)
            return 2;
        *eq = 0;
        const char *v = eq + 1;
        if (!strcmp(kv, "temp")) p.temperature = strtof(v, NULL);
        else if (!strcmp(kv, "top_k")) p.top_k = atoi(v);
        else if (!strcmp(kv, "top_p")) p.top_p = strtof(v, NULL);
        else if (!strcmp(kv, "min_p")) p.min_p = strtof(v, NULL);
        else if (!strcmp(kv, "rep")) p.repeat_penalty = strtof(v, NULL);
        else if (!strcmp(kv, "rep_n")) p.repeat_last_n = atoi(v);
        else if (!strcmp(kv, "pres")) p.presence_penalty = strtof(v, NULL);
        else if (!strcmp(kv, "freq")) p.frequency_penalty = strtof(v, NULL);
        else if (!strcmp(kv, "hist")) {
            int k = 0;
            for (const char *q = v; *q;) {
                hist[k++] = (int32_t)strtol(q, (char **)&q, 10);
                if (*q == ':')
                    q++;
            }
            n_hist = k;
        } else if (!strcmp(kv, "bias")) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *c = buf; *c; c++)
                if (*c == ':')
                    *c = ',';
            int k = parse_floats(buf, tmp, 512);
            for (int i = 0; i + 1 < k; i += 2) {
                bias_ids[n_bias] = (int32_t)tmp[i];
                bias_v[n_bias++] = tmp[i + 1];
            }
        } else
            return 2;
    }
    free(params);
    p.bias_ids = bias_ids;
    p.bias_values = bias_v;
    p.n_bias = n_bias;
    p.max_tokens = 1;
    long *count = calloc((size_t)V, sizeof *count);
    for (long i = 0; i < n; i++) {
        p.seed = (uint64_t)i;
        pldr_gen *g;
        pldr_token_event ev;
        pldr_finish_reason why;
        if (pldr_gen_new(NULL, &p, V, &g) != PLDR_OK || pldr_gen_set_prompt(g, hist, n_hist) != PLDR_OK ||
            pldr_gen_next(g, logits, &ev, &why) != PLDR_OK)
            return fail("sample");
        count[ev.id]++;
        pldr_gen_free(g);
    }
    for (int i = 0; i < V; i++)
        printf("%ld\n", count[i]);
    free(count);
    return 0;
}

static int detok(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    pldr_tokenizer *tok;
    if (pldr_tokenizer_load(argv[2], &tok) != PLDR_OK)
        return fail("tokenizer");
    srand((unsigned)atoi(argv[3]));
    const int n = atoi(argv[4]), V = pldr_tokenizer_vocab_size(tok);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    /* half of the ids are byte pieces (runs that may or may not form UTF-8) */
    int32_t bytes[256];
    int n_bytes = 0;
    for (int i = 0; i < V && n_bytes < 256; i++) {
        const char *pc = pldr_token_piece(tok, i);
        if (strlen(pc) == 6 && pc[0] == '<' && pc[1] == '0' && pc[2] == 'x')
            bytes[n_bytes++] = i;
    }
    for (int i = 0; i < n; i++)
        ids[i] = n_bytes == 256 && rand() % 2 ? bytes[rand() % 3 ? 0x80 + rand() % 0x78 : rand() % 256] : rand() % V;
    pldr_generate_params p = pldr_generate_default_params();
    pldr_gen *g;
    if (pldr_gen_new(tok, &p, V, &g) != PLDR_OK || pldr_gen_set_prompt(g, NULL, 0) != PLDR_OK)
        return fail("gen");
    char *joined = malloc((size_t)n * 64 + 64);
    size_t len = 0;
    pldr_token_event ev;
    pldr_finish_reason why;
    for (int i = 0; i < n; i++) {
        if (pldr_gen_accept(g, ids[i], &ev, &why) != PLDR_OK)
            return fail("accept");
        memcpy(joined + len, ev.text, ev.text_len);
        len += ev.text_len;
    }
    pldr_gen_finish(g, PLDR_FINISH_LENGTH, &ev);
    memcpy(joined + len, ev.text, ev.text_len);
    len += ev.text_len;
    char *ref;
    size_t ref_len;
    if (pldr_detokenize(tok, ids, (size_t)n, &ref, &ref_len) != PLDR_OK)
        return fail("detokenize");
    if (ref_len == len && memcmp(ref, joined, len) == 0)
        printf("same %zu bytes\n", len);
    else
        printf("differ:\n%.*s\n---\n%s\n", (int)len, joined, ref);
    free(ref);
    free(joined);
    free(ids);
    pldr_gen_free(g);
    pldr_tokenizer_free(tok);
    return 0;
}

typedef struct cancel_state {
    int k, seen;
    char text[4096];
    size_t len;
} cancel_state;

static int on_token(const pldr_token_event *ev, void *user)
{
    cancel_state *s = user;
    if (s->len + ev->text_len < sizeof s->text) {
        memcpy(s->text + s->len, ev->text, ev->text_len);
        s->len += ev->text_len;
    }
    return ev->id >= 0 && ++s->seen == s->k;
}

static int cancel(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", argv[2]);
    pldr_model_params mp = pldr_model_default_params();
    pldr_context_params cp = pldr_context_default_params();
    pldr_model *m;
    pldr_context *ctx;
    pldr_tokenizer *tok;
    if (pldr_model_load(argv[2], &mp, &m) != PLDR_OK || pldr_context_new(m, &cp, &ctx) != PLDR_OK ||
        pldr_tokenizer_load(path, &tok) != PLDR_OK)
        return fail("load");
    cancel_state s = {.k = atoi(argv[4])};
    pldr_generate_params p = pldr_generate_default_params();
    pldr_generate_result r;
    if (pldr_generate(ctx, tok, argv[3], strlen(argv[3]), &p, on_token, &s, &r) != PLDR_OK)
        return fail("generate");
    printf("%s %d %d\n%.*s\n", pldr_finish_reason_string(r.finish), r.n_generated, pldr_context_n_past(ctx),
           (int)s.len, s.text);
    pldr_tokenizer_free(tok);
    pldr_context_free(ctx);
    pldr_model_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "sample"))
        return sample(argc, argv);
    if (!strcmp(argv[1], "detok"))
        return detok(argc, argv);
    if (!strcmp(argv[1], "cancel"))
        return cancel(argc, argv);
    return 2;
}
