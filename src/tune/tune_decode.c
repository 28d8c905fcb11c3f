/* Per-device tuning of the engine's decode work-group shapes (pldr.h, "Tuning"):
 * a coordinate search around the device's defaults, each candidate timed on
 * greedy decode steps of the model in a child process (src/tune/child.c), the
 * choice stored as PLDR_WG items in the cache directory. */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tune/child.h"
#include "model/model.h"
#include "formats/tuning_file.h"
#include "common/env.h"
#include "common/util.h"

#define DECODE_MARGIN 0.03 /* a candidate must be this much faster (pldr.h) */
#define MAX_CANDIDATES 32
#define MIN_TIMED_S 0.5 /* seconds of timed decode steps per candidate, at least */
#define MAX_RUNS 50

static const char *dtype_name(pldr_dtype d) { return pldr_dtype_name(d); }

/* ------------------------------------------------------------ the file */

pldr_status pldr_decode_tuning_describe(const pldr_device_info *info, const char *cache_dir, char **path,
                                        char **summary)
{
    *summary = NULL;
    *path = pldr_decode_tuning_path(info, cache_dir);
    if (!*path) {
        *summary = pldr_strdup("no cache directory: no decode tuning file");
        return *summary ? PLDR_OK : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    json_t *root = NULL;
    pldr_status st = pldr_decode_tuning_read(*path, info, &root);
    if (st != PLDR_OK)
        return st;
    char buf[2048];
    size_t n = 0;
    if (!root) {
        snprintf(buf, sizeof buf, "no decode tuning file: the device's default work-group shapes apply");
    } else {
        json_t *m = json_object_get(root, "model");
        n += (size_t)snprintf(buf, sizeof buf, "decode work-group shapes for models of d_model %d, %d layers, "
                                               "%d heads of %d, d_ff %d, vocab %d:",
                              (int)json_integer_value(json_object_get(m, "d_model")),
                              (int)json_integer_value(json_object_get(m, "n_layers")),
                              (int)json_integer_value(json_object_get(m, "n_heads")),
                              (int)json_integer_value(json_object_get(m, "head_dim")),
                              (int)json_integer_value(json_object_get(m, "d_ff")),
                              (int)json_integer_value(json_object_get(m, "vocab_size")));
        const char *key;
        json_t *val;
        json_object_foreach(json_object_get(root, "dtypes"), key, val) {
            const char *wg = json_string_value(json_object_get(val, "work_groups"));
            const double before = json_number_value(json_object_get(val, "tok_s_defaults"));
            const double after = json_number_value(json_object_get(val, "tok_s"));
            if (n < sizeof buf)
                n += (size_t)snprintf(buf + n, sizeof buf - n, "\n  %s: %s (%.1f tok/s against %.1f with the "
                                                                "defaults)",
                                      key, *wg ? wg : "the defaults", after, before);
        }
        json_decref(root);
    }
    *summary = pldr_strdup(buf);
    return *summary ? PLDR_OK : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
}

/* ------------------------------------------------------------ measuring */

typedef struct shape {
    int gemv, rows, wrows, att, pf, attpre;
} shape;

/* What a measuring child reports. */
typedef struct decode_reply {
    pldr_child_head head;
    pldr_device_info info;
    pldr_config cfg;
    shape eff;      /* the shapes the model was built with */
    int multi_lane; /* rows have several lanes (GPU form) */
    int prompt;     /* prompt tokens used */
    double tok_s;   /* fastest run */
    uint64_t tokens; /* hash of the decoded tokens */
} decode_reply;

typedef struct decode_job {
    const char *model_dir;
    const pldr_tune_decode_params *p;
    const char *items;
} decode_job;

static void shape_items(const shape *s, int multi_lane, char *buf, size_t size)
{
    if (multi_lane)
        snprintf(buf, size, "gemv=%d,rows=%d,wrows=%d,att=%d,attpre=%d", s->gemv, s->rows, s->wrows, s->att,
                 s->attpre);
    else
        snprintf(buf, size, "gemv=%d,rows=%d,att=%d,pf=%d,attpre=%d", s->gemv, s->rows, s->att, s->pf, s->attpre);
}

/* Hashes each picked token into *(uint64_t *)user. */
static int hash_token(const pldr_token_event *ev, void *user)
{
    if (ev->id >= 0)
        *(uint64_t *)user = pldr_fnv1a(*(uint64_t *)user, &ev->id, sizeof ev->id);
    return 0;
}

static pldr_status child_decode(void *ctx, void *out)
{
    const decode_job *jb = ctx;
    decode_reply *rep = out;
    const pldr_tune_decode_params *p = jb->p;
    pldr_model_params mp = pldr_model_default_params();
    mp.device = p->device;
    mp.weight_dtype = p->dtype;
    mp.cache_dir = p->cache_dir;
    mp.work_groups = jb->items;
    pldr_model *m = NULL;
    pldr_status st = pldr_model_load(jb->model_dir, &mp, &m);
    if (st != PLDR_OK)
        return st;
    rep->info = m->ocl.info;
    rep->cfg = m->cfg;
    rep->eff = (shape){m->gemv_wg, m->gemv_rows, m->gemv_wrows, m->att_wg, m->gemv_pf, m->att_preload};
    rep->multi_lane = m->gemv_rows < m->gemv_wg;
    const int n_ctx = m->cfg.max_position;
    if (n_ctx < p->steps + 2) {
        pldr_model_free(m);
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "the model's context (%d) is too short for %d decode steps", n_ctx,
                         p->steps);
    }
    const int prompt = p->prompt < n_ctx - p->steps - 1 ? p->prompt : n_ctx - p->steps - 1;
    rep->prompt = prompt;
    pldr_context_params cp = pldr_context_default_params();
    cp.n_ctx = prompt + p->steps + 1;
    pldr_context *c = NULL;
    int32_t *ids = malloc((size_t)prompt * sizeof *ids);
    if (!ids)
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    if (st == PLDR_OK)
        st = pldr_context_new(m, &cp, &c);
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; ids && i < prompt; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)m->cfg.vocab_size);
    }
    /* run 0 is a warm-up: some drivers (PoCL) finish building a kernel on
     * its first launch; on a fast device, runs go on until MIN_TIMED_S of
     * decoding were timed (at most MAX_RUNS) */
    double timed = 0.0;
    for (int r = 0; st == PLDR_OK && (r <= p->reps || (timed < MIN_TIMED_S && r < MAX_RUNS)); r++) {
        pldr_context_reset(c);
        int32_t next = 0;
        if ((st = pldr_eval_greedy(c, ids, prompt, &next)) != PLDR_OK)
            break;
        /* the steps of pldr_generate, greedy, every one run (no [END]) */
        pldr_generate_params gp = pldr_generate_default_params();
        gp.max_tokens = p->steps;
        gp.eos_id = PLDR_EOS_NONE;
        uint64_t h = PLDR_FNV_INIT;
        const double t0 = pldr_now();
        st = pldr_generate_ids(c, NULL, &next, 1, NULL, &gp, hash_token, &h, NULL);
        const double dt = pldr_now() - t0;
        if (st != PLDR_OK)
            break;
        if (r > 0)
            timed += dt;
        if (r > 0 && h != rep->tokens)
            st = pldr_fail(PLDR_ERR_OPENCL, "two runs of the same steps decoded different tokens");
        rep->tokens = h;
        if (r > 0 && dt > 0 && p->steps / dt > rep->tok_s)
            rep->tok_s = p->steps / dt;
    }
    free(ids);
    pldr_context_free(c);
    pldr_model_free(m);
    return st;
}

typedef struct search {
    const char *model_dir;
    const pldr_tune_decode_params *p;
    pldr_tune_decode_candidate cand[MAX_CANDIDATES];
    shape shapes[MAX_CANDIDATES];
    int n;
    decode_reply base;
} search;

static void logf_(const search *se, const char *fmt, ...) PLDR_PRINTF(2, 3);
static void logf_(const search *se, const char *fmt, ...)
{
    if (!se->p->log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    se->p->log(line, se->p->log_user);
}

/* Measures the shape s (NULL: the defaults) unless an equal one was; returns
 * its index in se->cand, or -1 when it duplicates one or the list is full. */
static int try_shape(search *se, const shape *s, pldr_status *st)
{
    *st = PLDR_OK;
    if (se->n == MAX_CANDIDATES)
        return -1;
    char items[PLDR_WG_ITEMS_MAX] = "";
    if (s) {
        shape_items(s, se->base.multi_lane, items, sizeof items);
        for (int i = 0; i < se->n; i++)
            if (strcmp(se->cand[i].items, items) == 0)
                return -1;
    }
    decode_job jb = {se->model_dir, se->p, items};
    decode_reply rep;
    char died[128];
    logf_(se, "[%d] %s", se->n + 1, s ? items : "the device's defaults");
    if ((*st = pldr_child_run(child_decode, &jb, &rep, sizeof rep, 600.0, died, sizeof died)) != PLDR_OK)
        return -1;
    pldr_tune_decode_candidate *c = &se->cand[se->n];
    memset(c, 0, sizeof *c);
    if (!s) { /* the defaults must work */
        if (died[0] || rep.head.status != PLDR_OK) {
            *st = died[0] ? pldr_fail(PLDR_ERR_OPENCL, "measuring the defaults: %s", died)
                          : pldr_fail((pldr_status)rep.head.status, "%s", rep.head.message);
            return -1;
        }
        se->base = rep;
        shape_items(&rep.eff, rep.multi_lane, c->items, sizeof c->items);
    } else {
        /* the model clamps shapes to the device: an equal effective shape
         * is the same candidate */
        char eff[PLDR_WG_ITEMS_MAX];
        shape_items(&rep.eff, rep.multi_lane, eff, sizeof eff);
        for (int i = 0; !died[0] && rep.head.status == PLDR_OK && i < se->n; i++)
            if (strcmp(se->cand[i].items, eff) == 0) {
                logf_(se, "    the device makes it %s, measured already", eff);
                return -1;
            }
        snprintf(c->items, sizeof c->items, "%s", items);
        if (died[0])
            snprintf(c->note, sizeof c->note, "dropped: %s", died);
        else if (rep.head.status != PLDR_OK)
            snprintf(c->note, sizeof c->note, "dropped: %.140s", rep.head.message);
        else if (rep.tokens != se->base.tokens)
            snprintf(c->note, sizeof c->note, "dropped: decoded other tokens than the defaults");
        else
            c->tok_s = rep.tok_s;
    }
    if (!s)
        c->tok_s = rep.tok_s;
    se->shapes[se->n] = s ? *s : rep.eff;
    if (c->note[0])
        logf_(se, "    %s", c->note);
    else
        logf_(se, "    %.1f tok/s", c->tok_s);
    return se->n++;
}

/* The keys searched, in order: on the multi-lane (GPU) form rows, wrows,
 * gemv, att and attpre; on the one-lane form gemv (= rows), att, pf and
 * attpre. */
typedef enum key { K_ROWS, K_WROWS, K_GEMV, K_GEMV_ROWS, K_ATT, K_PF, K_ATTPRE } key;
static const key multi_lane_keys[] = {K_ROWS, K_WROWS, K_GEMV, K_ATT, K_ATTPRE};
static const key one_lane_keys[] = {K_GEMV_ROWS, K_ATT, K_PF, K_ATTPRE};

/* The values tried for key k around the current best b, the others fixed. */
static int alternatives(const search *se, const shape *b, key k, shape *out)
{
    const int lim = (int)(se->base.info.max_work_group_size ? se->base.info.max_work_group_size : 64);
    int n = 0;
    shape s = *b;
    switch (k) {
    case K_ROWS: /* GEMV rows per work-group (lanes = gemv / rows) */
        for (int f = 0; f < 2; f++) {
            s.rows = f ? b->rows * 2 : b->rows / 2;
            if (s.rows >= 2 && s.rows < s.gemv)
                out[n++] = s;
        }
        break;
    case K_WROWS: /* rows per work-group of the output projections */
        for (int v = 1; v <= 8; v *= 2) {
            s.wrows = v;
            if (v != b->wrows && v < s.gemv)
                out[n++] = s;
        }
        break;
    case K_GEMV: /* work-group size, rows kept */
        for (int f = 0; f < 2; f++) {
            s.gemv = f ? b->gemv * 2 : b->gemv / 2;
            if (s.gemv >= 32 && s.gemv <= lim && s.rows < s.gemv && s.wrows < s.gemv)
                out[n++] = s;
        }
        break;
    case K_GEMV_ROWS: /* rows per work-group, one work-item each */
        for (int v = b->gemv >= 4 ? b->gemv / 4 : 1; v <= b->gemv * 2; v *= 2) {
            s.gemv = s.rows = v;
            if (v >= 8 && v <= lim && v != b->gemv)
                out[n++] = s;
        }
        break;
    case K_ATT: /* keys per attention work-group */
        for (int f = 0; f < 2; f++) {
            s.att = f ? b->att * 2 : b->att / 2;
            if (s.att >= 16 && s.att <= lim)
                out[n++] = s;
        }
        break;
    case K_PF: /* weight vectors a row loads before x is ready */
        for (int v = 1; v <= 4; v *= 2) {
            s.pf = v;
            if (v != b->pf)
                out[n++] = s;
        }
        break;
    case K_ATTPRE: /* the attention's loads before q is known, or not */
        s.attpre = !b->attpre;
        out[n++] = s;
        break;
    }
    return n;
}

static pldr_status write_result(const search *se, const pldr_tune_decode_result *res)
{
    json_t *root = NULL;
    pldr_status st = pldr_decode_tuning_read(res->path, &se->base.info, &root);
    json_t *dims = pldr_decode_tuning_dims(&se->base.cfg);
    if (st != PLDR_OK || !root || !json_equal(json_object_get(root, "model"), dims)) {
        /* a damaged file, none, or one for other dimensions: start afresh */
        pldr_clear_error();
        json_decref(root);
        root = json_pack("{s:s, s:i, s:{s:s, s:s, s:s}, s:O, s:{}}", "format", PLDR_DECODE_TUNING_FORMAT, "version",
                         PLDR_DECODE_TUNING_VERSION, "device", "name", se->base.info.name, "driver_version",
                         se->base.info.driver_version, "platform_version", se->base.info.platform_version, "model",
                         dims, "dtypes");
    }
    json_decref(dims);
    if (!root)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    json_t *cands = json_array();
    for (int i = 0; cands && i < se->n; i++)
        json_array_append_new(cands, json_pack("{s:s, s:f, s:s}", "work_groups", se->cand[i].items, "tok_s",
                                               se->cand[i].tok_s, "note", se->cand[i].note));
    char test[96];
    snprintf(test, sizeof test, "%d greedy steps after a %d-token prompt, KV+G cache, fastest of %d",
             se->p->steps, se->base.prompt, se->p->reps);
    json_t *entry = json_pack("{s:s, s:s, s:s, s:f, s:f, s:o}", "work_groups", res->chosen, "defaults",
                              res->defaults, "test", test, "tok_s_defaults", res->tok_s_defaults, "tok_s",
                              res->tok_s_chosen, "candidates", cands);
    if (!entry || json_object_set_new(json_object_get(root, "dtypes"), dtype_name(se->p->dtype), entry) != 0) {
        json_decref(root);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    char *dir = se->p->cache_dir ? pldr_strdup(se->p->cache_dir) : pldr_default_cache_dir();
    st = dir ? pldr_mkdir_p(dir) : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    free(dir);
    if (st == PLDR_OK) {
        const size_t len = strlen(text);
        text[len] = '\n'; /* json_dumps leaves room for the terminator, which becomes the newline */
        st = pldr_write_file_atomic(res->path, text, len + 1);
    }
    free(text);
    return st;
}

pldr_tune_decode_params pldr_tune_decode_default_params(void)
{
    pldr_tune_decode_params p;
    memset(&p, 0, sizeof p);
    p.dtype = PLDR_DTYPE_F32;
    p.prompt = 64;
    p.steps = 32;
    p.reps = 3;
    return p;
}

void pldr_tune_decode_result_free(pldr_tune_decode_result *r)
{
    if (!r)
        return;
    free(r->path);
    free(r->candidates);
    memset(r, 0, sizeof *r);
}

pldr_status pldr_tune_decode(const char *model_dir, const pldr_tune_decode_params *params,
                             pldr_tune_decode_result *result)
{
    pldr_clear_error();
    if (result)
        memset(result, 0, sizeof *result);
    pldr_tune_decode_params defaults = pldr_tune_decode_default_params();
    const pldr_tune_decode_params *p = params ? params : &defaults;
    if (!model_dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no model directory given");
    if (p->prompt < 1 || p->steps < 1 || p->reps < 1)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "decode tuning needs a prompt, steps and runs (>= 1 each)");
    if (p->cache_dir && !*p->cache_dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "tuning needs a cache directory");
    search *se = calloc(1, sizeof *se);
    if (!se)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    se->model_dir = model_dir;
    se->p = p;
    pldr_tune_decode_result res;
    memset(&res, 0, sizeof res);
    const double t0 = pldr_now();
    logf_(se, "tuning the decode work-group shapes for %s (%s weights): each candidate decodes %d steps %d times "
              "in a process of its own",
          model_dir, dtype_name(p->dtype), p->steps, p->reps);
    if (pldr_env_work_groups())
        logf_(se, "PLDR_WG is not applied while tuning (each candidate sets its own shapes); later loads apply "
                  "its items over the stored ones");
    pldr_status st;
    int best = try_shape(se, NULL, &st);
    if (st == PLDR_OK) {
        /* the defaults again: the first process also warms the device up
         * (clocks, driver caches), so its figure can be low */
        decode_job jb = {model_dir, p, ""};
        decode_reply rep;
        st = pldr_child_run_ok(child_decode, &jb, &rep, sizeof rep, 600.0, "measuring the defaults");
        if (st == PLDR_OK && rep.tok_s > se->cand[0].tok_s)
            se->cand[0].tok_s = rep.tok_s;
        logf_(se, "    again: %.1f tok/s", rep.tok_s);
    }
    if (st == PLDR_OK) {
        res.path = pldr_decode_tuning_path(&se->base.info, p->cache_dir);
        if (!res.path)
            st = pldr_fail(PLDR_ERR_IO, "no cache directory for the tuning file (set XDG_CACHE_HOME or HOME)");
    }
    const key *keys = se->base.multi_lane ? multi_lane_keys : one_lane_keys;
    const int n_keys = se->base.multi_lane ? (int)(sizeof multi_lane_keys / sizeof multi_lane_keys[0])
                                           : (int)(sizeof one_lane_keys / sizeof one_lane_keys[0]);
    for (int ki = 0; st == PLDR_OK && ki < n_keys; ki++) {
        shape alt[8];
        const int n_alt = alternatives(se, &se->shapes[best], keys[ki], alt);
        int key_best = best;
        for (int a = 0; a < n_alt && st == PLDR_OK; a++) {
            const int i = try_shape(se, &alt[a], &st);
            if (i >= 0 && se->cand[i].tok_s > se->cand[key_best].tok_s * (1.0 + DECODE_MARGIN))
                key_best = i;
        }
        best = key_best;
    }
    if (st == PLDR_OK && best > 0) {
        /* the winner and the defaults once more, one after the other: the
         * winner must lead by the margin there too (a shared or throttling
         * machine makes single measurements noisy); each keeps its faster
         * figure for the report */
        logf_(se, "confirming: the defaults and %s again", se->cand[best].items);
        double again[2] = {0.0, 0.0};
        const int which[2] = {0, best};
        for (int k = 0; k < 2 && st == PLDR_OK; k++) {
            decode_job jb = {model_dir, p, which[k] ? se->cand[best].items : ""};
            decode_reply rep;
            char died[128];
            if ((st = pldr_child_run(child_decode, &jb, &rep, sizeof rep, 600.0, died, sizeof died)) == PLDR_OK &&
                !died[0] && rep.head.status == PLDR_OK && rep.tokens == se->base.tokens)
                again[k] = rep.tok_s;
            logf_(se, "    %s: %.1f tok/s", k ? se->cand[best].items : "defaults", again[k]);
        }
        for (int k = 0; k < 2; k++)
            if (again[k] > se->cand[which[k]].tok_s)
                se->cand[which[k]].tok_s = again[k];
        if (!(again[1] > again[0] * (1.0 + DECODE_MARGIN) &&
              se->cand[best].tok_s > se->cand[0].tok_s * (1.0 + DECODE_MARGIN)))
            best = 0;
    }
    if (st == PLDR_OK) {
        snprintf(res.defaults, sizeof res.defaults, "%s", se->cand[0].items);
        if (best > 0)
            snprintf(res.chosen, sizeof res.chosen, "%s", se->cand[best].items);
        res.tok_s_defaults = se->cand[0].tok_s;
        res.tok_s_chosen = se->cand[best].tok_s;
        res.n_candidates = se->n;
        res.candidates = malloc((size_t)se->n * sizeof *res.candidates);
        if (!res.candidates)
            st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
        else
            memcpy(res.candidates, se->cand, (size_t)se->n * sizeof *res.candidates);
        res.elapsed_s = pldr_now() - t0;
    }
    if (st == PLDR_OK) {
        if (best > 0)
            logf_(se, "chosen: %s, %.1f tok/s against %.1f with the defaults (%s)", res.chosen, res.tok_s_chosen,
                  res.tok_s_defaults, res.defaults);
        else
            logf_(se, "the defaults stay (%s, %.1f tok/s): no candidate was %.0f%% faster", res.defaults,
                  res.tok_s_defaults, DECODE_MARGIN * 100);
        st = write_result(se, &res);
    }
    free(se);
    if (st != PLDR_OK || !result)
        pldr_tune_decode_result_free(&res);
    else
        *result = res;
    return st;
}

/* ------------------------------------------------------------ first use */

typedef struct check_reply {
    pldr_child_head head;
    pldr_device_info info;
    int found, count;
} check_reply;

typedef struct check_job {
    const char *model_dir;
    const pldr_tune_decode_params *p;
} check_job;

/* In a child (this process must not use OpenCL before the tuner forks):
 * whether the device has an entry for the model and dtype. */
static pldr_status child_check(void *ctx, void *out)
{
    const check_job *jb = ctx;
    check_reply *rep = out;
    pldr_status st = pldr_select_device(jb->p->device, &rep->info);
    if (st != PLDR_OK)
        return st;
    char *cfg_path = pldr_path_join(jb->model_dir, "config.json");
    pldr_config cfg;
    st = cfg_path ? pldr_config_load(cfg_path, &cfg) : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    free(cfg_path);
    if (st != PLDR_OK)
        return st;
    char items[PLDR_WG_ITEMS_MAX];
    rep->found = pldr_decode_tuning_lookup(&rep->info, jb->p->cache_dir, &cfg, jb->p->dtype, items, sizeof items);
    return PLDR_OK;
}

static pldr_status child_count(void *ctx, void *out)
{
    (void)ctx;
    check_reply *rep = out;
    pldr_device_info *all = NULL;
    pldr_status st = pldr_list_devices(&all, &rep->count);
    free(all);
    return st;
}

static pldr_status if_missing_one(const char *model_dir, const pldr_tune_decode_params *p, int *tuned)
{
    check_job jb = {model_dir, p};
    check_reply rep;
    pldr_status st = pldr_child_run_ok(child_check, &jb, &rep, sizeof rep, 600.0, "checking the decode tuning file");
    if (st != PLDR_OK || rep.found)
        return st;
    if (p->log) {
        char line[256];
        snprintf(line, sizeof line, "no decode tuning for %s (%s weights): tuning now", rep.info.name,
                 dtype_name(p->dtype));
        p->log(line, p->log_user);
    }
    st = pldr_tune_decode(model_dir, p, NULL);
    if (st == PLDR_OK && tuned)
        *tuned = 1;
    return st;
}

pldr_status pldr_tune_decode_if_missing(const char *model_dir, const pldr_tune_decode_params *params, int *tuned)
{
    pldr_clear_error();
    if (tuned)
        *tuned = 0;
    pldr_tune_decode_params p = params ? *params : pldr_tune_decode_default_params();
    if (!model_dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no model directory given");
    if (pldr_tuning_disabled())
        return PLDR_OK;
    if (!p.device || strcmp(p.device, "all") != 0)
        return if_missing_one(model_dir, &p, tuned);
    check_reply rep;
    pldr_status st = pldr_child_run_ok(child_count, NULL, &rep, sizeof rep, 600.0, "listing the devices");
    for (int i = 0; st == PLDR_OK && i < rep.count; i++) {
        char spec[16];
        snprintf(spec, sizeof spec, "%d", i);
        p.device = spec;
        st = if_missing_one(model_dir, &p, tuned);
    }
    return st;
}
