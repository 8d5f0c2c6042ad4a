"""The NoCloud seed, built without a node: its files, the key scrub, the boot-partition rules."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from piblade import seed
from piblade.errors import PibladeError
from piblade.node import network_spec

KEYS = seed.generate_host_keys()
LOGIN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1ZCa6Ux8cKk5uEgq2m5yBBlQd9ePzc2AIhSbyEVoVh piblade-controller"


def spec(network: seed.NetworkSpec | None = None, name: str = "blade-w4") -> seed.SeedSpec:
    return seed.SeedSpec(name=name, authorized_key=LOGIN, network=network or seed.NetworkSpec(),
                         host_keys=KEYS, instance_id="abc")


def test_host_keys_are_every_type_ssh_keygen_makes_and_all_different() -> None:
    assert [k.kind for k in KEYS] == ["ed25519", "ecdsa", "rsa"]
    assert [k.key_type for k in KEYS] == ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
    assert all(k.private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----") for k in KEYS)
    again = seed.generate_host_keys()
    assert {k.blob for k in KEYS}.isdisjoint(k.blob for k in again)


def test_user_data_logs_in_with_the_controller_key_only() -> None:
    text = seed.user_data(spec())
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["hostname"] == "blade-w4"
    (user,) = data["users"]
    assert user["name"] == "pi" and user["ssh_authorized_keys"] == [LOGIN]
    assert user["lock_passwd"] is True and data["ssh_pwauth"] is False
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"  # provisioning runs `sudo -n`
    assert data["ssh_deletekeys"] is True
    assert data["ssh_genkeytypes"] == ["ed25519", "ecdsa", "rsa"]  # every one given, so none is generated
    assert data["ssh_keys"] == {f"{k.kind}_{half}": getattr(k, "private" if half == "private" else "public")
                                for k in KEYS for half in ("private", "public")}
    # The private keys are the last block, between the markers the scrub looks for.
    lines = text.splitlines()
    begin, end = lines.index(seed.KEYS_BEGIN), lines.index(seed.KEYS_END)
    assert end == len(lines) - 1
    assert all("PRIVATE KEY" not in line for line in lines[:begin])


def test_first_boot_restores_then_scrubs_the_keys() -> None:
    runcmd = yaml.safe_load(seed.user_data(spec()))["runcmd"]
    assert runcmd[0] == ["systemctl", "enable", "--now", "ssh.service"]
    restore = runcmd[1][2]
    ed = KEYS[0]
    assert f"grep -qF '{ed.blob}' /etc/ssh/ssh_host_ed25519_key.pub" in restore
    assert "cloud-init single --name ssh --frequency always" in restore
    assert runcmd[2] == ["python3", "-c", seed.scrub_script()]


def test_the_scrub_blanks_the_private_keys_in_place_and_leaves_valid_cloud_config(tmp_path: Path) -> None:
    text = seed.user_data(spec())
    path = tmp_path / "user-data"
    path.write_text(text)
    other = tmp_path / "missing" / "user-data"  # absent copies are skipped
    script = seed.scrub_script([str(other), str(path)])
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"piblade: private host keys removed from {path}"
    scrubbed = path.read_text()
    assert len(scrubbed) == len(text)  # same size: the FAT rewrites the same clusters
    assert "PRIVATE KEY" not in scrubbed and all(k.blob not in scrubbed for k in KEYS[1:])
    before, after = yaml.safe_load(text), yaml.safe_load(scrubbed)
    del before["ssh_keys"]
    assert after == before
    # A second boot finds nothing left to do.
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert again.stdout == "" and path.read_text() == scrubbed


def test_static_network_matches_the_wired_interface_by_name() -> None:
    net = network_spec("10.0.0.21/24", "10.0.0.1", [], False, "e*")
    data = yaml.safe_load(seed.network_config(net))
    assert data == {"network": {"version": 2, "ethernets": {"wired": {
        "match": {"name": "e*"}, "dhcp4": False, "addresses": ["10.0.0.21/24"],
        "routes": [{"to": "0.0.0.0/0", "via": "10.0.0.1"}], "nameservers": {"addresses": ["10.0.0.1"]},
    }}}}
    net = network_spec("10.0.0.21/24", None, ["9.9.9.9", "1.1.1.1"], False, "host0")
    # A plain name is the entry's id too: cloud-init's own renderers take the id as the interface name.
    entry = yaml.safe_load(seed.network_config(net))["network"]["ethernets"]["host0"]
    assert entry["match"] == {"name": "host0"} and "routes" not in entry
    assert entry["nameservers"] == {"addresses": ["9.9.9.9", "1.1.1.1"]}


def test_dhcp_network() -> None:
    data = yaml.safe_load(seed.network_config(network_spec(None, None, [], True, "e*")))
    assert data["network"]["ethernets"]["wired"] == {"match": {"name": "e*"}, "dhcp4": True}


@pytest.mark.parametrize(("args", "message"), [
    ((None, None, [], False), "give either --ip ADDRESS/PREFIX or --dhcp"),
    (("10.0.0.21/24", None, [], True), "give either --ip ADDRESS/PREFIX or --dhcp"),
    (("10.0.0.21", None, [], False), "--ip 10.0.0.21: give the prefix length too"),
    (("10.0.0.21/24", "10.0.1.1", [], False), "--gateway 10.0.1.1 is not in 10.0.0.0/24"),
    (("10.0.0.321/24", None, [], False), "not an IP address"),
    ((None, "10.0.0.1", [], True), "--gateway and --dns go with --ip"),
])
def test_network_options_are_checked(args: tuple[str | None, str | None, list[str], bool], message: str) -> None:
    with pytest.raises(PibladeError) as err:
        network_spec(*args, "e*")
    assert message in err.value.message
    with pytest.raises(PibladeError, match="is not an interface name or glob"):
        network_spec(None, None, [], True, "eth0 eth1")


def test_meta_data_names_the_instance() -> None:
    assert yaml.safe_load(seed.meta_data(spec())) == {"instance-id": "piblade-blade-w4-abc",
                                                      "local-hostname": "blade-w4"}
    assert seed.SeedSpec("a", LOGIN, seed.NetworkSpec(), KEYS).instance_id != seed.SeedSpec(
        "a", LOGIN, seed.NetworkSpec(), KEYS).instance_id


def test_write_seed_writes_the_three_files(tmp_path: Path) -> None:
    built = seed.build_seed(spec(seed.NetworkSpec(address=ipaddress.ip_interface("10.0.0.21/24"))))
    paths = seed.write_seed(built, tmp_path)
    assert [p.name for p in paths] == list(seed.SEED_FILES)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(seed.SEED_FILES)


def boot_partition(path: Path, *files: str, issue: str | None = None) -> Path:
    path.mkdir()
    for name in files:
        (path / name).write_text("# stub\n")
    if issue is not None:
        (path / "issue.txt").write_text(issue)
    return path


def test_a_trixie_boot_partition_is_accepted(tmp_path: Path) -> None:
    seed.check_boot_partition(boot_partition(tmp_path / "b", "config.txt", "cmdline.txt", *seed.SEED_FILES))
    seed.check_boot_partition(boot_partition(tmp_path / "c", "config.txt", "cmdline.txt", "user-data"))


def test_a_directory_that_is_not_a_boot_partition_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PibladeError) as err:
        seed.check_boot_partition(boot_partition(tmp_path / "b", "config.txt"))
    assert err.value.message == f"{tmp_path / 'b'} does not look like a Raspberry Pi boot partition (no cmdline.txt)"
    assert "--dir DIR" in (err.value.hint or "")
    with pytest.raises(PibladeError, match="is not a directory"):
        seed.check_boot_partition(tmp_path / "absent")


def test_a_pre_trixie_card_is_refused_with_its_image_date(tmp_path: Path) -> None:
    issue = "Raspberry Pi reference 2024-11-19\nGenerated using pi-gen, https://github.com/RPi-Distro/pi-gen\n"
    card = boot_partition(tmp_path / "b", "config.txt", "cmdline.txt", issue=issue)
    with pytest.raises(PibladeError) as err:
        seed.check_boot_partition(card)
    assert err.value.message == (
        f"{card} is a Raspberry Pi OS card from before Trixie (its issue.txt says image 2024-11-19): it has no "
        "cloud-init (no user-data, network-config or meta-data on the boot partition) and would ignore the seed"
    )
    assert "2025-10-01 or newer (Trixie)" in (err.value.hint or "")
