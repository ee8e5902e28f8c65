// Loads outpost-hub's console in Debian's headless Chromium, driven over the DevTools protocol
// (Node 22's own WebSocket; no browser library), as an operator would: signs in with a token
// through the sign-in form, then opens the fleet page, a node's page, the bundles' rollout and
// a decision search. Prints what each page shows as one JSON object and keeps a screenshot of
// the fleet page. The C++ test (tests/integration/hub_console_test.cc) judges the JSON.
//
//   node console-check.mjs --chromium /usr/bin/chromium --url https://127.0.0.1:PORT
//        --pin HEX --token-file F --node ID --screenshot OUT.png
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
for (const k of ["chromium", "url", "pin", "token-file", "node", "screenshot"]) {
  if (!args[k]) throw new Error(`console-check: --${k} is required`);
}
const token = readFileSync(args["token-file"], "utf8").trim();
// Chromium trusts the hub's certificate by its key, as nodes do: the pin as base64.
const spki = Buffer.from(args.pin, "hex").toString("base64");

const profile = mkdtempSync(join(tmpdir(), "outpost-console-"));
const chromeArgs = [
  "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
  "--disable-background-networking", "--disable-dev-shm-usage", "--window-size=1400,900",
  `--user-data-dir=${profile}`, "--remote-debugging-port=0", `--ignore-certificate-errors-spki-list=${spki}`,
  "about:blank",
];
if (process.getuid && process.getuid() === 0) chromeArgs.unshift("--no-sandbox");  // Chromium refuses root otherwise
const chrome = spawn(args.chromium, chromeArgs, { stdio: ["ignore", "ignore", "pipe"] });
let chromeErr = "";
chrome.stderr.on("data", (d) => { chromeErr += d; });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = { pages: {} };
let ws;
try {
  // Chromium writes the port it chose into the profile.
  const portFile = join(profile, "DevToolsActivePort");
  for (let i = 0; i < 300 && !existsSync(portFile); ++i) await sleep(100);
  if (!existsSync(portFile)) throw new Error(`chromium did not start: ${chromeErr.slice(-2000)}`);
  const port = readFileSync(portFile, "utf8").split("\n")[0];
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  const page = targets.find((t) => t.type === "page");
  ws = new WebSocket(page.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  let nextId = 0;
  const pending = new Map();
  const waiters = [];
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.id !== undefined && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      msg.error ? reject(new Error(`${msg.error.message}`)) : resolve(msg.result);
    } else if (msg.method) {
      for (const w of [...waiters]) if (w.method === msg.method) { waiters.splice(waiters.indexOf(w), 1); w.resolve(msg.params); }
    }
  };
  const send = (method, params = {}) => new Promise((resolve, reject) => {
    const id = ++nextId;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ id, method, params }));
  });
  const event = (method, ms = 30000) => new Promise((resolve, reject) => {
    const w = { method, resolve };
    waiters.push(w);
    setTimeout(() => reject(new Error(`no ${method} within ${ms} ms`)), ms);
  });
  const evaluate = async (expr) => (await send("Runtime.evaluate", { expression: expr, returnByValue: true })).result.value;
  await send("Page.enable");
  await send("Runtime.enable");
  const load = async (path) => {
    const loaded = event("Page.loadEventFired");
    const started = performance.now();
    const nav = await send("Page.navigate", { url: args.url + path });
    if (nav.errorText) throw new Error(`${path}: ${nav.errorText}`);
    await loaded;
    return Math.round(performance.now() - started);
  };
  const describe = async (name, path) => {
    const ms = await load(path);
    out.pages[name] = await evaluate(`({
      url: location.pathname + location.search, title: document.title, ms: ${ms},
      text: document.body.innerText,
      rows: [...document.querySelectorAll("tr[data-node]")].map((r) => r.dataset.node),
      scripts: document.scripts.length,
    })`);
  };

  // Not signed in: sent to the sign-in page; signing in sets the cookie and lands on the fleet.
  await load("/console");
  out.redirected_to = await evaluate("location.pathname");
  const landed = event("Page.loadEventFired");
  await evaluate(`document.querySelector("input[name=token]").value = ${JSON.stringify(token)};
                  document.querySelector("form").submit(); true`);
  await landed;
  out.after_sign_in = await evaluate("location.pathname");
  await describe("fleet", "/console");
  const shot = await send("Page.captureScreenshot", { format: "png", captureBeyondViewport: true });
  writeFileSync(args.screenshot, Buffer.from(shot.data, "base64"));
  out.screenshot = args.screenshot;
  await describe("node", `/console/nodes/${args.node}`);
  await describe("bundles", "/console/bundles");
  await describe("denied", "/console/decisions?verdict=deny");
  await describe("signed_out", "/console/logout");
  await load("/console");
  out.after_sign_out = await evaluate("location.pathname");
} catch (e) {
  out.error = String(e && e.stack || e);
} finally {
  try { ws && ws.close(); } catch {}
  chrome.kill("SIGTERM");
  await new Promise((r) => { if (chrome.exitCode !== null) r(); else chrome.on("exit", r); setTimeout(r, 5000); });
  // Chromium's helpers may still be writing the profile as they exit: retry, and never let
  // the clean-up decide the check.
  try { rmSync(profile, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 }); } catch (e) {
    process.stderr.write(`console-check: profile ${profile} left behind: ${e.message}\n`);
  }
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
