#!/bin/sh
# The GPU machine's 16-core Xeon under PoCL, build 8e59a4d (.devcl/pldr-q) against
# 4669498 (.devcl/pldr), alternating: single-stream and B=16 figures of f32, q8_0
# and q4_0 (bench/RESULTS.md). Set up .devcl as bench/gpu.sh says.
set -u
set -- setup .devcl
. .devcl/device-opencl.sh >/dev/null 2>&1
export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(pwd)/.devcl/lib
export PLDR_TUNING=0
M=/tmp/pldr-110m
[ -f $M/config.json ] || python3 tests/mkmodel.py --preset 110m --seed 1 -o $M >/dev/null
cp .devcl/tok32k.model $M/tokenizer.model
N=.devcl/pldr-q; B=.devcl/pldr
o=${OUT:-/tmp/out}; mkdir -p "$o"
for i in 1 2; do for p in $B $N; do echo "== $p pocl round $i"; $p bench -m $M --device pocl -p 0 -n 128 -r 2 --cache kvg --dtype f32,q8_0,q4_0 2>&1 | grep -E "^\| pldr-110m|rror"; done; done > $o/pocl16-single.md 2>&1
cat $o/pocl16-single.md
for p in $B $N; do echo "== $p pocl batched"; $p bench -m $M --device pocl -p 64 -n 32 -r 1 --cache kvg --dtype f32,q8_0,q4_0 -b 16 2>&1 | grep -E "^\| pldr-110m|rror"; done > $o/pocl16-batched.md 2>&1
cat $o/pocl16-batched.md
