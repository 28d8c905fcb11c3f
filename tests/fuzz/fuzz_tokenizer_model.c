/* libFuzzer target: loading a tokenizer.model (a serialized SentencePiece
 * ModelProto) from arbitrary bytes.
 *
 * pldr_tokenizer_load takes a path, so the input goes into a memfd that is
 * opened again through /proc/self/fd (no file system traffic). A model that
 * loads must then encode and decode a fixed text, and answer
 * pldr_token_piece for ids in and out of range. */
#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pldr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char sample[] = "Hello, W\xc3\xb6rld!  def f(x):\n\treturn x**2 \xe2\x80\x94 \xef\xbc\xa1\xe3\x81\x82 "
                             "\xf0\x9f\x98\x80 \xff\xfe <s></s><unk> 123";

static int mem_fd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (mem_fd < 0) {
        mem_fd = memfd_create("tokenizer.model", MFD_CLOEXEC);
        if (mem_fd < 0) {
            perror("memfd_create");
            abort();
        }
    }
    if (ftruncate(mem_fd, 0) != 0 || pwrite(mem_fd, data, size, 0) != (ssize_t)size)
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", mem_fd);

    pldr_tokenizer *tok = NULL;
    if (pldr_tokenizer_load(path, &tok) != PLDR_OK) {
        if (tok)
            abort(); /* no handle on failure */
        return 0;
    }
    int n_vocab = pldr_tokenizer_vocab_size(tok);
    if (n_vocab < 1)
        abort();
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (pldr_tokenize(tok, sample, sizeof sample - 1, &ids, &n_ids) == PLDR_OK) {
        for (size_t i = 0; i < n_ids; i++)
            if (ids[i] < 0 || ids[i] >= n_vocab)
                abort();
        char *text = NULL;
        size_t len = 0;
        if (pldr_detokenize(tok, ids, n_ids, &text, &len) == PLDR_OK && text[len] != '\0')
            abort();
        free(text);
    }
    free(ids);
    if (pldr_token_piece(tok, -1) || pldr_token_piece(tok, n_vocab))
        abort();
    for (int32_t id = 0; id < n_vocab && id < 512; id++)
        if (!pldr_token_piece(tok, id))
            abort();
    pldr_tokenizer_free(tok);
    return 0;
}
