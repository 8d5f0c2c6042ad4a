"""Assemble the Starlette app: routes, the guard in front of them, and the shared state.

Read-only by design: every data route answers GET (and HEAD) only; the two
POSTs are the login and logout forms. Nothing here can submit, cancel or
change anything on the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from piblade.dashboard import api, views
from piblade.dashboard.auth import Authenticator, RateLimiter
from piblade.dashboard.guard import Guard, content_security_policy
from piblade.dashboard.snapshot import SnapshotSource
from piblade.dashboard.sse import SnapshotHub

#: Host names a dashboard without authentication answers to.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How the app behaves; no ``token`` and no ``token_file`` means authentication is off (loopback only,
    checked by the CLI). A ``token_file`` is watched: replacing it ends every session (``--rotate-token``)."""

    token: str | None
    token_file: Path | None = None
    #: The (host, port) of the listener only the ngrok forwarder uses: requests accepted there may name
    #: their client in X-Forwarded-For (for the rate limit); nowhere else.
    tunnel_listener: tuple[str, int] | None = None
    interval: float = 2.0
    keepalive: float = 15.0
    stream_max_age: float = 600.0
    failures_allowed: int = 5
    failure_window: float = 60.0


def create_app(source: SnapshotSource, settings: DashboardSettings) -> Starlette:
    if settings.token_file is not None:
        auth: Authenticator | None = Authenticator(token_file=settings.token_file)
    elif settings.token is not None:
        auth = Authenticator(settings.token)
    else:
        auth = None
    limiter = RateLimiter(settings.failures_allowed, settings.failure_window)
    hub = SnapshotHub(source, interval=settings.interval, keepalive=settings.keepalive, max_age=settings.stream_max_age)
    routes = [
        Route("/", views.index, methods=["GET"]),
        Route("/login", views.login_form, methods=["GET"]),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Route("/healthz", views.healthz, methods=["GET"]),
        Route("/api/nodes", api.nodes, methods=["GET"]),
        # path: a node name may hold "/" (the page sends it %2F-encoded, which arrives decoded).
        Route("/api/nodes/{name:path}/history", api.history, methods=["GET"]),
        Route("/api/queues", api.queues, methods=["GET"]),
        Route("/api/jobs", api.jobs, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/events", api.events, methods=["GET"]),
        Route("/reports/{run_id}", views.report, methods=["GET"]),
        Mount("/static", StaticFiles(directory=views.STATIC), name="static"),
    ]
    guard = Middleware(
        Guard,
        auth=auth,
        limiter=limiter,
        csp=content_security_policy(views.login_style_hash()),
        tunnel_listener=settings.tunnel_listener,
        allowed_hosts=None if auth is not None else LOOPBACK_NAMES,
        login_page=views.login_html,
    )
    # gzip for the page, scripts and JSON (a first load well under 50 kB); Starlette leaves the
    # event stream alone, which api.events compresses itself, event by event.
    app = Starlette(routes=routes, middleware=[guard, Middleware(GZipMiddleware, minimum_size=500)])
    app.state.auth = auth
    app.state.limiter = limiter
    app.state.tunnel_listener = settings.tunnel_listener
    app.state.hub = hub
    app.state.reports = source.reports
    return app
