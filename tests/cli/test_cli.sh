#!/bin/sh
# Command-line behaviour: devices, device selection, exit codes of bad input,
# the program-binary cache, and greedy generation with the bundled model.
# TAP output for Automake's tap driver.
PLDR=${PLDR_BIN:-./pldr}
SRC=${PLDR_SRCDIR:-.}
TMP=${PLDR_TESTTMP:-/tmp}/cli
MODEL=$SRC/models/pldr-tiny-pydocs
rm -rf "$TMP" && mkdir -p "$TMP"
n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $1"; [ -f "$TMP/err" ] && sed 's/^/# /' "$TMP/err" | head -n 20; }
# expect CODE DESCRIPTION PATTERN -- COMMAND...: exit code CODE and stderr matching PATTERN
expect() {
    code=$1 desc=$2 pat=$3
    shift 4
    "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    if [ "$rc" -eq "$code" ] && { [ -z "$pat" ] || grep -Eq -- "$pat" "$TMP/err" "$TMP/out"; }; then ok "$desc"; else
        echo "# exit $rc (expected $code), pattern '$pat'"
        not_ok "$desc"
    fi
}

echo "1..32"

expect 0 "devices lists the PoCL CPU device" "Portable Computing Language" -- "$PLDR" devices
expect 0 "--help prints the commands and exit codes" "exit codes" -- "$PLDR" --help
for c in generate logits tokenize detokenize devices; do
    expect 0 "$c --help" "usage: pldr $c" -- "$PLDR" "$c" --help
done
expect 2 "unknown command" "unknown command" -- "$PLDR" frobnicate
expect 2 "unknown option" "unknown option '--frob'" -- "$PLDR" generate --frob -p x
expect 2 "missing option value" "needs a value" -- "$PLDR" generate -p
expect 2 "negative -n refused" "-n must be" -- "$PLDR" generate -p x -n -3
expect 2 "top-p outside (0,1] refused" "top-p must be in" -- "$PLDR" generate -p x --top-p 1.5
expect 2 "negative temperature refused" "temp must be" -- "$PLDR" generate -p x --temp -1
expect 4 "unknown device spec lists the devices" "no OpenCL device matches 'nosuchdevice'.*" -- "$PLDR" generate -m "$MODEL" -p x --device nosuchdevice
expect 4 "device index out of range" "no OpenCL device matches '7'" -- "$PLDR" logits -m "$MODEL" --ids 1,2 --device 7 -o "$TMP/x.npy"
expect 0 "device by platform:device" "" -- "$PLDR" logits -m "$MODEL" --ids 5,6 --device 0:0 -o "$TMP/x.npy"
expect 0 "device by name substring, any case" "" -- env PLDR_DEVICE=POCL "$PLDR" logits -m "$MODEL" --ids 5,6 -o "$TMP/x.npy"
expect 3 "missing model directory" "config.json" -- "$PLDR" logits -m "$TMP/nonexistent" --ids 1 -o "$TMP/x.npy"
expect 2 "token id outside the vocabulary" "outside the vocabulary" -- "$PLDR" logits -m "$MODEL" --ids 1,99999 -o "$TMP/x.npy"
expect 2 "--prefill beyond the ids" "more than the 2 ids" -- "$PLDR" logits -m "$MODEL" --ids 1,2 --prefill 3 -o "$TMP/x.npy"
expect 5 "prompt longer than the context" "more than the context of 4 tokens" -- "$PLDR" generate -m "$MODEL" --ctx 4 -p "To open a file in Python, use the open function"

# The program-binary cache: a first run writes an entry; a damaged entry is
# ignored and rewritten, and the results stay the same.
export XDG_CACHE_HOME="$TMP/cache"
"$PLDR" logits -m "$MODEL" --ids 5,17,42 -o "$TMP/a.npy" 2>"$TMP/err"
entries=$(ls "$TMP/cache/pldr" 2>/dev/null | grep -c '\.bin$')
if [ "$entries" -eq 1 ]; then ok "kernel binary cache entry written"; else not_ok "kernel binary cache entry written ($entries entries)"; fi
f=$(ls "$TMP/cache/pldr"/*.bin | head -n 1)
printf 'garbage' | dd of="$f" bs=1 seek=40 conv=notrunc 2>/dev/null
"$PLDR" logits -m "$MODEL" --ids 5,17,42 -o "$TMP/b.npy" 2>"$TMP/err"
if [ $? -eq 0 ] && cmp -s "$TMP/a.npy" "$TMP/b.npy"; then ok "damaged cache entry ignored, same logits"; else not_ok "damaged cache entry ignored, same logits"; fi
head -c 100 "$f" >"$f.cut" && mv "$f.cut" "$f"
"$PLDR" logits -m "$MODEL" --ids 5,17,42 -o "$TMP/c.npy" 2>"$TMP/err"
if [ $? -eq 0 ] && cmp -s "$TMP/a.npy" "$TMP/c.npy" && [ "$(wc -c <"$f")" -gt 100 ]; then ok "truncated cache entry rebuilt"; else not_ok "truncated cache entry rebuilt"; fi
unset XDG_CACHE_HOME

# Greedy generation with the bundled model gives the text stated in the
# model's description (with caches: without, A covers every token and the
# text may differ).
want='To open a file in Python, use the :func:`open` function, and the :func:`open` function.'
for cache in kvg kv; do
    got=$("$PLDR" generate -p "To open a file in Python, use" -n 40 --cache $cache -q 2>"$TMP/err")
    if [ "$got" = "$want" ]; then ok "greedy generation, cache $cache"; else echo "# got: $got"; not_ok "greedy generation, cache $cache"; fi
done
# the same with the decode products in a GPU layout (8 lanes per row, folded
# LayerNorms, argmax merged from row values)
got=$(PLDR_WG=gemv=64,rows=8,attpre=1 "$PLDR" generate -p "To open a file in Python, use" -n 40 -q 2>"$TMP/err")
if [ "$got" = "$want" ]; then ok "greedy generation, GPU layout"; else echo "# got: $got"; not_ok "greedy generation, GPU layout"; fi
# the prefill through the GPUs' work-group kernels and CLBlast
got=$(PLDR_WG=gpu=1 PLDR_GEMM=clblast "$PLDR" generate -p "To open a file in Python, use" -n 40 -q 2>"$TMP/err")
if [ "$got" = "$want" ]; then ok "greedy generation, work-group prefill kernels and CLBlast"; else echo "# got: $got"; not_ok "greedy generation, work-group prefill kernels and CLBlast"; fi
# an unknown PLDR_GEMM value is named in a warning and the default is used
got=$(PLDR_GEMM=fast "$PLDR" generate -p "To open a file in Python, use" -n 40 -q 2>"$TMP/err")
if [ "$got" = "$want" ] && grep -q "ignoring PLDR_GEMM=fast" "$TMP/err"; then ok "unknown PLDR_GEMM warned about"; else cat "$TMP/err"; not_ok "unknown PLDR_GEMM warned about"; fi
# PLDR_WG's shapes and switches reach the kernels' build options (bench's
# JSON lists them); a later item wins, and a switch can be turned off
opts() { PLDR_WG=$1 "$PLDR" bench -m "$MODEL" -p 4 -n 0 -r 1 -o json 2>"$TMP/err" | grep '"kernel_options"'; }
got=$(opts "att=16,gemv=32,rows=4,attpre=1")
case "$got" in
*"-DATT_WG=16 "*"-DGEMV_WG=32 -DGEMV_ROWS=4 "*"-DATT_PRELOAD=1 "*) ok "PLDR_WG shapes in the kernel options" ;;
*) echo "# got: $got"; not_ok "PLDR_WG shapes in the kernel options" ;;
esac
got=$(opts "attpre=1,attpre=0")
case "$got" in
*"-DATT_PRELOAD=0 "*) ok "PLDR_WG switch turned off" ;;
*) echo "# got: $got"; not_ok "PLDR_WG switch turned off" ;;
esac
# items it does not understand are named in warnings, and the rest still applies
got=$(opts "rows=4,fast=1,gemv=x,attpre=2")
if grep -q "ignoring PLDR_WG item 'fast=1' (unknown key)" "$TMP/err" &&
    grep -q "ignoring PLDR_WG item 'gemv=x' (the value is not an integer)" "$TMP/err" &&
    grep -q "ignoring PLDR_WG item 'attpre=2' (the value must be 0 or 1)" "$TMP/err"; then
    case "$got" in
    *"-DGEMV_ROWS=4 "*) ok "bad PLDR_WG items warned about" ;;
    *) echo "# got: $got"; not_ok "bad PLDR_WG items warned about" ;;
    esac
else not_ok "bad PLDR_WG items warned about"; fi
exit 0
