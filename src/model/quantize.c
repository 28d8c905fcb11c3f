/* Weight conversions for the BF16, Q8_0 and Q4_0 storage dtypes, done once
 * at load. The quantizers follow llama.cpp's reference ones (ggml-quants.c,
 * quantize_row_q8_0_ref and quantize_row_q4_0_ref) operation for operation in
 * float32, so that the same checkpoint gives the same blocks there, here and
 * in the float64 reference of the tests (tests/pldr_ref.py, quantize). */
#include "config.h"

#include <math.h>
#include <string.h>

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
        const float dd = max / -8.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        d[b] = pldr_float_to_half(dd);
        for (int j = 0; j < half; j++) {
            const float x0 = xb[j] * id + 8.5f, x1 = xb[half + j] * id + 8.5f;
            const int q0 = (int8_t)x0 < 15 ? (int8_t)x0 : 15, q1 = (int8_t)x1 < 15 ? (int8_t)x1 : 15;
            q[b * (size_t)half + (size_t)j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}
