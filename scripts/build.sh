#!/usr/bin/env bash
# Configures and builds one tree. Used by the README's commands; safe to run again.
#   [OUTPOST_BUILD_TARGETS="t1 t2"] build.sh DIR [extra cmake args...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$1
shift
mkdir -p "$dir"
cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$dir/configure.log" 2>&1 || {
  cat "$dir/configure.log" >&2
  exit 1
}
# Two cores here: -j2 keeps the machine responsive. OUTPOST_BUILD_TARGETS (space-separated)
# builds only those targets and what they need.
read -r -a targets <<<"${OUTPOST_BUILD_TARGETS:-}"
cmake --build "$dir" -j2 ${targets[@]:+--target "${targets[@]}"}
