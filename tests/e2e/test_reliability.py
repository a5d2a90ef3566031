#!/usr/bin/python3
"""Limits and hostile input, end to end (issue 7, "Limits" and acceptance 1).

One daemon with small limits (--max-body-bytes 8192, --max-seqs 1, --max-queue 1,
--header-timeout 2, --max-connections 24, --max-lora-rank 4) and an adapter root full of hostile
adapter folders, then short-lived daemons for hostile model folders. Checks:

  * every limit answers with its status (413, 400, 429) and an OpenAI error body whose message
    names the limit and its value;
  * the header timeout closes a slowloris connection (one header byte every 0.3 s) and a silent
    one, the idle timeout closes a silent connection when the header timeout is off, and the
    connection limit refuses connections past --max-connections while others are still served;
  * a catalogue of bad requests (this file's, counted together with test_server.py's t_malformed
    list) and of hostile files (adapter folders answered 4xx naming the file; model, config,
    tokenizer and chat-template files refused at start with a message naming the file, or for
    templates a 4xx on /v1/chat/completions); after each the daemon is healthy and its greedy
    answer is still the one it gave first.

Uses the helpers of test_server.py. Prints the catalogue counts. Exit 0 when every check passed.
"""

import json
import os
import re
import shutil
import socket
import struct
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
MAX_BODY = 8192
COUNTS = {"bad_requests": 0, "hostile_files": 0}


def err_msg(r):
    return r.get("error", {}).get("message", "") if isinstance(r, dict) else ""


def openai_error(r):
    return (isinstance(r, dict) and isinstance(r.get("error"), dict)
            and isinstance(r["error"].get("message"), str) and r["error"]["message"]
            and isinstance(r["error"].get("type"), str) and "param" in r["error"] and "code" in r["error"])


def greedy():
    st, _, r = ts.post("/v1/completions", {"prompt": [5, 17, 42], "max_tokens": 4, "temperature": 0,
                                           "ignore_eos": True, "return_token_ids": True})
    return r["choices"][0]["token_ids"] if st == 200 else (st, r)


# ---------------------------------------------------------------- limits


def t_limits(base_answer):
    st, _, r = ts.post("/v1/completions", {"prompt": "x" * (MAX_BODY + 10)})
    check(st == 413 and openai_error(r) and str(MAX_BODY) in err_msg(r),
          "413 names the body limit %d: %d %r" % (MAX_BODY, st, err_msg(r)))
    ctx = json.load(open(os.path.join(ts.find_model(), "config.json")))["max_position_embeddings"]
    st, _, r = ts.post("/v1/completions", {"prompt": [5] * (ctx + 1), "max_tokens": 1})
    check(st == 400 and openai_error(r) and str(ctx) in err_msg(r),
          "prompt longer than the context %d → 400 naming it: %d %r" % (ctx, st, err_msg(r)))
    st, _, r = ts.post("/v1/completions", {"prompt": "a", "max_tokens": ctx + 1})
    check(st == 400 and str(ctx) in err_msg(r), "max_tokens > context → 400 naming %d: %d %r"
          % (ctx, st, err_msg(r)))
    # queue: --max-seqs 1 --max-queue 1: a burst of 6 slow requests gets 429s naming the limit.
    import threading
    codes, msgs = [], []

    # All six leave together (a barrier) and each asks for hundreds of tokens, so on a fast idle
    # machine the first is still running when the others arrive: timing cannot hide the limit.
    go = threading.Barrier(6)

    def slow():
        go.wait(30)
        st, _, r = ts.post("/v1/completions", {"prompt": "slow", "max_tokens": 600, "ignore_eos": True})
        codes.append(st)
        if st != 200:
            msgs.append(err_msg(r))

    ths = [threading.Thread(target=slow) for _ in range(6)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(120)
    check(codes.count(429) >= 1 and set(codes) <= {200, 429}, "queue limit → 429s: %r" % codes)
    check(msgs and all("queue" in m and re.search(r"\b1\b", m) for m in msgs),
          "429 messages name the queue and its limit 1: %r" % msgs[:2])
    check(greedy() == base_answer, "greedy answer unchanged after the limits")


def sock_closed_within(s, seconds, drip=None):
    """Wait until the peer closes s (recv returns b'' or an error); drip sends a byte every 0.3 s.
    Returns the seconds it took, or None."""
    t0 = time.time()
    s.settimeout(0.3)
    while time.time() - t0 < seconds:
        try:
            if drip is not None:
                s.sendall(drip)
            data = s.recv(4096)
            if data == b"":
                return time.time() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.time() - t0
    return None


def t_timeouts_and_connections(binary, model):
    # Header timeout 2 s: a slowloris client and a client that sends a partial body are cut off.
    s = socket.create_connection(("127.0.0.1", ts.D.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    took = sock_closed_within(s, 10, drip=b"X")
    check(took is not None and 1.5 < took < 6, "slowloris (1 byte / 0.3 s) closed by the 2 s header "
          "timeout (took %r)" % took)
    s.close()
    s = socket.create_connection(("127.0.0.1", ts.D.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
    took = sock_closed_within(s, 10)
    check(took is not None and took < 6, "a body that stops arriving is closed by the header "
          "timeout (took %r)" % took)
    s.close()
    # Keep-alive: a served connection gets the deadline again for its next request.
    s = socket.create_connection(("127.0.0.1", ts.D.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5)
    first = s.recv(4096)
    check(first.startswith(b"HTTP/1.1 200"), "keep-alive request served: %r" % first[:40])
    took = sock_closed_within(s, 10)
    check(took is not None and took < 6, "an idle keep-alive connection is closed (took %r)" % took)
    s.close()
    # Max connections 24: the 25th..30th are closed at once; the health check still answers once
    # they are gone.
    socks = [socket.create_connection(("127.0.0.1", ts.D.port)) for _ in range(24)]
    time.sleep(0.3)
    extra = [socket.create_connection(("127.0.0.1", ts.D.port)) for _ in range(6)]
    refused = 0
    for e in extra:
        if sock_closed_within(e, 2) is not None:
            refused += 1
        e.close()
    check(refused == 6, "connections past --max-connections 24 are closed at once (%d of 6)" % refused)
    for s in socks:
        s.close()
    time.sleep(0.3)
    st, _, r = ts.request("GET", "/health", timeout=10)
    check(st == 200, "health answers once the connections are gone: %d" % st)
    # Idle timeout alone (header timeout off): a silent connection closes after --idle-timeout.
    main, ts.D = ts.D, ts.Daemon(binary, model, ["--header-timeout", "0", "--idle-timeout", "2"])
    try:
        s = socket.create_connection(("127.0.0.1", ts.D.port))
        took = sock_closed_within(s, 10)
        check(took is not None and 1.5 < took < 6, "--idle-timeout 2 closes a silent connection "
              "(took %r)" % took)
        s.close()
    finally:
        check(ts.D.stop(60) == 0, "idle-timeout daemon exits 0")
        ts.D = main


# ---------------------------------------------------------------- bad requests


def t_bad_requests(base_answer):
    deep = b"[" * 100000 + b"]" * 100000
    cases = [
        ("chat no messages", "/v1/chat/completions", {"max_tokens": 2}, 400),
        ("chat messages not array", "/v1/chat/completions", {"messages": "hi"}, 400),
        ("chat message no role", "/v1/chat/completions", {"messages": [{"content": "x"}]}, 400),
        ("chat content number", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400),
        ("chat max_completion_tokens -3", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -3}, 400),
        ("chat top_logprobs 99", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 99}, 400),
        ("generate no inputs", "/generate", {"parameters": {}}, 400),
        ("generate inputs number", "/generate", {"inputs": 7}, 400),
        ("generate max_new_tokens 0", "/generate", {"inputs": "a", "parameters": {"max_new_tokens": 0}}, 400),
        ("generate parameters array", "/generate", {"inputs": "a", "parameters": [1]}, 400),
        ("generate adapter_id ..", "/generate", {"inputs": "a", "parameters": {"adapter_id": "../x"}}, 400),
        ("generate_stream top_p 2", "/generate_stream", {"inputs": "a", "parameters": {"top_p": 2}}, 400),
        ("NaN literal", "/v1/completions", b'{"prompt": "a", "temperature": NaN}', 400),
        ("Infinity literal", "/v1/completions", b'{"prompt": "a", "top_p": Infinity}', 400),
        ("1e999 overflow", "/v1/completions", b'{"prompt": "a", "temperature": 1e999}', 400),
        ("deeply nested JSON", "/v1/completions", deep[:MAX_BODY - 10], 400),
        ("truncated JSON", "/v1/completions", b'{"prompt": "a", "max_tokens": ', 400),
        ("JSON then garbage", "/v1/completions", b'{"prompt": "a"} xyz', 400),
        ("NUL in body", "/v1/completions", b'{"prompt": "a\x00b"}', 400),
        ("lone surrogate escape", "/v1/completions", b'{"prompt": "\\ud800"}', 400),
        ("overlong UTF-8", "/v1/completions", b'{"prompt": "\xc0\xaf"}', 400),
        ("body is a string", "/v1/completions", b'"prompt"', 400),
        ("body is null", "/v1/completions", b"null", 400),
        ("n 17", "/v1/completions", {"prompt": "a", "n": 17}, 400),
        ("65 prompts", "/v1/completions", {"prompt": ["a"] * 65}, 400),
        ("max_tokens 1e20", "/v1/completions", {"prompt": "a", "max_tokens": 1e20}, 400),
        ("seed -1 float", "/v1/completions", {"prompt": "a", "seed": 1.5}, 400),
        ("top_k -5", "/v1/completions", {"prompt": "a", "top_k": -5}, 400),
        ("stop 300 bytes", "/v1/completions", {"prompt": "a", "stop": "s" * 300}, 400),
        ("model 300 bytes", "/v1/completions", {"prompt": "a", "model": "m" * 300}, 400),
        ("adapters mix 9 members", "/v1/completions",
         {"prompt": "a", "adapters": [{"id": "good"}] * 9}, 400),
        ("adapters mix scale NaN-ish string", "/v1/completions",
         {"prompt": "a", "adapters": [{"id": "good", "scale": "x"}]}, 400),
        ("load_lora no name", "/v1/load_lora_adapter", {"lora_path": "/tmp"}, 400),
        ("load_lora path outside roots", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/etc"}, 403),
        ("load_lora name with NUL", "/v1/load_lora_adapter", b'{"lora_name": "a\\u0000", "lora_path": "/tmp"}', 400),
        ("unload unknown", "/v1/unload_lora_adapter", {"lora_name": "never-was"}, 404),
        ("detokenize nested", "/detokenize", {"tokens": [[1, 2]]}, 400),
        ("tokenize content number", "/tokenize", {"content": 12}, 400),
        ("apply-template messages string", "/apply-template", {"messages": "x"}, 400),
        ("apply-template role number", "/apply-template", {"messages": [{"role": 1, "content": "x"}]}, 400),
    ]
    for name, path, body, want in cases:
        raw = body if isinstance(body, bytes) else None
        st, _, r = ts.request("POST", path, body=None if raw is not None else body, raw=raw)
        COUNTS["bad_requests"] += 1
        ok = (st == want or (want == 400 and st in (400, 422))) and openai_error(r)
        check(ok, "bad request '%s': want %d with an OpenAI error body, got %d %r" % (name, want, st, str(r)[:200]))
    st, _, r = ts.request("GET", "/health")
    check(st == 200 and greedy() == base_answer, "healthy and unchanged after the bad requests")


# ---------------------------------------------------------------- hostile adapter files


def st_bytes(header, data=b"", raw_len=None):
    h = json.dumps(header).encode()
    n = len(h) if raw_len is None else raw_len
    return struct.pack("<Q", n) + h + data


def make_hostile_adapters(model, root):
    """ROOT/good (a real adapter) and ROOT/h/<name> hostile ones; returns [(id, what, file)]."""
    good = os.path.join(root, "good")
    gen_adapter.generate(model, "qv", good)
    cfg = json.load(open(os.path.join(good, "adapter_config.json")))
    st = open(os.path.join(good, "adapter_model.safetensors"), "rb").read()
    (hlen,) = struct.unpack("<Q", st[:8])
    header = json.loads(st[8:8 + hlen])
    data = st[8 + hlen:]
    names = sorted(k for k in header if k != "__metadata__")
    first = names[0]
    out = []

    def add(name, what, config=None, weights=None, fname="adapter_model.safetensors"):
        d = os.path.join(root, "h", name)
        os.makedirs(d)
        with open(os.path.join(d, "adapter_config.json"), "wb") as f:
            f.write(config if isinstance(config, bytes) else json.dumps(config if config is not None else cfg).encode())
        with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
            f.write(weights if weights is not None else st)
        out.append(("h/" + name, what, fname))

    def hdr(**change):
        h = json.loads(json.dumps(header))
        h[first].update(change)
        return h

    add("cfg_not_json", "adapter_config.json is not JSON", config=b"{not json", fname="adapter_config.json")
    add("cfg_deep", "adapter_config.json nested 50000 deep", config=b"[" * 50000 + b"]" * 50000,
        fname="adapter_config.json")
    add("cfg_r_zero", "r = 0", config=dict(cfg, r=0), fname="adapter_config.json")
    add("cfg_r_neg", "r = -8", config=dict(cfg, r=-8), fname="adapter_config.json")
    add("cfg_r_huge", "r = 2^40", config=dict(cfg, r=2 ** 40), fname="adapter_config.json")
    add("cfg_alpha_str", "lora_alpha a string", config=dict(cfg, lora_alpha="big"), fname="adapter_config.json")
    add("cfg_targets_num", "target_modules a number", config=dict(cfg, target_modules=5),
        fname="adapter_config.json")
    add("cfg_rank_over_limit", "r above --max-lora-rank 4 (weights of rank 8 too)", config=dict(cfg),
        fname="rank")
    add("st_empty", "empty safetensors file", weights=b"")
    add("st_hlen_huge", "header length 2^63", weights=struct.pack("<Q", 1 << 63) + b"{}")
    add("st_hlen_past_end", "header length past the end", weights=st_bytes(header, data, raw_len=len(st) * 2))
    add("st_hdr_not_json", "header not JSON", weights=struct.pack("<Q", 8) + b"{{{{{{{{" + data)
    add("st_offsets_past_end", "offsets past the end",
        weights=st_bytes(hdr(data_offsets=[0, len(data) + 4096]), data))
    add("st_offsets_reversed", "offsets reversed",
        weights=st_bytes(hdr(data_offsets=[16, 8]), data))
    add("st_dtype_unknown", "dtype Q4_K", weights=st_bytes(hdr(dtype="Q4_K"), data))
    add("st_shape_overflow", "shape product overflows 64 bits",
        weights=st_bytes(hdr(shape=[1 << 62, 1 << 62]), data))
    add("st_shape_negative", "negative dimension", weights=st_bytes(hdr(shape=[-1, 8]), data))
    dup = (json.dumps(header)[:-1] + ', "%s": %s}' % (first, json.dumps(header[first]))).encode()
    add("st_duplicate_name", "duplicate tensor name", weights=struct.pack("<Q", len(dup)) + dup + data)
    add("st_truncated", "truncated to half", weights=st[: len(st) // 2])
    add("st_over_file_limit", "weights file over --max-adapter-file-mb 1", weights=st + b" " * (1 << 20),
        fname="filelimit")
    # symlink leaving the root
    outside = os.path.join(os.path.dirname(root), "outside")
    gen_adapter.generate(model, "t1", outside)
    os.symlink(outside, os.path.join(root, "h", "symlink_out"))
    out.append(("h/symlink_out", "a symlink to a folder outside the root", None))
    return out, cfg


def t_hostile_adapters(hostile, base_answer):
    for aid, what, fname in hostile:
        st, _, r = ts.post("/v1/completions", {"prompt": "a", "max_tokens": 2, "model": aid})
        COUNTS["hostile_files"] += 1
        msg = err_msg(r)
        ok = 400 <= st < 500 and openai_error(r)
        if fname == "rank":
            ok = ok and "4" in msg and "rank" in msg
        elif fname == "filelimit":
            ok = ok and st == 413 and "adapter_model.safetensors" in msg and "1048576" in msg
        elif fname:
            ok = ok and fname in msg
        check(ok, "hostile adapter %s (%s) → 4xx naming %s: %d %r" % (aid, what, fname, st, msg[:240]))
    st, _, r = ts.request("GET", "/health")
    check(st == 200 and greedy() == base_answer, "healthy and unchanged after the hostile adapters")


# ---------------------------------------------------------------- hostile model folders


def t_hostile_models(binary, model, tmp):
    """Each broken model folder: the daemon exits 1 with a message naming the file, no crash."""
    cases = []

    def folder(name, edit):
        d = os.path.join(tmp, "m_" + name)
        shutil.copytree(model, d)
        edit(d)
        return d

    def write(path, data):
        with open(path, "wb") as f:
            f.write(data)

    cfg = json.load(open(os.path.join(model, "config.json")))
    cases.append(("config.json", "config.json not JSON",
                  folder("cfg_bad", lambda d: write(os.path.join(d, "config.json"), b"{\"hidden_size\": "))))
    cases.append(("config.json", "hidden_size negative",
                  folder("cfg_neg", lambda d: write(os.path.join(d, "config.json"),
                                                    json.dumps(dict(cfg, hidden_size=-64)).encode()))))
    cases.append(("config.json", "num_hidden_layers 10^9",
                  folder("cfg_layers", lambda d: write(os.path.join(d, "config.json"),
                                                       json.dumps(dict(cfg, num_hidden_layers=10 ** 9)).encode()))))
    cases.append(("model.safetensors", "model header length 2^63",
                  folder("st_huge", lambda d: write(os.path.join(d, "model.safetensors"),
                                                    struct.pack("<Q", 1 << 63) + b"{}"))))
    cases.append(("model.safetensors", "model weights truncated",
                  folder("st_trunc", lambda d: write(os.path.join(d, "model.safetensors"),
                                                     open(os.path.join(model, "model.safetensors"), "rb").read()[:4096]))))
    cases.append(("tokenizer.json", "tokenizer.json truncated",
                  folder("tok_trunc", lambda d: write(os.path.join(d, "tokenizer.json"),
                                                      open(os.path.join(model, "tokenizer.json"), "rb").read()[:500]))))
    cases.append(("tokenizer.json", "tokenizer.json model type unknown",
                  folder("tok_type", lambda d: write(os.path.join(d, "tokenizer.json"),
                                                     json.dumps({"model": {"type": "Quantum"}}).encode()))))
    for fname, what, d in cases:
        r = subprocess.run([binary, "--model", d, "--port", "0"], capture_output=True, text=True, timeout=120)
        COUNTS["hostile_files"] += 1
        check(r.returncode == 1 and fname in r.stderr and "Sanitizer" not in r.stderr
              and "runtime error" not in r.stderr,
              "hostile model file (%s): exit 1 naming %s, got %d %r" % (what, fname, r.returncode, r.stderr[-300:]))
    # chat templates: the daemon serves, chat answers 4xx, nothing reads files or the environment
    tcfg = json.load(open(os.path.join(model, "tokenizer_config.json")))
    templates = [
        ("recursive macro", "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}"),
        ("huge loop", "{% for i in range(100000000) %}{% for j in range(100000000) %}x{% endfor %}{% endfor %}"),
        ("file include", "{% include '/etc/passwd' %}"),
        ("python escape", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        ("string blow-up", "{% set s = 'x' * 100000 %}{{ s * 100000 }}"),
    ]
    for what, tmpl in templates:
        d = os.path.join(tmp, "m_tmpl_%d" % len(cases))
        cases.append(("tokenizer_config.json", what, d))
        shutil.copytree(model, d)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(dict(tcfg, chat_template=tmpl), f)
        main, ts.D = ts.D, ts.Daemon(binary, d, ["--header-timeout", "0"])
        try:
            t0 = time.time()
            st, _, r = ts.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                        "max_tokens": 2}, timeout=60)
            COUNTS["hostile_files"] += 1
            msg = err_msg(r)
            check(400 <= st < 500 and openai_error(r) and "root:" not in msg and time.time() - t0 < 30,
                  "hostile chat template (%s) → 4xx with a message in %.1fs: %d %r"
                  % (what, time.time() - t0, st, msg[:200]))
            st, _, r = ts.request("GET", "/health")
            check(st == 200, "healthy after the hostile template (%s)" % what)
        finally:
            rc = ts.D.stop(60)
            err = ts.D.stderr()
            check(rc == 0 and "Sanitizer" not in err and "runtime error" not in err,
                  "template daemon (%s) exits 0 clean: %r" % (what, rc))
            ts.D = main


def main():
    binary, model = ts.find_binary(), ts.find_model()
    tmp = tempfile.mkdtemp(prefix="lorad_rel_")
    t_start = time.time()
    try:
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        hostile, _ = make_hostile_adapters(model, root)
        ts.D = ts.Daemon(binary, model, [
            "--max-body-bytes", str(MAX_BODY), "--max-seqs", "1", "--max-queue", "1",
            "--header-timeout", "2", "--max-connections", "24", "--max-lora-rank", "4",
            "--max-adapter-file-mb", "1", "--adapter-dir", root])
        # test_server's Daemon passes --max-body-bytes 65536 first; ours comes later and wins.
        try:
            base_answer = greedy()
            check(isinstance(base_answer, list) and len(base_answer) == 4, "greedy answer %r" % (base_answer,))
            for fn, args in ((t_limits, (base_answer,)),
                             (t_timeouts_and_connections, (binary, model)),
                             (t_bad_requests, (base_answer,)),
                             (t_hostile_adapters, (hostile, base_answer)),
                             (t_hostile_models, (binary, model, tmp))):
                before, t0 = ts.CHECKS[0], time.time()
                try:
                    fn(*args)
                except Exception as e:  # noqa: BLE001
                    import traceback
                    traceback.print_exc()
                    check(False, "%s raised %r" % (fn.__name__, e))
                print("  %-28s %3d checks %5.1fs" % (fn.__name__, ts.CHECKS[0] - before, time.time() - t0),
                      flush=True)
            check(greedy() == base_answer, "the first greedy answer still holds at the end")
        finally:
            if ts.D.proc.poll() is None:
                rc = ts.D.stop(60)
                check(rc == 0, "daemon exits 0 after SIGTERM (got %r)" % rc)
        err = ts.D.stderr()
        check("Sanitizer" not in err and "runtime error:" not in err, "sanitizer-clean daemon stderr")
        if ts.FAILS:
            print("---- daemon stderr (last 30 lines) ----")
            print("".join(err.splitlines(True)[-30:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    src = open(os.path.join(HERE, "test_server.py")).read()
    body = src[src.index("def t_malformed"):src.index("def t_hostile_http")]
    n_server = len(re.findall(r'^\s+\("[^"]+", "(?:POST|GET|DELETE)", ', body, re.M))
    src_a = open(os.path.join(HERE, "test_adapters.py")).read()
    n_adapt_files = sum(src_a.count('ask("%s")' % k) for k in ("missing", "corrupt", "incompat"))
    print("catalogue: %d bad requests here + %d in test_server.py = %d; %d hostile files here + %d in "
          "test_adapters.py = %d" % (COUNTS["bad_requests"], n_server, COUNTS["bad_requests"] + n_server,
                                     COUNTS["hostile_files"], n_adapt_files,
                                     COUNTS["hostile_files"] + n_adapt_files))
    check(COUNTS["bad_requests"] + n_server >= 40 and COUNTS["hostile_files"] + n_adapt_files >= 15,
          "catalogue sizes reach 40 bad requests and 15 hostile files")
    print("%d checks, %d failed, %.0fs" % (ts.CHECKS[0], len(ts.FAILS), time.time() - t_start))
    return 1 if ts.FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
