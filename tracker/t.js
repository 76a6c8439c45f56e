/*! Werkstroom browser tracker v1 | Apache-2.0 | https://github.com/werkstroom/werkstroom */
/*
 * Sends Segment-format calls (page, track, identify) to a Werkstroom ingest service with
 * navigator.sendBeacon (a text/plain JSON body carrying the writeKey), falling back to
 * fetch({keepalive: true}). Plain ES5, no build step; see tracker/README.md for the API.
 */
(function (w, d) {
  "use strict";

  var VERSION = "1";
  var ANON_KEY = "werkstroom_aid";
  var USER_KEY = "werkstroom_uid";
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
  var memory = {};
  function load(key) {
    try {
      return w.localStorage.getItem(key);
    } catch (e) {
      return memory[key] || null;
    }
  }
  function save(key, value) {
    memory[key] = value;
    try {
      if (value === null) w.localStorage.removeItem(key);
      else w.localStorage.setItem(key, value);
    } catch (e) {
      /* private mode or storage disabled: keep the id for this page only */
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

  // --- transport ---------------------------------------------------------------------------
  function transmit(type, body) {
    if (!writeKey || !host) {
      if (w.console && !transmit.warned) w.console.warn("werkstroom: no data-write-key or ingest host; not sending");
      transmit.warned = true;
      return false;
    }
    var now = new Date().toISOString();
    body.type = type;
    body.writeKey = writeKey;
    body.anonymousId = anonymousId;
    if (userId && !body.userId) body.userId = userId;
    body.messageId = uuid();
    body.timestamp = now;
    body.sentAt = now;
    body.context = {
      page: pageContext(),
      userAgent: w.navigator.userAgent,
      locale: w.navigator.language,
      library: { name: "werkstroom.js", version: VERSION },
    };
    var url = host + "/v1/" + type;
    var data = JSON.stringify(body);
    try {
      if (data.length < BEACON_LIMIT && w.navigator.sendBeacon && w.navigator.sendBeacon(url, data)) return true;
    } catch (e) {
      /* sendBeacon throws on some invalid URLs; fall through to fetch */
    }
    if (typeof w.fetch === "function") {
      w.fetch(url, {
        method: "POST",
        body: data,
        headers: { "Content-Type": "text/plain" },
        keepalive: data.length < BEACON_LIMIT,
        credentials: "omit",
        mode: "cors",
      }).catch(function () {});
      return true;
    }
    return false;
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
    if (d.visibilityState === "hidden") return;
    lastBeat = Date.now();
    track("$heartbeat");
  }
  w.setInterval(heartbeat, HEARTBEAT_MS);
  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "visible" && Date.now() - lastBeat >= HEARTBEAT_MS) heartbeat();
  });

  // --- install the API and replay what the loader stub queued ---------------------------------
  var methods = { page: page, track: track, identify: identify, reset: reset };
  function call(args) {
    args = Array.prototype.slice.call(args || []);
    var fn = methods[args[0]];
    if (fn) fn.apply(null, args.slice(1));
  }
  api.page = page;
  api.track = track;
  api.identify = identify;
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

  var queuedPage = false;
  for (var i = 0; i < queued.length; i++) {
    if (queued[i] && queued[i][0] === "page") queuedPage = true;
  }
  if (autoPage && !queuedPage) page();
  for (var j = 0; j < queued.length; j++) call(queued[j]);
})(window, document);
