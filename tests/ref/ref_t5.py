#!/usr/bin/python3
"""Float64 reference of T5ForConditionalGeneration (transformers v4) with unmerged PEFT LoRA.

  ref_t5.py --model DIR [--adapter DIR[:scale]]... --prompt 1,2,3 [--prompt ...] --max-tokens N
            [--top-logprobs K]

prints one JSON line per prompt, the same shape as ref.py / lr-generate:
  {"prompt": [...], "tokens": [...], "logprobs": [...], "top": [[[id, lp], ...] per step],
   "min_gap": smallest top1 - top2 logit gap seen}
The prompt is the encoder input (given as is: add </s> yourself if you want it); the decoder starts
from decoder_start_token_id. Greedy (argmax, lowest id on ties), exactly max_tokens tokens (eos is
ignored, as ref.py does).

A direct transcription of SPEC-HF.md section C, written for clarity, not speed: every step runs
the encoder and the whole decoder sequence again, without any cache. Everything is float64 except
the relative position buckets, computed in float32 as torch computes them (SPEC C.3). LoRA: SPEC
D.1-D.3 for the subset T5 adapters use (target_modules list or regex, rank/alpha patterns,
rsLoRA); each adapter's contribution is added, ":scale" multiplies its scaling.
"""

import argparse
import json
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gen"))
import safetensors_io as st  # noqa: E402


class RefError(Exception):
    pass


def load_model(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    if not archs or archs[0] not in ("T5ForConditionalGeneration", "T5WithLMHeadModel"):
        raise RefError("%s: architecture %r is not T5ForConditionalGeneration" % (folder, archs))
    w, _ = st.load_folder(folder)
    ff = cfg.get("feed_forward_proj", "relu")
    parts = ff.split("-")
    act = "gelu_new" if ff == "gated-gelu" else parts[-1]
    m = {"cfg": cfg, "w": w, "dir": folder,
         "H": cfg.get("d_model", 512), "dkv": cfg.get("d_kv", 64), "nH": cfg.get("num_heads", 8),
         "Le": cfg.get("num_layers", 6), "V": cfg.get("vocab_size", 32128),
         "Ld": cfg.get("num_decoder_layers") or cfg.get("num_layers", 6),
         "NB": cfg.get("relative_attention_num_buckets", 32),
         "MD": cfg.get("relative_attention_max_distance", 128),
         "eps": float(cfg.get("layer_norm_epsilon", 1e-6)),
         "gated": parts[0] == "gated", "act": act,
         "tie": cfg.get("tie_word_embeddings", True),  # PretrainedConfig default: True
         "start": cfg.get("decoder_start_token_id", 0)}
    emb = "shared.weight"
    if emb not in w:
        emb = "encoder.embed_tokens.weight"
    m["E"] = w[emb]
    m["lm_head"] = m["E"] if m["tie"] else w["lm_head.weight"]
    return m


# --------------------------------------------------------------------------------- adapters

def _pattern_value(patterns, key, default):
    for pat, val in (patterns or {}).items():
        if re.match(r"(.*\.)?(%s)$" % pat, key):
            return val
    return default


def _is_target(acfg, key):
    tm = acfg.get("target_modules")
    if tm is None:
        tm = ["q", "v"]  # PEFT's default for t5
    if isinstance(tm, str):
        return re.fullmatch(tm, key) is not None
    return any(key == n or key.endswith("." + n) for n in tm)


def load_adapter(folder, model, weight=1.0):
    """{module key: {"A", "B", "s"}} for every targeted and saved module."""
    with open(os.path.join(folder, "adapter_config.json")) as f:
        acfg = json.load(f)
    for bad in ("use_dora", "fan_in_fan_out", "modules_to_save", "layers_to_transform"):
        if acfg.get(bad):
            raise RefError("%s: %s is not supported by the T5 reference" % (folder, bad))
    arrays, _ = st.load_file(os.path.join(folder, "adapter_model.safetensors"))
    t = {(k[len("base_model.model."):] if k.startswith("base_model.model.") else k): v
         for k, v in arrays.items()}
    mods = {}
    for k in t:
        if not k.endswith(".lora_A.weight"):
            continue
        key = k[:-len(".lora_A.weight")]
        if key + ".weight" not in model["w"]:
            raise RefError("%s: module %s is not in the base" % (folder, key))
        if not _is_target(acfg, key):
            continue
        r = _pattern_value(acfg.get("rank_pattern"), key, acfg.get("r", 8))
        alpha = _pattern_value(acfg.get("alpha_pattern"), key, acfg.get("lora_alpha", 8))
        s = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
        A, B = t[k], t[key + ".lora_B.weight"]
        W0 = model["w"][key + ".weight"]
        if A.shape != (r, W0.shape[1]) or B.shape != (W0.shape[0], r):
            raise RefError("%s: %s A %s / B %s do not fit r=%d, W %s" % (folder, key, A.shape, B.shape, r, W0.shape))
        mods[key] = {"A": A, "B": B, "s": s * weight}
    return {"mods": mods, "dir": folder}


# ---------------------------------------------------------------------------------- forward

def linear(model, adapters, key, x):
    """x·Wᵀ + Σ_adapters s·(x·Aᵀ)·Bᵀ (T5 linears have no bias)."""
    y = x @ model["w"][key + ".weight"].T
    for ad in adapters:
        lo = ad["mods"].get(key)
        if lo is not None:
            y = y + lo["s"] * ((x @ lo["A"].T) @ lo["B"].T)
    return y


def rms_norm(x, w, eps):
    """T5LayerNorm: w · x / sqrt(mean(x²) + eps); no mean subtraction, no bias."""
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def act(name, z):
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "gelu_new":
        return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))
    if name == "gelu":
        from math import erf
        return 0.5 * z * (1.0 + np.vectorize(erf)(z / math.sqrt(2.0)))
    if name == "silu":
        return z / (1.0 + np.exp(-z))
    raise RefError("activation %r not supported by the reference" % name)


def bucket(rp, bidirectional, NB, MD):
    """_relative_position_bucket for one relative position (key − query), torch's fp32 math."""
    base = 0
    if bidirectional:
        NB //= 2
        if rp > 0:
            base = NB
        n = abs(rp)
    else:
        n = max(-rp, 0)
    max_exact = NB // 2
    if n < max_exact:
        return base + n
    f32 = np.float32
    large = max_exact + int(f32(np.log(f32(n) / f32(max_exact))) / f32(math.log(MD / max_exact))
                            * f32(NB - max_exact))
    return base + min(large, NB - 1)


def position_bias(model, table, Tq, Tk, bidirectional, q_offset=0):
    """[nH, Tq, Tk] bias[h, i, j] = table[bucket(j − (i + q_offset)), h]."""
    out = np.empty((model["nH"], Tq, Tk))
    for i in range(Tq):
        for j in range(Tk):
            out[:, i, j] = table[bucket(j - (i + q_offset), bidirectional, model["NB"], model["MD"])]
    return out


def attention(model, adapters, key, x, kv_src, bias, mask):
    """T5Attention: scores = q·kᵀ + bias (+ mask), NO 1/sqrt(d_kv); softmax; ·v; o."""
    nH, dkv = model["nH"], model["dkv"]
    Tq, Tk = x.shape[0], kv_src.shape[0]
    q = linear(model, adapters, key + ".q", x).reshape(Tq, nH, dkv)
    k = linear(model, adapters, key + ".k", kv_src).reshape(Tk, nH, dkv)
    v = linear(model, adapters, key + ".v", kv_src).reshape(Tk, nH, dkv)
    out = np.empty((Tq, nH, dkv))
    for h in range(nH):
        s = q[:, h, :] @ k[:, h, :].T
        if bias is not None:
            s = s + bias[h]
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[:, h, :] = p @ v[:, h, :]
    return linear(model, adapters, key + ".o", out.reshape(Tq, nH * dkv))


def feed_forward(model, adapters, pre, x):
    if model["gated"]:
        hmid = act(model["act"], linear(model, adapters, pre + "wi_0", x)) * \
            linear(model, adapters, pre + "wi_1", x)
    else:
        hmid = act(model["act"], linear(model, adapters, pre + "wi", x))
    return linear(model, adapters, pre + "wo", hmid)


def encode(model, adapters, ids):
    w, eps = model["w"], model["eps"]
    T = len(ids)
    h = model["E"][ids].copy()
    bias = position_bias(model, w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
                         T, T, True)
    for i in range(model["Le"]):
        pre = "encoder.block.%d." % i
        x = rms_norm(h, w[pre + "layer.0.layer_norm.weight"], eps)
        h = h + attention(model, adapters, pre + "layer.0.SelfAttention", x, x, bias, None)
        x = rms_norm(h, w[pre + "layer.1.layer_norm.weight"], eps)
        h = h + feed_forward(model, adapters, pre + "layer.1.DenseReluDense.", x)
    return rms_norm(h, w["encoder.final_layer_norm.weight"], eps)


def decode(model, adapters, enc_out, dec_ids):
    """Logits [T, V] of the decoder over dec_ids (positions 0..T-1) given the encoder output."""
    w, eps = model["w"], model["eps"]
    T = len(dec_ids)
    h = model["E"][dec_ids].copy()
    bias = position_bias(model, w["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
                         T, T, False)
    causal = np.arange(T)[None, :] <= np.arange(T)[:, None]
    for i in range(model["Ld"]):
        pre = "decoder.block.%d." % i
        x = rms_norm(h, w[pre + "layer.0.layer_norm.weight"], eps)
        h = h + attention(model, adapters, pre + "layer.0.SelfAttention", x, x, bias, causal)
        x = rms_norm(h, w[pre + "layer.1.layer_norm.weight"], eps)
        h = h + attention(model, adapters, pre + "layer.1.EncDecAttention", x, enc_out, None, None)
        x = rms_norm(h, w[pre + "layer.2.layer_norm.weight"], eps)
        h = h + feed_forward(model, adapters, pre + "layer.2.DenseReluDense.", x)
    h = rms_norm(h, w["decoder.final_layer_norm.weight"], eps)
    if model["tie"]:
        h = h * model["H"] ** -0.5  # transformers v4: only with a tied head
    return h @ model["lm_head"].T


def log_softmax(z):
    z = z - z.max()
    return z - math.log(np.exp(z).sum())


def generate(model, adapters, prompt, max_tokens, top_k=0):
    ids = np.asarray(prompt, dtype=np.int64)
    if len(ids) == 0 or ids.min() < 0 or ids.max() >= model["V"]:
        raise RefError("prompt ids must be in [0, %d)" % model["V"])
    enc_out = encode(model, adapters, ids)
    dec = [model["start"]]
    out = {"prompt": list(prompt), "tokens": [], "logprobs": [], "top": [], "min_gap": None}
    gap = math.inf
    for _ in range(max_tokens):
        logits = decode(model, adapters, enc_out, dec)[-1]
        lp = log_softmax(logits)
        tok = int(np.argmax(logits))
        srt = np.sort(logits)
        gap = min(gap, float(srt[-1] - srt[-2]))
        out["tokens"].append(tok)
        out["logprobs"].append(float(lp[tok]))
        if top_k:
            order = sorted(range(len(lp)), key=lambda j: (-lp[j], j))[:top_k]
            out["top"].append([[int(j), float(lp[j])] for j in order])
        dec.append(tok)
    out["min_gap"] = gap if max_tokens else None
    return out


def parse_adapter_arg(s):
    if ":" in s:
        d, _, sc = s.rpartition(":")
        try:
            return d, float(sc)
        except ValueError:
            pass
    return s, 1.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", action="append", default=[])
    ap.add_argument("--prompt", action="append", required=True, help="comma-separated token ids")
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--top-logprobs", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        model = load_model(a.model)
        adapters = [load_adapter(d, model, sc) for d, sc in map(parse_adapter_arg, a.adapter)]
        for p in a.prompt:
            prompt = [int(x) for x in p.split(",") if x.strip()]
            print(json.dumps(generate(model, adapters, prompt, a.max_tokens, a.top_logprobs)), flush=True)
    except (RefError, OSError, ValueError, KeyError) as e:
        print("ref_t5.py: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
