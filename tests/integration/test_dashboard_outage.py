"""When Redis goes away, the dashboard says "unknown", not "up": a real redis-server, stopped for real.

Before this, the last good snapshot was re-served with ``error`` set: /metrics
kept ``piblade_node_up 1`` and the last readings, cards said UP with a green
dot, and the history route answered a bare 500.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from piblade import healthstore
from tests.integration import dashboard_procs
from tests.integration.dashboard_procs import OwnRedis, dashboard_env, http_get, start_dashboard
from tests.integration.test_dashboard_app import fake_sample
from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.integration
own_redis = dashboard_procs.own_redis


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _publish(server: OwnRedis) -> None:
    conn = server.client()
    now = time.time()
    for i in range(5):
        healthstore.publish(conn, "pi-a", fake_sample("pi-a", temp=50 + i, t=now - 40 + i * 10), interval=30,
                            role="worker")


def test_metrics_api_and_page_when_redis_stops(own_redis: OwnRedis, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    _publish(own_redis)
    dash = start_dashboard(dashboard_env(own_redis.target, tmp_path / "state"), tmp_path / "dashboard.log")
    try:
        token = dash.token
        status, body = http_get(dash.url + "/metrics", token)
        before = _samples(body.decode())
        assert status == 200
        assert [s.value for s in before["piblade_node_up"]] == [1.0]
        assert [s.value for s in before["piblade_redis_up"]] == [1.0]

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(dash.url + "/")
                page.fill("input[name=token]", token)
                page.click("button[type=submit]")
                page.wait_for_selector('.node[data-node="pi-a"][data-state="up"]', timeout=10_000)
                page.wait_for_selector("#conn[data-state=live]", timeout=10_000)
                assert _dot_colour(page) == _colour_of(page, "--ok")

                own_redis.stop()  # the real server, gone

                page.wait_for_selector('.node[data-node="pi-a"][data-state="unknown"]', timeout=15_000)
                state = page.locator('.node[data-node="pi-a"] .state').inner_text().lower()
                assert re.fullmatch(r"unknown since \d\d:\d\d", state), state
                page.wait_for_selector("#conn[data-state=stale]", timeout=5_000)
                assert _dot_colour(page) == _colour_of(page, "--down")  # grey, not green
                assert page.locator("#error").is_visible()
                assert page.locator('.node[data-node="pi-a"] .bar-value').all_inner_texts() == ["–", "–", "–"]
                assert page.locator('.node[data-node="pi-a"] .temp').inner_text() == "– °C"
                page.screenshot(path=str(tmp_path / "redis-gone.png"), full_page=True)
            finally:
                browser.close()

        status, body = http_get(dash.url + "/metrics", token)
        after = _samples(body.decode())
        assert status == 200
        assert "piblade_node_up" not in after
        assert not [name for name in after if name.startswith("piblade_node_")], after.keys()
        assert [s.value for s in after["piblade_redis_up"]] == [0.0]

        status, body = http_get(dash.url + "/api/nodes/pi-a/history?seconds=600", token)
        assert status == 503
        assert json.loads(body)["error"].startswith("cannot read Redis")

        status, body = http_get(dash.url + "/api/nodes", token)
        nodes = json.loads(body)
        assert status == 503
        assert [(n["name"], n["state"], n["up"]) for n in nodes["nodes"]] == [("pi-a", "unknown", None)]
        assert nodes["unknown_since"] is not None and "temp_c" not in nodes["nodes"][0]

        # Redis back: live again, without a restart of the dashboard.
        own_redis.start()
        status, body = http_get(dash.url + "/api/nodes", token)
        assert status == 200 and json.loads(body)["nodes"][0]["state"] == "up"
    finally:
        dash.stop()


def _dot_colour(page) -> str:
    return page.evaluate("getComputedStyle(document.getElementById('conn'), '::before').backgroundColor")


def _colour_of(page, var: str) -> str:
    return page.evaluate(
        """v => { const p = document.createElement('span'); p.style.color = `var(${v})`;
                  document.body.appendChild(p); const c = getComputedStyle(p).color; p.remove(); return c; }""",
        var,
    )
