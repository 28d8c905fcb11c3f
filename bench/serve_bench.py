#!/usr/bin/env python3
"""Load generator for `pldr serve`: C concurrent clients, each sending R
streamed greedy completions (a fixed prompt of about P tokens, exactly N
generated tokens with ignore_eos) back to back. Prints, per concurrency, the
aggregate generated tokens per second over the whole run, and the time to
first token (TTFT: request sent -> first text) and time per output token
(TPOT: (last text - first text) / (tokens - 1)) at p50 and p99 over requests.
Standard library only.

    bench/serve_bench.py --url http://127.0.0.1:8080 --clients 1,4,16,64 \\
        --requests 4 --prompt-tokens 64 --max-tokens 64
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse

WORDS = ("the model reads a file and returns the number of tokens in each line of the text "
         "with a list of values and a dictionary of keys").split()


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, body):
    """Returns (ttft, tpot or None, completion tokens)."""
    c = http.client.HTTPConnection(host, port, timeout=3600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError("HTTP %d: %s" % (r.status, r.read()[:200]))
    t_first = t_last = None
    tokens = 0
    while True:
        line = r.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        for ch in ev.get("choices", []):
            if ch.get("text"):
                now = time.perf_counter()
                t_first = t_first or now
                t_last = now
    c.close()
    ttft = (t_first or time.perf_counter()) - t0
    tpot = (t_last - t_first) / (tokens - 1) if tokens > 1 and t_first else None
    return ttft, tpot, tokens


def run(host, port, clients, requests, prompt, max_tokens):
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    ttfts, tpots, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def client():
        for _ in range(requests):
            try:
                a, b, n = one_request(host, port, body)
            except Exception as e:  # noqa: BLE001 - reported
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                ttfts.append(a)
                if b is not None:
                    tpots.append(b)
                tokens[0] += n
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": clients * requests, "tokens": tokens[0], "wall": wall,
            "tok_s": tokens[0] / wall, "ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99),
            "tpot_p50": percentile(tpots, 0.5), "tpot_p99": percentile(tpots, 0.99), "errors": errors}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", default="1,4,16,64", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=4, help="requests per client at each level")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="about this many prompt tokens")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--warmup", type=int, default=1, help="requests before the first level")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    prompt = " ".join(WORDS[i % len(WORDS)] for i in range(a.prompt_tokens))
    for _ in range(a.warmup):
        one_request(host, port, {"prompt": prompt, "max_tokens": 4, "stream": True, "temperature": 0})
    print("| clients | requests | generated tokens | seconds | aggregate tok/s | TTFT p50 ms | TTFT p99 ms "
          "| TPOT p50 ms | TPOT p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for c in [int(x) for x in a.clients.split(",")]:
        r = run(host, port, c, a.requests, prompt, a.max_tokens)
        results.append(r)
        print("| %d | %d | %d | %.1f | %.1f | %.0f | %.0f | %.1f | %.1f |%s" % (
            c, r["requests"], r["tokens"], r["wall"], r["tok_s"], 1e3 * r["ttft_p50"], 1e3 * r["ttft_p99"],
            1e3 * r["tpot_p50"], 1e3 * r["tpot_p99"],
            " %d errors: %s" % (len(r["errors"]), r["errors"][0]) if r["errors"] else ""), flush=True)
    if results and results[0]["tok_s"] > 0:
        print("\naggregate against %d client%s: %s" % (
            results[0]["clients"], "s" if results[0]["clients"] > 1 else "",
            ", ".join("%d: %.2fx" % (r["clients"], r["tok_s"] / results[0]["tok_s"]) for r in results[1:])))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
