/* Tests of the checkpoint loaders: safetensors files, sharded checkpoint
 * directories, config.json and the checkpoint-vs-config check.
 *
 * Every rejection rule has a hand-built damaged input, generated here (never
 * committed), and each test asserts the status AND that the message names the
 * file and the problem. Positive cases cover small synthetic checkpoints and
 * the bundled pldr-tiny-pydocs model.
 *
 * Environment: PLDR_SRCDIR (source tree, default "."), PLDR_TESTTMP (scratch
 * directory, default $TMPDIR or /tmp); the fixtures live in a fresh mkdtemp
 * directory below it, removed at the end unless a test failed.
 * PLDR_TEST_VERBOSE=1 prints every expected error message as a TAP comment. */
#define _GNU_SOURCE /* nftw's FTW_DEPTH / FTW_PHYS */
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/checkpoint.h"
#include "formats/config_parse.h"
#include "pldr.h"
#include "formats/safetensors.h"
#include "tap.h"
#include "common/util.h"

static char tmpdir[4096];

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

/* "tmpdir/name" in a static rotating buffer (enough for one expression). */
static const char *tmp_path(const char *name)
{
    static char bufs[4][4200];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", tmpdir, name);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(99);
    }
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A safetensors image: length field, header, then data_len bytes (0, 1, 2, ...).
 * len_field is the header length written, normally strlen(header). */
static unsigned char *image_with_len(uint64_t len_field, const char *header, size_t data_len, size_t *size)
{
    size_t hl = strlen(header);
    *size = 8 + hl + data_len;
    unsigned char *p = malloc(*size);
    if (!p)
        exit(99);
    put_le64(p, len_field);
    memcpy(p + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        p[8 + hl + i] = (unsigned char)i;
    return p;
}

static unsigned char *image(const char *header, size_t data_len, size_t *size)
{
    return image_with_len(strlen(header), header, data_len, size);
}

static void write_image(const char *path, const char *header, size_t data_len)
{
    size_t size;
    unsigned char *p = image(header, data_len, &size);
    write_bytes(path, p, size);
    free(p);
}

/* Checks the status and that the last error message contains every substring
 * (NULL-terminated list); prints the actual result when it does not. */
static int expect(pldr_status got, pldr_status want, const char *desc, ...)
{
    const char *msg = pldr_last_error();
    int ok = got == want;
    va_list ap;
    va_start(ap, desc);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
        if (want != PLDR_OK && !strstr(msg, s)) {
            ok = 0;
            tap_diag("message lacks \"%s\"", s);
        }
    va_end(ap);
    if (!tap_ok(ok, "%s", desc))
        tap_diag("got %s (want %s): %s", pldr_status_string(got), pldr_status_string(want), msg);
    else if (want != PLDR_OK && getenv("PLDR_TEST_VERBOSE"))
        tap_diag("%s", msg);
    return ok;
}

/* st_parse on an in-memory image built from header and data_len. */
static pldr_status parse_header(const char *header, size_t data_len)
{
    size_t size;
    unsigned char *p = image(header, data_len, &size);
    st_archive ar = {0};
    pldr_status st = st_parse(p, size, "case.safetensors", 0, &ar);
    st_close(&ar);
    free(p);
    return st;
}

#define PARSE_FAILS(desc, header, data_len, ...) \
    expect(parse_header(header, data_len), PLDR_ERR_FORMAT, desc, "case.safetensors", __VA_ARGS__, NULL)

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* ------------------------------------------------------------------ */
/* safetensors headers                                                 */

/* "a": F32 [2] at [0, 8), "b": U8 [3] at [8, 11). */
#define TWO_TENSORS_BODY                                        \
    "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}," \
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
#define TWO_TENSORS "{" TWO_TENSORS_BODY

static void test_parse_valid(void)
{
    size_t size;
    unsigned char *p = image(TWO_TENSORS, 11, &size);
    st_archive ar = {0};
    pldr_status st = st_parse(p, size, "ok.safetensors", 0, &ar);
    expect(st, PLDR_OK, "valid two-tensor image parses", NULL);
    const st_tensor *a = st_find(&ar, "a"), *b = st_find(&ar, "b");
    size_t data = 8 + strlen(TWO_TENSORS);
    tap_ok(ar.n_tensors == 2 && strcmp(ar.tensors[0].name, "a") == 0 && a && b && !st_find(&ar, "c"),
           "tensors are sorted by name and found by st_find");
    tap_ok(a && b && a->data == p + data && b->data == p + data + 8 && b->nbytes == 3 &&
               a->n_elements == 2 && a->dtype == ST_F32 && b->ndim == 1 && b->shape[0] == 3,
           "tensor fields and data pointers");
    st_close(&ar);
    tap_ok(ar.n_tensors == 0 && ar.tensors == NULL, "st_close empties the archive");
    free(p);

    expect(parse_header("{\"__metadata__\":{\"format\":\"pt\"}," TWO_TENSORS_BODY, 11), PLDR_OK,
           "string metadata is accepted", NULL);
    expect(parse_header("{}", 0), PLDR_OK, "an empty header with no data is a valid empty file", NULL);
    expect(parse_header(TWO_TENSORS "    ", 11), PLDR_OK, "trailing spaces pad the header", NULL);
    expect(parse_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[8,8]},"
                        "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}",
                        11),
           PLDR_OK, "an empty tensor between two others", NULL);
    expect(parse_header("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", 8), PLDR_OK,
           "a scalar (shape []) holds one element", NULL);
}

static void test_parse_header_framing(void)
{
    size_t size;
    unsigned char *p = image_with_len(1000, TWO_TENSORS, 11, &size);
    st_archive ar = {0};
    expect(st_parse(p, size, "long.safetensors", 0, &ar), PLDR_ERR_FORMAT,
           "header length beyond the file is rejected", "long.safetensors", "runs past the end", NULL);
    free(p);
    p = image_with_len(ST_MAX_HEADER + 1ull, TWO_TENSORS, 11, &size);
    expect(st_parse(p, size, "huge.safetensors", 0, &ar), PLDR_ERR_FORMAT,
           "header length above 100 MB is rejected", "huge.safetensors", "exceeds the limit", NULL);
    free(p);
    p = image_with_len(UINT64_MAX, "{}", 0, &size);
    expect(st_parse(p, size, "max.safetensors", 0, &ar), PLDR_ERR_FORMAT,
           "header length 2^64-1 is rejected", "max.safetensors", "exceeds the limit", NULL);
    free(p);
    static const unsigned char five[5] = {1, 2, 3, 4, 5};
    expect(st_parse(five, sizeof five, "tiny.safetensors", 0, &ar), PLDR_ERR_FORMAT,
           "a file shorter than 8 bytes is rejected", "tiny.safetensors", "shorter than", NULL);
    expect(st_parse(NULL, 0, "empty.safetensors", 0, &ar), PLDR_ERR_FORMAT,
           "an empty image is rejected", "empty.safetensors", "shorter than", NULL);
    tap_ok(ar.n_tensors == 0 && ar.tensors == NULL, "failed parses leave the archive empty");
}

static void test_parse_json(void)
{
    PARSE_FAILS("a header that is not UTF-8 is rejected",
                "{\"a\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                "not valid UTF-8");
    PARSE_FAILS("a header that is not JSON is rejected", "{\"a\":", 0, "header is not valid JSON");
    PARSE_FAILS("a header that is a JSON array is rejected", "[1,2]", 0, "not a JSON object");
    PARSE_FAILS("a duplicate tensor name is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                2, "duplicate key");
    PARSE_FAILS("a NUL escape in a tensor name is rejected",
                "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                "not valid JSON");
    PARSE_FAILS("an integer beyond 64 bits is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", 1,
                "number out of range");
    PARSE_FAILS("a non-string __metadata__ value is rejected",
                "{\"__metadata__\":{\"format\":1}," TWO_TENSORS_BODY, 11, "__metadata__", "not a string");
    PARSE_FAILS("a non-object __metadata__ is rejected", "{\"__metadata__\":[\"pt\"]}", 0, "__metadata__",
                "not an object");
}

static void test_parse_entries(void)
{
    PARSE_FAILS("an unknown dtype is rejected",
                "{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16, "\"a\"",
                "unknown dtype \"F128\"");
    PARSE_FAILS("a lower-case dtype is rejected",
                "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
    PARSE_FAILS("a non-string dtype is rejected",
                "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype is not a string");
    PARSE_FAILS("a negative dimension is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,0]}}", 0, "\"a\"",
                "shape entry 0 is not a non-negative integer");
    PARSE_FAILS("a fractional dimension is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[2, 1.5],\"data_offsets\":[0,3]}}", 3,
                "shape entry 1 is not a non-negative integer");
    PARSE_FAILS("a string dimension is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[\"2\"],\"data_offsets\":[0,2]}}", 2,
                "shape entry 0");
    PARSE_FAILS("a shape that is not an array is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":2,\"data_offsets\":[0,2]}}", 2, "shape is not an array");
    PARSE_FAILS("more than 8 dimensions are rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
                "9 dimensions, more than 8");
    PARSE_FAILS("shape x dtype size different from data_offsets is rejected",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                "need 12 bytes but data_offsets span 8 bytes");
    PARSE_FAILS("an element count that overflows 64 bits is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],"
                "\"data_offsets\":[0,0]}}",
                0, "element count of the shape overflows");
    PARSE_FAILS("a byte size that overflows 64 bits is rejected",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,2],\"data_offsets\":[0,0]}}", 0,
                "byte size of the shape overflows");
    PARSE_FAILS("data_offsets with three entries are rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1,
                "not a [begin, end] pair");
    PARSE_FAILS("negative data_offsets are rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1, "non-negative");
    PARSE_FAILS("data_offsets ending before they begin are rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 4, "before begin");
    PARSE_FAILS("a tensor without data_offsets is rejected", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1,
                "missing \"data_offsets\"");
    PARSE_FAILS("a tensor with an extra key is rejected",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"offset\":0}}", 1,
                "unexpected key \"offset\"");
    PARSE_FAILS("a tensor entry that is not an object is rejected", "{\"a\":[0,1]}", 1,
                "entry is not an object");
    PARSE_FAILS("an empty tensor name is rejected",
                "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "empty name");
}

static void test_parse_layout(void)
{
    PARSE_FAILS("a gap between tensors is rejected",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[9,12]}}",
                12, "gap of 1 bytes between tensors \"a\" and \"b\"");
    PARSE_FAILS("overlapping tensors are rejected",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[4,7]}}",
                8, "\"a\" and \"b\" overlap");
    PARSE_FAILS("two tensors sharing the same bytes are rejected",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
                8, "overlap");
    PARSE_FAILS("data not starting at offset 0 is rejected",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                "data starts at byte 4; the first tensor must start at 0");
    PARSE_FAILS("trailing bytes after the last tensor are rejected", TWO_TENSORS, 12,
                "tensors end at byte 11", "has 12 bytes", "end of the file");
    PARSE_FAILS("a tensor reaching past the end of the file is rejected", TWO_TENSORS, 10,
                "tensors end at byte 11", "has 10 bytes");
    PARSE_FAILS("data without any tensor is rejected", "{}", 4, "has 4 bytes");

    /* the same tensor name in two files of one archive */
    size_t s1, s2;
    unsigned char *p1 = image(TWO_TENSORS, 11, &s1);
    unsigned char *p2 = image("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, &s2);
    st_archive ar = {0};
    pldr_status st = st_parse(p1, s1, "one.safetensors", 0, &ar);
    if (st == PLDR_OK)
        st = st_parse(p2, s2, "two.safetensors", 1, &ar);
    expect(st, PLDR_ERR_FORMAT, "a tensor present in two files is rejected", "two.safetensors",
           "tensor \"a\" is also in", NULL);
    tap_ok(ar.n_tensors == 2, "a rejected file adds no tensor to the archive");
    st_close(&ar);
    free(p1);
    free(p2);
}

/* Data 2-byte aligned at an odd address: exercises unaligned reads. */
static void test_conversion(void)
{
    /* header of odd length so that the data region starts at an odd address */
    const char *hdr = "{\"h\":{\"dtype\":\"F16\",\"shape\":[8],\"data_offsets\":[0,16]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[5],\"data_offsets\":[16,26]},"
                      "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[26,34]},"
                      "\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[34,38]}} ";
    char padded[512];
    snprintf(padded, sizeof padded, "%s%s", hdr, strlen(hdr) % 2 ? "" : " ");
    static const uint16_t h[8] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x3555, 0x8000, 0x7c00};
    static const float hf[8] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-08f, 6.0975551605224609e-05f,
                                0.333251953125f, -0.0f, INFINITY};
    static const uint16_t b[5] = {0x3f80, 0xc040, 0x4049, 0x0001, 0xff80};
    static const float bf[5] = {1.0f, -3.0f, 3.140625f, 9.183549615799121e-41f, -INFINITY};
    static const float f[2] = {1.5f, -0.25f};
    size_t size;
    unsigned char *p = image(padded, 38, &size);
    unsigned char *d = p + 8 + strlen(padded);
    for (int i = 0; i < 8; i++)
        d[2 * i] = (unsigned char)h[i], d[2 * i + 1] = (unsigned char)(h[i] >> 8);
    for (int i = 0; i < 5; i++)
        d[16 + 2 * i] = (unsigned char)b[i], d[16 + 2 * i + 1] = (unsigned char)(b[i] >> 8);
    for (int i = 0; i < 2; i++) {
        uint32_t bits;
        memcpy(&bits, &f[i], 4);
        for (int k = 0; k < 4; k++)
            d[26 + 4 * i + k] = (unsigned char)(bits >> (8 * k));
    }
    st_archive ar = {0};
    pldr_status st = st_parse(p, size, "conv.safetensors", 0, &ar);
    expect(st, PLDR_OK, "mixed-dtype image with unaligned data parses", NULL);
    const st_tensor *th = st_find(&ar, "h"), *tb = st_find(&ar, "b"), *tf = st_find(&ar, "f"),
                    *ti = st_find(&ar, "i");
    if (!th || !tb || !tf || !ti) {
        tap_skip(5, "conversion image did not parse");
    } else {
        float out[8];
        int same = st_to_f32(th, out) == PLDR_OK && ((uintptr_t)th->data & 1);
        for (int i = 0; i < 8; i++)
            same &= memcmp(&out[i], &hf[i], 4) == 0; /* bitwise: checks -0.0 too */
        tap_ok(same, "F16 normal, max, subnormal, -0 and inf convert exactly (unaligned)");
        same = st_to_f32(tb, out) == PLDR_OK;
        for (int i = 0; i < 5; i++)
            same &= memcmp(&out[i], &bf[i], 4) == 0;
        tap_ok(same, "BF16 values, subnormal and -inf convert exactly");
        same = st_to_f32(tf, out) == PLDR_OK && out[0] == 1.5f && out[1] == -0.25f;
        tap_ok(same && ((uintptr_t)tf->data & 3) != 0, "F32 at an unaligned address converts");
        expect(st_to_f32(ti, out), PLDR_ERR_UNSUPPORTED, "I32 does not convert to float", "\"i\"", "I32",
               NULL);
        tap_ok(pldr_float_to_half(0.1f) == 0x2e66 && pldr_float_to_half(1.0f) == 0x3c00 &&
                   pldr_float_to_half(65520.0f) == 0x7c00,
               "float to half rounds to nearest and overflows to inf");
    }
    st_close(&ar);
    free(p);
}

/* ------------------------------------------------------------------ */
/* Files and directories                                               */

static void test_files(void)
{
    st_archive ar = {0};
    write_image(tmp_path("one.safetensors"), TWO_TENSORS, 11);
    expect(st_open_file(tmp_path("one.safetensors"), &ar), PLDR_OK, "st_open_file maps a valid file", NULL);
    const st_tensor *b = st_find(&ar, "b");
    tap_ok(ar.n_files == 1 && b && b->file == 0 && b->data[0] == 8 && b->data[2] == 10 &&
               ar.files[0].size == 8 + strlen(TWO_TENSORS) + 11,
           "mapped tensor data reads the file's bytes");
    expect(st_open_file(tmp_path("absent.safetensors"), &ar), PLDR_ERR_IO, "a missing file is an I/O error",
           "absent.safetensors", "cannot open", NULL);
    expect(st_open_file(tmpdir, &ar), PLDR_ERR_IO, "a directory is not a safetensors file",
           "not a regular file", NULL);
    write_bytes(tmp_path("zero.safetensors"), "", 0);
    expect(st_open_file(tmp_path("zero.safetensors"), &ar), PLDR_ERR_FORMAT, "an empty file is rejected",
           "zero.safetensors", "shorter than", NULL);
    write_image(tmp_path("dup.safetensors"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                1);
    expect(st_open_file(tmp_path("dup.safetensors"), &ar), PLDR_ERR_FORMAT,
           "a second file repeating a tensor is rejected", "dup.safetensors", "one.safetensors", NULL);
    tap_ok(ar.n_files == 1 && ar.n_tensors == 2, "failed opens leave the archive as it was");
    st_close(&ar);

    char dir[4200];
    snprintf(dir, sizeof dir, "%s", tmp_path("emptydir"));
    mkdir(dir, 0755);
    expect(st_open_dir(dir, &ar), PLDR_ERR_IO, "a directory without a checkpoint is an I/O error", "emptydir",
           "model.safetensors.index.json", "model.safetensors", NULL);
    write_image(tmp_path("emptydir/model.safetensors"), TWO_TENSORS, 11);
    expect(st_open_dir(dir, &ar), PLDR_OK, "st_open_dir opens a single model.safetensors", NULL);
    tap_ok(ar.n_files == 1 && ar.n_tensors == 2, "single-file checkpoint has its tensors");
    expect(st_open_dir(dir, &ar), PLDR_ERR_INVALID_ARGUMENT, "st_open_dir refuses a non-empty archive", NULL);
    st_close(&ar);
}

/* Shards a (x, y), b (z) and c (z, x: x repeats a's); the index varies. */
static pldr_status open_with_index(const char *index)
{
    write_text(tmp_path("sharded/model.safetensors.index.json"), index);
    st_archive ar = {0};
    pldr_status st = st_open_dir(tmp_path("sharded"), &ar);
    if (st != PLDR_OK && (ar.n_files || ar.n_tensors))
        st = pldr_fail(PLDR_ERR_MISMATCH, "failed st_open_dir left files in the archive");
    st_close(&ar);
    return st;
}

#define INDEX_FAILS(desc, status, index, ...) \
    expect(open_with_index(index), status, desc, __VA_ARGS__, NULL)

#define XY_Z "\"x\":\"a.safetensors\",\"y\":\"a.safetensors\",\"z\":\"b.safetensors\""
#define IDX "model.safetensors.index.json"

static void test_index(void)
{
    mkdir(tmp_path("sharded"), 0755);
    write_image(tmp_path("sharded/a.safetensors"),
                "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                12);
    write_image(tmp_path("sharded/b.safetensors"),
                "{\"z\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 6);
    write_image(tmp_path("sharded/c.safetensors"),
                "{\"z\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[6,10]}}",
                10);
    /* a model.safetensors next to the index must be ignored */
    write_image(tmp_path("sharded/model.safetensors"), "{}", 0);

    write_text(tmp_path("sharded/" IDX), "{\"metadata\":{\"total_size\":18},\"weight_map\":{" XY_Z "}}");
    st_archive ar = {0};
    expect(st_open_dir(tmp_path("sharded"), &ar), PLDR_OK, "a valid two-shard index opens", NULL);
    tap_ok(ar.n_files == 2 && ar.n_tensors == 3 && st_find(&ar, "z") &&
               strstr(ar.files[st_find(&ar, "z")->file].path, "b.safetensors"),
           "sharded archive: each distinct shard opened once, tensors located");
    st_close(&ar);

    INDEX_FAILS("a shard name with '/' is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{\"x\":\"../sharded/a.safetensors\"}}", IDX, "\"x\"",
                "not a plain file name");
    INDEX_FAILS("an absolute shard path is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{\"x\":\"/etc/passwd\"}}", IDX, "not a plain file name");
    INDEX_FAILS("the shard name '..' is rejected", PLDR_ERR_FORMAT, "{\"weight_map\":{\"x\":\"..\"}}", IDX,
                "shard \"..\" is not a plain file name");
    INDEX_FAILS("an empty shard name is rejected", PLDR_ERR_FORMAT, "{\"weight_map\":{\"x\":\"\"}}", IDX,
                "not a plain file name");
    INDEX_FAILS("a shard name that is not a string is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{\"x\":1}}", IDX, "\"x\" is not a string");
    INDEX_FAILS("an index listing a tensor its shard lacks is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{" XY_Z ",\"w\":\"a.safetensors\"}}", IDX,
                "tensor \"w\" listed in weight_map is not in a.safetensors");
    INDEX_FAILS("a tensor listed twice in weight_map is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{" XY_Z ",\"x\":\"b.safetensors\"}}", IDX, "duplicate key");
    INDEX_FAILS("a tensor listed for the wrong shard is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{\"x\":\"b.safetensors\",\"y\":\"a.safetensors\",\"z\":\"b.safetensors\"}}",
                IDX, "tensor \"x\" is listed in weight_map for b.safetensors but is stored in a.safetensors");
    INDEX_FAILS("a tensor present in two shards is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"a.safetensors\",\"z\":\"c.safetensors\"}}",
                "c.safetensors", "tensor \"x\" is also in", "a.safetensors");
    INDEX_FAILS("a shard tensor absent from weight_map is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{\"x\":\"a.safetensors\",\"z\":\"b.safetensors\"}}", "a.safetensors",
                "tensor \"y\" is not listed in the weight_map", IDX);
    INDEX_FAILS("a missing shard file is an I/O error", PLDR_ERR_IO,
                "{\"weight_map\":{" XY_Z ",\"q\":\"gone.safetensors\"}}", IDX, "gone.safetensors",
                "cannot open");
    INDEX_FAILS("an index that is not JSON is rejected", PLDR_ERR_FORMAT, "{\"weight_map\":{", IDX,
                "not valid JSON");
    INDEX_FAILS("an index without weight_map is rejected", PLDR_ERR_FORMAT, "{\"metadata\":{}}", IDX,
                "\"weight_map\" is missing or not an object");
    INDEX_FAILS("an empty weight_map is rejected", PLDR_ERR_FORMAT, "{\"weight_map\":{}}", IDX,
                "\"weight_map\" is empty");
    INDEX_FAILS("an index pointing at a shard without the tensor is rejected", PLDR_ERR_FORMAT,
                "{\"weight_map\":{\"x\":\"model.safetensors\"}}", "sharded/model.safetensors",
                "tensor \"x\" listed in weight_map is not in model.safetensors");
}

/* ------------------------------------------------------------------ */
/* config.json                                                         */

/* A tiny but complete config: L=2, d=8, H=2, dk=4, F=12, R=2, D=2, Fa=6, V=16. */
static json_t *tiny_config(const char *g_type)
{
    json_t *c = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f,"
                          " s:b, s:i, s:i, s:i, s:b, s:b, s:b, s:b, s:s, s:[s]}",
                          "model_type", "pldrllm", "hidden_act", "silu", "num_hidden_layers", 2,
                          "hidden_size", 8, "num_attention_heads", 2, "head_dim", 4, "intermediate_size",
                          12, "num_reslayerA", 2, "num_denseA", 2, "A_dff", 6, "vocab_size", 16,
                          "max_position_embeddings", 32, "layer_norm_eps", 1e-6, "rope_theta", 10000.0,
                          "reference_rope", 1, "bos_token_id", 2, "eos_token_id", 3, "pad_token_id", 0,
                          "attention_bias", 1, "glu_bias", 1, "final_bias", 1, "tie_word_embeddings", 0,
                          "torch_dtype", "float32", "architectures", "PldrllmForCausalLM");
    if (!c)
        exit(99);
    json_object_set_new(c, "custom_G_type", g_type ? json_string(g_type) : json_null());
    return c;
}

static void write_json(const char *path, json_t *j)
{
    if (json_dump_file(j, path, JSON_INDENT(2)) != 0)
        exit(99);
}

/* Loads the tiny config with key set to value (NULL: key removed). */
static pldr_status load_config_with(const char *key, json_t *value, pldr_config *c)
{
    json_t *j = tiny_config(NULL);
    if (value)
        json_object_set_new(j, key, value);
    else
        json_object_del(j, key);
    write_json(tmp_path("config.json"), j);
    json_decref(j);
    return pldr_config_load(tmp_path("config.json"), c);
}

#define CONFIG_FAILS(desc, status, key, value, ...)                                              \
    do {                                                                                         \
        pldr_config c_;                                                                          \
        expect(load_config_with(key, value, &c_), status, desc, "config.json", __VA_ARGS__, NULL); \
    } while (0)

static void test_config_valid(void)
{
    pldr_config c;
    expect(load_config_with("unknown_key", json_string("ignored"), &c), PLDR_OK,
           "tiny config loads (unknown keys ignored)", NULL);
    tap_ok(c.n_layers == 2 && c.d_model == 8 && c.n_heads == 2 && c.head_dim == 4 && c.d_ff == 12 &&
               c.n_reslayer_a == 2 && c.n_dense_a == 2 && c.a_dff == 6 && c.vocab_size == 16 &&
               c.max_position == 32 && c.layer_norm_eps == 1e-6 && c.rope_theta == 10000.0 &&
               c.reference_rope == 1 && c.g_type == PLDR_G_LEARNED && c.bos_token_id == 2 &&
               c.eos_token_id == 3 && c.pad_token_id == 0 && c.attention_bias && c.glu_bias && c.final_bias,
           "tiny config values");
    expect(load_config_with("head_dim", NULL, &c), PLDR_OK, "head_dim is optional", NULL);
    tap_ok(c.head_dim == 4, "head_dim defaults to hidden_size / num_attention_heads");
    expect(load_config_with("rope_theta", json_integer(500000), &c), PLDR_OK,
           "an integer rope_theta is accepted", NULL);
    tap_ok(c.rope_theta == 500000.0, "integer rope_theta value");
    expect(load_config_with("pad_token_id", json_null(), &c), PLDR_OK, "a null pad_token_id is accepted",
           NULL);
    expect(load_config_with("reference_rope", json_false(), &c), PLDR_OK, "reference_rope false loads", NULL);
    tap_ok(c.reference_rope == 0, "reference_rope false selects rotate-half");
    expect(load_config_with("custom_G_type", json_string("external"), &c), PLDR_OK,
           "custom_G_type external loads", NULL);
    tap_ok(c.g_type == PLDR_G_EXTERNAL, "custom_G_type external value");
}

static void test_config_errors(void)
{
    CONFIG_FAILS("a missing required key is named", PLDR_ERR_FORMAT, "num_hidden_layers", NULL,
                 "missing required key \"num_hidden_layers\"");
    CONFIG_FAILS("a missing layer_norm_eps is named", PLDR_ERR_FORMAT, "layer_norm_eps", NULL,
                 "missing required key \"layer_norm_eps\"");
    CONFIG_FAILS("a string size is rejected", PLDR_ERR_FORMAT, "hidden_size", json_string("8"),
                 "\"hidden_size\" must be an integer");
    CONFIG_FAILS("a real-valued size is rejected", PLDR_ERR_FORMAT, "vocab_size", json_real(16.0),
                 "\"vocab_size\" must be an integer");
    CONFIG_FAILS("a null required key is rejected", PLDR_ERR_FORMAT, "A_dff", json_null(),
                 "\"A_dff\" must be an integer");
    CONFIG_FAILS("a string boolean is rejected", PLDR_ERR_FORMAT, "reference_rope", json_string("true"),
                 "\"reference_rope\" must be true or false");
    CONFIG_FAILS("a numeric custom_G_type is rejected", PLDR_ERR_FORMAT, "custom_G_type", json_integer(1),
                 "\"custom_G_type\" must be a string");
    CONFIG_FAILS("a string eps is rejected", PLDR_ERR_FORMAT, "layer_norm_eps", json_string("1e-6"),
                 "\"layer_norm_eps\" must be a number");
    CONFIG_FAILS("hidden_size != heads x head_dim is rejected", PLDR_ERR_FORMAT, "hidden_size",
                 json_integer(10), "\"hidden_size\" is 10 but num_attention_heads x head_dim is 2 x 4");
    CONFIG_FAILS("hidden_act other than silu is unsupported", PLDR_ERR_UNSUPPORTED, "hidden_act",
                 json_string("gelu"), "\"hidden_act\" is \"gelu\"");
    CONFIG_FAILS("an odd head_dim is rejected", PLDR_ERR_FORMAT, "head_dim", json_integer(3),
                 "\"head_dim\" is 3; it must be even");
    CONFIG_FAILS("an unknown custom_G_type is unsupported", PLDR_ERR_UNSUPPORTED, "custom_G_type",
                 json_string("learned"), "\"custom_G_type\" is \"learned\"");
    CONFIG_FAILS("attention_bias false is unsupported", PLDR_ERR_UNSUPPORTED, "attention_bias", json_false(),
                 "\"attention_bias\" is false", "biases");
    CONFIG_FAILS("glu_bias false is unsupported", PLDR_ERR_UNSUPPORTED, "glu_bias", json_false(),
                 "\"glu_bias\" is false");
    CONFIG_FAILS("final_bias false is unsupported", PLDR_ERR_UNSUPPORTED, "final_bias", json_false(),
                 "\"final_bias\" is false");
    CONFIG_FAILS("tied embeddings are unsupported", PLDR_ERR_UNSUPPORTED, "tie_word_embeddings", json_true(),
                 "\"tie_word_embeddings\" is true");
    CONFIG_FAILS("another model_type is unsupported", PLDR_ERR_UNSUPPORTED, "model_type", json_string("llama"),
                 "\"model_type\" is \"llama\"");
    CONFIG_FAILS("a zero size is rejected", PLDR_ERR_FORMAT, "num_denseA", json_integer(0),
                 "\"num_denseA\" is 0; it must be positive");
    CONFIG_FAILS("a negative size is rejected", PLDR_ERR_FORMAT, "intermediate_size", json_integer(-5),
                 "\"intermediate_size\" is -5");
    CONFIG_FAILS("a size above the cap is unsupported", PLDR_ERR_UNSUPPORTED, "num_hidden_layers",
                 json_integer(1025), "\"num_hidden_layers\" is 1025, above this engine's limit of 1024");
    CONFIG_FAILS("a size beyond int range is unsupported", PLDR_ERR_UNSUPPORTED, "vocab_size",
                 json_integer(1LL << 40), "\"vocab_size\"", "limit");
    CONFIG_FAILS("num_denseA above 64 is unsupported", PLDR_ERR_UNSUPPORTED, "num_denseA", json_integer(65),
                 "\"num_denseA\"");
    CONFIG_FAILS("a zero eps is rejected", PLDR_ERR_FORMAT, "layer_norm_eps", json_real(0.0),
                 "\"layer_norm_eps\" is 0; it must be positive and finite");
    CONFIG_FAILS("a negative rope_theta is rejected", PLDR_ERR_FORMAT, "rope_theta", json_real(-1.0),
                 "\"rope_theta\"", "positive");
    CONFIG_FAILS("a token id outside the vocabulary is rejected", PLDR_ERR_FORMAT, "eos_token_id",
                 json_integer(16), "\"eos_token_id\" is 16, outside the vocabulary [0, 16)");
    CONFIG_FAILS("a negative token id is rejected", PLDR_ERR_FORMAT, "bos_token_id", json_integer(-1),
                 "\"bos_token_id\" is -1");

    pldr_config c;
    /* found by fuzz_config: the defaults 2 and 3 must fit the vocabulary too */
    json_t *j = tiny_config(NULL);
    json_object_set_new(j, "vocab_size", json_integer(2));
    json_object_del(j, "bos_token_id");
    json_object_set_new(j, "eos_token_id", json_integer(1));
    write_json(tmp_path("config.json"), j);
    expect(pldr_config_load(tmp_path("config.json"), &c), PLDR_ERR_FORMAT,
           "an absent token id whose default is outside a tiny vocabulary is rejected", "config.json",
           "\"bos_token_id\" is absent and its default 2 is outside the vocabulary [0, 2)", NULL);
    json_object_set_new(j, "bos_token_id", json_integer(0));
    write_json(tmp_path("config.json"), j);
    expect(pldr_config_load(tmp_path("config.json"), &c), PLDR_OK,
           "a vocabulary of 2 with explicit token ids loads", NULL);
    json_decref(j);

    j = tiny_config(NULL);
    json_object_del(j, "head_dim");
    json_object_set_new(j, "hidden_size", json_integer(9));
    write_json(tmp_path("config.json"), j);
    json_decref(j);
    expect(pldr_config_load(tmp_path("config.json"), &c), PLDR_ERR_FORMAT,
           "without head_dim, hidden_size must divide by the heads", "config.json", "not a multiple", NULL);

    write_text(tmp_path("config.json"), "{\"hidden_size\": 8, \"hidden_size\": 16}");
    expect(pldr_config_load(tmp_path("config.json"), &c), PLDR_ERR_FORMAT, "a duplicate config key is rejected",
           "config.json", "duplicate", NULL);
    write_text(tmp_path("config.json"), "[]");
    expect(pldr_config_load(tmp_path("config.json"), &c), PLDR_ERR_FORMAT,
           "a config that is not an object is rejected", "config.json", "not a JSON object", NULL);
    write_text(tmp_path("config.json"), "{\"hidden_size\": 8,");
    expect(pldr_config_load(tmp_path("config.json"), &c), PLDR_ERR_FORMAT,
           "a truncated config is rejected", "config.json", "not valid JSON", "line 1", NULL);
    write_text(tmp_path("config.json"), "{\"model_type\": \"pldr\xc0\"}");
    expect(pldr_config_load(tmp_path("config.json"), &c), PLDR_ERR_FORMAT,
           "a config that is not UTF-8 is rejected", "config.json", "not valid JSON", NULL);
    expect(pldr_config_load(tmp_path("no-config.json"), &c), PLDR_ERR_IO, "a missing config is an I/O error",
           "no-config.json", NULL);
}

/* ------------------------------------------------------------------ */
/* Parsers on memory buffers (the fuzz targets' entry points)          */

static void test_memory_parsers(void)
{
    /* not NUL-terminated: the buffer ends right after the JSON */
    static const char index_text[] = "{\"weight_map\":{\"y\":\"b.st\",\"x\":\"a.st\",\"z\":\"b.st\"}}XX";
    st_index ix;
    expect(st_index_parse(index_text, sizeof index_text - 3, "mem.index.json", &ix), PLDR_OK,
           "st_index_parse reads an index from a buffer without a NUL", NULL);
    tap_ok(ix.n_shards == 2 && strcmp(ix.shards[0], "a.st") == 0 && strcmp(ix.shards[1], "b.st") == 0 &&
               ix.n_entries == 3 && strcmp(ix.entries[0].tensor, "y") == 0 && ix.entries[0].shard == 1 &&
               ix.entries[1].shard == 0 && strcmp(ix.by_name[0]->tensor, "x") == 0,
           "st_index: shards distinct and sorted, entries in file order, by_name sorted");
    st_archive ar = {0};
    size_t size;
    unsigned char *a = image("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, &size);
    unsigned char *b = image("{\"y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                             "\"z\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                             2, &size);
    size_t size_a = 8 + strlen("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}") + 1;
    expect(st_parse(a, size_a, "a.st", 0, &ar), PLDR_OK, "shard a parses", NULL);
    expect(st_parse(b, size, "b.st", 1, &ar), PLDR_OK, "shard b parses", NULL);
    expect(st_index_check(&ix, &ar, "mem.index.json"), PLDR_OK, "st_index_check accepts matching shards", NULL);
    st_close(&ar);
    expect(st_parse(b, size, "b.st", 2, &ar), PLDR_OK, "shard b parses as file 2", NULL);
    expect(st_index_check(&ix, &ar, "mem.index.json"), PLDR_ERR_INVALID_ARGUMENT,
           "st_index_check refuses an archive whose files are not the index's shards", "from file 2", NULL);
    st_close(&ar);
    free(a);
    free(b);
    st_index_free(&ix);
    tap_ok(ix.shards == NULL && ix.n_entries == 0, "st_index_free zeroes the index");
    static const char slash[] = "{\"weight_map\":{\"x\":\"a/b\"}}";
    expect(st_index_parse(slash, sizeof slash - 1, "mem.index.json", &ix), PLDR_ERR_FORMAT,
           "st_index_parse rejects a path as shard name", "mem.index.json", "not a plain file name", NULL);
    tap_ok(ix.shards == NULL && ix.entries == NULL, "a failed st_index_parse leaves the index zeroed");

    json_t *j = tiny_config(NULL);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text)
        exit(99);
    size_t n = strlen(text);
    char *exact = malloc(n); /* no NUL after the JSON */
    if (!exact)
        exit(99);
    memcpy(exact, text, n);
    pldr_config c;
    expect(pldr_config_parse(exact, n, "mem/config.json", &c), PLDR_OK,
           "pldr_config_parse reads a config from a buffer without a NUL", NULL);
    tap_ok(c.n_layers == 2 && c.vocab_size == 16, "pldr_config_parse values");
    expect(pldr_config_parse(exact, n - 1, "mem/config.json", &c), PLDR_ERR_FORMAT,
           "pldr_config_parse names its label in messages", "mem/config.json", "not valid JSON", NULL);
    free(exact);
    free(text);
}

/* ------------------------------------------------------------------ */
/* Checkpoint against config                                           */

typedef struct entry {
    pldr_tensor_spec spec;
    st_dtype dtype;
} entry;

typedef struct entry_list {
    entry *v;
    size_t n;
} entry_list;

static pldr_status collect(const pldr_tensor_spec *spec, void *user)
{
    entry_list *l = user;
    entry *grown = realloc(l->v, (l->n + 1) * sizeof *grown);
    if (!grown)
        exit(99);
    l->v = grown;
    l->v[l->n].spec = *spec;
    l->v[l->n].dtype = ST_F32;
    l->n++;
    return PLDR_OK;
}

static entry_list expected_tensors(const pldr_config *c)
{
    entry_list l = {0};
    if (pldr_checkpoint_foreach(c, collect, &l) != PLDR_OK)
        exit(99);
    return l;
}

static entry *find_entry(entry_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i].spec.name, name) == 0)
            return &l->v[i];
    fprintf(stderr, "no expected tensor %s\n", name);
    exit(99);
}

/* Writes the tensors as one safetensors file; values are small and varied. */
static void write_tensors(const char *path, const entry_list *l)
{
    json_t *hdr = json_object();
    uint64_t offset = 0;
    for (size_t i = 0; i < l->n; i++) {
        const entry *e = &l->v[i];
        json_t *shape = json_array();
        uint64_t count = 1;
        for (int k = 0; k < e->spec.ndim; k++) {
            json_array_append_new(shape, json_integer(e->spec.shape[k]));
            count *= (uint64_t)e->spec.shape[k];
        }
        uint64_t end = offset + count * st_dtype_size(e->dtype);
        json_object_set_new(hdr, e->spec.name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", st_dtype_name(e->dtype), "shape",
                                      shape, "data_offsets", (json_int_t)offset, (json_int_t)end));
        offset = end;
    }
    char *text = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t size;
    unsigned char *p = image(text, (size_t)offset, &size);
    free(text);
    write_bytes(path, p, size);
    free(p);
}

/* Writes config.json (from j) and model.safetensors (from l) into dir, then
 * runs the whole loading sequence the engine runs. */
static pldr_status check_checkpoint(const char *dir, json_t *j, const entry_list *l)
{
    char path[4300];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_json(path, j);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_tensors(path, l);
    pldr_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    pldr_status st = pldr_config_load(path, &c);
    st_archive ar = {0};
    if (st == PLDR_OK)
        st = st_open_dir(dir, &ar);
    if (st == PLDR_OK)
        st = pldr_checkpoint_check(&c, &ar, dir);
    st_close(&ar);
    return st;
}

static void test_checkpoint_valid(const pldr_config *learned, const pldr_config *identity)
{
    entry_list l = expected_tensors(learned);
    /* L=2, R=2, D=2: 3 + 2 x (8 + 2 + 2 x (2 x 6 + 2) + 5 + 6 + 4) + 2 */
    tap_ok(l.n == 111, "learned tiny config implies 111 tensors (got %zu)", l.n);
    json_t *j = tiny_config(NULL);
    expect(check_checkpoint(tmp_path("ck-learned"), j, &l), PLDR_OK, "a complete learned-G checkpoint passes",
           NULL);
    for (size_t i = 0; i < l.n; i++)
        l.v[i].dtype = i % 3 == 0 ? ST_F16 : i % 3 == 1 ? ST_BF16 : ST_F32;
    expect(check_checkpoint(tmp_path("ck-mixed"), j, &l), PLDR_OK, "F16 and BF16 tensors are accepted", NULL);
    json_decref(j);
    free(l.v);

    l = expected_tensors(identity);
    entry *g = find_entry(&l, "decoder.past_G_values");
    tap_ok(l.n == 3 + 2 * 18 + 2 + 1 && g->spec.ndim == 6 && g->spec.shape[0] == 2 && g->spec.shape[1] == 3 &&
               g->spec.shape[2] == 1 && g->spec.shape[3] == 2 && g->spec.shape[4] == 4 && g->spec.shape[5] == 4,
           "identity config: no metric learner, past_G_values [L,3,1,H,dk,dk]");
    j = tiny_config("identity");
    expect(check_checkpoint(tmp_path("ck-identity"), j, &l), PLDR_OK,
           "a predefined-G checkpoint with past_G_values passes", NULL);
    json_decref(j);
    free(l.v);
}

static void test_checkpoint_errors(const pldr_config *learned, const pldr_config *identity)
{
    json_t *j = tiny_config(NULL);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", tmp_path("ck-bad"));
    entry_list l = expected_tensors(learned);
    entry saved = l.v[l.n - 1]; /* final_layer.bias */
    l.n--;
    expect(check_checkpoint(dir, j, &l), PLDR_ERR_FORMAT, "a missing tensor is named with the directory",
           "ck-bad", "final_layer.bias", "missing", NULL);
    l.v[l.n++] = saved;

    entry_list extra = expected_tensors(learned);
    collect(&(pldr_tensor_spec){.name = "decoder.extra.weight", .ndim = 1, .shape = {4}}, &extra);
    expect(check_checkpoint(dir, j, &extra), PLDR_ERR_FORMAT, "an extra tensor is named with its file",
           "ck-bad/model.safetensors", "unexpected tensor decoder.extra.weight", NULL);
    free(extra.v);

    entry *e = find_entry(&l, "decoder.dec_layers.1.ffn.gluw3.weight");
    e->spec.shape[1] = 11;
    expect(check_checkpoint(dir, j, &l), PLDR_ERR_FORMAT, "a wrong shape is named with both shapes",
           "ck-bad/model.safetensors", "decoder.dec_layers.1.ffn.gluw3.weight", "has shape [8, 11]",
           "implies [8, 12]", NULL);
    e->spec.shape[1] = 12;
    e = find_entry(&l, "decoder.layernorm1.bias");
    e->spec.ndim = 2, e->spec.shape[1] = 1;
    expect(check_checkpoint(dir, j, &l), PLDR_ERR_FORMAT, "a wrong rank is rejected",
           "decoder.layernorm1.bias", "[8, 1]", "[8]", NULL);
    e->spec.ndim = 1;
    e = find_entry(&l, "decoder.dec_layers.0.mha1.plgatt_layer.pwlst");
    e->dtype = ST_I32;
    expect(check_checkpoint(dir, j, &l), PLDR_ERR_UNSUPPORTED, "an I32 tensor is unsupported",
           "ck-bad/model.safetensors", "plgatt_layer.pwlst has dtype I32", NULL);
    e->dtype = ST_F64;
    expect(check_checkpoint(dir, j, &l), PLDR_ERR_UNSUPPORTED, "an F64 tensor is unsupported",
           "plgatt_layer.pwlst has dtype F64", NULL);
    e->dtype = ST_F32;

    /* past_G_values belongs only to predefined-G checkpoints */
    entry_list ident = expected_tensors(identity);
    pldr_tensor_spec g = find_entry(&ident, "decoder.past_G_values")->spec;
    free(ident.v);
    entry_list with_g = expected_tensors(learned);
    collect(&g, &with_g);
    expect(check_checkpoint(dir, j, &with_g), PLDR_ERR_FORMAT, "a learned-G config rejects past_G_values",
           "unexpected tensor decoder.past_G_values", "custom_G_type null", NULL);
    json_decref(j);

    /* and a predefined-G config has no metric learner */
    j = tiny_config("random");
    expect(check_checkpoint(dir, j, &with_g), PLDR_ERR_FORMAT, "a predefined-G config rejects the metric learner",
           "unexpected tensor decoder.dec_layers.0.mha1.", "custom_G_type \"random\"", NULL);
    expect(check_checkpoint(dir, j, &l), PLDR_ERR_FORMAT, "a predefined-G config needs past_G_values",
           "ck-bad", "decoder.past_G_values [2, 3, 1, 2, 4, 4] is missing", NULL);
    json_decref(j);
    free(with_g.v);
    free(l.v);
}

static void test_checkpoint(void)
{
    pldr_config learned, identity;
    json_t *j = tiny_config(NULL);
    write_json(tmp_path("config.json"), j);
    json_decref(j);
    pldr_status st = pldr_config_load(tmp_path("config.json"), &learned);
    j = tiny_config("identity");
    write_json(tmp_path("config.json"), j);
    json_decref(j);
    if (st == PLDR_OK)
        st = pldr_config_load(tmp_path("config.json"), &identity);
    if (!tap_ok(st == PLDR_OK && identity.g_type == PLDR_G_IDENTITY, "tiny learned and identity configs load")) {
        tap_diag("%s", pldr_last_error());
        return;
    }
    test_checkpoint_valid(&learned, &identity);
    test_checkpoint_errors(&learned, &identity);
}

/* ------------------------------------------------------------------ */
/* The bundled model                                                   */

static pldr_status count_tensor(const pldr_tensor_spec *spec, void *user)
{
    (void)spec;
    ++*(size_t *)user;
    return PLDR_OK;
}

static void test_real_checkpoint(const char *srcdir)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/models/pldr-tiny-pydocs", srcdir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(path, R_OK) != 0) {
        tap_skip(6, "bundled model not found (set PLDR_SRCDIR)");
        return;
    }
    pldr_config c;
    expect(pldr_config_load(path, &c), PLDR_OK, "pldr-tiny-pydocs config.json loads", NULL);
    tap_ok(c.n_layers == 4 && c.d_model == 192 && c.n_heads == 3 && c.head_dim == 64 && c.d_ff == 512 &&
               c.n_reslayer_a == 4 && c.n_dense_a == 2 && c.a_dff == 170 && c.vocab_size == 4096 &&
               c.max_position == 512 && c.g_type == PLDR_G_LEARNED && c.reference_rope == 1 &&
               c.eos_token_id == 3,
           "pldr-tiny-pydocs config values (L=4 d=192 H=3 dk=64 F=512 R=4 D=2 Fa=170 V=4096)");
    st_archive ar = {0};
    expect(st_open_dir(dir, &ar), PLDR_OK, "pldr-tiny-pydocs opens through its index", NULL);
    size_t expected = 0;
    pldr_checkpoint_foreach(&c, count_tensor, &expected);
    tap_ok(ar.n_files == 2 && ar.n_tensors == expected, "2 shards, %zu tensors (config implies %zu)",
           ar.n_tensors, expected);
    expect(pldr_checkpoint_check(&c, &ar, dir), PLDR_OK, "pldr-tiny-pydocs matches its config", NULL);
    const st_tensor *t = st_find(&ar, "decoder.layernorm1.weight");
    float w[192];
    int finite = t && t->n_elements == 192 && st_to_f32(t, w) == PLDR_OK;
    for (int i = 0; finite && i < 192; i++)
        finite = isfinite(w[i]);
    tap_ok(finite, "a real tensor converts to finite floats");
    st_close(&ar);
}

/* ------------------------------------------------------------------ */

static int make_tmpdir(void)
{
    const char *base = getenv("PLDR_TESTTMP");
    if (!base || !*base)
        base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0755);
    snprintf(tmpdir, sizeof tmpdir, "%s/test_loader.XXXXXX", base);
    if (!mkdtemp(tmpdir)) {
        printf("Bail out! cannot create a directory in %s: %s\n", base, strerror(errno));
        return -1;
    }
    return 0;
}

int main(void)
{
    const char *srcdir = getenv("PLDR_SRCDIR");
    if (!srcdir || !*srcdir)
        srcdir = ".";
    if (make_tmpdir() != 0)
        return 1;
    test_parse_valid();
    test_parse_header_framing();
    test_parse_json();
    test_parse_entries();
    test_parse_layout();
    test_conversion();
    test_files();
    test_index();
    test_config_valid();
    test_config_errors();
    test_memory_parsers();
    test_checkpoint();
    test_real_checkpoint(srcdir);
    if (tap_failed == 0)
        nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        tap_diag("fixtures kept in %s", tmpdir);
    return tap_done();
}
