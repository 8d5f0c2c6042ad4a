"""HTML routes: the page shell, the login form, logout, and the health probe.

The page is a shell plus the first snapshot as JSON; ``static/dashboard.js``
draws everything from snapshots (the first one and each pushed over SSE), so
there is one renderer, not a server template and a script that must agree.
Templates are filled with :class:`string.Template`, and every value put into
them is escaped here: the page has no third-party template engine to trust.

Login and logout are the only POSTs. They are protected against cross-site
forgery twice: the session cookie is ``SameSite=Strict``, and the request's
``Origin`` (or ``Referer``) must name the host it was sent to.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from functools import cache
from pathlib import Path
from string import Template
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from piblade.dashboard import pageview
from piblade.dashboard.auth import SESSION_COOKIE, Authenticator, RateLimiter
from piblade.dashboard.guard import scope_client_key, via_tunnel

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
MAX_FORM_BYTES = 4096


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


@cache
def static_version(name: str) -> str:
    """A content hash for cache-busting URLs (``/static/x.js?v=…``)."""
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


@cache
def login_style_hash() -> str:
    """CSP hash of the login page's inline style, so the form needs no authenticated asset."""
    text = (TEMPLATES / "login.html").read_text(encoding="utf-8")
    match = re.search(r"<style>(.*?)</style>", text, re.DOTALL)
    assert match, "login.html must keep its <style> block"
    return "sha256-" + base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode()


def login_html(message: str | None) -> bytes:
    note = f'<p class="msg" role="alert">{html.escape(message)}</p>' if message else ""
    return _template("login.html").substitute(message=note).encode()


def json_for_script(data: object) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>`` can close it."""
    return (
        json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


async def index(request: Request) -> Response:
    snap = await request.app.state.hub.current()
    body = _template("index.html").substitute(
        title=html.escape(f"piblade · {snap.cluster}" if snap.cluster else "piblade"),
        initial=json_for_script({"time": snap.time, "view": pageview.view(snap)}),
        auth="on" if request.app.state.auth is not None else "off",
        css_v=static_version("style.css"),
        chart_v=static_version("chart.js"),
        js_v=static_version("dashboard.js"),
    )
    return HTMLResponse(body)


async def login_form(request: Request) -> Response:
    auth: Authenticator | None = request.app.state.auth
    if auth is None or auth.check_session(request.cookies.get(SESSION_COOKIE)):
        return RedirectResponse("/", status_code=303)
    return HTMLResponse(login_html(None))


def same_origin(request: Request) -> bool:
    """The form was posted from a page of this very host (CSRF check)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    host = request.headers.get("host")
    if not source or source == "null" or not host:
        return False
    return urlsplit(source).netloc.lower() == host.lower()


def is_https(request: Request) -> bool:
    """Over HTTPS, directly or through ngrok (which says so in X-Forwarded-Proto on its own listener)."""
    if request.url.scheme == "https":
        return True
    if not via_tunnel(request.scope, request.app.state.tunnel_listener):
        return False
    return request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower() == "https"


async def login(request: Request) -> Response:
    auth: Authenticator | None = request.app.state.auth
    limiter: RateLimiter = request.app.state.limiter
    if auth is None:
        return RedirectResponse("/", status_code=303)
    if not same_origin(request):
        return HTMLResponse(login_html("Log in from this dashboard's own page."), status_code=403)
    key = scope_client_key(request.scope, request.app.state.tunnel_listener)
    wait = limiter.retry_after(key)
    if wait is not None:
        return HTMLResponse(
            login_html(f"Too many wrong tokens. Try again in {wait} s."),
            status_code=429,
            headers={"Retry-After": str(wait)},
        )
    token = await _form_field(request, "token")
    if token is None or not auth.check_token(token):
        limiter.failure(key)
        return HTMLResponse(login_html("Wrong token."), status_code=401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.new_session(),
        max_age=auth.session_seconds,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )
    return response


async def logout(request: Request) -> Response:
    if not same_origin(request):
        return JSONResponse({"error": "cross-site logout refused"}, status_code=403)
    auth: Authenticator | None = request.app.state.auth
    if auth is not None:
        auth.end_session(request.cookies.get(SESSION_COOKIE))  # the cookie's copy, kept by anyone, is dead too
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=is_https(request))
    return response


async def report(request: Request) -> Response:
    """A run's report page, as ``piblade report`` wrote it on the share; read-only, never generated here.

    The file comes from the share, which more people can write than the
    dashboard trusts, so it is served sandboxed (an opaque origin: no session
    cookie, no same-origin reads of the API) and may make no request at all
    (``guard.REPORT_CSP``).
    """
    from starlette.concurrency import run_in_threadpool

    shelf = request.app.state.reports
    run_id = request.path_params["run_id"]
    body = None if shelf is None else await run_in_threadpool(shelf.read, run_id)
    if body is None:
        return JSONResponse({"error": f"no report for run {run_id!r} on the share",
                             "hint": f"make one with `piblade report {run_id}`"}, status_code=404)
    return Response(body, media_type="text/html; charset=utf-8")


async def healthz(request: Request) -> Response:
    """Liveness of the dashboard process; says nothing about the cluster (it needs no token)."""
    return JSONResponse({"ok": True})


async def _form_field(request: Request, name: str) -> str | None:
    """One field of a small urlencoded form, read without a multipart parser (and bounded)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    values = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get(name)
    return values[0] if values else None
