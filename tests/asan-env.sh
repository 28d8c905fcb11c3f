#!/bin/sh
# Runs a command with the sanitizer settings of the --enable-sanitizers build:
#
#   tests/asan-env.sh make check
#   tests/asan-env.sh ./pldr logits -m models/pldr-tiny-pydocs --ids 1,2,3
#
# ASan: leaks are errors (LeakSanitizer at exit), with the suppressions of
# tests/lsan.supp for the OpenCL platform (PoCL, LLVM, the ICD loader,
# CLBlast); an allocation too large for ASan returns NULL as malloc does
# without it, so the loaders' own checks are what is tested. UBSan: every
# report is fatal (the build has -fno-sanitize-recover=undefined) and prints
# a stack. Settings already in the environment are appended, so they win.
#
# intercept_tls_get_addr=0: the sanitizer runtimes of GCC <= 13 and LLVM <= 16
# misread some dynamic TLS blocks under glibc >= 2.25 as old-style ones, and
# LeakSanitizer's tracer then dies at exit ("Tracer caught signal 11",
# google/sanitizers#1322); PoCL's worker threads hit it. Static TLS is still
# scanned.
here=$(cd "$(dirname "$0")" && pwd)
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:intercept_tls_get_addr=0:allocator_may_return_null=1:strict_string_checks=1:detect_invalid_pointer_pairs=0:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
exec "$@"
