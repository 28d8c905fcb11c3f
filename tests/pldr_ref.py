#!/usr/bin/python3
"""Independent NumPy reference of the PLDR-LLM forward pass.

The math follows ../shared/docs/pldr-llm.md (model version v510, Hugging Face
port `pldrllm`).  Everything is computed in float64 by default; dtype=float32
runs the same code in single precision (used to check that a checkpoint is
well conditioned: if the float32 reference already differs from the float64
one by more than a small fraction of the parity tolerance, the checkpoint
cannot tell an engine bug from rounding).

Library:
    ckpt = load_checkpoint(dir)                  # config + tensors as stored
    model = Model(ckpt, dtype=np.float64)
    logits, layers = model.forward(ids)          # [T, V], per-layer dicts
    logits_for_mode(model, ids, prefill_n, mode) # the engine's `pldr logits`
    Session(model, mode)                         # step-by-step KV/KVG decoding

Per layer, forward() returns a dict:
    A_raw  q^T q per head, before mha1.layernorm1           [H, dk, dk]
    A      output of the metric learner (the A that the HF port stores in
           past_G_values[l, 0] and that PLGA consumes)      [H, dk, dk]
    A_LM   iSwiGLU(W @ A + b) + 1e-9                        [H, dk, dk]
    G_LM   a @ A_LM**pw + ba                                [H, dk, dk]
For custom_G_type checkpoints A_raw is None and A, A_LM, G_LM come from
decoder.past_G_values.

CLI (mirrors the engine's parity command):
    pldr_ref.py logits -m DIR --ids 5,17,42 [--prefill N] [--cache none|kv|kvg]
                       [--dtype f64|f32] [--weights f32|f16|bf16|q8_0|q4_0] -o FILE.npy
    pldr_ref.py gcache -m DIR --ids ... -o FILE.npy   # [L, 3, H, dk, dk] = A, A_LM, G_LM
    pldr_ref.py info -m DIR
"""

import json
import math
import os
import struct
import sys

import needs_numpy  # noqa: F401,E402
import numpy as np  # noqa: E402

# --------------------------------------------------------------- safetensors

ST_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}


def bf16_to_f32(u16):
    """BF16 bits (uint16) -> float32: BF16 is the upper half of a float32."""
    return (u16.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """Returns {name: (dtype_str, ndarray as stored upcast to float32/64)}.

    Validates the layout the way the engine must: header inside the file,
    offsets sorted, contiguous from 0, ending at the end of the file, byte
    counts matching shape x dtype size."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("%s: shorter than 8 bytes" % path)
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > len(data) - 8:
        raise ValueError("%s: header length %d past the end of the file" % (path, hlen))
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    body = memoryview(data)[8 + hlen:]
    spans = []
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in ST_DTYPES:
            raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, dt))
        npdt, size = ST_DTYPES[dt]
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        n = int(np.prod(shape)) if shape else 1
        if end - begin != n * size:
            raise ValueError("%s: tensor %s: %d bytes for shape %s %s" % (path, name, end - begin, shape, dt))
        spans.append((begin, end, name))
        raw = np.frombuffer(body[begin:end], dtype=npdt).reshape(shape)
        if dt == "BF16":
            arr = bf16_to_f32(raw)
        elif dt == "F64":
            arr = raw.astype(np.float64)
        else:
            arr = raw.astype(np.float32)  # exact for F16 and F32
        out[name] = (dt, arr)
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError("%s: tensor %s starts at %d, expected %d" % (path, name, begin, pos))
        pos = end
    if pos != len(body):
        raise ValueError("%s: tensor data ends at %d, file data has %d bytes" % (path, pos, len(body)))
    return out


class Checkpoint:
    """config.json plus every tensor, as stored (F16/BF16 values exactly
    representable in float32, so later casts lose nothing)."""

    def __init__(self, path, config, tensors, dtypes):
        self.path = path
        self.config = config
        self.tensors = tensors
        self.dtypes = dtypes

    def __getitem__(self, name):
        return self.tensors[name]

    def __contains__(self, name):
        return name in self.tensors


def load_checkpoint(path):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        weight_map = None
        files = ["model.safetensors"]
    tensors, dtypes = {}, {}
    for fn in files:
        for name, (dt, arr) in read_safetensors(os.path.join(path, fn)).items():
            if name in tensors:
                raise ValueError("tensor %s appears twice" % name)
            if weight_map is not None and weight_map.get(name) != fn:
                raise ValueError("tensor %s in %s, index says %s" % (name, fn, weight_map.get(name)))
            tensors[name] = arr
            dtypes[name] = dt
    if weight_map is not None:
        missing = set(weight_map) - set(tensors)
        if missing:
            raise ValueError("index lists missing tensors: %s" % sorted(missing)[:5])
    return Checkpoint(path, config, tensors, dtypes)


# --------------------------------------------------------------- weight storage dtypes
# What the engine's --dtype bf16 / q8_0 / q4_0 store for the large matrices
# (llama.cpp's block layouts; Q8_0 from its reference quantizer
# quantize_row_q8_0_ref, Q4_0 with a least-squares scale): every row is padded
# with zeros to a multiple of 32 and cut into blocks of 32; the rounding is
# float32 as in the engine, then the dequantized values (d * q, exact in
# float32) replace the tensor.

QBLOCK = 32


def _blocks(x):
    """x [rows, cols] -> float32 [rows, nb, 32], zero-padded."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.shape
    nb = (cols + QBLOCK - 1) // QBLOCK
    out = np.zeros((rows, nb * QBLOCK), dtype=np.float32)
    out[:, :cols] = x
    return out.reshape(rows, nb, QBLOCK)


def quantize_q8_0(x):
    """Returns (q int8 [rows, nb, 32], d float16 [rows, nb])."""
    xb = _blocks(x)
    amax = np.max(np.abs(xb), axis=-1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    v = (xb * inv[..., None]).astype(np.float32).astype(np.float64)
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)  # roundf: halves away from zero
    return q, d.astype(np.float16)


def quantize_q4_0(x):
    """Returns (q uint8 in [0, 15] [rows, nb, 32], d float16 [rows, nb]): the
    least-squares choice of each block's scale among 19 candidates that map
    the value m of largest magnitude to -(8 + c / 10), c = -9..9; for each,
    L = round(x * iscale) clipped to [-8, 7] and d = sum(x L) / sum(L^2); the
    first candidate with the largest sum(x L)^2 / sum(L^2) wins."""
    xb = _blocks(x)
    idx = np.argmax(np.abs(xb), axis=-1)  # the first of equal magnitudes, as the C loop
    mx = np.take_along_axis(xb, idx[..., None], axis=-1)[..., 0]
    safe = np.where(mx != 0, mx, np.float32(1)).astype(np.float32)
    x64 = xb.astype(np.float64)
    best = np.full(mx.shape, -1.0)
    best_d = np.zeros(mx.shape)
    best_l = np.zeros(xb.shape)
    for c in range(-9, 10):
        with np.errstate(over="ignore"):
            isc = (-(np.float32(8) + np.float32(0.1) * np.float32(c)) / safe).astype(np.float32)
        ok = (mx != 0) & np.isfinite(isc)
        isc = np.where(ok, isc, np.float32(0)).astype(np.float32)
        v = (xb * isc[..., None]).astype(np.float32).astype(np.float64)
        l = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -8, 7)  # halves away from zero
        sxl = np.sum(x64 * l, axis=-1)  # exact in float64, whatever the order
        sl2 = np.sum(l * l, axis=-1)
        score = np.where(sl2 > 0, sxl * sxl / np.where(sl2 > 0, sl2, 1), 0.0)
        better = ok & (sl2 > 0) & (score > best)
        best = np.where(better, score, best)
        best_d = np.where(better, sxl / np.where(sl2 > 0, sl2, 1), best_d)
        best_l = np.where(better[..., None], l, best_l)
    d = best_d.astype(np.float32).astype(np.float16)
    return (best_l + 8).astype(np.uint8), d


def to_bf16(x):
    """float32 -> the float32 value of its bfloat16 rounding (nearest even)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return bf16_to_f32(r)


def dequantized(x, dtype):
    """The values the engine's kernels read for matrix x stored as dtype."""
    x = np.asarray(x, dtype=np.float32)
    if dtype in ("f32", None):
        return x
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return to_bf16(x)
    rows, cols = x.shape
    if dtype == "q8_0":
        q, d = quantize_q8_0(x)
        w = q.astype(np.float32) * d.astype(np.float32)[..., None]
    elif dtype == "q4_0":
        q, d = quantize_q4_0(x)
        w = (q.astype(np.float32) - np.float32(8)) * d.astype(np.float32)[..., None]
    else:
        raise ValueError("unknown weight dtype %s" % dtype)
    return w.reshape(rows, -1)[:, :cols]


def large_matrices(ckpt):
    """Names of the matrices the engine stores in the weight dtype."""
    names = ["decoder.embedding.weight"]
    names += [h for h in ("final_layer.weight", "score.weight", "qa_outputs.weight") if h in ckpt]
    L = int(ckpt.config["num_hidden_layers"])
    for l in range(L):
        p = "decoder.dec_layers.%d." % l
        names += [p + "mha1.%s.weight" % w for w in ("wq", "wk", "wv", "dense")]
        names += [p + "ffn.gluw%d.weight" % i for i in (1, 2, 3)]
    return names


def with_weight_dtype(ckpt, dtype):
    """A copy of ckpt whose large matrices hold what --dtype `dtype` stores."""
    tensors = dict(ckpt.tensors)
    for name in large_matrices(ckpt):
        tensors[name] = dequantized(tensors[name], dtype)
    return Checkpoint(ckpt.path, ckpt.config, tensors, dict(ckpt.dtypes))


# --------------------------------------------------------------- building blocks

def silu(x):
    # x * sigmoid(x), written to stay finite for large |x|
    return x / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def iswiglu(x):
    return x * silu(x)


def layernorm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)  # biased, as PyTorch
    return xc / np.sqrt(var + eps) * w + b


def linear(x, w, b):
    y = x @ w.T
    return y + b if b is not None else y


def softmax(s):
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=-1, keepdims=True)


def rope_parameters(config, dk, seq_len=None):
    """(inv_freq [dk/2], attention factor) of config.json's rope_scaling, from
    the Hugging Face rope types (transformers' modeling_rope_utils): each type
    written here from its published formula, in float64.  seq_len: the longest
    sequence the frequencies serve (dynamic, longrope), max_position_embeddings
    when None."""
    theta = float(config.get("rope_theta", 10000.0))
    tmax = int(config["max_position_embeddings"])
    rs = config.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    i2 = np.arange(0, dk, 2, dtype=np.float64)               # 2i
    default = 1.0 / theta ** (i2 / dk)
    if kind == "default":
        return default, 1.0
    if config.get("reference_rope", True):
        raise ValueError("rope_scaling applies to reference_rope false only")
    if kind == "linear":
        return default / rs["factor"], 1.0
    if kind == "dynamic":
        # NTK-aware base at the current length; unchanged up to max_position_embeddings
        L = max(seq_len or tmax, tmax)
        f = rs["factor"]
        base = theta * (f * L / tmax - (f - 1)) ** (dk / (dk - 2))
        return 1.0 / base ** (i2 / dk), 1.0
    if kind == "yarn":
        f = rs["factor"]
        orig = rs.get("original_max_position_embeddings")
        if orig:
            f = tmax / orig   # transformers: the context ratio replaces factor
        else:
            orig = tmax

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
        att = rs.get("attention_factor")
        if att is None:
            if rs.get("mscale") and rs.get("mscale_all_dim"):
                att = mscale(f, rs["mscale"]) / mscale(f, rs["mscale_all_dim"])
            else:
                att = mscale(f)
        fast = rs.get("beta_fast") or 32
        slow = rs.get("beta_slow") or 1

        def dim_of(rotations):   # the dimension index that turns `rotations` times over orig
            return dk * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        lo, hi = dim_of(fast), dim_of(slow)
        if rs.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dk - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(dk // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        keep = 1 - ramp   # share of the unscaled (extrapolated) frequency
        return default / f * (1 - keep) + default * keep, float(att)
    if kind == "llama3":
        f, lo_f, hi_f = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        out = default.copy()
        for j, w in enumerate(default):
            wavelen = 2 * math.pi / w
            if wavelen > orig / lo_f:
                out[j] = w / f
            elif wavelen >= orig / hi_f:
                smooth = (orig / wavelen - lo_f) / (hi_f - lo_f)
                out[j] = (1 - smooth) * w / f + smooth * w
        return out, 1.0
    if kind == "longrope":
        orig = config.get("original_max_position_embeddings")
        f = rs.get("factor")
        if orig:
            f = tmax / orig
        else:
            orig = tmax
        att = rs.get("attention_factor")
        if att is None:
            att = 1.0 if f <= 1 else math.sqrt(1 + math.log(f) / math.log(orig))
        L = seq_len or 0
        ext = np.asarray(rs["long_factor"] if L > orig else rs["short_factor"], dtype=np.float64)
        return 1.0 / (ext * theta ** (i2 / dk)), float(att)
    raise ValueError("unknown rope type %r" % kind)


def rope(x, pos, theta, interleaved, dtype, inv=None, att=1.0):
    """x [T, H, dk], pos [T] (ints).  Angles in float64, then cast.  inv, att:
    scaled frequencies and the attention factor (rope_parameters)."""
    T, H, dk = x.shape
    half = dk // 2
    if inv is None:
        inv = theta ** (-(2.0 * np.arange(half, dtype=np.float64)) / dk)  # theta_i
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]    # [T, dk/2]
    c = (np.cos(ang) * att).astype(dtype)[:, None, :]
    s = (np.sin(ang) * att).astype(dtype)[:, None, :]
    if interleaved:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x1 * c + x0 * s
    else:
        x0, x1 = x[..., :half], x[..., half:]
        out = np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)
    return out


# --------------------------------------------------------------- the model

class Model:
    def __init__(self, ckpt, dtype=np.float64):
        if isinstance(ckpt, str):
            ckpt = load_checkpoint(ckpt)
        self.ckpt = ckpt
        self.dtype = np.dtype(dtype)
        c = ckpt.config
        self.L = int(c["num_hidden_layers"])
        self.d = int(c["hidden_size"])
        self.H = int(c["num_attention_heads"])
        self.dk = int(c.get("head_dim") or self.d // self.H)
        self.F = int(c["intermediate_size"])
        self.R = int(c["num_reslayerA"])
        self.D = int(c["num_denseA"])
        self.Fa = int(c["A_dff"])
        self.V = int(c["vocab_size"])
        self.Tmax = int(c["max_position_embeddings"])
        self.eps = float(c.get("layer_norm_eps", 1e-6))
        self.theta = float(c.get("rope_theta", 10000.0))
        self.interleaved = bool(c.get("reference_rope", True))
        self.g_type = c.get("custom_G_type")
        self.inv_freq, self.rope_att = rope_parameters(c, self.dk)
        self.arch = (c.get("architectures") or ["PldrllmForCausalLM"])[0]
        labels = c.get("id2label")
        if labels is None and c.get("label2id") is not None:
            labels = {str(v): k for k, v in c["label2id"].items()}
        if labels is None:
            labels = {"0": "LABEL_0", "1": "LABEL_1"}
        self.labels = [labels[str(i)] for i in range(len(labels))]
        self.pad = int(c.get("pad_token_id", 0))
        self.n_out = {"PldrllmForCausalLM": self.V, "PldrllmModel": self.d,
                      "PldrllmForQuestionAnswering": 2}.get(self.arch, len(self.labels))
        if self.H * self.dk != self.d:
            raise ValueError("hidden_size %d != heads %d x head_dim %d" % (self.d, self.H, self.dk))
        self._w = {}

    def w(self, name):
        """A tensor by name in the compute dtype (None if absent: optional biases)."""
        if name not in self._w:
            if name not in self.ckpt and name.startswith("decoder.") and name[8:] in self.ckpt:
                self._w[name] = np.ascontiguousarray(self.ckpt[name[8:]], dtype=self.dtype)  # PldrllmModel alone
            elif name not in self.ckpt:
                self._w[name] = None
            else:
                self._w[name] = np.ascontiguousarray(self.ckpt[name], dtype=self.dtype)
        return self._w[name]

    def _glu(self, x, p):
        h = silu(linear(x, self.w(p + "gluw1.weight"), self.w(p + "gluw1.bias")))
        h = h * linear(x, self.w(p + "gluw2.weight"), self.w(p + "gluw2.bias"))
        return linear(h, self.w(p + "gluw3.weight"), self.w(p + "gluw3.bias"))

    def _ln(self, x, p):
        return layernorm(x, self.w(p + ".weight"), self.w(p + ".bias"), self.eps)

    # ---- deductive branch
    def metric_learner(self, l, A_raw):
        p = "decoder.dec_layers.%d.mha1." % l
        A = self._ln(A_raw, p + "layernorm1")
        for j in range(self.R):
            Ain = A
            for k in range(self.D):
                A = self._glu(A, p + "reslayerAs.%d.denseAs.%d." % (j, k))
            A = self._ln(A + Ain, p + "reslayerAs.%d.layernormA" % j)
        return A

    def plga(self, l, A):
        """A (metric learner output) -> A_LM, G_LM."""
        p = "decoder.dec_layers.%d.mha1.plgatt_layer." % l
        with np.errstate(over="ignore", invalid="ignore"):
            A_LM = iswiglu(self.w(p + "Wlst") @ A + self.w(p + "blst")) + self.dtype.type(1e-9)
            A_P = np.power(A_LM, self.w(p + "pwlst"))
            G_LM = self.w(p + "alst") @ A_P + self.w(p + "balst")
        return A_LM, G_LM

    def predefined_g(self, l):
        pg = self.w("decoder.past_G_values")  # [L, 3, 1, H, dk, dk]
        return pg[l, 0, 0], pg[l, 1, 0], pg[l, 2, 0]

    def layer_g(self, l, A_raw, override):
        """The per-layer dict (A_raw, A, A_LM, G_LM) this forward uses."""
        ov = override[l] if override is not None else None
        if ov is not None:
            if ov.get("G_LM") is not None:
                return dict(A_raw=ov.get("A_raw"), A=ov.get("A"), A_LM=ov.get("A_LM"),
                            G_LM=np.asarray(ov["G_LM"], dtype=self.dtype))
            if ov.get("A") is not None:
                A = np.asarray(ov["A"], dtype=self.dtype)
                A_LM, G_LM = self.plga(l, A)
                return dict(A_raw=ov.get("A_raw"), A=A, A_LM=A_LM, G_LM=G_LM)
            A_raw = np.asarray(ov["A_raw"], dtype=self.dtype)
        if self.g_type is not None:
            A, A_LM, G_LM = self.predefined_g(l)
            return dict(A_raw=None, A=A, A_LM=A_LM, G_LM=G_LM)
        A = self.metric_learner(l, A_raw)
        A_LM, G_LM = self.plga(l, A)
        return dict(A_raw=A_raw, A=A, A_LM=A_LM, G_LM=G_LM)

    # ---- full forward
    def embed(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= self.V:
            raise ValueError("token id out of range [0, %d)" % self.V)
        x = self.w("decoder.embedding.weight")[ids] * self.dtype.type(math.sqrt(self.d))
        return self._ln(x, "decoder.layernorm1")

    def qkv(self, l, x, pos):
        p = "decoder.dec_layers.%d.mha1." % l
        T = x.shape[0]
        q = linear(x, self.w(p + "wq.weight"), self.w(p + "wq.bias")).reshape(T, self.H, self.dk)
        k = linear(x, self.w(p + "wk.weight"), self.w(p + "wk.bias")).reshape(T, self.H, self.dk)
        v = linear(x, self.w(p + "wv.weight"), self.w(p + "wv.bias")).reshape(T, self.H, self.dk)
        q = rope(q, pos, self.theta, self.interleaved, self.dtype, self.inv_freq, self.rope_att)
        k = rope(k, pos, self.theta, self.interleaved, self.dtype, self.inv_freq, self.rope_att)
        return q, k, v

    def attend(self, q, k, v, G, qpos, kpos):
        """q [Tq,H,dk], k/v [Tk,H,dk], G [H,dk,dk]; causal by position."""
        qg = np.einsum("thi,hij->thj", q, G)
        s = np.einsum("thj,shj->hts", qg, k) / self.dtype.type(math.sqrt(self.dk))
        mask = np.asarray(kpos)[None, :] > np.asarray(qpos)[:, None]  # [Tq, Tk]
        s = np.where(mask[None, :, :], -np.inf, s)
        att = np.einsum("hts,shd->thd", softmax(s), v)
        return att.reshape(q.shape[0], self.d)

    def post_attention(self, l, x, att):
        p = "decoder.dec_layers.%d." % l
        x1 = self._ln(linear(att, self.w(p + "mha1.dense.weight"), self.w(p + "mha1.dense.bias")) + x,
                      p + "layernorm1")
        return self._ln(self._glu(x1, p + "ffn.") + x1, p + "layernorm2")

    def final(self, x):
        """The class's head on every row of the last hidden state x [T, d]:
        final_layer (causal LM), score (classifiers; no bias for sequence
        classification), qa_outputs (start, end), or x itself (PldrllmModel)."""
        if self.arch == "PldrllmModel":
            return x
        name = {"PldrllmForCausalLM": "final_layer", "PldrllmForQuestionAnswering": "qa_outputs"}.get(self.arch, "score")
        return linear(x, self.w(name + ".weight"), self.w(name + ".bias"))

    def sequence_row(self, ids):
        """Sequence classification's row: the last token that is not pad_token_id
        (row 0 when every one is, as transformers' argmax gives)."""
        rows = [t for t, i in enumerate(ids) if i != self.pad]
        return rows[-1] if rows else 0

    def forward(self, ids, override=None):
        """One forward over ids (positions 0..T-1).  override: None or a list
        of L dicts with G_LM (used as is), or A (PLGA recomputed from it), or
        A_raw (metric learner and PLGA recomputed).  Returns (logits [T, V],
        per-layer dicts)."""
        T = len(ids)
        if T > self.Tmax:
            raise ValueError("sequence of %d exceeds max_position_embeddings %d" % (T, self.Tmax))
        pos = np.arange(T)
        x = self.embed(ids)
        layers = []
        for l in range(self.L):
            q, k, v = self.qkv(l, x, pos)
            A_raw = None
            if self.g_type is None and (override is None or override[l] is None):
                A_raw = np.einsum("thi,thj->hij", q, q)  # all T positions, no mask
            g = self.layer_g(l, A_raw, override)
            layers.append(g)
            with np.errstate(over="ignore", invalid="ignore"):
                att = self.attend(q, k, v, g["G_LM"], pos, pos)
            x = self.post_attention(l, x, att)
        return self.final(x), layers


# --------------------------------------------------------------- cached decoding

class Session:
    """Step-by-step decoding with real caches (an implementation independent
    of logits_for_mode's shortcut, used to cross-check it).

    mode "kv": K, V and A (metric learner output) cached; G_LM recomputed from
    the cached A each step.  mode "kvg": K, V and G_LM cached."""

    def __init__(self, model, mode):
        assert mode in ("kv", "kvg")
        self.m = model
        self.mode = mode
        self.K = [None] * model.L
        self.Vc = [None] * model.L
        self.G = [None] * model.L
        self.n = 0

    def prefill(self, ids):
        m = self.m
        logits, layers = m.forward(ids)
        # Recompute K, V of the prompt (forward() does not return them).
        pos = np.arange(len(ids))
        x = m.embed(ids)
        for l in range(m.L):
            q, k, v = m.qkv(l, x, pos)
            self.K[l], self.Vc[l] = k, v
            self.G[l] = layers[l]
            att = m.attend(q, k, v, layers[l]["G_LM"], pos, pos)
            x = m.post_attention(l, x, att)
        self.n = len(ids)
        return logits

    def step(self, tok):
        m = self.m
        pos = np.array([self.n])
        x = m.embed([tok])
        for l in range(m.L):
            q, k, v = m.qkv(l, x, pos)
            self.K[l] = np.concatenate([self.K[l], k], axis=0)
            self.Vc[l] = np.concatenate([self.Vc[l], v], axis=0)
            if self.mode == "kv" and m.g_type is None:
                G = m.plga(l, self.G[l]["A"])[1]
            else:
                G = self.G[l]["G_LM"]
            with np.errstate(over="ignore", invalid="ignore"):
                att = m.attend(q, self.K[l], self.Vc[l], G, pos, np.arange(self.n + 1))
            x = m.post_attention(l, x, att)
        self.n += 1
        return m.final(x)[0]


# --------------------------------------------------------------- parity command

def logits_for_mode(model, ids, prefill_n=None, mode="kvg"):
    """The rows `pldr logits --ids IDS --prefill N --cache MODE` must produce.

    Rows 0..N-1: one forward over ids[0:N].  Row t >= N: with none, the last
    row of a full forward over ids[0:t+1]; with kv/kvg, a decode step through
    the caches, where G_LM comes from the prefill.  With G_LM fixed, row t of
    a forward depends only on ids[0..t] (causal attention), so all decode
    rows are the rows N.. of one forward over ids with G_LM overridden."""
    if not isinstance(model, Model):
        model = Model(model)
    ids = list(ids)
    T = len(ids)
    N = T if prefill_n is None else int(prefill_n)
    if not 1 <= N <= T:
        raise ValueError("prefill %d outside 1..%d" % (N, T))
    if mode not in ("none", "kv", "kvg"):
        raise ValueError("mode must be none, kv or kvg")
    pre, layers = model.forward(ids[:N])
    out = np.empty((T, model.n_out), dtype=model.dtype)
    out[:N] = pre
    if N == T:
        return out
    if mode == "none":
        for t in range(N, T):
            out[t] = model.forward(ids[:t + 1])[0][-1]
    else:
        full, _ = model.forward(ids, override=[{"G_LM": g["G_LM"]} for g in layers])
        out[N:] = full[N:]
    return out


def rel_err(a, b):
    """max|a - b| / max|b| (b the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def g_cache(model, ids):
    """[L, 3, H, dk, dk] = A (metric learner output), A_LM, G_LM of a forward."""
    _, layers = model.forward(ids)
    return np.stack([np.stack([g["A"], g["A_LM"], g["G_LM"]]) for g in layers])


# --------------------------------------------------------------- a second, naive implementation

def naive_forward(ckpt, ids):
    """The same forward written with Python scalars and loops, straight from
    the spec, sharing no code with Model.  Only for tiny checkpoints: it is
    O(everything) in pure Python.  Returns logits as a list of lists."""
    c = ckpt.config
    L, d, H = c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"]
    dk = c.get("head_dim") or d // H
    R, D = c["num_reslayerA"], c["num_denseA"]
    eps = c.get("layer_norm_eps", 1e-6)
    theta = c.get("rope_theta", 10000.0)
    inter = c.get("reference_rope", True)
    gtype = c.get("custom_G_type")
    Wt = {k: v.astype(np.float64).tolist() for k, v in ckpt.tensors.items()}
    T = len(ids)

    def lin(x, p):  # x: vector
        w, b = Wt[p + ".weight"], Wt[p + ".bias"]
        return [sum(w[o][i] * x[i] for i in range(len(x))) + b[o] for o in range(len(w))]

    def ln(x, p):
        n = len(x)
        mu = sum(x) / n
        var = sum((v - mu) ** 2 for v in x) / n
        w, b = Wt[p + ".weight"], Wt[p + ".bias"]
        return [(x[i] - mu) / math.sqrt(var + eps) * w[i] + b[i] for i in range(n)]

    def sl(v):
        return v / (1.0 + math.exp(-v))

    def glu(x, p):
        a, b = lin(x, p + ".gluw1"), lin(x, p + ".gluw2")
        return lin([sl(a[i]) * b[i] for i in range(len(a))], p + ".gluw3")

    def mm(a, b):
        n, m, k = len(a), len(b[0]), len(b)
        return [[sum(a[i][t] * b[t][j] for t in range(k)) for j in range(m)] for i in range(n)]

    def rot(vec, pos):
        out = list(vec)
        for i in range(dk // 2):
            ang = pos * theta ** (-2.0 * i / dk)
            cs, sn = math.cos(ang), math.sin(ang)
            a, b = (2 * i, 2 * i + 1) if inter else (i, i + dk // 2)
            out[a] = vec[a] * cs - vec[b] * sn
            out[b] = vec[b] * cs + vec[a] * sn
        return out

    E = Wt["decoder.embedding.weight"]
    x = [ln([E[t][j] * math.sqrt(d) for j in range(d)], "decoder.layernorm1") for t in ids]
    for l in range(L):
        p = "decoder.dec_layers.%d." % l
        q = [lin(x[t], p + "mha1.wq") for t in range(T)]
        k = [lin(x[t], p + "mha1.wk") for t in range(T)]
        v = [lin(x[t], p + "mha1.wv") for t in range(T)]
        att = [[0.0] * d for _ in range(T)]
        for h in range(H):
            sl_ = slice(h * dk, (h + 1) * dk)
            qh = [rot(q[t][sl_], t) for t in range(T)]
            kh = [rot(k[t][sl_], t) for t in range(T)]
            vh = [v[t][sl_] for t in range(T)]
            if gtype is None:
                A = [[sum(qh[t][i] * qh[t][j] for t in range(T)) for j in range(dk)] for i in range(dk)]
                A = [ln(row, p + "mha1.layernorm1") for row in A]
                for j in range(R):
                    Ain = A
                    for kk in range(D):
                        A = [glu(row, p + "mha1.reslayerAs.%d.denseAs.%d" % (j, kk)) for row in A]
                    A = [ln([A[r][i] + Ain[r][i] for i in range(dk)], p + "mha1.reslayerAs.%d.layernormA" % j)
                         for r in range(dk)]
                pg = p + "mha1.plgatt_layer."
                WA = mm(Wt[pg + "Wlst"][h], A)
                b = Wt[pg + "blst"][h]
                ALM = [[(lambda z: z * sl(z))(WA[i][j] + b[i][j]) + 1e-9 for j in range(dk)] for i in range(dk)]
                pw = Wt[pg + "pwlst"][h]
                AP = [[ALM[i][j] ** pw[i][j] for j in range(dk)] for i in range(dk)]
                aAP = mm(Wt[pg + "alst"][h], AP)
                ba = Wt[pg + "balst"][h]
                G = [[aAP[i][j] + ba[i][j] for j in range(dk)] for i in range(dk)]
            else:
                G = Wt["decoder.past_G_values"][l][2][0][h]
            for t in range(T):
                qg = [sum(qh[t][i] * G[i][j] for i in range(dk)) for j in range(dk)]
                s = [sum(qg[j] * kh[u][j] for j in range(dk)) / math.sqrt(dk) for u in range(t + 1)]
                mx = max(s)
                e = [math.exp(z - mx) for z in s]
                tot = sum(e)
                for j in range(dk):
                    att[t][h * dk + j] = sum(e[u] / tot * vh[u][j] for u in range(t + 1))
        x1 = [ln([a + b for a, b in zip(lin(att[t], p + "mha1.dense"), x[t])], p + "layernorm1") for t in range(T)]
        x = [ln([a + b for a, b in zip(glu(x1[t], p + "ffn"), x1[t])], p + "layernorm2") for t in range(T)]
    return [lin(x[t], "final_layer") for t in range(T)]


# --------------------------------------------------------------- CLI

def _parse_ids(s):
    return [int(t) for t in s.split(",") if t.strip() != ""]


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="pldr_ref.py", description="float64 PLDR-LLM reference")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logits", help="logits as `pldr logits` defines them")
    lg.add_argument("-m", "--model", required=True)
    lg.add_argument("--ids", required=True)
    lg.add_argument("--prefill", type=int)
    lg.add_argument("--cache", choices=["none", "kv", "kvg"], default="kvg")
    lg.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    lg.add_argument("--weights", choices=["f32", "f16", "bf16", "q8_0", "q4_0"], default="f32",
                    help="the engine's --dtype: the large matrices as it stores them")
    lg.add_argument("-o", "--output", required=True)
    lg.add_argument("--compare", help="an .npy (e.g. the engine's) to compare against, prints rel_err per row")
    gc = sub.add_parser("gcache", help="A, A_LM, G_LM of one forward as [L, 3, H, dk, dk] float32")
    gc.add_argument("-m", "--model", required=True)
    gc.add_argument("--ids", required=True)
    gc.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    gc.add_argument("-o", "--output", required=True)
    inf = sub.add_parser("info", help="config and tensor summary")
    inf.add_argument("-m", "--model", required=True)
    args = ap.parse_args(argv)

    if args.cmd == "info":
        ck = load_checkpoint(args.model)
        print(json.dumps(ck.config, indent=1))
        for name in sorted(ck.tensors):
            a = ck.tensors[name]
            print("%-70s %-5s %-18s std %.4g" % (name, ck.dtypes[name], list(a.shape), float(np.std(a))))
        return 0

    dtype = np.float64 if args.dtype == "f64" else np.float32
    ckpt = load_checkpoint(args.model)
    if getattr(args, "weights", "f32") != "f32":
        ckpt = with_weight_dtype(ckpt, args.weights)
    model = Model(ckpt, dtype)
    ids = _parse_ids(args.ids)
    if args.cmd == "gcache":
        np.save(args.output, g_cache(model, ids).astype(np.float32))
        return 0
    out = logits_for_mode(model, ids, args.prefill, args.cache)
    if not np.all(np.isfinite(out)):
        print("pldr_ref.py: non-finite logits", file=sys.stderr)
    np.save(args.output, out.astype(np.float32))
    if args.compare:
        other = np.load(args.compare)
        if other.shape != out.shape:
            print("shape %s vs reference %s" % (other.shape, out.shape))
            return 1
        scale = np.max(np.abs(out))
        for t in range(out.shape[0]):
            print("row %3d  max|diff|/max|ref| = %.3g" % (t, np.max(np.abs(other[t] - out[t])) / scale))
        print("all rows: %.3g" % rel_err(other, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
