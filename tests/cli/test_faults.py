#!/usr/bin/python3
"""Faults at run time, as a user meets them through the command line: a PLGA
power that overflows float32, a context that does not fit in device memory,
a damaged weight file. Each must give a one-line message and its documented
exit code, never a crash or text made of non-finite logits. TAP output."""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import mkmodel  # noqa: E402
import pldrtest as pt  # noqa: E402

TOKENIZER = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs", "tokenizer.model")
SMALL = {"L": 2, "d": 128, "H": 2, "dk": 64, "F": 192, "R": 2, "D": 2, "Fa": 48, "V": 4096, "Tmax": 64}


def overflowing_checkpoint(path):
    """A checkpoint whose PLGA power A_LM^pw overflows in layer 0: W = 0 and
    b = 0 put A_LM at its 1e-9 floor, and pw = -8 makes that 1e72."""
    mkmodel.make_checkpoint(path, SMALL, seed=5)
    cfg = dict(mkmodel.PRESETS["tiny"])
    cfg.update(SMALL)
    rng = np.random.default_rng(5)
    tensors = []
    for name, a in mkmodel.tensor_list(cfg, rng, "learned"):
        if name.startswith("decoder.dec_layers.0.mha1.plgatt_layer."):
            field = name.rsplit(".", 1)[1]
            if field in ("Wlst", "blst"):
                a = np.zeros_like(a)
            elif field == "pwlst":
                a = np.full_like(a, -8.0)
        tensors.append((name, a))
    mkmodel.write_safetensors(os.path.join(path, "model.safetensors"), tensors, "F32")
    shutil.copy(TOKENIZER, os.path.join(path, "tokenizer.model"))
    return path


def main():
    tap = pt.Tap()
    base = os.path.join(pt.TESTTMP, "faults")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)

    bad = overflowing_checkpoint(os.path.join(base, "overflow"))
    for args, what in ((["logits", "-m", bad, "--ids", "5,6,7", "-o", os.path.join(base, "x.npy")], "logits"),
                       (["generate", "-m", bad, "-p", "To open a file", "-n", "4"], "generate")):
        def overflow_check(args=args):
            rc, out, err = pt.run_pldr(args)
            msg = "non-finite G_LM in layer 0"
            return (rc == 1 and msg in err and "Traceback" not in err,
                    "exit %d" % rc, "stdout:\n%s\nstderr:\n%s" % (pt.tail(out), pt.tail(err)))
        tap.check("PLGA power overflow is reported with its layer (%s)" % what, overflow_check)

    # A context whose caches cannot fit: max_position_embeddings of 2^20
    # tokens at d = 512 needs 8 GiB of K and V per layer pair.
    huge = os.path.join(base, "huge-context")
    mkmodel.make_checkpoint(huge, {"L": 2, "d": 512, "H": 8, "dk": 64, "F": 64, "R": 1, "D": 1, "Fa": 16,
                                   "V": 4096, "Tmax": 1 << 20}, seed=2)
    shutil.copy(TOKENIZER, os.path.join(huge, "tokenizer.model"))

    def too_big():
        rc, out, err = pt.run_pldr(["generate", "-m", huge, "-p", "To open a file", "-n", "2"])
        return (rc == 4 and "try a smaller --ctx" in err and "MiB" in err, "exit %d: %s" % (rc, err.strip()[:160]),
                pt.tail(err))
    tap.check("a context beyond device memory is refused before allocating", too_big)

    def smaller_ctx():
        rc, out, err = pt.run_pldr(["generate", "-m", huge, "-p", "To open a file", "-n", "2", "--ctx", "32", "-q"])
        return rc == 0 and out.startswith("To open a file"), "exit %d" % rc, pt.tail(err)
    tap.check("the same model runs with --ctx 32", smaller_ctx)

    # A weight file cut short: refused when loading, naming the file.
    cut = os.path.join(base, "truncated")
    mkmodel.make_checkpoint(cut, SMALL, seed=3)
    st = os.path.join(cut, "model.safetensors")
    size = os.path.getsize(st)
    with open(st, "r+b") as f:
        f.truncate(size - 100)

    def truncated():
        rc, out, err = pt.run_pldr(["logits", "-m", cut, "--ids", "1,2", "-o", os.path.join(base, "y.npy")])
        return (rc == 3 and "model.safetensors" in err and err.count("\n") == 1, "exit %d: %s" % (rc, err.strip()),
                pt.tail(err))
    tap.check("a truncated weight file is refused with one line naming it", truncated)

    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
