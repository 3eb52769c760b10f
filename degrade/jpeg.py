"""JPEG compression through libjpeg (OpenCV's ``imencode``/``imdecode``), the codec the degradation imitates.

The reference runs BasicSR's ``DiffJPEG`` on the GPU instead; how and why its output differs from libjpeg
is in ``degrade/README.md``. Here the image is clamped to [0, 1], rounded to 8 bits (half to even, as
OpenCV's own float-to-uint8 conversion in BasicSR's ``add_jpg_compression``), encoded with 4:2:0 chroma
(OpenCV's default) and decoded with libjpeg's default (fancy) chroma upsampling.
"""
from __future__ import annotations

import math

import numpy as np


def quality_to_int(quality: float, rule: str) -> int:
    """libjpeg takes an integer quality: nearest (``round``) or truncated like DiffBIR's ``int()``."""
    q = math.floor(quality) if rule == "floor" else math.floor(quality + 0.5)
    return int(min(100, max(1, q)))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """clamp(round(img * 255), 0, 255) as uint8."""
    x = img * np.float32(255.0)
    np.clip(x, 0.0, 255.0, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def jpeg_roundtrip_uint8(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode an HxWx3 uint8 RGB image at an integer quality."""
    import cv2  # heavy import kept local: sampling (quality_to_int) must not load OpenCV

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("libjpeg failed to encode")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return cv2.cvtColor(dec, cv2.COLOR_BGR2RGB)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG an HxWx3 float32 RGB image in [0, 1] (clamped first); float32 result on the 8-bit grid."""
    dec = jpeg_roundtrip_uint8(to_uint8(img), quality)
    out = dec.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out
