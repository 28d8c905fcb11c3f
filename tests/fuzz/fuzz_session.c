/* libFuzzer target: reading a session file (pldr_session_read_info, then
 * pldr_session_load) from arbitrary bytes.
 *
 * The input goes into a memfd opened again through /proc/self/fd. The model
 * is a stub whose dimensions, fingerprint and dtype are taken from the
 * input's own header (so that the payload is reached rather than
 * refused as another model's), and the context is a stub: the state the
 * reader hands it must hold what the header promised, every byte of it
 * readable (the sanitizers check that), with finite logits. */
#define _GNU_SOURCE /* memfd_create */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pldr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define N_CTX 4096

struct pldr_context {
    pldr_cache_mode mode;
};
struct pldr_model {
    pldr_config cfg;
    uint64_t fingerprint;
    pldr_dtype wtype;
};

static const pldr_model *cur_model;

const pldr_config *pldr_model_config(const pldr_model *m) { return &m->cfg; }
uint64_t pldr_model_fingerprint(const pldr_model *m) { return m->fingerprint; }
pldr_dtype pldr_model_weight_dtype(const pldr_model *m) { return m->wtype; }

pldr_cache_mode pldr_context_cache_mode(const pldr_context *c) { return c->mode; }
int pldr_context_n_ctx(const pldr_context *c) { return c ? N_CTX : 0; }
pldr_status pldr_context_get_state(pldr_context *c, pldr_state *s)
{
    (void)c;
    memset(s, 0, sizeof *s);
    return PLDR_ERR_UNSUPPORTED;
}
void pldr_state_free(pldr_state *s) { (void)s; }

pldr_status pldr_context_set_state(pldr_context *c, const pldr_state *s)
{
    const pldr_config *cf = &cur_model->cfg;
    if (s->n_past < 0 || s->n_past > N_CTX)
        abort();
    const size_t n = (size_t)s->n_past, L = (size_t)cf->n_layers, d = (size_t)cf->d_model;
    volatile float sink = 0;
    for (size_t i = 0; i < n; i++)
        sink += (float)s->tokens[i];
    if (n > 0) { /* the first and last float of K and V */
        sink += s->k[0] + s->k[L * n * d - 1];
        sink += s->v[0] + s->v[L * n * d - 1];
    }
    (void)sink;
    return PLDR_OK;
}

static uint32_t u32(const uint8_t *p) { return (uint32_t)p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static int mem_fd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (mem_fd < 0 && (mem_fd = memfd_create("session", MFD_CLOEXEC)) < 0)
        abort();
    if (ftruncate(mem_fd, 0) != 0 || (size && pwrite(mem_fd, data, size, 0) != (ssize_t)size))
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", mem_fd);

    pldr_session_info info;
    if (pldr_session_read_info(path, &info) != PLDR_OK)
        return 0;
    if (size < 88 || info.n_layers <= 0 || info.d_model <= 0 || info.n_heads <= 0 || info.head_dim <= 0 ||
        info.vocab_size <= 0 || info.n_tokens < 0)
        abort(); /* a header that reads must hold sane dimensions */
    /* a model of the header's own shape, kept small enough to allocate */
    static pldr_model m;
    memset(&m, 0, sizeof m);
    m.cfg.n_layers = (int)u32(data + 32);
    m.cfg.d_model = (int)u32(data + 36);
    m.cfg.n_heads = (int)u32(data + 40);
    m.cfg.head_dim = (int)u32(data + 44);
    m.cfg.vocab_size = (int)u32(data + 48);
    m.fingerprint = info.fingerprint;
    m.wtype = info.weight_dtype;
    cur_model = &m;
    pldr_context ctx = {info.cache_mode};
    pldr_session s;
    if (pldr_session_load(&ctx, &m, path, &s) == PLDR_OK) {
        if (s.info.n_tokens != info.n_tokens || (s.info.has_logits && !s.logits))
            abort();
        for (int i = 0; s.logits && i < s.info.vocab_size; i++)
            if (!isfinite(s.logits[i]))
                abort(); /* non-finite logits must be refused */
        pldr_session_clear(&s);
    }
    return 0;
}
