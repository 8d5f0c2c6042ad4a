"""Alerts over real protocols on loopback: webhooks and ntfy to an HTTP server, e-mail to an SMTP server.

The local cluster's agent reads its temperature from a file (PIBLADE_THERMAL_FILE):
driving it over the limit and back must give exactly one alert and one clear,
through a restart of the alert service; a standby takes over from a dead one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from piblade import alertstore, healthstore
from tests.integration import test_local_cluster
from tests.integration.conftest import RedisServer, worker_env
from tests.integration.receivers import HttpReceiver, SmtpReceiver, wait_for
from tests.integration.test_local_cluster import Cli, processes_mentioning

pytestmark = pytest.mark.integration
cli = test_local_cluster.cli  # the local cluster's fixture: its state dir, stopped and checked afterwards


def set_target(cli: Cli, name: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "piblade", "alerts", "set-target", name, *extra], input=url + "\n",
                          env=cli.env, capture_output=True, text=True, timeout=60, cwd=cli.state)


def test_alerts_test_reaches_webhook_ntfy_and_mail_and_names_what_failed(
    cli: Cli, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    hook = http_receiver.url("json", "/hooks/s3cr3t-hook-token")
    done = set_target(cli, "hook", hook)
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-hook-token" not in done.stdout + done.stderr
    secrets = cli.state / "local" / "secrets" / "alert-targets.json"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert set_target(cli, "phone", http_receiver.url("ntfy", "/garage-pis")).returncode == 0
    mail = f"mailto://127.0.0.1:{smtp_receiver.port}?from=piblade@garage.lan&to=owner@garage.lan&mode=insecure"
    assert set_target(cli, "mail", mail).returncode == 0
    # The internet is not reachable from here: this one must fail, clearly, without its token.
    assert set_target(cli, "public", "ntfys://tk_supersecrettoken@ntfy.sh/garage-pis").returncode == 0

    result = cli("alerts", "test", "--json")
    assert result.returncode == 1, result.stderr
    assert "supersecrettoken" not in result.stdout and "s3cr3t-hook-token" not in result.stdout
    by_name = {r["target"]: r for r in json.loads(result.stdout)["results"]}
    assert {n: r["ok"] for n, r in by_name.items()} == {"hook": True, "mail": True, "phone": True, "public": False}
    assert by_name["public"]["error"].startswith("not delivered to ntfy.sh: A Connection error occurred")
    assert by_name["public"]["error"].endswith("(can this machine reach ntfy.sh?)")

    (webhook,) = http_receiver.on("/hooks/", "POST")
    assert webhook.json()["title"] == "[local] test notice"
    (ntfy,) = [r for r in http_receiver.on("/", "POST") if r.path == "/"]
    assert ntfy.json()["topic"] == "garage-pis" and ntfy.json()["title"] == "[local] test notice"
    (email,) = smtp_receiver.mails
    assert email["Subject"] == "[local] test notice" and email["To"] == "owner@garage.lan"
    assert "alerts reach this target" in email.get_body(preferencelist=("plain",)).get_content()

    people = cli("alerts", "test")
    assert "failed public:" in people.stdout and "sent   hook:" in people.stdout
    assert "supersecrettoken" not in people.stdout


def test_set_target_refuses_a_url_apprise_does_not_know_and_never_echoes_it(cli: Cli) -> None:
    result = set_target(cli, "phone", "nosuch://user:hunter2@example.lan/x")
    assert result.returncode == 1
    assert "Apprise does not understand this URL (scheme 'nosuch')" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert not (cli.state / "local" / "secrets" / "alert-targets.json").exists()


def alertd_pids(state: Path) -> list[int]:
    return [pid for pid in processes_mentioning(str(state))
            if b"alertd" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_local_cluster_hot_node_alerts_once_clears_once_through_a_restart(
    cli: Cli, http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    thermal = tmp_path / "temp"
    thermal.write_text("50000\n")
    cli.env.update(PIBLADE_THERMAL_FILE=str(thermal), PIBLADE_MAX_TEMP="80", PIBLADE_HEALTH_INTERVAL="0.5",
                   PIBLADE_ALERT_INTERVAL="0.5")
    assert set_target(cli, "hook", http_receiver.url("json", "/hook")).returncode == 0
    assert set_target(cli, "", http_receiver.url("http", "/ping/dead-man-uuid"), "--deadman").returncode == 0
    up = cli("local", "up", "--workers", "1")
    assert up.returncode == 0, up.stderr

    def alerts() -> list[dict[str, str]]:
        return [r.json() for r in http_receiver.on("/hook", "POST")]

    wait_for("a dead-man ping", lambda: bool(http_receiver.on("/ping/dead-man-uuid", "GET")))
    thermal.write_text("85000\n")
    wait_for("the hot alert", lambda: len(alerts()) == 1)
    assert alerts()[0]["title"].startswith("[local] ") and alerts()[0]["title"].endswith(
        " is hot: 85.0 °C (limit 80 °C)")
    listed = json.loads(cli("alerts", "list", "--json").stdout)
    assert [e["rule"] for e in listed["firing"]] == ["temp"] and listed["active"]

    thermal.write_text("78000\n")  # cooler, but inside the 5 °C band: still hot, nothing sent
    (old,) = alertd_pids(cli.state)
    os.kill(old, signal.SIGKILL)  # the daemon starts a new one; it must not announce the episode again
    wait_for("a new alert service to take the lead", lambda: bool(
        alertd_pids(cli.state)) and str(alertd_pids(cli.state)[0]) in (
        json.loads(cli("alerts", "list", "--json").stdout)["active"] or ""), timeout=60)
    time.sleep(2)  # four checks of the new service
    assert len(alerts()) == 1

    thermal.write_text("74000\n")
    wait_for("the clear", lambda: len(alerts()) == 2)
    assert alerts()[1]["title"].endswith(" cooled to 74.0 °C") and "resolved:" in alerts()[1]["title"]
    time.sleep(1.5)
    assert len(alerts()) == 2
    assert json.loads(cli("alerts", "list", "--json").stdout)["firing"] == []
    log = (cli.state / "local" / "logs" / "alertd.log").read_text()
    assert "dead-man-uuid" not in log


def start_alertd(server: RedisServer, root: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**worker_env(server, root), "PIBLADE_ALERT_INTERVAL": "0.3"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "piblade", "alertd", "--root", str(root)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_standby_takes_over_when_the_active_service_dies(
    redis_server: RedisServer, conn: redis.Redis, http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    from piblade import alertconfig

    root = tmp_path / "cluster"
    alertconfig.set_target(root / "secrets", "hook", http_receiver.url("json", "/hook"))
    procs = [start_alertd(redis_server, root, tmp_path / f"alertd{i}.log") for i in range(2)]
    try:
        def beat(temp: float) -> None:
            healthstore.publish(conn, "pi9", {"temp_c": temp, "max_temp": 80.0, "disks": {}}, interval=60.0)

        beat(50.0)
        wait_for("one active service", lambda: alertstore.leader(conn) is not None)
        active_pid = int((alertstore.leader(conn) or "").split(":")[1])
        active = next(p for p in procs if p.pid == active_pid)
        standby = next(p for p in procs if p.pid != active_pid)
        beat(90.0)
        wait_for("the alert from the active service", lambda: len(http_receiver.on("/hook")) == 1)

        os.kill(active.pid, signal.SIGKILL)
        active.wait()
        wait_for("the standby to take the lead", lambda: f":{standby.pid}:" in (alertstore.leader(conn) or ""))
        beat(60.0)
        wait_for("the clear from the new active service", lambda: len(http_receiver.on("/hook")) == 2)
        assert [r.json()["title"] for r in http_receiver.on("/hook")] == [
            "[local] pi9 is hot: 90.0 °C (limit 80 °C)", "[local] resolved: pi9 cooled to 60.0 °C"]
        standby.send_signal(signal.SIGTERM)  # a clean stop hands the lead back at once
        standby.wait(timeout=20)
        assert alertstore.leader(conn) is None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_failed_run_is_announced_once_and_a_dead_man_endpoint_that_is_gone_is_named(
    redis_server: RedisServer, conn: redis.Redis, workers: object, http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    from piblade import alertconfig, dispatch, notify
    from piblade.registry import load_registry
    from tests.integration.conftest import TEST_JOBS

    root = tmp_path / "cluster"
    alertconfig.set_target(root / "secrets", "hook", http_receiver.url("json", "/hook"))
    run = dispatch.submit(conn, load_registry([TEST_JOBS]), "test-fail", {"message": "disk on fire"})
    dispatch.wait(conn, run.id, timeout=60)
    proc = start_alertd(redis_server, root, tmp_path / "alertd.log")
    try:
        wait_for("the failed-run alert", lambda: len(http_receiver.on("/hook")) == 1)
        time.sleep(1.5)  # five more checks: nothing new
        (notice,) = http_receiver.on("/hook")
        assert notice.json()["title"] == f"[local] run {run.id} (test-fail) failed: 1 of 1 task(s) failed"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    closed = notify.ping("http://127.0.0.1:9/ping/secret-uuid", timeout=2)
    assert closed is not None and closed.startswith("cannot reach the dead-man endpoint 127.0.0.1 (")
    assert "secret-uuid" not in closed
