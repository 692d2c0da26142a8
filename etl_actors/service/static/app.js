"use strict";
/*
 * The status page: asks for an API key (kept in sessionStorage, sent as
 * "Authorization: Bearer"), then polls GET /status every second and shows what it says.
 * A 401 brings the key form back with a message. Every value reaches the DOM through
 * textContent or setAttribute, never innerHTML, so no text from the server is markup.
 */
(() => {
  const STORAGE_KEY = "etl-actors.apiKey";
  const POLL_MS = 1000;
  const CHART_MINUTES = 30;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  let generation = 0;          // bumped on sign-in and sign-out: an older poll loop stops
  let services = new Map();    // service id -> service, for request rows' titles

  // --- key and polling -----------------------------------------------------------

  class Unauthorized extends Error {}

  async function fetchStatus(key) {
    const response = await fetch("status", {
      headers: {Authorization: "Bearer " + key, Accept: "application/json"},
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized();
    if (!response.ok) throw new Error("GET /status answered " + response.status + ": " + await errorOf(response));
    return response.json();
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      return String(body.error || response.statusText);
    } catch (_) {
      return response.statusText;
    }
  }

  async function poll(key, gen) {
    try {
      const status = await fetchStatus(key);
      if (gen !== generation) return;
      render(status);
      setConnection("Updated " + clock(new Date()) + " UTC", false);
    } catch (error) {
      if (gen !== generation) return;
      if (error instanceof Unauthorized) {
        signOut("The API key was refused (401): it may have been revoked. Enter a valid key.");
        return;
      }
      setConnection("Cannot read the status (" + error.message + "); retrying every second", true);
    }
    setTimeout(() => { if (gen === generation) poll(key, gen); }, POLL_MS);
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    if (!key) {
      $("login-error").textContent = "Enter an API key.";
      return;
    }
    $("login-error").textContent = "";
    const gen = ++generation;
    let status;
    try {
      status = await fetchStatus(key);
    } catch (error) {
      if (gen !== generation) return;
      $("login-error").textContent = error instanceof Unauthorized
        ? "That API key was not accepted (401). Check it and try again."
        : "Cannot read the status: " + error.message;
      input.select();
      return;
    }
    if (gen !== generation) return;
    sessionStorage.setItem(STORAGE_KEY, key);
    input.value = "";
    showDashboard();
    render(status);
    setConnection("Updated " + clock(new Date()) + " UTC", false);
    setTimeout(() => poll(key, gen), POLL_MS);
  }

  function signOut(message) {
    generation++;
    sessionStorage.removeItem(STORAGE_KEY);
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setConnection("", false);
    $("api-key").focus();
  }

  function showDashboard() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
  }

  function setConnection(text, stale) {
    const line = $("connection");
    line.textContent = text;
    line.classList.toggle("stale", stale);
  }

  // --- rendering -----------------------------------------------------------------

  function render(status) {
    services = new Map((status.services || []).map((s) => [serviceId(s), s]));
    const requests = status.requests || [];
    const active = requests.filter((r) => r.status === "running" || r.status === "queued");
    const finished = requests.filter((r) => r.status !== "running" && r.status !== "queued");
    renderRows("running", active, (r) => r.requestId, fillRunning);
    renderRows("recent", finished, (r) => r.requestId, fillRecent);
    renderRows("services", [...services.values()], serviceId, fillService);
    renderRows("alerts", status.alerts || [], (a) => a.alertId, fillAlert);
    const letters = Object.entries(status.deadLetters || {}).sort(([a], [b]) => a.localeCompare(b));
    renderRows("dead-letters", letters, ([pipeline]) => pipeline, fillDeadLetters);
    renderRows("charges", status.charges || [], (c) => c.chargeId || c.requestId, fillCharge);
    drawChart(status.recordsPerMinute || []);
  }

  /** Rows keyed by ``keyOf(item)``: a row stays the same element while its item is
   * listed (so a progress bar moves instead of being redrawn), in the items' order. */
  function renderRows(tableId, items, keyOf, fill) {
    const table = $(tableId);
    const body = table.tBodies[0];
    const columns = table.tHead.rows[0].cells.length;
    const old = new Map([...body.rows].map((row) => [row.dataset.key, row]));
    items.forEach((item) => {
      const key = String(keyOf(item));
      let row = old.get(key);
      old.delete(key);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.key = key;
        for (let i = 0; i < columns; i++) row.appendChild(document.createElement("td"));
      }
      fill(row, item);
      body.appendChild(row);
    });
    old.forEach((row) => row.remove());
    document.querySelector(`[data-empty-for="${tableId}"]`).hidden = items.length > 0;
  }

  // The first four cells of a request's row (id, service, customer, status): its cells.
  function fillRequest(row, r) {
    row.dataset.requestId = r.requestId;
    row.dataset.status = r.status;
    const c = row.cells;
    setText(c[0], r.requestId, "mono");
    setText(c[1], serviceTitle(r.serviceId));
    setText(c[2], r.customerId || "—");
    setStatus(c[3], r.status);
    return c;
  }

  function fillRunning(row, r) {
    const progress = r.progress || {};
    const c = fillRequest(row, r);
    setText(c[4], progress.phase || "—");
    setText(c[5], integer(progress.records), "num");
    setText(c[6], bytes(progress.bytes), "num");
    setProgress(c[7], r.requestId, progress.percent);
  }

  function fillRecent(row, r) {
    const outputs = r.outputs || null;
    const c = fillRequest(row, r);
    setText(c[4], r.trigger || "—", "nowrap");
    setText(c[5], timestamp(r.createdAt), "nowrap");
    setText(c[6], duration(outputs ? outputs.duration : elapsedMs(r.startedAt, r.finishedAt)), "num");
    setText(c[7], integer(outputs ? outputs.recordsProcessed : (r.progress || {}).records), "num");
    setText(c[8], r.charge ? money(r.charge) : "—", "num charge");
    c[8].dataset.amount = r.charge ? String(r.charge.amount) : "";
    setText(c[9], r.error || "");
  }

  function fillService(row, s) {
    row.dataset.serviceId = serviceId(s);
    const c = row.cells;
    setText(c[0], s.title || s.name || serviceId(s));
    setText(c[1], serviceId(s), "mono");
    setText(c[2], s.kind || "—");
    setText(c[3], s.pipeline || (s.spec && s.spec.name) || "—", "mono");
    setText(c[4], schedule(s.schedule || (s.spec && s.spec.schedule)));
    setText(c[5], pricing(s.pricing || (s.spec && s.spec.pricing)));
  }

  function fillAlert(row, a) {
    row.dataset.alertId = a.alertId;
    const c = row.cells;
    setText(c[0], a.alertId, "mono");
    setStatus(c[1], a.state);
    setText(c[2], a.severity || "—");
    setText(c[3], integer(a.count) + (a.threshold != null ? " / " + integer(a.threshold) : ""), "num");
    setText(c[4], timestamp(a.raisedAt), "nowrap");
    setText(c[5], a.message || "");
  }

  function fillDeadLetters(row, [pipeline, pending]) {
    row.dataset.pipeline = pipeline;
    setText(row.cells[0], pipeline, "mono");
    setText(row.cells[1], integer(pending), "num");
  }

  function fillCharge(row, ch) {
    row.dataset.requestId = ch.requestId || "";
    const c = row.cells;
    setText(c[0], ch.requestId || "—", "mono");
    setText(c[1], serviceTitle(ch.serviceId));
    setText(c[2], ch.customerId || "—");
    setText(c[3], ch.description || "");
    setText(c[4], timestamp(ch.createdAt), "nowrap");
    setText(c[5], money(ch), "num charge");
    c[5].dataset.amount = String(ch.amount);
  }

  function setText(cell, text, className) {
    if (cell.textContent !== text) cell.textContent = text;
    if (className && cell.className !== className) cell.className = className;
  }

  function setStatus(cell, status) {
    setText(cell, status || "—", "status status-" + String(status || "unknown").replace(/[^a-z]/g, ""));
  }

  /** A progress bar with the percent as text, ``data-percent`` and ``aria-valuenow``;
   * an unknown total (no percent) is shown striped, ``data-percent=""``. */
  function setProgress(cell, requestId, percent) {
    let bar = cell.firstElementChild;
    if (!bar) {
      bar = document.createElement("div");
      bar.className = "progress";
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-label", "Progress of " + requestId);
      const track = document.createElement("div");
      track.className = "progress-track";
      const fill = document.createElement("div");
      fill.className = "progress-fill";
      track.appendChild(fill);
      const label = document.createElement("span");
      label.className = "progress-label";
      bar.append(track, label);
      cell.appendChild(bar);
    }
    const known = typeof percent === "number" && isFinite(percent);
    const value = known ? Math.max(0, Math.min(100, percent)) : null;
    bar.dataset.percent = known ? value.toFixed(1) : "";
    if (known) bar.setAttribute("aria-valuenow", value.toFixed(1));
    else bar.removeAttribute("aria-valuenow");
    bar.querySelector(".progress-fill").style.width = known ? value + "%" : "";
    bar.querySelector(".progress-label").textContent = known ? Math.floor(value) + "%" : "—";
  }

  // --- the chart -----------------------------------------------------------------

  /** One bar per minute with records, over the 30 minutes ending at the later of now
   * and the newest minute the server reported. */
  function drawChart(points) {
    const svg = $("chart");
    const width = Math.max(300, Math.round(svg.getBoundingClientRect().width) || 1200);
    const height = 220;
    const pad = {left: 56, right: 8, top: 12, bottom: 26};
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const byMinute = new Map();
    points.forEach((p) => {
      const t = Date.parse(p.minute);
      if (!isNaN(t)) byMinute.set(floorMinute(t), (byMinute.get(floorMinute(t)) || 0) + Number(p.records || 0));
    });
    const end = Math.max(floorMinute(Date.now()), ...byMinute.keys());
    const start = end - (CHART_MINUTES - 1) * 60000;
    const minutes = Array.from({length: CHART_MINUTES}, (_, i) => start + i * 60000);
    const values = minutes.map((m) => byMinute.get(m) || 0);
    const top = niceCeiling(Math.max(0, ...values));
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const slot = plotW / CHART_MINUTES;
    const y = (v) => pad.top + plotH - (top ? v / top : 0) * plotH;

    const parts = [];
    [0, top / 2, top].forEach((v) => {
      parts.push(svgEl("line", {class: "axis", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v)}));
      parts.push(svgEl("text", {x: pad.left - 6, y: y(v) + 4, "text-anchor": "end"}, integer(v)));
    });
    minutes.forEach((m, i) => {
      if (i % 5 === 0 || i === CHART_MINUTES - 1) {
        parts.push(svgEl("text", {x: pad.left + slot * (i + 0.5), y: height - 8, "text-anchor": "middle"},
                         clock(new Date(m)).slice(0, 5)));
      }
      if (!values[i]) return;
      const bar = svgEl("rect", {
        class: "bar", x: pad.left + slot * (i + 0.15), width: slot * 0.7,
        y: y(values[i]), height: pad.top + plotH - y(values[i]),
        "data-minute": new Date(m).toISOString(), "data-records": values[i],
      });
      bar.appendChild(svgEl("title", {}, clock(new Date(m)).slice(0, 5) + " UTC: " + integer(values[i]) + " records"));
      parts.push(bar);
    });
    svg.replaceChildren(...parts);

    const total = values.reduce((a, b) => a + b, 0);
    const peak = values.indexOf(Math.max(...values));
    $("chart-summary").textContent = total
      ? `${integer(total)} records in the last ${CHART_MINUTES} minutes; at most ${integer(values[peak])} ` +
        `in the minute from ${clock(new Date(minutes[peak])).slice(0, 5)} UTC.`
      : `No records loaded in the last ${CHART_MINUTES} minutes.`;
  }

  function svgEl(name, attributes, text) {
    const element = document.createElementNS(SVG, name);
    Object.entries(attributes).forEach(([k, v]) => element.setAttribute(k, String(v)));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function niceCeiling(value) {
    if (value <= 0) return 0;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    return [1, 2, 2.5, 5, 10].map((f) => f * step).find((v) => v >= value);
  }

  const floorMinute = (ms) => Math.floor(ms / 60000) * 60000;

  // --- formatting ----------------------------------------------------------------

  const serviceId = (s) => s.id || s.serviceId;

  function serviceTitle(id) {
    const service = services.get(id);
    return service ? (service.title || service.name || id) : (id || "—");
  }

  function integer(n) {
    return n == null || n === "" || isNaN(Number(n)) ? "—" : Math.round(Number(n)).toLocaleString("en-US");
  }

  function bytes(n) {
    if (n == null || isNaN(Number(n))) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = Number(n), unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
    return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
  }

  function money(charge) {
    return String(charge.amount) + " " + String(charge.currency || "USD");
  }

  function duration(ms) {
    if (ms == null || isNaN(Number(ms))) return "—";
    ms = Number(ms);
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  function elapsedMs(start, end) {
    const a = Date.parse(start), b = Date.parse(end);
    return isNaN(a) || isNaN(b) ? null : b - a;
  }

  function timestamp(value) {
    if (value == null || value === "") return "—";
    const date = typeof value === "number" ? new Date(value < 1e12 ? value * 1000 : value) : new Date(value);
    return isNaN(date.getTime()) ? String(value) : date.toISOString().slice(0, 19).replace("T", " ");
  }

  function clock(date) {
    return date.toISOString().slice(11, 19);
  }

  function schedule(s) {
    if (!s) return "on request";
    if (typeof s !== "object") return String(s);
    return [s.expression, s.timezone ? "(" + s.timezone + ")" : ""].filter(Boolean).join(" ") || String(s.type || "—");
  }

  function pricing(p) {
    if (!p || typeof p !== "object") return "—";
    const parts = [String(p.model || "—")];
    if (p.rate != null) parts.push(String(p.rate) + " " + (p.currency || "USD"));
    if (p.minimumCharge != null) parts.push("minimum " + String(p.minimumCharge));
    if (Array.isArray(p.tiers) || Array.isArray(p.volume)) parts.push("tiered");
    return parts.join(", ");
  }

  // --- start ---------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    const key = sessionStorage.getItem(STORAGE_KEY);
    if (!key) {
      signOut("");
      return;
    }
    showDashboard();
    setConnection("Loading…", false);
    poll(key, ++generation);
  });
})();
