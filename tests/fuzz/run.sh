#!/bin/bash
# Runs every libFuzzer target for SECONDS (default 60) on its seed corpus.
#
#   tests/fuzz/run.sh [SECONDS]
#
# Builds nothing: configure with --enable-fuzzing CC=clang and run `make`
# first. Exits non-zero when a target finds a crash, a sanitizer report, a
# leak or a timeout (or is missing); the reproducer is kept as
# $FUZZ_WORKDIR/artifacts/<target>-crash-..., and `tests/fuzz/fuzz_<target>
# <file>` replays it.
#
# Environment:
#   FUZZ_BUILDDIR  where tests/fuzz/fuzz_* are (default: the current directory
#                  when it has them, else the source tree of this script)
#   FUZZ_WORKDIR   where new corpus inputs, artifacts and logs go (default: a
#                  new directory under ${TMPDIR:-/tmp}, kept at the end)
#   FUZZ_TARGETS   the targets to run (default: all eight, space-separated)
#   FUZZ_JOBS      targets run at the same time (default 2)
#   FUZZ_ARGS      extra libFuzzer options, e.g. "-jobs=1 -seed=1"
#   PLDR_SRCDIR    source tree (default: the one of this script); the shared
#                  the 32k tokenizer is $PLDR_SRCDIR/tests/data/tokenizer
set -u

SECONDS_PER_TARGET=${1:-60}
case $SECONDS_PER_TARGET in
'' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
SRCDIR=${PLDR_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export PLDR_SRCDIR=$SRCDIR
if [ -z "${FUZZ_BUILDDIR:-}" ]; then
    if [ -x tests/fuzz/fuzz_safetensors ]; then FUZZ_BUILDDIR=$(pwd); else FUZZ_BUILDDIR=$SRCDIR; fi
fi
WORK=${FUZZ_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/pldr-fuzz.XXXXXX")}
TARGETS=${FUZZ_TARGETS:-safetensors index config tokenizer_model encode session gcache tuning}
JOBS=${FUZZ_JOBS:-2}
mkdir -p "$WORK/artifacts" || exit 2

# The tokenizer models the tokenizer_model target checks first.
TOKENIZER_MODELS="$SRCDIR/models/pldr-tiny-pydocs/tokenizer.model"
SHARED_MODEL=$SRCDIR/tests/data/tokenizer/pldr-refinedweb-32k.model
[ -f "$SHARED_MODEL" ] && TOKENIZER_MODELS="$TOKENIZER_MODELS $SHARED_MODEL"

run_target() {
    local t=$1 bin="$FUZZ_BUILDDIR/tests/fuzz/fuzz_$1" log="$WORK/$1.log"
    local dirs=("$WORK/corpus/$t" "$SRCDIR/tests/fuzz/corpus/$t") opts=()
    mkdir -p "$WORK/corpus/$t"
    [ -f "$SRCDIR/tests/fuzz/$t.dict" ] && opts+=("-dict=$SRCDIR/tests/fuzz/$t.dict")
    if [ ! -x "$bin" ]; then
        echo "FAIL $t: $bin not built (configure --enable-fuzzing CC=clang; make)" | tee "$log"
        return 1
    fi
    if [ "$t" = tokenizer_model ]; then
        # The real models (0.3 and 0.8 MB) run once, whole, under the
        # sanitizers; mutating them would run at a few inputs a second, so
        # the fuzzing itself starts from the small trained seeds.
        # shellcheck disable=SC2086
        if ! "$bin" $TOKENIZER_MODELS >"$log.models" 2>&1; then
            echo "FAIL $t: a real tokenizer model fails under the sanitizers; log $log.models"
            return 1
        fi
        opts+=("-max_len=65536")
    fi
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$WORK/artifacts/$t-" "${opts[@]}" ${FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1
    local rc=$?
    local execs cov
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        echo "ok   $t: ${SECONDS_PER_TARGET}s, ${execs:-?} executions, $cov"
    else
        echo "FAIL $t: exit $rc after ${execs:-?} executions; log $log"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)|runtime error' "$log" | head -n 8 |
            sed 's/^/     /'
        ls "$WORK/artifacts/$t-"* 2>/dev/null | sed 's/^/     reproducer: /'
    fi
    return $rc
}

echo "fuzzing ${SECONDS_PER_TARGET}s per target, $JOBS at a time; work directory $WORK"
failed=0
running=0
for t in $TARGETS; do
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
    run_target "$t" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
[ $failed -eq 0 ] && echo "no findings" || echo "FINDINGS: see above"
exit $failed
