"""The controller's systemd unit: what keeps Redis, the recorder and the alert service up across restarts.

The controller is the machine piblade runs on, so its services run as the
user who provisions: as root a system unit, otherwise a unit of that user's
own systemd instance, which starts at boot only when the user "lingers"
(``loginctl enable-linger``). This module only decides and renders; the
``systemctl`` calls live in :mod:`piblade.localsystemd`. The unit runs the
same supervisor as ``piblade local up`` (``piblade local run``), so there is
one supervisor, started by whichever of the two the machine has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from piblade.provision.roles import render

SYSTEM_DIR = Path("/etc/systemd/system")


@dataclass(frozen=True, slots=True)
class ControllerUnit:
    """Where the unit goes and what it says."""

    name: str
    path: Path
    user_manager: bool  # True: `systemctl --user`; False: the system's manager
    content: bytes


def unit_name(cluster: str) -> str:
    """``piblade-controller-<cluster>.service``; one per cluster, as each has its own state directory."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", cluster)
    return f"piblade-controller-{safe}.service"


def controller_unit(
    cluster: str, *, root: Path, state_dir: Path, python: str, uid: int, home: Path
) -> ControllerUnit:
    """The unit for a cluster whose supervisor state is ``root``, run by ``python``, as user ``uid``."""
    name = unit_name(cluster)
    user_manager = uid != 0
    for value in (str(root), str(state_dir), python):
        if any(c in value for c in '"\\\n%$'):
            raise ValueError(f"{value!r}: a path with quotes, backslashes, % or $ cannot go into a systemd unit")
    content = render("controller/piblade-controller.service.j2", {
        "cluster": cluster,
        "root": str(root),
        "state_dir": str(state_dir),
        "python": python,
        "wanted_by": "default.target" if user_manager else "multi-user.target",
    })
    directory = home / ".config" / "systemd" / "user" if user_manager else SYSTEM_DIR
    return ControllerUnit(name, directory / name, user_manager, content)
