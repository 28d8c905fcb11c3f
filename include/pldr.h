/*
 * pldr: an OpenCL inference engine for PLDR-LLM (Large Language Model from
 * Power Law Decoder Representations).
 *
 * Conventions of this API:
 *  - Handles are opaque; every constructor has one destructor.
 *  - Parameter structs come from *_default_params() and are edited field by
 *    field, so new fields do not break callers.
 *  - Every call that can fail returns a pldr_status; the detailed message of
 *    the last failure on the calling thread is pldr_last_error(). No call
 *    aborts or exits the host program.
 */
#ifndef PLDR_H
#define PLDR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PLDR_VERSION_STRING "0.1.0"

typedef enum pldr_status {
    PLDR_OK = 0,
    PLDR_ERR_INVALID_ARGUMENT, /* a bad value passed by the caller */
    PLDR_ERR_IO,               /* a file could not be read or written */
    PLDR_ERR_FORMAT,           /* a file is damaged or not what it claims */
    PLDR_ERR_UNSUPPORTED,      /* valid input this engine does not handle */
    PLDR_ERR_NO_DEVICE,        /* no OpenCL device, or none matching the spec */
    PLDR_ERR_OPENCL,           /* an OpenCL or CLBlast call failed */
    PLDR_ERR_KERNEL_BUILD,     /* a kernel failed to compile (log in message) */
    PLDR_ERR_HOST_MEMORY,      /* host allocation failed */
    PLDR_ERR_DEVICE_MEMORY,    /* device allocation failed or would not fit */
    PLDR_ERR_CONTEXT_FULL,     /* the sequence would exceed the context */
    PLDR_ERR_NONFINITE,        /* non-finite activations or logits */
    PLDR_ERR_MISMATCH,         /* e.g. a session or G-cache from another model */
    PLDR_ERR_OUTPUT,           /* an output file could not be written (the old one is kept) */
    PLDR_ERR_BUSY              /* a queue is full: try again later */
} pldr_status;

/* ------------------------------------------------------------------ */
/* Logging and threads                                                 */
/* The library never writes to stdout or stderr. Warnings (an ignored
 * PLDR_WG item, a damaged tuning file, an unwritable kernel cache) and the
 * diagnostics that environment variables ask for (PLDR_PROFILE,
 * PLDR_HOSTTIME, PLDR_BUILD_LOG) go to one process-wide callback; without
 * one (the default) they are dropped. The callback may be called from any
 * thread that calls into the library, and must not call into it.
 *
 * Threads: a model may be shared by several contexts; a context is used by
 * one thread at a time (its calls, and those of a pldr_gen or a session on
 * it, are not synchronised); different contexts, of one model or of several,
 * may run in different threads at the same time: each context has its own
 * OpenCL command queue and kernels, and the model is read-only after load.
 * Loading and freeing models, pldr_list_devices and pldr_log_set may be
 * called from any thread. pldr_last_error is per thread.
 *
 * Environment variables are read only where parameters get their defaults,
 * never while loading, evaluating or generating: pldr_model_default_params
 * (PLDR_KERNEL_DIR, PLDR_ZERO_COPY, PLDR_WG, PLDR_GEMM, PLDR_TUNING,
 * PLDR_BUILD_LOG, PLDR_KERNEL_LIMITS), pldr_context_default_params
 * (PLDR_PROFILE, PLDR_HOSTTIME, PLDR_PIPELINE), pldr_select_device with an empty spec (PLDR_DEVICE), a
 * NULL cache_dir (XDG_CACHE_HOME, HOME) and the tuners' first-use checks
 * (PLDR_TUNING). A caller that sets the fields decides alone.
 * docs/engine.md describes each. */

typedef enum pldr_log_level {
    PLDR_LOG_WARN = 1, /* something was ignored: one line, no trailing newline */
    PLDR_LOG_INFO = 2  /* diagnostics asked for: text to show as is (may hold newlines) */
} pldr_log_level;

typedef void (*pldr_log_fn)(pldr_log_level level, const char *message, void *user);
/* Sets the callback (NULL: drop the messages). */
void pldr_log_set(pldr_log_fn fn, void *user);

/* Short fixed description of a status code. */
const char *pldr_status_string(pldr_status status);
/* Detailed message of the last failure on this thread ("" if none). */
const char *pldr_last_error(void);

/* ------------------------------------------------------------------ */
/* Devices                                                             */

typedef struct pldr_device_info {
    int index;          /* global index used by device specs */
    int platform_index; /* position of the platform */
    int device_index;   /* position of the device within its platform */
    char platform[128];
    char platform_version[128];
    char name[128];
    char vendor[128];
    char driver_version[64];
    char opencl_c_version[64];
    char type[16]; /* "GPU", "CPU", "ACCELERATOR", "OTHER" */
    unsigned compute_units;
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes;
    uint64_t local_mem_bytes;
    size_t max_work_group_size;
    int fp16;           /* cl_khr_fp16 */
    int fp64;           /* cl_khr_fp64 */
    int unified_memory; /* CL_DEVICE_HOST_UNIFIED_MEMORY */
    unsigned mem_base_align; /* CL_DEVICE_MEM_BASE_ADDR_ALIGN, in bytes */
    int int64;          /* 64-bit integers in kernels: CL_DEVICE_PROFILE FULL_PROFILE, or cles_khr_int64 */
} pldr_device_info;

/* Lists every device of every platform. Free the array with free(). */
pldr_status pldr_list_devices(pldr_device_info **devices, int *count);

/* Resolves a device spec: NULL or "" (then $PLDR_DEVICE, then the first
 * GPU, else the first device), an index ("1"), "platform:device" ("0:1"),
 * a device type ("cpu", "gpu", "accelerator": the first of that type), or a
 * case-insensitive name substring ("nvidia", "pocl"). */
pldr_status pldr_select_device(const char *spec, pldr_device_info *out);

/* ------------------------------------------------------------------ */
/* Model configuration (config.json)                                   */

typedef enum pldr_g_type {
    PLDR_G_LEARNED = 0, /* custom_G_type null: metric learner present */
    PLDR_G_IDENTITY,
    PLDR_G_RANDOM,
    PLDR_G_EXTERNAL
} pldr_g_type;

/* The model class (config.json "architectures"): one decoder, and what runs
 * after its last layer. */
typedef enum pldr_arch {
    PLDR_ARCH_CAUSAL_LM = 0,           /* PldrllmForCausalLM: final_layer, next-token logits */
    PLDR_ARCH_MODEL,                   /* PldrllmModel: the last hidden state, no head */
    PLDR_ARCH_TOKEN_CLASSIFICATION,    /* score [num_labels, d] with bias, every position */
    PLDR_ARCH_SEQUENCE_CLASSIFICATION, /* score [num_labels, d], no bias, the last non-pad token */
    PLDR_ARCH_QUESTION_ANSWERING       /* qa_outputs [2, d] with bias: start and end logits */
} pldr_arch;

/* The Hugging Face class name of an architecture ("PldrllmForCausalLM"). */
const char *pldr_arch_name(pldr_arch arch);

/* rope_scaling's type (Hugging Face rope types; rotate-half RoPE only). */
typedef enum pldr_rope_type {
    PLDR_ROPE_DEFAULT = 0, /* no rope_scaling, or type "default" */
    PLDR_ROPE_LINEAR,
    PLDR_ROPE_DYNAMIC,
    PLDR_ROPE_YARN,
    PLDR_ROPE_LLAMA3,
    PLDR_ROPE_LONGROPE
} pldr_rope_type;

typedef struct pldr_config {
    int n_layers;      /* num_hidden_layers, L */
    int d_model;       /* hidden_size, d */
    int n_heads;       /* num_attention_heads, H */
    int head_dim;      /* head_dim, dk */
    int d_ff;          /* intermediate_size, F */
    int n_reslayer_a;  /* num_reslayerA, R */
    int n_dense_a;     /* num_denseA, D */
    int a_dff;         /* A_dff, Fa */
    int vocab_size;    /* V */
    int max_position;  /* max_position_embeddings */
    double layer_norm_eps;
    double rope_theta;
    int reference_rope; /* 1: interleaved pairs; 0: rotate-half */
    pldr_g_type g_type;
    int attention_bias, glu_bias, final_bias;
    int bos_token_id, eos_token_id, pad_token_id;
    pldr_arch arch; /* architectures[0]; absent: PLDR_ARCH_CAUSAL_LM */
    /* outputs of the head per row: the labels of a classifier (id2label, or
     * label2id; 2 when neither is given), 2 for question answering (start,
     * end), vocab_size for a causal LM, d_model for PldrllmModel */
    int n_outputs;
    int num_labels; /* classifiers: labels; otherwise 0 */
    /* rope_scaling, computed as transformers' modeling_rope_utils does */
    pldr_rope_type rope_type;
    double rope_factor;             /* "factor" (1 when unused) */
    double rope_attention_factor;   /* multiplies cos and sin (yarn, longrope); else 1 */
    int rope_original_max_position; /* original_max_position_embeddings (0: not given) */
    char dtype[16]; /* "dtype" (or the older "torch_dtype"): "float32", ...; "" when absent */
} pldr_config;

/* Parses and range-checks a config.json. */
pldr_status pldr_config_load(const char *path, pldr_config *config);

/* ------------------------------------------------------------------ */
/* Model and context                                                   */

typedef struct pldr_model pldr_model;
typedef struct pldr_context pldr_context;

/* Storage of the large weight matrices (attention projections, FFN, final
 * layer, embedding) on the device; LayerNorms, biases, the metric learner and
 * the PLGA tensors stay float32, and so does all arithmetic. BF16 keeps the
 * upper half of each float32 (rounded to nearest even); Q8_0 and Q4_0 are
 * llama.cpp's blocks of 32 weights with one half scale each (8.5 and 4.5 bits
 * per weight), quantized at load from the checkpoint's values. */
typedef enum pldr_dtype {
    PLDR_DTYPE_F32 = 0,
    PLDR_DTYPE_F16 = 1,
    PLDR_DTYPE_BF16 = 2,
    PLDR_DTYPE_Q8_0 = 3,
    PLDR_DTYPE_Q4_0 = 4
} pldr_dtype;
#define PLDR_DTYPE_COUNT 5

/* "f32", "f16", "bf16", "q8_0", "q4_0"; NULL for a value outside the enum. */
const char *pldr_dtype_name(pldr_dtype dtype);
/* The dtype of one of those names (case-insensitive); PLDR_ERR_INVALID_ARGUMENT
 * for any other string. */
pldr_status pldr_dtype_from_name(const char *name, pldr_dtype *dtype);

typedef enum pldr_cache_mode {
    PLDR_CACHE_NONE = 0, /* every step recomputes the whole sequence */
    PLDR_CACHE_KV = 1,   /* K, V and A cached; G_LM recomputed per step */
    PLDR_CACHE_KVG = 2   /* K, V and [A, A_LM, G_LM] cached */
} pldr_cache_mode;

/* Called during long work (upload, kernel compilation). done <= total. */
typedef void (*pldr_progress_fn)(const char *what, uint64_t done, uint64_t total, void *user);

typedef struct pldr_model_params {
    const char *device;     /* device spec, see pldr_select_device */
    pldr_dtype weight_dtype; /* storage of the large matrices on the device */
    const char *kernel_dir; /* read .cl files from here; NULL: the embedded
                               ones (default: $PLDR_KERNEL_DIR) */
    const char *cache_dir;  /* program-binary cache (default: $XDG_CACHE_HOME/pldr
                               or ~/.cache/pldr); "" disables it */
    pldr_progress_fn progress;
    void *progress_user;
    int zero_copy; /* 1 (default): on a device that shares memory with the host,
                      float32 weights stored as F32 are used in place from the
                      file mapping where their layout and alignment allow
                      (CL_MEM_USE_HOST_PTR); 0 (default with $PLDR_ZERO_COPY=0):
                      copied */
    const char *work_groups; /* NULL (default): the kernels' work-group shapes are the
                                device's defaults, then those `pldr tune` stored for
                                this device and model, then wg_overrides' items; else
                                the defaults and these items only (PLDR_WG's syntax,
                                e.g. "gemv=256,rows=8"; "" for the defaults alone) */
    const char *wg_overrides; /* with work_groups NULL: items applied over the tuned
                                 shapes (default: $PLDR_WG) */
    const char *gemm;  /* products of a prefill: "clblast", "own" (kernels/gemm.cl) or
                          NULL for the device's choice, CLBlast except on CPUs
                          (default: $PLDR_GEMM; another value is ignored with a warning) */
    int tuning;        /* 1 (default): apply the tuning files `pldr tune` stored for the
                          device; 0 (default with $PLDR_TUNING=0, off or no): neither */
    int build_log;     /* 1: the kernel compiler's warnings go to the log callback
                          (default: 1 when $PLDR_BUILD_LOG is set and not 0) */
    const char *kernel_limits; /* lower limits than the device's for some kernels, as
                                  "NAME=N,*=N,local=BYTES" (testing the fitting of
                                  shapes; default: $PLDR_KERNEL_LIMITS) */
} pldr_model_params;

pldr_model_params pldr_model_default_params(void);

/* Loads a Hugging Face checkpoint directory (config.json plus
 * model.safetensors or shards with model.safetensors.index.json),
 * validates every tensor and uploads the weights to the device. */
pldr_status pldr_model_load(const char *dir, const pldr_model_params *params, pldr_model **model);
void pldr_model_free(pldr_model *model);

const pldr_config *pldr_model_config(const pldr_model *model);
/* The device the model lives on. */
const pldr_device_info *pldr_model_device(const pldr_model *model);
/* Number of parameters (weights and biases) in the checkpoint. */
uint64_t pldr_model_n_params(const pldr_model *model);
/* A 64-bit fingerprint of the config and every weight byte (crc32 of the
 * tensor data combined with a hash of the config and tensor names), used to
 * match sessions and caches to the model that made them. */
uint64_t pldr_model_fingerprint(const pldr_model *model);
/* Bytes of device memory held by the weights. */
uint64_t pldr_model_device_bytes(const pldr_model *model);
/* The part of pldr_model_device_bytes that is not a copy: weights the device
 * reads in place from the checkpoint's file mapping (see zero_copy). */
uint64_t pldr_model_zero_copy_bytes(const pldr_model *model);
/* The options the kernels were built with: the model's dimensions and the
 * work-group shapes chosen for the device (its defaults, `pldr tune`'s choice,
 * PLDR_WG or pldr_model_params.work_groups), as -D defines.
 * The string belongs to the model and lives until pldr_model_free. */
const char *pldr_model_kernel_options(const pldr_model *model);
/* What the load changed to fit each kernel's own limits on the device
 * (CL_KERNEL_WORK_GROUP_SIZE, local memory), one line per change, e.g. a
 * work-group shape lowered and the kernels rebuilt; "" when nothing was.
 * The string belongs to the model and lives until pldr_model_free. */
const char *pldr_model_kernel_notes(const pldr_model *model);
/* 1 when the work-group shapes `pldr tune` stored for this device, model and
 * weight dtype were applied at load (see pldr_model_params.work_groups). */
int pldr_model_decode_tuned(const pldr_model *model);
/* The storage dtype of the large matrices (pldr_model_params.weight_dtype). */
pldr_dtype pldr_model_weight_dtype(const pldr_model *model);
/* Seconds pldr_model_load spent converting the large matrices to the weight
 * dtype (rounding to BF16, quantizing to Q8_0 / Q4_0); 0 for F32 and F16. */
double pldr_model_quantize_seconds(const pldr_model *model);
/* Seconds the load spent building the kernels: compiling them on a first
 * start, reading the compiled binaries from the cache later. Some drivers
 * (PoCL) compile further at each kernel's first launch: see
 * pldr_generate_warmup. */
double pldr_model_build_seconds(const pldr_model *model);
/* 1 when the load compiled the kernels from source (a first start for this
 * device, driver and model dimensions), 0 when it read them from the cache. */
int pldr_model_kernels_compiled(const pldr_model *model);

/* Measures the device's memory bandwidth (bytes read + written per second):
 * the best of a copy kernel, the driver's copy and a read-only kernel, each
 * repeated for at least a quarter of a second, on buffers of up to 256 MiB
 * and of the size one decode step reads (caches may hold that). */
pldr_status pldr_model_measure_bandwidth(pldr_model *model, double *bytes_per_second);
/* Bytes one decode step reads from the weights (every matrix except the
 * embedding, of which it reads one row). */
uint64_t pldr_model_decode_bytes(const pldr_model *model);

/* Whether the sequences of a context share one G-cache (see pldr_eval_batch). */
typedef enum pldr_shared_g {
    PLDR_SHARED_G_NONE = 0, /* each sequence's A and G_LM come from its own prompt */
    PLDR_SHARED_G_EXTERNAL, /* pldr_context_set_external_g sets G_LM for every sequence */
    PLDR_SHARED_G_FIRST     /* the G-cache of the first prompt prefilled serves every
                               later prompt, whose prefill skips the metric learner
                               (the Hugging Face port's cache_first_G) */
} pldr_shared_g;

#define PLDR_MAX_SEQ 1024

typedef struct pldr_context_params {
    int n_ctx;                  /* 0: max_position_embeddings; per sequence */
    pldr_cache_mode cache_mode; /* default PLDR_CACHE_KVG */
    int check_finite;           /* 1 (default): report non-finite values */
    int n_seq;                  /* sequences the context holds, 1 (default) .. PLDR_MAX_SEQ;
                                   the calls without a sequence argument act on sequence 0 */
    pldr_shared_g shared_g;     /* default PLDR_SHARED_G_NONE */
    int profile;   /* 1: device time per kernel name, reported to the log callback when
                      the context is freed (default: 1 when $PLDR_PROFILE is set and not 0) */
    int host_time; /* 1 (without profile): host time per kernel name, likewise
                      (default: 1 when $PLDR_HOSTTIME is a number > 0) */
    int pipeline;  /* 1 (default; 0 with $PLDR_PIPELINE=0 or with profile): greedy decode
                      enqueues the next step before the previous token is read back */
} pldr_context_params;

pldr_context_params pldr_context_default_params(void);
pldr_status pldr_context_new(pldr_model *model, const pldr_context_params *params, pldr_context **ctx);
void pldr_context_free(pldr_context *ctx);

/* Forgets every token; the next eval is a prefill again. */
void pldr_context_reset(pldr_context *ctx);
/* Tokens processed so far. */
int pldr_context_n_past(const pldr_context *ctx);
int pldr_context_n_ctx(const pldr_context *ctx);
/* Bytes of device memory held by the context (caches and activations). */
uint64_t pldr_context_device_bytes(const pldr_context *ctx);

/* Appends n tokens to the sequence and runs the model over them.
 *  - first call after creation/reset: one forward over the n tokens
 *    (the "prefill"); with KV/KVG caches, A and G_LM come from these tokens.
 *  - later calls: KV/KVG modes process only the new tokens through the
 *    caches; mode NONE recomputes a full forward over the whole sequence.
 * logits: NULL, or room for n_rows x n_outputs floats (vocab_size for a
 * causal LM; see "Model classes") where n_rows is n if all_rows is non-zero,
 * else 1 (the last token's logits). */
pldr_status pldr_eval(pldr_context *ctx, const int32_t *ids, int n, float *logits, int all_rows);

/* The G-cache: per layer [A, A_LM, G_LM], each [H, dk, dk], as one float32
 * array [L, 3, H, dk, dk]. A is the metric learner's output (the input of
 * A_LM = iSwiGLU(W A + b) + 1e-9). Valid after the first eval (for a
 * predefined or external G, from the start); in mode NONE it holds the last
 * forward's tensors. */
pldr_status pldr_context_get_gcache(pldr_context *ctx, float *out);
/* Replaces the metric learner with given tensors from the first forward on,
 * in every mode (the paper's predefined G_LM). g_lm is [L, H, dk, dk]; a and
 * a_lm may be NULL (then stored as zeros: they only feed reports). The
 * context keeps using them until pldr_context_clear_external_g. */
pldr_status pldr_context_set_external_g(pldr_context *ctx, const float *a, const float *a_lm, const float *g_lm);
void pldr_context_clear_external_g(pldr_context *ctx);

/* Snapshot of a context for sessions: the tokens, K and V of every layer for
 * the first n_past positions, and the G-cache. */
typedef struct pldr_state {
    int n_past;
    int g_valid;     /* the G-cache is in use */
    int external_g;  /* it came from pldr_context_set_external_g */
    int32_t *tokens; /* [n_past] */
    float *k, *v;    /* [L, n_past, d] */
    float *gcache;   /* [L, 3, H, dk, dk] */
} pldr_state;

/* Copies the context's state to host memory (free with pldr_state_free). */
pldr_status pldr_context_get_state(pldr_context *ctx, pldr_state *state);
/* Restores a state taken from a context of the same model and cache mode. */
pldr_status pldr_context_set_state(pldr_context *ctx, const pldr_state *state);
void pldr_state_free(pldr_state *state);
pldr_cache_mode pldr_context_cache_mode(const pldr_context *ctx);

/* As pldr_eval, but returns only the argmax of the last row, computed on the
 * device (greedy decoding without reading the logits back). */
pldr_status pldr_eval_greedy(pldr_context *ctx, const int32_t *ids, int n, int32_t *next_id);
/* Waits until the device has finished all work enqueued for ctx and drops
 * the greedy step pldr_eval_greedy enqueues ahead, so that the next call
 * computes its step from scratch (for timing: a timer started after this
 * counts every step it times, and none that ran before it). */
pldr_status pldr_context_finish(pldr_context *ctx);

/* ------------------------------------------------------------------ */
/* Model classes and their heads                                       */
/* pldr_model_config(model)->arch names the class. Its head runs on the
 * device after the decoder as pldr_eval's output layer, so a row of
 * pldr_eval's output holds n_outputs values: next-token logits (causal LM),
 * the last hidden state (PldrllmModel), label logits (token and sequence
 * classification; a sequence's result is the row of pldr_sequence_row), or
 * the start and end logits of question answering. */

/* The model a context runs. */
const pldr_model *pldr_context_model(const pldr_context *ctx);
/* A classifier's label name by id (config.json id2label), or NULL. */
const char *pldr_model_label(const pldr_model *model, int id);
/* Sequence classification's row of ids: the last token that is not
 * pad_token_id (0 when every token is), as transformers takes it. */
int pldr_sequence_row(const pldr_model *model, const int32_t *ids, int n);
/* Resets the context and runs one forward over ids through the head. out:
 * [*n_rows, n_outputs] floats with *n_rows = 1 for sequence classification
 * (the row of pldr_sequence_row) and n otherwise; room for n rows is enough. */
pldr_status pldr_eval_head(pldr_context *ctx, const int32_t *ids, int n, float *out, int *n_rows);
/* As pldr_eval with every row, but writes the decoder's last hidden state of
 * each new token ([n, d_model], before any head), for every class. */
pldr_status pldr_eval_hidden(pldr_context *ctx, const int32_t *ids, int n, float *hidden);

/* Batches: several sequences of one context at once                  */
/* Each sequence has its own positions, K/V caches and G-cache: its A and
 * G_LM come from its own prompt only (prompts are never padded together), so
 * its logits do not depend on the other sequences of a batch beyond float
 * rounding (the batched products sum in another order: within 1e-5 relative
 * in float32). */

typedef struct pldr_batch_entry {
    int seq;              /* 0 .. n_seq-1, at most once per call */
    const int32_t *ids;   /* tokens appended to the sequence */
    int n;
} pldr_batch_entry;

/* Appends each entry's tokens to its sequence: an empty sequence is
 * prefilled with them (its own forward), a sequence given one token is
 * decoded, and the decoded sequences go through the layers together (each
 * weight read once for all of them) in cache modes KV and KVG; in mode NONE,
 * and for entries of several tokens after a prefill, one after another.
 * logits: NULL or [n_entries, vocab_size], the last token's logits of each
 * entry; greedy_ids: NULL or [n_entries], the argmax of each (computed on the
 * device when logits is NULL). A failure leaves the sequences' token counts
 * as they were only for the entries not yet evaluated: reset the sequences
 * of a failed batch. */
pldr_status pldr_eval_batch(pldr_context *ctx, const pldr_batch_entry *entries, int n_entries, float *logits,
                            int32_t *greedy_ids);
int pldr_context_n_seq(const pldr_context *ctx);
/* Forgets sequence seq's tokens (its slot is then as new). */
void pldr_seq_reset(pldr_context *ctx, int seq);
/* Tokens processed by sequence seq (-1: no such sequence). */
int pldr_seq_n_past(const pldr_context *ctx, int seq);
/* The per-sequence forms of pldr_context_get_state, _set_state,
 * _set_external_g and _clear_external_g. */
pldr_status pldr_seq_get_state(pldr_context *ctx, int seq, pldr_state *state);
pldr_status pldr_seq_set_state(pldr_context *ctx, int seq, const pldr_state *state);
pldr_status pldr_seq_set_external_g(pldr_context *ctx, int seq, const float *a, const float *a_lm,
                                    const float *g_lm);
void pldr_seq_clear_external_g(pldr_context *ctx, int seq);

/* ------------------------------------------------------------------ */
/* Sampling                                                            */

typedef struct pldr_sampler pldr_sampler;

typedef struct pldr_sampler_params {
    float temperature; /* 0: greedy */
    int top_k;         /* 0: off; 1: greedy */
    float top_p;       /* in (0, 1]; 1: off */
    uint64_t seed;
    float min_p;       /* in [0, 1]; 0 (default): off */
} pldr_sampler_params;

pldr_sampler_params pldr_sampler_default_params(void);
/* Fails with PLDR_ERR_INVALID_ARGUMENT for a negative temperature or top_k,
 * top_p outside (0, 1] or min_p outside [0, 1]. */
pldr_status pldr_sampler_new(const pldr_sampler_params *params, pldr_sampler **sampler);
void pldr_sampler_free(pldr_sampler *sampler);
/* Whether the sampler always picks the largest logit. */
int pldr_sampler_is_greedy(const pldr_sampler *sampler);
/* Draws a token id from one row of logits (temperature, then top-k, then
 * top-p, then min-p, applied in that order; see pldr_generate_params). */
int32_t pldr_sampler_sample(pldr_sampler *sampler, const float *logits, int n_vocab);

/* ------------------------------------------------------------------ */
/* Tokenizer (SentencePiece unigram model)                            */

typedef struct pldr_tokenizer pldr_tokenizer;

pldr_status pldr_tokenizer_load(const char *path, pldr_tokenizer **tok);
void pldr_tokenizer_free(pldr_tokenizer *tok);
int pldr_tokenizer_vocab_size(const pldr_tokenizer *tok);

/* Encodes text (no BOS/EOS). *ids is malloc'ed; free() it. */
pldr_status pldr_tokenize(const pldr_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                          size_t *n_ids);
/* Decodes ids to UTF-8 text (NUL-terminated, *len excludes the NUL).
 * *text is malloc'ed; free() it. */
pldr_status pldr_detokenize(const pldr_tokenizer *tok, const int32_t *ids, size_t n_ids, char **text,
                            size_t *len);
/* The piece string of an id, or NULL when out of range. */
const char *pldr_token_piece(const pldr_tokenizer *tok, int32_t id);

/* tokenizer_config.json beside a checkpoint (transformers' tokenizer
 * settings). The engine's assumptions: no BOS or EOS around a prompt, no
 * padding, and special tokens that are the pieces of config.json's ids. */
typedef struct pldr_tokenizer_config {
    int present;                    /* the file exists (otherwise all zero) */
    int add_bos_token, add_eos_token; /* honoured by pldr_tokenize_prompt */
    char padding_side[16];          /* "right", "left" or "" */
    char bos_token[64], eos_token[64], pad_token[64], unk_token[64];
    char warnings[1024]; /* where the file disagrees with the engine's
                            assumptions or the model, one line each; "" if none */
} pldr_tokenizer_config;

/* Reads DIR/tokenizer_config.json when present (absent is PLDR_OK with
 * present = 0). tok and config may be NULL (no special-token checks). */
pldr_status pldr_tokenizer_config_load(const char *dir, const pldr_tokenizer *tok, const pldr_config *config,
                                       pldr_tokenizer_config *out);
/* pldr_tokenize, then config->bos_token_id before the ids and eos_token_id
 * after them where tc says add_bos_token / add_eos_token (tc may be NULL). */
pldr_status pldr_tokenize_prompt(const pldr_tokenizer *tok, const pldr_tokenizer_config *tc,
                                 const pldr_config *config, const char *text, size_t len, int32_t **ids,
                                 size_t *n_ids);

/* ------------------------------------------------------------------ */
/* Generation                                                          */
/* Text generation with the sampling and stopping semantics of llama.cpp and
 * the OpenAI API. A token is picked from the logits of the sequence's last
 * token in this order:
 *   1. logit bias: bias_values[i] is added to the logit of bias_ids[i]
 *      (-INFINITY bans a token);
 *   2. penalties over the window of the last repeat_last_n tokens of the
 *      sequence (the prompt given to this generation included; -1: all of
 *      them; 0: none): each distinct token of the window with count c gets
 *      logit / repeat_penalty if its logit is positive, else logit *
 *      repeat_penalty (llama.cpp's repeat penalty), and then
 *      - c * frequency_penalty - presence_penalty (OpenAI's penalties);
 *   3. ignore_eos: the end-of-sequence token's logit becomes -INFINITY;
 *   4. temperature 0 (or top_k 1): the largest logit (the lowest id among
 *      equals); otherwise softmax(logits / temperature), restricted to the
 *      top_k most likely tokens (0: all), then to the smallest prefix of
 *      those, most likely first, whose probability reaches top_p (nucleus),
 *      then to the tokens whose probability is at least min_p times the most
 *      likely one's, and a draw from what remains, renormalized, with a
 *      generator seeded by seed (the same seed and inputs give the same
 *      tokens).
 * Text: every picked token's text is decoded incrementally (constant work
 * per token); bytes that begin a UTF-8 character are held until it is
 * complete. The generation ends with a finish reason:
 *   STOP      the end-of-sequence token was picked (unless ignore_eos), or
 *             the text contains one of the stop strings: a stop string may
 *             span tokens and is never part of the text handed out; the text
 *             that could begin one is held back until it cannot;
 *   LENGTH    max_tokens tokens were picked;
 *   CONTEXT   the context is full: no token is picked that could not be fed
 *             (so that a session saved then holds every token handed out);
 *   CANCELLED the token callback returned non-zero. */

typedef enum pldr_finish_reason {
    PLDR_FINISH_NONE = 0,
    PLDR_FINISH_STOP,
    PLDR_FINISH_LENGTH,
    PLDR_FINISH_CONTEXT,
    PLDR_FINISH_CANCELLED
} pldr_finish_reason;

/* "stop", "length", "context", "cancelled" (OpenAI's names; "" for NONE). */
const char *pldr_finish_reason_string(pldr_finish_reason why);

typedef struct pldr_generate_params {
    int max_tokens;          /* tokens to pick at most (the end-of-sequence token
                                counts); -1 (default): until the context is full;
                                0: only the prompt is fed */
    float temperature;       /* >= 0; 0 (default): greedy */
    int top_k;               /* >= 0; 0 (default): off */
    float top_p;             /* (0, 1]; 1 (default): off */
    float min_p;             /* [0, 1]; 0 (default): off */
    float repeat_penalty;    /* > 0; 1 (default): off */
    int repeat_last_n;       /* window of the penalties, >= -1 (default 64) */
    float presence_penalty;  /* 0 (default): off */
    float frequency_penalty; /* 0 (default): off */
    const int32_t *bias_ids; /* logit bias: n_bias ids and values (copied) */
    const float *bias_values;
    int n_bias;
    const char *const *stop; /* n_stop non-empty stop strings (copied) */
    int n_stop;
    int ignore_eos;          /* 1: the end-of-sequence token is never picked */
    int n_logprobs;          /* 0..20: report this many most likely alternatives
                                with each token (pldr_token_event.top_*) */
    uint64_t seed;           /* default 0 */
    int logprob;             /* 1: report each token's log-probability (implied by
                                n_logprobs > 0); else pldr_token_event.logprob is NaN */
    int32_t eos_id;          /* the end-of-sequence token; -1 (default): pldr_generate
                                takes the model's eos_token_id, pldr_gen has none;
                                PLDR_EOS_NONE: none for pldr_generate either (the
                                model's is picked and fed like any other token) */
    float *out_logits;       /* pldr_generate only: NULL, or room for vocab_size
                                floats that receive the logits of the context's last
                                token when generation ends (for sessions) */
} pldr_generate_params;

#define PLDR_EOS_NONE (-2)

pldr_generate_params pldr_generate_default_params(void);

/* One picked token, or (id -1) text released at the end. Log-probabilities
 * are those of the model's distribution: the log-softmax of the logits,
 * before bias, penalties and temperature. The pointers are valid until the
 * next call on the same pldr_gen. */
typedef struct pldr_token_event {
    int32_t id;            /* the token, or -1 for text released when a sequence ends */
    const char *text;      /* the text this token completes (not NUL-terminated) */
    size_t text_len;
    float logprob;         /* NaN unless requested (logprob, n_logprobs) */
    int n_top;             /* the n_logprobs most likely tokens, most likely first */
    const int32_t *top_ids;
    const float *top_logprobs;
} pldr_token_event;

/* Called for each event; non-zero cancels the generation. */
typedef int (*pldr_token_fn)(const pldr_token_event *ev, void *user);

typedef struct pldr_generate_result {
    pldr_finish_reason finish;
    int n_prompt;     /* tokens fed before the first pick */
    int n_generated;  /* tokens picked (the end-of-sequence token included) */
    double t_load_s;  /* one-off work of the first forward (kernel compilation) */
    double t_prefill_s; /* from the start to the first token picked */
    double t_decode_s;  /* from the first token picked to the end */
    int32_t pending_id; /* the last picked token when it was not fed to the context
                           (finish LENGTH, CONTEXT or CANCELLED), else -1 */
} pldr_generate_result;

/* The stepwise generator of one sequence: sampling, penalties, stop strings
 * and detokenization, without a model. Batching and servers drive it: feed
 * the prompt, then per step hand the last row of logits to pldr_gen_next
 * (or, when pldr_gen_needs_logits is 0, the device's greedy id to
 * pldr_gen_accept) and feed the picked token, until *finish != NONE. */
typedef struct pldr_gen pldr_gen;

/* tok may be NULL (then no text). Fails with PLDR_ERR_INVALID_ARGUMENT for
 * a parameter outside the ranges above. */
pldr_status pldr_gen_new(const pldr_tokenizer *tok, const pldr_generate_params *p, int n_vocab, pldr_gen **out);
/* The tokens before the first pick (the penalties' window). */
pldr_status pldr_gen_set_prompt(pldr_gen *g, const int32_t *ids, int n);
/* Picks the next token from a row of n_vocab logits (left untouched),
 * advances detokenization and stop matching. *finish != NONE ends the
 * sequence; ev then also carries the text released by the end. */
pldr_status pldr_gen_next(pldr_gen *g, const float *logits, pldr_token_event *ev, pldr_finish_reason *finish);
/* As pldr_gen_next, for a token picked elsewhere (the device's argmax). */
pldr_status pldr_gen_accept(pldr_gen *g, int32_t id, pldr_token_event *ev, pldr_finish_reason *finish);
/* Ends the sequence for a reason the gen did not see (context full,
 * cancelled): ev (id -1) carries the text still held back (a partial stop
 * string, an incomplete UTF-8 character as U+FFFD). */
pldr_status pldr_gen_finish(pldr_gen *g, pldr_finish_reason why, pldr_token_event *ev);
/* 0 when the device's argmax is enough to pick every token (greedy, no
 * bias, penalties, ignore_eos or log-probabilities). */
int pldr_gen_needs_logits(const pldr_gen *g);
void pldr_gen_free(pldr_gen *g);

/* Launches the kernels that generating after an n_prompt-token prompt uses
 * (a prefill of n_prompt tokens and a decode step, with logits and greedy)
 * and resets ctx: a driver that compiles a kernel at its first launch, for
 * each launch shape (PoCL), does it here rather than in the first prompt.
 * Call it on a new context, before restoring a state or setting an external
 * G-cache. Costs two prefills and two steps when nothing is left to compile:
 * worth it after a load that compiled (pldr_model_kernels_compiled). */
pldr_status pldr_generate_warmup(pldr_context *ctx, int n_prompt);
/* Generates from ctx: tokenizes the prompt (without BOS or EOS), appends it
 * to what ctx already holds, and picks tokens until a finish reason, calling
 * cb (may be NULL) with each event. res (may be NULL) gets the counts and
 * timings. A prompt that does not fit in the context is
 * PLDR_ERR_CONTEXT_FULL before any work. With a greedy pldr_generate_params,
 * the tokens are those of pldr_eval_greedy. */
pldr_status pldr_generate(pldr_context *ctx, const pldr_tokenizer *tok, const char *prompt, size_t prompt_len,
                          const pldr_generate_params *p, pldr_token_fn cb, void *user, pldr_generate_result *res);
/* As pldr_generate, from token ids. n may be 0 when next_logits holds the
 * logits of ctx's last token (a restored session): the first token is then
 * picked from them without a forward. */
pldr_status pldr_generate_ids(pldr_context *ctx, const pldr_tokenizer *tok, const int32_t *ids, int n,
                              const float *next_logits, const pldr_generate_params *p, pldr_token_fn cb, void *user,
                              pldr_generate_result *res);

/* ------------------------------------------------------------------ */
/* Continuous batching                                                 */
/* A queue of generation requests over a multi-sequence context: at most
 * max_active of them hold a sequence of the context at a time; each step
 * prefills waiting requests into free sequences and decodes every active
 * one in one pldr_eval_batch call; a finished request's sequence is reset
 * for the next. A pldr_gen per request picks its tokens (sampling, stop
 * strings, streaming); greedy texts are those of pldr_generate on the same
 * prompt alone (up to ties within float rounding). */

typedef struct pldr_scheduler pldr_scheduler;

typedef struct pldr_request {
    const int32_t *prompt_ids; /* copied at submit */
    int n_prompt;
    pldr_generate_params gen;  /* stop strings and logit bias copied; out_logits unused;
                                  eos_id -1: the model's eos_token_id */
    pldr_token_fn on_token;    /* NULL or called from the stepping thread with each
                                  event; non-zero cancels the request */
    void (*on_done)(const pldr_generate_result *r, void *user); /* NULL or called once,
                                  from the stepping thread, when the request ends (finish
                                  NONE: the batch failed, see pldr_scheduler_step) */
    void *user;
} pldr_request;

/* max_active: 1 .. pldr_context_n_seq(ctx); max_queue: requests waiting at
 * most. The scheduler uses the context's sequences 0 .. max_active-1 and
 * resets them; tok may be NULL (no text). */
pldr_status pldr_scheduler_new(pldr_context *ctx, const pldr_tokenizer *tok, int max_active, int max_queue,
                               pldr_scheduler **out);
/* Thread-safe. Checks the request (prompt ids, parameters: PLDR_ERR_INVALID_ARGUMENT;
 * a prompt longer than the context: PLDR_ERR_CONTEXT_FULL) and queues it; a
 * full queue is PLDR_ERR_BUSY. *id (may be NULL) names it for cancel. */
pldr_status pldr_scheduler_submit(pldr_scheduler *s, const pldr_request *r, uint64_t *id);
/* Thread-safe. The request ends (PLDR_FINISH_CANCELLED) at the next step;
 * unknown or finished ids are ignored. */
void pldr_scheduler_cancel(pldr_scheduler *s, uint64_t id);
/* One batched step, from one thread at a time: waits up to timeout_ms for
 * work when there is none, admits waiting requests into free sequences and
 * evaluates every active request once (prompt or one token). A failed
 * evaluation returns its status and ends the requests of that step with
 * finish PLDR_FINISH_NONE. */
pldr_status pldr_scheduler_step(pldr_scheduler *s, int timeout_ms);
/* Thread-safe: requests holding a sequence, and waiting. */
void pldr_scheduler_stats(pldr_scheduler *s, int *active, int *queued);
/* Ends without calling back the requests still active or queued. */
void pldr_scheduler_free(pldr_scheduler *s);

/* ------------------------------------------------------------------ */
/* Sessions                                                            */
/* A session file holds a context's state (tokens, K and V, the G-cache)
 * and the logits the next token is to be drawn from, zlib-compressed after
 * a header that names the model (fingerprint, dims, weight dtype) and the
 * cache mode, with CRC32s of the header and of the payload. In every call
 * below, `model` must be the model the context was made with. */

typedef struct pldr_session_info {
    uint32_t version;
    uint64_t fingerprint;
    pldr_dtype weight_dtype;
    pldr_cache_mode cache_mode;
    int n_layers, d_model, n_heads, head_dim, vocab_size;
    int n_tokens;   /* tokens processed by the context */
    int has_logits; /* the next-token logits are stored */
    int external_g; /* the G-cache came from pldr_context_set_external_g */
} pldr_session_info;

/* What pldr_session_load gives back besides the restored context. */
typedef struct pldr_session {
    pldr_session_info info;
    int32_t *tokens; /* [info.n_tokens] */
    float *logits;   /* [info.vocab_size], NULL when not stored */
} pldr_session;

/* Writes the context's state to path (atomically). last_logits: NULL, or the
 * vocab_size logits of the context's last token (what the next token is
 * drawn from), so that a restored run continues without any forward. */
pldr_status pldr_session_save(pldr_context *ctx, const pldr_model *model, const char *path,
                              const float *last_logits);
/* Reads and checks only the header (no model needed). */
pldr_status pldr_session_read_info(const char *path, pldr_session_info *info);
/* Restores a session into ctx. A session of another model (fingerprint,
 * dims), weight dtype or cache mode is PLDR_ERR_MISMATCH; a damaged or
 * truncated file PLDR_ERR_FORMAT; one longer than the context
 * PLDR_ERR_CONTEXT_FULL; ctx is untouched on failure. out may be NULL;
 * otherwise free it with pldr_session_clear. */
pldr_status pldr_session_load(pldr_context *ctx, const pldr_model *model, const char *path, pldr_session *out);
void pldr_session_clear(pldr_session *session);

/* ------------------------------------------------------------------ */
/* G-cache files                                                       */
/* A safetensors file with G_LM and optionally A and A_LM, each of shape
 * [L, H, dk, dk] or [L, 1, H, dk, dk], in F32, F16 or BF16 (A is the
 * metric learner's output, as in pldr_context_get_gcache). */

typedef struct pldr_gcache {
    int n_layers, n_heads, head_dim;
    float *a, *a_lm, *g_lm; /* [L, H, dk, dk] each; a and a_lm may be NULL */
} pldr_gcache;

/* Reads a G-cache file; the dims come from G_LM. */
pldr_status pldr_gcache_read(const char *path, pldr_gcache *gcache);
/* Writes A, A_LM (those present) and G_LM as F32 [L, H, dk, dk] with
 * __metadata__ holding the model fingerprint and the prompt token count
 * (omitted when n_tokens < 0). */
pldr_status pldr_gcache_write(const char *path, const pldr_gcache *gcache, uint64_t fingerprint, int n_tokens);
/* The context's G-cache, split into A, A_LM and G_LM. */
pldr_status pldr_gcache_from_context(pldr_context *ctx, const pldr_model *model, pldr_gcache *gcache);
void pldr_gcache_free(pldr_gcache *gcache);
/* Reads a G-cache file, checks its dims against the model (a mismatch is
 * PLDR_ERR_MISMATCH naming the expected shape) and installs it with
 * pldr_context_set_external_g. */
pldr_status pldr_context_load_gcache(pldr_context *ctx, const pldr_model *model, const char *path);

/* ------------------------------------------------------------------ */
/* Tuning (`pldr tune`)                                                */
/* Two per-device searches whose results are stored in the cache directory
 * ($XDG_CACHE_HOME/pldr or ~/.cache/pldr) and applied by every later
 * pldr_model_load on that device (PLDR_TUNING=0 in the environment skips
 * both files):
 *  - CLBlast's GEMM kernels for the matrix shapes a model's prefill runs
 *    (row-major C[T, out] = X[T, in] . W[out, in]^T): CLBlast's defaults,
 *    then explicit parameter sets of its indirect kernel "Xgemm" (GEMMK 0
 *    and 1) and of the direct kernel "XgemmDirect"; the winner combines the
 *    best indirect and the best direct set with the switch-over size
 *    (XGEMM_MIN_INDIRECT_SIZE) that minimises the total time over the
 *    shapes, each weighted by how many times a forward calls it; the file
 *    records the times before and after.
 *  - The engine's own decode work-group shapes (below).
 * Every measurement runs in a child process of its own, so these calls
 * fork: call them before the process uses OpenCL (before loading a model).
 * Progress goes to the params' log callback, never to stdout or stderr. */

typedef enum pldr_tune_shapes {
    PLDR_TUNE_PREFILL = 0, /* the per-layer GEMMs of prefills of 16, 64 and 512 tokens */
    PLDR_TUNE_ALL = 1      /* also the final layer in 64-row chunks (all-rows logits) */
} pldr_tune_shapes;

/* One line of progress (no trailing newline). */
typedef void (*pldr_tune_log_fn)(const char *line, void *user);

typedef struct pldr_tune_params {
    const char *device;    /* device spec, see pldr_select_device */
    const char *cache_dir; /* directory of the tuning file (NULL: the default cache directory) */
    double budget_s;       /* wall-clock budget of the search, default 600 s; the
                              defaults are always measured */
    pldr_tune_shapes shapes;
    int max_candidates;    /* explicit parameter sets to try at most (< 0, the default: no limit) */
    uint64_t seed;         /* of the search; the same seed tries the same sets */
    pldr_tune_log_fn log;  /* progress (NULL: quiet) */
    void *log_user;
} pldr_tune_params;

typedef struct pldr_tune_shape {
    size_t m, n, k;
    double weight;    /* calls per forward, summed over the prompt lengths */
    char what[48];    /* e.g. "qkv T=512" */
    double before_s;  /* seconds per call with CLBlast's defaults */
    double after_s;   /* with the stored parameters (= before_s when none) */
    int direct_after; /* the stored threshold sends this shape to XgemmDirect */
} pldr_tune_shape;

typedef struct pldr_tune_result {
    char *path;             /* the tuning file written */
    int n_shapes;
    pldr_tune_shape *shapes;
    double total_before_s;  /* sum of weight x seconds */
    double total_after_s;
    int tuned;              /* 0: CLBlast's defaults were best; the file says so */
    int n_candidates;       /* parameter sets measured (defaults included) */
    double elapsed_s;
} pldr_tune_result;

pldr_tune_params pldr_tune_default_params(void);

/* Tunes for the model in model_dir (only its config.json is read) on the
 * device of params->device and writes the tuning file. result may be NULL;
 * otherwise free it with pldr_tune_result_free. Every measurement runs in a
 * child process of its own (on a CPU device CLBlast's kernels run in the
 * process's memory, and a faulty parameter set can corrupt, crash or hang
 * it), so this process neither uses OpenCL nor changes CLBlast's state; as
 * it forks, call it before this process uses OpenCL. */
pldr_status pldr_tune_run(const char *model_dir, const pldr_tune_params *params, pldr_tune_result *result);
void pldr_tune_result_free(pldr_tune_result *result);

/* Tuning on first use (`--tune` of pldr generate and bench): when the device
 * has no readable, valid tuning file made for the GEMM shapes of model_dir
 * (d_model, d_ff, vocab_size), tunes for model_dir with pldr_tune_run
 * (params NULL: defaults; device, when not NULL, overrides params->device;
 * "all": every device). Call it before this process uses OpenCL (it forks),
 * i.e. before loading the model, which then applies the file. *tuned (may be NULL) is set to 1 when it tuned, 0 when a
 * file was already there or PLDR_TUNING=0. */
pldr_status pldr_tune_if_missing(const char *model_dir, const char *device, const pldr_tune_params *params,
                                 int *tuned);

/* The tuning file of a device: CACHE_DIR/tune-<16 hex digits>.json, keyed by
 * a hash of the device name, driver version, platform version and CLBlast
 * version. cache_dir NULL: the default cache directory. malloc'ed; NULL when
 * there is no cache directory or memory. */
char *pldr_tuning_path(const pldr_device_info *info, const char *cache_dir);

/* `pldr tune --check`: opens the device, reads, checks and applies its
 * tuning file. *path and *summary (a description of what the file holds)
 * are malloc'ed; both are set on success, *path also on failure when known.
 * Ignores PLDR_TUNING. */
pldr_status pldr_tuning_check(const char *device, const char *cache_dir, char **path, char **summary);

/* The engine's decode work-group shapes: the kernels' work-group shapes that
 * decoding depends on (PLDR_WG's keys gemv, rows, wrows, att; pf on the
 * one-lane form; and the attpre switch) are tried around the device's
 * defaults, one key at a time, each candidate timed on greedy decode steps
 * of the model itself in a process of its own (at least reps runs after a
 * warm-up run, and at least half a second of timed steps); a candidate is
 * kept when it is at least 3% faster than the best so far and decodes the
 * same tokens as the defaults, and the winner only when it still beats the
 * defaults by that margin measured again, one after the other. The choice
 * goes to CACHE_DIR/decode-<16 hex digits>.json (per device, per weight
 * dtype, for the model's dimensions), which pldr_model_load applies before
 * $PLDR_WG (see pldr_model_params.work_groups). */
#define PLDR_WG_ITEMS_MAX 128

typedef struct pldr_tune_decode_params {
    const char *device;    /* device spec, see pldr_select_device */
    const char *cache_dir; /* NULL: the default cache directory */
    pldr_dtype dtype;      /* weight storage tuned for (default f32) */
    int prompt;            /* tokens of the prompt before the timed steps (default 64,
                              fewer when the context is shorter) */
    int steps;             /* greedy decode steps timed per run (default 32) */
    int reps;              /* timed runs per candidate after a warm-up, the fastest
                              counts (default 3) */
    pldr_tune_log_fn log;  /* progress (NULL: quiet) */
    void *log_user;
} pldr_tune_decode_params;

typedef struct pldr_tune_decode_candidate {
    char items[PLDR_WG_ITEMS_MAX]; /* e.g. "gemv=256,rows=8,wrows=2,att=64" */
    double tok_s;                  /* 0 when dropped */
    char note[160];                /* why it was dropped, or "" */
} pldr_tune_decode_candidate;

typedef struct pldr_tune_decode_result {
    char *path;                         /* the file written */
    char defaults[PLDR_WG_ITEMS_MAX];   /* the device's defaults, as items */
    char chosen[PLDR_WG_ITEMS_MAX];     /* the shapes stored ("" when the defaults stay) */
    double tok_s_defaults, tok_s_chosen;
    int n_candidates;                   /* the defaults first */
    pldr_tune_decode_candidate *candidates;
    double elapsed_s;
} pldr_tune_decode_result;

pldr_tune_decode_params pldr_tune_decode_default_params(void);
/* Tunes for the checkpoint in model_dir (its weights are loaded) and writes
 * the file; other dtypes' entries of a file for the same device and model
 * dimensions are kept. Forks; as pldr_tune_run, call it before this process
 * uses OpenCL. result may be NULL; else free it with
 * pldr_tune_decode_result_free. */
pldr_status pldr_tune_decode(const char *model_dir, const pldr_tune_decode_params *params,
                             pldr_tune_decode_result *result);
void pldr_tune_decode_result_free(pldr_tune_decode_result *result);

/* Tuning on first use: tunes (pldr_tune_decode) when the device has no
 * entry for the model's dimensions and params->dtype; params->device "all":
 * every device. Forks: call it before this process uses OpenCL. *tuned (may
 * be NULL) is set to 1 when it tuned. PLDR_TUNING=0: does nothing. */
pldr_status pldr_tune_decode_if_missing(const char *model_dir, const pldr_tune_decode_params *params, int *tuned);

/* CACHE_DIR/decode-<hash of the device name, driver and platform>.json. */
char *pldr_decode_tuning_path(const pldr_device_info *info, const char *cache_dir);

/* `pldr tune --check` for the decode file: *path and *summary malloc'ed (path
 * may be NULL without a cache directory). Fails with PLDR_ERR_FORMAT on a
 * damaged file; a missing file is described in the summary. */
pldr_status pldr_decode_tuning_describe(const pldr_device_info *info, const char *cache_dir, char **path,
                                        char **summary);

/* ------------------------------------------------------------------ */
/* Output files                                                        */
/* Every file the library writes (sessions, G-cache files, tuning files,
 * kernel-cache entries) goes through pldr_write_file. */

/* Whether path can be written: an existing target must be a regular file
 * (a symbolic link, FIFO, device or directory is refused and left alone)
 * and its directory must exist and be writable. PLDR_ERR_OUTPUT if not.
 * Call it before long work whose result goes to path. */
pldr_status pldr_check_output_path(const char *path);
/* Writes the concatenated parts to path atomically: a temporary file
 * .NAME.pldr-tmp.PID.N in the same directory, fsync, rename. On any failure
 * (full disk, no permission, killed) the old file is left as it was; the
 * message names path and the cause. */
pldr_status pldr_write_parts_atomic(const char *path, const void *const *data, const size_t *len, int n_parts);

#ifdef __cplusplus
}
#endif
#endif /* PLDR_H */
