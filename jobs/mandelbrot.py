"""``mandelbrot``: render the Mandelbrot set as tiles, assemble a PNG.

Each task renders one tile of escape counts with a Numba kernel and saves it as
``<output_dir>/tiles/tile-NNNNN.npy``; the reduce step assembles the tiles band
by band, colours them with :func:`colorize` and writes ``mandelbrot.png``.

:func:`render_reference` is a plain NumPy implementation with the same
arithmetic, used by the tests to check the assembled counts exactly.

This module must not import Numba at module level (the CLI and health agent
import it); the kernel lives in :mod:`jobs.kernels.mandelbrot`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade.errors import BadParameter
from piblade.lazymodule import lazy_module
from piblade.outputs import replace_into
from piblade.registry import Param, TaskContext, job

if TYPE_CHECKING:
    import numpy as np
else:  # numpy loads in the worker, on first use: `piblade submit` only reads the job's parameters
    np = lazy_module("numpy")

IMAGE_NAME = "mandelbrot.png"
SUMMARY_NAME = "mandelbrot.json"
TILES_DIR = "tiles"

#: Upper bound on iterations done by one kernel call, so RQ's SIGALRM timeout
#: (which cannot interrupt nopython code) gets a chance between calls.
WORK_PER_CALL = 1 << 25

PARAMS = (
    Param("width", int, 1200, min=16, max=16384, help="image width in pixels"),
    Param("height", int, 800, min=16, max=16384, help="image height in pixels"),
    Param("max_iter", int, 200, min=1, max=100_000, help="iterations before a point counts as inside"),
    Param("tiles", int, 64, min=1, max=4096, help="number of tiles (tasks); capped at the pixel count"),
    Param("x_min", float, -2.0, help="left edge of the region (real axis)"),
    Param("x_max", float, 1.0, help="right edge of the region (real axis)"),
    Param("y_min", float, -1.0, help="bottom edge of the region (imaginary axis)"),
    Param("y_max", float, 1.0, help="top edge of the region (imaginary axis)"),
)


# --------------------------------------------------------------------------- pure helpers


def tile_boxes(width: int, height: int, tiles: int) -> list[tuple[int, int, int, int]]:
    """Split a ``width`` × ``height`` image into ``tiles`` boxes ``(x0, y0, x1, y1)`` (ends exclusive).

    The grid is near-square: ``rows`` horizontal bands, each split into
    columns, so that every tile has about the same aspect as the image. When
    ``tiles`` is not a multiple of ``rows`` the last bands get one column more;
    the last band and the last column of each band absorb the pixel
    remainders. Boxes are in row-major order and cover every pixel exactly
    once. ``tiles`` is capped at ``width * height``.
    """
    if width < 1 or height < 1 or tiles < 1:
        raise ValueError("width, height and tiles must be positive")
    tiles = min(tiles, width * height)
    rows = round(math.sqrt(tiles * height / width))
    rows = max(1, min(rows, tiles, height))
    rows = max(rows, -(-tiles // width))  # no band may need more columns than pixels
    band_h = height // rows
    base, extra = divmod(tiles, rows)
    boxes: list[tuple[int, int, int, int]] = []
    for r in range(rows):
        y0 = r * band_h
        y1 = height if r == rows - 1 else y0 + band_h
        cols = base + (1 if r >= rows - extra else 0)
        col_w = width // cols
        for c in range(cols):
            x0 = c * col_w
            x1 = width if c == cols - 1 else x0 + col_w
            boxes.append((x0, y0, x1, y1))
    return boxes


def _check_region(params: Mapping[str, Any]) -> None:
    for lo, hi in (("x_min", "x_max"), ("y_min", "y_max")):
        if not params[lo] < params[hi]:
            raise BadParameter(
                f"mandelbrot: {lo}={params[lo]!r} must be less than {hi}={params[hi]!r}",
                hint=f"give a region with {lo} < {hi}",
            )


def split(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per tile: its index, pixel box, the image size, region and max_iter."""
    _check_region(params)
    common = {
        "width": params["width"],
        "height": params["height"],
        "max_iter": params["max_iter"],
        "x_min": params["x_min"],
        "x_max": params["x_max"],
        "y_min": params["y_min"],
        "y_max": params["y_max"],
    }
    return [
        {"index": i, "x0": x0, "y0": y0, "x1": x1, "y1": y1, **common}
        for i, (x0, y0, x1, y1) in enumerate(tile_boxes(params["width"], params["height"], params["tiles"]))
    ]


def render_reference(
    width: int,
    height: int,
    max_iter: int,
    x_min: float = -2.0,
    x_max: float = 1.0,
    y_min: float = -1.0,
    y_max: float = 1.0,
) -> np.ndarray:
    """Escape counts (height × width, uint32) in plain vectorised NumPy.

    Same pixel mapping and the same floating-point operations in the same
    order as the Numba kernel, so the result is identical to the job's.
    Meant for tests and small images (it iterates over the whole image).
    """
    dx = (x_max - x_min) / width
    dy = (y_max - y_min) / height
    cr_row = x_min + (np.arange(width, dtype=np.float64) + 0.5) * dx
    ci_col = y_max - (np.arange(height, dtype=np.float64) + 0.5) * dy
    cr = np.broadcast_to(cr_row, (height, width)).ravel().copy()
    ci = np.broadcast_to(ci_col[:, None], (height, width)).ravel().copy()
    counts = np.zeros(width * height, dtype=np.uint32)
    idx = np.arange(width * height)
    zr = np.zeros_like(cr)
    zi = np.zeros_like(ci)
    for _ in range(max_iter):
        zr2 = zr * zr
        zi2 = zi * zi
        keep = ~(zr2 + zi2 > 4.0)
        if not keep.all():
            idx, zr, zi, zr2, zi2, cr, ci = (a[keep] for a in (idx, zr, zi, zr2, zi2, cr, ci))
            if idx.size == 0:
                break
        zi = 2.0 * zr * zi + ci
        zr = zr2 - zi2 + cr
        counts[idx] += 1
    return counts.reshape(height, width)


def palette(max_iter: int) -> np.ndarray:
    """RGB lookup table (max_iter + 1 × 3, uint8): entry n colours an escape count of n.

    Points that never escape (n == max_iter) are black; the others follow a
    smooth blue-orange-white ramp over sqrt(n / max_iter).
    """
    t = np.sqrt(np.arange(max_iter + 1, dtype=np.float64) / max_iter)
    u = 1.0 - t
    rgb = np.empty((max_iter + 1, 3), dtype=np.float64)
    rgb[:, 0] = 9.0 * u * t**3 + t**4
    rgb[:, 1] = 15.0 * u**2 * t**2 + t**4
    rgb[:, 2] = 8.5 * u**3 * t + 0.5 * t**2
    lut = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    lut[max_iter] = 0
    return lut


def colorize(counts: np.ndarray, max_iter: int) -> np.ndarray:
    """Map escape counts (any shape, values 0..max_iter) to RGB uint8 (shape + (3,))."""
    return palette(max_iter)[np.asarray(counts, dtype=np.intp)]


# --------------------------------------------------------------------------- files


def _tile_path(output_dir: Path, index: int) -> Path:
    return output_dir / TILES_DIR / f"tile-{index:05d}.npy"


# --------------------------------------------------------------------------- worker side


def warmup() -> None:
    """Compile the kernel (or load it from Numba's cache) on a tiny input."""
    from jobs.kernels import mandelbrot as kernels

    kernels.warmup()


def render_tile(
    x0: int,
    y0: int,
    x1: int,
    y1: int,
    width: int,
    height: int,
    max_iter: int,
    x_min: float,
    x_max: float,
    y_min: float,
    y_max: float,
    min_rows: int = 1,
) -> np.ndarray:
    """Escape counts of one box (uint32), computed in blocks of rows that each do bounded work.

    ``min_rows`` (the thread count) keeps every block wide enough to use all threads.
    """
    from jobs.kernels.mandelbrot import escape_counts

    out = np.empty((y1 - y0, x1 - x0), dtype=np.uint32)
    rows_per_call = max(1, min_rows, WORK_PER_CALL // max(1, (x1 - x0) * max_iter))
    for r0 in range(0, y1 - y0, rows_per_call):
        block = out[r0 : r0 + rows_per_call]
        escape_counts(block, x0, y0 + r0, width, height, x_min, x_max, y_min, y_max, max_iter)
    return out


def reduce(ctx: TaskContext, params: Mapping[str, Any], results: list[Any]) -> dict[str, Any]:
    """Assemble the tiles into ``mandelbrot.png``, remove them, return a summary.

    Idempotent: if a previous attempt already finished (tiles gone, summary
    written), its summary is returned.
    """
    from PIL import Image

    width, height, max_iter = params["width"], params["height"], params["max_iter"]
    tasks = split(params)
    out_dir = Path(ctx.output_dir)
    summary_path = out_dir / SUMMARY_NAME
    missing = [t["index"] for t in tasks if not _tile_path(out_dir, t["index"]).exists()]
    if missing:
        if summary_path.exists() and (out_dir / IMAGE_NAME).exists():
            return json.loads(summary_path.read_text())
        raise FileNotFoundError(
            f"mandelbrot: {len(missing)} tile(s) missing in {out_dir / TILES_DIR}, e.g. tile {missing[0]}"
        )

    lut = palette(max_iter)
    image = Image.new("RGB", (width, height))
    total = 0
    band: list[dict[str, Any]] = []
    # Tiles come in row-major order; tiles of one band share y0/y1.
    for i, t in enumerate(tasks):
        band.append(t)
        if i + 1 < len(tasks) and tasks[i + 1]["y0"] == t["y0"]:
            continue
        y0, y1 = band[0]["y0"], band[0]["y1"]
        counts = np.empty((y1 - y0, width), dtype=np.uint32)
        for b in band:
            tile = np.load(_tile_path(out_dir, b["index"]), allow_pickle=False)
            if tile.shape != (b["y1"] - b["y0"], b["x1"] - b["x0"]):
                raise ValueError(f"mandelbrot: tile {b['index']} has shape {tile.shape}, expected another")
            counts[:, b["x0"] : b["x1"]] = tile
        total += int(counts.sum(dtype=np.uint64))
        image.paste(Image.fromarray(lut[counts]), (0, y0))
        band = []

    replace_into(out_dir / IMAGE_NAME, lambda fh: image.save(fh, format="PNG"))
    summary = {
        "image": IMAGE_NAME,
        "width": width,
        "height": height,
        "tiles": len(tasks),
        "mean_iter": total / (width * height),
    }
    replace_into(summary_path, lambda fh: fh.write(json.dumps(summary).encode()))
    shutil.rmtree(out_dir / TILES_DIR, ignore_errors=True)
    return summary


@job(
    "mandelbrot",
    summary="Render the Mandelbrot set in tiles and assemble a PNG (Numba, parallel rows)",
    params=PARAMS,
    split=split,
    check=_check_region,
    reduce=reduce,
    warmup=warmup,
    timeout=1800,
    writes_output=True,
)
def task(
    ctx: TaskContext,
    *,
    index: int,
    x0: int,
    y0: int,
    x1: int,
    y1: int,
    width: int,
    height: int,
    max_iter: int,
    x_min: float,
    x_max: float,
    y_min: float,
    y_max: float,
) -> dict[str, Any]:
    """Render one tile and save it as ``tiles/tile-NNNNN.npy`` (temporary name, then rename)."""
    import numba

    threads = max(1, min(ctx.threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    counts = render_tile(x0, y0, x1, y1, width, height, max_iter, x_min, x_max, y_min, y_max, threads)
    if max_iter <= np.iinfo(np.uint16).max:
        counts = counts.astype(np.uint16)
    path = _tile_path(Path(ctx.output_dir), index)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_into(path, lambda fh: np.save(fh, counts, allow_pickle=False))
    return {"tile": index, "box": [x0, y0, x1, y1], "pixels": int(counts.size)}
