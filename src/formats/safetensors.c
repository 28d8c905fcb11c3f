/* safetensors reader: validates a whole header before exposing any tensor.
 *
 * Layout of a file: an 8-byte little-endian header length N, N bytes of JSON
 * (an object of tensor name -> {dtype, shape, data_offsets}, plus an optional
 * "__metadata__" string map), then the data region, which the tensors must
 * tile exactly. The rules follow the reference implementation's, which
 * survived fuzzing; every rejection names the file and the reason. */
#include "config.h"

#include "formats/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

/* ------------------------------------------------------------------ */
/* dtypes                                                              */

static const struct {
    const char *name;
    size_t size;
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1},       [ST_U8] = {"U8", 1},   [ST_I8] = {"I8", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_I16] = {"I16", 2},         [ST_U16] = {"U16", 2}, [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},       [ST_I32] = {"I32", 4}, [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},         [ST_F64] = {"F64", 8}, [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},
};

const char *st_dtype_name(st_dtype dtype)
{
    return (unsigned)dtype < ST_DTYPE_COUNT ? st_dtypes[dtype].name : "?";
}

size_t st_dtype_size(st_dtype dtype)
{
    return (unsigned)dtype < ST_DTYPE_COUNT ? st_dtypes[dtype].size : 0;
}

static int st_dtype_from_name(const char *name, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(st_dtypes[i].name, name) == 0) {
            *out = (st_dtype)i;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Header parsing                                                      */

/* A tensor whose entry is valid on its own; the layout check needs its offsets. */
typedef struct st_pending {
    st_tensor t;
    uint64_t begin, end;
} st_pending;

static uint64_t read_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static pldr_status json_failure(const char *label, const char *what, const json_error_t *err)
{
    const char *reason = "is not valid JSON";
#if JANSSON_VERSION_HEX >= 0x020b00
    switch (json_error_code(err)) {
    case json_error_invalid_utf8: reason = "is not valid UTF-8"; break;
    case json_error_duplicate_key: reason = "has a duplicate key"; break;
    case json_error_numeric_overflow: reason = "has a number out of range"; break;
    case json_error_out_of_memory:
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory parsing the %s", label, what);
    default: break;
    }
#endif
    return pldr_fail(PLDR_ERR_FORMAT, "%s: %s %s: %s (at byte %d)", label, what, reason, err->text,
                     err->position);
}

/* Reads N, checks it against the limit and the file, and parses the JSON object. */
static pldr_status load_header(const uint8_t *data, size_t size, const char *label, json_t **root,
                               uint64_t *header_len)
{
    if (size < 8)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length",
                         label, size);
    uint64_t n = read_le64(data);
    if (n > ST_MAX_HEADER)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the limit of %u bytes",
                         label, n, ST_MAX_HEADER);
    if (n > size - 8)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)", label,
                         n, size);
    json_error_t err;
    *root = json_loadb((const char *)data + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (!*root)
        return json_failure(label, "header", &err);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return pldr_fail(PLDR_ERR_FORMAT, "%s: header is not a JSON object", label);
    }
    *header_len = n;
    return PLDR_OK;
}

static pldr_status check_metadata(const json_t *meta, const char *label)
{
    if (!json_is_object(meta))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: \"__metadata__\" is not an object", label);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)meta, key, value) {
        if (!json_is_string(value))
            return pldr_fail(PLDR_ERR_FORMAT, "%s: \"__metadata__\" value of \"%s\" is not a string",
                             label, key);
    }
    return PLDR_OK;
}

static pldr_status parse_dtype(const json_t *v, const char *label, const char *name, st_dtype *out)
{
    if (!json_is_string(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": dtype is not a string", label, name);
    if (!st_dtype_from_name(json_string_value(v), out))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": unknown dtype \"%s\"", label, name,
                         json_string_value(v));
    return PLDR_OK;
}

/* Fills ndim, shape and n_elements; the element count is overflow-checked. */
static pldr_status parse_shape(const json_t *v, const char *label, const char *name, st_tensor *t)
{
    if (!json_is_array(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": shape is not an array", label, name);
    size_t ndim = json_array_size(v);
    if (ndim > ST_MAX_DIMS)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": shape has %zu dimensions, more than %d",
                         label, name, ndim, ST_MAX_DIMS);
    int has_zero = 0;
    for (size_t i = 0; i < ndim; i++) {
        const json_t *d = json_array_get(v, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return pldr_fail(PLDR_ERR_FORMAT,
                             "%s: tensor \"%s\": shape entry %zu is not a non-negative integer", label,
                             name, i);
        t->shape[i] = (int64_t)json_integer_value(d);
        has_zero |= t->shape[i] == 0;
    }
    /* an empty tensor is valid whatever its other dimensions */
    uint64_t count = has_zero ? 0 : 1;
    for (size_t i = 0; i < ndim && count != 0; i++) {
        uint64_t n = (uint64_t)t->shape[i];
        if (count > UINT64_MAX / n)
            return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": element count of the shape overflows",
                             label, name);
        count *= n;
    }
    t->ndim = (int)ndim;
    t->n_elements = count;
    return PLDR_OK;
}

static pldr_status parse_offsets(const json_t *v, const char *label, const char *name, uint64_t *begin,
                                 uint64_t *end)
{
    if (!json_is_array(v) || json_array_size(v) != 2)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": data_offsets is not a [begin, end] pair",
                         label, name);
    const json_t *b = json_array_get(v, 0), *e = json_array_get(v, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
        json_integer_value(e) < 0)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: tensor \"%s\": data_offsets are not non-negative integers", label, name);
    *begin = (uint64_t)json_integer_value(b);
    *end = (uint64_t)json_integer_value(e);
    if (*end < *begin)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: tensor \"%s\": data_offsets end %" PRIu64 " is before begin %" PRIu64,
                         label, name, *end, *begin);
    return PLDR_OK;
}

/* Validates one tensor entry on its own (not yet its place in the data region). */
static pldr_status parse_tensor(const char *name, const json_t *entry, const char *label, st_pending *p)
{
    if (name[0] == '\0')
        return pldr_fail(PLDR_ERR_FORMAT, "%s: a tensor has an empty name", label);
    if (!json_is_object(entry))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": entry is not an object", label, name);
    static const char *const keys[] = {"dtype", "shape", "data_offsets"};
    const json_t *v[3];
    for (int i = 0; i < 3; i++) {
        v[i] = json_object_get(entry, keys[i]);
        if (!v[i])
            return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": missing \"%s\"", label, name, keys[i]);
    }
    if (json_object_size(entry) != 3) {
        const char *key;
        json_t *value;
        json_object_foreach((json_t *)entry, key, value) {
            if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
                return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": unexpected key \"%s\"", label,
                                 name, key);
        }
    }
    pldr_status st = parse_dtype(v[0], label, name, &p->t.dtype);
    if (st == PLDR_OK)
        st = parse_shape(v[1], label, name, &p->t);
    if (st == PLDR_OK)
        st = parse_offsets(v[2], label, name, &p->begin, &p->end);
    if (st != PLDR_OK)
        return st;
    size_t esize = st_dtype_size(p->t.dtype);
    if (p->t.n_elements > UINT64_MAX / esize)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\": byte size of the shape overflows", label,
                         name);
    p->t.nbytes = p->t.n_elements * esize;
    if (p->end - p->begin != p->t.nbytes)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: tensor \"%s\": shape and dtype %s need %" PRIu64
                         " bytes but data_offsets span %" PRIu64 " bytes",
                         label, name, st_dtype_name(p->t.dtype), p->t.nbytes, p->end - p->begin);
    return PLDR_OK;
}

static int compare_by_offsets(const void *a, const void *b)
{
    const st_pending *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* The tensors, sorted by offsets, must tile the data region exactly: a gap or
 * overlap means bytes that belong to no tensor or to two of them. */
static pldr_status check_layout(st_pending *p, size_t n, uint64_t region, const char *label)
{
    qsort(p, n, sizeof *p, compare_by_offsets);
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i].begin > pos && i == 0)
            return pldr_fail(PLDR_ERR_FORMAT,
                             "%s: tensor \"%s\": data starts at byte %" PRIu64
                             "; the first tensor must start at 0",
                             label, p[i].t.name, p[i].begin);
        if (p[i].begin > pos)
            return pldr_fail(PLDR_ERR_FORMAT,
                             "%s: gap of %" PRIu64 " bytes between tensors \"%s\" and \"%s\"", label,
                             p[i].begin - pos, p[i - 1].t.name, p[i].t.name);
        if (p[i].begin < pos)
            return pldr_fail(PLDR_ERR_FORMAT, "%s: tensors \"%s\" and \"%s\" overlap", label,
                             p[i - 1].t.name, p[i].t.name);
        pos = p[i].end;
    }
    if (pos != region)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: tensors end at byte %" PRIu64
                         " of the data region but the data region has %" PRIu64
                         " bytes (it must end at the end of the file)",
                         label, pos, region);
    return PLDR_OK;
}

static int compare_by_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static const char *file_label(const st_archive *ar, int file)
{
    return file >= 0 && file < ar->n_files ? ar->files[file].path : "an earlier file";
}

/* Moves the validated tensors into the archive, keeping it sorted by name.
 * A name already present (from another shard) is an error. */
static pldr_status merge_tensors(st_archive *ar, st_pending *p, size_t n, const char *label)
{
    for (size_t i = 0; i < n; i++) {
        const st_tensor *old = st_find(ar, p[i].t.name);
        if (old)
            return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\" is also in %s", label, p[i].t.name,
                             file_label(ar, old->file));
    }
    size_t total, bytes;
    if (!pldr_add_size(ar->n_tensors, n, &total) || !pldr_mul_size(total, sizeof(st_tensor), &bytes))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: too many tensors", label);
    st_tensor *grown = realloc(ar->tensors, bytes ? bytes : 1);
    if (!grown)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot allocate the tensor table", label);
    ar->tensors = grown;
    for (size_t i = 0; i < n; i++) {
        ar->tensors[ar->n_tensors++] = p[i].t;
        p[i].t.name = NULL; /* now owned by the archive */
    }
    qsort(ar->tensors, ar->n_tensors, sizeof(st_tensor), compare_by_name);
    return PLDR_OK;
}

static void free_pending(st_pending *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++)
        free(p[i].t.name);
    free(p);
}

/* Validates every entry of the header object into a pending array. */
static pldr_status parse_entries(json_t *root, const char *label, int file,
                                 st_pending **out, size_t *n_out)
{
    size_t cap = json_object_size(root);
    st_pending *p = calloc(cap ? cap : 1, sizeof *p);
    if (!p)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot allocate %zu tensor entries", label, cap);
    size_t n = 0;
    pldr_status st = PLDR_OK;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0) {
            st = check_metadata(value, label);
        } else {
            st = parse_tensor(key, value, label, &p[n]);
            if (st == PLDR_OK) {
                p[n].t.name = pldr_strdup(key);
                p[n].t.file = file;
                n++;
                if (!p[n - 1].t.name)
                    st = pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory", label);
            }
        }
        if (st != PLDR_OK)
            break;
    }
    if (st != PLDR_OK) {
        free_pending(p, n);
        return st;
    }
    *out = p;
    *n_out = n;
    return PLDR_OK;
}

pldr_status st_parse(const uint8_t *data, size_t size, const char *label, int file, st_archive *ar)
{
    json_t *root = NULL;
    uint64_t header_len = 0;
    pldr_status st = load_header(data, size, label, &root, &header_len);
    if (st != PLDR_OK)
        return st;
    const uint8_t *region = data + 8 + header_len;
    uint64_t region_size = (uint64_t)size - 8 - header_len;
    st_pending *p = NULL;
    size_t n = 0;
    st = parse_entries(root, label, file, &p, &n);
    if (st == PLDR_OK)
        st = check_layout(p, n, region_size, label);
    /* the offsets are inside the region only once the layout is proven */
    for (size_t i = 0; st == PLDR_OK && i < n; i++)
        p[i].t.data = region + p[i].begin;
    if (st == PLDR_OK)
        st = merge_tensors(ar, p, n, label);
    free_pending(p, n);
    json_decref(root);
    return st;
}

/* ------------------------------------------------------------------ */
/* Files                                                               */

static pldr_status map_file(const char *path, void **map, size_t *size)
{
    *map = NULL;
    *size = 0;
    int fd;
    uint64_t fsize;
    pldr_status ost = pldr_open_regular(path, &fd, &fsize);
    if (ost != PLDR_OK)
        return ost;
    if (fsize > SIZE_MAX) {
        close(fd);
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: file too large to map", path);
    }
    size_t n = (size_t)fsize;
    if (n > 0) {
        /* read-only shared mapping: the weights are never copied on the host */
        void *m = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            pldr_status st = pldr_fail(PLDR_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
            close(fd);
            return st;
        }
        *map = m;
    }
    close(fd);
    *size = n;
    return PLDR_OK;
}

pldr_status st_open_file(const char *path, st_archive *ar)
{
    st_file *files = realloc(ar->files, ((size_t)ar->n_files + 1) * sizeof *files);
    if (!files)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory", path);
    ar->files = files;
    st_file *f = &files[ar->n_files];
    memset(f, 0, sizeof *f);
    f->path = pldr_strdup(path);
    if (!f->path)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory", path);
    pldr_status st = map_file(path, &f->map, &f->size);
    if (st == PLDR_OK) {
        ar->n_files++; /* visible to st_parse's messages about duplicates */
        st = st_parse(f->map, f->size, path, ar->n_files - 1, ar);
        if (st != PLDR_OK)
            ar->n_files--;
    }
    if (st != PLDR_OK) {
        if (f->map)
            munmap(f->map, f->size);
        free(f->path);
        memset(f, 0, sizeof *f);
    }
    return st;
}

/* ------------------------------------------------------------------ */
/* The index (model.safetensors.index.json)                            */

/* A shard must be a plain file name inside the checkpoint directory. */
static pldr_status check_shard_name(const json_t *v, const char *label, const char *tensor)
{
    if (!json_is_string(v))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: weight_map entry \"%s\" is not a string", label, tensor);
    const char *s = json_string_value(v);
    if (s[0] == '\0' || strlen(s) != json_string_length(v) || strchr(s, '/') ||
        strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return pldr_fail(PLDR_ERR_FORMAT,
                         "%s: weight_map entry \"%s\": shard \"%s\" is not a plain file name in the "
                         "checkpoint directory",
                         label, tensor, s);
    return PLDR_OK;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int compare_entries_by_name(const void *a, const void *b)
{
    return strcmp((*(st_index_entry *const *)a)->tensor, (*(st_index_entry *const *)b)->tensor);
}

static int shard_of(const st_index *ix, const char *name)
{
    char *const *hit = bsearch(&name, ix->shards, (size_t)ix->n_shards, sizeof *ix->shards, compare_strings);
    return hit ? (int)(hit - ix->shards) : -1;
}

static const st_index_entry *index_find(const st_index *ix, const char *tensor)
{
    st_index_entry key = {(char *)tensor, 0}, *kp = &key;
    st_index_entry *const *hit =
        bsearch(&kp, ix->by_name, ix->n_entries, sizeof *ix->by_name, compare_entries_by_name);
    return hit ? *hit : NULL;
}

/* Copies the names out of weight_map (already checked): the entries in file
 * order, the distinct shard names sorted, each entry pointing at its shard. */
static pldr_status build_index(json_t *weight_map, const char *label, st_index *ix)
{
    size_t n = json_object_size(weight_map);
    ix->entries = calloc(n, sizeof *ix->entries);
    ix->by_name = calloc(n, sizeof *ix->by_name);
    ix->shards = calloc(n, sizeof *ix->shards);
    if (!ix->entries || !ix->by_name || !ix->shards)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory", label);
    const char *key;
    json_t *value;
    json_object_foreach(weight_map, key, value) {
        st_index_entry *e = &ix->entries[ix->n_entries];
        char *shard = pldr_strdup(json_string_value(value));
        e->tensor = pldr_strdup(key);
        if (e->tensor)
            ix->by_name[ix->n_entries++] = e;
        if (shard)
            ix->shards[ix->n_shards++] = shard;
        if (!e->tensor || !shard)
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory", label);
    }
    qsort(ix->by_name, ix->n_entries, sizeof *ix->by_name, compare_entries_by_name);
    qsort(ix->shards, (size_t)ix->n_shards, sizeof *ix->shards, compare_strings);
    int distinct = 0;
    for (int i = 0; i < ix->n_shards; i++) {
        if (distinct > 0 && strcmp(ix->shards[distinct - 1], ix->shards[i]) == 0)
            free(ix->shards[i]);
        else
            ix->shards[distinct++] = ix->shards[i];
    }
    ix->n_shards = distinct;
    for (size_t i = 0; i < ix->n_entries; i++)
        ix->entries[i].shard = shard_of(ix, json_string_value(json_object_get(weight_map, ix->entries[i].tensor)));
    return PLDR_OK;
}

pldr_status st_index_parse(const char *json, size_t len, const char *label, st_index *ix)
{
    memset(ix, 0, sizeof *ix);
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return json_failure(label, "index", &err);
    json_t *weight_map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    pldr_status st = PLDR_OK;
    if (!json_is_object(weight_map))
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: \"weight_map\" is missing or not an object", label);
    else if (json_object_size(weight_map) == 0)
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: \"weight_map\" is empty", label);
    else if (json_object_size(weight_map) > INT32_MAX)
        st = pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: too many weight_map entries", label);
    const char *key;
    json_t *value;
    if (st == PLDR_OK) {
        json_object_foreach(weight_map, key, value) {
            if ((st = check_shard_name(value, label, key)) != PLDR_OK)
                break;
        }
    }
    if (st == PLDR_OK)
        st = build_index(weight_map, label, ix);
    json_decref(root);
    if (st != PLDR_OK)
        st_index_free(ix);
    return st;
}

void st_index_free(st_index *ix)
{
    for (size_t i = 0; ix->entries && i < ix->n_entries; i++)
        free(ix->entries[i].tensor);
    for (int i = 0; ix->shards && i < ix->n_shards; i++)
        free(ix->shards[i]);
    free(ix->entries);
    free(ix->by_name);
    free(ix->shards);
    memset(ix, 0, sizeof *ix);
}

/* weight_map and the shards must agree exactly: each listed tensor is in its
 * shard, and no shard holds a tensor the map does not list. */
pldr_status st_index_check(const st_index *ix, const st_archive *ar, const char *label)
{
    for (size_t i = 0; i < ar->n_tensors; i++) {
        int f = ar->tensors[i].file;
        if (f < 0 || f >= ix->n_shards)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT,
                             "%s: st_index_check: tensor \"%s\" comes from file %d, not one of the %d shards",
                             label, ar->tensors[i].name, f, ix->n_shards);
    }
    for (size_t i = 0; i < ix->n_entries; i++) {
        const st_index_entry *e = &ix->entries[i];
        const char *shard = ix->shards[e->shard];
        const st_tensor *t = st_find(ar, e->tensor);
        if (!t)
            return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\" listed in weight_map is not in %s",
                             label, e->tensor, shard);
        if (t->file != e->shard)
            return pldr_fail(PLDR_ERR_FORMAT,
                             "%s: tensor \"%s\" is listed in weight_map for %s but is stored in %s", label,
                             e->tensor, shard, ix->shards[t->file]);
    }
    /* every listed tensor was found, and names are unique: equal counts mean no extra */
    if (ar->n_tensors == ix->n_entries)
        return PLDR_OK;
    for (size_t i = 0; i < ar->n_tensors; i++) {
        const st_tensor *t = &ar->tensors[i];
        if (!index_find(ix, t->name))
            return pldr_fail(PLDR_ERR_FORMAT, "%s: tensor \"%s\" is not listed in the weight_map of %s",
                             t->file < ar->n_files ? ar->files[t->file].path : ix->shards[t->file],
                             t->name, label);
    }
    return PLDR_OK;
}

/* ------------------------------------------------------------------ */
/* Checkpoint directories                                              */

static int path_exists(const char *path)
{
    struct stat sb;
    /* any error but "absent" counts as present, so opening it reports the cause */
    return stat(path, &sb) == 0 || errno != ENOENT;
}

/* Opens the shards in the order of ix->shards, so that file i is shard i. */
static pldr_status open_shards(const char *dir, const char *index, const st_index *ix, st_archive *ar)
{
    for (int i = 0; i < ix->n_shards; i++) {
        char *path = pldr_path_join(dir, ix->shards[i]);
        if (!path)
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
        pldr_status st = st_open_file(path, ar);
        free(path);
        /* an absent shard is the index's fault: say which index names it */
        if (st == PLDR_ERR_IO)
            return pldr_fail_prefix(st, "%s: shard listed in weight_map", index);
        if (st != PLDR_OK)
            return st;
    }
    return PLDR_OK;
}

static pldr_status open_sharded(const char *dir, const char *index, st_archive *ar)
{
    unsigned char *text = NULL;
    size_t len = 0;
    pldr_status st = pldr_read_file(index, ST_MAX_HEADER, &text, &len);
    if (st != PLDR_OK)
        return st;
    st_index ix;
    st = st_index_parse((const char *)text, len, index, &ix);
    free(text);
    if (st != PLDR_OK)
        return st;
    st = open_shards(dir, index, &ix, ar);
    if (st == PLDR_OK)
        st = st_index_check(&ix, ar, index);
    st_index_free(&ix);
    return st;
}

pldr_status st_open_dir(const char *dir, st_archive *ar)
{
    if (ar->n_files != 0 || ar->n_tensors != 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "%s: st_open_dir needs an empty archive", dir);
    char *index = pldr_path_join(dir, ST_INDEX_NAME);
    char *single = pldr_path_join(dir, ST_SINGLE_NAME);
    pldr_status st;
    if (!index || !single)
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    else if (path_exists(index))
        st = open_sharded(dir, index, ar);
    else if (path_exists(single))
        st = st_open_file(single, ar);
    else
        st = pldr_fail(PLDR_ERR_IO, "%s: no checkpoint: neither %s nor %s exists", dir, ST_INDEX_NAME,
                       ST_SINGLE_NAME);
    if (st != PLDR_OK)
        st_close(ar);
    free(index);
    free(single);
    return st;
}

/* ------------------------------------------------------------------ */
/* Access                                                              */

const st_tensor *st_find(const st_archive *ar, const char *name)
{
    size_t lo = 0, hi = ar->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, ar->tensors[mid].name);
        if (c == 0)
            return &ar->tensors[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Elements are assembled from bytes: the data is little-endian and may sit at
 * any alignment inside the mapping. */
pldr_status st_to_f32(const st_tensor *t, float *dst)
{
    const uint8_t *p = t->data;
    uint64_t n = t->n_elements;
    switch (t->dtype) {
    case ST_F32:
        for (uint64_t i = 0; i < n; i++, p += 4) {
            uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                            (uint32_t)p[3] << 24;
            memcpy(&dst[i], &bits, 4);
        }
        return PLDR_OK;
    case ST_F16:
        for (uint64_t i = 0; i < n; i++, p += 2)
            dst[i] = pldr_half_to_float((uint16_t)(p[0] | p[1] << 8));
        return PLDR_OK;
    case ST_BF16:
        for (uint64_t i = 0; i < n; i++, p += 2)
            dst[i] = pldr_bf16_to_float((uint16_t)(p[0] | p[1] << 8));
        return PLDR_OK;
    default:
        return pldr_fail(PLDR_ERR_UNSUPPORTED,
                         "tensor \"%s\" has dtype %s; only F32, F16 and BF16 convert to float", t->name,
                         st_dtype_name(t->dtype));
    }
}

void st_release_pages(const st_archive *ar, const st_tensor *t)
{
    if (t->file < 0 || t->file >= ar->n_files || !ar->files[t->file].map)
        return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)t->data + page - 1) & ~(page - 1);
    const uintptr_t b = ((uintptr_t)t->data + (uintptr_t)t->nbytes) & ~(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

void st_take_mapping(st_archive *ar, int file, void **map, size_t *size)
{
    *map = NULL;
    *size = 0;
    if (file < 0 || file >= ar->n_files)
        return;
    *map = ar->files[file].map;
    *size = ar->files[file].size;
    ar->files[file].map = NULL;
}

void st_unmap(void *map, size_t size)
{
    if (map)
        munmap(map, size);
}

void st_close(st_archive *ar)
{
    for (size_t i = 0; i < ar->n_tensors; i++)
        free(ar->tensors[i].name);
    free(ar->tensors);
    for (int i = 0; i < ar->n_files; i++) {
        if (ar->files[i].map)
            munmap(ar->files[i].map, ar->files[i].size);
        free(ar->files[i].path);
    }
    free(ar->files);
    memset(ar, 0, sizeof *ar);
}
