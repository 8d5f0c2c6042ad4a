"""`piblade provision` on the booted nspawn testbed, then real jobs on the provisioned nodes.

One scenario, in order (each test builds on the previous one): provision → again
with 0 changed → a hand-made drift found by --check → a worker's after-NAS
steps probed again only after a NAS node that changed → a fan-out that runs on the
worker nodes and writes to the NAS → status → a worker stopped and started is
announced down once and up once → a worker loses power mid-run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import fan_out_on_both_workers, piblade, wait_for_workers
from tests.integration import receivers
from tests.integration.receivers import HttpReceiver, wait_for

pytestmark = pytest.mark.e2e
http_receiver = receivers.http_receiver  # the alert receiver of the integration tier, on loopback



def provision_json(inventory: Path, *extra: str) -> dict[str, Any]:
    run = piblade("provision", "-i", str(inventory), "--json", *extra)
    assert run.stdout, run.stderr
    report = json.loads(run.stdout)
    report["returncode"] = run.returncode
    report["stderr"] = run.stderr
    return report


def hosts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in report["hosts"]}


@pytest.fixture(scope="module")
def inventory(testbed) -> Path:  # type: ignore[no-untyped-def]
    return Path(testbed.info().inventory)


@pytest.fixture(scope="module")
def provisioned(inventory: Path) -> dict[str, Any]:
    """The first `piblade provision` of the module's nodes: every other test here needs provisioned nodes."""
    report = provision_json(inventory)
    assert report["returncode"] == 0, f"the first piblade provision failed: {json.dumps(report, indent=1)}"
    return report


def test_first_provision_brings_every_node_up(provisioned: dict[str, Any]) -> None:
    report = provisioned
    by_host = hosts(report)
    assert report["returncode"] == 0, json.dumps(report, indent=1)
    assert set(by_host) == {"tb-ctl", "tb-nas", "tb-w1", "tb-w2"}
    for host in by_host.values():
        assert host["failed"] == 0, host
        assert host["changed"] > 0, host
    assert any("sshfs" in note for note in by_host["tb-w1"]["notes"])  # the testbed kernel has no cifs
    assert "x86_64" in by_host["tb-nas"]["facts"]


def test_second_provision_changes_nothing(provisioned: dict[str, Any], inventory: Path) -> None:
    report = provision_json(inventory)
    assert report["returncode"] == 0
    assert {h["host"]: h["changed"] for h in report["hosts"]} == dict.fromkeys(hosts(report), 0)


def test_the_nas_node_keeps_the_results_database_on_its_disk(provisioned: dict[str, Any], testbed,  # type: ignore[no-untyped-def]
                                                             inventory: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from piblade import resultsdb
    from piblade.context import resolve_cluster

    note = next(n for n in hosts(provisioned)["tb-nas"]["notes"] if n.startswith("results:"))
    assert note.startswith("results: PostgreSQL 15 on 10.199.0.10:5432, data in /srv/piblade/.postgresql/15/main")
    # From this machine (the controller, 10.199.0.1) over the cluster address, with the 0600 secret.
    target = resolve_cluster(inventory).results_target()
    assert (target.host, target.port) == ("10.199.0.10", 5432)
    with resultsdb.connect(target, migrate_schema=False) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == ("piblade", "piblade")
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    with pytest.raises(resultsdb.ResultsUnavailable, match="refused the password"):
        resultsdb.connect(replace(target, password_file=wrong), migrate_schema=False)
    with pytest.raises(resultsdb.ResultsUnavailable, match="no pg_hba.conf entry"):  # no superuser from outside
        resultsdb.connect(replace(target, user="postgres", dbname="postgres"), migrate_schema=False)
    on_node = testbed.run("tb-nas", "sudo -u postgres psql -XAt -c 'show data_directory' -c 'show listen_addresses' "
                                    "-c 'show password_encryption'; sudo stat -c '%U:%G:%a' /srv/piblade/.postgresql")
    assert on_node.stdout.split() == ["/srv/piblade/.postgresql/15/main", "localhost,10.199.0.10", "scram-sha-256",
                                      "postgres:postgres:750"]


def test_ingest_on_the_worker_nodes_loads_a_csv_on_the_nas_into_its_postgresql(
    provisioned: dict[str, Any], testbed, inventory: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """The workers' piblade.env names the NAS node's database and its 0600 password file: ingest runs there."""
    import secrets

    from piblade import resultsdb
    from piblade.context import resolve_cluster

    on_worker = testbed.run("tb-w1", "sudo stat -c '%U:%G:%a' /etc/piblade/postgres.password; "
                                     "sudo grep ^PIBLADE_RESULTS /etc/piblade/piblade.env")
    assert on_worker.stdout.split() == ["piblade:piblade:600",
                                        "PIBLADE_RESULTS_URL=postgresql://piblade@10.199.0.10:5432/piblade",
                                        "PIBLADE_RESULTS_PASSWORD_FILE=/etc/piblade/postgres.password"]
    rows = 4000
    folder, table = f"ingest-{secrets.token_hex(4)}", f"readings_{secrets.token_hex(4)}"
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "readings.csv").write_text("sensor,value\n" + "".join(f"{i},{i * 3}\n" for i in range(rows)))
    put = piblade("nas", "put", str(tmp_path / folder), folder, "-i", str(inventory))
    assert put.returncode == 0, put.stderr
    wait_for_workers(inventory, {"tb-w1", "tb-w2"})
    run = piblade("submit", "ingest", "--over", f"{folder}/*.csv", "-p", f"table={table}", "-i", str(inventory),
                  "--wait", "--json", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["result"]["rows"] == rows
    with resultsdb.connect(resolve_cluster(inventory).results_target()) as db:  # the NAS node's, from the host
        assert db.execute(f"SELECT count(*), sum(value) FROM {table}").fetchone() == (rows, 3 * rows * (rows - 1) // 2)
        assert db.execute(f"SELECT value FROM {table} WHERE sensor = 1234").fetchone() == (3702,)


def test_new_piblade_code_reaches_a_node_that_has_an_older_wheel_of_the_same_version(
    provisioned: dict[str, Any], testbed, inventory: Path  # type: ignore[no-untyped-def]
) -> None:
    # As after a `git pull` on the controller: the node holds a piblade wheel with
    # the same file name (the version did not change) but other contents.
    wheel = "/opt/piblade/wheelhouse/piblade-*-py3-none-any.whl"
    testbed.run("tb-w1", f"echo 'older code' | sudo tee -a {wheel} >/dev/null; "
                         "echo old-manifest | sudo tee /opt/piblade/venv/.piblade-wheelhouse >/dev/null")
    report = provision_json(inventory, "--limit", "tb-w1")
    assert report["returncode"] == 0, report["stderr"]
    assert "piblade in /opt/piblade/venv" in {c["step"] for c in hosts(report)["tb-w1"]["changes"]}
    from piblade.provision.wheelhouse import build
    from piblade.state import state_dir

    ours = next(w for w in build(state_dir() / "wheelhouse", "x86_64", "3.11").wheels if w.name.startswith("piblade-"))
    on_node = testbed.run("tb-w1", f"sha256sum /opt/piblade/wheelhouse/{ours.name}").stdout.split()[0]
    assert on_node == hashlib.sha256(ours.read_bytes()).hexdigest()
    assert hosts(provision_json(inventory, "--limit", "tb-w1"))["tb-w1"]["changed"] == 0


def test_check_finds_exactly_a_hand_made_drift(provisioned: dict[str, Any], testbed, inventory: Path) -> None:  # type: ignore[no-untyped-def]
    testbed.run("tb-nas", "echo '# drift' | sudo tee -a /etc/samba/smb.conf >/dev/null")
    report = provision_json(inventory, "--check")
    changes = {(h["host"], c["step"]) for h in report["hosts"] for c in h["changes"]}
    assert changes == {("tb-nas", "file /etc/samba/smb.conf"), ("tb-nas", "restart smbd")}
    shown = piblade("provision", "-i", str(inventory), "--check", "--diff", "--limit", "tb-nas")
    assert "-# drift" in shown.stdout and "would update /etc/samba/smb.conf" in shown.stdout
    # --check changed nothing; a real run repairs it, and then all is quiet again.
    assert "# drift" in testbed.run("tb-nas", "cat /etc/samba/smb.conf").stdout
    assert provision_json(inventory)["returncode"] == 0
    assert sum(h["changed"] for h in provision_json(inventory, "--check")["hosts"]) == 0


def test_a_worker_probes_its_after_nas_steps_again_only_after_a_nas_node_that_changed(  # type: ignore[no-untyped-def]
        provisioned: dict[str, Any], testbed, inventory: Path) -> None:
    from piblade.inventory import load_inventory
    from piblade.provision.run import Options, provision

    def probes() -> tuple[dict[str, list[str]], dict[str, int]]:
        """Each worker's probe round trips ("checking N steps") in one run, and each host's changed count."""
        events: list[tuple[str, str]] = []
        results = provision(load_inventory(inventory), Options(), lambda host, what: events.append((host, what)))
        checks = {w: [what for host, what in events if host == w and what.startswith("checking ")]
                  for w in ("tb-w1", "tb-w2")}
        return checks, {r.name: r.changed for r in results}

    # Nothing to change anywhere: one probe per worker, its mount and worker service included.
    checks, changed = probes()
    assert set(changed.values()) == {0}, changed
    assert {w: len(c) for w, c in checks.items()} == {"tb-w1": 1, "tb-w2": 1}, checks
    # The NAS node changes (a drift in smb.conf: rewritten, smbd restarted): the workers' mount
    # and worker service are probed again once it has converged, not decided from before it.
    testbed.run("tb-nas", "echo '# drift' | sudo tee -a /etc/samba/smb.conf >/dev/null")
    checks, changed = probes()
    assert changed["tb-nas"] == 2 and changed["tb-w1"] == changed["tb-w2"] == 0, changed
    assert {w: len(c) for w, c in checks.items()} == {"tb-w1": 2, "tb-w2": 2}, checks
    assert "# drift" not in testbed.run("tb-nas", "cat /etc/samba/smb.conf").stdout


def test_a_fan_out_runs_on_the_worker_nodes_and_lands_on_the_nas(provisioned: dict[str, Any], testbed, inventory: Path) -> None:  # type: ignore[no-untyped-def]
    fan_out_on_both_workers(testbed, inventory)


def test_runs_are_recorded_on_the_nas_node_and_survive_its_postgresql_restarting(
    provisioned: dict[str, Any], testbed, inventory: Path  # type: ignore[no-untyped-def]
) -> None:
    """The controller's recorder fills the NAS node's PostgreSQL; stopped mid-run, nothing is lost."""
    from piblade import recordstream, resultsdb
    from piblade.context import resolve_cluster
    from piblade.redisconn import connect
    from piblade.runs import load_run

    cluster = resolve_cluster(inventory)
    conn = connect(cluster.redis_target())
    target = cluster.results_target()  # 10.199.0.10:5432 over the cluster's bridge, with the 0600 secret
    wait_for_workers(inventory, {"tb-w1", "tb-w2"})
    submitted = piblade("submit", "mandelbrot", "-i", str(inventory), "-p", "width=1600", "-p", "height=1000",
                        "-p", "max_iter=3000", "-p", "tiles=40", "--json")
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run"]

    def attempts() -> int:
        with resultsdb.connect(target) as db:
            found = db.execute("SELECT count(*) FROM task_attempts WHERE run_id = %s", (run_id,)).fetchone()
        return int(found[0]) if found else 0

    deadline = time.monotonic() + 120
    while not attempts():  # part of the run is in the database before it goes away
        assert time.monotonic() < deadline, "no attempt of the run reached the NAS node's PostgreSQL"
        time.sleep(0.3)
    stopped = testbed.run("tb-nas", "sudo systemctl stop postgresql@15-main")
    assert stopped.returncode == 0, stopped.stderr
    state = ""
    while state not in ("finished", "failed"):
        assert time.monotonic() < deadline + 240, f"run {run_id} did not end ({state})"
        time.sleep(1)
        state = json.loads(piblade("jobs", "status", run_id, "-i", str(inventory), "--json").stdout)["state"]
    assert state == "finished"
    assert recordstream.backlog(conn) > 0  # the rest of the run waits in Redis while the database is down
    started = testbed.run("tb-nas", "sudo systemctl start postgresql@15-main")
    assert started.returncode == 0, started.stderr
    while recordstream.backlog(conn):
        assert time.monotonic() < deadline + 360, f"{recordstream.backlog(conn)} records still wait"
        time.sleep(0.5)
    with resultsdb.connect(target) as db:
        found = resultsdb.show_run(db, run_id)
    assert found is not None
    summary, rows = found
    tiles = sorted(r.task_id for r in rows if not r.task_id.endswith("-reduce"))
    assert tiles == sorted(load_run(conn, run_id).task_ids), tiles  # every tile, each once
    assert (summary.done, summary.failed, summary.attempts) == (41, 0, 41)  # 40 tiles and the reduce
    assert set(summary.nodes) == {"tb-w1", "tb-w2"}
    shown = piblade("runs", "show", run_id, "-i", str(inventory), "--json")  # as a user reads it
    assert shown.returncode == 0, shown.stderr
    conn.close()


def test_status_shows_every_node_up(provisioned: dict[str, Any], inventory: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        run = piblade("status", "-i", str(inventory), "--json")
        data = json.loads(run.stdout)
        if run.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert run.returncode == 0, run.stdout
    assert {n["name"]: n["up"] for n in data["nodes"]} == {"tb-ctl": True, "tb-nas": True, "tb-w1": True,
                                                           "tb-w2": True}


def test_a_stopped_node_is_announced_down_once_and_up_once(provisioned: dict[str, Any], testbed, inventory: Path,  # type: ignore[no-untyped-def]
                                                          http_receiver: HttpReceiver) -> None:
    """The controller's alert service (under the same supervisor as its Redis) sees tb-w2 go and come back."""
    import subprocess
    import sys

    def alerts_about_w2() -> list[str]:
        return [r.json()["title"] for r in http_receiver.on("/hook", "POST") if "tb-w2 is" in r.json()["title"]]

    stored = subprocess.run([sys.executable, "-m", "piblade", "alerts", "set-target", "hook", "-i", str(inventory)],
                            input=http_receiver.url("json", "/hook"), capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0, stored.stderr
    try:
        deadline = time.monotonic() + 30
        while not json.loads(piblade("alerts", "list", "-i", str(inventory), "--json").stdout)["active"]:
            assert time.monotonic() < deadline, "no alert service is active on the controller"
            time.sleep(1)
        testbed.stop("tb-w2")
        wait_for("the down alert", lambda: len(alerts_about_w2()) == 1, timeout=90)
        assert alerts_about_w2()[0].startswith("[testbed] tb-w2 is down: no heartbeat for ")
        testbed.start("tb-w2")
        wait_for("the back-up alert", lambda: len(alerts_about_w2()) == 2, timeout=120)
        assert alerts_about_w2()[1] == "[testbed] resolved: tb-w2 is back up"
        time.sleep(6)  # another check of the alert service: nothing more about tb-w2
        assert len(alerts_about_w2()) == 2
    finally:
        piblade("alerts", "set-target", "hook", "--remove", "-i", str(inventory))


def test_a_worker_that_loses_power_loses_no_tile(provisioned: dict[str, Any], testbed, inventory: Path) -> None:  # type: ignore[no-untyped-def]
    from rq.serializers import JSONSerializer

    from piblade.context import resolve_cluster
    from piblade.redisconn import connect
    from piblade.runs import load_run
    from piblade.worker import BladeJob

    conn = connect(resolve_cluster(inventory).redis_target())
    wait_for_workers(inventory, {"tb-w1", "tb-w2"})
    submitted = piblade("submit", "mandelbrot", "-i", str(inventory), "-p", "width=1600", "-p", "height=1000",
                        "-p", "max_iter=4000", "-p", "tiles=40", "--retries", "2", "--json")
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run"]

    def started_on_w1() -> list[str]:
        ids = load_run(conn, run_id).task_ids
        jobs = BladeJob.fetch_many(ids, connection=conn, serializer=JSONSerializer)
        return [j.id for j in jobs if j and j.get_status() == "started" and (j.worker_name or "").startswith("tb-w1.")]

    deadline = time.monotonic() + 120
    while not (in_flight := started_on_w1()):
        assert time.monotonic() < deadline, "tb-w1 never started a tile"
        time.sleep(0.2)
    testbed.kill("tb-w1")
    killed = time.monotonic()

    # The node shows as down within three heartbeat intervals (5 s each), with some slack for sampling.
    while True:
        data = json.loads(piblade("status", "-i", str(inventory), "--json").stdout)
        if not next(n for n in data["nodes"] if n["name"] == "tb-w1")["up"]:
            break
        assert time.monotonic() - killed < 25, "tb-w1 still shows as up"
        time.sleep(1)

    # Its in-flight tiles go back to the queue (they have retries) within 60 s.
    assert in_flight, "tb-w1 had no tile in hand when it died"
    while started_on_w1():
        assert time.monotonic() - killed < 60, f"still held by the dead node: {started_on_w1()}"
        time.sleep(1)

    wait = piblade("jobs", "status", run_id, "-i", str(inventory), "--json")
    finished = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        finished = json.loads(piblade("jobs", "status", run_id, "-i", str(inventory), "--json").stdout)
        if finished["state"] in ("finished", "failed"):
            break
        time.sleep(2)
    assert finished is not None and finished["state"] == "finished", wait.stdout
    assert finished["counts"] == {"finished": 40}
    assert "tb-w2" in finished["nodes"]
    conn.close()
