#!/usr/bin/python3
"""Regenerates the seed corpora of the fuzz targets in tests/fuzz/corpus/.

    tests/fuzz/make-corpus.py [SRCDIR]

safetensors, index, config and encode seeds are written from this script
alone; the tokenizer_model seeds are small SentencePiece models trained with
Debian's spm_train (package sentencepiece) on a slice of
tests/data/tokenizer/corpus.txt.gz, each switching on other options of the
model format (byte fallback, user-defined and control symbols, a custom
normalization and denormalization rule table, whitespace as suffix, self-test
samples). Without spm_train those seeds are left as they are. The bundled and
the shared tokenizer.model files are seeds too, added by run.sh by path.

The output is deterministic apart from the spm_train models (training is
single-threaded and seeded here, so in practice it is too); keep the whole
corpus well under 1 MB.
"""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

SRCDIR = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
OUT = os.path.join(SRCDIR, "tests", "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- safetensors

DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
              "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


def safetensors(tensors, metadata=None, pad=False):
    """tensors: list of (name, dtype, shape); data laid out in order."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = DTYPE_SIZE[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes((off + i) & 0xFF for i in range(n))
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:  # as the Python writer does: spaces up to a multiple of 8
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    write("safetensors", "two-tensors", safetensors([("x", "F32", [1]), ("y", "F16", [2, 2])]))
    write("safetensors", "metadata-padded",
          safetensors([("w", "F32", [2, 3])], {"format": "pt", "note": "seed"}, pad=True))
    write("safetensors", "all-dtypes", safetensors([("t_" + d.lower(), d, [2]) for d in DTYPE_SIZE]))
    write("safetensors", "empty-and-scalar",
          safetensors([("empty", "F32", [0, 5]), ("scalar", "BF16", []), ("z", "U8", [0])]))
    write("safetensors", "high-rank", safetensors([("r8", "I8", [1, 2, 1, 2, 1, 2, 1, 1])]))
    write("safetensors", "empty-header", safetensors([]))
    write("safetensors", "model-names", safetensors([
        ("decoder.embedding.weight", "F16", [4, 2]),
        ("decoder.layers.0.mha1.wq.weight", "BF16", [2, 2]),
        ("decoder.layers.0.mha1.wq.bias", "F32", [2]),
        ("final_layer.weight", "F32", [4, 2])], {"format": "pt"}))
    # unsorted offsets: the layout check sorts them
    h = ('{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},'
         '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}').encode()
    write("safetensors", "unsorted-offsets", struct.pack("<Q", len(h)) + h + bytes(range(8)))


# ---------------------------------------------------------------- index

def index_seeds():
    xy_z = {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}
    write("index", "valid", json.dumps({"metadata": {"total_size": 18}, "weight_map": xy_z}))
    write("index", "wrong-shard", json.dumps({"weight_map": {"x": "b.safetensors", "y": "a.safetensors",
                                                              "z": "b.safetensors"}}))
    write("index", "two-shards-one-tensor",
          json.dumps({"weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "c.safetensors"}}))
    write("index", "unlisted-tensor", json.dumps({"weight_map": {"x": "a.safetensors", "z": "b.safetensors"}}))
    write("index", "missing-tensor", json.dumps({"weight_map": dict(xy_z, w="a.safetensors")}))
    write("index", "other-shard", json.dumps({"weight_map": {"q": "model-00001-of-00002.safetensors"}}))
    write("index", "bad-names", '{"weight_map":{"x":"../a.safetensors","y":"..","z":1,"w":""}}')
    write("index", "escapes", '{"weight_map":{"x\\u00e9":"a\\u0000.safetensors"}}')
    real = os.path.join(SRCDIR, "models", "pldr-tiny-pydocs", "model.safetensors.index.json")
    if os.path.exists(real):
        shutil.copyfile(real, os.path.join(OUT, "index", "pldr-tiny-pydocs"))


# ---------------------------------------------------------------- config

def config_seeds():
    base = {
        "architectures": ["PldrllmForCausalLM"], "model_type": "pldrllm", "hidden_act": "silu",
        "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "head_dim": 4,
        "intermediate_size": 12, "num_reslayerA": 2, "num_denseA": 2, "A_dff": 6, "vocab_size": 16,
        "max_position_embeddings": 32, "layer_norm_eps": 1e-6, "rope_theta": 10000.0,
        "reference_rope": True, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0,
        "attention_bias": True, "glu_bias": True, "final_bias": True, "tie_word_embeddings": False,
        "custom_G_type": None, "torch_dtype": "float32"}
    write("config", "tiny", json.dumps(base, indent=2))
    write("config", "identity-no-head-dim",
          json.dumps({k: v for k, v in dict(base, custom_G_type="identity").items() if k != "head_dim"}))
    write("config", "external-nulls",
          json.dumps(dict(base, custom_G_type="external", pad_token_id=None, rope_theta=500000,
                          reference_rope=False)))
    write("config", "random-big", json.dumps(dict(base, custom_G_type="random", num_hidden_layers=1024,
                                                  num_reslayerA=1024, num_denseA=64, vocab_size=4194304)))
    # regression (fuzz_config): a vocabulary too small for the default bos/eos ids
    write("config", "regress-vocab-2-default-ids",
          json.dumps({k: v for k, v in dict(base, vocab_size=2).items()
                      if k not in ("bos_token_id", "eos_token_id")}))
    real = os.path.join(SRCDIR, "models", "pldr-tiny-pydocs", "config.json")
    if os.path.exists(real):
        shutil.copyfile(real, os.path.join(OUT, "config", "pldr-tiny-pydocs"))


# ---------------------------------------------------------------- encode

def encode_seeds():
    texts = {
        "ascii": "Hello, world! The quick brown fox jumps over the lazy dog.",
        "python": "def f(x):\n\treturn [i ** 2 for i in range(x)]  # squares\n",
        "spaces": "   leading  and   inner\t\tspaces \u3000 and trailing   ",
        "multilingual": "Gr\u00fc\u00dfe \u2014 \u65e5\u672c\u8a9e\u306e\u6587 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 "
                        "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \U0001F600\U0001F44D\U0001F3FD",
        "nfkc": "\uff21\uff22\uff23 \u2460 \ufb01 \u00bd \u2163 e\u0301 \u212b \u1e9b\u0323",
        "control-pieces": "<s> </s> <unk> <pad> <0x41> \u2581 \u2581\u2581 ",
        "digits": "3.14159 2,718 1e-9 0x1F 000123",
    }
    for name, t in texts.items():
        write("encode", name, t)
    write("encode", "invalid-utf8", b"ok \xff\xfe \xc3( \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf end")
    write("encode", "nul-and-controls", b"a\x00b\x01\x1b[0m\r\n\x7f\xc2\x85 z")
    corpus = os.path.join(SRCDIR, "tests", "data", "tokenizer", "corpus.txt.gz")
    if os.path.exists(corpus):
        with gzip.open(corpus, "rb") as f:
            lines = f.read().split(b"\n")
        step = max(1, len(lines) // 12)
        for i in range(0, min(len(lines), 12 * step), step):
            if lines[i].strip():
                write("encode", "corpus-line-%d" % i, lines[i][:400])


# ---------------------------------------------------------------- tokenizer_model

def tokenizer_model_seeds():
    spm_train = shutil.which("spm_train")
    corpus = os.path.join(SRCDIR, "tests", "data", "tokenizer", "corpus.txt.gz")
    if not spm_train or not os.path.exists(corpus):
        print("make-corpus: spm_train or the corpus missing: tokenizer_model seeds left as they are",
              file=sys.stderr)
        return
    tmp = tempfile.mkdtemp(prefix="pldr-fuzz-corpus.")
    try:
        text = os.path.join(tmp, "train.txt")
        with gzip.open(corpus, "rb") as f:
            data = f.read()
        with open(text, "wb") as f:
            f.write(data[:60000])
        rules = os.path.join(tmp, "norm.tsv")
        with open(rules, "w") as f:
            # fullwidth A-C -> ASCII, ligature fi -> f i, tab -> space
            f.write("FF21\t41\nFF22\t42\nFF23\t43\nFB01\t66 69\n9\t20\n")
        denorm = os.path.join(tmp, "denorm.tsv")
        with open(denorm, "w") as f:
            f.write("41\tFF21\n")
        common = ["--input=" + text, "--model_type=unigram", "--character_coverage=0.98",
                  "--num_threads=1", "--hard_vocab_limit=false", "--minloglevel=2",
                  "--seed_sentencepiece_size=2000", "--shuffle_input_sentence=false"]
        variants = {
            "identity-60": ["--vocab_size=60", "--normalization_rule_name=identity"],
            "byte-fallback": ["--vocab_size=300", "--byte_fallback=true", "--normalization_rule_name=identity"],
            "user-control-symbols": ["--vocab_size=80", "--normalization_rule_name=identity",
                                     "--user_defined_symbols=<sep>,<cls>,foo",
                                     "--control_symbols=<ctl>", "--unk_surface=??"],
            "rule-tsv-suffix": ["--vocab_size=70", "--normalization_rule_tsv=" + rules,
                                "--denormalization_rule_tsv=" + denorm,
                                "--treat_whitespace_as_suffix=true", "--add_dummy_prefix=false",
                                "--remove_extra_whitespaces=false"],
            "self-test-digits": ["--vocab_size=70", "--normalization_rule_name=identity",
                                 "--self_test_sample_size=3", "--split_digits=true",
                                 "--pad_id=3", "--unk_id=0", "--bos_id=1", "--eos_id=2"],
        }
        for name, opts in variants.items():
            prefix = os.path.join(tmp, name)
            p = subprocess.run([spm_train] + common + opts + ["--model_prefix=" + prefix],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if p.returncode != 0:
                sys.exit("spm_train %s failed:\n%s" % (name, p.stderr.decode(errors="replace")[-2000:]))
            shutil.copyfile(prefix + ".model", os.path.join(OUT, "tokenizer_model", name))
            os.makedirs(os.path.join(OUT, "tokenizer_model"), exist_ok=True)
    finally:
        shutil.rmtree(tmp)



# ---------------------------------------------------------------- sessions

def session(L=1, d=2, H=1, dk=2, V=3, n=1, mode=2, dtype=0, flags=5, fp=0x1234, logits=None, claim=None,
            level=6):
    """A session file (src/formats/session.c): header, then the zlib payload
    of tokens, K, V, the G-cache and (flag 4) the next-token logits."""
    tokens = struct.pack("<%di" % n, *range(5, 5 + n))
    kv = struct.pack("<%df" % (L * n * d), *[0.25 * i for i in range(L * n * d)])
    g = struct.pack("<%df" % (3 * L * H * dk * dk), *[1.0] * (3 * L * H * dk * dk))
    lg = struct.pack("<%df" % V, *(logits or [0.5] * V)) if flags & 4 else b""
    payload = tokens + kv + kv + g + lg
    comp = zlib.compress(payload, level)
    h = bytearray(88)
    h[0:8] = b"PLDRSESS"
    struct.pack_into("<IIQII6iIIQQI", h, 8, 1, 88, fp, dtype, mode, L, d, H, dk, V, n, flags, 0,
                     claim if claim is not None else len(payload), len(comp), zlib.crc32(payload))
    struct.pack_into("<I", h, 84, zlib.crc32(bytes(h[:84])))
    return bytes(h) + comp


def session_seeds():
    write("session", "tiny-kvg-logits", session())
    write("session", "kv-no-logits", session(mode=1, flags=1, n=3))
    write("session", "none-external-g", session(mode=0, flags=6, n=2, L=2, H=2, dk=1, d=2))
    write("session", "empty", session(n=0, flags=1))
    write("session", "regress-nan-logits", session(logits=[0.0, float("nan"), 1.0]))
    write("session", "regress-payload-claim", session(claim=1 << 40))


# ---------------------------------------------------------------- G-cache files

def gcache_seeds():
    def arr(fmt, n, v):
        return struct.pack("<%d%s" % (n, fmt), *[v] * n)
    one = [("G_LM", "F32", [1, 1, 2, 2])]
    write("gcache", "g-only", safetensors_with(one, arr("f", 4, 1.0)))
    write("gcache", "a-alm-g-f16", safetensors_with([("A", "F16", [2, 1, 2, 2]), ("A_LM", "F16", [2, 1, 2, 2]),
                                                     ("G_LM", "F16", [2, 1, 2, 2])], arr("e", 24, 0.5)))
    write("gcache", "bf16-5d", safetensors_with([("G_LM", "BF16", [1, 1, 1, 2, 2])], arr("H", 4, 0x3f80)))
    write("gcache", "regress-inf-a", safetensors_with([("A", "F32", [1, 1, 2, 2]), ("G_LM", "F32", [1, 1, 2, 2])],
                                                      arr("f", 4, float("inf")) + arr("f", 4, 1.0)))


def safetensors_with(tensors, data):
    """A safetensors file of (name, dtype, shape) laid out in order over data."""
    header, off = {}, 0
    for name, dt, shape in tensors:
        n = DTYPE_SIZE[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data[:off]


# ---------------------------------------------------------------- decode tuning files

def tuning_seeds():
    """Decode tuning files for the device and model of fuzz_tuning.c."""
    base = {"format": "pldr-decode-tuning", "version": 1,
            "device": {"name": "fuzz device", "driver_version": "1.0", "platform_version": "OpenCL 1.2 fuzz"},
            "model": {"n_layers": 4, "d_model": 192, "n_heads": 3, "head_dim": 64, "d_ff": 512, "vocab_size": 4096},
            "dtypes": {"f32": {"work_groups": "gemv=64,rows=64,att=64,pf=2,attpre=0"},
                       "f16": {"work_groups": ""}}}
    write("tuning", "valid", json.dumps(base, indent=1))
    write("tuning", "regress-pf-4096", json.dumps(dict(base, dtypes={"f32": {"work_groups": "pf=4096"}})))
    write("tuning", "other-model", json.dumps(dict(base, model=dict(base["model"], n_layers=2))))
    write("tuning", "bad-key", json.dumps(dict(base, dtypes={"f32": {"work_groups": "rows=8,frob=1"}})))


def main():
    os.makedirs(OUT, exist_ok=True)
    safetensors_seeds()
    index_seeds()
    config_seeds()
    encode_seeds()
    session_seeds()
    gcache_seeds()
    tuning_seeds()
    os.makedirs(os.path.join(OUT, "tokenizer_model"), exist_ok=True)
    tokenizer_model_seeds()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print("make-corpus: %s: %d bytes" % (OUT, total))


if __name__ == "__main__":
    main()
