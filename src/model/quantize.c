/* Weight conversions for the BF16, Q8_0 and Q4_0 storage dtypes, done once
 * at load. Q8_0 follows llama.cpp's reference quantizer (ggml-quants.c,
 * quantize_row_q8_0_ref) operation for operation in float32, so that the same
 * checkpoint gives the same blocks there and here; Q4_0 keeps llama.cpp's
 * block layout and chooses each block's scale by least squares. The float64
 * reference of the tests (tests/pldr_ref.py, quantize_*) computes the same
 * blocks. */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/quantize.h"
#include "common/util.h"

uint16_t pldr_float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and a NaN */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void pldr_quantize_q8_0(const float *x, size_t n, int8_t *q, uint16_t *d)
{
    for (size_t b = 0; b < n / PLDR_QBLOCK; b++) {
        const float *xb = x + b * PLDR_QBLOCK;
        float amax = 0.0f;
        for (int j = 0; j < PLDR_QBLOCK; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        d[b] = pldr_float_to_half(dd);
        for (int j = 0; j < PLDR_QBLOCK; j++)
            q[b * PLDR_QBLOCK + (size_t)j] = (int8_t)roundf(xb[j] * id);
    }
}

/* Q4_0 with the block's scale chosen by least squares. Each candidate
 * c = -9..9 maps the value m of largest magnitude to -(8 + c / 10), rounds
 * every x of the block to L = round(x * iscale) in [-8, 7], and fits the scale
 * that minimizes the block's squared error for those L, d = sum(x L) /
 * sum(L^2); the candidate whose fit removes the most error, sum(x L)^2 /
 * sum(L^2), wins (the first of equal ones). c = 0 is llama.cpp's choice of L.
 * The sums are exact in double (the x with L != 0 lie within a factor 18 of
 * m), so the choice does not depend on the order of summation. */
void pldr_quantize_q4_0(const float *x, size_t n, uint8_t *q, uint16_t *d)
{
    const int half = PLDR_QBLOCK / 2;
    for (size_t b = 0; b < n / PLDR_QBLOCK; b++) {
        const float *xb = x + b * PLDR_QBLOCK;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < PLDR_QBLOCK; j++)
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        int best_l[PLDR_QBLOCK] = {0};
        double best = -1.0, best_d = 0.0;
        for (int c = -9; c <= 9 && amax > 0.0f; c++) {
            const float iscale = -(8.0f + 0.1f * (float)c) / max;
            if (!isfinite(iscale)) /* m tiny: this and the larger candidates overflow */
                break;
            int l[PLDR_QBLOCK];
            double sxl = 0.0, sl2 = 0.0;
            for (int j = 0; j < PLDR_QBLOCK; j++) {
                const double v = (double)(xb[j] * iscale);
                const double a = fabs(v); /* to nearest, halves away from zero */
                int r = a < 16.0 ? (int)(a + 0.5) : 16;
                r = v < 0 ? -r : r;
                r = r < -8 ? -8 : r > 7 ? 7 : r;
                l[j] = r;
                sxl += (double)xb[j] * r;
                sl2 += (double)(r * r);
            }
            const double score = sl2 > 0.0 ? sxl * sxl / sl2 : 0.0;
            if (sl2 > 0.0 && score > best) {
                best = score;
                best_d = sxl / sl2;
                memcpy(best_l, l, sizeof l);
            }
        }
        d[b] = pldr_float_to_half((float)best_d);
        for (int j = 0; j < half; j++)
            q[b * (size_t)half + (size_t)j] = (uint8_t)((best_l[j] + 8) | ((best_l[half + j] + 8) << 4));
    }
}

/* ------------------------------------------------------------------ rows */

typedef struct convert_job {
    pldr_dtype type;
    const float *src;
    size_t cols, pitch, r0, r1;
    unsigned char *data;
    uint16_t *scales;
    int failed;
} convert_job;

size_t pldr_row_bytes(pldr_dtype type, size_t pitch)
{
    switch (type) {
    case PLDR_DTYPE_F32: return 4 * pitch;
    case PLDR_DTYPE_F16:
    case PLDR_DTYPE_BF16: return 2 * pitch;
    case PLDR_DTYPE_Q4_0: return pitch / 2;
    default: return pitch; /* Q8_0 */
    }
}

static void *convert_part(void *arg)
{
    convert_job *j = arg;
    float *row = malloc(j->pitch * sizeof *row);
    if (!row) {
        j->failed = 1;
        return NULL;
    }
    const size_t rb = pldr_row_bytes(j->type, j->pitch), nb = j->pitch / PLDR_QBLOCK;
    for (size_t r = j->r0; r < j->r1; r++) {
        memcpy(row, j->src + r * j->cols, j->cols * sizeof(float));
        memset(row + j->cols, 0, (j->pitch - j->cols) * sizeof(float));
        unsigned char *dst = j->data + r * rb;
        if (j->type == PLDR_DTYPE_BF16) {
            uint16_t *h = (uint16_t *)(void *)dst;
            for (size_t i = 0; i < j->pitch; i++)
                h[i] = pldr_float_to_bf16(row[i]);
        } else if (j->type == PLDR_DTYPE_Q4_0) {
            pldr_quantize_q4_0(row, j->pitch, dst, j->scales + r * nb);
        } else {
            pldr_quantize_q8_0(row, j->pitch, (int8_t *)dst, j->scales + r * nb);
        }
    }
    free(row);
    return NULL;
}

int pldr_convert_rows(pldr_dtype type, const float *src, size_t rows, size_t cols, size_t pitch,
                      unsigned char *data, uint16_t *scales)
{
    enum { MAX_THREADS = 16 };
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = cpus > 1 ? (size_t)cpus : 1;
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    if (n > rows / 16) /* small matrices: not worth a thread */
        n = rows / 16 > 0 ? rows / 16 : 1;
    convert_job jobs[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (size_t t = 0; t < n; t++) {
        jobs[t] = (convert_job){type, src, cols, pitch, rows * t / n, rows * (t + 1) / n, data, scales, 0};
        if (t > 0)
            started[t] = pthread_create(&th[t], NULL, convert_part, &jobs[t]) == 0;
    }
    convert_part(&jobs[0]);
    int failed = jobs[0].failed;
    for (size_t t = 1; t < n; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else /* no thread: this one does the part */
            convert_part(&jobs[t]);
        failed |= jobs[t].failed;
    }
    return failed ? -1 : 0;
}
