/* Greedy decoding enqueues the step after the one it returns (see
 * pldr_eval_greedy in src/engine/forward.c). These tests run the same sequences of
 * calls on a context with that look-ahead and on one without it
 * (pldr_context_params.pipeline = 0, which PLDR_PIPELINE=0 sets) and require
 * identical tokens, logits, positions and states, in particular when the look-ahead step is thrown away: a token other
 * than the one returned, a logits eval, a state read, a reset.
 *
 * Model: $PLDR_MODEL (the bundled model in `make check`). */
#include "pldr.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>

enum { STEPS = 12 };

typedef struct pair {
    pldr_context *ahead, *plain;
} pair;

static int new_pair(pldr_model *m, pldr_cache_mode mode, pair *p)
{
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = mode;
    cp.n_ctx = 64;
    cp.pipeline = 1;
    pldr_status a = pldr_context_new(m, &cp, &p->ahead);
    cp.pipeline = 0;
    pldr_status b = pldr_context_new(m, &cp, &p->plain);
    return a == PLDR_OK && b == PLDR_OK;
}

static void free_pair(pair *p)
{
    pldr_context_free(p->ahead);
    pldr_context_free(p->plain);
}

/* Greedy steps on both contexts feeding back each token; 1 when every token
 * and position agrees. tok holds the last token fed on entry and the last
 * returned on exit. */
static int greedy_both(pair *p, int steps, int32_t *tok)
{
    int same = 1;
    for (int i = 0; i < steps; i++) {
        int32_t a = -1, b = -2;
        if (pldr_eval_greedy(p->ahead, tok, 1, &a) != PLDR_OK || pldr_eval_greedy(p->plain, tok, 1, &b) != PLDR_OK)
            return 0;
        same = same && a == b && pldr_context_n_past(p->ahead) == pldr_context_n_past(p->plain);
        *tok = b;
    }
    return same;
}

static int logits_equal(pair *p, int32_t tok, int vocab)
{
    float *la = malloc((size_t)vocab * sizeof(float)), *lb = malloc((size_t)vocab * sizeof(float));
    int ok = la && lb && pldr_eval(p->ahead, &tok, 1, la, 0) == PLDR_OK &&
             pldr_eval(p->plain, &tok, 1, lb, 0) == PLDR_OK && memcmp(la, lb, (size_t)vocab * sizeof(float)) == 0;
    free(la);
    free(lb);
    return ok;
}

static void run_mode(pldr_model *m, pldr_cache_mode mode, const char *name)
{
    const pldr_config *cf = pldr_model_config(m);
    pair p;
    if (!tap_ok(new_pair(m, mode, &p), "%s: two contexts", name)) {
        tap_diag("%s", pldr_last_error());
        return;
    }
    const int32_t prompt[] = {5, 17, 230, 1024 % cf->vocab_size, 99};
    int32_t a = -1, b = -2;
    tap_ok(pldr_eval_greedy(p.ahead, prompt, 5, &a) == PLDR_OK &&
               pldr_eval_greedy(p.plain, prompt, 5, &b) == PLDR_OK && a == b,
           "%s: the prefill's greedy token agrees", name);
    int32_t tok = b;
    tap_ok(greedy_both(&p, STEPS, &tok), "%s: %d greedy steps agree (tokens and positions)", name, STEPS);

    /* a token other than the one returned: the step ahead is discarded */
    tok = (tok + 1) % cf->vocab_size;
    tap_ok(greedy_both(&p, 1, &tok) && greedy_both(&p, 4, &tok),
           "%s: feeding another token than the one returned, then more steps, agree", name);

    /* a logits eval after greedy steps */
    tap_ok(logits_equal(&p, tok, cf->vocab_size), "%s: logits after greedy steps are identical", name);
    tap_ok(greedy_both(&p, 3, &tok), "%s: greedy steps after a logits eval agree", name);

    /* the state excludes the step ahead */
    pldr_state sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    int got = pldr_context_get_state(p.ahead, &sa) == PLDR_OK && pldr_context_get_state(p.plain, &sb) == PLDR_OK;
    const size_t kv = (size_t)cf->n_layers * (size_t)sa.n_past * (size_t)cf->d_model * sizeof(float);
    tap_ok(got && sa.n_past == sb.n_past && sa.n_past == pldr_context_n_past(p.plain) &&
               memcmp(sa.tokens, sb.tokens, (size_t)sa.n_past * sizeof(int32_t)) == 0 &&
               (mode == PLDR_CACHE_NONE || (memcmp(sa.k, sb.k, kv) == 0 && memcmp(sa.v, sb.v, kv) == 0)),
           "%s: states agree (n_past %d, tokens, K and V)", name, sa.n_past);
    pldr_state_free(&sa);
    pldr_state_free(&sb);
    tap_ok(greedy_both(&p, 3, &tok), "%s: greedy steps after reading the state agree", name);

    /* up to the end of the context: no step ahead past n_ctx */
    const int left = pldr_context_n_ctx(p.plain) - pldr_context_n_past(p.plain);
    tap_ok(greedy_both(&p, left, &tok) && pldr_context_n_past(p.ahead) == pldr_context_n_ctx(p.ahead),
           "%s: greedy steps up to the full context (%d more) agree", name, left);
    int32_t over = -1;
    tap_ok(pldr_eval_greedy(p.ahead, &tok, 1, &over) == PLDR_ERR_CONTEXT_FULL,
           "%s: one step more is refused with PLDR_ERR_CONTEXT_FULL", name);

    /* a reset discards the step ahead too */
    pldr_context_reset(p.ahead);
    pldr_context_reset(p.plain);
    tap_ok(pldr_eval_greedy(p.ahead, prompt, 3, &a) == PLDR_OK &&
               pldr_eval_greedy(p.plain, prompt, 3, &b) == PLDR_OK && a == b && (tok = b, greedy_both(&p, 5, &tok)),
           "%s: after a reset, prefill and greedy steps agree", name);
    free_pair(&p);
}

int main(void)
{
    const char *dir = getenv("PLDR_MODEL");
    if (!dir) {
        tap_skip(1, "PLDR_MODEL is not set");
        return tap_done();
    }
    pldr_model *m = NULL;
    if (!tap_ok(pldr_model_load(dir, NULL, &m) == PLDR_OK, "the model loads")) {
        tap_diag("%s", pldr_last_error());
        return tap_done();
    }
    run_mode(m, PLDR_CACHE_KVG, "kvg");
    run_mode(m, PLDR_CACHE_KV, "kv");
    run_mode(m, PLDR_CACHE_NONE, "none");
    pldr_model_free(m);
    return tap_done();
}
