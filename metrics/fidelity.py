"""PSNR and SSIM on uint8 RGB arrays, under an explicit ``FidelityConvention``.

Hand-written (NumPy/OpenCV, float64 on the 0-255 scale) rather than called from pyiqa or scikit-image
because no library exposes every convention at once: scikit-image has no Y channel nor rounding, pyiqa
ties rounding and the cs clamp to the metric name, BasicSR crops but never rounds. The tests check each
convention against the library that implements it (scikit-image, pyiqa, BasicSR) to 1e-4.

SSIM is Wang et al.'s: an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 255,
the map averaged over the valid region (where the window fits inside the image) and over channels.
"""
from __future__ import annotations

import math

import numpy as np

from supirkit.metrics.conventions import FidelityConvention

_DATA_RANGE = 255.0
_WINDOW, _SIGMA = 11, 1.5
# BT.601 studio-range Y (MATLAB rgb2ycbcr) on 0-255 inputs: 16 + (65.481 R + 128.553 G + 24.966 B) / 255
_YCBCR_Y = np.array([65.481, 128.553, 24.966]) / 255.0
_LUMA = np.array([0.299, 0.587, 0.114])


class FidelityError(ValueError):
    """The two images cannot be compared (shapes differ, too small for the window or the border)."""


def to_channels(rgb: np.ndarray, convention: FidelityConvention) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxWxC float64 on the 0-255 scale, border cropped, per the convention."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise FidelityError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    b = convention.crop_border
    if b:
        if rgb.shape[0] <= 2 * b or rgb.shape[1] <= 2 * b:
            raise FidelityError(f"image {rgb.shape[1]}x{rgb.shape[0]} is too small for crop_border {b}")
        rgb = rgb[b:-b, b:-b]
    x = rgb.astype(np.float64)
    if convention.channel == "y":
        x = (x @ _YCBCR_Y + 16.0)[..., None]
    elif convention.channel == "luma":
        x = (x @ _LUMA)[..., None]
    if convention.round:
        np.rint(x, out=x)
    return x


def _pair(restored: np.ndarray, reference: np.ndarray, convention: FidelityConvention):
    if restored.shape != reference.shape:
        raise FidelityError(f"restored {restored.shape[1]}x{restored.shape[0]} and reference "
                            f"{reference.shape[1]}x{reference.shape[0]} differ in size")
    return to_channels(restored, convention), to_channels(reference, convention)


def psnr(restored: np.ndarray, reference: np.ndarray, convention: FidelityConvention) -> float:
    """10 log10(255^2 / MSE) over the pixels and channels the convention keeps; inf for identical images."""
    a, b = _pair(restored, reference, convention)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(_DATA_RANGE**2 / mse)


def _window_filter(x: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local means where the 11x11 window fits (the 'valid' region)."""
    import cv2

    g = cv2.getGaussianKernel(_WINDOW, _SIGMA, cv2.CV_64F)
    r = _WINDOW // 2
    # A separable pass is exact for the (separable) Gaussian; border values are cut away below.
    out = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT_101)
    return out[r:-r, r:-r]


def ssim(restored: np.ndarray, reference: np.ndarray, convention: FidelityConvention) -> float:
    """Mean SSIM (Wang et al. 2004) over the valid window positions and the kept channels."""
    a, b = _pair(restored, reference, convention)
    if min(a.shape[:2]) < _WINDOW:
        raise FidelityError(f"SSIM needs at least {_WINDOW}x{_WINDOW} pixels after cropping, got "
                            f"{a.shape[1]}x{a.shape[0]}")
    c1, c2 = (0.01 * _DATA_RANGE) ** 2, (0.03 * _DATA_RANGE) ** 2
    values = []
    for ch in range(a.shape[2]):
        x, y = np.ascontiguousarray(a[..., ch]), np.ascontiguousarray(b[..., ch])
        mu_x, mu_y = _window_filter(x), _window_filter(y)
        sxx = _window_filter(x * x) - mu_x * mu_x
        syy = _window_filter(y * y) - mu_y * mu_y
        sxy = _window_filter(x * y) - mu_x * mu_y
        cs = (2.0 * sxy + c2) / (sxx + syy + c2)
        if convention.nonnegative_cs:
            np.maximum(cs, 0.0, out=cs)
        values.append(float(np.mean((2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs)))
    return float(np.mean(values))


FIDELITY_FUNCTIONS = {"psnr": psnr, "ssim": ssim}
