#!/bin/sh
# The GPU machine's measurements (issue: batched decoding, the server, quantized
# weights, the hand-offs; H100 or H200 through NVIDIA's OpenCL and its CPU through
# PoCL), run from the repository root there: sh .devcl/gpu.sh a|b|c|all, with $OUT
# the folder whose files come back. Prepare .devcl here first (it travels as a
# carried path; add /.devcl/ to .git/info/exclude):
#   ../shared/tools/device-opencl.sh fetch .devcl       # ICD loader, clinfo, CLBlast
#   mkdir -p .devcl/lib && for l in libmicrohttpd.so.12 libgnutls.so.30 libp11-kit.so.0 \
#       libidn2.so.0 libunistring.so.2 libtasn1.so.6 libnettle.so.8 libhogweed.so.6 \
#       libgmp.so.10 libffi.so.8 libjansson.so.4; do cp -L /lib/x86_64-linux-gnu/$l .devcl/lib/; done
#   cp tests/data/tokenizer/pldr-refinedweb-32k.model .devcl/tok32k.model
#   then two builds with ./configure --disable-shared in worktrees: .devcl/pldr-base (the
#   commit before the change measured) and .devcl/pldr (this one), and bench/gpu.sh as
#   .devcl/gpu.sh. Parts: a = single stream before/after (alternating), batched decode in
#   every dtype, a PLDR_PROFILE run; b = the CPU (quantized, batched) and the two-device
#   svg; c = pldr serve on the GPU, then GPU + CPU, under bench/serve_bench.py;
#   q = quantized weights on the GPU, before/after (alternating): batched f16/q8_0/q4_0 at
#   B = 16..128, single-stream f32/q8_0/q4_0, and the prefill through CLBlast on the
#   widened weights against the engine's own GEMM; qcpu = the same single-stream and B=16
#   comparison on the machine's CPU (PoCL). Parts q and qcpu are not in all.
set -u
part=${1:-all}
set -- setup .devcl  # dash passes no arguments to "."
. .devcl/device-opencl.sh >/dev/null 2>&1
export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(pwd)/.devcl/lib
export PLDR_TUNING=0
M=/tmp/pldr-110m
[ -f $M/config.json ] || python3 tests/mkmodel.py --preset 110m --seed 1 -o $M >/dev/null
cp .devcl/tok32k.model $M/tokenizer.model
N=.devcl/pldr; B=.devcl/pldr-base
o=${OUT:-/tmp/out}; mkdir -p "$o"
if [ "$part" = a ] || [ "$part" = all ]; then
  { nvidia-smi -L; $N devices; clinfo | grep -io "cl_khr_command_buffer[a-z_]*" | sort | uniq -c; } > $o/devices.txt 2>&1
  cat $o/devices.txt
  # 1. single stream, before/after, alternating
  for i in 1 2; do for p in $B $N; do echo "== $p round $i"; $p bench -m $M --device nvidia -p 0 -n 128 -r 3 --cache kvg --dtype f32,f16 2>&1 | grep -E "tg128|\|.*t/s"; done; done > $o/single.md
  cat $o/single.md
  # 2. batched decode, every dtype
  $N bench -m $M --device nvidia -p 64 -n 128 -r 1 --cache kvg --dtype f32,f16,q8_0,q4_0 -b 1,2,4,8,16,32,64,128 > $o/batched.md 2>&1
  cat $o/batched.md
  PLDR_PROFILE=1 $N bench -m $M --device nvidia -p 64 -n 128 -r 1 --cache kvg --dtype f32 -b 1,64 > $o/profile.txt 2>&1
  tail -60 $o/profile.txt
fi
if [ "$part" = b ] || [ "$part" = all ]; then
  # 4. quantized and batched on the CPU
  $N bench -m $M --device pocl -p 64 -n 128 -r 1 --cache kvg --dtype f32,f16,q8_0,q4_0 -b 1,16 > $o/pocl.md 2>&1
  cat $o/pocl.md
  # 5. both devices in one picture
  $N bench -m $M --device all -p 64 -n 128 -r 1 --cache kvg --dtype f32,f16 -b 1,16,64 -o svg $o/devices.svg > $o/svg.txt 2>&1
  tail -5 $o/svg.txt
fi
# the result rows of pldr bench (and any error) for the q and qcpu parts
rows() { grep -E "^\| pldr-110m|rror"; }
if [ "$part" = q ]; then
  for i in 1 2; do for p in $B $N; do echo "== $p round $i"; $p bench -m $M --device nvidia -p 64 -n 64 -r 1 --cache kvg --dtype f16,q8_0,q4_0 -b 16,32,64,128 2>&1 | rows; done; done > $o/batched.md 2>&1
  cat $o/batched.md
  for i in 1 2; do for p in $B $N; do echo "== $p round $i"; $p bench -m $M --device nvidia -p 0 -n 128 -r 3 --cache kvg --dtype f32,q8_0,q4_0 2>&1 | rows; done; done > $o/single.md 2>&1
  cat $o/single.md
  for g in clblast own clblast own; do echo "== prefill PLDR_GEMM=$g"; PLDR_GEMM=$g $N bench -m $M --device nvidia -p 64,512 -n 0 -r 3 --cache kvg --dtype q8_0,q4_0 2>&1 | rows; done > $o/prefill.md 2>&1
  cat $o/prefill.md
fi
if [ "$part" = qcpu ]; then
  for i in 1 2; do for p in $B $N; do echo "== $p pocl round $i"; $p bench -m $M --device pocl -p 0 -n 128 -r 2 --cache kvg --dtype f32,q8_0,q4_0 2>&1 | rows; done; done > $o/pocl16-single.md 2>&1
  cat $o/pocl16-single.md
  for p in $B $N; do echo "== $p pocl batched"; $p bench -m $M --device pocl -p 64 -n 32 -r 1 --cache kvg --dtype f32,q8_0,q4_0 -b 16 2>&1 | rows; done > $o/pocl16-batched.md 2>&1
  cat $o/pocl16-batched.md
fi
if [ "$part" = c ] || [ "$part" = all ]; then
  # 3. the server: one replica on the GPU, then GPU + CPU
  for dev in nvidia nvidia,pocl; do
    $N serve -m $M --device $dev --port 18080 --parallel 64 --ctx 256 --max-queue 512 2> $o/serve-$dev.log &
    sp=$!
    for i in $(seq 1 120); do curl -sf http://127.0.0.1:18080/health >/dev/null && break; sleep 1; done
    echo "== serve --device $dev"
    python3 bench/serve_bench.py --url http://127.0.0.1:18080 --clients 1,4,16,64,128 --requests 4 --prompt-tokens 64 --max-tokens 128
    kill $sp; wait $sp
  done > $o/serve.txt 2>&1
  cat $o/serve.txt
fi
