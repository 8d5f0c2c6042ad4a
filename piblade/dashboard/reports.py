"""Run reports on the share, as the dashboard links and serves them: found, read, never made.

``piblade report`` (and ``submit --wait``) write ``runs/<id>/report.html`` on
the share; the dashboard only looks for that file and serves it read-only. It
never generates one: a page view must not start work on the cluster.

Looking costs a share session on a Pi cluster, so what was seen is remembered:
a report that exists stays known, and a run without one is looked at again at
most every :data:`RECHECK` seconds, all runs in one session.
"""

from __future__ import annotations

import io
import re
import threading
import time
from typing import TYPE_CHECKING

from piblade.errors import PibladeError

if TYPE_CHECKING:
    from piblade.context import ClusterContext

#: What a run id looks like (``runs.new_run_id``: ``MMDD-<8 hex>``); anything else is never a path.
RUN_ID = re.compile(r"[0-9]{4}-[0-9a-f]{8}")
RECHECK = 30.0
#: A report larger than this is not served (one of 2,048 tasks is ~1.5 MB).
MAX_BYTES = 32 * 2**20


def report_file(run_id: str) -> str:
    from piblade.report.collect import report_path

    return report_path(run_id)


class ReportShelf:
    """Which runs have a report on ``cluster``'s share, and their bytes."""

    def __init__(self, cluster: ClusterContext, *, recheck: float = RECHECK) -> None:
        self.cluster = cluster
        self.recheck = recheck
        self._found: set[str] = set()
        self._looked: dict[str, float] = {}
        self._lock = threading.Lock()

    def which(self, run_ids: list[str], now: float | None = None) -> set[str]:
        """Those of ``run_ids`` that have a report (a share session only when some need a look)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            ask = [r for r in run_ids if RUN_ID.fullmatch(r) and r not in self._found
                   and now - self._looked.get(r, -1e9) >= self.recheck]
            if ask:
                from piblade.nas import open_share

                try:
                    with open_share(self.cluster, timeout=5.0) as share:
                        for run_id in ask:
                            self._looked[run_id] = now
                            if share.stat(report_file(run_id)) is not None:
                                self._found.add(run_id)
                except PibladeError:
                    pass  # the share is away: no links now, look again later
            for run_id in [r for r in self._looked if r not in run_ids]:
                del self._looked[run_id]
            return {r for r in run_ids if r in self._found}

    def read(self, run_id: str) -> bytes | None:
        """The report's bytes, or None (no such report, not a run id, too large, share away)."""
        if not RUN_ID.fullmatch(run_id):
            return None
        from piblade.nas import open_share

        path = report_file(run_id)
        try:
            with open_share(self.cluster, timeout=10.0) as share:
                entry = share.stat(path)
                if entry is None or entry.size > MAX_BYTES:
                    return None
                sink = io.BytesIO()
                share.read_file(path, sink, lambda _n: None, entry.size)
        except PibladeError:
            return None
        with self._lock:
            self._found.add(run_id)
        return sink.getvalue()
