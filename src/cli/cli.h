/* The pldr command: shared declarations of its subcommands. */
#ifndef PLDR_CLI_H
#define PLDR_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "pldr.h"

/* Exit codes (documented in docs/faults.md and `pldr --help`). */
enum {
    EXIT_OK = 0,
    EXIT_RUNTIME = 1, /* failure while running (OpenCL error, non-finite values) */
    EXIT_USAGE = 2,   /* bad command line: unknown option, missing or out-of-range value */
    EXIT_INPUT = 3,   /* unreadable, damaged or unsupported input file */
    EXIT_DEVICE = 4,  /* no such device, kernel build failure, out of device memory */
    EXIT_CONTEXT = 5, /* the sequence does not fit in the context */
    EXIT_OUTPUT = 6   /* an output could not be written (file or standard output) */
};

/* Maps a status to an exit code. */
int cli_exit_code(pldr_status st);
/* Prints "pldr: <last error>" (or the status string) to stderr and returns its exit code. */
int cli_report(pldr_status st);
/* Prints "pldr <cmd>: <message>" and a hint to run --help; returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...);

/* Strict number parsing; return 0 on success, -1 if s is not a number in [lo, hi]. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
int cli_parse_double(const char *s, double lo, double hi, double *out);
/* Parses "5,17,42" into a malloc'ed array. Returns 0 on success. */
int cli_parse_ids(const char *s, int32_t **ids, int *n);
/* Splits a comma-separated list into a malloc'ed array of at most max
 * items (free *items[0], then *items). An empty list or an empty item
 * (",8", "8,,9", "8,") is refused: returns -1. */
int cli_split_list(const char *s, int max, char ***items, int *n);

/* The model directory to use: the argument if given, else $PLDR_MODEL, else
 * the bundled default model (installed or in the source tree). */
const char *cli_default_model_dir(void);

/* Reads a whole text file or stdin ("-") of at most max_bytes; malloc'ed,
 * NUL-terminated. Reading stops once the limit is passed (an input error);
 * a FIFO, device or directory given as FILE is refused without blocking.
 * Returns an exit code. */
int cli_read_text(const char *path, size_t max_bytes, char **text, size_t *len);
/* The most bytes a prompt (-f FILE or stdin) may hold for a context of
 * n_ctx tokens: 64 per token, at least 1 MiB. n_ctx <= 0: the model's
 * max_position_embeddings (from DIR/config.json). */
size_t cli_prompt_limit(const char *model_dir, long n_ctx);
/* Limit of a text that is not a prompt (perplexity, tokenize): 256 MiB. */
#define CLI_TEXT_LIMIT ((size_t)256 << 20)

/* Standard output: 0 while writes to it succeed; otherwise reports the
 * failure once (quietly for a reader that went away) and returns
 * EXIT_OUTPUT. Long loops call it to stop early; main() calls it at exit. */
int cli_stdout_check(void);

/* Progress printer for pldr_model_params.progress (stderr, only on a terminal). */
void cli_progress(const char *what, uint64_t done, uint64_t total, void *user);

/* Parses "none" | "kv" | "kvg"; returns 0 on success. */
int cli_parse_cache(const char *s, pldr_cache_mode *mode);
/* Parses "f32" | "f16"; returns 0 on success. */
int cli_parse_dtype(const char *s, pldr_dtype *dtype);
/* Loads a model with progress on stderr; reports failures and returns an exit code. */
int cli_load_model(const char *dir, const char *device, pldr_dtype dtype, pldr_model **model);

/* Writes a float32 array [rows, cols] as a NumPy .npy file (atomically;
 * "-": standard output). Reports a failure; returns an exit code. */
int npy_write_f32(const char *path, const float *data, size_t rows, size_t cols);
/* Checks before long work that an output path ("-": standard output) can
 * be written (pldr_check_output_path); reports and returns an exit code. */
int cli_check_output(const char *path);

/* Subcommands: argv[0] is the subcommand name. Each returns an exit code. */
int cmd_devices(int argc, char **argv);
int cmd_bench(int argc, char **argv);
/* --tune of generate and bench: tunes CLBlast for the model on the device
 * (or every device, "all") unless a valid tuning file exists. Call it before
 * anything else uses OpenCL. Returns an exit code. */
int cli_tune_if_missing(const char *model_dir, const char *device, const pldr_dtype *dtypes, int n_dtypes);
int cmd_logits(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_batch(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_gcache(int argc, char **argv);
int cmd_deductive(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_tune(int argc, char **argv);
int cmd_serve(int argc, char **argv);
/* The model classes' commands (cmd_heads.c). */
int cmd_classify(int argc, char **argv);
int cmd_qa(int argc, char **argv);
int cmd_embed(int argc, char **argv);
/* Whether DIR/config.json's class is one of archs (a mask of 1 << pldr_arch);
 * otherwise says what the checkpoint is and which command runs it, and
 * returns EXIT_INPUT. */
int cli_check_class(const char *cmd, const char *dir, unsigned archs);
/* pldr_tokenize, with DIR/tokenizer_config.json's add_bos_token and
 * add_eos_token honoured and its warnings printed (cmd_heads.c). */
pldr_status cli_tokenize_prompt(const char *model_dir, const pldr_tokenizer *tok, const char *text, size_t len,
                                int32_t **ids, size_t *n_ids);
/* The subcommand being run ("generate"), set by main(). */
extern const char *cli_command;
/* Installs a G-cache file (--g-cache) in a context; reports failures and
 * returns an exit code (defined in cmd_gcache.c). */
int cli_apply_gcache(pldr_context *ctx, const pldr_model *model, const char *path);
/* Tokenizes -p TEXT or -f FILE with DIR/tokenizer.model into a malloc'ed
 * array; an empty result is a usage error of cmd. Returns an exit code. */
int cli_prompt_ids(const char *cmd, const char *model_dir, const char *prompt, const char *file, long n_ctx,
                   int32_t **ids, size_t *n_ids);
/* JSON output: a number (%.17g; non-finite as null) and an escaped string
 * (defined in cmd_deductive.c). */
void cli_json_number(FILE *f, double v);
void cli_json_string(FILE *f, const char *s);

/* The sampling and stopping options of pldr generate and pldr batch
 * (sampling.c): --temp, --top-k, --top-p, --min-p, --repeat-penalty,
 * --repeat-last-n, --presence-penalty, --frequency-penalty, --seed, --stop
 * (repeatable) and --ignore-eos, with the semantics of pldr_generate_params.
 * A command puts CLI_SAMPLING_OPTIONS in its getopt_long table, keeps its own
 * option codes below CLI_O_SAMPLING, and hands every code to
 * cli_sampling_option. */
#define CLI_MAX_STOP 16
typedef struct cli_sampling {
    double temp, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty;
    long top_k, repeat_last_n;
    long seed; /* -1 (default): from the clock */
    const char *stop[CLI_MAX_STOP];
    int n_stop, ignore_eos;
} cli_sampling;
enum {
    CLI_O_SAMPLING = 1000,
    CLI_O_TEMP = CLI_O_SAMPLING, CLI_O_TOPK, CLI_O_TOPP, CLI_O_MINP, CLI_O_REPEAT, CLI_O_REPEAT_N,
    CLI_O_PRESENCE, CLI_O_FREQUENCY, CLI_O_SEED, CLI_O_STOP, CLI_O_IGNORE_EOS
};
#define CLI_SAMPLING_OPTIONS                                                                                        \
    {"temp", required_argument, 0, CLI_O_TEMP}, {"top-k", required_argument, 0, CLI_O_TOPK},                        \
        {"top-p", required_argument, 0, CLI_O_TOPP}, {"min-p", required_argument, 0, CLI_O_MINP},                    \
        {"repeat-penalty", required_argument, 0, CLI_O_REPEAT},                                                     \
        {"repeat-last-n", required_argument, 0, CLI_O_REPEAT_N},                                                   \
        {"presence-penalty", required_argument, 0, CLI_O_PRESENCE},                                                 \
        {"frequency-penalty", required_argument, 0, CLI_O_FREQUENCY}, {"seed", required_argument, 0, CLI_O_SEED},   \
        {"stop", required_argument, 0, CLI_O_STOP}, {"ignore-eos", no_argument, 0, CLI_O_IGNORE_EOS}
/* The defaults: greedy, no penalties, no stop strings, seed from the clock. */
void cli_sampling_init(cli_sampling *s);
/* Returns 0 when c is not a sampling option; else 1, with *rc EXIT_OK or the
 * exit code of a bad value (reported as "pldr CMD: ..."). */
int cli_sampling_option(const char *cmd, int c, const char *arg, cli_sampling *s, int *rc);
/* Copies the options into gp (the stop strings by pointer), the seed drawn
 * from the clock when none was given. */
void cli_sampling_apply(const cli_sampling *s, pldr_generate_params *gp);
uint64_t cli_sampling_seed(const cli_sampling *s);

#endif
