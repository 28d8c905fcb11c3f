/* The PLDR-LLM forward pass on the device, and the inference context that
 * holds its caches: K and V per layer, and the G-cache [A, A_LM, G_LM] per
 * layer. See docs/pldr-llm.md of the model specification for the math.
 *
 * Two paths:
 *  - a forward over T > 1 tokens (the prefill, and every step without
 *    cache): GEMMs through CLBlast, the rest in kernels;
 *  - a decode step of one token through the caches: the engine's own GEMV
 *    kernels with the LayerNorms, biases, residuals and the GLU gate fused
 *    in, and one attention kernel per layer that also applies RoPE, writes the
 *    caches and multiplies by G_LM.
 * Nothing returns to the host inside a forward except the logits (or the
 * argmax) and the non-finite flags at its end. */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/util.h"

static pldr_status write_ids(pldr_context *c, const int32_t *ids, int n)
{
    cl_int err = clEnqueueWriteBuffer(c->queue, c->ids, CL_TRUE, 0, (size_t)n * sizeof(cl_int), ids, 0,
                                      NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "uploading token ids");
}

/* A forward over T tokens at positions pos0 .. pos0+T-1 leaving the final
 * hidden states of the last `keep` tokens in c->x (rows T-keep .. T-1).
 * full: compute G_LM from these tokens regardless of the cache (mode NONE,
 * or the prefill). Every layer's K, V and A need all T rows, but the last
 * layer's attention, output projection and FFN only the kept ones: those
 * launches start at row T-keep (global work offsets; GEMMs by offset). */
static pldr_status forward_tokens(pldr_context *c, const int32_t *ids, int T, int pos0, int full, int keep)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t d = (size_t)cf->d_model, F = (size_t)cf->d_ff, H = (size_t)cf->n_heads;
    const float scale = (float)(1.0 / sqrt((double)cf->head_dim));
    TRY(write_ids(c, ids, T));
    TRY(LAUNCH(c, embed, (size_t)T * (size_t)m->row_wg, (size_t)m->row_wg, A_MEM(c->ids), A_INT(0), A_MEM(m->emb.data),
               A_SCALES(&m->emb),
               A_FLT((float)sqrt((double)d)), A_MEM(m->ln0_w), A_MEM(m->ln0_b), A_MEM(c->x), A_MEM(c->flags),
               A_INT(flag_embed(c))));
    for (int l = 0; l < cf->n_layers; l++) {
        const pldr_layer *ly = &m->layers[l];
        const size_t dp = (size_t)m->d_pitch, fp = (size_t)m->f_pitch;
        const size_t t = (size_t)T, r0 = l == cf->n_layers - 1 && keep > 0 && keep < T ? (size_t)(T - keep) : 0;
        const size_t n = t - r0, rw = (size_t)m->row_wg;
        TRY(engine_gemm(c, t, 3 * d, d, c->x, 0, &ly->wqkv, dp, c->qkv, 0));
        TRY(LAUNCH(c, qkv_rope, t * H * (size_t)cf->head_dim / 2, 0, A_MEM(c->qkv), A_MEM(ly->bqkv), A_MEM(c->rope),
                   A_MEM(c->q), A_MEM(c->k_cache[l]), A_MEM(c->v_cache[l]), A_INT(pos0)));
        TRY(engine_layer_g(c, l, T, full));
        TRY(LAUNCH_FROM(c, apply_g, "apply_g", r0 * d, n * d, 0, A_MEM(c->q), A_MEM(c->g_g[l]), A_FLT(scale),
                        A_MEM(c->qg)));
        if (m->wg_forms)
            TRY(LAUNCH_FROM(c, att_prefill, "att_prefill", r0 * H * (size_t)m->att_wg, n * H * (size_t)m->att_wg,
                            (size_t)m->att_wg, A_MEM(c->qg), A_MEM(c->k_cache[l]), A_MEM(c->v_cache[l]),
                            A_INT(pos0), A_MEM(c->att)));
        else
            TRY(LAUNCH_FROM(c, att_prefill_cpu, "att_prefill", r0 * H, n * H, 1, A_MEM(c->qg), A_MEM(c->k_cache[l]),
                            A_MEM(c->v_cache[l]), A_INT(pos0), A_MEM(c->att)));
        TRY(engine_gemm(c, n, d, d, c->att, r0 * d, &ly->wo, dp, c->o, r0 * d));
        TRY(LAUNCH_FROM(c, brln, "brln", r0 * rw, n * rw, rw, A_MEM(c->o), A_MEM(ly->bo), A_MEM(c->x),
                        A_MEM(ly->ln1_w), A_MEM(ly->ln1_b), A_MEM(c->x1), A_MEM(c->flags), A_INT(flag_att(l))));
        TRY(engine_gemm(c, n, 2 * F, d, c->x1, r0 * d, &ly->w12, dp, c->h, r0 * 2 * F));
        TRY(LAUNCH_FROM(c, glu, "glu", r0 * F, n * F, 0, A_MEM(c->h), A_MEM(ly->b12), A_MEM(c->g)));
        TRY(engine_gemm(c, n, d, F, c->g, r0 * F, &ly->w3, fp, c->o, r0 * d));
        TRY(LAUNCH_FROM(c, brln, "brln", r0 * rw, n * rw, rw, A_MEM(c->o), A_MEM(ly->b3), A_MEM(c->x1),
                        A_MEM(ly->ln2_w), A_MEM(ly->ln2_b), A_MEM(c->x), A_MEM(c->flags), A_INT(flag_ffn(l))));
    }
    return PLDR_OK;
}

/* One token at position pos through the caches, leaving the final layer's
 * pre-norm sum in c->s2 (normalised on load by the final GEMV). */
pldr_status engine_decode_token(pldr_context *c, int32_t id, int pos, int chained)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const int d = cf->d_model, F = cf->d_ff;
    const float scale = (float)(1.0 / sqrt((double)cf->head_dim));
    const struct act_offsets *o = &c->off;
    /* chained: the previous greedy step left this token on the device, after the flags */
    int id_off = chained ? o->flags + c->n_flags * (int)sizeof(cl_int) : o->ids;
    if (!chained) {
        c->id_host = id; /* stays valid until the step ends: the write need not block */
        cl_int err = clEnqueueWriteBuffer(c->queue, c->ids, CL_FALSE, 0, sizeof(cl_int), &c->id_host, 0, NULL,
                                          NULL);
        if (err != CL_SUCCESS)
            return pldr_cl_fail(&m->ocl, err, "uploading the token id");
    }
    for (int l = 0; l < cf->n_layers; l++) {
        const pldr_layer *ly = &m->layers[l];
        if (l == 0) {
            /* the embedding and its LayerNorm are done by the first projection */
            const size_t groups = ((size_t)(3 * d) + (size_t)m->gemv_rows - 1) / (size_t)m->gemv_rows;
            TRY(LAUNCH(c, gemv_embed, groups * (size_t)m->gemv_wg, (size_t)m->gemv_wg, A_MEM(ly->wqkv.data),
                       A_SCALES(&ly->wqkv), A_MEM(ly->qkv_sc), A_INT(m->d_pitch), A_INT(3 * d),
                       A_MEM(m->emb.data), A_SCALES(&m->emb), A_MEM(c->act),
                       A_INT(id_off), A_FLT((float)sqrt((double)d)), A_INT(o->xn), A_INT(o->qkv),
                       A_LOCAL(ln_x_local(m, m->d_pitch)), A_INT(o->flags), A_INT(flag_embed(c))));
        } else {
            /* later layers normalise the previous layer's FFN sum on load into xn */
            gemv_op qkv = {.w = &ly->wqkv, .sc = ly->qkv_sc, .name = "gemv_ln (Q/K/V)", .k_dim = d,
                           .n_out = 3 * d, .x = o->s2, .ln_in = 1, .x_norm = o->xn, .residual = -1, .y = o->qkv,
                           .flag_index = flag_ffn(l - 1)};
            TRY(engine_gemv(c, &qkv));
        }
        TRY(engine_layer_g(c, l, 1, 0));
        const int n_split = m->wg_forms ? (pos + 1 + m->att_wg - 1) / m->att_wg : 1;
        if (m->wg_forms)
            TRY(LAUNCH(c, att_decode, (size_t)cf->n_heads * (size_t)n_split * (size_t)m->att_wg,
                       (size_t)m->att_wg, A_MEM(c->act), A_INT(o->qkv), A_INT(o->rope), A_MEM(c->k_cache[l]),
                       A_MEM(c->v_cache[l]), A_MEM(c->g_g[l]), A_INT(pos), A_FLT(scale), A_INT(n_split),
                       A_INT(o->att_part), A_INT(o->att)));
        else /* CPUs: a work-item per head over all the keys, no barriers */
            TRY(LAUNCH_AS(c, att_decode_cpu, "att_decode", (size_t)cf->n_heads, 1, A_MEM(c->act), A_INT(o->qkv),
                          A_INT(o->rope), A_MEM(c->k_cache[l]), A_MEM(c->v_cache[l]), A_MEM(c->g_g[l]),
                          A_INT(pos), A_FLT(scale), A_INT(o->att)));
        /* several key blocks: combined by the next launch (kernels/attention.cl) */
        if (n_split > 1)
            TRY(LAUNCH(c, att_combine, (size_t)cf->n_heads * (size_t)m->att_wg, (size_t)m->att_wg, A_MEM(c->act),
                       A_INT(n_split), A_INT(o->att_part), A_INT(o->att)));
        gemv_op proj = {.w = &ly->wo, .bias = ly->bo, .name = "gemv (attention out)", .k_dim = d, .n_out = d,
                        .x = o->att, .residual = o->xn, .y = o->s1, .wide = 1};
        TRY(engine_gemv(c, &proj));
        gemv_op up = {.w = &ly->w12, .sc = ly->up_sc, .name = "gemv_ln (FFN in)", .k_dim = d,
                      .n_out = F, .x = o->s1, .ln_in = 1, .x_norm = o->x1n,
                      .residual = -1, .glu = 1, .y = o->g, .flag_index = flag_att(l)};
        TRY(engine_gemv(c, &up));
        gemv_op down = {.w = &ly->w3, .bias = ly->b3, .name = "gemv (FFN out)", .k_dim = F, .n_out = d, .x = o->g,
                        .residual = o->x1n, .y = o->s2, .wide = 1};
        TRY(engine_gemv(c, &down));
    }
    return PLDR_OK;
}

/* Logits of the last token of a decode step into c->logits row 0. */
pldr_status engine_final_from_decode(pldr_context *c, int argmax)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    /* the last layer's output norm comes with wf_sc */
    gemv_op fin = {.w = &m->wf, .sc = m->wf_sc, .name = "gemv_ln (logits)", .k_dim = cf->d_model,
                   .n_out = cf->n_outputs, .x = c->off.s2, .ln_in = 1, .x_norm = c->off.xn, .residual = -1,
                   .y = c->off.logits, .flag_index = flag_ffn(cf->n_layers - 1), .argmax = argmax};
    TRY(engine_gemv(c, &fin));
    if (!argmax)
        return PLDR_OK;
    /* the work-groups' candidates, reduced by the next launch (kernels/gemv.cl) */
    const int n_parts = (cf->n_outputs + m->gemv_rows - 1) / m->gemv_rows;
    return LAUNCH(c, argmax_parts, (size_t)m->gemv_wg, (size_t)m->gemv_wg, A_MEM(c->act), A_INT(c->off.argmax_part),
                  A_INT(n_parts), A_INT(cf->n_outputs), A_INT(c->off.flags), A_INT(c->n_flags));
}

/* Logits of hidden row `row` of c->x (already normalised) into c->logits row 0. */
pldr_status engine_final_row(pldr_context *c, int row)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t d = (size_t)cf->d_model;
    cl_int err = clEnqueueCopyBuffer(c->queue, c->x, c->xn, (size_t)row * d * 4, 0, d * 4, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&m->ocl, err, "copying the last hidden row");
    gemv_op fin = {.w = &m->wf, .bias = m->bf, .name = "gemv (logits)", .k_dim = cf->d_model,
                   .n_out = cf->n_outputs, .x = c->off.xn, .residual = -1, .y = c->off.logits};
    return engine_gemv(c, &fin);
}

/* Enqueues the read of the flags (and the greedy token after them); blocking
 * or not: a later blocking read in the same in-order queue completes it. */
pldr_status engine_fetch_flags(pldr_context *c, int words, cl_bool blocking)
{
    cl_int err = clEnqueueReadBuffer(c->queue, c->flags, blocking, 0, (size_t)words * sizeof(int),
                                     c->flags_host, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "reading the non-finite flags");
}

/* Turns the fetched flags into a status naming where values went non-finite. */
pldr_status engine_check_flags(pldr_context *c)
{
    if (c->profile)
        engine_prof_collect(c);
    if (!c->p.check_finite)
        return PLDR_OK;
    /* the kernels only ever set flags: they need clearing only after one was raised */
    for (int i = 0; i < c->n_flags; i++)
        if (c->flags_host[i])
            c->flags_dirty = 1;
    const int L = c->m->cfg.n_layers;
    if (c->flags_host[flag_embed(c)])
        return pldr_fail(PLDR_ERR_NONFINITE, "non-finite values in the token embedding");
    for (int l = 0; l < L; l++) {
        if (c->flags_host[flag_g(c, l)])
            return pldr_fail(PLDR_ERR_NONFINITE,
                             "non-finite G_LM in layer %d: the PLGA power A_LM^pw overflowed float32", l);
        if (c->flags_host[flag_att(l)])
            return pldr_fail(PLDR_ERR_NONFINITE, "non-finite activations after the attention of layer %d", l);
        if (c->flags_host[flag_ffn(l)])
            return pldr_fail(PLDR_ERR_NONFINITE, "non-finite activations after the feed-forward of layer %d", l);
    }
    if (c->flags_host[flag_logits(c)])
        return pldr_fail(PLDR_ERR_NONFINITE, "non-finite logits");
    return PLDR_OK;
}

pldr_status engine_clear_flags(pldr_context *c)
{
    if (!c->flags_dirty)
        return PLDR_OK;
    c->flags_dirty = 0;
    const cl_int zero = 0;
    cl_int err = clEnqueueFillBuffer(c->queue, c->flags, &zero, sizeof zero, 0,
                                     (size_t)c->n_flags * sizeof(int), 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "clearing the flags");
}

static pldr_status read_logits(pldr_context *c, float *dst, size_t rows)
{
    const size_t bytes = rows * (size_t)c->m->cfg.n_outputs * sizeof(float);
    /* one row (a decode step) goes through the page-locked stage */
    cl_int err = clEnqueueReadBuffer(c->queue, c->logits, CL_TRUE, 0, bytes, rows == 1 ? c->logit_row : dst,
                                     0, NULL, NULL);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&c->m->ocl, err, "reading the logits");
    if (rows == 1)
        memcpy(dst, c->logit_row, bytes);
    return PLDR_OK;
}

/* Logits of hidden rows [first, first+n) of c->x, in chunks, through CLBlast. */
static pldr_status logits_rows(pldr_context *c, int first, int n, float *dst)
{
    pldr_model *m = c->m;
    const size_t d = (size_t)m->cfg.d_model, V = (size_t)m->cfg.n_outputs;
    for (int r = 0; r < n; r += LOGIT_CHUNK) {
        size_t rows = (size_t)(n - r < LOGIT_CHUNK ? n - r : LOGIT_CHUNK);
        TRY(engine_gemm(c, rows, V, d, c->x, (size_t)(first + r) * d, &m->wf, (size_t)m->d_pitch, c->logits, 0));
        TRY(LAUNCH(c, bias_rows, rows * V, 0, A_MEM(c->logits), A_MEM(m->bf), A_INT((int)V), A_MEM(c->flags),
                   A_INT(flag_logits(c))));
        TRY(read_logits(c, dst + (size_t)r * V, rows));
    }
    return PLDR_OK;
}

static pldr_status check_ids(const pldr_context *c, const int32_t *ids, int n)
{
    if (!ids || n <= 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no tokens to evaluate");
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->m->cfg.vocab_size)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "token id %d at position %d is outside the vocabulary [0, %d)",
                             (int)ids[i], i, c->m->cfg.vocab_size);
    if (n > c->n_ctx - c->n_past)
        return pldr_fail(PLDR_ERR_CONTEXT_FULL,
                         "the sequence would be %d tokens, more than the context of %d tokens (--ctx)",
                         c->n_past + n, c->n_ctx);
    return PLDR_OK;
}

/* The forward of an eval: returns in *rows_at the index of the first
 * hidden row of c->x that belongs to the new tokens, or -1 when the last
 * token went through the decode path (its logits input is c->s2). Only the
 * hidden rows of the new tokens' last `keep` are computed in full. */
pldr_status engine_run(pldr_context *c, const int32_t *ids, int n, int keep, int *rows_at)
{
    TRY(check_ids(c, ids, n));
    TRY(engine_clear_flags(c));
    /* a greedy step feeding back the token the previous step left on the device */
    const int chained = c->next_on_device && n == 1 && ids[0] == c->last_next;
    c->next_on_device = 0;
    memcpy(c->tokens + c->n_past, ids, (size_t)n * sizeof *ids);
    if (c->p.cache_mode == PLDR_CACHE_NONE) {
        int total = c->n_past + n;
        TRY(forward_tokens(c, c->tokens, total, 0, 1, keep));
        *rows_at = c->n_past;
    } else if (c->n_past > 0 && n == 1) {
        TRY(engine_decode_token(c, ids[0], c->n_past, chained));
        *rows_at = -1;
    } else {
        TRY(forward_tokens(c, ids, n, c->n_past, c->n_past == 0, keep));
        *rows_at = 0;
        if (c->n_past == 0 && c->p.shared_g == PLDR_SHARED_G_FIRST && !c->shared_g_ready && !g_fixed(c))
            TRY(engine_share_g(c));
    }
    if (c->p.cache_mode != PLDR_CACHE_NONE)
        c->g_valid = 1;
    c->n_past += n;
    return PLDR_OK;
}

pldr_status pldr_eval(pldr_context *c, const int32_t *ids, int n, float *logits, int all_rows)
{
    pldr_clear_error();
    engine_seq_bind(c, 0);
    return engine_eval_bound(c, ids, n, logits, all_rows);
}

pldr_status engine_eval_bound(pldr_context *c, const int32_t *ids, int n, float *logits, int all_rows)
{
    engine_ahead_cancel(c);
    int rows_at;
    TRY(engine_run(c, ids, n, logits && all_rows ? n : 1, &rows_at));
    if (!logits) {
        TRY(engine_fetch_flags(c, c->n_flags, CL_TRUE));
        return engine_check_flags(c);
    }
    if (rows_at < 0) {
        TRY(engine_final_from_decode(c, 0));
        TRY(engine_fetch_flags(c, c->n_flags, CL_FALSE));
        TRY(read_logits(c, logits, 1));
    } else if (all_rows) {
        TRY(logits_rows(c, rows_at, n, logits));
        TRY(engine_fetch_flags(c, c->n_flags, CL_TRUE));
    } else {
        TRY(engine_final_row(c, rows_at + n - 1));
        TRY(engine_fetch_flags(c, c->n_flags, CL_FALSE));
        TRY(read_logits(c, logits, 1));
    }
    TRY(engine_check_flags(c));
    if (c->p.check_finite) {
        size_t count = (size_t)(all_rows && rows_at >= 0 ? n : 1) * (size_t)c->m->cfg.n_outputs;
        for (size_t i = 0; i < count; i++)
            if (!isfinite(logits[i]))
                return pldr_fail(PLDR_ERR_NONFINITE, "non-finite logits");
    }
    return PLDR_OK;
}

pldr_status pldr_eval_hidden(pldr_context *c, const int32_t *ids, int n, float *hidden)
{
    pldr_clear_error();
    if (!c || !hidden)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_eval_hidden: NULL argument");
    engine_seq_bind(c, 0);
    engine_ahead_cancel(c);
    int rows_at;
    TRY(engine_run(c, ids, n, n, &rows_at));
    const size_t d = (size_t)c->m->cfg.d_model;
    cl_int err;
    if (rows_at < 0) {
        /* a decode step: the last layer's output norm lands in xn on the way to the head */
        TRY(engine_final_from_decode(c, 0));
        err = clEnqueueReadBuffer(c->queue, c->xn, CL_TRUE, 0, d * 4, hidden, 0, NULL, NULL);
    } else {
        err = clEnqueueReadBuffer(c->queue, c->x, CL_TRUE, (size_t)rows_at * d * 4, (size_t)n * d * 4, hidden, 0,
                                  NULL, NULL);
    }
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&c->m->ocl, err, "reading the hidden states");
    TRY(engine_fetch_flags(c, c->n_flags, CL_TRUE));
    TRY(engine_check_flags(c));
    if (c->p.check_finite)
        for (size_t i = 0; i < (size_t)n * d; i++)
            if (!isfinite(hidden[i]))
                return pldr_fail(PLDR_ERR_NONFINITE, "non-finite hidden states");
    return PLDR_OK;
}
