/* Greedy decoding with the next step enqueued before the host waits. */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/util.h"

/* Greedy decoding keeps the device busy across calls: once a step is
 * enqueued, the step after it (fed with the token the first leaves on the
 * device) is enqueued too, before the host waits for the first. Enqueueing a
 * step costs the host about as long as the device takes to run it on fast
 * GPUs, so the two now overlap. The step ahead is used when the next call
 * feeds back the token this one returned; any other call discards it: its
 * position n_past is not counted until then, and the cache rows it wrote
 * there are overwritten by whatever comes next. */
void engine_ahead_cancel(pldr_context *c)
{
    if (!c->ahead)
        return;
    clWaitForEvents(1, &c->slot_ev[c->slot]);
    clReleaseEvent(c->slot_ev[c->slot]);
    c->slot_ev[c->slot] = NULL;
    c->ahead = 0;
    c->flags_dirty = 1; /* it may have raised flags (next_on_device is 0 while a step is ahead) */
}

/* Enqueues the read of the flags and the greedy token into the next slot. */
static pldr_status read_slot(pldr_context *c)
{
    const int slot = c->slot ^ 1;
    cl_int err = clEnqueueReadBuffer(c->queue, c->flags, CL_FALSE, 0, ((size_t)c->n_flags + 1) * sizeof(int),
                                     c->slot_host[slot], 0, NULL, &c->slot_ev[slot]);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&c->m->ocl, err, "reading the greedy token");
    clFlush(c->queue);
    c->slot = slot;
    return PLDR_OK;
}

static pldr_status ahead_enqueue(pldr_context *c)
{
    if (!c->pipeline || c->p.cache_mode == PLDR_CACHE_NONE || c->n_past >= c->n_ctx)
        return PLDR_OK;
    TRY(engine_decode_token(c, 0, c->n_past, 1));
    TRY(engine_final_from_decode(c, 1));
    TRY(read_slot(c));
    c->ahead = 1;
    return PLDR_OK;
}

pldr_status pldr_context_finish(pldr_context *c)
{
    engine_ahead_cancel(c);
    cl_int err = clFinish(c->queue);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "waiting for the device");
}

pldr_status pldr_eval_greedy(pldr_context *c, const int32_t *ids, int n, int32_t *next_id)
{
    pldr_clear_error();
    engine_seq_bind(c, 0);
    return engine_eval_greedy_bound(c, ids, n, next_id);
}

pldr_status engine_eval_greedy_bound(pldr_context *c, const int32_t *ids, int n, int32_t *next_id)
{
    if (c->ahead && n == 1 && ids[0] == c->last_next) {
        /* this step is already on its way (ahead_enqueue checked its position) */
        c->ahead = 0;
        c->tokens[c->n_past++] = ids[0];
    } else {
        engine_ahead_cancel(c);
        int rows_at;
        TRY(engine_run(c, ids, n, 1, &rows_at));
        if (rows_at < 0) {
            TRY(engine_final_from_decode(c, 1));
        } else {
            TRY(engine_final_row(c, rows_at + n - 1));
            TRY(LAUNCH(c, argmax, (size_t)c->m->row_wg, (size_t)c->m->row_wg, A_MEM(c->logits),
                       A_INT(c->m->cfg.n_outputs), A_MEM(c->flags), A_INT(flag_logits(c)), A_INT(c->n_flags)));
        }
        TRY(read_slot(c));
    }
    const int slot = c->slot;
    pldr_status st = ahead_enqueue(c);
    const double w0 = c->host_timing ? pldr_now() : 0.0;
    cl_int err = clWaitForEvents(1, &c->slot_ev[slot]);
    if (c->host_timing)
        c->host_wait_ms += (pldr_now() - w0) * 1e3;
    clReleaseEvent(c->slot_ev[slot]);
    c->slot_ev[slot] = NULL;
    if (err != CL_SUCCESS) {
        engine_ahead_cancel(c);
        return pldr_cl_fail(&c->m->ocl, err, "waiting for the greedy token");
    }
    memcpy(c->flags_host, c->slot_host[slot], ((size_t)c->n_flags + 1) * sizeof(int));
    if (st != PLDR_OK) {
        engine_ahead_cancel(c);
        return st;
    }
    st = engine_check_flags(c);
    if (st != PLDR_OK) {
        engine_ahead_cancel(c);
        return st;
    }
    *next_id = c->flags_host[c->n_flags];
    c->last_next = *next_id;
    c->next_on_device = c->p.cache_mode != PLDR_CACHE_NONE && !c->ahead;
    return PLDR_OK;
}
