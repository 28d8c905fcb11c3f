/* Conversions of float32 weights to the storage dtypes BF16, Q8_0 and Q4_0
 * (kernels/common.cl describes how the kernels read them). */
#ifndef PLDR_QUANTIZE_H
#define PLDR_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#define PLDR_QBLOCK 32 /* weights per Q8_0 / Q4_0 block */

/* float32 -> bfloat16, rounded to nearest even (NaNs stay NaNs). */
uint16_t pldr_float_to_bf16(float f);

/* Quantizes n values (a multiple of PLDR_QBLOCK) block by block, as
 * llama.cpp's quantize_row_q8_0_ref: d = max|x| / 127 (stored as half),
 * q = round(x / d) (to nearest, halves away from zero). q: n bytes,
 * d: n / 32 halves. */
void pldr_quantize_q8_0(const float *x, size_t n, int8_t *q, uint16_t *d);
/* As llama.cpp's quantize_row_q4_0_ref: m = the value of largest magnitude,
 * d = m / -8 (as half), q = min(15, trunc(x / d + 8.5)); x = d (q - 8).
 * Byte j of a block holds q of weight j (low nibble) and of weight j + 16
 * (high nibble). q: n / 2 bytes, d: n / 32 halves. */
void pldr_quantize_q4_0(const float *x, size_t n, uint8_t *q, uint16_t *d);

#endif
