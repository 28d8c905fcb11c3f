"""Helpers of the server tests: a `pldr serve` process on a free loopback
port, and small HTTP clients (Python's http.client and curl) that speak to it
over real sockets."""

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time

import pldrtest as pt

START_TIMEOUT = float(os.environ.get("PLDR_TEST_TIMEOUT", "900"))


class Server:
    """`pldr serve --port 0 ARGS`; the port comes from the ready line."""

    def __init__(self, args, name="serve", env=None, wait_ready=True):
        self.log_path = os.path.join(pt.TESTTMP, "server-%s-%d.log" % (name, os.getpid()))
        self.log = open(self.log_path, "w+")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen([pt.PLDR_BIN, "serve", "--port", "0"] + [str(a) for a in args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=e)
        self.port = None
        self.ready_line = None
        if wait_ready:
            self.wait_ready()

    def loading_port(self, timeout=30):
        """The port named by the line printed before the model loads."""
        t_end = time.time() + timeout
        while time.time() < t_end:
            m = re.search(r"http://127\.0\.0\.1:(\d+)/health answers 503", self.stderr())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("no loading line:\n" + self.stderr())

    def wait_ready(self):
        box = {}

        def reader():
            box["line"] = self.proc.stdout.readline()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(START_TIMEOUT)
        line = box.get("line") or ""
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.kill()
            raise RuntimeError("the server did not start: %r\n%s" % (line, self.stderr()))
        self.ready_line = line
        self.port = int(m.group(1))

    def stderr(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout=60):
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        self.proc.stdout.close()
        self.log.close()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # ---------------------------------------------------------------- clients

    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """Returns (status, headers dict, body bytes)."""
        c = self.conn(timeout)
        try:
            h = dict(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
                h.setdefault("Content-Type", "application/json")
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body=body, **kw)

    def complete(self, body, **kw):
        """POST /v1/completions; returns (status, parsed JSON or raw body)."""
        st, _, data = self.post("/v1/completions", body, **kw)
        try:
            return st, json.loads(data)
        except ValueError:
            return st, data

    def stream(self, body, headers=None, timeout=120):
        """A streamed completion: returns (status, [chunk dicts], saw [DONE])."""
        c = self.conn(timeout)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)), headers=h)
            r = c.getresponse()
            if r.status != 200:
                return r.status, [json.loads(r.read())], False
            chunks, done = [], False
            for ev in read_events(r):
                if ev == "[DONE]":
                    done = True
                    break
                chunks.append(json.loads(ev))
            return r.status, chunks, done
        finally:
            c.close()

    def metrics(self):
        """The /metrics samples as {'name{labels}': value}."""
        st, _, data = self.get("/metrics")
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def busy_slots(self):
        return sum(v for k, v in self.metrics().items() if k.startswith("pldr_slots_busy{"))

    def curl(self, args, timeout=120):
        p = subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + args, capture_output=True, text=True,
                           errors="replace", timeout=timeout + 10)
        return p.returncode, p.stdout, p.stderr


def read_events(resp):
    """The data: payloads of a server-sent-event stream, as they come."""
    buf = b""
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data: "):
            buf = line[6:]
        elif line == b"" and buf:
            yield buf.decode()
            buf = b""


def joined_text(chunks, n_choices=1):
    """Each choice's text from stream chunks, and its finish_reason."""
    texts = [""] * n_choices
    finish = [None] * n_choices
    for ch in chunks:
        for c in ch.get("choices", []):
            texts[c["index"]] += c["text"]
            if c.get("finish_reason"):
                finish[c["index"]] = c["finish_reason"]
    return texts, finish


def generate_text(prompt, n, model=None):
    """`pldr generate`'s continuation of prompt (greedy, n tokens at most)."""
    args = ["generate", "-p", prompt, "-n", n, "-q"] + (["-m", model] if model else [])
    rc, out, err = pt.run_pldr(args)
    if rc != 0:
        raise RuntimeError("pldr generate failed: %s" % err)
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]
