/* libFuzzer target: encoding arbitrary bytes with real tokenizers, then
 * decoding the ids; and decoding arbitrary ids.
 *
 * Models: $PLDR_FUZZ_TOKENIZERS (paths separated by ':'), else the bundled
 * models/pldr-tiny-pydocs/tokenizer.model and
 * tests/data/tokenizer/pldr-refinedweb-32k.model, both relative to
 * $PLDR_SRCDIR (default: the source tree this was built from). A missing
 * shared model is skipped with a note; no model at all is an error.
 *
 * Checks: encoding succeeds with ids in range, decoding those ids succeeds
 * with a NUL-terminated result, and decoding ids taken from the input
 * (including negative and too large ones) either succeeds or is rejected as
 * an invalid argument. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pldr.h"

#ifndef PLDR_FUZZ_SRCDIR
#define PLDR_FUZZ_SRCDIR "."
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MODELS 8
static pldr_tokenizer *models[MAX_MODELS];
static int n_models;

static void load_model(const char *path, int required)
{
    if (n_models == MAX_MODELS)
        return;
    pldr_tokenizer *tok = NULL;
    pldr_status st = pldr_tokenizer_load(path, &tok);
    if (st == PLDR_OK) {
        models[n_models++] = tok;
        fprintf(stderr, "fuzz_encode: %s (%d pieces)\n", path, pldr_tokenizer_vocab_size(tok));
    } else if (required || st != PLDR_ERR_IO) {
        fprintf(stderr, "fuzz_encode: cannot load %s: %s\n", path, pldr_last_error());
        exit(1);
    } else {
        fprintf(stderr, "fuzz_encode: skipping %s: %s\n", path, pldr_last_error());
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *list = getenv("PLDR_FUZZ_TOKENIZERS");
    if (list && *list) {
        char *copy = strdup(list), *save = NULL;
        for (char *p = strtok_r(copy, ":", &save); p; p = strtok_r(NULL, ":", &save))
            load_model(p, 1);
        free(copy);
    } else {
        const char *srcdir = getenv("PLDR_SRCDIR");
        if (!srcdir || !*srcdir)
            srcdir = PLDR_FUZZ_SRCDIR;
        char path[4096];
        snprintf(path, sizeof path, "%s/models/pldr-tiny-pydocs/tokenizer.model", srcdir);
        load_model(path, 1);
        snprintf(path, sizeof path, "%s/tests/data/tokenizer/pldr-refinedweb-32k.model", srcdir);
        load_model(path, 0);
    }
    if (n_models == 0) {
        fprintf(stderr, "fuzz_encode: no tokenizer model\n");
        exit(1);
    }
    return 0;
}

static void decode_checked(const pldr_tokenizer *tok, const int32_t *ids, size_t n, int must_succeed)
{
    char *text = NULL;
    size_t len = 0;
    pldr_status st = pldr_detokenize(tok, ids, n, &text, &len);
    if (st == PLDR_OK) {
        if (!text || text[len] != '\0')
            abort();
    } else if (must_succeed || st != PLDR_ERR_INVALID_ARGUMENT || text) {
        fprintf(stderr, "pldr_detokenize: %s\n", pldr_last_error());
        abort();
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact copy, so that ASan sees a read past the end of the text */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    for (int m = 0; m < n_models; m++) {
        const pldr_tokenizer *tok = models[m];
        int n_vocab = pldr_tokenizer_vocab_size(tok);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if (pldr_tokenize(tok, text, size, &ids, &n_ids) != PLDR_OK) {
            fprintf(stderr, "pldr_tokenize: %s\n", pldr_last_error());
            abort();
        }
        for (size_t i = 0; i < n_ids; i++)
            if (ids[i] < 0 || ids[i] >= n_vocab)
                abort();
        decode_checked(tok, ids, n_ids, 1);
        free(ids);

        /* the input as little-endian 16-bit ids, shifted so that a few fall
         * below 0 and above the vocabulary */
        size_t n_raw = size / 2;
        int32_t *raw = malloc((n_raw ? n_raw : 1) * sizeof *raw);
        if (!raw)
            break;
        for (size_t i = 0; i < n_raw; i++) {
            int32_t v = (int32_t)(data[2 * i] | data[2 * i + 1] << 8);
            raw[i] = v % (n_vocab + 16) - 8;
        }
        decode_checked(tok, raw, n_raw, 0);
        /* the same ids clamped into range must decode */
        for (size_t i = 0; i < n_raw; i++)
            raw[i] = raw[i] < 0 ? 0 : raw[i] >= n_vocab ? n_vocab - 1 : raw[i];
        decode_checked(tok, raw, n_raw, 1);
        free(raw);
    }
    free(text);
    return 0;
}
