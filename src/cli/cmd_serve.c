/* pldr serve: the command line of the OpenAI-compatible HTTP server
 * (src/server/). */
#include "config.h"

#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "server/server.h"

static const char help[] =
    "usage: pldr serve [-m DIR] [--host ADDR] [--port N] [--parallel P] [--ctx N]\n"
    "                  [--prefill-batch N]\n"
    "                  [--device SPEC[,SPEC...]|all] [--dtype T] [--cache kv|kvg]\n"
    "                  [--g-cache FILE] [--api-key KEY | --api-key-file FILE]\n"
    "                  [--max-queue Q] [--timeout S] [--max-body BYTES]\n"
    "\n"
    "Serves the model over HTTP with OpenAI's API: POST /v1/completions (streaming with\n"
    "\"stream\": true), GET /v1/models, POST /tokenize and /detokenize, GET /health\n"
    "(503 while loading, then 200 with the idle and busy slots) and GET /metrics\n"
    "(Prometheus). /v1/chat/completions answers 400: the models are base models. Each\n"
    "device runs a replica of the model with P slots; a request goes to the replica with\n"
    "the most free slots, waits in a queue when every slot is busy, and is refused with\n"
    "503 and Retry-After when the queue is full. When the model is loaded, one line\n"
    "with the address goes to stdout; one line per request goes to stderr. SIGTERM or\n"
    "SIGINT stops accepting connections, lets running requests finish for at most the\n"
    "timeout, cancels the rest and exits with 0.\n"
    "\n"
    "  -m, --model DIR     model directory (default: $PLDR_MODEL or the bundled model)\n"
    "      --host ADDR     address to listen on (default 127.0.0.1; 0.0.0.0 for every\n"
    "                      IPv4 interface, :: for IPv6)\n"
    "      --port N        TCP port (default 8080; 0 picks a free one, printed when ready)\n"
    "  -P, --parallel P    slots per replica: sequences decoded together (default 4)\n"
    "      --ctx N         context of each slot in tokens (default: max_position_embeddings)\n"
    "      --prefill-batch N  prompt tokens a replica prefills per step, beside one token\n"
    "                      of each running sequence (default 256; a longer prompt goes\n"
    "                      alone): new prompts wait first come, first served, so that a\n"
    "                      burst of them holds the running sequences back for a bounded time\n"
    "      --device SPECS  one replica per device: a comma-separated list of specs\n"
    "                      (index, platform:device or name substring), or 'all' for every\n"
    "                      device (default: the default device); a device named twice\n"
    "                      holds two replicas\n"
    "      --dtype T       weight storage on the devices: f32 (default), f16, bf16,\n"
    "                      q8_0 or q4_0\n"
    "      --cache MODE    kv or kvg (default kvg)\n"
    "      --g-cache FILE  a G-cache file (see pldr gcache) used for every request; 'first':\n"
    "                      the first prompt's G-cache serves every later one (the paper's\n"
    "                      once-inferred G_LM)\n"
    "      --api-key KEY   require 'Authorization: Bearer KEY' (all but /health; else 401)\n"
    "      --api-key-file F  the same, with the key read from the first line of F\n"
    "      --max-queue Q   sequences that may wait for a slot, over all replicas (default 64)\n"
    "      --timeout S     seconds a connection may stay idle, and the time shutdown waits\n"
    "                      for running requests (default 30)\n"
    "      --max-body N    largest request body in bytes (default 1048576; else 413)\n"
    "      --max-connections N  open connections at most (default 256; half of them\n"
    "                      from one client address)\n";

/* Splits "a,b,c" into specs; "all" becomes every device. */
static int device_specs(const char *arg, char ***specs, int *n)
{
    *specs = NULL;
    *n = 0;
    if (strcmp(arg, "all") == 0) {
        pldr_device_info *devs;
        int count;
        pldr_status st = pldr_list_devices(&devs, &count);
        if (st != PLDR_OK)
            return cli_report(st);
        if (count == 0) {
            free(devs);
            fprintf(stderr, "pldr serve: --device all: no OpenCL device found\n");
            return EXIT_DEVICE;
        }
        *specs = calloc((size_t)count, sizeof **specs);
        for (int i = 0; *specs && i < count; i++) {
            char buf[32];
            snprintf(buf, sizeof buf, "%d", devs[i].index);
            (*specs)[i] = strdup(buf);
        }
        *n = count;
        free(devs);
        return *specs ? EXIT_OK : cli_report(PLDR_ERR_HOST_MEMORY);
    }
    char *copy = strdup(arg);
    int cap = 1;
    for (const char *p = arg; *p; p++)
        cap += *p == ',';
    *specs = calloc((size_t)cap, sizeof **specs);
    if (!copy || !*specs) {
        free(copy);
        return cli_report(PLDR_ERR_HOST_MEMORY);
    }
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        (*specs)[(*n)++] = strdup(t);
    free(copy);
    if (*n == 0)
        return cli_usage_error("serve", "--device needs a spec, a list of specs or 'all'");
    return EXIT_OK;
}

static char *read_key_file(const char *path)
{
    char *text;
    size_t len;
    if (cli_read_text(path, 1 << 20, &text, &len) != EXIT_OK)
        return NULL;
    char *nl = strpbrk(text, "\r\n");
    if (nl)
        *nl = '\0';
    size_t n = strlen(text);
    while (n > 0 && isspace((unsigned char)text[n - 1]))
        text[--n] = '\0';
    char *start = text;
    while (isspace((unsigned char)*start))
        start++;
    if (!*start) {
        fprintf(stderr, "pldr serve: --api-key-file %s: the first line holds no key\n", path);
        free(text);
        return NULL;
    }
    char *key = strdup(start);
    free(text);
    return key;
}

int cmd_serve(int argc, char **argv)
{
    enum { O_HOST = 256, O_PORT, O_CTX, O_DEVICE, O_DTYPE, O_CACHE, O_GCACHE, O_KEY, O_KEYFILE, O_QUEUE,
           O_TIMEOUT, O_BODY, O_CONN, O_PREFILL };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},         {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT},       {"parallel", required_argument, 0, 'P'},
        {"ctx", required_argument, 0, O_CTX},         {"device", required_argument, 0, O_DEVICE},
        {"dtype", required_argument, 0, O_DTYPE},     {"cache", required_argument, 0, O_CACHE},
        {"g-cache", required_argument, 0, O_GCACHE},  {"api-key", required_argument, 0, O_KEY},
        {"api-key-file", required_argument, 0, O_KEYFILE}, {"max-queue", required_argument, 0, O_QUEUE},
        {"timeout", required_argument, 0, O_TIMEOUT}, {"max-body", required_argument, 0, O_BODY},
        {"max-connections", required_argument, 0, O_CONN}, {"help", no_argument, 0, 'h'},
        {"prefill-batch", required_argument, 0, O_PREFILL},
        {0, 0, 0, 0},
    };
    server_options o;
    memset(&o, 0, sizeof o);
    o.host = "127.0.0.1";
    o.port = 8080;
    o.parallel = 4;
    o.prefill_batch = 256;
    o.dtype = PLDR_DTYPE_F32;
    o.cache = PLDR_CACHE_KVG;
    o.max_queue = 64;
    o.timeout_s = 30;
    o.max_body = 1 << 20;
    o.max_connections = 256;
    const char *device = NULL, *key_file = NULL;
    char *key = NULL;
    long v;
    double d;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":m:P:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case O_HOST: o.host = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_GCACHE:
            if (o.gcache || o.gcache_first)
                return cli_usage_error("serve", "--g-cache given twice: one file, or 'first'");
            if (strcmp(optarg, "first") == 0)
                o.gcache_first = 1;
            else
                o.gcache = optarg;
            break;
        case O_KEY: o.api_key = optarg; break;
        case O_KEYFILE: key_file = optarg; break;
        case O_PORT:
            if (cli_parse_int(optarg, 0, 65535, &v))
                return cli_usage_error("serve", "--port must be an integer in [0, 65535], not '%s'", optarg);
            o.port = (int)v;
            break;
        case 'P':
            if (cli_parse_int(optarg, 1, 256, &v))
                return cli_usage_error("serve", "--parallel must be an integer in [1, 256], not '%s'", optarg);
            o.parallel = (int)v;
            break;
        case O_CTX:
            if (cli_parse_int(optarg, 1, 1L << 24, &v))
                return cli_usage_error("serve", "--ctx must be a positive integer, not '%s'", optarg);
            o.n_ctx = (int)v;
            break;
        case O_PREFILL:
            if (cli_parse_int(optarg, 1, 1L << 24, &v))
                return cli_usage_error("serve", "--prefill-batch must be a positive number of tokens, not '%s'",
                                       optarg);
            o.prefill_batch = (int)v;
            break;
        case O_QUEUE:
            if (cli_parse_int(optarg, 0, 1L << 20, &v))
                return cli_usage_error("serve", "--max-queue must be an integer >= 0, not '%s'", optarg);
            o.max_queue = (int)v;
            break;
        case O_TIMEOUT:
            if (cli_parse_double(optarg, 1, 86400, &d))
                return cli_usage_error("serve", "--timeout must be a number of seconds in [1, 86400], not '%s'",
                                       optarg);
            o.timeout_s = d;
            break;
        case O_BODY:
            if (cli_parse_int(optarg, 64, 1L << 30, &v))
                return cli_usage_error("serve", "--max-body must be a number of bytes in [64, 2^30], not '%s'",
                                       optarg);
            o.max_body = (size_t)v;
            break;
        case O_CONN:
            if (cli_parse_int(optarg, 1, 65536, &v))
                return cli_usage_error("serve", "--max-connections must be an integer in [1, 65536], not '%s'",
                                       optarg);
            o.max_connections = (unsigned)v;
            break;
        case O_DTYPE:
            if (cli_parse_dtype(optarg, &o.dtype))
                return cli_usage_error("serve", "--dtype must be f32, f16, bf16, q8_0 or q4_0, not '%s'", optarg);
            break;
        case O_CACHE:
            if (cli_parse_cache(optarg, &o.cache) || o.cache == PLDR_CACHE_NONE)
                return cli_usage_error("serve", "--cache must be kv or kvg, not '%s'", optarg);
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        case ':': return cli_usage_error("serve", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("serve", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error("serve", "unexpected argument '%s'", argv[optind]);
    if (o.api_key && key_file)
        return cli_usage_error("serve", "give the key with only one of --api-key or --api-key-file");
    if (o.api_key && !*o.api_key)
        return cli_usage_error("serve", "--api-key must not be empty");
    if (key_file) {
        if (!(key = read_key_file(key_file)))
            return EXIT_INPUT;
        o.api_key = key;
    }
    o.max_per_ip = o.max_connections > 1 ? o.max_connections / 2 : 1;
    if (!o.model_dir)
        o.model_dir = cli_default_model_dir();
    char **specs = NULL;
    int n_specs = 0, rc = cli_check_class("serve", o.model_dir, 1u << PLDR_ARCH_CAUSAL_LM);
    if (rc != EXIT_OK) {
        free(key);
        return rc;
    }
    if (device && (rc = device_specs(device, &specs, &n_specs)) != EXIT_OK) {
        free(key);
        return rc;
    }
    o.devices = (const char *const *)specs;
    o.n_devices = n_specs;
    rc = server_run(&o);
    for (int i = 0; i < n_specs; i++)
        free(specs[i]);
    free(specs);
    free(key);
    return rc;
}
