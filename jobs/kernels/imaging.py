"""Pixel kernels for the ``image`` job: luma, separable Gaussian blur, Sobel edges, resampling.

Images are ``uint8`` arrays of shape (height, width, channels) (grayscale has
one channel). Every kernel works on a band of output rows ``[r0, r1)`` so the
caller can bound the work of one call (RQ's timeout cannot interrupt nopython
code) and the memory of intermediates; borders replicate the edge pixel.
Rounding to ``uint8`` is ``floor(v + 0.5)`` clamped to 0..255, which the
NumPy references in the tests mirror.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _to_u8(value):  # pragma: no cover - compiled
    v = math.floor(value + 0.5)
    if v < 0.0:
        return np.uint8(0)
    if v > 255.0:
        return np.uint8(255)
    return np.uint8(v)


@njit(cache=True, nogil=True)
def luma(rgb, out, r0, r1):  # pragma: no cover - compiled
    """ITU-R 601 luma of rows [r0, r1) of ``rgb`` into ``out`` (height, width), in Pillow's fixed point.

    Pillow's RGB->L is ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16``; using the
    same integers makes the result identical to ``Image.convert("L")``.
    """
    w = rgb.shape[1]
    for y in range(r0, r1):
        for x in range(w):
            v = np.int64(rgb[y, x, 0]) * 19595 + np.int64(rgb[y, x, 1]) * 38470 + np.int64(rgb[y, x, 2]) * 7471
            out[y, x] = np.uint8((v + 0x8000) >> 16)
    return out


@njit(cache=True, nogil=True, parallel=True)
def blur_rows(src, tmp, weights, lo, hi):  # pragma: no cover - compiled
    """Horizontal pass: rows [lo, hi) of ``src`` (uint8) convolved with ``weights`` into ``tmp[y - lo]`` (float32)."""
    w, c = src.shape[1], src.shape[2]
    radius = (weights.shape[0] - 1) // 2
    for y in prange(lo, hi):
        for x in range(w):
            for ch in range(c):
                acc = 0.0
                for k in range(-radius, radius + 1):
                    xx = min(max(x + k, 0), w - 1)
                    acc += weights[k + radius] * src[y, xx, ch]
                tmp[y - lo, x, ch] = acc
    return tmp


@njit(cache=True, nogil=True, parallel=True)
def blur_cols(tmp, out, weights, r0, r1, lo, height):  # pragma: no cover - compiled
    """Vertical pass: output rows [r0, r1) from ``tmp`` (which holds image rows from ``lo``)."""
    w, c = out.shape[1], out.shape[2]
    radius = (weights.shape[0] - 1) // 2
    for y in prange(r0, r1):
        for x in range(w):
            for ch in range(c):
                acc = 0.0
                for k in range(-radius, radius + 1):
                    yy = min(max(y + k, 0), height - 1)
                    acc += weights[k + radius] * tmp[yy - lo, x, ch]
                out[y, x, ch] = _to_u8(acc)
    return out


@njit(cache=True, nogil=True, parallel=True)
def sobel(gray, out, r0, r1):  # pragma: no cover - compiled
    """Sobel gradient magnitude of rows [r0, r1) of ``gray`` (height, width), divided by 4.

    Dividing by 4 maps a full black-to-white step (|gx| = 4 * 255) to 255;
    stronger diagonal responses are clamped.
    """
    h, w = gray.shape
    for y in prange(r0, r1):
        ym, yp = max(y - 1, 0), min(y + 1, h - 1)
        for x in range(w):
            xm, xp = max(x - 1, 0), min(x + 1, w - 1)
            a, b, cc = np.int64(gray[ym, xm]), np.int64(gray[ym, x]), np.int64(gray[ym, xp])
            d, f = np.int64(gray[y, xm]), np.int64(gray[y, xp])
            g, hh, i = np.int64(gray[yp, xm]), np.int64(gray[yp, x]), np.int64(gray[yp, xp])
            gx = (cc + 2 * f + i) - (a + 2 * d + g)
            gy = (g + 2 * hh + i) - (a + 2 * b + cc)
            out[y, x] = _to_u8(math.sqrt(float(gx * gx + gy * gy)) / 4.0)
    return out


@njit(cache=True, nogil=True, parallel=True)
def resample_rows(src, tmp, index, weight, lo, hi):  # pragma: no cover - compiled
    """Along the width: ``tmp[y - lo, o] = sum_k weight[o, k] * src[y, index[o, k]]`` for rows [lo, hi)."""
    wo, taps = index.shape
    c = src.shape[2]
    for y in prange(lo, hi):
        for o in range(wo):
            for ch in range(c):
                acc = 0.0
                for k in range(taps):
                    acc += weight[o, k] * src[y, index[o, k], ch]
                tmp[y - lo, o, ch] = acc
    return tmp


@njit(cache=True, nogil=True, parallel=True)
def resample_cols(tmp, out, index, weight, r0, r1, lo):  # pragma: no cover - compiled
    """Along the height: output rows [r0, r1) from ``tmp`` (which holds source rows from ``lo``)."""
    taps = index.shape[1]
    wo, c = out.shape[1], out.shape[2]
    for o in prange(r0, r1):
        for x in range(wo):
            for ch in range(c):
                acc = 0.0
                for k in range(taps):
                    acc += weight[o, k] * tmp[index[o, k] - lo, x, ch]
                out[o, x, ch] = _to_u8(acc)
    return out


def warmup() -> None:
    """Compile (or load from cache) every kernel on tiny inputs."""
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    gray = np.zeros((4, 4), dtype=np.uint8)
    luma(rgb, gray, 0, 4)
    weights = np.array([0.25, 0.5, 0.25], dtype=np.float32)
    tmp = np.zeros((4, 4, 3), dtype=np.float32)
    blur_rows(rgb, tmp, weights, 0, 4)
    blur_cols(tmp, rgb.copy(), weights, 0, 4, 0, 4)
    sobel(gray, gray.copy(), 0, 4)
    index = np.zeros((2, 2), dtype=np.int64)
    weight = np.full((2, 2), 0.5, dtype=np.float32)
    small = np.zeros((4, 2, 3), dtype=np.float32)
    resample_rows(rgb, small, index, weight, 0, 4)
    resample_cols(small, np.zeros((2, 2, 3), dtype=np.uint8), index, weight, 0, 2, 0)
    # A picture from Pillow (np.asarray) is read-only, which Numba types apart:
    # without these, each worker process compiled them again at its first picture.
    picture = rgb.copy()
    picture.flags.writeable = False
    luma(picture, gray, 0, 4)
    blur_rows(picture, tmp, weights, 0, 4)
    resample_rows(picture, small, index, weight, 0, 4)
