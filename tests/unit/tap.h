/* A tiny TAP (Test Anything Protocol) producer for C tests.
 *
 *   tap_ok(cond, "what is checked")   prints "ok N - ..." or "not ok N - ..."
 *   tap_skip(n, "why")                 prints n "ok N # SKIP why" lines
 *   tap_diag("...")                    prints a "# ..." comment line
 *   tap_plan(n)                        optional leading plan "1..n"
 *   return tap_done();                 trailing plan (unless one was given) and
 *                                      the exit status: 0 when all passed
 *
 * A trailing plan lets the test count itself; a program that dies half way
 * prints no plan, which the TAP driver reports as an error. */
#ifndef PLDR_TAP_H
#define PLDR_TAP_H

#include <stdarg.h>
#include <stdio.h>

static int tap_count;   /* tests run so far */
static int tap_failed;  /* of which failed */
static int tap_planned; /* 0 until a leading plan is printed */

static inline void tap_plan(int n)
{
    tap_planned = n;
    printf("1..%d\n", n);
    fflush(stdout);
}

static inline void tap_vdiag(const char *fmt, va_list ap)
{
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
}

static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tap_vdiag(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static inline int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;
    tap_count++;
    if (!cond)
        tap_failed++;
    printf("%sok %d - ", cond ? "" : "not ", tap_count);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    return cond;
}

static inline void tap_skip(int n, const char *reason)
{
    for (int i = 0; i < n; i++)
        printf("ok %d # SKIP %s\n", ++tap_count, reason);
    fflush(stdout);
}

static inline int tap_done(void)
{
    if (tap_planned <= 0)
        printf("1..%d\n", tap_count);
    else if (tap_planned != tap_count)
        tap_diag("planned %d tests but ran %d", tap_planned, tap_count);
    fflush(stdout);
    return tap_failed == 0 && (tap_planned <= 0 || tap_planned == tap_count) ? 0 : 1;
}

#endif
