#!/usr/bin/python3
"""lorad_client — a small, standard-library-only Python client for the lorad daemon.

    from lorad_client import Client
    c = Client()                                  # LORAD_URL, LORAD_API_KEY from the environment
    print(c.complete("Hello", model="org/adapter", max_tokens=16, temperature=0))
    for piece in c.complete_stream("Hello", model="org/adapter"):
        print(piece, end="", flush=True)
    c.chat([{"role": "user", "content": "Hi"}], model="org/adapter")
    c.adapters(); c.load_adapter("name", "/adapters/name"); c.unload_adapter("name")
    c.tokenize("text"); c.models(); c.health()

The same calls as `loractl`. Every call that names a model also sends `X-Adapter-Id: <model>`,
which the shipped nginx router (deploy/nginx) hashes to pick a replica; pass
adapter_header=False to turn that off. Errors from the server raise LoradError carrying the HTTP
status and the server's message; an unreachable server raises LoradError with status 0.

Also a command line: `lorad_client.py complete "Hello" --model ID [--stream]`, see --help.
"""

import argparse
import http.client
import json
import os
import sys
import urllib.parse

__all__ = ["Client", "LoradError"]
DEFAULT_URL = "http://127.0.0.1:8080"


class LoradError(Exception):
    """The server answered with an error (status = HTTP status), or could not be reached
    (status = 0). `body` is the parsed error body when there was one."""

    def __init__(self, status, message, body=None):
        super().__init__("HTTP %d: %s" % (status, message) if status else message)
        self.status = status
        self.message = message
        self.body = body


class Client:
    def __init__(self, url=None, api_key=None, timeout=600.0, adapter_header=True,
                 headers=None):
        self.url = (url or os.environ.get("LORAD_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("LORAD_API_KEY")
        self.timeout = timeout
        self.adapter_header = adapter_header
        self.extra_headers = dict(headers or {})
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("lorad URL must look like http://host:port, got %r" % self.url)
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port
        self._prefix = u.path.rstrip("/")
        self.last_headers = {}  # response headers of the last call (e.g. X-Lorad-Upstream)

    # ------------------------------------------------------------------ transport

    def _conn(self):
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout)

    def _headers(self, model, stream):
        h = {"Accept": "text/event-stream" if stream else "application/json"}
        h.update(self.extra_headers)
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        if self.adapter_header and model:
            if "\r" in model or "\n" in model:
                raise ValueError("model id must be one line: %r" % model)
            h["X-Adapter-Id"] = model
        return h

    def _open(self, method, path, body=None, model=None, stream=False):
        """Send a request; return (connection, response) with the status checked."""
        data = None
        headers = self._headers(model, stream)
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = self._conn()
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise LoradError(0, "cannot reach %s: %s" % (self.url, e)) from None
        self.last_headers = dict(resp.getheaders())
        if resp.status >= 300:
            raw = resp.read()
            conn.close()
            msg, parsed = raw.decode("utf-8", "replace").strip() or "(empty answer)", None
            try:
                parsed = json.loads(raw)
                msg = parsed["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise LoradError(resp.status, msg, parsed)
        return conn, resp

    def _call(self, method, path, body=None, model=None):
        conn, resp = self._open(method, path, body, model)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise LoradError(0, "reading the answer from %s failed: %s" % (self.url, e)) from None
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise LoradError(resp.status, "the answer is not JSON: %r" % raw[:200]) from None

    def _events(self, path, body, model):
        """Yield the parsed JSON of each Server-Sent Event until data: [DONE]."""
        conn, resp = self._open("POST", path, body, model, stream=True)
        try:
            ctype = resp.getheader("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                raise LoradError(resp.status, "expected an event stream, got %r" % ctype)
            data = []
            while True:
                line = resp.readline()
                if not line:
                    raise LoradError(0, "the stream ended without [DONE]")
                line = line.rstrip(b"\r\n").decode("utf-8")
                if line == "":
                    if not data:
                        continue
                    payload, data = "\n".join(data), []
                    if payload == "[DONE]":
                        return
                    try:
                        ev = json.loads(payload)
                    except ValueError:
                        raise LoradError(0, "a streamed chunk is not JSON: %r"
                                         % payload[:200]) from None
                    if isinstance(ev, dict) and "error" in ev:
                        err = ev["error"]
                        raise LoradError(500, err.get("message", "stream error")
                                         if isinstance(err, dict) else str(err), ev)
                    yield ev
                elif line.startswith("data:"):
                    v = line[5:]
                    data.append(v[1:] if v.startswith(" ") else v)
                # other fields and ":" comments are ignored
        except (OSError, http.client.HTTPException) as e:
            raise LoradError(0, "the stream from %s broke: %s" % (self.url, e)) from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ calls

    @staticmethod
    def _params(model, kw):
        body = {k: v for k, v in kw.items() if v is not None}
        if model is not None:
            body["model"] = model
        return body

    def health(self):
        """True when /health answers 200; raises LoradError otherwise."""
        return self._call("GET", "/health").get("status") == "ok"

    def models(self):
        """The /v1/models list (dicts with id, parent for adapters)."""
        return self._call("GET", "/v1/models")["data"]

    def completion(self, prompt, model=None, **params):
        """The whole /v1/completions answer (dict). params: max_tokens, temperature, seed..."""
        body = self._params(model, params)
        body["prompt"] = prompt
        return self._call("POST", "/v1/completions", body, model)

    def complete(self, prompt, model=None, **params):
        """The text of the first choice."""
        return self.completion(prompt, model, **params)["choices"][0]["text"]

    def complete_stream(self, prompt, model=None, **params):
        """Iterate over the text pieces of a streamed completion."""
        body = self._params(model, params)
        body.update(prompt=prompt, stream=True)
        for ev in self._events("/v1/completions", body, model):
            for ch in ev.get("choices") or []:
                if ch.get("text"):
                    yield ch["text"]

    def chat_completion(self, messages, model=None, **params):
        """The whole /v1/chat/completions answer (dict)."""
        body = self._params(model, params)
        body["messages"] = messages
        return self._call("POST", "/v1/chat/completions", body, model)

    def chat(self, messages, model=None, **params):
        """The assistant's reply text. messages: a string (one user turn) or a list of dicts."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.chat_completion(messages, model, **params)["choices"][0]["message"]["content"]

    def chat_stream(self, messages, model=None, **params):
        """Iterate over the content pieces of a streamed chat completion."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = self._params(model, params)
        body.update(messages=messages, stream=True)
        for ev in self._events("/v1/chat/completions", body, model):
            for ch in ev.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    yield piece

    def tokenize(self, text, model=None, add_special=None):
        """Token ids of text."""
        body = self._params(model, {"content": text, "add_special": add_special})
        return self._call("POST", "/tokenize", body, model)["tokens"]

    def adapters(self):
        """The /v1/adapters registry (dicts with id, state, rank, requests...)."""
        return self._call("GET", "/v1/adapters")["data"]

    def load_adapter(self, name, path):
        """Register (and load) a PEFT folder under `name`."""
        return self._call("POST", "/v1/load_lora_adapter",
                          {"lora_name": name, "lora_path": path}, name)

    def unload_adapter(self, name):
        """Drop an adapter; requests already running on it finish first."""
        return self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name}, name)


# ---------------------------------------------------------------------- command line


def main(argv=None):
    ap = argparse.ArgumentParser(description="Talk to a lorad daemon (like loractl).")
    ap.add_argument("--url", help="server base URL (default: $LORAD_URL or %s)" % DEFAULT_URL)
    ap.add_argument("--api-key", help="bearer key (default: $LORAD_API_KEY)")
    ap.add_argument("-m", "--model", help="adapter id or base id")
    ap.add_argument("-n", "--max-tokens", type=int)
    ap.add_argument("-t", "--temperature", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("-s", "--system", help="system message (chat)")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the JSON answer")
    ap.add_argument("command", choices=["health", "models", "complete", "chat", "tokenize",
                                        "adapters"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args(argv)
    c = Client(a.url, a.api_key)
    params = dict(max_tokens=a.max_tokens, temperature=a.temperature, seed=a.seed)
    text = (sys.stdin.read() if a.args == ["-"] else " ".join(a.args))
    try:
        if a.command == "health":
            print("ok" if c.health() else "not ok")
        elif a.command == "models":
            for m in c.models():
                print(m["id"] + ("\t(adapter of %s)" % m["parent"] if m.get("parent") else ""))
        elif a.command in ("complete", "chat"):
            msgs = ([{"role": "system", "content": a.system}] if a.system else []) + \
                [{"role": "user", "content": text}]
            if a.stream:
                it = (c.complete_stream(text, a.model, **params) if a.command == "complete"
                      else c.chat_stream(msgs, a.model, **params))
                for piece in it:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                print()
            elif a.command == "complete":
                r = c.completion(text, a.model, **params)
                print(json.dumps(r) if a.json else r["choices"][0]["text"])
            else:
                r = c.chat_completion(msgs, a.model, **params)
                print(json.dumps(r) if a.json else r["choices"][0]["message"]["content"])
        elif a.command == "tokenize":
            print(" ".join(str(t) for t in c.tokenize(text, a.model)))
        elif a.command == "adapters":
            sub = a.args[:1]
            if sub == ["list"] and len(a.args) == 1:
                for ad in c.adapters():
                    print("%s\t%s\t%s\t%s" % (ad.get("id"), ad.get("state"), ad.get("requests"),
                                              ad.get("path")))
            elif sub == ["load"] and len(a.args) == 3:
                c.load_adapter(a.args[1], a.args[2])
                print("ok")
            elif sub == ["unload"] and len(a.args) == 2:
                c.unload_adapter(a.args[1])
                print("ok")
            else:
                ap.error("use: adapters list | adapters load NAME PATH | adapters unload NAME")
    except LoradError as e:
        print("lorad_client: %s" % e, file=sys.stderr)
        return 3 if e.status == 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
