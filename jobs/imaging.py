"""``image``: process one picture on the share — grayscale, blur, edges or resize (Numba kernels).

Made for ``piblade submit image --over 'photos/**/*.jpg' -p op=resize -p size=1024``:
one task per picture, each reading ``path`` under the worker's mount of the
share and writing ``<run output dir>/<path>`` (same relative path, same
format; a temporary name, then a rename, because RQ may run a task twice).
The reduce step returns a summary of the run.

Operations (the kernels are in :mod:`jobs.kernels.imaging`):

* ``grayscale`` — ITU-R 601 luma, bit-identical to Pillow's ``convert("L")``;
* ``blur`` — separable Gaussian, ``sigma`` pixels, radius ``ceil(3 sigma)``
  unless ``radius`` is given, edges replicated;
* ``edges`` — Sobel gradient magnitude of the luma, divided by 4;
* ``resize`` — longer side to ``size`` pixels, aspect kept: area average when
  shrinking (every source pixel counts, no aliasing), bilinear when enlarging.

Pictures are read with Pillow, turned upright by their EXIF orientation, and
processed as 8-bit grayscale or RGB (other modes, e.g. RGBA or palette, are
converted to RGB: transparency is dropped).

This module must not import Numba at module level.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade.errors import BadParameter
from piblade.lazymodule import lazy_module
from piblade.outputs import replace_into
from piblade.registry import REQUIRED, Param, TaskContext, job, relative_share_path, shown
from piblade.resultsdb import Column, check_table_name

if TYPE_CHECKING:
    import numpy as np
else:  # numpy loads in the worker, on first use: `piblade submit` only reads the job's parameters
    np = lazy_module("numpy")

OPS = ("grayscale", "blur", "edges", "resize")
#: Output rows per kernel call: bounds the work of one call and the memory of intermediates.
BAND_ROWS = 256
#: Outputs listed in the reduce's summary (the rest are counted).
OUTPUTS_LISTED = 100

PARAMS = (
    Param("path", str, REQUIRED, path=True, help="picture to process, relative to the share's root"),
    Param("op", str, "grayscale", choices=OPS, help="what to do with it"),
    Param("size", int, 1024, min=1, max=16384, help="resize: length of the longer side in pixels"),
    Param("sigma", float, 2.0, min=0.1, max=50.0, help="blur: Gaussian standard deviation in pixels"),
    Param("radius", int, 0, min=0, max=200, help="blur: kernel radius in pixels; 0 means ceil(3*sigma)"),
    Param("table", str, "", max_length=127, help="also write one row per picture into this results-database table"),
)
#: The row a picture adds to ``table`` (after run_id and task).
ROW = (Column("input", "text"), Column("output", "text"), Column("op", "text"), Column("width", "int4"),
       Column("height", "int4"), Column("input_width", "int4"), Column("input_height", "int4"),
       Column("seconds", "float8"))


# --------------------------------------------------------------------------- pure helpers


def check(params: Mapping[str, Any]) -> None:
    """Refuse, before anything is queued, a path that is absolute or climbs out with '..'."""
    relative_share_path("image", params["path"],
                        "give the picture's path under the share, e.g. path=photos/cat.jpg, or use --over 'photos/*.jpg'")
    if params["table"]:
        check_table_name("image", params["table"])


def gaussian_weights(sigma: float, radius: int = 0) -> np.ndarray:
    """Normalised 1-D Gaussian taps (float32), ``2 * radius + 1`` of them; radius 0 means ceil(3 sigma)."""
    r = radius or max(1, math.ceil(3.0 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return (w / w.sum()).astype(np.float32)


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the longer side ``size`` and the aspect ratio kept (at least 1 pixel)."""
    if width >= height:
        return size, max(1, round(height * size / width))
    return max(1, round(width * size / height)), size


def area_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps for shrinking ``n_in`` pixels to ``n_out``: each output averages the input span it covers.

    Output ``o`` covers ``[o * s, (o + 1) * s)`` with ``s = n_in / n_out``;
    every input pixel it touches is weighted by the overlapped fraction.
    Returns ``(index, weight)`` of shape (n_out, taps); unused taps have weight 0.
    """
    scale = n_in / n_out
    taps = math.ceil(scale) + 1
    index = np.zeros((n_out, taps), dtype=np.int64)
    weight = np.zeros((n_out, taps), dtype=np.float32)
    for o in range(n_out):
        a, b = o * scale, min((o + 1) * scale, n_in)
        first = math.floor(a)
        for k, i in enumerate(range(first, min(math.ceil(b), n_in))):
            index[o, k] = i
            weight[o, k] = (min(b, i + 1) - max(a, i)) / scale
    return index, weight


def bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps for enlarging: pixel centres aligned (``(o + 0.5) * s - 0.5``), edges clamped."""
    scale = n_in / n_out
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    left = np.floor(centre)
    frac = centre - left
    index = np.stack([np.clip(left, 0, n_in - 1), np.clip(left + 1, 0, n_in - 1)], axis=1).astype(np.int64)
    weight = np.stack([1.0 - frac, frac], axis=1).astype(np.float32)
    return index, weight


def resample_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    if n_out < n_in:
        return area_weights(n_in, n_out)
    return bilinear_weights(n_in, n_out)


# --------------------------------------------------------------------------- pixels


def _bands(rows: int) -> range:
    return range(0, rows, BAND_ROWS)


def to_luma(rgb: np.ndarray) -> np.ndarray:
    """(h, w) luma of an (h, w, 3) image; a one-channel image is returned as (h, w)."""
    from jobs.kernels.imaging import luma

    if rgb.shape[2] == 1:
        return rgb[:, :, 0].copy()
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    for r0 in _bands(rgb.shape[0]):
        luma(rgb, out, r0, min(r0 + BAND_ROWS, rgb.shape[0]))
    return out


def blur(img: np.ndarray, sigma: float, radius: int = 0) -> np.ndarray:
    from jobs.kernels.imaging import blur_cols, blur_rows

    weights = gaussian_weights(sigma, radius)
    r = (len(weights) - 1) // 2
    h, w, c = img.shape
    out = np.empty_like(img)
    for r0 in _bands(h):
        r1 = min(r0 + BAND_ROWS, h)
        lo, hi = max(0, r0 - r), min(h, r1 + r)
        tmp = np.empty((hi - lo, w, c), dtype=np.float32)
        blur_rows(img, tmp, weights, lo, hi)
        blur_cols(tmp, out, weights, r0, r1, lo, h)
    return out


def edges(img: np.ndarray) -> np.ndarray:
    from jobs.kernels.imaging import sobel

    gray = to_luma(img)
    out = np.empty_like(gray)
    for r0 in _bands(gray.shape[0]):
        sobel(gray, out, r0, min(r0 + BAND_ROWS, gray.shape[0]))
    return out


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    from jobs.kernels.imaging import resample_cols, resample_rows

    h, w, c = img.shape
    col_index, col_weight = resample_weights(w, width)
    row_index, row_weight = resample_weights(h, height)
    out = np.empty((height, width, c), dtype=np.uint8)
    for o0 in range(0, height, BAND_ROWS):
        o1 = min(o0 + BAND_ROWS, height)
        used = row_index[o0:o1][row_weight[o0:o1] > 0]
        lo, hi = (int(used.min()), int(used.max()) + 1) if used.size else (0, 1)
        tmp = np.empty((hi - lo, width, c), dtype=np.float32)
        resample_rows(img, tmp, col_index, col_weight, lo, hi)
        resample_cols(tmp, out, np.clip(row_index, lo, hi - 1), row_weight, o0, o1, lo)
    return out


def apply(img: np.ndarray, op: str, *, size: int = 1024, sigma: float = 2.0, radius: int = 0) -> np.ndarray:
    """Run ``op`` on an (h, w, c) uint8 image; returns (h', w', c') uint8 (c' = 1 for grayscale/edges)."""
    if op == "grayscale":
        return to_luma(img)[:, :, None]
    if op == "blur":
        return blur(img, sigma, radius)
    if op == "edges":
        return edges(img)[:, :, None]
    if op == "resize":
        width, height = resized_shape(img.shape[1], img.shape[0], size)
        return resize(img, width, height)
    raise BadParameter(f"image: unknown op {shown(op)}")


# --------------------------------------------------------------------------- files


def load(path: Path) -> np.ndarray:
    """The picture as (h, w, 1) or (h, w, 3) uint8, upright per its EXIF orientation."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        picture = ImageOps.exif_transpose(opened)
        if picture.mode not in ("L", "RGB"):
            picture = picture.convert("RGB")
        array = np.asarray(picture, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def save(array: np.ndarray, path: Path) -> None:
    """Write ``array`` to ``path`` in the format its extension names (temporary name, then rename)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise BadParameter(f"image: cannot tell the image format of {path.name!r} from its extension")
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"quality": 95} if fmt == "JPEG" else {}
    replace_into(path, lambda fh: picture.save(fh, format=fmt, **options))


# --------------------------------------------------------------------------- worker side


def warmup() -> None:
    """Compile the kernels, and load Pillow with every format plugin it registers.

    The worker's supervisor runs this before it forks its worker processes, so
    they share one copy of Pillow (``registered_extensions`` imports every
    format plugin) instead of each importing its own at its first picture.
    """
    from PIL import Image

    from jobs.kernels import imaging as kernels

    kernels.warmup()
    Image.init()


def reduce(ctx: TaskContext, params: Mapping[str, Any], results: list[Any]) -> dict[str, Any]:
    """``{"count", "pixels", "output_pixels", "seconds", "ops", "output_dir", "outputs"}`` (outputs capped)."""
    ops: dict[str, int] = {}
    for r in results:
        ops[r["op"]] = ops.get(r["op"], 0) + 1
    outputs = [r["output"] for r in results]
    return {
        "count": len(results),
        "pixels": sum(r["input_width"] * r["input_height"] for r in results),
        "output_pixels": sum(r["width"] * r["height"] for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 3),
        "ops": ops,
        "output_dir": ctx.output_dir.relative_to(ctx.data_root).as_posix(),
        "outputs": outputs[:OUTPUTS_LISTED],
        "outputs_not_listed": max(0, len(outputs) - OUTPUTS_LISTED),
    }


@job(
    "image",
    summary="Grayscale, blur, edges or resize a picture on the share (Numba); fan out with --over 'photos/*.jpg'",
    params=PARAMS,
    check=check,
    reduce=reduce,
    warmup=warmup,
    timeout=900,
    writes_output=True,
)
def task(ctx: TaskContext, *, path: str, op: str, size: int, sigma: float, radius: int, table: str = "") -> dict[str, Any]:
    """Process one picture; write it to ``<output dir>/<path>`` (and a row into ``table``); return what was done."""
    import numba

    numba.set_num_threads(max(1, min(ctx.threads, numba.config.NUMBA_NUM_THREADS)))
    source = ctx.resolve(path)
    if not source.is_file():
        raise BadParameter(f"image: {shown(str(path))} is not a file under the data directory {ctx.data_root}")
    relative = source.relative_to(ctx.data_root.resolve())
    target = (ctx.output_dir / relative).resolve()
    started = time.perf_counter()
    img = load(source)
    result = apply(img, op, size=size, sigma=sigma, radius=radius)
    seconds = time.perf_counter() - started
    save(result, target)
    done = {
        "input": relative.as_posix(),
        "output": target.relative_to(ctx.data_root.resolve()).as_posix(),
        "width": int(result.shape[1]),
        "height": int(result.shape[0]),
        "input_width": int(img.shape[1]),
        "input_height": int(img.shape[0]),
        "op": op,
        "seconds": round(seconds, 6),
    }
    if table:
        ctx.emit(table, ROW, [tuple(done[c.name] for c in ROW)])
    return done
