"""The bundled jobs, run in-process through the registry (no Redis, no worker)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from piblade.errors import BadParameter
from piblade.registry import JobSpec, TaskContext, load_registry

REGISTRY = load_registry()


def ctx_for(tmp_path: Path, index: int = 0, total: int = 1, threads: int = 1) -> TaskContext:
    out = tmp_path / "runs" / "t"
    out.mkdir(parents=True, exist_ok=True)
    return TaskContext(
        run_id="t", index=index, total=total, node="test", data_root=tmp_path, output_dir=out, threads=threads
    )


def run(name: str, raw: dict[str, Any], tmp_path: Path, threads: int = 1) -> tuple[list[Any], Any]:
    """Validate, plan, run every task and the reduce step, like a cluster would."""
    spec: JobSpec = REGISTRY.get(name)
    params = spec.validate(raw)
    tasks = spec.plan(params)
    results = [
        spec.task(ctx_for(tmp_path, i, len(tasks), threads), **kwargs) for i, kwargs in enumerate(tasks)
    ]
    json.dumps(results)  # results travel through Redis as JSON
    reduced = spec.reduce(ctx_for(tmp_path), params, results) if spec.reduce else None
    json.dumps(reduced)
    return results, reduced


def test_registry_has_the_bundled_jobs() -> None:
    names = {s.name for s in REGISTRY}
    assert {"mandelbrot", "montecarlo-pi", "summary", "noop"} <= names
    for name in names & {"mandelbrot", "montecarlo-pi", "summary", "noop"}:
        assert REGISTRY.get(name).task_path.startswith("jobs.")


def test_declaration_modules_do_not_import_numba() -> None:
    code = (
        "import sys\n"
        "from piblade.registry import load_registry\n"
        "load_registry([])\n"
        "import jobs.kernels\n"
        "assert 'numba' not in sys.modules, sorted(m for m in sys.modules if 'numba' in m)[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("name", ["mandelbrot", "montecarlo-pi", "summary"])
def test_warmup_runs(name: str) -> None:
    warmup = REGISTRY.get(name).warmup
    assert warmup is not None
    warmup()


# --------------------------------------------------------------------------- mandelbrot


@pytest.mark.parametrize(
    ("width", "height", "tiles"),
    [
        (16, 16, 1),
        (97, 61, 7),
        (1200, 800, 64),
        (100, 16, 13),  # prime
        (16, 16, 31),  # more tiles than rows
        (16, 40, 97),  # more tiles than rows and columns
        (20, 16, 4096),  # more tiles than pixels: capped
        (16384, 16, 4096),
        (16, 16384, 4096),
        (333, 17, 101),
    ],
)
def test_mandelbrot_tiles_cover_every_pixel_once(width: int, height: int, tiles: int) -> None:
    spec = REGISTRY.get("mandelbrot")
    plan = spec.plan(spec.validate({"width": width, "height": height, "tiles": tiles}))
    assert len(plan) == min(tiles, width * height)
    assert [t["index"] for t in plan] == list(range(len(plan)))
    cover = np.zeros((height, width), dtype=np.int32)
    for t in plan:
        assert 0 <= t["x0"] < t["x1"] <= width and 0 <= t["y0"] < t["y1"] <= height
        cover[t["y0"] : t["y1"], t["x0"] : t["x1"]] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_mandelbrot_matches_reference_and_png(tmp_path: Path, threads: int) -> None:
    from jobs.mandelbrot import colorize, render_reference

    raw = {"width": 97, "height": 61, "max_iter": 60, "tiles": 7}
    results, reduced = run("mandelbrot", raw, tmp_path, threads=threads)
    out = tmp_path / "runs" / "t"
    assert sorted(r["tile"] for r in results) == list(range(7))
    assert sum(r["pixels"] for r in results) == 97 * 61

    reference = render_reference(97, 61, 60, -2.0, 1.0, -1.0, 1.0)
    assert reduced["image"] == "mandelbrot.png"
    assert (reduced["width"], reduced["height"], reduced["tiles"]) == (97, 61, 7)
    assert reduced["mean_iter"] == pytest.approx(reference.mean(), rel=1e-12)
    assert not (out / "tiles").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    with Image.open(out / "mandelbrot.png") as img:
        assert img.mode == "RGB" and img.size == (97, 61)
        pixels = np.asarray(img)
    assert np.array_equal(pixels, colorize(reference, 60))

    # A reduce that runs again (at-least-once delivery) returns the same summary.
    params = REGISTRY.get("mandelbrot").validate(raw)
    assert REGISTRY.get("mandelbrot").reduce(ctx_for(tmp_path), params, results) == reduced


def test_mandelbrot_tile_counts_equal_reference(tmp_path: Path) -> None:
    from jobs.mandelbrot import render_reference

    spec = REGISTRY.get("mandelbrot")
    raw = {"width": 40, "height": 30, "max_iter": 300, "tiles": 5, "x_min": -0.8, "x_max": -0.7,
           "y_min": 0.05, "y_max": 0.15}
    params = spec.validate(raw)
    reference = render_reference(40, 30, 300, -0.8, -0.7, 0.05, 0.15)
    assert 0 < reference.min() and reference.max() == 300  # both escaping and inside points
    for i, kwargs in enumerate(spec.plan(params)):
        result = spec.task(ctx_for(tmp_path, i), **kwargs)
        x0, y0, x1, y1 = result["box"]
        tile = np.load(tmp_path / "runs" / "t" / "tiles" / f"tile-{i:05d}.npy")
        assert tile.dtype == np.uint16
        assert np.array_equal(tile, reference[y0:y1, x0:x1])


def test_mandelbrot_task_is_idempotent(tmp_path: Path) -> None:
    spec = REGISTRY.get("mandelbrot")
    kwargs = spec.plan(spec.validate({"width": 16, "height": 16, "tiles": 2}))[1]
    first = spec.task(ctx_for(tmp_path, 1), **kwargs)
    second = spec.task(ctx_for(tmp_path, 1), **kwargs)
    assert first == second == {"tile": 1, "box": [8, 0, 16, 16], "pixels": 128}
    assert [p.name for p in (tmp_path / "runs" / "t" / "tiles").iterdir()] == ["tile-00001.npy"]


def test_colorize_is_deterministic_and_black_inside() -> None:
    from jobs.mandelbrot import colorize

    counts = np.array([[0, 1, 50], [99, 100, 100]])
    rgb = colorize(counts, 100)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert (rgb[1, 1:] == 0).all()
    assert np.array_equal(rgb, colorize(counts.astype(np.uint16), 100))


# --------------------------------------------------------------------------- montecarlo


def test_montecarlo_estimates_pi_deterministically(tmp_path: Path) -> None:
    raw = {"samples": 2_000_000, "tasks": 3, "seed": 7}
    results, reduced = run("montecarlo-pi", raw, tmp_path)
    assert reduced["samples"] == 2_000_000
    assert abs(reduced["pi"] - math.pi) < 0.01
    assert reduced["error"] == pytest.approx(abs(reduced["pi"] - math.pi))
    assert all(isinstance(r["hits"], int) for r in results)
    assert run("montecarlo-pi", raw, tmp_path) == (results, reduced)
    # The thread count does not change the answer (chunks are seeded, not threads).
    assert run("montecarlo-pi", raw, tmp_path, threads=2) == (results, reduced)
    other = run("montecarlo-pi", {**raw, "seed": 8}, tmp_path)[1]
    assert other["pi"] != reduced["pi"]


def test_montecarlo_chunks_across_several_kernel_calls(tmp_path: Path) -> None:
    from jobs import montecarlo

    assert [n for _, n in montecarlo.chunks(montecarlo.CHUNK * 2 + 5, 1)] == [montecarlo.CHUNK] * 2 + [5]
    spec = REGISTRY.get("montecarlo-pi")
    plan = spec.plan(spec.validate({"samples": montecarlo.CHUNK + 1000, "tasks": 1}))
    result = spec.task(ctx_for(tmp_path, 0, 1, threads=2), **plan[0])
    assert result["samples"] == montecarlo.CHUNK + 1000
    assert abs(4 * result["hits"] / result["samples"] - math.pi) < 0.01


@pytest.mark.parametrize(("samples", "tasks"), [(1000, 1), (1000, 7), (20_000_000, 8), (1001, 10_000), (10**12, 9999)])
def test_montecarlo_split_sums_to_total(samples: int, tasks: int) -> None:
    spec = REGISTRY.get("montecarlo-pi")
    plan = spec.plan(spec.validate({"samples": samples, "tasks": tasks, "seed": 3}))
    sizes = [t["samples"] for t in plan]
    assert sum(sizes) == samples
    assert len(plan) == min(samples, tasks)
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    seeds = [t["seed"] for t in plan]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**32 for s in seeds)
    assert plan == spec.plan(spec.validate({"samples": samples, "tasks": tasks, "seed": 3}))


# --------------------------------------------------------------------------- summary


@pytest.fixture
def data(tmp_path: Path) -> np.ndarray:
    rng = np.random.default_rng(42)
    values = rng.normal(10.0, 3.0, 20_011)
    (tmp_path / "data").mkdir()
    values.astype("<f8").tofile(tmp_path / "data" / "values.f8")
    lines = ["time,value,label"]
    for i, v in enumerate(values):
        lines.append(f"{i},{float(v)!r},x")
        if i == 5000:
            lines.append("")
    (tmp_path / "data" / "values.csv").write_text("\n".join(lines) + "\n")
    return values


def check_summary(result: dict[str, Any], values: np.ndarray, lo: float, hi: float, bins: int) -> None:
    assert result["count"] == values.size
    assert result["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert result["std"] == pytest.approx(values.std(), rel=1e-9)
    assert result["min"] == values.min() and result["max"] == values.max()
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = result["histogram"]
    assert hist["counts"] == counts.tolist()
    assert hist["edges"] == edges.tolist()
    assert hist["below"] == int((values < lo).sum()) and hist["above"] == int((values > hi).sum())


def assert_same_summary(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("count", "min", "max", "skipped", "histogram"):
        assert a[key] == b[key], key
    for key in ("mean", "std", "sum"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key


def test_summary_binary(tmp_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import summary

    monkeypatch.setattr(summary, "CHUNK_BYTES", 8 * 1000 + 3)  # several chunks per part
    chunks = list(summary.binary_chunks(tmp_path / "data" / "values.f8", "f8", 0, 1))
    assert len(chunks) == 21 and np.array_equal(np.concatenate(chunks), data)
    raw = {"path": "data/values.f8", "format": "f8", "bins": 17, "lo": 4.0, "hi": 16.0}
    one = run("summary", {**raw, "parts": 1}, tmp_path)[1]
    seven = run("summary", {**raw, "parts": 7}, tmp_path)[1]
    check_summary(one, data, 4.0, 16.0, 17)
    assert one["skipped"] == 0
    assert_same_summary(one, seven)


def test_summary_csv(tmp_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import summary

    monkeypatch.setattr(summary, "CHUNK_BYTES", 4099)
    assert len(list(summary.csv_blocks(tmp_path / "data" / "values.csv", 0, 1))) > 100
    raw = {"path": "data/values.csv", "format": "csv", "column": 1, "bins": 20, "lo": 0.0, "hi": 20.0}
    results: dict[int, dict[str, Any]] = {}
    for parts in (1, 7, 64):
        results[parts] = run("summary", {**raw, "parts": parts}, tmp_path)[1]
        check_summary(results[parts], data, 0.0, 20.0, 20)
        assert results[parts]["skipped"] == 2  # the header and the blank line
    assert_same_summary(results[1], results[7])
    assert_same_summary(results[1], results[64])


def test_summary_csv_lines_split_exactly_once(tmp_path: Path) -> None:
    from jobs import summary

    text = b"1\n22\n\n333\n4444\nx\n55555\n6"  # no final newline
    path = tmp_path / "f.csv"
    path.write_bytes(text)
    for parts in range(1, len(text) + 3):
        for chunk in (1, 2, 5, 100):
            got = b"".join(b for i in range(parts) for b in summary.csv_blocks(path, i, parts, chunk))
            assert got == text, (parts, chunk)


def test_summary_without_histogram_and_nonfinite(tmp_path: Path) -> None:
    values = np.array([1.0, np.nan, 2.0, np.inf, 4.0], dtype="<f4")
    values.tofile(tmp_path / "v.f4")
    with open(tmp_path / "v.f4", "ab") as fh:
        fh.write(b"\x00\x01")  # a partial record
    result = run("summary", {"path": "v.f4", "format": "f4", "parts": 3}, tmp_path)[1]
    assert result["histogram"] is None
    assert result["count"] == 3 and result["skipped"] == 3
    assert result["mean"] == pytest.approx(7 / 3) and result["std"] == pytest.approx(np.std([1, 2, 4]))
    assert (result["min"], result["max"]) == (1.0, 4.0)


@pytest.mark.parametrize("fmt", ["i2", "i4", "u1", "u2", "f4"])
def test_summary_integer_formats(tmp_path: Path, fmt: str) -> None:
    values = (np.arange(1000) % 200).astype("<" + fmt)
    values.tofile(tmp_path / "v.bin")
    result = run("summary", {"path": "v.bin", "format": fmt, "parts": 5, "lo": 0, "hi": 200, "bins": 10}, tmp_path)[1]
    check_summary(result, values.astype(np.float64), 0.0, 200.0, 10)


def test_summary_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.f8").write_bytes(b"")
    result = run("summary", {"path": "empty.f8", "parts": 3}, tmp_path)[1]
    assert result["count"] == 0 and result["mean"] is None and result["min"] is None


def test_merge_stats_matches_numpy() -> None:
    from jobs.summary import empty_stats, finalize, merge_all

    rng = np.random.default_rng(1)
    pieces = [rng.normal(1e6, 1.0, n) for n in (1, 10, 0, 1000, 7)]

    def stats(x: np.ndarray) -> dict[str, Any]:
        s = empty_stats()
        if x.size:
            s.update(count=x.size, sum=float(x.sum()), mean=float(x.mean()), m2=float(((x - x.mean()) ** 2).sum()),
                     min=float(x.min()), max=float(x.max()))
        return s

    whole = np.concatenate(pieces)
    result = finalize(merge_all(stats(p) for p in pieces), 0.0, 0.0, 1)
    assert result["count"] == whole.size
    assert result["mean"] == pytest.approx(whole.mean(), rel=1e-12)
    assert result["std"] == pytest.approx(whole.std(), rel=1e-9)
    assert (result["min"], result["max"]) == (whole.min(), whole.max())


@pytest.mark.parametrize("path", ["../x", "data/../../x", "/etc/passwd", ""])
def test_summary_refuses_paths_outside_the_data_root(tmp_path: Path, path: str) -> None:
    spec = REGISTRY.get("summary")
    with pytest.raises(BadParameter):
        spec.plan(spec.validate({"path": path}))
    if path:  # the task refuses on its own too (e.g. if called with a forged plan)
        kwargs = {"path": path, "format": "f8", "column": 0, "part": 0, "parts": 1, "bins": 1, "lo": 0.0, "hi": 0.0}
        with pytest.raises(BadParameter):
            spec.task(ctx_for(tmp_path), **kwargs)


def test_summary_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.f8").write_bytes(b"\x00" * 8)
    (root / "link.f8").symlink_to(tmp_path / "secret.f8")
    spec = REGISTRY.get("summary")
    (kwargs,) = spec.plan(spec.validate({"path": "link.f8", "parts": 1}))
    ctx = TaskContext(run_id="t", index=0, total=1, node="test", data_root=root, output_dir=tmp_path)
    with pytest.raises(BadParameter):
        spec.task(ctx, **kwargs)


# --------------------------------------------------------------------------- noop and bad parameters


def test_noop(tmp_path: Path) -> None:
    spec = REGISTRY.get("noop")
    assert spec.reduce is None
    results, _ = run("noop", {"count": 5}, tmp_path)
    assert results == [None] * 5
    assert spec.plan(spec.validate({})) == [{"i": 0}]


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("mandelbrot", {"x_min": 1.0, "x_max": 1.0}),
        ("mandelbrot", {"x_min": 2.0}),
        ("mandelbrot", {"y_min": 1.0, "y_max": -1.0}),
        ("mandelbrot", {"colour": "red"}),
        ("mandelbrot", {"width": "wide"}),
        ("mandelbrot", {"width": 12.5}),
        ("mandelbrot", {"width": 15}),
        ("mandelbrot", {"max_iter": 100_001}),
        ("mandelbrot", {"tiles": 0}),
        ("mandelbrot", {"x_min": "nan"}),
        ("montecarlo-pi", {"samples": 999}),
        ("montecarlo-pi", {"seed": 2**31}),
        ("montecarlo-pi", {"tasks": "many"}),
        ("montecarlo-pi", {"sample": 1000}),
        ("summary", {}),
        ("summary", {"path": "x", "format": "f16"}),
        ("summary", {"path": "x", "parts": 0}),
        ("summary", {"path": "x", "bins": 1001}),
        ("summary", {"path": "x", "lo": 2.0, "hi": 1.0}),
        ("summary", {"path": "x", "column": 3}),  # binary format
        ("summary", {"path": 5}),
        ("noop", {"count": 0}),
        ("noop", {"count": True}),
    ],
)
def test_bad_parameters_are_refused_before_any_task(name: str, raw: dict[str, Any]) -> None:
    spec = REGISTRY.get(name)
    with pytest.raises(BadParameter):
        spec.plan(spec.validate(raw))


# --------------------------------------------------------------------------- parameter bounds


@pytest.mark.parametrize("name", ["summary", "image"])
def test_huge_path_is_refused_with_a_short_message(name: str) -> None:
    spec = load_registry().get(name)
    with pytest.raises(BadParameter) as info:
        spec.validate({"path": "a/" * 50_000 + "x"})
    message = str(info.value) + " " + (info.value.hint or "")
    assert "too long" in message and "100001 characters" in message
    assert len(message) < 400


@pytest.mark.parametrize("name", ["summary", "image"])
def test_path_component_longer_than_name_max_is_refused(name: str) -> None:
    spec = load_registry().get(name)
    with pytest.raises(BadParameter, match="path component"):
        spec.validate({"path": "d/" + "n" * 256})
    spec.validate({"path": "d/" + "n" * 255})


def test_other_string_params_are_bounded_and_echoed_short() -> None:
    spec = load_registry().get("summary")
    with pytest.raises(BadParameter) as info:
        spec.validate({"path": "x.f8", "format": "q" * 5000})
    assert len(str(info.value)) < 400


def test_bad_queue_names_are_refused() -> None:
    from piblade.dispatch import check_queue

    for bad in ["", " ", "a b", "q" * 65, "x\n"]:
        with pytest.raises(BadParameter):
            check_queue(bad)
    assert check_queue("default") == "default"


def test_input_paths_are_the_path_parameters_only(tmp_path) -> None:
    from piblade.errors import BadParameter
    from piblade.inputs import check_inputs, input_paths
    from piblade.nas.share import LocalShare

    spec = load_registry().get("summary")
    params = spec.validate({"path": "inputs/a.f8", "parts": "2"})
    assert input_paths(spec, params) == [("path", "inputs/a.f8")]
    assert input_paths(load_registry().get("mandelbrot"), {"width": 10}) == []
    share = LocalShare(tmp_path)
    with pytest.raises(BadParameter, match=r"path=inputs/a.f8 does not exist on the share"):
        check_inputs(share, spec, params)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "a.f8").write_bytes(b"\0" * 8)
    check_inputs(share, spec, params)
    with pytest.raises(BadParameter, match="is a directory"):
        check_inputs(share, spec, spec.validate({"path": "inputs"}))


@pytest.mark.parametrize(("code", "words"), [(-9, "killed by SIGKILL"), (-15, "killed by SIGTERM"), (1, "exited with code 1")])
def test_a_dead_worker_is_described_in_words(code: int, words: str) -> None:
    from piblade.worker import exit_description

    assert exit_description(code) == words
