/* pldr batch: many prompts through one multi-sequence context, at most P at
 * a time (pldr_scheduler: continuous batching), results in input order. */
#include "config.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char help[] =
    "usage: pldr batch [-m DIR] -f PROMPTS [-n N] [--parallel P] [--temp T] [--top-k K]\n"
    "                  [--top-p P] [--min-p P] [--repeat-penalty X] [--repeat-last-n N]\n"
    "                  [--presence-penalty X] [--frequency-penalty X] [--seed S]\n"
    "                  [--stop TEXT]... [--ignore-eos] [--cache kv|kvg]\n"
    "                  [--shared-g] [--g-cache FILE] [--ctx N] [-o text|jsonl]\n"
    "                  [--device SPEC] [--dtype f32|f16]\n"
    "\n"
    "Generates a continuation of every prompt of PROMPTS: one prompt per line, or, for a\n"
    "file whose first line starts with '{', JSON lines with a \"prompt\" field. At most P\n"
    "prompts are in the model at a time, decoded together one token each per step; when\n"
    "one finishes, the next prompt is prefilled while the others go on. Each prompt's\n"
    "positions, caches and G_LM are its own: greedy texts are those of pldr generate run\n"
    "on each prompt alone. Results are printed in input order; a summary (sequences,\n"
    "tokens, aggregate tokens per second) goes to stderr.\n"
    "\n"
    "  -m, --model DIR   model directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -f, --file FILE   the prompts ('-' for stdin)\n"
    "  -n, --n-tokens N  tokens to generate at most per prompt (default 64)\n"
    "      --parallel P  prompts decoded together at most (default 4)\n"
    "      --temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n,\n"
    "      --presence-penalty, --frequency-penalty, --stop, --ignore-eos\n"
    "                    as for pldr generate\n"
    "      --seed S      seed of the first prompt; prompt i uses S + i (default: from the clock)\n"
    "      --cache MODE  kv or kvg (default kvg)\n"
    "      --shared-g    every prompt uses the G-cache of the first prompt prefilled (the\n"
    "                    Hugging Face port's cache_first_G): later prefills skip the metric\n"
    "                    learner\n"
    "      --g-cache FILE  every prompt uses the G_LM of this G-cache file\n"
    "      --ctx N       context size in tokens of each sequence (default:\n"
    "                    max_position_embeddings)\n"
    "  -o, --output F    text (default: each prompt and its continuation, then a blank line)\n"
    "                    or jsonl (one object per prompt: index, prompt, text, tokens,\n"
    "                    finish_reason)\n"
    "      --device SPEC OpenCL device: index, platform:device or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default) or f16\n"
    "  -q, --quiet       no summary on stderr\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct item {
    char *prompt;
    int32_t *ids;
    size_t n_ids;
    char *text;
    size_t text_len, text_cap;
    int32_t *tokens;
    size_t n_tokens, tokens_cap;
    int oom;
    int done;
    pldr_generate_result res;
} item;

static int on_token(const pldr_token_event *ev, void *user)
{
    item *it = user;
    if (ev->text_len > 0) {
        if (it->text_len + ev->text_len + 1 > it->text_cap) {
            size_t cap = (it->text_len + ev->text_len + 1) * 2;
            char *t = realloc(it->text, cap);
            if (!t) {
                it->oom = 1;
                return 1;
            }
            it->text = t;
            it->text_cap = cap;
        }
        memcpy(it->text + it->text_len, ev->text, ev->text_len);
        it->text_len += ev->text_len;
        it->text[it->text_len] = '\0';
    }
    if (ev->id >= 0) {
        if (it->n_tokens == it->tokens_cap) {
            size_t cap = it->tokens_cap ? it->tokens_cap * 2 : 64;
            int32_t *t = realloc(it->tokens, cap * sizeof *t);
            if (!t) {
                it->oom = 1;
                return 1;
            }
            it->tokens = t;
            it->tokens_cap = cap;
        }
        it->tokens[it->n_tokens++] = ev->id;
    }
    return 0;
}

static void on_done(const pldr_generate_result *r, void *user)
{
    item *it = user;
    it->res = *r;
    it->done = 1;
}

/* The prompts of the input: lines, or JSON lines' "prompt" fields. */
static int read_prompts(const char *buf, size_t len, item **out, int *n_out)
{
    const char *p = buf, *end = buf + len;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    const int jsonl = p < end && *p == '{';
    item *items = NULL;
    int n = 0, cap = 0, line = 0;
    for (p = buf; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        size_t l = (size_t)(le - p);
        if (l > 0 && p[l - 1] == '\r')
            l--;
        char *prompt = NULL;
        int blank = 1;
        for (size_t i = 0; i < l; i++)
            blank = blank && (p[i] == ' ' || p[i] == '\t');
        if (!blank && jsonl) {
            json_error_t err;
            json_t *j = json_loadb(p, l, 0, &err);
            json_t *v = j ? json_object_get(j, "prompt") : NULL;
            if (!v || !json_is_string(v)) {
                fprintf(stderr, "pldr batch: line %d: %s\n", line,
                        j ? "no \"prompt\" string in the object" : err.text);
                json_decref(j);
                free(items);
                return EXIT_INPUT;
            }
            prompt = strdup(json_string_value(v));
            json_decref(j);
        } else if (!blank) {
            prompt = strndup(p, l);
        }
        if (!blank) {
            if (!prompt || (n == cap && !(items = realloc(items, (size_t)(cap = cap ? cap * 2 : 16) * sizeof *items)))) {
                free(prompt);
                return cli_report(PLDR_ERR_HOST_MEMORY);
            }
            memset(&items[n], 0, sizeof items[n]);
            items[n++].prompt = prompt;
        }
        p = nl ? nl + 1 : end;
    }
    *out = items;
    *n_out = n;
    return EXIT_OK;
}

static void print_json_item(int index, const item *it)
{
    json_t *o = json_object();
    json_object_set_new(o, "index", json_integer(index));
    json_object_set_new(o, "prompt", json_string(it->prompt));
    json_object_set_new(o, "text", json_stringn(it->text ? it->text : "", it->text_len));
    json_t *toks = json_array();
    for (size_t i = 0; i < it->n_tokens; i++)
        json_array_append_new(toks, json_integer(it->tokens[i]));
    json_object_set_new(o, "tokens", toks);
    json_object_set_new(o, "finish_reason", json_string(pldr_finish_reason_string(it->res.finish)));
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

int cmd_batch(int argc, char **argv)
{
    enum {
        O_CACHE = 256, O_SHARED, O_GCACHE, O_CTX, O_DEVICE, O_DTYPE, O_PARALLEL
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"file", required_argument, 0, 'f'},
        {"n-tokens", required_argument, 0, 'n'},    {"parallel", required_argument, 0, O_PARALLEL},
        CLI_SAMPLING_OPTIONS,                       {"cache", required_argument, 0, O_CACHE},
        {"shared-g", no_argument, 0, O_SHARED},     {"g-cache", required_argument, 0, O_GCACHE},
        {"ctx", required_argument, 0, O_CTX},       {"device", required_argument, 0, O_DEVICE},
        {"dtype", required_argument, 0, O_DTYPE},   {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},             {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *file = NULL, *device = NULL, *gcache = NULL;
    long n_gen = 64, parallel = 4, ctx_n = 0;
    cli_sampling sampling;
    cli_sampling_init(&sampling);
    int shared = 0, jsonl = 0, quiet = 0;
    pldr_cache_mode cache = PLDR_CACHE_KVG;
    pldr_dtype dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:f:n:o:qh", opts, NULL)) != -1) {
        int rc;
        if (cli_sampling_option("batch", c, optarg, &sampling, &rc)) {
            if (rc != EXIT_OK)
                return rc;
            continue;
        }
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'f': file = optarg; break;
        case 'q': quiet = 1; break;
        case O_DEVICE: device = optarg; break;
        case O_GCACHE: gcache = optarg; break;
        case O_SHARED: shared = 1; break;
        case 'n':
            if (cli_parse_int(optarg, 0, 1L << 24, &n_gen))
                return cli_usage_error("batch", "-n must be an integer >= 0, not '%s'", optarg);
            break;
        case O_PARALLEL:
            if (cli_parse_int(optarg, 1, PLDR_MAX_SEQ, &parallel))
                return cli_usage_error("batch", "--parallel must be an integer in [1, %d], not '%s'", PLDR_MAX_SEQ,
                                       optarg);
            break;
        case O_CACHE:
            if (cli_parse_cache(optarg, &cache) || cache == PLDR_CACHE_NONE)
                return cli_usage_error("batch", "--cache must be kv or kvg, not '%s'", optarg);
            break;
        case O_CTX:
            if (cli_parse_int(optarg, 1, 1L << 24, &ctx_n))
                return cli_usage_error("batch", "--ctx must be a positive integer, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dtype))
                return cli_usage_error("batch", "--dtype must be f32 or f16, not '%s'", optarg);
            break;
        case 'o':
            if (strcmp(optarg, "text") != 0 && strcmp(optarg, "jsonl") != 0)
                return cli_usage_error("batch", "-o must be text or jsonl, not '%s'", optarg);
            jsonl = strcmp(optarg, "jsonl") == 0;
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("batch", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("batch", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("batch", "unexpected argument '%s'", argv[optind]);
    if (!file)
        return cli_usage_error("batch", "give the prompts with -f FILE");
    if (shared && gcache)
        return cli_usage_error("batch", "give only one of --shared-g (the first prompt's G) and --g-cache FILE");
    if (!model_dir)
        model_dir = cli_default_model_dir();

    char *buf = NULL;
    size_t len = 0;
    int rc = cli_read_text(file, (size_t)1 << 30, &buf, &len);
    if (rc != EXIT_OK)
        return rc;
    item *items = NULL;
    int n = 0;
    rc = read_prompts(buf, len, &items, &n);
    free(buf);
    if (rc != EXIT_OK)
        return rc;
    if (n == 0) {
        free(items);
        return cli_usage_error("batch", "%s holds no prompt", file);
    }
    pldr_tokenizer *tok = NULL;
    pldr_model *model = NULL;
    pldr_context *ctx = NULL;
    pldr_scheduler *sch = NULL;
    char tok_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.model", model_dir);
    pldr_status st = pldr_tokenizer_load(tok_path, &tok);
    if (st != PLDR_OK)
        rc = cli_report(st);
    for (int i = 0; i < n && rc == EXIT_OK; i++) {
        if ((st = pldr_tokenize(tok, items[i].prompt, strlen(items[i].prompt), &items[i].ids, &items[i].n_ids)) !=
            PLDR_OK)
            rc = cli_report(st);
        else if (items[i].n_ids == 0)
            rc = cli_usage_error("batch", "prompt %d is empty after tokenization", i);
    }
    if (rc == EXIT_OK)
        rc = cli_load_model(model_dir, device, dtype, &model);
    const double t0 = now_s();
    if (rc == EXIT_OK) {
        pldr_context_params cp = pldr_context_default_params();
        cp.cache_mode = cache;
        cp.n_ctx = (int)ctx_n;
        cp.n_seq = (int)(parallel < n ? parallel : n);
        cp.shared_g = shared ? PLDR_SHARED_G_FIRST : gcache ? PLDR_SHARED_G_EXTERNAL : PLDR_SHARED_G_NONE;
        if ((st = pldr_context_new(model, &cp, &ctx)) != PLDR_OK)
            rc = cli_report(st);
        else if (gcache)
            rc = cli_apply_gcache(ctx, model, gcache);
        if (rc == EXIT_OK && (st = pldr_scheduler_new(ctx, tok, cp.n_seq, n, &sch)) != PLDR_OK)
            rc = cli_report(st);
    }
    const uint64_t seed0 = cli_sampling_seed(&sampling);
    for (int i = 0; i < n && rc == EXIT_OK; i++) {
        pldr_request rq;
        memset(&rq, 0, sizeof rq);
        rq.prompt_ids = items[i].ids;
        rq.n_prompt = (int)items[i].n_ids;
        rq.gen = pldr_generate_default_params();
        rq.gen.max_tokens = (int)n_gen;
        cli_sampling_apply(&sampling, &rq.gen);
        rq.gen.seed = seed0 + (uint64_t)i;
        rq.on_token = on_token;
        rq.on_done = on_done;
        rq.user = &items[i];
        if ((st = pldr_scheduler_submit(sch, &rq, NULL)) != PLDR_OK)
            rc = cli_report(st);
    }
    for (int left = n; rc == EXIT_OK && left > 0;) {
        if ((st = pldr_scheduler_step(sch, 0)) != PLDR_OK)
            rc = cli_report(st);
        left = 0;
        for (int i = 0; i < n; i++)
            left += !items[i].done;
    }
    const double t1 = now_s();
    long n_prompt = 0, n_out = 0;
    for (int i = 0; i < n && rc == EXIT_OK; i++) {
        if (items[i].oom) {
            rc = cli_report(PLDR_ERR_HOST_MEMORY);
            break;
        }
        n_prompt += (long)items[i].n_ids;
        n_out += items[i].res.n_generated;
        if (jsonl) {
            print_json_item(i, &items[i]);
        } else {
            fputs(items[i].prompt, stdout);
            fwrite(items[i].text ? items[i].text : "", 1, items[i].text_len, stdout);
            fputs("\n\n", stdout);
        }
    }
    if (rc == EXIT_OK && !quiet)
        fprintf(stderr, "pldr batch: %d sequences (%ld at a time), %ld prompt tokens, %ld generated tokens in %.2f s: "
                "%.2f tokens/s generated, %.2f tokens/s processed\n", n, parallel < n ? parallel : (long)n, n_prompt,
                n_out, t1 - t0, n_out / (t1 - t0), (n_prompt + n_out) / (t1 - t0));
    if (rc == EXIT_OK)
        rc = cli_stdout_check();
    pldr_scheduler_free(sch);
    pldr_context_free(ctx);
    pldr_model_free(model);
    pldr_tokenizer_free(tok);
    for (int i = 0; i < n; i++) {
        free(items[i].prompt);
        free(items[i].ids);
        free(items[i].text);
        free(items[i].tokens);
    }
    free(items);
    return rc;
}
