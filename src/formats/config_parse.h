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

#endif
