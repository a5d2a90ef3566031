#!/usr/bin/python3
"""Float64 reference of the HuggingFace decoder-only forward pass with unmerged PEFT LoRA.

  ref.py --model DIR [--adapter DIR[:scale]]... --prompt 1,2,3 [--prompt ...] --max-tokens N
         [--top-logprobs K]

prints one JSON line per prompt:
  {"prompt": [...], "tokens": [...], "logprobs": [...], "top": [[[id, lp], ...] per step],
   "min_gap": smallest top1 - top2 logit gap seen}
Greedy decoding (argmax, lowest id on ties), exactly max_tokens tokens (eos is ignored).

This is a direct transcription of SPEC-HF.md B.3-B.6 (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM) and D.1-D.5 (PEFT LoRA, rsLoRA, rank/alpha patterns, layers_to_transform, DoRA,
embedding LoRA), written for clarity, not speed: every step recomputes the whole sequence
without a KV cache. Everything is float64 except the RoPE tables, which are built in float32
exactly as HF builds them (SPEC B.4) and then used in float64.

Several adapters may be given; each one's contribution is added (as PEFT does with several active
adapters), and the optional ":scale" multiplies that adapter's scaling s everywhere s appears
(s = lora_alpha/r, or lora_alpha/sqrt(r) with rsLoRA; for DoRA also inside the weight norm).
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

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RefError(Exception):
    pass


# ----------------------------------------------------------------------------------- model loading

def _rope_params(cfg):
    """(theta, scaling dict or None) from rope_theta/rope_scaling (v4) or rope_parameters (v5)."""
    rp = cfg.get("rope_parameters")
    if rp:
        theta = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rs = dict(rp)
    else:
        theta = float(cfg.get("rope_theta", 10000.0))
        rs = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else None
    if rs is not None:
        kind = rs.get("rope_type", rs.get("type", "default"))
        rs["rope_type"] = kind
        if kind == "default":
            rs = None
    return theta, rs


def rope_inv_freq(theta, d_rot, scaling=None):
    """inv_freq[0 .. d_rot/2) in float32, as transformers computes it (SPEC B.4)."""
    f32 = np.float32
    k2 = np.arange(0, d_rot, 2, dtype=np.int64).astype(f32)       # 2k in fp32
    e = k2 / f32(d_rot)                                             # exponent in fp32
    inv = (f32(1.0) / (f32(theta) ** e)).astype(f32)                # pow in fp32
    if scaling is None:
        return inv
    kind = scaling["rope_type"]
    if kind == "linear":
        return (inv / f32(scaling["factor"])).astype(f32)
    if kind == "llama3":
        factor = f32(scaling["factor"])
        lo = f32(scaling["low_freq_factor"])
        hi = f32(scaling["high_freq_factor"])
        old_ctx = f32(scaling["original_max_position_embeddings"])
        low_wavelen = old_ctx / lo
        high_wavelen = old_ctx / hi
        wavelen = f32(2 * math.pi) / inv
        llama = np.where(wavelen > low_wavelen, inv / factor, inv).astype(f32)
        smooth = ((old_ctx / wavelen - lo) / (hi - lo)).astype(f32)
        smoothed = ((f32(1) - smooth) * llama / factor + smooth * llama).astype(f32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, llama).astype(f32)
    raise RefError("rope type %r is not implemented by the reference" % kind)


def rope_tables(inv_freq, positions):
    """cos, sin [T, d_rot] built in float32 (angles pos*inv in fp32), returned as float64."""
    pos = np.asarray(positions, dtype=np.int64).astype(np.float32)
    freqs = (pos[:, None] * inv_freq[None, :]).astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=1)
    return np.cos(emb).astype(np.float64), np.sin(emb).astype(np.float64)


def load_model(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    arch = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2"}.get(archs[0] if archs else None)
    if arch is None:
        raise RefError("%s: architecture %r not supported by the reference" % (folder, archs))
    weights, dtypes = st.load_folder(folder)
    m = {"cfg": cfg, "arch": arch, "w": weights, "dtypes": dtypes, "dir": folder}
    H = cfg["hidden_size"]
    nH = cfg["num_attention_heads"]
    nKV = cfg.get("num_key_value_heads") or nH
    hd = cfg.get("head_dim") or H // nH
    m.update(H=H, nH=nH, nKV=nKV, hd=hd, L=cfg["num_hidden_layers"], V=cfg["vocab_size"],
             eps=float(cfg.get("rms_norm_eps", 1e-6)))
    if cfg.get("hidden_act", "silu") != "silu":
        raise RefError("hidden_act %r not supported by the reference" % cfg.get("hidden_act"))
    theta, scaling = _rope_params(cfg)
    d_rot = int(hd * cfg.get("partial_rotary_factor", 1.0))
    m["d_rot"] = d_rot
    m["inv_freq"] = rope_inv_freq(theta, d_rot, scaling)
    # Sliding window per layer (SPEC B.5): Mistral: every layer if set; Qwen2: only with
    # use_sliding_window, for layers >= max_window_layers; Llama: never.
    win = [None] * m["L"]
    sw = cfg.get("sliding_window")
    if arch == "mistral" and sw:
        win = [int(sw)] * m["L"]
    if arch == "qwen2" and cfg.get("use_sliding_window") and sw:
        mwl = cfg.get("max_window_layers", m["L"])
        win = [int(sw) if i >= mwl else None for i in range(m["L"])]
    m["window"] = win
    if cfg.get("tie_word_embeddings", False):
        m["lm_head"] = weights["model.embed_tokens.weight"]
    else:
        m["lm_head"] = weights["lm_head.weight"]
    return m


# --------------------------------------------------------------------------------- adapter loading

def _pattern_value(patterns, key, default):
    """rank_pattern / alpha_pattern lookup (SPEC D.1): first P with re.match('(.*\\.)?(P)$', key)."""
    for pat, val in (patterns or {}).items():
        if re.match(r"(.*\.)?(%s)$" % pat, key):
            return val
    return default


def _matches_list(key, names):
    return any(key == n or key.endswith("." + n) for n in names)


def _is_target(acfg, key):
    tm = acfg.get("target_modules")
    if tm is None:
        tm = ["q_proj", "v_proj"]
    if isinstance(tm, str):
        if tm == "all-linear":
            hit = key.split(".")[-1] in LINEAR_MODULES
        else:
            hit = re.fullmatch(tm, key) is not None
    else:
        hit = _matches_list(key, tm)
    if not hit:
        return False
    ex = acfg.get("exclude_modules")
    if ex:
        if isinstance(ex, str) and re.fullmatch(ex, key):
            return False
        if isinstance(ex, list) and _matches_list(key, ex):
            return False
    ltt = acfg.get("layers_to_transform")
    if ltt is not None and not isinstance(tm, str):
        pats = acfg.get("layers_pattern")
        if isinstance(pats, str):
            pats = [pats]
        idx = None
        if not pats:
            mo = re.match(r".*?\.[^.]*\.(\d+)\.", key)
            idx = int(mo.group(1)) if mo else None
        else:
            for pat in pats:
                mo = re.match(r".*?\.%s\.(\d+)\." % pat, key)
                if mo:
                    idx = int(mo.group(1))
                    break
        if idx is None:
            return False
        if isinstance(ltt, int):
            ltt = [ltt]
        if idx not in ltt:
            return False
    return True


def load_adapter(folder, model, weight=1.0):
    """Read a PEFT folder. Returns {"mods": {(layer, name): lora}, "embed": lora or None, ...}."""
    with open(os.path.join(folder, "adapter_config.json")) as f:
        acfg = json.load(f)
    if acfg.get("peft_type", "LORA") != "LORA":
        raise RefError("%s: peft_type %r is not LORA" % (folder, acfg.get("peft_type")))
    if acfg.get("fan_in_fan_out"):
        raise RefError("%s: fan_in_fan_out is not used by Llama-family models" % folder)
    if acfg.get("modules_to_save"):
        raise RefError("%s: modules_to_save is not supported by the reference" % folder)
    arrays, _ = st.load_file(os.path.join(folder, "adapter_model.safetensors"))
    # Accept keys with and without the "base_model.model." prefix (SPEC D.2).
    t = {}
    for k, v in arrays.items():
        t[k[len("base_model.model."):] if k.startswith("base_model.model.") else k] = v
    used = set()

    def take(k):
        used.add(k)
        return t.get(k)

    r0, a0 = acfg.get("r", 8), acfg.get("lora_alpha", 8)
    use_dora = bool(acfg.get("use_dora"))
    lora_bias = bool(acfg.get("lora_bias"))

    def module(key, base_w):
        if not _is_target(acfg, key):
            return None
        r = _pattern_value(acfg.get("rank_pattern"), key, r0)
        alpha = _pattern_value(acfg.get("alpha_pattern"), key, a0)
        s = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
        return r, s * weight

    out = {"mods": {}, "embed": None, "dir": folder, "biases": {}}
    for i in range(model["L"]):
        for sub, names in (("self_attn", LINEAR_MODULES[:4]), ("mlp", LINEAR_MODULES[4:])):
            for n in names:
                key = "model.layers.%d.%s.%s" % (i, sub, n)
                W0 = model["w"][key + ".weight"]
                ms = module(key, W0)
                if ms is None:
                    continue
                r, s = ms
                A, B = take(key + ".lora_A.weight"), take(key + ".lora_B.weight")
                if A is None or B is None:
                    continue  # targeted but not saved: PEFT leaves B at zero, no effect
                if A.shape != (r, W0.shape[1]) or B.shape != (W0.shape[0], r):
                    raise RefError("%s: %s lora_A %s / lora_B %s do not fit r=%d and W %s"
                                   % (folder, key, A.shape, B.shape, r, W0.shape))
                lora = {"A": A, "B": B, "s": s, "bB": take(key + ".lora_B.bias") if lora_bias else None}
                if use_dora:
                    mag = take(key + ".lora_magnitude_vector")
                    if mag is None or mag.shape != (W0.shape[0],):
                        raise RefError("%s: %s DoRA magnitude missing or misshaped" % (folder, key))
                    # ||W0 + s*B*A|| per output row (the weight norm uses the same s as the delta).
                    norm = np.linalg.norm(W0 + s * (B @ A), axis=1)
                    lora["dora_factor"] = mag / norm
                out["mods"][(i, n)] = lora
    key = "model.embed_tokens"
    E = model["w"][key + ".weight"]
    ms = module(key, E)
    if ms is not None:
        r, s = ms
        A, B = take(key + ".lora_embedding_A"), take(key + ".lora_embedding_B")
        if A is not None and B is not None:
            if A.shape != (r, E.shape[0]) or B.shape != (E.shape[1], r):
                raise RefError("%s: embedding LoRA A %s / B %s do not fit r=%d, E %s"
                               % (folder, A.shape, B.shape, r, E.shape))
            base = take(key + ".base_layer.weight")
            emb = {"A": A, "B": B, "s": s, "base": base}
            if use_dora:
                mag = take(key + ".lora_magnitude_vector")
                Eb = E if base is None else base
                norm = np.linalg.norm(Eb + s * (B @ A).T, axis=0)
                emb["dora_factor"] = mag / norm
            out["embed"] = emb
    # Base biases saved with bias="all"/"lora_only" replace the model's (SPEC D.2).
    for k, v in t.items():
        if k.endswith(".bias") and ".lora_" not in k:
            used.add(k)
            out["biases"][k.replace(".base_layer.bias", ".bias")] = v
    return out


# ------------------------------------------------------------------------------------------ forward

def rms_norm(x, w, eps):
    """y = w * x / sqrt(mean(x^2) + eps) over the last axis (SPEC B.3)."""
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(z):
    return z / (1.0 + np.exp(-z))


def apply_rope(v, cos, sin, d_rot):
    """v [T, heads, hd]; rotate_half over the first d_rot dims (SPEC B.4)."""
    half = d_rot // 2
    r = v[..., :d_rot]
    rot = np.concatenate([-r[..., half:], r[..., :half]], axis=-1)
    out = v.copy()
    out[..., :d_rot] = r * cos[:, None, :] + rot * sin[:, None, :]
    return out


def linear(model, adapters, layer, name, x):
    key = "model.layers.%d.%s.%s" % (layer, "self_attn" if name in LINEAR_MODULES[:4] else "mlp", name)
    W = model["w"][key + ".weight"]
    b = model["w"].get(key + ".bias")
    for ad in adapters:
        b = ad["biases"].get(key + ".bias", b)
    base = x @ W.T
    y = base + (b if b is not None else 0.0)
    for ad in adapters:
        lo = ad["mods"].get((layer, name))
        if lo is None:
            continue
        delta = (x @ lo["A"].T) @ lo["B"].T
        if lo["bB"] is not None:
            delta = delta + lo["bB"]
        if "dora_factor" in lo:
            f = lo["dora_factor"]
            y = y + (f - 1.0) * base + f * (lo["s"] * delta)
        else:
            y = y + lo["s"] * delta
    return y


def embed(model, adapters, ids):
    E = model["w"]["model.embed_tokens.weight"]
    h = None
    for ad in adapters:
        e = ad["embed"]
        if e is None:
            continue
        Eb = E if e["base"] is None else e["base"]
        if h is None:
            h = Eb[ids].copy()
            base = Eb[ids]
        delta = e["s"] * (e["A"][:, ids].T @ e["B"].T)
        if "dora_factor" in e:
            h = h + (e["dora_factor"] - 1.0) * base + e["dora_factor"] * delta
        else:
            h = h + delta
    return E[ids].copy() if h is None else h


def forward(model, adapters, ids):
    """Logits [T, V] for token ids (positions 0..T-1), float64."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min() < 0 or ids.max() >= model["V"]:
        raise RefError("token id out of range [0, %d)" % model["V"])
    T = len(ids)
    nH, nKV, hd, eps = model["nH"], model["nKV"], model["hd"], model["eps"]
    w = model["w"]
    cos, sin = rope_tables(model["inv_freq"], np.arange(T))
    h = embed(model, adapters, ids)
    for i in range(model["L"]):
        pre = "model.layers.%d." % i
        x = rms_norm(h, w[pre + "input_layernorm.weight"], eps)
        q = linear(model, adapters, i, "q_proj", x).reshape(T, nH, hd)
        k = linear(model, adapters, i, "k_proj", x).reshape(T, nKV, hd)
        v = linear(model, adapters, i, "v_proj", x).reshape(T, nKV, hd)
        q = apply_rope(q, cos, sin, model["d_rot"])
        k = apply_rope(k, cos, sin, model["d_rot"])
        qi = np.arange(T)[:, None]
        kj = np.arange(T)[None, :]
        allowed = kj <= qi
        W_ = model["window"][i]
        if W_:
            allowed &= kj > qi - W_
        attn = np.empty((T, nH, hd))
        rep = nH // nKV
        for hh in range(nH):
            kv = hh // rep
            scores = (q[:, hh, :] @ k[:, kv, :].T) * (hd ** -0.5)
            scores = np.where(allowed, scores, -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=1, keepdims=True)
            attn[:, hh, :] = p @ v[:, kv, :]
        h = h + linear(model, adapters, i, "o_proj", attn.reshape(T, nH * hd))
        x = rms_norm(h, w[pre + "post_attention_layernorm.weight"], eps)
        g = linear(model, adapters, i, "gate_proj", x)
        u = linear(model, adapters, i, "up_proj", x)
        h = h + linear(model, adapters, i, "down_proj", silu(g) * u)
    h = rms_norm(h, w["model.norm.weight"], eps)
    head = model["lm_head"]
    if model["cfg"].get("tie_word_embeddings"):
        for ad in adapters:  # an adapter's saved base embedding is the tied parameter itself
            if ad["embed"] is not None and ad["embed"]["base"] is not None:
                head = ad["embed"]["base"]
    return h @ head.T


def log_softmax(z):
    z = z - z.max()
    return z - math.log(np.exp(z).sum())


def generate(model, adapters, prompt, max_tokens, top_k=0):
    ids = list(prompt)
    out = {"prompt": list(prompt), "tokens": [], "logprobs": [], "top": [], "min_gap": None}
    gap = math.inf
    for _ in range(max_tokens):
        logits = forward(model, adapters, ids)[-1]
        lp = log_softmax(logits)
        tok = int(np.argmax(logits))  # first maximum = lowest id on ties
        srt = np.sort(logits)
        gap = min(gap, float(srt[-1] - srt[-2]))
        out["tokens"].append(tok)
        out["logprobs"].append(float(lp[tok]))
        if top_k:
            order = sorted(range(len(lp)), key=lambda j: (-lp[j], j))[:top_k]
            out["top"].append([[int(j), float(lp[j])] for j in order])
        ids.append(tok)
    out["min_gap"] = gap if max_tokens else None
    return out


def parse_adapter_arg(s):
    """"DIR" or "DIR:scale" -> (dir, scale)."""
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
        adapters = []
        for s in a.adapter:
            d, scale = parse_adapter_arg(s)
            adapters.append(load_adapter(d, model, scale))
        for p in a.prompt:
            prompt = [int(x) for x in p.split(",") if x.strip()]
            if not prompt:
                raise RefError("empty prompt")
            res = generate(model, adapters, prompt, a.max_tokens, a.top_logprobs)
            print(json.dumps(res), flush=True)
    except (RefError, OSError, ValueError, KeyError) as e:
        print("ref.py: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
