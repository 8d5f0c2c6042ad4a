"""Run the app on uvicorn, and do slow start-up work (the tunnel) once it is already serving.

The socket is bound here, before uvicorn starts, so "port in use" becomes a
one-line error with a hint instead of uvicorn's log and exit, and the URL we
print is the one really bound. Work that may take long or fail (opening an
ngrok tunnel) runs on a thread after the server answers, so the local
dashboard is never held up by it.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from piblade.errors import PibladeError


class DashboardError(PibladeError):
    """The dashboard cannot start as asked."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DashboardError(f"port {port} on {host} is already in use", hint="pick another with --port") from None
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="check --bind") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn with two changes to how it stops.

    * Open SSE streams are told to end at once, so shutdown does not wait for browsers.
    * Ctrl-C / SIGTERM end :meth:`run` normally instead of being re-raised after the
      graceful shutdown (uvicorn's default): the caller's clean-up (closing the ngrok
      tunnel) must run, and SIGTERM's default action would kill the process first.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def serve(
    app: Starlette, sockets: list[socket.socket], *, after_start: Callable[[], None] | None = None
) -> None:
    """Serve on every socket until Ctrl-C or SIGTERM; run ``after_start`` on a thread once the server answers."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
        proxy_headers=False,  # X-Forwarded-For must not become the client address: loopback is never trusted
    )
    server = _Server(config, app.state.hub.close)
    if after_start is not None:

        def _when_started() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                after_start()

        threading.Thread(target=_when_started, name="piblade-dashboard-start", daemon=True).start()
    server.run(sockets=sockets)
