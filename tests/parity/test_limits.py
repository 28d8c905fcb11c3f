#!/usr/bin/python3
"""Work-group shapes lowered to fit each kernel's own limits.

After building, the engine checks every kernel it launches with a fixed
work-group size (the batched decode's kernels/batch.cl among them) against
its CL_KERNEL_WORK_GROUP_SIZE and its local memory against the device's, and
rebuilds with smaller shapes where one does not fit, noting each change
(pldr_model_kernel_notes, `kernel_notes` in `pldr bench -o json`). PoCL
allows every kernel the device's maximum, so PLDR_KERNEL_LIMITS lowers the
limits as a device with tighter ones would: "NAME=N" caps kernel NAME's
CL_KERNEL_WORK_GROUP_SIZE, "*=N" every kernel's, "local=BYTES" the local
memory, and "int64=0" builds the kernels as for a device without 64-bit
integers.

On a small random checkpoint (tests/mkmodel.py), with the batched products
through batch_gemv (PLDR_GEMM=clblast):
- `pldr logits` in the work-group forms (PLDR_WG gpu=1) with every kernel
  capped at 16 work-items and 1 KiB of local memory: within 1e-4 of the
  float64 reference (pldr_ref.py) and 1e-5 of the uncapped run;
- the batched decode (tests/unit/batch_check --dump) with batch_gemv capped at
  16, batch_attention and batch_argmax at 8, and 560 bytes of local memory
  (less than several kernels need at 64 work-items under PoCL): logits
  within 1e-5 of the uncapped run, greedy tokens equal;
- `pldr bench -o json` under the same caps: kernel_notes names each batch
  kernel with its limit and new shape, kernel_options carry the lowered
  shapes; without caps kernel_notes is empty (PoCL's limits are the
  device's);
- with "int64=0" the kernels are built with 32-bit index arithmetic, as for
  an embedded-profile device without 64-bit integers: logits and the batched
  decode bit-identical to the 64-bit build's;
- a malformed item is named in a warning. TAP output."""

import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import mkmodel  # noqa: E402
import pldr_ref as ref  # noqa: E402
import pldrtest as pt  # noqa: E402

TOL = 1e-4       # engine vs float64 reference
SAME_TOL = 1e-5  # capped vs uncapped engine
BASE = os.path.join(pt.TESTTMP, "limits")
BATCH_CHECK = os.path.join(os.path.dirname(pt.PLDR_BIN), "tests", "unit", "batch_check")
SHAPE = {"L": 2, "d": 30, "H": 3, "dk": 10, "F": 43, "R": 1, "D": 2, "Fa": 13, "V": 97, "Tmax": 64}
IDS = [5, 17, 42, 9, 60, 3, 88, 12, 1, 33]
# the work-group forms (the single-sequence cases), and the batched products
# through batch_gemv rather than the engine's GEMM (every case)
GPU_FORMS = {"PLDR_WG": "gpu=1,gemv=64,rows=4,ml=64", "PLDR_GEMM": "clblast"}
BATCH_FORM = {"PLDR_GEMM": "clblast"}
ALL_CAPPED = {"PLDR_KERNEL_LIMITS": "*=16,local=1024"}
NO_INT64 = {"PLDR_KERNEL_LIMITS": "int64=0"}
BATCH_CAPPED = dict(BATCH_FORM, PLDR_KERNEL_LIMITS="batch_gemv=16,batch_attention=8,batch_argmax=8,local=560")


def logits(model, env, out):
    args = ["logits", "-m", model, "--ids", ",".join(map(str, IDS)), "--prefill", "4", "--cache", "kvg", "-o", out]
    rc, _, err = pt.run_pldr(args, env=env)
    return rc, err


def batch_dump(model, env, out):
    p = subprocess.run([BATCH_CHECK, model, "f32", "0", "--dump", "kvg", out], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, errors="replace", timeout=pt.TIMEOUT,
                       env=dict(os.environ, **env))
    return p.returncode, p.stderr


def main():
    tap = pt.Tap()
    os.makedirs(BASE, exist_ok=True)
    model = mkmodel.make_checkpoint(os.path.join(BASE, "m"), SHAPE, seed=21)
    want = ref.logits_for_mode(ref.Model(ref.load_checkpoint(model)), IDS, 4, "kvg")

    def check_logits():
        outs = []
        for name, env in (("plain", GPU_FORMS), ("capped", dict(GPU_FORMS, **ALL_CAPPED))):
            out = os.path.join(BASE, "%s.npy" % name)
            rc, err = logits(model, env, out)
            if rc != 0:
                return False, "%s run: exit %d" % (name, rc), pt.tail(err)
            outs.append(pt.load_npy(out))
        e_ref, e_same = pt.rel_err(outs[1], want), pt.rel_err(outs[1], outs[0])
        return (e_ref <= TOL and e_same <= SAME_TOL,
                "rel_err %.3g against the float64 reference (tol %g), %.3g against the uncapped run (tol %g)"
                % (e_ref, TOL, e_same, SAME_TOL))
    tap.check("logits, work-group forms, every kernel capped at 16 work-items and 1 KiB of local memory", check_logits)

    def check_batch():
        outs = []
        for name, env in (("plain", BATCH_FORM), ("capped", BATCH_CAPPED)):
            out = os.path.join(BASE, "batch-%s.bin" % name)
            rc, err = batch_dump(model, env, out)
            if rc != 0:
                return False, "%s run: exit %d" % (name, rc), pt.tail(err)
            outs.append(np.fromfile(out, dtype=np.float32))
        if outs[0].size != outs[1].size or outs[0].size <= 6:
            return False, "dumps of %d and %d words" % (outs[0].size, outs[1].size)
        e = pt.rel_err(outs[1][:-6], outs[0][:-6])
        same = bool(np.array_equal(outs[1][-6:].view(np.int32), outs[0][-6:].view(np.int32)))
        return e <= SAME_TOL and same, "logits rel_err %.3g against the uncapped run (tol %g), greedy tokens %s" % (
            e, SAME_TOL, "equal" if same else "differ")
    tap.check("batched decode, batch_gemv capped at 16, batch_attention and batch_argmax at 8, 560 bytes of local "
              "memory", check_batch)

    def check_int32():  # against the plain runs of check_logits and check_batch
        out = os.path.join(BASE, "int32.npy")
        rc, err = logits(model, dict(GPU_FORMS, **NO_INT64), out)
        if rc != 0:
            return False, "logits: exit %d" % rc, pt.tail(err)
        outs = [pt.load_npy(os.path.join(BASE, "plain.npy")), pt.load_npy(out)]
        out = os.path.join(BASE, "batch-int32.bin")
        rc, err = batch_dump(model, dict(BATCH_FORM, **NO_INT64), out)
        if rc != 0:
            return False, "batched run: exit %d" % rc, pt.tail(err)
        plain = np.fromfile(os.path.join(BASE, "batch-plain.bin"), dtype=np.float32)
        got = np.fromfile(out, dtype=np.float32)
        same_logits = bool(np.array_equal(outs[0], outs[1]))
        same_batch = plain.size == got.size and bool(np.array_equal(plain, got))
        return same_logits and same_batch, "logits %s, batched decode %s" % (
            "bit-identical" if same_logits else "DIFFER (rel_err %.3g)" % pt.rel_err(outs[1], outs[0]),
            "bit-identical" if same_batch else "DIFFERS")
    tap.check("32-bit index arithmetic (int64=0, as on an embedded-profile device without 64-bit integers): "
              "the same logits as 64-bit", check_int32)

    def bench(env):
        rc, out, err = pt.run_pldr(["bench", "-m", model, "-p", "0", "-n", "4", "--tg-prompt", "4", "-r", "1",
                                    "-o", "json"], env=env)
        if rc != 0:
            return None, "exit %d" % rc, err
        dev = json.loads(out)["devices"][0]
        return dev, dev["kernel_notes"]["f32"], err

    def check_notes():
        dev, notes, err = bench(dict(BATCH_CAPPED, PLDR_KERNEL_LIMITS=BATCH_CAPPED["PLDR_KERNEL_LIMITS"]
                                     + ",bogus,batch_gemv=x"))
        if dev is None:
            return False, "capped: " + notes, pt.tail(err)
        lines = notes.split("\n")
        wants = [r"batch_gemv: work-group of \d+, more than its CL_KERNEL_WORK_GROUP_SIZE 16; rebuilt with 16$",
                 r"batch_attention: work-group of \d+, more than its CL_KERNEL_WORK_GROUP_SIZE 8; rebuilt with 8$",
                 r"batch_argmax: work-group of \d+, more than its CL_KERNEL_WORK_GROUP_SIZE 8; rebuilt with 8$",
                 r"\w+: \d+ bytes of local memory, more than the device's 560; rebuilt with a work-group of 32 "
                 r"instead of 64$"]
        missing = [w for w in wants if not any(re.match(w, ln) for ln in lines)]
        opts = dev["kernel_options"]["f32"].split()
        missing += [o for o in ("-DGEMV_WG=16", "-DATT_WG=8", "-DROW_WG=8") if o not in opts]
        warned = ("ignoring PLDR_KERNEL_LIMITS item 'bogus'" in err
                  and "ignoring PLDR_KERNEL_LIMITS item 'batch_gemv=x'" in err)
        dev0, notes0, err0 = bench(BATCH_FORM)
        if dev0 is None:
            return False, "uncapped: " + notes0, pt.tail(err0)
        return (not missing and warned and notes0 == "",
                "notes %r; missing %s; malformed items %s; uncapped notes %r"
                % (notes, missing or "nothing", "warned of" if warned else "NOT warned of", notes0), pt.tail(err))
    tap.check("pldr bench -o json: kernel_notes and kernel_options under the caps, no notes without", check_notes)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
