/* pldr generate: text in, text out, streamed as tokens are produced. */
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
    "                     [--device SPEC] [--dtype f32|f16]\n"
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
    "      --cache MODE  none, kv or kvg (default kvg)\n"
    "      --ctx N       context size in tokens (default: max_position_embeddings)\n"
    "      --device SPEC OpenCL device: index, platform:device or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default) or f16\n"
    "  -q, --quiet       no summary on stderr\n";

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

int cmd_generate(int argc, char **argv)
{
    enum { O_TEMP = 256, O_TOPK, O_TOPP, O_SEED, O_CACHE, O_CTX, O_DEVICE, O_DTYPE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},    {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},     {"n-tokens", required_argument, 0, 'n'},
        {"temp", required_argument, 0, O_TEMP},  {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP}, {"seed", required_argument, 0, O_SEED},
        {"cache", required_argument, 0, O_CACHE}, {"ctx", required_argument, 0, O_CTX},
        {"device", required_argument, 0, O_DEVICE}, {"dtype", required_argument, 0, O_DTYPE},
        {"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *prompt = NULL, *file = NULL, *device = NULL;
    long n_gen = 64, top_k = 0, ctx_n = 0, seed_l = -1;
    double temp = 0.0, top_p = 1.0;
    int quiet = 0;
    pldr_cache_mode cache = PLDR_CACHE_KVG;
    pldr_dtype dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:n:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case 'q': quiet = 1; break;
        case 'n':
            if (cli_parse_int(optarg, 0, 1L << 24, &n_gen))
                return cli_usage_error("generate", "-n must be an integer >= 0, not '%s'", optarg);
            break;
        case O_TEMP:
            if (cli_parse_double(optarg, 0.0, 1e6, &temp))
                return cli_usage_error("generate", "--temp must be a number >= 0, not '%s'", optarg);
            break;
        case O_TOPK:
            if (cli_parse_int(optarg, 0, 1L << 24, &top_k))
                return cli_usage_error("generate", "--top-k must be an integer >= 0, not '%s'", optarg);
            break;
        case O_TOPP:
            if (cli_parse_double(optarg, 0.0, 1.0, &top_p) || top_p <= 0.0)
                return cli_usage_error("generate", "--top-p must be in (0, 1], not '%s'", optarg);
            break;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffffffffffffL, &seed_l))
                return cli_usage_error("generate", "--seed must be a non-negative integer, not '%s'", optarg);
            break;
        case O_CACHE:
            if (cli_parse_cache(optarg, &cache))
                return cli_usage_error("generate", "--cache must be none, kv or kvg, not '%s'", optarg);
            break;
        case O_CTX:
            if (cli_parse_int(optarg, 1, 1L << 24, &ctx_n))
                return cli_usage_error("generate", "--ctx must be a positive integer, not '%s'", optarg);
            break;
        case O_DEVICE: device = optarg; break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dtype))
                return cli_usage_error("generate", "--dtype must be f32 or f16, not '%s'", optarg);
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("generate", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("generate", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("generate", "unexpected argument '%s'", argv[optind]);
    if (!prompt == !file)
        return cli_usage_error("generate", "give the prompt with exactly one of -p TEXT or -f FILE");
    if (!model_dir)
        model_dir = cli_default_model_dir();

    char *prompt_buf = NULL;
    size_t prompt_len = 0;
    int rc = EXIT_OK;
    if (file) {
        if ((rc = cli_read_text(file, &prompt_buf, &prompt_len)) != EXIT_OK)
            return rc;
        prompt = prompt_buf;
    } else {
        prompt_len = strlen(prompt);
    }

    pldr_tokenizer *tok = NULL;
    pldr_model *model = NULL;
    pldr_context *ctx = NULL;
    pldr_sampler *sampler = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    streamer sm = {0};
    size_t n_ids = 0;
    pldr_status st;

    pldr_sampler_params sp = pldr_sampler_default_params();
    sp.temperature = (float)temp;
    sp.top_k = (int)top_k;
    sp.top_p = (float)top_p;
    sp.seed = seed_l >= 0 ? (uint64_t)seed_l : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if ((st = pldr_sampler_new(&sp, &sampler)) != PLDR_OK) {
        rc = cli_report(st);
        goto done;
    }
    char tok_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.model", model_dir);
    if ((st = pldr_tokenizer_load(tok_path, &tok)) != PLDR_OK) {
        rc = cli_report(st);
        goto done;
    }
    if ((st = pldr_tokenize(tok, prompt, prompt_len, &ids, &n_ids)) != PLDR_OK) {
        rc = cli_report(st);
        goto done;
    }
    if (n_ids == 0) {
        rc = cli_usage_error("generate", "the prompt is empty after tokenization");
        goto done;
    }
    double t0 = now();
    if ((rc = cli_load_model(model_dir, device, dtype, &model)) != EXIT_OK)
        goto done;
    const pldr_config *cfg = pldr_model_config(model);
    if (ctx_n > cfg->max_position) {
        rc = cli_usage_error("generate", "--ctx %ld is more than the model's max_position_embeddings (%d)", ctx_n,
                             cfg->max_position);
        goto done;
    }
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = cache;
    cp.n_ctx = (int)ctx_n;
    if ((st = pldr_context_new(model, &cp, &ctx)) != PLDR_OK) {
        rc = cli_report(st);
        goto done;
    }
    double t_loaded = now();
    if ((int)n_ids > pldr_context_n_ctx(ctx)) {
        fprintf(stderr, "pldr: the prompt is %zu tokens, more than the context of %d tokens (--ctx)\n", n_ids,
                pldr_context_n_ctx(ctx));
        rc = EXIT_CONTEXT;
        goto done;
    }
    const int greedy = pldr_sampler_is_greedy(sampler);
    if (!greedy && !(logits = malloc((size_t)cfg->vocab_size * sizeof(float)))) {
        rc = cli_report(PLDR_ERR_HOST_MEMORY);
        goto done;
    }
    sm.tok = tok;
    sm.cap = n_ids + (size_t)n_gen + 1;
    if (!(sm.ids = malloc(sm.cap * sizeof *sm.ids))) {
        rc = cli_report(PLDR_ERR_HOST_MEMORY);
        goto done;
    }
    memcpy(sm.ids, ids, n_ids * sizeof *ids);
    sm.n = n_ids;
    {
        /* the user's prompt is echoed as typed; the continuation is what the
         * generated tokens add to the decoded prompt */
        char *ptext;
        size_t plen;
        if ((st = pldr_detokenize(tok, sm.ids, sm.n, &ptext, &plen)) != PLDR_OK) {
            rc = cli_report(st);
            goto done;
        }
        sm.printed = plen;
        free(ptext);
    }
    fwrite(prompt, 1, prompt_len, stdout);
    fflush(stdout);

    /* prefill, then one token at a time */
    int32_t next = 0;
    long produced = 0;
    double t_prefill = 0.0, t_start = now();
    const int32_t *feed = ids;
    int n_feed = (int)n_ids;
    int stopped_by_ctx = 0;
    while (produced < n_gen) {
        if (pldr_context_n_past(ctx) + n_feed > pldr_context_n_ctx(ctx)) {
            stopped_by_ctx = 1;
            break;
        }
        st = greedy ? pldr_eval_greedy(ctx, feed, n_feed, &next) : pldr_eval(ctx, feed, n_feed, logits, 0);
        if (st != PLDR_OK) {
            fputc('\n', stdout);
            rc = cli_report(st);
            goto done;
        }
        if (!greedy)
            next = pldr_sampler_sample(sampler, logits, cfg->vocab_size);
        if (produced == 0)
            t_prefill = now() - t_start;
        produced++;
        if (next == cfg->eos_token_id)
            break;
        stream_push(&sm, next, 0);
        feed = &sm.ids[sm.n - 1];
        n_feed = 1;
    }
    stream_push(&sm, -1, 1);
    fputc('\n', stdout);
    fflush(stdout);
    double t_end = now();
    if (!quiet) {
        const pldr_device_info *dev = pldr_model_device(model);
        double t_decode = t_end - t_start - t_prefill;
        long decoded = produced > 0 ? produced - 1 : 0;
        fprintf(stderr, "\ndevice: %s (%s)\n", dev->name, dev->platform);
        fprintf(stderr, "load: %.2f s\n", t_loaded - t0);
        fprintf(stderr, "prompt: %zu tokens, %.1f tok/s\n", n_ids, t_prefill > 0 ? (double)n_ids / t_prefill : 0.0);
        fprintf(stderr, "generated: %ld tokens, %.1f tok/s (cache %s)\n", produced,
                decoded > 0 && t_decode > 0 ? (double)decoded / t_decode : 0.0,
                cache == PLDR_CACHE_NONE ? "none" : cache == PLDR_CACHE_KV ? "kv" : "kvg");
        if (stopped_by_ctx)
            fprintf(stderr, "stopped: the context of %d tokens is full\n", pldr_context_n_ctx(ctx));
        if (!greedy)
            fprintf(stderr, "seed: %llu\n", (unsigned long long)sp.seed);
    }
done:
    free(logits);
    free(ids);
    free(sm.ids);
    free(prompt_buf);
    pldr_sampler_free(sampler);
    pldr_context_free(ctx);
    pldr_model_free(model);
    pldr_tokenizer_free(tok);
    return rc;
}
