#!/usr/bin/env bash
# Install what `make fuzz` needs, if missing: clang and its libFuzzer / sanitizer runtimes
# (Debian 12: clang-14 + libclang-rt-14-dev). Fuzzing is not part of `make test`, so
# scripts/deps.sh does not pull these in. As root it runs apt-get; otherwise it prints the
# command to run and fails.
set -eu
pkgs="clang libclang-rt-14-dev"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# A clang from elsewhere is fine as long as it links -fsanitize=fuzzer.
if [ -n "$missing" ] && command -v clang >/dev/null 2>&1 &&
    echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
    clang -x c -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1; then
    missing=""
fi
[ -z "$missing" ] && exit 0
cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "lorad: make fuzz needs Debian packages:$missing" >&2
    echo "run as root:  apt-get update && $cmd" >&2
    exit 1
fi
echo "lorad: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
$cmd
