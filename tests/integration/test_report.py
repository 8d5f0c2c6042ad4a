"""`piblade report` end to end: real runs on real workers, history in a real PostgreSQL, health from a
real Redis, the page and the executed notebook opened in Debian's chromium with the network off.

Screenshots (desktop and a 390x844 phone) go to the test's tmp dir and to /tmp/piblade-report*.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from piblade import dispatch, healthstore, recorder, resultsdb, runs
from piblade.registry import load_registry
from tests.integration.conftest import ROOT, TEST_JOBS, PostgresServer, RedisServer, WorkerPool
from tests.integration.test_dashboard_app import fake_sample
from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.integration

BUDGET_128 = 1_500_000
NODE = "testnode"  # the worker pool's node name


class Beats:
    """Heartbeats of the worker's node while the runs go on: the health the report charts."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn, self.tick = conn, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def beat(self) -> None:
        self.tick += 1
        healthstore.publish(self.conn, NODE, fake_sample(NODE, temp=55 + self.tick % 7, cpu=40 + 7 * (self.tick % 8),
                                                         throttled=0x50005 if self.tick % 5 == 0 else 0),
                            interval=0.25, role="worker")

    def run(self) -> None:
        while not self.done.wait(0.25):
            self.beat()


@pytest.fixture
def cluster(redis_server: RedisServer, conn: redis.Redis, workers: WorkerPool, results: PostgresServer,
            tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A mandelbrot run of 128 tiles and a failing run, both finished and in the run history."""
    registry = load_registry([TEST_JOBS])
    beats = Beats(conn)
    beats.beat()
    beats.thread.start()
    try:
        time.sleep(0.6)
        image = dispatch.submit(conn, registry, "mandelbrot",
                                {"width": "640", "height": "400", "max_iter": "300", "tiles": "128"})
        failing = dispatch.submit(conn, registry, "test-fail", {"message": "disk on <b>fire</b>"})
        for record in (image, failing):
            assert dispatch.wait(conn, record.id, timeout=120).finished
        time.sleep(0.6)
    finally:
        beats.done.set()
        beats.thread.join(5)
    with resultsdb.connect(results.target) as db:
        while recorder.drain_once(conn, db):  # what `piblade recorder` does, until the stream is empty
            pass
    state = tmp_path / "state"
    (state / "local").mkdir(parents=True)
    (state / "local" / "data").symlink_to(workers.data_dir)  # the local cluster's share is the workers' data
    env = dict(
        os.environ,
        PIBLADE_REDIS_URL=redis_server.target.url(),
        PIBLADE_REDIS_PASSWORD_FILE=str(redis_server.target.password_file),
        PIBLADE_RESULTS_URL=results.target.display,
        PIBLADE_RESULTS_PASSWORD_FILE=str(results.server.password_file),
        PIBLADE_STATE_DIR=str(state),
        PYTHONPATH=str(ROOT),
    )
    env.pop("PIBLADE_INVENTORY", None)
    yield {"image": image.id, "failing": failing.id, "env": env, "data": workers.data_dir, "results": results}


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "piblade", *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def open_offline(html: Path, shot: Path, *, viewport: dict[str, int]) -> dict[str, Any]:
    """Open ``html`` in chromium with the network off; what was drawn, every request, errors; a screenshot."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run `make test` (scripts/ensure-packages.sh installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=viewport, offline=True)
            page = context.new_page()
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            page.wait_for_timeout(300)
            seen = page.evaluate("""() => ({
                charts: document.body.getAttribute('data-charts'),
                figures: [...document.querySelectorAll('[data-figure]')].map(el => ({
                    name: el.getAttribute('data-figure'),
                    svg: el.querySelectorAll('.main-svg').length,
                    points: el.querySelectorAll('.trace .point, .slice').length,
                    lines: el.querySelectorAll('.scatterlayer .trace .lines path').length,
                })),
                plots: [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
                    svg: el.querySelectorAll('.main-svg').length,
                    points: el.querySelectorAll('.trace .point, .slice').length,
                })),
                text: document.body.innerText,
                overflow: document.scrollingElement.scrollWidth - window.innerWidth,
                images: [...document.images].map(i => i.naturalWidth),
            })""")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return {**seen, "requests": requests, "errors": errors}


def test_report_page_renders_offline_in_chromium(cluster: dict[str, Any], tmp_path: Path) -> None:
    run_id = cluster["image"]
    out = cli(cluster["env"], "report", run_id)
    page = cluster["data"] / "runs" / run_id / "report.html"
    assert out.strip() == f"report: {cluster['env']['PIBLADE_STATE_DIR']}/local/data/runs/{run_id}/report.html"
    assert page.is_file() and page.stat().st_size <= BUDGET_128

    desktop = open_offline(page, tmp_path / "report-desktop.png", viewport={"width": 1280, "height": 900})
    assert desktop["requests"] == [page.as_uri()]  # the page itself, nothing else
    assert desktop["errors"] == []
    drawn = {f["name"]: f for f in desktop["figures"]}
    assert set(drawn) == {"timeline", "durations", "nodes", "health"}
    assert desktop["charts"] == "4"
    assert all(f["svg"] >= 1 for f in drawn.values())
    assert drawn["timeline"]["points"] == 129  # one bar per attempt: 128 tiles and the reduce
    assert drawn["health"]["lines"] >= 2  # temperature and CPU of the node
    assert desktop["images"] and desktop["images"][0] == 640  # the mandelbrot preview, full size (< 800 px)
    assert "128/128" in desktop["text"] and "mandelbrot.png" in desktop["text"]

    phone = open_offline(page, tmp_path / "report-phone.png", viewport={"width": 390, "height": 844})
    assert phone["requests"] == [page.as_uri()] and phone["errors"] == []
    assert phone["overflow"] <= 0  # nothing wider than the phone
    assert all(f["svg"] >= 1 for f in phone["figures"])
    for name in ("report-desktop.png", "report-phone.png"):
        Path("/tmp/piblade-" + name).write_bytes((tmp_path / name).read_bytes())


def test_failed_run_shows_its_traceback_escaped(cluster: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "failed.html"
    cli(cluster["env"], "report", cluster["failing"], "-o", str(target))
    text = target.read_text()
    assert "disk on &lt;b&gt;fire&lt;/b&gt;" in text and "<b>fire</b>" not in text
    unknown = subprocess.run([sys.executable, "-m", "piblade", "report", "0000-deadbeef"], env=cluster["env"],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1
    assert "no run '0000-deadbeef' in the run history" in unknown.stderr and "runs list" in unknown.stderr
    seen = open_offline(target, tmp_path / "failed.png", viewport={"width": 1280, "height": 900})
    assert "Failures (1)" in seen["text"] and "disk on <b>fire</b>" in seen["text"]
    assert seen["requests"] == [target.as_uri()]


def test_health_and_result_outlive_redis(cluster: dict[str, Any], conn: redis.Redis, tmp_path: Path) -> None:
    """The first report saves what it showed from Redis; once Redis has forgotten it, the next report
    (and the notebook) still show it, from the results database."""
    from piblade.nas.share import LocalShare
    from piblade.report import collect

    run_id = cluster["image"]
    with resultsdb.connect(cluster["results"].target) as db:
        first = collect.load_report(db, conn, LocalShare(cluster["data"]), run_id)
        assert first.health and first.health[0].node == NODE and first.result.value["tiles"] == 128
        conn.delete(healthstore.HISTORY_KEY.format(NODE), runs.RUN_KEY.format(run_id))
        later = collect.load_report(db, conn, LocalShare(cluster["data"]), run_id)
    assert later.health == first.health
    assert later.result.value == first.result.value
    assert later.result.image == first.result.image and later.notes == ()


def test_notebook_executes_and_its_html_draws_the_charts_offline(cluster: dict[str, Any], tmp_path: Path) -> None:
    run_id = cluster["image"]
    cli(cluster["env"], "report", "--notebook", run_id, "-o", str(tmp_path / "run.ipynb"))
    jupyter = Path(sys.executable).with_name("jupyter")
    done = subprocess.run(
        [str(jupyter), "nbconvert", "--execute", "--to", "html", "--ExecutePreprocessor.timeout=300",
         # the page template's own MathJax and require.js (CDN links) are not needed by the charts
         "--HTMLExporter.mathjax_url=", "--HTMLExporter.require_js_url=", str(tmp_path / "run.ipynb")],
        env={**cluster["env"], "JUPYTER_PLATFORM_DIRS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    html = tmp_path / "run.html"
    seen = open_offline(html, tmp_path / "notebook.png", viewport={"width": 1280, "height": 900})
    assert [r for r in seen["requests"] if not r.startswith("data:")] == [html.as_uri()]
    assert len(seen["plots"]) == 4  # timeline, durations, nodes, health
    assert all(p["svg"] >= 1 for p in seen["plots"])
    assert max(p["points"] for p in seen["plots"]) == 129  # timeline: 128 tiles and the reduce
    assert f"mandelbrot {run_id}: finished" in seen["text"]


def test_report_is_written_to_the_nas_share_over_smb(cluster: dict[str, Any], tmp_path: Path) -> None:
    """With a NAS (here a real smbd exporting the workers' data), the page goes to the share over SMB,
    beside the run's output, and the image is read from there too."""
    from tests.integration.smbd import start_smbd

    try:
        smbd = start_smbd(tmp_path / "smbd", share_dir=cluster["data"])
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        run_id = cluster["image"]
        out = cli({**cluster["env"], **smbd.env()}, "report", run_id)
    finally:
        smbd.stop()
    assert out.strip() == f"report: //{smbd.address}/piblade/runs/{run_id}/report.html"
    page = cluster["data"] / "runs" / run_id / "report.html"
    text = page.read_text()
    assert 'src="data:image/jpeg;base64,' in text and run_id in text
    assert not [p.name for p in page.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
