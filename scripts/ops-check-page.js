#!/usr/bin/env node
// Loads the gateway's status page in headless Debian Chromium through the DevTools protocol
// (Node's built-in WebSocket: run with `node --experimental-websocket` on Node 20), and checks
// that it loads with no console errors or exceptions and that its numbers change while a storm
// runs. Prints "LOADED" once the first render is in, then one JSON result line; exits non-zero
// on failure. Usage: ops-check-page.js URL SCREENSHOT.png [TIMEOUT_S]
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const [url, shot, timeoutArg] = process.argv.slice(2);
const timeoutS = Number(timeoutArg || 120);
if (!url || !shot) { console.error("usage: ops-check-page.js URL SCREENSHOT.png [TIMEOUT_S]"); process.exit(2); }
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "bw-chromium-"));
const browser = spawn(chromium, [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage", `--user-data-dir=${profile}`, "--remote-debugging-port=0", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });

let finished = false;
function finish(code, result) {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify(result));
  try { browser.kill("SIGKILL"); } catch (e) { /* gone */ }
  setTimeout(() => { fs.rmSync(profile, { recursive: true, force: true }); process.exit(code); }, 300);
}
const overall = setTimeout(() => finish(1, { ok: false, error: `timed out after ${timeoutS} s` }), timeoutS * 1000);
browser.on("exit", (c) => finish(1, { ok: false, error: `chromium exited (${c})` }));

let stderr = "";
browser.stderr.on("data", (d) => {
  stderr += d.toString();
  const m = stderr.match(/DevTools listening on (ws:\/\/\S+)/);
  if (m && !globalThis.__started) { globalThis.__started = true; run(m[1]).catch((e) => finish(1, { ok: false, error: String(e && e.stack || e) })); }
});

async function run(wsUrl) {
  const ws = new WebSocket(wsUrl);
  await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error("websocket error")); });
  let id = 0;
  const pending = new Map();
  const errors = [];
  let loaded = null;
  ws.onmessage = (msg) => {
    const m = JSON.parse(msg.data);
    if (m.id && pending.has(m.id)) {
      const { res, rej } = pending.get(m.id);
      pending.delete(m.id);
      if (m.error) rej(new Error(JSON.stringify(m.error))); else res(m.result);
      return;
    }
    if (m.method === "Runtime.consoleAPICalled" && (m.params.type === "error" || m.params.type === "assert")) {
      errors.push("console." + m.params.type + ": " + m.params.args.map((a) => a.value ?? a.description).join(" "));
    } else if (m.method === "Runtime.exceptionThrown") {
      errors.push("exception: " + (m.params.exceptionDetails.exception?.description || m.params.exceptionDetails.text));
    } else if (m.method === "Log.entryAdded" && m.params.entry.level === "error") {
      errors.push("log: " + m.params.entry.text + " " + (m.params.entry.url || ""));
    } else if (m.method === "Page.loadEventFired" && loaded) {
      loaded();
    }
  };
  let sessionId;
  const send = (method, params = {}) => new Promise((res, rej) => {
    id += 1;
    pending.set(id, { res, rej });
    const msg = { id, method, params };
    if (sessionId) msg.sessionId = sessionId;
    ws.send(JSON.stringify(msg));
  });
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  ({ sessionId } = await send("Target.attachToTarget", { targetId, flatten: true }));
  await send("Runtime.enable");
  await send("Log.enable");
  await send("Page.enable");
  await send("Emulation.setDeviceMetricsOverride", { width: 1280, height: 1700, deviceScaleFactor: 1, mobile: false });
  const onLoad = new Promise((res) => { loaded = res; });
  await send("Page.navigate", { url });
  await onLoad;
  const read = async () => {
    const r = await send("Runtime.evaluate", {
      returnByValue: true,
      expression: `(() => { const t = (i) => (document.getElementById(i) || {}).textContent || "";
        return { meta: t("meta"), connected: t("connected"), connects: t("connects"), connectsSub: t("connects-sub"),
                 burst: t("burst"), acks: t("acks"), acksSub: t("acks-sub"), spool: t("spool"), kafka: t("kafka"),
                 kafkaSub: t("kafka-sub"), page: t("page"),
                 deviceRows: document.querySelectorAll("#devices tbody tr").length }; })()`,
    });
    return r.result.value;
  };
  // First render: the status poll filled the header.
  let first = await read();
  for (let i = 0; i < 50 && !first.meta.startsWith("v"); i++) { await sleep(200); first = await read(); }
  if (!first.meta.startsWith("v")) return finish(1, { ok: false, error: "page never rendered the status", first, errors });
  console.log("LOADED");
  const seen = { burstOn: false, changed: [] };
  const deadline = Date.now() + (timeoutS - 15) * 1000;
  let last = first;
  while (Date.now() < deadline) {
    await sleep(1000);
    last = await read();
    if (last.burst.startsWith("ON")) seen.burstOn = true;
    seen.changed = ["connected", "connectsSub", "acksSub", "page"].filter((k) => last[k] !== first[k]);
    if (seen.changed.length >= 3 && last.deviceRows > 1) break;
  }
  await sleep(3000); // let the chart draw a few more points
  last = await read();
  const png = await send("Page.captureScreenshot", { format: "png", captureBeyondViewport: true });
  fs.writeFileSync(shot, Buffer.from(png.data, "base64"));
  clearTimeout(overall);
  const ok = errors.length === 0 && seen.changed.length >= 3 && last.deviceRows > 1;
  finish(ok ? 0 : 1, { ok, errors, first, last, changed: seen.changed, burstSeenOnPage: seen.burstOn, screenshot: shot });
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
