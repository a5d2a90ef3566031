#!/usr/bin/env python3
"""The official OpenAI Python SDK talking to lorad.

    pip install openai          # (PyPI; not a Debian package)
    LORAD_URL=http://127.0.0.1:8080 LORAD_MODEL=my-org/my-adapter python3 openai_example.py

lorad speaks the OpenAI API under /v1: point base_url there and put the adapter id in `model`
(the base model's id, or no adapter, means the frozen base). The key is LORAD_API_KEY when lorad
runs with --api-key / --api-keys; any string otherwise. X-Adapter-Id is only needed behind a
router that cannot read bodies; the shipped nginx router reads `model` itself.

Note: PyPI is out of reach of our test machines, so unlike the Node example (run by
tests/deploy/test_openai_node.py) this file is not executed by the tests; it uses the same calls.
"""

import os

from openai import OpenAI

base = os.environ.get("LORAD_URL", "http://127.0.0.1:8080").rstrip("/")
model = os.environ.get("LORAD_MODEL", "default")
client = OpenAI(base_url=base + "/v1", api_key=os.environ.get("LORAD_API_KEY", "unused"),
                default_headers={"X-Adapter-Id": model}, max_retries=0)
prompt = os.environ.get("LORAD_PROMPT", "Once upon a time")

# 1. A legacy completion, greedy.
c = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
print("completion:", repr(c.choices[0].text))

# 2. The same, streamed.
text = ""
for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0,
                                       stream=True):
    text += chunk.choices[0].text if chunk.choices else ""
print("streamed:  ", repr(text))

# 3. Models: the base, and every adapter with parent = the base id.
print("models:    ", [m.id for m in client.models.list()])

# 4. Chat, streamed token by token.
for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=32,
        temperature=0, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
