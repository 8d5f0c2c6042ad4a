"""The ASGI middleware in front of every route: authentication, rate limits, security headers.

Deny by default: a route is public only if it is in :data:`PUBLIC`, so a route
added later is protected without anyone remembering to protect it. Requests
that fail authentication never reach routing, which also hides which routes
exist. It is plain ASGI (not Starlette's ``BaseHTTPMiddleware``), so the
Server-Sent Events stream passes through unbuffered.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from piblade.dashboard.auth import SESSION_COOKIE, Authenticator, RateLimiter, client_key

#: (method, path) pairs anyone may request: the health probe and the login/logout forms.
PUBLIC = frozenset(
    {
        ("GET", "/healthz"),
        ("HEAD", "/healthz"),
        ("GET", "/login"),
        ("HEAD", "/login"),
        ("POST", "/login"),
        ("POST", "/logout"),
    }
)


def content_security_policy(login_style_hash: str) -> str:
    """Only our own scripts and styles (plus the login page's one inline style, by hash)."""
    return (
        "default-src 'none'; script-src 'self'; "
        f"style-src 'self' '{login_style_hash}'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


#: Run reports (``/reports/<id>``) are files from the share with inline scripts: sandboxed into an
#: opaque origin (no cookie, no reading this dashboard), and no request may leave them.
REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def _security_headers(csp: str, path: str) -> list[tuple[bytes, bytes]]:
    if path.startswith("/reports/"):
        csp = REPORT_CSP
    headers = [
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        # same-origin (not no-referrer): with no-referrer browsers send "Origin: null" on POST,
        # which would defeat the login form's Origin check.
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    if not path.startswith("/static/"):
        headers.append((b"cache-control", b"no-store"))
    return headers


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def session_cookie(scope: Scope) -> str | None:
    raw = header(scope, b"cookie")
    if not raw:
        return None
    try:
        jar = SimpleCookie(raw)
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel else None


def bearer_token(scope: Scope) -> str | None:
    """The bearer token sent, or None. Other schemes are not ours: ngrok's basic auth, when
    configured, may pass its ``Authorization: Basic`` on, and that is no wrong guess."""
    raw = header(scope, b"authorization")
    if not raw:
        return None
    scheme, _, value = raw.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def via_tunnel(scope: Scope, tunnel_listener: tuple[str, int] | None) -> bool:
    """The request came in on the tunnel's own listener (the local address it was accepted on)."""
    server = scope.get("server")
    return tunnel_listener is not None and server is not None and tuple(server) == tunnel_listener


def scope_client_key(scope: Scope, tunnel_listener: tuple[str, int] | None) -> str:
    client = scope.get("client")
    forwarded = header(scope, b"x-forwarded-for")
    return client_key(client[0] if client else None, forwarded, via_tunnel(scope, tunnel_listener))


class Guard:
    """Authenticate (unless auth is off), rate-limit wrong tokens, and add security headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator | None,
        limiter: RateLimiter,
        csp: str,
        tunnel_listener: tuple[str, int] | None = None,
        allowed_hosts: frozenset[str] | None = None,
        login_page: Callable[[str | None], bytes] | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.limiter = limiter
        self.csp = csp
        self.tunnel_listener = tunnel_listener
        self.allowed_hosts = allowed_hosts
        #: message -> HTML of the login form, shown instead of the page to a visitor without a session.
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = _security_headers(self.csp, path)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if self.allowed_hosts is not None and _hostname(header(scope, b"host")) not in self.allowed_hosts:
            # Without auth, only loopback names: a DNS-rebinding page must not read the dashboard.
            await _reply(send_with_headers, 421, "this dashboard answers only to localhost names")
            return
        if self.auth is None or (scope["method"], path) in PUBLIC:
            await self.app(scope, receive, send_with_headers)
            return
        if self.auth.check_session(session_cookie(scope)):
            await self.app(scope, receive, send_with_headers)
            return
        token = bearer_token(scope)
        if token is not None:
            key = scope_client_key(scope, self.tunnel_listener)
            wait = self.limiter.retry_after(key)
            if wait is not None:
                await _reply(
                    send_with_headers,
                    429,
                    "too many wrong tokens; try again later",
                    [(b"retry-after", str(wait).encode())],
                )
                return
            if self.auth.check_token(token):
                await self.app(scope, receive, send_with_headers)
                return
            self.limiter.failure(key)
            await _reply(send_with_headers, 401, "wrong token", [(b"www-authenticate", b'Bearer realm="piblade"')])
            return
        if scope["method"] in ("GET", "HEAD") and path == "/" and self.login_page is not None:
            body = self.login_page(None)
            await _send(send_with_headers, 401, body, b"text/html; charset=utf-8")
            return
        await _reply(
            send_with_headers,
            401,
            "authentication required: send `Authorization: Bearer <token>` or log in",
            [(b"www-authenticate", b'Bearer realm="piblade"')],
        )


def _hostname(host: str | None) -> str:
    if not host:
        return ""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _reply(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await _send(send, status, body, b"application/json", headers)


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
