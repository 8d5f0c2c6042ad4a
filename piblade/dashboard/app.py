"""Assemble the Starlette app: routes, the guard in front of them, and the shared state.

Read-only by design: every data route answers GET (and HEAD) only; the two
POSTs are the login and logout forms. Nothing here can submit, cancel or
change anything on the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware import Middleware
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
    """How the app behaves; ``token`` None means authentication is off (loopback only, checked by the CLI)."""

    token: str | None
    #: Addresses of proxies we run (the tunnel's forwarder) whose X-Forwarded-For picks a rate-limit bucket.
    proxies: tuple[str, ...] = ()
    interval: float = 2.0
    keepalive: float = 15.0
    stream_max_age: float = 600.0
    failures_allowed: int = 5
    failure_window: float = 60.0


def create_app(source: SnapshotSource, settings: DashboardSettings) -> Starlette:
    auth = Authenticator(settings.token) if settings.token is not None else None
    limiter = RateLimiter(settings.failures_allowed, settings.failure_window)
    hub = SnapshotHub(source, interval=settings.interval, keepalive=settings.keepalive, max_age=settings.stream_max_age)
    routes = [
        Route("/", views.index, methods=["GET"]),
        Route("/login", views.login_form, methods=["GET"]),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Route("/healthz", views.healthz, methods=["GET"]),
        Route("/api/nodes", api.nodes, methods=["GET"]),
        Route("/api/nodes/{name}/history", api.history, methods=["GET"]),
        Route("/api/queues", api.queues, methods=["GET"]),
        Route("/api/jobs", api.jobs, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/events", api.events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=views.STATIC), name="static"),
    ]
    guard = Middleware(
        Guard,
        auth=auth,
        limiter=limiter,
        csp=content_security_policy(views.login_style_hash()),
        proxies=settings.proxies,
        allowed_hosts=None if auth is not None else LOOPBACK_NAMES,
        login_page=views.login_html,
    )
    app = Starlette(routes=routes, middleware=[guard])
    app.state.auth = auth
    app.state.limiter = limiter
    app.state.proxies = settings.proxies
    app.state.hub = hub
    return app
