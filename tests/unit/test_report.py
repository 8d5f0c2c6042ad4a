"""The run report's model, charts, page and notebook, built from hand-made reports (no server)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from piblade.report import collect, figures, notebook, plotlyjs
from piblade.report.model import Attempt, HealthSeries, duration_histogram
from piblade.report.render import render_html, script_json
from tests.report_samples import sample_report

BUDGET_128 = 1_500_000


def test_duration_histogram_counts_every_value_once() -> None:
    values = [0.1 * (i % 17) + 0.01 * i for i in range(300)]
    hist = duration_histogram(values)
    assert len(hist.edges) == len(hist.counts) + 1
    assert sum(hist.counts) == len(values)
    assert hist.edges[0] == min(values) and hist.edges[-1] == max(values)
    same = duration_histogram([2.0] * 5)
    assert same.counts == (5,) and same.edges[0] < 2.0 < same.edges[1]
    assert duration_histogram([]).counts == ()


def test_timeline_has_one_bar_per_started_attempt_in_its_workers_lane() -> None:
    report = sample_report(tasks=40, nodes=2, failures=3)
    spec = figures.timeline(report)
    bars = sum(len(trace["x"]) for trace in spec["data"])
    assert bars == len(report.attempts) == 41  # 40 tasks, one retried once
    by_state = {trace["name"]: len(trace["x"]) for trace in spec["data"]}
    assert by_state == {"finished": 37, "retried": 1, "failed": 3}
    lanes = {y for trace in spec["data"] for y in trace["y"]}
    assert lanes == {a.worker for a in report.attempts}  # worker names start with their node's
    assert all(b >= 0 for trace in spec["data"] for b in trace["base"])


def test_every_chart_uses_only_trace_types_of_the_basic_bundle() -> None:
    report = sample_report(histogram=True, rows=True)
    built = figures.build(report)
    assert set(built) == {"timeline", "durations", "nodes", "health", "result_histogram", "result_rows"}
    kinds = {trace["type"] for spec in built.values() for trace in spec["data"]}
    assert kinds <= {"scatter", "bar", "pie"}


def test_charts_with_nothing_to_show_are_left_out() -> None:
    report = sample_report(tasks=4, failures=0, image=False)
    bare = type(report)(run=report.run, attempts=report.attempts)
    assert set(figures.build(bare)) == {"timeline", "durations", "nodes"}


def test_health_marks_throttled_samples_and_says_when_no_node_has_a_sensor() -> None:
    report = sample_report(tasks=30, nodes=3, failures=0)
    spec = figures.health(report)
    flagged = [t for t in spec["data"] if t["mode"] == "markers" and t["x"]]
    assert [t["y"][0] for t in flagged] == ["pi-c"]  # the sample's third node is under-volted at times
    assert "under-voltage" in flagged[0]["hovertext"][0]
    cool = sample_report(tasks=30, nodes=2, failures=0, temps=False)
    texts = [a["text"] for a in figures.health(cool)["layout"]["annotations"]]
    assert texts == ["no temperature sensor on these nodes"]


def test_health_series_from_agent_samples() -> None:
    samples = [{"time": 12.0, "temp_c": 61.25, "cpu_percent": 90.0, "throttled": 0x50005, "max_temp": 80.0},
               {"time": 7.0, "temp_c": None, "cpu_percent": 12.5, "throttled": None, "max_temp": 80.0}]
    series = HealthSeries.from_samples("pi-a", samples)
    assert series.times == (7.0, 12.0)
    assert series.temp_c == (None, 61.25)
    assert series.flag_labels() == ("under-voltage", "throttled")
    assert HealthSeries.from_dict(json.loads(json.dumps(series.to_dict()))) == series


def test_page_escapes_what_came_from_a_run() -> None:
    report = sample_report(tasks=8, failures=2)
    page = render_html(report, "/* plotly */")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.DOTALL)
    assert data is not None and "</" not in data.group(1)
    assert json.loads(data.group(1))["figures"]["timeline"]["data"]
    assert script_json({"x": "</script><b>"}) == '{"x":"\\u003c/script\\u003e\\u003cb\\u003e"}'


def test_page_allows_no_request_and_embeds_the_image() -> None:
    page = render_html(sample_report(tasks=8), "/* plotly */")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp is not None and "default-src 'none'" in csp.group(1) and "connect-src 'none'" in csp.group(1)
    assert re.search(r'src="(?!data:)', page) is None  # no src= but data: URLs
    assert 'src="data:image/jpeg;base64,' in page
    assert "href=" not in page


def test_a_128_task_report_fits_its_budget_with_the_real_bundle() -> None:
    page = render_html(sample_report(tasks=128, failures=2), plotlyjs.bundle()).encode()
    assert len(page) <= BUDGET_128
    assert b"plotly.js (basic - minified)" in page


def test_missing_bundle_says_how_to_get_it() -> None:
    with pytest.raises(plotlyjs.PlotlyMissing) as caught:
        plotlyjs.bundle("tests.unit")
    assert "make plotly" in (caught.value.hint or "")


def test_result_parsing_histogram_rows_and_image_names() -> None:
    summary = {"count": 3, "histogram": {"edges": [0.0, 1.0, 2.0], "counts": [1, 2]}}
    assert collect.histogram_of(summary) is not None and collect.histogram_of(summary).counts == (1, 2)  # type: ignore[union-attr]
    assert collect.histogram_of({"histogram": {"edges": [0.0], "counts": [1, 2]}}) is None
    assert collect.rows_of({"rows": 120, "table": "readings"}) == (("readings", 120),)
    assert collect.rows_of({"tables": {"a": 3, "b": 4}}) == (("a", 3), ("b", 4))
    assert collect.rows_of({"rows": True}) == ()
    assert collect.image_name({"image": "mandelbrot.png"}) == "mandelbrot.png"
    for bad in ("../etc/passwd.png", "sub/x.png", ".hidden.png", "notes.txt", 3):
        assert collect.image_name({"image": bad}) == ""


def test_preview_shrinks_a_large_image_to_a_jpeg() -> None:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (3200, 2000), (10, 20, 30)).save(out, "PNG")
    picture, size = collect.preview(out.getvalue())
    assert size == (3200, 2000)
    with Image.open(io.BytesIO(picture)) as shown:
        assert shown.format == "JPEG" and shown.size == (collect.PREVIEW_PX, 500)


def test_extras_round_trip_through_json() -> None:
    report = sample_report(tasks=6)
    extras = collect.Extras(report.health, {"image": "mandelbrot.png"})
    assert collect.Extras.from_json(json.loads(json.dumps(extras.to_json()))) == extras


def test_notebook_is_valid_nbformat_and_names_the_run(tmp_path: Path) -> None:
    import nbformat

    nb = notebook.notebook("1204-5a3c9e01", "mandelbrot", None)
    parsed = nbformat.reads(notebook.dumps(nb), as_version=4)
    nbformat.validate(parsed)
    code = "\n".join(c.source for c in parsed.cells if c.cell_type == "code")
    assert "RUN_ID = '1204-5a3c9e01'" in code and "INVENTORY = None" in code
    assert "use_redis=False" in code  # the notebook reads the results database only
    for name, _ in notebook.CHARTS:
        assert f"charts[{name!r}]" in code


def test_failures_are_newest_first_and_include_retried_attempts() -> None:
    a = Attempt("r-1", 1, "retried", "pi-a", "pi-a.1", 1.0, 2.0, error="boom")
    b = Attempt("r-2", 1, "failed", "pi-b", "pi-b.1", 1.0, 3.0, error="bang")
    c = Attempt("r-1", 2, "finished", "pi-a", "pi-a.1", 2.0, 2.5)
    report = sample_report(tasks=2)
    report = type(report)(run=report.run, attempts=(a, b, c))
    assert [f.task for f in report.failures] == ["r-2", "r-1"]


def test_dashboard_looks_for_a_missing_report_at_most_every_recheck_seconds(tmp_path: Path) -> None:
    from piblade.context import LOCAL_CLUSTER, ClusterContext
    from piblade.dashboard.reports import ReportShelf
    from piblade.local import LocalPaths

    paths = LocalPaths(tmp_path)
    paths.data_dir.mkdir(parents=True)
    shelf = ReportShelf(ClusterContext(LOCAL_CLUSTER, paths), recheck=30)
    run = "1204-5a3c9e01"
    assert shelf.which([run, "../../etc"], now=100.0) == set()
    page = paths.data_dir / collect.report_path(run)
    page.parent.mkdir(parents=True)
    page.write_text("<p>report</p>")
    assert shelf.which([run], now=110.0) == set()  # looked 10 s ago: not again yet
    assert shelf.which([run], now=131.0) == {run}
    page.unlink()
    assert shelf.which([run], now=132.0) == {run}  # a link once found stays; serving checks the file
    assert shelf.read(run) is None and shelf.read("../../etc/passwd") is None
