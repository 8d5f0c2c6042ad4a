"""The controller's systemd unit as rendered: where it goes, what it runs, and that systemd accepts it."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from piblade.provision.controllerunit import controller_unit, unit_name


def render(uid: int, tmp_path: Path, root: str = "/srv/state/piblade/clusters/home"):
    return controller_unit("home", root=Path(root), state_dir=Path("/srv/state/piblade"), python=sys.executable,
                           uid=uid, home=tmp_path)


def lines(content: bytes, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in content.decode().splitlines() if line.startswith(f"{key}=")]


def test_as_root_a_system_unit_started_at_boot(tmp_path: Path) -> None:
    unit = render(0, tmp_path)
    assert unit.path == Path("/etc/systemd/system/piblade-controller-home.service")
    assert not unit.user_manager
    assert lines(unit.content, "WantedBy") == ["multi-user.target"]
    (start,) = lines(unit.content, "ExecStart")
    assert shlex.split(start) == [sys.executable, "-m", "piblade", "local", "run", "--root",
                                  "/srv/state/piblade/clusters/home"]
    assert shlex.split(lines(unit.content, "Environment")[0]) == ["PIBLADE_STATE_DIR=/srv/state/piblade"]
    # SIGTERM to the supervisor alone, which stops its children in order.
    assert lines(unit.content, "KillMode") == ["mixed"]
    assert lines(unit.content, "Restart") == ["on-failure"]


def test_as_a_user_a_unit_of_that_users_own_systemd(tmp_path: Path) -> None:
    unit = render(1000, tmp_path)
    assert unit.user_manager
    assert unit.path == tmp_path / ".config/systemd/user/piblade-controller-home.service"
    assert lines(unit.content, "WantedBy") == ["default.target"]
    assert "User=" not in unit.content.decode()


def test_a_cluster_name_becomes_a_valid_unit_name() -> None:
    assert unit_name("home lab/2") == "piblade-controller-home_lab_2.service"


@pytest.mark.parametrize("root", ["/srv/$HOME/x", '/srv/a"b', "/srv/50%"])
def test_a_path_systemd_would_expand_is_refused(tmp_path: Path, root: str) -> None:
    with pytest.raises(ValueError, match="cannot go into a systemd unit"):
        render(0, tmp_path, root)


def test_systemd_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed to check the rendered unit"
    for uid in (0, 1000):
        unit = render(uid, tmp_path)
        path = tmp_path / unit.name
        path.write_bytes(unit.content)
        proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip() == "", proc.stderr  # a misspelt setting is only a warning there
