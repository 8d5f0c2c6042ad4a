// Draws the report's charts from the figure specs piblade embedded in the page (piblade/report/figures.py).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var phone = window.matchMedia("(max-width: 760px)").matches;

  // Times were written as UTC; show them in the reader's time zone.
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) { el.textContent = when.toLocaleString(); el.title = el.getAttribute("datetime"); }
  });

  var drawn = [];
  document.querySelectorAll("[data-figure]").forEach(function (el) {
    var spec = data.figures[el.getAttribute("data-figure")];
    if (!spec) { return; }
    var layout = Object.assign({}, spec.layout);
    if (phone && layout.height > 320 && el.getAttribute("data-figure") !== "health") {
      layout.height = Math.max(260, Math.round(layout.height * 0.8));
    }
    drawn.push(Plotly.newPlot(el, spec.data, layout, data.config));
  });
  Promise.all(drawn).then(function () {
    document.body.setAttribute("data-charts", String(drawn.length));
  }, function (err) {
    document.body.setAttribute("data-charts", "error");
    console.error(err);
  });
})();
