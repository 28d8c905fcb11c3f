/* pldr: the command-line front end. Each subcommand lives in its own file and
 * uses only the public API of include/pldr.h. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static const char usage[] =
    "usage: pldr COMMAND [OPTIONS]\n"
    "\n"
    "An OpenCL inference engine for PLDR-LLM (power law graph attention with KV- and G-cache).\n"
    "\n"
    "commands:\n"
    "  generate     generate text from a prompt\n"
    "  batch        generate from many prompts at once (continuous batching)\n"
    "  logits       write the logits of a token sequence as .npy (the parity interface)\n"
    "  tokenize     text to token ids (SentencePiece unigram)\n"
    "  detokenize   token ids to text\n"
    "  devices      list OpenCL platforms and devices\n"
    "  bench        measure prefill and decode speed (llama-bench style)\n"
    "  gcache       export the G-cache [A, A_LM, G_LM] of a prompt as safetensors\n"
    "  deductive    report the deductive outputs A, A_LM, G_LM: RMS, determinants, drift\n"
    "  perplexity   perplexity of a text file (strided windows)\n"
    "  tune         tune CLBlast's GEMM for a model's prefill and the decode kernels' work-group\n"
    "               shapes on a device (cached per device)\n"
    "  serve        an OpenAI-compatible HTTP server (completions, streaming, every device)\n"
    "  classify     labels of each line or token (sequence and token classification checkpoints)\n"
    "  qa           the answer span of a question in a context (question-answering checkpoints)\n"
    "  embed        the last hidden state of each line, pooled (any checkpoint)\n"
    "\n"
    "Run 'pldr COMMAND --help' for the options of a command.\n"
    "\n"
    "environment:\n"
    "  PLDR_DEVICE      default device spec (index, platform:device, cpu|gpu|accelerator, or name substring)\n"
    "  PLDR_MODEL       default model directory\n"
    "  PLDR_KERNEL_DIR  read the .cl kernels from this directory instead of the embedded copy\n"
    "  XDG_CACHE_HOME   compiled kernels are cached in $XDG_CACHE_HOME/pldr (default ~/.cache/pldr)\n"
    "  PLDR_TUNING=0    do not apply the device's tuning files (see 'pldr tune')\n"
    "  PLDR_WG          work-group shape items over the device's (e.g. gemv=256,rows=8; docs/engine.md)\n"
    "\n"
    "exit codes:\n"
    "  0 success, 1 runtime failure (OpenCL error, non-finite values), 2 bad command line,\n"
    "  3 unreadable, damaged or unsupported input file, 4 device problem (no such device,\n"
    "  kernel build failure, out of device memory), 5 sequence longer than the context,\n"
    "  6 an output could not be written (file or standard output; the old file is kept)\n";

int cli_exit_code(pldr_status st)
{
    switch (st) {
    case PLDR_OK: return EXIT_OK;
    case PLDR_ERR_INVALID_ARGUMENT: return EXIT_USAGE;
    case PLDR_ERR_IO:
    case PLDR_ERR_FORMAT:
    case PLDR_ERR_UNSUPPORTED:
    case PLDR_ERR_MISMATCH: return EXIT_INPUT;
    case PLDR_ERR_NO_DEVICE:
    case PLDR_ERR_KERNEL_BUILD:
    case PLDR_ERR_DEVICE_MEMORY: return EXIT_DEVICE;
    case PLDR_ERR_CONTEXT_FULL: return EXIT_CONTEXT;
    case PLDR_ERR_OUTPUT: return EXIT_OUTPUT;
    case PLDR_ERR_BUSY: return EXIT_RUNTIME;
    default: return EXIT_RUNTIME;
    }
}

int cli_report(pldr_status st)
{
    const char *msg = pldr_last_error();
    fprintf(stderr, "pldr: %s\n", msg && *msg ? msg : pldr_status_string(st));
    return cli_exit_code(st);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pldr %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'pldr %s --help')\n", cmd);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_parse_int(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_double(const char *s, double lo, double hi, double *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_ids(const char *s, int32_t **ids, int *n)
{
    *ids = NULL;
    *n = 0;
    if (!s || !*s)
        return -1;
    int cap = 16, cnt = 0;
    int32_t *a = malloc((size_t)cap * sizeof *a);
    if (!a)
        return -1;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            free(a);
            return -1;
        }
        if (cnt == cap) {
            cap *= 2;
            int32_t *b = realloc(a, (size_t)cap * sizeof *b);
            if (!b) {
                free(a);
                return -1;
            }
            a = b;
        }
        a[cnt++] = (int32_t)v;
        if (*end == '\0')
            break;
        if (*end != ',') {
            free(a);
            return -1;
        }
        p = end + 1;
    }
    *ids = a;
    *n = cnt;
    return 0;
}

static int is_model_dir(const char *dir)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return stat(path, &st) == 0;
}

const char *cli_default_model_dir(void)
{
    const char *env = getenv("PLDR_MODEL");
    if (env && *env)
        return env;
    static char path[4096];
    /* the source tree, when running the uninstalled binary */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            const char *rel[] = {"models/pldr-tiny-pydocs", "../models/pldr-tiny-pydocs"};
            for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
                snprintf(path, sizeof path, "%s/%s", exe, rel[i]);
                if (is_model_dir(path))
                    return path;
            }
        }
    }
    /* installed */
    snprintf(path, sizeof path, "%s/models/pldr-tiny-pydocs", PLDR_PKGDATADIR);
    if (is_model_dir(path))
        return path;
    /* an uninstalled build outside the source tree */
    snprintf(path, sizeof path, "%s/models/pldr-tiny-pydocs", PLDR_SOURCE_DIR);
    if (is_model_dir(path))
        return path;
    snprintf(path, sizeof path, "%s/models/pldr-tiny-pydocs", PLDR_PKGDATADIR);
    return path;
}

int cli_split_list(const char *s, int max, char ***items, int *n)
{
    *items = NULL;
    *n = 0;
    if (!s || !*s)
        return -1;
    int cnt = 1;
    for (const char *p = s; *p; p++)
        cnt += *p == ',';
    if (cnt > max)
        return -1;
    char *dup = strdup(s);
    char **a = malloc((size_t)cnt * sizeof *a);
    if (!dup || !a) {
        free(dup);
        free(a);
        return -1;
    }
    int k = 0;
    for (char *p = dup;;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        if (!*p) { /* ",8", "8,,9", "8," */
            free(dup);
            free(a);
            return -1;
        }
        a[k++] = p;
        if (!comma)
            break;
        p = comma + 1;
    }
    *items = a;
    *n = k;
    return 0;
}

size_t cli_prompt_limit(const char *model_dir, long n_ctx)
{
    if (n_ctx <= 0 && model_dir) {
        char path[4096];
        pldr_config cfg;
        snprintf(path, sizeof path, "%s/config.json", model_dir);
        if (pldr_config_load(path, &cfg) == PLDR_OK)
            n_ctx = cfg.max_position;
    }
    size_t lim = n_ctx > 0 ? (size_t)n_ctx * 64 : 0;
    return lim < ((size_t)1 << 20) ? (size_t)1 << 20 : lim;
}

int cli_read_text(const char *path, size_t max_bytes, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    int fd = STDIN_FILENO;
    const int is_stdin = strcmp(path, "-") == 0;
    if (!is_stdin) {
        /* O_NONBLOCK: a FIFO or device must not hang the open */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0) {
            fprintf(stderr, "pldr: %s: cannot open: %s\n", path, strerror(errno));
            return EXIT_INPUT;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            fprintf(stderr, "pldr: %s: is %s, not a regular file\n", path,
                    S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
                                                      : S_ISSOCK(st.st_mode)   ? "a socket"
                                                                               : "a device");
            close(fd);
            return EXIT_INPUT;
        }
        if ((uint64_t)st.st_size > max_bytes) {
            fprintf(stderr, "pldr: %s: %lld bytes, more than the %zu bytes allowed\n", path, (long long)st.st_size,
                    max_bytes);
            close(fd);
            return EXIT_INPUT;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    }
    const char *name = is_stdin ? "standard input" : path;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    int err = 0;
    while (buf) {
        if (n + 1 >= cap) {
            size_t ncap = cap * 2 > max_bytes + 2 ? max_bytes + 2 : cap * 2;
            char *b = realloc(buf, ncap);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            err = errno;
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max_bytes)
            break;
    }
    if (!is_stdin)
        close(fd);
    if (!buf || err) {
        free(buf);
        fprintf(stderr, "pldr: %s: read failed: %s\n", name, err ? strerror(err) : "out of memory");
        return EXIT_INPUT;
    }
    if (n > max_bytes) {
        free(buf);
        fprintf(stderr, "pldr: %s: more than the %zu bytes allowed\n", name, max_bytes);
        return EXIT_INPUT;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return EXIT_OK;
}

static int stdout_failed, stdout_reader_gone;

int cli_stdout_check(void)
{
    if (stdout_failed)
        return EXIT_OUTPUT;
    errno = 0;
    if (fflush(stdout) == 0 && !ferror(stdout))
        return EXIT_OK;
    stdout_failed = 1;
    /* a reader that went away (| head) ends the run quietly */
    stdout_reader_gone = errno == EPIPE;
    if (!stdout_reader_gone)
        fprintf(stderr, "pldr: standard output: write failed%s%s\n", errno ? ": " : "", errno ? strerror(errno) : "");
    return EXIT_OUTPUT;
}

void cli_progress(const char *what, uint64_t done, uint64_t total, void *user)
{
    (void)user;
    if (!isatty(STDERR_FILENO))
        return;
    if (total > 0)
        fprintf(stderr, "\r%s: %3d%%", what, (int)(100.0 * (double)done / (double)total));
    if (done >= total)
        fprintf(stderr, "\r\033[K");
    fflush(stderr);
}

int cli_parse_cache(const char *s, pldr_cache_mode *mode)
{
    if (strcmp(s, "none") == 0)
        *mode = PLDR_CACHE_NONE;
    else if (strcmp(s, "kv") == 0)
        *mode = PLDR_CACHE_KV;
    else if (strcmp(s, "kvg") == 0)
        *mode = PLDR_CACHE_KVG;
    else
        return -1;
    return 0;
}

int cli_parse_dtype(const char *s, pldr_dtype *dtype)
{
    return pldr_dtype_from_name(s, dtype) == PLDR_OK ? 0 : -1;
}

const char *cli_command = "";

int cli_load_model(const char *dir, const char *device, pldr_dtype dtype, pldr_model **model)
{
    /* next-token commands need a causal LM; the others check the class themselves */
    static const char *const any_class[] = {"logits", "classify", "qa", "embed"};
    int causal_only = 1;
    for (size_t i = 0; i < sizeof any_class / sizeof any_class[0]; i++)
        if (strcmp(cli_command, any_class[i]) == 0)
            causal_only = 0;
    if (causal_only && dir) {
        int rc = cli_check_class(cli_command, dir, 1u << PLDR_ARCH_CAUSAL_LM);
        if (rc != EXIT_OK)
            return rc;
    }
    pldr_model_params mp = pldr_model_default_params();
    mp.device = device;
    mp.weight_dtype = dtype;
    mp.progress = cli_progress;
    pldr_status st = pldr_model_load(dir, &mp, model);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

static int run_command(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"generate", cmd_generate}, {"logits", cmd_logits},         {"tokenize", cmd_tokenize},
        {"detokenize", cmd_detokenize}, {"devices", cmd_devices},       {"bench", cmd_bench},
        {"gcache", cmd_gcache}, {"deductive", cmd_deductive}, {"perplexity", cmd_perplexity},
        {"tune", cmd_tune},     {"serve", cmd_serve},       {"classify", cmd_classify},
        {"qa", cmd_qa},         {"embed", cmd_embed},     {"batch", cmd_batch},
    };
    const int n_cmds = (int)(sizeof cmds / sizeof cmds[0]);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        if (strcmp(cmd, "help") == 0 && argc > 2) { /* pldr help CMD */
            for (int i = 0; i < n_cmds; i++)
                if (strcmp(argv[2], cmds[i].name) == 0) {
                    char *av[] = {argv[2], (char *)"--help", NULL};
                    return cmds[i].fn(2, av);
                }
            fprintf(stderr, "pldr: unknown command '%s'\n\n%s", argv[2], usage);
            return EXIT_USAGE;
        }
        fputs(usage, stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("pldr %s\n", PLDR_VERSION_STRING);
        return EXIT_OK;
    }
    for (int i = 0; i < n_cmds; i++)
        if (strcmp(cmd, cmds[i].name) == 0) {
            cli_command = cmds[i].name;
            return cmds[i].fn(argc - 1, argv + 1);
        }
    fprintf(stderr, "pldr: unknown command '%s'\n\n%s", cmd, usage);
    return EXIT_USAGE;
}

/* The library's warnings and diagnostics, on stderr. */
static void log_to_stderr(pldr_log_level level, const char *msg, void *user)
{
    (void)user;
    if (level == PLDR_LOG_WARN)
        fprintf(stderr, "pldr: warning: %s\n", msg);
    else
        fputs(msg, stderr);
}

int main(int argc, char **argv)
{
    pldr_log_set(log_to_stderr, NULL);
    int rc = run_command(argc, argv);
    /* results on standard output count only once they were written */
    int out = cli_stdout_check();
    if (out != EXIT_OK && stdout_reader_gone && rc == EXIT_OUTPUT)
        rc = EXIT_OK; /* stopped early because nobody reads any more */
    else if (out != EXIT_OK && rc == EXIT_OK && !stdout_reader_gone)
        rc = out;
    return rc;
}
