#!/usr/bin/env node
// MCP round-trip latency through a stdio server command, measured with the official SDK client.
//
//   node bench-latency.mjs [--calls N] [--label L] [--warmup W] [--inflight K] [--tool T]
//                          [--payload BYTES] (-- CMD ARGS... | --url URL [--protocol 2026-07-28])
//
// CMD is an MCP server command: server-everything itself, the byte pump (tests/bench/pump.cc)
// in front of it, or `outpost mcp connect SERVER`. With --url the client speaks Streamable
// HTTP to the server at URL instead (server-everything's streamableHttp mode, directly); with
// --protocol as well, the client is the v2 SDK's pinned to that revision (stateless requests,
// no session: outpostd's endpoint serves them, server-everything does not). The client connects, checks that tool T
// (default "echo") is listed, makes W (default 200) warm-up calls, then N (default 1000)
// sequential tools/call requests, each timed with process.hrtime.bigint(), then N more with K
// (default 32) in flight at once for throughput. Every answer must be the echo of what was
// sent, or the run fails. Prints one JSON line:
//   {"label":L,"calls":N,"p50_us":..,"p90_us":..,"p99_us":..,"mean_us":..,"min_us":..,
//    "max_us":..,"inflight":K,"pipelined_calls_per_s":..}
// Exit status 0, 1 when a call failed or answered wrongly, 2 on bad usage.
// Like tests/e2e/agent.mjs, the child gets PATH, HOME and every OUTPOST_* variable.

import process from 'node:process';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Client as ModernClient, StreamableHTTPClientTransport as ModernHttpTransport } from '@modelcontextprotocol/client';

function usage(msg) {
  if (msg) process.stderr.write(`bench-latency: ${msg}\n`);
  process.stderr.write(
    'usage: node bench-latency.mjs [--calls N] [--label L] [--warmup W] [--inflight K] ' +
      '[--tool T] [--payload BYTES] (-- CMD ARGS... | --url URL [--protocol V])\n',
  );
  process.exit(2);
}

const opts = { calls: 1000, label: 'direct', warmup: 200, inflight: 32, tool: 'echo', payload: 16, url: '', protocol: '' };
const argv = process.argv.slice(2);
let sep = argv.indexOf('--');
if (sep < 0) sep = argv.length;
const command = argv.slice(sep + 1);
for (let i = 0; i < sep; i += 2) {
  const key = argv[i]?.replace(/^--/, '');
  const value = argv[i + 1];
  if (!(key in opts) || value === undefined || i + 1 >= sep) usage(`bad option ${argv[i]}`);
  if (typeof opts[key] === 'number') {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0 || (key !== 'warmup' && n === 0)) usage(`bad ${argv[i]} ${value}`);
    opts[key] = n;
  } else {
    opts[key] = value;
  }
}
if ((command.length === 0) === (opts.url === '')) usage('give either a server command after -- or --url');
if (opts.protocol !== '' && opts.url === '') usage('--protocol needs --url');

const env = {};
for (const [k, v] of Object.entries(process.env)) {
  if (v !== undefined && (k.startsWith('OUTPOST_') || k === 'PATH' || k === 'HOME')) env[k] = v;
}

const info = { name: 'outpost-bench-latency', version: '1.0.0' };
const client = opts.protocol
  ? new ModernClient(info, { capabilities: {}, versionNegotiation: { mode: { pin: opts.protocol } } })
  : new Client(info, { capabilities: {} });
const transport = opts.protocol
  ? new ModernHttpTransport(new URL(opts.url))
  : opts.url
  ? new StreamableHTTPClientTransport(new URL(opts.url))
  : new StdioClientTransport({ command: command[0], args: command.slice(1), env, stderr: 'inherit' });

const pad = 'x'.repeat(opts.payload);
let failures = 0;
let firstFailure;

async function call(i) {
  const message = `${i}:${pad}`;
  try {
    const res = await client.callTool({ name: opts.tool, arguments: { message } });
    const text = res.content?.[0]?.text;
    if (res.isError || !text?.endsWith(message)) {
      throw new Error(`unexpected answer ${JSON.stringify(res).slice(0, 300)}`);
    }
  } catch (e) {
    failures += 1;
    firstFailure ??= e instanceof Error ? e.message : String(e);
  }
}

function percentile(sorted, p) {
  // nearest rank
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

const round = (x) => Math.round(x * 10) / 10;

try {
  await client.connect(transport);
  const { tools } = await client.listTools();
  if (!tools.some((t) => t.name === opts.tool)) {
    throw new Error(`server has no tool "${opts.tool}" (has ${tools.map((t) => t.name).join(', ')})`);
  }

  for (let i = 0; i < opts.warmup; i++) await call(i);

  const lat = new Array(opts.calls);
  for (let i = 0; i < opts.calls; i++) {
    const t0 = process.hrtime.bigint();
    await call(i);
    lat[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  lat.sort((a, b) => a - b);
  const mean = lat.reduce((a, b) => a + b, 0) / lat.length;

  let next = 0;
  const worker = async () => {
    while (next < opts.calls) await call(next++);
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Math.min(opts.inflight, opts.calls) }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;

  const result = {
    label: opts.label,
    calls: opts.calls,
    p50_us: round(percentile(lat, 50)),
    p90_us: round(percentile(lat, 90)),
    p99_us: round(percentile(lat, 99)),
    mean_us: round(mean),
    min_us: round(lat[0]),
    max_us: round(lat[lat.length - 1]),
    inflight: opts.inflight,
    pipelined_calls_per_s: Math.round(opts.calls / seconds),
  };
  if (failures > 0) {
    result.failures = failures;
    result.first_failure = firstFailure;
  }
  process.stdout.write(JSON.stringify(result) + '\n');
} catch (e) {
  failures += 1;
  process.stderr.write(`bench-latency: ${e instanceof Error ? e.message : String(e)}\n`);
} finally {
  await client.close().catch(() => {});
}
if (failures > 0) {
  if (firstFailure) process.stderr.write(`bench-latency: ${failures} failed calls, first: ${firstFailure}\n`);
  process.exitCode = 1;
}
