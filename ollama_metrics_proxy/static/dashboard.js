// The live dashboard: polls the JSON API every few seconds and renders tiles, charts (uPlot, vendored) and tables.
// Served by the proxy itself; no CDN, no build step. One unit per quantity: durations in seconds, speeds in
// tok/s, shares in percent.
"use strict";

const REFRESH_MS = 5000;
const ERROR_OUTCOMES = new Set(["server_error", "upstream_error", "upstream_unreachable", "timeout", "busy"]);
const state = { logOn: true, ollamaUp: null, cursors: [null], charts: {} };

const $ = (id) => document.getElementById(id);
const fmt = {
  int: (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US")),
  secs: (s) => (s == null ? "–" : s < 10 ? s.toFixed(2) : s < 100 ? s.toFixed(1) : s.toFixed(0)),
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

// How a request ended, as a colour: errors (the server's failures) red, client errors amber, aborts grey.
function outcomeClass(outcome) {
  if (ERROR_OUTCOMES.has(outcome)) return "bad";
  if (outcome === "client_error") return "warn";
  if (outcome === "aborted") return "muted";
  return "";
}

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

function fillTable(id, rows, columns, empty = "none yet") {
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
    cell(tr, empty, "muted");
    tr.firstChild.colSpan = $(id).querySelectorAll("th").length;
    body.appendChild(tr);
  }
}

// ---------------------------------------------------------------- charts

const CHARTS = [
  { id: "c-rpm", label: "requests/min", value: (b) => b.requests_per_minute },
  { id: "c-tps", label: "tok/s", value: (b) => b.tokens_per_second },
  { id: "c-latency", label: "s", value: (b) => b.average_duration_seconds },
  { id: "c-errors", label: "%", value: (b) => (b.requests ? b.error_ratio * 100 : null) },
];

function chartSize(element) {
  return { width: Math.max(200, element.clientWidth), height: 140 };
}

// Tick labels with as many decimals as the tick spacing needs (0.001 s apart: three), never two equal labels.
function tickValues(u, splits) {
  const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 1;
  const decimals = step > 0 && step < 1 ? Math.min(6, Math.ceil(-Math.log10(step))) : 0;
  return splits.map((v) => (decimals ? v.toFixed(decimals) : v.toLocaleString("en-US")));
}

function chart(spec, xs, ys) {
  const element = $(spec.id);
  let plot = state.charts[spec.id];
  if (!plot) {
    const axis = { stroke: "#8b95a5", grid: { stroke: "#2a3039", width: 1 }, ticks: { stroke: "#2a3039" } };
    plot = new uPlot({
      ...chartSize(element),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [axis, { ...axis, size: 56, values: tickValues }],
      series: [{}, { label: spec.label, stroke: "#5cb3ff", width: 1.5, fill: "rgba(92,179,255,0.12)",
                     spanGaps: false }],
    }, [xs, ys], element);
    state.charts[spec.id] = plot;
  } else {
    plot.setData([xs, ys]);
  }
}

function resizeCharts() {
  for (const spec of CHARTS) {
    const plot = state.charts[spec.id];
    if (plot) plot.setSize(chartSize($(spec.id)));
  }
}

// The window follows uptime: a proxy up for ten minutes shows fifteen, one up for days shows the last day.
function historyWindow(uptimeSeconds) {
  const minutes = Math.min(1440, Math.max(15, Math.ceil(uptimeSeconds / 60) + 1));
  const step = Math.max(10, Math.round((minutes * 60) / 90));
  return { minutes, step };
}

// ---------------------------------------------------------------- refreshes

async function refreshStats() {
  const { body: s } = await getJson("/-/stats");
  $("t-requests").textContent = fmt.int(s.requests);
  $("t-inflight").textContent = fmt.int(s.in_flight);
  $("t-tokens").textContent = `${fmt.int(s.prompt_tokens)} / ${fmt.int(s.generation_tokens)}`;
  $("t-errors").textContent = fmt.pct(s.error_ratio);
  $("t-client-errors").textContent = fmt.int(s.client_errors);
  $("t-aborted").textContent = fmt.int(s.aborted);
  $("t-latency").textContent = `${fmt.secs(s.p50_duration_seconds)} / ${fmt.secs(s.p95_duration_seconds)} s`;
  const first = s.average_ttft_seconds;
  const answer = s.average_time_to_first_answer_seconds;
  $("t-ttft").textContent = first == null ? "–" : `${fmt.secs(first)} / ${fmt.secs(answer)} s`;
  $("t-uptime").textContent = fmt.duration(s.uptime_seconds);
  state.logOn = s.request_log === "on";
  for (const el of document.querySelectorAll(".proxy-host")) el.textContent = s.api_address;
  return s;
}

async function refreshHistory(stats) {
  $("history").hidden = !state.logOn;
  $("history-off").hidden = state.logOn;
  $("recent").hidden = !state.logOn;
  if (!state.logOn) return;
  const { minutes, step } = historyWindow(stats.uptime_seconds);
  const { ok, body } = await getJson(`/-/stats/history?minutes=${minutes}&step=${step}`);
  if (!ok) return;
  for (const el of document.querySelectorAll(".window")) el.textContent = `· last ${fmt.duration(minutes * 60)}`;
  const xs = body.buckets.map((b) => b.start);
  for (const spec of CHARTS) chart(spec, xs, body.buckets.map(spec.value));
}

async function refreshModels() {
  const { body } = await getJson("/-/models?limit=20");  // the top rows only: a log may hold thousands of models
  $("models-note").textContent = body.total > body.models.length ? `top ${body.models.length} of ${body.total}` : "";
  fillTable("models", body.models, [
    (m) => m.name, (m) => fmt.int(m.requests), (m) => fmt.int(m.prompt_tokens), (m) => fmt.int(m.generation_tokens),
    (m) => fmt.secs(m.average_duration_seconds),
    (m) => (m.decode_tokens_per_second == null ? "–" : m.decode_tokens_per_second.toFixed(1)),
    (m) => [fmt.pct(m.error_ratio), m.error_ratio > 0 ? "bad" : ""], (m) => [fmt.int(m.client_errors), m.client_errors ? "warn" : ""],
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
  state.ollamaUp = up;
  const pill = $("ollama-status");
  pill.textContent = up ? `Ollama ${body.ollama.version || ""} up` : `Ollama not answering (${body.ollama.detail || "unknown"})`;
  pill.className = `pill ${up ? "up" : "down"}`;
  // With Ollama down, what it holds is unknown, not "none".
  fillTable("loaded", up ? body.ollama.loaded_models : [], [
    (m) => m.name, (m) => fmt.bytes(m.vram_bytes), (m) => fmt.pct(m.gpu_offload_ratio),
    (m) => fmt.duration(m.expires_in_seconds),
  ], up ? "none loaded" : "unknown: Ollama is not answering");
  const host = body.host;
  $("host-block").hidden = !host;
  if (host) {
    fillTable("host", host.up ? [host] : [], [
      (h) => fmt.pct(h.cpu_utilization_ratio),
      (h) => `${fmt.bytes(h.memory_used_bytes)} / ${fmt.bytes(h.memory_total_bytes)}`,
      (h) => (h.models_disk_free_bytes == null ? "–" : fmt.bytes(h.models_disk_free_bytes)),
    ], `unknown: ${host.detail || "not sampled yet"}`);
  }
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
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  const { ok, body } = await getJson(`/-/logs?${params}`);
  if (!ok) return;
  fillTable("logs", body.records, [
    (r) => new Date(r.started_ms).toLocaleTimeString(), (r) => r.endpoint, (r) => r.model || "–",
    (r) => [r.outcome, outcomeClass(r.outcome)],
    (r) => `${fmt.int(r.prompt_tokens)} / ${fmt.int(r.generation_tokens)}${r.generation_tokens_estimated ? " (est.)" : ""}`,
    (r) => fmt.secs(r.duration_seconds), (r) => fmt.secs(r.ttft_seconds), (r) => fmt.secs(r.ttfat_seconds),
    (r) => (r.thinking_chunks == null ? "–" : `${fmt.int(r.thinking_chunks)} / ${fmt.int(r.answer_chunks)}`),
    (r) => r.client_identity || r.client_address || "–",
  ]);
  state.nextCursor = body.next_cursor;
  $("p-older").disabled = !body.next_cursor;
  $("p-newer").disabled = state.cursors.length < 2;
  $("p-page").textContent = `page ${state.cursors.length}`;
}

function restartLogs() {
  state.cursors = [null];
  refreshLogs();
}

async function refresh() {
  try {
    const stats = await refreshStats();
    $("empty").hidden = stats.requests > 0 || stats.in_flight > 0;
    // Only the first page follows new requests; an older page stays where the reader put it.
    const logs = state.cursors.length === 1 ? refreshLogs() : null;
    await Promise.all([refreshHistory(stats), refreshModels(), refreshSystem(), logs]);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("updated").textContent = `cannot reach the proxy: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("f-model").addEventListener("change", restartLogs);
  $("f-outcome").addEventListener("change", restartLogs);
  $("p-older").addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors.push(state.nextCursor);
    refreshLogs();
  });
  $("p-newer").addEventListener("click", () => {
    if (state.cursors.length > 1) state.cursors.pop();
    refreshLogs();
  });
  window.addEventListener("resize", resizeCharts);
  refresh();
  setInterval(refresh, REFRESH_MS);
});
