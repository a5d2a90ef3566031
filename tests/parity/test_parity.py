#!/usr/bin/python3
"""Parity of the C engine (lr-generate) with the float64 HF reference, base models only.

For every test preset (12 models: Llama F32/BF16/F16-tied, Qwen2 biases, GQA, Mistral sliding
window, llama3 and linear RoPE scaling, head_dim != H/nH, attention+MLP biases, sharded) and its
three parity prompts (1 token; BOS + 5; 13 tokens, longer than the sliding window), greedy
decoding of 14 tokens must give identical tokens and every logprob / top-5 logprob within 1e-3,
once with the prompts run one after another and once as one batch (--batch).

Env: LORAD_BUILD (default build; runs $LORAD_BUILD/lr-generate), LORAD_MODELS (default
$LORAD_BUILD/testmodels; missing presets are generated there). Exit status 1 on any mismatch.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity_common as pc  # noqa: E402


def main():
    t0 = time.time()
    names = [n for n, v in pc.gen_model.PRESETS.items() if v.get("test", True)]
    if not os.access(pc.lr_generate_path(), os.X_OK):
        print("FAIL: %s not found or not executable (build it with `make %s`)"
              % (pc.lr_generate_path(), pc.lr_generate_path()))
        return 1
    pc.ensure_models(names)
    rows, ok = [], True
    for n in names:
        p = pc.gen_model.preset_config(n)
        prompts = pc.gen_model.parity_prompts(p)
        ok &= pc.check_one(n, os.path.join(pc.MODELS, n), prompts, pc.gen_model.PARITY_MAX_TOKENS,
                           rows=rows)
    print()
    pc.print_table(rows)
    bad = [r for r in rows if not r["ok"]]
    print("\n%d of %d runs agree with the reference (tol %.0e); %.1fs"
          % (len(rows) - len(bad), len(rows), pc.TOL, time.time() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
