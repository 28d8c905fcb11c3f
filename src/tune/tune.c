/* Per-device tuning of CLBlast's GEMM for the model's prefill shapes (pldr.h,
 * "Tuning"; the file's reader is src/formats/tuning_gemm.c). CLBlast 1.5
 * keeps one parameter set per kernel and device, read from its built-in
 * database unless CLBlastOverrideParameters replaces it;
 * every distinct combination compiles a new program on its first call (about
 * 20 s under PoCL on 2 cores, about a second on a GPU), so the search is a
 * budgeted local search rather than CLBlast's exhaustive tuners:
 *
 *  1. baseline: CLBlast's defaults, as the engine runs them today;
 *  2. CLBlast's default Xgemm with every shape forced to the indirect path
 *     (XGEMM_MIN_INDIRECT_SIZE 0) and its default XgemmDirect with every
 *     shape forced to the direct path, so that the defaults take part in the
 *     choice of the switch-over size;
 *  3. one seed per family (Xgemm GEMMK=0, Xgemm GEMMK=1, XgemmDirect), then
 *     mutations of each family's best set (one or two parameters moved to a
 *     neighbouring value), families taking turns, favouring those in the
 *     current best solution, until the budget or the candidate limit is
 *     reached.
 * Every candidate is checked against a host reference on its first call of
 * every shape; a wrong or failing candidate is dropped. Times are the minimum
 * over repeated calls timed by wall clock around clFinish (CLBlast's event
 * would time only its last kernel). The solution picks one indirect set, one
 * direct set and the threshold between them that minimise
 * sum(weight x time); it is stored only when it beats the defaults by 2%. */
#include "config.h"

#include <clblast_c.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "tune/child.h"
#include "runtime/ocl.h"
#include "formats/tuning_file.h"
#include "common/env.h"
#include "common/util.h"

#define MARGIN 0.98      /* a solution must take at most 98% of the defaults' time */
#define ABORT_RATIO 3.0  /* drop a candidate this much slower than its kind's best */
#define MIN_REP_TIME 0.1 /* seconds of timed calls per shape, at least 2 calls */
#define MAX_REPS 20

/* ------------------------------------------------------------ parameters */

typedef struct opts {
    int n;
    unsigned v[6];
} opts;

/* The search spaces, after CLBlast's own tuner variations (docs/tuning.md),
 * with thread tiles of 4 added for CPU devices. */
static const opts space_x0[XP_COUNT] = {
    [XP_GEMMK] = {1, {0}},           [XP_KREG] = {1, {1}},
    [XP_KWG] = {2, {16, 32}},        [XP_KWI] = {2, {2, 8}},
    [XP_MDIMA] = {4, {4, 8, 16, 32}}, [XP_MDIMC] = {4, {4, 8, 16, 32}},
    [XP_MWG] = {4, {16, 32, 64, 128}}, [XP_NDIMB] = {4, {4, 8, 16, 32}},
    [XP_NDIMC] = {4, {4, 8, 16, 32}}, [XP_NWG] = {4, {16, 32, 64, 128}},
    [XP_SA] = {2, {0, 1}},           [XP_SB] = {2, {0, 1}},
    [XP_STRM] = {2, {0, 1}},         [XP_STRN] = {2, {0, 1}},
    [XP_VWM] = {4, {1, 2, 4, 8}},    [XP_VWN] = {4, {1, 2, 4, 8}},
};
static const opts space_x1[XP_COUNT] = {
    [XP_GEMMK] = {1, {1}},                [XP_KREG] = {5, {1, 2, 4, 8, 16}},
    [XP_KWG] = {1, {1}},                  [XP_KWI] = {1, {1}},
    [XP_MDIMA] = {5, {2, 4, 8, 16, 32}},  [XP_MDIMC] = {5, {2, 4, 8, 16, 32}},
    [XP_MWG] = {5, {8, 16, 32, 64, 128}}, [XP_NDIMB] = {5, {2, 4, 8, 16, 32}},
    [XP_NDIMC] = {5, {2, 4, 8, 16, 32}},  [XP_NWG] = {5, {8, 16, 32, 64, 128}},
    [XP_SA] = {1, {0}},                   [XP_SB] = {1, {0}},
    [XP_STRM] = {1, {0}},                 [XP_STRN] = {1, {0}},
    [XP_VWM] = {4, {1, 2, 4, 8}},         [XP_VWN] = {4, {1, 2, 4, 8}},
};
static const opts space_d[DP_COUNT] = {
    [DP_KWID] = {3, {2, 8, 16}},      [DP_MDIMAD] = {3, {8, 16, 32}}, [DP_MDIMCD] = {3, {8, 16, 32}},
    [DP_NDIMBD] = {3, {8, 16, 32}},   [DP_NDIMCD] = {3, {8, 16, 32}}, [DP_PADA] = {2, {0, 1}},
    [DP_PADB] = {2, {0, 1}},          [DP_VWMD] = {4, {1, 2, 4, 8}},  [DP_VWND] = {4, {1, 2, 4, 8}},
    [DP_WGD] = {4, {8, 16, 32, 64}},
};
/* First sets tried per family: moderate tiles, vector width 4. */
static const size_t seed_x0[XP_COUNT] = {0, 1, 32, 2, 16, 16, 64, 16, 16, 64, 1, 1, 0, 0, 4, 4};
static const size_t seed_x1[XP_COUNT] = {1, 4, 1, 1, 8, 8, 64, 8, 8, 64, 0, 0, 0, 0, 4, 4};
static const size_t seed_d[DP_COUNT] = {2, 8, 8, 8, 8, 1, 1, 4, 4, 32};

enum { FAM_X0, FAM_X1, FAM_D, N_FAM };
typedef struct family {
    const char *label;  /* for messages */
    const char *kernel; /* CLBlast kernel name */
    int n_params;
    const char *const *names;
    const opts *space;
    const size_t *seed;
} family;
static const family families[N_FAM] = {
    {"Xgemm/GEMMK=0", "Xgemm", XP_COUNT, pldr_xgemm_names, space_x0, seed_x0},
    {"Xgemm/GEMMK=1", "Xgemm", XP_COUNT, pldr_xgemm_names, space_x1, seed_x1},
    {"XgemmDirect", "XgemmDirect", DP_COUNT, pldr_direct_names, space_d, seed_d},
};

static const char *family_invalid(int fam, const size_t *v, const pldr_gemm_limits *lim)
{
    return fam == FAM_D ? pldr_xgemm_direct_invalid(v, lim) : pldr_xgemm_invalid(v, lim);
}

static CLBlastStatusCode override_threshold(const pldr_ocl *o, size_t value)
{
    return pldr_clblast_override(o, "GemmRoutine", 1, &pldr_gemm_threshold_name, &value);
}

static void params_string(int fam, const size_t *v, char *buf, size_t size)
{
    const family *f = &families[fam];
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < f->n_params && o + 1 < size; i++) {
        /* GEMMK 1 ignores the kernel-0 parameters: leave them out */
        if (fam == FAM_X1 && (i == XP_GEMMK || i == XP_KWG || i == XP_KWI || i == XP_MDIMA || i == XP_NDIMB ||
                              i == XP_SA || i == XP_SB || i == XP_STRM || i == XP_STRN))
            continue;
        if (fam == FAM_X0 && (i == XP_GEMMK || i == XP_KREG))
            continue;
        int w = snprintf(buf + o, size - o, "%s%s=%zu", o ? " " : "", f->names[i], v[i]);
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

static void append(char *buf, size_t size, const char *fmt, ...) PLDR_PRINTF(3, 4);
static void append(char *buf, size_t size, const char *fmt, ...)
{
    size_t len = strlen(buf);
    if (len + 1 >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, size - len, fmt, ap);
    va_end(ap);
}

pldr_status pldr_tuning_check(const char *device, const char *cache_dir, char **path, char **summary)
{
    pldr_clear_error();
    *path = NULL;
    *summary = NULL;
    pldr_ocl ocl;
    pldr_status st = pldr_ocl_open(device, &ocl);
    if (st != PLDR_OK)
        return st;
    *path = pldr_tuning_path(&ocl.info, cache_dir);
    pldr_gemm_tuning t;
    int found = 0, n = 0;
    st = pldr_gemm_tuning_read(&ocl, cache_dir, &t, &found, NULL);
    if (st == PLDR_OK && found)
        st = pldr_gemm_tuning_set(&ocl, &t, &n);
    char buf[1024] = "";
    if (st == PLDR_OK) {
        if (!found)
            append(buf, sizeof buf, "no tuning file for %s: CLBlast's defaults are used", ocl.info.name);
        else if (n == 0)
            append(buf, sizeof buf, "tuned for %s: CLBlast's defaults were the fastest", ocl.info.name);
        else {
            char desc[400];
            append(buf, sizeof buf, "tuned for %s, %d parameter sets applied", ocl.info.name, n);
            if (t.has_x) {
                params_string(t.x[XP_GEMMK] ? FAM_X1 : FAM_X0, t.x, desc, sizeof desc);
                append(buf, sizeof buf, "\n  Xgemm GEMMK=%zu %s", t.x[XP_GEMMK], desc);
            }
            if (t.has_d) {
                params_string(FAM_D, t.d, desc, sizeof desc);
                append(buf, sizeof buf, "\n  XgemmDirect %s", desc);
            }
            if (t.has_thr)
                append(buf, sizeof buf, "\n  GemmRoutine XGEMM_MIN_INDIRECT_SIZE=%zu", t.thr);
        }
        *summary = pldr_strdup(buf);
        if (!*summary)
            st = pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    pldr_ocl_close(&ocl);
    return st;
}

/* ------------------------------------------------------------ shapes */

static void add_shape(pldr_tune_shape *s, int *n, size_t m, size_t nn, size_t k, double weight, const char *what)
{
    for (int i = 0; i < *n; i++)
        if (s[i].m == m && s[i].n == nn && s[i].k == k) {
            s[i].weight += weight;
            size_t len = strlen(s[i].what);
            snprintf(s[i].what + len, sizeof s[i].what - len, "+%s", what);
            return;
        }
    memset(&s[*n], 0, sizeof s[*n]);
    s[*n].m = m;
    s[*n].n = nn;
    s[*n].k = k;
    s[*n].weight = weight;
    snprintf(s[*n].what, sizeof s[*n].what, "%s", what);
    (*n)++;
}

/* The GEMMs of src/engine/forward.c: per layer Q/K/V [3d, d], the attention output
 * [d, d], the FFN input [2F, d] and output [d, F] over the T prompt rows;
 * the final layer [V, d] over chunks of 64 rows for all-rows logits. Prompts
 * of 16, 64 and 512 tokens (at most max_position), one forward each: the
 * short one weighs little but places the direct/indirect switch. */
static int model_shapes(const pldr_config *c, pldr_tune_shapes which, pldr_tune_shape *s)
{
    static const int lengths[] = {16, 64, 512};
    int n = 0, T[3], nT = 0;
    for (int i = 0; i < 3; i++) {
        int t = lengths[i] < c->max_position ? lengths[i] : c->max_position;
        if (t >= 2 && (nT == 0 || T[nT - 1] != t))
            T[nT++] = t;
    }
    const size_t d = (size_t)c->d_model, F = (size_t)c->d_ff, V = (size_t)c->vocab_size;
    const double L = c->n_layers;
    char what[48];
    for (int i = 0; i < nT; i++) {
        size_t t = (size_t)T[i];
        snprintf(what, sizeof what, "qkv T=%zu", t);
        add_shape(s, &n, t, 3 * d, d, L, what);
        snprintf(what, sizeof what, "att-out T=%zu", t);
        add_shape(s, &n, t, d, d, L, what);
        snprintf(what, sizeof what, "ffn-in T=%zu", t);
        add_shape(s, &n, t, 2 * F, d, L, what);
        snprintf(what, sizeof what, "ffn-out T=%zu", t);
        add_shape(s, &n, t, d, F, L, what);
    }
    if (which == PLDR_TUNE_ALL) {
        for (int i = 0; i < nT; i++) {
            size_t t = (size_t)T[i], rows = t < 64 ? t : 64;
            snprintf(what, sizeof what, "final %zu rows", rows);
            add_shape(s, &n, rows, V, d, (double)((t + 63) / 64), what);
        }
    }
    return n;
}

/* ------------------------------------------------------------ the tuner */

enum { K_BASE, K_INDIRECT, K_DIRECT, K_FINAL }; /* K_FINAL: overrides set by the caller */

typedef struct trial {
    int kind;
    int fam;   /* -1: CLBlast's defaults */
    size_t v[XP_COUNT];
    double *t; /* seconds per call per shape; INFINITY: failed or not measured */
    int failed;
    double cost_s;
} trial;

typedef struct tuner {
    const pldr_tune_params *p;
    pldr_ocl ocl; /* in the measuring child processes only */
    int ocl_open;
    pldr_device_info info; /* of the device, as the first child found it */
    pldr_gemm_limits lim;
    pldr_config cfg;
    int n_shapes;
    pldr_tune_shape shapes[16];
    int eval_order[16]; /* heaviest (weight x flops) first */
    int by_size[16];    /* increasing m*n*k */
    cl_mem a, b, c;
    float *ha, *hb, *hc;
    trial *trials;
    int n_trials, cap_trials;
    uint64_t rng;
    double t0;
} tuner;

static void logf_(const tuner *tu, const char *fmt, ...) PLDR_PRINTF(2, 3);
static void logf_(const tuner *tu, const char *fmt, ...)
{
    if (!tu->p->log)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    tu->p->log(line, tu->p->log_user);
}

static uint64_t rnd(tuner *tu)
{
    uint64_t x = tu->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    tu->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double flops(const pldr_tune_shape *s) { return 2.0 * (double)s->m * (double)s->n * (double)s->k; }
static double mnk(const pldr_tune_shape *s) { return (double)s->m * (double)s->n * (double)s->k; }

static pldr_status setup_buffers(tuner *tu)
{
    size_t ma = 0, mb = 0, mc = 0;
    for (int i = 0; i < tu->n_shapes; i++) {
        const pldr_tune_shape *s = &tu->shapes[i];
        if (s->m * s->k > ma)
            ma = s->m * s->k;
        if (s->n * s->k > mb)
            mb = s->n * s->k;
        if (s->m * s->n > mc)
            mc = s->m * s->n;
    }
    tu->ha = malloc(ma * sizeof(float));
    tu->hb = malloc(mb * sizeof(float));
    tu->hc = malloc(mc * sizeof(float));
    if (!tu->ha || !tu->hb || !tu->hc)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory for the tuning matrices");
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < ma; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        tu->ha[i] = (float)((double)(x >> 40) / (double)(1u << 23) - 1.0);
    }
    for (size_t i = 0; i < mb; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        tu->hb[i] = (float)((double)(x >> 40) / (double)(1u << 23) - 1.0);
    }
    struct {
        cl_mem *mem;
        size_t n;
        float *host;
    } bufs[] = {{&tu->a, ma, tu->ha}, {&tu->b, mb, tu->hb}, {&tu->c, mc, NULL}};
    for (size_t i = 0; i < 3; i++) {
        cl_int err;
        cl_mem_flags fl = CL_MEM_READ_WRITE | (bufs[i].host ? CL_MEM_COPY_HOST_PTR : 0);
        *bufs[i].mem = clCreateBuffer(tu->ocl.context, fl, bufs[i].n * sizeof(float), bufs[i].host, &err);
        if (!*bufs[i].mem)
            return pldr_cl_fail(&tu->ocl, err, "allocating the tuning matrices");
    }
    return PLDR_OK;
}

static CLBlastStatusCode gemm(tuner *tu, const pldr_tune_shape *s)
{
    cl_command_queue q = tu->ocl.queue;
    return CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, s->m, s->n, s->k, 1.0f,
                        tu->a, 0, s->k, tu->b, 0, s->k, 0.0f, tu->c, 0, s->n, &q, NULL);
}

/* One timed call: 0, or the CLBlast/OpenCL status. */
static int timed_call(tuner *tu, const pldr_tune_shape *s, double *sec)
{
    double t0 = pldr_now();
    CLBlastStatusCode st = gemm(tu, s);
    cl_int err = clFinish(tu->ocl.queue);
    *sec = pldr_now() - t0;
    if (st != CLBlastSuccess)
        return (int)st;
    return err == CL_SUCCESS ? 0 : (int)err;
}

static int check_entry(const tuner *tu, const pldr_tune_shape *s, size_t i, size_t j)
{
    const float *a = tu->ha + i * s->k, *b = tu->hb + j * s->k;
    double ref = 0.0, mag = 0.0;
    for (size_t k = 0; k < s->k; k++) {
        double p = (double)a[k] * (double)b[k];
        ref += p;
        mag += fabs(p);
    }
    double got = tu->hc[i * s->n + j];
    return fabs(got - ref) <= 5e-4 * mag + 1e-6; /* false for NaN */
}

/* Compares the result with a host reference: the first and last rows and
 * columns and 256 random entries. Returns 1 when right. */
static pldr_status verify(tuner *tu, const pldr_tune_shape *s, int *right)
{
    cl_int err = clEnqueueReadBuffer(tu->ocl.queue, tu->c, CL_TRUE, 0, s->m * s->n * sizeof(float), tu->hc, 0,
                                     NULL, NULL);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&tu->ocl, err, "reading a tuning result");
    *right = 1;
    const size_t rows[2] = {0, s->m - 1}, cols[2] = {0, s->n - 1};
    for (int r = 0; r < 2 && *right; r++)
        for (size_t j = 0; j < s->n && *right; j++)
            *right = check_entry(tu, s, rows[r], j);
    for (int c = 0; c < 2 && *right; c++)
        for (size_t i = 0; i < s->m && *right; i++)
            *right = check_entry(tu, s, i, cols[c]);
    for (int e = 0; e < 256 && *right; e++)
        *right = check_entry(tu, s, (size_t)(rnd(tu) % s->m), (size_t)(rnd(tu) % s->n));
    return PLDR_OK;
}

/* One call on a C filled with a sentinel (so that a kernel writing nothing
 * cannot pass), checked: *code is its status, *right whether it is right. */
static pldr_status checked_call(tuner *tu, const pldr_tune_shape *s, int *code, int *right)
{
    const cl_float sentinel = 12345.0f;
    *right = 0;
    cl_int err = clEnqueueFillBuffer(tu->ocl.queue, tu->c, &sentinel, sizeof sentinel, 0,
                                     s->m * s->n * sizeof(float), 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return pldr_cl_fail(&tu->ocl, err, "clearing a tuning result");
    double t;
    if ((*code = timed_call(tu, s, &t)) != 0)
        return PLDR_OK;
    return verify(tu, s, right);
}

static double best_of_kind(const tuner *tu, int kind, int shape)
{
    double best = INFINITY;
    for (int i = 0; i < tu->n_trials; i++) {
        const trial *tr = &tu->trials[i];
        if (tr->kind == kind && !tr->failed && tr->t[shape] < best)
            best = tr->t[shape];
    }
    return best;
}

/* Measures a trial on every shape (heaviest first). A failure of the
 * candidate marks it failed; only a failure of the defaults, or of OpenCL
 * outside CLBlast, is an error. */
static pldr_status measure(tuner *tu, trial *tr)
{
    const double start = pldr_now();
    for (int j = 0; j < tu->n_shapes; j++)
        tr->t[j] = INFINITY;
    CLBlastStatusCode os = CLBlastSuccess;
    if (tr->kind == K_INDIRECT || tr->kind == K_DIRECT) {
        if (tr->fam >= 0)
            os = pldr_clblast_override(&tu->ocl, families[tr->fam].kernel, families[tr->fam].n_params,
                                 families[tr->fam].names, tr->v);
        if (os == CLBlastSuccess)
            os = override_threshold(&tu->ocl, tr->kind == K_DIRECT ? PLDR_GEMM_ALL_DIRECT : 0);
    }
    if (os != CLBlastSuccess) {
        tr->failed = 1;
        logf_(tu, "  rejected by CLBlastOverrideParameters (status %d)", (int)os);
        return PLDR_OK;
    }
    const char *why = NULL;
    int code = 0, aborted = 0;
    for (int o = 0; o < tu->n_shapes && !why && !aborted; o++) {
        const int j = tu->eval_order[o];
        const pldr_tune_shape *s = &tu->shapes[j];
        double t;
        int right = 0;
        pldr_status st = checked_call(tu, s, &code, &right); /* the first call compiles */
        if (st != PLDR_OK)
            return st;
        if (code != 0 || !right) {
            why = code != 0 ? "the GEMM failed" : "wrong results";
            break;
        }
        const double ref = tr->kind == K_INDIRECT || tr->kind == K_DIRECT ? best_of_kind(tu, tr->kind, j) : INFINITY;
        double best = INFINITY, spent = 0.0;
        for (int r = 0; r < MAX_REPS && (r < 2 || spent < MIN_REP_TIME); r++) {
            if ((code = timed_call(tu, s, &t)) != 0) {
                why = "the GEMM failed";
                break;
            }
            spent += t;
            if (t < best)
                best = t;
            if (best > ABORT_RATIO * ref) {
                aborted = 1;
                break;
            }
        }
        if (!why)
            tr->t[j] = best;
    }
    tr->cost_s = pldr_now() - start;
    if (why) {
        tr->failed = 1;
        for (int j = 0; j < tu->n_shapes; j++)
            tr->t[j] = INFINITY;
        if (tr->kind == K_BASE)
            return pldr_fail(PLDR_ERR_OPENCL, "CLBlast SGEMM with its default parameters: %s (status %d) on %s",
                             why, code, tu->ocl.info.name);
        if (code)
            logf_(tu, "  dropped: %s (status %d), %.1f s", why, code, tr->cost_s);
        else
            logf_(tu, "  dropped: %s, %.1f s", why, tr->cost_s);
        return PLDR_OK;
    }
    double tot = 0.0;
    int measured = 0;
    for (int j = 0; j < tu->n_shapes; j++)
        if (isfinite(tr->t[j])) {
            tot += tu->shapes[j].weight * tr->t[j];
            measured++;
        }
    if (aborted)
        logf_(tu, "  stopped after %d of %d shapes: over %.1fx the best, %.1f s", measured, tu->n_shapes,
              ABORT_RATIO, tr->cost_s);
    else
        logf_(tu, "  %.1f ms per forward set, %.1f s", tot * 1e3, tr->cost_s);
    return PLDR_OK;
}

/* Sum of weight x time over the shapes by_size[lo, hi) with a trial;
 * INFINITY when one of them was not measured. */
static double part(const tuner *tu, const trial *tr, int lo, int hi)
{
    double s = 0.0;
    for (int i = lo; i < hi; i++)
        s += tu->shapes[tu->by_size[i]].weight * tr->t[tu->by_size[i]];
    return s;
}

static double best_part(const tuner *tu, int kind, int lo, int hi, int *which)
{
    double best = INFINITY;
    *which = -1;
    for (int i = 0; i < tu->n_trials; i++) {
        const trial *tr = &tu->trials[i];
        if (tr->kind != kind || tr->failed)
            continue;
        double v = part(tu, tr, lo, hi);
        if (v < best) {
            best = v;
            *which = i;
        }
    }
    return best;
}

/* XGEMM_MIN_INDIRECT_SIZE sending the s smallest shapes to the direct kernel
 * and the others to the indirect one (direct when m*n*k < size^3); 0 when no
 * integer does. */
static int split_threshold(const tuner *tu, int s, size_t *thr)
{
    const int n = tu->n_shapes;
    if (s == 0) { /* all indirect: just at the smallest shape */
        double lo = mnk(&tu->shapes[tu->by_size[0]]);
        size_t t = (size_t)floor(cbrt(lo));
        while ((double)(t + 1) * (t + 1) * (t + 1) <= lo)
            t++;
        while (t > 0 && (double)t * t * t > lo)
            t--;
        *thr = t;
        return 1;
    }
    const double lo = mnk(&tu->shapes[tu->by_size[s - 1]]);
    const double hi = s < n ? mnk(&tu->shapes[tu->by_size[s]]) : lo * 8.0;
    size_t t = (size_t)llround(cbrt(sqrt(lo * hi)));
    while ((double)t * t * t <= lo)
        t++;
    while (t > 0 && (double)t * t * t > hi)
        t--;
    if ((double)t * t * t <= lo || (double)t * t * t > hi || t >= PLDR_GEMM_ALL_DIRECT)
        return 0;
    *thr = t;
    return 1;
}

typedef struct solution {
    double total;
    int split; /* the `split` smallest shapes go to the direct kernel */
    int ind, dir; /* trial indices, -1 when unused */
    size_t thr;
} solution;

/* The best indirect trial, direct trial and threshold; with fixed >= 0, the
 * best one that uses that trial. */
static solution solve(const tuner *tu, int fixed)
{
    solution best = {INFINITY, 0, -1, -1, 0};
    const int n = tu->n_shapes;
    const trial *ft = fixed >= 0 ? &tu->trials[fixed] : NULL;
    for (int s = 0; s <= n; s++) {
        size_t thr;
        if (!split_threshold(tu, s, &thr))
            continue;
        int dir = -1, ind = -1;
        double d = 0.0, i = 0.0;
        if (s > 0) {
            if (ft && ft->kind == K_DIRECT) {
                d = part(tu, ft, 0, s);
                dir = fixed;
            } else {
                d = best_part(tu, K_DIRECT, 0, s, &dir);
            }
        }
        if (s < n) {
            if (ft && ft->kind == K_INDIRECT) {
                i = part(tu, ft, s, n);
                ind = fixed;
            } else {
                i = best_part(tu, K_INDIRECT, s, n, &ind);
            }
        }
        if (ft && dir != fixed && ind != fixed)
            continue;
        if (d + i < best.total) {
            best.total = d + i;
            best.split = s;
            best.ind = ind;
            best.dir = dir;
            best.thr = thr;
        }
    }
    return best;
}

static int visited(const tuner *tu, int fam, const size_t *v)
{
    for (int i = 0; i < tu->n_trials; i++)
        if (tu->trials[i].fam == fam &&
            memcmp(tu->trials[i].v, v, (size_t)families[fam].n_params * sizeof *v) == 0)
            return 1;
    return 0;
}

static void tie_dims(int fam, size_t *v)
{
    if (fam == FAM_X1) {
        v[XP_MDIMA] = v[XP_MDIMC];
        v[XP_NDIMB] = v[XP_NDIMC];
        if (!PLDR_GEMMK1_UNEQUAL_TILES)
            v[XP_NWG] = v[XP_MWG];
    }
}

static int random_set(tuner *tu, int fam, size_t *v)
{
    const family *f = &families[fam];
    for (int attempt = 0; attempt < 20000; attempt++) {
        for (int i = 0; i < f->n_params; i++)
            v[i] = f->space[i].v[rnd(tu) % (uint64_t)f->space[i].n];
        tie_dims(fam, v);
        if (!family_invalid(fam, v, &tu->lim) && !visited(tu, fam, v))
            return 1;
    }
    return 0;
}

static int index_of(const opts *o, size_t v)
{
    for (int i = 0; i < o->n; i++)
        if (o->v[i] == v)
            return i;
    return 0;
}

/* A new valid set near parent: first the untried sets one step away (one
 * parameter moved to the next value of its range), picked at random, so
 * that the search climbs from the family's best set; when none is left, one
 * or two parameters moved to any values. */
static int mutate(tuner *tu, int fam, const size_t *parent, size_t *v)
{
    const family *f = &families[fam];
    int movable[XP_COUNT], n_mov = 0;
    for (int i = 0; i < f->n_params; i++)
        if (f->space[i].n > 1 &&
            !(fam == FAM_X1 && (i == XP_MDIMA || i == XP_NDIMB || (!PLDR_GEMMK1_UNEQUAL_TILES && i == XP_NWG))))
            movable[n_mov++] = i;
    if (n_mov == 0)
        return 0;
    size_t near[2 * XP_COUNT][XP_COUNT];
    int n_near = 0;
    for (int m = 0; m < n_mov; m++) {
        const int p = movable[m];
        const opts *o = &f->space[p];
        const int at = index_of(o, parent[p]);
        for (int step = -1; step <= 1; step += 2) {
            if (at + step < 0 || at + step >= o->n)
                continue;
            memcpy(near[n_near], parent, (size_t)f->n_params * sizeof *v);
            near[n_near][p] = o->v[at + step];
            tie_dims(fam, near[n_near]);
            if (!family_invalid(fam, near[n_near], &tu->lim) && !visited(tu, fam, near[n_near]))
                n_near++;
        }
    }
    if (n_near > 0) {
        memcpy(v, near[rnd(tu) % (uint64_t)n_near], (size_t)f->n_params * sizeof *v);
        return 1;
    }
    for (int attempt = 0; attempt < 400; attempt++) {
        memcpy(v, parent, (size_t)f->n_params * sizeof *v);
        int changes = 1 + (rnd(tu) % 2);
        for (int c = 0; c < changes; c++) {
            int p = movable[rnd(tu) % (uint64_t)n_mov];
            const opts *o = &f->space[p];
            v[p] = o->v[rnd(tu) % (uint64_t)o->n];
        }
        tie_dims(fam, v);
        if (!family_invalid(fam, v, &tu->lim) && !visited(tu, fam, v))
            return 1;
    }
    return random_set(tu, fam, v);
}

static pldr_status new_trial(tuner *tu, int kind, int fam, const size_t *v, trial **out)
{
    if (tu->n_trials == tu->cap_trials) {
        int cap = tu->cap_trials ? 2 * tu->cap_trials : 32;
        trial *t = realloc(tu->trials, (size_t)cap * sizeof *t);
        if (!t)
            return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
        tu->trials = t;
        tu->cap_trials = cap;
    }
    trial *tr = &tu->trials[tu->n_trials];
    memset(tr, 0, sizeof *tr);
    tr->t = calloc((size_t)tu->n_shapes, sizeof *tr->t);
    if (!tr->t)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    tr->kind = kind;
    tr->fam = fam;
    if (v)
        memcpy(tr->v, v, (size_t)families[fam].n_params * sizeof *v);
    tu->n_trials++;
    *out = tr;
    return PLDR_OK;
}

/* The family's known set with the best solution around it; -1 if none. */
static int family_best(const tuner *tu, int fam, double *score)
{
    int best = -1;
    *score = INFINITY;
    for (int i = 0; i < tu->n_trials; i++) {
        if (tu->trials[i].fam != fam || tu->trials[i].failed)
            continue;
        solution s = solve(tu, i);
        if (best < 0 || s.total < *score) {
            *score = s.total;
            best = i;
        }
    }
    return best;
}

static pldr_status measure_isolated(tuner *tu, trial *tr);

static pldr_status search(tuner *tu)
{
    const pldr_tune_params *p = tu->p;
    trial *tr;
    pldr_status st;
    double cost_sum = 0.0;
    int n_cost = 0, explicit_sets = 0;
    int turns[N_FAM] = {0, 0, 0}, exhausted[N_FAM] = {0, 0, 0};
    /* the defaults on each path, then one seed per family, then mutations */
    for (int step = 0;; step++) {
        double elapsed = pldr_now() - tu->t0;
        double est = n_cost ? cost_sum / n_cost : tu->trials[0].cost_s;
        if (elapsed + est > p->budget_s) {
            logf_(tu, "budget of %.0f s reached after %.0f s (a candidate takes about %.0f s)", p->budget_s,
                  elapsed, est);
            break;
        }
        int kind, fam = -1;
        size_t v[XP_COUNT];
        if (step < 2) {
            kind = step == 0 ? K_INDIRECT : K_DIRECT;
            logf_(tu, "[%d] CLBlast default %s, every shape on the %s path (%.0f s elapsed)", tu->n_trials + 1,
                  step == 0 ? "Xgemm" : "XgemmDirect", step == 0 ? "indirect" : "direct", elapsed);
        } else {
            if (p->max_candidates >= 0 && explicit_sets >= p->max_candidates) {
                logf_(tu, "candidate limit of %d reached", p->max_candidates);
                break;
            }
            if (step < 2 + N_FAM) {
                fam = step - 2;
                memcpy(v, families[fam].seed, (size_t)families[fam].n_params * sizeof *v);
                if (family_invalid(fam, v, &tu->lim) && !random_set(tu, fam, v)) {
                    exhausted[fam] = 1;
                    continue;
                }
                turns[fam]++;
            } else {
                /* families in the current best solution get twice the turns */
                solution sol = solve(tu, -1);
                double best_key = INFINITY;
                for (int f = 0; f < N_FAM; f++) {
                    if (exhausted[f])
                        continue;
                    int in_sol = (sol.ind >= 0 && tu->trials[sol.ind].fam == f) ||
                                 (sol.dir >= 0 && tu->trials[sol.dir].fam == f);
                    double key = turns[f] / (in_sol ? 2.0 : 1.0);
                    if (key < best_key) {
                        best_key = key;
                        fam = f;
                    }
                }
                if (fam < 0) {
                    logf_(tu, "search space exhausted");
                    break;
                }
                double score;
                int parent = family_best(tu, fam, &score);
                int ok = parent >= 0 ? mutate(tu, fam, tu->trials[parent].v, v) : random_set(tu, fam, v);
                if (!ok) {
                    exhausted[fam] = 1;
                    continue;
                }
                turns[fam]++;
            }
            kind = fam == FAM_D ? K_DIRECT : K_INDIRECT;
            char desc[400];
            params_string(fam, v, desc, sizeof desc);
            logf_(tu, "[%d] %s %s (%.0f s elapsed)", tu->n_trials + 1, families[fam].label, desc, elapsed);
            explicit_sets++;
        }
        if ((st = new_trial(tu, kind, fam, fam >= 0 ? v : NULL, &tr)) != PLDR_OK)
            return st;
        if ((st = measure_isolated(tu, tr)) != PLDR_OK)
            return st;
        cost_sum += tr->cost_s;
        n_cost++;
    }
    return PLDR_OK;
}

/* ------------------------------------------------------------ isolation */

/* What a child process reports (src/tune/child.c). */
typedef struct reply {
    pldr_child_head head;
    pldr_device_info info;
    pldr_gemm_limits lim;
    double t[16];
    int failed, found;
} reply;

static pldr_status run_child(pldr_child_fn fn, void *ctx, double timeout_s, reply *rep, char *died, size_t died_size)
{
    return pldr_child_run(fn, ctx, rep, sizeof *rep, timeout_s, died, died_size);
}

/* run_child with up to 600 s for a quick job whose failure is an error. */
static pldr_status run_child_ok(pldr_child_fn fn, void *ctx, const char *what, reply *rep)
{
    return pldr_child_run_ok(fn, ctx, rep, sizeof *rep, 600.0, what);
}

/* In a child: opens the device and creates the matrices. */
static pldr_status child_open(tuner *tu, reply *rep)
{
    pldr_status st = pldr_ocl_open(tu->p->device, &tu->ocl);
    if (st != PLDR_OK)
        return st;
    tu->ocl_open = 1;
    pldr_gemm_limits_get(&tu->ocl, &tu->lim);
    rep->info = tu->ocl.info;
    rep->lim = tu->lim;
    return setup_buffers(tu);
}

typedef struct job {
    tuner *tu;
    trial *tr;
    const solution *sol;
} job;

static pldr_status child_measure(void *ctx, void *out)
{
    reply *rep = out;
    job *jb = ctx;
    pldr_status st = child_open(jb->tu, rep);
    if (st == PLDR_OK)
        st = measure(jb->tu, jb->tr);
    for (int j = 0; j < jb->tu->n_shapes; j++)
        rep->t[j] = jb->tr->t[j];
    rep->failed = jb->tr->failed;
    return st;
}

/* Measures a trial in a child process (see run_child). */
static pldr_status measure_isolated(tuner *tu, trial *tr)
{
    job jb = {tu, tr, NULL};
    reply rep;
    char died[128];
    const double t0 = pldr_now();
    /* the first call of a parameter set compiles it: allow for that */
    const double timeout = tr->kind == K_BASE ? 3600.0 : 300.0 + 4.0 * tu->trials[0].cost_s;
    pldr_status st = run_child(child_measure, &jb, timeout, &rep, died, sizeof died);
    if (st != PLDR_OK)
        return st;
    tr->cost_s = pldr_now() - t0;
    if (died[0] || rep.head.status != PLDR_OK) {
        tr->failed = 1;
        for (int j = 0; j < tu->n_shapes; j++)
            tr->t[j] = INFINITY;
        if (tr->kind == K_BASE)
            return died[0] ? pldr_fail(PLDR_ERR_OPENCL, "measuring CLBlast's defaults: %s", died)
                           : pldr_fail((pldr_status)rep.head.status, "%s", rep.head.message);
        logf_(tu, "  dropped: %s", died[0] ? died : rep.head.message);
        return PLDR_OK;
    }
    for (int j = 0; j < tu->n_shapes; j++)
        tr->t[j] = rep.t[j];
    tr->failed = rep.failed;
    if (tr->kind == K_BASE) {
        tu->info = rep.info;
        tu->lim = rep.lim;
    }
    return PLDR_OK;
}

/* In a child: applies the solution's parameters and measures every shape
 * with them (checking the results). This also compiles the combination once,
 * so that the driver's on-disk cache (PoCL's kcache, NVIDIA's ComputeCache)
 * spares the next model load the compilation. */
static pldr_status child_confirm(void *ctx, void *out)
{
    reply *rep = out;
    job *jb = ctx;
    tuner *tu = jb->tu;
    const solution *sol = jb->sol;
    pldr_status st = child_open(tu, rep);
    if (st != PLDR_OK)
        return st;
    CLBlastStatusCode s = CLBlastSuccess;
    if (sol->ind >= 0 && tu->trials[sol->ind].fam >= 0)
        s = pldr_clblast_override(&tu->ocl, "Xgemm", XP_COUNT, pldr_xgemm_names, tu->trials[sol->ind].v);
    if (s == CLBlastSuccess && sol->dir >= 0 && tu->trials[sol->dir].fam >= 0)
        s = pldr_clblast_override(&tu->ocl, "XgemmDirect", DP_COUNT, pldr_direct_names, tu->trials[sol->dir].v);
    if (s == CLBlastSuccess)
        s = override_threshold(&tu->ocl, sol->thr);
    if (s != CLBlastSuccess) {
        rep->failed = 1;
        snprintf(rep->head.message, sizeof rep->head.message, "CLBlastOverrideParameters failed (status %d)", (int)s);
        return PLDR_OK;
    }
    st = measure(tu, jb->tr);
    for (int j = 0; j < tu->n_shapes; j++)
        rep->t[j] = jb->tr->t[j];
    rep->failed = jb->tr->failed;
    if (rep->failed)
        snprintf(rep->head.message, sizeof rep->head.message, "wrong results or a failing GEMM");
    return st;
}

/* Measures the chosen combination (into fin) and the defaults once more,
 * each in a child process; *ok is cleared when the combination fails. */
static pldr_status confirm(tuner *tu, const solution *sol, trial *fin, int *ok)
{
    job jb = {tu, fin, sol};
    reply rep;
    char died[128];
    const double t0 = pldr_now();
    pldr_status st = run_child(child_confirm, &jb, 300.0 + 4.0 * tu->trials[0].cost_s, &rep, died, sizeof died);
    if (st != PLDR_OK)
        return st;
    if (died[0] || rep.head.status != PLDR_OK || rep.failed) {
        logf_(tu, "the chosen combination fails (%s): CLBlast's defaults stay",
              died[0] ? died : rep.head.message[0] ? rep.head.message : "error");
        *ok = 0;
        return PLDR_OK;
    }
    for (int j = 0; j < tu->n_shapes; j++)
        fin->t[j] = rep.t[j];
    fin->cost_s = pldr_now() - t0;
    return PLDR_OK;
}

/* ------------------------------------------------------------ writing */

static json_t *set_json(int n, const char *const *names, const size_t *v)
{
    json_t *o = json_object();
    for (int i = 0; o && i < n; i++)
        json_object_set_new(o, names[i], json_integer((json_int_t)v[i]));
    return o;
}

static json_t *ms(double sec) { return isfinite(sec) ? json_real(round(sec * 1e6) / 1e3) : json_null(); }

static pldr_status write_file(tuner *tu, const char *model_dir, const solution *sol, int tuned,
                              const pldr_tune_result *res, const char *path)
{
    const pldr_device_info *di = &tu->info;
    json_t *root = json_object(), *dev = json_object(), *model = json_object(), *search_o = json_object();
    json_t *shapes = json_array(), *params = json_object(), *trials = json_array();
    if (!root || !dev || !model || !search_o || !shapes || !params || !trials) {
        json_decref(root);
        json_decref(dev);
        json_decref(model);
        json_decref(search_o);
        json_decref(shapes);
        json_decref(params);
        json_decref(trials);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    char when[32];
    time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    json_object_set_new(root, "format", json_string(PLDR_GEMM_TUNING_FORMAT));
    json_object_set_new(root, "version", json_integer(PLDR_GEMM_TUNING_VERSION));
    json_object_set_new(root, "created", json_string(when));
    json_object_set_new(root, "clblast", json_string(PLDR_CLBLAST_VERSION_STRING));
    json_object_set_new(dev, "name", json_string(di->name));
    json_object_set_new(dev, "vendor", json_string(di->vendor));
    json_object_set_new(dev, "type", json_string(di->type));
    json_object_set_new(dev, "platform", json_string(di->platform));
    json_object_set_new(dev, "platform_version", json_string(di->platform_version));
    json_object_set_new(dev, "driver_version", json_string(di->driver_version));
    json_object_set_new(root, "device", dev);
    json_object_set_new(model, "dir", json_string(model_dir));
    json_object_set_new(model, "n_layers", json_integer(tu->cfg.n_layers));
    json_object_set_new(model, "d_model", json_integer(tu->cfg.d_model));
    json_object_set_new(model, "d_ff", json_integer(tu->cfg.d_ff));
    json_object_set_new(model, "vocab_size", json_integer(tu->cfg.vocab_size));
    json_object_set_new(model, "max_position", json_integer(tu->cfg.max_position));
    json_object_set_new(root, "model", model);
    json_object_set_new(search_o, "shapes", json_string(tu->p->shapes == PLDR_TUNE_ALL ? "all" : "prefill"));
    json_object_set_new(search_o, "budget_s", json_real(tu->p->budget_s));
    json_object_set_new(search_o, "elapsed_s", json_real(round(res->elapsed_s * 10) / 10));
    json_object_set_new(search_o, "candidates", json_integer(res->n_candidates));
    json_object_set_new(search_o, "seed", json_integer((json_int_t)tu->p->seed));
    json_object_set_new(search_o, "tuned", json_boolean(tuned));
    json_object_set_new(root, "search", search_o);
    for (int i = 0; i < res->n_shapes; i++) {
        const pldr_tune_shape *s = &res->shapes[i];
        json_t *o = json_object();
        if (!o)
            continue;
        json_object_set_new(o, "m", json_integer((json_int_t)s->m));
        json_object_set_new(o, "n", json_integer((json_int_t)s->n));
        json_object_set_new(o, "k", json_integer((json_int_t)s->k));
        json_object_set_new(o, "what", json_string(s->what));
        json_object_set_new(o, "weight", json_real(s->weight));
        json_object_set_new(o, "before_ms", ms(s->before_s));
        json_object_set_new(o, "after_ms", ms(s->after_s));
        json_object_set_new(o, "before_gflops", json_real(round(flops(s) / s->before_s * 1e-7) / 100));
        json_object_set_new(o, "after_gflops", json_real(round(flops(s) / s->after_s * 1e-7) / 100));
        json_object_set_new(o, "path_after", json_string(!tuned ? "default" : s->direct_after ? "direct" : "indirect"));
        json_array_append_new(shapes, o);
    }
    json_object_set_new(root, "shapes", shapes);
    json_object_set_new(root, "total_before_ms", ms(res->total_before_s));
    json_object_set_new(root, "total_after_ms", ms(res->total_after_s));
    if (tuned) {
        if (sol->ind >= 0 && tu->trials[sol->ind].fam >= 0)
            json_object_set_new(params, "Xgemm", set_json(XP_COUNT, pldr_xgemm_names, tu->trials[sol->ind].v));
        if (sol->dir >= 0 && tu->trials[sol->dir].fam >= 0)
            json_object_set_new(params, "XgemmDirect", set_json(DP_COUNT, pldr_direct_names, tu->trials[sol->dir].v));
        json_object_set_new(params, "GemmRoutine", set_json(1, &pldr_gemm_threshold_name, &sol->thr));
    }
    json_object_set_new(root, "parameters", params);
    for (int i = 0; i < tu->n_trials; i++) {
        const trial *tr = &tu->trials[i];
        json_t *o = json_object(), *times = json_array();
        if (!o || !times) {
            json_decref(o);
            json_decref(times);
            continue;
        }
        char desc[400];
        if (tr->fam >= 0)
            params_string(tr->fam, tr->v, desc, sizeof desc);
        json_object_set_new(o, "kernel", json_string(tr->kind == K_BASE ? "defaults"
                                                     : tr->kind == K_FINAL ? "chosen combination"
                                                     : tr->fam < 0 ? (tr->kind == K_DIRECT ? "XgemmDirect default"
                                                                                           : "Xgemm default")
                                                                   : families[tr->fam].label));
        if (tr->fam >= 0)
            json_object_set_new(o, "params", json_string(desc));
        for (int j = 0; j < tu->n_shapes; j++)
            json_array_append_new(times, ms(tr->t[j]));
        json_object_set_new(o, "ms", times);
        json_object_set_new(o, "failed", json_boolean(tr->failed));
        json_object_set_new(o, "cost_s", json_real(round(tr->cost_s * 10) / 10));
        json_array_append_new(trials, o);
    }
    json_object_set_new(root, "trials", trials);
    char *text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(8));
    json_decref(root);
    if (!text)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    size_t len = strlen(text);
    char *out = malloc(len + 1);
    if (out) {
        memcpy(out, text, len);
        out[len] = '\n';
    }
    free(text);
    char *dir = out ? pldr_strdup(path) : NULL;
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash)
        *slash = '\0';
    pldr_status st = dir ? (slash ? pldr_mkdir_p(dir) : PLDR_OK) : pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    free(dir);
    if (st == PLDR_OK)
        st = pldr_write_file_atomic(path, out, len + 1);
    free(out);
    return st;
}

/* ------------------------------------------------------------ the run */

pldr_tune_params pldr_tune_default_params(void)
{
    pldr_tune_params p;
    memset(&p, 0, sizeof p);
    p.budget_s = 600.0;
    p.shapes = PLDR_TUNE_PREFILL;
    p.max_candidates = -1;
    p.seed = 1;
    return p;
}

void pldr_tune_result_free(pldr_tune_result *r)
{
    if (!r)
        return;
    free(r->path);
    free(r->shapes);
    memset(r, 0, sizeof *r);
}

static void tuner_free(tuner *tu)
{
    for (int i = 0; i < tu->n_trials; i++)
        free(tu->trials[i].t);
    free(tu->trials);
    if (tu->a)
        clReleaseMemObject(tu->a);
    if (tu->b)
        clReleaseMemObject(tu->b);
    if (tu->c)
        clReleaseMemObject(tu->c);
    free(tu->ha);
    free(tu->hb);
    free(tu->hc);
    if (tu->ocl_open)
        pldr_ocl_close(&tu->ocl);
}

/* Sorts idx[0, n) by increasing key (n is small). */
static void sort_by(int *idx, const double *key, int n)
{
    for (int i = 1; i < n; i++) {
        int x = idx[i], j = i;
        while (j > 0 && key[idx[j - 1]] > key[x]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = x;
    }
}

static pldr_status run_tuner(tuner *tu, const char *model_dir, pldr_tune_result *res)
{
    const pldr_tune_params *p = tu->p;
    char *cfg_path = pldr_path_join(model_dir, "config.json");
    if (!cfg_path)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    pldr_status st = pldr_config_load(cfg_path, &tu->cfg);
    free(cfg_path);
    if (st != PLDR_OK)
        return st;
    tu->n_shapes = model_shapes(&tu->cfg, p->shapes, tu->shapes);
    if (tu->n_shapes == 0)
        return pldr_fail(PLDR_ERR_UNSUPPORTED, "the model has no prefill GEMM to tune (max_position_embeddings %d)",
                         tu->cfg.max_position);
    double size_key[16], cost_key[16];
    for (int i = 0; i < tu->n_shapes; i++) {
        tu->eval_order[i] = tu->by_size[i] = i;
        size_key[i] = mnk(&tu->shapes[i]);
        cost_key[i] = -tu->shapes[i].weight * flops(&tu->shapes[i]);
    }
    sort_by(tu->by_size, size_key, tu->n_shapes);
    sort_by(tu->eval_order, cost_key, tu->n_shapes);

    double fl = 0.0;
    for (int i = 0; i < tu->n_shapes; i++)
        fl += tu->shapes[i].weight * flops(&tu->shapes[i]);
    logf_(tu, "tuning CLBlast SGEMM for %s: %d shapes, %.1f GFLOP per forward set, budget %.0f s", model_dir,
          tu->n_shapes, fl * 1e-9, p->budget_s);
    for (int i = 0; i < tu->n_shapes; i++) {
        const pldr_tune_shape *s = &tu->shapes[i];
        logf_(tu, "  shape %zux%zux%zu (%s) x%g", s->m, s->n, s->k, s->what, s->weight);
    }
    logf_(tu, "[1] CLBlast defaults (each parameter set is compiled on its first call, in a process of its own)");
    trial *first;
    if ((st = new_trial(tu, K_BASE, -1, NULL, &first)) != PLDR_OK || (st = measure_isolated(tu, first)) != PLDR_OK)
        return st;
    logf_(tu, "device: %s (%s, %s)", tu->info.name, tu->info.platform, tu->info.driver_version);
    res->path = pldr_tuning_path(&tu->info, p->cache_dir);
    if (!res->path)
        return pldr_fail(PLDR_ERR_IO, "no cache directory for the tuning file (set XDG_CACHE_HOME or HOME)");
    if ((st = search(tu)) != PLDR_OK)
        return st;
    /* The chosen combination and the defaults measured again, one after the
     * other: each shape's time is the better of its two measurements, which
     * evens out some of the noise of a shared machine. */
    solution sol = solve(tu, -1);
    int tuned = isfinite(sol.total);
    trial *fin = NULL, *base2 = NULL;
    if (tuned) {
        logf_(tu, "[%d] the chosen combination, then the defaults again", tu->n_trials + 1);
        if ((st = new_trial(tu, K_FINAL, -1, NULL, &fin)) != PLDR_OK ||
            (st = confirm(tu, &sol, fin, &tuned)) != PLDR_OK)
            return st;
        if (tuned) {
            if ((st = new_trial(tu, K_BASE, -1, NULL, &base2)) != PLDR_OK ||
                (st = measure_isolated(tu, base2)) != PLDR_OK)
                return st;
            fin = &tu->trials[tu->n_trials - 2]; /* new_trial may have moved it */
        }
    }
    const trial *base = &tu->trials[0];
    int rank[16];
    for (int i = 0; i < tu->n_shapes; i++)
        rank[tu->by_size[i]] = i;
    double before[16], after[16], base_total = 0.0, tuned_total = 0.0;
    for (int j = 0; j < tu->n_shapes; j++) {
        before[j] = base->t[j];
        if (base2 && base2->t[j] < before[j])
            before[j] = base2->t[j];
        after[j] = before[j];
        if (tuned) {
            after[j] = tu->trials[rank[j] < sol.split ? sol.dir : sol.ind].t[j];
            if (fin->t[j] < after[j])
                after[j] = fin->t[j];
        }
        base_total += tu->shapes[j].weight * before[j];
        tuned_total += tu->shapes[j].weight * after[j];
    }
    if (tuned && !(tuned_total < MARGIN * base_total))
        tuned = 0;
    res->n_shapes = tu->n_shapes;
    res->shapes = malloc((size_t)tu->n_shapes * sizeof *res->shapes);
    if (!res->shapes)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    res->total_before_s = base_total;
    res->total_after_s = tuned ? tuned_total : base_total;
    for (int j = 0; j < tu->n_shapes; j++) {
        pldr_tune_shape *s = &res->shapes[j];
        *s = tu->shapes[j];
        s->before_s = before[j];
        s->direct_after = tuned && rank[j] < sol.split;
        s->after_s = tuned ? after[j] : before[j];
    }
    res->tuned = tuned;
    res->n_candidates = tu->n_trials;
    res->elapsed_s = pldr_now() - tu->t0;
    if (tuned) {
        char desc[400];
        if (sol.ind >= 0) {
            const trial *t = &tu->trials[sol.ind];
            if (t->fam >= 0)
                params_string(t->fam, t->v, desc, sizeof desc);
            logf_(tu, "indirect: %s %s", t->fam >= 0 ? families[t->fam].label : "Xgemm",
                  t->fam >= 0 ? desc : "CLBlast default");
        }
        if (sol.dir >= 0) {
            const trial *t = &tu->trials[sol.dir];
            if (t->fam >= 0)
                params_string(t->fam, t->v, desc, sizeof desc);
            logf_(tu, "direct: XgemmDirect %s", t->fam >= 0 ? desc : "CLBlast default");
        }
        logf_(tu, "XGEMM_MIN_INDIRECT_SIZE %zu: %d of %d shapes direct; %.1f -> %.1f ms per forward set (%.2fx)",
              sol.thr, sol.split, tu->n_shapes, base_total * 1e3, tuned_total * 1e3, base_total / tuned_total);
    } else {
        logf_(tu, "CLBlast's defaults stay: the best found takes %.1f ms against %.1f ms", tuned_total * 1e3,
              base_total * 1e3);
    }
    if ((st = write_file(tu, model_dir, &sol, tuned, res, res->path)) != PLDR_OK)
        return st;
    return PLDR_OK;
}

pldr_status pldr_tune_run(const char *model_dir, const pldr_tune_params *params, pldr_tune_result *result)
{
    pldr_clear_error();
    pldr_tune_params defaults = pldr_tune_default_params();
    if (!params)
        params = &defaults;
    if (!model_dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no model directory given");
    if (!(params->budget_s >= 0.0))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "negative tuning budget");
    if (params->cache_dir && !*params->cache_dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "tuning needs a cache directory");
    if (!params->cache_dir) {
        char *dir = pldr_default_cache_dir();
        if (!dir)
            return pldr_fail(PLDR_ERR_IO, "no cache directory for the tuning file (set XDG_CACHE_HOME or HOME)");
        free(dir);
    }
    tuner tu;
    memset(&tu, 0, sizeof tu);
    tu.p = params;
    tu.rng = params->seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (!tu.rng)
        tu.rng = 1;
    tu.t0 = pldr_now();
    pldr_tune_result res;
    memset(&res, 0, sizeof res);
    pldr_status st = run_tuner(&tu, model_dir, &res);
    tuner_free(&tu);
    if (st != PLDR_OK || !result)
        pldr_tune_result_free(&res);
    else
        *result = res;
    return st;
}

/* ------------------------------------------------------------ first use */

typedef struct check_job {
    const pldr_tune_params *p;
    const pldr_config *cfg;
} check_job;

/* Whether the tuning file at path was made for GEMMs of the model's shapes. */
static int same_model(const char *path, const pldr_config *c)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    json_t *m = root ? json_object_get(root, "model") : NULL;
    static const char *const keys[] = {"d_model", "d_ff", "vocab_size"};
    const int want[] = {c->d_model, c->d_ff, c->vocab_size};
    int same = json_is_object(m);
    for (size_t i = 0; same && i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(m, keys[i]);
        same = json_is_integer(v) && json_integer_value(v) == want[i];
    }
    json_decref(root);
    return same;
}

/* In a child: whether the device has a readable, valid tuning file made for
 * the model's shapes. */
static pldr_status child_check(void *ctx, void *out)
{
    reply *rep = out;
    check_job *cj = ctx;
    pldr_ocl ocl;
    pldr_status st = pldr_ocl_open(cj->p->device, &ocl);
    if (st != PLDR_OK)
        return st;
    rep->info = ocl.info;
    pldr_gemm_tuning t;
    int found = 0;
    char *path = NULL;
    if (pldr_gemm_tuning_read(&ocl, cj->p->cache_dir, &t, &found, &path) == PLDR_OK && found && same_model(path, cj->cfg))
        rep->found = 1;
    free(path);
    pldr_ocl_close(&ocl);
    return PLDR_OK;
}

/* In a child: the number of devices (into rep->found). */
static pldr_status child_count(void *ctx, void *out)
{
    reply *rep = out;
    (void)ctx;
    pldr_device_info *list = NULL;
    int n = 0;
    pldr_status st = pldr_list_devices(&list, &n);
    free(list);
    rep->found = n;
    return st;
}

static pldr_status tune_if_missing_one(const char *model_dir, const pldr_tune_params *params, int *tuned);

pldr_status pldr_tune_if_missing(const char *model_dir, const char *device, const pldr_tune_params *params,
                                 int *tuned)
{
    pldr_clear_error();
    if (tuned)
        *tuned = 0;
    pldr_tune_params p = params ? *params : pldr_tune_default_params();
    if (device)
        p.device = device;
    if (!model_dir)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "no model directory given");
    if (pldr_tuning_disabled())
        return PLDR_OK;
    if (!p.device || strcmp(p.device, "all") != 0)
        return tune_if_missing_one(model_dir, &p, tuned);
    /* every device: count them in a child too */
    reply rep;
    pldr_status st = run_child_ok(child_count, NULL, "listing the devices", &rep);
    if (st != PLDR_OK)
        return st;
    for (int i = 0; i < rep.found && st == PLDR_OK; i++) {
        char spec[16];
        snprintf(spec, sizeof spec, "%d", i);
        p.device = spec;
        int t = 0;
        st = tune_if_missing_one(model_dir, &p, &t);
        if (tuned && t)
            *tuned = 1;
    }
    return st;
}

static pldr_status tune_if_missing_one(const char *model_dir, const pldr_tune_params *params, int *tuned)
{
    pldr_tune_params p = *params;
    pldr_config cfg;
    char *cfg_path = pldr_path_join(model_dir, "config.json");
    if (!cfg_path)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    pldr_status st = pldr_config_load(cfg_path, &cfg);
    free(cfg_path);
    if (st != PLDR_OK)
        return st;
    /* the check opens the device: in a child, so that this process has not
     * used OpenCL when pldr_tune_run forks its measuring processes */
    check_job cj = {&p, &cfg};
    reply rep;
    st = run_child_ok(child_check, &cj, "checking the tuning file", &rep);
    if (st != PLDR_OK)
        return st;
    if (rep.found)
        return PLDR_OK;
    if (p.log) {
        char line[256];
        snprintf(line, sizeof line, "no usable GEMM tuning for %s: tuning now (budget %.0f s)", rep.info.name,
                 p.budget_s);
        p.log(line, p.log_user);
    }
    st = pldr_tune_run(model_dir, &p, NULL);
    if (st == PLDR_OK && tuned)
        *tuned = 1;
    return st;
}
