"""A tiny deterministic byte-level BPE trainer and tokenizer.json writer for generated test models.

The files follow the shapes HF converters write (SPEC-HF.md E.2, E.7):
  style "llama3": Split(P3, Isolated) + ByteLevel(use_regex false), BPE ignore_merges true,
                  post-processor Sequence[ByteLevel, TemplateProcessing("<|begin_of_text|> $A")];
  style "qwen2":  NFC normalizer, Split(P2) + ByteLevel, ignore_merges false, ByteLevel
                  post-processor, no BOS;
  style "gpt2":   ByteLevel(use_regex true) pre-tokenizer, ByteLevel post-processor, no BOS.
All use the ByteLevel decoder. Ids: 256 byte tokens first (in bytes_to_unicode order, as GPT-2's
vocab), then merged tokens in merge order, then the special added tokens.

Training: words are counted after a simple ASCII approximation of the pre-tokenizer (exactness does
not matter there: merges are just data); then repeatedly the most frequent adjacent pair is merged,
ties broken by the lexicographically smallest pair, so the result is the same on every run.
"""

import collections
import re

P3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
      r"|\s*[\r\n]+|\s+(?!\S)|\s+")
P2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
      r"|\s*[\r\n]+|\s+(?!\S)|\s+")

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>",
                  "<|pad|>", "<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>"]

CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n'"
                 " + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CORPUS = """\
The small model reads a sentence, one token at a time, and guesses what comes next. It does not
know the world; it only knows the numbers it was given. When the numbers are random, the guesses
are strange, but they are the same every time, and that is all a test needs. A test that cannot
fail is not a test. We check the engine against a reference that was written separately, in a
different language, with a different kind of arithmetic, and we compare every token and every
probability. If they agree, we trust both a little more. If they disagree, one of them is wrong,
and we go and find out which one.

Once upon a time there was a lighthouse keeper who lived on a rocky island far from the coast.
Every evening he climbed the two hundred and twelve steps of the tower, cleaned the great lens,
and lit the lamp. Ships passed in the night and he never saw the people on them, but he knew they
were there, and they knew he was there too. In the morning he wrote the weather in a thick book:
wind from the west, rain after midnight, the sea calm by dawn. He had kept the book for thirty
years. Nobody had ever asked to read it, and he did not mind.

Adapters are small. A base model has millions of weights, and an adapter changes only a few of
them, through two thin matrices whose product is added to the original weight. Many people can
share one base model, each with their own adapter, and the server can answer all of them in the
same pass. The weights of the base are read once; the adapters are applied on top, row by row,
request by request. This is cheaper than keeping a full copy of the model for every customer.

She opened the window and the cold air came in. Outside, the street was quiet. A cat walked along
the wall, stopped, looked at her, and walked on. The bakery on the corner had its lights on; the
baker was already working, as he did every morning at four o'clock. She made coffee, sat at the
table, and began to write the letter she had been putting off for weeks. "Dear Tom," she wrote,
and then she stopped, because she did not know what to say next. Would he still be angry? Could
she explain? She wasn't sure. In the end she wrote about the weather, the cat, and the bakery.

How to make bread: mix five hundred grams of flour, ten grams of salt, seven grams of yeast and
three hundred and fifty grams of warm water. Knead the dough for ten minutes until it is smooth.
Let it rise for one hour, fold it, and let it rise again. Bake at 230 degrees for 35 minutes.
The crust should be dark and the loaf should sound hollow when you tap the bottom. Let it cool
before you cut it, or the inside will be gummy. It's simple, but it takes practice; your first
loaves won't be perfect, and that's fine.

The river starts in the mountains as a thin stream of melted snow. It runs over stones, through
forests and fields, past villages and towns, and grows wider with every mile. By the time it
reaches the city it is deep and slow and brown, and boats carry wood, grain and people from one
bank to the other. At the sea it spreads into a wide delta where birds gather in the thousands.
Children learn its name at school, and old men fish from its bridges on Sunday afternoons.

Numbers: 1, 2, 3, 10, 42, 100, 1024, 2026, 3.14159, 0.5, 99 percent. Dates like 12/05/2024 and
times like 07:30 appear in text. Prices: $5, $19.99, 250 euros. Lists: first, second, third.
Questions? Answers! Quotes: "yes", 'no', (maybe). Code: x = y + 1; if (a < b) { return c; }

Good morning. How are you today? I'm fine, thank you, and you? We're going to the market later;
they've got fresh fish and the best apples in town. You'll like it. I'd come with you, but I have
work to do. Let's meet at the station at six, and we can walk home together along the river.
The people who built this town were farmers and traders, and their houses still stand today.
"""


def bytes_to_unicode():
    """GPT-2's byte -> printable char map (SPEC E.2). Returns (list of bytes in id order, dict)."""
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(0x100 + n)
            n += 1
    return bs, {b: chr(c) for b, c in zip(bs, cs)}


_TRAIN_SPLIT = re.compile(r"'(?:s|t|re|ve|m|ll|d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}"
                          r"| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train(n_merges, text=CORPUS):
    """Learn up to n_merges merges. Returns (vocab list of token strings in id order, merges list)."""
    order, b2u = bytes_to_unicode()
    vocab = [b2u[b] for b in order]
    known = set(vocab)
    counts = collections.Counter(_TRAIN_SPLIT.findall(text))
    words = [[list("".join(b2u[b] for b in w.encode("utf-8"))), c] for w, c in sorted(counts.items())]
    merges = []
    while len(merges) < n_merges:
        pairs = collections.Counter()
        for syms, c in words:
            for i in range(len(syms) - 1):
                pairs[(syms[i], syms[i + 1])] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        a, b = best
        merges.append(best)
        if a + b not in known:
            known.add(a + b)
            vocab.append(a + b)
        for w in words:
            syms, out, i = w[0], [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            w[0] = out
    return vocab, merges


_TRAINED = {}


def build(vocab_size, style="llama3"):
    """Return (tokenizer.json dict, special token ids dict) with exactly vocab_size ids in total
    (BPE tokens + len(SPECIAL_TOKENS))."""
    n_bpe = vocab_size - len(SPECIAL_TOKENS)
    if n_bpe < 256:
        raise ValueError("vocab_size %d too small for 256 byte tokens + specials" % vocab_size)
    if "full" not in _TRAINED:
        _TRAINED["full"] = train(2000)
    full_vocab, full_merges = _TRAINED["full"]
    # Take the shortest merge prefix that yields n_bpe distinct tokens.
    vocab, merges = full_vocab[:n_bpe], []
    have = set(vocab)
    for a, b in full_merges:
        if a not in have or b not in have or a + b not in have:
            break
        merges.append([a, b])
    # Past what the corpus can teach (the 32000-id benchmark model), pad with decode-only filler
    # tokens " tok<N>": reachable by no merge (the pre-tokenizer splits digits off), but every id
    # the model can emit still decodes to text.
    n_fill = 0
    while len(vocab) < n_bpe:
        tok = "\u0120tok%d" % n_fill
        n_fill += 1
        if tok not in have:
            vocab.append(tok)
    vocab_map = {t: i for i, t in enumerate(vocab)}
    specials = {}
    added = []
    for j, s in enumerate(SPECIAL_TOKENS):
        sid = len(vocab) + j
        specials[s] = sid
        added.append({"id": sid, "content": s, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if style == "llama3":
        normalizer = None
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": P3}, "behavior": "Isolated", "invert": False},
            dict(bl, use_regex=False)]}
        bos = "<|begin_of_text|>"
        post = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [specials[bos]], "tokens": [bos]}}}]}
        ignore_merges = True
    elif style == "qwen2":
        normalizer = {"type": "NFC"}
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": P2}, "behavior": "Isolated", "invert": False},
            dict(bl, use_regex=False)]}
        post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        ignore_merges = False
    elif style == "gpt2":
        normalizer = None
        pre = dict(bl)
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        ignore_merges = False
    else:
        raise ValueError("unknown tokenizer style %r" % style)
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab_map, "merges": merges},
    }
    return tok, specials


def tokenizer_config(style, specials, model_max_length):
    """tokenizer_config.json as transformers' PreTrainedTokenizerFast.save_pretrained writes it."""
    decoder = {}
    for s, i in specials.items():
        decoder[str(i)] = {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True}
    has_bos = style == "llama3"
    return {
        "add_bos_token": has_bos,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<|begin_of_text|>" if has_bos else None,
        "chat_template": CHAT_TEMPLATE if has_bos else CHAT_TEMPLATE.replace("{{ bos_token }}", ""),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "pad_token": "<|pad|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
