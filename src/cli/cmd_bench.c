/* pldr bench: prefill and decode speed, after llama-bench's conventions.
 * ppP: one forward over P tokens (ending with the next-token argmax);
 * tgN: N greedy decode steps after a 64-token prompt. */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "bench_batch.h"

#define TG_PROMPT_DEFAULT 64
#define MAX_LIST 16

static const char help[] =
    "usage: pldr bench [-m DIR] [-p LIST] [-n LIST] [-r N] [--cache LIST] [--dtype LIST]\n"
    "                  [--device SPEC|all] [-b LIST] [-o md|json|csv | -o svg FILE]\n"
    "\n"
    "Measures prefill (test ppP: one forward over P tokens) and decode (test tgN: N greedy\n"
    "tokens after a 64-token prompt, see --tg-prompt) in tokens per second, as mean +- sd\n"
    "over the repetitions, after one warm-up run. Each decode result is also given as a\n"
    "share of the roofline: the bytes a decode step must read divided by the device's\n"
    "memory bandwidth, measured once per device as the best of a copy kernel, the driver's\n"
    "copy and a read kernel, repeated, on 256 MiB and on the size a decode step reads. The\n"
    "decode timer starts on an idle device and stops when the N-th token is back.\n"
    "\n"
    "  -m, --model DIR   model directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -p, --n-prompt L  prompt lengths, comma-separated (default 512; 0 skips)\n"
    "  -n, --n-gen L     decode lengths, comma-separated (default 128; 0 skips)\n"
    "  -r, --repetitions N  (default 5)\n"
    "      --cache L     cache modes among none,kv,kvg (default kvg)\n"
    "      --dtype L     weight storage among f32,f16,bf16,q8_0,q4_0 (default f32)\n"
    "      --device SPEC device spec, or 'all' for every device (default: the default device)\n"
    "  -o, --output F    md (default), json or csv\n"
    "      --seed S      seed of the random token ids (default 1)\n"
    "      --tg-prompt N prompt length before the tgN tests (default 64)\n"
    "      --g-cache FILE use this G-cache (A, A_LM, G_LM) instead of the metric learner\n"
    "  -b, --batch L     sequences decoded together, comma-separated (default 1). With -b, each\n"
    "                    B prefills B prompts of P tokens (-p) and decodes N tokens (-n) of all B\n"
    "                    in one batch per step, reported in llama-batched-bench's columns: PP, TG,\n"
    "                    B, N_KV = B*(PP+TG), T_PP and S_PP = B*PP/T_PP, T_TG and S_TG = B*TG/T_TG\n"
    "                    (aggregate; S_TG/seq = TG/T_TG per sequence), T and S = N_KV/T\n"
    "  -o svg FILE       with -b: draw S_TG against B per device, dtype and cache into FILE\n"
    "      --plot FILE   the same\n"
    "      --tune        tune CLBlast and the decode work-group shapes for the model on each\n"
    "                    device and dtype first, unless already done (see pldr tune)\n";

typedef struct result {
    char test[32];
    const char *cache, *dtype;
    int n_tokens;
    int reps;
    double samples[64];
    double mean, sd;
    double roofline; /* share of the roofline, decode only; <0: n/a */
} result;

static int parse_list(const char *s, long lo, long hi, long *out, int *n)
{
    char **items;
    int k;
    *n = 0;
    if (cli_split_list(s, MAX_LIST, &items, &k))
        return -1;
    int bad = 0;
    for (int i = 0; i < k && !bad; i++)
        bad = cli_parse_int(items[i], lo, hi, &out[i]) != 0;
    free(items[0]);
    free(items);
    *n = bad ? 0 : k;
    return bad ? -1 : 0;
}

static int parse_names(const char *s, const char *const *allowed, int n_allowed, int *out, int *n)
{
    char **items;
    int k;
    *n = 0;
    if (cli_split_list(s, MAX_LIST, &items, &k))
        return -1;
    int bad = 0;
    for (int i = 0; i < k && !bad; i++) {
        out[i] = -1;
        for (int j = 0; j < n_allowed; j++)
            if (strcmp(items[i], allowed[j]) == 0)
                out[i] = j;
        bad = out[i] < 0;
    }
    free(items[0]);
    free(items);
    *n = bad ? 0 : k;
    return bad ? -1 : 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void stats(result *r)
{
    double s = 0.0, s2 = 0.0;
    for (int i = 0; i < r->reps; i++)
        s += r->samples[i];
    r->mean = s / r->reps;
    for (int i = 0; i < r->reps; i++)
        s2 += (r->samples[i] - r->mean) * (r->samples[i] - r->mean);
    r->sd = r->reps > 1 ? sqrt(s2 / (r->reps - 1)) : 0.0;
}

/* One timed prefill of P tokens; returns tokens per second or < 0. */
static double run_pp(pldr_context *ctx, const int32_t *ids, int P, pldr_status *st)
{
    pldr_context_reset(ctx);
    int32_t next;
    double t0 = now();
    *st = pldr_eval_greedy(ctx, ids, P, &next);
    return *st == PLDR_OK ? P / (now() - t0) : -1.0;
}

/* One timed decode of N tokens after a tg_prompt-token prefill. */
static int tg_prompt = TG_PROMPT_DEFAULT;

static double run_tg(pldr_context *ctx, const int32_t *ids, int N, pldr_status *st)
{
    pldr_context_reset(ctx);
    int32_t next;
    /* the timer starts on an idle device without a step computed ahead (the
     * prefill's would count as free) and stops when the N-th step's token is
     * back. The steps are those of pldr_generate, greedy, with no
     * end-of-sequence token (every step runs): fed the prefill's token, it
     * makes N decode steps, each token read back, and picks N tokens (N - 1
     * when the context holds exactly tg_prompt + N positions: the last
     * step's token is then computed but not picked, finish "context"). */
    if ((*st = pldr_eval_greedy(ctx, ids, tg_prompt, &next)) != PLDR_OK || (*st = pldr_context_finish(ctx)) != PLDR_OK)
        return -1.0;
    pldr_generate_params gp = pldr_generate_default_params();
    gp.max_tokens = N;
    gp.eos_id = PLDR_EOS_NONE;
    double t0 = now();
    *st = pldr_generate_ids(ctx, NULL, &next, 1, NULL, &gp, NULL, NULL, NULL);
    const double dt = now() - t0;
    const int steps = pldr_context_n_past(ctx) - tg_prompt; /* N */
    return *st == PLDR_OK ? steps / dt : -1.0;
}

/* Resident set size now, in KiB (0 where /proc is missing); *file_kib gets
 * the part backed by files (shared libraries' code, mapped files). */
static long rss_kib(long *file_kib)
{
    long pages = 0, resident = 0, shared = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld %ld", &pages, &resident, &shared) != 3)
            resident = shared = 0;
        fclose(f);
    }
    *file_kib = shared * (sysconf(_SC_PAGESIZE) / 1024);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static long rss_after_load_kib, rss_file_after_load_kib;

static long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

/* by pldr_dtype (pldr_dtype_name) */
static const char *const dtype_names[PLDR_DTYPE_COUNT] = {"f32", "f16", "bf16", "q8_0", "q4_0"};

typedef struct device_run {
    pldr_device_info dev;
    double bandwidth;
    uint64_t decode_bytes[PLDR_DTYPE_COUNT]; /* weight bytes a decode step reads (the roofline's) */
    uint64_t weight_bytes[PLDR_DTYPE_COUNT], context_bytes;
    uint64_t zero_copy_bytes[PLDR_DTYPE_COUNT]; /* of weight_bytes: read in place from the checkpoint's mapping */
    double load_s[PLDR_DTYPE_COUNT];            /* seconds pldr_model_load took, per dtype (0: not run) */
    double quantize_s[PLDR_DTYPE_COUNT];        /* of load_s: converting to the dtype (bf16, q8_0, q4_0) */
    char kernel_options[PLDR_DTYPE_COUNT][1024]; /* per dtype, pldr_model_kernel_options ("": not run) */
    char kernel_notes[PLDR_DTYPE_COUNT][1024];   /* per dtype, pldr_model_kernel_notes ("": nothing changed) */
    int decode_tuned[PLDR_DTYPE_COUNT];          /* per dtype, pldr_model_decode_tuned */
    result *res;
    int n_res;
} device_run;

static void print_md(const char *model_name, uint64_t n_params, const device_run *runs, int n_runs)
{
    for (int d = 0; d < n_runs; d++)
        printf("device %d: %s (%s, %s), driver %s, %u compute units, probed bandwidth %.1f GB/s\n", runs[d].dev.index,
               runs[d].dev.name, runs[d].dev.platform, runs[d].dev.type, runs[d].dev.driver_version,
               runs[d].dev.compute_units, runs[d].bandwidth / 1e9);
    printf("\n| model | params | device | dtype | cache | test | t/s | roofline |\n");
    printf("| --- | ---: | --- | --- | --- | --- | ---: | ---: |\n");
    for (int d = 0; d < n_runs; d++)
        for (int i = 0; i < runs[d].n_res; i++) {
            const result *r = &runs[d].res[i];
            char roof[32] = "";
            if (r->roofline >= 0)
                snprintf(roof, sizeof roof, "%.0f%%", 100.0 * r->roofline);
            printf("| %s | %.2fM | %s | %s | %s | %s | %.2f ± %.2f | %s |\n", model_name, n_params / 1e6,
                   runs[d].dev.name, r->dtype, r->cache, r->test, r->mean, r->sd, roof);
        }
    printf("\nhost RSS after loading: %.1f MiB (%.1f MiB anonymous, %.1f MiB file-backed: libraries' code and "
           "weights read in place); peak host RSS: %.1f MiB\n",
           rss_after_load_kib / 1024.0, (rss_after_load_kib - rss_file_after_load_kib) / 1024.0,
           rss_file_after_load_kib / 1024.0, peak_rss_kib() / 1024.0);
    for (int d = 0; d < n_runs; d++)
        for (int t = 0; t < PLDR_DTYPE_COUNT; t++)
            if (runs[d].load_s[t] > 0.0)
                printf("device %d, %s weights: %.1f MiB (%.1f MiB of them zero-copy, read in place from the "
                       "checkpoint's mapping), %.1f MiB read per decode step, context %.1f MiB, model load %.2f s "
                       "(%.2f s converting the weights)%s\n",
                       runs[d].dev.index, dtype_names[t], runs[d].weight_bytes[t] / 1048576.0,
                       runs[d].zero_copy_bytes[t] / 1048576.0, runs[d].decode_bytes[t] / 1048576.0,
                       runs[d].context_bytes / 1048576.0, runs[d].load_s[t], runs[d].quantize_s[t],
                       runs[d].decode_tuned[t] ? ", decode work-group shapes from pldr tune" : "");
}

static void print_csv(const char *model_name, uint64_t n_params, const device_run *runs, int n_runs)
{
    printf("model,params,device,platform,driver,dtype,cache,test,n_tokens,reps,mean_tps,sd_tps,bandwidth_gbps,"
           "roofline,samples\n");
    for (int d = 0; d < n_runs; d++)
        for (int i = 0; i < runs[d].n_res; i++) {
            const result *r = &runs[d].res[i];
            printf("%s,%llu,\"%s\",\"%s\",\"%s\",%s,%s,%s,%d,%d,%.3f,%.3f,%.1f,%.4f,\"", model_name,
                   (unsigned long long)n_params, runs[d].dev.name, runs[d].dev.platform, runs[d].dev.driver_version,
                   r->dtype, r->cache, r->test, r->n_tokens, r->reps, r->mean, r->sd, runs[d].bandwidth / 1e9,
                   r->roofline);
            for (int k = 0; k < r->reps; k++)
                printf("%s%.3f", k ? ";" : "", r->samples[k]);
            printf("\"\n");
        }
}

static void print_json(const char *model_name, uint64_t n_params, const device_run *runs, int n_runs)
{
    printf("{\n  \"model\": ");
    json_str(stdout, model_name);
    printf(",\n  \"params\": %llu,\n  \"build\": {\"version\": \"%s\", \"cflags\": ", (unsigned long long)n_params,
           PLDR_VERSION_STRING);
    json_str(stdout, PLDR_BUILD_CFLAGS);
    printf("},\n  \"host_rss_after_load_bytes\": %ld,\n  \"host_rss_file_after_load_bytes\": %ld,\n"
           "  \"peak_host_rss_bytes\": %ld,\n  \"devices\": [\n",
           rss_after_load_kib * 1024, rss_file_after_load_kib * 1024, peak_rss_kib() * 1024);
    for (int d = 0; d < n_runs; d++) {
        const device_run *dr = &runs[d];
        printf("    {\"index\": %d, \"name\": ", dr->dev.index);
        json_str(stdout, dr->dev.name);
        printf(", \"platform\": ");
        json_str(stdout, dr->dev.platform);
        printf(", \"platform_version\": ");
        json_str(stdout, dr->dev.platform_version);
        printf(", \"driver\": ");
        json_str(stdout, dr->dev.driver_version);
        printf(", \"type\": \"%s\", \"compute_units\": %u, \"global_mem_bytes\": %llu,\n", dr->dev.type,
               dr->dev.compute_units, (unsigned long long)dr->dev.global_mem_bytes);
        printf("     \"bandwidth_bytes_per_s\": %.0f, \"context_device_bytes\": %llu,\n", dr->bandwidth,
               (unsigned long long)dr->context_bytes);
        printf("     \"unified_memory\": %s, \"mem_base_align_bytes\": %u, \"zero_copy_weight_bytes\": %llu,\n",
               dr->dev.unified_memory ? "true" : "false", dr->dev.mem_base_align,
               (unsigned long long)(dr->zero_copy_bytes[0] + dr->zero_copy_bytes[1]));
        /* per dtype (every one, 0 / "" / false where not run) */
        const char *fields[] = {"load_seconds", "quantize_seconds", "weight_device_bytes", "decode_weight_bytes",
                                "kernel_options", "kernel_notes", "decode_tuned"};
        for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
            printf("     \"%s\": {", fields[f]);
            for (int t = 0; t < PLDR_DTYPE_COUNT; t++) {
                printf("%s\"%s\": ", t ? ", " : "", dtype_names[t]);
                switch (f) {
                case 0: printf("%.3f", dr->load_s[t]); break;
                case 1: printf("%.3f", dr->quantize_s[t]); break;
                case 2: printf("%llu", (unsigned long long)dr->weight_bytes[t]); break;
                case 3: printf("%llu", (unsigned long long)dr->decode_bytes[t]); break;
                case 4: json_str(stdout, dr->kernel_options[t]); break;
                case 5: json_str(stdout, dr->kernel_notes[t]); break;
                default: printf("%s", dr->decode_tuned[t] ? "true" : "false"); break;
                }
            }
            printf("},\n");
        }
        printf("     \"results\": [\n");
        for (int i = 0; i < dr->n_res; i++) {
            const result *r = &dr->res[i];
            char roof[32] = "null";
            if (r->roofline >= 0)
                snprintf(roof, sizeof roof, "%.4f", r->roofline);
            printf("       {\"test\": \"%s\", \"dtype\": \"%s\", \"cache\": \"%s\", \"n_tokens\": %d, \"mean_tps\": %.3f, "
                   "\"sd_tps\": %.3f, \"roofline\": %s, \"samples_tps\": [",
                   r->test, r->dtype, r->cache, r->n_tokens, r->mean, r->sd, roof);
            for (int k = 0; k < r->reps; k++)
                printf("%s%.3f", k ? ", " : "", r->samples[k]);
            printf("]}%s\n", i + 1 < dr->n_res ? "," : "");
        }
        printf("     ]}%s\n", d + 1 < n_runs ? "," : "");
    }
    printf("  ]\n}\n");
}

int cmd_bench(int argc, char **argv)
{
    enum { O_CACHE = 256, O_DTYPE, O_DEVICE, O_SEED, O_TGP, O_GCACHE, O_TUNE, O_PLOT };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"n-prompt", required_argument, 0, 'p'},
        {"n-gen", required_argument, 0, 'n'},   {"repetitions", required_argument, 0, 'r'},
        {"cache", required_argument, 0, O_CACHE}, {"dtype", required_argument, 0, O_DTYPE},
        {"device", required_argument, 0, O_DEVICE}, {"output", required_argument, 0, 'o'},
        {"seed", required_argument, 0, O_SEED}, {"help", no_argument, 0, 'h'},
        {"tg-prompt", required_argument, 0, O_TGP}, {"g-cache", required_argument, 0, O_GCACHE},
        {"tune", no_argument, 0, O_TUNE}, {"batch", required_argument, 0, 'b'},
        {"plot", required_argument, 0, O_PLOT},
        {0, 0, 0, 0},
    };
    static const char *const cache_names[] = {"none", "kv", "kvg"};
    long pp[MAX_LIST] = {512}, tg[MAX_LIST] = {128}, reps = 5, seed = 1;
    int n_pp = 1, n_tg = 1, caches[MAX_LIST] = {PLDR_CACHE_KVG}, n_caches = 1, dtypes[MAX_LIST] = {0}, n_dtypes = 1;
    const char *model_dir = NULL, *device = NULL, *format = "md", *gcache = NULL;
    int tune = 0;
    long batch[MAX_LIST] = {1};
    int n_batch = 1, batch_mode = 0;
    const char *plot = NULL;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:n:r:o:b:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p':
            if (parse_list(optarg, 0, 1 << 20, pp, &n_pp))
                return cli_usage_error("bench", "-p must be a list of integers >= 0, not '%s'", optarg);
            break;
        case 'n':
            if (parse_list(optarg, 0, 1 << 20, tg, &n_tg))
                return cli_usage_error("bench", "-n must be a list of integers >= 0, not '%s'", optarg);
            break;
        case 'r':
            if (cli_parse_int(optarg, 1, 64, &reps))
                return cli_usage_error("bench", "-r must be an integer in [1, 64], not '%s'", optarg);
            break;
        case O_CACHE:
            if (parse_names(optarg, cache_names, 3, caches, &n_caches))
                return cli_usage_error("bench", "--cache must list none, kv, kvg, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (parse_names(optarg, dtype_names, PLDR_DTYPE_COUNT, dtypes, &n_dtypes))
                return cli_usage_error("bench", "--dtype must list f32, f16, bf16, q8_0, q4_0, not '%s'", optarg);
            break;
        case O_DEVICE: device = optarg; break;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffff, &seed))
                return cli_usage_error("bench", "--seed must be a non-negative integer, not '%s'", optarg);
            break;
        case O_GCACHE: gcache = optarg; break;
        case O_TUNE: tune = 1; break;
        case 'b':
            if (parse_list(optarg, 1, PLDR_MAX_SEQ, batch, &n_batch))
                return cli_usage_error("bench", "-b must be a list of integers in [1, %d], not '%s'", PLDR_MAX_SEQ,
                                       optarg);
            batch_mode = 1;
            break;
        case O_PLOT: plot = optarg; break;
        case O_TGP: {
            long v;
            if (cli_parse_int(optarg, 1, 1 << 20, &v))
                return cli_usage_error("bench", "--tg-prompt must be a positive integer, not '%s'", optarg);
            tg_prompt = (int)v;
            break;
        }
        case 'o':
            if (strcmp(optarg, "md") && strcmp(optarg, "json") && strcmp(optarg, "csv") && strcmp(optarg, "svg"))
                return cli_usage_error("bench", "-o must be md, json, csv or svg, not '%s'", optarg);
            format = optarg;
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("bench", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("bench", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (strcmp(format, "svg") == 0) {
        if (optind >= argc)
            return cli_usage_error("bench", "-o svg needs a file name after the options");
        plot = argv[optind++];
    }
    if (optind < argc)
        return cli_usage_error("bench", "unexpected argument '%s'", argv[optind]);
    if (plot && !batch_mode)
        return cli_usage_error("bench", "the plot draws tok/s against -b's batch sizes: give -b");
    if (plot)
        format = "svg";
    if (!model_dir)
        model_dir = cli_default_model_dir();
    const char *model_name = strrchr(model_dir, '/') && strrchr(model_dir, '/')[1] ? strrchr(model_dir, '/') + 1
                                                                                     : model_dir;

    if (tune) {
        pldr_dtype td[MAX_LIST];
        for (int i = 0; i < n_dtypes; i++)
            td[i] = (pldr_dtype)dtypes[i];
        int rc_tune = cli_tune_if_missing(model_dir, device, td, n_dtypes);
        if (rc_tune != EXIT_OK)
            return rc_tune;
    }
    /* the devices to run on */
    pldr_device_info *all = NULL;
    int n_dev = 0;
    pldr_status st;
    if (device && strcmp(device, "all") == 0) {
        if ((st = pldr_list_devices(&all, &n_dev)) != PLDR_OK)
            return cli_report(st);
    } else {
        all = malloc(sizeof *all);
        if (!all)
            return cli_report(PLDR_ERR_HOST_MEMORY);
        if ((st = pldr_select_device(device, all)) != PLDR_OK) {
            free(all);
            return cli_report(st);
        }
        n_dev = 1;
    }
    if (batch_mode) {
        bench_batch_args ba = {model_dir, model_name, gcache, format, plot, all, n_dev, batch, pp, tg,
                               n_batch, n_pp, n_tg, caches, dtypes, n_caches, n_dtypes, reps, seed};
        int rc_b = bench_batch_run(&ba);
        free(all);
        return rc_b;
    }
    device_run *runs = calloc((size_t)n_dev, sizeof *runs);
    int max_res = (n_pp + n_tg) * n_caches * n_dtypes;
    int rc = EXIT_OK;
    uint64_t n_params = 0;
    for (int d = 0; d < n_dev && rc == EXIT_OK; d++) {
        device_run *dr = &runs[d];
        dr->dev = all[d];
        dr->res = calloc((size_t)max_res, sizeof *dr->res);
        char spec[32];
        snprintf(spec, sizeof spec, "%d", all[d].index);
        for (int di = 0; di < n_dtypes && rc == EXIT_OK; di++) {
            pldr_model *model = NULL;
            double t_load = now();
            if ((rc = cli_load_model(model_dir, spec, (pldr_dtype)dtypes[di], &model)) != EXIT_OK)
                break;
            dr->load_s[dtypes[di]] = now() - t_load;
            snprintf(dr->kernel_options[dtypes[di]], sizeof dr->kernel_options[0], "%s",
                     pldr_model_kernel_options(model));
            snprintf(dr->kernel_notes[dtypes[di]], sizeof dr->kernel_notes[0], "%s", pldr_model_kernel_notes(model));
            dr->decode_tuned[dtypes[di]] = pldr_model_decode_tuned(model);
            dr->quantize_s[dtypes[di]] = pldr_model_quantize_seconds(model);
            long rss_file, rss = rss_kib(&rss_file);
            if (rss > rss_after_load_kib) {
                rss_after_load_kib = rss;
                rss_file_after_load_kib = rss_file;
            }
            const pldr_config *cfg = pldr_model_config(model);
            n_params = pldr_model_n_params(model);
            dr->weight_bytes[dtypes[di]] = pldr_model_device_bytes(model);
            dr->zero_copy_bytes[dtypes[di]] = pldr_model_zero_copy_bytes(model);
            dr->decode_bytes[dtypes[di]] = pldr_model_decode_bytes(model);
            if (dr->bandwidth == 0.0 && (st = pldr_model_measure_bandwidth(model, &dr->bandwidth)) != PLDR_OK)
                fprintf(stderr, "pldr bench: bandwidth probe failed: %s\n", pldr_last_error());
            int need = 1;
            for (int i = 0; i < n_pp; i++)
                need = pp[i] > need ? (int)pp[i] : need;
            for (int i = 0; i < n_tg; i++)
                need = tg_prompt + tg[i] > need ? tg_prompt + (int)tg[i] : need;
            if (need > cfg->max_position) {
                fprintf(stderr, "pldr bench: a test needs %d positions, more than max_position_embeddings (%d)\n",
                        need, cfg->max_position);
                pldr_model_free(model);
                rc = EXIT_CONTEXT;
                break;
            }
            int32_t *ids = malloc((size_t)need * sizeof *ids);
            srand((unsigned)seed);
            for (int i = 0; i < need && ids; i++)
                ids[i] = 6 + rand() % (cfg->vocab_size > 6 ? cfg->vocab_size - 6 : 1);
            for (int ci = 0; ci < n_caches && rc == EXIT_OK && ids; ci++) {
                pldr_context_params cp = pldr_context_default_params();
                cp.cache_mode = (pldr_cache_mode)caches[ci];
                cp.n_ctx = need;
                pldr_context *ctx = NULL;
                if ((st = pldr_context_new(model, &cp, &ctx)) != PLDR_OK) {
                    rc = cli_report(st);
                    break;
                }
                if (gcache && (rc = cli_apply_gcache(ctx, model, gcache)) != EXIT_OK) {
                    pldr_context_free(ctx);
                    break;
                }
                dr->context_bytes = pldr_context_device_bytes(ctx);
                for (int kind = 0; kind < 2 && rc == EXIT_OK; kind++) {
                    int n_lens = kind == 0 ? n_pp : n_tg;
                    for (int li = 0; li < n_lens && rc == EXIT_OK; li++) {
                        int len = (int)(kind == 0 ? pp[li] : tg[li]);
                        if (len == 0)
                            continue;
                        result *r = &dr->res[dr->n_res];
                        if (kind == 1 && tg_prompt != TG_PROMPT_DEFAULT)
                            snprintf(r->test, sizeof r->test, "tg%d@pp%d", len, tg_prompt);
                        else
                            snprintf(r->test, sizeof r->test, "%s%d", kind == 0 ? "pp" : "tg", len);
                        r->cache = cache_names[caches[ci]];
                        r->dtype = dtype_names[dtypes[di]];
                        r->n_tokens = len;
                        r->reps = (int)reps;
                        r->roofline = -1.0;
                        for (int k = -1; k < reps; k++) { /* k = -1: warm-up */
                            double tps = kind == 0 ? run_pp(ctx, ids, len, &st) : run_tg(ctx, ids, len, &st);
                            if (st != PLDR_OK) {
                                rc = cli_report(st);
                                break;
                            }
                            if (k >= 0)
                                r->samples[k] = tps;
                        }
                        if (rc != EXIT_OK)
                            break;
                        stats(r);
                        if (kind == 1 && dr->bandwidth > 0) {
                            /* weights, plus K and V at the mean position of the run */
                            double kv = 2.0 * cfg->n_layers * cfg->d_model * 4.0 * (tg_prompt + len / 2.0);
                            r->roofline = r->mean * ((double)dr->decode_bytes[dtypes[di]] + kv) / dr->bandwidth;
                        }
                        fprintf(stderr, "  %s %s %s %s: %.2f t/s\n", dr->dev.name, r->dtype, r->cache, r->test, r->mean);
                        dr->n_res++;
                    }
                }
                pldr_context_free(ctx);
            }
            free(ids);
            pldr_model_free(model);
        }
    }
    if (rc == EXIT_OK) {
        if (strcmp(format, "json") == 0)
            print_json(model_name, n_params, runs, n_dev);
        else if (strcmp(format, "csv") == 0)
            print_csv(model_name, n_params, runs, n_dev);
        else
            print_md(model_name, n_params, runs, n_dev);
    }
    for (int d = 0; d < n_dev; d++)
        free(runs[d].res);
    free(runs);
    free(all);
    return rc;
}
