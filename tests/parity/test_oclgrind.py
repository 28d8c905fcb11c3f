#!/usr/bin/python3
"""The kernels under oclgrind (Debian's package, an OpenCL 1.2 device
simulator): `oclgrind --data-races --check-api COMMAND` runs pldr with the
simulator as its only OpenCL platform and reports data races between
work-items (within and across work-groups), out-of-bounds accesses, barrier
divergence and invalid API use. Every run must produce no report at all and
the same logits as the default device (PoCL in CI) within 1e-5 relative, or
the same greedy text.

The checkpoints are small random ones (tests/mkmodel.py: d = 30, three heads
of 10, d_ff = 43, vocabularies of 97 and 4096), one whose metric-learner
width A_dff = 13 is not a multiple of 4 and one whose A_dff = 12 is. The
kernels run in their GPU forms (the simulator is a GPU: multi-lane products
with the LayerNorms folded in, work-group prefill kernels, CLBlast or the
engine's GEMM) and their CPU forms (PLDR_WG gpu=0 and one work-item per
row, PLDR_GEMM=own), with float32, half, Q8_0 and Q4_0 weights (Q4_0 in
the CPU form with float scales, PLDR_WG fscale=1, as CPUs get them), in the
three cache modes, and with decode attention split over several work-groups (att=4:
blocks of 4 keys, so every step past the fourth token combines blocks).

The batched decode (kernels/batch.cl through pldr_eval_batch) runs
tests/unit/batch_check's --dump schedule: three sequences with prompts of 3,
5 and 8 tokens, decode steps of three and of two rows with logits, then
greedy steps (batch_argmax); in the GPU form (batch_gemv, batch_attention)
kvg with float32 and kv with half weights, in the CPU form (the engine's
GEMM, batch_attention_cpu) kvg with half weights and kv with Q4_0; logits within 1e-5
relative of the default device's, greedy tokens equal.

`--uninitialized` is left out: oclgrind 21.10 reports values as
uninitialised in buffers written at an offset (clEnqueueWriteBuffer with a
non-zero offset), which the engine does for every weight matrix.

Two kernels with a known race (tests/parity/oclgrind/local_copy.cl: a copy through
local memory with its barrier removed, and the last-work-group hand-off the
engine used to have) must be reported, so that a pass that cannot fail is
noticed.

Skipped where oclgrind is not installed, and under the sanitizer build (the
simulator cannot be preloaded ahead of the AddressSanitizer runtime). TAP
output."""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402

import mkmodel  # noqa: E402
import numpy as np  # noqa: E402
import pldrtest as pt  # noqa: E402

TOL = 1e-5
OCLGRIND = shutil.which("oclgrind")
OCLGRIND_KERNEL = shutil.which("oclgrind-kernel")
BASE = os.path.join(pt.TESTTMP, "oclgrind")
HERE = os.path.dirname(os.path.abspath(__file__))
BATCH_CHECK = os.path.join(os.path.dirname(pt.PLDR_BIN), "tests", "unit", "batch_check")

SHAPE = {"L": 2, "d": 30, "H": 3, "dk": 10, "F": 43, "R": 1, "D": 2, "Tmax": 64}
# the simulator's forms: GPU (its defaults) and CPU (one work-item per row,
# the one-work-item prefill kernels, the engine's GEMM)
GPU = {"PLDR_WG": "att=4"}
GPU_OWN = {"PLDR_WG": "att=4", "PLDR_GEMM": "own"}
CPU = {"PLDR_WG": "att=4,gpu=0,gemv=16,rows=16", "PLDR_GEMM": "own"}


def under_oclgrind(args, env, log, prog=None):
    """pldr ARGS (or PROG ARGS) with the simulator as the only platform; its
    reports go to log."""
    if os.path.exists(log):
        os.remove(log)
    cmd = [OCLGRIND, "--data-races", "--check-api", "--log", log, prog or pt.PLDR_BIN] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                           timeout=pt.TIMEOUT, env=dict(os.environ, **env))
    except subprocess.TimeoutExpired as e:
        return 124, "", "timed out after %g s" % e.timeout, ""
    report = open(log, errors="replace").read() if os.path.exists(log) else ""
    return p.returncode, p.stdout, p.stderr, report


def verdict(rc, err, report):
    """(ok, summary, details) for a run's exit status and simulator report."""
    if report.strip():
        n = report.count("\n\n") or 1
        return False, "the simulator reported something (about %d entries)" % n, pt.tail(report, 40)
    if rc != 0:
        return False, "exit %d" % rc, pt.tail(err)
    return True, ""


def logits_case(tap, name, model, ids, prefill, mode, dtype, env):
    out_ref = os.path.join(BASE, "ref.npy")
    out = os.path.join(BASE, "sim.npy")
    args = ["logits", "-m", model, "--ids", ",".join(map(str, ids)), "--prefill", prefill, "--cache", mode,
            "--dtype", dtype]

    def check():
        rc, _, err = pt.run_pldr(args + ["-o", out_ref], env=env)
        if rc != 0:
            return False, "the default device: exit %d" % rc, pt.tail(err)
        rc, _, err, report = under_oclgrind(args + ["-o", out], env, os.path.join(BASE, "report.txt"))
        v = verdict(rc, err, report)
        if not v[0]:
            return v
        e = pt.rel_err(pt.load_npy(out), pt.load_npy(out_ref))
        return e <= TOL, "no reports, rel_err against the default device %.3g (tol %g)" % (e, TOL)
    tap.check("%s, --cache %s, --dtype %s, %s" % (name, mode, dtype, " ".join("%s=%s" % kv for kv in env.items())),
              check)


def greedy_case(tap, name, model, dtype, env):
    args = ["generate", "-m", model, "-p", "To open a file", "-n", 10, "-q", "--dtype", dtype]

    def check():
        rc, want, err = pt.run_pldr(args, env=env)
        if rc != 0:
            return False, "the default device: exit %d" % rc, pt.tail(err)
        rc, got, err, report = under_oclgrind(args, env, os.path.join(BASE, "report.txt"))
        v = verdict(rc, err, report)
        if not v[0]:
            return v
        return got == want, "no reports, text %r (default device: %r)" % (got.strip()[:60], want.strip()[:60])
    tap.check("%s, greedy generate, --dtype %s, %s" % (name, dtype, " ".join("%s=%s" % kv for kv in env.items())),
              check)


def batch_case(tap, name, model, mode, dtype, env):
    n_ids = 6  # the greedy tokens at the end of the dump (tests/unit/batch_check.c, dump_schedule)

    def check():
        outs = {}
        for dev in ("ref", "sim"):
            out = os.path.join(BASE, "batch-%s.bin" % dev)
            if os.path.exists(out):
                os.remove(out)
            args = [model, dtype, "0", "--dump", mode, out]
            if dev == "ref":
                p = subprocess.run([BATCH_CHECK] + args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   errors="replace", timeout=pt.TIMEOUT, env=dict(os.environ, **env))
                if p.returncode != 0:
                    return False, "the default device: exit %d" % p.returncode, pt.tail(p.stderr)
            else:
                rc, _, err, report = under_oclgrind(args, env, os.path.join(BASE, "report.txt"), BATCH_CHECK)
                v = verdict(rc, err, report)
                if not v[0]:
                    return v
            outs[dev] = np.fromfile(out, dtype=np.float32)
        ref, sim = outs["ref"], outs["sim"]
        if ref.size != sim.size or ref.size <= n_ids:
            return False, "dumps of %d and %d words" % (ref.size, sim.size)
        e = pt.rel_err(sim[:-n_ids], ref[:-n_ids])
        ids_ref, ids_sim = ref[-n_ids:].view(np.int32), sim[-n_ids:].view(np.int32)
        same = bool(np.array_equal(ids_ref, ids_sim))
        return e <= TOL and same, ("no reports, logits rel_err against the default device %.3g (tol %g), greedy "
                                   "tokens %s (default device: %s)" % (e, TOL, ids_sim.tolist(), ids_ref.tolist()))
    tap.check("%s, batched decode, --cache %s, --dtype %s, %s" % (name, mode, dtype,
                                                                 " ".join("%s=%s" % kv for kv in env.items())), check)


def race_case(tap, sim, options, want_race, desc):
    log = os.path.join(BASE, "race.txt")

    def check():
        if os.path.exists(log):
            os.remove(log)
        # the .sim names its kernel file relative to the working directory
        p = subprocess.run([OCLGRIND_KERNEL, "--data-races", "--log", log, "--build-options", options, sim],
                           cwd=os.path.join(HERE, "oclgrind"), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=pt.TIMEOUT)
        report = open(log, errors="replace").read() if os.path.exists(log) else ""
        raced = "data race" in report
        return (p.returncode == 0 and raced == want_race,
                "exit %d, %s" % (p.returncode, "a data race reported" if raced else "no race reported"),
                pt.tail(report + p.stderr, 30))
    tap.check(desc, check)


def main():
    tap = pt.Tap()
    if not OCLGRIND or not OCLGRIND_KERNEL:
        tap.skip("kernels under oclgrind", "oclgrind is not installed (Debian: apt-get install oclgrind)")
        return tap.done()
    if os.environ.get("ASAN_OPTIONS"):
        tap.skip("kernels under oclgrind", "the sanitizer build (the plain run covers it)")
        return tap.done()
    os.makedirs(BASE, exist_ok=True)

    race_case(tap, "local_copy.sim", "-DBARRIER=0", True, "a copy through local memory without its barrier: race reported")
    race_case(tap, "local_copy.sim", "-DBARRIER=1", False, "the same copy with its barrier: no report")
    race_case(tap, "last_group_sum.sim", "", True, "the last-work-group hand-off (fence and atomic counter): race reported")

    fa13 = mkmodel.make_checkpoint(os.path.join(BASE, "fa13"), dict(SHAPE, Fa=13, V=97), seed=11)
    fa12 = mkmodel.make_checkpoint(os.path.join(BASE, "fa12"), dict(SHAPE, Fa=12, V=4096), seed=12)
    shutil.copy(os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs", "tokenizer.model"), fa12)
    ids = [5, 17, 42, 9, 60, 3, 88, 12, 1, 33]
    logits_case(tap, "A_dff 13", fa13, ids, 3, "kvg", "f32", GPU)
    logits_case(tap, "A_dff 13", fa13, ids, 3, "kv", "f16", CPU)
    logits_case(tap, "A_dff 13", fa13, ids[:6], 2, "none", "f16", GPU_OWN)
    logits_case(tap, "A_dff 12", fa12, ids, 3, "kvg", "f32", CPU)
    # quantized weights: the CPU form's block loops with float scales (fscale=1, as
    # on CPUs) and the GPU form's with half scales
    logits_case(tap, "A_dff 13", fa13, ids, 3, "kvg", "q4_0", dict(CPU, PLDR_WG=CPU["PLDR_WG"] + ",fscale=1"))
    logits_case(tap, "A_dff 13", fa13, ids, 3, "kv", "q8_0", GPU)
    greedy_case(tap, "A_dff 12", fa12, "f32", GPU)
    greedy_case(tap, "A_dff 12", fa12, "f16", CPU)
    batch_case(tap, "A_dff 13", fa13, "kvg", "f32", GPU)
    batch_case(tap, "A_dff 13", fa13, "kv", "f16", GPU)
    batch_case(tap, "A_dff 13", fa13, "kvg", "f16", CPU)
    batch_case(tap, "A_dff 13", fa13, "kv", "q4_0", dict(CPU, PLDR_WG=CPU["PLDR_WG"] + ",fscale=1"))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
