#include "config.h"

#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char last_error[4096];

const char *pldr_status_string(pldr_status status)
{
    switch (status) {
    case PLDR_OK: return "success";
    case PLDR_ERR_INVALID_ARGUMENT: return "invalid argument";
    case PLDR_ERR_IO: return "input/output error";
    case PLDR_ERR_FORMAT: return "invalid file format";
    case PLDR_ERR_UNSUPPORTED: return "unsupported";
    case PLDR_ERR_NO_DEVICE: return "no such OpenCL device";
    case PLDR_ERR_OPENCL: return "OpenCL error";
    case PLDR_ERR_KERNEL_BUILD: return "kernel build failed";
    case PLDR_ERR_HOST_MEMORY: return "out of host memory";
    case PLDR_ERR_DEVICE_MEMORY: return "out of device memory";
    case PLDR_ERR_CONTEXT_FULL: return "context is full";
    case PLDR_ERR_NONFINITE: return "non-finite values";
    case PLDR_ERR_MISMATCH: return "mismatch";
    case PLDR_ERR_OUTPUT: return "cannot write output";
    case PLDR_ERR_BUSY: return "busy";
    }
    return "unknown status";
}

const char *pldr_last_error(void) { return last_error; }

/* The log callback: set rarely, read under the lock so that a message never
 * meets a half-changed pair. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pldr_log_fn log_fn;
static void *log_user;

void pldr_log_set(pldr_log_fn fn, void *user)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_user = user;
    pthread_mutex_unlock(&log_lock);
}

void pldr_log(pldr_log_level level, const char *fmt, ...)
{
    pthread_mutex_lock(&log_lock);
    pldr_log_fn fn = log_fn;
    void *user = log_user;
    pthread_mutex_unlock(&log_lock);
    if (!fn)
        return;
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fn(level, msg, user);
}

void pldr_clear_error(void) { last_error[0] = '\0'; }

pldr_status pldr_fail(pldr_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

pldr_status pldr_fail_prefix(pldr_status status, const char *fmt, ...)
{
    char prefix[1024], old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    snprintf(last_error, sizeof last_error, "%s: %s", prefix, old);
    return status;
}

char *pldr_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

char *pldr_path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (!p)
        return NULL;
    memcpy(p, a, la);
    size_t o = la;
    if (la > 0 && a[la - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, b, lb + 1);
    return p;
}

int pldr_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

int pldr_add_size(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a)
        return 0;
    *out = a + b;
    return 1;
}

/* What a file that is not a regular file is, for messages. */
static const char *file_kind(mode_t m)
{
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISLNK(m))
        return "a symbolic link";
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISSOCK(m))
        return "a socket";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    return "not a regular file";
}

pldr_status pldr_open_regular(const char *path, int *fd_out, uint64_t *size)
{
    *fd_out = -1;
    /* O_NONBLOCK: opening a FIFO or a device must not wait for a writer */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return pldr_fail(PLDR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        pldr_status s = pldr_fail(PLDR_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return s;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pldr_fail(PLDR_ERR_IO, "%s: is %s, not a regular file", path, file_kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    if (size)
        *size = (uint64_t)st.st_size;
    return PLDR_OK;
}

pldr_status pldr_fopen_regular(const char *path, FILE **f, uint64_t *size)
{
    *f = NULL;
    int fd;
    pldr_status st = pldr_open_regular(path, &fd, size);
    if (st != PLDR_OK)
        return st;
    if (!(*f = fdopen(fd, "rb"))) {
        st = pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot open: %s", path, strerror(errno));
        close(fd);
    }
    return st;
}

pldr_status pldr_read_file(const char *path, size_t max_bytes, unsigned char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int fd;
    uint64_t size;
    pldr_status st = pldr_open_regular(path, &fd, &size);
    if (st != PLDR_OK)
        return st;
    if (size > max_bytes) {
        close(fd);
        return pldr_fail(PLDR_ERR_FORMAT, "%s: file is %llu bytes, more than the %zu allowed", path,
                         (unsigned long long)size, max_bytes);
    }
    size_t n = (size_t)size;
    unsigned char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "%s: cannot allocate %zu bytes", path, n + 1);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return pldr_fail(PLDR_ERR_IO, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return PLDR_OK;
}

/* Splits path into its directory ("." when none) and the file name. */
static char *dir_of(const char *path, const char **base)
{
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    if (!slash)
        return pldr_strdup(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = '\0';
    }
    return d;
}

pldr_status pldr_check_output_path(const char *path)
{
    if (!path || !*path)
        return pldr_fail(PLDR_ERR_OUTPUT, "an empty output path");
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode))
            return pldr_fail(PLDR_ERR_OUTPUT, "%s: is %s; refusing to replace it (give the path of a regular file)",
                             path, file_kind(st.st_mode));
    } else if (errno != ENOENT) {
        return pldr_fail(PLDR_ERR_OUTPUT, "%s: cannot write: %s", path, strerror(errno));
    }
    const char *base;
    char *dir = dir_of(path, &base);
    if (!dir)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    pldr_status s = PLDR_OK;
    if (!*base)
        s = pldr_fail(PLDR_ERR_OUTPUT, "%s: cannot write: the path names a directory", path);
    else if (stat(dir, &st) != 0)
        s = pldr_fail(PLDR_ERR_OUTPUT, "%s: cannot write: directory %s: %s", path, dir, strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        s = pldr_fail(PLDR_ERR_OUTPUT, "%s: cannot write: %s is not a directory", path, dir);
    else if (access(dir, W_OK | X_OK) != 0)
        s = pldr_fail(PLDR_ERR_OUTPUT, "%s: cannot write: directory %s: %s", path, dir, strerror(errno));
    free(dir);
    return s;
}

pldr_status pldr_write_parts_atomic(const char *path, const void *const *data, const size_t *len, int n_parts)
{
    static _Atomic unsigned serial;
    pldr_status st = pldr_check_output_path(path);
    if (st != PLDR_OK)
        return st;
    const char *base;
    char *dir = dir_of(path, &base);
    size_t n = strlen(path) + strlen(PLDR_TMP_MARK) + 48;
    char *tmp = malloc(n);
    if (!dir || !tmp) {
        free(dir);
        free(tmp);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    }
    /* .NAME.pldr-tmp.PID.N next to the target: rename stays in one file
     * system, and pldr_remove_stale_temps knows it by its mark and pid */
    snprintf(tmp, n, "%s%s.%s%s%ld.%u", dir, strcmp(dir, "/") == 0 ? "" : "/", base, PLDR_TMP_MARK,
             (long)getpid(), serial++);
    free(dir);
    struct stat old;
    mode_t mode = 0644;
    if (stat(path, &old) == 0)
        mode = old.st_mode & 07777;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        st = pldr_fail(PLDR_ERR_OUTPUT, "%s: cannot write: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    int err = 0;
    for (int i = 0; i < n_parts && !err; i++) {
        const unsigned char *p = data[i];
        size_t done = 0;
        while (done < len[i]) {
            ssize_t w = write(fd, p + done, len[i] - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                err = w < 0 ? errno : ENOSPC;
                break;
            }
            done += (size_t)w;
        }
    }
    if (!err && fchmod(fd, mode) != 0)
        err = errno;
    if (!err && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) != 0)
        err = errno;
    if (err) {
        unlink(tmp);
        free(tmp);
        return pldr_fail(PLDR_ERR_OUTPUT, "%s: cannot write: %s", path, strerror(err));
    }
    free(tmp);
    return PLDR_OK;
}

pldr_status pldr_write_file_atomic(const char *path, const void *data, size_t len)
{
    return pldr_write_parts_atomic(path, &data, &len, 1);
}

void pldr_remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *mark = strstr(e->d_name, PLDR_TMP_MARK);
        if (!mark || e->d_name[0] != '.')
            continue;
        char *end;
        errno = 0;
        long pid = strtol(mark + strlen(PLDR_TMP_MARK), &end, 10);
        if (errno || pid <= 0 || *end != '.')
            continue;
        /* the writer is gone when no process has its pid */
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char *p = pldr_path_join(dir, e->d_name);
        if (p) {
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISREG(st.st_mode))
                unlink(p);
            free(p);
        }
    }
    closedir(d);
}

pldr_status pldr_mkdir_p(const char *path)
{
    char *p = pldr_strdup(path);
    if (!p)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                pldr_status st = pldr_fail(PLDR_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
                free(p);
                return st;
            }
            *s = c;
            if (c == '\0')
                break;
        }
    }
    free(p);
    return PLDR_OK;
}

uint64_t pldr_fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

float pldr_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t pldr_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    if (absx >= 0x477ff000) /* rounds to >= 65520: overflow */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000) { /* subnormal or zero in half */
        if (absx < 0x33000000)
            return (uint16_t)sign;
        uint32_t man = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absx >> 23); /* value = q * 2^-24, q = man >> shift */
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        uint32_t q = man >> shift;
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t e = (absx >> 23) - 127 + 15;
    uint32_t man = absx & 0x7fffff;
    uint32_t q = (e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1)))
        q++;
    return (uint16_t)(sign | q);
}

float pldr_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

double pldr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Weight dtype names, as --dtype and the files that record a dtype spell them. */
static const char *const dtype_names[PLDR_DTYPE_COUNT] = {"f32", "f16", "bf16", "q8_0", "q4_0"};

const char *pldr_dtype_name(pldr_dtype t)
{
    return (unsigned)t < PLDR_DTYPE_COUNT ? dtype_names[t] : NULL;
}

pldr_status pldr_dtype_from_name(const char *name, pldr_dtype *t)
{
    for (int i = 0; name && i < PLDR_DTYPE_COUNT; i++)
        if (strcasecmp(name, dtype_names[i]) == 0) {
            *t = (pldr_dtype)i;
            return PLDR_OK;
        }
    return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "unknown weight dtype '%s' (f32, f16, bf16, q8_0 or q4_0)",
                     name ? name : "(null)");
}
