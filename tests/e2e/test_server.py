#!/usr/bin/python3
"""End-to-end test of the lorad daemon: starts it on port 0 with the generated default model and
talks HTTP to it like a client would (stdlib only).

Runs the ASan build ($LORAD_ASAN_BUILD/lorad) when it exists, else $LORAD_BUILD/lorad. The model
is $LORAD_MODELS/default, generated with tests/gen/gen_model.py when missing. Greedy outputs are
checked against the float64 reference (tests/ref/ref.py), not against the daemon itself.

Exit status 0 when every check passed; each failure is printed with what was expected.
"""

import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PY = "/usr/bin/python3"
MAX_BODY = 65536
FAILS = []
CHECKS = [0]


def check(cond, what):
    CHECKS[0] += 1
    if not cond:
        FAILS.append(what)
        print("FAIL:", what, flush=True)
    return cond


# ---------------------------------------------------------------- the daemon


def find_binary():
    for var, default in (("LORAD_ASAN_BUILD", "build/asan"), ("LORAD_BUILD", "build")):
        d = os.environ.get(var, default)
        p = os.path.join(d if os.path.isabs(d) else os.path.join(ROOT, d), "lorad")
        if os.access(p, os.X_OK):
            return p
    sys.exit("test_server: no lorad binary in $LORAD_ASAN_BUILD or $LORAD_BUILD (run make)")


def find_model():
    root = os.environ.get("LORAD_MODELS", "build/testmodels")
    if not os.path.isabs(root):
        root = os.path.join(ROOT, root)
    d = os.path.join(root, "default")
    if not os.path.exists(os.path.join(d, "config.json")):
        subprocess.run([PY, os.path.join(ROOT, "tests/gen/gen_model.py"), "--preset", "default",
                        "--out", d], check=True)
    return d


class Daemon:
    def __init__(self, binary, model, extra=()):
        self.lines = []
        self.cond = threading.Condition()
        args = [binary, "--model", model, "--port", "0", "--max-body-bytes", str(MAX_BODY),
                "--drain-timeout", "60", "--threads", "2",
                "--log-level", os.environ.get("LORAD_E2E_LOG_LEVEL", "info")] + list(extra)
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.port = None
        deadline = time.time() + 120
        with self.cond:
            while self.port is None and time.time() < deadline and self.proc.poll() is None:
                for ln in self.lines:
                    m = re.search(r"lorad: listening on http://([^\s:]+|\[[^\]]+\]):(\d+)", ln)
                    if m:
                        self.port = int(m.group(2))
                self.cond.wait(0.2)
        if self.port is None:
            self.proc.kill()
            sys.exit("test_server: the daemon did not start:\n" + "".join(self.lines[-30:]))

    def _read(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace"))
                self.cond.notify_all()

    def stderr(self):
        with self.cond:
            return "".join(self.lines)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
        self.reader.join(5)
        return rc


D = None


def request(method, path, body=None, raw=None, timeout=120, headers=None):
    """(status, headers, parsed JSON or text)."""
    c = http.client.HTTPConnection("127.0.0.1", D.port, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read()
    c.close()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text.decode("utf-8", "replace")
    return r.status, dict(r.getheaders()), parsed


def post(path, body, **kw):
    return request("POST", path, body, **kw)


def complete(**body):
    body.setdefault("prompt", "Hello")
    st, _, r = post("/v1/completions", body)
    if not check(st == 200, "completion %r answered %d: %r" % (body, st, r)):
        return None
    return r


def stream(body):
    """POST a streamed completion; returns (list of chunk dicts, saw [DONE], raw text)."""
    body = dict(body, stream=True)
    c = http.client.HTTPConnection("127.0.0.1", D.port, timeout=120)
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    check(r.status == 200, "stream status %d" % r.status)
    check(r.getheader("Content-Type", "").startswith("text/event-stream"),
          "stream content type %r" % r.getheader("Content-Type"))
    raw = r.read().decode("utf-8")
    c.close()
    chunks, done = [], False
    for ev in raw.split("\n\n"):
        if not ev.strip():
            continue
        check(ev.startswith("data: "), "SSE event without 'data: ': %r" % ev[:80])
        payload = ev[len("data: "):]
        if payload == "[DONE]":
            done = True
            continue
        check(not done, "data after [DONE]")
        chunks.append(json.loads(payload))
    return chunks, done, raw


def metrics():
    st, _, text = request("GET", "/metrics")
    check(st == 200, "/metrics status %d" % st)
    vals = {}
    for ln in text.splitlines():
        if ln.startswith("#") or not ln.strip():
            continue
        name, _, v = ln.rpartition(" ")
        vals[name] = float(v)
    return vals


def ref_greedy(model, prompt_ids, n, top=0, adapters=()):
    extra = []
    for a in adapters:
        extra += ["--adapter", a]
    out = subprocess.run([PY, os.path.join(ROOT, "tests/ref/ref.py"), "--model", model,
                          "--prompt", ",".join(map(str, prompt_ids)), "--max-tokens", str(n),
                          "--top-logprobs", str(top)] + extra, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.splitlines()[0])


def tokenize(text, add_special=True):
    st, _, r = post("/tokenize", {"content": text, "add_special": add_special})
    check(st == 200 and isinstance(r.get("tokens"), list), "tokenize %r: %d %r" % (text, st, r))
    return r["tokens"]


# ---------------------------------------------------------------- checks


def t_cli(binary, model):
    r = subprocess.run([binary, "--help"], capture_output=True, text=True)
    check(r.returncode == 0 and "--max-body-bytes" in r.stdout, "--help exits 0 and lists flags")
    for bad in (["--port", "abc"], ["--port", "70000"], ["--log-level", "loud"],
                ["--api-key", "a", "--api-keys", "f"],
                ["--threads", "-1"], ["--bogus", "1"], []):
        args = [binary] + (["--model", model] if bad else []) + bad
        r = subprocess.run(args, capture_output=True, text=True)
        check(r.returncode == 2 and "lorad:" in r.stderr,
              "bad flags %r exit 2 with a message (got %d, %r)" % (bad, r.returncode, r.stderr))


def t_health_models():
    st, _, r = request("GET", "/health")
    check(st == 200 and r == {"status": "ok"}, "/health: %d %r" % (st, r))
    st, _, r = request("GET", "/v1/models")
    check(st == 200 and r.get("object") == "list" and r["data"][0]["id"] == "default"
          and r["data"][0]["object"] == "model", "/v1/models: %d %r" % (st, r))


def t_tokenize():
    text = "Hello world, this is lorad. 12345 héllo ✓"
    ids = tokenize(text, add_special=False)
    st, _, r = post("/detokenize", {"tokens": ids})
    check(st == 200 and r.get("content") == text, "detokenize(tokenize(x)) == x: %r" % (r,))
    with_bos = tokenize(text)
    check(with_bos[0] == 504 and with_bos[1:] == ids,
          "add_special prepends the BOS id 504: %r vs %r" % (with_bos[:3], ids[:3]))
    st, _, r = post("/detokenize", {"tokens": with_bos})
    check(st == 200 and r.get("content") == "<|begin_of_text|>" + text,
          "detokenize keeps special tokens: %r" % (r,))


def t_greedy(model):
    prompt = "The quick brown fox"
    ids = tokenize(prompt)
    a = complete(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True,
                 return_token_ids=True)
    b = complete(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True,
                 return_token_ids=True)
    if not a or not b:
        return None
    ca, cb = a["choices"][0], b["choices"][0]
    check(a["object"] == "text_completion" and a["model"] == "default"
          and a["id"].startswith("cmpl-"), "response shape: %r" % {k: a[k] for k in ("object", "model", "id")})
    check(ca["text"] == cb["text"] and ca["token_ids"] == cb["token_ids"], "greedy is deterministic")
    check(ca["finish_reason"] == "length", "max_tokens ends with finish_reason length: %r" % ca["finish_reason"])
    check(a["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 12, "total_tokens": len(ids) + 12},
          "usage %r (prompt has %d tokens)" % (a["usage"], len(ids)))
    check(ca["prompt_token_ids"] == ids, "prompt_token_ids equal /tokenize")
    check(len(ca["token_ids"]) == 12, "12 token_ids")
    ref = ref_greedy(model, ids, 12)
    check(ref["min_gap"] < 1e-3 or ca["token_ids"] == ref["tokens"],
          "greedy tokens equal the float64 reference: %r vs %r" % (ca["token_ids"], ref["tokens"]))
    st, _, d = post("/detokenize", {"tokens": ca["token_ids"]})
    if "<|" not in d.get("content", ""):
        check(d.get("content") == ca["text"], "text == detokenize(token_ids): %r vs %r" % (ca["text"], d))
    # The same prompt as token ids gives the same completion.
    c = complete(prompt=ids, temperature=0, max_tokens=12, ignore_eos=True, return_token_ids=True)
    if c:
        check(c["choices"][0]["token_ids"] == ca["token_ids"], "token-id prompt == string prompt")
    # max_tokens
    m = complete(prompt=prompt, temperature=0, max_tokens=3, ignore_eos=True, return_token_ids=True)
    if m:
        check(m["choices"][0]["token_ids"] == ca["token_ids"][:3] and m["usage"]["completion_tokens"] == 3,
              "max_tokens 3 gives the first 3 greedy tokens")
    # Batched prompts: an array of strings and an array of id arrays.
    bb = complete(prompt=[prompt, "Another prompt"], temperature=0, max_tokens=12, ignore_eos=True,
                  return_token_ids=True)
    if bb:
        check([x["index"] for x in bb["choices"]] == [0, 1], "two prompts → choices 0, 1")
        check(bb["choices"][0]["token_ids"] == ca["token_ids"], "batched prompt 0 == alone")
    bi = complete(prompt=[ids, ids[:3]], temperature=0, max_tokens=2, ignore_eos=True)
    if bi:
        check(len(bi["choices"]) == 2, "array of id arrays → 2 choices")
    return prompt, ids, ca


def t_logprobs(model, prompt, ids, greedy):
    r = complete(prompt=prompt, temperature=0, max_tokens=8, ignore_eos=True, logprobs=3,
                 return_token_ids=True)
    if not r:
        return
    c = r["choices"][0]
    lp = c["logprobs"]
    check(set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, "logprobs keys %r" % list(lp))
    check(all(len(lp[k]) == 8 for k in lp), "8 logprob entries each")
    check(c["token_ids"] == greedy["token_ids"][:8], "logprobs do not change greedy tokens")
    ref = ref_greedy(model, ids, 8, top=3)
    for i in range(8):
        v = lp["token_logprobs"][i]
        check(v <= 1e-6, "logprob %d ≤ 0: %r" % (i, v))
        check(abs(v - ref["logprobs"][i]) < 2e-3,
              "logprob %d equals the reference: %r vs %r" % (i, v, ref["logprobs"][i]))
        tops = lp["top_logprobs"][i]
        check(isinstance(tops, dict) and 1 <= len(tops) <= 4, "top_logprobs %d: %r" % (i, tops))
        check(abs(max(tops.values()) - v) < 1e-5, "greedy token is the top alternative at %d" % i)
        check(sum(math.exp(x) for x in tops.values()) <= 1.0 + 1e-4, "top probabilities sum ≤ 1")
    offs = lp["text_offset"]
    check(offs[0] == 0 and offs == sorted(offs) and offs[-1] <= len(c["text"]),
          "text_offset starts at 0, is monotone and inside the text: %r" % offs)
    # Tokens that are part of a UTF-8 character decode to U+FFFD on their own.
    joined = "".join(lp["tokens"])
    check(joined == c["text"] or "<|" in joined or "\ufffd" in joined,
          "logprobs tokens concatenate to the text: %r vs %r" % (lp["tokens"], c["text"]))
    # Consistency: the echoed prompt logprobs of (prompt + first 5 generated) equal the generated
    # logprobs above.
    e = complete(prompt=ids + c["token_ids"][:5], temperature=0, max_tokens=1, echo=True, logprobs=3)
    if e:
        elp = e["choices"][0]["logprobs"]
        n = len(ids) + 5 + 1
        check(len(elp["token_logprobs"]) == n, "echo+logprobs has prompt+generated entries: %d vs %d" % (len(elp["token_logprobs"]), n))
        check(elp["token_logprobs"][0] is None and elp["top_logprobs"][0] is None,
              "first prompt token has a null logprob")
        for i in range(5):
            a, b = elp["token_logprobs"][len(ids) + i], lp["token_logprobs"][i]
            check(a is not None and abs(a - b) < 2e-3, "prompt logprob %d == generated logprob: %r vs %r" % (i, a, b))
        check(abs(elp["token_logprobs"][-1] - lp["token_logprobs"][5]) < 2e-3, "next generated logprob matches")


def t_echo(prompt, greedy):
    r = complete(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True, echo=True)
    if r:
        check(r["choices"][0]["text"] == prompt + greedy["text"], "echo prepends the prompt: %r" % r["choices"][0]["text"])


def t_n_and_seed(prompt):
    a = complete(prompt=prompt, n=2, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True,
                 return_token_ids=True)
    b = complete(prompt=prompt, n=2, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True,
                 return_token_ids=True)
    if a and b:
        check([c["index"] for c in a["choices"]] == [0, 1], "n=2 → choices 0 and 1")
        check([c["token_ids"] for c in a["choices"]] == [c["token_ids"] for c in b["choices"]],
              "the same seed gives the same samples: %r vs %r" % ([c["token_ids"] for c in a["choices"]], [c["token_ids"] for c in b["choices"]]))
        check(a["usage"]["completion_tokens"] == 20, "usage counts both choices")
    g = complete(prompt=prompt, n=2, temperature=0, max_tokens=6, ignore_eos=True)
    if g:
        check(g["choices"][0]["text"] == g["choices"][1]["text"], "greedy n=2 choices agree")


def t_stop(prompt, greedy):
    # A stop string spanning two tokens: the last character of token k-1 and the first of token k.
    r = complete(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True, logprobs=0)
    if not r:
        return
    text, offs = r["choices"][0]["text"], r["choices"][0]["logprobs"]["text_offset"]
    stop = None
    for k in range(2, len(offs) - 1):
        if offs[k] - 1 >= offs[k - 1] and offs[k + 1] > offs[k] and offs[k] < len(text):
            stop = text[offs[k] - 1:offs[k] + 1]
            break
    if not check(stop, "found a token boundary to build a stop string in %r" % text):
        return
    want = text[:text.find(stop)]
    s = complete(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True, stop=[stop])
    if s:
        c = s["choices"][0]
        check(c["text"] == want and c["finish_reason"] == "stop",
              "stop %r cuts %r to %r (got %r, %s)" % (stop, text, want, c["text"], c["finish_reason"]))
    chunks, done, _ = stream(dict(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True,
                                  stop=stop))
    st_text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    check(st_text == want and chunks[-1]["choices"][0]["finish_reason"] == "stop",
          "streamed stop: %r vs %r" % (st_text, want))
    n = complete(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True, stop=["\x01never"])
    if n:
        check(n["choices"][0]["text"] == greedy["text"] and n["choices"][0]["finish_reason"] == "length",
              "an absent stop string changes nothing")


def t_stream(prompt, greedy):
    body = dict(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True,
                stream_options={"include_usage": True})
    chunks, done, raw = stream(body)
    check(done, "stream ends with data: [DONE]")
    check(all(ch["object"] == "text_completion" for ch in chunks), "chunks are text_completion")
    text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    check(text == greedy["text"], "streamed text == non-streamed: %r vs %r" % (text, greedy["text"]))
    fins = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    check(fins[-1] == "length" and all(f is None for f in fins[:-1]), "finish_reason only on the last chunk: %r" % fins)
    last = chunks[-1] if chunks else {}
    check(last.get("choices") == [] and last.get("usage", {}).get("completion_tokens") == 12,
          "include_usage: a final chunk with usage and no choices: %r" % last)
    check(all("usage" in ch and ch["usage"] is None for ch in chunks[:-1]), "usage null on other chunks")
    chunks, done, _ = stream(dict(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True))
    check(done and all("usage" not in ch for ch in chunks), "no usage chunk without include_usage")
    # Streamed n=2 with echo: each index's texts concatenate to the non-streamed one.
    chunks, done, _ = stream(dict(prompt=prompt, temperature=0, max_tokens=5, ignore_eos=True, n=2, echo=True))
    for i in range(2):
        t = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"] and ch["choices"][0]["index"] == i)
        check(t == prompt + complete(prompt=prompt, temperature=0, max_tokens=5, ignore_eos=True)["choices"][0]["text"],
              "streamed echo n=2 index %d" % i)


def t_tgi(prompt, greedy):
    """/generate and /generate_stream (TGI shapes) agree with /v1/completions."""
    ref = complete(prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True, logprobs=0,
                   return_token_ids=True)
    st, _, r = post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 12, "details": True}})
    if not check(st == 200, "/generate: %d %r" % (st, r)) or not ref:
        return
    c = ref["choices"][0]
    d = r.get("details") or {}
    toks = d.get("tokens", [])
    stopped = d.get("finish_reason") == "eos_token"
    n = len(toks)
    check([t["id"] for t in toks] == c["token_ids"][:n] and (stopped or n == 12),
          "/generate greedy tokens equal /v1/completions: %r vs %r" % ([t["id"] for t in toks], c["token_ids"]))
    check(all(abs(t["logprob"] - lp) < 1e-4 for t, lp in zip(toks, c["logprobs"]["token_logprobs"])),
          "/generate logprobs equal /v1/completions")
    check(d.get("generated_tokens") == n and d.get("seed") is None and
          d.get("finish_reason") in ("length", "eos_token"), "details: %r" % {k: d.get(k) for k in ("finish_reason", "generated_tokens", "seed")})
    if not stopped:
        check(r["generated_text"] == c["text"], "generated_text == completion text")
    st, _, full = post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 12, "return_full_text": True}})
    check(st == 200 and full["generated_text"] == prompt + r["generated_text"] and "details" not in full,
          "return_full_text prepends the inputs: %r" % full)
    # The stream: one event per token, the last with generated_text and details, no [DONE].
    cn = http.client.HTTPConnection("127.0.0.1", D.port, timeout=120)
    cn.request("POST", "/generate_stream", json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 12}}),
               {"Content-Type": "application/json"})
    resp = cn.getresponse()
    raw = resp.read().decode()
    evs = [json.loads(e[len("data: "):]) for e in raw.split("\n\n") if e.strip()]
    check(resp.status == 200 and "[DONE]" not in raw, "generate_stream status and no [DONE]")
    check([e["token"]["id"] for e in evs] == [t["id"] for t in toks], "streamed tokens == /generate tokens")
    check([e["index"] for e in evs] == list(range(1, len(evs) + 1)), "indexes count from 1")
    check(all(e["generated_text"] is None for e in evs[:-1]) and evs[-1]["generated_text"] == r["generated_text"]
          and evs[-1]["details"]["generated_tokens"] == n, "the last event carries generated_text and details")
    # A stop sequence: taken from the greedy text.
    text = r["generated_text"]
    if len(text) >= 4 and not stopped:
        stop = text[2:4]
        st, _, s2 = post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 12, "stop": [stop], "details": True}})
        check(st == 200 and s2["generated_text"] == text[:text.find(stop)] and s2["details"]["finish_reason"] == "stop_sequence",
              "TGI stop sequence %r: %r" % (stop, s2))
    st, _, s3 = post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 5, "details": True}})
    st2, _, s4 = post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 5}})
    check(st == 200 and s3["details"]["seed"] == 5 and s3["generated_text"] == s4["generated_text"],
          "sampling with a seed is reproducible and reports the seed")
    for name, body in (("no inputs", {"parameters": {}}), ("inputs number", {"inputs": 3}),
                       ("parameters list", {"inputs": "a", "parameters": []}),
                       ("max_new_tokens 0", {"inputs": "a", "parameters": {"max_new_tokens": 0}}),
                       ("temperature 0", {"inputs": "a", "parameters": {"temperature": 0}}),
                       ("top_p 1", {"inputs": "a", "parameters": {"top_p": 1.0}}),
                       ("do_sample string", {"inputs": "a", "parameters": {"do_sample": "yes"}}),
                       ("grammar", {"inputs": "a", "parameters": {"grammar": {"type": "json"}}}),
                       ("adapter_id ..", {"inputs": "a", "parameters": {"adapter_id": "a/../b"}})):
        st, _, e = post("/generate", body)
        check(st == 400 and "error" in e and e["error"]["message"], "TGI %s → 400: %d %r" % (name, st, e))
    st, _, e = post("/generate", {"inputs": "a", "parameters": {"max_new_tokens": 0}})
    check(e["error"]["param"] == "parameters.max_new_tokens", "TGI errors name parameters.x: %r" % e)


def t_chat(model):
    """/apply-template against Python's jinja2 configured as transformers does, and
    /v1/chat/completions against /v1/completions on the rendered prompt."""
    cfg = json.load(open(os.path.join(model, "tokenizer_config.json")))
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something about foxes"}]
    try:
        import jinja2.sandbox
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        want = env.from_string(cfg["chat_template"]).render(
            messages=msgs, add_generation_prompt=True, bos_token=cfg.get("bos_token"),
            eos_token=cfg.get("eos_token"))
    except ImportError:
        want = None
    st, _, r = post("/apply-template", {"messages": msgs})
    check(st == 200 and (want is None or r.get("prompt") == want),
          "/apply-template equals jinja2's rendering: %r vs %r" % (r, want))
    prompt = r.get("prompt", "")
    st, _, r2 = post("/apply-template", {"messages": msgs, "add_generation_prompt": False})
    check(st == 200 and prompt.startswith(r2.get("prompt", "?")) and len(r2["prompt"]) < len(prompt),
          "add_generation_prompt false drops the assistant header")
    ids = tokenize(prompt, add_special=False)
    ref = complete(prompt=ids, temperature=0, max_tokens=10, logprobs=2)
    st, _, c = post("/v1/chat/completions", {"messages": msgs, "temperature": 0, "max_tokens": 10,
                                             "logprobs": True, "top_logprobs": 2})
    if not check(st == 200 and ref, "chat completion: %d %r" % (st, c)):
        return
    ch = c["choices"][0]
    check(c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-")
          and ch["message"]["role"] == "assistant", "chat response shape: %r" % c)
    check(ch["message"]["content"] == ref["choices"][0]["text"]
          and ch["finish_reason"] == ref["choices"][0]["finish_reason"],
          "chat content == completion of the rendered prompt: %r vs %r" % (ch["message"]["content"], ref["choices"][0]["text"]))
    check(c["usage"]["prompt_tokens"] == len(ids), "chat usage counts the rendered prompt")
    lc = ch["logprobs"]["content"]
    check(len(lc) == c["usage"]["completion_tokens"] and all(len(t["top_logprobs"]) == 2 for t in lc)
          and all(abs(t["logprob"] - v) < 1e-5 for t, v in zip(lc, ref["choices"][0]["logprobs"]["token_logprobs"]))
          and all(bytes(t["bytes"]).decode("utf-8", "replace") == t["token"] for t in lc),
          "chat logprobs: one entry per token with 2 alternatives, bytes = token")
    # The streamed chat (stream() posts to /v1/completions, so by hand).
    cn = http.client.HTTPConnection("127.0.0.1", D.port, timeout=120)
    cn.request("POST", "/v1/chat/completions", json.dumps({"messages": msgs, "temperature": 0,
                                                          "max_completion_tokens": 10, "stream": True}),
               {"Content-Type": "application/json"})
    raw = cn.getresponse().read().decode()
    evs = [e[6:] for e in raw.split("\n\n") if e.strip()]
    check(evs and evs[-1] == "[DONE]", "chat stream ends with [DONE]")
    objs = [json.loads(e) for e in evs[:-1]]
    check(all(o["object"] == "chat.completion.chunk" for o in objs), "chunk objects")
    check(objs and objs[0]["choices"][0]["delta"].get("role") == "assistant", "first delta has the role")
    text = "".join(o["choices"][0]["delta"].get("content", "") for o in objs if o["choices"])
    check(text == ch["message"]["content"], "streamed chat == non-streamed: %r vs %r" % (text, ch["message"]["content"]))
    for name, body, param in (
            ("no messages", {"max_tokens": 3}, "messages"),
            ("messages string", {"messages": "hi"}, "messages"),
            ("message without role", {"messages": [{"content": "x"}]}, "messages"),
            ("content number", {"messages": [{"role": "user", "content": 3}]}, "messages"),
            ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
            ("logprobs int", {"messages": msgs, "logprobs": 3}, "logprobs"),
            ("top_logprobs alone", {"messages": msgs, "top_logprobs": 2}, "top_logprobs"),
            ("top_logprobs 21", {"messages": msgs, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
            ("max_completion_tokens 0", {"messages": msgs, "max_completion_tokens": 0}, "max_completion_tokens"),
            ("temperature -1", {"messages": msgs, "temperature": -1}, "temperature")):
        st, _, e = post("/v1/chat/completions", body)
        check(st == 400 and e.get("error", {}).get("param") == param,
              "chat %s → 400 naming %s: %d %r" % (name, param, st, e))


def t_eos():
    # Without ignore_eos a greedy run may stop early with "stop"; with it, always the full length.
    for p in ("a", "The end", "Once upon a time"):
        r = complete(prompt=p, temperature=0, max_tokens=40, return_token_ids=True)
        if r:
            c = r["choices"][0]
            if c["finish_reason"] == "stop":
                check(c["token_ids"][-1] in (505, 507), "finish stop at an eos id: %r" % c["token_ids"][-3:])
            else:
                check(len(c["token_ids"]) == 40 and not (set(c["token_ids"]) & {505, 507}),
                      "length finish has no eos")
        r = complete(prompt=p, temperature=0, max_tokens=40, ignore_eos=True)
        if r:
            check(r["usage"]["completion_tokens"] == 40 and r["choices"][0]["finish_reason"] == "length",
                  "ignore_eos runs to max_tokens")


def t_malformed():
    long_ids = [5] * 1100
    cases = [
        ("bad JSON", "POST", "/v1/completions", b"{", 400),
        ("empty body", "POST", "/v1/completions", b"", 400),
        ("body is an array", "POST", "/v1/completions", b"[1,2]", 400),
        ("invalid UTF-8", "POST", "/v1/completions", b'{"prompt": "\xff\xfe"}', 400),
        ("duplicate keys", "POST", "/v1/completions", b'{"prompt": "a", "prompt": "b"}', 400),
        ("no prompt", "POST", "/v1/completions", {"max_tokens": 3}, 400),
        ("prompt number", "POST", "/v1/completions", {"prompt": 5}, 400),
        ("prompt empty array", "POST", "/v1/completions", {"prompt": []}, 400),
        ("prompt mixed array", "POST", "/v1/completions", {"prompt": [[1, "a"]]}, 400),
        ("token id too big", "POST", "/v1/completions", {"prompt": [99999]}, 400),
        ("token id negative", "POST", "/v1/completions", {"prompt": [-1]}, 400),
        ("prompt too long", "POST", "/v1/completions", {"prompt": long_ids}, 400),
        ("max_tokens -1", "POST", "/v1/completions", {"prompt": "a", "max_tokens": -1}, 400),
        ("max_tokens 0", "POST", "/v1/completions", {"prompt": "a", "max_tokens": 0}, 400),
        ("max_tokens string", "POST", "/v1/completions", {"prompt": "a", "max_tokens": "10"}, 400),
        ("max_tokens float", "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2.5}, 400),
        ("temperature -0.5", "POST", "/v1/completions", {"prompt": "a", "temperature": -0.5}, 400),
        ("temperature string", "POST", "/v1/completions", {"prompt": "a", "temperature": "hot"}, 400),
        ("top_p 0", "POST", "/v1/completions", {"prompt": "a", "top_p": 0}, 400),
        ("top_p 1.5", "POST", "/v1/completions", {"prompt": "a", "top_p": 1.5}, 400),
        ("top_k string", "POST", "/v1/completions", {"prompt": "a", "top_k": "5"}, 400),
        ("min_p 1", "POST", "/v1/completions", {"prompt": "a", "min_p": 1.0}, 400),
        ("logprobs 21", "POST", "/v1/completions", {"prompt": "a", "logprobs": 21}, 400),
        ("logprobs bool", "POST", "/v1/completions", {"prompt": "a", "logprobs": True}, 400),
        ("n 0", "POST", "/v1/completions", {"prompt": "a", "n": 0}, 400),
        ("stream string", "POST", "/v1/completions", {"prompt": "a", "stream": "yes"}, 400),
        ("echo string", "POST", "/v1/completions", {"prompt": "a", "echo": "true"}, 400),
        ("stop number", "POST", "/v1/completions", {"prompt": "a", "stop": 5}, 400),
        ("stop 17 strings", "POST", "/v1/completions", {"prompt": "a", "stop": ["x%d" % i for i in range(17)]}, 400),
        ("stop empty string", "POST", "/v1/completions", {"prompt": "a", "stop": [""]}, 400),
        ("presence_penalty 3", "POST", "/v1/completions", {"prompt": "a", "presence_penalty": 3}, 400),
        ("repetition_penalty 0", "POST", "/v1/completions", {"prompt": "a", "repetition_penalty": 0}, 400),
        ("seed string", "POST", "/v1/completions", {"prompt": "a", "seed": "x"}, 400),
        ("stream_options string", "POST", "/v1/completions", {"prompt": "a", "stream_options": "x"}, 400),
        ("suffix", "POST", "/v1/completions", {"prompt": "a", "suffix": "x"}, 400),
        ("logit_bias", "POST", "/v1/completions", {"prompt": "a", "logit_bias": {"1": 5}}, 400),
        ("best_of > n", "POST", "/v1/completions", {"prompt": "a", "best_of": 3}, 400),
        ("unknown model", "POST", "/v1/completions", {"prompt": "a", "model": "nope"}, 404),
        ("model ..", "POST", "/v1/completions", {"prompt": "a", "model": "../etc/passwd"}, 400),
        ("model leading /", "POST", "/v1/completions", {"prompt": "a", "model": "/abs/path"}, 400),
        ("model backslash", "POST", "/v1/completions", {"prompt": "a", "model": "a\\b"}, 400),
        ("model control char", "POST", "/v1/completions", {"prompt": "a", "model": "a\u0001b"}, 400),
        ("model NUL", "POST", "/v1/completions", b'{"prompt": "a", "model": "a\\u0000b"}', 400),
        ("model number", "POST", "/v1/completions", {"prompt": "a", "model": 5}, 400),
        ("unknown route", "GET", "/v1/nothing", None, 404),
        ("unknown POST route", "POST", "/v2/completions", {"prompt": "a"}, 404),
        ("GET completions", "GET", "/v1/completions", None, 405),
        ("POST health", "POST", "/health", {}, 405),
        ("DELETE models", "DELETE", "/v1/models", None, 405),
        ("oversize body", "POST", "/v1/completions", {"prompt": "x" * (MAX_BODY + 100)}, 413),
        ("tokenize without content", "POST", "/tokenize", {"text": "a"}, 400),
        ("tokenize add_special string", "POST", "/tokenize", {"content": "a", "add_special": "no"}, 400),
        ("detokenize tokens string", "POST", "/detokenize", {"tokens": "abc"}, 400),
        ("detokenize id too big", "POST", "/detokenize", {"tokens": [999999]}, 400),
        ("tokenize unknown model", "POST", "/tokenize", {"content": "a", "model": "zzz"}, 404),
    ]
    for name, method, path, body, want in cases:
        raw = body if isinstance(body, bytes) else None
        st, hdr, r = request(method, path, body=None if raw is not None else body, raw=raw)
        ok = (st == want and isinstance(r, dict) and isinstance(r.get("error"), dict)
              and isinstance(r["error"].get("message"), str) and r["error"]["message"]
              and isinstance(r["error"].get("type"), str) and "param" in r["error"] and "code" in r["error"])
        check(ok, "malformed '%s': want %d with an OpenAI error body, got %d %r" % (name, want, st, r))
        if want == 405:
            check("Allow" in hdr, "405 carries an Allow header (%s)" % name)
    st, _, r = post("/v1/completions", {"prompt": "a", "max_tokens": -1})
    check("max_tokens" in r["error"]["message"] and "-1" in r["error"]["message"]
          and r["error"]["param"] == "max_tokens", "the message names the field and value: %r" % r)
    st, _, r = post("/v1/completions", {"prompt": "a", "suffix": "x"})
    check("suffix" in r["error"]["message"], "unsupported fields are named: %r" % r)
    st, _, r = post("/v1/completions", {"prompt": "a", "model": "nope"})
    check("nope" in r["error"]["message"], "404 names the model: %r" % r)
    # Unknown fields are ignored; user is accepted.
    r = complete(prompt="a", max_tokens=2, user="someone", frobnicate=3, temperature=0)
    check(r is not None, "unknown fields are ignored")


def t_hostile_http():
    """Broken HTTP on raw sockets: each gets an error status or a closed connection, and the
    daemon keeps serving."""
    cases = [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\xff\xfe" * 100 + b"\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"ffffffffffffffff\r\nab\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n",
        b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    bad_utf8 = b'{"prompt": "\xc3\x28"}'
    cases.append(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                 % len(bad_utf8) + bad_utf8)
    for i, raw in enumerate(cases):
        s = socket.create_connection(("127.0.0.1", D.port), timeout=30)
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            got = b""
        finally:
            s.close()
        status = got.split(b" ", 2)[1] if got.startswith(b"HTTP/1.") else b""
        check(got == b"" or status.startswith(b"4") or status.startswith(b"5"),
              "hostile request %d answered with an error or closed: %r" % (i, got[:80]))
        if raw.endswith(bad_utf8):
            check(status == b"400" and b"not valid JSON" in got, "invalid UTF-8 in the body → 400: %r" % got[-200:])
    st, _, r = request("GET", "/health")
    check(st == 200, "the daemon serves after hostile requests")


def t_disconnect():
    before = metrics()
    body = json.dumps({"prompt": "Tell me a long story", "max_tokens": 1000, "ignore_eos": True,
                       "stream": True, "temperature": 0}).encode()
    s = socket.create_connection(("127.0.0.1", D.port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while b"data: " not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    check(b"200 OK" in got and b"data: " in got, "stream started before the disconnect")
    s.close()
    deadline, m = time.time() + 20, {}
    while time.time() < deadline:
        m = metrics()
        if m.get("lorad_running_sequences") == 0 and m.get("lorad_waiting_sequences") == 0:
            break
        time.sleep(0.1)
    check(m.get("lorad_running_sequences") == 0 and m.get("lorad_waiting_sequences") == 0,
          "after a disconnect nothing runs: %r" % {k: v for k, v in m.items() if "sequences" in k})
    gen = m.get("lorad_generation_tokens_total", 0) - before.get("lorad_generation_tokens_total", 0)
    print("disconnect: %d of 1000 tokens generated before the cancel took effect" % gen)
    check(gen < 1000, "the abandoned stream was canceled before max_tokens (%d tokens)" % gen)
    check(m.get('lorad_requests_total{endpoint="completions",status="499"}', 0) >= 1,
          "the abandoned request is counted as 499")


def t_disconnect_plain():
    """A non-streamed request whose client leaves is canceled too (the handler polls the socket)."""
    before = metrics()
    body = json.dumps({"prompt": "Another long story", "max_tokens": 1000, "ignore_eos": True,
                       "temperature": 0, "n": 4}).encode()
    s = socket.create_connection(("127.0.0.1", D.port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.time() + 30
    while time.time() < deadline and metrics().get("lorad_running_sequences", 0) < 1:
        time.sleep(0.01)
    s.close()
    deadline, m = time.time() + 20, {}
    while time.time() < deadline:
        m = metrics()
        if m.get("lorad_running_sequences") == 0 and m.get("lorad_waiting_sequences") == 0:
            break
        time.sleep(0.05)
    gen = m.get("lorad_generation_tokens_total", 0) - before.get("lorad_generation_tokens_total", 0)
    print("plain disconnect: %d of 4000 tokens generated before the cancel took effect" % gen)
    check(m.get("lorad_running_sequences") == 0 and gen < 4000,
          "a non-streamed request is canceled when its client leaves (%d tokens)" % gen)
    key = 'lorad_requests_total{endpoint="completions",status="499"}'
    check(m.get(key, 0) > before.get(key, 0), "and counted as 499")


def t_sighup():
    D.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    st, _, r = request("GET", "/health")
    check(st == 200 and "SIGHUP" in D.stderr(), "SIGHUP is logged and the daemon keeps serving")


def t_concurrent():
    prompts = ["Prompt number %d says" % i for i in range(16)]
    one = []
    for p in prompts:
        r = complete(prompt=p, temperature=0, max_tokens=16, ignore_eos=True, return_token_ids=True)
        one.append(r["choices"][0]["token_ids"] if r else None)
    results = [None] * 16

    def worker(i):
        st, _, r = post("/v1/completions", {"prompt": prompts[i], "temperature": 0, "max_tokens": 16,
                                            "ignore_eos": True, "return_token_ids": True})
        results[i] = r["choices"][0]["token_ids"] if st == 200 else (st, r)

    t0 = time.time()
    ths = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(300)
    print("16 concurrent requests of 16 tokens: %.2fs" % (time.time() - t0))
    for i in range(16):
        check(results[i] == one[i], "concurrent request %d equals the sequential one: %r vs %r" % (i, results[i], one[i]))


def t_stalled():
    """60 stalled clients (half-sent headers, half-sent bodies, unread streams) must not block
    anyone else: every connection has its own thread and an idle timeout."""
    socks = []
    body = json.dumps({"prompt": "Stall", "max_tokens": 200, "ignore_eos": True, "stream": True}).encode()
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", D.port), timeout=30)
        if i % 3 == 0:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # headers never end
        elif i % 3 == 1:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"pro")
        else:  # a stream nobody reads
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
        socks.append(s)
    t0 = time.time()
    st, _, r = request("GET", "/health", timeout=10)
    check(st == 200, "health answers with 60 stalled clients")
    r = complete(prompt="Still served", temperature=0, max_tokens=8, ignore_eos=True)
    check(r is not None and time.time() - t0 < 30, "completions are served with 60 stalled clients (%.2fs)" % (time.time() - t0))
    for s in socks:
        s.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        m = metrics()
        if m.get("lorad_running_sequences") == 0 and m.get("lorad_waiting_sequences") == 0:
            break
        time.sleep(0.1)
    check(m.get("lorad_running_sequences") == 0, "the unread streams were freed after their clients left")


def t_metrics():
    m = metrics()
    for name in ("lorad_prompt_tokens_total", "lorad_generation_tokens_total", "lorad_running_sequences",
                 "lorad_waiting_sequences", "lorad_kv_blocks_total", "lorad_kv_blocks_used",
                 "lorad_engine_steps_total", "lorad_preemptions_total",
                 "lorad_request_duration_seconds_count", 'lorad_request_duration_seconds_bucket{le="+Inf"}'):
        check(name in m, "/metrics has %s" % name)
    check(m.get('lorad_requests_total{endpoint="completions",status="200"}', 0) > 10, "completions counted")
    check(m.get('lorad_requests_total{endpoint="completions",status="400"}', 0) > 20, "400s counted")
    check(m.get("lorad_kv_blocks_total", 0) > 0, "KV pool is not empty")


def t_sigterm():
    result = {}

    def worker():
        try:
            result["r"] = post("/v1/completions", {"prompt": "Drain me", "temperature": 0, "max_tokens": 1000,
                                                    "ignore_eos": True}, timeout=300)
        except Exception as e:  # noqa: BLE001
            result["e"] = e

    t = threading.Thread(target=worker)
    t.start()
    deadline = time.time() + 30
    while time.time() < deadline and metrics().get("lorad_running_sequences", 0) < 1:
        time.sleep(0.02)
    D.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    try:
        st, _, r = request("GET", "/health", timeout=10)
        if t.is_alive():
            check(st == 503 and "error" in r, "/health is 503 while draining: %d %r" % (st, r))
            st, _, r = post("/v1/completions", {"prompt": "late"}, timeout=10)
            check(st == 503, "new requests are refused while draining: %d" % st)
    except OSError as e:
        check(not t.is_alive(), "daemon reachable while draining: %r" % e)
    t.join(300)
    st, _, r = result.get("r", (None, None, result.get("e")))
    check(st == 200 and r["usage"]["completion_tokens"] + r["usage"]["prompt_tokens"] >= 1000,
          "the in-flight request completes during the drain: %r %r" % (st, str(r)[:200]))
    rc = D.stop(120)
    check(rc == 0, "exit code 0 after SIGTERM (got %r)" % rc)


def t_queue_full(binary, model):
    """With one running sequence and a queue of one, a burst gets 429s with an OpenAI error body
    and the accepted requests still complete."""
    global D
    main_daemon, D = D, Daemon(binary, model, ["--max-seqs", "1", "--max-queue", "1"])
    try:
        results = [None] * 8

        def worker(i):
            results[i] = post("/v1/completions", {"prompt": "Queue %d" % i, "temperature": 0,
                                                  "max_tokens": 200, "ignore_eos": True})

        ths = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(300)
        codes = sorted(r[0] for r in results if r)
        # At least the first is admitted; whether a second one finds room in the queue depends
        # on when the engine thread admits the first.
        check(codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429},
              "a burst past --max-queue gets 429s and the rest complete: %r" % codes)
        for st, _, r in results:
            if st == 429:
                check(r["error"]["type"] == "rate_limit_error" and r["error"]["message"],
                      "429 has an OpenAI error body: %r" % r)
                break
    finally:
        rc = D.stop(120)
        check(rc == 0, "second daemon exits 0 (got %r)" % rc)
        err = D.stderr()
        check("ERROR: AddressSanitizer" not in err and "runtime error:" not in err,
              "sanitizer-clean stderr of the queue daemon")
        D = main_daemon


def t_drain_timeout(binary, model):
    """SIGTERM with more work in flight than --drain-timeout allows: the daemon still exits 0
    promptly, aborting what is left, without sanitizer reports (the stop path frees everything)."""
    global D
    main_daemon, D = D, Daemon(binary, model, ["--drain-timeout", "1"])
    try:
        results = {}

        def worker(name, body):
            try:
                if body.get("stream"):
                    results[name] = stream(body)
                else:
                    results[name] = post("/v1/completions", body, timeout=120)
            except Exception as e:  # noqa: BLE001 - a cut connection is an expected outcome
                results[name] = e

        big = {"prompt": "Long", "max_tokens": 1000, "ignore_eos": True, "n": 16}
        ths = [threading.Thread(target=worker, args=("plain", dict(big))),
               threading.Thread(target=worker, args=("stream", dict(big, stream=True)))]
        for t in ths:
            t.start()
        deadline = time.time() + 30
        while time.time() < deadline and metrics().get("lorad_running_sequences", 0) < 17:  # both requests admitted
            time.sleep(0.02)
        t0 = time.time()
        D.proc.send_signal(signal.SIGTERM)
        try:
            rc = D.proc.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.time() - t0
        D.reader.join(5)
        print("drain timeout: stopped in %.1fs; %s" % (took, [ln[25:] for ln in D.stderr().splitlines() if "drain" in ln]))
        check(rc == 0 and took < 15 and "drain timeout" in D.stderr(), "drain timeout: exit 0 within 15s (rc %r, %.1fs)" % (rc, took))
        for t in ths:
            t.join(60)
        plain = results.get("plain")
        check(not isinstance(plain, tuple) or plain[0] in (200, 503),
              "an aborted non-streamed request gets 503 or a closed connection: %r" % (plain,))
        err = D.stderr()
        check("ERROR: AddressSanitizer" not in err and "runtime error:" not in err,
              "sanitizer-clean stderr after a drain timeout")
    finally:
        if D.proc.poll() is None:
            D.stop(30)
        D = main_daemon


def t_adapters(binary, model):
    """The adapter layer through the daemon: ids from an --adapter-dir root, the weighted mix
    extension, adapter routes, /v1/models parents, SIGHUP rescans; greedy outputs against the
    float64 reference with the same adapters."""
    global D
    root = tempfile.mkdtemp(prefix="lorad-e2e-adapters-")
    gen = os.path.join(ROOT, "tests/gen/gen_adapter.py")
    for variant, out in (("qv", "org/qv"), ("all7", "all7")):
        subprocess.run([PY, gen, "--base", model, "--variant", variant, "--out",
                        os.path.join(root, out)], check=True, capture_output=True)
    main_daemon, D = D, Daemon(binary, model, ["--adapter-dir", root])
    try:
        st, _, r = request("GET", "/v1/models")
        ids = {m["id"]: m for m in r.get("data", [])}
        check(st == 200 and ids.get("org/qv", {}).get("parent") == "default" and "all7" in ids,
              "/v1/models lists the adapters with parent: %r" % r)
        st, _, r = request("GET", "/v1/adapters")
        check(st == 200 and {a["id"] for a in r.get("data", [])} >= {"org/qv", "all7"},
              "/v1/adapters lists the root's adapters: %r" % r)
        prompt = tokenize("Adapters change the output")
        outs = {}
        for mid, ref_ads in (("default", []), ("org/qv", [os.path.join(root, "org/qv")]),
                             ("all7", [os.path.join(root, "all7")])):
            c = complete(prompt=prompt, model=mid, temperature=0, max_tokens=8, ignore_eos=True,
                         return_token_ids=True)
            if not c:
                continue
            outs[mid] = c["choices"][0]["token_ids"]
            check(c["model"] == mid, "the response names the model %s" % mid)
            ref = ref_greedy(model, prompt, 8, adapters=ref_ads)
            check(ref["min_gap"] < 1e-3 or outs[mid] == ref["tokens"],
                  "%s greedy equals the float64 reference: %r vs %r" % (mid, outs[mid], ref["tokens"]))
        check(len(set(map(tuple, outs.values()))) == 3, "each adapter changes the output: %r" % outs)
        st, _, g = post("/generate", {"inputs": "Adapters change the output", "parameters": {"adapter_id": "org/qv",
                                                                       "max_new_tokens": 8, "details": True}})
        check(st == 200 and [t["id"] for t in g["details"]["tokens"]] == outs.get("org/qv", [])[:len(g["details"]["tokens"])],
              "TGI adapter_id selects the adapter: %r" % (g,))
        mix = complete(prompt=prompt, adapters=[{"id": "org/qv", "scale": 0.5}], temperature=0,
                       max_tokens=8, ignore_eos=True, return_token_ids=True)
        if mix:
            ref = ref_greedy(model, prompt, 8, adapters=[os.path.join(root, "org/qv") + ":0.5"])
            check(ref["min_gap"] < 1e-3 or mix["choices"][0]["token_ids"] == ref["tokens"],
                  "the scaled mix equals the reference at scale 0.5")
        # Base and adapters in one batch give the one-at-a-time outputs.
        res = {}

        def worker(i, mid):
            st, _, r = post("/v1/completions", {"prompt": prompt, "model": mid, "temperature": 0,
                                                "max_tokens": 8, "ignore_eos": True,
                                                "return_token_ids": True})
            res[i] = (mid, r["choices"][0]["token_ids"] if st == 200 else (st, r))

        ths = [threading.Thread(target=worker, args=(i, ("default", "org/qv", "all7")[i % 3]))
               for i in range(12)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(300)
        check(all(res.get(i) and res[i][1] == outs.get(res[i][0]) for i in range(12)),
              "mixed-adapter concurrent requests equal the sequential ones: %r" % res)
        for name, body, want in (
                ("unknown adapter", {"prompt": "a", "model": "org/none"}, 404),
                ("mix with a bad scale", {"prompt": "a", "adapters": [{"id": "all7", "scale": "x"}]}, 400),
                ("mix and model", {"prompt": "a", "model": "all7", "adapters": [{"id": "all7"}]}, 400),
                ("mix not an array", {"prompt": "a", "adapters": 3}, 400)):
            st, _, r = post("/v1/completions", body)
            check(st == want and "error" in r, "%s: want %d, got %d %r" % (name, want, st, r))
        st, hdr, r = request("GET", "/v1/load_lora_adapter")
        check(st == 405 and "Allow" in hdr, "wrong method on an adapter route: %d" % st)
        # Runtime registration inside the root, and a SIGHUP rescan picking up a new folder.
        subprocess.run([PY, gen, "--base", model, "--variant", "rslora", "--out",
                        os.path.join(root, "late")], check=True, capture_output=True)
        st, _, r = post("/v1/load_lora_adapter", {"lora_name": "mine", "lora_path": os.path.join(root, "late")})
        check(st == 200, "load_lora_adapter registers a folder inside the root: %d %r" % (st, r))
        c = complete(prompt=prompt, model="mine", temperature=0, max_tokens=4, ignore_eos=True)
        check(c is not None, "the registered adapter serves")
        st, _, r = post("/v1/unload_lora_adapter", {"lora_name": "mine"})
        check(st == 200, "unload_lora_adapter: %d %r" % (st, r))
        st, _, r = post("/v1/completions", {"prompt": "a", "model": "mine"})
        check(st == 404, "an unloaded adapter is gone: %d" % st)
        D.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        st, _, r = request("GET", "/v1/models")
        check("late" in {m["id"] for m in r.get("data", [])}, "SIGHUP rescans the roots: %r" % r)
        m = metrics()
        check(m.get('lorad_requests_total{endpoint="adapters",status="200"}', 0) >= 3,
              "adapter routes are counted")
    finally:
        rc = D.stop(120)
        check(rc == 0, "the adapter daemon exits 0 (got %r)" % rc)
        err = D.stderr()
        check("ERROR: AddressSanitizer" not in err and "runtime error:" not in err,
              "sanitizer-clean stderr of the adapter daemon")
        D = main_daemon
        shutil.rmtree(root, ignore_errors=True)


def t_auth(binary, model):
    """--api-keys: 401 without a valid key, 403 for what a tenant may not use, 429 past its
    max_concurrent; /health and /metrics stay public."""
    global D
    root = tempfile.mkdtemp(prefix="lorad-e2e-auth-")
    gen = os.path.join(ROOT, "tests/gen/gen_adapter.py")
    for out in ("org/a", "other/b"):
        subprocess.run([PY, gen, "--base", model, "--variant", "qv", "--out", os.path.join(root, "ads", out)],
                       check=True, capture_output=True)
    keys = os.path.join(root, "keys.json")
    with open(keys, "w") as f:
        json.dump({"tenants": [
            {"name": "alice", "keys": ["ka"], "adapters": ["org/*"], "base": True, "admin": True},
            {"name": "bob", "keys": ["kb1", "kb2"], "adapters": [], "base": False, "max_concurrent": 1},
        ]}, f)
    main_daemon, D = D, Daemon(binary, model, ["--api-keys", keys, "--adapter-dir", os.path.join(root, "ads")])
    try:
        def call(path, body, key, method="POST"):
            h = {"Authorization": "Bearer " + key} if key else {}
            return request(method, path, body, headers=h)
        st, _, r = request("GET", "/health")
        check(st == 200, "/health is public with keys configured")
        st, _, r = request("GET", "/metrics")
        check(st == 200, "/metrics is public with keys configured")
        body = {"prompt": "hi", "max_tokens": 2}
        for key, want, what in ((None, 401, "no key"), ("nope", 401, "unknown key"), ("ka", 200, "alice on the base"),
                                ("kb1", 403, "bob on the base (base: false)")):
            st, _, r = call("/v1/completions", body, key)
            check(st == want and (want == 200 or r["error"]["message"]), "%s → %d (got %d %r)" % (what, want, st, r))
        st, _, r = request("POST", "/v1/completions", body, headers={"Authorization": "Basic ka"})
        check(st == 401, "another scheme is not a key: %d" % st)
        st, _, r = call("/v1/completions", dict(body, model="org/a"), "ka")
        check(st == 200, "alice may use org/a: %d %r" % (st, r))
        st, _, r = call("/v1/completions", dict(body, model="other/b"), "ka")
        check(st == 403 and "other/b" in r["error"]["message"], "alice may not use other/b: %d %r" % (st, r))
        st, _, r = call("/v1/completions", dict(body, adapters=[{"id": "org/a"}, {"id": "other/b"}]), "ka")
        check(st == 403, "a mix with a forbidden member is refused: %d" % st)
        st, _, r = call("/v1/unload_lora_adapter", {"lora_name": "org/a"}, "kb2")
        check(st == 403 and "admin" in r["error"]["message"], "bob may not unload adapters: %d %r" % (st, r))
        st, _, r = call("/tokenize", {"content": "x"}, None)
        check(st == 401, "tokenize needs a key too: %d" % st)
        st, _, r = call("/v1/nothing", {}, None)
        check(st == 401, "unknown routes do not answer without a key: %d" % st)
    finally:
        rc = D.stop(120)
        check(rc == 0, "the auth daemon exits 0 (got %r)" % rc)
        err = D.stderr()
        check("kb1" not in err and "kb2" not in err, "keys are not logged")
        check("ERROR: AddressSanitizer" not in err and "runtime error:" not in err,
              "sanitizer-clean stderr of the auth daemon")
        D = main_daemon
    # max_concurrent: a tenant with one slot, two slow requests at once → one 429.
    with open(keys, "w") as f:
        json.dump({"tenants": [{"name": "carol", "keys": ["kc"], "max_concurrent": 1}]}, f)
    main_daemon, D = D, Daemon(binary, model, ["--api-keys", keys])
    try:
        res = {}

        def worker(i):
            res[i] = request("POST", "/v1/completions", {"prompt": "slow %d" % i, "max_tokens": 400, "ignore_eos": True},
                             headers={"Authorization": "Bearer kc"})[0]

        ths = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(300)
        codes = sorted(res.values())
        check(codes.count(200) >= 1 and codes.count(429) >= 1, "max_concurrent 1: extra requests get 429: %r" % codes)
        st, _, r = request("POST", "/v1/completions", {"prompt": "after", "max_tokens": 2},
                           headers={"Authorization": "Bearer kc"})
        check(st == 200, "the slot is released after the requests end: %d" % st)
    finally:
        rc = D.stop(120)
        check(rc == 0, "the second auth daemon exits 0 (got %r)" % rc)
        D = main_daemon
        shutil.rmtree(root, ignore_errors=True)


def main():
    global D
    binary, model = find_binary(), find_model()
    print("binary %s, model %s" % (binary, model), flush=True)
    t_cli(binary, model)
    D = Daemon(binary, model)

    def run(fn, *args):
        """Run one test function; an exception is a failure, and the next test still runs."""
        before, t0 = CHECKS[0], time.time()
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            check(False, "%s raised %r" % (fn.__name__, e))
            return None
        finally:
            print("  %-20s %3d checks %5.1fs" % (fn.__name__, CHECKS[0] - before, time.time() - t0),
                  flush=True)

    try:
        run(t_health_models)
        run(t_tokenize)
        g = run(t_greedy, model)
        if g:
            prompt, ids, greedy = g
            run(t_logprobs, model, prompt, ids, greedy)
            run(t_echo, prompt, greedy)
            run(t_n_and_seed, prompt)
            run(t_stop, prompt, greedy)
            run(t_stream, prompt, greedy)
            run(t_tgi, prompt, greedy)
        run(t_chat, model)
        run(t_eos)
        run(t_malformed)
        run(t_hostile_http)
        run(t_disconnect)
        run(t_disconnect_plain)
        run(t_sighup)
        run(t_concurrent)
        run(t_stalled)
        run(t_metrics)
        run(t_queue_full, binary, model)
        run(t_adapters, binary, model)
        run(t_auth, binary, model)
        run(t_drain_timeout, binary, model)
        run(t_sigterm)
    finally:
        if D.proc.poll() is None:
            D.stop(60)
    err = D.stderr()
    check("ERROR: AddressSanitizer" not in err and "runtime error:" not in err
          and "ERROR: LeakSanitizer" not in err, "sanitizer-clean daemon stderr")
    if FAILS:
        print("---- daemon stderr (last 40 lines) ----")
        print("".join(err.splitlines(True)[-int(os.environ.get("LORAD_E2E_LOG_LINES", "40")):]))
    print("%d checks, %d failed" % (CHECKS[0], len(FAILS)))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
