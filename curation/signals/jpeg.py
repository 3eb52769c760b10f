"""JPEG quality read from the file's quantisation tables (no pixels needed).

libjpeg (and Pillow, which uses it) scales the standard tables of the JPEG specification (Annex K)
by a factor that depends on the quality setting q (1..100):

    scale = 5000 / q            if q < 50
            200 - 2 q           otherwise
    table = clamp((base * scale + 50) // 100, 1, 255)

Inverting it means trying all 100 settings and keeping the one whose tables match best; for files
written by libjpeg-based encoders the match is exact. Other encoders (cameras, Photoshop) use their
own tables: the nearest setting is then an estimate and ``jpeg_table_error`` says how far off it is.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np

#: Annex K tables in natural (row-major) order, as Pillow's ``img.quantization`` gives them.
STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)
STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, np.float64)


@lru_cache(maxsize=1)
def _scaled_tables() -> tuple[np.ndarray, np.ndarray]:
    """(100, 64) luma and chroma tables for q = 1..100."""
    q = np.arange(1, 101, dtype=np.float64)[:, None]
    scale = np.where(q < 50, np.floor(5000 / q), 200 - 2 * q)
    luma = np.clip(np.floor((STD_LUMA[None] * scale + 50) / 100), 1, 255)
    chroma = np.clip(np.floor((STD_CHROMA[None] * scale + 50) / 100), 1, 255)
    return luma, chroma


def estimate_jpeg_quality(quantization: Optional[dict]) -> tuple[Optional[int], Optional[float]]:
    """(quality 1..100, mean absolute table error relative to the matched tables) or (None, None).

    ``quantization`` is Pillow's ``img.quantization``: {table id: 64 values in natural order}.
    """
    if not quantization:
        return None, None
    tables = [np.asarray(list(quantization[k]), np.float64) for k in sorted(quantization)]
    if any(t.size != 64 for t in tables):
        return None, None
    luma_t, chroma_t = _scaled_tables()
    err = np.abs(luma_t - tables[0][None]).mean(axis=1)
    norm = luma_t.mean(axis=1)
    if len(tables) > 1:
        err = (err + np.abs(chroma_t - tables[1][None]).mean(axis=1)) / 2
        norm = (norm + chroma_t.mean(axis=1)) / 2
    rel = err / norm
    best = np.flatnonzero(rel == rel.min())[-1]  # ties (clamped tables near q=100): the highest setting
    return int(best + 1), float(rel[best])


#: position in natural (row-major) order of the k-th coefficient in the file's zigzag order
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53,
    60, 61, 54, 47, 55, 62, 63], np.int64)


def read_quantization(data: bytes) -> Optional[dict]:
    """{table id: 64 values in natural order} from a JPEG's DQT segments, or None if ``data`` is not a
    JPEG. Walks the marker segments up to the first scan: no pixel data is touched (a tenth of the
    cost of opening the file with Pillow, which gives the same tables)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    tables: dict = {}
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return tables or None  # not at a marker: damaged header
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the tables come before
            break
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xDB:
            j, end = i + 4, min(i + 2 + length, n)
            while j < end:
                precision, tid = data[j] >> 4, data[j] & 15
                size = 128 if precision else 64
                raw = data[j + 1:j + 1 + size]
                if len(raw) < size:
                    break
                vals = np.frombuffer(raw, ">u2" if precision else np.uint8).astype(np.int64)
                natural = np.empty(64, np.int64)
                natural[ZIGZAG] = vals
                tables[tid] = natural.tolist()
                j += 1 + size
        i += 2 + length
    return tables or None


def jpeg_quality_of(data: bytes) -> tuple[Optional[int], Optional[float]]:
    """Quality estimate from encoded bytes (header parse only); (None, None) for non-JPEG data."""
    return estimate_jpeg_quality(read_quantization(data))


#: formats (Pillow's names) whose files hold the pixels exactly, and those that never do
LOSSLESS_FORMATS = {"PNG", "BMP", "TIFF", "PPM", "TGA", "QOI"}
LOSSY_FORMATS = {"JPEG", "MPO", "GIF"}  # GIF: a 256-colour palette


def is_lossless(fmt: Optional[str], data: bytes = b"") -> Optional[bool]:
    """Whether a file of format ``fmt`` holds its pixels exactly; a WebP is read from its chunks (``VP8L``:
    lossless, ``VP8 ``: lossy); None where the file does not say (JPEG 2000, unknown formats)."""
    fmt = (fmt or "").upper()
    if fmt in LOSSLESS_FORMATS:
        return True
    if fmt in LOSSY_FORMATS:
        return False
    if fmt == "WEBP" and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        i = 12
        while i + 8 <= len(data):  # RIFF chunks: fourcc, little-endian size, data padded to even
            kind, size = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
            if kind == b"VP8L":
                return True
            if kind == b"VP8 ":
                return False
            i += 8 + size + (size & 1)
    return None
