/* The commands of the model classes with a head other than next-token
 * logits: pldr classify (token and sequence classification), pldr qa
 * (question answering) and pldr embed (the last hidden state, any class).
 * Each input runs as one fresh forward through the decoder and the head. */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* A model, its tokenizer and tokenizer_config.json, and one context. */
typedef struct head_run {
    const char *cmd;
    pldr_model *model;
    pldr_context *ctx;
    pldr_tokenizer *tok;
    pldr_tokenizer_config tc;
    const pldr_config *cfg;
} head_run;

static void close_run(head_run *r)
{
    pldr_context_free(r->ctx);
    pldr_model_free(r->model);
    pldr_tokenizer_free(r->tok);
}

/* DIR/config.json, malloc'ed. */
static char *config_path(const char *dir)
{
    char *path = malloc(strlen(dir) + sizeof "/config.json");
    if (path)
        sprintf(path, "%s/config.json", dir);
    return path;
}

static void print_warnings(const char *warnings)
{
    /* one "pldr: warning:" line per mismatch */
    for (const char *w = warnings; *w;) {
        size_t n = strcspn(w, "\n");
        fprintf(stderr, "pldr: warning: %.*s\n", (int)n, w);
        w += n + (w[n] == '\n');
    }
}

pldr_status cli_tokenize_prompt(const char *model_dir, const pldr_tokenizer *tok, const char *text, size_t len,
                                int32_t **ids, size_t *n_ids)
{
    char *path = config_path(model_dir);
    pldr_config cfg;
    pldr_tokenizer_config tc;
    pldr_status st = path ? pldr_config_load(path, &cfg) : PLDR_ERR_HOST_MEMORY;
    free(path);
    /* without a readable config.json (reported later by the model's load) the
     * prompt is encoded as it always was */
    if (st != PLDR_OK || pldr_tokenizer_config_load(model_dir, tok, &cfg, &tc) != PLDR_OK)
        return pldr_tokenize(tok, text, len, ids, n_ids);
    print_warnings(tc.warnings);
    return pldr_tokenize_prompt(tok, &tc, &cfg, text, len, ids, n_ids);
}

/* Loads the model, the tokenizer with tokenizer_config.json (its warnings to
 * stderr) and a context. */
static int open_run(head_run *r, const char *cmd, const char *dir, const char *device, pldr_dtype dtype)
{
    memset(r, 0, sizeof *r);
    r->cmd = cmd;
    int rc = cli_load_model(dir, device, dtype, &r->model);
    if (rc != EXIT_OK)
        return rc;
    r->cfg = pldr_model_config(r->model);
    char *path = malloc(strlen(dir) + sizeof "/tokenizer.model");
    if (!path)
        return cli_report(PLDR_ERR_HOST_MEMORY);
    sprintf(path, "%s/tokenizer.model", dir);
    pldr_status st = pldr_tokenizer_load(path, &r->tok);
    free(path);
    if (st == PLDR_OK)
        st = pldr_tokenizer_config_load(dir, r->tok, r->cfg, &r->tc);
    if (st == PLDR_OK)
        print_warnings(r->tc.warnings);
    pldr_context_params cp = pldr_context_default_params();
    /* longrope's short factors hold up to the original context only */
    if (r->cfg->rope_type == PLDR_ROPE_LONGROPE && r->cfg->rope_original_max_position > 0)
        cp.n_ctx = r->cfg->rope_original_max_position;
    if (st == PLDR_OK)
        st = pldr_context_new(r->model, &cp, &r->ctx);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

/* Encodes one input as the tokenizer settings say; an empty or too long
 * input is reported. */
static int encode(head_run *r, const char *text, size_t len, int32_t **ids, size_t *n)
{
    pldr_status st = pldr_tokenize_prompt(r->tok, &r->tc, r->cfg, text, len, ids, n);
    if (st != PLDR_OK)
        return cli_report(st);
    if (*n == 0) {
        free(*ids);
        *ids = NULL;
        return cli_usage_error(r->cmd, "an input is empty after tokenization");
    }
    if (*n > (size_t)pldr_context_n_ctx(r->ctx)) {
        fprintf(stderr, "pldr %s: an input is %zu tokens, more than the context of %d\n", r->cmd, *n,
                pldr_context_n_ctx(r->ctx));
        free(*ids);
        *ids = NULL;
        return EXIT_CONTEXT;
    }
    return EXIT_OK;
}

/* What a class is, and the command that runs it. */
static const char *class_words(pldr_arch a)
{
    switch (a) {
    case PLDR_ARCH_CAUSAL_LM: return "a causal language model; run it with 'pldr generate' (hidden states: 'pldr embed')";
    case PLDR_ARCH_MODEL: return "a base model without a head; run it with 'pldr embed'";
    case PLDR_ARCH_TOKEN_CLASSIFICATION: return "a token classifier; run it with 'pldr classify'";
    case PLDR_ARCH_SEQUENCE_CLASSIFICATION: return "a sequence classifier; run it with 'pldr classify'";
    case PLDR_ARCH_QUESTION_ANSWERING: return "a question-answering model; run it with 'pldr qa'";
    }
    return "unknown";
}

int cli_check_class(const char *cmd, const char *dir, unsigned archs)
{
    char *path = malloc(strlen(dir) + sizeof "/config.json");
    if (!path)
        return cli_report(PLDR_ERR_HOST_MEMORY);
    sprintf(path, "%s/config.json", dir);
    pldr_config cfg;
    pldr_status st = pldr_config_load(path, &cfg);
    free(path);
    if (st != PLDR_OK)
        return cli_report(st);
    if (archs & (1u << cfg.arch))
        return EXIT_OK;
    fprintf(stderr, "pldr %s: %s is a %s checkpoint: %s\n", cmd, dir, pldr_arch_name(cfg.arch),
            class_words(cfg.arch));
    return EXIT_INPUT;
}

/* Splits text into its non-empty lines (in place): *n of them in *lines;
 * 0 when out of memory. */
static int split_lines(char *text, char ***lines, size_t *n)
{
    size_t cap = 0;
    *lines = NULL;
    *n = 0;
    for (char *p = text; p && *p;) {
        char *end = strchr(p, '\n');
        if (end)
            *end = '\0';
        size_t len = strlen(p);
        if (len && p[len - 1] == '\r')
            p[--len] = '\0';
        if (len) {
            if (*n == cap) {
                cap = cap ? 2 * cap : 16;
                char **grown = realloc(*lines, cap * sizeof *grown);
                if (!grown)
                    return 0;
                *lines = grown;
            }
            (*lines)[(*n)++] = p;
        }
        p = end ? end + 1 : NULL;
    }
    return 1;
}

/* Reads -p TEXT or -f FILE into a malloc'ed, writable copy and splits it into
 * its non-empty lines (at least one); on EXIT_OK free *lines, then *text. */
static int read_lines(const char *cmd, const char *prompt, const char *file, char **text, char ***lines,
                      size_t *n_lines)
{
    *text = NULL;
    *lines = NULL;
    if (!prompt == !file)
        return cli_usage_error(cmd, "give exactly one of -p TEXT and -f FILE");
    int rc = EXIT_OK;
    if (prompt) {
        if (!(*text = strdup(prompt)))
            return cli_report(PLDR_ERR_HOST_MEMORY);
    } else {
        size_t len;
        if ((rc = cli_read_text(file, CLI_TEXT_LIMIT, text, &len)) != EXIT_OK)
            return rc;
    }
    if (!split_lines(*text, lines, n_lines))
        rc = cli_report(PLDR_ERR_HOST_MEMORY);
    else if (*n_lines == 0)
        rc = cli_usage_error(cmd, "the input has no non-empty line");
    if (rc != EXIT_OK) {
        free(*lines);
        free(*text);
    }
    return rc;
}

/* Softmax of n logits into p (float64). */
static void softmax(const float *x, int n, double *p)
{
    double mx = x[0], sum = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    for (int i = 0; i < n; i++)
        sum += p[i] = exp((double)x[i] - mx);
    for (int i = 0; i < n; i++)
        p[i] /= sum;
}

/* Label ids by descending probability (ties: lower id first). */
static void rank(const double *p, int n, int *order)
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) {
        int v = order[i], j = i;
        while (j > 0 && p[order[j - 1]] < p[v])
            order[j] = order[j - 1], j--;
        order[j] = v;
    }
}

static void print_labels_json(const head_run *r, const double *p, const int *order, int top)
{
    printf("[");
    for (int k = 0; k < top; k++) {
        printf("%s{\"label\": ", k ? ", " : "");
        cli_json_string(stdout, pldr_model_label(r->model, order[k]));
        printf(", \"score\": ");
        cli_json_number(stdout, p[order[k]]);
        printf("}");
    }
    printf("]");
}

/* ------------------------------------------------------------------ */
/* pldr classify                                                       */

static const char classify_help[] =
    "usage: pldr classify [-m DIR] (-p TEXT | -f FILE) [--json] [--top N]\n"
    "                     [--device SPEC] [--dtype T]\n"
    "\n"
    "Runs a classification checkpoint on each non-empty line of the input.\n"
    "PldrllmForSequenceClassification: the line's label and every label's probability\n"
    "(softmax of the head's row of the last token that is not the pad token).\n"
    "PldrllmForTokenClassification: each token's piece, label and probability, then\n"
    "the words rebuilt from the pieces (a piece starting with U+2581 starts a word;\n"
    "a word takes its first piece's label).\n"
    "\n"
    "  -m, --model DIR   checkpoint directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -p, --prompt TEXT the input (one input per line)\n"
    "  -f, --file FILE   read the input from FILE ('-': standard input)\n"
    "      --json        one JSON object per input line (JSON Lines) instead of text\n"
    "      --top N       show the N most probable labels (default: every label for\n"
    "                    sequences, 1 per token)\n"
    "      --device SPEC OpenCL device: index, platform:device or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default), f16, bf16, q8_0, q4_0\n";

static int classify_sequence(head_run *r, const char *line, const float *row, int top, int json)
{
    const int L = r->cfg->num_labels;
    double *p = malloc((size_t)L * sizeof *p);
    int *order = malloc((size_t)L * sizeof *order);
    if (!p || !order) {
        free(p);
        free(order);
        return cli_report(PLDR_ERR_HOST_MEMORY);
    }
    softmax(row, L, p);
    rank(p, L, order);
    if (json) {
        printf("{\"text\": ");
        cli_json_string(stdout, line);
        printf(", \"label\": ");
        cli_json_string(stdout, pldr_model_label(r->model, order[0]));
        printf(", \"score\": ");
        cli_json_number(stdout, p[order[0]]);
        printf(", \"labels\": ");
        print_labels_json(r, p, order, top);
        printf("}\n");
    } else {
        printf("%s\t%.4f\t%s\n", pldr_model_label(r->model, order[0]), p[order[0]], line);
        for (int k = 0; k < top; k++)
            printf("  %-16s %.4f\n", pldr_model_label(r->model, order[k]), p[order[k]]);
    }
    free(p);
    free(order);
    return EXIT_OK;
}

/* Whether a piece starts a word (SentencePiece's U+2581 prefix). */
static int starts_word(const char *piece)
{
    return piece && (unsigned char)piece[0] == 0xE2 && (unsigned char)piece[1] == 0x96 &&
           (unsigned char)piece[2] == 0x81;
}

static int classify_tokens(head_run *r, const char *line, const int32_t *ids, size_t n, const float *rows, int top,
                           int json)
{
    const int L = r->cfg->num_labels;
    double *p = malloc((size_t)n * (size_t)L * sizeof *p);
    int *order = malloc((size_t)n * (size_t)L * sizeof *order);
    if (!p || !order) {
        free(p);
        free(order);
        return cli_report(PLDR_ERR_HOST_MEMORY);
    }
    for (size_t t = 0; t < n; t++) {
        softmax(rows + t * (size_t)L, L, p + t * (size_t)L);
        rank(p + t * (size_t)L, L, order + t * (size_t)L);
    }
    if (json) {
        printf("{\"text\": ");
        cli_json_string(stdout, line);
        printf(", \"tokens\": [");
    } else {
        printf("%s\n", line);
    }
    for (size_t t = 0; t < n; t++) {
        const double *pt = p + t * (size_t)L;
        const int *ot = order + t * (size_t)L;
        const char *piece = pldr_token_piece(r->tok, ids[t]);
        if (json) {
            printf("%s{\"id\": %d, \"piece\": ", t ? ", " : "", (int)ids[t]);
            cli_json_string(stdout, piece ? piece : "");
            printf(", \"label\": ");
            cli_json_string(stdout, pldr_model_label(r->model, ot[0]));
            printf(", \"score\": ");
            cli_json_number(stdout, pt[ot[0]]);
            printf(", \"labels\": ");
            print_labels_json(r, pt, ot, top);
            printf("}");
        } else {
            printf("  %-20s", piece ? piece : "");
            for (int k = 0; k < top; k++)
                printf(" %s %.4f", pldr_model_label(r->model, ot[k]), pt[ot[k]]);
            printf("\n");
        }
    }
    /* words: runs of pieces from one that starts a word (or the first) to the next */
    if (json)
        printf("], \"words\": [");
    else
        printf("  words:\n");
    int first_word = 1;
    for (size_t t = 0; t < n;) {
        size_t e = t + 1;
        while (e < n && !starts_word(pldr_token_piece(r->tok, ids[e])))
            e++;
        char *word = NULL;
        size_t wlen = 0;
        pldr_status st = pldr_detokenize(r->tok, ids + t, e - t, &word, &wlen);
        if (st != PLDR_OK) {
            free(p);
            free(order);
            return cli_report(st);
        }
        const char *w = word;
        while (*w == ' ')
            w++;
        const int lab = order[t * (size_t)L];
        if (json) {
            printf("%s{\"word\": ", first_word ? "" : ", ");
            cli_json_string(stdout, w);
            printf(", \"first_token\": %zu, \"tokens\": %zu, \"label\": ", t, e - t);
            cli_json_string(stdout, pldr_model_label(r->model, lab));
            printf(", \"score\": ");
            cli_json_number(stdout, p[t * (size_t)L + (size_t)lab]);
            printf("}");
        } else {
            printf("    %-24s %s %.4f\n", w, pldr_model_label(r->model, lab), p[t * (size_t)L + (size_t)lab]);
        }
        first_word = 0;
        free(word);
        t = e;
    }
    if (json)
        printf("]}\n");
    free(p);
    free(order);
    return EXIT_OK;
}

int cmd_classify(int argc, char **argv)
{
    enum { O_JSON = 256, O_TOP, O_DEVICE, O_DTYPE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},  {"json", no_argument, 0, O_JSON},
        {"top", required_argument, 0, O_TOP}, {"device", required_argument, 0, O_DEVICE},
        {"dtype", required_argument, 0, O_DTYPE}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *prompt = NULL, *file = NULL, *device = NULL;
    int json = 0;
    long top = 0;
    pldr_dtype dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case O_JSON: json = 1; break;
        case O_DEVICE: device = optarg; break;
        case O_TOP:
            if (cli_parse_int(optarg, 1, 1 << 20, &top))
                return cli_usage_error("classify", "--top must be a positive integer, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dtype))
                return cli_usage_error("classify", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case 'h': fputs(classify_help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("classify", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("classify", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("classify", "unexpected argument '%s'", argv[optind]);
    if (!model_dir)
        model_dir = cli_default_model_dir();
    char *text, **lines;
    size_t n_lines;
    int rc = read_lines("classify", prompt, file, &text, &lines, &n_lines);
    if (rc != EXIT_OK)
        return rc;
    head_run r = {0};
    rc = cli_check_class("classify", model_dir,
                         1u << PLDR_ARCH_TOKEN_CLASSIFICATION | 1u << PLDR_ARCH_SEQUENCE_CLASSIFICATION);
    if (rc == EXIT_OK)
        rc = open_run(&r, "classify", model_dir, device, dtype);
    const int sequence = rc == EXIT_OK && r.cfg->arch == PLDR_ARCH_SEQUENCE_CLASSIFICATION;
    const int L = rc == EXIT_OK ? r.cfg->num_labels : 0;
    const int shown = top ? (top < L ? (int)top : L) : (sequence ? L : 1);
    for (size_t i = 0; rc == EXIT_OK && i < n_lines; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        float *rows = NULL;
        int n_rows = 0;
        if ((rc = encode(&r, lines[i], strlen(lines[i]), &ids, &n)) != EXIT_OK)
            break;
        if (!(rows = malloc(n * (size_t)L * sizeof *rows)))
            rc = cli_report(PLDR_ERR_HOST_MEMORY);
        pldr_status st = rc == EXIT_OK ? pldr_eval_head(r.ctx, ids, (int)n, rows, &n_rows) : PLDR_OK;
        if (st != PLDR_OK)
            rc = cli_report(st);
        else if (rc == EXIT_OK)
            rc = sequence ? classify_sequence(&r, lines[i], rows, shown, json)
                          : classify_tokens(&r, lines[i], ids, n, rows, shown, json);
        free(rows);
        free(ids);
        if (rc == EXIT_OK)
            rc = cli_stdout_check();
    }
    close_run(&r);
    free(lines);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ */
/* pldr qa                                                             */

static const char qa_help[] =
    "usage: pldr qa [-m DIR] --question Q --context C [--max-answer N] [--json]\n"
    "               [--device SPEC] [--dtype T]\n"
    "\n"
    "Runs a PldrllmForQuestionAnswering checkpoint on the question's tokens followed\n"
    "by the context's and prints the best answer span within the context: the span\n"
    "i..j (j - i < N) with the largest p_start(i) x p_end(j), each a softmax over the\n"
    "context's tokens, its text and that score.\n"
    "\n"
    "  -m, --model DIR     checkpoint directory (default: $PLDR_MODEL or the bundled model)\n"
    "      --question Q    the question\n"
    "      --context C     the text holding the answer\n"
    "      --max-answer N  longest answer in tokens (default 30)\n"
    "      --json          a JSON object instead of text\n"
    "      --device SPEC   OpenCL device: index, platform:device or name substring\n"
    "      --dtype T       weight storage on the device: f32 (default), f16, bf16, q8_0, q4_0\n";

int cmd_qa(int argc, char **argv)
{
    enum { O_QUESTION = 256, O_CONTEXT, O_MAX, O_JSON, O_DEVICE, O_DTYPE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},        {"question", required_argument, 0, O_QUESTION},
        {"context", required_argument, 0, O_CONTEXT}, {"max-answer", required_argument, 0, O_MAX},
        {"json", no_argument, 0, O_JSON},             {"device", required_argument, 0, O_DEVICE},
        {"dtype", required_argument, 0, O_DTYPE},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *question = NULL, *context = NULL, *device = NULL;
    long max_answer = 30;
    int json = 0;
    pldr_dtype dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case O_QUESTION: question = optarg; break;
        case O_CONTEXT: context = optarg; break;
        case O_JSON: json = 1; break;
        case O_DEVICE: device = optarg; break;
        case O_MAX:
            if (cli_parse_int(optarg, 1, 1 << 20, &max_answer))
                return cli_usage_error("qa", "--max-answer must be a positive integer, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dtype))
                return cli_usage_error("qa", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case 'h': fputs(qa_help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("qa", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("qa", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("qa", "unexpected argument '%s'", argv[optind]);
    if (!question || !context)
        return cli_usage_error("qa", "--question and --context are required");
    if (!model_dir)
        model_dir = cli_default_model_dir();
    head_run r = {0};
    int rc = cli_check_class("qa", model_dir, 1u << PLDR_ARCH_QUESTION_ANSWERING);
    if (rc == EXIT_OK)
        rc = open_run(&r, "qa", model_dir, device, dtype);
    int32_t *q = NULL, *ctx_ids = NULL, *ids = NULL;
    size_t nq = 0, nc = 0;
    float *rows = NULL;
    double *ps = NULL, *pe = NULL;
    if (rc == EXIT_OK)
        rc = encode(&r, question, strlen(question), &q, &nq);
    pldr_status st = PLDR_OK;
    if (rc == EXIT_OK && (st = pldr_tokenize(r.tok, context, strlen(context), &ctx_ids, &nc)) != PLDR_OK)
        rc = cli_report(st);
    if (rc == EXIT_OK && nc == 0)
        rc = cli_usage_error("qa", "the context is empty after tokenization");
    const size_t n = nq + nc;
    if (rc == EXIT_OK && n > (size_t)pldr_context_n_ctx(r.ctx)) {
        fprintf(stderr, "pldr qa: question and context are %zu tokens, more than the context of %d\n", n,
                pldr_context_n_ctx(r.ctx));
        rc = EXIT_CONTEXT;
    }
    if (rc == EXIT_OK && (!(ids = malloc(n * sizeof *ids)) || !(rows = malloc(n * 2 * sizeof *rows)) ||
                          !(ps = malloc(nc * sizeof *ps)) || !(pe = malloc(nc * sizeof *pe))))
        rc = cli_report(PLDR_ERR_HOST_MEMORY);
    if (rc == EXIT_OK) {
        memcpy(ids, q, nq * sizeof *ids);
        memcpy(ids + nq, ctx_ids, nc * sizeof *ids);
        if ((st = pldr_eval_head(r.ctx, ids, (int)n, rows, NULL)) != PLDR_OK)
            rc = cli_report(st);
    }
    if (rc == EXIT_OK) {
        /* start and end logits of the context's tokens, each softmaxed over them */
        float *sl = calloc(nc, sizeof *sl), *el = calloc(nc, sizeof *el);
        if (!sl || !el) {
            free(sl);
            free(el);
            rc = cli_report(PLDR_ERR_HOST_MEMORY);
        } else {
            for (size_t i = 0; i < nc; i++) {
                sl[i] = rows[(nq + i) * 2];
                el[i] = rows[(nq + i) * 2 + 1];
            }
            softmax(sl, (int)nc, ps);
            softmax(el, (int)nc, pe);
            size_t bi = 0, bj = 0;
            double best = -1;
            for (size_t i = 0; i < nc; i++)
                for (size_t j = i; j < nc && j - i < (size_t)max_answer; j++)
                    if (ps[i] * pe[j] > best) {
                        best = ps[i] * pe[j];
                        bi = i;
                        bj = j;
                    }
            char *answer = NULL;
            size_t alen = 0;
            if ((st = pldr_detokenize(r.tok, ctx_ids + bi, bj - bi + 1, &answer, &alen)) != PLDR_OK) {
                rc = cli_report(st);
            } else {
                const char *a = answer;
                while (*a == ' ')
                    a++;
                if (json) {
                    printf("{\"answer\": ");
                    cli_json_string(stdout, a);
                    printf(", \"score\": ");
                    cli_json_number(stdout, best);
                    printf(", \"start_token\": %zu, \"end_token\": %zu, \"start_logit\": ", bi, bj);
                    cli_json_number(stdout, sl[bi]);
                    printf(", \"end_logit\": ");
                    cli_json_number(stdout, el[bj]);
                    printf("}\n");
                } else {
                    printf("%s\n", a);
                    printf("score %.4f (context tokens %zu..%zu)\n", best, bi, bj);
                }
            }
            free(answer);
            free(sl);
            free(el);
        }
    }
    free(ps);
    free(pe);
    free(rows);
    free(ids);
    free(q);
    free(ctx_ids);
    close_run(&r);
    return rc;
}

/* ------------------------------------------------------------------ */
/* pldr embed                                                          */

static const char embed_help[] =
    "usage: pldr embed [-m DIR] (-p TEXT | -f FILE) [--pool last|mean] [-o npy|json]\n"
    "                  [--device SPEC] [--dtype T]\n"
    "\n"
    "Writes one embedding per non-empty input line to standard output: the decoder's\n"
    "last hidden state (before any head), pooled over the line's tokens, for every\n"
    "checkpoint class.\n"
    "\n"
    "  -m, --model DIR   checkpoint directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -p, --prompt TEXT the input (one input per line)\n"
    "  -f, --file FILE   read the input from FILE ('-': standard input)\n"
    "      --pool P      last (default): the last token's state; mean: the mean over tokens\n"
    "  -o, --output F    npy (default): a float32 .npy array [lines, hidden_size];\n"
    "                    json: {\"embeddings\": [[...], ...]}\n"
    "      --device SPEC OpenCL device: index, platform:device or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default), f16, bf16, q8_0, q4_0\n";

int cmd_embed(int argc, char **argv)
{
    enum { O_POOL = 256, O_DEVICE, O_DTYPE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},    {"pool", required_argument, 0, O_POOL},
        {"output", required_argument, 0, 'o'},  {"device", required_argument, 0, O_DEVICE},
        {"dtype", required_argument, 0, O_DTYPE}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *prompt = NULL, *file = NULL, *device = NULL;
    int mean = 0, as_json = 0;
    pldr_dtype dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_POOL:
            if (strcmp(optarg, "last") != 0 && strcmp(optarg, "mean") != 0)
                return cli_usage_error("embed", "--pool must be last or mean, not '%s'", optarg);
            mean = strcmp(optarg, "mean") == 0;
            break;
        case 'o':
            if (strcmp(optarg, "npy") != 0 && strcmp(optarg, "json") != 0)
                return cli_usage_error("embed", "-o must be npy or json, not '%s'", optarg);
            as_json = strcmp(optarg, "json") == 0;
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dtype))
                return cli_usage_error("embed", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case 'h': fputs(embed_help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("embed", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("embed", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("embed", "unexpected argument '%s'", argv[optind]);
    if (!model_dir)
        model_dir = cli_default_model_dir();
    char *text, **lines;
    size_t n_lines;
    int rc = read_lines("embed", prompt, file, &text, &lines, &n_lines);
    if (rc != EXIT_OK)
        return rc;
    head_run r = {0};
    rc = open_run(&r, "embed", model_dir, device, dtype);
    const size_t d = rc == EXIT_OK ? (size_t)r.cfg->d_model : 0;
    float *out = rc == EXIT_OK ? calloc(n_lines * d, sizeof *out) : NULL;
    if (rc == EXIT_OK && !out)
        rc = cli_report(PLDR_ERR_HOST_MEMORY);
    for (size_t i = 0; rc == EXIT_OK && i < n_lines; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if ((rc = encode(&r, lines[i], strlen(lines[i]), &ids, &n)) != EXIT_OK)
            break;
        float *hidden = malloc(n * d * sizeof *hidden);
        pldr_status st = hidden ? PLDR_OK : PLDR_ERR_HOST_MEMORY;
        if (st == PLDR_OK) {
            pldr_context_reset(r.ctx);
            st = pldr_eval_hidden(r.ctx, ids, (int)n, hidden);
        }
        if (st != PLDR_OK) {
            rc = cli_report(st);
        } else if (mean) {
            for (size_t k = 0; k < d; k++) {
                double s = 0;
                for (size_t t = 0; t < n; t++)
                    s += hidden[t * d + k];
                out[i * d + k] = (float)(s / (double)n);
            }
        } else {
            memcpy(out + i * d, hidden + (n - 1) * d, d * sizeof *out);
        }
        free(hidden);
        free(ids);
    }
    if (rc == EXIT_OK && !as_json) {
        rc = npy_write_f32("-", out, n_lines, d);
    } else if (rc == EXIT_OK) {
        printf("{\"embeddings\": [");
        for (size_t i = 0; i < n_lines; i++) {
            printf("%s[", i ? ",\n  " : "\n  ");
            for (size_t k = 0; k < d; k++) {
                if (k)
                    printf(", ");
                printf("%.9g", out[i * d + k]);
            }
            printf("]");
        }
        printf("\n]}\n");
        rc = cli_stdout_check();
    }
    free(out);
    close_run(&r);
    free(lines);
    free(text);
    return rc;
}
