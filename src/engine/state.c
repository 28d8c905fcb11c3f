/* The context's state: the G-cache, an external G_LM, and the snapshot of
 * tokens, K, V and G-cache that sessions store. */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/util.h"

static size_t hdd_of(const pldr_config *cf)
{
    return (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim;
}

static pldr_status copy_buffer(pldr_context *c, cl_mem b, size_t off, size_t bytes, void *host, int write)
{
    cl_int err = write ? clEnqueueWriteBuffer(c->queue, b, CL_TRUE, off, bytes, host, 0, NULL, NULL)
                       : clEnqueueReadBuffer(c->queue, b, CL_TRUE, off, bytes, host, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK
                             : pldr_cl_fail(&c->m->ocl, err, write ? "writing the caches" : "reading the caches");
}

static pldr_status bound_get_gcache(pldr_context *c, float *out)
{
    engine_ahead_cancel(c);
    pldr_clear_error();
    const size_t hdd = hdd_of(&c->m->cfg);
    for (int l = 0; l < c->m->cfg.n_layers; l++) {
        cl_mem parts[3] = {c->g_a[l], c->g_alm[l], c->g_g[l]};
        for (int i = 0; i < 3; i++)
            TRY(copy_buffer(c, parts[i], 0, hdd * 4, out + ((size_t)l * 3 + (size_t)i) * hdd, 0));
    }
    return PLDR_OK;
}

static pldr_status bound_set_external_g(pldr_context *c, const float *a, const float *a_lm, const float *g_lm)
{
    engine_ahead_cancel(c);
    pldr_clear_error();
    if (!g_lm)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no G_LM given");
    const size_t hdd = hdd_of(&c->m->cfg);
    float *zeros = calloc(hdd, sizeof *zeros);
    if (!zeros)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    pldr_status st = PLDR_OK;
    for (int l = 0; l < c->m->cfg.n_layers && st == PLDR_OK; l++) {
        const size_t o = (size_t)l * hdd;
        st = copy_buffer(c, c->g_g[l], 0, hdd * 4, (void *)(g_lm + o), 1);
        if (st == PLDR_OK)
            st = copy_buffer(c, c->g_a[l], 0, hdd * 4, a ? (void *)(a + o) : zeros, 1);
        if (st == PLDR_OK)
            st = copy_buffer(c, c->g_alm[l], 0, hdd * 4, a_lm ? (void *)(a_lm + o) : zeros, 1);
    }
    free(zeros);
    if (st == PLDR_OK) {
        c->external_g = 1;
        c->g_valid = 1;
    }
    return st;
}

static void bound_clear_external_g(pldr_context *c)
{
    engine_ahead_cancel(c);
    c->external_g = 0;
    if (c->m->cfg.g_type == PLDR_G_LEARNED) {
        c->g_valid = 0;
    } else {
        engine_fill_predefined_g(c, c->cur, c->cur + 1);
        clFinish(c->queue);
    }
    if (c->n_past > 0 && c->m->cfg.g_type == PLDR_G_LEARNED)
        c->n_past = 0; /* the caches no longer match any G_LM: start over */
}

void pldr_state_free(pldr_state *s)
{
    if (!s)
        return;
    free(s->tokens);
    free(s->k);
    free(s->v);
    free(s->gcache);
    memset(s, 0, sizeof *s);
}

static pldr_status bound_get_state(pldr_context *c, pldr_state *s)
{
    engine_ahead_cancel(c);
    pldr_clear_error();
    memset(s, 0, sizeof *s);
    const pldr_config *cf = &c->m->cfg;
    const size_t L = (size_t)cf->n_layers, d = (size_t)cf->d_model, n = (size_t)c->n_past;
    s->n_past = c->n_past;
    s->g_valid = c->g_valid;
    s->external_g = c->external_g;
    s->tokens = malloc((n ? n : 1) * sizeof *s->tokens);
    const size_t kv_elems = L * n * d > 0 ? L * n * d : 1;
    s->k = malloc(kv_elems * sizeof(float));
    s->v = malloc(kv_elems * sizeof(float));
    s->gcache = malloc(L * 3 * hdd_of(cf) * sizeof(float));
    if (!s->tokens || !s->k || !s->v || !s->gcache) {
        pldr_state_free(s);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the context state");
    }
    memcpy(s->tokens, c->tokens, n * sizeof *s->tokens);
    pldr_status st = PLDR_OK;
    for (size_t l = 0; l < L && st == PLDR_OK && n > 0; l++) {
        st = copy_buffer(c, c->k_cache[l], 0, n * d * 4, s->k + l * n * d, 0);
        if (st == PLDR_OK)
            st = copy_buffer(c, c->v_cache[l], 0, n * d * 4, s->v + l * n * d, 0);
    }
    if (st == PLDR_OK)
        st = bound_get_gcache(c, s->gcache);
    if (st != PLDR_OK)
        pldr_state_free(s);
    return st;
}

static pldr_status bound_set_state(pldr_context *c, const pldr_state *s)
{
    engine_ahead_cancel(c);
    pldr_clear_error();
    const pldr_config *cf = &c->m->cfg;
    const size_t L = (size_t)cf->n_layers, d = (size_t)cf->d_model, hdd = hdd_of(cf);
    if (s->n_past < 0 || s->n_past > c->n_ctx)
        return pldr_fail(PLDR_ERR_CONTEXT_FULL, "the state holds %d tokens, more than the context of %d tokens (--ctx)",
                         s->n_past, c->n_ctx);
    for (int i = 0; i < s->n_past; i++)
        if (s->tokens[i] < 0 || s->tokens[i] >= cf->vocab_size)
            return pldr_fail(PLDR_ERR_FORMAT, "the state holds token id %d, outside the vocabulary", (int)s->tokens[i]);
    const size_t n = (size_t)s->n_past;
    for (size_t l = 0; l < L && n > 0; l++) {
        TRY(copy_buffer(c, c->k_cache[l], 0, n * d * 4, s->k + l * n * d, 1));
        TRY(copy_buffer(c, c->v_cache[l], 0, n * d * 4, s->v + l * n * d, 1));
    }
    for (size_t l = 0; l < L; l++) {
        cl_mem parts[3] = {c->g_a[l], c->g_alm[l], c->g_g[l]};
        for (size_t i = 0; i < 3; i++)
            TRY(copy_buffer(c, parts[i], 0, hdd * 4, s->gcache + (l * 3 + i) * hdd, 1));
    }
    memcpy(c->tokens, s->tokens, n * sizeof *s->tokens);
    c->n_past = s->n_past;
    c->external_g = s->external_g;
    c->g_valid = s->g_valid || g_fixed(c);
    return PLDR_OK;
}

/* The single-sequence calls act on sequence 0; with a shared external G,
 * setting or clearing it acts on every sequence. */
pldr_status pldr_context_get_gcache(pldr_context *c, float *out)
{
    engine_seq_bind(c, 0);
    return bound_get_gcache(c, out);
}

static pldr_status bad_seq(const pldr_context *c, int s)
{
    return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "sequence %d is outside [0, %d)", s, c->n_seq);
}

pldr_status pldr_seq_set_external_g(pldr_context *c, int s, const float *a, const float *a_lm, const float *g_lm)
{
    if (s < 0 || s >= c->n_seq)
        return bad_seq(c, s);
    engine_seq_bind(c, s);
    return bound_set_external_g(c, a, a_lm, g_lm);
}

pldr_status pldr_context_set_external_g(pldr_context *c, const float *a, const float *a_lm, const float *g_lm)
{
    if (c->p.shared_g != PLDR_SHARED_G_EXTERNAL)
        return pldr_seq_set_external_g(c, 0, a, a_lm, g_lm);
    for (int s = 0; s < c->n_seq; s++)
        TRY(pldr_seq_set_external_g(c, s, a, a_lm, g_lm));
    return PLDR_OK;
}

void pldr_seq_clear_external_g(pldr_context *c, int s)
{
    if (s < 0 || s >= c->n_seq)
        return;
    engine_seq_bind(c, s);
    bound_clear_external_g(c);
}

void pldr_context_clear_external_g(pldr_context *c)
{
    for (int s = 0; s < c->n_seq; s++)
        if (s == 0 || c->p.shared_g == PLDR_SHARED_G_EXTERNAL)
            pldr_seq_clear_external_g(c, s);
}

pldr_status pldr_seq_get_state(pldr_context *c, int s, pldr_state *st)
{
    if (s < 0 || s >= c->n_seq) {
        memset(st, 0, sizeof *st);
        return bad_seq(c, s);
    }
    engine_seq_bind(c, s);
    return bound_get_state(c, st);
}

pldr_status pldr_seq_set_state(pldr_context *c, int s, const pldr_state *st)
{
    if (s < 0 || s >= c->n_seq)
        return bad_seq(c, s);
    engine_seq_bind(c, s);
    return bound_set_state(c, st);
}

pldr_status pldr_context_get_state(pldr_context *c, pldr_state *st) { return pldr_seq_get_state(c, 0, st); }
pldr_status pldr_context_set_state(pldr_context *c, const pldr_state *st) { return pldr_seq_set_state(c, 0, st); }

pldr_status engine_share_g(pldr_context *c)
{
    const size_t g_bytes = hdd_of(&c->m->cfg) * 4;
    for (int q = 0; q < c->n_seq; q++) {
        if (q == c->cur)
            continue;
        pldr_seq *sq = &c->seq[q];
        for (int l = 0; l < c->m->cfg.n_layers; l++) {
            cl_mem src[3] = {c->g_a[l], c->g_alm[l], c->g_g[l]}, dst[3] = {sq->g_a[l], sq->g_alm[l], sq->g_g[l]};
            for (int i = 0; i < 3; i++) {
                cl_int err = clEnqueueCopyBuffer(c->queue, src[i], dst[i], 0, 0, g_bytes, 0, NULL, NULL);
                if (err != CL_SUCCESS)
                    return pldr_cl_fail(&c->m->ocl, err, "sharing the first prompt's G-cache");
            }
        }
        sq->external_g = 1;
        sq->g_valid = 1;
    }
    c->external_g = 1;
    c->shared_g_ready = 1;
    return PLDR_OK;
}
