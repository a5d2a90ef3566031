// openai_sdk.mjs — drives lorad with the official `openai` npm package (the copy installed in
// clients/examples/node) for tests/e2e/test_api.py. Prints one JSON line per result; the Python
// side decides what is right. Env: LORAD_URL, LORAD_MODEL (an adapter id), LORAD_SDK_DIR.
import { createRequire } from "node:module";

const require = createRequire(process.env.LORAD_SDK_DIR + "/package.json");
const OpenAI = require("openai");
const client = new OpenAI({ baseURL: process.env.LORAD_URL + "/v1", apiKey: "unused", maxRetries: 0 });
const model = process.env.LORAD_MODEL;
const out = (kind, v) => console.log(JSON.stringify({ kind, ...v }));
const prompt = "The quick brown fox";
const msgs = [{ role: "system", content: "Be brief." }, { role: "user", content: "Tell me about foxes" }];

const models = await client.models.list();
out("models", { ids: models.data.map((m) => m.id), parents: models.data.map((m) => m.parent ?? null) });

const c = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0 });
out("completion", { text: c.choices[0].text, usage: c.usage, finish: c.choices[0].finish_reason });

let text = "", usage = null, n = 0;
const cs = await client.completions.create({
  model, prompt, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
});
for await (const ch of cs) {
  n++;
  if (ch.choices.length) text += ch.choices[0].text;
  if (ch.usage) usage = ch.usage;
}
out("completion_stream", { text, usage, chunks: n });

const k = await client.chat.completions.create({ model, messages: msgs, max_completion_tokens: 12, temperature: 0 });
out("chat", { text: k.choices[0].message.content, role: k.choices[0].message.role, usage: k.usage,
              finish: k.choices[0].finish_reason });

text = ""; usage = null; n = 0;
let role = null, finish = null;
const ks = await client.chat.completions.create({
  model, messages: msgs, max_completion_tokens: 12, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
for await (const ch of ks) {
  n++;
  if (ch.choices.length) {
    if (ch.choices[0].delta.role) role = role ?? ch.choices[0].delta.role;
    text += ch.choices[0].delta.content ?? "";
    finish = ch.choices[0].finish_reason ?? finish;
  }
  if (ch.usage) usage = ch.usage;
}
out("chat_stream", { text, usage, chunks: n, role, finish });

const seeded = [];
for (let i = 0; i < 2; i++) {
  const s = await client.chat.completions.create({ model, messages: msgs, max_completion_tokens: 12,
                                                  temperature: 1, seed: 1234 });
  seeded.push(s.choices[0].message.content);
}
const other = await client.chat.completions.create({ model, messages: msgs, max_completion_tokens: 12,
                                                    temperature: 1, seed: 99 });
const cseed = [];
for (let i = 0; i < 2; i++) {
  const s = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 1, seed: 77 });
  cseed.push(s.choices[0].text);
}
out("seed", { chat: seeded, chat_other: other.choices[0].message.content, completion: cseed });

try {
  await client.completions.create({ model: "no-such-adapter-xyz", prompt, max_tokens: 2 });
  out("notfound", { ok: false });
} catch (e) {
  out("notfound", { status: e.status, cls: e.constructor.name, isNotFound: e instanceof OpenAI.NotFoundError,
                    message: e.message });
}
try {
  await client.chat.completions.create({ model, messages: msgs, response_format: { type: "json_object" } });
  out("badrequest", { ok: false });
} catch (e) {
  out("badrequest", { status: e.status, isBadRequest: e instanceof OpenAI.BadRequestError, param: e.param ?? null,
                      message: e.message });
}
