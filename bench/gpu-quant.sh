#!/bin/sh
# The GPU machine's quantized-weight figures of build 8e59a4d (bench/RESULTS.md):
# batched decode f16/q8_0/q4_0 at B = 16..128 and single-stream f32/q8_0/q4_0,
# .devcl/pldr (build 4669498) against .devcl/pldr-q (8e59a4d) alternating, then
# the prefill through CLBlast (weights widened into a scratch) against the
# engine's own GEMM. Set up .devcl as bench/gpu.sh says; run from the
# repository root there: sh .devcl/q.sh (this file), $OUT the folder that comes back.
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
$N devices > $o/devices.txt 2>&1; cat $o/devices.txt
for i in 1 2; do for p in $B $N; do echo "== $p round $i"; $p bench -m $M --device nvidia -p 64 -n 64 -r 1 --cache kvg --dtype f16,q8_0,q4_0 -b 16,32,64,128 2>&1 | grep -E "^\| pldr-110m|rror"; done; done > $o/batched.md 2>&1
cat $o/batched.md
for i in 1 2; do for p in $B $N; do echo "== $p round $i"; $p bench -m $M --device nvidia -p 0 -n 128 -r 3 --cache kvg --dtype f32,q8_0,q4_0 2>&1 | grep -E "^\| pldr-110m|rror"; done; done > $o/single.md 2>&1
cat $o/single.md
for g in clblast own clblast own; do echo "== prefill PLDR_GEMM=$g"; PLDR_GEMM=$g $N bench -m $M --device nvidia -p 64,512 -n 0 -r 3 --cache kvg --dtype q8_0,q4_0 2>&1 | grep -E "^\| pldr-110m|rror"; done > $o/prefill.md 2>&1
cat $o/prefill.md
