// logger-service live viewer: speaks the /ws protocol (README, docs/ws-protocol.schema.json).
// No build step and no dependencies: plain DOM, one WebSocket to the host that served the page.
//
// Page parameters (all optional): max (rows kept, default 1000), tail (records replayed on the
// first connection, default 100), level, service, q, regex (the filter to start with),
// attr.<path>=<value> (attribute conditions, kept until "Reset filter"), levels (the exact set of
// levels shown, when the chart's legend made one that "level" cannot say), since (start from
// these Kafka positions instead of tail) and opened (when the view was first opened). The page
// keeps its URL up to date, so copying it shares the same view.
//
// Levels: the protocol filters by a minimum level only. The page keeps the set of levels shown;
// the server's filter is the lowest level shown (none while "unknown" is shown, since a minimum
// leaves unknown levels out), and the levels hidden above it are hidden here: their new records
// are counted in the chart but not added to the table, and rows already there leave it until the
// level is shown again (logtable.js draws the levels shown only).
(() => {
  "use strict";

  const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"];
  const RETRY_BASE_MS = 500;
  const RETRY_MAX_MS = 10000;
  const PONG_TIMEOUT_MS = 10000;
  const DUPLICATE_WINDOW = 1000; // an offset this far behind the last one seen is a reset topic, not a repeat
  const MAX_NOTICES = 5;
  const FILTER_DEBOUNCE_MS = 500;
  const CHART_WINDOW_MS = 5 * 60 * 1000;
  const CHART_BUCKET_MS = 5000;
  const COPIED_MS = 1500;
  const STACK = window.VolumeChart.STACK; // LEVELS and "unknown"

  const params = new URLSearchParams(location.search);
  const MAX_ROWS = intParam("max", 1000, 10, 100000);
  const TAIL = intParam("tail", 100, 0, 100000);
  const OPENED = openedParam();

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), statusText: $("status-text"), serverInfo: $("server-info"),
    form: $("filters"), level: $("level"), service: $("service"), q: $("q"), regex: $("regex"),
    resetFilter: $("reset-filter"), pause: $("pause"), clear: $("clear"), follow: $("follow"),
    reconnect: $("reconnect"), copyLink: $("copy-link"), opened: $("opened"),
    received: $("count-received"), shown: $("count-shown"),
    maxRows: $("max-rows"), dropped: $("count-dropped"), activeFilter: $("active-filter"),
    notices: $("notices"), scroller: $("scroller"), rows: $("rows"), empty: $("empty"),
  };

  const state = {
    ws: null,
    gotHello: false,        // on the current connection
    connections: 0,         // hellos received so far
    attempt: 0,             // reconnect attempts since the last hello
    retryTimer: 0,
    probed: 0,              // /health probes during this outage
    refusals: 0,            // failed upgrades while plain HTTP worked, since the last hello
    noTail: false,          // the server refused ?tail= (it keeps fewer records): ask for none
    plainQuery: false,      // connect without filter and tail (the server refused them)
    queryHad: { tail: false, filter: false },
    positions: new Map(),   // "topic:partition" -> offset: where to resume (?since=)
    seen: new Map(),        // "topic:partition" -> offset of the last record shown (duplicates)
    active: {},             // the filter in effect, as the server said (hello, subscribed): with
                            // authentication on, what was asked AND what the token may see
    asked: {},              // what this page asked for and the server took (the query, subscribe)
    queryFilter: {},        // the filter in the query of the connection being opened
    subscribingTo: null,    // the filter of the subscribe awaiting its answer
    authPending: false,     // an auth message (a fresh token) awaits its answer
    signedOut: false,       // no usable token: no connection until one is given
    attributes: attributeParams(), // attr.* conditions from the page URL
    shown: new Set(STACK),  // levels shown (see the top of this file)
    since: sinceParam(),    // positions from the page URL (?since=), kept in it
    lastRecordAt: 0,        // when the last record arrived (Date.now()): where a hole begins
    subscribing: false,
    paused: false,          // what the user asked for
    serverPaused: false,    // what the server confirmed
    held: [],               // records that arrived after Pause was pressed
    received: 0,
    dropped: 0,
    lastMessageAt: 0,
    pingSentAt: 0,
    pingIntervalMs: 25000,
  };
  let filterTimer = 0;
  let chart = null;
  let table = null;
  let signin = null;

  // -- formatting ---------------------------------------------------------------------------

  const numberFormat = new Intl.NumberFormat("en");
  const fmt = (n) => numberFormat.format(n);
  const pad = (n, width = 2) => String(n).padStart(width, "0");

  function intParam(name, fallback, low, high) {
    const raw = params.get(name);
    if (raw === null || !/^\d+$/.test(raw)) return fallback;
    return Math.min(high, Math.max(low, Number(raw)));
  }

  function openedParam() {
    const raw = params.get("opened");
    if (raw && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(raw) && parseTime(raw)) return raw;
    return new Date().toISOString().slice(0, 19) + "Z";
  }

  function sinceParam() {
    // "topic:partition:offset[,…]", as the server takes it; anything else is ignored.
    const positions = new Map();
    for (const item of (params.get("since") || "").split(",")) {
      const match = /^(.+):(\d+):(-1|\d+)$/.exec(item.trim());
      if (match) positions.set(`${match[1]}:${match[2]}`, Number(match[3]));
    }
    return positions;
  }

  function attributeParams() {
    const out = {};
    for (const [key, value] of params) {
      if (key.startsWith("attr.") && key.length > 5) out[key.slice(5)] = value;
    }
    return out;
  }

  function parseTime(iso) {
    // "2026-11-27T11:36:57.123456789Z": Date keeps milliseconds.
    const date = new Date(typeof iso === "string" && iso.length > 23 ? iso.slice(0, 23) + "Z" : iso);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  function shortTime(iso) {
    const d = parseTime(iso);
    if (!d) return String(iso);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function localTime(iso) {
    const d = parseTime(iso);
    return d ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${shortTime(iso)}` : null;
  }

  function longTime(iso) {
    const local = localTime(iso);
    return local ? `${local} local (${iso})` : String(iso);
  }

  function describeFilter(f) {
    const parts = [];
    if (f.level) parts.push(`level ≥ ${f.level}`);
    if (f.service && f.service.length) parts.push(`service ${f.service.join(", ")}`);
    if (f.q) parts.push(`text “${f.q}”`);
    if (f.regex) parts.push(`regex /${f.regex}/`);
    for (const [k, v] of Object.entries(f.attributes || {})) parts.push(`${k} = ${v}`);
    return parts.length ? parts.join(" · ") : "everything";
  }

  function closeReason(code) {
    switch (code) {
      case 1000: return "The server closed the connection";
      case 1001: return "The server is restarting";
      case 1008: return "The server closed the connection (this page fell behind)";
      case 1011: return "The server stopped hearing from this page";
      case 4000: return "The server stopped answering";
      default: return "The connection was lost";
    }
  }

  // -- filters ------------------------------------------------------------------------------

  function desiredFilter() {
    const f = {};
    const level = serverLevel(state.shown);
    if (level) f.level = level;
    const services = el.service.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (services.length) f.service = services;
    const text = el.q.value;
    if (text.trim()) {
      if (el.regex.checked) f.regex = text;
      else f.q = text;
    }
    if (Object.keys(state.attributes).length) f.attributes = { ...state.attributes };
    return f;
  }

  function canonical(f) {
    // As the server describes a filter: services sorted, text lower-cased.
    const attributes = Object.entries(f.attributes || {}).map(([k, v]) => [k, String(v)]).sort();
    return JSON.stringify([f.level || "", [...(f.service || [])].sort(), (f.q || "").toLowerCase(),
      f.regex || "", attributes]);
  }

  const sameFilter = (a, b) => canonical(a) === canonical(b);

  function appendFilter(query, f) {
    if (f.level) query.set("level", f.level);
    if (f.service && f.service.length) query.set("service", f.service.join(","));
    if (f.q) query.set("q", f.q);
    if (f.regex) query.set("regex", f.regex);
    for (const [k, v] of Object.entries(f.attributes || {})) query.set(`attr.${k}`, String(v));
  }

  // -- levels shown ---------------------------------------------------------------------------

  function shownFromMinimum(level) {
    return new Set(LEVELS.includes(level) ? LEVELS.slice(LEVELS.indexOf(level)) : STACK);
  }

  function serverLevel(shown) {
    if (shown.has("unknown")) return ""; // any minimum would leave unknown levels out
    return LEVELS.find((level) => shown.has(level)) || "";
  }

  function minimumOf(shown) {
    // The minimum level that shows exactly these levels ("" for all), or null if none does.
    const level = serverLevel(shown);
    const same = shownFromMinimum(level);
    return same.size === shown.size && [...same].every((l) => shown.has(l)) ? level : null;
  }

  function hiddenHere() {
    // Levels hidden by this page although the server's filter lets them through.
    const level = state.active.level;
    return STACK.filter((l) => !state.shown.has(l)
      && !(level && (l === "unknown" || LEVELS.indexOf(l) < LEVELS.indexOf(level))));
  }

  function isShown(level) {
    return state.shown.has(STACK.includes(level) ? level : "unknown");
  }

  function toggleLevel(level) {
    // From the chart (a bar or the legend). Hiding the last level shown shows them all again.
    const shown = new Set(state.shown);
    if (shown.has(level)) shown.delete(level);
    else shown.add(level);
    setShown(shown.size ? shown : new Set(STACK));
  }

  function setShown(shown) {
    state.shown = shown;
    showLevelControls();
    applyFilter();
  }

  function showLevelControls() {
    const minimum = minimumOf(state.shown);
    el.level.value = minimum === null ? "custom" : minimum;
    if (table) table.render(); // rows of the levels hidden leave the table, those shown come back
    if (chart) chart.draw();
  }

  function loadFilterFromPage() {
    const level = (params.get("level") || "").toLowerCase();
    const levels = (params.get("levels") || "").toLowerCase().split(",").filter((l) => STACK.includes(l));
    state.shown = levels.length ? new Set(levels) : shownFromMinimum(level);
    el.service.value = params.getAll("service").join(", ");
    if (params.get("regex")) {
      el.q.value = params.get("regex");
      el.regex.checked = true;
    } else {
      el.q.value = params.get("q") || "";
    }
  }

  function viewQuery(f) {
    // The page parameters that reopen this view (filter, levels shown, row cap).
    const query = new URLSearchParams();
    if (params.has("max")) query.set("max", String(MAX_ROWS));
    appendFilter(query, f);
    if (minimumOf(state.shown) === null) query.set("levels", STACK.filter((l) => state.shown.has(l)).join(","));
    return query;
  }

  function positionsText(positions) {
    return [...positions].map(([key, offset]) => `${key}:${offset}`).join(",");
  }

  function rememberFilterInPage(f) {
    // Reloading, bookmarking or copying the page's URL keeps the view (no request is made).
    const query = viewQuery(f);
    if (state.since.size) query.set("since", positionsText(state.since));
    else query.set("tail", String(TAIL));
    query.set("opened", OPENED);
    history.replaceState(null, "", `${location.pathname}?${query}${location.hash}`);
  }

  function resumeLink(record) {
    // This view, starting at the record: since= names the record before it on its partition.
    const query = viewQuery(desiredFilter());
    query.set("since", `${record.topic}:${record.partition}:${record.offset - 1}`);
    return `${location.pathname}?${query}`;
  }

  function applyFilter() {
    clearTimeout(filterTimer);
    const wanted = desiredFilter();
    rememberFilterInPage(wanted);
    if (sameFilter(wanted, state.asked)) {
      state.subscribing = false;
      markFilterInvalid(false);
      showActiveFilter(); // the levels hidden here may have changed
      return;
    }
    if (state.gotHello) sendSubscribe(wanted);
    // Not connected: the next hello compares and subscribes.
  }

  function sendSubscribe(f) {
    state.subscribing = true;
    state.subscribingTo = f;
    send({ type: "subscribe", ...f });
    el.activeFilter.textContent = `Filter: ${describeFilter(f)} (applying…)`;
  }

  function markFilterInvalid(invalid) {
    for (const input of [el.service, el.q]) {
      if (invalid) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
  }

  function showActiveFilter() {
    const hidden = hiddenHere();
    el.activeFilter.textContent = `Filter: ${describeFilter(state.active)}`
      + (hidden.length ? ` · hidden here: ${hidden.join(", ")}` : "");
  }

  // -- connection ---------------------------------------------------------------------------

  function wsUrl() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    const query = new URLSearchParams();
    state.queryFilter = state.plainQuery ? {} : (state.connections ? state.asked : desiredFilter());
    appendFilter(query, state.queryFilter);
    const filtered = [...query.keys()].length > 0;
    if (state.positions.size) {
      query.set("since", positionsText(state.positions));
    } else if (!state.connections && TAIL && !state.noTail && !state.plainQuery) {
      query.set("tail", String(TAIL));
    }
    state.queryHad = { tail: query.has("tail"), filter: filtered };
    url.search = query.toString();
    return url.href;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    if (state.ws) return;
    el.reconnect.hidden = true;
    setStatus("connecting", state.connections ? "Reconnecting…" : "Connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl(), signin.protocols());
    } catch (error) {
      notice("error", `Cannot open the WebSocket: ${error.message}`);
      return;
    }
    state.ws = ws;
    state.gotHello = false;
    ws.onmessage = (event) => { if (state.ws === ws) onMessage(event.data); };
    ws.onclose = (event) => { if (state.ws === ws) lost(event.code, event.reason); };
    ws.onerror = () => {}; // a close event follows
  }

  function lost(code, reason) {
    const wasLive = state.gotHello;
    state.ws = null;
    state.gotHello = false;
    state.serverPaused = false;
    state.pingSentAt = 0;
    state.authPending = false;
    if (code === 1008 && reason === "token expired") {
      // Reconnecting with the same token would be refused: wait for a fresh one.
      table.marker("lost", "Your token expired: the server closed the connection.");
      signin.expired();
      signedOut();
      return;
    }
    if (wasLive) table.marker("lost", `${closeReason(code)} (code ${code}).`);
    scheduleReconnect(wasLive ? closeReason(code) : "Cannot reach the server");
    if (!wasLive) probe(state.queryHad);
  }

  function dropSocket(code) {
    // A connection that stopped answering: forget it now rather than wait for TCP.
    const ws = state.ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = null;
    try { ws.close(); } catch (_) { /* already closing */ }
    lost(code);
  }

  function scheduleReconnect(why) {
    const step = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** state.attempt);
    const delay = Math.round(step / 2 + (Math.random() * step) / 2);
    state.attempt += 1;
    setStatus("waiting", `${why}. Reconnecting in ${Math.max(1, Math.round(delay / 1000))} s (attempt ${state.attempt})…`);
    el.reconnect.hidden = false;
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (state.ws) return;
    state.attempt = 0;
    connect();
  }

  function closeQuietly() {
    // This page closes its connection itself (a new token, signing out): no reconnect follows.
    const ws = state.ws;
    clearTimeout(state.retryTimer);
    if (!ws) return;
    ws.onmessage = ws.onclose = null;
    try { ws.close(1000); } catch (_) { /* already closing */ }
    state.ws = null;
    state.gotHello = false;
    state.serverPaused = false;
    state.authPending = false;
  }

  function reopen(why) {
    // A new connection now, resuming after the last record received (?since=).
    if (state.gotHello) table.marker("lost", why);
    closeQuietly();
    state.signedOut = false;
    reconnectNow();
  }

  function signedOut() {
    // Waiting for a token (signin.js shows the form and says why).
    closeQuietly();
    state.signedOut = true;
    el.reconnect.hidden = true;
    setStatus("signin", "Sign-in needed");
  }

  function useNewToken() {
    // A fresh token that api/session accepted: hand it to the live connection before the old
    // one expires (answered with authenticated), or connect with it.
    if (state.ws && state.gotHello) {
      state.authPending = true;
      send({ type: "auth", token: signin.token });
    } else {
      reopen("Connecting with the new token.");
    }
  }

  function signOut() {
    if (state.gotHello) table.marker("lost", "Signed out.");
    signedOut();
  }

  async function probe(had) {
    // An upgrade failed. If plain HTTP works, the server is up and refused it: a ?tail= larger
    // than it keeps (400), a filter it rejected (400), this page's origin (403) or a full or
    // stopping worker (503). Browsers do not tell which, so find out by elimination.
    if (state.probed >= 6) return;
    state.probed += 1;
    if (signin.on || signin.token) {
      // Refused for its token (401, 403)? Browsers do not tell; api/session does.
      if (!(await signin.check())) {
        signedOut();
        return;
      }
    }
    let up = false;
    try {
      const response = await fetch(new URL("health", location.href), { cache: "no-store" });
      up = response.ok || response.status === 503;
    } catch (_) {
      return; // the server is down: keep retrying quietly
    }
    if (!up || state.gotHello) return;
    if (had.tail) {
      state.noTail = true; // no history then, rather than no connection
      retrySoon();
      return;
    }
    state.refusals += 1;
    if (state.refusals < 2) return; // once may be a server that has just come back
    if (had.filter) {
      state.plainQuery = true;
      notice("error", "The server refused the connection with this filter; connecting without it.");
      retrySoon();
    } else if (state.refusals === 2) {
      notice("error", `The server answers but refuses the live connection. This page's origin (${location.origin}) `
        + "may not be allowed: add it to FRONTEND_URL, FRONTEND_SELLER_URL or FRONTEND_ADMIN_URL. "
        + "Or the server is full or shutting down.");
    }
  }

  function retrySoon() {
    if (state.ws) return;
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, 100);
  }

  function send(message) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
  }

  function keepalive() {
    if (!state.ws || !state.gotHello) return;
    const now = Date.now();
    if (state.pingSentAt) {
      if (now - state.pingSentAt > PONG_TIMEOUT_MS) dropSocket(4000);
    } else if (now - state.lastMessageAt > state.pingIntervalMs) {
      state.pingSentAt = now;
      send({ type: "ping" });
    }
  }

  // -- protocol -----------------------------------------------------------------------------

  function onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (!message || typeof message !== "object") return;
    state.lastMessageAt = Date.now();
    state.pingSentAt = 0;
    switch (message.type) {
      case "hello": onHello(message); break;
      case "logs": onLogs(message); break;
      case "gap": onGap(message); break;
      case "dropped": onDropped(message); break;
      case "subscribed": onSubscribed(message); break;
      case "paused": state.serverPaused = true; showLiveStatus(); break;
      case "resumed": state.serverPaused = false; showLiveStatus(); break;
      case "pong": break;
      case "authenticated": state.authPending = false; signin.show(message); break;
      case "error": onError(message); break;
      default: break; // newer servers may say more
    }
  }

  function onHello(hello) {
    const reconnected = state.connections > 0;
    state.gotHello = true;
    state.connections += 1;
    state.attempt = 0;
    state.probed = 0;
    state.refusals = 0;
    state.plainQuery = false;
    state.pingIntervalMs = Math.max(1000, (Number(hello.ping_interval_s) || 25) * 1000);
    for (const position of hello.positions || []) {
      const cut = position.lastIndexOf(":");
      const key = position.slice(0, cut);
      const offset = Number(position.slice(cut + 1));
      if (!(state.positions.get(key) >= offset)) state.positions.set(key, offset);
    }
    state.active = hello.filter || {};
    state.asked = state.queryFilter;
    if (hello.auth) signin.show(hello.auth);
    showActiveFilter();
    el.serverInfo.textContent = `topic ${hello.topic} · worker ${hello.worker} · ${hello.server} ${hello.version}`;
    el.reconnect.hidden = true;
    if (reconnected) table.marker("connected", "Reconnected: continuing after the last record received.");
    const wanted = desiredFilter();
    if (!sameFilter(wanted, state.asked)) sendSubscribe(wanted);
    else state.subscribing = false;
    if (state.paused) send({ type: "pause" });
    showLiveStatus();
  }

  function onLogs(message) {
    const fresh = [];
    for (const record of message.records || []) {
      const key = `${record.topic}:${record.partition}`;
      const last = state.seen.get(key);
      if (last !== undefined && record.offset <= last && last - record.offset <= DUPLICATE_WINDOW) continue;
      state.seen.set(key, record.offset);
      if (!message.replay || !(state.positions.get(key) >= record.offset)) state.positions.set(key, record.offset);
      fresh.push(record);
    }
    if (!fresh.length) return;
    state.received += fresh.length;
    state.lastRecordAt = Date.now();
    const replay = Boolean(message.replay);
    for (const record of fresh) chart.add(record, !replay);
    chart.scheduleDraw();
    const rows = fresh.filter((record) => isShown(record.level)).map((record) => [record, replay]);
    if (state.paused) {
      state.held.push(...rows);
      if (state.held.length > MAX_ROWS) state.held.splice(0, state.held.length - MAX_ROWS);
    } else {
      table.add(rows);
    }
    updateCounters();
  }

  function onGap(message) {
    let missed = 0;
    const where = [];
    for (const p of message.partitions || []) {
      missed += p.to - p.from + 1;
      where.push(`${p.topic} partition ${p.partition}, offsets ${fmt(p.from)}–${fmt(p.to)}`);
    }
    const text = `${fmt(missed)} record${missed === 1 ? "" : "s"} published while this page was away `
      + `are no longer held by the server and are not shown (${where.join("; ")}).`;
    notice("gap", `Gap: ${text}`);
    table.marker("gap", `Gap: ${text}`);
    chart.mark("gap", state.lastRecordAt, Date.now(), text);
  }

  function onDropped(message) {
    const count = Number(message.count) || 0;
    state.dropped += count;
    updateCounters();
    const text = `The server dropped ${fmt(count)} batch${count === 1 ? "" : "es"} of records because this page `
      + "fell behind or stayed paused too long.";
    notice("dropped", text);
    table.marker("dropped", text);
    chart.mark("dropped", state.lastRecordAt, Date.now(), text);
  }

  function onSubscribed(message) {
    state.active = message.filter || {};
    if (state.subscribingTo) state.asked = state.subscribingTo;
    if (message.auth) signin.show(message.auth);
    state.subscribing = false;
    state.subscribingTo = null;
    markFilterInvalid(false);
    showActiveFilter();
    table.marker("filter", `Filter changed: ${describeFilter(state.active)}.`);
  }

  function onError(message) {
    if (state.authPending && String(message.error).startsWith("auth refused")) {
      // This connection keeps its old token (a new subject, or a wider scope, needs a new
      // connection): api/session accepted the new one, so open one with it.
      state.authPending = false;
      notice("error", `The server kept this connection's old token (${message.error}); reconnecting with the new one.`);
      reopen("Reconnecting with the new token.");
    } else if (state.subscribing) {
      state.subscribingTo = null;
      state.subscribing = false;
      markFilterInvalid(true);
      showActiveFilter();
      notice("error", `Filter not applied: ${message.error}. The previous filter stays in effect.`);
    } else {
      notice("error", `The server answered: ${message.error}`);
    }
  }

  // -- pause --------------------------------------------------------------------------------

  function togglePause() {
    state.paused = !state.paused;
    el.pause.setAttribute("aria-pressed", String(state.paused));
    el.pause.textContent = state.paused ? "Resume" : "Pause";
    if (state.paused) {
      send({ type: "pause" });
    } else {
      send({ type: "resume" });
      const held = state.held;
      state.held = [];
      if (held.length) table.add(held);
    }
    showLiveStatus();
  }

  // -- status, counters, notices --------------------------------------------------------------

  function setStatus(kind, text) {
    el.status.dataset.state = kind;
    if (el.statusText.textContent !== text) el.statusText.textContent = text;
  }

  function showLiveStatus() {
    if (!state.gotHello) return;
    if (state.paused && state.serverPaused) setStatus("paused", "Paused: new records wait on the server");
    else if (state.paused) setStatus("paused", "Pausing…");
    else setStatus("live", "Live");
  }

  function updateCounters() {
    for (const [node, n] of [[el.received, state.received], [el.shown, table.records], [el.dropped, state.dropped]]) {
      const text = fmt(n);
      if (node.textContent !== text) node.textContent = text;
    }
  }

  function notice(kind, text) {
    const last = el.notices.lastElementChild;
    if (last && last.querySelector("p").textContent === text) last.remove(); // said again: move it last
    const box = document.createElement("div");
    box.className = `notice notice-${kind}`;
    const p = document.createElement("p");
    p.textContent = text;
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.className = "dismiss";
    dismiss.textContent = "Dismiss";
    dismiss.setAttribute("aria-label", "Dismiss notice");
    dismiss.addEventListener("click", () => {
      const next = box.nextElementSibling || box.previousElementSibling;
      box.remove();
      if (next) next.querySelector("button").focus();
      else el.pause.focus();
    });
    box.append(p, dismiss);
    el.notices.append(box);
    while (el.notices.childElementCount > MAX_NOTICES) el.notices.firstElementChild.remove();
  }

  // -- rows ---------------------------------------------------------------------------------

  // What a row shows; logtable.js decides which rows are in the DOM and where. The log table is
  // laid out as grids (viewer.css): explicit roles keep it a table for assistive technology
  // whatever its CSS display.
  function tableRow() {
    const tr = document.createElement("tr");
    tr.setAttribute("role", "row");
    return tr;
  }

  function cell(className, text) {
    const td = document.createElement("td");
    td.setAttribute("role", "cell");
    td.className = className;
    if (text !== undefined) td.textContent = text;
    return td;
  }

  function makeRow(record, replay) {
    const level = LEVELS.includes(record.level) ? record.level : "unknown";
    const tr = tableRow();
    tr.className = `rec lvl-${level}${replay ? " replay" : ""}${record.malformed ? " malformed" : ""}`;
    tr.tabIndex = -1;

    const timeCell = cell("t");
    const time = document.createElement("time");
    time.dateTime = record.time;
    time.textContent = shortTime(record.time);
    time.title = longTime(record.time) + (replay ? " · replayed history" : "");
    timeCell.append(time);

    const levelCell = cell("l");
    const badge = document.createElement("span");
    badge.className = `badge lvl-${level}`;
    badge.textContent = level.toUpperCase();
    levelCell.append(badge);

    const messageCell = cell("m");
    if (record.malformed) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = record.malformed === "not_json" ? "not JSON" : record.malformed.replace("_", " ");
      messageCell.append(tag, " ");
    }
    messageCell.append(String(record.message));

    tr.append(timeCell, levelCell, cell("s", String(record.service)), messageCell);
    return tr;
  }

  function makeMarker(kind, text) {
    const tr = tableRow();
    tr.className = `marker marker-${kind}`;
    const td = cell("", text);
    td.colSpan = 4;
    tr.append(td);
    return tr;
  }

  function clearRows() {
    table.clear();
    state.held = [];
    updateCounters();
  }

  function field(list, name, value, className) {
    const wrap = document.createElement("div");
    if (className) wrap.className = className;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value;
    wrap.append(dt, dd);
    list.append(wrap);
  }

  function flatten(value, prefix, out) {
    if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
      for (const [key, inner] of Object.entries(value)) flatten(inner, prefix ? `${prefix}.${key}` : key, out);
    } else {
      out.push([prefix, typeof value === "string" ? value : JSON.stringify(value)]);
    }
    return out;
  }

  function makeDetails(record) {
    const tr = tableRow();
    tr.className = `details lvl-${record.level}`;
    const td = cell("");
    td.colSpan = 4;
    const list = document.createElement("dl");
    list.className = "fields";
    field(list, "Time (UTC)", String(record.time), "span2");
    const local = localTime(record.time);
    if (local) field(list, "Local time", local, "span2");
    field(list, "Level", `${record.level} (severity ${record.severity})`);
    field(list, "Service", String(record.service));
    field(list, "Topic", String(record.topic));
    field(list, "Partition", String(record.partition));
    field(list, "Offset", String(record.offset));
    if (record.malformed) field(list, "Malformed", String(record.malformed));
    if (record.trace_id) field(list, "Trace ID", String(record.trace_id), "span2");
    if (record.span_id) field(list, "Span ID", String(record.span_id));
    field(list, "Message", String(record.message), "wide pre");
    list.append(recordActions(record));
    const attributes = flatten(record.attributes || {}, "", []).filter(([key]) => key);
    if (attributes.length) {
      const inner = document.createElement("dl");
      inner.className = "attributes";
      for (const [key, value] of attributes) field(inner, key, value);
      field(list, "Attributes", inner, "wide");
    } else {
      field(list, "Attributes", "none", "wide");
    }
    td.append(list);
    tr.append(td);
    return tr;
  }

  function recordActions(record) {
    const box = document.createElement("div");
    box.className = "wide record-actions";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.textContent = "Copy as JSON";
    copy.addEventListener("click", () => copyText(JSON.stringify(record, null, 2), copy));
    const link = document.createElement("a");
    link.className = "resume-link";
    link.href = resumeLink(record);
    link.textContent = "Open the stream from this record";
    box.append(copy, link);
    return box;
  }

  async function copyText(text, button) {
    const label = button.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (error) {
      notice("error", `Could not copy to the clipboard (${error.message}).`);
      return;
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, COPIED_MS);
  }

  // -- start ----------------------------------------------------------------------------------

  function start() {
    // First: it takes the token out of the address bar before this page rewrites its URL.
    signin = new window.SignIn({ describe: describeFilter, onToken: useNewToken, onSignOut: signOut });
    table = new window.LogTable({
      maxRows: MAX_ROWS, isShown, levelOf: (record) => (LEVELS.includes(record.level) ? record.level : "unknown"),
      makeRow, makeDetails, makeMarker, onChange: updateCounters,
    });
    chart = new window.VolumeChart({
      windowMs: CHART_WINDOW_MS, bucketMs: CHART_BUCKET_MS, isShown: (level) => state.shown.has(level),
      onToggle: toggleLevel,
    });
    loadFilterFromPage();
    state.positions = new Map(state.since);
    showLevelControls();
    rememberFilterInPage(desiredFilter());
    el.opened.textContent = `View opened ${localTime(OPENED).slice(0, -4)}`; // to the second
    el.opened.title = OPENED;
    el.maxRows.textContent = `(max ${fmt(MAX_ROWS)})`;
    el.form.addEventListener("submit", (event) => { event.preventDefault(); applyFilter(); });
    el.level.addEventListener("change", () => setShown(shownFromMinimum(el.level.value)));
    el.copyLink.addEventListener("click", () => copyText(location.href, el.copyLink));
    el.regex.addEventListener("change", () => { if (el.q.value.trim()) applyFilter(); });
    for (const input of [el.service, el.q]) {
      input.addEventListener("input", () => {
        clearTimeout(filterTimer);
        filterTimer = setTimeout(applyFilter, FILTER_DEBOUNCE_MS);
      });
    }
    el.resetFilter.addEventListener("click", () => {
      state.shown = new Set(STACK);
      showLevelControls();
      el.service.value = "";
      el.q.value = "";
      el.regex.checked = false;
      state.attributes = {};
      applyFilter();
    });
    el.pause.addEventListener("click", togglePause);
    el.clear.addEventListener("click", clearRows);
    el.follow.addEventListener("click", () => {
      table.jumpToLatest();
      el.pause.focus();
    });
    el.reconnect.addEventListener("click", reconnectNow);
    window.addEventListener("online", () => { if (!state.signedOut) reconnectNow(); });
    setInterval(keepalive, 2000);
    updateCounters();
    // With authentication on, a page without a usable token says so rather than fail to connect.
    signin.check().then((ok) => (ok ? connect() : signedOut()));
  }

  start();
})();
