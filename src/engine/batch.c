/* Several sequences of one context at once (pldr_eval_batch).
 *
 * A prefill, or any entry of several tokens, runs its sequence's own forward
 * (its A and G_LM from its own prompt only). The entries of one token each
 * (decode) go through the layers together as rows of one step: the products
 * read each weight once for all rows (engine_gemm_rows), and the attention
 * of a row uses its sequence's position, cache region and G_LM
 * (kernels/batch.cl). In cache mode NONE every entry runs on its own. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/util.h"

/* One decode entry per row: rows[r] is the entry index. */
static pldr_status decode_rows(pldr_context *c, const pldr_batch_entry *e, const int *rows, int B, float *logits,
                               int32_t *greedy_ids)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t d = (size_t)cf->d_model, F = (size_t)cf->d_ff, H = (size_t)cf->n_heads, V = (size_t)cf->n_outputs;
    const size_t b = (size_t)B, dp = (size_t)m->d_pitch, fp = (size_t)m->f_pitch, rw = (size_t)m->row_wg;
    const float scale = (float)(1.0 / sqrt((double)cf->head_dim));
    int *info = c->batch_host, *ids = c->batch_host + 3 * c->n_seq;
    for (int r = 0; r < B; r++) {
        const int s = e[rows[r]].seq;
        info[3 * r] = s;
        info[3 * r + 1] = pldr_seq_n_past(c, s);
        info[3 * r + 2] = (int)((size_t)s * c->kv_rows);
        ids[r] = e[rows[r]].ids[0];
    }
    cl_command_queue q = c->queue;
    cl_int err = clEnqueueWriteBuffer(q, c->seqinfo, CL_TRUE, 0, b * 3 * sizeof(int), info, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(q, c->ids, CL_TRUE, 0, b * sizeof(int), ids, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&m->ocl, err, "uploading the batch");
    TRY(engine_clear_flags(c));
    c->next_on_device = 0;
    TRY(LAUNCH(c, embed, b * rw, rw, A_MEM(c->ids), A_INT(0), A_MEM(m->emb.data), A_SCALES(&m->emb),
               A_FLT((float)sqrt((double)d)),
               A_MEM(m->ln0_w), A_MEM(m->ln0_b), A_MEM(c->x), A_MEM(c->flags), A_INT(flag_embed(c))));
    for (int l = 0; l < cf->n_layers; l++) {
        const pldr_layer *ly = &m->layers[l];
        TRY(engine_gemm_rows(c, b, 3 * d, d, c->x, &ly->wqkv, dp, c->qkv));
        TRY(LAUNCH(c, batch_qkv_rope, b * H * (size_t)cf->head_dim / 2, 0, A_MEM(c->qkv), A_MEM(ly->bqkv),
                   A_MEM(c->rope), A_MEM(c->q), A_MEM(c->k_all[l]), A_MEM(c->v_all[l]), A_MEM(c->seqinfo)));
        if (c->p.cache_mode == PLDR_CACHE_KV) /* G_LM again from each sequence's cached A */
            for (int r = 0; r < B; r++) {
                engine_seq_bind(c, e[rows[r]].seq);
                TRY(engine_layer_g(c, l, 1, 0));
            }
        if (m->wg_forms)
            TRY(LAUNCH(c, batch_attention, b * H * (size_t)m->att_wg, (size_t)m->att_wg, A_MEM(c->q),
                       A_MEM(c->gg_all[l]), A_INT((int)c->g_stride), A_FLT(scale), A_MEM(c->k_all[l]),
                       A_MEM(c->v_all[l]), A_MEM(c->seqinfo), A_MEM(c->att)));
        else /* CPUs: a work-item per (row, head), no barriers */
            TRY(LAUNCH(c, batch_attention_cpu, b * H, 1, A_MEM(c->q), A_MEM(c->gg_all[l]),
                       A_INT((int)c->g_stride), A_FLT(scale), A_MEM(c->k_all[l]), A_MEM(c->v_all[l]),
                       A_MEM(c->seqinfo), A_MEM(c->att)));
        TRY(engine_gemm_rows(c, b, d, d, c->att, &ly->wo, dp, c->o));
        TRY(LAUNCH(c, brln, b * rw, rw, A_MEM(c->o), A_MEM(ly->bo), A_MEM(c->x), A_MEM(ly->ln1_w),
                   A_MEM(ly->ln1_b), A_MEM(c->x1), A_MEM(c->flags), A_INT(flag_att(l))));
        TRY(engine_gemm_rows(c, b, 2 * F, d, c->x1, &ly->w12, dp, c->h));
        TRY(LAUNCH(c, glu, b * F, 0, A_MEM(c->h), A_MEM(ly->b12), A_MEM(c->g)));
        TRY(engine_gemm_rows(c, b, d, F, c->g, &ly->w3, fp, c->o));
        TRY(LAUNCH(c, brln, b * rw, rw, A_MEM(c->o), A_MEM(ly->b3), A_MEM(c->x1), A_MEM(ly->ln2_w),
                   A_MEM(ly->ln2_b), A_MEM(c->x), A_MEM(c->flags), A_INT(flag_ffn(l))));
    }
    /* the logits, LOGIT_CHUNK rows at a time */
    for (int r0 = 0; r0 < B; r0 += LOGIT_CHUNK) {
        const size_t n = (size_t)(B - r0 < LOGIT_CHUNK ? B - r0 : LOGIT_CHUNK);
        if (m->own_gemm || n > 32 || m->wtype != PLDR_DTYPE_F32) {
            TRY(engine_gemm(c, n, V, d, c->x, (size_t)r0 * d, &m->wf, dp, c->logits, 0));
        } else {
            cl_int e2 = clEnqueueCopyBuffer(q, c->x, c->x1, (size_t)r0 * d * 4, 0, n * d * 4, 0, NULL, NULL);
            if (e2 != CL_SUCCESS)
                return pldr_cl_fail(&m->ocl, e2, "copying the batch's hidden rows");
            TRY(engine_gemm_rows(c, n, V, d, c->x1, &m->wf, dp, c->logits));
        }
        TRY(LAUNCH(c, bias_rows, n * V, 0, A_MEM(c->logits), A_MEM(m->bf), A_INT((int)V), A_MEM(c->flags),
                   A_INT(flag_logits(c))));
        if (logits) {
            err = clEnqueueReadBuffer(q, c->logits, CL_TRUE, 0, n * V * 4, c->batch_logits, 0, NULL, NULL);
            if (err != CL_SUCCESS)
                return pldr_cl_fail(&m->ocl, err, "reading the logits");
            for (size_t r = 0; r < n; r++)
                memcpy(logits + (size_t)rows[r0 + (int)r] * V, c->batch_logits + r * V, V * 4);
        } else if (greedy_ids) {
            TRY(LAUNCH(c, batch_argmax, n * rw, rw, A_MEM(c->logits), A_INT((int)V), A_MEM(c->batch_ids),
                       A_INT(r0), A_MEM(c->flags), A_INT(flag_logits(c))));
        }
    }
    if (!logits && greedy_ids) {
        err = clEnqueueReadBuffer(q, c->batch_ids, CL_TRUE, 0, b * sizeof(int), ids, 0, NULL, NULL);
        if (err != CL_SUCCESS)
            return pldr_cl_fail(&m->ocl, err, "reading the greedy tokens");
        for (int r = 0; r < B; r++)
            greedy_ids[rows[r]] = ids[r];
    }
    TRY(engine_fetch_flags(c, c->n_flags, CL_TRUE));
    TRY(engine_check_flags(c));
    for (int r = 0; r < B; r++) {
        const pldr_batch_entry *en = &e[rows[r]];
        engine_seq_bind(c, en->seq);
        c->tokens[c->n_past++] = en->ids[0];
        c->g_valid = 1;
    }
    return PLDR_OK;
}

/* Index of the largest value (the lowest among equals), as the device's. */
static int32_t host_argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

pldr_status pldr_eval_batch(pldr_context *c, const pldr_batch_entry *e, int n_entries, float *logits,
                            int32_t *greedy_ids)
{
    pldr_clear_error();
    const int V = c->m->cfg.n_outputs, n_vocab = c->m->cfg.vocab_size;
    if (n_entries < 0 || (n_entries > 0 && !e))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no batch entries");
    char *seen = calloc((size_t)c->n_seq, 1);
    int *rows = malloc(((size_t)n_entries + 1) * sizeof *rows);
    if (!seen || !rows) {
        free(seen);
        free(rows);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the batch");
    }
    pldr_status st = PLDR_OK;
    int B = 0;
    for (int i = 0; i < n_entries && st == PLDR_OK; i++) {
        const int s = e[i].seq;
        if (s < 0 || s >= c->n_seq) {
            st = pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "batch entry %d: sequence %d is outside [0, %d)", i, s,
                           c->n_seq);
        } else if (seen[s]) {
            st = pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "batch entry %d: sequence %d appears twice", i, s);
        } else if (!e[i].ids || e[i].n <= 0) {
            st = pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "batch entry %d: no tokens to evaluate", i);
        } else {
            seen[s] = 1;
            const int past = pldr_seq_n_past(c, s);
            for (int k = 0; k < e[i].n && st == PLDR_OK; k++)
                if (e[i].ids[k] < 0 || e[i].ids[k] >= n_vocab)
                    st = pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "batch entry %d: token id %d is outside the vocabulary "
                                   "[0, %d)", i, (int)e[i].ids[k], n_vocab);
            if (st == PLDR_OK && e[i].n > c->n_ctx - past)
                st = pldr_fail(PLDR_ERR_CONTEXT_FULL,
                               "batch entry %d: sequence %d would be %d tokens, more than its context of %d tokens",
                               i, s, past + e[i].n, c->n_ctx);
            if (e[i].n == 1 && past > 0 && c->p.cache_mode != PLDR_CACHE_NONE)
                rows[B++] = i;
        }
    }
    free(seen);
    /* one decoded sequence alone takes the single-sequence path (bit-identical to pldr_eval) */
    const int batched = B >= 2;
    const int pipeline = c->pipeline;
    c->pipeline = 0; /* no greedy step ahead: the next call is for other sequences */
    for (int i = 0, r = 0; i < n_entries && st == PLDR_OK; i++) {
        if (batched && r < B && rows[r] == i) {
            r++;
            continue;
        }
        engine_seq_bind(c, e[i].seq);
        float *row = logits ? logits + (size_t)i * (size_t)V : NULL;
        if (row) {
            st = engine_eval_bound(c, e[i].ids, e[i].n, row, 0);
            if (st == PLDR_OK && greedy_ids)
                greedy_ids[i] = host_argmax(row, V);
        } else if (greedy_ids) {
            st = engine_eval_greedy_bound(c, e[i].ids, e[i].n, &greedy_ids[i]);
        } else {
            st = engine_eval_bound(c, e[i].ids, e[i].n, NULL, 0);
        }
    }
    if (st == PLDR_OK && batched) {
        engine_ahead_cancel(c);
        st = decode_rows(c, e, rows, B, logits, greedy_ids);
        if (st == PLDR_OK && logits && greedy_ids)
            for (int r = 0; r < B; r++)
                greedy_ids[rows[r]] = host_argmax(logits + (size_t)rows[r] * (size_t)V, V);
        if (st == PLDR_OK && logits && c->p.check_finite)
            for (int r = 0; r < B && st == PLDR_OK; r++)
                for (int k = 0; k < V; k++)
                    if (!isfinite(logits[(size_t)rows[r] * (size_t)V + (size_t)k])) {
                        st = pldr_fail(PLDR_ERR_NONFINITE, "non-finite logits");
                        break;
                    }
    }
    c->pipeline = pipeline;
    free(rows);
    return st;
}
