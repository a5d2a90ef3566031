// example.mjs — the official OpenAI Node SDK talking to lorad.
//
//   cd clients/examples/node && npm ci
//   LORAD_URL=http://127.0.0.1:8080 LORAD_MODEL=my-org/my-adapter node example.mjs
//
// lorad speaks the OpenAI API under /v1: point baseURL there and put the adapter id in `model`
// (the base model's id, or no adapter, means the frozen base). The key is LORAD_API_KEY when
// lorad runs with --api-key / --api-keys; any string otherwise. The X-Adapter-Id header is only
// needed behind a router that cannot read bodies; the shipped nginx router reads `model` itself.
import OpenAI from "openai";

const base = (process.env.LORAD_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
const model = process.env.LORAD_MODEL || "default";
const client = new OpenAI({
  baseURL: `${base}/v1`,
  apiKey: process.env.LORAD_API_KEY || "unused",
  defaultHeaders: { "X-Adapter-Id": model },
  maxRetries: 0,
});

const prompt = process.env.LORAD_PROMPT || "Once upon a time";
const maxTokens = Number(process.env.LORAD_MAX_TOKENS || 16);

// 1. A legacy completion, greedy.
const c = await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0 });
console.log(JSON.stringify({ kind: "completion", text: c.choices[0].text }));

// 2. The same, streamed: the SDK parses lorad's Server-Sent Events.
let streamed = "";
const stream = await client.completions.create({
  model, prompt, max_tokens: maxTokens, temperature: 0, stream: true,
});
for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? "";
console.log(JSON.stringify({ kind: "completion_stream", text: streamed }));

// 3. The models lorad serves: the base, and every adapter with `parent` = the base id.
const models = [];
for await (const m of client.models.list()) models.push(m.id);
console.log(JSON.stringify({ kind: "models", ids: models }));

// 4. Chat, when the server has it (the model's own chat template renders the messages).
if (process.env.LORAD_CHAT !== "0") {
  const r = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: prompt }],
    max_tokens: maxTokens,
    temperature: 0,
  });
  console.log(JSON.stringify({ kind: "chat", text: r.choices[0].message.content }));
}
