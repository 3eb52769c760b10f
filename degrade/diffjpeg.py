"""BasicSR's ``DiffJPEG`` (``basicsr/utils/diffjpeg.py``, ``differentiable=False``), the JPEG of the reference
Real-ESRGAN pipeline, re-written in NumPy for the data-loader workers (``quirks.jpeg_codec: diffjpeg``).

What it does differently from libjpeg (the default codec, ``degrade/jpeg.py``), all reproduced here:

* the quality is a float, turned into a table factor by libjpeg's formula without rounding it first;
* the scaled quantisation tables are neither rounded nor clamped to >= 1, and the luma table is used
  transposed (its rows are the standard table's columns);
* the image is padded with black (zeros) to a multiple of 16 on the bottom and right before the transform;
* chroma is 4:2:0 by 2x2 averaging, and upsampled back by repeating each chroma sample 2x2 (nearest
  neighbour; libjpeg interpolates);
* the input is the clamped float image (no 8-bit rounding before the codec) and the output is not rounded
  (the pipeline rounds only at its end).

The arithmetic is the reference's: float32 colour conversion, 8x8 DCT and inverse DCT as products with the
cosine matrix, coefficients rounded half to even (``torch.round``). Summation order differs from torch's
``tensordot``, so a coefficient that lands within ~1e-5 of a rounding boundary can round the other way; the
test suite bounds how often that happens (``tests/test_degrade_parity.py``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Annex K tables as BasicSR writes them (natural order), before its transposes
_Y = np.array([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
               [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77],
               [24, 35, 55, 64, 81, 104, 113, 92], [49, 64, 78, 87, 103, 121, 120, 101],
               [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                       np.float32)
_YCC_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], np.float32)


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """(luma, chroma) tables as the reference applies them (both transposed, as its ``.T`` does)."""
    c = np.full((8, 8), 99, np.float32)
    c[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]], np.float32).T
    return np.ascontiguousarray(_Y.T), c


@lru_cache(maxsize=1)
def _dct_matrices() -> tuple[np.ndarray, np.ndarray]:
    """(forward, inverse) 8x8 matrices: coefficients = F @ block @ F.T, block = I @ coefficients @ I.T, with the
    reference's scaling (0.25 * alpha_u * alpha_v forward; alpha on the coefficients, 0.25 inverse)."""
    k = np.arange(8)
    cos = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16)  # cos[u, x]
    alpha = np.array([1.0 / np.sqrt(2)] + [1.0] * 7)
    forward = (0.5 * alpha[:, None] * cos).astype(np.float32)  # 0.25 = 0.5 * 0.5, split over both sides
    inverse = (0.5 * cos.T * alpha[None, :]).astype(np.float32)
    return forward, inverse


def quality_to_factor(quality: float) -> np.float32:
    """libjpeg's quality scaling on the float quality (``DiffJPEG.quality_to_factor``), in float32 as the
    reference computes it on its float32 quality tensor."""
    q = np.float32(quality)
    f = np.float32(5000.0) / q if q < 50 else np.float32(200.0) - q * np.float32(2.0)
    return f / np.float32(100.0)


def _blocks(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    return plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)


def _merge(blocks: np.ndarray) -> np.ndarray:
    bh, bw = blocks.shape[:2]
    return blocks.transpose(0, 2, 1, 3).reshape(bh * 8, bw * 8)


def _code_plane(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
    """DCT, quantise (round half to even), dequantise and inverse-DCT one plane whose sides are multiples of 8."""
    forward, inverse = _dct_matrices()
    b = _blocks(plane) - np.float32(128.0)
    coef = forward @ b @ forward.T
    coef = np.rint(coef / table) * table
    return _merge(inverse @ coef @ inverse.T + np.float32(128.0))


def diffjpeg_roundtrip(img: np.ndarray, quality: float) -> np.ndarray:
    """DiffJPEG of an HxWx3 float32 RGB image in [0, 1] (clamped first) at a float ``quality``; float32 in
    [0, 1], not rounded to 8 bits."""
    h, w = img.shape[:2]
    ph, pw = -h % 16, -w % 16
    x = np.clip(img, 0.0, 1.0).astype(np.float32) * np.float32(255.0)
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)))  # black: the reference pads with zeros, not by reflection
    ycc = x @ _RGB_TO_YCC.T + np.array([0.0, 128.0, 128.0], np.float32)
    factor = quality_to_factor(quality)
    luma_t, chroma_t = _tables()
    y = _code_plane(ycc[..., 0], luma_t * factor)
    hh, ww = ycc.shape[0] // 2, ycc.shape[1] // 2
    chroma = []
    for c in (1, 2):
        pooled = ycc[..., c].reshape(hh, 2, ww, 2).mean(axis=(1, 3), dtype=np.float32)
        coded = _code_plane(pooled, chroma_t * factor)
        chroma.append(np.repeat(np.repeat(coded, 2, axis=0), 2, axis=1))  # nearest-neighbour upsampling
    out = np.stack([y, *chroma], axis=-1) + np.array([0.0, -128.0, -128.0], np.float32)
    rgb = out @ _YCC_TO_RGB.T
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return np.ascontiguousarray(rgb[:h, :w] / np.float32(255.0))


__all__ = ["diffjpeg_roundtrip", "quality_to_factor"]
