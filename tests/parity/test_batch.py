#!/usr/bin/python3
"""Batching must not change results: 16 different prompts (1 to 45 tokens) through lr-generate
one after another, then all at once (--batch), then all at once with a KV pool so small that
sequences are preempted and recomputed, then with a token budget so small that prompts are
prefilled in chunks over several steps, then both. Every run must give the same greedy tokens and
logprobs / top-logprobs within 1e-5·(1 + |logprob|) of the one-by-one run (see close()), and the stats lr-generate prints must
show that preemption and chunking really happened. The one-by-one run itself is checked against
the float64 reference (tests/ref/ref.py) to 1e-3, so "identical" is not identical garbage.

Environment: LORAD_BUILD (lr-generate's folder), LORAD_MODELS (generated test models),
LORAD_ASAN_BUILD (if it holds an lr-generate, the preemption run is repeated under ASan/UBSan).
"""

import json
import os
import random
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
import gen_model  # noqa: E402
import ref  # noqa: E402

BUILD = os.environ.get("LORAD_BUILD", "build")
ASAN_BUILD = os.environ.get("LORAD_ASAN_BUILD", "build/asan")
MODELS = os.environ.get("LORAD_MODELS", os.path.join(BUILD, "testmodels"))
PRESET = "mistral_sw"  # GQA + a sliding window shorter than most prompts
MAX_TOKENS = 8
TOP = 3
TOL_SAME = 1e-5
TOL_REF = 1e-3

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def run(binary, model, prompts, extra):
    cmd = [binary, "--model", model, "--max-tokens", str(MAX_TOKENS), "--top-logprobs", str(TOP),
           "--threads", "2"] + extra
    for p in prompts:
        cmd += ["--prompt", ",".join(map(str, p))]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if cp.returncode != 0:
        raise SystemExit("lr-generate failed (exit %d): %s\n%s" % (cp.returncode, " ".join(extra),
                                                                 cp.stderr[-2000:]))
    res = [json.loads(ln) for ln in cp.stdout.splitlines() if ln.strip()]
    m = re.search(r"stats steps=(\d+) prompt_tokens=(\d+) generated_tokens=(\d+) preemptions=(\d+)"
                  r" kv_blocks_total=(\d+)", cp.stderr)
    if not m:
        raise SystemExit("lr-generate printed no stats line: %r" % cp.stderr[-500:])
    stats = dict(zip(("steps", "prompt_tokens", "generated_tokens", "preemptions", "blocks"),
                     map(int, m.groups())))
    if len(res) != len(prompts):
        raise SystemExit("expected %d JSON lines, got %d" % (len(prompts), len(res)))
    return res, stats


def close(a, b):
    """Equal within TOL_SAME scaled by (1 + |value|).

    Bitwise equality is not on offer: OpenBLAS's sgemm gives a row a different summation order
    depending on how many rows the call has (measured with 0.3.21: row 0 of an M >= 4 product
    differs in the last bits from the M = 1 product), so a token's logits depend on its batch
    in the last float bits, which grows to ~2e-5 on a logprob of -5 after a few layers. A real
    scheduling bug (wrong KV, wrong position, a lost or repeated token) moves logprobs by far
    more than this, and changes the greedy tokens, which must be identical."""
    return abs(a - b) <= TOL_SAME * (1.0 + abs(a))


def same(name, base, other):
    worst = 0.0
    for i, (a, b) in enumerate(zip(base, other)):
        if a["prompt"] != b["prompt"]:
            fail("%s: line %d is prompt %s, expected %s (output order)" % (name, i, b["prompt"],
                                                                           a["prompt"]))
            continue
        if a["tokens"] != b["tokens"]:
            fail("%s: prompt %d tokens %s, one-by-one gave %s" % (name, i, b["tokens"], a["tokens"]))
            continue
        for s, (x, y) in enumerate(zip(a["logprobs"], b["logprobs"])):
            worst = max(worst, abs(x - y))
            if not close(x, y):
                fail("%s: prompt %d step %d logprob %.9g, one-by-one %.9g" % (name, i, s, y, x))
        for s, (ta, tb) in enumerate(zip(a["top"], b["top"])):
            for k, ((ia, la), (ib, lb)) in enumerate(zip(ta, tb)):
                worst = max(worst, abs(la - lb))
                # A swapped pair of ids is only acceptable for a near-tie.
                if not close(la, lb) or (ia != ib and abs(la - lb) > 2 * TOL_SAME * (1 + abs(la))):
                    fail("%s: prompt %d step %d top %d: (%d, %.9g) vs one-by-one (%d, %.9g)" %
                         (name, i, s, k, ib, lb, ia, la))
    return worst


def main():
    model = os.path.join(MODELS, PRESET)
    gen_model.generate(PRESET, model)  # no-op when current
    binary = os.path.join(BUILD, "lr-generate")
    if not os.access(binary, os.X_OK):
        raise SystemExit("%s is missing: run make first" % binary)
    cfg = json.load(open(os.path.join(model, "config.json")))
    rnd = random.Random(20261128)
    lens = [1, 2, 3, 5, 7, 9, 11, 13, 17, 19, 23, 29, 31, 37, 41, 45]
    prompts = [[rnd.randrange(3, cfg["vocab_size"]) for _ in range(n)] for n in lens]
    rnd.shuffle(prompts)

    base, st_base = run(binary, model, prompts, [])
    # The one-by-one run against the float64 reference.
    m = ref.load_model(model)
    for i, p in enumerate(prompts):
        r = ref.generate(m, [], p, MAX_TOKENS, TOP)
        if r["tokens"] != base[i]["tokens"]:
            fail("one-by-one prompt %d: tokens %s, reference %s" % (i, base[i]["tokens"],
                                                                  r["tokens"]))
        else:
            d = max(abs(x - y) for x, y in zip(r["logprobs"], base[i]["logprobs"]))
            if d > TOL_REF:
                fail("one-by-one prompt %d: logprobs differ from the reference by %.3g" % (i, d))

    # KV bytes per token: layers x (K, V) x kv_heads x head_dim x 4 bytes.
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_token = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * hd * 4
    longest = max(lens) + MAX_TOKENS
    # Room for the longest sequence plus one block, far below the 16 sequences' total.
    tiny_mb = (longest + 32) * per_token / (1024.0 * 1024.0)

    runs = [
        ("batch", [ "--batch"], None),
        ("preempt", ["--batch", "--kv-cache-mb", "%.6f" % tiny_mb], "preemptions"),
        ("chunked", ["--batch", "--max-batch-tokens", "8"], "chunks"),
        ("preempt+chunked", ["--batch", "--kv-cache-mb", "%.6f" % tiny_mb,
                             "--max-batch-tokens", "6"], "preemptions"),
    ]
    for name, extra, must in runs:
        res, st = run(binary, model, prompts, extra)
        worst = same(name, base, res)
        print("%-16s steps=%d preemptions=%d blocks=%d max|dlogprob|=%.2e" %
              (name, st["steps"], st["preemptions"], st["blocks"], worst))
        if name == "batch" and st["steps"] >= st_base["steps"]:
            fail("batch: %d steps, not fewer than one-by-one's %d: nothing was batched" %
                 (st["steps"], st_base["steps"]))
        if st["prompt_tokens"] != sum(lens) or st["generated_tokens"] != len(lens) * MAX_TOKENS:
            fail("%s: stats count %d prompt / %d generated tokens, expected %d / %d (recomputed "
                 "tokens must not count twice)" % (name, st["prompt_tokens"],
                                                   st["generated_tokens"], sum(lens),
                                                   len(lens) * MAX_TOKENS))
        if must == "preemptions" and st["preemptions"] == 0:
            fail("%s: no preemption happened with a %.4f MiB pool" % (name, tiny_mb))
        if must == "chunks" and st["prompt_tokens"] < sum(lens):
            fail("%s: only %d prompt tokens computed" % (name, st["prompt_tokens"]))
        if must == "chunks" and st["steps"] < sum(lens) // 8:
            fail("%s: %d steps cannot have prefilled %d prompt tokens 8 at a time" %
                 (name, st["steps"], sum(lens)))

    asan = os.path.join(ASAN_BUILD, "lr-generate")
    if os.access(asan, os.X_OK):
        res, st = run(asan, model, prompts, ["--batch", "--kv-cache-mb", "%.6f" % tiny_mb,
                                             "--max-batch-tokens", "6"])
        same("asan preempt+chunked", base, res)
        print("asan preempt+chunked: ok (preemptions=%d)" % st["preemptions"])

    if failures:
        print("%d failure(s)" % len(failures))
        sys.exit(1)
    print("ok: 16 prompts identical one-by-one / batched / preempted / chunked")


if __name__ == "__main__":
    main()
