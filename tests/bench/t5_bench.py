#!/usr/bin/python3
"""T5 decode throughput: t5-small's shape (~60M parameters, tests/gen/gen_t5.py t5_small60m) through
the real engine (lr-generate), 1 stream and 8 concurrent streams (8 different adapters when
--adapters is given), 32-token encoder prompts, 64 generated tokens each, greedy.

  t5_bench.py [--build DIR] [--threads N] [--tokens N]

Prints one line per case: streams, generated tokens, seconds, decode tokens/s (the encoder pass is
included in the time: one pass per request, about 3% of the work here). Not pass/fail.
"""

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import gen_t5  # noqa: E402


def run(gen, model, n, tokens, threads):
    prompts = [[3 + (17 * i + 5 * t) % 30000 for t in range(31)] + [1] for i in range(n)]
    cmd = [gen, "--model", model, "--max-tokens", str(tokens), "--threads", str(threads), "--batch"]
    for p in prompts:
        cmd += ["--prompt", ",".join(map(str, p))]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if cp.returncode != 0:
        sys.exit("t5_bench: %s" % cp.stderr[-800:])
    st = dict((k, float(v)) for k, v in re.findall(r"(\w+)=([0-9.]+)", cp.stderr))
    return st["generated_tokens"], st["gen_seconds"], st.get("steps", 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("LORAD_BUILD", "build"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    model = os.path.join(a.build, "benchmodels", "t5_small60m")
    gen_t5.generate("t5_small60m", model)
    gen = os.path.join(a.build, "lr-generate")
    p = gen_t5.preset_config("t5_small60m")
    params = (p["vocab"] * p["d_model"] +
              p["layers"] * (4 * p["d_model"] * p["heads"] * p["d_kv"] + 2 * p["d_model"] * p["d_ff"]) +
              p["dec_layers"] * (8 * p["d_model"] * p["heads"] * p["d_kv"] + 2 * p["d_model"] * p["d_ff"]))
    print("T5 decode (t5-small shape, %.1fM parameters, F32, %s threads)" % (params / 1e6, a.threads or "all"))
    for n in (1, 8):
        toks, secs, steps = run(gen, model, n, a.tokens, a.threads)
        print("  %d stream%s: %4d tokens in %6.2fs, %d passes  → %7.1f tokens/s"
              % (n, "" if n == 1 else "s", toks, secs, steps, toks / secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
