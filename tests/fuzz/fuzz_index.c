/* libFuzzer target: the model.safetensors.index.json parser (st_index_parse)
 * on arbitrary bytes and, when it accepts them, st_index_check against shards
 * held in memory.
 *
 * Shard contents come from the shard name: "a.safetensors" holds tensors x
 * and y, "b.safetensors" holds z, "c.safetensors" holds z and x (x repeats
 * a's), any other name an empty file. These are the fixtures of
 * tests/unit/test_loader.c, so the seeds reach every rule of the check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct shard_image {
    const char *name;
    const char *header;
    size_t data_len;
    uint8_t *bytes;
    size_t size;
} shard_image;

static shard_image images[] = {
    {"a.safetensors",
     "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, NULL, 0},
    {"b.safetensors", "{\"z\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 6, NULL, 0},
    {"c.safetensors",
     "{\"z\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
     "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[6,10]}}",
     10, NULL, 0},
    {NULL, "{}", 0, NULL, 0}, /* every other name */
};
#define N_IMAGES (sizeof images / sizeof images[0])

static void build_images(void)
{
    for (size_t i = 0; i < N_IMAGES; i++) {
        shard_image *im = &images[i];
        size_t hl = strlen(im->header);
        im->size = 8 + hl + im->data_len;
        im->bytes = calloc(1, im->size);
        if (!im->bytes)
            abort();
        for (int k = 0; k < 8; k++)
            im->bytes[k] = (uint8_t)((uint64_t)hl >> (8 * k));
        memcpy(im->bytes + 8, im->header, hl);
    }
}

static const shard_image *image_for(const char *shard)
{
    for (size_t i = 0; i < N_IMAGES - 1; i++)
        if (strcmp(images[i].name, shard) == 0)
            return &images[i];
    return &images[N_IMAGES - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!images[0].bytes)
        build_images();
    st_index ix;
    if (st_index_parse((const char *)data, size, "fuzz.index.json", &ix) != PLDR_OK) {
        if (ix.entries || ix.shards || ix.n_entries || ix.n_shards)
            abort(); /* zeroed on failure */
        return 0;
    }
    if (ix.n_entries == 0 || ix.n_shards < 1 || (size_t)ix.n_shards > ix.n_entries)
        abort();
    for (int i = 0; i < ix.n_shards; i++) {
        if (i > 0 && strcmp(ix.shards[i - 1], ix.shards[i]) >= 0)
            abort(); /* sorted and distinct */
        if (!ix.shards[i][0] || strchr(ix.shards[i], '/') || !strcmp(ix.shards[i], "..") ||
            !strcmp(ix.shards[i], "."))
            abort(); /* only plain file names get through */
    }
    for (size_t i = 0; i < ix.n_entries; i++)
        if (ix.entries[i].shard < 0 || ix.entries[i].shard >= ix.n_shards)
            abort();
    /* the archive as st_open_dir would build it: file i from shard i */
    st_archive ar = {0};
    pldr_status st = PLDR_OK;
    for (int i = 0; st == PLDR_OK && i < ix.n_shards; i++) {
        const shard_image *im = image_for(ix.shards[i]);
        st = st_parse(im->bytes, im->size, ix.shards[i], i, &ar);
    }
    if (st == PLDR_OK)
        st = st_index_check(&ix, &ar, "fuzz.index.json");
    st_close(&ar);
    st_index_free(&ix);
    return 0;
}
