// The live dashboard: polls the JSON API every few seconds and renders tiles, sparklines and tables.
// Served by the proxy itself; no CDN, no build step.
"use strict";

const REFRESH_MS = 5000;
const state = { logOn: true };

const $ = (id) => document.getElementById(id);
const fmt = {
  int: (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US")),
  secs: (s) => (s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`),
  pct: (r) => (r == null ? "–" : `${(r * 100).toFixed(1)}%`),
  bytes: (b) => {
    if (b == null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i += 1; }
    return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  ago: (ms) => {
    if (!ms) return "–";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${s.toFixed(0)} s ago`;
    if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  },
  duration: (s) => {
    if (s == null) return "–";
    if (s > 365 * 86400) return "never (kept loaded)";
    if (s < 120) return `${s.toFixed(0)} s`;
    if (s < 7200) return `${(s / 60).toFixed(0)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  },
};

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  return { ok: response.ok, status: response.status, body };
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

function fillTable(id, rows, columns) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    for (const column of columns) {
      const [text, className] = [].concat(column(item));
      cell(tr, text, className);
    }
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    cell(tr, "nothing yet", "muted");
    tr.firstChild.colSpan = $(id).querySelectorAll("th").length;
    body.appendChild(tr);
  }
}

function sparkline(id, values) {
  const svg = $(id);
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(...values.map((v) => v || 0), 0);
  const points = values.map((v, i) => {
    const x = values.length > 1 ? (i / (values.length - 1)) * 296 + 2 : 150;
    const y = 76 - (max ? ((v || 0) / max) * 66 : 0);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "9");
  label.textContent = `max ${max < 10 ? max.toFixed(2) : Math.round(max)}`;
  svg.appendChild(label);
}

async function refreshStats() {
  const { body: s } = await getJson("/-/stats");
  $("t-requests").textContent = fmt.int(s.requests);
  $("t-inflight").textContent = fmt.int(s.in_flight);
  $("t-tokens").textContent = `${fmt.int(s.prompt_tokens)} / ${fmt.int(s.generation_tokens)}`;
  $("t-errors").textContent = fmt.pct(s.error_ratio);
  $("t-client-errors").textContent = fmt.int(s.client_errors);
  $("t-latency").textContent = `${fmt.secs(s.p50_duration_seconds)} / ${fmt.secs(s.p95_duration_seconds)}`;
  $("t-ttft").textContent = fmt.secs(s.average_ttft_seconds);
  $("t-uptime").textContent = fmt.duration(s.uptime_seconds);
  state.logOn = s.request_log === "on";
  for (const el of document.querySelectorAll(".proxy-host")) el.textContent = s.api_address;
  return s;
}

async function refreshHistory() {
  $("history").hidden = !state.logOn;
  $("history-off").hidden = state.logOn;
  $("recent").hidden = !state.logOn;
  if (!state.logOn) return;
  const { ok, body } = await getJson("/-/stats/history?minutes=60&step=60");
  if (!ok) return;
  const b = body.buckets;
  sparkline("c-rpm", b.map((x) => x.requests_per_minute));
  sparkline("c-tps", b.map((x) => x.tokens_per_second));
  sparkline("c-latency", b.map((x) => x.average_duration_seconds));
  sparkline("c-errors", b.map((x) => x.error_ratio));
}

async function refreshModels() {
  const { body } = await getJson("/-/models?limit=20");  // the top rows only: a log may hold thousands of models
  fillTable("models", body.models, [
    (m) => m.name, (m) => fmt.int(m.requests), (m) => fmt.int(m.prompt_tokens), (m) => fmt.int(m.generation_tokens),
    (m) => fmt.secs(m.average_duration_seconds),
    (m) => (m.decode_tokens_per_second == null ? "–" : m.decode_tokens_per_second.toFixed(1)),
    (m) => [fmt.pct(m.error_ratio), m.error_ratio > 0 ? "bad" : ""], (m) => fmt.int(m.client_errors),
    (m) => fmt.ago(m.last_used_ms),
  ]);
  const select = $("f-model");
  const known = new Set([...select.options].map((o) => o.value));
  for (const m of body.models) {
    if (!known.has(m.name)) select.add(new Option(m.name, m.name));
  }
}

async function refreshSystem() {
  const { body } = await getJson("/-/system");
  const up = body.ollama.up;
  const pill = $("ollama-status");
  pill.textContent = up ? `Ollama ${body.ollama.version || ""} up` : `Ollama not answering (${body.ollama.detail || "unknown"})`;
  pill.className = `pill ${up ? "up" : "down"}`;
  fillTable("loaded", body.ollama.loaded_models, [
    (m) => m.name, (m) => fmt.bytes(m.vram_bytes), (m) => fmt.pct(m.gpu_offload_ratio),
    (m) => fmt.duration(m.expires_in_seconds),
  ]);
  const gpus = body.gpus && body.gpus.up ? body.gpus.devices : [];
  $("gpus-block").hidden = !gpus.length;
  fillTable("gpus", gpus, [
    (g) => `${g.index}: ${g.name}`, (g) => fmt.pct(g.utilization_ratio),
    (g) => `${fmt.bytes(g.memory_used_bytes)} / ${fmt.bytes(g.memory_total_bytes)}`,
    (g) => (g.temperature_celsius == null ? "–" : `${g.temperature_celsius} °C`),
    (g) => (g.power_watts == null ? "–" : `${g.power_watts.toFixed(0)} W`),
  ]);
}

async function refreshLogs() {
  if (!state.logOn) return;
  const params = new URLSearchParams({ limit: "25" });
  if ($("f-model").value) params.set("model", $("f-model").value);
  if ($("f-outcome").value) params.set("outcome", $("f-outcome").value);
  const { ok, body } = await getJson(`/-/logs?${params}`);
  if (!ok) return;
  fillTable("logs", body.records, [
    (r) => new Date(r.started_ms).toLocaleTimeString(), (r) => r.endpoint, (r) => r.model || "–",
    (r) => [r.outcome, r.outcome === "success" ? "" : "bad"],
    (r) => `${fmt.int(r.prompt_tokens)} / ${fmt.int(r.generation_tokens)}${r.generation_tokens_estimated ? " (est.)" : ""}`,
    (r) => fmt.secs(r.duration_seconds), (r) => fmt.secs(r.ttft_seconds), (r) => r.client_identity || r.client_address || "–",
  ]);
}

async function refresh() {
  try {
    const stats = await refreshStats();
    $("empty").hidden = stats.requests > 0 || stats.in_flight > 0;
    await Promise.all([refreshHistory(), refreshModels(), refreshSystem(), refreshLogs()]);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("updated").textContent = `cannot reach the proxy: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("f-model").addEventListener("change", refreshLogs);
  $("f-outcome").addEventListener("change", refreshLogs);
  refresh();
  setInterval(refresh, REFRESH_MS);
});
