"""Bundled Numba jobs through real workers: the assembled output equals an in-process reference."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from PIL import Image

from jobs.mandelbrot import colorize, render_reference
from piblade import dispatch
from piblade.registry import load_registry
from tests.integration.conftest import TEST_JOBS, WorkerPool

pytestmark = pytest.mark.integration


def test_mandelbrot_fan_out_assembles_the_reference_image(conn: redis.Redis, workers: WorkerPool) -> None:
    registry = load_registry([TEST_JOBS])
    params = {"width": "240", "height": "150", "max_iter": "120", "tiles": "64",
              "x_min": "-2.2", "x_max": "0.8", "y_min": "-1.1", "y_max": "1.1"}
    record = dispatch.submit(conn, registry, "mandelbrot", params)
    assert record.total == 64
    status = dispatch.wait(conn, record.id, timeout=120)
    assert status.state == "finished", status.to_dict()
    assert status.result["width"] == 240 and status.result["tiles"] == 64

    png = workers.data_dir / record.output / "mandelbrot.png"
    got = np.asarray(Image.open(png).convert("RGB"))
    counts = render_reference(240, 150, 120, -2.2, 0.8, -1.1, 1.1)
    expected = colorize(counts, 120)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert not (workers.data_dir / record.output / "tiles").exists()  # the reduce cleans up


def test_montecarlo_pi_reduces_partial_sums(conn: redis.Redis, workers: WorkerPool) -> None:
    registry = load_registry([TEST_JOBS])
    record = dispatch.submit(conn, registry, "montecarlo-pi", {"samples": "4000000", "tasks": "16", "seed": "7"})
    status = dispatch.wait(conn, record.id, timeout=120)
    assert status.state == "finished"
    assert status.result["samples"] == 4_000_000
    assert abs(status.result["pi"] - np.pi) < 0.01


def test_summary_of_a_file_on_the_data_share(conn: redis.Redis, workers: WorkerPool) -> None:
    registry = load_registry([TEST_JOBS])
    values = np.random.default_rng(3).normal(10.0, 2.0, 300_000)
    (workers.data_dir / "inputs").mkdir()
    values.astype("<f8").tofile(workers.data_dir / "inputs" / "sensor.f8")
    record = dispatch.submit(conn, registry, "summary", {"path": "inputs/sensor.f8", "parts": "6"})
    status = dispatch.wait(conn, record.id, timeout=120)
    assert status.state == "finished", status.to_dict()
    assert status.result["count"] == values.size
    assert status.result["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert status.result["std"] == pytest.approx(values.std(), rel=1e-9)
    assert status.result["max"] == values.max()
