#!/usr/bin/env bash
# fetch.sh — install the chat-template oracle (@huggingface/jinja, version pinned in package.json and
# package-lock.json) into tests/.cache/jinja-npm with `npm ci` (npm's cache in tests/.cache/npm-cache;
# nothing lands in git). Idempotent: does nothing when the installed lock matches ours.
# Only gen.mjs needs it; the committed golden (tests/data/jinja/golden.json) does not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=$root/tests/.cache
npmdir=$cache/jinja-npm
if ! command -v npm >/dev/null 2>&1; then
    echo "jinja/fetch.sh: npm is needed (apt-get install -y nodejs npm)" >&2
    exit 1
fi
if ! cmp -s "$here/package-lock.json" "$npmdir/package-lock.json" ||
   [ ! -f "$npmdir/node_modules/.package-lock.json" ]; then
    mkdir -p "$npmdir"
    cp "$here/package.json" "$here/package-lock.json" "$npmdir/"
    (cd "$npmdir" && npm ci --cache "$cache/npm-cache" --no-audit --no-fund --loglevel=error)
fi
