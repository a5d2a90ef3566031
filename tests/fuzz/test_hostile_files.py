#!/usr/bin/python3
"""Hostile files against a running lorad: a catalogue of broken and malicious adapter folders
(safetensors headers, adapter_config.json, file types and links), each of which must be refused
with the right 4xx and a message naming the file or field, while the daemon keeps serving the
base model and good adapters correctly; then hostile MODEL folders, each of which must make
lorad refuse to start with a message naming the file (never a crash or a sanitizer report).

Every hostile file is written here from a valid adapter / model (tests/gen) by changing bytes the
way an attacker or a broken writer would; the expected status follows err.h's mapping (malformed
input 400, header over the size limit 413, does not fit the base 422, outside the roots 403).
Uses the daemon helpers of tests/e2e/test_server.py. Exit 0 when every check passed.
"""

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import test_server as ts  # noqa: E402
import gen_adapter  # noqa: E402

check = ts.check

# Findings of this catalogue that are open in modules this test does not own (tests/fuzz/regress/
# README.md names file, function and cause). They are printed as OPEN FINDING and do not fail
# make test; LORAD_HOSTILE_STRICT=1 makes them fail like every other check.
# (st_is_fifo, cfg_is_fifo and st_is_directory were open here and are fixed: d96ac2d, 772061f,
# 2b0a612; they are ordinary checks now.)
# (cfg_link_out_of_root was open here: the registry now confines the files, not only the folder.)
KNOWN_OPEN = {}
STRICT = os.environ.get("LORAD_HOSTILE_STRICT") == "1"
PROMPT = [5, 17, 42, 99, 7, 300, 12]
ST = "adapter_model.safetensors"
CFG = "adapter_config.json"


# ------------------------------------------------------------------ safetensors, by hand

def st_split(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_join(header, body, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def hostile_safetensors(good):
    """{id: (bytes, expected statuses, what)} from the valid file `good`."""
    hdr, body = st_split(good)
    name = first_tensor(hdr)
    t = hdr[name]
    out = {}

    def mod(fn):
        h = json.loads(json.dumps(hdr))
        fn(h)
        return st_join(h, body)

    out["st_empty"] = (b"", {400}, "an empty file")
    out["st_short"] = (b"\x05\x00\x00", {400}, "shorter than the 8-byte length")
    out["st_header_huge"] = (struct.pack("<Q", 1 << 40) + b"{}", {413},
                             "a header length of 1 TiB (over the 100 MB limit)")
    out["st_header_past_eof"] = (struct.pack("<Q", 100000) + b"{}" + b" " * 6, {400},
                                 "a header length past the end of the file")
    out["st_not_json"] = (st_join(None, body, raw_header=b'{"a": {"dtype": '), {400},
                          "a header that is not JSON")
    dup = json.dumps(hdr)[:-1] + ", %s: %s}" % (json.dumps(name), json.dumps(t))
    out["st_duplicate_name"] = (st_join(None, body, raw_header=dup.encode()), {400},
                                "the same tensor name twice")
    out["st_offsets_past_end"] = (mod(lambda h: h[name].update(
        data_offsets=[t["data_offsets"][0], len(body) + 4])), {400},
        "data_offsets past the end of the data")
    out["st_overlap"] = (mod(lambda h: [h[k].update(data_offsets=t["data_offsets"])
                                        for k in list(h)[1:3]]), {400}, "two tensors on the same bytes")
    out["st_shape_vs_bytes"] = (mod(lambda h: h[name].update(shape=[t["shape"][0], t["shape"][1] + 1])),
                                {400}, "a shape that does not match the byte count")
    out["st_numel_overflow"] = (mod(lambda h: h[name].update(shape=[1 << 62, 1 << 62, 16])), {400},
                                "a shape whose element count overflows 64 bits")
    out["st_bad_dtype"] = (mod(lambda h: h[name].update(dtype="F128")), {400}, "an unknown dtype")
    out["st_negative_dim"] = (mod(lambda h: h[name].update(shape=[-1, t["shape"][1]])), {400},
                              "a negative dimension")
    out["st_int_dtype"] = (mod(lambda h: h[name].update(dtype="I32")), {400},
                           "LoRA weights stored as I32")
    out["st_missing_lora_B"] = (st_join({k: v for k, v in hdr.items() if ".lora_B." not in k}, body),
                                {400}, "lora_A without its lora_B")
    out["st_wrong_shape"] = (mod(lambda h: h[name].update(
        shape=[t["shape"][0] * 2, t["shape"][1] // 2])), {422},
        "lora_A with the right byte count but the wrong shape for the base")
    return out


def hostile_configs(good_cfg):
    """{id: (adapter_config.json bytes, expected statuses, what)}."""
    def with_(**kw):
        c = dict(good_cfg)
        c.update(kw)
        return json.dumps(c).encode()
    deep = b'{"r": 8, "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    return {
        "cfg_not_json": (b'{"r": 8, "lora_alpha": ', {400}, "truncated JSON"),
        "cfg_array": (b"[1, 2, 3]", {400}, "not an object"),
        "cfg_nan": (json.dumps({k: v for k, v in good_cfg.items() if k != "lora_alpha"})[:-1].encode()
                    + b', "lora_alpha": NaN}', {400}, "lora_alpha NaN (not JSON)"),
        "cfg_deep": (deep, {400}, "100000 nested arrays"),
        "cfg_r_negative": (with_(r=-8), {400}, "a negative rank"),
        "cfg_r_string": (with_(r="8"), {400}, "a rank that is a string"),
        "cfg_r_mismatch": (with_(r=16), {422}, "r that does not match lora_A.shape[0]"),
        "cfg_huge_number": (with_(lora_alpha=10 ** 400), {400}, "lora_alpha = 10^400"),
        "cfg_bad_regex": (with_(target_modules="(q_proj"), {400}, "a regex that does not compile"),
        "cfg_peft_type": (with_(peft_type="PREFIX_TUNING"), {400}, "another PEFT type"),
        "cfg_modules_to_save": (with_(modules_to_save=["lm_head"]), {400}, "modules_to_save"),
        "cfg_fan_in_fan_out": (with_(fan_in_fan_out=True), {400}, "fan_in_fan_out"),
    }


# ------------------------------------------------------------------ the catalogue

def build_root(model, tmp):
    root = os.path.join(tmp, "root")
    good = os.path.join(root, "good")
    gen_adapter.generate(model, "qv", good)
    with open(os.path.join(good, ST), "rb") as f:
        good_st = f.read()
    with open(os.path.join(good, CFG)) as f:
        good_cfg = json.load(f)
    cases = {}
    for cid, (data, want, what) in hostile_safetensors(good_st).items():
        d = os.path.join(root, cid)
        os.makedirs(d)
        shutil.copy(os.path.join(good, CFG), d)
        with open(os.path.join(d, ST), "wb") as f:
            f.write(data)
        cases[cid] = (want, "model.layers." if want == {422} else ST, what)
    for cid, (data, want, what) in hostile_configs(good_cfg).items():
        d = os.path.join(root, cid)
        os.makedirs(d)
        shutil.copy(os.path.join(good, ST), d)
        with open(os.path.join(d, CFG), "wb") as f:
            f.write(data)
        cases[cid] = (want, "model.layers." if want == {422} else CFG, what)
    # File types and links.
    d = os.path.join(root, "st_is_directory")
    os.makedirs(os.path.join(d, ST))
    shutil.copy(os.path.join(good, CFG), d)
    cases["st_is_directory"] = ({400, 404}, ST, "adapter_model.safetensors is a directory")
    d = os.path.join(root, "st_is_fifo")
    os.makedirs(d)
    shutil.copy(os.path.join(good, CFG), d)
    os.mkfifo(os.path.join(d, ST))
    cases["st_is_fifo"] = ({400, 404}, ST, "adapter_model.safetensors is a FIFO (a naive open blocks)")
    d = os.path.join(root, "cfg_is_fifo")
    os.makedirs(d)
    shutil.copy(os.path.join(good, ST), d)
    os.mkfifo(os.path.join(d, CFG))
    cases["cfg_is_fifo"] = ({400, 404}, CFG, "adapter_config.json is a FIFO (a naive open blocks)")
    outside = os.path.join(tmp, "outside")
    gen_adapter.generate(model, "qv", outside)
    os.symlink(outside, os.path.join(root, "link_out_of_root"))
    cases["link_out_of_root"] = ({403, 404}, None, "a folder symlinked to outside the root")
    d = os.path.join(root, "cfg_link_out_of_root")
    os.makedirs(d)
    shutil.copy(os.path.join(good, ST), d)
    os.symlink(os.path.join(outside, CFG), os.path.join(d, CFG))
    cases["cfg_link_out_of_root"] = ({403, 404}, None, "adapter_config.json symlinked outside the root")
    return root, cases


def unblock_fifos(d):
    """Open each FIFO of folder d for writing and close it: a loader blocked in open() on it gets
    EOF, so the daemon can still stop."""
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if os.path.exists(p) and stat.S_ISFIFO(os.stat(p).st_mode):
            for _ in range(50):
                try:
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
                    break
                except OSError:
                    time.sleep(0.1)


def ask(model_id, timeout=60):
    body = {"prompt": PROMPT, "temperature": 0, "max_tokens": 6, "ignore_eos": True,
            "return_token_ids": True}
    if model_id is not None:
        body["model"] = model_id
    return ts.post("/v1/completions", body, timeout=timeout)


def tokens(r):
    return r["choices"][0]["token_ids"] if isinstance(r, dict) and "choices" in r else None


def adapter_catalogue(binary, model, tmp):
    root, cases = build_root(model, tmp)
    ts.D = ts.Daemon(binary, model, ["--adapter-dir", root, "--max-lora-rank", "64"])
    try:
        st, _, base0 = ask(None)
        check(st == 200, "base answers before the catalogue: %d" % st)
        st, _, good0 = ask("good")
        check(st == 200, "the good adapter answers: %d %r" % (st, good0))
        n_ok = 0
        open_found = []
        for cid, (want, fname, what) in sorted(cases.items()):
            t0 = time.time()
            problems = []
            try:
                st, _, r = ask(cid, timeout=15)
            except Exception as e:  # a hang or a dropped connection
                st, r = None, {}
                problems.append("no answer within 15 s: %r" % e)
                unblock_fifos(os.path.join(root, cid))
            msg = r.get("error", {}).get("message", "") if isinstance(r, dict) else str(r)
            if st is not None:
                if st not in want:
                    problems.append("status %d, want %s" % (st, sorted(want)))
                if fname and fname not in msg:
                    problems.append("the message does not name %s" % fname)
                if len(msg) < 20:
                    problems.append("no clear message")
            if problems and cid in KNOWN_OPEN and not STRICT:
                open_found.append(cid)
                print("  OPEN FINDING %s (%s): %s — %s" % (cid, what, "; ".join(problems),
                                                          KNOWN_OPEN[cid]), flush=True)
            else:
                for p in problems:
                    check(False, "%s (%s): %s: %r" % (cid, what, p, msg))
                n_ok += not problems
            print("  %-26s %s  %s" % (cid, st, msg[:110]), flush=True)
            # After every hostile file the base still gives the same greedy answer.
            st2, _, b = ask(None)
            check(st2 == 200 and tokens(b) == tokens(base0),
                  "%s: base answer unchanged afterwards" % cid)
            # Known-good cases must stay findings until fixed: a fixed one is reported so that it
            # can leave KNOWN_OPEN.
            if not problems and cid in KNOWN_OPEN:
                print("  %s now passes: remove it from KNOWN_OPEN" % cid, flush=True)
        st, _, good1 = ask("good")
        check(st == 200 and tokens(good1) == tokens(good0), "the good adapter is unchanged at the end")
        st, _, h = ts.request("GET", "/health")
        check(st == 200, "/health 200 at the end: %d" % st)
        print("hostile adapter files: %d cases, %d refused as expected, %d open findings %s"
              % (len(cases), n_ok, len(open_found), open_found))
    finally:
        rc = ts.D.stop()
        err = ts.D.stderr()
        check(rc == 0, "lorad exits 0 on SIGTERM after the catalogue: %r" % rc)
        check("AddressSanitizer" not in err and "runtime error" not in err
              and "LeakSanitizer" not in err, "no sanitizer report:\n" + err[-3000:])


# ------------------------------------------------------------------ hostile model folders

def hostile_models(binary, model, tmp):
    def variant(name, fname, mutate):
        d = os.path.join(tmp, "models", name)
        shutil.copytree(model, d)
        p = os.path.join(d, fname)
        with open(p, "rb") as f:
            data = f.read()
        with open(p, "wb") as f:
            f.write(mutate(data))
        return d

    def cfg(**kw):
        def m(data):
            c = json.loads(data)
            c.update(kw)
            return json.dumps(c).encode()
        return m

    def st_mut(fn):
        def m(data):
            h, body = st_split(data)
            fn(h)
            return st_join(h, body)
        return m

    cases = [
        ("config_not_json", "config.json", lambda d: d[: len(d) // 2]),
        ("config_hidden_negative", "config.json", cfg(hidden_size=-128)),
        ("config_heads_zero", "config.json", cfg(num_attention_heads=0)),
        ("config_layers_huge", "config.json", cfg(num_hidden_layers=1 << 30)),
        ("config_vocab_string", "config.json", cfg(vocab_size="512")),
        ("tokenizer_truncated", "tokenizer.json", lambda d: d[: len(d) // 3]),
        ("tokenizer_bad_model", "tokenizer.json",
         lambda d: json.dumps(dict(json.loads(d), model={"type": "WordLevel", "vocab": {}})).encode()),
        ("weights_header_past_eof", "model.safetensors", lambda d: struct.pack("<Q", 1 << 30) + d[8:]),
        ("weights_truncated", "model.safetensors", lambda d: d[: len(d) // 2]),
        ("weights_dtype", "model.safetensors",
         st_mut(lambda h: h[first_tensor(h)].update(dtype="F8_E4M3"))),
    ]
    n_ok = 0
    for name, fname, mutate in cases:
        d = variant(name, fname, mutate)
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        try:
            p = subprocess.run([binary, "--model", d, "--port", "0", "--threads", "1"],
                               capture_output=True, timeout=120, env=env)
            rc, err = p.returncode, p.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            rc, err = None, "(did not exit within 120 s)"
        ok = check(rc not in (0, None) and rc > 0,
                   "model %s: lorad refuses to start (exit %r)" % (name, rc))
        ok &= check(fname in err, "model %s: the message names %s: %r" % (name, fname, err[-400:]))
        ok &= check("AddressSanitizer" not in err and "runtime error" not in err
                    and "LeakSanitizer" not in err, "model %s: no sanitizer report: %s" % (name, err[-2000:]))
        n_ok += bool(ok)
        last = [ln for ln in err.splitlines() if fname in ln]
        print("  %-26s exit %r  %s" % (name, rc, (last[-1] if last else err[-110:])[:110]), flush=True)
    print("hostile model folders: %d cases, %d refused as expected" % (len(cases), n_ok))


def main():
    binary, model = ts.find_binary(), ts.find_model()
    tmp = tempfile.mkdtemp(prefix="lorad_hostile_")
    try:
        adapter_catalogue(binary, model, tmp)
        hostile_models(binary, model, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d checks, %d failed" % (ts.CHECKS[0], len(ts.FAILS)))
    sys.exit(1 if ts.FAILS else 0)


if __name__ == "__main__":
    main()
