#!/usr/bin/python3
"""T5 parity: the C engine (lr-generate) against the float64 T5 reference (tests/ref/ref_t5.py).

Checks, each with identical greedy tokens and logprobs / top-5 within 1e-3 (parity_common.compare):
  1. t5_gated (Flan-T5 style: gated-gelu, untied, F32) and t5_relu (T5 v1.0 style: relu, tied head
     scaled by d_model^-0.5, BF16, d_kv·heads != d_model), and t5_gated_f16 (F16 weights): the
     base, a q,v adapter and an
     all-module adapter (q,k,v,o of self- and cross-attention + wi/wi_0/wi_1/wo), on 3 short
     prompts and one of 150 tokens (far relative-position buckets), one at a time and batched;
  2. a weighted mix (qv:0.5 + all:1.5) on t5_gated;
  3. 8 concurrent requests on 8 different adapters (t0..t7) in one batch give exactly the tokens
     of the same requests run one at a time (logprobs within 1e-4·(1+|lp|)), which are themselves
     checked against the reference; the stats must show shared passes (max_adapters_in_step >= 8);
  4. the same 8 requests with a KV pool so small that sequences are preempted (their encoder and
     decoder recomputed) still give the one-at-a-time tokens;
  5. lorad serving flan_t5_tok (the real T5 tokenizer of ../shared/data/t5): /tokenize gives
     expected_ids.json for every sentence; greedy /v1/completions (token-id and string prompts,
     base and an adapter) and /generate with adapter_id equal the reference; echo is refused.
Env: LORAD_BUILD (default build), LORAD_MODELS, LORAD_ADAPTERS; missing models are generated.
Exit 1 on any mismatch.
"""

import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import parity_common as pc  # noqa: E402
import gen_t5  # noqa: E402  (tests/gen is on the path through parity_common)
import ref_t5  # noqa: E402

N_TOK = gen_t5.PARITY_MAX_TOKENS


def run_ref(mdir, prompts, max_tokens, adapters=(), top_k=pc.TOP_K):
    m = ref_t5.load_model(mdir)
    ads = [ref_t5.load_adapter(d, m, s) for d, s in map(ref_t5.parse_adapter_arg, adapters)]
    return [ref_t5.generate(m, ads, p, max_tokens, top_k) for p in prompts]


def run_gen(mdir, plan, batch, extra=(), top_k=3):
    """lr-generate --adapter-per-prompt over plan [(adapter dir or "none", prompt)]."""
    cmd = [pc.lr_generate_path(), "--model", mdir, "--max-tokens", str(N_TOK), "--top-logprobs",
           str(top_k), "--adapter-per-prompt"] + list(extra)
    for ad, p in plan:
        cmd += ["--adapter", ad, "--prompt", ",".join(map(str, p))]
    if batch:
        cmd.append("--batch")
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if cp.returncode != 0:
        raise RuntimeError("exit %d: %s" % (cp.returncode, cp.stderr[-1500:]))
    res = [json.loads(x) for x in cp.stdout.splitlines() if x.strip()]
    stats = dict((k, float(v)) for k, v in re.findall(r"(\w+)=([0-9.]+)", cp.stderr))
    if len(res) != len(plan):
        raise RuntimeError("expected %d lines, got %d: %s" % (len(plan), len(res), cp.stderr[-500:]))
    return res, stats


def check_case(name, mdir, prompts, adapters, rows):
    ref_out = run_ref(mdir, prompts, N_TOK, adapters)
    return pc.check_one(name, mdir, prompts, N_TOK, adapters, ref_out=ref_out, rows=rows)


def check_tenants(mdir, rows, kv_mb=None):
    """8 prompts on t0..t7 batched == one at a time (== reference)."""
    p = gen_t5.preset_config("t5_gated")
    base_prompts = gen_t5.parity_prompts(p)
    plan = []
    for i in range(8):
        pr = list(base_prompts[i % 3]) + [(11 * i + 5) % 200 + 3 for _ in range(i)]
        plan.append((os.path.join(pc.ADAPTERS, "t5_gated", "t%d" % i), pr))
    name = "8 T5 adapters batched" + (" + preemption" if kv_mb else "")
    row = {"name": name, "mode": "batch", "dlp": 0.0, "dtop": 0.0, "gap": 0.0, "secs": 0.0, "ok": True}
    t0 = time.time()
    try:
        one, _ = run_gen(mdir, plan, False)
        extra = ["--kv-cache-mb", str(kv_mb)] if kv_mb else []
        many, st = run_gen(mdir, plan, True, extra)
        if not kv_mb:
            for (ad, pr), c in zip(plan, one):
                r = run_ref(mdir, [pr], N_TOK, [ad], top_k=3)[0]
                probs, _, _ = pc.compare(c, r)
                row["gap"] = min(row["gap"] or 1e9, r["min_gap"])
                if probs:
                    row["ok"] = False
                    print("MISMATCH one-at-a-time %s vs ref: %s" % (ad, probs[:3]))
        for (ad, pr), a, b in zip(plan, one, many):
            if a["tokens"] != b["tokens"]:
                row["ok"] = False
                print("MISMATCH batched %s: tokens %s vs one-at-a-time %s" % (ad, b["tokens"], a["tokens"]))
            for x, y in zip(a["logprobs"], b["logprobs"]):
                row["dlp"] = max(row["dlp"], abs(x - y))
                if abs(x - y) > 1e-4 * (1 + abs(x)):
                    row["ok"] = False
                    print("MISMATCH batched %s logprob %.7f vs %.7f" % (ad, y, x))
        print("%s: steps=%d max_adapters_in_step=%d mixed_adapter_steps=%d preemptions=%d"
              % (name, st.get("steps", 0), st.get("max_adapters_in_step", 0),
                 st.get("mixed_adapter_steps", 0), st.get("preemptions", 0)))
        if not kv_mb and st.get("max_adapters_in_step", 0) < 8:
            row["ok"] = False
            print("FAIL: the 8 adapters did not share a forward pass")
        if kv_mb and st.get("preemptions", 0) < 1:
            row["ok"] = False
            print("FAIL: the small KV pool did not preempt anything (the test proves nothing)")
    except RuntimeError as e:
        row["ok"] = False
        print("ERROR %s: %s" % (name, e))
    row["secs"] = time.time() - t0
    rows.append(row)
    return row["ok"]


def http(port, path, body):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


def check_daemon(rows):
    """lorad serving flan_t5_tok (the real T5 tokenizer): /tokenize gives expected_ids.json; greedy
    /v1/completions on the base and on an adapter equal the float64 reference; echo is refused."""
    row = {"name": "lorad flan_t5_tok (tokenizer, API)", "mode": "http", "dlp": 0.0, "dtop": 0.0,
           "gap": 0.0, "secs": 0.0, "ok": True}
    t0 = time.time()

    def fail(msg):
        row["ok"] = False
        print("FAIL daemon: " + msg)

    binary = None
    for d in (os.environ.get("LORAD_ASAN_BUILD", "build/asan"), pc.BUILD):
        if os.access(os.path.join(d, "lorad"), os.X_OK):
            binary = os.path.join(d, "lorad")
            break
    mdir = os.path.join(pc.MODELS, "flan_t5_tok")
    adir = os.path.join(pc.ADAPTERS, "flan_t5_tok")
    if binary is None:
        fail("no lorad binary in $LORAD_ASAN_BUILD or $LORAD_BUILD")
        rows.append(row)
        return False
    proc = subprocess.Popen([binary, "--model", mdir, "--port", "0", "--threads", "2",
                             "--adapter-dir", adir], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        port = None
        lines = []
        deadline = time.time() + 120
        while port is None and time.time() < deadline:
            ln = proc.stderr.readline().decode("utf-8", "replace")
            if not ln:
                break
            lines.append(ln)
            m = re.search(r"listening on http://[^\s]+:(\d+)", ln)
            if m:
                port = int(m.group(1))
        if port is None:
            fail("the daemon did not start:\n" + "".join(lines[-20:]))
            rows.append(row)
            return False
        # Drain stderr so the daemon never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        with open(os.path.join(gen_t5.T5_TOKENIZER_DIR, "expected_ids.json")) as f:
            expected = json.load(f)
        for e in expected:
            st, js = http(port, "/tokenize", {"content": e["text"]})
            if st != 200 or js.get("tokens") != e["ids"]:
                fail("/tokenize %r: %s %s, expected %s" % (e["text"][:40], st, js, e["ids"]))
        ids = expected[1]["ids"]  # "translate English to German: ..." + </s>
        for model, ads in (("flan_t5_tok", []), ("qv", [adir + "/qv"])):
            ref = run_ref(mdir, [ids], 8, ads, top_k=2)[0]
            row["gap"] = min(row["gap"] or 1e9, ref["min_gap"])
            for prompt in (ids, expected[1]["text"]):
                st, js = http(port, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 8,
                                                        "temperature": 0, "logprobs": 2, "ignore_eos": True,
                                                        "return_token_ids": True})
                if st != 200:
                    fail("/v1/completions %s: %s %s" % (model, st, js))
                    continue
                ch = js["choices"][0]
                if ch.get("prompt_token_ids") != ids or ch.get("token_ids") != ref["tokens"]:
                    fail("%s prompt %r: ids %s → %s, reference %s → %s" % (
                        model, str(prompt)[:30], ch.get("prompt_token_ids"), ch.get("token_ids"),
                        ids, ref["tokens"]))
                    continue
                for a, b in zip(ch["logprobs"]["token_logprobs"], ref["logprobs"]):
                    row["dlp"] = max(row["dlp"], abs(a - b))
                    if abs(a - b) > pc.TOL:
                        fail("%s logprob %.6f vs reference %.6f" % (model, a, b))
        for body in ({"prompt": "x", "echo": True, "logprobs": 1, "max_tokens": 2},
                     {"prompt": "x", "echo": True, "max_tokens": 2}):
            st, js = http(port, "/v1/completions", body)
            if st != 400 or "encoder" not in js.get("error", {}).get("message", ""):
                fail("%s on T5: %s %s (expected 400 naming the encoder)" % (body, st, js))
        st, js = http(port, "/generate", {"inputs": expected[1]["text"],
                                          "parameters": {"max_new_tokens": 3, "adapter_id": "qv",
                                                         "details": True}})
        if st != 200 or [t["id"] for t in js["details"]["tokens"]] != \
                run_ref(mdir, [ids], 3, [adir + "/qv"], top_k=0)[0]["tokens"]:
            fail("/generate with adapter_id: %s %s" % (st, js))
    finally:
        proc.send_signal(15)  # SIGTERM: drain and exit 0
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        if rc != 0:
            fail("the daemon exited with %s (ASan report above if any)" % rc)
    row["secs"] = time.time() - t0
    rows.append(row)
    return row["ok"]


def main():
    t0 = time.time()
    if not os.access(pc.lr_generate_path(), os.X_OK):
        print("FAIL: %s not found or not executable" % pc.lr_generate_path())
        return 1
    gen_t5.generate_all(pc.MODELS, pc.ADAPTERS)
    rows, ok = [], True
    for base in ("t5_gated", "t5_relu", "t5_gated_f16"):
        mdir = os.path.join(pc.MODELS, base)
        p = gen_t5.preset_config(base)
        prompts = gen_t5.parity_prompts(p) + [gen_t5.long_prompt(p)]
        for v in (None, "qv", "all"):
            ads = [] if v is None else [os.path.join(pc.ADAPTERS, base, v)]
            ok &= check_case("%s/%s" % (base, v or "base"), mdir, prompts, ads, rows)
    mdir = os.path.join(pc.MODELS, "t5_gated")
    mix = [os.path.join(pc.ADAPTERS, "t5_gated", "qv") + ":0.5",
           os.path.join(pc.ADAPTERS, "t5_gated", "all") + ":1.5"]
    ok &= check_case("t5_gated/qv:0.5+all:1.5", mdir, gen_t5.parity_prompts(gen_t5.preset_config("t5_gated")),
                     mix, rows)
    ok &= check_tenants(mdir, rows)
    ok &= check_tenants(mdir, rows, kv_mb=0.15)
    ok &= check_daemon(rows)
    print()
    pc.print_table(rows)
    bad = [r for r in rows if not r["ok"]]
    print("\n%d of %d T5 runs agree (tol %.0e); %.1fs" % (len(rows) - len(bad), len(rows), pc.TOL,
                                                        time.time() - t0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
