#!/usr/bin/python3
"""The whole API (issue 5), acceptance items as checks with figures, against a live lorad started
on the generated default model with an adapter root holding one adapter ("t1"):

  A3  stop strings spanning token boundaries (2 and 3 tokens, every boundary of a greedy text,
      base and adapter, completions and chat, streamed and not): the string is excluded, the
      finish_reason is "stop" and generation stopped at the token that completed it;
  A4  /generate with details (and /generate_stream) against /v1/completions for the same prompts
      and adapter: ids equal, logprobs within 1e-4, ids equal the float64 reference (tests/ref);
  completions: n > 1 with seeds, echo + logprobs of the prompt (first entry null, text_offset =
      byte... code-point offsets of the tokens), legacy logprobs object;
  chat: logprobs.content shape, max_completion_tokens, n, seed, stop, penalties,
      response_format text accepted / others refused naming it, tool_choice forcing, logit_bias,
      functions refused, unknown harmless fields ignored, include_usage, first delta has the role;
      /apply-template; a template that raises or calls an unknown method → 400 with its message;
      chat_template.jinja beside the tokenizer wins over tokenizer_config.json (transformers);
  A2  the official openai npm SDK (tests/e2e/openai_sdk.mjs): models.list, completions and chat,
      streamed and not, with the adapter; streamed == non-streamed at temperature 0, usage equals
      the tokenizer's count, same seed → same text, unknown model → 404 NotFoundError.
  A1  every golden of tests/data/jinja/golden.json (@huggingface/jinja on the real templates of
      shared/data/chat_templates) through /apply-template on a daemon whose tokenizer_config.json
      carries that template: byte-identical, or the same raise_exception refusal.

Uses the helpers of test_server.py. Exit 0 when every check passed."""

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import test_server as ts  # noqa: E402
import gen_adapter  # noqa: E402

check, post = ts.check, ts.post
AD = "t1"
PROMPTS = ["The quick brown fox", "Once upon a time", "Hello, world. 12 + 30 ="]
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about foxes"}]
FIG = {}


def sse(path, body):
    c = http.client.HTTPConnection("127.0.0.1", ts.D.port, timeout=120)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read().decode("utf-8")
    c.close()
    evs = [e[6:] for e in raw.split("\n\n") if e.strip()]
    check(r.status == 200, "%s stream status %d: %r" % (path, r.status, raw[:300]))
    done = bool(evs) and evs[-1] == "[DONE]"
    return [json.loads(e) for e in evs if e != "[DONE]"], done


def cmpl(**b):
    st, _, r = post("/v1/completions", b)
    check(st == 200, "completion %r → %d %r" % (b, st, r))
    return r if st == 200 else None


def chat(**b):
    b.setdefault("messages", MSGS)
    st, _, r = post("/v1/chat/completions", b)
    check(st == 200, "chat %r → %d %r" % ({k: v for k, v in b.items() if k != "messages"}, st, r))
    return r if st == 200 else None


# ------------------------------------------------------------------ acceptance 3: stop strings
def t_stop():
    tested = streamed = 0
    for model in (None, AD):
        for prompt in PROMPTS[:2]:
            extra = {"model": model} if model else {}
            r = cmpl(prompt=prompt, temperature=0, max_tokens=16, ignore_eos=True, logprobs=0,
                     return_token_ids=True, **extra)
            if not r:
                continue
            # decoded text after each generated token (/detokenize of the prefix)
            ids = r["choices"][0]["token_ids"]
            prefix = [ts.post("/detokenize", {"tokens": ids[:i + 1]})[2]["content"] for i in range(len(ids))]
            text = r["choices"][0]["text"]
            toks = r["choices"][0]["logprobs"]["tokens"]
            offs = r["choices"][0]["logprobs"]["text_offset"]
            base = offs[0]
            offs = [o - base for o in offs]
            for k in range(1, len(toks) - 1):
                for span in (2, 3):
                    # last char of token k-1 + first char(s) of token k (span 3: through token k+1)
                    if offs[k] == 0 or offs[k] >= len(text) or not toks[k]:
                        continue
                    end = offs[k] + 1 if span == 2 else (offs[k + 1] + 1 if k + 1 < len(offs) else None)
                    if end is None or end > len(text) or (span == 3 and offs[k + 1] <= offs[k]):
                        continue
                    stop = text[offs[k] - 1:end]
                    first = text.find(stop)
                    want = text[:first]
                    # the token that completes the first occurrence
                    need = next(i for i in range(len(prefix)) if stop in prefix[i])
                    s = cmpl(prompt=prompt, temperature=0, max_tokens=16, ignore_eos=True, stop=stop,
                             **extra)
                    if not s:
                        continue
                    c = s["choices"][0]
                    tested += 1
                    # A stop that ends in an undecided byte fragment (U+FFFD in the toy model's
                    # text) is only decided by the next token: one more token is then right.
                    slack = 1 if "\ufffd" in stop else 0
                    check(c["text"] == want and c["finish_reason"] == "stop"
                          and need + 1 <= s["usage"]["completion_tokens"] <= need + 1 + slack,
                          "stop %r (%s, %r): want %r stop after %d tokens, got %r %s %d"
                          % (stop, model, prompt, want, need + 1, c["text"], c["finish_reason"],
                             s["usage"]["completion_tokens"]))
                    if k % 3 == 1:
                        chunks, done = sse("/v1/completions", dict(
                            prompt=prompt, temperature=0, max_tokens=16, ignore_eos=True, stop=[stop],
                            stream=True, **extra))
                        got = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
                        streamed += 1
                        check(done and got == want and chunks[-1]["choices"][0]["finish_reason"] == "stop",
                              "streamed stop %r: %r vs %r" % (stop, got, want))
    # chat, with the adapter
    r = chat(model=AD, temperature=0, max_tokens=16)
    if r:
        text = r["choices"][0]["message"]["content"]
        if check(len(text) >= 6, "chat text long enough for a stop: %r" % text):
            stop = text[3:6]
            want = text[:text.find(stop)]
            s = chat(model=AD, temperature=0, max_tokens=16, stop=[stop])
            chunks, done = sse("/v1/chat/completions", dict(messages=MSGS, model=AD, temperature=0,
                                                            max_tokens=16, stop=stop, stream=True))
            got = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
            tested += 1
            streamed += 1
            check(s and s["choices"][0]["message"]["content"] == want
                  and s["choices"][0]["finish_reason"] == "stop" and got == want,
                  "chat stop %r: %r / streamed %r vs %r" % (stop, s and s["choices"][0]["message"], got, want))
    FIG["A3"] = "%d stop strings spanning 2-3 tokens (base+adapter, completions+chat), %d also streamed" % (tested, streamed)


# ------------------------------------------------------------------ acceptance 4: /generate
def t_generate(model_dir, adapter_dir):
    worst, cases = 0.0, 0
    for model in (None, AD):
        for prompt in PROMPTS:
            extra = {"model": model} if model else {}
            ref = cmpl(prompt=prompt, temperature=0, max_tokens=10, logprobs=0, return_token_ids=True, **extra)
            par = {"max_new_tokens": 10, "details": True}
            if model:
                par["adapter_id"] = model
            st, _, g = post("/generate", {"inputs": prompt, "parameters": par})
            if not check(st == 200 and ref, "/generate %r %s: %d %r" % (prompt, model, st, g)):
                continue
            c, d = ref["choices"][0], g["details"]
            ids = [t["id"] for t in d["tokens"]]
            lps = [t["logprob"] for t in d["tokens"]]
            cases += 1
            check(ids == c["token_ids"], "/generate ids == completions ids (%s): %r vs %r" % (model, ids, c["token_ids"]))
            diff = max(abs(a - b) for a, b in zip(lps, c["logprobs"]["token_logprobs"]))
            worst = max(worst, diff)
            check(diff < 1e-4, "/generate logprobs == completions (max diff %.2g)" % diff)
            fin = {"length": "length", "stop": "eos_token"}[c["finish_reason"]]
            check(d["finish_reason"] == fin and d["generated_tokens"] == len(ids),
                  "finish_reason %r vs completions %r" % (d["finish_reason"], c["finish_reason"]))
            check(all(set(t) >= {"id", "text", "logprob", "special"} for t in d["tokens"]),
                  "details.tokens have id/text/logprob/special")
            frag = any("\ufffd" in t["text"] for t in d["tokens"])
            check(g["generated_text"] == "".join(t["text"] for t in d["tokens"] if not t["special"])
                  or d["finish_reason"] == "eos_token" or frag, "generated_text is the tokens' texts")
            # independent: the float64 reference
            pids = c["prompt_token_ids"] if "prompt_token_ids" in c else ts.tokenize(prompt)
            rf = ts.ref_greedy(model_dir, pids, len(ids), adapters=[adapter_dir] if model else [])
            check(rf["min_gap"] < 1e-3 or rf["tokens"] == ids,
                  "/generate ids == float64 reference (%s %r): %r vs %r" % (model, prompt, ids, rf["tokens"]))
            rd = max(abs(a - b) for a, b in zip(lps, rf["logprobs"]))
            check(rd < 2e-3, "/generate logprobs vs float64 reference: max diff %.2g" % rd)
            FIG["ref_lp"] = max(FIG.get("ref_lp", 0), rd)
            evs, _ = sse("/generate_stream", {"inputs": prompt, "parameters": par})
            check([e["token"]["id"] for e in evs] == ids, "/generate_stream ids == /generate ids")
    # stop_sequence, return_full_text, do_sample semantics, seed
    st, _, g = post("/generate", {"inputs": PROMPTS[0], "parameters": {"adapter_id": AD, "max_new_tokens": 10}})
    if st == 200 and len(g["generated_text"]) > 5:
        stop = g["generated_text"][3:5]
        st, _, s = post("/generate", {"inputs": PROMPTS[0], "parameters": {
            "adapter_id": AD, "max_new_tokens": 10, "stop": [stop], "details": True}})
        check(st == 200 and s["details"]["finish_reason"] == "stop_sequence"
              and s["generated_text"] == g["generated_text"][:g["generated_text"].find(stop)],
              "TGI stop_sequence: %r" % s)
    st, _, f = post("/generate", {"inputs": PROMPTS[0], "parameters": {"adapter_id": AD, "max_new_tokens": 10,
                                                                       "return_full_text": True}})
    check(st == 200 and f["generated_text"] == PROMPTS[0] + g["generated_text"], "return_full_text")
    # do_sample false with no sampling parameter is greedy (equal to temperature 0)
    st, _, gs = post("/generate", {"inputs": PROMPTS[0], "parameters": {"adapter_id": AD, "max_new_tokens": 10,
                                                                        "do_sample": False, "seed": 3}})
    check(st == 200 and gs["generated_text"] == g["generated_text"], "do_sample false is greedy")
    outs = set()
    for seed in (1, 2, 3, 1):
        st, _, s = post("/generate", {"inputs": PROMPTS[0], "parameters": {
            "adapter_id": AD, "max_new_tokens": 10, "do_sample": True, "temperature": 1.5, "seed": seed,
            "details": True}})
        if st == 200:
            check(s["details"]["seed"] == seed, "details.seed reported")
            outs.add((seed, s["generated_text"]))
    check(len(outs) == 3 and len({t for _, t in outs}) >= 2,
          "do_sample: seed 1 twice is identical, different seeds differ: %r" % outs)
    st, _, e = post("/generate", {"inputs": "x", "parameters": {"adapter_id": "nope-missing"}})
    check(st == 404, "/generate unknown adapter_id → 404: %d %r" % (st, e))
    FIG["A4"] = "%d prompt×adapter cases: ids equal, max |Δlogprob| vs completions %.2g" % (cases, worst)


# ------------------------------------------------------------------ completions surface
def t_completions():
    p = PROMPTS[0]
    r = cmpl(prompt=p, model=AD, temperature=0, max_tokens=6, ignore_eos=True, echo=True, logprobs=3)
    g = cmpl(prompt=p, model=AD, temperature=0, max_tokens=6, ignore_eos=True, logprobs=3, return_token_ids=True)
    if r and g:
        c, lp = r["choices"][0], r["choices"][0]["logprobs"]
        ids = g["choices"][0]["prompt_token_ids"]
        check(c["text"] == p + g["choices"][0]["text"], "echo text = prompt + completion")
        check(len(lp["tokens"]) == len(ids) + 6 and lp["token_logprobs"][0] is None
              and lp["top_logprobs"][0] is None, "echo logprobs: prompt tokens first, the first null")
        ed = max(abs(a - b) for a, b in zip(lp["token_logprobs"][len(ids):], g["choices"][0]["logprobs"]["token_logprobs"]))
        check(ed < 1e-4, "echoed generated logprobs equal the plain ones (max diff %.2g)" % ed)
        # text_offset: each token's text sits at its offset (special tokens and byte fragments,
        # which have no text of their own, and the token after a fragment are skipped)
        txt, to, tk = c["text"], lp["text_offset"], lp["tokens"]
        bad = [i for i in range(1, len(tk)) if "\ufffd" not in tk[i] and "\ufffd" not in tk[i - 1]
               and not tk[i].startswith("<|") and txt[to[i]:to[i] + len(tk[i])] != tk[i]]
        check(not bad and len(tk) > 10, "text_offset: token i's text is at text[text_offset[i]:]: bad %r" % bad)
        check(all(1 <= len(t) <= 4 and tk[i] in t for i, t in enumerate(lp["top_logprobs"]) if i > 0),
              "top_logprobs: up to 3 alternatives plus the chosen token at every position")
        # prompt logprob i equals the logprob of token i given the prefix (a separate completion)
        worst = 0.0
        for i in range(1, len(ids)):
            q = cmpl(prompt=ids[:i], model=AD, temperature=0, max_tokens=1, logprobs=20)
            if q:
                alts = q["choices"][0]["logprobs"]["top_logprobs"][0]
                tok = lp["tokens"][i]
                if tok in alts:
                    worst = max(worst, abs(alts[tok] - lp["token_logprobs"][i]))
        check(worst < 1e-4, "echo prompt logprobs equal prefix completions (max diff %.2g)" % worst)
        FIG["echo"] = worst
    a = cmpl(prompt=p, model=AD, n=3, temperature=1.2, seed=11, max_tokens=8, ignore_eos=True)
    b = cmpl(prompt=p, model=AD, n=3, temperature=1.2, seed=11, max_tokens=8, ignore_eos=True)
    if a and b:
        ta, tb = [c["text"] for c in a["choices"]], [c["text"] for c in b["choices"]]
        check(ta == tb and len(set(ta)) >= 2 and a["usage"]["completion_tokens"] == 24,
              "n=3 seeded: reproducible, choices differ, usage 24: %r" % ta)
    chunks, done = sse("/v1/completions", dict(prompt=p, model=AD, n=3, temperature=1.2, seed=11, max_tokens=8,
                                               ignore_eos=True, stream=True))
    if a:
        st = ["".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"] and ch["choices"][0]["index"] == i)
              for i in range(3)]
        check(done and st == [c["text"] for c in a["choices"]], "streamed n=3 seeded == non-streamed")
    for name, body, param in (
            ("logit_bias", {"logit_bias": {"5": 10}}, "logit_bias"),
            ("response_format json", {"response_format": {"type": "json_object"}}, "response_format"),
            ("suffix", {"suffix": "x"}, "suffix"),
            ("logprobs 21", {"logprobs": 21}, "logprobs"),
            ("n 0", {"n": 0}, "n")):
        st, _, e = post("/v1/completions", dict(prompt=p, max_tokens=2, **body))
        check(st == 400 and e.get("error", {}).get("param") == param and param in e["error"]["message"],
              "completions %s → 400 naming %s: %d %r" % (name, param, st, e))


# ------------------------------------------------------------------ chat surface
def t_chat():
    base = chat(model=AD, temperature=0, max_completion_tokens=10, logprobs=True, top_logprobs=3)
    if not base:
        return
    c = base["choices"][0]
    lc = c["logprobs"]["content"]
    check(len(lc) == base["usage"]["completion_tokens"] <= 10
          and all(set(t) == {"token", "logprob", "bytes", "top_logprobs"} for t in lc)
          and all(len(t["top_logprobs"]) == 3 and set(t["top_logprobs"][0]) == {"token", "logprob", "bytes"}
                  for t in lc)
          and all(t["top_logprobs"][0]["logprob"] >= t["logprob"] - 1e-6 for t in lc),
          "chat logprobs.content shape: %r" % (lc[:1],))
    st, _, ap = post("/apply-template", {"messages": MSGS})
    ids = ts.tokenize(ap["prompt"], add_special=False)
    check(base["usage"]["prompt_tokens"] == len(ids), "chat prompt = /apply-template tokenized without specials")
    same = {"response_format": {"type": "text"}, "store": False, "metadata": {"a": "b"}, "user": "u1",
            "service_tier": "auto", "parallel_tool_calls": False, "tool_choice": "none", "frobnicate": 3}
    r = chat(model=AD, temperature=0, max_completion_tokens=10, **same)
    check(r and r["choices"][0]["message"]["content"] == c["message"]["content"],
          "response_format text and harmless unknown fields change nothing")
    r = chat(model=AD, temperature=0, max_tokens=4)
    check(r and r["usage"]["completion_tokens"] <= 4 and c["message"]["content"].startswith(r["choices"][0]["message"]["content"]),
          "max_tokens 4 is a prefix")
    a = chat(model=AD, n=2, temperature=1.3, seed=5, max_completion_tokens=8)
    b = chat(model=AD, n=2, temperature=1.3, seed=5, max_completion_tokens=8)
    check(a and b and [x["message"]["content"] for x in a["choices"]] == [x["message"]["content"] for x in b["choices"]]
          and [x["index"] for x in a["choices"]] == [0, 1], "chat n=2 with a seed is reproducible")
    chunks, done = sse("/v1/chat/completions", dict(messages=MSGS, model=AD, n=2, temperature=1.3, seed=5,
                                                    max_completion_tokens=8, stream=True))
    if a:
        st = ["".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks
                      if ch["choices"] and ch["choices"][0]["index"] == i) for i in range(2)]
        roles = [sum(1 for ch in chunks if ch["choices"] and ch["choices"][0]["index"] == i
                     and "role" in ch["choices"][0]["delta"]) for i in range(2)]
        check(done and st == [x["message"]["content"] for x in a["choices"]] and roles == [1, 1],
              "streamed chat n=2 seeded == non-streamed, one role delta per choice: %r %r" % (st, roles))
    # penalties: a strong frequency penalty must change a greedy answer that repeats a token
    lg = chat(model=AD, temperature=0, max_tokens=24, logprobs=True)
    pen = chat(model=AD, temperature=0, max_tokens=24, frequency_penalty=2.0, presence_penalty=2.0, logprobs=True)
    if lg and pen:
        toks = [t["token"] for t in lg["choices"][0]["logprobs"]["content"]]
        ptoks = [t["token"] for t in pen["choices"][0]["logprobs"]["content"]]
        if len(set(toks)) < len(toks):
            check(ptoks != toks, "penalties change a repeating greedy answer")
        check(len(set(ptoks)) >= len(set(toks[:len(ptoks)])) - 1, "penalties do not increase repetition")
    # streaming: role first, finish_reason last, include_usage
    chunks, done = sse("/v1/chat/completions", dict(messages=MSGS, model=AD, temperature=0, max_completion_tokens=10,
                                                    stream=True, stream_options={"include_usage": True}))
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    fins = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    check(done and chunks[0]["choices"][0]["delta"].get("role") == "assistant"
          and all("role" not in ch["choices"][0]["delta"] for ch in chunks[1:] if ch["choices"]),
          "role only in the first delta")
    check(text == c["message"]["content"] and fins[-1] == c["finish_reason"] and all(f is None for f in fins[:-1]),
          "streamed chat == non-streamed, finish_reason last: %r vs %r" % (text, c["message"]["content"]))
    check(chunks[-1]["choices"] == [] and chunks[-1]["usage"] == base["usage"], "chat include_usage: %r" % chunks[-1])
    for name, body, param in (
            ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
            ("json_object", {"response_format": {"type": "json_object"}}, "response_format"),
            ("tool_choice required", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                                      "tool_choice": "required"}, "tool_choice"),
            ("tool_choice named", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                                   "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
            ("functions", {"functions": [{"name": "f", "parameters": {}}]}, "functions"),
            ("function_call", {"function_call": {"name": "f"}}, "function_call"),
            ("logit_bias", {"logit_bias": {"3": 5}}, "logit_bias"),
            ("audio", {"audio": {"voice": "x"}, "modalities": ["text", "audio"]}, "audio"),
            ("modalities audio", {"modalities": ["audio"]}, "modalities"),
            ("unknown model", {"model": "nope/none"}, None)):
        st, _, e = post("/v1/chat/completions", dict(messages=MSGS, max_tokens=2, **body))
        if param is None:
            check(st == 404 and "nope/none" in e["error"]["message"], "chat unknown model → 404: %d %r" % (st, e))
        else:
            check(st == 400 and e.get("error", {}).get("param") == param and param in e["error"]["message"],
                  "chat %s → 400 naming %s: %d %r" % (name, param, st, e))
    st, _, ok = post("/v1/chat/completions", dict(messages=MSGS, max_tokens=2, tool_choice="auto",
                                                  tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]))
    check(st == 200, "tools with tool_choice auto are accepted: %d %r" % (st, ok))


def t_template_files(binary, model, tmp):
    """chat_template.jinja wins over tokenizer_config.json's list; a template that raises or
    calls an unknown method gives 400 naming it."""
    d = os.path.join(tmp, "tmplmodel")
    os.makedirs(d)
    for f in os.listdir(model):
        if f != "tokenizer_config.json":
            os.symlink(os.path.join(model, f), os.path.join(d, f))
    cfg = json.load(open(os.path.join(model, "tokenizer_config.json")))
    cfg["chat_template"] = [{"name": "default", "template": "DEFAULT{{ messages[0].content }}"},
                            {"name": "tool_use", "template": "TOOLS"}]
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    tmpl = ("{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('role bad is not allowed') }}"
            "{% elif m.role == 'weird' %}{{ m.content.no_such_method() }}{% endif %}"
            "<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    open(os.path.join(d, "chat_template.jinja"), "w").write(tmpl)
    old = ts.D
    ts.D = ts.Daemon(binary, d)
    try:
        st, _, r = post("/apply-template", {"messages": [{"role": "user", "content": " hi "}]})
        check(st == 200 and r.get("prompt") == "<user>hi\n<assistant>", "chat_template.jinja wins: %d %r" % (st, r))
        st, _, r = post("/apply-template", {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": False})
        check(st == 200 and r.get("prompt") == "<user>hi\n", "add_generation_prompt false: %r" % r)
        st, _, e = post("/v1/chat/completions", {"messages": [{"role": "bad", "content": "x"}], "max_tokens": 2})
        check(st == 400 and "role bad is not allowed" in e["error"]["message"], "raise_exception → 400 with its text: %d %r" % (st, e))
        st, _, e = post("/apply-template", {"messages": [{"role": "weird", "content": "x"}]})
        check(400 <= st < 500 and "no_such_method" in e["error"]["message"], "unknown method → 4xx naming it: %d %r" % (st, e))
        st, _, e = post("/health", None) if False else ts.request("GET", "/health")
        check(st == 200, "daemon healthy after template errors")
        os.unlink(os.path.join(d, "chat_template.jinja"))
    finally:
        check(ts.D.stop() == 0, "template daemon exits 0")
        ts.D = old
    ts.D = ts.Daemon(binary, d)
    try:
        st, _, r = post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
        check(st == 200 and r.get("prompt") == "DEFAULThi", "list chat_template uses 'default': %r" % r)
    finally:
        ts.D.stop()
        ts.D = old
    # A template lorad cannot compile (an {% extends %}): the daemon serves completions, and a
    # chat request gets a 400 naming the construct (as a render failure does), not "no chat template".
    cfg["chat_template"] = "{% extends 'base.html' %}{{ messages }}"
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    ts.D = ts.Daemon(binary, d)
    try:
        st, _, e = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        check(st == 400 and "extends" in e["error"]["message"], "uncompilable template → 400 naming extends: %d %r" % (st, e))
        st, _, e = post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
        check(st == 400 and "extends" in e["error"]["message"], "/apply-template too: %d %r" % (st, e))
        st, _, r = post("/v1/completions", {"prompt": "hi", "max_tokens": 2})
        check(st == 200, "completions still served: %d" % st)
        # A list without "default" (transformers refuses it): the message says so.
        cfg["chat_template"] = [{"name": "tool_use", "template": "T"}]
    finally:
        check(ts.D.stop() == 0, "daemon with a bad template exits 0")
        ts.D = old
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    ts.D = ts.Daemon(binary, d)
    try:
        st, _, e = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        check(st == 400 and "default" in e["error"]["message"], "template list without default → 400 saying so: %d %r" % (st, e))
    finally:
        ts.D.stop()
        ts.D = old


# ------------------------------------------------------------------ acceptance 1 over HTTP
def t_goldens(binary, model, tmp):
    """Every golden of tests/data/jinja/golden.json (@huggingface/jinja on the real templates of
    shared/data/chat_templates) through the daemon: a model folder whose tokenizer_config.json
    carries the template and its bos/eos, /apply-template with the golden's messages,
    add_generation_prompt, tools and extra variables (chat_template_kwargs) → byte-identical
    prompt, or a 4xx carrying the template's raise_exception text."""
    g = json.load(open(os.path.join(ROOT, "tests", "data", "jinja", "golden.json")))
    cfg0 = json.load(open(os.path.join(model, "tokenizer_config.json")))
    same = errs = 0
    old = ts.D
    for name, tmpl in sorted(g["templates"].items()):
        cases = [x for x in g["goldens"] if x["template"] == name]
        d = os.path.join(tmp, "golden_" + name)
        os.makedirs(d)
        for f in os.listdir(model):
            if f != "tokenizer_config.json":
                os.symlink(os.path.join(model, f), os.path.join(d, f))
        cfg = dict(cfg0, chat_template=tmpl)
        cfg.pop("bos_token", None)
        ctx0 = cases[0]["context"]
        if ctx0.get("bos_token") is not None:
            cfg["bos_token"] = ctx0["bos_token"]
        cfg["eos_token"] = ctx0["eos_token"]
        json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
        ts.D = ts.Daemon(binary, d)
        try:
            for x in cases:
                c = x["context"]
                body = {"messages": c["messages"], "add_generation_prompt": c["add_generation_prompt"]}
                if "tools" in c:
                    body["tools"] = c["tools"]
                kw = {k: v for k, v in c.items() if k not in ("messages", "add_generation_prompt", "tools",
                                                              "bos_token", "eos_token")}
                if kw:
                    body["chat_template_kwargs"] = kw
                st, _, r = post("/apply-template", body)
                what = "%s/%s agp=%s" % (name, x["case"], x["add_generation_prompt"])
                if "output" in x:
                    same += check(st == 200 and r.get("prompt") == x["output"],
                                  "golden %s: %d %r vs %r" % (what, st, r, x["output"][:200]))
                else:
                    ok = 400 <= st < 500 and (not x["raised"] or x["error"] in r["error"]["message"])
                    errs += check(ok, "golden %s must fail (%r): %d %r" % (what, x["error"], st, r))
        finally:
            check(ts.D.stop() == 0, "golden daemon %s exits 0" % name)
            ts.D = old
    FIG["A1"] = "%d templates × their cases over /apply-template: %d byte-identical prompts, %d refusals as the oracle (of %d goldens)" % (
        len(g["templates"]), same, errs, len(g["goldens"]))


# ------------------------------------------------------------------ acceptance 2: openai SDK
def t_sdk():
    node = shutil.which("node")
    sdk = os.path.join(ROOT, "clients", "examples", "node")
    if not check(node and os.path.exists(os.path.join(sdk, "node_modules", "openai", "package.json")),
                 "node and the openai npm package (cd clients/examples/node && npm ci)"):
        return
    env = dict(os.environ, LORAD_URL="http://127.0.0.1:%d" % ts.D.port, LORAD_MODEL=AD, LORAD_SDK_DIR=sdk)
    p = subprocess.run([node, os.path.join(HERE, "openai_sdk.mjs")], capture_output=True, text=True, env=env, timeout=300)
    if not check(p.returncode == 0, "openai_sdk.mjs exits 0: %s" % p.stderr[-2000:]):
        return
    o = {j["kind"]: j for j in map(json.loads, p.stdout.splitlines())}
    m = o["models"]
    check(AD in m["ids"] and m["ids"][0] == "default" and m["parents"][m["ids"].index(AD)] == "default",
          "models.list has the base and the adapter with parent: %r" % m)
    ref = cmpl(prompt="The quick brown fox", model=AD, temperature=0, max_tokens=12)
    n_prompt = len(ts.tokenize("The quick brown fox"))
    c, cs = o["completion"], o["completion_stream"]
    check(ref and c["text"] == ref["choices"][0]["text"], "SDK completion == raw API")
    # chunks carry token batches (a slow reader may get all text in one): text + usage ≥ 2
    check(cs["text"] == c["text"] and cs["chunks"] >= 2,
          "SDK streamed completion == non-streamed: %r vs %r (%d chunks)" % (cs["text"], c["text"], cs["chunks"]))
    ntok = c["usage"]["completion_tokens"]
    check(c["usage"]["prompt_tokens"] == n_prompt and c["usage"]["total_tokens"] == n_prompt + ntok
          and (ntok == 12 or c["finish"] == "stop") and cs["usage"] == c["usage"],
          "completion usage counts: %r / streamed %r (prompt %d tokens)" % (c["usage"], cs["usage"], n_prompt))
    k, ks = o["chat"], o["chat_stream"]
    st, _, ap = post("/apply-template", {"messages": [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Tell me about foxes"}]})
    n_chat = len(ts.tokenize(ap["prompt"], add_special=False))
    check(k["role"] == "assistant" and ks["role"] == "assistant", "chat role assistant")
    check(ks["text"] == k["text"] and ks["finish"] == k["finish"], "SDK streamed chat == non-streamed: %r vs %r" % (ks["text"], k["text"]))
    check(k["usage"]["prompt_tokens"] == n_chat and ks["usage"] == k["usage"]
          and k["usage"]["total_tokens"] == n_chat + k["usage"]["completion_tokens"],
          "chat usage counts: %r (rendered prompt %d tokens)" % (k["usage"], n_chat))
    s = o["seed"]
    check(s["chat"][0] == s["chat"][1] and s["completion"][0] == s["completion"][1],
          "same seed → same text: %r" % s)
    check(s["chat_other"] != s["chat"][0], "another seed → another text (temperature 1): %r" % s)
    nf = o["notfound"]
    check(nf.get("status") == 404 and nf.get("isNotFound"), "unknown model → 404 NotFoundError: %r" % nf)
    br = o["badrequest"]
    check(br.get("status") == 400 and br.get("isBadRequest") and "response_format" in br.get("message", ""),
          "json_object → BadRequestError naming response_format: %r" % br)
    FIG["A2"] = "SDK: completion %d+%d tokens, chat %d+%d tokens, streamed == non-streamed, seeds, 404" % (
        n_prompt, ntok, n_chat, k["usage"]["completion_tokens"])


def main():
    binary, model = ts.find_binary(), ts.find_model()
    tmp = tempfile.mkdtemp(prefix="lorad_api_")
    try:
        root = os.path.join(tmp, "root")
        ad_dir = os.path.join(root, AD)
        gen_adapter.generate(model, AD, ad_dir, gen_adapter.SEEDS.get(("default", AD), 0))
        ts.D = ts.Daemon(binary, model, ["--adapter-dir", root])
        try:
            for fn, args in ((t_stop, ()), (t_generate, (model, ad_dir)), (t_completions, ()),
                             (t_chat, ()), (t_sdk, ())):
                before = ts.CHECKS[0]
                try:
                    fn(*args)
                except Exception as e:  # noqa: BLE001
                    import traceback
                    traceback.print_exc()
                    check(False, "%s raised %r" % (fn.__name__, e))
                print("  %-16s %3d checks" % (fn.__name__, ts.CHECKS[0] - before), flush=True)
        finally:
            check(ts.D.stop() == 0, "daemon exits 0 on SIGTERM (ASan clean)")
        for fn in (t_template_files, t_goldens):
            before = ts.CHECKS[0]
            try:
                fn(binary, model, tmp)
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                check(False, "%s raised %r" % (fn.__name__, e))
            print("  %-16s %3d checks" % (fn.__name__, ts.CHECKS[0] - before), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in FIG.items():
        print("figure %s: %s" % (k, v))
    print("test_api: %d checks, %d failed" % (ts.CHECKS[0], len(ts.FAILS)))
    sys.exit(1 if ts.FAILS else 0)


if __name__ == "__main__":
    main()
