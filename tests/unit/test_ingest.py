"""The pure half of the ``ingest`` job: parameters, chunks at line boundaries, header names, type inference."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import ingest
from piblade import dispatch
from piblade.errors import BadParameter
from piblade.registry import load_registry


def test_schema_is_parsed_into_postgresql_types() -> None:
    assert ingest.parse_schema(" Sensor:INT, ts:timestamptz,value:float ,ok:bool,doc:json") == (
        ("sensor", "integer"), ("ts", "timestamptz"), ("value", "double precision"), ("ok", "boolean"),
        ("doc", "jsonb"))


@pytest.mark.parametrize(("schema", "message"), [
    ("a", "ingest: schema entry a is not NAME:TYPE"),
    ("a:int,", "ingest: schema entry '' is not NAME:TYPE"),
    ("1a:int", "ingest: schema entry 1a:int is not NAME:TYPE"),
    ("a:int;drop table runs", "ingest: schema column 'a' has an unknown type int;drop table runs"),
    ("a:int,A:text", "ingest: schema names column 'a' twice"),
])
def test_a_bad_schema_is_refused_with_what_to_write(schema: str, message: str) -> None:
    with pytest.raises(BadParameter) as caught:
        ingest.parse_schema(schema)
    assert caught.value.message == message


def test_table_names() -> None:
    assert ingest.check_table("readings") == "readings"
    assert ingest.check_table("lab.readings") == "lab.readings"
    for bad in ("Readings", "a.b.c", "x-y", "", "9lives", "a" * 64):
        with pytest.raises(BadParameter, match="is not a table name"):
            ingest.check_table(bad)
    for own in ("runs", "public.task_attempts", "ingest_loads", "piblade_schema", "piblade_anything"):
        with pytest.raises(BadParameter, match="one of piblade's own tables"):
            ingest.check_table(own)
    assert ingest.check_table("lab.runs") == "lab.runs"  # another schema's `runs` is the user's own


def test_over_splits_a_large_file_into_chunks_and_keeps_small_ones_whole() -> None:
    registry = load_registry([])
    mib = ingest.MIB
    plan = dispatch.plan_over(registry, "ingest", {"table": "t", "chunk_mb": "2"}, ["a.csv", "b.csv", "c.csv"],
                              {"a.csv": 5 * mib, "b.csv": 10, "c.csv": 0})
    assert [(t["path"], t["part"], t["parts"]) for t in plan] == [
        ("a.csv", 0, 3), ("a.csv", 1, 3), ("a.csv", 2, 3), ("b.csv", 0, 1), ("c.csv", 0, 1)]
    assert plan[0] == {"path": "a.csv", "table": "t", "schema": "", "header": True, "duplicates": "error", "part": 0,
                       "parts": 3}
    whole = dispatch.plan_over(registry, "ingest", {"table": "t", "chunk_mb": "0"}, ["a.csv"], {"a.csv": 5 * mib})
    assert len(whole) == 1
    spec = registry.get("ingest")
    for task in plan:
        spec.check_task_kwargs(task)  # what a worker checks before it runs one
    with pytest.raises(BadParameter, match="table=runs is one of piblade's own tables"):
        dispatch.plan_over(registry, "ingest", {"table": "runs"}, ["a.csv"], {"a.csv": 1})
    with pytest.raises(BadParameter, match="missing required parameter 'table'"):
        dispatch.plan_over(registry, "ingest", {}, ["a.csv"], {"a.csv": 1})


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 40])
def test_chunks_cover_every_line_exactly_once(tmp_path: Path, parts: int) -> None:
    lines = [f"{i},{'x' * (i % 13)}\n".encode() for i in range(500)] + [b"last line without newline"]
    path = tmp_path / "f.csv"
    path.write_bytes(b"".join(lines))
    size = path.stat().st_size
    pieces = []
    with path.open("rb") as fh:
        ranges = [ingest.chunk_range(fh, size, p, parts) for p in range(parts)]
        for start, end in ranges:
            pieces.append(b"".join(ingest.read_range(fh, start, end, block=7)))
            if start < size:  # each chunk starts at a line start, and knows its line number
                assert start == 0 or path.read_bytes()[start - 1:start] == b"\n"
                assert ingest.lines_before(fh, start) == path.read_bytes()[:start].count(b"\n")
    assert b"".join(pieces) == path.read_bytes()
    assert [r[0] for r in ranges[1:]] == [r[1] for r in ranges[:-1]]


def test_header_names_become_column_names() -> None:
    assert ingest.header_names('Sensor ID,"Temp (°C)",temp_c,,2nd,Temp (°C)') == [
        "sensor_id", "temp_c", "temp_c_2", "column_4", "c_2nd", "temp_c_3"]


@pytest.mark.parametrize(("values", "kind"), [
    (["1", "-2", "+3", ""], "bigint"),
    (["1", "9223372036854775808"], "double precision"),
    (["1", "2.5", "1e-3", ".5", "NaN"], "double precision"),
    (["t", "False", "yes", ""], "boolean"),
    (["2026-12-04", "2024-02-29"], "date"),
    (["2026-12-04", "2023-02-29"], "text"),
    (["2026-12-04 10:00", "2026-12-04T10:00:01.5"], "timestamp"),
    (["2026-12-04 10:00:00+01", "2026-12-04T10:00:00Z", "2026-12-04 10:00:00+05:30"], "timestamptz"),
    (["2026-12-04 10:00:00+01", "2026-12-04 10:00:00"], "timestamptz"),
    (["1", "x"], "text"),
    (["", ""], "text"),
    (["1_000"], "text"),
])
def test_types_are_inferred_from_a_sample(values: list[str], kind: str) -> None:
    assert ingest.infer_type(values) == kind


def test_infer_columns_counts_short_rows_as_empty_fields() -> None:
    assert ingest.infer_columns(["a", "b"], [["1", "2"], ["3"]]) == (("a", "bigint"), ("b", "bigint"))


def test_jobs_that_emit_rows_refuse_a_bad_table_before_anything_is_enqueued() -> None:
    registry = load_registry([])
    with pytest.raises(BadParameter, match="image: table=runs is one of piblade's own tables"):
        registry.get("image").validate({"path": "a.png", "table": "runs"})
    summary = registry.get("summary")
    with pytest.raises(BadParameter, match="summary: table=Stats is not a table name"):
        summary.plan(summary.validate({"path": "a.f8", "table": "Stats"}))
    assert summary.plan(summary.validate({"path": "a.f8", "table": "stats"}))[0]["path"] == "a.f8"


def test_the_reduce_counts_rows_loaded_now_apart_from_chunks_loaded_before(tmp_path: Path) -> None:
    from piblade.registry import TaskContext

    ctx = TaskContext(run_id="r", index=3, total=3, node="n", data_root=tmp_path, output_dir=tmp_path)
    results = [
        {"path": "a.csv", "rows": 10, "already_loaded": False, "duplicates": 1, "seconds": 1.0, "copy_s": 0.5,
         "columns": ["id bigint"]},
        {"path": "a.csv", "rows": 20, "already_loaded": True, "duplicates": 0, "seconds": 0.1, "copy_s": 0.0},
        {"path": "b.csv", "rows": 5, "already_loaded": False, "duplicates": 0, "seconds": 0.5, "copy_s": 0.25},
    ]
    assert ingest.reduce(ctx, {"table": "t"}, results) == {
        "table": "t", "files": 2, "chunks": 3, "rows": 15, "already_loaded": 1, "rows_loaded_before": 20,
        "duplicates": 1, "seconds": 1.6, "copy_s": 0.75, "columns": ["id bigint"]}


def test_a_schema_can_come_from_a_local_file(tmp_path: Path) -> None:
    from piblade.cli.submit_cmd import PARAM_FILE_MAX, parse_params

    (tmp_path / "readings.schema").write_text("sensor:int\nts:timestamptz\nvalue:float\n")
    params = parse_params(["table=readings", f"schema=@{tmp_path / 'readings.schema'}"])
    assert params == {"table": "readings", "schema": "sensor:int\nts:timestamptz\nvalue:float"}
    assert ingest.parse_schema(params["schema"]) == (
        ("sensor", "integer"), ("ts", "timestamptz"), ("value", "double precision"))
    with pytest.raises(BadParameter, match=r"schema=@.*missing: cannot read the file \(FileNotFoundError\)"):
        parse_params([f"schema=@{tmp_path / 'missing'}"])
    (tmp_path / "big").write_text("x" * (PARAM_FILE_MAX + 1))
    with pytest.raises(BadParameter, match="the file is larger than 64 KiB"):
        parse_params([f"schema=@{tmp_path / 'big'}"])
