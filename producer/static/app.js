/* bus-stats: the analyst's page. Plain JavaScript, no build step; charts by uPlot.
 *
 * It reads the API only, always through `api()` (which sends the token, if any): GET
 * /dates (each date's state), GET /country-stats (rows and missing dates; the CSV
 * download is the same query with format=csv), POST /process-request (one per date of
 * the form), GET /jobs/<id> (progress, polled while a job is at work), GET /jobs (recent
 * jobs). Text from the API is only ever put in the page as text, never as HTML.
 *
 * One source of truth for jobs: every job state the page receives (from /dates, /jobs,
 * /jobs/<id> or a POST) goes into `jobs`, the freshest kept; the date strip, the lists of
 * dates, the progress table and Recent jobs are all drawn from it, so they agree.
 *
 * The view (range and country) lives in the URL: ?from=YYYY-MM-DD&to=YYYY-MM-DD&country=.
 * One format everywhere: dates YYYY-MM-DD, times UTC, numbers with thousands separators,
 * delays as "57 min 18 s" (seconds in the cell's tooltip and in the CSV).
 */
"use strict";

(() => {
  const DAY_SECONDS = 86400;
  const POLL_MS = 1000;
  const LIST_POLL_EVERY = 5;
  const MAX_REQUEST_DATES = 31;
  const DEFAULT_DAYS = 30;
  const JOBS_PAGE = 20;
  const TOKEN_KEY = "bus-stats.token";
  const FINISHED = new Set(["succeeded", "failed"]);
  const AT_WORK = new Set(["queued", "running"]);
  // Distinct hues, none red (red means "failed" on this page).
  const PALETTE = ["#1f5fbf", "#e07b00", "#2e8b57", "#8e44ad", "#16a0a8", "#7f6000",
    "#d6338a", "#34495e", "#6b8e23", "#a0522d"];
  const AXIS_FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif';
  const ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;

  const $ = (id) => document.getElementById(id);
  const state = {
    from: null, to: null, country: "", userRange: false,
    rows: [], missing: [], dates: [], charts: [], failed: false,
    polling: null, pollRound: 0, jobsCursor: null, loadSeq: 0, readRefused: false,
    jobList: [], // job ids of Recent jobs, in the order listed
    requested: [], // job ids requested from this page (the progress table)
    notes: new Map(), // job id -> a note of this page ("existing job", "progress unavailable")
    newestJob: new Map(), // date -> id of the date's newest job, as last told
  };
  /** job id -> the freshest state of the job the page has seen (the one source of truth). */
  const jobs = new Map();

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

  // --- formats: one for numbers, dates, times and delays --------------------------------

  const formats = new Map();
  /** A number with thousands separators and exactly `digits` decimals: 1,234.5 */
  function fmtNumber(n, digits = 0) {
    if (n === null || n === undefined || Number.isNaN(n)) return "";
    if (!formats.has(digits)) {
      formats.set(digits, new Intl.NumberFormat("en-US", {
        minimumFractionDigits: digits, maximumFractionDigits: digits,
      }));
    }
    return formats.get(digits).format(n);
  }
  const fmtInt = (n) => fmtNumber(n, 0);

  /** Seconds as "57 min 18 s" (rounded to the second). */
  function fmtDelay(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const sign = seconds < 0 ? "−" : "";
    const whole = Math.round(Math.abs(seconds));
    const minutes = Math.floor(whole / 60);
    const rest = whole % 60;
    return minutes ? `${sign}${fmtInt(minutes)} min ${rest} s` : `${sign}${rest} s`;
  }
  const fmtSeconds = (seconds) => `${fmtNumber(seconds, 2)} s`;

  function fmtBytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let size = n;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
    return unit === 0 ? `${fmtInt(size)} B` : `${fmtNumber(size, 1)} ${units[unit]}`;
  }

  /** An API timestamp as "YYYY-MM-DD HH:MM:SS UTC". */
  function fmtTime(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso || "";
    return `${new Date(t).toISOString().slice(0, 19).replace("T", " ")} UTC`;
  }

  /** Decimals that show every tick of increment `incr` exactly (0.25 -> 2). */
  function decimalsOf(incr) {
    const text = String(Number(Number(incr).toFixed(6)));
    return text.includes(".") ? text.split(".")[1].length : 0;
  }

  const isoDay = (seconds) => new Date(seconds * 1000).toISOString().slice(0, 10);
  const daySeconds = (iso) => Date.parse(`${iso}T00:00:00Z`) / 1000;
  /** A real calendar date written YYYY-MM-DD (not 2024-02-30). */
  const isIsoDate = (text) => ISO_DATE.test(text) && !Number.isNaN(daySeconds(text))
    && isoDay(daySeconds(text)) === text;

  function daysBetween(from, to) {
    const days = [];
    for (let t = daySeconds(from); t <= daySeconds(to); t += DAY_SECONDS) days.push(isoDay(t));
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

  /** Why `from`..`to` (as typed) is not a range, or "" when it is one. */
  function rangeProblem(from, to, names = ["From", "To"]) {
    if (!isIsoDate(from)) return `'${names[0]}' must be a date written YYYY-MM-DD, got '${from}'.`;
    if (!isIsoDate(to)) return `'${names[1]}' must be a date written YYYY-MM-DD, got '${to}'.`;
    if (to < from) return `'${names[0]}' (${from}) must not be after '${names[1]}' (${to}).`;
    return "";
  }

  // --- the API: every request goes through api(), which sends the token ----------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function token() {
    return ($("token").value || "").trim();
  }

  /** The token of the form, as the header every API request carries (none if empty). */
  function authHeaders() {
    const secret = token();
    return secret ? { Authorization: `Bearer ${secret}` } : {};
  }

  function openTokenBox() {
    $("token-box").open = true;
    $("token").focus();
  }

  /** Fetch `path` from the API with the token; JSON answer (or the Response with raw). */
  async function api(path, options = {}) {
    const { raw = false, ...init } = options;
    const response = await fetch(path, {
      ...init,
      headers: { Accept: "application/json", ...authHeaders(), ...(init.headers || {}) },
    });
    if (response.status === 401) {
      if (!init.method || init.method === "GET") state.readRefused = true;
      openTokenBox();
    }
    if (raw && response.ok) return { status: response.status, response };
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

  // --- jobs: the one source of truth -----------------------------------------------------

  /** Keep the freshest of what is known of a job; a finished job never goes back. */
  function learnJob(job) {
    const known = jobs.get(job.job_id);
    if (known) {
      if (FINISHED.has(known.status) && !FINISHED.has(job.status)) return known;
      const before = Date.parse(known.updated_at || "");
      const after = Date.parse(job.updated_at || "");
      if (!Number.isNaN(before) && (Number.isNaN(after) || after < before)) return known;
    }
    const merged = { ...(known || {}), ...job };
    jobs.set(job.job_id, merged);
    return merged;
  }

  const citiesText = (job) => (job.cities_total === null || job.cities_total === undefined
    ? "—" : `${fmtInt(job.cities_done || 0)} of ${fmtInt(job.cities_total)}`);

  /** A job in words: "running, 21 of 30 cities", "queued, next attempt at ...". */
  function jobText(job) {
    if (job.status === "running" || job.status === "succeeded") {
      return job.cities_total === null || job.cities_total === undefined
        ? job.status : `${job.status}, ${citiesText(job)} cities`;
    }
    if (job.status === "queued") {
      return job.next_attempt_at ? `queued, next attempt at ${fmtTime(job.next_attempt_at)}` : "queued";
    }
    return job.error ? `failed: ${job.error}` : "failed";
  }

  /** What the last column says: the reason it failed, or when it is tried again. */
  function jobNote(job) {
    if (job.status === "failed") return job.error || "failed (no reason given)";
    if (job.status === "queued" && job.next_attempt_at) {
      return `next attempt at ${fmtTime(job.next_attempt_at)}`;
    }
    return state.notes.get(job.job_id) || "";
  }

  const jobAttrs = (job) => ({
    "data-job-id": job.job_id, "data-status": job.status,
    "data-done": job.cities_done ?? 0, "data-total": job.cities_total ?? "",
  });

  /** A date of /dates as the page shows it, its newest job taken from `jobs`. */
  function dateView(d) {
    const jobId = state.newestJob.get(d.date) || (d.job && d.job.job_id) || null;
    const job = jobId ? (jobs.get(jobId) || d.job) : null;
    let view = "missing";
    if (job && AT_WORK.has(job.status)) view = job.status;
    else if (d.committed) view = "committed";
    else if (job && job.status === "failed") view = "failed";
    else if (job && job.status === "succeeded") view = "committed"; // its data comes with the reload
    // Partial: the committed data came from a job run while its day was still running.
    const committedBy = d.committed ? d.committed.job_id : job && job.job_id;
    const partial = view === "committed"
      ? Boolean(d.partial || (d.committed && d.committed.partial)
        || (job && job.job_id === committedBy && job.partial))
      : Boolean(job && job.partial);
    return { date: d.date, state: view, job, committed: d.committed, partial };
  }

  function learnDates(dates) {
    for (const d of dates) {
      if (!d.job) continue;
      learnJob(d.job);
      state.newestJob.set(d.date, d.job.job_id);
    }
  }

  /** Jobs still at work that some view shows: polled until they end. Those requested
   * here or in the range every time; those only in Recent jobs (which may list many old
   * queued jobs) every LIST_POLL_EVERY-th time. */
  function activeJobIds(everything = true) {
    const ids = new Set(state.requested);
    for (const d of state.dates) {
      const id = state.newestJob.get(d.date);
      if (id) ids.add(id);
    }
    if (everything) for (const id of state.jobList) ids.add(id);
    return [...ids].filter((id) => jobs.has(id) && !FINISHED.has(jobs.get(id).status));
  }

  function renderJobViews() {
    renderStrip();
    renderGaps();
    renderProgress();
    renderRecentJobs();
    schedulePoll();
  }

  // --- statistics: range, dates at a glance, charts, table -----------------------------

  /** The dates with data, at most 30 days, ending at the newest date with data. */
  async function loadDefaultRange() {
    const { body } = await api("dates");
    learnDates(body.dates);
    const withData = body.dates.filter((d) => d.committed).map((d) => d.date);
    state.to = withData.length ? withData[withData.length - 1] : body.to;
    state.from = withData.length ? withData[0] : body.from;
    $("range-from").value = state.from;
    $("range-to").value = state.to;
    $("range-note").textContent = withData.length
      ? `The dates with data, at most ${DEFAULT_DAYS} days ending at the newest (${state.to}).`
      : `No date has data yet: the last ${DEFAULT_DAYS} days are shown.`;
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
      learnDates(dates.body.dates);
      state.failed = false;
      state.dates = dates.body.dates;
      state.rows = stats.body.stats;
      state.missing = stats.body.missing_dates;
      renderAll();
    } catch (error) {
      if (seq !== state.loadSeq) return;
      showStatsError(error);
    }
  }

  /** An error replaces the results: nothing of an earlier query stays under it. */
  function clearResults() {
    state.failed = true;
    state.rows = [];
    state.missing = [];
    state.dates = [];
    renderAll();
  }

  function showStatsError(error) {
    clearResults();
    if (error.status === 401) {
      openTokenBox();
      showError("stats-error", "This API needs a token to read: enter it under “API token”.");
    } else {
      showError("stats-error", `Could not load the statistics: ${error.message}`);
    }
  }

  /** With a token, the CSV is fetched with it (a plain link cannot send the header). */
  async function downloadCsv(event) {
    if (!token()) return; // the link's own href and download name do it
    event.preventDefault();
    const link = event.currentTarget;
    try {
      const { response } = await api(link.getAttribute("href"), {
        raw: true, headers: { Accept: "text/csv" },
      });
      const url = URL.createObjectURL(await response.blob());
      const save = el("a", { href: url, download: link.getAttribute("download") });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (error) {
      showStatsError(error);
    }
  }

  function renderAll() {
    renderCountries();
    renderStrip();
    renderGaps();
    renderCharts();
    renderTable();
    renderCsvLink();
    document.body.dataset.statsFrom = state.from || "";
    document.body.dataset.statsTo = state.to || "";
    document.body.dataset.statsRows = String(state.rows.length);
    document.body.dataset.statsFailed = String(state.failed);
    schedulePoll();
  }

  function renderCountries() {
    const select = $("range-country");
    const known = new Set([...select.options].map((o) => o.value));
    const names = new Set(state.rows.map((r) => r.country));
    if (state.country) names.add(state.country);
    for (const country of [...names].sort()) {
      if (!known.has(country)) select.append(el("option", { value: country, text: country }));
    }
    select.value = state.country;
  }

  function describeDate(v) {
    const parts = [v.date];
    if (v.committed) {
      const c = v.committed;
      parts.push(`data from job ${c.job_id} (${fmtTime(c.committed_at)}): ${fmtInt(c.records)} records, `
        + `${fmtBytes(c.bytes)} of lines stored in ${fmtBytes(c.stored_bytes ?? c.bytes)}`
        + ` (${(c.ratio ?? 1).toFixed(1)}x, ${(c.codecs ?? ["none"]).join("+")}), `
        + `${fmtInt(c.cities)} cities${v.partial ? ", partial" : ""}`);
    }
    if (v.job && v.job.status !== "succeeded") parts.push(`newest job ${v.job.job_id}: ${jobText(v.job)}`);
    if (v.state === "missing") parts.push("no data");
    return parts.join(" — ");
  }

  function renderStrip() {
    const strip = $("date-strip");
    strip.replaceChildren(...state.dates.map(dateView).map((v) => {
      const label = describeDate(v);
      const job = v.job && AT_WORK.has(v.state) ? v.job : null;
      const cell = el("button", {
        type: "button", class: `${v.state}${v.partial ? " partial" : ""}`, title: label,
        "aria-label": label, "data-date": v.date, "data-state": v.state,
        "data-partial": v.partial ? "true" : null,
        ...(job ? jobAttrs(job) : {}),
      });
      cell.addEventListener("click", () => {
        $("request-from").value = v.date;
        $("request-to").value = "";
        $("request-force").checked = v.state === "committed";
        $("request-from").focus();
      });
      return el("li", {}, cell);
    }));
  }

  /** Missing (no data, no job at work), being fetched, failed: each date in one list. */
  function renderGaps() {
    const box = $("gaps");
    box.replaceChildren();
    const views = state.dates.map(dateView);
    const missing = views.filter((v) => v.state === "missing").map((v) => v.date);
    const atWork = views.filter((v) => AT_WORK.has(v.state));
    const failed = views.filter((v) => v.state === "failed");
    const partial = views.filter((v) => v.state === "committed" && v.partial).map((v) => v.date);
    if (missing.length) {
      box.append(el("h4", { text: `Missing dates (${missing.length}, no data):` }));
      box.append(el("ul", { class: "gaps-list", id: "missing-list" },
        ...asRanges(missing).map((r) => el("li", { text: r }))));
    }
    if (atWork.length) {
      box.append(el("h4", { text: `Being fetched (${atWork.length}):` }));
      box.append(el("ul", { class: "gaps-list", id: "running-list" },
        ...atWork.map((v) => el("li", { "data-date": v.date, ...jobAttrs(v.job) },
          `${v.date}: ${jobText(v.job)}`))));
    }
    if (failed.length) {
      box.append(el("h4", { text: `Failed (${failed.length}):` }));
      box.append(el("ul", { class: "gaps-list", id: "failed-list" },
        ...failed.map((v) => el("li", { "data-date": v.date, ...jobAttrs(v.job) },
          `${v.date}: ${v.job.error || "failed (no reason given)"}`))));
    }
    if (partial.length) {
      box.append(el("h4", { text: `Partial (${partial.length}, the day was still running):` }));
      box.append(el("ul", { class: "gaps-list", id: "partial-list" },
        ...asRanges(partial).map((r) => el("li", { text: r }))));
    }
  }

  // --- charts ----------------------------------------------------------------------------

  const measure = document.createElement("canvas").getContext("2d");
  function textWidth(text) {
    measure.font = AXIS_FONT;
    return measure.measureText(text).width;
  }

  /** Per metric: what is drawn (from a row), the axis labels and the hover value. */
  const METRICS = [
    {
      id: "chart-passengers", field: "passengers", fromZero: true,
      toChart: (v) => v, hover: (v) => fmtInt(v),
    },
    {
      id: "chart-buses", field: "buses_started", fromZero: true,
      toChart: (v) => v, hover: (v) => fmtInt(v),
    },
    {
      // In minutes, scaled to the data: delays sit around an hour, so a 0-based axis
      // would flatten every country into one line.
      id: "chart-delay", field: "average_delay_seconds", fromZero: false,
      toChart: (seconds) => seconds / 60, hover: (minutes) => fmtDelay(minutes * 60),
    },
  ];

  /** Columns for uPlot: x (UTC midnights) and, per country, the metric or null (a gap). */
  function chartData(metric, countries, days) {
    const index = new Map(state.rows.map((r) => [`${r.date}|${r.country}`, r]));
    const xs = days.map(daySeconds);
    const series = countries.map((c) => days.map((d) => {
      const row = index.get(`${d}|${c}`);
      return row ? metric.toChart(row[metric.field]) : null;
    }));
    const accidents = countries.map((c) => days.map((d) => {
      const row = index.get(`${d}|${c}`);
      return Boolean(row && row.accident);
    }));
    return { data: [xs, ...series], accidents };
  }

  function yRange(metric) {
    return (u, min, max) => {
      if (min === null || max === null) return [0, 1];
      if (metric.fromZero) return [0, max > 0 ? max * 1.08 : 1];
      const pad = Math.max((max - min) * 0.15, 0.5);
      return [Math.max(0, min - pad), max + pad];
    };
  }

  /** Width of a y-axis: its tick, gap and longest label, so no label is ever cut. */
  function yAxisSize(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1 && axis._size) return axis._size;
    const widest = Math.max(0, ...(values || []).map((v) => textWidth(String(v))));
    return Math.ceil(axis.ticks.size + axis.gap + widest + 6);
  }

  /** x ticks at midnights, spaced so that YYYY-MM-DD labels never overlap; newest labelled. */
  function daySplits(u, axisIdx, min, max) {
    const first = Math.ceil(min / DAY_SECONDS) * DAY_SECONDS;
    const last = Math.floor(max / DAY_SECONDS) * DAY_SECONDS;
    const count = Math.round((last - first) / DAY_SECONDS) + 1;
    const width = u.bbox.width ? u.bbox.width / devicePixelRatio : u.width - 80;
    const step = Math.max(1, Math.ceil((count * (textWidth("0000-00-00") + 14)) / Math.max(width, 1)));
    const ticks = [];
    for (let t = last; t >= first; t -= step * DAY_SECONDS) ticks.unshift(t);
    return ticks;
  }

  function shadeMissing(u) {
    const { ctx } = u;
    const { top, height } = u.bbox;
    ctx.save();
    ctx.fillStyle = "rgba(120, 130, 145, 0.16)";
    for (const day of state.missing) {
      const t = daySeconds(day);
      const x0 = u.valToPos(t - DAY_SECONDS / 2, "x", true);
      const x1 = u.valToPos(t + DAY_SECONDS / 2, "x", true);
      ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
    }
    ctx.restore();
  }

  /** ▲ on each accident day, in the colour of its country's line. */
  function markAccidents(u, accidents, colours, figure) {
    const { ctx } = u;
    const size = 7 * devicePixelRatio;
    const marks = [];
    ctx.save();
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = devicePixelRatio;
    accidents.forEach((flags, s) => {
      if (!u.series[s + 1].show) return;
      ctx.fillStyle = colours[s];
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
        marks.push({ country: u.series[s + 1].label, colour: colours[s], x, y, size });
      });
    });
    ctx.restore();
    // Where each mark is (canvas pixels) and its colour: for the browser test.
    figure.dataset.marks = JSON.stringify(marks);
    figure.dataset.yMin = String(u.scales.y.min);
    figure.dataset.yMax = String(u.scales.y.max);
  }

  /** An axis's labels, also kept on the figure (data-x-labels, data-y-labels) for the test. */
  function labelled(figure, key, labels) {
    figure.dataset[key] = JSON.stringify(labels);
    return labels;
  }

  function chartSize(figure) {
    const width = Math.max(260, Math.floor(figure.clientWidth - 12));
    return { width, height: width < 500 ? 200 : 240 };
  }

  function renderCharts() {
    for (const chart of state.charts) chart.destroy();
    state.charts = [];
    const hasRows = state.rows.length > 0;
    $("no-data").hidden = hasRows || state.failed;
    $("charts").hidden = !hasRows;
    $("charts-note").hidden = !hasRows;
    document.body.dataset.charts = "0";
    for (const metric of METRICS) {
      for (const old of $(metric.id).querySelectorAll(".uplot")) old.remove();
    }
    if (!hasRows || typeof uPlot === "undefined") return;
    const days = daysBetween(state.from, state.to);
    const countries = [...new Set(state.rows.map((r) => r.country))].sort();
    const colours = countries.map((_, i) => PALETTE[i % PALETTE.length]);
    const showPoints = days.length <= 62;
    const halfLabel = Math.ceil(textWidth("0000-00-00") / 2) + 4;
    for (const metric of METRICS) {
      const figure = $(metric.id);
      const { data, accidents } = chartData(metric, countries, days);
      const options = {
        ...chartSize(figure),
        // Room on the right for half the newest date's label, above for the top label.
        padding: [12, halfLabel, null, null],
        scales: {
          x: { time: false, range: (u, min, max) => [min - DAY_SECONDS / 2, max + DAY_SECONDS / 2] },
          y: { range: yRange(metric) },
        },
        series: [
          { label: "date", value: (u, v) => (v === null || v === undefined ? "" : isoDay(v)) },
          ...countries.map((country, i) => ({
            label: country,
            stroke: colours[i],
            width: 2,
            spanGaps: false,
            points: { show: showPoints, size: 5 },
            value: (u, v) => (v === null || v === undefined ? "—" : metric.hover(v)),
          })),
        ],
        axes: [
          {
            font: AXIS_FONT,
            splits: daySplits,
            values: (u, ticks) => labelled(figure, "xLabels", ticks.map(isoDay)),
          },
          {
            font: AXIS_FONT,
            size: yAxisSize,
            values: (u, ticks, axisIdx, space, incr) => {
              const digits = decimalsOf(incr);
              return labelled(figure, "yLabels", ticks.map((t) => fmtNumber(t, digits)));
            },
          },
        ],
        legend: { live: true },
        hooks: {
          drawClear: [shadeMissing],
          draw: [(u) => markAccidents(u, accidents, colours, figure)],
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
    const partial = new Set(state.dates.map(dateView).filter((v) => v.partial).map((v) => v.date));
    const body = $("stats-table").tBodies[0];
    body.replaceChildren(...state.rows.map((r) => el("tr", { "data-date": r.date, "data-country": r.country },
      el("td", {}, r.date, partial.has(r.date) ? el("span", { class: "badge", text: " partial" }) : null),
      el("td", { text: r.country }),
      el("td", { class: "num", "data-value": r.buses_started, text: fmtInt(r.buses_started) }),
      el("td", { class: "num", "data-value": r.passengers, text: fmtInt(r.passengers) }),
      el("td", { class: r.accident ? "accident-yes" : "", "data-value": r.accident, text: r.accident ? "yes" : "no" }),
      el("td", {
        class: "num", "data-value": r.average_delay_seconds,
        title: fmtSeconds(r.average_delay_seconds), text: fmtDelay(r.average_delay_seconds),
      }))));
  }

  function renderCsvLink() {
    const link = $("csv-link");
    const params = { from: state.from, to: state.to, country: state.country, format: "csv" };
    link.href = `country-stats?${query(params)}`;
    const suffix = state.country ? `_${state.country.replace(/[^A-Za-z0-9_-]+/g, "-")}` : "";
    link.setAttribute("download", `bus-stats_${state.from}_${state.to}${suffix}.csv`);
    link.hidden = state.failed;
  }

  // --- the view in the URL: ?from=&to=&country= ------------------------------------------

  function writeUrl() {
    const params = query(state.userRange
      ? { from: state.from, to: state.to, country: state.country }
      : { country: state.country });
    const url = `${location.pathname}${params ? `?${params}` : ""}`;
    if (url !== `${location.pathname}${location.search}`) history.pushState(null, "", url);
  }

  /** Show the view the URL names (or the default one); a bad URL is an input error. */
  async function applyUrl() {
    const params = new URLSearchParams(location.search);
    const from = params.get("from") || "";
    const to = params.get("to") || "";
    state.country = params.get("country") || "";
    renderCountries();
    if (!from && !to) {
      state.userRange = false;
      await loadDefaultRange();
      await loadStats();
      return;
    }
    $("range-note").textContent = "";
    $("range-from").value = from;
    $("range-to").value = to;
    const problem = rangeProblem(from, to);
    if (problem) {
      clearResults();
      showError("stats-error", problem);
      return;
    }
    state.userRange = true;
    state.from = from;
    state.to = to;
    await loadStats();
  }

  function onRangeSubmit(event) {
    event.preventDefault();
    const from = $("range-from").value.trim();
    const to = $("range-to").value.trim() || from;
    const problem = rangeProblem(from, to);
    if (problem) {
      state.loadSeq += 1; // an answer still on its way must not bring old results back
      clearResults();
      showError("stats-error", problem);
      return;
    }
    state.from = from;
    state.to = to;
    state.country = $("range-country").value;
    state.userRange = true;
    $("range-note").textContent = "";
    writeUrl();
    loadStats();
  }

  // --- requesting dates and following their jobs ---------------------------------------

  function progressRow(job) {
    const total = job.cities_total;
    const done = job.cities_done || 0;
    const bar = el("progress", { max: total || 1, value: total ? done : 0 });
    if (!total && !FINISHED.has(job.status)) bar.removeAttribute("value"); // indeterminate
    return el("tr", jobAttrs(job),
      el("td", { text: job.date }, job.partial ? el("span", { class: "badge", text: " partial" }) : null),
      el("td", { class: "job-id", title: job.job_id, text: job.job_id.slice(0, 8) }),
      el("td", {}, el("span", { class: `status status-${job.status}`, text: job.status })),
      el("td", { class: "cities" }, bar, citiesText(job)),
      el("td", { class: "num", text: fmtInt(job.records) }),
      el("td", { class: "num", text: fmtBytes(job.bytes) }),
      el("td", { class: "num", text: fmtInt(job.retries) }),
      el("td", { class: "error-cell", text: jobNote(job) }));
  }

  function renderProgress() {
    const shown = state.requested.map((id) => jobs.get(id)).filter(Boolean)
      .sort((a, b) => (a.date < b.date ? -1 : 1));
    $("progress-table").tBodies[0].replaceChildren(...shown.map(progressRow));
    $("progress-wrap").hidden = shown.length === 0;
  }

  async function submitDates(event) {
    event.preventDefault();
    showError("request-error", "");
    const from = $("request-from").value.trim();
    const to = $("request-to").value.trim() || from;
    const problem = rangeProblem(from, to, ["Date", "to"]);
    if (problem) {
      showError("request-error", problem);
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
    const force = $("request-force").checked;
    const button = event.submitter || $("request-form").querySelector("button");
    button.disabled = true;
    try {
      for (const day of days) {
        const { status, body } = await api(`process-request?${query({ date: day, force: force ? "true" : "" })}`, {
          method: "POST",
        });
        if (status === 200) state.notes.set(body.job_id, `existing job (${body.status} when asked)`);
        if (!jobs.has(body.job_id)) {
          learnJob({
            job_id: body.job_id, date: body.date, status: body.status, cities_total: null,
            cities_done: 0, records: 0, bytes: 0, retries: 0, error: null,
          });
        }
        state.newestJob.set(body.date, body.job_id);
        if (!state.requested.includes(body.job_id)) state.requested.push(body.job_id);
        renderJobViews();
      }
    } catch (error) {
      if (error.status === 401) {
        showError("request-error", "This API needs a token: enter it under “API token”, then request again.");
      } else {
        showError("request-error", `The request failed: ${error.message}`);
      }
    } finally {
      button.disabled = false;
    }
    refreshJobs();
    schedulePoll(POLL_MS / 2);
  }

  function schedulePoll(delay = POLL_MS) {
    if (state.polling === null && activeJobIds().length) state.polling = setTimeout(poll, delay);
  }

  async function poll() {
    let ended = false;
    state.pollRound += 1;
    for (const id of activeJobIds(state.pollRound % LIST_POLL_EVERY === 0)) {
      try {
        const { body } = await api(`jobs/${encodeURIComponent(id)}`);
        learnJob(body);
        if (FINISHED.has(body.status)) ended = true;
      } catch (error) {
        state.notes.set(id, `progress unavailable: ${error.message}`);
      }
    }
    state.polling = null;
    renderJobViews();
    if (ended) onJobsFinished();
  }

  async function onJobsFinished() {
    refreshJobs();
    try {
      if (!state.userRange) await loadDefaultRange();
      await loadStats();
    } catch (error) {
      showStatsError(error);
    }
  }

  // --- recent jobs ---------------------------------------------------------------------

  function jobsRow(job) {
    return el("tr", jobAttrs(job),
      el("td", { text: fmtTime(job.created_at).replace(" UTC", "") }),
      el("td", { text: job.date }, job.partial ? el("span", { class: "badge", text: " partial" }) : null),
      el("td", { class: "job-id", title: job.job_id, text: job.job_id.slice(0, 8) }),
      el("td", {}, el("span", { class: `status status-${job.status}`, text: job.status })),
      el("td", { class: "cities" }, citiesText(job)),
      el("td", { class: "num", text: fmtInt(job.records) }),
      el("td", { class: "error-cell", text: jobNote(job) }));
  }

  function renderRecentJobs() {
    const tbody = $("jobs-table").tBodies[0];
    tbody.replaceChildren(...state.jobList.map((id) => jobs.get(id)).filter(Boolean).map(jobsRow));
    $("jobs-empty").hidden = tbody.rows.length > 0;
  }

  async function refreshJobs(append = false) {
    showError("jobs-error", "");
    const params = { status: $("jobs-status").value, limit: JOBS_PAGE, cursor: append ? state.jobsCursor : null };
    try {
      const { body } = await api(`jobs?${query(params)}`);
      const ids = body.jobs.map((job) => learnJob(job).job_id);
      state.jobList = append ? [...state.jobList, ...ids.filter((id) => !state.jobList.includes(id))] : ids;
      state.jobsCursor = body.next_cursor;
      $("jobs-more").hidden = !body.next_cursor;
      renderJobViews();
    } catch (error) {
      showError("jobs-error", error.status === 401
        ? "This API needs a token to read: enter it under “API token”."
        : `Could not list the jobs: ${error.message}`);
    }
  }

  // --- start ---------------------------------------------------------------------------

  async function loadEverything() {
    refreshJobs();
    try {
      await applyUrl();
    } catch (error) {
      showStatsError(error);
    }
  }

  /** Keep the token for this tab; when reads were refused for want of it, read again. */
  function onTokenChange() {
    const secret = token();
    if (secret) sessionStorage.setItem(TOKEN_KEY, secret);
    else sessionStorage.removeItem(TOKEN_KEY);
    if (state.readRefused) {
      state.readRefused = false;
      loadEverything();
    }
  }

  async function start() {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    $("range-form").addEventListener("submit", onRangeSubmit);
    $("range-country").addEventListener("change", () => $("range-form").requestSubmit());
    $("request-form").addEventListener("submit", submitDates);
    $("jobs-status").addEventListener("change", () => refreshJobs());
    $("jobs-refresh").addEventListener("click", () => refreshJobs());
    $("jobs-more").addEventListener("click", () => refreshJobs(true));
    $("token").addEventListener("change", onTokenChange);
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      onTokenChange();
    });
    $("csv-link").addEventListener("click", downloadCsv);
    window.addEventListener("popstate", () => {
      applyUrl().catch(showStatsError);
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(resizeCharts, 100);
    });
    await loadEverything();
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
