"""``ingest``: CSV files on the share into a table of the results database, at COPY speed.

Made for ``piblade submit ingest --over 'logs/*.csv' -p table=readings``: one
task per file, or per ``chunk_mb`` of a large file (a chunk owns the lines
that *start* in its byte range, so chunks meet at line boundaries). Each task
streams its bytes from the worker's mount of the share straight into
PostgreSQL's own CSV parser (``COPY … FROM STDIN (FORMAT csv)``), 1 MiB at a
time whatever the file's size, and records the chunk in ``ingest_loads`` in
the same transaction (:func:`piblade.resultsdb.load_csv`). With
``duplicates=skip`` the rows go to a temporary staging table first and move
into the target with ``ON CONFLICT DO NOTHING`` (rows the table already has,
by its unique keys, are left out and counted). So:

* **A re-run does not duplicate rows.** A chunk is known by table, path,
  size, mtime and its place in the file; a chunk already recorded is skipped,
  and a worker killed mid-COPY leaves nothing behind (its transaction never
  committed), so the retry loads the chunk whole.
* **A bad row names its file, line and column.** PostgreSQL's COPY error
  context gives the line within the stream and the column; the task adds the
  number of lines before its chunk.

Column types come from, in order: ``schema=name:type,…`` (checked before
anything is enqueued), the target table when it exists, or the header and a
sample of the file's first rows (:func:`infer_columns`), the first task to get
there creating the table. Chunking assumes no quoted field spans lines; give
``chunk_mb=0`` for files where one does.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from piblade.errors import BadParameter, JobError
from piblade.registry import REQUIRED, Param, TaskContext, job, relative_share_path, shown
from piblade.resultsdb import TABLE_NAME, check_table_name

MIB = 1 << 20
#: Bytes sent per COPY write: the most a task holds of its file at once.
BLOCK = MIB
#: What :func:`infer_columns` looks at: the first lines of the file, at most this many bytes.
SAMPLE_ROWS = 1000
SAMPLE_BYTES = MIB

#: Types a declared schema may name, and the PostgreSQL type each one means.
TYPES = {
    "smallint": "smallint", "int2": "smallint",
    "int": "integer", "integer": "integer", "int4": "integer",
    "bigint": "bigint", "int8": "bigint",
    "real": "real", "float4": "real",
    "float": "double precision", "double": "double precision", "float8": "double precision",
    "numeric": "numeric",
    "text": "text",
    "bool": "boolean", "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp", "timestamptz": "timestamptz",
    "json": "jsonb", "jsonb": "jsonb",
    "uuid": "uuid",
}
#: A column name: what PostgreSQL takes unquoted.
NAME = TABLE_NAME
SCHEMA_MAX = 8192

PARAMS = (
    Param("path", str, REQUIRED, path=True, help="CSV file to load, relative to the share's root"),
    Param("table", str, REQUIRED, max_length=127, help="target table (created if missing), e.g. readings or lab.readings"),
    Param("schema", str, "", max_length=SCHEMA_MAX,
          help="name:type,... (default: the table's, else inferred from the header and a sample)"),
    Param("header", bool, True, help="the first line names the columns"),
    Param("duplicates", str, "error", choices=("error", "skip"),
          help="rows the table already has (unique keys): refuse the chunk, or skip them"),
    Param("chunk_mb", int, 64, min=0, max=1 << 20, help="with --over: a task per this many MiB of a file (0: one per file)"),
)


# --------------------------------------------------------------------------- parameters


def check_table(table: str) -> str:
    return check_table_name("ingest", table)


def parse_schema(text: str) -> tuple[tuple[str, str], ...]:
    """``"sensor:int, value:float"`` -> ``(("sensor", "integer"), ("value", "double precision"))``. Pure.

    Entries are separated by commas or new lines (a schema file, ``-p schema=@FILE``).
    """
    columns: list[tuple[str, str]] = []
    for item in (i.strip() for i in re.split(r"[,\n]", text.strip())):
        name, sep, kind = (s.strip().lower() for s in item.partition(":"))
        if not sep or not NAME.fullmatch(name):
            raise BadParameter(
                f"ingest: schema entry {shown(item)} is not NAME:TYPE",
                hint="give schema=name:type,... e.g. schema=sensor:int,ts:timestamptz,value:float",
            )
        if kind not in TYPES:
            raise BadParameter(
                f"ingest: schema column {name!r} has an unknown type {shown(kind)}",
                hint="types: " + ", ".join(sorted(TYPES)),
            )
        if any(name == n for n, _ in columns):
            raise BadParameter(f"ingest: schema names column {name!r} twice")
        columns.append((name, TYPES[kind]))
    return tuple(columns)


def check_relative(path: str) -> str:
    return relative_share_path("ingest", path, "give the path as it appears on the share, e.g. path=logs/readings.csv")


def check(params: Mapping[str, Any]) -> None:
    """Everything about the parameters that can be wrong, found before a task is enqueued."""
    check_relative(params["path"])
    check_table(params["table"])
    if params["schema"]:
        parse_schema(params["schema"])
    # header=false without a schema loads by the table's columns; a task says so if there is no table


def _task(params: Mapping[str, Any], part: int, parts: int) -> dict[str, Any]:
    return {"path": check_relative(params["path"]), "table": params["table"], "schema": params["schema"],
            "header": params["header"], "duplicates": params["duplicates"], "part": part, "parts": parts}


def split(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A file named with ``-p path=…`` is one task."""
    return [_task(params, 0, 1)]


def split_file(params: Mapping[str, Any], size: int) -> list[dict[str, Any]]:
    """A file of ``size`` bytes met by ``--over``: one task per ``chunk_mb`` MiB of it (at least one)."""
    chunk = params["chunk_mb"] * MIB
    parts = max(1, math.ceil(size / chunk)) if chunk else 1
    return [_task(params, i, parts) for i in range(parts)]


# --------------------------------------------------------------------------- the file


def line_start_at_or_after(fh: Any, offset: int, size: int) -> int:
    """The first offset >= ``offset`` where a line starts (``size`` when none does)."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    fh.seek(offset - 1)
    return offset - 1 + len(fh.readline())


def chunk_range(fh: Any, size: int, part: int, parts: int) -> tuple[int, int]:
    """Bytes ``[start, end)`` of part ``part`` of ``parts``: the lines that start in its share of the file."""
    return (line_start_at_or_after(fh, size * part // parts, size),
            line_start_at_or_after(fh, size * (part + 1) // parts, size))


def read_range(fh: Any, start: int, end: int, block: int = BLOCK) -> Iterator[bytes]:
    """The bytes ``[start, end)`` in blocks of at most ``block``: constant memory whatever the file."""
    fh.seek(start)
    left = end - start
    while left > 0:
        data = fh.read(min(block, left))
        if not data:
            raise OSError("the file became shorter while it was loaded")
        left -= len(data)
        yield data


def lines_before(fh: Any, offset: int) -> int:
    """How many lines end before ``offset`` (only counted when a row is refused)."""
    return sum(b.count(b"\n") for b in read_range(fh, 0, offset))


def header_names(line: str) -> list[str]:
    """A header line's fields as column names: lower case, other characters as '_', unique."""
    names: list[str] = []
    fields = next(csv.reader([line]), [])
    for i, field in enumerate(fields, 1):
        name = re.sub(r"[^a-z0-9_]+", "_", field.strip().lower()).strip("_")[:63] or f"column_{i}"
        if name[0].isdigit():
            name = ("c_" + name)[:63]
        base, n = name, 2
        while name in names:
            name = f"{base[:58]}_{n}"
            n += 1
        names.append(name)
    return names


def read_head(fh: Any) -> tuple[str, list[list[str]]]:
    """The first line and the next rows (at most :data:`SAMPLE_ROWS`, :data:`SAMPLE_BYTES`), as text."""
    fh.seek(0)
    text = fh.read(SAMPLE_BYTES).decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if len(text) == SAMPLE_BYTES and not text.endswith("\n"):
        lines = lines[:-1]  # cut in the middle
    first = lines[0] if lines else ""
    return first, list(csv.reader(lines[: SAMPLE_ROWS + 1]))


# --------------------------------------------------------------------------- type inference

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(NaN|Infinity|inf)", re.IGNORECASE)
_BOOL = {"t", "f", "true", "false", "yes", "no"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")
_ZONE = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)")


def _is_int(v: str) -> bool:
    return bool(_INT.fullmatch(v)) and -(1 << 63) <= int(v) < (1 << 63)


def _is_date(v: str) -> bool:
    if not _DATE.fullmatch(v):
        return False
    try:
        date.fromisoformat(v)
    except ValueError:
        return False
    return True


def _timestamp_zone(v: str) -> bool | None:
    """None: not a timestamp; else whether it carries a time zone."""
    m = _TIMESTAMP.match(v)
    if not m:
        return None
    rest = v[m.end():]
    if rest and not _ZONE.fullmatch(rest):
        return None
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00") if rest == "Z" else (v + ":00" if len(rest) == 3 else v))
    except ValueError:
        return None
    return bool(rest)


#: Candidate types, narrowest first: a column gets the first one every sampled value fits.
_CANDIDATES = (
    ("bigint", _is_int),
    ("double precision", lambda v: bool(_FLOAT.fullmatch(v))),
    ("boolean", lambda v: v.lower() in _BOOL),
    ("date", _is_date),
    ("timestamp", lambda v: _timestamp_zone(v) is False),
    ("timestamptz", lambda v: _timestamp_zone(v) is not None),
)


def infer_type(values: Sequence[str]) -> str:
    """The narrowest PostgreSQL type every non-empty value fits (empty fields load as NULL). Pure."""
    present = [v for v in values if v != ""]
    if not present:
        return "text"
    for name, fits in _CANDIDATES:
        if all(fits(v) for v in present):
            return name
    return "text"


def infer_columns(names: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """Column types from a sample of rows (short rows count as empty fields). Pure."""
    return tuple((name, infer_type([r[i] if i < len(r) else "" for r in rows])) for i, name in enumerate(names))


# --------------------------------------------------------------------------- worker side


class RowRefused(JobError):
    """PostgreSQL refused a row of the file: the message names the file, line and column."""


def _columns(file_names: list[str] | None, declared: tuple[tuple[str, str], ...] | None, path: str) -> list[str]:
    """The file's columns in file order: its header's names, else the declared schema's."""
    if file_names is not None:
        if declared is not None and sorted(file_names) != sorted(n for n, _ in declared):
            raise BadParameter(
                f"ingest: {path}: the header names {', '.join(file_names)}; the schema names "
                + ", ".join(n for n, _ in declared),
                hint="declare the same columns as the header, or give header=false to load by position",
            )
        return file_names
    return [n for n, _ in declared] if declared is not None else []


def reduce(ctx: TaskContext, params: Mapping[str, Any], results: list[Any]) -> dict[str, Any]:
    """Totals of a run: rows loaded now, and the chunks (and their rows) skipped because they were loaded before."""
    return {
        "table": params["table"],
        "files": len({r["path"] for r in results}),
        "chunks": len(results),
        "rows": sum(r["rows"] for r in results if not r["already_loaded"]),
        "already_loaded": sum(1 for r in results if r["already_loaded"]),
        "rows_loaded_before": sum(r["rows"] for r in results if r["already_loaded"]),
        "duplicates": sum(r.get("duplicates", 0) for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 3),
        "copy_s": round(sum(r.get("copy_s", 0.0) for r in results), 3),
        "columns": results[0].get("columns", []) if results else [],
    }


@job(
    "ingest",
    summary="Load CSV files on the share into a PostgreSQL table with COPY; --over 'logs/*.csv'",
    params=PARAMS,
    check=check,
    split=split,
    split_file=split_file,
    reduce=reduce,
    timeout=3600,
)
def task(ctx: TaskContext, *, path: str, table: str, schema: str, header: bool, duplicates: str, part: int,
         parts: int) -> dict[str, Any]:
    """Load part ``part`` of ``parts`` of the file into ``table``, once; return what was done."""
    from piblade import resultsdb

    started = time.perf_counter()
    file = ctx.resolve(path)
    if not file.is_file():
        raise BadParameter(f"ingest: {shown(str(path))} is not a file under the data directory {ctx.data_root}")
    target = ctx.results_target()
    declared = parse_schema(schema) if schema else None
    stat = file.stat()
    with open(file, "rb") as fh:
        start, end = chunk_range(fh, stat.st_size, part, parts)
        first, sample = read_head(fh) if header or declared is None else ("", [])
        names = header_names(first) if header else None
        columns = _columns(names, declared, path)
        key = resultsdb.LoadKey(table=table, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                part=part, parts=parts)

        def create() -> tuple[tuple[str, str], ...]:
            if declared is not None:
                return declared
            if names is None:
                raise BadParameter(
                    f"ingest: table {table!r} does not exist, and {path} has no header to name its columns",
                    hint="declare them with schema=name:type,... or create the table first",
                )
            return infer_columns(names, sample[1:])

        try:
            loaded = resultsdb.load_csv(
                target, key, columns, read_range(fh, start, end), create=create,
                skip_header=header and start == 0, run_id=ctx.run_id, skip_duplicates=duplicates == "skip",
            )
        except resultsdb.CopyRefused as exc:
            line = lines_before(fh, start) + exc.line
            where = f"{path}:{line}" + (f":{exc.position} (column {exc.column})" if exc.column else "")
            raise RowRefused(f"ingest: {where}: {exc.detail}",
                             hint=f"fix line {line} of {path} (nothing of this chunk was loaded), then submit again") from None
    return {"path": path, "part": part, "parts": parts, "rows": loaded.rows, "already_loaded": loaded.already,
            "duplicates": loaded.duplicates, "columns": [f"{n} {t}" for n, t in loaded.columns],
            "table": table, "bytes": end - start, "copy_s": round(loaded.copy_s, 6), "move_s": round(loaded.move_s, 6),
            "seconds": round(time.perf_counter() - started, 6)}

