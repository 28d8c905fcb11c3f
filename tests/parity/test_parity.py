#!/usr/bin/python3
"""Parity of `pldr logits` with the float64 NumPy reference (pldr_ref.py).

For several random checkpoints (mkmodel.py; seeded, so every run sees the
same weights) and the bundled trained model, runs

    pldr logits -m DIR --ids IDS --prefill N --cache none|kv|kvg -o out.npy

and requires max|engine - ref| / max|ref| <= 1e-4 over all rows, kv and kvg
to agree within 1e-5, and the run without --prefill to match one forward.

Before trusting the tolerance, the test checks the reference itself: a naive
loop implementation agrees with it, its step-by-step KV/KVG session agrees
with the logits_for_mode shortcut, every random checkpoint is well
conditioned (the float32 reference is within 1e-5 of the float64 one), and
the modes differ enough (none vs kvg) for the test to tell them apart.
"""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import mkmodel  # noqa: E402
import pldr_ref as ref  # noqa: E402
import pldrtest as pt  # noqa: E402

TOL = 1e-4        # engine (float32) vs float64 reference
KV_TOL = 1e-5     # engine kv vs engine kvg
COND_TOL = 1e-5   # float32 reference vs float64 reference
N_IDS, PREFILL = 12, 8

# name, description, dims, mkmodel options
CONFIGS = [
    ("a-f32-dk64", "F32 single file, dk=64, reference_rope=true",
     dict(L=2, d=128, H=2, dk=64, F=192, R=2, D=2, Fa=48, V=512, Tmax=64),
     dict(reference_rope=True, dtype="F32", shards=1, g_type="learned")),
    ("b-f32-dk32-D1-halfrope", "F32, dk=32, H=3, num_denseA=1, R=3, reference_rope=false",
     dict(L=2, d=96, H=3, dk=32, F=160, R=3, D=1, Fa=40, V=384, Tmax=64),
     dict(reference_rope=False, dtype="F32", shards=1, g_type="learned")),
    ("c-f16-3shards", "F16 in 3 shards, L=3, H=4, dk=32",
     dict(L=3, d=128, H=4, dk=32, F=176, R=2, D=2, Fa=64, V=512, Tmax=64),
     dict(reference_rope=True, dtype="F16", shards=3, g_type="learned")),
    ("d-bf16-dk48", "BF16 in 2 shards, dk=48",
     dict(L=2, d=96, H=2, dk=48, F=160, R=2, D=2, Fa=56, V=448, Tmax=64),
     dict(reference_rope=True, dtype="BF16", shards=2, g_type="learned")),
    ("e-identity-G", "custom_G_type identity (SDPA), past_G_values, reference_rope=false",
     dict(L=2, d=128, H=4, dk=32, F=192, R=2, D=2, Fa=48, V=512, Tmax=64),
     dict(reference_rope=False, dtype="F32", shards=1, g_type="identity")),
    ("f-external-G", "custom_G_type external (G = I + noise), F16",
     dict(L=2, d=128, H=2, dk=64, F=192, R=2, D=2, Fa=48, V=512, Tmax=64),
     dict(reference_rope=True, dtype="F16", shards=1, g_type="external")),
    ("g-f32-odd-d", "F32, d=90 (not a multiple of 4), dk=30, F=150",
     dict(L=2, d=90, H=3, dk=30, F=150, R=2, D=2, Fa=40, V=320, Tmax=64),
     dict(reference_rope=True, dtype="F32", shards=1, g_type="learned")),
]

# The decode GEMVs on a GPU give each row several lanes and fold the layer
# norms into the products (kernels/gemv.cl); a CPU gives a row one work-item.
# PLDR_WG forces other work-group shapes on any device: (config, PLDR_WG, what).
LAYOUTS = [
    ("a-f32-dk64", "gemv=64,rows=8,attpre=1", "8 lanes per GEMV row, decode attention preloading G_LM and keys"),
    ("b-f32-dk32-D1-halfrope", "rows=2,gemv=128", "64 lanes per GEMV row"),
    ("c-f16-3shards", "gemv=64,rows=2,attpre=1", "32 lanes per GEMV row, decode attention preloading"),
    ("d-bf16-dk48", "att=8,gpu=1", "attention split into blocks of 8 keys"),
    ("c-f16-3shards", "att=128,gpu=1", "attention tiles of 128 keys, P.V in 16 key groups of float4 columns"),
    ("g-f32-odd-d", "gemv=64,rows=4", "16 lanes per GEMV row"),
    # the work-group forms of the prefill kernels (GPUs; CPUs run the *_cpu
    # ones, gpu=1 forces the others) and the metric learner's shapes
    # (kernels/plga.cl): row groups and input splits of the gluw1/gluw2 phase,
    # slices of the gluw3 phase, some of them empty
    ("a-f32-dk64", "gpu=1,ml=512,mlrows=4", "learner: 4 rows, 10 input splits of 8 (2 empty), 8 gluw3 slices"),
    ("b-f32-dk32-D1-halfrope", "gpu=1,ml=256,mlrows=4,mlrg=2", "learner: 2 row groups, 3 input splits, 8 slices (3 empty), D=1"),
    ("c-f16-3shards", "gpu=1,ml=512,mlrows=4", "learner: 8 input splits of 4, 16 gluw3 slices of 4 units"),
    ("d-bf16-dk48", "gpu=1,ml=128,mlrows=8,mlrg=2,mlkc=8", "learner: 2 row groups of 4 rows, 2 slices of 28 units"),
    ("g-f32-odd-d", "gpu=1,ml=256,mlrows=8,mlrg=4", "learner: dk=30 (scalar reads), 4 row groups, 8 slices (3 empty)"),
]

# The prefill products go through CLBlast, or on CPU devices through the
# engine's own kernel (kernels/gemm.cl); PLDR_GEMM forces either on any device:
# both run here, on shapes with K not a multiple of 16 (d=90, F=150, 176).
GEMMS = [
    ("a-f32-dk64", "clblast"), ("a-f32-dk64", "own"),
    ("c-f16-3shards", "own"), ("g-f32-odd-d", "own"), ("g-f32-odd-d", "clblast"),
]

# "To open a file in Python, use the :func:`open` function," with the bundled
# model's tokenizer: the prompt of the README's example plus 8 more tokens.
TRAINED_IDS = [626, 730, 266, 343, 276, 312, 263, 358, 262, 265, 309, 267, 846, 270, 327, 263]


def row_report(got, want, n_prefill):
    scale = np.max(np.abs(want))
    lines = []
    for t in range(want.shape[0]):
        e = np.max(np.abs(got[t].astype(np.float64) - want[t])) / scale
        kind = "prefill" if t < n_prefill else "decode"
        lines.append("row %2d (%s): rel err %.3g, argmax engine %d ref %d"
                     % (t, kind, e, int(np.argmax(got[t])), int(np.argmax(want[t]))))
    return "\n".join(lines)


class Case:
    """One checkpoint: its reference rows and the engine's outputs."""

    def __init__(self, tap, name, desc, model_dir, ids, prefill):
        self.tap, self.name, self.desc = tap, name, desc
        self.dir, self.ids, self.prefill = model_dir, ids, prefill
        self.out = {}
        self.work = os.path.join(pt.TESTTMP, "parity", "out-" + name)
        os.makedirs(self.work, exist_ok=True)
        self.m64 = ref.Model(ref.load_checkpoint(model_dir))
        self.want = {}

    def reference(self, mode, prefill):
        key = (mode, prefill)
        if key not in self.want:
            self.want[key] = ref.logits_for_mode(self.m64, self.ids, prefill, mode)
        return self.want[key]

    def engine(self, mode, prefill, env=None):
        """Runs pldr; returns (logits, "N.N s") or (None, (summary, details))."""
        out = os.path.join(self.work, "%s-%s%s.npy" % (mode, prefill or "all", "-layout" if env else ""))
        if os.path.exists(out):
            os.remove(out)
        args = ["logits", "-m", self.dir, "--ids", ",".join(map(str, self.ids))]
        if prefill is not None:
            args += ["--prefill", prefill]
        args += ["--cache", mode, "-o", out]
        t0 = time.time()
        rc, so, se = pt.run_pldr(args, env=env)
        dt = time.time() - t0
        cmd = " ".join("%s=%s" % kv for kv in (env or {}).items()) + " pldr " + " ".join(map(str, args))
        if rc != 0:
            last = (se.strip().split("\n") or [""])[-1]
            return None, ("engine exit code %d after %.1f s (%s)" % (rc, dt, last[:200]),
                          "%s\nstderr:\n%s" % (cmd, pt.tail(se)))
        if not os.path.exists(out):
            return None, ("engine exit 0 but no output file", "%s\nstderr:\n%s" % (cmd, pt.tail(se)))
        try:
            got = pt.load_npy(out)
        except Exception as e:
            return None, ("unreadable output .npy: %s" % e, cmd)
        return got, "%.1f s" % dt

    def check_mode(self, mode, prefill, label=None, env=None, tol=TOL):
        want = self.reference(mode, prefill)
        n_pre = len(self.ids) if prefill is None else prefill
        what = "%s: %s" % (self.name, label or "--cache %s --prefill %s" % (mode, prefill))

        def fn():
            got, msg = self.engine(mode, prefill, env)
            if got is None:
                return False, msg[0], msg[1]
            if got.shape != want.shape:
                return False, "shape %s, expected %s" % (list(got.shape), list(want.shape))
            if got.dtype != np.float32:
                return False, "dtype %s, expected float32" % got.dtype
            if not np.all(np.isfinite(got)):
                bad = sorted(set(np.nonzero(~np.isfinite(got))[0].tolist()))
                return False, "non-finite values in rows %s" % bad
            if env is None:
                self.out[(mode, prefill)] = got
            e = pt.rel_err(got, want)
            return e <= tol, "rel_err %.3g (tol %g), %s" % (e, tol, msg), row_report(got, want, n_pre)

        return self.tap.check(what, fn)

    def check_kv_kvg(self, prefill):
        a, b = self.out.get(("kv", prefill)), self.out.get(("kvg", prefill))
        what = "%s: kv and kvg outputs agree" % self.name
        if a is None or b is None:
            return self.tap.ok(False, what + ": missing output (see the kv/kvg lines above)")
        e = pt.rel_err(a, b)
        return self.tap.ok(e <= KV_TOL, "%s: rel_err %.3g (tol %g)" % (what, e, KV_TOL),
                           row_report(a, b.astype(np.float64), prefill or len(self.ids)))


def reference_self_checks(tap, work):
    """The reference against a naive loop implementation on tiny models."""
    for g, rr in (("learned", True), ("learned", False), ("identity", True), ("external", False)):
        def fn(g=g, rr=rr):
            d = mkmodel.make_checkpoint(os.path.join(work, "naive-%s-%s" % (g, rr)),
                                        dict(L=2, d=8, H=2, dk=4, F=12, R=2, D=2, Fa=6, V=16, Tmax=16),
                                        seed=5, reference_rope=rr, dtype="BF16", g_type=g)
            ck = ref.load_checkpoint(d)
            ids = [1, 5, 9, 2, 15, 7]
            e = pt.rel_err(ref.Model(ck).forward(ids)[0], np.array(ref.naive_forward(ck, ids)))
            return e <= 1e-12, "rel_err %.3g" % e
        tap.check("reference: vectorised == naive loops (%s G, reference_rope=%s)" % (g, rr), fn)


def conditioning_checks(tap, case, learned):
    m32 = ref.Model(case.m64.ckpt, np.float32)

    def cond():
        errs = {}
        for mode in ("none", "kv", "kvg"):
            errs[mode] = pt.rel_err(ref.logits_for_mode(m32, case.ids, case.prefill, mode),
                                    case.reference(mode, case.prefill))
        worst = max(errs.values())
        return worst <= COND_TOL, "float32 vs float64 reference rel_err %s (tol %g)" % (
            ", ".join("%s %.2g" % kv for kv in errs.items()), COND_TOL)
    tap.check("%s: well conditioned" % case.name, cond)

    def session():
        errs = []
        for mode in ("kv", "kvg"):
            s = ref.Session(case.m64, mode)
            rows = [s.prefill(case.ids[:case.prefill])]
            rows += [s.step(t)[None] for t in case.ids[case.prefill:]]
            errs.append(pt.rel_err(np.vstack(rows), case.reference(mode, case.prefill)))
        return max(errs) <= 1e-12, "step-by-step session vs shortcut rel_err %.3g" % max(errs)
    tap.check("%s: reference kv/kvg decoding is consistent" % case.name, session)

    if learned:
        def discr():
            e = pt.rel_err(case.reference("none", case.prefill), case.reference("kvg", case.prefill))
            return e >= 10 * TOL, "reference none vs kvg rows differ by %.3g (need >= %g)" % (e, 10 * TOL)
        tap.check("%s: modes distinguishable" % case.name, discr)


def main():
    tap = pt.Tap()
    work = os.path.join(pt.TESTTMP, "parity")
    os.makedirs(work, exist_ok=True)
    if not pt.have_pldr():
        tap.diag("pldr binary not found at %s: every engine check below fails" % pt.PLDR_BIN)
    t_start = time.time()

    reference_self_checks(tap, work)

    for i, (name, desc, dims, opts) in enumerate(CONFIGS):
        tap.diag("config %s: %s, %s" % (name, desc, dims))
        model_dir = os.path.join(work, name)
        try:
            if os.path.isdir(model_dir):
                shutil.rmtree(model_dir)
            mkmodel.make_checkpoint(model_dir, dims, seed=1000 + i, **opts)
            ids = np.random.default_rng(2000 + i).integers(0, dims["V"], N_IDS).tolist()
            case = Case(tap, name, desc, model_dir, ids, PREFILL)
        except Exception as e:
            tap.ok(False, "%s: create checkpoint and reference" % name, repr(e))
            continue
        tap.diag("ids %s" % ",".join(map(str, ids)))
        conditioning_checks(tap, case, opts["g_type"] == "learned")
        for mode in ("none", "kv", "kvg"):
            case.check_mode(mode, PREFILL)
        case.check_kv_kvg(PREFILL)
        case.check_mode("kvg", None, "no --prefill (one forward over all ids), --cache kvg")
        if i == 0:
            case.check_mode("kv", 1, "--cache kv --prefill 1 (G from a single token)")
            case.check_mode("none", 1, "--cache none --prefill 1")
        for lname, wg, what in LAYOUTS:
            if lname == name:
                for mode in ("kv", "kvg"):
                    case.check_mode(mode, PREFILL, "--cache %s with PLDR_WG=%s (%s)" % (mode, wg, what),
                                    env={"PLDR_WG": wg})
        for lname, gemm in GEMMS:
            if lname == name:
                case.check_mode("none", 1, "--cache none --prefill 1 with PLDR_GEMM=%s" % gemm,
                                env={"PLDR_GEMM": gemm})

    # The bundled trained model.
    trained = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs")
    tap.diag("trained model %s" % trained)
    try:
        case = Case(tap, "pldr-tiny-pydocs", "trained", trained, TRAINED_IDS, PREFILL)
    except Exception as e:
        tap.ok(False, "pldr-tiny-pydocs: load for the reference", repr(e))
    else:
        conditioning_checks(tap, case, False)
        tap.diag("reference none vs kvg rows differ by %.3g on the trained model" % pt.rel_err(
            case.reference("none", PREFILL), case.reference("kvg", PREFILL)))
        for mode in ("none", "kv", "kvg"):
            case.check_mode(mode, PREFILL)
        case.check_kv_kvg(PREFILL)

    # A prompt long enough for several blocks of the prefill products' rows
    # (kernels/gemm.cl: 64 rows per work-group), both GEMM paths.
    long_ids = np.random.default_rng(3000).integers(0, 4096, 150).tolist()
    try:
        case = Case(tap, "pldr-tiny-pydocs-150", "trained, 150 tokens", trained, long_ids, 140)
    except Exception as e:
        tap.ok(False, "pldr-tiny-pydocs-150: load for the reference", repr(e))
    else:
        for gemm in ("own", "clblast"):
            case.check_mode("kvg", 140, "--cache kvg --prefill 140 with PLDR_GEMM=%s" % gemm,
                            env={"PLDR_GEMM": gemm})

    tap.diag("test_parity.py took %.1f s" % (time.time() - t_start))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
