/* The replicas of pldr serve. Each replica is one model on one device with
 * `parallel` slots; its worker thread takes sequences from the replica's
 * queue into free slots and advances every busy slot by one step per round
 * (the prompt's prefill, then one token), so that a new request starts
 * between the decode steps of the others and a finished or cancelled
 * sequence frees its slot at once. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

double server_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ jobs */

job *job_new(completion_request *r)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->n_seq = r->n_prompts * r->n;
    j->seqs = calloc((size_t)j->n_seq, sizeof *j->seqs);
    if (!j->seqs) {
        free(j);
        return NULL;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->req = *r;
    memset(r, 0, sizeof *r);
    for (int s = 0; s < j->n_seq; s++) {
        j->seqs[s].replica = -1;
        j->seqs[s].n_prompt = j->req.n_prompt_ids[s / j->req.n];
    }
    j->t_submit = server_now();
    return j;
}

void job_release(job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left > 0)
        return;
    for (int s = 0; s < j->n_seq; s++) {
        seq_out *o = &j->seqs[s];
        free(o->text);
        json_decref(o->lp_tokens);
        json_decref(o->lp_logprobs);
        json_decref(o->lp_top);
        json_decref(o->lp_offsets);
    }
    free(j->seqs);
    api_completion_request_free(&j->req);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

void job_cancel(job *j)
{
    __atomic_store_n(&j->cancelled, 1, __ATOMIC_RELEASE);
}

static int job_cancelled(job *j)
{
    return __atomic_load_n(&j->cancelled, __ATOMIC_ACQUIRE);
}

/* Appends text to a sequence's output; call under j->mu. */
static int seq_append(seq_out *o, const char *text, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *b = realloc(o->text, cap);
        if (!b)
            return -1;
        o->text = b;
        o->cap = cap;
    }
    memcpy(o->text + o->len, text, n);
    o->len += n;
    o->text[o->len] = '\0';
    return 0;
}

/* Ends sequence s of j: call without j->mu. */
static void seq_end(job *j, int s, seq_finish why, const char *error)
{
    pthread_mutex_lock(&j->mu);
    seq_out *o = &j->seqs[s];
    if (!o->done) {
        o->done = 1;
        o->finish = why;
        j->n_done++;
        if (error && !j->error[0])
            snprintf(j->error, sizeof j->error, "%s", error);
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* --------------------------------------------------------------- replicas */

typedef struct qitem {
    job *j;
    int s;
    struct qitem *next;
} qitem;

/* A slot: one context and the sequence it is generating. */
typedef struct slot {
    int seq; /* its sequence in the replica's context */
    job *j;  /* NULL: idle */
    int s;
    pldr_gen *gen; /* sampling, penalties, stop strings, detokenization */
    int needs_logits;
    const int32_t *prompt;
    int n_prompt;
    int32_t last; /* the last picked token, fed at the next step */
    int n_gen, max_tokens, prefilled;
    uint64_t ticket; /* admission order: prompts are prefilled first come, first served */
} slot;

typedef struct replica {
    struct engine *e;
    int index;
    pldr_model *model;
    char device[160];
    slot *slots;
    int n_slots, n_active;
    qitem *head, *tail;
    int n_queued;
    pthread_t thread;
    int started;
    pthread_cond_t cv; /* work arrived or stop */
    pldr_context *ctx; /* one sequence per slot */
    pldr_batch_entry *entries;
    int *rows, *n_fed, *waiting;
    int32_t *ids;
    float *logits; /* [slots, vocab] */
    int g_shared;  /* --g-cache first: its sequences hold the engine's first G-cache */
    uint64_t prompt_tokens, generated_tokens, sequences, steps, tickets;
} replica;

/* --g-cache first over several replicas: the first prompt prefilled on any
 * replica gives the G-cache of every later prompt on every replica. */
enum { FIRST_NONE, FIRST_CLAIMED, FIRST_READY };

struct engine {
    pthread_mutex_t mu; /* queues, slot counts, figures, stop */
    const server_options *o;
    pldr_tokenizer *tok;
    replica *reps;
    int n_reps;
    int n_ctx, n_vocab, eos;
    int stop;
    char model_name[256];
    char *chat_template;
    pldr_tokenizer_config tc;
    pldr_config cfg;
    uint64_t n_params;
    int first_state, first_owner; /* FIRST_*, and the replica that prefills the first prompt */
    pldr_gcache first_g;          /* FIRST_READY: that prompt's G-cache */
};

const pldr_tokenizer *engine_tokenizer(const engine *e) { return e->tok; }
const char *engine_model_name(const engine *e) { return e->model_name; }
const char *engine_chat_template(const engine *e) { return e->chat_template; }
int engine_n_replicas(const engine *e) { return e->n_reps; }
uint64_t engine_n_params(const engine *e) { return e->n_params; }

void engine_limits(const engine *e, api_limits *lim)
{
    lim->tok = e->tok;
    lim->tc = &e->tc;
    lim->cfg = &e->cfg;
    lim->n_ctx = e->n_ctx;
    lim->n_vocab = e->n_vocab;
    int slots = e->n_reps * e->o->parallel;
    lim->max_seqs = slots + e->o->max_queue < 64 ? slots + e->o->max_queue : 64;
}

void engine_replica_stats(engine *e, int i, replica_stats *s)
{
    replica *r = &e->reps[i];
    pthread_mutex_lock(&e->mu);
    snprintf(s->device, sizeof s->device, "%s", r->device);
    s->slots = r->n_slots;
    s->busy = r->n_active;
    s->queued = r->n_queued;
    s->prompt_tokens = r->prompt_tokens;
    s->generated_tokens = r->generated_tokens;
    s->sequences = r->sequences;
    s->steps = r->steps;
    pthread_mutex_unlock(&e->mu);
}

int engine_in_flight(engine *e)
{
    int n = 0;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n_reps; i++)
        n += e->reps[i].n_active + e->reps[i].n_queued;
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* tokenizer_config.json, read once: its add_bos_token and add_eos_token (for
 * pldr_tokenize_prompt, as pldr generate tokenizes) and its chat template,
 * if any: a string, or a list of {name, template} (then the names).
 * Returns 0, or -1 when the file exists but is not a JSON object with
 * boolean flags. */
static int read_tokenizer_config(const char *dir, pldr_tokenizer_config *tc, char **chat_template)
{
    memset(tc, 0, sizeof *tc);
    *chat_template = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (access(path, F_OK) != 0)
        return 0;
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!json_is_object(root)) {
        fprintf(stderr, "pldr serve: %s: not a JSON object%s%s\n", path, root ? "" : ": ", root ? "" : err.text);
        json_decref(root);
        return -1;
    }
    const char *flags[] = {"add_bos_token", "add_eos_token"};
    int *out[] = {&tc->add_bos_token, &tc->add_eos_token};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, flags[i]);
        if (v && !json_is_null(v) && !json_is_boolean(v)) {
            fprintf(stderr, "pldr serve: %s: key \"%s\" must be true or false\n", path, flags[i]);
            json_decref(root);
            return -1;
        }
        *out[i] = json_is_true(v);
    }
    tc->present = 1;
    json_t *t = json_object_get(root, "chat_template");
    char *tmpl = NULL;
    if (json_is_string(t)) {
        tmpl = strdup(json_string_value(t));
    } else if (json_is_array(t)) {
        size_t cap = 256, len = 0;
        tmpl = calloc(1, cap);
        size_t i;
        json_t *v;
        json_array_foreach(t, i, v)
        {
            const char *name = json_string_value(json_object_get(v, "name"));
            if (!name || !tmpl)
                continue;
            size_t n = strlen(name);
            if (len + n + 3 > cap) {
                cap = 2 * (len + n + 3);
                char *b = realloc(tmpl, cap);
                if (!b)
                    break;
                tmpl = b;
            }
            len += (size_t)sprintf(tmpl + len, "%s%s", len ? ", " : "", name);
        }
    }
    *chat_template = tmpl;
    json_decref(root);
    return 0;
}

static void progress(const char *what, uint64_t done, uint64_t total, void *user)
{
    (void)what, (void)done, (void)total, (void)user;
}

static int report(pldr_status st)
{
    const char *m = pldr_last_error();
    fprintf(stderr, "pldr serve: %s\n", m && *m ? m : pldr_status_string(st));
    switch (st) {
    case PLDR_ERR_INVALID_ARGUMENT: return 2;
    case PLDR_ERR_IO:
    case PLDR_ERR_FORMAT:
    case PLDR_ERR_UNSUPPORTED:
    case PLDR_ERR_MISMATCH: return 3;
    case PLDR_ERR_NO_DEVICE:
    case PLDR_ERR_KERNEL_BUILD:
    case PLDR_ERR_DEVICE_MEMORY: return 4;
    default: return 1;
    }
}

static int replica_load(engine *e, replica *r, const char *device)
{
    const server_options *o = e->o;
    pldr_model_params mp = pldr_model_default_params();
    mp.device = device;
    mp.weight_dtype = o->dtype;
    mp.progress = progress;
    pldr_status st = pldr_model_load(o->model_dir, &mp, &r->model);
    if (st != PLDR_OK)
        return report(st);
    const pldr_device_info *dev = pldr_model_device(r->model);
    snprintf(r->device, sizeof r->device, "%d:%d %s", dev->platform_index, dev->device_index, dev->name);
    const pldr_config *cfg = pldr_model_config(r->model);
    if (o->n_ctx > cfg->max_position) {
        fprintf(stderr, "pldr serve: --ctx %d is more than the model's max_position_embeddings (%d)\n", o->n_ctx,
                cfg->max_position);
        return 2;
    }
    r->n_slots = o->parallel;
    r->slots = calloc((size_t)r->n_slots, sizeof *r->slots);
    r->logits = malloc((size_t)r->n_slots * (size_t)cfg->vocab_size * sizeof *r->logits);
    r->entries = calloc((size_t)r->n_slots, sizeof *r->entries);
    r->rows = calloc((size_t)r->n_slots, sizeof *r->rows);
    r->n_fed = calloc((size_t)r->n_slots, sizeof *r->n_fed);
    r->waiting = calloc((size_t)r->n_slots, sizeof *r->waiting);
    r->ids = calloc((size_t)r->n_slots, sizeof *r->ids);
    if (!r->slots || !r->logits || !r->entries || !r->rows || !r->n_fed || !r->waiting || !r->ids)
        return report(PLDR_ERR_HOST_MEMORY);
    for (int i = 0; i < r->n_slots; i++)
        r->slots[i].seq = i;
    pldr_context_params cp = pldr_context_default_params();
    cp.n_ctx = o->n_ctx;
    cp.cache_mode = o->cache;
    cp.n_seq = r->n_slots;
    cp.shared_g = o->gcache_first ? PLDR_SHARED_G_FIRST : o->gcache ? PLDR_SHARED_G_EXTERNAL : PLDR_SHARED_G_NONE;
    if ((st = pldr_context_new(r->model, &cp, &r->ctx)) != PLDR_OK)
        return report(st);
    if (o->gcache && (st = pldr_context_load_gcache(r->ctx, r->model, o->gcache)) != PLDR_OK)
        return report(st);
    e->n_ctx = pldr_context_n_ctx(r->ctx);
    e->n_vocab = cfg->vocab_size;
    e->eos = cfg->eos_token_id;
    e->n_params = pldr_model_n_params(r->model);
    e->cfg = *cfg;
    pthread_cond_init(&r->cv, NULL);
    return 0;
}

int engine_new(const server_options *o, engine **out)
{
    *out = NULL;
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return report(PLDR_ERR_HOST_MEMORY);
    pthread_mutex_init(&e->mu, NULL);
    e->o = o;
    const char *base = strrchr(o->model_dir, '/');
    base = base && base[1] ? base + 1 : o->model_dir;
    snprintf(e->model_name, sizeof e->model_name, "%s", base);
    size_t n = strlen(e->model_name);
    while (n > 1 && e->model_name[n - 1] == '/')
        e->model_name[--n] = '\0';
    if (read_tokenizer_config(o->model_dir, &e->tc, &e->chat_template) != 0) {
        *out = e;
        return 3;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", o->model_dir);
    pldr_status st = pldr_tokenizer_load(path, &e->tok);
    *out = e;
    if (st != PLDR_OK)
        return report(st);
    int n_reps = o->n_devices > 0 ? o->n_devices : 1;
    e->reps = calloc((size_t)n_reps, sizeof *e->reps);
    if (!e->reps)
        return report(PLDR_ERR_HOST_MEMORY);
    for (int i = 0; i < n_reps; i++) {
        replica *r = &e->reps[i];
        r->e = e;
        r->index = i;
        e->n_reps = i + 1;
        int rc = replica_load(e, r, o->n_devices > 0 ? o->devices[i] : NULL);
        if (rc)
            return rc;
    }
    return 0;
}

/* ----------------------------------------------------------------- worker */

static void slot_clear(slot *sl)
{
    pldr_gen_free(sl->gen);
    sl->gen = NULL;
    sl->j = NULL;
    sl->n_gen = 0;
    sl->prefilled = 0;
}

/* Takes sequence s of j into a slot. Returns 0, or -1 with the sequence ended. */
static int slot_begin(replica *r, slot *sl, job *j, int s)
{
    const completion_request *q = &j->req;
    const int p = s / q->n;
    sl->j = j;
    sl->s = s;
    sl->max_tokens = q->max_tokens;
    sl->prompt = q->prompt_ids[p];
    sl->n_prompt = q->n_prompt_ids[p];
    pldr_generate_params gp = pldr_generate_default_params();
    gp.max_tokens = q->max_tokens;
    gp.temperature = q->temperature;
    gp.top_k = q->top_k;
    gp.top_p = q->top_p;
    gp.min_p = q->min_p;
    gp.repeat_penalty = q->repeat_penalty;
    gp.repeat_last_n = q->repeat_last_n;
    gp.presence_penalty = q->presence_penalty;
    gp.frequency_penalty = q->frequency_penalty;
    gp.bias_ids = q->bias_ids;
    gp.bias_values = q->bias_values;
    gp.n_bias = q->n_bias;
    gp.stop = (const char *const *)q->stop;
    gp.n_stop = q->n_stop;
    gp.ignore_eos = q->ignore_eos;
    if (q->n_logprobs >= 0) {
        gp.logprob = 1;
        gp.n_logprobs = q->n_logprobs;
    }
    gp.seed = q->seed + (uint64_t)(s % q->n);
    gp.eos_id = r->e->eos;
    pldr_status st = pldr_gen_new(r->e->tok, &gp, r->e->n_vocab, &sl->gen);
    if (st == PLDR_OK)
        st = pldr_gen_set_prompt(sl->gen, sl->prompt, sl->n_prompt);
    if (st != PLDR_OK) {
        seq_end(j, s, SEQ_CANCELLED, pldr_last_error());
        slot_clear(sl);
        job_release(j);
        return -1;
    }
    sl->needs_logits = pldr_gen_needs_logits(sl->gen);
    pthread_mutex_lock(&j->mu);
    j->seqs[s].replica = r->index;
    if (q->echo)
        seq_append(&j->seqs[s], q->prompt_text[p], q->prompt_len[p]);
    pthread_mutex_unlock(&j->mu);
    return 0;
}

/* Appends a token event's log-probabilities to a choice; call under j->mu
 * with off the text's length before the event's text. */
static int seq_logprobs(engine *e, seq_out *o, const pldr_token_event *ev, size_t off)
{
    if (!o->lp_tokens) {
        o->lp_tokens = json_array();
        o->lp_logprobs = json_array();
        o->lp_top = json_array();
        o->lp_offsets = json_array();
    }
    json_t *top = json_null();
    if (ev->n_top > 0) {
        top = json_object();
        for (int i = 0; i < ev->n_top; i++) {
            json_t *k = api_piece_string(e->tok, ev->top_ids[i]);
            if (json_is_string(k) && !json_object_get(top, json_string_value(k)))
                json_object_set_new(top, json_string_value(k), json_real(ev->top_logprobs[i]));
            json_decref(k);
        }
    }
    int rc = json_array_append_new(o->lp_tokens, api_string(ev->text ? ev->text : "", ev->text_len));
    rc |= json_array_append_new(o->lp_logprobs, isfinite(ev->logprob) ? json_real(ev->logprob) : json_null());
    rc |= json_array_append_new(o->lp_top, top);
    rc |= json_array_append_new(o->lp_offsets, json_integer((json_int_t)off));
    return rc ? -1 : 0;
}

/* Hands a token event's text (and log-probabilities) to the choice. */
static int slot_emit(replica *r, slot *sl, const pldr_token_event *ev)
{
    job *j = sl->j;
    int rc = 0;
    pthread_mutex_lock(&j->mu);
    seq_out *o = &j->seqs[sl->s];
    const size_t off = o->len;
    if (ev->text_len)
        rc = seq_append(o, ev->text, ev->text_len);
    if (rc == 0 && ev->id >= 0 && j->req.n_logprobs >= 0)
        rc = seq_logprobs(r->e, o, ev, off);
    o->n_gen = sl->n_gen;
    if (ev->id >= 0 && j->t_first == 0)
        j->t_first = server_now();
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return rc;
}

static seq_finish finish_of(pldr_finish_reason f)
{
    switch (f) {
    case PLDR_FINISH_STOP: return SEQ_STOP;
    case PLDR_FINISH_LENGTH:
    case PLDR_FINISH_CONTEXT: return SEQ_LENGTH;
    default: return SEQ_CANCELLED;
    }
}

/* What a slot feeds at this round: the prompt, or the last picked token.
 * Returns 1 when the sequence ends instead (finish set). */
static int slot_prepare(replica *r, slot *sl, const int32_t **feed, int *n_feed, seq_finish *finish)
{
    pldr_token_event ev;
    if (job_cancelled(sl->j)) {
        *finish = SEQ_CANCELLED;
        return 1;
    }
    if (sl->max_tokens == 0) {
        *finish = SEQ_LENGTH;
        return 1;
    }
    if (!sl->prefilled) {
        pldr_seq_reset(r->ctx, sl->seq);
        *feed = sl->prompt;
        *n_feed = sl->n_prompt;
        return 0;
    }
    if (pldr_seq_n_past(r->ctx, sl->seq) + 1 > pldr_context_n_ctx(r->ctx)) {
        if (pldr_gen_finish(sl->gen, PLDR_FINISH_CONTEXT, &ev) == PLDR_OK)
            slot_emit(r, sl, &ev);
        *finish = SEQ_LENGTH;
        return 1;
    }
    *feed = &sl->last;
    *n_feed = 1;
    return 0;
}

/* Picks the next token from the logits of what was fed (or the device's
 * argmax when the sampling needs no logits) and hands out its text.
 * Returns 1 when the sequence ended (finish set). */
static int slot_pick(replica *r, slot *sl, int n_fed, const float *logits, int32_t greedy_id, seq_finish *finish,
                     const char **error)
{
    engine *e = r->e;
    pldr_token_event ev;
    pldr_finish_reason fin = PLDR_FINISH_NONE;
    pldr_status st = sl->needs_logits ? pldr_gen_next(sl->gen, logits, &ev, &fin)
                                      : pldr_gen_accept(sl->gen, greedy_id, &ev, &fin);
    if (st != PLDR_OK) {
        *error = pldr_last_error();
        *finish = SEQ_CANCELLED;
        return 1;
    }
    pthread_mutex_lock(&e->mu);
    if (!sl->prefilled)
        r->prompt_tokens += (uint64_t)n_fed;
    r->generated_tokens++;
    pthread_mutex_unlock(&e->mu);
    sl->prefilled = 1;
    sl->n_gen++;
    sl->last = ev.id;
    if (slot_emit(r, sl, &ev) != 0) {
        *error = "out of host memory";
        *finish = SEQ_CANCELLED;
        return 1;
    }
    if (fin != PLDR_FINISH_NONE) {
        *finish = finish_of(fin);
        return 1;
    }
    return 0;
}

/* Ends a slot's sequence and frees the slot. */
static void slot_end(replica *r, slot *sl, seq_finish why, const char *error)
{
    job *j = sl->j;
    seq_end(j, sl->s, why, error);
    slot_clear(sl);
    job_release(j);
    pthread_mutex_lock(&r->e->mu);
    r->n_active--;
    pthread_mutex_unlock(&r->e->mu);
}

/* --g-cache first over several replicas: whether slot sl of r may be
 * prefilled now. The first prompt of the engine is prefilled by the replica
 * that claims it (whose context, in PLDR_SHARED_G_FIRST, shares it with its
 * own sequences); the other replicas wait for that G-cache and install it
 * in every sequence of theirs before their first prefill. Returns 1 to go
 * on (*claimed set when this prefill is the first), 0 to wait. */
static int first_g_gate(replica *r, int *claimed)
{
    engine *e = r->e;
    if (!e->o->gcache_first || e->n_reps < 2 || r->g_shared)
        return 1;
    pthread_mutex_lock(&e->mu);
    int go = 1, install = 0;
    if (e->first_state == FIRST_NONE) {
        e->first_state = FIRST_CLAIMED;
        e->first_owner = r->index;
        *claimed = 1;
    } else if (e->first_state == FIRST_CLAIMED) {
        go = e->first_owner == r->index;
    } else {
        install = 1;
    }
    pthread_mutex_unlock(&e->mu);
    if (install) {
        /* FIRST_READY: first_g no longer changes */
        for (int s = 0; s < r->n_slots; s++) {
            pldr_status st =
                pldr_seq_set_external_g(r->ctx, s, e->first_g.a, e->first_g.a_lm, e->first_g.g_lm);
            if (st != PLDR_OK)
                return 1; /* the prefill then fails and reports it */
        }
        r->g_shared = 1;
    }
    return go;
}

/* After the round that prefilled the first prompt: hands its G-cache to
 * the other replicas (or, when that prefill failed, lets another try). */
static void first_g_publish(replica *r, int ok)
{
    engine *e = r->e;
    pldr_gcache g;
    if (ok && pldr_gcache_from_context(r->ctx, r->model, &g) != PLDR_OK)
        ok = 0;
    pthread_mutex_lock(&e->mu);
    if (ok) {
        e->first_g = g;
        e->first_state = FIRST_READY;
        r->g_shared = 1;
    } else {
        e->first_state = FIRST_NONE;
    }
    for (int i = 0; i < e->n_reps; i++)
        pthread_cond_broadcast(&e->reps[i].cv);
    pthread_mutex_unlock(&e->mu);
}

/* One round: every busy slot is fed in one batch and picks its next token.
 * The decoding slots feed their last token, through the layers together;
 * the slots whose prompt waits are prefilled first come, first served, as
 * many as fit in --prefill-batch prompt tokens (one at least), so that a
 * burst of new prompts holds the running sequences back for a bounded time.
 * Returns the slots fed. */
static int replica_round(replica *r, int stopping)
{
    const int V = r->e->n_vocab, budget = r->e->o->prefill_batch;
    int n = 0, n_wait = 0, any_logits = 0, claimed = 0;
    for (int i = 0; i < r->n_slots; i++) {
        slot *sl = &r->slots[i];
        if (!sl->j)
            continue;
        if (stopping)
            job_cancel(sl->j);
        seq_finish why;
        if (slot_prepare(r, sl, &r->entries[n].ids, &r->entries[n].n, &why)) {
            slot_end(r, sl, why, NULL);
            continue;
        }
        if (!sl->prefilled) {
            r->waiting[n_wait++] = i;
            continue;
        }
        r->entries[n].seq = sl->seq;
        r->n_fed[n] = r->entries[n].n;
        r->rows[n++] = i;
        any_logits |= sl->needs_logits;
    }
    /* the waiting prompts in admission order (a few slots: insertion sort) */
    for (int a = 1; a < n_wait; a++)
        for (int b = a; b > 0 && r->slots[r->waiting[b]].ticket < r->slots[r->waiting[b - 1]].ticket; b--) {
            int t = r->waiting[b];
            r->waiting[b] = r->waiting[b - 1];
            r->waiting[b - 1] = t;
        }
    int used = 0;
    for (int w = 0; w < n_wait; w++) {
        slot *sl = &r->slots[r->waiting[w]];
        if (used > 0 && used + sl->n_prompt > budget)
            break;
        if (!first_g_gate(r, &claimed))
            break;
        used += sl->n_prompt;
        r->entries[n].seq = sl->seq;
        r->entries[n].ids = sl->prompt;
        r->entries[n].n = sl->n_prompt;
        r->n_fed[n] = sl->n_prompt;
        r->rows[n++] = r->waiting[w];
        any_logits |= sl->needs_logits;
    }
    if (n == 0) {
        if (claimed)
            first_g_publish(r, 0);
        return 0;
    }
    pldr_status st = pldr_eval_batch(r->ctx, r->entries, n, any_logits ? r->logits : NULL, r->ids);
    pthread_mutex_lock(&r->e->mu);
    r->steps++;
    pthread_mutex_unlock(&r->e->mu);
    const char *failure = st == PLDR_OK ? NULL : pldr_last_error();
    if (claimed)
        first_g_publish(r, st == PLDR_OK);
    for (int k = 0; k < n; k++) {
        slot *sl = &r->slots[r->rows[k]];
        seq_finish why;
        const char *err = NULL;
        if (failure) {
            pldr_seq_reset(r->ctx, sl->seq);
            slot_end(r, sl, SEQ_CANCELLED, failure);
        } else if (slot_pick(r, sl, r->n_fed[k], r->logits + (size_t)k * (size_t)V, r->ids[k], &why, &err)) {
            slot_end(r, sl, why, err);
        }
    }
    return n;
}

static void *worker(void *arg)
{
    replica *r = arg;
    engine *e = r->e;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        /* fill the free slots from the queue */
        for (int i = 0; i < r->n_slots && r->head; i++) {
            slot *sl = &r->slots[i];
            if (sl->j)
                continue;
            qitem *q = r->head;
            r->head = q->next;
            if (!r->head)
                r->tail = NULL;
            r->n_queued--;
            job *j = q->j;
            int s = q->s;
            free(q);
            if (job_cancelled(j) || e->stop) {
                pthread_mutex_unlock(&e->mu);
                seq_end(j, s, SEQ_CANCELLED, NULL);
                job_release(j);
                pthread_mutex_lock(&e->mu);
                i--;
                continue;
            }
            r->n_active++;
            r->sequences++;
            sl->ticket = ++r->tickets;
            pthread_mutex_unlock(&e->mu);
            if (slot_begin(r, sl, j, s) != 0) {
                pthread_mutex_lock(&e->mu);
                r->n_active--;
                continue;
            }
            pthread_mutex_lock(&e->mu);
        }
        if (e->stop && r->n_active == 0)
            break;
        if (r->n_active == 0) {
            pthread_cond_wait(&r->cv, &e->mu);
            continue;
        }
        const int stopping = e->stop;
        pthread_mutex_unlock(&e->mu);
        const int fed = replica_round(r, stopping);
        pthread_mutex_lock(&e->mu);
        if (fed == 0 && r->n_active > 0 && !e->stop && e->first_state == FIRST_CLAIMED) {
            /* its new prompts wait for the first prompt's G-cache (a
             * bounded wait: a cancelled one ends at the next round) */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&r->cv, &e->mu, &ts);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

int engine_start(engine *e)
{
    for (int i = 0; i < e->n_reps; i++) {
        int err = pthread_create(&e->reps[i].thread, NULL, worker, &e->reps[i]);
        if (err) {
            fprintf(stderr, "pldr serve: cannot start a worker thread: %s\n", strerror(err));
            return 1;
        }
        e->reps[i].started = 1;
    }
    return 0;
}

int engine_submit(engine *e, job *j)
{
    pthread_mutex_lock(&e->mu);
    if (e->stop) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    int free_slots = 0, waiting = 0;
    for (int i = 0; i < e->n_reps; i++) {
        replica *r = &e->reps[i];
        int f = r->n_slots - r->n_active - r->n_queued;
        free_slots += f > 0 ? f : 0;
        int w = r->n_queued - (r->n_slots - r->n_active);
        waiting += w > 0 ? w : 0;
    }
    int would_wait = j->n_seq - free_slots;
    if (would_wait > 0 && waiting + would_wait > e->o->max_queue) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    qitem **items = calloc((size_t)j->n_seq, sizeof *items);
    int ok = items != NULL;
    for (int s = 0; ok && s < j->n_seq; s++)
        ok = (items[s] = calloc(1, sizeof **items)) != NULL;
    if (!ok) {
        for (int s = 0; items && s < j->n_seq; s++)
            free(items[s]);
        free(items);
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    pthread_mutex_lock(&j->mu);
    j->refs += j->n_seq;
    pthread_mutex_unlock(&j->mu);
    for (int s = 0; s < j->n_seq; s++) {
        replica *best = NULL;
        int best_free = 0;
        for (int i = 0; i < e->n_reps; i++) {
            replica *r = &e->reps[i];
            int f = r->n_slots - r->n_active - r->n_queued;
            if (!best || f > best_free) {
                best = &e->reps[i];
                best_free = f;
            }
        }
        qitem *q = items[s];
        q->j = j;
        q->s = s;
        if (best->tail)
            best->tail->next = q;
        else
            best->head = q;
        best->tail = q;
        best->n_queued++;
        pthread_cond_signal(&best->cv);
    }
    free(items);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void engine_stop(engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    for (int i = 0; i < e->n_reps; i++)
        pthread_cond_broadcast(&e->reps[i].cv);
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < e->n_reps; i++)
        if (e->reps[i].started) {
            pthread_join(e->reps[i].thread, NULL);
            e->reps[i].started = 0;
        }
    /* what is still queued ends cancelled */
    for (int i = 0; i < e->n_reps; i++) {
        replica *r = &e->reps[i];
        while (r->head) {
            qitem *q = r->head;
            r->head = q->next;
            seq_end(q->j, q->s, SEQ_CANCELLED, NULL);
            job_release(q->j);
            free(q);
        }
        r->tail = NULL;
        r->n_queued = 0;
    }
}

void engine_free(engine *e)
{
    if (!e)
        return;
    engine_stop(e);
    for (int i = 0; i < e->n_reps; i++) {
        replica *r = &e->reps[i];
        for (int k = 0; r->slots && k < r->n_slots; k++)
            pldr_gen_free(r->slots[k].gen);
        pldr_context_free(r->ctx);
        free(r->entries);
        free(r->rows);
        free(r->n_fed);
        free(r->waiting);
        free(r->ids);
        free(r->slots);
        free(r->logits);
        pldr_model_free(r->model);
        if (r->n_slots)
            pthread_cond_destroy(&r->cv);
    }
    free(e->reps);
    if (e->first_state == FIRST_READY)
        pldr_gcache_free(&e->first_g);
    pldr_tokenizer_free(e->tok);
    free(e->chat_template);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
