#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the main job on the
# embedded default board `sim`: a swtpm TPM simulator on a free loopback port with its own
# state, node provisioning (twice, to show it is idempotent), an agent's TPM key certified by
# the AK, and a quote taken and verified (by outpost and by tpm2-tools).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
mkdir -p "$root/build"
"$root/scripts/build.sh" "$root/build" >/dev/null
outpost=$root/build/runtime/outpost

work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-demo-XXXXXX")
cleanup() { "$root/scripts/swtpm.sh" stop "$work/tpm"; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting swtpm (a manufactured TPM 2.0 with EK certificates) on loopback"
"$root/scripts/swtpm.sh" start "$work/tpm" --manufacture
set -a
. "$work/tpm/swtpm.env"
set +a
echo "OUTPOST_TCTI=$OUTPOST_TCTI"
export OUTPOST_STATE=$work/state

step "outpost node init --board sim"
"$outpost" node init --board sim --state "$OUTPOST_STATE"
step "outpost node init again: idempotent"
"$outpost" node init --board sim --state "$OUTPOST_STATE" | head -2

step "outpost agent key: a TPM-resident key for the sample agent, certified by the AK"
"$outpost" agent key hello-agent --binary "$root/examples/agents/hello-agent.sh"

step "outpost attest quote with a fresh nonce"
nonce=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
"$outpost" attest quote --nonce "$nonce" --out "$work/quote"
ls "$work/quote"

step "outpost attest verify (offline, with nothing but the AK public key)"
"$outpost" attest verify "$work/quote" --ak "$OUTPOST_STATE/ak.pem" --nonce "$nonce"

step "the same quote checked by tpm2-tools"
tpm2_checkquote -u "$work/quote/ak.pem" -m "$work/quote/attest.bin" -s "$work/quote/signature.bin" \
  -f "$work/quote/pcrs.bin" -q "$nonce" >/dev/null && echo "tpm2_checkquote: OK"

step "a quote with another nonce is refused"
if "$outpost" attest verify "$work/quote" --ak "$OUTPOST_STATE/ak.pem" --nonce 00; then
  echo "demo: a wrong nonce was accepted" >&2
  exit 1
fi

step "central IAM: two signing keys, a 2-of-2 trust root, the sample policy compiled and signed"
iam=$work/iam
mkdir -p "$iam"
"$outpost" keygen --out "$iam/k1.pem" >/dev/null
"$outpost" keygen --out "$iam/k2.pem" >/dev/null
"$outpost" trust init --key "$iam/k1.pem.pub" "$iam/k2.pem.pub" --threshold 2 -o "$iam/root.json"
"$outpost" bundle build "$root/examples/policy/edge-agents.yaml" -o "$iam/edge-agents.opb" 2>/dev/null
"$outpost" bundle sign "$iam/edge-agents.opb" --key "$iam/k1.pem"
"$outpost" bundle sign "$iam/edge-agents.opb" --key "$iam/k2.pem"
"$outpost" bundle verify "$iam/edge-agents.opb" --trust "$iam/root.json"
"$outpost" policy test "$root/examples/policy/cases.yaml" --bundle "$iam/edge-agents.opb" | tail -1

step "the node pins the root and installs the bundle (bound to the TPM's NV counter)"
"$outpost" trust pin "$iam/root.json"
"$outpost" bundle install "$iam/edge-agents.opb"

step "the sample agent's calls, decided on the node from the installed bundle"
decide() {
  printf '%s' "$1" >"$work/request.json"
  printf '%-58s ' "$2"
  "$outpost" decide --request "$work/request.json"
}
decide '{"agent":"coder","server":"fs","tool":"read_file","arguments":{"path":"/srv/workspace/src/main.c"}}' \
  "coder reads its workspace:"
decide '{"agent":"coder","server":"fs","tool":"read_file","arguments":{"path":"/srv/workspace/%2e%2e/../etc/shadow"}}' \
  "coder tries to climb out with %2e%2e:"
decide '{"agent":"coder","server":"fetch","tool":"fetch","arguments":{"url":"https://docs.python.org/3/"},"destination":{"host":"docs.python.org","port":443},"history":[{"server":"secrets","tool":"read_secret","arguments":{"name":"ci/token"}}]}' \
  "coder fetches a web page after reading a CI secret:"
decide '{"agent":"hello-agent","server":"fs","tool":"read_file","arguments":{"path":"/srv/workspace/a"}}' \
  "an agent the bundle does not know:"

step "outpost status"
"$outpost" status
printf '\ndemo finished; state was in %s\n' "$work"
