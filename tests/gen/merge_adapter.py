#!/usr/bin/python3
"""Write a copy of a base model folder with LoRA adapters merged into its weights.

  merge_adapter.py --base DIR --adapter DIR[:scale] [--adapter ...] --out DIR

For the "unmerged equals merged" test: serving the base with the adapter unmerged must give what
serving this merged folder without adapter gives. Merge rules (SPEC-HF.md D.4/D.5), in float64:
  Linear:     W' = W + s·B·A                       (s = alpha/r, or alpha/sqrt(r) with rsLoRA,
                                                    times the optional ":scale")
  DoRA:       W' = (m / ||W + s·B·A||_row)[:,None] ⊙ (W + s·B·A)
  Embedding:  E' = E + s·(B·A)ᵀ
Several adapters are merged one after another (PEFT's order). DoRA adapters may only be merged
alone (sequential DoRA merges are not the same function as several active DoRA adapters).
If the base ties lm_head to the embedding and the embedding is merged, lm_head.weight is written
out separately with the ORIGINAL embedding and tie_word_embeddings set false: unmerged embedding
LoRA only changes the input lookup, never the tied head.

Which modules are merged follows the tensors present in the file (not the config's targeting);
r comes from lora_A's shape and alpha from alpha_pattern, so this is a second route to the same
numbers that the reference computes from the config.
"""

import argparse
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


def _alpha_for(acfg, module):
    for p, v in (acfg.get("alpha_pattern") or {}).items():
        if re.match(r"(.*\.)?(%s)$" % p, module):
            return v
    return acfg.get("lora_alpha", 8)


def merge(base, adapters, out):
    """adapters: list of (dir, scale)."""
    with open(os.path.join(base, "config.json")) as f:
        cfg = json.load(f)
    W, dtypes = st.load_folder(base)
    orig_embed = W["model.embed_tokens.weight"].copy()
    embed_merged = False
    if len(adapters) > 1:
        for d, _ in adapters:
            with open(os.path.join(d, "adapter_config.json")) as f:
                if json.load(f).get("use_dora"):
                    raise SystemExit("%s: DoRA adapters can only be merged alone" % d)
    for d, scale in adapters:
        with open(os.path.join(d, "adapter_config.json")) as f:
            acfg = json.load(f)
        T, _ = st.load_file(os.path.join(d, "adapter_model.safetensors"))
        T = {(k[len("base_model.model."):] if k.startswith("base_model.model.") else k): v
             for k, v in T.items()}
        mods = sorted({k.rsplit(".lora_", 1)[0] for k in T if ".lora_" in k})
        for mod in mods:
            if mod.endswith("embed_tokens"):
                A, B = T[mod + ".lora_embedding_A"], T[mod + ".lora_embedding_B"]
                r = A.shape[0]
            else:
                A, B = T[mod + ".lora_A.weight"], T[mod + ".lora_B.weight"]
                r = A.shape[0]
            alpha = _alpha_for(acfg, mod)
            s = (alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r) * scale
            wkey = mod + ".weight"
            if wkey not in W:
                raise SystemExit("%s: adapter module %s has no base weight %s" % (d, mod, wkey))
            if mod.endswith("embed_tokens"):
                Wn = W[wkey] + s * (B @ A).T
                if acfg.get("use_dora"):
                    Wn = Wn * (T[mod + ".lora_magnitude_vector"] / np.linalg.norm(Wn, axis=0))
                W[wkey] = Wn
                embed_merged = True
            else:
                Wn = W[wkey] + s * (B @ A)
                if acfg.get("use_dora"):
                    m = T[mod + ".lora_magnitude_vector"]
                    Wn = (m / np.linalg.norm(Wn, axis=1))[:, None] * Wn
                W[wkey] = Wn
                if mod + ".lora_B.bias" in T:
                    W[mod + ".bias"] = W[mod + ".bias"] + s * T[mod + ".lora_B.bias"]
    dtype = next(iter(dtypes.values()))
    if embed_merged and cfg.get("tie_word_embeddings"):
        W["lm_head.weight"] = orig_embed
        dtypes["lm_head.weight"] = dtypes["model.embed_tokens.weight"]
        cfg["tie_word_embeddings"] = False
    tmp = out.rstrip("/") + ".tmp-merge"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for f in os.listdir(base):
        if f.endswith(".safetensors") or f.endswith(".index.json") or f.startswith("."):
            continue
        shutil.copy(os.path.join(base, f), os.path.join(tmp, f))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    st.save_file({n: (a.astype(np.float32), dtypes.get(n, dtype)) for n, a in W.items()},
                 os.path.join(tmp, "model.safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", action="append", required=True, help="DIR or DIR:scale")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ads = []
    for s in a.adapter:
        d, scale = s, 1.0
        if ":" in s:
            head, _, tail = s.rpartition(":")
            try:
                d, scale = head, float(tail)
            except ValueError:
                pass
        ads.append((d, scale))
    merge(a.base, ads, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
