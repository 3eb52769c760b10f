"""Test images for the degradation tests."""
from __future__ import annotations

import cv2
import numpy as np


def photo(seed: int, h: int, w: int, block: bool = True) -> np.ndarray:
    """Small photo-like RGB uint8 image: smooth colour fields, fine texture and (``block``) a hard edge."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for octave, amp in ((4, 60.0), (16, 30.0), (max(h, w), 12.0)):
        layer = rng.standard_normal((octave, octave, 3)).astype(np.float32)
        img += amp * cv2.resize(layer, (w, h), interpolation=cv2.INTER_CUBIC)
    if block:
        img[h // 3: 2 * h // 3, w // 4: w // 2] += 50.0
    return np.clip(img + 128.0, 0, 255).astype(np.uint8)
