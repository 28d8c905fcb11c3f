/* The inference context: parameters, buffers, kernels, creation and release. */
#include "config.h"

#include <clblast_c.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/env.h"
#include "common/util.h"

pldr_context_params pldr_context_default_params(void)
{
    pldr_context_params p;
    memset(&p, 0, sizeof p);
    p.n_ctx = 0;
    p.cache_mode = PLDR_CACHE_KVG;
    p.check_finite = 1;
    p.n_seq = 1;
    p.shared_g = PLDR_SHARED_G_NONE;
    /* the environment's defaults (src/common/env.c) */
    p.profile = pldr_env_profile();
    p.host_time = pldr_env_host_time();
    p.pipeline = pldr_env_pipeline();
    return p;
}

int pldr_context_n_past(const pldr_context *c) { return pldr_seq_n_past(c, 0); }
int pldr_context_n_seq(const pldr_context *c) { return c->n_seq; }

int pldr_seq_n_past(const pldr_context *c, int s)
{
    if (s < 0 || s >= c->n_seq)
        return -1;
    return s == c->cur ? c->n_past : c->seq[s].n_past;
}

void engine_seq_bind(pldr_context *c, int s)
{
    if (s == c->cur)
        return;
    engine_ahead_cancel(c);
    c->next_on_device = 0;
    pldr_seq *o = &c->seq[c->cur], *n = &c->seq[s];
    o->n_past = c->n_past;
    o->tokens = c->tokens;
    o->g_valid = c->g_valid;
    o->external_g = c->external_g;
    c->n_past = n->n_past;
    c->tokens = n->tokens;
    c->g_valid = n->g_valid;
    c->external_g = n->external_g;
    c->k_cache = n->k;
    c->v_cache = n->v;
    c->g_a = n->g_a;
    c->g_alm = n->g_alm;
    c->g_g = n->g_g;
    c->cur = s;
}

void pldr_seq_reset(pldr_context *c, int s)
{
    if (s < 0 || s >= c->n_seq)
        return;
    engine_seq_bind(c, s);
    engine_reset_bound(c);
}
int pldr_context_n_ctx(const pldr_context *c) { return c->n_ctx; }
uint64_t pldr_context_device_bytes(const pldr_context *c) { return c->device_bytes; }

pldr_cache_mode pldr_context_cache_mode(const pldr_context *c) { return c->p.cache_mode; }

void pldr_context_reset(pldr_context *c)
{
    engine_seq_bind(c, 0);
    engine_reset_bound(c);
}

void engine_reset_bound(pldr_context *c)
{
    engine_ahead_cancel(c);
    c->n_past = 0;
    c->g_valid = g_fixed(c);
}

static pldr_status make_kernels(pldr_context *c)
{
    const pldr_model *m = c->m;
    /* the program holds only the forms the device runs (src/model/model.c, build_program) */
    const int wg = m->wg_forms, cpu = !m->wg_forms;
    struct {
        cl_kernel *k;
        const char *name;
        int used;
    } list[] = {
        {&c->k.embed, "embed_tokens", 1},          {&c->k.brln, "bias_residual_layernorm", 1},
        {&c->k.w2f, "weight_to_float", 1}   ,        {&c->k.gemm_cpu, "gemm_cpu", m->own_gemm},
        {&c->k.qkv_rope, "qkv_rope", 1},           {&c->k.metric, "metric_tensor", wg},
        {&c->k.learner, "metric_learner", wg},     {&c->k.learner_cpu, "metric_learner_cpu", cpu},
        {&c->k.metric_cpu, "metric_tensor_cpu", cpu}, {&c->k.att_prefill_cpu, "attention_prefill_cpu", cpu},
        {&c->k.potential_cpu, "plga_potential_cpu", cpu}, {&c->k.energy_cpu, "plga_energy_cpu", cpu},
        {&c->k.potential, "plga_potential", wg},   {&c->k.energy, "plga_energy", wg},
        {&c->k.apply_g, "apply_g", 1},             {&c->k.att_prefill, "attention_prefill", wg},
        {&c->k.att_decode, "attention_decode", 1}, {&c->k.att_combine, "attention_combine", 1},
        {&c->k.glu, "glu_gate", 1},                {&c->k.gemv, "gemv", 1},
        {&c->k.gemv_ln, "gemv_ln", 1},             {&c->k.gemv_wide, "gemv_wide", 1},
        {&c->k.gemv_embed, "gemv_embed", 1},       {&c->k.bias_rows, "add_bias_rows", 1},
        {&c->k.argmax, "argmax", 1},               {&c->k.argmax_parts, "argmax_parts", 1},
        {&c->k.batch_gemv, "batch_gemv", 1},       {&c->k.batch_qkv_rope, "batch_qkv_rope", 1},
        {&c->k.batch_attention, "batch_attention", 1}, {&c->k.batch_argmax, "batch_argmax", 1},
        {&c->k.batch_attention_cpu, "batch_attention_cpu", cpu}, {&c->k.att_decode_cpu, "attention_decode_cpu", cpu},
    };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
        if (!list[i].used)
            continue;
        cl_int err;
        *list[i].k = clCreateKernel(m->program, list[i].name, &err);
        if (!*list[i].k) {
            char msg[128];
            snprintf(msg, sizeof msg, "creating kernel %s", list[i].name);
            return pldr_cl_fail(&m->ocl, err, msg);
        }
    }
    return PLDR_OK;
}

/* The page-locked staging area (see pldr_context.stage). */
static pldr_status map_stage(pldr_context *c)
{
    const pldr_ocl *o = &c->m->ocl;
    const size_t words = (size_t)c->n_flags + 1, ints = (3 * words + 3) & ~(size_t)3;
    const size_t bytes = ints * sizeof(int) + (size_t)c->m->cfg.n_outputs * sizeof(float);
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
    const size_t d = (size_t)cf->d_model, F = (size_t)cf->d_ff, V = (size_t)cf->n_outputs;
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
        {&c->off.att, d * 4, NULL},
        {&c->off.argmax_part, (V / (size_t)m->gemv_rows + 1) * 2 * 4, NULL},
        /* the flags, then the greedy token id */
        {&c->off.flags, ((size_t)c->n_flags + 1) * 4, &c->flags},
        {&c->off.ids, (size_t)c->act_rows * 4, &c->ids},
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
    cl_int err = clEnqueueFillBuffer(c->queue, c->act, &zero, 1, 0, total, 0, NULL, NULL);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&m->ocl, err, "clearing the decode-step buffer");
}

static pldr_status upload_rope(pldr_context *c)
{
    const pldr_config *cf = &c->m->cfg;
    const int half = cf->head_dim / 2;
    size_t n = (size_t)c->n_ctx * (size_t)half * 2;
    float *tab = malloc(n * sizeof *tab);
    double *inv = malloc((size_t)half * sizeof *inv);
    pldr_status st = tab && inv ? PLDR_OK : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the RoPE table");
    /* rope_scaling's frequencies; its attention factor scales cos and sin as
     * transformers does, so q and k carry it into the scores and into A */
    if (st == PLDR_OK)
        st = pldr_rope_inv_freq(cf, &c->m->cfg_extra, c->n_ctx, inv);
    if (st != PLDR_OK) {
        free(tab);
        free(inv);
        return st;
    }
    const double att = cf->rope_attention_factor;
    for (int p = 0; p < c->n_ctx; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * inv[i];
            tab[((size_t)p * half + i) * 2] = (float)(att == 1.0 ? cos(ang) : att * cos(ang));
            tab[((size_t)p * half + i) * 2 + 1] = (float)(att == 1.0 ? sin(ang) : att * sin(ang));
        }
    free(inv);
    cl_int err = clEnqueueWriteBuffer(c->queue, c->rope, CL_TRUE, 0, n * sizeof *tab, tab, 0, NULL, NULL);
    free(tab);
    return err == CL_SUCCESS ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "uploading the RoPE table");
}

/* A predefined G (custom_G_type) fills the G-cache once, from the checkpoint. */
pldr_status engine_fill_predefined_g(pldr_context *c, int first, int last)
{
    const pldr_config *cf = &c->m->cfg;
    if (cf->g_type == PLDR_G_LEARNED)
        return PLDR_OK;
    const size_t hdd = (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim * 4;
    for (int q = first; q < last; q++)
    for (int l = 0; l < cf->n_layers; l++) {
        const pldr_seq *sq = &c->seq[q];
        cl_mem dst[3] = {sq->g_a[l], sq->g_alm[l], sq->g_g[l]};
        for (int i = 0; i < 3; i++) {
            cl_int err = clEnqueueCopyBuffer(c->queue, c->m->layers[l].past_g, dst[i], (size_t)i * hdd, 0,
                                             hdd, 0, NULL, NULL);
            if (err != CL_SUCCESS)
                return pldr_cl_fail(&c->m->ocl, err, "copying the predefined G_LM");
        }
    }
    return PLDR_OK;
}

/* A region of buf for sequence s: the whole buffer with one sequence. */
static pldr_status seq_region(pldr_context *c, cl_mem buf, size_t stride, size_t bytes, int s, cl_mem *out)
{
    if (c->n_seq == 1) {
        clRetainMemObject(buf);
        *out = buf;
        return PLDR_OK;
    }
    cl_buffer_region reg = {(size_t)s * stride, bytes};
    cl_int err;
    *out = clCreateSubBuffer(buf, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &reg, &err);
    return *out ? PLDR_OK : pldr_cl_fail(&c->m->ocl, err, "creating a sequence's region of the caches");
}

/* Rounds bytes up to a multiple of the device's sub-buffer alignment. */
static size_t round_align(const pldr_context *c, size_t bytes)
{
    cl_uint align_bits = 0;
    clGetDeviceInfo(c->m->ocl.device, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL);
    const size_t align = align_bits / 8 > 256 ? align_bits / 8 : 256;
    return (bytes + align - 1) / align * align;
}

static pldr_status context_alloc(pldr_context *c)
{
    pldr_model *m = c->m;
    const pldr_config *cf = &m->cfg;
    const size_t L = (size_t)cf->n_layers, d = (size_t)cf->d_model, F = (size_t)cf->d_ff;
    const size_t T = (size_t)c->n_ctx, V = (size_t)cf->n_outputs, S = (size_t)c->n_seq;
    const size_t hdd = (size_t)cf->n_heads * (size_t)cf->head_dim * (size_t)cf->head_dim;
    const size_t R = T > S ? T : S; /* activation rows: a prefill, or a batched decode step */

    /* a sequence's cache region starts at an aligned row (sub-buffers) */
    c->kv_rows = T;
    if (S > 1)
        while (round_align(c, c->kv_rows * d * 4) != c->kv_rows * d * 4)
            c->kv_rows++;
    c->g_stride = (S > 1 ? round_align(c, hdd * 4) : hdd * 4) / 4;
    if (c->g_stride > INT_MAX) /* kernels/batch.cl takes it as an int */
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "a G-cache of %zu floats per sequence is too large", c->g_stride);
    c->act_rows = (int)R;

    /* what the context will need, checked before anything is allocated */
    const uint64_t per_seq = 2 * L * c->kv_rows * d * 4 + 3 * L * c->g_stride * 4;
    uint64_t need = S * per_seq + T * (size_t)cf->head_dim * 4 + R * (2 * d + 3 * d + 4 * d + 2 * F + F) * 4 +
                    LOGIT_CHUNK * V * 4 + (m->wtype != PLDR_DTYPE_F32 && !m->own_gemm ? m->max_matrix_elems * 4 : 0);
    uint64_t have = m->ocl.info.global_mem_bytes;
    if (need + m->device_bytes > have) {
        if (S > 1)
            return pldr_fail(PLDR_ERR_DEVICE_MEMORY,
                             "%d sequences of %d tokens need %.1f MiB of device memory (%.1f MiB of caches per "
                             "sequence) beside the %.1f MiB of weights, but %s has %.1f MiB (try fewer sequences "
                             "or a smaller --ctx)",
                             c->n_seq, c->n_ctx, need / 1048576.0, per_seq / 1048576.0, m->device_bytes / 1048576.0,
                             m->ocl.info.name, have / 1048576.0);
        return pldr_fail(PLDR_ERR_DEVICE_MEMORY,
                         "a context of %d tokens needs %.1f MiB of device memory beside the %.1f MiB of weights, "
                         "but %s has %.1f MiB (try a smaller --ctx%s)",
                         c->n_ctx, need / 1048576.0, m->device_bytes / 1048576.0, m->ocl.info.name,
                         have / 1048576.0, m->wtype == PLDR_DTYPE_F32 ? ", or --dtype f16 or q8_0" : "");
    }

    c->seq = calloc(S, sizeof *c->seq);
    c->k_all = calloc(L, sizeof(cl_mem));
    c->v_all = calloc(L, sizeof(cl_mem));
    c->ga_all = calloc(L, sizeof(cl_mem));
    c->galm_all = calloc(L, sizeof(cl_mem));
    c->gg_all = calloc(L, sizeof(cl_mem));
    c->batch_host = calloc(4 * S, sizeof *c->batch_host);
    c->batch_logits = calloc(LOGIT_CHUNK * V, sizeof *c->batch_logits);
    c->n_flags = 3 * (int)L + 2;
    if (!c->seq || !c->k_all || !c->v_all || !c->ga_all || !c->galm_all || !c->gg_all || !c->batch_host ||
        !c->batch_logits)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of host memory for the context");
    for (size_t q = 0; q < S; q++) {
        pldr_seq *sq = &c->seq[q];
        sq->k = calloc(L, sizeof(cl_mem));
        sq->v = calloc(L, sizeof(cl_mem));
        sq->g_a = calloc(L, sizeof(cl_mem));
        sq->g_alm = calloc(L, sizeof(cl_mem));
        sq->g_g = calloc(L, sizeof(cl_mem));
        sq->tokens = calloc(T, sizeof *sq->tokens);
        if (!sq->k || !sq->v || !sq->g_a || !sq->g_alm || !sq->g_g || !sq->tokens)
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of host memory for the context");
    }
    TRY(map_stage(c));
    const size_t kv_bytes = c->kv_rows * d * 4, g_bytes = c->g_stride * 4;
    for (size_t l = 0; l < L; l++) {
        TRY(ctx_buffer(c, &c->k_all[l], S * kv_bytes, "the K cache"));
        TRY(ctx_buffer(c, &c->v_all[l], S * kv_bytes, "the V cache"));
        TRY(ctx_buffer(c, &c->ga_all[l], S * g_bytes, "the G-cache"));
        TRY(ctx_buffer(c, &c->galm_all[l], S * g_bytes, "the G-cache"));
        TRY(ctx_buffer(c, &c->gg_all[l], S * g_bytes, "the G-cache"));
        for (size_t q = 0; q < S; q++) {
            pldr_seq *sq = &c->seq[q];
            TRY(seq_region(c, c->k_all[l], kv_bytes, T * d * 4, (int)q, &sq->k[l]));
            TRY(seq_region(c, c->v_all[l], kv_bytes, T * d * 4, (int)q, &sq->v[l]));
            TRY(seq_region(c, c->ga_all[l], g_bytes, hdd * 4, (int)q, &sq->g_a[l]));
            TRY(seq_region(c, c->galm_all[l], g_bytes, hdd * 4, (int)q, &sq->g_alm[l]));
            TRY(seq_region(c, c->gg_all[l], g_bytes, hdd * 4, (int)q, &sq->g_g[l]));
        }
    }
    c->cur = 0;
    c->tokens = c->seq[0].tokens;
    c->k_cache = c->seq[0].k;
    c->v_cache = c->seq[0].v;
    c->g_a = c->seq[0].g_a;
    c->g_alm = c->seq[0].g_alm;
    c->g_g = c->seq[0].g_g;
    TRY(make_act(c, T));
    cl_mem *td[] = {&c->x, &c->x1, &c->q, &c->qg, &c->att, &c->o};
    for (size_t i = 0; i < sizeof td / sizeof td[0]; i++)
        TRY(ctx_buffer(c, td[i], R * d * 4, "activations"));
    TRY(ctx_buffer(c, &c->qkv, R * 3 * d * 4, "activations"));
    TRY(ctx_buffer(c, &c->h, R * 2 * F * 4, "activations"));
    TRY(ctx_buffer(c, &c->g, R * F * 4, "activations"));
    TRY(ctx_buffer(c, &c->a0, hdd * 4, "the metric tensor"));
    TRY(ctx_buffer(c, &c->a_p, hdd * 4, "the metric tensor"));
    TRY(ctx_buffer(c, &c->seqinfo, S * 3 * 4, "the batch description"));
    TRY(ctx_buffer(c, &c->batch_ids, S * 4, "the batch's greedy tokens"));
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
    if (params->n_seq < 1 || params->n_seq > PLDR_MAX_SEQ)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "%d sequences is outside [1, %d]", params->n_seq, PLDR_MAX_SEQ);
    if (params->shared_g < PLDR_SHARED_G_NONE || params->shared_g > PLDR_SHARED_G_FIRST)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "unknown shared G mode %d", (int)params->shared_g);
    pldr_context *c = calloc(1, sizeof *c);
    if (!c)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    c->m = m;
    c->p = *params;
    c->n_ctx = params->n_ctx ? params->n_ctx : m->cfg.max_position;
    c->n_seq = params->n_seq;
    /* profile (PLDR_PROFILE=1): kernel times per name, reported when the context is freed */
    const cl_command_queue_properties qp = params->profile ? CL_QUEUE_PROFILING_ENABLE : 0;
    cl_int qerr;
    c->queue = clCreateCommandQueue(m->ocl.context, m->ocl.device, qp, &qerr);
    if (!c->queue) {
        free(c);
        return pldr_cl_fail(&m->ocl, qerr, "creating the context's command queue");
    }
    if (qp & CL_QUEUE_PROFILING_ENABLE) {
        c->cap_events = 4096;
        c->events = calloc((size_t)c->cap_events, sizeof *c->events);
        c->event_names = calloc((size_t)c->cap_events, sizeof *c->event_names);
        c->profile = c->events && c->event_names;
    }
    c->host_timing = !c->profile && params->host_time;
    c->pipeline = !c->profile && params->pipeline;
    pldr_status st = make_kernels(c);
    if (st == PLDR_OK)
        st = context_alloc(c);
    if (st == PLDR_OK)
        st = upload_rope(c);
    if (st == PLDR_OK)
        st = engine_fill_predefined_g(c, 0, c->n_seq);
    if (st == PLDR_OK) {
        cl_int err = clFinish(c->queue);
        if (err != CL_SUCCESS)
            st = pldr_cl_fail(&m->ocl, err, "preparing the context");
    }
    if (st != PLDR_OK) {
        pldr_context_free(c);
        return st;
    }
    for (int q = c->n_seq - 1; q >= 0; q--)
        pldr_seq_reset(c, q);
    *out = c;
    return PLDR_OK;
}

void pldr_context_free(pldr_context *c)
{
    if (!c)
        return;
    engine_ahead_cancel(c);
    clFinish(c->queue);
    if (c->host_timing) {
        pldr_log(PLDR_LOG_INFO, "pldr host time: %ld launches, %.3f ms setting arguments, %.3f ms enqueueing, "
                "%.3f ms waiting for greedy tokens\n", c->host_launches, c->host_arg_ms, c->host_enq_ms,
                c->host_wait_ms);
        for (int i = 0; i < c->n_prof; i++)
            pldr_log(PLDR_LOG_INFO, "  enqueue %-24s %8.2f us/call, %ld calls\n", c->prof[i].name,
                    1000.0 * c->prof[i].ms / (double)c->prof[i].count, c->prof[i].count);
    }
    if (c->profile) {
        engine_prof_collect(c);
        engine_prof_print(c);
    }
    free(c->events);
    free(c->event_names);
    for (int q = 0; c->seq && q < c->n_seq; q++) {
        pldr_seq *sq = &c->seq[q];
        cl_mem *per_seq[] = {sq->k, sq->v, sq->g_a, sq->g_alm, sq->g_g};
        for (size_t i = 0; i < sizeof per_seq / sizeof per_seq[0]; i++) {
            if (per_seq[i])
                for (int l = 0; l < c->m->cfg.n_layers; l++)
                    pldr_release_mem(&per_seq[i][l]);
            free(per_seq[i]);
        }
        free(sq->tokens);
    }
    free(c->seq);
    cl_mem *per_layer[] = {c->k_all, c->v_all, c->ga_all, c->galm_all, c->gg_all};
    for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++) {
        if (per_layer[i])
            for (int l = 0; l < c->m->cfg.n_layers; l++)
                pldr_release_mem(&per_layer[i][l]);
        free(per_layer[i]);
    }
    free(c->batch_host);
    free(c->batch_logits);
    cl_mem *single[] = {&c->rope, &c->ids, &c->x, &c->x1, &c->qkv, &c->q, &c->qg, &c->att, &c->o, &c->h,
                        &c->g, &c->a0, &c->a_p, &c->logits, &c->flags, &c->w_scratch,
                        &c->s1, &c->s2, &c->xn, &c->x1n, &c->act, &c->seqinfo, &c->batch_ids};
    for (size_t i = 0; i < sizeof single / sizeof single[0]; i++)
        pldr_release_mem(single[i]);
    cl_kernel *ks = (cl_kernel *)&c->k;
    for (size_t i = 0; i < sizeof c->k / sizeof(cl_kernel); i++)
        if (ks[i])
            clReleaseKernel(ks[i]);
    if (c->stage_ptr) {
        clEnqueueUnmapMemObject(c->queue, c->stage, c->stage_ptr, 0, NULL, NULL);
        clFinish(c->queue);
    }
    pldr_release_mem(&c->stage);
    clReleaseCommandQueue(c->queue);
    free(c);
}

const pldr_model *pldr_context_model(const pldr_context *c)
{
    return c ? c->m : NULL;
}
