#!/usr/bin/env bash
# One device call: build in place with all cores, run the GPU tests, run
# compute-sanitizer memcheck over each kernel family, run the benchmarks.
# Logs and JSON land under $OUT (default ./out).
#
#   STEPS="build test sanitize bench"   which steps to run (default: all)
#   TEST_FILTER="decode and not moe"    pytest -k expression
#   TEST_PATHS="tests/kernels"          what pytest collects (default: tests)
#   BENCH_ARGS="--only layers"          extra benchmarks.run arguments
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT"
STEPS="${STEPS:-build test sanitize bench}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
status=0
has() { [[ " $STEPS " == *" $1 "* ]]; }

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
elif ! python3 -c "import cutlass_library" 2>/dev/null; then
  echo "WARNING: no .whl and no nvidia-cutlass: the build leaves out the sm_90a MoE tier (carry .whl)"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

if has build; then
  start=$(date +%s)
  if ! python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    grep -E "error" "$OUT/build.log" | head -40
    echo "BUILD FAILED"; exit 1
  fi
  echo "build: $(( $(date +%s) - start ))s"
fi

if has test; then
  # shellcheck disable=SC2086
  python3 -m pytest -q --timeout=900 -m gpu ${TEST_PATHS:-tests} ${TEST_FILTER:+-k "$TEST_FILTER"} --junitxml="$OUT/junit.xml" \
    > "$OUT/tests.log" 2>&1 || status=1
  grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
  grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/tests.log" | head -30
fi

if has sanitize; then
  PYTHONPATH="$ROOT" compute-sanitizer --tool memcheck --error-exitcode 3 python3 scripts/sanitize_kernels.py \
    > "$OUT/memcheck.log" 2>&1 || status=1
  tail -4 "$OUT/memcheck.log"
fi

if has bench; then
  # A test process killed by a timeout can keep the GPU busy and skew every timing after it.
  for pid in $(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null); do
    echo "bench: killing leftover GPU process $pid"; kill -9 "$pid" 2>/dev/null
  done
  python3 -m benchmarks.run --json "$OUT/bench.json" --markdown "$OUT/bench.md" ${BENCH_ARGS:-} \
    > "$OUT/bench.log" 2>&1 || status=1
  grep -vE "^\|" "$OUT/bench.log" | tail -80
fi
exit $status
