"""Resizing with the semantics of ``torch.nn.functional.interpolate`` (align_corners=False, no antialias),
which is what the reference runs, on HxWxC float32 arrays with OpenCV.

* bilinear / bicubic to an explicit size: ``cv2.resize`` maps output pixel centres the same way
  (src = (dst + 0.5) * in / out - 0.5), clamps at the border the same way and uses the same cubic
  (a = -0.75), so the two agree to float precision once the output size is the same.
* torch's ``scale_factor=s`` maps with 1 / s instead of in / out. ``src_scale`` reproduces that with an
  affine warp (OpenCV quantises warp coordinates to 1/32 px).
* "area" is torch's adaptive average pooling: output i averages input [floor(i n / m), ceil((i + 1) n / m)).
  OpenCV's INTER_AREA is the same only when n is a multiple of m; otherwise it is computed here one axis at a
  time: bins then hold k or k + 1 inputs, so one running-sum box filter of k taps plus one extra input for
  the longer bins gives every sum (OpenCV's box filter accumulates in double).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

_CV_MODE = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def resize(img: np.ndarray, size: tuple[int, int], mode: str, src_scale: Optional[float] = None) -> np.ndarray:
    """Resize an HxWxC float32 image to ``size`` = (height, width) with torch's semantics for ``mode``.

    ``src_scale``: the torch ``scale_factor`` the size came from, to map coordinates with 1 / scale as
    torch does (bilinear/bicubic only; area depends on the sizes alone).
    """
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize to an empty size {size}")
    in_h, in_w = img.shape[:2]
    if mode == "area":
        return adaptive_avg_pool(img, out_h, out_w)
    if mode not in _CV_MODE:
        raise ValueError(f"unknown resize mode {mode!r}")
    if src_scale is not None and src_scale != 1.0:
        inv = 1.0 / float(src_scale)
        m = np.array([[inv, 0.0, 0.5 * inv - 0.5], [0.0, inv, 0.5 * inv - 0.5]], dtype=np.float64)
        return cv2.warpAffine(img, m, (out_w, out_h), flags=_CV_MODE[mode] | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
    if (in_h, in_w) == (out_h, out_w):
        return img.copy()
    return cv2.resize(img, (out_w, out_h), interpolation=_CV_MODE[mode])


def _pool_axis(x: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Adaptive average pooling along axis 0 or 1: bin i is [floor(i n / m), ceil((i + 1) n / m))."""
    n = x.shape[axis]
    if n == out_len:
        return x
    i = np.arange(out_len)
    start = (i * n) // out_len
    end = ((i + 1) * n + out_len - 1) // out_len
    length = end - start
    short = int(length.min())
    if short > 1:
        # Every bin has `short` or `short + 1` inputs. One running-sum box filter of `short` taps anchored at
        # the bin start gives the short sums; the long bins add their last input.
        ksize = (1, short) if axis == 0 else (short, 1)
        box = cv2.boxFilter(x, -1, ksize, anchor=(0, 0), normalize=False, borderType=cv2.BORDER_REPLICATE)
        sums = np.take(box, start, axis=axis)
    else:
        sums = np.take(x, start, axis=axis)  # upscaling: bins of one or two inputs
    shape = [1] * x.ndim
    shape[axis] = out_len
    if int(length.max()) > short:
        # Dense, not fancy-indexed, adds: numpy's fancy read-modify-write along axis 1 is ~10x slower.
        extra = np.take(x, end - 1, axis=axis)
        extra *= (length > short).astype(np.float32).reshape(shape)
        sums += extra
    sums /= length.astype(np.float32).reshape(shape)
    return sums


def adaptive_avg_pool(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """torch ``adaptive_avg_pool2d`` (= interpolate mode='area') on an HxW[xC] float32 image."""
    in_h, in_w = img.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return img.copy()
    if in_h % out_h == 0 and in_w % out_w == 0:
        # Integer factors: the bins are disjoint blocks, exactly OpenCV's INTER_AREA.
        return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
    out = _pool_axis(img, out_h, 0)
    out = _pool_axis(out, out_w, 1)
    return np.ascontiguousarray(out, dtype=np.float32)
