#!/usr/bin/python3
"""Writes random-weight PLDR-LLM checkpoints in Hugging Face layout.

    mkmodel.py -o DIR [--preset tiny|110m] [--seed S] [--layers L] [--hidden d]
               [--heads H] [--head-dim dk] [--ffn F] [--reslayers R] [--dense-a D]
               [--a-dff Fa] [--vocab V] [--max-pos Tmax] [--reference-rope true|false]
               [--dtype F32|F16|BF16] [--shards N] [--g-type learned|identity|random|external]
               [--data-align A] [--data-skew S]
               [--arch causal|model|token|sequence|qa] [--labels N]
               [--rope-scaling JSON] [--dtype-key torch_dtype|dtype]

The tensors have the names and shapes of ../shared/docs/pldr-llm.md.  The
initialisation follows a freshly initialised PLDR-LLM (the HF port's
_init_weights: Xavier Linear weights, N(0, 1) embedding, Xavier plgatt
tensors), except that every bias and LayerNorm parameter gets a small random
perturbation so that an engine that drops or swaps one is caught.  The powers
pwlst are small (|pw| ~ 0.05, as in trained models), which keeps A_LM**pw
finite and the float32 forward close to the float64 one (checked by
test_parity.py for every configuration it uses).

Classes (--arch): PldrllmForCausalLM (final_layer), PldrllmModel (no head;
its tensors named without the "decoder." prefix, as transformers saves a base
model alone), PldrllmForTokenClassification (score with bias),
PldrllmForSequenceClassification (score without bias) and
PldrllmForQuestionAnswering (qa_outputs [2, d] with bias); the classifiers'
config.json carries id2label / label2id for --labels N labels.

Storage: F32, F16 or BF16 (round to nearest even), one model.safetensors or N
shards model-0000i-of-0000N.safetensors with model.safetensors.index.json.
Every tensor is stored in the chosen dtype, including decoder.past_G_values.
The header is padded with spaces so that the data region starts at S modulo
A bytes (default: a multiple of 8, as the reference writer does); the tensors'
alignment in memory follows from that, which tests of zero-copy loading set.
"""

import json
import math
import os
import struct
import sys

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

ARCHS = {
    "causal": "PldrllmForCausalLM",
    "model": "PldrllmModel",
    "token": "PldrllmForTokenClassification",
    "sequence": "PldrllmForSequenceClassification",
    "qa": "PldrllmForQuestionAnswering",
}

PRESETS = {
    "tiny": dict(L=2, d=128, H=2, dk=64, F=192, R=2, D=2, Fa=48, V=512, Tmax=64),
    "110m": dict(L=5, d=896, H=14, dk=64, F=2389, R=8, D=2, Fa=170, V=32000, Tmax=1024),
}


# --------------------------------------------------------------- safetensors writer

def to_storage(arr, dtype):
    """float array -> (little-endian bytes, the stored values as float32)."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if dtype == "F32":
        return a.astype("<f4").tobytes(), a
    if dtype == "F16":
        h = a.astype("<f2")
        return h.tobytes(), h.astype(np.float32)
    if dtype == "BF16":
        u = a.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
        b = u.astype("<u2")
        return b.tobytes(), (b.astype(np.uint32) << 16).view(np.float32)
    raise ValueError("dtype must be F32, F16 or BF16")


def write_safetensors(path, tensors, dtype, metadata=None, data_align=8, data_skew=0):
    """tensors: list of (name, float array), written in name order with
    contiguous data_offsets from 0; the header is padded with spaces so that
    the data region starts at data_skew modulo data_align bytes."""
    if data_align < 1 or not 0 <= data_skew < data_align:
        raise ValueError("need data_align >= 1 and 0 <= data_skew < data_align")
    header = {"__metadata__": metadata or {"format": "pt"}}
    blobs = []
    off = 0
    for name, arr in sorted(tensors, key=lambda t: t[0]):
        raw, _ = to_storage(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((data_skew - 8 - len(hj)) % data_align)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return off


# --------------------------------------------------------------- weights

def tensor_list(cfg, rng, g_type, arch="causal", n_labels=0):
    """The checkpoint's tensors in the spec's order, as float32 arrays."""
    L, d, H, dk, F = cfg["L"], cfg["d"], cfg["H"], cfg["dk"], cfg["F"]
    R, D, Fa, V = cfg["R"], cfg["D"], cfg["Fa"], cfg["V"]
    out = []

    def add(name, a):
        out.append((name, np.asarray(a, dtype=np.float32)))

    def linear(prefix, n_out, n_in):
        a = math.sqrt(6.0 / (n_in + n_out))  # xavier_uniform
        add(prefix + ".weight", rng.uniform(-a, a, (n_out, n_in)))
        add(prefix + ".bias", rng.normal(0.0, 0.02, n_out))

    def lnorm(prefix, n):
        add(prefix + ".weight", 1.0 + rng.normal(0.0, 0.05, n))
        add(prefix + ".bias", rng.normal(0.0, 0.02, n))

    def glu(prefix, n, m):
        linear(prefix + ".gluw1", m, n)
        linear(prefix + ".gluw2", m, n)
        linear(prefix + ".gluw3", n, m)

    add("decoder.embedding.weight", rng.normal(0.0, 1.0, (V, d)))
    lnorm("decoder.layernorm1", d)
    # Xavier std of a [H, dk, dk] tensor in PyTorch: fan_in = dk*dk, fan_out = H*dk
    xav = math.sqrt(2.0 / (dk * dk + H * dk))
    for i in range(L):
        p = "decoder.dec_layers.%d." % i
        for w in ("wq", "wk", "wv", "dense"):
            linear(p + "mha1." + w, d, d)
        if g_type == "learned":
            lnorm(p + "mha1.layernorm1", dk)
            for j in range(R):
                for k in range(D):
                    glu(p + "mha1.reslayerAs.%d.denseAs.%d" % (j, k), dk, Fa)
                lnorm(p + "mha1.reslayerAs.%d.layernormA" % j, dk)
            q = p + "mha1.plgatt_layer."
            # W @ A + b must stay away from 0: iSwiGLU(x) ~ x^2/2 there, so
            # A_LM sits near its 1e-9 floor with a large relative rounding
            # error that A_LM**pw (pw < 0) amplifies.  Hence |b| ~ 0.6 with
            # random signs (both branches of iSwiGLU are used) and
            # std(W @ A) ~ 0.1.
            add(q + "Wlst", rng.normal(0.0, 0.1 / math.sqrt(dk), (H, dk, dk)))
            add(q + "blst", rng.choice([-0.6, 0.6], (H, dk, dk)) + rng.normal(0.0, 0.02, (H, dk, dk)))
            add(q + "pwlst", rng.normal(0.0, 0.1, (H, dk, dk)))
            add(q + "alst", rng.normal(0.0, xav, (H, dk, dk)))
            add(q + "balst", rng.normal(0.0, 0.02, (H, dk, dk)))
        glu(p + "ffn", d, F)
        lnorm(p + "layernorm1", d)
        lnorm(p + "layernorm2", d)
    if arch == "causal":
        linear("final_layer", V, d)
    elif arch == "token":
        linear("score", n_labels, d)
    elif arch == "sequence":
        a = math.sqrt(6.0 / (d + n_labels))
        add("score.weight", rng.uniform(-a, a, (n_labels, d)))
    elif arch == "qa":
        linear("qa_outputs", 2, d)
    if g_type != "learned":
        add("decoder.past_G_values", predefined_g(cfg, rng, g_type))
    if arch == "model":
        out = [(n[len("decoder."):] if n.startswith("decoder.") else n, a) for n, a in out]
    return out


def predefined_g(cfg, rng, g_type):
    """[L, 3, 1, H, dk, dk] = [A, A_LM, G_LM] per layer.  identity: zeros,
    zeros, I (as the HF port initialises it: an SDPA LLM).  random: G_LM ~
    N(0, 1/dk).  external: G_LM = I + N(0, 0.1^2), with A and A_LM filled with
    plausible values (a symmetric A, A_LM > 0) that the forward does not use."""
    L, H, dk = cfg["L"], cfg["H"], cfg["dk"]
    g = np.zeros((L, 3, 1, H, dk, dk), dtype=np.float64)
    eye = np.eye(dk)
    if g_type == "identity":
        g[:, 2, 0] = eye
    elif g_type == "random":
        g[:, 2, 0] = rng.normal(0.0, 1.0 / math.sqrt(dk), (L, H, dk, dk))
    elif g_type == "external":
        a = rng.normal(0.0, 1.0, (L, H, dk, dk))
        g[:, 0, 0] = (a + np.swapaxes(a, -1, -2)) / 2
        g[:, 1, 0] = np.abs(rng.normal(0.0, 0.1, (L, H, dk, dk))) + 1e-9
        g[:, 2, 0] = eye + rng.normal(0.0, 0.1, (L, H, dk, dk))
    else:
        raise ValueError("g_type must be learned, identity, random or external")
    return g


def config_json(cfg, reference_rope, g_type, dtype, arch="causal", n_labels=0, rope_scaling=None,
                dtype_key="torch_dtype"):
    c = config_base(cfg, reference_rope, g_type, dtype, arch)
    if dtype_key != "torch_dtype":
        c[dtype_key] = c.pop("torch_dtype")
    if arch in ("token", "sequence"):
        names = ["O"] + ["L%d" % i for i in range(1, n_labels)]
        c["id2label"] = {str(i): n for i, n in enumerate(names)}
        c["label2id"] = {n: i for i, n in enumerate(names)}
    if rope_scaling is not None:
        c["rope_scaling"] = rope_scaling
    return c


def config_base(cfg, reference_rope, g_type, dtype, arch):
    return {
        "architectures": [ARCHS[arch]],
        "model_type": "pldrllm",
        "hidden_act": "silu",
        "layer_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "reference_rope": bool(reference_rope),
        "custom_G_type": None if g_type == "learned" else g_type,
        "bos_token_id": 2,
        "eos_token_id": 3,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "glu_bias": True,
        "final_bias": True,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
        "head_dim": cfg["dk"],
        "num_hidden_layers": cfg["L"],
        "hidden_size": cfg["d"],
        "num_attention_heads": cfg["H"],
        "intermediate_size": cfg["F"],
        "vocab_size": cfg["V"],
        "A_dff": cfg["Fa"],
        "num_reslayerA": cfg["R"],
        "num_denseA": cfg["D"],
        "max_position_embeddings": cfg["Tmax"],
    }


def make_checkpoint(outdir, cfg, seed=0, reference_rope=True, dtype="F32", shards=1, g_type="learned",
                    data_align=8, data_skew=0, arch="causal", n_labels=3, rope_scaling=None,
                    dtype_key="torch_dtype", extra_config=None):
    """Writes the checkpoint; returns its directory.  cfg: dict with keys
    L, d, H, dk, F, R, D, Fa, V, Tmax (missing ones from the tiny preset).
    data_align, data_skew: where each file's data region starts (see
    write_safetensors)."""
    full = dict(PRESETS["tiny"])
    full.update(cfg)
    cfg = full
    if cfg["d"] != cfg["H"] * cfg["dk"]:
        raise ValueError("hidden size d must equal heads x head_dim")
    if cfg["dk"] % 2:
        raise ValueError("head_dim must be even (RoPE)")
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = tensor_list(cfg, rng, g_type, arch, n_labels)
    conf = config_json(cfg, reference_rope, g_type, dtype, arch, n_labels, rope_scaling, dtype_key)
    conf.update(extra_config or {})
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
        f.write("\n")
    for stale in os.listdir(outdir):
        if stale.endswith(".safetensors") or stale == "model.safetensors.index.json":
            os.remove(os.path.join(outdir, stale))
    if shards <= 1:
        write_safetensors(os.path.join(outdir, "model.safetensors"), tensors, dtype, data_align=data_align,
                          data_skew=data_skew)
        return outdir
    # Deal tensors to shards, largest first, each to the lightest shard.
    bins = [[] for _ in range(shards)]
    loads = [0] * shards
    for name, a in sorted(tensors, key=lambda t: (-t[1].size, t[0])):
        i = loads.index(min(loads))
        bins[i].append((name, a))
        loads[i] += a.size
    weight_map = {}
    total = 0
    for i, b in enumerate(bins):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        total += write_safetensors(os.path.join(outdir, fn), b, dtype, data_align=data_align, data_skew=data_skew)
        for name, _ in b:
            weight_map[name] = fn
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return outdir


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="mkmodel.py", description="random PLDR-LLM checkpoint")
    ap.add_argument("-o", "--output", required=True, help="checkpoint directory")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    for flag, key in (("--layers", "L"), ("--hidden", "d"), ("--heads", "H"), ("--head-dim", "dk"),
                      ("--ffn", "F"), ("--reslayers", "R"), ("--dense-a", "D"), ("--a-dff", "Fa"),
                      ("--vocab", "V"), ("--max-pos", "Tmax")):
        ap.add_argument(flag, dest=key, type=int)
    ap.add_argument("--reference-rope", choices=["true", "false"], default="true")
    ap.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--g-type", choices=["learned", "identity", "random", "external"], default="learned")
    ap.add_argument("--data-align", type=int, default=8, help="data region start modulus (default 8)")
    ap.add_argument("--data-skew", type=int, default=0, help="data region start modulo --data-align (default 0)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="causal")
    ap.add_argument("--labels", type=int, default=3, help="labels of a classifier (default 3)")
    ap.add_argument("--rope-scaling", help="config.json's rope_scaling, as JSON")
    ap.add_argument("--dtype-key", choices=["torch_dtype", "dtype"], default="torch_dtype")
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for key in cfg:
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    # With only --heads or --head-dim given, keep d = H * dk.
    if args.d is None and (args.H is not None or args.dk is not None):
        cfg["d"] = cfg["H"] * cfg["dk"]
    make_checkpoint(args.output, cfg, seed=args.seed, reference_rope=args.reference_rope == "true",
                    dtype=args.dtype, shards=args.shards, g_type=args.g_type, data_align=args.data_align,
                    data_skew=args.data_skew, arch=args.arch, n_labels=args.labels,
                    rope_scaling=json.loads(args.rope_scaling) if args.rope_scaling else None,
                    dtype_key=args.dtype_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
