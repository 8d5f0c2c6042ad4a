/* piblade's own small SVG line chart: a few series over time, gaps where a node was silent,
   a dashed limit line, and a hover/touch readout. No library, so the page works offline. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function clock(t) {
    var d = new Date(t * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  /* Path data for one series: a new "M" after a gap or a missing value. */
  function pathData(values, x, y, gap) {
    var d = "", last = null;
    for (var i = 0; i < values.length; i++) {
      var t = values[i][0], v = values[i][1];
      if (v === null || v === undefined) { last = null; continue; }
      var cmd = last === null || t - last > gap ? "M" : "L";
      d += cmd + x(t).toFixed(1) + " " + y(v).toFixed(1);
      last = t;
    }
    return d;
  }

  /* Index of the point nearest to time t (values sorted by time). */
  function nearest(values, t) {
    var lo = 0, hi = values.length - 1;
    while (hi - lo > 1) {
      var mid = (lo + hi) >> 1;
      if (values[mid][0] < t) lo = mid; else hi = mid;
    }
    return Math.abs(values[lo][0] - t) <= Math.abs(values[hi][0] - t) ? lo : hi;
  }

  /* opts: {from, to, series: [{label, color, unit, values: [[t, v]]}], limit, gap, height} */
  function draw(box, opts) {
    var width = Math.max(160, box.clientWidth || 300), height = opts.height || 130;
    var m = { l: 30, r: 6, t: 6, b: 18 };
    var top = 100;
    opts.series.forEach(function (s) {
      s.values.forEach(function (p) { if (p[1] > top) top = p[1]; });
    });
    top = Math.ceil(top / 25) * 25;
    var span = Math.max(1, opts.to - opts.from);
    var x = function (t) { return m.l + (t - opts.from) / span * (width - m.l - m.r); };
    var y = function (v) { return height - m.b - v / top * (height - m.t - m.b); };

    box.textContent = "";
    var svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height,
                          role: "img", "aria-label": opts.label || "history chart" }, box);
    for (var g = 0; g <= 4; g++) {
      var v = top * g / 4;
      el("line", { x1: m.l, x2: width - m.r, y1: y(v), y2: y(v), class: "gridline" }, svg);
      el("text", { x: m.l - 4, y: y(v) + 3, class: "axis", "text-anchor": "end" }, svg).textContent = v;
    }
    var step = STEPS.find(function (s) { return span / s <= 4; }) || 86400;
    for (var t = Math.ceil(opts.from / step) * step; t <= opts.to; t += step) {
      el("line", { x1: x(t), x2: x(t), y1: m.t, y2: height - m.b, class: "gridline" }, svg);
      var edge = x(t) > width - m.r - 16;  // keep the last label inside the chart
      el("text", { x: edge ? width - m.r : x(t), y: height - 4, class: "axis",
                   "text-anchor": edge ? "end" : "middle" }, svg).textContent = clock(t);
    }
    if (opts.limit) {
      el("line", { x1: m.l, x2: width - m.r, y1: y(opts.limit), y2: y(opts.limit), class: "limit" }, svg);
    }
    opts.series.forEach(function (s) {
      el("path", { d: pathData(s.values, x, y, opts.gap || 60), stroke: s.color, class: "line" }, svg);
    });

    var base = opts.series[0] && opts.series[0].values;
    if (!base || !base.length) {
      el("text", { x: width / 2, y: height / 2, class: "axis", "text-anchor": "middle" }, svg).textContent = "no history yet";
      return;
    }
    var cursor = el("line", { y1: m.t, y2: height - m.b, class: "cursor", visibility: "hidden" }, svg);
    var tip = document.createElement("div");
    tip.className = "chart-tip";
    tip.hidden = true;
    box.appendChild(tip);
    var overlay = el("rect", { x: m.l, y: m.t, width: width - m.l - m.r, height: height - m.t - m.b,
                               fill: "transparent" }, svg);
    function show(ev) {
      var r = svg.getBoundingClientRect();
      var t = opts.from + (ev.clientX - r.left - m.l) / (width - m.l - m.r) * span;
      var i = nearest(base, t), px = x(base[i][0]);
      cursor.setAttribute("x1", px); cursor.setAttribute("x2", px);
      cursor.setAttribute("visibility", "visible");
      tip.textContent = clock(base[i][0]) + "  " + opts.series.map(function (s) {
        var p = s.values[i], val = p && p[1];
        return s.label + " " + (val === null || val === undefined ? "–" : val.toFixed(1) + s.unit);
      }).join("  ");
      tip.hidden = false;
      tip.style.left = Math.min(Math.max(0, px - tip.offsetWidth / 2), width - tip.offsetWidth) + "px";
    }
    function hide() { cursor.setAttribute("visibility", "hidden"); tip.hidden = true; }
    overlay.addEventListener("pointermove", show);
    overlay.addEventListener("pointerdown", show);
    overlay.addEventListener("pointerleave", hide);
  }

  window.PibladeChart = { draw: draw };
})();
