"""The one seam to Apprise (ntfy, Gotify, e-mail, Telegram, Discord, webhooks ...) and the dead-man ping.

A target is one Apprise URL; it holds a token or a password, so nothing here
returns it, logs it or lets it into an error: a URL is shown in Apprise's
privacy form (``ntfys://t...n@ntfy.sh/alerts``), and every message that
leaves this module is passed through :func:`redact` first. Each target is sent
on its own, so one that is unreachable (the internet is down, but the LAN is
not) neither hides nor delays the result of the others beyond its own timeout.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from piblade.alertconfig import AlertConfigError

#: Seconds to wait for a dead-man endpoint.
PING_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """The result of sending one notification to one target. ``where`` is the URL in privacy form."""

    target: str
    ok: bool
    where: str
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "ok": self.ok, "where": self.where, "seconds": round(self.seconds, 3),
                "error": self.error}


def _secrets_of(url: str) -> list[str]:
    """The parts of a URL that may be secret: user, password, path segments, query values, the whole URL."""
    found = {url}
    try:
        parts = urlsplit(url)
        found.update(x for x in (parts.username, parts.password) if x)
        found.update(unquote(x) for x in (parts.username, parts.password) if x)
        found.update(seg for seg in parts.path.split("/") if len(seg) >= 4)
        found.update(v for _, v in parse_qsl(parts.query) if len(v) >= 4)
        if parts.netloc and "@" in parts.netloc:
            found.add(parts.netloc.rsplit("@", 1)[0])
    except ValueError:
        pass
    return sorted((s for s in found if s), key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """``text`` with every secret-looking part of ``url`` replaced by ``***``."""
    for secret in _secrets_of(url):
        text = text.replace(secret, "***")
    return text


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def describe(url: str) -> str:
    """The URL as people may see it: scheme and host only (``ntfys://ntfy.sh/…``); an ntfy topic, a
    webhook path or a mail user can each be the secret, so none of them is shown.

    Raises AlertConfigError if Apprise knows no such URL.
    """
    import apprise

    _quiet()
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not plugin:
        raise AlertConfigError(
            f"Apprise does not understand this URL (scheme {redact(scheme or url[:12], url)!r})",
            hint="see https://github.com/caronc/apprise/wiki for the URL of each service, e.g. ntfys://ntfy.sh/TOPIC",
        )
    try:
        parts = urlsplit(url)
        where = f"{scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        more = bool(parts.path.strip("/") or parts.query)
    except ValueError:
        where, more = f"{scheme}://", True
    return where + ("/…" if more else "")


def _quiet() -> None:
    """Apprise's own log lines go to our capture only, never to the root logger (they name hosts and paths)."""
    logging.getLogger("apprise").propagate = False


def send(name: str, url: str, title: str, body: str) -> Delivery:
    """Send one notification to one target; never raises for the target's own failures."""
    import apprise

    started = time.monotonic()
    try:
        where = describe(url)
    except AlertConfigError as exc:
        return Delivery(name, False, "?", time.monotonic() - started, exc.message)
    _quiet()
    notifier = apprise.Apprise()
    notifier.add(url)
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = bool(notifier.notify(body=body, title=title))
        said = captured.getvalue() if hasattr(captured, "getvalue") else ""
    seconds = time.monotonic() - started
    if ok:
        return Delivery(name, True, where, seconds)
    reasons = [re.sub(r"^.*? - (WARNING|ERROR) - ", "", line).strip() for line in said.splitlines() if line.strip()]
    reason = "; ".join(dict.fromkeys(r for r in reasons if r)) or "Apprise reported a failure"
    error = f"not delivered to {_host(url)}: {reason}"
    if "connection error" in reason.lower() or "socket" in reason.lower():
        error += f" (can this machine reach {_host(url)}?)"
    return Delivery(name, False, where, seconds, redact(error, url))


def ping(url: str, *, timeout: float = PING_TIMEOUT) -> str | None:
    """GET ``url`` (a healthchecks-style dead-man endpoint); None when it answered 2xx, else why not (redacted)."""
    if urlsplit(url).scheme not in ("http", "https"):
        return redact(f"the dead-man URL must be http:// or https://, not {url.split(':', 1)[0]}:", url)
    request = urllib.request.Request(url, headers={"User-Agent": "piblade-alertd"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1024)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return redact(f"the dead-man endpoint {_host(url)} answered HTTP {exc.code}", url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return redact(f"cannot reach the dead-man endpoint {_host(url)} ({reason})", url)
    return None if 200 <= status < 300 else redact(f"the dead-man endpoint {_host(url)} answered HTTP {status}", url)
