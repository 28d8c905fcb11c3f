#!/usr/bin/python3
"""Hostile paths and inputs, as a careless user or an attacker meets the
command line (TAP, for Automake's tap driver).

Outputs (sessions, G-cache exports, logits -o, kernel-cache entries): a
target that is a symbolic link, FIFO or directory is refused with exit code
6 and left as it was; a failed write (a full disk, here a file size limit)
keeps the old file and leaves no temporary file; `-o -` writes standard
output; a missing directory is refused before the model loads. Standard
output that cannot be written (/dev/full) is exit code 6; a reader that
went away (EPIPE) ends the run quietly.

Inputs: a FIFO or directory given as a prompt file, session, G-cache file
or checkpoint file is refused at once (exit 3), never waited on; standard
input is read up to a bounded size. A crafted kernel-cache entry, a FIFO
in the cache directory and a cache path that is a file do not stop a run;
a killed writer's temporary file is removed. PLDR_WG values beyond what the
kernels can run are ignored with a warning. Non-finite values in a
session's logits or a G-cache file's A are refused naming the tensor.
"""

import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

import pldrtest as pt  # noqa: E402

TMP = os.path.join(pt.TESTTMP, "hostile")
IDS = "626,730,266,343"
SESSION_HEADER = 88
# Seconds a refusal may take: a run that blocks on a FIFO never ends.
QUICK = 60


def path(name):
    return os.path.join(TMP, name)


def run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=None, timeout=QUICK, preexec=None,
        restore_signals=True):
    """(exit code, stdout, stderr) of pldr args; a timeout is exit code 124."""
    try:
        p = subprocess.run([pt.PLDR_BIN] + list(args), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                           env=dict(os.environ, **(env or {})), timeout=timeout, preexec_fn=preexec,
                           restore_signals=restore_signals)
    except subprocess.TimeoutExpired:
        return 124, b"", b"timed out"
    return p.returncode, p.stdout or b"", p.stderr.decode("utf-8", "replace")


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


def failed(rc, err):
    return "exit %d: %s" % (rc, err.strip()[:300])


def valid_entry(data):
    """A kernel-cache entry whose crc32 and length fit its binary (the
    64-bit hash is checked by pldr itself)."""
    body = data[40:]
    return (data[:8] == b"PLDRBIN2" and struct.unpack("<Q", data[24:32])[0] == len(body)
            and struct.unpack("<I", data[16:20])[0] == zlib.crc32(body))


def no_temps(d):
    return [n for n in os.listdir(d) if ".pldr-tmp." in n]


def main():
    tap = pt.Tap()
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)

    # --------------------------------------------------------- outputs
    rc, _, err = run(["logits", "--ids", IDS, "-o", path("good.npy")])
    good_ok = tap.ok(rc == 0, "logits -o writes a file", failed(rc, err))
    good = open(path("good.npy"), "rb").read() if good_ok else b""

    os.symlink(path("elsewhere"), path("link.npy"))
    os.mkfifo(path("fifo.npy"))
    os.mkdir(path("dir.npy"))
    for name, kind in (("link.npy", "a symbolic link"), ("fifo.npy", "a FIFO"), ("dir.npy", "a directory")):
        def refused(name=name, kind=kind):
            before = os.lstat(path(name))
            rc, _, err = run(["logits", "--ids", IDS, "-o", path(name)])
            after = os.lstat(path(name))
            same = (stat.S_IFMT(before.st_mode) == stat.S_IFMT(after.st_mode) and before.st_ino == after.st_ino)
            return (rc == 6 and kind in err and path(name) in err and one_line(err) and same
                    and not os.path.exists(path("elsewhere")), failed(rc, err))
        tap.check("logits -o refuses %s and leaves it as it was" % kind, refused)

    def missing_dir():
        rc, _, err = run(["logits", "--ids", IDS, "-o", path("no/such/dir/x.npy")])
        return rc == 6 and "no/such/dir" in err and one_line(err), failed(rc, err)
    tap.check("logits -o into a missing directory is refused", missing_dir)

    def stdout_npy():
        rc, out, err = run(["logits", "--ids", IDS, "-o", "-"])
        return rc == 0 and out == good and not os.path.exists("-"), failed(rc, err)
    tap.check("logits -o - writes the .npy to standard output", stdout_npy)

    def full_disk():
        # a file size limit makes write() fail with EFBIG, as a full disk fails
        # it: 4 MiB of logits under a limit of 2 MiB (above what the OpenCL
        # driver may write into its own cache meanwhile)
        ids = ",".join(str(5 + i) for i in range(256))
        rc, _, err = run(["logits", "--ids", ids, "-o", path("big.npy")])
        if rc != 0:
            return False, failed(rc, err)
        big = open(path("big.npy"), "rb").read()

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
        rc, _, err = run(["logits", "--ids", ids, "-o", path("big.npy")], preexec=limit)
        kept = open(path("big.npy"), "rb").read() == big
        return (rc == 6 and "big.npy" in err and "File too large" in err and kept and not no_temps(TMP)
                and one_line(err), failed(rc, err) + " kept=%s temps=%s" % (kept, no_temps(TMP)))
    tap.check("a failed write keeps the old file and leaves no temporary file", full_disk)

    def session_link():
        os.symlink(path("elsewhere"), path("link.ses"))
        rc, _, err = run(["generate", "-p", "To open a file", "-n", "2", "--save-session", path("link.ses")])
        return (rc == 6 and os.path.islink(path("link.ses")) and not os.path.exists(path("elsewhere")),
                failed(rc, err))
    tap.check("generate --save-session refuses a symbolic link before generating", session_link)

    def gcache_fifo():
        rc, _, err = run(["gcache", "export", "--ids", IDS, "-o", path("fifo.npy")])
        return rc == 6 and stat.S_ISFIFO(os.lstat(path("fifo.npy")).st_mode), failed(rc, err)
    tap.check("gcache export -o refuses a FIFO", gcache_fifo)

    # --------------------------------------------------------- standard output
    for args in (["devices"], ["tokenize", "-p", "To open a file"], ["help", "logits"],
                 ["generate", "-p", "To open a file", "-n", "2", "-q"]):
        def dev_full(args=args):
            with open("/dev/full", "wb") as full:
                rc, _, err = run(args, stdout=full)
            return rc == 6 and "standard output" in err and one_line(err), failed(rc, err)
        tap.check("'pldr %s > /dev/full' fails with exit code 6" % " ".join(args), dev_full)

    def reader_gone():
        big = path("big.txt")
        with open(big, "w") as f:
            f.write("To open a file in Python, use the open function.\n" * 20000)
        r, w = os.pipe()
        os.close(r)
        try:
            # SIGPIPE ignored (as Python does): the write fails with EPIPE
            rc, _, err = run(["tokenize", "-f", big], stdout=w, restore_signals=False)
        finally:
            os.close(w)
        return rc == 0 and err == "", failed(rc, err)
    tap.check("a reader that went away ends the run quietly", reader_gone)

    # --------------------------------------------------------- inputs that are not files
    fifo = path("in.fifo")
    os.mkfifo(fifo)
    for args, what in ((["generate", "-f", fifo, "-n", "1"], "prompt file"),
                       (["generate", "--load-session", fifo, "-n", "1"], "session"),
                       (["logits", "--ids", IDS, "--g-cache", fifo, "-o", path("x.npy")], "G-cache file"),
                       (["tokenize", "-f", TMP], "directory as -f")):
        def not_regular(args=args):
            rc, _, err = run(args)
            return rc == 3 and ("FIFO" in err or "a directory" in err) and one_line(err), failed(rc, err)
        tap.check("a %s that is not a regular file is refused at once" % what, not_regular)

    def fifo_checkpoint():
        d = path("fifo-model")
        os.makedirs(d)
        src = os.path.join(pt.SRCDIR, "models", "pldr-tiny-pydocs")
        for n in os.listdir(src):
            if n == "model-00002-of-00002.safetensors":
                os.mkfifo(os.path.join(d, n))
            else:
                os.symlink(os.path.join(src, n), os.path.join(d, n))
        rc, _, err = run(["logits", "-m", d, "--ids", IDS, "-o", path("x.npy")])
        return rc == 3 and "FIFO" in err and one_line(err), failed(rc, err)
    tap.check("a checkpoint file that is a FIFO is refused at once", fifo_checkpoint)

    def bounded_stdin():
        # 4 MiB of standard input for the bundled model's 512-token context
        p = subprocess.Popen([pt.PLDR_BIN, "generate", "-f", "-", "-n", "1"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(input=b"x" * (4 << 20), timeout=QUICK)
        err = err.decode()
        return p.returncode == 3 and "standard input" in err and "bytes allowed" in err, failed(p.returncode, err)
    tap.check("standard input is read up to a bounded size", bounded_stdin)

    # --------------------------------------------------------- kernel cache and PLDR_WG
    pocl = os.environ.get("POCL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pocl")
    cache = path("xdg")
    env = {"XDG_CACHE_HOME": cache, "POCL_CACHE_DIR": pocl}
    rc, _, err = run(["logits", "--ids", IDS, "-o", path("c.npy")], env=env, timeout=pt.TIMEOUT)
    entries = [n for n in os.listdir(os.path.join(cache, "pldr"))] if rc == 0 else []
    if tap.ok(rc == 0 and len(entries) == 1, "a kernel-cache entry is written", failed(rc, err)):
        entry = os.path.join(cache, "pldr", entries[0])
        orig = open(entry, "rb").read()
        tap.ok(valid_entry(orig), "the entry is valid")

        def crafted():
            # damaged binary under a recomputed crc32 and length
            d = bytearray(orig)
            for i in range(200, len(d), 997):
                d[i] ^= 0xFF
            body = bytes(d[40:])
            d[16:20] = struct.pack("<I", zlib.crc32(body))
            open(entry, "wb").write(bytes(d))
            os.chmod(entry, 0o644)
            stale = os.path.join(cache, "pldr", ".x.bin.pldr-tmp.999999999.0")
            open(stale, "wb").write(b"left by a killed writer")
            rc, _, err = run(["logits", "--ids", IDS, "-o", path("c2.npy")], env=env, timeout=pt.TIMEOUT)
            same = rc == 0 and open(path("c2.npy"), "rb").read() == open(path("c.npy"), "rb").read()
            rewritten = valid_entry(open(entry, "rb").read()) and open(entry, "rb").read() != bytes(d)
            return (same and rewritten and not os.path.exists(stale),
                    failed(rc, err) + " same=%s rewritten=%s stale=%s" % (same, rewritten, os.path.exists(stale)))
        tap.check("a crafted kernel-cache entry is rebuilt, a dead writer's temporary file removed", crafted)

        def fifo_entry():
            os.unlink(entry)
            os.mkfifo(entry)
            rc, _, err = run(["logits", "--ids", IDS, "-o", path("c3.npy")], env=env, timeout=pt.TIMEOUT)
            return rc == 0 and stat.S_ISREG(os.lstat(entry).st_mode) and valid_entry(open(entry, "rb").read()), \
                failed(rc, err)
        tap.check("a FIFO in the kernel cache does not block and is replaced", fifo_entry)

    def cache_is_file():
        d = path("xdg-file")
        os.makedirs(d)
        open(os.path.join(d, "pldr"), "w").close()
        rc, _, err = run(["logits", "--ids", IDS, "-o", path("c4.npy")],
                         env={"XDG_CACHE_HOME": d, "POCL_CACHE_DIR": pocl}, timeout=pt.TIMEOUT)
        return (rc == 0 and err.count("warning") == 1 and "is a file" in err and "compiled at every start" in err,
                failed(rc, err))
    tap.check("a kernel-cache path that is a file gives one warning that says so", cache_is_file)

    def wg_range():
        rc, _, err = run(["logits", "--ids", IDS, "-o", path("wg.npy")],
                         env={"PLDR_WG": "pf=4096,mlkc=1000,mlrows=100000"}, timeout=pt.TIMEOUT)
        same = rc == 0 and open(path("wg.npy"), "rb").read() == good
        return (same and err.count("warning: ignoring PLDR_WG item") == 3 and "[1, 16]" in err, failed(rc, err))
    tap.check("PLDR_WG values the kernels cannot run are ignored with a warning", wg_range)

    # --------------------------------------------------------- non-finite values read back
    def nan_session():
        rc, _, err = run(["generate", "-p", "To open a file", "-n", "1", "-q", "--temp", "0.8", "--seed", "1",
                          "--save-session", path("s.ses")])
        if rc != 0:
            return False, failed(rc, err)
        raw = bytearray(open(path("s.ses"), "rb").read())
        payload = bytearray(zlib.decompress(bytes(raw[SESSION_HEADER:])))
        payload[-4:] = struct.pack("<f", float("nan"))  # the last stored logit
        comp = zlib.compress(bytes(payload), 1)
        raw = raw[:SESSION_HEADER]
        raw[72:80] = struct.pack("<Q", len(comp))
        raw[80:84] = struct.pack("<I", zlib.crc32(bytes(payload)))
        raw[84:88] = struct.pack("<I", zlib.crc32(bytes(raw[:84])))
        open(path("nan.ses"), "wb").write(bytes(raw) + comp)
        rc, out, err = run(["generate", "--load-session", path("nan.ses"), "-n", "4", "--temp", "0.8"])
        return rc == 3 and "non-finite" in err and "logits" in err and "nan.ses" in err, failed(rc, err)
    tap.check("a session with NaN logits is refused", nan_session)

    def nan_gcache():
        rc, _, err = run(["gcache", "export", "--ids", IDS, "-o", path("g.safetensors")])
        if rc != 0:
            return False, failed(rc, err)
        raw = bytearray(open(path("g.safetensors"), "rb").read())
        hlen = struct.unpack("<Q", raw[:8])[0]
        import json
        hdr = json.loads(bytes(raw[8:8 + hlen]))
        off = 8 + hlen + hdr["A"]["data_offsets"][0] + 40
        raw[off:off + 4] = struct.pack("<f", float("inf"))
        open(path("inf.safetensors"), "wb").write(bytes(raw))
        rc, out, err = run(["deductive", "--g-cache", path("inf.safetensors")])
        return (rc == 3 and "A has a non-finite value" in err and "inf.safetensors" in err and b"nan" not in out,
                failed(rc, err))
    tap.check("a G-cache file with a non-finite A is refused", nan_gcache)

    # --------------------------------------------------------- benchmark figures
    def bench_roofline():
        import json
        rc, out, err = run(["bench", "-p", "0", "-n", "1,4", "-r", "2", "--cache", "kvg,kv", "-o", "json"],
                           timeout=pt.TIMEOUT)
        if rc != 0:
            return False, failed(rc, err)
        res = json.loads(out)["devices"][0]["results"]
        roof = [(r["test"], r["cache"], r["roofline"]) for r in res]
        # a decode step cannot read its weights faster than the device reads memory
        return len(roof) == 4 and all(0 < x <= 1.0 for _, _, x in roof), "rooflines %s" % roof
    tap.check("bench -n 1 and -n 4 stay within the roofline", bench_roofline)

    # --------------------------------------------------------- smaller ones
    for args, want in ((["bench", "-p", ",8,,9,", "-n", "0"], "-p"), (["bench", "--cache", ",kv,"], "--cache"),
                       (["generate", "-p", "x", "--temp", "1e40"], "1e6")):
        def usage(args=args, want=want):
            rc, _, err = run(args)
            return rc == 2 and want in err and one_line(err), failed(rc, err)
        tap.check("'pldr %s' is a usage error naming %s" % (" ".join(args), want), usage)

    def help_cmd():
        rc, out, err = run(["help", "logits"])
        return rc == 0 and out.startswith(b"usage: pldr logits"), failed(rc, err)
    tap.check("pldr help CMD prints CMD's help", help_cmd)

    def device_type():
        rc, out, err = run(["devices"])
        if rc != 0:
            return False, failed(rc, err)
        kind = out.decode().split("\n")[1].split()[4].lower()
        rc, _, err = run(["logits", "--device", kind, "--ids", IDS, "-o", path("t.npy")])
        return rc == 0, failed(rc, err)
    tap.check("--device takes a device type", device_type)

    def empty_file():
        open(path("empty.txt"), "w").close()
        rc, _, err = run(["gcache", "export", "-f", path("empty.txt"), "-o", path("e.safetensors")])
        return rc == 2 and "empty.txt is empty after tokenization" in err and "the " + path("") not in err, \
            failed(rc, err)
    tap.check("an empty prompt file is named as such", empty_file)

    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
