/* pldr tokenize / pldr detokenize: the SentencePiece tokenizer on the command
 * line, line for line compatible with spm_encode --output_format=id|piece and
 * spm_decode --input_format=id. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char tokenize_help[] =
    "usage: pldr tokenize [-m DIR | --tokenizer FILE] (-p TEXT | -f FILE) [--pieces]\n"
    "\n"
    "Encodes text with the model's SentencePiece tokenizer and prints one line of\n"
    "space-separated token ids per input line, as spm_encode --output_format=id does.\n"
    "No BOS or EOS is added.\n"
    "\n"
    "  -m, --model DIR        use DIR/tokenizer.model (default: $PLDR_MODEL or the bundled model)\n"
    "      --tokenizer FILE   use this tokenizer.model file\n"
    "  -p, --prompt TEXT      the text to encode\n"
    "  -f, --file FILE        encode FILE line by line ('-' for stdin)\n"
    "      --pieces           print pieces instead of ids (as spm_encode --output_format=piece,\n"
    "                         except that an unknown piece prints as the vocabulary's, e.g. [UNK])\n"
    "  -h, --help             show this help\n";

static const char detokenize_help[] =
    "usage: pldr detokenize [-m DIR | --tokenizer FILE] (-i IDS | -f FILE)\n"
    "\n"
    "Decodes token ids to text with the model's SentencePiece tokenizer: one line of\n"
    "ids in, one line of text out, as spm_decode --input_format=id does. Ids are\n"
    "separated by spaces, tabs or commas.\n"
    "\n"
    "  -m, --model DIR        use DIR/tokenizer.model (default: $PLDR_MODEL or the bundled model)\n"
    "      --tokenizer FILE   use this tokenizer.model file\n"
    "  -i, --ids IDS          the ids to decode, e.g. \"5 17 42\"\n"
    "  -f, --file FILE        decode FILE, one sequence per line ('-' for stdin)\n"
    "  -h, --help             show this help\n";

enum { OPT_TOKENIZER = 256, OPT_PIECES };

/* Shared command-line state of both subcommands. */
typedef struct tok_args {
    const char *model_dir;
    const char *tokenizer_file;
    const char *text;  /* -p or -i */
    const char *input; /* -f */
    int pieces;
} tok_args;

/* Parses the options of tokenize or detokenize. Returns an exit code; *done
 * is set when the command has nothing more to do (--help). */
static int parse_args(const char *cmd, int argc, char **argv, tok_args *a, int *done)
{
    const int is_tokenize = strcmp(cmd, "tokenize") == 0;
    static const struct option tokenize_opts[] = {
        {"model", required_argument, 0, 'm'},  {"tokenizer", required_argument, 0, OPT_TOKENIZER},
        {"prompt", required_argument, 0, 'p'}, {"file", required_argument, 0, 'f'},
        {"pieces", no_argument, 0, OPT_PIECES}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    static const struct option detokenize_opts[] = {
        {"model", required_argument, 0, 'm'}, {"tokenizer", required_argument, 0, OPT_TOKENIZER},
        {"ids", required_argument, 0, 'i'},   {"file", required_argument, 0, 'f'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    *done = 0;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, is_tokenize ? ":m:p:f:h" : ":m:i:f:h",
                            is_tokenize ? tokenize_opts : detokenize_opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model_dir = optarg; break;
        case OPT_TOKENIZER: a->tokenizer_file = optarg; break;
        case 'p':
        case 'i': a->text = optarg; break;
        case 'f': a->input = optarg; break;
        case OPT_PIECES: a->pieces = 1; break;
        case 'h':
            fputs(is_tokenize ? tokenize_help : detokenize_help, stdout);
            *done = 1;
            return EXIT_OK;
        case ':': return cli_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
        }
    }
    const char *text_opt = is_tokenize ? "-p TEXT" : "-i IDS";
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (a->model_dir && a->tokenizer_file)
        return cli_usage_error(cmd, "give either -m DIR or --tokenizer FILE, not both");
    if (a->text && a->input)
        return cli_usage_error(cmd, "give either %s or -f FILE, not both", text_opt);
    if (!a->text && !a->input)
        return cli_usage_error(cmd, "no input: give %s or -f FILE", text_opt);
    return EXIT_OK;
}

static int status_exit(pldr_status st) { return st == PLDR_OK ? EXIT_OK : cli_report(st); }

/* Loads the tokenizer named by --tokenizer, else DIR/tokenizer.model. */
static int load_tokenizer(const tok_args *a, pldr_tokenizer **tok)
{
    if (a->tokenizer_file)
        return status_exit(pldr_tokenizer_load(a->tokenizer_file, tok));
    const char *dir = a->model_dir ? a->model_dir : cli_default_model_dir();
    size_t n = strlen(dir) + sizeof "/tokenizer.model";
    char *path = malloc(n);
    if (!path) {
        fputs("pldr: out of memory\n", stderr);
        return EXIT_RUNTIME;
    }
    snprintf(path, n, "%s/tokenizer.model", dir);
    int rc = status_exit(pldr_tokenizer_load(path, tok));
    free(path);
    return rc;
}

/* The input of -f, or the text of -p/-i. */
typedef struct input_text {
    char *owned;
    const char *data;
    size_t len;
} input_text;

static int read_input(const tok_args *a, input_text *in)
{
    memset(in, 0, sizeof *in);
    if (a->text) {
        in->data = a->text;
        in->len = strlen(a->text);
        return EXIT_OK;
    }
    int rc = cli_read_text(a->input, CLI_TEXT_LIMIT, &in->owned, &in->len);
    in->data = in->owned;
    return rc;
}

/* Next line of [*p, end) as spm_encode's std::getline splits it; a final
 * newline does not start another line. Returns 0 when none is left. */
static int next_line(const char **p, const char *end, const char **line, size_t *len)
{
    if (*p >= end)
        return 0;
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    *line = *p;
    *len = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
    *p = nl ? nl + 1 : end;
    return 1;
}

static int finish_output(void) { return cli_stdout_check(); }

int cmd_tokenize(int argc, char **argv)
{
    tok_args a;
    int done;
    int rc = parse_args("tokenize", argc, argv, &a, &done);
    if (rc != EXIT_OK || done)
        return rc;
    pldr_tokenizer *tok;
    if ((rc = load_tokenizer(&a, &tok)) != EXIT_OK)
        return rc;
    input_text in;
    if ((rc = read_input(&a, &in)) != EXIT_OK) {
        pldr_tokenizer_free(tok);
        return rc;
    }

    const char *p = in.data, *end = in.data + in.len, *line = "";
    size_t line_len = 0;
    /* -p "" still asks for the (empty) encoding of one line. */
    int have = next_line(&p, end, &line, &line_len) || (a.text != NULL);
    while (have) {
        int32_t *ids;
        size_t n;
        pldr_status st = pldr_tokenize(tok, line, line_len, &ids, &n);
        if (st != PLDR_OK) {
            rc = cli_report(st);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (i > 0)
                putchar(' ');
            if (a.pieces)
                fputs(pldr_token_piece(tok, ids[i]), stdout);
            else
                printf("%ld", (long)ids[i]);
        }
        putchar('\n');
        free(ids);
        have = next_line(&p, end, &line, &line_len);
    }
    free(in.owned);
    pldr_tokenizer_free(tok);
    return rc != EXIT_OK ? rc : finish_output();
}

static int is_id_separator(char c) { return c == ' ' || c == '\t' || c == ',' || c == '\r'; }

/* Parses one line of ids. On a bad token returns -1 with bad and bad_len
 * giving it; ids outside [0, vocab) count as bad. */
static int parse_id_line(const char *s, size_t len, int vocab, int32_t *ids, size_t *n, const char **bad,
                         size_t *bad_len)
{
    size_t i = 0;
    *n = 0;
    while (i < len) {
        if (is_id_separator(s[i])) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < len && !is_id_separator(s[i]))
            i++;
        int64_t v = 0;
        int ok = 1;
        for (size_t k = start; k < i && ok; k++) {
            ok = s[k] >= '0' && s[k] <= '9';
            v = v * 10 + (s[k] - '0');
            ok = ok && v < vocab;
        }
        if (!ok) {
            *bad = s + start;
            *bad_len = i - start;
            return -1;
        }
        ids[(*n)++] = (int32_t)v;
    }
    return 0;
}

int cmd_detokenize(int argc, char **argv)
{
    tok_args a;
    int done;
    int rc = parse_args("detokenize", argc, argv, &a, &done);
    if (rc != EXIT_OK || done)
        return rc;
    pldr_tokenizer *tok;
    if ((rc = load_tokenizer(&a, &tok)) != EXIT_OK)
        return rc;
    input_text in;
    if ((rc = read_input(&a, &in)) != EXIT_OK) {
        pldr_tokenizer_free(tok);
        return rc;
    }
    const int vocab = pldr_tokenizer_vocab_size(tok);
    /* A line of n bytes holds at most n / 2 + 1 ids. */
    int32_t *ids = malloc((in.len / 2 + 1) * sizeof *ids);
    if (!ids) {
        fputs("pldr: out of memory\n", stderr);
        free(in.owned);
        pldr_tokenizer_free(tok);
        return EXIT_RUNTIME;
    }

    const char *p = in.data, *end = in.data + in.len, *line = "";
    size_t line_len = 0, line_no = 0;
    int have = next_line(&p, end, &line, &line_len) || (a.text != NULL);
    while (have) {
        size_t n;
        const char *bad;
        size_t bad_len;
        line_no++;
        if (parse_id_line(line, line_len, vocab, ids, &n, &bad, &bad_len) != 0) {
            if (a.text)
                rc = cli_usage_error("detokenize", "'%.*s' is not a token id in [0, %d)", (int)bad_len, bad, vocab);
            else {
                fprintf(stderr, "pldr: %s:%zu: '%.*s' is not a token id in [0, %d)\n", a.input, line_no,
                        (int)(bad_len > 40 ? 40 : bad_len), bad, vocab);
                rc = EXIT_INPUT;
            }
            break;
        }
        char *text;
        size_t text_len;
        pldr_status st = pldr_detokenize(tok, ids, n, &text, &text_len);
        if (st != PLDR_OK) {
            rc = cli_report(st);
            break;
        }
        fwrite(text, 1, text_len, stdout);
        putchar('\n');
        free(text);
        have = next_line(&p, end, &line, &line_len);
    }
    free(ids);
    free(in.owned);
    pldr_tokenizer_free(tok);
    return rc != EXIT_OK ? rc : finish_output();
}
