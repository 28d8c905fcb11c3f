/* Continuous batching over one multi-sequence context: a queue of requests,
 * at most max_active of them in the context's sequences (slots) at a time.
 * Each step prefills waiting requests into free slots and decodes every
 * active one, all in one pldr_eval_batch call; a pldr_gen per request picks
 * its tokens (sampling, stop strings, detokenization). A finished request's
 * slot is reset and taken by the next request of the queue at the next step.
 *
 * Threads: submit, cancel and stats take the mutex and may be called from
 * any thread; step is called from one thread, which alone touches the
 * context and the gens of admitted requests, and calls the callbacks. */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pldr.h"
#include "common/util.h"

typedef struct req {
    uint64_t id;
    int32_t *prompt;
    int n_prompt;
    pldr_generate_params gen;
    char **stop;       /* copies of gen.stop */
    int32_t *bias_ids; /* copies of gen.bias_* */
    float *bias_values;
    pldr_token_fn on_token;
    void (*on_done)(const pldr_generate_result *r, void *user);
    void *user;
    int cancelled;     /* under the mutex */
    pldr_gen *g;
    int needs_logits;
    int slot;          /* -1 while queued */
    int fed;           /* the prompt is in the context */
    int32_t next;      /* the token to feed at the next step */
    double t0, t_first;
    pldr_generate_result res;
    struct req *next_in_queue;
} req;

struct pldr_scheduler {
    pldr_context *ctx;
    const pldr_tokenizer *tok;
    int max_active, max_queue, V, eos;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    req *head, *tail; /* waiting, in submission order */
    int n_queued;
    req **slots;      /* [max_active] */
    int n_active;     /* under the mutex: slots in use */
    uint64_t next_id;
    pldr_batch_entry *entries;
    req **entry_req;
    float *logits;
    int32_t *greedy;
};

static void req_free(req *r)
{
    if (!r)
        return;
    pldr_gen_free(r->g);
    for (int i = 0; r->stop && i < r->gen.n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->bias_ids);
    free(r->bias_values);
    free(r->prompt);
    free(r);
}

pldr_status pldr_scheduler_new(pldr_context *ctx, const pldr_tokenizer *tok, int max_active, int max_queue,
                               pldr_scheduler **out)
{
    *out = NULL;
    pldr_clear_error();
    if (!ctx)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_scheduler_new: no context");
    if (max_active < 1 || max_active > pldr_context_n_seq(ctx))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT,
                         "%d active sequences is outside [1, %d] (the context's sequences, n_seq)", max_active,
                         pldr_context_n_seq(ctx));
    if (max_queue < 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "a queue of %d requests", max_queue);
    pldr_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    const pldr_config *cfg = pldr_model_config(pldr_context_model(ctx));
    s->ctx = ctx;
    s->tok = tok;
    s->max_active = max_active;
    s->max_queue = max_queue;
    s->V = cfg->vocab_size;
    s->eos = cfg->eos_token_id >= 0 && cfg->eos_token_id < s->V ? cfg->eos_token_id : -1;
    s->slots = calloc((size_t)max_active, sizeof *s->slots);
    s->entries = calloc((size_t)max_active, sizeof *s->entries);
    s->entry_req = calloc((size_t)max_active, sizeof *s->entry_req);
    s->logits = malloc((size_t)max_active * (size_t)s->V * sizeof *s->logits);
    s->greedy = calloc((size_t)max_active, sizeof *s->greedy);
    if (!s->slots || !s->entries || !s->entry_req || !s->logits || !s->greedy) {
        pldr_scheduler_free(s);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the scheduler");
    }
    for (int i = 0; i < max_active; i++)
        pldr_seq_reset(ctx, i);
    *out = s;
    return PLDR_OK;
}

/* The request with its own copies of everything the caller passed. */
static pldr_status req_copy(const pldr_scheduler *s, const pldr_request *in, req **out)
{
    *out = NULL;
    const int n_ctx = pldr_context_n_ctx(s->ctx);
    if (!in || !in->prompt_ids || in->n_prompt <= 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "a request without prompt tokens");
    if (in->n_prompt > n_ctx)
        return pldr_fail(PLDR_ERR_CONTEXT_FULL, "the prompt is %d tokens, more than the context of %d tokens",
                         in->n_prompt, n_ctx);
    for (int i = 0; i < in->n_prompt; i++)
        if (in->prompt_ids[i] < 0 || in->prompt_ids[i] >= s->V)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "prompt token id %d is outside the vocabulary [0, %d)",
                             (int)in->prompt_ids[i], s->V);
    req *r = calloc(1, sizeof *r);
    if (!r)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    r->slot = -1;
    r->gen = in->gen;
    r->on_token = in->on_token;
    r->on_done = in->on_done;
    r->user = in->user;
    r->n_prompt = in->n_prompt;
    r->prompt = malloc((size_t)in->n_prompt * sizeof *r->prompt);
    int bad = !r->prompt;
    if (!bad)
        memcpy(r->prompt, in->prompt_ids, (size_t)in->n_prompt * sizeof *r->prompt);
    if (!bad && in->gen.n_stop > 0 && in->gen.stop) {
        r->stop = calloc((size_t)in->gen.n_stop, sizeof *r->stop);
        bad = !r->stop;
        for (int i = 0; !bad && i < in->gen.n_stop; i++)
            bad = !(r->stop[i] = strdup(in->gen.stop[i] ? in->gen.stop[i] : ""));
        r->gen.stop = (const char *const *)r->stop;
    } else {
        r->gen.stop = NULL;
        r->gen.n_stop = 0;
    }
    if (!bad && in->gen.n_bias > 0 && in->gen.bias_ids && in->gen.bias_values) {
        r->bias_ids = malloc((size_t)in->gen.n_bias * sizeof *r->bias_ids);
        r->bias_values = malloc((size_t)in->gen.n_bias * sizeof *r->bias_values);
        bad = !r->bias_ids || !r->bias_values;
        if (!bad) {
            memcpy(r->bias_ids, in->gen.bias_ids, (size_t)in->gen.n_bias * sizeof *r->bias_ids);
            memcpy(r->bias_values, in->gen.bias_values, (size_t)in->gen.n_bias * sizeof *r->bias_values);
        }
        r->gen.bias_ids = r->bias_ids;
        r->gen.bias_values = r->bias_values;
    } else {
        r->gen.bias_ids = NULL;
        r->gen.bias_values = NULL;
        r->gen.n_bias = 0;
    }
    r->gen.out_logits = NULL;
    if (r->gen.eos_id == -1)
        r->gen.eos_id = s->eos;
    if (bad) {
        req_free(r);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the request");
    }
    pldr_status st = pldr_gen_new(s->tok, &r->gen, s->V, &r->g);
    if (st == PLDR_OK)
        st = pldr_gen_set_prompt(r->g, r->prompt, r->n_prompt);
    if (st != PLDR_OK) {
        req_free(r);
        return st;
    }
    r->needs_logits = pldr_gen_needs_logits(r->g);
    *out = r;
    return PLDR_OK;
}

pldr_status pldr_scheduler_submit(pldr_scheduler *s, const pldr_request *in, uint64_t *id)
{
    pldr_clear_error();
    req *r;
    pldr_status st = req_copy(s, in, &r);
    if (st != PLDR_OK)
        return st;
    pthread_mutex_lock(&s->mu);
    if (s->n_queued >= s->max_queue) {
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return pldr_fail(PLDR_ERR_BUSY, "the queue is full (%d requests waiting)", s->max_queue);
    }
    r->id = ++s->next_id;
    if (s->tail)
        s->tail->next_in_queue = r;
    else
        s->head = r;
    s->tail = r;
    s->n_queued++;
    if (id)
        *id = r->id;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return PLDR_OK;
}

void pldr_scheduler_cancel(pldr_scheduler *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    for (req *r = s->head; r; r = r->next_in_queue)
        if (r->id == id)
            r->cancelled = 1;
    for (int i = 0; i < s->max_active; i++)
        if (s->slots[i] && s->slots[i]->id == id)
            s->slots[i]->cancelled = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void pldr_scheduler_stats(pldr_scheduler *s, int *active, int *queued)
{
    pthread_mutex_lock(&s->mu);
    if (active)
        *active = s->n_active;
    if (queued)
        *queued = s->n_queued;
    pthread_mutex_unlock(&s->mu);
}

/* Ends a request: the held-back text for a reason the gen did not see, the
 * result to on_done, its slot freed. Called without the mutex. */
static void finish(pldr_scheduler *s, req *r, pldr_finish_reason why, int tell_gen)
{
    if (tell_gen) {
        pldr_token_event ev;
        if (pldr_gen_finish(r->g, why, &ev) == PLDR_OK && ev.text_len > 0 && r->on_token)
            r->on_token(&ev, r->user);
    }
    const double t_end = pldr_now();
    r->res.finish = why;
    r->res.n_prompt = r->n_prompt;
    if (r->res.n_generated == 0)
        r->t_first = t_end;
    r->res.t_prefill_s = r->t_first - r->t0;
    r->res.t_decode_s = t_end - r->t_first;
    if (r->on_done)
        r->on_done(&r->res, r->user);
    pthread_mutex_lock(&s->mu);
    if (r->slot >= 0) {
        s->slots[r->slot] = NULL;
        s->n_active--;
    }
    pthread_mutex_unlock(&s->mu);
    req_free(r);
}

/* The request's next token from its row of the batch; 1 when it ended. */
static int pick(pldr_scheduler *s, req *r, const float *row, int32_t greedy)
{
    if (r->gen.max_tokens == 0) {
        finish(s, r, PLDR_FINISH_LENGTH, 0);
        return 1;
    }
    pldr_token_event ev;
    pldr_finish_reason why = PLDR_FINISH_NONE;
    pldr_status st = r->needs_logits ? pldr_gen_next(r->g, row, &ev, &why) : pldr_gen_accept(r->g, greedy, &ev, &why);
    if (st != PLDR_OK) {
        finish(s, r, PLDR_FINISH_NONE, 0);
        return 1;
    }
    if (r->res.n_generated++ == 0)
        r->t_first = pldr_now();
    const int32_t id = ev.id;
    if (r->on_token && r->on_token(&ev, r->user) != 0 && why == PLDR_FINISH_NONE) {
        finish(s, r, PLDR_FINISH_CANCELLED, 1);
        return 1;
    }
    if (why != PLDR_FINISH_NONE) {
        r->res.pending_id = why == PLDR_FINISH_STOP ? -1 : id;
        finish(s, r, why, 0);
        return 1;
    }
    r->next = id;
    r->res.pending_id = id;
    return 0;
}

pldr_status pldr_scheduler_step(pldr_scheduler *s, int timeout_ms)
{
    pldr_clear_error();
    req *dropped = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->n_active == 0 && s->n_queued == 0 && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    /* cancelled waiting requests leave the queue; free slots take the next */
    for (req **pp = &s->head; *pp;) {
        req *r = *pp;
        int slot = -1;
        if (!r->cancelled)
            for (int i = 0; i < s->max_active && slot < 0; i++)
                if (!s->slots[i])
                    slot = i;
        if (!r->cancelled && slot < 0)
            break; /* no free slot: the rest wait, in order */
        *pp = r->next_in_queue;
        if (s->tail == r)
            s->tail = NULL;
        s->n_queued--;
        r->next_in_queue = NULL;
        if (r->cancelled) {
            r->next_in_queue = dropped;
            dropped = r;
        } else {
            r->slot = slot;
            s->slots[slot] = r;
            s->n_active++;
        }
    }
    if (!s->head)
        s->tail = NULL;
    else
        for (req *t = s->head; t; t = t->next_in_queue)
            s->tail = t;
    req *active[PLDR_MAX_SEQ];
    int n = 0;
    for (int i = 0; i < s->max_active && n < (int)(sizeof active / sizeof active[0]); i++)
        if (s->slots[i])
            active[n++] = s->slots[i];
    int cancelled[PLDR_MAX_SEQ];
    for (int i = 0; i < n; i++)
        cancelled[i] = active[i]->cancelled;
    pthread_mutex_unlock(&s->mu);

    while (dropped) {
        req *r = dropped;
        dropped = r->next_in_queue;
        r->t0 = r->t_first = pldr_now();
        r->res.pending_id = -1;
        finish(s, r, PLDR_FINISH_CANCELLED, 0);
    }
    const int n_ctx = pldr_context_n_ctx(s->ctx);
    int n_e = 0, want_logits = 0;
    for (int i = 0; i < n; i++) {
        req *r = active[i];
        if (cancelled[i]) {
            finish(s, r, PLDR_FINISH_CANCELLED, r->fed);
            continue;
        }
        if (!r->fed) {
            pldr_seq_reset(s->ctx, r->slot);
            r->t0 = pldr_now();
            r->res.pending_id = -1;
            s->entries[n_e] = (pldr_batch_entry){r->slot, r->prompt, r->n_prompt};
        } else {
            if (pldr_seq_n_past(s->ctx, r->slot) + 1 > n_ctx) {
                finish(s, r, PLDR_FINISH_CONTEXT, 1);
                continue;
            }
            s->entries[n_e] = (pldr_batch_entry){r->slot, &r->next, 1};
        }
        want_logits |= r->needs_logits;
        s->entry_req[n_e++] = r;
    }
    if (n_e == 0)
        return PLDR_OK;
    pldr_status st = pldr_eval_batch(s->ctx, s->entries, n_e, want_logits ? s->logits : NULL, s->greedy);
    for (int i = 0; i < n_e; i++) {
        req *r = s->entry_req[i];
        if (st != PLDR_OK) {
            /* the sequence's tokens are unknown now: the request ends */
            finish(s, r, PLDR_FINISH_NONE, 0);
            continue;
        }
        r->fed = 1;
        pick(s, r, want_logits ? s->logits + (size_t)i * (size_t)s->V : NULL, s->greedy[i]);
    }
    return st;
}

void pldr_scheduler_free(pldr_scheduler *s)
{
    if (!s)
        return;
    for (int i = 0; s->slots && i < s->max_active; i++)
        req_free(s->slots[i]);
    while (s->head) {
        req *r = s->head;
        s->head = r->next_in_queue;
        req_free(r);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->slots);
    free(s->entries);
    free(s->entry_req);
    free(s->logits);
    free(s->greedy);
    free(s);
}
