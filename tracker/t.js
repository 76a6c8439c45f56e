/*! Werkstroom browser tracker v1 | Apache-2.0 | https://github.com/werkstroom/werkstroom */
/*
 * Sends Segment-format calls (page, track, identify, alias) to a Werkstroom ingest service by
 * fetch (a text/plain JSON body carrying the writeKey), keeps each in a bounded localStorage
 * queue until ingest answered, retries failures with backoff, and hands what is still queued to
 * navigator.sendBeacon at page hide. Plain ES5, no build step; see tracker/README.md.
 */
(function (w, d) {
  "use strict";

  var VERSION = "1";
  var ANON_KEY = "werkstroom_aid";
  var USER_KEY = "werkstroom_uid";
  var QUEUE_KEY = "werkstroom_queue";
  var HEARTBEAT_MS = 30000;
  var BEACON_LIMIT = 60000; // browsers cap a beacon / keepalive body at 64 KiB

  var stub = w.werkstroom;
  if (stub && stub.loaded) return; // loaded twice: the first copy does the work

  var api = stub && typeof stub === "object" && !Array.isArray(stub) ? stub : {};
  var queued = Array.isArray(stub) ? stub : api.q || [];
  var script = d.currentScript || d.querySelector("script[data-write-key]") || findScript();

  function findScript() {
    var all = d.getElementsByTagName("script");
    for (var i = all.length - 1; i >= 0; i--) {
      if (/\/t\.js(\?|#|$)/.test(all[i].src || "")) return all[i];
    }
    return null;
  }

  function attr(name) {
    return (script && script.getAttribute(name)) || "";
  }

  var writeKey = attr("data-write-key") || api.writeKey || "";
  var host = attr("data-host") || api.host || "";
  if (!host && script && script.src) host = script.src.replace(/\/t\.js([?#].*)?$/, "");
  host = String(host).replace(/\/+$/, "");
  var autoPage = attr("data-auto-page") !== "false" && api.autoPage !== false;

  // --- storage: localStorage when the browser lets us, memory otherwise ---------------------
  var memory = {}; // what localStorage refused (disabled, private mode, full), for this page
  function load(key) {
    if (!(key in memory)) {
      try {
        return w.localStorage.getItem(key);
      } catch (e) {
        /* storage disabled */
      }
    }
    return memory[key] || null;
  }
  function save(key, value) {
    try {
      if (value === null) w.localStorage.removeItem(key);
      else w.localStorage.setItem(key, value);
      delete memory[key];
    } catch (e) {
      memory[key] = value;
    }
  }

  function uuid() {
    var c = w.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = "";
    for (var j = 0; j < 16; j++) h += (b[j] + 0x100).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  var anonymousId = load(ANON_KEY);
  if (!anonymousId) {
    anonymousId = uuid();
    save(ANON_KEY, anonymousId);
  }
  var userId = load(USER_KEY);
  var lastUrl = w.location.href;
  var referrer = d.referrer || "";

  function pageContext() {
    var l = w.location;
    return { url: l.href, path: l.pathname, search: l.search, title: d.title, referrer: referrer };
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  // --- the queue: every call is stored before it is sent and removed once ingest answered ---
  // Kept in localStorage (memory when refused), shared by the site's tabs, so a call that meets
  // a network error, a 429 or a 5xx is sent again later, on this page or the next one. Bounded:
  // the oldest calls go first past MAX_QUEUE calls, MAX_AGE_MS or MAX_QUEUE_CHARS, and their
  // number travels as properties.$dropped of the next call that gets through.
  var MAX_QUEUE = 100;
  var MAX_AGE_MS = 864e5; // 24 h
  var MAX_QUEUE_CHARS = 250000;
  var BATCH_CHARS = 400000; // ingest takes batches up to 500 KB
  var RETRY_MIN_MS = 1000;
  var RETRY_MAX_MS = 60000;
  var REQUEST_TIMEOUT_MS = 30000; // a request that hangs is given up and retried
  var inflight = null; // messageIds of the request under way (one at a time)
  var attempts = 0; // failed sends in a row, on this page
  var due = 0; // this page's backoff: no send before (ms)
  var timer = null;
  var beaconed = {}; // messageIds sent by beacon at a page hide (each once per page)

  function readQueue() {
    var s = null;
    try {
      s = JSON.parse(load(QUEUE_KEY));
    } catch (e) {
      /* unreadable: start again */
    }
    if (!s || !Array.isArray(s.q)) return { q: [], d: 0, r: 0 };
    s.q = s.q.filter(function (e) {
      return e && e.messageId; // what it removes once sent
    });
    return s;
  }

  /** Writes the queue back after applying the caps (oldest first out, counted in `d`). */
  function writeQueue(s) {
    var now = Date.now();
    var chars = JSON.stringify(s.q).length;
    while (s.q.length) {
      var oldest = s.q[0];
      var age = now - (Date.parse(oldest.timestamp) || now);
      if (s.q.length <= MAX_QUEUE && age <= MAX_AGE_MS && chars <= MAX_QUEUE_CHARS) break;
      chars -= JSON.stringify(oldest).length + 1;
      s.q.shift();
      s.d = (s.d || 0) + 1;
    }
    save(QUEUE_KEY, s.q.length || s.d || s.r > now ? JSON.stringify(s) : null);
    return s;
  }

  function schedule(ms) {
    if (timer) w.clearTimeout(timer);
    timer = w.setTimeout(function () {
      timer = null;
      flush();
    }, ms);
  }

  /** Retry-After in ms (delta-seconds or an HTTP date), 0 when absent. */
  function retryAfter(value) {
    if (!value) return 0;
    var ms = /^\s*\d+\s*$/.test(value) ? value * 1000 : Date.parse(value) - Date.now();
    return ms > 0 ? Math.min(ms, MAX_AGE_MS) : 0;
  }

  /** The queued calls as one request body: alone to /v1/<type>, or several to /v1/batch.
   *  sentAt is now (ingest corrects each timestamp with it); messageId and timestamp are kept. */
  function request(s, events) {
    var dropped = s.d || 0;
    var sentAt = new Date().toISOString();
    var first = events[0];
    if (dropped) {
      var props = {};
      for (var k in first.properties) props[k] = first.properties[k];
      props.$dropped = dropped;
      first = JSON.parse(JSON.stringify(first));
      first.properties = props;
    }
    if (events.length === 1) {
      var single = {};
      for (var f in first) single[f] = first[f];
      single.sentAt = sentAt;
      return { url: host + "/v1/" + first.type, data: JSON.stringify(single), dropped: dropped };
    }
    var batch = [first].concat(events.slice(1));
    return {
      url: host + "/v1/batch",
      data: JSON.stringify({ writeKey: writeKey, sentAt: sentAt, batch: batch }),
      dropped: dropped,
    };
  }

  /** Sends what is queued, unless a request is under way or ingest asked us to wait. */
  function flush() {
    if (inflight || typeof w.fetch !== "function") return;
    var s = writeQueue(readQueue());
    if (!s.q.length) return;
    var wait = Math.max(s.r || 0, due) - Date.now();
    if (wait > 0) return schedule(wait);
    var events = [];
    var chars = 0;
    for (var i = 0; i < s.q.length; i++) {
      chars += JSON.stringify(s.q[i]).length + 1;
      if (events.length && chars > BATCH_CHARS) break;
      events.push(s.q[i]);
    }
    var req = request(s, events);
    inflight = {};
    for (var j = 0; j < events.length; j++) inflight[events[j].messageId] = 1;
    var done = function (status, after) {
      var sent = inflight;
      inflight = null;
      var q = readQueue();
      // 2xx: stored. Another 4xx (bad event, unknown key): sending it again cannot succeed.
      if ((status >= 200 && status < 300) || (status >= 400 && status < 500 && status !== 429)) {
        var kept = [];
        for (var n = 0; n < q.q.length; n++) if (!sent[q.q[n].messageId]) kept.push(q.q[n]);
        q.q = kept;
        q.d = Math.max(0, (q.d || 0) - req.dropped);
        attempts = due = 0;
        writeQueue(q);
        if (q.q.length) flush();
        return;
      }
      // A network error, 429 or 5xx: exponential backoff with jitter, at least what ingest asked.
      var backoff = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * Math.pow(2, attempts++));
      var delay = backoff / 2 + (Math.random() * backoff) / 2;
      var asked = retryAfter(after);
      if (asked) q.r = Date.now() + asked;
      writeQueue(q);
      due = Date.now() + Math.max(delay, asked);
      schedule(due - Date.now());
    };
    var abort = w.AbortController ? new w.AbortController() : null;
    if (abort) w.setTimeout(function () {
      abort.abort();
    }, REQUEST_TIMEOUT_MS);
    try {
      w.fetch(req.url, {
        method: "POST",
        body: req.data,
        headers: { "Content-Type": "text/plain" },
        keepalive: req.data.length < BEACON_LIMIT,
        credentials: "omit",
        mode: "cors",
        signal: abort ? abort.signal : undefined,
      }).then(
        function (res) {
          done(res.status, res.headers.get("Retry-After"));
        },
        function () {
          done(0);
        }
      );
    } catch (e) {
      done(0); // e.g. an invalid host: retried with backoff like a network error
    }
  }

  /** At page hide: what is queued goes by beacon (the answer cannot be seen, so it stays queued
   *  and is sent again on the next page; ingest and the aggregator de-duplicate by messageId). */
  function onHide() {
    var s = readQueue();
    if (!w.navigator.sendBeacon || s.r > Date.now()) return;
    var batch = [];
    var chars = 0;
    var send = function () {
      if (batch.length) {
        var body = JSON.stringify({ writeKey: writeKey, sentAt: new Date().toISOString(), batch: batch });
        try {
          w.navigator.sendBeacon(host + "/v1/batch", body);
        } catch (e) {
          /* an invalid URL: nothing more to do at unload */
        }
      }
      batch = [];
      chars = 0;
    };
    for (var i = 0; i < s.q.length; i++) {
      var e = s.q[i];
      var size = JSON.stringify(e).length + 1;
      if (beaconed[e.messageId] || (inflight && inflight[e.messageId]) || size > BEACON_LIMIT) continue;
      if (chars + size > BEACON_LIMIT) send();
      beaconed[e.messageId] = 1;
      batch.push(e);
      chars += size;
    }
    send();
  }

  /** Builds the Segment call (its messageId and timestamp fixed now, for every retry), queues
   *  it and sends what is queued. */
  function transmit(type, body) {
    if (!writeKey || !host) {
      if (w.console && !transmit.warned) w.console.warn("werkstroom: no data-write-key or ingest host; not sending");
      transmit.warned = true;
      return false;
    }
    body.type = type;
    body.writeKey = writeKey;
    body.anonymousId = anonymousId;
    if (userId && !body.userId) body.userId = userId;
    body.messageId = uuid();
    body.timestamp = new Date().toISOString();
    body.context = {
      page: pageContext(),
      userAgent: w.navigator.userAgent,
      locale: w.navigator.language,
      library: { name: "werkstroom.js", version: VERSION },
    };
    var s = readQueue();
    s.q.push(body);
    writeQueue(s);
    flush();
    return true;
  }

  // --- the public calls ----------------------------------------------------------------------
  /** page([name], [properties]): a page view of the current location. */
  function page(name, properties) {
    if (isObject(name)) {
      properties = name;
      name = undefined;
    }
    var props = {};
    var ctx = pageContext();
    for (var k in ctx) props[k] = ctx[k];
    if (isObject(properties)) for (var p in properties) props[p] = properties[p];
    var body = { properties: props };
    if (typeof name === "string" && name) body.name = name;
    lastUrl = w.location.href;
    return transmit("page", body);
  }

  /** track(event, [properties]): a custom event. */
  function track(event, properties) {
    if (typeof event !== "string" || !event) return false;
    return transmit("track", { event: event, properties: isObject(properties) ? properties : {} });
  }

  /** identify(userId, [traits]) or identify(traits): who the visitor is. */
  function identify(id, traits) {
    if (isObject(id)) {
      traits = id;
      id = userId;
    }
    if (id !== undefined && id !== null && id !== "") {
      userId = String(id);
      save(USER_KEY, userId);
    }
    return transmit("identify", { userId: userId || undefined, traits: isObject(traits) ? traits : {} });
  }

  /** alias(userId, [previousId]): `previousId` (default: the user id, else the anonymous id) is
   *  the same person as `userId`. As in analytics.js, later calls keep the current user id. */
  function alias(to, from) {
    if (to === undefined || to === null || to === "") return false;
    if (from === undefined || from === null || from === "") from = userId || anonymousId;
    return transmit("alias", { userId: String(to), previousId: String(from) });
  }

  /** reset(): forget the user id and start a new anonymous id (call it at logout). */
  function reset() {
    userId = null;
    save(USER_KEY, null);
    anonymousId = uuid();
    save(ANON_KEY, anonymousId);
  }

  // --- single-page apps: a page() for every history change to a new URL --------------------
  function withoutHash(url) {
    var i = url.indexOf("#");
    return i < 0 ? url : url.slice(0, i);
  }
  function onRouteChange() {
    var href = w.location.href;
    if (withoutHash(href) === withoutHash(lastUrl)) return;
    referrer = lastUrl;
    page();
  }
  function wrap(name) {
    var original = w.history && w.history[name];
    if (typeof original !== "function") return;
    w.history[name] = function () {
      var result = original.apply(this, arguments);
      onRouteChange();
      return result;
    };
  }
  wrap("pushState");
  wrap("replaceState");
  w.addEventListener("popstate", onRouteChange);

  // --- heartbeat: keeps the visitor "online" while the tab is visible ------------------------
  var lastBeat = Date.now();
  function heartbeat() {
    // Not while calls wait to be sent: they show the activity, and a late heartbeat means nothing.
    if (d.visibilityState === "hidden" || readQueue().q.length) return;
    lastBeat = Date.now();
    track("$heartbeat");
  }
  w.setInterval(heartbeat, HEARTBEAT_MS);
  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") onHide();
    else if (Date.now() - lastBeat >= HEARTBEAT_MS) heartbeat();
  });
  w.addEventListener("pagehide", onHide);
  w.addEventListener("online", function () {
    attempts = due = 0;
    flush();
  });

  // --- install the API and replay what the loader stub queued ---------------------------------
  var methods = { page: page, track: track, identify: identify, alias: alias, reset: reset };
  function call(args) {
    args = Array.prototype.slice.call(args || []);
    var fn = methods[args[0]];
    if (fn) fn.apply(null, args.slice(1));
  }
  api.page = page;
  api.track = track;
  api.identify = identify;
  api.alias = alias;
  api.reset = reset;
  api.anonymousId = function () {
    return anonymousId;
  };
  api.userId = function () {
    return userId;
  };
  api.writeKey = writeKey;
  api.host = host;
  api.version = VERSION;
  api.loaded = true;
  api.q = { push: call }; // late werkstroom.q.push([...]) calls run at once
  w.werkstroom = api;
  // The original product's page API: pages instrumented for it keep working.
  w.vibeTrack = function (event, properties) {
    return track(event, properties);
  };
  w.vibeIdentify = function (id, traits) {
    return identify(id, traits);
  };

  var queuedPage = false;
  for (var i = 0; i < queued.length; i++) {
    if (queued[i] && queued[i][0] === "page") queuedPage = true;
  }
  if (autoPage && !queuedPage) page();
  for (var j = 0; j < queued.length; j++) call(queued[j]);
  flush(); // what earlier pages left queued
})(window, document);
