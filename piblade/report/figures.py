"""The report's charts as plotly figure specs (plain dicts), built once for the page and the notebook. Pure.

The HTML page hands these dicts to plotly.js (``Plotly.newPlot(el, data, layout)``)
and the notebook to plotly.py (``go.Figure(spec)``), so both show the same
charts from the same code. Only trace types of plotly.js's smallest bundle
(scatter, bar, pie) are used: durations are binned here, the timeline is
horizontal bars with a ``base``.

Times on every x axis are seconds since the run was submitted: a run of two
seconds and a run of two hours read the same way, and the health samples line
up with the task bars.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from piblade.healthmodel import HOT_MARGIN, decode_throttled
from piblade.report.model import STATE_COLOURS, RunReport, duration_histogram, percentile

#: One colour per node, the same in every chart (a colour-blind-safe qualitative palette).
NODE_COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#222255")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
#: What the page passes as plotly's ``config``: no logo link, no "edit in Chart Studio", fits its box.
CONFIG = {"displaylogo": False, "responsive": True, "displayModeBar": "hover",
          "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}
#: Lanes of the timeline beyond which each lane gets thinner rather than the chart taller.
LANE_PX = 26


def node_colours(report: RunReport) -> dict[str, str]:
    names = sorted({a.node for a in report.attempts} | {h.node for h in report.health} | set(report.run.nodes))
    return {n: NODE_COLOURS[i % len(NODE_COLOURS)] for i, n in enumerate(names)}


def _layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "font": {"family": FONT, "size": 12, "color": "#1f2933"},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "margin": {"l": 56, "r": 12, "t": 8, "b": 44},
        "hovermode": "closest",
        "legend": {"orientation": "h", "y": -0.2, "x": 0},
    }
    layout.update(extra)
    return layout


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    axis = {"title": {"text": title, "standoff": 6}, "gridcolor": "#e4e7eb", "zerolinecolor": "#cbd2d9",
            "automargin": True}
    axis.update(extra)
    return axis


def _short_task(run_id: str, task: str) -> str:
    return task[len(run_id) + 1:] if task.startswith(run_id + "-") else task


def timeline(report: RunReport) -> dict[str, Any]:
    """Who ran what when: one horizontal bar per attempt, one row per worker, coloured by how it ended."""
    t0 = report.run.submitted
    lanes = report.lanes
    traces = []
    for state, colour in STATE_COLOURS.items():
        picked = [a for a in report.attempts if a.state == state and a.started is not None]
        if not picked:
            continue
        traces.append({
            "type": "bar", "orientation": "h", "name": state,
            "y": [a.lane for a in picked],
            "base": [round(a.started - t0, 3) for a in picked],  # type: ignore[operator]
            "x": [round(a.ended - a.started, 3) for a in picked],  # type: ignore[operator]
            "hovertext": [f"{'reduce' if a.phase == 'reduce' else _short_task(report.run.id, a.task)}"
                          f"{f' (attempt {a.attempt})' if a.attempt > 1 else ''}: {_short_seconds(a.ended - a.started)}"  # type: ignore[operator]
                          for a in picked],
            "hoverinfo": "text+y",
            "marker": {"color": colour, "line": {"width": 0.5, "color": "#ffffff"}},
        })
    height = max(180, min(900, 70 + LANE_PX * len(lanes)))
    return {
        "data": traces,
        "layout": _layout(
            barmode="overlay", bargap=0.25, height=height, showlegend=len(traces) > 1,
            xaxis=_axis("seconds since submit", rangemode="tozero"),
            yaxis=_axis("", categoryorder="array", categoryarray=list(reversed(lanes)), type="category"),
            legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
            margin={"l": 8, "r": 12, "t": 28 if len(traces) > 1 else 8, "b": 44},
        ),
    }


def _short_seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 0.1 else f"{value:.2f} s"


def durations(report: RunReport) -> dict[str, Any]:
    """How long tasks took: a histogram of finished attempts, with the median and 95th percentile marked."""
    seconds = report.durations()
    hist = duration_histogram(seconds)
    centres = [(a + b) / 2 for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
    widths = [b - a for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
    shapes, notes = [], []
    for q, label, dash, side in ((0.5, "median", "solid", "right"), (0.95, "p95", "dot", "left")):
        value = percentile(seconds, q)
        if value is None:
            continue
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": value, "x1": value, "y0": 0, "y1": 1,
                       "line": {"color": "#1f2933", "width": 1.5, "dash": dash}})
        notes.append({"xref": "x", "yref": "paper", "x": value, "y": 1, "yanchor": "bottom", "xanchor": side,
                      "showarrow": False, "text": f" {label} {_short_seconds(value)} ", "font": {"size": 11}})
    return {
        "data": [{
            "type": "bar", "name": "tasks", "x": [round(c, 4) for c in centres], "y": list(hist.counts),
            "width": [round(w, 4) for w in widths],
            "hovertext": [f"{_short_seconds(a)} to {_short_seconds(b)}: {n} task(s)"
                          for a, b, n in zip(hist.edges, hist.edges[1:], hist.counts, strict=False)],
            "hoverinfo": "text", "marker": {"color": STATE_COLOURS["finished"], "line": {"width": 0}},
        }],
        "layout": _layout(height=260, showlegend=False, shapes=shapes, annotations=notes, bargap=0.02,
                          margin={"l": 48, "r": 12, "t": 24, "b": 44},
                          xaxis=_axis("seconds per task"), yaxis=_axis("tasks", rangemode="tozero")),
    }


def per_node(report: RunReport) -> dict[str, Any]:
    """Who did how much: finished tasks per node as a share of the run."""
    colours = node_colours(report)
    counts = Counter(a.node for a in report.attempts if a.state == "finished" and a.phase == "task")
    nodes = sorted(counts)
    return {
        "data": [{
            "type": "pie", "labels": nodes, "values": [counts[n] for n in nodes], "hole": 0.55, "sort": False,
            "marker": {"colors": [colours[n] for n in nodes]}, "textinfo": "label+value",
            "hovertemplate": "%{label}: %{value} task(s), %{percent}<extra></extra>",
        }],
        "layout": _layout(height=260, showlegend=False, margin={"l": 8, "r": 8, "t": 8, "b": 8}),
    }


def health(report: RunReport) -> dict[str, Any]:
    """Each node during the run: temperature, CPU and throttle flags, stacked on one time axis."""
    t0 = report.run.submitted
    colours = node_colours(report)
    traces: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    any_temp = False
    for series in report.health:
        xs = [round(t - t0, 3) for t in series.times]
        colour = colours[series.node]
        if any(v is not None for v in series.temp_c):
            any_temp = True
            traces.append({"type": "scatter", "mode": "lines+markers", "name": series.node, "legendgroup": series.node,
                           "x": xs, "y": list(series.temp_c), "yaxis": "y3", "line": {"color": colour, "width": 2},
                           "marker": {"size": 4}, "hovertemplate": f"{series.node}: %{{y:.1f}} °C<extra></extra>"})
        traces.append({"type": "scatter", "mode": "lines+markers", "name": series.node, "legendgroup": series.node,
                       "showlegend": not any(v is not None for v in series.temp_c),
                       "x": xs, "y": list(series.cpu_percent), "yaxis": "y2",
                       "line": {"color": colour, "width": 2}, "marker": {"size": 4},
                       "hovertemplate": f"{series.node}: %{{y:.0f}}% CPU<extra></extra>"})
        flagged = [(x, bits) for x, bits in zip(xs, series.throttled, strict=True) if bits and bits & 0xF]
        traces.append({"type": "scatter", "mode": "markers", "name": series.node, "legendgroup": series.node,
                       "showlegend": False, "x": [x for x, _ in flagged], "y": [series.node] * len(flagged),
                       "yaxis": "y", "marker": {"color": colour, "size": 10, "symbol": "square"},
                       "hovertext": [", ".join(decode_throttled(bits & 0xF).labels()) for _, bits in flagged],
                       "hoverinfo": "text+x"})
        if series.max_temp is not None and any(v is not None for v in series.temp_c):
            for limit, dash in ((series.max_temp, "dash"), (series.max_temp - HOT_MARGIN, "dot")):
                if any(s.get("y0") == limit and s.get("yref") == "y3" for s in shapes):
                    continue  # nodes with the same limit share its line
                shapes.append({"type": "line", "xref": "paper", "yref": "y3", "x0": 0, "x1": 1, "y0": limit,
                               "y1": limit, "line": {"color": "#d64545", "width": 1, "dash": dash}})
    ended = (report.run.ended or t0) - t0
    shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": 0, "x1": round(ended, 3), "y0": 0, "y1": 1,
                   "fillcolor": "rgba(31,41,51,0.05)", "line": {"width": 0}, "layer": "below"})
    nodes = [s.node for s in report.health]
    annotations = []
    # Without a temperature sensor (a VM, a PC) the CPU panel takes the temperature's room.
    axes: dict[str, Any] = {"yaxis2": _axis("CPU %", domain=[0.22, 0.58] if any_temp else [0.22, 1], range=[0, 105])}
    if any_temp:
        axes["yaxis3"] = _axis("°C", domain=[0.64, 1])
    else:
        annotations.append({"xref": "paper", "yref": "paper", "x": 1, "y": 1, "xanchor": "right",
                            "yanchor": "bottom", "showarrow": False,
                            "text": "no temperature sensor on these nodes", "font": {"color": "#7b8794"}})
    return {
        "data": traces,
        "layout": _layout(
            height=420 if any_temp else 320, shapes=shapes, annotations=annotations,
            xaxis=_axis("seconds since submit (shaded: the run)", anchor="y"),
            yaxis=_axis("throttled", domain=[0, 0.16], type="category", categoryorder="array",
                        categoryarray=nodes, range=[-0.5, max(0.5, len(nodes) - 0.5)], showgrid=False),
            legend={"orientation": "h", "y": -0.16, "x": 0},
            margin={"l": 56, "r": 12, "t": 20 if not any_temp else 8, "b": 40},
            **axes,
        ),
    }


def result_histogram(report: RunReport) -> dict[str, Any] | None:
    """The summary job's histogram of the data, when the result has one."""
    hist = report.result.histogram
    if hist is None or not hist.counts:
        return None
    centres = [(a + b) / 2 for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
    widths = [b - a for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
    return {
        "data": [{"type": "bar", "x": centres, "y": list(hist.counts), "width": widths, "name": "values",
                  "marker": {"color": "#4477aa", "line": {"width": 0}},
                  "hovertemplate": "%{x:.4g}: %{y} value(s)<extra></extra>"}],
        "layout": _layout(height=280, showlegend=False, bargap=0.02, xaxis=_axis("value"),
                          yaxis=_axis("count", rangemode="tozero")),
    }


def result_rows(report: RunReport) -> dict[str, Any] | None:
    """Rows loaded per table, when the job reports them (ingest)."""
    rows = report.result.rows
    if not rows:
        return None
    return {
        "data": [{"type": "bar", "orientation": "h", "y": [name for name, _ in rows], "x": [n for _, n in rows],
                  "text": [f"{n:,}" for _, n in rows], "textposition": "auto", "marker": {"color": "#228833"},
                  "hovertemplate": "%{y}: %{x:,} row(s)<extra></extra>"}],
        "layout": _layout(height=max(140, 60 + 34 * len(rows)), showlegend=False,
                          xaxis=_axis("rows", rangemode="tozero"), yaxis=_axis("", type="category", automargin=True),
                          margin={"l": 8, "r": 12, "t": 8, "b": 44}),
    }


def build(report: RunReport) -> dict[str, dict[str, Any]]:
    """Every chart the report has, by name, in page order (a chart with nothing to show is left out)."""
    figures: dict[str, dict[str, Any]] = {}
    if any(a.started is not None for a in report.attempts):
        figures["timeline"] = timeline(report)
    if report.durations():
        figures["durations"] = durations(report)
        figures["nodes"] = per_node(report)
    if report.health:
        figures["health"] = health(report)
    for name, make in (("result_histogram", result_histogram), ("result_rows", result_rows)):
        spec = make(report)
        if spec is not None:
            figures[name] = spec
    return figures
