/* Writes what the loader's conversions (src/model/quantize.c) make of n
 * float32 values (n a multiple of 32), for tests/parity/test_quant.py to compare with
 * NumPy: Q8_0 quants (n bytes) and scales (n / 32 halves), Q4_0 quants
 * (n / 2 bytes) and scales (n / 32 halves), BF16 (n halves).
 * usage: quantize_dump IN.f32 OUT.bin */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "model/quantize.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fputs("usage: quantize_dump IN.f32 OUT.bin\n", stderr);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    fseek(in, 0, SEEK_END);
    const long bytes = ftell(in);
    fseek(in, 0, SEEK_SET);
    const size_t n = (size_t)bytes / 4;
    if (n == 0 || n % PLDR_QBLOCK) {
        fprintf(stderr, "%s: %ld bytes, not a multiple of 32 floats\n", argv[1], bytes);
        fclose(in);
        return 1;
    }
    float *x = malloc(n * sizeof *x);
    int8_t *q8 = malloc(n);
    uint8_t *q4 = malloc(n / 2);
    uint16_t *d8 = malloc(n / PLDR_QBLOCK * 2), *d4 = malloc(n / PLDR_QBLOCK * 2), *bf = malloc(n * 2);
    if (!x || !q8 || !q4 || !d8 || !d4 || !bf || fread(x, 4, n, in) != n) {
        fputs("quantize_dump: out of memory or short read\n", stderr);
        return 1;
    }
    fclose(in);
    pldr_quantize_q8_0(x, n, q8, d8);
    pldr_quantize_q4_0(x, n, q4, d4);
    for (size_t i = 0; i < n; i++)
        bf[i] = pldr_float_to_bf16(x[i]);
    FILE *out = fopen(argv[2], "wb");
    if (!out || fwrite(q8, 1, n, out) != n || fwrite(d8, 2, n / PLDR_QBLOCK, out) != n / PLDR_QBLOCK ||
        fwrite(q4, 1, n / 2, out) != n / 2 || fwrite(d4, 2, n / PLDR_QBLOCK, out) != n / PLDR_QBLOCK ||
        fwrite(bf, 2, n, out) != n || fclose(out) != 0) {
        perror(argv[2]);
        return 1;
    }
    free(x);
    free(q8);
    free(q4);
    free(d8);
    free(d4);
    free(bf);
    return 0;
}
