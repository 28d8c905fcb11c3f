/* Session files: a context's state on disk, so that a run can stop after
 * the prompt (or after some generated tokens) and another run can continue
 * from there without recomputing anything.
 *
 * Layout (all integers little-endian):
 *
 *   offset size
 *    0      8  magic "PLDRSESS"
 *    8      4  format version (1)
 *   12      4  header size in bytes (88)
 *   16      8  pldr_model_fingerprint of the model that made it
 *   24      4  weight dtype (pldr_dtype)
 *   28      4  cache mode (pldr_cache_mode)
 *   32     20  n_layers, d_model, n_heads, head_dim, vocab_size
 *   52      4  n_tokens: tokens the context has processed
 *   56      4  flags: 1 G-cache valid, 2 external G, 4 logits stored
 *   60      4  reserved, 0
 *   64      8  payload size, uncompressed
 *   72      8  payload size, compressed (the rest of the file, exactly)
 *   80      4  CRC32 of the uncompressed payload
 *   84      4  CRC32 of bytes 0..83
 *
 * followed by the zlib stream of the payload:
 *   tokens int32 [n], K float32 [L, n, d], V float32 [L, n, d],
 *   G-cache float32 [L, 3, H, dk, dk], and when flag 4 is set the
 *   next-token logits float32 [V].
 *
 * The payload arrays are written in host byte order, which must be
 * little-endian (every OpenCL host this engine targets is). */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "common/util.h"

#define SESSION_MAGIC "PLDRSESS"
#define SESSION_VERSION 1u
#define HEADER_BYTES 88
#define HEADER_CRC_AT 84

enum { FLAG_G_VALID = 1, FLAG_EXTERNAL_G = 2, FLAG_LOGITS = 4, FLAG_KNOWN = 7 };

/* Everything the header says. */
typedef struct header {
    pldr_session_info info;
    uint32_t flags;
    uint64_t payload_bytes, compressed_bytes;
    uint32_t payload_crc;
} header;

/* ------------------------------------------------------------ encoding */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* crc32 takes a uInt length: feed large buffers in pieces. */
static uint32_t crc_update(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        uInt n = len > (size_t)UINT_MAX ? UINT_MAX : (uInt)len;
        crc = (uint32_t)crc32(crc, p, n);
        p += n;
        len -= n;
    }
    return crc;
}

static const char *mode_name(pldr_cache_mode m)
{
    return m == PLDR_CACHE_NONE ? "none" : m == PLDR_CACHE_KV ? "kv" : m == PLDR_CACHE_KVG ? "kvg" : "?";
}

static void encode_header(const header *h, uint8_t *p)
{
    const pldr_session_info *in = &h->info;
    memset(p, 0, HEADER_BYTES);
    memcpy(p, SESSION_MAGIC, 8);
    put_u32(p + 8, SESSION_VERSION);
    put_u32(p + 12, HEADER_BYTES);
    put_u64(p + 16, in->fingerprint);
    put_u32(p + 24, (uint32_t)in->weight_dtype);
    put_u32(p + 28, (uint32_t)in->cache_mode);
    const int dims[6] = {in->n_layers, in->d_model, in->n_heads, in->head_dim, in->vocab_size, in->n_tokens};
    for (int i = 0; i < 6; i++)
        put_u32(p + 32 + 4 * i, (uint32_t)dims[i]);
    put_u32(p + 56, h->flags);
    put_u64(p + 64, h->payload_bytes);
    put_u64(p + 72, h->compressed_bytes);
    put_u32(p + 80, h->payload_crc);
    put_u32(p + HEADER_CRC_AT, crc_update(0, p, HEADER_CRC_AT));
}

/* Checks the header on its own (no model): magic, CRC, version, ranges. */
static pldr_status decode_header(const uint8_t *p, const char *path, header *h)
{
    memset(h, 0, sizeof *h);
    if (memcmp(p, SESSION_MAGIC, 8) != 0)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: not a pldr session file (bad magic)", path);
    if (get_u32(p + HEADER_CRC_AT) != crc_update(0, p, HEADER_CRC_AT))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: the session header is damaged (CRC mismatch)", path);
    h->info.version = get_u32(p + 8);
    if (h->info.version != SESSION_VERSION)
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: session format version %u; this pldr reads version %u", path,
                         h->info.version, SESSION_VERSION);
    if (get_u32(p + 12) != HEADER_BYTES || get_u32(p + 60) != 0)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: bad session header size or reserved field", path);
    h->info.fingerprint = get_u64(p + 16);
    uint32_t dtype = get_u32(p + 24), mode = get_u32(p + 28);
    int32_t dims[6];
    for (int i = 0; i < 6; i++)
        dims[i] = (int32_t)get_u32(p + 32 + 4 * i);
    h->flags = get_u32(p + 56);
    h->payload_bytes = get_u64(p + 64);
    h->compressed_bytes = get_u64(p + 72);
    h->payload_crc = get_u32(p + 80);
    if (dtype >= PLDR_DTYPE_COUNT || mode > PLDR_CACHE_KVG || (h->flags & ~(uint32_t)FLAG_KNOWN))
        return pldr_fail(PLDR_ERR_FORMAT, "%s: bad dtype, cache mode or flags in the session header", path);
    for (int i = 0; i < 5; i++)
        if (dims[i] <= 0)
            return pldr_fail(PLDR_ERR_FORMAT, "%s: non-positive model dimension in the session header", path);
    if (dims[5] < 0)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: negative token count in the session header", path);
    pldr_session_info *in = &h->info;
    in->weight_dtype = (pldr_dtype)dtype;
    in->cache_mode = (pldr_cache_mode)mode;
    in->n_layers = dims[0];
    in->d_model = dims[1];
    in->n_heads = dims[2];
    in->head_dim = dims[3];
    in->vocab_size = dims[4];
    in->n_tokens = dims[5];
    in->has_logits = (h->flags & FLAG_LOGITS) != 0;
    in->external_g = (h->flags & FLAG_EXTERNAL_G) != 0;
    return PLDR_OK;
}

/* ------------------------------------------------------------ payload */

/* The payload's parts, in file order. */
typedef struct parts {
    size_t tokens, kv, gcache, logits; /* bytes of each; kv is K's (= V's) */
    size_t total;
} parts;

static int payload_parts(const pldr_session_info *in, parts *p)
{
    const size_t L = (size_t)in->n_layers, n = (size_t)in->n_tokens;
    size_t t, hdd;
    memset(p, 0, sizeof *p);
    if (!pldr_mul_size(n, 4, &p->tokens) || !pldr_mul_size(L, n, &t) || !pldr_mul_size(t, (size_t)in->d_model, &t) ||
        !pldr_mul_size(t, 4, &p->kv) || !pldr_mul_size((size_t)in->n_heads, (size_t)in->head_dim, &hdd) ||
        !pldr_mul_size(hdd, (size_t)in->head_dim, &hdd) || !pldr_mul_size(hdd, 3 * L * 4, &p->gcache))
        return 0;
    p->logits = in->has_logits ? (size_t)in->vocab_size * 4 : 0;
    return pldr_add_size(p->tokens, p->kv, &t) && pldr_add_size(t, p->kv, &t) && pldr_add_size(t, p->gcache, &t) &&
           pldr_add_size(t, p->logits, &p->total);
}

/* zlib's stream lengths are uInt: hand over at most UINT_MAX at a time. */
static uInt clamp_uint(size_t n) { return n > (size_t)UINT_MAX ? UINT_MAX : (uInt)n; }

/* Deflates the pieces one after another into out (room: cap bytes). */
static pldr_status deflate_pieces(const void *const *data, const size_t *len, int n, uint8_t *out, size_t cap,
                                  size_t *written, uint32_t *crc, const char *path)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* K and V are float noise to zlib: the fastest level compresses them
     * almost as well as the default and several times faster */
    if (deflateInit(&z, Z_BEST_SPEED) != Z_OK)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot start zlib", path);
    *crc = 0;
    size_t out_used = 0;
    int zr = Z_OK;
    for (int i = 0; i <= n && zr != Z_STREAM_END; i++) {
        const uint8_t *p = i < n ? data[i] : NULL;
        size_t left = i < n ? len[i] : 0;
        if (p)
            *crc = crc_update(*crc, p, left);
        do {
            z.next_in = (Bytef *)p;
            z.avail_in = clamp_uint(left);
            z.next_out = out + out_used;
            z.avail_out = clamp_uint(cap - out_used);
            const uInt in_before = z.avail_in, out_before = z.avail_out;
            zr = deflate(&z, i == n ? Z_FINISH : Z_NO_FLUSH);
            p += in_before - z.avail_in;
            left -= in_before - z.avail_in;
            out_used += out_before - z.avail_out;
            if (zr == Z_STREAM_ERROR || (zr == Z_BUF_ERROR && out_used == cap)) {
                deflateEnd(&z);
                return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: zlib compression failed", path);
            }
        } while (left > 0 || (i == n && zr != Z_STREAM_END));
    }
    deflateEnd(&z);
    *written = out_used;
    return PLDR_OK;
}

/* ------------------------------------------------------------ save */

static void info_of(const pldr_model *m, pldr_context *ctx, const pldr_state *s, int has_logits,
                    pldr_session_info *in)
{
    const pldr_config *cf = pldr_model_config(m);
    memset(in, 0, sizeof *in);
    in->version = SESSION_VERSION;
    in->fingerprint = pldr_model_fingerprint(m);
    in->weight_dtype = pldr_model_weight_dtype(m);
    in->cache_mode = pldr_context_cache_mode(ctx);
    in->n_layers = cf->n_layers;
    in->d_model = cf->d_model;
    in->n_heads = cf->n_heads;
    in->head_dim = cf->head_dim;
    in->vocab_size = cf->vocab_size;
    in->n_tokens = s->n_past;
    in->has_logits = has_logits;
    in->external_g = s->external_g;
}

static pldr_status write_session(const char *path, header *h, const pldr_state *s, const float *logits)
{
    parts p;
    if (!payload_parts(&h->info, &p))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: the session is too large", path);
    z_stream probe;
    memset(&probe, 0, sizeof probe);
    if (deflateInit(&probe, Z_BEST_SPEED) != Z_OK)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot start zlib", path);
    size_t cap = (size_t)deflateBound(&probe, (uLong)p.total);
    deflateEnd(&probe);
    if (cap < p.total) /* deflateBound works in uLong; never trust a wrapped value */
        cap = p.total + p.total / 1000 + 64;
    uint8_t *buf = malloc(HEADER_BYTES + cap);
    if (!buf)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory for %zu bytes", path, HEADER_BYTES + cap);
    const void *data[5] = {s->tokens, s->k, s->v, s->gcache, logits};
    const size_t len[5] = {p.tokens, p.kv, p.kv, p.gcache, p.logits};
    size_t written = 0;
    pldr_status st = deflate_pieces(data, len, logits ? 5 : 4, buf + HEADER_BYTES, cap, &written, &h->payload_crc,
                                    path);
    if (st == PLDR_OK) {
        h->payload_bytes = p.total;
        h->compressed_bytes = written;
        encode_header(h, buf);
        st = pldr_write_file_atomic(path, buf, HEADER_BYTES + written);
    }
    free(buf);
    return st;
}

pldr_status pldr_session_save(pldr_context *ctx, const pldr_model *model, const char *path, const float *last_logits)
{
    pldr_clear_error();
    if (!ctx || !model || !path)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_session_save: NULL argument");
    if (!host_is_little_endian())
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: session files need a little-endian host", path);
    pldr_state s;
    pldr_status st = pldr_context_get_state(ctx, &s);
    if (st != PLDR_OK)
        return pldr_fail_prefix(st, "%s", path);
    header h;
    memset(&h, 0, sizeof h);
    const int has_logits = last_logits != NULL && s.n_past > 0;
    info_of(model, ctx, &s, has_logits, &h.info);
    h.flags = (s.g_valid ? FLAG_G_VALID : 0) | (s.external_g ? FLAG_EXTERNAL_G : 0) | (has_logits ? FLAG_LOGITS : 0);
    st = write_session(path, &h, &s, has_logits ? last_logits : NULL);
    pldr_state_free(&s);
    return st;
}

/* ------------------------------------------------------------ load */

/* Opens path and reads and checks its header; *f stays open on success. */
static pldr_status open_session(const char *path, FILE **f, header *h, uint64_t *file_size)
{
    pldr_status st = pldr_fopen_regular(path, f, file_size);
    if (st != PLDR_OK)
        return st;
    uint8_t raw[HEADER_BYTES];
    if (*file_size < HEADER_BYTES || fread(raw, 1, HEADER_BYTES, *f) != HEADER_BYTES)
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: truncated: %llu bytes, shorter than a session header", path,
                       (unsigned long long)*file_size);
    else
        st = decode_header(raw, path, h);
    if (st != PLDR_OK) {
        fclose(*f);
        *f = NULL;
    }
    return st;
}

pldr_status pldr_session_read_info(const char *path, pldr_session_info *info)
{
    pldr_clear_error();
    FILE *f;
    header h;
    uint64_t size;
    pldr_status st = open_session(path, &f, &h, &size);
    if (st != PLDR_OK)
        return st;
    fclose(f);
    *info = h.info;
    return PLDR_OK;
}

/* Whether the session fits this model and context. */
static pldr_status check_fit(const header *h, const pldr_model *m, pldr_context *ctx, const char *path)
{
    const pldr_session_info *in = &h->info;
    const pldr_config *cf = pldr_model_config(m);
    if (in->n_layers != cf->n_layers || in->d_model != cf->d_model || in->n_heads != cf->n_heads ||
        in->head_dim != cf->head_dim || in->vocab_size != cf->vocab_size)
        return pldr_fail(PLDR_ERR_MISMATCH,
                         "%s: the session is from another model: L=%d d=%d H=%d dk=%d V=%d, this model has "
                         "L=%d d=%d H=%d dk=%d V=%d",
                         path, in->n_layers, in->d_model, in->n_heads, in->head_dim, in->vocab_size, cf->n_layers,
                         cf->d_model, cf->n_heads, cf->head_dim, cf->vocab_size);
    if (in->fingerprint != pldr_model_fingerprint(m))
        return pldr_fail(PLDR_ERR_MISMATCH,
                         "%s: the session is from another model (fingerprint %016llx, this model %016llx)", path,
                         (unsigned long long)in->fingerprint, (unsigned long long)pldr_model_fingerprint(m));
    if (in->weight_dtype != pldr_model_weight_dtype(m))
        return pldr_fail(PLDR_ERR_MISMATCH, "%s: the session was made with %s weights, the model is loaded with %s (--dtype)",
                         path, pldr_dtype_name(in->weight_dtype), pldr_dtype_name(pldr_model_weight_dtype(m)));
    if (in->cache_mode != pldr_context_cache_mode(ctx))
        return pldr_fail(PLDR_ERR_MISMATCH, "%s: the session was made with cache mode %s, the context uses %s (--cache)",
                         path, mode_name(in->cache_mode), mode_name(pldr_context_cache_mode(ctx)));
    if (in->n_tokens > pldr_context_n_ctx(ctx))
        return pldr_fail(PLDR_ERR_CONTEXT_FULL, "%s: the session holds %d tokens, more than the context of %d (--ctx)",
                         path, in->n_tokens, pldr_context_n_ctx(ctx));
    parts p;
    if (!payload_parts(in, &p) || h->payload_bytes != (uint64_t)p.total)
        return pldr_fail(PLDR_ERR_FORMAT, "%s: the header's payload size %llu does not match its dims", path,
                         (unsigned long long)h->payload_bytes);
    return PLDR_OK;
}

/* Inflates exactly h->compressed_bytes from f into out (h->payload_bytes)
 * and checks that the stream ends there with the right CRC. */
static pldr_status inflate_payload(FILE *f, const header *h, uint8_t *out, const char *path)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit(&z) != Z_OK)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot start zlib", path);
    uint8_t in[16384];
    uint8_t spill; /* output past the expected size lands here and is an error */
    uint64_t left = h->compressed_bytes;
    const size_t want = (size_t)h->payload_bytes;
    size_t produced = 0;
    pldr_status st = PLDR_OK;
    int zr = Z_OK;
    while (st == PLDR_OK && zr != Z_STREAM_END) {
        if (z.avail_in == 0 && left > 0) {
            size_t n = fread(in, 1, left < sizeof in ? (size_t)left : sizeof in, f);
            if (n == 0) {
                st = pldr_fail(PLDR_ERR_IO, "%s: read failed", path);
                break;
            }
            left -= n;
            z.next_in = in;
            z.avail_in = (uInt)n;
        }
        const int past_end = produced == want;
        z.next_out = past_end ? &spill : out + produced;
        z.avail_out = past_end ? 1 : clamp_uint(want - produced);
        const uInt in_before = z.avail_in, out_before = z.avail_out;
        zr = inflate(&z, Z_NO_FLUSH);
        const uInt got = out_before - z.avail_out;
        if (past_end && got > 0)
            st = pldr_fail(PLDR_ERR_FORMAT, "%s: the payload is longer than its header says (damaged)", path);
        else if (zr == Z_DATA_ERROR || zr == Z_NEED_DICT || zr == Z_STREAM_ERROR)
            st = pldr_fail(PLDR_ERR_FORMAT, "%s: the compressed payload is damaged (zlib: %s)", path,
                           z.msg ? z.msg : "data error");
        else if (zr == Z_MEM_ERROR)
            st = pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory in zlib", path);
        else if (zr != Z_STREAM_END && got == 0 && z.avail_in == in_before && (z.avail_in > 0 || left == 0))
            st = pldr_fail(PLDR_ERR_FORMAT, "%s: the compressed payload ends early (truncated or damaged)", path);
        if (!past_end)
            produced += got;
    }
    if (st == PLDR_OK && produced != want)
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: the payload is shorter than its header says (damaged)", path);
    if (st == PLDR_OK && (left != 0 || z.avail_in != 0))
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: data after the end of the compressed payload (damaged)", path);
    if (st == PLDR_OK && crc_update(0, out, want) != h->payload_crc)
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: the payload is damaged (CRC mismatch)", path);
    inflateEnd(&z);
    return st;
}

/* Points a state at the parts of an inflated payload (no copies). */
static void state_view(const header *h, uint8_t *payload, pldr_state *s)
{
    parts p;
    payload_parts(&h->info, &p);
    memset(s, 0, sizeof *s);
    s->n_past = h->info.n_tokens;
    s->g_valid = (h->flags & FLAG_G_VALID) != 0;
    s->external_g = (h->flags & FLAG_EXTERNAL_G) != 0;
    s->tokens = (int32_t *)payload;
    s->k = (float *)(payload + p.tokens);
    s->v = (float *)(payload + p.tokens + p.kv);
    s->gcache = (float *)(payload + p.tokens + 2 * p.kv);
}

/* The stored next-token logits and G-cache must be finite: sampling from
 * NaN logits would print text as if nothing were wrong. */
static pldr_status check_finite(const header *h, const pldr_state *s, const char *path)
{
    parts p;
    payload_parts(&h->info, &p);
    const float *g = s->gcache, *logits = s->gcache + p.gcache / 4;
    for (size_t i = 0; s->g_valid && i < p.gcache / 4; i++)
        if (!isfinite(g[i]))
            return pldr_fail(PLDR_ERR_FORMAT, "%s: the stored G-cache has a non-finite value at %zu (damaged)", path, i);
    for (size_t i = 0; i < p.logits / 4; i++)
        if (!isfinite(logits[i]))
            return pldr_fail(PLDR_ERR_FORMAT, "%s: the stored next-token logits have a non-finite value at token id %zu "
                                              "(damaged)", path, i);
    return PLDR_OK;
}

/* Copies what the caller gets back (tokens, logits) out of the payload. */
static pldr_status fill_out(const header *h, const pldr_state *s, pldr_session *out, const char *path)
{
    parts p;
    payload_parts(&h->info, &p);
    memset(out, 0, sizeof *out);
    out->info = h->info;
    out->tokens = malloc(p.tokens ? p.tokens : 1);
    out->logits = p.logits ? malloc(p.logits) : NULL;
    if (!out->tokens || (p.logits && !out->logits)) {
        pldr_session_clear(out);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory", path);
    }
    memcpy(out->tokens, s->tokens, p.tokens);
    if (p.logits)
        memcpy(out->logits, s->gcache + p.gcache / 4, p.logits);
    return PLDR_OK;
}

pldr_status pldr_session_load(pldr_context *ctx, const pldr_model *model, const char *path, pldr_session *out)
{
    pldr_clear_error();
    if (out)
        memset(out, 0, sizeof *out);
    if (!ctx || !model || !path)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "pldr_session_load: NULL argument");
    if (!host_is_little_endian())
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "%s: session files need a little-endian host", path);
    FILE *f;
    header h;
    uint64_t size;
    pldr_status st = open_session(path, &f, &h, &size);
    if (st != PLDR_OK)
        return st;
    uint8_t *payload = NULL;
    if ((st = check_fit(&h, model, ctx, path)) != PLDR_OK)
        goto done;
    if (size - HEADER_BYTES != h.compressed_bytes) {
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: %s: the file is %llu bytes, its header says %llu", path,
                       size - HEADER_BYTES < h.compressed_bytes ? "truncated" : "trailing bytes",
                       (unsigned long long)size, (unsigned long long)(h.compressed_bytes + HEADER_BYTES));
        goto done;
    }
    /* deflate shrinks at most about 1032:1: a larger claim is damage, and
     * must not make a small file allocate gigabytes */
    if (h.payload_bytes / 1032 > h.compressed_bytes + 64) {
        st = pldr_fail(PLDR_ERR_FORMAT, "%s: the header's payload of %llu bytes cannot come from %llu compressed bytes "
                                        "(damaged)", path, (unsigned long long)h.payload_bytes,
                       (unsigned long long)h.compressed_bytes);
        goto done;
    }
    if (!(payload = malloc(h.payload_bytes ? (size_t)h.payload_bytes : 1))) {
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: out of memory for %llu bytes", path,
                       (unsigned long long)h.payload_bytes);
        goto done;
    }
    if ((st = inflate_payload(f, &h, payload, path)) != PLDR_OK)
        goto done;
    pldr_state s;
    state_view(&h, payload, &s);
    if ((st = check_finite(&h, &s, path)) != PLDR_OK)
        goto done;
    if ((st = pldr_context_set_state(ctx, &s)) != PLDR_OK) {
        st = pldr_fail_prefix(st, "%s", path);
        goto done;
    }
    if (out)
        st = fill_out(&h, &s, out, path);
done:
    free(payload);
    fclose(f);
    return st;
}

void pldr_session_clear(pldr_session *s)
{
    if (!s)
        return;
    free(s->tokens);
    free(s->logits);
    memset(s, 0, sizeof *s);
}
