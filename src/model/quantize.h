/* Conversions of float32 weights to the storage dtypes BF16, Q8_0 and Q4_0
 * (kernels/common.cl describes how the kernels read them). */
#ifndef PLDR_QUANTIZE_H
#define PLDR_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#include "pldr.h"

#define PLDR_QBLOCK 32 /* weights per Q8_0 / Q4_0 block */

/* float32 -> bfloat16, rounded to nearest even (NaNs stay NaNs). */
uint16_t pldr_float_to_bf16(float f);

/* Quantizes n values (a multiple of PLDR_QBLOCK) block by block, as
 * llama.cpp's quantize_row_q8_0_ref: d = max|x| / 127 (stored as half),
 * q = round(x / d) (to nearest, halves away from zero). q: n bytes,
 * d: n / 32 halves. */
void pldr_quantize_q8_0(const float *x, size_t n, int8_t *q, uint16_t *d);
/* llama.cpp's Q4_0 blocks, x = d (q - 8), q in [0, 15], with each block's d
 * and q chosen by a least-squares search (quantize.c) instead of llama.cpp's
 * d = m / -8: about 11% less squared error on the bundled model's matrices.
 * Byte j of a block holds q of weight j (low nibble) and of weight j + 16
 * (high nibble). q: n / 2 bytes, d: n / 32 halves. */
void pldr_quantize_q4_0(const float *x, size_t n, uint8_t *q, uint16_t *d);

/* Bytes of one row of `pitch` weights stored as `type` (the quants alone
 * for Q8_0 and Q4_0; their scales are pitch / 32 halves more). */
size_t pldr_row_bytes(pldr_dtype type, size_t pitch);

/* Converts a matrix of `rows` rows of `cols` float32 values (src, row after
 * row) into `type` (PLDR_DTYPE_BF16, Q8_0 or Q4_0), each row padded with
 * zeros to `pitch` (a multiple of PLDR_QBLOCK for the quantized types): data
 * gets the rows' bf16 values or quants (2 pitch, pitch / 2 or pitch bytes a
 * row), scales the quantized rows' pitch / 32 halves each. Rows are shared
 * among up to one thread per processor. Returns 0, or -1 out of memory. */
int pldr_convert_rows(pldr_dtype type, const float *src, size_t rows, size_t cols, size_t pitch,
                      unsigned char *data, uint16_t *scales);

#endif
