/* config.json parsing from memory, for callers inside the library and the
 * fuzz targets; pldr_config_load (include/pldr.h) reads the file and calls it. */
#ifndef PLDR_CONFIG_PARSE_H
#define PLDR_CONFIG_PARSE_H

#include <stddef.h>

#include "pldr.h"

/* Parses and range-checks a config.json held in memory (json, len; no NUL
 * needed). `label` names the file in messages. *config is written only on
 * success. */
pldr_status pldr_config_parse(const char *json, size_t len, const char *label, pldr_config *config);

/* What a config holds beyond pldr_config's fixed fields. */
typedef struct pldr_config_extra {
    char **labels;        /* [num_labels] label names by id (classifiers), else NULL */
    size_t n_labels;      /* entries of labels, set or not (a failed read leaves gaps) */
    double *short_factor; /* longrope: [head_dim / 2] each, else NULL */
    double *long_factor;
    double beta_fast, beta_slow; /* yarn (defaults 32 and 1) */
    int truncate;                /* yarn: the correction range rounded outwards (default) */
    double low_freq_factor, high_freq_factor; /* llama3 */
} pldr_config_extra;

/* As pldr_config_parse, and fills *extra (zeroed on failure; may be NULL). */
pldr_status pldr_config_parse_extra(const char *json, size_t len, const char *label, pldr_config *config,
                                    pldr_config_extra *extra);
pldr_status pldr_config_load_extra(const char *path, pldr_config *config, pldr_config_extra *extra);
void pldr_config_extra_free(pldr_config_extra *extra);

/* RoPE's inverse frequencies [head_dim / 2] for a context of n_ctx positions
 * (rope_scaling included; the attention factor is config->rope_attention_factor).
 * A longrope context longer than original_max_position_embeddings is
 * PLDR_ERR_UNSUPPORTED: transformers switches every position of such a
 * sequence to the long factors, which a per-position table cannot hold. */
pldr_status pldr_rope_inv_freq(const pldr_config *config, const pldr_config_extra *extra, int n_ctx,
                               double *inv_freq);

#endif
