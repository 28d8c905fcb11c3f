#!/usr/bin/python3
"""The generation API (pldr.h, section Generation) and `pldr generate`'s options.

- Each sampler against NumPy: the distribution that temperature, top-k, top-p,
  min-p, the penalties and the logit bias define on fixed logits, computed in
  float64 here, against the frequencies of 40000 seeded draws through
  pldr_gen_next (tests/unit/gen_tool). Tolerance: every id's frequency within
  5 standard deviations of its probability (sqrt(p (1 - p) / N)) plus 1e-3.
- Incremental detokenization: the events' texts joined are pldr_detokenize of
  the same ids, on random ids rich in byte pieces (incomplete UTF-8).
- Stop strings spanning tokens, a stop string that begins to match and then
  does not, ignore_eos, a cancelling callback, -o json (its log-probabilities
  against `pldr logits` and a NumPy log-softmax, tolerance 1e-4).
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

from pldrtest import PLDR_BIN, SRCDIR, TESTTMP, Tap  # noqa: E402

tap = Tap()
TOOL = os.path.join(os.path.dirname(PLDR_BIN), "tests", "unit", "gen_tool")
MODEL = os.environ.get("PLDR_MODEL") or os.path.join(SRCDIR, "models", "pldr-tiny-pydocs")
PROMPT = "To open a file in Python, use"
GREEDY = " the :func:`open` function, and the :func:`open` function."
N_DRAWS = 40000


def run(*args, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, timeout=900)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (args[:2], r.returncode, r.stderr.decode(errors="replace")))
    return r


def ref_distribution(logits, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, rep=1.0, rep_n=64, pres=0.0, freq=0.0,
                     hist=(), bias=()):
    """The distribution of pldr.h's order: bias, penalties, temperature,
    top-k, top-p, min-p."""
    z = np.array(logits, dtype=np.float64)
    for i in range(0, len(bias), 2):
        z[int(bias[i])] += bias[i + 1]
    window = list(hist) if rep_n < 0 else list(hist)[-rep_n:] if rep_n > 0 else []
    for t in set(window):
        c = window.count(t)
        if rep != 1.0:
            z[t] = z[t] / rep if z[t] > 0 else z[t] * rep
        z[t] -= c * freq + pres
    if temp == 0:
        p = np.zeros_like(z)
        p[int(np.argmax(z))] = 1
        return p
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    k = top_k if 0 < top_k < len(z) else len(z)
    order = order[:k]
    w = np.exp((z[order] - z[order[0]]) / temp)
    prob = w / w.sum()
    keep = len(order)
    acc = 0.0
    for i in range(len(order)):
        acc += prob[i]
        if acc >= top_p:
            keep = i + 1
            break
    if min_p > 0:
        keep = min(keep, int(np.sum(w[:keep] >= min_p)))
    p = np.zeros_like(z)
    p[order[:keep]] = w[:keep] / w[:keep].sum()
    return p


LOGITS = [2.0, 1.5, 1.1, 0.7, 0.3, 0.0, -0.4, -0.9, -1.5, -2.2, -3.0, 1.8]
CASES = [
    ("temperature 1", dict(temp=1.0)),
    ("temperature 0.7", dict(temp=0.7)),
    ("temperature 1.6, top-k 5", dict(temp=1.6, top_k=5)),
    ("top-p 0.8", dict(temp=1.0, top_p=0.8)),
    ("min-p 0.2", dict(temp=1.0, min_p=0.2)),
    ("top-k 8, top-p 0.9, min-p 0.05, temperature 1.3", dict(temp=1.3, top_k=8, top_p=0.9, min_p=0.05)),
    ("repeat penalty 1.8 over the last 4 tokens", dict(temp=1.0, rep=1.8, rep_n=4, hist=(0, 6, 1, 0, 3, 7))),
    ("presence 0.6 and frequency 0.4 penalties", dict(temp=1.0, pres=0.6, freq=0.4, hist=(0, 0, 0, 11, 2, 11))),
    ("logit bias (one token banned)", dict(temp=1.0, bias=(0, float("-inf"), 5, 2.5))),
    ("greedy with penalties and bias", dict(temp=0.0, rep=2.0, hist=(0,), bias=(11, -1.0))),
]


def case_params(kw):
    items = []
    for k, v in kw.items():
        if k == "hist":
            items.append("hist=" + ":".join(str(t) for t in v))
        elif k == "bias":
            items.append("bias=" + ":".join("%r" % x if not np.isinf(x) else "-inf" for x in v))
        else:
            items.append("%s=%r" % (k, v))
    return ",".join(items)


def check_sampler(kw):
    r = run(TOOL, "sample", N_DRAWS, ",".join("%r" % x for x in LOGITS), case_params(kw))
    counts = np.array([int(x) for x in r.stdout.split()], dtype=np.float64)
    freq = counts / N_DRAWS
    p = ref_distribution(LOGITS, **kw)
    tol = 5 * np.sqrt(p * (1 - p) / N_DRAWS) + 1e-3
    worst = int(np.argmax(np.abs(freq - p) - tol))
    ok = bool(np.all(np.abs(freq - p) <= tol))
    return ok, "max |freq - p| %.4f (id %d: %.4f vs %.4f)" % (np.max(np.abs(freq - p)), worst, freq[worst], p[worst]), \
        "freq %s\nref  %s" % (np.round(freq, 4), np.round(p, 4))


for name, kw in CASES:
    tap.check("sampler against NumPy: " + name, lambda kw=kw: check_sampler(kw))


def check_detok(tokenizer, seed):
    r = run(TOOL, "detok", tokenizer, seed, 3000)
    out = r.stdout.decode(errors="replace")
    return out.startswith("same"), out.split("\n")[0], out


tap.check("incremental detokenization = pldr_detokenize (bundled tokenizer)",
          lambda: check_detok(os.path.join(MODEL, "tokenizer.model"), 1))
SHARED_TOK = os.path.join(SRCDIR, "tests", "data", "tokenizer", "pldr-refinedweb-32k.model")
if os.path.exists(SHARED_TOK):
    tap.check("incremental detokenization = pldr_detokenize (32k tokenizer, byte fallback)",
              lambda: check_detok(SHARED_TOK, 2))
else:
    tap.check("incremental detokenization, 32k tokenizer", lambda: (False, "%s missing" % SHARED_TOK))


def gen(*args):
    return run(PLDR_BIN, "generate", "-q", "-m", MODEL, "-p", PROMPT, *args)


def gen_json(*args):
    return json.loads(gen("-o", "json", *args).stdout)


def check_greedy():
    out = gen().stdout.decode()
    return out == PROMPT + GREEDY + "\n", repr(out)


tap.check("greedy text unchanged", check_greedy)


def check_stop_across_tokens():
    j = gen_json("--stop", "`open` func", "--stop", "never seen")
    want = GREEDY[:GREEDY.index("`open` func")]
    ids = j["tokens"]
    return (j["text"] == want and j["finish_reason"] == "stop" and len(ids) >= 3,
            "%r, %s, %d tokens" % (j["text"], j["finish_reason"], len(ids)))


tap.check("a stop string spanning tokens ends the text before it", check_stop_across_tokens)


def check_stop_partial():
    # ":func:`open` x" matches up to the space after `open`, then fails: the
    # held text must come out unchanged
    out = gen("--stop", ":func:`open` x").stdout.decode()
    return out == PROMPT + GREEDY + "\n", repr(out)


tap.check("a stop string that begins to match and then does not changes nothing", check_stop_partial)


def check_stop_text_mode():
    out = gen("--stop", "function").stdout.decode()
    return out == PROMPT + " the :func:`open` \n", repr(out)


tap.check("--stop in text output", check_stop_text_mode)


def check_ignore_eos():
    j = gen_json("--ignore-eos", "-n", "30")
    plain = gen_json("-n", "30")
    return (j["n_generated"] == 30 and j["finish_reason"] == "length" and plain["finish_reason"] == "stop"
            and j["text"].startswith(GREEDY) and 3 not in j["tokens"],
            "%d tokens, %s; without: %s" % (j["n_generated"], j["finish_reason"], plain["finish_reason"]))


tap.check("--ignore-eos generates past [END]", check_ignore_eos)


def check_length():
    j = gen_json("-n", "4")
    return j["n_generated"] == 4 and j["finish_reason"] == "length", "%s" % j["finish_reason"]


tap.check("-n ends with finish reason length", check_length)


def check_json_logprobs():
    j = gen_json("--logprobs", "3")
    ids = j["tokens"]
    prompt_ids = [int(x) for x in run(PLDR_BIN, "tokenize", "-m", MODEL, "-p", PROMPT).stdout.split()]
    seq = prompt_ids + ids[:-1]
    fn = os.path.join(TESTTMP, "gen_logits.npy")
    run(PLDR_BIN, "logits", "-m", MODEL, "--ids", ",".join(map(str, seq)), "--prefill", len(prompt_ids),
        "--cache", "kvg", "-o", fn)
    lg = np.load(fn).astype(np.float64)[len(prompt_ids) - 1:]
    lsm = lg - lg.max(axis=1, keepdims=True)
    lsm = lsm - np.log(np.exp(lsm).sum(axis=1, keepdims=True))
    ref = np.array([lsm[i, t] for i, t in enumerate(ids)])
    err = np.max(np.abs(np.array(j["logprobs"]) - ref))
    tops_ok = all([e["id"] for e in j["top_logprobs"][i]] == list(np.argsort(-lsm[i], kind="stable")[:3])
                  for i in range(len(ids)))
    ok = (j["text"] == GREEDY and j["finish_reason"] == "stop" and ids[-1] == 3 and err <= 1e-4 and tops_ok
          and j["n_prompt"] == len(prompt_ids) and set(j["timings"]) == {"load_s", "kernels_s", "prefill_s", "decode_s"}
          and 0 <= j["timings"]["kernels_s"] <= j["timings"]["load_s"])
    return ok, "max logprob error %.2g, top-3 ids %s" % (err, "match" if tops_ok else "differ"), json.dumps(j)[:2000]


tap.check("-o json: text, tokens, log-probabilities against pldr logits + NumPy, finish reason", check_json_logprobs)


def check_cancel():
    r = run(TOOL, "cancel", MODEL, PROMPT, 3)
    head, text = r.stdout.decode().split("\n", 1)
    reason, n, n_past = head.split()
    # the cancelled run's text is the first 3 tokens' text of the full run
    j = gen_json("-n", "3")
    return (reason == "cancelled" and n == "3" and text.rstrip("\n") == j["text"] and int(n_past) == 8 + 2,
            "%s after %s tokens, %r (n_past %s)" % (reason, n, text.rstrip("\n"), n_past))


tap.check("a callback that cancels ends generation with finish reason cancelled", check_cancel)


def check_session_full_context():
    # 8 prompt tokens in a context of 14: 6 tokens fill it; the session saved
    # then holds all that was printed, and a run resumed in a larger context
    # goes on exactly as one uninterrupted run
    ses = os.path.join(TESTTMP, "gen_full.ses")
    a = gen("--ctx", "14", "-n", "64", "--save-session", ses).stdout.decode()
    r = run(PLDR_BIN, "generate", "-q", "-m", MODEL, "--load-session", ses, "--ctx", "64", "-n", "10")
    b = r.stdout.decode()
    full = gen("-n", "16").stdout.decode()
    j = gen_json("--ctx", "14", "-n", "64")
    joined = a[:-1] + b
    return (joined == full and j["finish_reason"] == "context" and j["n_generated"] == 6,
            "%d + 10 tokens, %s" % (j["n_generated"], j["finish_reason"]),
            "joined: %r\nuninterrupted: %r" % (joined, full))


tap.check("a session saved at a full context + the resumed run == one uninterrupted run",
          check_session_full_context)


def check_bad_options():
    bad = [("--min-p", "2"), ("--repeat-penalty", "0"), ("--logprobs", "21"), ("--stop", ""), ("-o", "xml")]
    codes = [run(PLDR_BIN, "generate", "-m", MODEL, "-p", PROMPT, *b, check=False).returncode for b in bad]
    return all(c == 2 for c in codes), "exit codes %s" % codes


tap.check("out-of-range generation options are usage errors (exit 2)", check_bad_options)

sys.exit(tap.done())
