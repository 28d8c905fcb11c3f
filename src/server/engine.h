/* The replicas of pldr serve: one model per device, each with its slots (the
 * sequences it decodes together), a worker thread that alone touches the
 * model, and a queue shared by all replicas' admission. */
#ifndef PLDR_SERVER_ENGINE_H
#define PLDR_SERVER_ENGINE_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#include "api.h"
#include "pldr.h"
#include "server.h"

/* Why a sequence ended: an end token or a stop string, max_tokens or the
 * context, or cancelled (the client went away, the server stops, a failure). */
typedef enum seq_finish { SEQ_RUNNING = 0, SEQ_STOP, SEQ_LENGTH, SEQ_CANCELLED } seq_finish;

/* One sequence's output (a choice of a prompt), written by a worker and read
 * by the HTTP thread, both under job.mu. */
typedef struct seq_out {
    char *text; /* the choice's text so far (the prompt first with echo) */
    size_t len, cap;
    size_t sent; /* bytes already streamed */
    json_t *lp_tokens, *lp_logprobs, *lp_top, *lp_offsets; /* logprobs, when asked */
    size_t lp_sent;
    int done;
    seq_finish finish;
    int n_prompt, n_gen;
    int replica; /* which replica ran it, -1 before */
} seq_out;

/* One completion request: its sequences and their outputs. Shared by the
 * HTTP thread and the workers; freed when the last reference goes. */
typedef struct job {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled on every output and at the end of a sequence */
    int refs;
    int cancelled; /* the client went away or the server stops */
    completion_request req;
    int n_seq; /* req.n_prompts * req.n; sequence s is prompt s / n, choice s % n */
    seq_out *seqs;
    int n_done;
    char error[256]; /* a runtime failure of the engine ("" if none) */
    double t_submit, t_first; /* monotonic seconds; t_first: first token of any sequence */
} job;

/* Takes the request's contents (r is left zeroed). */
job *job_new(completion_request *r);
void job_release(job *j);
/* Cancels what is still running or queued. */
void job_cancel(job *j);

typedef struct engine engine;

/* Per-replica figures for /health and /metrics. */
typedef struct replica_stats {
    char device[160];
    int slots, busy, queued;
    uint64_t prompt_tokens, generated_tokens, sequences, steps;
} replica_stats;

/* Loads the tokenizer and one model per device (blocking); prints progress
 * and failures. Returns an exit code. */
int engine_new(const server_options *o, engine **out);
/* Starts the workers. */
int engine_start(engine *e);
/* Queues every sequence of j on the replicas with the most free capacity.
 * Returns 0, or -1 when the queue cannot take them (503). */
int engine_submit(engine *e, job *j);
/* Cancels every job and stops and joins the workers. */
void engine_stop(engine *e);
void engine_free(engine *e);

const pldr_tokenizer *engine_tokenizer(const engine *e);
void engine_limits(const engine *e, api_limits *lim);
const char *engine_model_name(const engine *e);
/* NULL, or the chat template named in tokenizer_config.json (for the refusal). */
const char *engine_chat_template(const engine *e);
int engine_n_replicas(const engine *e);
void engine_replica_stats(engine *e, int i, replica_stats *s);
/* Sequences running or queued over all replicas. */
int engine_in_flight(engine *e);
uint64_t engine_n_params(const engine *e);

double server_now(void);

#endif
