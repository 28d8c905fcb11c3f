/* Checks of pldr_eval_batch on one checkpoint (run by tests/cli/test_batch.py on
 * random checkpoints): every sequence's logits in every batched step against
 * the same sequence run alone in a context of its own, with sequences that
 * start and finish at different times, reused slots, shared G-caches and
 * per-sequence states. Prints TAP lines (no plan: the driver counts).
 *
 *   batch_check MODEL_DIR f32|f16|bf16|q8_0|q4_0 TOL [--refuse]
 *   batch_check MODEL_DIR DTYPE TOL --dump kv|kvg OUT
 *
 * --dump runs one short schedule of batched steps and writes what they gave
 * to OUT for another device's run to be compared with (tests/parity/test_oclgrind.py
 * runs it under the simulator and on the default device): three sequences
 * with prompts of 3, 5 and 8 tokens prefilled in one call, three decode steps
 * of the three together with logits, one of two of them, then two greedy
 * steps of the three (device argmax, no logits) fed their own tokens. OUT
 * holds the float32 logits of every row of the logits steps, then the int32
 * greedy tokens. */
#include "pldr.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_test;
static int n_fail;

static void ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s %d - ", cond ? "ok" : "not ok", ++n_test);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!cond)
        n_fail++;
}

static pldr_model *model;
static int V;
static double tol;
static unsigned rng = 12345;

static int32_t rand_id(void)
{
    rng = rng * 1103515245u + 12345u;
    return (int32_t)((rng >> 8) % (unsigned)V);
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const float *b, int n)
{
    double num = 0.0, den = 0.0;
    for (int i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - (double)b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

static pldr_context *new_ctx(pldr_cache_mode mode, int n_seq, pldr_shared_g sg)
{
    pldr_context_params cp = pldr_context_default_params();
    cp.cache_mode = mode;
    cp.n_ctx = 48;
    cp.n_seq = n_seq;
    cp.shared_g = sg;
    pldr_context *c = NULL;
    if (pldr_context_new(model, &cp, &c) != PLDR_OK) {
        fprintf(stderr, "context: %s\n", pldr_last_error());
        return NULL;
    }
    return c;
}

/* A schedule: sequence i of slot s has a prompt of len[i] tokens, starts at
 * step start[i] and decodes steps[i] tokens (teacher-forced with its own
 * random ids, so that the run alone sees the same tokens). */
enum { MAXQ = 16, MAXT = 40 };
typedef struct job {
    int slot, start, len, steps;
    int32_t ids[MAXT];
} job;

/* Runs the jobs batched (external G g_lm for every sequence when given) and
 * alone; returns the worst relative error over every step of every job, or
 * -1 on a failure. */
static double run_jobs(pldr_cache_mode mode, int n_slots, job *jobs, int n_jobs, pldr_shared_g sg,
                       const float *g_lm, int *n_steps)
{
    pldr_context *bc = new_ctx(mode, n_slots, sg);
    if (!bc)
        return -1;
    if (g_lm && pldr_context_set_external_g(bc, NULL, NULL, g_lm) != PLDR_OK)
        return -1;
    float *want = malloc((size_t)V * sizeof(float));
    float *got = malloc((size_t)MAXQ * (size_t)V * sizeof(float));
    float *got_all[MAXQ][MAXT];
    memset(got_all, 0, sizeof got_all);
    int done[MAXQ] = {0}, pos[MAXQ] = {0};
    double worst = 0.0;
    *n_steps = 0;
    for (int step = 0;; step++) {
        pldr_batch_entry e[MAXQ];
        int which[MAXQ], n = 0, live = 0;
        for (int j = 0; j < n_jobs; j++) {
            job *jb = &jobs[j];
            if (done[j] || step < jb->start)
                continue;
            live = 1;
            if (pos[j] == 0) {
                pldr_seq_reset(bc, jb->slot);
                e[n] = (pldr_batch_entry){jb->slot, jb->ids, jb->len};
            } else {
                e[n] = (pldr_batch_entry){jb->slot, jb->ids + pos[j], 1};
            }
            which[n++] = j;
        }
        if (!live)
            break;
        if (n == 0)
            continue;
        int32_t greedy[MAXQ];
        if (pldr_eval_batch(bc, e, n, got, greedy) != PLDR_OK) {
            fprintf(stderr, "batch: %s\n", pldr_last_error());
            worst = -1;
            break;
        }
        (*n_steps)++;
        for (int i = 0; i < n; i++) {
            const int j = which[i];
            const int k = pos[j] == 0 ? 0 : pos[j] - jobs[j].len + 1;
            got_all[j][k] = malloc((size_t)V * sizeof(float));
            memcpy(got_all[j][k], got + (size_t)i * (size_t)V, (size_t)V * sizeof(float));
            pos[j] = pos[j] == 0 ? jobs[j].len : pos[j] + 1;
            if (pos[j] - jobs[j].len >= jobs[j].steps)
                done[j] = 1;
        }
    }
    /* the same jobs alone */
    for (int j = 0; j < n_jobs && worst >= 0; j++) {
        pldr_context *sc = new_ctx(mode, 1, PLDR_SHARED_G_NONE);
        if (!sc || (g_lm && pldr_context_set_external_g(sc, NULL, NULL, g_lm) != PLDR_OK)) {
            worst = -1;
            pldr_context_free(sc);
            break;
        }
        for (int k = 0; k <= jobs[j].steps && worst >= 0; k++) {
            pldr_status st = k == 0 ? pldr_eval(sc, jobs[j].ids, jobs[j].len, want, 0)
                                    : pldr_eval(sc, jobs[j].ids + jobs[j].len + k - 1, 1, want, 0);
            if (st != PLDR_OK || !got_all[j][k])
                worst = -1;
            else
                worst = fmax(worst, rel_err(got_all[j][k], want, V));
        }
        pldr_context_free(sc);
    }
    for (int j = 0; j < MAXQ; j++)
        for (int k = 0; k < MAXT; k++)
            free(got_all[j][k]);
    free(want);
    free(got);
    pldr_context_free(bc);
    return worst;
}

static void make_job(job *jb, int slot, int start, int len, int steps)
{
    jb->slot = slot;
    jb->start = start;
    jb->len = len;
    jb->steps = steps;
    for (int i = 0; i < MAXT; i++)
        jb->ids[i] = rand_id();
}

static const char *mode_name(pldr_cache_mode m)
{
    return m == PLDR_CACHE_KV ? "kv" : m == PLDR_CACHE_KVG ? "kvg" : "none";
}

static void check_mode(pldr_cache_mode mode)
{
    const int sizes[] = {2, 3, 8};
    for (int si = 0; si < 3; si++) {
        const int B = sizes[si];
        job jobs[MAXQ];
        for (int i = 0; i < B; i++)
            make_job(&jobs[i], i, 0, 2 + (i * 5) % 9, 6);
        int steps;
        double err = run_jobs(mode, B, jobs, B, PLDR_SHARED_G_NONE, NULL, &steps);
        ok(err >= 0 && err <= tol, "%s: B=%d, prompts of 2..10 tokens, 6 decode steps together: every step's logits "
           "equal the sequence alone (rel_err %.2g, tol %.0e, %d batch calls)", mode_name(mode), B, err, tol, steps);
    }
    /* continuous batching: 7 sequences through 3 slots, starting and ending
     * at different steps; a slot is reused once its sequence is done */
    job jobs[MAXQ];
    const int start[7] = {0, 0, 2, 5, 6, 9, 12}, slot[7] = {0, 1, 2, 1, 0, 2, 1}, steps[7] = {5, 4, 3, 5, 4, 6, 2};
    for (int i = 0; i < 7; i++)
        make_job(&jobs[i], slot[i], start[i], 1 + (i * 3) % 7, steps[i]);
    int n_steps;
    double err = run_jobs(mode, 3, jobs, 7, PLDR_SHARED_G_NONE, NULL, &n_steps);
    ok(err >= 0 && err <= tol, "%s: 7 sequences through 3 slots, prefills between decodes, slots reused: equal "
       "to each alone in a fresh context (rel_err %.2g)", mode_name(mode), err);
}

/* G-cache of a prompt run alone: [L, 3, H, dk, dk] -> G_LM [L, H, dk, dk] */
static float *prompt_g(const int32_t *ids, int n)
{
    const pldr_config *cf = pldr_model_config(model);
    const size_t hdd = (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim;
    pldr_context *c = new_ctx(PLDR_CACHE_KVG, 1, PLDR_SHARED_G_NONE);
    float *all = malloc((size_t)cf->n_layers * 3 * hdd * sizeof(float));
    float *g = malloc((size_t)cf->n_layers * hdd * sizeof(float));
    if (!c || pldr_eval(c, ids, n, NULL, 0) != PLDR_OK || pldr_context_get_gcache(c, all) != PLDR_OK) {
        free(g);
        g = NULL;
    } else {
        for (int l = 0; l < cf->n_layers; l++)
            memcpy(g + (size_t)l * hdd, all + ((size_t)l * 3 + 2) * hdd, hdd * sizeof(float));
    }
    free(all);
    pldr_context_free(c);
    return g;
}

static void check_shared_g(void)
{
    int32_t first[8];
    for (int i = 0; i < 8; i++)
        first[i] = rand_id();
    float *g = prompt_g(first, 8);
    job jobs[4];
    for (int i = 0; i < 4; i++)
        make_job(&jobs[i], i, i / 2, 3 + i, 4);
    int steps;
    double err = g ? run_jobs(PLDR_CACHE_KVG, 4, jobs, 4, PLDR_SHARED_G_EXTERNAL, g, &steps) : -1;
    ok(err >= 0 && err <= tol, "shared external G (4 sequences): equal to contexts with the same external G "
       "(rel_err %.2g)", err);

    /* the first prompt's G-cache: sequence 1's logits as with that G external */
    pldr_context *bc = new_ctx(PLDR_CACHE_KVG, 2, PLDR_SHARED_G_FIRST);
    pldr_context *sc = new_ctx(PLDR_CACHE_KVG, 1, PLDR_SHARED_G_NONE);
    float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
    int good = bc && sc && g && pldr_context_set_external_g(sc, NULL, NULL, g) == PLDR_OK;
    pldr_batch_entry e0 = {0, first, 8}, e1 = {1, jobs[3].ids, 5};
    good = good && pldr_eval_batch(bc, &e0, 1, a, NULL) == PLDR_OK && pldr_eval_batch(bc, &e1, 1, a, NULL) == PLDR_OK &&
           pldr_eval(sc, jobs[3].ids, 5, b, 0) == PLDR_OK;
    double e_first = good ? rel_err(a, b, V) : -1;
    /* and not what its own prompt gives */
    pldr_context *own = new_ctx(PLDR_CACHE_KVG, 1, PLDR_SHARED_G_NONE);
    good = good && own && pldr_eval(own, jobs[3].ids, 5, b, 0) == PLDR_OK;
    double e_own = good ? rel_err(a, b, V) : -1;
    ok(good && e_first <= tol && e_own > 100 * tol,
       "shared first G: a later prompt uses the first prompt's G-cache (rel_err %.2g against that G external, %.2g "
       "against its own G)", e_first, e_own);
    pldr_context_free(own);
    pldr_context_free(bc);
    pldr_context_free(sc);
    free(a);
    free(b);
    free(g);
}

static void check_state(void)
{
    pldr_context *c = new_ctx(PLDR_CACHE_KVG, 3, PLDR_SHARED_G_NONE);
    job jobs[3];
    for (int i = 0; i < 3; i++)
        make_job(&jobs[i], i, 0, 4 + i, 3);
    float *l1 = malloc(3 * (size_t)V * sizeof(float)), *l2 = malloc(3 * (size_t)V * sizeof(float));
    pldr_batch_entry e[3];
    for (int i = 0; i < 3; i++)
        e[i] = (pldr_batch_entry){i, jobs[i].ids, jobs[i].len};
    int good = c && pldr_eval_batch(c, e, 3, NULL, NULL) == PLDR_OK;
    pldr_state st;
    memset(&st, 0, sizeof st);
    good = good && pldr_seq_get_state(c, 1, &st) == PLDR_OK && st.n_past == jobs[1].len;
    for (int i = 0; i < 3; i++)
        e[i] = (pldr_batch_entry){i, jobs[i].ids + jobs[i].len, 1};
    good = good && pldr_eval_batch(c, e, 3, l1, NULL) == PLDR_OK;
    /* sequence 1 back to the saved state, the others reset and prefilled again */
    pldr_seq_reset(c, 1);
    good = good && pldr_seq_n_past(c, 1) == 0 && pldr_seq_set_state(c, 1, &st) == PLDR_OK &&
           pldr_seq_n_past(c, 1) == jobs[1].len;
    for (int i = 0; i < 3; i += 2) {
        pldr_seq_reset(c, i);
        pldr_batch_entry p = {i, jobs[i].ids, jobs[i].len};
        good = good && pldr_eval_batch(c, &p, 1, NULL, NULL) == PLDR_OK;
    }
    good = good && pldr_eval_batch(c, e, 3, l2, NULL) == PLDR_OK;
    double err = good ? rel_err(l2, l1, 3 * V) : -1;
    ok(good && err == 0.0, "per-sequence state: saved, reset, restored, the next batched step's logits are "
       "identical (rel_err %.2g)", err);
    pldr_state_free(&st);
    free(l1);
    free(l2);
    pldr_context_free(c);
}

/* the scheduler: tokens of greedy requests as alone, a full queue, a
 * cancelled waiting request, a request cancelled by its callback */
typedef struct sreq {
    int32_t toks[16];
    int n, stop_after, done;
    pldr_generate_result res;
} sreq;

static int s_on_token(const pldr_token_event *ev, void *user)
{
    sreq *r = user;
    if (ev->id >= 0 && r->n < 16)
        r->toks[r->n++] = ev->id;
    return r->stop_after > 0 && r->n >= r->stop_after;
}

static void s_on_done(const pldr_generate_result *res, void *user)
{
    sreq *r = user;
    r->res = *res;
    r->done++;
}

static void check_scheduler(void)
{
    pldr_context *c = new_ctx(PLDR_CACHE_KVG, 2, PLDR_SHARED_G_NONE);
    pldr_scheduler *s = NULL;
    int good = c && pldr_scheduler_new(c, NULL, 2, 4, &s) == PLDR_OK;
    enum { NR = 5 };
    sreq rq[NR];
    int32_t prompts[NR][6];
    memset(rq, 0, sizeof rq);
    uint64_t ids[NR] = {0};
    pldr_status st[NR];
    for (int i = 0; i < NR && good; i++) {
        for (int k = 0; k < 6; k++)
            prompts[i][k] = rand_id();
        pldr_request r;
        memset(&r, 0, sizeof r);
        r.prompt_ids = prompts[i];
        r.n_prompt = 3 + i % 3;
        r.gen = pldr_generate_default_params();
        r.gen.max_tokens = 6;
        r.gen.ignore_eos = 1; /* every request runs to its length */
        r.on_token = s_on_token;
        r.on_done = s_on_done;
        r.user = &rq[i];
        rq[i].stop_after = i == 3 ? 2 : 0;
        st[i] = pldr_scheduler_submit(s, &r, &ids[i]);
    }
    int active = -1, queued = -1;
    if (good)
        pldr_scheduler_stats(s, &active, &queued);
    ok(good && st[0] == PLDR_OK && st[3] == PLDR_OK && st[4] == PLDR_ERR_BUSY && queued == 4 && active == 0,
       "scheduler: 4 requests queued, the 5th refused with PLDR_ERR_BUSY (%s)", good ? pldr_status_string(st[4]) : "-");
    if (good)
        pldr_scheduler_cancel(s, ids[2]);
    for (int step = 0; good && step < 64; step++) {
        if (pldr_scheduler_step(s, 0) != PLDR_OK)
            good = 0;
        pldr_scheduler_stats(s, &active, &queued);
        if (active == 0 && queued == 0)
            break;
    }
    ok(good && rq[2].done == 1 && rq[2].res.finish == PLDR_FINISH_CANCELLED && rq[2].n == 0,
       "scheduler: a cancelled waiting request ends cancelled without tokens");
    ok(good && rq[3].done == 1 && rq[3].res.finish == PLDR_FINISH_CANCELLED && rq[3].n == 2,
       "scheduler: a request whose callback returns non-zero ends cancelled after 2 tokens (%d)", rq[3].n);
    /* the others: 6 greedy tokens each (never the end token), those of the prompt alone */
    int same = good;
    const int eos = pldr_model_config(model)->eos_token_id;
    float *lg = malloc((size_t)V * sizeof *lg);
    for (int i = 0; i < 2 && same; i++) {
        pldr_context *one = new_ctx(PLDR_CACHE_KVG, 1, PLDR_SHARED_G_NONE);
        same = one && lg && rq[i].done == 1 && rq[i].res.finish == PLDR_FINISH_LENGTH && rq[i].n == 6 &&
               pldr_eval(one, prompts[i], 3 + i % 3, lg, 0) == PLDR_OK;
        for (int k = 0; k < 6 && same; k++) {
            int32_t next = -1;
            for (int v = 0; v < V; v++)
                if (v != eos && (next < 0 || lg[v] > lg[next]))
                    next = v;
            same = rq[i].toks[k] == next;
            if (k < 5)
                same = same && pldr_eval(one, &next, 1, lg, 0) == PLDR_OK;
        }
        pldr_context_free(one);
    }
    free(lg);
    ok(same, "scheduler: two requests decoded together give the greedy tokens of each alone");
    pldr_scheduler_free(s);
    pldr_context_free(c);
}

static void check_refusal(void)
{
    pldr_context_params cp = pldr_context_default_params();
    cp.n_seq = PLDR_MAX_SEQ;
    pldr_context *c = NULL;
    pldr_status st = pldr_context_new(model, &cp, &c);
    const char *msg = pldr_last_error();
    ok(st == PLDR_ERR_DEVICE_MEMORY && strstr(msg, "sequences of") && strstr(msg, "MiB"),
       "%d sequences of the whole context refused: %s", PLDR_MAX_SEQ, msg);
    pldr_context_free(c);
    cp.n_seq = PLDR_MAX_SEQ + 1;
    st = pldr_context_new(model, &cp, &c);
    ok(st == PLDR_ERR_INVALID_ARGUMENT, "%d sequences refused as an argument: %s", PLDR_MAX_SEQ + 1,
       pldr_last_error());
    pldr_context_free(c);
}

/* --dump: see the top of the file. */
static int dump_schedule(pldr_cache_mode mode, const char *out)
{
    enum { B = 3, STEPS = 4, GREEDY = 2 };
    const int len[B] = {3, 5, 8};
    int32_t ids[B][16];
    for (int s = 0; s < B; s++)
        for (int i = 0; i < 16; i++)
            ids[s][i] = rand_id();
    pldr_context *c = new_ctx(mode, B, PLDR_SHARED_G_NONE);
    float *lg = malloc((size_t)B * (size_t)V * sizeof(float));
    FILE *f = fopen(out, "wb");
    int rc = !c || !lg || !f;
    if (!f)
        fprintf(stderr, "batch_check: cannot write %s\n", out);
    pldr_batch_entry e[B];
    for (int step = 0; step <= STEPS + GREEDY && !rc; step++) {
        int n = step == STEPS ? B - 1 : B; /* one step leaves the last sequence out */
        for (int s = 0; s < n; s++)
            e[s] = step == 0 ? (pldr_batch_entry){s, ids[s], len[s]}
                             : (pldr_batch_entry){s, &ids[s][len[s] + step - 1], 1};
        int32_t greedy[B];
        const int with_logits = step <= STEPS;
        if (pldr_eval_batch(c, e, n, with_logits ? lg : NULL, greedy) != PLDR_OK) {
            fprintf(stderr, "batch_check: step %d: %s\n", step, pldr_last_error());
            rc = 1;
        } else if (with_logits) {
            rc = fwrite(lg, sizeof(float), (size_t)n * (size_t)V, f) != (size_t)n * (size_t)V;
        } else {
            rc = fwrite(greedy, sizeof(int32_t), (size_t)n, f) != (size_t)n;
            for (int s = 0; s < n; s++) /* the next step feeds each sequence its greedy token */
                ids[s][len[s] + step] = greedy[s];
        }
    }
    if (f && fclose(f) != 0)
        rc = 1;
    free(lg);
    pldr_context_free(c);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: batch_check MODEL_DIR f32|f16|bf16|q8_0|q4_0 TOL [--refuse | --dump kv|kvg OUT]\n");
        return 2;
    }
    pldr_model_params mp = pldr_model_default_params();
    if (pldr_dtype_from_name(argv[2], &mp.weight_dtype) != PLDR_OK) {
        fprintf(stderr, "batch_check: %s\n", pldr_last_error());
        return 2;
    }
    tol = atof(argv[3]);
    if (pldr_model_load(argv[1], &mp, &model) != PLDR_OK) {
        printf("not ok 1 - loading %s: %s\n", argv[1], pldr_last_error());
        return 1;
    }
    V = pldr_model_config(model)->vocab_size;
    if (argc > 6 && strcmp(argv[4], "--dump") == 0) {
        const int rc = dump_schedule(strcmp(argv[5], "kv") == 0 ? PLDR_CACHE_KV : PLDR_CACHE_KVG, argv[6]);
        pldr_model_free(model);
        return rc;
    }
    if (argc > 4 && strcmp(argv[4], "--refuse") == 0) {
        check_refusal();
    } else {
        check_mode(PLDR_CACHE_KVG);
        check_mode(PLDR_CACHE_KV);
        if (pldr_model_config(model)->g_type == PLDR_G_LEARNED)
            check_shared_g();
        check_state();
        check_scheduler();
    }
    pldr_model_free(model);
    return n_fail ? 1 : 0;
}
