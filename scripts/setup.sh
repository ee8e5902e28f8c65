#!/usr/bin/env bash
# Installs the Debian 12 packages outpost needs to build, run and test, and only those
# that are missing. Safe to run again; the README's two commands call it first.
#   setup.sh [EXTRA_PACKAGE...]
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  libtss2-dev swtpm swtpm-tools tpm2-tools
  libmbedtls-dev
  libflatbuffers-dev flatbuffers-compiler
  libboost1.81-dev libboost-json1.81-dev libboost-program-options1.81-dev
  libyaml-cpp-dev libre2-dev
  libsqlite3-dev  # outpost-hub's default store
  # outpost-hub's PostgreSQL store (libpq), and the server its tests and benchmark start
  # themselves (initdb and postgres from /usr/lib/postgresql/15/bin; no system cluster is used)
  postgresql-15 libpq-dev
  catch2 libbenchmark-dev
  clang-14 libclang-rt-14-dev
  iproute2 procps
  ca-certificates  # the system CA store outpostd checks https:// MCP servers against
  openssl  # the egress tests' HTTPS server certificate (openssl req -x509)
  libseccomp-dev  # the agent sandbox's syscall filter (runtime/sandbox)
  systemd file dpkg-dev  # tests/install: systemd-analyze, -sysusers, -tmpfiles; CPack DEB's dpkg-shlibdeps
  chromium  # the hub console's test loads its pages headless over the DevTools protocol (tests/e2e/console-check.mjs)
)
# Extra packages a caller needs for itself (scripts/bench-mcp.sh's profile: linux-perf).
packages+=("$@")
# The end-to-end peers (the official MCP SDK and reference servers) run on Node.js; Debian's
# packages only when the machine has no node and npm of its own.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# npm ci from the committed lock file, again only when the lock file changed since the last one.
install_e2e() {
  local dir=$root/tests/e2e stamp=$root/tests/e2e/node_modules/.outpost-lock-sha256
  [[ -f $dir/package-lock.json ]] || return 0
  local want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then return 0; fi
  echo "setup: npm ci in tests/e2e"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" >"$stamp"
}

missing=()
for p in "${packages[@]}"; do
  # dpkg-query prints "install ok installed" only for a package that is fully there.
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages present"
  install_e2e
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_e2e
echo "setup: done"
