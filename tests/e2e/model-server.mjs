#!/usr/bin/env node
// A scripted OpenAI-compatible model endpoint for outpost's end-to-end tests. The model is not
// under test, the network path to it is: the answers follow a fixed script.
//
//   node model-server.mjs --port-file FILE [--log FILE] [--require-auth "Bearer XYZ"]
//                         [--tls-cert CERT.pem --tls-key KEY.pem]
//
// Listens on 127.0.0.1, a port the kernel picks (HTTPS with --tls-cert/--tls-key), and writes
// that port to FILE once listening. SIGTERM or SIGINT closes it and exits 0.
//
// The script uses server-everything's tools get-sum and echo, matched the way the Agents SDK
// names MCP tools for the model (each character but a letter or digit becomes "_": get_sum).
//
//   POST /v1/chat/completions  non-streaming Chat Completions, scripted from the messages sent
//                              (never from a counter, so concurrent and repeated runs work):
//       no get-sum result yet  -> step "call-sum":  a call of get-sum {a, b}, the first two
//                                 integers of the first user message (default 17 and 25)
//       no echo result yet     -> step "call-echo": a call of echo {"message":"the sum is N"},
//                                 N the last number in the get-sum result
//       both results present   -> step "final": "The sum is N; echo said: <echo result>"
//       a tool that the step needs is not in the request's "tools" -> step "missing-tool",
//       a plain answer that says which tool is missing
//   GET /v1/models             a list with the single model "scripted"
//   anything else              404 with a JSON error
// With --require-auth, every request whose Authorization header is not exactly that value
// gets 401 with a JSON error (step "unauthorized").
// --log appends one JSON line per request:
//   {"method","path","status","authorization":{"present","value"},"model","n_messages",
//    "tool_names","step"}

import { appendFileSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import process from 'node:process';
import { parseArgs } from 'node:util';

// Tool names compared as the Agents SDK turns MCP tool names into function names.
const toolKey = (name) => String(name).replace(/[^a-zA-Z0-9]/g, '_');
const SUM_TOOL = toolKey('get-sum');
const ECHO_TOOL = toolKey('echo');

let opts;
try {
  opts = parseArgs({
    options: {
      'port-file': { type: 'string' },
      log: { type: 'string' },
      'require-auth': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
    },
  }).values;
} catch (e) {
  process.stderr.write(`model-server: ${e.message}\n`);
  process.exit(2);
}
if (!opts['port-file'] || !opts['tls-cert'] !== !opts['tls-key']) {
  process.stderr.write(
    'usage: node model-server.mjs --port-file FILE [--log FILE] [--require-auth VALUE]' +
      ' [--tls-cert CERT --tls-key KEY]\n',
  );
  process.exit(2);
}

// Text of a message's content: a string, or an array of parts with "text".
function textOf(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((p) => p?.text ?? '').join('');
  return '';
}

// The results of the tools found in the messages: toolKey(name) -> text of its result.
function toolResults(messages) {
  const callNames = new Map(); // tool_call_id -> function name
  for (const m of messages) {
    for (const c of m?.tool_calls ?? []) callNames.set(c.id, toolKey(c.function?.name));
  }
  const results = new Map();
  for (const m of messages) {
    if (m?.role === 'tool') results.set(callNames.get(m.tool_call_id), textOf(m.content));
  }
  return results;
}

// The next step of the script: {step, message, finish_reason}.
function nextStep(body) {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const names = (body.tools ?? []).map((t) => t?.function?.name);
  const offered = new Map(names.map((n) => [toolKey(n), n])); // toolKey -> name as offered
  const results = toolResults(messages);
  const missing = (key) => ({
    step: 'missing-tool',
    finish_reason: 'stop',
    message: {
      role: 'assistant',
      content:
        `I cannot do this: no "${key}" tool was offered` +
        ` (tools: ${names.join(', ') || 'none'}).`,
    },
  });
  const call = (step, key, args) => ({
    step,
    finish_reason: 'tool_calls',
    message: {
      role: 'assistant',
      content: null,
      tool_calls: [
        {
          id: `call_${step}_${Math.random().toString(36).slice(2, 10)}`,
          type: 'function',
          function: { name: offered.get(key), arguments: JSON.stringify(args) },
        },
      ],
    },
  });

  if (!results.has(SUM_TOOL)) {
    if (!offered.has(SUM_TOOL)) return missing(SUM_TOOL);
    const user = textOf(messages.find((m) => m?.role === 'user')?.content);
    const [a = 17, b = 25] = (user.match(/-?\d+/g) ?? []).map(Number);
    return call('call-sum', SUM_TOOL, { a, b });
  }
  const sum = results.get(SUM_TOOL).match(/-?\d+(?:\.\d+)?/g)?.at(-1) ?? '?';
  if (!results.has(ECHO_TOOL)) {
    if (!offered.has(ECHO_TOOL)) return missing(ECHO_TOOL);
    return call('call-echo', ECHO_TOOL, { message: `the sum is ${sum}` });
  }
  return {
    step: 'final',
    finish_reason: 'stop',
    message: {
      role: 'assistant',
      content: `The sum is ${sum}; echo said: ${results.get(ECHO_TOOL)}`,
    },
  };
}

function send(res, status, obj) {
  const data = JSON.stringify(obj);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(data),
  });
  res.end(data);
}

function errorBody(message, type, code = null) {
  return { error: { message, type, param: null, code } };
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function handle(req, res) {
  const path = new URL(req.url, 'http://x').pathname;
  const auth = req.headers.authorization;
  const entry = {
    method: req.method,
    path,
    authorization: { present: auth !== undefined, value: auth ?? null },
  };
  const reply = (status, obj, fields = {}) => {
    Object.assign(entry, { status }, fields);
    if (opts.log) appendFileSync(opts.log, JSON.stringify(entry) + '\n');
    send(res, status, obj);
  };

  if (opts['require-auth'] !== undefined && auth !== opts['require-auth']) {
    await readBody(req);
    const message = 'missing or wrong Authorization header';
    const err = errorBody(message, 'invalid_request_error', 'invalid_api_key');
    return reply(401, err, { step: 'unauthorized' });
  }
  if (req.method === 'GET' && path === '/v1/models') {
    await readBody(req);
    const model = { id: 'scripted', object: 'model', created: 0, owned_by: 'outpost-e2e' };
    return reply(200, { object: 'list', data: [model] }, { step: 'models' });
  }
  if (req.method === 'POST' && path === '/v1/chat/completions') {
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      const err = errorBody('request body is not JSON', 'invalid_request_error');
      return reply(400, err, { step: 'bad-request' });
    }
    const fields = {
      model: body.model ?? null,
      n_messages: Array.isArray(body.messages) ? body.messages.length : 0,
      tool_names: (body.tools ?? []).map((t) => t?.function?.name),
    };
    if (body.stream) {
      const err = errorBody('this scripted model does not stream', 'invalid_request_error');
      return reply(400, err, { ...fields, step: 'bad-request' });
    }
    const { step, message, finish_reason } = nextStep(body);
    return reply(
      200,
      {
        id: `chatcmpl-${Math.random().toString(36).slice(2, 12)}`,
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: body.model ?? 'scripted',
        choices: [{ index: 0, message, finish_reason, logprobs: null }],
        usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
      },
      { ...fields, step },
    );
  }
  await readBody(req);
  const err = errorBody(`no route for ${req.method} ${path}`, 'not_found');
  return reply(404, err, { step: 'not-found' });
}

const onRequest = (req, res) => {
  handle(req, res).catch((e) => {
    process.stderr.write(`model-server: ${e?.stack ?? e}\n`);
    if (!res.headersSent) send(res, 500, errorBody(String(e?.message ?? e), 'server_error'));
    else res.destroy();
  });
};
const server = opts['tls-cert']
  ? https.createServer(
      { cert: readFileSync(opts['tls-cert']), key: readFileSync(opts['tls-key']) },
      onRequest,
    )
  : http.createServer(onRequest);

server.listen(0, '127.0.0.1', () => {
  // Written then renamed, so a reader never sees a partial port.
  const tmp = `${opts['port-file']}.tmp${process.pid}`;
  writeFileSync(tmp, `${server.address().port}\n`);
  renameSync(tmp, opts['port-file']);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
