"""Which image the captioner sees, and in what shape.

LLaVA-1.5 was trained on images padded to a square with the image processor's mean colour
(``expand2square`` in LLaVA's ``mm_utils``), while a plain ``CLIPImageProcessor`` resizes the short side
and centre-crops, cutting off the sides of a non-square image. The default here pads, as in training.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from supirkit.datapipe.decode import decode_rgb, decode_rgb_reduced
from supirkit.datapipe.errors import DecodeError
from supirkit.datapipe.inputs import read_source
from supirkit.datapipe.tario import image_too_large, sample_image


def image_bytes_for(sample: dict, meta: dict, use: str, max_file_bytes: int) -> bytes:
    """The encoded image to caption: the sample's own, or the original named by ``meta['source']``; a
    ``DecodeError`` with the reason when there is none."""
    if use == "curated":
        _, data = sample_image(sample)
        if (data is None and image_too_large(sample)) or (data is not None and len(data) > max_file_bytes):
            raise DecodeError("too_large", f"image member larger than max_file_bytes={max_file_bytes}")
        if data is None:
            raise DecodeError("no_image_in_sample")
        return data
    source = meta.get("source")
    if not source:
        raise DecodeError("no_source", "the sample json names no 'source'")
    try:
        return read_source(source, max_file_bytes)
    except FileNotFoundError as exc:
        raise DecodeError("source_missing", f"{source}: {exc}") from None
    except OSError as exc:
        raise DecodeError("source_unreadable", f"{source}: {exc}") from None


def fit_image(rgb: np.ndarray, fit: str, background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``pad``: centre the image on a square of ``background``; ``crop``: centre square; ``none``: unchanged."""
    h, w = rgb.shape[:2]
    if fit == "none" or h == w:
        return rgb
    if fit == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return rgb[top:top + side, left:left + side]
    if fit == "pad":
        side = max(h, w)
        out = np.empty((side, side, 3), dtype=rgb.dtype)
        out[...] = np.asarray(background, dtype=rgb.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        out[top:top + h, left:left + w] = rgb
        return out
    raise ValueError(f"unknown fit {fit!r} (expected pad, crop or none)")


def limit_side(rgb: np.ndarray, max_side: int | None, full_size: tuple[int, int] | None = None) -> np.ndarray:
    """Downscale with Lanczos (antialiased) so the long side is at most ``max_side``. ``full_size`` (height,
    width): the image's own size when ``rgb`` is a reduced decode of it, so the result's size is the same."""
    h, w = full_size or rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (rgb.shape[1], rgb.shape[0]):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def prepare_image(data: bytes, fit: str, max_side: int | None, background: Sequence[int], max_pixels: int):
    """Encoded bytes -> the PIL image handed to the captioner; raises ``DecodeError`` for a bad image.

    With ``max_side`` a JPEG is decoded at the smallest DCT reduction whose long side is still at least
    ``max_side`` (a 4000x3000 original at 1/4, then Lanczos to 672), so the Lanczos filter starts from
    DCT-reduced pixels rather than the full decode: the captioner's input differs by a few gray levels,
    its size does not. A 1024-px curated image is not reduced for 672 (1/2 would be 512)."""
    from PIL import Image

    if max_side:
        rgb, header = decode_rgb_reduced(data, max_side, max_pixels, side="long")
    else:
        rgb, header = decode_rgb(data, max_pixels)
    rgb = limit_side(rgb, max_side, (header.height, header.width))  # before padding: the pad colour stays exact
    return Image.fromarray(np.ascontiguousarray(fit_image(rgb, fit, background)))
