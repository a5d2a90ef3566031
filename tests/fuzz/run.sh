#!/usr/bin/env bash
# tests/fuzz/run.sh — build the libFuzzer targets of tests/fuzz/ with clang and run each in turn.
#
#   tests/fuzz/run.sh [target ...]          build + run (all targets when none is named)
#   FUZZ_SECONDS=600 tests/fuzz/run.sh peft  run one target for 10 minutes
#   FUZZ_BUILD_ONLY=1 tests/fuzz/run.sh     build only
#
# One fuzzer at a time, one process each (the box is shared). The working corpus lives in
# build/fuzz/work/<target> (seeded from tests/fuzz/corpus/<target>); crashes, leaks and timeouts
# go to build/fuzz/crashes/<target>/ — copy a real finding to tests/fuzz/regress/<target>/ so that
# check_regress replays it in `make test`. A summary line per target gives executions, seconds,
# coverage (libFuzzer's cov:) and findings; the exit status is 1 if any target found something.
set -u
cd "$(dirname "$0")/../.."
OUT=${FUZZ_OUT:-build/fuzz}
SECS=${FUZZ_SECONDS:-60}
CLANG=${FUZZ_CC:-clang}
PKGS="libmicrohttpd jansson libuv libpcre2-8 libutf8proc openblas"
ALL_TARGETS="safetensors config tokenizer precompiled peft jinja api"

# Sanitizers: ASan + UBSan, every UB report fatal except clang's "applying zero offset to null
# pointer" (pointer-overflow), which gcc — the compiler of make test — does not diagnose; those
# reports are kept in the log and counted as findings without stopping the run.
FLAGS="-std=c11 -D_GNU_SOURCE -DLR_LIBFUZZER -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
 -fno-sanitize-recover=undefined -fsanitize-recover=pointer-overflow
 -include tests/fuzz/clang_compat.h -Icore -Iadapters -Iserver"

srcs() {
    case $1 in
    safetensors) echo core/err.c $(ls core/util*.c 2>/dev/null) core/safetensors.c ;;
    config) echo core/err.c $(ls core/util*.c 2>/dev/null) core/model.c core/safetensors.c ;;
    tokenizer) echo core/err.c $(ls core/util*.c 2>/dev/null) core/tok*.c ;;
    precompiled) echo core/err.c $(ls core/util*.c 2>/dev/null) core/tok*.c ;;
    peft) echo core/err.c $(ls core/util*.c 2>/dev/null) core/model.c core/safetensors.c core/kernels.c adapters/peft.c adapters/peft_store.c ;;
    jinja) echo core/err.c $(ls core/util*.c 2>/dev/null) core/jinja*.c ;;
    api) echo core/err.c $(ls core/util*.c 2>/dev/null) core/tok*.c core/jinja*.c server/api_cmpl.c server/api_chat.c ;;
    esac
}
maxlen() {
    case $1 in
    tokenizer | jinja | peft) echo 16384 ;;
    *) echo 4096 ;;
    esac
}

build() {
    local t=$1 bin=$OUT/fuzz_$1 src
    src="tests/fuzz/fuzz_$t.c $(srcs "$t")"
    for f in $src; do
        [ -f "$f" ] || { echo "fuzz: $t: $f does not exist yet; skipped" >&2; return 2; }
    done
    # Rebuild when any source or header is newer than the binary.
    if [ -x "$bin" ] && [ -z "$(find $src core adapters server tests/fuzz -name '*.[ch]' -newer "$bin" 2>/dev/null | head -1)" ]; then
        return 0
    fi
    mkdir -p "$OUT"
    # shellcheck disable=SC2086
    $CLANG $FLAGS $(pkg-config --cflags $PKGS) $src -o "$bin" \
        $(pkg-config --libs $PKGS) -lm -pthread
}

run() {
    local t=$1 bin=$OUT/fuzz_$1 work=$OUT/work/$1 crash=$OUT/crashes/$1 log=$OUT/log_$1.txt dict=""
    mkdir -p "$work" "$crash"
    [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
    local seeds="tests/fuzz/corpus/$t"
    [ -d "$seeds" ] || seeds=""
    # -rss_limit_mb: a hostile file that makes a parser allocate gigabytes is a finding too.
    # shellcheck disable=SC2086
    "$bin" $dict -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len="$(maxlen "$t")" \
        -artifact_prefix="$crash/" -print_final_stats=1 "$work" $seeds >"$log" 2>&1
    local rc=$?
    local execs cov secs ub found
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ub=$(grep -c 'runtime error:' "$log")
    found=$(find "$crash" -type f | wc -l)
    printf 'fuzz %-12s executions %10s  seconds %5s  cov %6s  findings %s (crash files %s, UB reports %s, exit %s)\n' \
        "$t" "${execs:-?}" "${secs:-?}" "${cov:-?}" "$((found + ub))" "$found" "$ub" "$rc"
    [ "$rc" -eq 0 ] && [ "$found" -eq 0 ] && [ "$ub" -eq 0 ]
}

targets=${*:-$ALL_TARGETS}
status=0
for t in $targets; do
    build "$t"
    brc=$?
    [ "$brc" -eq 2 ] && continue
    [ "$brc" -ne 0 ] && { echo "fuzz: $t: build failed" >&2; status=1; continue; }
    [ -n "${FUZZ_BUILD_ONLY:-}" ] && continue
    run "$t" || status=1
done
exit $status
