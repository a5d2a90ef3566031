#!/usr/bin/python3
"""Generate small T5ForConditionalGeneration folders and T5 PEFT adapters, deterministically.

  gen_t5.py --all --out ROOT [--adapters ROOT2] [--check]   # ROOT/<preset>/, ROOT2/<preset>/<variant>/
  gen_t5.py --preset NAME --out DIR                          # one model (t5_small60m: the bench shape)
  gen_t5.py --list

Presets (SPEC-HF section C):
  t5_gated  Flan-T5 style: feed_forward_proj "gated-gelu" (gelu_new), tie_word_embeddings false
            (own lm_head, no output scaling), F32, 3 encoder + 2 decoder blocks.
  t5_gated_f16  the same kind with other weights, stored as F16.
  t5_relu   T5 v1.0 style: "relu", tied head (decoder output scaled by d_model^-0.5), BF16,
            d_kv·heads (96) != d_model (64), 2 + 3 blocks, relative_attention_max_distance 64.
  flan_t5_tok  t5_gated's kind with vocab 32128 and the real T5 tokenizer files copied in.
  t5_small60m  t5-small's shape (512/2048/6+6/8 heads/32128, relu, tied): ~60M parameters, bench only.
Adapters (as PEFT save_pretrained writes them, task_type SEQ_2_SEQ_LM, keys
"base_model.model.<module>.lora_A.weight"): "qv" (target_modules ["q","v"]: hits encoder and decoder
self-attention and EncDecAttention), "all" (q,k,v,o,wi/wi_0/wi_1,wo), tenants t0..t7.
Folders carry no tokenizer: the parity tests speak token ids.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_io as st  # noqa: E402

BASE = dict(vocab=256, d_model=64, d_kv=16, d_ff=128, layers=3, dec_layers=2, heads=4,
            buckets=32, max_dist=128, ff="gated-gelu", tie=False, dtype="F32", eps=1e-6,
            n_positions=512, seed=2000, test=True)
PRESETS = {
    "t5_gated": dict(seed=2001),
    "t5_gated_f16": dict(dtype="F16", seed=2004),
    "t5_relu": dict(vocab=320, d_model=64, d_kv=24, d_ff=160, layers=2, dec_layers=3, heads=4,
                    ff="relu", tie=True, dtype="BF16", max_dist=64, emb_std=2.0, out_gain=4.0, seed=2002),
    # Flan-T5 style with the real T5 tokenizer (../shared/data/t5, 32100 ids; vocab 32128 as the
    # released checkpoints pad it): what the daemon test and the README example serve.
    "flan_t5_tok": dict(vocab=32128, d_model=48, d_kv=16, d_ff=96, layers=2, dec_layers=2, heads=4,
                        tokenizer=True, seed=2003, test=False),
    "t5_small60m": dict(vocab=32128, d_model=512, d_kv=64, d_ff=2048, layers=6, dec_layers=6,
                        heads=8, ff="relu", tie=True, seed=2060, test=False),
}

T5_TOKENIZER_DIR = os.environ.get("LORAD_T5_TOKENIZER",
                                  os.path.join(HERE, "..", "..", "..", "shared", "data", "t5"))
PARITY_MAX_TOKENS = 20  # > 16 decoder positions: the unidirectional log buckets are used too
STRENGTH = 0.6


def preset_config(name):
    p = dict(BASE)
    p.update(PRESETS[name])
    p["name"] = name
    return p


def parity_prompts(p):
    """Encoder prompts: one token, a short one ending in </s> (id 1), and 40 tokens (bidirectional
    log buckets)."""
    rng = np.random.default_rng(p["seed"] + 77)
    V = p["vocab"]
    a = [int(rng.integers(3, V))]
    b = [int(x) for x in rng.integers(3, V, size=6)] + [1]
    c = [int(x) for x in rng.integers(3, V, size=40)]
    return [a, b, c]


def long_prompt(p, n=150):
    rng = np.random.default_rng(p["seed"] + 99)
    return [int(x) for x in rng.integers(3, p["vocab"], size=n)]


def make_config(p):
    cfg = {
        "architectures": ["T5ForConditionalGeneration"],
        "d_ff": p["d_ff"], "d_kv": p["d_kv"], "d_model": p["d_model"],
        "decoder_start_token_id": 0, "dense_act_fn": "gelu_new" if p["ff"] == "gated-gelu" else "relu",
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": p["ff"],
        "initializer_factor": 1.0, "is_encoder_decoder": True,
        "is_gated_act": p["ff"].startswith("gated"), "layer_norm_epsilon": p["eps"],
        "model_type": "t5", "n_positions": p["n_positions"], "num_decoder_layers": p["dec_layers"],
        "num_heads": p["heads"], "num_layers": p["layers"], "output_past": True, "pad_token_id": 0,
        "relative_attention_max_distance": p["max_dist"],
        "relative_attention_num_buckets": p["buckets"],
        "tie_word_embeddings": p["tie"],
        "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[p["dtype"]],
        "transformers_version": "4.48.0", "use_cache": True, "vocab_size": p["vocab"],
    }
    return dict(sorted(cfg.items()))


def make_weights(p):
    rng = np.random.default_rng(p["seed"])
    H, I, V, dkv, nH = p["d_model"], p["d_ff"], p["vocab"], p["d_kv"], p["heads"]
    inner = nH * dkv

    def lin(out, inp, gain=1.5):
        return rng.standard_normal((out, inp), dtype=np.float32) * np.float32(gain / np.sqrt(inp))

    def vec(n, mean, std):
        return np.float32(mean) + rng.standard_normal(n, dtype=np.float32) * np.float32(std)

    w = {}
    w["shared.weight"] = rng.standard_normal((V, H), dtype=np.float32) * np.float32(p.get("emb_std", 1.0))

    def attn(pre, bias):
        # No 1/sqrt(d_kv) in T5 attention: q is kept small instead (as T5's init does).
        w[pre + "q.weight"] = lin(inner, H, gain=1.5 / np.sqrt(dkv))
        w[pre + "k.weight"] = lin(inner, H)
        w[pre + "v.weight"] = lin(inner, H)
        w[pre + "o.weight"] = lin(H, inner, gain=p.get("out_gain", 1.5))
        if bias:
            w[pre + "relative_attention_bias.weight"] = vec(p["buckets"] * nH, 0, 1.0).reshape(p["buckets"], nH)

    def ff(pre):
        if p["ff"].startswith("gated"):
            w[pre + "DenseReluDense.wi_0.weight"] = lin(I, H)
            w[pre + "DenseReluDense.wi_1.weight"] = lin(I, H)
        else:
            w[pre + "DenseReluDense.wi.weight"] = lin(I, H)
        w[pre + "DenseReluDense.wo.weight"] = lin(H, I, gain=p.get("out_gain", 1.5))
        w[pre + "layer_norm.weight"] = vec(H, 1.0, 0.15)

    for i in range(p["layers"]):
        pre = "encoder.block.%d." % i
        attn(pre + "layer.0.SelfAttention.", i == 0)
        w[pre + "layer.0.layer_norm.weight"] = vec(H, 1.0, 0.15)
        ff(pre + "layer.1.")
    w["encoder.final_layer_norm.weight"] = vec(H, 1.0, 0.15)
    for i in range(p["dec_layers"]):
        pre = "decoder.block.%d." % i
        attn(pre + "layer.0.SelfAttention.", i == 0)
        w[pre + "layer.0.layer_norm.weight"] = vec(H, 1.0, 0.15)
        attn(pre + "layer.1.EncDecAttention.", False)
        w[pre + "layer.1.layer_norm.weight"] = vec(H, 1.0, 0.15)
        ff(pre + "layer.2.")
    w["decoder.final_layer_norm.weight"] = vec(H, 1.0, 0.15)
    if not p["tie"]:
        w["lm_head.weight"] = lin(V, H, gain=12.0)
    return w


def _digest(extra):
    h = hashlib.sha256()
    for f in ("gen_t5.py", "safetensors_io.py"):
        with open(os.path.join(HERE, f), "rb") as fh:
            h.update(fh.read())
    h.update(extra.encode())
    return h.hexdigest()


def _dump(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def generate(name, out, force=False):
    p = preset_config(name)
    stamp = _digest(json.dumps(p, sort_keys=True))
    sp = os.path.join(out, ".gen_stamp")
    if not force and os.path.exists(sp) and open(sp).read() == stamp:
        return False
    tmp = out.rstrip("/") + ".tmp-gen"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _dump(make_config(p), os.path.join(tmp, "config.json"))
    _dump({"_from_model_config": True, "decoder_start_token_id": 0, "eos_token_id": 1,
           "pad_token_id": 0, "transformers_version": "4.48.0"},
          os.path.join(tmp, "generation_config.json"))
    st.save_file({n: (a, p["dtype"]) for n, a in make_weights(p).items()},
                 os.path.join(tmp, "model.safetensors"))
    if p.get("tokenizer"):
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"):
            shutil.copy(os.path.join(T5_TOKENIZER_DIR, f), os.path.join(tmp, f))
    with open(os.path.join(tmp, ".gen_stamp"), "w") as f:
        f.write(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
    return True


# ------------------------------------------------------------------------------------- adapters

ATTN = ["q", "k", "v", "o"]
VARIANTS = {
    "qv": dict(r=8, lora_alpha=16, target_modules=["q", "v"]),
    "all": dict(r=4, lora_alpha=8, target_modules=ATTN + ["wi", "wi_0", "wi_1", "wo"]),
}
for _i in range(8):
    VARIANTS["t%d" % _i] = dict(r=8, lora_alpha=16, seed_offset=100 + _i,
                                target_modules=[["q", "v"], ATTN + ["wi", "wi_0", "wi_1", "wo"]][_i % 2])
ADAPTER_PLAN = {"t5_gated": list(VARIANTS), "t5_relu": ["qv", "all", "t0", "t1"],
                "t5_gated_f16": ["qv", "all"],
                "flan_t5_tok": ["qv"]}


def t5_linear_keys(cfg):
    """Every linear module path of a T5 model, in PEFT naming (no base_model.model. prefix)."""
    gated = cfg["feed_forward_proj"].startswith("gated")
    ffn = ["wi_0", "wi_1", "wo"] if gated else ["wi", "wo"]
    keys = []
    for i in range(cfg["num_layers"]):
        keys += ["encoder.block.%d.layer.0.SelfAttention.%s" % (i, n) for n in ATTN]
        keys += ["encoder.block.%d.layer.1.DenseReluDense.%s" % (i, n) for n in ffn]
    for i in range(cfg.get("num_decoder_layers") or cfg["num_layers"]):
        keys += ["decoder.block.%d.layer.0.SelfAttention.%s" % (i, n) for n in ATTN]
        keys += ["decoder.block.%d.layer.1.EncDecAttention.%s" % (i, n) for n in ATTN]
        keys += ["decoder.block.%d.layer.2.DenseReluDense.%s" % (i, n) for n in ffn]
    return keys


def make_adapter(base, variant, seed=0):
    spec = dict(VARIANTS[variant])
    seed = seed * 1000 + 31 * list(VARIANTS).index(variant) + spec.pop("seed_offset", 0)
    with open(os.path.join(base, "config.json")) as f:
        cfg = json.load(f)
    W, _ = st.load_folder(base)
    acfg = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "lorad-test/" +
        os.path.basename(os.path.normpath(base)), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "layers_pattern": None,
        "layers_to_transform": None, "lora_alpha": 8, "lora_dropout": 0.05,
        "modules_to_save": None, "peft_type": "LORA", "r": 8, "rank_pattern": {}, "revision": None,
        "target_modules": None, "task_type": "SEQ_2_SEQ_LM", "use_dora": False, "use_rslora": False,
    }
    acfg.update(spec)
    # Only names the base has (gated: wi_0/wi_1, relu: wi), as a resolved saved config lists them.
    present = {k.rsplit(".", 1)[1] for k in t5_linear_keys(cfg)}
    acfg["target_modules"] = sorted(t for t in acfg["target_modules"] if t in present)
    rng = np.random.default_rng(seed)
    r, s = acfg["r"], acfg["lora_alpha"] / acfg["r"]
    tensors = {}
    for key in t5_linear_keys(cfg):
        if not any(key.endswith("." + t) for t in acfg["target_modules"]):
            continue
        W0 = W[key + ".weight"]
        A = rng.standard_normal((r, W0.shape[1])) / math.sqrt(W0.shape[1])
        B = rng.standard_normal((W0.shape[0], r))
        have = np.linalg.norm(s * (B @ A), axis=1).mean()
        B *= STRENGTH * np.linalg.norm(W0, axis=1).mean() / have
        tensors["base_model.model." + key + ".lora_A.weight"] = (A, "F32")
        tensors["base_model.model." + key + ".lora_B.weight"] = (B, "F32")
    return acfg, tensors


def generate_adapter(base, variant, out, force=False):
    with open(os.path.join(base, ".gen_stamp")) as f:
        stamp = _digest(variant + f.read())
    sp = os.path.join(out, ".gen_stamp")
    if not force and os.path.exists(sp) and open(sp).read() == stamp:
        return False
    acfg, tensors = make_adapter(base, variant)
    tmp = out.rstrip("/") + ".tmp-gen"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
        f.write(json.dumps(acfg, indent=2, sort_keys=True))
    st.save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, ".gen_stamp"), "w") as f:
        f.write(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
    return True


def generate_all(models_root, adapters_root, force=False):
    for n in ADAPTER_PLAN:
        generate(n, os.path.join(models_root, n), force)
    for b, variants in ADAPTER_PLAN.items():
        for v in variants:
            generate_adapter(os.path.join(models_root, b), v, os.path.join(adapters_root, b, v), force)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--adapters", help="with --all: adapter root (default OUT/../testadapters)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--check", action="store_true", help="print the min greedy logit gap per case")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        for n, v in PRESETS.items():
            print(n, "" if v.get("test", True) else "(on request only)")
        return 0
    if not a.out or bool(a.all) == bool(a.preset):
        ap.error("give --out and exactly one of --preset NAME / --all")
    if a.preset:
        if a.preset not in PRESETS:
            ap.error("unknown preset %r" % a.preset)
        print(a.preset, "written" if generate(a.preset, a.out, a.force) else "up to date")
        return 0
    ad_root = a.adapters or os.path.join(os.path.dirname(os.path.abspath(a.out)), "testadapters")
    t0 = time.time()
    generate_all(a.out, ad_root, a.force)
    print("T5 models in %s, adapters in %s (%.1fs)" % (a.out, ad_root, time.time() - t0))
    if a.check:
        sys.path.insert(0, os.path.join(HERE, "..", "ref"))
        import ref_t5  # noqa: E402
        for b, variants in ADAPTER_PLAN.items():
            mdir = os.path.join(a.out, b)
            m = ref_t5.load_model(mdir)
            p = preset_config(b)
            for v in [None] + variants:
                ads = [] if v is None else [ref_t5.load_adapter(os.path.join(ad_root, b, v), m)]
                gaps = [ref_t5.generate(m, ads, pr, PARITY_MAX_TOKENS)["min_gap"]
                        for pr in parity_prompts(p)]
                print("%-10s %-5s min greedy gap %.4f" % (b, v or "base", min(gaps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
