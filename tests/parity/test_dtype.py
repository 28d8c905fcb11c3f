#!/usr/bin/python3
"""--dtype f16 (weights stored as IEEE half on the device, float32 arithmetic)
against the float64 reference, on the trained bundled model and on a random
checkpoint whose sizes are not multiples of 4 (padded rows), in every cache
mode. Tolerance: relative error <= 5e-3 (half rounds each weight to 11
significant bits, about 5e-4 relative; the observed logits error is ~1e-3).
TAP output."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402

import mkmodel  # noqa: E402
import pldr_ref as ref  # noqa: E402
import pldrtest as pt  # noqa: E402

TOL_F16 = 5e-3
TOL_F32 = 1e-4


def main():
    tap = pt.Tap()
    base = os.path.join(pt.TESTTMP, "dtype")
    os.makedirs(base, exist_ok=True)
    odd = mkmodel.make_checkpoint(os.path.join(base, "odd"), {"L": 2, "d": 102, "H": 3, "dk": 34, "F": 157, "R": 2,
                                                              "D": 1, "Fa": 30, "V": 301, "Tmax": 64}, seed=3)
    models = [("pldr-tiny-pydocs", os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs"),
               [5, 17, 42, 100, 7, 9, 300, 12, 1000, 33, 2048, 77]),
              ("odd sizes (d=102, dk=34, F=157)", odd, [5, 17, 42, 100, 7, 9, 300, 12, 1, 2, 3])]
    for name, path, ids in models:
        ckpt = ref.load_checkpoint(path)
        for mode in ("none", "kv", "kvg"):
            want = ref.logits_for_mode(ckpt, ids, 6, mode)
            for dtype, tol in (("f32", TOL_F32), ("f16", TOL_F16)):
                out = os.path.join(base, "out.npy")

                def check(dtype=dtype, tol=tol, mode=mode, want=want):
                    rc, _, err = pt.run_pldr(["logits", "-m", path, "--ids", ",".join(map(str, ids)), "--prefill", 6,
                                              "--cache", mode, "--dtype", dtype, "-o", out])
                    if rc != 0:
                        return False, "exit %d" % rc, pt.tail(err)
                    e = pt.rel_err(pt.load_npy(out), want)
                    return e <= tol, "rel_err %.3g (tol %g)" % (e, tol)
                tap.check("%s, --cache %s, --dtype %s" % (name, mode, dtype), check)
        # the prefill products with half weights: read as half by the
        # engine's GEMM (kernels/gemm.cl, the CPU default), or converted to a
        # float32 scratch for CLBlast (the GPU default)
        want = ref.logits_for_mode(ckpt, ids, len(ids), "none")
        for gemm in ("own", "clblast"):
            out = os.path.join(base, "out.npy")

            def check_gemm(gemm=gemm, want=want):
                rc, _, err = pt.run_pldr(["logits", "-m", path, "--ids", ",".join(map(str, ids)), "--dtype", "f16",
                                          "-o", out], env={"PLDR_GEMM": gemm})
                if rc != 0:
                    return False, "exit %d" % rc, pt.tail(err)
                e = pt.rel_err(pt.load_npy(out), want)
                return e <= TOL_F16, "rel_err %.3g (tol %g)" % (e, TOL_F16)
            tap.check("%s, one forward over all ids, --dtype f16, PLDR_GEMM=%s" % (name, gemm), check_gemm)

    def greedy_f16():
        rc, out, err = pt.run_pldr(["generate", "--dtype", "f16", "-q", "-n", "40", "-p", "To open a file in Python, use"])
        want = "To open a file in Python, use the :func:`open` function, and the :func:`open` function."
        return rc == 0 and out.strip() == want, "exit %d: %s" % (rc, out.strip()[:100]), pt.tail(err)
    tap.check("greedy text of the bundled model with --dtype f16", greedy_f16)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
