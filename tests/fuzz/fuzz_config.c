/* libFuzzer target: the config.json parser (pldr_config_parse) on arbitrary
 * bytes. An accepted config must hold the invariants the rest of the engine
 * relies on; the checkpoint's tensor walk then runs over it (the first
 * WALK_LIMIT tensors: the config's caps allow hundreds of millions), and the
 * checkpoint check runs against an empty archive. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/checkpoint.h"
#include "formats/config_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define WALK_LIMIT 4096

static pldr_status visit(const pldr_tensor_spec *spec, void *user)
{
    size_t *n = user;
    if (spec->ndim < 1 || spec->ndim > PLDR_TENSOR_MAX_DIMS ||
        strnlen(spec->name, PLDR_TENSOR_NAME_MAX) >= PLDR_TENSOR_NAME_MAX)
        abort();
    for (int i = 0; i < spec->ndim; i++)
        if (spec->shape[i] < 1)
            abort();
    return ++*n < WALK_LIMIT ? PLDR_OK : PLDR_ERR_MISMATCH;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pldr_config c;
    memset(&c, 0xa5, sizeof c);
    if (pldr_config_parse((const char *)data, size, "fuzz/config.json", &c) != PLDR_OK)
        return 0;
    if (c.n_layers < 1 || c.d_model < 1 || c.n_heads < 1 || c.head_dim < 2 || c.head_dim % 2 ||
        (long long)c.n_heads * c.head_dim != c.d_model || c.d_ff < 1 || c.n_reslayer_a < 1 ||
        c.n_dense_a < 1 || c.a_dff < 1 || c.vocab_size < 1 || c.max_position < 1 ||
        !(c.layer_norm_eps > 0) || !isfinite(c.layer_norm_eps) || !(c.rope_theta > 0) ||
        !isfinite(c.rope_theta) || c.bos_token_id < 0 || c.bos_token_id >= c.vocab_size ||
        c.eos_token_id < 0 || c.eos_token_id >= c.vocab_size || c.pad_token_id < 0 ||
        c.pad_token_id >= c.vocab_size || (unsigned)c.g_type > PLDR_G_EXTERNAL)
        abort();
    size_t n = 0;
    pldr_status st = pldr_checkpoint_foreach(&c, visit, &n);
    if (st != PLDR_OK && st != PLDR_ERR_MISMATCH)
        abort(); /* every name must fit */
    st_archive empty = {0};
    if (pldr_checkpoint_check(&c, &empty, "fuzz") == PLDR_OK)
        abort(); /* a checkpoint always has tensors */
    return 0;
}
