#!/bin/sh
# Reproduces bench/RESULTS.md: a random-weight checkpoint at the released
# 110M configuration, then pldr bench on the given device (default: the
# default device) in every cache mode and weight dtype.
#   bench/run.sh [DEVICE-SPEC] [PLDR-BINARY]
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
device=${1:-}
pldr=${2:-$here/pldr}
model=${PLDR_BENCH_MODEL:-/tmp/pldr-110m}
if [ ! -f "$model/config.json" ]; then
    python3 "$here/tests/mkmodel.py" --preset 110m --seed 1 -o "$model"
fi
dev=${device:+--device $device}
"$pldr" devices
# prefill and decode after a 64-token prompt, KV+G / KV / no cache
"$pldr" bench -m "$model" $dev -p 64,512 -n 128 -r 3 --cache kvg,kv,none --dtype f32,f16
