"""The dashboard app in-process (httpx.ASGITransport) against a real redis-server.

Health is written the way agents write it (``healthstore.publish``), so the API,
``/metrics`` and the page are checked against what an agent really stores.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from piblade import healthstore
from piblade.dashboard.app import DashboardSettings, create_app
from piblade.dashboard.snapshot import SnapshotSource

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TOKEN = "test-token-" + "x" * 32
ORIGIN = "http://testserver"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fake_sample(
    node: str,
    *,
    temp: float | None = 48.5,
    cpu: float = 12.0,
    mem: float = 40.0,
    disk: float = 30.0,
    throttled: int | None = None,
    role: str = "worker",
    t: float | None = None,
) -> dict[str, Any]:
    """A sample shaped exactly like the agent's (built through HealthSample itself)."""
    from piblade.healthmodel import DiskUsage, HealthSample, decode_throttled

    total = 32_000_000_000
    return HealthSample(
        node=node,
        role=role,
        time=round(t if t is not None else time.time(), 3),
        model="Raspberry Pi 4 Model B Rev 1.4",
        cpu_percent=cpu,
        cpu_per_core=(cpu,) * 4,
        load_avg=(0.52, 0.4, 0.3),
        cpu_freq_mhz=1500.0,
        mem_total=4 * 2**30,
        mem_used=int(4 * 2**30 * mem / 100),
        mem_percent=mem,
        swap_total=0,
        swap_used=0,
        swap_percent=0.0,
        disks={"/": DiskUsage(total, int(total * disk / 100), int(total * (1 - disk / 100)), disk)},
        mount=None,
        net_rx_bps=1000.0,
        net_tx_bps=500.0,
        uptime_s=3600.0,
        processes=120,
        temp_c=temp,
        max_temp=80.0,
        throttled=throttled,
        flags=decode_throttled(throttled) if throttled is not None else None,
    ).to_dict()


def publish_two_nodes(conn: redis.Redis) -> None:
    now = time.time()
    for i in range(5):  # a little history for the charts
        healthstore.publish(
            conn, "pi-a", fake_sample("pi-a", temp=50 + i, cpu=20 + i, t=now - 40 + i * 10), interval=10, role="worker"
        )
    healthstore.publish(
        conn,
        "pi-b",
        fake_sample("pi-b", temp=83.0, cpu=97.5, throttled=0x50005, role="nas"),
        interval=10,
        role="nas",
        pause="under-voltage",
    )


def make_app(conn: redis.Redis, token: str | None = TOKEN, **settings: Any):
    return create_app(
        SnapshotSource(conn),
        DashboardSettings(token=token, interval=0.1, keepalive=0.2, stream_max_age=0.4, **settings),
    )


@pytest.fixture
async def client(conn: redis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    publish_two_nodes(conn)
    transport = httpx.ASGITransport(app=make_app(conn))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
        yield c


BEARER = {"Authorization": f"Bearer {TOKEN}"}
PROTECTED = [
    "/",
    "/api/nodes",
    "/api/queues",
    "/api/jobs",
    "/api/nodes/pi-a/history",
    "/metrics",
    "/events",
    "/static/dashboard.js",
    "/no-such-route",
]


@pytest.mark.parametrize("path", PROTECTED)
async def test_every_route_but_healthz_needs_auth(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 401
    assert "pi-a" not in response.text  # no data leaks to the login form either
    wrong = await client.get(path, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    right = await client.get(path, headers=BEARER)
    assert right.status_code == (404 if path == "/no-such-route" else 200)


async def test_healthz_is_open_and_says_nothing_about_the_cluster(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_page_without_session_is_the_login_form(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 401
    assert '<form id="login" method="post" action="/login">' in response.text
    assert 'id="initial"' not in response.text and "pi-a" not in response.text


async def test_other_authorization_schemes_are_not_guesses(client: httpx.AsyncClient) -> None:
    # ngrok's basic auth (when configured) may forward its header: the login form must still show.
    basic = {"Authorization": "Basic YWxpY2U6c2VjcmV0LXNlY3JldA=="}
    for _ in range(6):
        page = await client.get("/", headers=basic)
        assert page.status_code == 401 and 'id="login"' in page.text
    assert (await client.get("/api/nodes", headers=BEARER)).status_code == 200  # not rate-limited


async def test_loopback_is_not_trusted(client: httpx.AsyncClient) -> None:
    # ASGITransport reports the client as 127.0.0.1, as ngrok's forwarder does.
    response = await client.get("/api/nodes", headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status_code == 401


async def test_wrong_bearer_tokens_are_rate_limited(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        assert (await client.get("/api/nodes", headers={"Authorization": "Bearer guess"})).status_code == 401
    limited = await client.get("/api/nodes", headers={"Authorization": "Bearer guess"})
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    # While limited even the right token is not checked, so guessing learns nothing.
    assert (await client.get("/api/nodes", headers=BEARER)).status_code == 429
    # Off the tunnel's listener, X-Forwarded-For is what the sender wrote: a new one is no new client.
    for n in range(5):
        spoofed = {"Authorization": "Bearer guess", "X-Forwarded-For": f"203.0.113.{n}"}
        assert (await client.get("/api/nodes", headers=spoofed)).status_code == 429


async def test_login_sets_a_strict_httponly_signed_cookie(client: httpx.AsyncClient) -> None:
    response = await client.post("/login", data={"token": TOKEN}, headers={"Origin": ORIGIN})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("piblade_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http here
    assert TOKEN not in cookie  # a signed session, never the token itself
    page = await client.get("/")  # the client keeps the cookie
    assert page.status_code == 200
    assert "pi-a" in page.text and "pi-b" in page.text
    assert (await client.get("/api/nodes")).status_code == 200


async def test_cookie_is_secure_behind_https_proxy(conn: redis.Redis, client: httpx.AsyncClient) -> None:
    https = {"Origin": ORIGIN, "X-Forwarded-Proto": "https"}
    response = await client.post("/login", data={"token": TOKEN}, headers=https)
    assert "Secure" not in response.headers["set-cookie"]  # anyone can send the header: not on the main listener
    # ASGITransport's requests arrive at the URL's host and port: call that the tunnel's listener.
    tunnel = httpx.ASGITransport(app=make_app(conn, tunnel_listener=("testserver", 8471)))
    async with httpx.AsyncClient(transport=tunnel, base_url="http://testserver:8471") as via_ngrok:
        response = await via_ngrok.post("/login", data={"token": TOKEN},
                                        headers={**https, "Origin": "http://testserver:8471"})
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


async def test_forged_cookies_do_not_work(client: httpx.AsyncClient, conn: redis.Redis) -> None:
    now = int(time.time())
    for value in (f"{now}.{'0' * 64}", TOKEN, "", "garbage", f"{now}."):
        client.cookies.set("piblade_session", value)
        assert (await client.get("/api/nodes")).status_code == 401
    # A cookie signed for another token (another dashboard, or before the token was replaced).
    other = httpx.ASGITransport(app=make_app(conn, token="another-token-" + "y" * 32))
    async with httpx.AsyncClient(transport=other, base_url=ORIGIN) as c2:
        login = await c2.post("/login", data={"token": "another-token-" + "y" * 32}, headers={"Origin": ORIGIN})
        stolen = login.cookies["piblade_session"]
    client.cookies.set("piblade_session", stolen)
    assert (await client.get("/api/nodes")).status_code == 401


async def test_login_form_is_rate_limited_and_checks_origin(client: httpx.AsyncClient) -> None:
    assert (await client.post("/login", data={"token": TOKEN})).status_code == 403  # no Origin
    assert (
        await client.post("/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"})
    ).status_code == 403
    for _ in range(5):
        wrong = await client.post("/login", data={"token": "nope"}, headers={"Origin": ORIGIN})
        assert wrong.status_code == 401
        assert "Wrong token." in wrong.text
    limited = await client.post("/login", data={"token": TOKEN}, headers={"Origin": ORIGIN})
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers


async def test_logout_clears_the_cookie(client: httpx.AsyncClient) -> None:
    await client.post("/login", data={"token": TOKEN}, headers={"Origin": ORIGIN})
    response = await client.post("/logout", headers={"Origin": ORIGIN})
    assert response.status_code == 303
    assert 'piblade_session=""' in response.headers["set-cookie"]
    assert (await client.get("/api/nodes")).status_code == 401


async def test_read_only(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert (await client.request(method, "/api/nodes", headers=BEARER)).status_code == 405


async def test_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers=BEARER)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert not re.search(r"https?://(?!testserver)", response.text.split('<script id="initial"')[0])  # no CDN


async def test_api_returns_what_the_agents_wrote(client: httpx.AsyncClient) -> None:
    nodes = (await client.get("/api/nodes", headers=BEARER)).json()
    by_name = {n["name"]: n for n in nodes["nodes"]}
    assert set(by_name) == {"pi-a", "pi-b"}
    a, b = by_name["pi-a"], by_name["pi-b"]
    assert a["up"] and a["state"] == "up" and a["temp_c"] == 54.0 and a["cpu_percent"] == 24.0
    assert a["disk_percent"] == 30.0
    assert b["state"] == "paused" and b["paused"] == "under-voltage"
    assert "under-voltage" in b["throttling"] and "throttled" in b["throttling"]
    queues = (await client.get("/api/queues", headers=BEARER)).json()
    assert {q["name"] for q in queues["queues"]} >= {"default"}
    history = (await client.get("/api/nodes/pi-a/history?seconds=600", headers=BEARER)).json()
    assert [p["temp_c"] for p in history["points"]] == [50, 51, 52, 53, 54]
    assert (await client.get("/api/nodes/nobody/history", headers=BEARER)).status_code == 404
    assert (await client.get("/api/nodes/pi-a/history?seconds=lots", headers=BEARER)).status_code == 400


async def test_metrics_return_what_the_agents_wrote(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers=BEARER)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'piblade_node_up{node="pi-a",role="worker"} 1' in text
    assert 'piblade_node_temperature_celsius{node="pi-a"} 54' in text
    assert 'piblade_node_temperature_celsius{node="pi-b"} 83' in text
    assert 'piblade_node_cpu_usage_ratio{node="pi-b"} 0.975' in text
    assert 'piblade_node_memory_used_ratio{node="pi-a"} 0.4' in text
    assert 'piblade_node_throttled{node="pi-b",flag="under_voltage"} 1' in text
    assert 'piblade_node_throttled{node="pi-b",flag="freq_capped"} 0' in text
    assert 'piblade_node_paused{node="pi-b"} 1' in text
    assert re.search(r'^piblade_queue_depth\{queue="default"\} 0$', text, re.MULTILINE)
    assert "# TYPE piblade_node_up gauge" in text


async def test_metrics_follow_prometheus_conventions(client: httpx.AsyncClient) -> None:
    """Read back with the official parser: ratios in 0-1, base units, counters typed as counters."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get("/metrics", headers=BEARER)).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    pi_b = (("node", "pi-b"),)
    assert values[("piblade_node_cpu_usage_ratio", pi_b)] == 0.975
    assert values[("piblade_node_disk_used_ratio", pi_b)] == 0.3
    assert values[("piblade_node_temperature_celsius", pi_b)] == 83.0
    assert values[("piblade_node_network_receive_bytes_per_second", pi_b)] == 1000.0
    assert values[("piblade_node_network_transmit_bytes_per_second", pi_b)] == 500.0
    assert values[("piblade_node_memory_total_bytes", pi_b)] == 4 * 2**30
    for family in families.values():
        if family.name.endswith("_ratio"):
            assert all(0 <= s.value <= 1 for s in family.samples), family
        assert family.type in ("gauge", "counter"), family
        assert not family.name.endswith("_percent"), family.name
    assert families["piblade_tasks_finished"].type == "counter"
    assert families["piblade_tasks_failed"].type == "counter"


async def test_events_stream_pushes_a_snapshot(client: httpx.AsyncClient) -> None:
    response = await client.get("/events", headers=BEARER)  # ends after stream_max_age
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["content-encoding"] == "gzip"  # httpx asks for it, and decodes it
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    first = json.loads(data[0])
    assert set(first["view"]["nodes"]) == {"pi-a", "pi-b"}
    assert "sample" not in first["view"]["nodes"]["pi-a"]  # the page's view, not the raw snapshot


async def test_events_after_the_first_carry_only_what_changed(conn: redis.Redis) -> None:
    from piblade.dashboard import pageview

    publish_two_nodes(conn)
    app = create_app(SnapshotSource(conn), DashboardSettings(token=TOKEN, interval=0.05, keepalive=5,
                                                              stream_max_age=1.5))
    transport = httpx.ASGITransport(app=app)

    async def next_heartbeat() -> None:  # pi-a's, once the stream has started
        await asyncio.sleep(0.5)
        healthstore.publish(conn, "pi-a", fake_sample("pi-a", temp=61.5, cpu=70.0), interval=10, role="worker")

    beat = asyncio.create_task(next_heartbeat())
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
        response = await c.get("/events", headers={**BEARER, "Accept-Encoding": "identity"})
    await beat
    assert "content-encoding" not in response.headers
    events: list[tuple[str, dict]] = []
    kind = ""
    for line in response.text.splitlines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
    assert [k for k, _ in events[:2]] == ["view", "delta"], events
    patch = events[1][1]
    assert set(patch) == {"nodes"} and set(patch["nodes"]) == {"pi-a"}  # nothing about pi-b, queues or jobs
    assert patch["nodes"]["pi-a"]["temp_c"] == 61.5
    assert patch["nodes"]["pi-a"]["readings"]["cpu_percent"] == {"value": 70.0, "text": "70%"}  # level unchanged
    page = events[0][1]["view"]
    for _, later in events[1:]:
        page = pageview.apply(page, later)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        now = (await c.get("/", headers=BEARER)).text
    initial = json.loads(re.search(r'<script id="initial" type="application/json">(.*?)</script>', now).group(1))
    assert page == initial["view"]


async def test_a_node_whose_heartbeat_expired_is_down(conn: redis.Redis) -> None:
    healthstore.publish(conn, "pi-c", fake_sample("pi-c"), interval=0.5)  # TTL 2 s
    conn.delete(healthstore.SAMPLE_KEY.format("pi-c"))  # what expiry does
    transport = httpx.ASGITransport(app=make_app(conn))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
        nodes = (await c.get("/api/nodes", headers=BEARER)).json()["nodes"]
        metrics = (await c.get("/metrics", headers=BEARER)).text
    assert nodes[0]["name"] == "pi-c" and nodes[0]["state"] == "down" and nodes[0]["last_seen"]
    assert 'piblade_node_up{node="pi-c",role=""} 0' in metrics
    assert "piblade_node_temperature_celsius{" not in metrics  # no stale readings


async def test_without_auth_only_loopback_host_names_are_answered(conn: redis.Redis) -> None:
    transport = httpx.ASGITransport(app=make_app(conn, token=None))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8470") as c:
        assert (await c.get("/api/nodes")).status_code == 200
        rebound = await c.get("/api/nodes", headers={"Host": "evil.example:8470"})
        assert rebound.status_code == 421


async def test_jobs_show_state_duration_nodes_and_failure_reason(conn: redis.Redis, workers: Any) -> None:
    from piblade import dispatch
    from piblade.registry import load_registry
    from tests.integration.conftest import TEST_JOBS

    registry = load_registry([TEST_JOBS])
    ok = dispatch.submit(conn, registry, "test-sleep", {"count": "4"})
    bad = dispatch.submit(conn, registry, "test-fail", {"message": "disk on fire"})
    for record in (ok, bad):
        dispatch.wait(conn, record.id, timeout=60)
    transport = httpx.ASGITransport(app=make_app(conn))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
        jobs = {j["run"]: j for j in (await c.get("/api/jobs", headers=BEARER)).json()["jobs"]}
    good, failed = jobs[ok.id], jobs[bad.id]
    assert good["state"] == "finished" and good["done"] == 4 and good["nodes"] == {"testnode": 4}
    assert good["seconds"] is not None and good["seconds"] >= 0
    assert failed["state"] == "failed" and failed["failed"] == 1
    assert failed["failure"] == "ValueError: test failure: disk on fire"


def _task_counters(text: str) -> dict[tuple[str, str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, s.labels["node"], s.labels["queue"]): s.value
        for f in text_string_to_metric_families(text)
        if f.type == "counter"
        for s in f.samples
        if s.name.endswith("_total")
    }


async def test_task_counters_per_node_and_queue_survive_a_dashboard_restart(conn: redis.Redis, workers: Any) -> None:
    """Real workers count in Redis as they record each task's end; a new dashboard reads the same counts."""
    from piblade import dispatch
    from piblade.registry import load_registry
    from tests.integration.conftest import TEST_JOBS

    registry = load_registry([TEST_JOBS])
    for record in (
        dispatch.submit(conn, registry, "test-sleep", {"count": "4"}),
        dispatch.submit(conn, registry, "test-fail", {"message": "disk on fire"}),
    ):
        dispatch.wait(conn, record.id, timeout=60)

    async def scrape() -> dict[tuple[str, str, str], float]:
        transport = httpx.ASGITransport(app=make_app(conn))  # a new app each time: a restarted dashboard
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
            return _task_counters((await c.get("/metrics", headers=BEARER)).text)

    first = await scrape()
    assert first == {  # four tasks and the run's reduce
        ("piblade_tasks_finished_total", "testnode", "default"): 5.0,
        ("piblade_tasks_failed_total", "testnode", "default"): 1.0,
    }
    assert await scrape() == first  # reading changes nothing
    dispatch.wait(conn, dispatch.submit(conn, registry, "test-sleep", {"count": "2"}).id, timeout=60)
    later = await scrape()
    assert later[("piblade_tasks_finished_total", "testnode", "default")] == 8.0
    assert later[("piblade_tasks_failed_total", "testnode", "default")] == 1.0


def test_history_of_an_inventory_localhost_reads_what_its_agent_writes(conn: redis.Redis, tmp_path) -> None:
    """The agent on this machine beats under the host name; the inventory calls it localhost."""
    import socket

    from piblade.inventory import load_inventory

    inventory = tmp_path / "here.yml"
    inventory.write_text(
        "all:\n  children:\n    controller:\n      hosts:\n        localhost:\n          ansible_host: 127.0.0.1\n"
        "    workers:\n      hosts:\n        localhost:\n"
    )
    me = socket.gethostname()
    for i in range(3):
        healthstore.publish(conn, me, {"node": me, "time": time.time() + i, "temp_c": 40.0 + i}, interval=5)
    source = SnapshotSource(conn, load_inventory(inventory))
    points = source.history("localhost", 600)
    assert points is not None and [p["temp_c"] for p in points] == [40.0, 41.0, 42.0]
    assert source.history("nobody", 600) is None


async def test_finished_runs_link_to_their_report_which_is_served_sandboxed(
    conn: redis.Redis, workers: Any, tmp_path: Any
) -> None:
    """The dashboard finds a report `piblade report` wrote on the share, serves it behind the token and
    sandboxed (an opaque origin, no request allowed), and links only runs that have one."""
    from piblade import dispatch
    from piblade.context import LOCAL_CLUSTER, ClusterContext
    from piblade.dashboard.reports import ReportShelf
    from piblade.local import LocalPaths
    from piblade.registry import load_registry
    from tests.integration.conftest import TEST_JOBS

    registry = load_registry([TEST_JOBS])
    with_report = dispatch.submit(conn, registry, "test-sleep", {"count": "2"})
    without = dispatch.submit(conn, registry, "test-sleep", {"count": "2"})
    for record in (with_report, without):
        dispatch.wait(conn, record.id, timeout=60)
    paths = LocalPaths(tmp_path / "cluster")
    page = paths.data_dir / "runs" / with_report.id / "report.html"
    page.parent.mkdir(parents=True)
    page.write_text("<!doctype html><title>report</title><script>document.title = 'ran'</script>")
    shelf = ReportShelf(ClusterContext(LOCAL_CLUSTER, paths))
    app = create_app(SnapshotSource(conn, reports=shelf), DashboardSettings(token=TOKEN, interval=0.1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        jobs = {j["run"]: j for j in (await c.get("/api/jobs", headers=BEARER)).json()["jobs"]}
        assert jobs[with_report.id].get("report") is True and "report" not in jobs[without.id]
        assert (await c.get(f"/reports/{with_report.id}")).status_code == 401
        served = await c.get(f"/reports/{with_report.id}", headers=BEARER)
        assert served.status_code == 200 and served.text == page.read_text()
        csp = served.headers["content-security-policy"]
        assert csp.startswith("sandbox allow-scripts;") and "connect-src 'none'" in csp
        assert "allow-same-origin" not in csp
        for missing in (without.id, "0000-00000000", "..%2F..%2Fetc%2Fpasswd", "x" * 300):
            assert (await c.get(f"/reports/{missing}", headers=BEARER)).status_code == 404
    page.unlink()  # a file that goes away is not served from memory
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        assert (await c.get(f"/reports/{with_report.id}", headers=BEARER)).status_code == 404


async def test_the_page_shows_what_the_alert_service_has_firing(conn: redis.Redis) -> None:
    from piblade import alertstore
    from piblade.alertrules import Change, Episode, Transition

    publish_two_nodes(conn)
    episode = Episode("temp:pi-a", "temp", "pi-a", 1_764_860_400.0, "pi-a is hot: 82.0 °C (limit 80 °C)")
    assert alertstore.acquire(conn, "test-service", 30)
    alertstore.record(conn, "test-service", [(Transition(Change.FIRE, episode, episode.started), None)])
    transport = httpx.ASGITransport(app=make_app(conn))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
        page = (await c.get("/", headers=BEARER)).text
    initial = json.loads(re.search(r'<script id="initial" type="application/json">(.*?)</script>', page).group(1))
    assert initial["view"]["alerts"] == {"service": True, "firing": [
        {"key": "temp:pi-a", "rule": "temp", "summary": "pi-a is hot: 82.0 °C (limit 80 °C)", "started": 1_764_860_400.0}]}
    assert 'id="alerts-panel"' in page
