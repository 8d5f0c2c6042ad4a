"""What the testbed reads from a `node add` seed before it boots a card node, and what it refuses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from piblade import seed
from piblade.testbed.card import read_seed
from piblade.testbed.system import TestbedError

KEYS = seed.generate_host_keys()
LOGIN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1ZCa6Ux8cKk5uEgq2m5yBBlQd9ePzc2AIhSbyEVoVh piblade-testbed"


def write(tmp_path: Path, *, ip: str | None = "10.199.0.30/24", interface: str = "host0", user: str = "pi") -> Path:
    network = seed.NetworkSpec(address=ipaddress.ip_interface(ip) if ip else None, interface=interface)
    files = seed.build_seed(seed.SeedSpec(name="tb-card", authorized_key=LOGIN, network=network,
                                          host_keys=KEYS, user=user))
    directory = tmp_path / "seed"
    directory.mkdir()
    seed.write_seed(files, directory)
    return directory


def test_a_seed_made_for_the_testbed_gives_name_address_user_and_key(tmp_path: Path) -> None:
    card = read_seed(write(tmp_path))
    assert (card.name, card.address, card.user, card.authorized_keys) == ("tb-card", "10.199.0.30", "pi", (LOGIN,))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"interface": "e*"}, "configures 'wired'; a testbed node's interface is host0"),
    ({"interface": "eth0"}, "configures 'eth0'"),
    ({"ip": None}, "asks for DHCP; the testbed's bridge has no DHCP server"),
    ({"ip": "192.168.1.24/24"}, "gives 192.168.1.24/24, not a node address in 10.199.0.0/24"),
    ({"ip": "10.199.0.1/24"}, "not a node address"),  # the controller's
    ({"ip": "10.199.0.30/16"}, "not a node address"),
    ({"user": "admin"}, "logs in as 'admin'; the testbed logs in as pi"),
])
def test_a_seed_the_testbed_cannot_boot_is_refused_with_what_to_change(
    tmp_path: Path, kwargs: dict[str, str | None], message: str
) -> None:
    with pytest.raises(TestbedError) as caught:
        read_seed(write(tmp_path, **kwargs))  # type: ignore[arg-type]
    assert message in caught.value.message


def test_missing_or_oversized_files_are_refused(tmp_path: Path) -> None:
    directory = write(tmp_path)
    (directory / "meta-data").unlink()
    with pytest.raises(TestbedError) as caught:
        read_seed(directory)
    assert "has no meta-data" in caught.value.message and "piblade node add" in (caught.value.hint or "")
    (directory / "meta-data").write_text("x" * (2 << 20))
    with pytest.raises(TestbedError, match="larger than 1024 KiB"):
        read_seed(directory)
    with pytest.raises(TestbedError, match="is not a directory"):
        read_seed(tmp_path / "nowhere")
