"""The nodes' wheelhouse holds exactly the locked versions, for x86_64 and for a Pi's aarch64.

Downloads from the package index (the one place the network is allowed), as provisioning does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from piblade.provision.wheelhouse import LOCK, build, project_root, read_lock, requirements_for

pytestmark = pytest.mark.integration


def _name(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")


@pytest.mark.parametrize(("arch", "python"), [("aarch64", "3.11"), ("x86_64", "3.11")])
def test_the_wheelhouse_has_the_locked_version_of_every_dependency(arch: str, python: str, tmp_path: Path) -> None:
    house = build(tmp_path, arch, python)
    wanted = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1].split()[0]
              for line in requirements_for((project_root() / LOCK).read_text(), arch, python).splitlines()}
    got = {_name(w): w.name.split("-")[1] for w in house.wheels if not w.name.startswith("piblade-")}
    assert got == wanted
    for wheel in house.wheels:
        tag = wheel.name.removesuffix(".whl").split("-")[-1]
        assert tag == "any" or arch in tag, wheel.name  # binary wheels for the node, nothing built there
    assert any(w.name.startswith("piblade-") for w in house.wheels)
    assert read_lock((project_root() / LOCK).read_text())
