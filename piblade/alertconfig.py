"""Which alert targets a cluster has and how its rules are tuned: two files in the cluster's state.

* ``<cluster state>/alerts.json`` — the rules' settings and the target *names*, rendered from the
  inventory's ``piblade_alert_*`` (``piblade provision`` writes it for the controller's alert
  service; the local cluster, which has no inventory, runs on the defaults). Nothing secret.
* ``<cluster state>/secrets/alert-targets.json`` — mode 0600: each target name's Apprise URL
  (they hold tokens and passwords) and the dead-man URL. Written by ``piblade alerts
  set-target``, which reads the URL from stdin or a prompt, so it is never in argv, the
  inventory or a log. The service reads both files at every check: a new target needs no restart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from piblade.alertrules import AlertSettings
from piblade.errors import PibladeError
from piblade.inventory import Cluster
from piblade.state import read_secret, write_atomic, write_private

CONFIG_FILE = "alerts.json"
TARGETS_FILE = "alert-targets.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
#: A URL longer than this is no notification URL; refuse it before it reaches Apprise or the file.
MAX_URL = 4096


class AlertConfigError(PibladeError):
    """The alert targets or settings are missing or malformed."""


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """What the alert service of one cluster needs besides Redis. ``targets`` None: every stored target."""

    cluster: str = "local"
    rules: AlertSettings = field(default_factory=AlertSettings)
    targets: tuple[str, ...] | None = None
    deadman_interval: float = 60.0

    def to_json(self) -> str:
        rules = {f.name: getattr(self.rules, f.name) for f in fields(AlertSettings)}
        rules["mount_nodes"] = sorted(self.rules.mount_nodes)
        rules["nodes"] = sorted(self.rules.nodes) if self.rules.nodes is not None else None
        return json.dumps({"cluster": self.cluster, "rules": rules,
                           "targets": list(self.targets) if self.targets is not None else None,
                           "deadman_interval": self.deadman_interval}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AlertConfig:
        data = json.loads(text)
        rules = dict(data.get("rules") or {})
        rules["mount_nodes"] = frozenset(rules.get("mount_nodes") or ())
        rules["nodes"] = frozenset(rules["nodes"]) if rules.get("nodes") is not None else None
        targets = data.get("targets")
        return cls(str(data.get("cluster") or "local"), AlertSettings(**rules),
                   tuple(targets) if targets is not None else None, float(data.get("deadman_interval", 60.0)))


def from_cluster(cluster: Cluster) -> AlertConfig:
    """The inventory's ``piblade_alert_*`` settings; workers must have the share mounted if there is a NAS."""
    s = cluster.settings
    nas = cluster.nas
    mount_nodes = frozenset(n.name for n in cluster.workers if nas is not None and n.name != nas.name)
    rules = AlertSettings(down_after=s.alert_down_after, disk_percent=s.alert_disk_percent,
                          share_percent=s.alert_share_percent, mount_nodes=mount_nodes,
                          nodes=frozenset(n.name for n in cluster.nodes))
    return AlertConfig(cluster.name, rules, s.alert_targets, s.alert_deadman_interval)


def write_config(root: Path, config: AlertConfig) -> bool:
    """Write ``alerts.json`` if it differs; True when it changed."""
    path = root / CONFIG_FILE
    text = config.to_json()
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode=0o644)
    return True


def read_config(root: Path) -> AlertConfig:
    """``alerts.json`` of a cluster's state, or the defaults (the local cluster has none)."""
    path = root / CONFIG_FILE
    try:
        return AlertConfig.from_json(path.read_text())
    except FileNotFoundError:
        return AlertConfig()
    except (ValueError, TypeError, KeyError) as exc:
        raise AlertConfigError(f"{path} is not valid ({exc})", hint="run `piblade provision` to write it again") from None


@dataclass(frozen=True, slots=True)
class Targets:
    """The secret half: each target's Apprise URL, and the dead-man URL. Never printed."""

    urls: dict[str, str] = field(default_factory=dict, repr=False)
    deadman: str | None = field(default=None, repr=False)


def targets_file(secrets_dir: Path) -> Path:
    return secrets_dir / TARGETS_FILE


def load_targets(secrets_dir: Path) -> Targets:
    path = targets_file(secrets_dir)
    if not path.exists():
        return Targets()
    try:
        data = json.loads(read_secret(path))
        urls = {str(k): str(v) for k, v in (data.get("targets") or {}).items()}
        deadman = data.get("deadman")
    except (ValueError, AttributeError) as exc:
        raise AlertConfigError(f"{path} is not valid JSON ({type(exc).__name__})",
                               hint="fix it, or remove it and set the targets again with `piblade alerts set-target`"
                               ) from None
    return Targets(urls, str(deadman) if deadman else None)


def _save(secrets_dir: Path, targets: Targets) -> None:
    data: dict[str, Any] = {"targets": dict(sorted(targets.urls.items()))}
    if targets.deadman:
        data["deadman"] = targets.deadman
    write_private(targets_file(secrets_dir), json.dumps(data, indent=2) + "\n")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AlertConfigError(f"{name!r} is not a target name",
                               hint="use letters, digits, '_', '-' or '.', up to 40 characters (e.g. phone, mail)")
    return name


def check_url_text(url: str) -> str:
    url = url.strip()
    if not url:
        raise AlertConfigError("no URL given", hint="type or pipe the target's Apprise URL, e.g. ntfys://ntfy.sh/TOPIC")
    if len(url) > MAX_URL or "\n" in url:
        raise AlertConfigError("that is not one URL (too long, or several lines)",
                               hint="give one Apprise URL per target")
    return url


def set_target(secrets_dir: Path, name: str, url: str) -> None:
    current = load_targets(secrets_dir)
    _save(secrets_dir, Targets({**current.urls, check_name(name): check_url_text(url)}, current.deadman))


def set_deadman(secrets_dir: Path, url: str | None) -> None:
    current = load_targets(secrets_dir)
    _save(secrets_dir, Targets(current.urls, check_url_text(url) if url else None))


def remove_target(secrets_dir: Path, name: str) -> bool:
    current = load_targets(secrets_dir)
    if name not in current.urls:
        return False
    _save(secrets_dir, Targets({k: v for k, v in current.urls.items() if k != name}, current.deadman))
    return True


def selected(config: AlertConfig, targets: Targets, secrets_dir: Path) -> list[tuple[str, str]]:
    """(name, URL) of every target to notify; a name the inventory lists without a stored URL is an error."""
    if config.targets is None:
        return sorted(targets.urls.items())
    missing = [n for n in config.targets if n not in targets.urls]
    if missing:
        raise AlertConfigError(
            f"alert target(s) {', '.join(missing)} named in the inventory have no URL in "
            f"{targets_file(secrets_dir)}",
            hint=f"store each with `piblade alerts set-target {missing[0]}` (it reads the URL from stdin or a prompt)",
        )
    return [(n, targets.urls[n]) for n in config.targets]
