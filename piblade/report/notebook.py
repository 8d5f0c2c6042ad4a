"""``piblade report --notebook``: a Jupyter notebook that loads a run from the results database and
draws the report's charts. Pure: builds the notebook's JSON (nbformat 4) as plain dicts.

The notebook calls the same code as the page (:func:`piblade.report.make.load`
without Redis, then :func:`piblade.report.figures.build`), so its charts are
the page's charts, and people can go on from there with their own cells.

Each chart is displayed as plotly's own mimetype (JupyterLab draws it) *and*
as HTML that calls the plotly.js the notebook's first output carries (the
same small bundle as the page). An HTML export (``jupyter nbconvert --to
html``) keeps the HTML, so its charts draw with no network: plotly.py's
``notebook`` renderer would embed the full 4.6 MB bundle and still load
MathJax from a CDN, and its ``notebook_connected`` renderer leaves the charts
blank offline.
"""

from __future__ import annotations

import json
from typing import Any

#: nbformat 4.5 (cell ids required).
NBFORMAT, NBFORMAT_MINOR = 4, 5


def setup() -> None:
    """Put the page's plotly.js into the notebook once (the first output); the charts' HTML calls it."""
    from IPython.display import HTML, display

    from piblade.report import plotlyjs

    display(HTML(f"<script>{plotlyjs.bundle()}</script>"))


def show(spec: dict[str, Any]) -> None:
    """One chart: plotly's mimetype for JupyterLab, and HTML for exports that carry no extension."""
    import plotly.io as pio
    from IPython.display import display

    from piblade.report.figures import CONFIG

    html = pio.to_html(spec, include_plotlyjs=False, include_mathjax=False, full_html=False, config=CONFIG,
                       default_width="100%", validate=False)
    display({"application/vnd.plotly.v1+json": {"data": spec["data"], "layout": spec["layout"], "config": CONFIG},
             "text/html": html}, raw=True)


def _source(text: str) -> list[str]:
    lines = text.strip("\n").splitlines(keepends=True)
    return lines


def _markdown(cell_id: str, text: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": _source(text)}


def _code(cell_id: str, text: str) -> dict[str, Any]:
    return {"cell_type": "code", "id": cell_id, "metadata": {}, "execution_count": None, "outputs": [],
            "source": _source(text)}


CHARTS = (
    ("timeline", "Timeline: tasks per node and worker"),
    ("durations", "How long tasks took"),
    ("nodes", "Tasks per node"),
    ("health", "Nodes during the run: temperature, CPU, throttling"),
    ("result_histogram", "Histogram of the data"),
    ("result_rows", "Rows loaded"),
)


def notebook(run_id: str, job: str, inventory: str | None) -> dict[str, Any]:
    """The notebook of run ``run_id``; ``inventory`` is the ``-i`` file (None: the local cluster)."""
    cells = [
        _markdown("title", f"""
# piblade run `{run_id}` ({job})

Made by `piblade report --notebook {run_id}`. The run, its task attempts, the nodes' health during the
run and the job's result are read from the cluster's results database (PostgreSQL); the charts are the
ones `piblade report` draws. Run all cells; add your own below.
"""),
        _code("parameters", f"""
RUN_ID = {run_id!r}
INVENTORY = {inventory!r}  # None: the local cluster (`piblade local up`)
"""),
        _code("load", """
from pathlib import Path

from piblade.context import resolve_cluster
from piblade.report import figures
from piblade.report.make import load
from piblade.report.notebook import setup, show

setup()  # plotly.js, inside the notebook: its HTML export draws the charts with no network
cluster = resolve_cluster(None if INVENTORY is None else Path(INVENTORY))
report = load(cluster, RUN_ID, use_redis=False)
charts = figures.build(report)
run = report.run
print(f"{run.job} {run.id}: {run.state}, {report.tasks_done}/{run.tasks} tasks done, {run.failed} failed, "
      f"{len(report.attempts)} attempts on {', '.join(run.nodes)}")
for note in report.notes:
    print("note:", note)
"""),
        _code("params", """
for name, value in sorted(report.run.params.items()):
    print(f"{name:>12}: {value}")
"""),
    ]
    for name, title in CHARTS:
        cells.append(_markdown(f"h-{name}", f"## {title}"))
        cells.append(_code(f"chart-{name}", f"""
if {name!r} in charts:
    show(charts[{name!r}])  # or: import plotly.graph_objects as go; go.Figure(charts[{name!r}])
else:
    print("nothing to show for this run")
"""))
    cells.append(_markdown("h-result", "## The job's result"))
    cells.append(_code("result", """
from IPython.display import Image, display

if report.result.image is not None:
    display(Image(data=report.result.image))
print(report.result.value)
"""))
    cells.append(_markdown("h-failures", "## Failures"))
    cells.append(_code("failures", """
for attempt in report.failures[:20]:
    print(f"{attempt.task} ({attempt.state}) on {attempt.lane}:\\n{attempt.error}\\n")
if not report.failures:
    print("none")
"""))
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "piblade": {"run": run_id},
        },
        "nbformat": NBFORMAT,
        "nbformat_minor": NBFORMAT_MINOR,
    }


def dumps(nb: dict[str, Any]) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
