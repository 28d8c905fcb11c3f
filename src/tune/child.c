/* Work in a child process (see child.h). */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tune/child.h"
#include "common/util.h"

static void write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        len -= (size_t)w;
    }
}

pldr_status pldr_child_run(pldr_child_fn fn, void *ctx, void *reply, size_t size, double timeout_s, char *died,
                           size_t died_size)
{
    memset(reply, 0, size);
    died[0] = '\0';
    int fds[2];
    if (pipe(fds) != 0)
        return pldr_fail(PLDR_ERR_IO, "cannot create a pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "cannot start a measuring process: %s", strerror(e));
    }
    if (pid == 0) {
        close(fds[0]);
        void *r = calloc(1, size);
        if (r) {
            pldr_child_head *head = r;
            pldr_status st = fn(ctx, r);
            head->status = (int)st;
            if (st != PLDR_OK)
                snprintf(head->message, sizeof head->message, "%s", pldr_last_error());
            write_all(fds[1], r, size);
        }
        close(fds[1]);
        fflush(NULL);
        _exit(0);
    }
    close(fds[1]);
    size_t got = 0;
    int timed_out = 0;
    const double deadline = pldr_now() + timeout_s;
    while (got < size) {
        double left = deadline - pldr_now();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd pfd = {fds[0], POLLIN, 0};
        int pr = poll(&pfd, 1, left > 10 ? 10000 : (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR)
            break;
        if (pr <= 0)
            continue;
        ssize_t r = read(fds[0], (char *)reply + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int wst = 0;
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR)
        ;
    if (got == size) {
        pldr_child_head *head = reply;
        head->message[sizeof head->message - 1] = '\0';
        return PLDR_OK;
    }
    if (timed_out)
        snprintf(died, died_size, "no result after %.0f s", timeout_s);
    else if (WIFSIGNALED(wst))
        snprintf(died, died_size, "the measuring process crashed (signal %d)", WTERMSIG(wst));
    else
        snprintf(died, died_size, "the measuring process ended without a report");
    memset(reply, 0, size);
    return PLDR_OK;
}

pldr_status pldr_child_run_ok(pldr_child_fn fn, void *ctx, void *reply, size_t size, double timeout_s,
                              const char *what)
{
    char died[128];
    pldr_status st = pldr_child_run(fn, ctx, reply, size, timeout_s, died, sizeof died);
    if (st != PLDR_OK)
        return st;
    const pldr_child_head *head = reply;
    if (died[0])
        return pldr_fail(PLDR_ERR_OPENCL, "%s: %s", what, died);
    if (head->status != PLDR_OK)
        return pldr_fail((pldr_status)head->status, "%s", head->message);
    return PLDR_OK;
}
