#!/usr/bin/python3
"""Weights read in place from the checkpoint's mapping (CL_MEM_USE_HOST_PTR)
on a device that shares the host's memory.

For the bundled model and random checkpoints whose data regions start at
chosen offsets (mkmodel.py data_align/data_skew), so that some tensors are
aligned and others not, `pldr logits` must give bit-identical logits with
zero copy on (the default) and off (PLDR_ZERO_COPY=0), and `pldr bench -o
json` must report exactly the bytes the loader's rules allow: a tensor stored
as F32 that fills a device buffer alone in file layout, at an address that is
a multiple of 16 bytes, or, for a matrix CLBlast's GEMMs read, of the device's
base-address alignment capped at 64 bytes. On a device without unified
memory every count is 0. TAP output.
"""

import json
import os
import re
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import mkmodel  # noqa: E402
import pldrtest as pt  # noqa: E402

BUNDLED = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs")
# d_ff = 149: the FFN biases (596 bytes) move every later tensor by 4 bytes
# modulo 16, and gluw3's rows need padding (no in-place buffer for it)
DIMS = {"L": 2, "d": 128, "H": 2, "dk": 64, "F": 149, "R": 2, "D": 2, "Fa": 64, "V": 512, "Tmax": 64}
IDS, PREFILL = "5,17,42,99,7,300,12,64,1,2,3,200", 8


def buffer_role(name, cfg):
    """'vector' or 'gemm' for a tensor that fills a device buffer alone in
    file layout (a GEMM matrix needs the stricter alignment), else None."""
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    if name in ("decoder.embedding.weight", "decoder.layernorm1.weight", "decoder.layernorm1.bias",
                "final_layer.bias"):
        return "vector"
    if name == "final_layer.weight":
        return "gemm" if d % 4 == 0 else None
    m = re.match(r"decoder\.dec_layers\.\d+\.(.+)$", name)
    if not m:
        return None
    leaf = m.group(1)
    if leaf == "mha1.dense.weight":
        return "gemm" if d % 4 == 0 else None
    if leaf == "ffn.gluw3.weight":
        return "gemm" if f % 4 == 0 else None
    if leaf in ("mha1.dense.bias", "ffn.gluw3.bias", "layernorm1.weight", "layernorm1.bias", "layernorm2.weight",
                "layernorm2.bias", "mha1.layernorm1.weight", "mha1.layernorm1.bias"):
        return "vector"
    return None


def expected_bytes(model_dir, base_align):
    """(bytes the rules allow in place, bytes of every tensor with a buffer of its own)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    gemm_align = max(16, min(base_align, 64))
    allowed = candidates = 0
    for fn in sorted(os.listdir(model_dir)):
        if not fn.endswith(".safetensors"):
            continue
        with open(os.path.join(model_dir, fn), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        for name, e in header.items():
            role = None if name == "__metadata__" else buffer_role(name, cfg)
            if role is None:
                continue
            begin, end = e["data_offsets"]
            candidates += end - begin
            # the mapping starts on a page, so the address is the file offset modulo the alignment
            if e["dtype"] == "F32" and (8 + n + begin) % (16 if role == "vector" else gemm_align) == 0:
                allowed += end - begin
    return allowed, candidates


def run_logits(model_dir, out, zero_copy, extra=()):
    env = None if zero_copy else {"PLDR_ZERO_COPY": "0"}
    rc, _, err = pt.run_pldr(["logits", "-m", model_dir, "--ids", IDS, "--prefill", PREFILL, "-o", out] + list(extra),
                             env=env)
    return rc, err


def bench_device(model_dir, zero_copy, extra=()):
    env = None if zero_copy else {"PLDR_ZERO_COPY": "0"}
    rc, out, err = pt.run_pldr(["bench", "-m", model_dir, "-p", "4", "-n", "0", "-r", "1", "-o", "json"] + list(extra),
                               env=env)
    if rc != 0:
        raise RuntimeError("pldr bench exit %d: %s" % (rc, pt.tail(err)))
    return json.loads(out)["devices"][0]


def main():
    tap = pt.Tap()
    base = os.path.join(pt.TESTTMP, "zero-copy")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)

    models = [
        ("the bundled model (2 shards)", BUNDLED),
        ("F32, data at 0 mod 256: some tensors aligned, some not",
         mkmodel.make_checkpoint(os.path.join(base, "mixed"), DIMS, seed=11, data_align=256)),
        ("F32, data at 2 mod 256: no tensor aligned",
         mkmodel.make_checkpoint(os.path.join(base, "skewed"), DIMS, seed=12, data_align=256, data_skew=2)),
        ("F16 storage (converted, never in place)",
         mkmodel.make_checkpoint(os.path.join(base, "f16"), DIMS, seed=13, dtype="F16", data_align=256)),
    ]
    for i, (what, model_dir) in enumerate(models):
        def identical(i=i, model_dir=model_dir):
            on, off = os.path.join(base, "on%d.npy" % i), os.path.join(base, "off%d.npy" % i)
            rc_on, err_on = run_logits(model_dir, on, True)
            rc_off, err_off = run_logits(model_dir, off, False)
            if rc_on or rc_off:
                return False, "exit %d / %d" % (rc_on, rc_off), err_on + err_off
            a, b = pt.load_npy(on), pt.load_npy(off)
            same = a.shape == b.shape and a.tobytes() == b.tobytes()
            return same, "%s logits, %s" % ("x".join(map(str, a.shape)), "bit-identical" if same else "differ"), \
                "max |on - off| = %g" % float(np.max(np.abs(a.astype(np.float64) - b))) if a.shape == b.shape else ""
        tap.check("zero copy on and off give the same logits: " + what, identical)

        def counted(model_dir=model_dir):
            dev = bench_device(model_dir, True)
            allowed, candidates = expected_bytes(model_dir, dev["mem_base_align_bytes"])
            want = allowed if dev["unified_memory"] else 0
            got = dev["zero_copy_weight_bytes"]
            off = bench_device(model_dir, False)["zero_copy_weight_bytes"]
            return (got == want and off == 0,
                    "%d of %d bytes in place (expected %d), %d with PLDR_ZERO_COPY=0" % (got, candidates, want, off))
        tap.check("bytes read in place follow the alignment rules: " + what, counted)

    mixed = models[1][1]

    def used(mixed=mixed):
        dev = bench_device(mixed, True)
        allowed, candidates = expected_bytes(mixed, dev["mem_base_align_bytes"])
        if not dev["unified_memory"]:
            return True, "device without unified memory: nothing in place"
        return (0 < dev["zero_copy_weight_bytes"] < candidates,
                "%d of %d bytes in place" % (dev["zero_copy_weight_bytes"], candidates))
    tap.check("the mixed checkpoint has tensors both in place and copied", used)

    def half(mixed=mixed):
        dev = bench_device(mixed, True, ["--dtype", "f16"])
        return dev["zero_copy_weight_bytes"] == 0, "%d bytes in place" % dev["zero_copy_weight_bytes"]
    tap.check("--dtype f16 copies every weight", half)

    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
