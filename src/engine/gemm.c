/* The engine's products: GEMM over many rows (the prefill) and the decode
 * step's GEMVs with their fused options (kernels/gemv.cl). */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/util.h"

/* C[M, N] = A[M, K] . W[N, K]^T (row-major): through CLBlast, or on CPU
 * devices through the engine's own kernel (kernels/gemm.cl). */
pldr_status engine_gemm(pldr_context *c, size_t M, size_t N, size_t K, cl_mem a, size_t a_off,
                        const pldr_weight *wt, size_t w_pitch, cl_mem out, size_t out_off)
{
    pldr_model *m = c->m;
    cl_mem w = wt->data;
    if (m->own_gemm) { /* kernels/gemm.cl widens every weight dtype as it loads */
        const size_t bm = (M + PLDR_GEMM_CPU_ROWS - 1) / PLDR_GEMM_CPU_ROWS,
                     bn = (N + PLDR_GEMM_CPU_COLS - 1) / PLDR_GEMM_CPU_COLS;
        return LAUNCH_AS(c, gemm_cpu, "gemm_cpu", bm * bn, 1, A_MEM(a), A_INT((int)a_off), A_INT((int)K),
                         A_MEM(w), A_SCALES(wt), A_INT((int)w_pitch), A_MEM(out), A_INT((int)out_off), A_INT((int)N),
                         A_INT((int)M), A_INT((int)N), A_INT((int)K));
    }
    if (wt->type != PLDR_DTYPE_F32) { /* CLBlast reads float32: widened into the scratch first */
        TRY(LAUNCH(c, w2f, (size_t)c->m->ocl.info.compute_units * 1024, 0, A_MEM(w), A_SCALES(wt),
                   A_MEM(c->w_scratch), A_UINT((cl_uint)(N * w_pitch))));
        w = c->w_scratch;
    }
    cl_command_queue q = c->queue;
    double t0 = 0.0;
    if (c->profile) {
        clFinish(q);
        t0 = pldr_now();
    }
    CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, M, N, K,
                                       1.0f, a, a_off, K, w, 0, w_pitch, 0.0f, out, out_off, N, &q, NULL);
    if (c->profile) {
        clFinish(q);
        engine_prof_add(c, "clblast_sgemm (wall)", (pldr_now() - t0) * 1e3);
    }
    if (s != CLBlastSuccess) {
        if (s < 0 && s > -100)
            return pldr_cl_fail(&m->ocl, (cl_int)s, "CLBlast SGEMM");
        return pldr_fail(PLDR_ERR_OPENCL, "CLBlast SGEMM (%zux%zux%zu) failed with status %d on %s", M, N, K,
                         (int)s, m->ocl.info.name);
    }
    return PLDR_OK;
}

pldr_status engine_gemv(pldr_context *c, const gemv_op *op)
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
                         A_INT(op->argmax), A_INT(c->off.argmax_part), A_INT(flag_logits(c)));
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

/* The products of a batched decode step (M = the sequences decoded, a few
 * rows): on CPU devices the engine's GEMM, whose work-groups of 64 rows read
 * each weight once for all of them; elsewhere kernels/batch.cl's batch_gemv
 * (each weight loaded once into registers for every row) up to 32 rows or
 * with weights not stored as float32 (CLBlast would need them widened first), CLBlast above. */
pldr_status engine_gemm_rows(pldr_context *c, size_t M, size_t N, size_t K, cl_mem a, const pldr_weight *w,
                             size_t w_pitch, cl_mem out)
{
    const pldr_model *m = c->m;
    /* above 32 rows a GEMM, every dtype: CLBlast reads other dtypes widened
     * into the scratch first (engine_gemm); batch_gemv stopped scaling there
     * (H100: f16, q8_0 and q4_0 decoded no faster at 64 rows than at 32) */
    if (m->own_gemm || M > 32)
        return engine_gemm(c, M, N, K, a, 0, w, w_pitch, out, 0);
    const size_t groups = (N + (size_t)m->gemv_rows - 1) / (size_t)m->gemv_rows;
    return LAUNCH(c, batch_gemv, groups * (size_t)m->gemv_wg, (size_t)m->gemv_wg, A_MEM(a), A_INT(0),
                  A_INT((int)K), A_MEM(w->data), A_SCALES(w), A_INT((int)w_pitch), A_MEM(out), A_INT(0), A_INT((int)N),
                  A_INT((int)M),
                  A_INT((int)N), A_INT((int)K));
}
