/* libFuzzer target: st_parse on arbitrary bytes, as a safetensors file.
 *
 * An accepted image must describe tensors that lie inside it: each one is
 * converted to float (F32/F16/BF16) or summed byte by byte, so that ASan sees
 * any pointer st_parse let out of the buffer. The buffer is copied to an exact
 * heap allocation so that a read one byte past it is caught. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile unsigned sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    st_archive ar = {0};
    if (st_parse(copy, size, "fuzz.safetensors", 0, &ar) == PLDR_OK) {
        const uint8_t *end = copy + size;
        for (size_t i = 0; i < ar.n_tensors; i++) {
            const st_tensor *t = &ar.tensors[i];
            if (t->nbytes > 0 && (t->data < copy || t->data + t->nbytes > end))
                abort();
            if (i > 0 && strcmp(ar.tensors[i - 1].name, t->name) >= 0)
                abort(); /* sorted, unique names */
            if (st_find(&ar, t->name) != t)
                abort();
            if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
                float *f = malloc(t->n_elements ? t->n_elements * sizeof *f : 1);
                if (f && st_to_f32(t, f) != PLDR_OK)
                    abort();
                free(f);
            } else {
                unsigned sum = 0;
                for (uint64_t k = 0; k < t->nbytes; k++)
                    sum += t->data[k];
                sink = sum;
            }
        }
        st_close(&ar);
    } else if (ar.n_tensors != 0 || ar.tensors != NULL) {
        abort(); /* a failed parse leaves the archive as it was */
    }
    free(copy);
    return 0;
}
