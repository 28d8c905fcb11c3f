/* The HTTP side of pldr serve, on libmicrohttpd in thread-per-connection
 * mode: the library enforces the limits (connections, connections per IP,
 * memory per connection, idle timeout); this file routes, authenticates,
 * collects bodies up to --max-body, answers errors in OpenAI's shape, waits
 * for or streams the engine's output, logs one line per request and keeps
 * the figures of /metrics. A client that goes away cancels its request. */
#define _GNU_SOURCE /* POLLRDHUP */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

/* How often a waiting HTTP thread looks whether its client is still there. */
#define POLL_MS 100

typedef struct status_count {
    int status;
    uint64_t count;
} status_count;

typedef struct server {
    const server_options *o;
    struct MHD_Daemon *daemon;
    engine *e; /* set once loaded */
    int ready, draining;
    time_t created;
    pthread_mutex_t mu; /* the figures below */
    status_count by_status[32];
    int n_status;
    uint64_t prompt_tokens, generated_tokens, n_requests, n_completions;
    double seconds;
    int active; /* completion requests not yet ended */
    uint64_t next_id;
} server;

/* One HTTP request. */
typedef struct request {
    server *sv;
    double t0;
    char method[16], path[160], ip[64];
    char *body;
    size_t len, cap;
    int too_large;
    int status;
    job *j; /* a completion's job, if any (a reference) */
} request;

static int flag_get(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void flag_set(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* ------------------------------------------------------------- responses */

static enum MHD_Result send_text(struct MHD_Connection *c, request *rq, int status, char *text, const char *type,
                                 const char *h1, const char *v1)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    if (h1)
        MHD_add_response_header(r, h1, v1);
    if (flag_get(&rq->sv->draining))
        MHD_add_response_header(r, "Connection", "close");
    rq->status = status;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Sends a JSON body (taking the reference). */
static enum MHD_Result send_json(struct MHD_Connection *c, request *rq, int status, json_t *body, const char *h1,
                                 const char *v1)
{
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!s)
        return MHD_NO;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return MHD_NO;
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    return send_text(c, rq, status, t, "application/json", h1, v1);
}

static enum MHD_Result send_error(struct MHD_Connection *c, request *rq, const api_error *e)
{
    const char *h = NULL, *v = NULL;
    if (e->status == 503) {
        h = "Retry-After";
        v = "1";
    } else if (e->status == 401) {
        h = "WWW-Authenticate";
        v = "Bearer";
    }
    return send_json(c, rq, e->status, api_error_json(e), h, v);
}

static enum MHD_Result fail(struct MHD_Connection *c, request *rq, int status, const char *type, const char *param,
                            const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static enum MHD_Result fail(struct MHD_Connection *c, request *rq, int status, const char *type, const char *param,
                            const char *fmt, ...)
{
    api_error e;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    api_fail(&e, status, type, param, "%s", msg);
    return send_error(c, rq, &e);
}

static const char *finish_name(seq_finish f)
{
    switch (f) {
    case SEQ_STOP: return "stop";
    case SEQ_LENGTH: return "length";
    default: return NULL;
    }
}

static json_t *finish_json(const seq_out *o)
{
    const char *f = o->done ? finish_name(o->finish) : NULL;
    return f ? json_string(f) : json_null();
}

/* usage: the prompts' tokens once each, the choices' tokens. */
static json_t *usage_json(const job *j, int *n_prompt, int *n_gen)
{
    int p = 0, g = 0;
    for (int i = 0; i < j->req.n_prompts; i++)
        p += j->req.n_prompt_ids[i];
    for (int s = 0; s < j->n_seq; s++)
        g += j->seqs[s].n_gen;
    if (n_prompt)
        *n_prompt = p;
    if (n_gen)
        *n_gen = g;
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", p, "completion_tokens", g, "total_tokens", p + g);
}

/* ------------------------------------------------------------- figures */

static void count_status(server *sv, int status, double seconds)
{
    pthread_mutex_lock(&sv->mu);
    int i;
    for (i = 0; i < sv->n_status; i++)
        if (sv->by_status[i].status == status)
            break;
    if (i == sv->n_status && i < (int)(sizeof sv->by_status / sizeof sv->by_status[0])) {
        sv->by_status[i].status = status;
        sv->by_status[i].count = 0;
        sv->n_status++;
    }
    if (i < sv->n_status)
        sv->by_status[i].count++;
    sv->n_requests++;
    sv->seconds += seconds;
    pthread_mutex_unlock(&sv->mu);
}

static void prom_label(char *out, size_t cap, const char *s)
{
    size_t k = 0;
    for (; *s && k + 3 < cap; s++) {
        if (*s == '"' || *s == '\\') {
            out[k++] = '\\';
            out[k++] = *s;
        } else if (*s == '\n') {
            out[k++] = '\\';
            out[k++] = 'n';
        } else {
            out[k++] = *s;
        }
    }
    out[k] = '\0';
}

static enum MHD_Result handle_metrics(struct MHD_Connection *c, request *rq)
{
    server *sv = rq->sv;
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f)
        return MHD_NO;
    pthread_mutex_lock(&sv->mu);
    fprintf(f, "# HELP pldr_requests_total HTTP requests answered, by status.\n"
               "# TYPE pldr_requests_total counter\n");
    for (int i = 0; i < sv->n_status; i++)
        fprintf(f, "pldr_requests_total{status=\"%d\"} %llu\n", sv->by_status[i].status,
                (unsigned long long)sv->by_status[i].count);
    fprintf(f,
            "# HELP pldr_request_seconds_total Seconds spent answering HTTP requests.\n"
            "# TYPE pldr_request_seconds_total counter\n"
            "pldr_request_seconds_total %.6f\n"
            "# HELP pldr_prompt_tokens_total Prompt tokens of finished completion requests.\n"
            "# TYPE pldr_prompt_tokens_total counter\n"
            "pldr_prompt_tokens_total %llu\n"
            "# HELP pldr_generated_tokens_total Tokens generated for finished completion requests.\n"
            "# TYPE pldr_generated_tokens_total counter\n"
            "pldr_generated_tokens_total %llu\n"
            "# HELP pldr_completions_active Completion requests being answered.\n"
            "# TYPE pldr_completions_active gauge\n"
            "pldr_completions_active %d\n",
            sv->seconds, (unsigned long long)sv->prompt_tokens, (unsigned long long)sv->generated_tokens,
            sv->active);
    pthread_mutex_unlock(&sv->mu);
    engine *e = flag_get(&sv->ready) ? sv->e : NULL;
    int n = e ? engine_n_replicas(e) : 0;
    replica_stats *st = calloc((size_t)(n ? n : 1), sizeof *st);
    int queued = 0;
    for (int i = 0; st && i < n; i++) {
        engine_replica_stats(e, i, &st[i]);
        int w = st[i].queued - (st[i].slots - st[i].busy);
        queued += w > 0 ? w : 0;
    }
    fprintf(f, "# HELP pldr_queue_length Sequences waiting for a free slot.\n"
               "# TYPE pldr_queue_length gauge\n"
               "pldr_queue_length %d\n",
            queued);
    static const struct {
        const char *name, *type, *help;
    } per[] = {
        {"pldr_slots", "gauge", "Slots (sequences decoded together) of each device's replica."},
        {"pldr_slots_busy", "gauge", "Busy slots of each device's replica."},
        {"pldr_device_prompt_tokens_total", "counter", "Prompt tokens processed on each device."},
        {"pldr_device_generated_tokens_total", "counter", "Tokens generated on each device."},
        {"pldr_device_sequences_total", "counter", "Sequences started on each device."},
        {"pldr_device_steps_total", "counter",
         "Batched steps on each device (the busy slots advanced together: a token each, or a prompt's prefill)."},
    };
    for (size_t k = 0; st && k < sizeof per / sizeof per[0]; k++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", per[k].name, per[k].help, per[k].name, per[k].type);
        for (int i = 0; i < n; i++) {
            char dev[400];
            prom_label(dev, sizeof dev, st[i].device);
            unsigned long long v = k == 0   ? (unsigned long long)st[i].slots
                                   : k == 1 ? (unsigned long long)st[i].busy
                                   : k == 2 ? st[i].prompt_tokens
                                   : k == 3 ? st[i].generated_tokens
                                   : k == 4 ? st[i].sequences
                                            : st[i].steps;
            fprintf(f, "%s{replica=\"%d\",device=\"%s\"} %llu\n", per[k].name, i, dev, v);
        }
    }
    free(st);
    if (fclose(f) != 0) {
        free(buf);
        return MHD_NO;
    }
    return send_text(c, rq, 200, buf, "text/plain; version=0.0.4; charset=utf-8", NULL, NULL);
}

static enum MHD_Result handle_health(struct MHD_Connection *c, request *rq)
{
    server *sv = rq->sv;
    if (flag_get(&sv->draining))
        return send_json(c, rq, 503, json_pack("{s:s}", "status", "shutting down"), "Retry-After", "1");
    if (!flag_get(&sv->ready))
        return send_json(c, rq, 503, json_pack("{s:s}", "status", "loading model"), "Retry-After", "1");
    int busy = 0, slots = 0, queued = 0;
    for (int i = 0; i < engine_n_replicas(sv->e); i++) {
        replica_stats st;
        engine_replica_stats(sv->e, i, &st);
        busy += st.busy;
        slots += st.slots;
        int w = st.queued - (st.slots - st.busy);
        queued += w > 0 ? w : 0;
    }
    return send_json(c, rq, 200,
                     json_pack("{s:s,s:i,s:i,s:i}", "status", "ok", "slots_idle", slots - busy, "slots_processing",
                               busy, "queued", queued),
                     NULL, NULL);
}

static enum MHD_Result handle_models(struct MHD_Connection *c, request *rq)
{
    server *sv = rq->sv;
    api_limits lim;
    engine_limits(sv->e, &lim);
    json_t *m = json_pack("{s:s,s:s,s:I,s:s,s:{s:i,s:i,s:I,s:i}}", "id", engine_model_name(sv->e), "object", "model",
                          "created", (json_int_t)sv->created, "owned_by", "pldr", "meta", "n_ctx", lim.n_ctx,
                          "n_vocab", lim.n_vocab, "n_params", (json_int_t)engine_n_params(sv->e), "replicas",
                          engine_n_replicas(sv->e));
    return send_json(c, rq, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m), NULL, NULL);
}

static enum MHD_Result handle_tokenize(struct MHD_Connection *c, request *rq)
{
    api_error e;
    json_t *root = api_parse_body(rq->body, rq->len, &e);
    if (!root)
        return send_error(c, rq, &e);
    json_t *content = json_object_get(root, "content");
    json_t *wp = json_object_get(root, "with_pieces");
    if (!json_is_string(content) || (wp && !json_is_boolean(wp))) {
        json_decref(root);
        return fail(c, rq, 400, "invalid_request_error", json_is_string(content) ? "with_pieces" : "content",
                    json_is_string(content) ? "'with_pieces' must be true or false"
                                            : "'content' (the text to tokenize) must be a string");
    }
    const pldr_tokenizer *tok = engine_tokenizer(rq->sv->e);
    int32_t *ids;
    size_t n;
    if (pldr_tokenize(tok, json_string_value(content), json_string_length(content), &ids, &n) != PLDR_OK) {
        json_decref(root);
        return fail(c, rq, 503, "server_error", NULL, "out of host memory");
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (json_is_true(wp)) {
            json_t *pv = api_piece_string(tok, ids[i]);
            json_array_append_new(arr, json_pack("{s:i,s:o*}", "id", ids[i], "piece", pv));
        } else {
            json_array_append_new(arr, json_integer(ids[i]));
        }
    }
    free(ids);
    json_decref(root);
    return send_json(c, rq, 200, json_pack("{s:o}", "tokens", arr), NULL, NULL);
}

static enum MHD_Result handle_detokenize(struct MHD_Connection *c, request *rq)
{
    api_error e;
    json_t *root = api_parse_body(rq->body, rq->len, &e);
    if (!root)
        return send_error(c, rq, &e);
    api_limits lim;
    engine_limits(rq->sv->e, &lim);
    json_t *tokens = json_object_get(root, "tokens");
    size_t n = json_array_size(tokens);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    int ok = json_is_array(tokens) && ids;
    for (size_t i = 0; ok && i < n; i++) {
        json_t *t = json_array_get(tokens, i);
        json_int_t id = json_is_integer(t) ? json_integer_value(t) : -1;
        ok = id >= 0 && id < lim.n_vocab;
        if (ok)
            ids[i] = (int32_t)id;
    }
    json_decref(root);
    if (!ok) {
        free(ids);
        return fail(c, rq, 400, "invalid_request_error", "tokens",
                    "'tokens' must be an array of token ids, integers in [0, %d)", lim.n_vocab);
    }
    char *text;
    size_t len;
    pldr_status st = pldr_detokenize(lim.tok, ids, n, &text, &len);
    free(ids);
    if (st != PLDR_OK)
        return fail(c, rq, 503, "server_error", NULL, "out of host memory");
    json_t *v = api_string(text, len);
    free(text);
    return send_json(c, rq, 200, json_pack("{s:o*}", "content", v), NULL, NULL);
}

static enum MHD_Result handle_chat(struct MHD_Connection *c, request *rq)
{
    const char *tmpl = engine_chat_template(rq->sv->e);
    if (tmpl)
        return fail(c, rq, 400, "not_supported_error", NULL,
                    "this server does not apply chat templates (the model's tokenizer_config.json names: %.200s); "
                    "format the conversation as text and send it to /v1/completions",
                    tmpl);
    return fail(c, rq, 400, "not_supported_error", NULL,
                "this model is a base model without a chat template (no chat_template in tokenizer_config.json); "
                "send text to complete to /v1/completions");
}

/* ----------------------------------------------------------- completions */

/* Whether the client closed its end (it will not read an answer). */
static int client_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return 0;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static void timed_wait(job *j, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

/* The logprobs of a choice, entries [from, to). */
static json_t *logprobs_json(const seq_out *o, size_t from, size_t to)
{
    if (!o->lp_tokens)
        return json_null();
    json_t *lp = json_object();
    const char *keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    json_t *src[] = {o->lp_tokens, o->lp_logprobs, o->lp_top, o->lp_offsets};
    for (int k = 0; k < 4; k++) {
        json_t *a = json_array();
        for (size_t i = from; i < to; i++)
            json_array_append(a, json_array_get(src[k], i));
        json_object_set_new(lp, keys[k], a);
    }
    return lp;
}

typedef struct stream {
    server *sv;
    job *j;
    struct MHD_Connection *c;
    char id[48], model[256];
    time_t created;
    char *buf;
    size_t len, off, cap;
    int *final_sent;
    int ended;
    double last_out; /* when the last bytes were handed to the library */
} stream;

static int stream_put(stream *st, const char *s, size_t n)
{
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + n)
            cap *= 2;
        char *b = realloc(st->buf, cap);
        if (!b)
            return -1;
        st->buf = b;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, s, n);
    st->len += n;
    return 0;
}

static int stream_event(stream *st, json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s)
        return -1;
    int rc = stream_put(st, "data: ", 6) || stream_put(st, s, strlen(s)) || stream_put(st, "\n\n", 2);
    free(s);
    return rc ? -1 : 0;
}

/* Formats what the job has produced since the last call; call under j->mu.
 * Returns 1 if something was added. */
static int stream_collect(stream *st)
{
    job *j = st->j;
    int added = 0;
    for (int s = 0; s < j->n_seq; s++) {
        seq_out *o = &j->seqs[s];
        size_t n_lp = o->lp_tokens ? json_array_size(o->lp_tokens) : 0;
        int fresh = o->len > o->sent || n_lp > o->lp_sent;
        if (!fresh && !(o->done && !st->final_sent[s]))
            continue;
        json_t *choice = json_pack("{s:o*,s:i,s:o*,s:o*}", "text", api_string(o->text + o->sent, o->len - o->sent),
                                   "index", s, "logprobs", logprobs_json(o, o->lp_sent, n_lp), "finish_reason",
                                   finish_json(o));
        o->sent = o->len;
        o->lp_sent = n_lp;
        if (o->done)
            st->final_sent[s] = 1;
        stream_event(st, json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", st->id, "object", "text_completion", "created",
                                   (json_int_t)st->created, "model", st->model, "choices", choice));
        added = 1;
    }
    if (j->n_done == j->n_seq && !st->ended) {
        if (j->error[0]) {
            api_error e;
            api_fail(&e, 500, "server_error", NULL, "%s", j->error);
            stream_event(st, api_error_json(&e));
        }
        if (j->req.include_usage)
            stream_event(st, json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", st->id, "object", "text_completion",
                                       "created", (json_int_t)st->created, "model", st->model, "choices", "usage",
                                       usage_json(j, NULL, NULL)));
        stream_put(st, "data: [DONE]\n\n", 14);
        st->ended = 1;
        added = 1;
    }
    return added;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    stream *st = cls;
    while (st->off == st->len) {
        if (st->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        st->off = st->len = 0;
        pthread_mutex_lock(&st->j->mu);
        int got = stream_collect(st);
        if (!got)
            timed_wait(st->j, POLL_MS);
        pthread_mutex_unlock(&st->j->mu);
        if (!got && client_gone(st->c)) {
            job_cancel(st->j);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        /* The library closes a connection idle for --timeout, also while a
         * request waits for a slot; an SSE comment keeps it alive. */
        if (!got && server_now() - st->last_out > st->sv->o->timeout_s / 3)
            stream_put(st, ": waiting\n\n", 11);
    }
    st->last_out = server_now();
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(out, st->buf + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    stream *st = cls;
    job_cancel(st->j); /* no effect once it has ended */
    job_release(st->j);
    free(st->final_sent);
    free(st->buf);
    free(st);
}

static enum MHD_Result handle_completion(struct MHD_Connection *c, request *rq)
{
    server *sv = rq->sv;
    api_limits lim;
    engine_limits(sv->e, &lim);
    completion_request req;
    api_error e;
    if (api_parse_completion(rq->body, rq->len, &lim, &req, &e) != 0)
        return send_error(c, rq, &e);
    job *j = job_new(&req);
    if (!j) {
        api_completion_request_free(&req);
        return fail(c, rq, 503, "server_error", NULL, "out of host memory");
    }
    if (flag_get(&sv->draining) || engine_submit(sv->e, j) != 0) {
        job_release(j);
        return fail(c, rq, 503, "unavailable_error", NULL,
                    flag_get(&sv->draining) ? "the server is shutting down"
                                            : "the server is busy: every slot is taken and the queue is full");
    }
    rq->j = j; /* the request's reference; released when it ends */
    pthread_mutex_lock(&sv->mu);
    sv->active++;
    uint64_t idn = ++sv->next_id;
    pthread_mutex_unlock(&sv->mu);
    char id[48];
    snprintf(id, sizeof id, "cmpl-%08llx%08llx", (unsigned long long)sv->created & 0xffffffffull,
             (unsigned long long)idn);
    const time_t created = time(NULL);

    if (j->req.stream) {
        stream *st = calloc(1, sizeof *st);
        if (!st || !(st->final_sent = calloc((size_t)j->n_seq, sizeof(int)))) {
            free(st);
            job_cancel(j);
            return fail(c, rq, 503, "server_error", NULL, "out of host memory");
        }
        st->sv = sv;
        pthread_mutex_lock(&j->mu);
        j->refs++;
        pthread_mutex_unlock(&j->mu);
        st->j = j;
        st->c = c;
        snprintf(st->id, sizeof st->id, "%s", id);
        snprintf(st->model, sizeof st->model, "%s", engine_model_name(sv->e));
        st->created = created;
        st->last_out = server_now();
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, st, stream_free);
        if (!r) {
            stream_free(st);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        rq->status = 200;
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }

    pthread_mutex_lock(&j->mu);
    while (j->n_done < j->n_seq) {
        timed_wait(j, POLL_MS);
        if (!j->cancelled) {
            pthread_mutex_unlock(&j->mu);
            int gone = client_gone(c);
            pthread_mutex_lock(&j->mu);
            if (gone) {
                job_cancel(j);
                pthread_mutex_unlock(&j->mu);
                return MHD_NO;
            }
        }
    }
    if (j->error[0]) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", j->error);
        pthread_mutex_unlock(&j->mu);
        return fail(c, rq, 500, "server_error", NULL, "%s", msg);
    }
    json_t *choices = json_array();
    for (int s = 0; s < j->n_seq; s++) {
        const seq_out *o = &j->seqs[s];
        json_array_append_new(choices, json_pack("{s:o*,s:i,s:o*,s:o*}", "text", api_string(o->text ? o->text : "", o->len),
                                                 "index", s, "logprobs",
                                                 logprobs_json(o, 0, o->lp_tokens ? json_array_size(o->lp_tokens) : 0),
                                                 "finish_reason", finish_json(o)));
    }
    json_t *usage = usage_json(j, NULL, NULL);
    pthread_mutex_unlock(&j->mu);
    return send_json(c, rq, 200,
                     json_pack("{s:s,s:s,s:I,s:s,s:o,s:o}", "id", id, "object", "text_completion", "created",
                               (json_int_t)created, "model", engine_model_name(sv->e), "choices", choices, "usage",
                               usage),
                     NULL, NULL);
}

/* ---------------------------------------------------------------- routing */

typedef enum route_id { R_NONE, R_HEALTH, R_METRICS, R_MODELS, R_COMPLETIONS, R_CHAT, R_TOKENIZE, R_DETOKENIZE } route_id;

static const struct {
    const char *path;
    const char *method;
    route_id id;
} routes[] = {
    {"/health", "GET", R_HEALTH},
    {"/metrics", "GET", R_METRICS},
    {"/v1/models", "GET", R_MODELS},
    {"/models", "GET", R_MODELS},
    {"/v1/completions", "POST", R_COMPLETIONS},
    {"/completions", "POST", R_COMPLETIONS},
    {"/v1/chat/completions", "POST", R_CHAT},
    {"/chat/completions", "POST", R_CHAT},
    {"/tokenize", "POST", R_TOKENIZE},
    {"/detokenize", "POST", R_DETOKENIZE},
};

/* Constant-time comparison of the Bearer token with the key. */
static int authorized(struct MHD_Connection *c, const char *key)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    size_t n = strlen(h), k = strlen(key);
    unsigned diff = (unsigned)(n ^ k);
    for (size_t i = 0; i < k; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < n ? h[i] : 0);
    return diff == 0;
}

static enum MHD_Result dispatch(struct MHD_Connection *c, request *rq)
{
    server *sv = rq->sv;
    route_id id = R_NONE;
    const char *allow = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(rq->path, routes[i].path) == 0) {
            allow = routes[i].method;
            if (strcmp(rq->method, routes[i].method) == 0)
                id = routes[i].id;
        }
    if (id != R_HEALTH && sv->o->api_key && !authorized(c, sv->o->api_key))
        return fail(c, rq, 401, "authentication_error", NULL, "a valid API key is needed (Authorization: Bearer KEY)");
    if (!allow)
        return fail(c, rq, 404, "not_found_error", NULL, "no such endpoint: %.100s", rq->path);
    if (id == R_NONE) {
        api_error e;
        api_fail(&e, 405, "invalid_request_error", NULL, "%.100s takes %s, not %.16s", rq->path, allow, rq->method);
        return send_json(c, rq, 405, api_error_json(&e), "Allow", allow);
    }
    if (rq->too_large)
        return fail(c, rq, 413, "invalid_request_error", NULL, "the body is larger than the limit of %zu bytes",
                    sv->o->max_body);
    if (id == R_HEALTH)
        return handle_health(c, rq);
    if (id == R_METRICS)
        return handle_metrics(c, rq);
    if (!flag_get(&sv->ready))
        return fail(c, rq, 503, "unavailable_error", NULL, "the model is loading");
    switch (id) {
    case R_MODELS: return handle_models(c, rq);
    case R_COMPLETIONS: return handle_completion(c, rq);
    case R_CHAT: return handle_chat(c, rq);
    case R_TOKENIZE: return handle_tokenize(c, rq);
    case R_DETOKENIZE: return handle_detokenize(c, rq);
    default: return MHD_NO;
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    server *sv = cls;
    request *rq = *con_cls;
    if (!rq) {
        if (!(rq = calloc(1, sizeof *rq)))
            return MHD_NO;
        *con_cls = rq;
        rq->sv = sv;
        rq->t0 = server_now();
        snprintf(rq->method, sizeof rq->method, "%s", method);
        snprintf(rq->path, sizeof rq->path, "%s", url);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        const struct sockaddr *sa = ci ? ci->client_addr : NULL;
        if (sa && sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, rq->ip, sizeof rq->ip);
        else if (sa && sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, rq->ip, sizeof rq->ip);
        else
            snprintf(rq->ip, sizeof rq->ip, "-");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > sv->o->max_body) {
            rq->too_large = 1;
            return fail(c, rq, 413, "invalid_request_error", NULL, "the body is larger than the limit of %zu bytes",
                        sv->o->max_body);
        }
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (!rq->too_large) {
            if (rq->len + *upload_size > sv->o->max_body) {
                rq->too_large = 1;
                free(rq->body);
                rq->body = NULL;
                rq->len = rq->cap = 0;
            } else {
                if (rq->len + *upload_size + 1 > rq->cap) {
                    size_t cap = rq->cap ? rq->cap : 4096;
                    while (cap < rq->len + *upload_size + 1)
                        cap *= 2;
                    char *b = realloc(rq->body, cap);
                    if (!b)
                        return MHD_NO;
                    rq->body = b;
                    rq->cap = cap;
                }
                memcpy(rq->body + rq->len, upload, *upload_size);
                rq->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rq->status) /* answered already (413 at the headers) */
        return MHD_YES;
    if (!rq->body)
        rq->body = strdup("");
    return dispatch(c, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)c;
    server *sv = cls;
    request *rq = *con_cls;
    if (!rq)
        return;
    *con_cls = NULL;
    double dt = server_now() - rq->t0;
    int n_prompt = 0, n_gen = 0, gone = 0;
    if (rq->j) {
        job *j = rq->j;
        pthread_mutex_lock(&j->mu);
        json_decref(usage_json(j, &n_prompt, &n_gen));
        gone = j->n_done < j->n_seq || j->cancelled;
        pthread_mutex_unlock(&j->mu);
        job_cancel(j);
        job_release(j);
        pthread_mutex_lock(&sv->mu);
        sv->active--;
        sv->n_completions++;
        sv->prompt_tokens += (uint64_t)n_prompt;
        sv->generated_tokens += (uint64_t)n_gen;
        pthread_mutex_unlock(&sv->mu);
    }
    /* no answer sent: the client went away first (nginx's 499) or the connection broke */
    int status = rq->status ? rq->status : 499;
    count_status(sv, status, dt);
    fprintf(stderr, "pldr serve: %s %s %s %d prompt=%d generated=%d %.3f s%s\n", rq->ip, rq->method, rq->path,
            status, n_prompt, n_gen, dt,
            toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !gone ? ""
            : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED    ? " (timed out)"
                                                               : " (client gone, cancelled)");
    free(rq->body);
    free(rq);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls, (void)fmt, (void)ap; /* the library's own complaints about bad clients are not ours to print */
}

/* ----------------------------------------------------------------- main */

static int listen_addr(const char *host, int port, struct sockaddr_storage *ss, int *v6)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    if (*v6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

int server_run(const server_options *o)
{
    static server sv;
    memset(&sv, 0, sizeof sv);
    sv.o = o;
    sv.created = time(NULL);
    pthread_mutex_init(&sv.mu, NULL);
    json_object_seed(0);

    /* signals go to sigwait below only */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_storage ss;
    int v6 = 0;
    if (listen_addr(o->host, o->port, &ss, &v6) != 0) {
        fprintf(stderr, "pldr serve: --host %s: not an address this machine can listen on\n", o->host);
        return 2;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    sv.daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, &sv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, o->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, o->max_per_ip,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)ceil(o->timeout_s), MHD_OPTION_THREAD_STACK_SIZE, (size_t)1 << 20, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, &sv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!sv.daemon) {
        fprintf(stderr, "pldr serve: cannot listen on %s port %d: %s\n", o->host, o->port, strerror(errno));
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(sv.daemon, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : o->port;
    char addr[300];
    snprintf(addr, sizeof addr, v6 ? "http://[%s]:%d" : "http://%s:%d", o->host, port);
    fprintf(stderr, "pldr serve: loading %s; %s/health answers 503 until it is ready\n", o->model_dir, addr);

    engine *e = NULL;
    int rc = engine_new(o, &e);
    if (rc == 0)
        rc = engine_start(e);
    if (rc != 0) {
        MHD_stop_daemon(sv.daemon);
        engine_free(e);
        return rc;
    }
    sv.e = e;
    flag_set(&sv.ready, 1);
    api_limits lim;
    engine_limits(e, &lim);
    printf("pldr serve: listening on %s (model %s, %d replica%s x %d slots, context %d tokens)\n", addr,
           engine_model_name(e), engine_n_replicas(e), engine_n_replicas(e) > 1 ? "s" : "", o->parallel,
           lim.n_ctx);
    fflush(stdout);
    for (int i = 0; i < engine_n_replicas(e); i++) {
        replica_stats st;
        engine_replica_stats(e, i, &st);
        fprintf(stderr, "pldr serve: replica %d on %s\n", i, st.device);
    }

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "pldr serve: %s: finishing the running requests (at most %g s)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", o->timeout_s);
    flag_set(&sv.draining, 1);
    MHD_socket ls = MHD_quiesce_daemon(sv.daemon);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    const double t_end = server_now() + o->timeout_s;
    for (;;) {
        pthread_mutex_lock(&sv.mu);
        int active = sv.active;
        pthread_mutex_unlock(&sv.mu);
        if (active == 0 || server_now() >= t_end)
            break;
        usleep(20000);
    }
    engine_stop(e); /* cancels what is left */
    for (int i = 0; i < 100; i++) {
        pthread_mutex_lock(&sv.mu);
        int active = sv.active;
        pthread_mutex_unlock(&sv.mu);
        if (active == 0)
            break;
        usleep(20000);
    }
    MHD_stop_daemon(sv.daemon);
    engine_free(e);
    pthread_mutex_destroy(&sv.mu);
    fprintf(stderr, "pldr serve: stopped\n");
    return 0;
}
