#!/usr/bin/env bash
# Installs the Debian 12 packages outpost needs to build, run and test, and only those
# that are missing. Safe to run again; the README's two commands call it first.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  libtss2-dev swtpm swtpm-tools tpm2-tools
  libmbedtls-dev
  libflatbuffers-dev flatbuffers-compiler
  libboost1.81-dev libboost-json1.81-dev libboost-program-options1.81-dev
  libyaml-cpp-dev libre2-dev
  catch2 libbenchmark-dev
  clang-14 libclang-rt-14-dev
  iproute2 procps
)

missing=()
for p in "${packages[@]}"; do
  # dpkg-query prints "install ok installed" only for a package that is fully there.
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
