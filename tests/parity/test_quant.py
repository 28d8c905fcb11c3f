#!/usr/bin/python3
"""--dtype bf16, q8_0 and q4_0 (the large matrices stored as bfloat16, or as
llama.cpp's Q8_0 / Q4_0 block layouts, quantized at load).

1. The loader's conversions against NumPy's (tests/pldr_ref.py,
   quantize_q8_0 / quantize_q4_0 / to_bf16), byte for byte, on random values
   with the cases that decide rounding: all-zero blocks, ties at .5, equal
   magnitudes of both signs, huge and tiny scales.
2. Parity: the engine's logits against the float64 reference run on exactly
   the weights the dtype stores (pldr_ref.with_weight_dtype): only rounding
   differs, so the float32 tolerance applies (relative error <= 1e-4), on
   random checkpoints whose rows are not whole blocks (d=102, F=157), stored
   as F32, F16 and BF16, in every cache mode (prefill then decode steps),
   a forward over all ids through both prefill GEMMs, and the decode
   products in the GPU layout (several lanes per row) as well as the CPU's.
3. The bundled model's greedy text with q8_0 is f32's.
TAP output."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import mkmodel  # noqa: E402
import pldr_ref as ref  # noqa: E402
import pldrtest as pt  # noqa: E402

TOL = 1e-4
DTYPES = ("bf16", "q8_0", "q4_0")


def quantizer_values(rng):
    """Blocks of 32 float32 values that exercise every rounding rule."""
    blocks = [rng.standard_normal((64, 32)) * 0.05,
              rng.standard_normal((8, 32)) * 1e4,
              rng.standard_normal((8, 32)) * 1e-6,
              np.zeros((2, 32))]
    tie = np.zeros(32)
    tie[0] = 127.0  # d = 1: every k + 0.5 below is a tie
    tie[1:16] = np.arange(15) - 7.5
    tie[16:] = (np.arange(16) - 8) * 0.5
    blocks.append(tie[None])
    sym = rng.standard_normal(32)
    sym[3], sym[9] = 2.5, -2.5  # equal magnitudes: the first wins in Q4_0
    blocks.append(sym[None])
    neg = -np.abs(rng.standard_normal(32))
    blocks.append(neg[None])
    tiny = rng.standard_normal(32)
    tiny *= 2.2e-38 / np.max(np.abs(tiny))  # Q4_0's larger candidate scales overflow float32
    blocks.append(tiny[None])
    ints = rng.integers(-8, 8, 32).astype(np.float64)  # exact multiples of the Q4_0 scale
    ints[0] = -8.0
    blocks.append(ints[None])
    x = np.concatenate(blocks).astype(np.float32)
    # bfloat16 ties: the 16 dropped bits exactly 0x8000
    u = x.view(np.uint32).copy()
    u[::7] = (u[::7] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    return u.view(np.float32).reshape(-1)


def check_quantizers(tap):
    rng = np.random.default_rng(11)
    x = quantizer_values(rng)
    n = x.size
    base = os.path.join(pt.TESTTMP, "quant")
    os.makedirs(base, exist_ok=True)
    src, dst = os.path.join(base, "in.f32"), os.path.join(base, "out.bin")
    x.tofile(src)
    helper = os.path.join(os.path.dirname(os.path.abspath(pt.PLDR_BIN)), "tests", "unit", "quantize_dump")
    r = subprocess.run([helper, src, dst], capture_output=True, text=True)
    if r.returncode != 0:
        tap.check("quantize_dump runs", lambda: (False, "exit %d" % r.returncode, r.stderr))
        return
    raw = np.fromfile(dst, dtype=np.uint8)
    nb = n // 32
    parts, off = {}, 0
    for name, size in (("q8", n), ("d8", 2 * nb), ("q4", n // 2), ("d4", 2 * nb), ("bf", 2 * n)):
        parts[name] = raw[off:off + size]
        off += size
    rows = x.reshape(1, -1)

    def q8():
        q, d = ref.quantize_q8_0(rows)
        bad_q = int(np.sum(parts["q8"].view(np.int8) != q.reshape(-1)))
        bad_d = int(np.sum(parts["d8"].view(np.uint16) != d.reshape(-1).view(np.uint16)))
        return bad_q == 0 and bad_d == 0, "%d quants and %d scales of %d differ" % (bad_q, bad_d, n)

    def q4():
        q, d = ref.quantize_q4_0(rows)
        q = q.reshape(-1, 32)
        packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8).reshape(-1)  # byte j: weights j and j + 16
        bad_q = int(np.sum(parts["q4"] != packed))
        bad_d = int(np.sum(parts["d4"].view(np.uint16) != d.reshape(-1).view(np.uint16)))
        return bad_q == 0 and bad_d == 0, "%d bytes and %d scales of %d differ" % (bad_q, bad_d, n)

    def bf16():
        want = ref.to_bf16(x).view(np.uint32) >> 16
        bad = int(np.sum(parts["bf"].view(np.uint16) != want.astype(np.uint16)))
        return bad == 0, "%d of %d differ" % (bad, n)

    def error_bounds():
        # the round trip's error in steps of the stored (half) scale: Q8_0
        # rounds to the nearest step of the unrounded scale, which the half
        # rounding (2^-11 relative) moves by up to 127 * 2^-11 steps. Q4_0's
        # least-squares scale may clamp the largest magnitude (by up to 0.9
        # of a step) to shrink every other error: its total squared error
        # must be below that of llama.cpp's choice (d = m / -8, q =
        # trunc(x / d + 8.5)) on the normally distributed blocks by 5% at
        # least, and no weight off by more than 1.5 steps. Catches a
        # quantizer that merely agrees with a wrong reference.
        q, d = ref.quantize_q8_0(rows)
        xb = x.reshape(-1, 32).astype(np.float64)
        d8 = d.reshape(-1, 1).astype(np.float64)
        e8 = np.abs(q.reshape(-1, 32) * d8 - xb) / np.maximum(np.abs(d8), 1e-30)
        q, d = ref.quantize_q4_0(rows)
        d4 = d.reshape(-1, 1).astype(np.float64)
        r4 = (q.reshape(-1, 32).astype(np.float64) - 8) * d4 - xb
        e4 = np.abs(r4) / np.maximum(np.abs(d4), 1e-30)
        xf = x.reshape(-1, 32).astype(np.float32)
        m = np.take_along_axis(xf, np.argmax(np.abs(xf), axis=-1)[:, None], axis=-1)
        dl = (m / np.float32(-8)).astype(np.float32)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            il = np.where(dl != 0, np.float32(1) / np.where(dl != 0, dl, np.float32(1)), np.float32(0)).astype(np.float32)
            ql = np.clip(np.trunc((xf * il).astype(np.float32) + np.float32(8.5)), 0, 15)
        rl = (ql - 8) * dl.astype(np.float16).astype(np.float64) - xb
        normal = slice(0, 64)  # the blocks of normally distributed values, as weights are
        ratio = float(np.sum(r4[normal] ** 2) / np.sum(rl[normal] ** 2))
        live = np.abs(d8[:, 0]) > 0
        m8, m4 = float(np.max(e8[live])), float(np.max(e4[live]))
        b8 = 0.5 + 127.0 / 2048
        return m8 <= b8 and m4 <= 1.5 and ratio <= 0.95, (
            "max error %.3f (Q8_0) and %.3f (Q4_0) steps; Q4_0 squared error %.3f of llama.cpp's" % (m8, m4, ratio))

    tap.check("Q8_0 blocks of the loader equal NumPy's (%d values)" % n, q8)
    tap.check("Q4_0 blocks of the loader equal NumPy's", q4)
    tap.check("BF16 rounding of the loader equals NumPy's", bf16)
    tap.check("Q8_0 round-trip error within half a step (and the scale's rounding); Q4_0 within 1.5 steps, 5% below llama.cpp's squared error", error_bounds)


def logits_check(path, ids, prefill, mode, dtype, want, env=None):
    out = os.path.join(pt.TESTTMP, "quant", "out.npy")
    args = ["logits", "-m", path, "--ids", ",".join(map(str, ids)), "--dtype", dtype, "-o", out]
    if prefill is not None:
        args += ["--prefill", prefill, "--cache", mode]
    rc, _, err = pt.run_pldr(args, env=env)
    if rc != 0:
        return False, "exit %d" % rc, pt.tail(err)
    e = pt.rel_err(pt.load_npy(out), want)
    return e <= TOL, "rel_err %.3g (tol %g)" % (e, TOL)


def main():
    tap = pt.Tap()
    check_quantizers(tap)
    base = os.path.join(pt.TESTTMP, "quant")
    cfg = {"L": 2, "d": 102, "H": 3, "dk": 34, "F": 157, "R": 1, "D": 1, "Fa": 30, "V": 301, "Tmax": 64}
    ids = [5, 17, 42, 100, 7, 9, 300, 12, 1, 2]
    for store in ("F32", "F16", "BF16"):
        path = mkmodel.make_checkpoint(os.path.join(base, "odd-" + store), cfg, seed=5, dtype=store)
        ckpt = ref.load_checkpoint(path)
        # every mode for the quantized types; bf16 (a plain rounding, as f16)
        # and the F16 / BF16 checkpoints in one mode
        for dtype in DTYPES if store == "F32" else ("q4_0",):
            modes = ("none", "kv", "kvg") if store == "F32" and dtype != "bf16" else ("kvg",)
            model = ref.Model(ref.with_weight_dtype(ckpt, dtype))
            for mode in modes:
                want = ref.logits_for_mode(model, ids, 6, mode)
                tap.check("%s checkpoint (d=102, F=157), --dtype %s, --cache %s, prefill 6 then decode"
                          % (store, dtype, mode),
                          lambda mode=mode, dtype=dtype, want=want: logits_check(path, ids, 6, mode, dtype, want))
            if store != "F32":
                continue
            want = ref.logits_for_mode(model, ids, len(ids), "none")
            for gemm in ("own", "clblast") if dtype != "bf16" else ("clblast",):
                tap.check("one forward over all ids, --dtype %s, PLDR_GEMM=%s" % (dtype, gemm),
                          lambda dtype=dtype, want=want, gemm=gemm:
                          logits_check(path, ids, None, None, dtype, want, env={"PLDR_GEMM": gemm}))
            if dtype == "bf16":
                continue
            # the decode products in a GPU layout: 8 lanes per row, folded
            # LayerNorms (kernels/gemv.cl, ln_fold_rows), gemv_wide
            want = ref.logits_for_mode(model, ids, 6, "kvg")
            tap.check("--dtype %s, --cache kvg, GPU layout of the decode products (PLDR_WG=gemv=64,rows=8)" % dtype,
                      lambda dtype=dtype, want=want:
                      logits_check(path, ids, 6, "kvg", dtype, want, env={"PLDR_WG": "gemv=64,rows=8,attpre=1"}))

    # batched decode steps (pldr_eval_batch: kernels/batch.cl's batch_gemv on
    # GPUs, the engine's GEMM on CPUs) against each sequence alone, same dtype
    helper = os.path.join(os.path.dirname(os.path.abspath(pt.PLDR_BIN)), "tests", "unit", "batch_check")
    odd = os.path.join(base, "odd-F32")
    for dtype, env in (("q4_0", {}), ("q8_0", {"PLDR_WG": "gpu=1", "PLDR_GEMM": "clblast"})):
        def batched(dtype=dtype, env=env):
            r = subprocess.run([helper, odd, dtype, "1e-4"], capture_output=True, text=True,
                               env=dict(os.environ, **env), timeout=pt.TIMEOUT)
            bad = [l for l in r.stdout.splitlines() if l.startswith("not ok")]
            n = sum(1 for l in r.stdout.splitlines() if l.startswith("ok"))
            return r.returncode == 0 and not bad and n > 0, "%d checks, %d failed" % (n + len(bad), len(bad)), \
                "\n".join(bad[:5]) + r.stderr[-2000:]
        tap.check("batched decode, --dtype %s%s, every sequence's logits as alone (1e-4)"
                  % (dtype, ", GPU kernels" if env else ""), batched)

    def greedy_q8():
        # f32's text (test_cli, test_dtype)
        want = "To open a file in Python, use the :func:`open` function, and the :func:`open` function."
        rc, out, err = pt.run_pldr(["generate", "--dtype", "q8_0", "-q", "-n", "40", "-p",
                                    "To open a file in Python, use"])
        return rc == 0 and out.strip() == want, "exit %d: %s" % (rc, out.strip()[:100]), pt.tail(err)
    tap.check("greedy text of the bundled model with --dtype q8_0 is f32's", greedy_q8)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
