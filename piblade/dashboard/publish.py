"""Run the dashboard: its listeners, and the ngrok tunnel's whole lifecycle (open after start, close at exit).

The CLI parses options and renders what happens (:class:`Events`); everything
in between is here, so it is the same for every caller and testable without a
terminal.

**Two listeners when a tunnel is asked for.** People use ``--bind``/``--port``.
The tunnel forwards to a second socket of its own: a loopback port the kernel
picks, which nothing but the ngrok forwarder is told about. Only requests
accepted on that socket may name their client in ``X-Forwarded-For`` (for the
wrong-token limit); on the main socket the header is ignored. By address the
two cannot be told apart — ngrok's in-process forwarder connects from
127.0.0.1 like anything else on the machine — so the listener a request came
in on is the test, not the peer address.

A tunnel that cannot be opened (no authtoken: at once; ngrok unreachable: by
the deadline) is reported and never fatal: the dashboard keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from piblade import tunnel as ngrok
from piblade.dashboard.app import DashboardSettings, create_app
from piblade.dashboard.server import bind_socket, serve, url_for
from piblade.dashboard.snapshot import SnapshotSource
from piblade.errors import PibladeError

TUNNEL_HOST = "127.0.0.1"


class Events(Protocol):
    """What a caller hears about, in order; the CLI prints each."""

    def serving(self, url: str, all_interfaces: bool) -> None: ...

    def tunnel_opening(self, forward_to: str, deadline: float) -> None: ...

    def tunnel_opened(self, url: str, rules: list[str]) -> None: ...

    def tunnel_failed(self, error: PibladeError, local_url: str) -> None: ...

    def tunnel_closed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Publish:
    bind: str
    port: int
    #: The watched token file; None serves without authentication (the CLI allows it on loopback only).
    token_file: Path | None
    #: What ngrok should enforce; None: no tunnel.
    tunnel: ngrok.TunnelOptions | None = None


def run(source: SnapshotSource, publish: Publish, events: Events,
        find_authtoken: Callable[[], str] = ngrok.find_authtoken) -> None:
    """Serve until Ctrl-C or SIGTERM; open the tunnel once serving, close it on the way out."""
    sock = bind_socket(publish.bind, publish.port)
    local_url = url_for(publish.bind, sock.getsockname()[1])
    sockets = [sock]
    events.serving(local_url, publish.bind in ("0.0.0.0", "::"))
    authtoken = None
    if publish.tunnel is not None:
        try:
            authtoken = find_authtoken()
        except ngrok.TunnelError as exc:  # say so at once, and serve locally anyway
            events.tunnel_failed(exc, local_url)
    tunnel_listener: tuple[str, int] | None = None
    if authtoken is not None:
        tunnel_sock = bind_socket(TUNNEL_HOST, 0)
        tunnel_listener = (TUNNEL_HOST, tunnel_sock.getsockname()[1])
        sockets.append(tunnel_sock)
    app = create_app(source, DashboardSettings(token=None, token_file=publish.token_file,
                                               tunnel_listener=tunnel_listener))
    opened: list[ngrok.Tunnel] = []

    def open_tunnel() -> None:
        assert authtoken is not None and tunnel_listener is not None and publish.tunnel is not None
        forward_to = url_for(*tunnel_listener)
        events.tunnel_opening(forward_to, publish.tunnel.deadline)
        try:
            handle = ngrok.open_tunnel(forward_to, publish.tunnel, authtoken)
        except ngrok.TunnelError as exc:
            events.tunnel_failed(exc, local_url)
            return
        opened.append(handle)
        events.tunnel_opened(handle.url, publish.tunnel.describe())

    try:
        serve(app, sockets, after_start=open_tunnel if authtoken is not None else None)
    finally:
        for handle in opened:
            handle.close()
            events.tunnel_closed()
