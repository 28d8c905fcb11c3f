/* Loading a checkpoint onto the device: config, tensor checks, kernel build,
 * weight upload. The safetensors files are memory-mapped and unmapped once the
 * weights are on the device, so the host keeps no copy of the model. On a
 * device that shares the host's memory, tensors that need no conversion are
 * not copied at all: their buffers read the mapping in place, which then
 * stays open until the model is freed. */
#include "config.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <clblast_c.h>
#include <zlib.h>

#include "formats/checkpoint.h"
#include "model/model.h"
#include "model/quantize.h"
#include "formats/safetensors.h"
#include "formats/tuning_file.h"
#include "common/env.h"
#include "common/util.h"

/* Models holding an OpenCL context (see pldr_model_free). */
static atomic_int live_contexts;

pldr_model_params pldr_model_default_params(void)
{
    pldr_model_params p;
    memset(&p, 0, sizeof p);
    p.weight_dtype = PLDR_DTYPE_F32;
    /* the environment's defaults (src/common/env.c) */
    p.kernel_dir = pldr_env_kernel_dir();
    p.zero_copy = pldr_env_zero_copy();
    p.wg_overrides = pldr_env_work_groups();
    p.gemm = pldr_env_gemm();
    p.tuning = !pldr_tuning_disabled();
    p.build_log = pldr_env_build_log();
    p.kernel_limits = pldr_env_kernel_limits();
    return p;
}

const pldr_config *pldr_model_config(const pldr_model *m) { return &m->cfg; }
const pldr_device_info *pldr_model_device(const pldr_model *m) { return &m->ocl.info; }
uint64_t pldr_model_n_params(const pldr_model *m) { return m->n_params; }
uint64_t pldr_model_device_bytes(const pldr_model *m) { return m->device_bytes; }
int pldr_model_decode_tuned(const pldr_model *m) { return m->wg_tuned; }
double pldr_model_build_seconds(const pldr_model *m) { return m ? m->build_s : 0.0; }
int pldr_model_kernels_compiled(const pldr_model *m) { return m ? m->compiled : 0; }
uint64_t pldr_model_zero_copy_bytes(const pldr_model *m) { return m->zero_copy_bytes; }
const char *pldr_model_kernel_options(const pldr_model *m) { return m->kernel_options; }
const char *pldr_model_kernel_notes(const pldr_model *m) { return m->kernel_notes; }
pldr_dtype pldr_model_weight_dtype(const pldr_model *m) { return m->wtype; }
double pldr_model_quantize_seconds(const pldr_model *m) { return m->quantize_s; }

double pldr_dtype_weight_bytes(pldr_dtype t, int scale_bytes)
{
    switch (t) {
    case PLDR_DTYPE_F16:
    case PLDR_DTYPE_BF16:
        return 2.0;
    case PLDR_DTYPE_Q8_0:
        return (32.0 + scale_bytes) / 32.0;
    case PLDR_DTYPE_Q4_0:
        return (16.0 + scale_bytes) / 32.0;
    default:
        return 4.0;
    }
}

static int dtype_quantized(pldr_dtype t)
{
    return t == PLDR_DTYPE_Q8_0 || t == PLDR_DTYPE_Q4_0;
}
uint64_t pldr_model_fingerprint(const pldr_model *m) { return m->fingerprint; }

pldr_status pldr_buffer(pldr_model *m, size_t bytes, const char *what, cl_mem *out, uint64_t *counter)
{
    *out = NULL;
    if (bytes == 0)
        bytes = 4;
    if (bytes > m->ocl.info.max_alloc_bytes)
        return pldr_fail(PLDR_ERR_DEVICE_MEMORY,
                         "%s needs %zu bytes in one buffer, more than the %llu bytes %s allows in one "
                         "allocation (try a smaller --ctx, or --dtype f16)",
                         what, bytes, (unsigned long long)m->ocl.info.max_alloc_bytes, m->ocl.info.name);
    if (!m->index64 && bytes > INT_MAX)
        return pldr_fail(PLDR_ERR_DEVICE_MEMORY,
                         "%s needs %zu bytes in one buffer, but %s has no 64-bit integers in kernels (an "
                         "embedded profile without cles_khr_int64), so its kernels index at most %d bytes (try a "
                         "smaller --ctx, fewer sequences, or --dtype f16)",
                         what, bytes, m->ocl.info.name, INT_MAX);
    cl_int err;
    *out = clCreateBuffer(m->ocl.context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (!*out) {
        char msg[256];
        snprintf(msg, sizeof msg, "allocating %s (%zu bytes)", what, bytes);
        return pldr_cl_fail(&m->ocl, err, msg);
    }
    if (counter)
        *counter += bytes;
    return PLDR_OK;
}

/* ------------------------------------------------------------------ upload */

typedef struct loader {
    pldr_model *m;
    const st_archive *ar;
    float *staging;    /* float32 of the largest tensor */
    uint16_t *hstage;  /* its half conversion */
    unsigned char *qstage; /* a matrix in BF16, Q8_0 or Q4_0 (quants, then scales) */
    size_t qstage_bytes;
    float *past_g;     /* decoder.past_G_values as float32 (predefined G only) */
    uLong *crc;              /* per tensor of ar: crc32 of its bytes, for the fingerprint */
    unsigned char *summed;   /* per tensor: crc is computed */
    unsigned char *in_place; /* per file of ar: a buffer reads its mapping */
    /* the alignment a tensor's address needs for its buffer to read it in
     * place (map_tensor), 0 where every weight is copied: align for buffers
     * only the engine's kernels read, blas_align for those CLBlast reads */
    size_t align, blas_align;
    uint64_t done, total;
    pldr_progress_fn progress;
    void *progress_user;
} loader;

/* crc32 of tensor t's bytes, computed once, where the loader reads the tensor
 * anyway, so that the file is read once. */
static void checksum(loader *ld, const st_tensor *t)
{
    const size_t i = (size_t)(t - ld->ar->tensors);
    if (ld->summed[i])
        return;
    uLong crc = crc32(0L, Z_NULL, 0);
    for (uint64_t o = 0; o < t->nbytes; o += 1u << 30) {
        uint64_t len = t->nbytes - o < (1u << 30) ? t->nbytes - o : (1u << 30);
        crc = crc32(crc, t->data + o, (uInt)len);
    }
    ld->crc[i] = crc;
    ld->summed[i] = 1;
}

/* Looks tensor `fmt` up and converts it to float32 in ld->staging. */
static const st_tensor *fetch_f32(loader *ld, pldr_status *st, const char *fmt, va_list ap)
{
    char name[256];
    vsnprintf(name, sizeof name, fmt, ap);
    const st_tensor *t = st_find(ld->ar, name);
    if (!t) {
        *st = pldr_fail(PLDR_ERR_FORMAT, "tensor %s is missing", name);
        return NULL;
    }
    checksum(ld, t);
    *st = st_to_f32(t, ld->staging);
    return *st == PLDR_OK ? t : NULL;
}

/* In a function whose last named parameter is fmt: looks up the tensor named
 * by fmt and the variable arguments into ld->staging as t, or returns the
 * failure. */
#define FETCH_OR_RETURN(ld, fmt, t)                                                                \
    const st_tensor *t;                                                                            \
    do {                                                                                           \
        va_list ap_;                                                                               \
        pldr_status st_;                                                                           \
        va_start(ap_, fmt);                                                                        \
        t = fetch_f32((ld), &st_, (fmt), ap_);                                                     \
        va_end(ap_);                                                                               \
        if (!t)                                                                                    \
            return st_;                                                                            \
    } while (0)

/* The staging copy of t in the storage type: float32, or half when half is set. */
static const void *stored(loader *ld, const st_tensor *t, int half, size_t *esz)
{
    *esz = half ? 2 : 4;
    if (!half)
        return ld->staging;
    for (uint64_t i = 0; i < t->n_elements; i++)
        ld->hstage[i] = pldr_float_to_half(ld->staging[i]);
    return ld->hstage;
}

static void progressed(loader *ld, const st_tensor *t)
{
    ld->done += t->nbytes;
    if (ld->progress)
        ld->progress("uploading weights", ld->done, ld->total, ld->progress_user);
}

static pldr_status uploaded(loader *ld, const st_tensor *t, cl_int err)
{
    if (err != CL_SUCCESS) {
        char msg[320];
        snprintf(msg, sizeof msg, "uploading %s", t->name);
        return pldr_cl_fail(&ld->m->ocl, err, msg);
    }
    st_release_pages(ld->ar, t);
    progressed(ld, t);
    return PLDR_OK;
}

/* Writes tensor `name` (printf format) into buf at element offset off, as
 * half when half is set, else float32. */
static PLDR_PRINTF(5, 6) pldr_status put(loader *ld, cl_mem buf, size_t off, int half, const char *fmt, ...)
{
    FETCH_OR_RETURN(ld, fmt, t);
    size_t esz;
    const void *src = stored(ld, t, half, &esz);
    return uploaded(ld, t, clEnqueueWriteBuffer(ld->m->ocl.queue, buf, CL_TRUE, off * esz,
                                                (size_t)t->n_elements * esz, src, 0, NULL, NULL));
}

/* Writes 2-D tensor `name` [R, C] (R rows of a matrix of w->pitch columns
 * starting at row row_off) into w in w's dtype: as float32 or half directly,
 * else converted here row by row, each row padded with zeros to the pitch
 * (the quantized blocks of a row's end see those zeros). */
static PLDR_PRINTF(4, 5) pldr_status put_w(loader *ld, pldr_weight *w, size_t row_off, const char *fmt, ...)
{
    FETCH_OR_RETURN(ld, fmt, t);
    const size_t rows = (size_t)t->shape[0], cols = t->ndim == 2 ? (size_t)t->shape[1] : 1;
    const size_t pitch = (size_t)w->pitch;
    if (w->type == PLDR_DTYPE_F32 || w->type == PLDR_DTYPE_F16) {
        size_t esz;
        const void *src = stored(ld, t, w->type == PLDR_DTYPE_F16, &esz);
        const size_t buf_origin[3] = {0, row_off, 0}, host_origin[3] = {0, 0, 0};
        const size_t region[3] = {cols * esz, rows, 1};
        return uploaded(ld, t, clEnqueueWriteBufferRect(ld->m->ocl.queue, w->data, CL_TRUE, buf_origin, host_origin,
                                                        region, pitch * esz, 0, cols * esz, 0, src, 0, NULL, NULL));
    }
    const double t0 = pldr_now();
    const int q = dtype_quantized(w->type);
    const size_t row_bytes = pldr_row_bytes(w->type, pitch);
    const size_t nb = pitch / PLDR_QBLOCK; /* scales per row */
    /* quants, then half scales, then (float scales) the same as floats */
    const size_t s16 = (rows * row_bytes + 3) / 4 * 4, s32 = (s16 + rows * nb * 2 + 3) / 4 * 4;
    const int sb = pldr_scale_bytes(ld->m);
    const size_t need = q ? s32 + (sb == 4 ? rows * nb * 4 : 0) : rows * row_bytes;
    if (need > ld->qstage_bytes) {
        free(ld->qstage);
        if (!(ld->qstage = malloc(need))) {
            ld->qstage_bytes = 0;
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of host memory converting %s", t->name);
        }
        ld->qstage_bytes = need;
    }
    unsigned char *data = ld->qstage;
    uint16_t *scales = (uint16_t *)(void *)(data + s16);
    if (pldr_convert_rows(w->type, ld->staging, rows, cols, pitch, data, scales) != 0)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of host memory converting %s", t->name);
    const void *sdata = scales;
    if (q && sb == 4) {
        float *f = (float *)(void *)(data + s32);
        for (size_t i = 0; i < rows * nb; i++)
            f[i] = pldr_half_to_float(scales[i]);
        sdata = f;
    }
    ld->m->quantize_s += pldr_now() - t0;
    cl_int err = clEnqueueWriteBuffer(ld->m->ocl.queue, w->data, CL_TRUE, row_off * row_bytes, rows * row_bytes, data,
                                      0, NULL, NULL);
    if (err == CL_SUCCESS && q)
        err = clEnqueueWriteBuffer(ld->m->ocl.queue, w->scales, CL_TRUE, row_off * nb * sb, rows * nb * sb, sdata, 0,
                                   NULL, NULL);
    return uploaded(ld, t, err);
}

/* Writes 2-D tensor `name` [R, C] transposed: element (r, c) goes to
 * buf[base + c * stride + r], as float32. */
static PLDR_PRINTF(5, 6) pldr_status put_transposed(loader *ld, cl_mem buf, size_t base, size_t stride,
                                                     const char *fmt, ...)
{
    FETCH_OR_RETURN(ld, fmt, t);
    const size_t R = (size_t)t->shape[0], C = (size_t)t->shape[1];
    float *tr = malloc(R * C * sizeof *tr);
    if (!tr)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory transposing %s", t->name);
    for (size_t r = 0; r < R; r++)
        for (size_t c = 0; c < C; c++)
            tr[c * R + r] = ld->staging[r * C + c];
    const size_t buf_origin[3] = {base * 4, 0, 0}, host_origin[3] = {0, 0, 0};
    const size_t region[3] = {R * 4, C, 1};
    cl_int err = clEnqueueWriteBufferRect(ld->m->ocl.queue, buf, CL_TRUE, buf_origin, host_origin, region,
                                          stride * 4, 0, R * 4, 0, tr, 0, NULL, NULL);
    free(tr);
    return uploaded(ld, t, err);
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        pldr_status st_ = (x);                                                                     \
        if (st_ != PLDR_OK)                                                                        \
            return st_;                                                                            \
    } while (0)

static pldr_status alloc_f32(pldr_model *m, cl_mem *b, size_t n, const char *what)
{
    return pldr_buffer(m, n * 4, what, b, &m->device_bytes);
}

/* A weight matrix of `rows` rows of `pitch` elements in the model's weight
 * dtype, zeroed so that the padding of every row reads as 0. */
static pldr_status alloc_w(pldr_model *m, pldr_weight *w, size_t rows, size_t pitch, const char *what)
{
    const size_t n = rows * pitch;
    w->type = m->wtype;
    w->rows = (int)rows;
    w->pitch = (int)pitch;
    if (n > m->max_matrix_elems)
        m->max_matrix_elems = n;
    const size_t bytes = rows * pldr_row_bytes(m->wtype, pitch);
    TRY(pldr_buffer(m, bytes, what, &w->data, &m->device_bytes));
    const cl_uchar zero = 0;
    cl_int err = clEnqueueFillBuffer(m->ocl.queue, w->data, &zero, 1, 0, bytes, 0, NULL, NULL);
    if (err == CL_SUCCESS && dtype_quantized(m->wtype)) {
        const size_t sbytes = n / PLDR_QBLOCK * (size_t)pldr_scale_bytes(m);
        TRY(pldr_buffer(m, sbytes, what, &w->scales, &m->device_bytes));
        err = clEnqueueFillBuffer(m->ocl.queue, w->scales, &zero, 1, 0, sbytes, 0, NULL, NULL);
    }
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&m->ocl, err, "clearing a weight buffer");
}

/* Makes *b a read-only buffer over tensor t's bytes in the file mapping
 * instead of a copy (CL_MEM_USE_HOST_PTR), where the loader allows it (align
 * non-zero), t is stored as float32 and is exactly the `n` elements the
 * buffer holds, and t's address is a multiple of align. Its pages then stay
 * mapped for the model's life. Returns 0 where this does not apply or the
 * driver refuses the buffer: the caller copies then. */
static int map_tensor(loader *ld, const st_tensor *t, size_t n, size_t align, cl_mem *b)
{
    pldr_model *m = ld->m;
    if (!align || !t || t->dtype != ST_F32 || t->n_elements != n || t->nbytes == 0 ||
        t->nbytes > m->ocl.info.max_alloc_bytes || (!m->index64 && t->nbytes > INT_MAX) ||
        (uintptr_t)t->data % align != 0)
        return 0;
    cl_int err;
    cl_mem buf = clCreateBuffer(m->ocl.context, CL_MEM_READ_ONLY | CL_MEM_USE_HOST_PTR, (size_t)t->nbytes,
                                (void *)(uintptr_t)t->data, &err);
    if (!buf)
        return 0;
    checksum(ld, t);
    *b = buf;
    m->device_bytes += t->nbytes;
    m->zero_copy_bytes += t->nbytes;
    ld->in_place[t->file] = 1;
    progressed(ld, t);
    return 1;
}

/* A float32 buffer of n elements holding tensor `name` alone: in place where
 * map_tensor allows, else a copy. */
static PLDR_PRINTF(5, 6) pldr_status load_vector(loader *ld, cl_mem *b, size_t n, const char *what,
                                                  const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (map_tensor(ld, st_find(ld->ar, name), n, ld->align, b))
        return PLDR_OK;
    TRY(alloc_f32(ld->m, b, n, what));
    return put(ld, *b, 0, 0, "%s", name);
}

/* A weight matrix of `rows` rows of `pitch` elements holding tensor `name`
 * alone: in place where its rows need no padding and map_tensor allows (at
 * alignment `align`), else a copy in the weight dtype. */
static PLDR_PRINTF(7, 8) pldr_status load_matrix(loader *ld, pldr_weight *w, size_t rows, size_t pitch, size_t align,
                                                  const char *what, const char *fmt, ...)
{
    pldr_model *m = ld->m;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const st_tensor *t = st_find(ld->ar, name);
    const int unpadded = t && t->ndim == 2 && (uint64_t)t->shape[1] == pitch;
    if (unpadded && m->wtype == PLDR_DTYPE_F32 && map_tensor(ld, t, rows * pitch, align, &w->data)) {
        w->type = PLDR_DTYPE_F32;
        w->rows = (int)rows;
        w->pitch = (int)pitch;
        if (rows * pitch > m->max_matrix_elems)
            m->max_matrix_elems = rows * pitch;
        return PLDR_OK;
    }
    TRY(alloc_w(m, w, rows, pitch, what));
    if (unpadded && m->wtype == PLDR_DTYPE_F32)
        return put(ld, w->data, 0, 0, "%s", name);
    return put_w(ld, w, 0, "%s", name);
}

static pldr_status load_layer(loader *ld, int l)
{
    pldr_model *m = ld->m;
    const pldr_config *c = &m->cfg;
    pldr_layer *ly = &m->layers[l];
    const size_t d = (size_t)c->d_model, F = (size_t)c->d_ff, dk = (size_t)c->head_dim;
    const size_t H = (size_t)c->n_heads, Fa = (size_t)c->a_dff;
    const size_t RD = (size_t)c->n_reslayer_a * (size_t)c->n_dense_a;
    const char *p = "decoder.dec_layers";

    const size_t dp = (size_t)m->d_pitch, fp = (size_t)m->f_pitch;
    TRY(alloc_w(m, &ly->wqkv, 3 * d, dp, "the Q/K/V projection weights"));
    TRY(alloc_f32(m, &ly->bqkv, 3 * d, "the Q/K/V projection biases"));
    const char *qkv[3] = {"wq", "wk", "wv"};
    for (int i = 0; i < 3; i++) {
        TRY(put_w(ld, &ly->wqkv, i * d, "%s.%d.mha1.%s.weight", p, l, qkv[i]));
        TRY(put(ld, ly->bqkv, i * d, 0, "%s.%d.mha1.%s.bias", p, l, qkv[i]));
    }
    TRY(load_matrix(ld, &ly->wo, d, dp, ld->blas_align, "the attention output weights", "%s.%d.mha1.dense.weight",
                    p, l));
    TRY(load_vector(ld, &ly->bo, d, "the attention output bias", "%s.%d.mha1.dense.bias", p, l));

    cl_mem *lns[4] = {&ly->ln1_w, &ly->ln1_b, &ly->ln2_w, &ly->ln2_b};
    const char *lnn[4] = {"layernorm1.weight", "layernorm1.bias", "layernorm2.weight", "layernorm2.bias"};
    for (int i = 0; i < 4; i++)
        TRY(load_vector(ld, lns[i], d, "a layer norm", "%s.%d.%s", p, l, lnn[i]));

    TRY(alloc_w(m, &ly->w12, 2 * F, dp, "the feed-forward input weights"));
    TRY(alloc_f32(m, &ly->b12, 2 * F, "the feed-forward input biases"));
    TRY(put_w(ld, &ly->w12, 0, "%s.%d.ffn.gluw1.weight", p, l));
    TRY(put_w(ld, &ly->w12, F, "%s.%d.ffn.gluw2.weight", p, l));
    TRY(put(ld, ly->b12, 0, 0, "%s.%d.ffn.gluw1.bias", p, l));
    TRY(put(ld, ly->b12, F, 0, "%s.%d.ffn.gluw2.bias", p, l));
    TRY(load_matrix(ld, &ly->w3, d, fp, ld->blas_align, "the feed-forward output weights", "%s.%d.ffn.gluw3.weight",
                    p, l));
    TRY(load_vector(ld, &ly->b3, d, "the feed-forward output bias", "%s.%d.ffn.gluw3.bias", p, l));

    if (c->g_type != PLDR_G_LEARNED) {
        TRY(alloc_f32(m, &ly->past_g, 3 * H * dk * dk, "the predefined G_LM"));
        /* decoder.past_G_values is [L, 3, 1, H, dk, dk]: layer l is one slab
         * of the float32 copy made once by load_weights */
        size_t slab = 3 * H * dk * dk;
        cl_int err = clEnqueueWriteBuffer(m->ocl.queue, ly->past_g, CL_TRUE, 0, slab * 4,
                                          ld->past_g + (size_t)l * slab, 0, NULL, NULL);
        if (err != CL_SUCCESS)
            return pldr_cl_fail(&m->ocl, err, "uploading decoder.past_G_values");
        return PLDR_OK;
    }

    TRY(load_vector(ld, &ly->a_ln_w, dk, "the metric learner", "%s.%d.mha1.layernorm1.weight", p, l));
    TRY(load_vector(ld, &ly->a_ln_b, dk, "the metric learner", "%s.%d.mha1.layernorm1.bias", p, l));
    /* 16 floats of padding after the transposed learner weights: the CPU
     * learner reads 16-wide vectors that may run past a row's last column
     * (kernels/plga.cl, metric_learner_cpu) */
    TRY(alloc_f32(m, &ly->ml_w12, RD * 2 * Fa * dk + 16, "the metric learner"));
    TRY(alloc_f32(m, &ly->ml_b12, RD * 2 * Fa, "the metric learner"));
    TRY(alloc_f32(m, &ly->ml_w3, RD * dk * Fa + 16, "the metric learner"));
    const cl_float zero = 0.0f;
    cl_int zerr = clEnqueueFillBuffer(m->ocl.queue, ly->ml_w12, &zero, sizeof zero, RD * 2 * Fa * dk * 4, 64, 0, NULL,
                                      NULL);
    zerr |= clEnqueueFillBuffer(m->ocl.queue, ly->ml_w3, &zero, sizeof zero, RD * dk * Fa * 4, 64, 0, NULL, NULL);
    if (zerr != CL_SUCCESS)
        return pldr_cl_fail(&m->ocl, zerr, "clearing the metric learner's padding");
    TRY(alloc_f32(m, &ly->ml_b3, RD * dk, "the metric learner"));
    TRY(alloc_f32(m, &ly->ml_ln_w, (size_t)c->n_reslayer_a * dk, "the metric learner"));
    TRY(alloc_f32(m, &ly->ml_ln_b, (size_t)c->n_reslayer_a * dk, "the metric learner"));
    const char *ra = "mha1.reslayerAs";
    for (int r = 0; r < c->n_reslayer_a; r++) {
        for (int k = 0; k < c->n_dense_a; k++) {
            size_t u = (size_t)r * (size_t)c->n_dense_a + (size_t)k;
            /* stored transposed, [dk, 2*Fa] (gluw1 columns, then gluw2) and
             * [Fa, dk], so that work-items computing neighbouring outputs
             * read neighbouring weights */
            TRY(put_transposed(ld, ly->ml_w12, u * 2 * Fa * dk, 2 * Fa, "%s.%d.%s.%d.denseAs.%d.gluw1.weight", p, l, ra, r, k));
            TRY(put_transposed(ld, ly->ml_w12, u * 2 * Fa * dk + Fa, 2 * Fa, "%s.%d.%s.%d.denseAs.%d.gluw2.weight", p, l, ra, r, k));
            TRY(put(ld, ly->ml_b12, u * 2 * Fa, 0, "%s.%d.%s.%d.denseAs.%d.gluw1.bias", p, l, ra, r, k));
            TRY(put(ld, ly->ml_b12, (u * 2 + 1) * Fa, 0, "%s.%d.%s.%d.denseAs.%d.gluw2.bias", p, l, ra, r, k));
            TRY(put_transposed(ld, ly->ml_w3, u * dk * Fa, dk, "%s.%d.%s.%d.denseAs.%d.gluw3.weight", p, l, ra, r, k));
            TRY(put(ld, ly->ml_b3, u * dk, 0, "%s.%d.%s.%d.denseAs.%d.gluw3.bias", p, l, ra, r, k));
        }
        TRY(put(ld, ly->ml_ln_w, (size_t)r * dk, 0, "%s.%d.%s.%d.layernormA.weight", p, l, ra, r));
        TRY(put(ld, ly->ml_ln_b, (size_t)r * dk, 0, "%s.%d.%s.%d.layernormA.bias", p, l, ra, r));
    }
    TRY(alloc_f32(m, &ly->plga, 5 * H * dk * dk, "the PLGA parameters"));
    const char *pl[5] = {"Wlst", "blst", "pwlst", "alst", "balst"};
    for (int i = 0; i < 5; i++)
        TRY(put(ld, ly->plga, (size_t)i * H * dk * dk, 0, "%s.%d.mha1.plgatt_layer.%s", p, l, pl[i]));
    return PLDR_OK;
}

static pldr_status put_host_matrix_f32(pldr_model *m, cl_mem b, const float *host, size_t n)
{
    cl_int err = clEnqueueWriteBuffer(m->ocl.queue, b, CL_TRUE, 0, n * 4, host, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&m->ocl, err, "uploading the head");
}

/* w (n rows) as the identity, exactly in every weight dtype: float32, half
 * and bfloat16 hold 1 and 0 as they are; quantized rows are blocks of scale 1
 * holding 1 at the diagonal (Q8_0: q = 1; Q4_0: q - 8 = 1) and 0 elsewhere. */
static pldr_status put_identity(pldr_model *m, pldr_weight *w, size_t n)
{
    const size_t pitch = (size_t)w->pitch, elems = n * pitch;
    const int q = dtype_quantized(w->type);
    const size_t bytes = n * pldr_row_bytes(w->type, pitch);
    const size_t sbytes = q ? elems / PLDR_QBLOCK * (size_t)pldr_scale_bytes(m) : 0;
    unsigned char *data = calloc(bytes + sbytes + 1, 1);
    if (!data)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    if (w->type == PLDR_DTYPE_Q4_0)
        memset(data, 0x88, bytes); /* q = 8: zero */
    for (size_t i = 0; i < n; i++) {
        const size_t e = i * pitch + i;
        const float one = 1.0f;
        switch (w->type) {
        case PLDR_DTYPE_F32: memcpy(data + 4 * e, &one, 4); break;
        case PLDR_DTYPE_F16: memcpy(data + 2 * e, &(uint16_t){pldr_float_to_half(1.0f)}, 2); break;
        case PLDR_DTYPE_BF16: memcpy(data + 2 * e, &(uint16_t){pldr_float_to_bf16(1.0f)}, 2); break;
        case PLDR_DTYPE_Q8_0: data[e] = 1; break;
        default: { /* Q4_0: the nibble of weight e in its block (kernels/common.cl) */
            unsigned char *byte = data + e / PLDR_QBLOCK * 16 + e % 16;
            *byte = (e % PLDR_QBLOCK) < 16 ? (unsigned char)((*byte & 0xf0) | 9) : (unsigned char)((*byte & 0x0f) | 0x90);
        }
        }
    }
    const uint16_t one16 = pldr_float_to_half(1.0f);
    const float one32 = 1.0f;
    for (size_t b = 0; b < sbytes; b += (size_t)pldr_scale_bytes(m))
        memcpy(data + bytes + b, m->scale_f32 ? (const void *)&one32 : (const void *)&one16, (size_t)pldr_scale_bytes(m));
    cl_int err = clEnqueueWriteBuffer(m->ocl.queue, w->data, CL_TRUE, 0, bytes, data, 0, NULL, NULL);
    if (err == CL_SUCCESS && q)
        err = clEnqueueWriteBuffer(m->ocl.queue, w->scales, CL_TRUE, 0, sbytes, data + bytes, 0, NULL, NULL);
    free(data);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&m->ocl, err, "uploading the head");
}

/* The class's head becomes the engine's output layer wf, bf [n_outputs, d]:
 * final_layer, score (sequence classification has no bias: zeros), qa_outputs,
 * and for PldrllmModel the identity, whose product is the hidden state itself
 * (x * 1 + 0 exactly, in every weight dtype: put_identity). */
static pldr_status load_head(loader *ld)
{
    pldr_model *m = ld->m;
    const pldr_config *c = &m->cfg;
    const size_t n = (size_t)c->n_outputs, pitch = (size_t)m->d_pitch;
    static const char *const names[] = {
        [PLDR_ARCH_CAUSAL_LM] = "final_layer",
        [PLDR_ARCH_TOKEN_CLASSIFICATION] = "score",
        [PLDR_ARCH_SEQUENCE_CLASSIFICATION] = "score",
        [PLDR_ARCH_QUESTION_ANSWERING] = "qa_outputs",
    };
    if (c->arch != PLDR_ARCH_MODEL)
        TRY(load_matrix(ld, &m->wf, n, pitch, ld->blas_align, "the output layer", "%s.weight", names[c->arch]));
    if (c->arch != PLDR_ARCH_MODEL && c->arch != PLDR_ARCH_SEQUENCE_CLASSIFICATION)
        return load_vector(ld, &m->bf, n, "the output layer bias", "%s.bias", names[c->arch]);
    float *host = calloc(n, sizeof *host);
    if (!host)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    pldr_status st = alloc_f32(m, &m->bf, n, "the output layer bias");
    if (st == PLDR_OK)
        st = put_host_matrix_f32(m, m->bf, host, n);
    free(host);
    if (st == PLDR_OK && c->arch == PLDR_ARCH_MODEL) {
        st = alloc_w(m, &m->wf, n, pitch, "the identity output layer");
        if (st == PLDR_OK)
            st = put_identity(m, &m->wf, n);
    }
    return st;
}

static pldr_status load_weights(loader *ld)
{
    pldr_model *m = ld->m;
    const pldr_config *c = &m->cfg;
    const size_t d = (size_t)c->d_model, V = (size_t)c->vocab_size;
    TRY(load_matrix(ld, &m->emb, V, (size_t)m->emb_pitch, ld->align, "the token embedding",
                    "decoder.embedding.weight"));
    TRY(load_vector(ld, &m->ln0_w, d, "the embedding layer norm", "decoder.layernorm1.weight"));
    TRY(load_vector(ld, &m->ln0_b, d, "the embedding layer norm", "decoder.layernorm1.bias"));
    if (c->g_type != PLDR_G_LEARNED) {
        const st_tensor *t = st_find(ld->ar, "decoder.past_G_values");
        if (!t)
            return pldr_fail(PLDR_ERR_FORMAT, "tensor decoder.past_G_values is missing");
        if (!(ld->past_g = malloc((size_t)t->n_elements * sizeof(float))))
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for decoder.past_G_values");
        checksum(ld, t);
        TRY(st_to_f32(t, ld->past_g));
        st_release_pages(ld->ar, t);
    }
    for (int l = 0; l < c->n_layers; l++)
        TRY(load_layer(ld, l));
    return load_head(ld);
}

static cl_int kernel_wg_limit(const pldr_model *m, cl_kernel k, const char *name, size_t *kwg);

/* The constants of each decode product that has a LayerNorm folded in
 * (kernels/gemv.cl, ln_fold_consts), from the weights as stored. */
static pldr_status fold_one(pldr_model *m, cl_kernel k, const pldr_weight *w, cl_mem bias, size_t rows, cl_mem ln_w,
                            cl_mem ln_b, cl_mem *sc)
{
    TRY(alloc_f32(m, sc, 3 * rows + 2 * (size_t)m->cfg.d_model, "the folded layer-norm constants"));
    const cl_int pitch = m->d_pitch, n = (cl_int)rows;
    const cl_mem ws = pldr_scales(w);
    cl_int err = clSetKernelArg(k, 0, sizeof w->data, &w->data);
    err |= clSetKernelArg(k, 1, sizeof ws, &ws);
    err |= clSetKernelArg(k, 2, sizeof bias, &bias);
    err |= clSetKernelArg(k, 3, sizeof pitch, &pitch);
    err |= clSetKernelArg(k, 4, sizeof n, &n);
    err |= clSetKernelArg(k, 5, sizeof ln_w, &ln_w);
    err |= clSetKernelArg(k, 6, sizeof ln_b, &ln_b);
    err |= clSetKernelArg(k, 7, sizeof *sc, sc);
    size_t local = 64, kwg = 0;
    if (kernel_wg_limit(m, k, "ln_fold_consts", &kwg) == CL_SUCCESS && kwg > 0 && kwg < local)
        local = kwg;
    const size_t global = (rows + local - 1) / local * local;
    if (err == CL_SUCCESS)
        err = clEnqueueNDRangeKernel(m->ocl.queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&m->ocl, err, "folding a layer norm into its product");
}

static pldr_status fold_layer_norms(pldr_model *m)
{
    const pldr_config *c = &m->cfg;
    cl_int err;
    cl_kernel k = clCreateKernel(m->program, "ln_fold_consts", &err);
    if (!k)
        return pldr_cl_fail(&m->ocl, err, "creating kernel ln_fold_consts");
    const size_t d = (size_t)c->d_model, F = (size_t)c->d_ff;
    pldr_status st = PLDR_OK;
    for (int l = 0; l < c->n_layers && st == PLDR_OK; l++) {
        pldr_layer *ly = &m->layers[l];
        /* Q/K/V read the previous layer's output norm (the embedding's for layer 0) */
        cl_mem ln_w = l ? m->layers[l - 1].ln2_w : m->ln0_w, ln_b = l ? m->layers[l - 1].ln2_b : m->ln0_b;
        st = fold_one(m, k, &ly->wqkv, ly->bqkv, 3 * d, ln_w, ln_b, &ly->qkv_sc);
        if (st == PLDR_OK)
            st = fold_one(m, k, &ly->w12, ly->b12, 2 * F, ly->ln1_w, ly->ln1_b, &ly->up_sc);
    }
    const pldr_layer *last = &m->layers[c->n_layers - 1];
    if (st == PLDR_OK)
        st = fold_one(m, k, &m->wf, m->bf, (size_t)c->n_outputs, last->ln2_w, last->ln2_b, &m->wf_sc);
    if (st == PLDR_OK && (err = clFinish(m->ocl.queue)) != CL_SUCCESS)
        st = pldr_cl_fail(&m->ocl, err, "folding the layer norms");
    clReleaseKernel(k);
    return st;
}

/* ------------------------------------------------------------------ model */

static int pow2_at_most(size_t limit, int want)
{
    int v = want;
    while (v > 1 && (size_t)v > limit)
        v /= 2;
    return v;
}

/* Local memory of one metric-learner work-group (kernels/plga.cl): ml_rows
 * rows of A, of the current GLU input and of hidden units (padded to a
 * multiple of 4), the LayerNorm partial sums, and a scratch area shared by
 * the input splits' and the gluw3 slices' partial sums. */
static uint64_t learner_local_bytes(const pldr_model *m)
{
    const uint64_t rows = (uint64_t)m->ml_rows, dk = (uint64_t)m->cfg.head_dim, fa = (uint64_t)m->cfg.a_dff;
    const uint64_t p1 = m->ml_ks > 1 ? (uint64_t)m->ml_ks * rows * 2 * fa : 1;
    const uint64_t p2 = m->ml_s > 1 ? (uint64_t)m->ml_s * rows * dk : 1;
    return 4 * (rows * (2 * dk + (fa + 3) / 4 * 4 + 2 * (dk < 8 ? dk : 8)) + (p1 > p2 ? p1 : p2));
}

/* Work-group shape items "key=value,..." (PLDR_WG's syntax, e.g.
 * "row=256,att=64,ml=64,gemv=256,rows=8,wrows=2") over m's current shapes: a
 * key is matched whole ("row" is not "rows"); an item that is not understood
 * or out of the range the kernels can run is named in a warning that says
 * where it came from, and ignored. The caps of pf, mlkc and mlrows bound
 * per-work-item arrays (kernels/gemv.cl wa/wb, kernels/plga.cl wg/wu and o):
 * a larger value makes the kernels fail or crash the device's compiler. */
static void apply_wg_items(pldr_model *m, const char *items, const char *source, size_t lim)
{
    const long wg = lim < 65536 ? (long)lim : 65536; /* the device's largest work-group */
    const struct {
        const char *key;
        int *val;
        int is_switch; /* 0 or 1, rather than a power of two */
        long hi;       /* largest value */
    } keys[] = {{"row", &m->row_wg, 0, wg},      {"att", &m->att_wg, 0, wg},         {"ml", &m->ml_wg, 0, wg},
                {"gemv", &m->gemv_wg, 0, wg},    {"rows", &m->gemv_rows, 0, wg},     {"mlrows", &m->ml_rows, 0, 64},
                {"pf", &m->gemv_pf, 0, 16},      {"wrows", &m->gemv_wrows, 0, wg},   {"mlrg", &m->ml_rg, 0, 64},
                {"mlks", &m->ml_ks, 0, wg},      {"mls", &m->ml_s, 0, wg},           {"mlkc", &m->ml_kc, 0, 64},
                {"attpre", &m->att_preload, 1, 1}, {"gpu", &m->wg_forms, 1, 1}, {"fscale", &m->scale_f32, 1, 1}};
    char range[64];
    for (const char *p = items; *p;) {
        const size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        const char *why = eq ? "unknown key" : "not key=value";
        for (size_t i = 0; eq && i < sizeof keys / sizeof keys[0]; i++) {
            if ((size_t)(eq - p) != strlen(keys[i].key) || strncmp(p, keys[i].key, (size_t)(eq - p)) != 0)
                continue;
            char *end;
            errno = 0;
            const long v = strtol(eq + 1, &end, 10);
            if (end == eq + 1 || end != p + len || errno)
                why = "the value is not an integer";
            else if (keys[i].is_switch && v != 0 && v != 1)
                why = "the value must be 0 or 1";
            else if (!keys[i].is_switch && (v < 1 || v > keys[i].hi)) {
                snprintf(range, sizeof range, "the value must be in [1, %ld] on this device", keys[i].hi);
                why = range;
            } else {
                why = NULL;
                *keys[i].val = keys[i].is_switch ? (int)v : pow2_at_most(lim, (int)v);
            }
            break;
        }
        if (why && len > 0)
            pldr_log(PLDR_LOG_WARN, "ignoring %s item '%.*s' (%s)", source, (int)len, p, why);
        p += len + (p[len] == ',');
    }
}

/* The largest work-group of one dimension the device takes:
 * CL_DEVICE_MAX_WORK_GROUP_SIZE bounded by CL_DEVICE_MAX_WORK_ITEM_SIZES[0]. */
static size_t device_wg_limit(const pldr_ocl *ocl)
{
    size_t lim = ocl->info.max_work_group_size ? ocl->info.max_work_group_size : 64;
    size_t items[3] = {0, 0, 0};
    if (clGetDeviceInfo(ocl->device, CL_DEVICE_MAX_WORK_ITEM_SIZES, sizeof items, items, NULL) == CL_SUCCESS &&
        items[0] > 0 && items[0] < lim)
        lim = items[0];
    return lim;
}

/* The value of item KEY in m->kernel_limits (see pldr_model.kernel_limits),
 * or -1 where it has none; an item that is not KEY=N with N >= 0 is ignored
 * (check_limit_items warns of it). */
static int64_t limit_item(const pldr_model *m, const char *key)
{
    const size_t klen = strlen(key);
    for (const char *p = m->kernel_limits; *p;) {
        const size_t len = strcspn(p, ",");
        if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=' && p[klen + 1] >= '0' && p[klen + 1] <= '9') {
            char *end;
            errno = 0;
            const unsigned long long v = strtoull(p + klen + 1, &end, 10);
            if (end == p + len && !errno && v <= INT64_MAX)
                return (int64_t)v;
        }
        p += len + (p[len] == ',');
    }
    return -1;
}

/* The device's local memory, or less under PLDR_KERNEL_LIMITS' "local". */
static uint64_t local_mem_limit(const pldr_model *m)
{
    const int64_t cap = limit_item(m, "local");
    const uint64_t dev = m->ocl.info.local_mem_bytes;
    return cap > 0 && (uint64_t)cap < dev ? (uint64_t)cap : dev;
}

/* Kernel k's CL_KERNEL_WORK_GROUP_SIZE, or less under PLDR_KERNEL_LIMITS
 * ("NAME=N", "*=N"). */
static cl_int kernel_wg_limit(const pldr_model *m, cl_kernel k, const char *name, size_t *kwg)
{
    const cl_int err = clGetKernelWorkGroupInfo(k, m->ocl.device, CL_KERNEL_WORK_GROUP_SIZE, sizeof *kwg, kwg, NULL);
    int64_t cap = limit_item(m, name);
    if (cap < 1)
        cap = limit_item(m, "*");
    if (err == CL_SUCCESS && cap > 0 && (*kwg == 0 || (uint64_t)*kwg > (uint64_t)cap))
        *kwg = (size_t)cap;
    return err;
}

/* Warns of each PLDR_KERNEL_LIMITS item that is not NAME=N with N >= 1
 * (int64: 0 or 1). */
static void check_limit_items(const pldr_model *m)
{
    for (const char *p = m->kernel_limits; *p;) {
        const size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        char *end = NULL;
        errno = 0;
        const unsigned long long v = eq && eq > p ? strtoull(eq + 1, &end, 10) : 0;
        const int int64 = eq && eq - p == 5 && strncmp(p, "int64", 5) == 0;
        if (len && (!eq || eq == p || end == eq + 1 || end != p + len || errno || (int64 ? v > 1 : v < 1)))
            pldr_log(PLDR_LOG_WARN, "ignoring PLDR_KERNEL_LIMITS item '%.*s' (%s)", (int)len, p,
                     int64 ? "int64 takes 0 or 1" : "not NAME=N with N >= 1");
        p += len + (p[len] == ',');
    }
}

static void settle_shapes(pldr_model *m);

/* Whether m's device is a CPU (its OpenCL device type). */
static int device_is_cpu(const pldr_model *m) { return strcmp(m->ocl.info.type, "CPU") == 0; }

static void choose_work_groups(pldr_model *m, const pldr_model_params *params)
{
    const pldr_device_info *d = &m->ocl.info;
    int cpu = device_is_cpu(m);
    const size_t lim = device_wg_limit(&m->ocl);
    m->row_wg = pow2_at_most(lim, cpu ? 64 : 256);
    m->att_wg = pow2_at_most(lim, 64);
    /* measured: on PoCL the registers held across barriers cost more than the
     * loads they hide (2-core PoCL: 220 vs 176 us per layer) */
    m->att_preload = !cpu;
    /* gemm (PLDR_GEMM) clblast or own: CLBlast is the default except on CPUs */
    const char *ge = params->gemm;
    m->own_gemm = ge && strcmp(ge, "own") == 0 ? 1 : ge && strcmp(ge, "clblast") == 0 ? 0 : cpu;
    if (ge && *ge && strcmp(ge, "own") != 0 && strcmp(ge, "clblast") != 0)
        pldr_log(PLDR_LOG_WARN, "ignoring PLDR_GEMM=%s (use clblast or own)", ge);
    /* on CPUs the metric tensor, the metric learner and the prefill attention
     * run as one work-item per piece of work, without barriers (the *_cpu
     * kernels); PLDR_WG's gpu=1 forces the work-group forms */
    m->wg_forms = !cpu;
    /* float scales where half is converted in software (PoCL: a dozen
     * scalar instructions a block); PLDR_WG's fscale switch overrides */
    m->scale_f32 = cpu;
    m->ml_wg = pow2_at_most(lim, cpu ? 64 : 512);
    /* measured: on a GPU 4 rows (two work-groups per compute unit at the 110M
     * shape), on a CPU 16 (each weight read serves more rows) */
    m->ml_rows = cpu ? 16 : 4;
    m->gemv_wg = pow2_at_most(lim, cpu ? 64 : 256);
    /* on a CPU a work-item walks a whole row (no reduction); on a GPU 32
     * work-items share a row so that neighbours read neighbouring weights */
    m->gemv_rows = cpu ? m->gemv_wg : 8;
    m->gemv_pf = 1;
    m->gemv_wrows = 0; /* from gemv_rows below, unless PLDR_WG sets it */
    m->ml_rg = 1;
    m->ml_ks = m->ml_s = 0; /* from ml_wg below, unless PLDR_WG sets them */
    m->ml_kc = 16;
    /* then the shapes `pldr tune` chose for this device and model (src/tune/tune_decode.c),
     * then PLDR_WG; or only the caller's items */
    if (params->work_groups) {
        apply_wg_items(m, params->work_groups, "work_groups", lim);
    } else {
        char tuned[PLDR_WG_ITEMS_MAX];
        if (params->tuning &&
            pldr_decode_tuning_lookup(&m->ocl.info, params->cache_dir, &m->cfg, m->wtype, tuned, sizeof tuned) &&
            *tuned) {
            apply_wg_items(m, tuned, "the decode tuning file", lim);
            m->wg_tuned = 1;
        }
        if (params->wg_overrides)
            apply_wg_items(m, params->wg_overrides, "PLDR_WG", lim);
    }
    const char *limits = params->kernel_limits;
    if (limits && strlen(limits) >= sizeof m->kernel_limits)
        pldr_log(PLDR_LOG_WARN, "ignoring PLDR_KERNEL_LIMITS (longer than %zu characters)",
                 sizeof m->kernel_limits - 1);
    else if (limits)
        snprintf(m->kernel_limits, sizeof m->kernel_limits, "%s", limits);
    m->index64 = d->int64 && limit_item(m, "int64") != 0;
    settle_shapes(m);
}

/* The shapes that follow from the others (after choose_work_groups, and
 * again after fit_kernels lowers one). */
static void settle_shapes(pldr_model *m)
{
    while (m->gemv_rows > 1 && m->gemv_rows > m->gemv_wg)
        m->gemv_rows /= 2;
    /* the products without a LayerNorm (attention output, FFN output) on
     * multi-lane layouts (gemv_wide): a quarter of the rows per work-group,
     * four times the lanes per row */
    if (!m->gemv_wrows)
        m->gemv_wrows = m->gemv_rows >= 4 ? m->gemv_rows / 4 : 1;
    while (m->gemv_wrows > 1 && m->gemv_wrows > m->gemv_wg)
        m->gemv_wrows /= 2;
    /* rows with several lanes: at least two per work-group (the two halves of
     * a GLU row, kernels/gemv.cl) */
    if (m->gemv_rows == 1 && m->gemv_wg > 1)
        m->gemv_rows = 2;
    /* the metric learner (kernels/plga.cl): ml_rg groups of rows and ml_ks
     * splits of the inputs share the gluw1/gluw2 phase, one work-item per
     * hidden unit, group and split; ml_s slices of the hidden units share the
     * gluw3 phase, one work-item per output and slice */
    const int dk = m->cfg.head_dim, fa = m->cfg.a_dff;
    if (!m->ml_ks)
        m->ml_ks = m->ml_wg / (fa * m->ml_rg);
    if (!m->ml_s)
        m->ml_s = m->ml_wg / dk;
    m->ml_ks = m->ml_ks < 1 ? 1 : m->ml_ks > dk ? dk : m->ml_ks;
    m->ml_s = m->ml_s < 1 ? 1 : m->ml_s > fa ? fa : m->ml_s;
    while (m->ml_rows > 1 && learner_local_bytes(m) + 4096 > local_mem_limit(m))
        m->ml_rows /= 2;
    m->ml_rg = m->ml_rg < 1 ? 1 : m->ml_rg > m->ml_rows ? m->ml_rows : m->ml_rg;
}

/* Builds the kernels with the model's dimensions and m's shapes as -D
 * defines. Only the forms this device runs are compiled (WG_FORMS: the
 * work-group forms of the prefill's metric tensor, metric learner, attention
 * and PLGA, else their one-work-item CPU forms; OWN_GEMM: gemm_cpu), so that
 * a kernel one compiler rejects cannot fail a device that never runs it. */
static pldr_status build_program(pldr_model *m, const pldr_model_params *params)
{
    const pldr_config *c = &m->cfg;
    char *options = m->kernel_options;
    snprintf(options, sizeof m->kernel_options,
             "-cl-std=CL1.2%s -DDMODEL=%d -DDK=%d -DHEADS=%d -DDFF=%d -DFA=%d -DNUM_RES=%d -DNUM_DENSE=%d "
             "-DLN_EPS=%.9gf -DREFERENCE_ROPE=%d -DWEIGHT_TYPE=%d -DEMB_PITCH=%d -DROW_WG=%d -DATT_WG=%d -DML_WG=%d "
             "-DGEMV_WG=%d -DGEMV_ROWS=%d -DML_ROWS=%d -DGEMV_PF=%d -DGEMV_WROWS=%d -DML_RG=%d -DML_KS=%d -DML_S=%d -DML_KC=%d "
             "-DATT_PRELOAD=%d -DLC_ROWS=%d -DGM_ROWS=%d -DGM_COLS=%d -DWG_FORMS=%d -DOWN_GEMM=%d -DINDEX64=%d -DSCALE_F32=%d -DCPU_PREFETCH=%d -DGM_LOCAL=%d",
             m->ocl.build_log ? "" : " -w", c->d_model, c->head_dim, c->n_heads, c->d_ff, c->a_dff, c->n_reslayer_a, c->n_dense_a,
             c->layer_norm_eps, c->reference_rope ? 1 : 0, (int)m->wtype, m->emb_pitch, m->row_wg, m->att_wg,
             m->ml_wg, m->gemv_wg, m->gemv_rows, m->ml_rows, m->gemv_pf, m->gemv_wrows, m->ml_rg, m->ml_ks, m->ml_s, m->ml_kc, m->att_preload,
             PLDR_LEARNER_CPU_ROWS, PLDR_GEMM_CPU_ROWS, PLDR_GEMM_CPU_COLS, m->wg_forms, m->own_gemm, m->index64, m->scale_f32, device_is_cpu(m),
             (int)(local_mem_limit(m) / 2 < 131072 ? local_mem_limit(m) / 2 : 131072));
    int compiled = 0;
    const pldr_status st = pldr_ocl_build(&m->ocl, options, params->kernel_dir, params->cache_dir, params->progress,
                                          params->progress_user, &m->program, &compiled);
    m->compiled |= compiled;
    return st;
}

/* Appends a line to m->kernel_notes (pldr_model_kernel_notes). */
static PLDR_PRINTF(2, 3) void kernel_note(pldr_model *m, const char *fmt, ...)
{
    const size_t used = strlen(m->kernel_notes);
    if (used + 2 >= sizeof m->kernel_notes)
        return;
    if (used)
        m->kernel_notes[used] = '\n';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->kernel_notes + used + (used ? 1 : 0), sizeof m->kernel_notes - used - 1, fmt, ap);
    va_end(ap);
}

/* Checks every kernel launched with a fixed work-group size against its own
 * limits once built: CL_KERNEL_WORK_GROUP_SIZE (which may be below the
 * device's maximum, e.g. for a kernel that needs many registers) and
 * CL_KERNEL_LOCAL_MEM_SIZE plus the local memory the engine passes as
 * arguments, against CL_DEVICE_LOCAL_MEM_SIZE; the batched decode's kernels
 * (kernels/batch.cl) as the single-sequence ones. A shape that does not fit
 * is lowered (to the kernel's limit for the work-group size; halved for local
 * memory) and the program rebuilt, since the shapes are baked in as
 * reqd_work_group_size; each change is noted (pldr_model_kernel_notes).
 * Kernels share shapes (GEMV_WG: gemv and batch_gemv), so a round checks
 * every kernel, lowers what does not fit and rebuilds once, until all fit.
 * PLDR_KERNEL_LIMITS lowers the limits, to test this on any device. */
static pldr_status fit_kernels(pldr_model *m, const pldr_model_params *params)
{
    const size_t dev_local = (size_t)local_mem_limit(m);
    const size_t d_pitch = (size_t)m->d_pitch, pitch = (size_t)(m->d_pitch > m->f_pitch ? m->d_pitch : m->f_pitch);
    check_limit_items(m);
    for (int round = 0;; round++) {
        const int lanes = m->gemv_rows < m->gemv_wg;
        /* name, its work-group size (a shape), the shape that lowers its local memory, local memory passed as
         * arguments (kernels/gemv.cl: x in gemv, and in gemv_ln and gemv_embed on the one-lane form), whether
         * the engine launches it (batch_gemv: not where the engine's GEMM does the batched products) */
        struct {
            const char *name;
            int *wg, *mem;
            size_t arg_local;
            int used;
        } ks[] = {
            {"embed_tokens", &m->row_wg, &m->row_wg, 0, 1},
            {"bias_residual_layernorm", &m->row_wg, &m->row_wg, 0, 1},
            {"argmax", &m->row_wg, &m->row_wg, 0, 1},
            {"attention_decode", &m->att_wg, &m->att_wg, 0, 1},
            {"attention_combine", &m->att_wg, &m->att_wg, 0, 1},
            {"attention_prefill", &m->att_wg, &m->att_wg, 0, m->wg_forms},
            {"metric_learner", &m->ml_wg, m->ml_rows > 1 ? &m->ml_rows : &m->ml_wg, 0, m->wg_forms},
            {"gemv", &m->gemv_wg, &m->gemv_wg, pitch * 4, 1},
            {"gemv_ln", &m->gemv_wg, &m->gemv_wg, lanes ? 4 : d_pitch * 4, 1},
            {"gemv_embed", &m->gemv_wg, &m->gemv_wg, lanes ? 4 : d_pitch * 4, 1},
            {"gemv_wide", &m->gemv_wg, &m->gemv_wg, 0, 1},
            {"argmax_parts", &m->gemv_wg, &m->gemv_wg, 0, 1},
            {"batch_gemv", &m->gemv_wg, &m->gemv_wg, 0, !m->own_gemm},
            {"batch_attention", &m->att_wg, &m->att_wg, 0, 1},
            {"batch_argmax", &m->row_wg, &m->row_wg, 0, 1},
        };
        enum { NK = sizeof ks / sizeof ks[0] };
        int *halved[NK]; /* the shapes lowered this round (halved for local memory at most once) */
        int n_halved = 0, changed = 0;
        for (size_t i = 0; i < NK; i++) {
            if (!ks[i].used)
                continue;
            cl_int err;
            cl_kernel k = clCreateKernel(m->program, ks[i].name, &err);
            if (!k) {
                char msg[128];
                snprintf(msg, sizeof msg, "creating kernel %s", ks[i].name);
                return pldr_cl_fail(&m->ocl, err, msg);
            }
            size_t kwg = 0;
            cl_ulong klocal = 0;
            err = kernel_wg_limit(m, k, ks[i].name, &kwg);
            if (err == CL_SUCCESS)
                err = clGetKernelWorkGroupInfo(k, m->ocl.device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof klocal, &klocal,
                                               NULL);
            clReleaseKernel(k);
            if (err != CL_SUCCESS)
                return pldr_cl_fail(&m->ocl, err, "querying a kernel's work-group limits");
            const uint64_t need = (uint64_t)klocal + ks[i].arg_local;
            int done = 0;
            for (int j = 0; j < n_halved; j++)
                done |= halved[j] == ks[i].mem;
            if (kwg > 0 && (size_t)*ks[i].wg > kwg) {
                const int was = *ks[i].wg;
                *ks[i].wg = pow2_at_most(kwg, was);
                kernel_note(m, "%s: work-group of %d, more than its CL_KERNEL_WORK_GROUP_SIZE %zu; rebuilt with %d",
                            ks[i].name, was, kwg, *ks[i].wg);
                halved[n_halved++] = ks[i].wg; /* its local memory is checked again once rebuilt */
                changed = 1;
            } else if (need > dev_local && !done) {
                if (*ks[i].mem <= 1)
                    return pldr_fail(PLDR_ERR_KERNEL_BUILD,
                                     "kernel %s needs %llu bytes of local memory even at its smallest work-group "
                                     "shape, more than the %zu bytes %s has",
                                     ks[i].name, (unsigned long long)need, dev_local, m->ocl.info.name);
                const int was = *ks[i].mem;
                *ks[i].mem = was / 2;
                halved[n_halved++] = ks[i].mem;
                kernel_note(m, "%s: %llu bytes of local memory, more than the device's %zu; rebuilt with %s %d "
                               "instead of %d",
                            ks[i].name, (unsigned long long)need, dev_local,
                            ks[i].mem == &m->ml_rows ? "metric-learner rows" : "a work-group of", *ks[i].mem, was);
                changed = 1;
            }
        }
        if (!changed)
            return PLDR_OK;
        if (round == 16)
            return pldr_fail(PLDR_ERR_KERNEL_BUILD, "no work-group shapes fit the kernels' limits on %s: %s",
                             m->ocl.info.name, m->kernel_notes);
        settle_shapes(m);
        clReleaseProgram(m->program);
        m->program = NULL;
        TRY(build_program(m, params));
    }
}

static pldr_status build_kernels(pldr_model *m, const pldr_model_params *params)
{
    TRY(build_program(m, params));
    return fit_kernels(m, params);
}

static pldr_status check_device_fits(pldr_model *m, uint64_t weight_bytes)
{
    const pldr_device_info *d = &m->ocl.info;
    if (weight_bytes > d->global_mem_bytes)
        return pldr_fail(PLDR_ERR_DEVICE_MEMORY,
                         "the weights need %.1f MiB but %s has %.1f MiB of global memory%s",
                         weight_bytes / 1048576.0, d->name, d->global_mem_bytes / 1048576.0,
                         m->wtype == PLDR_DTYPE_F32 ? " (try --dtype f16 or q8_0)" : "");
    return PLDR_OK;
}

/* Sets ld->align and ld->blas_align (see loader), or leaves them 0: tensors
 * are used in place only where asked for ($PLDR_ZERO_COPY=0 turns it off), on
 * a device that shares the host's memory, with float32 weights, and on a
 * little-endian host (the file's byte order). The engine's kernels read at
 * most a float4 at a time from a weight buffer (kernels/gemv.cl, LOAD_ROW4).
 * CLBlast's SGEMM kernels read vectors of up to 16 floats (64 bytes) from a
 * matrix's start, counting on the base-address alignment the device gives
 * the buffers it allocates (CL_DEVICE_MEM_BASE_ADDR_ALIGN). */
static void zero_copy_alignment(const pldr_model *m, const pldr_model_params *params, loader *ld)
{
    if (!params->zero_copy || !m->ocl.info.unified_memory ||
        m->wtype != PLDR_DTYPE_F32)
        return;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const size_t base = m->ocl.info.mem_base_align < 64 ? m->ocl.info.mem_base_align : 64;
    ld->align = 16;
    ld->blas_align = base > ld->align ? base : ld->align;
#endif
}

/* A hash of the config and, per tensor in name order, of its name, dtype and
 * the crc32 of its bytes (pldr_model_fingerprint). */
static uint64_t fingerprint(loader *ld)
{
    const pldr_config *c = &ld->m->cfg;
    char canon[512];
    int canon_len = snprintf(canon, sizeof canon, "%d %d %d %d %d %d %d %d %d %d %.17g %.17g %d %d",
                             c->n_layers, c->d_model, c->n_heads, c->head_dim, c->d_ff, c->n_reslayer_a,
                             c->n_dense_a, c->a_dff, c->vocab_size, c->max_position, c->layer_norm_eps,
                             c->rope_theta, c->reference_rope, (int)c->g_type);
    /* the class and RoPE scaling, only where they differ from a causal LM's
     * unscaled RoPE (so that those fingerprints stay as they were) */
    if (c->arch != PLDR_ARCH_CAUSAL_LM || c->rope_type != PLDR_ROPE_DEFAULT)
        canon_len += snprintf(canon + canon_len, sizeof canon - (size_t)canon_len, " %d %d %d %.17g %.17g %d",
                              (int)c->arch, c->n_outputs, (int)c->rope_type, c->rope_factor,
                              c->rope_attention_factor, c->rope_original_max_position);
    uint64_t h = pldr_fnv1a(PLDR_FNV_INIT, canon, (size_t)canon_len);
    for (size_t i = 0; i < ld->ar->n_tensors; i++) {
        const st_tensor *t = &ld->ar->tensors[i];
        if (!ld->summed[i]) { /* a tensor the loader did not read */
            checksum(ld, t);
            st_release_pages(ld->ar, t);
        }
        h = pldr_fnv1a(h, t->name, strlen(t->name) + 1);
        h = pldr_fnv1a(h, &t->dtype, sizeof t->dtype);
        h = pldr_fnv1a(h, &ld->crc[i], sizeof ld->crc[i]);
    }
    return h;
}

/* Moves the mappings that buffers read in place from the archive to the
 * model, which unmaps them after releasing the buffers. */
static pldr_status keep_mappings(loader *ld, st_archive *ar)
{
    pldr_model *m = ld->m;
    int n = 0;
    for (int f = 0; f < ar->n_files; f++)
        n += ld->in_place[f];
    if (n == 0)
        return PLDR_OK;
    if (!(m->maps = calloc((size_t)n, sizeof *m->maps)))
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of host memory keeping the weight files mapped");
    for (int f = 0; f < ar->n_files; f++)
        if (ld->in_place[f]) {
            st_take_mapping(ar, f, &m->maps[m->n_maps].addr, &m->maps[m->n_maps].size);
            m->n_maps++;
        }
    return PLDR_OK;
}

static void free_loader(loader *ld)
{
    free(ld->staging);
    free(ld->hstage);
    free(ld->qstage);
    free(ld->past_g);
    free(ld->crc);
    free(ld->summed);
    free(ld->in_place);
}

pldr_status pldr_model_load(const char *dir, const pldr_model_params *params, pldr_model **out)
{
    *out = NULL;
    pldr_clear_error();
    pldr_model_params defaults = pldr_model_default_params();
    if (!params)
        params = &defaults;
    if (!dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no model directory given");
    pldr_model *m = calloc(1, sizeof *m);
    if (!m)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    st_archive ar;
    memset(&ar, 0, sizeof ar);
    loader ld;
    memset(&ld, 0, sizeof ld);
    char *cfg_path = pldr_path_join(dir, "config.json");
    pldr_status st = cfg_path ? pldr_config_load_extra(cfg_path, &m->cfg, &m->cfg_extra) : PLDR_ERR_HOST_MEMORY;
    free(cfg_path);
    if (st == PLDR_OK)
        st = st_open_dir(dir, &ar);
    if (st == PLDR_OK)
        st = pldr_checkpoint_names(&m->cfg, &ar);
    if (st == PLDR_OK)
        st = pldr_checkpoint_check(&m->cfg, &ar, dir);
    if (st == PLDR_OK)
        st = pldr_ocl_open(params->device, &m->ocl);
    if (st == PLDR_OK)
        atomic_fetch_add(&live_contexts, 1);
    if (st != PLDR_OK)
        goto fail;
    m->ocl.build_log = params->build_log;
    if (params->tuning)
        pldr_tuning_apply(&m->ocl, params->cache_dir); /* pldr tune: CLBlast GEMM parameters */
    if ((unsigned)params->weight_dtype >= PLDR_DTYPE_COUNT) {
        st = pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "unknown weight dtype %d", (int)params->weight_dtype);
        goto fail;
    }
    m->wtype = params->weight_dtype;
    /* quantized rows are whole blocks */
    const int row_align = dtype_quantized(m->wtype) ? PLDR_QBLOCK : 4;
    m->d_pitch = (m->cfg.d_model + row_align - 1) / row_align * row_align;
    m->f_pitch = (m->cfg.d_ff + row_align - 1) / row_align * row_align;
    m->emb_pitch = dtype_quantized(m->wtype) ? m->d_pitch : m->cfg.d_model;
    choose_work_groups(m, params);

    const pldr_config *c = &m->cfg;
    uint64_t total_bytes = 0;
    size_t max_elems = 0;
    for (size_t i = 0; i < ar.n_tensors; i++) {
        const st_tensor *t = &ar.tensors[i];
        if (strcmp(t->name, "decoder.past_G_values") != 0)
            m->n_params += t->n_elements;
        total_bytes += t->nbytes;
        if (t->n_elements > max_elems)
            max_elems = (size_t)t->n_elements;
    }
    /* the matrices stored in the weight dtype: embedding, final layer, and per
     * layer Q/K/V, dense and the three FFN matrices */
    const uint64_t d = (uint64_t)c->d_model, F = (uint64_t)c->d_ff;
    uint64_t matrix_elems = ((uint64_t)c->vocab_size + (uint64_t)c->n_outputs) * d +
                            (uint64_t)c->n_layers * (4 * d * d + 3 * F * d);
    uint64_t weight_bytes = m->n_params * 4 - matrix_elems * 4 +
                            (uint64_t)((double)matrix_elems * pldr_dtype_weight_bytes(m->wtype, pldr_scale_bytes(m)));
    if ((st = check_device_fits(m, weight_bytes)) != PLDR_OK)
        goto fail;

    const double t_build = pldr_now();
    st = build_kernels(m, params);
    m->build_s = pldr_now() - t_build;
    if (st != PLDR_OK)
        goto fail;

    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    ld.m = m;
    ld.ar = &ar;
    ld.staging = malloc(max_elems * sizeof(float));
    ld.hstage = m->wtype == PLDR_DTYPE_F16 ? malloc(max_elems * sizeof(uint16_t)) : NULL;
    ld.crc = calloc(ar.n_tensors ? ar.n_tensors : 1, sizeof *ld.crc);
    ld.summed = calloc(ar.n_tensors ? ar.n_tensors : 1, 1);
    ld.in_place = calloc(ar.n_files ? (size_t)ar.n_files : 1, 1);
    ld.total = total_bytes;
    ld.progress = params->progress;
    ld.progress_user = params->progress_user;
    zero_copy_alignment(m, params, &ld);
    if (!m->layers || !ld.staging || (m->wtype == PLDR_DTYPE_F16 && !ld.hstage) || !ld.crc || !ld.summed || !ld.in_place) {
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of host memory while loading %s", dir);
        goto fail;
    }
    st = load_weights(&ld);
    if (st == PLDR_OK)
        st = fold_layer_norms(m);
    if (st != PLDR_OK) {
        pldr_fail_prefix(st, "%s", dir);
        goto fail;
    }
    m->fingerprint = fingerprint(&ld);
    if ((st = keep_mappings(&ld, &ar)) != PLDR_OK)
        goto fail;
    free_loader(&ld);
    st_close(&ar);
    *out = m;
    return PLDR_OK;

fail:
    free_loader(&ld);
    pldr_model_free(m); /* first: its buffers may read the mappings */
    st_close(&ar);
    return st;
}

void pldr_release_mem(cl_mem *b)
{
    if (*b)
        clReleaseMemObject(*b);
    *b = NULL;
}

void pldr_release_weight(pldr_weight *w)
{
    pldr_release_mem(&w->data);
    pldr_release_mem(&w->scales);
}

void pldr_model_free(pldr_model *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            pldr_layer *ly = &m->layers[l];
            pldr_release_weight(&ly->wqkv);
            pldr_release_weight(&ly->wo);
            pldr_release_weight(&ly->w12);
            pldr_release_weight(&ly->w3);
            cl_mem *all[] = {&ly->bqkv, &ly->bo, &ly->ln1_w, &ly->ln1_b,
                             &ly->ln2_w, &ly->ln2_b, &ly->b12, &ly->b3,
                             &ly->a_ln_w, &ly->a_ln_b, &ly->ml_w12, &ly->ml_b12, &ly->ml_w3,
                             &ly->ml_b3, &ly->ml_ln_w, &ly->ml_ln_b, &ly->plga, &ly->past_g,
                             &ly->qkv_sc, &ly->up_sc};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                pldr_release_mem(all[i]);
        }
        free(m->layers);
    }
    pldr_release_weight(&m->emb);
    pldr_release_mem(&m->ln0_w);
    pldr_release_mem(&m->ln0_b);
    pldr_release_weight(&m->wf);
    pldr_release_mem(&m->bf);
    pldr_release_mem(&m->wf_sc);
    pldr_config_extra_free(&m->cfg_extra);
    if (m->program)
        clReleaseProgram(m->program);
    /* CLBlast keeps the programs it built in a process-wide cache and, unless
     * told, releases them from a static destructor at exit, after this
     * context is gone. OpenCL allows that (a program holds its context), but
     * oclgrind 21.10 then aborts at exit in about a quarter of runs: glibc's
     * "corrupted double-linked list" inside oclgrind::Program::~Program,
     * called from clblast::Cache::~Cache in __cxa_finalize (gdb backtrace;
     * the engine's own releases are each done once, and ASan finds no double
     * free). Clearing CLBlast's cache while the last context is alive avoids
     * it. */
    if (m->ocl.context && atomic_fetch_sub(&live_contexts, 1) == 1)
        CLBlastClearCache();
    pldr_ocl_close(&m->ocl);
    /* after the buffers that read them, once the queue has finished */
    for (int i = 0; i < m->n_maps; i++)
        st_unmap(m->maps[i].addr, m->maps[i].size);
    free(m->maps);
    free(m);
}

uint64_t pldr_model_decode_bytes(const pldr_model *m)
{
    /* the embedding's bytes (scales included), less one row */
    const double esz = pldr_dtype_weight_bytes(m->emb.type, pldr_scale_bytes(m));
    const uint64_t row = (uint64_t)((double)m->emb.pitch * esz);
    return m->device_bytes - (uint64_t)m->emb.rows * row + row;
}

/* Best rate of one probe (bytes moved per run / seconds), repeated for at
 * least PROBE_SECONDS and PROBE_REPS runs after one warm-up run: on a busy
 * CPU single runs vary several-fold, and the best is the device's. */
#define PROBE_SECONDS 0.25
#define PROBE_REPS 5

typedef struct probe {
    cl_kernel k;     /* NULL: the driver's copy of a into b */
    cl_mem a, b;
    size_t bytes;    /* of each buffer */
    double moved;    /* bytes moved per run */
    size_t global, local;
} probe;

static pldr_status probe_best(pldr_model *m, const probe *p, double *best)
{
    const double start = pldr_now();
    for (int rep = 0; rep <= PROBE_REPS || pldr_now() - start < PROBE_SECONDS; rep++) {
        const double t0 = pldr_now();
        cl_int err = p->k ? clEnqueueNDRangeKernel(m->ocl.queue, p->k, 1, NULL, &p->global, &p->local, 0, NULL, NULL)
                          : clEnqueueCopyBuffer(m->ocl.queue, p->a, p->b, 0, 0, p->bytes, 0, NULL, NULL);
        if (err == CL_SUCCESS)
            err = clFinish(m->ocl.queue);
        const double dt = pldr_now() - t0;
        if (err != CL_SUCCESS)
            return pldr_cl_fail(&m->ocl, err, "running the bandwidth probe");
        if (rep > 0 && dt > 0 && p->moved / dt > *best) /* the first run warms up */
            *best = p->moved / dt;
        if (rep > 1000)
            break;
    }
    return PLDR_OK;
}

/* The probes on buffers of `bytes`: a copy kernel, the driver's copy (which
 * some CPU drivers do better than a kernel) and a read-only kernel. */
static pldr_status probe_size(pldr_model *m, size_t bytes, double *best)
{
    cl_mem a = NULL, b = NULL;
    cl_kernel copy = NULL, read = NULL;
    pldr_status st = pldr_buffer(m, bytes, "the bandwidth probe", &a, NULL);
    if (st == PLDR_OK)
        st = pldr_buffer(m, bytes, "the bandwidth probe", &b, NULL);
    cl_int err = CL_SUCCESS;
    if (st == PLDR_OK && !(copy = clCreateKernel(m->program, "copy_float4", &err)))
        st = pldr_cl_fail(&m->ocl, err, "creating the copy kernel");
    if (st == PLDR_OK && !(read = clCreateKernel(m->program, "read_float4", &err)))
        st = pldr_cl_fail(&m->ocl, err, "creating the read kernel");
    cl_uint n = (cl_uint)(bytes / 16);
    float zero = 0.0f;
    size_t global = (size_t)m->ocl.info.compute_units * 2048, local = 256, kwg = 0;
    /* each kernel's own limit as well as the device's */
    for (int i = 0; i < 2; i++) {
        cl_kernel k = i ? read : copy;
        if (k && kernel_wg_limit(m, k, i ? "read_float4" : "copy_float4", &kwg) == CL_SUCCESS && kwg > 0 &&
            kwg < local)
            local = kwg;
    }
    if (local > m->ocl.info.max_work_group_size)
        local = m->ocl.info.max_work_group_size;
    global = (global / local) * local;
    if ((size_t)n < global) /* the read kernel writes one float per work-item into b */
        global = ((size_t)n / local) * local;
    if (st == PLDR_OK && global == 0)
        st = pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "the bandwidth probe's buffers are too small");
    if (st == PLDR_OK) {
        err = clEnqueueFillBuffer(m->ocl.queue, a, &zero, sizeof zero, 0, bytes, 0, NULL, NULL);
        err |= clSetKernelArg(copy, 0, sizeof a, &a);
        err |= clSetKernelArg(copy, 1, sizeof b, &b);
        err |= clSetKernelArg(copy, 2, sizeof n, &n);
        err |= clSetKernelArg(read, 0, sizeof a, &a);
        err |= clSetKernelArg(read, 1, sizeof b, &b);
        err |= clSetKernelArg(read, 2, sizeof n, &n);
        if (err != CL_SUCCESS)
            st = pldr_cl_fail(&m->ocl, err, "preparing the bandwidth probe");
    }
    const probe probes[3] = {{copy, a, b, bytes, 2.0 * (double)bytes, global, local},
                             {NULL, a, b, bytes, 2.0 * (double)bytes, global, local},
                             {read, a, b, bytes, (double)bytes, global, local}};
    for (int i = 0; i < 3 && st == PLDR_OK; i++)
        st = probe_best(m, &probes[i], best);
    if (copy)
        clReleaseKernel(copy);
    if (read)
        clReleaseKernel(read);
    if (a)
        clReleaseMemObject(a);
    if (b)
        clReleaseMemObject(b);
    return st;
}

pldr_status pldr_model_measure_bandwidth(pldr_model *m, double *bps)
{
    pldr_clear_error();
    *bps = 0.0;
    size_t bytes = 256u << 20;
    while (bytes > m->ocl.info.max_alloc_bytes || 2 * (uint64_t)bytes > m->ocl.info.global_mem_bytes / 4)
        bytes /= 2;
    double best = 0.0;
    pldr_status st = probe_size(m, bytes, &best);
    /* and at the size one decode step reads: where caches hold the weights,
     * a decode step reads faster than the device's memory does */
    uint64_t step = pldr_model_decode_bytes(m);
    step = (step + 4095) / 4096 * 4096;
    if (st == PLDR_OK && step < bytes && step >= 65536)
        st = probe_size(m, (size_t)step, &best);
    *bps = best;
    return st;
}
