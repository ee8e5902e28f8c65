#!/usr/bin/env node
// An OAuth-protected front for a Streamable HTTP MCP server, for outpost's end-to-end tests:
// the authorization server and the resource server of one small deployment, on loopback.
//
//   node auth-front.mjs --port-file FILE --upstream http://127.0.0.1:P/mcp
//                       --client-id ID --client-secret SECRET [--token-life SECONDS]
//                       [--refuse-file FILE] [--log FILE] [--tls-cert CERT --tls-key KEY]
//
// Listens on 127.0.0.1 (HTTPS with --tls-cert/--tls-key; then its name is "localhost"), a port
// the kernel picks, and writes the port to FILE. SIGTERM or SIGINT closes it and exits 0.
//   GET  /.well-known/oauth-authorization-server   RFC 8414 metadata; issuer ORIGIN
//   POST /token     the client credentials grant (RFC 6749 §4.4), client_secret_basic only;
//                   the RFC 8707 resource must be ORIGIN/mcp. Tokens live --token-life seconds
//                   (default 60). While --refuse-file exists: 400 invalid_client.
//                   Also the authorization code grant with PKCE (S256 checked against the
//                   code's challenge, the redirect_uri the code's) and the refresh token grant
//                   (each refresh token works once: a new one comes with each answer); for these
//                   a public client may send client_id in the body instead of Basic.
//   GET  /authorize the authorization endpoint, approving at once (the test stands in for the
//                   operator's consent): 302 to redirect_uri (loopback only) with code and state;
//                   refused without code_challenge_method=S256.
//   *    /mcp       needs "Authorization: Bearer T", T issued here and not expired (else 401
//                   with WWW-Authenticate); then proxied to --upstream without the header,
//                   the answer (JSON or an event stream) streamed back as it comes.
// --log appends one JSON line per request:
//   {"kind":"token","status","grant_type","resource","client_id","token"?,"refresh_token"?,
//    "pkce":"ok"|"bad"?}
//   {"kind":"authorize","status","client_id","redirect_uri","code_challenge_method","resource"}
//   {"kind":"mcp","method","status","auth":"ok"|"missing"|"unknown"|"expired","token",
//    "mcp_method","mcp_name","session","protocol_version","rpc_method"}

import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import process from 'node:process';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    'port-file': { type: 'string' },
    upstream: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'token-life': { type: 'string', default: '60' },
    'refuse-file': { type: 'string' },
    log: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
  },
});
if (!opts['port-file'] || !opts.upstream || !opts['client-id'] || !opts['client-secret']) {
  process.stderr.write('usage: node auth-front.mjs --port-file FILE --upstream URL --client-id ID --client-secret S ...\n');
  process.exit(2);
}
const tls = Boolean(opts['tls-cert']);
const upstream = new URL(opts.upstream);
const life = Number(opts['token-life']);
const tokens = new Map(); // token -> expiry (ms)
const codes = new Map(); // code -> {challenge, redirect_uri, resource}
const refreshTokens = new Set(); // live refresh tokens (each works once)
let origin = '';

function log(entry) {
  if (opts.log) appendFileSync(opts.log, JSON.stringify(entry) + '\n');
}

function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function token(req, res) {
  const form = new URLSearchParams((await readBody(req)).toString());
  const entry = { kind: 'token', grant_type: form.get('grant_type'), resource: form.get('resource') };
  const basic = /^Basic (.+)$/.exec(req.headers.authorization ?? '');
  const [id, secret] = basic ? Buffer.from(basic[1], 'base64').toString().split(':') : [];
  entry.client_id = id ? decodeURIComponent(id) : form.get('client_id');
  const refuse = (status, error, description) => {
    log({ ...entry, status });
    json(res, status, { error, error_description: description });
  };
  if (opts['refuse-file'] && existsSync(opts['refuse-file'])) return refuse(400, 'invalid_client', 'client disabled');
  const userGrant = entry.grant_type === 'authorization_code' || entry.grant_type === 'refresh_token';
  const publicClient = userGrant && !basic && form.get('client_id') === opts['client-id'];
  if (!publicClient && (!basic || decodeURIComponent(id) !== opts['client-id'] || decodeURIComponent(secret ?? '') !== opts['client-secret'])) {
    return refuse(401, 'invalid_client', 'bad client credentials');
  }
  if (entry.resource !== `${origin}/mcp`) return refuse(400, 'invalid_target', `resource ${entry.resource}`);
  let refresh;
  if (entry.grant_type === 'authorization_code') {
    const code = codes.get(form.get('code'));
    codes.delete(form.get('code'));
    if (!code) return refuse(400, 'invalid_grant', 'unknown or used code');
    if (code.redirect_uri !== form.get('redirect_uri')) return refuse(400, 'invalid_grant', 'redirect_uri differs');
    const verifier = form.get('code_verifier') ?? '';
    entry.pkce = createHash('sha256').update(verifier).digest('base64url') === code.challenge ? 'ok' : 'bad';
    if (entry.pkce !== 'ok') return refuse(400, 'invalid_grant', 'PKCE verification failed');
    refresh = newRefreshToken();
  } else if (entry.grant_type === 'refresh_token') {
    if (!refreshTokens.delete(form.get('refresh_token'))) return refuse(400, 'invalid_grant', 'unknown or used refresh token');
    refresh = newRefreshToken();
  } else if (entry.grant_type !== 'client_credentials') {
    return refuse(400, 'unsupported_grant_type', entry.grant_type);
  }
  const t = randomBytes(18).toString('base64url');
  tokens.set(t, Date.now() + life * 1000);
  if (refresh) refreshTokens.add(refresh);
  log({ ...entry, status: 200, token: t, ...(refresh ? { refresh_token: refresh } : {}) });
  json(res, 200, { access_token: t, token_type: 'Bearer', expires_in: life, ...(refresh ? { refresh_token: refresh } : {}) });
}

// Refresh tokens as long as the JWTs many authorization servers issue (Keycloak, Entra ID):
// 800 characters, over what the TPM seals itself, so outpostd's envelope is what keeps them.
function newRefreshToken() {
  return randomBytes(600).toString('base64url');
}

function authorize(req, res) {
  const q = new URL(req.url, 'http://x').searchParams;
  const entry = {
    kind: 'authorize',
    client_id: q.get('client_id'),
    redirect_uri: q.get('redirect_uri'),
    code_challenge_method: q.get('code_challenge_method'),
    resource: q.get('resource'),
  };
  let redirect;
  try {
    redirect = new URL(q.get('redirect_uri') ?? '');
  } catch {
    redirect = null;
  }
  const bad = (why) => {
    log({ ...entry, status: 400 });
    json(res, 400, { error: 'invalid_request', error_description: why });
  };
  if (q.get('response_type') !== 'code' || q.get('client_id') !== opts['client-id']) return bad('response_type or client_id');
  if (!redirect || redirect.protocol !== 'http:' || redirect.hostname !== '127.0.0.1') return bad('redirect_uri must be loopback');
  if (q.get('code_challenge_method') !== 'S256' || !q.get('code_challenge')) return bad('PKCE S256 required');
  if (q.get('resource') !== `${origin}/mcp`) return bad(`resource ${q.get('resource')}`);
  const code = randomBytes(18).toString('base64url');
  codes.set(code, { challenge: q.get('code_challenge'), redirect_uri: q.get('redirect_uri') });
  redirect.searchParams.set('code', code);
  redirect.searchParams.set('state', q.get('state') ?? '');
  redirect.searchParams.set('iss', origin);  // RFC 9207
  log({ ...entry, status: 302 });
  res.writeHead(302, { location: redirect.toString() });
  res.end();
}

async function mcp(req, res) {
  const body = await readBody(req);
  const entry = {
    kind: 'mcp',
    method: req.method,
    mcp_method: req.headers['mcp-method'] ?? null,
    mcp_name: req.headers['mcp-name'] ?? null,
    session: req.headers['mcp-session-id'] ?? null,
    protocol_version: req.headers['mcp-protocol-version'] ?? null,
    credential: req.headers['x-outpost-credential'] ?? null,
  };
  try {
    entry.rpc_method = JSON.parse(body.toString()).method ?? null;
  } catch {
    entry.rpc_method = null;
  }
  const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
  entry.token = bearer ? bearer[1] : null;
  const expiry = bearer ? tokens.get(bearer[1]) : undefined;
  entry.auth = !bearer ? 'missing' : expiry === undefined ? 'unknown' : expiry <= Date.now() ? 'expired' : 'ok';
  if (entry.auth !== 'ok') {
    log({ ...entry, status: 401 });
    return json(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
  }
  const headers = { ...req.headers, host: upstream.host, 'content-length': String(body.length) };
  delete headers.authorization;
  const up = http.request(
    { hostname: upstream.hostname, port: upstream.port, path: upstream.pathname, method: req.method, headers },
    (answer) => {
      log({ ...entry, status: answer.statusCode });
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  up.on('error', (e) => {
    log({ ...entry, status: 502 });
    json(res, 502, { error: e.message });
  });
  up.end(body);
}

const handler = (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  let done;
  if (req.method === 'GET' && path === '/.well-known/oauth-authorization-server') {
    done = Promise.resolve(
      json(res, 200, {
        issuer: origin,
        token_endpoint: `${origin}/token`,
        authorization_endpoint: `${origin}/authorize`,
        grant_types_supported: ['client_credentials', 'authorization_code', 'refresh_token'],
        response_types_supported: ['code'],
        code_challenge_methods_supported: ['S256'],
        authorization_response_iss_parameter_supported: true,
        token_endpoint_auth_methods_supported: ['client_secret_basic', 'none'],
      }),
    );
  } else if (req.method === 'GET' && path === '/authorize') {
    done = Promise.resolve(authorize(req, res));
  } else if (req.method === 'POST' && path === '/token') {
    done = token(req, res);
  } else if (path === '/mcp') {
    done = mcp(req, res);
  } else {
    done = Promise.resolve(json(res, 404, { error: 'not found' }));
  }
  done.catch((e) => {
    if (!res.headersSent) json(res, 500, { error: String(e) });
  });
};

const server = tls
  ? https.createServer({ cert: readFileSync(opts['tls-cert']), key: readFileSync(opts['tls-key']) }, handler)
  : http.createServer(handler);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  origin = `${tls ? 'https' : 'http'}://${tls ? 'localhost' : '127.0.0.1'}:${port}`;
  writeFileSync(`${opts['port-file']}.tmp`, String(port));
  renameSync(`${opts['port-file']}.tmp`, opts['port-file']);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.closeAllConnections?.();
    server.close(() => process.exit(0));
  });
}
