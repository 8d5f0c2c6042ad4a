"""`piblade dashboard`: serve the live web dashboard, optionally through an ngrok tunnel."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from piblade.cli.common import InventoryOption
from piblade.cli.output import console, err_console
from piblade.errors import PibladeError

if TYPE_CHECKING:
    from piblade.context import ClusterContext
    from piblade.resultsdb import ResultsTarget


def _split(values: list[str]) -> tuple[str, ...]:
    """Repeatable options that may also come comma-separated (from the environment)."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on (0.0.0.0: the whole LAN)."),
        port: int = typer.Option(8470, "--port", min=0, max=65535, help="Port to listen on."),
        tunnel: bool = typer.Option(False, "--tunnel", help="Also publish the dashboard over HTTPS through ngrok."),
        inventory: Path = InventoryOption,
        no_auth: bool = typer.Option(
            False, "--no-auth", help="Serve without a token: only with --bind 127.0.0.1, never with --tunnel."
        ),
        show_token: bool = typer.Option(False, "--show-token", help="Print the dashboard token and exit."),
        rotate_token: bool = typer.Option(
            False, "--rotate-token", help="Write a new token and exit; a running dashboard ends every session."
        ),
        tunnel_timeout: float = typer.Option(
            10.0, "--tunnel-timeout", min=0.5, envvar="PIBLADE_TUNNEL_TIMEOUT", help="Seconds to wait for ngrok."
        ),
        ngrok_basic_auth_file: Path = typer.Option(
            None,
            "--ngrok-basic-auth-file",
            envvar="PIBLADE_NGROK_BASIC_AUTH_FILE",
            help="0600 file with user:password that ngrok asks for before the dashboard's own login.",
        ),
        ngrok_oauth: str = typer.Option(
            None,
            "--ngrok-oauth",
            envvar="PIBLADE_NGROK_OAUTH",
            help="OAuth provider ngrok enforces (google, github, …).",
        ),
        ngrok_allow_email: list[str] = typer.Option(
            [], "--ngrok-allow-email", envvar="PIBLADE_NGROK_ALLOW_EMAILS", help="OAuth: allowed email (repeatable)."
        ),
        ngrok_allow_domain: list[str] = typer.Option(
            [], "--ngrok-allow-domain", envvar="PIBLADE_NGROK_ALLOW_DOMAINS", help="OAuth: allowed domain (repeatable)."
        ),
        ngrok_allow_cidr: list[str] = typer.Option(
            [],
            "--ngrok-allow-cidr",
            envvar="PIBLADE_NGROK_ALLOW_CIDR",
            help="Only these networks may connect (repeatable).",
        ),
        ngrok_domain: str = typer.Option(
            None, "--ngrok-domain", envvar="PIBLADE_NGROK_DOMAIN", help="Your reserved ngrok domain."
        ),
        ngrok_server_addr: str = typer.Option(
            None, "--ngrok-server-addr", envvar="PIBLADE_NGROK_SERVER_ADDR", hidden=True
        ),
    ) -> None:
        """Serve the live dashboard: node health, queues, recent jobs, history charts."""
        from piblade.dashboard.auth import is_loopback_bind, load_token, token_path

        if rotate_token:
            from piblade.dashboard.auth import rotate_token as write_new_token

            path = write_new_token()
            console.print(
                f"new dashboard token written to {path}; the old one no longer works and every session has ended "
                "(print it with `piblade dashboard --show-token`)",
                markup=False,
                soft_wrap=True,
            )
            return
        if show_token:
            console.print(load_token(), markup=False, highlight=False, soft_wrap=True)
            return
        from piblade.dashboard.server import DashboardError

        if no_auth and tunnel:
            raise DashboardError(
                "--tunnel refuses to publish a dashboard without authentication",
                hint="drop --no-auth: the tunnel needs the dashboard token",
            )
        if no_auth and not is_loopback_bind(bind):
            raise DashboardError(
                f"--no-auth is allowed only with --bind 127.0.0.1, not {bind}",
                hint="anyone who can reach the address would see the cluster",
            )

        from piblade import tunnel as ngrok_tunnel
        from piblade.cli.common import open_redis
        from piblade.context import resolve_cluster
        from piblade.dashboard import publish
        from piblade.dashboard.reports import ReportShelf
        from piblade.dashboard.snapshot import SnapshotSource

        where = resolve_cluster(inventory)
        conn = open_redis(where)
        token_file = None
        if not no_auth:
            load_token()  # generated (0600) the first time
            token_file = token_path()
        options = ngrok_tunnel.TunnelOptions(
            basic_auth_file=ngrok_basic_auth_file,
            oauth_provider=ngrok_oauth,
            oauth_allow_emails=_split(ngrok_allow_email),
            oauth_allow_domains=_split(ngrok_allow_domain),
            allow_cidrs=_split(ngrok_allow_cidr),
            domain=ngrok_domain,
            server_addr=ngrok_server_addr,
            deadline=tunnel_timeout,
        )
        try:
            publish.run(
                SnapshotSource(conn, where.inventory, reports=ReportShelf(where), results=_results(where)),
                publish.Publish(bind, port, token_file, options if tunnel else None),
                _Printer(bind, token_file),
            )
        finally:
            conn.close()


class _Printer:
    """How `piblade dashboard` tells people what the server does (publish.Events)."""

    def __init__(self, bind: str, token_file: Path | None) -> None:
        self.bind = bind
        self.token_file = token_file

    def serving(self, url: str, all_interfaces: bool) -> None:
        from piblade.dashboard.auth import is_loopback_bind

        # soft_wrap: a URL or path broken over two lines cannot be copied.
        console.print(f"piblade dashboard: [bold]{url}/[/]" + ("  (all interfaces)" if all_interfaces else ""),
                      soft_wrap=True)
        if self.token_file is None:
            err_console.print("[yellow]warning:[/] authentication is off: anyone on this machine can open the page")
        else:
            console.print(f"token: in {self.token_file} (print it with `piblade dashboard --show-token`)",
                          markup=False, soft_wrap=True)
            if not is_loopback_bind(self.bind):
                console.print("plain HTTP on the LAN: use it on a network you trust, or --tunnel for HTTPS",
                              style="dim")
        console.print("Ctrl-C stops it", style="dim")

    def tunnel_opening(self, forward_to: str, deadline: float) -> None:
        err_console.print(f"opening the ngrok tunnel to {forward_to}, a listener of its own "
                          f"(waiting up to {deadline:g} s)…", markup=False, soft_wrap=True)

    def tunnel_opened(self, url: str, rules: list[str]) -> None:
        console.print(f"public URL: [bold]{url}/[/]", soft_wrap=True)
        for rule in rules:
            console.print(f"  ngrok enforces {rule}", markup=False)

    def tunnel_failed(self, error: PibladeError, local_url: str) -> None:
        """A tunnel that fails is reported, never fatal: the local dashboard keeps serving."""
        err_console.print(
            f"[bold red]error:[/] {escape(error.message)}; the dashboard is still serving on {local_url}/",
            highlight=False,
            soft_wrap=True,
        )
        if error.hint:
            err_console.print(f"[yellow]hint:[/] {escape(error.hint)}", highlight=False)

    def tunnel_closed(self) -> None:
        console.print("ngrok tunnel closed")


def _results(where: ClusterContext) -> ResultsTarget | None:
    """The cluster's results database, or None when it has none yet (the page then shows Redis's runs only)."""
    from piblade.errors import ClusterError

    try:
        return where.results_target()
    except ClusterError:
        return None
