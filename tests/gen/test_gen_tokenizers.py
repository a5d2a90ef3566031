#!/usr/bin/python3
"""The generated models' tokenizer files are valid HuggingFace files: checked by HF tokenizers itself.

Loads every test preset's tokenizer.json (plus the 32000-id padded one of smol135, built in memory)
with the HF `tokenizers` Rust crate through the node bindings pinned in tests/tokgold (installed by
tests/tokgold/fetch.sh into tests/.cache/tokgold-npm) and checks, for a set of texts:
  - decode(encode(text, add_special_tokens=false)) == text (byte-level BPE is lossless);
  - encode with special tokens adds <|begin_of_text|> first for the Llama-3 style and nothing for
    the Qwen2 / GPT-2 styles, as tokenizer_config.json's add_bos_token says;
  - special-token text maps to the ids listed in tokenizer_config.json's added_tokens_decoder;
  - every id is below config.json's vocab_size, and the vocabulary size equals it;
  - learned merges are used: common English words take fewer tokens than bytes.
Env: LORAD_MODELS (default build/testmodels; missing presets are generated).
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import bpe_tok  # noqa: E402
import gen_model  # noqa: E402

MODELS = os.environ.get("LORAD_MODELS", os.path.join(ROOT, "build", "testmodels"))
NPM = os.path.join(ROOT, "tests", ".cache", "tokgold-npm")

TEXTS = ["Hello world, the river runs to the sea.",
         "I'm fine, they've got 12345 apples; it's 07:30.",
         "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
         "h\u00e9llo \u00fcn\u00efcode \U0001F600 \u4e2d\u6587",
         "  leading spaces\ttabs\r\nand newlines\n\n",
         "The people who built this town were farmers and traders."]

NODE_SCRIPT = r"""
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const require = createRequire(job.npm + '/package.json');
const { Tokenizer } = require('@anush008/tokenizers');
const out = [];
for (const f of job.files) {
  const tok = Tokenizer.fromFile(f);
  const res = { file: f, vocab: tok.getVocabSize(true), cases: [] };
  for (const t of job.texts) {
    const plain = (await tok.encode(t, null, { addSpecialTokens: false })).getIds();
    const special = (await tok.encode(t, null, { addSpecialTokens: true })).getIds();
    res.cases.push({ text: t, plain, special, decoded: await tok.decode(plain, false) });
  }
  out.push(res);
}
console.log(JSON.stringify(out));
"""


def main():
    fetch = os.path.join(ROOT, "tests", "tokgold", "fetch.sh")
    cp = subprocess.run([fetch], capture_output=True, text=True)
    if cp.returncode != 0:
        print("FAIL: tests/tokgold/fetch.sh could not install the HF tokenizers oracle:\n" + cp.stderr)
        return 1
    names = [n for n, v in gen_model.PRESETS.items() if v.get("test", True)]
    files, meta = [], {}
    tmp = tempfile.TemporaryDirectory()
    for n in names:
        d = os.path.join(MODELS, n)
        gen_model.generate(n, d)
        f = os.path.join(d, "tokenizer.json")
        with open(os.path.join(d, "config.json")) as fh:
            cfg = json.load(fh)
        with open(os.path.join(d, "tokenizer_config.json")) as fh:
            tcfg = json.load(fh)
        files.append(f)
        meta[f] = (n, cfg["vocab_size"], tcfg)
    big, specials = bpe_tok.build(32000, "llama3")
    f = os.path.join(tmp.name, "smol135_tokenizer.json")
    with open(f, "w") as fh:
        json.dump(big, fh)
    files.append(f)
    meta[f] = ("smol135", 32000, bpe_tok.tokenizer_config("llama3", specials, 2048))
    job = os.path.join(tmp.name, "job.json")
    with open(job, "w") as fh:
        json.dump({"npm": NPM, "files": files, "texts": TEXTS}, fh)
    script = os.path.join(tmp.name, "check.mjs")
    with open(script, "w") as fh:
        fh.write(NODE_SCRIPT)
    cp = subprocess.run(["node", script, job], capture_output=True, text=True, timeout=300)
    if cp.returncode != 0:
        print("FAIL: HF tokenizers could not load/encode the generated files:\n" + cp.stderr[-3000:])
        return 1
    fails = 0

    def check(cond, what):
        nonlocal fails
        if not cond:
            fails += 1
            print("FAIL:", what)

    for res in json.loads(cp.stdout):
        before = fails
        name, vocab_size, tcfg = meta[res["file"]]
        check(res["vocab"] == vocab_size, "%s: HF vocab %d != config vocab_size %d" % (name, res["vocab"], vocab_size))
        ids_of = {v["content"]: int(k) for k, v in tcfg["added_tokens_decoder"].items()}
        bos = ids_of["<|begin_of_text|>"] if tcfg["add_bos_token"] else None
        for c in res["cases"]:
            t = c["text"]
            check(c["decoded"] == t, "%s: decode(encode(%r)) = %r" % (name, t, c["decoded"]))
            check(all(0 <= i < vocab_size for i in c["special"]), "%s: id out of range for %r" % (name, t))
            want = ([bos] if bos is not None else []) + c["plain"]
            check(c["special"] == want, "%s: add_special_tokens gave %s, expected %s" % (name, c["special"][:4], want[:4]))
            for s in ("<|im_start|>", "<|im_end|>"):
                if s in t:
                    check(ids_of[s] in c["plain"], "%s: %s not encoded as id %d" % (name, s, ids_of[s]))
            if t.startswith("The people"):
                check(len(c["plain"]) < 0.6 * len(t.encode()),
                      "%s: %d tokens for %d bytes: merges not applied" % (name, len(c["plain"]), len(t.encode())))
        print("%-15s vocab %5d  %s" % (name, res["vocab"], "ok" if fails == before else "FAILED"))
    tmp.cleanup()
    print("%d problems" % fails)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
