#!/usr/bin/python3
"""Scale-out behind a standard load balancer: Debian's nginx on loopback as
the upstream over two `pldr serve` processes on two free ports (the config
docs/server.md shows), run as the current user with its own pid, log and
temp paths. Requests through nginx must all be right, both replicas must
serve some, streams must pass through, and when one replica stops nginx
must send everything to the other. Skipped when nginx is absent. TAP."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import http.client

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pldrtest as pt  # noqa: E402
import servertest as st  # noqa: E402

MODEL = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs")
PROMPTS = ["To open a file in Python, use", "The list type", "Return the number of", "class Foo(object):"]

CONFIG = """\
# nginx in front of two pldr serve replicas (tests/cli/test_server_nginx.py)
{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream pldr {{
        least_conn;                     # the replica with the fewest requests in flight
        server 127.0.0.1:{p1} max_fails=1 fail_timeout=10s;
        server 127.0.0.1:{p2} max_fails=1 fail_timeout=10s;
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pldr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;        # stream tokens as they come
            proxy_read_timeout 600s;
            # a replica that is down, loading or draining (503 from /health and
            # every endpoint) is skipped and marked failed for fail_timeout
            proxy_next_upstream error timeout http_503;
        }}
    }}
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def nginx_binary():
    for p in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if p and os.access(p, os.X_OK):
            return p
    return None


def main():
    tap = pt.Tap()
    ngx = nginx_binary()
    if not ngx:
        tap.skip("nginx in front of two pldr serve replicas", "nginx is not installed (apt-get install nginx)")
        return tap.done()
    want = {p: st.generate_text(p, 24) for p in PROMPTS}
    d = os.path.join(pt.TESTTMP, "nginx")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    a = st.Server(["-m", MODEL, "--parallel", "2"], name="replica-a")
    b = st.Server(["-m", MODEL, "--parallel", "2"], name="replica-b")
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(CONFIG.format(d=d, p1=a.port, p2=b.port, port=port,
                              user="user root;\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([ngx, "-e", os.path.join(d, "error.log"), "-p", d, "-c", conf],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lb = st.Server.__new__(st.Server)  # the client helpers, pointed at nginx
    lb.port = port
    try:
        t_end = time.time() + 20
        code = 0
        while time.time() < t_end and proc.poll() is None:
            try:
                code = lb.get("/health", timeout=5)[0]
                break
            except OSError:
                time.sleep(0.1)
        if not tap.ok(code == 200, "nginx starts and passes /health through (HTTP %d)" % code,
                      proc.stderr.read() if proc.poll() is not None else ""):
            return tap.done()

        results = []
        lock = threading.Lock()

        def client(k):
            for i in range(4):
                p = PROMPTS[(k + i) % len(PROMPTS)]
                try:
                    if (k + i) % 2:
                        code, chunks, done = lb.stream({"prompt": p, "max_tokens": 24, "temperature": 0})
                        text = st.joined_text(chunks)[0][0] if code == 200 and done else None
                        n_events = len(chunks)
                    else:
                        code, body = lb.complete({"prompt": p, "max_tokens": 24, "temperature": 0})
                        text = body["choices"][0]["text"] if code == 200 else None
                        n_events = 0
                except Exception as e:  # noqa: BLE001 - reported
                    code, text, n_events = repr(e), None, 0
                with lock:
                    results.append((p, code, text, n_events))
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = ["%r: %s %r != %r" % (p, c, t, want[p]) for p, c, t, _ in results if t != want[p]]
        tap.ok(not bad and len(results) == 32, "32 requests through nginx (8 clients, half streamed), every answer "
               "equal to pldr generate's", "\n".join(bad))

        def long_stream():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/v1/completions", body=json.dumps({"prompt": PROMPTS[0], "max_tokens": 200,
                                                                  "ignore_eos": True, "temperature": 0,
                                                                  "stream": True}))
            r = c.getresponse()
            times = [time.time() for ev in st.read_events(r) if ev != "[DONE]"]
            c.close()
            spread = times[-1] - times[0] if times else 0
            return len(times) > 5 and spread > 0, "%d events over %.2f s" % (len(times), spread)
        tap.check("a stream passes through nginx as it is produced", long_stream)
        na = a.stderr().count("POST /v1/completions 200")
        nb = b.stderr().count("POST /v1/completions 200")
        tap.ok(na > 0 and nb > 0 and na + nb >= 32, "both replicas served some (%d and %d)" % (na, nb))

        # one replica goes away: nginx sends everything to the other
        rc_b = b.stop()
        ok = 0
        for i in range(8):
            code, body = lb.complete({"prompt": PROMPTS[i % 4], "max_tokens": 24, "temperature": 0})
            ok += code == 200 and body["choices"][0]["text"] == want[PROMPTS[i % 4]]
        tap.ok(rc_b == 0 and ok == 8, "with one replica stopped, all 8 requests are answered by the other (%d)" % ok)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        a.stop()
        b.stop()
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
