/* pldr deductive: a report on the outputs of the deductive branch (the
 * PLGA): per layer and head, for A (the metric learner's output), A_LM and
 * G_LM, the RMS value, the determinant (float64 LU with partial pivoting)
 * and how far the tensor moves when it is recomputed over the prompt plus
 * the generated tokens instead of reused from the G-cache of the prompt.
 * The paper's claim under test: for a trained model G_LM hardly depends on
 * the input, so the G-cache can stand in for the deep network. */
#include "config.h"

#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: pldr deductive [-m DIR] (-p PROMPT | -f FILE) [-n N] [--json]\n"
    "                      [--device SPEC] [--dtype T]\n"
    "       pldr deductive --g-cache FILE [--json]\n"
    "\n"
    "Reports, per layer and head, for A (the metric learner's output), A_LM and\n"
    "G_LM of the prompt's G-cache (one prefill forward with KV- and G-cache):\n"
    "  RMS        sqrt(mean of the squared entries)\n"
    "  log|det|   natural log of |det|, computed in float64 by LU with partial\n"
    "             pivoting; sign is -1, 0 or +1; det itself when a double holds it\n"
    "  drift      after N greedy tokens, the tensor recomputed by one forward without\n"
    "             cache over prompt + generated tokens minus the cached one: its RMS,\n"
    "             and relative = drift RMS / RMS of the cached tensor. With -n 0 the\n"
    "             recomputation covers the prompt alone, so the drift is rounding.\n"
    "With --g-cache FILE the same statistics (without drift) describe a G-cache\n"
    "file (G_LM and, when present, A and A_LM); no model is loaded.\n"
    "\n"
    "  -m, --model DIR   model directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -p, --prompt TEXT the prompt\n"
    "  -f, --file FILE   read the prompt from FILE ('-' for stdin)\n"
    "  -n, --n-tokens N  greedy tokens to generate before recomputing (default 32)\n"
    "      --g-cache FILE  report on this G-cache file instead (safetensors)\n"
    "      --json        print the report as JSON (non-finite numbers as null)\n"
    "      --device SPEC OpenCL device: index, platform:device, type (cpu, gpu,\n"
    "                    accelerator) or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default), f16, bf16, q8_0, q4_0\n";

static const char *const TENSOR_NAMES[3] = {"A", "A_LM", "G_LM"};

/* ------------------------------------------------------------ math */

typedef struct tstats {
    double rms;
    double logabsdet; /* -inf for a singular matrix, NaN for non-finite input */
    int sign;         /* -1, 0, +1 */
    double det;
    int det_ok;       /* det holds a normal double (or exactly 0) */
    double drift_rms, drift_rel;
} tstats;

static double rms_of(const float *m, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)m[i] * (double)m[i];
    return sqrt(s / (double)n);
}

static double rms_diff(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    return sqrt(s / (double)n);
}

/* log|det| and sign of the n x n row-major matrix m: LU with partial
 * pivoting in float64 (w: n*n scratch). The log keeps products of 64 pivots
 * from over- or underflowing. */
static void slogdet(const float *m, int n, double *w, double *logabsdet, int *sign)
{
    for (int i = 0; i < n * n; i++)
        w[i] = m[i];
    double lad = 0.0;
    int sg = 1;
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(w[i * n + k]) > fabs(w[p * n + k]))
                p = i;
        const double piv = w[p * n + k];
        if (isnan(piv)) {
            *logabsdet = NAN;
            *sign = 0;
            return;
        }
        if (piv == 0.0) {
            *logabsdet = -INFINITY;
            *sign = 0;
            return;
        }
        if (p != k) {
            for (int j = 0; j < n; j++) {
                const double t = w[k * n + j];
                w[k * n + j] = w[p * n + j];
                w[p * n + j] = t;
            }
            sg = -sg;
        }
        if (piv < 0)
            sg = -sg;
        lad += log(fabs(piv));
        for (int i = k + 1; i < n; i++) {
            const double f = w[i * n + k] / piv;
            for (int j = k + 1; j < n; j++)
                w[i * n + j] -= f * w[k * n + j];
        }
    }
    *logabsdet = lad;
    *sign = sg;
}

static void tensor_stats(const float *m, const float *recomputed, int dk, double *work, tstats *s)
{
    const size_t n = (size_t)dk * (size_t)dk;
    memset(s, 0, sizeof *s);
    s->rms = rms_of(m, n);
    slogdet(m, dk, work, &s->logabsdet, &s->sign);
    if (s->sign == 0 && isinf(s->logabsdet)) {
        s->det = 0.0;
        s->det_ok = 1;
    } else if (isfinite(s->logabsdet) && s->logabsdet > log(DBL_MIN) && s->logabsdet < log(DBL_MAX)) {
        s->det = s->sign * exp(s->logabsdet);
        s->det_ok = 1;
    }
    if (recomputed) {
        s->drift_rms = rms_diff(recomputed, m, n);
        s->drift_rel = s->rms > 0 ? s->drift_rms / s->rms : NAN;
    }
}

/* ------------------------------------------------------------ report */

typedef struct report {
    const pldr_gcache *g;  /* the cached tensors, or the file's */
    const pldr_gcache *re; /* recomputed without cache, or NULL */
    tstats *st;            /* [L][H][3]; unused entries for absent tensors */
    const char *model_dir, *gcache_file;
    uint64_t fingerprint;
    size_t n_prompt, n_gen;
    char *gen_text;
} report;

static const float *tensor_of(const pldr_gcache *g, int i)
{
    return i == 0 ? g->a : i == 1 ? g->a_lm : g->g_lm;
}

static tstats *stat_at(const report *r, int l, int h, int i)
{
    return &r->st[((size_t)l * (size_t)r->g->n_heads + (size_t)h) * 3 + (size_t)i];
}

static int compute_stats(report *r)
{
    const pldr_gcache *g = r->g;
    const int dk = g->head_dim;
    const size_t hdd = (size_t)dk * (size_t)dk;
    r->st = calloc((size_t)g->n_layers * (size_t)g->n_heads * 3, sizeof *r->st);
    double *work = malloc(hdd * sizeof *work);
    if (!r->st || !work) {
        free(work);
        return cli_report(PLDR_ERR_HOST_MEMORY);
    }
    for (int l = 0; l < g->n_layers; l++)
        for (int h = 0; h < g->n_heads; h++)
            for (int i = 0; i < 3; i++) {
                const float *m = tensor_of(g, i);
                if (!m)
                    continue;
                const size_t off = ((size_t)l * (size_t)g->n_heads + (size_t)h) * hdd;
                const float *re = r->re && tensor_of(r->re, i) ? tensor_of(r->re, i) + off : NULL;
                tensor_stats(m + off, re, dk, work, stat_at(r, l, h, i));
            }
    free(work);
    return EXIT_OK;
}

/* Over all heads of one tensor. */
typedef struct tsummary {
    double rms_mean, drift_rel_mean, drift_rel_max, lad_min, lad_max;
    int n, n_negative, n_singular;
} tsummary;

static void summarize(const report *r, int i, tsummary *s)
{
    memset(s, 0, sizeof *s);
    s->lad_min = INFINITY;
    s->lad_max = -INFINITY;
    for (int l = 0; l < r->g->n_layers; l++)
        for (int h = 0; h < r->g->n_heads; h++) {
            const tstats *t = stat_at(r, l, h, i);
            s->n++;
            s->rms_mean += t->rms;
            s->drift_rel_mean += t->drift_rel;
            s->drift_rel_max = fmax(s->drift_rel_max, t->drift_rel);
            s->lad_min = fmin(s->lad_min, t->logabsdet);
            s->lad_max = fmax(s->lad_max, t->logabsdet);
            s->n_negative += t->sign < 0;
            s->n_singular += t->sign == 0;
        }
    s->rms_mean /= s->n;
    s->drift_rel_mean /= s->n;
}

static void print_text(const report *r)
{
    const pldr_gcache *g = r->g;
    if (r->gcache_file)
        printf("G-cache file %s: L=%d H=%d dk=%d\n", r->gcache_file, g->n_layers, g->n_heads, g->head_dim);
    else
        printf("model %s (fingerprint %016llx): prompt %zu tokens, %zu generated (greedy); drift = recomputed "
               "without cache over %zu tokens minus the prompt's G-cache\n",
               r->model_dir, (unsigned long long)r->fingerprint, r->n_prompt, r->n_gen, r->n_prompt + r->n_gen);
    if (r->gen_text)
        printf("generated: %s\n", r->gen_text);
    printf("\nlayer head tensor        RMS    log|det| sign          det%s\n",
           r->re ? "   drift RMS   drift rel" : "");
    for (int l = 0; l < g->n_layers; l++)
        for (int h = 0; h < g->n_heads; h++)
            for (int i = 0; i < 3; i++) {
                if (!tensor_of(g, i))
                    continue;
                const tstats *t = stat_at(r, l, h, i);
                printf("%5d %4d %-6s %10.4g %11.5g %4d ", l, h, TENSOR_NAMES[i], t->rms, t->logabsdet, t->sign);
                if (t->det_ok)
                    printf("%12.4g", t->det);
                else
                    printf("%12s", isnan(t->logabsdet) ? "nan" : t->logabsdet > 0 ? "overflow" : "underflow");
                if (r->re)
                    printf(" %11.4g %11.4g", t->drift_rms, t->drift_rel);
                putchar('\n');
            }
    printf("\nsummary over %d layers x %d heads:\n", g->n_layers, g->n_heads);
    for (int i = 0; i < 3; i++) {
        if (!tensor_of(g, i))
            continue;
        tsummary s;
        summarize(r, i, &s);
        printf("  %-5s mean RMS %.4g, log|det| in [%.5g, %.5g], %d negative, %d singular", TENSOR_NAMES[i],
               s.rms_mean, s.lad_min, s.lad_max, s.n_negative, s.n_singular);
        if (r->re)
            printf(", drift rel mean %.3g max %.3g", s.drift_rel_mean, s.drift_rel_max);
        putchar('\n');
    }
}

void cli_json_number(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.17g", v);
    else
        fputs("null", f);
}

void cli_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_field(const char *name, double v, int comma)
{
    printf("\"%s\": ", name);
    cli_json_number(stdout, v);
    if (comma)
        fputs(", ", stdout);
}

static void json_tensor(const report *r, const tstats *t)
{
    putchar('{');
    json_field("rms", t->rms, 1);
    json_field("logabsdet", t->logabsdet, 1);
    printf("\"sign\": %d, ", t->sign);
    json_field("det", t->det_ok ? t->det : NAN, r->re != NULL);
    if (r->re) {
        json_field("drift_rms", t->drift_rms, 1);
        json_field("drift_rel", t->drift_rel, 0);
    }
    putchar('}');
}

static void json_summary(const report *r)
{
    printf("\"summary\": {");
    int first = 1;
    for (int i = 0; i < 3; i++) {
        if (!tensor_of(r->g, i))
            continue;
        tsummary s;
        summarize(r, i, &s);
        printf("%s\"%s\": {", first ? "" : ", ", TENSOR_NAMES[i]);
        first = 0;
        json_field("rms_mean", s.rms_mean, 1);
        json_field("logabsdet_min", s.lad_min, 1);
        json_field("logabsdet_max", s.lad_max, 1);
        printf("\"n_negative\": %d, \"n_singular\": %d", s.n_negative, s.n_singular);
        if (r->re) {
            fputs(", ", stdout);
            json_field("drift_rel_mean", s.drift_rel_mean, 1);
            json_field("drift_rel_max", s.drift_rel_max, 0);
        }
        putchar('}');
    }
    printf("}");
}

static void print_json(const report *r)
{
    const pldr_gcache *g = r->g;
    printf("{");
    if (r->gcache_file) {
        printf("\"gcache_file\": ");
        cli_json_string(stdout, r->gcache_file);
    } else {
        printf("\"model\": ");
        cli_json_string(stdout, r->model_dir);
        printf(", \"fingerprint\": \"%016llx\", \"prompt_tokens\": %zu, \"generated_tokens\": %zu, "
               "\"generated_text\": ",
               (unsigned long long)r->fingerprint, r->n_prompt, r->n_gen);
        cli_json_string(stdout, r->gen_text ? r->gen_text : "");
    }
    printf(", \"n_layers\": %d, \"n_heads\": %d, \"head_dim\": %d,\n\"layers\": [\n", g->n_layers, g->n_heads,
           g->head_dim);
    for (int l = 0; l < g->n_layers; l++) {
        printf(" {\"layer\": %d, \"heads\": [\n", l);
        for (int h = 0; h < g->n_heads; h++) {
            printf("  {\"head\": %d", h);
            for (int i = 0; i < 3; i++) {
                if (!tensor_of(g, i))
                    continue;
                printf(", \"%s\": ", TENSOR_NAMES[i]);
                json_tensor(r, stat_at(r, l, h, i));
            }
            printf("}%s\n", h + 1 < g->n_heads ? "," : "");
        }
        printf(" ]}%s\n", l + 1 < g->n_layers ? "," : "");
    }
    printf("],\n");
    json_summary(r);
    printf("}\n");
}

/* ------------------------------------------------------------ running */

typedef struct appender {
    int32_t *ids;
    size_t n;
    int32_t eos;
} appender;

/* A picked token goes after the others, unless it is [END] (never part of
 * the sequence). */
static int append_token(const pldr_token_event *ev, void *user)
{
    appender *a = user;
    if (ev->id >= 0 && ev->id != a->eos)
        a->ids[a->n++] = ev->id;
    return 0;
}

/* Greedy generation through a KVG context: the prompt's G-cache into
 * *cached, the generated tokens appended to ids (room for n_gen more). The
 * prompt's forward comes first, for its G-cache; pldr_generate picks the
 * tokens from its logits on. */
static pldr_status run_cached(pldr_model *model, int32_t *ids, size_t n_prompt, long n_gen, size_t *n_out,
                              pldr_gcache *cached)
{
    pldr_context *ctx = NULL;
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = PLDR_CACHE_KVG;
    pldr_status st = pldr_context_new(model, &cp, &ctx);
    const pldr_config *cfg = pldr_model_config(model);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    appender a = {ids, n_prompt, cfg->eos_token_id};
    if (st == PLDR_OK && !logits)
        st = PLDR_ERR_HOST_MEMORY;
    if (st == PLDR_OK)
        st = pldr_eval(ctx, ids, (int)n_prompt, logits, 0);
    if (st == PLDR_OK)
        st = pldr_gcache_from_context(ctx, model, cached);
    if (st == PLDR_OK) {
        pldr_generate_params gp = pldr_generate_default_params(); /* greedy, stops at [END] */
        gp.max_tokens = (int)n_gen;
        st = pldr_generate_ids(ctx, NULL, NULL, 0, logits, &gp, append_token, &a, NULL);
    }
    *n_out = a.n;
    free(logits);
    pldr_context_free(ctx);
    return st;
}

/* One forward without cache over all tokens: the recomputed G-cache. */
static pldr_status run_uncached(pldr_model *model, const int32_t *ids, size_t n, pldr_gcache *re)
{
    pldr_context *ctx = NULL;
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = PLDR_CACHE_NONE;
    pldr_status st = pldr_context_new(model, &cp, &ctx);
    if (st == PLDR_OK)
        st = pldr_eval(ctx, ids, (int)n, NULL, 0);
    if (st == PLDR_OK)
        st = pldr_gcache_from_context(ctx, model, re);
    pldr_context_free(ctx);
    return st;
}

static char *decode(const char *model_dir, const int32_t *ids, size_t n)
{
    char path[4096], *text = NULL;
    size_t len;
    pldr_tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.model", model_dir);
    if (pldr_tokenizer_load(path, &tok) == PLDR_OK && pldr_detokenize(tok, ids, n, &text, &len) != PLDR_OK)
        text = NULL;
    pldr_tokenizer_free(tok);
    return text;
}

typedef struct ded_opts {
    const char *model_dir, *prompt, *file, *gcache, *device;
    long n_gen;
    int json;
    pldr_dtype dtype;
} ded_opts;

static int report_model(const ded_opts *o)
{
    int32_t *prompt_ids = NULL, *ids = NULL;
    size_t n_prompt = 0, n_all = 0;
    pldr_model *model = NULL;
    pldr_gcache cached, re;
    memset(&cached, 0, sizeof cached);
    memset(&re, 0, sizeof re);
    report r;
    memset(&r, 0, sizeof r);
    int rc = cli_prompt_ids("deductive", o->model_dir, o->prompt, o->file, 0, &prompt_ids, &n_prompt);
    if (rc == EXIT_OK)
        rc = cli_load_model(o->model_dir, o->device, o->dtype, &model);
    if (rc == EXIT_OK && n_prompt > (size_t)pldr_model_config(model)->max_position) {
        fprintf(stderr, "pldr: the prompt is %zu tokens, more than max_position_embeddings (%d)\n", n_prompt,
                pldr_model_config(model)->max_position);
        rc = EXIT_CONTEXT;
    }
    if (rc == EXIT_OK && !(ids = malloc((n_prompt + (size_t)o->n_gen) * sizeof *ids)))
        rc = cli_report(PLDR_ERR_HOST_MEMORY);
    if (rc == EXIT_OK) {
        memcpy(ids, prompt_ids, n_prompt * sizeof *ids);
        pldr_status st = run_cached(model, ids, n_prompt, o->n_gen, &n_all, &cached);
        if (st == PLDR_OK)
            st = run_uncached(model, ids, n_all, &re);
        rc = st == PLDR_OK ? EXIT_OK : cli_report(st);
    }
    if (rc == EXIT_OK) {
        r.g = &cached;
        r.re = &re;
        r.model_dir = o->model_dir;
        r.fingerprint = pldr_model_fingerprint(model);
        r.n_prompt = n_prompt;
        r.n_gen = n_all - n_prompt;
        r.gen_text = n_all > n_prompt ? decode(o->model_dir, ids + n_prompt, n_all - n_prompt) : NULL;
        if ((rc = compute_stats(&r)) == EXIT_OK)
            o->json ? print_json(&r) : print_text(&r);
    }
    free(r.st);
    free(r.gen_text);
    pldr_gcache_free(&cached);
    pldr_gcache_free(&re);
    pldr_model_free(model);
    free(ids);
    free(prompt_ids);
    return rc;
}

static int report_file(const ded_opts *o)
{
    pldr_gcache g;
    pldr_status st = pldr_gcache_read(o->gcache, &g);
    if (st != PLDR_OK)
        return cli_report(st);
    report r;
    memset(&r, 0, sizeof r);
    r.g = &g;
    r.gcache_file = o->gcache;
    int rc = compute_stats(&r);
    if (rc == EXIT_OK)
        o->json ? print_json(&r) : print_text(&r);
    free(r.st);
    pldr_gcache_free(&g);
    return rc;
}

int cmd_deductive(int argc, char **argv)
{
    enum { O_JSON = 256, O_GCACHE, O_DEVICE, O_DTYPE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},    {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},     {"n-tokens", required_argument, 0, 'n'},
        {"json", no_argument, 0, O_JSON},        {"g-cache", required_argument, 0, O_GCACHE},
        {"device", required_argument, 0, O_DEVICE}, {"dtype", required_argument, 0, O_DTYPE},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    ded_opts o;
    memset(&o, 0, sizeof o);
    o.n_gen = 32;
    o.dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case 'p': o.prompt = optarg; break;
        case 'f': o.file = optarg; break;
        case O_JSON: o.json = 1; break;
        case O_GCACHE: o.gcache = optarg; break;
        case O_DEVICE: o.device = optarg; break;
        case 'n':
            if (cli_parse_int(optarg, 0, 1L << 20, &o.n_gen))
                return cli_usage_error("deductive", "-n must be an integer >= 0, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &o.dtype))
                return cli_usage_error("deductive", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("deductive", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("deductive", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("deductive", "unexpected argument '%s'", argv[optind]);
    if (o.gcache) {
        if (o.prompt || o.file || o.model_dir)
            return cli_usage_error("deductive", "--g-cache FILE reports on the file alone: no -m, -p or -f");
        return report_file(&o);
    }
    if (!o.prompt == !o.file)
        return cli_usage_error("deductive", "give the prompt with exactly one of -p TEXT or -f FILE");
    if (!o.model_dir)
        o.model_dir = cli_default_model_dir();
    return report_model(&o);
}
