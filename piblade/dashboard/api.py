"""The JSON API, the Prometheus endpoint and the SSE stream: the same snapshot in three shapes.

API reads are fresh (not the hub's last push), so a script sees what Redis
holds now. When Redis cannot be read the answer is a JSON 503 with the reason
(``error``) and what is still known: the node names, with state ``unknown``
since ``unknown_since``, and the last queues and runs read.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from piblade.dashboard import metrics
from piblade.dashboard.auth import SESSION_COOKIE, Authenticator
from piblade.dashboard.guard import bearer_token
from piblade.dashboard.snapshot import Snapshot
from piblade.dashboard.sse import SnapshotHub

MAX_HISTORY_SECONDS = 24 * 3600


async def _fresh(request: Request) -> Snapshot:
    hub: SnapshotHub = request.app.state.hub
    return await hub.read()


def _answer(snap: Snapshot, body: dict[str, Any]) -> JSONResponse:
    body = {"cluster": snap.cluster, "time": snap.time, **body, "error": snap.error}
    if snap.error is not None:
        body["unknown_since"] = snap.unknown_since
    return JSONResponse(body, status_code=503 if snap.error is not None else 200)


async def nodes(request: Request) -> Response:
    snap = await _fresh(request)
    return _answer(snap, {"nodes": list(snap.nodes), "share": snap.share})


async def queues(request: Request) -> Response:
    snap = await _fresh(request)
    return _answer(snap, {"queues": list(snap.queues)})


async def jobs(request: Request) -> Response:
    snap = await _fresh(request)
    return _answer(snap, {"jobs": list(snap.jobs)})


async def history(request: Request) -> Response:
    import anyio.to_thread

    name = request.path_params["name"]
    raw = request.query_params.get("seconds", "3600")
    try:
        seconds = int(raw)
    except ValueError:
        return JSONResponse({"error": f"seconds must be a whole number, not {raw!r}"}, status_code=400)
    if not 60 <= seconds <= MAX_HISTORY_SECONDS:
        return JSONResponse({"error": f"seconds must be 60 to {MAX_HISTORY_SECONDS}"}, status_code=400)
    hub: SnapshotHub = request.app.state.hub
    try:
        points = await anyio.to_thread.run_sync(hub.source.history, name, float(seconds))
    except (redis.RedisError, OSError) as exc:
        error = f"cannot read Redis: {exc.__class__.__name__}: {exc}"
        return JSONResponse({"node": name, "error": error}, status_code=503)
    if points is None:
        return JSONResponse({"error": f"no node {name!r}"}, status_code=404)
    return JSONResponse({"node": name, "seconds": seconds, "points": points})


def still_allowed(request: Request) -> Callable[[], bool]:
    """Whether the credentials this request came with still work (the guard checked them once, at the start)."""
    auth: Authenticator | None = request.app.state.auth
    if auth is None:
        return lambda: True
    cookie = request.cookies.get(SESSION_COOKIE)
    token = bearer_token(request.scope)
    return lambda: auth.check_session(cookie) or (token is not None and auth.check_token(token))


async def prometheus(request: Request) -> Response:
    snap = await _fresh(request)
    return PlainTextResponse(metrics.render(snap.to_dict(), snap.task_counts), media_type=metrics.CONTENT_TYPE)


async def events(request: Request) -> Response:
    """The SSE stream. ``?every=N`` (1-300 s): at most one event per N s (the page asks for 60 while
    hidden); ``?full=1``: whole snapshots, as before deltas (for comparisons). Gzip when the client
    takes it, flushed after every event so each still arrives on its own."""
    hub: SnapshotHub = request.app.state.hub
    try:
        every = min(300.0, max(0.0, float(request.query_params.get("every", "0"))))
    except ValueError:
        return JSONResponse({"error": "every must be a number of seconds"}, status_code=400)
    stream = hub.stream(still_allowed(request), every=every, full=request.query_params.get("full") == "1")
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        return StreamingResponse(gzip_events(stream), media_type="text/event-stream", headers=headers)
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def gzip_events(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """One gzip stream for the whole response, with a sync flush after each event: the browser can
    decode every event as it comes, and the compressor remembers the previous ones (the same keys
    and names every time), which is where most of the saving is."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    async for text in events:
        yield packer.compress(text.encode()) + packer.flush(zlib.Z_SYNC_FLUSH)
    yield packer.flush()  # the gzip trailer: a stream that ends (max age, an ended session) is a whole gzip file
