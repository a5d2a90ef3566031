// gen.mjs — golden chat-template renderings for lorad, produced by @huggingface/jinja.
//
// How to regenerate (from the repository root; needs node + npm):
//     tests/jinja/fetch.sh && node tests/jinja/gen.mjs
// then review `git diff tests/data/jinja/` and commit the golden with whatever changed
// (cases.json, package.json + package-lock.json).
//
// What it does: for every template listed in shared/data/chat_templates/sources.json (shared/ is
// $LORAD_SHARED, else ../shared beside the repository) it checks the file's sha256 against
// sources.json, then renders it with @huggingface/jinja (version pinned in package.json and
// checked below) for every message list of cases.json, once with add_generation_prompt true and
// once false, passing the template's own bos_token / eos_token (omitted when sources.json says
// null, as transformers omits unset special tokens) and, for cases marked tools_only, only for
// templates with supports_tools. Each result goes to tests/data/jinja/golden.json as
//   {template, case, add_generation_prompt, context, output}            rendered text, or
//   {template, case, add_generation_prompt, context, error, raised}     the oracle refused:
// raised=true when the message is the text of one of the template's own raise_exception('…')
// calls (core/jinja must raise the same text), false for other errors (core/jinja must fail too,
// with its own message). The template sources are copied into golden.json so the C test
// (tests/unit/check_jinja.c) needs nothing else.
//
// Whitespace options: transformers renders with trim_blocks=True and lstrip_blocks=True (and
// keep_trailing_newline=False). @huggingface/jinja's Template class has no options: its constructor
// always tokenizes with {lstrip_blocks: true, trim_blocks: true} and drops one trailing newline
// of the source — the same settings, which is why we use Template as is.
//
// Where @huggingface/jinja and Python Jinja2 (what transformers runs) differ, core/jinja follows
// Jinja2 and the cases here avoid the difference. Known ones:
//   - `==` is JavaScript loose equality (`'' == false` is true; Jinja2: False);
//   - str.strip/lstrip/rstrip ignore their `chars` argument (Jinja2 strips only those chars);
//   - True/False/None print as true/false/"" (Jinja2: True/False/None); lists and dicts print as
//     JSON (Jinja2: Python repr);
//   - float values with a zero fraction arrive as JS integers (1.0 prints "1"; Jinja2 "1.0");
//   - `x | trim` on None is an error (Jinja2: "None"); string + non-string concatenates
//     (Jinja2: TypeError); attribute access on Undefined gives Undefined (Jinja2: UndefinedError);
//   - length counts UTF-16 units (Jinja2: code points);
//   - lstrip_blocks removes only spaces and tabs before a tag (Jinja2: any whitespace but
//     newlines, e.g. U+00A0 too); \r\n in the template stays (Jinja2 turns it into \n);
//     `{%+` / `+%}` are not understood.

import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const npmDir = path.join(root, 'tests/.cache/jinja-npm');
const outDir = path.join(root, 'tests/data/jinja');
const shared = process.env.LORAD_SHARED || path.resolve(root, '../shared');
const tplDir = path.join(shared, 'data/chat_templates');

function die(msg) {
    console.error(`jinja/gen.mjs: ${msg}`);
    process.exit(1);
}

// The oracle, exactly the pinned version.
const pkg = JSON.parse(readFileSync(path.join(here, 'package.json'), 'utf8'));
const want = pkg.dependencies['@huggingface/jinja'];
const require = createRequire(path.join(npmDir, 'package.json'));
let modPath;
try {
    modPath = require.resolve('@huggingface/jinja');
} catch {
    die(`@huggingface/jinja is not installed in ${npmDir}; run tests/jinja/fetch.sh`);
}
const got = JSON.parse(readFileSync(path.join(npmDir, 'node_modules/@huggingface/jinja/package.json'), 'utf8')).version;
if (got !== want)
    die(`installed @huggingface/jinja is ${got}, package.json pins ${want}; run tests/jinja/fetch.sh`);
const { Template } = await import(pathToFileURL(modPath.replace(/index\.cjs$/, 'index.js')).href);

const sources = JSON.parse(readFileSync(path.join(tplDir, 'sources.json'), 'utf8'));
const cases = JSON.parse(readFileSync(path.join(here, 'cases.json'), 'utf8')).cases;

// The messages of a template's raise_exception('...') calls (string literal arguments).
function raisedMessages(src) {
    const out = new Set();
    for (const m of src.matchAll(/raise_exception\(\s*(['"])((?:\\.|(?!\1).)*)\1\s*\)/gs))
        out.add(m[2].replace(/\\(.)/g, '$1'));
    return out;
}

const templates = {};
const goldens = [];
let nOut = 0, nRaised = 0, nOther = 0;
for (const s of sources) {
    const file = path.join(tplDir, `${s.name}.jinja`);
    const src = readFileSync(file, 'utf8');
    const sha = createHash('sha256').update(readFileSync(file)).digest('hex');
    if (sha !== s.sha256)
        die(`${file}: sha256 ${sha} differs from sources.json (${s.sha256})`);
    templates[s.name] = src;
    const tpl = new Template(src);
    const raises = raisedMessages(src);
    for (const c of cases) {
        if (c.tools_only && !s.supports_tools)
            continue;
        for (const agp of [true, false]) {
            const context = { messages: c.messages, add_generation_prompt: agp };
            if (c.tools)
                context.tools = c.tools;
            if (s.bos_token !== null)
                context.bos_token = s.bos_token;
            if (s.eos_token !== null)
                context.eos_token = s.eos_token;
            Object.assign(context, c.extra || {});
            const g = { template: s.name, case: c.name, add_generation_prompt: agp, context };
            try {
                // structuredClone: the oracle must not see (or change) our objects
                g.output = tpl.render(structuredClone(context));
                nOut++;
            } catch (e) {
                g.error = String(e.message);
                g.raised = raises.has(g.error);
                if (g.raised) nRaised++; else nOther++;
            }
            goldens.push(g);
        }
    }
}

mkdirSync(outDir, { recursive: true });
const doc = {
    oracle: `@huggingface/jinja@${got}`,
    note: 'generated by tests/jinja/gen.mjs; do not edit',
    templates,
    goldens,
};
writeFileSync(path.join(outDir, 'golden.json'), JSON.stringify(doc, null, 1) + '\n');
console.log(`jinja/gen.mjs: ${Object.keys(templates).length} templates, ${goldens.length} goldens ` +
            `(${nOut} rendered, ${nRaised} raise_exception, ${nOther} other errors)`);
