#!/usr/bin/env bash
# The README's second command (and .ci/run's): installs what is missing, builds, and runs the
# whole test suite:
#   build-test/  g++, warnings as errors, AddressSanitizer + UndefinedBehaviorSanitizer:
#                unit tests, swtpm integration tests, the benchmark smoke run
#   build-fuzz/  clang 14 with libFuzzer: a short fuzz run of every parser of untrusted bytes
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

passed=0
failed=0
run_ctest() {
  local dir=$1 log
  log=$(mktemp)
  set +e
  (cd "$dir" && ctest --output-on-failure -j2 --timeout 600) | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  local total fails
  total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$log" | tail -1)
  fails=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)
  rm -f "$log"
  passed=$((passed + ${total:-0} - ${fails:-0}))
  failed=$((failed + ${fails:-0}))
  if [[ $rc -ne 0 && ${fails:-0} -eq 0 ]]; then failed=$((failed + 1)); fi
}

mkdir -p "$root/build-test" "$root/build-fuzz"
"$root/scripts/build.sh" "$root/build-test" -DOUTPOST_WERROR=ON -DOUTPOST_SANITIZE=ON
run_ctest "$root/build-test"

# Only the fuzz targets and what they link: the programs are built and tested above.
CC=clang-14 CXX=clang++-14 OUTPOST_BUILD_TARGETS=fuzzers "$root/scripts/build.sh" "$root/build-fuzz" \
  -DOUTPOST_FUZZ=ON -DOUTPOST_TESTS=OFF -DOUTPOST_BENCH=OFF -DOUTPOST_WERROR=ON
run_ctest "$root/build-fuzz"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
