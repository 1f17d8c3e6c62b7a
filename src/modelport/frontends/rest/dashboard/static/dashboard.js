// The modelport dashboard: polls the server's own data endpoint every 2 s and draws what it
// says. Text that comes from the server (model names, reasons, alert summaries) is only ever
// written as text nodes (textContent), never parsed as markup.

import { LineChart } from "./chart.js";

const SERIES_URL = new URL("../api/series", import.meta.url);
const ALERTS_URL = new URL("../../v2/alerts", import.meta.url);
const POLL_MS = 2000;
const STEP_S = 5;
const KEY_ITEM = "modelport.dashboard.key";
const RESOLVED_SHOWN = 5;

const number = (digits) => (value) => (value === null ? "—" : value.toFixed(digits));
const milliseconds = (value) => {
  if (value === null) {
    return "—";
  }
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
};
const percent = (value) => (value === null ? "—" : (value * 100).toFixed(value < 0.1 ? 2 : 1));

// The metrics of each version: its field in the series, and how it is shown.
// `scale` turns a value into the chart's unit; `axis` formats the chart's ticks.
const METRICS = [
  { field: "requests_per_second", title: "requests/s", cell: "rps", format: number(1) },
  { field: "p50_ms", title: "p50 latency (ms)", cell: "p50", format: milliseconds },
  { field: "p99_ms", title: "p99 latency (ms)", cell: "p99", format: milliseconds },
  { field: "error_rate", title: "error rate (%)", cell: "errors", format: percent, scale: 100 },
  { field: "queue_depth", title: "queue depth (most in flight)", cell: "queue", format: number(0) },
  { field: "batch_size", title: "batch size (mean)", cell: "batch", format: number(1) },
];
const TABLE_HEADINGS = ["version", "state", "labels", "traffic", ...METRICS.map((m) => m.title)];
const TEXT_CELLS = ["state", "labels", "traffic", ...METRICS.map((m) => m.cell), "reason"];
const FIELDS = ["time", ...METRICS.map((metric) => metric.field)];

const state = {
  key: sessionStorage.getItem(KEY_ITEM),
  since: null,
  series: new Map(), // "model/version" -> {time: [], requests_per_second: [], ...}
  views: new Map(), // model name -> ModelView
  timer: null,
  span: 900, // seconds the charts show
  last: null, // the last answer, drawn again when the span changes
};

// ---- small DOM helpers ----------------------------------------------------------------------

function element(tag, className, content) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (content !== undefined) {
    node.textContent = content;
  }
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function show(id, visible) {
  byId(id).hidden = !visible;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function when(rfc3339) {
  const time = Date.parse(rfc3339);
  return Number.isNaN(time) ? rfc3339 : new Date(time).toLocaleTimeString();
}

function setStatus(message, problem) {
  const status = byId("status");
  status.textContent = message;
  status.classList.toggle("problem", Boolean(problem));
}

// ---- talking to the server ------------------------------------------------------------------

class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJson(url) {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const reply = await fetch(url, { headers, cache: "no-store", credentials: "omit" });
  if (reply.ok) {
    return reply.json();
  }
  let message = `${reply.status} ${reply.statusText}`;
  try {
    const body = await reply.json();
    if (body && typeof body.error === "string") {
      message = body.error;
    }
  } catch {
    // not JSON: the status line says enough
  }
  throw new Refused(reply.status, message);
}

function seriesUrl() {
  const url = new URL(SERIES_URL);
  url.searchParams.set("step", String(STEP_S));
  if (state.since !== null) {
    url.searchParams.set("since", String(state.since));
  }
  return url;
}

// ---- the API key ----------------------------------------------------------------------------

function askForKey(note) {
  clearTimeout(state.timer);
  show("key-panel", true);
  byId("key-note").textContent = note;
  setStatus("waiting for an API key", true);
  byId("key-input").focus();
}

function useKey(event) {
  event.preventDefault();
  const key = byId("key-input").value.trim();
  if (!key) {
    return;
  }
  state.key = key;
  sessionStorage.setItem(KEY_ITEM, key);
  byId("key-input").value = "";
  show("key-panel", false);
  poll();
}

function forgetKey() {
  state.key = null;
  sessionStorage.removeItem(KEY_ITEM);
}

// ---- series kept in the page ----------------------------------------------------------------

function seriesKey(model, version) {
  return `${model}/${version}`;
}

// Takes in one answer's points: all of them after a full read, the new ones after `since`.
function mergeSeries(answer, full) {
  const listed = new Set();
  let unknown = false;
  for (const model of answer.models) {
    for (const version of model.versions) {
      const key = seriesKey(model.name, version.version);
      listed.add(key);
      const points = version.series;
      if (!points) {
        continue;
      }
      let kept = full ? undefined : state.series.get(key);
      if (kept === undefined) {
        unknown = unknown || !full;
        kept = Object.fromEntries(FIELDS.map((field) => [field, []]));
        state.series.set(key, kept);
      }
      const newest = kept.time.length ? kept.time[kept.time.length - 1] : -Infinity;
      for (let i = 0; i < points.time.length; i += 1) {
        if (points.time[i] > newest + answer.step / 2) {
          for (const field of FIELDS) {
            kept[field].push(points[field][i]);
          }
        }
      }
      const oldest = points.time.length
        ? points.time[points.time.length - 1] - answer.history_s
        : -Infinity;
      let drop = 0;
      while (drop < kept.time.length && kept.time[drop] <= oldest) {
        drop += 1;
      }
      if (drop) {
        for (const field of FIELDS) {
          kept[field].splice(0, drop);
        }
      }
    }
  }
  for (const key of [...state.series.keys()]) {
    if (!listed.has(key)) {
      state.series.delete(key);
    }
  }
  // a version the page has not seen (loaded again after it was gone) may have older points
  let since = null;
  for (const kept of state.series.values()) {
    const last = kept.time[kept.time.length - 1];
    if (last !== undefined && (since === null || last < since)) {
      since = last;
    }
  }
  state.since = unknown ? null : since;
}

// ---- one model's part of the page -----------------------------------------------------------

function roleOf(version, index) {
  if (version.labels.includes("stable")) {
    return "line-stable";
  }
  if (version.labels.includes("canary")) {
    return "line-canary";
  }
  return `line-${index % 6}`;
}

function lastValue(points, field) {
  if (!points || points[field].length === 0) {
    return null;
  }
  return points[field][points[field].length - 1];
}

class ModelView {
  constructor(model) {
    this.signature = signatureOf(model);
    this.root = element("article", "model");
    this.root.dataset.model = model.name;
    const heading = element("h2");
    this.title = element("span", "name", model.name);
    this.state = element("span", "badge");
    this.reason = element("span", "reason");
    heading.append(this.title, this.state, this.reason);
    this.alerts = element("ul", "model-alerts");
    this.root.append(heading, this.alerts);
    this.rows = new Map();
    this.charts = [];
    if (model.versions.length === 0) {
      return;
    }
    const table = element("table", "versions");
    const head = element("tr");
    for (const title of [...TABLE_HEADINGS, "reason"]) {
      head.append(element("th", "", title));
    }
    table.append(element("thead"), element("tbody"));
    table.tHead.append(head);
    model.versions.forEach((version, index) => {
      const row = element("tr");
      row.dataset.version = version.version;
      const name = element("td", "version");
      const swatch = element("span", `swatch ${roleOf(version, index)}`);
      name.append(swatch, document.createTextNode(version.version));
      const cells = { version: name };
      row.append(name);
      for (const cell of TEXT_CELLS) {
        cells[cell] = element("td", cell);
        row.append(cells[cell]);
      }
      cells.swatch = swatch;
      this.rows.set(version.version, cells);
      table.tBodies[0].append(row);
    });
    if (!model.versions.some((version) => version.series)) {
      this.root.append(table); // nothing was ever measured (failed loads): no charts
      return;
    }
    const charts = element("div", "charts");
    for (const metric of METRICS) {
      const chart = new LineChart(metric.title, axisLabel);
      chart.element.dataset.metric = metric.field;
      this.charts.push({ metric, chart });
      charts.append(chart.element);
    }
    this.root.append(table, charts);
  }

  update(model, answer, end, firing) {
    const problem = model.state && model.state !== "READY";
    this.state.textContent = model.state || this.summaryState(model);
    this.state.className = `badge state-${(model.state || this.summaryState(model)).toLowerCase()}`;
    this.reason.textContent = problem ? model.reason : "";
    this.alerts.replaceChildren(
      ...firing.map((alert) => element("li", `alert ${alert.state}`, describeAlert(alert))),
    );
    this.root.classList.toggle("alerting", firing.some((alert) => alert.state === "firing"));
    const lines = new Map(this.charts.map(({ metric }) => [metric.field, []]));
    model.versions.forEach((version, index) => {
      const cells = this.rows.get(version.version);
      const role = roleOf(version, index);
      cells.swatch.className = `swatch ${role}`;
      cells.state.textContent = version.state;
      cells.state.className = `state state-${version.state.toLowerCase()}`;
      cells.labels.replaceChildren(...version.labels.map(labelBadge));
      cells.traffic.textContent = version.traffic === null ? "" : `${version.traffic}%`;
      cells.reason.textContent = version.reason;
      const points = state.series.get(seriesKey(model.name, version.version));
      for (const metric of METRICS) {
        cells[metric.cell].textContent = metric.format(lastValue(points, metric.field));
        if (points) {
          const scale = metric.scale || 1;
          lines.get(metric.field).push({
            cls: role,
            times: points.time,
            values: points[metric.field].map((value) => (value === null ? null : value * scale)),
          });
        }
      }
    });
    for (const { metric, chart } of this.charts) {
      chart.draw(lines.get(metric.field), end, Math.min(state.span, answer.history_s));
    }
  }

  summaryState(model) {
    const ready = model.versions.filter((version) => version.state === "READY").length;
    return ready ? "READY" : model.versions.length ? model.versions[0].state : "UNAVAILABLE";
  }
}

// ---- the page -------------------------------------------------------------------------------

function describeAlert(alert) {
  const value = alert.value === null ? "no data" : formatSlo(alert.slo, alert.value);
  const limit = formatSlo(alert.slo, alert.threshold);
  const time =
    alert.state === "resolved" && alert.ended
      ? `resolved ${when(alert.ended)}`
      : `since ${when(alert.since)}`;
  const parts = [
    `${alert.state}: ${alert.name}`,
    `${alert.model} version ${alert.version}`,
    `${alert.slo} ${value} (objective ${limit})`,
    time,
  ];
  if (alert.summary) {
    parts.push(alert.summary);
  }
  return parts.join(" · ");
}

function formatSlo(slo, value) {
  return slo === "error_rate" ? `${(value * 100).toFixed(2)}%` : `${(value * 1000).toFixed(1)} ms`;
}

function describeRollback(rollback) {
  const versions = `from version ${rollback.from_version} to ${rollback.to_version}`;
  return `${when(rollback.at)}: ${rollback.model} rolled back ${versions}: ${rollback.reason}`;
}

// What a model's part of the page is built from: its versions, and which have measurements.
function signatureOf(model) {
  return model.versions.map((version) => `${version.version}${version.series ? "+" : ""}`).join();
}

function labelBadge(label) {
  const kind = label === "stable" || label === "canary" ? label : "other";
  return element("span", `label label-${kind}`, label);
}

function axisLabel(value) {
  return value >= 10 || value === 0 ? value.toFixed(0) : String(Number(value.toPrecision(2)));
}

function renderModels(answer) {
  const container = byId("models");
  const names = new Set(answer.models.map((model) => model.name));
  for (const [name, view] of state.views) {
    if (!names.has(name)) {
      view.root.remove();
      state.views.delete(name);
    }
  }
  let end = 0;
  for (const kept of state.series.values()) {
    end = Math.max(end, kept.time[kept.time.length - 1] || 0);
  }
  if (!end) {
    end = Date.now() / 1000;
  }
  const previous = [];
  for (const model of answer.models) {
    let view = state.views.get(model.name);
    if (view && view.signature !== signatureOf(model)) {
      view.root.remove();
      view = undefined;
    }
    if (!view) {
      view = new ModelView(model);
      state.views.set(model.name, view);
    }
    const firing = (state.alerts || []).filter(
      (alert) => alert.model === model.name && alert.state !== "resolved",
    );
    view.update(model, answer, end, firing);
    previous.push(view.root);
  }
  container.replaceChildren(...previous);
}

function renderFailures(answer) {
  show("failures-panel", answer.failures.length > 0);
  byId("failures").replaceChildren(
    ...answer.failures.map((failure) => {
      const what = failure.version === null ? "" : ` version ${failure.version}`;
      return element("li", "failure", `${failure.model}${what}: ${failure.reason}`);
    }),
  );
  show("components-panel", answer.components.length > 0);
  byId("components").replaceChildren(
    ...answer.components.map((row) => {
      const why = row.reason ? ` (${row.reason})` : "";
      const className = `component state-${row.state.toLowerCase()}`;
      return element("li", className, `${row.name}: ${row.state}${why}`);
    }),
  );
}

function renderAlerts(report) {
  show("alerts-panel", report !== null);
  if (report === null) {
    return;
  }
  const active = report.alerts.filter((alert) => alert.state !== "resolved");
  const resolved = report.alerts
    .filter((alert) => alert.state === "resolved")
    .slice(0, RESOLVED_SHOWN);
  const shown = [...active, ...resolved];
  show("alerts-none", active.length === 0);
  byId("alerts").replaceChildren(
    ...shown.map((alert) => element("li", `alert ${alert.state}`, describeAlert(alert))),
  );
  show("rollbacks-none", report.rollbacks.length === 0);
  byId("rollbacks").replaceChildren(
    ...report.rollbacks.map((rollback) => element("li", "rollback", describeRollback(rollback))),
  );
}

function renderSummary(answer) {
  let versions = 0;
  let ready = 0;
  for (const model of answer.models) {
    versions += model.versions.length;
    ready += model.versions.filter((version) => version.state === "READY").length;
  }
  const firing = (state.alerts || []).filter((alert) => alert.state === "firing").length;
  const parts = [
    `${answer.models.length} models`,
    `${ready}/${versions} versions ready`,
    `${answer.failures.length} failed`,
  ];
  if (state.alerts !== null) {
    parts.push(`${firing} alerts firing`);
  }
  byId("summary").textContent = parts.join(" · ");
}

async function poll() {
  clearTimeout(state.timer);
  try {
    const full = state.since === null;
    const answer = await getJson(seriesUrl());
    mergeSeries(answer, full);
    let report = null;
    if (answer.alerts) {
      report = await getJson(ALERTS_URL);
    }
    state.alerts = report === null ? null : report.alerts;
    renderAlerts(report);
    renderFailures(answer);
    renderModels(answer);
    renderSummary(answer);
    state.last = answer;
    show("content", true);
    setStatus(`live · ${clock(Date.now() / 1000)}`, false);
  } catch (error) {
    if (error instanceof Refused && error.status === 401) {
      const had = state.key !== null;
      forgetKey();
      askForKey(had ? "That key was refused. Enter another one." : "");
      return;
    }
    if (error instanceof Refused && error.status === 403) {
      forgetKey();
      askForKey(`That key may not read metrics: ${error.message}`);
      return;
    }
    setStatus(`cannot read the server: ${error.message}`, true);
  }
  state.timer = setTimeout(poll, POLL_MS);
}

function chooseSpan(event) {
  const button = event.target.closest("button[data-span]");
  if (!button) {
    return;
  }
  state.span = Number(button.dataset.span);
  for (const other of document.querySelectorAll("#spans button")) {
    other.setAttribute("aria-pressed", String(other === button));
  }
  if (state.last) {
    renderModels(state.last);
  }
}

function start() {
  byId("key-form").addEventListener("submit", useKey);
  byId("spans").addEventListener("click", chooseSpan);
  state.alerts = null;
  if (document.documentElement.dataset.keys === "required" && !state.key) {
    askForKey("");
    return;
  }
  poll();
}

start();
