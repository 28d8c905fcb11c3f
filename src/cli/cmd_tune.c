/* pldr tune: per-device tuning of CLBlast's GEMM for the prefill shapes of a
 * model (src/tune.c), stored in the cache directory and applied whenever a
 * model is loaded on that device. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tune.h"

static const char help[] =
    "usage: pldr tune [-m DIR] [--device SPEC] [--budget SECONDS] [--shapes prefill|all]\n"
    "                 [--max-candidates N] [--seed S] [--if-missing] [-q]\n"
    "       pldr tune --path [--device SPEC]\n"
    "       pldr tune --check [--device SPEC]\n"
    "\n"
    "Tunes CLBlast's GEMM kernels for the matrix shapes the model's prefill runs on one\n"
    "device: CLBlast's defaults first, then parameter sets of its indirect (Xgemm, GEMMK 0\n"
    "and 1) and direct (XgemmDirect) kernels, and the size where it switches between them.\n"
    "Each set is checked against a host reference and timed on every shape; the choice\n"
    "minimises the time of prefills of 16, 64 and 512 tokens. The winners, with the times\n"
    "before and after, go to $XDG_CACHE_HOME/pldr/tune-<hash of the device>.json, and every\n"
    "later model load on the device applies them (PLDR_TUNING=0 skips the file): one file\n"
    "per device, so tune with the model you run. CLBlast compiles every new parameter set\n"
    "(10-20 s each with PoCL on a small CPU, a second or two on a GPU), and each is measured\n"
    "in a process of its own; progress goes to stderr.\n"
    "\n"
    "  -m, --model DIR        model whose config.json gives the shapes\n"
    "                         (default: $PLDR_MODEL or the bundled model)\n"
    "      --device SPEC      OpenCL device: index, platform:device or name substring\n"
    "      --budget SECONDS   wall-clock budget of the search (default 600; CLBlast's\n"
    "                         defaults are always measured)\n"
    "      --shapes S         prefill (default): the per-layer GEMMs; all: also the final\n"
    "                         layer in 64-row chunks (logits of every row, perplexity)\n"
    "      --max-candidates N try at most N parameter sets besides the defaults\n"
    "      --seed S           seed of the search (default 1)\n"
    "      --if-missing       tune only when the device has no valid tuning file made for\n"
    "                         the model's shapes (what --tune of generate and bench does)\n"
    "      --path             print the device's tuning file name and exit\n"
    "      --check            read, check and apply the device's tuning file; print it\n"
    "  -q, --quiet            no progress on stderr\n";

static void log_line(const char *line, void *user)
{
    (void)user;
    fprintf(stderr, "tune: %s\n", line);
}

int cli_tune_if_missing(const char *model_dir, const char *device)
{
    pldr_tune_params tp = pldr_tune_default_params();
    tp.log = log_line;
    int tuned = 0;
    pldr_status st = pldr_tune_if_missing(model_dir, device, &tp, &tuned);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

int cmd_tune(int argc, char **argv)
{
    enum { O_DEVICE = 256, O_BUDGET, O_SHAPES, O_MAXC, O_SEED, O_PATH, O_CHECK, O_IFMISSING };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"device", required_argument, 0, O_DEVICE},
        {"budget", required_argument, 0, O_BUDGET}, {"shapes", required_argument, 0, O_SHAPES},
        {"max-candidates", required_argument, 0, O_MAXC}, {"seed", required_argument, 0, O_SEED},
        {"path", no_argument, 0, O_PATH},           {"check", no_argument, 0, O_CHECK},
        {"if-missing", no_argument, 0, O_IFMISSING},
        {"quiet", no_argument, 0, 'q'},             {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL;
    pldr_tune_params p = pldr_tune_default_params();
    int quiet = 0, want_path = 0, want_check = 0, if_missing = 0;
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

    if (want_path) {
        pldr_device_info info;
        pldr_status st = pldr_select_device(p.device, &info);
        if (st != PLDR_OK)
            return cli_report(st);
        char *path = pldr_tuning_path(&info, NULL);
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
        return rc;
    }

    if (!model_dir)
        model_dir = cli_default_model_dir();
    if (!quiet)
        p.log = log_line;
    if (if_missing) {
        int tuned = 0;
        pldr_status st = pldr_tune_if_missing(model_dir, NULL, &p, &tuned);
        if (st != PLDR_OK)
            return cli_report(st);
        printf("%s\n", tuned ? "tuned: the tuning file was written"
                             : "already tuned: the device has a tuning file for these shapes");
        return EXIT_OK;
    }
    pldr_tune_result r;
    pldr_status st = pldr_tune_run(model_dir, &p, &r);
    if (st != PLDR_OK)
        return cli_report(st);
    printf("| shape (MxNxK) | what | calls | before ms | before GFLOP/s | after ms | after GFLOP/s | path | speed-up |\n");
    printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n");
    for (int i = 0; i < r.n_shapes; i++) {
        const pldr_tune_shape *s = &r.shapes[i];
        double gf = 2.0 * (double)s->m * (double)s->n * (double)s->k * 1e-9;
        printf("| %zux%zux%zu | %s | %g | %.2f | %.2f | %.2f | %.2f | %s | %.2fx |\n", s->m, s->n, s->k, s->what,
               s->weight, s->before_s * 1e3, gf / s->before_s, s->after_s * 1e3, gf / s->after_s,
               !r.tuned ? "default" : s->direct_after ? "direct" : "indirect", s->before_s / s->after_s);
    }
    printf("\nweighted GEMM time per forward set: %.1f ms before, %.1f ms after (%.2fx); %d parameter sets "
           "measured in %.0f s\n%s %s\n",
           r.total_before_s * 1e3, r.total_after_s * 1e3, r.total_before_s / r.total_after_s, r.n_candidates,
           r.elapsed_s, r.tuned ? "tuned parameters written to" : "CLBlast's defaults kept, result written to",
           r.path);
    pldr_tune_result_free(&r);
    return EXIT_OK;
}
