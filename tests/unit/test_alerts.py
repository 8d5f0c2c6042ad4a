"""The alert rules are pure: observations in, episode transitions out, one fire and one clear per episode."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from piblade import alertconfig
from piblade.alertrules import (
    AlertSettings,
    Change,
    Episode,
    NodeView,
    Observation,
    RunView,
    Transition,
    evaluate,
    message,
)
from piblade.healthmodel import HOT_MARGIN, PauseGate
from piblade.inventory import parse_inventory
from piblade.notify import redact

SETTINGS = AlertSettings()


def sample(temp: float | None = 50.0, *, max_temp: float = 80.0, disk: float = 40.0, mount: str | None = None,
           share: float = 10.0, under_voltage: bool = False, throttled: bool = False) -> dict[str, Any]:
    disks: dict[str, Any] = {"/": {"total": 100, "used": int(disk), "free": 100 - int(disk), "percent": disk}}
    if mount:
        disks[mount] = {"total": 1000, "used": int(share * 10), "free": 0, "percent": share}
    return {"temp_c": temp, "max_temp": max_temp, "disks": disks, "mount": mount,
            "flags": {"under_voltage": under_voltage, "throttled": throttled}}


def node(name: str, now: float, data: Mapping[str, Any] | None, *, silent: float = 1.0) -> NodeView:
    return NodeView(name, now - silent, 5.0, data)


class Episodes:
    """Applies transitions the way alertd does, and keeps every notice sent."""

    def __init__(self, settings: AlertSettings = SETTINGS) -> None:
        self.settings = settings
        self.firing: dict[str, Episode] = {}
        self.sent: list[Transition] = []

    def step(self, obs: Observation) -> list[Transition]:
        out = evaluate(self.settings, obs, self.firing)
        for t in out:
            if t.change is Change.FIRE:
                self.firing[t.episode.key] = t.episode
            else:
                del self.firing[t.episode.key]
            if t.notify:
                self.sent.append(t)
        return out


def test_a_node_hovering_at_its_limit_fires_once_and_clears_once() -> None:
    temps = [70, 79.9, 80.0, 79.5, 80.2, 77.0, 75.1, 80.0, 76, 75.0, 74.0, 79.9]
    book = Episodes()
    for i, temp in enumerate(temps):
        book.step(Observation(1000.0 + i, (node("pi1", 1000.0 + i, sample(temp)),)))
    assert [(t.change, t.episode.key) for t in book.sent] == [(Change.FIRE, "temp:pi1"), (Change.CLEAR, "temp:pi1")]
    assert book.sent[0].episode.summary == "pi1 is hot: 80.0 °C (limit 80 °C)"
    assert book.sent[1].detail == "pi1 cooled to 75.0 °C"


def test_temperature_alerts_agree_with_the_agents_pause_gate() -> None:
    """One hysteresis: the alert is firing exactly while the pause gate would pause for heat."""
    gate = PauseGate(80.0)
    book = Episodes()
    for i, temp in enumerate([60, 81, 79, 76, 75, 74.9, 80, 90, 70]):
        paused = gate.update(temp, None) == "hot"
        book.step(Observation(float(i), (node("pi1", float(i), sample(temp)),)))
        assert ("temp:pi1" in book.firing) is paused, (temp, paused)
    assert HOT_MARGIN == 5.0


def test_down_after_n_intervals_then_back_up_once() -> None:
    book = Episodes(AlertSettings(down_after=3))
    silences = [1, 10, 14.9, 15.1, 30, 60, 2, 1]  # interval 5 s: down past 15 s
    for i, silent in enumerate(silences):
        data = sample() if silent < 15 else None
        book.step(Observation(100.0 + i, (node("pi2", 100.0 + i, data, silent=silent),)))
    assert [(t.change, t.episode.key) for t in book.sent] == [(Change.FIRE, "down:pi2"), (Change.CLEAR, "down:pi2")]
    assert book.sent[0].episode.summary == "pi2 is down: no heartbeat for 15 s"
    assert book.sent[1].detail == "pi2 is back up"


def test_a_down_node_keeps_its_other_episodes_until_it_is_seen_again() -> None:
    book = Episodes()
    book.step(Observation(0.0, (node("pi1", 0.0, sample(85)),)))
    book.step(Observation(100.0, (node("pi1", 100.0, None, silent=100),)))
    assert set(book.firing) == {"temp:pi1", "down:pi1"}
    book.step(Observation(200.0, (node("pi1", 200.0, sample(60)),)))
    assert [t.change for t in book.sent] == [Change.FIRE, Change.FIRE, Change.CLEAR, Change.CLEAR]
    assert book.firing == {}


def test_a_node_taken_out_of_the_inventory_is_not_reported_down_and_its_episodes_close_silently() -> None:
    book = Episodes(AlertSettings(nodes=frozenset({"pi1", "pi2"})))
    book.step(Observation(0.0, (node("pi1", 0.0, sample(85)), node("pi2", 0.0, sample(60)))))
    assert set(book.firing) == {"temp:pi1"}
    # pi1 leaves the inventory while hot; its last heartbeat is still stored and goes silent.
    book.settings = AlertSettings(nodes=frozenset({"pi2"}))
    out = book.step(Observation(100.0, (node("pi1", 100.0, None, silent=100), node("pi2", 100.0, sample(60)))))
    assert [(t.change, t.episode.key) for t in out] == [(Change.CLOSE, "temp:pi1")]
    assert book.firing == {}
    assert [(t.change, t.episode.key) for t in book.sent] == [(Change.FIRE, "temp:pi1")]  # no "pi1 is down"


def test_power_throttling_disk_share_and_mount_rules() -> None:
    settings = AlertSettings(disk_percent=90, share_percent=90, mount_nodes=frozenset({"w1", "w2"}))
    book = Episodes(settings)
    obs = Observation(0.0, (
        node("w1", 0.0, sample(under_voltage=True, disk=91, mount="/mnt/piblade", share=95)),
        node("w2", 0.0, sample(throttled=True)),  # no mount
    ))
    book.step(obs)
    assert sorted(book.firing) == ["disk:w1", "share:share", "share_mount:w2", "throttled:w2", "under_voltage:w1"]
    # 89 % is inside the margin (2 points): still full; 87.9 % clears.
    book.step(Observation(1.0, (node("w1", 1.0, sample(disk=89, mount="/mnt/piblade", share=88.5)),
                                node("w2", 1.0, sample(mount="/mnt/piblade", share=88.5)))))
    assert sorted(book.firing) == ["disk:w1", "share:share"]
    book.step(Observation(2.0, (node("w1", 2.0, sample(disk=87.9, mount="/mnt/piblade", share=87)),
                                node("w2", 2.0, sample(mount="/mnt/piblade", share=87)))))
    assert book.firing == {}
    assert len(book.sent) == 10


def test_a_failed_run_fires_once_clears_after_a_retry_and_old_ones_close_silently() -> None:
    book = Episodes()
    run = RunView("1204-abcd", "mandelbrot", "failed", 2, 16, 0.0)
    for t in range(3):
        book.step(Observation(float(t), runs=(run,)))
    book.step(Observation(4.0, runs=(RunView("1204-abcd", "mandelbrot", "running", 0, 16, 0.0),)))
    book.step(Observation(5.0, runs=(RunView("1204-abcd", "mandelbrot", "finished", 0, 16, 0.0),)))
    assert [t.change for t in book.sent] == [Change.FIRE, Change.CLEAR]
    assert book.sent[0].episode.summary == "run 1204-abcd (mandelbrot) failed: 2 of 16 task(s) failed"
    book.step(Observation(6.0, runs=(run,)))
    out = book.step(Observation(7.0))  # the run is no longer watched
    assert [t.change for t in out] == [Change.CLOSE] and book.firing == {}
    assert len(book.sent) == 3


def test_a_node_without_a_sensor_never_fires_nor_clears_temperature() -> None:
    book = Episodes()
    book.step(Observation(0.0, (node("pi1", 0.0, sample(90)),)))
    book.step(Observation(1.0, (node("pi1", 1.0, sample(None)),)))
    assert "temp:pi1" in book.firing and len(book.sent) == 1


def test_message_text() -> None:
    episode = Episode("temp:pi1", "temp", "pi1", 1_764_860_400.0, "pi1 is hot: 82.5 °C (limit 80 °C)")
    title, body = message("garage", Transition(Change.FIRE, episode, episode.started))
    assert title == "[garage] pi1 is hot: 82.5 °C (limit 80 °C)"
    assert body == ("pi1 is hot: 82.5 °C (limit 80 °C).\n"
                    "Since 2025-12-04 15:00:00 UTC (cluster garage, alert temp:pi1).")
    title, body = message("garage", Transition(Change.CLEAR, episode, episode.started + 300, "pi1 cooled to 74.0 °C"))
    assert title == "[garage] resolved: pi1 cooled to 74.0 °C"
    assert body.startswith("pi1 cooled to 74.0 °C (resolved after 5 min).")


INVENTORY = """
all:
  vars:
    piblade_alert_targets: [phone, mail]
    piblade_alert_down_after: 4
    piblade_alert_disk_percent: 85
  children:
    controller:
      hosts:
        localhost: {ansible_connection: local}
    nas:
      hosts:
        nas.lan:
    workers:
      hosts:
        w1.lan:
        w2.lan:
        nas.lan:
"""


def test_inventory_settings_become_the_service_config(tmp_path: Path) -> None:
    config = alertconfig.from_cluster(parse_inventory(INVENTORY, source="garage.yml"))
    assert config.cluster == "garage" and config.targets == ("phone", "mail")
    assert config.rules.down_after == 4 and config.rules.disk_percent == 85 and config.rules.share_percent == 90
    assert config.rules.mount_nodes == frozenset({"w1.lan", "w2.lan"})  # the NAS node's share is its own disk
    assert config.rules.nodes == frozenset(n.name for n in parse_inventory(INVENTORY, source="garage.yml").nodes)
    assert alertconfig.write_config(tmp_path, config) is True
    assert alertconfig.write_config(tmp_path, config) is False
    assert alertconfig.read_config(tmp_path) == config


def test_inventory_refuses_alert_settings_outside_all_vars() -> None:
    bad = INVENTORY.replace("        w1.lan:\n", "        w1.lan: {piblade_alert_down_after: 2}\n")
    with pytest.raises(Exception, match="piblade_alert_down_after: is cluster-wide"):
        parse_inventory(bad, source="garage.yml")


def test_targets_live_in_a_0600_file_and_named_ones_must_exist(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    alertconfig.set_target(secrets, "phone", "ntfys://tk_abc123secret@ntfy.sh/garage-pis\n")
    assert (alertconfig.targets_file(secrets).stat().st_mode & 0o777) == 0o600
    config = alertconfig.AlertConfig("garage", targets=("phone", "mail"))
    with pytest.raises(alertconfig.AlertConfigError) as caught:
        alertconfig.selected(config, alertconfig.load_targets(secrets), secrets)
    assert "alert target(s) mail named in the inventory have no URL" in caught.value.message
    assert caught.value.hint is not None and "piblade alerts set-target mail" in caught.value.hint
    alertconfig.set_target(secrets, "mail", "mailto://u:pw@mail.lan")
    assert alertconfig.selected(config, alertconfig.load_targets(secrets), secrets) == [
        ("phone", "ntfys://tk_abc123secret@ntfy.sh/garage-pis"), ("mail", "mailto://u:pw@mail.lan")]
    with pytest.raises(alertconfig.AlertConfigError, match="not a target name"):
        alertconfig.set_target(secrets, "my phone", "json://x")


def test_redact_hides_tokens_passwords_and_topics() -> None:
    url = "ntfys://tk_abc123secret@ntfy.sh/garage-pis?priority=high&token=s3cr3tvalue"
    text = f"failed sending to {url}: user tk_abc123secret topic garage-pis token s3cr3tvalue"
    out = redact(text, url)
    assert "tk_abc123secret" not in out and "s3cr3tvalue" not in out and "garage-pis" not in out
    assert "ntfy.sh" not in url.replace("ntfy.sh", "") and out.startswith("failed sending to ***")
