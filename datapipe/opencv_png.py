"""The fast PNG route of ``datapipe.decode``: OpenCV's ``imdecode`` for plain 8-bit RGB and gray PNGs.

Measured with ``benchmarks/bench_decode.py`` (the negatives' 1024-px PNGs): about 1.2x the Pillow route's
images per CPU-second, the same pixels (both inflate with zlib and unfilter the rows; gray is replicated
into three channels by both). Only PNGs whose conversion needs none of this module's own rules take it:
8-bit samples (no 16-bit high-byte rule), no alpha channel or ``tRNS`` transparency (no compositing over
white), no palette, one frame. OpenCV's own EXIF rotation is switched off: the orientation comes from the
header, as on every route. Anything OpenCV cannot decode (truncated, corrupt) goes to the Pillow route.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

NAME = "opencv"
#: Pillow's raw modes of the PNGs this route decodes: 8-bit RGB and 8-bit gray samples
RAW_MODES = ("RGB", "L")


def applies(img) -> bool:
    """Whether a PNG opened by Pillow (header only) can take this route."""
    if img.format != "PNG" or img.mode not in RAW_MODES or "transparency" in img.info:
        return False
    if int(getattr(img, "n_frames", 1) or 1) != 1 or len(img.tile) != 1:
        return False
    return img.tile[0].args in RAW_MODES  # "RGB;16B", "L;2", ... carry other sample depths


def decode(data: bytes, reduction: int = 1) -> Optional[np.ndarray]:
    """HxWx3 uint8 RGB as stored (before EXIF orientation), or None when OpenCV cannot decode ``data``.
    PNG has no reduced decoding: ``reduction`` must be 1."""
    import cv2

    if reduction != 1:
        return None
    flags = getattr(cv2, "IMREAD_COLOR_RGB", None)
    buf = np.frombuffer(data, np.uint8)
    try:
        if flags is not None:  # OpenCV >= 4.10 converts to RGB itself
            arr = cv2.imdecode(buf, flags | cv2.IMREAD_IGNORE_ORIENTATION)
        else:  # pragma: no cover - older OpenCV
            arr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            arr = None if arr is None else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    except cv2.error:
        return None
    if arr is None or arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        return None
    return arr
