"""The lock file decides every version: what make demo/test install and what each node's wheelhouse holds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from piblade.provision.wheelhouse import LOCK, read_lock, requirements_for

ROOT = Path(__file__).resolve().parents[2]
LOCK_TEXT = (ROOT / LOCK).read_text()


def _pins(requirements: str) -> dict[str, str]:
    return {line.split("==")[0].lower(): line.split("==")[1].split()[0] for line in requirements.splitlines() if line}


def test_every_entry_of_the_lock_is_pinned_and_hashed() -> None:
    entries = read_lock(LOCK_TEXT)
    assert len(entries) > 30
    for entry in entries:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", entry.line), entry
        assert entry.hashes and all(h.startswith("sha256:") for h in entry.hashes), entry


def test_the_lock_covers_every_runtime_dependency_of_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    locked = {e.line.split("==")[0].lower().replace("_", "-") for e in read_lock(LOCK_TEXT)}
    assert names <= locked, names - locked


def test_a_pi_gets_the_locked_versions_with_their_hashes() -> None:
    pi = requirements_for(LOCK_TEXT, "aarch64", "3.11.2")
    locked = {e.line.split("==")[0]: e for e in read_lock(LOCK_TEXT) if e.marker is None}
    pins = _pins(pi)
    assert pins["numba"] == locked["numba"].line.split("==")[1]
    numba_line = next(line for line in pi.splitlines() if line.startswith("numba=="))
    assert all(f"--hash={h}" in numba_line for h in locked["numba"].hashes)
    assert "async-timeout" in pins  # python_full_version < 3.11.3: Debian bookworm's 3.11.2 needs it
    assert "colorama" not in pins and "sspilib" not in pins  # Windows only
    assert ";" not in pi  # markers are decided for the node, not left to pip on the controller


def test_markers_follow_the_nodes_python_not_the_controllers() -> None:
    old, new = _pins(requirements_for(LOCK_TEXT, "aarch64", "3.11.9")), _pins(requirements_for(LOCK_TEXT, "aarch64",
                                                                                                 "3.13.5"))
    assert "async-timeout" not in old
    numpys = {e.line for e in read_lock(LOCK_TEXT) if e.line.startswith("numpy==")}
    if len(numpys) > 1:  # the lock has one numpy per Python range: each node gets its own
        assert old["numpy"] != new["numpy"]


def test_a_node_known_by_major_minor_gets_what_any_patch_release_needs() -> None:
    pins = _pins(requirements_for(LOCK_TEXT, "x86_64", "3.11"))
    assert "async-timeout" in pins
