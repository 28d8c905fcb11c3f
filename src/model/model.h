/* Internal layout of a loaded model and of an inference context. */
#ifndef PLDR_MODEL_H
#define PLDR_MODEL_H

#include "formats/config_parse.h"
#include "runtime/ocl.h"
#include "pldr.h"

/* A weight matrix on the device: `rows` rows of `pitch` elements (the row
 * length padded with zeros: to a multiple of 4, of 32 for the quantized
 * types) in the model's weight dtype (kernels/common.cl describes the
 * layouts). Q8_0 and Q4_0 keep their quants in data and one scale per
 * block of 32 in scales (half, or float: pldr_scale_bytes) (structure of arrays); the other types have no
 * scales (NULL). Kernels that read a matrix take both buffers (pldr_scales). */
typedef struct pldr_weight {
    cl_mem data;
    cl_mem scales;
    pldr_dtype type;
    int rows, pitch;
} pldr_weight;

/* Device weights of one decoder layer. The large matrices (wqkv, wo, w12,
 * w3) are in the model's weight dtype; everything else is float32. */
typedef struct pldr_layer {
    pldr_weight wqkv;  /* [3d, d] = wq; wk; wv */
    cl_mem bqkv;       /* [3d] */
    pldr_weight wo;    /* mha1.dense [d, d] */
    cl_mem bo;         /* [d] */
    cl_mem ln1_w, ln1_b, ln2_w, ln2_b; /* layer.layernorm1/2 [d] */
    pldr_weight w12;   /* ffn.gluw1; gluw2 [2F, d] */
    cl_mem b12;        /* [2F] */
    pldr_weight w3;    /* ffn.gluw3 [d, F] */
    cl_mem b3;         /* [d] */
    /* the per-row data of the decode products that read a LayerNorm's output
     * (kernels/gemv.cl, ln_fold_consts): [3, 3d] for Q/K/V, [3, 2F] for
     * gluw1|2 (folded constants and the bias), then the LayerNorm's weights */
    cl_mem qkv_sc, up_sc;
    /* metric learner, absent for a predefined G */
    cl_mem a_ln_w, a_ln_b;   /* mha1.layernorm1 [dk] */
    cl_mem ml_w12, ml_b12;   /* [R*D, dk, 2*Fa] (gluw1 | gluw2, transposed), [R*D, 2*Fa] */
    cl_mem ml_w3, ml_b3;     /* [R*D, Fa, dk] (gluw3 transposed), [R*D, dk] */
    cl_mem ml_ln_w, ml_ln_b; /* reslayerAs.j.layernormA [R, dk] */
    cl_mem plga;             /* Wlst, blst, pwlst, alst, balst: [5, H, dk, dk] */
    cl_mem past_g;           /* predefined [A, A_LM, G_LM]: [3, H, dk, dk] */
} pldr_layer;

struct pldr_model {
    pldr_config cfg;
    pldr_config_extra cfg_extra; /* labels, longrope factors and other rope_scaling parameters */
    pldr_ocl ocl;
    cl_program program;
    double build_s; /* seconds pldr_ocl_build took (compiling, or reading the binary cache) */
    int compiled;   /* the kernels were compiled from source at this load */
    pldr_dtype wtype;      /* storage of the large matrices (pldr_weight) */
    double quantize_s;     /* seconds spent converting them at load (not f32, f16) */
    pldr_weight emb;       /* [V, d] (pitch emb_pitch) */
    cl_mem ln0_w, ln0_b;   /* decoder.layernorm1 */
    pldr_weight wf;        /* the output layer [n_outputs, d]: final_layer, the class's head, or
                              the identity for PldrllmModel */
    cl_mem bf;             /* [n_outputs] */
    cl_mem wf_sc;          /* [3, V] and the last LayerNorm, as pldr_layer.qkv_sc */
    pldr_layer *layers;
    uint64_t n_params;
    uint64_t fingerprint;
    uint64_t device_bytes;
    uint64_t zero_copy_bytes; /* of device_bytes: buffers over the file mapping */
    /* the file mappings those buffers read, unmapped after the buffers are released */
    struct pldr_mapping {
        void *addr;
        size_t size;
    } *maps;
    int n_maps;
    size_t max_matrix_elems; /* largest weight matrix, for the float32 prefill scratch */
    /* rows of the weight matrices are padded to a multiple of 4 elements so
     * that GEMV kernels read them as aligned vectors (of 32 for the quantized
     * types, whole blocks): d_pitch for rows of length d, f_pitch for rows of
     * length F; emb_pitch for the embedding's rows (d unless quantized) */
    int d_pitch, f_pitch, emb_pitch;
    /* work-group sizes chosen for the device (also passed as -D defines) */
    int row_wg, att_wg, ml_wg, ml_rows, gemv_wg, gemv_rows, gemv_pf, gemv_wrows;
    int wg_forms; /* the prefill's work-group kernels (else the one-work-item CPU forms) */
    int own_gemm; /* prefill products through kernels/gemm.cl instead of CLBlast */
    /* a Q8_0/Q4_0 block's scale on the device is a float (SCALE_F32 in
     * kernels/common.cl; on CPUs, whose OpenCL compilers convert half in
     * software; PLDR_WG fscale), else a half (pldr_scale_bytes); the
     * checkpoint's quantization is the same */
    int scale_f32;
    int att_preload; /* decode attention loads G_LM's column and the key row into registers first */
    int wg_tuned;    /* shapes from the device's decode tuning file (pldr tune) were applied */
    int ml_rg, ml_ks, ml_s, ml_kc; /* metric learner: row groups, input splits, gluw3 slices, inputs per weight batch */
    char kernel_options[1024]; /* the kernels' build options (pldr_model_kernel_options) */
    char kernel_notes[1024];   /* shapes lowered to fit a kernel's limits (pldr_model_kernel_notes) */
    /* PLDR_KERNEL_LIMITS, for testing the lowering on any device: limits
     * below the device's, "NAME=N" (kernel NAME's CL_KERNEL_WORK_GROUP_SIZE
     * taken as at most N; NAME "*" for every kernel) and "local=BYTES" (the
     * device's local memory), "int64=0" (build as for a device without
     * 64-bit integers), comma-separated */
    char kernel_limits[256];
    int index64; /* 64-bit index arithmetic in the kernels (INDEX64); else no buffer over INT_MAX bytes */
};

/* Work per work-group of the one-work-item CPU kernels, passed to them as
 * -D defines: rows of A per metric_learner_cpu work-item (LC_ROWS), and the
 * output block of a gemm_cpu work-group (GM_ROWS x GM_COLS). */
#define PLDR_LEARNER_CPU_ROWS 4
#define PLDR_GEMM_CPU_ROWS 64
#define PLDR_GEMM_CPU_COLS 16

/* Releases *b if set and clears it. */
void pldr_release_mem(cl_mem *b);
void pldr_release_weight(pldr_weight *w);

/* The buffer a kernel's scales argument (ws in kernels/common.cl) is bound
 * to: w's scales, or its data where the type has none (never read then). */
static inline cl_mem pldr_scales(const pldr_weight *w)
{
    return w->scales ? w->scales : w->data;
}

/* Bytes of a quantized block's scale on m's device: 4 (float) or 2 (half). */
static inline int pldr_scale_bytes(const pldr_model *m) { return m->scale_f32 ? 4 : 2; }

/* Bytes of one weight of type t on the device, scales of scale_bytes
 * included (Q8_0 with half scales: 34 bytes per 32 weights, Q4_0: 18). */
double pldr_dtype_weight_bytes(pldr_dtype t, int scale_bytes);

/* Creates a device buffer, recording its size in *counter when given. */
pldr_status pldr_buffer(pldr_model *m, size_t bytes, const char *what, cl_mem *out, uint64_t *counter);

#endif
