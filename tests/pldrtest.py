"""Small helpers for the Python TAP tests (run by Automake's tap-driver.sh).

Environment (set by `make check`):
    PLDR_BIN      the built pldr binary
    PLDR_SRCDIR   the source root
    PLDR_TESTTMP  a scratch directory the tests may create subdirectories in
"""

import os
import subprocess
import sys
import traceback

import numpy as np

PLDR_BIN = os.environ.get("PLDR_BIN") or os.path.join(os.environ.get("PLDR_SRCDIR", "."), "pldr")
SRCDIR = os.environ.get("PLDR_SRCDIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTTMP = os.environ.get("PLDR_TESTTMP") or os.path.join(os.getcwd(), "tests", "tmp")
# Seconds one pldr invocation may take (PoCL compiles kernels on first use).
TIMEOUT = float(os.environ.get("PLDR_TEST_TIMEOUT", "900"))


class Tap:
    """TAP producer; the plan is printed at the end (done())."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def _line(self, s):
        sys.stdout.write(s + "\n")
        sys.stdout.flush()

    def diag(self, msg):
        for line in str(msg).rstrip("\n").split("\n"):
            self._line("# " + line)

    def ok(self, cond, desc, diag=None):
        self.n += 1
        if not cond:
            self.failed += 1
        self._line("%s %d - %s" % ("ok" if cond else "not ok", self.n, desc.replace("#", "\\#")))
        if diag and not cond:
            self.diag(diag)
        return bool(cond)

    def skip(self, desc, reason):
        self.n += 1
        self._line("ok %d - %s # SKIP %s" % (self.n, desc.replace("#", "\\#"), reason))

    def check(self, desc, fn):
        """Runs fn() -> (cond, summary[, details]).  The summary (one line)
        joins the test line; the details become diagnostics when it fails.
        An exception is a failure with its traceback."""
        try:
            res = fn()
        except Exception:  # a broken check must show up as not ok, not abort the run
            return self.ok(False, desc + ": exception", traceback.format_exc())
        cond, summary = res[0], res[1]
        details = res[2] if len(res) > 2 else None
        return self.ok(cond, desc + (": " + summary if summary else ""), details)

    def done(self):
        self._line("1..%d" % self.n)
        return 0


def have_pldr():
    return os.path.isfile(PLDR_BIN) and os.access(PLDR_BIN, os.X_OK)


def run_pldr(args, timeout=None, env=None):
    """Runs $PLDR_BIN args (env: extra environment variables); returns (exit
    code, stdout, stderr).  A missing binary or a timeout comes back as exit
    code 127 / 124 with a message."""
    if not have_pldr():
        return 127, "", "pldr binary not found: %s (set PLDR_BIN)" % PLDR_BIN
    try:
        p = subprocess.run([PLDR_BIN] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace",
                           timeout=timeout or TIMEOUT,
                           env=dict(os.environ, **env) if env else None)
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or "", (e.stderr or "") + "\ntimed out after %g s" % e.timeout
    return p.returncode, p.stdout, p.stderr


def load_npy(path):
    return np.load(path, allow_pickle=False)


def rel_err(a, b):
    """max|a - b| / max|b|, b the reference."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def tail(text, lines=20):
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])
