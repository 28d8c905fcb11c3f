#!/bin/sh
# pldr tune: a short search on a tiny model writes a well-formed tuning file;
# later loads apply it (and a hand-written non-default one) with the same
# logits; a damaged, invalid or foreign file is ignored with a warning and
# the logits stay the same. The same for the decode stage's file of
# work-group shapes, whose items PLDR_WG overrides. TAP output for
# Automake's tap driver.
PLDR=${PLDR_BIN:-./pldr}
SRC=${PLDR_SRCDIR:-.}
TMP=${PLDR_TESTTMP:-/tmp}/tune
rm -rf "$TMP" && mkdir -p "$TMP"
n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $1"; [ -f "$TMP/err" ] && sed 's/^/# /' "$TMP/err" | tail -n 20; }
check() { if [ "$1" -eq 0 ]; then ok "$2"; else not_ok "$2"; fi; }

PY=
for p in "${PYTHON3:-}" /usr/bin/python3 python3; do
    if [ -n "$p" ] && "$p" -c 'import numpy' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then echo "1..0 # SKIP no python3 with numpy"; exit 0; fi

echo "1..41"

# Keep PoCL's compiler cache where it was (CLBlast compiles each parameter
# set: about 20 s under PoCL when the cache does not have it), and put pldr's
# cache, where the tuning file goes, in the test directory.
export POCL_CACHE_DIR="${POCL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pocl/kcache}"
export XDG_CACHE_HOME="$TMP/cache"
unset PLDR_TUNING
MODEL=$TMP/model
IDS=5,17,42,7,300,12,99,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25
"$PY" "$SRC/tests/mkmodel.py" --preset tiny --seed 3 -o "$MODEL" >/dev/null 2>"$TMP/err"
check $? "tiny model created"

# same_logits A.npy B.npy [TOL]: equal within TOL (default 1e-5) relative to
# the largest logit
same_logits() {
    "$PY" - "$1" "$2" "${3:-1e-5}" <<'EOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
scale = float(np.abs(a).max())
err = float(np.abs(a - b).max())
ok = a.shape == b.shape and np.isfinite(b).all() and err <= float(sys.argv[3]) * scale
print("# max |difference| %.3g, largest logit %.3g" % (err, scale))
sys.exit(0 if ok else 1)
EOF
}

"$PLDR" logits -m "$MODEL" --ids $IDS -o "$TMP/ref.npy" 2>"$TMP/err"
check $? "logits before tuning"

"$PLDR" tune --shapes foo >/dev/null 2>"$TMP/err"
[ $? -eq 2 ] && grep -q "prefill or all" "$TMP/err"
check $? "bad --shapes is a usage error"
"$PLDR" tune --budget -1 >/dev/null 2>"$TMP/err"
[ $? -eq 2 ]
check $? "negative --budget is a usage error"

# A short search: the defaults on both paths and two parameter sets.
"$PLDR" tune -m "$MODEL" --stage gemm --budget 60 --max-candidates 2 >"$TMP/out" 2>"$TMP/err"
check $? "tune runs"
FILE=$("$PLDR" tune --path 2>"$TMP/err")
case "$FILE" in "$TMP/cache/pldr/tune-"*.json) [ -f "$FILE" ] ;; *) false ;; esac
check $? "tuning file written in the cache directory"
"$PY" - "$FILE" "$MODEL" >"$TMP/err" 2>&1 <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
assert t["format"] == "pldr-clblast-tuning" and t["version"] == 1, "format"
assert t["device"]["name"] and t["device"]["driver_version"] and t["device"]["platform_version"], "device"
assert t["model"]["d_model"] == 128, "model"
assert len(t["shapes"]) >= 3, "shapes"
for s in t["shapes"]:
    assert s["m"] > 0 and s["n"] > 0 and s["k"] > 0 and s["weight"] > 0, s
    assert s["before_ms"] > 0 and s["after_ms"] > 0 and s["before_gflops"] > 0 and s["after_gflops"] > 0, s
    if not t["search"]["tuned"]:
        assert s["after_ms"] == s["before_ms"], s
assert t["total_before_ms"] > 0 and t["total_after_ms"] <= t["total_before_ms"], "totals"
p = t["parameters"]
if t["search"]["tuned"]:
    assert "GemmRoutine" in p and set(p) <= {"Xgemm", "XgemmDirect", "GemmRoutine"}, p
    assert t["total_after_ms"] < t["total_before_ms"], "no gain"
else:
    assert p == {}, p
assert len(t["trials"]) >= 1 and t["trials"][0]["kernel"] == "defaults", "trials"
EOF
check $? "tuning file well-formed, with times before and after"
grep -q "GFLOP/s" "$TMP/out"
check $? "tune prints GFLOP/s per shape"

"$PLDR" tune --check >"$TMP/out" 2>"$TMP/err"
[ $? -eq 0 ] && grep -q "tuned for" "$TMP/out"
check $? "tune --check reads and applies the file"
"$PLDR" tune -m "$MODEL" --stage gemm --if-missing --max-candidates 0 >"$TMP/out" 2>"$TMP/err"
[ $? -eq 0 ] && grep -q "already tuned" "$TMP/out"
check $? "tune --if-missing keeps a file made for the same shapes"
"$PLDR" logits -m "$MODEL" --ids $IDS -o "$TMP/tuned.npy" 2>"$TMP/err"
[ $? -eq 0 ] && ! grep -q warning "$TMP/err" && same_logits "$TMP/ref.npy" "$TMP/tuned.npy" >>"$TMP/err"
check $? "a load with the tuning file gives the same logits"

# A hand-written file with explicit sets of every kind: with 32 tokens, the
# Q/K/V and final-layer GEMMs (m*n*k >= 100^3) on Xgemm with GEMMK=0, the
# others on the direct kernel.
cp "$FILE" "$TMP/tuned.json"
edit() {
    "$PY" - "$TMP/tuned.json" "$FILE" "$1" <<'EOF'
import json, sys
src, path, what = sys.argv[1], sys.argv[2], sys.argv[3]
t = json.load(open(src))
x = dict(GEMMK=0, KREG=1, KWG=16, KWI=2, MDIMA=8, MDIMC=8, MWG=32, NDIMB=8, NDIMC=8, NWG=32,
         SA=1, SB=0, STRM=1, STRN=0, VWM=2, VWN=4)
d = dict(KWID=2, MDIMAD=8, MDIMCD=8, NDIMBD=8, NDIMCD=8, PADA=1, PADB=0, VWMD=2, VWND=2, WGD=16)
t["parameters"] = {"Xgemm": x, "XgemmDirect": d, "GemmRoutine": {"XGEMM_MIN_INDIRECT_SIZE": 100}}
if what == "invalid":
    x["MWG"] = 7
elif what == "foreign":
    t["device"]["name"] = "some other device"
elif what == "missing":
    del d["PADB"]
json.dump(t, open(path, "w"), indent=1)
EOF
}
edit explicit
"$PLDR" tune --check >"$TMP/out" 2>"$TMP/err"
[ $? -eq 0 ] && grep -q "3 parameter sets applied" "$TMP/out"
check $? "explicit Xgemm, XgemmDirect and threshold sets accepted by CLBlast"
"$PLDR" logits -m "$MODEL" --ids $IDS -o "$TMP/explicit.npy" 2>"$TMP/err"
[ $? -eq 0 ] && ! grep -q warning "$TMP/err" && same_logits "$TMP/ref.npy" "$TMP/explicit.npy" >>"$TMP/err"
check $? "explicit parameters give the same logits"

# ignored_with_warning DESCRIPTION PATTERN: logits still right, one warning
ignored_with_warning() {
    "$PLDR" logits -m "$MODEL" --ids $IDS -o "$TMP/bad.npy" 2>"$TMP/err"
    [ $? -eq 0 ] && grep -q "warning: ignoring the GEMM tuning file" "$TMP/err" && grep -q -- "$2" "$TMP/err" &&
        same_logits "$TMP/ref.npy" "$TMP/bad.npy" >>"$TMP/err"
    check $? "$1"
}
head -c 150 "$FILE" >"$FILE.cut" && mv "$FILE.cut" "$FILE"
ignored_with_warning "truncated file ignored with a warning, same logits" "not valid JSON"
"$PLDR" tune --check >/dev/null 2>"$TMP/err"
[ $? -eq 3 ]
check $? "tune --check fails on a damaged file"
PLDR_TUNING=0 "$PLDR" logits -m "$MODEL" --ids $IDS -o "$TMP/bad.npy" 2>"$TMP/err"
[ $? -eq 0 ] && ! grep -q warning "$TMP/err"
check $? "PLDR_TUNING=0 skips the file"
edit invalid
ignored_with_warning "invalid tile sizes ignored with a warning" "invalid Xgemm parameters"
edit foreign
ignored_with_warning "file of another device ignored with a warning" "another device"
edit missing
ignored_with_warning "incomplete parameter set ignored with a warning" "XgemmDirect has 9 parameters"

# First use (--tune of generate and bench): a damaged file, or one made for
# other shapes, is replaced.
"$PLDR" tune -m "$MODEL" --stage gemm --if-missing --budget 0 >"$TMP/out" 2>"$TMP/err"
[ $? -eq 0 ] && grep -q "^tuned" "$TMP/out" && "$PLDR" tune --check >/dev/null 2>&1
check $? "tune --if-missing replaces a damaged file"
"$PY" "$SRC/tests/mkmodel.py" --preset tiny --hidden 192 --heads 3 --seed 3 -o "$TMP/model2" >/dev/null 2>"$TMP/err" &&
    "$PLDR" tune -m "$TMP/model2" --stage gemm --if-missing --budget 0 >"$TMP/out" 2>"$TMP/err" && grep -q "^tuned" "$TMP/out" &&
    grep -q '"d_model": 192' "$FILE"
check $? "tune --if-missing tunes again for a model of other shapes"

# ---- the decode stage: the engine's own work-group shapes ----
"$PLDR" tune --stage foo >/dev/null 2>"$TMP/err"
[ $? -eq 2 ] && grep -q "gemm, decode or all" "$TMP/err"
check $? "bad --stage is a usage error"
"$PLDR" tune --path --stage all >/dev/null 2>"$TMP/err"
[ $? -eq 2 ]
check $? "--path with --stage all is a usage error (two files)"
mkdir -p "$TMP/noweights" && cp "$MODEL/config.json" "$TMP/noweights/"
"$PLDR" tune -m "$TMP/noweights" --stage decode >/dev/null 2>"$TMP/err"
[ $? -eq 3 ] && grep -q "no model.safetensors" "$TMP/err"
check $? "the decode stage needs the weights (exit 3 without them)"
"$PLDR" tune -m "$TMP/no-such-dir" >/dev/null 2>"$TMP/err"
[ $? -eq 3 ] && grep -q "cannot open the model directory" "$TMP/err"
check $? "a missing model directory is an input error (exit 3)"

"$PLDR" tune -m "$MODEL" --stage decode --steps 4 --runs 1 >"$TMP/out" 2>"$TMP/err"
[ $? -eq 0 ] && grep -q "| decode work groups | tok/s |" "$TMP/out"
check $? "tune --stage decode runs and prints its candidates"
DFILE=$("$PLDR" tune --path --stage decode 2>"$TMP/err")
case "$DFILE" in "$TMP/cache/pldr/decode-"*.json) [ -f "$DFILE" ] ;; *) false ;; esac
check $? "decode tuning file written in the cache directory"
"$PY" - "$DFILE" >"$TMP/err" 2>&1 <<'PYEOF'
import json, re, sys
t = json.load(open(sys.argv[1]))
assert t["format"] == "pldr-decode-tuning" and t["version"] == 1, "format"
assert t["device"]["name"] and t["device"]["driver_version"] and t["device"]["platform_version"], "device"
want = {"n_layers": 2, "d_model": 128, "n_heads": 2, "head_dim": 64, "d_ff": 192, "vocab_size": 512}
assert t["model"] == want, t["model"]
assert set(t["dtypes"]) == {"f32"}, t["dtypes"].keys()
e = t["dtypes"]["f32"]
item = r"((gemv|rows|wrows|att|pf)=[1-9][0-9]*|attpre=[01])"
items = re.compile(r"^%s(,%s)*$" % (item, item))
assert e["work_groups"] == "" or items.match(e["work_groups"]), e["work_groups"]
assert items.match(e["defaults"]), e["defaults"]
c = e["candidates"]
assert len(c) >= 3 and c[0]["work_groups"] == e["defaults"] and c[0]["tok_s"] > 0, c[:1]
assert len({x["work_groups"] for x in c}) == len(c), "a candidate measured twice"
for x in c:
    assert items.match(x["work_groups"]) and (x["tok_s"] > 0 or x["note"].startswith("dropped")), x
assert e["tok_s_defaults"] == c[0]["tok_s"], "defaults' figure"
if e["work_groups"]:
    assert e["tok_s"] >= 1.03 * e["tok_s_defaults"], "a choice must be 3% faster"
else:
    assert e["tok_s"] == e["tok_s_defaults"], "kept defaults"
PYEOF
check $? "decode tuning file well-formed: defaults first, every candidate timed or dropped with a reason"
"$PLDR" logits -m "$MODEL" --ids $IDS -o "$TMP/dtuned.npy" 2>"$TMP/err"
[ $? -eq 0 ] && ! grep -q warning "$TMP/err" && same_logits "$TMP/ref.npy" "$TMP/dtuned.npy" 1e-4 >>"$TMP/err"
check $? "a load with the decode tuning file gives the same logits (1e-4)"
"$PLDR" tune -m "$MODEL" --stage decode --if-missing >"$TMP/out" 2>"$TMP/err"
[ $? -eq 0 ] && grep -q "already tuned" "$TMP/out"
check $? "tune --stage decode --if-missing keeps a file made for the model"

# dedit ITEMS [WHAT]: the file's f32 entry set to ITEMS; WHAT other-model
# changes the model's dimensions, bad-json truncates the file
cp "$DFILE" "$TMP/decode.json"
dedit() {
    "$PY" - "$TMP/decode.json" "$DFILE" "$1" "${2:-}" <<'PYEOF'
import json, sys
src, path, items, what = sys.argv[1:5]
t = json.load(open(src))
t["dtypes"]["f32"]["work_groups"] = items
if what == "other-model":
    t["model"]["d_model"] = 4096
text = json.dumps(t, indent=1)
open(path, "w").write(text[:60] if what == "bad-json" else text)
PYEOF
}
# kopts: the f32 kernel options of a short bench, then "tuned" or "untuned"
kopts() {
    "$PLDR" bench -m "$MODEL" -p 16 -n 4 --tg-prompt 16 -r 1 -o json 2>"$TMP/err" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)["devices"][0]
print(d["kernel_options"]["f32"], "tuned" if d["decode_tuned"]["f32"] else "untuned")'
}
dedit "gemv=16,rows=16,att=32"
got=$(kopts)
case "$got" in
*"-DATT_WG=32 "*"-DGEMV_WG=16 -DGEMV_ROWS=16 "*" tuned") ok "the stored shapes are applied at load" ;;
*) echo "# got: $got"; not_ok "the stored shapes are applied at load" ;;
esac
"$PLDR" logits -m "$MODEL" --ids $IDS -o "$TMP/dexplicit.npy" 2>"$TMP/err"
[ $? -eq 0 ] && ! grep -q warning "$TMP/err" && same_logits "$TMP/ref.npy" "$TMP/dexplicit.npy" 1e-4 >>"$TMP/err"
check $? "stored non-default shapes give the same logits (1e-4)"
got=$(PLDR_WG=att=64 kopts)
case "$got" in
*"-DATT_WG=64 "*"-DGEMV_WG=16 -DGEMV_ROWS=16 "*" tuned") ok "PLDR_WG's items override the stored ones" ;;
*) echo "# got: $got"; not_ok "PLDR_WG's items override the stored ones" ;;
esac
got=$(PLDR_TUNING=0 kopts)
case "$got" in
*"-DATT_WG=32 "* | *"-DGEMV_WG=16 "* | *" tuned" | "") echo "# got: $got"; not_ok "PLDR_TUNING=0 skips the decode file" ;;
*) ok "PLDR_TUNING=0 skips the decode file" ;;
esac
"$PLDR" tune --check >"$TMP/out" 2>"$TMP/err"
grep -q "d_model 128" "$TMP/out" && grep -q "f32: gemv=16,rows=16,att=32" "$TMP/out"
check $? "tune --check describes the decode file"
dedit "gemv=16,rows=16,att=32" other-model
got=$(kopts)
case "$got" in
*"-DATT_WG=32 "* | *" tuned" | "") false ;;
*) ! grep -q warning "$TMP/err" ;;
esac
check $? "a file for other model dimensions is not applied (no warning)"
for bad in "gemv=0" "fast=1" "gemv=16,rows"; do
    dedit "$bad"
    got=$(kopts)
    case "$got" in
    *" tuned" | "") false ;;
    *) grep -q "warning: ignoring the decode tuning file" "$TMP/err" ;;
    esac
    check $? "invalid stored items '$bad' ignored with a warning"
done
dedit "" bad-json
got=$(kopts)
case "$got" in
*" tuned" | "") false ;;
*) grep -q "ignoring the decode tuning file.*not valid JSON" "$TMP/err" ;;
esac
check $? "damaged decode file ignored with a warning"
"$PLDR" tune -m "$MODEL" --stage decode --if-missing --steps 2 --runs 1 >"$TMP/out" 2>"$TMP/err"
[ $? -eq 0 ] && grep -q "^tuned" "$TMP/out" && "$PLDR" tune --check >/dev/null 2>&1
check $? "tune --stage decode --if-missing replaces a damaged file"
exit 0
