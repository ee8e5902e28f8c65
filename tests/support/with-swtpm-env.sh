#!/usr/bin/env bash
# Runs a command with the environment of the swtpm the CTest fixture started (OUTPOST_TCTI).
#   with-swtpm-env.sh FIXTURE_DIR COMMAND [ARGS...]
set -euo pipefail
dir=$1
shift
if [[ ! -f "$dir/swtpm.env" ]]; then
  echo "with-swtpm-env.sh: no swtpm running for $dir (the swtpm fixture did not start)" >&2
  exit 1
fi
set -a
# shellcheck disable=SC1091
. "$dir/swtpm.env"
set +a
exec "$@"
