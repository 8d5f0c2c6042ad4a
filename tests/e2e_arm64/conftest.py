"""The arm64 e2e tier: a testbed of its own with an emulated aarch64 worker beside x86_64 nodes.

A package of its own, so its testbed (tb-nas and tb-w1 on x86_64, tb-arm1 on
aarch64 under qemu-user-static) comes up only after the tests/e2e testbed is
down: there is one testbed per machine. It is smaller than that one (one x86_64
worker, so a fan-out needs the arm64 node too) because an emulated node costs
≈10× the CPU of a native one. The first run on a machine builds the arm64 image
(its dpkg runs emulated: minutes); later runs boot from the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from piblade.testbed import Testbed
from piblade.testbed.emulation import rule_state
from tests.e2e.conftest import ROOT, require_testbed_host


@pytest.fixture(scope="package")
def testbed() -> Iterator[Testbed]:
    require_testbed_host()
    had_rule = rule_state() is not None
    bed = Testbed(inventory=ROOT / "inventory" / "testbed.yml")
    try:
        bed.up(workers=1, arm64=1)
        yield bed
    finally:
        bed.down()
    # `down` takes back the binfmt_misc rule it registered, and only that.
    assert (rule_state() is not None) == had_rule


@pytest.fixture
def inventory(testbed: Testbed) -> Path:
    return Path(testbed.info().inventory)
