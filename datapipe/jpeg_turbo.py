"""The fast JPEG route of ``datapipe.decode``: libjpeg-turbo decoding straight into a NumPy array.

``simplejpeg`` (a wheel with libjpeg-turbo built in) decodes into a freshly allocated HxWx3 array: no
Pillow image object, no ``tobytes`` copy into ``np.asarray``. It was chosen by measurement
(``benchmarks/bench_decode.py``): on the Debian wallpaper photographs it decodes about 1.7x as many
megapixels per CPU-second as the Pillow route and 1.1x as many as OpenCV's ``imdecode``; PyTurboJPEG, the
other binding, is as fast but loads the system's TurboJPEG library (version 2 for PyTurboJPEG 1.x, version 3
for 2.x; Debian 12 and 13 ship 2.1.5), so a pip install alone does not give it.

Pixels are the Pillow route's: both run libjpeg-turbo's accurate integer IDCT (``JDCT_ISLOW``) with fancy
upsampling, and gray is replicated into three channels by the library as by ``Image.convert("RGB")``; the
EXIF orientation is then applied by the same lossless transpositions as ``ImageOps.exif_transpose``
(``datapipe.decode``; ``tests/test_decode_routes.py`` decodes a corpus of ordinary and odd JPEGs both ways).
Only 8-bit baseline and progressive YCbCr or gray JPEGs take this route; CMYK/YCCK and anything
libjpeg-turbo warns about (truncated or corrupt data) go to the Pillow route, which decodes them or gives the
usual rejection reason.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

NAME = "libjpeg-turbo"
#: Pillow modes of the JPEGs this route decodes: YCbCr/RGB colour and gray (CMYK and YCCK are "CMYK")
MODES = ("RGB", "L")
#: DCT-domain reductions used: powers of two only, libjpeg-turbo's SIMD IDCTs and Pillow's ``draft``
REDUCTIONS = (8, 4, 2, 1)

try:  # a declared dependency; without a wheel for the platform every JPEG takes the Pillow route
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the platform
    simplejpeg = None


def applies(img) -> bool:
    """Whether a JPEG opened by Pillow (header only) can take this route."""
    return simplejpeg is not None and img.format in ("JPEG", "MPO") and img.mode in MODES


def reduction_for(width: int, height: int, min_side: int, side: str = "short") -> int:
    """The largest power-of-two reduction whose result's shorter (``side="short"``) or longer side is still
    at least ``min_side``: Pillow's ``draft`` rule, so both routes pick the same scale."""
    if min_side <= 0:
        return 1
    ref = min(width, height) if side == "short" else max(width, height)
    return next((s for s in REDUCTIONS if ref >= s * min_side), 1)


def decode(data: bytes, reduction: int = 1) -> Optional[np.ndarray]:
    """HxWx3 uint8 RGB as stored (before EXIF orientation), 1/``reduction`` of the size by scaling in the
    DCT domain; None when libjpeg-turbo refuses the data or warns about it (the caller falls back)."""
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        if reduction == 1:
            return simplejpeg.decode_jpeg(data, "RGB", strict=True)
        th, tw = -(-h // reduction), -(-w // reduction)
        arr = simplejpeg.decode_jpeg(data, "RGB", min_height=th, min_width=tw, min_factor=reduction, strict=True)
    except (ValueError, RuntimeError):  # libjpeg-turbo's errors and, strict, its warnings (truncated data)
        return None
    return arr if arr.shape[:2] == (th, tw) else None  # another scale than asked: let Pillow decode
