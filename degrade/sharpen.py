"""Unsharp mask of the HQ crop (BasicSR ``USMSharp``, ``img_process_util.py`` L63-83).

    B = G * I                 (Gaussian, 51x51, sigma 0 -> OpenCV's rule: 8.0; reflect-101 border)
    m = G * [|I - B| * 255 > threshold]
    out = m * clip(I + weight (I - B), 0, 1) + (1 - m) * I

The reference runs the 51x51 Gaussian as a dense 2-D convolution, twice (90% of its CPU time). The
Gaussian is separable, so here it is two 51-tap passes, read straight from the uint8 crop for B and from
the uint8 mask for m; the result is the same to ~1e-6.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=8)
def gaussian_factor(size: int, sigma: float) -> np.ndarray:
    """OpenCV's 1-D Gaussian (sigma <= 0: 0.3 * ((size - 1) * 0.5 - 1) + 0.8), float32 column."""
    return cv2.getGaussianKernel(size, sigma).astype(np.float32)


def unsharp_mask(hq: np.ndarray, size: int = 51, sigma: float = 0.0, weight: float = 0.5,
                 threshold: float = 10.0) -> np.ndarray:
    """Sharpen an HxWx3 uint8 image; returns float32 in [0, 1]. ``size`` is made odd as BasicSR does."""
    if size % 2 == 0:
        size += 1
    g = gaussian_factor(size, sigma)
    img = hq.astype(np.float32)
    img *= np.float32(1.0 / 255.0)
    blur = cv2.sepFilter2D(hq, cv2.CV_32F, g, g, borderType=cv2.BORDER_REFLECT_101)
    blur *= np.float32(1.0 / 255.0)
    residual = img - blur
    mask = (np.abs(residual) * np.float32(255.0) > np.float32(threshold)).view(np.uint8)
    soft = cv2.sepFilter2D(mask, cv2.CV_32F, g, g, borderType=cv2.BORDER_REFLECT_101)
    # m * sharp + (1 - m) * I == I + m * (sharp - I)
    residual *= np.float32(weight)
    residual += img
    np.clip(residual, 0.0, 1.0, out=residual)
    residual -= img
    residual *= soft
    residual += img
    return residual
