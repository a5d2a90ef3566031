#!/usr/bin/env bash
# Install the Debian packages lorad needs to build and test, if any is missing.
# As root it runs apt-get; otherwise it prints the exact command to run and fails.
# libcurl: loractl. nginx + njs: the scale-out router test. docker-compose: validates
# deploy/docker-compose.yml without a Docker engine (`docker-compose config`).
set -eu
pkgs="build-essential pkg-config libmicrohttpd-dev libjansson-dev libopenblas-dev libuv1-dev check
libpcre2-dev libutf8proc-dev python3-numpy curl libcurl4-openssl-dev nginx libnginx-mod-http-js
docker-compose"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# node + npm run the tokenizer/chat-template oracles' fetch step and the OpenAI-SDK test. A
# machine may already have a newer Node.js from elsewhere; only install Debian's when absent.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    missing="$missing nodejs npm"
fi
[ -z "$missing" ] && exit 0
cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "lorad: missing Debian packages:$missing" >&2
    echo "run as root:  apt-get update && $cmd" >&2
    exit 1
fi
echo "lorad: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
$cmd
