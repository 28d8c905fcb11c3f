/* pldr logits: the parity interface. Rows 0..N-1 of the output come from one
 * forward over ids[0:N]; each later row t from feeding ids[t] as one decode
 * step through the caches (or, with --cache none, from a full forward over
 * ids[0:t+1]). Other implementations are compared with the engine through
 * this command: keep its meaning fixed. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: pldr logits [-m DIR] --ids ID,ID,... [--prefill N] [--cache none|kv|kvg]\n"
    "                   [--g-cache FILE] [--device SPEC] [--dtype T] -o FILE.npy\n"
    "\n"
    "Writes float32 logits of shape [len(ids), vocab] as a NumPy .npy file.\n"
    "On other checkpoint classes, the rows are the head's outputs: hidden states\n"
    "[len(ids), hidden] (PldrllmModel), label logits [len(ids), labels] (token\n"
    "classification), start and end logits [len(ids), 2] (question answering), or\n"
    "one row [1, labels] for sequence classification (the last non-pad token's).\n"
    "Rows 0..N-1 come from one forward over ids[0:N] (N defaults to len(ids)). Each\n"
    "later row t comes from feeding ids[t] as one decode step through the caches, or,\n"
    "with --cache none, from a full forward over ids[0:t+1] (its last row).\n"
    "\n"
    "  -m, --model DIR     model directory (default: $PLDR_MODEL or the bundled model)\n"
    "      --ids LIST      comma-separated token ids\n"
    "      --prefill N     tokens in the first forward (1..len(ids), default len(ids))\n"
    "      --cache MODE    none, kv or kvg (default kvg)\n"
    "      --g-cache FILE  use A, A_LM, G_LM from this G-cache file (safetensors, see\n"
    "                      'pldr gcache export') instead of the metric learner, in every row\n"
    "      --device SPEC   OpenCL device: index, platform:device, type (cpu, gpu,\n"
    "                      accelerator) or name substring\n"
    "      --dtype T       weight storage on the device: f32 (default), f16, bf16, q8_0, q4_0\n"
    "  -o, --output FILE   the .npy file to write ('-': standard output); written\n"
    "                      atomically, an existing file is replaced only on success\n";

int cmd_logits(int argc, char **argv)
{
    enum { O_IDS = 256, O_PREFILL, O_CACHE, O_DEVICE, O_DTYPE, O_GCACHE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"ids", required_argument, 0, O_IDS},
        {"prefill", required_argument, 0, O_PREFILL}, {"cache", required_argument, 0, O_CACHE},
        {"device", required_argument, 0, O_DEVICE}, {"dtype", required_argument, 0, O_DTYPE},
        {"output", required_argument, 0, 'o'},    {"g-cache", required_argument, 0, O_GCACHE},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *ids_arg = NULL, *out = NULL, *device = NULL, *gcache = NULL;
    long prefill = 0;
    pldr_cache_mode cache = PLDR_CACHE_KVG;
    pldr_dtype dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'o': out = optarg; break;
        case O_IDS: ids_arg = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_GCACHE: gcache = optarg; break;
        case O_PREFILL:
            if (cli_parse_int(optarg, 1, 1L << 24, &prefill))
                return cli_usage_error("logits", "--prefill must be a positive integer, not '%s'", optarg);
            break;
        case O_CACHE:
            if (cli_parse_cache(optarg, &cache))
                return cli_usage_error("logits", "--cache must be none, kv or kvg, not '%s'", optarg);
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dtype))
                return cli_usage_error("logits", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("logits", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("logits", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("logits", "unexpected argument '%s'", argv[optind]);
    if (!ids_arg)
        return cli_usage_error("logits", "--ids is required");
    if (!out)
        return cli_usage_error("logits", "-o FILE.npy is required");
    int32_t *ids;
    int n;
    if (cli_parse_ids(ids_arg, &ids, &n))
        return cli_usage_error("logits", "--ids must be comma-separated non-negative integers");
    if (prefill == 0)
        prefill = n;
    if (prefill > n) {
        free(ids);
        return cli_usage_error("logits", "--prefill %ld is more than the %d ids", prefill, n);
    }
    if (!model_dir)
        model_dir = cli_default_model_dir();
    int rc = cli_check_output(out);
    if (rc != EXIT_OK) {
        free(ids);
        return rc;
    }

    pldr_model *model = NULL;
    pldr_context *ctx = NULL;
    float *logits = NULL;
    rc = cli_load_model(model_dir, device, dtype, &model);
    if (rc != EXIT_OK)
        goto done;
    /* the head's outputs per row: vocab_size for a causal LM (see "Model classes" in pldr.h) */
    const int V = pldr_model_config(model)->n_outputs;
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = cache;
    cp.n_ctx = n <= pldr_model_config(model)->max_position ? n : 0;
    pldr_status st = pldr_context_new(model, &cp, &ctx);
    if (st == PLDR_OK && gcache && (rc = cli_apply_gcache(ctx, model, gcache)) != EXIT_OK)
        goto done;
    if (st == PLDR_OK && !(logits = malloc((size_t)n * (size_t)V * sizeof(float))))
        st = PLDR_ERR_HOST_MEMORY;
    if (st == PLDR_OK)
        st = pldr_eval(ctx, ids, (int)prefill, logits, 1);
    for (int t = (int)prefill; st == PLDR_OK && t < n; t++)
        st = pldr_eval(ctx, ids + t, 1, logits + (size_t)t * (size_t)V, 0);
    if (st != PLDR_OK) {
        rc = cli_report(st);
        goto done;
    }
    size_t rows = (size_t)n;
    if (pldr_model_config(model)->arch == PLDR_ARCH_SEQUENCE_CLASSIFICATION) {
        /* a sequence classifier's result is one row, the last non-pad token's */
        memmove(logits, logits + (size_t)pldr_sequence_row(model, ids, n) * (size_t)V, (size_t)V * sizeof *logits);
        rows = 1;
    }
    rc = npy_write_f32(out, logits, rows, (size_t)V);
done:
    free(logits);
    free(ids);
    pldr_context_free(ctx);
    pldr_model_free(model);
    return rc;
}
