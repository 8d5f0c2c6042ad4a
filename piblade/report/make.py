"""Make a run's report for a cluster: connect to what it needs, collect, render, write. Orchestration.

Used by ``piblade report``, by ``piblade submit --wait`` when a run ends, and by
the notebook ``report --notebook`` writes. The page goes to the share beside
the run's output (``runs/<id>/report.html``), written through the share's own
write path (a temporary name, then a rename), so a reader never sees half a
page; ``-o FILE`` writes a local file instead.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade.errors import PibladeError
from piblade.report import collect

if TYPE_CHECKING:
    import psycopg

    from piblade.context import ClusterContext
    from piblade.nas.share import Share
    from piblade.report.model import RunReport


@contextlib.contextmanager
def results_db(cluster: ClusterContext) -> Iterator[psycopg.Connection[Any]]:
    from piblade import resultsdb

    conn = resultsdb.connect(cluster.results_target())
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _optional_share(cluster: ClusterContext) -> Iterator[Share | None]:
    """The share, or None when it cannot be reached (the report then says what it could not show)."""
    from piblade.nas import open_share

    with contextlib.ExitStack() as stack:
        try:
            share: Share | None = stack.enter_context(open_share(cluster))
        except PibladeError:
            share = None
        yield share


def _optional_redis(cluster: ClusterContext) -> Any:
    from piblade.redisconn import connect

    try:
        return connect(cluster.redis_target(), timeout=3.0)
    except PibladeError:
        return None


def load(cluster: ClusterContext, run_id: str, *, use_redis: bool = True, wait: float = 0.0) -> RunReport:
    """The report of ``run_id`` on ``cluster``. Without ``use_redis``, from the results database only
    (health and result as the first report saved them), as the notebook does."""
    redis_conn = _optional_redis(cluster) if use_redis else None
    try:
        with results_db(cluster) as db, _optional_share(cluster) as share:
            return collect.load_report(db, redis_conn, share, run_id, wait=wait)
    finally:
        if redis_conn is not None:
            redis_conn.close()


def write_report(cluster: ClusterContext, run_id: str, *, output: Path | None = None, wait: float = 0.0) -> str:
    """Collect, render and write the page; return where it is, as the user can reach it."""
    from piblade.report import plotlyjs
    from piblade.report.render import render_html

    js = plotlyjs.bundle()  # before any connection: a missing bundle is the first thing to say
    report = load(cluster, run_id, wait=wait)
    page = render_html(report, js).encode("utf-8")
    if output is not None:
        from piblade.outputs import replace_into

        output.parent.mkdir(parents=True, exist_ok=True)
        replace_into(output, lambda handle: handle.write(page))
        return str(output)
    return publish(cluster, run_id, page)


def publish(cluster: ClusterContext, run_id: str, page: bytes) -> str:
    """Write ``page`` to ``runs/<id>/report.html`` on the cluster's share."""
    from piblade.nas import open_share
    from piblade.nas.paths import parent
    from piblade.nas.share import LocalShare

    path = collect.report_path(run_id)
    with open_share(cluster) as share:
        share.makedirs(parent(path))
        share.write_file(path, io.BytesIO(page), len(page), lambda _n: None)
        if isinstance(share, LocalShare):
            return str(share.root / path)
        return f"{share.description.rstrip('/')}/{path}"
