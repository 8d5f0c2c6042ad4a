"""Upgrading a running cluster, the parts that need no server: versions, checks of old tasks, the roll."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from piblade import tasks
from piblade.cli.output import console
from piblade.cli.status_cmd import render
from piblade.clusterstatus import ClusterStatus, NodeStatus
from piblade.provision.rolling import Rolling, work_in_progress
from piblade.provision.ssh import ScriptResult
from piblade.provision.steps import ChangeKind, Service
from piblade.provision.wheelhouse import source_hash, stamped_copy
from piblade.registry import REGISTRY, JobChanged, Param, code_version, job, load_registry
from piblade.runs import RunRecord

ROOT = Path(__file__).resolve().parents[2]


def record(**changes: Any) -> RunRecord:
    base: dict[str, Any] = {
        "id": "1204-abcd", "job": "mandelbrot", "params": {"tiles": 4}, "total": 4, "queue": "default",
        "created": 1.5, "output": "runs/1204-abcd", "has_reduce": True, "timeout": 600, "retries": 0,
        "piblade": "0.1.0+0123456789abcdef"}
    return RunRecord(**{**base, **changes})


def test_a_run_record_keeps_the_code_that_submitted_it() -> None:
    saved = record().to_hash()
    assert saved["piblade"] == "0.1.0+0123456789abcdef"
    assert RunRecord.from_hash("1204-abcd", saved) == record()
    # A record written before piblade recorded its version still loads.
    del saved["piblade"]
    assert RunRecord.from_hash("1204-abcd", saved).piblade == ""
    assert tasks.task_meta(record(), 2, "task")["piblade"] == "0.1.0+0123456789abcdef"
    assert "piblade" not in tasks.task_meta(record(piblade=""), 2, "task")


def test_the_code_version_is_the_version_plus_the_hash_a_wheel_of_this_checkout_is_stamped_with(
    tmp_path: Path,
) -> None:
    assert code_version() == f"0.1.0+{source_hash(ROOT)}"
    copy = stamped_copy(ROOT, tmp_path, "feedfacecafebeef")
    assert (copy / "piblade" / "_build.py").read_text().endswith("BUILD = 'feedfacecafebeef'\n")
    assert {p.name for p in copy.iterdir()} == {"pyproject.toml", "README.md", "piblade", "jobs"}
    assert not list(copy.rglob("__pycache__"))


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry()


def test_task_kwargs_are_checked_against_the_job_the_worker_has(registry) -> None:  # type: ignore[no-untyped-def]
    mandelbrot = registry.get("mandelbrot")
    tile = mandelbrot.plan(mandelbrot.validate({"tiles": 4}))[0]
    mandelbrot.check_task_kwargs(tile)  # what this code enqueues, this code runs
    with pytest.raises(JobChanged, match=r"^mandelbrot: its task takes no argument 'zoom'$"):
        mandelbrot.check_task_kwargs({**tile, "zoom": 2})
    with pytest.raises(JobChanged, match=r"^mandelbrot: its task needs 'x0', which the run does not give$"):
        mandelbrot.check_task_kwargs({k: v for k, v in tile.items() if k != "x0"})
    # The reduce gets the run's parameters: they are checked as a submit checks them.
    mandelbrot.check_run_params({"tiles": 4, "width": 100})
    with pytest.raises(JobChanged, match=r"^mandelbrot: unknown parameter 'colour'"):
        mandelbrot.check_run_params({"tiles": 4, "colour": "red"})
    with pytest.raises(JobChanged, match=r"^mandelbrot: tiles=0 is out of range"):
        mandelbrot.check_run_params({"tiles": 0})


def test_a_job_without_a_split_checks_its_kwargs_as_parameters() -> None:
    @job("upgrade-probe", summary="t", params=[Param("n", int, 1, min=1, max=5)])
    def task(ctx: Any, *, n: int) -> int:
        return n

    try:
        spec = REGISTRY.get("upgrade-probe")
        spec.check_task_kwargs({"n": 3})
        with pytest.raises(JobChanged, match=r"^upgrade-probe: n=9 is out of range$"):
            spec.check_task_kwargs({"n": 9})
        with pytest.raises(JobChanged, match=r"^upgrade-probe: unknown parameter 'm'"):
            spec.check_task_kwargs({"m": 3})
    finally:
        del REGISTRY.jobs["upgrade-probe"]


def test_work_in_progress_says_what_the_queues_hold() -> None:
    idle = [tasks.QueueCounts("default", 0, 0, 3)]
    assert work_in_progress(idle) is None
    busy = [tasks.QueueCounts("default", 120, 4, 0), tasks.QueueCounts("big", 1, 0, 0)]
    assert work_in_progress(busy) == "a run is in progress (121 tasks queued, 4 started)"


class FakeSession:
    """Records how many restarts overlap; each takes a little while, as a warm shutdown does."""

    def __init__(self, shared: dict[str, int]) -> None:
        self.shared = shared

    def script(self, text: str, **_: Any) -> ScriptResult:
        self.shared["now"] += 1
        self.shared["most"] = max(self.shared["most"], self.shared["now"])
        time.sleep(0.05)
        self.shared["now"] -= 1
        return ScriptResult(0, "", "")


def test_worker_restarts_take_turns_and_say_so() -> None:
    restart = Service("piblade-worker.service").restart()
    rolling = Rolling(None, in_progress="a run is in progress (10 tasks queued, 2 started)")
    assert rolling.holds(restart) and not rolling.holds(Service("piblade-agent.service").restart())
    assert rolling.describe(restart) == (
        "restart piblade-worker.service (its code or config changed), one node at a time: a run is in progress "
        "(10 tasks queued, 2 started); each worker finishes the task in hand first")
    shared = {"now": 0, "most": 0}
    outcomes: list[tuple[bool, str]] = []
    threads = [threading.Thread(target=lambda n=n: outcomes.append(
        rolling.restart(FakeSession(shared), f"w{n}", restart, lambda host, what: None)))  # type: ignore[arg-type]
        for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared["most"] == 1  # never two nodes restarting at once
    assert sorted(what.split(",")[1].split(" (")[0] for ok, what in outcomes) == [
        f" node {n} of the roll" for n in range(1, 5)]
    assert all(ok for ok, _ in outcomes)
    assert restart.kind is ChangeKind.RESTART


def test_a_halted_roll_restarts_no_more_nodes() -> None:
    rolling = Rolling(None, halted="the new workers of w1 did not register within 300 s")
    ok, what = rolling.restart(FakeSession({"now": 0, "most": 0}), "w2",  # type: ignore[arg-type]
                               Service("piblade-worker.service").restart(), lambda host, what: None)
    assert not ok and what == "not restarted: the new workers of w1 did not register within 300 s"


def node(name: str, versions: tuple[str, ...]) -> NodeStatus:
    return NodeStatus(name=name, role="workers", up=True, in_inventory=True, last_seen=1.0, seen_ago=1.0,
                      paused=None, running_jobs=(), workers=2, max_temp=None, sample=None, versions=versions)


def test_status_warns_when_workers_run_different_versions() -> None:
    mixed = ClusterStatus("home", 1.0, (node("pi1", ("0.1.0+aaaa",)), node("pi2", ("0.1.0+bbbb",)),
                                        node("pi3", ("0.1.0+aaaa",))), (), None)
    assert mixed.versions == {"0.1.0+aaaa": ("pi1", "pi3"), "0.1.0+bbbb": ("pi2",)}
    assert mixed.to_dict()["nodes"][1]["versions"] == ["0.1.0+bbbb"]
    from piblade.dashboard.pageview import node_view

    assert node_view(mixed.to_dict()["nodes"][1])["versions"] == ["0.1.0+bbbb"]  # the page's card shows it
    with console.capture() as captured:
        console.print(render(mixed))
    text = " ".join(captured.get().split())
    assert "workers run different piblade versions: 0.1.0+aaaa on pi1, pi3; 0.1.0+bbbb on pi2" in text
    level = ClusterStatus("home", 1.0, (node("pi1", ("0.1.0+aaaa",)), node("pi2", ("0.1.0+aaaa",))), (), None)
    with console.capture() as captured:
        console.print(render(level))
    assert "different piblade versions" not in captured.get()
