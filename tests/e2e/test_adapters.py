#!/usr/bin/python3
"""End-to-end test of lorad's adapters: starts the daemon on port 0 with --adapter-dir and
--max-loaded-adapters 2 and checks, over HTTP:

  * listing (/v1/adapters, /v1/models with parent) and the lifecycle available → loaded (→ evicted);
  * answers through `model` = adapter id equal the float64 reference's greedy tokens
    (tests/ref/ref.py with --adapter), also for the weighted-mix extension "adapters";
  * cycling 6 adapters twice with --max-loaded-adapters 2: every answer right, never more than 2
    loaded (lorad_adapters_loaded after each request), evictions counted;
  * a pinned runtime registration (POST /v1/load_lora_adapter) is never evicted;
  * POST /v1/unload_lora_adapter while a request on that adapter is in flight: the request
    finishes normally, the id is gone afterwards;
  * unknown id → 404; incompatible adapter → 422 naming module and shapes; missing or corrupt
    files → 4xx naming the file; ids with "..", absolute paths, NUL, backslash → 400; a path
    outside the roots → 403;
  * a base-model client keeps getting the same correct answer throughout;
  * the metrics, including vllm:lora_requests_info in vLLM's shape.

Uses the helpers of test_server.py (same folder). Exit 0 when every check passed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import test_server as ts  # noqa: E402
import gen_adapter  # noqa: E402
import gen_model  # noqa: E402

check = ts.check
PROMPT = [5, 17, 42, 99, 7, 300, 12]
NTOK = 6


def ref_tokens(model, adapters):
    """Greedy tokens of the float64 reference with adapters [(dir, scale)]."""
    cmd = [ts.PY, os.path.join(ROOT, "tests/ref/ref.py"), "--model", model, "--prompt",
           ",".join(map(str, PROMPT)), "--max-tokens", str(NTOK)]
    for d, s in adapters:
        cmd += ["--adapter", "%s:%g" % (d, s)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.splitlines()[0])
    return r["tokens"], r["min_gap"]


def ask(model_id=None, max_tokens=NTOK, extra=None, timeout=120):
    body = {"prompt": PROMPT, "temperature": 0, "max_tokens": max_tokens, "ignore_eos": True,
            "return_token_ids": True}
    if model_id is not None:
        body["model"] = model_id
    body.update(extra or {})
    return ts.post("/v1/completions", body, timeout=timeout)


def tokens_of(r):
    return r["choices"][0]["token_ids"]


def loaded_now():
    return ts.metrics().get("lorad_adapters_loaded", -1)


def adapters_state():
    st, _, r = ts.request("GET", "/v1/adapters")
    check(st == 200, "/v1/adapters status %d" % st)
    return {a["id"]: a for a in r.get("data", [])} if st == 200 else {}


def make_tree(model, tmp):
    """ROOT/t0..t5, ROOT/org/qv, broken ones; returns (root, {id: dir})."""
    gen_root = os.path.join(tmp, "gen")
    root = os.path.join(tmp, "root")
    os.makedirs(os.path.join(root, "org"))
    dirs = {}
    for i in range(6):
        d = os.path.join(root, "t%d" % i)
        gen_adapter.generate(model, "t%d" % i, d, gen_adapter.SEEDS.get(("default", "t%d" % i), 0))
        dirs["t%d" % i] = d
    d = os.path.join(root, "org", "qv")
    gen_adapter.generate(model, "qv", d)
    dirs["org/qv"] = d
    d = os.path.join(gen_root, "all7")
    gen_adapter.generate(model, "all7", d, gen_adapter.SEEDS.get(("default", "all7"), 0))
    dirs["all7"] = d
    # broken: config only; truncated weights; an adapter made for another base
    d = os.path.join(root, "missing")
    os.makedirs(d)
    shutil.copy(os.path.join(dirs["t0"], "adapter_config.json"), d)
    d = os.path.join(root, "corrupt")
    os.makedirs(d)
    shutil.copy(os.path.join(dirs["t0"], "adapter_config.json"), d)
    with open(os.path.join(dirs["t0"], "adapter_model.safetensors"), "rb") as f:
        data = f.read()
    with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
        f.write(data[: len(data) // 2])
    other = os.path.join(tmp, "models", "head_dim")
    gen_model.generate("head_dim", other)
    gen_adapter.generate(other, "all7", os.path.join(root, "incompat"))
    # outside every root
    outside = os.path.join(tmp, "outside")
    gen_adapter.generate(model, "t1", outside)
    dirs["outside"] = outside
    return root, dirs


def main():
    binary, model = ts.find_binary(), ts.find_model()
    tmp = tempfile.mkdtemp(prefix="lorad_adapters_")
    try:
        root, dirs = make_tree(model, tmp)
        expect = {}
        for k in ["t%d" % i for i in range(6)] + ["org/qv"]:
            expect[k], gap = ref_tokens(model, [(dirs[k], 1.0)])
            if gap < 1e-3:
                print("note: %s has a near-tie (gap %.2g); its tokens are still compared" % (k, gap))
        base_expect, _ = ref_tokens(model, [])
        mix_expect, _ = ref_tokens(model, [(dirs["org/qv"], 0.5), (dirs["t1"], 1.5)])
        ts.D = ts.Daemon(binary, model, ["--adapter-dir", root, "--max-loaded-adapters", "2",
                                         "--max-lora-rank", "32"])
        try:
            run_checks(root, dirs, expect, base_expect, mix_expect)
        finally:
            if ts.D.proc.poll() is None:
                rc = ts.D.stop(60)
                check(rc == 0, "daemon exits 0 after SIGTERM (got %r)" % rc)
        err = ts.D.stderr()
        check("ERROR: AddressSanitizer" not in err and "runtime error:" not in err
              and "ERROR: LeakSanitizer" not in err, "sanitizer-clean daemon stderr")
        if ts.FAILS:
            print("---- daemon stderr (last 40 lines) ----")
            print("".join(err.splitlines(True)[-40:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d checks, %d failed" % (ts.CHECKS[0], len(ts.FAILS)))
    return 1 if ts.FAILS else 0


def run_checks(root, dirs, expect, base_expect, mix_expect):
    # A base-model client running all along: its answer must never change.
    stop = threading.Event()
    base_results = []

    def base_client():
        while not stop.is_set():
            st, _, r = ask(None, max_tokens=NTOK)
            base_results.append((st, tokens_of(r) if st == 200 else r))
            time.sleep(0.05)

    bt = threading.Thread(target=base_client)
    bt.start()
    try:
        lifecycle(expect)
        eviction(expect)
        mix(mix_expect)
        pinned(dirs, expect)
        unload_in_flight(dirs, expect)
        refusals(root, dirs)
        metrics_shape()
    finally:
        stop.set()
        bt.join(120)
    check(len(base_results) >= 3, "the base client ran (%d requests)" % len(base_results))
    bad = [x for x in base_results if x[0] != 200 or x[1] != base_expect]
    check(not bad, "base-model answers undisturbed and equal the reference %r: %d of %d differ, "
          "first %r" % (base_expect, len(bad), len(base_results), bad[:1]))


def lifecycle(expect):
    a = adapters_state()
    check(all(k in a for k in expect), "every root adapter listed: %r" % sorted(a))
    check(a.get("t3", {}).get("state") == "available", "t3 available before use: %r" % a.get("t3"))
    st, _, r = ts.request("GET", "/v1/models")
    ids = {m["id"]: m for m in r.get("data", [])}
    check(st == 200 and ids.get("org/qv", {}).get("parent") == "default",
          "/v1/models lists adapters with parent = base id: %r" % ids.get("org/qv"))
    st, _, r = ask("org/qv")
    check(st == 200 and tokens_of(r) == expect["org/qv"],
          "org/qv answer %r equals the reference %r" % (r if st != 200 else tokens_of(r),
                                                        expect["org/qv"]))
    if st == 200:
        check(r["model"] == "org/qv", "response model is the adapter id: %r" % r["model"])
    a = adapters_state()
    q = a.get("org/qv", {})
    check(q.get("state") == "loaded" and q.get("rank") == 8 and q.get("requests", 0) >= 1
          and sorted(q.get("target_modules", [])) == ["q_proj", "v_proj"] and q.get("bytes", 0) > 0,
          "org/qv loaded with rank 8, q/v targets, bytes, requests: %r" % q)


def eviction(expect):
    m0 = ts.metrics()
    max_seen = 0
    for rnd in range(2):
        for i in range(6):
            k = "t%d" % i
            st, _, r = ask(k)
            check(st == 200 and tokens_of(r) == expect[k],
                  "round %d %s answer %r equals the reference %r" % (
                      rnd, k, r if st != 200 else tokens_of(r), expect[k]))
            n = loaded_now()
            max_seen = max(max_seen, n)
            check(0 < n <= 2, "at most 2 adapters loaded (lorad_adapters_loaded = %g)" % n)
    m1 = ts.metrics()
    ev = m1.get("lorad_adapter_evictions_total", 0) - m0.get("lorad_adapter_evictions_total", 0)
    loads = m1.get("lorad_adapter_loads_total", 0) - m0.get("lorad_adapter_loads_total", 0)
    print("eviction: 12 requests over 6 adapters: %d loads, %d evictions, max loaded %d"
          % (loads, ev, max_seen))
    check(loads == 12 and ev >= 10, "cycling 6 adapters through 2 slots: 12 loads, >= 10 "
          "evictions (got %d, %d)" % (loads, ev))


def mix(mix_expect):
    st, _, r = ask(None, extra={"adapters": [{"id": "org/qv", "scale": 0.5},
                                             {"id": "t1", "scale": 1.5}]})
    check(st == 200 and tokens_of(r) == mix_expect,
          "weighted mix org/qv×0.5 + t1×1.5 equals the reference %r: %r" % (
              mix_expect, r if st != 200 else tokens_of(r)))
    st, _, r = ask(None, extra={"adapters": [{"id": "nope"}]})
    check(st == 404, "a mix naming an unknown adapter → 404: %d" % st)
    st, _, r = ask(None, extra={"adapters": [{"id": "t1", "scale": "big"}]})
    check(st == 400, "a mix with a non-numeric scale → 400: %d" % st)


def pinned(dirs, expect):
    st, _, r = ts.post("/v1/load_lora_adapter", {"lora_name": "pin", "lora_path": dirs["org/qv"],
                                                 "pinned": True})
    check(st == 200, "load_lora_adapter pinned: %d %r" % (st, r))
    st, _, r = ts.post("/v1/load_lora_adapter", {"lora_name": "pin", "lora_path": dirs["org/qv"]})
    check(st == 400, "registering an existing id → 400: %d" % st)
    for i in range(6):
        k = "t%d" % i
        st, _, r = ask(k)
        check(st == 200 and tokens_of(r) == expect[k], "with a pinned adapter %s still right" % k)
        a = adapters_state()
        check(a.get("pin", {}).get("state") == "loaded", "the pinned adapter stays loaded")
        check(loaded_now() <= 2, "still at most 2 loaded")
    st, _, r = ask("pin")
    check(st == 200 and tokens_of(r) == expect["org/qv"], "the pinned adapter answers right")


def unload_in_flight(dirs, expect):
    st, _, r = ts.post("/v1/load_lora_adapter", {"lora_name": "fly", "lora_path": dirs["t2"]})
    check(st == 200, "load_lora_adapter fly: %d %r" % (st, r))
    res = {}

    def long_request():
        res["r"] = ask("fly", max_tokens=400)

    th = threading.Thread(target=long_request)
    th.start()
    # wait until the request holds the adapter (listed as running in the vLLM gauge)
    deadline = time.time() + 30
    running = False
    while time.time() < deadline and not running:
        st, _, text = ts.request("GET", "/metrics")
        running = bool(re.search(r'running_lora_adapters="[^"]*\bfly\b', text))
        if not running:
            time.sleep(0.01)
    check(running, "vllm:lora_requests_info lists fly as running while it is in use")
    st, _, r = ts.post("/v1/unload_lora_adapter", {"lora_name": "fly"})
    check(st == 200, "unload_lora_adapter while in flight: %d %r" % (st, r))
    st2, _, r2 = ask("fly")
    check(st2 == 404, "the unloaded id is gone at once: %d" % st2)
    th.join(300)
    st, _, r = res.get("r", (0, None, None))
    check(st == 200 and len(tokens_of(r)) == 400 and tokens_of(r)[:NTOK] == expect["t2"],
          "the in-flight request finished normally with the adapter's answer")
    st, _, r = ts.post("/v1/unload_lora_adapter", {"lora_name": "fly"})
    check(st == 404, "unloading again → 404: %d" % st)


def refusals(root, dirs):
    st, _, r = ask("does-not-exist")
    check(st == 404, "unknown id → 404: %d %r" % (st, r))
    for bad in ("../t0", "t0/../t1", "/etc", "a\u0000b", "a\\b", "a\nb"):
        st, _, r = ask(bad)
        check(st == 400, "id %r → 400: %d %r" % (bad, st, r))
    st, _, r = ask("incompat")
    msg = r.get("error", {}).get("message", "") if isinstance(r, dict) else ""
    check(st == 422 and "model.layers.0.self_attn.q_proj" in msg and "expected" in msg
          and re.search(r"\[\d+, \d+\]", msg), "incompatible → 422 naming module and shapes: %d %r"
          % (st, msg))
    st, _, r = ask("missing")
    msg = r.get("error", {}).get("message", "") if isinstance(r, dict) else ""
    check(400 <= st < 500 and "adapter_model.safetensors" in msg,
          "missing weights → 4xx naming the file: %d %r" % (st, msg))
    st, _, r = ask("corrupt")
    msg = r.get("error", {}).get("message", "") if isinstance(r, dict) else ""
    check(400 <= st < 500 and "adapter_model.safetensors" in msg,
          "corrupt weights → 4xx naming the file: %d %r" % (st, msg))
    a = adapters_state()
    check(a.get("corrupt", {}).get("state") == "failed" and a["corrupt"].get("error"),
          "a failed adapter is listed with its error")
    # fixing the files makes the next request retry
    shutil.copy(os.path.join(dirs["t0"], "adapter_model.safetensors"),
                os.path.join(root, "corrupt", "adapter_model.safetensors"))
    st, _, r = ask("corrupt")
    check(st == 200, "after the files are fixed the adapter loads: %d %r" % (st, r))
    st, _, r = ts.post("/v1/load_lora_adapter", {"lora_name": "out", "lora_path": dirs["outside"]})
    check(st == 403, "a path outside the roots → 403: %d %r" % (st, r))
    st, _, r = ts.post("/v1/load_lora_adapter", {"lora_name": "../x", "lora_path": dirs["t0"]})
    check(st == 400, "load_lora_adapter with a bad id → 400: %d" % st)
    st, _, r = ts.request("GET", "/v1/load_lora_adapter")
    check(st == 405, "GET on load_lora_adapter → 405: %d" % st)
    # a folder that appears later is picked up without a restart
    shutil.copytree(dirs["t3"], os.path.join(root, "late"))
    check("late" in adapters_state(), "a new folder under the root is listed")
    st, _, r = ask("late")
    check(st == 200, "a new folder under the root answers: %d" % st)


def metrics_shape():
    st, _, text = ts.request("GET", "/metrics")
    for name in ("lorad_adapter_loads_total", "lorad_adapter_load_failures_total",
                 "lorad_adapter_evictions_total", "lorad_adapter_load_seconds_count",
                 "lorad_adapters_loaded", "lorad_adapter_bytes"):
        check(re.search(r"^%s \d" % name, text, re.M), "metric %s present" % name)
    check(re.search(r'^lorad_adapter_load_seconds_bucket\{le="\+Inf"\} \d+$', text, re.M),
          "load-time histogram has a +Inf bucket")
    m = re.search(r'^vllm:lora_requests_info\{max_lora="2",running_lora_adapters="[^"]*",'
                  r'waiting_lora_adapters="[^"]*"\} ([0-9.e+]+)$', text, re.M)
    check(m and abs(float(m.group(1)) - time.time()) < 60,
          "vllm:lora_requests_info in vLLM's shape with the current time as value")
    fails = ts.metrics().get("lorad_adapter_load_failures_total", 0)
    check(fails >= 3, "load failures counted (%g)" % fails)


if __name__ == "__main__":
    sys.exit(main())
