// Prints tests/e2e/agent.mjs's JSON lines (read on stdin) as one line per step for people.
import { createInterface } from 'node:readline';

const steps = process.argv[2] ? JSON.parse((await import('node:fs')).readFileSync(process.argv[2], 'utf8')) : [];
for await (const line of createInterface({ input: process.stdin })) {
  let o;
  try { o = JSON.parse(line); } catch { continue; }
  if (o.step === undefined) continue;
  const s = steps[o.step] ?? {};
  const what = s.op === 'call' ? `${s.server}/${s.tool} ${JSON.stringify(s.arguments)}`
    : s.op === 'egress' ? `egress ${s.mode === 'direct' ? 'TCP without the proxy to' : 'CONNECT'} ${s.host}:${s.port}`
    : `${s.server ?? ''} ${s.op}`;
  let result;
  if (!o.ok) result = `FAILED: ${o.error}`;
  else if (s.op === 'egress') {
    result = s.mode === 'direct' ? (o.connected ? 'CONNECTED' : `refused: ${o.code}`)
      : o.status === 200 ? `allowed (tls: ${o.tls})` : `REFUSED ${o.status} ${o.verdict}: ${o.reason}`;
  }
  else if (o.tools) result = `tools: ${o.tools.join(', ')}`;
  else {
    const text = (o.content ?? []).map((c) => c.text ?? `[${c.type}]`).join(' ').replace(/\s+/g, ' ').slice(0, 110);
    result = (o.isError ? 'DENIED/ERROR: ' : 'ok: ') + text + (o.progress ? ` (${o.progress} progress notifications)` : '');
  }
  console.log(`  ${String(o.step).padStart(2)} ${what.slice(0, 90)}\n       -> ${result}`);
}
