/* bus-stats: the analyst's page. Plain JavaScript, no build step; charts by uPlot.
 *
 * It reads the API only: GET /dates (each date's state; without a range, the 30 days
 * ending at the newest date with data), GET /country-stats (rows and missing dates; the
 * CSV download is the same query with format=csv), POST /process-request (one per date
 * of the form), GET /jobs/<id> (progress, polled until the job ends), GET /jobs (recent
 * jobs). Text from the API is only ever put in the page as text, never as HTML.
 */
"use strict";

(() => {
  const DAY_SECONDS = 86400;
  const POLL_MS = 1000;
  const MAX_REQUEST_DATES = 31;
  const JOBS_PAGE = 20;
  const TOKEN_KEY = "bus-stats.token";
  const FINISHED = new Set(["succeeded", "failed"]);
  const PALETTE = ["#1f5fbf", "#e07b00", "#2e8b57", "#8e44ad", "#c0392b", "#16a0a8",
    "#7f6000", "#d6338a", "#34495e", "#6b8e23"];
  const METRICS = [
    { id: "chart-passengers", field: "passengers", label: "passengers", digits: 0 },
    { id: "chart-buses", field: "buses_started", label: "buses started", digits: 0 },
    { id: "chart-delay", field: "average_delay_seconds", label: "average delay (s)", digits: 1 },
  ];

  const $ = (id) => document.getElementById(id);
  const state = {
    from: null, to: null, country: "", userRange: false,
    rows: [], missing: [], dates: [], charts: [],
    jobs: new Map(), polling: null, jobsCursor: null, loadSeq: 0,
  };

  // --- helpers -------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function showError(id, message) {
    const node = $(id);
    node.textContent = message || "";
    node.hidden = !message;
  }

  const intFormat = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => (n === null || n === undefined ? "" : intFormat.format(n));
  const fmtDelay = (n) => n.toFixed(2);

  function fmtBytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let size = n;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
    return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
  }

  const isoDay = (d) => d.toISOString().slice(0, 10);
  const daySeconds = (iso) => Date.parse(`${iso}T00:00:00Z`) / 1000;

  function daysBetween(from, to) {
    const days = [];
    for (let t = daySeconds(from); t <= daySeconds(to); t += DAY_SECONDS) {
      days.push(isoDay(new Date(t * 1000)));
    }
    return days;
  }

  /** Consecutive dates as ranges: ["2024-01-01 – 2024-01-03", "2024-01-05"]. */
  function asRanges(days) {
    const ranges = [];
    let start = null;
    let prev = null;
    for (const day of days) {
      if (prev !== null && daySeconds(day) - daySeconds(prev) === DAY_SECONDS) {
        prev = day;
        continue;
      }
      if (start !== null) ranges.push(start === prev ? start : `${start} – ${prev}`);
      start = day;
      prev = day;
    }
    if (start !== null) ranges.push(start === prev ? start : `${start} – ${prev}`);
    return ranges;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options, headers: { Accept: "application/json", ...(options.headers || {}) },
    });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
      throw new ApiError(response.status, message);
    }
    return { status: response.status, body };
  }

  const query = (params) => new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== ""),
  ).toString();

  // --- statistics: range, dates at a glance, charts, table -----------------------------

  async function loadDefaultRange() {
    const { body } = await api("dates");
    state.from = body.from;
    state.to = body.to;
    state.dates = body.dates;
    $("range-from").value = state.from;
    $("range-to").value = state.to;
    const withData = body.dates.some((d) => d.committed);
    $("range-note").textContent = withData
      ? `The 30 days ending at the newest date with data (${state.to}).`
      : "No date has data yet: the last 30 days are shown.";
  }

  async function loadStats() {
    const seq = ++state.loadSeq;
    showError("stats-error", "");
    const range = { from: state.from, to: state.to };
    try {
      const [dates, stats] = await Promise.all([
        api(`dates?${query(range)}`),
        api(`country-stats?${query({ ...range, country: state.country })}`),
      ]);
      if (seq !== state.loadSeq) return; // a newer request superseded this one
      state.dates = dates.body.dates;
      state.rows = stats.body.stats.filter((r) => !state.country || r.country === state.country);
      state.missing = stats.body.missing_dates;
      renderAll();
    } catch (error) {
      if (seq !== state.loadSeq) return;
      showError("stats-error", `Could not load the statistics: ${error.message}`);
    }
  }

  function renderAll() {
    renderCountries();
    renderStrip();
    renderMissing();
    renderCharts();
    renderTable();
    renderCsvLink();
    document.body.dataset.statsFrom = state.from;
    document.body.dataset.statsTo = state.to;
    document.body.dataset.statsRows = String(state.rows.length);
  }

  function renderCountries() {
    const select = $("range-country");
    const known = new Set([...select.options].map((o) => o.value));
    for (const country of new Set(state.rows.map((r) => r.country))) {
      if (!known.has(country)) select.append(el("option", { value: country, text: country }));
    }
    select.value = state.country;
  }

  function describeDate(d) {
    const parts = [d.date];
    if (d.committed) {
      const c = d.committed;
      parts.push(`data from job ${c.job_id} (${c.committed_at}): ${fmtInt(c.records)} records, `
        + `${fmtBytes(c.bytes)}, ${c.cities} cities`);
    }
    if (d.job && d.job.status !== "succeeded") {
      parts.push(`newest job ${d.job.job_id} ${d.job.status}`
        + (d.job.error ? `: ${d.job.error}` : ""));
    }
    if (d.state === "missing") parts.push("no data");
    return parts.join(" — ");
  }

  function renderStrip() {
    const strip = $("date-strip");
    strip.replaceChildren(...state.dates.map((d) => {
      const label = describeDate(d);
      const cell = el("button", {
        type: "button", class: d.state, title: label, "aria-label": label,
        "data-date": d.date, "data-state": d.state,
      });
      cell.addEventListener("click", () => {
        $("request-from").value = d.date;
        $("request-to").value = "";
        $("request-force").checked = d.state === "committed";
        $("request-from").focus();
      });
      return el("li", {}, cell);
    }));
  }

  function renderMissing() {
    const box = $("gaps");
    box.replaceChildren();
    const failed = state.dates.filter((d) => d.state === "failed");
    const running = state.dates.filter((d) => d.state === "running" || d.state === "queued");
    if (state.missing.length) {
      box.append(el("h4", { text: `Missing dates (${state.missing.length}, no data): ` }));
      box.append(el("ul", { class: "gaps-list", id: "missing-list" },
        ...asRanges(state.missing).map((r) => el("li", { text: r }))));
    }
    if (running.length) {
      box.append(el("h4", { text: "Being fetched:" }));
      box.append(el("ul", { class: "gaps-list", id: "running-list" },
        ...running.map((d) => el("li", { text: `${d.date}: ${d.job.status}` }))));
    }
    if (failed.length) {
      box.append(el("h4", { text: "Failed:" }));
      box.append(el("ul", { class: "gaps-list", id: "failed-list" },
        ...failed.map((d) => el("li", { text: `${d.date}: ${d.job.error || "failed"}` }))));
    }
  }

  /** Columns for uPlot: x (UTC midnights) and, per country, the metric or null (a gap). */
  function chartData(metric, countries, days) {
    const index = new Map(state.rows.map((r) => [`${r.date}|${r.country}`, r]));
    const xs = days.map(daySeconds);
    const series = countries.map((c) => days.map((d) => {
      const row = index.get(`${d}|${c}`);
      return row ? row[metric.field] : null;
    }));
    const accidents = countries.map((c) => days.map((d) => {
      const row = index.get(`${d}|${c}`);
      return Boolean(row && row.accident);
    }));
    return { data: [xs, ...series], accidents };
  }

  function shadeMissing(u) {
    const missing = new Set(state.missing);
    const { ctx } = u;
    const { top, height } = u.bbox;
    ctx.save();
    ctx.fillStyle = "rgba(120, 130, 145, 0.16)";
    for (const day of missing) {
      const t = daySeconds(day);
      const x0 = u.valToPos(t - DAY_SECONDS / 2, "x", true);
      const x1 = u.valToPos(t + DAY_SECONDS / 2, "x", true);
      ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
    }
    ctx.restore();
  }

  function markAccidents(u, accidents) {
    const { ctx } = u;
    const size = 6 * devicePixelRatio;
    ctx.save();
    ctx.fillStyle = "#c62828";
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = devicePixelRatio;
    accidents.forEach((flags, s) => {
      if (!u.series[s + 1].show) return;
      flags.forEach((hit, i) => {
        const value = u.data[s + 1][i];
        if (!hit || value === null) return;
        const x = u.valToPos(u.data[0][i], "x", true);
        const y = u.valToPos(value, "y", true);
        ctx.beginPath();
        ctx.moveTo(x, y - size);
        ctx.lineTo(x - size, y + size * 0.8);
        ctx.lineTo(x + size, y + size * 0.8);
        ctx.closePath();
        ctx.fill();
        ctx.stroke();
      });
    });
    ctx.restore();
  }

  function chartSize(figure) {
    const width = Math.max(260, Math.floor(figure.clientWidth - 12));
    return { width, height: width < 500 ? 200 : 240 };
  }

  function renderCharts() {
    for (const chart of state.charts) chart.destroy();
    state.charts = [];
    const hasRows = state.rows.length > 0;
    $("no-data").hidden = hasRows;
    $("charts").hidden = !hasRows;
    $("charts-note").hidden = !hasRows;
    document.body.dataset.charts = "0";
    if (!hasRows || typeof uPlot === "undefined") return;
    const days = daysBetween(state.from, state.to);
    const countries = [...new Set(state.rows.map((r) => r.country))].sort();
    const showPoints = days.length <= 62;
    for (const metric of METRICS) {
      const figure = $(metric.id);
      for (const old of figure.querySelectorAll(".uplot")) old.remove();
      const { data, accidents } = chartData(metric, countries, days);
      const options = {
        ...chartSize(figure),
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        scales: {
          x: { time: true, range: (u, min, max) => [min - DAY_SECONDS / 2, max + DAY_SECONDS / 2] },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] },
        },
        series: [
          { label: "date", value: (u, v) => (v === null ? "" : isoDay(new Date(v * 1000))) },
          ...countries.map((country, i) => ({
            label: country,
            stroke: PALETTE[i % PALETTE.length],
            width: 2,
            spanGaps: false,
            points: { show: showPoints, size: 5 },
            value: (u, v) => (v === null || v === undefined ? "—" : v.toFixed(metric.digits)),
          })),
        ],
        axes: [
          {},
          { size: 60, values: (u, ticks) => ticks.map((t) => intFormat.format(t)) },
        ],
        legend: { live: true },
        hooks: {
          drawClear: [shadeMissing],
          draw: [(u) => markAccidents(u, accidents)],
        },
      };
      state.charts.push(new uPlot(options, data, figure));
    }
    document.body.dataset.charts = String(state.charts.length);
  }

  function resizeCharts() {
    for (const chart of state.charts) {
      const figure = chart.root.parentElement;
      if (figure) chart.setSize(chartSize(figure));
    }
  }

  function renderTable() {
    const body = $("stats-table").tBodies[0];
    body.replaceChildren(...state.rows.map((r) => el("tr", { "data-date": r.date, "data-country": r.country },
      el("td", { text: r.date }),
      el("td", { text: r.country }),
      el("td", { class: "num", "data-value": r.buses_started, text: fmtInt(r.buses_started) }),
      el("td", { class: "num", "data-value": r.passengers, text: fmtInt(r.passengers) }),
      el("td", { class: r.accident ? "accident-yes" : "", "data-value": r.accident, text: r.accident ? "yes" : "no" }),
      el("td", {
        class: "num", "data-value": r.average_delay_seconds, text: fmtDelay(r.average_delay_seconds),
      }))));
  }

  function renderCsvLink() {
    const link = $("csv-link");
    const params = { from: state.from, to: state.to, country: state.country, format: "csv" };
    link.href = `country-stats?${query(params)}`;
    const suffix = state.country ? `_${state.country.replace(/[^A-Za-z0-9_-]+/g, "-")}` : "";
    link.setAttribute("download", `bus-stats_${state.from}_${state.to}${suffix}.csv`);
  }

  function onRangeSubmit(event) {
    event.preventDefault();
    const from = $("range-from").value;
    const to = $("range-to").value || from;
    if (!from) return;
    if (to < from) {
      showError("stats-error", "'From' must not be after 'To'.");
      return;
    }
    state.from = from;
    state.to = to;
    state.country = $("range-country").value;
    state.userRange = true;
    $("range-note").textContent = "";
    loadStats();
  }

  // --- requesting dates and following their jobs ---------------------------------------

  function token() {
    return ($("token").value || "").trim();
  }

  function progressRow(job) {
    const total = job.cities_total;
    const done = job.cities_done || 0;
    const bar = el("progress", { max: total || 1, value: total ? done : 0 });
    if (!total && !FINISHED.has(job.status)) bar.removeAttribute("value"); // indeterminate
    return el("tr", { "data-job-id": job.job_id, "data-status": job.status },
      el("td", { text: job.date }),
      el("td", { class: "job-id", title: job.job_id, text: job.job_id.slice(0, 8) }),
      el("td", {}, el("span", { class: `status status-${job.status}`, text: job.status })),
      el("td", { class: "cities" }, bar, `${done} of ${total ?? "?"}`),
      el("td", { class: "num", text: fmtInt(job.records) }),
      el("td", { class: "num", text: fmtBytes(job.bytes) }),
      el("td", { class: "num", text: fmtInt(job.retries) }),
      el("td", { class: "error-cell", text: job.error || job.note || "" }));
  }

  function renderProgress() {
    const jobs = [...state.jobs.values()].sort((a, b) => (a.date < b.date ? -1 : 1));
    $("progress-table").tBodies[0].replaceChildren(...jobs.map(progressRow));
    $("progress-wrap").hidden = jobs.length === 0;
  }

  async function submitDates(event) {
    event.preventDefault();
    showError("request-error", "");
    const from = $("request-from").value;
    const to = $("request-to").value || from;
    if (!from) return;
    if (to < from) {
      showError("request-error", "The first date must not be after the last.");
      return;
    }
    const days = daysBetween(from, to);
    if (days.length > MAX_REQUEST_DATES) {
      showError("request-error", `At most ${MAX_REQUEST_DATES} dates at a time.`);
      return;
    }
    const secret = token();
    if (secret) sessionStorage.setItem(TOKEN_KEY, secret);
    else sessionStorage.removeItem(TOKEN_KEY);
    const headers = secret ? { Authorization: `Bearer ${secret}` } : {};
    const force = $("request-force").checked;
    const button = event.submitter || $("request-form").querySelector("button");
    button.disabled = true;
    try {
      for (const day of days) {
        const { status, body } = await api(`process-request?${query({ date: day, force: force ? "true" : "" })}`, {
          method: "POST", headers,
        });
        const note = status === 200 ? `existing job (${body.status})` : "";
        state.jobs.set(body.job_id, {
          job_id: body.job_id, date: body.date, status: body.status, cities_total: null,
          cities_done: 0, records: 0, bytes: 0, retries: 0, error: null, note,
        });
        renderProgress();
      }
    } catch (error) {
      if (error.status === 401) {
        $("token-box").open = true;
        showError("request-error", "This API needs a token: enter it under “API token”, then request again.");
        $("token").focus();
      } else {
        showError("request-error", `The request failed: ${error.message}`);
      }
    } finally {
      button.disabled = false;
    }
    refreshJobs();
    startPolling();
  }

  function startPolling() {
    if (state.polling === null) state.polling = setTimeout(poll, POLL_MS / 2);
  }

  async function poll() {
    const active = [...state.jobs.values()].filter((j) => !FINISHED.has(j.status));
    let finished = false;
    for (const job of active) {
      try {
        const { body } = await api(`jobs/${encodeURIComponent(job.job_id)}`);
        state.jobs.set(job.job_id, { ...body, note: job.note });
        if (FINISHED.has(body.status)) finished = true;
      } catch (error) {
        state.jobs.set(job.job_id, { ...job, note: `progress unavailable: ${error.message}` });
      }
    }
    renderProgress();
    if (finished) onJobsFinished();
    const stillActive = [...state.jobs.values()].some((j) => !FINISHED.has(j.status));
    state.polling = stillActive ? setTimeout(poll, POLL_MS) : null;
  }

  async function onJobsFinished() {
    refreshJobs();
    try {
      if (!state.userRange) await loadDefaultRange();
      await loadStats();
    } catch (error) {
      showError("stats-error", `Could not load the statistics: ${error.message}`);
    }
  }

  // --- recent jobs ---------------------------------------------------------------------

  function jobsRow(job) {
    return el("tr", { "data-job-id": job.job_id, "data-status": job.status },
      el("td", { text: job.created_at.replace("T", " ").slice(0, 19) }),
      el("td", { text: job.date }),
      el("td", { class: "job-id", title: job.job_id, text: job.job_id.slice(0, 8) }),
      el("td", {}, el("span", { class: `status status-${job.status}`, text: job.status })),
      el("td", { text: `${job.cities_done} of ${job.cities_total ?? "?"}` }),
      el("td", { class: "num", text: fmtInt(job.records) }),
      el("td", { class: "error-cell", text: job.error || "" }));
  }

  async function refreshJobs(append = false) {
    showError("jobs-error", "");
    const params = { status: $("jobs-status").value, limit: JOBS_PAGE, cursor: append ? state.jobsCursor : null };
    try {
      const { body } = await api(`jobs?${query(params)}`);
      const rows = body.jobs.map(jobsRow);
      const tbody = $("jobs-table").tBodies[0];
      if (append) tbody.append(...rows);
      else tbody.replaceChildren(...rows);
      state.jobsCursor = body.next_cursor;
      $("jobs-more").hidden = !body.next_cursor;
      $("jobs-empty").hidden = tbody.rows.length > 0;
    } catch (error) {
      showError("jobs-error", `Could not list the jobs: ${error.message}`);
    }
  }

  // --- start ---------------------------------------------------------------------------

  async function start() {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    $("range-form").addEventListener("submit", onRangeSubmit);
    $("range-country").addEventListener("change", () => $("range-form").requestSubmit());
    $("request-form").addEventListener("submit", submitDates);
    $("jobs-status").addEventListener("change", () => refreshJobs());
    $("jobs-refresh").addEventListener("click", () => refreshJobs());
    $("jobs-more").addEventListener("click", () => refreshJobs(true));
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(resizeCharts, 100);
    });
    refreshJobs();
    try {
      await loadDefaultRange();
      await loadStats();
    } catch (error) {
      showError("stats-error", `Could not load the statistics: ${error.message}`);
    }
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
