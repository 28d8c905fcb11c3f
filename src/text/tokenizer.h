/* The tokenizer's internal interface for generation: a growable byte buffer
 * and an incremental decoder that turns one token at a time into the text it
 * completes, with constant work per token. */
#ifndef PLDR_TEXT_TOKENIZER_H
#define PLDR_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "pldr.h"

typedef struct pldr_bytes {
    char *data; /* NUL-terminated when cap > 0 */
    size_t len, cap;
} pldr_bytes;

/* Returns 0 when out of memory. */
int pldr_bytes_append(pldr_bytes *b, const void *data, size_t n);

/* Decodes as pldr_detokenize does over the whole sequence, one id at a time:
 * the concatenation of every push's output and the final flush is
 * pldr_detokenize of all the ids (a tokenizer with a denormalizer applies
 * it to each piece of text on its own). Byte pieces that begin a UTF-8
 * character are held until the character is complete or cannot be. */
typedef struct pldr_detok {
    const pldr_tokenizer *tok;
    unsigned char pend[4]; /* byte pieces of an incomplete character */
    int n_pend;
    int is_bos_ws, bos_ws_seen;
    size_t total; /* bytes decoded so far */
} pldr_detok;

void pldr_detok_init(pldr_detok *d, const pldr_tokenizer *tok);
/* Appends the text that id completes to out. */
pldr_status pldr_detok_push(pldr_detok *d, int32_t id, pldr_bytes *out);
/* Appends what is held (an incomplete character, as U+FFFD per byte). */
pldr_status pldr_detok_flush(pldr_detok *d, pldr_bytes *out);

#endif
