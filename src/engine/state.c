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
    cl_int err = write ? clEnqueueWriteBuffer(c->m->ocl.queue, b, CL_TRUE, off, bytes, host, 0, NULL, NULL)
                       : clEnqueueReadBuffer(c->m->ocl.queue, b, CL_TRUE, off, bytes, host, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK
                             : pldr_cl_fail(&c->m->ocl, err, write ? "writing the caches" : "reading the caches");
}

pldr_status pldr_context_get_gcache(pldr_context *c, float *out)
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

pldr_status pldr_context_set_external_g(pldr_context *c, const float *a, const float *a_lm, const float *g_lm)
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

void pldr_context_clear_external_g(pldr_context *c)
{
    engine_ahead_cancel(c);
    c->external_g = 0;
    if (c->m->cfg.g_type == PLDR_G_LEARNED) {
        c->g_valid = 0;
    } else {
        engine_fill_predefined_g(c);
        clFinish(c->m->ocl.queue);
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

pldr_status pldr_context_get_state(pldr_context *c, pldr_state *s)
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
        st = pldr_context_get_gcache(c, s->gcache);
    if (st != PLDR_OK)
        pldr_state_free(s);
    return st;
}

pldr_status pldr_context_set_state(pldr_context *c, const pldr_state *s)
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
