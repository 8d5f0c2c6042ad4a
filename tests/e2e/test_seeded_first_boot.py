"""A blank card's first boot, on the testbed: `piblade node add` writes the seed, a node boots from it.

The node (``tb-card``) boots the testbed image as a freshly flashed card would
boot: cloud-init on, no ``pi`` user, no SSH host keys, no network file of the
testbed's, and the seed ``piblade node add --dir`` wrote (for the testbed's
inventory, ``--interface host0``) as its NoCloud source. Everything checked
here came from that seed. Then ``piblade provision`` reaches it with strict host
key checking and no trust step, and ``piblade status`` lists it up.

The module puts the testbed back as it found it: the card node is removed, and
the inventory and known_hosts get their old text back.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from piblade.seed import KEYS_BEGIN, KEYS_END, SEED_FILES
from piblade.testbed import Testbed, TestbedError
from tests.e2e.conftest import piblade
from tests.e2e.test_provision import hosts, provision_json

pytestmark = pytest.mark.e2e

CARD = "tb-card"
ADDRESS = "10.199.0.30"
SEED_COPY = "/var/lib/cloud/seed/nocloud"  # where the node read its seed from


@dataclass(frozen=True, slots=True)
class Card:
    bed: Testbed
    inventory: Path
    known_hosts: Path
    seed: dict[str, str]  # the files as node add wrote them
    added: dict[str, Any]  # node add --json
    known_hosts_after_add: str

    def run(self, command: str) -> str:
        done = self.bed.run(CARD, command)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def card(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Card]:
    info = testbed.info()
    for node in testbed.status().nodes:  # provisioning below needs the NAS node; an earlier test may have stopped it
        if node.name == info.nas.name and not node.running:
            testbed.start(node.name)
    saved = {path: path.read_text() for path in (info.inventory, info.known_hosts)}
    seed = tmp_path_factory.mktemp("card") / "seed"
    try:
        add = piblade("node", "add", CARD, "--role", "workers", "--ip", f"{ADDRESS}/24", "--interface", "host0",
                      "--dir", str(seed), "-i", str(info.inventory), "--json")
        assert add.returncode == 0, add.stdout + add.stderr
        files = {name: (seed / name).read_text() for name in SEED_FILES}
        known_after_add = info.known_hosts.read_text()
        testbed.boot_card(seed)
        yield Card(testbed, info.inventory, info.known_hosts, files, json.loads(add.stdout), known_after_add)
    finally:
        with contextlib.suppress(TestbedError):
            testbed.remove(CARD)
        for path, text in saved.items():
            path.write_text(text)


@pytest.fixture(scope="module")
def provisioned(card: Card) -> dict[str, Any]:
    """`piblade provision` of the controller, the NAS node and the card: what a worker node needs."""
    report = provision_json(card.inventory, "--limit", f"tb-ctl,tb-nas,{CARD}")
    assert report["returncode"] == 0, json.dumps(report, indent=1)
    return report


def test_the_node_is_who_the_seed_says(card: Card) -> None:
    assert card.run("hostname").strip() == CARD
    assert card.run("cat /etc/hostname").strip() == CARD  # kept across reboots, not only set for this boot
    ids = card.run("id pi")
    assert "(sudo)" in ids and "(adm)" in ids
    assert card.run("sudo -n passwd --status pi").split()[1] == "L"  # password locked: keys only
    controller_key = card.bed.key.with_suffix(".pub").read_text().split()[:2]
    assert [line.split()[:2] for line in card.run("cat ~/.ssh/authorized_keys").splitlines()] == [controller_key]
    assert card.run("sudo -n sshd -T | grep -i '^passwordauthentication'").split() == ["passwordauthentication", "no"]


def test_the_address_comes_from_the_seeds_network_config(card: Card) -> None:
    assert f"inet {ADDRESS}/24 " in card.run("ip -4 -o addr show dev host0")
    # cloud-init rendered it (its networkd renderer); the testbed wrote no network file for this node
    assert card.run("ls /etc/systemd/network").split() == ["10-cloud-init-host0.network"]
    assert f"Address={ADDRESS}/24" in card.run("cat /etc/systemd/network/10-cloud-init-host0.network")


def test_its_host_keys_are_the_ones_node_add_made_and_trusted(card: Card) -> None:
    made = {(k["type"], k["fingerprint"]) for k in card.added["host_keys"]}
    listed = card.run("for f in /etc/ssh/ssh_host_*_key.pub; do sudo -n ssh-keygen -l -f $f; done").splitlines()
    kinds = {"(ED25519)": "ssh-ed25519", "(ECDSA)": "ecdsa-sha2-nistp256", "(RSA)": "ssh-rsa"}
    # "256 SHA256:... comment (ED25519)": all three, and no key that cloud-init or the image made
    assert {(kinds[line.split()[-1]], line.split()[1]) for line in listed} == made and len(listed) == 3
    for kind in ("ed25519", "ecdsa", "rsa"):  # each private key on the node is the other half of its public one
        pub = card.run(f"sudo -n cat /etc/ssh/ssh_host_{kind}_key.pub").split()[:2]
        assert card.run(f"sudo -n ssh-keygen -y -f /etc/ssh/ssh_host_{kind}_key").split()[:2] == pub
    trusted = [line for line in card.known_hosts.read_text().splitlines() if line.split()[0].split(",")[0] == ADDRESS]
    assert len(trusted) == 3


def test_strict_checking_needs_the_keys_node_add_trusted(card: Card, tmp_path: Path) -> None:
    """The same login without node add's known_hosts lines is refused: the trust really comes from them."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = [arg.replace(str(card.known_hosts), str(empty)) for arg in card.bed.ssh_argv(CARD, "true")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 255 and "Host key verification failed" in done.stderr, done.stderr
    assert card.bed.run(CARD, "true").returncode == 0


def test_cloud_init_finished_cleanly_and_its_user_data_passes_the_schema(card: Card) -> None:
    status = card.run("cloud-init status --wait --long")
    assert "status: done" in status, status
    assert "Valid cloud-config" in card.run("sudo -n cloud-init schema --system")  # what the instance consumed
    assert "Valid cloud-config" in card.run(f"sudo -n cloud-init schema --config-file {SEED_COPY}/user-data")
    assert card.run("systemctl --failed --no-legend --plain").strip() == ""


def test_the_private_host_keys_are_gone_from_the_seed_it_read(card: Card) -> None:
    card.run("cloud-init status --wait")  # the scrub is the last command of the first boot
    original = card.seed["user-data"]
    scrubbed = card.run(f"sudo -n cat {SEED_COPY}/user-data")
    assert "PRIVATE KEY" in original
    assert "PRIVATE KEY" not in scrubbed
    assert len(scrubbed) == len(original)  # overwritten in place, the same bytes on the card's FAT
    before, after = original.split("\n"), scrubbed.split("\n")
    begin, end = before.index(KEYS_BEGIN), before.index(KEYS_END)
    assert after[: begin + 1] == before[: begin + 1] and after[end:] == before[end:]
    assert after[begin + 1 : end] == ["#" * len(line) for line in before[begin + 1 : end]]
    for name in ("network-config", "meta-data"):  # the rest of the seed is untouched
        assert card.run(f"sudo -n cat {SEED_COPY}/{name}") == card.seed[name]


def test_provision_connects_with_strict_checking_and_no_trust_step(card: Card, provisioned: dict[str, Any]) -> None:
    result = hosts(provisioned)[CARD]
    assert result["failed"] == 0 and result["changed"] > 0, result
    assert result["facts"], result
    # Nothing was learned on the way: known_hosts is what node add wrote.
    assert card.known_hosts.read_text() == card.known_hosts_after_add


def test_status_lists_the_new_node_up(card: Card, provisioned: dict[str, Any]) -> None:
    deadline = time.monotonic() + 60
    while True:
        data = json.loads(piblade("status", "-i", str(card.inventory), "--json").stdout)
        up = {n["name"]: n["up"] for n in data["nodes"]}
        if up.get(CARD) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert up[CARD] is True, data
