// The insights dashboard: reads the API with the token kept in this tab's sessionStorage
// (given in the login form, or in the URL's fragment: #token=..., which is never sent to the
// server), draws with the bundled Chart.js, and refreshes when the shop's version changes.
"use strict";

const state = { token: null, shop: null, version: null, charts: {}, segments: [], cursor: null, members: null };
const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;
const COLORS = ["#4c8bf5", "#3bd16f", "#f5a623", "#d0021b", "#9013fe", "#50e3c2", "#b8e986",
  "#8b572a", "#417505", "#bd10e0", "#7ed321", "#4a4a4a", "#f8e71c", "#0b5394"];

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (response.status === 401) { showLogin("the token was refused"); throw new Error("unauthorised"); }
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response;
}
const json = async (path) => (await api(path)).json();
const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();

function money(amounts) {
  const parts = Object.entries(amounts || {}).map(([currency, minor]) => {
    if (!currency) return String(minor);
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(minor / 10 ** digits);
  });
  return parts.length ? parts.join(" + ") : "–";
}
function percent(rate) { return rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)} %`; }
function cell(row, text, attrs = {}) {
  const td = document.createElement(row.parentElement && row.parentElement.tagName === "THEAD" ? "th" : "td");
  td.textContent = text;
  for (const [k, v] of Object.entries(attrs)) td.setAttribute(k, v);
  row.appendChild(td);
  return td;
}

function showLogin(message) {
  $("dashboard").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("segmenter-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("segmenter-token");
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("segmenter-token", $("token").value);
    state.token = $("token").value;
    open();
  });
  if (!state.token) return showLogin();
  open();
}

async function open() {
  const { shops } = await json("/api/shops");
  $("login").hidden = true;
  $("dashboard").hidden = false;
  const wanted = new URLSearchParams(location.search).get("shop");
  const select = $("shop");
  select.replaceChildren(...(shops.length ? shops : ["default"]).map((s) => new Option(s, s)));
  state.shop = wanted && [...select.options].some((o) => o.value === wanted) ? wanted : select.value;
  select.value = state.shop;
  select.onchange = () => { state.shop = select.value; state.version = null; $("start").value = ""; refresh(); };
  $("start").onchange = $("end").onchange = () => refresh();
  $("search").onsubmit = (e) => { e.preventDefault(); showCustomer($("customer-id").value.trim()); };
  $("members-next").onclick = () => showMembers(state.members, state.cursor);
  $("members-csv").onclick = downloadCsv;
  await refresh();
  setInterval(poll, POLL_MS);
}

async function poll() {
  try {
    const { version } = await json(`/api/shops/${encodeURIComponent(state.shop)}/version`);
    $("live").classList.add("on");
    if (version !== state.version) await refresh();
  } catch (e) { $("live").classList.remove("on"); }
}

async function refresh() {
  const shop = encodeURIComponent(state.shop);
  const [{ version }, sizes, history] = await Promise.all([
    json(`/api/shops/${shop}/version`), json(`/api/shops/${shop}/segments`), json(`/api/shops/${shop}/history`),
  ]);
  state.version = version;
  state.segments = sizes.segments.map((s) => s.segment);
  if (!$("start").value && history.days.length) {  // the last 30 days with data
    const last = new Date(history.days[history.days.length - 1] + "T00:00:00Z");
    $("end").value = last.toISOString().slice(0, 10);
    $("start").value = new Date(last - 29 * 86400000).toISOString().slice(0, 10);
  }
  const period = q({ start: $("start").value, end: $("end").value });
  const [flows, performance, retention] = await Promise.all([
    json(`/api/shops/${shop}/flows?${period}`), json(`/api/shops/${shop}/performance?${period}`),
    json(`/api/shops/${shop}/retention`),
  ]);
  drawSizes(sizes);
  drawHistory(history);
  drawFlows(flows);
  drawPerformance(performance);
  drawRetention(retention);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()} · version ${version}`;
  $("live").classList.add("on");
}

function drawSizes(sizes) {
  $("total").textContent = `${sizes.total} customers · rules ${sizes.rule_version}`;
  const biggest = Math.max(1, ...sizes.segments.map((s) => s.size));
  const body = $("sizes").tBodies[0];
  body.replaceChildren();
  for (const s of sizes.segments) {
    const row = body.insertRow();
    row.className = "pick";
    row.dataset.segment = s.segment;
    row.title = s.description;
    cell(row, s.segment);
    cell(row, String(s.size), { "data-size": s.size });
    const bar = cell(row, "").appendChild(document.createElement("span"));
    bar.className = "bar";
    bar.style.width = `${(120 * s.size) / biggest}px`;
    row.onclick = () => showMembers(s.segment, null);
  }
}

function chart(id, config) {
  if (state.charts[id]) {
    state.charts[id].data = config.data;
    state.charts[id].update("none");
  } else {
    state.charts[id] = new Chart($(id), config);
  }
}

function drawHistory(history) {
  chart("history-chart", {
    type: "line",
    data: {
      labels: history.days,
      datasets: state.segments.map((s, i) => ({
        label: s, data: history.sizes[s], borderColor: COLORS[i % COLORS.length],
        backgroundColor: COLORS[i % COLORS.length], pointRadius: 0, borderWidth: 2, stepped: true,
      })),
    },
    options: { animation: false, maintainAspectRatio: false, interaction: { mode: "index", intersect: false },
      scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true } },
      plugins: { legend: { labels: { boxWidth: 10 } } } },
  });
}

function drawFlows(flows) {
  $("flow-period").textContent = `${flows.start} – ${flows.end}`;
  const table = $("flows");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  cell(head, "from \\ to");
  for (const to of flows.segments) cell(head, to === "-" ? "–" : to);
  const body = table.createTBody();
  const biggest = Math.max(1, ...flows.segments.flatMap((a) => flows.segments.map((b) => flows.matrix[a][b])));
  for (const from of flows.segments) {
    const row = body.insertRow();
    cell(row, from === "-" ? "–" : from);
    for (const to of flows.segments) {
      const n = flows.matrix[from][to];
      const td = cell(row, n ? String(n) : "", { "data-from": from, "data-to": to, "data-count": n });
      if (n) td.style.background = `rgba(76, 139, 245, ${0.12 + (0.7 * n) / biggest})`;
    }
  }
}

function drawPerformance(performance) {
  $("perf-period").textContent = `${performance.start} – ${performance.end}`;
  const body = $("performance").tBodies[0];
  body.replaceChildren();
  for (const s of performance.segments) {
    const row = body.insertRow();
    row.dataset.segment = s.segment;
    cell(row, s.segment);
    cell(row, String(s.entered), { "data-field": "entered" });
    cell(row, String(s.left), { "data-field": "left" });
    cell(row, String(s.orders), { "data-field": "orders" });
    cell(row, money(s.revenue), { "data-field": "revenue", "data-value": JSON.stringify(s.revenue) });
  }
  const currencies = [...new Set(performance.segments.flatMap((s) => Object.keys(s.revenue)))];
  chart("revenue-chart", {
    type: "bar",
    data: {
      labels: performance.segments.map((s) => s.segment),
      datasets: currencies.map((c, i) => ({
        label: `revenue (${c || "minor units"})`, backgroundColor: COLORS[i % COLORS.length],
        data: performance.segments.map((s) => (s.revenue[c] || 0) / 100),
      })),
    },
    options: { animation: false, maintainAspectRatio: false, indexAxis: "y", plugins: { legend: { labels: { boxWidth: 10 } } } },
  });
}

function drawRetention(retention) {
  const months = retention.months.slice(-12);
  const table = $("retention");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  cell(head, "segment");
  for (const m of months) cell(head, m);
  const body = table.createTBody();
  for (const s of state.segments) {
    const row = body.insertRow();
    cell(row, s);
    for (const m of months) {
      const r = retention.retention.find((x) => x.month === m && x.segment === s);
      const td = cell(row, percent(r.rate), { "data-segment": s, "data-month": m, "data-rate": r.rate ?? "" });
      td.title = `${r.ordered_again} of ${r.customers_at_start} ordered in ${m}`;
    }
  }
}

async function showMembers(segment, cursor) {
  if (!segment) return;
  state.members = segment;
  const shop = encodeURIComponent(state.shop);
  const page = await json(`/api/shops/${shop}/segments/${encodeURIComponent(segment)}/members?${q({ cursor, limit: 25 })}`);
  $("members-segment").textContent = segment;
  const body = $("members").tBodies[0];
  body.replaceChildren();
  for (const m of page.members) {
    const row = body.insertRow();
    row.className = "pick";
    cell(row, m.customer_id);
    cell(row, (m.segment_since || "").slice(0, 10));
    cell(row, m.order_count);
    cell(row, money({ [m.currency]: Number(m.total_spend) }));
    cell(row, (m.last_order_at || "").slice(0, 10));
    row.onclick = () => showCustomer(m.customer_id);
  }
  state.cursor = page.next;
  $("members-next").hidden = !page.next;
  $("members-csv").hidden = false;
}

async function downloadCsv() {
  const shop = encodeURIComponent(state.shop);
  const response = await api(`/api/shops/${shop}/segments/${encodeURIComponent(state.members)}/members?format=csv`);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${state.shop}-${state.members}.csv`;
  link.click();
}

async function showCustomer(id) {
  const target = $("customer");
  if (!id) return;
  $("customer-id").value = id;
  const response = await fetch(`/api/shops/${encodeURIComponent(state.shop)}/customers/${encodeURIComponent(id)}`,
    { headers: { Authorization: `Bearer ${state.token}` } });
  if (!response.ok) {
    target.replaceChildren(Object.assign(document.createElement("p"), { className: "error",
      textContent: (await response.json()).detail || response.statusText }));
    return;
  }
  const c = await response.json();
  const dl = document.createElement("dl");
  dl.id = "why";
  const add = (name, value, key) => {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd"); dd.textContent = value ?? "–";
    if (key) dd.dataset.field = key;
    dl.append(dt, dd);
  };
  const r = c.rfm;
  add("customer", c.customer_id, "customer_id");
  add("segment", c.segment, "segment");
  add("since", c.segment_since);
  add("rule", c.rule ? `${c.rule.name}: ${c.rule.description} ${JSON.stringify(c.rule.when)}` : null, "rule");
  add("recency", r.recency_days === null ? null : `${r.recency_days.toFixed(1)} days · R ${r.r_score}`, "recency");
  add("frequency", `${r.frequency} orders · F ${r.f_score}`, "frequency");
  add("monetary", `${money({ [c.figures.currency]: r.monetary })} · M ${r.m_score}`, "monetary");
  add("tags", c.tags.join(", ") || "none", "tags");
  add("next change", c.next_due ? `${c.next_due.at.slice(0, 16)} → ${c.next_due.to_segment} (${c.next_due.why})` : "none due", "next_due");
  add("versions", c.rule ? `${c.rule.rule_version} / ${c.rule.calibration_version}` : null);
  target.replaceChildren(dl);
}

start();
