/* The dashboard page: keeps the server's view of the cluster (the one embedded in the page, then
   patched by each "delta" pushed over Server-Sent Events: only what changed; see
   piblade/dashboard/pageview.py) and draws it by updating the existing elements in place. Text goes in through
   textContent only, never innerHTML, so a node or job name cannot inject markup. */
(function () {
  "use strict";
  var SERIES = [
    { key: "temp_c", label: "°C", color: "#f0883e", unit: "°" },
    { key: "cpu_percent", label: "CPU", color: "#58a6ff", unit: "%" },
    { key: "mem_percent", label: "Mem", color: "#bc8cff", unit: "%" }
  ];
  var cards = {};          // node name -> {root, refs, points, loaded}
  var range = 3600;        // seconds of history in the charts
  var offset = 0;          // server clock minus browser clock, in seconds
  var latest = null;

  function $(id) { return document.getElementById(id); }
  function now() { return Date.now() / 1000 + offset; }

  function h(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never seen";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 90) return seconds + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 129600) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 2 : 1) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.round(seconds % 3600 / 60) + " min";
  }

  function clock(t) {
    if (!t) return "?";
    var d = new Date(t * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function stateText(node) {
    if (node.state === "paused") return "paused: " + (node.paused || "");
    if (node.state === "unknown") return "unknown since " + clock(node.unknown_since);
    return node.state;
  }

  /* ---- node cards ---- */

  function bar(label) {
    var row = h("div", "bar");
    row.appendChild(h("span", "bar-label", label));
    var track = h("span", "bar-track");
    var fill = h("span", "bar-fill");
    track.appendChild(fill);
    row.appendChild(track);
    var value = h("span", "bar-value", "–");
    row.appendChild(value);
    return { row: row, fill: fill, value: value };
  }

  /* Levels and texts come from the server's health model (piblade/healthmodel.py): no thresholds here. */
  function setBar(b, reading) {
    var known = reading.value !== null && reading.value !== undefined;
    b.fill.style.width = (known ? Math.min(100, Math.max(0, reading.value)) : 0) + "%";
    b.row.dataset.level = reading.level || "none";
    b.value.textContent = known ? reading.text : "–";
  }

  function buildCard(name) {
    var root = h("article", "node");
    root.dataset.node = name;
    var head = h("header");
    head.appendChild(h("span", "dot"));
    head.appendChild(h("h3", "name", name));
    var state = h("span", "state");
    head.appendChild(state);
    root.appendChild(head);
    var meta = h("div", "meta muted");
    root.appendChild(meta);
    var tempRow = h("div", "temp-row");
    var temp = h("span", "temp", "–");
    var badges = h("span", "badges");
    tempRow.appendChild(temp);
    tempRow.appendChild(badges);
    root.appendChild(tempRow);
    var bars = {};  // one per percentage reading, made on the first update
    var barBox = h("div", "bars");
    root.appendChild(barBox);
    var facts = h("div", "facts muted");
    var seen = h("span", "seen");
    var work = h("span", "work");
    facts.appendChild(seen); facts.appendChild(work);
    root.appendChild(facts);
    var chart = h("div", "chart");
    root.appendChild(chart);
    var legend = h("div", "legend");
    SERIES.forEach(function (s) {
      var item = h("span", "key", s.label === "°C" ? "Temp" : s.label);
      item.style.setProperty("--c", s.color);
      legend.appendChild(item);
    });
    root.appendChild(legend);
    return { root: root, refs: { state: state, meta: meta, temp: temp, badges: badges, bars: bars, barBox: barBox,
             seen: seen, work: work, chart: chart }, points: [], loaded: false, node: null };
  }

  function updateCard(card, node) {
    var r = card.refs;
    card.node = node;
    card.root.dataset.state = node.state;
    r.state.textContent = stateText(node);
    var meta = [node.role || "node", node.model].filter(Boolean).join(" · ");
    r.meta.textContent = meta;
    r.temp.textContent = node.temp_c === null || node.temp_c === undefined ? "– °C" : node.temp_c.toFixed(1) + " °C";
    r.temp.dataset.level = node.temp_level || "none";
    r.badges.textContent = "";
    (node.throttling || []).forEach(function (flag) {
      r.badges.appendChild(h("span", "badge" + (/since boot/.test(flag) ? " past" : ""), flag));
    });
    var work = [];
    if (node.state === "unknown") {  // Redis cannot be read: the last numbers are not current
      Object.keys(r.bars).forEach(function (k) { setBar(r.bars[k], { value: null, level: "none" }); });
    }
    var readings = node.readings || {};
    Object.keys(readings).forEach(function (key) {
      var reading = readings[key];
      if (!reading.bar) {
        if (reading.value !== null && reading.value !== undefined) work.push(reading.label + " " + reading.text);
        return;
      }
      if (!r.bars[key]) {
        r.bars[key] = bar(reading.label);
        r.barBox.appendChild(r.bars[key].row);
      }
      setBar(r.bars[key], reading);
    });
    if (node.load1 !== null && node.load1 !== undefined) work.push("load " + node.load1.toFixed(2));
    if (node.workers) work.push(node.workers + (node.workers === 1 ? " worker" : " workers"));
    if (node.running) work.push(node.running + " running");
    if ((node.versions || []).length) work.push("piblade " + node.versions.join(" + "));  // two: mid-upgrade
    r.work.textContent = work.length ? " · " + work.join(" · ") : "";
    var t = node.last_seen;
    if (node.up && t && (!card.points.length || t > card.points[card.points.length - 1].t)) {
      card.points.push({ t: t, temp_c: node.temp_c, cpu_percent: (readings.cpu_percent || {}).value,
                         mem_percent: (readings.mem_percent || {}).value });
    }
  }

  /* A silence much longer than the usual sample spacing is drawn as a gap (the node was down).
     Long ranges are thinned by the server, so the spacing is measured, with a floor per range. */
  function gapSeconds(points) {
    var steps = [];
    for (var i = 1; i < points.length; i++) steps.push(points[i].t - points[i - 1].t);
    steps.sort(function (a, b) { return a - b; });
    var usual = steps.length ? steps[steps.length >> 1] : 5;
    return Math.max(range / 60, usual * 3);
  }

  function drawChart(card) {
    var to = now(), from = to - range;
    while (card.points.length && card.points[0].t < from) card.points.shift();
    // A young node's few minutes of history would be a sliver at the right edge: the chart spans the data
    // there is (a minute at least), and the whole range once there is that much.
    var first = card.points.length ? card.points[0].t : to;
    var start = Math.max(from, Math.min(first, to - 60));
    window.PibladeChart.draw(card.refs.chart, {
      from: start, to: to, gap: gapSeconds(card.points), limit: card.node && card.node.max_temp,
      label: "history of " + card.root.dataset.node,
      series: SERIES.map(function (s) {
        return { label: s.label, color: s.color, unit: s.unit,
                 values: card.points.map(function (p) { return [p.t, p[s.key]]; }) };
      })
    });
  }

  function loadHistory(name) {
    var card = cards[name];
    fetch("/api/nodes/" + encodeURIComponent(name) + "/history?seconds=" + range, { credentials: "same-origin" })
      .then(function (res) { return res.ok ? res.json() : { points: [] }; })
      .then(function (data) {
        var live = card.points.filter(function (p) {
          return !data.points.length || p.t > data.points[data.points.length - 1].t;
        });
        card.points = data.points.concat(live);
        card.loaded = true;
        drawChart(card);
      })
      .catch(function () { drawChart(card); });
  }

  function renderNodes(nodes) {
    var grid = $("nodes"), names = {};
    nodes.forEach(function (node, i) {
      names[node.name] = true;
      var card = cards[node.name];
      if (!card) {
        card = cards[node.name] = buildCard(node.name);
        updateCard(card, node);
        grid.appendChild(card.root);
        loadHistory(node.name);
      } else {
        updateCard(card, node);
        if (card.loaded) drawChart(card);
      }
      if (grid.children[i] !== card.root) grid.insertBefore(card.root, grid.children[i] || null);
    });
    Object.keys(cards).forEach(function (name) {
      if (!names[name]) { cards[name].root.remove(); delete cards[name]; }
    });
    $("no-nodes").hidden = nodes.length > 0;
    var counts = {};
    nodes.forEach(function (n) {
      var k = n.state === "unknown" ? "unknown" : n.up ? "up" : "down";
      counts[k] = (counts[k] || 0) + 1;
    });
    $("node-summary").textContent = nodes.length
      ? Object.keys(counts).sort().reverse().map(function (k) { return counts[k] + " " + k; }).join(" · ") : "";
  }

  /* ---- tables ---- */

  function syncRows(tbody, items, key, columns) {
    var existing = {};
    Array.prototype.forEach.call(tbody.rows, function (row) { existing[row.dataset.key] = row; });
    items.forEach(function (item, i) {
      var row = existing[key(item)];
      if (!row) {
        row = document.createElement("tr");
        row.dataset.key = key(item);
        columns.forEach(function (c) {
          var td = h("td", c.cls || "");
          td.dataset.label = c.label;
          row.appendChild(td);
        });
      }
      delete existing[key(item)];
      columns.forEach(function (c, j) { c.fill(row.cells[j], item); });
      if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] || null);
    });
    Object.keys(existing).forEach(function (k) { existing[k].remove(); });
  }

  function text(field) { return function (td, item) { td.textContent = item[field]; }; }

  var QUEUE_COLUMNS = [
    { label: "Queue", fill: text("name") },
    { label: "Waiting", cls: "num", fill: text("queued") },
    { label: "Running", cls: "num", fill: text("started") },
    { label: "Workers", cls: "num", fill: text("workers") },
    { label: "Failed", cls: "num", fill: function (td, q) { td.textContent = q.failed; td.dataset.level = q.failed ? "bad" : "ok"; } }
  ];

  var JOB_COLUMNS = [
    { label: "Run", cls: "mono", fill: function (td, j) {
      // A finished run whose report page is on the share links to it (opens in a new tab).
      var link = td.querySelector("a");
      if (j.report) {
        if (!link) { td.textContent = ""; link = td.appendChild(h("a", "report")); link.target = "_blank"; link.rel = "noopener"; }
        link.href = "reports/" + encodeURIComponent(j.run);
        link.textContent = j.run;
        link.title = "the run's report";
      } else {
        td.textContent = j.run;
      }
    } },
    { label: "Job", fill: text("job") },
    { label: "State", fill: function (td, j) {
      var pill = td.firstChild || td.appendChild(h("span", "pill"));
      pill.textContent = j.state; pill.dataset.state = j.state;
    } },
    { label: "Tasks", cls: "num", fill: function (td, j) {
      td.textContent = j.done + "/" + j.total + (j.failed ? " (" + j.failed + " failed)" : "");
    } },
    { label: "Duration", cls: "num duration", fill: function (td, j) { td.textContent = duration(j.seconds); } },
    { label: "Nodes", fill: function (td, j) {
      var failed = j.failed_nodes || {}, names = {};
      Object.keys(j.nodes).concat(Object.keys(failed)).forEach(function (n) { names[n] = true; });
      td.textContent = Object.keys(names).sort().map(function (n) {
        var parts = [];
        if (j.nodes[n]) parts.push("×" + j.nodes[n]);
        if (failed[n]) parts.push(failed[n] + " failed");
        return n + " " + parts.join(", ");
      }).join("; ") || (j.state === "queued" ? "" : "–");
    } },
    { label: "Failure", cls: "failure", fill: function (td, j) { td.textContent = j.failure || ""; td.title = j.failure || ""; } }
  ];

  /* ---- the whole snapshot ---- */

  function ordered(map, order) { return order.map(function (k) { return map[k]; }).filter(Boolean); }

  /* Patches are objects merged key by key; {"$del": 1} removes a key (pageview.apply in Python). */
  function applyPatch(target, patch) {
    var out = Object.assign({}, target);
    Object.keys(patch).forEach(function (k) {
      var v = patch[k];
      if (v && typeof v === "object" && !Array.isArray(v) && v["$del"] === 1 && Object.keys(v).length === 1) {
        delete out[k];
      } else if (v && typeof v === "object" && !Array.isArray(v) && out[k] && typeof out[k] === "object"
                 && !Array.isArray(out[k])) {
        out[k] = applyPatch(out[k], v);
      } else {
        out[k] = v;
      }
    });
    return out;
  }

  /* What the alert service has announced and not yet resolved (what `piblade alerts list` shows). */
  function renderAlerts(alerts) {
    var list = $("alerts"), firing = (alerts && alerts.firing) || [];
    list.textContent = "";
    firing.forEach(function (a) {
      var li = h("li", "alert", a.summary);
      li.dataset.rule = a.rule;
      li.appendChild(h("span", "muted", " since " + clock(a.started)));
      list.appendChild(li);
    });
    $("alert-summary").textContent = !alerts || alerts.service === null ? ""
      : (firing.length ? firing.length + " firing" : "nothing firing")
        + (alerts.service ? "" : " · no alert service is running");
  }

  function render(view) {
    var snap = {
      cluster: view.cluster, error: view.error, unknown_since: view.unknown_since, share: view.share,
      alerts: view.alerts,
      nodes: ordered(view.nodes, view.node_order), queues: ordered(view.queues, view.queue_order),
      jobs: ordered(view.jobs, view.job_order)
    };
    latest = snap;
    $("cluster").textContent = snap.cluster || "";
    var banner = $("error");
    banner.hidden = !snap.error;
    banner.textContent = !snap.error ? "" : snap.unknown_since
      ? "No current data since " + clock(snap.unknown_since) + " (queues and jobs as of then): " + snap.error
      : "No data: " + snap.error;
    redisDown = !!snap.error;
    showConn();
    renderNodes(snap.nodes);
    renderAlerts(snap.alerts);
    syncRows($("queues").tBodies[0], snap.queues, function (q) { return q.name; }, QUEUE_COLUMNS);
    syncRows($("jobs").tBodies[0], snap.jobs, function (j) { return j.run; }, JOB_COLUMNS);
    $("no-jobs").hidden = snap.jobs.length > 0;
    $("share").textContent = snap.share
      ? "NAS share: " + snap.share.free_text + " free of " + snap.share.total_text : "";
    tick();
  }

  /* Ages and running durations move every second without a new snapshot. */
  function tick() {
    var t = now();
    Object.keys(cards).forEach(function (name) {
      var node = cards[name].node;
      var seen = node.last_seen ? t - node.last_seen : null;
      cards[name].refs.seen.textContent = node.state === "unknown" ? "no data: Redis cannot be read"
        : node.up ? "seen " + ago(seen) : "last seen " + ago(seen);
    });
    if (!latest) return;
    latest.jobs.forEach(function (j) {
      if (j.state !== "queued" && j.state !== "running") return;
      var row = $("jobs").querySelector('tr[data-key="' + CSS.escape(j.run) + '"] td.duration');
      if (row) row.textContent = duration(Math.max(0, t - j.created));
    });
  }

  /* ---- live connection ---- */

  var streamState = ["connecting", "connecting…"], redisDown = false;

  /* The dot is green only while the stream is open AND the server can read Redis: grey otherwise. */
  function showConn() {
    var c = $("conn");
    var state = redisDown && streamState[0] === "live" ? ["stale", "no data"] : streamState;
    c.dataset.state = state[0];
    c.textContent = state[1];
  }

  function setConn(state, label) {
    streamState = [state, label];
    showConn();
  }

  var view = null, source = null, events = 0;

  function received() {
    events += 1;
    document.body.dataset.events = String(events);
  }

  /* A hidden tab asks for at most one event a minute; back in view, it reconnects at full speed
     (and gets the whole view at once). */
  function connect() {
    if (source) source.close();
    var hidden = document.visibilityState === "hidden";
    document.body.dataset.stream = hidden ? "slow" : "live";
    var es = source = new EventSource(hidden ? "/events?every=60" : "/events");
    es.addEventListener("view", function (ev) {
      var data = JSON.parse(ev.data);
      offset = data.time - Date.now() / 1000;
      view = data.view;
      received();
      render(view);
    });
    es.addEventListener("delta", function (ev) {
      view = applyPatch(view, JSON.parse(ev.data));
      received();
      render(view);
    });
    es.onopen = function () { setConn("live", "live"); };
    es.onerror = function () {
      if (es !== source) return;
      setConn("lost", "reconnecting…");
      if (es.readyState !== EventSource.CLOSED) return;   // the browser retries by itself
      fetch("/api/queues", { credentials: "same-origin" }).then(function (res) {
        if (res.status === 401) window.location.assign("/login");
        else setTimeout(connect, 5000);
      }).catch(function () { setTimeout(connect, 5000); });
    };
  }

  document.addEventListener("visibilitychange", function () {
    var wanted = document.visibilityState === "hidden" ? "slow" : "live";
    if (document.body.dataset.stream !== wanted) connect();
  });

  function setRange(seconds) {
    range = seconds;
    Array.prototype.forEach.call(document.querySelectorAll(".range button"), function (b) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.range) === seconds));
    });
    Object.keys(cards).forEach(loadHistory);
  }

  document.querySelectorAll(".range button").forEach(function (b) {
    b.addEventListener("click", function () { setRange(Number(b.dataset.range)); });
  });
  if (document.body.dataset.auth !== "on") $("logout").hidden = true;

  var redraw = null;
  window.addEventListener("resize", function () {
    clearTimeout(redraw);
    redraw = setTimeout(function () {
      Object.keys(cards).forEach(function (n) { if (cards[n].loaded) drawChart(cards[n]); });
    }, 150);
  });

  var initial = JSON.parse($("initial").textContent);
  offset = initial.time - Date.now() / 1000;
  view = initial.view;
  render(view);
  setInterval(tick, 1000);
  connect();
})();
