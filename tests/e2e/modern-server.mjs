#!/usr/bin/env node
// An MCP server that speaks only MCP 2026-07-28 (stateless: no initialize, no session), built
// on the official v2 SDK server (@modelcontextprotocol/server's createMcpHandler, legacy
// traffic rejected), for outpost's end-to-end tests of outpostd as a 2026-07-28 client.
//
//   node modern-server.mjs --port-file FILE [--log FILE]
//
// Listens on 127.0.0.1 (a free port, written to FILE once listening). Tools:
//   echo {message}   -> "Echo: <message>"
//   shred {path}     -> "shredded <path>" (a tool the tests' policy never allows)
//   count {n}        -> n progress notifications, then "counted <n>"
// With --log, one JSON line per HTTP request: {"http":METHOD,"method":<Mcp-Method>,
// "name":<Mcp-Name>,"version":<MCP-Protocol-Version>,"session":<Mcp-Session-Id>,
// "rpc":<body method>,"meta":[<params._meta keys>],"client":<clientInfo name>,"status":N}.

import { appendFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { McpServer, createMcpHandler } from '@modelcontextprotocol/server';
import * as z from 'zod';

const { values: opts } = parseArgs({ options: { 'port-file': { type: 'string' }, log: { type: 'string' } } });
if (!opts['port-file']) {
  process.stderr.write('usage: node modern-server.mjs --port-file FILE [--log FILE]\n');
  process.exit(2);
}

function factory() {
  const server = new McpServer({ name: 'outpost-e2e-modern', version: '1.0.0' }, { instructions: 'a 2026-07-28 test server' });
  server.registerTool('echo', { description: 'Echoes its message', inputSchema: z.object({ message: z.string() }) },
    async ({ message }) => ({ content: [{ type: 'text', text: `Echo: ${message}` }] }));
  server.registerTool('shred', { description: 'Shreds a file', inputSchema: z.object({ path: z.string() }) },
    async ({ path }) => ({ content: [{ type: 'text', text: `shredded ${path}` }] }));
  server.registerTool('count', { description: 'Counts with progress', inputSchema: z.object({ n: z.number() }) },
    async ({ n }, ctx) => {
      for (let i = 1; i <= n; i++) await ctx.mcpReq?.notify?.({ method: 'notifications/progress', params: { progressToken: ctx.mcpReq?._meta?.progressToken, progress: i, total: n } });
      return { content: [{ type: 'text', text: `counted ${n}` }] };
    });
  return server;
}

const handler = createMcpHandler(factory, { legacy: 'reject' });

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks);
  const entry = {
    http: req.method,
    method: req.headers['mcp-method'] ?? null,
    name: req.headers['mcp-name'] ?? null,
    version: req.headers['mcp-protocol-version'] ?? null,
    session: req.headers['mcp-session-id'] ?? null,
  };
  try {
    const msg = JSON.parse(body.toString('utf8'));
    entry.rpc = msg.method ?? null;
    const meta = msg.params?._meta ?? {};
    entry.meta = Object.keys(meta);
    entry.client = meta['io.modelcontextprotocol/clientInfo']?.name ?? null;
  } catch {
    entry.rpc = null;
  }
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) {
    if (typeof v === 'string') headers.set(k, v);
  }
  const request = new Request(`http://${req.headers.host ?? '127.0.0.1'}${req.url}`, {
    method: req.method,
    headers,
    body: req.method === 'GET' || req.method === 'HEAD' ? undefined : body,
  });
  const response = await handler.fetch(request);
  entry.status = response.status;
  if (opts.log) appendFileSync(opts.log, JSON.stringify(entry) + '\n');
  res.writeHead(response.status, Object.fromEntries(response.headers.entries()));
  if (!response.body) return res.end();
  for await (const piece of response.body) res.write(piece);
  res.end();
});

server.listen(0, '127.0.0.1', () => {
  writeFileSync(`${opts['port-file']}.tmp`, String(server.address().port));
  renameSync(`${opts['port-file']}.tmp`, opts['port-file']);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.closeAllConnections?.();
    server.close(() => process.exit(0));
  });
}
