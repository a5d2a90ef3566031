#!/usr/bin/env bash
# make bench: generate the bench models once (build/benchmodels), then print
#  1. lr-bench — machine limits, decode / batching / prefill / adapter / server / RSS figures for
#     SmolLM-135M shaped models in F32 and BF16 with 8 rank-16 all-module adapters, 2 threads;
#  2. the T5 line (tests/bench/t5_bench.py, t5-small shape through lr-generate);
#  3. lr-tok-bench — tokenizer throughput (when the real tokenizer files are cached).
# Not pass/fail: figures and ratios only. The machine is shared: lr-bench reports medians and
# CPU-normalised rates next to wall-clock ones.
# Environment: BUILD (build dir), PY (python for the generators), BENCH_THREADS (2),
# BENCH_TOKENS (tokens per stream, 48), BENCH_REPS (runs per figure, 3).
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
PY=${PY:-/usr/bin/python3}
ROOT=$BUILD/benchmodels
TH=${BENCH_THREADS:-2}
echo "== generating bench models under $ROOT (once; stamped)"
"$PY" tests/bench/gen_bench.py "$ROOT" || exit 1
echo "== lr-bench (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- core adapters 2>/dev/null || echo ', with uncommitted changes'))"
"$BUILD/lr-bench" --root "$ROOT" --lorad "$BUILD/lorad" --threads "$TH" \
    --tokens "${BENCH_TOKENS:-48}" --reps "${BENCH_REPS:-3}"
rc=$?
if [ -f tests/bench/t5_bench.py ]; then
    echo "== T5 (tests/bench/t5_bench.py)"
    "$PY" tests/bench/t5_bench.py --build "$BUILD" --threads "$TH" || echo "(T5 bench failed)"
fi
echo "== lr-tok-bench"
make --no-print-directory BUILD="$BUILD" "$BUILD/lr-tok-bench" > /dev/null || true
if [ -x "$BUILD/lr-tok-bench" ]; then
    "$BUILD/lr-tok-bench" || echo "(tokenizer bench skipped: no cached tokenizers)"
fi
exit $rc
