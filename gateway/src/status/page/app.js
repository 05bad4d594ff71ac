// Breakwater gateway status page: polls /api/v1/status every 2 s and the device table on demand.
// No dependencies; everything it shows comes from the JSON API documented in the README.
"use strict";

const PAGE = 50;
let offset = 0;
let lastStatusOk = true;

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 0) => (x === null || x === undefined) ? "–" : Number(x).toLocaleString(undefined, { maximumFractionDigits: d });
const ago = (ms, now) => {
  if (!ms) return "–";
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 60) return s.toFixed(0) + " s ago";
  if (s < 3600) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
};
const time = (ms) => ms ? new Date(ms).toLocaleTimeString() : "–";
function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }
function setClass(id, cls) { const el = $(id); el.classList.remove("ok", "bad", "warn"); if (cls) el.classList.add(cls); }

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbodyParent, rows, empty) {
  const tbody = $(tbodyParent).querySelector("tbody");
  tbody.replaceChildren(...(rows.length ? rows : [row([[empty, "down"]])]));
}

function drawChart(h) {
  const c = $("chart");
  const ctx = c.getContext("2d");
  const W = c.width, H = c.height, pad = 30;
  ctx.clearRect(0, 0, W, H);
  const series = [[h.admitted_per_s, "#58a6ff"], [h.refused_per_s, "#f85149"], [h.acks_per_s, "#3fb950"]];
  const n = h.t_ms.length;
  let max = 1;
  for (const [s] of series) for (const v of s) if (v > max) max = v;
  ctx.strokeStyle = "#2a3540"; ctx.fillStyle = "#8b98a5"; ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (H - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad + 20, y); ctx.lineTo(W - 5, y); ctx.stroke();
    ctx.fillText(fmt(max * (4 - i) / 4), 2, y + 4);
  }
  if (n < 2) return;
  for (const [s, color] of series) {
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    s.forEach((v, i) => {
      const x = pad + 20 + (W - pad - 25) * i / (n - 1);
      const y = pad / 2 + (H - pad) * (1 - v / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function render(s) {
  const now = s.now_ms;
  setText("meta", `v${s.gateway.version} · up ${fmt(s.gateway.uptime_s)} s · ack mode ${s.gateway.ack_mode} · ${time(now)}`);
  setText("conn", s.gateway.ready ? "ready" : "NOT READY");
  $("conn").className = "pill " + (s.gateway.ready ? "ok" : "bad");

  setText("connected", fmt(s.devices.connected));
  setText("known", `${fmt(s.devices.known)} known since start`);

  const b = s.burst;
  if (b.active && b.current) {
    setText("burst", `ON · peak ${fmt(b.current.peak_rate)}/s`);
    setText("burst-sub", `since ${time(b.current.started_ms)} · ${fmt(b.current.connects)} connects · baseline ${fmt(b.baseline, 1)}/s`);
    setClass("burst-card", "warn");
  } else {
    setText("burst", "none");
    setText("burst-sub", `${fmt(b.rate, 1)} connects/s now · baseline ${fmt(b.baseline, 1)}/s · ${fmt(b.total)} since start`);
    setClass("burst-card", "ok");
  }

  setText("connects", `${fmt(s.connects.admitted_per_s, 1)}/s`);
  setText("connects-sub", `${fmt(s.connects.refused_per_s, 1)}/s refused · ${fmt(s.connects.waiting)} waiting in admission · ${fmt(s.connects.admitted_total)} admitted`);

  const sp = s.spool;
  setText("spool", `${fmt(sp.records)} batches`);
  setText("spool-sub", `${fmt(sp.fill_ratio * 100, 1)}% of ${fmt(sp.max_bytes / 1048576)} MiB · oldest ${sp.oldest_age_s === null ? "–" : fmt(sp.oldest_age_s, 1) + " s"}`);

  const k = s.kafka;
  if (!k.configured) {
    setText("kafka", "not configured"); setText("kafka-sub", "spool only"); setClass("kafka-card", null);
  } else {
    setText("kafka", k.reachable === null ? "probing…" : (k.reachable ? "reachable" : "UNREACHABLE"));
    setText("kafka-sub", `delivery p50 ${fmt(k.delivery_p50_ms, 1)} ms · p99 ${fmt(k.delivery_p99_ms, 1)} ms · ${fmt(k.in_flight_records)} in flight · ${fmt(k.errors_total)} errors`);
    setClass("kafka-card", k.reachable === false ? "bad" : (k.reachable ? "ok" : null));
  }

  setText("acks", `${fmt(s.acks.per_s, 1)}/s`);
  setText("acks-sub", `${fmt(s.acks.sent_total)} sent · ${fmt(s.readings.accepted_per_s, 1)} readings/s accepted`);

  const bp = s.backpressure;
  setText("pressure", `${fmt(bp.pressure * 100, 0)}%`);
  setText("pressure-sub", `credit ${fmt(bp.credit)} · retry after ${bp.retry_after_ms === null ? "–" : fmt(bp.retry_after_ms) + " ms"} · queue ${fmt(bp.queue_depth)}/${fmt(bp.queue_capacity)}`);

  setText("unacked", fmt(s.devices.unacked));
  setText("unacked-sub", `devices · oldest ${s.devices.oldest_unacked_age_s === null ? "–" : fmt(s.devices.oldest_unacked_age_s, 1) + " s"}`);
  setClass("unacked-card", (s.devices.oldest_unacked_age_s || 0) > 60 ? "bad" : null);

  const ref = [];
  for (const [reason, n] of Object.entries(s.connects.refused)) if (n > 0) ref.push(row([["connect refused"], [reason], [fmt(n), "n"]]));
  if (s.connects.address_refused_total > 0) ref.push(row([["connection refused"], ["per-address cap"], [fmt(s.connects.address_refused_total), "n"]]));
  for (const [name, by] of Object.entries(s.connects.denials)) for (const [reason, n] of Object.entries(by)) if (n > 0) ref.push(row([[name], [reason], [fmt(n), "n"]]));
  for (const [reason, n] of Object.entries(s.readings.dropped_batches)) if (n > 0) ref.push(row([["batch dropped"], [reason], [fmt(n), "n"]]));
  for (const [reason, n] of Object.entries(s.readings.invalid_payloads)) if (n > 0) ref.push(row([["invalid payload"], [reason], [fmt(n), "n"]]));
  fill("refusals", ref, "none");

  drawChart(s.history);
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function pollStatus() {
  try {
    render(await getJson("api/v1/status"));
    lastStatusOk = true;
  } catch (e) {
    if (lastStatusOk) { setText("conn", "gateway unreachable"); $("conn").className = "pill bad"; }
    lastStatusOk = false;
  }
}

async function pollBursts() {
  try {
    const b = await getJson("api/v1/bursts");
    const rows = [];
    if (b.current) rows.push(row([[time(b.current.started_ms) + " (on)"], [fmt(b.current.duration_ms / 1000, 1) + " s", "n"], [fmt(b.current.peak_rate), "n"], [fmt(b.current.connects), "n"]]));
    for (const x of b.recent) rows.push(row([[time(x.started_ms)], [fmt(x.duration_ms / 1000, 1) + " s", "n"], [fmt(x.peak_rate), "n"], [fmt(x.connects), "n"]]));
    fill("bursts", rows, "no burst since start");
  } catch (e) { /* shown by the status poll */ }
}

async function loadDevices() {
  const q = encodeURIComponent($("search").value.trim());
  const state = encodeURIComponent($("state").value);
  try {
    const d = await getJson(`api/v1/devices?q=${q}&state=${state}&offset=${offset}&limit=${PAGE}`);
    const now = Date.now();
    fill("devices", d.devices.map((x) => row([
      [x.id],
      [x.connected === null ? "unknown" : (x.connected ? "connected" : "disconnected"), x.connected ? "up" : "down"],
      [ago(x.last_seen_ms, now)],
      [x.epoch === null ? "–" : x.epoch, "n"], [fmt(x.accepted_seq), "n"], [fmt(x.durable_seq), "n"],
      [fmt(x.unacked_batches), "n"], [fmt(x.credit), "n"],
    ])), d.total ? "no device matches" : "no device seen since start");
    const last = Math.min(d.offset + d.devices.length, d.matched);
    setText("page", d.matched ? `${fmt(d.offset + 1)}–${fmt(last)} of ${fmt(d.matched)} (${fmt(d.total)} devices)` : `0 of ${fmt(d.total)}`);
    $("prev").disabled = d.offset === 0;
    $("next").disabled = last >= d.matched;
  } catch (e) { /* shown by the status poll */ }
}

let searchTimer = null;
$("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => { offset = 0; loadDevices(); }, 250); });
$("state").addEventListener("change", () => { offset = 0; loadDevices(); });
$("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadDevices(); });
$("next").addEventListener("click", () => { offset += PAGE; loadDevices(); });

pollStatus(); pollBursts(); loadDevices();
setInterval(pollStatus, 2000);
setInterval(pollBursts, 5000);
setInterval(loadDevices, 5000);
