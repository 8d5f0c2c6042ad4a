"""``summary``: numeric summary of a big data file on the share.

Count, mean, standard deviation (population, like ``numpy.std``), min, max
and optionally a histogram of one column of numbers, computed in ``parts``
tasks over byte ranges of the file, each reading its range in chunks.

Formats: raw little-endian binary arrays (``f4 f8 i2 i4 u1 u2``) or ``csv``
(comma separated, no quoting; ``column`` picks the field). The split only sees
the parameters, not the file, so a part is a fraction ``part / parts`` of the
file: each task takes the file size itself and computes its byte range
(binary: at record boundaries; csv: a part owns every line that *starts* in
its range, i.e. it begins at the first full line after its offset and ends
with the line that crosses its end). The file must not change while a run
reads it.

``skipped`` counts what was left out: csv lines that do not parse (headers,
blank lines, short rows), non-finite values (nan, inf) and a trailing partial
binary record.

Per chunk, a Numba kernel computes count, sum, min, max and M2 (sum of squared
deviations, two-pass within the chunk); chunks and parts are merged with
Chan's parallel formula (:func:`merge_stats`, pure, used by the tests).

This module must not import Numba at module level; the kernel lives in
:mod:`jobs.kernels.summary`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade.errors import BadParameter
from piblade.lazymodule import lazy_module
from piblade.registry import REQUIRED, Param, TaskContext, job, relative_share_path, shown
from piblade.resultsdb import Column, check_table_name

if TYPE_CHECKING:
    import numpy as np
else:  # numpy loads in the worker, on first use: `piblade submit` only reads the job's parameters
    np = lazy_module("numpy")

#: Bytes read per chunk (one kernel call each).
CHUNK_BYTES = 4 << 20

FORMATS = ("f4", "f8", "i2", "i4", "u1", "u2", "csv")

PARAMS = (
    Param("path", str, REQUIRED, path=True, help="file to summarise, relative to the data directory"),
    Param("format", str, "f8", choices=FORMATS, help="little-endian binary array type, or csv"),
    Param("column", int, 0, min=0, max=1000, help="csv only: 0-based field to summarise"),
    Param("parts", int, 4, min=1, max=4096, help="number of tasks (byte ranges of the file)"),
    Param("bins", int, 20, min=1, max=1000, help="histogram bins (when lo < hi)"),
    Param("lo", float, 0.0, help="histogram lower edge; no histogram unless lo < hi"),
    Param("hi", float, 0.0, help="histogram upper edge; no histogram unless lo < hi"),
    Param("table", str, "", max_length=127, help="also write the statistics as a row into this results-database table"),
)
#: The row a run adds to ``table`` (after run_id and task).
ROW = (Column("path", "text"), Column("count", "int8"), Column("mean", "float8"), Column("std", "float8"),
       Column("min", "float8"), Column("max", "float8"), Column("sum", "float8"), Column("skipped", "int8"))


# --------------------------------------------------------------------------- parameters


def check_relative(path: str) -> str:
    """Refuse, before anything is queued, a path that is absolute or climbs out with '..'."""
    return relative_share_path("summary", path, "give the path as it appears under the share, e.g. path=data/readings.f8")


def split(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per part: ``{"part": i, "parts": n}`` plus the reading parameters."""
    path = check_relative(params["path"])
    if params["format"] != "csv" and params["column"] != 0:
        raise BadParameter(
            f"summary: column={params['column']} only applies to format=csv",
            hint="drop column, or use format=csv",
        )
    if params["lo"] > params["hi"]:
        raise BadParameter(
            f"summary: lo={params['lo']!r} is greater than hi={params['hi']!r}",
            hint="give lo < hi for a histogram, or leave both out",
        )
    if params["table"]:
        check_table_name("summary", params["table"])
    common = {k: params[k] for k in ("format", "column", "bins", "lo", "hi")}
    n = params["parts"]
    return [{"path": path, "part": i, "parts": n, **common} for i in range(n)]


# --------------------------------------------------------------------------- reading


def binary_chunks(
    path: Path, fmt: str, part: int, parts: int, chunk_bytes: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the values (float64) of records ``[n*part//parts, n*(part+1)//parts)`` in chunks."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    dtype = np.dtype("<" + fmt)
    records = path.stat().st_size // dtype.itemsize
    first, last = records * part // parts, records * (part + 1) // parts
    per_chunk = max(1, chunk_bytes // dtype.itemsize)
    with open(path, "rb") as fh:
        fh.seek(first * dtype.itemsize)
        remaining = last - first
        while remaining > 0:
            n = min(per_chunk, remaining)
            buf = fh.read(n * dtype.itemsize)
            if len(buf) != n * dtype.itemsize:
                raise OSError(f"{path} became shorter while being read")
            yield np.frombuffer(buf, dtype=dtype).astype(np.float64)
            remaining -= n


def csv_blocks(path: Path, part: int, parts: int, chunk_bytes: int | None = None) -> Iterator[bytes]:
    """Yield blocks of whole lines: the lines that start in bytes ``[size*part//parts, size*(part+1)//parts)``."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    size = path.stat().st_size
    start, end = size * part // parts, size * (part + 1) // parts
    with open(path, "rb") as fh:
        pos = 0
        if start > 0:
            # The first line we own starts after the first newline at or after start - 1.
            fh.seek(start - 1)
            pos = start - 1 + len(fh.readline())
        fh.seek(pos)
        buf = b""  # unconsumed bytes; the first one is at file offset pos (a line start)
        while pos < end:
            block = fh.read(chunk_bytes)
            if not block:
                if buf:
                    yield buf  # last line, without a newline
                return
            buf += block
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                continue  # one long line so far
            if pos + cut > end:
                # Lines starting at or after `end` belong to the next part.
                own = buf.find(b"\n", end - pos - 1) + 1
                yield buf[:own]
                return
            yield buf[:cut]
            pos += cut
            buf = buf[cut:]


def parse_csv(block: bytes, column: int) -> tuple[np.ndarray, int]:
    """Field ``column`` of every line of ``block`` as float64, and the number of lines that did not parse."""
    lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
    if not block.strip():
        return np.empty(0), lines
    try:
        values = np.loadtxt(
            io.StringIO(block.decode("utf-8", errors="replace")),
            delimiter=",",
            usecols=(column,),
            comments=None,
            dtype=np.float64,
            ndmin=1,
        )
        return values, lines - values.size  # loadtxt drops empty lines silently
    except ValueError:
        pass
    # Slow path, for blocks with a header or another bad line.
    parsed: list[float] = []
    skipped = 0
    rows = block.split(b"\n")
    if block.endswith(b"\n"):
        rows.pop()
    for row in rows:
        try:
            parsed.append(float(row.split(b",")[column]))
        except (ValueError, IndexError):
            skipped += 1
    return np.array(parsed, dtype=np.float64), skipped


def read_part(path: Path, fmt: str, column: int, part: int, parts: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(values, skipped)`` chunks of one part of the file."""
    if fmt == "csv":
        for block in csv_blocks(path, part, parts):
            yield parse_csv(block, column)
        return
    yield from ((values, 0) for values in binary_chunks(path, fmt, part, parts))
    if part == parts - 1 and path.stat().st_size % np.dtype(fmt).itemsize:
        yield np.empty(0), 1  # a trailing partial record


# --------------------------------------------------------------------------- statistics


def empty_stats(bins: int | None = None) -> dict[str, Any]:
    """Statistics of nothing (the identity of :func:`merge_stats`)."""
    return {
        "count": 0,
        "sum": 0.0,
        "mean": 0.0,
        "m2": 0.0,
        "min": None,
        "max": None,
        "skipped": 0,
        "histogram": None if bins is None else [0] * bins,
        "below": 0,
        "above": 0,
    }


def merge_stats(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two partial statistics exactly (Chan et al.'s parallel mean/M2 update). Pure."""
    na, nb = a["count"], b["count"]
    n = na + nb
    if na == 0 or nb == 0:
        src = b if na == 0 else a
        mean, m2 = src["mean"], src["m2"]
    else:
        delta = b["mean"] - a["mean"]
        mean = a["mean"] + delta * (nb / n)
        m2 = a["m2"] + b["m2"] + delta * delta * (na * nb / n)
    ha, hb = a["histogram"], b["histogram"]
    if (ha is None) != (hb is None) or (ha is not None and len(ha) != len(hb)):
        raise ValueError("cannot merge statistics with different histograms")
    mins = [x for x in (a["min"], b["min"]) if x is not None]
    maxs = [x for x in (a["max"], b["max"]) if x is not None]
    return {
        "count": n,
        "sum": a["sum"] + b["sum"],
        "mean": mean,
        "m2": m2,
        "min": min(mins) if mins else None,
        "max": max(maxs) if maxs else None,
        "skipped": a["skipped"] + b["skipped"],
        "histogram": None if ha is None else [int(x) + int(y) for x, y in zip(ha, hb, strict=True)],
        "below": a["below"] + b["below"],
        "above": a["above"] + b["above"],
    }


def merge_all(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Left fold of :func:`merge_stats` over partial statistics (at least one)."""
    result: dict[str, Any] | None = None
    for p in parts:
        result = dict(p) if result is None else merge_stats(result, p)
    if result is None:
        raise ValueError("no statistics to merge")
    return result


def finalize(stats: Mapping[str, Any], lo: float, hi: float, bins: int) -> dict[str, Any]:
    """The user-facing summary of merged statistics."""
    n = stats["count"]
    histogram = None
    if stats["histogram"] is not None:
        histogram = {
            "lo": lo,
            "hi": hi,
            "bins": bins,
            "edges": [float(e) for e in np.linspace(lo, hi, bins + 1)],
            "counts": list(stats["histogram"]),
            "below": stats["below"],
            "above": stats["above"],
        }
    return {
        "count": n,
        "mean": stats["mean"] if n else None,
        "std": math.sqrt(stats["m2"] / n) if n else None,
        "min": stats["min"],
        "max": stats["max"],
        "sum": stats["sum"],
        "skipped": stats["skipped"],
        "histogram": histogram,
    }


# --------------------------------------------------------------------------- worker side


def warmup() -> None:
    """Compile the kernel (or load it from Numba's cache) on tiny inputs."""
    from jobs.kernels import summary as kernels

    kernels.warmup()


def reduce(ctx: TaskContext, params: Mapping[str, Any], results: list[Any]) -> dict[str, Any]:
    """Merge the parts' statistics: ``{"count", "mean", "std", "min", "max", "sum", "skipped", "histogram"}``.

    With ``table``, they also go into that results-database table as one row.
    """
    summary = finalize(merge_all(results), params["lo"], params["hi"], params["bins"])
    if params.get("table"):
        where = params.get("path") or params.get("over", "")
        ctx.emit(params["table"], ROW, [(where, *(summary[c.name] for c in ROW[1:]))])
    return summary


@job(
    "summary",
    summary="Count, mean, std, min, max and histogram of a data file on the share (Numba, chunked)",
    params=PARAMS,
    split=split,
    reduce=reduce,
    warmup=warmup,
    timeout=3600,
)
def task(
    ctx: TaskContext,
    *,
    path: str,
    format: str,  # shadows the builtin: it is the parameter's public name
    column: int,
    part: int,
    parts: int,
    bins: int,
    lo: float,
    hi: float,
) -> dict[str, Any]:
    """Partial statistics of part ``part`` of ``parts`` of the file (see :func:`empty_stats` for the keys)."""
    from jobs.kernels.summary import chunk_stats

    file = ctx.resolve(path)
    if not file.is_file():
        raise BadParameter(f"summary: {shown(str(path))} is not a file under the data directory {ctx.data_root}")
    with_hist = lo < hi
    edges = np.linspace(lo, hi, bins + 1) if with_hist else np.empty(0)
    hist = np.zeros(bins if with_hist else 0, dtype=np.int64)
    stats = empty_stats(bins if with_hist else None)
    for values, skipped in read_part(file, format, column, part, parts):
        n, total, vmin, vmax, m2, nonfinite, below, above = chunk_stats(values, edges, hist)
        chunk = empty_stats(bins if with_hist else None)
        chunk.update(skipped=skipped + int(nonfinite), below=int(below), above=int(above))
        if n:
            chunk.update(count=int(n), sum=float(total), mean=float(total) / int(n), m2=float(m2),
                         min=float(vmin), max=float(vmax))
        stats = merge_stats(stats, chunk)
    if with_hist:
        stats["histogram"] = [int(x) for x in hist]
    return stats
