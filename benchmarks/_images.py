"""Synthetic photo-like inputs shared by the benchmark scripts (no datasets can be downloaded here)."""
from __future__ import annotations

import cv2
import numpy as np


def photo_like(seed: int, side: int, shapes: bool = False) -> np.ndarray:
    """Textured, colourful RGB (uint8) with detail up to Nyquist, so JPEG sizes and decode times are like a
    photo's; ``shapes`` adds hard-edged discs and a grating (edges for the degradation's ringing and aliasing)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((side, side, 3), np.float32)
    amp = 70.0
    for cells in (4, 8, 16, 32, 64, 128, 256, side):
        layer = rng.standard_normal((cells, cells, 3)).astype(np.float32)
        img += amp * cv2.resize(layer, (side, side), interpolation=cv2.INTER_CUBIC)
        amp *= 0.6
    if shapes:
        for _ in range(8):
            c = tuple(int(v) for v in rng.integers(0, side, 2))
            cv2.circle(img, c, int(rng.integers(side // 16, side // 4)),
                       tuple(float(v) for v in rng.uniform(-80, 80, 3)), -1)
        yy, xx = np.mgrid[0:side, 0:side]
        img += 12 * np.sin(0.35 * xx + 0.2 * yy)[..., None]
    return np.clip(img + 128, 0, 255).astype(np.uint8)
