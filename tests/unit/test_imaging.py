"""The `image` job's kernels against independent references (NumPy written the textbook way, and Pillow).

Tolerances, and why:
* grayscale — exact: the kernel uses Pillow's own fixed-point luma.
* edges — exact: integer Sobel sums, then the same IEEE sqrt and rounding as the reference.
* blur — within 1 grey level: the kernel keeps the horizontal pass in float32 and the
  reference in float64; a value within float32 epsilon of .5 can round either way.
* resize — within 1 level of the float64 area/bilinear reference (float32 taps), and within 1 of
  Pillow's BOX/BILINEAR, which rounds its intermediate pass to 8 bits with 22-bit fixed-point taps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs import imaging
from piblade.errors import BadParameter
from piblade.registry import TaskContext, load_registry

RNG = np.random.default_rng(20240611)


def random_image(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def smooth_image(h: int, w: int) -> np.ndarray:
    """A photo-like image (gradients and a disc), where rounding ties are rare."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(1, w - 1)
    g = 255 * y / max(1, h - 1)
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 3) ** 2, 220.0, 30.0)
    return np.clip(np.stack([r, g, b], axis=2).round(), 0, 255).astype(np.uint8)


def to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- references


def blur_reference(img: np.ndarray, sigma: float, radius: int = 0) -> np.ndarray:
    r = radius or max(1, math.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-x * x / (2 * sigma * sigma))
    w /= w.sum()
    padded = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    h_pass = sum(w[k] * padded[:, k : k + img.shape[1], :] for k in range(2 * r + 1))
    v_pass = sum(w[k] * h_pass[k : k + img.shape[0], :, :] for k in range(2 * r + 1))
    return to_u8(v_pass)


def sobel_reference(gray: np.ndarray) -> np.ndarray:
    p = np.pad(gray.astype(np.int64), 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return to_u8(np.sqrt((gx * gx + gy * gy).astype(np.float64)) / 4.0)


def area_reference(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Exact box average by integrating: upsample by the lcm factor, then average blocks."""
    h, w, _ = img.shape
    fy, fx = height // math.gcd(h, height), width // math.gcd(w, width)
    big = np.repeat(np.repeat(img.astype(np.float64), fy, axis=0), fx, axis=1)  # (h*fy, w*fx)
    by, bx = big.shape[0] // height, big.shape[1] // width
    return to_u8(big.reshape(height, by, width, bx, -1).mean(axis=(1, 3)))


def bilinear_reference(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w, _ = img.shape

    def coords(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), c - lo

    y0, y1, fy = coords(h, height)
    x0, x1, fx = coords(w, width)
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx)[None, :, None] + f[y0][:, x1] * fx[None, :, None]
    bottom = f[y1][:, x0] * (1 - fx)[None, :, None] + f[y1][:, x1] * fx[None, :, None]
    return to_u8(top * (1 - fy)[:, None, None] + bottom * fy[:, None, None])


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (257, 31), (600, 9)])  # 257, 600: several row bands
def test_grayscale_is_bit_identical_to_pillow(shape: tuple[int, int]) -> None:
    img = random_image(*shape)
    got = imaging.apply(img, "grayscale")
    assert got.shape == (*shape, 1)
    assert np.array_equal(got[:, :, 0], np.asarray(Image.fromarray(img).convert("L")))


@pytest.mark.parametrize(("sigma", "radius"), [(0.8, 0), (2.0, 0), (3.5, 4)])
def test_blur_matches_the_float64_reference(sigma: float, radius: int) -> None:
    for img in (smooth_image(300, 41), random_image(23, 37), random_image(19, 5, 1)):
        assert max_diff(imaging.blur(img, sigma, radius), blur_reference(img, sigma, radius)) <= 1


def test_blur_of_an_impulse_is_the_gaussian() -> None:
    img = np.zeros((21, 21, 1), dtype=np.uint8)
    img[10, 10] = 255
    got = imaging.blur(img, 1.5)[:, :, 0].astype(np.float64)
    x = np.arange(-10, 11)
    g = np.exp(-x * x / (2 * 1.5**2))
    g[np.abs(x) > 5] = 0  # radius ceil(3 * 1.5) = 5
    g /= g.sum()
    assert np.abs(got - 255 * np.outer(g, g)).max() <= 0.5 + 1e-9
    assert got.sum() == pytest.approx(255, abs=0.5 * 121)


def test_blur_keeps_a_flat_image_flat() -> None:
    img = np.full((40, 30, 3), 77, dtype=np.uint8)
    assert np.array_equal(imaging.blur(img, 5.0), img)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (64, 80), (300, 17)])
def test_edges_are_exactly_the_sobel_reference(shape: tuple[int, int]) -> None:
    img = random_image(*shape)
    gray = np.asarray(Image.fromarray(img).convert("L"))
    got = imaging.apply(img, "edges")
    assert got.shape == (*shape, 1)
    assert np.array_equal(got[:, :, 0], sobel_reference(gray))


def test_a_black_to_white_step_is_an_edge_of_255() -> None:
    img = np.zeros((8, 8, 1), dtype=np.uint8)
    img[:, 4:] = 255
    edge = imaging.edges(img)
    assert (edge[:, 3:5] == 255).all() and (edge[:, :2] == 0).all() and (edge[:, 6:] == 0).all()


@pytest.mark.parametrize(("src", "dst"), [((64, 96), (16, 24)), ((300, 200), (120, 80)), ((37, 53), (10, 14)),
                                          ((600, 40), (150, 10))])
def test_shrinking_is_the_area_average(src: tuple[int, int], dst: tuple[int, int]) -> None:
    img = random_image(*src)
    got = imaging.resize(img, dst[1], dst[0])
    assert max_diff(got, area_reference(img, dst[1], dst[0])) <= 1


def test_shrinking_by_whole_factors_matches_pillow_box() -> None:
    img = random_image(120, 90)
    got = imaging.resize(img, 30, 40)
    assert max_diff(got, np.asarray(Image.fromarray(img).resize((30, 40), Image.Resampling.BOX))) <= 1


@pytest.mark.parametrize(("src", "dst"), [((10, 15), (37, 53)), ((3, 4), (300, 400)), ((50, 50), (51, 77))])
def test_enlarging_is_bilinear_like_pillow(src: tuple[int, int], dst: tuple[int, int]) -> None:
    img = random_image(*src)
    got = imaging.resize(img, dst[1], dst[0])
    assert max_diff(got, bilinear_reference(img, dst[1], dst[0])) <= 1
    pillow = np.asarray(Image.fromarray(img).resize((dst[1], dst[0]), Image.Resampling.BILINEAR))
    assert max_diff(got, pillow) <= 1


def test_resize_keeps_the_aspect_ratio() -> None:
    assert imaging.resized_shape(4000, 3000, 1024) == (1024, 768)
    assert imaging.resized_shape(3000, 4000, 1024) == (768, 1024)
    assert imaging.resized_shape(5000, 2, 100) == (100, 1)
    assert imaging.apply(random_image(30, 60), "resize", size=20).shape == (10, 20, 3)


def test_area_weights_sum_to_one_and_cover_every_pixel() -> None:
    for n_in, n_out in ((10, 3), (1000, 7), (9, 9 - 1)):
        index, weight = imaging.area_weights(n_in, n_out)
        assert np.allclose(weight.sum(axis=1), 1.0, atol=1e-6)
        coverage = np.zeros(n_in)
        np.add.at(coverage, index.ravel(), weight.ravel())
        assert np.allclose(coverage, n_out / n_in, atol=1e-6)


# --------------------------------------------------------------------------- the job


def ctx_for(root: Path) -> TaskContext:
    out = root / "runs" / "r1"
    out.mkdir(parents=True)
    return TaskContext(run_id="r1", index=0, total=1, node="n", data_root=root, output_dir=out)


def test_task_writes_the_same_relative_path_under_the_run_directory(tmp_path: Path) -> None:
    img = smooth_image(50, 70)
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "photos" / "2024" / "a.png")
    ctx = ctx_for(tmp_path)
    spec = load_registry([]).get("image")
    params = spec.validate({"path": "photos/2024/a.png", "op": "blur", "sigma": "1.2"})
    result = spec.task(ctx, **spec.plan(params)[0])
    assert result["input"] == "photos/2024/a.png"
    assert result["output"] == "runs/r1/photos/2024/a.png"
    assert (result["width"], result["height"], result["op"]) == (70, 50, "blur")
    assert result["seconds"] >= 0
    written = np.asarray(Image.open(tmp_path / result["output"]))
    assert max_diff(written, blur_reference(img, 1.2)) <= 1
    assert [p.name for p in (tmp_path / "runs" / "r1" / "photos" / "2024").iterdir()] == ["a.png"]  # no temp left

    summary = spec.reduce(ctx, params, [result] * 150)  # type: ignore[misc]
    assert summary["count"] == 150 and summary["pixels"] == 150 * 50 * 70
    assert len(summary["outputs"]) == imaging.OUTPUTS_LISTED and summary["outputs_not_listed"] == 50
    assert summary["output_dir"] == "runs/r1" and summary["ops"] == {"blur": 150}


def test_rgba_and_palette_pictures_are_processed_as_rgb(tmp_path: Path) -> None:
    rgba = np.dstack([random_image(20, 30), np.full((20, 30), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert imaging.load(tmp_path / "t.png").shape == (20, 30, 3)
    Image.fromarray(random_image(20, 30)).convert("P").save(tmp_path / "p.gif")
    assert imaging.load(tmp_path / "p.gif").shape == (20, 30, 3)


def test_task_refuses_a_path_outside_the_share(tmp_path: Path) -> None:
    spec = load_registry([]).get("image")
    with pytest.raises(BadParameter, match="relative to the share"):
        spec.validate({"path": "../etc/passwd"})
    with pytest.raises(BadParameter):
        spec.task(ctx_for(tmp_path), path="x/../../etc/passwd", op="grayscale", size=1, sigma=1.0, radius=0)
