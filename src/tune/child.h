/* Work in a child process: the tuners measure every candidate in a process of
 * its own, because a faulty kernel can corrupt, crash or hang the process it
 * runs in (on a CPU device the kernels run in the process's own memory). */
#ifndef PLDR_CHILD_H
#define PLDR_CHILD_H

#include <stddef.h>

#include "pldr.h"

/* The start of every reply: the child's status and, on failure, its error. */
typedef struct pldr_child_head {
    int status; /* pldr_status of the child's work */
    char message[512];
} pldr_child_head;

/* Fills the reply (zeroed, size bytes, starting with a pldr_child_head) in
 * the child; its return value becomes head.status. */
typedef pldr_status (*pldr_child_fn)(void *ctx, void *reply);

/* Runs fn in a child process and waits for its reply (size bytes) at most
 * timeout_s seconds, then kills it. *died is set (non-empty) when the child
 * gave no reply (timed out, crashed or ended early); the reply is then all
 * zeros. Fails only when no child could be started. */
pldr_status pldr_child_run(pldr_child_fn fn, void *ctx, void *reply, size_t size, double timeout_s, char *died,
                           size_t died_size);

/* pldr_child_run for a quick job whose failure is an error: a child that died
 * or reported a failure fails here, naming `what`. */
pldr_status pldr_child_run_ok(pldr_child_fn fn, void *ctx, void *reply, size_t size, double timeout_s,
                              const char *what);

#endif
