/* pldr perplexity: mean negative log-likelihood and perplexity of a text
 * under the model, by strided windows.
 *
 * Why the modes need care: A = sum over every position of the forward of
 * q^T q, so in one forward over a window the logits of row t depend on the
 * tokens after t through G_LM. Reading all rows of one forward therefore
 * lets each scored token take part in the distribution it is scored under.
 * The default modes instead score every token the way generation would
 * have predicted it, before it is seen; the all-rows reading (the way the
 * reference implementation computes its training and validation loss) is
 * kept behind --all-rows. */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char help[] =
    "usage: pldr perplexity [-m DIR] -f FILE [--ctx N] [--stride S] [--cache none|kv|kvg]\n"
    "                       [--all-rows] [--g-cache FILE] [--json] [--device SPEC]\n"
    "                       [--dtype T]\n"
    "\n"
    "Reports the mean negative log-likelihood per token (natural log, nats) and the\n"
    "perplexity exp(mean NLL) of a text. The whole file is tokenized (no BOS/EOS)\n"
    "into t_0 .. t_{N-1} and evaluated by strided windows: window k covers tokens\n"
    "[b, e) with b = k*S and e = min(b + N_ctx, N), and scores the tokens in [s, e)\n"
    "with s = max(e of window k-1, b + 1): each token is scored once, by the first\n"
    "window that holds it with at least one token before it, and its context is\n"
    "the tokens of its window before it (at least N_ctx - S of them, except in the\n"
    "first window). The last window is the one that reaches t_{N-1}.\n"
    "\n"
    "Each window starts from an empty context; its unscored tokens [b, s) are the\n"
    "prefill (one forward), which gives the first scored token's distribution;\n"
    "then every scored token but the last is fed alone, giving the next one's:\n"
    "  kvg, kv  the feeds go through the KV- (and G-) cache, so A and G_LM come\n"
    "           from the prefill [b, s): every token is predicted exactly as\n"
    "           'pldr generate' with that cache would predict it. In the first\n"
    "           window the prefill is t_0 alone.\n"
    "  none     every feed is a full forward over [b, t) and its last row: the\n"
    "           prediction of 'pldr generate --cache none', A and G_LM recomputed\n"
    "           from the tokens before t. Costs one forward per scored token.\n"
    "  none --all-rows  one forward per window over [b, e), scoring its rows. A sums\n"
    "           over all positions of the forward, so the distribution of a token\n"
    "           depends, through G_LM, on that token and on the later ones in the\n"
    "           window: this is the training-loss computation of the reference\n"
    "           implementation, not a causal perplexity.\n"
    "With a fixed G_LM (--g-cache, or a custom_G_type model) the rows of a forward\n"
    "are causal and all modes give the same result up to rounding.\n"
    "\n"
    "  -m, --model DIR   model directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -f, --file FILE   the text ('-' for stdin)\n"
    "      --ctx N       window length N_ctx in tokens (default: max_position_embeddings)\n"
    "      --stride S    window stride, 1..N_ctx (default N_ctx/2)\n"
    "      --cache MODE  none, kv or kvg (default kvg)\n"
    "      --all-rows    with --cache none: one forward per window, all rows (see above)\n"
    "      --g-cache FILE  use A, A_LM, G_LM from this G-cache file in every window\n"
    "      --json        print the result as JSON\n"
    "      --device SPEC OpenCL device: index, platform:device, type (cpu, gpu,\n"
    "                    accelerator) or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default), f16, bf16, q8_0, q4_0\n"
    "Progress goes to stderr when it is a terminal.\n";

typedef struct ppl_opts {
    const char *model_dir, *file, *gcache, *device;
    long ctx, stride;
    pldr_cache_mode cache;
    int all_rows, json;
    pldr_dtype dtype;
} ppl_opts;

/* Running totals and what the progress line needs. */
typedef struct ppl_acc {
    double nll_sum;
    size_t n_scored, n_target, n_windows;
    double t_start, t_shown;
} ppl_acc;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* -log softmax(logits)[target], in float64. */
static double nll_of(const float *logits, int V, int32_t target)
{
    double m = logits[0];
    for (int i = 1; i < V; i++)
        m = fmax(m, logits[i]);
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - m);
    return m + log(sum) - (double)logits[target];
}

static void progress(ppl_acc *a, int force)
{
    if (!isatty(STDERR_FILENO))
        return;
    const double t = now();
    if (!force && t - a->t_shown < 0.25)
        return;
    a->t_shown = t;
    fprintf(stderr, "\rperplexity: %zu/%zu tokens, window %zu, mean NLL %.4f, %.0f s\033[K", a->n_scored,
            a->n_target, a->n_windows, a->n_scored ? a->nll_sum / (double)a->n_scored : 0.0, t - a->t_start);
    if (force)
        fputs("\r\033[K", stderr);
    fflush(stderr);
}

static void add_score(ppl_acc *a, const float *logits, int V, int32_t target)
{
    a->nll_sum += nll_of(logits, V, target);
    a->n_scored++;
    progress(a, 0);
}

/* Scores [s, e) of the window [b, e): prefill [b, s), then one token at a
 * time (see the help text for what each cache mode means). */
static pldr_status score_stepwise(pldr_context *ctx, const int32_t *ids, int b, int s, int e, float *logits, int V,
                                  ppl_acc *a)
{
    pldr_status st = pldr_eval(ctx, ids + b, s - b, logits, 0);
    if (st != PLDR_OK)
        return st;
    add_score(a, logits, V, ids[s]);
    for (int t = s + 1; t < e; t++) {
        if ((st = pldr_eval(ctx, ids + t - 1, 1, logits, 0)) != PLDR_OK)
            return st;
        add_score(a, logits, V, ids[t]);
    }
    return PLDR_OK;
}

/* --all-rows: one forward over [b, e); row t-1-b predicts t. */
static pldr_status score_all_rows(pldr_context *ctx, const int32_t *ids, int b, int s, int e, float *logits, int V,
                                  ppl_acc *a)
{
    pldr_status st = pldr_eval(ctx, ids + b, e - b, logits, 1);
    for (int t = s; st == PLDR_OK && t < e; t++)
        add_score(a, logits + (size_t)(t - 1 - b) * (size_t)V, V, ids[t]);
    return st;
}

/* Tokens the windows will score: every token from 1 on, except the first
 * token of a window that does not overlap the one before (stride = ctx). */
static size_t count_targets(size_t N, size_t C, size_t S)
{
    size_t n = 0, prev_end = 0;
    for (size_t b = 0;; b += S) {
        const size_t e = b + C < N ? b + C : N, s = prev_end > b + 1 ? prev_end : b + 1;
        n += e > s ? e - s : 0;
        prev_end = e;
        if (e == N)
            break;
    }
    return n;
}

static pldr_status evaluate(pldr_context *ctx, const int32_t *ids, int N, const ppl_opts *o, float *logits, int V,
                            ppl_acc *a)
{
    const int C = (int)o->ctx, S = (int)o->stride;
    a->n_target = count_targets((size_t)N, (size_t)C, (size_t)S);
    a->t_start = now();
    int prev_end = 0;
    for (int b = 0;; b += S) {
        const int e = b + C < N ? b + C : N, s = prev_end > b + 1 ? prev_end : b + 1;
        if (s < e) {
            pldr_context_reset(ctx);
            a->n_windows++;
            pldr_status st = o->all_rows ? score_all_rows(ctx, ids, b, s, e, logits, V, a)
                                         : score_stepwise(ctx, ids, b, s, e, logits, V, a);
            if (st != PLDR_OK)
                return st;
        }
        prev_end = e;
        if (e == N)
            break;
    }
    progress(a, 1);
    return PLDR_OK;
}

static const char *mode_name(pldr_cache_mode m)
{
    return m == PLDR_CACHE_NONE ? "none" : m == PLDR_CACHE_KV ? "kv" : "kvg";
}

static void print_result(const ppl_opts *o, int N, const ppl_acc *a)
{
    const double mean = a->nll_sum / (double)a->n_scored, secs = now() - a->t_start;
    if (!o->json) {
        printf("file: %s, %d tokens\n", o->file, N);
        printf("windows: %zu of %ld tokens, stride %ld; cache %s%s%s%s\n", a->n_windows, o->ctx, o->stride,
               mode_name(o->cache), o->all_rows ? " (all rows)" : "", o->gcache ? "; G-cache " : "",
               o->gcache ? o->gcache : "");
        printf("scored: %zu tokens in %.1f s\n", a->n_scored, secs);
        printf("mean NLL: %.6f nats/token\n", mean);
        printf("perplexity: %.4f\n", exp(mean));
        return;
    }
    printf("{\"file\": ");
    cli_json_string(stdout, o->file);
    printf(", \"tokens\": %d, \"ctx\": %ld, \"stride\": %ld, \"cache\": \"%s\", \"all_rows\": %s, \"g_cache\": ", N,
           o->ctx, o->stride, mode_name(o->cache), o->all_rows ? "true" : "false");
    if (o->gcache)
        cli_json_string(stdout, o->gcache);
    else
        fputs("null", stdout);
    printf(", \"windows\": %zu, \"scored\": %zu, \"mean_nll\": ", a->n_windows, a->n_scored);
    cli_json_number(stdout, mean);
    printf(", \"perplexity\": ");
    cli_json_number(stdout, exp(mean));
    printf(", \"seconds\": %.3f}\n", secs);
}

/* Model and context set up, the windows scored, the result printed. */
static int run(ppl_opts *o, const int32_t *ids, int N)
{
    pldr_model *model = NULL;
    pldr_context *ctx = NULL;
    float *logits = NULL;
    int rc = cli_load_model(o->model_dir, o->device, o->dtype, &model);
    if (rc != EXIT_OK)
        return rc;
    const pldr_config *cfg = pldr_model_config(model);
    const int V = cfg->vocab_size;
    if (o->ctx == 0)
        o->ctx = cfg->max_position;
    if (o->stride == 0)
        o->stride = o->ctx / 2 > 0 ? o->ctx / 2 : 1;
    if (o->ctx > cfg->max_position) {
        rc = cli_usage_error("perplexity", "--ctx %ld is more than the model's max_position_embeddings (%d)", o->ctx,
                             cfg->max_position);
        goto done;
    }
    if (o->stride > o->ctx) {
        rc = cli_usage_error("perplexity", "--stride %ld is more than --ctx %ld", o->stride, o->ctx);
        goto done;
    }
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = o->cache;
    cp.n_ctx = (int)o->ctx;
    pldr_status st = pldr_context_new(model, &cp, &ctx);
    if (st == PLDR_OK && o->gcache && (rc = cli_apply_gcache(ctx, model, o->gcache)) != EXIT_OK)
        goto done;
    const size_t rows = o->all_rows ? (size_t)o->ctx : 1;
    if (st == PLDR_OK && !(logits = malloc(rows * (size_t)V * sizeof *logits)))
        st = PLDR_ERR_HOST_MEMORY;
    ppl_acc acc;
    memset(&acc, 0, sizeof acc);
    if (st == PLDR_OK)
        st = evaluate(ctx, ids, N, o, logits, V, &acc);
    if (st != PLDR_OK) {
        rc = cli_report(st);
        goto done;
    }
    print_result(o, N, &acc);
done:
    free(logits);
    pldr_context_free(ctx);
    pldr_model_free(model);
    return rc;
}

static int parse_options(int argc, char **argv, ppl_opts *o)
{
    enum { O_CTX = 256, O_STRIDE, O_CACHE, O_ALLROWS, O_GCACHE, O_JSON, O_DEVICE, O_DTYPE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"file", required_argument, 0, 'f'},
        {"ctx", required_argument, 0, O_CTX},     {"stride", required_argument, 0, O_STRIDE},
        {"cache", required_argument, 0, O_CACHE}, {"all-rows", no_argument, 0, O_ALLROWS},
        {"g-cache", required_argument, 0, O_GCACHE}, {"json", no_argument, 0, O_JSON},
        {"device", required_argument, 0, O_DEVICE}, {"dtype", required_argument, 0, O_DTYPE},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->cache = PLDR_CACHE_KVG;
    o->dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case 'f': o->file = optarg; break;
        case O_ALLROWS: o->all_rows = 1; break;
        case O_GCACHE: o->gcache = optarg; break;
        case O_JSON: o->json = 1; break;
        case O_DEVICE: o->device = optarg; break;
        case O_CTX:
            if (cli_parse_int(optarg, 2, 1L << 24, &o->ctx))
                return cli_usage_error("perplexity", "--ctx must be an integer >= 2, not '%s'", optarg);
            break;
        case O_STRIDE:
            if (cli_parse_int(optarg, 1, 1L << 24, &o->stride))
                return cli_usage_error("perplexity", "--stride must be a positive integer, not '%s'", optarg);
            break;
        case O_CACHE:
            if (cli_parse_cache(optarg, &o->cache))
                return cli_usage_error("perplexity", "--cache must be none, kv or kvg, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &o->dtype))
                return cli_usage_error("perplexity", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("perplexity", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("perplexity", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("perplexity", "unexpected argument '%s'", argv[optind]);
    if (!o->file)
        return cli_usage_error("perplexity", "-f FILE is required");
    if (o->all_rows && o->cache != PLDR_CACHE_NONE)
        return cli_usage_error("perplexity", "--all-rows needs --cache none");
    if (!o->model_dir)
        o->model_dir = cli_default_model_dir();
    return -1;
}

int cmd_perplexity(int argc, char **argv)
{
    ppl_opts o;
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0)
        return rc;
    int32_t *ids = NULL;
    size_t n = 0;
    if ((rc = cli_prompt_ids("perplexity", o.model_dir, NULL, o.file, -1, &ids, &n)) != EXIT_OK)
        return rc;
    if (n < 2)
        rc = cli_usage_error("perplexity", "%s has %zu token(s): at least 2 are needed", o.file, n);
    else if (n > 0x7fffffff)
        rc = cli_usage_error("perplexity", "%s is too long", o.file);
    else
        rc = run(&o, ids, (int)n);
    free(ids);
    return rc;
}
