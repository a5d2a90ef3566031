"""Shared pieces of the parity drivers: run lr-generate, run the float64 reference, compare.

A comparison of one prompt checks: identical generated tokens; |logprob(C) - logprob(ref)| <= TOL
at every step; and the top-K alternatives: an id in both lists must agree within TOL, and an id in
only one list must sit at that list's boundary (within TOL of the other list's smallest entry),
i.e. it can only be a near-tie for the last place. Steps after the first differing token are not
compared (the sequences no longer match).
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
import gen_model  # noqa: E402
import ref  # noqa: E402

TOL = 1e-3
TOP_K = 5

BUILD = os.environ.get("LORAD_BUILD", "build")
MODELS = os.environ.get("LORAD_MODELS", os.path.join(BUILD, "testmodels"))
ADAPTERS = os.environ.get("LORAD_ADAPTERS", os.path.join(BUILD, "testadapters"))


def lr_generate_path():
    return os.path.join(BUILD, "lr-generate")


def run_c(model, prompts, max_tokens, adapters=(), batch=False, top_k=TOP_K, timeout=120):
    """Run lr-generate; returns (list of result dicts, seconds). Raises RuntimeError on failure."""
    cmd = [lr_generate_path(), "--model", model]
    for a in adapters:
        cmd += ["--adapter", a]
    for p in prompts:
        cmd += ["--prompt", ",".join(str(t) for t in p)]
    cmd += ["--max-tokens", str(max_tokens), "--top-logprobs", str(top_k)]
    if batch:
        cmd.append("--batch")
    t0 = time.time()
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError("timed out after %ds: %s" % (timeout, " ".join(cmd)))
    dt = time.time() - t0
    if cp.returncode != 0:
        raise RuntimeError("exit %d: %s\n%s" % (cp.returncode, " ".join(cmd), cp.stderr.strip()[-2000:]))
    lines = [ln for ln in cp.stdout.splitlines() if ln.strip()]
    try:
        res = [json.loads(ln) for ln in lines]
    except ValueError as e:
        raise RuntimeError("output is not JSON lines (%s): %r" % (e, cp.stdout[:500]))
    if len(res) != len(prompts):
        raise RuntimeError("expected %d JSON lines, got %d" % (len(prompts), len(res)))
    return res, dt


def run_ref(model_dir, prompts, max_tokens, adapters=(), top_k=TOP_K):
    m = ref.load_model(model_dir)
    ads = []
    for a in adapters:
        d, scale = ref.parse_adapter_arg(a)
        ads.append(ref.load_adapter(d, m, scale))
    t0 = time.time()
    out = [ref.generate(m, ads, p, max_tokens, top_k) for p in prompts]
    return out, time.time() - t0


def compare(c, r, tol=TOL):
    """Compare one prompt's results. Returns (problems list, max |dlogprob|, max |dtop|)."""
    probs = []
    if c.get("prompt") is not None and list(c["prompt"]) != list(r["prompt"]):
        probs.append("prompt echoed as %s, expected %s" % (c["prompt"], r["prompt"]))
    ct, rt = list(c.get("tokens", [])), r["tokens"]
    n = 0
    while n < min(len(ct), len(rt)) and ct[n] == rt[n]:
        n += 1
    if ct != rt:
        probs.append("tokens differ from step %d: C %s vs ref %s" % (n, ct, rt))
    dlp = dtop = 0.0
    clp = c.get("logprobs", [])
    ctop = c.get("top", [])
    for i in range(min(n + (1 if n < len(rt) else 0), len(rt))):
        if i >= len(clp):
            probs.append("no logprob for step %d" % i)
            break
        if i < n:  # the chosen token is the same: its logprob must agree
            d = abs(float(clp[i]) - r["logprobs"][i])
            dlp = max(dlp, d)
            if d > tol:
                probs.append("step %d: logprob %.6f vs ref %.6f" % (i, clp[i], r["logprobs"][i]))
        if r["top"]:
            if i >= len(ctop):
                probs.append("no top logprobs for step %d" % i)
                break
            cd = {int(t): float(lp) for t, lp in ctop[i]}
            rd = {int(t): float(lp) for t, lp in r["top"][i]}
            if len(cd) != len(rd):
                probs.append("step %d: %d top entries, expected %d" % (i, len(cd), len(rd)))
            for t in set(cd) | set(rd):
                if t in cd and t in rd:
                    d = abs(cd[t] - rd[t])
                    dtop = max(dtop, d)
                    if d > tol:
                        probs.append("step %d: top id %d logprob %.6f vs ref %.6f" % (i, t, cd[t], rd[t]))
                else:
                    mine, other = (cd, rd) if t in cd else (rd, cd)
                    if abs(mine[t] - min(other.values())) > tol:
                        probs.append("step %d: id %d (lp %.6f) only in %s's top list"
                                     % (i, t, mine[t], "C" if mine is cd else "ref"))
    return probs, dlp, dtop


def print_table(rows):
    """rows: list of dicts with keys name, mode, dlp, dtop, gap, secs, ok."""
    print("%-36s %-7s %10s %10s %9s %7s  %s" % ("model", "mode", "max|dlp|", "max|dtop|", "min gap",
                                             "secs", "result"))
    for r in rows:
        print("%-36s %-7s %10.2e %10.2e %9.4f %7.2f  %s" % (r["name"], r["mode"], r["dlp"], r["dtop"],
                                                          r["gap"], r["secs"], "ok" if r["ok"] else "FAIL"))


def check_one(name, model_dir, prompts, max_tokens, adapters=(), modes=("single", "batch"),
              ref_out=None, rows=None, verbose=True):
    """Run C in each mode against the reference; append table rows; return True if all agree."""
    if ref_out is None:
        ref_out, _ = run_ref(model_dir, prompts, max_tokens, adapters)
    gap = min(x["min_gap"] for x in ref_out)
    ok_all = True
    for mode in modes:
        row = {"name": name, "mode": mode, "dlp": 0.0, "dtop": 0.0, "gap": gap, "secs": 0.0, "ok": True}
        try:
            c_out, row["secs"] = run_c(model_dir, prompts, max_tokens, adapters, batch=(mode == "batch"))
            for p, c, r in zip(prompts, c_out, ref_out):
                probs, dlp, dtop = compare(c, r)
                row["dlp"] = max(row["dlp"], dlp)
                row["dtop"] = max(row["dtop"], dtop)
                if probs:
                    row["ok"] = False
                    if verbose:
                        print("MISMATCH %s [%s] prompt %s:\n    %s" % (name, mode, p, "\n    ".join(probs[:6])))
        except RuntimeError as e:
            row["ok"] = False
            print("ERROR %s [%s]: %s" % (name, mode, e))
        ok_all &= row["ok"]
        if rows is not None:
            rows.append(row)
    return ok_all


def ensure_models(names):
    for n in names:
        gen_model.generate(n, os.path.join(MODELS, n))
