#!/usr/bin/env node
// A scripted MCP agent built on the official SDK client, for outpost's end-to-end tests and demo.
//
//   node agent.mjs CONFIG.json STEPS.json
//
// CONFIG is shaped like a common MCP client configuration:
//   {"mcpServers": {"fs": {"command": "outpost", "args": ["mcp", "connect", "fs"],
//                          "env": {...}, "cwd": "..."}},
//    "roots": ["file:///tmp/work", {"uri": "file:///tmp/other", "name": "other"}]}
// Each server's child gets PATH, HOME and every OUTPOST_* variable of this process's own
// environment, then the server's "env" on top (the SDK alone would pass only its allowlist).
// A server given as {"url": "http://..."} is reached with the SDK's Streamable HTTP client
// instead; "$OUTPOST_MCP_URL" at its start is replaced by that variable (outpostd's endpoint
// in the agent's namespace, http://127.0.0.1:PORT/mcp/). With "protocol": "2026-07-28" as well,
// the client is the SDK's v2 (@modelcontextprotocol/client), pinned to that revision: it
// probes with server/discover and then sends stateless requests (no initialize, no session),
// and declares no capabilities; with "elicit": {...} too, it declares elicitation and accepts
// every elicitation (an input request of MCP 2026-07-28, which the SDK fulfils and retries
// with) with that content.
// The client declares the roots capability and answers every roots/list with CONFIG.roots.
//
// STEPS is a JSON array; each step prints one JSON line on stdout:
//   {"server":"fs","op":"list"}
//       -> {"step":i,"server":"fs","op":"list","ok":true,"tools":["read_file",...]}
//   {"server":"fs","op":"call","tool":"read_text_file","arguments":{...},
//    "progress":true?, "timeoutMs":N?}
//       -> {"step":i,"server":"fs","op":"call","ok":true,"isError":false,"content":[...],
//           "structuredContent":{...}?, "progress":N, "progressHandled":M}
//       progress/progressHandled only with "progress":true (onprogress is passed to callTool):
//       N counts the call's notifications/progress as received on the wire, M those that
//       reached onprogress (the SDK drops one that arrives in the same read as the result).
//   {"op":"roots", "atLeast":N?, "timeoutMs":N?}
//       -> {"step":i,"op":"roots","ok":true,"rootsRequests":N,"byServer":{"fs":N}}
//          (with atLeast, first waits up to timeoutMs (default 5000) until N were answered)
//   {"op":"sleep","ms":N}
//       -> {"step":i,"op":"sleep","ok":true}
//   {"op":"wait","file":PATH,"timeoutMs":N?}
//       -> {"step":i,"op":"wait","ok":true}: once PATH exists (the harness's go-ahead), or
//          ok:false after timeoutMs (default 30000)
//   {"server":"fs","op":"version"}
//       -> {"step":i,"server":"fs","op":"version","ok":true,"version":"2026-07-28"}: the
//          protocol revision the client negotiated (v2 clients only)
//   {"op":"env"}
//       -> {"step":i,"op":"env","ok":true,"env":{...}}: this process's environment, for tests
//          that check what the agent was (not) given
//   {"server":"fs","op":"disconnect"}
//       -> {"step":i,"server":"fs","op":"disconnect","ok":true}: the client is closed; the next
//          step that names the server connects it again (a new MCP connection)
//   {"server":"fs","op":"flood","tool":"...","arguments":{...},"count":N,"concurrency":C?}
//       -> {"step":i,...,"ok":true,"calls":N,"isError":K,"failed":F}: N calls, C in flight at
//          once (default 1); K came back as error results, F threw
//   {"op":"egress","mode":"connect","host":H,"port":P,"sni":S?}
//       -> {"step":i,"op":"egress","ok":true,"status":200|403|...,"verdict":..,"reason":..,
//           "tls":"ok"|"<error>","reply":"<first line the server sent over TLS>"}: a CONNECT
//          through the egress proxy (OUTPOST_EGRESS_PROXY), then a TLS handshake with
//          servername S (default H; certificates are not checked: the path is under test)
//   {"op":"egress","mode":"http","url":"http://H:P/path"}
//       -> {..., "status":N, "verdict":.., "reason":.., "body":"..."}: one absolute-form GET
//   {"op":"egress","mode":"direct","host":"127.0.0.1","port":P}
//       -> {..., "connected":false, "code":"EACCES"|...}: TCP without the proxy
//   {"op":"egress","mode":"resolve","host":H,"stubHost":S}
//       -> {..., "lookup":"<code>", "lookupMs":T, "stub":"<code>", "stubMs":T}: H resolved in
//          the namespace by getaddrinfo (dns.lookup, /etc/resolv.conf as the host has it), and S
//          (default H) by c-ares asking 127.0.0.1:53; each code is the error (or "resolved")
// server-filesystem asks for roots/list right after initialization and then REPLACES its
// command-line directories with the valid roots, some milliseconds after the answer; a test
// that depends on that waits with {"op":"roots","atLeast":1} then {"op":"sleep","ms":300}.
// With no "roots" in CONFIG the client answers an empty list and the server keeps its args.
// A step that throws prints {"step":i,"server":..,"op":..,"ok":false,"error":"message"} and the
// run goes on. A server is connected on the first step that names it; a failed connection
// fails every step that names that server. At the end: {"done":true,"rootsRequests":N}, and
// every client is closed. Exit status 0, or 2 when CONFIG or STEPS cannot be read.

import dns from 'node:dns';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import process from 'node:process';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ListRootsRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { Client as ModernClient, StreamableHTTPClientTransport as ModernHttpTransport } from '@modelcontextprotocol/client';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function readJson(path, what) {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    process.stderr.write(`agent: cannot read ${what} ${path}: ${e.message}\n`);
    process.exit(2);
  }
}

if (process.argv.length !== 4) {
  process.stderr.write('usage: node agent.mjs CONFIG.json STEPS.json\n');
  process.exit(2);
}
const config = readJson(process.argv[2], 'config');
const steps = readJson(process.argv[3], 'steps');
if (!config || typeof config.mcpServers !== 'object' || config.mcpServers === null) {
  process.stderr.write('agent: config has no "mcpServers" object\n');
  process.exit(2);
}
if (!Array.isArray(steps)) {
  process.stderr.write('agent: steps must be a JSON array\n');
  process.exit(2);
}

const roots = (config.roots ?? []).map((r) => (typeof r === 'string' ? { uri: r } : r));
const rootsByServer = {};
let rootsRequests = 0;
let rootsWaiters = [];

function noteRootsRequest(name) {
  rootsRequests += 1;
  rootsByServer[name] = (rootsByServer[name] ?? 0) + 1;
  const waiting = rootsWaiters;
  rootsWaiters = [];
  for (const w of waiting) w();
}

function childEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && (k.startsWith('OUTPOST_') || k === 'PATH' || k === 'HOME')) env[k] = v;
  }
  for (const [k, v] of Object.entries(extra ?? {})) env[k] = String(v);
  return env;
}

const clients = new Map(); // name -> Promise<Client>

function connect(name) {
  if (clients.has(name)) return clients.get(name);
  const p = (async () => {
    const spec = config.mcpServers[name];
    if (!spec || (typeof spec.command !== 'string' && typeof spec.url !== 'string')) {
      throw new Error(`no server "${name}" in config`);
    }
    const url = spec.url ? new URL(spec.url.replace(/^\$OUTPOST_MCP_URL/, process.env.OUTPOST_MCP_URL ?? '')) : undefined;
    const modern = url !== undefined && typeof spec.protocol === 'string';
    const client = modern
      ? new ModernClient({ name: 'outpost-e2e-agent', version: '1.0.0' },
                         { capabilities: spec.elicit ? { elicitation: {} } : {}, versionNegotiation: { mode: { pin: spec.protocol } } })
      : new Client({ name: 'outpost-e2e-agent', version: '1.0.0' }, { capabilities: { roots: { listChanged: true } } });
    if (modern && spec.elicit) {
      client.setRequestHandler('elicitation/create', async () => ({ action: 'accept', content: spec.elicit }));
    }
    if (!modern) {
      client.setRequestHandler(ListRootsRequestSchema, async () => {
        noteRootsRequest(name);
        return { roots };
      });
    }
    client.outpostModern = modern;
    client.onerror = (e) => process.stderr.write(`agent: ${name}: ${e?.message ?? e}\n`);
    const transport = modern
      ? new ModernHttpTransport(url)
      : url
      ? new StreamableHTTPClientTransport(url)
      : new StdioClientTransport({
          command: spec.command,
          args: spec.args ?? [],
          env: childEnv(spec.env),
          cwd: spec.cwd,
          stderr: 'inherit',
        });
    try {
      await client.connect(transport);
    } catch (e) {
      await client.close().catch(() => {});
      throw e;
    }
    // Count progress notifications as they come off the wire. The SDK runs notification
    // handlers a microtask late but settles responses at once, so a last progress
    // notification that arrives in the same read as the result never reaches onprogress.
    const wire = { lastCallId: undefined, progress: new Map() };
    const onmessage = transport.onmessage;
    transport.onmessage = (msg, extra) => {
      if (msg?.method === 'notifications/progress') {
        const token = msg.params?.progressToken;
        wire.progress.set(token, (wire.progress.get(token) ?? 0) + 1);
      }
      onmessage?.(msg, extra);
    };
    const send = transport.send.bind(transport);
    transport.send = (msg, opts) => {
      if (msg?.method === 'tools/call') wire.lastCallId = msg.id;
      return send(msg, opts);
    };
    client.outpostWire = wire;
    return client;
  })();
  p.catch(() => {}); // reported by the step that awaits it
  clients.set(name, p);
  return p;
}

function waitForRoots(atLeast, timeoutMs) {
  if (rootsRequests >= atLeast) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    const check = () => {
      if (rootsRequests >= atLeast) {
        clearTimeout(timer);
        resolve();
      } else {
        rootsWaiters.push(check);
      }
    };
    rootsWaiters.push(check);
  });
}

// The proxy's answer to a request written on `sock`: status line and the X-Outpost headers.
function readHead(sock) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      sock.off('data', onData);
      const head = buf.subarray(0, end).toString('latin1').split('\r\n');
      const headers = {};
      for (const line of head.slice(1)) {
        const c = line.indexOf(':');
        if (c > 0) headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
      }
      resolve({ status: Number(head[0].split(' ')[1]), headers, rest: buf.subarray(end + 4) });
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.once('end', () => reject(new Error('the proxy closed the connection')));
  });
}

function proxySocket() {
  const u = new URL(process.env.OUTPOST_EGRESS_PROXY ?? 'http://127.0.0.1:3128');
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname, () => resolve(sock));
    sock.once('error', reject);
  });
}

// How long a resolution takes to give its answer, and which.
async function timed(fn) {
  const t0 = performance.now();
  try {
    await fn();
    return ['resolved', Math.round(performance.now() - t0)];
  } catch (e) {
    return [e.code ?? e.message, Math.round(performance.now() - t0)];
  }
}

async function egress(step) {
  if (step.mode === 'resolve') {
    const [lookup, lookupMs] = await timed(() => dns.promises.lookup(step.host));
    const stub = new dns.promises.Resolver({ timeout: 5000, tries: 1 });
    stub.setServers(['127.0.0.1']);
    const [stubCode, stubMs] = await timed(() => stub.resolve4(step.stubHost ?? step.host));
    return { lookup, lookupMs, stub: stubCode, stubMs };
  }
  if (step.mode === 'direct') {
    return new Promise((resolve) => {
      const sock = net.connect(step.port, step.host, () => {
        sock.destroy();
        resolve({ connected: true });
      });
      sock.once('error', (e) => resolve({ connected: false, code: e.code }));
    });
  }
  const sock = await proxySocket();
  try {
    if (step.mode === 'http') {
      const u = new URL(step.url);
      sock.write(`GET ${step.url} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\n\r\n`);
      const head = await readHead(sock);
      let body = head.rest;
      await new Promise((resolve) => {
        sock.on('data', (d) => (body = Buffer.concat([body, d])));
        sock.once('close', resolve);
      });
      return { status: head.status, verdict: head.headers['x-outpost-verdict'], reason: head.headers['x-outpost-reason'],
               body: body.toString('utf8') };
    }
    sock.write(`CONNECT ${step.host}:${step.port} HTTP/1.1\r\nHost: ${step.host}:${step.port}\r\n\r\n`);
    const head = await readHead(sock);
    const r = { status: head.status, verdict: head.headers['x-outpost-verdict'], reason: head.headers['x-outpost-reason'] };
    if (head.status !== 200) return r;
    r.tls = await new Promise((resolve) => {
      const t = tls.connect({ socket: sock, servername: step.sni ?? step.host, rejectUnauthorized: false }, () => {
        t.write('GET / HTTP/1.0\r\n\r\n');
      });
      let reply = '';
      t.on('data', (d) => (reply += d.toString('utf8')));
      t.once('end', () => {
        r.reply = reply.split('\r\n')[0];
        resolve('ok');
      });
      t.once('error', (e) => resolve(e.message));
    });
    return r;
  } finally {
    sock.destroy();
  }
}

async function runStep(step) {
  const op = step?.op;
  switch (op) {
    case 'list': {
      const client = await connect(step.server);
      const tools = [];
      let cursor;
      do {
        const res = await client.listTools(cursor ? { cursor } : {});
        for (const t of res.tools) tools.push(t.name);
        cursor = res.nextCursor;
      } while (cursor);
      return { tools };
    }
    case 'call': {
      if (typeof step.tool !== 'string') throw new Error('call step has no "tool"');
      const client = await connect(step.server);
      let progress = 0;
      const options = {};
      if (step.progress) {
        options.onprogress = () => {
          progress += 1;
        };
        options.resetTimeoutOnProgress = true;
      }
      if (step.timeoutMs) options.timeout = step.timeoutMs;
      const params = { name: step.tool, arguments: step.arguments ?? {} };
      // The v2 client takes the options second (no result schema).
      const res = client.outpostModern ? await client.callTool(params, options) : await client.callTool(params, undefined, options);
      const r = { isError: res.isError === true, content: res.content ?? [] };
      if (res.structuredContent !== undefined) r.structuredContent = res.structuredContent;
      if (step.progress) {
        const wire = client.outpostWire;
        r.progress = wire.progress.get(wire.lastCallId) ?? 0;
        wire.progress.delete(wire.lastCallId);
        r.progressHandled = progress;
      }
      return r;
    }
    case 'roots': {
      if (step.atLeast) await waitForRoots(step.atLeast, step.timeoutMs ?? 5000);
      return { rootsRequests, byServer: { ...rootsByServer } };
    }
    case 'sleep': {
      await new Promise((resolve) => setTimeout(resolve, step.ms ?? 0));
      return {};
    }
    case 'wait': {
      const deadline = Date.now() + (step.timeoutMs ?? 30000);
      while (!existsSync(step.file)) {
        if (Date.now() > deadline) throw new Error(`no ${step.file} after ${step.timeoutMs ?? 30000} ms`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return {};
    }
    case 'version': {
      const client = await connect(step.server);
      return { version: client.getNegotiatedProtocolVersion?.() ?? null };
    }
    case 'env':
      return { env: { ...process.env } };
    case 'disconnect': {
      const p = clients.get(step.server);
      clients.delete(step.server);
      if (p) await (await p).close();
      return {};
    }
    case 'flood': {
      const client = await connect(step.server);
      const count = step.count ?? 1;
      let next = 0;
      let isError = 0;
      let failed = 0;
      const worker = async () => {
        while (next < count) {
          next += 1;
          try {
            const res = await client.callTool({ name: step.tool, arguments: step.arguments ?? {} });
            if (res.isError === true) isError += 1;
          } catch {
            failed += 1;
          }
        }
      };
      await Promise.all(Array.from({ length: step.concurrency ?? 1 }, worker));
      return { calls: count, isError, failed };
    }
    case 'egress':
      return egress(step);
    default:
      throw new Error(`unknown op ${JSON.stringify(op)}`);
  }
}

for (let i = 0; i < steps.length; i++) {
  const step = steps[i] ?? {};
  const head = { step: i };
  if (step.server !== undefined) head.server = step.server;
  if (step.op !== undefined) head.op = step.op;
  try {
    const r = await runStep(step);
    out({ ...head, ok: true, ...r });
  } catch (e) {
    out({ ...head, ok: false, error: e instanceof Error ? e.message : String(e) });
  }
}

out({ done: true, rootsRequests });
for (const p of clients.values()) {
  try {
    const client = await p;
    await client.close();
  } catch {
    // a client that never connected has nothing to close
  }
}
