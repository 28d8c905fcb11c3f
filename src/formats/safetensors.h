/* safetensors files and Hugging Face checkpoint directories.
 *
 * A file is memory-mapped; its JSON header is validated completely before any
 * tensor is exposed: header length <= 100 MB and inside the file, valid UTF-8
 * JSON without duplicate keys, "__metadata__" string -> string only, dtypes
 * from a closed list, shape x dtype size (overflow-checked) equal to the
 * length given by data_offsets, offsets that (sorted) start at 0, are
 * contiguous and end exactly at the end of the file. Every rejection returns
 * PLDR_ERR_FORMAT (PLDR_ERR_IO for an unreadable file) with a message naming
 * the file and the reason.
 *
 * Tensor data stays in the read-only mapping: truncating a file while it is
 * open makes later reads of its tensors fault (SIGBUS), as with any mmap. */
#ifndef PLDR_SAFETENSORS_H
#define PLDR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "pldr.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1000u * 1000u)

typedef enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_I16, ST_U16, ST_F16, ST_BF16,
    ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64,
    ST_DTYPE_COUNT
} st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t n_elements;
    const uint8_t *data; /* points into the mapping of its file */
    uint64_t nbytes;
    int file; /* index into st_archive.files */
} st_tensor;

typedef struct st_file {
    char *path;
    void *map;   /* whole file mapping (NULL for an empty mapping) */
    size_t size; /* file size */
} st_file;

typedef struct st_archive {
    st_file *files;
    int n_files;
    st_tensor *tensors; /* sorted by name */
    size_t n_tensors;
} st_archive;

const char *st_dtype_name(st_dtype dtype);
size_t st_dtype_size(st_dtype dtype);

/* Validates a safetensors image held in memory (data, size) and appends its
 * tensors to ar with file index `file`; tensor data pointers point into data,
 * which must outlive ar. `label` names the file in messages. A name already in
 * ar (another shard) is an error. On failure ar is left as it was. Exposed
 * separately for fuzzing. */
pldr_status st_parse(const uint8_t *data, size_t size, const char *label, int file, st_archive *ar);

/* Maps one safetensors file and appends it to ar (ar zeroed, or holding
 * earlier files). On failure ar is left as it was. */
pldr_status st_open_file(const char *path, st_archive *ar);

/* Lets the pages of tensor t's data that lie wholly inside it leave this
 * process's resident set (they stay in the page cache and come back if read
 * again): a loader calls it once a tensor is uploaded, so that the mapping
 * and the uploaded copy are not both resident. Only for files that
 * st_open_file mapped. */
void st_release_pages(const st_archive *ar, const st_tensor *t);

/* A model.safetensors.index.json: its weight_map (tensor name -> shard file
 * name), checked on its own. */
typedef struct st_index_entry {
    char *tensor;
    int shard; /* index into st_index.shards */
} st_index_entry;

typedef struct st_index {
    char **shards; /* the distinct shard names, sorted */
    int n_shards;
    st_index_entry *entries; /* in the order of the file */
    size_t n_entries;
    st_index_entry **by_name; /* the same entries sorted by tensor name */
} st_index;

/* Parses an index held in memory (json, len; no NUL needed). Rules: valid
 * JSON without duplicate keys, "weight_map" a non-empty object whose values
 * are plain file names (no '/', not "." or "..", no NUL). `label` names the
 * file in messages. On failure ix is zeroed. Exposed separately for fuzzing. */
pldr_status st_index_parse(const char *json, size_t len, const char *label, st_index *ix);

/* Checks an archive whose file i was opened from shard i of ix: every tensor
 * of weight_map is in its shard, and the shards hold no other tensor. */
pldr_status st_index_check(const st_index *ix, const st_archive *ar, const char *label);

void st_index_free(st_index *ix);

/* Opens a checkpoint directory: model.safetensors, or the shards listed by
 * model.safetensors.index.json (shard names must be plain file names; every
 * tensor of weight_map must exist in its shard and appear once; a shard's
 * tensor missing from weight_map is an error too). Neither file present is
 * PLDR_ERR_IO naming the directory. ar must be empty (zeroed or st_close'd);
 * on failure it is closed again. */
pldr_status st_open_dir(const char *dir, st_archive *ar);

/* Binary search by name; NULL if absent. */
const st_tensor *st_find(const st_archive *ar, const char *name);

/* Converts a tensor of F32, F16 or BF16 to float32 (dst holds n_elements);
 * the data may be unaligned. Other dtypes: PLDR_ERR_UNSUPPORTED. */
pldr_status st_to_f32(const st_tensor *t, float *dst);

/* Takes file `file`'s mapping out of ar: st_close then leaves it mapped, and
 * the caller unmaps it with st_unmap once nothing reads it (buffers created
 * over its tensors' bytes, for instance). Its tensors' data pointers stay
 * valid until then. */
void st_take_mapping(st_archive *ar, int file, void **map, size_t *size);
void st_unmap(void *map, size_t size);

/* Unmaps every file and frees everything; ar is zeroed and may be reused. */
void st_close(st_archive *ar);

#endif
