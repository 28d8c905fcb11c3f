/*
 * SentencePiece unigram tokenizer: reads tokenizer.model (a serialized
 * sentencepiece.ModelProto) without a protobuf library and reproduces the
 * encoding and decoding of SentencePiece 0.1.97 (spm_encode / spm_decode)
 * id for id.
 *
 * Sections, in the order a piece of text travels:
 *   protobuf wire-format reader
 *   piece tries (vocabulary, reserved pieces, user-defined symbols)
 *   precompiled charsmap (darts-clone double array of the normalizer)
 *   model loading and the load-time checks SentencePiece makes
 *   normalizer
 *   unigram Viterbi encoder, byte fallback
 *   decoder
 *
 * Trainer options such as split_digits only shape the vocabulary; encoding
 * does not consult them, in SentencePiece either. BPE, word and char models
 * are rejected as unsupported.
 */
#include "config.h"

#include "common/util.h"
#include "text/tokenizer.h"

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPACE_SYMBOL "\xe2\x96\x81" /* U+2581, stands for ' ' inside pieces */
#define SPACE_SYMBOL_LEN 3
#define REPLACEMENT_CHAR "\xef\xbf\xbd" /* U+FFFD */
#define DEFAULT_UNK_SURFACE " \xe2\x81\x87 "

/* Penalty of the unknown piece below the lowest piece score, as in
 * SentencePiece's unigram model. */
#define UNK_PENALTY 10.0f

#define MAX_MODEL_BYTES ((size_t)256 << 20)

enum piece_type {
    PIECE_NORMAL = 1,
    PIECE_UNKNOWN = 2,
    PIECE_CONTROL = 3,
    PIECE_USER_DEFINED = 4,
    PIECE_UNUSED = 5,
    PIECE_BYTE = 6
};

enum model_type { MODEL_UNIGRAM = 1, MODEL_BPE = 2, MODEL_WORD = 3, MODEL_CHAR = 4 };

typedef struct piece {
    const char *text; /* NUL-terminated, in pldr_tokenizer.piece_text */
    uint32_t len;
    float score;
    uint8_t type;
    uint8_t byte; /* the byte of a PIECE_BYTE piece */
} piece;

/* A trie over piece strings, laid out breadth first: the edges of a node are
 * contiguous and sorted by label. The root's edges are also in a 256-entry
 * table because nearly every lookup starts there. */
typedef struct trie_node {
    int32_t value; /* piece id ending here, or -1 */
    uint32_t first_edge;
    uint32_t n_edges;
} trie_node;

typedef struct piece_trie {
    trie_node *nodes;
    size_t n_nodes;
    uint8_t *edge_labels;
    uint32_t *edge_targets;
    int32_t root_child[256];
} piece_trie;

/* One NormalizerSpec: the charsmap's double array (darts-clone units) and the
 * blob of NUL-terminated replacement strings its leaves point into. */
typedef struct normalizer {
    uint32_t *units;
    size_t n_units;
    char *replacements;
    size_t replacements_len;
    int add_dummy_prefix;
    int remove_extra_whitespaces;
    int escape_whitespaces;
    int treat_whitespace_as_suffix;
} normalizer;

struct pldr_tokenizer {
    piece *pieces;
    int32_t n_pieces;
    char *piece_text;
    int32_t *canonical_id; /* id SentencePiece maps a piece string back to */
    int32_t unk_id;
    int32_t byte_piece_id[256];
    int byte_fallback;
    float min_score, max_score;
    char *unk_surface;
    piece_trie vocab;        /* NORMAL, USER_DEFINED and UNUSED pieces */
    piece_trie user_symbols; /* USER_DEFINED only: copied through unnormalized */
    normalizer norm;
    normalizer denorm;
    int has_denorm;
};

/* ------------------------------------------------------------------ */
/* Growable byte buffer                                                */

typedef pldr_bytes strbuf;

static int sb_reserve(strbuf *b, size_t extra)
{
    size_t need;
    if (!pldr_add_size(b->len, extra, &need) || !pldr_add_size(need, 1, &need))
        return 0;
    if (need <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return 0;
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p)
        return 0;
    b->data = p;
    b->cap = cap;
    return 1;
}

static int sb_append(strbuf *b, const void *data, size_t n)
{
    if (!sb_reserve(b, n))
        return 0;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 1;
}

static int sb_append_byte(strbuf *b, char c) { return sb_append(b, &c, 1); }

/* ------------------------------------------------------------------ */
/* UTF-8 as SentencePiece sees it                                      */

/* Length of the character starting with byte c, from its high nibble alone
 * (SentencePiece's OneCharLen; continuation bytes count as 1). */
static size_t utf8_char_len(unsigned char c)
{
    static const unsigned char len_by_nibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len_by_nibble[c >> 4];
}

static int is_trail_byte(unsigned char c) { return (c & 0xC0) == 0x80; }

static int is_valid_codepoint(uint32_t cp) { return cp < 0xD800 || (cp >= 0xE000 && cp <= 0x10FFFF); }

/* Length of the well-formed character at s, or 0 when s starts with a
 * malformed sequence (overlong, surrogate, beyond U+10FFFF, truncated). */
static size_t utf8_valid_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (n >= 2 && (c & 0xE0) == 0xC0) {
        cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        if (is_trail_byte(s[1]) && cp >= 0x80 && is_valid_codepoint(cp))
            return 2;
    } else if (n >= 3 && (c & 0xF0) == 0xE0) {
        cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (is_trail_byte(s[1]) && is_trail_byte(s[2]) && cp >= 0x800 && is_valid_codepoint(cp))
            return 3;
    } else if (n >= 4 && (c & 0xF8) == 0xF0) {
        cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
             ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        if (is_trail_byte(s[1]) && is_trail_byte(s[2]) && is_trail_byte(s[3]) && cp >= 0x10000 &&
            is_valid_codepoint(cp))
            return 4;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Protobuf wire format                                                */

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

typedef struct pb_reader {
    const uint8_t *p, *end;
} pb_reader;

typedef struct pb_field {
    uint32_t number;
    int wire;
    uint64_t varint;     /* WIRE_VARINT */
    uint32_t fixed32;    /* WIRE_FIXED32 */
    const uint8_t *data; /* WIRE_LEN */
    size_t len;
} pb_field;

/* Context for error messages while parsing: the file and the field path. */
typedef struct load_ctx {
    const char *path;
    const uint8_t *file_start; /* for byte offsets in messages */
} load_ctx;

static pldr_status damaged(const load_ctx *lc, const char *fmt, ...) PLDR_PRINTF(2, 3);
static pldr_status damaged(const load_ctx *lc, const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return pldr_fail(PLDR_ERR_FORMAT, "%s: damaged SentencePiece model: %s", lc->path, what);
}

static const char *pb_varint(pb_reader *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end)
            return "truncated varint";
        uint8_t b = *r->p++;
        /* The tenth byte may only carry the top bit of a 64-bit value. */
        if (i == 9 && b > 1)
            return "varint overflows 64 bits";
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (b < 0x80) {
            *out = v;
            return NULL;
        }
    }
    return "varint longer than 10 bytes";
}

/* Reads the next field of a message. Returns 1 with a field, 0 at the end of
 * the message, -1 with *err set when the bytes are not valid wire format. */
static int pb_next(pb_reader *r, pb_field *f, const char **err)
{
    if (r->p >= r->end)
        return 0;
    uint64_t key;
    if ((*err = pb_varint(r, &key)) != NULL)
        return -1;
    if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF) {
        *err = "invalid field number";
        return -1;
    }
    f->number = (uint32_t)(key >> 3);
    f->wire = (int)(key & 7);
    size_t left = (size_t)(r->end - r->p);
    switch (f->wire) {
    case WIRE_VARINT:
        if ((*err = pb_varint(r, &f->varint)) != NULL)
            return -1;
        return 1;
    case WIRE_FIXED64:
        if (left < 8) {
            *err = "truncated 64-bit field";
            return -1;
        }
        r->p += 8;
        return 1;
    case WIRE_FIXED32:
        if (left < 4) {
            *err = "truncated 32-bit field";
            return -1;
        }
        f->fixed32 = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
                     (uint32_t)r->p[3] << 24;
        r->p += 4;
        return 1;
    case WIRE_LEN: {
        uint64_t n;
        if ((*err = pb_varint(r, &n)) != NULL)
            return -1;
        left = (size_t)(r->end - r->p);
        if (n > left) {
            *err = "length runs past the end of the enclosing message";
            return -1;
        }
        f->data = r->p;
        f->len = (size_t)n;
        r->p += n;
        return 1;
    }
    default:
        *err = "unsupported wire type (protobuf groups or garbage)";
        return -1;
    }
}

/* Checks that a known field has the wire type its schema gives it. */
static pldr_status pb_expect(const load_ctx *lc, const char *msg, const pb_field *f, int wire)
{
    if (f->wire == wire)
        return PLDR_OK;
    return damaged(lc, "%s field %u has wire type %d, expected %d", msg, f->number, f->wire, wire);
}

static float float_from_bits(uint32_t bits)
{
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* ------------------------------------------------------------------ */
/* Piece tries                                                         */

typedef struct trie_key {
    const char *text;
    uint32_t len;
    int32_t id;
} trie_key;

static int compare_keys(const void *a, const void *b)
{
    const trie_key *x = a, *y = b;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->text, y->text, n);
    if (c != 0)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* An empty trie: no nodes, and no edge from the root. */
static void trie_clear(piece_trie *t)
{
    memset(t, 0, sizeof *t);
    for (int c = 0; c < 256; c++)
        t->root_child[c] = -1;
}

static void trie_free(piece_trie *t)
{
    free(t->nodes);
    free(t->edge_labels);
    free(t->edge_targets);
    trie_clear(t);
}

/* Builds a trie over the given pieces. dup_a and dup_b receive the ids of two
 * pieces with equal strings (and the build fails) if there are any. */
static pldr_status trie_build(piece_trie *t, trie_key *keys, size_t n_keys, int32_t *dup_a, int32_t *dup_b)
{
    trie_clear(t);
    *dup_a = *dup_b = -1;

    qsort(keys, n_keys, sizeof *keys, compare_keys);
    size_t total = 1;
    for (size_t i = 0; i < n_keys; i++) {
        if (i > 0 && keys[i].len == keys[i - 1].len && memcmp(keys[i].text, keys[i - 1].text, keys[i].len) == 0) {
            *dup_a = keys[i - 1].id;
            *dup_b = keys[i].id;
            return PLDR_ERR_FORMAT;
        }
        if (!pldr_add_size(total, keys[i].len, &total))
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "piece trie too large");
    }

    /* Each node covers the range of sorted keys sharing its prefix; nodes are
     * created in breadth-first order, so a node's children are contiguous. */
    size_t *range_lo = malloc(total * sizeof *range_lo);
    size_t *range_hi = malloc(total * sizeof *range_hi);
    uint32_t *depth = malloc(total * sizeof *depth);
    t->nodes = malloc(total * sizeof *t->nodes);
    t->edge_labels = malloc(total);
    t->edge_targets = malloc(total * sizeof *t->edge_targets);
    if (!range_lo || !range_hi || !depth || !t->nodes || !t->edge_labels || !t->edge_targets) {
        free(range_lo);
        free(range_hi);
        free(depth);
        trie_free(t);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory building the piece trie");
    }

    size_t n_nodes = 1, n_edges = 0;
    range_lo[0] = 0;
    range_hi[0] = n_keys;
    depth[0] = 0;
    for (size_t node = 0; node < n_nodes; node++) {
        size_t lo = range_lo[node], hi = range_hi[node];
        uint32_t d = depth[node];
        trie_node *tn = &t->nodes[node];
        tn->value = -1;
        /* Sorting puts the key equal to the prefix itself first. */
        if (lo < hi && keys[lo].len == d) {
            tn->value = keys[lo].id;
            lo++;
        }
        tn->first_edge = (uint32_t)n_edges;
        while (lo < hi) {
            uint8_t label = (uint8_t)keys[lo].text[d];
            size_t end = lo + 1;
            while (end < hi && (uint8_t)keys[end].text[d] == label)
                end++;
            t->edge_labels[n_edges] = label;
            t->edge_targets[n_edges] = (uint32_t)n_nodes;
            if (node == 0)
                t->root_child[label] = (int32_t)n_nodes;
            n_edges++;
            range_lo[n_nodes] = lo;
            range_hi[n_nodes] = end;
            depth[n_nodes] = d + 1;
            n_nodes++;
            lo = end;
        }
        tn->n_edges = (uint32_t)(n_edges - tn->first_edge);
    }
    free(range_lo);
    free(range_hi);
    free(depth);
    t->n_nodes = n_nodes;
    return PLDR_OK;
}

/* The child of node along byte c, or -1. */
static inline int32_t trie_step(const piece_trie *t, uint32_t node, uint8_t c)
{
    if (node == 0)
        return t->root_child[c];
    const trie_node *tn = &t->nodes[node];
    const uint8_t *labels = t->edge_labels + tn->first_edge;
    uint32_t lo = 0, hi = tn->n_edges;
    while (hi - lo > 8) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (labels[mid] <= c)
            lo = mid;
        else
            hi = mid;
    }
    for (uint32_t i = lo; i < hi; i++)
        if (labels[i] == c)
            return (int32_t)t->edge_targets[tn->first_edge + i];
    return -1;
}

static int32_t trie_find(const piece_trie *t, const char *s, size_t n)
{
    if (!t->nodes)
        return -1;
    uint32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t next = trie_step(t, node, (uint8_t)s[i]);
        if (next < 0)
            return -1;
        node = (uint32_t)next;
    }
    return t->nodes[node].value;
}

/* Length of the longest key that is a prefix of s (0 if none). */
static size_t trie_longest_prefix(const piece_trie *t, const char *s, size_t n)
{
    size_t best = 0;
    if (!t->nodes)
        return 0;
    uint32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t next = trie_step(t, node, (uint8_t)s[i]);
        if (next < 0)
            break;
        node = (uint32_t)next;
        if (t->nodes[node].value >= 0)
            best = i + 1;
    }
    return best;
}

/* ------------------------------------------------------------------ */
/* Precompiled charsmap: a darts-clone double array                   */

/* darts-clone unit fields: a unit is a node with a label, an offset to its
 * children and a has-leaf bit, or a leaf holding a value. */
static inline uint32_t da_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
static inline uint32_t da_label(uint32_t u) { return u & ((1u << 31) | 0xFF); }
static inline int da_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static inline uint32_t da_value(uint32_t u) { return u & ((1u << 31) - 1); }

/* Walks every node reachable from the root and checks that each leaf points
 * at a replacement string inside the blob. Positions outside the array are
 * treated as missing nodes here and at lookup time. */
static pldr_status charsmap_validate(const load_ctx *lc, const char *which, const normalizer *nm)
{
    size_t n = nm->n_units;
    uint8_t *visited = calloc(n, 1);
    uint32_t *stack = malloc(n * sizeof *stack);
    if (!visited || !stack) {
        free(visited);
        free(stack);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory checking the charsmap");
    }
    pldr_status st = PLDR_OK;
    size_t top = 0;
    stack[top++] = 0;
    visited[0] = 1;
    while (top > 0 && st == PLDR_OK) {
        uint32_t pos = stack[--top];
        uint32_t unit = nm->units[pos];
        uint32_t base = pos ^ da_offset(unit);
        if (pos != 0 && da_has_leaf(unit)) {
            if (base >= n) {
                st = damaged(lc, "%s precompiled_charsmap: leaf of trie node %u is outside the %zu-unit trie",
                             which, pos, n);
                break;
            }
            uint32_t value = da_value(nm->units[base]);
            if (value >= nm->replacements_len) {
                st = damaged(lc,
                             "%s precompiled_charsmap: trie node %u points at offset %u, past the "
                             "%zu-byte normalized strings",
                             which, pos, value, nm->replacements_len);
                break;
            }
        }
        for (uint32_t c = 0; c < 256; c++) {
            uint32_t child = base ^ c;
            if (child >= n || visited[child] || da_label(nm->units[child]) != c)
                continue;
            visited[child] = 1;
            stack[top++] = child;
        }
    }
    free(visited);
    free(stack);
    return st;
}

/* Longest charsmap rule matching a prefix of s: its length (0 if none) and
 * the replacement string it maps to. Mirrors darts-clone commonPrefixSearch. */
static size_t charsmap_longest(const normalizer *nm, const unsigned char *s, size_t n, const char **repl)
{
    if (!nm->units)
        return 0;
    size_t best = 0;
    uint32_t pos = da_offset(nm->units[0]);
    for (size_t i = 0; i < n; i++) {
        pos ^= s[i];
        if (pos >= nm->n_units)
            break;
        uint32_t unit = nm->units[pos];
        if (da_label(unit) != s[i])
            break;
        pos ^= da_offset(unit);
        if (da_has_leaf(unit)) {
            if (pos >= nm->n_units)
                break;
            uint32_t value = da_value(nm->units[pos]);
            if (value < nm->replacements_len) {
                best = i + 1;
                *repl = nm->replacements + value;
            }
        }
    }
    return best;
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */

typedef struct normalizer_fields {
    const uint8_t *charsmap;
    size_t charsmap_len;
    int add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
} normalizer_fields;

typedef struct trainer_fields {
    uint64_t model_type;
    int byte_fallback;
    int treat_whitespace_as_suffix;
    const uint8_t *unk_surface;
    size_t unk_surface_len;
    int has_unk_surface;
} trainer_fields;

typedef struct self_test_sample {
    const uint8_t *input, *expected;
    size_t input_len, expected_len;
} self_test_sample;

typedef struct raw_piece {
    const uint8_t *text;
    size_t len;
    uint32_t score_bits;
    uint64_t type;
} raw_piece;

typedef struct model_fields {
    raw_piece *pieces;
    size_t n_pieces, cap_pieces;
    trainer_fields trainer;
    normalizer_fields norm, denorm;
    int has_denorm;
    self_test_sample *samples;
    size_t n_samples, cap_samples;
} model_fields;

/* A wire-format error inside message msg, at the reader's position. */
static pldr_status pb_damaged(const load_ctx *lc, const char *msg, const pb_reader *r, const char *err)
{
    return damaged(lc, "%s: %s at byte %zu", msg, err, (size_t)(r->p - lc->file_start));
}

static pldr_status parse_piece(const load_ctx *lc, const uint8_t *data, size_t len, size_t index, raw_piece *out)
{
    char msg[48];
    snprintf(msg, sizeof msg, "pieces[%zu]", index);
    pb_reader r = {data, data + len};
    pb_field f;
    const char *err = NULL;
    int rc;
    pldr_status st;
    out->text = NULL;
    out->len = 0;
    out->score_bits = 0;
    out->type = PIECE_NORMAL;
    while ((rc = pb_next(&r, &f, &err)) > 0) {
        switch (f.number) {
        case 1:
            if ((st = pb_expect(lc, msg, &f, WIRE_LEN)) != PLDR_OK)
                return st;
            out->text = f.data;
            out->len = f.len;
            break;
        case 2:
            if ((st = pb_expect(lc, msg, &f, WIRE_FIXED32)) != PLDR_OK)
                return st;
            out->score_bits = f.fixed32;
            break;
        case 3:
            if ((st = pb_expect(lc, msg, &f, WIRE_VARINT)) != PLDR_OK)
                return st;
            out->type = f.varint;
            break;
        default:
            break;
        }
    }
    if (rc < 0)
        return pb_damaged(lc, msg, &r, err);
    return PLDR_OK;
}

static pldr_status parse_trainer(const load_ctx *lc, const uint8_t *data, size_t len, trainer_fields *t)
{
    static const char msg[] = "trainer_spec";
    pb_reader r = {data, data + len};
    pb_field f;
    const char *err = NULL;
    int rc;
    pldr_status st;
    while ((rc = pb_next(&r, &f, &err)) > 0) {
        switch (f.number) {
        case 3: /* model_type */
            if ((st = pb_expect(lc, msg, &f, WIRE_VARINT)) != PLDR_OK)
                return st;
            t->model_type = f.varint;
            break;
        case 24: /* treat_whitespace_as_suffix */
            if ((st = pb_expect(lc, msg, &f, WIRE_VARINT)) != PLDR_OK)
                return st;
            t->treat_whitespace_as_suffix = f.varint != 0;
            break;
        case 35: /* byte_fallback */
            if ((st = pb_expect(lc, msg, &f, WIRE_VARINT)) != PLDR_OK)
                return st;
            t->byte_fallback = f.varint != 0;
            break;
        case 44: /* unk_surface */
            if ((st = pb_expect(lc, msg, &f, WIRE_LEN)) != PLDR_OK)
                return st;
            t->unk_surface = f.data;
            t->unk_surface_len = f.len;
            t->has_unk_surface = 1;
            break;
        default:
            break;
        }
    }
    if (rc < 0)
        return pb_damaged(lc, msg, &r, err);
    return PLDR_OK;
}

static pldr_status parse_normalizer(const load_ctx *lc, const char *msg, const uint8_t *data, size_t len,
                                    normalizer_fields *n)
{
    pb_reader r = {data, data + len};
    pb_field f;
    const char *err = NULL;
    int rc;
    pldr_status st;
    while ((rc = pb_next(&r, &f, &err)) > 0) {
        int is_flag = f.number >= 3 && f.number <= 5;
        if (f.number == 2 || is_flag) {
            if ((st = pb_expect(lc, msg, &f, f.number == 2 ? WIRE_LEN : WIRE_VARINT)) != PLDR_OK)
                return st;
        }
        switch (f.number) {
        case 2:
            n->charsmap = f.data;
            n->charsmap_len = f.len;
            break;
        case 3: n->add_dummy_prefix = f.varint != 0; break;
        case 4: n->remove_extra_whitespaces = f.varint != 0; break;
        case 5: n->escape_whitespaces = f.varint != 0; break;
        default: break;
        }
    }
    if (rc < 0)
        return pb_damaged(lc, msg, &r, err);
    return PLDR_OK;
}

static pldr_status parse_self_test(const load_ctx *lc, const uint8_t *data, size_t len, model_fields *m)
{
    pb_reader r = {data, data + len};
    pb_field f;
    const char *err = NULL;
    int rc;
    pldr_status st;
    while ((rc = pb_next(&r, &f, &err)) > 0) {
        if (f.number != 1)
            continue;
        if ((st = pb_expect(lc, "self_test_data", &f, WIRE_LEN)) != PLDR_OK)
            return st;
        if (m->n_samples == m->cap_samples) {
            size_t cap = m->cap_samples ? 2 * m->cap_samples : 16;
            self_test_sample *p = realloc(m->samples, cap * sizeof *p);
            if (!p)
                return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory reading %s", lc->path);
            m->samples = p;
            m->cap_samples = cap;
        }
        self_test_sample *s = &m->samples[m->n_samples++];
        memset(s, 0, sizeof *s);
        s->input = s->expected = (const uint8_t *)"";
        pb_reader sr = {f.data, f.data + f.len};
        pb_field sf;
        while ((rc = pb_next(&sr, &sf, &err)) > 0) {
            if (sf.number != 1 && sf.number != 2)
                continue;
            if ((st = pb_expect(lc, "self_test_data.samples", &sf, WIRE_LEN)) != PLDR_OK)
                return st;
            if (sf.number == 1) {
                s->input = sf.data;
                s->input_len = sf.len;
            } else {
                s->expected = sf.data;
                s->expected_len = sf.len;
            }
        }
        if (rc < 0)
            return pb_damaged(lc, "self_test_data.samples", &sr, err);
    }
    if (rc < 0)
        return pb_damaged(lc, "self_test_data", &r, err);
    return PLDR_OK;
}

static pldr_status parse_model(const load_ctx *lc, const uint8_t *data, size_t len, model_fields *m)
{
    static const char msg[] = "ModelProto";
    pb_reader r = {data, data + len};
    pb_field f;
    const char *err = NULL;
    int rc;
    pldr_status st;
    m->trainer.model_type = MODEL_UNIGRAM;
    m->norm.add_dummy_prefix = m->norm.remove_extra_whitespaces = m->norm.escape_whitespaces = 1;
    m->denorm = m->norm;
    while ((rc = pb_next(&r, &f, &err)) > 0) {
        if (f.number >= 1 && f.number <= 5 && (st = pb_expect(lc, msg, &f, WIRE_LEN)) != PLDR_OK)
            return st;
        switch (f.number) {
        case 1:
            if (m->n_pieces == m->cap_pieces) {
                size_t cap = m->cap_pieces ? 2 * m->cap_pieces : 1024;
                raw_piece *p = realloc(m->pieces, cap * sizeof *p);
                if (!p)
                    return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory reading %s", lc->path);
                m->pieces = p;
                m->cap_pieces = cap;
            }
            if ((st = parse_piece(lc, f.data, f.len, m->n_pieces, &m->pieces[m->n_pieces])) != PLDR_OK)
                return st;
            m->n_pieces++;
            break;
        /* Repeated occurrences of a sub-message merge, as protobuf does. */
        case 2:
            if ((st = parse_trainer(lc, f.data, f.len, &m->trainer)) != PLDR_OK)
                return st;
            break;
        case 3:
            if ((st = parse_normalizer(lc, "normalizer_spec", f.data, f.len, &m->norm)) != PLDR_OK)
                return st;
            break;
        case 4:
            if ((st = parse_self_test(lc, f.data, f.len, m)) != PLDR_OK)
                return st;
            break;
        case 5:
            m->has_denorm = 1;
            if ((st = parse_normalizer(lc, "denormalizer_spec", f.data, f.len, &m->denorm)) != PLDR_OK)
                return st;
            break;
        default:
            break;
        }
    }
    if (rc < 0)
        return pb_damaged(lc, msg, &r, err);
    return PLDR_OK;
}

/* Splits the charsmap blob: <trie size, u32 LE><double array><replacements>. */
static pldr_status normalizer_init(const load_ctx *lc, const char *which, const normalizer_fields *nf,
                                   int treat_whitespace_as_suffix, normalizer *nm)
{
    memset(nm, 0, sizeof *nm);
    nm->add_dummy_prefix = nf->add_dummy_prefix;
    nm->remove_extra_whitespaces = nf->remove_extra_whitespaces;
    nm->escape_whitespaces = nf->escape_whitespaces;
    nm->treat_whitespace_as_suffix = treat_whitespace_as_suffix;
    if (nf->charsmap_len == 0)
        return PLDR_OK; /* no character normalization, only whitespace handling */

    const uint8_t *blob = nf->charsmap;
    size_t blob_len = nf->charsmap_len;
    if (blob_len <= 4)
        return damaged(lc, "%s precompiled_charsmap: %zu bytes is too short", which, blob_len);
    uint32_t trie_bytes = (uint32_t)blob[0] | (uint32_t)blob[1] << 8 | (uint32_t)blob[2] << 16 |
                          (uint32_t)blob[3] << 24;
    if (trie_bytes > blob_len - 4)
        return damaged(lc, "%s precompiled_charsmap: trie size %u exceeds the %zu bytes of the blob", which,
                       trie_bytes, blob_len - 4);
    if (trie_bytes < 4 || trie_bytes % 4 != 0)
        return damaged(lc, "%s precompiled_charsmap: trie size %u is not a positive multiple of 4", which,
                       trie_bytes);
    size_t repl_len = blob_len - 4 - trie_bytes;
    /* Leaves point at NUL-terminated strings; a final NUL keeps every
     * in-range offset inside the blob. */
    if (repl_len == 0 || blob[blob_len - 1] != '\0')
        return damaged(lc, "%s precompiled_charsmap: normalized strings are not NUL-terminated", which);

    nm->n_units = trie_bytes / 4;
    nm->units = malloc(nm->n_units * sizeof *nm->units);
    nm->replacements = malloc(repl_len);
    if (!nm->units || !nm->replacements)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory reading %s", lc->path);
    const uint8_t *u = blob + 4;
    for (size_t i = 0; i < nm->n_units; i++, u += 4)
        nm->units[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
    memcpy(nm->replacements, blob + 4 + trie_bytes, repl_len);
    nm->replacements_len = repl_len;
    return charsmap_validate(lc, which, nm);
}

static void normalizer_free(normalizer *nm)
{
    free(nm->units);
    free(nm->replacements);
    memset(nm, 0, sizeof *nm);
}

/* Parses "<0xXX>" (upper-case hex, as SentencePiece writes it); -1 otherwise. */
static int byte_piece_value(const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    const char *hi = memchr(hex, s[3], 16), *lo = memchr(hex, s[4], 16);
    if (!hi || !lo) /* memchr never matches the NUL: it looks at 16 bytes */
        return -1;
    return (int)((hi - hex) * 16 + (lo - hex));
}

static const char *piece_type_name(int type)
{
    switch (type) {
    case PIECE_NORMAL: return "normal";
    case PIECE_UNKNOWN: return "unknown";
    case PIECE_CONTROL: return "control";
    case PIECE_USER_DEFINED: return "user-defined";
    case PIECE_UNUSED: return "unused";
    case PIECE_BYTE: return "byte";
    }
    return "?";
}

static int is_vocab_type(int type)
{
    return type == PIECE_NORMAL || type == PIECE_USER_DEFINED || type == PIECE_UNUSED;
}
static int is_reserved_type(int type) { return !is_vocab_type(type); }
static int is_user_defined_type(int type) { return type == PIECE_USER_DEFINED; }

/* Builds a trie over the pieces of the wanted types (an empty trie if none);
 * two of them with the same string make the model invalid. */
static pldr_status build_piece_trie(const load_ctx *lc, const pldr_tokenizer *tok, int (*wanted)(int type),
                                    trie_key *keys, piece_trie *t)
{
    size_t n = 0;
    for (int32_t i = 0; i < tok->n_pieces; i++)
        if (wanted(tok->pieces[i].type))
            keys[n++] = (trie_key){tok->pieces[i].text, tok->pieces[i].len, i};
    if (n == 0) {
        trie_clear(t);
        return PLDR_OK;
    }
    int32_t dup_a, dup_b;
    pldr_status st = trie_build(t, keys, n, &dup_a, &dup_b);
    if (st != PLDR_OK && dup_a >= 0)
        return damaged(lc, "pieces[%d] duplicates pieces[%d] \"%.64s\" (%s)", dup_b, dup_a, tok->pieces[dup_a].text,
                       piece_type_name(tok->pieces[dup_a].type));
    return st;
}

/* Builds the tries and runs SentencePiece's InitializePieces checks. */
static pldr_status build_pieces(const load_ctx *lc, const model_fields *m, pldr_tokenizer *tok)
{
    if (m->n_pieces == 0)
        return damaged(lc, "the model has no pieces");
    if (m->n_pieces > INT32_MAX)
        return damaged(lc, "%zu pieces are more than token ids can address", m->n_pieces);

    size_t text_bytes = 0;
    for (size_t i = 0; i < m->n_pieces; i++)
        if (!pldr_add_size(text_bytes, m->pieces[i].len + 1, &text_bytes))
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "pieces too large");
    tok->n_pieces = (int32_t)m->n_pieces;
    tok->pieces = calloc(m->n_pieces, sizeof *tok->pieces);
    tok->piece_text = malloc(text_bytes);
    tok->canonical_id = malloc(m->n_pieces * sizeof *tok->canonical_id);
    if (!tok->pieces || !tok->piece_text || !tok->canonical_id)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory reading %s", lc->path);

    int byte_found[256] = {0};
    tok->unk_id = -1;
    for (int c = 0; c < 256; c++)
        tok->byte_piece_id[c] = -1;
    tok->min_score = FLT_MAX;
    tok->max_score = FLT_MIN; /* sic: SentencePiece starts from FLT_MIN */

    char *text = tok->piece_text;
    for (size_t i = 0; i < m->n_pieces; i++) {
        const raw_piece *rp = &m->pieces[i];
        piece *p = &tok->pieces[i];
        if (rp->type < PIECE_NORMAL || rp->type > PIECE_BYTE)
            return damaged(lc, "pieces[%zu] has unknown type %llu", i, (unsigned long long)rp->type);
        if (rp->len == 0)
            return damaged(lc, "pieces[%zu] is empty", i);
        if (memchr(rp->text, '\0', rp->len))
            return damaged(lc, "pieces[%zu] contains a NUL byte", i);
        if (rp->len > UINT32_MAX)
            return damaged(lc, "pieces[%zu] is too long", i);
        memcpy(text, rp->text, rp->len);
        text[rp->len] = '\0';
        p->text = text;
        p->len = (uint32_t)rp->len;
        p->score = float_from_bits(rp->score_bits);
        p->type = (uint8_t)rp->type;
        text += rp->len + 1;

        if (p->type == PIECE_UNKNOWN) {
            if (tok->unk_id >= 0)
                return damaged(lc, "pieces[%zu] \"%.64s\" is a second unknown piece (pieces[%d] \"%.64s\" is one)", i,
                               p->text, tok->unk_id, tok->pieces[tok->unk_id].text);
            tok->unk_id = (int32_t)i;
        }
        if (p->type == PIECE_BYTE) {
            if (!m->trainer.byte_fallback)
                return damaged(lc, "pieces[%zu] is the byte piece \"%.64s\" but byte_fallback is off", i, p->text);
            int b = byte_piece_value(p->text, p->len);
            if (b < 0)
                return damaged(lc, "pieces[%zu] \"%.64s\" is a byte piece not of the form <0xXX>", i, p->text);
            p->byte = (uint8_t)b;
            byte_found[b] = 1;
            tok->byte_piece_id[b] = (int32_t)i;
        }
        if (p->type == PIECE_NORMAL) {
            if (p->score < tok->min_score)
                tok->min_score = p->score;
            if (p->score > tok->max_score)
                tok->max_score = p->score;
        }
    }
    if (tok->unk_id < 0)
        return damaged(lc, "no piece has the unknown type (SentencePiece requires exactly one)");
    if (m->trainer.byte_fallback) {
        for (int b = 0; b < 256; b++)
            if (!byte_found[b])
                return damaged(lc, "byte_fallback is on but the byte piece <0x%02X> is missing", b);
    }
    int32_t n_vocab = 0;
    for (int32_t i = 0; i < tok->n_pieces; i++)
        n_vocab += is_vocab_type(tok->pieces[i].type);
    if (n_vocab == 0)
        return damaged(lc, "the model has no normal, user-defined or unused pieces");

    /* SentencePiece keeps two maps: pieces Viterbi may emit, and reserved
     * ones (unknown, control, byte). Strings must be unique within each. */
    trie_key *keys = malloc(m->n_pieces * sizeof *keys);
    if (!keys)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory reading %s", lc->path);
    piece_trie reserved;
    pldr_status st = build_piece_trie(lc, tok, is_vocab_type, keys, &tok->vocab);
    if (st == PLDR_OK)
        st = build_piece_trie(lc, tok, is_reserved_type, keys, &reserved);
    if (st == PLDR_OK) {
        /* Decoding maps each id's string back through the reserved map
         * first, then the vocabulary, as SentencePiece's PieceToId does. */
        for (int32_t i = 0; i < tok->n_pieces; i++) {
            int32_t id = trie_find(&reserved, tok->pieces[i].text, tok->pieces[i].len);
            if (id < 0)
                id = trie_find(&tok->vocab, tok->pieces[i].text, tok->pieces[i].len);
            tok->canonical_id[i] = id >= 0 ? id : tok->unk_id;
        }
        trie_free(&reserved);
        st = build_piece_trie(lc, tok, is_user_defined_type, keys, &tok->user_symbols);
    }
    free(keys);
    return st;
}

static pldr_status encode_pieces_text(const pldr_tokenizer *tok, const char *text, size_t len, strbuf *out);

/* SentencePiece encodes each self_test_data sample at load time and refuses
 * the model if the pieces differ from the expected ones. */
static pldr_status run_self_test(const load_ctx *lc, const model_fields *m, const pldr_tokenizer *tok)
{
    strbuf got = {0};
    size_t failures = 0, first = 0;
    for (size_t i = 0; i < m->n_samples; i++) {
        const self_test_sample *s = &m->samples[i];
        pldr_status st = encode_pieces_text(tok, (const char *)s->input, s->input_len, &got);
        if (st != PLDR_OK) {
            free(got.data);
            return st;
        }
        if (got.len != s->expected_len || memcmp(got.data, s->expected, got.len) != 0) {
            if (failures++ == 0)
                first = i;
        }
    }
    if (failures == 0) {
        free(got.data);
        return PLDR_OK;
    }
    const self_test_sample *s = &m->samples[first];
    encode_pieces_text(tok, (const char *)s->input, s->input_len, &got);
    pldr_status st = damaged(lc, "%zu of %zu self-test samples fail; the first, \"%.*s\", gives \"%.*s\" instead of \"%.*s\"",
                             failures, m->n_samples, (int)(s->input_len > 80 ? 80 : s->input_len), (const char *)s->input,
                             (int)(got.len > 120 ? 120 : got.len), got.data ? got.data : "",
                             (int)(s->expected_len > 120 ? 120 : s->expected_len), (const char *)s->expected);
    free(got.data);
    return st;
}

void pldr_tokenizer_free(pldr_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->pieces);
    free(tok->piece_text);
    free(tok->canonical_id);
    free(tok->unk_surface);
    trie_free(&tok->vocab);
    trie_free(&tok->user_symbols);
    normalizer_free(&tok->norm);
    normalizer_free(&tok->denorm);
    free(tok);
}

pldr_status pldr_tokenizer_load(const char *path, pldr_tokenizer **out)
{
    if (!path || !out)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_tokenizer_load: NULL argument");
    *out = NULL;
    load_ctx lc = {path, NULL};
    unsigned char *data = NULL;
    size_t len = 0;
    pldr_status st = pldr_read_file(path, MAX_MODEL_BYTES, &data, &len);
    if (st != PLDR_OK)
        return st;

    model_fields m;
    memset(&m, 0, sizeof m);
    pldr_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        free(data);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory reading %s", path);
    }
    lc.file_start = data;
    if (len == 0) {
        st = damaged(&lc, "the file is empty");
        goto done;
    }
    if ((st = parse_model(&lc, data, len, &m)) != PLDR_OK)
        goto done;

    switch (m.trainer.model_type) {
    case MODEL_UNIGRAM:
        break;
    case MODEL_BPE:
    case MODEL_WORD:
    case MODEL_CHAR:
        st = pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: a SentencePiece %s model; only unigram models are supported", path,
                       m.trainer.model_type == MODEL_BPE ? "BPE" : m.trainer.model_type == MODEL_WORD ? "word" : "char");
        goto done;
    default:
        st = damaged(&lc, "trainer_spec.model_type %llu is not a SentencePiece model type",
                     (unsigned long long)m.trainer.model_type);
        goto done;
    }
    tok->byte_fallback = m.trainer.byte_fallback;

    if ((st = build_pieces(&lc, &m, tok)) != PLDR_OK)
        goto done;
    if ((st = normalizer_init(&lc, "normalizer_spec", &m.norm, m.trainer.treat_whitespace_as_suffix, &tok->norm)) !=
        PLDR_OK)
        goto done;
    /* SentencePiece applies a denormalizer only when it has a charsmap. */
    if (m.has_denorm && m.denorm.charsmap_len > 0) {
        if ((st = normalizer_init(&lc, "denormalizer_spec", &m.denorm, 0, &tok->denorm)) != PLDR_OK)
            goto done;
        tok->has_denorm = 1;
    }
    {
        const char *surface = DEFAULT_UNK_SURFACE;
        size_t surface_len = strlen(DEFAULT_UNK_SURFACE);
        if (m.trainer.has_unk_surface) {
            surface = (const char *)m.trainer.unk_surface;
            surface_len = m.trainer.unk_surface_len;
        }
        tok->unk_surface = malloc(surface_len + 1);
        if (!tok->unk_surface) {
            st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory reading %s", path);
            goto done;
        }
        memcpy(tok->unk_surface, surface, surface_len);
        tok->unk_surface[surface_len] = '\0';
    }
    st = run_self_test(&lc, &m, tok);

done:
    free(m.pieces);
    free(m.samples);
    free(data);
    if (st != PLDR_OK) {
        pldr_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return PLDR_OK;
}

int pldr_tokenizer_vocab_size(const pldr_tokenizer *tok) { return tok ? tok->n_pieces : 0; }

const char *pldr_token_piece(const pldr_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || id >= tok->n_pieces)
        return NULL;
    return tok->pieces[id].text;
}

/* ------------------------------------------------------------------ */
/* Normalizer                                                          */

/* The normalized form of the longest rule at the start of s: a user-defined
 * symbol (copied as is), else the charsmap's replacement, else the character
 * itself, or U+FFFD for one malformed byte. Returns the bytes consumed. */
static size_t normalize_prefix(const normalizer *nm, const piece_trie *user_symbols, const unsigned char *s,
                               size_t n, const char **out, size_t *out_len)
{
    if (user_symbols) {
        size_t k = trie_longest_prefix(user_symbols, (const char *)s, n);
        if (k > 0) {
            *out = (const char *)s;
            *out_len = k;
            return k;
        }
    }
    const char *repl = NULL;
    size_t k = charsmap_longest(nm, s, n, &repl);
    if (k > 0) {
        *out = repl;
        *out_len = strlen(repl);
        return k;
    }
    k = utf8_valid_len(s, n);
    if (k == 0) {
        *out = REPLACEMENT_CHAR;
        *out_len = 3;
        return 1;
    }
    *out = (const char *)s;
    *out_len = k;
    return k;
}

static int append_space(const normalizer *nm, strbuf *out)
{
    return nm->escape_whitespaces ? sb_append(out, SPACE_SYMBOL, SPACE_SYMBOL_LEN) : sb_append_byte(out, ' ');
}

/* SentencePiece's Normalizer::Normalize: charsmap, whitespace collapsing and
 * trimming, dummy prefix (or suffix), and ' ' -> U+2581. */
static pldr_status normalize(const normalizer *nm, const piece_trie *user_symbols, const char *text, size_t n,
                             strbuf *out)
{
    const unsigned char *s = (const unsigned char *)text;
    const char *repl;
    size_t repl_len, pos = 0;
    out->len = 0;
    if (!sb_reserve(out, n < SIZE_MAX / 4 ? n + n / 2 + 8 : 0))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory normalizing text");
    out->data[0] = '\0';
    if (n == 0)
        return PLDR_OK;

    if (nm->remove_extra_whitespaces) {
        while (pos < n) {
            size_t used = normalize_prefix(nm, user_symbols, s + pos, n - pos, &repl, &repl_len);
            if (!(repl_len == 1 && repl[0] == ' '))
                break;
            pos += used;
        }
    }
    if (pos == n)
        return PLDR_OK;

    int ok = 1;
    if (!nm->treat_whitespace_as_suffix && nm->add_dummy_prefix)
        ok = append_space(nm, out);

    int is_prev_space = nm->remove_extra_whitespaces;
    while (pos < n && ok) {
        size_t used = normalize_prefix(nm, user_symbols, s + pos, n - pos, &repl, &repl_len);
        size_t k = 0;
        /* Collapses runs of spaces into the space that ended the last rule. */
        while (is_prev_space && k < repl_len && repl[k] == ' ')
            k++;
        if (k < repl_len) {
            for (; k < repl_len && ok; k++) {
                if (nm->escape_whitespaces && repl[k] == ' ')
                    ok = sb_append(out, SPACE_SYMBOL, SPACE_SYMBOL_LEN);
                else
                    ok = sb_append_byte(out, repl[k]);
            }
            is_prev_space = repl[repl_len - 1] == ' ';
        }
        pos += used;
        if (!nm->remove_extra_whitespaces)
            is_prev_space = 0;
    }

    if (ok && nm->remove_extra_whitespaces) {
        /* Trailing spaces go, including U+2581 typed in the input itself. */
        const char *space = nm->escape_whitespaces ? SPACE_SYMBOL : " ";
        size_t space_len = nm->escape_whitespaces ? SPACE_SYMBOL_LEN : 1;
        while (out->len >= space_len && memcmp(out->data + out->len - space_len, space, space_len) == 0)
            out->len -= space_len;
        out->data[out->len] = '\0';
    }
    if (ok && nm->treat_whitespace_as_suffix && nm->add_dummy_prefix)
        ok = append_space(nm, out);
    if (!ok)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory normalizing text");
    return PLDR_OK;
}

/* ------------------------------------------------------------------ */
/* Unigram encoder                                                     */

typedef struct token_span {
    size_t begin, end; /* byte range in the normalized text */
    int32_t id;
} token_span;

typedef struct best_path {
    size_t starts_at; /* SIZE_MAX: no path ends here yet */
    float score;
    int32_t id;
} best_path;

/* SentencePiece's optimized Viterbi (EncodeOptimized): best_path[i] is the
 * best segmentation of the first i bytes. Scores are accumulated with the
 * same float/double mix so that ties break the same way. */
static pldr_status viterbi(const pldr_tokenizer *tok, const char *norm, size_t size, token_span **spans_out,
                           size_t *n_out)
{
    *spans_out = NULL;
    *n_out = 0;
    if (size == 0)
        return PLDR_OK;
    size_t n_paths;
    if (!pldr_add_size(size, 1, &n_paths) || n_paths > SIZE_MAX / sizeof(best_path))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "text too long to encode");
    best_path *paths = malloc(n_paths * sizeof *paths);
    if (!paths)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory encoding %zu bytes", size);
    for (size_t i = 0; i <= size; i++) {
        paths[i].starts_at = SIZE_MAX;
        paths[i].score = 0.0f;
        paths[i].id = -1;
    }

    const unsigned char *s = (const unsigned char *)norm;
    const float unk_score = tok->min_score - UNK_PENALTY;
    const piece_trie *t = &tok->vocab;
    size_t start = 0;
    while (start < size) {
        const float score_here = paths[start].score;
        size_t char_len = utf8_char_len(s[start]);
        if (char_len > size - start)
            char_len = size - start;
        int has_single_char_piece = 0;
        uint32_t node = 0;
        for (size_t key_pos = start; key_pos < size;) {
            int32_t next = trie_step(t, node, s[key_pos]);
            if (next < 0)
                break;
            node = (uint32_t)next;
            key_pos++;
            int32_t id = t->nodes[node].value;
            if (id < 0)
                continue;
            const piece *p = &tok->pieces[id];
            if (p->type == PIECE_UNUSED)
                continue;
            size_t length = key_pos - start;
            /* User-defined symbols get a bonus so they always win. */
            double score = p->type == PIECE_USER_DEFINED ? (double)((float)length * tok->max_score) - 0.1
                                                         : (double)p->score;
            double candidate = score + (double)score_here;
            best_path *target = &paths[key_pos];
            if (target->starts_at == SIZE_MAX || candidate > (double)target->score) {
                target->score = (float)candidate;
                target->starts_at = start;
                target->id = id;
            }
            if (length == char_len)
                has_single_char_piece = 1;
        }
        if (!has_single_char_piece) {
            float candidate = unk_score + score_here;
            best_path *target = &paths[start + char_len];
            if (target->starts_at == SIZE_MAX || candidate > target->score) {
                target->score = candidate;
                target->starts_at = start;
                target->id = tok->unk_id;
            }
        }
        start += char_len;
    }

    size_t n = 0;
    for (size_t end = size; end > 0; end = paths[end].starts_at)
        n++;
    token_span *spans = malloc(n * sizeof *spans);
    if (!spans) {
        free(paths);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory encoding %zu bytes", size);
    }
    size_t k = n;
    for (size_t end = size; end > 0; end = paths[end].starts_at) {
        k--;
        spans[k].begin = paths[end].starts_at;
        spans[k].end = end;
        spans[k].id = paths[end].id;
    }
    free(paths);
    *spans_out = spans;
    *n_out = n;
    return PLDR_OK;
}

/* Normalizes and segments text; the spans index into *norm. */
static pldr_status encode_spans(const pldr_tokenizer *tok, const char *text, size_t len, strbuf *norm,
                                token_span **spans, size_t *n_spans)
{
    pldr_status st = normalize(&tok->norm, tok->user_symbols.nodes ? &tok->user_symbols : NULL, text, len, norm);
    if (st != PLDR_OK)
        return st;
    return viterbi(tok, norm->data, norm->len, spans, n_spans);
}

/* The pieces as spm_encode prints them, joined by spaces: an unknown span
 * becomes byte pieces with byte fallback, else runs of them merge into one. */
static pldr_status encode_pieces_text(const pldr_tokenizer *tok, const char *text, size_t len, strbuf *out)
{
    strbuf norm = {0};
    token_span *spans = NULL;
    size_t n = 0;
    out->len = 0;
    if (!sb_reserve(out, 0))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory encoding text");
    out->data[0] = '\0';
    pldr_status st = encode_spans(tok, text, len, &norm, &spans, &n);
    int ok = st == PLDR_OK, prev_unk = 0;
    for (size_t i = 0; i < n && ok; i++) {
        int is_unk = spans[i].id == tok->unk_id;
        const char *w = norm.data + spans[i].begin;
        size_t w_len = spans[i].end - spans[i].begin;
        if (is_unk && tok->byte_fallback) {
            for (size_t b = 0; b < w_len && ok; b++) {
                const piece *p = &tok->pieces[tok->byte_piece_id[(unsigned char)w[b]]];
                ok = (out->len == 0 || sb_append_byte(out, ' ')) && sb_append(out, p->text, p->len);
            }
        } else if (is_unk && prev_unk) {
            ok = sb_append(out, w, w_len);
        } else {
            ok = (out->len == 0 || sb_append_byte(out, ' ')) && sb_append(out, w, w_len);
        }
        prev_unk = is_unk;
    }
    free(norm.data);
    free(spans);
    if (st == PLDR_OK && !ok)
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory encoding text");
    return st;
}

pldr_status pldr_tokenize(const pldr_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n_ids)
{
    if (!tok || !ids || !n_ids || (!text && len > 0))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_tokenize: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    strbuf norm = {0};
    token_span *spans = NULL;
    size_t n_spans = 0;
    pldr_status st = encode_spans(tok, text ? text : "", len, &norm, &spans, &n_spans);
    if (st != PLDR_OK) {
        free(norm.data);
        return st;
    }

    /* Byte fallback turns one unknown span into one id per UTF-8 byte. */
    size_t n_max = 1;
    for (size_t i = 0; i < n_spans; i++) {
        size_t w = spans[i].id == tok->unk_id && tok->byte_fallback ? spans[i].end - spans[i].begin : 1;
        n_max += w;
    }
    int32_t *out = malloc(n_max * sizeof *out);
    if (!out) {
        free(norm.data);
        free(spans);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory encoding text");
    }
    size_t n = 0;
    int prev_unk = 0;
    for (size_t i = 0; i < n_spans; i++) {
        int is_unk = spans[i].id == tok->unk_id;
        if (is_unk && tok->byte_fallback) {
            for (size_t b = spans[i].begin; b < spans[i].end; b++)
                out[n++] = tok->byte_piece_id[(unsigned char)norm.data[b]];
        } else if (!(is_unk && prev_unk)) {
            out[n++] = spans[i].id;
        }
        prev_unk = is_unk;
    }
    free(norm.data);
    free(spans);
    *ids = out;
    *n_ids = n;
    return PLDR_OK;
}

/* ------------------------------------------------------------------ */
/* Decoder                                                             */

/* Emits a run of byte pieces: well-formed UTF-8 as is, each byte of a
 * malformed sequence as U+FFFD. */
static int flush_bytes(strbuf *out, const unsigned char *bytes, size_t n)
{
    size_t off = 0;
    while (off < n) {
        size_t k = utf8_valid_len(bytes + off, n - off);
        if (k == 0) {
            if (!sb_append(out, REPLACEMENT_CHAR, 3))
                return 0;
            off++;
        } else {
            if (!sb_append(out, bytes + off, k))
                return 0;
            off += k;
        }
    }
    return 1;
}

/* Appends a piece with U+2581 turned back into ' '. */
static int append_unescaped(strbuf *out, const char *s, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i + SPACE_SYMBOL_LEN <= n;) {
        if (memcmp(s + i, SPACE_SYMBOL, SPACE_SYMBOL_LEN) != 0) {
            i++;
            continue;
        }
        if (!sb_append(out, s + start, i - start) || !sb_append_byte(out, ' '))
            return 0;
        i += SPACE_SYMBOL_LEN;
        start = i;
    }
    return sb_append(out, s + start, n - start);
}

pldr_status pldr_detokenize(const pldr_tokenizer *tok, const int32_t *ids, size_t n_ids, char **text, size_t *len)
{
    if (!tok || !text || !len || (!ids && n_ids > 0))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_detokenize: NULL argument");
    *text = NULL;
    *len = 0;
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= tok->n_pieces)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "token id %ld is out of range [0, %d)", (long)ids[i],
                             tok->n_pieces);

    strbuf out = {0};
    unsigned char *bytes = malloc(n_ids + 1);
    int ok = bytes && sb_reserve(&out, 16);
    if (ok)
        out.data[0] = '\0';
    size_t n_bytes = 0;
    /* The dummy-prefix space is removed from the first piece that starts
     * with one; with remove_extra_whitespaces from every leading piece. */
    const int strip_leading = tok->norm.add_dummy_prefix || tok->norm.remove_extra_whitespaces;
    int is_bos_ws = 1, bos_ws_seen = 0;
    for (size_t i = 0; i < n_ids && ok; i++) {
        const piece *p = &tok->pieces[tok->canonical_id[ids[i]]];
        if (p->type == PIECE_BYTE) {
            bytes[n_bytes++] = p->byte;
            continue;
        }
        ok = flush_bytes(&out, bytes, n_bytes);
        n_bytes = 0;
        if (bos_ws_seen || out.len > 0)
            is_bos_ws = 0;
        if (p->type == PIECE_CONTROL) {
            bos_ws_seen = 0;
        } else if (p->type == PIECE_UNKNOWN) {
            ok = ok && sb_append(&out, tok->unk_surface, strlen(tok->unk_surface));
            bos_ws_seen = 0;
        } else {
            const char *w = p->text;
            size_t w_len = p->len;
            int consumed = 0;
            if (is_bos_ws && strip_leading && w_len >= SPACE_SYMBOL_LEN &&
                memcmp(w, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0) {
                w += SPACE_SYMBOL_LEN;
                w_len -= SPACE_SYMBOL_LEN;
                consumed = !tok->norm.remove_extra_whitespaces;
            }
            ok = ok && append_unescaped(&out, w, w_len);
            bos_ws_seen = consumed;
        }
    }
    ok = ok && flush_bytes(&out, bytes, n_bytes);
    free(bytes);
    if (!ok) {
        free(out.data);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory decoding %zu tokens", n_ids);
    }
    if (tok->has_denorm) {
        strbuf denormalized = {0};
        pldr_status st = normalize(&tok->denorm, NULL, out.data, out.len, &denormalized);
        free(out.data);
        if (st != PLDR_OK) {
            free(denormalized.data);
            return st;
        }
        out = denormalized;
    }
    *text = out.data;
    *len = out.len;
    return PLDR_OK;
}

/* ------------------------------------------------------------------ */
/* Incremental decoder                                                 */

int pldr_bytes_append(pldr_bytes *b, const void *data, size_t n) { return sb_append(b, data, n); }

void pldr_detok_init(pldr_detok *d, const pldr_tokenizer *tok)
{
    memset(d, 0, sizeof *d);
    d->tok = tok;
    d->is_bos_ws = 1;
}

/* Whether the n bytes at s (no complete character) may still become one. */
static int utf8_may_complete(const unsigned char *s, int n)
{
    const int want = (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (want == 0 || n >= want)
        return 0;
    for (int i = 1; i < n; i++)
        if (!is_trail_byte(s[i]))
            return 0;
    return 1;
}

/* Appends text to out, through the denormalizer if the model has one. */
static pldr_status detok_emit(pldr_detok *d, const char *text, size_t n, pldr_bytes *out)
{
    if (n == 0)
        return PLDR_OK;
    d->total += n;
    if (!d->tok->has_denorm)
        return sb_append(out, text, n) ? PLDR_OK : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory decoding");
    strbuf t = {0};
    pldr_status st = normalize(&d->tok->denorm, NULL, text, n, &t);
    if (st == PLDR_OK && !sb_append(out, t.data, t.len))
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory decoding");
    free(t.data);
    return st;
}

/* Emits the held bytes that are decided: complete characters, and U+FFFD
 * for a byte that cannot begin one; with all, everything (flush_bytes). */
static pldr_status detok_drain(pldr_detok *d, int all, pldr_bytes *out)
{
    pldr_status st = PLDR_OK;
    while (d->n_pend > 0 && st == PLDR_OK) {
        size_t k = utf8_valid_len(d->pend, (size_t)d->n_pend);
        if (k == 0 && !all && utf8_may_complete(d->pend, d->n_pend))
            break;
        if (k == 0) {
            st = detok_emit(d, REPLACEMENT_CHAR, 3, out);
            k = 1;
        } else {
            st = detok_emit(d, (const char *)d->pend, k, out);
        }
        memmove(d->pend, d->pend + k, (size_t)d->n_pend - k);
        d->n_pend -= (int)k;
    }
    return st;
}

pldr_status pldr_detok_push(pldr_detok *d, int32_t id, pldr_bytes *out)
{
    const pldr_tokenizer *tok = d->tok;
    if (id < 0 || id >= tok->n_pieces)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "token id %ld is out of range [0, %d)", (long)id, tok->n_pieces);
    const piece *p = &tok->pieces[tok->canonical_id[id]];
    if (p->type == PIECE_BYTE) {
        d->pend[d->n_pend++] = p->byte;
        return detok_drain(d, 0, out);
    }
    pldr_status st = detok_drain(d, 1, out);
    if (st != PLDR_OK)
        return st;
    /* as in pldr_detokenize */
    const int strip_leading = tok->norm.add_dummy_prefix || tok->norm.remove_extra_whitespaces;
    if (d->bos_ws_seen || d->total > 0)
        d->is_bos_ws = 0;
    if (p->type == PIECE_CONTROL) {
        d->bos_ws_seen = 0;
        return PLDR_OK;
    }
    if (p->type == PIECE_UNKNOWN) {
        d->bos_ws_seen = 0;
        return detok_emit(d, tok->unk_surface, strlen(tok->unk_surface), out);
    }
    const char *w = p->text;
    size_t w_len = p->len;
    int consumed = 0;
    if (d->is_bos_ws && strip_leading && w_len >= SPACE_SYMBOL_LEN && memcmp(w, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0) {
        w += SPACE_SYMBOL_LEN;
        w_len -= SPACE_SYMBOL_LEN;
        consumed = !tok->norm.remove_extra_whitespaces;
    }
    strbuf t = {0};
    if (!append_unescaped(&t, w, w_len)) {
        free(t.data);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory decoding");
    }
    st = detok_emit(d, t.data ? t.data : "", t.len, out);
    free(t.data);
    d->bos_ws_seen = consumed;
    return st;
}

pldr_status pldr_detok_flush(pldr_detok *d, pldr_bytes *out) { return detok_drain(d, 1, out); }
