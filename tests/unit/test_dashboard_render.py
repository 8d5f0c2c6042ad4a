"""Pure parts of the dashboard: Prometheus text, run rows, page templates and what ships in the wheel."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from piblade.dashboard import metrics, views
from piblade.dashboard.snapshot import job_view

ROOT = Path(__file__).resolve().parents[2]


def _node(**extra: object) -> dict:
    node = {
        "name": "pi1",
        "role": "worker",
        "up": True,
        "paused": None,
        "last_seen": 1700000000.5,
        "temp_c": 51.2,
        "cpu_percent": 12.0,
        "mem_percent": 33.3,
        "disk_percent": 40.0,
        "running_jobs": ["j1"],
        "sample": {"load_avg": [0.5, 0.4, 0.3], "flags": {f: False for f in metrics.THROTTLE_FLAGS}},
    }
    node.update(extra)
    return node


def test_metrics_text() -> None:
    snap = {
        "nodes": [_node()],
        "queues": [{"name": "default", "queued": 3, "started": 1, "failed": 2, "workers": 4}],
        "error": None,
    }
    text = metrics.render(snap)
    assert 'piblade_node_up{node="pi1",role="worker"} 1\n' in text
    assert 'piblade_node_temperature_celsius{node="pi1"} 51.2\n' in text
    assert 'piblade_node_memory_used_ratio{node="pi1"} 0.333\n' in text
    assert 'piblade_node_throttled{node="pi1",flag="under_voltage"} 0\n' in text
    assert 'piblade_node_running_jobs{node="pi1"} 1\n' in text
    assert 'piblade_queue_depth{queue="default"} 3\n' in text
    assert 'piblade_queue_failed{queue="default"} 2\n' in text
    assert "piblade_redis_up 1\n" in text
    for line in text.splitlines():  # every line is a comment or `name{labels} number`
        assert line.startswith("# ") or re.fullmatch(r"[a-z_0-9]+(\{[^}]*\})? -?[0-9.e+-]+", line), line


def test_metrics_parse_with_the_official_parser_and_use_base_units() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    snap = {
        "nodes": [_node(sample={"load_avg": [0.5, 0.4, 0.3], "net_rx_bps": 2500.0, "net_tx_bps": 1200.5,
                                "mem_total": 4_000_000_000, "mem_used": 1_332_000_000})],
        "queues": [{"name": "default", "queued": 3, "started": 1, "failed": 2, "workers": 4}],
        "share": {"node": "pi1", "path": "/mnt/piblade", "total": 1_000_000_000, "used": 250_000_000,
                  "free": 750_000_000, "percent": 25.0},
        "error": None,
    }
    counts = {("pi1", "default", "finished"): 12, ("pi1", "default", "failed"): 2, ("pi2", "gpu", "finished"): 1}
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(snap, counts))}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("piblade_node_cpu_usage_ratio", (("node", "pi1"),))] == 0.12
    assert value[("piblade_node_disk_used_ratio", (("node", "pi1"),))] == 0.4
    assert value[("piblade_node_network_receive_bytes_per_second", (("node", "pi1"),))] == 2500.0
    assert value[("piblade_node_network_transmit_bytes_per_second", (("node", "pi1"),))] == 1200.5
    assert value[("piblade_node_memory_used_bytes", (("node", "pi1"),))] == 1_332_000_000
    assert value[("piblade_share_size_bytes", (("path", "/mnt/piblade"),))] == 1_000_000_000
    assert value[("piblade_share_free_bytes", (("path", "/mnt/piblade"),))] == 750_000_000
    assert value[("piblade_share_used_ratio", (("path", "/mnt/piblade"),))] == 0.25
    assert families["piblade_tasks_finished"].type == "counter"
    assert value[("piblade_tasks_finished_total", (("node", "pi1"), ("queue", "default")))] == 12
    assert value[("piblade_tasks_failed_total", (("node", "pi1"), ("queue", "default")))] == 2
    assert value[("piblade_tasks_finished_total", (("node", "pi2"), ("queue", "gpu")))] == 1
    assert not [name for name in families if name.endswith("_percent")]


def test_metrics_leave_out_unknown_and_stale_values_and_escape_labels() -> None:
    snap = {
        "nodes": [_node(name='we"ird\\node', temp_c=None, sample=None), _node(name="gone", up=False)],
        "queues": [],
        "error": None,
    }
    text = metrics.render(snap)
    assert 'piblade_node_up{node="we\\"ird\\\\node",role="worker"} 1' in text
    assert "piblade_node_temperature_celsius{" not in text.split('node="gone"')[0]
    assert 'piblade_node_up{node="gone",role="worker"} 0' in text
    assert 'piblade_node_cpu_usage_ratio{node="gone"}' not in text
    assert "piblade_redis_up 1" in text


def test_metrics_say_nothing_about_nodes_while_redis_cannot_be_read() -> None:
    from piblade.dashboard.snapshot import Snapshot, unknown

    last = Snapshot("home", 1000.0, (_node(),), ({"name": "default", "queued": 3, "started": 1, "failed": 2,
                                                   "workers": 4},))
    snap = unknown(last, "home", 1070.0, "cannot read Redis: ConnectionError")
    assert snap.nodes == ({"name": "pi1", "role": "worker", "state": "unknown", "up": None, "in_inventory": None,
                           "last_seen": 1700000000.5, "unknown_since": 1000.0},)
    text = metrics.render(snap.to_dict())
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["piblade_redis_up 0"]


def test_job_view() -> None:
    from piblade.dispatch import RunStatus
    from piblade.runs import RunRecord
    from piblade.tasks import TaskFailure

    record = RunRecord(id="r1", job="mandelbrot", params={}, total=5, queue="default", created=100.0, output="",
                       has_reduce=False, timeout=60, retries=0)
    # One task's record expired ("missing"): the CLI and the page both count it as failed.
    status = RunStatus(record, {"finished": 3, "failed": 1, "missing": 1}, None,
                       (TaskFailure("r1-00003", "ValueError: bad", "..."),), None, {"pi1": 3}, 2.5)
    row = job_view(status.to_dict(), now=200.0)
    assert row == {
        "run": "r1",
        "job": "mandelbrot",
        "queue": "default",
        "state": "failed",
        "total": 5,
        "done": 3,
        "failed": 2,
        "created": 100.0,
        "seconds": 2.5,
        "nodes": {"pi1": 3},
        "failed_nodes": {},
        "failure": "ValueError: bad",
    }
    running = job_view({**status.to_dict(), "state": "running", "seconds": None, "failures": []}, now=112.0)
    assert running["seconds"] == 12.0 and running["failure"] is None


def test_initial_json_cannot_close_its_script_tag() -> None:
    text = views.json_for_script({"name": "</script><script>alert(1)</script>", "amp": "&"})
    assert "</" not in text and "<" not in text and "&" not in text
    assert json.loads(text) == {"name": "</script><script>alert(1)</script>", "amp": "&"}


def test_login_style_hash_matches_the_template() -> None:
    html = (views.TEMPLATES / "login.html").read_text()
    style = re.search(r"<style>(.*?)</style>", html, re.DOTALL).group(1)  # type: ignore[union-attr]
    expected = "sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert views.login_style_hash() == expected


def test_page_loads_nothing_from_elsewhere() -> None:
    for path in [*views.TEMPLATES.iterdir(), *views.STATIC.iterdir()]:
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path
        assert "@import" not in text and "url(http" not in text, path


def test_templates_and_static_files_ship_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["piblade.dashboard"]
    package = ROOT / "piblade" / "dashboard"
    for path in [*views.TEMPLATES.iterdir(), *views.STATIC.iterdir()]:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch(relative, p) for p in patterns), f"{relative} would be left out of the wheel"


def test_page_view_patches_carry_only_changes_and_apply_back() -> None:
    from piblade.dashboard import pageview

    old = {"a": 1, "nodes": {"pi1": {"temp": 50, "readings": {"cpu": {"value": 1, "text": "1%"}}}, "gone": {"x": 1}},
           "order": ["pi1", "gone"], "error": None}
    new = {"a": 1, "nodes": {"pi1": {"temp": 51, "readings": {"cpu": {"value": 1, "text": "1%"}}},
                             "pi2": {"temp": None}}, "order": ["pi1", "pi2"], "error": None}
    patch = pageview.diff(old, new)
    assert patch == {"nodes": {"pi1": {"temp": 51}, "pi2": {"temp": None}, "gone": {"$del": 1}},
                     "order": ["pi1", "pi2"]}
    assert pageview.apply(old, patch) == new
    assert pageview.diff(new, new) == {}
