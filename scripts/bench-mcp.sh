#!/usr/bin/env bash
# The MCP broker benchmark: added latency per tools/call with the official SDK client against
# @modelcontextprotocol/server-everything's `echo`, in alternating rounds of
#   direct   the client spawns the server itself
#   pump     a plain byte-pump proxy in between (tests/bench/pump.cc: two pipes, poll, no parsing)
#   outpost  the client is an agent launched by outpostd and runs `outpost mcp connect everything`
# and over Streamable HTTP, against server-everything's streamableHttp mode on loopback:
#   direct-http   the client speaks Streamable HTTP to the server itself
#   outpost-http  the agent's client speaks stdio to `outpost mcp connect remote`; outpostd
#                 carries each call to the server over HTTP (a manifest `url:` server)
#   outpost-http-http  the agent's client speaks Streamable HTTP to outpostd's endpoint in its
#                 namespace ($OUTPOST_MCP_URL/remote), and outpostd HTTP to the server: a
#                 gateway's position, HTTP on both sides
#   outpost-http-2026  as outpost-http-http, with the v2 SDK client pinned to MCP 2026-07-28:
#                 stateless requests, which outpostd's endpoint carries on a relay connection
#                 of its own to the same 2025-era server
# and MCP 2026-07-28 on both sides, against tests/e2e/modern-server.mjs (the v2 SDK's server,
# that revision only) on loopback:
#   direct-2026   the v2 client pinned to 2026-07-28 straight to it
#   outpost-2026  the same client to outpostd's endpoint, outpostd 2026-07-28 to the server
# then outpostd's RSS with 10 agents running and a 10,000-rule bundle installed. After the
# latency table, outpostd's own account of each outpost run (the relay's per-stage times from
# the connection's mcp_disconnect audit record, per call).
# outpost runs twice per round: with durable decisions (the default: each call's record is
# fdatasync'ed before the call reaches the server) and with them queued (durable_decisions:
# false). Ends with a table of the medians over the rounds.
# Usage: scripts/bench-mcp.sh [CALLS] [ROUNDS]   (figures: docs/benchmarks.md)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
calls=${1:-2000}
rounds=${2:-3}
# BENCH_PROFILE=1: also perf record over outpostd during each outpost run (kept in
# build-lean/bench-mcp-profile; read with perf report -i build-lean/bench-mcp-profile/LABEL.perf.data).
if [[ -n ${BENCH_PROFILE:-} ]]; then "$root/scripts/setup.sh" linux-perf >/dev/null; else "$root/scripts/setup.sh" >/dev/null; fi
# outpostd as a node runs it: its own tree, optimised at link time (OUTPOST_LTO), with the
# static libraries of every non-sanitized build (docs/dependencies.md, "Linked in").
lean=$root/build-lean
mkdir -p "$lean"
OUTPOST_BUILD_TARGETS="outpost outpostd mcp_pump" "$root/scripts/build.sh" "$lean" -DOUTPOST_LTO=ON >/dev/null
outpost=$lean/runtime/outpost
outpostd=$lean/runtime/outpostd
pump=$lean/tests/bench/mcp_pump
e2e=$root/tests/e2e
everything=$e2e/node_modules/@modelcontextprotocol/server-everything/dist/index.js
node=$(readlink -f "$(command -v node)")

work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-bench-mcp-XXXXXX")
daemon_pid=
stop_daemon() {
  [[ -n $daemon_pid ]] || return 0
  kill "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=
}
cleanup() {
  stop_daemon
  if [[ -n ${http_pid:-} ]]; then kill "$http_pid" 2>/dev/null || true; wait "$http_pid" 2>/dev/null || true; fi
  if [[ -n ${modern_pid:-} ]]; then kill "$modern_pid" 2>/dev/null || true; wait "$modern_pid" 2>/dev/null || true; fi
  if [[ -d $work/profile ]]; then
    rm -rf "$lean/bench-mcp-profile"
    cp -r "$work/profile" "$lean/bench-mcp-profile"
  fi
  "$root/scripts/swtpm.sh" stop "$work/tpm" >/dev/null
  rm -rf "$work"
}
[[ -n ${BENCH_KEEP:-} ]] || trap cleanup EXIT
"$root/scripts/swtpm.sh" start "$work/tpm" --fresh >/dev/null
set -a
. "$work/tpm/swtpm.env"
set +a
state=$work/state
[[ -z ${BENCH_PROFILE:-} ]] || mkdir -p "$work/profile"
sock=$work/outpostd.sock

# server-everything over Streamable HTTP, on a loopback port that is free now (it listens on
# the port PORT names), stopped by its pid on exit.
http_pid=
for _ in 1 2 3 4 5; do
  http_port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')
  PORT=$http_port "$node" "$everything" streamableHttp >"$work/everything-http.log" 2>&1 &
  http_pid=$!
  for _ in $(seq 50); do grep -q "listening on port $http_port" "$work/everything-http.log" && break; sleep 0.1; done
  grep -q "listening on port $http_port" "$work/everything-http.log" && break
  kill "$http_pid" 2>/dev/null || true; wait "$http_pid" 2>/dev/null || true; http_pid=
done
[[ -n $http_pid ]] || { echo "bench-mcp: server-everything (streamableHttp) did not start" >&2; exit 1; }
http_url=http://127.0.0.1:$http_port/mcp
# A server of MCP 2026-07-28 only; it writes its port once listening.
"$node" "$e2e/modern-server.mjs" --port-file "$work/modern.port" >"$work/modern.log" 2>&1 &
modern_pid=$!
for _ in $(seq 100); do [[ -s $work/modern.port ]] && break; sleep 0.1; done
[[ -s $work/modern.port ]] || { echo "bench-mcp: modern-server.mjs did not start" >&2; exit 1; }
modern_port=$(cat "$work/modern.port")
modern_url=http://127.0.0.1:$modern_port/mcp

# A bundle with the bench agent's rule among 10,000 others (20 agents x 50 tools of filler).
{
  cat <<YAML
version: 1
issuer: bench
valid: {not_before: 2026-01-01T00:00:00Z, not_after: 2099-01-01T00:00:00Z, max_offline: 72h}
tools:
  - {server: everything, name: echo}
  - {server: remote, name: echo}
  - {server: modern, name: echo}
YAML
  for t in $(seq 0 49); do echo "  - {server: filler, name: tool$t}"; done
  echo "agents:"
  echo "  - {name: bench, tools: [\"everything/*\", \"remote/*\", \"modern/*\"]}"
  for a in $(seq 0 9); do echo "  - {name: idle$a, tools: [\"filler/*\"]}"; done
  for a in $(seq 0 19); do echo "  - {name: filler$a, tools: [\"filler/*\"]}"; done
  echo "rules:"
  echo "  - {id: echo, effect: allow, agents: [bench], tools: [everything/echo, remote/echo, modern/echo], args: [{pointer: /message, max_length: 65536}]}"
  for i in $(seq 0 9998); do
    echo "  - {id: r$i, effect: allow, agents: [filler$((i % 20))], tools: [filler/tool$((i % 50))], args: [{pointer: /path, prefix: [/data/$i/]}]}"
  done
  echo "egress:"
  echo "  - {id: remote-mcp, effect: allow, agents: [bench], destinations: [{cidr: 127.0.0.1/32, ports: [$http_port, $modern_port]}]}"
} >"$work/policy.yaml"
"$outpost" keygen --out "$work/k.pem" >/dev/null
"$outpost" trust init --key "$work/k.pem.pub" --threshold 1 -o "$work/root.json" >/dev/null
"$outpost" bundle build "$work/policy.yaml" -o "$work/b.opb" >/dev/null 2>&1
"$outpost" bundle sign "$work/b.opb" --key "$work/k.pem" >/dev/null
"$outpost" node init --board sim --state "$state" >/dev/null
"$outpost" trust pin "$work/root.json" --state "$state" >/dev/null
"$outpost" bundle install "$work/b.opb" --state "$state" >/dev/null

# outpostd in one durability mode: true (a decision is fdatasync'ed before its call goes out)
# or false (queued for the next group commit). Restarted between the two modes.
start_daemon() {
  stop_daemon
  printf 'board: sim\nstate_dir: %s\nsocket: %s\ntcti: "%s"\n' "$state" "$sock" "$OUTPOST_TCTI" >"$work/outpostd.yaml"
  printf 'audit: {durable_decisions: %s}\n' "$1" >>"$work/outpostd.yaml"
  OUTPOST_LOG=warn "$outpostd" --config "$work/outpostd.yaml" >>"$work/outpostd.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 100); do "$outpost" agent list --socket "$sock" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "bench-mcp: outpostd did not come up; its log:" >&2
  cat "$work/outpostd.log" >&2
  exit 1
}
export OUTPOST_SOCKET=$sock

bench_agent() {  # LABEL [SERVER [http [PROTOCOL]]]: runs bench-latency.mjs as an agent of outpostd; prints its JSON line
  local to=("--" "$outpost" "mcp" "connect" "${2:-everything}")
  [[ ${3:-} == http ]] && to=("--url" "http://127.0.0.1:3129/mcp/$2")  # OUTPOST_MCP_URL, the default port
  [[ -n ${4:-} ]] && to=("--protocol" "$4" "${to[@]}")
  local to_json
  to_json=$(printf '"%s", ' "${to[@]}")
  cat >"$work/bench.yaml" <<YAML
name: bench
command: $node
args: ["$e2e/bench-latency.mjs", "--calls", "$calls", "--label", "$1", ${to_json%, }]
binary: $e2e/bench-latency.mjs
workdir: $work/bench-work
read_only: ["$e2e"]
restart: never
mcp_servers:
  everything: {command: $node, args: ["$everything", stdio]}
  remote: {url: "$http_url"}
  modern: {url: "$modern_url"}
YAML
  "$outpost" agent deploy "$work/bench.yaml" >/dev/null
  local recorder=
  if [[ -n ${BENCH_PROFILE:-} ]]; then
    # Where the CPU of outpostd and of what it starts (relay threads, the MCP server) goes
    # over this agent's run. Wall time per stage is the relay's own account, below.
    perf record -q -g -p "$daemon_pid" -o "$work/profile/$1.perf.data" 2>/dev/null &
    recorder=$!
  fi
  for _ in $(seq 600); do
    "$outpost" agent list --json | grep -q '"name":"bench","state":"stopped"' && break
    sleep 0.2
  done
  if [[ -n $recorder ]]; then
    kill -INT "$recorder"
    wait "$recorder" 2>/dev/null || true
  fi
  "$outpost" agent logs bench --bytes 100000 | grep "\"label\":\"$1\"" | tail -1
  # Undeployed, or the next outpostd would bring it back (and run the benchmark again); and
  # stopped before its record is read: the endpoint's connection for stateless requests stays
  # open until the agent stops.
  "$outpost" agent stop bench >/dev/null
  # outpostd's own account of where the connection's time went (its mcp_disconnect record).
  local record=
  for _ in $(seq 50); do
    record=$("$outpost" audit tail -n 5 --json --state "$state" | grep '"event":"mcp_disconnect"' | tail -1 || true)
    [[ -n $record && $record != "${last_disconnect:-}" ]] && break
    sleep 0.1
  done
  last_disconnect=$record
  echo "$record" | node -e 'const r = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(JSON.stringify({label: process.argv[1], calls: r.detail.allowed, timing: r.detail.timing}));' "$1" >>"$work/timing.jsonl"
}

echo "# MCP tools/call latency, SDK client -> server-everything echo, $calls calls per run"
results=$work/results.jsonl
for r in $(seq "$rounds"); do
  (cd "$e2e" && node bench-latency.mjs --calls "$calls" --label direct -- "$node" "$everything" stdio) | tee -a "$results"
  (cd "$e2e" && node bench-latency.mjs --calls "$calls" --label pump -- "$pump" "$node" "$everything" stdio) | tee -a "$results"
  start_daemon true
  bench_agent outpost-durable | tee -a "$results"
  start_daemon false
  bench_agent outpost-queued | tee -a "$results"
  (cd "$e2e" && node bench-latency.mjs --calls "$calls" --label direct-http --url "$http_url") | tee -a "$results"
  start_daemon true
  bench_agent outpost-http remote | tee -a "$results"
  bench_agent outpost-http-http remote http | tee -a "$results"
  bench_agent outpost-http-2026 remote http 2026-07-28 | tee -a "$results"
  (cd "$e2e" && node bench-latency.mjs --calls "$calls" --label direct-2026 --protocol 2026-07-28 --url "$modern_url") | tee -a "$results"
  bench_agent outpost-2026 modern http 2026-07-28 | tee -a "$results"
done
# One row per setup: the median over the rounds of each figure, and its range.
node - "$results" "$work/timing.jsonl" <<'JS'
const fs = require('node:fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor((s.length - 1) / 2)]; };
const fig = (xs) => `${med(xs)} (${Math.min(...xs)}–${Math.max(...xs)})`;
console.log('| setup | p50 µs | min µs | p99 µs | pipelined calls/s (32 in flight) |');
console.log('| --- | --- | --- | --- | --- |');
for (const label of ['direct', 'pump', 'outpost-durable', 'outpost-queued', 'direct-http', 'outpost-http', 'outpost-http-http', 'outpost-http-2026', 'direct-2026', 'outpost-2026']) {
  const r = rows.filter((x) => x.label === label);
  if (r.length === 0) continue;
  console.log(`| ${label} | ${fig(r.map((x) => x.p50_us))} | ${fig(r.map((x) => x.min_us))} | ${fig(r.map((x) => x.p99_us))} | ${fig(r.map((x) => x.pipelined_calls_per_s))} |`);
}
const p50 = (label) => med(rows.filter((x) => x.label === label).map((x) => x.p50_us));
console.log(`# over the pump at p50: durable +${Math.round(p50('outpost-durable') - p50('pump'))} µs, queued +${Math.round(p50('outpost-queued') - p50('pump'))} µs`);
const p99 = (label) => med(rows.filter((x) => x.label === label).map((x) => x.p99_us));
for (const [label, base] of [['outpost-http', 'direct-http'], ['outpost-http-http', 'direct-http'], ['outpost-http-2026', 'direct-http'], ['outpost-2026', 'direct-2026']]) {
  console.log(`# ${label} over ${base}: p50 +${Math.round(p50(label) - p50(base))} µs, p99 +${Math.round(p99(label) - p99(base))} µs`);
}
// outpostd's relay, per call: the sums of its mcp_disconnect record over the calls of the run
// (sequential and pipelined together), medians over the rounds.
const timing = fs.readFileSync(process.argv[3], 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const stages = ['read', 'decide', 'commit', 'forward', 'response', 'return'];
console.log('| relay, µs per call | ' + stages.join(' | ') + ' | calls per batch |');
console.log('| --- |' + ' --- |'.repeat(stages.length + 1));
for (const label of ['outpost-durable', 'outpost-queued', 'outpost-http', 'outpost-http-http', 'outpost-http-2026', 'outpost-2026']) {
  const r = timing.filter((x) => x.label === label && x.calls > 0);
  if (r.length === 0) continue;
  const cells = stages.map((s) => med(r.map((x) => x.timing[`${s}_us`] / x.calls)).toFixed(1));
  cells.push(med(r.map((x) => x.calls / x.timing.client_batches)).toFixed(2));
  console.log(`| ${label} | ${cells.join(' | ')} |`);
}
JS

echo "# outpostd memory: 10 more agents running, 10,000-rule bundle in force"
for a in $(seq 0 9); do
  printf 'name: idle%s\ncommand: /bin/sleep\nargs: ["600"]\nrestart: never\n' "$a" >"$work/idle$a.yaml"
  "$outpost" agent deploy "$work/idle$a.yaml" >/dev/null
done
sleep 1
running=$("$outpost" agent list --json | grep -o '"state":"running"' | wc -l)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$daemon_pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$daemon_pid/status")
# RSS counts every library page mapped, shared or not; PSS shares them out, and the anonymous
# part is what outpostd itself allocated.
pss=$(awk '/^Pss:/ {print $2}' "/proc/$daemon_pid/smaps_rollup")
anon=$(awk '/^Anonymous:/ {print $2}' "/proc/$daemon_pid/smaps_rollup")
echo "{\"agents_running\":$running,\"rules\":10000,\"outpostd_rss_kb\":$rss,\"outpostd_peak_rss_kb\":$hwm,\"outpostd_pss_kb\":$pss,\"outpostd_anon_kb\":$anon}"
