#!/usr/bin/python3
"""LoRA parity of the C engine (lr-generate --adapter) with the float64 reference.

Checks, each with tokens identical and logprobs / top-5 within 1e-3:
  1. every adapter of gen_adapter.PLAN on its base (default: qv, all7, rslora, bf16, f16,
     patterns, layers, dora, embed, noprefix, regex, t0..t15; Qwen2 tied+bias: qv, all7, dora,
     embed, t0, t1; BF16 base; GQA; sliding window; head_dim != H/nH), single and batched;
  2. mixes: two adapters at once (t0 + t1) and a weighted mix (qv:0.5 + all7:1.5);
  3. unmerged equals merged: C with the adapter unmerged vs C on a folder with the adapter merged
     into the weights (merge_adapter.py), and both vs the reference;
  4. heterogeneous batching: 16 prompts over the 16 adapters t0..t15 plus 4 on the base, all in
     one batch (--adapter-per-prompt --batch), give exactly the tokens (and logprobs within
     1e-4·(1+|lp|): the base GEMM sees another batch size) of the same prompts run one at a time, which are themselves checked against
     the reference; lr-generate's stats must show shared passes (mixed_adapter_steps >= 1 and
     max_adapters_in_step >= 16).
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


def check_hetero_batch(mdir, rows):
    import json
    import re
    import subprocess
    prompts_all = pc.gen_model.parity_prompts(pc.gen_model.preset_config("default"))
    plan = []  # (adapter dir or "none", prompt)
    for i in range(20):
        ad = "none" if i % 5 == 4 else os.path.join(pc.ADAPTERS, "default", "t%d" % (i - i // 5))
        p = list(prompts_all[i % len(prompts_all)])
        p = p + [(7 * i + 3) % 50 + 1 for _ in range(i % 4)]  # vary lengths
        plan.append((ad, p))
    row = {"name": "16 adapters+base batched", "mode": "batch", "dlp": 0.0, "dtop": 0.0,
           "gap": 0.0, "secs": 0.0, "ok": True}

    def run(batch):
        cmd = [pc.lr_generate_path(), "--model", mdir, "--max-tokens", str(n_tok_hetero),
               "--top-logprobs", "3", "--adapter-per-prompt"]
        for ad, p in plan:
            cmd += ["--adapter", ad, "--prompt", ",".join(map(str, p))]
        if batch:
            cmd.append("--batch")
        t0 = time.time()
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        row["secs"] += time.time() - t0
        if cp.returncode != 0:
            raise RuntimeError("exit %d: %s" % (cp.returncode, cp.stderr[-1500:]))
        res = [json.loads(x) for x in cp.stdout.splitlines() if x.strip()]
        m = re.search(r"mixed_adapter_steps=(\d+) max_adapters_in_step=(\d+)", cp.stderr)
        if not m or len(res) != len(plan):
            raise RuntimeError("bad lr-generate output: %r" % cp.stderr[-500:])
        return res, int(m.group(1)), int(m.group(2))

    try:
        one, _, _ = run(False)
        many, mixed, maxad = run(True)
        # the one-at-a-time answers are honest: each agrees with the float64 reference
        for (ad, p), c in zip(plan, one):
            r, _ = pc.run_ref(mdir, [p], n_tok_hetero, [] if ad == "none" else [ad], top_k=3)
            probs, _, _ = pc.compare(c, r[0])
            if probs:
                row["ok"] = False
                print("MISMATCH one-at-a-time %s vs ref: %s" % (ad, probs[:3]))
        for (ad, p), a, b in zip(plan, one, many):
            if a["tokens"] != b["tokens"]:
                row["ok"] = False
                print("MISMATCH batched %s prompt %s: tokens %s vs one-at-a-time %s"
                      % (ad, p, b["tokens"], a["tokens"]))
            for x, y in zip(a["logprobs"], b["logprobs"]):
                d = abs(x - y)
                row["dlp"] = max(row["dlp"], d)
                if d > 1e-4 * (1 + abs(x)):  # base GEMM blocking differs with batch size
                    row["ok"] = False
                    print("MISMATCH batched %s logprob %.7f vs %.7f" % (ad, y, x))
        print("heterogeneous batch: mixed_adapter_steps=%d max_adapters_in_step=%d" % (mixed, maxad))
        if mixed < 1 or maxad < 16:
            row["ok"] = False
            print("FAIL: the 16 adapters did not share forward passes (mixed_adapter_steps=%d, "
                  "max_adapters_in_step=%d)" % (mixed, maxad))
    except RuntimeError as e:
        row["ok"] = False
        print("ERROR hetero batch: %s" % e)
    rows.append(row)
    return row["ok"]


n_tok_hetero = 8


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
    # 4. 16 adapters + base in one batch == one at a time
    ok &= check_hetero_batch(mdir, rows)
    print()
    pc.print_table(rows)
    bad = [r for r in rows if not r["ok"]]
    print("\n%d of %d runs agree (tol %.0e); %.1fs" % (len(rows) - len(bad), len(rows), pc.TOL, time.time() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
