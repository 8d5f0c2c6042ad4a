"""Publish the dashboard through ngrok, or say at once why not, while the LAN dashboard keeps serving.

The one module that imports the ngrok SDK: the official ``ngrok`` wheel, which
runs ngrok's agent in-process (``pyngrok`` would download a binary at run time,
which fails on a machine without internet).

Two ways a tunnel fails, both reported as :class:`TunnelError` with a hint:

* no authtoken: found before any network traffic, so the error is immediate;
* ngrok cannot be reached: with no route to ngrok's servers the SDK's connect
  can hang for 40 s and more, so it runs on its own thread and event loop and
  is abandoned after a deadline (10 s by default). Should the abandoned attempt
  connect later anyway, it closes what it opened instead of publishing the
  dashboard behind the user's back.

ngrok-side protection (basic auth, OAuth, an IP allow-list) is passed on when
configured; it sits in front of the dashboard's own token, never instead of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piblade.errors import PibladeError, SecretError
from piblade.state import read_secret, state_dir

log = logging.getLogger("piblade.tunnel")

AUTHTOKEN_ENV = "NGROK_AUTHTOKEN"
#: File in the state dir holding the ngrok authtoken (mode 0600), when it is not in the environment.
AUTHTOKEN_FILE = "ngrok.authtoken"
DEFAULT_DEADLINE = 10.0


class TunnelError(PibladeError):
    """The tunnel could not be opened; the local dashboard is unaffected."""


@dataclass(frozen=True, slots=True)
class TunnelOptions:
    """What ngrok should enforce before a request reaches the dashboard, and how to reach ngrok."""

    basic_auth_file: Path | None = None
    oauth_provider: str | None = None
    oauth_allow_emails: tuple[str, ...] = ()
    oauth_allow_domains: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    domain: str | None = None
    #: ngrok's own ``server_addr`` (a custom agent ingress); tests point it at loopback.
    server_addr: str | None = None
    deadline: float = DEFAULT_DEADLINE

    def describe(self) -> list[str]:
        """What ngrok enforces, in words (no secrets), for the CLI to print."""
        parts = []
        if self.basic_auth_file:
            parts.append(f"basic auth (from {self.basic_auth_file})")
        if self.oauth_provider:
            allowed = ", ".join(self.oauth_allow_emails + self.oauth_allow_domains) or "any account"
            parts.append(f"OAuth via {self.oauth_provider} ({allowed})")
        if self.allow_cidrs:
            parts.append("only from " + ", ".join(self.allow_cidrs))
        return parts


def find_authtoken(env: Mapping[str, str] | None = None, directory: Path | None = None) -> str:
    """``$NGROK_AUTHTOKEN``, else ``<state dir>/ngrok.authtoken`` (which must be 0600)."""
    env = os.environ if env is None else env
    token = env.get(AUTHTOKEN_ENV, "").strip()
    if token:
        return token
    path = (directory or state_dir()) / AUTHTOKEN_FILE
    if path.exists():
        token = read_secret(path)
        if token:
            return token
    raise TunnelError(
        "no ngrok authtoken: the tunnel was not opened",
        hint=f"set {AUTHTOKEN_ENV}, or put the token in {path} (chmod 600)",
    )


def read_basic_auth(path: Path) -> tuple[str, str]:
    """``user:password`` from a 0600 file; ngrok wants a password of 8 to 128 characters."""
    try:
        text = read_secret(path)
    except SecretError as exc:
        raise TunnelError(exc.message, hint=exc.hint) from None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise TunnelError(f"{path} does not hold user:password", hint="write one line like `alice:a-long-password`")
    if not 8 <= len(password) <= 128:
        raise TunnelError(f"the password in {path} must be 8 to 128 characters for ngrok")
    return user, password


@dataclass
class Tunnel:
    """An open tunnel; :meth:`close` takes it down (it also goes when the process exits)."""

    url: str
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _handles: tuple[Any, Any] = field(repr=False)

    def close(self, timeout: float = 5.0) -> None:
        session, listener = self._handles

        async def _close() -> None:
            await listener.close()
            await session.close()

        try:
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout)
        except Exception as exc:  # noqa: BLE001 - best effort: the process is ending, which closes it anyway
            log.debug("closing the ngrok tunnel: %s", exc)
        finally:
            _stop(self._loop, self._thread, timeout)


def open_tunnel(local_url: str, options: TunnelOptions, authtoken: str) -> Tunnel:
    """Open an HTTPS endpoint forwarding to ``local_url``, or raise :class:`TunnelError` by the deadline."""
    try:
        import ngrok
    except ImportError:
        raise TunnelError(
            "the ngrok SDK is not installed", hint="pip install 'piblade[tunnel]' (the official ngrok wheel)"
        ) from None
    basic_auth = read_basic_auth(options.basic_auth_file) if options.basic_auth_file else None
    abandoned = threading.Event()

    async def connect() -> tuple[Any, Any]:
        from piblade import __version__

        builder = ngrok.SessionBuilder().authtoken(authtoken).client_info("piblade", __version__)
        if options.server_addr:
            builder = builder.server_addr(options.server_addr)
        session = await builder.connect()
        if abandoned.is_set():
            await session.close()
            raise TunnelError("connected after the deadline; closed again")
        endpoint = session.http_endpoint()
        if basic_auth:
            endpoint = endpoint.basic_auth(*basic_auth)
        if options.oauth_provider:
            endpoint = endpoint.oauth(
                options.oauth_provider,
                allow_emails=list(options.oauth_allow_emails) or None,
                allow_domains=list(options.oauth_allow_domains) or None,
            )
        for cidr in options.allow_cidrs:
            endpoint = endpoint.allow_cidr(cidr)
        if options.domain:
            endpoint = endpoint.domain(options.domain)
        listener = await endpoint.listen_and_forward(local_url)
        if abandoned.is_set():
            await listener.close()
            await session.close()
            raise TunnelError("connected after the deadline; closed again")
        return session, listener

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name="piblade-ngrok", daemon=True)
    thread.start()
    future = asyncio.run_coroutine_threadsafe(connect(), loop)
    try:
        session, listener = future.result(timeout=options.deadline)
    except FutureTimeout:
        abandoned.set()
        future.cancel()
        _stop(loop, thread)
        raise TunnelError(
            f"could not reach ngrok within {options.deadline:g} s (no internet, or a firewall): "
            "the tunnel was not opened",
            hint="check this machine's internet connection, or raise --tunnel-timeout",
        ) from None
    except TunnelError:
        _stop(loop, thread)
        raise
    except Exception as exc:  # the SDK raises ValueError/OSError with ngrok's own reason
        _stop(loop, thread)
        reason = "; ".join(str(a) for a in exc.args) or type(exc).__name__
        raise TunnelError(
            f"could not open the ngrok tunnel: {reason}",
            hint="check the authtoken and the ngrok options (ngrok's dashboard shows why a session was refused)",
        ) from exc
    return Tunnel(str(listener.url()), loop, thread, (session, listener))


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The tunnel's own event loop: the SDK's futures live here, away from uvicorn's loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float = 2.0) -> None:
    try:
        loop.call_soon_threadsafe(loop.stop)
    except RuntimeError:  # already closed
        pass
    thread.join(timeout)
