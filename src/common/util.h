/* Shared helpers of the library: error reporting, files, paths, sizes. */
#ifndef PLDR_UTIL_H
#define PLDR_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pldr.h"

#if defined(__GNUC__)
#define PLDR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PLDR_PRINTF(a, b)
#endif

/* Records a formatted message as this thread's last error and returns status. */
pldr_status pldr_fail(pldr_status status, const char *fmt, ...) PLDR_PRINTF(2, 3);
/* Prepends "prefix: " to the current last error message (keeps the status). */
pldr_status pldr_fail_prefix(pldr_status status, const char *fmt, ...) PLDR_PRINTF(2, 3);
void pldr_clear_error(void);
/* Hands a message to the log callback (pldr_log_set), if any. */
void pldr_log(pldr_log_level level, const char *fmt, ...) PLDR_PRINTF(2, 3);

/* Opens an existing regular file for reading. FIFOs, sockets, devices and
 * directories are refused (PLDR_ERR_IO) without blocking; size may be NULL. */
pldr_status pldr_open_regular(const char *path, int *fd, uint64_t *size);
pldr_status pldr_fopen_regular(const char *path, FILE **f, uint64_t *size);
/* Reads a whole regular file (at most max_bytes) into a malloc'ed, NUL-terminated buffer. */
pldr_status pldr_read_file(const char *path, size_t max_bytes, unsigned char **data, size_t *len);
/* pldr_write_file of one part (include/pldr.h). */
pldr_status pldr_write_file_atomic(const char *path, const void *data, size_t len);
/* Temporary files of pldr_write_file are named .NAME<mark>PID.N */
#define PLDR_TMP_MARK ".pldr-tmp."
/* Removes the temporary files in dir whose writing process is gone. */
void pldr_remove_stale_temps(const char *dir);
/* Creates a directory and its parents (mode 0755); existing ones are fine. */
pldr_status pldr_mkdir_p(const char *path);
/* Returns malloc'ed "a/b"; NULL on allocation failure. */
char *pldr_path_join(const char *a, const char *b);
char *pldr_strdup(const char *s);

/* Overflow-checked size arithmetic: return 0 on overflow. */
int pldr_mul_size(size_t a, size_t b, size_t *out);
int pldr_add_size(size_t a, size_t b, size_t *out);

/* 64-bit FNV-1a, for cache keys. */
uint64_t pldr_fnv1a(uint64_t h, const void *data, size_t len);
#define PLDR_FNV_INIT 0xcbf29ce484222325ULL

/* IEEE half and bfloat16 conversions. */
float pldr_half_to_float(uint16_t h);
uint16_t pldr_float_to_half(float f);
float pldr_bf16_to_float(uint16_t h);

/* Monotonic clock in seconds. */
double pldr_now(void);

#endif
