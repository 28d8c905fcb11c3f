#!/usr/bin/python3
"""Tokenizer tests (TAP): `pldr tokenize` / `pldr detokenize` against Debian's
spm_encode / spm_decode on a 1.3 MB multilingual corpus, for the released
PLDR-LLM tokenizer, the bundled tiny model's tokenizer and variants of it that
switch on the normalizer and piece-type options SentencePiece supports; then
the command line itself, and damaged tokenizer.model files.

Environment (from `make check`): PLDR_BIN, PLDR_SRCDIR, PLDR_TESTTMP.
"""

import gzip
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import traceback

SRCDIR = os.environ.get("PLDR_SRCDIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLDR_BIN = os.environ.get("PLDR_BIN") or os.path.join(SRCDIR, "pldr")
TESTTMP = os.environ.get("PLDR_TESTTMP") or os.path.join(os.getcwd(), "tests", "tmp")
TINY_DIR = os.path.join(SRCDIR, "models", "pldr-tiny-pydocs")
TINY = os.path.join(TINY_DIR, "tokenizer.model")
REFINEDWEB = os.path.join(SRCDIR, "tests", "data", "tokenizer", "pldr-refinedweb-32k.model")
CORPUS = os.path.join(SRCDIR, "tests", "data", "tokenizer", "corpus.txt.gz")
SPM_ENCODE = shutil.which("spm_encode")
SPM_DECODE = shutil.which("spm_decode")
WORK = os.path.join(TESTTMP, "tokenizer")


# ---------------------------------------------------------------- TAP

class Tap:
    def __init__(self):
        self.tests = []

    def test(self, desc):
        """Decorator: the function returns None (pass), or a string (failure
        details), or raises Skip."""
        def register(fn):
            self.tests.append((desc, fn))
            return fn
        return register

    def run(self):
        print("1..%d" % len(self.tests), flush=True)
        for k, (desc, fn) in enumerate(self.tests, 1):
            desc = desc.replace("#", "\\#")
            try:
                problem = fn()
            except Skip as s:
                print("ok %d - %s # SKIP %s" % (k, desc, s), flush=True)
                continue
            except Exception:
                problem = traceback.format_exc()
            print("%s %d - %s" % ("not ok" if problem else "ok", k, desc))
            if problem:
                for line in str(problem).rstrip("\n").split("\n"):
                    print("# " + line)
            sys.stdout.flush()
        return 0


class Skip(Exception):
    pass


tap = Tap()


def need_pldr():
    if not (os.path.isfile(PLDR_BIN) and os.access(PLDR_BIN, os.X_OK)):
        raise Skip("pldr binary not found: %s" % PLDR_BIN)


def need_spm():
    need_pldr()
    if not (SPM_ENCODE and SPM_DECODE):
        raise Skip("spm_encode/spm_decode not installed (Debian package sentencepiece)")


def need_model(path):
    if not os.path.isfile(path):
        raise Skip("%s not found" % os.path.normpath(path))


def run(cmd, stdin=None, timeout=600):
    """Runs a command; returns (exit code, stdout bytes, stderr bytes)."""
    p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def pldr(*args, stdin=None, env=None):
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.run([PLDR_BIN] + [str(a) for a in args], input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600, env=full_env)
    return p.returncode, p.stdout, p.stderr


def work_path(name):
    os.makedirs(WORK, exist_ok=True)
    return os.path.join(WORK, name)


def show(b, n=300):
    s = repr(b)
    return s if len(s) <= n else s[:n] + "..."


def compare_lines(what, ours, ref, inputs=None):
    """None if equal, else the count of differing lines and the first diffs."""
    if ours == ref:
        return None
    a, b = ours.split(b"\n"), ref.split(b"\n")
    bad = [i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]]
    out = ["%s: %d of %d lines differ (pldr has %d lines)" % (what, len(bad), len(b), len(a))]
    for i in bad[:5]:
        if inputs is not None and i < len(inputs):
            out.append("line %d input: %s" % (i + 1, show(inputs[i])))
        out.append("line %d pldr: %s" % (i + 1, show(a[i] if i < len(a) else b"<missing>")))
        out.append("line %d spm:  %s" % (i + 1, show(b[i] if i < len(b) else b"<missing>")))
    return "\n".join(out)


# ---------------------------------------------------------------- corpus

_corpus = None


def corpus():
    global _corpus
    if _corpus is None:
        with gzip.open(CORPUS, "rb") as f:
            _corpus = f.read()
    return _corpus


def corpus_file():
    path = work_path("corpus.txt")
    if not os.path.exists(path) or os.path.getsize(path) != len(corpus()):
        with open(path, "wb") as f:
            f.write(corpus())
    return path


def corpus_sample_file():
    """Every 10th line of the corpus plus its hand-written special lines."""
    path = work_path("corpus-sample.txt")
    lines = corpus().split(b"\n")[:-1]
    special = corpus().index(b"Cr\xc3\xa8me br\xc3\xbbl\xc3\xa9e")
    n_before = corpus()[:special].count(b"\n")
    sample = lines[:n_before:10] + lines[n_before:]
    with open(path, "wb") as f:
        f.write(b"\n".join(sample) + b"\n")
    return path


# Fragments whose combinations stress the whitespace rules, the charsmap's
# multi-character rules, user-defined symbols and invalid UTF-8.
TRICKY_ATOMS = [
    " ", "  ", "\t", "\u3000", "\u309b", "\uff9e", "\uff9f", "\ufb01", "\u0301", "\u0308", "\u2581", "\ufffd",
    "[SEP]", "[CLS]", "[SEP", "SEP]", "1", "23", "456", "a", "b", "the", "The", " the", "é", "e\u0301", "漢",
    "字", "😀", "👍🏽", "\u200d", "\ufe0f", "Ａ", "ｶ", "ﾟ", "\u00a0", "\u200b", "\u00ad", "\r", "\x00", "\x01",
    "ﷺ", "㍻", "Ⅻ", "①", "½", "x", "ab", "<0x41>", "[UNK]", "[PAD]", "\u2028", "\ufeff", "ǅ", "İ", "ß", "ẞ",
    "Å", "Ω", "ﬀ", "<br>", "<br/", "pldr-llm", "１２",
]
TRICKY_BYTES = [b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
                b"\xf0\x9f\x98"]


def tricky_file(lines=5000, seed=1):
    """Seeded random lines built from TRICKY_ATOMS and TRICKY_BYTES."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        parts = []
        for _ in range(rng.randint(0, 12)):
            parts.append(rng.choice(TRICKY_BYTES) if rng.random() < 0.1 else rng.choice(TRICKY_ATOMS).encode())
        out.append(b"".join(parts))
    path = work_path("tricky-%d.txt" % seed)
    with open(path, "wb") as f:
        f.write(b"\n".join(out) + b"\n")
    return path


REQUIRED_IN_CORPUS = {
    "accented Latin": "é", "CJK": "漢", "hiragana": "ひ", "Hangul": "한", "emoji": "😀",
    "full-width forms": "Ａ", "half-width forms": "ｶ", "ligature": "ﬁ", "combining mark": "\u0301",
    "Arabic": "ب", "Devanagari": "न", "digits": "0123456789", "tab": "\t", "run of spaces": "     ",
    "user-defined symbol": "[SEP]",
}


@tap.test("corpus: over 1 MB of real text with every required kind of character")
def test_corpus():
    data = corpus()
    problems = []
    if len(data) < 1_000_000:
        problems.append("only %d bytes" % len(data))
    for what, s in REQUIRED_IN_CORPUS.items():
        if s.encode("utf-8") not in data:
            problems.append("no %s (%r)" % (what, s))
    if b"\xff" not in data or b"\xed\xa0\x80" not in data:
        problems.append("no invalid UTF-8")
    return "; ".join(problems) or None


# ---------------------------------------------------------------- parity with SentencePiece

def spm_encode(model, path, fmt="id"):
    rc, out, err = run([SPM_ENCODE, "--model=" + model, "--output_format=" + fmt, path])
    if rc != 0:
        raise RuntimeError("spm_encode failed: %s" % err.decode(errors="replace")[-500:])
    return out


def spm_decode(model, path):
    rc, out, err = run([SPM_DECODE, "--model=" + model, "--input_format=id", path])
    if rc != 0:
        raise RuntimeError("spm_decode failed: %s" % err.decode(errors="replace")[-500:])
    return out


def vocab_size(model):
    n = 0
    for number, wire, value in pb_fields(open(model, "rb").read()):
        n += number == 1
    return n


def random_id_file(model, name, lines=2000, seed=1):
    """Random id sequences, weighted towards the special ids at the start of
    the vocabulary (control, unknown and byte pieces) so that byte runs,
    invalid UTF-8 and leading-space rules are all exercised."""
    rng = random.Random(seed)
    v = vocab_size(model)
    out = []
    for _ in range(lines):
        n = rng.randint(1, 30)
        ids = [rng.choice((rng.randrange(v), rng.randrange(min(v, 8)), rng.randrange(min(v, 270)),
                           rng.randrange(min(v, 270)))) for _ in range(n)]
        out.append(" ".join(map(str, ids)))
    path = work_path(name)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


def unk_as_piece(model, text_path, pieces):
    """spm_encode prints an unknown piece as the text it covers; pldr prints
    the unknown piece of the vocabulary ([UNK]), since its API gives ids."""
    m = Model(open(model, "rb").read())
    unk_id = [i for i, p in enumerate(m.pieces) if p[2] == UNKNOWN][0]
    ids = spm_encode(model, text_path, "id").split(b"\n")
    out = []
    for piece_line, id_line in zip(pieces.split(b"\n"), ids):
        ps = piece_line.split(b" ")
        for j, i in enumerate(id_line.split()):
            if int(i) == unk_id:
                ps[j] = m.pieces[unk_id][0]
        out.append(b" ".join(ps))
    return b"\n".join(out)


def check_encode(model, text_path, fmt):
    args = ["tokenize", "--tokenizer", model, "-f", text_path] + (["--pieces"] if fmt == "piece" else [])
    rc, ours, err = pldr(*args)
    if rc != 0:
        return "pldr %s exited %d: %s" % (" ".join(args), rc, err.decode(errors="replace")[-500:])
    ref = spm_encode(model, text_path, fmt)
    if fmt == "piece":
        ref = unk_as_piece(model, text_path, ref)
    inputs = open(text_path, "rb").read().split(b"\n")
    return compare_lines("ids" if fmt == "id" else "pieces", ours, ref, inputs)


def check_decode(model, ids_path):
    rc, ours, err = pldr("detokenize", "--tokenizer", model, "-f", ids_path)
    if rc != 0:
        return "pldr detokenize exited %d: %s" % (rc, err.decode(errors="replace")[-500:])
    ref = spm_decode(model, ids_path)
    return compare_lines("text", ours, ref, open(ids_path, "rb").read().split(b"\n"))


def spm_ids_file(model, name):
    """spm_encode's ids of the corpus, empty lines dropped (spm_decode reads
    an empty line as the single id 0)."""
    ids = spm_encode(model, corpus_file(), "id")
    path = work_path(name)
    with open(path, "wb") as f:
        f.write(b"\n".join(l for l in ids.split(b"\n") if l) + b"\n")
    return path


MODELS = [("released 32k", REFINEDWEB), ("bundled tiny", TINY)]

for label, model in MODELS:
    def tests_for(label=label, model=model):
        @tap.test("%s tokenizer: ids identical to spm_encode on the corpus" % label)
        def _():
            need_spm()
            need_model(model)
            return check_encode(model, corpus_file(), "id")

        @tap.test("%s tokenizer: --pieces identical to spm_encode --output_format=piece" % label)
        def _():
            need_spm()
            need_model(model)
            return check_encode(model, corpus_file(), "piece")

        @tap.test("%s tokenizer: ids and pieces identical to spm_encode on random tricky lines" % label)
        def _():
            need_spm()
            need_model(model)
            path = tricky_file()
            return check_encode(model, path, "id") or check_encode(model, path, "piece")

        @tap.test("%s tokenizer: detokenize of the corpus ids identical to spm_decode" % label)
        def _():
            need_spm()
            need_model(model)
            return check_decode(model, spm_ids_file(model, "ids-%s.txt" % label.split()[0]))

        @tap.test("%s tokenizer: detokenize of random ids identical to spm_decode" % label)
        def _():
            need_spm()
            need_model(model)
            return check_decode(model, random_id_file(model, "random-%s.txt" % label.split()[0]))
    tests_for()


@tap.test("the 1.3 MB corpus encodes (its time is printed; speed is a benchmark, see docs/engine.md)")
def test_speed():
    need_pldr()
    path = corpus_file()
    best = None
    for _ in range(3):
        t0 = time.monotonic()
        rc, out, err = pldr("tokenize", "--tokenizer", TINY, "-f", path)
        dt = time.monotonic() - t0
        if rc != 0:
            return "pldr tokenize exited %d: %s" % (rc, err.decode(errors="replace"))
        best = dt if best is None else min(best, dt)
    print("# encoded %.2f MB with the tiny tokenizer in %.3f s (%.1f MB/s, including load and output)"
          % (len(corpus()) / 1e6, best, len(corpus()) / 1e6 / best))
    return None


# ---------------------------------------------------------------- protobuf, to build model files

def pb_varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_read_varint(b, i):
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return v, i


def pb_fields(b):
    """Top-level fields of a message: (number, wire type, value) with value
    an int (varint), bytes (length-delimited) or raw bytes (fixed)."""
    out, i = [], 0
    while i < len(b):
        key, i = pb_read_varint(b, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            v, i = pb_read_varint(b, i)
        elif wire == 2:
            n, i = pb_read_varint(b, i)
            v, i = b[i:i + n], i + n
        elif wire == 5:
            v, i = b[i:i + 4], i + 4
        elif wire == 1:
            v, i = b[i:i + 8], i + 8
        else:
            raise ValueError("wire type %d" % wire)
        out.append((number, wire, v))
    return out


def pb_write(fields):
    out = bytearray()
    for number, wire, v in fields:
        out += pb_varint(number << 3 | wire)
        if wire == 0:
            out += pb_varint(v)
        elif wire == 2:
            out += pb_varint(len(v)) + v
        else:
            out += v
    return bytes(out)


def pb_set(msg, number, wire, value):
    """msg with every occurrence of field number replaced by one value (or
    removed when value is None)."""
    fields = [f for f in pb_fields(msg) if f[0] != number]
    if value is not None:
        fields.append((number, wire, value))
    return pb_write(fields)


class Model:
    """A tokenizer.model as editable parts: pieces as (text, score, type)."""

    def __init__(self, data):
        self.pieces, self.other = [], []
        for number, wire, v in pb_fields(data):
            if number == 1:
                d = {n: val for n, w, val in pb_fields(v)}
                score = struct.unpack("<f", d[2])[0] if 2 in d else 0.0
                self.pieces.append((d.get(1, b""), score, d.get(3, 1)))
            else:
                self.other.append((number, wire, v))

    def sub(self, number):
        for n, w, v in self.other:
            if n == number:
                return v
        return b""

    def set_sub(self, number, msg):
        self.other = [f for f in self.other if f[0] != number] + ([(number, 2, msg)] if msg is not None else [])

    def trainer(self, number, value):
        self.set_sub(2, pb_set(self.sub(2), number, 0, value))

    def normalizer(self, number, wire, value):
        self.set_sub(3, pb_set(self.sub(3), number, wire, value))

    def bytes(self):
        pieces = [(1, 2, pb_write([(1, 2, t), (2, 5, struct.pack("<f", s)), (3, 0, ty)]))
                  for t, s, ty in self.pieces]
        return pb_write(pieces + self.other)

    def save(self, name):
        path = work_path(name)
        with open(path, "wb") as f:
            f.write(self.bytes())
        return path


NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def tiny():
    return Model(open(TINY, "rb").read())


# ---------------------------------------------------------------- option variants vs SentencePiece

def variant_no_byte_fallback(m):
    m.pieces = [p for p in m.pieces if p[2] != BYTE]
    m.trainer(35, 0)


def variant_piece_types(m):
    p = m.pieces
    for i in range(300, 340):                  # unused pieces are never emitted
        p[i] = (p[i][0], p[i][1], UNUSED)
    for i in range(400, 420):                  # user-defined pieces always win
        p[i] = (p[i][0], p[i][1], USER_DEFINED)
    p[500] = (p[500][0], p[500][1], CONTROL)   # control pieces are never emitted
    # user-defined symbols bypass normalization and are matched longest first
    for text in ["<br>", "<br/>", "ﬁ", "１２", "a b", "pldr-llm", "pldr", "😀😀"]:
        p.append((text.encode(), 0.0, USER_DEFINED))
    # the same string as a control piece: decoding maps the normal id to it
    p.append((p[600][0], 0.0, CONTROL))


def variant_identity(m):
    m.normalizer(2, 2, None)
    m.normalizer(1, 2, b"identity")


def variant_denormalizer(m):
    # nmt_nfkc as a denormalizer: decoded text goes through the charsmap again
    spec = pb_set(m.sub(3), 3, 0, 0)
    spec = pb_set(spec, 4, 0, 0)
    spec = pb_set(spec, 5, 0, 0)
    m.set_sub(5, spec)


VARIANTS = [
    ("byte_fallback off: unknown runs merge into one [UNK]", variant_no_byte_fallback),
    ("add_dummy_prefix off", lambda m: m.normalizer(3, 0, 0)),
    ("remove_extra_whitespaces off", lambda m: m.normalizer(4, 0, 0)),
    ("escape_whitespaces off", lambda m: m.normalizer(5, 0, 0)),
    ("treat_whitespace_as_suffix on", lambda m: m.trainer(24, 1)),
    ("unused, user-defined and control pieces", variant_piece_types),
    ("no precompiled charsmap (identity)", variant_identity),
    ("with a denormalizer", variant_denormalizer),
]

for k, (desc, edit) in enumerate(VARIANTS):
    def variant_test(k=k, desc=desc, edit=edit):
        @tap.test("tiny tokenizer, %s: encode and decode identical to SentencePiece" % desc)
        def _():
            need_spm()
            m = tiny()
            edit(m)
            path = m.save("variant%d.model" % k)
            sample, tricky = corpus_sample_file(), tricky_file(2000, seed=10 + k)
            problems = [check_encode(path, sample, "id"), check_encode(path, sample, "piece"),
                        check_encode(path, tricky, "id"), check_encode(path, tricky, "piece"),
                        check_decode(path, random_id_file(path, "variant%d-ids.txt" % k, 500, seed=k))]
            return "\n".join(p for p in problems if p) or None
    variant_test()


@tap.test("self_test_data: a model whose self-test samples pass loads")
def test_self_test_ok():
    need_spm()
    inputs = ["Hello world", "  ﬁne  tuning 123 ", "漢字 😀"]
    m = tiny()
    path = m.save("selftest-base.model")
    src = work_path("selftest-input.txt")
    with open(src, "w") as f:
        f.write("\n".join(inputs) + "\n")
    expected = spm_encode(path, src, "piece").split(b"\n")
    samples = b"".join(pb_write([(1, 2, pb_write([(1, 2, i.encode()), (2, 2, e)]))])
                       for i, e in zip(inputs, expected))
    m.set_sub(4, samples)
    path = m.save("selftest-ok.model")
    rc, out, err = pldr("tokenize", "--tokenizer", path, "-p", "Hello")
    return None if rc == 0 else "exit %d: %s" % (rc, err.decode(errors="replace"))


# ---------------------------------------------------------------- command line

@tap.test("cli: tokenize -m DIR, --tokenizer FILE and $PLDR_MODEL give the same ids")
def test_model_sources():
    need_pldr()
    text = "The quick brown fox, ﬁne 😀"
    a = pldr("tokenize", "-m", TINY_DIR, "-p", text)
    b = pldr("tokenize", "--tokenizer", TINY, "-p", text)
    c = pldr("tokenize", "-p", text, env={"PLDR_MODEL": TINY_DIR})
    if not (a[0] == b[0] == c[0] == 0 and a[1] == b[1] == c[1] and a[1].strip()):
        return "outputs: %s / %s / %s; stderr: %s" % (a[:2], b[:2], c[:2], (a[2] + b[2] + c[2])[-500:])
    return None


@tap.test("cli: tokenize -f - reads stdin; -p with newlines gives one line per line")
def test_stdin():
    need_pldr()
    text = b"first line\nsecond  line\n\nlast"
    rc, from_stdin, err = pldr("tokenize", "-m", TINY_DIR, "-f", "-", stdin=text)
    rc2, from_arg, err2 = pldr("tokenize", "-m", TINY_DIR, "-p", text.decode())
    lines = from_stdin.split(b"\n")
    if rc or rc2 or from_stdin != from_arg or len(lines) != 5 or lines[2] != b"":
        return "rc %d/%d, stdin %r, -p %r, %r" % (rc, rc2, from_stdin, from_arg, err + err2)
    return None


@tap.test("cli: detokenize -i and -f agree and invert tokenize on plain text")
def test_detokenize_cli():
    need_pldr()
    text = "Hello world, this is pldr. 1234 漢字 😀"
    rc, ids, err = pldr("tokenize", "-m", TINY_DIR, "-p", text)
    if rc:
        return "tokenize: %r" % err
    rc1, a, e1 = pldr("detokenize", "-m", TINY_DIR, "-i", ids.decode().strip())
    path = work_path("cli-ids.txt")
    with open(path, "wb") as f:
        f.write(ids)
    rc2, b, e2 = pldr("detokenize", "-m", TINY_DIR, "-f", path)
    rc3, c, e3 = pldr("detokenize", "-m", TINY_DIR, "-i", ids.decode().strip().replace(" ", ","))
    if rc1 or rc2 or rc3 or not (a == b == c == (text + "\n").encode()):
        return "rc %d/%d/%d: %r %r %r %r" % (rc1, rc2, rc3, a, b, c, e1 + e2 + e3)
    return None


@tap.test("cli: control ids decode to nothing, as spm_decode does")
def test_control_ids():
    need_pldr()
    rc, ids, err = pldr("tokenize", "-m", TINY_DIR, "-p", "Hello")
    rc2, out, err2 = pldr("detokenize", "-m", TINY_DIR, "-i", "0 2 " + ids.decode().strip() + " 3 0")
    return None if rc == rc2 == 0 and out == b"Hello\n" else "rc %d/%d: %r %r" % (rc, rc2, out, err + err2)


@tap.test("cli: --help of tokenize and detokenize prints usage and exits 0")
def test_help():
    need_pldr()
    problems = []
    for cmd, opts in (("tokenize", ["--tokenizer", "-p", "-f", "--pieces"]), ("detokenize", ["--tokenizer", "-i", "-f"])):
        rc, out, err = pldr(cmd, "--help")
        text = out.decode(errors="replace")
        if rc != 0 or not text.startswith("usage: pldr " + cmd) or not all(o in text for o in opts):
            problems.append("%s --help: exit %d, %r" % (cmd, rc, text[:200]))
    return "\n".join(problems) or None


USAGE_ERRORS = [
    ("unknown option", ["tokenize", "--bogus", "-p", "x"]),
    ("missing value", ["tokenize", "-m", TINY_DIR, "-p"]),
    ("no input", ["tokenize", "-m", TINY_DIR]),
    ("both -p and -f", ["tokenize", "-m", TINY_DIR, "-p", "x", "-f", "-"]),
    ("both -m and --tokenizer", ["tokenize", "-m", TINY_DIR, "--tokenizer", TINY, "-p", "x"]),
    ("stray argument", ["tokenize", "-m", TINY_DIR, "-p", "x", "extra"]),
    ("detokenize, not a number", ["detokenize", "-m", TINY_DIR, "-i", "5 x 7"]),
    ("detokenize, id out of range", ["detokenize", "-m", TINY_DIR, "-i", "5 4096"]),
    ("detokenize, negative id", ["detokenize", "-m", TINY_DIR, "-i", "-3"]),
]


@tap.test("cli: bad command lines exit 2 with a message")
def test_usage_errors():
    need_pldr()
    problems = []
    for what, args in USAGE_ERRORS:
        rc, out, err = pldr(*args)
        if rc != 2 or not err.startswith(b"pldr " + args[0].encode()):
            problems.append("%s: exit %d, stderr %r" % (what, rc, err))
    return "\n".join(problems) or None


@tap.test("cli: a bad id in a detokenize file names the file and line, exit 3")
def test_bad_id_file():
    need_pldr()
    path = work_path("bad-ids.txt")
    with open(path, "w") as f:
        f.write("5 6\n7 99999 8\n")
    rc, out, err = pldr("detokenize", "-m", TINY_DIR, "-f", path)
    return None if rc == 3 and (path + ":2:").encode() in err else "exit %d, %r" % (rc, err)


# ---------------------------------------------------------------- damaged tokenizer.model files

def charsmap_parts(m):
    blob = {n: v for n, w, v in pb_fields(m.sub(3))}[2]
    size = struct.unpack("<I", blob[:4])[0]
    return blob, size


def with_charsmap(m, blob):
    m.normalizer(2, 2, blob)
    return m


def broken_leaf(m):
    """Points the first leaf the trie reaches for 'A' past the normalized strings."""
    blob, size = charsmap_parts(m)
    units = list(struct.unpack("<%dI" % (size // 4), blob[4:4 + size]))

    def offset(u):
        return (u >> 10) << ((u & (1 << 9)) >> 6)

    # Full-width 'Ａ' (EF BC A1) normalizes to 'A': follow its bytes to the leaf.
    pos = offset(units[0])
    for c in b"\xef\xbc\xa1":
        pos ^= c
        assert units[pos] & 0x800000FF == c
        pos ^= offset(units[pos])
    units[pos] = (1 << 31) | 0x7FFFFFF0   # leaf value far past the end
    return with_charsmap(m, blob[:4] + struct.pack("<%dI" % len(units), *units) + blob[4 + size:])


def raw(data):
    return lambda: data


def edited(fn):
    def make():
        m = tiny()
        r = fn(m)
        return (r if r is not None else m).bytes()
    return make


def set_piece(i, text=None, type_=None):
    def edit(m):
        t, s, ty = m.pieces[i]
        m.pieces[i] = (t if text is None else text, s, ty if type_ is None else type_)
    return edit


def tiny_bytes():
    return open(TINY, "rb").read()


DAMAGED = [
    ("empty file", raw(b""), "empty"),
    ("not a model (text)", raw(b"this is not a SentencePiece model\n" * 4), "damaged SentencePiece model"),
    ("truncated in the middle", lambda: tiny_bytes()[:150_000], "runs past the end"),
    ("truncated inside a varint", lambda: tiny_bytes()[:1] + b"\xff", "truncated varint"),
    ("over-long varint", lambda: b"\x08" + b"\xff" * 11 + b"\x01" + tiny_bytes(), "varint"),
    ("length beyond the file", lambda: b"\x0a\xff\xff\xff\x0f" + b"x" * 10, "runs past the end"),
    ("wrong wire type for pieces", lambda: b"\x08\x01" + tiny_bytes(), "wire type"),
    ("zero pieces", edited(lambda m: setattr(m, "pieces", [])), "no pieces"),
    ("only reserved pieces", edited(lambda m: setattr(m, "pieces", m.pieces[:260])),
     "no normal, user-defined or unused pieces"),
    ("empty piece", edited(set_piece(1000, text=b"")), "pieces[1000] is empty"),
    ("duplicate piece", edited(lambda m: m.pieces.__setitem__(1001, (m.pieces[1000][0], 0.0, NORMAL))),
     "pieces[1001] duplicates pieces[1000]"),
    ("no unknown piece", edited(set_piece(1, type_=CONTROL)), "no piece has the unknown type"),
    ("two unknown pieces", edited(set_piece(3, type_=UNKNOWN)), "second unknown piece"),
    ("unknown piece type", edited(set_piece(700, type_=9)), "unknown type 9"),
    ("byte piece missing", edited(set_piece(4 + 0x41, type_=NORMAL)),
     "byte piece <0x41> is missing"),
    ("malformed byte piece", edited(set_piece(4 + 0x41, text=b"<0x4g>")),
     "not of the form <0xXX>"),
    ("byte piece without byte_fallback", edited(lambda m: m.trainer(35, 0)), "byte_fallback is off"),
    ("charsmap trie larger than the blob", edited(lambda m: with_charsmap(
        m, struct.pack("<I", 10_000_000) + charsmap_parts(m)[0][4:])), "exceeds"),
    ("charsmap too short", edited(lambda m: with_charsmap(m, b"\x01\x00")), "too short"),
    ("charsmap trie size not a multiple of 4", edited(lambda m: with_charsmap(
        m, struct.pack("<I", charsmap_parts(m)[1] - 2) + charsmap_parts(m)[0][4:])), "multiple of 4"),
    ("charsmap strings not NUL-terminated", edited(lambda m: with_charsmap(
        m, charsmap_parts(m)[0][:-1] + b"x")), "not NUL-terminated"),
    ("charsmap leaf pointing outside the strings", edited(broken_leaf), "past the"),
    ("unknown model type", edited(lambda m: m.trainer(3, 7)), "model_type 7"),
]


def expect_load_error(path, status_phrase, exit_code=3):
    rc, out, err = pldr("tokenize", "--tokenizer", path, "-p", "x")
    msg = err.decode(errors="replace")
    if rc == exit_code and path in msg and status_phrase in msg and "\n" == msg[-1] and msg.count("\n") == 1:
        return None
    return "exit %d (want %d), stderr %r (want the file name and %r)" % (rc, exit_code, msg, status_phrase)


for k, (desc, make, phrase) in enumerate(DAMAGED):
    def damaged_test(k=k, desc=desc, make=make, phrase=phrase):
        @tap.test("damaged tokenizer.model, %s: exit 3, message names the file" % desc)
        def _():
            need_pldr()
            path = work_path("damaged%02d.model" % k)
            with open(path, "wb") as f:
                f.write(make())
            return expect_load_error(path, phrase)
    damaged_test()


@tap.test("damaged tokenizer.model, failing self-test samples: rejected like SentencePiece does")
def test_self_test_fails():
    need_pldr()
    m = tiny()
    m.set_sub(4, pb_write([(1, 2, pb_write([(1, 2, b"Hello"), (2, 2, b"\xe2\x96\x81Hel lo")]))]))
    path = m.save("selftest-bad.model")
    return expect_load_error(path, "self-test")


@tap.test("BPE model: rejected as unsupported, exit 3")
def test_bpe():
    need_pldr()
    m = tiny()
    m.trainer(3, 2)
    path = m.save("bpe.model")
    return expect_load_error(path, "BPE")


@tap.test("missing tokenizer.model: exit 3, message names the file")
def test_missing():
    need_pldr()
    path = work_path("does-not-exist.model")
    return expect_load_error(path, "cannot open")


@tap.test("random corruption of the tokenizer.model never crashes")
def test_fuzz():
    need_pldr()
    base = tiny_bytes()
    rng = random.Random(7)
    problems = []
    for i in range(60):
        b = bytearray(base)
        kind = i % 4
        if kind == 0:
            b = b[:rng.randrange(len(b))]
        elif kind == 1:
            for _ in range(rng.randint(1, 20)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 2:   # bit flips in the charsmap trie
            start = base.index(b"nmt_nfkc") + 20
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(start, start + 170_000)] ^= 1 << rng.randrange(8)
        else:
            p = rng.randrange(len(b))
            del b[p:p + rng.randint(1, 40)]
        path = work_path("fuzz.model")
        with open(path, "wb") as f:
            f.write(b)
        rc, out, err = pldr("tokenize", "--tokenizer", path, "-p", "Ｈｅｌｌｏ ﬁne 漢字 😀 \t x")
        if rc not in (0, 3) or (rc == 3 and path.encode() not in err):
            problems.append("case %d: exit %d, %r" % (i, rc, err[-300:]))
    return "\n".join(problems) or None


if __name__ == "__main__":
    sys.exit(tap.run())
