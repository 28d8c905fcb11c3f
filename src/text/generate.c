/* Generation: picking tokens (bias, penalties, sampling), incremental
 * detokenization, stop strings, and the loop that drives a context. The
 * semantics are documented in pldr.h (section Generation). */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "text/tokenizer.h"

#define MAX_LOGPROBS 20

struct pldr_gen {
    pldr_generate_params p;
    const pldr_tokenizer *tok;
    int n_vocab;
    pldr_sampler *sampler;
    int needs_logits;
    /* copies of the caller's arrays */
    int32_t *bias_ids;
    float *bias_values;
    char **stop;
    size_t *stop_len;
    /* the penalties' window: a ring of the last `window` tokens, the count
     * of each token in it, and its distinct tokens */
    int window;     /* 0: no penalties; -1: unbounded */
    int32_t *ring;  /* [ring_cap] */
    int ring_cap, ring_len, ring_head;
    int *count;     /* [n_vocab] */
    int32_t *distinct; /* [n_distinct] */
    int *distinct_pos; /* [n_vocab]: position in distinct, or -1 */
    int n_distinct;
    float *work;    /* [n_vocab] the logits after bias and penalties */
    /* text */
    pldr_detok detok;
    pldr_bytes held; /* decoded text not yet handed out */
    pldr_bytes out;  /* the current event's text */
    int32_t top_ids[MAX_LOGPROBS];
    float top_lp[MAX_LOGPROBS];
    int n_picked;
    pldr_finish_reason finished;
};

const char *pldr_finish_reason_string(pldr_finish_reason why)
{
    switch (why) {
    case PLDR_FINISH_STOP: return "stop";
    case PLDR_FINISH_LENGTH: return "length";
    case PLDR_FINISH_CONTEXT: return "context";
    case PLDR_FINISH_CANCELLED: return "cancelled";
    default: return "";
    }
}

pldr_generate_params pldr_generate_default_params(void)
{
    pldr_generate_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = -1;
    p.top_p = 1.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.eos_id = -1;
    return p;
}

void pldr_gen_free(pldr_gen *g)
{
    if (!g)
        return;
    pldr_sampler_free(g->sampler);
    free(g->bias_ids);
    free(g->bias_values);
    if (g->stop)
        for (int i = 0; i < g->p.n_stop; i++)
            free(g->stop[i]);
    free(g->stop);
    free(g->stop_len);
    free(g->ring);
    free(g->count);
    free(g->distinct);
    free(g->distinct_pos);
    free(g->work);
    free(g->held.data);
    free(g->out.data);
    free(g);
}

static pldr_status check_params(const pldr_generate_params *p, int n_vocab)
{
    if (n_vocab <= 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "the vocabulary size %d must be positive", n_vocab);
    if (p->max_tokens < -1)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "max_tokens %d must be >= -1", p->max_tokens);
    if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "repeat penalty %g must be a finite number > 0",
                         (double)p->repeat_penalty);
    if (p->repeat_last_n < -1)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "repeat_last_n %d must be >= -1", p->repeat_last_n);
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "the presence and frequency penalties must be finite");
    if (p->n_bias < 0 || (p->n_bias > 0 && (!p->bias_ids || !p->bias_values)))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "logit bias: %d entries without arrays", p->n_bias);
    for (int i = 0; i < p->n_bias; i++) {
        if (p->bias_ids[i] < 0 || p->bias_ids[i] >= n_vocab)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "logit bias: token id %ld is outside the vocabulary [0, %d)",
                             (long)p->bias_ids[i], n_vocab);
        if (isnan(p->bias_values[i]) || p->bias_values[i] == INFINITY)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "logit bias of token %ld must be a number or -inf",
                             (long)p->bias_ids[i]);
    }
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "%d stop strings without an array", p->n_stop);
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0])
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "stop string %d is empty", i + 1);
    if (p->n_logprobs < 0 || p->n_logprobs > MAX_LOGPROBS)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "n_logprobs %d must be in [0, %d]", p->n_logprobs,
                         MAX_LOGPROBS);
    if (p->eos_id < PLDR_EOS_NONE || p->eos_id >= n_vocab)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "eos_id %ld is outside the vocabulary [0, %d)", (long)p->eos_id,
                         n_vocab);
    return PLDR_OK;
}

pldr_status pldr_gen_new(const pldr_tokenizer *tok, const pldr_generate_params *params, int n_vocab, pldr_gen **out)
{
    if (!out)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_gen_new: NULL argument");
    *out = NULL;
    pldr_generate_params d = pldr_generate_default_params();
    const pldr_generate_params *p = params ? params : &d;
    pldr_status st = check_params(p, n_vocab);
    if (st != PLDR_OK)
        return st;
    pldr_sampler_params sp = pldr_sampler_default_params();
    sp.temperature = p->temperature;
    sp.top_k = p->top_k;
    sp.top_p = p->top_p;
    sp.min_p = p->min_p;
    sp.seed = p->seed;
    pldr_gen *g = calloc(1, sizeof *g);
    if (!g)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    g->p = *p;
    g->p.bias_ids = NULL;
    g->p.bias_values = NULL;
    g->p.stop = NULL;
    g->p.out_logits = NULL;
    g->tok = tok;
    g->n_vocab = n_vocab;
    if ((st = pldr_sampler_new(&sp, &g->sampler)) != PLDR_OK) {
        free(g);
        return st;
    }
    int ok = 1;
    if (p->n_bias > 0) {
        g->bias_ids = malloc((size_t)p->n_bias * sizeof *g->bias_ids);
        g->bias_values = malloc((size_t)p->n_bias * sizeof *g->bias_values);
        ok = g->bias_ids && g->bias_values;
        if (ok) {
            memcpy(g->bias_ids, p->bias_ids, (size_t)p->n_bias * sizeof *g->bias_ids);
            memcpy(g->bias_values, p->bias_values, (size_t)p->n_bias * sizeof *g->bias_values);
        }
    }
    if (ok && p->n_stop > 0) {
        g->stop = calloc((size_t)p->n_stop, sizeof *g->stop);
        g->stop_len = calloc((size_t)p->n_stop, sizeof *g->stop_len);
        ok = g->stop && g->stop_len;
        for (int i = 0; ok && i < p->n_stop; i++) {
            ok = (g->stop[i] = pldr_strdup(p->stop[i])) != NULL;
            g->stop_len[i] = ok ? strlen(g->stop[i]) : 0;
        }
    }
    const int penalties = p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    g->window = penalties ? p->repeat_last_n : 0;
    if (ok && g->window != 0) {
        g->ring_cap = g->window > 0 ? g->window : 256;
        g->ring = malloc((size_t)g->ring_cap * sizeof *g->ring);
        g->count = calloc((size_t)n_vocab, sizeof *g->count);
        g->distinct = malloc((size_t)n_vocab * sizeof *g->distinct);
        g->distinct_pos = malloc((size_t)n_vocab * sizeof *g->distinct_pos);
        ok = g->ring && g->count && g->distinct && g->distinct_pos;
        if (ok)
            for (int i = 0; i < n_vocab; i++)
                g->distinct_pos[i] = -1;
    }
    g->needs_logits = !pldr_sampler_is_greedy(g->sampler) || g->window != 0 || p->n_bias > 0 || p->ignore_eos ||
                      p->logprob || p->n_logprobs > 0;
    if (ok && g->needs_logits)
        ok = (g->work = malloc((size_t)n_vocab * sizeof *g->work)) != NULL;
    if (!ok) {
        pldr_gen_free(g);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    if (tok)
        pldr_detok_init(&g->detok, tok);
    *out = g;
    return PLDR_OK;
}

int pldr_gen_needs_logits(const pldr_gen *g) { return g->needs_logits; }

/* Adds a token to the penalties' window, dropping the oldest when full. */
static pldr_status window_push(pldr_gen *g, int32_t id)
{
    if (g->window == 0 || id < 0 || id >= g->n_vocab)
        return PLDR_OK;
    if (g->window > 0 && g->ring_len == g->ring_cap) {
        int32_t old = g->ring[g->ring_head];
        if (--g->count[old] == 0) { /* remove from distinct: move the last into its place */
            int at = g->distinct_pos[old];
            int32_t last = g->distinct[--g->n_distinct];
            g->distinct[at] = last;
            g->distinct_pos[last] = at;
            g->distinct_pos[old] = -1;
        }
        g->ring[g->ring_head] = id;
        g->ring_head = (g->ring_head + 1) % g->ring_cap;
    } else {
        if (g->ring_len == g->ring_cap) { /* unbounded window: grow */
            int32_t *r = realloc(g->ring, (size_t)g->ring_cap * 2 * sizeof *r);
            if (!r)
                return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
            g->ring = r;
            g->ring_cap *= 2;
        }
        g->ring[(g->ring_head + g->ring_len) % g->ring_cap] = id;
        g->ring_len++;
    }
    if (g->count[id]++ == 0) {
        g->distinct_pos[id] = g->n_distinct;
        g->distinct[g->n_distinct++] = id;
    }
    return PLDR_OK;
}

pldr_status pldr_gen_set_prompt(pldr_gen *g, const int32_t *ids, int n)
{
    if (!g || n < 0 || (n > 0 && !ids))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_gen_set_prompt: bad argument");
    /* only the last `window` tokens can matter */
    int from = g->window > 0 && n > g->window ? n - g->window : 0;
    pldr_status st = PLDR_OK;
    for (int i = from; i < n && st == PLDR_OK; i++) {
        if (ids[i] < 0 || ids[i] >= g->n_vocab)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "token id %ld at position %d is outside the vocabulary [0, %d)",
                             (long)ids[i], i, g->n_vocab);
        st = window_push(g, ids[i]);
    }
    /* the prompt's text is not handed out, but sets the decoder's state
     * (the first piece's dummy-prefix space) */
    if (g->tok && st == PLDR_OK) {
        pldr_bytes scratch = {0};
        for (int i = 0; i < n && st == PLDR_OK; i++) {
            st = pldr_detok_push(&g->detok, ids[i], &scratch);
            scratch.len = 0;
        }
        if (st == PLDR_OK)
            st = pldr_detok_flush(&g->detok, &scratch);
        free(scratch.data);
    }
    return st;
}

/* The logits after bias, penalties and ignore_eos, in g->work. */
static void transform_logits(pldr_gen *g, const float *logits)
{
    float *w = g->work;
    memcpy(w, logits, (size_t)g->n_vocab * sizeof *w);
    for (int i = 0; i < g->p.n_bias; i++)
        w[g->bias_ids[i]] += g->bias_values[i];
    for (int i = 0; i < g->n_distinct; i++) {
        const int32_t id = g->distinct[i];
        float x = w[id];
        if (g->p.repeat_penalty != 1.0f)
            x = x > 0.0f ? x / g->p.repeat_penalty : x * g->p.repeat_penalty;
        x -= (float)g->count[id] * g->p.frequency_penalty + g->p.presence_penalty;
        w[id] = x;
    }
    if (g->p.ignore_eos && g->p.eos_id >= 0)
        w[g->p.eos_id] = -INFINITY;
}

/* log-softmax of the raw logits: the picked token's and the top n. */
static void logprobs(pldr_gen *g, const float *logits, int32_t id, pldr_token_event *ev)
{
    const int n = g->n_vocab;
    float top = logits[0];
    for (int i = 1; i < n; i++)
        if (logits[i] > top)
            top = logits[i];
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += exp((double)logits[i] - top);
    const double lse = top + log(sum);
    ev->logprob = (float)(logits[id] - lse);
    int k = g->p.n_logprobs < n ? g->p.n_logprobs : n;
    for (int j = 0; j < k; j++) { /* the j-th largest, lowest id among equals */
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int t = 0; t < j && !taken; t++)
                taken = g->top_ids[t] == i;
            if (!taken && (best < 0 || logits[i] > logits[best]))
                best = i;
        }
        g->top_ids[j] = best;
        g->top_lp[j] = (float)(logits[best] - lse);
    }
    ev->n_top = k;
    ev->top_ids = k ? g->top_ids : NULL;
    ev->top_logprobs = k ? g->top_lp : NULL;
}

/* The longest suffix of s[0..n) that is a proper prefix of a stop string. */
static size_t stop_prefix_suffix(const pldr_gen *g, const char *s, size_t n)
{
    size_t best = 0;
    for (int i = 0; i < g->p.n_stop; i++) {
        size_t l = g->stop_len[i] - 1 < n ? g->stop_len[i] - 1 : n;
        for (; l > best; l--)
            if (memcmp(s + n - l, g->stop[i], l) == 0) {
                best = l;
                break;
            }
    }
    return best;
}

/* Moves what of the held text is decided into the event's text: all of it
 * when the sequence ends, else all but what may begin a stop string. A stop
 * string found ends the sequence (*stopped) and is dropped with what
 * follows it. */
static pldr_status release_text(pldr_gen *g, int final, int *stopped)
{
    pldr_bytes *h = &g->held;
    size_t emit = h->len, keep_from = h->len;
    *stopped = 0;
    if (g->p.n_stop > 0 && h->len > 0) {
        /* the earliest stop string: it can only involve the text held
         * before plus what this token added (earlier text held no match) */
        size_t first = (size_t)-1;
        for (int i = 0; i < g->p.n_stop; i++) {
            const size_t l = g->stop_len[i];
            for (size_t at = 0; at + l <= h->len && at < first; at++)
                if (memcmp(h->data + at, g->stop[i], l) == 0) {
                    first = at;
                    break;
                }
        }
        if (first != (size_t)-1) {
            emit = first;
            keep_from = h->len;
            *stopped = 1;
        } else if (!final) {
            emit = keep_from = h->len - stop_prefix_suffix(g, h->data, h->len);
        }
    }
    if (emit > 0 && !pldr_bytes_append(&g->out, h->data, emit))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    if (keep_from > 0 && h->len > keep_from) /* h->data is NULL while nothing was held */
        memmove(h->data, h->data + keep_from, h->len - keep_from);
    h->len -= keep_from;
    return PLDR_OK;
}

static void event_init(pldr_gen *g, pldr_token_event *ev, int32_t id)
{
    memset(ev, 0, sizeof *ev);
    ev->id = id;
    ev->logprob = NAN;
    g->out.len = 0;
}

static void event_text(pldr_gen *g, pldr_token_event *ev)
{
    ev->text = g->out.data ? g->out.data : "";
    ev->text_len = g->out.len;
}

/* Takes a picked token: window, text, stop conditions. */
static pldr_status take(pldr_gen *g, int32_t id, pldr_token_event *ev, pldr_finish_reason *finish)
{
    pldr_status st = window_push(g, id);
    g->n_picked++;
    pldr_finish_reason why = PLDR_FINISH_NONE;
    if (id == g->p.eos_id && !g->p.ignore_eos)
        why = PLDR_FINISH_STOP;
    else if (g->p.max_tokens >= 0 && g->n_picked >= g->p.max_tokens)
        why = PLDR_FINISH_LENGTH;
    if (g->tok && st == PLDR_OK) {
        if (why != PLDR_FINISH_STOP)
            st = pldr_detok_push(&g->detok, id, &g->held);
        if (st == PLDR_OK && why != PLDR_FINISH_NONE)
            st = pldr_detok_flush(&g->detok, &g->held);
        int stopped = 0;
        if (st == PLDR_OK)
            st = release_text(g, why != PLDR_FINISH_NONE, &stopped);
        if (stopped)
            why = PLDR_FINISH_STOP;
    }
    event_text(g, ev);
    if (st != PLDR_OK)
        return st;
    g->finished = why;
    *finish = why;
    return PLDR_OK;
}

static pldr_status check_next(pldr_gen *g, pldr_token_event *ev, pldr_finish_reason *finish)
{
    if (!g || !ev || !finish)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_gen: NULL argument");
    if (g->finished != PLDR_FINISH_NONE)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "the sequence has already finished (%s)",
                         pldr_finish_reason_string(g->finished));
    return PLDR_OK;
}

pldr_status pldr_gen_next(pldr_gen *g, const float *logits, pldr_token_event *ev, pldr_finish_reason *finish)
{
    pldr_status st = check_next(g, ev, finish);
    if (st != PLDR_OK)
        return st;
    if (!logits)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_gen_next: NULL logits");
    const float *pick_from = logits;
    if (g->work) {
        transform_logits(g, logits);
        pick_from = g->work;
    }
    int32_t id = pldr_sampler_sample(g->sampler, pick_from, g->n_vocab);
    event_init(g, ev, id);
    if (g->p.logprob || g->p.n_logprobs > 0)
        logprobs(g, logits, id, ev);
    return take(g, id, ev, finish);
}

pldr_status pldr_gen_accept(pldr_gen *g, int32_t id, pldr_token_event *ev, pldr_finish_reason *finish)
{
    pldr_status st = check_next(g, ev, finish);
    if (st != PLDR_OK)
        return st;
    if (id < 0 || id >= g->n_vocab)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "token id %ld is outside the vocabulary [0, %d)", (long)id,
                         g->n_vocab);
    event_init(g, ev, id);
    return take(g, id, ev, finish);
}

pldr_status pldr_gen_finish(pldr_gen *g, pldr_finish_reason why, pldr_token_event *ev)
{
    if (!g || !ev)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_gen_finish: NULL argument");
    event_init(g, ev, -1);
    pldr_status st = PLDR_OK;
    if (g->finished == PLDR_FINISH_NONE) {
        g->finished = why == PLDR_FINISH_NONE ? PLDR_FINISH_CANCELLED : why;
        if (g->tok) {
            int stopped;
            st = pldr_detok_flush(&g->detok, &g->held);
            if (st == PLDR_OK)
                st = release_text(g, 1, &stopped);
        }
    }
    event_text(g, ev);
    return st;
}

/* ------------------------------------------------------------------ */
/* The loop over one context                                           */

pldr_status pldr_generate_ids(pldr_context *ctx, const pldr_tokenizer *tok, const int32_t *ids, int n,
                              const float *next_logits, const pldr_generate_params *params, pldr_token_fn cb,
                              void *user, pldr_generate_result *res)
{
    pldr_generate_result r;
    memset(&r, 0, sizeof r);
    r.pending_id = -1;
    if (res)
        *res = r;
    if (!ctx || n < 0 || (n > 0 && !ids) || (n == 0 && !next_logits))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_generate: no prompt and no next-token logits");
    const pldr_config *cfg = pldr_model_config(pldr_context_model(ctx));
    const int V = cfg->vocab_size;
    pldr_generate_params p = params ? *params : pldr_generate_default_params();
    if (p.eos_id == -1 && cfg->eos_token_id >= 0 && cfg->eos_token_id < V)
        p.eos_id = cfg->eos_token_id;
    if (pldr_context_n_past(ctx) + n > pldr_context_n_ctx(ctx))
        return pldr_fail(PLDR_ERR_CONTEXT_FULL, "the prompt is %d tokens, more than the context of %d tokens",
                         pldr_context_n_past(ctx) + n, pldr_context_n_ctx(ctx));
    pldr_gen *g;
    pldr_status st = pldr_gen_new(tok, &p, V, &g);
    if (st != PLDR_OK)
        return st;
    if (pldr_context_n_past(ctx) > 0)
        g->detok.is_bos_ws = 0; /* the text continues what ctx holds: no dummy-prefix space to strip */
    if ((st = pldr_gen_set_prompt(g, ids, n)) != PLDR_OK) {
        pldr_gen_free(g);
        return st;
    }
    float *logits = NULL;
    const int want_logits = pldr_gen_needs_logits(g) || p.out_logits;
    if (want_logits && !(logits = malloc((size_t)V * sizeof *logits))) {
        pldr_gen_free(g);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    r.n_prompt = n;
    const double t0 = pldr_now();
    double t_first = t0;
    const int32_t *feed = ids;
    int n_feed = n;
    int32_t next = -1;
    const float *have = n == 0 ? next_logits : NULL; /* logits of the context's last token */
    pldr_finish_reason why = PLDR_FINISH_NONE;
    pldr_token_event ev;
    while (why == PLDR_FINISH_NONE) {
        if (p.max_tokens != 0 && n_feed == 0 && pldr_context_n_past(ctx) >= pldr_context_n_ctx(ctx)) {
            /* full: a token picked now could not be fed (nor saved with a session) */
            why = PLDR_FINISH_CONTEXT;
            if ((st = pldr_gen_finish(g, why, &ev)) == PLDR_OK && ev.text_len > 0 && cb)
                cb(&ev, user);
            break;
        }
        if (n_feed > 0) {
            if (pldr_context_n_past(ctx) + n_feed > pldr_context_n_ctx(ctx)) {
                why = PLDR_FINISH_CONTEXT;
                if ((st = pldr_gen_finish(g, why, &ev)) == PLDR_OK && ev.text_len > 0 && cb)
                    cb(&ev, user);
                break;
            }
            if (want_logits) {
                st = pldr_eval(ctx, feed, n_feed, logits, 0);
                have = logits;
            } else {
                st = pldr_eval_greedy(ctx, feed, n_feed, &next);
                have = NULL;
            }
            if (st != PLDR_OK)
                break;
            r.pending_id = -1;
            n_feed = 0;
            continue; /* the context may be full now */
        }
        if (p.max_tokens == 0) {
            why = PLDR_FINISH_LENGTH;
            break;
        }
        /* with logits the gen picks (greedy: the host's argmax, which picks
         * what the device's does), else it takes the device's pick */
        st = have ? pldr_gen_next(g, have, &ev, &why) : pldr_gen_accept(g, next, &ev, &why);
        if (st != PLDR_OK)
            break;
        if (r.n_generated++ == 0)
            t_first = pldr_now();
        const int32_t id = ev.id;
        if (cb && cb(&ev, user) != 0 && why == PLDR_FINISH_NONE) {
            why = PLDR_FINISH_CANCELLED;
            pldr_gen_finish(g, why, &ev);
        }
        if (why == PLDR_FINISH_STOP && id == p.eos_id && !p.ignore_eos)
            break; /* [END] is not fed */
        if (why == PLDR_FINISH_STOP)
            break; /* nor is the token that completed a stop string */
        r.pending_id = id;
        next = id;
        feed = &next;
        n_feed = 1;
    }
    const double t_end = pldr_now();
    if (r.n_generated == 0)
        t_first = t_end;
    r.finish = why;
    r.t_prefill_s = t_first - t0;
    r.t_decode_s = t_end - t_first;
    if (st == PLDR_OK && p.out_logits && have)
        memcpy(p.out_logits, have, (size_t)V * sizeof *have);
    free(logits);
    pldr_gen_free(g);
    if (res)
        *res = r;
    return st;
}

pldr_status pldr_generate_warmup(pldr_context *ctx, int n_prompt)
{
    if (!ctx)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_generate_warmup: NULL context");
    const pldr_config *cfg = pldr_model_config(pldr_context_model(ctx));
    if (pldr_context_n_ctx(ctx) < 2)
        return PLDR_OK;
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    if (!logits)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    /* the prompt's length: the launch shapes of a prefill depend on it */
    const int n = n_prompt < 1 ? 1 : n_prompt > pldr_context_n_ctx(ctx) - 1 ? pldr_context_n_ctx(ctx) - 1 : n_prompt;
    int32_t *ids = calloc((size_t)n, sizeof *ids), next;
    if (!ids) {
        free(logits);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    for (int i = 0; i < n; i++)
        ids[i] = i % cfg->vocab_size;
    pldr_context_reset(ctx);
    /* both forms: with the logits read back, and greedy on the device */
    pldr_status st = pldr_eval(ctx, ids, n, logits, 0);
    if (st == PLDR_OK)
        st = pldr_eval(ctx, ids, 1, logits, 0);
    pldr_context_reset(ctx);
    if (st == PLDR_OK)
        st = pldr_eval_greedy(ctx, ids, n, &next);
    if (st == PLDR_OK)
        st = pldr_eval_greedy(ctx, ids, 1, &next);
    pldr_context_reset(ctx);
    free(ids);
    free(logits);
    return st;
}

pldr_status pldr_generate(pldr_context *ctx, const pldr_tokenizer *tok, const char *prompt, size_t prompt_len,
                          const pldr_generate_params *p, pldr_token_fn cb, void *user, pldr_generate_result *res)
{
    if (res) {
        memset(res, 0, sizeof *res);
        res->pending_id = -1;
    }
    if (!ctx || !tok || (!prompt && prompt_len > 0))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_generate: NULL argument");
    int32_t *ids = NULL;
    size_t n = 0;
    pldr_status st = pldr_tokenize(tok, prompt ? prompt : "", prompt_len, &ids, &n);
    if (st != PLDR_OK)
        return st;
    if (n == 0 || n > (size_t)pldr_context_n_ctx(ctx)) {
        free(ids);
        return n == 0 ? pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "the prompt is empty after tokenization")
                      : pldr_fail(PLDR_ERR_CONTEXT_FULL, "the prompt is %zu tokens, more than the context of %d tokens",
                                  n, pldr_context_n_ctx(ctx));
    }
    st = pldr_generate_ids(ctx, tok, ids, (int)n, NULL, p, cb, user, res);
    free(ids);
    return st;
}
