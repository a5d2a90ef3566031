#!/usr/bin/python3
"""Checks the committed tokenizer goldens (tests/data/tok/golden_*.json) against independent
references, so a bad regeneration or a drifted tokenizer file cannot slip in unnoticed.

The goldens come from HF tokenizers (tests/tokgold/gen.mjs). This file re-derives what it can
WITHOUT that library, from the tokenizer.json files alone, with deliberately naive code:
  - every golden is current: its tokenizer.json sha256 matches the cached file, and every
    corpus.json string has a case;
  - ids_special = the tokenizer.json post-processor template around ids_plain;
  - decoded / decoded_skip = a small interpreter of the tokenizer.json decoder chain
    (Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace, Sequence) over the id pieces;
  - ids_plain, for the SentencePiece-BPE files without a pre-tokenizer regex (llama2, gemma3) =
    a textbook BPE: added-token split (leftmost-longest), normalizer, lowest-rank-leftmost merges,
    byte fallback;
  - ids_plain, for the byte-level files (llama3, qwen3) = the same BPE after NFC (qwen3), the
    Llama-3/Qwen2 split regex written out procedurally as SPEC-HF E.2 describes it (no regex
    engine), and the GPT-2 byte-to-char map; ignore_merges honoured;
  - the DecodeStream steps concatenate (plus *_flush) to the whole decode.
Runs fetch.sh first (idempotent) for the files in tests/.cache/tok.
Run: /usr/bin/python3 tests/tokgold/test_goldens.py
"""
import hashlib
import json
import os
import subprocess
import sys
import unicodedata
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLD = os.path.join(ROOT, "tests", "data", "tok")
CACHE = os.path.join(ROOT, "tests", ".cache", "tok")
NAMES = ["llama2", "llama3", "qwen3", "gemma3", "t5", "t5_flux"]
NAIVE_BPE = {"llama2", "gemma3"}  # no regex pre-tokenizer: a plain BPE reproduces them
NAIVE_BYTELEVEL = {"llama3", "qwen3"}  # regex split written out by hand (SPEC-HF E.2), then BPE

# The two split patterns we know how to do by hand; anything else in a file is a test error.
P_LLAMA3 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
            "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
P_QWEN2 = P_LLAMA3.replace("\\p{N}{1,3}", "\\p{N}")
# Oniguruma's \s: Unicode White_Space (Python's str.isspace() also takes U+001C..U+001F).
WHITE_SPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}


def ensure_fetched():
    # fetch.sh is idempotent and fast when nothing changed; running it always keeps the cache in
    # step with package-lock.json, so a sha256 mismatch below really means a stale golden.
    r = subprocess.run([os.path.join(ROOT, "tests", "tokgold", "fetch.sh")])
    if r.returncode != 0:
        raise RuntimeError("tests/tokgold/fetch.sh failed; cannot check the goldens")


def bytes_to_unicode():
    """GPT-2 byte <-> char map (SPEC-HF E.2), written out from its definition."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + n)
            n += 1
    return table


CHAR_BYTE = {c: b for b, c in bytes_to_unicode().items()}


class Tok:
    """What the naive references need from one tokenizer.json."""

    def __init__(self, name):
        path = os.path.join(CACHE, name, "tokenizer.json")
        with open(path, "rb") as f:
            raw = f.read()
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.j = json.loads(raw)
        model = self.j["model"]
        if model["type"] == "Unigram":
            self.id_to_piece = {i: p for i, (p, _) in enumerate(model["vocab"])}
            self.vocab = {p: i for i, p in self.id_to_piece.items()}
        else:
            self.vocab = model["vocab"]
            self.id_to_piece = {i: p for p, i in self.vocab.items()}
        self.added = {a["id"]: a for a in self.j["added_tokens"]}
        self.added_by_text = {a["content"]: a["id"] for a in self.j["added_tokens"]}
        self.special = {a["id"] for a in self.j["added_tokens"] if a["special"]}
        self.n_ids = max(list(self.id_to_piece) + list(self.added)) + 1

    # ---- post-processor ---------------------------------------------------------------------
    def template(self, ids):
        pp = self.j["post_processor"]
        procs = pp["processors"] if pp and pp["type"] == "Sequence" else [pp]
        for p in procs:
            if p and p["type"] == "TemplateProcessing":
                out = []
                for piece in p["single"]:
                    if "Sequence" in piece:
                        out += ids
                    else:
                        out += p["special_tokens"][piece["SpecialToken"]["id"]]["ids"]
                ids = out
        return ids

    # ---- decode -----------------------------------------------------------------------------
    def decode(self, ids, skip_special):
        toks = []
        for i in ids:
            if skip_special and i in self.special:
                continue
            toks.append(self.added[i]["content"] if i in self.added else self.id_to_piece[i])
        dec = self.j["decoder"]
        if dec is None:
            return " ".join(toks)
        return "".join(self.run_decoder(dec, toks))

    def run_decoder(self, d, toks):
        t = d["type"]
        if t == "Sequence":
            for sub in d["decoders"]:
                toks = self.run_decoder(sub, toks)
            return toks
        if t == "Replace":
            return [x.replace(d["pattern"]["String"], d["content"]) for x in toks]
        if t == "Fuse":
            return ["".join(toks)]
        if t == "Strip":
            out = []
            for x in toks:
                a, b = 0, len(x)
                while a < d["start"] and a < b and x[a] == d["content"]:
                    a += 1
                n = 0
                while n < d["stop"] and b > a and x[b - 1] == d["content"]:
                    b -= 1
                    n += 1
                out.append(x[a:b])
            return out
        if t == "ByteFallback":
            out, run = [], bytearray()

            def flush():
                if run:
                    try:
                        out.append(run.decode("utf-8"))
                    except UnicodeDecodeError:
                        out.extend("\ufffd" * len(run))
                    run.clear()

            for x in toks:
                if len(x) == 6 and x.startswith("<0x") and x.endswith(">"):
                    run.append(int(x[3:5], 16))
                else:
                    flush()
                    out.append(x)
            flush()
            return out
        if t == "ByteLevel":
            data = bytearray()
            for x in toks:
                if all(c in CHAR_BYTE for c in x):
                    data += bytes(CHAR_BYTE[c] for c in x)
                else:
                    data += x.encode("utf-8")
            return [data.decode("utf-8", errors="replace")]
        if t == "Metaspace":
            rep = d["replacement"]
            scheme = d.get("prepend_scheme", "always" if d.get("add_prefix_space", True) else "never")
            return [x.replace(rep, "" if i == 0 and scheme != "never" else " ") for i, x in enumerate(toks)]
        raise NotImplementedError("decoder " + t)

    # ---- naive BPE encode (no regex pre-tokenizer) --------------------------------------------
    def setup_bpe(self):
        m = self.j["model"]
        self.ranks = {}
        for r, mg in enumerate(m["merges"]):
            a, b = mg.split(" ") if isinstance(mg, str) else mg
            self.ranks.setdefault((a, b), r)
        for a in self.j["added_tokens"]:
            assert not (a["lstrip"] or a["rstrip"] or a["single_word"] or a["normalized"]), a
        self.added_lens = sorted({len(t) for t in self.added_by_text}, reverse=True)

    def normalize(self, s, n):
        if n is None:
            return s
        t = n["type"]
        if t == "Sequence":
            for sub in n["normalizers"]:
                s = self.normalize(s, sub)
            return s
        if t == "Prepend":
            return n["prepend"] + s if s else s
        if t == "Replace":
            return s.replace(n["pattern"]["String"], n["content"])
        if t == "NFC":
            return unicodedata.normalize("NFC", s)
        raise NotImplementedError("normalizer " + t)

    def pre_tokenize(self, s):
        p = self.j["pre_tokenizer"]
        if p is None:
            return [s]
        if p["type"] == "Sequence":
            split, bl = p["pretokenizers"]
            assert split["type"] == "Split" and split["behavior"] == "Isolated" and not split["invert"]
            assert bl["type"] == "ByteLevel" and not bl["add_prefix_space"] and not bl["use_regex"]
            pat = split["pattern"]["Regex"]
            assert pat in (P_LLAMA3, P_QWEN2), pat
            words = split_llama3(s, 3 if pat == P_LLAMA3 else 1)
            table = bytes_to_unicode()
            return ["".join(table[b] for b in w.encode("utf-8")) for w in words]
        assert p["type"] == "Split" and p["behavior"] == "MergedWithPrevious", p
        delim, words, start = p["pattern"]["String"], [], 0
        while True:
            k = s.find(delim, start)
            if k < 0:
                break
            words.append(s[start:k + len(delim)])
            start = k + len(delim)
        words.append(s[start:])
        return [w for w in words if w]

    def bpe(self, word):
        m = self.j["model"]
        if m.get("ignore_merges") and word in self.vocab:
            return [self.vocab[word]]
        syms = []  # list of (piece, is_unk)
        for ch in word:
            if ch in self.vocab:
                syms.append((ch, False))
                continue
            bts = ["<0x%02X>" % b for b in ch.encode("utf-8")]
            if m.get("byte_fallback") and all(b in self.vocab for b in bts):
                syms.extend((b, False) for b in bts)
            elif m["fuse_unk"] and syms and syms[-1][1]:
                continue
            else:
                syms.append((m["unk_token"], True))
        pieces = [s for s, _ in syms]
        while True:
            best, at = None, -1
            for i in range(len(pieces) - 1):
                r = self.ranks.get((pieces[i], pieces[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            pieces[at:at + 2] = [pieces[at] + pieces[at + 1]]
        return [self.vocab[p] for p in pieces]

    def encode_plain(self, text):
        ids, seg, i = [], "", 0
        while i < len(text):
            for n in self.added_lens:
                if text[i:i + n] in self.added_by_text:
                    ids += self.encode_segment(seg)
                    seg = ""
                    ids.append(self.added_by_text[text[i:i + n]])
                    i += n
                    break
            else:
                seg += text[i]
                i += 1
        return ids + self.encode_segment(seg)

    def encode_segment(self, seg):
        if not seg:
            return []
        out = []
        for w in self.pre_tokenize(self.normalize(seg, self.j["normalizer"])):
            out += self.bpe(w)
        return out


def split_llama3(s, max_digits):
    """The Llama-3 (max_digits 3) / Qwen2 (1) pre-tokenizer regex, as a hand-written scanner:
    at each position the first alternative that matches wins (SPEC-HF E.2, procedural form)."""
    def cat(c):
        return unicodedata.category(c)[0]

    def is_l(k):
        return k < n and cat(s[k]) == "L"

    def is_n(k):
        return k < n and cat(s[k]) == "N"

    def is_ws(k):
        return k < n and s[k] in WHITE_SPACE

    def is_other(k):  # [^\s\p{L}\p{N}]
        return k < n and not is_ws(k) and not is_l(k) and not is_n(k)

    out, i, n = [], 0, len(s)
    while i < n:
        j = None
        # 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if s[i] == "'":
            for suf in ("s", "t", "re", "ve", "m", "ll", "d"):
                if s[i + 1:i + 1 + len(suf)].casefold() == suf:
                    j = i + 1 + len(suf)
                    break
        # 2. [^\r\n\p{L}\p{N}]?\p{L}+
        if j is None:
            k = i
            if s[i] not in "\r\n" and not is_l(i) and not is_n(i) and is_l(i + 1):
                k = i + 1
            if is_l(k):
                while is_l(k):
                    k += 1
                j = k
        # 3. \p{N}{1,max}
        if j is None and is_n(i):
            k = i
            while is_n(k) and k - i < max_digits:
                k += 1
            j = k
        # 4.  ?[^\s\p{L}\p{N}]+[\r\n]*
        if j is None:
            k = i + 1 if s[i] == " " and is_other(i + 1) else i
            if is_other(k):
                while is_other(k):
                    k += 1
                while k < n and s[k] in "\r\n":
                    k += 1
                j = k
        if j is None:
            assert is_ws(i), (s, i)
            e = i
            while is_ws(e):
                e += 1
            last_nl = max((k for k in range(i, e) if s[k] in "\r\n"), default=-1)
            if last_nl >= 0:  # 5. \s*[\r\n]+
                j = last_nl + 1
            elif e == n or e - i == 1:  # 6. \s+(?!\S) at the end / 7. \s+ single char
                j = e
            else:  # 6. \s+(?!\S): all but the last white space char
                j = e - 1
        out.append(s[i:j])
        i = j
    return out


class GoldenTest(unittest.TestCase):
    corpus = None

    @classmethod
    def setUpClass(cls):
        ensure_fetched()
        with open(os.path.join(ROOT, "tests", "tokgold", "corpus.json"), encoding="utf-8") as f:
            cls.corpus = [c["text"] for c in json.load(f)["cases"]]

    def check(self, name):
        with open(os.path.join(GOLD, "golden_%s.json" % name), encoding="utf-8") as f:
            g = json.load(f)
        tok = Tok(name)
        self.assertEqual(g["tokenizer"], name)
        self.assertEqual(g["tokenizer_json_sha256"], tok.sha256,
                         "%s: golden made from another tokenizer.json than tests/.cache/tok/%s" % (name, name))
        cases = g["cases"]
        self.assertEqual(g["n_cases"], len(cases))
        self.assertGreaterEqual(len(cases), 60)
        self.assertEqual(len({c["tag"] for c in cases}), len(cases), "duplicate tags")
        texts = {c["text"] for c in cases}
        for t in self.corpus:
            self.assertIn(t, texts, "%s: golden is stale, corpus string %r missing (rerun gen.mjs)" % (name, t))
        if name in NAIVE_BPE or name in NAIVE_BYTELEVEL:
            tok.setup_bpe()
        for c in cases:
            where = "%s [%s]" % (name, c["tag"])
            for i in c["ids_special"] + c["ids_plain"]:
                self.assertTrue(0 <= i < tok.n_ids, "%s: id %d out of range" % (where, i))
            self.assertEqual(c["ids_special"], tok.template(c["ids_plain"]), where + ": post-processor")
            self.assertEqual(c["decoded"], tok.decode(c["ids_special"], False), where + ": decode")
            self.assertEqual(c["decoded_skip"], tok.decode(c["ids_special"], True), where + ": decode skip")
            self.assertEqual("".join(c["stream"]) + c["stream_flush"], c["decoded"], where + ": stream")
            self.assertEqual("".join(c["stream_skip"]) + c["stream_skip_flush"], c["decoded_skip"],
                             where + ": stream skip")
            self.assertEqual(len(c["stream"]), len(c["ids_special"]), where)
            if name in NAIVE_BPE or name in NAIVE_BYTELEVEL:
                self.assertEqual(c["ids_plain"], tok.encode_plain(c["text"]), where + ": naive BPE encode")

    def test_llama2(self):
        self.check("llama2")

    def test_llama3(self):
        self.check("llama3")

    def test_qwen3(self):
        self.check("qwen3")

    def test_gemma3(self):
        self.check("gemma3")

    def test_t5(self):
        self.check("t5")

    def test_t5_flux(self):
        self.check("t5_flux")


if __name__ == "__main__":
    r = unittest.main(exit=False, verbosity=2).result
    failed = len(r.failures) + len(r.errors)
    print("%d passed, %d failed" % (r.testsRun - failed, failed))
    sys.exit(1 if failed else 0)
