#!/usr/bin/python3
"""Self-checks of the float64 reference (ref.py) and the generators, against hand-computed values,
the test vectors of SPEC-HF.md B.4, and a naive scalar-loop transcription of the forward pass.

Run: /usr/bin/python3 tests/ref/test_ref_selfcheck.py   (LORAD_MODELS: where test models live;
missing presets are generated there.)
"""

import copy
import json
import math
import os
import struct
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import bpe_tok  # noqa: E402
import gen_adapter  # noqa: E402
import gen_model  # noqa: E402
import merge_adapter  # noqa: E402
import ref  # noqa: E402
import safetensors_io as st  # noqa: E402

MODELS = os.environ.get("LORAD_MODELS", os.path.join(ROOT, "build", "testmodels"))


def _json(path):
    with open(path) as f:
        return json.load(f)


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def model_dir(name):
    d = os.path.join(MODELS, name)
    gen_model.generate(name, d)
    return d


class RmsNorm(unittest.TestCase):
    def test_hand_case(self):
        # x = [1, 2, 3, 4]: mean of squares = 30/4 = 7.5; eps inside the sqrt.
        x = np.array([1.0, 2.0, 3.0, 4.0])
        w = np.array([1.0, 1.0, 2.0, 0.5])
        inv = 1.0 / math.sqrt(7.5 + 1e-5)
        want = [1 * inv, 2 * inv, 6 * inv, 2 * inv]
        np.testing.assert_allclose(ref.rms_norm(x, w, 1e-5), want, rtol=1e-15)

    def test_no_mean_subtraction(self):
        x = np.array([[5.0, 5.0]])
        np.testing.assert_allclose(ref.rms_norm(x, np.ones(2), 0.0), [[1.0, 1.0]], rtol=1e-15)


class Rope(unittest.TestCase):
    def test_default_inv_freq_vectors(self):
        # SPEC B.4 (verified with torch).
        inv = ref.rope_inv_freq(500000.0, 128)
        self.assertEqual(inv.dtype, np.float32)
        self.assertEqual(len(inv), 64)
        for k, v in ((1, 8.146172166e-01), (20, 1.656044088e-02), (30, 2.131119603e-03),
                     (63, 2.455140702e-06)):
            self.assertAlmostEqual(float(inv[k]) / v, 1.0, delta=2e-7, msg="k=%d" % k)
        inv = ref.rope_inv_freq(10000.0, 64)
        self.assertAlmostEqual(float(inv[1]) / 7.498942018e-01, 1.0, delta=2e-7)
        self.assertAlmostEqual(float(inv[31]) / 1.333521504e-04, 1.0, delta=2e-7)
        self.assertEqual(float(inv[0]), 1.0)

    def test_llama3_vectors(self):
        sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
        base = ref.rope_inv_freq(500000.0, 128)
        inv = ref.rope_inv_freq(500000.0, 128, sc)
        self.assertAlmostEqual(float(inv[30]) / 1.371893683e-03, 1.0, delta=2e-7)
        self.assertAlmostEqual(float(base[30] / inv[30]), 1.553415, delta=2e-6)
        self.assertAlmostEqual(float(inv[40]) / 3.428102355e-05, 1.0, delta=2e-7)
        self.assertAlmostEqual(float(inv[63]) / 3.068925878e-07, 1.0, delta=2e-7)
        self.assertAlmostEqual(float(base[63] / inv[63]), 8.0, delta=1e-6)
        for k in range(21):
            self.assertEqual(inv[k], base[k], "k=%d must be unchanged" % k)

    def test_linear_divides(self):
        base = ref.rope_inv_freq(10000.0, 16)
        inv = ref.rope_inv_freq(10000.0, 16, {"rope_type": "linear", "factor": 4.0})
        np.testing.assert_array_equal(inv, base / np.float32(4))

    def test_rotate_half_is_pairwise_rotation(self):
        # hd 4, half 2: dims (0,2) rotate by angle pos*inv0, dims (1,3) by pos*inv1.
        inv = ref.rope_inv_freq(10000.0, 4)  # [1, 0.01]
        cos, sin = ref.rope_tables(inv, [3])
        v = np.array([[[1.0, 2.0, 3.0, 4.0]]])
        out = ref.apply_rope(v, cos, sin, 4)[0, 0]
        a0, a1 = 3 * 1.0, 3 * float(inv[1])
        want = [1 * math.cos(a0) - 3 * math.sin(a0), 2 * math.cos(a1) - 4 * math.sin(a1),
                3 * math.cos(a0) + 1 * math.sin(a0), 4 * math.cos(a1) + 2 * math.sin(a1)]
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)  # fp32 tables

    def test_config_spellings(self):
        self.assertEqual(ref._rope_params({"rope_scaling": {"type": "linear", "factor": 2.0}})[1]["rope_type"],
                         "linear")
        th, sc = ref._rope_params({"rope_parameters": {"rope_type": "default", "rope_theta": 5.0}})
        self.assertEqual((th, sc), (5.0, None))


class Safetensors(unittest.TestCase):
    def test_layout(self):
        t = {"b": (np.arange(3, dtype=np.float32), "F16"), "a": (np.ones((2, 2)), "F32"),
             "c": (np.array([1.5]), "BF16"), "z": (np.zeros(1), "F32")}
        data = st.serialize(t)
        (n,) = struct.unpack("<Q", data[:8])
        self.assertEqual(n % 8, 0)
        hdr = data[8:8 + n].decode()
        self.assertTrue(hdr.startswith('{"__metadata__":{"format":"pt"},"a":'))
        h = json.loads(hdr)
        # F32 first (a, z by name), then BF16, then F16.
        self.assertEqual(h["a"]["data_offsets"], [0, 16])
        self.assertEqual(h["z"]["data_offsets"], [16, 20])
        self.assertEqual(h["c"]["data_offsets"], [20, 22])
        self.assertEqual(h["b"]["data_offsets"], [22, 28])
        self.assertEqual(len(data), 8 + n + 28)
        self.assertEqual(data[8 + n + 20:8 + n + 22], struct.pack("<H", 0x3FC0))  # bf16(1.5)
        self.assertEqual(data[8 + n + 24:8 + n + 26], struct.pack("<H", 0x3C00))  # f16(1.0)

    def test_bf16_round_to_nearest_even(self):
        f = lambda bits: np.array([bits], dtype=np.uint32).view(np.float32)  # noqa: E731
        cases = [(0x3F808000, 0x3F80),  # exactly half, even below -> down
                 (0x3F818000, 0x3F82),  # exactly half, odd below -> up
                 (0x3F808001, 0x3F81),  # above half -> up
                 (0x3F807FFF, 0x3F80),  # below half -> down
                 (0xBF800000, 0xBF80)]  # -1.0
        for src, want in cases:
            self.assertEqual(int(st.f32_to_bf16_bits(f(src))[0]), want, hex(src))
        self.assertTrue(np.isnan(st.bf16_bits_to_f32(st.f32_to_bf16_bits(np.array([np.nan])))[0]))

    def test_round_trip_and_strictness(self):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((5, 7)).astype(np.float32)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "x.safetensors")
            st.save_file({"w32": (a, "F32"), "w16": (a, "F16"), "wb": (a, "BF16")}, p)
            got, dts = st.load_file(p)
            np.testing.assert_array_equal(got["w32"], a)
            np.testing.assert_array_equal(got["w16"], a.astype(np.float16).astype(np.float64))
            self.assertTrue(np.all(np.abs(got["wb"] - a) <= np.abs(a) * 2 ** -8))
            self.assertEqual(dts, {"w32": "F32", "w16": "F16", "wb": "BF16"})
            data = _bytes(p)
            with self.assertRaises(st.FormatError):
                st.parse(data[:-1])
            with self.assertRaises(st.FormatError):
                st.parse(struct.pack("<Q", 10 ** 9) + data[8:])

    def test_sharded(self):
        t = {"l%d" % i: (np.full((4, 4), i, dtype=np.float32), "F32") for i in range(7)}
        with tempfile.TemporaryDirectory() as d:
            st.save_sharded(t, d, 3)
            idx = _json(os.path.join(d, "model.safetensors.index.json"))
            self.assertEqual(idx["metadata"]["total_size"], 7 * 64)
            self.assertEqual(len(set(idx["weight_map"].values())), 3)
            self.assertIn("model-00002-of-00003.safetensors", idx["weight_map"].values())
            got, _ = st.load_folder(d)
            for i in range(7):
                self.assertTrue(np.all(got["l%d" % i] == i))


class Tokenizer(unittest.TestCase):
    def test_byte_map(self):
        order, b2u = bpe_tok.bytes_to_unicode()
        self.assertEqual(sorted(order), list(range(256)))
        self.assertEqual(b2u[0x20], "\u0120")
        self.assertEqual(b2u[0x0A], "\u010a")
        self.assertEqual(b2u[0x7F], "\u0121")
        self.assertEqual(b2u[0xAD], "\u0143")
        self.assertEqual(b2u[ord("A")], "A")

    def test_generated_files_consistent(self):
        for name in ("default", "qwen2_bias", "mistral_sw"):
            d = model_dir(name)
            cfg = _json(os.path.join(d, "config.json"))
            tok = _json(os.path.join(d, "tokenizer.json"))
            vocab = tok["model"]["vocab"]
            ids = sorted(vocab.values()) + [a["id"] for a in tok["added_tokens"]]
            self.assertEqual(sorted(ids), list(range(cfg["vocab_size"])), name)
            for a, b in tok["model"]["merges"]:
                self.assertIn(a, vocab)
                self.assertIn(b, vocab)
                self.assertIn(a + b, vocab)
            tc = _json(os.path.join(d, "tokenizer_config.json"))
            self.assertIn("<|im_start|>", tc["chat_template"])
            gc = _json(os.path.join(d, "generation_config.json"))
            self.assertEqual(len(gc["eos_token_id"]), 2)


class TokenizerPadding(unittest.TestCase):
    def test_large_vocab_is_padded_with_decodable_tokens(self):
        tok, specials = bpe_tok.build(32000, "llama3")
        vocab = tok["model"]["vocab"]
        self.assertEqual(len(vocab) + len(specials), 32000)
        self.assertEqual(sorted(vocab.values()), list(range(len(vocab))))
        self.assertEqual(specials["<|begin_of_text|>"], len(vocab))
        _, b2u = bpe_tok.bytes_to_unicode()
        alphabet = set(b2u.values())
        self.assertTrue(all(set(t) <= alphabet for t in vocab))


def naive_forward(m, ids, loras=None, embed_lora=None):
    """Scalar-loop transcription of SPEC B.3-B.5 + D.3/D.5, for tiny models only."""
    loras = loras or {}
    H, nH, nKV, hd, eps = m["H"], m["nH"], m["nKV"], m["hd"], m["eps"]
    w = m["w"]
    T = len(ids)

    def matvec(Wt, x, b=None):
        return [sum(Wt[o][i] * x[i] for i in range(len(x))) + (b[o] if b is not None else 0.0)
                for o in range(len(Wt))]

    def lin(layer, name, x):
        sub = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        key = "model.layers.%d.%s.%s" % (layer, sub, name)
        W = w[key + ".weight"].tolist()
        b = w.get(key + ".bias")
        b = None if b is None else b.tolist()
        base = matvec(W, x)
        y = [base[o] + (b[o] if b else 0.0) for o in range(len(base))]
        lo = loras.get((layer, name))
        if lo:
            t = matvec(lo["A"].tolist(), x)
            u = matvec(lo["B"].tolist(), t)
            if "mag" in lo:
                for o in range(len(y)):
                    row = [W[o][i] + lo["s"] * sum(lo["B"][o][k] * lo["A"][k][i] for k in range(len(t)))
                           for i in range(len(x))]
                    f = lo["mag"][o] / math.sqrt(sum(v * v for v in row))
                    y[o] = (b[o] if b else 0.0) + f * (base[o] + lo["s"] * u[o])
            else:
                y = [y[o] + lo["s"] * u[o] for o in range(len(y))]
        return y

    def norm(x, wt):
        ms = sum(v * v for v in x) / len(x)
        return [wt[i] * x[i] / math.sqrt(ms + eps) for i in range(len(x))]

    E = w["model.embed_tokens.weight"]
    hs = []
    for t in ids:
        row = E[t].tolist()
        if embed_lora:
            A, B, s = embed_lora["A"], embed_lora["B"], embed_lora["s"]
            row = [row[j] + s * sum(B[j][k] * A[k][t] for k in range(A.shape[0])) for j in range(H)]
        hs.append(row)
    inv = m["inv_freq"]
    for L in range(m["L"]):
        pre = "model.layers.%d." % L
        xs = [norm(h, w[pre + "input_layernorm.weight"]) for h in hs]
        qs = [lin(L, "q_proj", x) for x in xs]
        ks = [lin(L, "k_proj", x) for x in xs]
        vs = [lin(L, "v_proj", x) for x in xs]

        def rope(vec, pos):
            out = list(vec)
            for hh in range(len(vec) // hd):
                for k in range(hd // 2):
                    ang = np.float32(np.float32(pos) * inv[k])
                    c, s = float(np.cos(ang)), float(np.sin(ang))
                    a, b = vec[hh * hd + k], vec[hh * hd + k + hd // 2]
                    out[hh * hd + k] = a * c - b * s
                    out[hh * hd + k + hd // 2] = b * c + a * s
            return out

        qs = [rope(q, p) for p, q in enumerate(qs)]
        ks = [rope(k, p) for p, k in enumerate(ks)]
        win = m["window"][L]
        outs = []
        for i in range(T):
            o = []
            for hh in range(nH):
                kv = hh // (nH // nKV)
                js = [j for j in range(T) if j <= i and (not win or j > i - win)]
                sc = [sum(qs[i][hh * hd + d] * ks[j][kv * hd + d] for d in range(hd)) / math.sqrt(hd)
                      for j in js]
                mx = max(sc)
                ex = [math.exp(s - mx) for s in sc]
                z = sum(ex)
                o += [sum(ex[n] / z * vs[j][kv * hd + d] for n, j in enumerate(js)) for d in range(hd)]
            outs.append(o)
        hs = [[h[j] + a[j] for j in range(H)] for h, a in zip(hs, (lin(L, "o_proj", o) for o in outs))]
        xs = [norm(h, w[pre + "post_attention_layernorm.weight"]) for h in hs]
        new = []
        for h, x in zip(hs, xs):
            g, u = lin(L, "gate_proj", x), lin(L, "up_proj", x)
            act = [g[i] / (1 + math.exp(-g[i])) * u[i] for i in range(len(g))]
            d = lin(L, "down_proj", act)
            new.append([h[j] + d[j] for j in range(H)])
        hs = new
    hs = [norm(h, w["model.norm.weight"]) for h in hs]
    head = m["lm_head"].tolist()
    return np.array([matvec(head, h) for h in hs])


def tiny_model(window=None, tie=False, q_bias=True):
    rng = np.random.default_rng(5)
    H, I, V, hd, nH, nKV = 8, 6, 11, 4, 4, 2
    w = {"model.embed_tokens.weight": rng.standard_normal((V, H)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(H)}
    for n, shp in (("self_attn.q_proj", (nH * hd, H)), ("self_attn.k_proj", (nKV * hd, H)),
                   ("self_attn.v_proj", (nKV * hd, H)), ("self_attn.o_proj", (H, nH * hd)),
                   ("mlp.gate_proj", (I, H)), ("mlp.up_proj", (I, H)), ("mlp.down_proj", (H, I))):
        w["model.layers.0.%s.weight" % n] = rng.standard_normal(shp) / math.sqrt(shp[1])
    if q_bias:
        w["model.layers.0.self_attn.q_proj.bias"] = rng.standard_normal(nH * hd)
        w["model.layers.0.self_attn.v_proj.bias"] = rng.standard_normal(nKV * hd)
    w["model.layers.0.input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(H)
    w["model.layers.0.post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(H)
    w["lm_head.weight"] = rng.standard_normal((V, H))
    m = {"cfg": {"tie_word_embeddings": tie}, "w": w, "H": H, "nH": nH, "nKV": nKV, "hd": hd, "L": 1,
         "V": V, "eps": 1e-5, "d_rot": hd, "inv_freq": ref.rope_inv_freq(10000.0, hd),
         "window": [window], "lm_head": w["model.embed_tokens.weight"] if tie else w["lm_head.weight"]}
    return m, rng


class ForwardVsNaive(unittest.TestCase):
    def test_base(self):
        m, _ = tiny_model()
        ids = [3, 1, 4, 1, 5, 9]
        np.testing.assert_allclose(ref.forward(m, [], ids), naive_forward(m, ids), rtol=1e-10, atol=1e-10)

    def test_sliding_window_and_tied(self):
        m, _ = tiny_model(window=2, tie=True)
        ids = [3, 1, 4, 1, 5, 9, 2]
        got = ref.forward(m, [], ids)
        np.testing.assert_allclose(got, naive_forward(m, ids), rtol=1e-10, atol=1e-10)
        m2, _ = tiny_model(window=None, tie=True)
        self.assertGreater(np.abs(got[-1] - ref.forward(m2, [], ids)[-1]).max(), 1e-3)

    def test_lora_dora_embedding(self):
        m, rng = tiny_model()
        r = 2
        A = rng.standard_normal((r, 8))
        B = rng.standard_normal((8, r))
        Wv = m["w"]["model.layers.0.self_attn.v_proj.weight"]
        mag = np.abs(rng.standard_normal(8)) + 0.5
        Aq, Bq = rng.standard_normal((r, 8)), rng.standard_normal((16, r))
        Ad, Bd = rng.standard_normal((r, 6)), rng.standard_normal((8, r))
        Ae, Be = rng.standard_normal((r, 11)), rng.standard_normal((8, r))
        ad = {"mods": {(0, "q_proj"): {"A": Aq, "B": Bq, "s": 0.7, "bB": None},
                       (0, "down_proj"): {"A": Ad, "B": Bd, "s": 1.5, "bB": None},
                       (0, "v_proj"): {"A": A, "B": B, "s": 0.5, "bB": None,
                                       "dora_factor": mag / np.linalg.norm(Wv + 0.5 * B @ A, axis=1)}},
              "embed": {"A": Ae, "B": Be, "s": 2.0, "base": None}, "biases": {}}
        naive_loras = {(0, "q_proj"): {"A": Aq, "B": Bq, "s": 0.7},
                       (0, "down_proj"): {"A": Ad, "B": Bd, "s": 1.5},
                       (0, "v_proj"): {"A": A, "B": B, "s": 0.5, "mag": mag}}
        ids = [0, 10, 7, 7, 2]
        np.testing.assert_allclose(ref.forward(m, [ad], ids),
                                   naive_forward(m, ids, naive_loras, {"A": Ae, "B": Be, "s": 2.0}),
                                   rtol=1e-10, atol=1e-10)


class Targeting(unittest.TestCase):
    def test_patterns(self):
        pats = {"q_proj": 4, "layers.1.mlp.down_proj": 2}
        self.assertEqual(ref._pattern_value(pats, "model.layers.0.self_attn.q_proj", 8), 4)
        self.assertEqual(ref._pattern_value(pats, "model.layers.1.mlp.down_proj", 8), 2)
        self.assertEqual(ref._pattern_value(pats, "model.layers.11.mlp.down_proj", 8), 8)
        self.assertEqual(ref._pattern_value({"proj": 3}, "model.layers.0.self_attn.q_proj", 8), 8)

    def test_targets(self):
        k = "model.layers.1.self_attn.q_proj"
        self.assertTrue(ref._is_target({"target_modules": ["q_proj"]}, k))
        self.assertFalse(ref._is_target({"target_modules": ["proj"]}, k))
        self.assertTrue(ref._is_target({"target_modules": ["self_attn.q_proj"]}, k))
        self.assertTrue(ref._is_target({"target_modules": r".*\.q_proj"}, k))
        self.assertFalse(ref._is_target({"target_modules": r"q_proj"}, k))
        self.assertTrue(ref._is_target({"target_modules": ["q_proj"], "layers_to_transform": [1],
                                        "layers_pattern": "layers"}, k))
        self.assertFalse(ref._is_target({"target_modules": ["q_proj"], "layers_to_transform": 0}, k))
        self.assertFalse(ref._is_target({"target_modules": ["q_proj"], "exclude_modules": ["q_proj"]}, k))


class Presets(unittest.TestCase):
    """Each preset's special feature must actually change the greedy output."""

    def _tokens(self, m, prompt):
        return ref.generate(m, [], prompt, gen_model.PARITY_MAX_TOKENS)["tokens"]

    def _differs(self, name, mutate):
        m = ref.load_model(model_dir(name))
        prompt = gen_model.parity_prompts(gen_model.preset_config(name))[2]
        m2 = copy.copy(m)
        mutate(m2)
        self.assertNotEqual(self._tokens(m, prompt), self._tokens(m2, prompt), name)

    def test_sliding_window_matters(self):
        self._differs("mistral_sw", lambda m: m.update(window=[None] * m["L"]))

    def test_qwen2_window_is_off(self):
        m = ref.load_model(model_dir("qwen2_bias"))
        self.assertEqual(m["window"], [None] * m["L"])
        self._differs("qwen2_bias", lambda m: m.update(window=[None] + [4] * (m["L"] - 1)))

    def test_llama3_scaling_matters(self):
        self._differs("llama3_rope", lambda m: m.update(inv_freq=ref.rope_inv_freq(500000.0, m["d_rot"])))

    def test_linear_scaling_matters(self):
        self._differs("rope_linear", lambda m: m.update(inv_freq=ref.rope_inv_freq(10000.0, m["d_rot"])))

    def test_shapes(self):
        m = ref.load_model(model_dir("head_dim"))
        self.assertEqual(m["w"]["model.layers.0.self_attn.q_proj.weight"].shape, (96, 64))
        m = ref.load_model(model_dir("gqa"))
        self.assertEqual(m["nH"], 4 * m["nKV"])
        self.assertTrue(_json(os.path.join(model_dir("sharded"), "model.safetensors.index.json")))
        m = ref.load_model(model_dir("llama_bf16"))
        self.assertEqual(set(m["dtypes"].values()), {"BF16"})

    def test_greedy_gaps(self):
        for name, v in gen_model.PRESETS.items():
            if not v.get("test", True):
                continue
            gap = gen_model.check_gaps(name, model_dir(name))
            self.assertGreater(gap, 2e-3, name)

    def test_deterministic(self):
        with tempfile.TemporaryDirectory() as d:
            gen_model.generate("llama_f32", os.path.join(d, "a"))
            gen_model.generate("llama_f32", os.path.join(d, "b"))
            for f in ("model.safetensors", "tokenizer.json", "config.json"):
                self.assertEqual(_bytes(os.path.join(d, "a", f)), _bytes(os.path.join(d, "b", f)), f)


class Adapters(unittest.TestCase):
    def setUp(self):
        self.base = model_dir("default")
        self.tmp = tempfile.TemporaryDirectory()
        self.m = ref.load_model(self.base)

    def tearDown(self):
        self.tmp.cleanup()

    def _ad(self, variant):
        d = os.path.join(self.tmp.name, variant)
        gen_adapter.generate(self.base, variant, d)
        return d, ref.load_adapter(d, self.m)

    def test_patterns_ranks(self):
        _, ad = self._ad("patterns")
        self.assertEqual(ad["mods"][(0, "q_proj")]["A"].shape[0], 4)
        self.assertEqual(ad["mods"][(1, "down_proj")]["A"].shape[0], 2)
        self.assertEqual(ad["mods"][(2, "down_proj")]["A"].shape[0], 8)
        self.assertAlmostEqual(ad["mods"][(0, "v_proj")]["s"], 32 / 8)
        self.assertAlmostEqual(ad["mods"][(0, "down_proj")]["s"], 4 / 8)
        self.assertAlmostEqual(ad["mods"][(1, "down_proj")]["s"], 4 / 2)

    def test_rslora_scaling(self):
        _, ad = self._ad("rslora")
        self.assertAlmostEqual(ad["mods"][(0, "q_proj")]["s"], 8 / 4.0)

    def test_layers_and_regex(self):
        _, ad = self._ad("layers")
        self.assertEqual({k[0] for k in ad["mods"]}, {1})
        self.assertEqual(len(ad["mods"]), 7)
        _, ad = self._ad("regex")
        self.assertEqual(sorted(ad["mods"]), [(0, "q_proj"), (0, "up_proj"), (0, "v_proj"),
                                              (1, "up_proj"), (2, "up_proj"), (3, "up_proj")])

    def test_noprefix_equals_prefixed(self):
        # The same tensors under both key spellings must give the same adapter.
        d, ad = self._ad("noprefix")
        t, dt = st.load_file(os.path.join(d, "adapter_model.safetensors"))
        st.save_file({"base_model.model." + k: (v, dt[k]) for k, v in t.items()},
                     os.path.join(d, "adapter_model.safetensors"))
        ad2 = ref.load_adapter(d, self.m)
        self.assertEqual(sorted(ad["mods"]), sorted(ad2["mods"]))
        self.assertEqual(len(ad["mods"]), 12)

    def test_adapters_change_output_and_merge_matches(self):
        prompt = gen_model.parity_prompts(gen_model.preset_config("default"))[1]
        base = ref.generate(self.m, [], prompt, 8)["tokens"]
        for v in ("qv", "dora", "embed", "patterns"):
            d, ad = self._ad(v)
            res = ref.generate(self.m, [ad], prompt, 8)
            self.assertNotEqual(res["tokens"], base, v)
            merged = os.path.join(self.tmp.name, v + "_merged")
            merge_adapter.merge(self.base, [(d, 1.0)], merged)
            mm = ref.load_model(merged)
            ids = prompt + res["tokens"]
            np.testing.assert_allclose(ref.forward(mm, [], ids), ref.forward(self.m, [ad], ids),
                                       atol=1e-4, err_msg=v)

    def test_scale_zero_is_base_and_mix_adds(self):
        d0, _ = self._ad("t0")
        d1, _ = self._ad("t1")
        ids = [1, 2, 3, 4]
        z = ref.load_adapter(d0, self.m, 0.0)
        np.testing.assert_allclose(ref.forward(self.m, [z], ids), ref.forward(self.m, [], ids), atol=1e-12)
        # A mix of t0 (q,v) and t1 (all 7) in layer-0 q_proj output equals the sum of deltas.
        a0, a1 = ref.load_adapter(d0, self.m, 0.5), ref.load_adapter(d1, self.m, 2.0)
        x = np.random.default_rng(1).standard_normal((3, 128))
        y = ref.linear(self.m, [a0, a1], 0, "q_proj", x)
        yb = ref.linear(self.m, [], 0, "q_proj", x)
        d = lambda a: a["s"] * (x @ a["A"].T) @ a["B"].T  # noqa: E731
        np.testing.assert_allclose(y, yb + d(a0["mods"][(0, "q_proj")]) + d(a1["mods"][(0, "q_proj")]),
                                   atol=1e-12)


if __name__ == "__main__":
    unittest.main(verbosity=2)
