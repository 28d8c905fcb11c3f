/* pldr serve: an OpenAI-compatible HTTP server over the library.
 *
 * Three parts, top to bottom:
 *  - http.c: the libmicrohttpd daemon (limits, routing, authentication, the
 *    OpenAI error shape, streaming, the request log, /health and /metrics);
 *  - api.c: the JSON of the endpoints (request validation, responses and
 *    server-sent-event chunks);
 *  - engine.c: the replicas (one model per device), their slots and queue,
 *    and the worker thread of each replica that alone touches its model.
 * HTTP threads parse, validate, enqueue and stream; they never touch a model. */
#ifndef PLDR_SERVER_H
#define PLDR_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "pldr.h"

typedef struct server_options {
    const char *model_dir;
    const char *host;
    int port; /* 0: any free port (printed in the ready line) */
    int parallel; /* slots (sequences decoded together) per replica */
    int prefill_batch; /* prompt tokens prefilled per step (one prompt at least) */
    int n_ctx;    /* 0: the model's max_position_embeddings */
    const char *const *devices; /* one replica per spec; NULL: the default device */
    int n_devices;
    pldr_dtype dtype;
    pldr_cache_mode cache;
    const char *gcache;  /* G-cache file for every request, or NULL */
    int gcache_first;    /* the first prompt's G-cache serves every later one */
    const char *api_key; /* NULL: no authentication */
    int max_queue;       /* sequences waiting for a slot, over all replicas */
    double timeout_s;    /* idle connection timeout and shutdown grace */
    size_t max_body;     /* bytes */
    unsigned max_connections, max_per_ip;
} server_options;

/* Runs the server until SIGTERM or SIGINT; returns an exit code. */
int server_run(const server_options *o);

#endif
