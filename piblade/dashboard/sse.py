"""Live updates over Server-Sent Events: one Redis reader, however many browsers watch.

Why push instead of letting the page poll: through ngrok every poll is a
request, and the free plan's 20,000 a month last under 14 hours at one poll
every 2.5 s. One SSE stream is one request for as long as it stays open.

The hub reads a snapshot every ``interval`` seconds while at least one stream
is open (none when nobody watches) and pushes it only when its content
changed; "last seen" ages are computed by the page from the snapshot's clock.
A comment line every ``keepalive`` seconds keeps proxies from closing a quiet
stream, and each stream ends after ``max_age`` so the browser reconnects and
its session cookie is checked again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import anyio.to_thread

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
        if self.snapshot is None or snap.fingerprint != self.snapshot.fingerprint:
            self.snapshot = snap
            self.version += 1
            if self._changed is not None:
                self._changed.set()
                self._changed = asyncio.Event()
        else:
            self.snapshot = snap  # same content, newer clock

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

    async def stream(self, allowed: Callable[[], bool] = lambda: True) -> AsyncIterator[str]:
        """The text of one SSE response: the current snapshot now, then each change.

        ``allowed`` is asked before each event: a stream whose session ended (logout, a new
        token) stops, and the browser's reconnect meets the login.
        """
        self._subscribers += 1
        self._start()
        assert self._closing is not None
        try:
            await self.current()
            assert self.snapshot is not None
            seen = self.version  # read together with the snapshot: no await in between
            yield "retry: 3000\n" + event(self.snapshot, seen)
            ends = time.monotonic() + self.max_age
            while not self._closing.is_set() and allowed():
                remaining = ends - time.monotonic()
                if remaining <= 0:
                    break
                if self.version == seen:
                    changed = self._changed
                    assert changed is not None
                    if not await _wait_any(changed, self._closing, min(self.keepalive, remaining)):
                        yield ": keepalive\n\n"
                    continue
                seen = self.version
                yield event(self.snapshot, seen)
        finally:
            self._subscribers -= 1


def event(snap: Snapshot, version: int) -> str:
    return f"id: {version}\nevent: snapshot\ndata: {json.dumps(snap.to_dict(), separators=(',', ':'))}\n\n"


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
