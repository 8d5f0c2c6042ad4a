"""A :class:`~piblade.report.model.RunReport` as one self-contained HTML page. Pure: text in, text out.

Everything the page needs is inside it: plotly.js, the charts' data, the
stylesheet, the script and the image preview (a ``data:`` URL). A
Content-Security-Policy allows no source but the page itself, so even a
mistake in a future chart cannot make the browser fetch anything: the page
opens the same from a NAS share, an e-mail attachment or a laptop on a plane.

Every text that came from a run (parameters, node names, tracebacks) is
escaped: a job's exception message is data, never markup.
"""

from __future__ import annotations

import base64
import json
import time
from html import escape
from importlib import resources
from typing import Any

from piblade.report import figures
from piblade.report.model import FAILURES_SHOWN, RunReport, percentile

#: No request may leave the page: inline scripts and styles, data: images, nothing else.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
#: A result value longer than this is cut in the page (the whole value is in the run's history).
RESULT_CHARS = 4000
STATE_WORDS = {"finished": "finished", "failed": "failed", "running": "still running", "queued": "queued"}


def _asset(name: str) -> str:
    return resources.files("piblade.report").joinpath("static", name).read_text(encoding="utf-8")


def script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, no HTML comment opener."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _when(epoch: float | None) -> str:
    """A time as UTC text, inside ``<time>`` so the page's script can show it in the reader's zone."""
    if epoch is None:
        return "—"
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    return f'<time datetime="{iso}">{shown}</time>'


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 0.1:
        return f"{value * 1000:.1f} ms" if value < 0.01 else f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _stat(label: str, value: str, tone: str = "") -> str:
    cls = f"stat {tone}".strip()
    return f'<div class="{cls}"><div class="value">{value}</div><div class="label">{escape(label)}</div></div>'


def _chart(name: str, title: str, note: str = "", wide: bool = True) -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    cls = "card wide" if wide else "card"
    return (f'<section class="{cls}" id="{name}-card"><h2>{escape(title)}</h2>{note_html}'
            f'<div class="chart" data-figure="{name}" role="img" aria-label="{escape(title)}"></div></section>')


def _summary(report: RunReport) -> str:
    run = report.run
    secs = report.durations()
    hottest = max((t for h in report.health for t in h.temp_c if t is not None), default=None)
    flags = sorted({label for h in report.health for label in h.flag_labels()})
    busy = sum(secs)
    rate = report.tasks_done / run.seconds if run.seconds else None
    stats = [
        _stat("tasks done", f"{report.tasks_done:,}/{run.tasks:,}", "good" if report.tasks_done == run.tasks else ""),
        _stat("failed", f"{run.failed:,}", "bad" if run.failed else ""),
        _stat("wall time", escape(_seconds(run.seconds))),
        _stat("tasks/s", f"{rate:.1f}" if rate is not None else "—"),
        _stat("median task", escape(_seconds(percentile(secs, 0.5)))),
        _stat("busy time", escape(_seconds(busy) if secs else "—")),
        _stat("nodes · workers", f"{len(run.nodes)} · {len(report.lanes)}"),
        _stat("hottest", f"{hottest:.1f} °C" if hottest is not None else "—",
              "bad" if flags else ""),
    ]
    return '<div class="stats">' + "".join(stats) + "</div>"


def _params(report: RunReport) -> str:
    run = report.run
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in sorted(run.params.items())
    ) or '<tr><td colspan="2">none</td></tr>'
    facts = [
        ("submitted", _when(run.submitted)),
        ("first task started", _when(run.started)),
        ("last task ended", _when(run.ended)),
        ("queue", escape(run.queue)),
        ("tasks", f"{run.tasks:,}" + (" + reduce" if run.has_reduce else "")),
        ("attempts", f"{run.attempts:,}"),
        ("ran on", escape(", ".join(run.nodes) or "—")),
        ("output", escape(run.output + "/") if run.output else "—"),
        ("piblade", escape(run.piblade or "—")),
    ]
    fact_rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return ('<section class="card"><h2>Parameters</h2><table class="kv">' + rows + "</table></section>"
            '<section class="card"><h2>Run</h2><table class="kv">' + fact_rows + "</table></section>")


def _result(report: RunReport, charts: dict[str, Any]) -> str:
    result = report.result
    parts: list[str] = []
    top: list[str] = []  # the image and the value side by side on a wide screen
    if result.image is not None:
        mime = "image/jpeg" if result.image[:3] == b"\xff\xd8\xff" else "image/png"
        data = base64.b64encode(result.image).decode("ascii")
        size = f" ({result.image_size[0]}×{result.image_size[1]}, preview)" if result.image_size else ""
        top.append(f'<figure class="result-image"><img alt="{escape(result.image_name)}" '
                     f'src="data:{mime};base64,{data}"><figcaption>{escape(result.image_name)}{escape(size)}'
                     f"</figcaption></figure>")
    if result.value is not None:
        text = json.dumps(result.value, indent=1, sort_keys=True, default=str)
        if len(text) > RESULT_CHARS:
            text = text[:RESULT_CHARS] + "\n… (cut; `piblade jobs status` has the whole value)"
        top.append(f'<details class="value"{" open" if len(text) < 600 else ""}><summary>result value</summary>'
                   f"<pre>{escape(text)}</pre></details>")
    if top:
        parts.append(f'<div class="result-top{" pair" if len(top) == 2 else ""}">' + "".join(top) + "</div>")
    if "result_histogram" in charts:
        parts.append('<h3>Histogram of the data</h3><div class="chart" data-figure="result_histogram" role="img" '
                     'aria-label="histogram of the data"></div>')
    if "result_rows" in charts:
        parts.append('<h3>Rows loaded</h3><div class="chart" data-figure="result_rows" role="img" '
                     'aria-label="rows loaded per table"></div>')
    if not parts:
        return ""
    return '<section class="card wide" id="result-card"><h2>Result</h2>' + "".join(parts) + "</section>"


def _failures(report: RunReport) -> str:
    failures = report.failures
    if not failures:
        return ""
    items = []
    for a in failures[:FAILURES_SHOWN]:
        first = a.error.strip().splitlines()[-1] if a.error.strip() else "no traceback recorded"
        items.append(
            f'<details class="failure"><summary><span class="badge {escape(a.state)}">{escape(a.state)}</span> '
            f"<code>{escape(a.task)}</code> on {escape(a.lane)}"
            f'{f" (attempt {a.attempt})" if a.attempt > 1 else ""}: {escape(first)}</summary>'
            f"<pre>{escape(a.error or 'no traceback recorded')}</pre></details>"
        )
    more = len(failures) - FAILURES_SHOWN
    tail = f'<p class="note">and {more:,} more (`piblade runs show {escape(report.run.id)}` lists them all)</p>' \
        if more > 0 else ""
    return (f'<section class="card wide" id="failures-card"><h2>Failures ({len(failures):,})</h2>'
            + "".join(items) + tail + "</section>")


def _health_note(report: RunReport) -> str:
    lines = []
    for series in report.health:
        flags = series.flag_labels()
        temps = [t for t in series.temp_c if t is not None]
        peak = f"up to {max(temps):.1f} °C" if temps else "no temperature sensor"
        flag_text = ("<b>" + escape(", ".join(flags)) + "</b>") if flags else "no throttling"
        lines.append(f"{escape(series.node)}: {len(series.times)} sample(s), {peak}, {flag_text}")
    return "; ".join(lines)


def render_html(report: RunReport, plotly_js: str) -> str:
    """The whole page. ``plotly_js`` is the bundle's text (:func:`piblade.report.plotlyjs.bundle`)."""
    run = report.run
    charts = figures.build(report)
    state = STATE_WORDS.get(run.state, run.state)
    title = f"{run.job} {run.id}: {state}"
    sections: list[str] = [_summary(report), _result(report, charts)]
    if "timeline" in charts:
        sections.append(_chart("timeline", "Timeline: tasks per node and worker",
                               "One bar per attempt, one row per worker process; hover a bar for its task."))
    if "durations" in charts:
        sections.append(_chart("durations", "How long tasks took", wide=False))
        sections.append(_chart("nodes", "Tasks per node", wide=False))
    if "health" in charts:
        sections.append(_chart("health", "Nodes during the run: temperature, CPU, throttling",
                               _health_note(report)))
    sections.append(_failures(report))
    sections.append(_params(report))
    if report.notes:
        sections.append('<section class="card wide notes"><h2>Notes</h2><ul>'
                        + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul></section>")
    body = "".join(s for s in sections if s)
    data = {"figures": charts, "config": figures.CONFIG}
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="piblade {escape(run.piblade)}">
<title>{escape(title)}</title>
<style>{_asset("report.css")}</style>
</head>
<body>
<header>
  <div class="brand">piblade run report</div>
  <h1>{escape(run.job)} <code>{escape(run.id)}</code> <span class="badge {escape(run.state)}">{escape(state)}</span></h1>
  <p class="sub">submitted {_when(run.submitted)} · {run.tasks:,} task(s) on queue {escape(run.queue)}</p>
</header>
<main>
{body}
</main>
<footer>made by <code>piblade report</code> {_when(report.generated)} · charts by plotly.js (MIT), inside this file:
it needs no network.</footer>
<script type="application/json" id="report-data">{script_json(data)}</script>
<script>{plotly_js}</script>
<script>{_asset("report.js")}</script>
</body>
</html>
"""
