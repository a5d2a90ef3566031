#!/usr/bin/python3
"""test_goldens.py — the chat-template goldens still describe what they claim to.

Run by tests/run_all.sh (any working directory). Checks, without our C code:
  1. golden.json holds every template of shared/data/chat_templates (sha256 as in sources.json,
     text identical to the file) and, for each, every message list of cases.json (tool lists only
     where supports_tools) with add_generation_prompt true and false, with the template's own
     bos/eos tokens in the context;
  2. every raise_exception golden's text is a raise_exception('…') literal of that template;
  3. jinja2_golden.json has one entry per snippets.json snippet, in order, same template text;
  4. when Python Jinja2 is installed (Debian python3-jinja2): re-rendering the snippets and the
     real-template contexts with Jinja2 as transformers sets it up (gen_jinja2.make_env) gives
     the committed results — so neither golden was edited by hand nor went stale.
"""
import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("LORAD_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))


def fail(msg):
    print(f"test_goldens.py: FAIL: {msg}")
    sys.exit(1)


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main():
    golden = load(os.path.join(ROOT, "tests/data/jinja/golden.json"))
    cases = load(os.path.join(HERE, "cases.json"))["cases"]
    tpl_dir = os.path.join(SHARED, "data/chat_templates")
    sources = load(os.path.join(tpl_dir, "sources.json"))
    if sorted(golden["templates"]) != sorted(s["name"] for s in sources):
        fail("golden.json templates differ from shared sources.json")
    by_key = {(g["template"], g["case"], g["add_generation_prompt"]): g for g in golden["goldens"]}
    expected = 0
    for s in sources:
        raw = open(os.path.join(tpl_dir, s["name"] + ".jinja"), "rb").read()
        if hashlib.sha256(raw).hexdigest() != s["sha256"]:
            fail(f"{s['name']}.jinja does not match its sha256 in sources.json")
        if golden["templates"][s["name"]] != raw.decode("utf-8"):
            fail(f"golden.json holds another text for {s['name']}")
        raises = {m[1] for m in re.findall(r"raise_exception\(\s*(['\"])((?:\\.|(?!\1).)*)\1\s*\)",
                                            raw.decode("utf-8"), re.S)}
        for c in cases:
            if c.get("tools_only") and not s["supports_tools"]:
                continue
            for agp in (True, False):
                g = by_key.get((s["name"], c["name"], agp))
                expected += 1
                if g is None:
                    fail(f"no golden for {s['name']}/{c['name']}/agp={agp}")
                ctx = g["context"]
                if ctx["messages"] != c["messages"] or ctx["add_generation_prompt"] != agp:
                    fail(f"{s['name']}/{c['name']}: context differs from cases.json")
                for tok in ("bos_token", "eos_token"):
                    if ctx.get(tok) != s[tok]:
                        fail(f"{s['name']}/{c['name']}: {tok} {ctx.get(tok)!r} is not {s[tok]!r}")
                if g.get("raised") and g["error"] not in raises:
                    fail(f"{s['name']}/{c['name']}: raised text is not one of the template's")
    if expected != len(golden["goldens"]) or expected < 200:
        fail(f"{len(golden['goldens'])} goldens, expected {expected} (≥ 200)")

    snippets = load(os.path.join(HERE, "snippets.json"))["snippets"]
    j2 = load(os.path.join(ROOT, "tests/data/jinja/jinja2_golden.json"))["snippets"]
    if [s["template"] for s in snippets] != [s["template"] for s in j2]:
        fail("jinja2_golden.json does not follow snippets.json; run tests/jinja/gen_jinja2.py")

    try:
        sys.path.insert(0, HERE)
        import gen_jinja2
        env = gen_jinja2.make_env()
    except SystemExit:
        print(f"test_goldens.py: {expected} goldens consistent; Jinja2 not installed, "
              "re-rendering skipped")
        return 0
    for s in j2:
        got = gen_jinja2.render(env, s["template"], s.get("context", {}))
        if ("output" in s) != ("output" in got) or s.get("output") != got.get("output"):
            fail(f"Jinja2 now renders {s['template']!r} as {got!r}, the golden says {s!r}")
    agree = 0
    for g in golden["goldens"]:
        got = gen_jinja2.render(env, golden["templates"][g["template"]], g["context"])
        if "output" in g and got.get("output") != g["output"]:
            fail(f"Jinja2 and @huggingface/jinja disagree on {g['template']}/{g['case']}")
        if "output" not in g and "output" in got:
            fail(f"Jinja2 renders {g['template']}/{g['case']} that @huggingface/jinja refused")
        agree += 1
    print(f"test_goldens.py: {expected} goldens consistent, {len(j2)} snippets re-rendered by "
          f"Jinja2, {agree} real-template cases agree between Jinja2 and @huggingface/jinja")
    return 0


if __name__ == "__main__":
    sys.exit(main())
