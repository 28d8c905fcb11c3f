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
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(header, 1, hlen, f) == hlen &&
             fwrite(data, sizeof(float), rows * cols, f) == rows * cols;
    /* .npy stores little-endian here ('<f4'): this matches every host we build for */
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : -1;
}
