/* pldr tune: per-device tuning of CLBlast's GEMM for the prefill shapes of a
 * model and of the engine's decode work-group shapes (pldr.h, "Tuning"),
 * stored in the cache directory and applied whenever a model is loaded on
 * that device. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static const char help[] =
    "usage: pldr tune [-m DIR] [--device SPEC] [--stage gemm|decode|all] [--budget SECONDS]\n"
    "                 [--shapes prefill|all] [--max-candidates N] [--seed S]\n"
    "                 [--dtype T] [--steps N] [--runs N] [--if-missing] [-q]\n"
    "       pldr tune --path [--device SPEC] [--stage gemm|decode]\n"
    "       pldr tune --check [--device SPEC]\n"
    "\n"
    "Two stages, both by default. The gemm stage tunes CLBlast's GEMM kernels for the matrix\n"
    "shapes the model's prefill runs on one device: CLBlast's defaults first, then parameter\n"
    "sets of its indirect (Xgemm, GEMMK 0 and 1) and direct (XgemmDirect) kernels, and the\n"
    "size where it switches between them. Each set is checked against a host reference and\n"
    "timed on every shape; the choice minimises the time of prefills of 16, 64 and 512\n"
    "tokens. The winners, with the times before and after, go to\n"
    "$XDG_CACHE_HOME/pldr/tune-<hash of the device>.json, and every later model load on the\n"
    "device applies them (PLDR_TUNING=0 skips the file): one file per device, so tune with\n"
    "the model you run. CLBlast compiles every new parameter set (10-20 s each with PoCL on\n"
    "a small CPU, a second or two on a GPU), and each is measured in a process of its own;\n"
    "progress goes to stderr.\n"
    "\n"
    "The decode stage tunes the engine's own kernels: the work-group shapes of the decode\n"
    "products and attention (PLDR_WG's gemv, rows, wrows, att, pf and attpre), one key at a\n"
    "time around the device's defaults, each candidate loading the model's weights and\n"
    "timing greedy decode steps in a process of its own; a candidate must decode the same\n"
    "tokens as the defaults and be 3% faster than the best so far, and the winner 3% faster\n"
    "than the defaults once more, measured one after the other. The choice goes to\n"
    "$XDG_CACHE_HOME/pldr/decode-<hash of the device>.json, per weight dtype and for the\n"
    "model's dimensions, and later loads of such a model apply it (before PLDR_WG's items;\n"
    "PLDR_TUNING=0 skips it). It needs the checkpoint's weights, not just its config.json.\n"
    "\n"
    "  -m, --model DIR        model directory: its config.json gives the GEMM shapes, and the\n"
    "                         decode stage loads its weights (default: $PLDR_MODEL or the\n"
    "                         bundled model)\n"
    "      --device SPEC      OpenCL device: index, platform:device, type (cpu, gpu,\n"
    "                         accelerator) or name substring\n"
    "      --stage S          gemm, decode or all (default)\n"
    "      --budget SECONDS   wall-clock budget of the gemm search (default 600; CLBlast's\n"
    "                         defaults are always measured)\n"
    "      --shapes S         prefill (default): the per-layer GEMMs; all: also the final\n"
    "                         layer in 64-row chunks (logits of every row, perplexity)\n"
    "      --max-candidates N try at most N parameter sets besides the defaults\n"
    "      --seed S           seed of the search (default 1)\n"
    "      --dtype T          decode stage: weight storage tuned for: f32 (default), f16, bf16,\n"
    "                         q8_0 or q4_0\n"
    "      --steps N          decode stage: greedy steps timed per run (default 32)\n"
    "      --runs N           decode stage: timed runs per candidate after a warm-up run, the\n"
    "                         fastest counts (default 3; more until 0.5 s were timed)\n"
    "      --if-missing       tune only what the device has no valid tuning for: GEMM\n"
    "                         parameters made for the model's shapes, decode shapes for\n"
    "                         its dimensions and dtype (what --tune of generate and bench does)\n"
    "      --path             print the device's tuning file name (of the gemm stage, or of\n"
    "                         the decode stage with --stage decode) and exit\n"
    "      --check            read, check and apply the device's GEMM tuning file and read\n"
    "                         its decode tuning file; print both\n"
    "  -q, --quiet            no progress on stderr\n";

static void log_line(const char *line, void *user)
{
    (void)user;
    fprintf(stderr, "tune: %s\n", line);
}

/* Whether dir holds a checkpoint's weights (the decode stage loads them). */
static int has_weights(const char *dir)
{
    const char *names[] = {"model.safetensors", "model.safetensors.index.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[4096];
        struct stat sb;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i]) < sizeof path && stat(path, &sb) == 0)
            return 1;
    }
    return 0;
}

int cli_tune_if_missing(const char *model_dir, const char *device, const pldr_dtype *dtypes, int n_dtypes)
{
    pldr_tune_params tp = pldr_tune_default_params();
    tp.log = log_line;
    int tuned = 0;
    pldr_status st = pldr_tune_if_missing(model_dir, device, &tp, &tuned);
    pldr_tune_decode_params dp = pldr_tune_decode_default_params();
    dp.device = device;
    dp.log = log_line;
    for (int i = 0; st == PLDR_OK && i < n_dtypes; i++) {
        dp.dtype = dtypes[i];
        st = pldr_tune_decode_if_missing(model_dir, &dp, &tuned);
    }
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

static void print_decode(const pldr_tune_decode_result *r)
{
    printf("| decode work groups | tok/s | note |\n| --- | ---: | --- |\n");
    for (int i = 0; i < r->n_candidates; i++) {
        const pldr_tune_decode_candidate *c = &r->candidates[i];
        printf("| %s%s | %.1f | %s |\n", c->items, i == 0 ? " (defaults)" : "", c->tok_s,
               c->note[0] ? c->note : (*r->chosen ? strcmp(c->items, r->chosen) == 0 : i == 0) ? "chosen" : "");
    }
    if (*r->chosen)
        printf("\ndecode shapes %s: %.1f tok/s against %.1f with the defaults (%.2fx); %d candidates measured in "
               "%.0f s\nwritten to %s\n",
               r->chosen, r->tok_s_chosen, r->tok_s_defaults, r->tok_s_chosen / r->tok_s_defaults,
               r->n_candidates, r->elapsed_s, r->path);
    else
        printf("\nthe default decode shapes stay (%s, %.1f tok/s); %d candidates measured in %.0f s\n"
               "result written to %s\n",
               r->defaults, r->tok_s_defaults, r->n_candidates, r->elapsed_s, r->path);
}

int cmd_tune(int argc, char **argv)
{
    enum {
        O_DEVICE = 256, O_BUDGET, O_SHAPES, O_MAXC, O_SEED, O_PATH, O_CHECK, O_IFMISSING, O_STAGE, O_DTYPE,
        O_STEPS, O_RUNS
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"device", required_argument, 0, O_DEVICE},
        {"budget", required_argument, 0, O_BUDGET}, {"shapes", required_argument, 0, O_SHAPES},
        {"max-candidates", required_argument, 0, O_MAXC}, {"seed", required_argument, 0, O_SEED},
        {"path", no_argument, 0, O_PATH},           {"check", no_argument, 0, O_CHECK},
        {"if-missing", no_argument, 0, O_IFMISSING}, {"stage", required_argument, 0, O_STAGE},
        {"dtype", required_argument, 0, O_DTYPE},   {"steps", required_argument, 0, O_STEPS},
        {"runs", required_argument, 0, O_RUNS},
        {"quiet", no_argument, 0, 'q'},             {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    enum { STAGE_GEMM = 1, STAGE_DECODE = 2, STAGE_ALL = 3 };
    const char *model_dir = NULL;
    pldr_tune_params p = pldr_tune_default_params();
    pldr_tune_decode_params dp = pldr_tune_decode_default_params();
    int quiet = 0, want_path = 0, want_check = 0, if_missing = 0, stage = STAGE_ALL, stage_set = 0;
    long v;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case O_DEVICE: p.device = optarg; break;
        case O_BUDGET:
            if (cli_parse_double(optarg, 0.0, 1e7, &p.budget_s))
                return cli_usage_error("tune", "--budget must be a number of seconds >= 0");
            break;
        case O_SHAPES:
            if (strcmp(optarg, "prefill") == 0)
                p.shapes = PLDR_TUNE_PREFILL;
            else if (strcmp(optarg, "all") == 0)
                p.shapes = PLDR_TUNE_ALL;
            else
                return cli_usage_error("tune", "--shapes must be prefill or all");
            break;
        case O_MAXC:
            if (cli_parse_int(optarg, 0, 1000000, &v))
                return cli_usage_error("tune", "--max-candidates must be an integer >= 0");
            p.max_candidates = (int)v;
            break;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffffL, &v))
                return cli_usage_error("tune", "--seed must be a non-negative integer");
            p.seed = (uint64_t)v;
            break;
        case O_STAGE:
            if (strcmp(optarg, "gemm") == 0)
                stage = STAGE_GEMM;
            else if (strcmp(optarg, "decode") == 0)
                stage = STAGE_DECODE;
            else if (strcmp(optarg, "all") == 0)
                stage = STAGE_ALL;
            else
                return cli_usage_error("tune", "--stage must be gemm, decode or all");
            stage_set = 1;
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dp.dtype))
                return cli_usage_error("tune", "--dtype must be f32, f16, bf16, q8_0 or q4_0");
            break;
        case O_STEPS:
            if (cli_parse_int(optarg, 1, 100000, &v))
                return cli_usage_error("tune", "--steps must be an integer in [1, 100000]");
            dp.steps = (int)v;
            break;
        case O_RUNS:
            if (cli_parse_int(optarg, 1, 1000, &v))
                return cli_usage_error("tune", "--runs must be an integer in [1, 1000]");
            dp.reps = (int)v;
            break;
        case O_PATH: want_path = 1; break;
        case O_CHECK: want_check = 1; break;
        case O_IFMISSING: if_missing = 1; break;
        case 'q': quiet = 1; break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("tune", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("tune", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("tune", "unexpected argument '%s'", argv[optind]);
    if (!p.device || !*p.device)
        p.device = NULL;
    dp.device = p.device;

    if (want_path) {
        if (stage == STAGE_ALL && stage_set)
            return cli_usage_error("tune", "--path names one file: use --stage gemm or --stage decode");
        pldr_device_info info;
        pldr_status st = pldr_select_device(p.device, &info);
        if (st != PLDR_OK)
            return cli_report(st);
        char *path = stage == STAGE_DECODE ? pldr_decode_tuning_path(&info, NULL) : pldr_tuning_path(&info, NULL);
        if (!path) {
            fprintf(stderr, "pldr: no cache directory (set XDG_CACHE_HOME or HOME)\n");
            return EXIT_RUNTIME;
        }
        printf("%s\n", path);
        free(path);
        return EXIT_OK;
    }
    if (want_check) {
        char *path = NULL, *summary = NULL;
        pldr_status st = pldr_tuning_check(p.device, NULL, &path, &summary);
        int rc = st == PLDR_OK ? EXIT_OK : cli_report(st);
        if (st == PLDR_OK)
            printf("%s\n%s\n", path ? path : "(no cache directory)", summary);
        free(path);
        free(summary);
        pldr_device_info info;
        if (rc == EXIT_OK && (st = pldr_select_device(p.device, &info)) != PLDR_OK)
            rc = cli_report(st);
        if (rc == EXIT_OK) {
            path = summary = NULL;
            st = pldr_decode_tuning_describe(&info, NULL, &path, &summary);
            if (st == PLDR_OK)
                printf("%s\n%s\n", path ? path : "(no cache directory)", summary);
            else
                rc = cli_report(st);
            free(path);
            free(summary);
        }
        return rc;
    }

    if (!model_dir)
        model_dir = cli_default_model_dir();
    if (!quiet)
        p.log = dp.log = log_line;
    int decode = stage & STAGE_DECODE;
    struct stat dir_st;
    if (stat(model_dir, &dir_st) != 0 || !S_ISDIR(dir_st.st_mode)) {
        fprintf(stderr, "pldr: cannot open the model directory %s: %s\n", model_dir,
                stat(model_dir, &dir_st) != 0 ? strerror(errno) : "not a directory");
        return EXIT_INPUT;
    }
    if (decode && !has_weights(model_dir)) {
        if (stage == STAGE_DECODE) {
            fprintf(stderr, "pldr: %s has no model.safetensors (or index): the decode stage loads the weights\n",
                    model_dir);
            return EXIT_INPUT;
        }
        if (!quiet)
            fprintf(stderr, "tune: %s has no weights, only the gemm stage runs\n", model_dir);
        decode = 0;
    }
    if (if_missing) {
        int tuned = 0, tuned_decode = 0;
        pldr_status st = stage & STAGE_GEMM ? pldr_tune_if_missing(model_dir, NULL, &p, &tuned) : PLDR_OK;
        if (st == PLDR_OK && decode)
            st = pldr_tune_decode_if_missing(model_dir, &dp, &tuned_decode);
        if (st != PLDR_OK)
            return cli_report(st);
        printf("%s\n", tuned || tuned_decode ? "tuned: the tuning file was written"
                                             : "already tuned: the device has a tuning file for these shapes");
        return EXIT_OK;
    }
    if (stage & STAGE_GEMM) {
        pldr_tune_result r;
        pldr_status st = pldr_tune_run(model_dir, &p, &r);
        if (st != PLDR_OK)
            return cli_report(st);
        printf("| shape (MxNxK) | what | calls | before ms | before GFLOP/s | after ms | after GFLOP/s | path | "
               "speed-up |\n");
        printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n");
        for (int i = 0; i < r.n_shapes; i++) {
            const pldr_tune_shape *s = &r.shapes[i];
            double gf = 2.0 * (double)s->m * (double)s->n * (double)s->k * 1e-9;
            printf("| %zux%zux%zu | %s | %g | %.2f | %.2f | %.2f | %.2f | %s | %.2fx |\n", s->m, s->n, s->k,
                   s->what, s->weight, s->before_s * 1e3, gf / s->before_s, s->after_s * 1e3, gf / s->after_s,
                   !r.tuned ? "default" : s->direct_after ? "direct" : "indirect", s->before_s / s->after_s);
        }
        printf("\nweighted GEMM time per forward set: %.1f ms before, %.1f ms after (%.2fx); %d parameter sets "
               "measured in %.0f s\n%s %s\n",
               r.total_before_s * 1e3, r.total_after_s * 1e3, r.total_before_s / r.total_after_s, r.n_candidates,
               r.elapsed_s, r.tuned ? "tuned parameters written to" : "CLBlast's defaults kept, result written to",
               r.path);
        pldr_tune_result_free(&r);
    }
    if (decode) {
        if (stage & STAGE_GEMM)
            printf("\n");
        pldr_tune_decode_result r;
        pldr_status st = pldr_tune_decode(model_dir, &dp, &r);
        if (st != PLDR_OK)
            return cli_report(st);
        print_decode(&r);
        pldr_tune_decode_result_free(&r);
    }
    return EXIT_OK;
}
