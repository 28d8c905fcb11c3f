/* Internal to the engine (src/engine/): the inference context, the launch
 * helpers every pass uses, and the functions the engine's files share.
 *   launch.c   kernel launches and profiling (PLDR_PROFILE, PLDR_HOSTTIME)
 *   gemm.c     products: GEMM (CLBlast or kernels/gemm.cl) and the decode GEMVs
 *   plga.c     the deductive branch: metric learner and PLGA into the G-cache
 *   forward.c  the passes (prefill forward, decode step), logits, pldr_eval
 *   greedy.c   greedy decoding with the next step enqueued ahead
 *   context.c  context creation, buffers, release
 *   state.c    G-cache access, external G, state get/set */
#ifndef PLDR_ENGINE_H
#define PLDR_ENGINE_H

#include "model/model.h"

#define LOGIT_CHUNK 64 /* rows of logits computed and read back at a time */

typedef struct kernels {
    cl_kernel embed, brln, w2f, qkv_rope, metric, learner, potential, energy;
    cl_kernel gemm_cpu, learner_cpu, metric_cpu, att_prefill_cpu, att_decode_cpu, potential_cpu, energy_cpu; /* CPU devices */
    cl_kernel apply_g, att_prefill, att_decode, att_combine, glu, gemv, gemv_wide, gemv_ln, gemv_embed, bias_rows,
        argmax, argmax_parts;
    cl_kernel batch_gemv, batch_qkv_rope, batch_attention, batch_attention_cpu, batch_argmax; /* kernels/batch.cl */
} kernels;

/* One sequence of a context: what the context's single-sequence fields
 * (n_past .. external_g, k_cache .. g_g) hold while it is bound (see
 * engine_seq_bind). With one sequence its arrays are the whole caches; with
 * several, sub-buffers of them (pldr_context.k_all ..). */
typedef struct pldr_seq {
    int n_past;
    int32_t *tokens;
    int g_valid, external_g;
    cl_mem *k, *v, *g_a, *g_alm, *g_g; /* per layer */
} pldr_seq;

struct pldr_context {
    pldr_model *m;
    cl_command_queue queue; /* the context's own: contexts of one model may run in different threads */
    pldr_context_params p;
    int n_ctx;
    int n_past;
    int32_t *tokens; /* the sequence so far (for mode NONE) */
    int g_valid;     /* the G-cache holds the prefill's A, A_LM, G_LM */
    int external_g;  /* the G-cache was set from outside: never recomputed */
    kernels k;
    uint64_t device_bytes;
    /* sequences: seq[cur] is bound to the fields above and below */
    int n_seq, cur;
    pldr_seq *seq;
    int shared_g_ready;          /* PLDR_SHARED_G_FIRST: the first prompt's G-cache is in every sequence */
    cl_mem *k_all, *v_all;       /* per layer [n_seq, kv_rows, d] */
    cl_mem *ga_all, *galm_all, *gg_all; /* per layer [n_seq, g_stride] */
    size_t kv_rows;              /* cache rows per sequence: n_ctx, padded so that regions are aligned */
    size_t g_stride;             /* floats per sequence in the G-cache buffers */
    int act_rows;                /* rows of the activations: max(n_ctx, n_seq) */
    cl_mem seqinfo;              /* batched decode: (sequence, position, first cache row) per row */
    cl_mem batch_ids;            /* batched greedy decode: the argmax per row */
    int *batch_host;             /* host copies: 3 ints per row, then ids */
    float *batch_logits;         /* [LOGIT_CHUNK, V] */
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
static inline int flag_att(int l) { return 2 * l; }
static inline int flag_ffn(int l) { return 2 * l + 1; }
static inline int flag_g(const pldr_context *c, int l) { return 2 * c->m->cfg.n_layers + l; }
static inline int flag_logits(const pldr_context *c) { return 3 * c->m->cfg.n_layers; }
static inline int flag_embed(const pldr_context *c) { return 3 * c->m->cfg.n_layers + 1; }

/* Whether G_LM comes from outside the metric learner (checkpoint or caller). */
static inline int g_fixed(const pldr_context *c) { return c->external_g || c->m->cfg.g_type != PLDR_G_LEARNED; }

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
/* sizes go to kernels as 32-bit integers (64-bit ones are optional in some
 * device profiles) */
#define A_UINT(v) ((arg){sizeof(cl_uint), &(cl_uint){(v)}})
#define A_LOCAL(n) ((arg){(n), NULL})
/* the scales argument of a kernel reading weight matrix *w (pldr_scales) */
#define A_SCALES(w) ((arg){sizeof(cl_mem), &(cl_mem){pldr_scales(w)}})

pldr_status engine_launch(pldr_context *c, cl_kernel k, const char *name, size_t offset, size_t global,
                          size_t local, int n_args, const arg *args);
#define LAUNCH_FROM(c, kern, name, offset, global, local, ...)                                     \
    engine_launch((c), (c)->k.kern, (name), (offset), (global), (local),                                  \
           (int)(sizeof((arg[]){__VA_ARGS__}) / sizeof(arg)), (arg[]){__VA_ARGS__})
#define LAUNCH_AS(c, kern, name, global, local, ...) LAUNCH_FROM(c, kern, name, 0, global, local, __VA_ARGS__)
#define LAUNCH(c, kern, global, local, ...) LAUNCH_AS(c, kern, #kern, global, local, __VA_ARGS__)

void engine_prof_add(pldr_context *c, const char *name, double ms);
void engine_prof_collect(pldr_context *c);
void engine_prof_print(pldr_context *c);


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
static inline int multi_lane(const pldr_model *m)
{
    return m->gemv_rows < m->gemv_wg;
}

/* Local memory for x in gemv_ln and gemv_embed: only the one-lane form
 * (kernels/gemv.cl) keeps x there. */
static inline size_t ln_x_local(const pldr_model *m, int pitch)
{
    return (multi_lane(m) ? 1 : (size_t)pitch) * sizeof(float);
}

static inline int pitch_of(const pldr_model *m, int k_dim)
{
    return k_dim == m->cfg.d_model ? m->d_pitch : m->f_pitch;
}

pldr_status engine_gemm(pldr_context *c, size_t M, size_t N, size_t K, cl_mem a, size_t a_off, const pldr_weight *w,
                        size_t w_pitch, cl_mem out, size_t out_off);
pldr_status engine_gemv(pldr_context *c, const gemv_op *op);

pldr_status engine_layer_g(pldr_context *c, int l, int T, int full);

pldr_status engine_run(pldr_context *c, const int32_t *ids, int n, int keep, int *rows_at);
pldr_status engine_decode_token(pldr_context *c, int32_t id, int pos, int chained);
pldr_status engine_final_from_decode(pldr_context *c, int argmax);
pldr_status engine_final_row(pldr_context *c, int row);
pldr_status engine_check_flags(pldr_context *c);

void engine_ahead_cancel(pldr_context *c);

/* pldr_eval and pldr_eval_greedy on the bound sequence. */
pldr_status engine_eval_bound(pldr_context *c, const int32_t *ids, int n, float *logits, int all_rows);
pldr_status engine_eval_greedy_bound(pldr_context *c, const int32_t *ids, int n, int32_t *next_id);
/* PLDR_SHARED_G_FIRST: the bound sequence's G-cache, just computed, into
 * every sequence, each marked as holding an external G from now on. */
pldr_status engine_share_g(pldr_context *c);
/* pldr_context_reset of the bound sequence. */
void engine_reset_bound(pldr_context *c);
/* Makes sequence s the one the single-sequence fields describe. */
void engine_seq_bind(pldr_context *c, int s);
/* C[M, N] = A[M, K] . W[N, K]^T for the few rows of a batched decode step. */
pldr_status engine_gemm_rows(pldr_context *c, size_t M, size_t N, size_t K, cl_mem a, const pldr_weight *w, size_t w_pitch,
                             cl_mem out);
pldr_status engine_clear_flags(pldr_context *c);
pldr_status engine_fetch_flags(pldr_context *c, int words, cl_bool blocking);

/* Fills the G-caches of sequences [first, last) with a predefined G. */
pldr_status engine_fill_predefined_g(pldr_context *c, int first, int last);

#endif
