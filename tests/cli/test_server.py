#!/usr/bin/python3
"""pldr serve through real clients over loopback (Python's http.client and
curl) on the bundled model: greedy completions equal `pldr generate`'s text,
streams equal whole answers, concurrent clients equal their sequential runs,
n > 1, a client that goes away frees its slot, every error answer, hostile
input, a bounded load test, /health while loading, shutdown, and the shared
G-cache (--g-cache FILE and first). TAP output."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pldrtest as pt  # noqa: E402
import servertest as st  # noqa: E402

MODEL = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs")
PROMPTS = [
    "To open a file in Python, use",
    "The list type",
    "import os\nimport sys\n\ndef main():",
    "Return the number of",
    "A dictionary maps keys to",
    "class Foo(object):",
    "The function returns",
    "Raises ValueError if",
]
CTX = 512  # the bundled model's max_position_embeddings, the server's default context
LOAD_SECONDS = float(os.environ.get("PLDR_SERVER_LOAD_SECONDS", "30"))


def err_field(body):
    return body.get("error", {}) if isinstance(body, dict) else {}


def check_greedy(tap, sv):
    want = {p: st.generate_text(p, 24) for p in PROMPTS[:4]}

    def greedy():
        bad = []
        for p, w in want.items():
            code, body = sv.complete({"prompt": p, "max_tokens": 24, "temperature": 0})
            got = body["choices"][0]["text"] if code == 200 else body
            if got != w:
                bad.append("%r: server %r, generate %r" % (p, got, w))
        return not bad, "%d prompts" % len(want), "\n".join(bad)
    tap.check("greedy completions equal pldr generate's text", greedy)

    def streamed():
        bad = []
        for p, w in want.items():
            code, chunks, done = sv.stream({"prompt": p, "max_tokens": 24, "temperature": 0})
            texts, finish = st.joined_text(chunks)
            if code != 200 or not done or texts[0] != w or finish[0] not in ("stop", "length"):
                bad.append("%r: %d done=%s %r %r" % (p, code, done, texts, finish))
            if any(c.get("object") != "text_completion" for c in chunks):
                bad.append("a chunk without object text_completion")
        return not bad, "", "\n".join(bad)
    tap.check("streamed chunks joined equal the whole answer, then data: [DONE]", streamed)

    def with_curl():
        rc, out, err = sv.curl(["http://127.0.0.1:%d/v1/completions" % sv.port, "-H", "Content-Type: application/json",
                                "-d", json.dumps({"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0})])
        body = json.loads(out)
        u = body["usage"]
        ok = (rc == 0 and body["choices"][0]["text"] == want[PROMPTS[0]] and body["object"] == "text_completion"
              and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["prompt_tokens"] > 0)
        rc2, out2, _ = sv.curl(["-N", "http://127.0.0.1:%d/v1/completions" % sv.port, "-d",
                                json.dumps({"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0,
                                            "stream": True})])
        events = [ln[6:] for ln in out2.split("\n") if ln.startswith("data: ")]
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        ok = ok and rc2 == 0 and events[-1] == "[DONE]" and text == want[PROMPTS[0]]
        return ok, "curl, whole and streamed", out + "\n" + out2
    tap.check("curl gets the same text, whole and streamed", with_curl)
    return want


def check_concurrent(tap, sv):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
    lengths = [8 + 3 * i for i in range(16)]
    seq = []
    for p, n in zip(prompts, lengths):
        code, body = sv.complete({"prompt": p, "max_tokens": n, "temperature": 0})
        seq.append(body["choices"][0]["text"] if code == 200 else None)
    got = [None] * 16

    def client(i):
        try:
            code, chunks, done = sv.stream({"prompt": prompts[i], "max_tokens": lengths[i], "temperature": 0})
            got[i] = st.joined_text(chunks)[0][0] if code == 200 and done else ("HTTP %d" % code)
        except Exception as e:  # noqa: BLE001 - reported below
            got[i] = repr(e)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = ["client %d: %r != %r" % (i, got[i], seq[i]) for i in range(16) if got[i] != seq[i]]
    tap.ok(not bad and None not in seq, "16 concurrent streaming clients each equal its sequential run",
           "\n".join(bad))


def check_choices(tap, sv, want):
    def n_choices():
        code, body = sv.complete({"prompt": PROMPTS[1], "max_tokens": 16, "temperature": 0.9, "seed": 11, "n": 3})
        code2, body2 = sv.complete({"prompt": PROMPTS[1], "max_tokens": 16, "temperature": 0.9, "seed": 11, "n": 3})
        ch = body["choices"]
        ok = (code == 200 and [c["index"] for c in ch] == [0, 1, 2] and
              [c["text"] for c in ch] == [c["text"] for c in body2["choices"]] and len({c["text"] for c in ch}) > 1)
        code3, body3 = sv.complete({"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0, "n": 2})
        ok = ok and code3 == 200 and [c["text"] for c in body3["choices"]] == [want[PROMPTS[0]]] * 2
        return ok, "3 sampled choices (seeded: repeatable, not all equal), 2 greedy ones", json.dumps(body)
    tap.check("n > 1 gives that many choices", n_choices)

    def prompt_list():
        ps = PROMPTS[:2]
        code, body = sv.complete({"prompt": ps, "max_tokens": 24, "temperature": 0, "echo": True})
        texts = [c["text"] for c in body["choices"]] if code == 200 else []
        return texts == [p + st.generate_text(p, 24) for p in ps], "", json.dumps(body)
    tap.check("an array of prompts gives one choice per prompt (echo prepends the prompt)", prompt_list)

    def token_prompt():
        code, _, data = sv.post("/tokenize", {"content": PROMPTS[0]})
        ids = json.loads(data)["tokens"]
        code2, body = sv.complete({"prompt": ids, "max_tokens": 24, "temperature": 0})
        code3, _, det = sv.post("/detokenize", {"tokens": ids})
        ok = (code == 200 and code2 == 200 and body["choices"][0]["text"] == want[PROMPTS[0]] and
              json.loads(det)["content"] == PROMPTS[0] and body["usage"]["prompt_tokens"] == len(ids))
        return ok, "%d ids" % len(ids), json.dumps(body)
    tap.check("/tokenize, /detokenize, and a prompt of token ids", token_prompt)

    def with_pieces():
        text = "The list type \u00e9"
        ids = json.loads(sv.post("/tokenize", {"content": text})[2])["tokens"]
        code, _, data = sv.post("/tokenize", {"content": text, "with_pieces": True})
        got = json.loads(data)["tokens"]
        det = [json.loads(sv.post("/detokenize", {"tokens": [t["id"]]})[2])["content"] for t in got[:3]]
        ok = (code == 200 and [t["id"] for t in got] == ids and all(isinstance(t["piece"], str) for t in got) and
              "".join(t["piece"] for t in got[:3]).strip() == "The list type" and
              [t["piece"].strip() for t in got[:3]] == [d.strip() for d in det])
        return ok, "", data.decode()
    tap.check("/tokenize with_pieces: the same ids, each with its piece", with_pieces)

    def sampled_seed():
        a = sv.complete({"prompt": PROMPTS[2], "max_tokens": 16, "temperature": 1.0, "top_k": 40, "top_p": 0.9,
                         "seed": 3})[1]
        b = sv.complete({"prompt": PROMPTS[2], "max_tokens": 16, "temperature": 1.0, "top_k": 40, "top_p": 0.9,
                         "seed": 3})[1]
        return a["choices"][0]["text"] == b["choices"][0]["text"], "", json.dumps([a, b])
    tap.check("sampling with a seed repeats", sampled_seed)


def prompt_steps(sv, prompts):
    """Batched steps one request of several prompts (one token each) takes on an idle server."""
    key = [k for k in sv.metrics() if k.startswith("pldr_device_steps_total{")]
    before = sum(sv.metrics()[k] for k in key)
    code, body = sv.complete({"prompt": prompts, "max_tokens": 1, "temperature": 0})
    after = sum(sv.metrics()[k] for k in key)
    return (after - before if code == 200 and len(body["choices"]) == len(prompts) else -1), key


def check_prefill_batch(tap, sv, want):
    """--prefill-batch bounds the prompt tokens prefilled per step: with the
    default (256) four short prompts submitted together are prefilled in one
    step; with 1 in four steps, first come, first served, while the running
    sequences go on decoding. Greedy texts stay those of pldr generate."""
    steps, key = prompt_steps(sv, PROMPTS[:4])
    tap.ok(steps == 1 and len(key) == 1, "default --prefill-batch: four short prompts prefilled in one step "
           "(pldr_device_steps_total +%d)" % steps)
    sv1 = st.Server(["-m", MODEL, "--parallel", "4", "--prefill-batch", "1"], name="prefill")
    try:
        steps, _ = prompt_steps(sv1, PROMPTS[:4])
        tap.ok(steps == 4, "--prefill-batch 1: four prompts prefilled in four steps (+%d)" % steps)
        got = [None] * 8

        def client(i):
            p = PROMPTS[i % 4]
            code, chunks, done = sv1.stream({"prompt": p, "max_tokens": 24, "temperature": 0})
            got[i] = st.joined_text(chunks)[0][0] if code == 200 and done else "HTTP %d" % code
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = ["%r: %r != %r" % (PROMPTS[i % 4], got[i], want[PROMPTS[i % 4]]) for i in range(8)
               if got[i] != want[PROMPTS[i % 4]]]
        tap.ok(not bad, "--prefill-batch 1: 8 concurrent greedy streams equal pldr generate's text", "\n".join(bad))
    finally:
        tap.ok(sv1.stop() == 0, "the --prefill-batch server exits with 0 on SIGTERM")


def check_shape(tap, sv):
    """The fields of OpenAI's completion object, whole and streamed, and the
    usage chunk of stream_options.include_usage."""
    p = PROMPTS[3]
    n_prompt = len(json.loads(sv.post("/tokenize", {"content": p})[2])["tokens"])
    body = {"prompt": p, "max_tokens": 8, "ignore_eos": True, "temperature": 0}

    def whole():
        t0 = time.time()
        code, a = sv.complete(body)
        code2, b = sv.complete(dict(body, n=2))
        t1 = time.time()
        ok = code == 200 and code2 == 200
        for r, n in ((a, 1), (b, 2)):
            ok = ok and r["id"].startswith("cmpl-") and r["object"] == "text_completion"
            ok = ok and isinstance(r["created"], int) and t0 - 2 <= r["created"] <= t1 + 2
            ok = ok and r["model"] == os.path.basename(MODEL)
            ok = ok and [sorted(c) for c in r["choices"]] == [["finish_reason", "index", "logprobs", "text"]] * n
            ok = ok and all(c["finish_reason"] == "length" and c["logprobs"] is None for c in r["choices"])
            ok = ok and r["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 8 * n,
                                       "total_tokens": n_prompt + 8 * n}
        return ok and a["id"] != b["id"], "ids %s, %s" % (a.get("id"), b.get("id")), json.dumps([a, b])
    tap.check("a completion has id, object, created, model, choices and usage (n = 2: twice the tokens)", whole)

    def streamed():
        code, whole_body = sv.complete(body)
        code2, chunks, done = sv.stream(dict(body, n=2, stream_options={"include_usage": True}))
        code3, plain, _ = sv.stream(body)
        last = chunks[-1] if chunks else {}
        ids = {c.get("id") for c in chunks}
        ok = code == 200 and code2 == 200 and done and len(ids) == 1 and ids.pop().startswith("cmpl-")
        ok = ok and all(c["object"] == "text_completion" and c["model"] == os.path.basename(MODEL) and
                        isinstance(c["created"], int) for c in chunks)
        ok = ok and last.get("choices") == [] and last.get("usage") == {
            "prompt_tokens": n_prompt, "completion_tokens": 16, "total_tokens": n_prompt + 16}
        texts, finish = st.joined_text(chunks[:-1], 2)
        want = whole_body["choices"][0]["text"]
        ok = ok and texts == [want, want] and finish == ["length", "length"]
        ok = ok and code3 == 200 and all("usage" not in c for c in plain)
        return ok, "%d chunks, usage %s" % (len(chunks), last.get("usage")), json.dumps(chunks[-3:])
    tap.check("stream chunks share one id; stream_options.include_usage adds a usage chunk (and only then)",
              streamed)


def check_sampling(tap, sv, want):
    p0, w0 = PROMPTS[0], want[PROMPTS[0]]

    def stop():
        cut = w0.index("function")
        code, body = sv.complete({"prompt": p0, "max_tokens": 24, "temperature": 0, "stop": ["function", "zzz"]})
        code2, chunks, done = sv.stream({"prompt": p0, "max_tokens": 24, "temperature": 0, "stop": "function"})
        texts, finish = st.joined_text(chunks)
        c = body["choices"][0]
        return (code == 200 and c["text"] == w0[:cut] and c["finish_reason"] == "stop" and done and
                texts[0] == w0[:cut] and finish[0] == "stop", repr(c["text"]), json.dumps(body))
    tap.check("stop strings end the text before them, whole and streamed", stop)

    def logprobs():
        code, body = sv.complete({"prompt": p0, "max_tokens": 6, "temperature": 0, "logprobs": 3})
        c = body["choices"][0]
        lp = c["logprobs"]
        n = len(lp["tokens"])
        ok = (code == 200 and n == 6 and "".join(lp["tokens"]) == c["text"] and
              len(lp["token_logprobs"]) == n and len(lp["top_logprobs"]) == n and len(lp["text_offset"]) == n)
        for i in range(n):
            top = lp["top_logprobs"][i]
            vals = sorted(top.values(), reverse=True)
            ok = ok and len(top) == 3 and all(v <= 0 for v in vals) and sum(2.718281828 ** v for v in vals) <= 1.0001
            # greedy: the picked token is the most likely one
            ok = ok and abs(lp["token_logprobs"][i] - vals[0]) < 1e-6
            ok = ok and lp["text_offset"][i] == len("".join(lp["tokens"][:i]))
        return ok, "%d tokens" % n, json.dumps(body)
    tap.check("logprobs: each token's log-probability and the top 3, greedy picks the top one", logprobs)

    def echo_logprobs():
        code, body = sv.complete({"prompt": p0, "max_tokens": 6, "temperature": 0, "logprobs": 1, "echo": True})
        c = body["choices"][0]
        lp = c["logprobs"]
        ok = code == 200 and c["text"] == p0 + w0[:len(c["text"]) - len(p0)] and len(lp["tokens"]) == 6
        ok = ok and lp["text_offset"][0] == len(p0) and "".join(lp["tokens"]) == c["text"][len(p0):]
        ok = ok and all(c["text"][o:o + len(t)] == t for o, t in zip(lp["text_offset"], lp["tokens"]))
        return ok, repr(c["text"]), json.dumps(body)
    tap.check("echo with logprobs: the generated tokens' offsets point into the echoed text", echo_logprobs)

    def bias():
        first = json.loads(sv.post("/tokenize", {"content": w0})[2])["tokens"][0]
        code, body = sv.complete({"prompt": p0, "max_tokens": 4, "temperature": 0,
                                  "logit_bias": {str(first): -100}, "logprobs": 0})
        code2, body2 = sv.complete({"prompt": p0, "max_tokens": 4, "temperature": 0, "logit_bias": {"1000": 100}})
        piece = json.loads(sv.post("/detokenize", {"tokens": [1000]})[2])["content"]
        t1 = body["choices"][0]["text"]
        t2 = body2["choices"][0]["text"]
        return (code == 200 and code2 == 200 and not w0.startswith(t1) and t2.strip().startswith(piece.strip()),
                "banned: %r, forced %r: %r" % (t1, piece, t2))
    tap.check("logit_bias bans (-100) and forces (+100) tokens", bias)

    def greedy_equivalents():
        a = sv.complete({"prompt": p0, "max_tokens": 24, "temperature": 1.0, "min_p": 1.0, "seed": 1})[1]
        b = sv.complete({"prompt": p0, "max_tokens": 24, "temperature": 1.5, "top_k": 1, "seed": 2})[1]
        return (a["choices"][0]["text"] == w0 and b["choices"][0]["text"] == w0,
                "min_p 1 and top_k 1 give the greedy text", json.dumps([a, b]))
    tap.check("min_p = 1 and top_k = 1 sample the greedy text", greedy_equivalents)

    def sampled_like_generate():
        bad = []
        for seed, p in ((5, PROMPTS[1]), (17, PROMPTS[3])):
            body = {"prompt": p, "max_tokens": 24, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
                    "presence_penalty": 0.5, "frequency_penalty": 0.3, "repeat_penalty": 1.1, "repeat_last_n": 32,
                    "seed": seed}
            code, b = sv.complete(body)
            got = b["choices"][0]["text"] if code == 200 else b
            rc, out, err = pt.run_pldr(["generate", "-p", p, "-n", 24, "-q", "--temp", 0.8, "--top-k", 40,
                                        "--top-p", 0.9, "--min-p", 0.05, "--presence-penalty", 0.5,
                                        "--frequency-penalty", 0.3, "--repeat-penalty", 1.1, "--repeat-last-n", 32,
                                        "--seed", seed])
            w = out[len(p):-1] if rc == 0 else err
            if got != w:
                bad.append("seed %d %r: server %r, generate %r" % (seed, p, got, w))
        return not bad, "", "\n".join(bad)
    tap.check("sampling (temperature, top_k, top_p, min_p, penalties, seed) equals pldr generate's with the same "
              "settings", sampled_like_generate)

    def penalties():
        outs = []
        for body in ({"frequency_penalty": 1.5}, {"presence_penalty": 2.0}, {"repeat_penalty": 1.8}):
            body.update({"prompt": p0, "max_tokens": 24, "temperature": 0})
            outs.append(sv.complete(body)[1]["choices"][0]["text"])
        return all(o != w0 for o in outs), repr(outs)
    tap.check("frequency, presence and repeat penalties change the greedy text", penalties)


def wait_idle(sv, busy, limit=1.0):
    """Polls the busy slots for up to `limit` seconds until none is busy:
    (the last count, the seconds waited)."""
    t0 = time.time()
    while time.time() - t0 < limit:
        busy = sv.busy_slots()
        if busy == 0:
            break
        time.sleep(0.02)
    return busy, time.time() - t0


def check_disconnect(tap, sv):
    def disconnect():
        before = sv.metrics().get("pldr_generated_tokens_total", 0)
        c = sv.conn()
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": PROMPTS[0], "max_tokens": CTX - 10,
                                                              "ignore_eos": True, "temperature": 0, "stream": True}))
        r = c.getresponse()
        first = next(st.read_events(r))
        busy_during = sv.busy_slots()
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        busy, dt = wait_idle(sv, busy_during)
        time.sleep(0.3)
        log = sv.stderr()
        cancelled = "(client gone, cancelled)" in log
        return (busy_during == 1 and busy == 0 and cancelled and json.loads(first)["choices"],
                "busy %d -> %d in %.2f s" % (busy_during, busy, dt), log[-2000:] + " before %s" % before)
    tap.check("a client that disconnects mid-stream frees its slot within a second", disconnect)

    def disconnect_whole():
        gone_before = sv.stderr().count("(client gone, cancelled)")
        c = sv.conn()
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": PROMPTS[1], "max_tokens": CTX - 10, "n": 4,
                                                              "ignore_eos": True, "temperature": 0}))
        t_end = time.time() + 10
        busy_during = 0
        while time.time() < t_end and busy_during < 4:
            busy_during = sv.busy_slots()
            time.sleep(0.01)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        busy, dt = wait_idle(sv, busy_during)
        time.sleep(0.3)
        gone = sv.stderr().count("(client gone, cancelled)") - gone_before
        return busy_during == 4 and busy == 0 and gone == 1, "busy %d -> %d in %.2f s" % (busy_during, busy, dt)
    tap.check("a client that goes away while waiting for a whole answer (n = 4) frees its slots within a second",
              disconnect_whole)


def check_errors(tap, sv):
    cases = [
        ("malformed JSON", "/v1/completions", "POST", b'{"prompt": "x",', 400, None),
        ("not an object", "/v1/completions", "POST", b'[1, 2]', 400, None),
        ("empty body", "/v1/completions", "POST", b"", 400, None),
        ("no prompt", "/v1/completions", "POST", {"max_tokens": 4}, 400, "prompt"),
        ("empty prompt", "/v1/completions", "POST", {"prompt": ""}, 400, "prompt"),
        ("prompt of the wrong type", "/v1/completions", "POST", {"prompt": {"a": 1}}, 400, "prompt"),
        ("token id out of range", "/v1/completions", "POST", {"prompt": [1, 99999]}, 400, "prompt"),
        ("negative max_tokens", "/v1/completions", "POST", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
        ("enormous max_tokens", "/v1/completions", "POST", {"prompt": "x", "max_tokens": 10 ** 15}, 400, "max_tokens"),
        ("max_tokens beyond int64", "/v1/completions", "POST", b'{"prompt":"x","max_tokens":1e400}', 400, None),
        ("fractional max_tokens", "/v1/completions", "POST", {"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
        ("NaN temperature", "/v1/completions", "POST", b'{"prompt":"x","temperature":NaN}', 400, None),
        ("Infinity top_p", "/v1/completions", "POST", b'{"prompt":"x","top_p":Infinity}', 400, None),
        ("temperature out of range", "/v1/completions", "POST", {"prompt": "x", "temperature": 9}, 400, "temperature"),
        ("temperature as a string", "/v1/completions", "POST", {"prompt": "x", "temperature": "hot"}, 400,
         "temperature"),
        ("top_p of 0", "/v1/completions", "POST", {"prompt": "x", "top_p": 0}, 400, "top_p"),
        ("n of 0", "/v1/completions", "POST", {"prompt": "x", "n": 0}, 400, "n"),
        ("n of 1000", "/v1/completions", "POST", {"prompt": "x", "n": 1000}, 400, "n"),
        ("stream not a bool", "/v1/completions", "POST", {"prompt": "x", "stream": 1}, 400, "stream"),
        ("stop of the wrong type", "/v1/completions", "POST", {"prompt": "x", "stop": 5}, 400, "stop"),
        ("logit_bias key not an id", "/v1/completions", "POST", {"prompt": "x", "logit_bias": {"abc": 1}}, 400,
         "logit_bias"),
        ("logprobs out of range", "/v1/completions", "POST", {"prompt": "x", "logprobs": 99}, 400, "logprobs"),
        ("invalid UTF-8 in a string", "/v1/completions", "POST", b'{"prompt":"\xff\xfe abc"}', 400, None),
        ("a NUL escape", "/v1/completions", "POST", b'{"prompt":"a\\u0000b"}', 400, None),
        ("deeply nested JSON", "/v1/completions", "POST", b'{"prompt":' + b"[" * 5000 + b"]" * 5000 + b"}", 400,
         None),
        ("prompt longer than the context", "/v1/completions", "POST", {"prompt": "word " * (CTX + 10)}, 400, "prompt"),
        ("chat completions", "/v1/chat/completions", "POST", {"messages": [{"role": "user", "content": "hi"}]}, 400,
         None),
        ("unknown path", "/v2/nothing", "GET", None, 404, None),
        ("wrong method", "/v1/completions", "GET", None, 405, None),
        ("wrong method on /health", "/health", "POST", b"{}", 405, None),
        ("tokenize without content", "/tokenize", "POST", {"text": "x"}, 400, "content"),
        ("detokenize with a bad id", "/detokenize", "POST", {"tokens": [-1]}, 400, "tokens"),
        ("body over --max-body", "/v1/completions", "POST", b'{"prompt":"' + b"a" * 70000 + b'"}', 413, None),
    ]
    for desc, path, method, body, want, param in cases:
        def one(path=path, method=method, body=body, want=want, param=param):
            code, hdr, data = sv.request(method, path, body=body)
            try:
                e = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                return False, "HTTP %d, not the error shape" % code, data[:300]
            ok = (code == want and isinstance(e.get("message"), str) and e["message"] and "type" in e and
                  (param is None or e.get("param") == param))
            if want == 405:
                ok = ok and "allow" in hdr
            return ok, "HTTP %d: %s" % (code, e.get("message", "")[:100]), data[:300]
        tap.check("error: %s" % desc, one)

    def context_numbers():
        code, body = sv.complete({"prompt": "word " * (CTX + 10)})
        m = err_field(body).get("message", "")
        return code == 400 and str(CTX) in m and err_field(body).get("code") == "context_length_exceeded", m
    tap.check("a prompt longer than the context is refused with the numbers", context_numbers)

    def chat_points():
        code, _, data = sv.post("/v1/chat/completions", {"messages": []})
        return code == 400 and "/v1/completions" in json.loads(data)["error"]["message"], data.decode().strip()[:200]
    tap.check("/v1/chat/completions points to /v1/completions", chat_points)


def check_hostile(tap, sv):
    def slowloris():
        socks = []
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", sv.port), timeout=10)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(0.5)
        code, _, _ = sv.get("/health", timeout=5)
        # the server's idle timeout (3 s here) closes them
        t_end = time.time() + 8
        closed = 0
        for s in socks:
            try:
                s.settimeout(max(0.1, t_end - time.time()))
                s.sendall(b"X-Slow: 1\r\n")
                closed += s.recv(100) == b""
            except OSError:
                closed += 1
            s.close()
        return code == 200 and closed == len(socks), "/health %d while 12 slow clients hang, %d closed" % (code, closed)
    tap.check("slow clients (slowloris) are closed by the idle timeout; /health answers meanwhile", slowloris)

    def huge_headers():
        s = socket.create_connection(("127.0.0.1", sv.port), timeout=10)
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
        except OSError:
            pass
        try:
            data = s.recv(200)
        except OSError:
            data = b""
        s.close()
        status = int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else 0
        return status in (400, 413, 431) or data == b"", "answer %r" % data[:40]
    tap.check("a 200 kB header is refused or dropped", huge_headers)

    def header_limit():
        out = []
        for size in (60000, 70000):
            s = socket.create_connection(("127.0.0.1", sv.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
            data = s.recv(100)
            s.close()
            out.append(int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else 0)
        return out == [200, 431], "60 kB of headers: %d, 70 kB: %d" % tuple(out)
    tap.check("headers up to 64 KiB are read, beyond it 431", header_limit)

    def chunked_oversize():
        s = socket.create_connection(("127.0.0.1", sv.port), timeout=20)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            s.sendall(b"1000\r\n" + b"a" * 4096 + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        data = s.recv(300)
        s.close()
        return data.startswith(b"HTTP/1.1 413"), "answer %r" % data[:40]
    tap.check("a chunked body over --max-body is answered 413", chunked_oversize)

    def still_healthy():
        code, _, data = sv.get("/health")
        return code == 200 and json.loads(data)["status"] == "ok", data.decode().strip()
    tap.check("/health still answers after every error and hostile client", still_healthy)


def check_load(tap, sv):
    """32 clients for LOAD_SECONDS: mixed prompt lengths, sampling settings,
    streaming or not, some disconnecting early."""
    stop = time.time() + LOAD_SECONDS
    warm_at = time.time() + min(8.0, LOAD_SECONDS / 3)
    rss = {}
    stats = {"ok": 0, "5xx": 0, "other": 0, "errors": []}
    lock = threading.Lock()

    def client(k):
        i = 0
        while time.time() < stop:
            i += 1
            p = " ".join(PROMPTS[(k + i) % len(PROMPTS)] for _ in range(1 + (k * 7 + i) % 6))
            body = {"prompt": p, "max_tokens": 4 + (k * 13 + i * 5) % 40}
            if (k + i) % 3:
                body.update({"temperature": 0.7, "top_k": (k % 5) * 10, "top_p": 0.95, "seed": k * 100 + i})
            else:
                body["temperature"] = 0
            if k % 4 == 1:
                body["n"] = 2
            try:
                if k % 2:
                    code, chunks, done = sv.stream(body, timeout=60)
                    good = code == 200 and done
                elif k % 8 == 6 and i % 3 == 0:
                    c = sv.conn(60)
                    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)))
                    c.getresponse().read(50)
                    c.close()
                    code, good = 200, True
                else:
                    code, resp = sv.complete(body, timeout=60)
                    good = code == 200 and len(resp["choices"]) == body.get("n", 1)
                with lock:
                    if code >= 500:
                        stats["5xx"] += 1
                    elif good:
                        stats["ok"] += 1
                    else:
                        stats["other"] += 1
                        stats["errors"].append("HTTP %d %s" % (code, body))
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    stats["other"] += 1
                    stats["errors"].append(repr(e))
            if "warm" not in rss and time.time() >= warm_at:
                with lock:
                    rss.setdefault("warm", sv.rss_kib())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss["end"] = sv.rss_kib()
    tap.ok(stats["5xx"] == 0 and stats["other"] == 0 and stats["ok"] > 32,
           "load: 32 clients for %.0f s, %d answers, %d 5xx, %d other" % (LOAD_SECONDS, stats["ok"], stats["5xx"],
                                                                       stats["other"]),
           "\n".join(stats["errors"][:10]))
    warm, end = rss.get("warm", 0), rss["end"]
    # under AddressSanitizer freed memory stays in its quarantine (256 MiB by default) for a while
    slack = 300 * 1024 if "ASAN_OPTIONS" in os.environ else 16384
    tap.ok(warm > 0 and end <= warm * 1.10 + slack,
           "load: resident memory flat after the warm-up (%d -> %d KiB)" % (warm, end))
    code, _, data = sv.get("/health")
    tap.ok(code == 200 and json.loads(data)["slots_processing"] == 0, "load: every slot idle afterwards",
           data.decode())


def check_queue_full(tap):
    sv = st.Server(["-m", MODEL, "--parallel", "1", "--max-queue", "1"], name="queue")
    try:
        def full():
            c = sv.conn()
            c.request("POST", "/v1/completions", body=json.dumps({"prompt": PROMPTS[0], "max_tokens": CTX - 10,
                                                                  "ignore_eos": True, "stream": True}))
            r = c.getresponse()
            next(st.read_events(r))
            # the queue holds one: the first waits, the second is refused
            w = socket.create_connection(("127.0.0.1", sv.port))
            body = json.dumps({"prompt": "x", "max_tokens": 4}).encode()
            w.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            t_end = time.time() + 5
            while time.time() < t_end and sv.metrics().get("pldr_queue_length", 0) < 1:
                time.sleep(0.02)
            code, hdr, data = sv.post("/v1/completions", {"prompt": "x", "max_tokens": 4})
            c.close()
            w.close()
            return (code == 503 and "retry-after" in hdr and json.loads(data)["error"]["message"],
                    "HTTP %d Retry-After %s" % (code, hdr.get("retry-after")), data)
        tap.check("503 with Retry-After when every slot is busy and the queue is full", full)

        def queued_gone():
            t_end = time.time() + 10
            while time.time() < t_end and json.loads(sv.get("/health")[2])["slots_idle"] < 1:
                time.sleep(0.05)
            c = sv.conn()
            c.request("POST", "/v1/completions", body=json.dumps({"prompt": PROMPTS[0], "max_tokens": 500,
                                                                  "ignore_eos": True, "stream": True}))
            r = c.getresponse()
            next(st.read_events(r))
            s = socket.create_connection(("127.0.0.1", sv.port))
            body = json.dumps({"prompt": PROMPTS[1], "max_tokens": 5}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.1)
            s.close()
            time.sleep(0.2)
            c.close()
            t_end = time.time() + 5
            while time.time() < t_end and sv.busy_slots() > 0:
                time.sleep(0.05)
            time.sleep(0.3)
            n_b = len(json.loads(sv.post("/tokenize", {"content": PROMPTS[1]})[2])["tokens"])
            gone = [ln for ln in sv.stderr().splitlines() if " 499 prompt=%d generated=0 " % n_b in ln]
            return len(gone) == 1, gone[0] if gone else "", sv.stderr()[-1500:]
        tap.check("a waiting client that goes away is never run (logged as 499)", queued_gone)
    finally:
        tap.ok(sv.stop() == 0, "the queue test server exits with 0 on SIGTERM")


def check_auth(tap):
    keyfile = os.path.join(pt.TESTTMP, "server-key")
    with open(keyfile, "w") as f:
        f.write("s3cret-key\n")
    sv = st.Server(["-m", MODEL, "--api-key-file", keyfile, "--parallel", "1"], name="auth")
    try:
        def auth():
            c1, _, _ = sv.post("/v1/completions", {"prompt": "x", "max_tokens": 2})
            c2, h2, d2 = sv.post("/v1/completions", {"prompt": "x", "max_tokens": 2},
                                 headers={"Authorization": "Bearer wrong"})
            c3, _, _ = sv.post("/v1/completions", {"prompt": "x", "max_tokens": 2},
                               headers={"Authorization": "Bearer s3cret-key"})
            c4, _, _ = sv.get("/health")
            c5, _, _ = sv.get("/v1/models")
            ok = c1 == 401 and c2 == 401 and c3 == 200 and c4 == 200 and c5 == 401
            ok = ok and json.loads(d2)["error"]["type"] == "authentication_error"
            return ok, "no key %d, wrong key %d, right key %d, /health %d, /v1/models %d" % (c1, c2, c3, c4, c5)
        tap.check("--api-key-file: 401 without the key or with a wrong one, /health open", auth)
    finally:
        sv.stop()


def check_loading(tap):
    """/health answers 503 while the model loads: the model directory's
    tokenizer_config.json is a FIFO the server blocks on until written."""
    d = os.path.join(pt.TESTTMP, "server-fifo-model")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in os.listdir(MODEL):
        os.symlink(os.path.join(MODEL, f), os.path.join(d, f))
    fifo = os.path.join(d, "tokenizer_config.json")
    os.mkfifo(fifo)
    sv = st.Server(["-m", d, "--parallel", "1"], name="loading", wait_ready=False)
    try:
        port = sv.loading_port()
        sv.port = port
        code, _, data = sv.get("/health", timeout=10)
        code2, _, _ = sv.post("/v1/completions", {"prompt": "x"}, timeout=10)
        with open(fifo, "w") as f:
            f.write('{"add_bos_token": true, "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}')
        sv.wait_ready()
        code3, _, data3 = sv.get("/health")
        code4, _, data4 = sv.post("/v1/chat/completions", {"messages": []})
        msg = json.loads(data4)["error"]["message"]
        tap.ok(code == 503 and code2 == 503 and code3 == 200,
               "/health: 503 while loading (completions too), 200 when ready",
               "%d %s / %d / %d %s" % (code, data, code2, code3, data3))
        tap.ok(code4 == 400 and "{% for m in messages %}" in msg and "/v1/completions" in msg,
               "a chat template in tokenizer_config.json is named in the refusal", msg)
        code5, body5 = sv.complete({"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0})
        os.unlink(fifo)
        with open(fifo, "w") as f:
            f.write('{"add_bos_token": true}')
        want = st.generate_text(PROMPTS[0], 24, model=d)
        n_plain = len(json.loads(sv.post("/tokenize", {"content": PROMPTS[0]})[2])["tokens"])
        tap.ok(code5 == 200 and body5["choices"][0]["text"] == want and body5["usage"]["prompt_tokens"] == n_plain + 1,
               "add_bos_token in tokenizer_config.json: BOS before the prompt, as pldr generate does",
               "%s\nwant %r" % (body5, want))
    finally:
        sv.stop()


def check_replicas(tap, want):
    """Two replicas (here both on the one device): requests go to the one
    with the most free slots, so concurrent requests use both."""
    sv = st.Server(["-m", MODEL, "--device", "0,0", "--parallel", "1", "--ctx", CTX], name="replicas")
    try:
        out = [None] * 6

        def client(i):
            out[i] = sv.complete({"prompt": PROMPTS[i % 2], "max_tokens": 24, "temperature": 0})
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        right = sum(c == 200 and b["choices"][0]["text"] == want[PROMPTS[i % 2]] for i, (c, b) in enumerate(out))
        m = sv.metrics()
        seqs = [v for k, v in sorted(m.items()) if k.startswith("pldr_device_sequences_total{")]
        models = json.loads(sv.get("/v1/models")[2])["data"][0]["meta"]["replicas"]
        tap.ok(right == 6 and len(seqs) == 2 and min(seqs) > 0 and models == 2,
               "--device 0,0: two replicas, 6 concurrent requests all right, both used (%s)" % seqs)
    finally:
        sv.stop()


def check_shutdown(tap):
    sv = st.Server(["-m", MODEL, "--parallel", "2", "--timeout", "20"], name="shutdown")
    result = {}

    def long_request():  # 4 x 400 tokens through 2 slots: some seconds of work
        result["r"] = sv.complete({"prompt": PROMPTS[0], "max_tokens": 400, "n": 4, "ignore_eos": True,
                                   "temperature": 0})
    t = threading.Thread(target=long_request)
    # a keep-alive connection opened before the signal, to ask /health while draining
    keep = sv.conn(10)
    keep.request("GET", "/health")
    r = keep.getresponse()
    r.read()
    health_before = r.status
    t.start()
    while sv.busy_slots() == 0 and t.is_alive():
        time.sleep(0.01)
    t0 = time.time()
    sv.proc.send_signal(signal.SIGTERM)
    t_end = time.time() + 5
    while time.time() < t_end and "SIGTERM: finishing" not in sv.stderr():
        time.sleep(0.01)
    health_draining, draining_body = 0, b""
    t_end = time.time() + 2
    while time.time() < t_end and health_draining != 503:
        try:
            keep.request("GET", "/health")
            r = keep.getresponse()
            health_draining, draining_body = r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            health_draining, draining_body = 0, repr(e).encode()
            break
    keep.close()
    # the listening socket closes just after /health turns 503
    refused = False
    t_end = time.time() + 2
    while time.time() < t_end and not refused:
        try:
            socket.create_connection(("127.0.0.1", sv.port), timeout=2).close()
            time.sleep(0.02)
        except OSError:
            refused = True
    rc = sv.stop()
    t.join()
    code, body = result.get("r", (0, None))
    tap.ok(rc == 0 and code == 200 and body["usage"]["completion_tokens"] == 1600,
           "SIGTERM lets the running request finish, then exits with 0 (%.1f s)" % (time.time() - t0),
           "rc %s, %s" % (rc, body))
    tap.ok(health_before == 200 and health_draining == 503 and b"shutting down" in draining_body and refused,
           "while draining: /health 503 shutting down, new connections refused",
           "%s %s %s %s" % (health_before, health_draining, draining_body, refused))


def check_shutdown_timeout(tap):
    """SIGINT with more work than --timeout allows: the server stops within
    the timeout, answers what it has (the unfinished choices without a
    finish_reason, the stream closed with [DONE]) and exits with 0."""
    sv = st.Server(["-m", MODEL, "--parallel", "1", "--timeout", "1"], name="shutdown-timeout")
    result = {}
    # 8 + 8 sequences of CTX - 10 tokens through one slot: many seconds of work
    body = {"prompt": PROMPTS[0], "max_tokens": CTX - 10, "ignore_eos": True, "temperature": 0, "n": 8}

    def whole():
        result["whole"] = sv.complete(body)

    def streamed():
        result["stream"] = sv.stream(body)
    threads = [threading.Thread(target=whole), threading.Thread(target=streamed)]
    for t in threads:
        t.start()
    t_end = time.time() + 30
    while time.time() < t_end and sum(v for k, v in sv.metrics().items()
                                      if k.startswith("pldr_device_generated_tokens_total")) < 10:
        time.sleep(0.02)
    t0 = time.time()
    sv.proc.send_signal(signal.SIGINT)
    rc = sv.stop()
    dt = time.time() - t0
    for t in threads:
        t.join()
    code, b = result.get("whole", (0, {}))
    scode, chunks, done = result.get("stream", (0, [], False))
    finish = [c["finish_reason"] for c in b.get("choices", [])] if code == 200 else []
    sfinish = st.joined_text(chunks, 8)[1] if scode == 200 else []
    tap.ok(rc == 0 and dt < 5 and code == 200 and len(finish) == 8 and None in finish and scode == 200 and done and
           None in sfinish and "SIGINT" in sv.stderr(),
           "SIGINT past --timeout 1: stopped in %.1f s, exit %s, unfinished choices answered without a "
           "finish_reason (%s / %s)" % (dt, rc, finish, sfinish), sv.stderr()[-1500:])


def check_all_devices(tap, want):
    """--device all: a replica on every device `pldr devices` lists, each in
    /metrics and /v1/models; --api-key given on the command line."""
    rc, out, _ = pt.run_pldr(["devices"])
    n_dev = len([ln for ln in out.splitlines()[1:] if ln.strip() and ln.split()[0].isdigit()])
    sv = st.Server(["-m", MODEL, "--device", "all", "--parallel", "1", "--api-key", "k3y"], name="all")
    try:
        auth = {"Authorization": "Bearer k3y"}
        code, _, data = sv.get("/v1/models", headers=auth)
        code401, _, _ = sv.get("/v1/models")
        reps = json.loads(data)["data"][0]["meta"]["replicas"] if code == 200 else -1
        code2, body = sv.complete({"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0}, headers=auth)
        _, _, mdata = sv.get("/metrics", headers=auth)
        slots = [ln for ln in mdata.decode().splitlines() if ln.startswith("pldr_slots{")]
        tap.ok(rc == 0 and n_dev >= 1 and reps == n_dev and len(slots) == n_dev and code401 == 401 and code2 == 200 and
               body["choices"][0]["text"] == want[PROMPTS[0]],
               "--device all: %d replica(s) for %d device(s), in /metrics; --api-key: 401 without it, the greedy "
               "text with it" % (reps, n_dev), "\n".join(slots))
    finally:
        sv.stop()


def check_dtype_cache(tap):
    """--dtype and --cache reach the replicas: greedy texts equal pldr
    generate's with the same options."""
    sv = st.Server(["-m", MODEL, "--parallel", "2", "--dtype", "f16", "--cache", "kv"], name="f16kv")
    try:
        bad = []
        for p in PROMPTS[:2]:
            rc, out, err = pt.run_pldr(["generate", "-p", p, "-n", 24, "-q", "--dtype", "f16", "--cache", "kv"])
            w = out[len(p):-1] if rc == 0 else err
            code, body = sv.complete({"prompt": p, "max_tokens": 24, "temperature": 0})
            got = body["choices"][0]["text"] if code == 200 else body
            if got != w:
                bad.append("%r: server %r, generate %r" % (p, got, w))
        tap.ok(not bad, "--dtype f16 --cache kv: greedy texts equal pldr generate's with those options",
               "\n".join(bad))
    finally:
        sv.stop()


def check_connection_limit(tap):
    """--max-connections 4: at most 2 (half) from one client address; a
    third is closed unanswered while two hang, and served once they go."""
    sv = st.Server(["-m", MODEL, "--parallel", "1", "--max-connections", "4"], name="conns")
    try:
        hang = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", sv.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            hang.append(s)
        time.sleep(0.2)
        s = socket.create_connection(("127.0.0.1", sv.port), timeout=10)
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            third = s.recv(100)
        except OSError:
            third = b""
        s.close()
        for s in hang:
            s.close()
        time.sleep(0.3)
        code, _, _ = sv.get("/health", timeout=10)
        tap.ok(third == b"" and code == 200, "--max-connections 4: a third connection from one address is closed "
               "while two hang (%r); /health %d once they go" % (third[:20], code))
    finally:
        sv.stop()


def check_ipv6(tap):
    """--host ::1: the ready line names [::1] and a client reaches it over
    IPv6 (skipped where the machine has no IPv6 loopback)."""
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as e:
        tap.skip("--host ::1", "no IPv6 loopback: %s" % e)
        return
    log = open(os.path.join(pt.TESTTMP, "server-ipv6-%d.log" % os.getpid()), "w")
    proc = subprocess.Popen([pt.PLDR_BIN, "serve", "-m", MODEL, "--host", "::1", "--port", "0", "--parallel", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://\[::1\]:(\d+)", line)
        code = 0
        if m:
            c = http.client.HTTPConnection("::1", int(m.group(1)), timeout=30)
            c.request("GET", "/health")
            code = c.getresponse().status
            c.close()
        tap.ok(m is not None and code == 200, "--host ::1: listening on [::1], /health %d over IPv6" % code, line)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


def check_gcache(tap):
    """--g-cache first: the first prompt's G-cache serves every later prompt,
    on every replica, as `pldr generate --g-cache` with the G-cache that
    `pldr gcache export` writes for that prompt; --g-cache FILE the same with
    a file. The later prompts are ones whose greedy text changes under the
    first prompt's G-cache, so a server that ignored it would fail."""
    gfile = os.path.join(pt.TESTTMP, "server-first.g.safetensors")
    rc, _, err = pt.run_pldr(["gcache", "export", "-p", PROMPTS[0], "-o", gfile])
    if rc != 0:
        tap.ok(False, "pldr gcache export for the G-cache tests", err)
        return
    later = [PROMPTS[5], PROMPTS[2]]
    n = 40
    own = {p: st.generate_text(p, n) for p in [PROMPTS[0]] + later}
    shared = {}
    for p in later:
        r, out, err = pt.run_pldr(["generate", "-p", p, "-n", n, "-q", "--g-cache", gfile])
        shared[p] = out[len(p):-1] if r == 0 else err
    tap.ok(all(shared[p] != own[p] for p in later), "the later prompts' greedy texts change under the first's G-cache",
           json.dumps([own, shared]))

    # two replicas of two slots: after the first request, one of four prompts,
    # whose sequences go to the replicas with the most free slots: two each
    sv = st.Server(["-m", MODEL, "--device", "0,0", "--parallel", "2", "--g-cache", "first"], name="gfirst")
    try:
        code, body = sv.complete({"prompt": PROMPTS[0], "max_tokens": n, "temperature": 0})
        first = body["choices"][0]["text"] if code == 200 else body
        code, body = sv.complete({"prompt": later * 2, "max_tokens": n, "temperature": 0})
        out = [c["text"] for c in body["choices"]] if code == 200 else [body] * 4
        seqs = [v for k, v in sorted(sv.metrics().items()) if k.startswith("pldr_device_sequences_total{")]
        bad = ["%r: %r != %r" % (later[i % 2], out[i], shared[later[i % 2]]) for i in range(4)
               if out[i] != shared[later[i % 2]]]
        tap.ok(first == own[PROMPTS[0]], "--g-cache first: the first request's text is its own (pldr generate)",
               "%r != %r" % (first, own[PROMPTS[0]]))
        tap.ok(not bad and len(seqs) == 2 and min(seqs) > 0,
               "--g-cache first: later requests on both replicas equal pldr generate --g-cache with the first "
               "prompt's exported G-cache (sequences per replica %s)" % seqs, "\n".join(bad))
    finally:
        tap.ok(sv.stop() == 0, "the --g-cache first server exits with 0 on SIGTERM")

    sv = st.Server(["-m", MODEL, "--parallel", "2", "--g-cache", gfile], name="gfile")
    try:
        got = [sv.complete({"prompt": p, "max_tokens": n, "temperature": 0})[1] for p in [PROMPTS[0]] + later]
        texts = [b["choices"][0]["text"] if isinstance(b, dict) and "choices" in b else b for b in got]
        want = [own[PROMPTS[0]]] + [shared[p] for p in later]
        tap.ok(texts == want, "--g-cache FILE: every request equals pldr generate --g-cache FILE",
               json.dumps([texts, want]))
    finally:
        sv.stop()


def check_command_line(tap):
    """Bad command lines: a one-line message naming the option, the
    documented exit code, nothing on stdout, no server left running."""
    keyfile = os.path.join(pt.TESTTMP, "server-empty-key")
    with open(keyfile, "w") as f:
        f.write("\n  \n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = [
        (["--port", "70000"], 2, "--port"),
        (["--port"], 2, "--port"),
        (["--parallel", "0"], 2, "--parallel"),
        (["--prefill-batch", "0"], 2, "--prefill-batch"),
        (["--cache", "none"], 2, "--cache"),
        (["--dtype", "q9"], 2, "--dtype"),
        (["--timeout", "0"], 2, "--timeout"),
        (["--max-body", "10"], 2, "--max-body"),
        (["--max-queue", "-1"], 2, "--max-queue"),
        (["--api-key", "k", "--api-key-file", keyfile], 2, "--api-key-file"),
        (["--api-key="], 2, "--api-key"),
        (["--g-cache", "first", "--g-cache", keyfile], 2, "--g-cache"),
        (["--frob"], 2, "--frob"),
        (["--host", "nosuch.invalid", "--port", "0"], 2, "--host"),
        (["extra"], 2, "extra"),
        (["--api-key-file", keyfile], 3, keyfile),
        (["--api-key-file", os.path.join(pt.TESTTMP, "no-such-key")], 3, "no-such-key"),
        (["-m", os.path.join(pt.TESTTMP, "no-such-model")], 3, "no-such-model"),
        (["--g-cache", os.path.join(pt.TESTTMP, "no-such-gcache"), "--port", "0"], 3, "no-such-gcache"),
        (["--device", "nosuchdevice", "--port", "0"], 4, "nosuchdevice"),
        (["--port", str(busy.getsockname()[1])], 1, "Address already in use"),
    ]
    try:
        for args, want, needle in cases:
            def one(args=args, want=want, needle=needle):
                rc, out, err = pt.run_pldr(["serve"] + args, timeout=120)
                lines = [ln for ln in err.splitlines() if ln.startswith("pldr")]
                last = lines[-1] if lines else ""
                return rc == want and out == "" and needle in last, "exit %d: %s" % (rc, last), err
            tap.check("pldr serve %s: exit %d with a message" % (" ".join(args), want), one)
    finally:
        busy.close()


def main():
    tap = pt.Tap()
    if not pt.have_pldr():
        tap.skip("pldr serve", "pldr binary not found")
        return tap.done()
    sv = st.Server(["-m", MODEL, "--parallel", "4", "--max-body", "65536", "--timeout", "3",
                    "--max-queue", "200"])
    try:
        tap.ok(sv.ready_line.startswith("pldr serve: listening on http://127.0.0.1:%d" % sv.port),
               "one ready line with the address: " + sv.ready_line.strip())
        want = check_greedy(tap, sv)
        check_concurrent(tap, sv)
        check_choices(tap, sv, want)
        check_prefill_batch(tap, sv, want)
        check_shape(tap, sv)
        check_sampling(tap, sv, want)
        check_disconnect(tap, sv)
        check_errors(tap, sv)
        check_hostile(tap, sv)
        check_load(tap, sv)

        def metrics():
            m = sv.metrics()
            keys = ["pldr_requests_total{status=\"200\"}", "pldr_requests_total{status=\"400\"}",
                    "pldr_prompt_tokens_total", "pldr_generated_tokens_total", "pldr_queue_length",
                    "pldr_request_seconds_total"]
            dev = [k for k in m if k.startswith("pldr_slots_busy{replica=\"0\",device=")]
            ok = all(k in m for k in keys) and m[keys[0]] > 50 and m[keys[3]] > 100 and dev
            return ok, "", "\n".join("%s %s" % kv for kv in sorted(m.items()))
        tap.check("/metrics: requests by status, tokens, seconds, queue, busy slots per device", metrics)

        log = sv.stderr()
        lines = [ln for ln in log.splitlines() if "POST /v1/completions 200 prompt=" in ln]
        tap.ok(len(lines) > 50, "one log line per request on stderr (%d completions)" % len(lines), log[-1000:])
    finally:
        rc = sv.stop()
    tap.ok(rc == 0, "the server exits with 0 on SIGTERM", sv.stderr()[-1500:])
    check_queue_full(tap)
    check_auth(tap)
    check_loading(tap)
    check_replicas(tap, want)
    check_shutdown(tap)
    check_shutdown_timeout(tap)
    check_gcache(tap)
    check_ipv6(tap)
    check_connection_limit(tap)
    check_all_devices(tap, want)
    check_dtype_cache(tap)
    check_command_line(tap)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
