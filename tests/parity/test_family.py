#!/usr/bin/python3
"""The published PLDR-LLM family: model classes, heads and rope_scaling.

Random checkpoints (mkmodel.py) of each class (PldrllmForCausalLM,
PldrllmModel, token and sequence classification, question answering) and of
each Hugging Face rope type (linear, dynamic, yarn, llama3, longrope) run
through `pldr logits` and are compared with the float64 reference
(pldr_ref.py) within 1e-4 relative; the rope types are checked to change the
result (so a scaling the engine ignored would fail).  Config files with
`dtype` only load; an unknown rope type, scaling on the interleaved RoPE and a
longrope context beyond its original length are refused with messages naming
them; a missing head tensor and a leftover final_layer are errors naming the
tensor.  `pldr classify`, `pldr qa` and `pldr embed` print what the reference's
argmax / hidden states say.
"""

import io
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import mkmodel  # noqa: E402
import pldr_ref as ref  # noqa: E402
import pldrtest as pt  # noqa: E402

TOL = 1e-4
# one shape for every checkpoint: the kernels compile once
DIMS = dict(L=2, d=64, H=2, dk=32, F=96, R=1, D=1, Fa=24, V=64, Tmax=32)
IDS = [7, 21, 3, 40, 9, 33, 12, 5, 50, 18]
WORK = os.path.join(pt.TESTTMP, "family")


def make(name, **kw):
    out = os.path.join(WORK, name)
    kw.setdefault("reference_rope", False)
    mkmodel.make_checkpoint(out, DIMS, seed=kw.pop("seed", 11), **kw)
    return out


def engine(model, ids=IDS, prefill=None, extra=()):
    out = os.path.join(WORK, os.path.basename(model) + ".npy")
    args = ["logits", "-m", model, "--ids", ",".join(map(str, ids)), "-o", out] + list(extra)
    if prefill:
        args += ["--prefill", prefill]
    rc, so, se = pt.run_pldr(args)
    return rc, (pt.load_npy(out) if rc == 0 else None), se


def reference(model, ids=IDS, prefill=None):
    m = ref.Model(model)
    out = ref.logits_for_mode(m, ids, prefill, "kvg")
    if m.arch == "PldrllmForSequenceClassification":
        out = out[m.sequence_row(ids):m.sequence_row(ids) + 1]
    return out


def parity(t, desc, model, prefill=None, differs_from=None):
    def check():
        rc, got, se = engine(model, prefill=prefill)
        if rc != 0:
            return False, "exit %d" % rc, se
        want = reference(model, prefill=prefill)
        if got.shape != want.shape:
            return False, "shape %s, reference %s" % (got.shape, want.shape)
        err = pt.rel_err(got, want)
        note = "rel err %.2g" % err
        ok = err <= TOL
        if differs_from is not None:
            d = pt.rel_err(differs_from, want)
            note += ", %.2g from the unscaled model" % d
            ok = ok and d > 100 * TOL
        return ok, note
    return t.check(desc, check)


def refused(t, desc, model, *words, ids=IDS, code=3):
    def check():
        rc, _, se = engine(model, ids=ids)
        return rc == code and all(w in se for w in words), "exit %d" % rc, se
    return t.check(desc, check)


def main():
    t = pt.Tap()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)

    # ---- classes
    for arch, rope in (("causal", None), ("model", None), ("token", None), ("sequence", None), ("qa", None),
                       ("token", {"rope_type": "yarn", "factor": 4.0})):
        name = arch + ("-yarn" if rope else "")
        model = make(name, arch=arch, rope_scaling=rope)
        parity(t, "%s: logits match the reference" % mkmodel.ARCHS[arch] + (" (yarn)" if rope else ""), model)
    parity(t, "token classification through the KV+G cache (prefill 6, 4 decode steps)",
           os.path.join(WORK, "token"), prefill=6)
    # sequence classification takes the last token that is not pad (id 0)
    seq = os.path.join(WORK, "sequence")

    def padded():
        ids = IDS[:6] + [0, 0]
        rc, got, se = engine(seq, ids=ids)
        want = reference(seq, ids=ids)
        m = ref.Model(seq)
        return (rc == 0 and m.sequence_row(ids) == 5 and pt.rel_err(got, want) <= TOL,
                "row %d" % m.sequence_row(ids), se)
    t.check("sequence classification: the row of the last non-pad token", padded)

    # ---- rope_scaling types, each against the unscaled model of the same weights
    base = make("rope-default")
    _, plain, _ = engine(base)
    orig = DIMS["Tmax"] // 4
    half = DIMS["dk"] // 2
    rng = np.random.default_rng(5)
    scalings = [
        ("linear", {"rope_type": "linear", "factor": 4.0}, {}),
        ("yarn", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": orig,
                  "beta_fast": 8, "beta_slow": 0.5}, {}),
        ("yarn-mscale", {"rope_type": "yarn", "factor": 8.0, "mscale": 1.0, "mscale_all_dim": 0.5,
                         "truncate": False}, {}),
        ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": orig}, {}),
        ("longrope", {"rope_type": "longrope", "short_factor": list(1 + rng.random(half) * 3),
                      "long_factor": list(1 + rng.random(half) * 8)},
         {"original_max_position_embeddings": len(IDS)}),
        ("type-key", {"type": "linear", "factor": 2.0}, {"dtype": "float32"}),
    ]
    for name, rs, top in scalings:
        model = make("rope-" + name, rope_scaling=rs, extra_config=top)
        parity(t, "rope_scaling %s matches the reference" % name, model, differs_from=plain)
    # transformers 5's "rope_parameters" (rope_theta inside it) reads as rope_scaling does
    params = make("rope-parameters", extra_config={"rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                                                       "rope_theta": 10000.0}})

    def same_as_linear():
        rc, got, se = engine(params)
        if rc != 0:
            return False, "exit %d" % rc, se
        _, linear, _ = engine(os.path.join(WORK, "rope-linear"))
        e, d = pt.rel_err(got, linear), pt.rel_err(got, plain)
        return e <= 1e-6 and d > 1e-3, "rel err to rope_scaling linear %.2g, to unscaled %.2g" % (e, d)
    t.check("rope_parameters (transformers 5) applies its scaling like rope_scaling", same_as_linear)
    # dynamic NTK changes nothing inside max_position_embeddings, where the engine's contexts end
    parity(t, "rope_scaling dynamic matches the reference (unscaled within max_position_embeddings)",
           make("rope-dynamic", rope_scaling={"rope_type": "dynamic", "factor": 4.0}))
    longrope = os.path.join(WORK, "rope-longrope")
    refused(t, "longrope: a context beyond original_max_position_embeddings is refused", longrope,
            "original_max_position_embeddings", "long factors", ids=IDS + [1, 2])

    # ---- config files
    only = make("dtype-only", dtype_key="dtype", arch="token")
    with open(os.path.join(only, "config.json")) as f:
        c = json.load(f)
    t.ok("dtype" in c and "torch_dtype" not in c, "mkmodel writes dtype alone when asked")
    parity(t, "a config with dtype and no torch_dtype loads", only)
    bad = make("rope-unknown", rope_scaling={"rope_type": "ntk-by-parts", "factor": 2.0})
    refused(t, "an unknown rope type is refused, named", bad, "rope_scaling type \"ntk-by-parts\"", "not implemented")
    inter = make("rope-interleaved", reference_rope=True, rope_scaling={"rope_type": "linear", "factor": 2.0})
    refused(t, "rope_scaling with reference_rope true is refused", inter, "reference_rope")
    arch = make("arch-unknown", extra_config={"architectures": ["PldrllmForMaskedLM"]})
    refused(t, "an unknown architecture is refused, named", arch, "PldrllmForMaskedLM")

    # ---- tensors checked as for the causal model
    def edit_tensors(name, arch, drop=None, add=None):
        model = make(name, arch=arch)
        path = os.path.join(model, "model.safetensors")
        tensors = {k: arr for k, (_, arr) in ref.read_safetensors(path).items()}
        if drop:
            tensors.pop(drop)
        if add:
            tensors[add[0]] = add[1]
        mkmodel.write_safetensors(path, [(k, np.asarray(v, np.float32)) for k, v in tensors.items()], "F32")
        return model
    miss = edit_tensors("qa-missing-bias", "qa", drop="qa_outputs.bias")
    refused(t, "a missing head tensor is an error naming it", miss, "qa_outputs.bias", "missing")
    extra = edit_tensors("sequence-final-layer", "sequence",
                         add=("final_layer.weight", np.zeros((DIMS["V"], DIMS["d"]), np.float32)))
    refused(t, "a tensor the class does not use is an error naming it", extra, "final_layer.weight",
            "PldrllmForSequenceClassification")

    commands(t)
    return t.done()


# ---- the commands, on checkpoints with the bundled tokenizer (V = 4096)
TOK = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs", "tokenizer.model")
CDIMS = dict(DIMS, V=4096)


def make_tok(name, arch, **kw):
    out = os.path.join(WORK, name)
    mkmodel.make_checkpoint(out, CDIMS, seed=23, reference_rope=False, arch=arch, n_labels=5, **kw)
    shutil.copy(TOK, os.path.join(out, "tokenizer.model"))
    return out


def tokenize(model, text):
    rc, so, se = pt.run_pldr(["tokenize", "-m", model, "-p", text])
    if rc != 0:
        raise RuntimeError(se)
    return [int(x) for x in so.split()]


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def run_json(args):
    rc, so, se = pt.run_pldr(args)
    if rc != 0:
        raise RuntimeError("exit %d: %s" % (rc, se))
    return [json.loads(line) for line in so.splitlines() if line.strip()], se


def commands(t):
    lines = ["the file is open", "close it and read the documentation again"]
    seq = make_tok("cmd-sequence", "sequence")
    tok = make_tok("cmd-token", "token")
    qa = make_tok("cmd-qa", "qa")
    causal = make_tok("cmd-causal", "causal")

    def classify_sequence():
        out, _ = run_json(["classify", "-m", seq, "-p", "\n".join(lines), "--json", "--top", "3"])
        m = ref.Model(seq)
        bad = []
        for line, o in zip(lines, out):
            ids = tokenize(seq, line)
            p = softmax(m.forward(ids)[0][m.sequence_row(ids)])
            want = m.labels[int(np.argmax(p))]
            if o["label"] != want or abs(o["score"] - p.max()) > 1e-4 or len(o["labels"]) != 3:
                bad.append((line, o["label"], want, o["score"], float(p.max())))
        return len(out) == len(lines) and not bad, "%d lines" % len(out), repr(bad)
    t.check("pldr classify (sequence): each line's label and probability are the reference's argmax",
            classify_sequence)

    def classify_tokens():
        out, _ = run_json(["classify", "-m", tok, "-p", lines[1], "--json"])
        o = out[0]
        ids = [x["id"] for x in o["tokens"]]
        m = ref.Model(tok)
        logits = m.forward(ids)[0]
        want = [m.labels[int(np.argmax(r))] for r in logits]
        got = [x["label"] for x in o["tokens"]]
        probs = np.array([softmax(r).max() for r in logits])
        err = np.max(np.abs(probs - [x["score"] for x in o["tokens"]]))
        words = " ".join(w["word"] for w in o["words"])
        return (ids == tokenize(tok, lines[1]) and got == want and err < 1e-4 and words == lines[1],
                "%d tokens, %d words" % (len(ids), len(o["words"])), "%s\n%s\n%s" % (got, want, words))
    t.check("pldr classify (token): each token's label is the reference's argmax; words rebuilt", classify_tokens)

    def answer():
        question, context = "what is open", "the file is open for reading and writing"
        out, _ = run_json(["qa", "-m", qa, "--question", question, "--context", context, "--json",
                           "--max-answer", "4"])
        o = out[0]
        q, c = tokenize(qa, question), tokenize(qa, context)
        m = ref.Model(qa)
        rows = m.forward(q + c)[0][len(q):]
        ps, pe = softmax(rows[:, 0]), softmax(rows[:, 1])
        best = max((ps[i] * pe[j], i, j) for i in range(len(c)) for j in range(i, min(len(c), i + 4)))
        return ((o["start_token"], o["end_token"]) == best[1:] and abs(o["score"] - best[0]) < 1e-4,
                "span %d..%d %r" % (o["start_token"], o["end_token"], o["answer"]), repr(best))
    t.check("pldr qa: the best span within --max-answer is the reference's", answer)

    def embed():
        m = ref.Model(causal)
        m.arch = "PldrllmModel"   # the hidden state before final_layer
        ok, notes = True, []
        for pool in ("last", "mean"):
            want = []
            for line in lines:
                h = m.forward(tokenize(causal, line))[0]
                want.append(h[-1] if pool == "last" else h.mean(axis=0))
            got = embed_npy(causal, lines, pool)
            err = pt.rel_err(got, np.array(want))
            ok = ok and got.shape == (len(lines), CDIMS["d"]) and err <= TOL
            notes.append("%s %.2g" % (pool, err))
        return ok, ", ".join(notes)
    t.check("pldr embed of a causal LM: last and mean pooled hidden states match the reference", embed)

    def guard():
        rc1, _, se1 = pt.run_pldr(["generate", "-m", seq, "-p", "the", "-n", "2"])
        rc2, _, se2 = pt.run_pldr(["classify", "-m", causal, "-p", "the"])
        rc3, _, se3 = pt.run_pldr(["qa", "-m", tok, "--question", "a", "--context", "b"])
        rc4, _, se4 = pt.run_pldr(["serve", "-m", qa, "--port", "0"], timeout=60)
        return (rc1 == 3 and "PldrllmForSequenceClassification" in se1 and "pldr classify" in se1 and
                rc2 == 3 and "PldrllmForCausalLM" in se2 and "pldr generate" in se2 and
                rc3 == 3 and "pldr classify" in se3 and rc4 == 3 and "pldr qa" in se4), \
            "exit %d %d %d %d" % (rc1, rc2, rc3, rc4), se1 + se2 + se3 + se4
    t.check("a command for another class says what the checkpoint is and which command runs it", guard)

    def bos():
        settings = {"add_bos_token": True, "add_eos_token": False, "padding_side": "right",
                    "bos_token": "[START]", "eos_token": "[END]", "pad_token": "[PAD]"}
        for d in (tok, causal):
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump(settings, f)
        try:
            out, se = run_json(["classify", "-m", tok, "-p", lines[0], "--json"])
            gen, se2 = run_json(["generate", "-m", causal, "-p", lines[0], "-n", "1", "-o", "json"])
        finally:
            for d in (tok, causal):
                os.remove(os.path.join(d, "tokenizer_config.json"))
        ids = [x["id"] for x in out[0]["tokens"]]
        n = len(tokenize(tok, lines[0]))
        return (ids[0] == 2 and ids[1:] == tokenize(tok, lines[0]) and "warning" in se and "add_bos_token" in se
                and gen[0]["n_prompt"] == n + 1), "first id %d, generate's prompt %d tokens for %d" % (
                    ids[0], gen[0]["n_prompt"], n), se + se2
    t.check("tokenizer_config.json add_bos_token true is honoured (classify, generate), with a warning", bos)


def embed_npy(model, lines, pool):
    p = subprocess.run([pt.PLDR_BIN, "embed", "-m", model, "-p", "\n".join(lines), "--pool", pool, "-o", "npy"],
                       capture_output=True, timeout=pt.TIMEOUT)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode(errors="replace"))
    return np.load(io.BytesIO(p.stdout), allow_pickle=False)


if __name__ == "__main__":
    sys.exit(main())
