#!/usr/bin/python3
"""Auth and tenants end to end (API.md "Auth and tenants", issue 7 acceptance 4).

Two tenants with their own adapters under one root, one admin. Checks that a tenant cannot use
another's adapter (by `model`, by the mix extension, by TGI's adapter_id, on chat), cannot load
or unload without admin, that an admin can; that /health is public and /metrics follows
--metrics (public, auth, off); that keys never appear in the log (the whole stderr at debug level
is searched for every key); that comparison takes the same time for a near-miss key and a wrong
one (constant time, coarse timing check on many tries); that an open daemon binds 127.0.0.1 by
default and says so; and that with 60 stalled sockets open an authorised client is served
normally.

Uses the helpers of test_server.py. Exit 0 when every check passed.
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import test_server as ts  # noqa: E402
import gen_adapter  # noqa: E402

check = ts.check
KA = "alice-key-0123456789abcdef0123456789"
KB = "bob-key-fedcba9876543210fedcba987654"
KADMIN = "admin-key-55555555555555555555555555"


def call(path, body, key, method="POST"):
    h = {"Authorization": "Bearer " + key} if key else {}
    return ts.request(method, path, body, headers=h)


def msg(r):
    return r.get("error", {}).get("message", "") if isinstance(r, dict) else ""


def t_tenants(root):
    body = {"prompt": [5, 17], "max_tokens": 2, "temperature": 0}
    st, _, r = call("/v1/completions", dict(body, model="alice/x"), KA)
    check(st == 200, "alice uses alice/x: %d %r" % (st, r))
    st, _, r = call("/v1/completions", dict(body, model="bob/y"), KB)
    check(st == 200, "bob uses bob/y: %d %r" % (st, r))
    for what, path, b in (
            ("model", "/v1/completions", dict(body, model="bob/y")),
            ("mix", "/v1/completions", dict(body, adapters=[{"id": "alice/x"}, {"id": "bob/y"}])),
            ("TGI adapter_id", "/generate", {"inputs": "hi", "parameters": {"adapter_id": "bob/y",
                                                                             "max_new_tokens": 2}}),
            ("chat", "/v1/chat/completions", {"model": "bob/y", "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "hi"}]}),
            ("tokenize with model", "/tokenize", {"content": "hi", "model": "bob/y"})):
        st, _, r = call(path, b, KA)
        check(st == 403 and "bob/y" in msg(r), "alice may not use bob/y via %s: %d %r" % (what, st, msg(r)))
    st, _, r = call("/v1/completions", dict(body, model="alice/x"), KB)
    check(st == 403, "bob may not use alice/x: %d" % st)
    st, _, r = call("/v1/completions", body, KB)
    check(st == 403 and "base" in msg(r), "bob may not use the base (base: false): %d %r" % (st, msg(r)))
    # listing: a tenant only sees what it may use? (at least: the call needs a key)
    st, _, r = call("/v1/models", None, None, "GET")
    check(st == 401, "/v1/models needs a key: %d" % st)
    # admin rights
    for key, who in ((KA, "alice"), (KB, "bob")):
        st, _, r = call("/v1/load_lora_adapter", {"lora_name": "new", "lora_path": os.path.join(root, "alice", "x")}, key)
        check(st == 403 and "admin" in msg(r), "%s may not load adapters: %d %r" % (who, st, msg(r)))
        st, _, r = call("/v1/unload_lora_adapter", {"lora_name": "alice/x"}, key)
        check(st == 403 and "admin" in msg(r), "%s may not unload adapters: %d %r" % (who, st, msg(r)))
    st, _, r = call("/v1/load_lora_adapter", {"lora_name": "new", "lora_path": os.path.join(root, "alice", "x")}, KADMIN)
    check(st == 200, "the admin loads an adapter: %d %r" % (st, r))
    st, _, r = call("/v1/completions", dict(body, model="new"), KA)
    check(st == 403, "a new id is not alice's unless her globs match it: %d" % st)
    st, _, r = call("/v1/unload_lora_adapter", {"lora_name": "new"}, KADMIN)
    check(st == 200, "the admin unloads it: %d %r" % (st, r))
    # bad keys
    for h, what in (("Bearer " + KA[:-1], "a key one byte short"), ("Bearer " + KA + "x", "a key one byte long"),
                    ("Bearer " + KA.upper(), "a key in upper case"), ("bearer", "a scheme without key"),
                    ("Token " + KA, "another scheme"), ("Bearer " + KA + "\t" + KB, "two keys")):
        st, _, r = ts.request("POST", "/v1/completions", body, headers={"Authorization": h})
        check(st == 401 and ts.FAILS is not None, "%s → 401: %d" % (what, st))
    st, _, r = ts.request("GET", "/health")
    check(st == 200, "/health is public: %d" % st)


def t_constant_time():
    """A near-miss key (all but the last byte right) must not be measurably slower to refuse than
    a key wrong at the first byte. Coarse: medians of 300 tries each, within 25 %% or 150 us."""
    body = b'{"prompt": "a"}'
    near = "Bearer " + KA[:-1] + "Z"
    far = "Bearer " + "Z" + KA[1:]

    def once(h):
        s = socket.create_connection(("127.0.0.1", ts.D.port))
        req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: " + h.encode() +
               b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        t0 = time.perf_counter()
        s.sendall(req)
        data = s.recv(4096)
        dt = time.perf_counter() - t0
        s.close()
        return dt, data

    a, b = [], []
    for i in range(300):
        dt, data = once(near if i % 2 else far)
        (a if i % 2 else b).append(dt)
        if i == 0:
            check(data.startswith(b"HTTP/1.1 401"), "wrong key → 401")
    ma, mb = statistics.median(a), statistics.median(b)
    print("  key check: near-miss median %.0f us, first-byte-wrong median %.0f us" % (ma * 1e6, mb * 1e6))
    check(abs(ma - mb) < max(0.25 * min(ma, mb), 150e-6), "refusal time does not depend on how much of the key is right")


def t_stalled_with_auth():
    socks = []
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", ts.D.port), timeout=30)
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KA[:10].encode())
        else:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{")
        socks.append(s)
    t0 = time.time()
    st, _, r = call("/v1/completions", {"prompt": "served", "max_tokens": 4, "model": "alice/x"}, KA)
    dt = time.time() - t0
    check(st == 200 and dt < 10, "with 60 stalled sockets an authorised client is served (%.2fs): %d" % (dt, st))
    st, _, r = ts.request("GET", "/health", timeout=10)
    check(st == 200, "health with 60 stalled sockets")
    for s in socks:
        s.close()


def t_metrics_modes(binary, model, keys):
    for mode, no_key, with_key in (("public", 200, 200), ("auth", 401, 200), ("off", 401, 404)):
        main, ts.D = ts.D, ts.Daemon(binary, model, ["--api-keys", keys, "--metrics", mode])
        try:
            st, _, r = ts.request("GET", "/metrics")
            check(st == no_key, "--metrics %s: /metrics without a key → %d (got %d)" % (mode, no_key, st))
            st, _, r = call("/metrics", None, KA, "GET")
            check(st == with_key, "--metrics %s: /metrics with a key → %d (got %d)" % (mode, with_key, st))
            check(ts.request("GET", "/health")[0] == 200, "--metrics %s: /health public" % mode)
        finally:
            check(ts.D.stop(60) == 0, "--metrics %s daemon exits 0" % mode)
            ts.D = main
    # open daemon: binds 127.0.0.1 by default and says so; --metrics off works without keys too
    main, ts.D = ts.D, ts.Daemon(binary, model, ["--metrics", "off"])
    try:
        err = ts.D.stderr()
        check("listening on http://127.0.0.1:" in err and re.search(r"no API keys.*127\.0\.0\.1", err),
              "an open daemon binds 127.0.0.1 and says so at start: %r" % err[-400:])
        check(ts.request("GET", "/metrics")[0] == 404, "--metrics off on an open daemon → 404")
    finally:
        ts.D.stop(60)
        ts.D = main
    r = subprocess.run([binary, "--model", model, "--metrics", "sometimes"], capture_output=True, text=True)
    check(r.returncode == 2 and "--metrics" in r.stderr, "a bad --metrics value exits 2 naming the flag")


def main():
    binary, model = ts.find_binary(), ts.find_model()
    tmp = tempfile.mkdtemp(prefix="lorad_auth_")
    try:
        root = os.path.join(tmp, "ads")
        gen_adapter.generate(model, "qv", os.path.join(root, "alice", "x"))
        gen_adapter.generate(model, "t1", os.path.join(root, "bob", "y"))
        keys = os.path.join(tmp, "keys.json")
        with open(keys, "w") as f:
            json.dump({"tenants": [
                {"name": "alice", "keys": [KA], "adapters": ["alice/*"], "base": True},
                {"name": "bob", "keys": [KB], "adapters": ["bob/*"], "base": False},
                {"name": "ops", "keys": [KADMIN], "adapters": ["*"], "admin": True},
            ]}, f)
        ts.D = ts.Daemon(binary, model, ["--api-keys", keys, "--adapter-dir", root, "--log-level", "debug"])
        try:
            for fn, args in ((t_tenants, (root,)), (t_constant_time, ()), (t_stalled_with_auth, ()),
                             (t_metrics_modes, (binary, model, keys))):
                before, t0 = ts.CHECKS[0], time.time()
                try:
                    fn(*args)
                except Exception as e:  # noqa: BLE001
                    import traceback
                    traceback.print_exc()
                    check(False, "%s raised %r" % (fn.__name__, e))
                print("  %-22s %3d checks %5.1fs" % (fn.__name__, ts.CHECKS[0] - before, time.time() - t0), flush=True)
        finally:
            rc = ts.D.stop(60)
            check(rc == 0, "daemon exits 0 (got %r)" % rc)
        err = ts.D.stderr()
        for k in (KA, KB, KADMIN, KA[:12], KB[:12]):
            check(k not in err, "key %s... never appears in the debug log" % k[:6])
        check("Sanitizer" not in err and "runtime error:" not in err, "sanitizer-clean stderr")
        if ts.FAILS:
            print("".join(err.splitlines(True)[-30:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d checks, %d failed" % (ts.CHECKS[0], len(ts.FAILS)))
    return 1 if ts.FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
