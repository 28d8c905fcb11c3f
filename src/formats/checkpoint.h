/* The tensors of a PLDR-LLM checkpoint ("Checkpoint layout" in
 * shared/docs/pldr-llm.md) and the check of a checkpoint against its config:
 * every expected tensor present with the shape the config implies and a float
 * dtype (F32, F16, BF16), no tensor that the model does not use.
 *
 * pldr_checkpoint_foreach is the one place that knows the tensor names; the
 * check and the model loader both enumerate through it. */
#ifndef PLDR_CHECKPOINT_H
#define PLDR_CHECKPOINT_H

#include <stdint.h>

#include "pldr.h"
#include "formats/safetensors.h"

/* Longer than any name the config's caps allow. */
#define PLDR_TENSOR_NAME_MAX 128
#define PLDR_TENSOR_MAX_DIMS 6

/* One tensor the config implies. */
typedef struct pldr_tensor_spec {
    char name[PLDR_TENSOR_NAME_MAX];
    int ndim;
    int64_t shape[PLDR_TENSOR_MAX_DIMS];
    int layer; /* decoder layer i, or -1 for model-level tensors */
    int unit;  /* residual unit j of the metric learner (reslayerAs.j), else -1 */
    int glu;   /* GLU k within that unit (denseAs.k), else -1 */
} pldr_tensor_spec;

/* Called once per tensor; a status other than PLDR_OK stops the walk and is
 * returned by pldr_checkpoint_foreach. */
typedef pldr_status (*pldr_tensor_visit_fn)(const pldr_tensor_spec *spec, void *user);

/* Visits every tensor the config implies, in the order of the spec's layout:
 * decoder.embedding, decoder.layernorm1, then per layer mha1.{wq,wk,wv,dense},
 * (learned G only) mha1.layernorm1, reslayerAs.*, plgatt_layer.*, then ffn,
 * layernorm1/2; then the class's head (final_layer, score, qa_outputs, or
 * none for PldrllmModel); and decoder.past_G_values only for a
 * predefined G (custom_G_type identity/random/external). Biases are always
 * included since the config loader requires them. */
pldr_status pldr_checkpoint_foreach(const pldr_config *cfg, pldr_tensor_visit_fn visit, void *user);

/* dir names the checkpoint in messages for missing tensors; a message about a
 * present tensor names the file that holds it. Status: PLDR_ERR_FORMAT for a
 * missing, extra or wrongly shaped tensor, PLDR_ERR_UNSUPPORTED for a dtype
 * other than F32, F16 or BF16. */
pldr_status pldr_checkpoint_check(const pldr_config *cfg, const st_archive *ar, const char *dir);

/* A PldrllmModel saved on its own names its tensors without the "decoder."
 * prefix that the classes holding it use (transformers' base_model_prefix);
 * this adds the prefix to every name of such an archive, so that the check and
 * the loader see one layout. Other archives are left as they are. */
pldr_status pldr_checkpoint_names(const pldr_config *cfg, st_archive *ar);

#endif
