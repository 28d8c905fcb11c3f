#!/usr/bin/env python3
"""Batched evaluation of several sequences (pldr_eval_batch), on random
checkpoints (mkmodel.py, seeded): tests/unit/batch_check runs every sequence of a
batch alone in a context of its own and compares each step's logits (max
abs difference over max abs value; the batched products sum in another
order than the one-token path, hence a tolerance, not equality): B = 2, 3
and 8 with prompts of different lengths, sequences starting and finishing
at different steps through reused slots, shared external and first-prompt
G-caches, per-sequence state round trips; and the memory check that refuses
too many sequences. Then `pldr batch` on the bundled model: its greedy texts
and tokens equal those of `pldr generate` run on each prompt alone, with
more prompts than sequences (slots reused), from text and JSON lines."""

import json

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pldrtest as pt  # noqa: E402
import mkmodel  # noqa: E402

CHECK = os.path.join(os.path.dirname(pt.PLDR_BIN), "tests", "unit", "batch_check")

# name, dims, mkmodel options, weight dtype on the device, tolerance
# (one checkpoint's kernels build once per weight dtype: the f16 case has
# the same dims; max_position_embeddings is large for the memory check, the
# contexts use 48 tokens)
DIMS = dict(L=2, d=64, H=2, dk=32, F=96, R=2, D=2, Fa=32, V=300, Tmax=65536)
CONFIGS = [
    ("f32-learned", dict(dtype="F32", g_type="learned"), "f32", 1e-5),
    ("f16-learned", dict(dtype="F16", g_type="learned", reference_rope=False), "f16", 1e-5),
]


def run_check(args):
    p = subprocess.run([CHECK] + args, capture_output=True, text=True, timeout=pt.TIMEOUT)
    return p.returncode, p.stdout, p.stderr


def main():
    tap = pt.Tap()
    work = os.path.join(pt.TESTTMP, "batch")
    os.makedirs(work, exist_ok=True)
    for i, (name, opts, dtype, tol) in enumerate(CONFIGS):
        d = os.path.join(work, name)
        shutil.rmtree(d, ignore_errors=True)
        mkmodel.make_checkpoint(d, DIMS, seed=3000 + i, **opts)
        rc, out, err = run_check([d, dtype, "%g" % tol])
        lines = [ln for ln in out.splitlines() if ln.startswith("ok ") or ln.startswith("not ok ")]
        for ln in lines:
            good = ln.startswith("ok ")
            tap.ok(good, "%s (%s weights): %s" % (name, dtype, ln.split(" - ", 1)[1]), err)
        if rc != 0 and all(ln.startswith("ok ") for ln in lines):
            tap.ok(False, "%s: batch_check exit %d" % (name, rc), err)
    # a long context: many sequences of it cannot fit the device
    d = os.path.join(work, CONFIGS[0][0])
    rc, out, err = run_check([d, "f32", "1e-5", "--refuse"])
    for ln in out.splitlines():
        if ln.startswith("ok ") or ln.startswith("not ok "):
            tap.ok(ln.startswith("ok "), "memory check: " + ln.split(" - ", 1)[1], err)
    check_cli(tap, work)
    return tap.done()


PROMPTS = ["def add(a, b):", "import os", "class Foo:", '    """Return the', "for i in range(10):",
           "if x is None:", "    return"]


def check_cli(tap, work):
    model = os.environ.get("PLDR_MODEL")
    path = os.path.join(work, "prompts.txt")
    with open(path, "w") as f:
        f.write("\n".join(PROMPTS) + "\n")
    want = []
    for p in PROMPTS:
        rc, out, err = pt.run_pldr(["generate", "-m", model, "-p", p, "-n", "12", "-o", "json"])
        want.append(json.loads(out) if rc == 0 else None)
    rc, out, err = pt.run_pldr(["batch", "-m", model, "-f", path, "-n", "12", "--parallel", "3", "-o", "jsonl"])
    got = [json.loads(ln) for ln in out.splitlines()] if rc == 0 else []
    same = len(got) == len(PROMPTS) and all(
        w is not None and g["index"] == i and g["prompt"] == PROMPTS[i] and g["text"] == w["text"] and
        g["tokens"] == w["tokens"] and g["finish_reason"] == w["finish_reason"] for i, (g, w) in enumerate(zip(got, want)))
    tap.ok(same, "pldr batch --parallel 3, %d prompts: greedy texts, tokens and finish reasons equal pldr "
           "generate's on each prompt alone, in input order" % len(PROMPTS), "exit %d\n%s\n%s\n%s" % (rc, err, out, want))
    tap.ok(rc == 0 and "7 sequences" in err and "tokens/s" in err, "pldr batch: the summary on stderr", err)
    jpath = os.path.join(work, "prompts.jsonl")
    with open(jpath, "w") as f:
        for p in PROMPTS[:3]:
            f.write(json.dumps({"prompt": p, "id": "x"}) + "\n")
    rc, out, err = pt.run_pldr(["batch", "-m", model, "-f", jpath, "-n", "12", "--parallel", "2"])
    text = "".join(PROMPTS[i] + want[i]["text"] + "\n\n" for i in range(3)) if all(want[:3]) else None
    tap.ok(rc == 0 and out == text, "pldr batch: JSON-lines input, text output (prompt and continuation per block)",
           "exit %d\n%s\n%r\n%r" % (rc, err, out, text))
    rc, out, err = pt.run_pldr(["batch", "-m", model, "-f", path, "--cache", "none"])
    tap.ok(rc == 2 and "--cache must be kv or kvg" in err, "pldr batch --cache none refused (exit 2)", err)
    # pldr bench -b: one result per (dtype, B), named after its dtype, with
    # the llama-batched-bench columns in md and every series in the svg
    rc, out, err = pt.run_pldr(["bench", "-m", model, "-p", "4", "-n", "2", "-r", "1", "-b", "1,3",
                                "--dtype", "f32,q4_0", "-o", "json"])
    try:
        res = json.loads(out)["results"] if rc == 0 else []
    except ValueError:
        res = []
    keys = sorted((r.get("dtype"), r.get("batch")) for r in res)
    fine = keys == [("f32", 1), ("f32", 3), ("q4_0", 1), ("q4_0", 3)] and all(
        r["s_tg_tps"] > 0 and r["n_kv"] == r["batch"] * 6 and
        abs(r["per_seq_tg_tps"] * r["batch"] - r["s_tg_tps"]) <= 1e-3 * r["s_tg_tps"] for r in res)
    tap.ok(fine, "pldr bench -b 1,3 --dtype f32,q4_0 -o json: a result per dtype and B, aggregate = B x per sequence",
           "exit %d\n%s\n%s" % (rc, err, out))
    svg = os.path.join(work, "b.svg")
    rc, out, err = pt.run_pldr(["bench", "-m", model, "-p", "4", "-n", "2", "-r", "1", "-b", "1,2",
                                "--dtype", "q8_0", "-o", "svg", svg])
    body = open(svg).read() if rc == 0 and os.path.exists(svg) else ""
    tap.ok(rc == 0 and body.startswith("<svg") and body.rstrip().endswith("</svg>") and "q8_0" in body and
           "(null)" not in body, "pldr bench -b 1,2 --dtype q8_0 -o svg: the plot names its series' dtype",
           "exit %d\n%s\n%s" % (rc, err, body[:400]))
    rc, out, err = pt.run_pldr(["bench", "-m", model, "-p", "4", "-n", "2", "-r", "1", "-b", "2", "--dtype", "q8_0"])
    tap.ok(rc == 0 and "| q8_0 | kvg | 4 | 2 | 2 | 12 |" in out, "pldr bench -b 2 --dtype q8_0: the md row names q8_0",
           "exit %d\n%s\n%s" % (rc, err, out))


if __name__ == "__main__":
    sys.exit(main())
