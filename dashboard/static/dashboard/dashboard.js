/* The dashboard page: renders snapshots from the websocket (the first one whole, then each without its
   throughput history, with only its newest points, which the page merges into the history it has), falls
   back to polling the API (whole snapshots) while the websocket is down, and says when what it shows is
   stale. */
(function () {
  "use strict";

  const STALE_AFTER_MS = 3000;
  // An open websocket that brings nothing for this long is dropped and opened again (a half-open TCP
  // connection, or a channel the server-side group forgot).
  const SILENT_SOCKET_MS = 10000;
  const POLL_EVERY_MS = 2000;
  const RATE_WINDOW_MS = 5000;
  const ERROR_WINDOW_MS = 15000;
  const MAX_RECONNECT_MS = 30000;
  const MAX_COLLECTIONS = 15;

  const $ = (id) => document.getElementById(id);
  const integer = new Intl.NumberFormat();
  const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const config = document.body.dataset;
  const chart = new window.ThroughputChart($("throughput-chart"), $("chart-tip"));

  const state = {
    snapshot: null,
    // The throughput history: [[epoch seconds, received, indexed], ...] oldest first, as in a whole snapshot.
    history: { perSecond: [], perMinute: [] },
    receivedAt: 0,
    samples: [], // [server time ms, eventsProcessed, errors], oldest first
    range: "seconds",
    mode: "connecting",
    socket: null,
    attempts: 0,
    reconnectTimer: null,
    pollTimer: null,
  };

  function setText(id, text) {
    const element = $(id);
    if (element.textContent !== text) element.textContent = text;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return `${oneDecimal.format(seconds)} s ago`;
    return `${duration(seconds)} ago`;
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${oneDecimal.format(s / 86400)} days`;
  }

  function percent(fraction) {
    if (!fraction) return "0%";
    if (fraction < 0.0001) return "<0.01%";
    return `${(fraction * 100).toFixed(fraction < 0.1 ? 2 : 1)}%`;
  }

  /* Rate of change per second of samples[index] over roughly the last windowMs, or null. */
  function rate(index, windowMs) {
    const samples = state.samples;
    if (samples.length < 2) return null;
    const latest = samples[samples.length - 1];
    let base = samples.find((sample) => latest[0] - sample[0] <= windowMs);
    if (base === latest) base = samples[samples.length - 2];
    const seconds = (latest[0] - base[0]) / 1000;
    return seconds > 0 ? (latest[index] - base[index]) / seconds : null;
  }

  function accept(snapshot) {
    const serverMs = Date.parse(snapshot.lastUpdate);
    // A poll answer can cross a websocket message: never go back in time.
    if (state.snapshot && serverMs < Date.parse(state.snapshot.lastUpdate)) return;
    if (snapshot.throughput) {
      state.history = snapshot.throughput;
    } else if (snapshot.throughputUpdate) {
      state.history = {
        perSecond: merge(state.history.perSecond, snapshot.throughputUpdate.perSecond, 1),
        perMinute: merge(state.history.perMinute, snapshot.throughputUpdate.perMinute, 60),
      };
    }
    state.snapshot = snapshot;
    state.receivedAt = Date.now();
    const last = state.samples[state.samples.length - 1];
    if (last && snapshot.eventsProcessed < last[1]) state.samples = []; // the counters were reset
    if (!last || serverMs > last[0]) state.samples.push([serverMs, snapshot.eventsProcessed, snapshot.errors]);
    while (state.samples.length > 2 && serverMs - state.samples[0][0] > 2 * ERROR_WINDOW_MS) state.samples.shift();
    render(snapshot);
    updateAlerts();
  }

  /* The history with the update's points in place of those it has for the same times, and as long a time
     span as before (the window of a whole snapshot) ending at the newest point. */
  function merge(points, update, stepSeconds) {
    if (!update.length) return points;
    const span = Math.max(points.length, update.length) * stepSeconds;
    const newest = update[update.length - 1][0];
    const kept = points.filter((p) => p[0] < update[0][0] && p[0] > newest - span);
    return kept.concat(update);
  }

  function render(snap) {
    const events = $("events-processed");
    events.dataset.value = String(snap.eventsProcessed);
    setText("events-processed", integer.format(snap.eventsProcessed));
    let eventsRate = rate(1, RATE_WINDOW_MS);
    if (eventsRate === null) {
      // One snapshot so far: the last complete second indexed is the best guess.
      const perSecond = state.history.perSecond;
      eventsRate = perSecond.length ? perSecond[perSecond.length - 1][2] : 0;
    }
    setText("events-rate", oneDecimal.format(Math.max(eventsRate, 0)));

    const fh = snap.firehoseStatus;
    const status = $("firehose-status");
    status.dataset.connected = String(fh.connected);
    status.dataset.paused = String(fh.connected && fh.paused);
    setText("firehose-label", fh.connected ? (fh.paused ? "Connected · paused (queue full)" : "Connected") : "Disconnected");
    setText("firehose-url", fh.url || "—");
    setText("firehose-cursor", fh.currentCursor ? integer.format(Number(fh.currentCursor)) : "—");
    setText("firehose-freshness", fh.connected ? age(fh.freshnessSeconds) : "—");
    setText("firehose-reconnects", integer.format(fh.reconnects));

    setText("error-rate", percent(snap.errorRate));
    setText("error-count", integer.format(snap.errors));
    const errorsRising = rising();
    setText("error-trend", errorsRising ? "rising" : "steady");
    $("error-trend").classList.toggle("bad-text", errorsRising);
    $("error-rate").classList.toggle("bad-text", errorsRising);

    const q = snap.queue;
    setText("queue-length", integer.format(q.length));
    setText("queue-undelivered", q.undelivered === null ? "unknown" : integer.format(q.undelivered));
    setText("queue-pending", integer.format(q.pending));
    setText("queue-dead", integer.format(q.deadLetters));
    const backlog = q.pending + (q.undelivered || 0);
    const clear = q.estimatedSecondsToClear;
    setText("queue-clear", clear === 0 ? "clear" : clear === null ? (backlog ? "not draining" : "—") : clear < 1 ? "<1 s" : duration(clear));
    $("queue-dead").classList.toggle("bad-text", q.deadLetters > 0);

    renderEventTypes(snap.eventCounts);
    renderRecords(snap.records);
    $("records-note").hidden = snap.databaseAvailable !== false;
    renderWorkers(snap.workers);
    renderBackfill(snap.backfill);
    renderChart();
    $("last-update").dateTime = snap.lastUpdate;
    setText("last-update", new Date(snap.lastUpdate).toLocaleTimeString());
  }

  function rising() {
    const errorsPerSecond = rate(2, ERROR_WINDOW_MS);
    return errorsPerSecond !== null && errorsPerSecond > 0;
  }

  function renderEventTypes(counts) {
    const list = $("event-types");
    const entries = Object.entries(counts);
    const max = Math.max(1, ...entries.map(([, n]) => n));
    const total = entries.reduce((sum, [, n]) => sum + n, 0);
    list.replaceChildren(
      ...entries.map(([name, n]) => {
        const item = document.createElement("li");
        const label = document.createElement("span");
        label.className = "name";
        label.textContent = name;
        const track = document.createElement("span");
        track.className = "track";
        const fill = document.createElement("span");
        fill.className = "fill";
        fill.style.width = `${(n / max) * 100}%`;
        track.append(fill);
        const count = document.createElement("span");
        count.className = "count";
        count.textContent = integer.format(n);
        const share = document.createElement("span");
        share.className = "share";
        share.textContent = total ? `${oneDecimal.format((n / total) * 100)}%` : "—";
        item.append(label, count, share, track);
        return item;
      }),
    );
  }

  function row(cells, className) {
    const tr = document.createElement("tr");
    if (className) tr.className = className;
    for (const [text, cellClass, colspan, label] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cellClass) td.className = cellClass;
      if (colspan) td.colSpan = colspan;
      if (label) td.dataset.label = label;
      tr.append(td);
    }
    return tr;
  }

  function renderRecords(records) {
    const entries = Object.entries(records).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    // The network has many small third-party collections: the biggest ones, then the rest summed up.
    const shown = entries.length > MAX_COLLECTIONS ? entries.slice(0, MAX_COLLECTIONS - 1) : entries;
    const rows = shown.map(([nsid, n]) => row([[nsid, "nsid"], [integer.format(n), "num"]]));
    const rest = entries.slice(shown.length);
    if (rest.length) {
      const total = rest.reduce((sum, [, n]) => sum + n, 0);
      rows.push(row([[`${integer.format(rest.length)} other collections`, "muted"], [integer.format(total), "num"]]));
    }
    $("records").replaceChildren(...(rows.length ? rows : [row([["No records yet", "", 2]], "empty")]));
  }

  function renderWorkers(workers) {
    const rows = workers.map((w) =>
      row(
        [
          [w.name, "mono nowrap"],
          [w.stale ? `stale · ${age(w.heartbeatAgeSeconds)}` : age(w.heartbeatAgeSeconds), "nowrap", 0, "Heartbeat"],
          [integer.format(w.processed), "num", 0, "Processed"],
          [integer.format(w.errors), "num", 0, "Errors"],
          [w.batchLatencyMs === null ? "—" : `${oneDecimal.format(w.batchLatencyMs)} ms`, "num", 0, "Batch latency"],
        ],
        w.stale ? "stale" : "",
      ),
    );
    $("workers").replaceChildren(...(rows.length ? rows : [row([["No workers reporting", "", 5]], "empty")]));
  }

  const BACKFILL_STATES = {
    none: "no run yet", running: "running", finished: "finished", stopped: "stopped", stale: "not reporting",
  };

  function renderBackfill(backfill) {
    if (!backfill) return;
    const label = $("backfill-state");
    label.dataset.state = backfill.state;
    label.className = `pill ${backfill.state === "running" ? "pill-live" : backfill.state === "stale" ? "pill-wait" : ""}`;
    setText("backfill-state", BACKFILL_STATES[backfill.state] || backfill.state);
    const total = backfill.reposTotal;
    $("backfill-bar").style.width = `${total ? Math.min(100, (backfill.reposDone / total) * 100) : 0}%`;
    setText("backfill-repos", total ? `${integer.format(backfill.reposDone)} / ${integer.format(total)}` : "—");
    setText("backfill-in-progress", integer.format(backfill.reposInProgress));
    setText("backfill-failed", integer.format(backfill.reposFailed));
    $("backfill-failed").classList.toggle("bad-text", backfill.reposFailed > 0);
    setText("backfill-records", integer.format(backfill.records));
    setText("backfill-rate", backfill.state === "none" ? "—" : integer.format(Math.round(backfill.recordsPerSecond)));
    setText("backfill-eta", backfill.etaSeconds === null ? "—" : duration(backfill.etaSeconds));
  }

  /* A young system: from shortly before its first traffic, rather than a whole window of zeros. */
  function sinceFirstTraffic(points, minimum) {
    const first = points.findIndex((p) => p[1] > 0 || p[2] > 0);
    if (first < 0) return points;
    return points.slice(Math.max(0, Math.min(first - Math.floor(minimum / 4), points.length - minimum)));
  }

  function renderChart() {
    if (!state.snapshot) return;
    const throughput = state.history;
    if (state.range === "seconds") {
      chart.setData(sinceFirstTraffic(throughput.perSecond, 120), 1);
    } else {
      const perSecond = throughput.perMinute.map(([t, received, indexed]) => [t, received / 60, indexed / 60]);
      chart.setData(sinceFirstTraffic(perSecond, 60), 60);
    }
  }

  function setMode(mode) {
    state.mode = mode;
    const pill = $("link-state");
    pill.dataset.mode = mode;
    pill.className = `pill ${mode === "live" ? "pill-live" : "pill-wait"}`;
    pill.textContent = { live: "Live", polling: "Polling", offline: "Offline", connecting: "Connecting…" }[mode];
  }

  function updateAlerts() {
    const troubles = [];
    const staleMs = Date.now() - state.receivedAt;
    const banner = $("stale-banner");
    if (!state.snapshot || staleMs > STALE_AFTER_MS) {
      const seconds = Math.round(staleMs / 1000);
      const text = state.snapshot
        ? `Stale: no update for ${seconds} s. Reconnecting…`
        : "No data from the server yet. Reconnecting…";
      if (banner.textContent !== text) banner.textContent = text;
      banner.hidden = false;
      troubles.push("Stale");
    } else {
      banner.hidden = true;
    }
    document.body.dataset.stale = String(!banner.hidden);
    if (staleMs > SILENT_SOCKET_MS && state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.close();
    }
    if (state.snapshot && !state.snapshot.firehoseStatus.connected) troubles.push("Disconnected");
    if (state.snapshot && state.snapshot.databaseAvailable === false) troubles.push("Database unreachable");
    if (rising()) troubles.push("Errors rising");
    const title = troubles.length ? `⚠ ${troubles.join(" · ")} · AppView` : "AppView";
    if (document.title !== title) document.title = title;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + config.wsPath);
    state.socket = socket;
    socket.onopen = () => {
      state.attempts = 0;
      setMode("live");
      stopPolling();
    };
    socket.onmessage = (event) => accept(JSON.parse(event.data));
    socket.onclose = () => {
      if (state.socket !== socket) return;
      state.socket = null;
      if (state.mode === "live") setMode("polling");
      startPolling();
      // Exponential backoff with jitter, so that a restarted server is not hit by every page at once.
      const delay = Math.min(MAX_RECONNECT_MS, 1000 * 2 ** state.attempts) * (0.5 + Math.random() / 2);
      state.attempts += 1;
      state.reconnectTimer = setTimeout(connect, delay);
    };
  }

  async function poll() {
    try {
      const response = await fetch(config.apiUrl, { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const snapshot = await response.json();
      if (state.mode !== "live") setMode("polling");
      accept(snapshot);
    } catch (error) {
      if (state.mode !== "live") setMode("offline");
    }
  }

  function startPolling() {
    if (state.pollTimer !== null) return;
    poll();
    state.pollTimer = setInterval(poll, POLL_EVERY_MS);
  }

  function stopPolling() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      state.range = button.dataset.range;
      for (const other of document.querySelectorAll("[data-range]")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      renderChart();
    });
  }

  const initial = JSON.parse($("initial-snapshot").textContent);
  if (initial) accept(initial);
  setInterval(updateAlerts, 1000);
  connect();
})();
