#!/bin/sh
# Compares two pldr builds on one machine: runs `pldr bench` with the same
# arguments alternately with each, ROUNDS times, and prints one line per run.
#   bench/ab.sh PLDR_A PLDR_B "BENCH-ARGS" [ROUNDS]
# e.g. bench/ab.sh ./old/pldr ./pldr "-m /tmp/pldr-110m --device nvidia -p 0 -n 128 -r 5 --cache kvg --dtype f32,f16" 3
set -e
if [ $# -lt 3 ]; then
    echo "usage: $0 PLDR_A PLDR_B \"BENCH-ARGS\" [ROUNDS]" >&2
    exit 2
fi
a=$1 b=$2 args=$3 rounds=${4:-2}
i=0
while [ "$i" -lt "$rounds" ]; do
    for which in A B; do
        p=$a
        [ "$which" = B ] && p=$b
        # shellcheck disable=SC2086 # the arguments are split on purpose
        printf '%s: %s\n' "$which" "$("$p" bench $args 2>/dev/null | grep -E '^\| ' | grep -v -e '---' -e '| model |' |
            awk -F'|' '{printf "%s %s %s %s;", $5, $6, $7, $8}')"
    done
    i=$((i + 1))
done
