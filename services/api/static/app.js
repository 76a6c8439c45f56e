/* Werkstroom dashboard: plain JavaScript over the project API (no framework, no build).
   Everything user-supplied (ids, paths, titles, traits) reaches the page through textContent,
   never innerHTML. The read key lives in sessionStorage: it is gone when the tab closes. */
(() => {
  "use strict";

  const KEY_STORE = "werkstroom.readKey";
  // = STALLED_AFTER in services/aggregator/sink.py (the freshness contract, explained there): the
  // aggregator writes its status every 2 s while alive, idle or not, and we re-read it every 5 s.
  const STALE_AFTER_S = 10;
  const FRESHNESS_EVERY_MS = 5000;
  const METRICS_EVERY_MS = 30000;
  const ACTIVITY_EVERY_MS = 300000;

  const state = {
    key: null,
    project: null,
    freshness: null, // {asOf, skewMs, lastWrite, lag, bots}
    users: { cursor: null, seq: 0 },
    funnels: [],
    metrics: null,
    live: { controller: null, rows: [], receivedAt: 0, query: "" }, // query: the filters the stream has
    detail: { personId: null, returnFocus: null },
    // An empty project waits for its first event (null: not known yet); once one arrived, it
    // never waits again in this tab.
    waiting: null,
    timers: [],
    funnelRetry: null, // the next look at a funnel still being back-filled
  };

  // --- small helpers ---------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "style") Object.assign(node.style, v); // CSSOM: allowed by the CSP, unlike style=""
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  const fmtNum = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
  // "1 page view", "2 page views": every count shown with its noun goes through here.
  const plural = (n, one, many = `${one}s`) => `${fmtNum(n)} ${n === 1 ? one : many}`;

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
    const hrs = Math.floor(m / 60);
    if (hrs < 48) return `${hrs} h ${String(m % 60).padStart(2, "0")} min`;
    return `${Math.floor(hrs / 24)} d ${hrs % 24} h`;
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function fmtAgo(iso) {
    if (!iso) return "never";
    const s = (serverNow() - Date.parse(iso)) / 1000;
    if (s < 90) return `${Math.max(0, Math.round(s))} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  // The server's clock, as far as we know it (times on screen are computed against it).
  const serverNow = () => Date.now() + (state.freshness ? state.freshness.skewMs : 0);

  function toast(message) {
    const t = $("toast");
    t.textContent = message;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.hidden = true), 6000);
  }

  function errorText(detail, fallback) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((d) => `${(d.loc || []).filter((p) => p !== "body" && p !== "query" && p !== "header").join(".")}: ${d.msg}`)
        .join("; ");
    }
    return fallback;
  }

  // --- the API ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(errorText(detail, `HTTP ${status}`));
      this.status = status;
    }
  }

  const projectPath = (path) => `/api/projects/${encodeURIComponent(state.project.project_id)}/${path}`;

  async function request(path, options = {}) {
    const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (response.status === 401) {
      logout("The read key was refused; log in again.");
      throw new ApiError(401, "unauthorized");
    }
    return response;
  }

  async function api(path, options = {}) {
    const response = await request(path, options);
    if (response.status === 204) return null;
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body && body.detail);
    if (body && body.as_of) noteFreshness(body);
    return body;
  }

  // --- freshness -------------------------------------------------------------------------------------
  function noteFreshness(body) {
    const pipeline = body.pipeline || {};
    state.freshness = {
      asOf: body.as_of,
      skewMs: Date.parse(body.as_of) - Date.now(),
      lastWrite: pipeline.last_write_at || null,
      lag: pipeline.lag ?? null,
      bots: pipeline.bots_today ?? 0,
      rezoning: pipeline.recomputing_timezone || null,
    };
    renderFreshness();
  }

  function renderFreshness() {
    const f = state.freshness;
    const line = $("freshness");
    if (!f) return;
    line.hidden = false;
    const asOf = new Date(f.asOf).toLocaleTimeString();
    // Scripts and headless browsers are filtered by User-Agent: say so, or a test looks lost.
    const bots =
      (f.bots ? ` · ${plural(f.bots, "bot event")} filtered today` : "") +
      (f.rezoning ? ` · recomputing the days in ${f.rezoning}` : "");
    if (!f.lastWrite) {
      line.textContent = `Data as of ${asOf} · the pipeline has not written yet${bots}`;
      line.classList.add("stale");
      return;
    }
    const age = Math.max(0, Math.round((serverNow() - Date.parse(f.lastWrite)) / 1000));
    const stale = age > STALE_AFTER_S;
    let text = `Data as of ${asOf} · pipeline last write ${age}s ago`;
    if (f.lag) text += ` · ${plural(f.lag, "event")} behind`;
    text += bots;
    if (stale) text += " · the pipeline looks stalled";
    line.textContent = text;
    line.classList.toggle("stale", stale);
  }

  // --- login --------------------------------------------------------------------------------------------
  async function login(key) {
    state.key = key;
    const response = await fetch("/api/me", { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" });
    if (response.status === 401 || response.status === 403) throw new ApiError(401, "That read key is not valid.");
    if (response.status === 429) {
      // too many wrong keys from this address: the answer says how long to wait
      const body = await response.json().catch(() => null);
      throw new ApiError(429, (body && body.detail) || "Too many failed attempts; try again later.");
    }
    if (!response.ok) throw new ApiError(response.status, `The server answered ${response.status}; try again.`);
    state.project = await response.json();
    sessionStorage.setItem(KEY_STORE, key);
    showDashboard();
  }

  function logout(message) {
    stopLive();
    state.timers.forEach(clearInterval);
    state.timers = [];
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    state.project = null;
    state.waiting = null;
    showWaiting(false);
    closeDetail();
    $("dashboard").hidden = true;
    $("project").hidden = true;
    $("logout").hidden = true;
    $("freshness").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("read-key").value = "";
    $("read-key").focus();
  }

  function showDashboard() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("project").hidden = false;
    $("logout").hidden = false;
    $("project-name").textContent = state.project.name;
    $("project-id").textContent = state.project.project_id;
    $("project-timezone").textContent = `days in ${state.project.timezone || "UTC"}`;
    document.title = `${state.project.name} · Werkstroom`;
    const safely = (fn) => () => fn().catch(reportError);
    safely(loadMetrics)();
    safely(loadActivity)();
    safely(loadFunnels)();
    safely(() => loadUsers(true))();
    safely(loadSnippet)();
    safely(loadBreakdowns)();
    startLive();
    state.timers.push(setInterval(safely(loadMetrics), METRICS_EVERY_MS));
    state.timers.push(setInterval(safely(loadActivity), ACTIVITY_EVERY_MS));
    state.timers.push(setInterval(safely(loadBreakdowns), BD_EVERY_MS));
    state.timers.push(setInterval(tick, 1000));
    state.timers.push(setInterval(safely(refreshFreshness), FRESHNESS_EVERY_MS));
  }

  // The live stream only pushes when who is online changes: on a quiet site the freshness line
  // would otherwise age up to the metrics' 30 s and look stalled. Any answer carries `pipeline`.
  async function refreshFreshness() {
    const f = state.freshness;
    if (f && serverNow() - Date.parse(f.asOf) < FRESHNESS_EVERY_MS) return;
    await api(`${projectPath("online")}?limit=1`);
  }

  function reportError(err) {
    if (err instanceof ApiError && err.status === 401) return; // already back at the login
    toast(err.message || String(err));
  }

  // --- metric cards ---------------------------------------------------------------------------------------
  // `earlier`: what the comparison figure is; `fromNothing`: the card's sentence when that figure
  // was 0 (no percentage of nothing); `bothNothing`: when both are 0.
  const METRICS = [
    {
      key: "total_users",
      label: "Total users",
      better: "up",
      earlier: "a week earlier",
      fromNothing: "all new this week — nobody the week before",
      bothNothing: "nobody yet",
    },
    {
      key: "online_now",
      label: "Online now",
      better: "up",
      earlier: "this time last week",
      fromNothing: "nobody was online this time last week",
      bothNothing: "nobody now or this time last week",
    },
    {
      key: "new_this_week",
      label: "New this week",
      better: "up",
      earlier: "the week before",
      fromNothing: "new this week — nobody new the week before",
      bothNothing: "nobody new this week or the week before",
    },
    { key: "churn_rate", label: "Churn rate", better: "down", percent: true, earlier: "a week earlier" },
  ];

  // The breakdowns' filters (bd.filters, the chips) narrow the cards too: each counts the persons
  // with a matching session (docs/definitions.md, "Filters"). The same query as the live stream's.
  let metricsSeq = 0;
  let metricsAsked = null; // the query of the cards shown (or on their way)
  const metricsQuery = () => new URLSearchParams([...bd.filters]).toString();

  async function loadMetrics() {
    const seq = ++metricsSeq;
    const query = metricsQuery();
    metricsAsked = query;
    const body = await api(`${projectPath("metrics")}${query ? `?${query}` : ""}`);
    if (seq !== metricsSeq) return; // a filter changed while this was on its way
    state.metrics = body.metrics;
    state.metricsQuery = query;
    // the live count is the card's figure when the stream has the same filters
    if (state.live.count !== undefined && state.live.query === query && state.metrics.online_now) state.metrics.online_now.value = state.live.count;
    const filters = Object.entries(body.filters || {});
    const note = $("metrics-filters");
    note.hidden = filters.length === 0;
    note.textContent = filters.length
      ? `Only the persons with a session matching ${filters.map(([k, v]) => filterLabel(k, v)).join(", ")} ` +
        "(the filters of the breakdowns below); online now: the visitors whose current session matches."
      : "";
    renderMetrics();
  }

  function reloadPeopleIfFiltered() {
    if (metricsQuery() !== metricsAsked) loadMetrics().catch(reportError);
    if (usersQuery().toString() !== usersAsked) loadUsers(true).catch(reportError);
  }

  function trendOf(m) {
    if (m.previous === null || m.previous === undefined || m.previous === 0 || m.value === null) return null;
    return Math.round(((m.value - m.previous) / m.previous) * 1000) / 10;
  }

  /** The card's comparison with a week earlier, as a sentence: "▲ 50 % from 6 a week earlier",
      "▶ unchanged from 3 the week before", "new this week — nobody new the week before". A rate
      (churn) changes by percentage points, not by a percentage of itself. */
  function trendLine(def, m) {
    const show = (v) => (def.percent ? `${v} %` : fmtNum(v));
    const none = (v) => v === null || v === undefined;
    if (none(m.value)) return ["no figure yet"];
    if (none(m.previous)) return [`nothing to compare with ${def.earlier}`];
    if (!def.percent && m.previous === 0) return [m.value === 0 ? def.bothNothing : def.fromNothing];
    const change = def.percent
      ? Math.round((m.value - m.previous) * 10) / 10
      : m.trend === undefined || m.trend === null ? trendOf(m) : m.trend;
    const dir = change > 0 ? "up" : change < 0 ? "down" : "flat";
    const from = ` from ${show(m.previous)} ${def.earlier}`;
    if (dir === "flat") return [h("span", { class: "flat" }, h("span", { "aria-hidden": "true" }, "▶ "), "unchanged"), from];
    const tone = dir === def.better ? "good" : "bad";
    const amount = def.percent ? plural(Math.abs(change), "point") : `${Math.abs(change)} %`;
    return [
      h(
        "span",
        { class: `${dir} ${tone}` },
        h("span", { "aria-hidden": "true" }, dir === "up" ? "▲ " : "▼ "),
        h("span", { class: "sr-only" }, `${dir} `),
        amount,
      ),
      from,
    ];
  }

  function renderMetrics() {
    const box = $("metric-cards");
    box.textContent = "";
    for (const def of METRICS) {
      const m = state.metrics[def.key] || {};
      const value = m.value === null || m.value === undefined ? "–" : def.percent ? `${m.value} %` : fmtNum(m.value);
      box.appendChild(
        h(
          "div",
          { class: "metric", dataset: { metric: def.key } },
          h("div", { class: "label" }, def.label),
          h("div", { class: "value" }, value),
          h("div", { class: "trend" }, trendLine(def, m)),
        ),
      );
    }
    noteFirstEvent();
  }

  // --- live: the SSE stream read with fetch() so the Authorization header goes along --------------------
  function setLiveState(kind, text) {
    const s = $("live-state");
    s.className = `live-state ${kind}`;
    s.textContent = text;
  }

  function stopLive() {
    if (state.live.controller) state.live.controller.abort();
    state.live.controller = null;
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
    });
  }

  // The breakdowns' filters (the chips) narrow who is online too: the stream, the count and the CSV.
  const liveQuery = () => new URLSearchParams([...bd.filters]).toString();

  // A chip came or went (or Back/Forward moved to other filters): the stream again, with them.
  function followFilters() {
    if (state.live.controller && liveQuery() !== state.live.query) startLive();
  }

  async function startLive() {
    stopLive();
    const controller = new AbortController();
    state.live.controller = controller;
    const { signal } = controller;
    const query = liveQuery();
    state.live.query = query;
    setLiveState("", "connecting…");
    let attempt = 0;
    let retryBase = 1000;
    while (!signal.aborted) {
      try {
        const path = `${projectPath("live")}${query ? `?${query}` : ""}`;
        const response = await request(path, { headers: { Accept: "text/event-stream" }, signal });
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        setLiveState("on", query ? "live, filtered" : "live");
        attempt = 0;
        await readEvents(response.body, signal, (event, data) => {
          if (event === "online" && !signal.aborted) renderLive(JSON.parse(data), query);
        }, (ms) => (retryBase = ms));
      } catch (err) {
        if (signal.aborted || (err instanceof ApiError && err.status === 401)) return;
      }
      if (signal.aborted) return;
      attempt += 1;
      const delay = Math.min(30000, retryBase * 2 ** (attempt - 1)) * (0.75 + Math.random() * 0.5);
      setLiveState("off", `reconnecting in ${Math.round(delay / 1000)} s…`);
      await sleep(delay, signal);
      if (!signal.aborted) setLiveState("", "connecting…");
    }
  }

  /** Parse a text/event-stream body (https://html.spec.whatwg.org/#event-stream-interpretation). */
  async function readEvents(body, signal, onEvent, onRetry) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
    let buffer = "";
    let event = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an incomplete last line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length) onEvent(event || "message", data.join("\n"));
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the server's keep-alive ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "retry" && /^\d+$/.test(val)) onRetry(Number(val));
      }
    }
  }

  function renderLive(body, query) {
    if (body.as_of) noteFreshness(body);
    state.live.rows = body.users || [];
    state.live.count = body.online;
    state.live.receivedAt = Date.now();
    $("online-count").textContent = fmtNum(body.online);
    // The "Online now" card takes the live count when both have the same filters (or none).
    if (query === state.metricsQuery && state.metrics && state.metrics.online_now) {
      state.metrics.online_now.value = body.online;
      state.metrics.online_now.trend = trendOf(state.metrics.online_now);
      renderMetrics();
    }
    const tbody = $("live-table").tBodies[0];
    // Re-rendered on every push: keep the keyboard focus on the same visitor's button.
    const focused = tbody.contains(document.activeElement) ? document.activeElement.closest("tr").dataset.person : null;
    tbody.textContent = "";
    for (const u of state.live.rows) {
      // The whole id, as in the users table (it wraps); an anonymous visitor is marked as such.
      const who = u.user_id || u.anonymous_id || u.person_id;
      const ids = [u.person_id, u.anonymous_id].filter((id, i, all) => id && all.indexOf(id) === i);
      tbody.appendChild(
        h(
          "tr",
          { class: u.stuck ? "stuck" : "", dataset: { person: u.person_id } },
          h(
            "td",
            { class: "who" },
            h("button", { type: "button", class: "linklike", title: ids.join(" · "), onclick: (e) => openDetail(u.person_id, e.currentTarget) }, who),
            u.user_id ? null : h("span", { class: "anon" }, "anonymous"),
            u.stuck ? h("span", { class: "badge stuck", title: "On the same page for over 5 minutes" }, "stuck") : null,
          ),
          h("td", { class: "path", title: u.current_url || "" }, currentPage(u)),
          h("td", { class: "num", dataset: { since: u.time_on_page_seconds } }, fmtDuration(u.time_on_page_seconds)),
          h("td", { class: "num", dataset: { since: u.time_on_site_seconds } }, fmtDuration(u.time_on_site_seconds)),
          h("td", {}, u.device_type || "–"),
          h("td", {}, u.browser || "–"),
          h("td", {}, u.os || "–"),
        ),
      );
    }
    $("live-empty").hidden = state.live.rows.length > 0;
    $("live-empty").textContent = query ? "Nobody matching these filters is online right now." : "Nobody is online right now.";
    noteFirstEvent();
    if (focused) {
      const again = [...tbody.rows].find((r) => r.dataset.person === focused);
      if (again) again.querySelector("button").focus();
    }
  }

  // Where a visitor is: their page; without a page view yet (an app or a server calling track()),
  // what they last did.
  function currentPage(u) {
    if (u.current_path || u.current_title) {
      return u.current_title ? h("span", {}, u.current_title, h("br"), h("code", {}, u.current_path || "")) : h("code", {}, u.current_path);
    }
    if (u.last_event && u.last_event !== "$page") {
      return h("span", { class: "last-event", title: "No page view yet: their latest event" }, h("span", { class: "sr-only" }, "latest event: "), u.last_event);
    }
    return "–";
  }

  // Every second: durations in the live table keep counting, the freshness line ages.
  function tick() {
    const elapsed = (Date.now() - state.live.receivedAt) / 1000;
    for (const cell of document.querySelectorAll("#live-table td[data-since]")) {
      const base = Number(cell.dataset.since);
      if (!Number.isNaN(base)) cell.textContent = fmtDuration(base + elapsed);
    }
    renderFreshness();
  }

  // --- activity chart ------------------------------------------------------------------------------------
  // The breakdowns' filters (bd.filters, the chips) narrow the chart too: each day is then
  // counted from the matching sessions (docs/definitions.md, "Filters").
  let activitySeq = 0;
  let activityAsked = ""; // the query of the chart shown (or on its way)
  function activityQuery() {
    const q = new URLSearchParams({ days: "30" });
    for (const [key, value] of bd.filters) q.set(key, value);
    return q;
  }

  async function loadActivity() {
    const seq = ++activitySeq;
    activityAsked = activityQuery().toString();
    const body = await api(`${projectPath("activity")}?${activityAsked}`);
    if (seq !== activitySeq) return; // a filter changed while this was on its way
    const days = body.days || [];
    const filters = Object.entries(body.filters || {});
    const note = $("activity-filters");
    note.hidden = filters.length === 0;
    note.textContent = filters.length
      ? `Only the sessions with a page view matching ${filters.map(([k, v]) => filterLabel(k, v)).join(", ")} ` +
        "(the filters of the breakdowns below), each on the day it started; events are their page views."
      : "";
    const pick = (k) => days.map((d) => d[k] || 0);
    const css = getComputedStyle(document.documentElement);
    const color = (v) => css.getPropertyValue(v).trim();
    window.WerkstroomChart.line($("activity-chart"), {
      title: `Daily activity over the last 30 days${filters.length ? ", filtered" : ""}`,
      labels: days.map((d) => d.day),
      series: [
        { name: "Active users", color: color("--s1"), values: pick("active_users") },
        { name: "New users", color: color("--s3"), values: pick("new_users") },
        { name: "Sessions", color: color("--s4"), values: pick("sessions") },
        { name: "Page views", color: color("--s2"), values: pick("page_views") },
      ],
    });
    renderBots(days, filters.length > 0);
  }

  // After a chip was added or removed (the breakdowns' period is not the chart's: no reload for it).
  function reloadActivityIfFiltered() {
    if (activityQuery().toString() !== activityAsked) loadActivity().catch(reportError);
  }

  // Events filtered as bots are counted in no series above; an empty chart says why it is empty.
  function renderBots(days, filtered) {
    const sum = (k) => days.reduce((n, d) => n + (d[k] || 0), 0);
    const bots = sum("bots");
    const line = $("activity-bots");
    line.hidden = bots === 0;
    if (!bots) return;
    const n = `${plural(bots, "event")} from bots and scripts`;
    // Filtered, no events says nothing about the site: bots are the day's, whatever the filters.
    const none = !sum("events") && !filtered;
    line.textContent = !none
      ? `Not counted above: ${n} (crawlers, curl, python-requests, headless browsers) in the last 30 days.`
      : `No visitor events yet, but ${n} (crawlers, curl, python-requests, headless browsers) ` +
        "were filtered in the last 30 days. To test, send a browser's User-Agent: see the README, " +
        "“Send an event”.";
    line.classList.toggle("empty", none);
  }

  // --- funnels ----------------------------------------------------------------------------------------------
  const stepLabel = (s) =>
    s.event === "$page" ? `Page view${s.path ? ` ${s.path}` : ""}` : `${s.event}${s.path ? ` on ${s.path}` : ""}`;

  async function loadFunnels(selectId) {
    const body = await api(projectPath("funnels"));
    state.funnels = body.funnels || [];
    const select = $("funnel-select");
    const previous = selectId || select.value;
    select.textContent = "";
    for (const f of state.funnels) select.appendChild(h("option", { value: f.funnel_id }, f.name));
    const has = state.funnels.length > 0;
    select.hidden = !has;
    $("funnel-delete").hidden = !has;
    $("funnel-empty").hidden = has;
    $("funnel-new").open = $("funnel-new").open || !has;
    if (!has) {
      clearTimeout(state.funnelRetry);
      $("funnel-backfilling").hidden = true;
      $("funnel-filters").hidden = true;
      $("funnel-steps").textContent = "";
      return;
    }
    if (state.funnels.some((f) => f.funnel_id === previous)) select.value = previous;
    await loadFunnel(select.value);
  }

  // The breakdowns' filters (bd.filters, the chips) narrow the funnel too: only the persons with
  // a matching session in the 30 days are counted (docs/definitions.md, "Filters").
  let funnelSeq = 0;
  let funnelAsked = ""; // the funnel and query of the report shown (or on its way)
  function funnelQuery() {
    const q = new URLSearchParams({ days: "30" });
    for (const [key, value] of bd.filters) q.set(key, value);
    return q.toString();
  }

  async function loadFunnel(funnelId) {
    const seq = ++funnelSeq;
    const query = funnelQuery();
    funnelAsked = `${funnelId}?${query}`;
    const body = await api(`${projectPath(`funnels/${encodeURIComponent(funnelId)}`)}?${query}`);
    if (seq !== funnelSeq) return; // another funnel or filter was asked for meanwhile
    // A new funnel: the aggregator back-fills it from the stored events within seconds; until
    // then its counts cover only the people active since. Look again until it is done.
    clearTimeout(state.funnelRetry);
    const backfilling = body.funnel && body.funnel.backfilled === false;
    $("funnel-backfilling").hidden = !backfilling;
    if (backfilling) {
      state.funnelRetry = setTimeout(() => {
        if ($("funnel-select").value === funnelId) loadFunnel(funnelId).catch(reportError);
      }, 1000);
    }
    const filters = Object.entries(body.filters || {});
    const note = $("funnel-filters");
    note.hidden = filters.length === 0;
    note.textContent = filters.length
      ? `Filtered: only the persons with a session matching ${filters.map(([k, v]) => filterLabel(k, v)).join(", ")} ` +
        "in the last 30 days (the filters of the breakdowns below), each with all their steps."
      : "";
    const list = $("funnel-steps");
    list.textContent = "";
    for (const s of body.steps) {
      const pct = s.conversion_pct ?? 0;
      const drop =
        s.drop_off_pct === null || s.drop_off_pct === undefined ? (s.step === 1 ? "start" : "–") : `${s.drop_off_pct} % drop-off`;
      list.appendChild(
        h(
          "li",
          { class: s.high_drop_off ? "high" : "", dataset: { step: s.step } },
          h("div", { class: "name" }, `${s.step}. ${stepLabel(s)}`),
          h(
            "div",
            { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(pct), "aria-label": `${stepLabel(s)}: ${pct} % of step 1` },
            h("span", { style: { width: `${Math.min(100, Math.max(0, pct))}%` } }),
          ),
          h(
            "div",
            { class: "stats" },
            h("strong", {}, fmtNum(s.count)),
            ` ${s.count === 1 ? "person" : "people"} · ${s.conversion_pct === null ? "–" : `${s.conversion_pct} %`} · `,
            h("span", { class: "drop" }, drop, s.high_drop_off ? h("span", { class: "sr-only" }, " (high)") : null),
          ),
        ),
      );
    }
  }

  // After a chip was added or removed: the funnel shown, for the filters now.
  function reloadFunnelIfFiltered() {
    const funnelId = $("funnel-select").value;
    if (funnelId && `${funnelId}?${funnelQuery()}` !== funnelAsked) loadFunnel(funnelId).catch(reportError);
  }

  function addStepRow(event = "", path = "") {
    const rows = $("funnel-form-steps");
    if (rows.children.length >= 8) return;
    const n = rows.children.length + 1;
    const id = `fs-${Date.now()}-${n}`;
    const row = h(
      "div",
      { class: "step-row" },
      h("span", { class: "n" }, `${n}.`),
      h("div", { class: "field" }, h("label", { for: `${id}-e` }, "Event"), h("input", { id: `${id}-e`, class: "step-event", value: event, placeholder: "$page or Signed Up", list: "event-names", required: true })),
      h("div", { class: "field" }, h("label", { for: `${id}-p` }, "Path (optional)"), h("input", { id: `${id}-p`, class: "step-path", value: path, placeholder: "/pricing*" })),
      h("button", { type: "button", class: "ghost small", "aria-label": `Remove step ${n}`, onclick: () => removeStepRow(row) }, "Remove"),
    );
    rows.appendChild(row);
  }

  function removeStepRow(row) {
    const rows = $("funnel-form-steps");
    if (rows.children.length <= 2) return;
    row.remove();
    [...rows.children].forEach((r, i) => (r.querySelector(".n").textContent = `${i + 1}.`));
  }

  async function createFunnel(ev) {
    ev.preventDefault();
    const error = $("funnel-error");
    error.textContent = "";
    const steps = [...document.querySelectorAll("#funnel-form-steps .step-row")]
      .map((r) => ({ event: r.querySelector(".step-event").value.trim(), path: r.querySelector(".step-path").value.trim() }))
      .filter((s) => s.event);
    const name = $("funnel-name").value.trim();
    if (!name) return (error.textContent = "Give the funnel a name.");
    if (steps.length < 2) return (error.textContent = "A funnel needs at least two steps with an event.");
    const button = ev.submitter || $("funnel-form").querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const created = await api(projectPath("funnels"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, steps, window_seconds: Number($("funnel-window").value) }),
      });
      $("funnel-form").reset();
      resetStepRows();
      $("funnel-new").open = false;
      await loadFunnels(created.funnel_id);
    } catch (err) {
      error.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  function resetStepRows() {
    $("funnel-form-steps").textContent = "";
    addStepRow("$page", "/");
    addStepRow("", "");
  }

  async function deleteFunnel() {
    const select = $("funnel-select");
    const funnel = state.funnels.find((f) => f.funnel_id === select.value);
    if (!funnel || !window.confirm(`Delete the funnel "${funnel.name}"?`)) return;
    await api(projectPath(`funnels/${encodeURIComponent(funnel.funnel_id)}`), { method: "DELETE" });
    await loadFunnels();
  }

  // --- users ---------------------------------------------------------------------------------------------------
  // The chips narrow the list too: the persons with a matching session. The list's own segment
  // is the person segment of the chips; "All" in the list takes the chip's, if there is one.
  let usersAsked = null; // the query of the list shown (or on its way)
  function usersSegment() {
    const own = $("segment").value;
    return own === "all" && bd.filters.has("segment") ? bd.filters.get("segment") : own;
  }

  function usersQuery() {
    const params = new URLSearchParams({ segment: usersSegment() });
    const q = $("user-search").value.trim();
    if (q) params.set("q", q);
    for (const [key, value] of bd.filters) if (key !== "segment") params.set(key, value);
    return params;
  }

  function usersNote(filters) {
    const note = $("users-filters");
    const chip = bd.filters.get("segment");
    const parts = filters.map(([k, v]) => filterLabel(k, v));
    if (chip) parts.push(filterLabel("segment", chip));
    note.hidden = parts.length === 0;
    let text = parts.length ? `Only the persons with a session matching ${parts.join(", ")} (the filters of the breakdowns below).` : "";
    if (chip && usersSegment() !== chip) text += ` The segment chosen here (${$("segment").value}) is the one applied.`;
    note.textContent = text;
  }

  async function loadUsers(reset) {
    const seq = ++state.users.seq; // answers to older filters are dropped
    const params = usersQuery();
    if (reset) usersAsked = params.toString();
    params.set("limit", "50");
    if (!reset && state.users.cursor) params.set("cursor", state.users.cursor);
    const more = $("users-more");
    more.disabled = true;
    try {
      const body = await api(`${projectPath("users")}?${params}`);
      if (seq !== state.users.seq) return;
      const tbody = $("users-table").tBodies[0];
      if (reset) tbody.textContent = "";
      for (const u of body.users) {
        tbody.appendChild(
          h(
            "tr",
            { dataset: { person: u.person_id }, onclick: (e) => e.target.tagName !== "BUTTON" && openDetail(u.person_id, e.currentTarget.querySelector("button")) },
            h("td", {}, h("button", { type: "button", class: "linklike", onclick: (e) => openDetail(u.person_id, e.currentTarget) }, u.person_id)),
            h("td", {}, h("span", { class: `seg ${u.segment}` }, u.segment)),
            h("td", {}, u.plan || "–"),
            h("td", {}, fmtTime(u.first_seen)),
            h("td", {}, fmtTime(u.last_seen)),
            h("td", { class: "num" }, fmtNum(u.sessions)),
            h("td", { class: "num" }, fmtNum(u.page_views)),
          ),
        );
      }
      state.users.cursor = body.next_cursor;
      more.hidden = !body.next_cursor;
      $("users-empty").hidden = tbody.children.length > 0;
      $("users-empty").textContent = state.waiting ? "No users yet: the first visitor appears here by itself." : "No users match.";
      usersNote(Object.entries(body.filters || {}));
      $("users-table").dataset.loaded = `${$("segment").value}|${$("user-search").value.trim()}`;
    } finally {
      if (seq === state.users.seq) more.disabled = false;
    }
  }

  // --- user detail ----------------------------------------------------------------------------------------------
  async function openDetail(personId, trigger) {
    state.detail.personId = personId;
    state.detail.returnFocus = trigger || document.activeElement;
    const base = projectPath(`users/${encodeURIComponent(personId)}`);
    let person, sessions;
    try {
      [person, sessions] = await Promise.all([api(base), api(`${base}/sessions?limit=20`)]);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return toast(`No profile for ${personId} yet.`);
      return reportError(err);
    }
    if (state.detail.personId !== personId) return;
    $("detail-title").textContent = person.person_id;
    const facts = $("detail-facts");
    facts.textContent = "";
    const fact = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
    facts.append(
      ...fact("Segment", person.segment || "–"),
      ...fact(
        "Plan",
        person.plan
          ? h(
              "button",
              {
                type: "button",
                class: "linklike",
                title: "Show the pages and sources of the visitors on this plan",
                onclick: () => {
                  closeDetail();
                  addFilter("plan", person.plan);
                  $("breakdowns").scrollIntoView();
                },
              },
              person.plan,
            )
          : "–",
      ),
      ...fact("First seen", fmtTime(person.first_seen)),
      ...fact("Last seen", `${fmtTime(person.last_seen)} (${fmtAgo(person.last_seen)})`),
      ...fact("Sessions", fmtNum(person.sessions)),
      ...fact("Page views", fmtNum(person.page_views)),
    );
    const traits = $("detail-traits");
    traits.textContent = "";
    const entries = Object.entries(person.traits || {});
    if (!entries.length) traits.appendChild(h("dd", { class: "empty" }, "No traits (identify() sets them)."));
    for (const [k, v] of entries) traits.append(...fact(k, typeof v === "string" ? v : JSON.stringify(v)));
    const ids = $("detail-ids");
    ids.textContent = "";
    for (const id of person.anonymous_ids || []) ids.appendChild(h("li", {}, h("code", {}, id)));
    if (!ids.children.length) ids.appendChild(h("li", { class: "empty" }, "none"));
    const tbody = $("detail-sessions").tBodies[0];
    tbody.textContent = "";
    for (const s of sessions.sessions) {
      const pages = s.pages || [];
      const shown = pages.length > 6 ? [...pages.slice(0, 6), `… ${pages.length - 6} more`] : pages;
      tbody.appendChild(
        h(
          "tr",
          { dataset: { session: s.session_id } },
          h("td", {}, fmtTime(s.start_at)),
          h("td", { class: "num" }, fmtDuration(s.duration_seconds)),
          h("td", { class: "path", title: pages.join(" → ") }, shown.join(" → ") || "–", h("br"), h("small", {}, plural(s.page_views, "page view"))),
          h("td", {}, [s.device_type, s.browser, s.os].filter(Boolean).join(" · ") || "–"),
          h("td", {}, s.active ? h("span", { class: "status-active" }, "active") : "completed"),
        ),
      );
    }
    if (!sessions.sessions.length) tbody.appendChild(h("tr", {}, h("td", { colspan: "5", class: "empty" }, "No browsing sessions.")));
    $("detail-backdrop").hidden = false;
    $("detail").hidden = false;
    $("detail").focus();
  }

  function closeDetail() {
    if ($("detail").hidden) return;
    $("detail").hidden = true;
    $("detail-backdrop").hidden = true;
    state.detail.personId = null;
    const back = state.detail.returnFocus;
    if (back && document.body.contains(back)) back.focus();
  }

  // --- breakdowns: pages, sources, places and technology ------------------------------------------------------
  // The period, the filters and each card's tab live in the page's URL query, so a reload keeps
  // them and a shared URL opens the same view (after the login, if the tab has no key yet).
  // Values come from strangers (paths, referrers, UTM strings): they reach the page as text only.
  const BD_LIMIT = 10;
  const BD_EVERY_MS = 60000;
  const PERIODS = { today: 0, "7d": 6, "30d": 29 }; // days before today (UTC) a preset starts
  const DEFAULT_PERIOD = "30d";
  // dimension -> its tab, the filter a click on one of its values sets, that filter's name on a
  // chip, and what the empty value means.
  const DIMENSIONS = {
    pages: { tab: "Pages", filter: "page", name: "Page", none: "Unknown", path: true },
    entry_pages: { tab: "Entry", filter: "entry_page", name: "Entry page", none: "Unknown", path: true },
    exit_pages: { tab: "Exit", filter: "exit_page", name: "Exit page", none: "Unknown", path: true },
    sources: { tab: "Sources", filter: "source", name: "Source", none: "Direct / None" },
    utm_sources: { tab: "UTM source", filter: "utm_source", name: "UTM source", none: "(none)" },
    utm_mediums: { tab: "UTM medium", filter: "utm_medium", name: "UTM medium", none: "(none)" },
    utm_campaigns: { tab: "UTM campaign", filter: "utm_campaign", name: "UTM campaign", none: "(none)" },
    countries: { tab: "Countries", filter: "country", name: "Country", none: "Unknown", country: true },
    devices: { tab: "Devices", filter: "device", name: "Device", none: "Unknown" },
    browsers: { tab: "Browsers", filter: "browser", name: "Browser", none: "Unknown" },
    os: { tab: "OS", filter: "os", name: "OS", none: "Unknown" },
  };
  const FILTERS = Object.fromEntries(Object.entries(DIMENSIONS).map(([dim, d]) => [d.filter, dim]));
  // Filters on the person a visitor belongs to now, not a dimension of their sessions: the
  // "Visitors" select sets `segment` (the Users segments), a person's plan in their detail `plan`.
  const SEGMENT_NAMES = { active: "Active", inactive: "Inactive", churned: "Churned", premium: "Premium", trial: "Trial" };
  const PERSON_FILTERS = {
    segment: { name: "Segment", text: (v) => SEGMENT_NAMES[v], valid: (v) => v in SEGMENT_NAMES },
    plan: { name: "Plan", text: (v) => v || "none", valid: () => true },
  };
  const FILTER_KEYS = [...Object.keys(FILTERS), ...Object.keys(PERSON_FILTERS)];
  // A card's id is also its tab's key in the URL (?content=exit_pages).
  const BD_CARDS = [
    { id: "content", title: "What they look at", tabs: ["pages", "entry_pages", "exit_pages"], wide: true },
    { id: "acquisition", title: "Where they come from", tabs: ["sources", "utm_sources", "utm_mediums", "utm_campaigns"] },
    { id: "audience", title: "Where they are, what they use", tabs: ["countries", "devices", "browsers", "os"] },
  ];
  const bd = {
    period: DEFAULT_PERIOD, // a preset, or "custom" with from/to
    from: null,
    to: null,
    filters: new Map(), // filter parameter -> value, in the order they were added
    tabs: Object.fromEntries(BD_CARDS.map((c) => [c.id, c.tabs[0]])),
    offsets: Object.fromEntries(BD_CARDS.map((c) => [c.id, 0])),
    seq: Object.fromEntries(BD_CARDS.map((c) => [c.id, 0])),
  };
  const ISO_DAY = /^\d{4}-\d{2}-\d{2}$/;

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const from = q.get("from");
    const to = q.get("to");
    if (from && to && ISO_DAY.test(from) && ISO_DAY.test(to)) {
      Object.assign(bd, { period: "custom", from, to });
    } else {
      const period = q.get("period");
      Object.assign(bd, { period: period in PERIODS ? period : DEFAULT_PERIOD, from: null, to: null });
    }
    bd.filters = new Map();
    for (const [key, value] of q) {
      const known = key in FILTERS || (key in PERSON_FILTERS && PERSON_FILTERS[key].valid(value));
      if (known && !bd.filters.has(key)) bd.filters.set(key, value);
    }
    for (const card of BD_CARDS) {
      const tab = q.get(card.id);
      bd.tabs[card.id] = card.tabs.includes(tab) ? tab : card.tabs[0];
      bd.offsets[card.id] = 0;
    }
  }

  /** The URL of this view: other query parameters are kept; ours follow in a fixed order. */
  function writeUrl(push) {
    const q = new URLSearchParams(location.search);
    for (const key of ["period", "from", "to", ...FILTER_KEYS, ...BD_CARDS.map((c) => c.id)]) q.delete(key);
    if (bd.period === "custom") {
      q.set("from", bd.from);
      q.set("to", bd.to);
    } else if (bd.period !== DEFAULT_PERIOD) {
      q.set("period", bd.period);
    }
    for (const card of BD_CARDS) if (bd.tabs[card.id] !== card.tabs[0]) q.set(card.id, bd.tabs[card.id]);
    for (const [key, value] of bd.filters) q.set(key, value);
    const query = q.toString();
    const url = `${location.pathname}${query ? `?${query}` : ""}${location.hash}`;
    if (url === `${location.pathname}${location.search}${location.hash}`) return;
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }

  // A UTC day `back` days before today, by the server's clock: the API's days are UTC days.
  function utcDay(back) {
    const d = new Date(serverNow());
    d.setUTCDate(d.getUTCDate() - back);
    return d.toISOString().slice(0, 10);
  }

  const period = () =>
    bd.period === "custom" ? { from: bd.from, to: bd.to } : { from: utcDay(PERIODS[bd.period]), to: utcDay(0) };

  function bdQuery(extra) {
    const q = new URLSearchParams(period());
    for (const [key, value] of Object.entries(extra || {})) q.set(key, String(value));
    for (const [key, value] of bd.filters) q.set(key, value);
    return q;
  }

  let regionNames = null;
  try {
    regionNames = new Intl.DisplayNames(undefined, { type: "region" });
  } catch {
    regionNames = null; // an old browser: the code alone
  }

  function countryName(code) {
    try {
      return (regionNames && regionNames.of(code)) || code;
    } catch {
      return code; // not a region code DisplayNames knows the shape of
    }
  }

  const flag = (code) =>
    /^[A-Z]{2}$/.test(code) ? String.fromCodePoint(...[...code].map((c) => 0x1f1e6 + c.charCodeAt(0) - 65)) : "";

  /** A value as a person reads it: "Direct / None" for no source, a country's name. */
  function valueText(dimension, value) {
    const d = DIMENSIONS[dimension];
    if (value === "") return d.none;
    return d.country ? countryName(value) : value;
  }

  function valueNode(dimension, value) {
    const d = DIMENSIONS[dimension];
    if (value === "") return h("span", { class: "none" }, d.none);
    if (d.country) {
      const f = flag(value);
      return h("span", {}, f ? h("span", { class: "flag", "aria-hidden": "true" }, `${f} `) : null, countryName(value));
    }
    return d.path ? h("code", {}, value) : h("span", {}, value);
  }

  /** The change from the previous period, as an arrow and a percentage ("new" after none). */
  function changeNode(now, before) {
    if (before === null || before === undefined) return "–";
    if (before === 0) return now === 0 ? "–" : h("span", { class: "up good", title: "none in the previous period" }, h("span", { "aria-hidden": "true" }, "▲ "), "new");
    const change = Math.round(((now - before) / before) * 1000) / 10;
    if (change === 0) return h("span", { class: "flat" }, h("span", { "aria-hidden": "true" }, "▶ "), "0 %");
    const dir = change > 0 ? "up" : "down";
    return h(
      "span",
      { class: `${dir} ${dir === "up" ? "good" : "bad"}` },
      h("span", { "aria-hidden": "true" }, dir === "up" ? "▲ " : "▼ "),
      h("span", { class: "sr-only" }, `${dir} `),
      `${Math.abs(change)} %`,
    );
  }

  const fmtDay = (iso) =>
    new Date(`${iso}T00:00:00Z`).toLocaleDateString(undefined, { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });

  function buildBreakdowns() {
    const box = $("bd-cards");
    box.textContent = "";
    for (const card of BD_CARDS) {
      const tabs = card.tabs.map((dim) =>
        h(
          "button",
          {
            type: "button",
            role: "tab",
            id: `bd-tab-${dim}`,
            "aria-controls": `bd-panel-${card.id}`,
            "aria-selected": "false",
            tabindex: "-1",
            dataset: { dimension: dim },
            onclick: () => selectTab(card, dim),
            onkeydown: (ev) => tabKeys(ev, card),
          },
          DIMENSIONS[dim].tab,
        ),
      );
      box.appendChild(
        h(
          "section",
          { class: `card bd-card${card.wide ? " wide" : ""}`, id: `bd-${card.id}`, "aria-labelledby": `bd-${card.id}-title` },
          h(
            "div",
            { class: "section-head" },
            h("h3", { id: `bd-${card.id}-title` }, card.title),
            h(
              "button",
              { type: "button", class: "ghost small bd-csv", "aria-describedby": `bd-${card.id}-title`, onclick: (ev) => downloadBreakdown(card, ev.currentTarget) },
              "Download CSV",
            ),
          ),
          h("div", { class: "tabs", role: "tablist", "aria-label": card.title }, tabs),
          h(
            "div",
            { class: "bd-panel", role: "tabpanel", id: `bd-panel-${card.id}` },
            h("div", { class: "table-wrap" }, h("table", { class: "data bd-table" }, h("caption", { class: "sr-only" }), h("thead"), h("tbody"))),
            h("p", { class: "empty", hidden: true }),
            h(
              "div",
              { class: "pager" },
              h("button", { type: "button", class: "ghost small", dataset: { page: "previous" }, onclick: () => turnPage(card, -1) }, "Previous"),
              h("span", { class: "pager-status", role: "status" }),
              h("button", { type: "button", class: "ghost small", dataset: { page: "next" }, onclick: () => turnPage(card, 1) }, "Next"),
            ),
          ),
        ),
      );
    }
    renderControls();
  }

  function renderControls() {
    for (const button of document.querySelectorAll("#bd-range [data-range]")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === bd.period));
    }
    const custom = $("bd-custom");
    if (!custom.contains(document.activeElement)) {
      const { from, to } = period(); // what is shown, as days: a start for a custom choice
      $("bd-from").value = from;
      $("bd-to").value = to;
    }
    custom.hidden = bd.period !== "custom" && custom.dataset.open !== "true";
    document.querySelector('#bd-range [data-range="custom"]').setAttribute("aria-expanded", String(!custom.hidden));
    for (const card of BD_CARDS) {
      for (const tab of document.querySelectorAll(`#bd-${card.id} [role="tab"]`)) {
        const on = tab.dataset.dimension === bd.tabs[card.id];
        tab.setAttribute("aria-selected", String(on));
        tab.tabIndex = on ? 0 : -1;
        if (on) $(`bd-panel-${card.id}`).setAttribute("aria-labelledby", tab.id);
      }
    }
    $("bd-segment").value = bd.filters.get("segment") || "";
    renderChips();
  }

  function filterLabel(key, value) {
    const person = PERSON_FILTERS[key];
    if (person) return `${person.name}: ${person.text(value)}`;
    return `${DIMENSIONS[FILTERS[key]].name}: ${valueText(FILTERS[key], value)}`;
  }

  function renderChips() {
    const list = $("bd-chips");
    list.textContent = "";
    for (const [key, value] of bd.filters) {
      const label = filterLabel(key, value);
      list.appendChild(
        h(
          "li",
          {},
          h(
            "button",
            { type: "button", class: "chip", dataset: { filter: key }, "aria-label": `Remove filter ${label}`, title: "Remove this filter", onclick: () => removeFilter(key) },
            label,
            h("span", { class: "x", "aria-hidden": "true" }, "×"),
          ),
        ),
      );
    }
    $("bd-filters").hidden = bd.filters.size === 0;
  }

  async function loadBreakdown(card) {
    const seq = ++bd.seq[card.id];
    const dimension = bd.tabs[card.id];
    const offset = bd.offsets[card.id];
    const query = bdQuery({ limit: BD_LIMIT, offset });
    const section = $(`bd-${card.id}`);
    const table = section.querySelector("table");
    table.setAttribute("aria-busy", "true");
    let body;
    try {
      body = await api(`${projectPath(`breakdowns/${dimension}`)}?${query}`);
    } finally {
      if (seq === bd.seq[card.id]) table.removeAttribute("aria-busy");
    }
    if (seq !== bd.seq[card.id]) return; // a newer tab, page or filter asked since
    renderBreakdown(card, dimension, body);
    section.dataset.loaded = `${dimension}?${query}`;
  }

  function renderBreakdown(card, dimension, body) {
    const d = DIMENSIONS[dimension];
    const section = $(`bd-${card.id}`);
    const table = section.querySelector("table");
    const num = (text) => h("th", { scope: "col", class: "num" }, text);
    table.caption.textContent = `${card.title}: ${d.tab}, by visitors; select a value to filter by it`;
    table.tHead.textContent = "";
    table.tHead.appendChild(
      h(
        "tr",
        {},
        h("th", { scope: "col" }, d.name),
        num("Visitors"),
        h("th", { scope: "col", class: "num previous-col", title: "Visitors in the previous period of the same length" }, "Previous"),
        num("Change"),
        d.path ? [num("Page views"), num("Bounce rate"), num("Time on page")] : null,
      ),
    );
    const tbody = table.tBodies[0];
    tbody.textContent = "";
    const rows = body.rows || [];
    const top = Math.max(1, ...rows.map((r) => r.visitors || 0));
    for (const row of rows) {
      const before = row.previous ? row.previous.visitors : null;
      const active = bd.filters.get(d.filter) === row.value;
      tbody.appendChild(
        h(
          "tr",
          { dataset: { value: row.value } },
          h(
            "th",
            { scope: "row", class: d.path ? "value path" : "value" },
            h(
              "button",
              {
                type: "button",
                class: "linklike",
                title: active ? "Remove this filter" : `Show only visitors with ${d.name.toLowerCase()} ${valueText(dimension, row.value)}`,
                "aria-pressed": String(active), // a toggle: pressed again, it removes its filter
                onclick: () => (active ? removeFilter(d.filter) : addFilter(d.filter, row.value)),
              },
              valueNode(dimension, row.value),
            ),
            h("span", { class: "share", "aria-hidden": "true", style: { width: `${Math.round((100 * (row.visitors || 0)) / top)}%` } }),
          ),
          h("td", { class: "num" }, fmtNum(row.visitors)),
          h("td", { class: "num previous" }, fmtNum(before)),
          h("td", { class: "num trend" }, changeNode(row.visitors, before)),
          d.path
            ? [
                h("td", { class: "num" }, fmtNum(row.page_views)),
                h("td", { class: "num" }, row.bounce_rate === null || row.bounce_rate === undefined ? "–" : `${row.bounce_rate} %`),
                h("td", { class: "num" }, fmtDuration(row.avg_time_on_page_s)),
              ]
            : null,
        ),
      );
    }
    const total = body.total || 0;
    const empty = section.querySelector(".empty");
    empty.hidden = rows.length > 0;
    empty.textContent = bd.filters.size ? "No visitors match these filters in this period." : "No visitors in this period.";
    const pager = section.querySelector(".pager");
    pager.hidden = total <= BD_LIMIT && body.offset === 0;
    const first = rows.length ? body.offset + 1 : 0;
    pager.querySelector(".pager-status").textContent = rows.length ? `Showing ${fmtNum(first)}–${fmtNum(body.offset + rows.length)} of ${fmtNum(total)}` : "";
    pager.querySelector('[data-page="previous"]').disabled = body.offset === 0;
    pager.querySelector('[data-page="next"]').disabled = body.offset + rows.length >= total;
    if (card === BD_CARDS[0]) {
      $("bd-period").textContent =
        `${fmtDay(body.from)} – ${fmtDay(body.to)} (UTC days), compared with ${fmtDay(body.previous_from)} – ${fmtDay(body.previous_to)}.`;
    }
  }

  function loadBreakdowns() {
    return Promise.all(BD_CARDS.map((card) => loadBreakdown(card)));
  }

  // Something every card shows changed (the period, a filter): back to each card's first page.
  function changed(push) {
    for (const card of BD_CARDS) bd.offsets[card.id] = 0;
    writeUrl(push);
    renderControls();
    loadBreakdowns().catch(reportError);
    reloadActivityIfFiltered();
    reloadFunnelIfFiltered();
    reloadPeopleIfFiltered();
    followFilters();
  }

  function addFilter(key, value) {
    if (bd.filters.get(key) === value) return;
    bd.filters.delete(key); // re-added last: the chips keep the order of the clicks
    bd.filters.set(key, value);
    changed(true);
  }

  function removeFilter(key) {
    const chips = [...document.querySelectorAll("#bd-chips .chip")];
    const at = chips.findIndex((c) => c.dataset.filter === key);
    bd.filters.delete(key);
    changed(true);
    // The focus stays among the chips, or goes back to the period when none is left.
    const left = document.querySelectorAll("#bd-chips .chip");
    const next = left[Math.min(at, left.length - 1)] || document.querySelector('#bd-range [aria-pressed="true"]');
    if (next) next.focus();
  }

  function selectTab(card, dimension, focus) {
    if (bd.tabs[card.id] === dimension) return;
    bd.tabs[card.id] = dimension;
    bd.offsets[card.id] = 0;
    writeUrl(true);
    renderControls();
    if (focus) $(`bd-tab-${dimension}`).focus();
    loadBreakdown(card).catch(reportError);
  }

  function tabKeys(ev, card) {
    const at = card.tabs.indexOf(bd.tabs[card.id]);
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: card.tabs.length - 1 }[ev.key];
    if (to === undefined) return;
    ev.preventDefault();
    selectTab(card, card.tabs[(to + card.tabs.length) % card.tabs.length], true);
  }

  function turnPage(card, step) {
    bd.offsets[card.id] = Math.max(0, bd.offsets[card.id] + step * BD_LIMIT);
    loadBreakdown(card).catch(reportError);
  }

  function choosePeriod(choice) {
    const custom = $("bd-custom");
    if (choice === "custom") {
      custom.dataset.open = custom.hidden ? "true" : "false";
      renderControls();
      if (!custom.hidden) $("bd-from").focus();
      return;
    }
    custom.dataset.open = "false";
    if (bd.period === choice) return renderControls();
    Object.assign(bd, { period: choice, from: null, to: null });
    changed(true);
  }

  function applyCustomPeriod(ev) {
    ev.preventDefault();
    const from = $("bd-from").value;
    const to = $("bd-to").value;
    const error = $("bd-custom-error");
    error.textContent = "";
    if (!ISO_DAY.test(from) || !ISO_DAY.test(to)) return (error.textContent = "Pick both days.");
    if (from > to) return (error.textContent = "The first day comes after the last.");
    Object.assign(bd, { period: "custom", from, to });
    changed(true);
  }

  // The whole breakdown of the card's tab (every value, not only this page), period and filters.
  function downloadBreakdown(card, button) {
    const dimension = bd.tabs[card.id];
    return downloadCsv(projectPath("export/breakdown.csv"), bdQuery({ dimension }), `werkstroom-${dimension}.csv`, button);
  }

  // --- CSV downloads: fetched with the Authorization header, saved through a Blob --------------------------------
  function filenameFrom(disposition, fallback) {
    if (!disposition) return fallback;
    const star = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(disposition);
    if (star) {
      try {
        return decodeURIComponent(star[1].trim());
      } catch {
        /* fall through to the plain filename */
      }
    }
    const plain = /filename\s*=\s*"((?:[^"\\]|\\.)*)"|filename\s*=\s*([^;]+)/.exec(disposition);
    const name = plain ? (plain[1] ?? plain[2]).trim().replace(/\\(.)/g, "$1") : "";
    return name.replace(/[\\/]/g, "_") || fallback;
  }

  function download(kind, button) {
    let params = new URLSearchParams();
    if (kind === "users") params = usersQuery();
    else if (kind === "metrics") params = new URLSearchParams(metricsQuery());
    else if (kind === "activity") params = activityQuery();
    else if (kind === "online") params = new URLSearchParams(liveQuery());
    else if (kind === "sessions" && state.detail.personId) params.set("person_id", state.detail.personId);
    return downloadCsv(projectPath(`export/${kind}.csv`), params, `werkstroom-${kind}.csv`, button);
  }

  async function downloadCsv(path, params, fallback, button) {
    const query = params.toString();
    button.disabled = true;
    try {
      const response = await request(`${path}${query ? `?${query}` : ""}`);
      if (!response.ok) {
        let detail = null;
        try {
          detail = (await response.json()).detail;
        } catch {
          /* not JSON */
        }
        throw new ApiError(response.status, detail);
      }
      const blob = await response.blob();
      const name = filenameFrom(response.headers.get("Content-Disposition"), fallback);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: name, hidden: true });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      reportError(err);
    } finally {
      button.disabled = false;
    }
  }

  // --- snippet ------------------------------------------------------------------------------------------------------
  async function loadSnippet() {
    const body = await api(projectPath("snippet"));
    $("snippet-code").textContent = body.html;
    $("welcome-snippet").textContent = body.html;
    // The README's first event, with this project's key: a browser's User-Agent, or ingest
    // would rightly file curl's own as a bot.
    const event = {
      writeKey: body.write_key,
      anonymousId: "first-visitor",
      properties: { url: "https://example.com/", title: "Home" },
      context: { userAgent: "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0" },
    };
    $("welcome-curl").textContent =
      `curl -s ${body.ingest_url}/v1/page -H 'Content-Type: application/json' -d '${JSON.stringify(event, null, 2)}'`;
  }

  // --- an empty project: the snippet and a test event, until the first event arrives --------------------------
  function showWaiting(on) {
    $("welcome").hidden = !on;
    $("snippet-card").hidden = on; // the welcome card shows the same snippet, first
  }

  function noteFirstEvent() {
    if (state.waiting === false || !state.metrics) return;
    const total = state.metrics.total_users ? state.metrics.total_users.value : null;
    const empty = total === 0 && !state.live.count;
    if (empty && state.waiting === null) {
      state.waiting = true;
      showWaiting(true);
      $("users-empty").textContent = "No users yet: the first visitor appears here by itself.";
    } else if (!empty) {
      const was = state.waiting;
      state.waiting = false;
      showWaiting(false);
      $("users-empty").textContent = "No users match.";
      if (was) catchUp(15);
    }
  }

  // The first event is in: fill the rest of the page, again each second until the aggregator's
  // slower tables (persons, daily figures) have caught up with the live view, for `tries` s.
  async function catchUp(tries) {
    try {
      await Promise.all([loadMetrics(), loadActivity(), loadUsers(true), loadBreakdowns()]);
    } catch (err) {
      reportError(err);
    }
    const behind = !state.metrics?.total_users?.value || !$("users-table").tBodies[0].children.length;
    if (behind && tries > 1 && state.key) setTimeout(() => catchUp(tries - 1), 1000);
  }

  async function copySnippet(source, status) {
    const text = source.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API (plain http on a non-local host): select and copy the old way.
      const area = h("textarea", { class: "sr-only", readonly: true });
      area.value = text;
      document.body.appendChild(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      if (!ok) {
        status.textContent = "Copy failed: select the text and copy it by hand.";
        return;
      }
    }
    status.textContent = "Copied to the clipboard.";
    clearTimeout(copySnippet.timer);
    copySnippet.timer = setTimeout(() => (status.textContent = ""), 4000);
  }

  // --- wiring ---------------------------------------------------------------------------------------------------------
  function debounce(fn, ms) {
    let t;
    return (...args) => {
      clearTimeout(t);
      t = setTimeout(() => fn(...args), ms);
    };
  }

  function init() {
    $("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const key = $("read-key").value.trim();
      const error = $("login-error");
      error.textContent = "";
      if (!key) return (error.textContent = "Enter the project's read key.");
      const button = ev.submitter || $("login-form").querySelector("button");
      button.disabled = true;
      try {
        await login(key);
      } catch (err) {
        error.textContent = err instanceof TypeError ? "The server cannot be reached." : err.message;
      } finally {
        button.disabled = false;
      }
    });
    $("logout").addEventListener("click", () => logout(""));
    $("segment").addEventListener("change", () => loadUsers(true).catch(reportError));
    $("user-search").addEventListener("input", debounce(() => loadUsers(true).catch(reportError), 300));
    $("users-filter").addEventListener("submit", (ev) => {
      ev.preventDefault();
      loadUsers(true).catch(reportError);
    });
    $("users-more").addEventListener("click", () => loadUsers(false).catch(reportError));
    $("funnel-select").addEventListener("change", (ev) => loadFunnel(ev.target.value).catch(reportError));
    $("funnel-delete").addEventListener("click", () => deleteFunnel().catch(reportError));
    $("funnel-add-step").addEventListener("click", () => addStepRow());
    $("funnel-form").addEventListener("submit", createFunnel);
    document.body.appendChild(h("datalist", { id: "event-names" }, h("option", { value: "$page" })));
    resetStepRows();
    for (const button of document.querySelectorAll("[data-export]")) {
      button.addEventListener("click", () => download(button.dataset.export, button));
    }
    $("snippet-copy").addEventListener("click", () => copySnippet($("snippet-code"), $("snippet-status")));
    $("welcome-copy").addEventListener("click", () => copySnippet($("welcome-snippet"), $("welcome-status")));
    readUrl();
    buildBreakdowns();
    for (const button of document.querySelectorAll("#bd-range [data-range]")) {
      button.addEventListener("click", () => choosePeriod(button.dataset.range));
    }
    $("bd-custom").addEventListener("submit", applyCustomPeriod);
    $("bd-segment").addEventListener("change", (ev) => {
      if (ev.target.value) return addFilter("segment", ev.target.value);
      bd.filters.delete("segment");
      changed(true);
    });
    $("bd-clear").addEventListener("click", () => {
      bd.filters.clear();
      changed(true);
      document.querySelector('#bd-range [aria-pressed="true"]').focus();
    });
    // Back and forward move through the views (each filter, tab and period is a history entry).
    window.addEventListener("popstate", () => {
      readUrl();
      renderControls();
      if (state.key) loadBreakdowns().catch(reportError);
      if (state.key) reloadActivityIfFiltered();
      if (state.key) reloadFunnelIfFiltered();
      if (state.key) reloadPeopleIfFiltered();
      if (state.key) followFilters();
    });
    $("detail-close").addEventListener("click", closeDetail);
    $("detail-backdrop").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") closeDetail();
    });

    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) {
      login(saved).catch((err) => logout(err.status === 401 ? "The saved read key no longer works." : err.message));
    } else {
      $("read-key").focus();
    }
  }

  init();
})();
