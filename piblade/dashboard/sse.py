"""Live updates over Server-Sent Events: one Redis reader, however many browsers watch.

Why push instead of letting the page poll: through ngrok every poll is a
request, and the free plan's 20,000 a month last under 14 hours at one poll
every 2.5 s. One SSE stream is one request for as long as it stays open.

Why so little per push: ngrok's free plan also allows 1 GB a month out, which
a stream resending the whole snapshot every 2 s used up in about ten days. A
stream sends the page's view (:mod:`~piblade.dashboard.pageview`) once, then
only what changed since the last event *it* sent (``event: delta``), so a
stream that is told to go slow (``every``: a hidden tab) simply coalesces. The
page computes "last seen" ages and running durations itself. The caller may
compress the stream (gzip, flushed after every event: see ``api.events``).

The hub reads a snapshot every ``interval`` seconds while at least one stream
is open (none when nobody watches). A comment line every ``keepalive`` seconds
keeps proxies from closing a quiet stream, and each stream ends after
``max_age`` so the browser reconnects and its session is checked again.

``full=True`` is the stream as it was before deltas (the whole snapshot on
every change); ``bench/sse.py`` measures the two side by side.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread

from piblade.dashboard import pageview
from piblade.dashboard.snapshot import Snapshot, SnapshotSource


class SnapshotHub:
    def __init__(
        self, source: SnapshotSource, *, interval: float = 2.0, keepalive: float = 15.0, max_age: float = 600.0
    ) -> None:
        self.source = source
        self.interval = interval
        self.keepalive = keepalive
        self.max_age = max_age
        self.snapshot: Snapshot | None = None
        self.version = 0
        self._subscribers = 0
        self._poller: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._closing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def read(self) -> Snapshot:
        """A fresh snapshot (in a worker thread: redis-py blocks)."""
        return await anyio.to_thread.run_sync(self.source.read)

    async def current(self) -> Snapshot:
        """The last snapshot if the poller read it moments ago, else a fresh one (nobody was watching)."""
        snap = self.snapshot
        if snap is None or time.time() - snap.time > self.interval:
            snap = await self.read()
            self._publish(snap)
        return snap

    def _publish(self, snap: Snapshot) -> None:
        """Every read wakes the streams; each decides for itself whether it has anything to send."""
        self.snapshot = snap
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _poll(self) -> None:
        while self._subscribers > 0:
            self._publish(await self.read())
            await asyncio.sleep(self.interval)
        self._poller = None

    def _start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._closing = asyncio.Event()
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="piblade-dashboard-poller")

    def close(self) -> None:
        """End every stream (server shutdown); safe to call from a signal handler."""
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)

    async def stream(
        self, allowed: Callable[[], bool] = lambda: True, *, every: float = 0.0, full: bool = False
    ) -> AsyncIterator[str]:
        """The text of one SSE response: the page's view now, then what changed, at most once per ``every`` s.

        ``allowed`` is asked before each event: a stream whose session ended (logout, a new
        token) stops, and the browser's reconnect meets the login.
        """
        self._subscribers += 1
        self._start()
        assert self._closing is not None
        try:
            snap = await self.current()
            sent_view = pageview.view(snap)
            sent_print = snap.fingerprint
            counter = 1
            yield "retry: 3000\n" + (full_event(snap, counter) if full else view_event(snap.time, sent_view, counter))
            ends = time.monotonic() + self.max_age
            last_event = last_sent = time.monotonic()  # last data event; last bytes of any kind
            while not self._closing.is_set() and allowed():
                now = time.monotonic()
                if now >= ends:
                    break
                changed = self._changed
                assert changed is not None
                woke = await _wait_any(changed, self._closing, min(self.keepalive, ends - now))
                if not woke:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
                    continue
                if self._closing.is_set():
                    break
                if time.monotonic() - last_event < every:  # a slow stream: changes wait, merged into one event
                    if time.monotonic() - last_sent >= self.keepalive:
                        yield ": keepalive\n\n"
                        last_sent = time.monotonic()
                    continue
                latest = self.snapshot
                assert latest is not None
                snap = latest
                if full:
                    if snap.fingerprint == sent_print:
                        continue
                    sent_print = snap.fingerprint
                    counter += 1
                    yield full_event(snap, counter)
                else:
                    new_view = pageview.view(snap)
                    patch = pageview.diff(sent_view, new_view)
                    if not patch:
                        continue
                    sent_view = new_view
                    counter += 1
                    yield delta_event(patch, counter)
                last_event = last_sent = time.monotonic()
        finally:
            self._subscribers -= 1


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def view_event(server_time: float, page: dict[str, Any], counter: int) -> str:
    return f"id: {counter}\nevent: view\ndata: {_json({'time': server_time, 'view': page})}\n\n"


def delta_event(patch: dict[str, Any], counter: int) -> str:
    return f"id: {counter}\nevent: delta\ndata: {_json(patch)}\n\n"


def full_event(snap: Snapshot, counter: int) -> str:
    """The pre-delta stream's event: the whole snapshot (kept for the benchmark's comparison)."""
    return f"id: {counter}\nevent: snapshot\ndata: {_json(snap.to_dict())}\n\n"


async def _wait_any(first: asyncio.Event, second: asyncio.Event, timeout: float) -> bool:
    """True when either event is set within ``timeout``."""
    tasks = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return bool(done)
