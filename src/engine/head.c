/* The model classes' heads as the API gives them: labels, the row of a
 * sequence classification, and one call that runs a sequence through the
 * decoder and its head. The head itself is the context's output layer
 * (src/model/model.c, load_head), so pldr_eval already runs it on the device. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "common/util.h"

const char *pldr_model_label(const pldr_model *m, int id)
{
    if (!m || !m->cfg_extra.labels || id < 0 || id >= m->cfg.num_labels)
        return NULL;
    return m->cfg_extra.labels[id];
}

/* transformers: the argmax of position x (token != pad), so the last
 * non-pad token, and row 0 when every token is pad */
int pldr_sequence_row(const pldr_model *m, const int32_t *ids, int n)
{
    int row = 0;
    for (int i = 0; m && ids && i < n; i++)
        if (ids[i] != m->cfg.pad_token_id)
            row = i;
    return row;
}

pldr_status pldr_eval_head(pldr_context *ctx, const int32_t *ids, int n, float *out, int *n_rows)
{
    pldr_clear_error();
    if (!ctx || !ids || !out || n <= 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_eval_head: NULL argument or no tokens");
    const pldr_model *m = pldr_context_model(ctx);
    const size_t width = (size_t)m->cfg.n_outputs;
    const int sequence = m->cfg.arch == PLDR_ARCH_SEQUENCE_CLASSIFICATION;
    float *rows = sequence ? malloc((size_t)n * width * sizeof *rows) : out;
    if (!rows)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for %d rows of the head", n);
    pldr_context_reset(ctx);
    pldr_status st = pldr_eval(ctx, ids, n, rows, 1);
    if (st == PLDR_OK && sequence)
        memcpy(out, rows + (size_t)pldr_sequence_row(m, ids, n) * width, width * sizeof *out);
    if (sequence)
        free(rows);
    if (n_rows)
        *n_rows = st == PLDR_OK ? (sequence ? 1 : n) : 0;
    return st;
}
