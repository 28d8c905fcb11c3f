/* pldr generate: text in, text out, streamed as tokens are produced.
 * Sessions (--save-session / --load-session) let a run stop after the
 * prompt or after some tokens and a later run continue from there. */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char help[] =
    "usage: pldr generate [-m DIR] (-p PROMPT | -f FILE) [-n N] [--temp T] [--top-k K]\n"
    "                     [--top-p P] [--min-p P] [--repeat-penalty X] [--repeat-last-n N]\n"
    "                     [--presence-penalty X] [--frequency-penalty X] [--seed S]\n"
    "                     [--stop TEXT]... [--ignore-eos] [--logprobs N] [-o text|json]\n"
    "                     [--cache none|kv|kvg] [--ctx N] [--g-cache FILE]\n"
    "                     [--save-session FILE] [--load-session FILE]\n"
    "                     [--device SPEC] [--dtype T]\n"
    "\n"
    "Generates text from a prompt. The prompt is encoded without BOS or EOS; text\n"
    "streams to stdout as tokens are produced; generation stops at [END], at a stop\n"
    "string, after N tokens or when the context is full. A summary goes to stderr.\n"
    "Sampling applies, in this order: the penalties, the temperature, top-k, top-p,\n"
    "min-p (llama.cpp's and the OpenAI API's meanings; see pldr.h).\n"
    "\n"
    "  -m, --model DIR   model directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -p, --prompt TEXT the prompt\n"
    "  -f, --file FILE   read the prompt from FILE ('-' for stdin)\n"
    "  -n, --n-tokens N  tokens to generate at most (default 64)\n"
    "      --temp T      temperature, >= 0; 0 is greedy (default 0)\n"
    "      --top-k K     sample among the K most likely tokens, 0 = all (default 0)\n"
    "      --top-p P     nucleus sampling threshold in (0, 1] (default 1)\n"
    "      --min-p P     keep the tokens at least P times as likely as the most likely, in\n"
    "                    [0, 1]; 0 = off (default 0)\n"
    "      --repeat-penalty X  divide the positive logits of the tokens of the last\n"
    "                    --repeat-last-n tokens (prompt included) by X and multiply the\n"
    "                    negative ones, X > 0; 1 = off (default 1)\n"
    "      --repeat-last-n N  window of the penalties in tokens; -1 = all (default 64)\n"
    "      --presence-penalty X  subtract X from the logit of every token in the window\n"
    "                    (default 0)\n"
    "      --frequency-penalty X  subtract X times its count in the window from each\n"
    "                    token's logit (default 0)\n"
    "      --seed S      random seed; the same seed gives the same text (default: from the clock)\n"
    "      --stop TEXT   stop when the text contains TEXT (may be given up to 16 times); the\n"
    "                    stop string is not printed\n"
    "      --ignore-eos  never pick [END]: generate until -n or the context ends it\n"
    "      --logprobs N  with -o json, also the N most likely tokens at each step (0-20)\n"
    "  -o, --output FORMAT  text (default: the prompt and the continuation) or json (one\n"
    "                    object: text, token ids, log-probabilities, finish reason, timings)\n"
    "      --cache MODE  none, kv or kvg (default kvg, or the session's)\n"
    "      --ctx N       context size in tokens (default: max_position_embeddings)\n"
    "      --g-cache FILE  use A, A_LM, G_LM from this G-cache file (safetensors: G_LM\n"
    "                    [L, H, dk, dk] or [L, 1, H, dk, dk], optional A and A_LM) instead\n"
    "                    of the metric learner, from the first forward on\n"
    "      --save-session FILE  at the end, store the tokens, the KV- and G-cache and the\n"
    "                    next-token logits in FILE (the last generated token is fed first,\n"
    "                    unless it is [END]); with -n 0 only the prompt is processed. The\n"
    "                    session holds every token printed: when the context is full,\n"
    "                    generation stops before picking a token it could not feed\n"
    "      --load-session FILE  continue a saved session without recomputing it (it may\n"
    "                    be loaded into a larger --ctx). -p/-f text, if given, is tokenized\n"
    "                    on its own and fed through the restored caches: with the G-cache\n"
    "                    (kvg) its tokens use the session's G_LM, so this is not the same as\n"
    "                    one run over the joined prompt. Only the new text is printed.\n"
    "                    Greedy decoding gives exactly the tokens of an uninterrupted run;\n"
    "                    sampling starts from a fresh --seed\n"
    "      --device SPEC OpenCL device: index, platform:device or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default, or the session's), f16,\n"
    "                    bf16, q8_0 or q4_0\n"
    "      --tune        tune CLBlast and the decode work-group shapes for this model on the\n"
    "                    device first, unless already done (see pldr tune)\n"
    "  -q, --quiet       no summary on stderr\n";

typedef struct gen_opts {
    const char *model_dir, *prompt, *file, *device;
    const char *gcache, *save_session, *load_session;
    long n_gen, ctx_n, n_logprobs;
    cli_sampling sampling;
    int json;
    int quiet, tune;
    pldr_cache_mode cache;
    pldr_dtype dtype;
    int cache_set, dtype_set; /* given on the command line */
} gen_opts;

/* Parses the command line; returns -1 to go on, else an exit code. */
static int parse_options(int argc, char **argv, gen_opts *o)
{
    enum { O_CACHE = 256, O_CTX, O_DEVICE, O_DTYPE, O_GCACHE, O_SAVE, O_LOAD, O_TUNE, O_LOGPROBS };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},    {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},     {"n-tokens", required_argument, 0, 'n'},
        CLI_SAMPLING_OPTIONS,
        {"cache", required_argument, 0, O_CACHE}, {"ctx", required_argument, 0, O_CTX},
        {"device", required_argument, 0, O_DEVICE}, {"dtype", required_argument, 0, O_DTYPE},
        {"g-cache", required_argument, 0, O_GCACHE}, {"save-session", required_argument, 0, O_SAVE},
        {"load-session", required_argument, 0, O_LOAD}, {"tune", no_argument, 0, O_TUNE},
        {"logprobs", required_argument, 0, O_LOGPROBS},
        {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->n_gen = 64;
    cli_sampling_init(&o->sampling);
    o->cache = PLDR_CACHE_KVG;
    o->dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:n:o:qh", opts, NULL)) != -1) {
        int rc;
        if (cli_sampling_option("generate", c, optarg, &o->sampling, &rc)) {
            if (rc != EXIT_OK)
                return rc;
            continue;
        }
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'f': o->file = optarg; break;
        case 'q': o->quiet = 1; break;
        case O_TUNE: o->tune = 1; break;
        case O_DEVICE: o->device = optarg; break;
        case O_GCACHE: o->gcache = optarg; break;
        case O_SAVE: o->save_session = optarg; break;
        case O_LOAD: o->load_session = optarg; break;
        case 'n':
            if (cli_parse_int(optarg, 0, 1L << 24, &o->n_gen))
                return cli_usage_error("generate", "-n must be an integer >= 0, not '%s'", optarg);
            break;
        case O_LOGPROBS:
            if (cli_parse_int(optarg, 0, 20, &o->n_logprobs))
                return cli_usage_error("generate", "--logprobs must be an integer in [0, 20], not '%s'", optarg);
            break;
        case 'o':
            if (strcmp(optarg, "text") != 0 && strcmp(optarg, "json") != 0)
                return cli_usage_error("generate", "-o must be text or json, not '%s'", optarg);
            o->json = strcmp(optarg, "json") == 0;
            break;
        case O_CACHE:
            if (cli_parse_cache(optarg, &o->cache))
                return cli_usage_error("generate", "--cache must be none, kv or kvg, not '%s'", optarg);
            o->cache_set = 1;
            break;
        case O_CTX:
            if (cli_parse_int(optarg, 1, 1L << 24, &o->ctx_n))
                return cli_usage_error("generate", "--ctx must be a positive integer, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &o->dtype))
                return cli_usage_error("generate", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            o->dtype_set = 1;
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("generate", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("generate", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("generate", "unexpected argument '%s'", argv[optind]);
    if (o->prompt && o->file)
        return cli_usage_error("generate", "give the prompt with only one of -p TEXT or -f FILE");
    if (!o->prompt && !o->file && !o->load_session)
        return cli_usage_error("generate", "give the prompt with -p TEXT or -f FILE (or continue with --load-session)");
    if (o->gcache && o->load_session)
        return cli_usage_error("generate", "--g-cache cannot be combined with --load-session: the session holds its "
                                           "own G-cache");
    if (o->n_logprobs > 0 && !o->json)
        return cli_usage_error("generate", "--logprobs needs -o json");
    if (!o->model_dir)
        o->model_dir = cli_default_model_dir();
    if (o->save_session && cli_check_output(o->save_session) != EXIT_OK)
        return EXIT_OUTPUT;
    return -1;
}

/* Everything a run holds; released by gen_free. */
typedef struct gen {
    gen_opts o;
    pldr_tokenizer *tok;
    pldr_model *model;
    pldr_context *ctx;
    pldr_generate_params gp;
    pldr_session session; /* the loaded session's tokens and logits */
    char *prompt_buf;     /* -f */
    size_t prompt_len;
    int32_t *ids; /* the prompt's tokens (appended after the session's) */
    size_t n_ids;
    float *logits; /* [V]: the logits of the context's last token, for --save-session */
    /* -o json: what the events carried */
    char *text;
    size_t text_len, text_cap;
    int32_t *tokens;
    float *lp, *top_lp;
    int32_t *top_ids;
    size_t n_tokens, tokens_cap, lp_cap, top_ids_cap, top_lp_cap;
    int out_failed;
    double t0, t_loaded, t_kernels;
} gen;

static void gen_free(gen *g)
{
    free(g->logits);
    free(g->ids);
    free(g->text);
    free(g->tokens);
    free(g->lp);
    free(g->top_lp);
    free(g->top_ids);
    free(g->prompt_buf);
    pldr_session_clear(&g->session);
    pldr_context_free(g->ctx);
    pldr_model_free(g->model);
    pldr_tokenizer_free(g->tok);
}

/* A session decides the cache mode and weight dtype unless they are given. */
static int session_defaults(gen_opts *o)
{
    pldr_session_info info;
    pldr_status st = pldr_session_read_info(o->load_session, &info);
    if (st != PLDR_OK)
        return cli_report(st);
    if (!o->cache_set)
        o->cache = info.cache_mode;
    if (!o->dtype_set)
        o->dtype = info.weight_dtype;
    return EXIT_OK;
}

/* Generation parameters, tokenizer and the prompt's tokens. */
static int setup_text(gen *g)
{
    const gen_opts *o = &g->o;
    pldr_status st;
    pldr_generate_params *gp = &g->gp;
    *gp = pldr_generate_default_params();
    gp->max_tokens = (int)o->n_gen;
    cli_sampling_apply(&o->sampling, gp);
    gp->logprob = o->json;
    gp->n_logprobs = (int)o->n_logprobs;
    char tok_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.model", o->model_dir);
    if ((st = pldr_tokenizer_load(tok_path, &g->tok)) != PLDR_OK)
        return cli_report(st);
    if (o->file) {
        int rc = cli_read_text(o->file, cli_prompt_limit(o->model_dir, o->ctx_n), &g->prompt_buf, &g->prompt_len);
        if (rc != EXIT_OK)
            return rc;
    } else if (o->prompt) {
        g->prompt_len = strlen(o->prompt);
    }
    const char *text = o->file ? g->prompt_buf : o->prompt ? o->prompt : "";
    if ((st = cli_tokenize_prompt(o->model_dir, g->tok, text, g->prompt_len, &g->ids, &g->n_ids)) != PLDR_OK)
        return cli_report(st);
    if (g->n_ids == 0 && !o->load_session)
        return cli_usage_error("generate", "the prompt is empty after tokenization");
    return EXIT_OK;
}

/* Model, context, G-cache file or session. */
static int setup_model(gen *g)
{
    const gen_opts *o = &g->o;
    pldr_status st;
    int rc;
    g->t0 = now();
    if (o->tune && (rc = cli_tune_if_missing(o->model_dir, o->device, &o->dtype, 1)) != EXIT_OK)
        return rc;
    if ((rc = cli_load_model(o->model_dir, o->device, o->dtype, &g->model)) != EXIT_OK)
        return rc;
    const pldr_config *cfg = pldr_model_config(g->model);
    if (o->ctx_n > cfg->max_position)
        return cli_usage_error("generate", "--ctx %ld is more than the model's max_position_embeddings (%d)", o->ctx_n,
                               cfg->max_position);
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = o->cache;
    cp.n_ctx = (int)o->ctx_n;
    if ((st = pldr_context_new(g->model, &cp, &g->ctx)) != PLDR_OK)
        return cli_report(st);
    /* the kernels' first launches, where a driver compiles them (PoCL), are
     * part of the load, not of the prompt's speed */
    const double t_warm = now();
    if (pldr_model_kernels_compiled(g->model) && g->n_ids > 0 &&
        (st = pldr_generate_warmup(g->ctx, (int)g->n_ids)) != PLDR_OK)
        return cli_report(st);
    g->t_kernels = pldr_model_build_seconds(g->model) + (now() - t_warm);
    if (o->gcache && (rc = cli_apply_gcache(g->ctx, g->model, o->gcache)) != EXIT_OK)
        return rc;
    if (o->load_session) {
        if ((st = pldr_session_load(g->ctx, g->model, o->load_session, &g->session)) != PLDR_OK)
            return cli_report(st);
    }
    g->t_loaded = now();
    const int n_total = pldr_context_n_past(g->ctx) + (int)g->n_ids;
    if (n_total > pldr_context_n_ctx(g->ctx)) {
        fprintf(stderr, "pldr: the prompt is %d tokens, more than the context of %d tokens (--ctx)\n", n_total,
                pldr_context_n_ctx(g->ctx));
        return EXIT_CONTEXT;
    }
    if (o->save_session) {
        if (!(g->logits = malloc((size_t)cfg->vocab_size * sizeof(float))))
            return cli_report(PLDR_ERR_HOST_MEMORY);
        g->gp.out_logits = g->logits;
    }
    if (!g->n_ids && !g->session.logits) {
        fprintf(stderr, "pldr: %s: the session stores no next-token logits; give -p TEXT to continue it\n",
                o->load_session);
        return EXIT_INPUT;
    }
    return EXIT_OK;
}

/* Text output: the prompt as typed, then what each event completes. */
static void print_prompt(const gen *g)
{
    const char *typed = g->o.file ? g->prompt_buf : g->o.prompt;
    if (typed && !g->o.json)
        fwrite(typed, 1, g->prompt_len, stdout);
    fflush(stdout);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* Streams the text (-o text) or keeps it with the token and its
 * log-probabilities for the JSON object (-o json). */
static int on_token(const pldr_token_event *ev, void *user)
{
    gen *g = user;
    if (!g->o.json) {
        fwrite(ev->text, 1, ev->text_len, stdout);
        fflush(stdout);
        return 0;
    }
    if (grow((void **)&g->text, &g->text_cap, g->text_len + ev->text_len + 1, 1)) {
        g->out_failed = 1;
        return 1;
    }
    memcpy(g->text + g->text_len, ev->text, ev->text_len);
    g->text_len += ev->text_len;
    g->text[g->text_len] = '\0';
    if (ev->id < 0)
        return 0;
    const size_t n = g->n_tokens + 1, k = (size_t)g->o.n_logprobs;
    if (grow((void **)&g->tokens, &g->tokens_cap, n, sizeof *g->tokens) ||
        grow((void **)&g->lp, &g->lp_cap, n, sizeof *g->lp) ||
        (k && (grow((void **)&g->top_ids, &g->top_ids_cap, n * k, sizeof *g->top_ids) ||
               grow((void **)&g->top_lp, &g->top_lp_cap, n * k, sizeof *g->top_lp)))) {
        g->out_failed = 1;
        return 1;
    }
    g->tokens[g->n_tokens] = ev->id;
    g->lp[g->n_tokens] = ev->logprob;
    for (size_t j = 0; j < k; j++) {
        g->top_ids[g->n_tokens * k + j] = j < (size_t)ev->n_top ? ev->top_ids[j] : -1;
        g->top_lp[g->n_tokens * k + j] = j < (size_t)ev->n_top ? ev->top_logprobs[j] : NAN;
    }
    g->n_tokens = n;
    return 0;
}

static int generate(gen *g, pldr_generate_result *r)
{
    print_prompt(g);
    pldr_status st = pldr_generate_ids(g->ctx, g->tok, g->ids, (int)g->n_ids, g->session.logits, &g->gp, on_token, g,
                                       r);
    if (g->out_failed)
        return cli_report(PLDR_ERR_HOST_MEMORY);
    if (st != PLDR_OK) {
        fputc('\n', stdout);
        return cli_report(st);
    }
    if (!g->o.json)
        fputc('\n', stdout);
    fflush(stdout);
    return EXIT_OK;
}

static void print_json(const gen *g, const pldr_generate_result *r)
{
    FILE *f = stdout;
    fputs("{\"text\": ", f);
    cli_json_string(f, g->text ? g->text : "");
    fputs(", \"tokens\": [", f);
    for (size_t i = 0; i < g->n_tokens; i++)
        fprintf(f, "%s%ld", i ? ", " : "", (long)g->tokens[i]);
    fputs("], \"logprobs\": [", f);
    for (size_t i = 0; i < g->n_tokens; i++) {
        fputs(i ? ", " : "", f);
        cli_json_number(f, g->lp[i]);
    }
    fputs("]", f);
    const size_t k = (size_t)g->o.n_logprobs;
    if (k) {
        fputs(", \"top_logprobs\": [", f);
        for (size_t i = 0; i < g->n_tokens; i++) {
            fputs(i ? ", [" : "[", f);
            for (size_t j = 0; j < k && g->top_ids[i * k + j] >= 0; j++) {
                fprintf(f, "%s{\"id\": %ld, \"logprob\": ", j ? ", " : "", (long)g->top_ids[i * k + j]);
                cli_json_number(f, g->top_lp[i * k + j]);
                fputs("}", f);
            }
            fputs("]", f);
        }
        fputs("]", f);
    }
    fprintf(f, ", \"finish_reason\": \"%s\", \"n_prompt\": %zu, \"n_generated\": %d", pldr_finish_reason_string(r->finish),
            g->n_ids, r->n_generated);
    fputs(", \"timings\": {\"load_s\": ", f);
    cli_json_number(f, g->t_loaded - g->t0);
    fputs(", \"kernels_s\": ", f);
    cli_json_number(f, g->t_kernels);
    fputs(", \"prefill_s\": ", f);
    cli_json_number(f, r->t_prefill_s);
    fputs(", \"decode_s\": ", f);
    cli_json_number(f, r->t_decode_s);
    fputs("}}\n", f);
    fflush(f);
}

/* Feeds the last token if it was printed but not fed, so that the session
 * ends with every token printed and the logits of the last one, then
 * writes it. */
static int save_session(gen *g, pldr_generate_result *r)
{
    if (r->pending_id >= 0) {
        if (pldr_context_n_past(g->ctx) + 1 > pldr_context_n_ctx(g->ctx)) {
            r->finish = PLDR_FINISH_CONTEXT;
        } else {
            pldr_status st = pldr_eval(g->ctx, &r->pending_id, 1, g->logits, 0);
            if (st != PLDR_OK)
                return cli_report(st);
            r->pending_id = -1;
        }
    }
    const float *last = pldr_context_n_past(g->ctx) > 0 ? g->logits : NULL;
    pldr_status st = pldr_session_save(g->ctx, g->model, g->o.save_session, last);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

static void summary(const gen *g, const pldr_generate_result *r)
{
    const pldr_device_info *dev = pldr_model_device(g->model);
    const pldr_cache_mode cache = pldr_context_cache_mode(g->ctx);
    double t_decode = r->t_decode_s;
    long decoded = r->n_generated > 0 ? r->n_generated - 1 : 0;
    fprintf(stderr, "\ndevice: %s (%s)\n", dev->name, dev->platform);
    fprintf(stderr, "load: %.2f s (kernels %.2f s%s, weights %.2f s)\n", g->t_loaded - g->t0, g->t_kernels,
            pldr_model_kernels_compiled(g->model) ? " compiled for this device: a first start" : " from the cache",
            g->t_loaded - g->t0 - g->t_kernels);
    if (g->o.load_session)
        fprintf(stderr, "session: %d tokens restored from %s\n", g->session.info.n_tokens, g->o.load_session);
    fprintf(stderr, "prompt: %zu tokens, %.1f tok/s\n", g->n_ids,
            r->t_prefill_s > 0 && g->n_ids > 0 ? (double)g->n_ids / r->t_prefill_s : 0.0);
    fprintf(stderr, "generated: %d tokens, %.1f tok/s (cache %s)\n", r->n_generated,
            decoded > 0 && t_decode > 0 ? (double)decoded / t_decode : 0.0,
            cache == PLDR_CACHE_NONE ? "none" : cache == PLDR_CACHE_KV ? "kv" : "kvg");
    if (r->finish == PLDR_FINISH_CONTEXT)
        fprintf(stderr, "stopped: the context of %d tokens is full\n", pldr_context_n_ctx(g->ctx));
    if (g->o.save_session)
        fprintf(stderr, "session: %d tokens saved to %s\n", pldr_context_n_past(g->ctx), g->o.save_session);
    if (g->gp.temperature > 0.0f && g->gp.top_k != 1)
        fprintf(stderr, "seed: %llu\n", (unsigned long long)g->gp.seed);
}

int cmd_generate(int argc, char **argv)
{
    gen g;
    memset(&g, 0, sizeof g);
    int rc = parse_options(argc, argv, &g.o);
    if (rc >= 0)
        return rc;
    pldr_generate_result r;
    if ((!g.o.load_session || (rc = session_defaults(&g.o)) == EXIT_OK) && (rc = setup_text(&g)) == EXIT_OK &&
        (rc = setup_model(&g)) == EXIT_OK && (rc = generate(&g, &r)) == EXIT_OK &&
        (!g.o.save_session || (rc = save_session(&g, &r)) == EXIT_OK)) {
        if (g.o.json)
            print_json(&g, &r);
        if (!g.o.quiet)
            summary(&g, &r);
    }
    gen_free(&g);
    return rc;
}
