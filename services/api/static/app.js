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
    live: { controller: null, rows: [], receivedAt: 0 },
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
    const bots = f.bots ? ` · ${plural(f.bots, "bot event")} filtered today` : "";
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
    document.title = `${state.project.name} · Werkstroom`;
    const safely = (fn) => () => fn().catch(reportError);
    safely(loadMetrics)();
    safely(loadActivity)();
    safely(loadFunnels)();
    safely(() => loadUsers(true))();
    safely(loadSnippet)();
    startLive();
    state.timers.push(setInterval(safely(loadMetrics), METRICS_EVERY_MS));
    state.timers.push(setInterval(safely(loadActivity), ACTIVITY_EVERY_MS));
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

  async function loadMetrics() {
    const body = await api(projectPath("metrics"));
    state.metrics = body.metrics;
    if (state.live.count !== undefined && state.metrics.online_now) state.metrics.online_now.value = state.live.count;
    renderMetrics();
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

  async function startLive() {
    stopLive();
    const controller = new AbortController();
    state.live.controller = controller;
    const { signal } = controller;
    let attempt = 0;
    let retryBase = 1000;
    while (!signal.aborted) {
      try {
        const response = await request(projectPath("live"), { headers: { Accept: "text/event-stream" }, signal });
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        setLiveState("on", "live");
        attempt = 0;
        await readEvents(response.body, signal, (event, data) => {
          if (event === "online") renderLive(JSON.parse(data));
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

  function renderLive(body) {
    if (body.as_of) noteFreshness(body);
    state.live.rows = body.users || [];
    state.live.count = body.online;
    state.live.receivedAt = Date.now();
    $("online-count").textContent = fmtNum(body.online);
    if (state.metrics && state.metrics.online_now) {
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
  async function loadActivity() {
    const body = await api(`${projectPath("activity")}?days=30`);
    const days = body.days || [];
    const pick = (k) => days.map((d) => d[k] || 0);
    const css = getComputedStyle(document.documentElement);
    const color = (v) => css.getPropertyValue(v).trim();
    window.WerkstroomChart.line($("activity-chart"), {
      title: "Daily activity over the last 30 days",
      labels: days.map((d) => d.day),
      series: [
        { name: "Active users", color: color("--s1"), values: pick("active_users") },
        { name: "New users", color: color("--s3"), values: pick("new_users") },
        { name: "Sessions", color: color("--s4"), values: pick("sessions") },
        { name: "Page views", color: color("--s2"), values: pick("page_views") },
      ],
    });
    renderBots(days);
  }

  // Events filtered as bots are counted in no series above; an empty chart says why it is empty.
  function renderBots(days) {
    const sum = (k) => days.reduce((n, d) => n + (d[k] || 0), 0);
    const bots = sum("bots");
    const line = $("activity-bots");
    line.hidden = bots === 0;
    if (!bots) return;
    const n = `${plural(bots, "event")} from bots and scripts`;
    line.textContent = sum("events")
      ? `Not counted above: ${n} (crawlers, curl, python-requests, headless browsers) in the last 30 days.`
      : `No visitor events yet, but ${n} (crawlers, curl, python-requests, headless browsers) ` +
        "were filtered in the last 30 days. To test, send a browser's User-Agent: see the README, " +
        "“Send an event”.";
    line.classList.toggle("empty", !sum("events"));
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
      $("funnel-steps").textContent = "";
      return;
    }
    if (state.funnels.some((f) => f.funnel_id === previous)) select.value = previous;
    await loadFunnel(select.value);
  }

  async function loadFunnel(funnelId) {
    const body = await api(`${projectPath(`funnels/${encodeURIComponent(funnelId)}`)}?days=30`);
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
  function usersQuery() {
    const params = new URLSearchParams({ segment: $("segment").value });
    const q = $("user-search").value.trim();
    if (q) params.set("q", q);
    return params;
  }

  async function loadUsers(reset) {
    const seq = ++state.users.seq; // answers to older filters are dropped
    const params = usersQuery();
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
      ...fact("Plan", person.plan || "–"),
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

  async function download(kind, button) {
    let params = new URLSearchParams();
    if (kind === "users") params = usersQuery();
    else if (kind === "activity") params.set("days", "30");
    else if (kind === "sessions" && state.detail.personId) params.set("person_id", state.detail.personId);
    const query = params.toString();
    button.disabled = true;
    try {
      const response = await request(`${projectPath(`export/${kind}.csv`)}${query ? `?${query}` : ""}`);
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
      const name = filenameFrom(response.headers.get("Content-Disposition"), `werkstroom-${kind}.csv`);
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
      await Promise.all([loadMetrics(), loadActivity(), loadUsers(true)]);
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
