/* The .cl sources of kernels/, embedded at build time (build-aux/embed-kernels.sh). */
#ifndef PLDR_KERNELS_EMBEDDED_H
#define PLDR_KERNELS_EMBEDDED_H

struct pldr_embedded_kernel {
    const char *name;
    const char *source;
};

/* Terminated by an entry with name NULL; in the order they are concatenated. */
extern const struct pldr_embedded_kernel pldr_embedded_kernels[];

#endif
