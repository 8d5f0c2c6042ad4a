"""`piblade node add`: prepare a freshly flashed card (or a directory) for a new node."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from piblade.cli.common import InventoryFileOption, JsonOption
from piblade.cli.output import console, print_json
from piblade.errors import PibladeError


def _shown(path: Path) -> str:
    """A path as people write it: under the home directory with ``~``."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_absolute() and path.is_relative_to(home) else str(path)


app = typer.Typer(help="Add nodes: a first-boot seed with the node's own host keys, and the inventory entry.",
                  no_args_is_help=True)


@app.command()
def add(
    name: str = typer.Argument(..., help="The node's inventory name and host name."),
    role: str = typer.Option("workers", "--role", help="workers or nas."),
    ip: str | None = typer.Option(None, "--ip", help="Static address with prefix, e.g. 10.0.0.21/24."),
    gateway: str | None = typer.Option(None, "--gateway", help="Default gateway (with --ip)."),
    dns: list[str] = typer.Option([], "--dns", help="DNS server (with --ip; repeatable; default: the gateway)."),
    dhcp: bool = typer.Option(False, "--dhcp", help="Take the address from DHCP."),
    address: str | None = typer.Option(None, "--address", help="With --dhcp: how the controller reaches the "
                                       "node (default NAME.local, mDNS)."),
    interface: str = typer.Option("e*", "--interface", help="Name (glob) of the wired interface to configure."),
    user: str | None = typer.Option(None, "--user", help="Login user (default: the inventory's ansible_user, "
                                    "else pi)."),
    boot: Path | None = typer.Option(None, "--boot", file_okay=False,
                                     help="The mounted boot partition of a freshly flashed card."),
    directory: Path | None = typer.Option(None, "--dir", file_okay=False,
                                          help="Write the seed into this plain directory instead."),
    inventory: Path = InventoryFileOption,
    as_json: bool = JsonOption,
) -> None:
    """Write a node's cloud-init seed (user, key, network, SSH host keys) and add it to the inventory."""
    from piblade.inventory import INVENTORY_ENV
    from piblade.node import add_node, network_spec

    if inventory is None:
        raise PibladeError("no inventory was given", hint=f"pass -i FILE or set {INVENTORY_ENV}")
    if (boot is None) == (directory is None):
        raise PibladeError("give either --boot PATH (a mounted boot partition) or --dir PATH",
                           hint="--boot checks that it is a Raspberry Pi OS card from Trixie on; --dir writes "
                           "into any directory, for copying later")
    spec = network_spec(ip, gateway, dns, dhcp, interface)
    destination = boot if boot is not None else directory
    assert destination is not None
    added = add_node(inventory, name, role, spec, destination, boot=boot is not None, user=user, address=address)
    if as_json:
        print_json(added.to_dict())
        return
    def out(text: str) -> None:
        console.print(text, soft_wrap=True)

    out(f"seed for {escape(added.name)} written to {escape(str(destination))}: "
        + ", ".join(p.name for p in added.seed_files))
    out(f"inventory: {escape(added.name)} added to {escape(added.role)} in {escape(str(added.inventory))} "
        f"(ansible_host {escape(added.address)}, user {escape(added.user)})")
    key_note = " (new)" if added.login_key_created else ""
    out(f"login key: {escape(_shown(added.login_key))}{key_note}")
    out(f"host keys, trusted in {escape(_shown(added.known_hosts))}:")
    for key in added.host_keys:
        out(f"  {key.kind} {key.fingerprint}")
    if boot is None:
        out("copy the three files onto the card's boot partition (next to config.txt), then boot the Pi")
    else:
        out("eject the card, put it in the Pi and power it on")
    out(f"then: piblade provision -i {escape(str(added.inventory))}")
