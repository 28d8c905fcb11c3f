/* The deductive branch of a layer: the metric learner and the PLGA from A
 * to A_LM and G_LM, into the layer's G-cache. */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/util.h"

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
pldr_status engine_layer_g(pldr_context *c, int l, int T, int full)
{
    if (g_fixed(c))
        return PLDR_OK;
    if (full || !c->g_valid)
        return plga(c, l, T, 0);
    if (c->p.cache_mode == PLDR_CACHE_KV)
        return plga(c, l, T, 1);
    return PLDR_OK;
}
