/* NumPy .npy (format 1.0) output of float32 matrices. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "cli.h"

int npy_write_f32(const char *path, const float *data, size_t rows, size_t cols)
{
    char header[256];
    int n = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }",
                     rows, cols);
    /* magic (6) + version (2) + length (2) + header, padded to 64 with '\n' last */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    memset(header + n, ' ', pad);
    header[n + (int)pad] = '\n';
    unsigned short hlen = (unsigned short)(n + (int)pad + 1);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    /* .npy stores little-endian here ('<f4'): this matches every host we build for */
    if (strcmp(path, "-") == 0) {
        fwrite(pre, 1, 10, stdout);
        fwrite(header, 1, hlen, stdout);
        fwrite(data, sizeof(float), rows * cols, stdout);
        return cli_stdout_check();
    }
    const void *parts[3] = {pre, header, data};
    const size_t lens[3] = {10, hlen, rows * cols * sizeof(float)};
    pldr_status st = pldr_write_parts_atomic(path, parts, lens, 3);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}

int cli_check_output(const char *path)
{
    if (strcmp(path, "-") == 0)
        return EXIT_OK;
    pldr_status st = pldr_check_output_path(path);
    return st == PLDR_OK ? EXIT_OK : cli_report(st);
}
