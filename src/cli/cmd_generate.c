/* pldr generate: text in, text out, streamed as tokens are produced.
 * Sessions (--save-session / --load-session) let a run stop after the
 * prompt or after some tokens and a later run continue from there. */
#include "config.h"

#include <getopt.h>
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
    "                     [--top-p P] [--seed S] [--cache none|kv|kvg] [--ctx N]\n"
    "                     [--g-cache FILE] [--save-session FILE] [--load-session FILE]\n"
    "                     [--device SPEC] [--dtype T]\n"
    "\n"
    "Generates text from a prompt. The prompt is encoded without BOS or EOS; text\n"
    "streams to stdout as tokens are produced; generation stops at [END] or after N\n"
    "tokens. A summary goes to stderr.\n"
    "\n"
    "  -m, --model DIR   model directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -p, --prompt TEXT the prompt\n"
    "  -f, --file FILE   read the prompt from FILE ('-' for stdin)\n"
    "  -n, --n-tokens N  tokens to generate at most (default 64)\n"
    "      --temp T      temperature, >= 0; 0 is greedy (default 0)\n"
    "      --top-k K     sample among the K most likely tokens, 0 = all (default 0)\n"
    "      --top-p P     nucleus sampling threshold in (0, 1] (default 1)\n"
    "      --seed S      random seed; the same seed gives the same text (default: from the clock)\n"
    "      --cache MODE  none, kv or kvg (default kvg, or the session's)\n"
    "      --ctx N       context size in tokens (default: max_position_embeddings)\n"
    "      --g-cache FILE  use A, A_LM, G_LM from this G-cache file (safetensors: G_LM\n"
    "                    [L, H, dk, dk] or [L, 1, H, dk, dk], optional A and A_LM) instead\n"
    "                    of the metric learner, from the first forward on\n"
    "      --save-session FILE  at the end, store the tokens, the KV- and G-cache and the\n"
    "                    next-token logits in FILE (the last generated token is fed first,\n"
    "                    unless it is [END]); with -n 0 only the prompt is processed\n"
    "      --load-session FILE  continue a saved session without recomputing it; -p/-f\n"
    "                    text, if given, is tokenized on its own and appended; only the\n"
    "                    new text is printed. Greedy decoding gives exactly the tokens of an\n"
    "                    uninterrupted run; sampling starts from a fresh --seed\n"
    "      --device SPEC OpenCL device: index, platform:device or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default, or the session's), f16,\n"
    "                    bf16, q8_0 or q4_0\n"
    "      --tune        tune CLBlast and the decode work-group shapes for this model on the\n"
    "                    device first, unless already done (see pldr tune)\n"
    "  -q, --quiet       no summary on stderr\n";

typedef struct gen_opts {
    const char *model_dir, *prompt, *file, *device;
    const char *gcache, *save_session, *load_session;
    long n_gen, top_k, ctx_n, seed;
    double temp, top_p;
    int quiet, tune;
    pldr_cache_mode cache;
    pldr_dtype dtype;
    int cache_set, dtype_set; /* given on the command line */
} gen_opts;

/* Parses the command line; returns -1 to go on, else an exit code. */
static int parse_options(int argc, char **argv, gen_opts *o)
{
    enum { O_TEMP = 256, O_TOPK, O_TOPP, O_SEED, O_CACHE, O_CTX, O_DEVICE, O_DTYPE, O_GCACHE, O_SAVE, O_LOAD, O_TUNE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},    {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},     {"n-tokens", required_argument, 0, 'n'},
        {"temp", required_argument, 0, O_TEMP},  {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP}, {"seed", required_argument, 0, O_SEED},
        {"cache", required_argument, 0, O_CACHE}, {"ctx", required_argument, 0, O_CTX},
        {"device", required_argument, 0, O_DEVICE}, {"dtype", required_argument, 0, O_DTYPE},
        {"g-cache", required_argument, 0, O_GCACHE}, {"save-session", required_argument, 0, O_SAVE},
        {"load-session", required_argument, 0, O_LOAD}, {"tune", no_argument, 0, O_TUNE},
        {"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->n_gen = 64;
    o->seed = -1;
    o->top_p = 1.0;
    o->cache = PLDR_CACHE_KVG;
    o->dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:n:qh", opts, NULL)) != -1) {
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
        case O_TEMP:
            if (cli_parse_double(optarg, 0.0, 1e6, &o->temp))
                return cli_usage_error("generate", "--temp must be a number from 0 to 1e6, not '%s'", optarg);
            break;
        case O_TOPK:
            if (cli_parse_int(optarg, 0, 1L << 24, &o->top_k))
                return cli_usage_error("generate", "--top-k must be an integer >= 0, not '%s'", optarg);
            break;
        case O_TOPP:
            if (cli_parse_double(optarg, 0.0, 1.0, &o->top_p) || o->top_p <= 0.0)
                return cli_usage_error("generate", "--top-p must be in (0, 1], not '%s'", optarg);
            break;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffffffffffffL, &o->seed))
                return cli_usage_error("generate", "--seed must be a non-negative integer, not '%s'", optarg);
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
    if (!o->model_dir)
        o->model_dir = cli_default_model_dir();
    if (o->save_session && cli_check_output(o->save_session) != EXIT_OK)
        return EXIT_OUTPUT;
    return -1;
}

/* Streams the decoded text: prints what the new tokens add to the text of the
 * prompt, holding back a trailing replacement character that may be the
 * first bytes of a character the next byte piece completes. */
typedef struct streamer {
    const pldr_tokenizer *tok;
    int32_t *ids;
    size_t n, cap;
    size_t printed; /* bytes of the decoded text already printed (incl. the prompt's) */
} streamer;

static int stream_push(streamer *s, int32_t id, int final)
{
    if (id >= 0) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 256;
            int32_t *b = realloc(s->ids, cap * sizeof *b);
            if (!b)
                return -1;
            s->ids = b;
            s->cap = cap;
        }
        s->ids[s->n++] = id;
    }
    char *text;
    size_t len;
    if (pldr_detokenize(s->tok, s->ids, s->n, &text, &len) != PLDR_OK)
        return -1;
    size_t upto = len;
    if (!final && upto >= 3 && memcmp(text + upto - 3, "\xEF\xBF\xBD", 3) == 0)
        upto -= 3;
    if (upto > s->printed) {
        fwrite(text + s->printed, 1, upto - s->printed, stdout);
        fflush(stdout);
        s->printed = upto;
    }
    free(text);
    return 0;
}

/* Everything a run holds; released by gen_free. */
typedef struct gen {
    gen_opts o;
    pldr_tokenizer *tok;
    pldr_model *model;
    pldr_context *ctx;
    pldr_sampler *sampler;
    pldr_sampler_params sp;
    pldr_session session; /* the loaded session's tokens and logits */
    char *prompt_buf;     /* -f */
    size_t prompt_len;
    int32_t *ids; /* the prompt's tokens (appended after the session's) */
    size_t n_ids;
    float *logits;             /* [V] when the logits are read back */
    const float *cur_logits;   /* the logits of the context's last token, if known */
    streamer sm;
    double t0, t_loaded;
} gen;

static void gen_free(gen *g)
{
    free(g->logits);
    free(g->ids);
    free(g->sm.ids);
    free(g->prompt_buf);
    pldr_session_clear(&g->session);
    pldr_sampler_free(g->sampler);
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

/* Sampler, tokenizer and the prompt's tokens. */
static int setup_text(gen *g)
{
    const gen_opts *o = &g->o;
    pldr_status st;
    g->sp = pldr_sampler_default_params();
    g->sp.temperature = (float)o->temp;
    g->sp.top_k = (int)o->top_k;
    g->sp.top_p = (float)o->top_p;
    g->sp.seed = o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if ((st = pldr_sampler_new(&g->sp, &g->sampler)) != PLDR_OK)
        return cli_report(st);
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
    if ((st = pldr_tokenize(g->tok, text, g->prompt_len, &g->ids, &g->n_ids)) != PLDR_OK)
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
    if (o->gcache && (rc = cli_apply_gcache(g->ctx, g->model, o->gcache)) != EXIT_OK)
        return rc;
    if (o->load_session) {
        if ((st = pldr_session_load(g->ctx, g->model, o->load_session, &g->session)) != PLDR_OK)
            return cli_report(st);
        g->cur_logits = g->session.logits;
    }
    g->t_loaded = now();
    const int n_total = pldr_context_n_past(g->ctx) + (int)g->n_ids;
    if (n_total > pldr_context_n_ctx(g->ctx)) {
        fprintf(stderr, "pldr: the prompt is %d tokens, more than the context of %d tokens (--ctx)\n", n_total,
                pldr_context_n_ctx(g->ctx));
        return EXIT_CONTEXT;
    }
    const int need_logits = !pldr_sampler_is_greedy(g->sampler) || o->save_session;
    if (need_logits && !(g->logits = malloc((size_t)cfg->vocab_size * sizeof(float))))
        return cli_report(PLDR_ERR_HOST_MEMORY);
    return EXIT_OK;
}

/* The streamer starts with the session's and the prompt's tokens; the
 * prompt is echoed as typed, the continuation is what the generated tokens
 * add to the decoded text. */
static int setup_stream(gen *g)
{
    const size_t n_sess = (size_t)g->session.info.n_tokens;
    streamer *sm = &g->sm;
    sm->tok = g->tok;
    sm->cap = n_sess + g->n_ids + (size_t)g->o.n_gen + 1;
    if (!(sm->ids = malloc(sm->cap * sizeof *sm->ids)))
        return cli_report(PLDR_ERR_HOST_MEMORY);
    if (n_sess)
        memcpy(sm->ids, g->session.tokens, n_sess * sizeof *sm->ids);
    memcpy(sm->ids + n_sess, g->ids, g->n_ids * sizeof *g->ids);
    sm->n = n_sess + g->n_ids;
    char *text;
    size_t len;
    pldr_status st = pldr_detokenize(g->tok, sm->ids, sm->n, &text, &len);
    if (st != PLDR_OK)
        return cli_report(st);
    sm->printed = len;
    free(text);
    const char *typed = g->o.file ? g->prompt_buf : g->o.prompt;
    if (typed)
        fwrite(typed, 1, g->prompt_len, stdout);
    fflush(stdout);
    return EXIT_OK;
}

/* Feeds n tokens and picks the next one. */
static pldr_status step(gen *g, const int32_t *feed, int n, int32_t *next)
{
    if (!g->logits) {
        g->cur_logits = NULL;
        return pldr_eval_greedy(g->ctx, feed, n, next);
    }
    pldr_status st = pldr_eval(g->ctx, feed, n, g->logits, 0);
    g->cur_logits = st == PLDR_OK ? g->logits : NULL;
    if (st == PLDR_OK)
        *next = pldr_sampler_sample(g->sampler, g->logits, pldr_model_config(g->model)->vocab_size);
    return st;
}

typedef struct gen_result {
    long produced;
    double t_prefill, t_start, t_end;
    int stopped_by_ctx;
    const int32_t *pending; /* tokens produced but not yet fed */
    int n_pending;
} gen_result;

/* The generation loop: feed what is pending (the prompt, then each new
 * token), pick the next token, stream it. */
static int generate(gen *g, gen_result *r)
{
    const int eos = pldr_model_config(g->model)->eos_token_id;
    memset(r, 0, sizeof *r);
    r->pending = g->ids;
    r->n_pending = (int)g->n_ids;
    r->t_start = now();
    while (r->produced < g->o.n_gen) {
        int32_t next = 0;
        if (r->n_pending > 0) {
            if (pldr_context_n_past(g->ctx) + r->n_pending > pldr_context_n_ctx(g->ctx)) {
                r->stopped_by_ctx = 1;
                break;
            }
            pldr_status st = step(g, r->pending, r->n_pending, &next);
            if (st != PLDR_OK) {
                fputc('\n', stdout);
                return cli_report(st);
            }
            r->n_pending = 0;
        } else if (g->session.logits) { /* a resumed session: its next-token logits */
            next = pldr_sampler_sample(g->sampler, g->session.logits, pldr_model_config(g->model)->vocab_size);
        } else {
            fprintf(stderr, "pldr: %s: the session stores no next-token logits; give -p TEXT to continue it\n",
                    g->o.load_session);
            return EXIT_INPUT;
        }
        if (r->produced == 0)
            r->t_prefill = now() - r->t_start;
        r->produced++;
        if (next == eos)
            break;
        if (stream_push(&g->sm, next, 0) != 0)
            return cli_report(PLDR_ERR_HOST_MEMORY);
        r->pending = &g->sm.ids[g->sm.n - 1];
        r->n_pending = 1;
    }
    stream_push(&g->sm, -1, 1);
    fputc('\n', stdout);
    fflush(stdout);
    r->t_end = now();
    return EXIT_OK;
}

/* Feeds what is still pending, so that the session ends with every token
 * printed and the logits of the last one, then writes it. */
static int save_session(gen *g, gen_result *r)
{
    if (r->n_pending > 0) {
        if (pldr_context_n_past(g->ctx) + r->n_pending > pldr_context_n_ctx(g->ctx)) {
            r->stopped_by_ctx = 1;
        } else {
            pldr_status st = pldr_eval(g->ctx, r->pending, r->n_pending, g->logits, 0);
            if (st != PLDR_OK)
                return cli_report(st);
            g->cur_logits = g->logits;
            r->n_pending = 0;
        }
    }
    pldr_status st = pldr_session_save(g->ctx, g->model, g->o.save_session, g->cur_logits);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

static void summary(const gen *g, const gen_result *r)
{
    const pldr_device_info *dev = pldr_model_device(g->model);
    const pldr_cache_mode cache = pldr_context_cache_mode(g->ctx);
    double t_decode = r->t_end - r->t_start - r->t_prefill;
    long decoded = r->produced > 0 ? r->produced - 1 : 0;
    fprintf(stderr, "\ndevice: %s (%s)\n", dev->name, dev->platform);
    fprintf(stderr, "load: %.2f s\n", g->t_loaded - g->t0);
    if (g->o.load_session)
        fprintf(stderr, "session: %d tokens restored from %s\n", g->session.info.n_tokens, g->o.load_session);
    fprintf(stderr, "prompt: %zu tokens, %.1f tok/s\n", g->n_ids,
            r->t_prefill > 0 && g->n_ids > 0 ? (double)g->n_ids / r->t_prefill : 0.0);
    fprintf(stderr, "generated: %ld tokens, %.1f tok/s (cache %s)\n", r->produced,
            decoded > 0 && t_decode > 0 ? (double)decoded / t_decode : 0.0,
            cache == PLDR_CACHE_NONE ? "none" : cache == PLDR_CACHE_KV ? "kv" : "kvg");
    if (r->stopped_by_ctx)
        fprintf(stderr, "stopped: the context of %d tokens is full\n", pldr_context_n_ctx(g->ctx));
    if (g->o.save_session)
        fprintf(stderr, "session: %d tokens saved to %s\n", pldr_context_n_past(g->ctx), g->o.save_session);
    if (!pldr_sampler_is_greedy(g->sampler))
        fprintf(stderr, "seed: %llu\n", (unsigned long long)g->sp.seed);
}

int cmd_generate(int argc, char **argv)
{
    gen g;
    memset(&g, 0, sizeof g);
    int rc = parse_options(argc, argv, &g.o);
    if (rc >= 0)
        return rc;
    gen_result r;
    if ((!g.o.load_session || (rc = session_defaults(&g.o)) == EXIT_OK) && (rc = setup_text(&g)) == EXIT_OK &&
        (rc = setup_model(&g)) == EXIT_OK && (rc = setup_stream(&g)) == EXIT_OK &&
        (rc = generate(&g, &r)) == EXIT_OK && (!g.o.save_session || (rc = save_session(&g, &r)) == EXIT_OK) &&
        !g.o.quiet)
        summary(&g, &r);
    gen_free(&g);
    return rc;
}
