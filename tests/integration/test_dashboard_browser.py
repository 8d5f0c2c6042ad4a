"""The real dashboard process in a real browser: Debian's chromium driven by Playwright.

Two fake nodes beat into a real redis-server (through ``healthstore.publish``,
as agents do). The page must show a login form (and no data) without the
token, both nodes after logging in, and flip a node to "down" live, without a
reload, once its heartbeats stop. Screenshots (desktop and a 390×844 phone)
are saved under the test's tmp dir and the desktop one to /tmp/piblade-dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from piblade import dispatch, healthstore, local
from piblade.registry import load_registry
from piblade.report import plotlyjs
from piblade.report.render import render_html
from tests.integration.conftest import ROOT, TEST_JOBS, RedisServer, WorkerPool
from tests.integration.test_dashboard_app import fake_sample
from tests.report_samples import sample_report

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOT = Path("/tmp/piblade-dashboard.png")


class Heartbeats:
    """Beats for fake nodes every ``interval`` s; :meth:`stop` silences one node as a dead agent would."""

    def __init__(self, conn: redis.Redis, interval: float = 0.5) -> None:
        self.conn = conn
        self.interval = interval
        self.alive = {"pi-a": True, "pi-b": True}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = 0

    def beat(self) -> None:
        self._tick += 1
        wobble = (self._tick % 10) * 0.8
        if self.alive["pi-a"]:
            healthstore.publish(
                self.conn,
                "pi-a",
                fake_sample(
                    "pi-a", temp=52 + wobble, cpu=35 + wobble * 3, mem=41.0, disk=23.0, role="controller,worker"
                ),
                interval=self.interval,
                role="controller,worker",
            )
        if self.alive["pi-b"]:
            healthstore.publish(
                self.conn,
                "pi-b",
                fake_sample(
                    "pi-b", temp=78 + wobble / 2, cpu=88.0, mem=67.0, disk=91.0, throttled=0x50005, role="nas,worker"
                ),
                interval=self.interval,
                role="nas,worker",
                pause="under-voltage",
            )

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def start(self) -> None:
        now = time.time()
        for i in range(40, 0, -1):  # some history, so the charts have lines
            healthstore.publish(
                self.conn,
                "pi-a",
                fake_sample("pi-a", temp=48 + (i % 7), cpu=20 + (i * 7) % 50, mem=38 + i % 5, t=now - i * 30),
                interval=self.interval,
                role="controller,worker",
            )
            healthstore.publish(
                self.conn,
                "pi-b",
                fake_sample(
                    "pi-b", temp=70 + (i % 9), cpu=60 + (i * 5) % 35, mem=60 + i % 8, t=now - i * 30, throttled=0x50000
                ),
                interval=self.interval,
                role="nas,worker",
            )
        self.beat()
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)


@pytest.fixture
def dashboard(redis_server: RedisServer, conn: redis.Redis, workers: WorkerPool, tmp_path: Path) -> Iterator[dict]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run `make test` (scripts/ensure-packages.sh installs it)")
    registry = load_registry([TEST_JOBS])
    runs = [
        dispatch.submit(conn, registry, "test-sleep", {"count": "6", "seconds": "0.05"}),
        dispatch.submit(conn, registry, "test-fail", {"message": "disk on fire"}),
    ]
    for record in runs:
        dispatch.wait(conn, record.id, timeout=60)
    beats = Heartbeats(conn)
    beats.start()
    now = time.time()
    for i in range(8, -1, -1):  # a node two minutes old, named with a slash
        healthstore.publish(conn, "rack-2/pi-young", fake_sample("rack-2/pi-young", temp=45 + i, cpu=10 + i * 5,
                                                                 t=now - i * 15), interval=60, role="worker")
    port = local.free_port()
    state = tmp_path / "state"
    # A report page for the first run, where `piblade report` puts it on the (local cluster's) share.
    page = state / "local" / "data" / "runs" / runs[0].id / "report.html"
    page.parent.mkdir(parents=True)
    page.write_text(render_html(sample_report(tasks=64, failures=1), plotlyjs.bundle()))
    env = dict(
        os.environ,
        PIBLADE_REDIS_URL=redis_server.target.url(),
        PIBLADE_REDIS_PASSWORD_FILE=str(redis_server.target.password_file),
        PIBLADE_STATE_DIR=str(state),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "dashboard.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "piblade", "dashboard", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield {
            "url": url,
            "token": (state / "dashboard.token").read_text().strip(),
            "beats": beats,
            "log": log,
            "out": tmp_path,
        }
    finally:
        beats.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the dashboard did not start:\n{log.read_text()}")
        time.sleep(0.1)


def _wait_until(page, expression: str, timeout: float = 10.0) -> None:
    """Poll an expression (the page's CSP forbids the eval that wait_for_function's string form uses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            pytest.fail(f"still false after {timeout:g} s: {expression}")
        page.wait_for_timeout(100)


def test_dashboard_in_chromium(dashboard: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, token = dashboard["url"], dashboard["token"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            desktop = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = desktop.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

            # Without the token: the login form, and no cluster data.
            response = page.goto(url + "/")
            assert response is not None and response.status == 401
            assert page.locator("form#login input[name=token]").is_visible()
            assert page.locator(".node").count() == 0
            assert "pi-a" not in page.content()
            page.fill("input[name=token]", "wrong-token")
            page.click("button[type=submit]")
            assert "Wrong token." in page.locator(".msg").inner_text()

            # With it: both nodes, their charts, the queues and jobs.
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_selector('.node[data-node="pi-a"][data-state="up"]', timeout=10_000)
            errors.clear()  # the login page itself is a 401, which chromium logs as an error
            page.wait_for_selector('.node[data-node="pi-b"][data-state="paused"]', timeout=10_000)
            page.wait_for_selector("#conn[data-state=live]", timeout=10_000)
            page.wait_for_selector('.node[data-node="pi-a"] .chart svg path.line', timeout=10_000)
            assert page.locator('.node[data-node="pi-b"] .state').inner_text().lower() == "paused: under-voltage"
            assert "under-voltage" in page.locator('.node[data-node="pi-b"] .badges').inner_text()
            assert page.locator("#jobs tbody tr").count() == 2
            assert "test failure: disk on fire" in page.locator("#jobs").inner_text()
            page.wait_for_timeout(600)  # let the bars' transitions finish for the picture
            page.screenshot(path=str(tmp_path / "dashboard-desktop.png"), full_page=True)

            # The run with a report links to it; the report opens in a new tab, sandboxed, and draws.
            link = page.locator("#jobs a.report")
            assert link.count() == 1
            with desktop.expect_page() as opened:
                link.click()
            report = opened.value
            report.wait_for_selector("body[data-charts]", timeout=20_000)
            assert report.get_attribute("body", "data-charts") == "4"
            assert report.locator(".js-plotly-plot .main-svg").count() >= 4
            report.close()

            # What a user sees: number headers over their numbers, whole run ids, where a failed run ran,
            # a young node's chart across the chart (not a sliver at the right), a chart for a name with "/".
            for th in page.locator("table.rows th.num").all():
                assert th.evaluate("e => getComputedStyle(e).textAlign") == "right"
            assert page.locator("#jobs td.mono").first.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
            failed_row = page.locator("#jobs tbody tr", has=page.locator('.pill[data-state="failed"]'))
            assert "testnode" in failed_row.locator('td[data-label="Nodes"]').inner_text()
            page.wait_for_selector('.node[data-node="rack-2/pi-young"] .chart svg path.line', timeout=10_000)
            span = page.locator('.node[data-node="rack-2/pi-young"] .chart svg').evaluate(
                """svg => { const xs = [...svg.querySelectorAll('path.line')].flatMap(p =>
                              [...p.getAttribute('d').matchAll(/[ML]([0-9.]+) /g)].map(m => Number(m[1])));
                            return (Math.max(...xs) - Math.min(...xs)) / svg.getBoundingClientRect().width; }"""
            )
            assert span > 0.6, f"a young node's history covers only {span:.0%} of its chart"

            # Events keep arriving one by one (deltas, gzip flushed per event), not in a burst at the end.
            seen = int(page.evaluate("document.body.dataset.events || '0'"))
            for step in (1, 2, 3):
                _wait_until(page, f"Number(document.body.dataset.events) >= {seen + step}")
            assert page.evaluate("document.body.dataset.stream") == "live"

            # A hidden tab asks for one event a minute; back in view, it is live again.
            hide = """hidden => { Object.defineProperty(document, 'visibilityState', {value: hidden ? 'hidden' : 'visible',
                                                                                     configurable: true});
                                  document.dispatchEvent(new Event('visibilitychange')); }"""
            page.evaluate(hide, True)
            _wait_until(page, "document.body.dataset.stream === 'slow'")
            page.evaluate(hide, False)
            _wait_until(page, "document.body.dataset.stream === 'live'")
            seen = int(page.evaluate("document.body.dataset.events"))
            _wait_until(page, f"Number(document.body.dataset.events) >= {seen + 2}")

            # Stop pi-b's heartbeats: its card turns "down" live, with no reload.
            page.evaluate("window.__sameDocument = true")
            dashboard["beats"].alive["pi-b"] = False
            started = time.monotonic()
            page.wait_for_selector('.node[data-node="pi-b"][data-state="down"]', timeout=10_000)
            assert time.monotonic() - started < 10
            assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
            assert page.locator('.node[data-node="pi-a"]').get_attribute("data-state") == "up"
            assert page.locator('.node[data-node="pi-b"] .seen').inner_text().startswith("last seen")
            page.wait_for_timeout(300)
            page.screenshot(path=str(tmp_path / "dashboard-desktop-down.png"), full_page=True)

            # A phone: the same session, one column.
            phone = browser.new_context(
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
                color_scheme="dark",
            )
            phone.add_cookies(desktop.cookies())
            mobile = phone.new_page()
            mobile.goto(url + "/")
            mobile.wait_for_selector('.node[data-node="pi-a"] .chart svg path.line', timeout=10_000)
            width = mobile.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
            mobile.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    shutil.copy(tmp_path / "dashboard-desktop-down.png", SHOT)
    shutil.copy(tmp_path / "dashboard-phone.png", SHOT.with_name("piblade-dashboard-phone.png"))
