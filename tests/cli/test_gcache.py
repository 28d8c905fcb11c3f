#!/usr/bin/python3
"""The G-cache as an artifact: sessions, G-cache files, `pldr deductive`
and `pldr perplexity` (TAP, for Automake's tap driver).

Sessions: greedy generation gives the same text uninterrupted and through
save + load (after the prompt, after some tokens, chained); a session of
another model, of another weight dtype, or a damaged or truncated file is
refused with exit code 3 and a message naming the file.

G-cache files: an identity G_LM (F16 [L, H, dk, dk]; BF16 [L, 1, H, dk, dk]
with A and A_LM) turns a random checkpoint into an SDPA model whose logits
match the float64 reference with G_LM = I; `gcache export` writes a valid
safetensors file whose A (the metric learner's output), A_LM and G_LM match
the reference, and `logits --g-cache` on it reproduces the KVG logits.

Reports: `deductive --json` determinants match numpy.linalg.slogdet;
`perplexity` is finite in every mode, scores N-1 tokens, and with a fixed
G_LM all modes agree with each other and with the reference.
"""

import json
import os
import shutil
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import mkmodel  # noqa: E402
import pldr_ref as ref  # noqa: E402
import pldrtest as pt  # noqa: E402

MODEL = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs")
TMP = os.path.join(pt.TESTTMP, "gcache")
PROMPT = "To open a file in Python, use"
PROMPT_IDS = [626, 730, 266, 343, 276, 312, 263, 358]  # PROMPT with the bundled tokenizer
MORE_IDS = PROMPT_IDS + [262, 265, 309, 267]          # ... " the :func:`open` function,"
# Held-out text for perplexity (written for this test, not from the Python docs).
HELD_OUT = ("A file object should be closed when it is no longer needed. The with statement "
            "closes it at the end of the block, even when an exception is raised.\n")
RANDOM_DIMS = dict(L=2, d=128, H=2, dk=64, F=192, R=2, D=2, Fa=48, V=512, Tmax=64)
# The bundled model's dims: a random model like this differs only in the weights.
BUNDLED_DIMS = dict(L=4, d=192, H=3, dk=64, F=512, R=4, D=2, Fa=170, V=4096, Tmax=512)
SESSION_HEADER = 88


def path(name):
    return os.path.join(TMP, name)


def pldr(*args):
    return pt.run_pldr(list(args))


def failed(rc, out, err):
    return "exit %d\nstdout: %s\nstderr: %s" % (rc, pt.tail(out, 5), pt.tail(err, 10))


# --------------------------------------------------------------- safetensors writer

def write_safetensors(fn, tensors, dtype="F32"):
    """tensors: list of (name, float array) -> a safetensors file."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors:
        raw, _ = mkmodel.to_storage(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    js = json.dumps(header).encode()
    js += b" " * (-len(js) % 8)
    with open(fn, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + b"".join(blobs))


def parse_safetensors_header(fn):
    with open(fn, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n]), len(data)


# --------------------------------------------------------------- sessions

def gen(*args):
    return pldr("generate", "-m", MODEL, "-q", *args)


def check_session_after_prompt():
    rc, full, err = gen("-p", PROMPT, "-n", "24")
    if rc:
        return False, "uninterrupted run failed", failed(rc, full, err)
    rc, a, err = gen("-p", PROMPT, "-n", "0", "--save-session", path("s0.ses"))
    if rc:
        return False, "save failed", failed(rc, a, err)
    rc, b, err = gen("--load-session", path("s0.ses"), "-n", "24")
    if rc:
        return False, "load failed", failed(rc, b, err)
    joined = a[:-1] + b  # each run ends its output with a newline
    return joined == full, "%d bytes" % len(full), "uninterrupted: %r\nsaved+loaded: %r" % (full, joined)


def check_session_chain(cache):
    rc, full, err = gen("-p", "The with statement", "-n", "20", "--cache", cache)
    if rc:
        return False, "uninterrupted run failed", failed(rc, full, err)
    steps = [("-p", "The with statement", "-n", "5", "--cache", cache, "--save-session", path("c1.ses")),
             ("--load-session", path("c1.ses"), "-n", "7", "--save-session", path("c2.ses")),
             ("--load-session", path("c2.ses"), "-n", "8")]
    outs = []
    for s in steps:
        rc, out, err = gen(*s)
        if rc:
            return False, "step %s failed" % (s,), failed(rc, out, err)
        outs.append(out)
    joined = outs[0][:-1] + outs[1][:-1] + outs[2]
    return joined == full, "5 + 7 + 8 tokens", "uninterrupted: %r\nchained: %r" % (full, joined)


def session_bytes():
    with open(path("s0.ses"), "rb") as f:
        return bytearray(f.read())


def expect_refusal(fn, pattern, *extra, model=MODEL):
    rc, out, err = pldr("generate", "-m", model, "-q", "--load-session", fn, "-n", "2", *extra)
    ok = rc == 3 and os.path.basename(fn) in err and pattern in err
    return ok, "exit %d: %s" % (rc, err.strip().split("\n")[-1][:110]), failed(rc, out, err)


def damaged_copy(name, edit):
    data = session_bytes()
    data = edit(data)
    with open(path(name), "wb") as f:
        f.write(data)
    return path(name)


def flip(at):
    def edit(d):
        d[at if at >= 0 else len(d) + at] ^= 0x10
        return d
    return edit


def bad_payload_crc(d):
    """Valid zlib stream and header CRC, but one payload byte changed."""
    payload = bytearray(zlib.decompress(bytes(d[SESSION_HEADER:])))
    payload[len(payload) // 2] ^= 0x01
    comp = zlib.compress(bytes(payload))
    head = bytearray(d[:SESSION_HEADER])
    head[72:80] = struct.pack("<Q", len(comp))
    head[84:88] = struct.pack("<I", zlib.crc32(bytes(head[:84])))
    return head + comp


def other_model(dims, name):
    d = path(name)
    mkmodel.make_checkpoint(d, dims, seed=11)
    shutil.copy(os.path.join(MODEL, "tokenizer.model"), d)
    return d


# --------------------------------------------------------------- G-cache files

def identity_g(dims, extra_axis=False):
    L, H, dk = dims["L"], dims["H"], dims["dk"]
    g = np.broadcast_to(np.eye(dk, dtype=np.float32), (L, H, dk, dk)).copy()
    return g[:, None] if extra_axis else g


def check_identity_g(rnd, fn, ids, prefill):
    rc, out, err = pldr("logits", "-m", rnd, "--ids", ",".join(map(str, ids)), "--prefill", prefill,
                        "--g-cache", fn, "-o", path("id.npy"))
    if rc:
        return False, "logits failed", failed(rc, out, err)
    got = pt.load_npy(path("id.npy"))
    model = ref.Model(rnd)
    eye = np.eye(RANDOM_DIMS["dk"])
    want, _ = model.forward(ids, override=[{"G_LM": np.broadcast_to(eye, (model.H,) + eye.shape)}] * model.L)
    e = pt.rel_err(got, want)
    return e <= 1e-4, "rel err %.2g (prefill %s of %d)" % (e, prefill, len(ids))


def check_export_file(fn):
    n, header, size = parse_safetensors_header(fn)
    meta = header.pop("__metadata__", {})
    names = sorted(header)
    offs = [header[k]["data_offsets"] for k in names]
    contiguous = offs[0][0] == 0 and all(offs[i][1] == offs[i + 1][0] for i in range(len(offs) - 1)) \
        and offs[-1][1] == size - 8 - n
    shapes = all(header[k]["shape"] == [4, 3, 64, 64] and header[k]["dtype"] == "F32" for k in names)
    ok = names == ["A", "A_LM", "G_LM"] and n % 8 == 0 and contiguous and shapes \
        and meta.get("prompt_tokens") == "8" and len(meta.get("pldr_model_fingerprint", "")) == 16
    return ok, "header %d bytes, metadata %s" % (n, meta), json.dumps(header)


def check_export_vs_ref(fn):
    """A against the reference's metric learner output; A_LM and G_LM against
    the reference's PLGA applied to the engine's A (G_LM = a A_LM^pw + ba
    amplifies float32 differences of A by ~30x in some layers, so comparing
    it end to end would test conditioning rather than the definition)."""
    got = {k: v[1].astype(np.float64) for k, v in ref.read_safetensors(fn).items()}
    model = ref.Model(MODEL)
    want_a = ref.g_cache(model, PROMPT_IDS)[:, 0]
    plga = [model.plga(l, got["A"][l]) for l in range(model.L)]
    errs = (pt.rel_err(got["A"], want_a), pt.rel_err(got["A_LM"], np.stack([p[0] for p in plga])),
            pt.rel_err(got["G_LM"], np.stack([p[1] for p in plga])))
    return max(errs) <= 1e-4, "rel err A %.2g, A_LM %.2g, G_LM %.2g" % errs


def check_export_replay(fn):
    ids = ",".join(map(str, MORE_IDS))
    rc, out, err = pldr("logits", "-m", MODEL, "--ids", ids, "--prefill", "8", "--cache", "kvg",
                        "-o", path("kvg.npy"))
    if rc:
        return False, "kvg logits failed", failed(rc, out, err)
    rc, out, err = pldr("logits", "-m", MODEL, "--ids", ids, "--prefill", "8", "--g-cache", fn,
                        "-o", path("ext.npy"))
    if rc:
        return False, "--g-cache logits failed", failed(rc, out, err)
    e = pt.rel_err(pt.load_npy(path("ext.npy")), pt.load_npy(path("kvg.npy")))
    return e <= 1e-5, "rel err %.2g over %d rows" % (e, len(MORE_IDS))


# --------------------------------------------------------------- reports

def compare_dets(report, tensors):
    worst, bad = 0.0, []
    for layer in report["layers"]:
        for head in layer["heads"]:
            for k in ("A", "A_LM", "G_LM"):
                if k not in tensors:
                    continue
                sign, lad = np.linalg.slogdet(tensors[k][layer["layer"], head["head"]].astype(np.float64))
                r = head[k]
                if r["sign"] != int(sign) or r["logabsdet"] is None:
                    bad.append("%d/%d %s sign %s vs %s" % (layer["layer"], head["head"], k, r["sign"], sign))
                    continue
                worst = max(worst, abs(r["logabsdet"] - lad) / max(abs(lad), 1e-300))
    return worst, bad


def check_deductive(fn):
    rc, out, err = pldr("deductive", "-m", MODEL, "-p", PROMPT, "-n", "4", "--json")
    if rc:
        return False, "deductive failed", failed(rc, out, err)
    rep = json.loads(out)
    tensors = {k: v[1] for k, v in ref.read_safetensors(fn).items()}
    worst, bad = compare_dets(rep, tensors)
    drift_ok = all(np.isfinite(h[k]["drift_rel"]) for l in rep["layers"] for h in l["heads"]
                   for k in ("A", "A_LM", "G_LM"))
    ok = not bad and worst <= 1e-6 and rep["generated_tokens"] == 4 and drift_ok
    return ok, "max rel err of log|det| %.2g, %d generated" % (worst, rep["generated_tokens"]), "\n".join(bad)


def check_deductive_file(fn):
    rc, out, err = pldr("deductive", "--g-cache", fn, "--json")
    if rc:
        return False, "deductive --g-cache failed", failed(rc, out, err)
    tensors = {k: v[1] for k, v in ref.read_safetensors(fn).items()}
    worst, bad = compare_dets(json.loads(out), tensors)
    return not bad and worst <= 1e-6, "max rel err of log|det| %.2g" % worst, "\n".join(bad)


def perplexity(*args):
    rc, out, err = pldr("perplexity", "-m", MODEL, "-f", path("heldout.txt"), "--ctx", "16", "--stride", "8",
                        "--json", *args)
    if rc:
        raise RuntimeError(failed(rc, out, err))
    return json.loads(out)


def ref_perplexity_fixed_g(fn, ctx, stride):
    """Mean NLL with G_LM from fn: each window one forward (causal rows)."""
    model = ref.Model(MODEL)
    g = ref.read_safetensors(fn)["G_LM"][1]
    override = [{"G_LM": g[l]} for l in range(model.L)]
    rc, out, err = pldr("tokenize", "-m", MODEL, "-f", path("heldout.txt"))
    ids = [int(t) for t in out.split()]
    N, total, n, prev_end, b = len(ids), 0.0, 0, 0, 0
    while True:
        e, s = min(b + ctx, N), max(prev_end, b + 1)
        logits, _ = model.forward(ids[b:e], override=override)
        for t in range(s, e):
            row = logits[t - 1 - b]
            m = row.max()
            total += m + np.log(np.exp(row - m).sum()) - row[ids[t]]
            n += 1
        prev_end = e
        if e == N:
            return total / n, n, N
        b += stride


def check_perplexity_modes():
    res = {m: perplexity(*a) for m, a in (("kvg", ["--cache", "kvg"]), ("none", ["--cache", "none"]),
                                          ("all-rows", ["--cache", "none", "--all-rows"]))}
    nll = {m: r["mean_nll"] for m, r in res.items()}
    finite = all(v is not None and np.isfinite(v) for v in nll.values())
    n = res["kvg"]["tokens"]
    counts = all(r["scored"] == n - 1 for r in res.values())
    # Without a fixed G_LM the modes predict with different G_LM (see
    # `pldr perplexity --help`): close on a trained model, not equal.
    close = finite and abs(nll["kvg"] - nll["none"]) <= 0.05 * nll["none"]
    return finite and counts and close, "mean NLL kvg %.4f, none %.4f, all-rows %.4f over %d tokens" % (
        nll["kvg"], nll["none"], nll["all-rows"], n - 1)


def check_perplexity_fixed_g(fn):
    nll = {m: perplexity("--g-cache", fn, *a)["mean_nll"]
           for m, a in (("kvg", ["--cache", "kvg"]), ("none", ["--cache", "none"]),
                        ("all-rows", ["--cache", "none", "--all-rows"]))}
    want, n, _ = ref_perplexity_fixed_g(fn, 16, 8)
    spread = max(abs(v - nll["kvg"]) for v in nll.values()) / nll["kvg"]
    e = abs(nll["kvg"] - want) / want
    return spread <= 1e-5 and e <= 1e-4, "modes within %.2g, vs reference %.2g (NLL %.5f)" % (spread, e, want)


# --------------------------------------------------------------- main

def main():
    tap = pt.Tap()
    if not pt.have_pldr():
        tap.skip("G-cache tests", "pldr binary not found: %s" % pt.PLDR_BIN)
        return tap.done()
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    with open(path("heldout.txt"), "w") as f:
        f.write(HELD_OUT)

    # sessions
    tap.check("session: uninterrupted == save after prompt (-n 0) + load + continue (greedy)",
              check_session_after_prompt)
    tap.check("session: chained save/load after 5 and 12 tokens == uninterrupted (kvg)",
              lambda: check_session_chain("kvg"))
    tap.check("session: chained save/load == uninterrupted (kv)", lambda: check_session_chain("kv"))
    same_dims = other_model(BUNDLED_DIMS, "other-same-dims")
    tap.check("session of another model (same dims, other weights) refused",
              lambda: expect_refusal(path("s0.ses"), "another model", model=same_dims))
    small = other_model(dict(RANDOM_DIMS, V=4096), "other-small")
    tap.check("session of another model (other dims) refused",
              lambda: expect_refusal(path("s0.ses"), "another model", model=small))
    tap.check("session with a flipped payload byte refused",
              lambda: expect_refusal(damaged_copy("flip.ses", flip(-200)), "damaged"))
    tap.check("session with a flipped header byte refused",
              lambda: expect_refusal(damaged_copy("head.ses", flip(40)), "damaged"))
    tap.check("truncated session refused",
              lambda: expect_refusal(damaged_copy("trunc.ses", lambda d: d[:len(d) - 1000]), "truncated"))
    tap.check("session whose payload CRC does not match refused",
              lambda: expect_refusal(damaged_copy("crc.ses", bad_payload_crc), "CRC mismatch"))
    tap.check("session made with f32 weights refused with --dtype f16",
              lambda: expect_refusal(path("s0.ses"), "f16", "--dtype", "f16"))

    # external G-cache files
    rnd = path("rnd")
    mkmodel.make_checkpoint(rnd, RANDOM_DIMS, seed=5)
    ids = [3, 17, 42, 99, 7, 250, 11, 5, 300, 64, 12, 480]
    write_safetensors(path("id.st"), [("G_LM", identity_g(RANDOM_DIMS))], "F16")
    tap.check("identity G_LM (F16 [L,H,dk,dk]) gives the reference's SDPA logits",
              lambda: check_identity_g(rnd, path("id.st"), ids, "6"))
    write_safetensors(path("id5.st"), [("A", identity_g(RANDOM_DIMS, True)), ("A_LM", identity_g(RANDOM_DIMS, True)),
                                       ("G_LM", identity_g(RANDOM_DIMS, True))], "BF16")
    tap.check("identity G_LM (BF16 [L,1,H,dk,dk] with A, A_LM) gives the reference's SDPA logits",
              lambda: check_identity_g(rnd, path("id5.st"), ids, "12"))

    gfile = path("g.st")

    def wrong_shape():  # the bundled model's G-cache [4, 3, 64, 64] in the random model
        rc, out, err = pldr("logits", "-m", rnd, "--ids", "1,2", "--g-cache", gfile, "-o", path("x.npy"))
        return rc == 3 and "[2, 2, 64, 64]" in err and "g.st" in err, "exit %d: %s" % (rc, err.strip()[:120])

    rc, out, err = pldr("gcache", "export", "-m", MODEL, "-p", PROMPT, "-o", gfile)
    if not tap.ok(rc == 0 and os.path.exists(gfile), "gcache export runs", failed(rc, out, err)):
        return tap.done()
    tap.check("G-cache file of another shape refused, naming the expected shape", wrong_shape)
    tap.check("exported file: valid safetensors, sorted contiguous offsets, 8-byte padding, metadata",
              lambda: check_export_file(gfile))
    tap.check("exported A is the metric learner's output; A_LM, G_LM follow from it (float64 reference)",
              lambda: check_export_vs_ref(gfile))
    tap.check("logits --g-cache of the export reproduce the KVG logits", lambda: check_export_replay(gfile))

    # reports
    tap.check("deductive --json: determinants match numpy slogdet of the export", lambda: check_deductive(gfile))
    tap.check("deductive --g-cache --json: determinants match numpy slogdet of the file",
              lambda: check_deductive_file(gfile))
    tap.check("perplexity of held-out text: finite in kvg, none and none --all-rows, N-1 tokens scored",
              check_perplexity_modes)
    tap.check("perplexity with a fixed G_LM: kvg, none and all-rows agree and match the reference",
              lambda: check_perplexity_fixed_g(gfile))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
