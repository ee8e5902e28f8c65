#!/usr/bin/env bash
# Runs the benchmarks against a fresh swtpm and prints their figures (docs/benchmarks.md
# records what we saw). Extra arguments go to Google Benchmark, e.g. --benchmark_filter=quote.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
mkdir -p "$root/build"
"$root/scripts/build.sh" "$root/build" >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-bench-XXXXXX")
trap '"$root/scripts/swtpm.sh" stop "$work/tpm"; rm -rf "$work"' EXIT
"$root/scripts/swtpm.sh" start "$work/tpm" --fresh
set -a
. "$work/tpm/swtpm.env"
set +a
OUTPOST_LOG=warn "$root/build/tests/bench/bench_tpm" "$@"
"$root/build/tests/bench/bench_policy" "$@"
"$root/build/tests/bench/bench_audit" "$@"
"$root/build/tests/bench/bench_hub" "$@"
"$root/build/tests/bench/bench_sandbox" "$@"
"$root/build/tests/bench/bench_egress" "$@"
