#!/usr/bin/python3
"""Generate PEFT LoRA adapter folders for lorad's tests, as `model.save_pretrained()` writes them.

  gen_adapter.py --base DIR --variant NAME --out DIR [--seed N]
  gen_adapter.py --all --base-root ROOT --out ROOT   # ROOT/<base preset>/<variant>/ per PLAN
  gen_adapter.py --list

A folder is adapter_config.json (every LoraConfig field, sorted, indent 2, as PEFT's
save_pretrained writes it) + adapter_model.safetensors (metadata {"format":"pt"}; keys
"base_model.model.<module>.lora_A.weight" [r, in], ".lora_B.weight" [out, r], embedding
".lora_embedding_A" [r, V] / ".lora_embedding_B" [H, r] + ".base_layer.weight", DoRA
".lora_magnitude_vector" [out]) — SPEC-HF.md D.1/D.2.

B is never zero: each module's B is scaled so that s·B·A has rows about STRENGTH times as long as
the base weight's rows, which changes greedy outputs visibly. Only modules the config targets get
tensors (so the reference's config-driven targeting and this generator cross-check each other).
"""

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_io as st  # noqa: E402

STRENGTH = 0.6
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Variant -> LoraConfig overrides + generator options ("dtype" of the tensors, "prefix").
VARIANTS = {
    "qv": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "all7": dict(r=4, lora_alpha=8, target_modules=ALL7),
    "rslora": dict(r=16, lora_alpha=8, use_rslora=True,
                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "bf16": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], dtype="BF16"),
    "f16": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "up_proj"], dtype="F16"),
    "patterns": dict(r=8, lora_alpha=16, target_modules=ALL7,
                     rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 2},
                     alpha_pattern={"v_proj": 32, "down_proj": 4}),
    "layers": dict(r=8, lora_alpha=16, target_modules=ALL7, layers_to_transform=[1],
                   layers_pattern="layers"),
    "dora": dict(r=8, lora_alpha=16, use_dora=True,
                 target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]),
    "embed": dict(r=8, lora_alpha=16, target_modules=["embed_tokens", "q_proj", "v_proj"]),
    "noprefix": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"], prefix=""),
    "regex": dict(r=8, lora_alpha=16,
                  target_modules=r".*\.layers\.0\.self_attn\.(q_proj|v_proj)|.*\.mlp\.up_proj"),
}
for _i in range(16):
    VARIANTS["t%d" % _i] = dict(r=8, lora_alpha=16, seed_offset=100 + _i,
                                target_modules=[["q_proj", "v_proj"], ALL7,
                                                ["q_proj", "k_proj", "v_proj", "o_proj"]][_i % 3])

# What --all writes: base preset -> variants.
PLAN = {
    "default": [v for v in VARIANTS],
    "qwen2_bias": ["qv", "all7", "dora", "embed", "t0", "t1"],
    "llama_bf16": ["qv", "bf16"],
    "gqa": ["all7"],
    "mistral_sw": ["qv"],
    "head_dim": ["all7", "dora"],
}

# Seeds (the --seed value) for PLAN entries whose seed-0 weights gave a greedy top-1/top-2 logit
# gap below 0.005 on the parity prompts; chosen with the reference so that every gap is >= 0.02.
SEEDS = {("default", "all7"): 1, ("default", "bf16"): 3, ("default", "noprefix"): 1,
         ("default", "t8"): 1, ("default", "t10"): 1, ("default", "t12"): 1, ("gqa", "all7"): 2,
         ("head_dim", "dora"): 3}

LORA_DEFAULTS = {
    "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": None, "bias": "none",
    "corda_config": None, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
    "inference_mode": True, "init_lora_weights": True, "layer_replication": None,
    "layers_pattern": None, "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8,
    "lora_bias": False, "lora_dropout": 0.0, "megatron_config": None, "megatron_core": "megatron.core",
    "modules_to_save": None, "peft_type": "LORA", "r": 8, "rank_pattern": {}, "revision": None,
    "target_modules": None, "task_type": "CAUSAL_LM", "trainable_token_indices": None,
    "use_dora": False, "use_rslora": False,
}


def _read_base(base):
    with open(os.path.join(base, "config.json")) as f:
        cfg = json.load(f)
    weights, _ = st.load_folder(base)
    return cfg, weights


def _targeted(cfg_a, key):
    """Does LoraConfig cfg_a target module `key`? (list: equal or '.'+name suffix; str: fullmatch)."""
    tm = cfg_a["target_modules"]
    if isinstance(tm, str):
        if re.fullmatch(tm, key) is None:
            return False
    elif not any(key == t or key.endswith("." + t) for t in tm):
        return False
    ltt = cfg_a.get("layers_to_transform")
    if ltt is not None:
        mo = re.match(r".*?\.%s\.(\d+)\." % (cfg_a.get("layers_pattern") or "[^.]*"), key)
        if not mo or int(mo.group(1)) not in ltt:
            return False
    return True


def _pattern(pats, key, default):
    for p, v in pats.items():
        if re.match(r"(.*\.)?(%s)$" % p, key):
            return v
    return default


def _scale_B(rng, W, A, out_dim, r, s, embedding=False):
    """Random B [out, r] scaled so rows of s·B·A (or columns for embeddings) are STRENGTH times the
    base rows' mean length."""
    B = rng.standard_normal((out_dim, r))
    if embedding:  # delta for token id = s * B @ A[:, id], compared with rows of E
        d = s * (B @ A).T
        target = np.linalg.norm(W, axis=1).mean()
        have = np.linalg.norm(d, axis=1).mean()
    else:
        d = s * (B @ A)
        target = np.linalg.norm(W, axis=1).mean()
        have = np.linalg.norm(d, axis=1).mean()
    return B * (STRENGTH * target / have)


def make_adapter(base, variant, seed):
    spec = dict(VARIANTS[variant])
    dtype = spec.pop("dtype", "F32")
    prefix = spec.pop("prefix", "base_model.model.")
    seed = seed * 1000 + 17 * list(VARIANTS).index(variant) + spec.pop("seed_offset", 0)
    cfg_base, W = _read_base(base)
    L = cfg_base["num_hidden_layers"]
    if spec.get("layers_to_transform"):
        spec["layers_to_transform"] = [i for i in spec["layers_to_transform"] if i < L] or [L - 1]
    acfg = dict(LORA_DEFAULTS)
    acfg.update(spec)
    acfg["base_model_name_or_path"] = "lorad-test/" + os.path.basename(os.path.normpath(base))
    if isinstance(acfg["target_modules"], list):
        acfg["target_modules"] = sorted(acfg["target_modules"])
    rng = np.random.default_rng(seed)
    tensors = {}

    def rs(key):
        r = _pattern(acfg["rank_pattern"], key, acfg["r"])
        a = _pattern(acfg["alpha_pattern"], key, acfg["lora_alpha"])
        return r, (a / math.sqrt(r) if acfg["use_rslora"] else a / r)

    def put(name, arr):
        # Values are rounded to the stored dtype before any derived quantity (DoRA norms) is
        # computed from them.
        tensors[prefix + name] = (st.round_to_dtype(arr, dtype), dtype)

    for i in range(L):
        for sub, names in (("self_attn", ALL7[:4]), ("mlp", ALL7[4:])):
            for n in names:
                key = "model.layers.%d.%s.%s" % (i, sub, n)
                if not _targeted(acfg, key):
                    continue
                W0 = W[key + ".weight"]
                r, s = rs(key)
                A = rng.standard_normal((r, W0.shape[1])) / math.sqrt(W0.shape[1])
                B = _scale_B(rng, W0, A, W0.shape[0], r, s)
                put(key + ".lora_A.weight", A)
                put(key + ".lora_B.weight", B)
                if acfg["use_dora"]:
                    A32 = tensors[prefix + key + ".lora_A.weight"][0].astype(np.float64)
                    B32 = tensors[prefix + key + ".lora_B.weight"][0].astype(np.float64)
                    norm = np.linalg.norm(W0 + s * (B32 @ A32), axis=1)
                    put(key + ".lora_magnitude_vector",
                        norm * np.exp(0.3 * rng.standard_normal(W0.shape[0])))
    key = "model.embed_tokens"
    if _targeted(acfg, key):
        E = W[key + ".weight"]
        r, s = rs(key)
        A = rng.standard_normal((r, E.shape[0]))
        B = _scale_B(rng, E, A, E.shape[1], r, s, embedding=True)
        put(key + ".lora_embedding_A", A)
        put(key + ".lora_embedding_B", B)
        # save_embedding_layers="auto" also stores the full base embedding, in the base's dtype.
        base_dtype = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[cfg_base["torch_dtype"]]
        tensors[prefix + key + ".base_layer.weight"] = (E.astype(np.float32), base_dtype)
    if not tensors:
        raise SystemExit("variant %s targets nothing in %s" % (variant, base))
    return acfg, tensors


def generate(base, variant, out, seed=0, force=False):
    h = hashlib.sha256()
    for f in ("gen_adapter.py", "safetensors_io.py"):
        with open(os.path.join(HERE, f), "rb") as fh:
            h.update(fh.read())
    base_stamp = os.path.join(base, ".gen_stamp")
    if not os.path.exists(base_stamp):
        base_stamp = os.path.join(base, "config.json")
    with open(base_stamp, "rb") as fh:
        h.update(fh.read())
    stamp = "%s %s %d %s" % (variant, os.path.abspath(base), seed, h.hexdigest())
    sp = os.path.join(out, ".gen_stamp")
    if not force and os.path.exists(sp):
        with open(sp) as f:
            if f.read() == stamp:
                return False
    acfg, tensors = make_adapter(base, variant, seed)
    tmp = out.rstrip("/") + ".tmp-gen"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
        f.write(json.dumps(acfg, indent=2, sort_keys=True))
    st.save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"))
    with open(os.path.join(tmp, ".gen_stamp"), "w") as f:
        f.write(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return True


def generate_all(base_root, out_root, force=False, models_gen=True):
    """Write every PLAN entry; generates missing base presets first."""
    if models_gen:
        import gen_model
        for b in PLAN:
            gen_model.generate(b, os.path.join(base_root, b))
    n = 0
    for b, variants in PLAN.items():
        os.makedirs(os.path.join(out_root, b), exist_ok=True)
        for v in variants:
            n += generate(os.path.join(base_root, b), v, os.path.join(out_root, b, v),
                          SEEDS.get((b, v), 0), force)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base")
    ap.add_argument("--variant")
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--base-root")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        print(" ".join(VARIANTS))
        return 0
    if a.all:
        if not (a.base_root and a.out):
            ap.error("--all needs --base-root and --out")
        n = generate_all(a.base_root, a.out, a.force)
        print("%d adapters written under %s" % (n, a.out))
        return 0
    if not (a.base and a.variant and a.out):
        ap.error("give --base, --variant and --out (or --all)")
    if a.variant not in VARIANTS:
        ap.error("unknown variant %r (see --list)" % a.variant)
    generate(a.base, a.variant, a.out, a.seed, a.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
