// wasq dashboard: fetches /api/overview every refresh_ms and redraws.
// Everything from the API is untrusted text (guest output, error messages):
// it is only ever set with textContent, never parsed as HTML.
"use strict";

const state = {
  refreshMs: 1000,
  updates: 0,
  expanded: new Set(), // call ids whose envelope is shown
  envelopes: new Map(), // envelopes fetched on demand (calls past the newest 20)
  timer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else if (k === "title") node.title = String(v);
    else node[k] = v;
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  }
  return node;
}

function fmtInt(n) {
  return n == null ? "–" : Number(n).toLocaleString("en-US");
}

function fmtDuration(secs) {
  if (secs == null) return "–";
  if (secs < 60) return `${secs.toFixed(0)} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} m ${Math.floor(secs % 60)} s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} m`;
  return `${Math.floor(secs / 86400)} d ${Math.floor((secs % 86400) / 3600)} h`;
}

function fmtMs(ms) {
  if (ms == null) return "–";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

function fmtAge(nowMs, tsMs) {
  if (!tsMs) return "–";
  return fmtDuration(Math.max(0, (nowMs - tsMs) / 1000)) + " ago";
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderCards(o) {
  const t = o.totals;
  $("card-hosts").textContent = fmtInt(t.hosts);
  $("card-inflight").textContent = `${fmtInt(t.in_flight)} / ${fmtInt(t.concurrency)}`;
  $("card-rate").textContent = t.calls_per_sec.toFixed(1);
  $("card-ok").textContent = fmtInt(t.succeeded_window);
  $("card-failed").textContent = fmtInt(t.failed_window);
  $("card-dead").textContent = fmtInt(o.dead_letters.length) + (o.dead_letters.length >= 10 ? "+" : "");
}

function renderHosts(o) {
  const rows = o.hosts.map((h) =>
    el("tr", { "data-id": h.id },
      el("td", { class: "mono", title: h.name }, h.id),
      el("td", {}, h.version),
      el("td", {}, h.queues.join(", ")),
      el("td", { class: "num" }, fmtInt(h.in_flight)),
      el("td", { class: "num" }, fmtInt(h.concurrency)),
      el("td", { class: "num" }, fmtInt(h.done)),
      el("td", { class: "num" + (h.failed ? " bad" : "") }, fmtInt(h.failed)),
      el("td", { class: "num" }, fmtInt(h.fuel_used)),
      el("td", { class: "num" }, fmtDuration(h.uptime_s)),
      el("td", { class: "num" + (h.heartbeat_age_ms > 5000 ? " warn" : "") }, fmtMs(h.heartbeat_age_ms) + " ago"),
    ));
  replaceRows($("hosts").tBodies[0], rows);
  $("hosts-empty").hidden = rows.length > 0;
}

function fmtRate(r) {
  if (!r) return "";
  return `${r.per_second}/s, burst ${r.burst}`;
}

function renderQueues(o) {
  const queues = Array.isArray(o.queues) ? o.queues : [];
  const rows = queues.map((q) =>
    el("tr", { "data-queue": q.queue },
      el("td", { class: "mono" }, q.queue),
      el("td", { class: "num" }, fmtInt(q.depth)),
      el("td", { class: "num" }, fmtInt(q.pending)),
      el("td", { class: "num" }, fmtInt(q.delayed)),
      el("td", { class: "num" + (q.dead ? " bad" : "") }, fmtInt(q.dead)),
      el("td", { class: q.paused ? "warn" : "" }, q.paused ? "paused" : "", q.rate ? ` ${fmtRate(q.rate)}` : ""),
      el("td", { class: "num" }, q.throughput_1m.toFixed(2)),
      el("td", { class: "num" }, fmtMs(q.p50_ms)),
      el("td", { class: "num" }, fmtMs(q.p90_ms)),
      el("td", { class: "num" }, fmtMs(q.p99_ms)),
    ));
  replaceRows($("queues").tBodies[0], rows);
  $("queues-empty").hidden = rows.length > 0;
}

async function fetchEnvelope(id) {
  try {
    const res = await fetch(`/api/calls/${encodeURIComponent(id)}`, { cache: "no-store" });
    if (res.ok) state.envelopes.set(id, await res.json());
  } catch (_) {
    // The next refresh shows it if it comes through.
  }
}

function envelopeView(call) {
  const env = call.envelope || state.envelopes.get(call.id);
  if (!env) {
    return el("div", { class: "envelope muted" },
      call.state === "succeeded" || call.state === "failed" || call.state === "revoked"
        ? "loading envelope…" : `no result yet (${call.state})`);
  }
  const parts = [];
  if (env.error) {
    parts.push(el("div", { class: "bad" }, `${env.error.kind}: ${env.error.message}`));
  }
  parts.push(el("div", { class: "muted" },
    `attempt ${env.attempt} · fuel ${fmtInt(env.fuel_used)} · ${fmtMs(env.duration_ms)} · ${env.host}`));
  parts.push(el("pre", { class: "json" }, JSON.stringify(env, null, 2)));
  return el("div", { class: "envelope" }, ...parts);
}

function renderCalls(o) {
  const rows = [];
  for (const c of o.recent) {
    const open = state.expanded.has(c.id);
    const row = el("tr", { class: "call" + (open ? " open" : ""), "data-id": c.id, "data-state": c.state },
      el("td", { class: "mono", title: c.id }, c.id),
      el("td", { class: "mono" }, c.task),
      el("td", {}, c.queue),
      el("td", {}, el("span", { class: `state state-${c.state}` }, c.state + (c.error_kind ? ` (${c.error_kind})` : ""))),
      el("td", { class: "mono" }, c.host),
      el("td", { class: "num" }, fmtMs(c.latency_ms ?? (c.envelope ? c.envelope.duration_ms : null))),
      el("td", { class: "num" }, fmtAge(o.now_ms, c.first_ms)),
    );
    row.addEventListener("click", async () => {
      if (state.expanded.has(c.id)) {
        state.expanded.delete(c.id);
      } else {
        state.expanded.add(c.id);
        if (!c.envelope) await fetchEnvelope(c.id);
      }
      refresh();
    });
    rows.push(row);
    if (open) {
      rows.push(el("tr", { class: "detail", "data-for": c.id }, el("td", { colSpan: 7 }, envelopeView(c))));
    }
  }
  const shown = new Set(o.recent.map((c) => c.id));
  for (const id of state.envelopes.keys()) if (!shown.has(id)) state.envelopes.delete(id);
  for (const id of state.expanded) if (!shown.has(id)) state.expanded.delete(id);
  replaceRows($("calls").tBodies[0], rows);
  $("calls-empty").hidden = rows.length > 0;
}

function renderDead(o) {
  const rows = o.dead_letters.map((d) =>
    el("tr", { "data-id": d.id },
      el("td", { class: "mono" }, d.id || "–"),
      el("td", {}, d.queue),
      el("td", {}, d.reason),
      el("td", { class: "num" }, fmtInt(d.deliveries)),
      el("td", { class: "num" }, fmtAge(o.now_ms, d.ts_ms)),
    ));
  replaceRows($("dead").tBodies[0], rows);
  $("dead-section").hidden = rows.length === 0;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// Stacked bars, one per second: succeeded below, failed on top.
function renderChart(o) {
  const points = o.throughput;
  const w = 720, h = 160, pad = 28;
  const max = Math.max(1, ...points.map((p) => p.succeeded + p.failed));
  const bw = (w - pad) / Math.max(1, points.length);
  const scale = (n) => (n / max) * (h - 20);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": "finished calls per second" });
  chart.append(svg("line", { x1: pad, y1: h - 10, x2: w, y2: h - 10, class: "axis" }));
  const top = svg("text", { x: 0, y: 14, class: "tick" });
  top.textContent = String(max);
  chart.append(top);
  const zero = svg("text", { x: 0, y: h - 10, class: "tick" });
  zero.textContent = "0";
  chart.append(zero);
  points.forEach((p, i) => {
    const x = pad + i * bw;
    const ok = scale(p.succeeded), bad = scale(p.failed);
    const title = `${new Date(p.ts_ms).toLocaleTimeString()}: ${p.succeeded} succeeded, ${p.failed} failed`;
    if (p.succeeded) {
      const r = svg("rect", { x: x + 1, y: h - 10 - ok, width: Math.max(1, bw - 2), height: ok, class: "bar-ok" });
      r.append(Object.assign(svg("title", {}), { textContent: title }));
      chart.append(r);
    }
    if (p.failed) {
      const r = svg("rect", { x: x + 1, y: h - 10 - ok - bad, width: Math.max(1, bw - 2), height: bad, class: "bar-bad" });
      r.append(Object.assign(svg("title", {}), { textContent: title }));
      chart.append(r);
    }
  });
  const total = points.reduce((s, p) => s + p.succeeded + p.failed, 0);
  $("chart").dataset.total = String(total);
  $("chart").replaceChildren(chart);
}

function renderErrors(o) {
  replaceRows($("errors"), o.errors.map((e) => el("li", {}, e)));
}

// The chart and the recent calls come from the events stream: say so when
// the deployment records fewer events.
function renderLevel(o) {
  const p = $("events-level");
  const level = o.event_level;
  p.hidden = !level || level === "all";
  if (level === "off") {
    p.textContent = "Call events are off: the chart and the recent calls get nothing new " +
      "(queue statistics are still counted). `wasq events --set-level all` turns them on.";
  } else if (level === "outcomes") {
    p.textContent = "Events at level outcomes: calls appear when they end (no queued or started events). " +
      "`wasq events --set-level all` records every event.";
  }
}

function render(o) {
  $("prefix").textContent = `prefix ${o.prefix}`;
  $("version").textContent = o.version;
  renderCards(o);
  renderChart(o);
  renderHosts(o);
  renderQueues(o);
  renderLevel(o);
  renderCalls(o);
  renderDead(o);
  renderErrors(o);
  state.updates += 1;
  document.body.dataset.updates = String(state.updates);
  $("updates").textContent = String(state.updates);
  $("updated").textContent = new Date(o.now_ms).toLocaleTimeString();
  $("updated").dateTime = new Date(o.now_ms).toISOString();
}

function setLive(live, text) {
  const badge = $("live");
  badge.dataset.state = live ? "live" : "down";
  badge.textContent = text;
}

async function refresh() {
  clearTimeout(state.timer);
  try {
    const res = await fetch("/api/overview", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const o = await res.json();
    state.refreshMs = Math.max(200, o.refresh_ms || 1000);
    render(o);
    setLive(true, "live");
  } catch (e) {
    setLive(false, `disconnected: ${e.message}`);
  }
  state.timer = setTimeout(refresh, state.refreshMs);
}

refresh();
