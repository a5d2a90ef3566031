#!/usr/bin/python3
"""Generate small HuggingFace model folders for lorad's tests, deterministically from seeds.

  gen_model.py --preset NAME --out DIR [--dtype bf16] [--check]
  gen_model.py --all --out ROOT [--check]      # ROOT/<preset>/ for every test preset
  gen_model.py --list

A folder holds what transformers' save_pretrained writes: config.json, generation_config.json,
model.safetensors (or 3 shards + model.safetensors.index.json), tokenizer.json,
tokenizer_config.json. Generation is idempotent: a folder whose .gen_stamp matches the preset and
the generator sources is left alone.

Weights are scaled so that logits are well spread (embedding std 1, projections 1.5/sqrt(in),
lm_head 4/sqrt(H)); --check runs the float64 reference on the parity prompts and prints the
smallest top-1/top-2 logit gap along the greedy paths (must be comfortably > 1e-3).
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bpe_tok  # noqa: E402
import safetensors_io as st  # noqa: E402

TRANSFORMERS_VERSION = "4.48.0"

# Every preset: architecture, shapes, dtype and quirks. Missing keys take BASE's values.
BASE = dict(arch="llama", vocab=512, hidden=64, inter=160, layers=2, heads=4, kv_heads=2,
            head_dim=None, write_head_dim=False, max_pos=512, dtype="F32", tie=False,
            theta=10000.0, eps=1e-5, rope_scaling=None, sliding_window=None, attn_bias=False,
            mlp_bias=False, shards=1, tok_style="llama3", seed=1, test=True)

PRESETS = {
    # The model `make run` serves.
    "default": dict(vocab=512, hidden=128, inter=344, layers=4, heads=4, kv_heads=2,
                    write_head_dim=True, max_pos=1024, seed=1000),
    "llama_f32": dict(vocab=384, hidden=64, inter=160, layers=2, heads=4, kv_heads=4,
                      theta=500000.0, eps=1e-6, seed=1001),
    "llama_bf16": dict(vocab=512, hidden=96, inter=256, layers=3, heads=6, kv_heads=2,
                       dtype="BF16", seed=1002),
    "llama_f16_tied": dict(vocab=640, hidden=64, inter=192, layers=2, heads=4, kv_heads=2,
                           dtype="F16", tie=True, seed=1003),
    # Qwen2: q/k/v biases, tied head, theta 1e6. sliding_window is set but use_sliding_window is
    # false, as in released Qwen2.5 configs: a loader that applies it anyway fails parity.
    "qwen2_bias": dict(arch="qwen2", vocab=512, hidden=64, inter=224, layers=3, heads=4,
                       kv_heads=2, tie=True, theta=1000000.0, eps=1e-6, sliding_window=4,
                       tok_style="qwen2", seed=1004),
    "gqa": dict(vocab=384, hidden=128, inter=256, layers=2, heads=8, kv_heads=2, seed=1005),
    "mistral_sw": dict(arch="mistral", vocab=512, hidden=64, inter=192, layers=3, heads=4,
                       kv_heads=2, write_head_dim=True, sliding_window=6, tok_style="gpt2",
                       seed=1006),
    "llama3_rope": dict(vocab=512, hidden=64, inter=160, layers=2, heads=2, kv_heads=1,
                        theta=500000.0, max_pos=256,
                        rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                      "original_max_position_embeddings": 32, "rope_type": "llama3"},
                        seed=1007),
    "rope_linear": dict(vocab=384, hidden=64, inter=160, layers=2, heads=4, kv_heads=2,
                        rope_scaling={"type": "linear", "factor": 4.0}, tok_style="gpt2", seed=1008),
    "head_dim": dict(vocab=384, hidden=64, inter=160, layers=2, heads=4, kv_heads=2, head_dim=24,
                     write_head_dim=True, seed=1019),
    # Contexts past 1024 keys: the decode rows of a long prompt are attended in parts (split
    # decoding, core/forward.c). GQA 3:1 and head_dim 16, as SmolLM's 3:1 (AVX-512 decode path).
    "long_ctx": dict(vocab=384, hidden=96, inter=160, layers=2, heads=6, kv_heads=2,
                     max_pos=2048, seed=1020, test=False),
    "attn_bias": dict(vocab=384, hidden=64, inter=160, layers=2, heads=4, kv_heads=2,
                      attn_bias=True, mlp_bias=True, seed=1010),
    "sharded": dict(vocab=512, hidden=96, inter=256, layers=3, heads=4, kv_heads=4, shards=3,
                    seed=1011),
    # SmolLM-135M shape, for the benchmark only (not in --all). The tokenizer's ~1160 learned
    # tokens are padded to 32000 ids with decode-only filler tokens (see bpe_tok.build).
    "smol135": dict(vocab=32000, hidden=576, inter=1536, layers=30, heads=9, kv_heads=3,
                    write_head_dim=True, max_pos=2048, tie=True, theta=10000.0, eps=1e-5,
                    seed=1135, test=False),
}

# Prompts (token ids) used by the parity tests, and max new tokens. Fixed lists, chosen below the
# byte-level tokens' range ends so they are valid for every preset's vocabulary.
PARITY_MAX_TOKENS = 14


def preset_config(name, dtype=None):
    p = dict(BASE)
    p.update(PRESETS[name])
    if dtype:
        p["dtype"] = {"f32": "F32", "bf16": "BF16", "f16": "F16"}[dtype.lower()]
    if p["head_dim"] is None:
        p["head_dim"] = p["hidden"] // p["heads"]
    p["name"] = name
    return p


def tokenizer_size(p):
    return p["vocab"]


def parity_prompts(p):
    """Three prompts: one token, a short one starting with BOS, and one longer than the sliding
    window. Deterministic from the preset seed."""
    rng = np.random.default_rng(p["seed"] + 77)
    n_text = tokenizer_size(p) - len(bpe_tok.SPECIAL_TOKENS)
    bos = n_text  # <|begin_of_text|> is the first special token
    a = [int(rng.integers(0, n_text))]
    b = [bos] + [int(x) for x in rng.integers(0, n_text, size=5)]
    c = [int(x) for x in rng.integers(0, n_text, size=13)]
    return [a, b, c]


def long_prompt(p, n=150):
    """One long prompt (n tokens: several KV blocks, positions far past llama3_rope's original
    context of 32 and mistral_sw's window). Deterministic from the preset seed."""
    rng = np.random.default_rng(p["seed"] + 99)
    n_text = tokenizer_size(p) - len(bpe_tok.SPECIAL_TOKENS)
    return [int(x) for x in rng.integers(0, n_text, size=n)]


def _dtype_name(dt):
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dt]


def make_config(p, specials):
    arch = p["arch"]
    cfg = {
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM"}[arch]],
        "attention_dropout": 0.0,
        "bos_token_id": specials["<|begin_of_text|>"],
        "eos_token_id": specials["<|end_of_text|>"],
        "hidden_act": "silu",
        "hidden_size": p["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": p["inter"],
        "max_position_embeddings": p["max_pos"],
        "model_type": arch,
        "num_attention_heads": p["heads"],
        "num_hidden_layers": p["layers"],
        "num_key_value_heads": p["kv_heads"],
        "rms_norm_eps": p["eps"],
        "rope_scaling": p["rope_scaling"],
        "rope_theta": p["theta"],
        "tie_word_embeddings": p["tie"],
        "torch_dtype": _dtype_name(p["dtype"]),
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": p["vocab"],
    }
    if arch == "llama":
        cfg.update(attention_bias=p["attn_bias"], mlp_bias=p["mlp_bias"], pretraining_tp=1)
    if arch == "mistral":
        cfg["sliding_window"] = p["sliding_window"]
    if arch == "qwen2":
        cfg.update(sliding_window=p["sliding_window"], use_sliding_window=False,
                   max_window_layers=1)
        cfg["bos_token_id"] = None
    if p["write_head_dim"]:
        cfg["head_dim"] = p["head_dim"]
    return dict(sorted(cfg.items()))


def make_weights(p):
    """State dict in transformers' order: name -> float32 array (values before dtype rounding)."""
    rng = np.random.default_rng(p["seed"])
    H, I, V, L = p["hidden"], p["inter"], p["vocab"], p["layers"]
    hd, nH, nKV = p["head_dim"], p["heads"], p["kv_heads"]

    def lin(out, inp, gain=1.5):
        return (rng.standard_normal((out, inp), dtype=np.float32) * np.float32(gain / np.sqrt(inp)))

    def vec(n, mean, std):
        return (np.float32(mean) + rng.standard_normal(n, dtype=np.float32) * np.float32(std))

    w = {}
    # Tied models use the embedding as the head: keep it smaller so logits stay moderate.
    emb_std = 6.0 / np.sqrt(H) if p["tie"] else 1.0
    w["model.embed_tokens.weight"] = rng.standard_normal((V, H), dtype=np.float32) * np.float32(emb_std)
    q_bias = p["attn_bias"] or p["arch"] == "qwen2"
    for i in range(L):
        pre = "model.layers.%d." % i
        w[pre + "self_attn.q_proj.weight"] = lin(nH * hd, H)
        if q_bias:
            w[pre + "self_attn.q_proj.bias"] = vec(nH * hd, 0, 0.3)
        w[pre + "self_attn.k_proj.weight"] = lin(nKV * hd, H)
        if q_bias:
            w[pre + "self_attn.k_proj.bias"] = vec(nKV * hd, 0, 0.3)
        w[pre + "self_attn.v_proj.weight"] = lin(nKV * hd, H)
        if q_bias:
            w[pre + "self_attn.v_proj.bias"] = vec(nKV * hd, 0, 0.3)
        w[pre + "self_attn.o_proj.weight"] = lin(H, nH * hd)
        if p["attn_bias"]:
            w[pre + "self_attn.o_proj.bias"] = vec(H, 0, 0.3)
        w[pre + "mlp.gate_proj.weight"] = lin(I, H)
        if p["mlp_bias"]:
            w[pre + "mlp.gate_proj.bias"] = vec(I, 0, 0.3)
        w[pre + "mlp.up_proj.weight"] = lin(I, H)
        if p["mlp_bias"]:
            w[pre + "mlp.up_proj.bias"] = vec(I, 0, 0.3)
        w[pre + "mlp.down_proj.weight"] = lin(H, I)
        if p["mlp_bias"]:
            w[pre + "mlp.down_proj.bias"] = vec(H, 0, 0.3)
        w[pre + "input_layernorm.weight"] = vec(H, 1.0, 0.15)
        w[pre + "post_attention_layernorm.weight"] = vec(H, 1.0, 0.15)
    w["model.norm.weight"] = vec(H, 1.0, 0.15)
    if not p["tie"]:
        w["lm_head.weight"] = lin(V, H, gain=6.0)
    return w


def _sources_digest():
    h = hashlib.sha256()
    for f in ("gen_model.py", "bpe_tok.py", "safetensors_io.py"):
        with open(os.path.join(HERE, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def stamp_for(p):
    return json.dumps({"preset": p, "sources": _sources_digest()}, sort_keys=True)


def _dump(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def generate(name, out, dtype=None, force=False):
    """Write preset `name` to folder `out`. Returns True if written, False if already current."""
    p = preset_config(name, dtype)
    stamp = stamp_for(p)
    stamp_path = os.path.join(out, ".gen_stamp")
    if not force and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if f.read() == stamp:
                return False
    tmp = out.rstrip("/") + ".tmp-gen"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tok, specials = bpe_tok.build(tokenizer_size(p), p["tok_style"])
    cfg = make_config(p, specials)
    _dump(cfg, os.path.join(tmp, "config.json"))
    gen = {"_from_model_config": True,
           "eos_token_id": [specials["<|end_of_text|>"], specials["<|im_end|>"]],
           "transformers_version": TRANSFORMERS_VERSION}
    if cfg.get("bos_token_id") is not None:
        gen["bos_token_id"] = cfg["bos_token_id"]
    _dump(dict(sorted(gen.items())), os.path.join(tmp, "generation_config.json"))
    _dump(tok, os.path.join(tmp, "tokenizer.json"))
    _dump(bpe_tok.tokenizer_config(p["tok_style"], specials, p["max_pos"]),
          os.path.join(tmp, "tokenizer_config.json"))
    weights = make_weights(p)
    tensors = {n: (a, p["dtype"]) for n, a in weights.items()}
    if p["shards"] > 1:
        st.save_sharded(tensors, tmp, p["shards"])
    else:
        st.save_file(tensors, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, ".gen_stamp"), "w") as f:
        f.write(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
    return True


def check_gaps(name, folder):
    """Run the float64 reference on the parity prompts; return the smallest logit gap."""
    sys.path.insert(0, os.path.join(HERE, "..", "ref"))
    import ref  # noqa: E402
    p = preset_config(name)
    model = ref.load_model(folder)
    gaps = []
    for prompt in parity_prompts(p):
        res = ref.generate(model, [], prompt, PARITY_MAX_TOKENS, 0)
        gaps.append(res["min_gap"])
    return min(gaps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset")
    ap.add_argument("--all", action="store_true", help="every test preset into OUT/<preset>/")
    ap.add_argument("--out", help="output folder (with --all: the root)")
    ap.add_argument("--dtype", help="override the weight dtype: f32, bf16, f16")
    ap.add_argument("--force", action="store_true", help="rewrite even if the stamp matches")
    ap.add_argument("--check", action="store_true", help="print the min greedy logit gap per preset")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        for n, v in PRESETS.items():
            print(n, "" if v.get("test", True) else "(on request only)")
        return 0
    if not a.out or bool(a.all) == bool(a.preset):
        ap.error("give --out and exactly one of --preset NAME / --all")
    if a.preset and a.preset not in PRESETS:
        ap.error("unknown preset %r (see --list)" % a.preset)
    jobs = ([(n, os.path.join(a.out, n)) for n, v in PRESETS.items() if v.get("test", True)]
            if a.all else [(a.preset, a.out)])
    for name, folder in jobs:
        t0 = time.time()
        wrote = generate(name, folder, a.dtype, a.force)
        msg = "%-15s %s %.2fs" % (name, "written" if wrote else "up to date", time.time() - t0)
        if a.check:
            t1 = time.time()
            msg += "  min greedy gap %.4f (ref %.2fs)" % (check_gaps(name, folder), time.time() - t1)
        print(msg, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
