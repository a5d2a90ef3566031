#!/usr/bin/python3
"""LoRA parity of the C engine (lr-generate --adapter) with the float64 reference.

Not named test_*: the LoRA engineer enables it (rename to test_lora_parity.py) once lr-generate
supports --adapter. Checks, each with tokens identical and logprobs / top-5 within 1e-3:
  1. every adapter of gen_adapter.PLAN on its base (default: qv, all7, rslora, bf16, f16,
     patterns, layers, dora, embed, noprefix, regex, t0..t15; Qwen2 tied+bias: qv, all7, dora,
     embed, t0, t1; BF16 base; GQA; sliding window; head_dim != H/nH), single and batched;
  2. mixes: two adapters at once (t0 + t1) and a weighted mix (qv:0.5 + all7:1.5);
  3. unmerged equals merged: C with the adapter unmerged vs C on a folder with the adapter merged
     into the weights (merge_adapter.py), and both vs the reference.
Env: LORAD_BUILD, LORAD_MODELS, LORAD_ADAPTERS (default $LORAD_BUILD/testadapters); missing
models/adapters are generated. --quick runs one prompt per adapter. Exit 1 on any mismatch.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity_common as pc  # noqa: E402
import gen_adapter  # noqa: E402
import merge_adapter  # noqa: E402

MERGE_CASES = [["qv"], ["all7"], ["rslora"], ["patterns"], ["dora"], ["embed"], ["qv:0.5", "all7:1.5"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one prompt per adapter")
    a = ap.parse_args()
    t0 = time.time()
    if not os.access(pc.lr_generate_path(), os.X_OK):
        print("FAIL: %s not found or not executable" % pc.lr_generate_path())
        return 1
    pc.ensure_models(list(gen_adapter.PLAN))
    gen_adapter.generate_all(pc.MODELS, pc.ADAPTERS, models_gen=False)
    rows, ok = [], True
    n_tok = pc.gen_model.PARITY_MAX_TOKENS

    def prompts_for(base):
        ps = pc.gen_model.parity_prompts(pc.gen_model.preset_config(base))
        return ps[1:2] if a.quick else ps

    # 1. every adapter alone
    for base, variants in gen_adapter.PLAN.items():
        mdir = os.path.join(pc.MODELS, base)
        for v in variants:
            ad = os.path.join(pc.ADAPTERS, base, v)
            ok &= pc.check_one("%s/%s" % (base, v), mdir, prompts_for(base), n_tok, [ad], rows=rows)
    # 2. mixes on the default base
    mdir = os.path.join(pc.MODELS, "default")
    for mix in (["t0", "t1"], ["qv:0.5", "all7:1.5"]):
        ads = [os.path.join(pc.ADAPTERS, "default", m) for m in mix]
        ok &= pc.check_one("default/" + "+".join(mix), mdir, prompts_for("default"), n_tok, ads, rows=rows)
    # 3. unmerged equals merged (F32 base, so merging adds no rounding beyond fp32)
    merged_root = os.path.join(pc.ADAPTERS, "merged")
    os.makedirs(merged_root, exist_ok=True)
    for case in MERGE_CASES:
        ads = [os.path.join(pc.ADAPTERS, "default", m) for m in case]
        name = "+".join(case).replace(":", "x")
        out = os.path.join(merged_root, name)
        merge_adapter.merge(mdir, [pc.ref.parse_adapter_arg(x) for x in ads], out)
        prompts = prompts_for("default")
        # merged model (no adapter) vs the reference with the adapters unmerged
        ref_out, _ = pc.run_ref(mdir, prompts, n_tok, ads)
        ok &= pc.check_one("merged:" + name, out, prompts, n_tok, (), modes=("single",),
                           ref_out=ref_out, rows=rows)
        # C unmerged vs C merged
        row = {"name": "C-unmerged=C-merged:" + name, "mode": "single", "dlp": 0.0, "dtop": 0.0,
               "gap": min(x["min_gap"] for x in ref_out), "secs": 0.0, "ok": True}
        try:
            cu, t1 = pc.run_c(mdir, prompts, n_tok, ads)
            cm, t2 = pc.run_c(out, prompts, n_tok)
            row["secs"] = t1 + t2
            for p, x, y in zip(prompts, cu, cm):
                y = dict(y, min_gap=None)
                probs, dlp, dtop = pc.compare(x, y)
                row["dlp"], row["dtop"] = max(row["dlp"], dlp), max(row["dtop"], dtop)
                if probs:
                    row["ok"] = False
                    print("MISMATCH unmerged vs merged %s prompt %s:\n    %s" % (name, p, "\n    ".join(probs[:6])))
        except RuntimeError as e:
            row["ok"] = False
            print("ERROR %s: %s" % (name, e))
        ok &= row["ok"]
        rows.append(row)
    print()
    pc.print_table(rows)
    bad = [r for r in rows if not r["ok"]]
    print("\n%d of %d runs agree (tol %.0e); %.1fs" % (len(rows) - len(bad), len(rows), pc.TOL, time.time() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
