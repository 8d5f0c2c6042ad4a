"""`piblade testbed`: a virtual Pi cluster of systemd-nspawn nodes on this machine (root, Linux)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import typer
from rich.table import Table

from piblade.cli.common import JsonOption
from piblade.cli.output import console, err_console, print_json

app = typer.Typer(
    help="A virtual Pi cluster on this machine: a NAS node and worker nodes under systemd-nspawn (needs root).",
    no_args_is_help=True,
)
NodeArgument = typer.Argument(..., help="Node name: tb-nas, tb-w1, ... (or nas, w1, ...).")
InventoryPathOption = typer.Option(
    Path("inventory/testbed.yml"), "--inventory", "-i", help="Where to write the testbed's inventory."
)
WorkersOption = typer.Option(2, "--workers", "-n", min=0, max=20, help="Worker nodes besides the NAS node.")
Arm64Option = typer.Option(
    0, "--arm64", min=0, max=4,
    help="aarch64 worker nodes (tb-arm1, ...), as on a Pi; emulated by qemu-user-static on an x86_64 host.",
)
CommandArgument = typer.Argument(None, help="Command to run; a login shell without one.")
UserOption = typer.Option("pi", "--user", "-u", help="User on the node (pi has passwordless sudo; root works too).")


@app.command("up")
def up(
    workers: int = WorkersOption,
    arm64: int = Arm64Option,
    inventory: Path = InventoryPathOption,
    as_json: bool = JsonOption,
) -> None:
    """Start a fresh testbed (replacing any old one) and write its inventory."""
    from piblade.testbed import Testbed

    with err_console.status("starting the testbed") as spinner:
        bed = Testbed(inventory=inventory, progress=spinner.update)
        info = bed.up(workers, arm64)
    timings = {k: round(v, 2) if v is not None else None for k, v in bed.timings.items()}
    if as_json:
        print_json({**info.to_dict(), "timings": timings})
        return
    table = Table("node", "address", "role", "machine", box=None, pad_edge=False)
    for node in info.nodes:
        table.add_row(node.name, node.address, node.role, _machine(node.machine))
    console.print(table)
    builds = {"image" if k == "image_build" else k.removeprefix("image_build_") + " image": v
              for k, v in timings.items() if k.startswith("image_build")}
    image = ", ".join(f"{name} built in {s:.0f} s" if s is not None else f"cached {name}" for name, s in builds.items())
    console.print(f"testbed up in {timings['up']:.1f} s ({image}); controller 10.199.0.1 on bridge pibr0")
    console.print(f"inventory: {info.inventory}")
    console.print(f"try: piblade testbed ssh {info.nodes[-1].name} hostname")


def _machine(machine: str) -> str:
    import platform

    return machine if machine == platform.machine() else f"{machine} (emulated)"


@app.command("down")
def down() -> None:
    """Stop every node and remove the bridge, mounts and node copies (the image cache stays)."""
    from piblade.testbed import Testbed

    bed = Testbed()
    started = time.monotonic()
    with err_console.status("taking the testbed down"):
        bed.down()
    console.print(f"testbed down in {time.monotonic() - started:.1f} s: no node, mount or bridge left "
                  f"(image cache kept in {bed.root})")


@app.command("status")
def status(as_json: bool = JsonOption) -> None:
    """Show the testbed's nodes: running or not, and whether sshd answers."""
    from piblade.testbed import Testbed

    info = Testbed().status()
    if as_json:
        print_json(info.to_dict())
    elif not info.up:
        console.print("testbed: not up (start it with `piblade testbed up`)")
    else:
        table = Table("node", "address", "role", "machine", "state", "ssh", "nspawn pid", box=None, pad_edge=False)
        for node in info.nodes:
            state = "[green]running[/]" if node.running else "[red]stopped[/]"
            table.add_row(node.name, node.address, node.role, _machine(node.machine), state,
                          "yes" if node.ssh else "no", str(node.pid or "-"))
        console.print(table)
    if info.stray_pids or (info.bridge and not info.up):
        err_console.print(f"[yellow]leftovers:[/] bridge={info.bridge} processes={list(info.stray_pids)} "
                          "— `piblade testbed down` removes them")
    if not info.up:
        raise typer.Exit(3)


@app.command(
    "ssh",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False},
)
def ssh(
    node: str = NodeArgument,
    command: list[str] = CommandArgument,
    user: str = UserOption,
) -> None:
    """SSH into a node with the testbed key, checking its host key strictly."""
    from piblade.testbed import Testbed

    # Like ssh itself: the words of the command are joined with spaces and the node's shell parses them.
    argv = Testbed().ssh_argv(node, " ".join(command) if command else None, user=user)
    raise typer.Exit(subprocess.run(argv, check=False).returncode)


@app.command("card")
def card(
    seed: Path = typer.Argument(..., file_okay=False, help="The seed directory `piblade node add --dir` wrote."),
    role: str = typer.Option("worker", "--role", help="worker or nas (the inventory entry is node add's)."),
) -> None:
    """Boot one more node as a freshly flashed card: cloud-init reads the seed on its first boot."""
    from piblade.testbed import Testbed

    with err_console.status(f"booting a blank node from {seed}") as spinner:
        bed = Testbed(progress=spinner.update)
        started = time.monotonic()
        node = bed.boot_card(seed, role)
    console.print(f"{node.name} ({node.address}): first boot from {seed} done in {time.monotonic() - started:.1f} s; "
                  "host key verified")
    console.print(f"`piblade testbed remove {node.name}` deletes it again")


@app.command("remove")
def remove(node: str = NodeArgument) -> None:
    """Stop and delete a node booted with `piblade testbed card`."""
    from piblade.testbed import Testbed

    bed = Testbed()
    name = bed.info().node(node).name
    bed.remove(node)
    console.print(f"{name}: removed")


@app.command("kill")
def kill(node: str = NodeArgument) -> None:
    """Pull a node's power: SIGKILL its init and its systemd-nspawn."""
    from piblade.testbed import Testbed

    bed = Testbed()
    bed.kill(node)
    console.print(f"{bed.info().node(node).name}: killed (power loss); `piblade testbed start {node}` boots it again")


@app.command("stop")
def stop(node: str = NodeArgument) -> None:
    """Shut a node down cleanly."""
    from piblade.testbed import Testbed

    bed = Testbed()
    bed.stop(node)
    console.print(f"{bed.info().node(node).name}: stopped")


@app.command("start")
def start(node: str = NodeArgument) -> None:
    """Boot a stopped or killed node again and wait until it is ready."""
    from piblade.testbed import Testbed

    with err_console.status(f"booting {node}") as spinner:
        bed = Testbed(progress=spinner.update)
        bed.start(node)
    console.print(f"{bed.info().node(node).name}: running")
