/* pldr gcache export: the G-cache of a prompt as a safetensors file, and
 * the helpers that other commands use to read prompts and G-cache files. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: pldr gcache export [-m DIR] (-p PROMPT | -f FILE | --ids LIST) -o FILE\n"
    "                          [--device SPEC] [--dtype T]\n"
    "\n"
    "Runs the prompt through a context with KV- and G-cache (one prefill forward)\n"
    "and writes its G-cache as a safetensors file: tensors A, A_LM and G_LM, each\n"
    "float32 [L, H, dk, dk] (A is the metric learner's output, A_LM =\n"
    "iSwiGLU(W A + b) + 1e-9, G_LM = a A_LM^pw + ba), with __metadata__ holding the\n"
    "model fingerprint and the prompt's token count. Load it with --g-cache FILE in\n"
    "generate, logits, perplexity and bench, or report on it with\n"
    "'pldr deductive --g-cache FILE'.\n"
    "\n"
    "  -m, --model DIR   model directory (default: $PLDR_MODEL or the bundled model)\n"
    "  -p, --prompt TEXT the prompt\n"
    "  -f, --file FILE   read the prompt from FILE ('-' for stdin)\n"
    "      --ids LIST    the prompt as comma-separated token ids\n"
    "  -o, --output FILE the safetensors file to write (atomically: an existing file is\n"
    "                    replaced only on success)\n"
    "      --device SPEC OpenCL device: index, platform:device, type (cpu, gpu,\n"
    "                    accelerator) or name substring\n"
    "      --dtype T     weight storage on the device: f32 (default), f16, bf16, q8_0, q4_0\n";

int cli_apply_gcache(pldr_context *ctx, const pldr_model *model, const char *path)
{
    pldr_status st = pldr_context_load_gcache(ctx, model, path);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

int cli_prompt_ids(const char *cmd, const char *model_dir, const char *prompt, const char *file, long n_ctx,
                   int32_t **ids, size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    char *buf = NULL;
    size_t len = prompt ? strlen(prompt) : 0;
    int rc = EXIT_OK;
    const size_t limit = n_ctx < 0 ? CLI_TEXT_LIMIT : cli_prompt_limit(model_dir, n_ctx);
    if (file && (rc = cli_read_text(file, limit, &buf, &len)) != EXIT_OK)
        return rc;
    char *path = NULL;
    pldr_tokenizer *tok = NULL;
    pldr_status st = PLDR_OK;
    if (!(path = malloc(strlen(model_dir) + sizeof "/tokenizer.model")))
        st = PLDR_ERR_HOST_MEMORY;
    else
        sprintf(path, "%s/tokenizer.model", model_dir);
    if (st == PLDR_OK)
        st = pldr_tokenizer_load(path, &tok);
    if (st == PLDR_OK)
        st = cli_tokenize_prompt(model_dir, tok, file ? buf : prompt, len, ids, n_ids);
    if (st != PLDR_OK)
        rc = cli_report(st);
    else if (*n_ids == 0)
        rc = file ? cli_usage_error(cmd, "%s is empty after tokenization", strcmp(file, "-") == 0 ? "standard input" : file)
                  : cli_usage_error(cmd, "the prompt is empty after tokenization");
    if (rc != EXIT_OK) {
        free(*ids);
        *ids = NULL;
        *n_ids = 0;
    }
    pldr_tokenizer_free(tok);
    free(path);
    free(buf);
    return rc;
}

/* Loads the model, runs the prefill and writes the file. */
static int export_gcache(const char *model_dir, const char *device, pldr_dtype dtype, const int32_t *ids, size_t n,
                         const char *out)
{
    pldr_model *model = NULL;
    pldr_context *ctx = NULL;
    pldr_gcache g;
    memset(&g, 0, sizeof g);
    int rc = cli_load_model(model_dir, device, dtype, &model);
    if (rc != EXIT_OK)
        return rc;
    const int max_pos = pldr_model_config(model)->max_position;
    if (n > (size_t)max_pos) {
        fprintf(stderr, "pldr: the prompt is %zu tokens, more than max_position_embeddings (%d)\n", n, max_pos);
        pldr_model_free(model);
        return EXIT_CONTEXT;
    }
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = PLDR_CACHE_KVG;
    pldr_status st = pldr_context_new(model, &cp, &ctx);
    if (st == PLDR_OK)
        st = pldr_eval(ctx, ids, (int)n, NULL, 0);
    if (st == PLDR_OK)
        st = pldr_gcache_from_context(ctx, model, &g);
    if (st == PLDR_OK)
        st = pldr_gcache_write(out, &g, pldr_model_fingerprint(model), (int)n);
    rc = st == PLDR_OK ? EXIT_OK : cli_report(st);
    pldr_gcache_free(&g);
    pldr_context_free(ctx);
    pldr_model_free(model);
    return rc;
}

int cmd_gcache(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (strcmp(argv[1], "export") != 0)
        return cli_usage_error("gcache", "unknown subcommand '%s' (the only one is 'export')", argv[1]);
    enum { O_IDS = 256, O_DEVICE, O_DTYPE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},    {"ids", required_argument, 0, O_IDS},
        {"output", required_argument, 0, 'o'},  {"device", required_argument, 0, O_DEVICE},
        {"dtype", required_argument, 0, O_DTYPE}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *prompt = NULL, *file = NULL, *ids_arg = NULL, *out = NULL, *device = NULL;
    pldr_dtype dtype = PLDR_DTYPE_F32;
    opterr = 0;
    optind = 1;
    int c;
    argc--, argv++; /* getopt sees "export" as the program name */
    while ((c = getopt_long(argc, argv, ":m:p:f:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case 'o': out = optarg; break;
        case O_IDS: ids_arg = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &dtype))
                return cli_usage_error("gcache", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("gcache", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("gcache", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("gcache", "unexpected argument '%s'", argv[optind]);
    if (!!prompt + !!file + !!ids_arg != 1)
        return cli_usage_error("gcache", "give the prompt with exactly one of -p TEXT, -f FILE or --ids LIST");
    if (!out)
        return cli_usage_error("gcache", "-o FILE is required");
    if (!model_dir)
        model_dir = cli_default_model_dir();
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = cli_check_output(out);
    if (rc != EXIT_OK)
        return rc;
    if (ids_arg) {
        int ni;
        if (cli_parse_ids(ids_arg, &ids, &ni))
            return cli_usage_error("gcache", "--ids must be comma-separated non-negative integers");
        n = (size_t)ni;
    } else if ((rc = cli_prompt_ids("gcache", model_dir, prompt, file, 0, &ids, &n)) != EXIT_OK) {
        return rc;
    }
    rc = export_gcache(model_dir, device, dtype, ids, n, out);
    free(ids);
    return rc;
}
