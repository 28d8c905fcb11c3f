/* The PLDR-LLM forward pass on the device, and the inference context that
 * holds its caches: K and V per layer, and the G-cache [A, A_LM, G_LM] per
 * layer. See docs/pldr-llm.md of the model specification for the math.
 *
 * Two paths:
 *  - a forward over T > 1 tokens (the prefill, and every step without
 *    cache): GEMMs through CLBlast, the rest in kernels;
 *  - a decode step of one token through the caches: the engine's own GEMV
 *    kernels with the LayerNorms, biases, residuals and the GLU gate fused
 *    in, and one attention kernel per layer that also applies RoPE, writes the
 *    caches and multiplies by G_LM.
 * Nothing returns to the host inside a forward except the logits (or the
 * argmax) and the non-finite flags at its end. */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "common/util.h"

#define LOGIT_CHUNK 64 /* rows of logits computed and read back at a time */

typedef struct kernels {
    cl_kernel embed, brln, w2f, qkv_rope, metric, learner, potential, energy;
    cl_kernel gemm_cpu, learner_cpu, metric_cpu, att_prefill_cpu, potential_cpu, energy_cpu; /* CPU devices */
    cl_kernel apply_g, att_prefill, att_decode, glu, gemv, gemv_wide, gemv_ln, gemv_embed, bias_rows,
        argmax;
} kernels;

struct pldr_context {
    pldr_model *m;
    pldr_context_params p;
    int n_ctx;
    int n_past;
    int32_t *tokens; /* the sequence so far (for mode NONE) */
    int g_valid;     /* the G-cache holds the prefill's A, A_LM, G_LM */
    int external_g;  /* the G-cache was set from outside: never recomputed */
    kernels k;
    uint64_t device_bytes;
    /* caches */
    cl_mem *k_cache, *v_cache;   /* per layer [n_ctx, d] */
    cl_mem *g_a, *g_alm, *g_g;   /* per layer [H, dk, dk] */
    cl_mem rope;                 /* [n_ctx, dk/2] (cos, sin) */
    /* activations of a forward over up to n_ctx tokens */
    cl_mem ids, x, x1, qkv, q, qg, att, o, h, g;
    cl_mem a0, a_p;              /* [H, dk, dk] */
    cl_mem logits;               /* [LOGIT_CHUNK, V] */
    cl_mem flags;                /* non-finite flags, see flag_* */
    cl_mem w_scratch;            /* float32 copy of a matrix not stored as float32, for CLBlast (not with own_gemm) */
    /* The decode-step vectors, the flags, the token ids, the RoPE table and
     * the logits are regions of one buffer, act, so that decode kernels take
     * it once with byte offsets (kernels/gemv.cl); the regions that other code
     * uses are also sub-buffers. */
    cl_mem act;
    cl_mem s1, s2, xn, x1n;
    struct act_offsets {
        int s1, s2, xn, x1n, qkv, g; /* one token's vectors: d, d, d, d, 3d, F */
        int att_part;                /* split decode attention: [H, n_ctx/ATT_WG, dk + 2] */
        int att_count;               /* its work-groups finished, per head: [H] ints */
        int att;                     /* its output: d */
        int argmax_part;             /* greedy decode: (value, index) per final GEMV work-group */
        int flags, ids, rope, logits;
    } off;
    int32_t id_host;
    int n_flags;
    int *flags_host;   /* n_flags words, then the greedy token id */
    int next_on_device; /* flags word n_flags holds the last greedy token */
    int flags_dirty;    /* a flag was raised: clear them before the next forward */
    int32_t last_next;
    /* greedy decoding enqueues the next step before waiting for this one
     * (see pldr_eval_greedy); slot: host buffer and read event of a step */
    int pipeline;       /* allowed (PLDR_PIPELINE=0: not) */
    int ahead;          /* a step at position n_past, fed with last_next, is enqueued */
    int slot;           /* the slot of the last step enqueued */
    int *slot_host[2];  /* n_flags + 1 words each, in stage */
    /* page-locked host memory (CL_MEM_ALLOC_HOST_PTR, mapped for the context's
     * life) for what every step reads back: the two slots, flags_host and one
     * row of logits. Reads into pageable memory make some drivers (NVIDIA's)
     * copy through a bounce buffer, and the device waits for that copy. */
    cl_mem stage;
    void *stage_ptr;
    float *logit_row;
    cl_event slot_ev[2];
    /* profiling (PLDR_PROFILE=1) */
    int profile;
    cl_event *events;
    const char **event_names;
    int n_events, cap_events;
    struct prof_entry {
        const char *name;
        double ms;
        long count;
    } prof[48];
    int n_prof;
    double prof_gap_ms;  /* device idle time between consecutive recorded kernels */
    long prof_gaps;
    int host_timing;    /* PLDR_HOSTTIME=1: host time per launch, without device profiling */
    double host_arg_ms; /* host time setting arguments (PLDR_HOSTTIME) */
    double host_enq_ms; /* host time enqueueing (PLDR_PROFILE or PLDR_HOSTTIME) */
    double host_wait_ms; /* host time blocked on greedy tokens (PLDR_HOSTTIME) */
    long host_launches;
};

/* Flag words: [2l] attention sum of layer l, [2l+1] FFN sum of layer l,
 * [2L+l] G_LM of layer l, [3L] logits, [3L+1] embedding. */
static int flag_att(int l) { return 2 * l; }
static int flag_ffn(int l) { return 2 * l + 1; }
static int flag_g(const pldr_context *c, int l) { return 2 * c->m->cfg.n_layers + l; }
static int flag_logits(const pldr_context *c) { return 3 * c->m->cfg.n_layers; }
static int flag_embed(const pldr_context *c) { return 3 * c->m->cfg.n_layers + 1; }

pldr_context_params pldr_context_default_params(void)
{
    pldr_context_params p;
    memset(&p, 0, sizeof p);
    p.n_ctx = 0;
    p.cache_mode = PLDR_CACHE_KVG;
    p.check_finite = 1;
    return p;
}

int pldr_context_n_past(const pldr_context *c) { return c->n_past; }
int pldr_context_n_ctx(const pldr_context *c) { return c->n_ctx; }
uint64_t pldr_context_device_bytes(const pldr_context *c) { return c->device_bytes; }

pldr_cache_mode pldr_context_cache_mode(const pldr_context *c) { return c->p.cache_mode; }

/* Whether G_LM comes from outside the metric learner (checkpoint or caller). */
static int g_fixed(const pldr_context *c) { return c->external_g || c->m->cfg.g_type != PLDR_G_LEARNED; }

static void ahead_cancel(pldr_context *c);

void pldr_context_reset(pldr_context *c)
{
    ahead_cancel(c);
    c->n_past = 0;
    c->g_valid = g_fixed(c);
}

/* ------------------------------------------------------------ launching */

#define TRY(x)                                                                                     \
    do {                                                                                           \
        pldr_status st_ = (x);                                                                     \
        if (st_ != PLDR_OK)                                                                        \
            return st_;                                                                            \
    } while (0)

typedef struct arg {
    size_t size;
    const void *value;
} arg;

#define A_MEM(b) ((arg){sizeof(cl_mem), &(b)})
#define A_INT(v) ((arg){sizeof(cl_int), &(cl_int){(v)}})
#define A_FLT(v) ((arg){sizeof(cl_float), &(cl_float){(v)}})
#define A_LONG(v) ((arg){sizeof(cl_long), &(cl_long){(v)}})
#define A_LOCAL(n) ((arg){(n), NULL})
/* the scales argument of a kernel reading weight matrix *w (pldr_scales) */
#define A_SCALES(w) ((arg){sizeof(cl_mem), &(cl_mem){pldr_scales(w)}})

static void prof_add(pldr_context *c, const char *name, double ms);

static pldr_status launch(pldr_context *c, cl_kernel k, const char *name, size_t offset, size_t global,
                          size_t local, int n_args, const arg *args)
{
    const double a0 = c->host_timing ? pldr_now() : 0.0;
    for (int i = 0; i < n_args; i++) {
        cl_int err = clSetKernelArg(k, (cl_uint)i, args[i].size, args[i].value);
        if (err != CL_SUCCESS) {
            char msg[128];
            snprintf(msg, sizeof msg, "setting argument %d of kernel %s", i, name);
            return pldr_cl_fail(&c->m->ocl, err, msg);
        }
    }
    if (global == 0)
        return PLDR_OK;
    const double h0 = c->profile || c->host_timing ? pldr_now() : 0.0;
    if (c->host_timing)
        c->host_arg_ms += (h0 - a0) * 1e3;
    cl_event ev = NULL, *evp = NULL;
    if (c->profile && c->n_events < c->cap_events)
        evp = &ev;
    cl_int err = clEnqueueNDRangeKernel(c->m->ocl.queue, k, 1, offset ? &offset : NULL, &global,
                                        local ? &local : NULL, 0, NULL, evp);
    if (evp && err == CL_SUCCESS) {
        c->events[c->n_events] = ev;
        c->event_names[c->n_events++] = name;
    }
    if (c->profile || c->host_timing) {
        const double ms = (pldr_now() - h0) * 1e3;
        c->host_enq_ms += ms;
        c->host_launches++;
        if (c->host_timing)
            prof_add(c, name, ms);
    }
    if (err != CL_SUCCESS) {
        char msg[128];
        snprintf(msg, sizeof msg, "launching kernel %s", name);
        return pldr_cl_fail(&c->m->ocl, err, msg);
    }
    return PLDR_OK;
}

#define LAUNCH_FROM(c, kern, name, offset, global, local, ...)                                     \
    launch((c), (c)->k.kern, (name), (offset), (global), (local),                                  \
           (int)(sizeof((arg[]){__VA_ARGS__}) / sizeof(arg)), (arg[]){__VA_ARGS__})
#define LAUNCH_AS(c, kern, name, global, local, ...) LAUNCH_FROM(c, kern, name, 0, global, local, __VA_ARGS__)
#define LAUNCH(c, kern, global, local, ...) LAUNCH_AS(c, kern, #kern, global, local, __VA_ARGS__)

static void prof_add(pldr_context *c, const char *name, double ms)
{
    int i = 0;
    while (i < c->n_prof && strcmp(c->prof[i].name, name) != 0)
        i++;
    if (i == c->n_prof) {
        if (c->n_prof == (int)(sizeof c->prof / sizeof c->prof[0]))
            return;
        c->prof[c->n_prof++] = (struct prof_entry){name, 0.0, 0};
    }
    c->prof[i].ms += ms;
    c->prof[i].count++;
}

/* Adds the times of the kernels recorded since the last call (after a sync). */
static void prof_collect(pldr_context *c)
{
    cl_ulong prev_end = 0;
    for (int i = 0; i < c->n_events; i++) {
        cl_ulong t0 = 0, t1 = 0;
        clGetEventProfilingInfo(c->events[i], CL_PROFILING_COMMAND_START, sizeof t0, &t0, NULL);
        clGetEventProfilingInfo(c->events[i], CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL);
        prof_add(c, c->event_names[i], (double)(t1 - t0) * 1e-6);
        if (prev_end && t0 > prev_end) {
            c->prof_gap_ms += (double)(t0 - prev_end) * 1e-6;
            c->prof_gaps++;
        }
        prev_end = t1;
        clReleaseEvent(c->events[i]);
    }
    c->n_events = 0;
}

static void prof_print(pldr_context *c)
{
    double total = 0.0;
    for (int i = 0; i < c->n_prof; i++)
        total += c->prof[i].ms;
    fprintf(stderr, "pldr profile (device time per kernel, %s):\n", c->m->ocl.info.name);
    for (int i = 0; i < c->n_prof; i++)
        fprintf(stderr, "  %-26s %9.3f ms %7ld calls %8.2f us/call %5.1f%%\n", c->prof[i].name, c->prof[i].ms,
                c->prof[i].count, 1000.0 * c->prof[i].ms / (double)c->prof[i].count,
                total > 0 ? 100.0 * c->prof[i].ms / total : 0.0);
    fprintf(stderr, "  idle between kernels       %9.3f ms %7ld gaps  %8.2f us/gap\n", c->prof_gap_ms, c->prof_gaps,
            c->prof_gaps ? 1000.0 * c->prof_gap_ms / (double)c->prof_gaps : 0.0);
    fprintf(stderr, "  host enqueue time          %9.3f ms\n", c->host_enq_ms);
}

/* C[M, N] = A[M, K] . W[N, K]^T (row-major): through CLBlast, or on CPU
 * devices through the engine's own kernel (kernels/gemm.cl). */
static pldr_status gemm(pldr_context *c, size_t M, size_t N, size_t K, cl_mem a, size_t a_off,
                        const pldr_weight *wt, size_t w_pitch, cl_mem out, size_t out_off)
{
    pldr_model *m = c->m;
    cl_mem w = wt->data;
    if (m->own_gemm) { /* kernels/gemm.cl widens every weight dtype as it loads */
        const size_t bm = (M + PLDR_GEMM_CPU_ROWS - 1) / PLDR_GEMM_CPU_ROWS,
                     bn = (N + PLDR_GEMM_CPU_COLS - 1) / PLDR_GEMM_CPU_COLS;
        return LAUNCH_AS(c, gemm_cpu, "gemm_cpu", bm * bn, 1, A_MEM(a), A_LONG((cl_long)a_off), A_INT((int)K),
                         A_MEM(w), A_SCALES(wt), A_INT((int)w_pitch), A_MEM(out), A_LONG((cl_long)out_off), A_INT((int)N),
                         A_INT((int)M), A_INT((int)N), A_INT((int)K));
    }
    if (wt->type != PLDR_DTYPE_F32) { /* CLBlast reads float32: widened into the scratch first */
        TRY(LAUNCH(c, w2f, (size_t)c->m->ocl.info.compute_units * 1024, 0, A_MEM(w), A_SCALES(wt),
                   A_MEM(c->w_scratch), A_LONG((cl_long)(N * w_pitch))));
        w = c->w_scratch;
    }
    cl_command_queue q = m->ocl.queue;
    double t0 = 0.0;
    if (c->profile) {
        clFinish(q);
        t0 = pldr_now();
    }
    CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, M, N, K,
                                       1.0f, a, a_off, K, w, 0, w_pitch, 0.0f, out, out_off, N, &q, NULL);
    if (c->profile) {
        clFinish(q);
        prof_add(c, "clblast_sgemm (wall)", (pldr_now() - t0) * 1e3);
    }
    if (s != CLBlastSuccess) {
        if (s < 0 && s > -100)
            return pldr_cl_fail(&m->ocl, (cl_int)s, "CLBlast SGEMM");
        return pldr_fail(PLDR_ERR_OPENCL, "CLBlast SGEMM (%zux%zux%zu) failed with status %d on %s", M, N, K,
                         (int)s, m->ocl.info.name);
    }
    return PLDR_OK;
}

/* y = W . xin + b with the options of the gemv kernel (see kernels/gemv.cl). */
typedef struct gemv_op {
    const pldr_weight *w;
    cl_mem bias; /* not with ln_in: sc holds the bias then */
    int k_dim, n_out;
    int x; /* vectors: byte offsets in c->act */
    int ln_in; /* x is normalised on load by the LayerNorm whose weights are in sc */
    int x_norm;
    cl_mem sc; /* ln_in: the per-row data and the LayerNorm (pldr_layer.qkv_sc) */
    int residual; /* -1: none */
    int wide;     /* on multi-lane layouts, through gemv_wide (the output projections; not glu) */
    int glu;
    int y;
    int flag_index;
    int argmax; /* also the argmax of y over all rows (gemv_ln only) */
    const char *name; /* in PLDR_PROFILE's table */
} gemv_op;

/* Whether a GEMV row has several lanes (the GPU form of kernels/gemv.cl,
 * LANES > 1 there) rather than one work-item. */
static int multi_lane(const pldr_model *m)
{
    return m->gemv_rows < m->gemv_wg;
}

/* Local memory for x in gemv_ln and gemv_embed: only the one-lane form
 * (kernels/gemv.cl) keeps x there. */
static size_t ln_x_local(const pldr_model *m, int pitch)
{
    return (multi_lane(m) ? 1 : (size_t)pitch) * sizeof(float);
}

static int pitch_of(const pldr_model *m, int k_dim)
{
    return k_dim == m->cfg.d_model ? m->d_pitch : m->f_pitch;
}

static pldr_status gemv(pldr_context *c, const gemv_op *op)
{
    const pldr_model *m = c->m;
    /* a folded-norm GLU product spends two lane groups on an output row */
    const size_t rows = op->ln_in && op->glu && multi_lane(m) ? (size_t)m->gemv_rows / 2 : (size_t)m->gemv_rows;
    size_t groups = ((size_t)op->n_out + rows - 1) / rows;
    const int pitch = pitch_of(m, op->k_dim);
    if (op->ln_in) /* never with a residual */
        return LAUNCH_AS(c, gemv_ln, op->name, groups * (size_t)m->gemv_wg, (size_t)m->gemv_wg, A_MEM(op->w->data),
                         A_SCALES(op->w),
                         A_MEM(op->sc), A_INT(op->k_dim), A_INT(pitch), A_INT(op->n_out), A_MEM(c->act),
                         A_INT(op->x), A_INT(op->x_norm), A_INT(op->glu), A_INT(op->y),
                         A_LOCAL(ln_x_local(m, pitch)), A_INT(c->off.flags), A_INT(op->flag_index),
                         A_INT(op->argmax), A_INT(c->off.argmax_part), A_INT(c->n_flags), A_INT(c->n_flags + 1),
                         A_INT(flag_logits(c)));
    const int has_res = op->residual >= 0, res = has_res ? op->residual : op->x; /* any valid offset */
    if (multi_lane(m) && op->wide) {
        const size_t wgroups = ((size_t)op->n_out + (size_t)m->gemv_wrows - 1) / (size_t)m->gemv_wrows;
        return LAUNCH_AS(c, gemv_wide, op->name, wgroups * (size_t)m->gemv_wg, (size_t)m->gemv_wg, A_MEM(op->w->data),
                         A_SCALES(op->w),
                         A_MEM(op->bias), A_INT(op->k_dim), A_INT(pitch), A_INT(op->n_out), A_MEM(c->act),
                         A_INT(op->x), A_INT(res), A_INT(has_res), A_INT(op->y));
    }
    return LAUNCH_AS(c, gemv, op->name, groups * (size_t)m->gemv_wg, (size_t)m->gemv_wg, A_MEM(op->w->data),
                     A_SCALES(op->w),
                     A_MEM(op->bias), A_INT(op->k_dim), A_INT(pitch), A_INT(op->n_out), A_MEM(c->act), A_INT(op->x),
                     A_INT(res), A_INT(has_res), A_INT(op->glu), A_INT(op->y),
                     A_LOCAL((size_t)pitch * sizeof(float)));
}

/* ------------------------------------------------------------ PLGA */

/* The deductive branch of layer l from the current q (T rows): A, A_LM and
 * G_LM into the layer's G-cache. With from_cached_a, A is the cached one. */
static pldr_status plga(pldr_context *c, int l, int T, int from_cached_a)
{
    const pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const pldr_layer *ly = &m->layers[l];
    const size_t hdd = (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim;
    if (!from_cached_a) {
        if (m->wg_forms)
            TRY(LAUNCH(c, metric, hdd, 0, A_MEM(c->q), A_INT(T), A_MEM(c->a0)));
        else
            TRY(LAUNCH_AS(c, metric_cpu, "metric", hdd / (size_t)cf->head_dim, 1, A_MEM(c->q), A_INT(T),
                          A_MEM(c->a0)));
        const int rows = cf->n_heads * cf->head_dim;
        if (m->wg_forms) {
            const size_t groups = ((size_t)rows + (size_t)m->ml_rows - 1) / (size_t)m->ml_rows;
            TRY(LAUNCH(c, learner, groups * (size_t)m->ml_wg, (size_t)m->ml_wg, A_MEM(c->a0), A_MEM(c->g_a[l]),
                       A_INT(rows), A_MEM(ly->a_ln_w), A_MEM(ly->a_ln_b), A_MEM(ly->ml_w12), A_MEM(ly->ml_b12),
                       A_MEM(ly->ml_w3), A_MEM(ly->ml_b3), A_MEM(ly->ml_ln_w), A_MEM(ly->ml_ln_b)));
        } else {
            TRY(LAUNCH_AS(c, learner_cpu, "learner",
                          ((size_t)rows + PLDR_LEARNER_CPU_ROWS - 1) / PLDR_LEARNER_CPU_ROWS, 1, A_MEM(c->a0), A_MEM(c->g_a[l]),
                          A_INT(rows), A_MEM(ly->a_ln_w), A_MEM(ly->a_ln_b), A_MEM(ly->ml_w12), A_MEM(ly->ml_b12),
                          A_MEM(ly->ml_w3), A_MEM(ly->ml_b3), A_MEM(ly->ml_ln_w), A_MEM(ly->ml_ln_b)));
        }
    }
    if (!m->wg_forms) { /* kernels/plga.cl: a work-item per row of a head */
        const size_t rows = hdd / (size_t)cf->head_dim;
        TRY(LAUNCH_AS(c, potential_cpu, "potential", rows, 1, A_MEM(c->g_a[l]), A_MEM(ly->plga), A_MEM(c->g_alm[l]),
                      A_MEM(c->a_p)));
        return LAUNCH_AS(c, energy_cpu, "energy", rows, 1, A_MEM(c->a_p), A_MEM(ly->plga), A_MEM(c->g_g[l]),
                         A_MEM(c->flags), A_INT(flag_g(c, l)));
    }
    TRY(LAUNCH(c, potential, hdd, 0, A_MEM(c->g_a[l]), A_MEM(ly->plga), A_MEM(c->g_alm[l]), A_MEM(c->a_p)));
    return LAUNCH(c, energy, hdd, 0, A_MEM(c->a_p), A_MEM(ly->plga), A_MEM(c->g_g[l]), A_MEM(c->flags),
                  A_INT(flag_g(c, l)));
}

/* Whether this forward computes G_LM: always without caches, else only when
 * the G-cache is empty; KV mode recomputes it from the cached A. */
static pldr_status layer_g(pldr_context *c, int l, int T, int full)
{
    if (g_fixed(c))
        return PLDR_OK;
    if (full || !c->g_valid)
        return plga(c, l, T, 0);
    if (c->p.cache_mode == PLDR_CACHE_KV)
        return plga(c, l, T, 1);
    return PLDR_OK;
}

/* ------------------------------------------------------------ forward */

static pldr_status write_ids(pldr_context *c, const int32_t *ids, int n)
{
    cl_int err = clEnqueueWriteBuffer(c->m->ocl.queue, c->ids, CL_TRUE, 0, (size_t)n * sizeof(cl_int), ids, 0,
                                      NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "uploading token ids");
}

/* A forward over T tokens at positions pos0 .. pos0+T-1 leaving the final
 * hidden states of the last `keep` tokens in c->x (rows T-keep .. T-1).
 * full: compute G_LM from these tokens regardless of the cache (mode NONE,
 * or the prefill). Every layer's K, V and A need all T rows, but the last
 * layer's attention, output projection and FFN only the kept ones: those
 * launches start at row T-keep (global work offsets; GEMMs by offset). */
static pldr_status forward_tokens(pldr_context *c, const int32_t *ids, int T, int pos0, int full, int keep)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t d = (size_t)cf->d_model, F = (size_t)cf->d_ff, H = (size_t)cf->n_heads;
    const float scale = (float)(1.0 / sqrt((double)cf->head_dim));
    TRY(write_ids(c, ids, T));
    TRY(LAUNCH(c, embed, (size_t)T * (size_t)m->row_wg, (size_t)m->row_wg, A_MEM(c->ids), A_INT(0), A_MEM(m->emb.data),
               A_SCALES(&m->emb), A_FLT((float)sqrt((double)d)), A_MEM(m->ln0_w), A_MEM(m->ln0_b), A_MEM(c->x), A_MEM(c->flags),
               A_INT(flag_embed(c))));
    for (int l = 0; l < cf->n_layers; l++) {
        const pldr_layer *ly = &m->layers[l];
        const size_t dp = (size_t)m->d_pitch, fp = (size_t)m->f_pitch;
        const size_t t = (size_t)T, r0 = l == cf->n_layers - 1 && keep > 0 && keep < T ? (size_t)(T - keep) : 0;
        const size_t n = t - r0, rw = (size_t)m->row_wg;
        TRY(gemm(c, t, 3 * d, d, c->x, 0, &ly->wqkv, dp, c->qkv, 0));
        TRY(LAUNCH(c, qkv_rope, t * H * (size_t)cf->head_dim / 2, 0, A_MEM(c->qkv), A_MEM(ly->bqkv), A_MEM(c->rope),
                   A_MEM(c->q), A_MEM(c->k_cache[l]), A_MEM(c->v_cache[l]), A_INT(pos0)));
        TRY(layer_g(c, l, T, full));
        TRY(LAUNCH_FROM(c, apply_g, "apply_g", r0 * d, n * d, 0, A_MEM(c->q), A_MEM(c->g_g[l]), A_FLT(scale),
                        A_MEM(c->qg)));
        if (m->wg_forms)
            TRY(LAUNCH_FROM(c, att_prefill, "att_prefill", r0 * H * (size_t)m->att_wg, n * H * (size_t)m->att_wg,
                            (size_t)m->att_wg, A_MEM(c->qg), A_MEM(c->k_cache[l]), A_MEM(c->v_cache[l]),
                            A_INT(pos0), A_MEM(c->att)));
        else
            TRY(LAUNCH_FROM(c, att_prefill_cpu, "att_prefill", r0 * H, n * H, 1, A_MEM(c->qg), A_MEM(c->k_cache[l]),
                            A_MEM(c->v_cache[l]), A_INT(pos0), A_MEM(c->att)));
        TRY(gemm(c, n, d, d, c->att, r0 * d, &ly->wo, dp, c->o, r0 * d));
        TRY(LAUNCH_FROM(c, brln, "brln", r0 * rw, n * rw, rw, A_MEM(c->o), A_MEM(ly->bo), A_MEM(c->x),
                        A_MEM(ly->ln1_w), A_MEM(ly->ln1_b), A_MEM(c->x1), A_MEM(c->flags), A_INT(flag_att(l))));
        TRY(gemm(c, n, 2 * F, d, c->x1, r0 * d, &ly->w12, dp, c->h, r0 * 2 * F));
        TRY(LAUNCH_FROM(c, glu, "glu", r0 * F, n * F, 0, A_MEM(c->h), A_MEM(ly->b12), A_MEM(c->g)));
        TRY(gemm(c, n, d, F, c->g, r0 * F, &ly->w3, fp, c->o, r0 * d));
        TRY(LAUNCH_FROM(c, brln, "brln", r0 * rw, n * rw, rw, A_MEM(c->o), A_MEM(ly->b3), A_MEM(c->x1),
                        A_MEM(ly->ln2_w), A_MEM(ly->ln2_b), A_MEM(c->x), A_MEM(c->flags), A_INT(flag_ffn(l))));
    }
    return PLDR_OK;
}

/* One token at position pos through the caches, leaving the final layer's
 * pre-norm sum in c->s2 (normalised on load by the final GEMV). */
static pldr_status decode_token(pldr_context *c, int32_t id, int pos, int chained)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const int d = cf->d_model, F = cf->d_ff;
    const float scale = (float)(1.0 / sqrt((double)cf->head_dim));
    const struct act_offsets *o = &c->off;
    /* chained: the previous greedy step left this token on the device, after the flags */
    int id_off = chained ? o->flags + c->n_flags * (int)sizeof(cl_int) : o->ids;
    if (!chained) {
        c->id_host = id; /* stays valid until the step ends: the write need not block */
        cl_int err = clEnqueueWriteBuffer(m->ocl.queue, c->ids, CL_FALSE, 0, sizeof(cl_int), &c->id_host, 0, NULL,
                                          NULL);
        if (err != CL_SUCCESS)
            return pldr_cl_fail(&m->ocl, err, "uploading the token id");
    }
    for (int l = 0; l < cf->n_layers; l++) {
        const pldr_layer *ly = &m->layers[l];
        if (l == 0) {
            /* the embedding and its LayerNorm are done by the first projection */
            const size_t groups = ((size_t)(3 * d) + (size_t)m->gemv_rows - 1) / (size_t)m->gemv_rows;
            TRY(LAUNCH(c, gemv_embed, groups * (size_t)m->gemv_wg, (size_t)m->gemv_wg, A_MEM(ly->wqkv.data),
                       A_SCALES(&ly->wqkv), A_MEM(ly->qkv_sc), A_INT(m->d_pitch), A_INT(3 * d),
                       A_MEM(m->emb.data), A_SCALES(&m->emb), A_MEM(c->act),
                       A_INT(id_off), A_FLT((float)sqrt((double)d)), A_INT(o->xn), A_INT(o->qkv),
                       A_LOCAL(ln_x_local(m, m->d_pitch)), A_INT(o->flags), A_INT(flag_embed(c))));
        } else {
            /* later layers normalise the previous layer's FFN sum on load into xn */
            gemv_op qkv = {.w = &ly->wqkv, .sc = ly->qkv_sc, .name = "gemv_ln (Q/K/V)", .k_dim = d,
                           .n_out = 3 * d, .x = o->s2, .ln_in = 1, .x_norm = o->xn, .residual = -1, .y = o->qkv,
                           .flag_index = flag_ffn(l - 1)};
            TRY(gemv(c, &qkv));
        }
        TRY(layer_g(c, l, 1, 0));
        const int n_split = (pos + 1 + m->att_wg - 1) / m->att_wg;
        TRY(LAUNCH(c, att_decode, (size_t)cf->n_heads * (size_t)n_split * (size_t)m->att_wg, (size_t)m->att_wg,
                   A_MEM(c->act), A_INT(o->qkv), A_INT(o->rope), A_MEM(c->k_cache[l]), A_MEM(c->v_cache[l]),
                   A_MEM(c->g_g[l]), A_INT(pos), A_FLT(scale), A_INT(n_split), A_INT(o->att_part),
                   A_INT(o->att_count), A_INT(o->att)));
        gemv_op proj = {.w = &ly->wo, .bias = ly->bo, .name = "gemv (attention out)", .k_dim = d, .n_out = d,
                        .x = o->att, .residual = o->xn, .y = o->s1, .wide = 1};
        TRY(gemv(c, &proj));
        gemv_op up = {.w = &ly->w12, .sc = ly->up_sc, .name = "gemv_ln (FFN in)", .k_dim = d,
                      .n_out = F, .x = o->s1, .ln_in = 1, .x_norm = o->x1n,
                      .residual = -1, .glu = 1, .y = o->g, .flag_index = flag_att(l)};
        TRY(gemv(c, &up));
        gemv_op down = {.w = &ly->w3, .bias = ly->b3, .name = "gemv (FFN out)", .k_dim = F, .n_out = d, .x = o->g,
                        .residual = o->x1n, .y = o->s2, .wide = 1};
        TRY(gemv(c, &down));
    }
    return PLDR_OK;
}

/* Logits of the last token of a decode step into c->logits row 0. */
static pldr_status final_from_decode(pldr_context *c, int argmax)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    /* the last layer's output norm comes with wf_sc */
    gemv_op fin = {.w = &m->wf, .sc = m->wf_sc, .name = "gemv_ln (logits)", .k_dim = cf->d_model,
                   .n_out = cf->vocab_size, .x = c->off.s2, .ln_in = 1, .x_norm = c->off.xn, .residual = -1,
                   .y = c->off.logits, .flag_index = flag_ffn(cf->n_layers - 1), .argmax = argmax};
    return gemv(c, &fin);
}

/* Logits of hidden row `row` of c->x (already normalised) into c->logits row 0. */
static pldr_status final_row(pldr_context *c, int row)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t d = (size_t)cf->d_model;
    cl_int err = clEnqueueCopyBuffer(m->ocl.queue, c->x, c->xn, (size_t)row * d * 4, 0, d * 4, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&m->ocl, err, "copying the last hidden row");
    gemv_op fin = {.w = &m->wf, .bias = m->bf, .name = "gemv (logits)", .k_dim = cf->d_model,
                   .n_out = cf->vocab_size, .x = c->off.xn, .residual = -1, .y = c->off.logits};
    return gemv(c, &fin);
}

/* Enqueues the read of the flags (and the greedy token after them); blocking
 * or not: a later blocking read in the same in-order queue completes it. */
static pldr_status fetch_flags(pldr_context *c, int words, cl_bool blocking)
{
    cl_int err = clEnqueueReadBuffer(c->m->ocl.queue, c->flags, blocking, 0, (size_t)words * sizeof(int),
                                     c->flags_host, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "reading the non-finite flags");
}

/* Turns the fetched flags into a status naming where values went non-finite. */
static pldr_status check_flags(pldr_context *c)
{
    if (c->profile)
        prof_collect(c);
    if (!c->p.check_finite)
        return PLDR_OK;
    /* the kernels only ever set flags: they need clearing only after one was raised */
    for (int i = 0; i < c->n_flags; i++)
        if (c->flags_host[i])
            c->flags_dirty = 1;
    const int L = c->m->cfg.n_layers;
    if (c->flags_host[flag_embed(c)])
        return pldr_fail(PLDR_ERR_NONFINITE, "non-finite values in the token embedding");
    for (int l = 0; l < L; l++) {
        if (c->flags_host[flag_g(c, l)])
            return pldr_fail(PLDR_ERR_NONFINITE,
                             "non-finite G_LM in layer %d: the PLGA power A_LM^pw overflowed float32", l);
        if (c->flags_host[flag_att(l)])
            return pldr_fail(PLDR_ERR_NONFINITE, "non-finite activations after the attention of layer %d", l);
        if (c->flags_host[flag_ffn(l)])
            return pldr_fail(PLDR_ERR_NONFINITE, "non-finite activations after the feed-forward of layer %d", l);
    }
    if (c->flags_host[flag_logits(c)])
        return pldr_fail(PLDR_ERR_NONFINITE, "non-finite logits");
    return PLDR_OK;
}

static pldr_status clear_flags(pldr_context *c)
{
    if (!c->flags_dirty)
        return PLDR_OK;
    c->flags_dirty = 0;
    const cl_int zero = 0;
    cl_int err = clEnqueueFillBuffer(c->m->ocl.queue, c->flags, &zero, sizeof zero, 0,
                                     (size_t)c->n_flags * sizeof(int), 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "clearing the flags");
}

static pldr_status read_logits(pldr_context *c, float *dst, size_t rows)
{
    const size_t bytes = rows * (size_t)c->m->cfg.vocab_size * sizeof(float);
    /* one row (a decode step) goes through the page-locked stage */
    cl_int err = clEnqueueReadBuffer(c->m->ocl.queue, c->logits, CL_TRUE, 0, bytes, rows == 1 ? c->logit_row : dst,
                                     0, NULL, NULL);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&c->m->ocl, err, "reading the logits");
    if (rows == 1)
        memcpy(dst, c->logit_row, bytes);
    return PLDR_OK;
}

/* Logits of hidden rows [first, first+n) of c->x, in chunks, through CLBlast. */
static pldr_status logits_rows(pldr_context *c, int first, int n, float *dst)
{
    pldr_model *m = c->m;
    const size_t d = (size_t)m->cfg.d_model, V = (size_t)m->cfg.vocab_size;
    for (int r = 0; r < n; r += LOGIT_CHUNK) {
        size_t rows = (size_t)(n - r < LOGIT_CHUNK ? n - r : LOGIT_CHUNK);
        TRY(gemm(c, rows, V, d, c->x, (size_t)(first + r) * d, &m->wf, (size_t)m->d_pitch, c->logits, 0));
        TRY(LAUNCH(c, bias_rows, rows * V, 0, A_MEM(c->logits), A_MEM(m->bf), A_INT((int)V), A_MEM(c->flags),
                   A_INT(flag_logits(c))));
        TRY(read_logits(c, dst + (size_t)r * V, rows));
    }
    return PLDR_OK;
}

static pldr_status check_ids(const pldr_context *c, const int32_t *ids, int n)
{
    if (!ids || n <= 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no tokens to evaluate");
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->m->cfg.vocab_size)
            return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "token id %d at position %d is outside the vocabulary [0, %d)",
                             (int)ids[i], i, c->m->cfg.vocab_size);
    if (n > c->n_ctx - c->n_past)
        return pldr_fail(PLDR_ERR_CONTEXT_FULL,
                         "the sequence would be %d tokens, more than the context of %d tokens (--ctx)",
                         c->n_past + n, c->n_ctx);
    return PLDR_OK;
}

/* The forward of an eval: returns in *rows_at the index of the first
 * hidden row of c->x that belongs to the new tokens, or -1 when the last
 * token went through the decode path (its logits input is c->s2). Only the
 * hidden rows of the new tokens' last `keep` are computed in full. */
static pldr_status run(pldr_context *c, const int32_t *ids, int n, int keep, int *rows_at)
{
    TRY(check_ids(c, ids, n));
    TRY(clear_flags(c));
    /* a greedy step feeding back the token the previous step left on the device */
    const int chained = c->next_on_device && n == 1 && ids[0] == c->last_next;
    c->next_on_device = 0;
    memcpy(c->tokens + c->n_past, ids, (size_t)n * sizeof *ids);
    if (c->p.cache_mode == PLDR_CACHE_NONE) {
        int total = c->n_past + n;
        TRY(forward_tokens(c, c->tokens, total, 0, 1, keep));
        *rows_at = c->n_past;
    } else if (c->n_past > 0 && n == 1) {
        TRY(decode_token(c, ids[0], c->n_past, chained));
        *rows_at = -1;
    } else {
        TRY(forward_tokens(c, ids, n, c->n_past, c->n_past == 0, keep));
        *rows_at = 0;
    }
    if (c->p.cache_mode != PLDR_CACHE_NONE)
        c->g_valid = 1;
    c->n_past += n;
    return PLDR_OK;
}

pldr_status pldr_eval(pldr_context *c, const int32_t *ids, int n, float *logits, int all_rows)
{
    pldr_clear_error();
    ahead_cancel(c);
    int rows_at;
    TRY(run(c, ids, n, logits && all_rows ? n : 1, &rows_at));
    if (!logits) {
        TRY(fetch_flags(c, c->n_flags, CL_TRUE));
        return check_flags(c);
    }
    if (rows_at < 0) {
        TRY(final_from_decode(c, 0));
        TRY(fetch_flags(c, c->n_flags, CL_FALSE));
        TRY(read_logits(c, logits, 1));
    } else if (all_rows) {
        TRY(logits_rows(c, rows_at, n, logits));
        TRY(fetch_flags(c, c->n_flags, CL_TRUE));
    } else {
        TRY(final_row(c, rows_at + n - 1));
        TRY(fetch_flags(c, c->n_flags, CL_FALSE));
        TRY(read_logits(c, logits, 1));
    }
    TRY(check_flags(c));
    if (c->p.check_finite) {
        size_t count = (size_t)(all_rows && rows_at >= 0 ? n : 1) * (size_t)c->m->cfg.vocab_size;
        for (size_t i = 0; i < count; i++)
            if (!isfinite(logits[i]))
                return pldr_fail(PLDR_ERR_NONFINITE, "non-finite logits");
    }
    return PLDR_OK;
}

/* Greedy decoding keeps the device busy across calls: once a step is
 * enqueued, the step after it (fed with the token the first leaves on the
 * device) is enqueued too, before the host waits for the first. Enqueueing a
 * step costs the host about as long as the device takes to run it on fast
 * GPUs, so the two now overlap. The step ahead is used when the next call
 * feeds back the token this one returned; any other call discards it: its
 * position n_past is not counted until then, and the cache rows it wrote
 * there are overwritten by whatever comes next. */
static void ahead_cancel(pldr_context *c)
{
    if (!c->ahead)
        return;
    clWaitForEvents(1, &c->slot_ev[c->slot]);
    clReleaseEvent(c->slot_ev[c->slot]);
    c->slot_ev[c->slot] = NULL;
    c->ahead = 0;
    c->flags_dirty = 1; /* it may have raised flags (next_on_device is 0 while a step is ahead) */
}

/* Enqueues the read of the flags and the greedy token into the next slot. */
static pldr_status read_slot(pldr_context *c)
{
    const int slot = c->slot ^ 1;
    cl_int err = clEnqueueReadBuffer(c->m->ocl.queue, c->flags, CL_FALSE, 0, ((size_t)c->n_flags + 1) * sizeof(int),
                                     c->slot_host[slot], 0, NULL, &c->slot_ev[slot]);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&c->m->ocl, err, "reading the greedy token");
    clFlush(c->m->ocl.queue);
    c->slot = slot;
    return PLDR_OK;
}

static pldr_status ahead_enqueue(pldr_context *c)
{
    if (!c->pipeline || c->p.cache_mode == PLDR_CACHE_NONE || c->n_past >= c->n_ctx)
        return PLDR_OK;
    TRY(decode_token(c, 0, c->n_past, 1));
    TRY(final_from_decode(c, 1));
    TRY(read_slot(c));
    c->ahead = 1;
    return PLDR_OK;
}

pldr_status pldr_eval_greedy(pldr_context *c, const int32_t *ids, int n, int32_t *next_id)
{
    pldr_clear_error();
    if (c->ahead && n == 1 && ids[0] == c->last_next) {
        /* this step is already on its way (ahead_enqueue checked its position) */
        c->ahead = 0;
        c->tokens[c->n_past++] = ids[0];
    } else {
        ahead_cancel(c);
        int rows_at;
        TRY(run(c, ids, n, 1, &rows_at));
        if (rows_at < 0) {
            TRY(final_from_decode(c, 1));
        } else {
            TRY(final_row(c, rows_at + n - 1));
            TRY(LAUNCH(c, argmax, (size_t)c->m->row_wg, (size_t)c->m->row_wg, A_MEM(c->logits),
                       A_INT(c->m->cfg.vocab_size), A_MEM(c->flags), A_INT(flag_logits(c)), A_INT(c->n_flags)));
        }
        TRY(read_slot(c));
    }
    const int slot = c->slot;
    pldr_status st = ahead_enqueue(c);
    const double w0 = c->host_timing ? pldr_now() : 0.0;
    cl_int err = clWaitForEvents(1, &c->slot_ev[slot]);
    if (c->host_timing)
        c->host_wait_ms += (pldr_now() - w0) * 1e3;
    clReleaseEvent(c->slot_ev[slot]);
    c->slot_ev[slot] = NULL;
    if (err != CL_SUCCESS) {
        ahead_cancel(c);
        return pldr_cl_fail(&c->m->ocl, err, "waiting for the greedy token");
    }
    memcpy(c->flags_host, c->slot_host[slot], ((size_t)c->n_flags + 1) * sizeof(int));
    if (st != PLDR_OK) {
        ahead_cancel(c);
        return st;
    }
    st = check_flags(c);
    if (st != PLDR_OK) {
        ahead_cancel(c);
        return st;
    }
    *next_id = c->flags_host[c->n_flags];
    c->last_next = *next_id;
    c->next_on_device = c->p.cache_mode != PLDR_CACHE_NONE && !c->ahead;
    return PLDR_OK;
}

/* ------------------------------------------------------------ context */

static pldr_status make_kernels(pldr_context *c)
{
    struct {
        cl_kernel *k;
        const char *name;
    } list[] = {
        {&c->k.embed, "embed_tokens"},       {&c->k.brln, "bias_residual_layernorm"},
        {&c->k.w2f, "weight_to_float"},     {&c->k.gemm_cpu, "gemm_cpu"},     {&c->k.qkv_rope, "qkv_rope"},
        {&c->k.metric, "metric_tensor"},     {&c->k.learner, "metric_learner"},
        {&c->k.learner_cpu, "metric_learner_cpu"}, {&c->k.metric_cpu, "metric_tensor_cpu"},
        {&c->k.att_prefill_cpu, "attention_prefill_cpu"}, {&c->k.potential_cpu, "plga_potential_cpu"},
        {&c->k.energy_cpu, "plga_energy_cpu"},
        {&c->k.potential, "plga_potential"}, {&c->k.energy, "plga_energy"},
        {&c->k.apply_g, "apply_g"},          {&c->k.att_prefill, "attention_prefill"},
        {&c->k.att_decode, "attention_decode"}, {&c->k.glu, "glu_gate"},
        {&c->k.gemv, "gemv"},                {&c->k.gemv_ln, "gemv_ln"},
        {&c->k.gemv_wide, "gemv_wide"},
        {&c->k.gemv_embed, "gemv_embed"},
        {&c->k.bias_rows, "add_bias_rows"},
        {&c->k.argmax, "argmax"},
    };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
        cl_int err;
        *list[i].k = clCreateKernel(c->m->program, list[i].name, &err);
        if (!*list[i].k) {
            char msg[128];
            snprintf(msg, sizeof msg, "creating kernel %s", list[i].name);
            return pldr_cl_fail(&c->m->ocl, err, msg);
        }
    }
    return PLDR_OK;
}

/* The page-locked staging area (see pldr_context.stage). */
static pldr_status map_stage(pldr_context *c)
{
    const pldr_ocl *o = &c->m->ocl;
    const size_t words = (size_t)c->n_flags + 1, ints = (3 * words + 3) & ~(size_t)3;
    const size_t bytes = ints * sizeof(int) + (size_t)c->m->cfg.vocab_size * sizeof(float);
    cl_int err;
    c->stage = clCreateBuffer(o->context, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR, bytes, NULL, &err);
    if (!c->stage)
        return pldr_cl_fail(o, err, "allocating page-locked host memory for the context");
    c->stage_ptr = clEnqueueMapBuffer(o->queue, c->stage, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0, bytes, 0, NULL,
                                      NULL, &err);
    if (!c->stage_ptr)
        return pldr_cl_fail(o, err, "mapping page-locked host memory for the context");
    memset(c->stage_ptr, 0, bytes);
    int *w = c->stage_ptr;
    c->slot_host[0] = w;
    c->slot_host[1] = w + words;
    c->flags_host = w + 2 * words;
    c->logit_row = (float *)(w + ints);
    return PLDR_OK;
}

static pldr_status ctx_buffer(pldr_context *c, cl_mem *b, size_t bytes, const char *what)
{
    return pldr_buffer(c->m, bytes, what, b, &c->device_bytes);
}

/* The decode-step buffer c->act (see pldr_context.act): its regions at
 * offsets aligned for sub-buffers, the sub-buffers, and cleared flags. */
static pldr_status make_act(pldr_context *c, size_t T)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t d = (size_t)cf->d_model, F = (size_t)cf->d_ff, V = (size_t)cf->vocab_size;
    cl_uint align_bits = 0;
    clGetDeviceInfo(m->ocl.device, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL);
    size_t align = align_bits / 8 > 256 ? align_bits / 8 : 256;
    const size_t max_split = (T + (size_t)m->att_wg - 1) / (size_t)m->att_wg;
    struct {
        int *off;
        size_t bytes;
        cl_mem *sub;
    } r[] = {
        {&c->off.s1, d * 4, &c->s1},
        {&c->off.s2, d * 4, &c->s2},
        {&c->off.xn, d * 4, &c->xn},
        {&c->off.x1n, d * 4, &c->x1n},
        {&c->off.qkv, 3 * d * 4, NULL},
        {&c->off.g, F * 4, NULL},
        {&c->off.att_part, (size_t)cf->n_heads * max_split * ((size_t)cf->head_dim + 2) * 4, NULL},
        {&c->off.att_count, (size_t)cf->n_heads * 4, NULL},
        {&c->off.att, d * 4, NULL},
        {&c->off.argmax_part, (V / (size_t)m->gemv_rows + 1) * 2 * 4, NULL},
        /* the flags, then the greedy token id and the argmax work-group counter */
        {&c->off.flags, ((size_t)c->n_flags + 2) * 4, &c->flags},
        {&c->off.ids, T * 4, &c->ids},
        {&c->off.rope, T * (size_t)cf->head_dim * 4, &c->rope},
        {&c->off.logits, LOGIT_CHUNK * V * 4, &c->logits},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
        if (total > INT32_MAX)
            return pldr_fail(PLDR_ERR_DEVICE_MEMORY, "the decode buffers of %zu tokens exceed 2 GiB", T);
        *r[i].off = (int)total;
        total += (r[i].bytes + align - 1) / align * align;
    }
    TRY(ctx_buffer(c, &c->act, total, "the decode-step buffer"));
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
        if (!r[i].sub)
            continue;
        cl_buffer_region reg = {(size_t)*r[i].off, r[i].bytes};
        cl_int err;
        *r[i].sub = clCreateSubBuffer(c->act, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &reg, &err);
        if (!*r[i].sub)
            return pldr_cl_fail(&m->ocl, err, "creating a region of the decode-step buffer");
    }
    const cl_uchar zero = 0;
    cl_int err = clEnqueueFillBuffer(m->ocl.queue, c->act, &zero, 1, 0, total, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&m->ocl, err, "clearing the decode-step buffer");
}

static pldr_status upload_rope(pldr_context *c)
{
    const pldr_config *cf = &c->m->cfg;
    const int half = cf->head_dim / 2;
    size_t n = (size_t)c->n_ctx * (size_t)half * 2;
    float *tab = malloc(n * sizeof *tab);
    if (!tab)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the RoPE table");
    for (int p = 0; p < c->n_ctx; p++)
        for (int i = 0; i < half; i++) {
            double inv = pow(cf->rope_theta, -2.0 * i / cf->head_dim);
            double ang = p * inv;
            tab[((size_t)p * half + i) * 2] = (float)cos(ang);
            tab[((size_t)p * half + i) * 2 + 1] = (float)sin(ang);
        }
    cl_int err = clEnqueueWriteBuffer(c->m->ocl.queue, c->rope, CL_TRUE, 0, n * sizeof *tab, tab, 0, NULL, NULL);
    free(tab);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "uploading the RoPE table");
}

/* A predefined G (custom_G_type) fills the G-cache once, from the checkpoint. */
static pldr_status fill_predefined_g(pldr_context *c)
{
    const pldr_config *cf = &c->m->cfg;
    if (cf->g_type == PLDR_G_LEARNED)
        return PLDR_OK;
    const size_t hdd = (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim * 4;
    for (int l = 0; l < cf->n_layers; l++) {
        cl_mem dst[3] = {c->g_a[l], c->g_alm[l], c->g_g[l]};
        for (int i = 0; i < 3; i++) {
            cl_int err = clEnqueueCopyBuffer(c->m->ocl.queue, c->m->layers[l].past_g, dst[i], (size_t)i * hdd, 0,
                                             hdd, 0, NULL, NULL);
            if (err != CL_SUCCESS)
                return pldr_cl_fail(&c->m->ocl, err, "copying the predefined G_LM");
        }
    }
    return PLDR_OK;
}

static pldr_status context_alloc(pldr_context *c)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t L = (size_t)cf->n_layers, d = (size_t)cf->d_model, F = (size_t)cf->d_ff;
    const size_t T = (size_t)c->n_ctx, V = (size_t)cf->vocab_size;
    const size_t hdd = (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim;

    /* what the context will need, checked before anything is allocated */
    uint64_t need = 2 * L * T * d * 4 + 3 * L * hdd * 4 + T * (size_t)cf->head_dim * 4 +
                    T * (2 * d + 3 * d + 4 * d + 2 * F + F) * 4 + LOGIT_CHUNK * V * 4 +
                    (m->wtype != PLDR_DTYPE_F32 && !m->own_gemm ? m->max_matrix_elems * 4 : 0);
    uint64_t have = m->ocl.info.global_mem_bytes;
    if (need + m->device_bytes > have)
        return pldr_fail(PLDR_ERR_DEVICE_MEMORY,
                         "a context of %d tokens needs %.1f MiB of device memory beside the %.1f MiB of weights, "
                         "but %s has %.1f MiB (try a smaller --ctx%s)",
                         c->n_ctx, need / 1048576.0, m->device_bytes / 1048576.0, m->ocl.info.name,
                         have / 1048576.0, m->wtype == PLDR_DTYPE_F32 ? ", or --dtype f16 or q8_0" : "");

    c->k_cache = calloc(L, sizeof(cl_mem));
    c->v_cache = calloc(L, sizeof(cl_mem));
    c->g_a = calloc(L, sizeof(cl_mem));
    c->g_alm = calloc(L, sizeof(cl_mem));
    c->g_g = calloc(L, sizeof(cl_mem));
    c->tokens = calloc(T, sizeof *c->tokens);
    c->n_flags = 3 * (int)L + 2;
    if (!c->k_cache || !c->v_cache || !c->g_a || !c->g_alm || !c->g_g || !c->tokens)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of host memory for the context");
    TRY(map_stage(c));
    for (size_t l = 0; l < L; l++) {
        TRY(ctx_buffer(c, &c->k_cache[l], T * d * 4, "the K cache"));
        TRY(ctx_buffer(c, &c->v_cache[l], T * d * 4, "the V cache"));
        TRY(ctx_buffer(c, &c->g_a[l], hdd * 4, "the G-cache"));
        TRY(ctx_buffer(c, &c->g_alm[l], hdd * 4, "the G-cache"));
        TRY(ctx_buffer(c, &c->g_g[l], hdd * 4, "the G-cache"));
    }
    TRY(make_act(c, T));
    cl_mem *td[] = {&c->x, &c->x1, &c->q, &c->qg, &c->att, &c->o};
    for (size_t i = 0; i < sizeof td / sizeof td[0]; i++)
        TRY(ctx_buffer(c, td[i], T * d * 4, "activations"));
    TRY(ctx_buffer(c, &c->qkv, T * 3 * d * 4, "activations"));
    TRY(ctx_buffer(c, &c->h, T * 2 * F * 4, "activations"));
    TRY(ctx_buffer(c, &c->g, T * F * 4, "activations"));
    TRY(ctx_buffer(c, &c->a0, hdd * 4, "the metric tensor"));
    TRY(ctx_buffer(c, &c->a_p, hdd * 4, "the metric tensor"));
    if (m->wtype != PLDR_DTYPE_F32 && !m->own_gemm)
        TRY(ctx_buffer(c, &c->w_scratch, m->max_matrix_elems * 4, "the float32 weight scratch"));
    return PLDR_OK;
}

pldr_status pldr_context_new(pldr_model *m, const pldr_context_params *params, pldr_context **out)
{
    *out = NULL;
    pldr_clear_error();
    pldr_context_params defaults = pldr_context_default_params();
    if (!params)
        params = &defaults;
    if (params->n_ctx < 0 || params->n_ctx > m->cfg.max_position)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "context size %d is outside [1, %d] (max_position_embeddings)",
                         params->n_ctx, m->cfg.max_position);
    if (params->cache_mode < PLDR_CACHE_NONE || params->cache_mode > PLDR_CACHE_KVG)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "unknown cache mode %d", (int)params->cache_mode);
    pldr_context *c = calloc(1, sizeof *c);
    if (!c)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    c->m = m;
    c->p = *params;
    c->n_ctx = params->n_ctx ? params->n_ctx : m->cfg.max_position;
    cl_command_queue_properties qp = 0;
    clGetCommandQueueInfo(m->ocl.queue, CL_QUEUE_PROPERTIES, sizeof qp, &qp, NULL);
    if (qp & CL_QUEUE_PROFILING_ENABLE) {
        c->cap_events = 4096;
        c->events = calloc((size_t)c->cap_events, sizeof *c->events);
        c->event_names = calloc((size_t)c->cap_events, sizeof *c->event_names);
        c->profile = c->events && c->event_names;
    }
    c->host_timing = !c->profile && getenv("PLDR_HOSTTIME") && atoi(getenv("PLDR_HOSTTIME")) > 0;
    const char *pipe = getenv("PLDR_PIPELINE");
    c->pipeline = !c->profile && !(pipe && strcmp(pipe, "0") == 0);
    pldr_status st = make_kernels(c);
    if (st == PLDR_OK)
        st = context_alloc(c);
    if (st == PLDR_OK)
        st = upload_rope(c);
    if (st == PLDR_OK)
        st = fill_predefined_g(c);
    if (st == PLDR_OK) {
        cl_int err = clFinish(m->ocl.queue);
        if (err != CL_SUCCESS)
            st = pldr_cl_fail(&m->ocl, err, "preparing the context");
    }
    if (st != PLDR_OK) {
        pldr_context_free(c);
        return st;
    }
    pldr_context_reset(c);
    *out = c;
    return PLDR_OK;
}

void pldr_context_free(pldr_context *c)
{
    if (!c)
        return;
    ahead_cancel(c);
    clFinish(c->m->ocl.queue);
    if (c->host_timing) {
        fprintf(stderr, "pldr host time: %ld launches, %.3f ms setting arguments, %.3f ms enqueueing, "
                "%.3f ms waiting for greedy tokens\n", c->host_launches, c->host_arg_ms, c->host_enq_ms,
                c->host_wait_ms);
        for (int i = 0; i < c->n_prof; i++)
            fprintf(stderr, "  enqueue %-24s %8.2f us/call, %ld calls\n", c->prof[i].name,
                    1000.0 * c->prof[i].ms / (double)c->prof[i].count, c->prof[i].count);
    }
    if (c->profile) {
        prof_collect(c);
        prof_print(c);
    }
    free(c->events);
    free(c->event_names);
    cl_mem **per_layer[] = {&c->k_cache, &c->v_cache, &c->g_a, &c->g_alm, &c->g_g};
    for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++) {
        cl_mem *arr = *per_layer[i];
        if (arr)
            for (int l = 0; l < c->m->cfg.n_layers; l++)
                pldr_release_mem(&arr[l]);
        free(arr);
    }
    cl_mem *single[] = {&c->rope, &c->ids, &c->x, &c->x1, &c->qkv, &c->q, &c->qg, &c->att, &c->o, &c->h,
                        &c->g, &c->a0, &c->a_p, &c->logits, &c->flags, &c->w_scratch,
                        &c->s1, &c->s2, &c->xn, &c->x1n, &c->act};
    for (size_t i = 0; i < sizeof single / sizeof single[0]; i++)
        pldr_release_mem(single[i]);
    cl_kernel *ks = (cl_kernel *)&c->k;
    for (size_t i = 0; i < sizeof c->k / sizeof(cl_kernel); i++)
        if (ks[i])
            clReleaseKernel(ks[i]);
    free(c->tokens);
    if (c->stage_ptr) {
        clEnqueueUnmapMemObject(c->m->ocl.queue, c->stage, c->stage_ptr, 0, NULL, NULL);
        clFinish(c->m->ocl.queue);
    }
    pldr_release_mem(&c->stage);
    free(c);
}

/* ------------------------------------------------------------ state */

static size_t hdd_of(const pldr_config *cf)
{
    return (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim;
}

static pldr_status copy_buffer(pldr_context *c, cl_mem b, size_t off, size_t bytes, void *host, int write)
{
    cl_int err = write ? clEnqueueWriteBuffer(c->m->ocl.queue, b, CL_TRUE, off, bytes, host, 0, NULL, NULL)
                       : clEnqueueReadBuffer(c->m->ocl.queue, b, CL_TRUE, off, bytes, host, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK
                             : pldr_cl_fail(&c->m->ocl, err, write ? "writing the caches" : "reading the caches");
}

pldr_status pldr_context_get_gcache(pldr_context *c, float *out)
{
    ahead_cancel(c);
    pldr_clear_error();
    const size_t hdd = hdd_of(&c->m->cfg);
    for (int l = 0; l < c->m->cfg.n_layers; l++) {
        cl_mem parts[3] = {c->g_a[l], c->g_alm[l], c->g_g[l]};
        for (int i = 0; i < 3; i++)
            TRY(copy_buffer(c, parts[i], 0, hdd * 4, out + ((size_t)l * 3 + (size_t)i) * hdd, 0));
    }
    return PLDR_OK;
}

pldr_status pldr_context_set_external_g(pldr_context *c, const float *a, const float *a_lm, const float *g_lm)
{
    ahead_cancel(c);
    pldr_clear_error();
    if (!g_lm)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no G_LM given");
    const size_t hdd = hdd_of(&c->m->cfg);
    float *zeros = calloc(hdd, sizeof *zeros);
    if (!zeros)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    pldr_status st = PLDR_OK;
    for (int l = 0; l < c->m->cfg.n_layers && st == PLDR_OK; l++) {
        const size_t o = (size_t)l * hdd;
        st = copy_buffer(c, c->g_g[l], 0, hdd * 4, (void *)(g_lm + o), 1);
        if (st == PLDR_OK)
            st = copy_buffer(c, c->g_a[l], 0, hdd * 4, a ? (void *)(a + o) : zeros, 1);
        if (st == PLDR_OK)
            st = copy_buffer(c, c->g_alm[l], 0, hdd * 4, a_lm ? (void *)(a_lm + o) : zeros, 1);
    }
    free(zeros);
    if (st == PLDR_OK) {
        c->external_g = 1;
        c->g_valid = 1;
    }
    return st;
}

void pldr_context_clear_external_g(pldr_context *c)
{
    ahead_cancel(c);
    c->external_g = 0;
    if (c->m->cfg.g_type == PLDR_G_LEARNED) {
        c->g_valid = 0;
    } else {
        fill_predefined_g(c);
        clFinish(c->m->ocl.queue);
    }
    if (c->n_past > 0 && c->m->cfg.g_type == PLDR_G_LEARNED)
        c->n_past = 0; /* the caches no longer match any G_LM: start over */
}

void pldr_state_free(pldr_state *s)
{
    if (!s)
        return;
    free(s->tokens);
    free(s->k);
    free(s->v);
    free(s->gcache);
    memset(s, 0, sizeof *s);
}

pldr_status pldr_context_get_state(pldr_context *c, pldr_state *s)
{
    ahead_cancel(c);
    pldr_clear_error();
    memset(s, 0, sizeof *s);
    const pldr_config *cf = &c->m->cfg;
    const size_t L = (size_t)cf->n_layers, d = (size_t)cf->d_model, n = (size_t)c->n_past;
    s->n_past = c->n_past;
    s->g_valid = c->g_valid;
    s->external_g = c->external_g;
    s->tokens = malloc((n ? n : 1) * sizeof *s->tokens);
    const size_t kv_elems = L * n * d > 0 ? L * n * d : 1;
    s->k = malloc(kv_elems * sizeof(float));
    s->v = malloc(kv_elems * sizeof(float));
    s->gcache = malloc(L * 3 * hdd_of(cf) * sizeof(float));
    if (!s->tokens || !s->k || !s->v || !s->gcache) {
        pldr_state_free(s);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the context state");
    }
    memcpy(s->tokens, c->tokens, n * sizeof *s->tokens);
    pldr_status st = PLDR_OK;
    for (size_t l = 0; l < L && st == PLDR_OK && n > 0; l++) {
        st = copy_buffer(c, c->k_cache[l], 0, n * d * 4, s->k + l * n * d, 0);
        if (st == PLDR_OK)
            st = copy_buffer(c, c->v_cache[l], 0, n * d * 4, s->v + l * n * d, 0);
    }
    if (st == PLDR_OK)
        st = pldr_context_get_gcache(c, s->gcache);
    if (st != PLDR_OK)
        pldr_state_free(s);
    return st;
}

pldr_status pldr_context_set_state(pldr_context *c, const pldr_state *s)
{
    ahead_cancel(c);
    pldr_clear_error();
    const pldr_config *cf = &c->m->cfg;
    const size_t L = (size_t)cf->n_layers, d = (size_t)cf->d_model, hdd = hdd_of(cf);
    if (s->n_past < 0 || s->n_past > c->n_ctx)
        return pldr_fail(PLDR_ERR_CONTEXT_FULL, "the state holds %d tokens, more than the context of %d tokens (--ctx)",
                         s->n_past, c->n_ctx);
    for (int i = 0; i < s->n_past; i++)
        if (s->tokens[i] < 0 || s->tokens[i] >= cf->vocab_size)
            return pldr_fail(PLDR_ERR_FORMAT, "the state holds token id %d, outside the vocabulary", (int)s->tokens[i]);
    const size_t n = (size_t)s->n_past;
    for (size_t l = 0; l < L && n > 0; l++) {
        TRY(copy_buffer(c, c->k_cache[l], 0, n * d * 4, s->k + l * n * d, 1));
        TRY(copy_buffer(c, c->v_cache[l], 0, n * d * 4, s->v + l * n * d, 1));
    }
    for (size_t l = 0; l < L; l++) {
        cl_mem parts[3] = {c->g_a[l], c->g_alm[l], c->g_g[l]};
        for (size_t i = 0; i < 3; i++)
            TRY(copy_buffer(c, parts[i], 0, hdd * 4, s->gcache + (l * 3 + i) * hdd, 1));
    }
    memcpy(c->tokens, s->tokens, n * sizeof *s->tokens);
    c->n_past = s->n_past;
    c->external_g = s->external_g;
    c->g_valid = s->g_valid || g_fixed(c);
    return PLDR_OK;
}
